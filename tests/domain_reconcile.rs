//! The reconciler, table-driven: how operations on one device interact (the
//! conflict rule and the sequences users hit), what a plan sends, withdraws
//! and records, and property tests: an operation whose own gate passes and
//! that conflicts with nothing ahead is dispatched; a plan never dispatches
//! two operations; reconciling again with no new facts sends nothing new.

use std::collections::BTreeMap;
use std::sync::Arc;

use lockstep::domain::reconcile::{
    self, ApplyAction, ApprovalWrite, DeviceFacts, Footprint, Input, OpFacts, OpWrite, OpenRequest,
    Plan, PlanAudit, PlannedIntent, conflicts,
};
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

fn bv(name: &str, version: &str) -> Arc<BlockVersion> {
    Arc::new(BlockVersion {
        name: b(name),
        version: version.parse().unwrap(),
        image_digest: digest(&format!("{name}@{version}")),
        config: BlockConfig::default(),
        env: Env::new(),
        depends_on: vec![],
        update_strategy: UpdateStrategy::DownloadThenKill,
    })
}

fn release(id: &str, blocks: Vec<Arc<BlockVersion>>) -> Arc<Release> {
    Arc::new(
        Release::new(
            ReleaseId::new(id).unwrap(),
            FleetId::new("site").unwrap(),
            blocks,
            Env::new(),
        )
        .unwrap(),
    )
}

/// r1: a, b, c at 1.0.0.
fn r1() -> Arc<Release> {
    release(
        "r1",
        vec![bv("a", "1.0.0"), bv("b", "1.0.0"), bv("c", "1.0.0")],
    )
}

/// r2: like r1 but b at 2.0.0 (a and c unchanged).
fn r2_b_only() -> Arc<Release> {
    release(
        "r2",
        vec![bv("a", "1.0.0"), bv("b", "2.0.0"), bv("c", "1.0.0")],
    )
}

/// r3: like r1 but a at 2.0.0.
fn r3_a() -> Arc<Release> {
    release(
        "r3",
        vec![bv("a", "2.0.0"), bv("b", "1.0.0"), bv("c", "1.0.0")],
    )
}

fn env_var(name: &str, value: &str, blocks: &[&str]) -> EnvVar {
    EnvVar {
        name: EnvName::new(name).unwrap(),
        value: value.into(),
        scope: if blocks.is_empty() {
            EnvScope::Device
        } else {
            EnvScope::Blocks(blocks.iter().map(|x| b(x)).collect())
        },
    }
}

/// A device in the test: what it runs, its locks, its stored env.
struct Dev {
    running: Arc<Release>,
    /// The env as stored now (with pending changes).
    desired: EnvContext,
    /// The env it runs with (what was applied).
    applied: EnvContext,
    locked: Vec<&'static str>,
    online: bool,
    status: DeviceStatus,
}

impl Dev {
    fn new() -> Self {
        Self {
            running: r1(),
            desired: EnvContext::default(),
            applied: EnvContext::default(),
            locked: vec![],
            online: true,
            status: DeviceStatus::InSync,
        }
    }
    fn locked(mut self, blocks: &[&'static str]) -> Self {
        self.locked = blocks.to_vec();
        self
    }
    /// An operator set `var` (stored, not applied yet).
    fn env_pending(mut self, var: EnvVar) -> Self {
        self.desired.device.set(&var).unwrap();
        self
    }
    fn facts(&self) -> DeviceFacts {
        let target = self.running.resolve(&self.applied);
        let locks = self
            .locked
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
        let applied_env = self
            .running
            .blocks()
            .keys()
            .map(|n| (n.clone(), self.applied.operator_env(n)))
            .collect();
        DeviceFacts {
            id: DeviceId::new("dev-1").unwrap(),
            fleet: FleetId::new("site").unwrap(),
            online: self.online,
            status: self.status,
            state: Some(DeviceState {
                id: DeviceId::new("dev-1").unwrap(),
                current_release: Some(self.running.id().clone()),
                os_version: Some("6.1".into()),
                env: Arc::new(self.desired.clone()),
                blocks: target.as_running(),
                locks,
            }),
            current: Some(Arc::clone(&self.running)),
            desired_env: self.desired.clone(),
            applied_env,
            reported_at: Timestamp(0),
            last_apply_answer_at: None,
        }
    }
}

fn op(id: i64, spec: OperationSpec) -> OperationRecord {
    OperationRecord {
        id: OperationId(id),
        device: DeviceId::new("dev-1").unwrap(),
        spec,
        force: None,
        status: OpStatus::Pending,
        progress: OpProgress::default(),
        created: Timestamp(id),
        updated: Timestamp(id),
        generation: 0,
    }
}

fn facts(record: OperationRecord, releases: &[Arc<Release>]) -> OpFacts {
    let release = match &record.spec {
        OperationSpec::AssignRelease(id) => releases.iter().find(|r| r.id() == id).cloned(),
        _ => None,
    };
    OpFacts {
        record,
        release,
        approval: None,
        answer: None,
        deferrals: BTreeMap::new(),
    }
}

fn assign(id: i64, r: &Arc<Release>) -> OperationRecord {
    op(id, OperationSpec::AssignRelease(r.id().clone()))
}

fn env_op(id: i64, blocks: &[&str]) -> OperationRecord {
    op(
        id,
        OperationSpec::ApplyEnv(if blocks.is_empty() {
            EnvTarget::AllBlocks
        } else {
            EnvTarget::Blocks(blocks.iter().map(|x| b(x)).collect())
        }),
    )
}

/// A policy with no windows or approvals needed.
fn open_policy() -> FleetPolicy {
    FleetPolicy {
        needs_window: Default::default(),
        needs_approval: Default::default(),
        ..FleetPolicy::default()
    }
}

const NOW: Timestamp = Timestamp(1_000_000);

fn run(dev: &Dev, ops: &[OpFacts], policy: &FleetPolicy) -> Plan {
    run_with(dev, ops, policy, &[], &[])
}

fn run_with(
    dev: &Dev,
    ops: &[OpFacts],
    policy: &FleetPolicy,
    windows: &[WindowRule],
    open: &[OpenRequest],
) -> Plan {
    let device = dev.facts();
    reconcile::reconcile(&Input {
        now: NOW,
        device: &device,
        ops,
        open_requests: open,
        policy,
        windows,
    })
}

/// Each operation's status after the plan (unchanged ones as they were).
fn statuses(ops: &[OpFacts], plan: &Plan) -> Vec<(i64, OpStatus)> {
    ops.iter()
        .map(|o| {
            let next = plan
                .ops
                .iter()
                .find(|w| w.next.id == o.record.id)
                .map_or(o.record.status, |w| w.next.status);
            (o.record.id.0, next)
        })
        .collect()
}

fn behind(plan: &Plan, id: i64) -> Option<i64> {
    plan.ops
        .iter()
        .find(|w| w.next.id.0 == id)
        .and_then(|w| w.next.progress.behind)
        .map(|o| o.0)
}

fn applies(plan: &Plan) -> Vec<i64> {
    plan.intents
        .iter()
        .filter_map(|i| match i {
            PlannedIntent::Apply { operation, .. } => Some(operation.0),
            _ => None,
        })
        .collect()
}

fn requests(plan: &Plan) -> Vec<(i64, String, Reason)> {
    plan.intents
        .iter()
        .filter_map(|i| match i {
            PlannedIntent::ReleaseRequest {
                operation, request, ..
            } => Some((operation.0, request.block.to_string(), request.reason)),
            _ => None,
        })
        .collect()
}

/// Applies a plan's operation writes, as the store would.
fn after(ops: &[OpFacts], plan: &Plan) -> Vec<OpFacts> {
    ops.iter()
        .map(|o| {
            let mut o = o.clone();
            if let Some(w) = plan.ops.iter().find(|w| w.next.id == o.record.id) {
                o.record = w.next.clone();
                o.record.generation += 1;
            }
            o
        })
        .filter(|o| o.record.status.is_active())
        .collect()
}

// ------------------------------------------------------- the conflict rule

#[test]
fn conflict_rule_table() {
    let blocks = |bs: &[&str]| Footprint::Blocks(bs.iter().map(|x| b(x)).collect());
    let rel = OperationSpec::AssignRelease(ReleaseId::new("r").unwrap());
    let env =
        |bs: &[&str]| OperationSpec::ApplyEnv(EnvTarget::Blocks(bs.iter().map(|x| b(x)).collect()));
    let restart = |x: &str| OperationSpec::RestartBlock(b(x));
    type Row = (
        &'static str,
        (OperationSpec, Footprint),
        (OperationSpec, Footprint),
        bool,
    );
    let rows: Vec<Row> = vec![
        (
            "env for a, then env for b: independent",
            (env(&["a"]), blocks(&["a"])),
            (env(&["b"]), blocks(&["b"])),
            false,
        ),
        (
            "env for a, then env for a and b: the later waits",
            (env(&["a"]), blocks(&["a"])),
            (env(&["a", "b"]), blocks(&["a", "b"])),
            true,
        ),
        (
            "env for a, then a release that leaves a alone",
            (env(&["a"]), blocks(&["a"])),
            (rel.clone(), blocks(&["b"])),
            false,
        ),
        (
            "env for a, then a release that changes a",
            (env(&["a"]), blocks(&["a"])),
            (rel.clone(), blocks(&["a", "b"])),
            true,
        ),
        (
            "a release, then another: always in order",
            (rel.clone(), blocks(&["a"])),
            (rel.clone(), blocks(&["b"])),
            true,
        ),
        (
            "a release with nothing to change, then another: still in order",
            (rel.clone(), blocks(&[])),
            (rel.clone(), blocks(&[])),
            true,
        ),
        (
            "reboot, then restart b",
            (OperationSpec::Reboot, Footprint::Device),
            (restart("b"), blocks(&["b"])),
            false,
        ),
        (
            "OS update, then env for b",
            (OperationSpec::OsUpdate("2".into()), Footprint::Device),
            (env(&["b"]), blocks(&["b"])),
            false,
        ),
        (
            "restart b, then reboot",
            (restart("b"), blocks(&["b"])),
            (OperationSpec::Reboot, Footprint::Device),
            false,
        ),
        (
            "reboot, then shutdown: in order",
            (OperationSpec::Reboot, Footprint::Device),
            (OperationSpec::Shutdown, Footprint::Device),
            true,
        ),
        (
            "restart a, then restart a: in order",
            (restart("a"), blocks(&["a"])),
            (restart("a"), blocks(&["a"])),
            true,
        ),
        (
            "restart a, then restart c",
            (restart("a"), blocks(&["a"])),
            (restart("c"), blocks(&["c"])),
            false,
        ),
        (
            "stop a, then a release that changes a",
            (OperationSpec::StopBlock(b("a")), blocks(&["a"])),
            (rel.clone(), blocks(&["a"])),
            true,
        ),
    ];
    for (name, (es, ef), (ls, lf), want) in rows {
        assert_eq!(reconcile::conflicts((&es, &ef), (&ls, &lf)), want, "{name}");
    }
}

// ------------------------------------------ the sequences users reported

#[test]
fn env_for_a_waits_on_as_lock_while_env_for_b_applies() {
    let dev = Dev::new()
        .locked(&["a"])
        .env_pending(env_var("MODE", "fast", &["a"]))
        .env_pending(env_var("LEVEL", "2", &["b"]));
    let ops = vec![facts(env_op(1, &["a"]), &[]), facts(env_op(2, &["b"]), &[])];
    let plan = run(&dev, &ops, &open_policy());
    assert_eq!(
        statuses(&ops, &plan),
        vec![(1, OpStatus::WaitingLock), (2, OpStatus::Applying)]
    );
    assert_eq!(requests(&plan), vec![(1, "a".into(), Reason::EnvChange)]);
    assert_eq!(applies(&plan), vec![2]);
    // b's apply restarts b alone, and records only b's new env.
    let applied = plan.ops.iter().find(|w| w.next.id.0 == 2).unwrap();
    assert_eq!(
        applied.next.progress.applied_env.keys().collect::<Vec<_>>(),
        vec![&b("b")]
    );
    let disturbed: Vec<String> = plan
        .intents
        .iter()
        .find_map(|i| match i {
            PlannedIntent::Apply { disturbed, .. } => {
                Some(disturbed.iter().map(|(b, _)| b.to_string()).collect())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(disturbed, vec!["b".to_owned()]);
    assert_eq!(plan.device_status, Some(DeviceStatus::Applying));
}

#[test]
fn a_reboot_waiting_on_a_lets_a_restart_of_b_apply() {
    let dev = Dev::new().locked(&["a"]);
    let ops = vec![
        facts(op(1, OperationSpec::Reboot), &[]),
        facts(op(2, OperationSpec::RestartBlock(b("b"))), &[]),
    ];
    let plan = run(&dev, &ops, &open_policy());
    assert_eq!(
        statuses(&ops, &plan),
        vec![(1, OpStatus::WaitingLock), (2, OpStatus::Applying)]
    );
    assert_eq!(requests(&plan), vec![(1, "a".into(), Reason::Reboot)]);
    assert_eq!(applies(&plan), vec![2]);
}

#[test]
fn a_reboot_waiting_for_a_window_lets_a_restart_of_b_apply() {
    let dev = Dev::new();
    let policy = FleetPolicy::default(); // reboots need a window
    let ops = vec![
        facts(op(1, OperationSpec::Reboot), &[]),
        facts(op(2, OperationSpec::RestartBlock(b("b"))), &[]),
    ];
    let plan = run(&dev, &ops, &policy);
    assert_eq!(
        statuses(&ops, &plan),
        vec![(1, OpStatus::WaitingWindow), (2, OpStatus::Applying)]
    );
    assert!(
        plan.events
            .iter()
            .any(|(op, k)| op.0 == 1 && matches!(k, EventKind::WaitingWindow { .. })),
        "{:?}",
        plan.events
    );
    // Told once: the same wait again is not news.
    let again = run(&dev, &after(&ops, &plan), &policy);
    assert!(again.events.is_empty(), "{:?}", again.events);
    assert!(again.ops.is_empty(), "{:?}", again.ops);
}

#[test]
fn an_os_update_waiting_for_approval_lets_a_restart_of_c_and_env_for_b_go() {
    let dev = Dev::new().env_pending(env_var("LEVEL", "2", &["b"]));
    let policy = FleetPolicy::default(); // OS updates need an approval
    let ops = vec![
        facts(op(1, OperationSpec::OsUpdate("7".into())), &[]),
        facts(op(2, OperationSpec::RestartBlock(b("c"))), &[]),
        facts(env_op(3, &["b"]), &[]),
    ];
    let plan = run(&dev, &ops, &policy);
    assert_eq!(
        statuses(&ops, &plan),
        vec![
            (1, OpStatus::WaitingApproval),
            (2, OpStatus::Applying),
            // Ready, but one apply at a time: queued behind the restart.
            (3, OpStatus::Queued),
        ]
    );
    assert_eq!(behind(&plan, 3), Some(2));
    assert!(matches!(
        plan.approvals.as_slice(),
        [reconcile::ApprovalWrite::Request { operation }] if operation.0 == 1
    ));
    // Once the restart applied, the env change goes.
    let mut next = after(&ops, &plan);
    next[1].answer = Some(ApplyOutcome::Applied);
    let plan = run(&dev, &next, &policy);
    assert_eq!(
        statuses(&next, &plan),
        vec![
            (1, OpStatus::WaitingApproval),
            (2, OpStatus::Done),
            (3, OpStatus::Applying),
        ]
    );
}

#[test]
fn a_release_with_a_unchanged_applies_while_env_for_a_waits_and_keeps_as_env() {
    let dev = Dev::new()
        .locked(&["a"])
        .env_pending(env_var("MODE", "fast", &["a"]));
    let r2 = r2_b_only();
    let ops = vec![
        facts(env_op(1, &["a"]), &[]),
        facts(assign(2, &r2), &[Arc::clone(&r2)]),
    ];
    let plan = run(&dev, &ops, &open_policy());
    assert_eq!(
        statuses(&ops, &plan),
        vec![(1, OpStatus::WaitingLock), (2, OpStatus::Applying)]
    );
    let apply = plan
        .intents
        .iter()
        .find_map(|i| match i {
            PlannedIntent::Apply {
                action, disturbed, ..
            } => Some((action.clone(), disturbed.clone())),
            _ => None,
        })
        .unwrap();
    let (ApplyAction::Release { blocks, .. }, disturbed) = apply else {
        panic!("a release apply")
    };
    // Only b restarts; a is told, never disturbed, and its env in the
    // release's target is the one it runs with (no pending MODE).
    assert_eq!(
        disturbed
            .iter()
            .map(|(b, _)| b.to_string())
            .collect::<Vec<_>>(),
        vec!["b".to_owned()]
    );
    let a = blocks.iter().find(|t| t.spec.name == b("a")).unwrap();
    assert!(
        !a.env.contains_key(&EnvName::new("MODE").unwrap()),
        "{:?}",
        a.env
    );
    assert!(plan.intents.iter().any(|i| matches!(
        i,
        PlannedIntent::Notice { block, reason: Reason::UpdateNoRestart, .. } if *block == b("a")
    )));
}

#[test]
fn a_release_that_changes_a_queues_behind_env_for_a() {
    let dev = Dev::new()
        .locked(&["a"])
        .env_pending(env_var("MODE", "fast", &["a"]));
    let r3 = r3_a();
    let ops = vec![
        facts(env_op(1, &["a"]), &[]),
        facts(assign(2, &r3), &[Arc::clone(&r3)]),
    ];
    let plan = run(&dev, &ops, &open_policy());
    assert_eq!(
        statuses(&ops, &plan),
        vec![(1, OpStatus::WaitingLock), (2, OpStatus::Queued)]
    );
    assert_eq!(behind(&plan, 2), Some(1));
    assert_eq!(requests(&plan), vec![(1, "a".into(), Reason::EnvChange)]);
    assert!(plan.events.iter().any(|(o, e)| o.0 == 2
        && *e
            == EventKind::Queued {
                behind: OperationId(1)
            }));
}

#[test]
fn a_newer_release_supersedes_one_not_started_and_its_requests_are_withdrawn() {
    let dev = Dev::new().locked(&["a"]);
    let (r3, r2) = (r3_a(), r2_b_only());
    let mut waiting = assign(1, &r3);
    waiting.status = OpStatus::WaitingLock;
    let ops = vec![
        facts(waiting, &[Arc::clone(&r3)]),
        facts(assign(2, &r2), &[Arc::clone(&r2)]),
    ];
    let open = [OpenRequest {
        operation: OperationId(1),
        seq: IntentSeq(4),
    }];
    let plan = run_with(&dev, &ops, &open_policy(), &[], &open);
    assert_eq!(
        statuses(&ops, &plan),
        vec![(1, OpStatus::Superseded), (2, OpStatus::Applying)]
    );
    assert!(plan.intents.contains(&PlannedIntent::Withdraw {
        operation: OperationId(1),
        seq: IntentSeq(4)
    }));
}

#[test]
fn only_a_newer_release_supersedes_a_release_not_started() {
    // r3 changes a, which is held: the release waits. A later restart of b
    // (not a release) supersedes nothing and goes ahead.
    let dev = Dev::new().locked(&["a"]);
    let r3 = r3_a();
    let mut waiting = assign(1, &r3);
    waiting.status = OpStatus::WaitingLock;
    let ops = vec![
        facts(waiting, &[Arc::clone(&r3)]),
        facts(op(2, OperationSpec::RestartBlock(b("b"))), &[]),
    ];
    let plan = run(&dev, &ops, &open_policy());
    assert_eq!(
        statuses(&ops, &plan),
        vec![(1, OpStatus::WaitingLock), (2, OpStatus::Applying)]
    );
    assert!(
        !plan
            .events
            .iter()
            .any(|(_, k)| matches!(k, EventKind::Cancelled { .. })),
        "{:?}",
        plan.events
    );
}

#[test]
fn an_impossible_operation_fails_and_the_device_shows_it() {
    // x is not running: restarting it can never happen. It fails at once,
    // and a restart of b behind it still goes.
    let dev = Dev::new();
    let ops = vec![
        facts(op(1, OperationSpec::RestartBlock(b("x"))), &[]),
        facts(op(2, OperationSpec::RestartBlock(b("b"))), &[]),
    ];
    let plan = run(&dev, &ops, &open_policy());
    assert_eq!(
        statuses(&ops, &plan),
        vec![(1, OpStatus::Failed), (2, OpStatus::Applying)]
    );
    // What is applying is what the device is doing; alone, the failure shows.
    assert_eq!(plan.device_status, Some(DeviceStatus::Applying));
    let plan = run(&dev, &ops[..1], &open_policy());
    assert_eq!(statuses(&ops[..1], &plan), vec![(1, OpStatus::Failed)]);
    assert_eq!(plan.device_status, Some(DeviceStatus::Failed));
}

#[test]
fn an_apply_that_lands_the_env_already_recorded_writes_no_env() {
    let dev = Dev::new();
    let mut applying = env_op(1, &["b"]);
    applying.status = OpStatus::Applying;
    // b runs with no operator env, and that is what landed again.
    applying.progress.applied_env = [(b("b"), Env::new())].into();
    let mut f = facts(applying, &[]);
    f.answer = Some(ApplyOutcome::Applied);
    let plan = run(&dev, std::slice::from_ref(&f), &open_policy());
    assert_eq!(statuses(&[f], &plan), vec![(1, OpStatus::Done)]);
    assert_eq!(plan.applied_env, None);
}

fn approved(op: i64, start: i64, end: i64) -> Approval {
    Approval {
        id: 9,
        operation: OperationId(op),
        status: ApprovalStatus::Approved,
        occurrence: Some(Occurrence {
            start: Timestamp(start),
            end: Timestamp(end),
        }),
        decided_by: Some("customer".into()),
        message: None,
    }
}

#[test]
fn an_approved_occurrence_wakes_the_device_when_it_opens_and_when_it_closes() {
    let dev = Dev::new();
    let policy = FleetPolicy::default(); // OS updates need an approval
    let n = NOW.0;
    type Row = (&'static str, i64, i64, OpStatus, i64);
    let rows: Vec<Row> = vec![
        (
            "later",
            n + 1_000,
            n + 5_000,
            OpStatus::WaitingWindow,
            n + 1_000,
        ),
        (
            "open now",
            n - 1_000,
            n + 5_000,
            OpStatus::Applying,
            n + 5_000,
        ),
        (
            "opening this instant",
            n,
            n + 5_000,
            OpStatus::Applying,
            n + 5_000,
        ),
    ];
    for (what, start, end, want, wake) in rows {
        let mut f = facts(op(1, OperationSpec::OsUpdate("7".into())), &[]);
        f.approval = Some(approved(1, start, end));
        let plan = run(&dev, std::slice::from_ref(&f), &policy);
        assert_eq!(statuses(&[f], &plan), vec![(1, want)], "{what}");
        assert_eq!(plan.wake_at, Some(Timestamp(wake)), "{what}");
    }
}

#[test]
fn an_operation_with_an_approval_asked_waits_for_it() {
    let dev = Dev::new();
    let mut f = facts(op(1, OperationSpec::OsUpdate("7".into())), &[]);
    f.approval = Some(Approval {
        status: ApprovalStatus::Requested,
        occurrence: None,
        decided_by: None,
        ..approved(1, 0, 0)
    });
    let plan = run(&dev, std::slice::from_ref(&f), &FleetPolicy::default());
    assert_eq!(statuses(&[f], &plan), vec![(1, OpStatus::WaitingApproval)]);
    assert!(
        plan.approvals.is_empty(),
        "asked once: {:?}",
        plan.approvals
    );
}

#[test]
fn a_queued_operation_whose_blocker_is_gone_waits_plainly_for_an_offline_device() {
    let mut dev = Dev::new();
    dev.online = false;
    let mut queued = op(2, OperationSpec::RestartBlock(b("b")));
    queued.status = OpStatus::Queued;
    queued.progress.behind = Some(OperationId(1));
    let f = facts(queued, &[]);
    let plan = run(&dev, std::slice::from_ref(&f), &open_policy());
    assert_eq!(statuses(&[f], &plan), vec![(2, OpStatus::Pending)]);
    assert_eq!(behind(&plan, 2), None);
    assert!(applies(&plan).is_empty());
}

/// r4: like r1 but a and b at 2.0.0.
fn r4_ab() -> Arc<Release> {
    release(
        "r4",
        vec![bv("a", "2.0.0"), bv("b", "2.0.0"), bv("c", "1.0.0")],
    )
}

#[test]
fn partial_releases_update_what_is_not_held_back_and_only_that() {
    let dev = Dev::new().locked(&["a"]);
    let policy = FleetPolicy {
        partial_releases: true,
        ..open_policy()
    };
    // a is held: b (also changed) goes now, a waits for its holder.
    let r4 = r4_ab();
    let ops = vec![facts(assign(1, &r4), &[Arc::clone(&r4)])];
    let plan = run(&dev, &ops, &policy);
    assert_eq!(statuses(&ops, &plan), vec![(1, OpStatus::Applying)]);
    assert!(plan.ops[0].next.progress.partial_in_flight);
    let disturbed: Vec<String> = plan
        .intents
        .iter()
        .filter_map(|i| match i {
            PlannedIntent::Apply { disturbed, .. } => Some(
                disturbed
                    .iter()
                    .map(|(b, _)| b.to_string())
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(disturbed, vec!["b".to_owned()]);
    // Only what lands now records its env; a keeps the env it runs with.
    assert_eq!(
        plan.ops[0]
            .next
            .progress
            .applied_env
            .keys()
            .collect::<Vec<_>>(),
        vec![&b("b")]
    );
    assert!(
        !plan.intents.iter().any(|i| matches!(
            i,
            PlannedIntent::Notice { block, .. } if block.as_str() == "a"
        )),
        "a is held back, not left untouched: {:?}",
        plan.intents
    );
    // Only a changes and a is held: nothing to update partially; it waits.
    let r3 = r3_a();
    let ops = vec![facts(assign(1, &r3), &[Arc::clone(&r3)])];
    let plan = run(&dev, &ops, &policy);
    assert_eq!(statuses(&ops, &plan), vec![(1, OpStatus::WaitingLock)]);
    assert!(applies(&plan).is_empty());
    assert!(plan.ops.iter().all(|w| !w.next.progress.partial_in_flight));
}

#[test]
fn a_queued_operation_is_told_once_what_it_waits_for() {
    // A release for a (pending) and a restart of a already applying: the
    // release is queued behind the apply in flight, and saying so again on
    // the next reconciliation is not news.
    let dev = Dev::new();
    let r3 = r3_a();
    let mut applying = op(2, OperationSpec::RestartBlock(b("a")));
    applying.status = OpStatus::Applying;
    let ops = vec![
        facts(assign(1, &r3), &[Arc::clone(&r3)]),
        facts(applying, &[]),
    ];
    let plan = run(&dev, &ops, &open_policy());
    assert_eq!(behind(&plan, 1), Some(2));
    assert_eq!(
        plan.events,
        vec![(
            OperationId(1),
            EventKind::Queued {
                behind: OperationId(2)
            }
        )]
    );
    let again = run(&dev, &after(&ops, &plan), &open_policy());
    assert!(again.events.is_empty(), "{:?}", again.events);
    assert!(again.ops.is_empty(), "{:?}", again.ops);
}

#[test]
fn a_holder_set_is_announced_when_it_changes_and_only_then() {
    let blocked = |plan: &Plan| -> Vec<Vec<String>> {
        plan.events
            .iter()
            .filter_map(|(_, k)| match k {
                EventKind::BlockedByLock { holders } => Some(holders.clone()),
                _ => None,
            })
            .collect()
    };
    // A reboot disturbs every block: a is held.
    let dev = Dev::new().locked(&["a"]);
    let ops = vec![facts(op(1, OperationSpec::Reboot), &[])];
    let plan = run(&dev, &ops, &open_policy());
    assert_eq!(statuses(&ops, &plan), vec![(1, OpStatus::WaitingLock)]);
    assert_eq!(blocked(&plan), vec![vec!["a:reboot".to_owned()]]);
    // The same holders again: nothing new to say, nothing asked again.
    let next = after(&ops, &plan);
    let again = run(&dev, &next, &open_policy());
    assert!(again.events.is_empty(), "{:?}", again.events);
    assert!(requests(&again).is_empty());
    // b is taken too: the new holder set is announced, b is asked.
    let dev = Dev::new().locked(&["a", "b"]);
    let plan = run(&dev, &next, &open_policy());
    assert_eq!(
        blocked(&plan),
        vec![vec!["a:reboot".to_owned(), "b:reboot".to_owned()]]
    );
    assert_eq!(requests(&plan), vec![(1, "b".into(), Reason::Reboot)]);
}

#[test]
fn waiting_for_a_window_is_announced_when_it_starts_or_the_next_window_changes() {
    let dev = Dev::new();
    let policy = FleetPolicy::default(); // reboots need a window
    let window_events = |plan: &Plan| {
        plan.events
            .iter()
            .filter(|(_, k)| matches!(k, EventKind::WaitingWindow { .. }))
            .count()
    };
    let occurrence = |start: i64| Occurrence {
        start: Timestamp(start),
        end: Timestamp(start + 1_000),
    };
    let one_off = |start: i64| WindowRule::OneOff {
        start: Timestamp(start),
        end: Timestamp(start + 1_000),
    };
    let n = NOW.0;

    // No window at all: it waits, and says so once.
    let f = facts(op(1, OperationSpec::Reboot), &[]);
    let plan = run_with(&dev, std::slice::from_ref(&f), &policy, &[], &[]);
    assert_eq!(
        statuses(std::slice::from_ref(&f), &plan),
        vec![(1, OpStatus::WaitingWindow)]
    );
    assert_eq!(window_events(&plan), 1);

    // It waited on a lock before; now it waits for a window: the holders it
    // waited on are forgotten, the next window is remembered and announced.
    let mut was_locked = op(1, OperationSpec::Reboot);
    was_locked.status = OpStatus::WaitingLock;
    was_locked.progress.waiting_on = vec![ReleaseRequest {
        block: b("a"),
        reason: Reason::Reboot,
        handover: false,
        because_of: None,
        generation: Generation(7),
    }];
    let f = facts(was_locked, &[]);
    let plan = run_with(
        &dev,
        std::slice::from_ref(&f),
        &policy,
        &[one_off(n + 10_000)],
        &[],
    );
    let next = &plan.ops[0].next;
    assert_eq!(next.status, OpStatus::WaitingWindow);
    assert!(next.progress.waiting_on.is_empty());
    assert_eq!(next.progress.told_window, Some(occurrence(n + 10_000)));
    assert_eq!(window_events(&plan), 1);

    // Already told about one window; another, earlier one is created: told again.
    let mut told = op(1, OperationSpec::Reboot);
    told.status = OpStatus::WaitingWindow;
    told.progress.told_window = Some(occurrence(n + 10_000));
    let f = facts(told, &[]);
    let plan = run_with(
        &dev,
        std::slice::from_ref(&f),
        &policy,
        &[one_off(n + 10_000), one_off(n + 5_000)],
        &[],
    );
    assert_eq!(
        plan.ops[0].next.progress.told_window,
        Some(occurrence(n + 5_000))
    );
    assert_eq!(window_events(&plan), 1);
}

#[test]
fn when_its_window_opens_an_operation_waiting_on_a_lock_says_so() {
    // A reboot in its window, a held: the holder is asked to release inside
    // that window, and the operation remembers which window it spoke of.
    let dev = Dev::new().locked(&["a"]);
    let policy = FleetPolicy::default(); // reboots need a window
    let n = NOW.0;
    let open = [WindowRule::OneOff {
        start: Timestamp(n - 1_000),
        end: Timestamp(n + 5_000),
    }];
    let occurrence = Occurrence {
        start: Timestamp(n - 1_000),
        end: Timestamp(n + 5_000),
    };
    let f = facts(op(1, OperationSpec::Reboot), &[]);
    let plan = run_with(&dev, std::slice::from_ref(&f), &policy, &open, &[]);
    let next = &plan.ops[0].next;
    assert_eq!(next.status, OpStatus::WaitingLock);
    assert_eq!(next.progress.told_window, Some(occurrence));
    assert!(plan.intents.iter().any(|i| matches!(
        i,
        PlannedIntent::ReleaseRequest { window: Some(w), .. } if *w == occurrence
    )));

    // It waited for this window with a's request already out; the window
    // opens: nothing is asked again, but it now waits on the lock.
    let mut waited = next.clone();
    waited.status = OpStatus::WaitingWindow;
    let f = facts(waited, &[]);
    let plan = run_with(&dev, std::slice::from_ref(&f), &policy, &open, &[]);
    assert_eq!(plan.ops[0].next.status, OpStatus::WaitingLock);
    assert!(requests(&plan).is_empty());
    assert!(
        plan.events
            .iter()
            .any(|(_, k)| matches!(k, EventKind::BlockedByLock { .. })),
        "{:?}",
        plan.events
    );
}

#[test]
fn a_release_applying_keeps_a_newer_one_queued_behind_it() {
    let dev = Dev::new();
    let (r3, r2) = (r3_a(), r2_b_only());
    let mut applying = assign(1, &r3);
    applying.status = OpStatus::Applying;
    let ops = vec![
        facts(applying, &[Arc::clone(&r3)]),
        facts(assign(2, &r2), &[Arc::clone(&r2)]),
    ];
    let plan = run(&dev, &ops, &open_policy());
    assert_eq!(
        statuses(&ops, &plan),
        vec![(1, OpStatus::Applying), (2, OpStatus::Queued)]
    );
    assert_eq!(behind(&plan, 2), Some(1));
    assert!(applies(&plan).is_empty());
}

#[test]
fn cancelled_operations_release_requests_are_withdrawn_and_the_status_follows() {
    let dev = Dev {
        status: DeviceStatus::WaitingLock,
        ..Dev::new().locked(&["a"])
    };
    let open = [
        OpenRequest {
            operation: OperationId(1),
            seq: IntentSeq(3),
        },
        OpenRequest {
            operation: OperationId(1),
            seq: IntentSeq(5),
        },
    ];
    // Operation 1 was cancelled: it is no longer among the active ones.
    let plan = run_with(&dev, &[], &open_policy(), &[], &open);
    assert_eq!(
        plan.intents,
        vec![
            PlannedIntent::Withdraw {
                operation: OperationId(1),
                seq: IntentSeq(3)
            },
            PlannedIntent::Withdraw {
                operation: OperationId(1),
                seq: IntentSeq(5)
            },
        ]
    );
    assert_eq!(plan.device_status, Some(DeviceStatus::InSync));
}

#[test]
fn apply_answers_move_operations_on_and_record_the_env_that_landed() {
    let dev = Dev::new().env_pending(env_var("LEVEL", "2", &["b"]));
    let mut applying = env_op(1, &["b"]);
    applying.status = OpStatus::Applying;
    applying.progress.applied_env = [(
        b("b"),
        [(EnvName::new("LEVEL").unwrap(), "2".to_owned())].into(),
    )]
    .into();
    type Row = (&'static str, ApplyOutcome, OpStatus, DeviceStatus, bool);
    let rows: Vec<Row> = vec![
        (
            "applied",
            ApplyOutcome::Applied,
            OpStatus::Done,
            DeviceStatus::InSync,
            true,
        ),
        (
            "failed",
            ApplyOutcome::Failed {
                error: "boom".into(),
            },
            OpStatus::Failed,
            DeviceStatus::Failed,
            false,
        ),
        // Stale or blocked: decided again at once on fresh state (here
        // nothing is held, so it applies again).
        (
            "stale",
            ApplyOutcome::Stale,
            OpStatus::Applying,
            DeviceStatus::Applying,
            false,
        ),
        (
            "blocked",
            ApplyOutcome::Blocked {
                held_by: vec![b("b")],
            },
            OpStatus::Applying,
            DeviceStatus::Applying,
            false,
        ),
    ];
    for (name, outcome, want, want_device, records_env) in rows {
        let mut f = facts(applying.clone(), &[]);
        f.answer = Some(outcome);
        let plan = run(&dev, &[f.clone()], &open_policy());
        assert_eq!(statuses(&[f], &plan), vec![(1, want)], "{name}");
        assert_eq!(plan.device_status, Some(want_device), "{name}");
        assert_eq!(
            plan.events
                .iter()
                .any(|(_, k)| matches!(k, EventKind::Applied)),
            want == OpStatus::Done,
            "{name}: an applied event exactly when done: {:?}",
            plan.events
        );
        assert_eq!(
            plan.applied_env
                .as_ref()
                .and_then(|e| e.get(&b("b")))
                .and_then(|e| e.get(&EnvName::new("LEVEL").unwrap()))
                .cloned(),
            records_env.then(|| "2".to_owned()),
            "{name}"
        );
    }
}

#[test]
fn deferrals_are_recorded_and_the_deadline_wakes_the_device() {
    let dev = Dev::new().locked(&["a"]);
    let mut waiting = op(1, OperationSpec::Reboot);
    waiting.status = OpStatus::WaitingLock;
    waiting.progress.requested.insert((b("a"), Generation(7)));
    waiting
        .progress
        .asked_at
        .insert(b("a"), Timestamp(NOW.0 - 1_000));
    let mut f = facts(waiting, &[]);
    f.deferrals.insert(b("a"), Timestamp(NOW.0 + 60_000));
    let policy = FleetPolicy {
        max_deferral_ms: 3_600_000,
        ..open_policy()
    };
    let plan = run(&dev, &[f], &policy);
    let w = &plan.ops[0].next;
    assert_eq!(
        w.progress.deferred_until.get(&b("a")),
        Some(&Timestamp(NOW.0 + 60_000))
    );
    assert_eq!(plan.wake_at, Some(Timestamp(NOW.0 - 1_000 + 3_600_000)));
    assert!(requests(&plan).is_empty(), "asked once per generation");
}

#[test]
fn a_deferral_past_the_limit_is_forced_or_reported_per_policy() {
    let dev = Dev::new().locked(&["a"]);
    let mut waiting = op(1, OperationSpec::RestartBlock(b("a")));
    waiting.status = OpStatus::WaitingLock;
    waiting.progress.requested.insert((b("a"), Generation(7)));
    waiting.progress.asked_at.insert(b("a"), Timestamp(0));
    let f = facts(waiting, &[]);
    for (expiry, want, action) in [
        (DeferralExpiry::Force, OpStatus::Applying, "time_forced"),
        (
            DeferralExpiry::Notify,
            OpStatus::WaitingLock,
            "deferral_expired",
        ),
    ] {
        let policy = FleetPolicy {
            max_deferral_ms: 1_000,
            on_deferral_expiry: expiry,
            ..open_policy()
        };
        let plan = run(&dev, std::slice::from_ref(&f), &policy);
        assert_eq!(plan.ops[0].next.status, want, "{action}");
        assert_eq!(plan.audits[0].action, action);
        if expiry == DeferralExpiry::Notify {
            assert!(plan.ops[0].next.progress.overdue);
            assert_eq!(plan.device_status, Some(DeviceStatus::Overdue));
        }
    }
}

#[test]
fn an_offline_device_is_sent_nothing_and_its_status_is_left_alone() {
    let dev = Dev {
        online: false,
        status: DeviceStatus::Offline,
        ..Dev::new()
    };
    let ops = vec![facts(op(1, OperationSpec::RestartBlock(b("b"))), &[])];
    let plan = run(&dev, &ops, &open_policy());
    assert!(plan.intents.is_empty());
    assert_eq!(plan.device_status, None);
}

#[test]
fn an_operation_that_cannot_be_resolved_fails_and_frees_the_ones_behind_it() {
    let dev = Dev::new();
    let missing = OperationSpec::AssignRelease(ReleaseId::new("gone").unwrap());
    let r2 = r2_b_only();
    let ops = vec![
        facts(op(1, missing), &[]),
        facts(assign(2, &r2), &[Arc::clone(&r2)]),
    ];
    // The newer assignment supersedes the older; with only the missing one
    // it fails naming the release.
    let plan = run(&dev, &ops[..1], &open_policy());
    assert_eq!(plan.ops[0].next.status, OpStatus::Failed);
    assert!(
        plan.ops[0]
            .next
            .progress
            .error
            .as_deref()
            .unwrap()
            .contains("gone")
    );
    let plan = run(&dev, &ops, &open_policy());
    assert_eq!(
        statuses(&ops, &plan),
        vec![(1, OpStatus::Superseded), (2, OpStatus::Applying)]
    );
}

#[test]
fn device_status_is_one_projection_of_its_operations() {
    let rec = |status: OpStatus, overdue: bool| {
        let mut o = op(1, OperationSpec::Reboot);
        o.status = status;
        o.progress.overdue = overdue;
        o
    };
    type Row = (
        &'static str,
        Vec<OperationRecord>,
        DeviceStatus,
        bool,
        bool,
        DeviceStatus,
    );
    let rows: Vec<Row> = vec![
        (
            "nothing to do",
            vec![],
            DeviceStatus::WaitingLock,
            false,
            false,
            DeviceStatus::InSync,
        ),
        (
            "a failure now",
            vec![],
            DeviceStatus::InSync,
            true,
            false,
            DeviceStatus::Failed,
        ),
        (
            "a failure stays",
            vec![],
            DeviceStatus::Failed,
            false,
            false,
            DeviceStatus::Failed,
        ),
        (
            "until a success",
            vec![],
            DeviceStatus::Failed,
            false,
            true,
            DeviceStatus::InSync,
        ),
        (
            "applying wins",
            vec![
                rec(OpStatus::WaitingLock, false),
                rec(OpStatus::Applying, false),
            ],
            DeviceStatus::InSync,
            false,
            false,
            DeviceStatus::Applying,
        ),
        (
            "overdue before waiting",
            vec![
                rec(OpStatus::WaitingLock, true),
                rec(OpStatus::WaitingWindow, false),
            ],
            DeviceStatus::InSync,
            false,
            false,
            DeviceStatus::Overdue,
        ),
        (
            "a lock before a window",
            vec![
                rec(OpStatus::WaitingWindow, false),
                rec(OpStatus::WaitingLock, false),
            ],
            DeviceStatus::InSync,
            false,
            false,
            DeviceStatus::WaitingLock,
        ),
        (
            "approval before window",
            vec![
                rec(OpStatus::WaitingWindow, false),
                rec(OpStatus::WaitingApproval, false),
            ],
            DeviceStatus::InSync,
            false,
            false,
            DeviceStatus::WaitingApproval,
        ),
        (
            "queued is pending",
            vec![rec(OpStatus::Queued, false)],
            DeviceStatus::InSync,
            false,
            false,
            DeviceStatus::Pending,
        ),
        (
            "finished ones do not count",
            vec![rec(OpStatus::Done, false), rec(OpStatus::Cancelled, false)],
            DeviceStatus::WaitingLock,
            false,
            false,
            DeviceStatus::InSync,
        ),
    ];
    for (name, ops, previous, failed, done, want) in rows {
        assert_eq!(
            reconcile::device_status(&ops, previous, failed, done),
            want,
            "{name}"
        );
    }
}

#[test]
fn status_sets_partition_the_statuses() {
    for s in OpStatus::ALL {
        assert_ne!(s.is_active(), s.is_terminal(), "{s:?}");
        if s.is_not_started() {
            assert!(s.is_cancellable() && s.is_active(), "{s:?}");
        }
        if s.is_in_flight() {
            assert!(!s.is_cancellable(), "{s:?}");
        }
        assert_eq!(OpStatus::parse(s.as_str()), Some(s));
    }
    assert!(OpStatus::PartiallyApplied.is_cancellable());
    assert!(!OpStatus::PartiallyApplied.is_not_started());
}

// ------------------------------------------------------------ properties

/// What an operation of `spec_strategy` changes on a device running r1
/// (a, b, c; no dependencies): r2 changes b, r3 changes a.
fn footprint_on_r1(spec: &OperationSpec) -> Footprint {
    let blocks = |names: &[&str]| Footprint::Blocks(names.iter().map(|n| b(n)).collect());
    match spec {
        OperationSpec::Reboot | OperationSpec::Shutdown | OperationSpec::OsUpdate(_) => {
            Footprint::Device
        }
        OperationSpec::RestartBlock(x)
        | OperationSpec::StopBlock(x)
        | OperationSpec::StartBlock(x) => Footprint::Blocks([x.clone()].into()),
        OperationSpec::AssignRelease(r) if r.as_str() == "r2" => blocks(&["b"]),
        OperationSpec::AssignRelease(_) => blocks(&["a"]),
        OperationSpec::ApplyEnv(EnvTarget::AllBlocks) => blocks(&["a", "b", "c"]),
        OperationSpec::ApplyEnv(EnvTarget::Blocks(bs)) => Footprint::Blocks(bs.clone()),
    }
}

#[test]
fn a_plan_is_empty_only_when_writing_it_changes_nothing() {
    assert!(Plan::default().is_empty());
    let record = op(1, OperationSpec::Reboot);
    let changed: Vec<(&str, Plan)> = vec![
        (
            "an operation",
            Plan {
                ops: vec![OpWrite {
                    expected: 0,
                    next: record.clone(),
                }],
                ..Plan::default()
            },
        ),
        (
            "an intent",
            Plan {
                intents: vec![PlannedIntent::Withdraw {
                    operation: record.id,
                    seq: IntentSeq(1),
                }],
                ..Plan::default()
            },
        ),
        (
            "the applied env",
            Plan {
                applied_env: Some(BTreeMap::new()),
                ..Plan::default()
            },
        ),
        (
            "an approval",
            Plan {
                approvals: vec![ApprovalWrite::Request {
                    operation: record.id,
                }],
                ..Plan::default()
            },
        ),
        (
            "an audit entry",
            Plan {
                audits: vec![PlanAudit {
                    operation: record.id,
                    action: "force_applied",
                    reason: String::new(),
                    blocks: Vec::new(),
                }],
                ..Plan::default()
            },
        ),
    ];
    for (what, plan) in changed {
        assert!(!plan.is_empty(), "a plan with {what} is not empty");
    }
}

fn spec_strategy() -> impl proptest::strategy::Strategy<Value = OperationSpec> {
    let block = prop::sample::select(vec!["a", "b", "c"]);
    prop_oneof![
        block
            .clone()
            .prop_map(|x| OperationSpec::RestartBlock(b(x))),
        block.clone().prop_map(|x| OperationSpec::StopBlock(b(x))),
        Just(OperationSpec::Reboot),
        Just(OperationSpec::Shutdown),
        Just(OperationSpec::OsUpdate("7".into())),
        Just(OperationSpec::AssignRelease(ReleaseId::new("r2").unwrap())),
        Just(OperationSpec::AssignRelease(ReleaseId::new("r3").unwrap())),
        prop::collection::btree_set(block, 0..3).prop_map(|bs| {
            OperationSpec::ApplyEnv(if bs.is_empty() {
                EnvTarget::AllBlocks
            } else {
                EnvTarget::Blocks(bs.into_iter().map(b).collect())
            })
        }),
    ]
}

fn status_strategy() -> impl proptest::strategy::Strategy<Value = OpStatus> {
    prop::sample::select(vec![
        OpStatus::Pending,
        OpStatus::Queued,
        OpStatus::WaitingLock,
        OpStatus::WaitingWindow,
        OpStatus::Applying,
    ])
}

proptest! {
    #[test]
    fn plans_never_dispatch_two_applies_and_settle(
        specs in prop::collection::vec((spec_strategy(), status_strategy()), 1..6),
        locked in prop::collection::btree_set(prop::sample::select(vec!["a", "b", "c"]), 0..3),
    ) {
        let releases = [r2_b_only(), r3_a()];
        let locked: Vec<&'static str> = locked.into_iter().collect();
        let dev = Dev::new()
            .locked(&locked)
            .env_pending(env_var("MODE", "x", &["a", "b", "c"]));
        // At most one operation starts out applying, as the store keeps it.
        let mut seen_applying = false;
        let ops: Vec<OpFacts> = specs
            .into_iter()
            .enumerate()
            .map(|(i, (spec, status))| {
                let mut r = op(i as i64 + 1, spec);
                r.status = if status == OpStatus::Applying && seen_applying {
                    OpStatus::Pending
                } else {
                    status
                };
                seen_applying |= r.status == OpStatus::Applying;
                facts(r, &releases)
            })
            .collect();
        let policy = open_policy();
        let plan = run(&dev, &ops, &policy);
        let next = after(&ops, &plan);
        // Never two applies in flight.
        let in_flight = next.iter().filter(|o| o.record.status == OpStatus::Applying).count();
        prop_assert!(in_flight <= 1, "{in_flight} in flight");
        prop_assert!(applies(&plan).len() <= 1);
        // A dispatched operation conflicts with nothing still active ahead
        // of it (and nothing was in flight).
        if let Some(id) = applies(&plan).first() {
            prop_assert!(!seen_applying);
            let dispatched = next.iter().find(|o| o.record.id.0 == *id).expect("dispatched is known");
            for earlier in next.iter().filter(|o| o.record.id.0 < *id && o.record.status.is_active()) {
                prop_assert!(
                    !conflicts(
                        (&earlier.record.spec, &footprint_on_r1(&earlier.record.spec)),
                        (&dispatched.record.spec, &footprint_on_r1(&dispatched.record.spec)),
                    ),
                    "{:?} dispatched past {:?}",
                    dispatched.record.spec,
                    earlier.record.spec
                );
            }
        }
        // Every queued operation names what it waits for: an earlier one
        // that is still active, or the apply in flight.
        for o in &next {
            if o.record.status == OpStatus::Queued {
                let behind = o.record.progress.behind.expect("queued says behind what");
                let it = next.iter().find(|x| x.record.id == behind);
                prop_assert!(it.is_some(), "behind {behind}, which is not active");
                prop_assert!(
                    behind < o.record.id || it.unwrap().record.status == OpStatus::Applying
                );
            }
        }
        // Reconciling again with no new facts sends nothing new.
        let again = run(&dev, &next, &policy);
        prop_assert!(again.intents.is_empty(), "{:?}", again.intents);
        prop_assert!(again.ops.is_empty(), "{:?}", again.ops);
        prop_assert!(again.events.is_empty(), "{:?}", again.events);
        prop_assert!(again.audits.is_empty(), "{:?}", again.audits);
    }

    #[test]
    fn a_free_operation_that_conflicts_with_nothing_is_dispatched(
        spec in spec_strategy(),
    ) {
        // Nothing locked, nothing ahead, no window needed, online.
        let releases = [r2_b_only(), r3_a()];
        let dev = Dev::new().env_pending(env_var("MODE", "x", &["a", "b", "c"]));
        let ops = vec![facts(op(1, spec), &releases)];
        let plan = run(&dev, &ops, &open_policy());
        prop_assert_eq!(applies(&plan), vec![1]);
        // Nothing was forced, so nothing is audited as forced.
        prop_assert!(plan.audits.is_empty(), "{:?}", plan.audits);
    }
}

#[test]
fn nothing_new_is_dispatched_until_the_device_reports_after_an_apply_landed() {
    let dev = Dev::new();
    let mut applying = op(1, OperationSpec::RestartBlock(b("a")));
    applying.status = OpStatus::Applying;
    let mut landed = facts(applying, &[]);
    landed.answer = Some(ApplyOutcome::Applied);
    let ops = vec![
        landed,
        facts(op(2, OperationSpec::RestartBlock(b("b"))), &[]),
    ];
    let mut device = dev.facts();
    device.last_apply_answer_at = Some(Timestamp(5_000));
    for (reported_at, want) in [
        (Timestamp(4_999), OpStatus::Pending),
        (Timestamp(5_000), OpStatus::Applying),
    ] {
        device.reported_at = reported_at;
        let plan = reconcile::reconcile(&Input {
            now: NOW,
            device: &device,
            ops: &ops,
            open_requests: &[],
            policy: &open_policy(),
            windows: &[],
        });
        assert_eq!(
            statuses(&ops, &plan),
            vec![(1, OpStatus::Done), (2, want)],
            "reported at {reported_at:?}"
        );
    }
}

#[test]
fn a_release_right_after_an_env_change_landed_runs_the_new_env() {
    let dev = Dev::new().env_pending(env_var("MODE", "fast", &["a"]));
    let r3 = r3_a();
    let mut applying = env_op(1, &["a"]);
    applying.status = OpStatus::Applying;
    applying.progress.applied_env = [(
        b("a"),
        [(EnvName::new("MODE").unwrap(), "fast".to_owned())].into(),
    )]
    .into();
    let mut landed = facts(applying, &[]);
    landed.answer = Some(ApplyOutcome::Applied);
    let ops = vec![landed, facts(assign(2, &r3), &[Arc::clone(&r3)])];
    // The device reported after the env change landed (a runs MODE=fast).
    let mut device = dev.facts();
    let mut ran = dev.applied.clone();
    ran.device.set(&env_var("MODE", "fast", &["a"])).unwrap();
    device.state.as_mut().unwrap().blocks = r1().resolve(&ran).as_running();
    let plan = reconcile::reconcile(&Input {
        now: NOW,
        device: &device,
        ops: &ops,
        open_requests: &[],
        policy: &open_policy(),
        windows: &[],
    });
    assert_eq!(
        statuses(&ops, &plan),
        vec![(1, OpStatus::Done), (2, OpStatus::Applying)]
    );
    let a = plan
        .intents
        .iter()
        .find_map(|i| match i {
            PlannedIntent::Apply {
                action: ApplyAction::Release { blocks, .. },
                ..
            } => blocks.iter().find(|t| t.spec.name == b("a")).cloned(),
            _ => None,
        })
        .expect("the release applies");
    assert_eq!(
        a.env
            .get(&EnvName::new("MODE").unwrap())
            .map(String::as_str),
        Some("fast")
    );
}
