//! `lockstep window create|list|delete|next`: maintenance windows — weekly in
//! an IANA time zone, RFC 5545 recurrences, or one-off — on a fleet, a tag or
//! a device, and the next occurrences that apply to a device, so operators
//! schedule disruptive operations without hand-writing `WindowService` JSON.

use super::Ctx;
use super::error::{Call as _, CliError};
use super::parse::{self, Weekdays};
use super::view::{Done, NextView, OccurrenceView, WindowList, WindowView, emit};
use crate::edge::grpc::pb;

#[derive(Debug, clap::Subcommand)]
pub enum WindowCommand {
    /// Creates a window: weekly (--days), a recurrence (--rrule) or one-off
    /// (--from).
    Create(WindowCreateArgs),
    /// Lists every window.
    List,
    /// Deletes a window.
    Delete {
        /// The window's id.
        id: u64,
    },
    /// The next occurrences of the windows that apply to a device (an open
    /// one first).
    Next {
        /// The device's id.
        device: String,
        /// How many occurrences (1 to 50).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
        count: u32,
    },
}

/// What a window is attached to: exactly one of --fleet, --tag, --device.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct ScopeArgs {
    /// Every device of this fleet.
    #[arg(long)]
    pub fleet: Option<String>,
    /// Every device with this tag (e.g. a site).
    #[arg(long)]
    pub tag: Option<String>,
    /// One device.
    #[arg(long)]
    pub device: Option<String>,
}

impl ScopeArgs {
    fn pb(self) -> pb::WindowScope {
        use pb::window_scope::Scope;
        let scope = match (self.fleet, self.tag, self.device) {
            (Some(f), _, _) => Scope::Fleet(f),
            (None, Some(t), _) => Scope::Tag(t),
            (None, None, Some(d)) => Scope::Device(d),
            // clap requires one; an empty fleet is refused by the server.
            (None, None, None) => Scope::Fleet(String::new()),
        };
        pb::WindowScope { scope: Some(scope) }
    }
}

#[derive(Debug, clap::Args)]
pub struct WindowCreateArgs {
    #[command(flatten)]
    pub scope: ScopeArgs,
    #[command(flatten)]
    pub rule: RuleArgs,
    /// Weekly: the local start time.
    #[arg(long, value_name = "HH:MM", value_parser = parse::local_time, requires = "days")]
    pub start: Option<String>,
    /// Weekly: the IANA time zone of --start (e.g. Europe/Amsterdam).
    #[arg(
        long = "time-zone",
        visible_alias = "tz",
        value_name = "ZONE",
        value_parser = parse::time_zone,
        requires = "days"
    )]
    pub time_zone: Option<String>,
    /// How long each occurrence lasts, in whole minutes (e.g. 90m, 2h, up to
    /// 7d); a one-off window may give --until instead.
    #[arg(long, value_name = "DURATION", value_parser = parse::window_minutes)]
    pub duration: Option<u32>,
    /// One-off: when it ends (RFC 3339, e.g. 2026-11-25T02:00:00Z).
    #[arg(
        long,
        value_name = "TIME",
        value_parser = parse::instant,
        requires = "from",
        conflicts_with = "duration"
    )]
    pub until: Option<i64>,
}

/// Which kind of window: exactly one of --days, --rrule, --from.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct RuleArgs {
    /// Weekly on these weekdays: mon,wed,fri or mon-fri or 1-5 (1 = Monday)
    /// or daily; needs --start, --time-zone and --duration.
    #[arg(
        long,
        value_name = "DAYS",
        value_parser = parse::weekdays,
        requires_all = ["start", "time_zone", "duration"]
    )]
    pub days: Option<Weekdays>,
    /// An RFC 5545 recurrence, properties separated by newlines or spaces:
    /// 'DTSTART;TZID=Europe/Amsterdam:20260104T020000
    /// RRULE:FREQ=MONTHLY;BYDAY=1SU'; needs --duration.
    #[arg(long, value_name = "RULE", value_parser = parse::rrule, requires = "duration")]
    pub rrule: Option<String>,
    /// Once, from this time (RFC 3339, e.g. 2026-11-24T22:00:00Z), until
    /// --until or for --duration.
    #[arg(long, value_name = "TIME", value_parser = parse::instant)]
    pub from: Option<i64>,
}

impl WindowCreateArgs {
    /// The request's rule; refuses what clap cannot express.
    pub fn rule(&self) -> Result<pb::create_window_request::Rule, CliError> {
        use pb::create_window_request::Rule;
        let r = &self.rule;
        if let Some(Weekdays(days)) = &r.days {
            return Ok(Rule::Weekly(pb::WeeklyRule {
                days: days.clone(),
                start_local: self.start.clone().unwrap_or_default(),
                duration_minutes: self.duration.unwrap_or_default(),
                time_zone: self.time_zone.clone().unwrap_or_default(),
            }));
        }
        if let Some(rrule) = &r.rrule {
            return Ok(Rule::Recurrence(pb::RecurrenceRule {
                rrule: rrule.clone(),
                duration_minutes: self.duration.unwrap_or_default(),
            }));
        }
        let Some(from) = r.from else {
            return Err(CliError::usage(
                "choose a window: --days (weekly), --rrule (recurrence) or --from (one-off)",
            ));
        };
        let until = match (self.until, self.duration) {
            (Some(until), _) => until,
            (None, Some(minutes)) => from.saturating_add(i64::from(minutes) * 60_000),
            (None, None) => {
                return Err(CliError::usage(
                    "--from needs --until or --duration: when does the one-off window end?",
                ));
            }
        };
        if until <= from {
            return Err(CliError::usage(format!(
                "--until {} must be after --from {}",
                parse::timestamp(until),
                parse::timestamp(from)
            )));
        }
        Ok(Rule::OneOff(pb::OneOffRule {
            start_unix_ms: from,
            end_unix_ms: until,
        }))
    }
}

fn window(call: &'static str, w: Option<pb::WindowInfo>) -> Result<WindowView, CliError> {
    w.map(Into::into).ok_or(CliError::Malformed {
        call,
        field: "window",
    })
}

pub(super) async fn run(ctx: &Ctx, cmd: WindowCommand) -> Result<(), CliError> {
    // Bad input is refused before any call.
    let rule = match &cmd {
        WindowCommand::Create(a) => Some(a.rule()?),
        _ => None,
    };
    let api = ctx.connect().await?;
    let mut windows = api.windows();
    match cmd {
        WindowCommand::Create(a) => {
            const CALL: &str = "CreateWindow";
            let w = windows
                .create_window(api.req(pb::CreateWindowRequest {
                    scope: Some(a.scope.pb()),
                    rule,
                }))
                .await
                .during(CALL)?
                .window;
            emit(ctx.output, &window(CALL, w)?)
        }
        WindowCommand::List => {
            let list = windows
                .list_windows(api.req(pb::ListWindowsRequest {}))
                .await
                .during("ListWindows")?
                .windows;
            emit(
                ctx.output,
                &WindowList {
                    windows: list.into_iter().map(Into::into).collect(),
                },
            )
        }
        WindowCommand::Delete { id } => {
            windows
                .delete_window(api.req(pb::DeleteWindowRequest { id }))
                .await
                .during("DeleteWindow")?;
            emit(
                ctx.output,
                &Done {
                    message: format!("deleted window {id}"),
                    data: serde_json::json!({ "deleted": id }),
                },
            )
        }
        WindowCommand::Next { device, count } => {
            let occurrences = windows
                .next_windows(api.req(pb::NextWindowsRequest {
                    device: device.clone(),
                    count,
                }))
                .await
                .during("NextWindows")?
                .occurrences;
            emit(
                ctx.output,
                &NextView {
                    device,
                    occurrences: OccurrenceView::numbered(occurrences),
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::create_window_request::Rule;

    fn args(rule: RuleArgs) -> WindowCreateArgs {
        WindowCreateArgs {
            scope: ScopeArgs {
                fleet: Some("f".into()),
                tag: None,
                device: None,
            },
            rule,
            start: None,
            time_zone: None,
            duration: None,
            until: None,
        }
    }

    fn one_off(from: i64) -> RuleArgs {
        RuleArgs {
            days: None,
            rrule: None,
            from: Some(from),
        }
    }

    #[test]
    fn each_kind_makes_its_rule() {
        let weekly = WindowCreateArgs {
            start: Some("02:00".into()),
            time_zone: Some("Europe/Amsterdam".into()),
            duration: Some(120),
            ..args(RuleArgs {
                days: Some(Weekdays(vec![2, 4])),
                rrule: None,
                from: None,
            })
        };
        assert_eq!(
            weekly.rule().unwrap(),
            Rule::Weekly(pb::WeeklyRule {
                days: vec![2, 4],
                start_local: "02:00".into(),
                duration_minutes: 120,
                time_zone: "Europe/Amsterdam".into(),
            })
        );
        let recurrence = WindowCreateArgs {
            duration: Some(180),
            ..args(RuleArgs {
                days: None,
                rrule: Some("DTSTART:20260104T020000Z\nRRULE:FREQ=DAILY".into()),
                from: None,
            })
        };
        assert_eq!(
            recurrence.rule().unwrap(),
            Rule::Recurrence(pb::RecurrenceRule {
                rrule: "DTSTART:20260104T020000Z\nRRULE:FREQ=DAILY".into(),
                duration_minutes: 180,
            })
        );
        let until = WindowCreateArgs {
            until: Some(5_000),
            ..args(one_off(1_000))
        };
        assert_eq!(
            until.rule().unwrap(),
            Rule::OneOff(pb::OneOffRule {
                start_unix_ms: 1_000,
                end_unix_ms: 5_000,
            })
        );
        let lasting = WindowCreateArgs {
            duration: Some(2),
            ..args(one_off(1_000))
        };
        assert_eq!(
            lasting.rule().unwrap(),
            Rule::OneOff(pb::OneOffRule {
                start_unix_ms: 1_000,
                end_unix_ms: 121_000,
            })
        );
    }

    #[test]
    fn a_one_off_window_needs_an_end_after_its_start() {
        let open_ended = args(one_off(1_000)).rule().unwrap_err();
        assert!(open_ended.to_string().contains("--until or --duration"));
        assert_eq!(open_ended.exit_code(), 2);
        let backwards = WindowCreateArgs {
            until: Some(1_000),
            ..args(one_off(1_000))
        }
        .rule()
        .unwrap_err();
        assert!(
            backwards.to_string().contains("must be after --from"),
            "{backwards}"
        );
        assert_eq!(backwards.exit_code(), 2);
    }
}
