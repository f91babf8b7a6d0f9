//! Benchmark: agent streams (issue 4). Server RSS per idle connected agent
//! stream, and intents per second fanned out to connected agents. Goal:
//! ≤16 KiB per idle stream.
//!
//! Why it exists: every device holds one `AgentService/Connect` stream for as
//! long as it is online, so the server's memory per idle stream decides how
//! many devices one replica can hold; and a rollout is delivered as intents
//! on those streams, so the fan-out rate bounds how fast one can land.
//!
//! Run: `cargo bench --bench streams` (or
//! `-- --streams 2000 --settle 3` for a quick run). Options: `--backend
//! postgres` (a fresh database on a throwaway cluster, or on the server of
//! `DATABASE_URL`; default `sqlite`), `--streams LIST`
//! checkpoints, comma-separated, ascending (10000,20000,50000; each is clamped
//! to what one server process can hold, see below), `--per-client N` streams
//! per client process (9000), `--settle SECS` idle time before each memory
//! sample (10), `--connect-concurrency N` connects in flight per client
//! process (64), `--create-concurrency N` CreateOperation calls in flight
//! (64), `--baseline-wait SECS` idle time before the baseline sample, e.g.
//! to attach a heap profiler to the server (3), `--no-fanout`, `--out FILE`
//! (streams.json). Prints a summary and
//! writes `target/bench-results/<FILE>` (the server's log goes beside it, as
//! `streams-server.log`).
//!
//! Setup (not timed): a fleet, one block `b` (1.0.0) and a release `r1` are
//! created through the store, and the devices are bulk-inserted into the
//! SQLite database in one transaction (all with the credential `lsd_bench`).
//! Then the real `target/release/lockstep serve` runs as a child process on
//! that data directory, on loopback.
//!
//! Clients: this same binary, re-run with `--client`, as several processes
//! (open files are capped per process), each binding its sockets to its own
//! source address 127.0.0.11, .12, … (ephemeral ports are per source
//! address; tonic's `Endpoint::local_address` binds before connecting).
//! Each device gets its own channel (one HTTP/2 connection) and one
//! Connect stream: metadata, a Hello reporting release `r1` running `b`
//! 1.0.0, then nothing more (the stream stays open and idle; the server's
//! HTTP/2 keepalive pings still flow). A device counts as connected when its
//! Welcome arrives (sent after the hub registered it).
//!
//! Memory: the server's VmRSS after it is up and idle, then after each
//! checkpoint's streams are connected and have idled `--settle` seconds;
//! KiB per stream = (after − before) / streams. Checkpoints are reached by
//! connecting more devices on the same server. The client processes' RSS,
//! the kernel's TCP buffer memory (`/proc/net/sockstat`) and its slab
//! (`/proc/meminfo`, machine-wide, so only indicative), both per loopback
//! connection (two sockets), are reported beside it.
//!
//! The server process has the same open-files limit as every process here:
//! a checkpoint above (hard limit − 500) is clamped to it and the clamp is
//! reported; holding more needs more server processes (replicas).
//!
//! Fan-out (with all devices of the last checkpoint connected): the driver
//! calls `OperationService/CreateOperation` (restart_block `b`) once per
//! device, `--create-concurrency` at a time over 4 connections, and the
//! clients count the APPLY intents they receive. Rate = devices / (last
//! APPLY received − first create sent); the server's CPU time over the
//! fan-out is reported too. Agents do not acknowledge (the operation stays
//! `applying`), so only delivery is measured.
//!
//! Latency during the fan-out: one more device, the probe
//! (`benches/support/probe.rs`, shared with `benches/latency.rs`), has its
//! own stream with block `b` holding its lock. Before the fan-out it takes
//! 30 idle samples of lock release → APPLY (the baseline, same run), then
//! samples continuously (one per 100 ms at most, under the per-stream
//! message limit) until the fan-out is delivered.
//!
//! Runtime: the driver runs on tokio multi-thread (2 workers); each client
//! process on a current-thread runtime. Every child gets SIGKILL if the
//! driver dies (PR_SET_PDEATHSIG), and clients also exit when their stdin
//! closes.

#[path = "support/probe.rs"]
mod probe;
#[path = "support/procs.rs"]
mod procs;

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use lockstep::domain::Env;
use lockstep::edge::grpc::agent::DEVICE_HEADER;
use lockstep::edge::grpc::pb;
use lockstep::store::{PgStore, PoolOptions, SqliteStore};
use probe::{Probe, percentile};
use procs::{
    BLOCK, RELEASE, SECRET, catalog, cpu_secs, device_id, die_with_parent, insert_device,
    open_files_limit, proc_mem, server_binary,
};
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};

const USAGE: &str = "usage: streams [--streams N,N,...] [--per-client N] [--settle SECS] \
                     [--connect-concurrency N] [--create-concurrency N] [--no-fanout] \
                     [--backend sqlite|postgres] [--out FILE]";

/// Open files the server needs besides its streams (listener, epoll, SQLite
/// files of the pool, stdio, ...), with room to spare.
const FD_MARGIN: u64 = 500;
/// Open files a client process needs besides its connections.
const CLIENT_FD_MARGIN: u64 = 200;
/// Longest wait for one checkpoint's streams to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(240);
/// Longest wait for the fan-out to be delivered.
const FANOUT_TIMEOUT: Duration = Duration::from_secs(300);
/// Connections the driver uses for CreateOperation calls.
const DRIVER_CHANNELS: usize = 4;
/// Idle probe samples before the fan-out (the latency baseline).
const PROBE_IDLE_SAMPLES: usize = 30;
/// A probe sample is four agent messages: paced under the server's
/// per-stream message rate (50/s), as a real agent is.
const PROBE_PACE: Duration = Duration::from_millis(100);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes `--bench` to harness-less benches.
    let argv: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if argv.first().map(String::as_str) == Some("--client") {
        client_main(&argv[1..]);
    } else {
        driver_main(parse_driver_args(&argv));
    }
}

// ---------------------------------------------------------------- client role

struct ClientArgs {
    server: SocketAddr,
    source: Ipv4Addr,
    first: usize,
    count: usize,
    concurrency: usize,
}

/// What a client process reports; shared by its device tasks.
#[derive(Default)]
struct ClientStats {
    connected: AtomicU64,
    failed: AtomicU64,
    ended: AtomicU64,
    intents: AtomicU64,
    applies: AtomicU64,
    last_intent_ms: AtomicU64,
    errors_logged: AtomicU64,
}

impl ClientStats {
    fn line(&self) -> String {
        format!(
            "stat {} {} {} {} {} {}",
            self.connected.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.ended.load(Ordering::Relaxed),
            self.intents.load(Ordering::Relaxed),
            self.applies.load(Ordering::Relaxed),
            self.last_intent_ms.load(Ordering::Relaxed),
        )
    }

    /// Logs the first few errors of this process to stderr (not thousands).
    fn log_error(&self, what: &str) {
        if self.errors_logged.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("[client] {what}");
        }
    }
}

fn client_main(argv: &[String]) {
    fn parsed<T: std::str::FromStr>(flag: &str, value: &str) -> T
    where
        T::Err: std::fmt::Display,
    {
        value
            .parse()
            .unwrap_or_else(|e| panic!("client: {flag} {value}: {e}"))
    }
    let mut server: Option<SocketAddr> = None;
    let mut source: Option<Ipv4Addr> = None;
    let mut first = 0;
    let mut count = 0;
    let mut concurrency = 64;
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .unwrap_or_else(|| panic!("client: {flag} needs a value"));
        match flag.as_str() {
            "--server" => server = Some(parsed(flag, value)),
            "--source" => source = Some(parsed(flag, value)),
            "--first" => first = parsed(flag, value),
            "--count" => count = parsed(flag, value),
            "--concurrency" => concurrency = parsed(flag, value),
            _ => panic!("client: unknown argument {flag}"),
        }
    }
    let args = ClientArgs {
        server: server.expect("client: --server is required"),
        source: source.expect("client: --source is required"),
        first,
        count,
        concurrency: concurrency.max(1),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client: building the tokio runtime");
    rt.block_on(client(args));
}

/// The Hello every bench agent sends: release r1, running b 1.0.0 with the
/// env it resolves to (nothing set anywhere, so the empty env).
fn hello_message() -> pb::AgentMessage {
    let env_fingerprint = lockstep::domain::env::fingerprint(&Env::default()).to_hex();
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            agent_version: "bench".into(),
            state: Some(pb::StateReport {
                current_release: RELEASE.into(),
                os_version: String::new(),
                blocks: vec![pb::ReportedBlock {
                    block: BLOCK.into(),
                    version: "1.0.0".into(),
                    env_fingerprint,
                }],
            }),
            locks: Some(pb::LockReport {
                seq: 0,
                locks: Vec::new(),
            }),
            last_intent_seq: 0,
            agent_epoch: String::new(),
        })),
    }
}

/// Reads `connect N` lines from the driver (connect this process's first N
/// devices); exits when stdin closes. Prints a `stat` line every 200 ms.
async fn client(args: ClientArgs) {
    let stats = Arc::new(ClientStats::default());
    let endpoint = Endpoint::from_shared(format!("http://{}", args.server))
        .expect("client: server URL")
        .local_address(Some(IpAddr::V4(args.source)))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(20));
    let auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii> = format!("Bearer {SECRET}")
        .parse()
        .expect("client: authorization value");
    let hello = hello_message();
    let gate = Arc::new(Semaphore::new(args.concurrency));
    {
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}", stats.line());
                let _ = out.flush();
            }
        });
    }
    // stdin on a plain thread (tokio's `io-std` feature is not enabled).
    let (line_tx, mut line_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut started = 0;
    while let Some(line) = line_rx.recv().await {
        let Some(n) = line.strip_prefix("connect ") else {
            continue;
        };
        let n: usize = n.trim().parse().expect("client: connect N");
        while started < n.min(args.count) {
            tokio::spawn(device(
                endpoint.clone(),
                device_id(args.first + started),
                auth.clone(),
                hello.clone(),
                Arc::clone(&gate),
                Arc::clone(&stats),
            ));
            started += 1;
        }
    }
    // The driver closed stdin (done, or gone): report once more and leave
    // without tearing the connections down one by one.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", stats.line());
    let _ = out.flush();
    std::process::exit(0);
}

type Opened = (
    pb::agent_service_client::AgentServiceClient<Channel>,
    tonic::Streaming<pb::ServerMessage>,
);

/// Connects one device: its own channel, the Connect stream, the Welcome.
async fn open(
    endpoint: &Endpoint,
    id: &str,
    auth: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    hello: pb::AgentMessage,
) -> Result<Opened, String> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("{id}: connecting: {e:?}"))?;
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
    // The Hello, then nothing: the request stream stays open.
    let outbound = futures::stream::iter([hello]).chain(futures::stream::pending());
    let mut req = tonic::Request::new(outbound);
    req.metadata_mut().insert(
        DEVICE_HEADER,
        id.parse()
            .map_err(|e| format!("{id}: device header: {e}"))?,
    );
    req.metadata_mut().insert("authorization", auth.clone());
    let mut inbound = client
        .connect(req)
        .await
        .map_err(|s| format!("{id}: Connect: {s}"))?
        .into_inner();
    match inbound.message().await {
        Ok(Some(pb::ServerMessage {
            msg: Some(pb::server_message::Msg::Welcome(_)),
        })) => Ok((client, inbound)),
        other => Err(format!("{id}: expected a Welcome, got {other:?}")),
    }
}

async fn device(
    endpoint: Endpoint,
    id: String,
    auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    hello: pb::AgentMessage,
    gate: Arc<Semaphore>,
    stats: Arc<ClientStats>,
) {
    let permit = gate.acquire_owned().await.expect("client: semaphore");
    let mut attempt = 0u32;
    // The client is kept: it owns the channel the stream runs on.
    let (_client, mut inbound) = loop {
        attempt += 1;
        match open(&endpoint, &id, &auth, hello.clone()).await {
            Ok(x) => break x,
            Err(e) if attempt < 5 => {
                stats.log_error(&format!("{e} (attempt {attempt}, retrying)"));
                tokio::time::sleep(Duration::from_millis(250) * attempt).await;
            }
            Err(e) => {
                stats.log_error(&format!("{e} (giving up)"));
                stats.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    };
    stats.connected.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    loop {
        match inbound.message().await {
            Ok(Some(pb::ServerMessage {
                msg: Some(pb::server_message::Msg::Intent(intent)),
            })) => {
                stats.intents.fetch_add(1, Ordering::Relaxed);
                if matches!(intent.kind, Some(pb::intent::Kind::Apply(_))) {
                    stats.applies.fetch_add(1, Ordering::Relaxed);
                }
                stats.last_intent_ms.fetch_max(now_ms(), Ordering::Relaxed);
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                stats.log_error(&format!("{id}: stream ended by the server"));
                stats.ended.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(s) => {
                stats.log_error(&format!("{id}: stream failed: {s}"));
                stats.ended.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

// ---------------------------------------------------------------- driver role

struct DriverArgs {
    streams: Vec<usize>,
    per_client: usize,
    settle: Duration,
    baseline_wait: Duration,
    connect_concurrency: usize,
    create_concurrency: usize,
    fanout: bool,
    out: String,
    /// `sqlite` (the data dir) or `postgres` (a fresh database on a
    /// throwaway cluster, or on `DATABASE_URL`'s server).
    backend: String,
}

fn parse_driver_args(argv: &[String]) -> DriverArgs {
    let mut args = DriverArgs {
        streams: vec![10_000, 20_000, 50_000],
        per_client: 9_000,
        settle: Duration::from_secs(10),
        baseline_wait: Duration::from_secs(3),
        connect_concurrency: 64,
        create_concurrency: 64,
        fanout: true,
        out: "streams.json".to_owned(),
        backend: "sqlite".to_owned(),
    };
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        if flag == "--no-fanout" {
            args.fanout = false;
            continue;
        }
        let value = it
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value\n{USAGE}"));
        let number = |v: &str| -> usize {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{flag} {value}: {e}\n{USAGE}"))
        };
        match flag.as_str() {
            "--streams" => args.streams = value.split(',').map(number).collect(),
            "--per-client" => args.per_client = number(value),
            "--settle" => args.settle = Duration::from_secs(number(value) as u64),
            "--baseline-wait" => args.baseline_wait = Duration::from_secs(number(value) as u64),
            "--connect-concurrency" => args.connect_concurrency = number(value),
            "--create-concurrency" => args.create_concurrency = number(value),
            "--out" => args.out = value.clone(),
            "--backend" if value == "sqlite" || value == "postgres" => args.backend = value.clone(),
            _ => panic!("unknown argument {flag}\n{USAGE}"),
        }
    }
    assert!(
        !args.streams.is_empty()
            && args.streams.iter().all(|n| *n > 0)
            && args.streams.windows(2).all(|w| w[0] < w[1]),
        "--streams must be positive and ascending\n{USAGE}"
    );
    assert!(
        args.per_client > 0 && args.connect_concurrency > 0 && args.create_concurrency > 0,
        "--per-client and the concurrencies must be positive\n{USAGE}"
    );
    args
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The kernel's slab memory, machine-wide (KiB): socket structures live
/// there. Noisy (other processes allocate too), so only indicative.
fn kernel_slab_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The kernel's TCP buffer memory, all sockets (KiB).
fn kernel_tcp_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let pages: u64 = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let mut w = l.split_whitespace();
            while let Some(x) = w.next() {
                if x == "mem" {
                    return w.next().and_then(|v| v.parse().ok());
                }
            }
            None
        })
        .unwrap_or(0);
    pages * 4
}

/// Creates the fleet, block, release and `devices` device rows; returns
/// the server's arguments for that database.
async fn setup_db(backend: &str, dir: &Path, devices: usize) -> Vec<String> {
    if backend == "postgres" {
        let url = lockstep::testkit::fresh_pg_url().await;
        let store = PgStore::connect(&url, &PoolOptions::default())
            .await
            .unwrap_or_else(|e| panic!("connecting to Postgres: {e}"));
        catalog(&store).await;
        let mut tx = store.pool().begin().await.expect("begin");
        // One more than the clients connect: the probe (see `fan_out`).
        for i in 0..=devices {
            insert_device(i)
                .execute(&mut *tx)
                .await
                .expect("inserting a device");
        }
        tx.commit().await.expect("commit devices");
        store.pool().close().await;
        let token = dir.join("admin.token");
        return vec![
            "--database-url".into(),
            url,
            "--bootstrap-token-file".into(),
            token.to_str().expect("utf-8 path").into(),
        ];
    }
    let store = SqliteStore::open(dir, &PoolOptions::default())
        .await
        .unwrap_or_else(|e| panic!("opening SQLite in {}: {e}", dir.display()));
    catalog(&store).await;
    let mut tx = store.pool().begin().await.expect("begin");
    // One more than the clients connect: the probe (see `fan_out`).
    for i in 0..=devices {
        insert_device(i)
            .execute(&mut *tx)
            .await
            .expect("inserting a device");
    }
    tx.commit().await.expect("commit devices");
    store.pool().close().await;
    vec![
        "--data-dir".into(),
        dir.to_str().expect("utf-8 path").into(),
    ]
}

/// The running server and what its log told.
struct Server {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    /// The bootstrap admin token it wrote, for the driver's calls.
    token: String,
    warnings: Arc<std::sync::Mutex<(u64, Vec<String>)>>,
}

async fn start_server(bin: &Path, db_args: &[String], data_dir: &Path, log_path: &Path) -> Server {
    let mut cmd = Command::new(bin);
    // No dashboard (its default port may be taken), no per-client rate
    // limit (the driver is one client making every call).
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--dashboard-listen",
        "off",
        "--rate-limit",
        "0",
    ])
    .args(db_args)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let pid = child.id().expect("server pid");
    let stderr = child.stderr.take().expect("server stderr");
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let warnings = Arc::new(std::sync::Mutex::new((0u64, Vec::new())));
    let log_file = log_path.to_owned();
    let seen = Arc::clone(&warnings);
    tokio::spawn(async move {
        let mut log = tokio::io::BufWriter::new(
            tokio::fs::File::create(&log_file)
                .await
                .unwrap_or_else(|e| panic!("creating {}: {e}", log_file.display())),
        );
        let mut addr_tx = Some(addr_tx);
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = log.write_all(line.as_bytes()).await;
            let _ = log.write_all(b"\n").await;
            if line.contains("lockstep listening")
                && let Some(tx) = addr_tx.take()
            {
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .and_then(|a| a.parse::<SocketAddr>().ok());
                let _ = tx.send(addr);
            }
            if line.contains(" WARN ") || line.contains(" ERROR ") {
                let mut w = seen.lock().unwrap_or_else(|p| p.into_inner());
                w.0 += 1;
                if w.1.len() < 5 {
                    w.1.push(line.clone());
                }
            }
        }
        let _ = log.flush().await;
    });
    let addr = match tokio::time::timeout(Duration::from_secs(60), addr_rx).await {
        Ok(Ok(Some(addr))) => addr,
        _ => panic!(
            "lockstep serve did not report its address within 60 s; see {}",
            log_path.display()
        ),
    };
    // The admin token is written just after the port is bound.
    let token_file = data_dir.join("admin.token");
    let deadline = Instant::now() + Duration::from_secs(30);
    let token = loop {
        match std::fs::read_to_string(&token_file) {
            Ok(t) if !t.trim().is_empty() => break t.trim().to_owned(),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => panic!("no admin token in {} within 30 s", token_file.display()),
        }
    };
    Server {
        child,
        pid,
        addr,
        token,
        warnings,
    }
}

fn results_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results")
}

/// Whether (and how) the server has exited.
fn server_exited(server: &mut Server) -> Option<String> {
    match server.child.try_wait() {
        Ok(Some(status)) => Some(status.to_string()),
        Ok(None) => None,
        Err(e) => Some(format!("cannot wait for it: {e}")),
    }
}

/// One client process and the counters it last reported.
struct ClientProc {
    child: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    source: Ipv4Addr,
    first: usize,
    /// Devices it owns (connected by the last checkpoint).
    count: usize,
    stats: Arc<[AtomicU64; 6]>,
}

const ST_CONNECTED: usize = 0;
const ST_FAILED: usize = 1;
const ST_ENDED: usize = 2;
const ST_INTENTS: usize = 3;
const ST_APPLIES: usize = 4;
const ST_LAST_MS: usize = 5;

fn start_client(
    exe: &Path,
    server: SocketAddr,
    source: Ipv4Addr,
    first: usize,
    count: usize,
    concurrency: usize,
) -> ClientProc {
    let mut cmd = Command::new(exe);
    cmd.arg("--client")
        .args(["--server", &server.to_string()])
        .args(["--source", &source.to_string()])
        .args(["--first", &first.to_string()])
        .args(["--count", &count.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting a client process: {e}"));
    let pid = child.id().expect("client pid");
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("client stdout");
    let stats: Arc<[AtomicU64; 6]> = Arc::new(Default::default());
    let st = Arc::clone(&stats);
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Some(rest) = line.strip_prefix("stat ") else {
                continue;
            };
            for (slot, v) in st.iter().zip(rest.split_whitespace()) {
                if let Ok(v) = v.parse() {
                    slot.store(v, Ordering::Relaxed);
                }
            }
        }
    });
    ClientProc {
        child,
        stdin,
        pid,
        source,
        first,
        count,
        stats,
    }
}

fn total(clients: &[ClientProc], slot: usize) -> u64 {
    clients
        .iter()
        .map(|c| c.stats[slot].load(Ordering::Relaxed))
        .sum()
}

/// Client k's share of `n` streams spread evenly over `c` clients.
fn share(n: usize, k: usize, c: usize) -> usize {
    n * (k + 1) / c - n * k / c
}

fn kib_per(delta_kib: i64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        delta_kib as f64 / n as f64
    }
}

fn driver_main(args: DriverArgs) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    rt.block_on(driver(args));
}

async fn driver(args: DriverArgs) {
    let started = Instant::now();
    let bin = server_binary();
    let exe = std::env::current_exe().expect("locating the bench executable");
    let fd_limit = open_files_limit();
    let server_cap = usize::try_from(fd_limit.saturating_sub(FD_MARGIN)).unwrap_or(usize::MAX);
    let per_client = args
        .per_client
        .min(usize::try_from(fd_limit.saturating_sub(CLIENT_FD_MARGIN)).unwrap_or(usize::MAX));
    let mut checkpoints: Vec<usize> = Vec::new();
    let mut clamped = Vec::new();
    for &n in &args.streams {
        let m = n.min(server_cap);
        if m < n {
            clamped.push(n);
        }
        if checkpoints.last() != Some(&m) {
            checkpoints.push(m);
        }
    }
    let max_n = *checkpoints.last().expect("at least one checkpoint");
    println!(
        "streams: open files limit {fd_limit} per process → one server holds at most {server_cap} \
         streams here; checkpoints {checkpoints:?}{}",
        if clamped.is_empty() {
            String::new()
        } else {
            format!(" (asked for {clamped:?}: clamped to the cap)")
        }
    );

    let dir = tempfile::tempdir().expect("creating a temp data dir");
    let t = Instant::now();
    let db_args = setup_db(&args.backend, dir.path(), max_n).await;
    println!(
        "streams: {max_n} devices written to {} ({}) in {:.1} s",
        args.backend,
        dir.path().display(),
        t.elapsed().as_secs_f64()
    );
    std::fs::create_dir_all(results_dir()).expect("creating target/bench-results");
    let log_path = results_dir().join("streams-server.log");
    let mut server = start_server(&bin, &db_args, dir.path(), &log_path).await;
    println!(
        "streams: {} serve pid {} on {}",
        bin.display(),
        server.pid,
        server.addr
    );

    let nclients = max_n.div_ceil(per_client);
    assert!(
        nclients <= 240,
        "too many client processes ({nclients}) for 127.0.0.11..=250"
    );
    let mut clients = Vec::new();
    let mut first = 0;
    for k in 0..nclients {
        let count = share(max_n, k, nclients);
        let source = Ipv4Addr::new(127, 0, 0, 11 + u8::try_from(k).expect("client index"));
        clients.push(start_client(
            &exe,
            server.addr,
            source,
            first,
            count,
            args.connect_concurrency,
        ));
        first += count;
    }
    // Let everything start and go idle, then take the baselines.
    tokio::time::sleep(args.baseline_wait).await;
    let server_before = proc_mem(server.pid);
    let clients_before: u64 = clients.iter().map(|c| proc_mem(c.pid).rss_kib).sum();
    let tcp_before = kernel_tcp_kib();
    let slab_before = kernel_slab_kib();
    println!(
        "streams: baseline server RSS {} KiB (anon {} KiB); {} client processes {} KiB",
        server_before.rss_kib, server_before.anon_kib, nclients, clients_before
    );

    let mut results = Vec::new();
    let mut prev: Option<(u64, u64)> = None;
    let died = 'checkpoints: {
        for &n in &checkpoints {
            let t = Instant::now();
            for (k, c) in clients.iter_mut().enumerate() {
                let target = share(n, k, nclients);
                if let Some(stdin) = c.stdin.as_mut() {
                    stdin
                        .write_all(format!("connect {target}\n").as_bytes())
                        .await
                        .expect("telling a client to connect");
                    stdin.flush().await.expect("flushing to a client");
                }
            }
            let deadline = Instant::now() + CONNECT_TIMEOUT;
            let mut last_print = Instant::now();
            loop {
                let connected = total(&clients, ST_CONNECTED);
                let failed = total(&clients, ST_FAILED);
                if connected + failed >= n as u64 {
                    break;
                }
                if let Some(status) = server_exited(&mut server) {
                    break 'checkpoints Some(status);
                }
                if Instant::now() > deadline {
                    println!(
                        "streams: checkpoint {n}: only {connected} connected ({failed} failed) \
                     after {} s; measuring what is up",
                        CONNECT_TIMEOUT.as_secs()
                    );
                    break;
                }
                if last_print.elapsed() > Duration::from_secs(10) {
                    println!("streams:   {connected}/{n} connected");
                    last_print = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let connect_secs = t.elapsed().as_secs_f64();
            tokio::time::sleep(args.settle).await;
            let connected = total(&clients, ST_CONNECTED);
            let failed = total(&clients, ST_FAILED);
            let ended = total(&clients, ST_ENDED);
            let held = connected.saturating_sub(ended);
            let after = proc_mem(server.pid);
            let clients_after: u64 = clients.iter().map(|c| proc_mem(c.pid).rss_kib).sum();
            let tcp_after = kernel_tcp_kib();
            let slab_after = kernel_slab_kib();
            let fds = open_fds(server.pid);
            let per = kib_per(after.rss_kib as i64 - server_before.rss_kib as i64, held);
            let per_anon = kib_per(after.anon_kib as i64 - server_before.anon_kib as i64, held);
            let marginal = prev.map(|(prev_held, prev_rss)| {
                kib_per(
                    after.rss_kib as i64 - prev_rss as i64,
                    held.saturating_sub(prev_held),
                )
            });
            let client_per = kib_per(clients_after as i64 - clients_before as i64, held);
            let tcp_per = kib_per(tcp_after as i64 - tcp_before as i64, held);
            let slab_per = kib_per(slab_after as i64 - slab_before as i64, held);
            let new_streams = held.saturating_sub(prev.map_or(0, |(h, _)| h));
            println!(
                "streams: {held:>6} idle streams held (connect {connect_secs:.1} s, {:.0}/s; \
             {failed} failed, {ended} ended): server RSS {} KiB → {per:.1} KiB/stream \
             (anon {per_anon:.1}){}; server fds {fds}; clients {client_per:.1} KiB/stream; \
             kernel: TCP buffers {tcp_per:.2}, slab {slab_per:.1} KiB/connection (both ends)",
                new_streams as f64 / connect_secs,
                after.rss_kib,
                marginal.map_or(String::new(), |m| format!(", marginal {m:.1}")),
            );
            results.push(json!({
                "streams_asked": n,
                "streams_held": held,
                "connected": connected,
                "failed": failed,
                "ended": ended,
                "connect_secs": connect_secs,
                "connects_per_sec": new_streams as f64 / connect_secs,
                "server_rss_before_kib": server_before.rss_kib,
                "server_rss_after_kib": after.rss_kib,
                "server_anon_before_kib": server_before.anon_kib,
                "server_anon_after_kib": after.anon_kib,
                "server_hwm_kib": after.hwm_kib,
                "server_kib_per_stream": per,
                "server_anon_kib_per_stream": per_anon,
                "server_marginal_kib_per_stream": marginal,
                "server_open_fds": fds,
                "clients_rss_before_kib": clients_before,
                "clients_rss_after_kib": clients_after,
                "client_kib_per_stream": client_per,
                "kernel_tcp_kib_before": tcp_before,
                "kernel_tcp_kib_after": tcp_after,
                "kernel_tcp_kib_per_connection_both_ends": tcp_per,
            "kernel_slab_kib_before": slab_before,
            "kernel_slab_kib_after": slab_after,
            "kernel_slab_kib_per_connection_both_ends": slab_per,
            }));
            prev = Some((held, after.rss_kib));
        }
        server_exited(&mut server)
    };
    if let Some(status) = &died {
        println!(
            "streams: the server exited ({status}) before the measurement ended; \
             see {} (the figures above are still valid; no fan-out)",
            log_path.display()
        );
    }

    let fanout = if args.fanout && died.is_none() {
        Some(fan_out(&server, &clients, max_n, args.create_concurrency).await)
    } else {
        None
    };

    // Cleanup: clients first (closing their stdin makes them exit), then
    // the server (SIGTERM, then SIGKILL after its drain grace).
    for c in &mut clients {
        c.stdin = None;
    }
    for c in &mut clients {
        if tokio::time::timeout(Duration::from_secs(10), c.child.wait())
            .await
            .is_err()
        {
            let _ = c.child.kill().await;
        }
    }
    if let Some(pid) = rustix::process::Pid::from_raw(server.pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    if tokio::time::timeout(Duration::from_secs(15), server.child.wait())
        .await
        .is_err()
    {
        let _ = server.child.kill().await;
    }
    let (warn_count, warn_first) = {
        let w = server.warnings.lock().unwrap_or_else(|p| p.into_inner());
        (w.0, w.1.clone())
    };
    if warn_count > 0 {
        println!("streams: the server logged {warn_count} warnings/errors; first ones:");
        for w in &warn_first {
            println!("  {w}");
        }
    }

    let result = json!({
        "bench": "streams",
        "backend": args.backend,
        "unix_ms": now_ms(),
        "goal_kib_per_idle_stream": 16,
        "goal_intents_per_sec": 10_000,
        "machine": {
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "open_files_limit": fd_limit,
            "server_stream_cap": server_cap,
        },
        "server_binary": bin.display().to_string(),
        // The server queues `Result<ServerMessage, Status>` per stream in a
        // tokio mpsc, whose slots are allocated in blocks of 32.
        "send_queue_slot_bytes": std::mem::size_of::<Result<pb::ServerMessage, tonic::Status>>(),
        "storage": "embedded sqlite (WAL, synchronous=FULL) in a temp dir",
        "clients": clients.iter().map(|c| json!({
            "source": c.source.to_string(), "first_device": c.first, "devices": c.count,
        })).collect::<Vec<_>>(),
        "settle_secs": args.settle.as_secs(),
        "checkpoints_clamped_from": clamped,
        "checkpoints": results,
        "fanout": fanout,
        "server_warnings": warn_count,
        "server_exited_early": died,
        "wall_secs": started.elapsed().as_secs_f64(),
    });
    let path = results_dir().join(&args.out);
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&result).expect("serializing the results"),
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    println!(
        "wrote {} (server log: {}) in {:.0} s",
        path.display(),
        log_path.display(),
        started.elapsed().as_secs_f64()
    );
    // A measurement of what did not happen is no measurement: a bench that
    // lost its server, or whose fan-out did not arrive in full, fails (so a
    // broken bench fails CI's tiny pass instead of printing zeros).
    let mut broken = Vec::new();
    if let Some(d) = &died {
        broken.push(format!("the server exited early: {d}"));
    }
    if let Some(f) = &fanout {
        let (delivered, devices) = (f["delivered"].as_u64(), f["devices"].as_u64());
        if delivered < devices {
            broken.push(format!(
                "the fan-out delivered {delivered:?} of {devices:?} intents"
            ));
        }
        if f["create_errors"].as_u64() != Some(0) {
            broken.push(format!(
                "{} CreateOperation calls failed",
                f["create_errors"]
            ));
        }
    }
    if !broken.is_empty() {
        eprintln!("streams: INCOMPLETE: {}", broken.join("; "));
        std::process::exit(1);
    }
}

/// One CreateOperation(restart_block b) per connected device; waits for the
/// APPLY intents to reach the agents.
async fn fan_out(
    server: &Server,
    clients: &[ClientProc],
    probe_index: usize,
    concurrency: usize,
) -> serde_json::Value {
    let devices: Vec<String> = clients
        .iter()
        .flat_map(|c| (c.first..c.first + c.count).map(device_id))
        .collect();
    let n = devices.len() as u64;
    let applies_before = total(clients, ST_APPLIES);
    let mut channels = Vec::new();
    for _ in 0..DRIVER_CHANNELS {
        channels.push(
            Endpoint::from_shared(format!("http://{}", server.addr))
                .expect("server URL")
                .tcp_nodelay(true)
                .connect()
                .await
                .expect("connecting the driver to the server"),
        );
    }
    // The probe: one more device, its own stream, `b` holding its lock.
    // Lock release → APPLY is sampled idle first (the baseline, same run),
    // then continuously while the fan-out runs.
    let auth_value: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {}", server.token)
            .parse()
            .expect("authorization value");
    let mut probe = Probe::connect(
        channels[0].clone(),
        auth_value,
        &device_id(probe_index),
        SECRET,
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..PROBE_IDLE_SAMPLES {
        let paced = tokio::time::sleep(PROBE_PACE);
        idle.push(probe.sample().await);
        paced.await;
    }
    let probing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let prober = {
        let probing = Arc::clone(&probing);
        tokio::spawn(async move {
            let mut during = Vec::new();
            while probing.load(Ordering::Relaxed) {
                let paced = tokio::time::sleep(PROBE_PACE);
                during.push(probe.sample().await);
                paced.await;
            }
            during
        })
    };
    let rss_before = proc_mem(server.pid);
    let cpu_before = cpu_secs(server.pid);
    let created = Arc::new(AtomicU64::new(0));
    let create_errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    // The driver authenticates like any client: the server's admin token.
    let auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {}", server.token)
            .parse()
            .expect("authorization value");
    let t0_ms = now_ms();
    let t0 = Instant::now();
    let creator = {
        let created = Arc::clone(&created);
        let create_errors = Arc::clone(&create_errors);
        let first_error = Arc::clone(&first_error);
        tokio::spawn(async move {
            let gate = Arc::new(Semaphore::new(concurrency));
            let mut tasks = tokio::task::JoinSet::new();
            for (j, id) in devices.into_iter().enumerate() {
                let permit = Arc::clone(&gate).acquire_owned().await.expect("semaphore");
                let mut client = pb::operation_service_client::OperationServiceClient::new(
                    channels[j % channels.len()].clone(),
                );
                let created = Arc::clone(&created);
                let create_errors = Arc::clone(&create_errors);
                let first_error = Arc::clone(&first_error);
                let auth = auth.clone();
                tasks.spawn(async move {
                    let mut req = tonic::Request::new(pb::CreateOperationRequest {
                        device: id,
                        spec: Some(pb::OperationSpec {
                            kind: Some(pb::operation_spec::Kind::RestartBlock(BLOCK.into())),
                        }),
                        force: None,
                        actor: "streams-bench".into(),
                    });
                    req.metadata_mut().insert("authorization", auth);
                    match client.create_operation(req).await {
                        Ok(_) => {
                            created.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(s) => {
                            create_errors.fetch_add(1, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert_with(|| s.to_string());
                        }
                    }
                    drop(permit);
                });
            }
            while tasks.join_next().await.is_some() {}
            t0.elapsed()
        })
    };
    let mut creates_secs = None;
    let mut samples = Vec::new();
    let mut last_progress = (0u64, Instant::now());
    let mut last_print = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let delivered = total(clients, ST_APPLIES) - applies_before;
        let done_creating = creator.is_finished();
        if done_creating && creates_secs.is_none() {
            creates_secs = Some(t0.elapsed().as_secs_f64());
        }
        let elapsed = t0.elapsed();
        if samples.len() as u128 <= elapsed.as_millis() / 500 {
            samples.push(json!({
                "ms": elapsed.as_millis() as u64,
                "created": created.load(Ordering::Relaxed),
                "delivered": delivered,
            }));
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            println!(
                "streams:   fan-out: {} created, {delivered}/{n} delivered",
                created.load(Ordering::Relaxed)
            );
            last_print = Instant::now();
        }
        if delivered != last_progress.0 {
            last_progress = (delivered, Instant::now());
        }
        let expected = n - create_errors.load(Ordering::Relaxed);
        if done_creating && delivered >= expected {
            break;
        }
        if elapsed > FANOUT_TIMEOUT
            || (done_creating && last_progress.1.elapsed() > Duration::from_secs(30))
        {
            println!(
                "streams: fan-out incomplete: {delivered}/{expected} delivered; measuring what arrived"
            );
            break;
        }
    }
    let delivered = total(clients, ST_APPLIES) - applies_before;
    probing.store(false, Ordering::Relaxed);
    let mut during = prober.await.expect("the probe task");
    let sort = |v: &mut Vec<f64>| v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    sort(&mut idle);
    sort(&mut during);
    let quantiles = |v: &[f64]| {
        (
            percentile(v, 0.5),
            percentile(v, 0.99),
            v.last().copied().unwrap_or(0.0),
        )
    };
    let (i50, i99, imax) = quantiles(&idle);
    let (d50, d99, dmax) = quantiles(&during);
    println!(
        "streams: probe lock release → APPLY during the fan-out: {} samples, p50 {d50:.1} ms, \
         p99 {d99:.1} ms, max {dmax:.1} ms (goal p99 ≤ 200 ms); idle before it, {} samples: \
         p50 {i50:.1} ms, p99 {i99:.1} ms, max {imax:.1} ms",
        during.len(),
        idle.len()
    );
    samples.push(json!({
        "ms": t0.elapsed().as_millis() as u64,
        "created": created.load(Ordering::Relaxed),
        "delivered": delivered,
    }));
    let last_ms = clients
        .iter()
        .map(|c| c.stats[ST_LAST_MS].load(Ordering::Relaxed))
        .max()
        .unwrap_or(t0_ms);
    let span_secs = (last_ms.saturating_sub(t0_ms)) as f64 / 1000.0;
    let rate = if span_secs > 0.0 {
        delivered as f64 / span_secs
    } else {
        0.0
    };
    let creates_secs = creates_secs.unwrap_or_else(|| t0.elapsed().as_secs_f64());
    let created = created.load(Ordering::Relaxed);
    // Steady rate: between 10% and 90% of the deliveries.
    let at = |frac: f64| {
        samples.iter().find_map(|s| {
            let d = s["delivered"].as_u64().unwrap_or(0) as f64;
            (d >= frac * delivered as f64).then(|| {
                (
                    s["ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
                    s["delivered"].as_u64().unwrap_or(0) as f64,
                )
            })
        })
    };
    let steady = match (at(0.1), at(0.9)) {
        (Some((t1, d1)), Some((t2, d2))) if t2 > t1 => Some((d2 - d1) / (t2 - t1)),
        _ => None,
    };
    let rss_after = proc_mem(server.pid);
    let server_cpu = cpu_secs(server.pid) - cpu_before;
    let create_errors = create_errors.load(Ordering::Relaxed);
    println!(
        "streams: fan-out to {n} connected agents: {delivered} APPLY intents delivered in \
         {span_secs:.1} s → {rate:.0} intents/s (10–90%: {}); CreateOperation: {created} in \
         {creates_secs:.1} s ({:.0}/s), {create_errors} failed{}; server CPU {server_cpu:.1} s \
         over {:.1} s; server RSS {} → {} KiB",
        steady.map_or("n/a".to_owned(), |s| format!("{s:.0}/s")),
        created as f64 / creates_secs,
        first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(String::new(), |e| format!(" (first: {e})")),
        t0.elapsed().as_secs_f64(),
        rss_before.rss_kib,
        rss_after.rss_kib,
    );
    json!({
        "operation": "restart_block",
        "devices": n,
        "create_concurrency": concurrency,
        "created": created,
        "create_errors": create_errors,
        "creates_secs": creates_secs,
        "creates_per_sec": created as f64 / creates_secs,
        "delivered": delivered,
        "span_secs": span_secs,
        "intents_per_sec": rate,
        "intents_per_sec_10_90": steady,
        "intents_total_received": total(clients, ST_INTENTS),
        "server_rss_before_kib": rss_before.rss_kib,
        "server_rss_after_kib": rss_after.rss_kib,
        "server_cpu_secs": server_cpu,
        "wall_secs": t0.elapsed().as_secs_f64(),
        "samples": samples,
        "probe_idle_ms": { "samples": idle.len(), "p50": i50, "p99": i99, "max": imax },
        "probe_during_ms": { "samples": during.len(), "p50": d50, "p99": d99, "max": dmax },
    })
}
