//! Typed identifiers, so a device id can never be passed where a block name is
//! expected, and every name is validated once, where it enters the system.
//! Names are `Arc<str>`: cloning one (which decisions do a lot) is a
//! reference-count bump, not an allocation.

use std::fmt;
use std::str::FromStr;

use super::shown::Shown;

/// Why a string was refused as an identifier. The value is kept as
/// [`Shown`]: a short prefix, however long the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} {value} is longer than {max} characters")]
    TooLong {
        kind: &'static str,
        value: Shown,
        max: usize,
    },
    #[error("{kind} {value} contains {ch:?}; allowed: {allowed}")]
    BadChar {
        kind: &'static str,
        value: Shown,
        ch: char,
        allowed: &'static str,
    },
    #[error("{kind} {value} must start with {allowed_first}")]
    BadStart {
        kind: &'static str,
        value: Shown,
        allowed_first: &'static str,
    },
}

fn validate(
    kind: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
    ok: fn(char) -> bool,
    first_ok: fn(char) -> bool,
    allowed_first: &'static str,
) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.chars().count() > max {
        return Err(IdError::TooLong {
            kind,
            value: Shown::new(value),
            max,
        });
    }
    if let Some(ch) = value.chars().find(|c| !ok(*c)) {
        return Err(IdError::BadChar {
            kind,
            value: Shown::new(value),
            ch,
            allowed,
        });
    }
    match value.chars().next() {
        Some(c) if first_ok(c) => Ok(()),
        _ => Err(IdError::BadStart {
            kind,
            value: Shown::new(value),
            allowed_first,
        }),
    }
}

fn lower_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
}
fn lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}
fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}
fn alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $allowed:literal, $ok:expr, $first:expr, $first_desc:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(std::sync::Arc<str>);

        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.0.hash(state)
            }
        }

        // Names handed out by one catalog share their allocation: comparing
        // the pointer first skips most string comparisons in hot maps.
        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                std::sync::Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
            }
        }
        impl Eq for $name {}
        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                if std::sync::Arc::ptr_eq(&self.0, &other.0) {
                    std::cmp::Ordering::Equal
                } else {
                    self.0.cmp(&other.0)
                }
            }
        }

        impl $name {
            /// Validates and wraps `value`.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate($kind, &value, $max, $allowed, $ok, $first, $first_desc)?;
                Ok(Self(value.into()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A block's name (`telemetry`, `controller`): a container's service name.
    BlockName, "block name", 63, "a-z, 0-9, '-', '_'", lower_name_char, lower_alnum, "a-z or 0-9"
);
string_id!(
    /// A fleet's identifier.
    FleetId, "fleet id", 63, "a-z, 0-9, '-', '_'", lower_name_char, lower_alnum, "a-z or 0-9"
);
string_id!(
    /// A device's identifier (often a serial number or UUID).
    DeviceId, "device id", 128, "A-Z, a-z, 0-9, '-', '_', '.', ':'", id_char, alnum, "a letter or digit"
);
string_id!(
    /// A release's identifier, chosen by the pipeline that builds it (`2026.11.24-3`).
    ReleaseId, "release id", 128, "A-Z, a-z, 0-9, '-', '_', '.', ':'", id_char, alnum, "a letter or digit"
);

string_id!(
    /// A device tag, e.g. the site it stands on (`site-north`, `region:eu`).
    Tag, "tag", 63, "A-Z, a-z, 0-9, '-', '_', '.', ':'", id_char, alnum, "a letter or digit"
);

string_id!(
    /// A `lockstep serve` replica's name among those sharing one database
    /// (a pod name, a host name with a suffix).
    ReplicaId, "replica id", 128, "A-Z, a-z, 0-9, '-', '_', '.', ':'", id_char, alnum, "a letter or digit"
);

string_id!(
    /// A device agent's life: a random id the agent makes when its state
    /// directory is created. A new one (state wiped, disk swapped, device
    /// re-flashed) starts a new fencing life for the device's locks.
    AgentEpoch, "agent epoch", 64, "A-Z, a-z, 0-9, '-', '_', '.', ':'", id_char, alnum, "a letter or digit"
);

string_id!(
    /// An API token's public identifier (the `<id>` of `lst_<id>_<secret>`):
    /// named in listings, revocations and the audit log; never a secret.
    TokenId, "token id", 32, "a-z, 0-9", lower_alnum, lower_alnum, "a-z or 0-9"
);

/// An operation's identifier, assigned by the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OperationId(pub i64);

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op-{}", self.0)
    }
}

/// A lock's generation: bumped by the device agent on every change of the lock.
/// Anything decided against an older generation is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Generation(pub u64);

impl Generation {
    /// The largest generation Lockstep keeps (2^63 − 1: databases store
    /// signed 64-bit integers). A report above it is refused as invalid.
    pub const MAX: Generation = Generation(i64::MAX as u64);
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}

/// Position of an intent in one device's outbox; strictly increasing, no gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct IntentSeq(pub u64);

impl fmt::Display for IntentSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Milliseconds since the Unix epoch, UTC. The domain never reads a clock; callers pass this in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_names_accept_compose_style_names() {
        for ok in ["a", "telemetry", "inverter-ctl", "ui_2", "0a"] {
            assert!(BlockName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn block_names_reject_bad_input_with_a_reason() {
        assert_eq!(
            BlockName::new(""),
            Err(IdError::Empty { kind: "block name" })
        );
        assert!(matches!(
            BlockName::new("Upper"),
            Err(IdError::BadChar { ch: 'U', .. })
        ));
        assert!(matches!(
            BlockName::new("-lead"),
            Err(IdError::BadStart { .. })
        ));
        assert!(matches!(
            BlockName::new("a".repeat(64)),
            Err(IdError::TooLong { max: 63, .. })
        ));
        assert!(BlockName::new("a".repeat(63)).is_ok());
        let msg = BlockName::new("a b").unwrap_err().to_string();
        assert!(msg.contains("block name") && msg.contains("' '"), "{msg}");
    }

    #[test]
    fn a_refused_name_is_shown_by_a_short_prefix_only() {
        let long = "a".repeat(200_000);
        let msg = BlockName::new(long.as_str()).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
        assert!(msg.contains("(200000 bytes)"), "{msg}");
        let msg = DeviceId::new(format!("{long} ")).unwrap_err().to_string();
        assert!(
            msg.len() < 200 && msg.starts_with("device id \"aaa"),
            "{msg}"
        );
    }

    #[test]
    fn device_ids_allow_serial_number_shapes() {
        assert!(DeviceId::new("INV-0042.site:3").is_ok());
        assert!(DeviceId::new(".hidden").is_err());
        assert!(DeviceId::new("a/b").is_err());
    }
}
