//! `lockstep fleet create|list`: the fleets that devices and releases
//! belong to.

use super::Ctx;
use super::error::{Call as _, CliError};
use super::view::{FleetList, FleetView, emit};
use crate::edge::grpc::pb;

#[derive(Debug, clap::Subcommand)]
pub enum FleetCommand {
    /// Creates a fleet.
    Create {
        /// The fleet's id (e.g. inverters).
        id: String,
        /// A display name.
        #[arg(long, default_value = "", hide_default_value = true)]
        name: String,
    },
    /// Lists every fleet.
    List,
}

pub(super) async fn run(ctx: &Ctx, cmd: FleetCommand) -> Result<(), CliError> {
    let api = ctx.connect().await?;
    let mut devices = api.devices();
    match cmd {
        FleetCommand::Create { id, name } => {
            const CALL: &str = "CreateFleet";
            let fleet = devices
                .create_fleet(api.req(pb::CreateFleetRequest { id, name }))
                .await
                .during(CALL)?
                .fleet
                .ok_or(CliError::Malformed {
                    call: CALL,
                    field: "fleet",
                })?;
            emit(ctx.output, &FleetView::from(fleet))
        }
        FleetCommand::List => {
            let fleets = devices
                .list_fleets(api.req(pb::ListFleetsRequest {}))
                .await
                .during("ListFleets")?
                .fleets;
            emit(
                ctx.output,
                &FleetList {
                    fleets: fleets.into_iter().map(Into::into).collect(),
                },
            )
        }
    }
}
