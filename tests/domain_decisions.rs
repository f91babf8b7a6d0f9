//! Decisions of the pure core, table-driven: the seed request's matrix, impact
//! of every operation, dependency propagation, env scoping, forces, and
//! property tests for the gate's invariants.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use lockstep::domain::*;
use proptest::prelude::*;
use proptest::strategy::Strategy as _;

// ---------------------------------------------------------------- fixtures

fn b(s: &str) -> BlockName {
    BlockName::new(s).unwrap()
}

fn digest(seed: &str) -> ImageDigest {
    use std::fmt::Write;
    let mut hex = String::new();
    for byte in seed.bytes().cycle().take(32) {
        write!(hex, "{byte:02x}").unwrap();
    }
    ImageDigest::new(format!("sha256:{hex}")).unwrap()
}

/// A block version builder: `bv("a", "1.0.0")` with image `a@1.0.0`.
#[derive(Clone)]
struct Bv(BlockVersion);

fn bv(name: &str, version: &str) -> Bv {
    Bv(BlockVersion {
        name: b(name),
        version: version.parse().unwrap(),
        image_digest: digest(&format!("{name}@{version}")),
        config: BlockConfig::default(),
        env: Env::new(),
        depends_on: vec![],
        update_strategy: UpdateStrategy::DownloadThenKill,
    })
}

impl Bv {
    fn image(mut self, seed: &str) -> Self {
        self.0.image_digest = digest(seed);
        self
    }
    fn command(mut self, cmd: &str) -> Self {
        self.0.config.command = vec![cmd.to_owned()];
        self
    }
    fn env(mut self, k: &str, v: &str) -> Self {
        self.0.env.insert(EnvName::new(k).unwrap(), v.to_owned());
        self
    }
    fn dep(mut self, on: &str, restart: bool) -> Self {
        self.0.depends_on.push(Dependency {
            block: b(on),
            restart,
        });
        self
    }
    fn hand_over(mut self) -> Self {
        self.0.update_strategy = UpdateStrategy::hand_over(Duration::from_secs(30)).unwrap();
        self
    }
    fn arc(self) -> Arc<BlockVersion> {
        Arc::new(self.0)
    }
}

fn release(id: &str, blocks: Vec<Bv>) -> Arc<Release> {
    Arc::new(
        Release::new(
            ReleaseId::new(id).unwrap(),
            FleetId::new("site-fleet").unwrap(),
            blocks.into_iter().map(Bv::arc).collect(),
            Env::new(),
        )
        .unwrap(),
    )
}

/// A device running `release` with `env`, with the given blocks' locks held.
fn device_running(release: &Arc<Release>, env: EnvContext, locked: &[&str]) -> DeviceState {
    let target = release.resolve(&env);
    let locks = locked
        .iter()
        .map(|l| {
            (
                b(l),
                LockState {
                    held: true,
                    generation: Generation(7),
                    since: Timestamp(1_000),
                },
            )
        })
        .collect();
    DeviceState {
        id: DeviceId::new("dev-1").unwrap(),
        current_release: Some(release.id().clone()),
        os_version: Some("6.1.0".into()),
        env: Arc::new(env),
        blocks: target.as_running(),
        locks,
    }
}

/// The seed thread's device: blocks a, b, c; nothing depends on anything.
fn abc() -> Arc<Release> {
    release(
        "r1",
        vec![bv("a", "1.0.0"), bv("b", "1.0.0"), bv("c", "1.0.0")],
    )
}

fn update_to(device: &DeviceState, r: &Arc<Release>) -> Operation {
    Operation::UpdateRelease {
        target: Arc::new(r.resolve(&device.env)),
    }
}

fn env_set(level: EnvLevel, name: &str, value: &str, scope: &[&str]) -> Operation {
    Operation::EnvChange(EnvChange {
        level,
        set: vec![EnvVar {
            name: EnvName::new(name).unwrap(),
            value: value.into(),
            scope: if scope.is_empty() {
                EnvScope::Device
            } else {
                EnvScope::Blocks(scope.iter().map(|s| b(s)).collect())
            },
        }],
        unset: vec![],
    })
}

fn holders(d: &Decision) -> Vec<(String, Reason, bool)> {
    d.holders()
        .iter()
        .map(|h| (h.block.to_string(), h.reason, h.handover))
        .collect()
}

fn disturbed(i: &Impact) -> Vec<(String, Reason)> {
    i.disturbed
        .iter()
        .map(|(k, v)| (k.to_string(), v.reason))
        .collect()
}

// ------------------------------------------------- the seed request's matrix

/// Container A holds its lock. Row by row, as the request lists them.
#[test]
fn seed_matrix_with_a_locked() {
    let r1 = abc();
    let dev = device_running(&r1, EnvContext::default(), &["a"]);
    // A release where only b changed: a has a zero delta.
    let r_a_unchanged = release(
        "r2",
        vec![bv("a", "1.0.0"), bv("b", "1.1.0"), bv("c", "1.0.0")],
    );
    let r_a_changed = release(
        "r3",
        vec![bv("a", "1.1.0"), bv("b", "1.0.0"), bv("c", "1.0.0")],
    );
    use EnvLevel::*;
    use Reason::*;
    type Row = (&'static str, Operation, Option<Vec<(&'static str, Reason)>>);
    let rows: Vec<Row> = vec![
        // (what, operation, None = proceeds | Some(holders asked to release))
        (
            "env change for B and C proceeds",
            env_set(Fleet, "X", "1", &["b", "c"]),
            None,
        ),
        (
            "env change for B only (device level) proceeds",
            env_set(Device, "X", "1", &["b"]),
            None,
        ),
        (
            "env change for A waits",
            env_set(Fleet, "X", "1", &["a"]),
            Some(vec![("a", EnvChange)]),
        ),
        (
            "env change for A and B waits",
            env_set(Device, "X", "1", &["a", "b"]),
            Some(vec![("a", EnvChange)]),
        ),
        (
            "device-wide env change waits",
            env_set(Fleet, "X", "1", &[]),
            Some(vec![("a", EnvChange)]),
        ),
        (
            "release where A is unchanged applies at once",
            update_to(&dev, &r_a_unchanged),
            None,
        ),
        (
            "release where A changed waits",
            update_to(&dev, &r_a_changed),
            Some(vec![("a", UpdateRestart)]),
        ),
        ("restart B proceeds", Operation::RestartBlock(b("b")), None),
        ("restart C proceeds", Operation::RestartBlock(b("c")), None),
        ("stop B proceeds", Operation::StopBlock(b("b")), None),
        ("stop C proceeds", Operation::StopBlock(b("c")), None),
        (
            "restart A waits",
            Operation::RestartBlock(b("a")),
            Some(vec![("a", Restart)]),
        ),
        (
            "stop A waits",
            Operation::StopBlock(b("a")),
            Some(vec![("a", Stop)]),
        ),
        ("reboot waits", Operation::Reboot, Some(vec![("a", Reboot)])),
        (
            "shutdown waits",
            Operation::Shutdown,
            Some(vec![("a", Shutdown)]),
        ),
        (
            "OS update waits",
            Operation::OsUpdate {
                version: "6.2.0".into(),
            },
            Some(vec![("a", OsUpdate)]),
        ),
    ];
    for (what, op, expect) in rows {
        let decision = decide(&op, &dev, None).unwrap_or_else(|e| panic!("{what}: {e}"));
        let got: Vec<(String, Reason)> = holders(&decision)
            .into_iter()
            .map(|(blk, r, _)| (blk, r))
            .collect();
        match expect {
            None => assert!(
                decision.proceeds(),
                "{what}: expected to proceed, holders {got:?}"
            ),
            Some(want) => {
                let want: Vec<(String, Reason)> = want
                    .into_iter()
                    .map(|(blk, r)| (blk.to_owned(), r))
                    .collect();
                assert_eq!(got, want, "{what}");
            }
        }
    }
}

#[test]
fn release_with_a_unchanged_tells_a_update_no_restart() {
    let r1 = abc();
    let dev = device_running(&r1, EnvContext::default(), &["a"]);
    let r2 = release(
        "r2",
        vec![bv("a", "1.0.0"), bv("b", "1.1.0"), bv("c", "1.0.0")],
    );
    let d = decide(&update_to(&dev, &r2), &dev, None).unwrap();
    assert!(d.proceeds());
    let i = d.impact();
    assert_eq!(disturbed(i), vec![("b".into(), Reason::UpdateRestart)]);
    assert_eq!(i.notices.get(&b("a")), Some(&Reason::UpdateNoRestart));
    assert_eq!(i.notices.get(&b("c")), Some(&Reason::UpdateNoRestart));
    assert!(!i.notices.contains_key(&b("b")));
}

#[test]
fn os_update_reboot_and_shutdown_never_offer_handover() {
    let r = release("r", vec![bv("a", "1.0.0").hand_over(), bv("b", "1.0.0")]);
    let dev = device_running(&r, EnvContext::default(), &["a", "b"]);
    for op in [
        Operation::OsUpdate {
            version: "7".into(),
        },
        Operation::Reboot,
        Operation::Shutdown,
    ] {
        let d = decide(&op, &dev, None).unwrap();
        assert_eq!(d.holders().len(), 2, "{}", op.kind());
        assert!(d.holders().iter().all(|h| !h.handover), "{}", op.kind());
    }
}

#[test]
fn update_restart_offers_handover_iff_the_new_version_uses_hand_over() {
    let r1 = release("r1", vec![bv("a", "1.0.0"), bv("b", "1.0.0")]);
    let dev = device_running(&r1, EnvContext::default(), &["a", "b"]);
    let r2 = release("r2", vec![bv("a", "2.0.0").hand_over(), bv("b", "2.0.0")]);
    let d = decide(&update_to(&dev, &r2), &dev, None).unwrap();
    assert_eq!(
        holders(&d),
        vec![
            ("a".into(), Reason::UpdateRestart, true),
            ("b".into(), Reason::UpdateRestart, false)
        ]
    );
}

// ------------------------------------------------------------------- delta

#[test]
fn delta_per_block_cause_table() {
    let base = bv("a", "1.0.0").command("run").env("K", "v");
    let rows: Vec<(&str, Bv, Option<RestartCause>)> = vec![
        (
            "same everything, new version label",
            base.clone().tap_version("1.0.1"),
            None,
        ),
        (
            "new image",
            base.clone().image("other"),
            Some(RestartCause::Image),
        ),
        (
            "new image and config: image reported",
            base.clone().image("other").command("x"),
            Some(RestartCause::Image),
        ),
        (
            "new config",
            base.clone().command("run --fast"),
            Some(RestartCause::Config),
        ),
        (
            "new block env",
            base.clone().env("K", "w"),
            Some(RestartCause::Env),
        ),
        ("new depends_on only", base.clone().dep("zz", false), None),
    ];
    let from_rel = release("from", vec![base.clone(), bv("zz", "1.0.0")]);
    let from = from_rel.resolve(&EnvContext::default()).as_running();
    for (what, to_bv, want) in rows {
        let to_rel = release("to", vec![to_bv, bv("zz", "1.0.0")]);
        let to = to_rel.resolve(&EnvContext::default()).as_running();
        let got = lockstep::domain::delta::delta(&from, &to)[&b("a")];
        let want = match want {
            None => BlockDelta::Unchanged,
            Some(cause) => BlockDelta::Restart { cause },
        };
        assert_eq!(got, want, "{what}");
    }
}

trait TapVersion {
    fn tap_version(self, v: &str) -> Self;
}
impl TapVersion for Bv {
    fn tap_version(mut self, v: &str) -> Self {
        self.0.version = v.parse().unwrap();
        self
    }
}

#[test]
fn zero_delta_release_disturbs_nothing_and_notifies_everyone() {
    let r1 = abc();
    let dev = device_running(&r1, EnvContext::default(), &["a", "b", "c"]);
    let same = release(
        "r1-rebuilt",
        vec![bv("a", "1.0.0"), bv("b", "1.0.0"), bv("c", "1.0.0")],
    );
    let d = decide(&update_to(&dev, &same), &dev, None).unwrap();
    assert!(d.proceeds());
    assert!(d.impact().disturbed.is_empty());
    assert_eq!(d.impact().notices.len(), 3);
}

#[test]
fn added_blocks_start_and_removed_blocks_stop() {
    let r1 = release("r1", vec![bv("a", "1.0.0"), bv("b", "1.0.0")]);
    let dev = device_running(&r1, EnvContext::default(), &["b"]);
    let r2 = release("r2", vec![bv("a", "1.0.0"), bv("n", "1.0.0")]);
    let d = decide(&update_to(&dev, &r2), &dev, None).unwrap();
    assert_eq!(holders(&d), vec![("b".into(), Reason::Stop, false)]);
    assert_eq!(d.impact().started, vec![b("n")]);
    assert_eq!(d.impact().notices.keys().collect::<Vec<_>>(), vec![&b("a")]);
}

#[test]
fn env_change_that_changes_nothing_disturbs_nothing() {
    let mut ctx = EnvContext::default();
    ctx.fleet
        .set(&EnvVar {
            name: EnvName::new("X").unwrap(),
            value: "1".into(),
            scope: EnvScope::Device,
        })
        .unwrap();
    let dev = device_running(&abc(), ctx, &["a"]);
    // Same value again; and a device-level value shadowed... nothing changes.
    let op = env_set(EnvLevel::Fleet, "X", "1", &[]);
    let d = decide(&op, &dev, None).unwrap();
    assert!(d.proceeds());
    assert!(d.impact().disturbed.is_empty());
}

#[test]
fn env_change_shadowed_by_a_more_specific_layer_disturbs_nothing() {
    let mut ctx = EnvContext::default();
    ctx.device
        .set(&EnvVar {
            name: EnvName::new("X").unwrap(),
            value: "device".into(),
            scope: EnvScope::Blocks([b("a")].into()),
        })
        .unwrap();
    let dev = device_running(&abc(), ctx, &["a"]);
    // A fleet-wide change to X reaches b and c, but a's device-scoped X wins.
    let d = decide(&env_set(EnvLevel::Fleet, "X", "fleet", &[]), &dev, None).unwrap();
    assert!(d.proceeds());
    assert_eq!(
        disturbed(d.impact()),
        vec![
            ("b".into(), Reason::EnvChange),
            ("c".into(), Reason::EnvChange)
        ]
    );
}

#[test]
fn unsetting_a_variable_a_uses_waits_for_a() {
    let mut ctx = EnvContext::default();
    let x = EnvName::new("X").unwrap();
    ctx.fleet
        .set(&EnvVar {
            name: x.clone(),
            value: "1".into(),
            scope: EnvScope::Blocks([b("a")].into()),
        })
        .unwrap();
    let dev = device_running(&abc(), ctx, &["a"]);
    let op = Operation::EnvChange(EnvChange {
        level: EnvLevel::Fleet,
        set: vec![],
        unset: vec![(x, EnvScope::Blocks([b("a")].into()))],
    });
    let d = decide(&op, &dev, None).unwrap();
    assert_eq!(holders(&d), vec![("a".into(), Reason::EnvChange, false)]);
}

#[test]
fn restarting_or_stopping_a_block_that_does_not_run_is_an_error() {
    let dev = device_running(&abc(), EnvContext::default(), &[]);
    for op in [
        Operation::RestartBlock(b("zz")),
        Operation::StopBlock(b("zz")),
    ] {
        assert_eq!(
            decide(&op, &dev, None),
            Err(ImpactError::NotRunning { block: b("zz") })
        );
    }
}

#[test]
fn starting_a_block_disturbs_nothing_that_runs() {
    let dev = device_running(&abc(), EnvContext::default(), &["a", "b", "c"]);
    let d = decide(&Operation::StartBlock(b("new")), &dev, None).unwrap();
    assert!(d.proceeds());
    assert!(d.impact().disturbed.is_empty());
    assert_eq!(d.impact().started, vec![b("new")]);
    let d = decide(&Operation::StartBlock(b("a")), &dev, None).unwrap();
    assert!(d.proceeds() && d.impact().started.is_empty());
}

// ------------------------------------------------- dependency propagation

#[test]
fn dependency_chain_restarts_transitively_naming_the_nearest_cause() {
    // c -> b -> a (c depends on b, b on a), all restart: true.
    let r = release(
        "r",
        vec![
            bv("a", "1.0.0"),
            bv("b", "1.0.0").dep("a", true),
            bv("c", "1.0.0").dep("b", true),
        ],
    );
    let dev = device_running(&r, EnvContext::default(), &["c"]);
    let d = decide(&Operation::RestartBlock(b("a")), &dev, None).unwrap();
    let i = d.impact();
    assert_eq!(i.disturbed[&b("a")].reason, Reason::Restart);
    assert_eq!(i.disturbed[&b("b")].reason, Reason::DependencyRestart);
    assert_eq!(i.disturbed[&b("b")].because_of, Some(b("a")));
    assert_eq!(i.disturbed[&b("c")].because_of, Some(b("b")));
    assert_eq!(
        d.holders()
            .iter()
            .map(|h| (h.block.clone(), h.reason, h.because_of.clone()))
            .collect::<Vec<_>>(),
        vec![(b("c"), Reason::DependencyRestart, Some(b("b")))]
    );
}

#[test]
fn dependency_without_restart_flag_does_not_propagate() {
    let r = release(
        "r",
        vec![bv("a", "1.0.0"), bv("b", "1.0.0").dep("a", false)],
    );
    let dev = device_running(&r, EnvContext::default(), &["b"]);
    let d = decide(&Operation::StopBlock(b("a")), &dev, None).unwrap();
    assert!(d.proceeds());
    assert_eq!(disturbed(d.impact()), vec![("a".into(), Reason::Stop)]);
}

#[test]
fn diamond_dependencies_restart_each_block_once() {
    //   d depends on b and c; b and c depend on a.
    let r = release(
        "r",
        vec![
            bv("a", "1.0.0"),
            bv("b", "1.0.0").dep("a", true),
            bv("c", "1.0.0").dep("a", true),
            bv("d", "1.0.0").dep("b", true).dep("c", true),
        ],
    );
    let dev = device_running(&r, EnvContext::default(), &[]);
    let d = decide(&env_set(EnvLevel::Device, "X", "1", &["a"]), &dev, None).unwrap();
    let i = d.impact();
    assert_eq!(
        disturbed(i),
        vec![
            ("a".into(), Reason::EnvChange),
            ("b".into(), Reason::DependencyRestart),
            ("c".into(), Reason::DependencyRestart),
            ("d".into(), Reason::DependencyRestart),
        ]
    );
    assert_eq!(
        i.disturbed[&b("d")].because_of,
        Some(b("b")),
        "nearest, smallest name"
    );
}

#[test]
fn release_update_propagates_to_unchanged_dependents() {
    let r1 = release(
        "r1",
        vec![
            bv("a", "1.0.0"),
            bv("b", "1.0.0").dep("a", true),
            bv("c", "1.0.0"),
        ],
    );
    let dev = device_running(&r1, EnvContext::default(), &["b"]);
    let r2 = release(
        "r2",
        vec![
            bv("a", "1.1.0"),
            bv("b", "1.0.0").dep("a", true),
            bv("c", "1.0.0"),
        ],
    );
    let d = decide(&update_to(&dev, &r2), &dev, None).unwrap();
    assert_eq!(
        holders(&d),
        vec![("b".into(), Reason::DependencyRestart, false)]
    );
    assert_eq!(d.impact().notices.keys().collect::<Vec<_>>(), vec![&b("c")]);
}

#[test]
fn removing_a_dependency_restarts_its_dependents_under_the_old_graph() {
    // b depended on a (restart: true); r2 drops a, and b's new version no
    // longer depends on it but is otherwise identical.
    let r1 = release(
        "r1",
        vec![bv("a", "1.0.0"), bv("b", "1.0.0").dep("a", true)],
    );
    let dev = device_running(&r1, EnvContext::default(), &[]);
    let r2 = release("r2", vec![bv("b", "1.0.0")]);
    let d = decide(&update_to(&dev, &r2), &dev, None).unwrap();
    assert_eq!(
        disturbed(d.impact()),
        vec![
            ("a".into(), Reason::Stop),
            ("b".into(), Reason::DependencyRestart)
        ]
    );
}

#[test]
fn dependency_cycles_are_rejected_naming_the_cycle() {
    let rows: Vec<(&str, Vec<Bv>, Vec<&str>)> = vec![
        (
            "two blocks",
            vec![
                bv("a", "1.0.0").dep("b", true),
                bv("b", "1.0.0").dep("a", false),
            ],
            vec!["a", "b"],
        ),
        (
            "three blocks, entered mid-cycle",
            vec![
                bv("x", "1.0.0").dep("c", true),
                bv("c", "1.0.0").dep("d", true),
                bv("d", "1.0.0").dep("e", true),
                bv("e", "1.0.0").dep("c", true),
            ],
            vec!["c", "d", "e"],
        ),
    ];
    for (what, blocks, cycle) in rows {
        let err = Release::new(
            ReleaseId::new("r").unwrap(),
            FleetId::new("f").unwrap(),
            blocks.into_iter().map(Bv::arc).collect(),
            Env::new(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            ReleaseError::DependencyCycle {
                cycle: cycle.iter().map(|c| b(c)).collect()
            },
            "{what}"
        );
        let msg = err.to_string();
        let rendered = format!("{} -> {}", cycle.join(" -> "), cycle[0]);
        assert!(msg.contains(&rendered), "{what}: {msg}");
    }
}

#[test]
fn release_validation_rejects_unknown_dependencies_duplicates_and_empty() {
    let new = |blocks: Vec<Bv>| {
        Release::new(
            ReleaseId::new("r").unwrap(),
            FleetId::new("f").unwrap(),
            blocks.into_iter().map(Bv::arc).collect(),
            Env::new(),
        )
    };
    assert_eq!(
        new(vec![bv("a", "1.0.0").dep("ghost", true)]).unwrap_err(),
        ReleaseError::UnknownDependency {
            block: b("a"),
            dependency: b("ghost")
        }
    );
    assert_eq!(
        new(vec![bv("a", "1.0.0"), bv("a", "2.0.0")]).unwrap_err(),
        ReleaseError::DuplicateBlock { block: b("a") }
    );
    assert_eq!(new(vec![]).unwrap_err(), ReleaseError::Empty);
    assert!(matches!(
        new(vec![bv("a", "1.0.0").dep("a", true)]).unwrap_err(),
        ReleaseError::Block {
            source: BlockError::SelfDependency { .. },
            ..
        }
    ));
    assert!(matches!(
        new(vec![
            bv("a", "1.0.0").dep("b", true).dep("b", false),
            bv("b", "1.0.0")
        ])
        .unwrap_err(),
        ReleaseError::Block {
            source: BlockError::DuplicateDependency { .. },
            ..
        }
    ));
}

// ------------------------------------------------------------------ force

#[test]
fn scoped_force_overrides_only_the_named_locks() {
    let dev = device_running(&abc(), EnvContext::default(), &["a", "b"]);
    let force_a = Force::new([b("a")].into(), "inverter replaced on site").unwrap();
    // Reboot disturbs a, b, c: forcing a leaves b's holder blocking.
    let d = decide(&Operation::Reboot, &dev, Some(&force_a)).unwrap();
    assert_eq!(holders(&d), vec![("b".into(), Reason::Reboot, false)]);
    // Forcing both lets it proceed, listing what was overridden.
    let both = force_a.merge(&Force::new([b("b")].into(), "urgent").unwrap());
    match decide(&Operation::Reboot, &dev, Some(&both)).unwrap() {
        Decision::Proceed { forced, fence, .. } => {
            assert_eq!(forced, vec![b("a"), b("b")]);
            assert_eq!(fence.len(), 3);
            assert_eq!(fence[&b("a")], Generation(7));
            assert_eq!(fence[&b("c")], Generation(0));
        }
        other => panic!("expected to proceed: {other:?}"),
    }
    assert_eq!(both.reason(), "inverter replaced on site; urgent");
}

#[test]
fn force_on_an_unlocked_block_is_not_reported_as_forced() {
    let dev = device_running(&abc(), EnvContext::default(), &[]);
    let f = Force::new([b("a")].into(), "why not").unwrap();
    match decide(&Operation::Reboot, &dev, Some(&f)).unwrap() {
        Decision::Proceed { forced, .. } => assert!(forced.is_empty()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn force_needs_blocks_and_a_reason() {
    assert_eq!(Force::new(BTreeSet::new(), "r"), Err(ForceError::NoBlocks));
    assert_eq!(Force::new([b("a")].into(), "  "), Err(ForceError::NoReason));
}

#[test]
fn lock_reports_never_go_back_in_generation() {
    let mut dev = device_running(&abc(), EnvContext::default(), &[]);
    let at = |held, g| LockState {
        held,
        generation: Generation(g),
        since: Timestamp(g as i64),
    };
    assert!(dev.apply_lock_report(b("a"), at(true, 5)));
    assert!(
        !dev.apply_lock_report(b("a"), at(false, 4)),
        "older report dropped"
    );
    assert!(
        !dev.apply_lock_report(b("a"), at(false, 5)),
        "same generation dropped"
    );
    assert!(dev.lock(&b("a")).held);
    assert!(dev.apply_lock_report(b("a"), at(false, 6)));
    assert!(!dev.lock(&b("a")).held);
}

// ------------------------------------------------------- property tests

/// A random device: up to 8 blocks with random acyclic `depends_on` edges
/// (only on lower-numbered blocks), random locks and random config.
#[derive(Debug, Clone)]
struct World {
    blocks: Vec<WorldBlock>,
}

/// (image seed, depends_on as (index, restart), locked)
type WorldBlock = (u8, Vec<(usize, bool)>, bool);

fn world() -> impl proptest::strategy::Strategy<Value = World> {
    (1usize..8).prop_flat_map(|n| {
        let block = |i: usize| {
            (
                any::<u8>(),
                proptest::collection::vec((0..i.max(1), any::<bool>()), 0..=i.min(3)),
                any::<bool>(),
            )
                .prop_map(move |(seed, deps, locked)| {
                    let deps = if i == 0 { vec![] } else { deps };
                    let mut seen = BTreeSet::new();
                    let deps = deps.into_iter().filter(|(d, _)| seen.insert(*d)).collect();
                    (seed, deps, locked)
                })
        };
        (0..n)
            .map(block)
            .collect::<Vec<_>>()
            .prop_map(|blocks| World { blocks })
    })
}

fn name(i: usize) -> String {
    format!("b{i}")
}

fn build(w: &World, extra_edge: Option<(usize, usize)>) -> Arc<Release> {
    let blocks = w
        .blocks
        .iter()
        .enumerate()
        .map(|(i, (seed, deps, _))| {
            let mut v = bv(&name(i), "1.0.0").image(&format!("{seed}"));
            for (d, restart) in deps {
                v = v.dep(&name(*d), *restart);
            }
            if let Some((from, to)) = extra_edge
                && from == i
                && !deps.iter().any(|(d, _)| *d == to)
            {
                v = v.dep(&name(to), true);
            }
            v
        })
        .collect();
    release("prop", blocks)
}

fn ops(w: &World) -> Vec<Operation> {
    let n = w.blocks.len();
    let mut v = vec![
        Operation::Reboot,
        Operation::Shutdown,
        Operation::OsUpdate {
            version: "9".into(),
        },
    ];
    for i in 0..n {
        v.push(Operation::RestartBlock(b(&name(i))));
        v.push(Operation::StopBlock(b(&name(i))));
        v.push(env_set(EnvLevel::Fleet, "P", "1", &[&name(i)]));
    }
    v
}

fn locked_names(w: &World) -> Vec<String> {
    w.blocks
        .iter()
        .enumerate()
        .filter(|(_, b)| b.2)
        .map(|(i, _)| name(i))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Nothing disturbed, locked and not forced ever proceeds; and a blocked
    /// decision asks exactly those holders.
    #[test]
    fn nothing_disturbed_locked_and_unforced_proceeds(w in world(), force_mask in any::<u8>()) {
        let r = build(&w, None);
        let locked = locked_names(&w);
        let lref: Vec<&str> = locked.iter().map(String::as_str).collect();
        let dev = device_running(&r, EnvContext::default(), &lref);
        let forced: BTreeSet<BlockName> = (0..w.blocks.len()).filter(|i| force_mask & (1 << i) != 0).map(|i| b(&name(i))).collect();
        let force = Force::new(forced.clone(), "prop").ok();
        for op in ops(&w) {
            let d = decide(&op, &dev, force.as_ref()).unwrap();
            let must_ask: Vec<BlockName> = d.impact().disturbed.keys()
                .filter(|k| dev.lock(k).held && !force.as_ref().is_some_and(|f| f.overrides(k)))
                .cloned().collect();
            let asked: Vec<BlockName> = d.holders().iter().map(|h| h.block.clone()).collect();
            prop_assert_eq!(&asked, &must_ask);
            prop_assert_eq!(d.proceeds(), must_ask.is_empty());
        }
    }

    /// The lock of a block the operation does not disturb never changes the decision.
    #[test]
    fn unimpacted_locks_never_change_a_decision(w in world()) {
        let r = build(&w, None);
        let unlocked = device_running(&r, EnvContext::default(), &[]);
        for op in ops(&w) {
            let i = lockstep::domain::impact(&op, &unlocked).unwrap();
            let bystanders: Vec<String> = (0..w.blocks.len()).map(name).filter(|n| !i.disturbed.contains_key(&b(n))).collect();
            let refs: Vec<&str> = bystanders.iter().map(String::as_str).collect();
            let locked = device_running(&r, EnvContext::default(), &refs);
            let d = decide(&op, &locked, None).unwrap();
            prop_assert!(d.proceeds(), "{}: bystander locks {:?} blocked it", op.kind(), bystanders);
        }
    }

    /// Adding a dependency edge never shrinks an impact set.
    #[test]
    fn adding_a_dependency_edge_never_shrinks_impact(w in world(), from in 0usize..8, to in 0usize..8) {
        let n = w.blocks.len();
        let (from, to) = (from % n, to % n);
        prop_assume!(to < from); // keeps the graph acyclic
        let r0 = build(&w, None);
        let r1 = build(&w, Some((from, to)));
        let d0 = device_running(&r0, EnvContext::default(), &[]);
        let d1 = device_running(&r1, EnvContext::default(), &[]);
        for op in ops(&w) {
            let i0: BTreeSet<BlockName> = lockstep::domain::impact(&op, &d0).unwrap().disturbed.into_keys().collect();
            let i1: BTreeSet<BlockName> = lockstep::domain::impact(&op, &d1).unwrap().disturbed.into_keys().collect();
            prop_assert!(i0.is_subset(&i1), "{}: {:?} not within {:?}", op.kind(), i0, i1);
        }
    }

    /// A release update disturbs exactly the blocks whose image changed, those
    /// removed, and their restart-dependents; the rest get UPDATE_NO_RESTART.
    #[test]
    fn release_update_disturbs_exactly_changed_blocks_and_dependents(w in world(), change_mask in any::<u8>()) {
        let r0 = build(&w, None);
        let mut w1 = w.clone();
        for (i, blk) in w1.blocks.iter_mut().enumerate() {
            if change_mask & (1 << i) != 0 { blk.0 = blk.0.wrapping_add(1); }
        }
        let r1 = build(&w1, None);
        let dev = device_running(&r0, EnvContext::default(), &[]);
        let i = lockstep::domain::impact(&update_to(&dev, &r1), &dev).unwrap();
        // expected: closure of changed blocks over restart edges
        let mut expect: BTreeSet<usize> = (0..w.blocks.len()).filter(|i| change_mask & (1 << i) != 0).collect();
        loop {
            let before = expect.len();
            for (i, blk) in w.blocks.iter().enumerate() {
                if blk.1.iter().any(|(d, restart)| *restart && expect.contains(d)) { expect.insert(i); }
            }
            if expect.len() == before { break; }
        }
        let got: BTreeSet<usize> = i.disturbed.keys().map(|k| k.as_str()[1..].parse().unwrap()).collect();
        prop_assert_eq!(&got, &expect);
        prop_assert_eq!(i.notices.len() + i.disturbed.len(), w.blocks.len());
    }
}

#[test]
fn an_empty_device_accepts_anything() {
    let r = abc();
    let mut dev = device_running(&r, EnvContext::default(), &[]);
    dev.blocks = BTreeMap::new();
    for op in [
        Operation::Reboot,
        Operation::OsUpdate {
            version: "1".into(),
        },
        update_to(&dev, &r),
    ] {
        let d = decide(&op, &dev, None).unwrap();
        assert!(d.proceeds());
        assert!(d.impact().disturbed.is_empty());
    }
}

#[test]
fn applying_stored_env_restarts_only_blocks_whose_env_differs() {
    let r = release(
        "r",
        vec![
            bv("a", "1.0.0"),
            bv("b", "1.0.0").dep("a", true),
            bv("c", "1.0.0"),
        ],
    );
    let dev = device_running(&r, EnvContext::default(), &["b"]);
    let mut ctx = EnvContext::default();
    ctx.fleet
        .set(&EnvVar {
            name: EnvName::new("X").unwrap(),
            value: "1".into(),
            scope: EnvScope::Blocks([b("a")].into()),
        })
        .unwrap();
    let op = Operation::ApplyEnv {
        target: Arc::new(r.resolve(&ctx)),
    };
    let d = decide(&op, &dev, None).unwrap();
    assert_eq!(
        disturbed(d.impact()),
        vec![
            ("a".into(), Reason::EnvChange),
            ("b".into(), Reason::DependencyRestart)
        ]
    );
    assert_eq!(
        holders(&d),
        vec![("b".into(), Reason::DependencyRestart, false)]
    );
    // Nothing stored differs from what runs: nothing to do.
    let same = Operation::ApplyEnv {
        target: Arc::new(r.resolve(&EnvContext::default())),
    };
    let d = decide(&same, &dev, None).unwrap();
    assert!(d.proceeds() && d.impact().disturbed.is_empty());
}
