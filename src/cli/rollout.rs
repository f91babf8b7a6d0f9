//! `lockstep rollout create|get|list|pause|resume|abort|watch`: phased
//! rollouts of a release or an OS version across a fleet — a canary batch,
//! then batches by count or percentage, with an in-flight limit, a soak, a
//! success threshold and an error threshold that pauses or aborts. `get`
//! shows each batch's progress, the member devices by status, and which
//! block's lock holds devices up and why; `watch` follows the server's
//! `WatchRollout` stream (see [`super::progress`]) and turns the outcome
//! into the exit code: 0 completed, 1 aborted or superseded. A paused
//! rollout — by an operator or by its error threshold — is still active, so
//! `watch` says so and keeps watching until it is resumed and ends, or is
//! aborted.

use clap::builder::NonEmptyStringValueParser;

use super::Ctx;
use super::error::{Call as _, CliError};
use super::parse;
use super::progress::Watch;
use super::view::{RolloutList, RolloutStatusView, RolloutView, emit};
use crate::domain::{Amount, OnError, Strategy};
use crate::edge::grpc::pb;

#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Plans and starts a rollout; prints its status.
    Create(RolloutCreateArgs),
    /// Shows a rollout: its state, each batch's progress, its devices by
    /// status, and the blocks whose locks hold devices up.
    Get {
        /// The rollout's id.
        #[arg(value_parser = parse::positive_id)]
        id: u64,
    },
    /// Lists rollouts, newest first.
    List {
        /// Only this fleet's.
        #[arg(long)]
        fleet: Option<String>,
    },
    /// Stops starting devices; operations already started carry on.
    Pause(RolloutActionArgs),
    /// Starts devices again; failures so far no longer count towards the
    /// error threshold.
    Resume(RolloutActionArgs),
    /// Stops for good and cancels member operations not yet applying.
    Abort(RolloutActionArgs),
    /// Follows a rollout until it ends: progress bars on a terminal, one
    /// line per change otherwise, JSON lines with --output json. Exit 0 when
    /// it completes, 1 when it is aborted or superseded; a paused rollout is
    /// still active, so watch keeps watching.
    Watch {
        /// The rollout's id.
        #[arg(value_parser = parse::positive_id)]
        id: u64,
    },
}

/// `pause`, `resume`, `abort`: which rollout, who and why (audited).
#[derive(Debug, Clone, clap::Args)]
pub struct RolloutActionArgs {
    /// The rollout's id.
    #[arg(value_parser = parse::positive_id)]
    pub id: u64,
    /// On whose behalf (recorded beside the token in the audit log).
    #[arg(
        long,
        value_name = "WHO",
        default_value = "",
        hide_default_value = true
    )]
    pub actor: String,
    /// Why (recorded in the audit log and shown as the rollout's message).
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "",
        hide_default_value = true
    )]
    pub reason: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RolloutCreateArgs {
    /// The fleet.
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    pub fleet: String,
    #[command(flatten)]
    pub target: RolloutTargetArgs,
    /// Only the fleet's devices with this tag.
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    pub tag: Option<String>,
    /// Devices in the first (canary) batch; 0: no canary batch.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub canary: u32,
    /// The batches after the canary, as device counts or percentages of the
    /// rollout's devices (e.g. 10%,25%,50); the last repeats until every
    /// device is covered. None: one batch with every device left.
    #[arg(
        long,
        value_name = "AMOUNTS",
        value_delimiter = ',',
        value_parser = parse::batch_amount
    )]
    pub batches: Vec<Amount>,
    /// Devices started and not finished at once; 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_in_flight: u32,
    /// After a batch reaches its success threshold, wait this long before
    /// the next (e.g. 10m; at most 30d).
    #[arg(long, value_name = "DURATION", value_parser = parse::soak, default_value = "0s")]
    pub soak: u64,
    /// Percent of a batch (cancelled devices aside) that must succeed before
    /// the next starts (1 to 100).
    #[arg(long, value_name = "PERCENT", value_parser = parse::percent, default_value = "100")]
    pub success_threshold: u8,
    /// Failures (since the last resume) that stop the rollout: a count (2)
    /// or a percentage of the devices that finished (5%). Default: 1.
    #[arg(long, value_name = "N|PERCENT%", value_parser = parse::error_threshold)]
    pub error_threshold: Option<Amount>,
    /// What crossing the error threshold does.
    #[arg(long, value_name = "ACTION", value_parser = ["pause", "abort"], default_value = "pause")]
    pub on_error: String,
    /// Supersede the fleet's active rollout of the same kind (its started
    /// operations carry on; its queued devices are not started).
    #[arg(long)]
    pub supersede: bool,
    /// On whose behalf (recorded beside the token in the audit log).
    #[arg(
        long,
        value_name = "WHO",
        default_value = "",
        hide_default_value = true
    )]
    pub actor: String,
    /// The planner's seed, which picks the canaries (the same seed and
    /// devices plan the same batches); 0: random.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
}

/// What the rollout brings: exactly one of --release, --os-version.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct RolloutTargetArgs {
    /// Move each device to this release (of the same fleet).
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    pub release: Option<String>,
    /// Update each device's host OS to this version.
    #[arg(long, value_name = "VERSION", value_parser = NonEmptyStringValueParser::new())]
    pub os_version: Option<String>,
}

impl RolloutCreateArgs {
    /// The strategy, checked as the server checks it, so bad input is a
    /// usage error naming the flag before any call.
    pub fn strategy(&self) -> Result<pb::RolloutStrategy, CliError> {
        let on_error = OnError::parse(&self.on_error).ok_or_else(|| {
            CliError::usage(format!(
                "--on-error {:?}: must be pause or abort",
                self.on_error
            ))
        })?;
        let strategy = Strategy {
            canary: self.canary,
            batches: self.batches.clone(),
            max_in_flight: self.max_in_flight,
            soak_seconds: self.soak,
            success_threshold: self.success_threshold,
            error_threshold: self.error_threshold.unwrap_or(Amount::Count(1)),
            on_error,
        };
        strategy.validate().map_err(|e| {
            let flag = match e.field {
                "strategy.batches" => "--batches",
                "strategy.success_threshold_percent" => "--success-threshold",
                "strategy.error_threshold" => "--error-threshold",
                "strategy.soak_seconds" => "--soak",
                other => other,
            };
            CliError::usage(format!("{flag}: {}", e.message))
        })?;
        Ok(pb::RolloutStrategy {
            canary: strategy.canary,
            batches: strategy.batches.iter().map(|a| amount(*a)).collect(),
            max_in_flight: strategy.max_in_flight,
            soak_seconds: strategy.soak_seconds,
            success_threshold_percent: u32::from(strategy.success_threshold),
            error_threshold: self.error_threshold.map(amount),
            on_error: on_error.as_str().to_owned(),
        })
    }

    /// The request's target; refuses what clap cannot express.
    fn target(&self) -> Result<pb::create_rollout_request::Target, CliError> {
        use pb::create_rollout_request::Target;
        match (&self.target.release, &self.target.os_version) {
            (Some(r), None) => Ok(Target::Release(r.clone())),
            (None, Some(v)) => Ok(Target::OsVersion(v.clone())),
            _ => Err(CliError::usage(
                "choose what to roll out: --release or --os-version",
            )),
        }
    }
}

fn amount(a: Amount) -> pb::Amount {
    use pb::amount::Amount as A;
    pb::Amount {
        amount: Some(match a {
            Amount::Count(n) => A::Count(n),
            Amount::Percent(p) => A::Percent(u32::from(p)),
        }),
    }
}

fn status(call: &'static str, s: Option<pb::RolloutStatus>) -> Result<RolloutStatusView, CliError> {
    let malformed = CliError::Malformed {
        call,
        field: "status",
    };
    s.map_or(Err(malformed), |s| {
        RolloutStatusView::from_pb(s).ok_or(CliError::Malformed {
            call,
            field: "status.rollout",
        })
    })
}

fn rollout(call: &'static str, r: Option<pb::RolloutInfo>) -> Result<RolloutView, CliError> {
    r.map(Into::into).ok_or(CliError::Malformed {
        call,
        field: "rollout",
    })
}

pub(super) async fn run(ctx: &Ctx, cmd: RolloutCommand) -> Result<(), CliError> {
    // Bad input is refused before any call.
    let create = match &cmd {
        RolloutCommand::Create(a) => Some((a.target()?, a.strategy()?)),
        _ => None,
    };
    let api = ctx.connect().await?;
    let mut rollouts = api.rollouts();
    match cmd {
        RolloutCommand::Create(a) => {
            const CALL: &str = "CreateRollout";
            let (target, strategy) = create.unzip();
            let s = rollouts
                .create_rollout(api.req(pb::CreateRolloutRequest {
                    fleet: a.fleet,
                    tag: a.tag.unwrap_or_default(),
                    target,
                    strategy,
                    supersede: a.supersede,
                    actor: a.actor,
                    seed: a.seed,
                }))
                .await
                .during(CALL)?
                .status;
            emit(ctx.output, &status(CALL, s)?)
        }
        RolloutCommand::Get { id } => {
            const CALL: &str = "GetRollout";
            let s = rollouts
                .get_rollout(api.req(pb::GetRolloutRequest { id }))
                .await
                .during(CALL)?
                .status;
            emit(ctx.output, &status(CALL, s)?)
        }
        RolloutCommand::List { fleet } => {
            let list = rollouts
                .list_rollouts(api.req(pb::ListRolloutsRequest {
                    fleet: fleet.unwrap_or_default(),
                }))
                .await
                .during("ListRollouts")?
                .rollouts;
            emit(
                ctx.output,
                &RolloutList {
                    rollouts: list.into_iter().map(Into::into).collect(),
                },
            )
        }
        RolloutCommand::Pause(a) => {
            const CALL: &str = "PauseRollout";
            let r = rollouts
                .pause_rollout(api.req(action(a)))
                .await
                .during(CALL)?
                .rollout;
            emit(ctx.output, &rollout(CALL, r)?)
        }
        RolloutCommand::Resume(a) => {
            const CALL: &str = "ResumeRollout";
            let r = rollouts
                .resume_rollout(api.req(action(a)))
                .await
                .during(CALL)?
                .rollout;
            emit(ctx.output, &rollout(CALL, r)?)
        }
        RolloutCommand::Abort(a) => {
            const CALL: &str = "AbortRollout";
            let r = rollouts
                .abort_rollout(api.req(action(a)))
                .await
                .during(CALL)?
                .rollout;
            emit(ctx.output, &rollout(CALL, r)?)
        }
        RolloutCommand::Watch { id } => {
            const CALL: &str = "WatchRollout";
            let mut stream = rollouts
                .watch_rollout(api.req(pb::GetRolloutRequest { id }))
                .await
                .during(CALL)?;
            let mut watch = Watch::new(ctx.output, id);
            loop {
                match stream.message().await {
                    Ok(Some(s)) => watch.show(status(CALL, Some(s))?)?,
                    Ok(None) => break,
                    Err(status) => {
                        watch.stop();
                        return Err(CliError::Rpc { call: CALL, status });
                    }
                }
            }
            outcome(id, watch.stop())
        }
    }
}

fn action(a: RolloutActionArgs) -> pb::RolloutActionRequest {
    pb::RolloutActionRequest {
        id: a.id,
        actor: a.actor,
        reason: a.reason,
    }
}

/// What `watch` exits with, given the last status the stream sent: the
/// stream ends when the rollout is no longer active.
fn outcome(id: u64, last: Option<RolloutStatusView>) -> Result<(), CliError> {
    let Some(last) = last else {
        return Err(CliError::WatchEnded {
            id,
            state: "unknown".into(),
        });
    };
    let r = last.rollout;
    match r.state.as_str() {
        "completed" => Ok(()),
        "running" | "paused" => Err(CliError::WatchEnded { id, state: r.state }),
        _ => Err(CliError::RolloutEnded {
            id,
            state: r.state,
            message: r.message,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RolloutCreateArgs {
        RolloutCreateArgs {
            fleet: "f".into(),
            target: RolloutTargetArgs {
                release: Some("r2".into()),
                os_version: None,
            },
            tag: None,
            canary: 0,
            batches: vec![],
            max_in_flight: 0,
            soak: 0,
            success_threshold: 100,
            error_threshold: None,
            on_error: "pause".into(),
            supersede: false,
            actor: String::new(),
            seed: 0,
        }
    }

    #[test]
    fn flags_make_the_strategy_the_server_reads() {
        let a = RolloutCreateArgs {
            canary: 1,
            batches: vec![Amount::Percent(10), Amount::Percent(25), Amount::Count(50)],
            max_in_flight: 3,
            soak: 600,
            success_threshold: 95,
            error_threshold: Some(Amount::Percent(5)),
            on_error: "abort".into(),
            ..args()
        };
        let count = |n| pb::Amount {
            amount: Some(pb::amount::Amount::Count(n)),
        };
        let percent = |p| pb::Amount {
            amount: Some(pb::amount::Amount::Percent(p)),
        };
        assert_eq!(
            a.strategy().unwrap(),
            pb::RolloutStrategy {
                canary: 1,
                batches: vec![percent(10), percent(25), count(50)],
                max_in_flight: 3,
                soak_seconds: 600,
                success_threshold_percent: 95,
                error_threshold: Some(percent(5)),
                on_error: "abort".into(),
            }
        );
        // Unset: the server's default (1 failure).
        assert_eq!(args().strategy().unwrap().error_threshold, None);
        // And the server reads it back as the same strategy.
        let back = Strategy::try_from(a.strategy().unwrap()).unwrap();
        assert_eq!(back.error_threshold, Amount::Percent(5));
        assert_eq!(back.on_error, OnError::Abort);
    }

    #[test]
    fn a_strategy_the_server_would_refuse_is_a_usage_error_naming_the_flag() {
        let too_many = RolloutCreateArgs {
            batches: vec![Amount::Count(1); Strategy::MAX_BATCH_ENTRIES + 1],
            ..args()
        };
        let e = too_many.strategy().unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().starts_with("--batches: at most"), "{e}");
        let on_error = RolloutCreateArgs {
            on_error: "explode".into(),
            ..args()
        };
        assert!(
            on_error
                .strategy()
                .unwrap_err()
                .to_string()
                .starts_with("--on-error")
        );
    }

    fn last(state: &str, message: &str) -> Option<RolloutStatusView> {
        let info = pb::RolloutInfo {
            id: 4,
            state: state.into(),
            message: message.into(),
            ..Default::default()
        };
        RolloutStatusView::from_pb(pb::RolloutStatus {
            rollout: Some(info),
            ..Default::default()
        })
    }

    #[test]
    fn watch_exits_by_how_the_rollout_ended() {
        assert!(outcome(4, last("completed", "")).is_ok());
        for (state, message, code, line) in [
            (
                "aborted",
                "aborted by an operator: bad canary",
                1,
                "rollout 4 aborted: aborted by an operator: bad canary",
            ),
            (
                "superseded",
                "superseded by rollout 5",
                1,
                "rollout 4 superseded: superseded by rollout 5",
            ),
            (
                "running",
                "",
                5,
                "UNAVAILABLE: the server ended the watch while rollout 4 was still running; watch again to carry on",
            ),
        ] {
            let e = outcome(4, last(state, message)).unwrap_err();
            assert_eq!(e.exit_code(), code, "{state}");
            assert_eq!(e.to_string(), line);
        }
        assert_eq!(outcome(4, None).unwrap_err().exit_code(), 5);
    }
}
