//! What happened to a device or its operations, as the reconciler and the
//! agent's stream report it: the vocabulary of live events. Pure data; the
//! shell (`src/events.rs`) carries them to watchers.

use super::ids::{OperationId, Timestamp};

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
            EventKind::Overdue { .. } => "overdue",
            EventKind::TimeForced { .. } => "time_forced",
            EventKind::Cancelled { .. } => "cancelled",
            EventKind::LockChanged { .. } => "lock_changed",
            EventKind::Online => "online",
            EventKind::Offline => "offline",
        }
    }
}
