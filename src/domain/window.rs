//! Maintenance windows: when a disruptive operation may run on a device.
//! Recurring weekly windows are defined in local time in an IANA time zone,
//! so "Tuesdays 02:00 for 2 h in Europe/Amsterdam" stays at 02:00 local
//! across daylight-saving changes; one-off windows are absolute.
//!
//! The rule for local start times that do not exist or occur twice on a DST
//! day (documented in the README and tested below):
//! - a start time in the spring-forward gap (02:30 when clocks jump from
//!   02:00 to 03:00) starts the window at the same distance after the gap:
//!   02:30 becomes 03:30 — the window is never skipped;
//! - a start time in the autumn fold (02:30 happens twice) starts the window
//!   at its first occurrence (summer time);
//! - a window lasts its duration in real elapsed time, whatever the clocks do.
//!
//! Pure: time is a parameter, and the time-zone database is compiled in.

use std::collections::BTreeSet;

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, ToSpan as _};

use super::ids::Timestamp;
use super::shown::Shown;

/// Largest recurrence text (`DTSTART` plus `RRULE`/`EXRULE`/`RDATE` lines).
pub const MAX_RECURRENCE_BYTES: usize = 2048;
/// Most lines in a recurrence.
pub const MAX_RECURRENCE_LINES: usize = 16;
/// Most instances of a recurrence generated in one evaluation. A recurrence
/// is evaluated from its DTSTART, so this bounds the work of every
/// evaluation; a rule that would need more to reach a given instant has no
/// occurrences from there on, and is refused when created if that happens
/// within ten years (see [`WindowRule::evaluable_until`]).
pub const MAX_RECURRENCE_INSTANCES: usize = 100_000;
/// Earliest and latest DTSTART year of a recurrence.
pub const RECURRENCE_YEARS: std::ops::RangeInclusive<i32> = 1970..=2200;
/// Recurrences have no occurrences after this instant (3000-01-01T00:00Z):
/// evaluating one that far out would iterate for centuries.
const RECURRENCE_HORIZON_MS: i64 = 32_503_680_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("unknown time zone {tz} (use an IANA name such as Europe/Amsterdam)")]
    UnknownTimeZone { tz: Shown },
    #[error("a weekly window needs at least one day, each 1 (Monday) to 7 (Sunday)")]
    NoDays,
    #[error("duration must be between 1 minute and 7 days, got {minutes} min")]
    BadDuration { minutes: i64 },
    #[error("a one-off window must end after it starts")]
    EmptyOneOff,
    #[error("invalid recurrence: {message}")]
    BadRecurrence { message: String },
}

/// When a window is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowRule {
    /// Every listed weekday, from `start` local time, for `duration`.
    Weekly {
        /// Monday = 1 … Sunday = 7 (ISO 8601).
        days: BTreeSet<i8>,
        start: Time,
        duration: SignedDuration,
        tz: String,
    },
    /// Once, between two instants.
    OneOff { start: Timestamp, end: Timestamp },
    /// Each start of an RFC 5545 recurrence (`DTSTART;TZID=…` plus `RRULE:`
    /// lines, e.g. the first Sunday of each month at 02:00 local), for
    /// `duration`. Local times follow the rrule crate: per RFC 5545, an
    /// instance at a local time that does not exist is skipped.
    Recurrence {
        rule: String,
        duration: SignedDuration,
    },
}

/// What a window is attached to: a whole fleet, a device tag (a site), or
/// one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowScope {
    Fleet(super::ids::FleetId),
    Tag(super::ids::Tag),
    Device(super::ids::DeviceId),
}

/// A stored window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub id: i64,
    pub scope: WindowScope,
    pub rule: WindowRule,
}

/// One occurrence of a window: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Occurrence {
    pub start: Timestamp,
    pub end: Timestamp,
}

impl Occurrence {
    pub fn contains(&self, t: Timestamp) -> bool {
        self.start <= t && t < self.end
    }
}

/// Saturates at the ends of jiff's range (years -9999 and 9999), so an
/// instant beyond them is never mistaken for another one.
fn to_jiff(t: Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(t.0).unwrap_or(if t.0 < 0 {
        jiff::Timestamp::MIN
    } else {
        jiff::Timestamp::MAX
    })
}

fn from_jiff(t: jiff::Timestamp) -> Timestamp {
    Timestamp(t.as_millisecond())
}

impl WindowRule {
    pub fn validate(&self) -> Result<(), WindowError> {
        match self {
            WindowRule::Weekly {
                days, duration, tz, ..
            } => {
                TimeZone::get(tz)
                    .map_err(|_| WindowError::UnknownTimeZone { tz: Shown::new(tz) })?;
                if days.is_empty() || days.iter().any(|d| !(1..=7).contains(d)) {
                    return Err(WindowError::NoDays);
                }
                let minutes = duration.as_secs() / 60;
                if !(1..=7 * 24 * 60).contains(&minutes) {
                    return Err(WindowError::BadDuration { minutes });
                }
                Ok(())
            }
            WindowRule::OneOff { start, end } => {
                if end > start {
                    Ok(())
                } else {
                    Err(WindowError::EmptyOneOff)
                }
            }
            WindowRule::Recurrence { rule, duration } => {
                let minutes = duration.as_secs() / 60;
                if !(1..=7 * 24 * 60).contains(&minutes) {
                    return Err(WindowError::BadDuration { minutes });
                }
                parse_recurrence(rule).map(drop)
            }
        }
    }

    /// The first `limit` occurrences that have not ended at `after`, in order
    /// (an occurrence open at `after` comes first).
    pub fn occurrences(&self, after: Timestamp, limit: usize) -> Vec<Occurrence> {
        match self {
            WindowRule::Recurrence { rule, duration } => {
                recurrence_occurrences(rule, *duration, after, limit)
            }
            WindowRule::OneOff { start, end } => {
                if *end > after && limit > 0 {
                    vec![Occurrence {
                        start: *start,
                        end: *end,
                    }]
                } else {
                    vec![]
                }
            }
            WindowRule::Weekly {
                days,
                start,
                duration,
                tz,
            } => {
                let Ok(zone) = TimeZone::get(tz) else {
                    return vec![];
                };
                let now = to_jiff(after);
                // Start a day before `after` (plus the longest duration) so
                // an occurrence still open is found.
                let first_day: Date = now.to_zoned_datetime(zone.clone()).date();
                let back_days = 1 + duration.as_secs() / 86_400;
                let mut out = Vec::new();
                let mut day = first_day.checked_sub(back_days.days()).unwrap_or(first_day);
                // Enough days to find `limit` occurrences of one weekday.
                for _ in 0..(7 * (limit as i64 + 2) + back_days) {
                    if out.len() >= limit {
                        break;
                    }
                    if days.contains(&day.weekday().to_monday_one_offset()) {
                        let local = day.to_datetime(*start);
                        // `compatible`: a gap moves forward by its length,
                        // a fold takes the earlier instant.
                        if let Ok(zoned) = zone.to_ambiguous_zoned_datetime(local).compatible() {
                            let s = zoned.timestamp();
                            if let Ok(e) = s.checked_add(*duration)
                                && e > now
                                && from_jiff(e) > after
                            {
                                out.push(Occurrence {
                                    start: from_jiff(s),
                                    end: from_jiff(e),
                                });
                            }
                        }
                    }
                    match day.tomorrow() {
                        Ok(d) => day = d,
                        Err(_) => break,
                    }
                }
                out
            }
        }
    }

    /// Whether the rule can still be evaluated at `t` within
    /// [`MAX_RECURRENCE_INSTANCES`] (always, for weekly and one-off rules).
    /// Checked with "ten years from now" when a window is created.
    pub fn evaluable_until(&self, t: Timestamp) -> bool {
        match self {
            WindowRule::Recurrence { rule, duration } => !recurrence_scan(rule, *duration, t, 1).1,
            WindowRule::Weekly { .. } | WindowRule::OneOff { .. } => true,
        }
    }

    /// The occurrence open at `t`, if any.
    pub fn open_at(&self, t: Timestamp) -> Option<Occurrence> {
        self.occurrences(t, 1).into_iter().find(|o| o.contains(t))
    }
}

/// Parses and checks a recurrence: bounded size, and a DTSTART that names its
/// zone (a floating local time would depend on the server's own zone).
fn parse_recurrence(rule: &str) -> Result<rrule::RRuleSet, WindowError> {
    if rule.len() > MAX_RECURRENCE_BYTES {
        return Err(WindowError::BadRecurrence {
            message: format!("longer than {MAX_RECURRENCE_BYTES} bytes"),
        });
    }
    if rule.lines().count() > MAX_RECURRENCE_LINES {
        return Err(WindowError::BadRecurrence {
            message: format!("more than {MAX_RECURRENCE_LINES} lines"),
        });
    }
    let set: rrule::RRuleSet =
        rule.parse()
            .map_err(|e: rrule::RRuleError| WindowError::BadRecurrence {
                message: e.to_string(),
            })?;
    if set.get_dt_start().timezone().is_local() {
        return Err(WindowError::BadRecurrence {
            message: "DTSTART needs a TZID (e.g. DTSTART;TZID=Europe/Amsterdam:20260104T020000) or a UTC time".into(),
        });
    }
    let year = chrono::Datelike::year(set.get_dt_start());
    if !RECURRENCE_YEARS.contains(&year) {
        return Err(WindowError::BadRecurrence {
            message: format!(
                "DTSTART year {year} is outside {}..={}",
                RECURRENCE_YEARS.start(),
                RECURRENCE_YEARS.end()
            ),
        });
    }
    // Every period from DTSTART on is iterated: sub-daily frequencies would
    // make each evaluation iterate millions of times. Several windows a day
    // are a DAILY rule with BYHOUR.
    for r in set.get_rrule().iter().chain(set.get_exrule()) {
        if matches!(
            r.get_freq(),
            rrule::Frequency::Hourly | rrule::Frequency::Minutely | rrule::Frequency::Secondly
        ) {
            return Err(WindowError::BadRecurrence {
                message: format!(
                    "FREQ={} is too frequent for a maintenance window; use DAILY (with BYHOUR for several a day), WEEKLY, MONTHLY or YEARLY",
                    r.get_freq()
                ),
            });
        }
    }
    Ok(set)
}

fn recurrence_occurrences(
    rule: &str,
    duration: SignedDuration,
    after: Timestamp,
    limit: usize,
) -> Vec<Occurrence> {
    recurrence_scan(rule, duration, after, limit).0
}

/// The first `limit` occurrences not ended at `after`, and whether the scan
/// stopped at [`MAX_RECURRENCE_INSTANCES`] before finding them all.
fn recurrence_scan(
    rule: &str,
    duration: SignedDuration,
    after: Timestamp,
    limit: usize,
) -> (Vec<Occurrence>, bool) {
    if limit == 0 || after.0 >= RECURRENCE_HORIZON_MS {
        return (vec![], false);
    }
    let Ok(set) = parse_recurrence(rule) else {
        return (vec![], false);
    };
    let set = set.limit();
    let dur_ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
    // Starts from `after - duration`, so an occurrence still open is found.
    let from = after.0.saturating_sub(dur_ms);
    let mut out = Vec::new();
    for (i, d) in (&set).into_iter().enumerate() {
        if i >= MAX_RECURRENCE_INSTANCES {
            return (out, true);
        }
        let start = Timestamp(d.timestamp_millis());
        if start.0 < from {
            continue;
        }
        let o = Occurrence {
            start,
            end: Timestamp(start.0.saturating_add(dur_ms)),
        };
        if o.end > after {
            out.push(o);
            if out.len() >= limit {
                break;
            }
        }
    }
    (out, false)
}

/// Across several windows: the occurrence open at `t`, else the next one.
pub fn open_or_next(
    rules: &[WindowRule],
    t: Timestamp,
) -> (Option<Occurrence>, Option<Occurrence>) {
    let mut open: Option<Occurrence> = None;
    let mut next: Option<Occurrence> = None;
    for r in rules {
        for o in r.occurrences(t, 2) {
            if o.contains(t) {
                // The one open longest ahead is the most useful to report.
                if open.is_none_or(|cur| o.end > cur.end) {
                    open = Some(o);
                }
            } else if o.start > t && next.is_none_or(|cur| o.start < cur.start) {
                next = Some(o);
            }
        }
    }
    (open, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::{Weekday, date};

    fn ms(s: &str) -> Timestamp {
        from_jiff(s.parse::<jiff::Timestamp>().unwrap())
    }

    fn weekly(days: &[Weekday], h: i8, m: i8, minutes: i64, tz: &str) -> WindowRule {
        WindowRule::Weekly {
            days: days.iter().map(|d| d.to_monday_one_offset()).collect(),
            start: Time::new(h, m, 0, 0).unwrap(),
            duration: SignedDuration::from_mins(minutes),
            tz: tz.into(),
        }
    }

    fn utc(o: &Occurrence) -> (String, String) {
        (to_jiff(o.start).to_string(), to_jiff(o.end).to_string())
    }

    /// Found by tests/fuzz_window.rs: a recurrence starting centuries ago
    /// at a fine frequency made every evaluation iterate for minutes.
    #[test]
    fn recurrences_are_bounded_in_frequency_start_and_work() {
        let rec = |text: &str| WindowRule::Recurrence {
            rule: text.into(),
            duration: SignedDuration::from_mins(60),
        };
        for bad in [
            "DTSTART:20260101T000000Z\nRRULE:FREQ=MINUTELY",
            "DTSTART:20260101T000000Z\nRRULE:FREQ=HOURLY",
            "DTSTART:11270101T000000Z\nRRULE:FREQ=DAILY",
            "DTSTART:29990101T000000Z\nRRULE:FREQ=DAILY",
        ] {
            assert!(rec(bad).validate().is_err(), "{bad}");
        }
        let daily = rec("DTSTART:19700101T000000Z\nRRULE:FREQ=DAILY;BYHOUR=0,6,12,18");
        assert!(daily.validate().is_ok());
        // Four a day since 1970: the budget runs out in the 2030s.
        assert!(daily.evaluable_until(ms("2026-01-01T00:00:00Z")));
        assert!(!daily.evaluable_until(ms("2046-01-01T00:00:00Z")));
        assert!(daily.occurrences(ms("2046-01-01T00:00:00Z"), 1).is_empty());
        assert!(daily.occurrences(Timestamp(i64::MAX), 1).is_empty());
    }

    /// Found by tests/fuzz_window.rs: an instant past jiff's range was
    /// read as the Unix epoch, and 1970's occurrences came back.
    #[test]
    fn an_instant_beyond_the_calendar_has_no_weekly_occurrences_before_it() {
        let rule = weekly(&[Weekday::Monday], 0, 0, 1, "UTC");
        let after = Timestamp(253_402_207_200_001);
        assert!(rule.occurrences(after, 1).iter().all(|o| o.end > after));
        assert!(rule.occurrences(Timestamp(i64::MAX), 3).is_empty());
        let early = rule.occurrences(Timestamp(i64::MIN), 1);
        assert!(early.iter().all(|o| o.end > Timestamp(i64::MIN)));
    }

    #[test]
    fn weekly_windows_follow_local_time_across_dst_in_both_directions() {
        // Europe/Amsterdam: CET (+01) in winter, CEST (+02) in summer;
        // 2026 spring forward on Mar 29, fall back on Oct 25 (both Sundays).
        let rows: &[(&str, WindowRule, &str, (&str, &str))] = &[
            (
                "winter: 02:00 local is 01:00Z",
                weekly(&[Weekday::Tuesday], 2, 0, 120, "Europe/Amsterdam"),
                "2026-01-01T00:00:00Z",
                ("2026-01-06T01:00:00Z", "2026-01-06T03:00:00Z"),
            ),
            (
                "summer: 02:00 local is 00:00Z",
                weekly(&[Weekday::Tuesday], 2, 0, 120, "Europe/Amsterdam"),
                "2026-06-01T00:00:00Z",
                ("2026-06-02T00:00:00Z", "2026-06-02T02:00:00Z"),
            ),
            (
                "spring-forward gap: 02:30 does not exist, starts 03:30 CEST",
                weekly(&[Weekday::Sunday], 2, 30, 60, "Europe/Amsterdam"),
                "2026-03-28T12:00:00Z",
                ("2026-03-29T01:30:00Z", "2026-03-29T02:30:00Z"),
            ),
            (
                "fall-back fold: 02:30 happens twice, the first (CEST) is used",
                weekly(&[Weekday::Sunday], 2, 30, 60, "Europe/Amsterdam"),
                "2026-10-24T12:00:00Z",
                ("2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z"),
            ),
            (
                "duration is real time across the fold: 01:00 CEST + 3 h ends 03:00 CET",
                weekly(&[Weekday::Sunday], 1, 0, 180, "Europe/Amsterdam"),
                "2026-10-24T12:00:00Z",
                ("2026-10-24T23:00:00Z", "2026-10-25T02:00:00Z"),
            ),
            (
                "US zone: America/New_York spring forward 2026-03-08",
                weekly(&[Weekday::Sunday], 2, 15, 30, "America/New_York"),
                "2026-03-07T00:00:00Z",
                ("2026-03-08T07:15:00Z", "2026-03-08T07:45:00Z"),
            ),
        ];
        for (what, rule, after, want) in rows {
            rule.validate().unwrap();
            let got = rule.occurrences(ms(after), 1);
            assert_eq!(got.len(), 1, "{what}");
            assert_eq!(
                utc(&got[0]),
                (want.0.to_string(), want.1.to_string()),
                "{what}"
            );
        }
    }

    #[test]
    fn an_open_occurrence_is_found_and_occurrences_come_in_order() {
        let rule = weekly(&[Weekday::Monday, Weekday::Thursday], 22, 0, 240, "UTC");
        // Monday 2026-01-05 23:00Z: inside Monday's 22:00–02:00 window.
        let t = ms("2026-01-05T23:00:00Z");
        let open = rule.open_at(t).expect("open");
        assert_eq!(
            utc(&open),
            ("2026-01-05T22:00:00Z".into(), "2026-01-06T02:00:00Z".into())
        );
        let next: Vec<_> = rule
            .occurrences(t, 3)
            .iter()
            .map(utc)
            .map(|p| p.0)
            .collect();
        assert_eq!(
            next,
            vec![
                "2026-01-05T22:00:00Z",
                "2026-01-08T22:00:00Z",
                "2026-01-12T22:00:00Z"
            ]
        );
        assert_eq!(
            rule.open_at(ms("2026-01-06T02:00:00Z")),
            None,
            "end is exclusive"
        );
    }

    #[test]
    fn one_off_windows_and_the_choice_across_several_rules() {
        let one = WindowRule::OneOff {
            start: ms("2026-02-01T10:00:00Z"),
            end: ms("2026-02-01T12:00:00Z"),
        };
        let weekly = weekly(&[Weekday::Sunday], 3, 0, 60, "UTC"); // Feb 1 2026 is a Sunday
        let (open, next) = open_or_next(&[one.clone(), weekly.clone()], ms("2026-02-01T09:00:00Z"));
        assert_eq!(open, None);
        assert_eq!(next.map(|o| utc(&o).0), Some("2026-02-01T10:00:00Z".into()));
        let (open, _) = open_or_next(&[one.clone(), weekly], ms("2026-02-01T11:00:00Z"));
        assert_eq!(open.map(|o| utc(&o).1), Some("2026-02-01T12:00:00Z".into()));
        assert!(
            one.occurrences(ms("2026-02-01T12:00:00Z"), 5).is_empty(),
            "past one-offs are gone"
        );
        assert_eq!(open_or_next(&[], ms("2026-02-01T11:00:00Z")), (None, None));
    }

    #[test]
    fn recurrences_follow_rfc5545_in_their_zone() {
        let rec = |rule: &str, minutes: i64| WindowRule::Recurrence {
            rule: rule.into(),
            duration: SignedDuration::from_mins(minutes),
        };
        // First Sunday of each month, 02:00 Amsterdam time, 3 h.
        let monthly = rec(
            "DTSTART;TZID=Europe/Amsterdam:20260104T020000\nRRULE:FREQ=MONTHLY;BYDAY=1SU",
            180,
        );
        monthly.validate().unwrap();
        let got: Vec<_> = monthly
            .occurrences(ms("2026-03-01T02:00:00Z"), 3)
            .iter()
            .map(utc)
            .collect();
        assert_eq!(
            got,
            vec![
                // March 1st is a Sunday (winter time, +01).
                ("2026-03-01T01:00:00Z".into(), "2026-03-01T04:00:00Z".into()),
                // April 5th: summer time (+02), still 02:00 local.
                ("2026-04-05T00:00:00Z".into(), "2026-04-05T03:00:00Z".into()),
                ("2026-05-03T00:00:00Z".into(), "2026-05-03T03:00:00Z".into()),
            ],
            "the one still open at the start comes first"
        );
        assert!(monthly.open_at(ms("2026-04-05T01:00:00Z")).is_some());
        assert!(monthly.open_at(ms("2026-04-05T03:00:00Z")).is_none());
        // Refused: unparsable, a floating local DTSTART, a bad duration.
        for bad in [
            rec("RRULE:FREQ=SOMETIMES", 60),
            rec("DTSTART:20260104T020000\nRRULE:FREQ=DAILY", 60),
            rec("DTSTART:20260104T020000Z\nRRULE:FREQ=DAILY", 0),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(
            rec("DTSTART:20260104T020000Z\nRRULE:FREQ=DAILY", 60)
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn invalid_rules_are_refused_with_a_reason() {
        assert!(matches!(
            weekly(&[Weekday::Monday], 2, 0, 60, "Mars/Olympus").validate(),
            Err(WindowError::UnknownTimeZone { .. })
        ));
        assert_eq!(
            weekly(&[], 2, 0, 60, "UTC").validate(),
            Err(WindowError::NoDays)
        );
        assert!(matches!(
            weekly(&[Weekday::Monday], 2, 0, 0, "UTC").validate(),
            Err(WindowError::BadDuration { .. })
        ));
        assert!(matches!(
            weekly(&[Weekday::Monday], 2, 0, 8 * 24 * 60, "UTC").validate(),
            Err(WindowError::BadDuration { .. })
        ));
        let t = ms("2026-01-01T00:00:00Z");
        assert_eq!(
            WindowRule::OneOff { start: t, end: t }.validate(),
            Err(WindowError::EmptyOneOff)
        );
        let _ = date(2026, 1, 1);
    }
}
