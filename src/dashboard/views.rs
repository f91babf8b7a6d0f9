//! What the dashboard's JSON API returns: plain serde structs, converted
//! from domain values at this edge (domain types carry no serde). Times are
//! milliseconds since the Unix epoch; the pages format them.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::approvals::ApprovalView;
use crate::domain::{
    DeviceRecord, DeviceReport, DeviceStatus, LockState, Occurrence, OperationRecord,
    OperationSpec, ReleaseRequest, TimelineEntry, TimelineEvent,
};
use crate::events::{Event, EventKind};
use crate::intents::{ApplyOp, IntentBody};

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
        OperationSpec::Reboot | OperationSpec::Shutdown | OperationSpec::ApplyEnv => None,
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
            EventKind::Cancelled { reason } => (vec![], Some(reason.clone()), None),
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
        }
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
            disturbed: vec![crate::intents::DisturbedBlock {
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
