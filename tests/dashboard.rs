//! The web dashboard end to end: a real `lockstep serve` (embedded SQLite)
//! with its dashboard on a free loopback port, seeded through the gRPC API,
//! real agents and flock-holding blocks where a scenario needs them, and
//! headless Chromium (Debian's `/usr/bin/chromium`, driven by playwright-core
//! from `tests/browser/`) looking at the pages after logging in with the
//! server's admin token. Plain HTTP checks cover the login, what each token
//! may see and do, the JSON API's errors and the event stream.
//!
//! The browser tests fail — never skip — when node, Chromium or
//! playwright-core is missing, naming the command that installs it.
//! Screenshots land in `<target dir>/dashboard-screenshots/<scenario>/`.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use lockstep::edge::grpc::pb;
use pb::catalog_service_client::CatalogServiceClient;
use pb::device_service_client::DeviceServiceClient;
use pb::operation_service_client::OperationServiceClient;
use pb::rollout_service_client::RolloutServiceClient;
use pb::window_service_client::WindowServiceClient;
use support::{Agent, Server, eventually, free_port};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Block `a` holds its lock while `<lock-dir>/hold` exists.
const LOCKING_BLOCK: &str = r#"echo $$ > "$LOCKSTEP_LOCK_DIR/pid"
while true; do
  if [ -f "$LOCKSTEP_LOCK_DIR/hold" ]; then
    flock "$LOCKSTEP_LOCK_FILE" sh -c 'while [ -f "$LOCKSTEP_LOCK_DIR/hold" ]; do sleep 0.05; done'
  fi
  sleep 0.05
done"#;

const PLAIN_BLOCK: &str = "echo $$ > \"$LOCKSTEP_LOCK_DIR/pid\"\nwhile true; do sleep 0.2; done";

const BLOCKS: [&str; 2] = ["a", "b"];

/// A server with its dashboard, fleet `site` (no windows needed unless a
/// test says so), blocks `a` (takes its lock on demand) and `b`, release
/// `r1`, and device `dev-1` with its credential and manifest on disk.
struct Fixture {
    server: Server,
    /// The dashboard's base URL, with a trailing slash.
    dashboard: String,
    /// The server's admin token.
    token: String,
    agent: Option<Agent>,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("server-data");
        let server = Server::spawn(
            &[
                "--data-dir",
                data.to_str().unwrap(),
                "--dashboard-listen",
                "127.0.0.1:0",
            ],
            None,
        );
        let dashboard = dashboard_url(&server);
        let token = server.token();
        let fx = Fixture {
            server,
            dashboard,
            token,
            agent: None,
            dir,
        };
        let ch = fx.server.channel().await;
        let mut cat = CatalogServiceClient::new(ch.clone());
        let mut devs = DeviceServiceClient::new(ch);
        devs.create_fleet(pb::CreateFleetRequest {
            id: "site".into(),
            name: "North site".into(),
        })
        .await
        .unwrap();
        fx.set_policy(&[], &[]).await;
        let mut manifest_blocks = Vec::new();
        for (i, block) in BLOCKS.into_iter().enumerate() {
            cat.create_block(pb::CreateBlockRequest {
                name: block.into(),
                description: String::new(),
            })
            .await
            .unwrap();
            cat.create_block_version(pb::CreateBlockVersionRequest {
                block_version: Some(pb::BlockVersion {
                    block: block.into(),
                    version: "1.0.0".into(),
                    image_digest: format!("sha256:{:064x}", i + 1),
                    config: Some(pb::BlockConfig {
                        command: command(block),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
            manifest_blocks.push(serde_json::json!({
                "name": block, "version": "1.0.0", "command": command(block), "env": {}
            }));
        }
        cat.create_release(pb::CreateReleaseRequest {
            id: "r1".into(),
            fleet: "site".into(),
            blocks: BLOCKS
                .iter()
                .map(|b| pb::BlockRef {
                    block: (*b).into(),
                    version: "1.0.0".into(),
                })
                .collect(),
            env: Default::default(),
        })
        .await
        .unwrap();
        let reg = devs
            .register_device(pb::RegisterDeviceRequest {
                id: "dev-1".into(),
                fleet: "site".into(),
                tags: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        std::fs::write(fx.dir.path().join("credential"), &reg.credential).unwrap();
        let manifest =
            serde_json::json!({ "release": "r1", "os_version": "1.0", "blocks": manifest_blocks });
        std::fs::write(fx.dir.path().join("manifest.json"), manifest.to_string()).unwrap();
        fx
    }

    fn lock_dir(&self, block: &str) -> PathBuf {
        self.dir.path().join("locks").join(block)
    }

    /// Starts `lockstep agent` for dev-1 (reboot and OS update hooks succeed).
    fn start_agent(&mut self) {
        let d = self.dir.path();
        let args: Vec<String> = vec![
            "--server".into(),
            self.server.url(),
            "--device".into(),
            "dev-1".into(),
            "--credential-file".into(),
            d.join("credential").to_str().unwrap().into(),
            "--lock-root".into(),
            d.join("locks").to_str().unwrap().into(),
            "--state-dir".into(),
            d.join("agent-state").to_str().unwrap().into(),
            "--manifest".into(),
            d.join("manifest.json").to_str().unwrap().into(),
            "--api-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--lock-poll".into(),
            "100ms".into(),
            "--hook-reboot".into(),
            "true".into(),
            "--hook-os-update".into(),
            "true".into(),
        ];
        let agent = Agent::spawn(&args);
        agent.wait_log("connected to the server");
        self.agent = Some(agent);
    }

    fn hold(&self, block: &str, on: bool) {
        let f = self.lock_dir(block).join("hold");
        if on {
            std::fs::write(f, b"").unwrap();
        } else {
            std::fs::remove_file(f).unwrap();
        }
    }

    async fn set_policy(&self, needs_window: &[&str], needs_approval: &[&str]) {
        let list = |l: &[&str]| l.iter().map(|k| (*k).to_string()).collect();
        WindowServiceClient::new(self.server.channel().await)
            .set_fleet_policy(pb::SetFleetPolicyRequest {
                policy: Some(pb::FleetPolicy {
                    fleet: "site".into(),
                    needs_window: list(needs_window),
                    needs_approval: list(needs_approval),
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await
            .unwrap();
    }

    async fn lock_held(&self, block: &str) -> bool {
        DeviceServiceClient::new(self.server.channel().await)
            .get_device_state(pb::GetDeviceStateRequest { id: "dev-1".into() })
            .await
            .unwrap()
            .into_inner()
            .locks
            .iter()
            .any(|l| l.block == block && l.held)
    }

    async fn create_op(&self, spec: pb::operation_spec::Kind) -> u64 {
        OperationServiceClient::new(self.server.channel().await)
            .create_operation(pb::CreateOperationRequest {
                device: "dev-1".into(),
                spec: Some(pb::OperationSpec { kind: Some(spec) }),
                force: None,
                actor: "test".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .operation
            .unwrap()
            .id
    }

    async fn op(&self, id: u64) -> pb::OperationInfo {
        OperationServiceClient::new(self.server.channel().await)
            .get_operation(pb::GetOperationRequest { id })
            .await
            .unwrap()
            .into_inner()
            .operation
            .unwrap()
    }

    async fn wait_op(&self, id: u64, status: &str) -> pb::OperationInfo {
        eventually(30, &format!("operation {id} to be {status}"), || async {
            let op = self.op(id).await;
            (op.status == status).then_some(op)
        })
        .await
    }

    /// GET a dashboard path (no leading slash); (status, JSON body).
    async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        get_json(&self.dashboard, &self.token, path).await
    }

    /// POST a JSON body to a dashboard path; (status, JSON body).
    async fn post(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        post_json(&self.dashboard, &self.token, path, body).await
    }

    /// A rollout of release r1 to the fleet, created through gRPC. dev-1
    /// never connects, so its operation stays in flight and the rollout
    /// running until an operator acts; returns once that operation exists.
    async fn running_rollout(&self) -> u64 {
        let id = create_rollout(self.server.channel().await, "r1", 0).await;
        eventually(30, "dev-1's rollout operation to start", || async {
            let (_, s) = self.get(&format!("api/rollouts/{id}")).await;
            (s["progress"]["in_flight"] == 1).then_some(())
        })
        .await;
        id
    }
}

/// GET a dashboard path (no leading slash) with `token`; (status, JSON body).
async fn get_json(base: &str, token: &str, path: &str) -> (u16, serde_json::Value) {
    let (status, _, body) = http(base, Some(token), "GET", path, None, "").await;
    (status, serde_json::from_str(&body).unwrap_or_default())
}

/// POST a JSON body to a dashboard path with `token`; (status, JSON body).
async fn post_json(base: &str, token: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, _, body) = http(
        base,
        Some(token),
        "POST",
        path,
        Some("application/json"),
        body,
    )
    .await;
    (status, serde_json::from_str(&body).unwrap_or_default())
}

/// Creates a rollout of `release` to fleet `site` through gRPC, with a
/// canary of `canary` devices and then everyone else; its id.
async fn create_rollout(ch: support::Chan, release: &str, canary: u32) -> u64 {
    RolloutServiceClient::new(ch)
        .create_rollout(pb::CreateRolloutRequest {
            fleet: "site".into(),
            target: Some(pb::create_rollout_request::Target::Release(release.into())),
            strategy: Some(pb::RolloutStrategy {
                canary,
                ..Default::default()
            }),
            actor: "ops@example".into(),
            seed: 7,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .rollout
        .unwrap()
        .id
}

/// A rollout as gRPC `GetRollout` sees it.
async fn grpc_rollout(ch: support::Chan, id: u64) -> pb::RolloutStatus {
    RolloutServiceClient::new(ch)
        .get_rollout(pb::GetRolloutRequest { id })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.agent.take();
        // Block processes outlive their agent by design: end this test's,
        // by the pids they wrote.
        for block in BLOCKS {
            if let Ok(pid) = std::fs::read_to_string(self.lock_dir(block).join("pid")) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", pid.trim()])
                    .status();
            }
        }
    }
}

fn command(block: &str) -> Vec<String> {
    let body = if block == "a" {
        LOCKING_BLOCK
    } else {
        PLAIN_BLOCK
    };
    vec!["sh".into(), "-c".into(), body.into()]
}

/// The dashboard URL the server logs right after it starts listening.
fn dashboard_url(server: &Server) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = server
            .log
            .recv_timeout(left)
            .expect("the server logs its dashboard URL at start");
        if line.contains("dashboard listening") {
            let url = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("url="))
                .expect("url= in the dashboard line");
            assert!(
                url.starts_with("http://127.0.0.1:") && url.ends_with('/'),
                "{url}"
            );
            return url.to_owned();
        }
    }
}

/// One HTTP/1.1 request over a plain TCP connection, with the token as a
/// bearer header if given; (status, headers, body).
async fn http(
    base: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let host = base
        .strip_prefix("http://")
        .and_then(|r| r.strip_suffix('/'))
        .expect("http://host:port/");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let ct = content_type
        .map(|c| format!("Content-Type: {c}\r\n"))
        .unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} /{path} HTTP/1.1\r\nHost: {host}\r\n{ct}{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut buf))
        .await
        .expect("the dashboard answers within 30 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

// ------------------------------------------------------------ the browser

/// Fails (never skips) unless node, Debian's Chromium and the committed
/// playwright-core are installed; the message says how to install them.
fn browser_prerequisites() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let mut missing = Vec::new();
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        missing.push("Node.js 20 or newer (`node` on PATH)");
    }
    if !Path::new("/usr/bin/chromium").exists() {
        missing.push(
            "Chromium at /usr/bin/chromium: apt-get install -y --no-install-recommends chromium",
        );
    }
    if !dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push("playwright-core: npm ci --prefix tests/browser");
    }
    assert!(
        missing.is_empty(),
        "the dashboard's browser tests need: {}. (.ci/run installs them when missing.)",
        missing.join("; ")
    );
    dir
}

/// Where a scenario's screenshots go: `<target dir>/dashboard-screenshots/<name>`,
/// emptied first.
fn screenshot_dir(name: &str) -> PathBuf {
    let target = Path::new(support::BIN)
        .parent()
        .and_then(Path::parent)
        .expect("the binary lives in <target>/<profile>/");
    let dir = target.join("dashboard-screenshots").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A browser scenario (`node tests/browser/<script> <url> <screenshot-dir>`)
/// driven step by step: it stops at each `STEP`, the test acts and replies.
struct Browser {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    stderr: tokio::task::JoinHandle<String>,
    output: Vec<String>,
    screenshots: Vec<String>,
}

/// How long a scenario may take between two steps.
const STEP_TIMEOUT: Duration = Duration::from_secs(90);

impl Browser {
    /// Runs `script` against the dashboard at `url`, logging in with `token`
    /// on the login page first.
    fn start(script: &str, url: &str, token: &str, shots: &Path) -> Browser {
        let dir = browser_prerequisites();
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join(script))
            .arg(url)
            .arg(shots)
            .env("LOCKSTEP_TOKEN", token)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run node");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut err = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s).await;
            s
        });
        Browser {
            child,
            stdin,
            lines,
            stderr,
            output: Vec::new(),
            screenshots: Vec::new(),
        }
    }

    /// The next line that is not a screenshot; `None` at the end of output.
    async fn line(&mut self) -> Option<String> {
        loop {
            let line = tokio::time::timeout(STEP_TIMEOUT, self.lines.next_line())
                .await
                .expect("the browser scenario said nothing for 90 s")
                .unwrap()?;
            eprintln!("[browser] {line}");
            self.output.push(line.clone());
            match line.strip_prefix("SHOT ") {
                Some(path) => {
                    println!("screenshot: {path}");
                    self.screenshots.push(path.to_owned());
                }
                None => return Some(line),
            }
        }
    }

    /// Waits for the scenario's next step: its name and data.
    async fn step(&mut self, expected: &str) -> serde_json::Value {
        loop {
            let Some(line) = self.line().await else {
                let report = self.report().await;
                panic!("the browser scenario ended before step {expected}:\n{report}");
            };
            if let Some(rest) = line.strip_prefix("STEP ") {
                let (name, data) = rest.split_once(' ').unwrap_or((rest, "{}"));
                assert_eq!(name, expected, "the scenario's steps");
                return serde_json::from_str(data).unwrap_or_default();
            }
        }
    }

    async fn reply(&mut self, data: serde_json::Value) {
        self.stdin
            .write_all(format!("{data}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Everything the scenario printed, for a failure message.
    async fn report(&mut self) -> String {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        let stderr = tokio::time::timeout(Duration::from_secs(5), &mut self.stderr)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        format!(
            "stdout:\n{}\nstderr:\n{stderr}\nscreenshots: {:?}",
            self.output.join("\n"),
            self.screenshots
        )
    }

    /// Waits for the scenario to end; it must print OK and exit 0.
    async fn finish(mut self) -> Vec<String> {
        while self.line().await.is_some() {}
        let status = tokio::time::timeout(STEP_TIMEOUT, self.child.wait())
            .await
            .expect("node exits")
            .unwrap();
        let ok = self.output.iter().any(|l| l == "OK");
        if !status.success() || !ok {
            let report = self.report().await;
            panic!("the browser scenario failed ({status}):\n{report}");
        }
        assert!(
            !self.screenshots.is_empty(),
            "the scenario took screenshots"
        );
        for s in &self.screenshots {
            assert!(Path::new(s).is_file(), "screenshot {s} was written");
        }
        self.screenshots
    }
}

#[tokio::test]
async fn the_device_page_shows_a_wait_on_a_held_lock_and_follows_its_release_live() {
    browser_prerequisites();
    let mut fx = Fixture::start().await;
    fx.start_agent();
    fx.hold("a", true);
    eventually(20, "a's lock reported held", || async {
        fx.lock_held("a").await.then_some(())
    })
    .await;
    let op = fx
        .create_op(pb::operation_spec::Kind::Reboot(
            pb::operation_spec::Empty {},
        ))
        .await;
    fx.wait_op(op, "waiting_lock").await;

    // The overview's API says what the page will show.
    let (status, list) = fx.get("api/devices?fleet=site").await;
    assert_eq!(status, 200, "{list}");
    let dev = &list["devices"][0];
    assert_eq!(
        (
            dev["id"].as_str(),
            dev["status"].as_str(),
            dev["waiting_on"][0]["block"].as_str(),
            dev["waiting_on"][0]["reason"].as_str()
        ),
        (
            Some("dev-1"),
            Some("waiting_lock"),
            Some("a"),
            Some("reboot")
        ),
        "{list}"
    );
    let (_, fleets) = fx.get("api/fleets").await;
    assert_eq!(fleets["fleets"][0]["counts"]["waiting_lock"], 1, "{fleets}");

    let shots = screenshot_dir("device-lock");
    let mut browser = Browser::start("device_lock.mjs", &fx.dashboard, &fx.token, &shots);
    browser.step("ready").await;
    browser
        .reply(serde_json::json!({ "device": "dev-1" }))
        .await;
    browser.step("release-lock").await;
    fx.hold("a", false);
    browser.reply(serde_json::json!({})).await;
    browser.step("done").await;
    assert_eq!(fx.op(op).await.status, "done");
    let (_, device) = fx.get("api/devices/dev-1").await;
    assert_eq!(device["device"]["status"], "in_sync", "{device}");
    browser.reply(serde_json::json!({})).await;
    let screenshots = browser.finish().await;
    assert!(
        screenshots
            .iter()
            .any(|s| s.ends_with("device-waiting-on-lock.png")),
        "{screenshots:?}"
    );
}

#[tokio::test]
async fn a_customer_declines_then_approves_a_window_on_the_approvals_page() {
    use pb::operation_spec::Kind;
    browser_prerequisites();
    let mut fx = Fixture::start().await;
    fx.set_policy(&["os_update"], &["os_update"]).await;
    // A window an hour from now: once approved, the update waits for it.
    let start = lockstep::clock::now().0 + 3_600_000;
    let end = start + 7_200_000;
    WindowServiceClient::new(fx.server.channel().await)
        .create_window(pb::CreateWindowRequest {
            scope: Some(pb::WindowScope {
                scope: Some(pb::window_scope::Scope::Fleet("site".into())),
            }),
            rule: Some(pb::create_window_request::Rule::OneOff(pb::OneOffRule {
                start_unix_ms: start,
                end_unix_ms: end,
            })),
        })
        .await
        .unwrap();
    fx.start_agent();
    let first = fx.create_op(Kind::OsUpdate("2.0".into())).await;
    fx.wait_op(first, "waiting_approval").await;

    let shots = screenshot_dir("approvals");
    let mut browser = Browser::start("approvals.mjs", &fx.dashboard, &fx.token, &shots);
    browser.step("ready").await;
    browser
        .reply(serde_json::json!({ "operation": first }))
        .await;

    // Declined on the page: the operation is cancelled, naming who and why.
    browser.step("declined").await;
    let cancelled = fx.wait_op(first, "cancelled").await;
    assert!(
        cancelled.error.contains("customer@site") && cancelled.error.contains("harvest week"),
        "{}",
        cancelled.error
    );
    let (status, op) = fx.get(&format!("api/operations/{first}")).await;
    assert_eq!((status, op["status"].as_str()), (200, Some("cancelled")));

    // A second request, approved on the page: scheduled for the window.
    let second = fx.create_op(Kind::OsUpdate("2.0".into())).await;
    fx.wait_op(second, "waiting_approval").await;
    browser
        .reply(serde_json::json!({ "operation": second }))
        .await;
    let approved = browser.step("approved").await;
    assert_eq!(approved["start"], start, "the next occurrence was approved");
    fx.wait_op(second, "waiting_window").await;
    let approvals = WindowServiceClient::new(fx.server.channel().await)
        .list_approvals(pb::ListApprovalsRequest {
            status: "approved".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .approvals;
    assert_eq!(
        approvals
            .iter()
            .map(|a| (
                a.operation_id,
                a.approved.map(|w| (w.start_unix_ms, w.end_unix_ms))
            ))
            .collect::<Vec<_>>(),
        vec![(second, Some((start, end)))],
        "the approved occurrence is the operation's window"
    );
    let (status, view) = fx.get(&format!("api/operations/{second}")).await;
    assert_eq!(
        (status, view["status"].as_str()),
        (200, Some("waiting_window")),
        "{view}"
    );
    let (_, decided) = fx.get("api/approvals?status=approved").await;
    assert_eq!(decided["approvals"][0]["operation"]["id"], second);
    let decided_by = decided["approvals"][0]["decided_by"]
        .as_str()
        .unwrap_or_default();
    assert!(
        decided_by.starts_with("customer@site via bootstrap-admin (token "),
        "the name given on the page, beside the token that decided: {decided_by}"
    );
    assert_eq!(decided["approvals"][0]["approved"]["start_ms"], start);
    // Decided once: deciding again is refused, whichever way.
    let id = decided["approvals"][0]["id"].as_i64().unwrap();
    let (status, again) = fx
        .post(
            &format!("api/approvals/{id}/decline"),
            r#"{"message":"changed my mind","actor":"customer@site"}"#,
        )
        .await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(fx.op(second).await.status, "waiting_window");
    browser.reply(serde_json::json!({})).await;
    browser.finish().await;
}

// ------------------------------------------------------------ plain HTTP

#[tokio::test]
async fn the_json_api_refuses_bad_input_with_400_naming_the_field() {
    let fx = Fixture::start().await;
    for (path, field) in [
        ("api/devices?status=sleeping", "status"),
        ("api/devices?page_size=0", "page_size"),
        ("api/devices?fleet=Bad%20Fleet!", "fleet"),
        ("api/devices?colour=red", "colour"),
        ("api/devices/dev-1/timeline?limit=lots", "limit"),
        ("api/operations/0", "id"),
        ("api/operations/abc", "id"),
        ("api/approvals?status=maybe", "status"),
        ("api/events?device=no%20spaces", "device"),
        ("api/rollouts?fleet=Bad%20Fleet!", "fleet"),
        ("api/rollouts?limit=0", "limit"),
        ("api/rollouts?colour=red", "colour"),
        ("api/rollouts/0", "id"),
        ("api/rollouts/abc", "id"),
        ("api/rollouts/-3/events", "id"),
    ] {
        let (status, body) = fx.get(path).await;
        assert_eq!(
            (status, body["field"].as_str()),
            (400, Some(field)),
            "{path}: {body}"
        );
        assert!(
            body["error"].as_str().unwrap_or("").starts_with(field),
            "{path}: {body}"
        );
    }
    for (body, field) in [
        (r#"{"actor":"x"}"#, "occurrence"),
        (r#"{"actor":"x","occurrence":"soon"}"#, "occurrence"),
        (
            r#"{"actor":"x","occurrence":{"start_ms":"noon","end_ms":2}}"#,
            "occurrence.start_ms",
        ),
        (r#"{"actor":7}"#, "actor"),
        ("not json", "body"),
        ("[1]", "body"),
    ] {
        let (status, answer) = fx.post("api/approvals/1/approve", body).await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (400, Some(field)),
            "{body}: {answer}"
        );
    }
    let (status, answer) = fx
        .post(
            "api/approvals/1/decline",
            r#"{"message":["no"],"actor":"x"}"#,
        )
        .await;
    assert_eq!((status, answer["field"].as_str()), (400, Some("message")));
    // Rollout actions need why (the audit log says it, beside the token;
    // `actor` is an optional note); the body is checked before the rollout
    // is looked up.
    for action in ["pause", "resume", "abort"] {
        for (body, field) in [
            (r#"{"actor":7,"reason":"site visit"}"#, "actor"),
            (r#"{"actor":"ops@site"}"#, "reason"),
            (r#"{"reason":"  "}"#, "reason"),
            (r#"{"actor":"ops@site","reason":["no"]}"#, "reason"),
            ("not json", "body"),
            ("[1]", "body"),
        ] {
            let (status, answer) = fx.post(&format!("api/rollouts/1/{action}"), body).await;
            assert_eq!(
                (status, answer["field"].as_str()),
                (400, Some(field)),
                "{action} {body}: {answer}"
            );
        }
        let (status, answer) = fx
            .post(
                &format!("api/rollouts/x/{action}"),
                r#"{"actor":"a","reason":"b"}"#,
            )
            .await;
        assert_eq!((status, answer["field"].as_str()), (400, Some("id")));
    }
    let long = "x".repeat(4097);
    let (status, answer) = fx
        .post(
            "api/rollouts/1/pause",
            &serde_json::json!({ "actor": "a", "reason": long }).to_string(),
        )
        .await;
    assert_eq!((status, answer["field"].as_str()), (400, Some("reason")));
    let (status, answer) = fx
        .post(
            "api/rollouts/1/pause",
            &serde_json::json!({ "actor": "x".repeat(257), "reason": "why" }).to_string(),
        )
        .await;
    assert_eq!((status, answer["field"].as_str()), (400, Some("actor")));
    // A write must say it is JSON (a cross-site form cannot).
    for path in ["api/approvals/1/decline", "api/rollouts/1/abort"] {
        let (status, _, _) = http(
            &fx.dashboard,
            Some(&fx.token),
            "POST",
            path,
            Some("application/x-www-form-urlencoded"),
            "reason=x&actor=y",
        )
        .await;
        assert_eq!(status, 415, "{path}");
    }
}

#[tokio::test]
async fn the_json_api_answers_404_for_what_does_not_exist() {
    let fx = Fixture::start().await;
    for path in [
        "api/devices/dev-9",
        "api/devices/dev-9/timeline",
        "api/operations/999",
        "api/devices?fleet=elsewhere",
        "api/events?fleet=elsewhere",
        "api/events?device=dev-9",
        "api/rollouts/999",
        "api/rollouts/999/events",
        "api/rollouts?fleet=elsewhere",
        "api/nothing-here",
    ] {
        let (status, body) = fx.get(path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: {body}"
        );
    }
    let (status, body) = fx
        .post(
            "api/approvals/999/decline",
            r#"{"message":"no","actor":"customer@site"}"#,
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("999"), "{body}");
    for action in ["pause", "resume", "abort"] {
        let (status, body) = fx
            .post(
                &format!("api/rollouts/999/{action}"),
                r#"{"actor":"ops@site","reason":"site visit"}"#,
            )
            .await;
        assert_eq!(status, 404, "{action}: {body}");
        assert!(body["error"].as_str().unwrap().contains("999"), "{body}");
    }
    let (status, _, page) = http(
        &fx.dashboard,
        Some(&fx.token),
        "GET",
        "devices/dev-9",
        None,
        "",
    )
    .await;
    assert_eq!(status, 404);
    assert!(page.contains("No device dev-9"), "{page}");
    for (path, says) in [
        ("rollouts/999", "No rollout 999"),
        ("rollouts/abc", "No such rollout"),
    ] {
        let (status, _, page) = http(&fx.dashboard, Some(&fx.token), "GET", path, None, "").await;
        assert_eq!(status, 404, "{path}");
        assert!(page.contains(says), "{path}: {page}");
    }
}

#[tokio::test]
async fn the_pages_and_assets_are_served_from_the_binary_with_a_shared_nav() {
    let fx = Fixture::start().await;
    let rollout = fx.running_rollout().await;
    let rollout_page = format!("rollouts/{rollout}");
    let rollout_marker = format!("data-rollout=\"{rollout}\"");
    for (path, marker) in [
        ("", "data-page=\"fleet\""),
        ("approvals", "data-page=\"approvals\""),
        ("devices/dev-1", "data-device=\"dev-1\""),
        ("rollouts", "data-page=\"rollouts\""),
        (rollout_page.as_str(), rollout_marker.as_str()),
    ] {
        let (status, head, page) =
            http(&fx.dashboard, Some(&fx.token), "GET", path, None, "").await;
        assert_eq!(status, 200, "/{path}");
        assert!(head.contains("content-type: text/html"), "/{path}: {head}");
        assert!(
            head.contains("content-security-policy: default-src 'self'"),
            "{head}"
        );
        assert!(page.contains(marker), "/{path}: {page}");
        for link in [
            "<a href=\"/\"",
            "<a href=\"/rollouts\"",
            "<a href=\"/approvals\"",
        ] {
            assert!(page.contains(link), "/{path} has the nav link {link}");
        }
        assert!(page.contains("/assets/app.js") && page.contains("/assets/app.css"));
    }
    for (asset, kind) in [
        ("app.js", "text/javascript"),
        ("app.css", "text/css"),
        ("fleet.js", "text/javascript"),
        ("device.js", "text/javascript"),
        ("approvals.js", "text/javascript"),
        ("rollouts.js", "text/javascript"),
        ("rollout.js", "text/javascript"),
    ] {
        let (status, head, body) = http(
            &fx.dashboard,
            Some(&fx.token),
            "GET",
            &format!("assets/{asset}"),
            None,
            "",
        )
        .await;
        assert_eq!(status, 200, "{asset}");
        assert!(head.contains(kind), "{asset}: {head}");
        assert!(!body.is_empty());
    }
    let (status, _, _) = http(
        &fx.dashboard,
        Some(&fx.token),
        "GET",
        "assets/missing.js",
        None,
        "",
    )
    .await;
    assert_eq!(status, 404);
}

/// Reads the event stream until a `data:` line, and parses it.
async fn next_event(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> serde_json::Value {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let text = String::from_utf8_lossy(buf).into_owned();
            if let Some(at) = text.find("\ndata: ") {
                let rest = &text[at + 7..];
                if let Some(end) = rest.find('\n') {
                    let json = rest[..end].trim().to_owned();
                    buf.drain(..at + 7 + end);
                    return serde_json::from_str(&json).unwrap();
                }
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the event stream closed");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("an event within 20 s")
}

#[tokio::test]
async fn the_event_stream_sends_the_watched_devices_events_as_json() {
    let fx = Fixture::start().await;
    DeviceServiceClient::new(fx.server.channel().await)
        .register_device(pb::RegisterDeviceRequest {
            id: "dev-2".into(),
            fleet: "site".into(),
            tags: vec![],
        })
        .await
        .unwrap();
    let host = fx
        .dashboard
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(&host).await.unwrap();
    stream
        .write_all(
            format!("GET /api/events?device=dev-1 HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nCookie: lockstep_token={}\r\n\r\n", fx.token)
                .as_bytes(),
        )
        .await
        .unwrap();
    // Subscribed once the headers arrive.
    let mut buf = Vec::new();
    while !String::from_utf8_lossy(&buf).contains("\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk))
            .await
            .expect("headers within 20 s")
            .unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");

    // Cancelling operations publishes events: dev-2's is filtered out.
    let mut ops = OperationServiceClient::new(fx.server.channel().await);
    for device in ["dev-2", "dev-1"] {
        let op = ops
            .create_operation(pb::CreateOperationRequest {
                device: device.into(),
                spec: Some(pb::OperationSpec {
                    kind: Some(pb::operation_spec::Kind::Reboot(
                        pb::operation_spec::Empty {},
                    )),
                }),
                force: None,
                actor: "test".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .operation
            .unwrap();
        ops.cancel_operation(pb::CancelOperationRequest {
            id: op.id,
            actor: "ops@example".into(),
            reason: format!("not today on {device}"),
        })
        .await
        .unwrap();
    }
    let event = next_event(&mut stream, &mut buf).await;
    assert_eq!(event["kind"], "cancelled", "{event}");
    assert_eq!(event["device"], "dev-1", "{event}");
    assert_eq!(event["message"], "not today on dev-1", "{event}");
    assert!(
        event["operation"].as_i64().is_some_and(|id| id > 0),
        "{event}"
    );

    // A page that reconnects with the SSE `Last-Event-ID` gets what it
    // missed from the event log: from the start here, so the cancel again,
    // with nothing new happening.
    let mut again = tokio::net::TcpStream::connect(&host).await.unwrap();
    again
        .write_all(
            format!("GET /api/events?device=dev-1 HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nLast-Event-ID: 0\r\nCookie: lockstep_token={}\r\n\r\n", fx.token)
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let replayed = loop {
        let e = next_event(&mut again, &mut buf).await;
        if e["kind"] == "cancelled" {
            break e;
        }
    };
    assert_eq!(replayed["device"], "dev-1", "{replayed}");
    assert_eq!(replayed["operation"], event["operation"], "{replayed}");
}

#[test]
fn serve_refuses_a_dashboard_address_in_use_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(support::BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--dashboard-listen",
            &addr,
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on") && err.contains(&addr),
        "{err}"
    );
}

#[test]
fn the_dashboard_listen_flag_refuses_what_is_not_an_address_or_off() {
    let out = std::process::Command::new(support::BIN)
        .args(["serve", "--dashboard-listen", "everywhere"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--dashboard-listen") && err.contains("off"),
        "{err}"
    );
}

// ------------------------------------------------------------ who may look

/// A new token made through `TokenService` with the fixture's admin token.
async fn new_token(fx: &Fixture, role: &str, fleets: &[&str]) -> String {
    pb::token_service_client::TokenServiceClient::new(fx.server.channel().await)
        .create_token(pb::CreateTokenRequest {
            name: format!("{role} token"),
            role: role.into(),
            fleets: fleets.iter().map(|f| (*f).into()).collect(),
            expires_in_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .secret
}

/// GET with `token` as a bearer header; (status, JSON body).
async fn get_as(fx: &Fixture, token: &str, path: &str) -> (u16, serde_json::Value) {
    let (status, _, body) = http(&fx.dashboard, Some(token), "GET", path, None, "").await;
    (status, serde_json::from_str(&body).unwrap_or_default())
}

/// POST a JSON body with `token` as a bearer header; (status, JSON body).
async fn post_as(fx: &Fixture, token: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, _, body) = http(
        &fx.dashboard,
        Some(token),
        "POST",
        path,
        Some("application/json"),
        body,
    )
    .await;
    (status, serde_json::from_str(&body).unwrap_or_default())
}

/// One request carrying a `Cookie` header; (status, headers, body).
async fn with_cookie(
    fx: &Fixture,
    method: &str,
    path: &str,
    cookie: &str,
) -> (u16, String, String) {
    let host = fx
        .dashboard
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let req = format!(
        "{method} /{path} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

#[tokio::test]
async fn without_a_token_pages_go_to_the_login_and_the_api_answers_401() {
    let fx = Fixture::start().await;
    for (path, next) in [
        ("", "/"),
        ("approvals", "/approvals"),
        ("devices/dev-1", "/devices/dev-1"),
        ("rollouts", "/rollouts"),
        ("rollouts/1", "/rollouts/1"),
    ] {
        let (status, head, _) = http(&fx.dashboard, None, "GET", path, None, "").await;
        assert_eq!(status, 303, "/{path}");
        assert!(
            head.contains(&format!("location: /login?next={next}")),
            "/{path}: {head}"
        );
    }
    for path in [
        "api/fleets",
        "api/devices",
        "api/approvals",
        "api/events",
        "api/me",
        "api/rollouts",
        "api/rollouts/1",
        "api/rollouts/1/events",
    ] {
        let (status, _, body) = http(&fx.dashboard, None, "GET", path, None, "").await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body.contains("missing authorization"), "{path}: {body}");
    }
    for (path, body) in [
        ("api/approvals/1/decline", r#"{"message":"no"}"#),
        ("api/rollouts/1/pause", r#"{"reason":"no"}"#),
    ] {
        let (status, _, answer) = http(
            &fx.dashboard,
            None,
            "POST",
            path,
            Some("application/json"),
            body,
        )
        .await;
        assert_eq!(status, 401, "{path}: {answer}");
    }
    // The login page and its assets need no token; the nav is not shown.
    let (status, _, page) = http(&fx.dashboard, None, "GET", "login", None, "").await;
    assert_eq!(status, 200);
    assert!(page.contains("id=\"login\"") && !page.contains("<a href=\"/approvals\""));
    let (status, _, _) = http(&fx.dashboard, None, "GET", "assets/login.js", None, "").await;
    assert_eq!(status, 200);

    // Logging in: a bad token is refused; a good one is kept in a cookie
    // scripts cannot read and other sites cannot send.
    for (body, want) in [
        (r#"{"token":"lst_000000000000_nope"}"#, 401),
        (r#"{"token":"hunter2"}"#, 401),
        (r#"{}"#, 400),
    ] {
        let (status, _, answer) = http(
            &fx.dashboard,
            None,
            "POST",
            "api/login",
            Some("application/json"),
            body,
        )
        .await;
        assert_eq!(status, want, "{body}: {answer}");
    }
    let (status, head, body) = http(
        &fx.dashboard,
        None,
        "POST",
        "api/login",
        Some("application/json"),
        &format!(r#"{{"token":"{}"}}"#, fx.token),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let cookie_line = head
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    for part in [
        "lockstep_token=lst_",
        "httponly",
        "samesite=strict",
        "path=/",
    ] {
        assert!(cookie_line.contains(part), "{part} in {cookie_line}");
    }
    let cookie = format!("lockstep_token={}", fx.token);
    let (status, _, page) = with_cookie(&fx, "GET", "", &cookie).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("bootstrap-admin · admin · all fleets"),
        "{page}"
    );
    let (status, _, me) = with_cookie(&fx, "GET", "api/me", &cookie).await;
    assert_eq!(status, 200);
    let me: serde_json::Value = serde_json::from_str(&me).unwrap();
    assert_eq!(me["role"], "admin");
    let (status, head, _) = with_cookie(&fx, "POST", "api/logout", &cookie).await;
    assert_eq!(status, 204);
    assert!(head.contains("max-age=0"), "{head}");

    // A revoked token's cookie no longer opens anything.
    let viewer = new_token(&fx, "viewer", &[]).await;
    let id = viewer.split('_').nth(1).unwrap().to_owned();
    pb::token_service_client::TokenServiceClient::new(fx.server.channel().await)
        .revoke_token(pb::RevokeTokenRequest {
            id,
            reason: String::new(),
        })
        .await
        .unwrap();
    let (status, _, body) = with_cookie(
        &fx,
        "GET",
        "api/fleets",
        &format!("lockstep_token={viewer}"),
    )
    .await;
    assert_eq!(status, 401);
    assert!(body.contains("was revoked"), "{body}");
}

#[tokio::test]
async fn a_customer_sees_only_its_fleets_and_a_viewer_cannot_decide() {
    let fx = Fixture::start().await;
    let mut devs = DeviceServiceClient::new(fx.server.channel().await);
    devs.create_fleet(pb::CreateFleetRequest {
        id: "other".into(),
        name: "Elsewhere".into(),
    })
    .await
    .unwrap();
    devs.register_device(pb::RegisterDeviceRequest {
        id: "dev-2".into(),
        fleet: "other".into(),
        tags: vec![],
    })
    .await
    .unwrap();
    // An open approval on dev-1 (site): dev-1 never connects here, so it is
    // opened straight in the database.
    let op = fx
        .create_op(pb::operation_spec::Kind::OsUpdate("2.0".into()))
        .await;
    let store = lockstep::store::SqliteStore::open(
        &fx.dir.path().join("server-data"),
        &lockstep::store::PoolOptions::default(),
    )
    .await
    .unwrap();
    use lockstep::store::Store as _;
    let approval = store
        .create_approval(
            lockstep::domain::OperationId(op as i64),
            lockstep::clock::now(),
        )
        .await
        .unwrap()
        .id;

    let other = new_token(&fx, "customer", &["other"]).await;
    let (_, fleets) = get_as(&fx, &other, "api/fleets").await;
    assert_eq!(fleets["fleets"].as_array().unwrap().len(), 1, "{fleets}");
    assert_eq!(fleets["fleets"][0]["id"], "other");
    let (_, devices) = get_as(&fx, &other, "api/devices").await;
    let ids: Vec<&str> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    assert_eq!(ids, ["dev-2"]);
    for path in [
        "api/devices/dev-1",
        "api/devices/dev-1/timeline",
        "api/devices?fleet=site",
        &format!("api/operations/{op}"),
        "api/events?fleet=site",
        "api/events?device=dev-1",
    ] {
        let (status, body) = get_as(&fx, &other, path).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("not scoped to fleet site")),
            "{path}: {body}"
        );
    }
    let (status, _, page) = http(
        &fx.dashboard,
        Some(&other),
        "GET",
        "devices/dev-1",
        None,
        "",
    )
    .await;
    assert_eq!(status, 403);
    assert!(page.contains("not scoped to fleet site"), "{page}");
    let (_, approvals) = get_as(&fx, &other, "api/approvals").await;
    assert_eq!(approvals["approvals"], serde_json::json!([]), "{approvals}");
    let (status, body) = post_as(
        &fx,
        &other,
        &format!("api/approvals/{approval}/decline"),
        r#"{"message":"no"}"#,
    )
    .await;
    assert_eq!(status, 403, "{body}");

    // A viewer sees the approval and may not decide it.
    let viewer = new_token(&fx, "viewer", &[]).await;
    let (_, approvals) = get_as(&fx, &viewer, "api/approvals").await;
    assert_eq!(approvals["approvals"][0]["id"], approval);
    let (status, body) = post_as(
        &fx,
        &viewer,
        &format!("api/approvals/{approval}/decline"),
        r#"{"message":"no"}"#,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "a viewer token may not approve or decline");
    let (_, _, page) = http(&fx.dashboard, Some(&viewer), "GET", "approvals", None, "").await;
    assert!(page.contains("data-decides=\"no\""), "{page}");
    let (_, me) = get_as(&fx, &viewer, "api/me").await;
    assert!(
        !me["may"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("decide_approvals")),
        "{me}"
    );

    // The site's customer decides it.
    let site = new_token(&fx, "customer", &["site"]).await;
    let (_, _, page) = http(&fx.dashboard, Some(&site), "GET", "approvals", None, "").await;
    assert!(page.contains("data-decides=\"yes\""), "{page}");
    let (status, body) = post_as(
        &fx,
        &site,
        &format!("api/approvals/{approval}/decline"),
        r#"{"message":"harvest week","actor":"anna"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "declined");
    assert!(
        body["decided_by"]
            .as_str()
            .is_some_and(|d| d.starts_with("anna via customer token (token ")),
        "{body}"
    );
}

// ------------------------------------------------------------ rollouts

#[tokio::test]
async fn rollout_actions_on_the_api_follow_the_rollout_state_and_conflict_otherwise() {
    let fx = Fixture::start().await;
    let id = fx.running_rollout().await;
    let (status, s) = fx.get(&format!("api/rollouts/{id}")).await;
    assert_eq!(status, 200, "{s}");
    let r = &s["rollout"];
    assert_eq!(
        (
            r["state"].as_str(),
            r["active"].as_bool(),
            r["target_kind"].as_str(),
            r["target"].as_str(),
            r["fleet"].as_str(),
        ),
        (
            Some("running"),
            Some(true),
            Some("release"),
            Some("r1"),
            Some("site"),
        ),
        "{s}"
    );
    // The token that created it, with what the client said beside it.
    assert!(
        r["created_by"]
            .as_str()
            .is_some_and(|c| c.starts_with("ops@example via bootstrap-admin (token ")),
        "{s}"
    );
    assert_eq!(s["batches"].as_array().map(Vec::len), Some(1), "{s}");
    assert_eq!(s["batches"][0]["size"], 1, "{s}");
    assert_eq!(s["batches"][0]["current"], true, "{s}");

    let act = |action: &str, reason: &str| {
        let path = format!("api/rollouts/{id}/{action}");
        let body = serde_json::json!({ "actor": "ops@site", "reason": reason }).to_string();
        let base = fx.dashboard.clone();
        let token = fx.token.clone();
        async move { post_json(&base, &token, &path, &body).await }
    };
    // Resuming a running rollout is refused, and so on: the same rules as gRPC.
    let (status, body) = act("resume", "go on").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("running"),
        "{body}"
    );
    let (status, s) = act("pause", "site visit first").await;
    assert_eq!(
        (status, s["rollout"]["state"].as_str()),
        (200, Some("paused")),
        "{s}"
    );
    assert!(
        s["rollout"]["message"]
            .as_str()
            .unwrap()
            .contains("site visit first"),
        "{s}"
    );
    let (status, body) = act("pause", "again").await;
    assert_eq!(status, 409, "{body}");
    let (status, s) = act("resume", "visit done").await;
    assert_eq!(
        (status, s["rollout"]["state"].as_str()),
        (200, Some("running")),
        "{s}"
    );
    let (status, s) = act("abort", "wrong release").await;
    assert_eq!(
        (
            status,
            s["rollout"]["state"].as_str(),
            s["rollout"]["active"].as_bool()
        ),
        (200, Some("aborted"), Some(false)),
        "{s}"
    );
    assert!(
        s["rollout"]["message"]
            .as_str()
            .unwrap()
            .contains("wrong release"),
        "{s}"
    );
    // Aborting cancelled dev-1's operation, which had not started applying.
    assert_eq!(s["progress"]["cancelled"], 1, "{s}");
    for action in ["pause", "resume", "abort"] {
        let (status, body) = act(action, "too late").await;
        assert_eq!(status, 409, "{action}: {body}");
    }
    // gRPC sees what the dashboard did: they share one implementation.
    let grpc = grpc_rollout(fx.server.channel().await, id).await;
    assert_eq!(grpc.rollout.unwrap().state, "aborted");
    // Listed, newest first, with its overall progress.
    for path in ["api/rollouts", "api/rollouts?fleet=site&limit=1"] {
        let (status, list) = fx.get(path).await;
        assert_eq!(status, 200, "{path}: {list}");
        let first = &list["rollouts"][0];
        assert_eq!(
            (
                first["id"].as_u64(),
                first["state"].as_str(),
                first["batches"].as_u64(),
                first["progress"]["cancelled"].as_u64()
            ),
            (Some(id), Some("aborted"), Some(1), Some(1)),
            "{path}: {list}"
        );
    }
}

/// Opens an event stream at `path` and reads its response head; (the
/// connection, what was read after the head, the head in lower case).
/// With `close`, the server closes the connection once the stream ends.
async fn open_stream(
    base: &str,
    token: &str,
    path: &str,
    close: bool,
) -> (tokio::net::TcpStream, Vec<u8>, String) {
    let host = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(&host).await.unwrap();
    let connection = if close { "Connection: close\r\n" } else { "" };
    stream
        .write_all(
            format!(
                "GET /{path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\n{connection}\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(at) = text.find("\r\n\r\n") {
            let head = text[..at].to_ascii_lowercase();
            // Keep the blank line: `next_event` looks for "\ndata: ".
            buf.drain(..at + 2);
            return (stream, buf, head);
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk))
            .await
            .expect("headers within 20 s")
            .unwrap();
        assert!(n > 0, "the stream closed before its head: {text}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Every `data:` payload of an event stream read to its end (the server
/// closes it); fails after 30 s.
async fn read_stream_to_end(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Vec<String> {
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(buf))
        .await
        .expect("the stream ends within 30 s")
        .unwrap();
    String::from_utf8_lossy(buf)
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn the_rollout_stream_sends_each_change_and_ends_after_the_final_status() {
    let fx = Fixture::start().await;
    let id = fx.running_rollout().await;
    let (mut stream, mut buf, head) = open_stream(
        &fx.dashboard,
        &fx.token,
        &format!("api/rollouts/{id}/events"),
        true,
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    let first = next_event(&mut stream, &mut buf).await;
    assert_eq!(first["rollout"]["state"], "running", "{first}");
    assert_eq!(first["progress"]["in_flight"], 1, "{first}");

    let body = r#"{"actor":"ops@site","reason":"site visit first"}"#;
    let (status, _) = fx.post(&format!("api/rollouts/{id}/pause"), body).await;
    assert_eq!(status, 200);
    let paused = next_event(&mut stream, &mut buf).await;
    assert_eq!(paused["rollout"]["state"], "paused", "{paused}");

    let body = r#"{"actor":"ops@site","reason":"wrong release"}"#;
    let (status, _) = fx.post(&format!("api/rollouts/{id}/abort"), body).await;
    assert_eq!(status, 200);
    // The final status comes, then the server ends the stream.
    let rest = read_stream_to_end(&mut stream, &mut buf).await;
    let last: serde_json::Value =
        serde_json::from_str(rest.last().expect("the final status")).unwrap();
    assert_eq!(
        (
            last["rollout"]["state"].as_str(),
            last["rollout"]["active"].as_bool(),
            last["progress"]["cancelled"].as_u64()
        ),
        (Some("aborted"), Some(false), Some(1)),
        "{last}"
    );
    // An ended rollout's stream is its one status.
    let (status, _, body) = http(
        &fx.dashboard,
        Some(&fx.token),
        "GET",
        &format!("api/rollouts/{id}/events"),
        None,
        "",
    )
    .await;
    assert_eq!(status, 200);
    let statuses: Vec<&str> = body.lines().filter(|l| l.starts_with("data: ")).collect();
    assert_eq!(statuses.len(), 1, "{body}");
    assert!(statuses[0].contains("\"aborted\""), "{body}");
}

#[tokio::test]
async fn the_event_stream_tells_pages_when_a_rollout_changes() {
    let fx = Fixture::start().await;
    let id = fx.running_rollout().await;
    let (mut stream, mut buf, head) =
        open_stream(&fx.dashboard, &fx.token, "api/events", false).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let (status, _) = fx
        .post(
            &format!("api/rollouts/{id}/pause"),
            r#"{"actor":"ops@site","reason":"site visit first"}"#,
        )
        .await;
    assert_eq!(status, 200);
    // Notices come from the event log in order: the rollout's `created` and
    // its first `devices_started` may still be on their way when the page
    // opens; the pause follows them and nothing else comes between.
    let event = loop {
        let e = next_event(&mut stream, &mut buf).await;
        let earlier = ["created", "devices_started"];
        if e["kind"] == "rollout" && !earlier.contains(&e["change"].as_str().unwrap_or("")) {
            break e;
        }
    };
    assert_eq!(
        (event["rollout"].as_u64(), event["change"].as_str()),
        (Some(id), Some("paused")),
        "{event}"
    );
    assert!(
        event["message"]
            .as_str()
            .unwrap()
            .contains("site visit first"),
        "{event}"
    );
}

/// `controller` holds its lock while `<lock-dir>/hold` exists; each block
/// writes its pid, so the test ends exactly its own processes.
const CONTROLLER_BLOCK: &str = r#"echo $$ > "$LOCKSTEP_LOCK_DIR/pid"
while true; do
  if [ -f "$LOCKSTEP_LOCK_DIR/hold" ]; then
    flock "$LOCKSTEP_LOCK_FILE" sh -c 'while [ -f "$LOCKSTEP_LOCK_DIR/hold" ]; do sleep 0.05; done'
  fi
  sleep 0.05
done"#;

const ROLLOUT_BLOCKS: [&str; 2] = ["telemetry", "controller"];

/// A server with its dashboard and several real agents running
/// `telemetry` and `controller` (which takes its lock on demand) at 1.0.0
/// (release r1); release r3 replaces the controller (1.1.0), so a device
/// whose controller holds its lock waits for it with `update_restart`.
struct RolloutFleet {
    server: Server,
    dashboard: String,
    devices: Vec<String>,
    agents: Vec<Agent>,
    dir: tempfile::TempDir,
}

impl RolloutFleet {
    async fn start(devices: &[&str]) -> RolloutFleet {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("server-data");
        let server = Server::spawn(
            &[
                "--data-dir",
                data.to_str().unwrap(),
                "--dashboard-listen",
                "127.0.0.1:0",
            ],
            None,
        );
        let dashboard = dashboard_url(&server);
        let mut f = RolloutFleet {
            server,
            dashboard,
            devices: devices.iter().map(|d| (*d).to_owned()).collect(),
            agents: Vec::new(),
            dir,
        };
        let ch = f.server.channel().await;
        let mut cat = CatalogServiceClient::new(ch.clone());
        let mut devs = DeviceServiceClient::new(ch.clone());
        devs.create_fleet(pb::CreateFleetRequest {
            id: "site".into(),
            name: "North site".into(),
        })
        .await
        .unwrap();
        WindowServiceClient::new(ch.clone())
            .set_fleet_policy(pb::SetFleetPolicyRequest {
                policy: Some(pb::FleetPolicy {
                    fleet: "site".into(),
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await
            .unwrap();
        let command = |block: &str| -> Vec<String> {
            let body = if block == "controller" {
                CONTROLLER_BLOCK
            } else {
                PLAIN_BLOCK
            };
            vec!["sh".into(), "-c".into(), body.into()]
        };
        for (i, block) in ROLLOUT_BLOCKS.into_iter().enumerate() {
            cat.create_block(pb::CreateBlockRequest {
                name: block.into(),
                description: String::new(),
            })
            .await
            .unwrap();
            for (j, version) in ["1.0.0", "1.1.0"].into_iter().enumerate() {
                cat.create_block_version(pb::CreateBlockVersionRequest {
                    block_version: Some(pb::BlockVersion {
                        block: block.into(),
                        version: version.into(),
                        image_digest: format!("sha256:{:064x}", 10 * i + j + 1),
                        config: Some(pb::BlockConfig {
                            command: command(block),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap();
            }
        }
        for (id, controller) in [("r1", "1.0.0"), ("r3", "1.1.0")] {
            cat.create_release(pb::CreateReleaseRequest {
                id: id.into(),
                fleet: "site".into(),
                blocks: vec![
                    pb::BlockRef {
                        block: "telemetry".into(),
                        version: "1.0.0".into(),
                    },
                    pb::BlockRef {
                        block: "controller".into(),
                        version: controller.into(),
                    },
                ],
                env: Default::default(),
            })
            .await
            .unwrap();
        }
        let manifest_blocks: Vec<serde_json::Value> = ROLLOUT_BLOCKS
            .iter()
            .map(|b| {
                serde_json::json!({
                    "name": b, "version": "1.0.0", "command": command(b), "env": {}
                })
            })
            .collect();
        let manifest =
            serde_json::json!({ "release": "r1", "os_version": "1.0", "blocks": manifest_blocks });
        for device in devices {
            let reg = devs
                .register_device(pb::RegisterDeviceRequest {
                    id: (*device).into(),
                    fleet: "site".into(),
                    tags: vec![],
                })
                .await
                .unwrap()
                .into_inner();
            let d = f.dir.path().join(device);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("credential"), &reg.credential).unwrap();
            std::fs::write(d.join("manifest.json"), manifest.to_string()).unwrap();
            let path = |name: &str| d.join(name).to_str().unwrap().to_owned();
            let args: Vec<String> = vec![
                "--server".into(),
                f.server.url(),
                "--device".into(),
                (*device).into(),
                "--credential-file".into(),
                path("credential"),
                "--lock-root".into(),
                path("locks"),
                "--state-dir".into(),
                path("state"),
                "--manifest".into(),
                path("manifest.json"),
                "--api-listen".into(),
                format!("127.0.0.1:{}", free_port()),
                "--lock-poll".into(),
                "100ms".into(),
            ];
            let agent = Agent::spawn(&args);
            agent.wait_log("connected to the server");
            f.agents.push(agent);
        }
        // Every device has reported what it runs before a rollout plans.
        for device in devices {
            eventually(30, &format!("{device} to report"), || async {
                let st = DeviceServiceClient::new(f.server.channel().await)
                    .get_device_state(pb::GetDeviceStateRequest {
                        id: (*device).into(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                st.reported.then_some(())
            })
            .await;
        }
        f
    }

    fn lock_dir(&self, device: &str, block: &str) -> PathBuf {
        self.dir.path().join(device).join("locks").join(block)
    }

    /// Makes `device`'s controller take (or let go of) its lock.
    fn hold(&self, device: &str, on: bool) {
        let f = self.lock_dir(device, "controller").join("hold");
        if on {
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(f);
        }
    }

    async fn wait_held(&self, device: &str) {
        eventually(
            30,
            &format!("{device}'s controller lock to be seen held"),
            || async {
                DeviceServiceClient::new(self.server.channel().await)
                    .get_device_state(pb::GetDeviceStateRequest { id: device.into() })
                    .await
                    .unwrap()
                    .into_inner()
                    .locks
                    .iter()
                    .any(|l| l.block == "controller" && l.held)
                    .then_some(())
            },
        )
        .await;
    }

    /// Devices that have an operation (started by the rollout).
    async fn started(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in &self.devices {
            let ops = OperationServiceClient::new(self.server.channel().await)
                .list_operations(pb::ListOperationsRequest { device: d.clone() })
                .await
                .unwrap()
                .into_inner()
                .operations;
            if !ops.is_empty() {
                out.push(d.clone());
            }
        }
        out
    }
}

impl Drop for RolloutFleet {
    fn drop(&mut self) {
        self.agents.clear();
        // Blocks outlive their agents by design: let go of every lock (the
        // inner flock loops end), then end this test's blocks by their pids.
        for d in &self.devices {
            for block in ROLLOUT_BLOCKS {
                let dir = self.lock_dir(d, block);
                let _ = std::fs::remove_file(dir.join("hold"));
                if let Ok(pid) = std::fs::read_to_string(dir.join("pid")) {
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", pid.trim()])
                        .status();
                }
            }
        }
    }
}

#[tokio::test]
async fn the_rollout_page_shows_devices_held_up_by_a_lock_and_follows_progress_to_completed_live() {
    browser_prerequisites();
    let devices = ["inv-1", "inv-2", "inv-3"];
    let f = RolloutFleet::start(&devices).await;
    for d in devices {
        f.hold(d, true);
        f.wait_held(d).await;
    }
    // A canary, then the other two; r3 replaces every held controller.
    let id = create_rollout(f.server.channel().await, "r3", 1).await;
    let canary = eventually(30, "the canary's operation", || async {
        let started = f.started().await;
        (started.len() == 1).then(|| started[0].clone())
    })
    .await;
    // The API says what the page will show.
    let status = eventually(60, "the canary to wait on controller", || async {
        let (_, s) = get_json(
            &f.dashboard,
            &f.server.token(),
            &format!("api/rollouts/{id}"),
        )
        .await;
        (s["waiting_lock"][0]["devices"] == 1).then_some(s)
    })
    .await;
    let wait = &status["waiting_lock"][0];
    assert_eq!(
        (
            wait["block"].as_str(),
            wait["reason"].as_str(),
            wait["reason_text"].as_str()
        ),
        (
            Some("controller"),
            Some("update_restart"),
            Some("the release replaces this block, so it restarts")
        ),
        "{status}"
    );
    assert_eq!(
        status["device_statuses"],
        serde_json::json!([
            { "status": "in_sync", "devices": 2 },
            { "status": "waiting_lock", "devices": 1 }
        ]),
        "{status}"
    );

    let shots = screenshot_dir("rollout");
    let mut browser = Browser::start("rollout.mjs", &f.dashboard, &f.server.token(), &shots);
    browser.step("ready").await;
    browser.reply(serde_json::json!({ "rollout": id })).await;

    // Paused and resumed with the page's buttons: the same calls as gRPC.
    browser.step("paused").await;
    let paused = grpc_rollout(f.server.channel().await, id).await;
    let info = paused.rollout.unwrap();
    assert_eq!(info.state, "paused");
    assert!(info.message.contains("site visit first"), "{info:?}");
    browser.reply(serde_json::json!({})).await;
    browser.step("resumed").await;
    let resumed = grpc_rollout(f.server.channel().await, id).await;
    assert_eq!(resumed.rollout.unwrap().state, "running");
    browser.reply(serde_json::json!({})).await;

    // The canary's controller lets go: it updates, and the next batch
    // starts and waits on the other two controllers.
    browser.step("release-canary").await;
    f.hold(&canary, false);
    browser.reply(serde_json::json!({})).await;
    browser.step("release-rest").await;
    let held = grpc_rollout(f.server.channel().await, id).await;
    assert_eq!(held.batches[0].succeeded, 1, "{held:?}");
    assert_eq!(held.waiting_lock[0].devices, 2, "{held:?}");
    for d in devices {
        f.hold(d, false);
    }
    browser.reply(serde_json::json!({})).await;

    browser.step("done").await;
    let done = grpc_rollout(f.server.channel().await, id).await;
    assert_eq!(done.rollout.unwrap().state, "completed");
    assert_eq!(
        done.batches.iter().map(|b| b.succeeded).sum::<u64>(),
        3,
        "{:?}",
        done.batches
    );
    browser.reply(serde_json::json!({})).await;
    let screenshots = browser.finish().await;
    for name in [
        "rollouts-list.png",
        "rollout-held-by-controller.png",
        "rollout-paused.png",
        "rollout-next-batch-held.png",
        "rollout-completed.png",
    ] {
        assert!(
            screenshots.iter().any(|s| s.ends_with(name)),
            "{name}: {screenshots:?}"
        );
    }
}

#[tokio::test]
async fn rollout_pages_and_api_keep_to_the_tokens_fleets_and_only_operators_act() {
    let fx = Fixture::start().await;
    let mut devs = DeviceServiceClient::new(fx.server.channel().await);
    devs.create_fleet(pb::CreateFleetRequest {
        id: "other".into(),
        name: "Elsewhere".into(),
    })
    .await
    .unwrap();
    devs.register_device(pb::RegisterDeviceRequest {
        id: "dev-2".into(),
        fleet: "other".into(),
        tags: vec![],
    })
    .await
    .unwrap();
    let id = fx.running_rollout().await;
    let page = format!("rollouts/{id}");
    let body = r#"{"reason":"site visit first"}"#;

    // A token of another fleet sees no rollout of the site's, and may
    // neither read, follow nor act on it.
    let other = new_token(&fx, "customer", &["other"]).await;
    let (status, list) = get_as(&fx, &other, "api/rollouts").await;
    assert_eq!((status, &list["rollouts"]), (200, &serde_json::json!([])));
    for path in [
        format!("api/rollouts/{id}"),
        format!("api/rollouts/{id}/events"),
        "api/rollouts?fleet=site".to_owned(),
    ] {
        let (status, answer) = get_as(&fx, &other, &path).await;
        assert_eq!(status, 403, "{path}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|e| e.contains("not scoped to fleet site")),
            "{path}: {answer}"
        );
    }
    let (status, _, html) = http(&fx.dashboard, Some(&other), "GET", &page, None, "").await;
    assert_eq!(status, 403);
    assert!(html.contains("not scoped to fleet site"), "{html}");
    let operator_other = new_token(&fx, "operator", &["other"]).await;
    for action in ["pause", "resume", "abort"] {
        let (status, answer) = post_as(
            &fx,
            &operator_other,
            &format!("api/rollouts/{id}/{action}"),
            body,
        )
        .await;
        assert_eq!(status, 403, "{action}: {answer}");
    }

    // Viewers and customers of the site follow it, read-only: the page
    // offers no buttons and the API refuses the actions.
    let viewer = new_token(&fx, "viewer", &[]).await;
    let customer = new_token(&fx, "customer", &["site"]).await;
    for (t, role) in [(&viewer, "viewer"), (&customer, "customer")] {
        let (status, s) = get_as(&fx, t, &format!("api/rollouts/{id}")).await;
        assert_eq!((status, s["rollout"]["id"].as_u64()), (200, Some(id)));
        let (_, list) = get_as(&fx, t, "api/rollouts").await;
        assert_eq!(list["rollouts"][0]["id"].as_u64(), Some(id), "{list}");
        let (status, _, html) = http(&fx.dashboard, Some(t), "GET", &page, None, "").await;
        assert_eq!(status, 200);
        assert!(html.contains("data-acts=\"no\""), "{role}: {html}");
        for action in ["pause", "resume", "abort"] {
            let (status, answer) =
                post_as(&fx, t, &format!("api/rollouts/{id}/{action}"), body).await;
            assert_eq!(status, 403, "{role} {action}: {answer}");
            assert_eq!(
                answer["error"],
                format!("a {role} token may not start, pause, resume or abort rollouts"),
            );
        }
    }
    // The stream opens for a token that may read the rollout.
    let (_, _, head) = open_stream(
        &fx.dashboard,
        &viewer,
        &format!("api/rollouts/{id}/events"),
        false,
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");

    // The site's operator acts, recorded as its token with the page's note.
    let operator = new_token(&fx, "operator", &["site"]).await;
    let (_, _, html) = http(&fx.dashboard, Some(&operator), "GET", &page, None, "").await;
    assert!(html.contains("data-acts=\"yes\""), "{html}");
    // Pages of the other fleet are not told of the site's rollout; the
    // site's are.
    let (mut site_events, mut site_buf, _) =
        open_stream(&fx.dashboard, &operator, "api/events", false).await;
    let (mut other_events, mut other_buf, _) =
        open_stream(&fx.dashboard, &other, "api/events", false).await;
    let (status, s) = post_as(
        &fx,
        &operator,
        &format!("api/rollouts/{id}/pause"),
        r#"{"reason":"site visit first","actor":"anna"}"#,
    )
    .await;
    assert_eq!(
        (status, s["rollout"]["state"].as_str()),
        (200, Some("paused")),
        "{s}"
    );
    let notice = loop {
        let e = next_event(&mut site_events, &mut site_buf).await;
        if e["kind"] == "rollout" {
            break e;
        }
    };
    assert_eq!(notice["change"], "paused", "{notice}");
    // Something of the other fleet happens after the pause: the other
    // fleet's page sees it, and no rollout notice around it.
    let mut ops = OperationServiceClient::new(fx.server.channel().await);
    let op = ops
        .create_operation(pb::CreateOperationRequest {
            device: "dev-2".into(),
            spec: Some(pb::OperationSpec {
                kind: Some(pb::operation_spec::Kind::Reboot(
                    pb::operation_spec::Empty {},
                )),
            }),
            force: None,
            actor: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    ops.cancel_operation(pb::CancelOperationRequest {
        id: op.id,
        actor: String::new(),
        reason: "marker".into(),
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    loop {
        let e = next_event(&mut other_events, &mut other_buf).await;
        let marker = e["kind"] == "cancelled";
        seen.push(e);
        if marker {
            break;
        }
    }
    let mut chunk = [0u8; 4096];
    if let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), other_events.read(&mut chunk)).await
    {
        other_buf.extend_from_slice(&chunk[..n]);
    }
    let late = String::from_utf8_lossy(&other_buf).into_owned();
    assert!(
        seen.iter().all(|e| e["kind"] != "rollout") && !late.contains("\"rollout\""),
        "the other fleet's page was told of the site's rollout: {seen:?} {late}"
    );
    let audit = pb::audit_service_client::AuditServiceClient::new(fx.server.channel().await)
        .list_audit(pb::ListAuditRequest {
            action: "rollout_paused".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert!(
        audit[0]
            .actor
            .starts_with("anna via operator token (token "),
        "{}",
        audit[0].actor
    );
}
