//! Benchmark: lock release → APPLY latency on an idle server. Goal: p99
//! ≤10 ms over ≥1,000 samples.
//!
//! Why it exists: when a block lets go of its lock, whatever waited on it
//! should start at once — the holder may have released inside a short
//! window, and every millisecond the platform sits on the release is time the
//! block might take its lock again.
//!
//! Run: `cargo bench --bench latency` (or `--
//! --samples 200` for a quick run; `--backend sqlite|postgres|both`, default
//! both). Prints a summary per backend and writes
//! `target/bench-results/latency.json`.
//!
//! Each backend: the real `target/release/lockstep serve` (embedded SQLite in
//! a temporary data dir, or a throwaway PostgreSQL cluster), set up through
//! the API with its bootstrap admin token like any client: a fleet, block `b`
//! 1.0.0, release r1, one device. One agent stream (this process) says hello
//! running r1 with `b`'s lock held. Each sample: `CreateOperation(restart b)`;
//! the release request for `b` arrives; the agent reports `b` free (t0); the
//! APPLY arrives (t1); sample = t1 − t0. The agent then answers `applied`,
//! reports its state and takes the lock again (a new generation), as the
//! real agent does. The baseline, measured in the same run on the same
//! stream, is the round trip of a lock report that changes nothing the
//! server must decide on (a report of an unchanged lock), i.e. what the
//! transport and ingest alone cost.

#[path = "support/probe.rs"]
mod probe;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use lockstep::edge::grpc::pb;
use probe::{Probe, percentile};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

const DEVICE: &str = "lat-1";

/// The `lockstep` binary cargo built with this bench (same profile, same
/// sources).
fn server_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lockstep"))
}

struct Server {
    _child: Child,
    channel: Channel,
    token: MetadataValue<Ascii>,
}

async fn start_server(args: &[String], token_file: &Path, log: &Path) -> Server {
    let mut cmd = Command::new(server_binary());
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--dashboard-listen",
        "off",
        "--rate-limit",
        "0",
    ])
    .args(args)
    .env("LOCKSTEP_LOG", "info")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().expect("starting lockstep serve");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("lockstep listening")
                && let Some(a) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
            {
                return a.to_owned();
            }
        }
        panic!("lockstep serve exited before listening");
    })
    .await
    .expect("lockstep serve listening within 60 s");
    let mut file = std::fs::File::create(log).expect("server log file");
    tokio::spawn(async move {
        use std::io::Write as _;
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = writeln!(file, "{line}");
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let token = loop {
        match std::fs::read_to_string(token_file) {
            Ok(t) if !t.trim().is_empty() => break t.trim().to_owned(),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => panic!("no admin token in {}", token_file.display()),
        }
    };
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("URL")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connecting");
    Server {
        _child: child,
        channel,
        token: format!("Bearer {token}").parse().expect("token header"),
    }
}

impl Server {
    fn req<T>(&self, m: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(m);
        r.metadata_mut().insert("authorization", self.token.clone());
        r
    }
}

/// The catalog and the device, through the API. Returns the credential.
async fn setup(s: &Server) -> String {
    let mut devices = pb::device_service_client::DeviceServiceClient::new(s.channel.clone());
    let mut catalog = pb::catalog_service_client::CatalogServiceClient::new(s.channel.clone());
    devices
        .create_fleet(s.req(pb::CreateFleetRequest {
            id: "lat".into(),
            name: String::new(),
        }))
        .await
        .expect("CreateFleet");
    catalog
        .create_block(s.req(pb::CreateBlockRequest {
            name: "b".into(),
            description: String::new(),
        }))
        .await
        .expect("CreateBlock");
    catalog
        .create_block_version(s.req(pb::CreateBlockVersionRequest {
            block_version: Some(pb::BlockVersion {
                block: "b".into(),
                version: "1.0.0".into(),
                image_digest: format!("sha256:{}", "b".repeat(64)),
                ..Default::default()
            }),
        }))
        .await
        .expect("CreateBlockVersion");
    catalog
        .create_release(s.req(pb::CreateReleaseRequest {
            id: "r1".into(),
            fleet: "lat".into(),
            blocks: vec![pb::BlockRef {
                block: "b".into(),
                version: "1.0.0".into(),
            }],
            env: Default::default(),
        }))
        .await
        .expect("CreateRelease");
    devices
        .register_device(s.req(pb::RegisterDeviceRequest {
            id: DEVICE.into(),
            fleet: "lat".into(),
            tags: vec![],
        }))
        .await
        .expect("RegisterDevice")
        .into_inner()
        .credential
}

async fn run(backend: &str, samples: usize) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("admin.token");
    let args: Vec<String> = match backend {
        "sqlite" => vec![
            "--data-dir".into(),
            dir.path().to_str().expect("utf-8").into(),
        ],
        _ => vec![
            "--database-url".into(),
            lockstep::testkit::fresh_pg_url().await,
            "--bootstrap-token-file".into(),
            token_file.to_str().expect("utf-8").into(),
        ],
    };
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    let _ = std::fs::create_dir_all(&results);
    let log = results.join(format!("latency-server-{backend}.log"));
    let server = start_server(&args, &token_file, &log).await;
    let credential = setup(&server).await;
    let mut probe = Probe::connect(
        server.channel.clone(),
        server.token.clone(),
        DEVICE,
        &credential,
    )
    .await;

    // Baseline: a lock report the server has nothing to decide on, then a
    // read of the device's state showing it (transport + ingest + read).
    let mut baseline = Vec::with_capacity(samples);
    for _ in 0..samples.min(200) {
        baseline.push(probe.baseline().await);
    }

    let mut lat = Vec::with_capacity(samples);
    let started = Instant::now();
    for sample in 0..samples {
        // Four agent messages a sample: paced under the server's per-stream
        // message rate (50/s), as a real agent is.
        let paced = tokio::time::sleep(Duration::from_millis(100));
        let ms = probe.sample().await;
        if ms > 100.0 {
            eprintln!("latency [{backend}]: sample {sample} took {ms:.0} ms");
        }
        lat.push(ms);
        paced.await;
    }
    let total = started.elapsed();
    let sort = |v: &mut Vec<f64>| v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    sort(&mut lat);
    sort(&mut baseline);
    let (p50, p99, max) = (
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1],
    );
    let (b50, b99) = (percentile(&baseline, 0.5), percentile(&baseline, 0.99));
    println!(
        "latency [{backend}]: lock release → APPLY over {samples} samples: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms (goal p99 ≤ 10 ms); baseline (lock report + state read, {} samples): p50 {b50:.2} ms, p99 {b99:.2} ms; {:.1} s in all",
        baseline.len(),
        total.as_secs_f64()
    );
    serde_json::json!({
        "backend": backend, "samples": samples,
        "p50_ms": p50, "p99_ms": p99, "max_ms": max,
        "baseline_p50_ms": b50, "baseline_p99_ms": b99,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let samples: usize = value("--samples").map_or(1000, |s| s.parse().expect("--samples N"));
    let backends: Vec<&str> = match value("--backend").as_deref() {
        Some("sqlite") => vec!["sqlite"],
        Some("postgres") => vec!["postgres"],
        _ => vec!["sqlite", "postgres"],
    };
    let mut results = Vec::new();
    for b in backends {
        results.push(run(b, samples).await);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("latency.json"),
        serde_json::json!({ "bench": "latency", "results": results }).to_string(),
    );
}
