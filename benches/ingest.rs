//! Benchmark: sustained lock-report ingest through the store, for 100k devices
//! of 10 blocks each (1M locks). Goal: ≥20k reports/s persisted on Postgres.
//!
//! Why it exists: every lock change an agent reports goes through
//! `Store::ingest_lock_reports` (one transaction per batch, fenced by
//! generation, applied changes appended to the lock history). This measures
//! how many reports per second that path sustains, puts it next to what the
//! same server absorbs through raw `COPY` (the ceiling for these rows), and
//! gives the SQLite figure for the embedded default.
//!
//! Run: `cargo bench --bench ingest` (or `-- --devices 10000 --rounds 1` for
//! a quick run). Options: `--devices N` (100000), `--rounds N` measured
//! Postgres rounds per writer setup (3), `--batch N` reports per batch
//! (2000), `--sqlite-rounds N` measured SQLite rounds (1, 0 skips SQLite),
//! `--out FILE` (ingest.json). Prints one summary line per figure and writes
//! `target/bench-results/<FILE>`.
//!
//! Postgres is the testkit's throwaway cluster (fsync off, see
//! `lockstep::testkit::pgtemp`) unless `DATABASE_URL` names a server; the server's
//! durability settings are printed and recorded with the figures.
//!
//! Workload: devices are bulk-inserted (not timed). A first round reports
//! every lock once (inserts; reported apart). Then each measured round
//! reports every lock again with generation + 1 and `held` flipped, in a fresh
//! seeded random order (reports arrive from all over the fleet), in batches of
//! `--batch` reports: first with one writer, then with two concurrent writers
//! each owning half the devices. Every report must be applied (checked). The
//! raw-`COPY` baseline streams the same number of rows, same columns, into a
//! plain (logged) table without indexes, one `COPY` per round sent in chunks
//! of `--batch` rows.
//!
//! Runtime: tokio multi-thread with 2 worker threads (the machine has 2
//! cores); writers run as spawned tasks.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use lockstep::domain::{
    BlockName, DeviceId, Fleet, FleetId, Generation, LockReport, LockState, Timestamp,
};
use lockstep::store::{PgStore, PoolOptions, SqliteStore, Store};
use lockstep::testkit;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde_json::json;

/// The blocks every device runs (and holds a lock slot for).
const BLOCKS: [&str; 10] = [
    "supervisor",
    "telemetry",
    "controller",
    "vision",
    "gateway",
    "modbus",
    "hmi",
    "updater",
    "logger",
    "vpn",
];

/// Arbitrary fixed epoch for `since` / `now`, so runs are reproducible.
const BASE_MS: i64 = 1_790_000_000_000;

const FLEET: &str = "bench";

const USAGE: &str = "usage: ingest [--devices N] [--rounds N] [--batch N] \
                     [--sqlite-rounds N] [--out FILE]";

struct Args {
    devices: usize,
    rounds: usize,
    batch: usize,
    sqlite_rounds: usize,
    out: String,
}

fn parse_args() -> Args {
    let mut args = Args {
        devices: 100_000,
        rounds: 3,
        batch: 2_000,
        sqlite_rounds: 1,
        out: "ingest.json".to_owned(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` passes `--bench` to harness-less benches.
        if flag == "--bench" {
            continue;
        }
        let value = it
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value\n{USAGE}"));
        let number = || -> usize {
            value
                .parse()
                .unwrap_or_else(|e| panic!("{flag} {value}: {e}\n{USAGE}"))
        };
        match flag.as_str() {
            "--devices" => args.devices = number(),
            "--rounds" => args.rounds = number(),
            "--batch" => args.batch = number(),
            "--sqlite-rounds" => args.sqlite_rounds = number(),
            "--out" => args.out = value.clone(),
            _ => panic!("unknown argument {flag}\n{USAGE}"),
        }
    }
    assert!(
        args.devices >= 2 && args.rounds >= 1 && args.batch >= 1,
        "--devices must be ≥2, --rounds and --batch ≥1\n{USAGE}"
    );
    args
}

/// splitmix64: a bijection on u64, so distinct inputs give distinct ids.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A UUID-shaped device id (36 characters, as many fleets use), unique per
/// `i` and not in insertion order.
fn device_id(i: usize) -> DeviceId {
    let hi = mix(i as u64);
    let lo = mix(hi ^ 0x5555_5555_5555_5555);
    DeviceId::new(format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    ))
    .expect("generated device id is valid")
}

/// The fleet's devices and blocks, and a reusable order over all locks.
struct Workload {
    devices: Vec<DeviceId>,
    blocks: Vec<BlockName>,
    /// Lock indices (`device * blocks + block`), reshuffled every round.
    order: Vec<u32>,
    rng: StdRng,
}

impl Workload {
    fn new(devices: usize) -> Self {
        let blocks: Vec<BlockName> = BLOCKS
            .iter()
            .map(|b| BlockName::new(*b).expect("block name is valid"))
            .collect();
        let locks = u32::try_from(devices * blocks.len()).expect("lock count fits in u32");
        Self {
            devices: (0..devices).map(device_id).collect(),
            blocks,
            order: (0..locks).collect(),
            rng: StdRng::seed_from_u64(7),
        }
    }

    fn locks(&self) -> usize {
        self.order.len()
    }

    /// Every lock once at `generation` (held when odd), in a fresh random
    /// order, split among `writers` by device (writer `w` owns a contiguous
    /// `1/writers` share of the devices).
    fn round(&mut self, generation: u64, writers: usize) -> Vec<Vec<LockReport>> {
        self.order.shuffle(&mut self.rng);
        let n = self.devices.len();
        let mut out: Vec<Vec<LockReport>> = (0..writers)
            .map(|_| Vec::with_capacity(self.order.len() / writers + 1))
            .collect();
        let state = LockState {
            held: generation % 2 == 1,
            generation: Generation(generation),
            since: Timestamp(BASE_MS + generation as i64 * 1_000),
        };
        for &idx in &self.order {
            let (d, b) = (
                idx as usize / self.blocks.len(),
                idx as usize % self.blocks.len(),
            );
            out[d * writers / n].push(LockReport {
                device: self.devices[d].clone(),
                block: self.blocks[b].clone(),
                state,
            });
        }
        out
    }
}

/// Throughput of one measured phase.
struct Phase {
    reports: u64,
    elapsed: Duration,
    per_round: Vec<f64>,
}

impl Phase {
    fn per_second(&self) -> f64 {
        self.reports as f64 / self.elapsed.as_secs_f64()
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "reports": self.reports,
            "seconds": self.elapsed.as_secs_f64(),
            "per_second": self.per_second(),
            "per_round_per_second": self.per_round,
        })
    }
}

/// Sends `reports` through the store in batches; every report must apply.
async fn ingest_all<S: Store>(store: S, reports: Vec<LockReport>, batch: usize, now: Timestamp) {
    for chunk in reports.chunks(batch) {
        let outcome = store
            .ingest_lock_reports(chunk, now)
            .await
            .unwrap_or_else(|e| panic!("ingesting a batch of {} lock reports: {e}", chunk.len()));
        assert_eq!(
            (outcome.applied, outcome.dropped),
            (chunk.len() as u64, 0),
            "every report in the batch is newer and must be applied"
        );
    }
}

/// `rounds` rounds over every lock, generations `first_generation..`, with
/// `writers` concurrent tasks. Building a round's reports is not timed.
async fn run_rounds<S: Store>(
    store: &S,
    work: &mut Workload,
    first_generation: u64,
    rounds: usize,
    writers: usize,
    batch: usize,
    label: &str,
) -> Phase {
    let mut phase = Phase {
        reports: 0,
        elapsed: Duration::ZERO,
        per_round: Vec::new(),
    };
    for r in 0..rounds {
        let generation = first_generation + r as u64;
        let now = Timestamp(BASE_MS + generation as i64 * 1_000 + 500);
        let shares = work.round(generation, writers);
        let start = Instant::now();
        let tasks: Vec<_> = shares
            .into_iter()
            .map(|share| tokio::spawn(ingest_all(store.clone(), share, batch, now)))
            .collect();
        for task in tasks {
            task.await.expect("ingest writer task panicked");
        }
        let elapsed = start.elapsed();
        let rate = work.locks() as f64 / elapsed.as_secs_f64();
        println!(
            "  {label}: round {}/{rounds} (generation {generation}): {} reports in {:.2} s = {rate:.0}/s (load {})",
            r + 1,
            work.locks(),
            elapsed.as_secs_f64(),
            load_average()
        );
        phase.reports += work.locks() as u64;
        phase.elapsed += elapsed;
        phase.per_round.push(rate);
    }
    phase
}

/// Raw `COPY` of the same rows into a plain table without indexes: the
/// ceiling for getting these rows into this server.
async fn copy_baseline(store: &PgStore, work: &mut Workload, rounds: usize, batch: usize) -> Phase {
    let mut conn = store
        .pool()
        .acquire()
        .await
        .expect("acquiring a connection for COPY");
    sqlx::query(
        "CREATE TABLE lock_copy (device_id text NOT NULL, block text NOT NULL, \
         held bool NOT NULL, generation int8 NOT NULL, since_ms int8 NOT NULL)",
    )
    .execute(&mut *conn)
    .await
    .expect("creating the COPY staging table");
    let mut phase = Phase {
        reports: 0,
        elapsed: Duration::ZERO,
        per_round: Vec::new(),
    };
    let mut buf = String::with_capacity(batch * 80);
    for r in 0..rounds {
        let generation = 1 + r as u64;
        let rows = work.round(generation, 1).pop().expect("one share");
        let start = Instant::now();
        let mut copy = conn
            .copy_in_raw(
                "COPY lock_copy (device_id, block, held, generation, since_ms) \
                 FROM STDIN (FORMAT text)",
            )
            .await
            .expect("starting COPY");
        for chunk in rows.chunks(batch) {
            buf.clear();
            for row in chunk {
                // Ids are restricted to characters that need no escaping.
                writeln!(
                    buf,
                    "{}\t{}\t{}\t{}\t{}",
                    row.device,
                    row.block,
                    if row.state.held { 't' } else { 'f' },
                    row.state.generation.0,
                    row.state.since.0
                )
                .expect("writing to a String");
            }
            copy.send(buf.as_bytes()).await.expect("sending COPY data");
        }
        let copied = copy.finish().await.expect("finishing COPY");
        let elapsed = start.elapsed();
        assert_eq!(copied, rows.len() as u64, "COPY row count");
        let rate = rows.len() as f64 / elapsed.as_secs_f64();
        println!(
            "  pg COPY: round {}/{rounds}: {} rows in {:.2} s = {rate:.0}/s",
            r + 1,
            rows.len(),
            elapsed.as_secs_f64()
        );
        phase.reports += rows.len() as u64;
        phase.elapsed += elapsed;
        phase.per_round.push(rate);
    }
    phase
}

/// SQLite's fastest path for the same rows, as the baseline for the
/// store's upsert: one transaction per round, each batch one
/// `INSERT … SELECT FROM json_each(?)` into a plain table without indexes
/// (the JSON is built inside the timing, as the store builds it).
async fn sqlite_raw_rounds(
    store: &SqliteStore,
    work: &mut Workload,
    first_generation: u64,
    rounds: usize,
    batch: usize,
) -> Phase {
    sqlx::query(
        "CREATE TABLE lock_raw (device_id TEXT NOT NULL, block TEXT NOT NULL, \
         held BOOLEAN NOT NULL, generation INTEGER NOT NULL, since_ms INTEGER NOT NULL)",
    )
    .execute(store.pool())
    .await
    .expect("creating the raw table");
    let mut phase = Phase {
        reports: 0,
        elapsed: Duration::ZERO,
        per_round: Vec::new(),
    };
    for r in 0..rounds {
        let rows = work
            .round(first_generation + r as u64, 1)
            .pop()
            .expect("one share");
        let start = Instant::now();
        let mut tx = store.pool().begin().await.expect("BEGIN");
        for chunk in rows.chunks(batch) {
            let json = serde_json::Value::Array(
                chunk
                    .iter()
                    .map(|l| {
                        json!([
                            l.device.as_str(),
                            l.block.as_str(),
                            l.state.held,
                            l.state.generation.0,
                            l.state.since.0
                        ])
                    })
                    .collect(),
            )
            .to_string();
            sqlx::query(
                "INSERT INTO lock_raw SELECT r.value ->> 0, r.value ->> 1, r.value ->> 2, \
                 r.value ->> 3, r.value ->> 4 FROM json_each($1) r",
            )
            .bind(json)
            .execute(&mut *tx)
            .await
            .expect("raw insert");
        }
        tx.commit().await.expect("COMMIT");
        let elapsed = start.elapsed();
        let rate = rows.len() as f64 / elapsed.as_secs_f64();
        println!(
            "  sqlite raw insert: round {}/{rounds}: {} rows in {:.2} s = {rate:.0}/s",
            r + 1,
            rows.len(),
            elapsed.as_secs_f64()
        );
        phase.reports += rows.len() as u64;
        phase.elapsed += elapsed;
        phase.per_round.push(rate);
    }
    phase
}

fn fleet() -> Fleet {
    Fleet {
        id: FleetId::new(FLEET).expect("fleet id is valid"),
        name: "ingest bench".to_owned(),
        created: Timestamp(BASE_MS),
    }
}

/// Fleet plus devices in one UNNEST insert; then ANALYZE, as autovacuum
/// would have done on a running server.
async fn setup_pg(store: &PgStore, work: &Workload) {
    store
        .create_fleet(&fleet())
        .await
        .expect("creating the bench fleet");
    let ids: Vec<&str> = work.devices.iter().map(DeviceId::as_str).collect();
    sqlx::query(
        "INSERT INTO devices (id, fleet, credential_hash, credential_revoked, intent_seq, \
         status, created_ms) \
         SELECT id, $2, $3, false, 0, 'unknown', $4 FROM UNNEST($1::text[]) AS u(id)",
    )
    .bind(&ids)
    .bind(FLEET)
    .bind("bench-credential-hash")
    .bind(BASE_MS)
    .execute(store.pool())
    .await
    .expect("bulk-inserting devices");
    sqlx::query("ANALYZE devices")
        .execute(store.pool())
        .await
        .expect("analyzing devices");
}

/// Fleet plus devices in one transaction of prepared inserts.
async fn setup_sqlite(store: &SqliteStore, work: &Workload) {
    store
        .create_fleet(&fleet())
        .await
        .expect("creating the bench fleet");
    let mut tx = store
        .pool()
        .begin()
        .await
        .expect("beginning the device insert");
    for id in &work.devices {
        sqlx::query(
            "INSERT INTO devices (id, fleet, credential_hash, credential_revoked, intent_seq, \
             status, created_ms) VALUES ($1, $2, $3, 0, 0, 'unknown', $4)",
        )
        .bind(id.as_str())
        .bind(FLEET)
        .bind("bench-credential-hash")
        .bind(BASE_MS)
        .execute(&mut *tx)
        .await
        .expect("inserting a device");
    }
    tx.commit().await.expect("committing the device insert");
}

/// The server settings that decide what "persisted" means.
async fn pg_settings(store: &PgStore) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for name in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "shared_buffers",
    ] {
        let value: String = sqlx::query_scalar("SELECT current_setting($1)")
            .bind(name)
            .fetch_one(store.pool())
            .await
            .unwrap_or_else(|e| panic!("reading setting {name}: {e}"));
        out.insert(name.to_owned(), value.into());
    }
    out
}

/// Checks the final state: every lock at the last generation.
async fn check_pg(store: &PgStore, work: &Workload, generation: u64) {
    let at_last: i64 =
        sqlx::query_scalar("SELECT count(*) FROM device_locks WHERE generation = $1")
            .bind(generation as i64)
            .fetch_one(store.pool())
            .await
            .expect("counting device_locks");
    assert_eq!(
        at_last as usize,
        work.locks(),
        "every lock ends at generation {generation}"
    );
}

/// The 1/5/15-minute load averages: other work on this 2-core machine skews
/// the figures (the bench itself and its Postgres backends count for ~1–2).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

fn summary(label: &str, phase: &Phase, unit: &str, extra: &str) {
    println!(
        "ingest {label}: {} {unit} in {:.1} s = {:.0} {unit}/s{extra}",
        phase.reports,
        phase.elapsed.as_secs_f64(),
        phase.per_second()
    );
}

async fn bench(args: &Args) -> serde_json::Value {
    let load_before = load_average();
    println!("load average before: {load_before}");
    let mut work = Workload::new(args.devices);
    let locks = work.locks();
    println!(
        "{} devices × {} blocks = {locks} locks, batches of {}, {} measured rounds",
        args.devices,
        BLOCKS.len(),
        args.batch,
        args.rounds
    );

    // ---- Postgres
    let setup = Instant::now();
    let opts = testkit::fresh_pg_database().await;
    let store = PgStore::connect_with(opts, &PoolOptions::default())
        .await
        .expect("connecting to the bench database");
    let settings = pg_settings(&store).await;
    println!("postgres: {}", serde_json::Value::Object(settings.clone()));
    setup_pg(&store, &work).await;
    println!(
        "  pg setup: {} devices in {:.1} s (not measured)",
        args.devices,
        setup.elapsed().as_secs_f64()
    );
    let insert = run_rounds(&store, &mut work, 1, 1, 1, args.batch, "pg first reports").await;
    let one = run_rounds(
        &store,
        &mut work,
        2,
        args.rounds,
        1,
        args.batch,
        "pg 1 writer",
    )
    .await;
    let two_first = 2 + args.rounds as u64;
    let two = run_rounds(
        &store,
        &mut work,
        two_first,
        args.rounds,
        2,
        args.batch,
        "pg 2 writers",
    )
    .await;
    check_pg(&store, &work, two_first + args.rounds as u64 - 1).await;
    let copy = copy_baseline(&store, &mut work, args.rounds, args.batch).await;
    store.pool().close().await;

    summary("pg first report per lock (insert)", &insert, "reports", "");
    let goal = |p: &Phase| {
        if p.per_second() >= 20_000.0 {
            " (goal ≥20000/s: met)"
        } else {
            " (goal ≥20000/s: NOT met)"
        }
    };
    summary("pg sustained, 1 writer", &one, "reports", goal(&one));
    summary("pg sustained, 2 writers", &two, "reports", goal(&two));
    let ratio_one = one.per_second() / copy.per_second();
    let ratio_two = two.per_second() / copy.per_second();
    summary(
        "pg raw COPY baseline",
        &copy,
        "rows",
        &format!(" (upsert/COPY: {ratio_one:.3} with 1 writer, {ratio_two:.3} with 2)"),
    );

    // ---- SQLite
    let sqlite = if args.sqlite_rounds > 0 {
        let (store, dir) = testkit::sqlite_store().await;
        setup_sqlite(&store, &work).await;
        let insert = run_rounds(
            &store,
            &mut work,
            1,
            1,
            1,
            args.batch,
            "sqlite first reports",
        )
        .await;
        let one = run_rounds(
            &store,
            &mut work,
            2,
            args.sqlite_rounds,
            1,
            args.batch,
            "sqlite 1 writer",
        )
        .await;
        let raw = sqlite_raw_rounds(&store, &mut work, 2, args.sqlite_rounds, args.batch).await;
        store.pool().close().await;
        drop(dir);
        summary(
            "sqlite first report per lock (insert)",
            &insert,
            "reports",
            "",
        );
        let sqlite_goal = if one.per_second() >= 20_000.0 {
            " (goal ≥20k/s: met)"
        } else {
            " (goal ≥20k/s: NOT met)"
        };
        summary("sqlite sustained, 1 writer", &one, "reports", sqlite_goal);
        let ratio = one.per_second() / raw.per_second();
        summary(
            "sqlite raw insert baseline",
            &raw,
            "rows",
            &format!(" (upsert/raw: {ratio:.3})"),
        );
        json!({
            "synchronous": "FULL",
            "journal_mode": "WAL",
            "first_reports": insert.json(),
            "one_writer": one.json(),
            "raw_insert": raw.json(),
            "upsert_to_raw": ratio,
        })
    } else {
        serde_json::Value::Null
    };

    let load_after = load_average();
    println!("load average after: {load_after}");
    json!({
        "bench": "ingest",
        "load_average_before": load_before,
        "load_average_after": load_after,
        "devices": args.devices,
        "blocks_per_device": BLOCKS.len(),
        "locks": locks,
        "batch": args.batch,
        "rounds": args.rounds,
        "runtime": "tokio multi_thread, 2 worker threads",
        "postgres": {
            "settings": settings,
            "first_reports": insert.json(),
            "one_writer": one.json(),
            "two_writers": two.json(),
            "copy": copy.json(),
            "upsert_to_copy_one_writer": ratio_one,
            "upsert_to_copy_two_writers": ratio_two,
        },
        "sqlite": sqlite,
    })
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let result = runtime.block_on(bench(&args));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    std::fs::create_dir_all(&dir).expect("creating target/bench-results");
    let path = dir.join(&args.out);
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&result).expect("serializing the results"),
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    println!("wrote {}", path.display());
}
