//! `WindowService`: maintenance windows (weekly in an IANA time zone, or
//! one-off) attached to a fleet, a tag or a device, and the per-fleet policy
//! of which operations need one (replaced whole, or only the settings an
//! update mask names). A window or policy on a fleet or device that does
//! not exist is `NOT_FOUND` (the store checks as it writes); a tag needs no
//! device yet. Changes wake the scheduler. Customer
//! approvals are listed and decided by `crate::app::approvals`, shared with the
//! web dashboard; this edge only converts. A window belongs to its fleet
//! (a device's window to the device's fleet); a window on a device tag
//! spans fleets, so changing one needs a token for every fleet, while every
//! token may read it.

use std::collections::BTreeSet;

use tonic::{Request, Response, Status};

use super::access::{check, principal};
use super::convert::{ConvertError, at_most, count_at_most};
use super::pb::{self, window_service_server::WindowService};
use super::status_from_store;
use crate::app::approvals::{self, ApprovalError, ApprovalView, Approvals};
use crate::background::scheduler::Wakeups;
use crate::clock;
use crate::domain::{Action, Principal, shown};
use crate::domain::{
    ApprovalStatus, DeferralExpiry, DeviceId, FleetId, FleetPolicy, PolicyField, PolicyUpdate, Tag,
    Timestamp, Window, WindowRule, WindowScope,
};
use crate::edge::limits::{
    MAX_MASK_PATHS, MAX_POLICY_KINDS, MAX_RECURRENCE_BYTES, MAX_RECURRENCE_LINES,
    MAX_TIME_ZONE_BYTES, MAX_WEEK_DAYS,
};
use crate::store::Store;

pub struct Windows<S> {
    store: S,
    wakeups: Wakeups,
    approvals: Approvals<S>,
}

impl<S: Store> Windows<S> {
    pub fn new(store: S, wakeups: Wakeups) -> Self {
        Self {
            approvals: Approvals::new(store.clone(), wakeups.clone()),
            store,
            wakeups,
        }
    }

    /// The fleet a window scope belongs to; `None` for a tag (any fleet).
    async fn scope_fleet(&self, scope: &WindowScope) -> Result<Option<FleetId>, Status> {
        Ok(match scope {
            WindowScope::Fleet(f) => Some(f.clone()),
            WindowScope::Device(d) => Some(
                self.store
                    .get_device(d)
                    .await
                    .map_err(status_from_store)?
                    .fleet,
            ),
            WindowScope::Tag(_) => None,
        })
    }

    /// Whether `p` may read a window: its fleet in scope; tag windows are
    /// read by every token.
    async fn sees(&self, p: &Principal, scope: &WindowScope) -> Result<bool, Status> {
        Ok(match self.scope_fleet(scope).await {
            Ok(Some(f)) => p.sees(&f),
            Ok(None) => true,
            // A device that went away: only tokens for every fleet.
            Err(s) if s.code() == tonic::Code::NotFound => p.scope.is_all(),
            Err(s) => return Err(s),
        })
    }

    /// Windows or policy changed: every device with unfinished work decides again.
    async fn wake_active(&self) -> Result<(), Status> {
        for d in self
            .store
            .devices_with_active_operations()
            .await
            .map_err(status_from_store)?
        {
            self.wakeups.wake(&d);
        }
        Ok(())
    }
}

fn scope_from_pb(m: Option<pb::WindowScope>) -> Result<WindowScope, ConvertError> {
    use pb::window_scope::Scope;
    match m.and_then(|s| s.scope) {
        Some(Scope::Fleet(f)) => Ok(WindowScope::Fleet(
            FleetId::new(f).map_err(|e| ConvertError::new("scope.fleet", e))?,
        )),
        Some(Scope::Tag(t)) => Ok(WindowScope::Tag(
            Tag::new(t).map_err(|e| ConvertError::new("scope.tag", e))?,
        )),
        Some(Scope::Device(d)) => Ok(WindowScope::Device(
            DeviceId::new(d).map_err(|e| ConvertError::new("scope.device", e))?,
        )),
        None => Err(ConvertError::new(
            "scope",
            "a fleet, tag or device is required",
        )),
    }
}

fn scope_to_pb(s: &WindowScope) -> pb::WindowScope {
    use pb::window_scope::Scope;
    pb::WindowScope {
        scope: Some(match s {
            WindowScope::Fleet(f) => Scope::Fleet(f.to_string()),
            WindowScope::Tag(t) => Scope::Tag(t.to_string()),
            WindowScope::Device(d) => Scope::Device(d.to_string()),
        }),
    }
}

fn weekly_from_pb(w: pb::WeeklyRule) -> Result<WindowRule, ConvertError> {
    count_at_most("weekly.days", w.days.len(), MAX_WEEK_DAYS)?;
    at_most("weekly.time_zone", &w.time_zone, MAX_TIME_ZONE_BYTES)?;
    at_most("weekly.start_local", &w.start_local, 16)?;
    let days = w
        .days
        .iter()
        .map(|d| {
            i8::try_from(*d)
                .ok()
                .filter(|d| (1..=7).contains(d))
                .ok_or_else(|| {
                    ConvertError::new(
                        "weekly.days",
                        format!("{d} is not a weekday (1 = Monday ... 7 = Sunday)"),
                    )
                })
        })
        .collect::<Result<BTreeSet<i8>, _>>()?;
    let start = w.start_local.parse::<jiff::civil::Time>().map_err(|e| {
        ConvertError::new(
            "weekly.start_local",
            format!("{} is not HH:MM: {e}", shown(&w.start_local)),
        )
    })?;
    let rule = WindowRule::Weekly {
        days,
        start,
        duration: jiff::SignedDuration::from_mins(i64::from(w.duration_minutes)),
        tz: w.time_zone,
    };
    rule.validate()
        .map_err(|e| ConvertError::new("weekly", e))?;
    Ok(rule)
}

fn window_to_pb(w: &Window) -> pb::WindowInfo {
    use pb::window_info::Rule;
    pb::WindowInfo {
        id: u64::try_from(w.id).unwrap_or(0),
        scope: Some(scope_to_pb(&w.scope)),
        rule: Some(match &w.rule {
            WindowRule::Weekly {
                days,
                start,
                duration,
                tz,
            } => Rule::Weekly(pb::WeeklyRule {
                days: days
                    .iter()
                    .map(|d| u32::try_from(*d).unwrap_or(0))
                    .collect(),
                start_local: start.strftime("%H:%M").to_string(),
                duration_minutes: u32::try_from(duration.as_secs() / 60).unwrap_or(0),
                time_zone: tz.clone(),
            }),
            WindowRule::OneOff { start, end } => Rule::OneOff(pb::OneOffRule {
                start_unix_ms: start.0,
                end_unix_ms: end.0,
            }),
            WindowRule::Recurrence { rule, duration } => Rule::Recurrence(pb::RecurrenceRule {
                rrule: rule.clone(),
                duration_minutes: u32::try_from(duration.as_secs() / 60).unwrap_or(0),
            }),
        }),
    }
}

fn policy_to_pb(fleet: &FleetId, p: &FleetPolicy) -> pb::FleetPolicy {
    pb::FleetPolicy {
        fleet: fleet.to_string(),
        needs_window: p.needs_window.iter().cloned().collect(),
        needs_approval: p.needs_approval.iter().cloned().collect(),
        max_deferral_seconds: u64::try_from(p.max_deferral_ms / 1000).unwrap_or(0),
        on_deferral_expiry: p.on_deferral_expiry.as_str().to_owned(),
        release_mode: if p.partial_releases {
            "partial"
        } else {
            "atomic"
        }
        .to_owned(),
        on_missed_occurrence: if p.missed_moves_to_next {
            "next"
        } else {
            "ask"
        }
        .to_owned(),
    }
}

/// The wire form of an approval: candidates only while it is open.
fn approval_to_pb(v: &ApprovalView) -> pb::ApprovalInfo {
    let a = &v.approval;
    let w = |o: &crate::domain::Occurrence| pb::Window {
        start_unix_ms: o.start.0,
        end_unix_ms: o.end.0,
    };
    pb::ApprovalInfo {
        id: u64::try_from(a.id).unwrap_or(0),
        operation_id: u64::try_from(a.operation.0).unwrap_or(0),
        device: v.operation.device.to_string(),
        status: a.status.as_str().to_owned(),
        candidates: v.candidates.iter().map(w).collect(),
        approved: a.occurrence.as_ref().map(w),
        decided_by: a.decided_by.clone().unwrap_or_default(),
        message: a.message.clone().unwrap_or_default(),
    }
}

/// Approval errors as gRPC statuses: bad input names the field, the rest
/// maps like every store error.
fn status_from_approval(e: ApprovalError) -> Status {
    match e {
        ApprovalError::Invalid { field, message } => ConvertError::new(field, message).into(),
        ApprovalError::Denied(d) => Status::permission_denied(d.to_string()),
        ApprovalError::Store(e) => status_from_store(e),
    }
}

fn approval_id(id: u64) -> Result<i64, ConvertError> {
    i64::try_from(id).map_err(|_| ConvertError::new("approval_id", "out of range"))
}

/// Operation kinds named in a policy, each checked.
fn policy_kinds(field: &str, kinds: &[String]) -> Result<BTreeSet<String>, ConvertError> {
    count_at_most(field, kinds.len(), MAX_POLICY_KINDS)?;
    kinds
        .iter()
        .enumerate()
        .map(|(i, k)| {
            if FleetPolicy::KINDS.contains(&k.as_str()) {
                Ok(k.clone())
            } else {
                Err(ConvertError::new(
                    format!("{field}[{i}]"),
                    format!(
                        "{} is not one of {}",
                        shown(k),
                        FleetPolicy::KINDS.join(", ")
                    ),
                ))
            }
        })
        .collect()
}

/// The settings an update mask names, each checked; a mask naming none is
/// refused (leave the mask out to replace the whole policy).
fn mask_fields(mask: &prost_types::FieldMask) -> Result<BTreeSet<PolicyField>, ConvertError> {
    count_at_most("update_mask.paths", mask.paths.len(), MAX_MASK_PATHS)?;
    if mask.paths.is_empty() {
        return Err(ConvertError::new(
            "update_mask",
            "names no setting; name the settings to change, or leave the mask out to replace the whole policy",
        ));
    }
    mask.paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            PolicyField::parse(path).ok_or_else(|| {
                ConvertError::new(
                    format!("update_mask.paths[{i}]"),
                    format!(
                        "{} is not a policy setting (one of {})",
                        shown(path),
                        PolicyField::names()
                    ),
                )
            })
        })
        .collect()
}

#[tonic::async_trait]
impl<S: Store> WindowService for Windows<S> {
    async fn list_approvals(
        &self,
        req: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        let p = principal(&req)?;
        let status = req.into_inner().status;
        let status = if status.is_empty() {
            None
        } else {
            Some(ApprovalStatus::parse(&status).ok_or_else(|| {
                ConvertError::new(
                    "status",
                    format!(
                        "{} is not requested, approved, declined or missed",
                        shown(&status)
                    ),
                )
            })?)
        };
        let list = self
            .approvals
            .list(&p, status, None)
            .await
            .map_err(status_from_approval)?;
        Ok(Response::new(pb::ListApprovalsResponse {
            approvals: list.iter().map(approval_to_pb).collect(),
        }))
    }

    async fn approve(
        &self,
        req: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::ApproveResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        // Required; `approve` says so after the token's role is checked.
        let chosen = req.occurrence.map(|w| crate::domain::Occurrence {
            start: Timestamp(w.start_unix_ms),
            end: Timestamp(w.end_unix_ms),
        });
        let id = approval_id(req.approval_id)?;
        let view = self
            .approvals
            .approve(&p, id, chosen, &req.actor)
            .await
            .map_err(status_from_approval)?;
        Ok(Response::new(pb::ApproveResponse {
            approval: Some(approval_to_pb(&view)),
        }))
    }

    async fn decline(
        &self,
        req: Request<pb::DeclineRequest>,
    ) -> Result<Response<pb::DeclineResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let id = approval_id(req.approval_id)?;
        let view = self
            .approvals
            .decline(&p, id, &req.message, &req.actor)
            .await
            .map_err(status_from_approval)?;
        Ok(Response::new(pb::DeclineResponse {
            approval: Some(approval_to_pb(&view)),
        }))
    }

    async fn create_window(
        &self,
        req: Request<pb::CreateWindowRequest>,
    ) -> Result<Response<pb::CreateWindowResponse>, Status> {
        use pb::create_window_request::Rule;
        let p = principal(&req)?;
        let req = req.into_inner();
        let scope = scope_from_pb(req.scope)?;
        // A window on a device not registered belongs to no known fleet:
        // only a token for every fleet gets as far as the store, which
        // answers NOT_FOUND.
        let fleet = match self.scope_fleet(&scope).await {
            Ok(f) => f,
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(s),
        };
        check(&p, Action::WriteWindows, fleet.as_ref())?;
        let rule = match req.rule {
            Some(Rule::Weekly(w)) => weekly_from_pb(w)?,
            Some(Rule::OneOff(o)) => {
                let rule = WindowRule::OneOff {
                    start: Timestamp(o.start_unix_ms),
                    end: Timestamp(o.end_unix_ms),
                };
                rule.validate()
                    .map_err(|e| ConvertError::new("one_off", e))?;
                rule
            }
            Some(Rule::Recurrence(r)) => {
                at_most("recurrence.rrule", &r.rrule, MAX_RECURRENCE_BYTES)?;
                if r.rrule.lines().count() > MAX_RECURRENCE_LINES {
                    return Err(ConvertError::new(
                        "recurrence.rrule",
                        format!("more than {MAX_RECURRENCE_LINES} lines"),
                    )
                    .into());
                }
                let rule = WindowRule::Recurrence {
                    rule: r.rrule,
                    duration: jiff::SignedDuration::from_mins(i64::from(r.duration_minutes)),
                };
                rule.validate()
                    .map_err(|e| ConvertError::new("recurrence", e))?;
                // Every evaluation starts at DTSTART: a rule must stay
                // cheap to evaluate for years to come.
                let ten_years = Timestamp(clock::now().0.saturating_add(10 * 365 * 86_400_000));
                if !rule.evaluable_until(ten_years) {
                    return Err(ConvertError::new(
                        "recurrence.rrule",
                        format!(
                            "more than {} instances between DTSTART and ten years from now; move DTSTART closer to today or make the rule less frequent",
                            crate::domain::window::MAX_RECURRENCE_INSTANCES
                        ),
                    )
                    .into());
                }
                rule
            }
            None => {
                return Err(
                    ConvertError::new("rule", "weekly, one_off or recurrence is required").into(),
                );
            }
        };
        let window = self
            .store
            .create_window(&scope, &rule, clock::now())
            .await
            .map_err(status_from_store)?;
        tracing::info!(window = window.id, ?scope, "maintenance window created");
        self.wake_active().await?;
        Ok(Response::new(pb::CreateWindowResponse {
            window: Some(window_to_pb(&window)),
        }))
    }

    async fn list_windows(
        &self,
        req: Request<pb::ListWindowsRequest>,
    ) -> Result<Response<pb::ListWindowsResponse>, Status> {
        let p = principal(&req)?;
        super::access::within(&p, Action::ReadWindows)?;
        let mut windows = Vec::new();
        for w in self.store.list_windows().await.map_err(status_from_store)? {
            if self.sees(&p, &w.scope).await? {
                windows.push(window_to_pb(&w));
            }
        }
        Ok(Response::new(pb::ListWindowsResponse { windows }))
    }

    async fn delete_window(
        &self,
        req: Request<pb::DeleteWindowRequest>,
    ) -> Result<Response<pb::DeleteWindowResponse>, Status> {
        let p = principal(&req)?;
        let id = i64::try_from(req.into_inner().id)
            .map_err(|_| ConvertError::new("id", "out of range"))?;
        let windows = self.store.list_windows().await.map_err(status_from_store)?;
        let window = windows
            .iter()
            .find(|w| w.id == id)
            .ok_or_else(|| Status::not_found(format!("window {id} not found")))?;
        let fleet = match self.scope_fleet(&window.scope).await {
            Ok(f) => f,
            // The window of a device that went away: for every-fleet tokens.
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(s),
        };
        check(&p, Action::WriteWindows, fleet.as_ref())?;
        self.store
            .delete_window(id)
            .await
            .map_err(status_from_store)?;
        self.wake_active().await?;
        Ok(Response::new(pb::DeleteWindowResponse {}))
    }

    async fn next_windows(
        &self,
        req: Request<pb::NextWindowsRequest>,
    ) -> Result<Response<pb::NextWindowsResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let device = DeviceId::new(&req.device).map_err(|e| ConvertError::new("device", e))?;
        let record = self
            .store
            .get_device(&device)
            .await
            .map_err(status_from_store)?;
        check(&p, Action::ReadWindows, Some(&record.fleet))?;
        let count = match req.count {
            0 => 5,
            n => n.min(50) as usize,
        };
        let all = approvals::upcoming_occurrences(&self.store, &device, count)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(pb::NextWindowsResponse {
            occurrences: all
                .into_iter()
                .map(|o| pb::Window {
                    start_unix_ms: o.start.0,
                    end_unix_ms: o.end.0,
                })
                .collect(),
        }))
    }

    async fn set_fleet_policy(
        &self,
        req: Request<pb::SetFleetPolicyRequest>,
    ) -> Result<Response<pb::SetFleetPolicyResponse>, Status> {
        let who = principal(&req)?;
        let req = req.into_inner();
        let p = req
            .policy
            .ok_or_else(|| ConvertError::new("policy", "required"))?;
        let fleet = FleetId::new(&p.fleet).map_err(|e| ConvertError::new("policy.fleet", e))?;
        check(&who, Action::WriteWindows, Some(&fleet))?;
        let needs_window = policy_kinds("policy.needs_window", &p.needs_window)?;
        let needs_approval = policy_kinds("policy.needs_approval", &p.needs_approval)?;
        let max_deferral_ms = match p.max_deferral_seconds {
            0 => FleetPolicy::DEFAULT_MAX_DEFERRAL_MS,
            s if s > 365 * 86_400 => {
                return Err(
                    ConvertError::new("policy.max_deferral_seconds", "at most a year").into(),
                );
            }
            s => i64::try_from(s * 1000).unwrap_or(FleetPolicy::DEFAULT_MAX_DEFERRAL_MS),
        };
        let on_deferral_expiry = if p.on_deferral_expiry.is_empty() {
            DeferralExpiry::Notify
        } else {
            DeferralExpiry::parse(&p.on_deferral_expiry).ok_or_else(|| {
                ConvertError::new(
                    "policy.on_deferral_expiry",
                    format!("{} is not notify or force", shown(&p.on_deferral_expiry)),
                )
            })?
        };
        let partial_releases = match p.release_mode.as_str() {
            "" | "atomic" => false,
            "partial" => true,
            other => {
                return Err(ConvertError::new(
                    "policy.release_mode",
                    format!("{} is not atomic or partial", shown(other)),
                )
                .into());
            }
        };
        let missed_moves_to_next = match p.on_missed_occurrence.as_str() {
            "" | "ask" => false,
            "next" => true,
            other => {
                return Err(ConvertError::new(
                    "policy.on_missed_occurrence",
                    format!("{} is not ask or next", shown(other)),
                )
                .into());
            }
        };
        let policy = FleetPolicy {
            missed_moves_to_next,
            partial_releases,
            needs_window,
            needs_approval,
            max_deferral_ms,
            on_deferral_expiry,
        };
        let update = match &req.update_mask {
            None => PolicyUpdate::Replace(policy),
            Some(mask) => PolicyUpdate::Fields {
                values: policy,
                fields: mask_fields(mask)?,
            },
        };
        let policy = self
            .store
            .update_fleet_policy(&fleet, &update, clock::now())
            .await
            .map_err(status_from_store)?;
        self.wake_active().await?;
        Ok(Response::new(pb::SetFleetPolicyResponse {
            policy: Some(policy_to_pb(&fleet, &policy)),
        }))
    }

    async fn get_fleet_policy(
        &self,
        req: Request<pb::GetFleetPolicyRequest>,
    ) -> Result<Response<pb::GetFleetPolicyResponse>, Status> {
        let p = principal(&req)?;
        let fleet =
            FleetId::new(req.into_inner().fleet).map_err(|e| ConvertError::new("fleet", e))?;
        check(&p, Action::ReadWindows, Some(&fleet))?;
        self.store
            .get_fleet(&fleet)
            .await
            .map_err(status_from_store)?;
        let policy = self
            .store
            .fleet_policy(&fleet)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(pb::GetFleetPolicyResponse {
            policy: Some(policy_to_pb(&fleet, &policy)),
        }))
    }
}
