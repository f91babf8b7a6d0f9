//! The dashboard's JSON API under `/api/`: reads straight from the store,
//! decisions through `crate::app::approvals`, rollout status and actions through
//! `crate::app::rollouts` (the same calls as `RolloutService`). Every input is checked here and a
//! bad one is a 400 naming the field (query parameter, path segment or JSON
//! member); a missing thing is a 404. Every endpoint takes the logged-in
//! token and checks its role and fleets: lists show the token's fleets only,
//! anything else of another fleet is a 403.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;

use super::auth::{Authed, check, within};
use super::views::{
    ApprovalItem, ApprovalsView, DeviceRow, DeviceView, DevicesView, FleetView, FleetsView,
    OperationView, RolloutItem, RolloutStatusView, RolloutsView, TimelineView,
};
use super::{Dashboard, DashboardError};
use crate::domain::{
    Action, ApprovalStatus, DeviceId, DeviceStatus, FleetId, Occurrence, OperationId, Principal,
    RolloutId, Timestamp, shown,
};
use crate::store::{DeviceFilter, PageRequest, Store};

type Params = BTreeMap<String, String>;

/// Query parameters, refusing any this endpoint does not know.
pub(super) fn params(
    q: Result<Query<Params>, QueryRejection>,
    known: &[&str],
) -> Result<Params, DashboardError> {
    let Query(q) = q.map_err(|e| DashboardError::bad("query", e.body_text()))?;
    if let Some(k) = q.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(DashboardError::bad(
            crate::domain::prefix_at_most(k, crate::domain::shown::SHOWN_PREFIX_BYTES),
            format!("unknown parameter; expected one of {}", known.join(", ")),
        ));
    }
    Ok(q)
}

/// The `{id}` path segment.
fn path_id(p: Result<Path<String>, PathRejection>) -> Result<String, DashboardError> {
    p.map(|Path(id)| id)
        .map_err(|e| DashboardError::bad("id", e.body_text()))
}

pub(super) fn device_id(field: &str, s: &str) -> Result<DeviceId, DashboardError> {
    DeviceId::new(s).map_err(|e| DashboardError::bad(field, e))
}

pub(super) fn fleet_id(field: &str, s: &str) -> Result<FleetId, DashboardError> {
    FleetId::new(s).map_err(|e| DashboardError::bad(field, e))
}

/// A positive integer parameter within `range`.
fn number(
    field: &str,
    s: &str,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, DashboardError> {
    s.parse::<u32>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            DashboardError::bad(
                field,
                format!(
                    "{} is not a number from {} to {}",
                    shown(s),
                    range.start(),
                    range.end()
                ),
            )
        })
}

fn positive_id(field: &str, s: &str) -> Result<i64, DashboardError> {
    s.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        DashboardError::bad(field, format!("{} is not a positive integer", shown(s)))
    })
}

/// GET /api/fleets: every fleet with its device counts per status.
pub async fn fleets<S: Store>(
    State(d): State<Dashboard<S>>,
    Authed(p): Authed,
) -> Result<Json<FleetsView>, DashboardError> {
    within(&p, Action::ReadFleets)?;
    let fleets = d.store.list_fleets().await?;
    let counts = d.store.device_status_counts().await?;
    Ok(Json(FleetsView {
        statuses: super::views::COUNTED.iter().map(|s| s.as_str()).collect(),
        fleets: fleets
            .iter()
            .filter(|f| p.sees(&f.id))
            .map(|f| FleetView::new(f, counts.get(&f.id)))
            .collect(),
    }))
}

/// GET /api/devices?fleet=&status=&page_size=&page_token=: devices with
/// their status and what their current operation waits on.
pub async fn devices<S: Store>(
    State(d): State<Dashboard<S>>,
    Authed(p): Authed,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Json<DevicesView>, DashboardError> {
    let q = params(q, &["fleet", "status", "page_size", "page_token"])?;
    let fleet = q
        .get("fleet")
        .filter(|s| !s.is_empty())
        .map(|s| fleet_id("fleet", s))
        .transpose()?;
    let status = q
        .get("status")
        .filter(|s| !s.is_empty())
        .map(|s| {
            DeviceStatus::parse(s).ok_or_else(|| {
                DashboardError::bad("status", format!("{} is not a device status", shown(s)))
            })
        })
        .transpose()?;
    let size = q
        .get("page_size")
        .map(|s| number("page_size", s, 1..=PageRequest::MAX_SIZE))
        .transpose()?
        .unwrap_or(50);
    // A fleet asked for must be in scope; without one, the token's fleets.
    let scope = match &fleet {
        Some(f) => check(&p, Action::ReadDevices, Some(f)).map(|()| None)?,
        None => within(&p, Action::ReadDevices)?,
    };
    if let Some(f) = &fleet {
        d.store.get_fleet(f).await?;
    }
    let page = d
        .store
        .list_devices(
            &DeviceFilter {
                fleet,
                tag: None,
                status,
                within: scope,
            },
            &PageRequest {
                size,
                token: q.get("page_token").filter(|t| !t.is_empty()).cloned(),
            },
        )
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Invalid { message } => {
                DashboardError::bad("page_token", message)
            }
            other => other.into(),
        })?;
    let mut devices = Vec::with_capacity(page.items.len());
    for dev in &page.items {
        // The oldest active operation stands for the device in the list.
        let current = d.store.active_operations(&dev.id).await?.into_iter().next();
        devices.push(DeviceRow::new(dev, current.as_ref()));
    }
    Ok(Json(DevicesView {
        devices,
        next_page_token: page.next,
    }))
}

/// How many operations the device page lists.
const RECENT_OPERATIONS: usize = 10;

/// GET /api/devices/{id}: blocks, locks, status, the current operation
/// with its waits, and the latest operations.
pub async fn device<S: Store>(
    State(d): State<Dashboard<S>>,
    Authed(p): Authed,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DeviceView>, DashboardError> {
    let id = device_id("id", &path_id(id)?)?;
    let record = d.store.get_device(&id).await?;
    check(&p, Action::ReadDevices, Some(&record.fleet))?;
    let report = d.store.device_report(&id).await?;
    let locks = d.store.device_locks(&id).await?;
    let current = d.store.active_operations(&id).await?.into_iter().next();
    let mut recent = d.store.list_operations(&id).await?;
    recent.truncate(RECENT_OPERATIONS);
    Ok(Json(DeviceView::new(
        &record,
        report.as_ref(),
        &locks,
        current.as_ref(),
        &recent,
    )))
}

/// GET /api/devices/{id}/timeline?limit=: intents sent and answers, newest first.
pub async fn timeline<S: Store>(
    State(d): State<Dashboard<S>>,
    Authed(p): Authed,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Json<TimelineView>, DashboardError> {
    let id = device_id("id", &path_id(id)?)?;
    let q = params(q, &["limit"])?;
    let limit = q
        .get("limit")
        .map(|s| number("limit", s, 1..=500))
        .transpose()?
        .unwrap_or(50);
    let record = d.store.get_device(&id).await?;
    check(&p, Action::ReadDevices, Some(&record.fleet))?;
    let entries = d.store.device_timeline(&id, limit).await?;
    Ok(Json(TimelineView {
        entries: entries.iter().map(Into::into).collect(),
    }))
}

/// GET /api/operations/{id}
pub async fn operation<S: Store>(
    State(d): State<Dashboard<S>>,
    Authed(p): Authed,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<OperationView>, DashboardError> {
    let id = OperationId(positive_id("id", &path_id(id)?)?);
    let op = d.store.get_operation(id).await?;
    let record = d.store.get_device(&op.device).await?;
    check(&p, Action::ReadOperations, Some(&record.fleet))?;
    Ok(Json(OperationView::new(&op)))
}

/// GET /api/approvals?status=&limit=: approvals (oldest first), each with
/// its operation and, while open, the occurrences to choose from; `limit`
/// keeps the most recent.
pub async fn approvals<S: Store>(
    State(d): State<Dashboard<S>>,
    Authed(p): Authed,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Json<ApprovalsView>, DashboardError> {
    let q = params(q, &["status", "limit"])?;
    let status = q
        .get("status")
        .filter(|s| !s.is_empty())
        .map(|s| {
            ApprovalStatus::parse(s).ok_or_else(|| {
                DashboardError::bad(
                    "status",
                    format!(
                        "{} is not requested, approved, declined or missed",
                        shown(s)
                    ),
                )
            })
        })
        .transpose()?;
    let limit = q
        .get("limit")
        .map(|s| number("limit", s, 1..=1000))
        .transpose()?;
    let list = d
        .approvals
        .list(&p, status, limit.map(|n| n as usize))
        .await?;
    Ok(Json(ApprovalsView {
        approvals: list.iter().map(ApprovalItem::from).collect(),
    }))
}

/// A JSON object body; writes must say `Content-Type: application/json`
/// (a cross-site form cannot).
pub(super) fn json_object(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<serde_json::Map<String, serde_json::Value>, DashboardError> {
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(DashboardError::UnsupportedMediaType(
            "send the body as Content-Type: application/json".into(),
        ));
    }
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(DashboardError::bad("body", "a JSON object is required")),
        Err(e) => Err(DashboardError::bad("body", format!("not JSON: {e}"))),
    }
}

/// An optional string member; `""` when absent.
fn string_member<'a>(
    m: &'a serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<&'a str, DashboardError> {
    match m.get(field) {
        None | Some(serde_json::Value::Null) => Ok(""),
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(_) => Err(DashboardError::bad(field, "must be a string")),
    }
}

/// `{"start_ms": …, "end_ms": …}`, as the candidates are listed.
fn occurrence_member(
    m: &serde_json::Map<String, serde_json::Value>,
) -> Result<Option<Occurrence>, DashboardError> {
    let o = match m.get("occurrence") {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::Object(o)) => o,
        Some(_) => {
            return Err(DashboardError::bad(
                "occurrence",
                "must be an object with start_ms and end_ms",
            ));
        }
    };
    let ms = |k: &str| {
        o.get(k).and_then(serde_json::Value::as_i64).ok_or_else(|| {
            DashboardError::bad(
                format!("occurrence.{k}"),
                "milliseconds since the epoch (an integer) are required",
            )
        })
    };
    Ok(Some(Occurrence {
        start: Timestamp(ms("start_ms")?),
        end: Timestamp(ms("end_ms")?),
    }))
}

/// POST /api/approvals/{id}/approve with `{"occurrence": {...}, "actor": ...}`
/// (`actor`, optional: who the person says decides, kept beside the token).
pub async fn approve<S: Store>(
    State(d): State<Dashboard<S>>,
    Authed(p): Authed,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ApprovalItem>, DashboardError> {
    let id = positive_id("id", &path_id(id)?)?;
    let m = json_object(&headers, &body)?;
    let actor = string_member(&m, "actor")?;
    let occurrence = occurrence_member(&m)?;
    let view = d.approvals.approve(&p, id, occurrence, actor).await?;
    tracing::info!(approval = id, actor = %p.actor_noting(actor), "approval approved on the dashboard");
    Ok(Json(ApprovalItem::from(&view)))
}

/// POST /api/approvals/{id}/decline with `{"message": ..., "actor": ...}`.
pub async fn decline<S: Store>(
    State(d): State<Dashboard<S>>,
    Authed(p): Authed,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ApprovalItem>, DashboardError> {
    let id = positive_id("id", &path_id(id)?)?;
    let m = json_object(&headers, &body)?;
    let actor = string_member(&m, "actor")?;
    let message = string_member(&m, "message")?;
    let view = d.approvals.decline(&p, id, message, actor).await?;
    tracing::info!(approval = id, actor = %p.actor_noting(actor), "approval declined on the dashboard");
    Ok(Json(ApprovalItem::from(&view)))
}

/// The `{id}` of a rollout path.
pub(super) fn rollout_id(
    p: Result<Path<String>, PathRejection>,
) -> Result<RolloutId, DashboardError> {
    Ok(RolloutId(positive_id("id", &path_id(p)?)?))
}

/// GET /api/rollouts?fleet=&limit=: rollouts, newest first (at most
/// `limit`, default 50), each with its overall progress; those of the
/// token's fleets.
pub async fn rollouts<S: Store>(
    State(d): State<Dashboard<S>>,
    Authed(p): Authed,
    q: Result<Query<Params>, QueryRejection>,
) -> Result<Json<RolloutsView>, DashboardError> {
    let q = params(q, &["fleet", "limit"])?;
    let fleet = q
        .get("fleet")
        .filter(|s| !s.is_empty())
        .map(|s| fleet_id("fleet", s))
        .transpose()?;
    let limit = q
        .get("limit")
        .map(|s| number("limit", s, 1..=500))
        .transpose()?
        .unwrap_or(50);
    let scope = match &fleet {
        Some(f) => check(&p, Action::ReadRollouts, Some(f)).map(|()| None)?,
        None => within(&p, Action::ReadRollouts)?,
    };
    if let Some(f) = &fleet {
        d.store.get_fleet(f).await?;
    }
    let mut list = d.store.list_rollouts(fleet.as_ref()).await?;
    list.retain(|r| scope.as_ref().is_none_or(|s| s.contains(&r.fleet)));
    list.truncate(limit as usize);
    let mut rollouts = Vec::with_capacity(list.len());
    for r in &list {
        let batches = d.store.rollout_batch_counts(r.id).await?;
        rollouts.push(RolloutItem::new(r, &batches));
    }
    Ok(Json(RolloutsView { rollouts }))
}

/// GET /api/rollouts/{id}: the rollout, progress overall and per batch,
/// members by device status, and devices waiting on a lock by block and
/// reason. 403 for a rollout of a fleet the token does not cover.
pub async fn rollout<S: Store>(
    State(d): State<Dashboard<S>>,
    Authed(p): Authed,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RolloutStatusView>, DashboardError> {
    let id = rollout_id(id)?;
    let r = d.store.get_rollout(id).await?;
    check(&p, Action::ReadRollouts, Some(&r.fleet))?;
    let status = d.rollouts.status(id).await?;
    Ok(Json(RolloutStatusView::new(&status, crate::clock::now())))
}

/// The longest `actor` and `reason` accepted for a rollout action: the same
/// limits as `RolloutService` (`src/limits.rs`).
const MAX_ACTOR: usize = crate::edge::limits::MAX_ACTOR_BYTES;
const MAX_REASON: usize = crate::edge::limits::MAX_TEXT_BYTES;

/// A required, non-blank string member of at most `max` characters.
fn required_member<'a>(
    m: &'a serde_json::Map<String, serde_json::Value>,
    field: &str,
    max: usize,
) -> Result<&'a str, DashboardError> {
    let s = optional_member(m, field, max)?;
    if s.is_empty() {
        return Err(DashboardError::bad(field, "is required"));
    }
    Ok(s)
}

/// An optional string member (trimmed; `""` when absent) of at most `max`
/// bytes, without a NUL character.
fn optional_member<'a>(
    m: &'a serde_json::Map<String, serde_json::Value>,
    field: &str,
    max: usize,
) -> Result<&'a str, DashboardError> {
    let s = string_member(m, field)?.trim();
    if s.len() > max {
        return Err(DashboardError::bad(
            field,
            format!("{} bytes; at most {max}", s.len()),
        ));
    }
    if s.contains('\0') {
        return Err(DashboardError::bad(field, "contains a NUL character"));
    }
    Ok(s)
}

#[derive(Clone, Copy)]
enum RolloutAction {
    Pause,
    Resume,
    Abort,
}

/// POST /api/rollouts/{id}/<action> with `{"reason": ..., "actor": ...}`
/// (`reason` required: the audit log says why; `actor`, optional: on whose
/// behalf, kept beside the token): the same call as `RolloutService`, for a
/// token that may run rollouts on the rollout's fleet (403 otherwise);
/// answers with the rollout's status afterwards.
async fn act<S: Store>(
    d: Dashboard<S>,
    p: Principal,
    id: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    body: &Bytes,
    action: RolloutAction,
) -> Result<Json<RolloutStatusView>, DashboardError> {
    let id = rollout_id(id)?;
    // The body is checked before the rollout is looked up.
    let m = json_object(headers, body)?;
    let actor = p.actor_noting(optional_member(&m, "actor", MAX_ACTOR)?);
    let reason = required_member(&m, "reason", MAX_REASON)?;
    let r = d.store.get_rollout(id).await?;
    check(&p, Action::WriteRollouts, Some(&r.fleet))?;
    let (rollout, verb) = match action {
        RolloutAction::Pause => (d.rollouts.pause(id, &actor, reason).await?, "paused"),
        RolloutAction::Resume => (d.rollouts.resume(id, &actor, reason).await?, "resumed"),
        RolloutAction::Abort => (d.rollouts.abort(id, &actor, reason).await?, "aborted"),
    };
    tracing::info!(rollout = %rollout.id, actor = %actor, reason, "rollout {verb} on the dashboard");
    let status = d.rollouts.status(id).await?;
    Ok(Json(RolloutStatusView::new(&status, crate::clock::now())))
}

/// POST /api/rollouts/{id}/pause: stops starting devices (409 unless running).
pub async fn pause<S: Store>(
    State(d): State<Dashboard<S>>,
    Authed(p): Authed,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RolloutStatusView>, DashboardError> {
    act(d, p, id, &headers, &body, RolloutAction::Pause).await
}

/// POST /api/rollouts/{id}/resume: starts devices again, accepting the
/// failures so far (409 unless paused).
pub async fn resume<S: Store>(
    State(d): State<Dashboard<S>>,
    Authed(p): Authed,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RolloutStatusView>, DashboardError> {
    act(d, p, id, &headers, &body, RolloutAction::Resume).await
}

/// POST /api/rollouts/{id}/abort: stops for good and cancels member
/// operations not yet applying (409 unless running or paused).
pub async fn abort<S: Store>(
    State(d): State<Dashboard<S>>,
    Authed(p): Authed,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RolloutStatusView>, DashboardError> {
    act(d, p, id, &headers, &body, RolloutAction::Abort).await
}
