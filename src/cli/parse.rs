//! Pure parsers for the operator verbs' arguments (`K=V`, `BLOCK@VERSION`,
//! `BLOCK[:restart]`, durations, device statuses, server URLs), kept apart
//! from IO so each is pinned by a table of cases. They are clap value
//! parsers, so a bad argument is a usage error (exit 2) before any call.

use std::time::Duration;

use crate::grpc::pb;

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
