//! `lockstep env set|unset|list`: operator env variables of a fleet or a
//! device, each for every block or scoped to named blocks.

use super::Ctx;
use super::error::{Call as _, CliError};
use super::parse::{self, KeyValue};
use super::view::{Done, EnvList, EnvVarView, OwnerView, emit};
use crate::edge::grpc::pb;

/// Whose variables: exactly one of --fleet and --device.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct OwnerArgs {
    /// A fleet's variables.
    #[arg(long)]
    pub fleet: Option<String>,
    /// A device's variables.
    #[arg(long)]
    pub device: Option<String>,
}

impl OwnerArgs {
    fn view(&self) -> OwnerView {
        match (&self.fleet, &self.device) {
            (Some(f), _) => OwnerView::Fleet(f.clone()),
            (None, Some(d)) => OwnerView::Device(d.clone()),
            // clap requires one; an empty fleet is refused by the server.
            (None, None) => OwnerView::Fleet(String::new()),
        }
    }
}

fn owner_pb(o: &OwnerView) -> pb::EnvOwner {
    use pb::env_owner::Owner;
    pb::EnvOwner {
        owner: Some(match o {
            OwnerView::Fleet(f) => Owner::Fleet(f.clone()),
            OwnerView::Device(d) => Owner::Device(d.clone()),
        }),
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum EnvCommand {
    /// Sets variables, for every block or only for the --block ones.
    Set {
        #[command(flatten)]
        owner: OwnerArgs,
        #[arg(required = true, value_name = "NAME=VALUE", value_parser = parse::key_value)]
        vars: Vec<KeyValue>,
        /// Scope the variables to this block (repeatable).
        #[arg(long = "block", value_name = "BLOCK")]
        blocks: Vec<String>,
    },
    /// Removes variables: the every-block entry, or the --block scoped ones.
    Unset {
        #[command(flatten)]
        owner: OwnerArgs,
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// Remove the entry scoped to this block (repeatable).
        #[arg(long = "block", value_name = "BLOCK")]
        blocks: Vec<String>,
    },
    /// Lists the stored variables.
    List {
        #[command(flatten)]
        owner: OwnerArgs,
    },
}

/// The operations that carry an env change to the devices, for people.
fn operations_text(ops: &[u64]) -> String {
    match ops {
        [] => String::new(),
        [one] => format!("; operation {one} applies it"),
        many if many.len() <= 10 => format!(
            "; operations {} apply it",
            many.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        many => format!("; {} operations apply it", many.len()),
    }
}

pub(super) async fn run(ctx: &Ctx, cmd: EnvCommand) -> Result<(), CliError> {
    let api = ctx.connect().await?;
    let mut devices = api.devices();
    match cmd {
        EnvCommand::Set {
            owner,
            vars,
            blocks,
        } => {
            let owner = owner.view();
            let names: Vec<String> = vars.iter().map(|v| v.key.clone()).collect();
            let operations = devices
                .set_env(
                    api.req(pb::SetEnvRequest {
                        owner: Some(owner_pb(&owner)),
                        vars: vars
                            .into_iter()
                            .map(|kv| pb::EnvVar {
                                name: kv.key,
                                value: kv.value,
                                blocks: blocks.clone(),
                            })
                            .collect(),
                    }),
                )
                .await
                .during("SetEnv")?
                .operations;
            emit(
                ctx.output,
                &Done {
                    message: format!(
                        "set {} for {owner}{}{}",
                        names.join(", "),
                        scope_text(&blocks),
                        operations_text(&operations)
                    ),
                    data: serde_json::json!({
                        "owner": owner, "set": names, "blocks": blocks, "operations": operations
                    }),
                },
            )
        }
        EnvCommand::Unset {
            owner,
            names,
            blocks,
        } => {
            let owner = owner.view();
            let answer = devices
                .unset_env(
                    api.req(pb::UnsetEnvRequest {
                        owner: Some(owner_pb(&owner)),
                        keys: names
                            .iter()
                            .map(|n| pb::EnvVarKey {
                                name: n.clone(),
                                blocks: blocks.clone(),
                            })
                            .collect(),
                    }),
                )
                .await
                .during("UnsetEnv")?;
            let (removed, operations) = (answer.removed, answer.operations);
            emit(
                ctx.output,
                &Done {
                    message: format!(
                        "removed {removed} entr{} of {owner}{}",
                        if removed == 1 { "y" } else { "ies" },
                        operations_text(&operations)
                    ),
                    data: serde_json::json!({
                        "owner": owner, "removed": removed, "operations": operations
                    }),
                },
            )
        }
        EnvCommand::List { owner } => {
            let owner = owner.view();
            let vars = devices
                .list_env(api.req(pb::ListEnvRequest {
                    owner: Some(owner_pb(&owner)),
                }))
                .await
                .during("ListEnv")?
                .vars;
            emit(
                ctx.output,
                &EnvList {
                    owner,
                    vars: vars
                        .into_iter()
                        .map(|v| EnvVarView {
                            name: v.name,
                            value: v.value,
                            blocks: v.blocks,
                        })
                        .collect(),
                },
            )
        }
    }
}

fn scope_text(blocks: &[String]) -> String {
    if blocks.is_empty() {
        " (every block)".into()
    } else {
        format!(" (blocks {})", blocks.join(", "))
    }
}
