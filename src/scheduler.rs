//! The scheduler: for each device with work, gather its state from the store,
//! ask the pure core what to do (`domain::decide`, `domain::next_step`), and
//! act — append intents and update the operation in one transaction, then
//! wake the device's stream. It is woken by events (an operation created,
//! a lock report, an acknowledgement, a connect or disconnect), never by
//! polling every device.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::Instrument as _;

use crate::clock;
use crate::domain::{
    self, ApplyOutcome, AuditEntry, DeviceId, DeviceState, DeviceStatus, EnvContext, IntentKind,
    NewIntent, OpStatus, Operation, OperationRecord, OperationSpec, Reason, Release, RunningBlock,
    Step,
};
use crate::events::{EventKind, Events};
use crate::hub::Hub;
use crate::intents::{ApplyOp, IntentBody, TargetBlock};
use crate::store::{EnvOwner, Store, StoreError};
use crate::telemetry::{self, Metrics};

/// Devices waiting for the scheduler's attention. Each device is queued at
/// most once, so the queue is bounded by the number of devices.
#[derive(Clone, Default)]
pub struct Wakeups {
    pending: Arc<Mutex<BTreeSet<DeviceId>>>,
    /// Devices to wake at a time (a window opening or closing): a cache
    /// rebuilt from the database at start, at most one entry per device and
    /// time.
    timers: Arc<Mutex<BTreeSet<(i64, DeviceId)>>>,
    notify: Arc<Notify>,
}

impl Wakeups {
    /// Wakes `device` at `at` (milliseconds since the epoch).
    pub fn wake_at(&self, device: &DeviceId, at: domain::Timestamp) {
        self.timers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((at.0, device.clone()));
        self.notify.notify_one();
    }

    /// Moves due timers to the pending set; returns when the next one is due.
    fn due(&self, now: domain::Timestamp) -> Option<i64> {
        let mut timers = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        let later = timers.split_off(&(now.0 + 1, DeviceId::new("0").ok()?));
        let due = std::mem::replace(&mut *timers, later);
        drop(timers);
        for (_, d) in due {
            self.wake(&d);
        }
        self.timers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first()
            .map(|(t, _)| *t)
    }

    pub fn wake(&self, device: &DeviceId) {
        let inserted = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device.clone());
        if inserted {
            self.notify.notify_one();
        }
    }

    fn take(&self) -> BTreeSet<DeviceId> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Why the scheduler could not handle a device this time.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Scheduler<S> {
    store: S,
    hub: Hub,
    wakeups: Wakeups,
    events: Events,
    metrics: Metrics,
}

/// What the gather step found for a device.
struct Gathered {
    state: DeviceState,
    current: Option<Arc<Release>>,
}

impl<S: Store> Scheduler<S> {
    pub fn new(store: S, hub: Hub, wakeups: Wakeups, events: Events) -> Self {
        Self {
            store,
            hub,
            wakeups,
            events,
            metrics: Metrics::default(),
        }
    }

    /// Records decision latency and intents sent in `metrics`.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        Self { metrics, ..self }
    }

    /// The pure decision, timed for `lockstep.scheduler.decision.duration`.
    fn decide(
        &self,
        operation: &Operation,
        state: &DeviceState,
        force: Option<&domain::Force>,
    ) -> Result<domain::Decision, domain::ImpactError> {
        let started = std::time::Instant::now();
        let decision = domain::decide(operation, state, force);
        self.metrics.decision(started.elapsed());
        decision
    }

    /// Runs until the task is aborted. Resumes unfinished operations first.
    pub async fn run(self) {
        match self.store.devices_with_active_operations().await {
            Ok(devices) => devices.iter().for_each(|d| self.wakeups.wake(d)),
            Err(e) => tracing::warn!(error = %e, "cannot list active operations at start"),
        }
        loop {
            let next_timer = self.wakeups.due(clock::now());
            let pending_now = !self
                .wakeups
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty();
            if !pending_now {
                match next_timer {
                    Some(at) => {
                        let wait =
                            Duration::from_millis(u64::try_from(at - clock::now().0).unwrap_or(0));
                        let _ = tokio::time::timeout(wait, self.wakeups.notify.notified()).await;
                    }
                    None => self.wakeups.notify.notified().await,
                }
            }
            self.wakeups.due(clock::now());
            for device in self.wakeups.take() {
                // One span per decision; `operation` and `step` are
                // recorded once known.
                let span = tracing::info_span!(
                    "scheduler.decide",
                    otel.status_code = tracing::field::Empty,
                    device = %device,
                    operation = tracing::field::Empty,
                    step = tracing::field::Empty,
                );
                let handled = self.handle(&device).instrument(span.clone()).await;
                if let Err(e) = handled {
                    span.record("otel.status_code", "ERROR");
                    tracing::warn!(device = %device, error = %e, "scheduling failed; retrying shortly");
                    let wakeups = self.wakeups.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        wakeups.wake(&device);
                    });
                }
            }
        }
    }

    async fn gather(&self, device: &DeviceId) -> Result<Option<Gathered>, ScheduleError> {
        let record = self.store.get_device(device).await?;
        let Some(report) = self.store.device_report(device).await? else {
            return Ok(None);
        };
        let fleet = self
            .store
            .env_layer(&EnvOwner::Fleet(record.fleet.clone()))
            .await?;
        let own = self
            .store
            .env_layer(&EnvOwner::Device(device.clone()))
            .await?;
        let env = Arc::new(EnvContext { fleet, device: own });
        let current = match &report.current_release {
            Some(id) => match self.store.get_release(id).await {
                Ok(r) => Some(Arc::new(r)),
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        let empty = Arc::new(domain::Env::new());
        let mut blocks = std::collections::BTreeMap::new();
        for (name, rb) in &report.blocks {
            let from_release = current
                .as_ref()
                .and_then(|r| r.blocks().get(name))
                .filter(|bv| bv.version == rb.version);
            let spec = match from_release {
                Some(bv) => Arc::clone(bv),
                None => {
                    let mut found = self
                        .store
                        .get_block_versions(&[(name.clone(), rb.version.clone())])
                        .await?;
                    match found.pop() {
                        Some(bv) => Arc::new(bv),
                        None => continue,
                    }
                }
            };
            blocks.insert(
                name.clone(),
                RunningBlock {
                    spec,
                    release_env: current
                        .as_ref()
                        .map_or_else(|| Arc::clone(&empty), |r| Arc::clone(r.env())),
                    env_fingerprint: rb.env_fingerprint,
                },
            );
        }
        let locks = self.store.device_locks(device).await?;
        Ok(Some(Gathered {
            state: DeviceState {
                id: device.clone(),
                current_release: report.current_release.clone(),
                os_version: report.os_version.clone(),
                env,
                blocks,
                locks,
            },
            current,
        }))
    }

    /// Gather → decide → act for one device.
    async fn handle(&self, device: &DeviceId) -> Result<(), ScheduleError> {
        let Some(mut op) = self.store.current_operation(device).await? else {
            return Ok(());
        };
        if matches!(op.spec, domain::OperationSpec::AssignRelease(_))
            && matches!(
                op.status,
                OpStatus::Pending
                    | OpStatus::WaitingLock
                    | OpStatus::WaitingWindow
                    | OpStatus::WaitingApproval
            )
            && self
                .store
                .supersede_older_assignments(device, clock::now())
                .await?
                > 0
        {
            tracing::info!(device = %device, operation = %op.id, "a newer release assignment supersedes this one");
            match self.store.current_operation(device).await? {
                Some(current) => op = current,
                None => return Ok(()),
            }
        }
        telemetry::record_operation(&op.id);
        if op.status == OpStatus::Applying {
            return Ok(());
        }
        let online = self.hub.is_connected(device);
        let Some(g) = self.gather(device).await? else {
            // Never reported: nothing to decide against until it connects.
            return Ok(());
        };
        // Decide.
        let (operation, apply_op, target_name) = match self.to_domain(&op, &g).await {
            Ok(x) => x,
            Err(error) => {
                tracing::Span::current().record("step", "fail");
                return self.act(&op, Step::Fail { error }, None, "").await;
            }
        };
        let record = self.store.get_device(device).await?;
        let policy = self.store.fleet_policy(&record.fleet).await?;
        let mut decision = self.decide(&operation, &g.state, op.force.as_ref());
        // Bounded deferral: holders waited on past the fleet's limit.
        if let Ok(domain::Decision::Blocked { holders, .. }) = &decision {
            let now = clock::now();
            let expired = domain::expired_holders(&op.progress, holders, now, &policy);
            if expired.is_empty() {
                if let Some(at) = domain::deferral_deadline(&op.progress, holders, &policy) {
                    self.wakeups.wake_at(device, at);
                }
            } else {
                match policy.on_deferral_expiry {
                    domain::DeferralExpiry::Force => {
                        let names: Vec<String> = expired.iter().map(ToString::to_string).collect();
                        if let Ok(time_force) = domain::Force::new(
                            expired.into_iter().collect(),
                            "deferral limit reached",
                        ) {
                            let merged = match &op.force {
                                Some(f) => f.merge(&time_force),
                                None => time_force,
                            };
                            decision = self.decide(&operation, &g.state, Some(&merged));
                            tracing::warn!(device = %device, operation = %op.id, blocks = ?names, "deferral limit reached: overriding the holders' locks");
                            self.events.publish(
                                device,
                                Some(op.id),
                                EventKind::TimeForced {
                                    blocks: names.clone(),
                                },
                            );
                            self.audit(
                                "time_forced",
                                device,
                                &op,
                                "deferral limit reached",
                                &names,
                            )
                            .await?;
                        }
                    }
                    domain::DeferralExpiry::Notify => {
                        if !op.progress.overdue {
                            let mut next = op.clone();
                            next.progress.overdue = true;
                            // Device status first, so readers of the operation see it too.
                            self.store
                                .set_device_status(device, DeviceStatus::Overdue)
                                .await?;
                            match self.store.record_step(&next, op.status, &[], now).await {
                                Ok(_) => {}
                                Err(StoreError::Conflict { .. }) => {
                                    self.wakeups.wake(device);
                                    return Ok(());
                                }
                                Err(e) => return Err(e.into()),
                            }
                            let names: Vec<String> =
                                expired.iter().map(ToString::to_string).collect();
                            tracing::warn!(device = %device, operation = %op.id, blocks = ?names, "deferral limit reached: operation overdue");
                            self.events.publish(
                                device,
                                Some(op.id),
                                EventKind::Overdue {
                                    blocks: names.clone(),
                                },
                            );
                            self.audit(
                                "deferral_expired",
                                device,
                                &op,
                                "deferral limit reached",
                                &names,
                            )
                            .await?;
                            op = next;
                        }
                    }
                }
            }
        }
        if let Ok(domain::Decision::Proceed { forced, .. }) = &decision
            && !forced.is_empty()
            && online
        {
            let reason = op
                .force
                .as_ref()
                .map(|f| f.reason().to_owned())
                .unwrap_or_default();
            self.store
                .append_audit(&AuditEntry {
                    at: clock::now(),
                    actor: "scheduler".into(),
                    action: "force_applied".into(),
                    subject: format!("device {device} operation {}", op.id),
                    fleet: Some(record.fleet.clone()),
                    reason,
                    details: serde_json::json!({ "overridden": forced.iter().map(ToString::to_string).collect::<Vec<_>>() }).to_string(),
                })
                .await?;
        }
        let mut gate = self.window_gate(&op, device, &policy).await?;
        if policy.needs_approval(&op.spec) {
            match self.approval(&op, device, &policy).await? {
                Some(g) => gate = g,
                None => return Ok(()),
            }
        }
        // Partial releases: update what is not held back now.
        let mut apply_op = apply_op;
        let mut partial = false;
        if policy.partial_releases
            && let (
                Ok(domain::Decision::Blocked { holders, impact }),
                Operation::UpdateRelease { target },
            ) = (&decision, &operation)
        {
            let held = domain::held_back(holders, impact);
            let pt = Arc::new(domain::partial_target(target, &g.state.blocks, &held));
            let pd = self.decide(
                &Operation::UpdateRelease {
                    target: Arc::clone(&pt),
                },
                &g.state,
                op.force.as_ref(),
            );
            if let Ok(domain::Decision::Proceed {
                impact: pi,
                fence,
                forced,
            }) = pd
                && (!pi.disturbed.is_empty() || !pi.started.is_empty())
            {
                tracing::info!(device = %device, operation = %op.id, held = ?held, "partial release: updating the blocks not held back");
                let mut pi = pi;
                // Held blocks will restart later: no "untouched" notice for them.
                pi.notices = pi
                    .notices
                    .into_iter()
                    .filter(|(b, _)| !held.contains(b))
                    .collect();
                decision = Ok(domain::Decision::Proceed {
                    impact: pi,
                    fence,
                    forced,
                });
                apply_op = ApplyOp::ReleaseUpdate {
                    release: pt.release.id().to_string(),
                    blocks: pt
                        .release
                        .blocks()
                        .values()
                        .map(|bv| TargetBlock::new(bv, pt.release.env(), &g.state.env))
                        .collect(),
                };
                partial = true;
            }
        }
        let step = domain::next_step(&op, decision, online, gate);
        tracing::Span::current().record("step", step_name(&step));
        tracing::debug!(device = %device, operation = %op.id, ?step, partial, "scheduler decision");
        self.act_partial(&op, step, Some(apply_op), &target_name, partial)
            .await
    }

    /// The device's fleet, for the audit log (`None` if it cannot be read).
    async fn fleet_of(&self, device: &DeviceId) -> Option<domain::FleetId> {
        self.store.get_device(device).await.ok().map(|d| d.fleet)
    }

    /// Writes a scheduler decision about some blocks to the audit log.
    async fn audit(
        &self,
        action: &str,
        device: &DeviceId,
        op: &OperationRecord,
        reason: &str,
        blocks: &[String],
    ) -> Result<(), StoreError> {
        self.store
            .append_audit(&AuditEntry {
                at: clock::now(),
                actor: "scheduler".into(),
                action: action.into(),
                subject: format!("device {device} operation {}", op.id),
                fleet: self.fleet_of(device).await,
                reason: reason.into(),
                details: serde_json::json!({ "blocks": blocks }).to_string(),
            })
            .await
            .map(drop)
    }

    /// For an operation that needs a customer's approval: the approved
    /// occurrence as its window, or `None` after moving it to
    /// `waiting_approval` (asking, asking again after a missed occurrence) or
    /// ending it (declined).
    async fn approval(
        &self,
        op: &OperationRecord,
        device: &DeviceId,
        policy: &domain::FleetPolicy,
    ) -> Result<Option<domain::WindowGate>, ScheduleError> {
        let now = clock::now();
        let latest = self.store.latest_approval(op.id).await?;
        let set_status = |status: OpStatus, error: Option<String>| {
            let mut next = op.clone();
            next.status = status;
            if error.is_some() {
                next.progress.error = error;
            }
            next
        };
        match domain::approval_gate(latest.as_ref(), now) {
            domain::ApprovalGate::Approved(g) => {
                if let Some(o) = g.occurrence() {
                    self.wakeups.wake_at(device, o.start);
                    self.wakeups.wake_at(device, o.end);
                }
                Ok(Some(g))
            }
            domain::ApprovalGate::Waiting => {
                if op.status != OpStatus::WaitingApproval {
                    self.store
                        .set_device_status(device, DeviceStatus::WaitingApproval)
                        .await?;
                    self.store
                        .record_step(
                            &set_status(OpStatus::WaitingApproval, None),
                            op.status,
                            &[],
                            now,
                        )
                        .await?;
                }
                Ok(None)
            }
            gate @ (domain::ApprovalGate::Request | domain::ApprovalGate::Missed) => {
                if let (domain::ApprovalGate::Missed, Some(prev)) = (gate, &latest) {
                    let mut missed = prev.clone();
                    missed.status = domain::ApprovalStatus::Missed;
                    self.store
                        .decide_approval(prev.id, domain::ApprovalStatus::Approved, &missed, now)
                        .await?;
                    // Policy `next`: carry the approval to the next occurrence.
                    if policy.missed_moves_to_next
                        && let Some(was) = prev.occurrence
                    {
                        let rules: Vec<domain::WindowRule> = self
                            .store
                            .windows_for_device(device)
                            .await?
                            .into_iter()
                            .map(|w| w.rule)
                            .collect();
                        let candidates: Vec<domain::Occurrence> =
                            rules.iter().flat_map(|r| r.occurrences(now, 8)).collect();
                        if let Some(next) = domain::next_after_missed(&candidates, was) {
                            let fresh = self.store.create_approval(op.id, now).await?;
                            let moved = domain::Approval {
                                status: domain::ApprovalStatus::Approved,
                                occurrence: Some(next),
                                decided_by: Some(
                                    "policy: next occurrence after a missed one".into(),
                                ),
                                message: prev
                                    .decided_by
                                    .clone()
                                    .map(|who| format!("first approved by {who}")),
                                ..fresh.clone()
                            };
                            self.store
                                .decide_approval(
                                    fresh.id,
                                    domain::ApprovalStatus::Requested,
                                    &moved,
                                    now,
                                )
                                .await?;
                            self.audit(
                                "approval_moved",
                                device,
                                op,
                                "approved occurrence missed",
                                &[],
                            )
                            .await?;
                            tracing::info!(device = %device, operation = %op.id, next = ?next, "approved occurrence missed; moved to the next one");
                            self.wakeups.wake(device);
                            return Ok(None);
                        }
                    }
                    tracing::info!(device = %device, operation = %op.id, "approved occurrence missed; asking again");
                }
                let approval = self.store.create_approval(op.id, now).await?;
                self.store
                    .set_device_status(device, DeviceStatus::WaitingApproval)
                    .await?;
                self.store
                    .record_step(
                        &set_status(OpStatus::WaitingApproval, None),
                        op.status,
                        &[],
                        now,
                    )
                    .await?;
                self.store
                    .append_audit(&AuditEntry {
                        at: now,
                        actor: "scheduler".into(),
                        action: "approval_requested".into(),
                        subject: format!("device {device} operation {}", op.id),
                        fleet: self.fleet_of(device).await,
                        reason: String::new(),
                        details: serde_json::json!({ "approval": approval.id }).to_string(),
                    })
                    .await?;
                tracing::info!(device = %device, operation = %op.id, approval = approval.id, "customer approval requested");
                self.events
                    .publish(device, Some(op.id), EventKind::ApprovalRequested);
                Ok(None)
            }
            domain::ApprovalGate::Declined => {
                let who = latest
                    .as_ref()
                    .and_then(|a| a.decided_by.clone())
                    .unwrap_or_default();
                let why = latest
                    .as_ref()
                    .and_then(|a| a.message.clone())
                    .unwrap_or_default();
                let reason = format!("declined by {who}: {why}");
                self.store
                    .record_step(
                        &set_status(OpStatus::Cancelled, Some(reason.clone())),
                        op.status,
                        &[],
                        now,
                    )
                    .await?;
                self.store
                    .set_device_status(device, DeviceStatus::Pending)
                    .await?;
                self.events
                    .publish(device, Some(op.id), EventKind::Cancelled { reason });
                Ok(None)
            }
        }
    }

    /// Whether the fleet's policy puts this operation in a maintenance window,
    /// and if so whether one is open. Arms a timer for the next change.
    async fn window_gate(
        &self,
        op: &OperationRecord,
        device: &DeviceId,
        policy: &domain::FleetPolicy,
    ) -> Result<domain::WindowGate, ScheduleError> {
        if !policy.needs_window(&op.spec) {
            return Ok(domain::WindowGate::NotRequired);
        }
        let rules: Vec<domain::WindowRule> = self
            .store
            .windows_for_device(device)
            .await?
            .into_iter()
            .map(|w| w.rule)
            .collect();
        let now = clock::now();
        let (open, next) = domain::open_or_next(&rules, now);
        Ok(match open {
            Some(o) => {
                // Re-decide when it closes, in case it has not applied by then.
                self.wakeups.wake_at(device, o.end);
                domain::WindowGate::Open(o)
            }
            None => {
                if let Some(n) = next {
                    self.wakeups.wake_at(device, n.start);
                }
                domain::WindowGate::Closed { next }
            }
        })
    }

    /// The domain operation for a stored one, plus what the agent will be
    /// told to do and a short name of the target for release requests.
    async fn to_domain(
        &self,
        op: &OperationRecord,
        g: &Gathered,
    ) -> Result<(Operation, ApplyOp, String), String> {
        Ok(match &op.spec {
            OperationSpec::AssignRelease(id) => {
                let release = match self.store.get_release(id).await {
                    Ok(r) => Arc::new(r),
                    Err(e) => return Err(e.to_string()),
                };
                let target = Arc::new(release.resolve(&g.state.env));
                let blocks = release
                    .blocks()
                    .values()
                    .map(|bv| TargetBlock::new(bv, release.env(), &g.state.env))
                    .collect();
                (
                    Operation::UpdateRelease { target },
                    ApplyOp::ReleaseUpdate {
                        release: id.to_string(),
                        blocks,
                    },
                    id.to_string(),
                )
            }
            OperationSpec::RestartBlock(b) => (
                Operation::RestartBlock(b.clone()),
                ApplyOp::RestartBlock {
                    block: b.to_string(),
                },
                b.to_string(),
            ),
            OperationSpec::StopBlock(b) => (
                Operation::StopBlock(b.clone()),
                ApplyOp::StopBlock {
                    block: b.to_string(),
                },
                b.to_string(),
            ),
            OperationSpec::StartBlock(b) => {
                let Some(current) = &g.current else {
                    return Err(format!(
                        "block {b} cannot start: the device reports no current release"
                    ));
                };
                let Some(bv) = current.blocks().get(b) else {
                    return Err(format!("block {b} is not part of release {}", current.id()));
                };
                (
                    Operation::StartBlock(b.clone()),
                    ApplyOp::StartBlock {
                        block: Box::new(TargetBlock::new(bv, current.env(), &g.state.env)),
                    },
                    b.to_string(),
                )
            }
            OperationSpec::ApplyEnv => {
                let Some(current) = &g.current else {
                    return Err(
                        "env cannot be applied: the device reports no current release".into(),
                    );
                };
                let target = Arc::new(current.resolve(&g.state.env));
                let blocks = current
                    .blocks()
                    .values()
                    .map(|bv| TargetBlock::new(bv, current.env(), &g.state.env))
                    .collect();
                (
                    Operation::ApplyEnv { target },
                    ApplyOp::EnvUpdate { blocks },
                    "env".into(),
                )
            }
            OperationSpec::Reboot => (Operation::Reboot, ApplyOp::Reboot, "reboot".into()),
            OperationSpec::Shutdown => (Operation::Shutdown, ApplyOp::Shutdown, "shutdown".into()),
            OperationSpec::OsUpdate(v) => (
                Operation::OsUpdate { version: v.clone() },
                ApplyOp::OsUpdate { version: v.clone() },
                v.clone(),
            ),
        })
    }

    async fn act(
        &self,
        op: &OperationRecord,
        step: Step,
        apply_op: Option<ApplyOp>,
        target: &str,
    ) -> Result<(), ScheduleError> {
        self.act_partial(op, step, apply_op, target, false).await
    }

    async fn act_partial(
        &self,
        op: &OperationRecord,
        step: Step,
        apply_op: Option<ApplyOp>,
        target: &str,
        partial: bool,
    ) -> Result<(), ScheduleError> {
        let now = clock::now();
        let mut next = op.clone();
        next.progress.partial_in_flight = partial;
        // Each intent's kind and reason, for `lockstep.intents.sent`.
        let mut sent: Vec<(&'static str, &'static str)> = Vec::new();
        let (intents, device_status) = match step {
            Step::Wait => return Ok(()),
            Step::Fail { error } => {
                tracing::warn!(device = %op.device, operation = %op.id, %error, "operation failed");
                next.status = OpStatus::Failed;
                next.progress.error = Some(error);
                (Vec::new(), DeviceStatus::Failed)
            }
            Step::WaitWindow { next: upcoming } => {
                if op.status == OpStatus::WaitingWindow && op.progress.waiting_on.is_empty() {
                    return Ok(());
                }
                tracing::info!(device = %op.device, operation = %op.id, next = ?upcoming, "waiting for a maintenance window");
                next.status = OpStatus::WaitingWindow;
                next.progress.waiting_on.clear();
                (Vec::new(), DeviceStatus::WaitingWindow)
            }
            Step::RequestRelease {
                send,
                waiting_on,
                window,
                window_closed,
            } => {
                let status = if window_closed {
                    OpStatus::WaitingWindow
                } else if op.progress.partially_applied {
                    OpStatus::PartiallyApplied
                } else {
                    OpStatus::WaitingLock
                };
                if send.is_empty() && op.status == status && op.progress.waiting_on == waiting_on {
                    return Ok(());
                }
                next.status = status;
                next.progress.waiting_on = waiting_on;
                next.progress.told_window = window;
                let intents = send
                    .iter()
                    .map(|r| {
                        next.progress
                            .requested
                            .insert((r.block.clone(), r.generation));
                        next.progress.asked_at.entry(r.block.clone()).or_insert(now);
                        tracing::info!(device = %op.device, operation = %op.id, block = %r.block, reason = %r.reason, "asking lock holder to release");
                        sent.push((IntentKind::ReleaseRequest.as_str(), r.reason.as_str()));
                        NewIntent {
                            kind: IntentKind::ReleaseRequest,
                            body: IntentBody::release_request(r, target, window).to_json(),
                            operation: Some(op.id),
                        }
                    })
                    .collect();
                let device_status = if next.progress.overdue {
                    DeviceStatus::Overdue
                } else if next.progress.partially_applied {
                    DeviceStatus::PartiallyApplied
                } else if window_closed {
                    DeviceStatus::WaitingWindow
                } else {
                    DeviceStatus::WaitingLock
                };
                (intents, device_status)
            }
            Step::Apply {
                fence,
                disturbed,
                notices,
                forced,
            } => {
                let Some(apply_op) = apply_op else {
                    return Ok(());
                };
                next.status = OpStatus::Applying;
                next.progress.waiting_on.clear();
                let mut intents: Vec<NewIntent> = notices
                    .iter()
                    .filter(|(_, r)| **r == Reason::UpdateNoRestart)
                    .map(|(b, r)| {
                        sent.push((IntentKind::Notice.as_str(), r.as_str()));
                        NewIntent {
                            kind: IntentKind::Notice,
                            body: IntentBody::notice(
                                b,
                                *r,
                                format!(
                                    "release {target} lands; {b} is unchanged and keeps running"
                                ),
                            )
                            .to_json(),
                            operation: Some(op.id),
                        }
                    })
                    .collect();
                tracing::info!(device = %op.device, operation = %op.id, disturbed = disturbed.len(), "sending apply");
                sent.push((IntentKind::Apply.as_str(), "none"));
                intents.push(NewIntent {
                    kind: IntentKind::Apply,
                    body: IntentBody::apply(apply_op, &fence, &disturbed, &forced).to_json(),
                    operation: Some(op.id),
                });
                (intents, DeviceStatus::Applying)
            }
        };
        // The device status first: once the step commits, its intents may be
        // delivered and answered at once, and the answer's status must win.
        self.store
            .set_device_status(&op.device, device_status)
            .await?;
        match self
            .store
            .record_step(&next, op.status, &intents, now)
            .await
        {
            Ok(_) => {}
            // Cancelled or superseded meanwhile: decide again on what is current.
            Err(StoreError::Conflict { .. }) => {
                self.wakeups.wake(&op.device);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        for (kind, reason) in sent {
            self.metrics.intent_sent(kind, reason);
        }
        let event = match next.status {
            OpStatus::Failed => Some(EventKind::Failed {
                error: next.progress.error.clone().unwrap_or_default(),
            }),
            OpStatus::Applying => Some(EventKind::Applying),
            OpStatus::WaitingLock | OpStatus::WaitingWindow
                if !next.progress.waiting_on.is_empty() =>
            {
                Some(EventKind::BlockedByLock {
                    holders: next
                        .progress
                        .waiting_on
                        .iter()
                        .map(|r| format!("{}:{}", r.block, r.reason))
                        .collect(),
                })
            }
            OpStatus::WaitingWindow => Some(EventKind::WaitingWindow {
                next_start: next.progress.told_window.map(|o| o.start),
            }),
            _ => None,
        };
        if let Some(kind) = event
            && (next.status != op.status || !intents.is_empty())
        {
            self.events.publish(&op.device, Some(op.id), kind);
        }
        if !intents.is_empty() {
            self.hub.notify(&op.device);
        }
        Ok(())
    }
}

/// A step's name, for the decision span.
fn step_name(step: &Step) -> &'static str {
    match step {
        Step::Wait => "wait",
        Step::RequestRelease { .. } => "request_release",
        Step::WaitWindow { .. } => "wait_window",
        Step::Apply { .. } => "apply",
        Step::Fail { .. } => "fail",
    }
}

/// Applies an agent's answer to an apply intent: done, failed, or back to
/// pending to be decided again. Returns the operation's new status.
pub async fn on_apply_outcome<S: Store>(
    store: &S,
    wakeups: &Wakeups,
    events: &Events,
    op: &OperationRecord,
    outcome: &ApplyOutcome,
) -> Result<OpStatus, StoreError> {
    if op.status != OpStatus::Applying {
        return Ok(op.status);
    }
    let (status, progress) = domain::after_apply(op, outcome);
    let mut next = op.clone();
    next.status = status;
    next.progress = progress;
    let device_status = match status {
        OpStatus::Done => DeviceStatus::InSync,
        OpStatus::PartiallyApplied => DeviceStatus::PartiallyApplied,
        OpStatus::Failed => DeviceStatus::Failed,
        _ => DeviceStatus::Pending,
    };
    // Device status first, so whoever sees the operation's new status sees it too.
    store.set_device_status(&op.device, device_status).await?;
    store
        .record_step(&next, OpStatus::Applying, &[], clock::now())
        .await?;
    tracing::info!(device = %op.device, operation = %op.id, outcome = ?outcome, status = status.as_str(), "apply answered");
    match status {
        OpStatus::Done => events.publish(&op.device, Some(op.id), EventKind::Applied),
        OpStatus::Failed => events.publish(
            &op.device,
            Some(op.id),
            EventKind::Failed {
                error: next.progress.error.clone().unwrap_or_default(),
            },
        ),
        _ => {}
    }
    wakeups.wake(&op.device);
    Ok(status)
}

/// A holder deferred a release request: remember until when (shown on the
/// operation; the fleet's deferral limit still counts from the first request).
pub async fn on_deferred<S: Store>(
    store: &S,
    op: &OperationRecord,
    block: &domain::BlockName,
    until: domain::Timestamp,
) -> Result<(), StoreError> {
    if op.status.is_terminal() {
        return Ok(());
    }
    let mut next = op.clone();
    next.progress.deferred_until.insert(block.clone(), until);
    match store.record_step(&next, op.status, &[], clock::now()).await {
        Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
