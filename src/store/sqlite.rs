//! The embedded SQLite store: the default, so `lockstep serve` runs with
//! nothing installed. WAL mode, one writer at a time (`BEGIN IMMEDIATE`), and
//! a full fsync on commit so an acknowledged write survives a crash.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

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

/// The database file inside a data directory.
pub const DB_FILE: &str = "lockstep.db";

/// A SQLite-backed [`Store`](super::Store).
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

/// The lock file inside a data directory.
pub const LOCK_FILE: &str = "lockstep.lock";

/// `<data_dir>/lockstep.lock`, flocked while a server runs on the embedded
/// database: presence, wake-ups and the reconciler's queue of one server
/// would not see another's, so a second server is refused (several
/// replicas need Postgres). Tools may still open the database.
pub struct ServerLock(#[allow(dead_code)] std::fs::File);

impl ServerLock {
    /// Takes the lock, or says who holds it.
    pub fn take(data_dir: &Path) -> Result<ServerLock, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Invalid {
            message: format!("cannot create data directory {}: {e}", data_dir.display()),
        })?;
        let path = data_dir.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::Invalid {
                message: format!("cannot open {}: {e}", path.display()),
            })?;
        if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            return Err(StoreError::Precondition {
                message: format!(
                    "another lockstep server is using the embedded database in {}: the embedded SQLite serves one server; stop the other one, or run several replicas on Postgres (--database-url)",
                    data_dir.display()
                ),
            });
        }
        Ok(ServerLock(lock))
    }
}

impl SqliteStore {
    /// Opens (creating if needed) `<data_dir>/lockstep.db`, refuses a schema
    /// newer than this binary, and applies pending migrations.
    pub async fn open(data_dir: &Path, opts: &PoolOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Invalid {
            message: format!("cannot create data directory {}: {e}", data_dir.display()),
        })?;

        let connect = SqliteConnectOptions::new()
            .filename(data_dir.join(DB_FILE))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(|source| StoreError::Unavailable { source })?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let exists: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        if exists.is_some() {
            let db: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
                .fetch_one(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
            migrations::check_not_newer(Backend::Sqlite, db)?;
        }
        migrations::migrator(Backend::Sqlite)
            .run(&self.pool)
            .await
            .map_err(|source| StoreError::Migrate { source })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A read transaction: one snapshot (WAL) without taking the write lock.
    async fn begin_read(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.pool.begin().await.map_err(StoreError::from_sqlx)
    }

    /// A write transaction: takes the write lock up front, so concurrent
    /// writers wait (busy timeout) instead of failing on lock upgrade.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::from_sqlx)
    }

    /// Row by row inside the batch's one transaction (SQLite is in-process:
    /// the transaction, not the statement count, is the cost).
    /// Two statements for the whole batch, whatever its size: one upsert
    /// over the batch (passed as one JSON array, read with `json_each`),
    /// fenced on generation, returning the rows it applied; then one insert
    /// of those rows into the history. Row-by-row statements cost a round
    /// trip to sqlx's SQLite thread each, which bounded ingest at ~9k/s.
    async fn ingest_batch(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        newest: &[&LockReport],
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let batch = codec::lock_rows_json(newest)?;
        let applied = sqlx::query(
            "INSERT INTO device_locks (device_id, block, held, generation, since_ms, updated_ms) \
             SELECT r.value ->> 0, r.value ->> 1, r.value ->> 2, r.value ->> 3, r.value ->> 4, $2 \
               FROM json_each($1) r \
              WHERE EXISTS (SELECT 1 FROM devices d WHERE d.id = r.value ->> 0) \
             ON CONFLICT (device_id, block) DO UPDATE SET held = excluded.held, \
               generation = excluded.generation, since_ms = excluded.since_ms, \
               updated_ms = excluded.updated_ms \
             WHERE device_locks.generation < excluded.generation \
             RETURNING device_id, block, held, generation, since_ms",
        )
        .bind(&batch)
        .bind(now.0)
        .fetch_all(&mut **tx)
        .await
        .map_err(StoreError::from_sqlx)?;
        if applied.is_empty() {
            return Ok(0);
        }
        let history = codec::returned_lock_rows_json(&applied)?;
        sqlx::query(
            "INSERT INTO lock_history (device_id, block, held, generation, since_ms, recorded_ms) \
             SELECT r.value ->> 0, r.value ->> 1, r.value ->> 2, r.value ->> 3, r.value ->> 4, $2 \
               FROM json_each($1) r",
        )
        .bind(&history)
        .bind(now.0)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::from_sqlx)?;
        Ok(applied.len() as u64)
    }
}

impl_store!(SqliteStore, sqlx::Sqlite, Backend::Sqlite);
super::plans::impl_plan_store!(SqliteStore, sqlx::Sqlite);
super::replicas::impl_replica_store!(SqliteStore, sqlx::Sqlite, Backend::Sqlite);
