//! Benchmark: many devices over several replicas on one Postgres (issue 12).
//!
//! Why it exists: one process holds at most ~19,500 agent streams here
//! (20,000 open files); a fleet of 100,000 needs several replicas, and they
//! must share the work: every device connected, one operation per device
//! fanned out through every replica (hand-overs to the replica holding each
//! stream), and the whole fleet back after every replica restarts.
//!
//! Run: `cargo bench --bench replicas` (defaults:
//! 100,000 devices, 6 replicas), or e.g. `-- --devices 20000 --replicas 3`.
//! Options: `--devices N`, `--replicas N`, `--per-client N` devices per
//! client process (9000), `--connect-concurrency N` per client process
//! (64), `--create-concurrency N` CreateOperation calls in flight (256),
//! `--settle SECS` (10), `--out FILE` (replicas.json, in
//! `target/bench-results/`; the servers' logs go beside it).
//!
//! Setup (not timed): a throwaway Postgres cluster (or `DATABASE_URL`'s
//! server), the bench catalog and the device rows inserted through SQL.
//! Then `--replicas` real `target/release/lockstep serve` processes, each
//! with its own `--replica-id`, on loopback.
//!
//! Clients: this binary re-run with `--client`, several processes (open
//! files are capped per process), each bound to its own source address and
//! talking to one replica (client k → replica k mod N, as an L4 balancer
//! would spread them). Each device: its own HTTP/2 connection and Connect
//! stream, a Hello, then idle but for acknowledging each intent as
//! received (as the agent does; one sent again is ignored); when its
//! stream ends it reconnects after a random 0.2–1.2 s (as an agent does
//! after a healthy session).
//!
//! Measured, in order:
//! 1. Connect: time until every device is connected; connects/s.
//! 2. Memory: each replica's RSS before the clients and after the streams
//!    idled `--settle` s; KiB per device per replica.
//! 3. Fan-out: one CreateOperation (restart_block b) per device, spread
//!    over every replica; rate = devices / (last APPLY received − first
//!    create sent). Postgres' CPU (all `postgres` processes) and the
//!    replicas' CPU over the fan-out, as shares of the machine.
//! 4. Reconnect: every replica stopped (SIGTERM: each releases its
//!    sessions) and started again on its port; time until every device has
//!    connected again (a new Welcome). Goal ≤60 s.

#[path = "support/procs.rs"]
mod procs;

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use lockstep::edge::grpc::agent::DEVICE_HEADER;
use lockstep::edge::grpc::pb;
use lockstep::store::{PgStore, PoolOptions};
use procs::{
    BLOCK, RELEASE, SECRET, catalog, cpu_secs, device_id, die_with_parent, insert_device,
    open_files_limit, proc_mem, server_binary,
};
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::Semaphore;
use tonic::transport::Endpoint;

const USAGE: &str = "usage: replicas [--devices N] [--replicas N] [--per-client N] \
                     [--connect-concurrency N] [--create-concurrency N] [--settle SECS] [--out FILE]";

/// Longest wait for every device to connect (or reconnect).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest wait for the fan-out to be delivered.
const FANOUT_TIMEOUT: Duration = Duration::from_secs(600);
/// Open files a client process needs besides its connections.
const CLIENT_FD_MARGIN: u64 = 200;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn main() {
    let argv: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if argv.first().map(String::as_str) == Some("--client") {
        client_main(&argv[1..]);
    } else {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("building the tokio runtime");
        rt.block_on(driver(parse_args(&argv)));
    }
}

// ---------------------------------------------------------------- client role

/// Counters a client process reports on stdout every 200 ms:
/// `stat welcomes live applies last_apply_ms`.
#[derive(Default)]
struct Stats {
    welcomes: AtomicU64,
    live: AtomicU64,
    applies: AtomicU64,
    last_apply_ms: AtomicU64,
    errors_logged: AtomicU64,
}

impl Stats {
    fn line(&self) -> String {
        format!(
            "stat {} {} {} {}",
            self.welcomes.load(Ordering::Relaxed),
            self.live.load(Ordering::Relaxed),
            self.applies.load(Ordering::Relaxed),
            self.last_apply_ms.load(Ordering::Relaxed),
        )
    }

    fn log_error(&self, what: &str) {
        if self.errors_logged.fetch_add(1, Ordering::Relaxed) < 3 {
            eprintln!("[client] {what}");
        }
    }
}

fn client_main(argv: &[String]) {
    let value = |flag: &str| -> String {
        argv.iter()
            .position(|a| a == flag)
            .and_then(|i| argv.get(i + 1))
            .unwrap_or_else(|| panic!("client: {flag} is required"))
            .clone()
    };
    let server: SocketAddr = value("--server").parse().expect("client: --server");
    let source: Ipv4Addr = value("--source").parse().expect("client: --source");
    let first: usize = value("--first").parse().expect("client: --first");
    let count: usize = value("--count").parse().expect("client: --count");
    let concurrency: usize = value("--concurrency")
        .parse()
        .expect("client: --concurrency");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client: building the tokio runtime");
    rt.block_on(client(server, source, first, count, concurrency.max(1)));
}

fn hello() -> pb::AgentMessage {
    let env_fingerprint =
        lockstep::domain::env::fingerprint(&lockstep::domain::Env::default()).to_hex();
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

async fn client(server: SocketAddr, source: Ipv4Addr, first: usize, count: usize, conc: usize) {
    let stats = Arc::new(Stats::default());
    let endpoint = Endpoint::from_shared(format!("http://{server}"))
        .expect("client: server URL")
        .local_address(Some(IpAddr::V4(source)))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(20));
    let gate = Arc::new(Semaphore::new(conc));
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
    for i in first..first + count {
        tokio::spawn(device(
            endpoint.clone(),
            device_id(i),
            Arc::clone(&gate),
            Arc::clone(&stats),
        ));
    }
    // Until the driver closes stdin.
    let _ = tokio::task::spawn_blocking(
        || {
            for _ in std::io::stdin().lines().map_while(Result::ok) {}
        },
    )
    .await;
    std::process::exit(0);
}

/// One device: connect, Hello, Welcome, count APPLYs; reconnect when the
/// stream ends.
async fn device(endpoint: Endpoint, id: String, gate: Arc<Semaphore>, stats: Arc<Stats>) {
    let auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {SECRET}").parse().expect("authorization");
    // The highest intent handled (an agent keeps it across reconnects).
    let mut last_seq = 0u64;
    loop {
        let permit = gate.acquire().await.expect("client: semaphore");
        let opened = async {
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| format!("{id}: {e:?}"))?;
            let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
            // The Hello, then acknowledgements, as a real agent sends them.
            let (acks, acks_rx) = tokio::sync::mpsc::unbounded_channel();
            let outbound = futures::stream::iter([hello()]).chain(
                tokio_stream::wrappers::UnboundedReceiverStream::new(acks_rx),
            );
            let mut req = tonic::Request::new(outbound);
            req.metadata_mut().insert(
                DEVICE_HEADER,
                id.parse().map_err(|_| "device header".to_owned())?,
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
                })) => Ok((client, inbound, acks)),
                other => Err(format!("{id}: expected a Welcome, got {other:?}")),
            }
        }
        .await;
        drop(permit);
        match opened {
            Ok((_client, mut inbound, acks)) => {
                stats.welcomes.fetch_add(1, Ordering::Relaxed);
                stats.live.fetch_add(1, Ordering::Relaxed);
                while let Ok(Some(m)) = inbound.message().await {
                    let Some(pb::server_message::Msg::Intent(i)) = m.msg else {
                        continue;
                    };
                    // Each intent is handled once (one sent again is
                    // ignored, as the agent does) and acknowledged as
                    // received; the operation then stays applying.
                    if i.seq <= last_seq {
                        continue;
                    }
                    last_seq = i.seq;
                    let _ = acks.send(pb::AgentMessage {
                        msg: Some(pb::agent_message::Msg::Ack(pb::IntentAck {
                            intent_seq: i.seq,
                            kind: Some(pb::intent_ack::Kind::Received(pb::intent_ack::Received {})),
                            block: String::new(),
                        })),
                    });
                    if matches!(i.kind, Some(pb::intent::Kind::Apply(_))) {
                        stats.applies.fetch_add(1, Ordering::Relaxed);
                        stats.last_apply_ms.fetch_max(now_ms(), Ordering::Relaxed);
                    }
                }
                stats.live.fetch_sub(1, Ordering::Relaxed);
            }
            Err(e) => stats.log_error(&e),
        }
        let jitter = 200 + rand::random::<u64>() % 1000;
        tokio::time::sleep(Duration::from_millis(jitter)).await;
    }
}

// ---------------------------------------------------------------- driver role

struct Args {
    devices: usize,
    replicas: usize,
    per_client: usize,
    connect_concurrency: usize,
    create_concurrency: usize,
    settle: Duration,
    out: String,
}

fn parse_args(argv: &[String]) -> Args {
    let mut a = Args {
        devices: 100_000,
        replicas: 6,
        per_client: 9_000,
        connect_concurrency: 64,
        create_concurrency: 256,
        settle: Duration::from_secs(10),
        out: "replicas.json".into(),
    };
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value\n{USAGE}"));
        let n = || -> usize {
            value
                .parse()
                .unwrap_or_else(|e| panic!("{flag} {value}: {e}\n{USAGE}"))
        };
        match flag.as_str() {
            "--devices" => a.devices = n(),
            "--replicas" => a.replicas = n(),
            "--per-client" => a.per_client = n(),
            "--connect-concurrency" => a.connect_concurrency = n(),
            "--create-concurrency" => a.create_concurrency = n(),
            "--settle" => a.settle = Duration::from_secs(n() as u64),
            "--out" => a.out = value.clone(),
            _ => panic!("unknown argument {flag}\n{USAGE}"),
        }
    }
    assert!(
        a.devices > 0 && a.replicas > 0 && a.per_client > 0,
        "{USAGE}"
    );
    a
}

fn results_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results")
}

struct Replica {
    child: Child,
    pid: u32,
    addr: SocketAddr,
}

async fn start_replica(
    bin: &Path,
    url: &str,
    token_file: &Path,
    id: usize,
    listen: &str,
) -> Replica {
    let log_path = results_dir().join(format!("replicas-r{id}.log"));
    // A restart appends to the log: only what this run logs counts.
    let offset = std::fs::metadata(&log_path).map_or(0, |m| m.len() as usize);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("replica log");
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", listen, "--dashboard-listen", "off"])
        .args(["--rate-limit", "0", "--max-streams", "19500"])
        .args(["--database-url", url, "--replica-id", &format!("r{id}")])
        .arg("--bootstrap-token-file")
        .arg(token_file)
        .env("LOCKSTEP_LOG", "warn,lockstep::edge::server=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    let child = cmd.spawn().expect("starting lockstep serve");
    let pid = child.id().expect("replica pid");
    // The address it listens on, from its log.
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let found = text
            .get(offset..)
            .unwrap_or_default()
            .lines()
            .rev()
            .filter(|l| l.contains("lockstep listening"))
            .find_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            });
        match found {
            Some(a) if listen.ends_with(":0") || a.to_string() == listen => break a,
            _ if Instant::now() > deadline => {
                panic!("replica r{id} did not start; see {}", log_path.display())
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    Replica { child, pid, addr }
}

struct ClientProc {
    child: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    /// welcomes, live, applies, last_apply_ms.
    stats: Arc<[AtomicU64; 4]>,
}

fn start_client(
    exe: &Path,
    server: SocketAddr,
    source: Ipv4Addr,
    first: usize,
    count: usize,
    conc: usize,
) -> ClientProc {
    let mut cmd = Command::new(exe);
    cmd.arg("--client")
        .args([
            "--server",
            &server.to_string(),
            "--source",
            &source.to_string(),
        ])
        .args(["--first", &first.to_string(), "--count", &count.to_string()])
        .args(["--concurrency", &conc.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().expect("starting a client process");
    let pid = child.id().expect("client pid");
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("client stdout");
    let stats: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let st = Arc::clone(&stats);
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("stat ") {
                for (slot, v) in st.iter().zip(rest.split_whitespace()) {
                    if let Ok(v) = v.parse() {
                        slot.store(v, Ordering::Relaxed);
                    }
                }
            }
        }
    });
    ClientProc {
        child,
        stdin,
        pid,
        stats,
    }
}

fn total(clients: &[ClientProc], slot: usize) -> u64 {
    clients
        .iter()
        .map(|c| c.stats[slot].load(Ordering::Relaxed))
        .sum()
}

/// CPU seconds of every `postgres` process on the machine.
fn postgres_cpu() -> f64 {
    let mut sum = 0.0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "postgres" {
                sum += cpu_secs(pid);
            }
        }
    }
    sum
}

/// Waits until `done` holds, printing progress every 10 s; how long.
async fn wait_for(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> (bool, String),
) -> Option<f64> {
    let t = Instant::now();
    let mut printed = Instant::now();
    loop {
        let (ok, progress) = done();
        if ok {
            return Some(t.elapsed().as_secs_f64());
        }
        if t.elapsed() > timeout {
            println!(
                "replicas: {what}: gave up after {} s ({progress})",
                timeout.as_secs()
            );
            return None;
        }
        if printed.elapsed() > Duration::from_secs(10) {
            println!("replicas:   {what}: {progress}");
            printed = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn driver(args: Args) {
    let started = Instant::now();
    let bin = server_binary();
    let exe = std::env::current_exe().expect("the bench executable");
    let fd_limit = open_files_limit();
    let per_client = args
        .per_client
        .min(usize::try_from(fd_limit.saturating_sub(CLIENT_FD_MARGIN)).unwrap_or(usize::MAX));
    std::fs::create_dir_all(results_dir()).expect("target/bench-results");
    for r in 1..=args.replicas {
        let _ = std::fs::remove_file(results_dir().join(format!("replicas-r{r}.log")));
    }
    let n = args.devices;

    // Setup: the database.
    let t = Instant::now();
    let url = lockstep::testkit::fresh_pg_url().await;
    let store = PgStore::connect(&url, &PoolOptions::default())
        .await
        .expect("connecting to Postgres");
    catalog(&store).await;
    let mut tx = store.pool().begin().await.expect("begin");
    for i in 0..n {
        insert_device(i)
            .execute(&mut *tx)
            .await
            .expect("a device row");
    }
    tx.commit().await.expect("commit");
    store.pool().close().await;
    println!(
        "replicas: {n} devices written to Postgres in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // The replicas.
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("admin.token");
    let mut replicas = Vec::new();
    for r in 1..=args.replicas {
        replicas.push(start_replica(&bin, &url, &token_file, r, "127.0.0.1:0").await);
    }
    let token = std::fs::read_to_string(&token_file)
        .expect("admin token")
        .trim()
        .to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before: Vec<u64> = replicas.iter().map(|r| proc_mem(r.pid).rss_kib).collect();
    println!(
        "replicas: {} replicas up: {:?}; RSS {:?} KiB",
        replicas.len(),
        replicas.iter().map(|r| r.addr).collect::<Vec<_>>(),
        rss_before
    );

    // 1. Connect.
    let nclients = n.div_ceil(per_client);
    // Clients spread evenly over the replicas.
    let nclients = nclients.div_ceil(args.replicas) * args.replicas;
    assert!(nclients <= 240, "too many client processes ({nclients})");
    let mut clients = Vec::new();
    let mut first = 0;
    let t_connect = Instant::now();
    for k in 0..nclients {
        let count = n * (k + 1) / nclients - n * k / nclients;
        let source = Ipv4Addr::new(127, 0, 0, 11 + u8::try_from(k).expect("client index"));
        let server = replicas[k % replicas.len()].addr;
        clients.push(start_client(
            &exe,
            server,
            source,
            first,
            count,
            args.connect_concurrency,
        ));
        first += count;
    }
    let connect_secs = wait_for("connect", CONNECT_TIMEOUT, || {
        let live = total(&clients, 1);
        (live >= n as u64, format!("{live}/{n} connected"))
    })
    .await;
    let connect_wall = t_connect.elapsed().as_secs_f64();
    println!(
        "replicas: connect: {} devices in {connect_wall:.1} s ({:.0}/s)",
        total(&clients, 1),
        total(&clients, 1) as f64 / connect_wall
    );

    // 2. Memory.
    tokio::time::sleep(args.settle).await;
    let per_replica_devices = n as f64 / args.replicas as f64;
    let rss_after: Vec<u64> = replicas.iter().map(|r| proc_mem(r.pid).rss_kib).collect();
    let kib_per: Vec<f64> = rss_after
        .iter()
        .zip(&rss_before)
        .map(|(a, b)| (*a as f64 - *b as f64) / per_replica_devices)
        .collect();
    let clients_rss: u64 = clients.iter().map(|c| proc_mem(c.pid).rss_kib).sum();
    println!(
        "replicas: memory: RSS after {:?} KiB → {:?} KiB per device per replica (~{per_replica_devices:.0} devices each); clients {clients_rss} KiB",
        rss_after,
        kib_per
            .iter()
            .map(|k| (k * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );

    // 3. Fan-out, through every replica.
    let mut channels = Vec::new();
    for r in &replicas {
        for _ in 0..2 {
            channels.push(
                Endpoint::from_shared(format!("http://{}", r.addr))
                    .expect("url")
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .expect("a driver channel"),
            );
        }
    }
    let auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {token}").parse().expect("authorization");
    let applies_before = total(&clients, 2);
    let pg_cpu_before = postgres_cpu();
    let replicas_cpu_before: f64 = replicas.iter().map(|r| cpu_secs(r.pid)).sum();
    let clients_cpu_before: f64 = clients.iter().map(|c| cpu_secs(c.pid)).sum();
    let errors = Arc::new(AtomicU64::new(0));
    let t0_ms = now_ms();
    let t0 = Instant::now();
    let creator = {
        let errors = Arc::clone(&errors);
        let conc = args.create_concurrency;
        tokio::spawn(async move {
            let gate = Arc::new(Semaphore::new(conc));
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..n {
                let permit = Arc::clone(&gate).acquire_owned().await.expect("semaphore");
                let mut client = pb::operation_service_client::OperationServiceClient::new(
                    channels[i % channels.len()].clone(),
                );
                let auth = auth.clone();
                let errors = Arc::clone(&errors);
                tasks.spawn(async move {
                    let mut req = tonic::Request::new(pb::CreateOperationRequest {
                        device: device_id(i),
                        spec: Some(pb::OperationSpec {
                            kind: Some(pb::operation_spec::Kind::RestartBlock(BLOCK.into())),
                        }),
                        force: None,
                        actor: "replicas-bench".into(),
                    });
                    req.metadata_mut().insert("authorization", auth);
                    if let Err(s) = client.create_operation(req).await
                        && errors.fetch_add(1, Ordering::Relaxed) < 3
                    {
                        eprintln!("replicas: CreateOperation: {s}");
                    }
                    drop(permit);
                });
            }
            while tasks.join_next().await.is_some() {}
        })
    };
    let delivered = wait_for("fan-out", FANOUT_TIMEOUT, || {
        let got = total(&clients, 2) - applies_before;
        (
            got >= n as u64,
            format!("{got}/{n} APPLY intents delivered"),
        )
    })
    .await;
    let _ = creator.await;
    let wall = t0.elapsed().as_secs_f64();
    let last_ms = clients
        .iter()
        .map(|c| c.stats[3].load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let fanout_secs = (last_ms.saturating_sub(t0_ms)) as f64 / 1000.0;
    let delivered_n = total(&clients, 2) - applies_before;
    let rate = delivered_n as f64 / fanout_secs.max(0.001);
    let pg_cpu = postgres_cpu() - pg_cpu_before;
    let replicas_cpu: f64 =
        replicas.iter().map(|r| cpu_secs(r.pid)).sum::<f64>() - replicas_cpu_before;
    let clients_cpu: f64 =
        clients.iter().map(|c| cpu_secs(c.pid)).sum::<f64>() - clients_cpu_before;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    println!(
        "replicas: fan-out: {delivered_n} APPLY intents in {fanout_secs:.1} s = {rate:.0}/s (goal 10,000/s; {} create errors); \
         CPU over {wall:.1} s: Postgres {pg_cpu:.1} s ({:.0}% of the machine), replicas {replicas_cpu:.1} s ({:.0}%), clients {clients_cpu:.1} s ({:.0}%)",
        errors.load(Ordering::Relaxed),
        100.0 * pg_cpu / (wall * cores),
        100.0 * replicas_cpu / (wall * cores),
        100.0 * clients_cpu / (wall * cores),
    );

    // 4. Every replica restarts; the fleet reconnects.
    let welcomes_before = total(&clients, 0);
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let t_restart = Instant::now();
    for r in &replicas {
        if let Some(pid) = rustix::process::Pid::from_raw(r.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    for r in &mut replicas {
        if tokio::time::timeout(Duration::from_secs(20), r.child.wait())
            .await
            .is_err()
        {
            let _ = r.child.kill().await;
        }
    }
    let stopped_secs = t_restart.elapsed().as_secs_f64();
    let mut restarted = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        restarted.push(start_replica(&bin, &url, &token_file, i + 1, &a.to_string()).await);
    }
    let t_up = Instant::now();
    let reconnect_secs = wait_for("reconnect", CONNECT_TIMEOUT, || {
        let again = total(&clients, 0) - welcomes_before;
        let live = total(&clients, 1);
        (
            again >= n as u64 && live >= n as u64,
            format!("{again}/{n} reconnected, {live} live"),
        )
    })
    .await;
    println!(
        "replicas: restart: every replica stopped in {stopped_secs:.1} s; the fleet reconnected {:.1} s after they were back ({:.1} s from the stop; goal ≤60 s)",
        t_up.elapsed().as_secs_f64(),
        t_restart.elapsed().as_secs_f64(),
    );

    for c in &mut clients {
        c.stdin = None;
    }
    for c in &mut clients {
        let _ = c.child.kill().await;
    }
    for r in &mut restarted {
        let _ = r.child.kill().await;
    }
    let result = json!({
        "bench": "replicas",
        "unix_ms": now_ms(),
        "devices": n,
        "replicas": args.replicas,
        "client_processes": nclients,
        "machine_cores": cores,
        "connect_secs": connect_secs,
        "connects_per_sec": n as f64 / connect_wall,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "kib_per_device_per_replica": kib_per,
        "clients_rss_kib": clients_rss,
        "fanout": {
            "delivered": delivered_n,
            "secs": fanout_secs,
            "intents_per_sec": rate,
            "completed": delivered.is_some(),
            "create_errors": errors.load(Ordering::Relaxed),
            "wall_secs": wall,
            "postgres_cpu_secs": pg_cpu,
            "replicas_cpu_secs": replicas_cpu,
            "clients_cpu_secs": clients_cpu,
        },
        "restart": {
            "stop_secs": stopped_secs,
            "reconnect_secs_after_up": reconnect_secs,
            "reconnect_secs_from_stop": t_restart.elapsed().as_secs_f64(),
        },
        "wall_secs": started.elapsed().as_secs_f64(),
    });
    let path = results_dir().join(&args.out);
    std::fs::write(&path, serde_json::to_string_pretty(&result).expect("json"))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    println!(
        "wrote {} in {:.0} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    // What did not happen was not measured: a phase that timed out fails
    // the bench (so a broken bench fails CI's tiny pass).
    let mut broken = Vec::new();
    if connect_secs.is_none() {
        broken.push("not every device connected".to_owned());
    }
    if delivered.is_none() {
        broken.push(format!("the fan-out delivered {delivered_n} of {n}"));
    }
    if errors.load(Ordering::Relaxed) > 0 {
        broken.push("CreateOperation calls failed".to_owned());
    }
    if reconnect_secs.is_none() {
        broken.push("the fleet did not reconnect after the restart".to_owned());
    }
    if !broken.is_empty() {
        eprintln!("replicas: INCOMPLETE: {}", broken.join("; "));
        std::process::exit(1);
    }
}
