//! `lockstep policy get|set <fleet>`: a fleet's scheduling policy — which
//! operation kinds wait for a window or a customer's approval, how long lock
//! holders may defer, partial releases, missed occurrences. `set` changes
//! only the settings given: it sends an update mask naming them, and the
//! server keeps the rest as it has them.

use super::Ctx;
use super::error::{Call as _, CliError};
use super::parse;
use super::view::{PolicyView, emit};
use crate::domain::PolicyField;
use crate::edge::grpc::pb;

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Shows a fleet's policy (the defaults until one is set).
    Get {
        /// The fleet's id.
        fleet: String,
    },
    /// Changes the given settings of a fleet's policy.
    Set {
        /// The fleet's id.
        fleet: String,
        #[command(flatten)]
        changes: PolicyChanges,
    },
}

/// At least one setting to change.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(required = true, multiple = true)]
pub struct PolicyChanges {
    /// Operation kinds that wait for a maintenance window: os_update, reboot,
    /// shutdown, assign_release, restart_block, stop_block, start_block,
    /// apply_env (comma-separated or repeated), or none.
    #[arg(long, value_name = "KINDS", value_delimiter = ',', value_parser = parse::policy_kind)]
    pub needs_window: Option<Vec<String>>,
    /// Operation kinds that need a customer to approve a window occurrence
    /// (same kinds), or none.
    #[arg(long, value_name = "KINDS", value_delimiter = ',', value_parser = parse::policy_kind)]
    pub needs_approval: Option<Vec<String>>,
    /// How long a lock holder may defer a release request, counted from
    /// when it was first asked (e.g. 30m, 12h, 1d).
    #[arg(long, value_name = "DURATION", value_parser = parse::deferral)]
    pub max_deferral: Option<u64>,
    /// Then: notify (the operation turns overdue) or force (the holder's
    /// lock is overridden).
    #[arg(long, value_name = "WHAT", value_parser = ["notify", "force"])]
    pub on_deferral_expiry: Option<String>,
    /// atomic (a release that impacts a locked block waits as a whole) or
    /// partial (unlocked blocks update now).
    #[arg(long, value_name = "MODE", value_parser = ["atomic", "partial"])]
    pub release_mode: Option<String>,
    /// When an approved occurrence passes unused: ask (a new approval
    /// request) or next (move to the next occurrence).
    #[arg(long, value_name = "WHAT", value_parser = ["ask", "next"])]
    pub on_missed_occurrence: Option<String>,
}

impl PolicyChanges {
    /// Refuses `none` mixed with kinds, before any call.
    fn check(&self) -> Result<(), CliError> {
        for (flag, kinds) in [
            ("--needs-window", &self.needs_window),
            ("--needs-approval", &self.needs_approval),
        ] {
            if let Some(k) = kinds {
                parse::policy_kinds(flag, k.clone()).map_err(CliError::usage)?;
            }
        }
        Ok(())
    }

    /// The `SetFleetPolicy` request that changes exactly these settings:
    /// their values, and an update mask naming them, so the server leaves
    /// every other setting as it has it (no read-modify-write here, which
    /// would undo a change made meanwhile).
    pub fn request(self, fleet: String) -> Result<pb::SetFleetPolicyRequest, CliError> {
        let mut policy = pb::FleetPolicy {
            fleet,
            ..Default::default()
        };
        let mut paths = Vec::new();
        let mut set = |field: PolicyField| paths.push(field.as_str().to_owned());
        if let Some(k) = self.needs_window {
            policy.needs_window =
                parse::policy_kinds("--needs-window", k).map_err(CliError::usage)?;
            set(PolicyField::NeedsWindow);
        }
        if let Some(k) = self.needs_approval {
            policy.needs_approval =
                parse::policy_kinds("--needs-approval", k).map_err(CliError::usage)?;
            set(PolicyField::NeedsApproval);
        }
        if let Some(secs) = self.max_deferral {
            policy.max_deferral_seconds = secs;
            set(PolicyField::MaxDeferral);
        }
        if let Some(e) = self.on_deferral_expiry {
            policy.on_deferral_expiry = e;
            set(PolicyField::OnDeferralExpiry);
        }
        if let Some(m) = self.release_mode {
            policy.release_mode = m;
            set(PolicyField::ReleaseMode);
        }
        if let Some(m) = self.on_missed_occurrence {
            policy.on_missed_occurrence = m;
            set(PolicyField::OnMissedOccurrence);
        }
        Ok(pb::SetFleetPolicyRequest {
            policy: Some(policy),
            update_mask: Some(prost_types::FieldMask { paths }),
        })
    }
}

pub(super) async fn run(ctx: &Ctx, cmd: PolicyCommand) -> Result<(), CliError> {
    if let PolicyCommand::Set { changes, .. } = &cmd {
        changes.check()?;
    }
    let api = ctx.connect().await?;
    let mut windows = api.windows();
    const GET: &str = "GetFleetPolicy";
    let malformed = |call| CliError::Malformed {
        call,
        field: "policy",
    };
    match cmd {
        PolicyCommand::Get { fleet } => {
            let policy = windows
                .get_fleet_policy(api.req(pb::GetFleetPolicyRequest { fleet }))
                .await
                .during(GET)?
                .policy
                .ok_or_else(|| malformed(GET))?;
            emit(ctx.output, &PolicyView::from(policy))
        }
        PolicyCommand::Set { fleet, changes } => {
            const SET: &str = "SetFleetPolicy";
            let policy = windows
                .set_fleet_policy(api.req(changes.request(fleet)?))
                .await
                .during(SET)?
                .policy
                .ok_or_else(|| malformed(SET))?;
            emit(ctx.output, &PolicyView::from(policy))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_given_settings_are_sent_and_named_in_the_mask() {
        let req = PolicyChanges {
            needs_approval: Some(vec!["none".into()]),
            release_mode: Some("partial".into()),
            ..Default::default()
        }
        .request("f".into())
        .unwrap();
        assert_eq!(
            req,
            pb::SetFleetPolicyRequest {
                policy: Some(pb::FleetPolicy {
                    fleet: "f".into(),
                    release_mode: "partial".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["needs_approval".into(), "release_mode".into()],
                }),
            }
        );
        let all = PolicyChanges {
            needs_window: Some(vec!["reboot".into(), "apply_env".into()]),
            needs_approval: Some(vec!["reboot".into()]),
            max_deferral: Some(3600),
            on_deferral_expiry: Some("force".into()),
            release_mode: Some("atomic".into()),
            on_missed_occurrence: Some("next".into()),
        }
        .request("f".into())
        .unwrap();
        assert_eq!(
            all,
            pb::SetFleetPolicyRequest {
                policy: Some(pb::FleetPolicy {
                    fleet: "f".into(),
                    needs_window: vec!["apply_env".into(), "reboot".into()],
                    needs_approval: vec!["reboot".into()],
                    max_deferral_seconds: 3600,
                    on_deferral_expiry: "force".into(),
                    release_mode: "atomic".into(),
                    on_missed_occurrence: "next".into(),
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: PolicyField::ALL.map(|f| f.as_str().to_owned()).to_vec(),
                }),
            }
        );
    }

    #[test]
    fn none_with_kinds_is_a_usage_error() {
        let changes = PolicyChanges {
            needs_window: Some(vec!["none".into(), "reboot".into()]),
            ..Default::default()
        };
        let e = changes.check().unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().starts_with("--needs-window"), "{e}");
    }
}
