//! The Postgres store: production, and what several replicas share. Lock
//! reports are ingested set-based (one `UNNEST` upsert per batch).

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::common::{impl_store, paginate, scope_blocks, scope_columns, within_clause};
use super::{
    Backend, DeviceFilter, EnvOwner, IngestOutcome, Page, PageRequest, PoolOptions, ReleaseSummary,
    StoreError, codec, migrations,
};
use crate::domain::fleet::newest_per_lock;
use crate::domain::{
    Approval, ApprovalStatus, AuditEntry, BlockName, BlockVersion, DeviceId, DeviceRecord,
    DeviceReport, DeviceStatus, EnvLayer, EnvName, EnvScope, EnvVar, Fleet, FleetId, FleetPolicy,
    Force, Generation, IntentKind, IntentSeq, LockReport, LockState, NewIntent, OpProgress,
    OpStatus, OperationId, OperationRecord, OperationSpec, Release, ReleaseId, ReportedBlock,
    StoredIntent, Tag, Timestamp, Window, WindowRule, WindowScope,
};

/// A Postgres-backed [`Store`](super::Store).
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects (failing within the pool's acquire timeout when the server
    /// is unreachable), refuses a schema newer than this binary, and applies
    /// pending migrations.
    pub async fn connect(url: &str, opts: &PoolOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(url).map_err(|source| StoreError::Invalid {
            message: format!("invalid database URL: {source}"),
        })?;
        Self::connect_with(connect, opts).await
    }

    /// As [`PgStore::connect`], from parsed options.
    pub async fn connect_with(
        connect: PgConnectOptions,
        opts: &PoolOptions,
    ) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections)
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(|source| StoreError::Unavailable { source })?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let exists: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
                .fetch_one(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
        if exists.is_some() {
            let db: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
                .fetch_one(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
            migrations::check_not_newer(Backend::Postgres, db)?;
        }
        migrations::migrator(Backend::Postgres)
            .run(&self.pool)
            .await
            .map_err(|source| StoreError::Migrate { source })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A read transaction on one snapshot.
    async fn begin_read(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        self.pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(StoreError::from_sqlx)
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        self.pool.begin().await.map_err(StoreError::from_sqlx)
    }

    /// One set-based upsert for the whole batch, fenced on generation, with
    /// the applied rows appended to the history in the same statement.
    async fn ingest_batch(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        newest: &[&LockReport],
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let mut devices = Vec::with_capacity(newest.len());
        let mut blocks = Vec::with_capacity(newest.len());
        let mut held = Vec::with_capacity(newest.len());
        let mut generations = Vec::with_capacity(newest.len());
        let mut since = Vec::with_capacity(newest.len());
        for r in newest {
            devices.push(r.device.as_str());
            blocks.push(r.block.as_str());
            held.push(r.state.held);
            generations.push(codec::to_i64("generation", r.state.generation.0)?);
            since.push(r.state.since.0);
        }
        let done = sqlx::query(
            "WITH input AS ( \
               SELECT * FROM UNNEST($1::text[], $2::text[], $3::bool[], $4::int8[], $5::int8[]) \
                 AS u(device_id, block, held, generation, since_ms) \
             ), up AS ( \
               INSERT INTO device_locks (device_id, block, held, generation, since_ms, updated_ms) \
               SELECT i.device_id, i.block, i.held, i.generation, i.since_ms, $6 \
                 FROM input i JOIN devices d ON d.id = i.device_id \
               ON CONFLICT (device_id, block) DO UPDATE SET held = EXCLUDED.held, \
                 generation = EXCLUDED.generation, since_ms = EXCLUDED.since_ms, \
                 updated_ms = EXCLUDED.updated_ms \
               WHERE device_locks.generation < EXCLUDED.generation \
               RETURNING device_id, block, held, generation, since_ms \
             ) \
             INSERT INTO lock_history (device_id, block, held, generation, since_ms, recorded_ms) \
             SELECT device_id, block, held, generation, since_ms, $6 FROM up",
        )
        .bind(&devices)
        .bind(&blocks)
        .bind(&held)
        .bind(&generations)
        .bind(&since)
        .bind(now.0)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::from_sqlx)?;
        Ok(done.rows_affected())
    }
}

impl_store!(PgStore, sqlx::Postgres, Backend::Postgres);
super::plans::impl_plan_store!(PgStore, sqlx::Postgres);
super::replicas::impl_replica_store!(PgStore, sqlx::Postgres, Backend::Postgres);
