//! TLS end to end, with a CA and certificates generated here (rcgen): the
//! real `lockstep serve` answers gRPC (health and a real RPC) and the
//! dashboard over TLS, plain text to its TLS ports fails, agents connect
//! over mutual TLS only with a client certificate that names their device,
//! and plain text is refused on a non-loopback address unless accepted.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lockstep::edge::grpc::pb;
use lockstep::edge::grpc::pb::device_service_client::DeviceServiceClient;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use support::{Agent, Server};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// A CA, a server certificate for 127.0.0.1, and client certificates, as
/// PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "lockstep test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
        };
        std::fs::write(pki.path("ca.pem"), pki.ca.pem()).unwrap();
        pki.issue(
            "server",
            &["127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `<name>.pem` and `<name>.key` for a certificate naming `sans`.
    fn issue(&self, name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// `lockstep serve` with TLS (and mutual TLS for agents when `mutual`).
fn tls_server(pki: &Pki, mutual: bool, extra: &[&str]) -> Server {
    let (cert, key, ca) = (
        s(&pki.path("server.pem")),
        s(&pki.path("server.key")),
        s(&pki.path("ca.pem")),
    );
    let mut args = vec!["--tls-cert", &cert, "--tls-key", &key];
    if mutual {
        args.extend(["--tls-client-ca", &ca]);
    }
    args.extend_from_slice(extra);
    Server::start(&args)
}

async fn tls_channel(server: &Server, ca_pem: &str) -> tonic::transport::Channel {
    Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)))
        .unwrap()
        .connect()
        .await
        .expect("a TLS connection to lockstep serve")
}

/// [`tls_channel`] with the server's admin token on every call.
async fn tls_authed(server: &Server, ca_pem: &str) -> support::Chan {
    let bearer = lockstep::cli::Bearer::new(&server.token()).expect("a token");
    tonic::service::interceptor::InterceptedService::new(tls_channel(server, ca_pem).await, bearer)
}

async fn health(channel: tonic::transport::Channel) -> Result<i32, tonic::Status> {
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
}

#[tokio::test]
async fn grpc_over_tls_works_and_plain_text_to_the_tls_port_fails() {
    let pki = Pki::new();
    let server = tls_server(&pki, false, &[]);
    let channel = tls_channel(&server, &pki.ca_pem()).await;
    assert_eq!(
        health(channel.clone()).await.expect("health over TLS"),
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut devices = DeviceServiceClient::with_interceptor(
        channel,
        lockstep::cli::Bearer::new(&server.token()).expect("a token"),
    );
    devices
        .create_fleet(pb::CreateFleetRequest {
            id: "site".into(),
            name: "Site".into(),
        })
        .await
        .expect("a real RPC over TLS");
    let fleets = devices
        .list_fleets(pb::ListFleetsRequest {})
        .await
        .unwrap()
        .into_inner()
        .fleets;
    assert_eq!(fleets.len(), 1);

    // Plain text to the same port: no gRPC answer.
    let plain = async {
        let channel = Endpoint::from_shared(server.url())
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        health(channel).await
    };
    assert!(plain.await.is_err(), "plain text to the TLS port must fail");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_is_refused() {
    let pki = Pki::new();
    let other = Pki::new();
    let server = tls_server(&pki, false, &[]);
    let result = async {
        let channel = Endpoint::from_shared(format!("https://{}", server.addr))
            .unwrap()
            .tls_config(
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(other.ca_pem())),
            )
            .unwrap()
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        health(channel).await
    }
    .await;
    assert!(
        result.is_err(),
        "a certificate from an untrusted CA was accepted"
    );
}

/// Registers `dev-1` over TLS and writes its credential to the PKI dir.
async fn register(server: &Server, pki: &Pki) {
    let mut devices = DeviceServiceClient::new(tls_authed(server, &pki.ca_pem()).await);
    devices
        .create_fleet(pb::CreateFleetRequest {
            id: "site".into(),
            name: String::new(),
        })
        .await
        .unwrap();
    let credential = devices
        .register_device(pb::RegisterDeviceRequest {
            id: "dev-1".into(),
            fleet: "site".into(),
            tags: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .credential;
    std::fs::write(pki.path("credential"), credential).unwrap();
}

/// `lockstep agent` for dev-1 against the TLS server, with the given client
/// certificate (`None`: only the CA).
fn agent(server: &Server, pki: &Pki, client: Option<&str>, run: &str) -> Agent {
    let dir = pki.path(run);
    std::fs::create_dir_all(&dir).unwrap();
    let mut args: Vec<String> = [
        "--server",
        &format!("https://{}", server.addr),
        "--device",
        "dev-1",
        "--credential-file",
        &s(&pki.path("credential")),
        "--lock-root",
        &s(&dir.join("locks")),
        "--state-dir",
        &s(&dir.join("state")),
        "--runtime",
        "hooks",
        "--api-listen",
        &format!("127.0.0.1:{}", support::free_port()),
        "--tls-ca",
        &s(&pki.path("ca.pem")),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    if let Some(name) = client {
        args.extend([
            "--tls-cert".into(),
            s(&pki.path(&format!("{name}.pem"))),
            "--tls-key".into(),
            s(&pki.path(&format!("{name}.key"))),
        ]);
    }
    Agent::spawn(&args)
}

#[tokio::test]
async fn under_mutual_tls_an_agent_connects_only_with_a_certificate_naming_its_device() {
    let pki = Pki::new();
    pki.issue("dev-1", &["dev-1"], ExtendedKeyUsagePurpose::ClientAuth);
    pki.issue("dev-2", &["dev-2"], ExtendedKeyUsagePurpose::ClientAuth);
    let server = tls_server(&pki, true, &[]);
    register(&server, &pki).await;

    // Without a client certificate: refused, and it says why.
    let mut without = agent(&server, &pki, None, "without");
    without.wait_log("a client certificate is required");
    without.kill9();

    // A valid certificate for another device: refused.
    let mut other = agent(&server, &pki, Some("dev-2"), "other");
    other.wait_log("does not name device dev-1");
    other.kill9();

    // Its own certificate: connected, and the server sees it online.
    let good = agent(&server, &pki, Some("dev-1"), "good");
    good.wait_log("connected to the server");
    let mut devices = DeviceServiceClient::new(tls_authed(&server, &pki.ca_pem()).await);
    support::eventually(30, "dev-1 in sync", || {
        let mut devices = devices.clone();
        async move {
            let d = devices
                .get_device(pb::GetDeviceRequest { id: "dev-1".into() })
                .await
                .ok()?
                .into_inner()
                .device?;
            (d.status == pb::DeviceStatus::InSync as i32).then_some(())
        }
    })
    .await;
    // Operators need no client certificate under mutual TLS.
    devices
        .list_fleets(pb::ListFleetsRequest {})
        .await
        .expect("an operator call without a client certificate");
}

/// Waits for the server's `dashboard listening url=...` line.
fn dashboard_addr(server: &Server) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = server.log.recv_timeout(left).expect("dashboard url logged");
        if line.contains("dashboard listening") {
            let url = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("url="))
                .expect("url= field")
                .to_owned();
            assert!(url.starts_with("https://"), "{url}");
            return url
                .trim_start_matches("https://")
                .trim_end_matches('/')
                .to_owned();
        }
    }
}

#[tokio::test]
async fn the_dashboard_answers_over_https_and_not_in_plain_text() {
    let pki = Pki::new();
    let server = tls_server(&pki, false, &["--dashboard-listen", "127.0.0.1:0"]);
    let addr = dashboard_addr(&server);

    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(
            pki.ca.der().to_vec(),
        ))
        .unwrap();
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let request = format!(
        "GET /api/fleets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        server.token()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.ok();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("\"fleets\"") || response.contains('['),
        "{response}"
    );

    // Plain HTTP to the same port gets no HTTP answer.
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"GET /api/fleets HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut plain = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut plain)).await;
    assert!(
        !String::from_utf8_lossy(&plain).starts_with("HTTP/1.1 200"),
        "plain HTTP was answered on the TLS port"
    );
}

#[tokio::test]
async fn plain_text_on_a_non_loopback_address_is_refused_unless_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(support::BIN)
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--dashboard-listen",
            "off",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing plain text") && err.contains("--insecure-plaintext"),
        "{err}"
    );

    let server = Server::spawn_at(
        "0.0.0.0:0",
        &["--insecure-plaintext", "--data-dir", &s(dir.path())],
        None,
    );
    // Served (reached over loopback), before it is stopped.
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", server.addr.port()))
        .unwrap()
        .connect()
        .await
        .expect("connect over loopback");
    assert!(health(channel).await.is_ok());
    assert!(server.terminate().success());
}

#[test]
fn a_plain_text_server_warns_at_start_up() {
    let server = Server::start(&[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = server.log.recv_timeout(left).expect("a plain-text warning");
        if line.contains("PLAIN TEXT") {
            assert!(line.contains("WARN"), "{line}");
            break;
        }
    }
}

#[test]
fn a_bad_certificate_stops_start_up_naming_the_file() {
    let pki = Pki::new();
    std::fs::write(pki.path("garbage.pem"), "not a certificate").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(support::BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--dashboard-listen",
            "off",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--tls-cert")
        .arg(pki.path("garbage.pem"))
        .arg("--tls-key")
        .arg(pki.path("server.key"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("garbage.pem"), "{err}");
}

#[test]
fn the_cli_talks_to_a_tls_server_when_it_trusts_the_ca() {
    let pki = Pki::new();
    let server = tls_server(&pki, false, &[]);
    let url = format!("https://{}", server.addr);
    let cli = |extra: &[&str]| {
        std::process::Command::new(support::BIN)
            .args(["fleet", "list", "--output", "json", "--server", &url])
            .args(extra)
            .env("LOCKSTEP_TOKEN", server.token())
            .output()
            .unwrap()
    };
    let ok = cli(&["--tls-ca", &s(&pki.path("ca.pem"))]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let refused = cli(&[]);
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--tls-ca"), "{err}");
}
