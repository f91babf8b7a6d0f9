//! The reconciler's driver: for each batch of woken devices, gather their
//! inputs from the store in one read (a fixed number of set-based queries),
//! call the pure `domain::reconcile::reconcile` per device, and write all
//! the plans in one transaction (each device's plan all or nothing) — then
//! publish their events and wake the devices' streams. Nothing here decides;
//! it translates, calls and translates back.
//!
//! Work is woken by nudges (an operation created or cancelled, a lock
//! report, an answer, a connect or disconnect, an approval) and by timers.
//! Timers live in the database (`devices.wake_at_ms`, written with each
//! plan); a sweep — periodic, and at once when another replica hands
//! devices over — claims those due of devices this replica holds or nobody
//! does, so a restart loses none. The in-memory timer set only makes them
//! punctual. A device whose stream another live replica holds is not
//! reconciled here: it is handed over (`ReplicaStore::forward_wakes`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::Notify;
use tracing::Instrument as _;

use crate::app::events::Events;
use crate::clock;
use crate::domain::reconcile::{self, ApprovalWrite, DeviceFacts, OpFacts, Plan, PlannedIntent};
use crate::domain::{
    self, AuditEntry, DeviceId, DeviceState, NewEvent, OperationSpec, Release, ReplicaId,
    RunningBlock, Timestamp,
};
use crate::edge::hub::Hub;
use crate::store::intents;
use crate::store::{ApprovalChange, DeviceRows, PlanWrite, Store, StoreError};
use crate::telemetry::{self, Metrics};

/// How often the safety sweep looks for due timers in the database.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// A claimed timer is pushed back this far, so it fires again elsewhere if
/// the claiming replica dies before reconciling the device.
const CLAIM_RETRY: Duration = Duration::from_secs(30);

/// Most wake-ups claimed per query.
const CLAIM_LIMIT: u32 = 1000;

/// Devices gathered, reconciled and written together.
const BATCH: usize = 128;

/// Batches reconciled at once (their devices are distinct: a busy device is
/// not handed out again). On Postgres this overlaps round trips; on SQLite
/// the reads overlap the one writer.
const BATCHES_IN_FLIGHT: usize = 4;

/// Releases kept in memory (they never change once created).
const RELEASE_CACHE: usize = 256;

/// What one batch reads once: each fleet's policy.
#[derive(Default)]
struct Pass {
    policies: Mutex<std::collections::HashMap<domain::FleetId, domain::FleetPolicy>>,
}

/// Devices waiting for the reconciler's attention, in the order they were
/// woken: a device's own facts (a lock let go, an answer, a state report)
/// before other work (new operations, timers, connections), so a holder
/// that releases is answered at once even while a fleet-wide operation
/// fans out. Each device is queued at most once, and is never handed out
/// while a batch holding it is being reconciled (a wake meanwhile queues it
/// again when that batch is done), so the queue is bounded by the number of
/// devices and no device is reconciled twice at once.
#[derive(Clone, Default)]
pub struct Wakeups {
    queue: Arc<Mutex<Queue>>,
    /// Devices to wake at a time: a cache of `devices.wake_at_ms` for
    /// punctuality, at most one entry per device and time.
    timers: Arc<Mutex<BTreeSet<(i64, DeviceId)>>>,
    notify: Arc<Notify>,
    /// Asks the sweep to claim due wake-ups now (another replica handed
    /// some over).
    sweep: Arc<Notify>,
}

#[derive(Default)]
struct Queue {
    /// Woken by their own facts: served first.
    first: VecDeque<DeviceId>,
    /// Everything else, in the order woken. A device moved ahead to
    /// `first` leaves a stale entry here, skipped when reached.
    rest: VecDeque<DeviceId>,
    /// Every queued device, and whether it is queued in `first`.
    queued: HashMap<DeviceId, bool>,
    /// Devices in a batch being reconciled.
    busy: HashSet<DeviceId>,
    /// Busy devices woken again meanwhile (true: by their own facts).
    again: HashMap<DeviceId, bool>,
}

impl Queue {
    /// Queues `device`; whether it was not queued before.
    fn push(&mut self, device: &DeviceId, first: bool) -> bool {
        if self.busy.contains(device) {
            *self.again.entry(device.clone()).or_default() |= first;
            return false;
        }
        match self.queued.get_mut(device) {
            // Already queued: a device's own facts move it ahead.
            Some(in_first) => {
                if first && !*in_first {
                    *in_first = true;
                    self.first.push_back(device.clone());
                }
                false
            }
            None => {
                self.queued.insert(device.clone(), first);
                if first {
                    self.first.push_back(device.clone());
                } else {
                    self.rest.push_back(device.clone());
                }
                true
            }
        }
    }

    /// The next queued device, now busy.
    fn pop(&mut self) -> Option<DeviceId> {
        loop {
            let d = self.first.pop_front().or_else(|| self.rest.pop_front())?;
            // A stale entry (taken already, through `first`) is skipped.
            if self.queued.remove(&d).is_some() {
                self.busy.insert(d.clone());
                return Some(d);
            }
        }
    }
}

impl Wakeups {
    /// Wakes `device` at `at`.
    pub fn wake_at(&self, device: &DeviceId, at: Timestamp) {
        self.timers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((at.0, device.clone()));
        self.notify.notify_one();
    }

    /// Moves due timers to the queue; returns when the next one is due.
    fn due(&self, now: Timestamp) -> Option<i64> {
        let mut timers = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        let later = timers.split_off(&(now.0 + 1, DeviceId::new("0").ok()?));
        let due = std::mem::replace(&mut *timers, later);
        let next = timers.first().map(|(t, _)| *t);
        drop(timers);
        for (_, d) in due {
            self.wake(&d);
        }
        next
    }

    /// Claims due wake-ups from the database now, not at the next sweep.
    pub fn sweep_now(&self) {
        self.sweep.notify_one();
    }

    /// Wakes `device` for work that is not its own news (an operation
    /// created or cancelled, a connection, a timer).
    pub fn wake(&self, device: &DeviceId) {
        self.push(device, false);
    }

    /// Wakes `device` because it reported something (a lock, an answer, its
    /// state): it goes before other work.
    pub fn wake_first(&self, device: &DeviceId) {
        self.push(device, true);
    }

    fn push(&self, device: &DeviceId, first: bool) {
        let pushed = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(device, first);
        if pushed {
            self.notify.notify_one();
        }
    }

    /// Up to `n` queued devices, now busy until [`Wakeups::done`].
    fn take(&self, n: usize) -> Vec<DeviceId> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(n.min(q.queued.len()));
        while out.len() < n {
            let Some(d) = q.pop() else { break };
            out.push(d);
        }
        out
    }

    /// The batch holding `devices` is done: those woken meanwhile queue again.
    fn done(&self, devices: &[DeviceId]) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut pushed = false;
        for d in devices {
            q.busy.remove(d);
            if let Some(first) = q.again.remove(d) {
                pushed |= q.push(d, first);
            }
        }
        drop(q);
        if pushed {
            self.notify.notify_one();
        }
    }

    fn queued(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .queued
            .len()
    }
}

/// Aborts the task when dropped (the sweep ends with the driver).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why the reconciler could not handle a device this time.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("store")]
    Store(#[from] StoreError),
}

pub struct Scheduler<S> {
    store: S,
    hub: Hub,
    wakeups: Wakeups,
    events: Events,
    metrics: Metrics,
    /// This replica: devices whose stream another replica holds are handed
    /// to it.
    replica: ReplicaId,
    /// How often the safety sweep claims due wake-ups without being asked.
    sweep_interval: Duration,
    /// Releases by id: a cache (a release is immutable once created).
    releases: Mutex<std::collections::HashMap<domain::ReleaseId, Arc<Release>>>,
}

/// One device's gathered input, owned.
struct Gathered {
    device: DeviceFacts,
    ops: Vec<OpFacts>,
    open_requests: Vec<reconcile::OpenRequest>,
    policy: domain::FleetPolicy,
    windows: Vec<domain::WindowRule>,
    wake_at: Option<Timestamp>,
    session_epoch: Option<u64>,
}

impl<S: Store> Scheduler<S> {
    pub fn new(store: S, hub: Hub, wakeups: Wakeups, events: Events, replica: ReplicaId) -> Self {
        Self {
            store,
            hub,
            wakeups,
            events,
            replica,
            sweep_interval: SWEEP_INTERVAL,
            metrics: Metrics::default(),
            releases: Mutex::default(),
        }
    }

    /// Sweeps every `every` instead of [`SWEEP_INTERVAL`].
    pub fn with_sweep_interval(self, every: Duration) -> Self {
        Self {
            sweep_interval: every,
            ..self
        }
    }

    /// Records decision latency and intents sent in `metrics`.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        Self { metrics, ..self }
    }

    /// Runs until the task is aborted. Resumes unfinished operations first.
    pub async fn run(self) {
        match self.store.devices_with_active_operations().await {
            Ok(devices) => devices.iter().for_each(|d| self.wakeups.wake(d)),
            Err(e) => tracing::warn!(error = %e, "cannot list active operations at start"),
        }
        // The safety sweep reads the database on its own task: the loop
        // below must keep polling the batches in flight (they hold pool
        // connections) and never wait on the store itself.
        let _sweep = {
            let store = self.store.clone();
            let wakeups = self.wakeups.clone();
            let replica = self.replica.clone();
            let every = self.sweep_interval;
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    // Claims what is due here: timers and wake-ups handed
                    // over by other replicas, of devices this replica holds
                    // or nobody does. A claimed timer is pushed back by
                    // CLAIM_RETRY in case this replica dies before acting.
                    loop {
                        let now = clock::now();
                        let retry = Timestamp(now.0 + CLAIM_RETRY.as_millis() as i64);
                        match store.claim_wakes(&replica, now, retry, CLAIM_LIMIT).await {
                            Ok(due) => {
                                due.iter().for_each(|d| wakeups.wake(d));
                                if due.len() < CLAIM_LIMIT as usize {
                                    break;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot claim due wake-ups");
                                break;
                            }
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = wakeups.sweep.notified() => {}
                    }
                }
            }))
        };
        // Batches being reconciled; a new one starts whenever one is done
        // and devices are waiting (never a pass to wait out).
        let mut in_flight = futures::stream::FuturesUnordered::new();
        loop {
            let now = clock::now();
            let next_timer = self.wakeups.due(now);
            while in_flight.len() < BATCHES_IN_FLIGHT {
                let waiting = self.wakeups.queued();
                if waiting == 0 {
                    break;
                }
                // Waiting devices spread over the free slots, up to a batch.
                let free = BATCHES_IN_FLIGHT - in_flight.len();
                let batch = self.wakeups.take(waiting.div_ceil(free).clamp(1, BATCH));
                in_flight.push(self.handle_batch(batch));
            }
            let wait = match next_timer {
                Some(at) => Duration::from_millis(u64::try_from(at - now.0).unwrap_or(0)),
                None => SWEEP_INTERVAL,
            };
            tokio::select! {
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    self.wakeups.done(&done);
                }
                _ = self.wakeups.notify.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Gathers, reconciles and writes one batch; returns its devices.
    async fn handle_batch(&self, batch: Vec<DeviceId>) -> Vec<DeviceId> {
        let span = tracing::info_span!(
            "scheduler.decide",
            otel.status_code = tracing::field::Empty,
            devices = batch.len(),
            device = tracing::field::Empty,
            operation = tracing::field::Empty,
            step = tracing::field::Empty,
        );
        if batch.len() == 1 {
            span.record("device", tracing::field::display(&batch[0]));
        }
        // Fleet policies are read once per batch.
        let pass = Pass::default();
        let handled = self
            .reconcile_batch(&batch, &pass)
            .instrument(span.clone())
            .await;
        if let Err(e) = handled {
            span.record("otel.status_code", "ERROR");
            tracing::warn!(devices = batch.len(), error = %e, source = ?std::error::Error::source(&e), "reconciling failed; retrying shortly");
            self.retry_later(batch.clone());
        }
        batch
    }

    /// Wakes `devices` again after a pause (the store failed them).
    fn retry_later(&self, devices: Vec<DeviceId>) {
        let wakeups = self.wakeups.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            devices.iter().for_each(|d| wakeups.wake(d));
        });
    }

    /// The fleet's policy, read once per batch.
    async fn policy(
        &self,
        fleet: &domain::FleetId,
        pass: &Pass,
    ) -> Result<domain::FleetPolicy, StoreError> {
        let cached = pass
            .policies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(fleet)
            .cloned();
        if let Some(p) = cached {
            return Ok(p);
        }
        let p = self.store.fleet_policy(fleet).await?;
        pass.policies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fleet.clone(), p.clone());
        Ok(p)
    }

    /// Turns the rows the store read for one device into the reconciler's
    /// input (releases and block versions resolved through the cache).
    async fn input_from(
        &self,
        rows: DeviceRows,
        pass: &Pass,
        now: Timestamp,
    ) -> Result<Gathered, ScheduleError> {
        let DeviceRows {
            device: record,
            plan_state,
            ops: records,
            acks,
            open_requests,
            report,
            locks,
            env,
            approvals,
            windows,
        } = rows;
        let device = record.id.clone();
        let mut facts = DeviceFacts {
            id: device.clone(),
            fleet: record.fleet.clone(),
            // Online is what the database says, for every replica alike.
            online: plan_state.session.as_ref().is_some_and(|s| s.is_live(now)),
            status: record.status,
            state: None,
            current: None,
            desired_env: env,
            applied_env: plan_state.applied_env,
            reported_at: Timestamp(0),
            last_apply_answer_at: plan_state.last_apply_answer_at,
        };
        let wake_at = plan_state.wake_at;
        // Plans of a device held by this replica are fenced by its session.
        let session_epoch = plan_state
            .session
            .as_ref()
            .filter(|s| s.is_live(now))
            .map(|s| s.epoch);
        if records.is_empty() {
            return Ok(Gathered {
                session_epoch,
                device: facts,
                ops: Vec::new(),
                open_requests,
                policy: domain::FleetPolicy::default(),
                windows: Vec::new(),
                wake_at,
            });
        }
        let policy = self.policy(&record.fleet, pass).await?;
        if let Some(report) = report {
            facts.reported_at = report.reported;
            let current = match &report.current_release {
                Some(id) => self.release(id).await?,
                None => None,
            };
            let empty = Arc::new(domain::Env::new());
            let mut blocks = BTreeMap::new();
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
            facts.state = Some(DeviceState {
                id: device.clone(),
                current_release: report.current_release.clone(),
                os_version: report.os_version.clone(),
                env: Arc::new(facts.desired_env.clone()),
                blocks,
                locks,
            });
            facts.current = current;
        }
        let mut ops = Vec::with_capacity(records.len());
        let mut needs_windows = false;
        for record in records {
            let release = match &record.spec {
                OperationSpec::AssignRelease(id) => self.release(id).await?,
                _ => None,
            };
            let approval = if policy.needs_approval(&record.spec) {
                approvals.get(&record.id).cloned()
            } else {
                None
            };
            needs_windows |=
                policy.needs_window(&record.spec) || policy.needs_approval(&record.spec);
            ops.push(OpFacts {
                answer: acks.answers.get(&record.id).cloned(),
                deferrals: acks.deferrals.get(&record.id).cloned().unwrap_or_default(),
                record,
                release,
                approval,
            });
        }
        let windows = if needs_windows {
            windows.into_iter().map(|w| w.rule).collect()
        } else {
            Vec::new()
        };
        Ok(Gathered {
            session_epoch,
            device: facts,
            ops,
            open_requests,
            policy,
            windows,
            wake_at,
        })
    }

    async fn release(&self, id: &domain::ReleaseId) -> Result<Option<Arc<Release>>, StoreError> {
        if let Some(r) = self
            .releases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            return Ok(Some(Arc::clone(r)));
        }
        match self.store.get_release(id).await {
            Ok(r) => {
                let r = Arc::new(r);
                let mut cache = self.releases.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= RELEASE_CACHE {
                    cache.clear();
                }
                cache.insert(id.clone(), Arc::clone(&r));
                Ok(Some(r))
            }
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Gather → reconcile → write for a batch of devices: one read, a pure
    /// decision per device, one write transaction (a device whose
    /// operations moved on meanwhile is woken to decide again).
    async fn reconcile_batch(
        &self,
        devices: &[DeviceId],
        pass: &Pass,
    ) -> Result<(), ScheduleError> {
        // One activation, one `now`.
        let now = clock::now();
        // A device another live replica holds is reconciled there (it
        // delivers its intents): hand the wake-up over, gather the rest.
        let sessions = self.store.sessions(devices).await?;
        let holder = |s: Option<&domain::AgentSession>| {
            s.filter(|s| s.held_elsewhere(&self.replica, now))
                .and_then(|s| s.replica.clone())
        };
        let mut elsewhere: Vec<(DeviceId, ReplicaId)> = Vec::new();
        let mut here = Vec::with_capacity(devices.len());
        for d in devices {
            match holder(sessions.get(d)) {
                Some(r) => elsewhere.push((d.clone(), r)),
                None => here.push(d.clone()),
            }
        }
        let rows = if here.is_empty() {
            Default::default()
        } else {
            self.store.gather(&here).await?
        };
        let mut inputs = Vec::with_capacity(rows.len());
        for (device, r) in rows {
            // Taken over between the two reads: hand it over too.
            if let Some(to) = holder(r.plan_state.session.as_ref()) {
                elsewhere.push((device, to));
                continue;
            }
            inputs.push(self.input_from(r, pass, now).await?);
        }
        if !elsewhere.is_empty() {
            // Each holder is told once.
            let mut to: Vec<ReplicaId> = elsewhere.iter().map(|(_, r)| r.clone()).collect();
            to.sort();
            to.dedup();
            let devices: Vec<DeviceId> = elsewhere.into_iter().map(|(d, _)| d).collect();
            self.store.forward_wakes(&devices, &to, now).await?;
        }
        let mut writes = Vec::new();
        let mut planned = Vec::new();
        for g in inputs {
            let started = std::time::Instant::now();
            let plan = reconcile::reconcile(&reconcile::Input {
                now,
                device: &g.device,
                ops: &g.ops,
                open_requests: &g.open_requests,
                policy: &g.policy,
                windows: &g.windows,
            });
            self.metrics.decision(started.elapsed());
            if let Some(op) = g.ops.first() {
                telemetry::record_operation(&op.record.id);
            }
            let status_changes = plan.device_status.is_some_and(|s| s != g.device.status);
            if plan.is_empty() && !status_changes && plan.wake_at == g.wake_at {
                continue;
            }
            if devices.len() == 1 {
                tracing::Span::current().record("step", plan_summary(&plan));
            }
            let write = to_write(&plan, &g.device, g.session_epoch, now);
            writes.push((g.device.id.clone(), write));
            planned.push(plan);
        }
        if writes.is_empty() {
            return Ok(());
        }
        let results = self.store.write_plans(&writes, now).await?;
        let mut failed = Vec::new();
        for (((device, write), plan), result) in writes.iter().zip(planned).zip(results) {
            match result {
                Ok(_) => self.after_write(device, write, plan),
                // An operation changed meanwhile (cancelled, answered):
                // decide again on what is current.
                Err(StoreError::Conflict { .. }) => self.wakeups.wake(device),
                Err(e) => {
                    tracing::warn!(device = %device, error = %e, source = ?std::error::Error::source(&e), "writing a plan failed; retrying shortly");
                    failed.push(device.clone());
                }
            }
        }
        if !failed.is_empty() {
            self.retry_later(failed);
        }
        Ok(())
    }

    /// What follows a written plan: metrics, events, timers, the stream.
    fn after_write(&self, device: &DeviceId, write: &PlanWrite, plan: Plan) {
        for i in &plan.intents {
            let (kind, reason) = intent_metric(i);
            self.metrics.intent_sent(kind, reason);
        }
        // The plan's events are in the log now: watchers on every replica
        // read them from there.
        if !write.events.is_empty() {
            self.events.appended();
        }
        if let Some(at) = plan.wake_at {
            self.wakeups.wake_at(device, at);
        }
        // An approval written now is a fact the next reconciliation reads
        // (e.g. one moved to the next occurrence: holders are told it).
        if !plan.approvals.is_empty() {
            self.wakeups.wake(device);
        }
        if !write.intents.is_empty() {
            self.hub.notify(device);
        }
    }
}

/// The plan as the store writes it: intents encoded, audit entries dated
/// and attributed, approval requests with their audit entry.
fn to_write(
    plan: &Plan,
    device: &DeviceFacts,
    session_epoch: Option<u64>,
    now: Timestamp,
) -> PlanWrite {
    let audit = |op: domain::OperationId, action: &str, reason: &str, details: String| AuditEntry {
        at: now,
        actor: "scheduler".into(),
        action: action.into(),
        subject: format!("device {} operation {op}", device.id),
        fleet: Some(device.fleet.clone()),
        reason: reason.into(),
        details,
    };
    PlanWrite {
        ops: plan
            .ops
            .iter()
            .map(|w| (w.next.clone(), w.expected))
            .collect(),
        intents: plan.intents.iter().map(intents::encode).collect(),
        withdrawn: plan
            .intents
            .iter()
            .filter_map(|i| match i {
                PlannedIntent::Withdraw { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect(),
        approvals: plan
            .approvals
            .iter()
            .map(|a| match a {
                ApprovalWrite::Request { operation } => ApprovalChange::Request {
                    operation: *operation,
                    audit: audit(*operation, "approval_requested", "", "{}".into()),
                },
                ApprovalWrite::Missed { approval } => ApprovalChange::Missed {
                    approval: approval.clone(),
                },
                ApprovalWrite::MoveToNext {
                    operation,
                    occurrence,
                    decided_by,
                    message,
                } => ApprovalChange::Approved {
                    operation: *operation,
                    occurrence: *occurrence,
                    decided_by: decided_by.clone(),
                    message: message.clone(),
                },
            })
            .collect(),
        audits: plan
            .audits
            .iter()
            .map(|a| {
                audit(
                    a.operation,
                    a.action,
                    &a.reason,
                    crate::store::blocks_audit_details(&a.blocks),
                )
            })
            .collect(),
        device_status: plan.device_status,
        applied_env: plan.applied_env.clone(),
        wake_at: plan.wake_at,
        events: plan
            .events
            .iter()
            .map(|(op, kind)| NewEvent::device(&device.fleet, &device.id, Some(*op), kind.clone()))
            .collect(),
        session_epoch,
    }
}

/// A planned intent's kind and reason, for `lockstep.intents.sent`.
fn intent_metric(i: &PlannedIntent) -> (&'static str, &'static str) {
    match i {
        PlannedIntent::ReleaseRequest { request, .. } => {
            ("release_request", request.reason.as_str())
        }
        PlannedIntent::Notice { reason, .. } => ("notice", reason.as_str()),
        PlannedIntent::Apply { .. } => ("apply", "none"),
        PlannedIntent::Withdraw { .. } => ("cancel", "none"),
    }
}

/// What a plan does, for the decision span.
fn plan_summary(plan: &Plan) -> &'static str {
    if plan
        .intents
        .iter()
        .any(|i| matches!(i, PlannedIntent::Apply { .. }))
    {
        "apply"
    } else if plan
        .intents
        .iter()
        .any(|i| matches!(i, PlannedIntent::ReleaseRequest { .. }))
    {
        "request_release"
    } else if plan.ops.is_empty() {
        "status"
    } else {
        "update"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    #[test]
    fn devices_reporting_go_first_then_the_rest_in_the_order_woken() {
        let w = Wakeups::default();
        w.wake(&d("a"));
        w.wake(&d("b"));
        w.wake_first(&d("c"));
        w.wake(&d("a")); // already queued: once
        w.wake_first(&d("b")); // its own news moves it ahead
        assert_eq!(w.queued(), 3);
        assert_eq!(w.take(10), vec![d("c"), d("b"), d("a")]);
        assert_eq!(w.queued(), 0);
        assert!(w.take(10).is_empty());
    }

    #[test]
    fn a_busy_device_is_not_handed_out_again_until_its_batch_is_done() {
        let w = Wakeups::default();
        w.wake(&d("a"));
        w.wake(&d("b"));
        assert_eq!(w.take(1), vec![d("a")]);
        // Woken while its batch runs: held back, not handed to another.
        w.wake_first(&d("a"));
        assert_eq!(w.take(10), vec![d("b")]);
        assert!(w.take(10).is_empty());
        // Its batch is done: it is queued again, as its own news.
        w.done(&[d("a")]);
        w.wake(&d("c"));
        assert_eq!(w.take(10), vec![d("a"), d("c")]);
        // Done without being woken meanwhile: nothing to do.
        w.done(&[d("a"), d("b"), d("c")]);
        assert_eq!(w.queued(), 0);
    }

    #[test]
    fn a_device_moved_ahead_is_handed_out_once() {
        let w = Wakeups::default();
        w.wake(&d("a"));
        w.wake_first(&d("a"));
        assert_eq!(w.take(1), vec![d("a")]);
        w.done(&[d("a")]);
        // Queued again later: once, though an old place in line remains.
        w.wake(&d("a"));
        w.wake(&d("b"));
        assert_eq!(w.queued(), 2);
        assert_eq!(w.take(10), vec![d("a"), d("b")]);
        assert!(w.take(10).is_empty());
    }

    #[test]
    fn take_hands_out_at_most_what_is_asked() {
        let w = Wakeups::default();
        for i in 0..5 {
            w.wake(&d(&format!("dev-{i}")));
        }
        assert_eq!(w.take(2).len(), 2);
        assert_eq!(w.queued(), 3);
        assert_eq!(w.take(2).len(), 2);
        assert_eq!(w.take(2).len(), 1);
    }
}
