//! `OperationService`: operators record operations on devices; the scheduler
//! decides when each may be applied. Forces and cancellations are audited.

use std::collections::BTreeSet;

use tonic::{Request, Response, Status};

use super::convert::{ConvertError, block_name, disturbance_to_pb};
use super::pb::{self, operation_service_server::OperationService};
use super::status_from_store;
use crate::clock;
use crate::domain::FleetId;
use crate::domain::{
    AuditEntry, DeviceId, Disturbance, Force, OpStatus, OperationId, OperationRecord,
    OperationSpec, ReleaseId,
};
use crate::events::{Event, EventKind, Events, Watch, Watched};
use crate::scheduler::Wakeups;
use crate::store::{Store, StoreError};
use crate::telemetry;

pub struct Operations<S> {
    store: S,
    wakeups: Wakeups,
    events: Events,
}

impl<S: Store> Operations<S> {
    pub fn new(store: S, wakeups: Wakeups, events: Events) -> Self {
        Self {
            store,
            wakeups,
            events,
        }
    }
}

fn event_to_pb(e: &Event) -> pb::Event {
    let (blocks, message) = match &e.kind {
        EventKind::BlockedByLock { holders } => (holders.clone(), String::new()),
        EventKind::Overdue { blocks } | EventKind::TimeForced { blocks } => {
            (blocks.clone(), String::new())
        }
        EventKind::Deferred { block, until } => (vec![block.clone()], until.0.to_string()),
        EventKind::WaitingWindow { next_start } => (
            vec![],
            next_start.map(|t| t.0.to_string()).unwrap_or_default(),
        ),
        EventKind::Failed { error } => (vec![], error.clone()),
        EventKind::Cancelled { reason } => (vec![], reason.clone()),
        EventKind::LockChanged { locks } => (locks.clone(), String::new()),
        EventKind::ApprovalRequested
        | EventKind::Applying
        | EventKind::Applied
        | EventKind::Online
        | EventKind::Offline => (vec![], String::new()),
    };
    pb::Event {
        at_unix_ms: e.at.0,
        device: e.device.to_string(),
        operation_id: e
            .operation
            .map(|o| u64::try_from(o.0).unwrap_or(0))
            .unwrap_or(0),
        kind: e.kind.name().to_owned(),
        blocks,
        message,
    }
}

fn spec_from_pb(m: Option<pb::OperationSpec>) -> Result<OperationSpec, ConvertError> {
    use pb::operation_spec::Kind;
    let kind = m
        .and_then(|s| s.kind)
        .ok_or_else(|| ConvertError::new("spec", "an operation kind is required"))?;
    Ok(match kind {
        Kind::AssignRelease(r) => OperationSpec::AssignRelease(
            ReleaseId::new(r).map_err(|e| ConvertError::new("spec.assign_release", e))?,
        ),
        Kind::RestartBlock(b) => OperationSpec::RestartBlock(block_name("spec.restart_block", &b)?),
        Kind::StopBlock(b) => OperationSpec::StopBlock(block_name("spec.stop_block", &b)?),
        Kind::StartBlock(b) => OperationSpec::StartBlock(block_name("spec.start_block", &b)?),
        Kind::Reboot(_) => OperationSpec::Reboot,
        Kind::Shutdown(_) => OperationSpec::Shutdown,
        Kind::ApplyEnv(_) => OperationSpec::ApplyEnv,
        Kind::OsUpdate(v) => {
            if v.is_empty() || v.len() > 128 {
                return Err(ConvertError::new(
                    "spec.os_update",
                    "an OS version of 1 to 128 bytes is required",
                ));
            }
            OperationSpec::OsUpdate(v)
        }
    })
}

fn spec_to_pb(s: &OperationSpec) -> pb::OperationSpec {
    use pb::operation_spec::{Empty, Kind};
    let kind = match s {
        OperationSpec::AssignRelease(r) => Kind::AssignRelease(r.to_string()),
        OperationSpec::RestartBlock(b) => Kind::RestartBlock(b.to_string()),
        OperationSpec::StopBlock(b) => Kind::StopBlock(b.to_string()),
        OperationSpec::StartBlock(b) => Kind::StartBlock(b.to_string()),
        OperationSpec::Reboot => Kind::Reboot(Empty {}),
        OperationSpec::Shutdown => Kind::Shutdown(Empty {}),
        OperationSpec::OsUpdate(v) => Kind::OsUpdate(v.clone()),
        OperationSpec::ApplyEnv => Kind::ApplyEnv(Empty {}),
    };
    pb::OperationSpec { kind: Some(kind) }
}

fn force_from_pb(m: Option<pb::Force>) -> Result<Option<Force>, ConvertError> {
    let Some(f) = m else { return Ok(None) };
    if f.blocks.is_empty() && f.reason.is_empty() {
        return Ok(None);
    }
    let blocks = f
        .blocks
        .iter()
        .enumerate()
        .map(|(i, b)| block_name(&format!("force.blocks[{i}]"), b))
        .collect::<Result<BTreeSet<_>, _>>()?;
    Force::new(blocks, f.reason)
        .map(Some)
        .map_err(|e| ConvertError::new("force", e))
}

pub(crate) fn operation_to_pb(op: &OperationRecord) -> pb::OperationInfo {
    pb::OperationInfo {
        id: u64::try_from(op.id.0).unwrap_or(0),
        device: op.device.to_string(),
        spec: Some(spec_to_pb(&op.spec)),
        force: op.force.as_ref().map(|f| pb::Force {
            blocks: f.blocks().iter().map(ToString::to_string).collect(),
            reason: f.reason().to_owned(),
        }),
        status: op.shown_status().to_owned(),
        waiting_on: op
            .progress
            .waiting_on
            .iter()
            .map(|r| {
                disturbance_to_pb(
                    &r.block,
                    &Disturbance {
                        reason: r.reason,
                        handover: r.handover,
                        because_of: r.because_of.clone(),
                        cause: None,
                    },
                )
            })
            .collect(),
        error: op.progress.error.clone().unwrap_or_default(),
        created_unix_ms: op.created.0,
        updated_unix_ms: op.updated.0,
        waits: op
            .progress
            .waiting_on
            .iter()
            .map(|r| pb::BlockWait {
                block: r.block.to_string(),
                reason: pb::Reason::from(r.reason).into(),
                since_unix_ms: op.progress.asked_at.get(&r.block).map_or(0, |t| t.0),
                deferred_until_unix_ms: op.progress.deferred_until.get(&r.block).map_or(0, |t| t.0),
            })
            .collect(),
        phase: op.progress.phase.clone().unwrap_or_default(),
        window: op.progress.told_window.map(|o| pb::Window {
            start_unix_ms: o.start.0,
            end_unix_ms: o.end.0,
        }),
    }
}

/// The operation a call names, recorded on the call's span.
fn op_id(v: u64) -> Result<OperationId, ConvertError> {
    let id = i64::try_from(v)
        .ok()
        .filter(|v| *v > 0)
        .map(OperationId)
        .ok_or_else(|| ConvertError::new("id", "a positive operation id is required"))?;
    telemetry::record_operation(&id);
    Ok(id)
}

/// The device a call names, recorded on the call's span.
fn device_id(s: &str) -> Result<DeviceId, ConvertError> {
    let id = DeviceId::new(s).map_err(|e| ConvertError::new("device", e))?;
    telemetry::record_device(&id);
    Ok(id)
}

fn actor(s: &str) -> String {
    if s.is_empty() {
        "unknown".to_owned()
    } else {
        s.chars().take(256).collect()
    }
}

#[tonic::async_trait]
impl<S: Store> OperationService for Operations<S> {
    type WatchEventsStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Event, Status>> + Send>>;

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let req = req.into_inner();
        let fleet = (!req.fleet.is_empty())
            .then(|| FleetId::new(&req.fleet).map_err(|e| ConvertError::new("fleet", e)))
            .transpose()?;
        let device = (!req.device.is_empty())
            .then(|| device_id(&req.device))
            .transpose()?;
        if let Some(f) = &fleet {
            self.store.get_fleet(f).await.map_err(status_from_store)?;
        }
        let mut watch = Watch::new(&self.events, self.store.clone(), fleet, device);
        let (tx, out) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(w) = watch.next().await {
                let msg = match w {
                    Watched::Event(e) => event_to_pb(&e),
                    Watched::Lagged(n) => pb::Event {
                        at_unix_ms: clock::now().0,
                        kind: "lagged".into(),
                        message: format!("{n} events missed; re-read the state"),
                        ..Default::default()
                    },
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn create_operation(
        &self,
        req: Request<pb::CreateOperationRequest>,
    ) -> Result<Response<pb::CreateOperationResponse>, Status> {
        let req = req.into_inner();
        let device = device_id(&req.device)?;
        let spec = spec_from_pb(req.spec)?;
        let force = force_from_pb(req.force)?;
        if let OperationSpec::AssignRelease(r) = &spec {
            // Fail early on a release that does not exist.
            self.store.get_release(r).await.map_err(status_from_store)?;
        }
        let now = clock::now();
        let op = self
            .store
            .create_operation(&device, &spec, force.as_ref(), now)
            .await
            .map_err(status_from_store)?;
        telemetry::record_operation(&op.id);
        if let Some(f) = &force {
            self.store
                .append_audit(&AuditEntry {
                    at: now,
                    actor: actor(&req.actor),
                    action: "force_requested".into(),
                    subject: format!("device {device} operation {}", op.id),
                    reason: f.reason().to_owned(),
                    details: serde_json::json!({
                        "operation": spec.kind(),
                        "blocks": f.blocks().iter().map(ToString::to_string).collect::<Vec<_>>(),
                    })
                    .to_string(),
                })
                .await
                .map_err(status_from_store)?;
        }
        tracing::info!(device = %device, operation = %op.id, kind = spec.kind(), forced = force.is_some(), "operation created");
        self.wakeups.wake(&device);
        Ok(Response::new(pb::CreateOperationResponse {
            operation: Some(operation_to_pb(&op)),
        }))
    }

    async fn get_operation(
        &self,
        req: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::GetOperationResponse>, Status> {
        let id = op_id(req.into_inner().id)?;
        let op = self
            .store
            .get_operation(id)
            .await
            .map_err(status_from_store)?;
        telemetry::record_device(&op.device);
        Ok(Response::new(pb::GetOperationResponse {
            operation: Some(operation_to_pb(&op)),
        }))
    }

    async fn list_operations(
        &self,
        req: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        let device = device_id(&req.into_inner().device)?;
        let ops = self
            .store
            .list_operations(&device)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(pb::ListOperationsResponse {
            operations: ops.iter().map(operation_to_pb).collect(),
        }))
    }

    async fn cancel_operation(
        &self,
        req: Request<pb::CancelOperationRequest>,
    ) -> Result<Response<pb::CancelOperationResponse>, Status> {
        let req = req.into_inner();
        let id = op_id(req.id)?;
        let op = self
            .store
            .get_operation(id)
            .await
            .map_err(status_from_store)?;
        telemetry::record_device(&op.device);
        if !matches!(
            op.status,
            OpStatus::Pending
                | OpStatus::WaitingLock
                | OpStatus::WaitingWindow
                | OpStatus::WaitingApproval
                | OpStatus::PartiallyApplied
        ) {
            return Err(Status::failed_precondition(format!(
                "operation {id} is {} and can no longer be cancelled",
                op.status.as_str()
            )));
        }
        let mut next = op.clone();
        next.status = OpStatus::Cancelled;
        let now = clock::now();
        match self.store.record_step(&next, op.status, &[], now).await {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                return Err(Status::failed_precondition(format!(
                    "operation {id} changed meanwhile; fetch it and retry"
                )));
            }
            Err(e) => return Err(status_from_store(e)),
        }
        self.store
            .append_audit(&AuditEntry {
                at: now,
                actor: actor(&req.actor),
                action: "operation_cancelled".into(),
                subject: format!("device {} operation {id}", op.device),
                reason: req.reason.clone(),
                details: "{}".into(),
            })
            .await
            .map_err(status_from_store)?;
        self.events.publish(
            &op.device,
            Some(op.id),
            EventKind::Cancelled { reason: req.reason },
        );
        self.wakeups.wake(&op.device);
        let op = self
            .store
            .get_operation(id)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(pb::CancelOperationResponse {
            operation: Some(operation_to_pb(&op)),
        }))
    }
}
