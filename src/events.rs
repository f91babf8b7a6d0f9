//! Live events for dashboards and customers: what just happened to which
//! device's operation (approval requested, blocked by a lock, deferred,
//! waiting for a window, applying, applied, failed, overdue, time-forced).
//! A bounded broadcast in this process; the database stays the truth (the
//! same facts are in operations and the audit log), so a watcher that lags
//! is told so and re-reads state.

use tokio::sync::broadcast;

use crate::domain::{DeviceId, OperationId, RolloutId, Timestamp};

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
    Applying,
    Applied,
    Failed {
        error: String,
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
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::ApprovalRequested => "approval_requested",
            EventKind::BlockedByLock { .. } => "blocked_by_lock",
            EventKind::WaitingWindow { .. } => "waiting_window",
            EventKind::Deferred { .. } => "deferred",
            EventKind::Applying => "applying",
            EventKind::Applied => "applied",
            EventKind::Failed { .. } => "failed",
            EventKind::Overdue { .. } => "overdue",
            EventKind::TimeForced { .. } => "time_forced",
            EventKind::Cancelled { .. } => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: Timestamp,
    pub device: DeviceId,
    pub operation: Option<OperationId>,
    pub kind: EventKind,
}

/// Something happened to a rollout (a batch started, it soaked, paused,
/// resumed, aborted, completed): watchers re-read its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutNotice {
    pub at: Timestamp,
    pub rollout: RolloutId,
    /// batch_started, soaking, paused, resumed, aborted, completed,
    /// superseded, devices_started, created.
    pub kind: &'static str,
    pub message: String,
}

/// The event bus. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
    rollouts: broadcast::Sender<RolloutNotice>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new(1024)
    }
}

impl Events {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        let (rollouts, _) = broadcast::channel(capacity.max(1));
        Self { tx, rollouts }
    }

    pub fn publish(&self, device: &DeviceId, operation: Option<OperationId>, kind: EventKind) {
        // No watcher is not an error.
        let _ = self.tx.send(Event {
            at: crate::clock::now(),
            device: device.clone(),
            operation,
            kind,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    pub fn publish_rollout(&self, rollout: RolloutId, kind: &'static str, message: String) {
        let _ = self.rollouts.send(RolloutNotice {
            at: crate::clock::now(),
            rollout,
            kind,
            message,
        });
    }

    pub fn subscribe_rollouts(&self) -> broadcast::Receiver<RolloutNotice> {
        self.rollouts.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watchers_see_what_is_published_after_they_subscribe() {
        let events = Events::new(4);
        let d = DeviceId::new("d").unwrap();
        events.publish(&d, None, EventKind::Applying);
        let mut rx = events.subscribe();
        events.publish(&d, Some(OperationId(1)), EventKind::Applied);
        let e = rx.recv().await.unwrap();
        assert_eq!(
            (e.kind.name(), e.operation),
            ("applied", Some(OperationId(1)))
        );
        for _ in 0..10 {
            events.publish(&d, None, EventKind::Applying);
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }
}
