//! `lockstep block create|versions|add-version`: blocks and their versions,
//! built from flags or from a `BlockVersion` JSON file (the README's shape).

use std::path::PathBuf;

use super::Ctx;
use super::error::{Call as _, CliError};
use super::parse::{self, KeyValue};
use super::view::{BlockVersionJson, BlockVersionList, Done, emit};
use crate::edge::grpc::pb;

#[derive(Debug, clap::Subcommand)]
pub enum BlockCommand {
    /// Registers a block name.
    Create {
        /// The block's name (e.g. telemetry).
        name: String,
        #[arg(long, default_value = "", hide_default_value = true)]
        description: String,
    },
    /// Lists a block's versions, in semver order.
    Versions {
        /// The block's name.
        name: String,
    },
    /// Adds a version of a block.
    AddVersion(AddVersionArgs),
}

#[derive(Debug, clap::Args)]
pub struct AddVersionArgs {
    /// The block (may come from --from-json instead).
    #[arg(required_unless_present = "from_json")]
    pub name: Option<String>,
    /// A semantic version (may come from --from-json instead).
    #[arg(required_unless_present = "from_json")]
    pub version: Option<String>,
    /// The image digest, sha256:<64 hex digits>.
    #[arg(
        long,
        value_name = "sha256:DIGEST",
        required_unless_present = "from_json"
    )]
    pub image: Option<String>,
    /// One argument of the command (repeat for each).
    #[arg(long = "command", value_name = "ARG", allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// One argument of the entrypoint (repeat for each).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub entrypoint: Vec<String>,
    /// An env variable of this version (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse::key_value)]
    pub env: Vec<KeyValue>,
    /// A block this one depends on; `:restart` restarts this one when it
    /// restarts or stops (repeatable).
    #[arg(long, value_name = "BLOCK[:restart]", value_parser = parse::dependency)]
    pub depends_on: Vec<pb::Dependency>,
    /// Hand over: the old instance waits up to SECS (1..3600) for the new one.
    #[arg(
        long,
        value_name = "SECS",
        value_parser = clap::value_parser!(u32).range(1..=3600),
        conflicts_with = "kill_then_download"
    )]
    pub hand_over: Option<u32>,
    /// Stop the old instance before downloading the new image (the default
    /// is download, then kill).
    #[arg(long)]
    pub kill_then_download: bool,
    /// A JSON file holding the BlockVersion (snake_case, as in the README);
    /// NAME and VERSION, if given, must match it or fill it in.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = [
            "image", "command", "entrypoint", "env", "depends_on", "hand_over", "kill_then_download",
        ]
    )]
    pub from_json: Option<PathBuf>,
}

pub(super) async fn run(ctx: &Ctx, cmd: BlockCommand) -> Result<(), CliError> {
    match cmd {
        BlockCommand::Create { name, description } => {
            let api = ctx.connect().await?;
            api.catalog()
                .create_block(api.req(pb::CreateBlockRequest {
                    name: name.clone(),
                    description: description.clone(),
                }))
                .await
                .during("CreateBlock")?;
            emit(
                ctx.output,
                &Done {
                    message: format!("created block {name}"),
                    data: serde_json::json!({ "name": name, "description": description }),
                },
            )
        }
        BlockCommand::Versions { name } => {
            let api = ctx.connect().await?;
            let versions = api
                .catalog()
                .list_block_versions(api.req(pb::ListBlockVersionsRequest { block: name }))
                .await
                .during("ListBlockVersions")?
                .block_versions;
            emit(
                ctx.output,
                &BlockVersionList {
                    block_versions: versions.into_iter().map(Into::into).collect(),
                },
            )
        }
        BlockCommand::AddVersion(args) => {
            // Everything local is checked before dialling the server.
            let bv = match &args.from_json {
                Some(path) => from_json_file(path, args.name, args.version)?,
                None => from_flags(args),
            };
            let api = ctx.connect().await?;
            const CALL: &str = "CreateBlockVersion";
            let created = api
                .catalog()
                .create_block_version(api.req(pb::CreateBlockVersionRequest {
                    block_version: Some(bv),
                }))
                .await
                .during(CALL)?
                .block_version
                .ok_or(CliError::Malformed {
                    call: CALL,
                    field: "block_version",
                })?;
            emit(ctx.output, &BlockVersionJson::from(created))
        }
    }
}

/// The block version the flags describe.
pub(crate) fn from_flags(a: AddVersionArgs) -> pb::BlockVersion {
    use pb::update_strategy::{HandOver, KillThenDownload, Strategy};
    let strategy = match (a.hand_over, a.kill_then_download) {
        (Some(secs), _) => Some(Strategy::HandOver(HandOver {
            timeout_seconds: secs,
        })),
        (None, true) => Some(Strategy::KillThenDownload(KillThenDownload {})),
        (None, false) => None,
    };
    let config = (!a.command.is_empty() || !a.entrypoint.is_empty()).then(|| pb::BlockConfig {
        entrypoint: a.entrypoint,
        command: a.command,
        ..Default::default()
    });
    pb::BlockVersion {
        block: a.name.unwrap_or_default(),
        version: a.version.unwrap_or_default(),
        image_digest: a.image.unwrap_or_default(),
        config,
        env: a.env.into_iter().map(|kv| (kv.key, kv.value)).collect(),
        depends_on: a.depends_on,
        update_strategy: strategy.map(|s| pb::UpdateStrategy { strategy: Some(s) }),
    }
}

fn from_json_file(
    path: &std::path::Path,
    name: Option<String>,
    version: Option<String>,
) -> Result<pb::BlockVersion, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::ReadInput {
        path: path.to_owned(),
        source,
    })?;
    let bad = |message: String| CliError::BadInput {
        path: path.to_owned(),
        message,
    };
    let json = BlockVersionJson::parse(&text).map_err(bad)?;
    let json = merge_positional(json, name, version).map_err(bad)?;
    json.into_pb().map_err(bad)
}

/// Fills the file's block and version from NAME and VERSION, refusing a
/// mismatch.
pub(crate) fn merge_positional(
    mut json: BlockVersionJson,
    name: Option<String>,
    version: Option<String>,
) -> Result<BlockVersionJson, String> {
    for (field, slot, given) in [
        ("block", &mut json.block, name),
        ("version", &mut json.version, version),
    ] {
        match given {
            Some(g) if slot.is_empty() => *slot = g,
            Some(g) if *slot != g => {
                return Err(format!(
                    "{field} is {slot:?} in the file but {g:?} on the command line"
                ));
            }
            _ => {}
        }
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> AddVersionArgs {
        AddVersionArgs {
            name: Some("ui".into()),
            version: Some("2.0.0".into()),
            image: Some("sha256:d".into()),
            command: vec![],
            entrypoint: vec![],
            env: vec![],
            depends_on: vec![],
            hand_over: None,
            kill_then_download: false,
            from_json: None,
        }
    }

    #[test]
    fn flags_make_a_block_version() {
        use pb::update_strategy::{HandOver, KillThenDownload, Strategy};
        let plain = from_flags(args());
        assert_eq!(
            (
                plain.block.as_str(),
                plain.version.as_str(),
                plain.image_digest.as_str()
            ),
            ("ui", "2.0.0", "sha256:d")
        );
        assert!(plain.config.is_none() && plain.update_strategy.is_none());

        let full = from_flags(AddVersionArgs {
            command: vec!["/bin/ui".into(), "--verbose".into()],
            entrypoint: vec!["/init".into()],
            env: vec![KeyValue {
                key: "MODE".into(),
                value: "full".into(),
            }],
            depends_on: vec![pb::Dependency {
                block: "telemetry".into(),
                restart: true,
            }],
            hand_over: Some(30),
            ..args()
        });
        let config = full.config.unwrap();
        assert_eq!(config.command, ["/bin/ui", "--verbose"]);
        assert_eq!(config.entrypoint, ["/init"]);
        assert_eq!(full.env.get("MODE").map(String::as_str), Some("full"));
        assert_eq!(full.depends_on.len(), 1);
        assert_eq!(
            full.update_strategy.unwrap().strategy,
            Some(Strategy::HandOver(HandOver {
                timeout_seconds: 30
            }))
        );

        let ktd = from_flags(AddVersionArgs {
            kill_then_download: true,
            ..args()
        });
        assert_eq!(
            ktd.update_strategy.unwrap().strategy,
            Some(Strategy::KillThenDownload(KillThenDownload {}))
        );
    }

    #[test]
    fn positional_name_and_version_fill_or_must_match_the_file() {
        let file = |b: &str, v: &str| BlockVersionJson {
            block: b.into(),
            version: v.into(),
            ..Default::default()
        };
        let s = |x: &str| Some(x.to_owned());
        let cases = [
            (file("ui", "2.0.0"), None, None, Ok(("ui", "2.0.0"))),
            (file("", ""), s("ui"), s("2.0.0"), Ok(("ui", "2.0.0"))),
            (
                file("ui", "2.0.0"),
                s("ui"),
                s("2.0.0"),
                Ok(("ui", "2.0.0")),
            ),
            (file("ui", ""), None, s("2.0.0"), Ok(("ui", "2.0.0"))),
            (file("ui", "2.0.0"), s("telemetry"), None, Err("block")),
            (file("ui", "2.0.0"), s("ui"), s("2.0.1"), Err("version")),
        ];
        for (json, name, version, want) in cases {
            let got = merge_positional(json, name, version);
            match (got, want) {
                (Ok(j), Ok((b, v))) => assert_eq!((j.block.as_str(), j.version.as_str()), (b, v)),
                (Err(e), Err(field)) => assert!(e.starts_with(field), "{e}"),
                (got, want) => panic!("got {got:?}, want {want:?}"),
            }
        }
    }
}
