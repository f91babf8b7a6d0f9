//! `lockstep release create|get|list|diff`: releases (sets of
//! block@version for a fleet) and what moving between two would disturb.

use super::Ctx;
use super::error::{Call as _, CliError};
use super::parse::{self, BlockAt, KeyValue};
use super::view::{DiffView, ReleaseList, ReleaseView, emit};
use crate::edge::grpc::pb;

#[derive(Debug, clap::Subcommand)]
pub enum ReleaseCommand {
    /// Creates a release from block@version references.
    Create {
        /// The release's id (e.g. 2026.11.24-1).
        id: String,
        /// The fleet it is for.
        #[arg(long)]
        fleet: String,
        /// Each block pinned at a version.
        #[arg(required = true, value_name = "BLOCK@VERSION", value_parser = parse::block_at)]
        blocks: Vec<BlockAt>,
        /// A release-wide env variable (lowest precedence; repeatable).
        #[arg(long = "env", value_name = "K=V", value_parser = parse::key_value)]
        env: Vec<KeyValue>,
    },
    /// Shows a release with its block versions.
    Get {
        /// The release's id.
        id: String,
    },
    /// Lists releases (every page), optionally of one fleet.
    List {
        #[arg(long)]
        fleet: Option<String>,
    },
    /// Per block, what moving from one release to another changes and
    /// disturbs (including dependency restarts).
    Diff {
        /// The release devices run now.
        from: String,
        /// The release they would move to.
        to: String,
    },
}

pub(super) async fn run(ctx: &Ctx, cmd: ReleaseCommand) -> Result<(), CliError> {
    let api = ctx.connect().await?;
    let mut catalog = api.catalog();
    match cmd {
        ReleaseCommand::Create {
            id,
            fleet,
            blocks,
            env,
        } => {
            const CALL: &str = "CreateRelease";
            let release = catalog
                .create_release(
                    api.req(pb::CreateReleaseRequest {
                        id,
                        fleet,
                        blocks: blocks
                            .into_iter()
                            .map(|b| pb::BlockRef {
                                block: b.block,
                                version: b.version,
                            })
                            .collect(),
                        env: env.into_iter().map(|kv| (kv.key, kv.value)).collect(),
                    }),
                )
                .await
                .during(CALL)?
                .release
                .ok_or(CliError::Malformed {
                    call: CALL,
                    field: "release",
                })?;
            emit(ctx.output, &ReleaseView::from(release))
        }
        ReleaseCommand::Get { id } => {
            const CALL: &str = "GetRelease";
            let release = catalog
                .get_release(api.req(pb::GetReleaseRequest { id }))
                .await
                .during(CALL)?
                .release
                .ok_or(CliError::Malformed {
                    call: CALL,
                    field: "release",
                })?;
            emit(ctx.output, &ReleaseView::from(release))
        }
        ReleaseCommand::List { fleet } => {
            const CALL: &str = "ListReleases";
            let mut releases = Vec::new();
            let mut token = String::new();
            loop {
                let page = catalog
                    .list_releases(api.req(pb::ListReleasesRequest {
                        fleet: fleet.clone().unwrap_or_default(),
                        page_size: 1000,
                        page_token: token.clone(),
                    }))
                    .await
                    .during(CALL)?;
                releases.extend(page.releases.into_iter().map(Into::into));
                if page.next_page_token.is_empty() {
                    break;
                }
                if page.next_page_token == token {
                    return Err(CliError::Malformed {
                        call: CALL,
                        field: "new next_page_token (it repeated the last one)",
                    });
                }
                token = page.next_page_token;
            }
            emit(ctx.output, &ReleaseList { releases })
        }
        ReleaseCommand::Diff { from, to } => {
            let blocks = catalog
                .diff_releases(api.req(pb::DiffReleasesRequest {
                    from: from.clone(),
                    to: to.clone(),
                }))
                .await
                .during("DiffReleases")?
                .blocks;
            emit(
                ctx.output,
                &DiffView {
                    from,
                    to,
                    blocks: blocks.into_iter().map(Into::into).collect(),
                },
            )
        }
    }
}
