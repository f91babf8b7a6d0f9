//! `AuditService`: the audit log — forces, approvals and declines,
//! cancellations, rollout actions, token changes, the scheduler's own
//! overrides — read oldest first, filtered by action, subject and fleet. A
//! token scoped to fleets reads only its fleets' entries.

use tonic::{Request, Response, Status};

use super::access::{check, principal, within};
use super::convert::{ConvertError, at_most};
use super::pb::{self, audit_service_server::AuditService};
use super::status_from_store;
use crate::domain::{Action, FleetId};
use crate::edge::limits::MAX_AUDIT_FILTER_BYTES;
use crate::store::{AuditFilter, Store};

pub struct AuditApi<S> {
    store: S,
}

impl<S: Store> AuditApi<S> {
    pub fn new(store: S) -> Self {
        Self { store }
    }
}

/// Most entries one call returns.
const MAX_LIMIT: u32 = 1000;

#[tonic::async_trait]
impl<S: Store> AuditService for AuditApi<S> {
    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let after = i64::try_from(req.after_id)
            .map_err(|_| ConvertError::new("after_id", "out of range"))?;
        let fleet = match req.fleet.as_str() {
            "" => None,
            f => Some(FleetId::new(f).map_err(|e| ConvertError::new("fleet", e))?),
        };
        let text = |field: &str, s: String| -> Result<Option<String>, ConvertError> {
            at_most(field, &s, MAX_AUDIT_FILTER_BYTES)?;
            Ok((!s.is_empty()).then_some(s))
        };
        let within = match &fleet {
            Some(f) => {
                check(&p, Action::ReadAudit, Some(f))?;
                None
            }
            None => within(&p, Action::ReadAudit)?,
        };
        let filter = AuditFilter {
            after,
            limit: match req.limit {
                0 => 100,
                n => n.min(MAX_LIMIT),
            },
            action: text("action", req.action)?,
            subject: text("subject", req.subject)?,
            fleet,
            within,
        };
        let entries = self
            .store
            .list_audit(&filter)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(pb::ListAuditResponse {
            entries: entries
                .into_iter()
                .map(|(id, e)| pb::AuditEntry {
                    id: u64::try_from(id).unwrap_or(0),
                    at_unix_ms: e.at.0,
                    actor: e.actor,
                    action: e.action,
                    subject: e.subject,
                    fleet: e.fleet.map(|f| f.to_string()).unwrap_or_default(),
                    reason: e.reason,
                    details_json: e.details,
                })
                .collect(),
        }))
    }
}
