//! Customer approval of maintenance-window occurrences: what waits for a
//! decision, approving one upcoming occurrence, declining with a message.
//! One implementation, called by the gRPC `WindowService` and by the web
//! dashboard, so the two edges can never decide differently. The scheduler
//! acts on the recorded decision (`domain::approval_gate`); this module only
//! checks who asks (`domain::allows`: reading needs the approval's fleet in
//! scope, deciding a customer or admin token), records the decision, audits
//! it naming the token, and wakes the device.

use crate::clock;
use std::collections::HashMap;

use crate::background::scheduler::Wakeups;
use crate::domain::{
    Action, Approval, ApprovalStatus, AuditEntry, Denied, DeviceId, FleetId, Occurrence,
    OperationRecord, Principal, WindowRule, allows, role_allows,
};
use crate::edge::limits::{MAX_ACTOR_BYTES, MAX_TEXT_BYTES};
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
    /// The token may not read or decide this approval.
    #[error(transparent)]
    Denied(#[from] Denied),
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
    /// The fleet of the operation's device.
    pub fleet: FleetId,
    /// Upcoming occurrences to choose from; empty once decided.
    pub candidates: Vec<Occurrence>,
}

/// The note beside the deciding token (the request's `actor` field):
/// optional, at most [`MAX_ACTOR_BYTES`], no NUL character.
pub fn actor_note(s: &str) -> Result<&str, ApprovalError> {
    if s.len() > MAX_ACTOR_BYTES {
        return Err(ApprovalError::invalid(
            "actor",
            format!("{} bytes; at most {MAX_ACTOR_BYTES}", s.len()),
        ));
    }
    if s.contains('\0') {
        return Err(ApprovalError::invalid("actor", "contains a NUL character"));
    }
    Ok(s)
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

/// A role that never decides is refused before anything is looked up.
fn may_decide(p: &Principal) -> Result<(), Denied> {
    if role_allows(p.role, Action::DecideApprovals) {
        Ok(())
    } else {
        Err(Denied::Role {
            role: p.role,
            action: Action::DecideApprovals,
        })
    }
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
    async fn view(
        &self,
        approval: Approval,
        fleet: FleetId,
    ) -> Result<ApprovalView, ApprovalError> {
        let operation = self.store.get_operation(approval.operation).await?;
        let candidates = if approval.status == ApprovalStatus::Requested {
            upcoming_occurrences(&self.store, &operation.device, CANDIDATES_OFFERED).await?
        } else {
            vec![]
        };
        Ok(ApprovalView {
            approval,
            operation,
            fleet,
            candidates,
        })
    }

    /// The fleet an approval belongs to: its operation's device's.
    async fn fleet_of(
        &self,
        approval: &Approval,
    ) -> Result<(OperationRecord, FleetId), StoreError> {
        let op = self.store.get_operation(approval.operation).await?;
        let fleet = self.store.get_device(&op.device).await?.fleet;
        Ok((op, fleet))
    }

    /// The approvals `p` may see with `status` (all when `None`), oldest
    /// first; with `newest`, only that many of the most recent.
    pub async fn list(
        &self,
        p: &Principal,
        status: Option<ApprovalStatus>,
        newest: Option<usize>,
    ) -> Result<Vec<ApprovalView>, ApprovalError> {
        // The role first: a token that may not read approvals learns nothing.
        if let Err(Denied::Role { role, action }) = allows(p, Action::ReadApprovals, None) {
            return Err(Denied::Role { role, action }.into());
        }
        let mut fleets: HashMap<DeviceId, FleetId> = HashMap::new();
        let mut visible = Vec::new();
        for a in self.store.list_approvals(status).await? {
            let op = self.store.get_operation(a.operation).await?;
            let fleet = match fleets.get(&op.device) {
                Some(f) => f.clone(),
                None => {
                    let f = self.store.get_device(&op.device).await?.fleet;
                    fleets.insert(op.device.clone(), f.clone());
                    f
                }
            };
            if p.sees(&fleet) {
                visible.push((a, fleet));
            }
        }
        if let Some(n) = newest {
            visible.drain(..visible.len().saturating_sub(n));
        }
        let mut out = Vec::with_capacity(visible.len());
        for (a, fleet) in visible {
            out.push(self.view(a, fleet).await?);
        }
        Ok(out)
    }

    /// Approves one of the device's upcoming occurrences: it becomes the
    /// operation's only window. Refuses an occurrence that is not one of the
    /// device's next [`CANDIDATES_ACCEPTED`], and an approval no longer open.
    /// `note` is who the client says decides (optional, kept beside the token).
    pub async fn approve(
        &self,
        p: &Principal,
        id: i64,
        occurrence: Option<Occurrence>,
        note: &str,
    ) -> Result<ApprovalView, ApprovalError> {
        may_decide(p)?;
        let note = actor_note(note)?;
        let chosen = occurrence.ok_or_else(|| {
            ApprovalError::invalid("occurrence", "one of the candidate occurrences is required")
        })?;
        let current = self.store.get_approval(id).await?;
        let (op, fleet) = self.fleet_of(&current).await?;
        allows(p, Action::DecideApprovals, Some(&fleet))?;
        if !upcoming_occurrences(&self.store, &op.device, CANDIDATES_ACCEPTED)
            .await?
            .contains(&chosen)
        {
            return Err(ApprovalError::invalid(
                "occurrence",
                "is not an upcoming occurrence of a window of this device; pick one of the candidates",
            ));
        }
        let actor_name = p.actor_noting(note);
        self.decide(
            id,
            fleet,
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
        p: &Principal,
        id: i64,
        message: &str,
        note: &str,
    ) -> Result<ApprovalView, ApprovalError> {
        let note = actor_note(note)?;
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
        may_decide(p)?;
        let current = self.store.get_approval(id).await?;
        let (_, fleet) = self.fleet_of(&current).await?;
        allows(p, Action::DecideApprovals, Some(&fleet))?;
        let actor_name = p.actor_noting(note);
        self.decide(
            id,
            fleet,
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
        fleet: FleetId,
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
                fleet: Some(fleet.clone()),
                reason: next.message.clone().unwrap_or_default(),
                details: serde_json::json!({
                    "occurrence": next.occurrence.map(|o| (o.start.0, o.end.0)),
                })
                .to_string(),
            })
            .await?;
        self.wakeups.wake(&op.device);
        self.view(next, fleet).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_actor_note_is_optional_and_kept_to_256_bytes_without_nul() {
        assert_eq!(actor_note("").unwrap(), "");
        assert_eq!(actor_note(&"x".repeat(256)).unwrap().len(), 256);
        assert!(matches!(
            actor_note(&"x".repeat(257)),
            Err(ApprovalError::Invalid { field, .. }) if field == "actor"
        ));
        assert!(matches!(
            actor_note("a\0b"),
            Err(ApprovalError::Invalid { field, .. }) if field == "actor"
        ));
        assert_eq!(actor_note("customer@site").unwrap(), "customer@site");
    }
}
