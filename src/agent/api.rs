//! The agent's local API, for the blocks on the device (HTTP/JSON on a
//! loopback address). A block lists the intents addressed to it (long-poll
//! with `?wait=SECONDS`), answers one (release, defer until, release at the
//! window, refuse, dismiss a notice), and triggers its pending operation once
//! it is ready ("I'm ready, go now"). Each block authenticates with the token
//! in its own lock directory (`<lock-root>/<block>/token`), so it can read
//! and answer only its own intents.
//!
//! | method | path | body |
//! |---|---|---|
//! | GET | `/v1/blocks/{block}/intents?wait=30` | – |
//! | POST | `/v1/blocks/{block}/intents/{seq}/ack` | `{"answer":"release"\|"defer"\|"release_at_window"\|"refuse"\|"dismiss", "until_unix_ms":…, "message":"…"}` |
//! | POST | `/v1/blocks/{block}/trigger` | – |

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::state::{BlockIntent, StateFile};
use crate::edge::limits::{MAX_LOCAL_API_BODY_BYTES, MAX_TEXT_BYTES};

/// What a block asks of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalEvent {
    Answer {
        block: String,
        seq: u64,
        answer: Answer,
    },
    Trigger {
        block: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Release,
    Defer { until_unix_ms: i64, message: String },
    ReleaseAtWindow,
    Refuse { message: String },
    Dismiss,
}

#[derive(Clone)]
pub struct ApiState {
    pub state: Arc<Mutex<StateFile>>,
    /// Bumped whenever any block's intents change (for long-polls).
    pub changed: watch::Receiver<u64>,
    /// Per-block tokens; new blocks are added as they appear.
    pub tokens: Arc<std::sync::RwLock<BTreeMap<String, String>>>,
    pub events: mpsc::Sender<LocalEvent>,
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(default)]
    wait: u64,
}

#[derive(Serialize)]
struct IntentList {
    block: String,
    intents: Vec<BlockIntent>,
}

#[derive(Deserialize)]
struct AckBody {
    answer: String,
    #[serde(default)]
    until_unix_ms: Option<i64>,
    #[serde(default)]
    message: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn authorize(api: &ApiState, block: &str, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let tokens = api.tokens.read().unwrap_or_else(|p| p.into_inner());
    let Some(expected) = tokens.get(block) else {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!("no block {block:?} on this device"),
        )));
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let same = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            format!("use the token in the lock directory of block {block:?}"),
        )))
    }
}

fn intents_of(api: &ApiState, block: &str) -> Vec<BlockIntent> {
    let state = api.state.lock().unwrap_or_else(|p| p.into_inner());
    state
        .state
        .block_intents
        .get(block)
        .cloned()
        .unwrap_or_default()
}

async fn list(
    State(api): State<ApiState>,
    Path(block): Path<String>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&api, &block, &headers) {
        return *r;
    }
    let mut changed = api.changed.clone();
    changed.mark_unchanged();
    let mut intents = intents_of(&api, &block);
    if intents.is_empty() && q.wait > 0 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait.min(60));
        while intents.is_empty() {
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => intents = intents_of(&api, &block),
                _ => break,
            }
        }
    }
    Json(IntentList { block, intents }).into_response()
}

async fn ack(
    State(api): State<ApiState>,
    Path((block, seq)): Path<(String, u64)>,
    headers: HeaderMap,
    Json(body): Json<AckBody>,
) -> Response {
    if let Err(r) = authorize(&api, &block, &headers) {
        return *r;
    }
    if !intents_of(&api, &block).iter().any(|i| i.seq == seq) {
        return error(
            StatusCode::NOT_FOUND,
            format!("block {block:?} has no pending intent {seq}"),
        );
    }
    if body.message.len() > MAX_TEXT_BYTES {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "message: {} bytes; at most {MAX_TEXT_BYTES}",
                body.message.len()
            ),
        );
    }
    let answer = match body.answer.as_str() {
        "release" => Answer::Release,
        "defer" => match body.until_unix_ms {
            Some(until_unix_ms) => Answer::Defer {
                until_unix_ms,
                message: body.message,
            },
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "until_unix_ms: required with answer \"defer\"",
                );
            }
        },
        "release_at_window" => Answer::ReleaseAtWindow,
        "refuse" => Answer::Refuse {
            message: body.message,
        },
        "dismiss" => Answer::Dismiss,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "answer: {other:?} is not one of release, defer, release_at_window, refuse, dismiss"
                ),
            );
        }
    };
    match api
        .events
        .send(LocalEvent::Answer { block, seq, answer })
        .await
    {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "status": "accepted" })),
        )
            .into_response(),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down",
        ),
    }
}

async fn trigger(
    State(api): State<ApiState>,
    Path(block): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&api, &block, &headers) {
        return *r;
    }
    match api.events.send(LocalEvent::Trigger { block }).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "status": "triggered" })),
        )
            .into_response(),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down",
        ),
    }
}

/// Every route of the local API; bodies over
/// [`MAX_LOCAL_API_BODY_BYTES`] are refused with 413.
pub fn router(api: ApiState) -> axum::Router {
    axum::Router::new()
        .route("/v1/blocks/{block}/intents", get(list))
        .route("/v1/blocks/{block}/intents/{seq}/ack", post(ack))
        .route("/v1/blocks/{block}/trigger", post(trigger))
        .layer(axum::extract::DefaultBodyLimit::max(
            MAX_LOCAL_API_BODY_BYTES,
        ))
        .with_state(api)
}
