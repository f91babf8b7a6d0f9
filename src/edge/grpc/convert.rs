//! Conversions between protobuf messages and domain types. Every inbound
//! conversion is a `TryFrom` that rejects bad input here, at the edge, with an
//! error naming the offending field (`blocks[2].image_digest`), which handlers
//! turn into `INVALID_ARGUMENT`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::pb;
use crate::domain::{
    BlockConfig, BlockDelta, BlockName, BlockVersion, Dependency, Disturbance, Env, EnvName,
    EnvScope, EnvVar, FleetId, ImageDigest, Reason, Release, ReleaseId, RestartCause,
    UpdateStrategy, shown,
};
use crate::edge::limits::{
    MAX_ARG_BYTES, MAX_COMMAND_ARGS, MAX_DEPENDENCIES, MAX_ENV_VALUE_BYTES, MAX_ENV_VARS,
    MAX_LABELS, MAX_RELEASE_BLOCKS, MAX_SCOPE_BLOCKS, MAX_VERSION_BYTES,
};

/// A message that could not become a domain value, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConvertError {
    pub field: String,
    pub message: String,
}

impl ConvertError {
    pub fn new(field: impl Into<String>, message: impl ToString) -> Self {
        Self {
            field: field.into(),
            message: message.to_string(),
        }
    }
    /// Prefixes the field path, for errors from nested messages.
    pub fn within(mut self, parent: impl std::fmt::Display) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

impl From<ConvertError> for tonic::Status {
    fn from(e: ConvertError) -> Self {
        super::status::capped(tonic::Status::invalid_argument(e.to_string()))
    }
}

pub(crate) fn block_name(field: &str, s: &str) -> Result<BlockName, ConvertError> {
    BlockName::new(s).map_err(|e| ConvertError::new(field, e))
}

/// Refuses free text longer than `max` bytes, or holding a NUL character
/// (no process argument or env value can carry one, and Postgres text
/// refuses it), naming the field.
pub fn at_most(field: impl Into<String>, value: &str, max: usize) -> Result<(), ConvertError> {
    let field = field.into();
    if value.len() > max {
        return Err(ConvertError::new(
            field,
            format!("{} bytes; at most {max}", value.len()),
        ));
    }
    if value.contains('\0') {
        return Err(ConvertError::new(field, "contains a NUL character"));
    }
    Ok(())
}

/// Refuses a list longer than `max` entries, naming the field.
pub fn count_at_most(field: impl Into<String>, len: usize, max: usize) -> Result<(), ConvertError> {
    if len > max {
        return Err(ConvertError::new(
            field,
            format!("{len} entries; at most {max}"),
        ));
    }
    Ok(())
}

/// A wire env map as a domain env, naming `field` on a bad variable name or
/// a map or value over its limit.
pub fn env_from_pb(field: &str, map: BTreeMap<String, String>) -> Result<Env, ConvertError> {
    count_at_most(field, map.len(), MAX_ENV_VARS)?;
    map.into_iter()
        .map(|(k, v)| {
            let name = EnvName::new(k).map_err(|e| ConvertError::new(field, e))?;
            at_most(field, &v, MAX_ENV_VALUE_BYTES).map_err(|e| {
                ConvertError::new(field, format!("the value of {name}: {}", e.message))
            })?;
            Ok((name, v))
        })
        .collect()
}

fn env_to_pb(env: &Env) -> BTreeMap<String, String> {
    env.iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
        .collect()
}

// ----------------------------------------------------------------- Reason

impl From<Reason> for pb::Reason {
    fn from(r: Reason) -> Self {
        match r {
            Reason::UpdateRestart => pb::Reason::UpdateRestart,
            Reason::UpdateNoRestart => pb::Reason::UpdateNoRestart,
            Reason::EnvChange => pb::Reason::EnvChange,
            Reason::Restart => pb::Reason::Restart,
            Reason::Stop => pb::Reason::Stop,
            Reason::DependencyRestart => pb::Reason::DependencyRestart,
            Reason::Reboot => pb::Reason::Reboot,
            Reason::Shutdown => pb::Reason::Shutdown,
            Reason::OsUpdate => pb::Reason::OsUpdate,
        }
    }
}

/// Converts a wire enum value; `field` names where it came from.
pub fn reason_from_i32(field: &str, v: i32) -> Result<Reason, ConvertError> {
    match pb::Reason::try_from(v) {
        Ok(pb::Reason::UpdateRestart) => Ok(Reason::UpdateRestart),
        Ok(pb::Reason::UpdateNoRestart) => Ok(Reason::UpdateNoRestart),
        Ok(pb::Reason::EnvChange) => Ok(Reason::EnvChange),
        Ok(pb::Reason::Restart) => Ok(Reason::Restart),
        Ok(pb::Reason::Stop) => Ok(Reason::Stop),
        Ok(pb::Reason::DependencyRestart) => Ok(Reason::DependencyRestart),
        Ok(pb::Reason::Reboot) => Ok(Reason::Reboot),
        Ok(pb::Reason::Shutdown) => Ok(Reason::Shutdown),
        Ok(pb::Reason::OsUpdate) => Ok(Reason::OsUpdate),
        Ok(pb::Reason::Unspecified) => Err(ConvertError::new(field, "reason is unspecified")),
        Err(_) => Err(ConvertError::new(field, format!("unknown reason {v}"))),
    }
}

impl From<RestartCause> for pb::RestartCause {
    fn from(c: RestartCause) -> Self {
        match c {
            RestartCause::Image => pb::RestartCause::Image,
            RestartCause::Config => pb::RestartCause::Config,
            RestartCause::Env => pb::RestartCause::Env,
        }
    }
}

// ------------------------------------------------------------- BlockVersion

impl TryFrom<pb::BlockConfig> for BlockConfig {
    type Error = ConvertError;
    fn try_from(c: pb::BlockConfig) -> Result<Self, Self::Error> {
        count_at_most(
            "command",
            c.entrypoint.len() + c.command.len(),
            MAX_COMMAND_ARGS,
        )?;
        for (i, a) in c.entrypoint.iter().enumerate() {
            at_most(format!("entrypoint[{i}]"), a, MAX_ARG_BYTES)?;
        }
        for (i, a) in c.command.iter().enumerate() {
            at_most(format!("command[{i}]"), a, MAX_ARG_BYTES)?;
        }
        if let Some(w) = &c.working_dir {
            at_most("working_dir", w, MAX_ARG_BYTES)?;
        }
        count_at_most("labels", c.labels.len(), MAX_LABELS)?;
        for (k, v) in &c.labels {
            at_most("labels", k, MAX_ARG_BYTES)?;
            at_most("labels", v, MAX_ARG_BYTES)?;
        }
        Ok(BlockConfig {
            entrypoint: c.entrypoint,
            command: c.command,
            working_dir: c.working_dir,
            labels: c.labels,
        })
    }
}

impl From<&BlockConfig> for pb::BlockConfig {
    fn from(c: &BlockConfig) -> Self {
        pb::BlockConfig {
            entrypoint: c.entrypoint.clone(),
            command: c.command.clone(),
            working_dir: c.working_dir.clone(),
            labels: c.labels.clone(),
        }
    }
}

impl TryFrom<pb::UpdateStrategy> for UpdateStrategy {
    type Error = ConvertError;
    fn try_from(s: pb::UpdateStrategy) -> Result<Self, Self::Error> {
        use pb::update_strategy::Strategy;
        match s.strategy {
            None | Some(Strategy::DownloadThenKill(_)) => Ok(UpdateStrategy::DownloadThenKill),
            Some(Strategy::KillThenDownload(_)) => Ok(UpdateStrategy::KillThenDownload),
            Some(Strategy::HandOver(h)) => {
                UpdateStrategy::hand_over(Duration::from_secs(u64::from(h.timeout_seconds)))
                    .map_err(|e| ConvertError::new("hand_over.timeout_seconds", e))
            }
        }
    }
}

impl From<&UpdateStrategy> for pb::UpdateStrategy {
    fn from(s: &UpdateStrategy) -> Self {
        use pb::update_strategy::{self as us, Strategy};
        let strategy = match s {
            UpdateStrategy::DownloadThenKill => Strategy::DownloadThenKill(us::DownloadThenKill {}),
            UpdateStrategy::KillThenDownload => Strategy::KillThenDownload(us::KillThenDownload {}),
            UpdateStrategy::HandOver { timeout } => Strategy::HandOver(us::HandOver {
                timeout_seconds: u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX),
            }),
        };
        pb::UpdateStrategy {
            strategy: Some(strategy),
        }
    }
}

impl TryFrom<pb::BlockVersion> for BlockVersion {
    type Error = ConvertError;
    fn try_from(m: pb::BlockVersion) -> Result<Self, Self::Error> {
        let name = block_name("block", &m.block)?;
        at_most("version", &m.version, MAX_VERSION_BYTES)?;
        let version = semver::Version::parse(&m.version).map_err(|e| {
            ConvertError::new(
                "version",
                format!("{} is not a semantic version: {e}", shown(&m.version)),
            )
        })?;
        let image_digest =
            ImageDigest::new(m.image_digest).map_err(|e| ConvertError::new("image_digest", e))?;
        let config = m
            .config
            .map(BlockConfig::try_from)
            .transpose()
            .map_err(|e| e.within("config"))?
            .unwrap_or_default();
        let env = env_from_pb("env", m.env)?;
        count_at_most("depends_on", m.depends_on.len(), MAX_DEPENDENCIES)?;
        let depends_on = m
            .depends_on
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                Ok(Dependency {
                    block: block_name(&format!("depends_on[{i}].block"), &d.block)?,
                    restart: d.restart,
                })
            })
            .collect::<Result<Vec<_>, ConvertError>>()?;
        let update_strategy = m
            .update_strategy
            .map(UpdateStrategy::try_from)
            .transpose()
            .map_err(|e| e.within("update_strategy"))?
            .unwrap_or_default();
        let bv = BlockVersion {
            name,
            version,
            image_digest,
            config,
            env,
            depends_on,
            update_strategy,
        };
        bv.validate()
            .map_err(|e| ConvertError::new("depends_on", e))?;
        Ok(bv)
    }
}

impl From<&BlockVersion> for pb::BlockVersion {
    fn from(b: &BlockVersion) -> Self {
        pb::BlockVersion {
            block: b.name.to_string(),
            version: b.version.to_string(),
            image_digest: b.image_digest.to_string(),
            config: Some((&b.config).into()),
            env: env_to_pb(&b.env),
            depends_on: b
                .depends_on
                .iter()
                .map(|d| pb::Dependency {
                    block: d.block.to_string(),
                    restart: d.restart,
                })
                .collect(),
            update_strategy: Some((&b.update_strategy).into()),
        }
    }
}

// ------------------------------------------------------------------ Release

impl TryFrom<pb::Release> for Release {
    type Error = ConvertError;
    fn try_from(m: pb::Release) -> Result<Self, Self::Error> {
        let id = ReleaseId::new(m.id).map_err(|e| ConvertError::new("id", e))?;
        let fleet = FleetId::new(m.fleet).map_err(|e| ConvertError::new("fleet", e))?;
        count_at_most("blocks", m.blocks.len(), MAX_RELEASE_BLOCKS)?;
        let blocks = m
            .blocks
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                BlockVersion::try_from(b)
                    .map(Arc::new)
                    .map_err(|e| e.within(format!("blocks[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let env = env_from_pb("env", m.env)?;
        Release::new(id, fleet, blocks, env).map_err(|e| ConvertError::new("blocks", e))
    }
}

impl From<&Release> for pb::Release {
    fn from(r: &Release) -> Self {
        pb::Release {
            id: r.id().to_string(),
            fleet: r.fleet().to_string(),
            blocks: r.blocks().values().map(|b| b.as_ref().into()).collect(),
            env: env_to_pb(r.env()),
        }
    }
}

// ------------------------------------------------------------------- EnvVar

impl TryFrom<pb::EnvVar> for EnvVar {
    type Error = ConvertError;
    fn try_from(m: pb::EnvVar) -> Result<Self, Self::Error> {
        let name = EnvName::new(m.name).map_err(|e| ConvertError::new("name", e))?;
        at_most("value", &m.value, MAX_ENV_VALUE_BYTES)?;
        count_at_most("blocks", m.blocks.len(), MAX_SCOPE_BLOCKS)?;
        let scope = if m.blocks.is_empty() {
            EnvScope::Device
        } else {
            let blocks = m
                .blocks
                .iter()
                .enumerate()
                .map(|(i, b)| block_name(&format!("blocks[{i}]"), b))
                .collect::<Result<BTreeSet<_>, _>>()?;
            EnvScope::Blocks(blocks)
        };
        Ok(EnvVar {
            name,
            value: m.value,
            scope,
        })
    }
}

impl From<&EnvVar> for pb::EnvVar {
    fn from(v: &EnvVar) -> Self {
        pb::EnvVar {
            name: v.name.to_string(),
            value: v.value.clone(),
            blocks: match &v.scope {
                EnvScope::Device => vec![],
                EnvScope::Blocks(b) => b.iter().map(ToString::to_string).collect(),
            },
        }
    }
}

// ------------------------------------------------------ impact and delta out

pub fn disturbance_to_pb(block: &BlockName, d: &Disturbance) -> pb::Disturbance {
    pb::Disturbance {
        block: block.to_string(),
        reason: pb::Reason::from(d.reason).into(),
        handover: d.handover,
        because_of: d
            .because_of
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        cause: d
            .cause
            .map(|c| pb::RestartCause::from(c).into())
            .unwrap_or_default(),
    }
}

pub fn delta_to_pb(block: &BlockName, d: &BlockDelta) -> pb::BlockDelta {
    use pb::block_delta::{self as bd, Change};
    let change = match d {
        BlockDelta::Unchanged => Change::Unchanged(bd::Unchanged {}),
        BlockDelta::Restart { cause } => Change::Restart(bd::Restart {
            cause: pb::RestartCause::from(*cause).into(),
        }),
        BlockDelta::Start => Change::Start(bd::Start {}),
        BlockDelta::Stop => Change::Stop(bd::Stop {}),
    };
    pb::BlockDelta {
        block: block.to_string(),
        change: Some(change),
    }
}

/// Converts back a wire delta (used by clients such as the CLI).
pub fn delta_from_pb(m: &pb::BlockDelta) -> Result<(BlockName, BlockDelta), ConvertError> {
    use pb::block_delta::Change;
    let block = block_name("block", &m.block)?;
    let cause = |c: i32| match pb::RestartCause::try_from(c) {
        Ok(pb::RestartCause::Image) => Ok(RestartCause::Image),
        Ok(pb::RestartCause::Config) => Ok(RestartCause::Config),
        Ok(pb::RestartCause::Env) => Ok(RestartCause::Env),
        _ => Err(ConvertError::new(
            "restart.cause",
            format!("unknown or unspecified cause {c}"),
        )),
    };
    let d = match &m.change {
        Some(Change::Unchanged(_)) => BlockDelta::Unchanged,
        Some(Change::Restart(r)) => BlockDelta::Restart {
            cause: cause(r.cause)?,
        },
        Some(Change::Start(_)) => BlockDelta::Start,
        Some(Change::Stop(_)) => BlockDelta::Stop,
        None => return Err(ConvertError::new("change", "missing")),
    };
    Ok((block, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn pb_block(name: &str) -> pb::BlockVersion {
        pb::BlockVersion {
            block: name.into(),
            version: "1.2.3".into(),
            image_digest: digest('a'),
            config: Some(pb::BlockConfig {
                entrypoint: vec!["/bin/sh".into()],
                command: vec!["-c".into(), "run".into()],
                working_dir: Some("/app".into()),
                labels: [("tier".to_owned(), "critical".to_owned())].into(),
            }),
            env: [("LOG".to_owned(), "debug".to_owned())].into(),
            depends_on: vec![],
            update_strategy: Some(
                (&UpdateStrategy::HandOver {
                    timeout: Duration::from_secs(30),
                })
                    .into(),
            ),
        }
    }

    #[test]
    fn block_version_round_trips() {
        let mut m = pb_block("controller");
        m.depends_on.push(pb::Dependency {
            block: "telemetry".into(),
            restart: true,
        });
        let d = BlockVersion::try_from(m.clone()).unwrap();
        assert_eq!(pb::BlockVersion::from(&d), m);
        assert!(d.update_strategy.allows_handover());
    }

    #[test]
    fn release_round_trips() {
        let m = pb::Release {
            id: "2026.11.24-1".into(),
            fleet: "inverters".into(),
            blocks: vec![pb_block("a"), pb_block("b")],
            env: [("SITE".to_owned(), "x".to_owned())].into(),
        };
        let r = Release::try_from(m.clone()).unwrap();
        assert_eq!(pb::Release::from(&r), m);
    }

    #[test]
    fn every_reason_round_trips() {
        for r in Reason::ALL {
            let wire: i32 = pb::Reason::from(r).into();
            assert_eq!(reason_from_i32("reason", wire), Ok(r));
        }
        assert_eq!(
            reason_from_i32("intent.reason", 0).unwrap_err().field,
            "intent.reason"
        );
        assert!(reason_from_i32("reason", 99).is_err());
    }

    #[test]
    fn env_var_round_trips_with_and_without_scope() {
        for blocks in [vec![], vec!["a".to_owned(), "b".to_owned()]] {
            let m = pb::EnvVar {
                name: "X".into(),
                value: "1".into(),
                blocks,
            };
            assert_eq!(pb::EnvVar::from(&EnvVar::try_from(m.clone()).unwrap()), m);
        }
    }

    #[test]
    fn deltas_round_trip() {
        let b = BlockName::new("a").unwrap();
        for d in [
            BlockDelta::Unchanged,
            BlockDelta::Start,
            BlockDelta::Stop,
            BlockDelta::Restart {
                cause: RestartCause::Image,
            },
            BlockDelta::Restart {
                cause: RestartCause::Config,
            },
            BlockDelta::Restart {
                cause: RestartCause::Env,
            },
        ] {
            assert_eq!(delta_from_pb(&delta_to_pb(&b, &d)), Ok((b.clone(), d)));
        }
    }

    /// Each row: a mutation of a valid release, and the field the error must name.
    #[test]
    fn invalid_messages_name_the_field() {
        type Mutate = fn(&mut pb::Release);
        let rows: Vec<(&str, Mutate, &str)> = vec![
            ("bad id", |r| r.id = String::new(), "id"),
            ("bad fleet", |r| r.fleet = "Fleet!".into(), "fleet"),
            (
                "bad block name",
                |r| r.blocks[1].block = "B B".into(),
                "blocks[1].block",
            ),
            (
                "bad version",
                |r| r.blocks[0].version = "v1".into(),
                "blocks[0].version",
            ),
            (
                "bad digest",
                |r| r.blocks[1].image_digest = "latest".into(),
                "blocks[1].image_digest",
            ),
            (
                "bad env name",
                |r| {
                    r.blocks[0]
                        .env
                        .insert("1X".into(), String::new())
                        .map_or((), drop)
                },
                "blocks[0].env",
            ),
            (
                "bad release env",
                |r| r.env.insert("A-B".into(), String::new()).map_or((), drop),
                "env",
            ),
            (
                "bad dependency name",
                |r| {
                    r.blocks[0].depends_on.push(pb::Dependency {
                        block: "".into(),
                        restart: true,
                    })
                },
                "blocks[0].depends_on[0].block",
            ),
            (
                "hand_over timeout 0",
                |r| {
                    r.blocks[0].update_strategy = Some(pb::UpdateStrategy {
                        strategy: Some(pb::update_strategy::Strategy::HandOver(
                            pb::update_strategy::HandOver { timeout_seconds: 0 },
                        )),
                    })
                },
                "blocks[0].update_strategy.hand_over.timeout_seconds",
            ),
            (
                "unknown dependency",
                |r| {
                    r.blocks[0].depends_on.push(pb::Dependency {
                        block: "ghost".into(),
                        restart: true,
                    })
                },
                "blocks",
            ),
            (
                "too many release env vars",
                |r| {
                    r.env = (0..=MAX_ENV_VARS)
                        .map(|i| (format!("V{i}"), String::new()))
                        .collect()
                },
                "env",
            ),
            (
                "env value too long",
                |r| {
                    r.blocks[1]
                        .env
                        .insert("BIG".into(), "x".repeat(MAX_ENV_VALUE_BYTES + 1))
                        .map_or((), drop)
                },
                "blocks[1].env",
            ),
            (
                "too many blocks",
                |r| {
                    r.blocks = (0..=MAX_RELEASE_BLOCKS)
                        .map(|i| pb_block(&format!("b{i}")))
                        .collect()
                },
                "blocks",
            ),
            (
                "version too long",
                |r| r.blocks[0].version = format!("1.0.0-{}", "a".repeat(MAX_VERSION_BYTES)),
                "blocks[0].version",
            ),
            (
                "too many dependencies",
                |r| {
                    r.blocks[0].depends_on = (0..=MAX_DEPENDENCIES)
                        .map(|_| pb::Dependency {
                            block: "b".into(),
                            restart: false,
                        })
                        .collect()
                },
                "blocks[0].depends_on",
            ),
            (
                "too many command arguments",
                |r| {
                    if let Some(c) = r.blocks[0].config.as_mut() {
                        c.command = vec!["x".into(); MAX_COMMAND_ARGS];
                    }
                },
                "blocks[0].config.command",
            ),
            (
                "argument too long",
                |r| {
                    if let Some(c) = r.blocks[1].config.as_mut() {
                        c.command[1] = "x".repeat(MAX_ARG_BYTES + 1);
                    }
                },
                "blocks[1].config.command[1]",
            ),
            (
                "too many labels",
                |r| {
                    if let Some(c) = r.blocks[0].config.as_mut() {
                        c.labels = (0..=MAX_LABELS)
                            .map(|i| (format!("l{i}"), String::new()))
                            .collect();
                    }
                },
                "blocks[0].config.labels",
            ),
            (
                "cycle",
                |r| {
                    r.blocks[0].depends_on.push(pb::Dependency {
                        block: "b".into(),
                        restart: true,
                    });
                    r.blocks[1].depends_on.push(pb::Dependency {
                        block: "a".into(),
                        restart: true,
                    });
                },
                "blocks",
            ),
        ];
        for (what, mutate, field) in rows {
            let mut m = pb::Release {
                id: "r1".into(),
                fleet: "f".into(),
                blocks: vec![pb_block("a"), pb_block("b")],
                env: BTreeMap::new(),
            };
            mutate(&mut m);
            let err = Release::try_from(m).expect_err(what);
            assert_eq!(err.field, field, "{what}: {err}");
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}");
            assert!(
                status.message().starts_with(field),
                "{what}: {}",
                status.message()
            );
        }
    }

    #[test]
    fn nul_characters_in_free_text_are_refused_naming_the_field() {
        let mut m = pb_block("a");
        m.env.insert("X".into(), "a\0b".into());
        assert_eq!(BlockVersion::try_from(m).unwrap_err().field, "env");
        let mut m = pb_block("a");
        if let Some(c) = m.config.as_mut() {
            c.command[0] = "\0".into();
        }
        assert_eq!(
            BlockVersion::try_from(m).unwrap_err().field,
            "config.command[0]"
        );
        let v = pb::EnvVar {
            name: "X".into(),
            value: "\0".into(),
            blocks: vec![],
        };
        assert_eq!(EnvVar::try_from(v).unwrap_err().field, "value");
        assert_eq!(at_most("actor", "a\0", 10).unwrap_err().field, "actor");
    }

    #[test]
    fn cycle_error_names_the_cycle() {
        let mut m = pb::Release {
            id: "r1".into(),
            fleet: "f".into(),
            blocks: vec![pb_block("a"), pb_block("b")],
            env: BTreeMap::new(),
        };
        m.blocks[0].depends_on.push(pb::Dependency {
            block: "b".into(),
            restart: true,
        });
        m.blocks[1].depends_on.push(pb::Dependency {
            block: "a".into(),
            restart: true,
        });
        let msg = Release::try_from(m).unwrap_err().to_string();
        assert!(msg.contains("a -> b -> a"), "{msg}");
    }
}
