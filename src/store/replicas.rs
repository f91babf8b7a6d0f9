//! What replicas of `lockstep serve` share through the database: which
//! replica is alive (a lease per replica), which replica holds each device's
//! agent stream (a session per device, fenced by an epoch), wake-ups handed
//! from one replica to another, and the durable event log every replica
//! reads. Memory holds only caches of these; a replica that dies loses
//! nothing another cannot pick up.
//!
//! On Postgres, commits that other replicas must react to send one
//! `NOTIFY` per transaction and channel ([`CHANNEL_WAKE`],
//! [`CHANNEL_EVENTS`], [`CHANNEL_SESSIONS`]); a replica's sweep finds the
//! same work in the tables if a notification is lost. SQLite is one process:
//! the same tables, no notifications.

use std::future::Future;

use crate::domain::{DeviceId, LoggedEvent, NewEvent, ReplicaId, Timestamp};

use super::StoreError;

/// Devices were handed to a replica to reconcile (`device_wakes`); payload:
/// that replica's id (only it sweeps), or empty (every replica sweeps).
pub const CHANNEL_WAKE: &str = "lockstep_wake";
/// Events were appended to the log.
pub const CHANNEL_EVENTS: &str = "lockstep_events";
/// A device's session moved to another replica; payload `replica device
/// epoch`: that replica ends its stream if its session is older.
pub const CHANNEL_SESSIONS: &str = "lockstep_sessions";

/// A new agent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOpened {
    /// The session's epoch: what this stream's writes and sends are fenced by.
    pub epoch: u64,
    /// The replica that held the device's stream before, if another one did.
    pub previous: Option<ReplicaId>,
    /// The device's fleet.
    pub fleet: crate::domain::FleetId,
    /// The hello named a new agent life: the known lock states were forgotten.
    pub new_life: bool,
}

/// A notification from another replica (Postgres `LISTEN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Something was published on a channel.
    Channel { channel: String, payload: String },
    /// The listening connection was lost and re-established: notifications
    /// may have been missed, so sweep.
    Reconnected,
}

/// A listening connection.
pub struct Notifications(sqlx::postgres::PgListener);

impl Notifications {
    /// The next notice; an error when the database is unreachable.
    pub async fn recv(&mut self) -> Result<Notice, StoreError> {
        match self.0.try_recv().await.map_err(StoreError::from_sqlx)? {
            Some(n) => Ok(Notice::Channel {
                channel: n.channel().to_owned(),
                payload: n.payload().to_owned(),
            }),
            None => Ok(Notice::Reconnected),
        }
    }
}

pub trait ReplicaStore {
    /// Starts this replica's life: sessions still recorded under its name
    /// (from an earlier run) are closed, and its lease is set to `until`.
    /// Returns the devices whose sessions were closed.
    fn register_replica(
        &self,
        replica: &ReplicaId,
        now: Timestamp,
        until: Timestamp,
    ) -> impl Future<Output = Result<Vec<DeviceId>, StoreError>> + Send;

    /// Renews this replica's lease; `false` if the replica had been reaped
    /// (its lease ran out and its sessions were closed): its streams must
    /// end. The lease is set either way.
    fn renew_replica(
        &self,
        replica: &ReplicaId,
        now: Timestamp,
        until: Timestamp,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Ends this replica's life (a clean shutdown): its sessions are closed
    /// (devices offline, with events) and its lease removed. Returns the
    /// devices.
    fn release_replica(
        &self,
        replica: &ReplicaId,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<DeviceId>, StoreError>> + Send;

    /// Reaps every replica whose lease ran out before `now`, as
    /// [`ReplicaStore::release_replica`] would. Returns their devices.
    fn reap_replicas(
        &self,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<DeviceId>, StoreError>> + Send;

    /// A new stream for `device` on `replica`: takes the session over from
    /// any earlier stream (any replica), bumps its epoch, and logs `online`.
    ///
    /// `agent_epoch` is the agent life the hello names: another one than
    /// recorded starts a new fencing life ([`crate::domain::agent_life`]):
    /// the device's known lock states are forgotten, and the change is
    /// logged (`new_agent_epoch`) and audited, in the same transaction.
    fn open_session(
        &self,
        device: &DeviceId,
        replica: &ReplicaId,
        agent_epoch: Option<&crate::domain::AgentEpoch>,
        now: Timestamp,
    ) -> impl Future<Output = Result<SessionOpened, StoreError>> + Send;

    /// The stream of session `epoch` ended: unless a newer session took
    /// over, the device is offline (status and event). Whether it closed.
    fn close_session(
        &self,
        device: &DeviceId,
        epoch: u64,
        now: Timestamp,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The sessions of these devices (those that ever connected).
    fn sessions(
        &self,
        devices: &[DeviceId],
    ) -> impl Future<
        Output = Result<
            std::collections::BTreeMap<DeviceId, crate::domain::AgentSession>,
            StoreError,
        >,
    > + Send;

    /// Whether session `epoch` still holds `device`.
    fn session_is_current(
        &self,
        device: &DeviceId,
        epoch: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Asks the replicas holding these devices to reconcile them: a wake-up
    /// row each, and one notification per replica named in `to` (none
    /// named: every replica is told).
    fn forward_wakes(
        &self,
        devices: &[DeviceId],
        to: &[ReplicaId],
        now: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Claims up to `limit` devices due for reconciliation that `replica`
    /// holds or nobody holds: forwarded wakes (deleted) and timers that came
    /// due (`devices.wake_at_ms`, pushed back by `retry` so a claimer that
    /// dies leaves them to another). Skips rows another replica is claiming.
    fn claim_wakes(
        &self,
        replica: &ReplicaId,
        now: Timestamp,
        retry: Timestamp,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<DeviceId>, StoreError>> + Send;

    /// Live replicas (lease not run out at `now`) and how many sessions each holds.
    fn live_replicas(
        &self,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<(ReplicaId, u64)>, StoreError>> + Send;

    /// Appends events in their own transaction (what has no other write).
    fn append_events(
        &self,
        events: &[NewEvent],
        now: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Up to `limit` events after sequence `after`, in order.
    fn events_after(
        &self,
        after: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<LoggedEvent>, StoreError>> + Send;

    /// The sequence of the newest committed event (0: none yet).
    fn last_event_seq(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Deletes events older than `before`; how many.
    fn prune_events(
        &self,
        before: Timestamp,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// A connection listening on the replica channels; `None` on SQLite
    /// (one process: nothing to hear).
    fn listen(&self) -> impl Future<Output = Result<Option<Notifications>, StoreError>> + Send;
}

/// Opens a Postgres listener on every replica channel.
pub(crate) async fn pg_listen(pool: &sqlx::PgPool) -> Result<Option<Notifications>, StoreError> {
    let mut l = sqlx::postgres::PgListener::connect_with(pool)
        .await
        .map_err(StoreError::from_sqlx)?;
    l.listen_all([CHANNEL_WAKE, CHANNEL_EVENTS, CHANNEL_SESSIONS])
        .await
        .map_err(StoreError::from_sqlx)?;
    Ok(Some(Notifications(l)))
}

/// Rows per multi-row `INSERT` into the event log.
pub(crate) const EVENT_ROWS_PER_INSERT: usize = 500;

macro_rules! impl_replica_store {
    ($store:ty, $db:ty, $backend:expr) => {
        /// Whether this backend is Postgres (notifications, row locks).
        const IS_PG: bool = matches!($backend, $crate::store::Backend::Postgres);
        /// Skips rows another claimer holds (Postgres); SQLite has one writer.
        const SKIP_LOCKED: &str = if IS_PG { "FOR UPDATE SKIP LOCKED" } else { "" };

        /// Sends one notification on `channel` when this transaction commits
        /// (Postgres folds repeats within a transaction into one).
        async fn notify_tx(
            tx: &mut sqlx::Transaction<'static, $db>,
            channel: &str,
            payload: &str,
        ) -> Result<(), StoreError> {
            if IS_PG {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(channel)
                    .bind(payload)
                    .execute(&mut **tx)
                    .await
                    .map_err(StoreError::from_sqlx)?;
            }
            Ok(())
        }

        /// Appends `events` to the log inside `tx`, numbered after every
        /// event committed before: `event_seq`'s row stays locked until
        /// `tx` commits, so call this last. Other replicas are notified.
        async fn append_events_tx(
            tx: &mut sqlx::Transaction<'static, $db>,
            events: &[$crate::domain::NewEvent],
            now: Timestamp,
        ) -> Result<(), StoreError> {
            if events.is_empty() {
                return Ok(());
            }
            let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
            let row = sqlx::query("UPDATE event_seq SET last = last + $1 WHERE id = 1 RETURNING last")
                .bind(n)
                .fetch_one(&mut **tx)
                .await
                .map_err(StoreError::from_sqlx)?;
            let last: i64 = get(&row, "last")?;
            let mut seq = last - n;
            for chunk in events.chunks($crate::store::replicas::EVENT_ROWS_PER_INSERT) {
                let values: Vec<String> = (0..chunk.len())
                    .map(|i| {
                        let b = i * 8;
                        format!(
                            "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                            b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7, b + 8
                        )
                    })
                    .collect();
                let sql = format!(
                    "INSERT INTO event_log (seq, at_ms, fleet, device_id, operation_id, rollout_id, kind, body_json) VALUES {}",
                    values.join(", ")
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for e in chunk {
                    seq += 1;
                    let (kind, body) = codec::event_body_to_json(&e.body);
                    q = q
                        .bind(seq)
                        .bind(now.0)
                        .bind(e.fleet.as_str().to_owned())
                        .bind(e.device.as_ref().map(|d| d.as_str().to_owned()))
                        .bind(e.operation.map(|o| o.0))
                        .bind(e.rollout.map(|r| r.0))
                        .bind(kind)
                        .bind(body);
                }
                q.execute(&mut **tx).await.map_err(StoreError::from_sqlx)?;
            }
            notify_tx(tx, $crate::store::replicas::CHANNEL_EVENTS, "").await
        }

        /// Closes the sessions `replica` holds inside `tx`: devices offline,
        /// with their events (appended last). Returns the devices.
        async fn close_replica_sessions_tx(
            tx: &mut sqlx::Transaction<'static, $db>,
            replica: &str,
            now: Timestamp,
        ) -> Result<Vec<DeviceId>, StoreError> {
            let rows = sqlx::query(
                "UPDATE agent_sessions SET replica = NULL, since_ms = $2 WHERE replica = $1 RETURNING device_id",
            )
            .bind(replica)
            .bind(now.0)
            .fetch_all(&mut **tx)
            .await
            .map_err(StoreError::from_sqlx)?;
            let mut devices = Vec::with_capacity(rows.len());
            for r in &rows {
                let d: String = get(r, "device_id")?;
                devices.push(DeviceId::new(&d).map_err(|e| codec::corrupt("device", &d, e))?);
            }
            let mut events = Vec::with_capacity(devices.len());
            for chunk in devices.chunks(1000) {
                let sql = format!(
                    "UPDATE devices SET status = $1 WHERE id IN {} RETURNING id, fleet",
                    $crate::store::plans::placeholders(2, chunk.len())
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind($crate::domain::DeviceStatus::Offline.as_str());
                for d in chunk {
                    q = q.bind(d.as_str());
                }
                for r in q.fetch_all(&mut **tx).await.map_err(StoreError::from_sqlx)? {
                    let d: String = get(&r, "id")?;
                    let f: String = get(&r, "fleet")?;
                    events.push($crate::domain::NewEvent::device(
                        &FleetId::new(&f).map_err(|e| codec::corrupt("device", &d, e))?,
                        &DeviceId::new(&d).map_err(|e| codec::corrupt("device", &d, e))?,
                        None,
                        $crate::domain::EventKind::Offline,
                    ));
                }
            }
            append_events_tx(tx, &events, now).await?;
            Ok(devices)
        }

        impl $crate::store::replicas::ReplicaStore for $store {
            async fn register_replica(
                &self,
                replica: &$crate::domain::ReplicaId,
                now: Timestamp,
                until: Timestamp,
            ) -> Result<Vec<DeviceId>, StoreError> {
                let mut tx = self.begin().await?;
                sqlx::query(
                    "INSERT INTO replicas (id, started_ms, lease_until_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO UPDATE SET started_ms = excluded.started_ms, lease_until_ms = excluded.lease_until_ms",
                )
                .bind(replica.as_str())
                .bind(now.0)
                .bind(until.0)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from_sqlx)?;
                let devices = close_replica_sessions_tx(&mut tx, replica.as_str(), now).await?;
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(devices)
            }

            async fn renew_replica(
                &self,
                replica: &$crate::domain::ReplicaId,
                now: Timestamp,
                until: Timestamp,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query("UPDATE replicas SET lease_until_ms = $2 WHERE id = $1")
                    .bind(replica.as_str())
                    .bind(until.0)
                    .execute(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                if done.rows_affected() == 1 {
                    return Ok(true);
                }
                // Reaped meanwhile: start a new life.
                self.register_replica(replica, now, until).await?;
                Ok(false)
            }

            async fn release_replica(
                &self,
                replica: &$crate::domain::ReplicaId,
                now: Timestamp,
            ) -> Result<Vec<DeviceId>, StoreError> {
                let mut tx = self.begin().await?;
                sqlx::query("DELETE FROM replicas WHERE id = $1")
                    .bind(replica.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                let devices = close_replica_sessions_tx(&mut tx, replica.as_str(), now).await?;
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(devices)
            }

            async fn reap_replicas(&self, now: Timestamp) -> Result<Vec<DeviceId>, StoreError> {
                let mut tx = self.begin().await?;
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT id FROM replicas WHERE lease_until_ms <= $1 {SKIP_LOCKED}"
                )))
                .bind(now.0)
                .fetch_all(&mut *tx)
                .await
                .map_err(StoreError::from_sqlx)?;
                let mut ids: Vec<String> = Vec::with_capacity(rows.len());
                for r in &rows {
                    ids.push(get(r, "id")?);
                }
                // Sessions of replicas with no row at all (never expected).
                let orphans = sqlx::query(
                    "SELECT DISTINCT s.replica AS replica FROM agent_sessions s \
                     LEFT JOIN replicas r ON r.id = s.replica \
                     WHERE s.replica IS NOT NULL AND r.id IS NULL",
                )
                .fetch_all(&mut *tx)
                .await
                .map_err(StoreError::from_sqlx)?;
                for r in &orphans {
                    ids.push(get(r, "replica")?);
                }
                let mut devices = Vec::new();
                for id in &ids {
                    sqlx::query("DELETE FROM replicas WHERE id = $1")
                        .bind(id.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::from_sqlx)?;
                    tracing::warn!(replica = %id, "replica lease ran out; its sessions are closed");
                    devices.extend(close_replica_sessions_tx(&mut tx, id, now).await?);
                }
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(devices)
            }

            async fn open_session(
                &self,
                device: &DeviceId,
                replica: &$crate::domain::ReplicaId,
                agent_epoch: Option<&$crate::domain::AgentEpoch>,
                now: Timestamp,
            ) -> Result<$crate::store::replicas::SessionOpened, StoreError> {
                use $crate::domain::{AgentEpoch, AgentLife};
                let mut tx = self.begin().await?;
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT fleet, agent_epoch FROM devices WHERE id = $1 {}",
                    if IS_PG { "FOR UPDATE" } else { "" }
                )))
                    .bind(device.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(StoreError::from_sqlx)?
                    .ok_or_else(|| StoreError::NotFound { entity: "device", key: device.to_string() })?;
                let fleet: String = get(&row, "fleet")?;
                let recorded: Option<String> = get(&row, "agent_epoch")?;
                let recorded = recorded
                    .map(|e| AgentEpoch::new(&e).map_err(|err| codec::corrupt("device", device, err)))
                    .transpose()?;
                let life = $crate::domain::agent_life(recorded.as_ref(), agent_epoch);
                let mut life_events = Vec::new();
                match &life {
                    AgentLife::Same => {}
                    AgentLife::First(e) | AgentLife::New(e) => {
                        sqlx::query("UPDATE devices SET agent_epoch = $2 WHERE id = $1")
                            .bind(device.as_str())
                            .bind(e.as_str())
                            .execute(&mut *tx)
                            .await
                            .map_err(StoreError::from_sqlx)?;
                    }
                }
                if let AgentLife::New(e) = &life {
                    sqlx::query("DELETE FROM device_locks WHERE device_id = $1")
                        .bind(device.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::from_sqlx)?;
                    let fleet_id = FleetId::new(&fleet).map_err(|err| codec::corrupt("device", device, err))?;
                    append_audit_tx(&mut tx, &$crate::domain::AuditEntry {
                        at: now,
                        actor: format!("agent of {device}"),
                        action: "new_agent_epoch".into(),
                        subject: format!("device {device}"),
                        fleet: Some(fleet_id.clone()),
                        reason: "the agent's state was created anew; its lock generations start over".into(),
                        details: format!(
                            "epoch {} replaces {}",
                            e,
                            recorded.as_ref().map(AgentEpoch::as_str).unwrap_or("none")
                        ),
                    })
                    .await?;
                    life_events.push($crate::domain::NewEvent::device(
                        &fleet_id,
                        device,
                        None,
                        $crate::domain::EventKind::NewAgentEpoch { epoch: e.to_string() },
                    ));
                }
                let old = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT replica FROM agent_sessions WHERE device_id = $1 {}",
                    if IS_PG { "FOR UPDATE" } else { "" }
                )))
                .bind(device.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(StoreError::from_sqlx)?;
                let previous: Option<String> = match &old {
                    Some(r) => get(r, "replica")?,
                    None => None,
                };
                let row = sqlx::query(
                    "INSERT INTO agent_sessions (device_id, replica, epoch, since_ms) VALUES ($1, $2, 1, $3) \
                     ON CONFLICT (device_id) DO UPDATE SET replica = excluded.replica, \
                       epoch = agent_sessions.epoch + 1, since_ms = excluded.since_ms \
                     RETURNING epoch",
                )
                .bind(device.as_str())
                .bind(replica.as_str())
                .bind(now.0)
                .fetch_one(&mut *tx)
                .await
                .map_err(StoreError::from_sqlx)?;
                let epoch: i64 = get(&row, "epoch")?;
                let previous = previous
                    .filter(|p| p != replica.as_str())
                    .map(|p| $crate::domain::ReplicaId::new(&p).map_err(|e| codec::corrupt("agent session", device, e)))
                    .transpose()?;
                if let Some(p) = &previous {
                    notify_tx(
                        &mut tx,
                        $crate::store::replicas::CHANNEL_SESSIONS,
                        &format!("{p} {device} {epoch}"),
                    )
                    .await?;
                }
                let fleet = FleetId::new(&fleet).map_err(|e| codec::corrupt("device", device, e))?;
                life_events.push($crate::domain::NewEvent::device(&fleet, device, None, $crate::domain::EventKind::Online));
                append_events_tx(&mut tx, &life_events, now).await?;
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok($crate::store::replicas::SessionOpened {
                    epoch: u64::try_from(epoch).unwrap_or(0),
                    previous,
                    fleet,
                    new_life: matches!(life, AgentLife::New(_)),
                })
            }

            async fn close_session(
                &self,
                device: &DeviceId,
                epoch: u64,
                now: Timestamp,
            ) -> Result<bool, StoreError> {
                let mut tx = self.begin().await?;
                let done = sqlx::query(
                    "UPDATE agent_sessions SET replica = NULL, since_ms = $3 \
                     WHERE device_id = $1 AND epoch = $2 AND replica IS NOT NULL",
                )
                .bind(device.as_str())
                .bind(codec::to_i64("session epoch", epoch)?)
                .bind(now.0)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from_sqlx)?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                let row = sqlx::query("UPDATE devices SET status = $2 WHERE id = $1 RETURNING fleet")
                    .bind(device.as_str())
                    .bind($crate::domain::DeviceStatus::Offline.as_str())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                let fleet: String = get(&row, "fleet")?;
                let fleet = FleetId::new(&fleet).map_err(|e| codec::corrupt("device", device, e))?;
                append_events_tx(
                    &mut tx,
                    &[$crate::domain::NewEvent::device(&fleet, device, None, $crate::domain::EventKind::Offline)],
                    now,
                )
                .await?;
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(true)
            }

            async fn sessions(
                &self,
                devices: &[DeviceId],
            ) -> Result<std::collections::BTreeMap<DeviceId, $crate::domain::AgentSession>, StoreError> {
                let mut out = std::collections::BTreeMap::new();
                for chunk in devices.chunks(1000) {
                    let sql = format!(
                        "SELECT s.device_id AS device_id, s.replica AS replica, s.epoch AS epoch, r.lease_until_ms AS lease \
                         FROM agent_sessions s LEFT JOIN replicas r ON r.id = s.replica WHERE s.device_id IN {}",
                        $crate::store::plans::placeholders(1, chunk.len())
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for d in chunk {
                        q = q.bind(d.as_str());
                    }
                    for r in q.fetch_all(&self.pool).await.map_err(StoreError::from_sqlx)? {
                        let d: String = get(&r, "device_id")?;
                        let device = DeviceId::new(&d).map_err(|e| codec::corrupt("agent session", &d, e))?;
                        let replica: Option<String> = get(&r, "replica")?;
                        let epoch: i64 = get(&r, "epoch")?;
                        let lease: Option<i64> = get(&r, "lease")?;
                        out.insert(device, $crate::domain::AgentSession {
                            replica: replica
                                .map(|p| $crate::domain::ReplicaId::new(&p).map_err(|e| codec::corrupt("agent session", &d, e)))
                                .transpose()?,
                            epoch: u64::try_from(epoch).unwrap_or(0),
                            lease_until: lease.map(Timestamp),
                        });
                    }
                }
                Ok(out)
            }

            async fn session_is_current(&self, device: &DeviceId, epoch: u64) -> Result<bool, StoreError> {
                let row = sqlx::query(
                    "SELECT 1 AS one FROM agent_sessions WHERE device_id = $1 AND epoch = $2 AND replica IS NOT NULL",
                )
                .bind(device.as_str())
                .bind(codec::to_i64("session epoch", epoch)?)
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
                Ok(row.is_some())
            }

            async fn forward_wakes(
                &self,
                devices: &[DeviceId],
                to: &[$crate::domain::ReplicaId],
                now: Timestamp,
            ) -> Result<(), StoreError> {
                if devices.is_empty() {
                    return Ok(());
                }
                let mut tx = self.begin().await?;
                for chunk in devices.chunks(1000) {
                    let values: Vec<String> = (0..chunk.len()).map(|i| format!("(${}, $1)", i + 2)).collect();
                    let sql = format!(
                        "INSERT INTO device_wakes (device_id, due_ms) VALUES {} \
                         ON CONFLICT (device_id) DO UPDATE SET due_ms = excluded.due_ms \
                         WHERE device_wakes.due_ms > excluded.due_ms",
                        values.join(", ")
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now.0);
                    for d in chunk {
                        q = q.bind(d.as_str());
                    }
                    q.execute(&mut *tx).await.map_err(StoreError::from_sqlx)?;
                }
                if to.is_empty() {
                    notify_tx(&mut tx, $crate::store::replicas::CHANNEL_WAKE, "").await?;
                }
                for replica in to {
                    notify_tx(&mut tx, $crate::store::replicas::CHANNEL_WAKE, replica.as_str()).await?;
                }
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(())
            }

            async fn claim_wakes(
                &self,
                replica: &$crate::domain::ReplicaId,
                now: Timestamp,
                retry: Timestamp,
                limit: u32,
            ) -> Result<Vec<DeviceId>, StoreError> {
                // Held by this replica, or by none alive.
                const MINE_OR_NOBODYS: &str = "(s.replica = $2 OR s.replica IS NULL OR r.id IS NULL OR r.lease_until_ms <= $1)";
                let mut tx = self.begin().await?;
                let forwarded = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM device_wakes WHERE device_id IN ( \
                       SELECT w.device_id FROM device_wakes w \
                       LEFT JOIN agent_sessions s ON s.device_id = w.device_id \
                       LEFT JOIN replicas r ON r.id = s.replica \
                       WHERE w.due_ms <= $1 AND {MINE_OR_NOBODYS} \
                       LIMIT $3 {}) RETURNING device_id",
                    if IS_PG { "FOR UPDATE OF w SKIP LOCKED" } else { "" }
                )))
                .bind(now.0)
                .bind(replica.as_str())
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await
                .map_err(StoreError::from_sqlx)?;
                let timers = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE devices SET wake_at_ms = $4 WHERE id IN ( \
                       SELECT d.id FROM devices d \
                       LEFT JOIN agent_sessions s ON s.device_id = d.id \
                       LEFT JOIN replicas r ON r.id = s.replica \
                       WHERE d.wake_at_ms IS NOT NULL AND d.wake_at_ms <= $1 AND {MINE_OR_NOBODYS} \
                       ORDER BY d.wake_at_ms LIMIT $3 {}) RETURNING id",
                    if IS_PG { "FOR UPDATE OF d SKIP LOCKED" } else { "" }
                )))
                .bind(now.0)
                .bind(replica.as_str())
                .bind(i64::from(limit))
                .bind(retry.0)
                .fetch_all(&mut *tx)
                .await
                .map_err(StoreError::from_sqlx)?;
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                let mut out = Vec::with_capacity(forwarded.len() + timers.len());
                for r in &forwarded {
                    let d: String = get(r, "device_id")?;
                    out.push(DeviceId::new(&d).map_err(|e| codec::corrupt("device", &d, e))?);
                }
                for r in &timers {
                    let d: String = get(r, "id")?;
                    out.push(DeviceId::new(&d).map_err(|e| codec::corrupt("device", &d, e))?);
                }
                Ok(out)
            }

            async fn live_replicas(&self, now: Timestamp) -> Result<Vec<($crate::domain::ReplicaId, u64)>, StoreError> {
                let rows = sqlx::query(
                    "SELECT r.id AS id, COUNT(s.device_id) AS n FROM replicas r \
                     LEFT JOIN agent_sessions s ON s.replica = r.id \
                     WHERE r.lease_until_ms > $1 GROUP BY r.id ORDER BY r.id",
                )
                .bind(now.0)
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
                rows.iter()
                    .map(|r| {
                        let id: String = get(r, "id")?;
                        let n: i64 = get(r, "n")?;
                        Ok((
                            $crate::domain::ReplicaId::new(&id).map_err(|e| codec::corrupt("replica", &id, e))?,
                            u64::try_from(n).unwrap_or(0),
                        ))
                    })
                    .collect()
            }

            async fn append_events(
                &self,
                events: &[$crate::domain::NewEvent],
                now: Timestamp,
            ) -> Result<(), StoreError> {
                if events.is_empty() {
                    return Ok(());
                }
                let mut tx = self.begin().await?;
                append_events_tx(&mut tx, events, now).await?;
                tx.commit().await.map_err(StoreError::from_sqlx)
            }

            async fn events_after(
                &self,
                after: u64,
                limit: u32,
            ) -> Result<Vec<$crate::domain::LoggedEvent>, StoreError> {
                let rows = sqlx::query(
                    "SELECT seq, at_ms, fleet, device_id, operation_id, rollout_id, body_json FROM event_log \
                     WHERE seq > $1 ORDER BY seq LIMIT $2",
                )
                .bind(codec::to_i64("event sequence", after)?)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
                rows.iter()
                    .map(|r| {
                        let seq: i64 = get(r, "seq")?;
                        let seq = u64::try_from(seq).unwrap_or(0);
                        let fleet: String = get(r, "fleet")?;
                        let device: Option<String> = get(r, "device_id")?;
                        let operation: Option<i64> = get(r, "operation_id")?;
                        let rollout: Option<i64> = get(r, "rollout_id")?;
                        let body: String = get(r, "body_json")?;
                        Ok($crate::domain::LoggedEvent {
                            seq,
                            at: Timestamp(get(r, "at_ms")?),
                            event: $crate::domain::NewEvent {
                                fleet: FleetId::new(&fleet).map_err(|e| codec::corrupt("event", seq, e))?,
                                device: device
                                    .map(|d| DeviceId::new(&d).map_err(|e| codec::corrupt("event", seq, e)))
                                    .transpose()?,
                                operation: operation.map(OperationId),
                                rollout: rollout.map($crate::domain::RolloutId),
                                body: codec::event_body_from_json(seq, &body)?,
                            },
                        })
                    })
                    .collect()
            }

            async fn last_event_seq(&self) -> Result<u64, StoreError> {
                let row = sqlx::query("SELECT last FROM event_seq WHERE id = 1")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                let last: i64 = get(&row, "last")?;
                Ok(u64::try_from(last).unwrap_or(0))
            }

            async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError> {
                Ok(sqlx::query("DELETE FROM event_log WHERE at_ms < $1")
                    .bind(before.0)
                    .execute(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?
                    .rows_affected())
            }

            async fn listen(&self) -> Result<Option<$crate::store::replicas::Notifications>, StoreError> {
                $crate::store::replicas::listen_on(&self.pool).await
            }
        }
    };
}

pub(crate) use impl_replica_store;

/// Listening, per backend: Postgres listens; SQLite has no one to hear.
pub(crate) trait ListenOn {
    fn listen_on(&self) -> impl Future<Output = Result<Option<Notifications>, StoreError>> + Send;
}

impl ListenOn for sqlx::PgPool {
    async fn listen_on(&self) -> Result<Option<Notifications>, StoreError> {
        pg_listen(self).await
    }
}

impl ListenOn for sqlx::SqlitePool {
    async fn listen_on(&self) -> Result<Option<Notifications>, StoreError> {
        Ok(None)
    }
}

pub(crate) async fn listen_on<P: ListenOn>(pool: &P) -> Result<Option<Notifications>, StoreError> {
    pool.listen_on().await
}
