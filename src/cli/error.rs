//! `CliError`: everything an operator verb can fail with, each variant
//! carrying what the operator needs to act on it, and the one mapping from
//! failures to the documented exit codes that scripts branch on.

use std::path::PathBuf;
use std::time::Duration;

use tonic::Code;

/// Exit codes of the operator verbs.
pub mod exit {
    /// `op wait`: the operation ended failed, cancelled or superseded;
    /// `rollout watch`: the rollout ended aborted or superseded.
    pub const OPERATION_FAILED: i32 = 1;
    /// Bad flags or arguments, or `INVALID_ARGUMENT` from the server.
    pub const USAGE: i32 = 2;
    pub const NOT_FOUND: i32 = 3;
    /// `ALREADY_EXISTS` or `FAILED_PRECONDITION`.
    pub const CONFLICT: i32 = 4;
    /// The server cannot be reached, or answers `UNAVAILABLE`.
    pub const UNAVAILABLE: i32 = 5;
    pub const OTHER: i32 = 6;
    /// `UNAUTHENTICATED` (no, a bad, revoked or expired token) or
    /// `PERMISSION_DENIED` (the token's role or fleets do not allow it).
    pub const DENIED: i32 = 7;
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Arguments that parsed but make no sense together.
    #[error("{message}")]
    Usage { message: String },
    #[error("--server {server:?} is not a usable URL: {reason}")]
    BadServer { server: String, reason: String },
    #[error("--token cannot be sent as gRPC metadata (it must be visible ASCII)")]
    BadToken,
    #[error("cannot read the token file {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("UNAVAILABLE: cannot reach the server at {server}: {reason}")]
    Connect { server: String, reason: String },
    /// The server refused a call; shown as `CODE: message`.
    #[error("{}", rpc_line(status))]
    Rpc {
        call: &'static str,
        status: tonic::Status,
    },
    /// The server's answer lacks something it always sends.
    #[error("the server's {call} answer has no {field}")]
    Malformed {
        call: &'static str,
        field: &'static str,
    },
    #[error("cannot read {}: {source}", path.display())]
    ReadInput {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    BadInput { path: PathBuf, message: String },
    #[error("{action} {}: {source}", path.display())]
    WriteOutput {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing to stdout: {source}")]
    Stdout { source: std::io::Error },
    #[error("operation {id} {status}{}", detail(error))]
    OperationFailed {
        id: u64,
        status: String,
        error: String,
    },
    #[error("operation {id} is still {status} after {}s", waited.as_secs_f64())]
    WaitTimedOut {
        id: u64,
        status: String,
        waited: Duration,
    },
    /// Something the verb looked up in a list is not there.
    #[error("NOT_FOUND: {what} not found")]
    NotFound { what: String },
    /// `approval approve`: the approval was already decided.
    #[error("FAILED_PRECONDITION: approval {id} is {status}, not requested")]
    AlreadyDecided { id: u64, status: String },
    /// `rollout watch`: the rollout ended without completing.
    #[error("rollout {id} {state}{}", detail(message))]
    RolloutEnded {
        id: u64,
        state: String,
        message: String,
    },
    /// `rollout watch`: the stream ended while the rollout was still active
    /// (the server stopped, say).
    #[error(
        "UNAVAILABLE: the server ended the watch while rollout {id} was still {state}; watch again to carry on"
    )]
    WatchEnded { id: u64, state: String },
}

impl CliError {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        CliError::Usage {
            message: message.into(),
        }
    }

    /// The process exit code for this failure (see [`exit`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::OperationFailed { .. } | CliError::RolloutEnded { .. } => {
                exit::OPERATION_FAILED
            }
            CliError::Usage { .. }
            | CliError::BadServer { .. }
            | CliError::BadToken
            | CliError::TokenFile { .. }
            | CliError::ReadInput { .. }
            | CliError::BadInput { .. } => exit::USAGE,
            CliError::Connect { .. } | CliError::WatchEnded { .. } => exit::UNAVAILABLE,
            CliError::NotFound { .. } => exit::NOT_FOUND,
            CliError::AlreadyDecided { .. } => exit::CONFLICT,
            CliError::Rpc { status, .. } => code_exit(status.code()),
            CliError::Malformed { .. }
            | CliError::WriteOutput { .. }
            | CliError::Stdout { .. }
            | CliError::WaitTimedOut { .. } => exit::OTHER,
        }
    }
}

/// The exit code for a gRPC status code.
pub fn code_exit(code: Code) -> i32 {
    match code {
        Code::Ok => 0,
        Code::InvalidArgument | Code::OutOfRange => exit::USAGE,
        Code::NotFound => exit::NOT_FOUND,
        Code::AlreadyExists | Code::FailedPrecondition => exit::CONFLICT,
        Code::Unavailable | Code::DeadlineExceeded => exit::UNAVAILABLE,
        Code::Unauthenticated | Code::PermissionDenied => exit::DENIED,
        _ => exit::OTHER,
    }
}

/// The canonical name of a gRPC status code (`NOT_FOUND`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn rpc_line(status: &tonic::Status) -> String {
    let name = code_name(status.code());
    // One line, whatever the server put in its message.
    let message = status.message().split_whitespace().collect::<Vec<_>>();
    let line = if message.is_empty() {
        name.to_owned()
    } else {
        format!("{name}: {}", message.join(" "))
    };
    if status.code() == Code::Unauthenticated {
        format!(
            "{line} (give an API token with --token or --token-file, or LOCKSTEP_TOKEN or LOCKSTEP_TOKEN_FILE)"
        )
    } else {
        line
    }
}

fn detail(error: &str) -> String {
    if error.is_empty() {
        String::new()
    } else {
        format!(": {error}")
    }
}

/// Adds the call's name to a failed gRPC call and unwraps its answer.
pub(crate) trait Call<T> {
    fn during(self, call: &'static str) -> Result<T, CliError>;
}

impl<T> Call<T> for Result<tonic::Response<T>, tonic::Status> {
    fn during(self, call: &'static str) -> Result<T, CliError> {
        self.map(tonic::Response::into_inner)
            .map_err(|status| CliError::Rpc { call, status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_the_documented_exit_codes() {
        let cases = [
            (Code::InvalidArgument, 2),
            (Code::OutOfRange, 2),
            (Code::NotFound, 3),
            (Code::AlreadyExists, 4),
            (Code::FailedPrecondition, 4),
            (Code::Unavailable, 5),
            (Code::DeadlineExceeded, 5),
            (Code::Internal, 6),
            (Code::Unauthenticated, 7),
            (Code::PermissionDenied, 7),
            (Code::Aborted, 6),
        ];
        for (code, want) in cases {
            let e = CliError::Rpc {
                call: "X",
                status: tonic::Status::new(code, "m"),
            };
            assert_eq!(e.exit_code(), want, "{code:?}");
        }
    }

    #[test]
    fn errors_read_as_one_line() {
        let cases: [(CliError, &str, i32); 10] = [
            (
                CliError::Rpc {
                    call: "GetDevice",
                    status: tonic::Status::not_found("device ghost not found"),
                },
                "NOT_FOUND: device ghost not found",
                3,
            ),
            (
                CliError::Rpc {
                    call: "GetDevice",
                    status: tonic::Status::internal("two\nlines"),
                },
                "INTERNAL: two lines",
                6,
            ),
            (
                CliError::Rpc {
                    call: "GetDevice",
                    status: tonic::Status::unavailable(""),
                },
                "UNAVAILABLE",
                5,
            ),
            (
                CliError::OperationFailed {
                    id: 7,
                    status: "failed".into(),
                    error: "hook exited 1".into(),
                },
                "operation 7 failed: hook exited 1",
                1,
            ),
            (
                CliError::OperationFailed {
                    id: 7,
                    status: "cancelled".into(),
                    error: String::new(),
                },
                "operation 7 cancelled",
                1,
            ),
            (
                CliError::Connect {
                    server: "http://127.0.0.1:1".into(),
                    reason: "connection refused".into(),
                },
                "UNAVAILABLE: cannot reach the server at http://127.0.0.1:1: connection refused",
                5,
            ),
            (
                CliError::NotFound {
                    what: "approval 9".into(),
                },
                "NOT_FOUND: approval 9 not found",
                3,
            ),
            (
                CliError::AlreadyDecided {
                    id: 9,
                    status: "declined".into(),
                },
                "FAILED_PRECONDITION: approval 9 is declined, not requested",
                4,
            ),
            (
                CliError::RolloutEnded {
                    id: 3,
                    state: "aborted".into(),
                    message: "error threshold crossed: 2 failed (threshold 2); aborted".into(),
                },
                "rollout 3 aborted: error threshold crossed: 2 failed (threshold 2); aborted",
                1,
            ),
            (
                CliError::WatchEnded {
                    id: 3,
                    state: "running".into(),
                },
                "UNAVAILABLE: the server ended the watch while rollout 3 was still running; watch again to carry on",
                5,
            ),
        ];
        for (e, line, code) in cases {
            assert_eq!(e.to_string(), line);
            assert_eq!(e.exit_code(), code, "{line}");
        }
    }
}
