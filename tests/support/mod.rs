//! Shared by the end-to-end tests: runs the real `lockstep` binary as a child
//! process, finds the address it bound, and reads the bootstrap admin token
//! it wrote (`<data-dir>/admin.token`, or a `--bootstrap-token-file` of the
//! test's own for Postgres), which [`Server::channel`] attaches to every
//! call and CLI tests pass as `LOCKSTEP_TOKEN`.

#![allow(dead_code)]

pub mod cli;
pub mod proxy;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_lockstep");

/// A channel whose calls carry a token (the server's admin token, unless
/// made with [`Server::channel_as`]).
pub type Chan = lockstep::cli::AuthChannel;

/// A running `lockstep serve`. Killed on drop if still running.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: mpsc::Receiver<String>,
    /// The embedded database's directory, when the server uses SQLite.
    pub data_dir: Option<tempfile::TempDir>,
    /// What the server logged up to and including its listening line.
    pub startup: Vec<String>,
    /// Where the server writes its bootstrap admin token.
    pub token_file: PathBuf,
    /// Holds the token file of a Postgres server.
    token_dir: Option<tempfile::TempDir>,
}

/// Where `lockstep serve <args>` run in `cwd` writes its bootstrap token.
fn token_file_of(args: &[&str], cwd: Option<&Path>) -> PathBuf {
    let flag = |name: &str| {
        args.iter()
            .position(|a| *a == name)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
    };
    let path = flag("--bootstrap-token-file")
        .or_else(|| flag("--data-dir").map(|d| d.join("admin.token")))
        .unwrap_or_else(|| PathBuf::from("lockstep-data/admin.token"));
    match cwd {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path,
    }
}

impl Server {
    /// Starts `lockstep serve` on the embedded SQLite in a fresh temporary
    /// data directory.
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp data dir");
        let mut args = vec!["--data-dir", dir.path().to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        let mut server = Self::spawn(&args, None);
        server.data_dir = Some(dir);
        server
    }

    /// Starts `lockstep serve` against a Postgres database.
    pub fn start_pg(url: &str) -> Server {
        Self::spawn(&["--database-url", url], None)
    }

    /// Starts `lockstep serve --listen 127.0.0.1:0 <args>` (in `cwd` if
    /// given) and waits (at most 60 s) for it to log the address it listens on.
    pub fn spawn(args: &[&str], cwd: Option<&std::path::Path>) -> Server {
        Self::spawn_at("127.0.0.1:0", args, cwd)
    }

    /// As [`Server::spawn`], listening on `listen`. The web dashboard is
    /// off unless `args` names `--dashboard-listen` (tests run in parallel;
    /// its default port would collide).
    pub fn spawn_at(listen: &str, args: &[&str], cwd: Option<&std::path::Path>) -> Server {
        let mut cmd = Command::new(BIN);
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        cmd.arg("serve").args(["--listen", listen]);
        if !args.contains(&"--dashboard-listen") {
            cmd.args(["--dashboard-listen", "off"]);
        }
        // A Postgres server's token goes to a directory of this test's own
        // (its default, ./lockstep-admin.token, would be shared).
        let mut token_dir = None;
        let token_file =
            if args.contains(&"--database-url") && !args.contains(&"--bootstrap-token-file") {
                let dir = tempfile::tempdir().expect("temp token dir");
                let path = dir.path().join("admin.token");
                cmd.arg("--bootstrap-token-file").arg(&path);
                token_dir = Some(dir);
                path
            } else {
                token_file_of(args, cwd)
            };
        let child = cmd
            .args(args)
            .env("LOCKSTEP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lockstep serve");
        let (tx, rx) = mpsc::channel();
        // From here on the guard kills the child if anything below panics.
        let mut server = Server {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            log: rx,
            data_dir: None,
            startup: Vec::new(),
            token_file,
            token_dir,
        };
        let stderr = server.child.stderr.take().expect("stderr piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = server
                .log
                .recv_timeout(left)
                .expect("lockstep serve did not report its address within 60 s");
            server.startup.push(line.clone());
            if line.contains("lockstep listening") {
                server.addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .expect("addr= field in the listening line")
                    .parse()
                    .expect("a socket address");
                return server;
            }
        }
    }

    /// A server a test started itself (`lockstep serve --data-dir <data_dir>`
    /// without a token file of its own), its stderr lines arriving on `log`;
    /// its address is the test's to fill in.
    pub fn adopt(child: Child, log: mpsc::Receiver<String>, data_dir: tempfile::TempDir) -> Server {
        Server {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            log,
            token_file: data_dir.path().join("admin.token"),
            data_dir: Some(data_dir),
            startup: Vec::new(),
            token_dir: None,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bootstrap admin token the server wrote.
    pub fn token(&self) -> String {
        let t = std::fs::read_to_string(&self.token_file).unwrap_or_else(|e| {
            panic!(
                "the server's admin token in {}: {e}",
                self.token_file.display()
            )
        });
        t.trim().to_owned()
    }

    /// A gRPC channel to the server, without a token.
    pub async fn raw_channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.url())
            .expect("valid url")
            .connect()
            .await
            .expect("connect to lockstep serve")
    }

    /// A gRPC channel whose calls carry the server's admin token.
    pub async fn channel(&self) -> Chan {
        self.channel_as(&self.token()).await
    }

    /// A gRPC channel whose calls carry `token`.
    pub async fn channel_as(&self, token: &str) -> Chan {
        let bearer = lockstep::cli::Bearer::new(token).expect("a token that fits in metadata");
        tonic::service::interceptor::InterceptedService::new(self.raw_channel().await, bearer)
    }

    /// Sends SIGTERM and waits (at most 30 s) for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "server did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (at most `secs` seconds, polling every 50 ms) until `check` returns
/// `Some`, and returns it; panics with `what` otherwise.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running `lockstep agent`. Killed (SIGKILL) on drop if still running.
pub struct Agent {
    pub child: Child,
    pub log: mpsc::Receiver<String>,
}

impl Agent {
    pub fn spawn(args: &[String]) -> Agent {
        let mut child = Command::new(BIN)
            .arg("agent")
            .args(args)
            .env("LOCKSTEP_LOG", "info,lockstep=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lockstep agent");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Agent { child, log: rx }
    }

    /// Waits (at most 30 s) for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(_) => panic!("agent never logged {needle:?} within 30 s"),
            }
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A channel to the server at `addr` (one replica among several) whose
/// calls carry `token`.
pub async fn channel_to(addr: SocketAddr, token: &str) -> Chan {
    let bearer = lockstep::cli::Bearer::new(token).expect("a token that fits in metadata");
    let raw = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid url")
        .connect()
        .await
        .expect("connect to lockstep serve");
    tonic::service::interceptor::InterceptedService::new(raw, bearer)
}
