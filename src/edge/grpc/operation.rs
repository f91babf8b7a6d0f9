//! `OperationService`: operators record operations on devices; the scheduler
//! decides when each may be applied. Forces and cancellations are audited,
//! naming the token that asked. Every request is checked against the fleet
//! of the device it is about.

use std::collections::BTreeSet;

use tonic::{Request, Response, Status};

use super::access::{check, principal, within};
use super::convert::{ConvertError, at_most, block_name, count_at_most, disturbance_to_pb};
use super::pb::{self, operation_service_server::OperationService};
use super::status_from_store;
use crate::app::create::{CreateError, Creator};
use crate::app::events::{Event, EventKind, Events, Watch, Watched};
use crate::background::scheduler::Wakeups;
use crate::clock;
use crate::domain::{Action, FleetId, Principal};
use crate::domain::{
    AuditEntry, DeviceId, Disturbance, Force, OpStatus, OperationId, OperationRecord,
    OperationSpec, ReleaseId,
};
use crate::edge::limits::{MAX_SCOPE_BLOCKS, MAX_TEXT_BYTES, MAX_VERSION_BYTES};
use crate::store::{NewOperation, Store};
use crate::telemetry;

pub struct Operations<S> {
    store: S,
    wakeups: Wakeups,
    events: Events,
    /// New operations are recorded through it (group commit).
    creator: Creator,
}

impl<S: Store> Operations<S> {
    /// Starts the service's operation writer (it stops with the service).
    pub fn new(store: S, wakeups: Wakeups, events: Events) -> Self {
        let (creator, _task) = Creator::spawn(store.clone());
        Self {
            store,
            wakeups,
            events,
            creator,
        }
    }

    /// The device's fleet, once `p` may take `action` on it.
    async fn device_fleet(
        &self,
        p: &Principal,
        action: Action,
        device: &DeviceId,
    ) -> Result<FleetId, Status> {
        let fleet = self
            .store
            .get_device(device)
            .await
            .map_err(status_from_store)?
            .fleet;
        check(p, action, Some(&fleet))?;
        Ok(fleet)
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
        EventKind::Interrupted { message } => (vec![], message.clone()),
        EventKind::NewAgentEpoch { epoch } => (vec![], format!("agent epoch {epoch}")),
        EventKind::Cancelled { reason } => (vec![], reason.clone()),
        EventKind::Queued { behind } => (vec![], format!("behind operation {behind}")),
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
        seq: e.seq,
        fleet: e.fleet.to_string(),
    }
}

/// The wire enum of a status.
fn status_to_pb(s: OpStatus) -> pb::OperationStatus {
    use pb::OperationStatus as P;
    match s {
        OpStatus::Pending => P::Pending,
        OpStatus::Queued => P::Queued,
        OpStatus::WaitingLock => P::WaitingLock,
        OpStatus::WaitingWindow => P::WaitingWindow,
        OpStatus::WaitingApproval => P::WaitingApproval,
        OpStatus::PartiallyApplied => P::PartiallyApplied,
        OpStatus::Applying => P::Applying,
        OpStatus::Done => P::Done,
        OpStatus::Failed => P::Failed,
        OpStatus::Cancelled => P::Cancelled,
        OpStatus::Superseded => P::Superseded,
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
        Kind::ApplyEnv(e) if e.blocks.is_empty() => {
            OperationSpec::ApplyEnv(crate::domain::EnvTarget::AllBlocks)
        }
        Kind::ApplyEnv(e) => OperationSpec::ApplyEnv(crate::domain::EnvTarget::Blocks(
            e.blocks
                .iter()
                .enumerate()
                .map(|(i, b)| block_name(&format!("spec.apply_env.blocks[{i}]"), b))
                .collect::<Result<_, _>>()?,
        )),
        Kind::OsUpdate(v) => {
            if v.is_empty() || v.len() > MAX_VERSION_BYTES || v.chars().any(char::is_control) {
                return Err(ConvertError::new(
                    "spec.os_update",
                    format!(
                        "an OS version of 1 to {MAX_VERSION_BYTES} printable bytes is required"
                    ),
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
        OperationSpec::ApplyEnv(t) => Kind::ApplyEnv(pb::operation_spec::ApplyEnv {
            blocks: match t {
                crate::domain::EnvTarget::AllBlocks => Vec::new(),
                crate::domain::EnvTarget::Blocks(b) => b.iter().map(ToString::to_string).collect(),
            },
        }),
    };
    pb::OperationSpec { kind: Some(kind) }
}

fn force_from_pb(m: Option<pb::Force>) -> Result<Option<Force>, ConvertError> {
    let Some(f) = m else { return Ok(None) };
    if f.blocks.is_empty() && f.reason.is_empty() {
        return Ok(None);
    }
    count_at_most("force.blocks", f.blocks.len(), MAX_SCOPE_BLOCKS)?;
    at_most("force.reason", &f.reason, MAX_TEXT_BYTES)?;
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
        behind: op
            .progress
            .behind
            .map_or(0, |b| u64::try_from(b.0).unwrap_or(0)),
        state: status_to_pb(op.status).into(),
        interruptions: op.progress.interruptions,
        interrupted: op.progress.interrupted.clone().unwrap_or_default(),
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

/// The note beside the calling token (the request's `actor` field), at most
/// [`crate::edge::limits::MAX_ACTOR_BYTES`].
fn actor_note(s: &str) -> Result<(), ConvertError> {
    at_most("actor", s, crate::edge::limits::MAX_ACTOR_BYTES)
}

/// The device a call names, recorded on the call's span.
fn device_id(s: &str) -> Result<DeviceId, ConvertError> {
    let id = DeviceId::new(s).map_err(|e| ConvertError::new("device", e))?;
    telemetry::record_device(&id);
    Ok(id)
}

#[tonic::async_trait]
impl<S: Store> OperationService for Operations<S> {
    type WatchEventsStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Event, Status>> + Send>>;

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let p = principal(&req)?;
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
        // What is watched must be in scope; without a fleet or a device,
        // the token's fleets.
        let scope = match &fleet {
            Some(f) => check(&p, Action::ReadDevices, Some(f)).map(|()| None)?,
            None => within(&p, Action::ReadDevices)?,
        };
        if let Some(d) = &device {
            self.device_fleet(&p, Action::ReadDevices, d).await?;
        }
        let mut watch = Watch::new(&self.events, self.store.clone(), fleet, device)
            .within(scope)
            .after((req.after_seq > 0).then_some(req.after_seq));
        let (tx, out) = tokio::sync::mpsc::channel(64);
        let revoked = crate::app::tokens::until_unusable(
            self.store.clone(),
            p.token.clone(),
            crate::app::tokens::RECHECK_EVERY,
        );
        tokio::spawn(async move {
            tokio::pin!(revoked);
            loop {
                let w = tokio::select! {
                    w = watch.next() => match w {
                        Some(w) => w,
                        None => return,
                    },
                    e = &mut revoked => {
                        // The token that opened the watch is gone: so is the watch.
                        let _ = tx.send(Err(super::access::status_from_auth(e))).await;
                        return;
                    }
                };
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
        let p = principal(&req)?;
        let req = req.into_inner();
        let device = device_id(&req.device)?;
        let spec = spec_from_pb(req.spec)?;
        let force = force_from_pb(req.force)?;
        actor_note(&req.actor)?;
        let fleet = self
            .device_fleet(&p, Action::WriteOperations, &device)
            .await?;
        if force.is_some() {
            check(&p, Action::Force, Some(&fleet))?;
        }
        if let OperationSpec::AssignRelease(r) = &spec {
            // Fail early on a release that does not exist.
            let release = self.store.get_release(r).await.map_err(status_from_store)?;
            check(&p, Action::ReadReleases, Some(release.fleet()))?;
        }
        // A forced operation's audit entry commits with it.
        let audit = force.as_ref().map(|f| AuditEntry {
            at: crate::domain::Timestamp(0), // set by the store to the operation's

            actor: p.actor_noting(&req.actor),
            action: "force_requested".into(),
            subject: String::new(),
            fleet: Some(fleet.clone()),
            reason: f.reason().to_owned(),
            details: serde_json::json!({
                "operation": spec.kind(),
                "blocks": f.blocks().iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
            .to_string(),
        });
        let op = self
            .creator
            .create(NewOperation {
                device: device.clone(),
                spec: spec.clone(),
                force: force.clone(),
                audit,
            })
            .await
            .map_err(|e| match e {
                CreateError::Store(e) => status_from_store(e),
                CreateError::Closed => Status::unavailable(e.to_string()),
            })?;
        telemetry::record_operation(&op.id);
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
        let p = principal(&req)?;
        let id = op_id(req.into_inner().id)?;
        let op = self
            .store
            .get_operation(id)
            .await
            .map_err(status_from_store)?;
        telemetry::record_device(&op.device);
        self.device_fleet(&p, Action::ReadOperations, &op.device)
            .await?;
        Ok(Response::new(pb::GetOperationResponse {
            operation: Some(operation_to_pb(&op)),
        }))
    }

    async fn list_operations(
        &self,
        req: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        let p = principal(&req)?;
        let device = device_id(&req.into_inner().device)?;
        self.device_fleet(&p, Action::ReadOperations, &device)
            .await?;
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
        let p = principal(&req)?;
        let req = req.into_inner();
        let id = op_id(req.id)?;
        actor_note(&req.actor)?;
        at_most("reason", &req.reason, MAX_TEXT_BYTES)?;
        let op = self
            .store
            .get_operation(id)
            .await
            .map_err(status_from_store)?;
        telemetry::record_device(&op.device);
        let fleet = self
            .device_fleet(&p, Action::WriteOperations, &op.device)
            .await?;
        let op = crate::app::operations::cancel(
            &self.store,
            &self.events,
            &self.wakeups,
            &op,
            crate::app::operations::Cancel {
                actor: Some(p.actor_noting(&req.actor)),
                fleet,
                reason: &req.reason,
            },
            clock::now(),
        )
        .await
        .map_err(|e| match e {
            crate::app::operations::CancelError::Store(e) => status_from_store(e),
            other => Status::failed_precondition(other.to_string()),
        })?;
        Ok(Response::new(pb::CancelOperationResponse {
            operation: Some(operation_to_pb(&op)),
        }))
    }
}
