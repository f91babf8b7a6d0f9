//! The web dashboard `lockstep serve` runs beside its gRPC API (flag
//! `--dashboard-listen`): a few plain HTML pages for people — the fleet
//! overview, one device, pending approvals, rollouts — over a small JSON API
//! under `/api/` and server-sent event streams (`/api/events` tells pages
//! what to re-read; `/api/rollouts/{id}/events` sends a rollout's status
//! as it changes). It reads the store and calls the shared logic
//! (`crate::app::approvals`, `crate::app::rollouts`, `crate::app::events::Watch`)
//! directly, never through gRPC, and holds no decision of its own. Its view types (serde) live
//! here: domain types stay free of serde. Assets are compiled into the
//! binary; pages load nothing from the network.
//!
//! Every page and endpoint needs an API token (`auth`): people log in on
//! `/login` (the token kept in an `HttpOnly`, `SameSite=Strict` cookie),
//! scripts send `Authorization: Bearer`. What a token sees and may decide
//! follows its role and fleets, exactly as on gRPC. Writes require
//! `Content-Type: application/json`, which a cross-site form cannot send.

mod api;
mod auth;
mod live;
mod pages;
mod views;

use std::future::Future;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::app::approvals::{ApprovalError, Approvals};
use crate::app::events::Events;
use crate::app::rollouts::{RolloutError, Rollouts};
use crate::app::tokens::Tokens;
use crate::background::scheduler::Wakeups;
use crate::store::{Store, StoreError};

/// Why a dashboard request failed; each maps to one HTTP status and a JSON
/// body `{"error": ..., "field": ...}` (`field` only for bad input).
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    /// No usable API token (missing, invalid, revoked, expired).
    #[error("{0}")]
    Unauthorized(String),
    /// The token's role or fleets do not allow this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but the state does not allow it (an approval
    /// already decided, a rollout not running or not paused).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("database unavailable; retry later")]
    Unavailable,
    #[error("internal error; see the server log")]
    Internal,
}

impl DashboardError {
    pub(crate) fn bad(field: impl Into<String>, message: impl ToString) -> Self {
        DashboardError::BadRequest {
            field: field.into(),
            message: message.to_string(),
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            DashboardError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            DashboardError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            DashboardError::Forbidden(_) => StatusCode::FORBIDDEN,
            DashboardError::NotFound(_) => StatusCode::NOT_FOUND,
            DashboardError::Conflict(_) => StatusCode::CONFLICT,
            DashboardError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            DashboardError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            DashboardError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for DashboardError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::NotFound { .. } => DashboardError::NotFound(e.to_string()),
            StoreError::AlreadyExists { .. }
            | StoreError::Conflict { .. }
            | StoreError::Precondition { .. } => DashboardError::Conflict(e.to_string()),
            StoreError::Invalid { message } => DashboardError::bad("request", message),
            StoreError::Unavailable { .. } => {
                tracing::warn!(error = %e, "database unavailable");
                DashboardError::Unavailable
            }
            StoreError::Corrupt { .. }
            | StoreError::SchemaTooNew { .. }
            | StoreError::Database { .. }
            | StoreError::Migrate { .. } => {
                tracing::error!(error = %e, "store error");
                DashboardError::Internal
            }
        }
    }
}

impl From<ApprovalError> for DashboardError {
    fn from(e: ApprovalError) -> Self {
        match e {
            ApprovalError::Invalid { field, message } => DashboardError::bad(field, message),
            ApprovalError::Denied(d) => DashboardError::Forbidden(d.to_string()),
            ApprovalError::Store(e) => e.into(),
        }
    }
}

impl From<RolloutError> for DashboardError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::Invalid { field, message } => DashboardError::bad(field, message),
            RolloutError::WrongState { .. } => DashboardError::Conflict(e.to_string()),
            RolloutError::Store(e) => e.into(),
        }
    }
}

impl IntoResponse for DashboardError {
    fn into_response(self) -> Response {
        // Errors show refused values by a short prefix; the cap is the
        // safety net for anything else.
        let error = |text: String| crate::edge::limits::capped_message(&text).into_owned();
        let body = match &self {
            DashboardError::BadRequest { field, message } => {
                serde_json::json!({ "error": error(format!("{field}: {message}")), "field": field })
            }
            other => serde_json::json!({ "error": error(other.to_string()) }),
        };
        (self.status(), axum::Json(body)).into_response()
    }
}

/// What every handler shares. Cheap to clone.
pub struct Dashboard<S> {
    store: S,
    tokens: Tokens<S>,
    events: Events,
    approvals: std::sync::Arc<Approvals<S>>,
    /// The same rollout actions and status as `RolloutService`.
    rollouts: Rollouts<S>,
    /// Flips to `true` when the server stops: live streams end then, so a
    /// graceful shutdown is not held up by open pages.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl<S: Clone> Clone for Dashboard<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            tokens: self.tokens.clone(),
            events: self.events.clone(),
            approvals: self.approvals.clone(),
            rollouts: self.rollouts.clone(),
            stopping: self.stopping.clone(),
        }
    }
}

impl<S: Store> Dashboard<S> {
    pub fn new(
        store: S,
        wakeups: Wakeups,
        events: Events,
        rollouts: Rollouts<S>,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            approvals: std::sync::Arc::new(Approvals::new(store.clone(), wakeups)),
            tokens: Tokens::new(store.clone()),
            store,
            events,
            rollouts,
            stopping,
        }
    }
}

/// Every route of the dashboard: pages, assets, the JSON API and events;
/// bodies over [`crate::edge::limits::MAX_DASHBOARD_BODY_BYTES`] are refused (413).
pub fn router<S: Store>(dashboard: Dashboard<S>) -> Router {
    Router::new()
        .route("/", get(pages::fleet::<S>))
        .route("/devices/{id}", get(pages::device::<S>))
        .route("/approvals", get(pages::approvals::<S>))
        .route("/rollouts", get(pages::rollouts::<S>))
        .route("/rollouts/{id}", get(pages::rollout::<S>))
        .route("/login", get(pages::login))
        .route("/assets/{name}", get(pages::asset))
        .route("/api/login", post(auth::login::<S>))
        .route("/api/logout", post(auth::logout))
        .route("/api/me", get(auth::me))
        .route("/api/fleets", get(api::fleets::<S>))
        .route("/api/devices", get(api::devices::<S>))
        .route("/api/devices/{id}", get(api::device::<S>))
        .route("/api/devices/{id}/timeline", get(api::timeline::<S>))
        .route("/api/operations/{id}", get(api::operation::<S>))
        .route("/api/approvals", get(api::approvals::<S>))
        .route("/api/approvals/{id}/approve", post(api::approve::<S>))
        .route("/api/approvals/{id}/decline", post(api::decline::<S>))
        .route("/api/rollouts", get(api::rollouts::<S>))
        .route("/api/rollouts/{id}", get(api::rollout::<S>))
        .route("/api/rollouts/{id}/pause", post(api::pause::<S>))
        .route("/api/rollouts/{id}/resume", post(api::resume::<S>))
        .route("/api/rollouts/{id}/abort", post(api::abort::<S>))
        .route("/api/rollouts/{id}/events", get(live::rollout::<S>))
        .route("/api/events", get(live::events::<S>))
        .fallback(pages::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::edge::limits::MAX_DASHBOARD_BODY_BYTES,
        ))
        .with_state(dashboard)
}

/// Serves the dashboard on `listener` (over TLS with `tls`) until
/// `shutdown` completes, then lets in-flight requests finish (live streams
/// end on the same signal).
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        Some(acceptor) => {
            axum::serve(crate::edge::tls::TlsListener::new(listener, acceptor)?, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}
