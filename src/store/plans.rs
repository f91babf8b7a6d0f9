//! The reconciler's side of the store: the facts one reconciliation of a
//! device reads (its active operations, the agent's answers to their
//! intents, release requests still on the device, the env each block runs
//! with) and the one transaction that writes a plan — operations guarded
//! by their generation, intents, withdrawals, approvals, audit entries, the
//! device's status, applied env and next wake-up, all or nothing.
//!
//! Status sets come from the domain (`OpStatus::ACTIVE`…) and are bound as
//! parameters; no SQL here spells a status.

use std::collections::BTreeMap;

use crate::domain::reconcile::OpenRequest;
use crate::domain::{
    ApplyOutcome, Approval, AuditEntry, BlockName, DeviceId, DeviceStatus, Env, IntentSeq,
    NewIntent, Occurrence, OpStatus, OperationId, OperationRecord, Timestamp,
};

use super::StoreError;

/// The agent's answers that matter to the reconciler, per active operation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckFacts {
    /// The final answer to each operation's latest apply, once given.
    pub answers: BTreeMap<OperationId, ApplyOutcome>,
    /// Each holder's latest "defer until", per operation.
    pub deferrals: BTreeMap<OperationId, BTreeMap<BlockName, Timestamp>>,
}

/// What the store keeps for the reconciler about a device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanState {
    /// The operator env each block runs with, where recorded.
    pub applied_env: BTreeMap<BlockName, Env>,
    /// When the device is next due to be reconciled.
    pub wake_at: Option<Timestamp>,
    /// When the device last answered an apply.
    pub last_apply_answer_at: Option<Timestamp>,
    /// Its agent session, if it ever connected: which replica holds its
    /// stream, and until when that replica's lease runs.
    pub session: Option<crate::domain::AgentSession>,
}

/// Everything the store holds that one reconciliation of a device reads,
/// read for a whole batch of devices at once ([`PlanStore::gather`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRows {
    pub device: crate::domain::DeviceRecord,
    pub plan_state: PlanState,
    /// Active operations, oldest first.
    pub ops: Vec<OperationRecord>,
    pub acks: AckFacts,
    /// Release requests still on the device (neither released nor withdrawn).
    pub open_requests: Vec<OpenRequest>,
    pub report: Option<crate::domain::DeviceReport>,
    pub locks: BTreeMap<BlockName, crate::domain::LockState>,
    /// The operator env as stored: the fleet's layer and the device's own.
    pub env: crate::domain::EnvContext,
    /// The latest approval of each active operation that has one.
    pub approvals: BTreeMap<OperationId, Approval>,
    /// The maintenance windows that apply to the device.
    pub windows: Vec<crate::domain::Window>,
}

/// A change to a customer approval, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalChange {
    /// A new request; `audit` is written with the new approval's id.
    Request {
        operation: OperationId,
        audit: AuditEntry,
    },
    /// The approved occurrence passed unused.
    Missed { approval: Approval },
    /// A new approval, already approved for `occurrence`.
    Approved {
        operation: OperationId,
        occurrence: Occurrence,
        decided_by: String,
        message: Option<String>,
    },
}

/// One plan as the store writes it (intents already encoded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanWrite {
    /// Each operation's next record; written only if its stored generation
    /// is still `expected`.
    pub ops: Vec<(OperationRecord, u64)>,
    pub intents: Vec<NewIntent>,
    /// Release requests taken back by cancel intents in `intents`.
    pub withdrawn: Vec<IntentSeq>,
    pub approvals: Vec<ApprovalChange>,
    pub audits: Vec<AuditEntry>,
    pub device_status: Option<DeviceStatus>,
    pub applied_env: Option<BTreeMap<BlockName, Env>>,
    pub wake_at: Option<Timestamp>,
    /// The events the plan announces, appended to the log with it.
    pub events: Vec<crate::domain::NewEvent>,
    /// The agent session the plan was decided under: the write is refused
    /// (`Conflict`) if a newer stream took the device over meanwhile.
    pub session_epoch: Option<u64>,
}

/// An edit of one owner's env variables (unsets first, then sets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvEdit {
    pub set: Vec<crate::domain::EnvVar>,
    pub unset: Vec<(crate::domain::EnvName, crate::domain::EnvScope)>,
}

/// What an env edit did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvChanged {
    /// Stored entries removed by the unsets.
    pub removed: u64,
    /// The `apply_env` operation of each affected device (created, or the
    /// one not started yet about the same blocks that it merged into).
    pub operations: Vec<OperationRecord>,
}

/// `($first, $first+1, …)`: a placeholder per status of a domain set.
pub(crate) fn placeholders(first: usize, n: usize) -> String {
    let list: Vec<String> = (first..first + n).map(|i| format!("${i}")).collect();
    format!("({})", list.join(", "))
}

/// The statuses of a domain set, as bound.
pub(crate) fn status_names(set: &[OpStatus]) -> impl Iterator<Item = &'static str> + '_ {
    set.iter().map(|s| s.as_str())
}

/// The reconciler's reads and its one write. Every method is one
/// transaction (or one statement).
pub trait PlanStore {
    /// The device's active operations, oldest first.
    fn active_operations(
        &self,
        device: &DeviceId,
    ) -> impl Future<Output = Result<Vec<OperationRecord>, StoreError>> + Send;

    /// Everything one reconciliation reads, for each of `devices` that
    /// exists, in a fixed number of set-based queries inside one read
    /// transaction (one snapshot on Postgres), whatever the batch's size.
    fn gather(
        &self,
        devices: &[DeviceId],
    ) -> impl Future<Output = Result<BTreeMap<DeviceId, DeviceRows>, StoreError>> + Send;

    /// Writes a plan in one transaction. `Conflict` if any operation's
    /// generation moved on (nothing is written then).
    fn write_plan(
        &self,
        device: &DeviceId,
        plan: &PlanWrite,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<IntentSeq>, StoreError>> + Send;

    /// Writes a batch of plans in one transaction, each all or nothing on
    /// its own (a savepoint per device): a device whose operations moved
    /// on gets its `Conflict` back while the others are written. The outer
    /// error is for the transaction as a whole (nothing written then).
    #[allow(clippy::type_complexity)]
    fn write_plans(
        &self,
        plans: &[(DeviceId, PlanWrite)],
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<Result<Vec<IntentSeq>, StoreError>>, StoreError>> + Send;

    /// Devices whose wake-up time has come.
    fn due_wakeups(
        &self,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<DeviceId>, StoreError>> + Send;

    /// The earliest wake-up time of any device.
    fn next_wakeup(&self) -> impl Future<Output = Result<Option<Timestamp>, StoreError>> + Send;

    /// Moves an operation to `next` (e.g. cancelled) if its generation is
    /// still `next.generation`, with its audit entry, in one transaction.
    fn transition_operation(
        &self,
        next: &OperationRecord,
        audit: Option<&AuditEntry>,
        events: &[crate::domain::NewEvent],
        now: Timestamp,
    ) -> impl Future<Output = Result<OperationRecord, StoreError>> + Send;

    /// Edits `owner`'s env variables and creates the `apply_env` operations
    /// about `target`'s blocks that carry the edit to each affected device
    /// (none when `edit` changed nothing), in one transaction. First, every
    /// reported block of those devices without a recorded applied env gets
    /// the env it runs with now (the env as stored before the edit), so a
    /// pending change never leaks into another operation.
    fn change_env(
        &self,
        owner: &super::EnvOwner,
        edit: &EnvEdit,
        target: &crate::domain::EnvTarget,
        now: Timestamp,
    ) -> impl Future<Output = Result<EnvChanged, StoreError>> + Send;

    /// Records the phase an agent reports for an apply in flight.
    fn record_phase(
        &self,
        op: OperationId,
        phase: &str,
        now: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

macro_rules! impl_plan_store {
    ($store:ty, $db:ty) => {
        impl $crate::store::plans::PlanStore for $store {
            async fn active_operations(
                &self,
                device: &DeviceId,
            ) -> Result<Vec<OperationRecord>, StoreError> {
                use $crate::store::plans::{placeholders, status_names};
                let sql = format!(
                    "SELECT {OPERATION_COLUMNS_SQL} FROM operations WHERE device_id = $1 AND status IN {} ORDER BY id",
                    placeholders(2, OpStatus::ACTIVE.len())
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(device.as_str());
                for s in status_names(&OpStatus::ACTIVE) {
                    q = q.bind(s);
                }
                let rows = q.fetch_all(&self.pool).await.map_err(StoreError::from_sqlx)?;
                rows.iter().map(operation_from_row).collect()
            }

            async fn gather(
                &self,
                devices: &[DeviceId],
            ) -> Result<std::collections::BTreeMap<DeviceId, $crate::store::plans::DeviceRows>, StoreError> {
                use std::collections::BTreeMap;
                use $crate::store::codec::{AckFact, ack_fact};
                use $crate::store::plans::{DeviceRows, PlanState, placeholders};
                use $crate::domain::{DeviceReport, EnvContext, ReportedBlock, reconcile::OpenRequest};
                let mut out: BTreeMap<DeviceId, DeviceRows> = BTreeMap::new();
                if devices.is_empty() {
                    return Ok(out);
                }
                let n = devices.len();
                let ids = placeholders(1, n);
                let active = placeholders(n + 1, OpStatus::ACTIVE.len());
                let mut tx = self.begin_read().await?;
                let device_of = |r: &DbRow, column: &str| -> Result<DeviceId, StoreError> {
                    let d: String = get(r, column)?;
                    DeviceId::new(&d).map_err(|e| codec::corrupt("device", &d, e))
                };

                // Devices, with what the store keeps for the reconciler.
                let answered = n + 1;
                for r in &fetch_for_devices(&mut tx, format!(
                    "SELECT d.id, d.fleet, d.status, d.credential_revoked, d.created_ms, d.applied_env_json, d.wake_at_ms, \
                       (SELECT MAX(a.received_ms) FROM intent_acks a JOIN intents i ON i.device_id = a.device_id AND i.seq = a.seq \
                        WHERE a.device_id = d.id AND i.kind = ${answered}) AS answered, \
                       s.replica AS session_replica, s.epoch AS session_epoch, r.lease_until_ms AS session_lease \
                     FROM devices d LEFT JOIN agent_sessions s ON s.device_id = d.id \
                     LEFT JOIN replicas r ON r.id = s.replica WHERE d.id IN {ids}"
                ), devices, false, &[IntentKind::Apply.as_str()]).await? {
                    let device = device_from_row(r)?;
                    let json: String = get(r, "applied_env_json")?;
                    let wake_at: Option<i64> = get(r, "wake_at_ms")?;
                    let answered: Option<i64> = get(r, "answered")?;
                    let epoch: Option<i64> = get(r, "session_epoch")?;
                    let replica: Option<String> = get(r, "session_replica")?;
                    let lease: Option<i64> = get(r, "session_lease")?;
                    let session = match epoch {
                        Some(epoch) => Some($crate::domain::AgentSession {
                            replica: replica
                                .map(|p| $crate::domain::ReplicaId::new(&p).map_err(|e| codec::corrupt("agent session", &device.id, e)))
                                .transpose()?,
                            epoch: u64::try_from(epoch).unwrap_or(0),
                            lease_until: lease.map(Timestamp),
                        }),
                        None => None,
                    };
                    let plan_state = PlanState {
                        session,
                        applied_env: codec::block_envs_from_json(device.id.as_str(), &json)?,
                        wake_at: wake_at.map(Timestamp),
                        last_apply_answer_at: answered.map(Timestamp),
                    };
                    out.insert(device.id.clone(), DeviceRows {
                        device,
                        plan_state,
                        ops: Vec::new(),
                        acks: Default::default(),
                        open_requests: Vec::new(),
                        report: None,
                        locks: BTreeMap::new(),
                        env: EnvContext::default(),
                        approvals: BTreeMap::new(),
                        windows: Vec::new(),
                    });
                }
                if out.is_empty() {
                    return Ok(out);
                }
                for r in &fetch_for_devices(&mut tx, format!("SELECT device_id, tag FROM device_tags WHERE device_id IN {ids} ORDER BY device_id, tag"), devices, false, &[]).await? {
                    let (device, tag) = tag_from_row(r)?;
                    if let Some(d) = out.get_mut(&device) {
                        d.device.tags.insert(tag);
                    }
                }

                // Active operations, oldest first.
                for r in &fetch_for_devices(&mut tx, format!(
                    "SELECT {OPERATION_COLUMNS_SQL} FROM operations WHERE device_id IN {ids} AND status IN {active} ORDER BY id"
                ), devices, true, &[]).await? {
                    let op = operation_from_row(r)?;
                    if let Some(d) = out.get_mut(&op.device) {
                        d.ops.push(op);
                    }
                }

                // Answers to their intents: only the latest apply's answer counts.
                let kinds = n + OpStatus::ACTIVE.len() + 1;
                let rows = fetch_for_devices(&mut tx, format!(
                    "SELECT i.device_id AS device_id, i.operation_id AS operation_id, i.seq AS seq, i.kind AS intent_kind, \
                            a.kind AS ack_kind, a.body_json AS body_json \
                     FROM intents i JOIN operations o ON o.id = i.operation_id \
                     LEFT JOIN intent_acks a ON a.device_id = i.device_id AND a.seq = i.seq \
                     WHERE i.device_id IN {ids} AND o.status IN {active} AND i.kind IN (${kinds}, ${}) \
                     ORDER BY i.device_id, i.seq, a.id",
                    kinds + 1
                ), devices, true, &[IntentKind::Apply.as_str(), IntentKind::ReleaseRequest.as_str()]).await?;
                let mut latest_apply: BTreeMap<OperationId, i64> = BTreeMap::new();
                for r in &rows {
                    let device = device_of(r, "device_id")?;
                    let Some(d) = out.get_mut(&device) else { continue };
                    let facts = &mut d.acks;
                    let op = OperationId(get(r, "operation_id")?);
                    let seq: i64 = get(r, "seq")?;
                    let intent_kind: String = get(r, "intent_kind")?;
                    let ack_kind: Option<String> = get(r, "ack_kind")?;
                    let body: Option<String> = get(r, "body_json")?;
                    let is_apply = intent_kind == IntentKind::Apply.as_str();
                    if is_apply && latest_apply.get(&op).is_none_or(|s| *s < seq) {
                        latest_apply.insert(op, seq);
                        facts.answers.remove(&op);
                    }
                    let (Some(kind), Some(body)) = (ack_kind, body) else { continue };
                    match ack_fact(&format!("{device}/{seq}"), &kind, &body)? {
                        AckFact::Outcome(o) if is_apply => {
                            facts.answers.insert(op, o);
                        }
                        AckFact::Deferred { block, until } if !is_apply => {
                            facts.deferrals.entry(op).or_default().insert(block, until);
                        }
                        _ => {}
                    }
                }

                // Release requests still on the device.
                for r in &fetch_for_devices(&mut tx, format!(
                    "SELECT i.device_id AS device_id, i.operation_id AS operation_id, i.seq AS seq FROM intents i \
                     WHERE i.device_id IN {ids} AND i.kind = ${} AND i.operation_id IS NOT NULL \
                     AND i.withdrawn_ms IS NULL \
                     AND NOT EXISTS (SELECT 1 FROM intent_acks a WHERE a.device_id = i.device_id AND a.seq = i.seq AND a.kind = ${}) \
                     ORDER BY i.device_id, i.seq",
                    n + 1, n + 2
                ), devices, false, &[IntentKind::ReleaseRequest.as_str(), "released"]).await? {
                    let device = device_of(r, "device_id")?;
                    let seq: i64 = get(r, "seq")?;
                    if let Some(d) = out.get_mut(&device) {
                        d.open_requests.push(OpenRequest {
                            operation: OperationId(get(r, "operation_id")?),
                            seq: IntentSeq(codec::to_u64("intent", device.as_str(), seq)?),
                        });
                    }
                }

                // What each device reported last, and its blocks.
                for r in &fetch_for_devices(&mut tx, format!(
                    "SELECT device_id, agent_version, current_release, os_version, last_intent_seq, reported_ms \
                     FROM device_reports WHERE device_id IN {ids}"
                ), devices, false, &[]).await? {
                    let device = device_of(r, "device_id")?;
                    let key = device.as_str();
                    let current_release: Option<String> = get(r, "current_release")?;
                    let report = DeviceReport {
                        agent_version: get(r, "agent_version")?,
                        current_release: current_release
                            .map(|c| $crate::domain::ReleaseId::new(c).map_err(|e| codec::corrupt("device report", key, e)))
                            .transpose()?,
                        os_version: get(r, "os_version")?,
                        blocks: Default::default(),
                        last_intent_seq: IntentSeq(codec::to_u64("device report", key, get(r, "last_intent_seq")?)?),
                        reported: Timestamp(get(r, "reported_ms")?),
                    };
                    if let Some(d) = out.get_mut(&device) {
                        d.report = Some(report);
                    }
                }
                for r in &fetch_for_devices(&mut tx, format!(
                    "SELECT device_id, block, version, env_fingerprint FROM device_blocks WHERE device_id IN {ids} ORDER BY device_id, block"
                ), devices, false, &[]).await? {
                    let device = device_of(r, "device_id")?;
                    let key = device.as_str();
                    let block: String = get(r, "block")?;
                    let version: String = get(r, "version")?;
                    let fp: String = get(r, "env_fingerprint")?;
                    if let Some(report) = out.get_mut(&device).and_then(|d| d.report.as_mut()) {
                        report.blocks.insert(
                            BlockName::new(block).map_err(|e| codec::corrupt("device report", key, e))?,
                            ReportedBlock {
                                version: semver::Version::parse(&version)
                                    .map_err(|e| codec::corrupt("device report", key, e))?,
                                env_fingerprint: codec::fingerprint_from_hex("device report", key, &fp)?,
                            },
                        );
                    }
                }

                // Locks as last reported.
                for r in &fetch_for_devices(&mut tx, format!(
                    "SELECT device_id, block, held, generation, since_ms FROM device_locks WHERE device_id IN {ids} ORDER BY device_id, block"
                ), devices, false, &[]).await? {
                    let device = device_of(r, "device_id")?;
                    let block: String = get(r, "block")?;
                    let key = format!("{device}/{block}");
                    let lock = lock_from_row(r, &key)?;
                    if let Some(d) = out.get_mut(&device) {
                        d.locks.insert(BlockName::new(block).map_err(|e| codec::corrupt("lock", &key, e))?, lock);
                    }
                }

                // The operator env: the fleet's layer and the device's own.
                for r in &fetch_for_devices(&mut tx, format!(
                    "SELECT d.id AS device_id, v.level AS level, v.name AS name, v.block AS block, v.value AS value \
                     FROM env_vars v JOIN devices d ON (v.level = 'device' AND v.owner = d.id) OR (v.level = 'fleet' AND v.owner = d.fleet) \
                     WHERE d.id IN {ids} ORDER BY d.id, v.level, v.name, v.block"
                ), devices, false, &[]).await? {
                    let device = device_of(r, "device_id")?;
                    let level: String = get(r, "level")?;
                    let name: String = get(r, "name")?;
                    let block: String = get(r, "block")?;
                    let value: String = get(r, "value")?;
                    let key = format!("{device}:{name}");
                    let name = EnvName::new(name).map_err(|e| codec::corrupt("env var", &key, e))?;
                    let Some(d) = out.get_mut(&device) else { continue };
                    let layer = if level == "fleet" { &mut d.env.fleet } else { &mut d.env.device };
                    if block.is_empty() {
                        layer.wide.insert(name, value);
                    } else {
                        let block = BlockName::new(block).map_err(|e| codec::corrupt("env var", &key, e))?;
                        layer.scoped.entry(block).or_default().insert(name, value);
                    }
                }

                // The latest approval of each active operation.
                for r in &fetch_for_devices(&mut tx, format!(
                    "SELECT a.id, a.operation_id, a.status, a.occurrence_start, a.occurrence_end, a.decided_by, a.message, \
                       o.device_id AS device_id \
                     FROM approvals a JOIN operations o ON o.id = a.operation_id \
                     WHERE o.device_id IN {ids} AND o.status IN {active} ORDER BY a.id"
                ), devices, true, &[]).await? {
                    let device = device_of(r, "device_id")?;
                    let approval = approval_from_row(r)?;
                    if let Some(d) = out.get_mut(&device) {
                        d.approvals.insert(approval.operation, approval);
                    }
                }

                // The windows that apply to each device.
                for r in &fetch_for_devices(&mut tx, format!(
                    "SELECT d.id AS device_id, w.id, w.scope_kind, w.scope, w.spec_json FROM maintenance_windows w, devices d \
                     WHERE d.id IN {ids} AND ( \
                       (w.scope_kind = 'device' AND w.scope = d.id) \
                       OR (w.scope_kind = 'fleet' AND w.scope = d.fleet) \
                       OR (w.scope_kind = 'tag' AND EXISTS (SELECT 1 FROM device_tags t WHERE t.device_id = d.id AND t.tag = w.scope))) \
                     ORDER BY d.id, w.id"
                ), devices, false, &[]).await? {
                    let device = device_of(r, "device_id")?;
                    let window = window_from_row(r)?;
                    if let Some(d) = out.get_mut(&device) {
                        d.windows.push(window);
                    }
                }
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(out)
            }

            async fn write_plan(
                &self,
                device: &DeviceId,
                plan: &$crate::store::plans::PlanWrite,
                now: Timestamp,
            ) -> Result<Vec<IntentSeq>, StoreError> {
                let mut tx = self.begin().await?;
                let seqs = write_plan_tx(&mut tx, device, plan, now).await?;
                append_events_tx(&mut tx, &plan.events, now).await?;
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(seqs)
            }

            async fn write_plans(
                &self,
                plans: &[(DeviceId, $crate::store::plans::PlanWrite)],
                now: Timestamp,
            ) -> Result<Vec<Result<Vec<IntentSeq>, StoreError>>, StoreError> {
                let mut tx = self.begin().await?;
                let mut results = Vec::with_capacity(plans.len());
                for (device, plan) in plans {
                    sqlx::raw_sql("SAVEPOINT plan").execute(&mut *tx).await.map_err(StoreError::from_sqlx)?;
                    let written = write_plan_tx(&mut tx, device, plan, now).await;
                    if written.is_err() {
                        sqlx::raw_sql("ROLLBACK TO SAVEPOINT plan")
                            .execute(&mut *tx)
                            .await
                            .map_err(StoreError::from_sqlx)?;
                    }
                    sqlx::raw_sql("RELEASE SAVEPOINT plan").execute(&mut *tx).await.map_err(StoreError::from_sqlx)?;
                    results.push(written);
                }
                // The events of the plans written, last: the event log's
                // counter stays locked until the commit.
                let events: Vec<_> = plans
                    .iter()
                    .zip(&results)
                    .filter(|(_, r)| r.is_ok())
                    .flat_map(|((_, p), _)| p.events.iter().cloned())
                    .collect();
                append_events_tx(&mut tx, &events, now).await?;
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(results)
            }

            async fn due_wakeups(&self, now: Timestamp) -> Result<Vec<DeviceId>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id FROM devices WHERE wake_at_ms IS NOT NULL AND wake_at_ms <= $1 ORDER BY wake_at_ms",
                )
                .bind(now.0)
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
                rows.iter()
                    .map(|r| {
                        let d: String = get(r, "id")?;
                        DeviceId::new(&d).map_err(|e| codec::corrupt("device", &d, e))
                    })
                    .collect()
            }

            async fn next_wakeup(&self) -> Result<Option<Timestamp>, StoreError> {
                let row = sqlx::query("SELECT MIN(wake_at_ms) AS at FROM devices WHERE wake_at_ms IS NOT NULL")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                let at: Option<i64> = get(&row, "at")?;
                Ok(at.map(Timestamp))
            }

            async fn transition_operation(
                &self,
                next: &OperationRecord,
                audit: Option<&AuditEntry>,
                events: &[$crate::domain::NewEvent],
                now: Timestamp,
            ) -> Result<OperationRecord, StoreError> {
                let mut tx = self.begin().await?;
                let done = sqlx::query(
                    "UPDATE operations SET status = $2, status_json = $3, updated_ms = $4, \
                       generation = generation + 1 \
                     WHERE id = $1 AND generation = $5",
                )
                .bind(next.id.0)
                .bind(next.status.as_str())
                .bind(codec::progress_to_json(&next.progress))
                .bind(now.0)
                .bind(codec::to_i64("operation generation", next.generation)?)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from_sqlx)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::Conflict {
                        entity: "operation",
                        key: next.id.to_string(),
                        message: format!("it changed since generation {}", next.generation),
                    });
                }
                if let Some(audit) = audit {
                    append_audit_tx(&mut tx, audit).await?;
                }
                append_events_tx(&mut tx, events, now).await?;
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                let mut out = next.clone();
                out.generation += 1;
                out.updated = now;
                Ok(out)
            }

            async fn change_env(
                &self,
                owner: &EnvOwner,
                edit: &$crate::store::plans::EnvEdit,
                target: &$crate::domain::EnvTarget,
                now: Timestamp,
            ) -> Result<$crate::store::plans::EnvChanged, StoreError> {
                use std::collections::BTreeMap;
                let mut tx = self.begin().await?;
                ensure_owner(&mut *tx, owner).await?;
                // The devices the edit reaches, with their fleet.
                let rows = match owner {
                    EnvOwner::Device(d) => sqlx::query("SELECT id, fleet, applied_env_json FROM devices WHERE id = $1")
                        .bind(d.as_str())
                        .fetch_all(&mut *tx)
                        .await,
                    EnvOwner::Fleet(f) => sqlx::query("SELECT id, fleet, applied_env_json FROM devices WHERE fleet = $1 ORDER BY id")
                        .bind(f.as_str())
                        .fetch_all(&mut *tx)
                        .await,
                }
                .map_err(StoreError::from_sqlx)?;
                let mut devices: Vec<(DeviceId, FleetId, BTreeMap<BlockName, $crate::domain::Env>)> = Vec::with_capacity(rows.len());
                for r in &rows {
                    let id: String = get(r, "id")?;
                    let fleet: String = get(r, "fleet")?;
                    let json: String = get(r, "applied_env_json")?;
                    devices.push((
                        DeviceId::new(&id).map_err(|e| codec::corrupt("device", &id, e))?,
                        FleetId::new(&fleet).map_err(|e| codec::corrupt("device", &id, e))?,
                        codec::block_envs_from_json(&id, &json)?,
                    ));
                }
                // Snapshot what each reported block runs with, where unknown.
                let mut layers: BTreeMap<(String, String), EnvLayer> = BTreeMap::new();
                let mut reported: BTreeMap<DeviceId, Vec<BlockName>> = BTreeMap::new();
                {
                    let (var_sql, block_sql, key) = match owner {
                        EnvOwner::Device(d) => (
                            "SELECT v.level AS level, v.owner AS owner, v.name AS name, v.block AS block, v.value AS value \
                             FROM env_vars v JOIN devices d ON d.id = $1 \
                             WHERE (v.level = 'device' AND v.owner = d.id) OR (v.level = 'fleet' AND v.owner = d.fleet)",
                            "SELECT device_id, block FROM device_blocks WHERE device_id = $1 ORDER BY block",
                            d.as_str(),
                        ),
                        EnvOwner::Fleet(f) => (
                            "SELECT v.level AS level, v.owner AS owner, v.name AS name, v.block AS block, v.value AS value \
                             FROM env_vars v \
                             WHERE (v.level = 'fleet' AND v.owner = $1) \
                             OR (v.level = 'device' AND v.owner IN (SELECT id FROM devices WHERE fleet = $1))",
                            "SELECT b.device_id AS device_id, b.block AS block FROM device_blocks b \
                             JOIN devices d ON d.id = b.device_id WHERE d.fleet = $1 ORDER BY b.device_id, b.block",
                            f.as_str(),
                        ),
                    };
                    let vars = sqlx::query(var_sql).bind(key).fetch_all(&mut *tx).await.map_err(StoreError::from_sqlx)?;
                    for r in &vars {
                        let level: String = get(r, "level")?;
                        let who: String = get(r, "owner")?;
                        let name: String = get(r, "name")?;
                        let block: String = get(r, "block")?;
                        let value: String = get(r, "value")?;
                        let k = format!("{who}:{name}");
                        let name = EnvName::new(name).map_err(|e| codec::corrupt("env var", &k, e))?;
                        let layer = layers.entry((level, who)).or_default();
                        if block.is_empty() {
                            layer.wide.insert(name, value);
                        } else {
                            let block = BlockName::new(block).map_err(|e| codec::corrupt("env var", &k, e))?;
                            layer.scoped.entry(block).or_default().insert(name, value);
                        }
                    }
                    let blocks = sqlx::query(block_sql).bind(key).fetch_all(&mut *tx).await.map_err(StoreError::from_sqlx)?;
                    for r in &blocks {
                        let d: String = get(r, "device_id")?;
                        let b: String = get(r, "block")?;
                        reported
                            .entry(DeviceId::new(&d).map_err(|e| codec::corrupt("device", &d, e))?)
                            .or_default()
                            .push(BlockName::new(&b).map_err(|e| codec::corrupt("device", &d, e))?);
                    }
                }
                for (id, fleet, applied) in &mut devices {
                    let Some(blocks) = reported.get(id) else { continue };
                    if blocks.iter().all(|b| applied.contains_key(b)) {
                        continue;
                    }
                    let ctx = $crate::domain::EnvContext {
                        fleet: layers.get(&("fleet".to_owned(), fleet.to_string())).cloned().unwrap_or_default(),
                        device: layers.get(&("device".to_owned(), id.to_string())).cloned().unwrap_or_default(),
                    };
                    for b in blocks {
                        if !applied.contains_key(b) {
                            applied.insert(b.clone(), ctx.operator_env(b));
                        }
                    }
                    sqlx::query("UPDATE devices SET applied_env_json = $2 WHERE id = $1")
                        .bind(id.as_str())
                        .bind(codec::block_envs_to_json(applied))
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::from_sqlx)?;
                }
                // The edit itself.
                let mut removed = 0;
                for (name, scope) in &edit.unset {
                    for block in scope_blocks(scope) {
                        removed += sqlx::query(
                            "DELETE FROM env_vars WHERE level = $1 AND owner = $2 AND name = $3 AND block = $4",
                        )
                        .bind(owner.level())
                        .bind(owner.key())
                        .bind(name.as_str())
                        .bind(block)
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::from_sqlx)?
                        .rows_affected();
                    }
                }
                for var in &edit.set {
                    for block in scope_blocks(&var.scope) {
                        sqlx::query(
                            "INSERT INTO env_vars (level, owner, name, block, value, updated_ms) \
                             VALUES ($1, $2, $3, $4, $5, $6) \
                             ON CONFLICT (level, owner, name, block) \
                             DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms",
                        )
                        .bind(owner.level())
                        .bind(owner.key())
                        .bind(var.name.as_str())
                        .bind(block)
                        .bind(&var.value)
                        .bind(now.0)
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::from_sqlx)?;
                    }
                }
                // The operations that carry it, unless nothing changed.
                let mut operations = Vec::new();
                if !edit.set.is_empty() || removed > 0 {
                    let spec = $crate::domain::OperationSpec::ApplyEnv(target.clone());
                    for (id, _, _) in &devices {
                        operations.push(create_operation_tx(&mut tx, id, &spec, None, now).await?);
                    }
                }
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok($crate::store::plans::EnvChanged { removed, operations })
            }

            async fn record_phase(
                &self,
                op: OperationId,
                phase: &str,
                now: Timestamp,
            ) -> Result<(), StoreError> {
                let mut tx = self.begin().await?;
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {OPERATION_COLUMNS_SQL} FROM operations WHERE id = $1"
                )))
                .bind(op.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(StoreError::from_sqlx)?;
                let Some(row) = row else { return Ok(()) };
                let mut record = operation_from_row(&row)?;
                if !record.status.is_in_flight() {
                    return Ok(());
                }
                record.progress.phase = Some(phase.to_owned());
                sqlx::query(
                    "UPDATE operations SET status_json = $2, updated_ms = $3, generation = generation + 1 \
                     WHERE id = $1 AND generation = $4",
                )
                .bind(op.0)
                .bind(codec::progress_to_json(&record.progress))
                .bind(now.0)
                .bind(codec::to_i64("operation generation", record.generation)?)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from_sqlx)?;
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(())
            }
        }

        /// Rows of `sql` with `devices` bound first, then (if `statuses`)
        /// the active statuses, then `extra`.
        async fn fetch_for_devices(
            tx: &mut sqlx::Transaction<'static, $db>,
            sql: String,
            devices: &[DeviceId],
            statuses: bool,
            extra: &[&str],
        ) -> Result<Vec<DbRow>, StoreError> {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for d in devices {
                q = q.bind(d.as_str());
            }
            if statuses {
                for st in $crate::store::plans::status_names(&OpStatus::ACTIVE) {
                    q = q.bind(st);
                }
            }
            for e in extra {
                q = q.bind(*e);
            }
            q.fetch_all(&mut **tx).await.map_err(StoreError::from_sqlx)
        }

        /// One plan's writes inside `tx`; `Conflict` if an operation's
        /// generation moved on.
        async fn write_plan_tx(
            tx: &mut sqlx::Transaction<'static, $db>,
            device: &DeviceId,
            plan: &$crate::store::plans::PlanWrite,
            now: Timestamp,
        ) -> Result<Vec<IntentSeq>, StoreError> {
                use $crate::store::plans::ApprovalChange;
                if let Some(epoch) = plan.session_epoch {
                    // A newer stream (on any replica) owns the device now.
                    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT epoch FROM agent_sessions WHERE device_id = $1 {}",
                        if IS_PG { "FOR SHARE" } else { "" }
                    )))
                    .bind(device.as_str())
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                    let current: Option<i64> = row.as_ref().map(|r| get(r, "epoch")).transpose()?;
                    if current != Some(codec::to_i64("session epoch", epoch)?) {
                        return Err(StoreError::Conflict {
                            entity: "agent session",
                            key: device.to_string(),
                            message: format!("a newer stream than session {epoch} took the device over"),
                        });
                    }
                }
                for (op, expected) in &plan.ops {
                    let done = sqlx::query(
                        "UPDATE operations SET status = $2, status_json = $3, updated_ms = $4, \
                           generation = generation + 1 \
                         WHERE id = $1 AND generation = $5",
                    )
                    .bind(op.id.0)
                    .bind(op.status.as_str())
                    .bind(codec::progress_to_json(&op.progress))
                    .bind(now.0)
                    .bind(codec::to_i64("operation generation", *expected)?)
                    .execute(&mut **tx)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::Conflict {
                            entity: "operation",
                            key: op.id.to_string(),
                            message: format!("it changed since generation {expected}"),
                        });
                    }
                }
                for change in &plan.approvals {
                    match change {
                        ApprovalChange::Request { operation, audit } => {
                            let row = sqlx::query(
                                "INSERT INTO approvals (operation_id, status, created_ms) VALUES ($1, $2, $3) RETURNING id",
                            )
                            .bind(operation.0)
                            .bind(ApprovalStatus::Requested.as_str())
                            .bind(now.0)
                            .fetch_one(&mut **tx)
                            .await
                            .map_err(StoreError::on_write("approval", operation, "operation"))?;
                            let id: i64 = get(&row, "id")?;
                            let mut audit = audit.clone();
                            audit.details = codec::approval_audit_details(id);
                            append_audit_tx(tx, &audit).await?;
                        }
                        ApprovalChange::Missed { approval } => {
                            sqlx::query(
                                "UPDATE approvals SET status = $2, decided_ms = $3 WHERE id = $1 AND status = $4",
                            )
                            .bind(approval.id)
                            .bind(ApprovalStatus::Missed.as_str())
                            .bind(now.0)
                            .bind(ApprovalStatus::Approved.as_str())
                            .execute(&mut **tx)
                            .await
                            .map_err(StoreError::from_sqlx)?;
                        }
                        ApprovalChange::Approved { operation, occurrence, decided_by, message } => {
                            sqlx::query(
                                "INSERT INTO approvals (operation_id, status, occurrence_start, occurrence_end, decided_by, message, created_ms, decided_ms) \
                                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
                            )
                            .bind(operation.0)
                            .bind(ApprovalStatus::Approved.as_str())
                            .bind(occurrence.start.0)
                            .bind(occurrence.end.0)
                            .bind(decided_by.as_str())
                            .bind(message.as_deref())
                            .bind(now.0)
                            .execute(&mut **tx)
                            .await
                            .map_err(StoreError::on_write("approval", operation, "operation"))?;
                        }
                    }
                }
                for audit in &plan.audits {
                    append_audit_tx(tx, audit).await?;
                }
                let seqs = if plan.intents.is_empty() {
                    Vec::new()
                } else {
                    append_intents_tx(tx, device, &plan.intents, now).await?
                };
                for seq in &plan.withdrawn {
                    sqlx::query("UPDATE intents SET withdrawn_ms = $3 WHERE device_id = $1 AND seq = $2")
                        .bind(device.as_str())
                        .bind(codec::to_i64("intent sequence", seq.0)?)
                        .bind(now.0)
                        .execute(&mut **tx)
                        .await
                        .map_err(StoreError::from_sqlx)?;
                }
                sqlx::query(
                    "UPDATE devices SET status = COALESCE($2, status), \
                       applied_env_json = COALESCE($3, applied_env_json), wake_at_ms = $4 \
                     WHERE id = $1",
                )
                .bind(device.as_str())
                .bind(plan.device_status.map(|s| s.as_str()))
                .bind(plan.applied_env.as_ref().map(codec::block_envs_to_json))
                .bind(plan.wake_at.map(|t| t.0))
                .execute(&mut **tx)
                .await
                .map_err(StoreError::from_sqlx)?;
                Ok(seqs)
        }
    };
}

pub(crate) use impl_plan_store;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_from_the_first_parameter() {
        assert_eq!(placeholders(2, 3), "($2, $3, $4)");
        assert_eq!(placeholders(1, 1), "($1)");
    }
}
