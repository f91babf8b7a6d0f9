//! Row ⇄ domain conversion for the parts stored as JSON text (config, env,
//! dependencies, update strategy) and for fingerprints and versions. A value
//! that does not decode is reported as corrupt, naming the row.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::domain::{
    BlockConfig, BlockName, BlockVersion, Dependency, Env, EnvName, EnvTarget, Fingerprint, Force,
    Generation, ImageDigest, IntentSeq, OpProgress, OperationSpec, Reason, ReleaseId,
    ReleaseRequest, UpdateStrategy, WindowRule,
};

#[derive(Serialize, Deserialize)]
struct ConfigJson {
    #[serde(default)]
    entrypoint: Vec<String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct DependencyJson {
    block: String,
    restart: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum StrategyJson {
    DownloadThenKill,
    KillThenDownload,
    HandOver { timeout_secs: u64 },
}

/// An event log entry's body as stored (`event_log.body_json`); its kind
/// is also a column, for filters.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum EventJson {
    ApprovalRequested,
    BlockedByLock { holders: Vec<String> },
    WaitingWindow { next_start_ms: Option<i64> },
    Deferred { block: String, until_ms: i64 },
    Queued { behind: i64 },
    Applying,
    Applied,
    Failed { error: String },
    Interrupted { message: String },
    NewAgentEpoch { epoch: String },
    Overdue { blocks: Vec<String> },
    TimeForced { blocks: Vec<String> },
    Cancelled { reason: String },
    LockChanged { locks: Vec<String> },
    Online,
    Offline,
    Rollout { notice: String, message: String },
}

/// The `kind` column and body JSON of an event.
pub(crate) fn event_body_to_json(body: &crate::domain::EventBody) -> (String, String) {
    use crate::domain::{EventBody, EventKind as K};
    let (kind, json) = match body {
        EventBody::Device(k) => (
            k.name().to_owned(),
            match k {
                K::ApprovalRequested => EventJson::ApprovalRequested,
                K::BlockedByLock { holders } => EventJson::BlockedByLock {
                    holders: holders.clone(),
                },
                K::WaitingWindow { next_start } => EventJson::WaitingWindow {
                    next_start_ms: next_start.map(|t| t.0),
                },
                K::Deferred { block, until } => EventJson::Deferred {
                    block: block.clone(),
                    until_ms: until.0,
                },
                K::Queued { behind } => EventJson::Queued { behind: behind.0 },
                K::Applying => EventJson::Applying,
                K::Applied => EventJson::Applied,
                K::Failed { error } => EventJson::Failed {
                    error: error.clone(),
                },
                K::Interrupted { message } => EventJson::Interrupted {
                    message: message.clone(),
                },
                K::NewAgentEpoch { epoch } => EventJson::NewAgentEpoch {
                    epoch: epoch.clone(),
                },
                K::Overdue { blocks } => EventJson::Overdue {
                    blocks: blocks.clone(),
                },
                K::TimeForced { blocks } => EventJson::TimeForced {
                    blocks: blocks.clone(),
                },
                K::Cancelled { reason } => EventJson::Cancelled {
                    reason: reason.clone(),
                },
                K::LockChanged { locks } => EventJson::LockChanged {
                    locks: locks.clone(),
                },
                K::Online => EventJson::Online,
                K::Offline => EventJson::Offline,
            },
        ),
        EventBody::Rollout { kind, message } => (
            format!("rollout.{kind}"),
            EventJson::Rollout {
                notice: kind.clone(),
                message: message.clone(),
            },
        ),
    };
    (
        kind,
        serde_json::to_string(&json).expect("event JSON always serializes"),
    )
}

/// An event's body from its stored JSON.
pub(crate) fn event_body_from_json(
    seq: u64,
    json: &str,
) -> Result<crate::domain::EventBody, StoreError> {
    use crate::domain::{EventBody, EventKind as K, OperationId, Timestamp};
    let parsed: EventJson = serde_json::from_str(json).map_err(|e| corrupt("event", seq, e))?;
    Ok(EventBody::Device(match parsed {
        EventJson::ApprovalRequested => K::ApprovalRequested,
        EventJson::BlockedByLock { holders } => K::BlockedByLock { holders },
        EventJson::WaitingWindow { next_start_ms } => K::WaitingWindow {
            next_start: next_start_ms.map(Timestamp),
        },
        EventJson::Deferred { block, until_ms } => K::Deferred {
            block,
            until: Timestamp(until_ms),
        },
        EventJson::Queued { behind } => K::Queued {
            behind: OperationId(behind),
        },
        EventJson::Applying => K::Applying,
        EventJson::Applied => K::Applied,
        EventJson::Failed { error } => K::Failed { error },
        EventJson::Interrupted { message } => K::Interrupted { message },
        EventJson::NewAgentEpoch { epoch } => K::NewAgentEpoch { epoch },
        EventJson::Overdue { blocks } => K::Overdue { blocks },
        EventJson::TimeForced { blocks } => K::TimeForced { blocks },
        EventJson::Cancelled { reason } => K::Cancelled { reason },
        EventJson::LockChanged { locks } => K::LockChanged { locks },
        EventJson::Online => K::Online,
        EventJson::Offline => K::Offline,
        EventJson::Rollout { notice, message } => {
            return Ok(EventBody::Rollout {
                kind: notice,
                message,
            });
        }
    }))
}

pub(crate) fn corrupt(
    entity: &'static str,
    key: impl ToString,
    message: impl ToString,
) -> StoreError {
    StoreError::Corrupt {
        entity,
        key: key.to_string(),
        message: message.to_string(),
    }
}

fn to_json<T: Serialize>(v: &T) -> String {
    // Serialising these plain structs cannot fail (string keys, no floats).
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

pub(crate) fn env_to_json(env: &Env) -> String {
    let m: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    to_json(&m)
}

pub(crate) fn env_from_json(entity: &'static str, key: &str, s: &str) -> Result<Env, StoreError> {
    let m: BTreeMap<String, String> =
        serde_json::from_str(s).map_err(|e| corrupt(entity, key, format!("env: {e}")))?;
    m.into_iter()
        .map(|(k, v)| Ok((EnvName::new(k).map_err(|e| corrupt(entity, key, e))?, v)))
        .collect()
}

type BlockEnvsJson = BTreeMap<String, BTreeMap<String, String>>;

fn block_envs_to_map(envs: &BTreeMap<BlockName, Env>) -> BlockEnvsJson {
    envs.iter()
        .map(|(b, env)| {
            (
                b.to_string(),
                env.iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                    .collect(),
            )
        })
        .collect()
}

fn block_envs_from_map(
    entity: &'static str,
    key: &str,
    m: BlockEnvsJson,
) -> Result<BTreeMap<BlockName, Env>, StoreError> {
    m.into_iter()
        .map(|(b, env)| {
            let block = BlockName::new(b).map_err(|e| corrupt(entity, key, e))?;
            let env = env
                .into_iter()
                .map(|(k, v)| Ok((EnvName::new(k).map_err(|e| corrupt(entity, key, e))?, v)))
                .collect::<Result<Env, StoreError>>()?;
            Ok((block, env))
        })
        .collect()
}

/// A device's applied env column: block → operator env.
pub(crate) fn block_envs_to_json(envs: &BTreeMap<BlockName, Env>) -> String {
    to_json(&block_envs_to_map(envs))
}

pub(crate) fn block_envs_from_json(
    key: &str,
    s: &str,
) -> Result<BTreeMap<BlockName, Env>, StoreError> {
    let m: BlockEnvsJson =
        serde_json::from_str(s).map_err(|e| corrupt("device", key, format!("applied env: {e}")))?;
    block_envs_from_map("device", key, m)
}

/// The details of an `approval_requested` audit entry.
pub(crate) fn approval_audit_details(approval: i64) -> String {
    serde_json::json!({ "approval": approval }).to_string()
}

/// The details of a scheduler audit entry about some blocks.
pub(crate) fn blocks_audit_details(blocks: &[BlockName]) -> String {
    serde_json::json!({ "blocks": blocks.iter().map(BlockName::as_str).collect::<Vec<_>>() })
        .to_string()
}

/// The detail of an agent's answer, as `grpc::agent` stores it.
#[derive(Deserialize, Default)]
struct AckDetailJson {
    #[serde(default)]
    until_unix_ms: Option<i64>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    held_by: Vec<String>,
}

#[derive(Deserialize)]
struct AckJson {
    #[serde(default)]
    block: String,
    #[serde(default)]
    detail: AckDetailJson,
}

/// What an agent's stored answer to an intent says, for the reconciler.
pub(crate) enum AckFact {
    /// The final answer to an apply.
    Outcome(crate::domain::ApplyOutcome),
    /// A holder defers its release until then.
    Deferred {
        block: BlockName,
        until: crate::domain::Timestamp,
    },
    /// Anything else (received, released, refused…): nothing to decide on.
    Other,
}

/// Decodes an answer (`kind` as stored by `ack_intent`, and its body).
pub(crate) fn ack_fact(key: &str, kind: &str, body: &str) -> Result<AckFact, StoreError> {
    use crate::domain::ApplyOutcome;
    let a: AckJson =
        serde_json::from_str(body).map_err(|e| corrupt("intent ack", key, format!("body: {e}")))?;
    Ok(match kind {
        "applied" => AckFact::Outcome(ApplyOutcome::Applied),
        "stale" => AckFact::Outcome(ApplyOutcome::Stale),
        "interrupted" => AckFact::Outcome(ApplyOutcome::Interrupted {
            message: a.detail.message.unwrap_or_default(),
        }),
        "failed" if !a.detail.held_by.is_empty() => AckFact::Outcome(ApplyOutcome::Blocked {
            held_by: a
                .detail
                .held_by
                .iter()
                .filter_map(|b| BlockName::new(b).ok())
                .collect(),
        }),
        "failed" => AckFact::Outcome(ApplyOutcome::Failed {
            error: a.detail.error.unwrap_or_default(),
        }),
        "deferred" => match (BlockName::new(&a.block), a.detail.until_unix_ms) {
            (Ok(block), Some(until)) => AckFact::Deferred {
                block,
                until: crate::domain::Timestamp(until),
            },
            _ => AckFact::Other,
        },
        _ => AckFact::Other,
    })
}

/// The JSON columns of a block version.
pub(crate) struct BlockVersionColumns {
    pub config: String,
    pub env: String,
    pub depends_on: String,
    pub strategy: String,
}

pub(crate) fn block_version_columns(bv: &BlockVersion) -> BlockVersionColumns {
    let c = &bv.config;
    BlockVersionColumns {
        config: to_json(&ConfigJson {
            entrypoint: c.entrypoint.clone(),
            command: c.command.clone(),
            working_dir: c.working_dir.clone(),
            labels: c.labels.clone(),
        }),
        env: env_to_json(&bv.env),
        depends_on: to_json(
            &bv.depends_on
                .iter()
                .map(|d| DependencyJson {
                    block: d.block.to_string(),
                    restart: d.restart,
                })
                .collect::<Vec<_>>(),
        ),
        strategy: to_json(&match bv.update_strategy {
            UpdateStrategy::DownloadThenKill => StrategyJson::DownloadThenKill,
            UpdateStrategy::KillThenDownload => StrategyJson::KillThenDownload,
            UpdateStrategy::HandOver { timeout } => StrategyJson::HandOver {
                timeout_secs: timeout.as_secs(),
            },
        }),
    }
}

/// A block_versions row, as read.
pub(crate) struct BlockVersionRow {
    pub block: String,
    pub version: String,
    pub image_digest: String,
    pub columns: BlockVersionColumns,
}

pub(crate) fn block_version_from_row(r: BlockVersionRow) -> Result<BlockVersion, StoreError> {
    const E: &str = "block version";
    let key = format!("{}@{}", r.block, r.version);
    let name = BlockName::new(&r.block).map_err(|e| corrupt(E, &key, e))?;
    let version = semver::Version::parse(&r.version).map_err(|e| corrupt(E, &key, e))?;
    let image_digest = ImageDigest::new(r.image_digest).map_err(|e| corrupt(E, &key, e))?;
    let c: ConfigJson = serde_json::from_str(&r.columns.config)
        .map_err(|e| corrupt(E, &key, format!("config: {e}")))?;
    let deps: Vec<DependencyJson> = serde_json::from_str(&r.columns.depends_on)
        .map_err(|e| corrupt(E, &key, format!("depends_on: {e}")))?;
    let strategy: StrategyJson = serde_json::from_str(&r.columns.strategy)
        .map_err(|e| corrupt(E, &key, format!("strategy: {e}")))?;
    Ok(BlockVersion {
        name,
        version,
        image_digest,
        config: BlockConfig {
            entrypoint: c.entrypoint,
            command: c.command,
            working_dir: c.working_dir,
            labels: c.labels,
        },
        env: env_from_json(E, &key, &r.columns.env)?,
        depends_on: deps
            .into_iter()
            .map(|d| {
                Ok(Dependency {
                    block: BlockName::new(d.block).map_err(|e| corrupt(E, &key, e))?,
                    restart: d.restart,
                })
            })
            .collect::<Result<_, StoreError>>()?,
        update_strategy: match strategy {
            StrategyJson::DownloadThenKill => UpdateStrategy::DownloadThenKill,
            StrategyJson::KillThenDownload => UpdateStrategy::KillThenDownload,
            StrategyJson::HandOver { timeout_secs } => UpdateStrategy::HandOver {
                timeout: Duration::from_secs(timeout_secs),
            },
        },
    })
}

pub(crate) fn fingerprint_from_hex(
    entity: &'static str,
    key: &str,
    s: &str,
) -> Result<Fingerprint, StoreError> {
    Fingerprint::from_hex(s).ok_or_else(|| corrupt(entity, key, format!("bad fingerprint {s:?}")))
}

/// Lock reports as one JSON array of `[device, block, held, generation,
/// since_ms]` rows, for a set-based statement over `json_each` (SQLite).
pub(crate) fn lock_rows_json(reports: &[&crate::domain::LockReport]) -> Result<String, StoreError> {
    let rows = reports
        .iter()
        .map(|r| {
            Ok(serde_json::json!([
                r.device.as_str(),
                r.block.as_str(),
                r.state.held,
                to_i64("generation", r.state.generation.0)?,
                r.state.since.0,
            ]))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(serde_json::Value::Array(rows).to_string())
}

/// The rows an upsert returned (`device_id, block, held, generation,
/// since_ms`) in the shape of [`lock_rows_json`].
pub(crate) fn returned_lock_rows_json(
    rows: &[sqlx::sqlite::SqliteRow],
) -> Result<String, StoreError> {
    use sqlx::Row as _;
    let rows = rows
        .iter()
        .map(|r| {
            let device: String = r.try_get("device_id").map_err(StoreError::from_sqlx)?;
            let block: String = r.try_get("block").map_err(StoreError::from_sqlx)?;
            let held: bool = r.try_get("held").map_err(StoreError::from_sqlx)?;
            let generation: i64 = r.try_get("generation").map_err(StoreError::from_sqlx)?;
            let since: i64 = r.try_get("since_ms").map_err(StoreError::from_sqlx)?;
            Ok(serde_json::json!([device, block, held, generation, since]))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(serde_json::Value::Array(rows).to_string())
}

/// Non-negative database integers as `u64` (generations, sequences).
pub(crate) fn to_u64(entity: &'static str, key: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(entity, key, format!("negative counter {v}")))
}

/// `u64` counters as database integers; values past `i64::MAX` are refused.
pub(crate) fn to_i64(what: &'static str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Invalid {
        message: format!("{what} {v} is out of range"),
    })
}

#[derive(Serialize, Deserialize)]
struct ForceJson {
    blocks: Vec<String>,
    reason: String,
}

#[derive(Serialize, Deserialize)]
struct RequestJson {
    block: String,
    reason: String,
    handover: bool,
    because_of: Option<String>,
    generation: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct ProgressJson {
    #[serde(default)]
    waiting_on: Vec<RequestJson>,
    #[serde(default)]
    requested: Vec<(String, u64)>,
    #[serde(default)]
    apply_seq: Option<u64>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    told_window: Option<(i64, i64)>,
    #[serde(default)]
    asked_at: Vec<(String, i64)>,
    #[serde(default)]
    deferred_until: Vec<(String, i64)>,
    #[serde(default)]
    overdue: bool,
    #[serde(default)]
    partial_in_flight: bool,
    #[serde(default)]
    partially_applied: bool,
    #[serde(default)]
    phase: Option<String>,
    #[serde(default)]
    behind: Option<i64>,
    #[serde(default)]
    applied_env: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    interruptions: u32,
    #[serde(default)]
    interrupted: Option<String>,
}

/// The prefix of an `apply_env` operation's argument naming its blocks; an
/// empty argument (every row before env changes had scopes) is every block.
const ENV_BLOCKS_PREFIX: &str = "blocks:";

/// (kind, argument) columns of an operation spec.
pub(crate) fn spec_columns(spec: &OperationSpec) -> (&'static str, String) {
    let arg = match spec {
        OperationSpec::AssignRelease(r) => r.to_string(),
        OperationSpec::RestartBlock(b)
        | OperationSpec::StopBlock(b)
        | OperationSpec::StartBlock(b) => b.to_string(),
        OperationSpec::Reboot
        | OperationSpec::Shutdown
        | OperationSpec::ApplyEnv(EnvTarget::AllBlocks) => String::new(),
        OperationSpec::ApplyEnv(EnvTarget::Blocks(blocks)) => format!(
            "{ENV_BLOCKS_PREFIX}{}",
            blocks
                .iter()
                .map(BlockName::as_str)
                .collect::<Vec<_>>()
                .join(",")
        ),
        OperationSpec::OsUpdate(v) => v.clone(),
    };
    (spec.kind(), arg)
}

pub(crate) fn spec_from_columns(
    key: &str,
    kind: &str,
    arg: &str,
) -> Result<OperationSpec, StoreError> {
    const E: &str = "operation";
    let block = || BlockName::new(arg).map_err(|e| corrupt(E, key, e));
    Ok(match kind {
        "assign_release" => {
            OperationSpec::AssignRelease(ReleaseId::new(arg).map_err(|e| corrupt(E, key, e))?)
        }
        "restart_block" => OperationSpec::RestartBlock(block()?),
        "stop_block" => OperationSpec::StopBlock(block()?),
        "start_block" => OperationSpec::StartBlock(block()?),
        "reboot" => OperationSpec::Reboot,
        "shutdown" => OperationSpec::Shutdown,
        "os_update" => OperationSpec::OsUpdate(arg.to_owned()),
        "apply_env" => match arg.strip_prefix(ENV_BLOCKS_PREFIX) {
            None if arg.is_empty() => OperationSpec::ApplyEnv(EnvTarget::AllBlocks),
            None => return Err(corrupt(E, key, format!("unknown env target {arg:?}"))),
            Some(list) => OperationSpec::ApplyEnv(EnvTarget::Blocks(
                list.split(',')
                    .map(|b| BlockName::new(b).map_err(|e| corrupt(E, key, e)))
                    .collect::<Result<_, _>>()?,
            )),
        },
        other => return Err(corrupt(E, key, format!("unknown kind {other:?}"))),
    })
}

pub(crate) fn force_to_json(force: Option<&Force>) -> Option<String> {
    force.map(|f| {
        to_json(&ForceJson {
            blocks: f.blocks().iter().map(ToString::to_string).collect(),
            reason: f.reason().to_owned(),
        })
    })
}

pub(crate) fn force_from_json(key: &str, s: Option<&str>) -> Result<Option<Force>, StoreError> {
    const E: &str = "operation";
    let Some(s) = s else { return Ok(None) };
    let f: ForceJson =
        serde_json::from_str(s).map_err(|e| corrupt(E, key, format!("force: {e}")))?;
    let blocks = f
        .blocks
        .into_iter()
        .map(|b| BlockName::new(b).map_err(|e| corrupt(E, key, e)))
        .collect::<Result<_, _>>()?;
    Force::new(blocks, f.reason)
        .map(Some)
        .map_err(|e| corrupt(E, key, e))
}

fn reason_from_str(key: &str, s: &str) -> Result<Reason, StoreError> {
    Reason::ALL
        .into_iter()
        .find(|r| r.as_str() == s)
        .ok_or_else(|| corrupt("operation", key, format!("unknown reason {s:?}")))
}

pub(crate) fn progress_to_json(p: &OpProgress) -> String {
    to_json(&ProgressJson {
        waiting_on: p
            .waiting_on
            .iter()
            .map(|r| RequestJson {
                block: r.block.to_string(),
                reason: r.reason.as_str().to_owned(),
                handover: r.handover,
                because_of: r.because_of.as_ref().map(ToString::to_string),
                generation: r.generation.0,
            })
            .collect(),
        requested: p
            .requested
            .iter()
            .map(|(b, g)| (b.to_string(), g.0))
            .collect(),
        apply_seq: p.apply_seq.map(|s| s.0),
        error: p.error.clone(),
        told_window: p.told_window.map(|o| (o.start.0, o.end.0)),
        asked_at: p
            .asked_at
            .iter()
            .map(|(b, t)| (b.to_string(), t.0))
            .collect(),
        deferred_until: p
            .deferred_until
            .iter()
            .map(|(b, t)| (b.to_string(), t.0))
            .collect(),
        overdue: p.overdue,
        partial_in_flight: p.partial_in_flight,
        partially_applied: p.partially_applied,
        phase: p.phase.clone(),
        behind: p.behind.map(|o| o.0),
        applied_env: block_envs_to_map(&p.applied_env),
        interruptions: p.interruptions,
        interrupted: p.interrupted.clone(),
    })
}

pub(crate) fn progress_from_json(key: &str, s: &str) -> Result<OpProgress, StoreError> {
    const E: &str = "operation";
    let p: ProgressJson =
        serde_json::from_str(s).map_err(|e| corrupt(E, key, format!("progress: {e}")))?;
    let block = |b: String| BlockName::new(b).map_err(|e| corrupt(E, key, e));
    Ok(OpProgress {
        waiting_on: p
            .waiting_on
            .into_iter()
            .map(|r| {
                Ok(ReleaseRequest {
                    block: block(r.block)?,
                    reason: reason_from_str(key, &r.reason)?,
                    handover: r.handover,
                    because_of: r.because_of.map(block).transpose()?,
                    generation: Generation(r.generation),
                })
            })
            .collect::<Result<_, StoreError>>()?,
        requested: p
            .requested
            .into_iter()
            .map(|(b, g)| Ok((block(b)?, Generation(g))))
            .collect::<Result<_, StoreError>>()?,
        apply_seq: p.apply_seq.map(IntentSeq),
        error: p.error,
        told_window: p.told_window.map(|(s, e)| crate::domain::Occurrence {
            start: crate::domain::Timestamp(s),
            end: crate::domain::Timestamp(e),
        }),
        asked_at: p
            .asked_at
            .into_iter()
            .map(|(b, t)| Ok((block(b)?, crate::domain::Timestamp(t))))
            .collect::<Result<_, StoreError>>()?,
        deferred_until: p
            .deferred_until
            .into_iter()
            .map(|(b, t)| Ok((block(b)?, crate::domain::Timestamp(t))))
            .collect::<Result<_, StoreError>>()?,
        overdue: p.overdue,
        partial_in_flight: p.partial_in_flight,
        partially_applied: p.partially_applied,
        phase: p.phase,
        behind: p.behind.map(crate::domain::OperationId),
        applied_env: block_envs_from_map(E, key, p.applied_env)?,
        interruptions: p.interruptions,
        interrupted: p.interrupted,
    })
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum RuleJson {
    Weekly {
        days: Vec<i8>,
        start: String,
        duration_secs: i64,
        tz: String,
    },
    OneOff {
        start_ms: i64,
        end_ms: i64,
    },
    Recurrence {
        rule: String,
        duration_secs: i64,
    },
}

pub(crate) fn rule_to_json(rule: &WindowRule) -> String {
    to_json(&match rule {
        WindowRule::Weekly {
            days,
            start,
            duration,
            tz,
        } => RuleJson::Weekly {
            days: days.iter().copied().collect(),
            start: start.to_string(),
            duration_secs: duration.as_secs(),
            tz: tz.clone(),
        },
        WindowRule::OneOff { start, end } => RuleJson::OneOff {
            start_ms: start.0,
            end_ms: end.0,
        },
        WindowRule::Recurrence { rule, duration } => RuleJson::Recurrence {
            rule: rule.clone(),
            duration_secs: duration.as_secs(),
        },
    })
}

pub(crate) fn rule_from_json(key: &str, s: &str) -> Result<WindowRule, StoreError> {
    const E: &str = "window";
    let r: RuleJson = serde_json::from_str(s).map_err(|e| corrupt(E, key, e))?;
    Ok(match r {
        RuleJson::Weekly {
            days,
            start,
            duration_secs,
            tz,
        } => WindowRule::Weekly {
            days: days.into_iter().collect(),
            start: start
                .parse::<jiff::civil::Time>()
                .map_err(|e| corrupt(E, key, e))?,
            duration: jiff::SignedDuration::from_secs(duration_secs),
            tz,
        },
        RuleJson::OneOff { start_ms, end_ms } => WindowRule::OneOff {
            start: crate::domain::Timestamp(start_ms),
            end: crate::domain::Timestamp(end_ms),
        },
        RuleJson::Recurrence {
            rule,
            duration_secs,
        } => WindowRule::Recurrence {
            rule,
            duration: jiff::SignedDuration::from_secs(duration_secs),
        },
    })
}

pub(crate) fn kinds_to_json(kinds: &std::collections::BTreeSet<String>) -> String {
    to_json(kinds)
}

pub(crate) fn kinds_from_json(
    key: &str,
    s: &str,
) -> Result<std::collections::BTreeSet<String>, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt("fleet policy", key, e))
}

/// A token's scope as stored: a JSON array of fleet ids, `[]` for every fleet.
pub(crate) fn token_scope_to_json(scope: &crate::domain::Scope) -> String {
    let fleets: Vec<&str> = scope
        .named()
        .map(|set| set.iter().map(|f| f.as_str()).collect())
        .unwrap_or_default();
    to_json(&fleets)
}

pub(crate) fn token_scope_from_json(
    key: &str,
    s: &str,
) -> Result<crate::domain::Scope, StoreError> {
    let fleets: Vec<String> = serde_json::from_str(s).map_err(|e| corrupt("api token", key, e))?;
    let fleets = fleets
        .into_iter()
        .map(|f| crate::domain::FleetId::new(f).map_err(|e| corrupt("api token", key, e)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(crate::domain::Scope::fleets(fleets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_version_columns_round_trip() {
        let bv = BlockVersion {
            name: BlockName::new("ctl").unwrap(),
            version: semver::Version::parse("1.2.3-rc.1").unwrap(),
            image_digest: ImageDigest::new(format!("sha256:{}", "b".repeat(64))).unwrap(),
            config: BlockConfig {
                entrypoint: vec!["/e".into()],
                command: vec!["c".into()],
                working_dir: Some("/w".into()),
                labels: [("k".to_owned(), "v".to_owned())].into(),
            },
            env: [(EnvName::new("A").unwrap(), "1".to_owned())].into(),
            depends_on: vec![Dependency {
                block: BlockName::new("tel").unwrap(),
                restart: true,
            }],
            update_strategy: UpdateStrategy::HandOver {
                timeout: Duration::from_secs(45),
            },
        };
        let row = BlockVersionRow {
            block: "ctl".into(),
            version: "1.2.3-rc.1".into(),
            image_digest: bv.image_digest.to_string(),
            columns: block_version_columns(&bv),
        };
        assert_eq!(block_version_from_row(row).unwrap(), bv);
    }

    #[test]
    fn operation_columns_round_trip() {
        let b = |s: &str| BlockName::new(s).unwrap();
        for spec in [
            OperationSpec::AssignRelease(ReleaseId::new("r1").unwrap()),
            OperationSpec::RestartBlock(b("a")),
            OperationSpec::StopBlock(b("a")),
            OperationSpec::StartBlock(b("a")),
            OperationSpec::Reboot,
            OperationSpec::Shutdown,
            OperationSpec::OsUpdate("6.2".into()),
            OperationSpec::ApplyEnv(crate::domain::EnvTarget::AllBlocks),
            OperationSpec::ApplyEnv(crate::domain::EnvTarget::Blocks([b("a")].into())),
            OperationSpec::ApplyEnv(crate::domain::EnvTarget::Blocks([b("a"), b("b")].into())),
        ] {
            let (kind, arg) = spec_columns(&spec);
            assert_eq!(spec_from_columns("k", kind, &arg).unwrap(), spec);
        }
        let force = Force::new([b("a"), b("b")].into(), "site visit").unwrap();
        let json = force_to_json(Some(&force));
        assert_eq!(force_from_json("k", json.as_deref()).unwrap(), Some(force));
        assert_eq!(force_from_json("k", None).unwrap(), None);
        let progress = OpProgress {
            waiting_on: vec![ReleaseRequest {
                block: b("a"),
                reason: Reason::DependencyRestart,
                handover: false,
                because_of: Some(b("c")),
                generation: Generation(4),
            }],
            requested: [(b("a"), Generation(4))].into(),
            apply_seq: Some(IntentSeq(12)),
            error: Some("x".into()),
            told_window: Some(crate::domain::Occurrence {
                start: crate::domain::Timestamp(1),
                end: crate::domain::Timestamp(2),
            }),
            asked_at: [(b("a"), crate::domain::Timestamp(5))].into(),
            deferred_until: [(b("a"), crate::domain::Timestamp(9))].into(),
            overdue: true,
            behind: Some(crate::domain::OperationId(3)),
            applied_env: [(
                b("a"),
                [(EnvName::new("MODE").unwrap(), "x".to_owned())].into(),
            )]
            .into(),
            partial_in_flight: true,
            partially_applied: true,
            phase: Some("locks_acquired".into()),
            interruptions: 2,
            interrupted: Some("the agent stopped".into()),
        };
        assert_eq!(
            progress_from_json("k", &progress_to_json(&progress)).unwrap(),
            progress
        );
        assert_eq!(
            progress_from_json("k", "{}").unwrap(),
            OpProgress::default()
        );
    }

    #[test]
    fn window_rules_round_trip() {
        for rule in [
            WindowRule::Weekly {
                days: [2, 7].into(),
                start: jiff::civil::Time::new(2, 30, 0, 0).unwrap(),
                duration: jiff::SignedDuration::from_mins(90),
                tz: "Europe/Amsterdam".into(),
            },
            WindowRule::OneOff {
                start: crate::domain::Timestamp(1),
                end: crate::domain::Timestamp(2),
            },
            WindowRule::Recurrence {
                rule: "DTSTART:20260104T020000Z\nRRULE:FREQ=DAILY".into(),
                duration: jiff::SignedDuration::from_mins(30),
            },
        ] {
            assert_eq!(rule_from_json("k", &rule_to_json(&rule)).unwrap(), rule);
        }
        assert!(rule_from_json("k", "{}").is_err());
    }

    #[test]
    fn corrupt_json_is_reported_with_the_row() {
        let row = BlockVersionRow {
            block: "ctl".into(),
            version: "1.0.0".into(),
            image_digest: format!("sha256:{}", "b".repeat(64)),
            columns: BlockVersionColumns {
                config: "{".into(),
                env: "{}".into(),
                depends_on: "[]".into(),
                strategy: r#"{"kind":"download_then_kill"}"#.into(),
            },
        };
        let err = block_version_from_row(row).unwrap_err().to_string();
        assert!(err.contains("ctl@1.0.0") && err.contains("config"), "{err}");
    }
}

// ---- rollout strategies

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum AmountJson {
    Count(u32),
    Percent(u8),
}

impl From<crate::domain::Amount> for AmountJson {
    fn from(a: crate::domain::Amount) -> Self {
        match a {
            crate::domain::Amount::Count(n) => AmountJson::Count(n),
            crate::domain::Amount::Percent(p) => AmountJson::Percent(p),
        }
    }
}

impl From<AmountJson> for crate::domain::Amount {
    fn from(a: AmountJson) -> Self {
        match a {
            AmountJson::Count(n) => crate::domain::Amount::Count(n),
            AmountJson::Percent(p) => crate::domain::Amount::Percent(p),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct RolloutStrategyJson {
    canary: u32,
    batches: Vec<AmountJson>,
    max_in_flight: u32,
    soak_seconds: u64,
    success_threshold: u8,
    error_threshold: AmountJson,
    on_error: String,
}

pub(crate) fn strategy_to_json(s: &crate::domain::Strategy) -> String {
    serde_json::to_string(&RolloutStrategyJson {
        canary: s.canary,
        batches: s.batches.iter().map(|a| (*a).into()).collect(),
        max_in_flight: s.max_in_flight,
        soak_seconds: s.soak_seconds,
        success_threshold: s.success_threshold,
        error_threshold: s.error_threshold.into(),
        on_error: s.on_error.as_str().to_owned(),
    })
    .expect("a strategy serializes")
}

pub(crate) fn strategy_from_json(
    key: &str,
    json: &str,
) -> Result<crate::domain::Strategy, StoreError> {
    let s: RolloutStrategyJson = serde_json::from_str(json)
        .map_err(|e| corrupt("rollout", key, format!("strategy: {e}")))?;
    Ok(crate::domain::Strategy {
        canary: s.canary,
        batches: s.batches.into_iter().map(Into::into).collect(),
        max_in_flight: s.max_in_flight,
        soak_seconds: s.soak_seconds,
        success_threshold: s.success_threshold,
        error_threshold: s.error_threshold.into(),
        on_error: crate::domain::OnError::parse(&s.on_error)
            .ok_or_else(|| corrupt("rollout", key, format!("unknown on_error {:?}", s.on_error)))?,
    })
}
