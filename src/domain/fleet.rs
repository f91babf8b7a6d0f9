//! Fleets, devices and what device agents report: the records the catalog and
//! device APIs move around, as plain values.

use std::collections::{BTreeMap, BTreeSet};

use super::block::Fingerprint;
use super::device::LockState;
use super::ids::{BlockName, DeviceId, FleetId, IntentSeq, OperationId, ReleaseId, Tag, Timestamp};

/// A fleet: the unit releases, policies and env variables attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    pub id: FleetId,
    pub name: String,
    pub created: Timestamp,
}

/// Where a device stands, as dashboards see it. A device waiting on a lock
/// or a window is not failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceStatus {
    /// Registered, never connected.
    Unknown,
    InSync,
    Pending,
    WaitingApproval,
    WaitingWindow,
    WaitingLock,
    Overdue,
    Offline,
    Applying,
    PartiallyApplied,
    Done,
    Failed,
}

impl DeviceStatus {
    pub const ALL: [DeviceStatus; 12] = [
        DeviceStatus::Unknown,
        DeviceStatus::InSync,
        DeviceStatus::Pending,
        DeviceStatus::WaitingApproval,
        DeviceStatus::WaitingWindow,
        DeviceStatus::WaitingLock,
        DeviceStatus::Overdue,
        DeviceStatus::Offline,
        DeviceStatus::Applying,
        DeviceStatus::PartiallyApplied,
        DeviceStatus::Done,
        DeviceStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Unknown => "unknown",
            DeviceStatus::InSync => "in_sync",
            DeviceStatus::Pending => "pending",
            DeviceStatus::WaitingApproval => "waiting_approval",
            DeviceStatus::WaitingWindow => "waiting_window",
            DeviceStatus::WaitingLock => "waiting_lock",
            DeviceStatus::Overdue => "overdue",
            DeviceStatus::Offline => "offline",
            DeviceStatus::Applying => "applying",
            DeviceStatus::PartiallyApplied => "partially_applied",
            DeviceStatus::Done => "done",
            DeviceStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub id: DeviceId,
    pub fleet: FleetId,
    pub tags: BTreeSet<Tag>,
    pub status: DeviceStatus,
    pub credential_revoked: bool,
    pub created: Timestamp,
}

/// One block as the agent reports it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedBlock {
    pub version: semver::Version,
    pub env_fingerprint: Fingerprint,
}

/// What a device agent reports it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceReport {
    pub agent_version: String,
    pub current_release: Option<ReleaseId>,
    pub os_version: Option<String>,
    pub blocks: BTreeMap<BlockName, ReportedBlock>,
    /// The last intent sequence the agent has handled.
    pub last_intent_seq: IntentSeq,
    pub reported: Timestamp,
}

/// One lock report from an agent, as the ingest path receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockReport {
    pub device: DeviceId,
    pub block: BlockName,
    pub state: LockState,
}

/// Keeps, per (device, block), only the newest generation of a batch, so a
/// batch can be applied as one set-based upsert. Order of the output is by
/// (device, block).
pub fn newest_per_lock(batch: &[LockReport]) -> Vec<&LockReport> {
    let mut newest: BTreeMap<(&DeviceId, &BlockName), &LockReport> = BTreeMap::new();
    for r in batch {
        newest
            .entry((&r.device, &r.block))
            .and_modify(|cur| {
                if r.state.generation > cur.state.generation {
                    *cur = r;
                }
            })
            .or_insert(r);
    }
    newest.into_values().collect()
}

/// The kinds of intent the platform sends a device agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntentKind {
    /// Ask one block's lock holder to release (with the reason).
    ReleaseRequest,
    /// Apply an operation, fenced by the lock generations it was decided against.
    Apply,
    /// Informational (e.g. `UPDATE_NO_RESTART`).
    Notice,
    /// Withdraw an earlier intent.
    Cancel,
}

impl IntentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IntentKind::ReleaseRequest => "release_request",
            IntentKind::Apply => "apply",
            IntentKind::Notice => "notice",
            IntentKind::Cancel => "cancel",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            IntentKind::ReleaseRequest,
            IntentKind::Apply,
            IntentKind::Notice,
            IntentKind::Cancel,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// An intent to append to a device's outbox. The body is the serialised
/// intent the agent receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIntent {
    pub kind: IntentKind,
    pub body: String,
    pub operation: Option<OperationId>,
}

/// An intent as stored in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredIntent {
    pub device: DeviceId,
    pub seq: IntentSeq,
    pub kind: IntentKind,
    pub body: String,
    pub operation: Option<OperationId>,
    pub created: Timestamp,
    pub acked: Option<Timestamp>,
}

/// One entry of a device's timeline of intents and answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    pub at: Timestamp,
    /// The intent the entry is about.
    pub seq: IntentSeq,
    pub operation: Option<OperationId>,
    pub event: TimelineEvent,
}

/// What happened to an intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimelineEvent {
    /// Stored in the device's outbox (sent whenever its agent is connected).
    Sent { kind: IntentKind, body: String },
    /// The agent answered (`received`, `released`, `deferred`, `applied`, ...).
    Acked { answer: String, body: String },
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: Timestamp,
    /// Who: an API token (`name (token id)`, with what the client said it
    /// acts for), or `scheduler`.
    pub actor: String,
    pub action: String,
    pub subject: String,
    /// The fleet the subject belongs to; `None` for what belongs to none
    /// (tokens).
    pub fleet: Option<FleetId>,
    pub reason: String,
    pub details: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::Generation;

    fn report(dev: &str, block: &str, g: u64) -> LockReport {
        LockReport {
            device: DeviceId::new(dev).unwrap(),
            block: BlockName::new(block).unwrap(),
            state: LockState {
                held: g % 2 == 1,
                generation: Generation(g),
                since: Timestamp(g as i64),
            },
        }
    }

    #[test]
    fn newest_per_lock_keeps_the_highest_generation_in_any_order() {
        let batch = vec![
            report("d1", "a", 3),
            report("d1", "a", 5),
            report("d1", "a", 4),
            report("d2", "a", 1),
            report("d1", "b", 2),
        ];
        let out: Vec<(String, String, u64)> = newest_per_lock(&batch)
            .into_iter()
            .map(|r| {
                (
                    r.device.to_string(),
                    r.block.to_string(),
                    r.state.generation.0,
                )
            })
            .collect();
        assert_eq!(
            out,
            vec![
                ("d1".into(), "a".into(), 5),
                ("d1".into(), "b".into(), 2),
                ("d2".into(), "a".into(), 1)
            ]
        );
    }

    #[test]
    fn status_and_intent_kind_names_round_trip() {
        for s in DeviceStatus::ALL {
            assert_eq!(DeviceStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(DeviceStatus::parse("nope"), None);
        for k in [
            IntentKind::ReleaseRequest,
            IntentKind::Apply,
            IntentKind::Notice,
            IntentKind::Cancel,
        ] {
            assert_eq!(IntentKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(IntentKind::parse(""), None);
    }
}
