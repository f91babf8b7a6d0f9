//! Every size and rate limit of Lockstep's edges, in one place (the README's
//! limits table lists them). Input over a field limit is refused where it
//! enters — `INVALID_ARGUMENT` naming the field on gRPC, a 400 naming it on
//! the dashboard and the agent's local API — so nothing downstream ever holds
//! an unbounded amount of a caller's data. Limits that are domain rules (the
//! size of a recurrence) live in the domain and are re-exported here.

use std::borrow::Cow;
use std::time::Duration;

pub use crate::domain::window::{MAX_RECURRENCE_BYTES, MAX_RECURRENCE_LINES};

// ---------------------------------------------------------------- transport

/// Largest gRPC message decoded or encoded, per message, on every service
/// (the server's and the agent's and CLI's clients).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Largest HTTP/2 header list (gRPC metadata) of one call.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Largest JSON body the web dashboard accepts.
pub const MAX_DASHBOARD_BODY_BYTES: usize = 64 * 1024;
/// Largest body the agent's local API accepts.
pub const MAX_LOCAL_API_BODY_BYTES: usize = 16 * 1024;
/// Largest agent manifest file.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;
/// How long a TLS handshake on the dashboard may take.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest error message sent: a gRPC status message (`grpc-message`, a
/// header that common clients refuse beyond 16 KiB of metadata) or a
/// dashboard error. Errors show a refused value by a short prefix
/// (`domain::shown`); this is the safety net for anything else.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

// ------------------------------------------------------------ request fields

/// Env variables in one map or one `SetEnv`/`UnsetEnv` call.
pub const MAX_ENV_VARS: usize = 256;
/// Bytes of one env value.
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
/// Block names one env variable (or a force) is scoped to.
pub const MAX_SCOPE_BLOCKS: usize = 64;
/// Tags on one device.
pub const MAX_TAGS: usize = 32;
/// Blocks in one release (and blocks an agent reports).
pub const MAX_RELEASE_BLOCKS: usize = 256;
/// Dependencies of one block version.
pub const MAX_DEPENDENCIES: usize = 64;
/// Entrypoint plus command arguments of one block version.
pub const MAX_COMMAND_ARGS: usize = 256;
/// Bytes of one argument, a working directory, a label value.
pub const MAX_ARG_BYTES: usize = 4096;
/// Labels on one block version.
pub const MAX_LABELS: usize = 64;
/// Bytes of a version string (semantic version, OS version, agent version).
pub const MAX_VERSION_BYTES: usize = 128;
/// Bytes of a block's description.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
/// Bytes of a fleet's display name.
pub const MAX_FLEET_NAME_BYTES: usize = 256;
/// Bytes of an actor (who did it).
pub const MAX_ACTOR_BYTES: usize = 256;
/// Bytes of a free-text reason or message (force, cancel, decline, refuse,
/// defer, a failure's error, rollout pause/resume/abort, token revocation).
pub const MAX_TEXT_BYTES: usize = 4096;
/// Characters of an API token's name (no control characters).
pub const MAX_TOKEN_NAME_CHARS: usize = 128;
/// Fleets one API token may be scoped to.
pub const MAX_TOKEN_FLEETS: usize = 256;
/// Bytes of an audit filter (action, subject).
pub const MAX_AUDIT_FILTER_BYTES: usize = 256;
/// Bytes of an IANA time-zone name.
pub const MAX_TIME_ZONE_BYTES: usize = 64;
/// Entries of a weekly window's day list.
pub const MAX_WEEK_DAYS: usize = 7;
/// Paths in one update mask.
pub const MAX_MASK_PATHS: usize = 16;
/// Operation kinds listed in one policy setting.
pub const MAX_POLICY_KINDS: usize = 16;
/// Lock states in one agent lock report (or hello).
pub const MAX_LOCKS: usize = 256;
/// Bytes of an operation's progress phase.
pub const MAX_PHASE_BYTES: usize = 64;

// -------------------------------------------------------------------- rates

/// Messages per second one agent stream may send, sustained; beyond its
/// burst the stream is ended with `RESOURCE_EXHAUSTED` (the agent reconnects
/// with backoff and resends its state, so nothing is lost).
pub const AGENT_MESSAGES_PER_SEC: u32 = 50;
/// Messages an agent stream may send at once before the rate applies.
pub const AGENT_MESSAGE_BURST: u32 = 500;
/// Clients (tokens or peer addresses) the unary rate limiter tracks at once;
/// beyond it, new clients share one bucket.
pub const MAX_RATE_CLIENTS: usize = 10_000;

/// `message` cut to [`MAX_ERROR_MESSAGE_BYTES`] at a character boundary,
/// ending in `…` and its full length if it was cut.
pub fn capped_message(message: &str) -> Cow<'_, str> {
    if message.len() <= MAX_ERROR_MESSAGE_BYTES {
        return Cow::Borrowed(message);
    }
    // Room for the suffix: "… (" + up to 20 digits + " bytes)".
    let keep = crate::domain::prefix_at_most(message, MAX_ERROR_MESSAGE_BYTES - 32);
    Cow::Owned(format!("{keep}… ({} bytes)", message.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_message_is_capped_at_a_character_boundary() {
        let fits = "é".repeat(MAX_ERROR_MESSAGE_BYTES / 2);
        let cases = [("short", "short".to_owned()), (fits.as_str(), fits.clone())];
        for (message, want) in cases {
            assert_eq!(capped_message(message), want);
        }
        for long in [
            "x".repeat(200_000),
            "é".repeat(100_000),
            format!("a{}", "日".repeat(5000)),
        ] {
            let capped = capped_message(&long);
            assert!(capped.len() <= MAX_ERROR_MESSAGE_BYTES, "{}", capped.len());
            assert!(
                capped.ends_with(&format!("… ({} bytes)", long.len())),
                "{capped}"
            );
            let kept = capped.split('…').next().unwrap_or_default();
            assert!(long.starts_with(kept) && kept.len() > 900, "{}", kept.len());
        }
    }
}
