//! Pure parsers for the operator verbs' arguments (`K=V`, `BLOCK@VERSION`,
//! `BLOCK[:restart]`, durations, device statuses, server URLs, for
//! maintenance windows weekdays, local times, time zones, instants and
//! recurrences, and for rollouts batch amounts, percentages, error
//! thresholds and soaks), kept apart from IO so each is pinned by a table of
//! cases.
//! They are clap value parsers, so a bad argument is a usage error (exit 2)
//! before any call.

use std::time::Duration;

use crate::domain::{Amount, Strategy};
use crate::edge::grpc::pb;

/// `NAME=VALUE` (the value may be empty and may contain `=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

pub fn key_value(s: &str) -> Result<KeyValue, String> {
    match s.split_once('=') {
        Some(("", _)) => Err(format!("{s:?}: the name before '=' is empty")),
        Some((k, v)) => Ok(KeyValue {
            key: k.to_owned(),
            value: v.to_owned(),
        }),
        None => Err(format!("{s:?}: expected NAME=VALUE")),
    }
}

/// `BLOCK@VERSION`, the version a semantic version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockAt {
    pub block: String,
    pub version: String,
}

pub fn block_at(s: &str) -> Result<BlockAt, String> {
    let (block, version) = s
        .split_once('@')
        .ok_or_else(|| format!("{s:?}: expected BLOCK@VERSION, e.g. telemetry@1.25.3"))?;
    if block.is_empty() {
        return Err(format!("{s:?}: the block name before '@' is empty"));
    }
    semver::Version::parse(version)
        .map_err(|e| format!("{s:?}: {version:?} is not a semantic version: {e}"))?;
    Ok(BlockAt {
        block: block.to_owned(),
        version: version.to_owned(),
    })
}

/// `BLOCK` or `BLOCK:restart` (restart this block when BLOCK restarts or stops).
pub fn dependency(s: &str) -> Result<pb::Dependency, String> {
    let (block, restart) = match s.split_once(':') {
        None => (s, false),
        Some((b, "restart")) => (b, true),
        Some((_, other)) => {
            return Err(format!(
                "{s:?}: expected BLOCK or BLOCK:restart, not the suffix {other:?}"
            ));
        }
    };
    if block.is_empty() {
        return Err(format!("{s:?}: the block name is empty"));
    }
    Ok(pb::Dependency {
        block: block.to_owned(),
        restart,
    })
}

/// `250ms`, `60s`, `15m`, `2h`, `1d` (as `lockstep serve` takes them).
pub fn duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number followed by ms, s, m, h or d"))?;
    let per_unit = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit must be ms, s, m, h or d")),
    };
    n.checked_mul(per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?}: too long"))
}

/// `90s`, `15m`, `2h`, `1d`: the largest unit that divides `secs` evenly,
/// so that [`duration`] reads it back.
pub fn duration_text(secs: u64) -> String {
    match secs {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// How long each occurrence of a window lasts, in whole minutes (`90m`,
/// `2h`), at most 7 days as the server allows.
pub fn window_minutes(s: &str) -> Result<u32, String> {
    let d = duration(s)?;
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || secs % 60 != 0 {
        return Err(format!("{s:?}: must be whole minutes, e.g. 90m or 2h"));
    }
    match u32::try_from(secs / 60) {
        Ok(m @ 1..=10_080) => Ok(m),
        _ => Err(format!("{s:?}: must be between 1m and 7d")),
    }
}

/// A fleet's deferral limit in whole seconds (`30m`, `1d`), 1 s to a year.
pub fn deferral(s: &str) -> Result<u64, String> {
    let d = duration(s)?;
    if d.subsec_nanos() != 0 {
        return Err(format!("{s:?}: must be whole seconds"));
    }
    match d.as_secs() {
        secs @ 1..=31_536_000 => Ok(secs),
        _ => Err(format!("{s:?}: must be between 1s and 365d")),
    }
}

/// An id the server numbers from 1 (a rollout's).
pub fn positive_id(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?}: expected a positive id, e.g. 7")),
    }
}

/// A number of devices or failures: `50` (at least 1 `what`) or `10%`
/// (1% to 100%).
fn amount(s: &str, what: &str) -> Result<Amount, String> {
    let t = s.trim();
    if let Some(p) = t.strip_suffix('%') {
        return match p.trim().parse::<u8>() {
            Ok(p @ 1..=100) => Ok(Amount::Percent(p)),
            _ => Err(format!("{s:?}: a percentage must be 1% to 100%")),
        };
    }
    match t.parse::<u32>() {
        Ok(0) => Err(format!("{s:?}: must be at least 1 {what}")),
        Ok(n) => Ok(Amount::Count(n)),
        Err(_) => Err(format!(
            "{s:?}: expected a number of {what}s (e.g. 50) or a percentage (e.g. 10%)"
        )),
    }
}

/// One rollout batch: `50` devices or `10%` of the rollout's devices.
pub fn batch_amount(s: &str) -> Result<Amount, String> {
    amount(s, "device")
}

/// Failures that stop a rollout: `2`, or `5%` of the devices that finished.
pub fn error_threshold(s: &str) -> Result<Amount, String> {
    amount(s, "failure")
}

/// A percentage, `95` or `95%`, 1 to 100.
pub fn percent(s: &str) -> Result<u8, String> {
    let t = s.trim();
    match t.strip_suffix('%').unwrap_or(t).trim().parse::<u8>() {
        Ok(p @ 1..=100) => Ok(p),
        _ => Err(format!(
            "{s:?}: expected a percentage from 1 to 100, e.g. 95"
        )),
    }
}

/// How long a rollout soaks after each batch, in whole seconds (`0s`,
/// `10m`, `2h`), at most 30 days as the server allows.
pub fn soak(s: &str) -> Result<u64, String> {
    let d = duration(s)?;
    if d.subsec_nanos() != 0 {
        return Err(format!("{s:?}: must be whole seconds"));
    }
    match d.as_secs() {
        secs if secs <= Strategy::MAX_SOAK_SECONDS => Ok(secs),
        _ => Err(format!("{s:?}: must be at most 30d")),
    }
}

/// ISO weekdays, 1 = Monday ... 7 = Sunday, sorted and without repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weekdays(pub Vec<u32>);

const WEEKDAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// `Mon` for 1 ... `Sun` for 7.
pub fn weekday_name(day: u32) -> String {
    usize::try_from(day)
        .ok()
        .and_then(|d| d.checked_sub(1))
        .and_then(|d| WEEKDAYS.get(d))
        .map_or_else(
            || day.to_string(),
            |n| {
                let mut short: String = n.chars().take(3).collect();
                short[..1].make_ascii_uppercase();
                short
            },
        )
}

fn weekday(s: &str) -> Option<u32> {
    let s = s.trim().to_ascii_lowercase();
    if let Ok(n) = s.parse::<u32>() {
        return (1..=7).contains(&n).then_some(n);
    }
    // A name or any prefix of at least three letters: mon, tues, wednesday.
    if s.len() < 3 {
        return None;
    }
    WEEKDAYS
        .iter()
        .position(|d| d.starts_with(&s))
        .and_then(|i| u32::try_from(i + 1).ok())
}

/// `mon,wed,fri`, `mon-fri`, `1-5`, `sat-sun`, `fri-mon` (wrapping), `daily`.
pub fn weekdays(s: &str) -> Result<Weekdays, String> {
    let expected = "expected weekdays such as mon,wed,fri or mon-fri or 1-5 (1 = Monday)";
    if s.trim().eq_ignore_ascii_case("daily") {
        return Ok(Weekdays((1..=7).collect()));
    }
    let mut days = std::collections::BTreeSet::new();
    for part in s.split(',') {
        let day = |d: &str| {
            weekday(d).ok_or_else(|| format!("{s:?}: {d:?} is not a weekday; {expected}"))
        };
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (day(from)?, day(to)?);
                let mut d = from;
                loop {
                    days.insert(d);
                    if d == to {
                        break;
                    }
                    d = d % 7 + 1;
                }
            }
            None => {
                days.insert(day(part)?);
            }
        }
    }
    Ok(Weekdays(days.into_iter().collect()))
}

/// A local time of day, `HH:MM` (24 h), printed back as `HH:MM`.
pub fn local_time(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?}: expected a local time HH:MM, e.g. 02:00 or 22:30");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(format!("{h:02}:{m:02}"))
}

/// An IANA time-zone name the server knows (`Europe/Amsterdam`, `UTC`).
pub fn time_zone(s: &str) -> Result<String, String> {
    let s = s.trim();
    jiff::tz::TimeZone::get(s)
        .map(|_| s.to_owned())
        .map_err(|_| format!("{s:?} is not an IANA time zone, e.g. Europe/Amsterdam or UTC"))
}

/// An instant in RFC 3339 (`2026-11-24T22:00:00Z`, `2026-11-24T23:00:00+01:00`),
/// as Unix milliseconds.
pub fn instant(s: &str) -> Result<i64, String> {
    s.trim()
        .parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| {
            format!("{s:?}: expected a time in RFC 3339 with a zone, e.g. 2026-11-24T22:00:00Z")
        })
}

/// An RFC 5545 recurrence: `DTSTART;TZID=Europe/Amsterdam:20260104T020000`
/// and `RRULE:FREQ=MONTHLY;BYDAY=1SU`, one property a line. On a command
/// line the properties may be separated by spaces or a literal `\n` too;
/// the server checks the rule itself.
pub fn rrule(s: &str) -> Result<String, String> {
    let lines: Vec<&str> = s.split("\\n").flat_map(str::split_whitespace).collect();
    if !lines
        .iter()
        .any(|l| l.to_ascii_uppercase().starts_with("DTSTART"))
    {
        return Err(format!(
            "{s:?}: expected a DTSTART (e.g. DTSTART;TZID=Europe/Amsterdam:20260104T020000) and an RRULE line"
        ));
    }
    if !lines
        .iter()
        .any(|l| l.to_ascii_uppercase().starts_with("RRULE:"))
    {
        return Err(format!(
            "{s:?}: expected an RRULE line (e.g. RRULE:FREQ=MONTHLY;BYDAY=1SU) after DTSTART"
        ));
    }
    Ok(lines.join("\n"))
}

/// An operation kind a fleet policy names (`os_update`, `reboot`, ...), or
/// `none` for an empty list.
pub fn policy_kind(s: &str) -> Result<String, String> {
    let k = s.trim().to_ascii_lowercase().replace('-', "_");
    if k == "none" || crate::domain::FleetPolicy::KINDS.contains(&k.as_str()) {
        Ok(k)
    } else {
        Err(format!(
            "{s:?} is not an operation kind; one of: {}, or none",
            crate::domain::FleetPolicy::KINDS.join(", ")
        ))
    }
}

/// The kinds a policy flag names: `none` alone means no kinds.
pub fn policy_kinds(flag: &str, kinds: Vec<String>) -> Result<Vec<String>, String> {
    if kinds.iter().any(|k| k == "none") {
        if kinds.len() > 1 {
            return Err(format!("{flag}: none cannot be combined with other kinds"));
        }
        return Ok(Vec::new());
    }
    let mut kinds = kinds;
    kinds.sort();
    kinds.dedup();
    Ok(kinds)
}

/// A device status filter: `in_sync`, `in-sync`, `IN_SYNC` or
/// `DEVICE_STATUS_IN_SYNC`.
pub fn device_status(s: &str) -> Result<pb::DeviceStatus, String> {
    let upper = s.trim().to_ascii_uppercase().replace('-', "_");
    let name = if upper.starts_with("DEVICE_STATUS_") {
        upper
    } else {
        format!("DEVICE_STATUS_{upper}")
    };
    match pb::DeviceStatus::from_str_name(&name) {
        Some(pb::DeviceStatus::Unspecified) | None => Err(format!(
            "{s:?} is not a device status; one of: {}",
            device_status_names().join(", ")
        )),
        Some(status) => Ok(status),
    }
}

/// Every device status an operator can filter on, as the CLI prints them.
pub fn device_status_names() -> Vec<String> {
    (1..)
        .map_while(|n| pb::DeviceStatus::try_from(n).ok())
        .map(device_status_name)
        .collect()
}

/// `in_sync` for `DEVICE_STATUS_IN_SYNC`.
pub fn device_status_name(s: pb::DeviceStatus) -> String {
    enum_name(s.as_str_name(), "DEVICE_STATUS_")
}

/// `update_restart` for `REASON_UPDATE_RESTART`.
pub fn reason_name(r: pb::Reason) -> String {
    enum_name(r.as_str_name(), "REASON_")
}

/// `image` for `RESTART_CAUSE_IMAGE`.
pub fn cause_name(c: pb::RestartCause) -> String {
    enum_name(c.as_str_name(), "RESTART_CAUSE_")
}

fn enum_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
}

/// The URL to dial: `host:port` alone means `http://host:port`.
pub fn server_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if s.contains("://") {
        if !(s.starts_with("http://") || s.starts_with("https://")) {
            return Err("the scheme must be http or https".into());
        }
        Ok(s.to_owned())
    } else {
        Ok(format!("http://{s}"))
    }
}

/// `2026-11-24T22:11:03Z` for a Unix time in milliseconds; `-` for 0.
pub fn timestamp(unix_ms: i64) -> String {
    if unix_ms == 0 {
        return "-".into();
    }
    let secs = unix_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values() {
        let ok = [
            ("GAIN=0.7", ("GAIN", "0.7")),
            ("EMPTY=", ("EMPTY", "")),
            ("URL=a=b=c", ("URL", "a=b=c")),
            ("SPACED=two words", ("SPACED", "two words")),
        ];
        for (input, (k, v)) in ok {
            assert_eq!(
                key_value(input),
                Ok(KeyValue {
                    key: k.into(),
                    value: v.into()
                }),
                "{input}"
            );
        }
        for bad in ["GAIN", "=0.7", ""] {
            assert!(key_value(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn block_at_versions() {
        let ok = [
            ("telemetry@1.25.3", ("telemetry", "1.25.3")),
            ("ui@2.0.0-rc.1", ("ui", "2.0.0-rc.1")),
            ("a@0.0.1+build.5", ("a", "0.0.1+build.5")),
        ];
        for (input, (b, v)) in ok {
            assert_eq!(
                block_at(input),
                Ok(BlockAt {
                    block: b.into(),
                    version: v.into()
                }),
                "{input}"
            );
        }
        for bad in [
            "telemetry",
            "telemetry-1.25.3",
            "@1.0.0",
            "telemetry@",
            "telemetry@four",
            "telemetry@1.2",
            "a@1.0.0@2.0.0",
        ] {
            assert!(block_at(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn dependencies() {
        let ok = [
            ("telemetry", ("telemetry", false)),
            ("telemetry:restart", ("telemetry", true)),
        ];
        for (input, (b, restart)) in ok {
            assert_eq!(
                dependency(input),
                Ok(pb::Dependency {
                    block: b.into(),
                    restart
                }),
                "{input}"
            );
        }
        for bad in [
            "",
            ":restart",
            "telemetry:",
            "telemetry:true",
            "a:restart:x",
        ] {
            assert!(dependency(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn durations() {
        let ok = [
            ("250ms", Duration::from_millis(250)),
            ("0s", Duration::ZERO),
            ("60s", Duration::from_secs(60)),
            ("15m", Duration::from_secs(900)),
            ("2h", Duration::from_secs(7200)),
            ("1d", Duration::from_secs(86_400)),
        ];
        for (input, want) in ok {
            assert_eq!(duration(input), Ok(want), "{input}");
        }
        for bad in ["", "60", "s", "1.5s", "5w", "-1s", "99999999999999999999d"] {
            assert!(duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn duration_texts_read_back() {
        let cases = [
            (0, "0s"),
            (45, "45s"),
            (90, "90s"),
            (5400, "90m"),
            (7200, "2h"),
            (86_400, "1d"),
            (90_000, "25h"),
        ];
        for (secs, want) in cases {
            assert_eq!(duration_text(secs), want, "{secs}");
            assert_eq!(duration(want), Ok(Duration::from_secs(secs)), "{want}");
        }
    }

    #[test]
    fn window_durations_are_whole_minutes() {
        for (input, want) in [("1m", 1), ("90m", 90), ("2h", 120), ("7d", 10_080)] {
            assert_eq!(window_minutes(input), Ok(want), "{input}");
        }
        for bad in ["0m", "90s", "1500ms", "8d", "2", "two hours"] {
            assert!(window_minutes(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn deferral_limits() {
        for (input, want) in [
            ("1s", 1),
            ("30m", 1800),
            ("1d", 86_400),
            ("365d", 31_536_000),
        ] {
            assert_eq!(deferral(input), Ok(want), "{input}");
        }
        for bad in ["0s", "1500ms", "366d", "1"] {
            assert!(deferral(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn rollout_amounts_are_counts_or_percentages() {
        let ok = [
            ("50", Amount::Count(50)),
            ("1", Amount::Count(1)),
            ("10%", Amount::Percent(10)),
            ("100%", Amount::Percent(100)),
            (" 25% ", Amount::Percent(25)),
        ];
        for (input, want) in ok {
            assert_eq!(batch_amount(input), Ok(want), "{input}");
            assert_eq!(error_threshold(input), Ok(want), "{input}");
        }
        for (bad, needle) in [
            ("0", "at least 1 device"),
            ("0%", "1% to 100%"),
            ("150%", "1% to 100%"),
            ("-1", "a number of devices"),
            ("%", "1% to 100%"),
            ("ten", "a number of devices"),
            ("", "a number of devices"),
            ("1.5%", "1% to 100%"),
        ] {
            let e = batch_amount(bad).unwrap_err();
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
        assert!(
            error_threshold("0")
                .unwrap_err()
                .contains("at least 1 failure")
        );
    }

    #[test]
    fn positive_ids() {
        assert_eq!(positive_id("7"), Ok(7));
        for bad in ["0", "-1", "seven", ""] {
            assert!(positive_id(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn percentages_and_soaks() {
        for (input, want) in [("95", 95), ("95%", 95), ("1", 1), ("100", 100)] {
            assert_eq!(percent(input), Ok(want), "{input}");
        }
        for bad in ["0", "101", "101%", "-5", "half", ""] {
            assert!(percent(bad).is_err(), "{bad:?} should be refused");
        }
        for (input, want) in [("0s", 0), ("90s", 90), ("10m", 600), ("30d", 2_592_000)] {
            assert_eq!(soak(input), Ok(want), "{input}");
        }
        for bad in ["10", "31d", "1500ms", "soon"] {
            assert!(soak(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn weekday_lists_and_ranges() {
        let ok: [(&str, &[u32]); 10] = [
            ("mon", &[1]),
            ("Mon,Wed,FRI", &[1, 3, 5]),
            ("mon-fri", &[1, 2, 3, 4, 5]),
            ("1-5", &[1, 2, 3, 4, 5]),
            ("sat-sun", &[6, 7]),
            ("fri-mon", &[1, 5, 6, 7]),
            ("tuesday,thurs", &[2, 4]),
            ("7,1,7", &[1, 7]),
            ("daily", &[1, 2, 3, 4, 5, 6, 7]),
            ("wed-wed", &[3]),
        ];
        for (input, want) in ok {
            assert_eq!(weekdays(input), Ok(Weekdays(want.to_vec())), "{input}");
        }
        for bad in [
            "", "0", "8", "mo", "monday-", "-fri", "funday", "mon,,fri", "1-9",
        ] {
            assert!(weekdays(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(weekday_name(1), "Mon");
        assert_eq!(weekday_name(7), "Sun");
        assert_eq!(weekday_name(9), "9");
    }

    #[test]
    fn local_times() {
        for (input, want) in [("02:00", "02:00"), ("2:30", "02:30"), ("23:59", "23:59")] {
            assert_eq!(local_time(input).as_deref(), Ok(want), "{input}");
        }
        for bad in [
            "", "24:00", "12:60", "0200", "2:3", "02:00:00", "ab:cd", "-1:00",
        ] {
            assert!(local_time(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn time_zones_are_iana_names() {
        for ok in ["Europe/Amsterdam", "America/New_York", "UTC"] {
            assert_eq!(time_zone(ok).as_deref(), Ok(ok));
        }
        for bad in ["", "Mars/Olympus", "CEST+1"] {
            assert!(time_zone(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn instants_are_rfc3339_with_a_zone() {
        let cases = [
            ("2026-11-24T22:11:03Z", 1_795_558_263_000),
            ("2026-11-24T23:11:03+01:00", 1_795_558_263_000),
            ("2026-11-24T22:11:03.5Z", 1_795_558_263_500),
        ];
        for (input, want) in cases {
            assert_eq!(instant(input), Ok(want), "{input}");
        }
        // What the tables print reads back.
        assert_eq!(
            instant(&timestamp(1_795_558_263_000)),
            Ok(1_795_558_263_000)
        );
        for bad in ["", "2026-11-24", "2026-11-24T22:11:03", "tomorrow"] {
            assert!(instant(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn recurrences_take_one_property_a_line() {
        let want = "DTSTART;TZID=Europe/Amsterdam:20260104T020000\nRRULE:FREQ=MONTHLY;BYDAY=1SU";
        for input in [
            want,
            "DTSTART;TZID=Europe/Amsterdam:20260104T020000 RRULE:FREQ=MONTHLY;BYDAY=1SU",
            r"DTSTART;TZID=Europe/Amsterdam:20260104T020000\nRRULE:FREQ=MONTHLY;BYDAY=1SU",
        ] {
            assert_eq!(rrule(input).as_deref(), Ok(want), "{input}");
        }
        for bad in [
            "",
            "RRULE:FREQ=DAILY",
            "DTSTART:20260104T020000Z",
            "FREQ=DAILY",
        ] {
            assert!(rrule(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn policy_kinds_or_none() {
        assert_eq!(policy_kind("os_update").as_deref(), Ok("os_update"));
        assert_eq!(policy_kind("OS-UPDATE").as_deref(), Ok("os_update"));
        assert_eq!(policy_kind("none").as_deref(), Ok("none"));
        assert!(policy_kind("nap").is_err());
        let k = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            policy_kinds("--needs-window", k(&["reboot", "os_update", "reboot"])),
            Ok(k(&["os_update", "reboot"]))
        );
        assert_eq!(policy_kinds("--needs-window", k(&["none"])), Ok(vec![]));
        assert!(policy_kinds("--needs-window", k(&["none", "reboot"])).is_err());
    }

    #[test]
    fn device_statuses() {
        let ok = [
            ("in_sync", pb::DeviceStatus::InSync),
            ("in-sync", pb::DeviceStatus::InSync),
            ("IN_SYNC", pb::DeviceStatus::InSync),
            ("DEVICE_STATUS_WAITING_LOCK", pb::DeviceStatus::WaitingLock),
            ("offline", pb::DeviceStatus::Offline),
            ("unknown", pb::DeviceStatus::Unknown),
        ];
        for (input, want) in ok {
            assert_eq!(device_status(input), Ok(want), "{input}");
        }
        for bad in ["", "unspecified", "sync", "in sync"] {
            assert!(device_status(bad).is_err(), "{bad:?} should be refused");
        }
        let names = device_status_names();
        assert_eq!(names.first().map(String::as_str), Some("unknown"));
        assert!(names.iter().any(|n| n == "waiting_lock"), "{names:?}");
        assert!(!names.iter().any(|n| n == "unspecified"), "{names:?}");
    }

    #[test]
    fn enum_names_read_as_the_readme_spells_them() {
        assert_eq!(reason_name(pb::Reason::UpdateRestart), "update_restart");
        assert_eq!(
            reason_name(pb::Reason::DependencyRestart),
            "dependency_restart"
        );
        assert_eq!(cause_name(pb::RestartCause::Image), "image");
        assert_eq!(device_status_name(pb::DeviceStatus::InSync), "in_sync");
    }

    #[test]
    fn server_urls() {
        let ok = [
            ("http://127.0.0.1:50051", "http://127.0.0.1:50051"),
            (
                "https://lockstep.example:443",
                "https://lockstep.example:443",
            ),
            ("127.0.0.1:50051", "http://127.0.0.1:50051"),
            (" localhost:1 ", "http://localhost:1"),
        ];
        for (input, want) in ok {
            assert_eq!(server_url(input).as_deref(), Ok(want), "{input}");
        }
        for bad in ["", "  ", "ftp://x:1"] {
            assert!(server_url(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn timestamps() {
        let cases = [
            (0, "-"),
            (1, "1970-01-01T00:00:00Z"),
            (951_782_400_000, "2000-02-29T00:00:00Z"),
            (1_795_558_263_000, "2026-11-24T22:11:03Z"),
            (4_107_542_399_999, "2100-02-28T23:59:59Z"),
            (-1000, "1969-12-31T23:59:59Z"),
        ];
        for (ms, want) in cases {
            assert_eq!(timestamp(ms), want, "{ms}");
        }
    }
}
