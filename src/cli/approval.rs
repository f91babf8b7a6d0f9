//! `lockstep approval list|approve|decline`: customer approvals of
//! operations that need one. `list` numbers each request's candidate window
//! occurrences; `approve` takes one by that number or by its start time as
//! shown, so nobody copies Unix milliseconds; `decline` cancels the
//! operation with a message.

use super::Ctx;
use super::error::{Call as _, CliError};
use super::parse;
use super::view::{ApprovalList, ApprovalView, OccurrenceView, emit};
use crate::edge::grpc::pb;

#[derive(Debug, clap::Subcommand)]
pub enum ApprovalCommand {
    /// Lists approvals, with the candidate occurrences of those requested.
    List {
        /// Only those with this status.
        #[arg(long, value_parser = ["requested", "approved", "declined", "missed"])]
        status: Option<String>,
    },
    /// Approves one candidate occurrence of a requested approval.
    Approve {
        /// The approval's id.
        id: u64,
        #[command(flatten)]
        pick: PickArgs,
        /// On whose behalf (recorded beside the token in the audit log).
        #[arg(
            long,
            value_name = "WHO",
            default_value = "",
            hide_default_value = true
        )]
        actor: String,
    },
    /// Declines an approval; its operation is cancelled with the message.
    Decline {
        /// The approval's id.
        id: u64,
        /// Why (shown on the cancelled operation).
        #[arg(long, value_name = "TEXT")]
        message: String,
        /// On whose behalf (recorded beside the token in the audit log).
        #[arg(
            long,
            value_name = "WHO",
            default_value = "",
            hide_default_value = true
        )]
        actor: String,
    },
}

/// Which candidate: exactly one of --index and --start.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct PickArgs {
    /// The candidate's number, as `approval list` shows it (from 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub index: Option<u32>,
    /// The candidate's start, as `approval list` shows it (RFC 3339, e.g.
    /// 2026-11-24T22:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse::instant)]
    pub start: Option<i64>,
}

impl PickArgs {
    /// The chosen one of `approval`'s candidates.
    pub fn pick(&self, approval: &ApprovalView) -> Result<pb::Window, CliError> {
        let c = &approval.candidates;
        let found = match (self.index, self.start) {
            (Some(i), _) => {
                let found = usize::try_from(i)
                    .ok()
                    .and_then(|i| c.iter().find(|o| o.index == i));
                found.ok_or_else(|| {
                    CliError::usage(format!(
                        "--index {i}: approval {} has {}; see `lockstep approval list`",
                        approval.id,
                        count_text(c.len()),
                    ))
                })?
            }
            (None, Some(start)) => {
                // Tables print whole seconds: match at that precision.
                let second = start.div_euclid(1000);
                let matching: Vec<&OccurrenceView> = c
                    .iter()
                    .filter(|o| o.start_unix_ms.div_euclid(1000) == second)
                    .collect();
                match matching[..] {
                    [one] => one,
                    [] => {
                        return Err(CliError::usage(format!(
                            "--start {}: not the start of a candidate of approval {} ({}); see `lockstep approval list`",
                            parse::timestamp(start),
                            approval.id,
                            count_text(c.len()),
                        )));
                    }
                    _ => {
                        return Err(CliError::usage(format!(
                            "--start {}: several candidates of approval {} start then; choose with --index",
                            parse::timestamp(start),
                            approval.id,
                        )));
                    }
                }
            }
            (None, None) => return Err(CliError::usage("choose a candidate: --index or --start")),
        };
        Ok(pb::Window {
            start_unix_ms: found.start_unix_ms,
            end_unix_ms: found.end_unix_ms,
        })
    }
}

fn count_text(n: usize) -> String {
    match n {
        0 => "no candidate occurrences (no window applies to the device)".into(),
        1 => "1 candidate occurrence (1)".into(),
        n => format!("{n} candidate occurrences (1-{n})"),
    }
}

fn approval(call: &'static str, a: Option<pb::ApprovalInfo>) -> Result<ApprovalView, CliError> {
    a.map(Into::into).ok_or(CliError::Malformed {
        call,
        field: "approval",
    })
}

pub(super) async fn run(ctx: &Ctx, cmd: ApprovalCommand) -> Result<(), CliError> {
    let api = ctx.connect().await?;
    let mut windows = api.windows();
    const LIST: &str = "ListApprovals";
    match cmd {
        ApprovalCommand::List { status } => {
            let approvals = windows
                .list_approvals(api.req(pb::ListApprovalsRequest {
                    status: status.unwrap_or_default(),
                }))
                .await
                .during(LIST)?
                .approvals;
            emit(
                ctx.output,
                &ApprovalList {
                    approvals: approvals.into_iter().map(Into::into).collect(),
                },
            )
        }
        ApprovalCommand::Approve { id, pick, actor } => {
            const CALL: &str = "Approve";
            // The candidates as `list` shows them, to pick from.
            let requested = windows
                .list_approvals(api.req(pb::ListApprovalsRequest {
                    status: "requested".into(),
                }))
                .await
                .during(LIST)?
                .approvals;
            let Some(current) = requested.into_iter().find(|a| a.id == id) else {
                let all = windows
                    .list_approvals(api.req(pb::ListApprovalsRequest {
                        status: String::new(),
                    }))
                    .await
                    .during(LIST)?
                    .approvals;
                return Err(match all.into_iter().find(|a| a.id == id) {
                    Some(a) => CliError::AlreadyDecided {
                        id,
                        status: a.status,
                    },
                    None => CliError::NotFound {
                        what: format!("approval {id}"),
                    },
                });
            };
            let occurrence = pick.pick(&current.into())?;
            let approved = windows
                .approve(api.req(pb::ApproveRequest {
                    approval_id: id,
                    occurrence: Some(occurrence),
                    actor,
                }))
                .await
                .during(CALL)?
                .approval;
            emit(ctx.output, &approval(CALL, approved)?)
        }
        ApprovalCommand::Decline { id, message, actor } => {
            const CALL: &str = "Decline";
            let declined = windows
                .decline(api.req(pb::DeclineRequest {
                    approval_id: id,
                    message,
                    actor,
                }))
                .await
                .during(CALL)?
                .approval;
            emit(ctx.output, &approval(CALL, declined)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requested() -> ApprovalView {
        ApprovalView {
            id: 3,
            operation_id: 7,
            device: "d".into(),
            status: "requested".into(),
            candidates: OccurrenceView::numbered(vec![
                pb::Window {
                    start_unix_ms: 1_795_558_263_250,
                    end_unix_ms: 1_795_565_463_250,
                },
                pb::Window {
                    start_unix_ms: 1_795_644_663_000,
                    end_unix_ms: 1_795_651_863_000,
                },
            ]),
            approved: None,
            decided_by: String::new(),
            message: String::new(),
        }
    }

    fn by_index(i: u32) -> PickArgs {
        PickArgs {
            index: Some(i),
            start: None,
        }
    }

    fn by_start(s: &str) -> PickArgs {
        PickArgs {
            index: None,
            start: Some(parse::instant(s).unwrap()),
        }
    }

    #[test]
    fn a_candidate_is_picked_by_number_or_by_its_start_as_shown() {
        let a = requested();
        let second = pb::Window {
            start_unix_ms: 1_795_644_663_000,
            end_unix_ms: 1_795_651_863_000,
        };
        assert_eq!(by_index(2).pick(&a).unwrap(), second);
        assert_eq!(by_start("2026-11-25T22:11:03Z").pick(&a).unwrap(), second);
        // The table drops milliseconds; the exact candidate is sent.
        assert_eq!(
            by_start("2026-11-24T22:11:03Z")
                .pick(&a)
                .unwrap()
                .start_unix_ms,
            1_795_558_263_250
        );
    }

    #[test]
    fn a_candidate_that_is_not_there_is_a_usage_error() {
        let a = requested();
        for (pick, needle) in [
            (
                by_index(3),
                "--index 3: approval 3 has 2 candidate occurrences (1-2)",
            ),
            (
                by_start("2026-11-24T22:11:04Z"),
                "--start 2026-11-24T22:11:04Z",
            ),
        ] {
            let e = pick.pick(&a).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().starts_with(needle), "{e}");
        }
        let none = ApprovalView {
            candidates: vec![],
            ..requested()
        };
        let e = by_index(1).pick(&none).unwrap_err();
        assert!(e.to_string().contains("no window applies"), "{e}");
    }
}
