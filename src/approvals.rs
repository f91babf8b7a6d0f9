//! Customer approval of maintenance-window occurrences: what waits for a
//! decision, approving one upcoming occurrence, declining with a message.
//! One implementation, called by the gRPC `WindowService` and by the web
//! dashboard, so the two edges can never decide differently. The scheduler
//! acts on the recorded decision (`domain::approval_gate`); this module only
//! records it, audits it and wakes the device.

use crate::clock;
use crate::domain::{
    Approval, ApprovalStatus, AuditEntry, DeviceId, Occurrence, OperationRecord, WindowRule,
};
use crate::limits::{MAX_ACTOR_BYTES, MAX_TEXT_BYTES};
use crate::scheduler::Wakeups;
use crate::store::{Store, StoreError};

/// Why an approval could not be listed or decided.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// The request is wrong; `field` names what to fix.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// Not found, already decided (`Conflict`), or the database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApprovalError {
    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        ApprovalError::Invalid {
            field,
            message: message.into(),
        }
    }
}

/// How many upcoming occurrences an open request offers the customer.
pub const CANDIDATES_OFFERED: usize = 5;
/// An approved occurrence must be among the device's next this many.
pub const CANDIDATES_ACCEPTED: usize = 50;

/// An approval with what a customer needs to decide it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalView {
    pub approval: Approval,
    pub operation: OperationRecord,
    /// Upcoming occurrences to choose from; empty once decided.
    pub candidates: Vec<Occurrence>,
}

/// Who decides: required, at most [`MAX_ACTOR_BYTES`].
pub fn actor(s: &str) -> Result<String, ApprovalError> {
    if s.trim().is_empty() {
        return Err(ApprovalError::invalid("actor", "who decides is required"));
    }
    if s.len() > MAX_ACTOR_BYTES {
        return Err(ApprovalError::invalid(
            "actor",
            format!("{} bytes; at most {MAX_ACTOR_BYTES}", s.len()),
        ));
    }
    if s.contains('\0') {
        return Err(ApprovalError::invalid("actor", "contains a NUL character"));
    }
    Ok(s.to_owned())
}

/// The device's next `count` window occurrences (of every window that
/// applies to it), earliest first, without duplicates.
pub async fn upcoming_occurrences<S: Store>(
    store: &S,
    device: &DeviceId,
    count: usize,
) -> Result<Vec<Occurrence>, StoreError> {
    let rules: Vec<WindowRule> = store
        .windows_for_device(device)
        .await?
        .into_iter()
        .map(|w| w.rule)
        .collect();
    let now = clock::now();
    let mut all: Vec<_> = rules
        .iter()
        .flat_map(|r| r.occurrences(now, count))
        .collect();
    all.sort();
    all.dedup();
    all.truncate(count);
    Ok(all)
}

/// Lists and decides approvals over a store; wakes the device's scheduler
/// after a decision.
pub struct Approvals<S> {
    store: S,
    wakeups: Wakeups,
}

impl<S: Store> Approvals<S> {
    pub fn new(store: S, wakeups: Wakeups) -> Self {
        Self { store, wakeups }
    }

    /// The approval with its operation and, while it is open, its candidates.
    pub async fn view(&self, approval: Approval) -> Result<ApprovalView, ApprovalError> {
        let operation = self.store.get_operation(approval.operation).await?;
        let candidates = if approval.status == ApprovalStatus::Requested {
            upcoming_occurrences(&self.store, &operation.device, CANDIDATES_OFFERED).await?
        } else {
            vec![]
        };
        Ok(ApprovalView {
            approval,
            operation,
            candidates,
        })
    }

    /// Approvals with `status` (all when `None`), oldest first; with
    /// `newest`, only that many of the most recent.
    pub async fn list(
        &self,
        status: Option<ApprovalStatus>,
        newest: Option<usize>,
    ) -> Result<Vec<ApprovalView>, ApprovalError> {
        let mut list = self.store.list_approvals(status).await?;
        if let Some(n) = newest {
            list.drain(..list.len().saturating_sub(n));
        }
        let mut out = Vec::with_capacity(list.len());
        for a in list {
            out.push(self.view(a).await?);
        }
        Ok(out)
    }

    /// Approves one of the device's upcoming occurrences: it becomes the
    /// operation's only window. Refuses an occurrence that is not one of the
    /// device's next [`CANDIDATES_ACCEPTED`], and an approval no longer open.
    pub async fn approve(
        &self,
        id: i64,
        occurrence: Option<Occurrence>,
        actor_name: &str,
    ) -> Result<ApprovalView, ApprovalError> {
        let actor_name = actor(actor_name)?;
        let chosen = occurrence.ok_or_else(|| {
            ApprovalError::invalid("occurrence", "one of the candidate occurrences is required")
        })?;
        let current = self.store.get_approval(id).await?;
        let op = self.store.get_operation(current.operation).await?;
        if !upcoming_occurrences(&self.store, &op.device, CANDIDATES_ACCEPTED)
            .await?
            .contains(&chosen)
        {
            return Err(ApprovalError::invalid(
                "occurrence",
                "is not an upcoming occurrence of a window of this device; pick one of the candidates",
            ));
        }
        self.decide(
            id,
            |a| Approval {
                status: ApprovalStatus::Approved,
                occurrence: Some(chosen),
                decided_by: Some(actor_name.clone()),
                ..a.clone()
            },
            "approval_approved",
            &actor_name,
        )
        .await
    }

    /// Declines with a message; the scheduler then cancels the operation,
    /// naming who declined and why.
    pub async fn decline(
        &self,
        id: i64,
        message: &str,
        actor_name: &str,
    ) -> Result<ApprovalView, ApprovalError> {
        let actor_name = actor(actor_name)?;
        if message.len() > MAX_TEXT_BYTES {
            return Err(ApprovalError::invalid(
                "message",
                format!("{} bytes; at most {MAX_TEXT_BYTES}", message.len()),
            ));
        }
        if message.contains('\0') {
            return Err(ApprovalError::invalid(
                "message",
                "contains a NUL character",
            ));
        }
        self.decide(
            id,
            |a| Approval {
                status: ApprovalStatus::Declined,
                decided_by: Some(actor_name.clone()),
                message: Some(message.to_owned()),
                ..a.clone()
            },
            "approval_declined",
            &actor_name,
        )
        .await
    }

    /// Records a decision on an open approval (`Conflict` if it is no longer
    /// open), audits it and wakes the device.
    async fn decide(
        &self,
        id: i64,
        decision: impl FnOnce(&Approval) -> Approval,
        action: &str,
        actor_name: &str,
    ) -> Result<ApprovalView, ApprovalError> {
        let current = self.store.get_approval(id).await?;
        let next = decision(&current);
        let now = clock::now();
        self.store
            .decide_approval(id, ApprovalStatus::Requested, &next, now)
            .await?;
        let op = self.store.get_operation(current.operation).await?;
        self.store
            .append_audit(&AuditEntry {
                at: now,
                actor: actor_name.to_owned(),
                action: action.to_owned(),
                subject: format!("device {} operation {} approval {id}", op.device, op.id),
                reason: next.message.clone().unwrap_or_default(),
                details: serde_json::json!({
                    "occurrence": next.occurrence.map(|o| (o.start.0, o.end.0)),
                })
                .to_string(),
            })
            .await?;
        self.wakeups.wake(&op.device);
        self.view(next).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_actor_is_required_and_kept_to_256_characters() {
        assert!(matches!(
            actor("  "),
            Err(ApprovalError::Invalid { field: "actor", .. })
        ));
        assert_eq!(actor(&"x".repeat(256)).unwrap().len(), 256);
        assert!(matches!(
            actor(&"x".repeat(257)),
            Err(ApprovalError::Invalid { field, .. }) if field == "actor"
        ));
        assert_eq!(actor("customer@site").unwrap(), "customer@site");
    }
}
