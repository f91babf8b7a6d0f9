//! `lockstep policy get|set <fleet>`: a fleet's scheduling policy — which
//! operation kinds wait for a window or a customer's approval, how long lock
//! holders may defer, partial releases, missed occurrences. `set` changes
//! only the settings given, keeping the rest as the server has them.

use super::Ctx;
use super::error::{Call as _, CliError};
use super::parse;
use super::view::{PolicyView, emit};
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

    /// `current` with these changes.
    pub fn apply(self, current: PolicyView) -> Result<PolicyView, CliError> {
        let kinds = |flag: &str, new: Option<Vec<String>>, old: Vec<String>| match new {
            Some(k) => parse::policy_kinds(flag, k).map_err(CliError::usage),
            None => Ok(old),
        };
        Ok(PolicyView {
            needs_window: kinds("--needs-window", self.needs_window, current.needs_window)?,
            needs_approval: kinds(
                "--needs-approval",
                self.needs_approval,
                current.needs_approval,
            )?,
            max_deferral_seconds: self.max_deferral.unwrap_or(current.max_deferral_seconds),
            on_deferral_expiry: self
                .on_deferral_expiry
                .unwrap_or(current.on_deferral_expiry),
            release_mode: self.release_mode.unwrap_or(current.release_mode),
            on_missed_occurrence: self
                .on_missed_occurrence
                .unwrap_or(current.on_missed_occurrence),
            fleet: current.fleet,
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
            let current = windows
                .get_fleet_policy(api.req(pb::GetFleetPolicyRequest { fleet }))
                .await
                .during(GET)?
                .policy
                .ok_or_else(|| malformed(GET))?;
            let next = changes.apply(current.into())?;
            let policy = windows
                .set_fleet_policy(api.req(pb::SetFleetPolicyRequest {
                    policy: Some(next.into()),
                }))
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

    fn defaults() -> PolicyView {
        PolicyView {
            fleet: "f".into(),
            needs_window: vec!["os_update".into(), "reboot".into(), "shutdown".into()],
            needs_approval: vec!["os_update".into()],
            max_deferral_seconds: 86_400,
            on_deferral_expiry: "notify".into(),
            release_mode: "atomic".into(),
            on_missed_occurrence: "ask".into(),
        }
    }

    #[test]
    fn only_the_given_settings_change() {
        let changed = PolicyChanges {
            needs_approval: Some(vec!["none".into()]),
            release_mode: Some("partial".into()),
            ..Default::default()
        }
        .apply(defaults())
        .unwrap();
        assert_eq!(
            changed,
            PolicyView {
                needs_approval: vec![],
                release_mode: "partial".into(),
                ..defaults()
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
        .apply(defaults())
        .unwrap();
        assert_eq!(
            all,
            PolicyView {
                fleet: "f".into(),
                needs_window: vec!["apply_env".into(), "reboot".into()],
                needs_approval: vec!["reboot".into()],
                max_deferral_seconds: 3600,
                on_deferral_expiry: "force".into(),
                release_mode: "atomic".into(),
                on_missed_occurrence: "next".into(),
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
