//! Benchmark: the reconciler alone over 1M devices' inputs, on one core.
//! Goal: ≤1 s for 1M devices.
//!
//! Run: `cargo bench --bench reconcile` (or `-- --devices 100000` for a quick
//! run). Prints a summary and writes `target/bench-results/reconcile.json`.
//!
//! The fleet: devices of 5 blocks (the seed thread's shape: a controller that
//! holds its lock, telemetry, ui, two more), 15% holding one or two locks,
//! 10% with a pending env change; each device has one to three active
//! operations drawn from a mix — release update (40%), env change (20%),
//! block restart (15%), reboot (15%), OS update (10%) — some already waiting
//! or applying, some with an apply answer in. The baseline, measured in the
//! same run over the same devices, is the per-operation gate alone
//! (`domain::decide`, the pre-reconciler core) for each device's first
//! operation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use lockstep::domain::reconcile::{self, DeviceFacts, OpFacts};
use lockstep::domain::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BLOCKS: usize = 5;

fn name(i: usize) -> BlockName {
    BlockName::new(format!("b{i}")).unwrap()
}

fn block(i: usize, v: usize) -> Arc<BlockVersion> {
    Arc::new(BlockVersion {
        name: name(i),
        version: semver::Version::new(1, v as u64, 0),
        image_digest: ImageDigest::new(format!("sha256:{:064x}", i * 1000 + v)).unwrap(),
        config: BlockConfig {
            command: vec![format!("run-{i}")],
            ..Default::default()
        },
        env: Env::new(),
        depends_on: if i == 4 {
            vec![Dependency {
                block: name(3),
                restart: true,
            }]
        } else {
            vec![]
        },
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
    let mut rng = StdRng::seed_from_u64(7);
    let fleet = FleetId::new("bench").unwrap();
    let v1: Vec<_> = (0..BLOCKS).map(|i| block(i, 1)).collect();
    let v2: Vec<_> = (0..BLOCKS).map(|i| block(i, 2)).collect();
    let mk = |id: &str, changed: &[usize]| {
        let blocks = (0..BLOCKS)
            .map(|i| {
                if changed.contains(&i) {
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
    // r1: all v1 (what devices run); r2 leaves b0 (the controller) alone;
    // r3 changes b0.
    let releases = [mk("r1", &[]), mk("r2", &[2, 3]), mk("r3", &[0, 1])];
    let mut pending_env = EnvContext::default();
    pending_env
        .device
        .set(&EnvVar {
            name: EnvName::new("MODE").unwrap(),
            value: "eco".into(),
            scope: EnvScope::Blocks([name(0)].into()),
        })
        .unwrap();
    let plain_env = EnvContext::default();
    let running = releases[0].resolve(&plain_env).as_running();
    let applied: BTreeMap<BlockName, Env> = (0..BLOCKS).map(|i| (name(i), Env::new())).collect();
    let policy = FleetPolicy::default();
    let windows = vec![WindowRule::OneOff {
        start: Timestamp(2_000_000),
        end: Timestamp(3_000_000),
    }];
    let now = Timestamp(1_000_000);

    let t0 = Instant::now();
    let mut work: Vec<(DeviceFacts, Vec<OpFacts>)> = Vec::with_capacity(devices_n);
    let mut next_op = 1i64;
    for d in 0..devices_n {
        let id = DeviceId::new(format!("dev-{d}")).unwrap();
        let mut locks = BTreeMap::new();
        if rng.random_bool(0.15) {
            for _ in 0..rng.random_range(1..=2) {
                locks.insert(
                    name(rng.random_range(0..BLOCKS)),
                    LockState {
                        held: true,
                        generation: Generation(rng.random_range(1..100)),
                        since: Timestamp(0),
                    },
                );
            }
        }
        let desired = if rng.random_bool(0.10) {
            pending_env.clone()
        } else {
            plain_env.clone()
        };
        let facts = DeviceFacts {
            id: id.clone(),
            fleet: fleet.clone(),
            online: true,
            status: DeviceStatus::InSync,
            state: Some(DeviceState {
                id: id.clone(),
                current_release: Some(releases[0].id().clone()),
                os_version: Some("6.1".into()),
                env: Arc::new(desired.clone()),
                blocks: running.clone(),
                locks,
            }),
            current: Some(Arc::clone(&releases[0])),
            desired_env: desired,
            applied_env: applied.clone(),
            reported_at: Timestamp(0),
            last_apply_answer_at: None,
        };
        let mut ops = Vec::new();
        for _ in 0..rng.random_range(1..=3) {
            let roll = rng.random_range(0..100u32);
            let (spec, release) = match roll {
                0..40 => {
                    let r = &releases[rng.random_range(1..3)];
                    (
                        OperationSpec::AssignRelease(r.id().clone()),
                        Some(Arc::clone(r)),
                    )
                }
                40..60 => (
                    OperationSpec::ApplyEnv(EnvTarget::Blocks(
                        [name(rng.random_range(0..BLOCKS))].into(),
                    )),
                    None,
                ),
                60..75 => (
                    OperationSpec::RestartBlock(name(rng.random_range(0..BLOCKS))),
                    None,
                ),
                75..90 => (OperationSpec::Reboot, None),
                _ => (OperationSpec::OsUpdate("6.2".into()), None),
            };
            let mut record = OperationRecord {
                id: OperationId(next_op),
                device: id.clone(),
                spec,
                force: None,
                status: OpStatus::Pending,
                progress: OpProgress::default(),
                created: Timestamp(next_op),
                updated: Timestamp(next_op),
                generation: 0,
            };
            next_op += 1;
            let mut answer = None;
            if ops.is_empty() && rng.random_bool(0.2) {
                record.status = OpStatus::Applying;
                if rng.random_bool(0.5) {
                    answer = Some(ApplyOutcome::Applied);
                }
            }
            ops.push(OpFacts {
                record,
                release,
                approval: None,
                answer,
                deferrals: BTreeMap::new(),
            });
        }
        work.push((facts, ops));
    }
    let build = t0.elapsed();

    // Baseline, same run, same devices: the gate alone for each device's
    // first operation (what the scheduler decided per activation before).
    let gate_ops: Vec<Option<Operation>> = work
        .iter()
        .map(|(_, ops)| match &ops[0].record.spec {
            OperationSpec::AssignRelease(_) => Some(Operation::UpdateRelease {
                target: Arc::new(ops[0].release.as_ref().unwrap().resolve(&plain_env)),
            }),
            OperationSpec::RestartBlock(b) => Some(Operation::RestartBlock(b.clone())),
            OperationSpec::Reboot => Some(Operation::Reboot),
            OperationSpec::OsUpdate(v) => Some(Operation::OsUpdate { version: v.clone() }),
            _ => None,
        })
        .collect();
    let tb = Instant::now();
    for ((facts, _), op) in work.iter().zip(&gate_ops) {
        if let Some(op) = op {
            std::hint::black_box(decide(op, facts.state.as_ref().unwrap(), None).ok());
        }
    }
    let baseline = tb.elapsed();

    // Warm-up on a slice, then the timed pass over every device.
    for (facts, ops) in work.iter().take(10_000) {
        std::hint::black_box(reconcile::reconcile(&reconcile::Input {
            now,
            device: facts,
            ops,
            open_requests: &[],
            policy: &policy,
            windows: &windows,
        }));
    }
    let t1 = Instant::now();
    let (mut applies, mut requests, mut writes, mut op_count) = (0usize, 0usize, 0usize, 0usize);
    for (facts, ops) in &work {
        let plan = reconcile::reconcile(&reconcile::Input {
            now,
            device: facts,
            ops,
            open_requests: &[],
            policy: &policy,
            windows: &windows,
        });
        op_count += ops.len();
        writes += plan.ops.len();
        for i in &plan.intents {
            match i {
                reconcile::PlannedIntent::Apply { .. } => applies += 1,
                reconcile::PlannedIntent::ReleaseRequest { .. } => requests += 1,
                _ => {}
            }
        }
        std::hint::black_box(&plan);
    }
    let elapsed = t1.elapsed();
    let per_sec = devices_n as f64 / elapsed.as_secs_f64();
    println!(
        "reconcile: {devices_n} devices ({op_count} operations, {BLOCKS} blocks each): {:.3} s on one core, {:.0} devices/s ({:.0} ns/device); {applies} applies, {requests} release requests, {writes} operation writes; baseline (gate alone, first operation): {:.3} s ({:.2}x); inputs built in {:.1} s",
        elapsed.as_secs_f64(),
        per_sec,
        elapsed.as_nanos() as f64 / devices_n as f64,
        baseline.as_secs_f64(),
        elapsed.as_secs_f64() / baseline.as_secs_f64().max(1e-9),
        build.as_secs_f64()
    );
    let dir = std::path::Path::new(
        &std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
    )
    .join("bench-results");
    let _ = std::fs::create_dir_all(&dir);
    let json = serde_json::json!({
        "bench": "reconcile",
        "devices": devices_n,
        "operations": op_count,
        "blocks_per_device": BLOCKS,
        "seconds": elapsed.as_secs_f64(),
        "devices_per_second": per_sec,
        "baseline_gate_seconds": baseline.as_secs_f64(),
        "applies": applies,
        "release_requests": requests,
    });
    let _ = std::fs::write(dir.join("reconcile.json"), json.to_string());
}
