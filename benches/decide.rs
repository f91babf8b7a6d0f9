//! Benchmark: the gate for 1M devices of 20 blocks each, in mixed states, on
//! one core. Goal: ≥1M decisions/s.
//!
//! Run: `cargo bench --bench decide` (or `-- --devices 100000` for a quick
//! run). Prints a summary and writes `target/bench-results/decide.json`.
//!
//! The fleet: 3 releases sharing block versions through the catalog (as the
//! store hands them out), devices spread over them, 10% with device-level env,
//! ~15% with one or more held locks. Each device gets one operation from a mix
//! of release updates (50%), env changes (20%), block restarts (15%), reboots
//! (10%) and OS updates (5%). Targets are resolved once per (release, env
//! context), as the scheduler's gather step does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use lockstep::domain::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BLOCKS: usize = 20;

fn digest(i: usize, v: usize) -> ImageDigest {
    ImageDigest::new(format!("sha256:{:064x}", i * 1000 + v)).unwrap()
}

fn block(i: usize, v: usize) -> Arc<BlockVersion> {
    let mut depends_on = Vec::new();
    if !i.is_multiple_of(5) {
        // chains of 5: b1 -> b0, b2 -> b1, ...
        depends_on.push(Dependency {
            block: BlockName::new(format!("b{:02}", i - 1)).unwrap(),
            restart: i.is_multiple_of(2),
        });
    }
    Arc::new(BlockVersion {
        name: BlockName::new(format!("b{i:02}")).unwrap(),
        version: semver::Version::new(1, v as u64, 0),
        image_digest: digest(i, v),
        config: BlockConfig {
            command: vec![format!("run-{i}")],
            ..Default::default()
        },
        env: Env::new(),
        depends_on,
        update_strategy: if i == 0 {
            UpdateStrategy::hand_over(std::time::Duration::from_secs(30)).unwrap()
        } else {
            UpdateStrategy::DownloadThenKill
        },
    })
}

fn main() {
    let mut devices_n = 1_000_000usize;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--devices") {
        devices_n = args[i + 1].parse().expect("--devices N");
    }
    let mut rng = StdRng::seed_from_u64(42);
    let fleet = FleetId::new("bench").unwrap();
    // Three releases: r1 all v1; r2 changes 3 blocks; r3 changes 10.
    let v1: Vec<_> = (0..BLOCKS).map(|i| block(i, 1)).collect();
    let v2: Vec<_> = (0..BLOCKS).map(|i| block(i, 2)).collect();
    let mk = |id: &str, changed: usize| {
        let blocks = (0..BLOCKS)
            .map(|i| {
                if i < changed {
                    Arc::clone(&v2[i])
                } else {
                    Arc::clone(&v1[i])
                }
            })
            .collect();
        Arc::new(
            Release::new(
                ReleaseId::new(id).unwrap(),
                fleet.clone(),
                blocks,
                Env::new(),
            )
            .unwrap(),
        )
    };
    let releases = [mk("r1", 0), mk("r2", 3), mk("r3", 10)];
    let fleet_env = Arc::new(EnvContext::default());
    let mut device_env = EnvContext::default();
    device_env
        .device
        .set(&EnvVar {
            name: EnvName::new("SITE").unwrap(),
            value: "north".into(),
            scope: EnvScope::Device,
        })
        .unwrap();
    let device_env = Arc::new(device_env);
    // Resolved once per (release, env context).
    let targets: Vec<[Arc<Target>; 2]> = releases
        .iter()
        .map(|r| {
            [
                Arc::new(r.resolve(&fleet_env)),
                Arc::new(r.resolve(&device_env)),
            ]
        })
        .collect();

    let t0 = Instant::now();
    let mut work = Vec::with_capacity(devices_n);
    for d in 0..devices_n {
        let on = rng.random_range(0..2usize); // running r1 or r2
        let env_ix = usize::from(rng.random_bool(0.10));
        let env = if env_ix == 1 {
            Arc::clone(&device_env)
        } else {
            Arc::clone(&fleet_env)
        };
        let mut locks = BTreeMap::new();
        if rng.random_bool(0.15) {
            for _ in 0..rng.random_range(1..=3) {
                let b = rng.random_range(0..BLOCKS);
                locks.insert(
                    BlockName::new(format!("b{b:02}")).unwrap(),
                    LockState {
                        held: true,
                        generation: Generation(rng.random_range(1..100)),
                        since: Timestamp(0),
                    },
                );
            }
        }
        let state = DeviceState {
            id: DeviceId::new(format!("dev-{d}")).unwrap(),
            current_release: Some(releases[on].id().clone()),
            os_version: Some("6.1".into()),
            blocks: targets[on][env_ix].as_running(),
            env,
            locks,
        };
        let roll = rng.random_range(0..100u32);
        let op = match roll {
            0..50 => Operation::UpdateRelease {
                target: Arc::clone(&targets[2][env_ix]),
            },
            50..70 => Operation::EnvChange(EnvChange {
                level: EnvLevel::Device,
                set: vec![EnvVar {
                    name: EnvName::new("LOG").unwrap(),
                    value: "debug".into(),
                    scope: EnvScope::Blocks(
                        [BlockName::new(format!("b{:02}", rng.random_range(0..BLOCKS))).unwrap()]
                            .into(),
                    ),
                }],
                unset: vec![],
            }),
            70..85 => Operation::RestartBlock(
                BlockName::new(format!("b{:02}", rng.random_range(0..BLOCKS))).unwrap(),
            ),
            85..95 => Operation::Reboot,
            _ => Operation::OsUpdate {
                version: "6.2".into(),
            },
        };
        work.push((state, op));
    }
    let build = t0.elapsed();

    // Warm-up on a slice, then the timed pass over every device, on one core.
    for (state, op) in work.iter().take(10_000) {
        std::hint::black_box(decide(op, state, None).unwrap());
    }
    let t1 = Instant::now();
    let mut proceed = 0usize;
    let mut blocked = 0usize;
    let mut holders = 0usize;
    for (state, op) in &work {
        let d = decide(op, state, None).unwrap();
        if d.proceeds() {
            proceed += 1;
        } else {
            blocked += 1;
            holders += d.holders().len();
        }
        std::hint::black_box(&d);
    }
    let elapsed = t1.elapsed();
    let per_sec = devices_n as f64 / elapsed.as_secs_f64();
    println!(
        "decide: {devices_n} devices x {BLOCKS} blocks: {:.3} s, {:.0} decisions/s on one core ({:.0} ns/decision); proceed {proceed}, blocked {blocked} ({holders} release requests); fleet built in {:.1} s",
        elapsed.as_secs_f64(),
        per_sec,
        elapsed.as_nanos() as f64 / devices_n as f64,
        build.as_secs_f64()
    );
    // Per operation kind, to see where the time goes.
    let mut per_kind: BTreeMap<&str, (usize, std::time::Duration)> = BTreeMap::new();
    for (state, op) in &work {
        let t = Instant::now();
        std::hint::black_box(decide(op, state, None).unwrap());
        let e = per_kind.entry(op.kind()).or_default();
        e.0 += 1;
        e.1 += t.elapsed();
    }
    for (kind, (n, t)) in &per_kind {
        println!(
            "  {kind:>15}: {n:>8} decisions, {:>6.0} ns each (timer overhead included)",
            t.as_nanos() as f64 / *n as f64
        );
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    std::fs::create_dir_all(&dir).unwrap();
    let json = serde_json::json!({
        "bench": "decide",
        "devices": devices_n,
        "blocks_per_device": BLOCKS,
        "seconds": elapsed.as_secs_f64(),
        "decisions_per_second": per_sec,
        "proceed": proceed,
        "blocked": blocked,
        "release_requests": holders,
    });
    std::fs::write(
        dir.join("decide.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
}
