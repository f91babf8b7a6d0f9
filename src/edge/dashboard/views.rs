//! What the dashboard's JSON API returns: plain serde structs, converted
//! from domain values at this edge (domain types carry no serde). Times are
//! milliseconds since the Unix epoch; the pages format them.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::app::approvals::ApprovalView;
use crate::app::events::{Event, EventKind, RolloutNotice};
use crate::app::rollouts::RolloutStatus;
use crate::domain::{BatchCounts, Reason, Rollout, RolloutTarget, Strategy};
use crate::domain::{
    DeviceRecord, DeviceReport, DeviceStatus, LockState, Occurrence, OperationRecord,
    OperationSpec, ReleaseRequest, TimelineEntry, TimelineEvent,
};
use crate::store::intents::{ApplyOp, IntentBody};

/// The device statuses the overview counts, in the order it shows them.
pub const COUNTED: [DeviceStatus; 12] = [
    DeviceStatus::InSync,
    DeviceStatus::Pending,
    DeviceStatus::WaitingLock,
    DeviceStatus::WaitingWindow,
    DeviceStatus::WaitingApproval,
    DeviceStatus::Overdue,
    DeviceStatus::Offline,
    DeviceStatus::Applying,
    DeviceStatus::PartiallyApplied,
    DeviceStatus::Failed,
    DeviceStatus::Unknown,
    DeviceStatus::Done,
];

#[derive(Debug, Serialize)]
pub struct FleetsView {
    /// Status names in display order.
    pub statuses: Vec<&'static str>,
    pub fleets: Vec<FleetView>,
}

#[derive(Debug, Serialize)]
pub struct FleetView {
    pub id: String,
    pub name: String,
    pub devices: u64,
    /// Every status of `statuses`, zero included.
    pub counts: BTreeMap<&'static str, u64>,
}

impl FleetView {
    pub fn new(f: &crate::domain::Fleet, counts: Option<&BTreeMap<DeviceStatus, u64>>) -> Self {
        let counts: BTreeMap<&'static str, u64> = COUNTED
            .iter()
            .map(|s| {
                (
                    s.as_str(),
                    counts.and_then(|c| c.get(s)).copied().unwrap_or(0),
                )
            })
            .collect();
        FleetView {
            id: f.id.to_string(),
            name: f.name.clone(),
            devices: counts.values().sum(),
            counts,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DevicesView {
    pub devices: Vec<DeviceRow>,
    /// Pass as `page_token` for the next page.
    pub next_page_token: Option<String>,
}

/// A device in the fleet list: its status and what its current operation waits on.
#[derive(Debug, Serialize)]
pub struct DeviceRow {
    pub id: String,
    pub fleet: String,
    pub tags: Vec<String>,
    pub status: &'static str,
    pub operation: Option<OperationSummary>,
    pub waiting_on: Vec<WaitView>,
}

impl DeviceRow {
    pub fn new(d: &DeviceRecord, current: Option<&OperationRecord>) -> Self {
        DeviceRow {
            id: d.id.to_string(),
            fleet: d.fleet.to_string(),
            tags: d.tags.iter().map(ToString::to_string).collect(),
            status: d.status.as_str(),
            operation: current.map(OperationSummary::new),
            waiting_on: current.map(waits).unwrap_or_default(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct OperationSummary {
    pub id: i64,
    pub kind: &'static str,
    pub target: Option<String>,
    pub status: &'static str,
}

impl OperationSummary {
    pub fn new(op: &OperationRecord) -> Self {
        OperationSummary {
            id: op.id.0,
            kind: op.spec.kind(),
            target: target(&op.spec),
            status: op.shown_status(),
        }
    }
}

/// What an operation is about beyond its kind: a release, a block, an OS version.
fn target(spec: &OperationSpec) -> Option<String> {
    match spec {
        OperationSpec::AssignRelease(r) => Some(r.to_string()),
        OperationSpec::RestartBlock(b)
        | OperationSpec::StopBlock(b)
        | OperationSpec::StartBlock(b) => Some(b.to_string()),
        OperationSpec::OsUpdate(v) => Some(v.clone()),
        OperationSpec::ApplyEnv(crate::domain::EnvTarget::Blocks(b)) => Some(
            b.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
        OperationSpec::Reboot
        | OperationSpec::Shutdown
        | OperationSpec::ApplyEnv(crate::domain::EnvTarget::AllBlocks) => None,
    }
}

/// One lock holder an operation waits on, and why.
#[derive(Debug, Serialize)]
pub struct WaitView {
    pub block: String,
    pub reason: &'static str,
    pub handover: bool,
    /// The block whose restart drags this one along, if any.
    pub because_of: Option<String>,
    /// When the holder was first asked to release.
    pub asked_at_ms: Option<i64>,
    /// Until when the holder said it defers.
    pub deferred_until_ms: Option<i64>,
}

fn wait_view(op: &OperationRecord, r: &ReleaseRequest) -> WaitView {
    WaitView {
        block: r.block.to_string(),
        reason: r.reason.as_str(),
        handover: r.handover,
        because_of: r.because_of.as_ref().map(ToString::to_string),
        asked_at_ms: op.progress.asked_at.get(&r.block).map(|t| t.0),
        deferred_until_ms: op.progress.deferred_until.get(&r.block).map(|t| t.0),
    }
}

fn waits(op: &OperationRecord) -> Vec<WaitView> {
    op.progress
        .waiting_on
        .iter()
        .map(|r| wait_view(op, r))
        .collect()
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct OccurrenceView {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl From<&Occurrence> for OccurrenceView {
    fn from(o: &Occurrence) -> Self {
        OccurrenceView {
            start_ms: o.start.0,
            end_ms: o.end.0,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ForceView {
    pub blocks: Vec<String>,
    pub reason: String,
}

/// An operation with everything it waits on.
#[derive(Debug, Serialize)]
pub struct OperationView {
    pub id: i64,
    pub device: String,
    pub kind: &'static str,
    pub target: Option<String>,
    pub status: &'static str,
    pub waiting_on: Vec<WaitView>,
    /// The window occurrence lock holders were told about.
    pub window: Option<OccurrenceView>,
    /// While applying: the agent's last reported phase.
    pub phase: Option<String>,
    pub error: Option<String>,
    /// What the agent said about its last interrupted apply, if any (each
    /// interrupted apply is decided again).
    pub interrupted: Option<String>,
    pub interruptions: u32,
    pub force: Option<ForceView>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl OperationView {
    pub fn new(op: &OperationRecord) -> Self {
        OperationView {
            id: op.id.0,
            device: op.device.to_string(),
            kind: op.spec.kind(),
            target: target(&op.spec),
            status: op.shown_status(),
            waiting_on: waits(op),
            window: op.progress.told_window.as_ref().map(OccurrenceView::from),
            phase: op.progress.phase.clone(),
            error: op.progress.error.clone(),
            interrupted: op.progress.interrupted.clone(),
            interruptions: op.progress.interruptions,
            force: op.force.as_ref().map(|f| ForceView {
                blocks: f.blocks().iter().map(ToString::to_string).collect(),
                reason: f.reason().to_owned(),
            }),
            created_ms: op.created.0,
            updated_ms: op.updated.0,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct LockView {
    pub held: bool,
    pub generation: u64,
    pub since_ms: i64,
}

impl From<&LockState> for LockView {
    fn from(l: &LockState) -> Self {
        LockView {
            held: l.held,
            generation: l.generation.0,
            since_ms: l.since.0,
        }
    }
}

/// One block on a device: what runs, its lock, and whether the current
/// operation waits on it.
#[derive(Debug, Serialize)]
pub struct BlockRow {
    pub block: String,
    /// The running version, if the agent reported the block.
    pub version: Option<String>,
    /// `None` when the agent never reported this lock (free).
    pub lock: Option<LockView>,
    pub waited_on: Option<WaitView>,
}

#[derive(Debug, Serialize)]
pub struct ReportView {
    pub agent_version: String,
    pub current_release: Option<String>,
    pub os_version: Option<String>,
    pub last_intent_seq: u64,
    pub reported_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct DeviceInfo {
    pub id: String,
    pub fleet: String,
    pub tags: Vec<String>,
    pub status: &'static str,
    pub credential_revoked: bool,
    pub created_ms: i64,
}

/// The device page's data.
#[derive(Debug, Serialize)]
pub struct DeviceView {
    pub device: DeviceInfo,
    pub report: Option<ReportView>,
    pub blocks: Vec<BlockRow>,
    /// The operation in flight (the oldest unfinished one).
    pub operation: Option<OperationView>,
    /// The latest operations, newest first.
    pub recent_operations: Vec<OperationView>,
}

impl DeviceView {
    pub fn new(
        d: &DeviceRecord,
        report: Option<&DeviceReport>,
        locks: &BTreeMap<crate::domain::BlockName, LockState>,
        current: Option<&OperationRecord>,
        recent: &[OperationRecord],
    ) -> Self {
        let mut names: std::collections::BTreeSet<&crate::domain::BlockName> =
            locks.keys().collect();
        if let Some(r) = report {
            names.extend(r.blocks.keys());
        }
        let blocks = names
            .into_iter()
            .map(|b| BlockRow {
                block: b.to_string(),
                version: report
                    .and_then(|r| r.blocks.get(b))
                    .map(|rb| rb.version.to_string()),
                lock: locks.get(b).map(LockView::from),
                waited_on: current.and_then(|op| {
                    op.progress
                        .waiting_on
                        .iter()
                        .find(|r| r.block == *b)
                        .map(|r| wait_view(op, r))
                }),
            })
            .collect();
        DeviceView {
            device: DeviceInfo {
                id: d.id.to_string(),
                fleet: d.fleet.to_string(),
                tags: d.tags.iter().map(ToString::to_string).collect(),
                status: d.status.as_str(),
                credential_revoked: d.credential_revoked,
                created_ms: d.created.0,
            },
            report: report.map(|r| ReportView {
                agent_version: r.agent_version.clone(),
                current_release: r.current_release.as_ref().map(ToString::to_string),
                os_version: r.os_version.clone(),
                last_intent_seq: r.last_intent_seq.0,
                reported_ms: r.reported.0,
            }),
            blocks,
            operation: current.map(OperationView::new),
            recent_operations: recent.iter().map(OperationView::new).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TimelineView {
    pub entries: Vec<TimelineEntryView>,
}

/// One intent sent to the device, or one answer from it, in words.
#[derive(Debug, Serialize)]
pub struct TimelineEntryView {
    pub at_ms: i64,
    pub seq: u64,
    pub operation: Option<i64>,
    /// `sent` (to the device) or `acked` (an answer from it).
    pub direction: &'static str,
    /// The intent's kind (`release_request`, `apply`, ...) or the answer
    /// (`received`, `released`, `deferred`, `applied`, ...).
    pub kind: String,
    pub block: Option<String>,
    pub summary: String,
    /// For a deferral: until when.
    pub until_ms: Option<i64>,
}

impl From<&TimelineEntry> for TimelineEntryView {
    fn from(e: &TimelineEntry) -> Self {
        let (direction, kind, block, summary, until_ms) = match &e.event {
            TimelineEvent::Sent { kind, body } => {
                let (block, summary) = sent_summary(body);
                ("sent", kind.as_str().to_owned(), block, summary, None)
            }
            TimelineEvent::Acked { answer, body } => {
                let (block, summary, until) = ack_summary(answer, body);
                ("acked", answer.clone(), block, summary, until)
            }
        };
        TimelineEntryView {
            at_ms: e.at.0,
            seq: e.seq.0,
            operation: e.operation.map(|o| o.0),
            direction,
            kind,
            block,
            summary,
            until_ms,
        }
    }
}

fn apply_op_words(op: &ApplyOp) -> String {
    match op {
        ApplyOp::ReleaseUpdate { release, .. } => format!("move to release {release}"),
        ApplyOp::EnvUpdate { .. } => "apply the new env".to_owned(),
        ApplyOp::RestartBlock { block } => format!("restart {block}"),
        ApplyOp::StopBlock { block } => format!("stop {block}"),
        ApplyOp::StartBlock { block } => format!("start {}", block.name),
        ApplyOp::Reboot => "reboot".to_owned(),
        ApplyOp::Shutdown => "shut down".to_owned(),
        ApplyOp::OsUpdate { version } => format!("update the OS to {version}"),
    }
}

/// The block an intent is for (if one) and what it says.
fn sent_summary(body: &str) -> (Option<String>, String) {
    match IntentBody::from_json(body) {
        Ok(IntentBody::ReleaseRequest {
            block,
            reason,
            handover,
            target,
            ..
        }) => {
            let what = if target.is_empty() || target == reason {
                String::new()
            } else {
                format!(" for {target}")
            };
            let how = if handover { " (handover possible)" } else { "" };
            let summary = format!("asked {block} to release its lock: {reason}{what}{how}");
            (Some(block), summary)
        }
        Ok(IntentBody::Apply {
            operation,
            disturbed,
            forced,
            ..
        }) => {
            let mut s = apply_op_words(&operation);
            if !disturbed.is_empty() {
                let names: Vec<&str> = disturbed.iter().map(|d| d.block.as_str()).collect();
                s.push_str(&format!("; disturbs {}", names.join(", ")));
            }
            if !forced.is_empty() {
                s.push_str(&format!("; overrides the locks of {}", forced.join(", ")));
            }
            (None, s)
        }
        Ok(IntentBody::Notice { block, message, .. }) => (Some(block), message),
        Ok(IntentBody::Cancel { seq }) => (None, format!("withdraws intent {seq}")),
        Err(_) => (None, "(unreadable intent body)".to_owned()),
    }
}

/// The block an answer is from, what it says, and a deferral's end.
fn ack_summary(answer: &str, body: &str) -> (Option<String>, String, Option<i64>) {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let block = v["block"]
        .as_str()
        .filter(|b| !b.is_empty())
        .map(str::to_owned);
    let detail = &v["detail"];
    let text = |k: &str| detail[k].as_str().filter(|s| !s.is_empty());
    let until = detail["until_unix_ms"].as_i64();
    let summary = match answer {
        "received" => "received".to_owned(),
        "released" => "released the lock".to_owned(),
        "deferred" => match text("message") {
            Some(m) => format!("deferred: {m}"),
            None => "deferred".to_owned(),
        },
        "will_release_at_window" => "will release inside the window".to_owned(),
        "refused" => format!("refused: {}", text("message").unwrap_or("no reason given")),
        "applied" => "applied".to_owned(),
        "failed" => {
            let held: Vec<&str> = detail["held_by"]
                .as_array()
                .map(|a| a.iter().filter_map(|b| b.as_str()).collect())
                .unwrap_or_default();
            if held.is_empty() {
                format!("failed: {}", text("error").unwrap_or("no error given"))
            } else {
                format!("could not take the locks of {}", held.join(", "))
            }
        }
        "stale" => "refused as stale: a lock changed since the decision".to_owned(),
        other => other.to_owned(),
    };
    (block, summary, until)
}

#[derive(Debug, Serialize)]
pub struct ApprovalsView {
    pub approvals: Vec<ApprovalItem>,
}

/// An approval with the operation it is for and, while open, the
/// occurrences to choose from.
#[derive(Debug, Serialize)]
pub struct ApprovalItem {
    pub id: i64,
    pub status: &'static str,
    pub device: String,
    pub operation: OperationSummary,
    pub candidates: Vec<OccurrenceView>,
    pub approved: Option<OccurrenceView>,
    pub decided_by: Option<String>,
    pub message: Option<String>,
}

impl From<&ApprovalView> for ApprovalItem {
    fn from(v: &ApprovalView) -> Self {
        let a = &v.approval;
        ApprovalItem {
            id: a.id,
            status: a.status.as_str(),
            device: v.operation.device.to_string(),
            operation: OperationSummary::new(&v.operation),
            candidates: v.candidates.iter().map(OccurrenceView::from).collect(),
            approved: a.occurrence.as_ref().map(OccurrenceView::from),
            decided_by: a.decided_by.clone(),
            message: a.message.clone(),
        }
    }
}

/// One live event, as the `/api/events` stream sends it (`data:` JSON).
#[derive(Debug, Serialize)]
pub struct EventView {
    pub kind: &'static str,
    pub at_ms: i64,
    pub device: Option<String>,
    pub operation: Option<i64>,
    /// `block:reason` for `blocked_by_lock`, `block:held|free` for
    /// `lock_changed`, block names for `overdue`, `time_forced`, `deferred`.
    pub blocks: Vec<String>,
    pub message: Option<String>,
    /// For `deferred`: until when; for `waiting_window`: the next start.
    pub until_ms: Option<i64>,
    /// For `rollout`: which rollout changed, and how (`created`,
    /// `devices_started`, `batch_started`, `soaking`, `paused`, `resumed`,
    /// `aborted`, `completed`, `superseded`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
}

impl From<&RolloutNotice> for EventView {
    fn from(n: &RolloutNotice) -> Self {
        EventView {
            kind: "rollout",
            at_ms: n.at.0,
            device: None,
            operation: None,
            blocks: vec![],
            message: Some(n.message.clone()),
            until_ms: None,
            rollout: Some(n.rollout.0),
            change: Some(n.kind.clone()),
        }
    }
}

impl From<&Event> for EventView {
    fn from(e: &Event) -> Self {
        let (blocks, message, until_ms) = match &e.kind {
            EventKind::BlockedByLock { holders } => (holders.clone(), None, None),
            EventKind::LockChanged { locks } => (locks.clone(), None, None),
            EventKind::Overdue { blocks } | EventKind::TimeForced { blocks } => {
                (blocks.clone(), None, None)
            }
            EventKind::Deferred { block, until } => (vec![block.clone()], None, Some(until.0)),
            EventKind::WaitingWindow { next_start } => (vec![], None, next_start.map(|t| t.0)),
            EventKind::Failed { error } => (vec![], Some(error.clone()), None),
            EventKind::Interrupted { message } => (vec![], Some(message.clone()), None),
            EventKind::NewAgentEpoch { epoch } => {
                (vec![], Some(format!("agent epoch {epoch}")), None)
            }
            EventKind::Cancelled { reason } => (vec![], Some(reason.clone()), None),
            EventKind::Queued { behind } => {
                (vec![], Some(format!("behind operation {behind}")), None)
            }
            EventKind::ApprovalRequested
            | EventKind::Applying
            | EventKind::Applied
            | EventKind::Online
            | EventKind::Offline => (vec![], None, None),
        };
        EventView {
            kind: e.kind.name(),
            at_ms: e.at.0,
            device: Some(e.device.to_string()),
            operation: e.operation.map(|o| o.0),
            blocks,
            message,
            until_ms,
            rollout: None,
            change: None,
        }
    }
}

impl EventView {
    /// The watcher fell behind: `missed` events were dropped; re-read.
    pub fn lagged(missed: u64, now: crate::domain::Timestamp) -> Self {
        EventView {
            kind: "lagged",
            at_ms: now.0,
            device: None,
            operation: None,
            blocks: vec![],
            message: Some(format!("{missed} events missed; re-read the state")),
            until_ms: None,
            rollout: None,
            change: None,
        }
    }
}

/// A rollout's strategy; amounts read `3` (devices) or `25%`.
#[derive(Debug, Serialize)]
pub struct StrategyView {
    pub canary: u32,
    pub batches: Vec<String>,
    /// 0: no limit.
    pub max_in_flight: u32,
    pub soak_seconds: u64,
    pub success_threshold_percent: u8,
    pub error_threshold: String,
    /// `pause` or `abort`.
    pub on_error: &'static str,
}

impl From<&Strategy> for StrategyView {
    fn from(s: &Strategy) -> Self {
        StrategyView {
            canary: s.canary,
            batches: s.batches.iter().map(ToString::to_string).collect(),
            max_in_flight: s.max_in_flight,
            soak_seconds: s.soak_seconds,
            success_threshold_percent: s.success_threshold,
            error_threshold: s.error_threshold.to_string(),
            on_error: s.on_error.as_str(),
        }
    }
}

/// A rollout: what it brings where, and where it is.
#[derive(Debug, Serialize)]
pub struct RolloutInfoView {
    pub id: i64,
    pub fleet: String,
    /// Only the fleet's devices with this tag; `None`: all of them.
    pub tag: Option<String>,
    /// `release` or `os`.
    pub target_kind: &'static str,
    /// The release id, or the OS version.
    pub target: String,
    pub strategy: StrategyView,
    /// `running`, `paused`, `aborted`, `completed` or `superseded`.
    pub state: &'static str,
    /// Running or paused: it may still change.
    pub active: bool,
    /// The batch being worked on (0-based); earlier ones met their threshold.
    pub current_batch: u32,
    /// Devices in batches; `skipped` already ran the target.
    pub devices: u64,
    pub skipped: u64,
    /// Why it paused, aborted or was superseded; empty otherwise.
    pub message: String,
    pub created_by: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl From<&Rollout> for RolloutInfoView {
    fn from(r: &Rollout) -> Self {
        let (target_kind, target) = match &r.target {
            RolloutTarget::Release(id) => ("release", id.to_string()),
            RolloutTarget::OsVersion(v) => ("os", v.clone()),
        };
        RolloutInfoView {
            id: r.id.0,
            fleet: r.fleet.to_string(),
            tag: r.selector.as_ref().map(ToString::to_string),
            target_kind,
            target,
            strategy: StrategyView::from(&r.strategy),
            state: r.progress.state.as_str(),
            active: r.progress.state.is_active(),
            current_batch: r.progress.current_batch,
            devices: r.devices,
            skipped: r.skipped,
            message: r.message.clone(),
            created_by: r.created_by.clone(),
            created_ms: r.created.0,
            updated_ms: r.updated.0,
        }
    }
}

/// Member devices by where they are in the rollout.
#[derive(Debug, Default, Serialize)]
pub struct CountsView {
    pub size: u64,
    /// Not started yet.
    pub queued: u64,
    /// Started, not finished (waiting on a lock, window or approval, or applying).
    pub in_flight: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Cancelled or superseded.
    pub cancelled: u64,
}

impl CountsView {
    /// Every batch added up.
    pub fn total(batches: &[BatchCounts]) -> Self {
        let mut sum = BatchCounts::default();
        for b in batches {
            sum.queued += b.queued;
            sum.in_flight += b.in_flight;
            sum.succeeded += b.succeeded;
            sum.failed += b.failed;
            sum.cancelled += b.cancelled;
        }
        CountsView::from(&sum)
    }
}

impl From<&BatchCounts> for CountsView {
    fn from(b: &BatchCounts) -> Self {
        CountsView {
            size: b.size(),
            queued: b.queued,
            in_flight: b.in_flight,
            succeeded: b.succeeded,
            failed: b.failed,
            cancelled: b.cancelled,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct BatchView {
    /// 0-based, in plan order (with a canary, batch 0 is the canary).
    pub index: u32,
    /// The batch being worked on.
    pub current: bool,
    #[serde(flatten)]
    pub counts: CountsView,
}

/// A rollout in the list, with its overall progress.
#[derive(Debug, Serialize)]
pub struct RolloutItem {
    #[serde(flatten)]
    pub rollout: RolloutInfoView,
    pub batches: usize,
    pub progress: CountsView,
}

impl RolloutItem {
    pub fn new(r: &Rollout, batches: &[BatchCounts]) -> Self {
        RolloutItem {
            rollout: RolloutInfoView::from(r),
            batches: batches.len(),
            progress: CountsView::total(batches),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RolloutsView {
    /// Newest first.
    pub rollouts: Vec<RolloutItem>,
}

#[derive(Debug, Serialize)]
pub struct StatusCountView {
    pub status: &'static str,
    pub devices: u64,
}

/// Devices whose operation waits for one block's lock, for one reason.
#[derive(Debug, Serialize)]
pub struct LockWaitView {
    pub block: String,
    /// The wire spelling (`update_restart`, `os_update`, ...).
    pub reason: &'static str,
    /// The same in words.
    pub reason_text: &'static str,
    pub devices: u64,
}

/// What a rollout page shows: the rollout, progress overall and per batch,
/// members by device status, and which blocks' locks hold devices up.
#[derive(Debug, Serialize)]
pub struct RolloutStatusView {
    pub rollout: RolloutInfoView,
    pub progress: CountsView,
    pub batches: Vec<BatchView>,
    /// Member devices by device status (display order; none with 0).
    pub device_statuses: Vec<StatusCountView>,
    /// Most devices first.
    pub waiting_lock: Vec<LockWaitView>,
    /// While the current batch soaks: when the soak ends.
    pub soak_until_ms: Option<i64>,
    /// When this status was read (the server's clock).
    pub at_ms: i64,
}

impl RolloutStatusView {
    pub fn new(s: &RolloutStatus, at: crate::domain::Timestamp) -> Self {
        let current = s.rollout.progress.current_batch;
        let mut device_statuses: Vec<StatusCountView> = s
            .device_statuses
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(st, n)| StatusCountView {
                status: st.as_str(),
                devices: *n,
            })
            .collect();
        let order = |st: &str| COUNTED.iter().position(|c| c.as_str() == st);
        device_statuses.sort_by_key(|c| order(c.status).unwrap_or(usize::MAX));
        let mut waiting_lock: Vec<LockWaitView> = s
            .waiting_lock
            .iter()
            .map(|((block, reason), n)| LockWaitView {
                block: block.to_string(),
                reason: reason.as_str(),
                reason_text: reason_text(*reason),
                devices: *n,
            })
            .collect();
        // Stable: equal counts stay in block, then reason order.
        waiting_lock.sort_by_key(|w| std::cmp::Reverse(w.devices));
        RolloutStatusView {
            rollout: RolloutInfoView::from(&s.rollout),
            progress: CountsView::total(&s.batches),
            batches: s
                .batches
                .iter()
                .enumerate()
                .map(|(i, b)| BatchView {
                    index: i as u32,
                    current: i as u32 == current && s.rollout.progress.state.is_active(),
                    counts: CountsView::from(b),
                })
                .collect(),
            device_statuses,
            waiting_lock,
            soak_until_ms: s.soak_until.map(|t| t.0),
            at_ms: at.0,
        }
    }
}

/// Why a lock holder is asked to release, in words.
pub fn reason_text(r: Reason) -> &'static str {
    match r {
        Reason::UpdateRestart => "the release replaces this block, so it restarts",
        Reason::UpdateNoRestart => "a release lands that leaves this block untouched",
        Reason::EnvChange => "this block's env changes, so it restarts",
        Reason::Restart => "an operator restarts this block",
        Reason::Stop => "this block is stopped",
        Reason::DependencyRestart => "a block this one depends on restarts",
        Reason::Reboot => "the device reboots",
        Reason::Shutdown => "the device shuts down",
        Reason::OsUpdate => "the OS is updated (a reboot)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_as_words_with_their_block() {
        let body = r#"{"block":"a","detail":{"until_unix_ms":99,"message":"mid-cycle"}}"#;
        assert_eq!(
            ack_summary("deferred", body),
            (Some("a".into()), "deferred: mid-cycle".into(), Some(99))
        );
        let body = r#"{"block":"","detail":{"error":"","held_by":["a","b"]}}"#;
        assert_eq!(
            ack_summary("failed", body),
            (None, "could not take the locks of a, b".into(), None)
        );
    }

    #[test]
    fn intents_read_as_words_with_their_block() {
        let rr = IntentBody::ReleaseRequest {
            block: "a".into(),
            reason: "os_update".into(),
            handover: false,
            because_of: None,
            generation: 3,
            target: "2.0".into(),
            window: None,
            deadline_ms: None,
        };
        assert_eq!(
            sent_summary(&rr.to_json()),
            (
                Some("a".into()),
                "asked a to release its lock: os_update for 2.0".into()
            )
        );
        let apply = IntentBody::Apply {
            operation: ApplyOp::Reboot,
            fence: vec![],
            disturbed: vec![crate::store::intents::DisturbedBlock {
                block: "a".into(),
                reason: "reboot".into(),
                handover: false,
                because_of: None,
            }],
            forced: vec!["a".into()],
        };
        assert_eq!(
            sent_summary(&apply.to_json()).1,
            "reboot; disturbs a; overrides the locks of a"
        );
        assert_eq!(sent_summary("not json").0, None);
    }

    #[test]
    fn a_rollout_status_lists_waits_in_words_most_devices_first_and_statuses_in_display_order() {
        use crate::domain::{BlockName, FleetId, ReleaseId, RolloutId, RolloutProgress, Timestamp};
        let block = |b: &str| BlockName::new(b).unwrap();
        let status = RolloutStatus {
            rollout: Rollout {
                id: RolloutId(4),
                fleet: FleetId::new("site").unwrap(),
                selector: None,
                target: RolloutTarget::Release(ReleaseId::new("r3").unwrap()),
                strategy: Strategy {
                    canary: 1,
                    ..Strategy::default()
                },
                seed: 7,
                progress: RolloutProgress {
                    current_batch: 1,
                    ..RolloutProgress::started()
                },
                devices: 5,
                skipped: 1,
                message: String::new(),
                created_by: "ops".into(),
                created: Timestamp(1),
                updated: Timestamp(2),
            },
            batches: vec![
                BatchCounts {
                    succeeded: 1,
                    ..BatchCounts::default()
                },
                BatchCounts {
                    in_flight: 3,
                    queued: 1,
                    ..BatchCounts::default()
                },
            ],
            device_statuses: [
                (DeviceStatus::WaitingLock, 3),
                (DeviceStatus::InSync, 2),
                (DeviceStatus::Failed, 0),
            ]
            .into(),
            waiting_lock: [
                ((block("a"), Reason::Reboot), 1),
                ((block("controller"), Reason::UpdateRestart), 2),
            ]
            .into(),
            soak_until: None,
        };
        let v = RolloutStatusView::new(&status, Timestamp(3));
        assert_eq!(
            (v.rollout.target_kind, v.rollout.target.as_str()),
            ("release", "r3")
        );
        assert_eq!((v.rollout.state, v.rollout.active), ("running", true));
        assert_eq!(
            (v.progress.size, v.progress.succeeded, v.progress.in_flight),
            (5, 1, 3)
        );
        assert_eq!(
            v.batches.iter().map(|b| b.current).collect::<Vec<_>>(),
            vec![false, true]
        );
        let waits: Vec<(&str, &str, u64)> = v
            .waiting_lock
            .iter()
            .map(|w| (w.block.as_str(), w.reason, w.devices))
            .collect();
        assert_eq!(
            waits,
            vec![("controller", "update_restart", 2), ("a", "reboot", 1)]
        );
        assert!(v.waiting_lock[0].reason_text.contains("replaces"));
        let statuses: Vec<&str> = v.device_statuses.iter().map(|c| c.status).collect();
        assert_eq!(statuses, vec!["in_sync", "waiting_lock"]);
        for r in Reason::ALL {
            assert!(!reason_text(r).is_empty());
        }
    }

    #[test]
    fn fleet_counts_name_every_status_with_zeros() {
        let f = crate::domain::Fleet {
            id: crate::domain::FleetId::new("site").unwrap(),
            name: "Site".into(),
            created: crate::domain::Timestamp(1),
        };
        let counts = [(DeviceStatus::WaitingLock, 2), (DeviceStatus::Offline, 1)].into();
        let v = FleetView::new(&f, Some(&counts));
        assert_eq!(v.devices, 3);
        assert_eq!(v.counts["waiting_lock"], 2);
        assert_eq!(v.counts["in_sync"], 0);
        assert_eq!(v.counts.len(), COUNTED.len());
    }
}
