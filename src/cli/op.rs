//! `lockstep op create|get|list|cancel|wait`: operations on devices, which
//! the scheduler applies when no lock holder stands in the way; `wait` turns
//! an operation's outcome into the exit code (done 0, otherwise 1).

use std::time::{Duration, Instant};

use super::Ctx;
use super::error::{Call as _, CliError};
use super::parse;
use super::view::{OperationList, OperationView, emit};
use crate::edge::grpc::pb;

/// How often `op wait` asks.
const POLL: Duration = Duration::from_millis(250);

#[derive(Debug, clap::Subcommand)]
pub enum OpCommand {
    /// Records an operation on a device.
    Create(OpCreateArgs),
    /// Shows an operation.
    Get {
        /// The operation's id.
        id: u64,
    },
    /// Lists a device's operations.
    List {
        /// The device's id.
        device: String,
    },
    /// Cancels an operation that is not applying yet.
    Cancel {
        /// The operation's id.
        id: u64,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "", hide_default_value = true)]
        reason: String,
        /// Who cancels (recorded in the audit log).
        #[arg(long, default_value = "", hide_default_value = true)]
        actor: String,
    },
    /// Waits until an operation ends: exit 0 when done, 1 when failed,
    /// cancelled or superseded.
    Wait {
        /// The operation's id.
        id: u64,
        /// How long to wait at most (e.g. 90s, 10m).
        #[arg(long, default_value = "60s", value_parser = parse::duration)]
        timeout: Duration,
    },
}

#[derive(Debug, clap::Args)]
pub struct OpCreateArgs {
    /// The device's id.
    pub device: String,
    #[command(flatten)]
    pub kind: OpKindArgs,
    /// Override this block's lock (repeatable; needs --force-reason).
    #[arg(long = "force-block", value_name = "BLOCK", requires = "force_reason")]
    pub force_blocks: Vec<String>,
    /// Why the locks are overridden (recorded in the audit log).
    #[arg(long, value_name = "TEXT", requires = "force_blocks")]
    pub force_reason: Option<String>,
    /// Who asks (recorded in the audit log).
    #[arg(
        long,
        value_name = "WHO",
        default_value = "",
        hide_default_value = true
    )]
    pub actor: String,
}

/// Exactly one operation.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct OpKindArgs {
    /// Move the device to this release.
    #[arg(long, value_name = "RELEASE")]
    pub assign_release: Option<String>,
    /// Restart this block.
    #[arg(long, value_name = "BLOCK")]
    pub restart: Option<String>,
    /// Stop this block.
    #[arg(long, value_name = "BLOCK")]
    pub stop: Option<String>,
    /// Start this block.
    #[arg(long, value_name = "BLOCK")]
    pub start: Option<String>,
    /// Reboot the device.
    #[arg(long)]
    pub reboot: bool,
    /// Shut the device down.
    #[arg(long)]
    pub shutdown: bool,
    /// Update the host OS to this version.
    #[arg(long, value_name = "VERSION")]
    pub os_update: Option<String>,
}

impl OpKindArgs {
    /// The wire spec; `None` when no operation was chosen.
    pub fn spec(self) -> Option<pb::OperationSpec> {
        use pb::operation_spec::{Empty, Kind};
        let kind = if let Some(r) = self.assign_release {
            Kind::AssignRelease(r)
        } else if let Some(b) = self.restart {
            Kind::RestartBlock(b)
        } else if let Some(b) = self.stop {
            Kind::StopBlock(b)
        } else if let Some(b) = self.start {
            Kind::StartBlock(b)
        } else if self.reboot {
            Kind::Reboot(Empty {})
        } else if self.shutdown {
            Kind::Shutdown(Empty {})
        } else if let Some(v) = self.os_update {
            Kind::OsUpdate(v)
        } else {
            return None;
        };
        Some(pb::OperationSpec { kind: Some(kind) })
    }
}

fn operation(call: &'static str, op: Option<pb::OperationInfo>) -> Result<OperationView, CliError> {
    op.map(Into::into).ok_or(CliError::Malformed {
        call,
        field: "operation",
    })
}

/// Whether an operation has ended.
pub(crate) fn is_terminal(state: pb::OperationStatus) -> bool {
    use pb::OperationStatus as S;
    matches!(state, S::Done | S::Failed | S::Cancelled | S::Superseded)
}

pub(super) async fn run(ctx: &Ctx, cmd: OpCommand) -> Result<(), CliError> {
    if let OpCommand::Create(a) = &cmd
        && a.kind.clone().spec().is_none()
    {
        return Err(CliError::usage("choose one operation, e.g. --reboot"));
    }
    let api = ctx.connect().await?;
    let mut ops = api.operations();
    match cmd {
        OpCommand::Create(a) => {
            const CALL: &str = "CreateOperation";
            let force = (!a.force_blocks.is_empty()).then(|| pb::Force {
                blocks: a.force_blocks,
                reason: a.force_reason.unwrap_or_default(),
            });
            let op = ops
                .create_operation(api.req(pb::CreateOperationRequest {
                    device: a.device,
                    spec: a.kind.spec(),
                    force,
                    actor: a.actor,
                }))
                .await
                .during(CALL)?
                .operation;
            emit(ctx.output, &operation(CALL, op)?)
        }
        OpCommand::Get { id } => {
            const CALL: &str = "GetOperation";
            let op = ops
                .get_operation(api.req(pb::GetOperationRequest { id }))
                .await
                .during(CALL)?
                .operation;
            emit(ctx.output, &operation(CALL, op)?)
        }
        OpCommand::List { device } => {
            let list = ops
                .list_operations(api.req(pb::ListOperationsRequest { device }))
                .await
                .during("ListOperations")?
                .operations;
            emit(
                ctx.output,
                &OperationList {
                    operations: list.into_iter().map(Into::into).collect(),
                },
            )
        }
        OpCommand::Cancel { id, reason, actor } => {
            const CALL: &str = "CancelOperation";
            let op = ops
                .cancel_operation(api.req(pb::CancelOperationRequest { id, actor, reason }))
                .await
                .during(CALL)?
                .operation;
            emit(ctx.output, &operation(CALL, op)?)
        }
        OpCommand::Wait { id, timeout } => {
            const CALL: &str = "GetOperation";
            let deadline = Instant::now() + timeout;
            loop {
                let op = ops
                    .get_operation(api.req(pb::GetOperationRequest { id }))
                    .await
                    .during(CALL)?
                    .operation;
                let op = operation(CALL, op)?;
                let now = Instant::now();
                if is_terminal(op.state) || now >= deadline {
                    // The last state is printed whatever the outcome.
                    emit(ctx.output, &op)?;
                    return match op.state {
                        pb::OperationStatus::Done => Ok(()),
                        s if is_terminal(s) => Err(CliError::OperationFailed {
                            id,
                            status: op.status,
                            error: op.error,
                        }),
                        _ => Err(CliError::WaitTimedOut {
                            id,
                            status: op.status,
                            waited: timeout,
                        }),
                    };
                }
                tokio::time::sleep(POLL.min(deadline - now)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::operation_spec::{Empty, Kind};

    fn none() -> OpKindArgs {
        OpKindArgs {
            assign_release: None,
            restart: None,
            stop: None,
            start: None,
            reboot: false,
            shutdown: false,
            os_update: None,
        }
    }

    #[test]
    fn each_flag_makes_its_operation() {
        let s = |x: &str| Some(x.to_owned());
        let cases = [
            (
                OpKindArgs {
                    assign_release: s("r2"),
                    ..none()
                },
                Some(Kind::AssignRelease("r2".into())),
            ),
            (
                OpKindArgs {
                    restart: s("ui"),
                    ..none()
                },
                Some(Kind::RestartBlock("ui".into())),
            ),
            (
                OpKindArgs {
                    stop: s("ui"),
                    ..none()
                },
                Some(Kind::StopBlock("ui".into())),
            ),
            (
                OpKindArgs {
                    start: s("ui"),
                    ..none()
                },
                Some(Kind::StartBlock("ui".into())),
            ),
            (
                OpKindArgs {
                    reboot: true,
                    ..none()
                },
                Some(Kind::Reboot(Empty {})),
            ),
            (
                OpKindArgs {
                    shutdown: true,
                    ..none()
                },
                Some(Kind::Shutdown(Empty {})),
            ),
            (
                OpKindArgs {
                    os_update: s("13.1"),
                    ..none()
                },
                Some(Kind::OsUpdate("13.1".into())),
            ),
            (none(), None),
        ];
        for (args, want) in cases {
            assert_eq!(args.clone().spec().and_then(|s| s.kind), want, "{args:?}");
        }
    }

    #[test]
    fn terminal_statuses() {
        use pb::OperationStatus as S;
        for (s, t) in [
            (S::Unspecified, false),
            (S::Pending, false),
            (S::Queued, false),
            (S::WaitingLock, false),
            (S::WaitingWindow, false),
            (S::WaitingApproval, false),
            (S::PartiallyApplied, false),
            (S::Applying, false),
            (S::Done, true),
            (S::Failed, true),
            (S::Cancelled, true),
            (S::Superseded, true),
        ] {
            assert_eq!(is_terminal(s), t, "{s:?}");
        }
    }
}
