//! What happened to a device, its operations or a rollout, as the
//! reconciler, the agent's stream and the rollout controller report it: the
//! vocabulary of the event log. Pure data; the store appends it in the
//! transaction that causes it and `src/app/events.rs` carries it to
//! watchers on every replica.

use super::ids::{AgentEpoch, DeviceId, FleetId, OperationId, ReplicaId, Timestamp};
use super::rollout::RolloutId;

/// What an event log entry is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventBody {
    /// Something happened to a device or one of its operations.
    Device(EventKind),
    /// Something happened to a rollout (batch_started, soaking, paused,
    /// resumed, aborted, completed, superseded, devices_started, created):
    /// watchers re-read its status.
    Rollout { kind: String, message: String },
}

/// An event to append to the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Whose it is: a watcher's scope and filter.
    pub fleet: FleetId,
    pub device: Option<DeviceId>,
    pub operation: Option<OperationId>,
    pub rollout: Option<RolloutId>,
    pub body: EventBody,
}

impl NewEvent {
    /// An event of a device (and maybe one of its operations).
    pub fn device(
        fleet: &FleetId,
        device: &DeviceId,
        operation: Option<OperationId>,
        kind: EventKind,
    ) -> Self {
        Self {
            fleet: fleet.clone(),
            device: Some(device.clone()),
            operation,
            rollout: None,
            body: EventBody::Device(kind),
        }
    }

    /// A rollout's notice.
    pub fn rollout(fleet: &FleetId, rollout: RolloutId, kind: &str, message: String) -> Self {
        Self {
            fleet: fleet.clone(),
            device: None,
            operation: None,
            rollout: Some(rollout),
            body: EventBody::Rollout {
                kind: kind.to_owned(),
                message,
            },
        }
    }
}

/// An event as the log holds it: numbered in commit order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    /// Global, gap-free only per committed transaction, increasing in
    /// commit order: a watcher resumes after the last one it saw.
    pub seq: u64,
    pub at: Timestamp,
    pub event: NewEvent,
}

/// A device's agent session as stored: which replica holds the stream and
/// the session's epoch (bumped by every new stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSession {
    /// `None`: no stream; the device is offline.
    pub replica: Option<ReplicaId>,
    pub epoch: u64,
    /// The holding replica's lease runs out then.
    pub lease_until: Option<Timestamp>,
}

impl AgentSession {
    /// Whether a live stream holds the device at `now`: a replica holds it
    /// and that replica's lease has not run out.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.replica.is_some() && self.lease_until.is_some_and(|until| until > now)
    }

    /// Whether another live replica than `me` holds the device's stream:
    /// that replica reconciles it and delivers its intents.
    pub fn held_elsewhere(&self, me: &ReplicaId, now: Timestamp) -> bool {
        self.is_live(now) && self.replica.as_ref() != Some(me)
    }
}

/// What a hello's agent epoch means for the device's lock fence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentLife {
    /// The same agent life as before (or an agent that names none): its
    /// reports are fenced against the generations already known.
    Same,
    /// The first epoch the server learns for this device (the agent
    /// predates epochs, or the device is new): recorded, nothing reset.
    First(AgentEpoch),
    /// Another life than the one recorded: its generations start over, so
    /// the known lock states are forgotten and its first report is taken
    /// whatever its generations (logged and audited).
    New(AgentEpoch),
}

/// Compares the epoch a hello names with the one recorded for the device.
pub fn agent_life(recorded: Option<&AgentEpoch>, hello: Option<&AgentEpoch>) -> AgentLife {
    match (recorded, hello) {
        (_, None) => AgentLife::Same,
        (None, Some(e)) => AgentLife::First(e.clone()),
        (Some(r), Some(e)) if r == e => AgentLife::Same,
        (Some(_), Some(e)) => AgentLife::New(e.clone()),
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    ApprovalRequested,
    /// Waiting on these holders (`block:reason`).
    BlockedByLock {
        holders: Vec<String>,
    },
    WaitingWindow {
        next_start: Option<Timestamp>,
    },
    Deferred {
        block: String,
        until: Timestamp,
    },
    /// Waits for an earlier operation it conflicts with, or for the apply
    /// in flight.
    Queued {
        behind: OperationId,
    },
    Applying,
    Applied,
    Failed {
        error: String,
    },
    /// The agent stopped during the apply and could not tell whether it
    /// finished; the operation is decided again.
    Interrupted {
        message: String,
    },
    /// The device's agent started a new life (its state was created anew):
    /// its lock generations start over, fenced by this new epoch.
    NewAgentEpoch {
        epoch: String,
    },
    Overdue {
        blocks: Vec<String>,
    },
    TimeForced {
        blocks: Vec<String>,
    },
    Cancelled {
        reason: String,
    },
    /// The agent reported these locks (`block:held` or `block:free`).
    LockChanged {
        locks: Vec<String>,
    },
    /// The device's agent connected.
    Online,
    /// The device's agent disconnected.
    Offline,
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::ApprovalRequested => "approval_requested",
            EventKind::BlockedByLock { .. } => "blocked_by_lock",
            EventKind::WaitingWindow { .. } => "waiting_window",
            EventKind::Deferred { .. } => "deferred",
            EventKind::Queued { .. } => "queued",
            EventKind::Applying => "applying",
            EventKind::Applied => "applied",
            EventKind::Failed { .. } => "failed",
            EventKind::Interrupted { .. } => "interrupted",
            EventKind::NewAgentEpoch { .. } => "new_agent_epoch",
            EventKind::Overdue { .. } => "overdue",
            EventKind::TimeForced { .. } => "time_forced",
            EventKind::Cancelled { .. } => "cancelled",
            EventKind::LockChanged { .. } => "lock_changed",
            EventKind::Online => "online",
            EventKind::Offline => "offline",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_different_agent_epoch_starts_a_new_life() {
        let e = |s: &str| AgentEpoch::new(s).unwrap();
        let cases = [
            (None, None, AgentLife::Same),
            (Some(e("a")), None, AgentLife::Same),
            (None, Some(e("a")), AgentLife::First(e("a"))),
            (Some(e("a")), Some(e("a")), AgentLife::Same),
            (Some(e("a")), Some(e("b")), AgentLife::New(e("b"))),
        ];
        for (recorded, hello, want) in cases {
            assert_eq!(
                agent_life(recorded.as_ref(), hello.as_ref()),
                want,
                "{recorded:?} then {hello:?}"
            );
        }
    }

    #[test]
    fn a_session_is_live_while_its_replica_holds_it_within_the_lease() {
        let r1 = ReplicaId::new("r1").unwrap();
        let r2 = ReplicaId::new("r2").unwrap();
        let session = |replica: Option<&ReplicaId>, lease: Option<i64>| AgentSession {
            replica: replica.cloned(),
            epoch: 3,
            lease_until: lease.map(Timestamp),
        };
        // (session, now, live, held elsewhere than r1)
        let cases = [
            (session(Some(&r2), Some(100)), 99, true, true),
            (session(Some(&r2), Some(100)), 100, false, false),
            (session(Some(&r1), Some(100)), 50, true, false),
            (session(None, Some(100)), 50, false, false),
            (session(Some(&r2), None), 50, false, false),
        ];
        for (s, now, live, elsewhere) in cases {
            assert_eq!(s.is_live(Timestamp(now)), live, "{s:?} at {now}");
            assert_eq!(
                s.held_elsewhere(&r1, Timestamp(now)),
                elsewhere,
                "{s:?} at {now}"
            );
        }
    }
}
