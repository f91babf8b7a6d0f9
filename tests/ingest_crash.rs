//! `kill -9` during ingest loses no acknowledged batch: a real `lockstep`
//! process streams lock reports through the group-commit ingest path and
//! prints each acknowledgement; we kill it mid-stream and check the database
//! holds everything it acknowledged.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lockstep::domain::{BlockName, DeviceId, Generation};
use lockstep::store::{PgStore, PoolOptions, SqliteStore, Store};

const BIN: &str = env!("CARGO_BIN_EXE_lockstep");
const BLOCKS: usize = 10;

struct Ack {
    generation: u64,
    first: usize,
    last: usize,
}

fn parse(line: &str) -> Option<Ack> {
    let rest = line.strip_prefix("acked g=")?;
    let (g, devices) = rest.split_once(" devices=")?;
    let (first, last) = devices.split_once("..")?;
    Some(Ack {
        generation: g.parse().ok()?,
        first: first.parse().ok()?,
        last: last.parse().ok()?,
    })
}

/// Runs the load generator with `storage` args and SIGKILLs it after
/// `kill_after` acknowledgements; returns the acknowledgements seen.
fn run_and_kill(storage: &[&str], kill_after: usize) -> Vec<Ack> {
    let mut child = Command::new(BIN)
        .args(["debug", "ingest-load"])
        .args(storage)
        .args([
            "--devices",
            "120",
            "--blocks",
            "10",
            "--rounds",
            "1000",
            "--chunk",
            "8",
            "--writers",
            "4",
        ])
        .env("LOCKSTEP_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn lockstep debug ingest-load");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut acks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acks.len() < kill_after {
        assert!(
            Instant::now() < deadline,
            "too slow: only {} acks in 120 s",
            acks.len()
        );
        match lines.next() {
            Some(Ok(line)) => {
                acks.push(parse(&line).unwrap_or_else(|| panic!("unexpected output {line:?}")))
            }
            other => {
                let status = child.wait();
                panic!(
                    "load generator ended early ({other:?}, {status:?}) after {} acks",
                    acks.len()
                );
            }
        }
    }
    child.kill().expect("SIGKILL");
    // Lines already written before the kill were acknowledged too.
    for line in lines.map_while(Result::ok) {
        if let Some(a) = parse(&line) {
            acks.push(a);
        }
    }
    let status = child.wait().expect("reap");
    assert!(!status.success(), "the process was killed, not finished");
    acks
}

async fn assert_nothing_acknowledged_was_lost<S: Store>(store: &S, acks: &[Ack]) {
    assert!(
        acks.len() >= 40,
        "the test needs a stream of acks, got {}",
        acks.len()
    );
    let mut checked = 0;
    for ack in acks {
        for d in ack.first..=ack.last {
            let device = DeviceId::new(format!("load-{d:07}")).unwrap();
            let locks = store.device_locks(&device).await.unwrap();
            for b in 0..BLOCKS {
                let block = BlockName::new(format!("b{b:02}")).unwrap();
                let lock = locks.get(&block).unwrap_or_else(|| {
                    panic!("{device}/{block} lost (acked g={})", ack.generation)
                });
                assert!(
                    lock.generation >= Generation(ack.generation),
                    "{device}/{block} at {:?}, but g={} was acknowledged",
                    lock.generation,
                    ack.generation
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0);
}

#[tokio::test]
async fn kill_9_during_sqlite_ingest_loses_no_acknowledged_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let acks = tokio::task::spawn_blocking(move || run_and_kill(&["--data-dir", &data_dir], 60))
        .await
        .unwrap();
    let store = SqliteStore::open(dir.path(), &PoolOptions::default())
        .await
        .expect("reopens after a crash");
    assert_nothing_acknowledged_was_lost(&store, &acks).await;
}

#[tokio::test]
async fn kill_9_during_postgres_ingest_loses_no_acknowledged_batch() {
    let url = lockstep::testkit::fresh_pg_url().await;
    let u = url.clone();
    let acks = tokio::task::spawn_blocking(move || run_and_kill(&["--database-url", &u], 60))
        .await
        .unwrap();
    let store = PgStore::connect(&url, &PoolOptions::default())
        .await
        .unwrap();
    assert_nothing_acknowledged_was_lost(&store, &acks).await;
}
