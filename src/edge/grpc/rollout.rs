//! `RolloutService`: phased rollouts of a release or an OS version. Requests
//! are converted here (bad input is `INVALID_ARGUMENT` naming the field);
//! the actions, status and controller live in [`crate::app::rollouts`]. A
//! rollout belongs to its fleet; actions are audited naming the token.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::access::{check, principal, within};
use super::convert::{ConvertError, at_most, count_at_most};
use super::pb::{self, rollout_service_server::RolloutService};
use super::status_from_store;
use crate::app::rollouts::{CreateRollout, RolloutError, RolloutStatus, Rollouts};
use crate::domain::{
    Action, Amount, FleetId, OnError, Principal, ReleaseId, Rollout, RolloutId, RolloutTarget,
    Strategy, Tag, shown,
};
use crate::edge::limits::MAX_TEXT_BYTES;
use crate::store::Store;

pub struct RolloutApi<S> {
    rollouts: Rollouts<S>,
}

impl<S: Store> RolloutApi<S> {
    pub fn new(rollouts: Rollouts<S>) -> Self {
        Self { rollouts }
    }

    /// `PERMISSION_DENIED` unless `p` may take `action` on the rollout's fleet.
    async fn check_rollout(
        &self,
        p: &Principal,
        action: Action,
        id: RolloutId,
    ) -> Result<(), Status> {
        let r = self
            .rollouts
            .store()
            .get_rollout(id)
            .await
            .map_err(status_from_store)?;
        check(p, action, Some(&r.fleet))
    }
}

fn status_from_rollout(e: RolloutError) -> Status {
    match e {
        RolloutError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        RolloutError::WrongState { .. } => Status::failed_precondition(e.to_string()),
        RolloutError::Store(e) => status_from_store(e),
    }
}

/// The rollout a call names, recorded on the call's span.
fn rollout_id(v: u64) -> Result<RolloutId, ConvertError> {
    let id = i64::try_from(v)
        .ok()
        .filter(|v| *v > 0)
        .map(RolloutId)
        .ok_or_else(|| ConvertError::new("id", "a positive rollout id is required"))?;
    crate::telemetry::record_rollout(&id);
    Ok(id)
}

/// The note beside the calling token (the request's `actor` field), at most
/// [`crate::edge::limits::MAX_ACTOR_BYTES`].
fn actor_note(s: &str) -> Result<&str, ConvertError> {
    at_most("actor", s, crate::edge::limits::MAX_ACTOR_BYTES)?;
    Ok(s)
}

fn reason(s: &str) -> Result<&str, ConvertError> {
    at_most("reason", s, MAX_TEXT_BYTES)?;
    Ok(s)
}

fn amount_from_pb(field: &str, a: &pb::Amount) -> Result<Amount, ConvertError> {
    match a.amount {
        Some(pb::amount::Amount::Count(n)) => Ok(Amount::Count(n)),
        Some(pb::amount::Amount::Percent(p)) => u8::try_from(p)
            .ok()
            .filter(|p| (1..=100).contains(p))
            .map(Amount::Percent)
            .ok_or_else(|| ConvertError::new(field, format!("{p}% is not in 1..=100"))),
        None => Err(ConvertError::new(field, "a count or a percent is required")),
    }
}

fn amount_to_pb(a: Amount) -> pb::Amount {
    pb::Amount {
        amount: Some(match a {
            Amount::Count(n) => pb::amount::Amount::Count(n),
            Amount::Percent(p) => pb::amount::Amount::Percent(u32::from(p)),
        }),
    }
}

impl TryFrom<pb::RolloutStrategy> for Strategy {
    type Error = ConvertError;
    fn try_from(s: pb::RolloutStrategy) -> Result<Self, ConvertError> {
        count_at_most(
            "strategy.batches",
            s.batches.len(),
            Strategy::MAX_BATCH_ENTRIES,
        )?;
        let batches = s
            .batches
            .iter()
            .enumerate()
            .map(|(i, a)| amount_from_pb(&format!("strategy.batches[{i}]"), a))
            .collect::<Result<Vec<_>, _>>()?;
        let success_threshold = match s.success_threshold_percent {
            0 => 100,
            p => u8::try_from(p).ok().filter(|p| *p <= 100).ok_or_else(|| {
                ConvertError::new(
                    "strategy.success_threshold_percent",
                    format!("{p} is not in 1..=100"),
                )
            })?,
        };
        let error_threshold = match &s.error_threshold {
            Some(a) => amount_from_pb("strategy.error_threshold", a)?,
            None => Amount::Count(1),
        };
        let on_error = match s.on_error.as_str() {
            "" => OnError::Pause,
            other => OnError::parse(other).ok_or_else(|| {
                ConvertError::new(
                    "strategy.on_error",
                    format!("{}: must be pause or abort", shown(other)),
                )
            })?,
        };
        let strategy = Strategy {
            canary: s.canary,
            batches,
            max_in_flight: s.max_in_flight,
            soak_seconds: s.soak_seconds,
            success_threshold,
            error_threshold,
            on_error,
        };
        strategy
            .validate()
            .map_err(|e| ConvertError::new(e.field, e.message))?;
        Ok(strategy)
    }
}

fn strategy_to_pb(s: &Strategy) -> pb::RolloutStrategy {
    pb::RolloutStrategy {
        canary: s.canary,
        batches: s.batches.iter().map(|a| amount_to_pb(*a)).collect(),
        max_in_flight: s.max_in_flight,
        soak_seconds: s.soak_seconds,
        success_threshold_percent: u32::from(s.success_threshold),
        error_threshold: Some(amount_to_pb(s.error_threshold)),
        on_error: s.on_error.as_str().to_owned(),
    }
}

impl TryFrom<pb::CreateRolloutRequest> for CreateRollout {
    type Error = ConvertError;
    fn try_from(r: pb::CreateRolloutRequest) -> Result<Self, ConvertError> {
        let fleet = FleetId::new(r.fleet).map_err(|e| ConvertError::new("fleet", e))?;
        let selector = match r.tag.as_str() {
            "" => None,
            t => Some(Tag::new(t).map_err(|e| ConvertError::new("tag", e))?),
        };
        let target = match r.target {
            Some(pb::create_rollout_request::Target::Release(id)) => RolloutTarget::Release(
                ReleaseId::new(id).map_err(|e| ConvertError::new("release", e))?,
            ),
            // Checked by `Rollouts::create` (`os_version`).
            Some(pb::create_rollout_request::Target::OsVersion(v)) => RolloutTarget::OsVersion(v),
            None => {
                return Err(ConvertError::new(
                    "target",
                    "a release or an os_version is required",
                ));
            }
        };
        Ok(CreateRollout {
            fleet,
            selector,
            target,
            strategy: r.strategy.unwrap_or_default().try_into()?,
            supersede: r.supersede,
            // What the client says (checked against its limit); the edge
            // replaces it with the token's actor.
            actor: actor_note(&r.actor)?.to_owned(),
            seed: (r.seed != 0).then_some(r.seed),
        })
    }
}

pub(crate) fn rollout_to_pb(r: &Rollout) -> pb::RolloutInfo {
    pb::RolloutInfo {
        id: r.id.0 as u64,
        fleet: r.fleet.to_string(),
        tag: r.selector.as_ref().map(Tag::to_string).unwrap_or_default(),
        target: Some(match &r.target {
            RolloutTarget::Release(id) => pb::rollout_info::Target::Release(id.to_string()),
            RolloutTarget::OsVersion(v) => pb::rollout_info::Target::OsVersion(v.clone()),
        }),
        strategy: Some(strategy_to_pb(&r.strategy)),
        state: r.progress.state.as_str().to_owned(),
        current_batch: r.progress.current_batch,
        devices: r.devices,
        skipped: r.skipped,
        message: r.message.clone(),
        created_by: r.created_by.clone(),
        created_unix_ms: r.created.0,
        updated_unix_ms: r.updated.0,
        seed: r.seed,
    }
}

pub(crate) fn status_to_pb(s: &RolloutStatus) -> pb::RolloutStatus {
    pb::RolloutStatus {
        rollout: Some(rollout_to_pb(&s.rollout)),
        batches: s
            .batches
            .iter()
            .enumerate()
            .map(|(i, b)| pb::BatchProgress {
                index: i as u32,
                size: b.size(),
                queued: b.queued,
                in_flight: b.in_flight,
                succeeded: b.succeeded,
                failed: b.failed,
                cancelled: b.cancelled,
            })
            .collect(),
        device_statuses: s
            .device_statuses
            .iter()
            .map(|(st, n)| pb::StatusCount {
                status: st.as_str().to_owned(),
                devices: *n,
            })
            .collect(),
        waiting_lock: s
            .waiting_lock
            .iter()
            .map(|((block, reason), n)| pb::LockWaitCount {
                block: block.to_string(),
                reason: pb::Reason::from(*reason) as i32,
                devices: *n,
            })
            .collect(),
        soak_until_unix_ms: s.soak_until.map(|t| t.0).unwrap_or(0),
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<pb::RolloutStatus, Status>> + Send>>;

#[tonic::async_trait]
impl<S: Store> RolloutService for RolloutApi<S> {
    async fn create_rollout(
        &self,
        req: Request<pb::CreateRolloutRequest>,
    ) -> Result<Response<pb::CreateRolloutResponse>, Status> {
        let p = principal(&req)?;
        let mut create: CreateRollout = req.into_inner().try_into()?;
        check(&p, Action::WriteRollouts, Some(&create.fleet))?;
        if let RolloutTarget::Release(r) = &create.target {
            let release = self
                .rollouts
                .store()
                .get_release(r)
                .await
                .map_err(status_from_store)?;
            check(&p, Action::ReadReleases, Some(release.fleet()))?;
        }
        create.actor = p.actor_noting(&create.actor);
        let r = self
            .rollouts
            .create(create)
            .await
            .map_err(status_from_rollout)?;
        crate::telemetry::record_rollout(&r.id);
        let status = self
            .rollouts
            .status(r.id)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(pb::CreateRolloutResponse {
            status: Some(status_to_pb(&status)),
        }))
    }

    async fn get_rollout(
        &self,
        req: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::GetRolloutResponse>, Status> {
        let p = principal(&req)?;
        let id = rollout_id(req.into_inner().id)?;
        self.check_rollout(&p, Action::ReadRollouts, id).await?;
        let status = self.rollouts.status(id).await.map_err(status_from_store)?;
        Ok(Response::new(pb::GetRolloutResponse {
            status: Some(status_to_pb(&status)),
        }))
    }

    async fn list_rollouts(
        &self,
        req: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let fleet = match req.fleet.as_str() {
            "" => None,
            f => Some(FleetId::new(f).map_err(|e| ConvertError::new("fleet", e))?),
        };
        let within = match &fleet {
            Some(f) => check(&p, Action::ReadRollouts, Some(f)).map(|()| None)?,
            None => within(&p, Action::ReadRollouts)?,
        };
        let list = self
            .rollouts
            .store()
            .list_rollouts(fleet.as_ref())
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(pb::ListRolloutsResponse {
            rollouts: list
                .iter()
                .filter(|r| within.as_ref().is_none_or(|w| w.contains(&r.fleet)))
                .map(rollout_to_pb)
                .collect(),
        }))
    }

    async fn pause_rollout(
        &self,
        req: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::RolloutActionResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let id = rollout_id(req.id)?;
        self.check_rollout(&p, Action::WriteRollouts, id).await?;
        let r = self
            .rollouts
            .pause(
                id,
                &p.actor_noting(actor_note(&req.actor)?),
                reason(&req.reason)?,
            )
            .await
            .map_err(status_from_rollout)?;
        Ok(Response::new(pb::RolloutActionResponse {
            rollout: Some(rollout_to_pb(&r)),
        }))
    }

    async fn resume_rollout(
        &self,
        req: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::RolloutActionResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let id = rollout_id(req.id)?;
        self.check_rollout(&p, Action::WriteRollouts, id).await?;
        let r = self
            .rollouts
            .resume(
                id,
                &p.actor_noting(actor_note(&req.actor)?),
                reason(&req.reason)?,
            )
            .await
            .map_err(status_from_rollout)?;
        Ok(Response::new(pb::RolloutActionResponse {
            rollout: Some(rollout_to_pb(&r)),
        }))
    }

    async fn abort_rollout(
        &self,
        req: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::RolloutActionResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let id = rollout_id(req.id)?;
        self.check_rollout(&p, Action::WriteRollouts, id).await?;
        let r = self
            .rollouts
            .abort(
                id,
                &p.actor_noting(actor_note(&req.actor)?),
                reason(&req.reason)?,
            )
            .await
            .map_err(status_from_rollout)?;
        Ok(Response::new(pb::RolloutActionResponse {
            rollout: Some(rollout_to_pb(&r)),
        }))
    }

    type WatchRolloutStream = StatusStream;

    async fn watch_rollout(
        &self,
        req: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        let p = principal(&req)?;
        let id = rollout_id(req.into_inner().id)?;
        self.check_rollout(&p, Action::ReadRollouts, id).await?;
        let mut watch = self.rollouts.watch(id).await.map_err(status_from_store)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let revoked = crate::app::tokens::until_unusable(
            self.rollouts.store().clone(),
            p.token.clone(),
            crate::app::tokens::RECHECK_EVERY,
        );
        tokio::spawn(async move {
            tokio::pin!(revoked);
            loop {
                let next = tokio::select! {
                    _ = tx.closed() => return,
                    next = watch.next() => next,
                    e = &mut revoked => {
                        let _ = tx.send(Err(super::access::status_from_auth(e))).await;
                        return;
                    }
                };
                let item = match next {
                    None => return,
                    Some(Ok(s)) => Ok(status_to_pb(&s)),
                    Some(Err(e)) => Err(status_from_store(e)),
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
