//! Rollouts, the imperative shell around [`crate::domain::rollout`]: the
//! actions operators take (create, pause, resume, abort), the status
//! dashboards read, and the controller loop that moves every active rollout
//! along — gather batch counts from the store, [`domain::advance`], act
//! (start devices' operations, store the progress, tell watchers).
//!
//! Each started device gets an ordinary operation; from there the scheduler
//! decides when it may apply, so windows, approvals, locks and deferral
//! policy all hold. The controller is woken by operation events, by actions,
//! and by soak timers; a slow resync (every 30 s, per active rollout, not
//! per device) covers changes that raise no event, such as an operation an
//! operator cancelled by hand.
//!
//! [`RolloutWatch`] is the one way to follow a rollout (gRPC `WatchRollout`,
//! the dashboard's rollout stream): events coalesced into status re-reads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::app::events::{Event, Events, RolloutNotice};
use crate::background::scheduler::Wakeups;
use crate::clock;
use crate::domain::{
    self, AuditEntry, BatchCounts, BlockName, DeviceStatus, FleetId, OpStatus, Reason, Rollout,
    RolloutEvent, RolloutId, RolloutState, RolloutTarget, Strategy, Tag, Timestamp,
};
use crate::store::{NewRollout, Store, StoreError};

/// Why a rollout action was refused.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// Bad input; `field` names it.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The rollout is not in a state that allows this.
    #[error("rollout {id} is {state}; {action} needs it {needs}")]
    WrongState {
        id: RolloutId,
        state: &'static str,
        action: &'static str,
        needs: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A rollout to create, as the API hands it over.
#[derive(Debug, Clone)]
pub struct CreateRollout {
    pub fleet: FleetId,
    pub selector: Option<Tag>,
    pub target: RolloutTarget,
    pub strategy: Strategy,
    pub supersede: bool,
    pub actor: String,
    /// `None`: a random seed.
    pub seed: Option<u64>,
}

/// A rollout and how it is doing: what `GetRollout`, `rollout watch` and
/// the dashboard show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutStatus {
    pub rollout: Rollout,
    pub batches: Vec<BatchCounts>,
    pub device_statuses: BTreeMap<DeviceStatus, u64>,
    pub waiting_lock: BTreeMap<(BlockName, Reason), u64>,
    pub soak_until: Option<Timestamp>,
}

/// Rollouts waiting for the controller: a set (each at most once) and
/// soak timers.
#[derive(Clone, Default)]
pub struct RolloutWakeups {
    pending: Arc<Mutex<BTreeSet<RolloutId>>>,
    timers: Arc<Mutex<BTreeSet<(i64, RolloutId)>>>,
    notify: Arc<Notify>,
}

impl RolloutWakeups {
    pub fn wake(&self, id: RolloutId) {
        if self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id)
        {
            self.notify.notify_one();
        }
    }

    pub fn wake_at(&self, id: RolloutId, at: Timestamp) {
        self.timers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((at.0, id));
        self.notify.notify_one();
    }

    /// Moves due timers to the pending set; returns when the next is due.
    fn due(&self, now: Timestamp) -> Option<i64> {
        let mut timers = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        let later = timers.split_off(&(now.0 + 1, RolloutId(i64::MIN)));
        let due = std::mem::replace(&mut *timers, later);
        let next = timers.first().map(|(t, _)| *t);
        drop(timers);
        for (_, id) in due {
            self.wake(id);
        }
        next
    }

    fn take(&self) -> BTreeSet<RolloutId> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Rollout actions and status, shared by the gRPC service and the dashboard.
#[derive(Clone)]
pub struct Rollouts<S> {
    store: S,
    devices: Wakeups,
    events: Events,
    wakeups: RolloutWakeups,
}

/// The longest OS version string accepted.
const MAX_OS_VERSION: usize = 128;

impl<S: Store> Rollouts<S> {
    pub fn new(store: S, devices: Wakeups, events: Events, wakeups: RolloutWakeups) -> Self {
        Self {
            store,
            devices,
            events,
            wakeups,
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Plans and stores a rollout, then wakes the controller to start it.
    pub async fn create(&self, req: CreateRollout) -> Result<Rollout, RolloutError> {
        req.strategy.validate().map_err(|e| RolloutError::Invalid {
            field: e.field,
            message: e.message,
        })?;
        self.store.get_fleet(&req.fleet).await?;
        match &req.target {
            RolloutTarget::Release(r) => {
                let release = self.store.get_release(r).await?;
                if release.fleet() != &req.fleet {
                    return Err(RolloutError::Invalid {
                        field: "release",
                        message: format!(
                            "release {r} belongs to fleet {}, not {}",
                            release.fleet(),
                            req.fleet
                        ),
                    });
                }
            }
            RolloutTarget::OsVersion(v) => {
                if v.trim().is_empty()
                    || v.len() > MAX_OS_VERSION
                    || v.chars().any(char::is_control)
                {
                    return Err(RolloutError::Invalid {
                        field: "os_version",
                        message: format!("must be 1..={MAX_OS_VERSION} printable characters"),
                    });
                }
            }
        }
        let seed = req.seed.unwrap_or_else(rand::random);
        let candidates = self
            .store
            .rollout_candidates(&req.fleet, req.selector.as_ref(), &req.target)
            .await?;
        let plan = domain::plan(&candidates, &req.strategy, seed);
        let now = clock::now();
        let rollout = self
            .store
            .create_rollout(
                &NewRollout {
                    fleet: req.fleet.clone(),
                    selector: req.selector.clone(),
                    target: req.target.clone(),
                    strategy: req.strategy.clone(),
                    seed,
                    created_by: req.actor.clone(),
                },
                &plan,
                req.supersede,
                now,
            )
            .await?;
        let sizes: Vec<String> = plan.batches.iter().map(|b| b.len().to_string()).collect();
        self.audit(
            &req.actor,
            "rollout_created",
            rollout.id,
            "",
            &format!(
                "{{\"target\":{:?},\"batches\":[{}],\"skipped\":{}}}",
                target_label(&rollout.target),
                sizes.join(","),
                rollout.skipped
            ),
        )
        .await?;
        tracing::info!(
            rollout = %rollout.id,
            fleet = %rollout.fleet,
            target = %target_label(&rollout.target),
            devices = rollout.devices,
            skipped = rollout.skipped,
            batches = plan.batches.len(),
            "rollout created"
        );
        crate::app::events::log_rollout_notice(
            &self.store,
            &self.events,
            &rollout.fleet,
            rollout.id,
            "created",
            format!(
                "{} devices in {} batches ({} already at the target)",
                rollout.devices,
                plan.batches.len(),
                rollout.skipped
            ),
        )
        .await;
        self.wakeups.wake(rollout.id);
        Ok(rollout)
    }

    pub async fn pause(
        &self,
        id: RolloutId,
        actor: &str,
        reason: &str,
    ) -> Result<Rollout, RolloutError> {
        let r = self.store.get_rollout(id).await?;
        if r.progress.state != RolloutState::Running {
            return Err(wrong_state(&r, "pause", "running"));
        }
        let next = domain::RolloutProgress {
            state: RolloutState::Paused,
            ..r.progress
        };
        let message = with_reason("paused by an operator", reason);
        self.store
            .update_rollout(
                id,
                RolloutState::Running,
                &next,
                Some(&message),
                clock::now(),
            )
            .await?;
        self.audit(actor, "rollout_paused", id, reason, "{}")
            .await?;
        crate::app::events::log_rollout_notice(
            &self.store,
            &self.events,
            &r.fleet,
            id,
            "paused",
            message,
        )
        .await;
        Ok(self.store.get_rollout(id).await?)
    }

    pub async fn resume(
        &self,
        id: RolloutId,
        actor: &str,
        reason: &str,
    ) -> Result<Rollout, RolloutError> {
        let r = self.store.get_rollout(id).await?;
        let failed: u64 = self
            .store
            .rollout_batch_counts(id)
            .await?
            .iter()
            .map(|b| b.failed)
            .sum();
        let next = domain::resume(r.progress, failed)
            .ok_or_else(|| wrong_state(&r, "resume", "paused"))?;
        self.store
            .update_rollout(id, RolloutState::Paused, &next, Some(""), clock::now())
            .await?;
        self.audit(actor, "rollout_resumed", id, reason, "{}")
            .await?;
        crate::app::events::log_rollout_notice(
            &self.store,
            &self.events,
            &r.fleet,
            id,
            "resumed",
            with_reason("resumed", reason),
        )
        .await;
        self.wakeups.wake(id);
        Ok(self.store.get_rollout(id).await?)
    }

    pub async fn abort(
        &self,
        id: RolloutId,
        actor: &str,
        reason: &str,
    ) -> Result<Rollout, RolloutError> {
        let r = self.store.get_rollout(id).await?;
        if !r.progress.state.is_active() {
            return Err(wrong_state(&r, "abort", "running or paused"));
        }
        let next = domain::RolloutProgress {
            state: RolloutState::Aborted,
            ..r.progress
        };
        let message = with_reason("aborted by an operator", reason);
        self.store
            .update_rollout(id, r.progress.state, &next, Some(&message), clock::now())
            .await?;
        self.audit(actor, "rollout_aborted", id, reason, "{}")
            .await?;
        let cancelled = self.cancel_members(id, &message).await?;
        crate::app::events::log_rollout_notice(
            &self.store,
            &self.events,
            &r.fleet,
            id,
            "aborted",
            format!("{message}; {cancelled} operations cancelled"),
        )
        .await;
        Ok(self.store.get_rollout(id).await?)
    }

    /// Cancels member operations that have not started applying.
    async fn cancel_members(&self, id: RolloutId, why: &str) -> Result<u64, StoreError> {
        let mut cancelled = 0;
        let fleet = self.store.get_rollout(id).await?.fleet;
        for op in self.store.rollout_active_operations(id).await? {
            // Only what has not started: a partial release under way goes on.
            if !op.status.is_not_started() {
                continue;
            }
            let reason = format!("rollout {id}: {why}");
            let who = crate::app::operations::Cancel {
                actor: None,
                fleet: fleet.clone(),
                reason: &reason,
            };
            match crate::app::operations::cancel(
                &self.store,
                &self.events,
                &self.devices,
                &op,
                who,
                clock::now(),
            )
            .await
            {
                Ok(_) => cancelled += 1,
                // It moved on (e.g. started applying): leave it be.
                Err(
                    crate::app::operations::CancelError::Changed { .. }
                    | crate::app::operations::CancelError::NotCancellable(_),
                ) => {}
                Err(crate::app::operations::CancelError::Store(e)) => return Err(e),
            }
        }
        Ok(cancelled)
    }

    /// The rollout with its batch progress, member statuses, and which
    /// blocks' locks hold devices up, for which reason.
    pub async fn status(&self, id: RolloutId) -> Result<RolloutStatus, StoreError> {
        let rollout = self.store.get_rollout(id).await?;
        let batches = self.store.rollout_batch_counts(id).await?;
        let device_statuses = self.store.rollout_device_statuses(id).await?;
        let active = self.store.rollout_active_operations(id).await?;
        let waits: Vec<Vec<(BlockName, Reason)>> = active
            .iter()
            .filter(|op| op.status == OpStatus::WaitingLock)
            .map(|op| {
                op.progress
                    .waiting_on
                    .iter()
                    .map(|w| (w.block.clone(), w.reason))
                    .collect()
            })
            .collect();
        let waiting_lock = domain::waiting_lock_breakdown(waits.iter().map(Vec::as_slice));
        let soak_until = match (rollout.progress.state, rollout.progress.batch_met_at) {
            (RolloutState::Running, Some(met)) => {
                let until = Timestamp(
                    met.0
                        .saturating_add(rollout.strategy.soak_seconds.saturating_mul(1000) as i64),
                );
                (until > clock::now()).then_some(until)
            }
            _ => None,
        };
        Ok(RolloutStatus {
            rollout,
            batches,
            device_statuses,
            waiting_lock,
            soak_until,
        })
    }

    async fn audit(
        &self,
        actor: &str,
        action: &str,
        id: RolloutId,
        reason: &str,
        details: &str,
    ) -> Result<(), StoreError> {
        self.store
            .append_audit(&AuditEntry {
                at: clock::now(),
                actor: actor.to_owned(),
                action: action.to_owned(),
                subject: format!("rollout {id}"),
                fleet: self.store.get_rollout(id).await.ok().map(|r| r.fleet),
                reason: reason.to_owned(),
                details: details.to_owned(),
            })
            .await
            .map(|_| ())
    }

    /// One controller step for one rollout: read, decide (pure), write —
    /// all in one transaction under the rollout's row lock, so controllers
    /// on several replicas never overshoot `max_in_flight` together. Then
    /// the devices started are woken, and an abort cancels what has not
    /// started.
    async fn step(&self, id: RolloutId) -> Result<(), StoreError> {
        let now = clock::now();
        let stepped = self
            .store
            .step_rollout(id, now, |r, counts| step_write(r, counts, now))
            .await?;
        let Some((adv, started)) = stepped else {
            return Ok(());
        };
        for op in &started {
            self.devices.wake(&op.device);
        }
        if !started.is_empty() {
            tracing::info!(rollout = %id, devices = started.len(), "devices started");
        }
        for e in &adv.events {
            if let RolloutEvent::ErrorThreshold {
                then: domain::OnError::Abort,
                ..
            } = e
            {
                self.cancel_members(id, "error threshold crossed").await?;
            }
        }
        self.events.appended();
        if let Some(at) = adv.wake_at {
            self.wakeups.wake_at(id, at);
        }
        Ok(())
    }
}

/// What one controller step writes, from the rollout and its batch counts
/// as read under its lock: the pure decision (`domain::advance`) turned into
/// progress, members to start, audit entries and notices.
fn step_write(
    r: &Rollout,
    counts: &[domain::BatchCounts],
    now: Timestamp,
) -> (crate::store::RolloutStepWrite, domain::Advance) {
    let adv = domain::advance(&r.strategy, r.progress, counts, now);
    let message = adv.events.iter().find_map(|e| match e {
        RolloutEvent::ErrorThreshold {
            failed,
            threshold,
            then,
        } => Some(format!(
            "error threshold crossed: {failed} failed (threshold {threshold}); {}",
            match then {
                domain::OnError::Pause => "paused",
                domain::OnError::Abort => "aborted",
            }
        )),
        _ => None,
    });
    let mut write = crate::store::RolloutStepWrite {
        progress: (adv.progress != r.progress).then(|| (adv.progress, message.clone())),
        start: adv.start.clone(),
        ..Default::default()
    };
    for e in &adv.events {
        let (kind, text) = match e {
            RolloutEvent::BatchStarted { batch } => {
                ("batch_started", format!("batch {batch} started"))
            }
            RolloutEvent::Soaking { batch, until } => (
                "soaking",
                format!(
                    "batch {batch} met its success threshold; soaking for {} s",
                    (until.0 - now.0) / 1000
                ),
            ),
            RolloutEvent::ErrorThreshold { then, .. } => (
                match then {
                    domain::OnError::Pause => "paused",
                    domain::OnError::Abort => "aborted",
                },
                message.clone().unwrap_or_default(),
            ),
            RolloutEvent::Completed => ("completed", "every batch is done".to_owned()),
        };
        tracing::info!(rollout = %r.id, event = kind, "{text}");
        if let RolloutEvent::ErrorThreshold { then, .. } = e {
            write.audits.push(AuditEntry {
                at: now,
                actor: "lockstep".into(),
                action: match then {
                    domain::OnError::Pause => "rollout_paused",
                    domain::OnError::Abort => "rollout_aborted",
                }
                .into(),
                subject: format!("rollout {}", r.id),
                fleet: Some(r.fleet.clone()),
                reason: text.clone(),
                details: "{}".into(),
            });
        }
        write
            .events
            .push(domain::NewEvent::rollout(&r.fleet, r.id, kind, text));
    }
    (write, adv)
}

/// How often a watch re-reads the status at most while events arrive.
pub const WATCH_COALESCE: Duration = Duration::from_millis(200);
/// How often a watch re-reads the status without events, so changes that
/// raise none (a soak ending) show.
pub const WATCH_RESYNC: Duration = Duration::from_secs(5);

impl<S: Store> Rollouts<S> {
    /// Follows rollout `id`: see [`RolloutWatch::next`]. Subscribes before
    /// the first read, so nothing in between is missed; an unknown rollout
    /// is `NotFound` here, before anything is sent.
    pub async fn watch(&self, id: RolloutId) -> Result<RolloutWatch<S>, StoreError> {
        let ops = self.events.subscribe();
        let notices = self.events.subscribe_rollouts();
        let first = self.status(id).await?;
        let mut resync =
            tokio::time::interval_at(tokio::time::Instant::now() + WATCH_RESYNC, WATCH_RESYNC);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(RolloutWatch {
            rollouts: self.clone(),
            id,
            ops,
            notices,
            resync,
            first: Some(first),
            last: None,
            done: false,
        })
    }
}

/// A rollout's status now, then again whenever it changes, until it is no
/// longer active. Any member operation's event (or this rollout's notice)
/// leads to one re-read at most every [`WATCH_COALESCE`], and a quiet
/// rollout is re-read every [`WATCH_RESYNC`]; a status equal to the last one
/// is not sent again.
pub struct RolloutWatch<S> {
    rollouts: Rollouts<S>,
    id: RolloutId,
    ops: tokio::sync::broadcast::Receiver<Event>,
    notices: tokio::sync::broadcast::Receiver<RolloutNotice>,
    resync: tokio::time::Interval,
    first: Option<RolloutStatus>,
    last: Option<RolloutStatus>,
    done: bool,
}

impl<S: Store> RolloutWatch<S> {
    /// The next status to show: the current one first, then each change.
    /// `None` after the final (no longer active) status was returned, after
    /// an error, or when the event bus closed. Cancel-safe between statuses.
    pub async fn next(&mut self) -> Option<Result<RolloutStatus, StoreError>> {
        use tokio::sync::broadcast::error::{RecvError, TryRecvError};
        if let Some(first) = self.first.take() {
            self.done = !first.rollout.progress.state.is_active();
            self.last = Some(first.clone());
            return Some(Ok(first));
        }
        while !self.done {
            tokio::select! {
                _ = self.resync.tick() => {}
                r = self.ops.recv() => if matches!(r, Err(RecvError::Closed)) { return None },
                r = self.notices.recv() => match r {
                    Ok(n) if n.rollout != self.id => continue,
                    Err(RecvError::Closed) => return None,
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                },
            }
            tokio::time::sleep(WATCH_COALESCE).await;
            // What arrived meanwhile is covered by the one read below.
            while matches!(self.ops.try_recv(), Ok(_) | Err(TryRecvError::Lagged(_))) {}
            while matches!(
                self.notices.try_recv(),
                Ok(_) | Err(TryRecvError::Lagged(_))
            ) {}
            match self.rollouts.status(self.id).await {
                Ok(s) => {
                    self.done = !s.rollout.progress.state.is_active();
                    if self.last.as_ref() != Some(&s) {
                        self.last = Some(s.clone());
                        return Some(Ok(s));
                    }
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

fn wrong_state(r: &Rollout, action: &'static str, needs: &'static str) -> RolloutError {
    RolloutError::WrongState {
        id: r.id,
        state: r.progress.state.as_str(),
        action,
        needs,
    }
}

fn with_reason(what: &str, reason: &str) -> String {
    if reason.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {reason}")
    }
}

/// `release r2` or `os 2.1`.
pub fn target_label(t: &RolloutTarget) -> String {
    match t {
        RolloutTarget::Release(r) => format!("release {r}"),
        RolloutTarget::OsVersion(v) => format!("os {v}"),
    }
}

/// How long the controller lets events gather before it looks again.
const STEP_COALESCE: Duration = Duration::from_millis(100);

/// How often active rollouts are looked at even without an event.
const RESYNC: Duration = Duration::from_secs(30);

/// Runs the controller until the task is aborted.
pub async fn run_controller<S: Store>(rollouts: Rollouts<S>) {
    let mut events = rollouts.events.subscribe();
    let wake_all = |r: &Rollouts<S>| {
        let r = r.clone();
        async move {
            match r.store.active_rollouts().await {
                Ok(ids) => ids.into_iter().for_each(|id| r.wakeups.wake(id)),
                Err(e) => tracing::warn!(error = %e, "cannot list active rollouts"),
            }
        }
    };
    wake_all(&rollouts).await;
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next_timer = rollouts.wakeups.due(clock::now());
        let timer = async {
            match next_timer {
                Some(at) => {
                    let ms = u64::try_from(at - clock::now().0).unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = rollouts.wakeups.notify.notified() => {}
            _ = timer => {}
            _ = resync.tick() => wake_all(&rollouts).await,
            ev = events.recv() => match ev {
                // A member's operation moved on (or we missed some): every
                // active rollout takes a look; the set dedups.
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Events come in bursts (a fan-out, on every replica):
                    // one look per burst.
                    tokio::time::sleep(STEP_COALESCE).await;
                    events = events.resubscribe();
                    wake_all(&rollouts).await
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
        rollouts.wakeups.due(clock::now());
        for id in rollouts.wakeups.take() {
            let span = tracing::info_span!(
                "rollout.step",
                otel.status_code = tracing::field::Empty,
                rollout = %id,
            );
            let stepped = tracing::Instrument::instrument(rollouts.step(id), span.clone()).await;
            if let Err(e) = stepped {
                span.record("otel.status_code", "ERROR");
                tracing::warn!(rollout = %id, error = %e, "rollout step failed; retrying shortly");
                let w = rollouts.wakeups.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    w.wake(id);
                });
            }
        }
    }
}
