//! Operations on a device and the scheduler's pure decisions about them:
//! what to send next (release requests, an apply) and how an agent's answer
//! moves the operation on. The shell gathers state, calls these, and acts.

use std::collections::BTreeSet;

use super::blockmap::BlockMap;
use super::gate::{Decision, Force, ReleaseRequest};
use super::ids::{BlockName, DeviceId, Generation, IntentSeq, OperationId, ReleaseId, Timestamp};
use super::impact::{Disturbance, ImpactError, Reason};
use super::window::Occurrence;

/// What an operator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationSpec {
    AssignRelease(ReleaseId),
    RestartBlock(BlockName),
    StopBlock(BlockName),
    StartBlock(BlockName),
    Reboot,
    Shutdown,
    OsUpdate(String),
    /// Bring the named blocks (or every block) to the operator env as
    /// stored; created by setting or unsetting env variables. Only the
    /// blocks it is about change: the others keep the env they run with.
    ApplyEnv(EnvTarget),
}

/// The blocks an env change is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvTarget {
    /// A device-wide variable: every block.
    AllBlocks,
    /// Variables scoped to these blocks.
    Blocks(BTreeSet<BlockName>),
}

impl EnvTarget {
    /// Whether `block`'s env is part of this change.
    pub fn covers(&self, block: &BlockName) -> bool {
        match self {
            EnvTarget::AllBlocks => true,
            EnvTarget::Blocks(b) => b.contains(block),
        }
    }

    /// The target of one env change with these scopes: device-wide if any
    /// is, else the union of the scoped blocks.
    pub fn of_scopes<'a>(scopes: impl IntoIterator<Item = &'a super::env::EnvScope>) -> Self {
        let mut blocks = BTreeSet::new();
        for scope in scopes {
            match scope {
                super::env::EnvScope::Device => return EnvTarget::AllBlocks,
                super::env::EnvScope::Blocks(b) => blocks.extend(b.iter().cloned()),
            }
        }
        EnvTarget::Blocks(blocks)
    }
}

impl OperationSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            OperationSpec::AssignRelease(_) => "assign_release",
            OperationSpec::RestartBlock(_) => "restart_block",
            OperationSpec::StopBlock(_) => "stop_block",
            OperationSpec::StartBlock(_) => "start_block",
            OperationSpec::Reboot => "reboot",
            OperationSpec::Shutdown => "shutdown",
            OperationSpec::OsUpdate(_) => "os_update",
            OperationSpec::ApplyEnv(_) => "apply_env",
        }
    }
}

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpStatus {
    /// Not looked at yet.
    Pending,
    /// Waits for an earlier operation on the same device that it conflicts
    /// with (`OpProgress::behind`), or for the apply in flight to finish.
    Queued,
    WaitingLock,
    /// Needs a maintenance window, and none is open.
    WaitingWindow,
    /// Needs a customer's approval of a window occurrence.
    WaitingApproval,
    /// Part of a release is applied; locked blocks follow when released.
    PartiallyApplied,
    Applying,
    Done,
    Failed,
    Cancelled,
    Superseded,
}

impl OpStatus {
    pub const ALL: [OpStatus; 11] = [
        OpStatus::Pending,
        OpStatus::Queued,
        OpStatus::WaitingLock,
        OpStatus::WaitingWindow,
        OpStatus::WaitingApproval,
        OpStatus::PartiallyApplied,
        OpStatus::Applying,
        OpStatus::Done,
        OpStatus::Failed,
        OpStatus::Cancelled,
        OpStatus::Superseded,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            OpStatus::Pending => "pending",
            OpStatus::Queued => "queued",
            OpStatus::WaitingLock => "waiting_lock",
            OpStatus::WaitingWindow => "waiting_window",
            OpStatus::WaitingApproval => "waiting_approval",
            OpStatus::PartiallyApplied => "partially_applied",
            OpStatus::Applying => "applying",
            OpStatus::Done => "done",
            OpStatus::Failed => "failed",
            OpStatus::Cancelled => "cancelled",
            OpStatus::Superseded => "superseded",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
    /// Finished, one way or another: nothing more happens to it.
    pub const TERMINAL: [OpStatus; 4] = [
        OpStatus::Done,
        OpStatus::Failed,
        OpStatus::Cancelled,
        OpStatus::Superseded,
    ];
    /// Not finished: the reconciler looks at these.
    pub const ACTIVE: [OpStatus; 7] = [
        OpStatus::Pending,
        OpStatus::Queued,
        OpStatus::WaitingLock,
        OpStatus::WaitingWindow,
        OpStatus::WaitingApproval,
        OpStatus::PartiallyApplied,
        OpStatus::Applying,
    ];
    /// Active and nothing sent to the device to apply yet: a newer release
    /// supersedes these, and they may be cancelled.
    pub const NOT_STARTED: [OpStatus; 5] = [
        OpStatus::Pending,
        OpStatus::Queued,
        OpStatus::WaitingLock,
        OpStatus::WaitingWindow,
        OpStatus::WaitingApproval,
    ];
    /// What an operator may cancel: not started, or a partial release whose
    /// held blocks have not followed yet.
    pub const CANCELLABLE: [OpStatus; 6] = [
        OpStatus::Pending,
        OpStatus::Queued,
        OpStatus::WaitingLock,
        OpStatus::WaitingWindow,
        OpStatus::WaitingApproval,
        OpStatus::PartiallyApplied,
    ];
    /// An apply is on its way to the device or running there.
    pub const IN_FLIGHT: [OpStatus; 1] = [OpStatus::Applying];

    pub fn is_terminal(self) -> bool {
        Self::TERMINAL.contains(&self)
    }
    pub fn is_active(self) -> bool {
        Self::ACTIVE.contains(&self)
    }
    pub fn is_not_started(self) -> bool {
        Self::NOT_STARTED.contains(&self)
    }
    pub fn is_cancellable(self) -> bool {
        Self::CANCELLABLE.contains(&self)
    }
    pub fn is_in_flight(self) -> bool {
        Self::IN_FLIGHT.contains(&self)
    }
}

/// What the scheduler has done so far for an operation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpProgress {
    /// Holders the operation currently waits on.
    pub waiting_on: Vec<ReleaseRequest>,
    /// Release requests already sent, by block and the generation they were
    /// decided against: each is sent once, again only if the lock changes.
    pub requested: BTreeSet<(BlockName, Generation)>,
    /// The apply intent in flight, if any.
    pub apply_seq: Option<IntentSeq>,
    /// When each block was first asked to release for this operation.
    pub asked_at: std::collections::BTreeMap<BlockName, Timestamp>,
    /// Until when each holder said it defers.
    pub deferred_until: std::collections::BTreeMap<BlockName, Timestamp>,
    /// The deferral limit passed and was reported (`notify` policy).
    pub overdue: bool,
    /// The apply in flight is a partial release (held blocks left as they run).
    pub partial_in_flight: bool,
    /// A partial release has been applied; the held blocks are still to go.
    pub partially_applied: bool,
    /// While applying: the last phase the agent reported.
    pub phase: Option<String>,
    /// The window occurrence holders were last told about: when it changes
    /// (a window is created, or the next one comes up), they are told again.
    pub told_window: Option<Occurrence>,
    pub error: Option<String>,
    /// While `queued`: the earlier operation it waits for.
    pub behind: Option<OperationId>,
    /// While applying: the operator env (levels 3–6 of the precedence) each
    /// block will run with once the apply lands, recorded as the device's
    /// applied env when it does.
    pub applied_env: std::collections::BTreeMap<BlockName, super::env::Env>,
    /// How many applies of this operation the agent reported interrupted.
    pub interruptions: u32,
    /// What the agent said about the last interrupted apply.
    pub interrupted: Option<String>,
}

/// An operation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRecord {
    pub id: OperationId,
    pub device: DeviceId,
    pub spec: OperationSpec,
    pub force: Option<Force>,
    pub status: OpStatus,
    pub progress: OpProgress,
    pub created: Timestamp,
    pub updated: Timestamp,
    /// Bumped by every write; a write compares it, so a decision made on an
    /// older read never lands.
    pub generation: u64,
}

impl OperationRecord {
    /// The status shown to people and API clients: an unfinished operation
    /// whose holder is past the fleet's deferral limit shows as `overdue`.
    pub fn shown_status(&self) -> &'static str {
        if self.progress.overdue && !self.status.is_terminal() {
            "overdue"
        } else {
            self.status.as_str()
        }
    }
}

/// Why an operation could not be cancelled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("operation {id} is {} and can no longer be cancelled", status.as_str())]
pub struct NotCancellable {
    pub id: OperationId,
    pub status: OpStatus,
}

/// The operation cancelled (by an operator, or a rollout that ends): only
/// one not started yet, or a partial release whose held blocks have not
/// followed. The reconciler withdraws its release requests afterwards.
pub fn cancelled(op: &OperationRecord, reason: &str) -> Result<OperationRecord, NotCancellable> {
    if !op.status.is_cancellable() {
        return Err(NotCancellable {
            id: op.id,
            status: op.status,
        });
    }
    let mut next = op.clone();
    next.status = OpStatus::Cancelled;
    next.progress.waiting_on.clear();
    next.progress.behind = None;
    if !reason.is_empty() {
        next.progress.error = Some(reason.to_owned());
    }
    Ok(next)
}

/// What the maintenance windows say about applying an operation now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowGate {
    /// The operation's kind needs no window.
    NotRequired,
    /// A window is open until the occurrence's end.
    Open(Occurrence),
    /// Closed; the next occurrence, if any is defined.
    Closed { next: Option<Occurrence> },
}

impl WindowGate {
    /// The occurrence a lock holder should be told about.
    pub fn occurrence(&self) -> Option<Occurrence> {
        match self {
            WindowGate::NotRequired => None,
            WindowGate::Open(o) => Some(*o),
            WindowGate::Closed { next } => *next,
        }
    }
}

/// What happens when a lock holder has put off a release request longer
/// than the fleet allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeferralExpiry {
    /// The operation turns `overdue` and an event is recorded; it keeps waiting.
    Notify,
    /// The holder's lock is overridden (a time-forced, audited force).
    Force,
}

impl DeferralExpiry {
    pub fn as_str(self) -> &'static str {
        match self {
            DeferralExpiry::Notify => "notify",
            DeferralExpiry::Force => "force",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "notify" => Some(DeferralExpiry::Notify),
            "force" => Some(DeferralExpiry::Force),
            _ => None,
        }
    }
}

/// A fleet's scheduling policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetPolicy {
    /// Operation kinds that wait for a maintenance window.
    pub needs_window: BTreeSet<String>,
    /// Operation kinds that need a customer's approval of a window occurrence.
    pub needs_approval: BTreeSet<String>,
    /// How long a holder may defer, counted from when it was first asked.
    pub max_deferral_ms: i64,
    /// `partial`: a release that impacts locked blocks updates the others now
    /// (and the locked ones when released); `atomic` (default) waits as a whole.
    pub partial_releases: bool,
    pub on_deferral_expiry: DeferralExpiry,
    /// When an approved occurrence passes unused: move the approval to the
    /// next occurrence by itself (`true`), or ask the customer again.
    pub missed_moves_to_next: bool,
}

impl FleetPolicy {
    /// The default deferral limit: a day.
    pub const DEFAULT_MAX_DEFERRAL_MS: i64 = 24 * 3600 * 1000;
}

impl Default for FleetPolicy {
    /// OS updates, reboots and shutdowns wait for a window; holders may defer
    /// a day, then the operation is reported overdue.
    fn default() -> Self {
        Self {
            needs_window: ["os_update", "reboot", "shutdown"]
                .into_iter()
                .map(str::to_owned)
                .collect(),
            needs_approval: ["os_update"].into_iter().map(str::to_owned).collect(),
            max_deferral_ms: Self::DEFAULT_MAX_DEFERRAL_MS,
            on_deferral_expiry: DeferralExpiry::Notify,
            partial_releases: false,
            missed_moves_to_next: false,
        }
    }
}

/// One setting of a fleet's policy, named as the API's update mask and the
/// CLI name it (`needs_window`, `max_deferral_seconds`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyField {
    NeedsWindow,
    NeedsApproval,
    MaxDeferral,
    OnDeferralExpiry,
    ReleaseMode,
    OnMissedOccurrence,
}

impl PolicyField {
    pub const ALL: [PolicyField; 6] = [
        PolicyField::NeedsWindow,
        PolicyField::NeedsApproval,
        PolicyField::MaxDeferral,
        PolicyField::OnDeferralExpiry,
        PolicyField::ReleaseMode,
        PolicyField::OnMissedOccurrence,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyField::NeedsWindow => "needs_window",
            PolicyField::NeedsApproval => "needs_approval",
            PolicyField::MaxDeferral => "max_deferral_seconds",
            PolicyField::OnDeferralExpiry => "on_deferral_expiry",
            PolicyField::ReleaseMode => "release_mode",
            PolicyField::OnMissedOccurrence => "on_missed_occurrence",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// Every field's name, for error messages: `needs_window, ...`.
    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

/// A change to a fleet's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyUpdate {
    /// The whole policy becomes this one.
    Replace(FleetPolicy),
    /// Only the named settings take their values from `values`; every
    /// other setting keeps what it was.
    Fields {
        values: FleetPolicy,
        fields: BTreeSet<PolicyField>,
    },
}

impl PolicyUpdate {
    /// The policy after this update of `current`.
    pub fn apply(&self, current: &FleetPolicy) -> FleetPolicy {
        let (values, fields) = match self {
            PolicyUpdate::Replace(p) => return p.clone(),
            PolicyUpdate::Fields { values, fields } => (values, fields),
        };
        let mut next = current.clone();
        for field in fields {
            match field {
                PolicyField::NeedsWindow => next.needs_window = values.needs_window.clone(),
                PolicyField::NeedsApproval => next.needs_approval = values.needs_approval.clone(),
                PolicyField::MaxDeferral => next.max_deferral_ms = values.max_deferral_ms,
                PolicyField::OnDeferralExpiry => {
                    next.on_deferral_expiry = values.on_deferral_expiry
                }
                PolicyField::ReleaseMode => next.partial_releases = values.partial_releases,
                PolicyField::OnMissedOccurrence => {
                    next.missed_moves_to_next = values.missed_moves_to_next;
                }
            }
        }
        next
    }
}

/// The blocks a partial release must leave as they run: every holder in the
/// way, and every disturbed block whose restart would restart a holder (the
/// `because_of` chain), so dependencies are respected.
pub fn held_back(
    holders: &[ReleaseRequest],
    impact: &super::impact::Impact,
) -> BTreeSet<BlockName> {
    let mut held: BTreeSet<BlockName> = holders.iter().map(|h| h.block.clone()).collect();
    let mut queue: Vec<BlockName> = held.iter().cloned().collect();
    while let Some(b) = queue.pop() {
        if let Some(cause) = impact.disturbed.get(&b).and_then(|d| d.because_of.clone())
            && held.insert(cause.clone())
        {
            queue.push(cause);
        }
    }
    held
}

/// Where a customer's approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalStatus {
    Requested,
    Approved,
    Declined,
    /// The approved occurrence ended before the operation could apply.
    Missed,
}

impl ApprovalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Requested => "requested",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Declined => "declined",
            ApprovalStatus::Missed => "missed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            ApprovalStatus::Requested,
            ApprovalStatus::Approved,
            ApprovalStatus::Declined,
            ApprovalStatus::Missed,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// A request for a customer to approve a window occurrence for an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub id: i64,
    pub operation: OperationId,
    pub status: ApprovalStatus,
    /// The occurrence approved.
    pub occurrence: Option<Occurrence>,
    pub decided_by: Option<String>,
    pub message: Option<String>,
}

/// What an operation that needs approval should do now, given its latest
/// approval (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalGate {
    /// No open request: ask the customer.
    Request,
    /// Waiting for the customer's answer.
    Waiting,
    /// Approved: the approved occurrence is the operation's only window.
    Approved(WindowGate),
    /// The approved occurrence passed unused: mark it missed and ask again.
    Missed,
    /// The customer declined.
    Declined,
}

pub fn approval_gate(latest: Option<&Approval>, now: Timestamp) -> ApprovalGate {
    let Some(a) = latest else {
        return ApprovalGate::Request;
    };
    match (a.status, a.occurrence) {
        (ApprovalStatus::Requested, _) => ApprovalGate::Waiting,
        (ApprovalStatus::Declined, _) => ApprovalGate::Declined,
        (ApprovalStatus::Missed, _) | (ApprovalStatus::Approved, None) => ApprovalGate::Request,
        (ApprovalStatus::Approved, Some(o)) if now >= o.end => ApprovalGate::Missed,
        (ApprovalStatus::Approved, Some(o)) if o.contains(now) => {
            ApprovalGate::Approved(WindowGate::Open(o))
        }
        (ApprovalStatus::Approved, Some(o)) => {
            ApprovalGate::Approved(WindowGate::Closed { next: Some(o) })
        }
    }
}

/// The occurrence an approval moves to after `missed`: the first candidate
/// starting at or after the missed one's end.
pub fn next_after_missed(candidates: &[Occurrence], missed: Occurrence) -> Option<Occurrence> {
    candidates
        .iter()
        .filter(|o| o.start >= missed.end)
        .min_by_key(|o| o.start)
        .copied()
}

/// The holders that have been waited on past the fleet's deferral limit
/// (counted from when each was first asked), in block order.
pub fn expired_holders(
    progress: &OpProgress,
    holders: &[ReleaseRequest],
    now: Timestamp,
    policy: &FleetPolicy,
) -> Vec<BlockName> {
    holders
        .iter()
        .filter(|h| {
            progress
                .asked_at
                .get(&h.block)
                .is_some_and(|t| now.0 >= t.0.saturating_add(policy.max_deferral_ms))
        })
        .map(|h| h.block.clone())
        .collect()
}

/// When the earliest of these holders' deferral limit runs out.
pub fn deferral_deadline(
    progress: &OpProgress,
    holders: &[ReleaseRequest],
    policy: &FleetPolicy,
) -> Option<Timestamp> {
    holders
        .iter()
        .filter_map(|h| progress.asked_at.get(&h.block))
        .map(|t| Timestamp(t.0.saturating_add(policy.max_deferral_ms)))
        .min()
}

impl FleetPolicy {
    /// Kinds that may be named in a policy.
    pub const KINDS: [&'static str; 8] = [
        "assign_release",
        "restart_block",
        "stop_block",
        "start_block",
        "reboot",
        "shutdown",
        "os_update",
        "apply_env",
    ];

    pub fn needs_window(&self, spec: &OperationSpec) -> bool {
        self.needs_window.contains(spec.kind())
    }

    pub fn needs_approval(&self, spec: &OperationSpec) -> bool {
        self.needs_approval.contains(spec.kind())
    }
}

/// The scheduler's next step for an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to send now (offline, in flight, or finished).
    Wait,
    /// Ask these holders to release (the ones not yet asked at their current
    /// generation); the operation waits on `waiting_on`.
    RequestRelease {
        send: Vec<ReleaseRequest>,
        waiting_on: Vec<ReleaseRequest>,
        /// The window the holders are told about (they may wait for it).
        window: Option<Occurrence>,
        /// Whether the operation also waits for that window to open.
        window_closed: bool,
    },
    /// Nothing holds the operation up but the window: wait for `next`.
    WaitWindow { next: Option<Occurrence> },
    /// Send the apply, fenced by the generations the decision saw. The
    /// agent does not take the locks of `forced` blocks.
    Apply {
        fence: BlockMap<Generation>,
        disturbed: BlockMap<Disturbance>,
        notices: BlockMap<Reason>,
        forced: Vec<BlockName>,
    },
    /// The operation cannot be performed on this device.
    Fail { error: String },
}

/// Decides the next step for `op` given the gate's decision on the device's
/// current state and whether its agent is connected.
pub fn next_step(
    op: &OperationRecord,
    decision: Result<Decision, ImpactError>,
    online: bool,
    window: WindowGate,
) -> Step {
    if op.status.is_terminal() || op.status == OpStatus::Applying {
        return Step::Wait;
    }
    let decision = match decision {
        Ok(d) => d,
        Err(e) => {
            return Step::Fail {
                error: e.to_string(),
            };
        }
    };
    if !online {
        return Step::Wait;
    }
    match decision {
        Decision::Blocked { holders, .. } => {
            let window_changed = window.occurrence() != op.progress.told_window;
            let send = holders
                .iter()
                .filter(|h| {
                    window_changed
                        || !op
                            .progress
                            .requested
                            .contains(&(h.block.clone(), h.generation))
                })
                .cloned()
                .collect();
            Step::RequestRelease {
                send,
                waiting_on: holders,
                window: window.occurrence(),
                window_closed: matches!(window, WindowGate::Closed { .. }),
            }
        }
        Decision::Proceed { .. } if matches!(window, WindowGate::Closed { .. }) => {
            Step::WaitWindow {
                next: window.occurrence(),
            }
        }
        Decision::Proceed {
            impact,
            fence,
            forced,
        } => Step::Apply {
            fence,
            disturbed: impact.disturbed,
            notices: impact.notices,
            forced,
        },
    }
}

/// An agent's answer to an apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    Applied,
    /// The atomic acquisition found these holders.
    Blocked {
        held_by: Vec<BlockName>,
    },
    /// The agent's lock generations had moved on since the decision.
    Stale,
    Failed {
        error: String,
    },
    /// The agent stopped while the apply ran and cannot tell whether it
    /// finished.
    Interrupted {
        message: String,
    },
}

/// How many interrupted applies an operation is decided again after; the
/// next interruption fails it (an action that keeps killing its agent must
/// not loop for ever).
pub const MAX_INTERRUPTIONS: u32 = 3;

/// How an apply's outcome moves the operation: done, failed, or back to
/// pending so the scheduler decides again on fresh lock state. An
/// interrupted apply is decided again (every action is idempotent: a
/// release, an env change, a restart, a reboot or an OS update applied
/// twice ends where it would have ended once) up to [`MAX_INTERRUPTIONS`]
/// times.
pub fn after_apply(op: &OperationRecord, outcome: &ApplyOutcome) -> (OpStatus, OpProgress) {
    let mut progress = op.progress.clone();
    progress.apply_seq = None;
    progress.phase = None;
    let partial = std::mem::take(&mut progress.partial_in_flight);
    match outcome {
        // A partial release landed: the held blocks are still to go.
        ApplyOutcome::Applied if partial => {
            progress.partially_applied = true;
            (OpStatus::PartiallyApplied, progress)
        }
        ApplyOutcome::Applied => {
            progress.waiting_on.clear();
            progress.partially_applied = false;
            (OpStatus::Done, progress)
        }
        ApplyOutcome::Blocked { .. } | ApplyOutcome::Stale => (OpStatus::Pending, progress),
        ApplyOutcome::Failed { error } => {
            progress.error = Some(error.clone());
            (OpStatus::Failed, progress)
        }
        ApplyOutcome::Interrupted { message } => {
            progress.interruptions = progress.interruptions.saturating_add(1);
            progress.interrupted = Some(message.clone());
            if progress.interruptions > MAX_INTERRUPTIONS {
                progress.error = Some(format!(
                    "interrupted {} times, last: {message}",
                    progress.interruptions
                ));
                (OpStatus::Failed, progress)
            } else {
                (OpStatus::Pending, progress)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_update_changes_only_the_fields_it_names() {
        let current = FleetPolicy::default();
        let kinds = |k: &[&str]| k.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        let values = FleetPolicy {
            needs_window: kinds(&["apply_env"]),
            needs_approval: BTreeSet::new(),
            max_deferral_ms: 60_000,
            on_deferral_expiry: DeferralExpiry::Force,
            partial_releases: true,
            missed_moves_to_next: true,
        };
        let only = |fields: &[PolicyField]| PolicyUpdate::Fields {
            values: values.clone(),
            fields: fields.iter().copied().collect(),
        };
        let cases: Vec<(&str, PolicyUpdate, FleetPolicy)> = vec![
            (
                "replace",
                PolicyUpdate::Replace(values.clone()),
                values.clone(),
            ),
            ("no field", only(&[]), current.clone()),
            (
                "needs_window",
                only(&[PolicyField::NeedsWindow]),
                FleetPolicy {
                    needs_window: kinds(&["apply_env"]),
                    ..current.clone()
                },
            ),
            (
                "needs_approval emptied, the rest kept",
                only(&[PolicyField::NeedsApproval]),
                FleetPolicy {
                    needs_approval: BTreeSet::new(),
                    ..current.clone()
                },
            ),
            (
                "deferral and expiry",
                only(&[PolicyField::MaxDeferral, PolicyField::OnDeferralExpiry]),
                FleetPolicy {
                    max_deferral_ms: 60_000,
                    on_deferral_expiry: DeferralExpiry::Force,
                    ..current.clone()
                },
            ),
            (
                "release mode",
                only(&[PolicyField::ReleaseMode]),
                FleetPolicy {
                    partial_releases: true,
                    ..current.clone()
                },
            ),
            (
                "missed occurrence",
                only(&[PolicyField::OnMissedOccurrence]),
                FleetPolicy {
                    missed_moves_to_next: true,
                    ..current.clone()
                },
            ),
            ("every field", only(&PolicyField::ALL), values.clone()),
        ];
        for (what, update, want) in cases {
            assert_eq!(update.apply(&current), want, "{what}");
        }
    }

    #[test]
    fn policy_fields_are_named_as_the_api_names_them() {
        for f in PolicyField::ALL {
            assert_eq!(PolicyField::parse(f.as_str()), Some(f));
        }
        for bad in [
            "",
            "fleet",
            "needsWindow",
            "policy.needs_window",
            "max_deferral_ms",
        ] {
            assert_eq!(PolicyField::parse(bad), None, "{bad}");
        }
    }
    use crate::domain::impact::Impact;

    fn b(s: &str) -> BlockName {
        BlockName::new(s).unwrap()
    }

    fn op(status: OpStatus) -> OperationRecord {
        OperationRecord {
            id: OperationId(1),
            device: DeviceId::new("d").unwrap(),
            spec: OperationSpec::Reboot,
            force: None,
            status,
            progress: OpProgress::default(),
            created: Timestamp(0),
            updated: Timestamp(0),
            generation: 0,
        }
    }

    fn rr(block: &str, g: u64) -> ReleaseRequest {
        ReleaseRequest {
            block: b(block),
            reason: Reason::Reboot,
            handover: false,
            because_of: None,
            generation: Generation(g),
        }
    }

    fn blocked(holders: Vec<ReleaseRequest>) -> Result<Decision, ImpactError> {
        Ok(Decision::Blocked {
            impact: Impact::default(),
            holders,
        })
    }

    fn proceed() -> Result<Decision, ImpactError> {
        Ok(Decision::Proceed {
            impact: Impact::default(),
            fence: BlockMap::new(),
            forced: vec![],
        })
    }

    #[test]
    fn next_step_table() {
        let mut asked = op(OpStatus::WaitingLock);
        asked.progress.requested.insert((b("a"), Generation(3)));
        type Row = (
            &'static str,
            OperationRecord,
            Result<Decision, ImpactError>,
            bool,
            Step,
        );
        let rows: Vec<Row> = vec![
            (
                "offline waits",
                op(OpStatus::Pending),
                proceed(),
                false,
                Step::Wait,
            ),
            (
                "applying waits for the ack",
                op(OpStatus::Applying),
                proceed(),
                true,
                Step::Wait,
            ),
            (
                "done stays done",
                op(OpStatus::Done),
                proceed(),
                true,
                Step::Wait,
            ),
            (
                "cancelled stays",
                op(OpStatus::Cancelled),
                blocked(vec![rr("a", 1)]),
                true,
                Step::Wait,
            ),
            (
                "clear: apply",
                op(OpStatus::Pending),
                proceed(),
                true,
                Step::Apply {
                    fence: BlockMap::new(),
                    disturbed: BlockMap::new(),
                    notices: BlockMap::new(),
                    forced: vec![],
                },
            ),
            (
                "forced: the overridden blocks travel with the apply",
                op(OpStatus::WaitingLock),
                Ok(Decision::Proceed {
                    impact: Impact::default(),
                    fence: BlockMap::new(),
                    forced: vec![b("a")],
                }),
                true,
                Step::Apply {
                    fence: BlockMap::new(),
                    disturbed: BlockMap::new(),
                    notices: BlockMap::new(),
                    forced: vec![b("a")],
                },
            ),
            (
                "blocked: ask the holder",
                op(OpStatus::Pending),
                blocked(vec![rr("a", 3)]),
                true,
                Step::RequestRelease {
                    send: vec![rr("a", 3)],
                    waiting_on: vec![rr("a", 3)],
                    window: None,
                    window_closed: false,
                },
            ),
            (
                "asked already at this generation: not again",
                asked.clone(),
                blocked(vec![rr("a", 3)]),
                true,
                Step::RequestRelease {
                    send: vec![],
                    waiting_on: vec![rr("a", 3)],
                    window: None,
                    window_closed: false,
                },
            ),
            (
                "lock changed since: ask again",
                asked.clone(),
                blocked(vec![rr("a", 5), rr("b", 1)]),
                true,
                Step::RequestRelease {
                    send: vec![rr("a", 5), rr("b", 1)],
                    waiting_on: vec![rr("a", 5), rr("b", 1)],
                    window: None,
                    window_closed: false,
                },
            ),
            (
                "impossible: fail",
                op(OpStatus::Pending),
                Err(ImpactError::NotRunning { block: b("x") }),
                true,
                Step::Fail {
                    error: "block x is not running on the device".into(),
                },
            ),
            (
                "impossible fails even offline",
                op(OpStatus::Pending),
                Err(ImpactError::NotRunning { block: b("x") }),
                false,
                Step::Fail {
                    error: "block x is not running on the device".into(),
                },
            ),
        ];
        for (what, op, decision, online, want) in rows {
            assert_eq!(
                next_step(&op, decision, online, WindowGate::NotRequired),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn windows_hold_back_the_apply_but_not_the_release_requests() {
        let occ = Occurrence {
            start: Timestamp(100),
            end: Timestamp(200),
        };
        let closed = WindowGate::Closed { next: Some(occ) };
        let rows: Vec<(&str, Result<Decision, ImpactError>, WindowGate, Step)> = vec![
            (
                "clear, window closed: wait for it",
                proceed(),
                closed,
                Step::WaitWindow { next: Some(occ) },
            ),
            (
                "clear, no window defined at all: wait",
                proceed(),
                WindowGate::Closed { next: None },
                Step::WaitWindow { next: None },
            ),
            (
                "clear, window open: apply",
                proceed(),
                WindowGate::Open(occ),
                Step::Apply {
                    fence: BlockMap::new(),
                    disturbed: BlockMap::new(),
                    notices: BlockMap::new(),
                    forced: vec![],
                },
            ),
            (
                "blocked, window closed: ask now, telling the window",
                blocked(vec![rr("a", 1)]),
                closed,
                Step::RequestRelease {
                    send: vec![rr("a", 1)],
                    waiting_on: vec![rr("a", 1)],
                    window: Some(occ),
                    window_closed: true,
                },
            ),
            (
                "asked already about this window: not again",
                Ok(Decision::Blocked {
                    impact: Impact::default(),
                    holders: vec![rr("a", 1)],
                }),
                WindowGate::Closed { next: Some(occ) },
                Step::RequestRelease {
                    send: vec![],
                    waiting_on: vec![rr("a", 1)],
                    window: Some(occ),
                    window_closed: true,
                },
            ),
            (
                "blocked, window open: ask, with the window's end as deadline",
                blocked(vec![rr("a", 1)]),
                WindowGate::Open(occ),
                Step::RequestRelease {
                    send: vec![rr("a", 1)],
                    waiting_on: vec![rr("a", 1)],
                    window: Some(occ),
                    window_closed: false,
                },
            ),
        ];
        for (what, decision, gate, want) in rows {
            let mut o = op(OpStatus::Pending);
            if what.starts_with("asked already") {
                o.progress.requested.insert((b("a"), Generation(1)));
                o.progress.told_window = Some(occ);
            }
            assert_eq!(next_step(&o, decision, true, gate), want, "{what}");
        }
        assert_eq!(WindowGate::NotRequired.occurrence(), None);
    }

    #[test]
    fn the_default_policy_puts_os_updates_reboots_and_shutdowns_in_windows() {
        let p = FleetPolicy::default();
        assert!(p.needs_window(&OperationSpec::Reboot));
        assert!(p.needs_window(&OperationSpec::Shutdown));
        assert!(p.needs_window(&OperationSpec::OsUpdate("2".into())));
        assert!(!p.needs_window(&OperationSpec::RestartBlock(b("a"))));
        assert!(!p.needs_window(&OperationSpec::ApplyEnv(EnvTarget::AllBlocks)));
        assert!(
            p.needs_window
                .iter()
                .all(|k| FleetPolicy::KINDS.contains(&k.as_str()))
        );
    }

    #[test]
    fn deferral_limits_count_from_the_first_request_table() {
        let policy = FleetPolicy {
            max_deferral_ms: 1_000,
            ..FleetPolicy::default()
        };
        let mut p = OpProgress::default();
        p.asked_at.insert(b("a"), Timestamp(100));
        p.asked_at.insert(b("b"), Timestamp(600));
        let holders = vec![rr("a", 1), rr("b", 1), rr("c", 1)];
        let rows: &[(i64, &[&str])] = &[
            (1_099, &[]),
            (1_100, &["a"]),
            (1_599, &["a"]),
            (1_600, &["a", "b"]),
            (9_999, &["a", "b"]),
        ];
        for (now, want) in rows {
            let got = expired_holders(&p, &holders, Timestamp(*now), &policy);
            let want: Vec<BlockName> = want.iter().map(|x| b(x)).collect();
            assert_eq!(got, want, "at {now}");
        }
        assert_eq!(
            deferral_deadline(&p, &holders, &policy),
            Some(Timestamp(1_100))
        );
        assert_eq!(
            deferral_deadline(&p, &[rr("c", 1)], &policy),
            None,
            "never asked: no deadline"
        );
        assert_eq!(DeferralExpiry::parse("force"), Some(DeferralExpiry::Force));
        assert_eq!(
            DeferralExpiry::parse(DeferralExpiry::Notify.as_str()),
            Some(DeferralExpiry::Notify)
        );
        assert_eq!(DeferralExpiry::parse("x"), None);
    }

    #[test]
    fn approval_gate_table() {
        let occ = Occurrence {
            start: Timestamp(100),
            end: Timestamp(200),
        };
        let a = |status, occurrence| Approval {
            id: 1,
            operation: OperationId(1),
            status,
            occurrence,
            decided_by: None,
            message: None,
        };
        use ApprovalStatus::*;
        let rows: Vec<(&str, Option<Approval>, i64, ApprovalGate)> = vec![
            ("never asked", None, 50, ApprovalGate::Request),
            (
                "asked, no answer",
                Some(a(Requested, None)),
                50,
                ApprovalGate::Waiting,
            ),
            (
                "declined",
                Some(a(Declined, None)),
                50,
                ApprovalGate::Declined,
            ),
            (
                "approved, before",
                Some(a(Approved, Some(occ))),
                50,
                ApprovalGate::Approved(WindowGate::Closed { next: Some(occ) }),
            ),
            (
                "approved, inside",
                Some(a(Approved, Some(occ))),
                150,
                ApprovalGate::Approved(WindowGate::Open(occ)),
            ),
            (
                "approved, at the end: missed",
                Some(a(Approved, Some(occ))),
                200,
                ApprovalGate::Missed,
            ),
            (
                "missed before: ask again",
                Some(a(Missed, Some(occ))),
                250,
                ApprovalGate::Request,
            ),
        ];
        for (what, latest, now, want) in rows {
            assert_eq!(
                approval_gate(latest.as_ref(), Timestamp(now)),
                want,
                "{what}"
            );
        }
        for s in [Requested, Approved, Declined, Missed] {
            assert_eq!(ApprovalStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(ApprovalStatus::parse("maybe"), None);
    }

    #[test]
    fn a_partial_apply_leaves_the_operation_partially_applied() {
        let mut o = op(OpStatus::Applying);
        o.progress.partial_in_flight = true;
        let (status, p) = after_apply(&o, &ApplyOutcome::Applied);
        assert_eq!(status, OpStatus::PartiallyApplied);
        assert!(p.partially_applied && !p.partial_in_flight);
        let mut o2 = op(OpStatus::Applying);
        o2.progress = p;
        let (status, p) = after_apply(&o2, &ApplyOutcome::Applied);
        assert_eq!(status, OpStatus::Done);
        assert!(!p.partially_applied);
    }

    #[test]
    fn held_back_follows_dependency_causes_to_respect_restart_edges() {
        use crate::domain::impact::{Disturbance, Impact};
        let dist = |because: Option<&str>| Disturbance {
            reason: if because.is_some() {
                Reason::DependencyRestart
            } else {
                Reason::UpdateRestart
            },
            handover: false,
            because_of: because.map(b),
            cause: None,
        };
        let impact = Impact {
            disturbed: [
                (b("x"), dist(None)),
                (b("y"), dist(Some("x"))),
                (b("z"), dist(Some("y"))),
                (b("w"), dist(None)),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        // z is locked: it restarts only because y does, which restarts because x does.
        assert_eq!(
            held_back(&[rr("z", 1)], &impact),
            [b("x"), b("y"), b("z")].into()
        );
        // w is locked for its own change: only w is held.
        assert_eq!(held_back(&[rr("w", 1)], &impact), [b("w")].into());
    }

    #[test]
    fn a_missed_occurrence_moves_to_the_first_one_after_it() {
        let o = |s: i64, e: i64| Occurrence {
            start: Timestamp(s),
            end: Timestamp(e),
        };
        let missed = o(10, 20);
        let rows: Vec<(&str, Vec<Occurrence>, Option<Occurrence>)> = vec![
            ("none left", vec![], None),
            (
                "only overlapping or earlier",
                vec![o(5, 15), o(15, 25)],
                None,
            ),
            (
                "the first after, whatever the order",
                vec![o(40, 50), o(20, 30), o(60, 70)],
                Some(o(20, 30)),
            ),
        ];
        for (what, candidates, want) in rows {
            assert_eq!(next_after_missed(&candidates, missed), want, "{what}");
        }
    }

    #[test]
    fn after_apply_table() {
        let mut applying = op(OpStatus::Applying);
        applying.progress.apply_seq = Some(IntentSeq(9));
        applying.progress.waiting_on = vec![rr("a", 1)];
        let rows = [
            (ApplyOutcome::Applied, OpStatus::Done),
            (
                ApplyOutcome::Blocked {
                    held_by: vec![b("a")],
                },
                OpStatus::Pending,
            ),
            (ApplyOutcome::Stale, OpStatus::Pending),
            (
                ApplyOutcome::Failed {
                    error: "boom".into(),
                },
                OpStatus::Failed,
            ),
        ];
        for (outcome, want) in rows {
            let (status, progress) = after_apply(&applying, &outcome);
            assert_eq!(status, want, "{outcome:?}");
            assert_eq!(progress.apply_seq, None);
            assert_eq!(progress.error.is_some(), want == OpStatus::Failed);
            assert_eq!(progress.waiting_on.is_empty(), want == OpStatus::Done);
        }
    }

    #[test]
    fn an_interrupted_apply_is_decided_again_until_the_limit() {
        let interrupted = ApplyOutcome::Interrupted {
            message: "the agent stopped during restart".into(),
        };
        // (interruptions before, status after, count after)
        let rows = [
            (0, OpStatus::Pending, 1),
            (MAX_INTERRUPTIONS - 1, OpStatus::Pending, MAX_INTERRUPTIONS),
            (MAX_INTERRUPTIONS, OpStatus::Failed, MAX_INTERRUPTIONS + 1),
        ];
        for (before, want, count) in rows {
            let mut applying = op(OpStatus::Applying);
            applying.progress.apply_seq = Some(IntentSeq(9));
            applying.progress.interruptions = before;
            let (status, progress) = after_apply(&applying, &interrupted);
            assert_eq!((status, progress.interruptions), (want, count), "{before}");
            assert_eq!(progress.apply_seq, None);
            assert_eq!(
                progress.interrupted.as_deref(),
                Some("the agent stopped during restart")
            );
            assert_eq!(
                progress.error.is_some(),
                want == OpStatus::Failed,
                "{before}"
            );
            if let Some(e) = progress.error {
                assert!(e.contains("interrupted 4 times"), "{e}");
            }
        }
    }

    #[test]
    fn statuses_round_trip_and_know_what_is_terminal() {
        for s in OpStatus::ALL {
            assert_eq!(OpStatus::parse(s.as_str()), Some(s));
        }
        let terminal: Vec<_> = OpStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            vec![
                OpStatus::Done,
                OpStatus::Failed,
                OpStatus::Cancelled,
                OpStatus::Superseded
            ]
        );
    }
}
