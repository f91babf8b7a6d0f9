//! Benchmark: plan a rollout over 1M devices on one core. Goal: ≤1 s.
//!
//! Run: `cargo bench --bench plan` (or `-- --devices 100000`). Prints a
//! summary and writes `target/bench-results/plan.json`.
//!
//! The snapshot: 1M devices named like real ones (`site-0001234-inv`), 5%
//! already at the target; the strategy is a canary of 10, then 1%, 5%, 25%
//! batches, the last repeating. The timing covers `domain::plan` only
//! (shuffle, batching, and the per-device id clones it hands back), best of
//! five runs.

use std::time::Instant;

use lockstep::domain::{Amount, DeviceId, PlanDevice, Strategy, plan};

fn main() {
    let mut n = 1_000_000usize;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--devices") {
        n = args[i + 1].parse().expect("--devices N");
    }
    let devices: Vec<PlanDevice> = (0..n)
        .map(|i| PlanDevice {
            id: DeviceId::new(format!("site-{i:07}-inv")).unwrap(),
            at_target: i % 20 == 0,
        })
        .collect();
    let strategy = Strategy {
        canary: 10,
        batches: vec![Amount::Percent(1), Amount::Percent(5), Amount::Percent(25)],
        ..Strategy::default()
    };
    let mut best = f64::MAX;
    let mut batches = 0;
    let mut skipped = 0;
    for run in 0..5u64 {
        let t = Instant::now();
        let p = plan(&devices, &strategy, 0x5eed + run);
        let secs = t.elapsed().as_secs_f64();
        best = best.min(secs);
        batches = p.batches.len();
        skipped = p.skipped.len();
        assert_eq!(p.batches.iter().map(Vec::len).sum::<usize>() + skipped, n);
        drop(p);
    }
    println!(
        "plan: {n} devices -> {batches} batches ({skipped} already at target) in {:.3} s (best of 5); goal <= 1 s: {}",
        best,
        if best <= 1.0 { "met" } else { "MISSED" }
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    std::fs::create_dir_all(&dir).unwrap();
    let json = serde_json::json!({
        "bench": "plan",
        "devices": n,
        "batches": batches,
        "skipped": skipped,
        "best_seconds": best,
    });
    std::fs::write(
        dir.join("plan.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
}
