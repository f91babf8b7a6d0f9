//! Row ⇄ domain conversion for the parts stored as JSON text (config, env,
//! dependencies, update strategy) and for fingerprints and versions. A value
//! that does not decode is reported as corrupt, naming the row.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::domain::{
    BlockConfig, BlockName, BlockVersion, Dependency, Env, EnvName, Fingerprint, ImageDigest,
    UpdateStrategy,
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
