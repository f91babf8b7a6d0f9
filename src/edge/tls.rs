//! TLS (rustls, with the `ring` provider) for `lockstep serve` and its
//! clients. The server uses one certificate and key for gRPC and the web
//! dashboard (`--tls-cert`, `--tls-key`); with `--tls-client-ca` agents must
//! also present a client certificate signed by that CA which names their
//! device id as a DNS subject alternative name (checked by
//! `AgentService.Connect`, on top of the device credential). Other gRPC
//! clients (operators, the CLI) and the dashboard's browsers need no client
//! certificate. Clients (agent, CLI) trust the CA given with `--tls-ca` for
//! `https://` server URLs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::edge::limits::TLS_HANDSHAKE_TIMEOUT;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} {path} holds no usable PEM {expected}: {message}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
        message: String,
    },
    #[error("TLS configuration: {message}")]
    Config { message: String },
    #[error("{url}: {message}")]
    Url { url: String, message: String },
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn certs(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |message: String| TlsError::Pem {
        what,
        path: path.to_owned(),
        expected: "certificate",
        message,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE section".into()));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's certificate and key (PEM), and the CA agents' client
/// certificates must be signed by, if mutual TLS is on.
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
    dashboard: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads and checks the files: a bad certificate or key is an error at
    /// start-up, never at the first connection.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        let cert_pem = read("certificate (--tls-cert)", cert)?;
        let key_pem = read("key (--tls-key)", key)?;
        let chain = certs("certificate (--tls-cert)", cert, &cert_pem)?;
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
            what: "key (--tls-key)",
            path: key.to_owned(),
            expected: "private key",
            message: e.to_string(),
        })?;
        let client_ca_pem = match client_ca {
            Some(p) => {
                let pem = read("client CA (--tls-client-ca)", p)?;
                let mut roots = rustls::RootCertStore::empty();
                for c in certs("client CA (--tls-client-ca)", p, &pem)? {
                    roots.add(c).map_err(|e| TlsError::Pem {
                        what: "client CA (--tls-client-ca)",
                        path: p.to_owned(),
                        expected: "CA certificate",
                        message: e.to_string(),
                    })?;
                }
                Some(pem)
            }
            None => None,
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config {
                message: e.to_string(),
            })?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| TlsError::Config {
                message: format!("the certificate and key do not fit together: {e}"),
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            cert_pem,
            key_pem,
            client_ca_pem,
            dashboard: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Whether agents must present a client certificate.
    pub fn mutual(&self) -> bool {
        self.client_ca_pem.is_some()
    }

    /// tonic's TLS settings for the gRPC port. Client certificates are
    /// optional at the handshake (operators have none); `AgentService`
    /// requires one when [`ServerTls::mutual`].
    pub fn grpc(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        match &self.client_ca_pem {
            Some(ca) => config
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(true),
            None => config,
        }
    }

    /// The dashboard's TLS acceptor (same certificate, HTTP/1.1).
    pub fn dashboard(&self) -> TlsAcceptor {
        self.dashboard.clone()
    }
}

/// Whether a client certificate (already verified against the client CA
/// during the handshake) names `device` as a DNS subject alternative name.
pub fn cert_names_device(cert: &CertificateDer<'_>, device: &str) -> bool {
    let Ok(name) = ServerName::try_from(device) else {
        return false;
    };
    if !matches!(name, ServerName::DnsName(_)) {
        return false;
    }
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
}

/// A TCP listener whose connections are TLS streams, for `axum::serve`.
/// Handshakes run concurrently (at most 256 at once, each at most
/// [`TLS_HANDSHAKE_TIMEOUT`]), so a slow or plain-text client holds up no
/// one; a failed handshake is logged at debug level and dropped.
pub struct TlsListener {
    accepted: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, accepted) = mpsc::channel(64);
        let handshakes = Arc::new(Semaphore::new(256));
        let task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "dashboard accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = handshakes.clone().acquire_owned().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "dashboard TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "dashboard TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            accepted,
            local,
            task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(x) => x,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// A client's TLS settings: the CA it trusts for the server, and its own
/// certificate and key for mutual TLS (agents).
#[derive(Clone, Default)]
pub struct ClientTls {
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_cert", &self.identity.is_some())
            .finish()
    }
}

impl ClientTls {
    /// Reads the files given; `None` when none is.
    pub fn load(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Option<Self>, TlsError> {
        let ca_pem = match ca {
            Some(p) => {
                let pem = read("CA certificate (--tls-ca)", p)?;
                certs("CA certificate (--tls-ca)", p, &pem)?;
                Some(pem)
            }
            None => None,
        };
        let identity = match (cert, key) {
            (Some(c), Some(k)) => {
                let cert_pem = read("client certificate (--tls-cert)", c)?;
                certs("client certificate (--tls-cert)", c, &cert_pem)?;
                let key_pem = read("client key (--tls-key)", k)?;
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
                    what: "client key (--tls-key)",
                    path: k.to_owned(),
                    expected: "private key",
                    message: e.to_string(),
                })?;
                Some((cert_pem, key_pem))
            }
            (None, None) => None,
            _ => {
                return Err(TlsError::Config {
                    message: "--tls-cert and --tls-key go together".into(),
                });
            }
        };
        if ca_pem.is_none() && identity.is_none() {
            return Ok(None);
        }
        Ok(Some(Self { ca_pem, identity }))
    }

    fn config(&self) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new();
        if let Some(ca) = &self.ca_pem {
            c = c.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        c
    }
}

/// An endpoint for `url`: `https://` needs TLS settings with a CA (there
/// are no built-in roots: give the fleet's CA, or the system bundle such as
/// `/etc/ssl/certs/ca-certificates.crt`); `http://` refuses TLS settings, so
/// a certificate is never silently unused.
pub fn endpoint(url: &str, tls: Option<&ClientTls>) -> Result<Endpoint, TlsError> {
    let bad = |message: &str| TlsError::Url {
        url: url.to_owned(),
        message: message.to_owned(),
    };
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| bad(&e.to_string()))?;
    let https = url
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("https://");
    match (https, tls) {
        (true, Some(t)) if t.ca_pem.is_some() => endpoint
            .tls_config(t.config())
            .map_err(|e| bad(&e.to_string())),
        (true, _) => Err(bad("an https:// server needs --tls-ca (the CA to trust)")),
        (false, Some(_)) => Err(bad(
            "TLS settings were given but the server URL is not https://",
        )),
        (false, None) => Ok(endpoint),
    }
}
