//! Durable state. One [`Store`] interface, two implementations — Postgres for
//! production and replicas, SQLite as the embedded default — proven equal by
//! one conformance suite (`tests/store_conformance.rs`). Rows never leave this
//! module: callers see domain values.

mod codec;
mod common;
pub mod intents;
pub mod migrations;
pub mod pg;
pub mod plans;
pub mod replicas;
pub mod sqlite;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use crate::domain::{ApiToken, TokenId};
use crate::domain::{
    Approval, ApprovalStatus, AuditEntry, BlockName, BlockVersion, DeviceId, DeviceRecord,
    DeviceReport, DeviceStatus, EnvLayer, EnvName, EnvScope, EnvVar, Fleet, FleetId, FleetPolicy,
    Force, IntentKind, IntentSeq, LockReport, LockState, NewIntent, OpStatus, OperationId,
    OperationRecord, OperationSpec, PolicyUpdate, Release, ReleaseId, StoredIntent, Tag,
    TimelineEntry, Timestamp, Window, WindowRule, WindowScope,
};
use crate::domain::{
    BatchCounts, Plan, PlanDevice, Rollout, RolloutId, RolloutProgress, RolloutState,
    RolloutTarget, Strategy,
};

pub use pg::PgStore;
pub use plans::{
    AckFacts, ApprovalChange, DeviceRows, EnvChanged, EnvEdit, PlanState, PlanStore, PlanWrite,
};
pub use replicas::{Notice, Notifications, ReplicaStore, SessionOpened};
pub use sqlite::SqliteStore;

/// Why a store call failed. Callers map these to API errors consistently.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{entity} {key} not found")]
    NotFound { entity: &'static str, key: String },
    #[error("{entity} {key} already exists")]
    AlreadyExists { entity: &'static str, key: String },
    #[error("{message}")]
    Invalid { message: String },
    /// The request is valid but the stored state does not allow it now
    /// (e.g. another rollout of the kind is active).
    #[error("{message}")]
    Precondition { message: String },
    #[error("{entity} {key} changed concurrently: {message}")]
    Conflict {
        entity: &'static str,
        key: String,
        message: String,
    },
    #[error("stored {entity} {key} is corrupt: {message}")]
    Corrupt {
        entity: &'static str,
        key: String,
        message: String,
    },
    #[error(
        "the database schema is at version {database}, newer than this binary knows ({binary}); upgrade lockstep"
    )]
    SchemaTooNew { database: i64, binary: i64 },
    #[error("database unavailable: {source}")]
    Unavailable {
        #[source]
        source: sqlx::Error,
    },
    #[error("database error: {source}")]
    Database {
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating the database: {source}")]
    Migrate {
        #[source]
        source: sqlx::migrate::MigrateError,
    },
}

impl StoreError {
    /// Classifies a driver error: lost connections are `Unavailable` (retry
    /// later), everything else `Database`. Every driver error passes here,
    /// and is counted in the `lockstep.db.errors` metric.
    pub(crate) fn from_sqlx(source: sqlx::Error) -> Self {
        let e = match &source {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable { source },
            _ => StoreError::Database { source },
        };
        crate::telemetry::Metrics::global().db_error(if e.is_unavailable() {
            "unavailable"
        } else {
            "query"
        });
        e
    }

    /// Like [`StoreError::from_sqlx`], but unique and foreign-key violations
    /// become `AlreadyExists` / `NotFound` for the named entity.
    pub(crate) fn on_write(
        entity: &'static str,
        key: impl ToString,
        missing: &'static str,
    ) -> impl FnOnce(sqlx::Error) -> StoreError {
        let key = key.to_string();
        move |e| match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::AlreadyExists { entity, key }
            }
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound {
                entity: missing,
                key,
            },
            _ => StoreError::from_sqlx(e),
        }
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// What one rollout controller step writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutStepWrite {
    /// The new progress, and a message to show (if any).
    pub progress: Option<(RolloutProgress, Option<String>)>,
    /// Members to start: (batch, at most how many).
    pub start: Vec<(u32, u64)>,
    pub audits: Vec<AuditEntry>,
    pub events: Vec<crate::domain::NewEvent>,
}

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Who an env variable belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvOwner {
    Fleet(FleetId),
    Device(DeviceId),
}

impl EnvOwner {
    pub(crate) fn level(&self) -> &'static str {
        match self {
            EnvOwner::Fleet(_) => "fleet",
            EnvOwner::Device(_) => "device",
        }
    }
    /// `fleet:<id>` or `device:<id>`, for logs.
    pub fn key_for_logs(&self) -> String {
        format!("{}:{}", self.level(), self.key())
    }

    pub(crate) fn key(&self) -> &str {
        match self {
            EnvOwner::Fleet(f) => f.as_str(),
            EnvOwner::Device(d) => d.as_str(),
        }
    }
}

/// A page request: at most `size` items after the opaque `token`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    pub size: u32,
    pub token: Option<String>,
}

impl PageRequest {
    pub const DEFAULT_SIZE: u32 = 100;
    pub const MAX_SIZE: u32 = 1000;

    pub(crate) fn limit(&self) -> i64 {
        let size = if self.size == 0 {
            Self::DEFAULT_SIZE
        } else {
            self.size.min(Self::MAX_SIZE)
        };
        i64::from(size)
    }
}

/// One page of results; `next` is the token for the following page, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// Filters for listing devices; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    pub fleet: Option<FleetId>,
    pub tag: Option<Tag>,
    pub status: Option<DeviceStatus>,
    /// Only devices of these fleets (a token's scope); `None`: any fleet.
    pub within: Option<BTreeSet<FleetId>>,
}

/// Which audit entries to list, oldest first; `None` matches everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFilter {
    /// Entries with an id greater than this.
    pub after: i64,
    /// At most this many (1 to 10 000).
    pub limit: u32,
    /// Exactly this action (`force_requested`, `token_revoked`, ...).
    pub action: Option<String>,
    /// Subjects that are this, or start with it followed by a space
    /// (`device dev-1` matches `device dev-1 operation 7`, not `device dev-10`).
    pub subject: Option<String>,
    pub fleet: Option<FleetId>,
    /// Only entries of these fleets (a token's scope; entries of no fleet
    /// are left out); `None`: every entry.
    pub within: Option<BTreeSet<FleetId>>,
}

impl Default for AuditFilter {
    fn default() -> Self {
        Self {
            after: 0,
            limit: 100,
            action: None,
            subject: None,
            fleet: None,
            within: None,
        }
    }
}

/// A release as listed (without its block versions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseSummary {
    pub id: ReleaseId,
    pub fleet: FleetId,
    pub blocks: usize,
    pub created: Timestamp,
}

/// A rollout to create (the store assigns its id and state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRollout {
    pub fleet: FleetId,
    pub selector: Option<Tag>,
    pub target: RolloutTarget,
    pub strategy: Strategy,
    pub seed: u64,
    pub created_by: String,
}

/// What a lock-report batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Reports that moved a lock to a newer generation.
    pub applied: u64,
    /// Reports dropped: older or equal generation, superseded within the
    /// batch, or for an unknown device.
    pub dropped: u64,
}

/// Pool settings shared by both backends.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// The details of a scheduler audit entry about some blocks (JSON).
pub fn blocks_audit_details(blocks: &[crate::domain::BlockName]) -> String {
    codec::blocks_audit_details(blocks)
}

/// An operation to record, as a caller asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOperation {
    pub device: DeviceId,
    pub spec: OperationSpec,
    pub force: Option<Force>,
    /// Written in the same transaction; its time and subject are set to
    /// the operation created's.
    pub audit: Option<AuditEntry>,
}

/// The one storage interface. Every method is one transaction.
pub trait Store: PlanStore + replicas::ReplicaStore + Clone + Send + Sync + 'static {
    fn backend(&self) -> Backend;

    /// Cheap round trip, for health checks.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    // ---- fleets and catalog
    fn create_fleet(&self, fleet: &Fleet) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get_fleet(&self, id: &FleetId) -> impl Future<Output = Result<Fleet, StoreError>> + Send;
    fn list_fleets(&self) -> impl Future<Output = Result<Vec<Fleet>, StoreError>> + Send;
    fn create_block(
        &self,
        name: &BlockName,
        description: &str,
        now: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn create_block_version(
        &self,
        bv: &BlockVersion,
        now: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The named block versions, in the order asked; `NotFound` names the first missing.
    fn get_block_versions(
        &self,
        refs: &[(BlockName, semver::Version)],
    ) -> impl Future<Output = Result<Vec<BlockVersion>, StoreError>> + Send;
    /// All versions of a block, oldest first.
    fn list_block_versions(
        &self,
        block: &BlockName,
    ) -> impl Future<Output = Result<Vec<BlockVersion>, StoreError>> + Send;
    fn create_release(
        &self,
        release: &Release,
        now: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get_release(
        &self,
        id: &ReleaseId,
    ) -> impl Future<Output = Result<Release, StoreError>> + Send;
    /// Releases by id; of `fleet` if given, and only of the fleets
    /// `within` names if given (a token's scope).
    fn list_releases(
        &self,
        fleet: Option<&FleetId>,
        within: Option<&BTreeSet<FleetId>>,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<ReleaseSummary>, StoreError>> + Send;

    // ---- devices
    fn register_device(
        &self,
        device: &DeviceRecord,
        credential_hash: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get_device(
        &self,
        id: &DeviceId,
    ) -> impl Future<Output = Result<DeviceRecord, StoreError>> + Send;
    /// The stored credential hash and whether it is revoked.
    fn device_credential(
        &self,
        id: &DeviceId,
    ) -> impl Future<Output = Result<(String, bool), StoreError>> + Send;
    fn revoke_device_credential(
        &self,
        id: &DeviceId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn list_devices(
        &self,
        filter: &DeviceFilter,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<DeviceRecord>, StoreError>> + Send;
    fn set_device_status(
        &self,
        id: &DeviceId,
        status: DeviceStatus,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// How many devices each fleet has in each status (statuses without
    /// devices are left out).
    fn device_status_counts(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<FleetId, BTreeMap<DeviceStatus, u64>>, StoreError>> + Send;

    // ---- env
    /// Sets variables for a fleet or device (upsert per name and scope).
    fn set_env(
        &self,
        owner: &EnvOwner,
        vars: &[EnvVar],
        now: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Unsets variables; returns how many stored entries were removed.
    fn unset_env(
        &self,
        owner: &EnvOwner,
        names: &[(EnvName, EnvScope)],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    fn env_layer(
        &self,
        owner: &EnvOwner,
    ) -> impl Future<Output = Result<EnvLayer, StoreError>> + Send;

    // ---- what devices report
    fn record_device_report(
        &self,
        device: &DeviceId,
        report: &DeviceReport,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn device_report(
        &self,
        device: &DeviceId,
    ) -> impl Future<Output = Result<Option<DeviceReport>, StoreError>> + Send;
    fn device_locks(
        &self,
        device: &DeviceId,
    ) -> impl Future<Output = Result<BTreeMap<BlockName, LockState>, StoreError>> + Send;
    /// Applies a batch of lock reports in one transaction: idempotent, and
    /// fenced so an older generation never overwrites a newer one. Applied
    /// changes are appended to the lock history.
    fn ingest_lock_reports(
        &self,
        batch: &[LockReport],
        now: Timestamp,
    ) -> impl Future<Output = Result<IngestOutcome, StoreError>> + Send {
        self.ingest_lock_reports_logged(batch, &[], now)
    }
    /// As [`Store::ingest_lock_reports`], appending `events` (the locks
    /// that changed, as agents reported them) to the event log in the same
    /// transaction.
    fn ingest_lock_reports_logged(
        &self,
        batch: &[LockReport],
        events: &[crate::domain::NewEvent],
        now: Timestamp,
    ) -> impl Future<Output = Result<IngestOutcome, StoreError>> + Send;
    /// The recorded history of one lock, oldest first.
    fn lock_history(
        &self,
        device: &DeviceId,
        block: &BlockName,
    ) -> impl Future<Output = Result<Vec<LockState>, StoreError>> + Send;
    /// Drops lock history recorded before `before`; returns rows removed.
    fn prune_lock_history(
        &self,
        before: Timestamp,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    // ---- intent outbox
    /// Appends intents to a device's outbox, assigning consecutive sequence
    /// numbers in the same transaction (no gaps, no duplicates).
    fn append_intents(
        &self,
        device: &DeviceId,
        intents: &[NewIntent],
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<IntentSeq>, StoreError>> + Send;
    /// Intents not yet acknowledged, in sequence order.
    fn unacked_intents(
        &self,
        device: &DeviceId,
    ) -> impl Future<Output = Result<Vec<StoredIntent>, StoreError>> + Send;
    /// Records an acknowledgement; the first one marks the intent delivered.
    fn ack_intent(
        &self,
        device: &DeviceId,
        seq: IntentSeq,
        kind: &str,
        body: &str,
        now: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    // ---- operations
    /// Records a new operation. An env change about exactly the same blocks
    /// as one not started yet merges into it (that one is returned).
    fn create_operation(
        &self,
        device: &DeviceId,
        spec: &OperationSpec,
        force: Option<&Force>,
        now: Timestamp,
    ) -> impl Future<Output = Result<OperationRecord, StoreError>> + Send;
    /// Records several new operations in one transaction, each all or
    /// nothing on its own (a savepoint per operation), with its audit entry
    /// if it has one.
    /// The outer error is for the transaction as a whole.
    #[allow(clippy::type_complexity)]
    fn create_operations(
        &self,
        new: &[NewOperation],
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<Result<OperationRecord, StoreError>>, StoreError>> + Send;
    fn get_operation(
        &self,
        id: OperationId,
    ) -> impl Future<Output = Result<OperationRecord, StoreError>> + Send;
    /// A device's operations, newest first.
    fn list_operations(
        &self,
        device: &DeviceId,
    ) -> impl Future<Output = Result<Vec<OperationRecord>, StoreError>> + Send;
    /// Devices with unfinished operations (to resume after a restart).
    fn devices_with_active_operations(
        &self,
    ) -> impl Future<Output = Result<Vec<DeviceId>, StoreError>> + Send;
    /// How many operations are in each stored status (statuses without
    /// operations are left out), in status-name order. For metrics.
    fn operation_status_counts(
        &self,
    ) -> impl Future<Output = Result<Vec<(OpStatus, u64)>, StoreError>> + Send;
    /// In one transaction: stores `op`'s status and progress — only if the
    /// stored generation is still `op.generation` (it becomes one more),
    /// else `Conflict` — and appends `intents` to its device's outbox.
    /// Returns the intents' sequences.
    fn record_step(
        &self,
        op: &OperationRecord,
        intents: &[NewIntent],
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<IntentSeq>, StoreError>> + Send;
    /// The device's intents and the agent's answers to them, newest first,
    /// at most `limit` entries (1 to 1000). An unknown device has none.
    fn device_timeline(
        &self,
        device: &DeviceId,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<TimelineEntry>, StoreError>> + Send;
    /// The operation and kind of a stored intent.
    fn intent_info(
        &self,
        device: &DeviceId,
        seq: IntentSeq,
    ) -> impl Future<Output = Result<Option<(Option<OperationId>, IntentKind)>, StoreError>> + Send;

    // ---- rollouts
    /// The devices a new rollout would cover (the fleet's, or those with the
    /// tag), ordered by id, each marked if it already runs the target.
    fn rollout_candidates(
        &self,
        fleet: &FleetId,
        selector: Option<&Tag>,
        target: &RolloutTarget,
    ) -> impl Future<Output = Result<Vec<PlanDevice>, StoreError>> + Send;
    /// Stores a rollout and its plan in one transaction. Another active
    /// rollout of the same kind for the fleet is `Conflict`, unless
    /// `supersede`, which marks it superseded.
    fn create_rollout(
        &self,
        rollout: &NewRollout,
        plan: &Plan,
        supersede: bool,
        now: Timestamp,
    ) -> impl Future<Output = Result<Rollout, StoreError>> + Send;
    fn get_rollout(
        &self,
        id: RolloutId,
    ) -> impl Future<Output = Result<Rollout, StoreError>> + Send;
    /// Rollouts, newest first; of one fleet if given.
    fn list_rollouts(
        &self,
        fleet: Option<&FleetId>,
    ) -> impl Future<Output = Result<Vec<Rollout>, StoreError>> + Send;
    /// Running and paused rollouts.
    fn active_rollouts(&self) -> impl Future<Output = Result<Vec<RolloutId>, StoreError>> + Send;
    /// Each batch's member counts, in batch order.
    fn rollout_batch_counts(
        &self,
        id: RolloutId,
    ) -> impl Future<Output = Result<Vec<BatchCounts>, StoreError>> + Send;
    /// Member devices by their device status.
    fn rollout_device_statuses(
        &self,
        id: RolloutId,
    ) -> impl Future<Output = Result<BTreeMap<DeviceStatus, u64>, StoreError>> + Send;
    /// Members' operations that have started and not finished.
    fn rollout_active_operations(
        &self,
        id: RolloutId,
    ) -> impl Future<Output = Result<Vec<OperationRecord>, StoreError>> + Send;
    /// Stores the controller's progress (and a message, if given) only if
    /// the stored state is still `expected`; `Conflict` otherwise.
    fn update_rollout(
        &self,
        id: RolloutId,
        expected: RolloutState,
        progress: &RolloutProgress,
        message: Option<&str>,
        now: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Starts up to `n` queued members of `batch` in plan order: creates
    /// each one's operation and links it, in one transaction, only while
    /// the rollout is running. Returns the operations created.
    fn start_rollout_members(
        &self,
        id: RolloutId,
        batch: u32,
        n: u64,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<OperationRecord>, StoreError>> + Send;

    /// One controller step of a running rollout, in one transaction under
    /// the rollout's row lock (so two controllers, on any replicas, never
    /// step it at once): reads the rollout and its batch counts, lets
    /// `decide` (pure) say what to write, writes it — progress, members
    /// started (each batch's `n` at most), audit entries, events — and
    /// commits. `None` if the rollout is not running.
    fn step_rollout<T, F>(
        &self,
        id: RolloutId,
        now: Timestamp,
        decide: F,
    ) -> impl Future<Output = Result<Option<(T, Vec<OperationRecord>)>, StoreError>> + Send
    where
        T: Send,
        F: FnOnce(&Rollout, &[BatchCounts]) -> (RolloutStepWrite, T) + Send;

    // ---- policies and maintenance windows
    fn set_fleet_policy(
        &self,
        fleet: &FleetId,
        policy: &FleetPolicy,
        now: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Applies `update` to the fleet's policy (`NotFound` for an unknown
    /// fleet) and returns the policy as it now is. The read, the merge
    /// (`PolicyUpdate::apply`) and the write happen in one transaction under
    /// the fleet's row lock, so concurrent updates of different settings
    /// all survive.
    fn update_fleet_policy(
        &self,
        fleet: &FleetId,
        update: &PolicyUpdate,
        now: Timestamp,
    ) -> impl Future<Output = Result<FleetPolicy, StoreError>> + Send;
    /// The fleet's policy, or the default if none was set.
    fn fleet_policy(
        &self,
        fleet: &FleetId,
    ) -> impl Future<Output = Result<FleetPolicy, StoreError>> + Send;
    /// Opens a request for a customer to approve a window occurrence.
    fn create_approval(
        &self,
        op: OperationId,
        now: Timestamp,
    ) -> impl Future<Output = Result<Approval, StoreError>> + Send;
    /// The operation's most recent approval, if any.
    fn latest_approval(
        &self,
        op: OperationId,
    ) -> impl Future<Output = Result<Option<Approval>, StoreError>> + Send;
    fn get_approval(&self, id: i64) -> impl Future<Output = Result<Approval, StoreError>> + Send;
    fn list_approvals(
        &self,
        status: Option<ApprovalStatus>,
    ) -> impl Future<Output = Result<Vec<Approval>, StoreError>> + Send;
    /// Records a decision (status, occurrence, who, message) if the approval
    /// is still `expected`; `Conflict` otherwise.
    fn decide_approval(
        &self,
        id: i64,
        expected: ApprovalStatus,
        decision: &Approval,
        now: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A window on a fleet or a device that does not exist is `NotFound`
    /// (checked in the statement that writes it); a tag needs no device
    /// yet.
    fn create_window(
        &self,
        scope: &WindowScope,
        rule: &WindowRule,
        now: Timestamp,
    ) -> impl Future<Output = Result<Window, StoreError>> + Send;
    fn list_windows(&self) -> impl Future<Output = Result<Vec<Window>, StoreError>> + Send;
    fn delete_window(&self, id: i64) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The windows that apply to a device: its fleet's, its tags', its own.
    fn windows_for_device(
        &self,
        device: &DeviceId,
    ) -> impl Future<Output = Result<Vec<Window>, StoreError>> + Send;

    // ---- audit
    fn append_audit(
        &self,
        entry: &AuditEntry,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Entries matching `filter`, oldest first, with their ids.
    fn list_audit(
        &self,
        filter: &AuditFilter,
    ) -> impl Future<Output = Result<Vec<(i64, AuditEntry)>, StoreError>> + Send;

    // ---- API tokens
    /// Stores a new token: everything but the secret, and the hash of the
    /// whole token. `AlreadyExists` if the id is taken.
    fn create_token(
        &self,
        token: &ApiToken,
        token_hash: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Stores `token` only if no admin token is usable at `now` (neither
    /// revoked nor expired), in one statement, so replicas starting together
    /// bootstrap once. Whether it was stored.
    fn create_token_unless_admin(
        &self,
        token: &ApiToken,
        token_hash: &str,
        now: Timestamp,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// A token and the stored hash of it.
    fn get_token(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<(ApiToken, String), StoreError>> + Send;
    /// Every token, revoked and expired ones too, oldest first.
    fn list_tokens(&self) -> impl Future<Output = Result<Vec<ApiToken>, StoreError>> + Send;
    /// Marks a token revoked by `by`; `Conflict` if it already is.
    fn revoke_token(
        &self,
        id: &TokenId,
        by: &str,
        now: Timestamp,
    ) -> impl Future<Output = Result<ApiToken, StoreError>> + Send;
}
