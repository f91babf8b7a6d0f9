//! Operations as operators and rollouts change them outside the reconciler:
//! cancelling. One path for every caller, so they cannot disagree.

use crate::app::events::{EventKind, Events};
use crate::background::scheduler::Wakeups;
use crate::domain::{self, AuditEntry, FleetId, NotCancellable, OperationId, OperationRecord};
use crate::store::{Store, StoreError};

/// Why a cancel did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error(transparent)]
    NotCancellable(#[from] NotCancellable),
    /// It changed meanwhile (started applying, answered): fetch and retry.
    #[error("operation {id} changed meanwhile; fetch it and retry")]
    Changed { id: OperationId },
    #[error("store")]
    Store(#[source] StoreError),
}

/// Who cancels and why.
pub struct Cancel<'a> {
    /// The audit actor (a token's name), or `None` for no audit entry (a
    /// rollout's own cancels are audited as the rollout's action).
    pub actor: Option<String>,
    pub fleet: FleetId,
    pub reason: &'a str,
}

/// Cancels `op` if it is cancellable: the new status and its audit entry in
/// one transaction guarded by the operation's generation; then the event,
/// and the reconciler is woken to withdraw its release requests and
/// project the device's status.
pub async fn cancel<S: Store>(
    store: &S,
    events: &Events,
    wakeups: &Wakeups,
    op: &OperationRecord,
    who: Cancel<'_>,
    now: domain::Timestamp,
) -> Result<OperationRecord, CancelError> {
    let next = domain::cancelled(op, who.reason)?;
    let audit = who.actor.map(|actor| AuditEntry {
        at: now,
        actor,
        action: "operation_cancelled".into(),
        subject: format!("device {} operation {}", op.device, op.id),
        fleet: Some(who.fleet.clone()),
        reason: who.reason.to_owned(),
        details: "{}".into(),
    });
    let event = domain::NewEvent::device(
        &who.fleet,
        &op.device,
        Some(op.id),
        EventKind::Cancelled {
            reason: who.reason.to_owned(),
        },
    );
    let done = match store
        .transition_operation(&next, audit.as_ref(), &[event], now)
        .await
    {
        Ok(done) => done,
        Err(StoreError::Conflict { .. }) => return Err(CancelError::Changed { id: op.id }),
        Err(e) => return Err(CancelError::Store(e)),
    };
    events.appended();
    wakeups.wake(&op.device);
    Ok(done)
}
