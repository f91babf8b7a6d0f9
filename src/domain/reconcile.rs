//! The reconciler: everything the platform decides about one device, in one
//! pure function. It looks at *all* the device's active operations together
//! — with the device's reported state, the fleet's policy, the windows, the
//! approvals and the agent's latest answers — and returns one [`Plan`]: each
//! operation's next state, the intents to send and to withdraw, the device's
//! status, approval changes, audit entries, events, and when to look again.
//!
//! The shell gathers the input, calls [`reconcile`], and writes the plan in
//! one transaction guarded by each operation's generation. A lost race only
//! means the device is reconciled again.
//!
//! How operations on one device interact ([`conflicts`]): an operation waits
//! for an earlier one only when their footprints overlap — both change or
//! restart a common block, both need the whole device, or both assign a
//! release. Everything else goes ahead; at most one apply is in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::block::BlockVersion;
use super::blockmap::BlockMap;
use super::device::DeviceState;
use super::env::{self, Env, EnvContext};
use super::event::EventKind;
use super::fleet::DeviceStatus;
use super::gate::{self, Decision, Force, ReleaseRequest};
use super::ids::{BlockName, DeviceId, FleetId, Generation, IntentSeq, OperationId, Timestamp};
use super::impact::{self, Disturbance, ImpactError, Operation, Reason};
use super::operation::{
    ApplyOutcome, Approval, ApprovalGate, ApprovalStatus, DeferralExpiry, EnvTarget, FleetPolicy,
    OpStatus, OperationRecord, OperationSpec, Step, WindowGate, after_apply, approval_gate,
    deferral_deadline, expired_holders, held_back, next_after_missed, next_step,
};
use super::release::{Release, Target, partial_target};
use super::window::{Occurrence, WindowRule, open_or_next};

/// What the reconciler knows of the device itself.
#[derive(Debug, Clone)]
pub struct DeviceFacts {
    pub id: DeviceId,
    pub fleet: FleetId,
    /// Whether its agent has a live session.
    pub online: bool,
    /// The status as stored.
    pub status: DeviceStatus,
    /// What it last reported; `None` if it never did.
    pub state: Option<DeviceState>,
    /// The release it reports running, from the catalog.
    pub current: Option<Arc<Release>>,
    /// The operator env as stored (what env changes bring blocks to).
    pub desired_env: EnvContext,
    /// The operator env each block runs with, where known (recorded when an
    /// apply lands, and before an env edit for blocks it did not know); a
    /// block without an entry runs with `desired_env`.
    pub applied_env: BTreeMap<BlockName, Env>,
    /// When the device sent `state` (as the server recorded it).
    pub reported_at: Timestamp,
    /// When the device last answered an apply, if ever. The agent reports
    /// its state right after each answer; until that report is in, `state`
    /// may predate what the apply changed.
    pub last_apply_answer_at: Option<Timestamp>,
}

impl DeviceFacts {
    /// Whether the reported state already shows every answered apply.
    pub fn state_is_current(&self) -> bool {
        self.last_apply_answer_at
            .is_none_or(|at| self.reported_at >= at)
    }
}

/// The operator env `block` runs with now.
fn running_operator_env(
    applied: &BTreeMap<BlockName, Env>,
    desired: &EnvContext,
    block: &BlockName,
) -> Env {
    applied
        .get(block)
        .cloned()
        .unwrap_or_else(|| desired.operator_env(block))
}

/// One active operation and the facts about it.
#[derive(Debug, Clone)]
pub struct OpFacts {
    pub record: OperationRecord,
    /// For a release assignment: the release, if the catalog has it.
    pub release: Option<Arc<Release>>,
    /// The latest customer approval request for it.
    pub approval: Option<Approval>,
    /// While applying: the agent's answer to its latest apply, once given.
    pub answer: Option<ApplyOutcome>,
    /// Holders' latest "defer until" answers to its release requests.
    pub deferrals: BTreeMap<BlockName, Timestamp>,
}

/// A release request already on the device that may need withdrawing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenRequest {
    pub operation: OperationId,
    pub seq: IntentSeq,
}

/// Everything one reconciliation looks at.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub now: Timestamp,
    pub device: &'a DeviceFacts,
    /// The active operations, oldest first.
    pub ops: &'a [OpFacts],
    /// Release requests on the device not withdrawn yet, of active and of
    /// finished operations.
    pub open_requests: &'a [OpenRequest],
    pub policy: &'a FleetPolicy,
    /// The windows that apply to the device.
    pub windows: &'a [WindowRule],
}

/// One block as an apply asks the agent to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockTarget {
    pub spec: Arc<BlockVersion>,
    /// Its effective env.
    pub env: Env,
}

/// What an apply asks the agent to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyAction {
    /// Move to `release` (`blocks` is the full target).
    Release {
        release: super::ids::ReleaseId,
        blocks: Vec<BlockTarget>,
    },
    /// New env for the device's blocks; the disturbed ones restart.
    Env {
        blocks: Vec<BlockTarget>,
    },
    Restart(BlockName),
    Stop(BlockName),
    Start(BlockTarget),
    Reboot,
    Shutdown,
    OsUpdate(String),
}

/// An intent the plan sends to the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedIntent {
    /// Ask a holder to release, telling it what is coming and why.
    ReleaseRequest {
        operation: OperationId,
        request: ReleaseRequest,
        /// What is coming: a release id, an OS version, a block, `reboot`…
        target: String,
        window: Option<Occurrence>,
    },
    /// Tell a block about something that leaves it running (`coming`:
    /// the release that lands).
    Notice {
        operation: OperationId,
        block: BlockName,
        reason: Reason,
        coming: String,
    },
    /// Apply, fenced by the generations the decision saw.
    Apply {
        operation: OperationId,
        action: ApplyAction,
        fence: BlockMap<Generation>,
        disturbed: BlockMap<Disturbance>,
        forced: Vec<BlockName>,
    },
    /// Take back a release request whose operation is over.
    Withdraw {
        operation: OperationId,
        seq: IntentSeq,
    },
}

/// An operation's next state, written only if its generation is still
/// `expected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpWrite {
    pub next: OperationRecord,
    pub expected: u64,
}

/// A change to a customer approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalWrite {
    /// Ask the customer to approve an occurrence for this operation.
    Request { operation: OperationId },
    /// The approved occurrence passed unused.
    Missed { approval: Approval },
    /// Carry a missed approval to the next occurrence (policy).
    MoveToNext {
        operation: OperationId,
        occurrence: Occurrence,
        decided_by: String,
        message: Option<String>,
    },
}

/// An audit entry the plan writes (the shell adds time and fleet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanAudit {
    pub operation: OperationId,
    /// `time_forced`, `deferral_expired`, `force_applied`, `approval_moved`.
    pub action: &'static str,
    pub reason: String,
    pub blocks: Vec<BlockName>,
}

/// What one reconciliation decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub ops: Vec<OpWrite>,
    pub intents: Vec<PlannedIntent>,
    /// The device's status; `None` leaves it as stored (offline devices).
    pub device_status: Option<DeviceStatus>,
    /// The operator env each block runs with after applies that landed.
    pub applied_env: Option<BTreeMap<BlockName, Env>>,
    pub approvals: Vec<ApprovalWrite>,
    pub audits: Vec<PlanAudit>,
    pub events: Vec<(OperationId, EventKind)>,
    /// When to reconcile the device again at the latest (a window opens or
    /// closes, a deferral runs out).
    pub wake_at: Option<Timestamp>,
}

impl Plan {
    /// Whether writing the plan changes anything.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
            && self.intents.is_empty()
            && self.applied_env.is_none()
            && self.approvals.is_empty()
            && self.audits.is_empty()
    }

    fn wake(&mut self, at: Timestamp) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

/// What an operation changes or needs, for the conflict rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Footprint {
    /// It changes (spec, env) or restarts, stops or starts these blocks.
    Blocks(BTreeSet<BlockName>),
    /// It needs the whole device (reboot, shutdown, OS update).
    Device,
}

/// Why an operation waits for an earlier one, if it does: the conflict rule.
///
/// | earlier \ later | release | env (blocks) | restart/stop/start b | reboot/shutdown/os |
/// |---|---|---|---|---|
/// | release         | waits | waits if it changes a common block | waits if the release changes b | goes |
/// | env (blocks)    | waits if a common block | waits if a common block | waits if b is in the env change | goes |
/// | restart/stop/start b | waits if it changes b | waits if b is covered | waits if same b | goes |
/// | reboot/shutdown/os | goes | goes | goes | waits |
pub fn conflicts(
    earlier: (&OperationSpec, &Footprint),
    later: (&OperationSpec, &Footprint),
) -> bool {
    if matches!(earlier.0, OperationSpec::AssignRelease(_))
        && matches!(later.0, OperationSpec::AssignRelease(_))
    {
        return true;
    }
    match (earlier.1, later.1) {
        (Footprint::Device, Footprint::Device) => true,
        (Footprint::Blocks(a), Footprint::Blocks(b)) => a.intersection(b).next().is_some(),
        _ => false,
    }
}

/// An operation made concrete against the device: what the gate decides on,
/// what the agent is told, and the name of what is coming.
struct Resolved {
    operation: Operation,
    action: ApplyAction,
    target_name: String,
    /// The operator env each block will run with once it lands.
    lands_env: BTreeMap<BlockName, Env>,
}

/// A block as a target runs it, with the operator env given.
fn block_target(bv: &Arc<BlockVersion>, release_env: &Env, operator: &Env) -> BlockTarget {
    BlockTarget {
        spec: Arc::clone(bv),
        env: env::effective_with(release_env, &bv.env, operator),
    }
}

/// `release` resolved with, per block, the operator env `env_of` gives.
fn resolve_release(
    release: &Arc<Release>,
    env_of: impl Fn(&BlockName) -> Env,
) -> (Target, Vec<BlockTarget>, BTreeMap<BlockName, Env>) {
    let mut fingerprints = BTreeMap::new();
    let mut blocks = Vec::with_capacity(release.blocks().len());
    let mut lands = BTreeMap::new();
    for (name, bv) in release.blocks() {
        let operator = env_of(name);
        let t = block_target(bv, release.env(), &operator);
        fingerprints.insert(name.clone(), env::fingerprint(&t.env));
        blocks.push(t);
        lands.insert(name.clone(), operator);
    }
    (
        Target {
            release: Arc::clone(release),
            env_fingerprints: fingerprints,
        },
        blocks,
        lands,
    )
}

fn resolve(
    op: &OpFacts,
    device: &DeviceFacts,
    applied: &BTreeMap<BlockName, Env>,
    state: &DeviceState,
) -> Result<Resolved, String> {
    let simple = |operation, action, target_name: String| Resolved {
        operation,
        action,
        target_name,
        lands_env: BTreeMap::new(),
    };
    Ok(match &op.record.spec {
        OperationSpec::AssignRelease(id) => {
            let Some(release) = &op.release else {
                return Err(format!("release {id} is not in the catalog"));
            };
            // An operation changes only what it is about: the release's
            // blocks keep the operator env they run with now.
            let (target, blocks, lands_env) = resolve_release(release, |b| {
                running_operator_env(applied, &device.desired_env, b)
            });
            Resolved {
                operation: Operation::UpdateRelease {
                    target: Arc::new(target),
                },
                action: ApplyAction::Release {
                    release: id.clone(),
                    blocks,
                },
                target_name: id.to_string(),
                lands_env,
            }
        }
        OperationSpec::ApplyEnv(scope) => {
            let Some(current) = &device.current else {
                return Err("env cannot be applied: the device reports no current release".into());
            };
            let (mut target, blocks, mut lands_env) = resolve_release(current, |b| {
                if scope.covers(b) {
                    device.desired_env.operator_env(b)
                } else {
                    running_operator_env(applied, &device.desired_env, b)
                }
            });
            // Blocks the change is not about stay exactly as they run.
            for (name, rb) in &state.blocks {
                if !scope.covers(name) {
                    target
                        .env_fingerprints
                        .insert(name.clone(), rb.env_fingerprint);
                }
            }
            lands_env.retain(|b, _| scope.covers(b));
            Resolved {
                operation: Operation::ApplyEnv {
                    target: Arc::new(target),
                },
                action: ApplyAction::Env { blocks },
                target_name: "env".into(),
                lands_env,
            }
        }
        OperationSpec::RestartBlock(b) => simple(
            Operation::RestartBlock(b.clone()),
            ApplyAction::Restart(b.clone()),
            b.to_string(),
        ),
        OperationSpec::StopBlock(b) => simple(
            Operation::StopBlock(b.clone()),
            ApplyAction::Stop(b.clone()),
            b.to_string(),
        ),
        OperationSpec::StartBlock(b) => {
            let Some(current) = &device.current else {
                return Err(format!(
                    "block {b} cannot start: the device reports no current release"
                ));
            };
            let Some(bv) = current.blocks().get(b) else {
                return Err(format!("block {b} is not part of release {}", current.id()));
            };
            let operator = running_operator_env(applied, &device.desired_env, b);
            Resolved {
                operation: Operation::StartBlock(b.clone()),
                action: ApplyAction::Start(block_target(bv, current.env(), &operator)),
                target_name: b.to_string(),
                lands_env: [(b.clone(), operator)].into(),
            }
        }
        OperationSpec::Reboot => simple(Operation::Reboot, ApplyAction::Reboot, "reboot".into()),
        OperationSpec::Shutdown => simple(
            Operation::Shutdown,
            ApplyAction::Shutdown,
            "shutdown".into(),
        ),
        OperationSpec::OsUpdate(v) => simple(
            Operation::OsUpdate { version: v.clone() },
            ApplyAction::OsUpdate(v.clone()),
            v.clone(),
        ),
    })
}

/// The footprint of a resolved operation on `state`: for releases and env
/// changes, the blocks they change (not the dependents that only restart
/// with them).
fn footprint(
    spec: &OperationSpec,
    impact: Option<&impact::Impact>,
    state: &DeviceState,
) -> Footprint {
    match spec {
        OperationSpec::Reboot | OperationSpec::Shutdown | OperationSpec::OsUpdate(_) => {
            Footprint::Device
        }
        OperationSpec::RestartBlock(b)
        | OperationSpec::StopBlock(b)
        | OperationSpec::StartBlock(b) => Footprint::Blocks([b.clone()].into()),
        OperationSpec::ApplyEnv(EnvTarget::Blocks(blocks)) => Footprint::Blocks(blocks.clone()),
        OperationSpec::ApplyEnv(EnvTarget::AllBlocks) => {
            Footprint::Blocks(state.blocks.keys().cloned().collect())
        }
        OperationSpec::AssignRelease(_) => {
            let mut changed = BTreeSet::new();
            if let Some(i) = impact {
                changed.extend(
                    i.disturbed
                        .iter()
                        .filter(|(_, d)| d.because_of.is_none())
                        .map(|(b, _)| b.clone()),
                );
                changed.extend(i.started.iter().cloned());
            }
            Footprint::Blocks(changed)
        }
    }
}

/// The device's status: one projection of its operations.
pub fn device_status<'a>(
    ops: impl IntoIterator<Item = &'a OperationRecord>,
    previous: DeviceStatus,
    failed_now: bool,
    done_now: bool,
) -> DeviceStatus {
    let active: Vec<&OperationRecord> = ops.into_iter().filter(|o| o.status.is_active()).collect();
    let any = |s: OpStatus| active.iter().any(|o| o.status == s);
    if any(OpStatus::Applying) {
        DeviceStatus::Applying
    } else if active.iter().any(|o| o.progress.overdue) {
        DeviceStatus::Overdue
    } else if any(OpStatus::PartiallyApplied) {
        DeviceStatus::PartiallyApplied
    } else if any(OpStatus::WaitingLock) {
        DeviceStatus::WaitingLock
    } else if any(OpStatus::WaitingApproval) {
        DeviceStatus::WaitingApproval
    } else if any(OpStatus::WaitingWindow) {
        DeviceStatus::WaitingWindow
    } else if !active.is_empty() {
        DeviceStatus::Pending
    } else if failed_now || (!done_now && previous == DeviceStatus::Failed) {
        DeviceStatus::Failed
    } else {
        DeviceStatus::InSync
    }
}

/// The working state of one operation during a reconciliation (compared
/// with its input record at the end: only changed ones are written).
struct Working<'a> {
    next: std::borrow::Cow<'a, OperationRecord>,
}

impl Working<'_> {
    /// The record to change (copied from the input on the first change).
    fn edit(&mut self) -> &mut OperationRecord {
        self.next.to_mut()
    }
}

/// Reconciles one device: see the module docs.
pub fn reconcile(input: &Input<'_>) -> Plan {
    let device = input.device;
    let mut plan = Plan::default();
    let mut work: Vec<Working<'_>> = input
        .ops
        .iter()
        .map(|o| Working {
            next: std::borrow::Cow::Borrowed(&o.record),
        })
        .collect();
    let mut applied_env = std::borrow::Cow::Borrowed(&device.applied_env);
    let mut env_changed = false;
    let mut failed_now = false;
    let mut done_now = false;

    // 1. Answers to applies in flight.
    for (w, facts) in work.iter_mut().zip(input.ops) {
        if w.next.status != OpStatus::Applying {
            continue;
        }
        let Some(outcome) = &facts.answer else {
            continue;
        };
        let lands = std::mem::take(&mut w.edit().progress.applied_env);
        let (status, progress) = after_apply(&w.next, outcome);
        w.edit().status = status;
        w.edit().progress = progress;
        match status {
            OpStatus::Done | OpStatus::PartiallyApplied => {
                if !lands.is_empty() {
                    applied_env.to_mut().extend(lands);
                    env_changed = true;
                }
                if status == OpStatus::Done {
                    done_now = true;
                    plan.events.push((w.next.id, EventKind::Applied));
                }
            }
            OpStatus::Failed => {
                failed_now = true;
                plan.events.push((
                    w.next.id,
                    EventKind::Failed {
                        error: w.next.progress.error.clone().unwrap_or_default(),
                    },
                ));
            }
            _ => {
                if let ApplyOutcome::Interrupted { message } = outcome {
                    plan.events.push((
                        w.next.id,
                        EventKind::Interrupted {
                            message: message.clone(),
                        },
                    ));
                }
            }
        }
    }

    // 2. Holders' deferrals.
    for (w, facts) in work.iter_mut().zip(input.ops) {
        if !w.next.status.is_active() {
            continue;
        }
        for (block, until) in &facts.deferrals {
            if w.next.progress.deferred_until.get(block) != Some(until) {
                w.edit()
                    .progress
                    .deferred_until
                    .insert(block.clone(), *until);
                plan.events.push((
                    w.next.id,
                    EventKind::Deferred {
                        block: block.to_string(),
                        until: *until,
                    },
                ));
            }
        }
    }

    // 3. A newer release assignment supersedes older ones not started.
    let newest_assignment = work
        .iter()
        .filter(|w| {
            w.next.status.is_not_started() && matches!(w.next.spec, OperationSpec::AssignRelease(_))
        })
        .map(|w| w.next.id)
        .max();
    if let Some(newest) = newest_assignment {
        for w in &mut work {
            if w.next.id < newest
                && w.next.status.is_not_started()
                && matches!(w.next.spec, OperationSpec::AssignRelease(_))
            {
                w.edit().status = OpStatus::Superseded;
                w.edit().progress.waiting_on.clear();
                w.edit().progress.behind = None;
                plan.events.push((
                    w.next.id,
                    EventKind::Cancelled {
                        reason: format!("superseded by operation {newest}"),
                    },
                ));
            }
        }
    }

    // 4. Each operation in order, against the ones ahead of it.
    let mut in_flight: Option<OperationId> = work
        .iter()
        .find(|w| w.next.status == OpStatus::Applying)
        .map(|w| w.next.id);
    let mut ahead: Vec<(OperationId, &OperationSpec, Footprint)> = Vec::new();
    // Decisions need the device's state as it is: after an apply landed,
    // wait for the report that follows it (it wakes the device).
    let state = device.state.as_ref().filter(|_| device.state_is_current());
    if let Some(state) = state {
        for (w, facts) in work.iter_mut().zip(input.ops.iter()) {
            if !w.next.status.is_active() {
                continue;
            }
            let spec = &facts.record.spec;
            let found = (facts.record.status, facts.record.progress.behind);
            let resolved = resolve(facts, device, &applied_env, state);
            // The impact is computed once: the footprint and the gate use it.
            let impact = match &resolved {
                Ok(r) => Some(impact::impact(&r.operation, state)),
                Err(_) => None,
            };
            let fp = footprint(spec, impact.as_ref().and_then(|i| i.as_ref().ok()), state);
            if w.next.status == OpStatus::Applying {
                ahead.push((w.next.id, spec, fp));
                continue;
            }
            let (resolved, impact) = match (resolved, impact) {
                (Ok(r), Some(i)) => (r, i),
                (Err(error), _) => {
                    fail(w, error, &mut plan);
                    failed_now = true;
                    continue;
                }
                (Ok(_), None) => continue,
            };
            let blocker = ahead
                .iter()
                .find(|(_, s, f)| conflicts((s, f), (spec, &fp)))
                .map(|(id, _, _)| *id);
            ahead.push((w.next.id, spec, fp));
            if let Some(behind) = blocker {
                queue(w, behind, found, &mut plan);
                continue;
            }
            let outcome = decide_one(w, facts, &resolved, impact, state, input, &mut plan);
            match outcome {
                OneOutcome::Step(step) => {
                    if matches!(step, Step::Apply { .. })
                        && let Some(applying) = in_flight
                    {
                        queue(w, applying, found, &mut plan);
                        continue;
                    }
                    let failed = matches!(step, Step::Fail { .. });
                    let applies = act(w, step, resolved, input, &mut plan);
                    failed_now |= failed;
                    if applies {
                        in_flight = Some(w.next.id);
                    }
                }
                OneOutcome::Held => {}
            }
        }
    }

    // 5. Release requests of operations that are over are taken back.
    let finished: BTreeSet<OperationId> = work
        .iter()
        .filter(|w| w.next.status.is_terminal())
        .map(|w| w.next.id)
        .collect();
    let active: BTreeSet<OperationId> = work
        .iter()
        .filter(|w| w.next.status.is_active())
        .map(|w| w.next.id)
        .collect();
    for r in input.open_requests {
        if finished.contains(&r.operation) || !active.contains(&r.operation) {
            plan.intents.push(PlannedIntent::Withdraw {
                operation: r.operation,
                seq: r.seq,
            });
        }
    }

    // 6. The device's status, the applied env, and what changed.
    if device.online {
        plan.device_status = Some(device_status(
            work.iter().map(|w| &*w.next),
            device.status,
            failed_now,
            done_now,
        ));
    }
    if env_changed && *applied_env != device.applied_env {
        plan.applied_env = Some(applied_env.into_owned());
    }
    for (w, facts) in work.into_iter().zip(input.ops) {
        // Only a changed record was copied; an equal copy is not written.
        if let std::borrow::Cow::Owned(next) = w.next
            && next != facts.record
        {
            plan.ops.push(OpWrite {
                expected: facts.record.generation,
                next,
            });
        }
    }
    plan
}

fn fail(w: &mut Working, error: String, plan: &mut Plan) {
    w.edit().status = OpStatus::Failed;
    w.edit().progress.error = Some(error.clone());
    w.edit().progress.waiting_on.clear();
    w.edit().progress.behind = None;
    plan.events.push((w.next.id, EventKind::Failed { error }));
}

/// Queues the operation behind `behind`; `was` is its status and `behind`
/// as this reconciliation found them (so the same wait is not news again).
fn queue(
    w: &mut Working,
    behind: OperationId,
    was: (OpStatus, Option<OperationId>),
    plan: &mut Plan,
) {
    w.edit().status = OpStatus::Queued;
    w.edit().progress.behind = Some(behind);
    w.edit().progress.waiting_on.clear();
    if was != (OpStatus::Queued, Some(behind)) {
        plan.events.push((w.next.id, EventKind::Queued { behind }));
    }
}

enum OneOutcome {
    /// The next step of the operation's own gate.
    Step(Step),
    /// Held by its approval (waiting, asked, declined): already acted on.
    Held,
}

/// The operation's own gate: locks (with force, deferral limits and
/// partial releases), windows and approvals.
fn decide_one(
    w: &mut Working,
    facts: &OpFacts,
    resolved: &Resolved,
    impact: Result<impact::Impact, ImpactError>,
    state: &DeviceState,
    input: &Input<'_>,
    plan: &mut Plan,
) -> OneOutcome {
    let now = input.now;
    let policy = input.policy;
    let op_id = w.next.id;
    if w.next.progress.behind.is_some() {
        w.edit().progress.behind = None;
    }
    let mut decision = impact
        .clone()
        .map(|i| gate::gate(i, state, w.next.force.as_ref()));
    // Bounded deferral: holders waited on past the fleet's limit.
    if let Ok(Decision::Blocked { holders, .. }) = &decision {
        let expired = expired_holders(&w.next.progress, holders, now, policy);
        if expired.is_empty() {
            if let Some(at) = deferral_deadline(&w.next.progress, holders, policy) {
                plan.wake(at);
            }
        } else {
            match policy.on_deferral_expiry {
                DeferralExpiry::Force => {
                    if let Ok(time_force) =
                        Force::new(expired.iter().cloned().collect(), "deferral limit reached")
                    {
                        let merged = match &w.next.force {
                            Some(f) => f.merge(&time_force),
                            None => time_force,
                        };
                        decision = impact.clone().map(|i| gate::gate(i, state, Some(&merged)));
                        if input.device.online {
                            let names = expired.iter().map(ToString::to_string).collect();
                            plan.events
                                .push((op_id, EventKind::TimeForced { blocks: names }));
                            plan.audits.push(PlanAudit {
                                operation: op_id,
                                action: "time_forced",
                                reason: "deferral limit reached".into(),
                                blocks: expired.clone(),
                            });
                        }
                    }
                }
                DeferralExpiry::Notify => {
                    if !w.next.progress.overdue {
                        w.edit().progress.overdue = true;
                        let names = expired.iter().map(ToString::to_string).collect();
                        plan.events
                            .push((op_id, EventKind::Overdue { blocks: names }));
                        plan.audits.push(PlanAudit {
                            operation: op_id,
                            action: "deferral_expired",
                            reason: "deferral limit reached".into(),
                            blocks: expired.clone(),
                        });
                    }
                }
            }
        }
    }
    if let Ok(Decision::Proceed { forced, .. }) = &decision
        && !forced.is_empty()
        && input.device.online
    {
        plan.audits.push(PlanAudit {
            operation: op_id,
            action: "force_applied",
            reason: w
                .next
                .force
                .as_ref()
                .map(|f| f.reason().to_owned())
                .unwrap_or_default(),
            blocks: forced.clone(),
        });
    }
    let mut window = window_gate(&w.next.spec, input, plan);
    if policy.needs_approval(&w.next.spec) {
        match approval(w, facts, input, plan) {
            Some(g) => window = g,
            None => return OneOutcome::Held,
        }
    }
    // Partial releases: update what is not held back now.
    if policy.partial_releases
        && let (Ok(Decision::Blocked { holders, impact }), Operation::UpdateRelease { target }) =
            (&decision, &resolved.operation)
    {
        let held = held_back(holders, impact);
        let pt = Arc::new(partial_target(target, &state.blocks, &held));
        let pd = gate_with(
            &Operation::UpdateRelease {
                target: Arc::clone(&pt),
            },
            state,
            w.next.force.as_ref(),
        );
        if let Ok(Decision::Proceed {
            impact: mut pi,
            fence,
            forced,
        }) = pd
            && (!pi.disturbed.is_empty() || !pi.started.is_empty())
        {
            // Held blocks restart later: no "untouched" notice for them.
            pi.notices = pi
                .notices
                .into_iter()
                .filter(|(b, _)| !held.contains(b))
                .collect();
            w.edit().progress.partial_in_flight = true;
            decision = Ok(Decision::Proceed {
                impact: pi,
                fence,
                forced,
            });
            let step = next_step(&w.next, decision, input.device.online, window);
            if !matches!(step, Step::Apply { .. }) && w.next.progress.partial_in_flight {
                w.edit().progress.partial_in_flight = false;
            }
            return OneOutcome::Step(step);
        }
    }
    if w.next.progress.partial_in_flight {
        w.edit().progress.partial_in_flight = false;
    }
    OneOutcome::Step(next_step(&w.next, decision, input.device.online, window))
}

fn gate_with(
    op: &Operation,
    state: &DeviceState,
    force: Option<&Force>,
) -> Result<Decision, ImpactError> {
    gate::decide(op, state, force)
}

/// Whether the fleet's policy puts this operation in a maintenance window,
/// and if so whether one is open; asks to be woken at the next change.
fn window_gate(spec: &OperationSpec, input: &Input<'_>, plan: &mut Plan) -> WindowGate {
    if !input.policy.needs_window(spec) {
        return WindowGate::NotRequired;
    }
    let (open, next) = open_or_next(input.windows, input.now);
    match open {
        Some(o) => {
            plan.wake(o.end);
            WindowGate::Open(o)
        }
        None => {
            if let Some(n) = next {
                plan.wake(n.start);
            }
            WindowGate::Closed { next }
        }
    }
}

/// For an operation that needs a customer's approval: the approved
/// occurrence as its window, or `None` when it waits for (or was refused)
/// an approval.
fn approval(
    w: &mut Working,
    facts: &OpFacts,
    input: &Input<'_>,
    plan: &mut Plan,
) -> Option<WindowGate> {
    let now = input.now;
    let op_id = w.next.id;
    let latest = facts.approval.as_ref();
    match approval_gate(latest, now) {
        ApprovalGate::Approved(g) => {
            if let Some(o) = g.occurrence() {
                if o.start > now {
                    plan.wake(o.start);
                }
                plan.wake(o.end);
            }
            Some(g)
        }
        ApprovalGate::Waiting => {
            if w.next.status != OpStatus::WaitingApproval {
                w.edit().status = OpStatus::WaitingApproval;
            }
            None
        }
        gate @ (ApprovalGate::Request | ApprovalGate::Missed) => {
            if let (ApprovalGate::Missed, Some(prev)) = (gate, latest) {
                let mut missed = prev.clone();
                missed.status = ApprovalStatus::Missed;
                plan.approvals
                    .push(ApprovalWrite::Missed { approval: missed });
                if input.policy.missed_moves_to_next
                    && let Some(was) = prev.occurrence
                {
                    let candidates: Vec<Occurrence> = input
                        .windows
                        .iter()
                        .flat_map(|r| r.occurrences(now, 8))
                        .collect();
                    if let Some(next) = next_after_missed(&candidates, was) {
                        plan.approvals.push(ApprovalWrite::MoveToNext {
                            operation: op_id,
                            occurrence: next,
                            decided_by: "policy: next occurrence after a missed one".into(),
                            message: prev
                                .decided_by
                                .clone()
                                .map(|who| format!("first approved by {who}")),
                        });
                        plan.audits.push(PlanAudit {
                            operation: op_id,
                            action: "approval_moved",
                            reason: "approved occurrence missed".into(),
                            blocks: Vec::new(),
                        });
                        plan.wake(next.start);
                        w.edit().status = OpStatus::WaitingWindow;
                        return None;
                    }
                }
            }
            // A request is audited (`approval_requested`) as it is written.
            plan.approvals
                .push(ApprovalWrite::Request { operation: op_id });
            plan.events.push((op_id, EventKind::ApprovalRequested));
            w.edit().status = OpStatus::WaitingApproval;
            None
        }
        ApprovalGate::Declined => {
            let who = latest
                .and_then(|a| a.decided_by.clone())
                .unwrap_or_default();
            let why = latest.and_then(|a| a.message.clone()).unwrap_or_default();
            let reason = format!("declined by {who}: {why}");
            w.edit().status = OpStatus::Cancelled;
            w.edit().progress.error = Some(reason.clone());
            w.edit().progress.waiting_on.clear();
            plan.events.push((op_id, EventKind::Cancelled { reason }));
            None
        }
    }
}

/// Carries out a step on the working operation; returns whether it sent an
/// apply.
fn act(
    w: &mut Working,
    step: Step,
    resolved: Resolved,
    input: &Input<'_>,
    plan: &mut Plan,
) -> bool {
    let now = input.now;
    let op_id = w.next.id;
    let before = w.next.status;
    match step {
        Step::Wait => {
            if w.next.status == OpStatus::Queued {
                w.edit().status = OpStatus::Pending;
            }
            false
        }
        Step::Fail { error } => {
            fail(w, error, plan);
            false
        }
        Step::WaitWindow { next } => {
            let changed = before != OpStatus::WaitingWindow
                || !w.next.progress.waiting_on.is_empty()
                || w.next.progress.told_window != next;
            if w.next.status != OpStatus::WaitingWindow {
                w.edit().status = OpStatus::WaitingWindow;
            }
            if !w.next.progress.waiting_on.is_empty() {
                w.edit().progress.waiting_on.clear();
            }
            if w.next.progress.told_window != next {
                w.edit().progress.told_window = next;
            }
            if changed {
                plan.events.push((
                    op_id,
                    EventKind::WaitingWindow {
                        next_start: next.map(|o| o.start),
                    },
                ));
            }
            false
        }
        Step::RequestRelease {
            send,
            waiting_on,
            window,
            window_closed,
        } => {
            let status = if window_closed {
                OpStatus::WaitingWindow
            } else if w.next.progress.partially_applied {
                OpStatus::PartiallyApplied
            } else {
                OpStatus::WaitingLock
            };
            let changed =
                !send.is_empty() || before != status || w.next.progress.waiting_on != waiting_on;
            if w.next.status != status {
                w.edit().status = status;
            }
            if w.next.progress.told_window != window {
                w.edit().progress.told_window = window;
            }
            for r in &send {
                w.edit()
                    .progress
                    .requested
                    .insert((r.block.clone(), r.generation));
                w.edit()
                    .progress
                    .asked_at
                    .entry(r.block.clone())
                    .or_insert(now);
                plan.intents.push(PlannedIntent::ReleaseRequest {
                    operation: op_id,
                    request: r.clone(),
                    target: resolved.target_name.clone(),
                    window,
                });
            }
            if changed && !waiting_on.is_empty() {
                plan.events.push((
                    op_id,
                    EventKind::BlockedByLock {
                        holders: waiting_on
                            .iter()
                            .map(|r| format!("{}:{}", r.block, r.reason))
                            .collect(),
                    },
                ));
            }
            if w.next.progress.waiting_on != waiting_on {
                w.edit().progress.waiting_on = waiting_on;
            }
            false
        }
        Step::Apply {
            fence,
            disturbed,
            notices,
            forced,
        } => {
            w.edit().status = OpStatus::Applying;
            w.edit().progress.waiting_on.clear();
            w.edit().progress.behind = None;
            let partial = w.next.progress.partial_in_flight;
            for (b, r) in notices.iter() {
                if *r == Reason::UpdateNoRestart {
                    plan.intents.push(PlannedIntent::Notice {
                        operation: op_id,
                        block: b.clone(),
                        reason: *r,
                        coming: resolved.target_name.clone(),
                    });
                }
            }
            let (action, lands) = if partial {
                partial_action(resolved, &disturbed)
            } else {
                (resolved.action, resolved.lands_env)
            };
            w.edit().progress.applied_env = lands;
            plan.intents.push(PlannedIntent::Apply {
                operation: op_id,
                action,
                fence,
                disturbed,
                forced,
            });
            plan.events.push((op_id, EventKind::Applying));
            true
        }
    }
}

/// A partial release's action: the whole release is sent (the agent keeps
/// every block the apply does not disturb as it runs), but only the blocks
/// it disturbs or starts land with a new env.
fn partial_action(
    resolved: Resolved,
    disturbed: &BlockMap<Disturbance>,
) -> (ApplyAction, BTreeMap<BlockName, Env>) {
    let mut lands = resolved.lands_env;
    if let ApplyAction::Release { blocks, .. } = &resolved.action {
        let names: BTreeSet<&BlockName> = blocks.iter().map(|b| &b.spec.name).collect();
        lands.retain(|b, _| names.contains(b) && disturbed.contains_key(b));
    }
    (resolved.action, lands)
}
