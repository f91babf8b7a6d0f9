//! Who looks at the dashboard. A person logs in on `/login` by pasting an
//! API token; `POST /api/login` checks it and keeps it in an `HttpOnly`,
//! `SameSite=Strict` cookie (scripts cannot read it, other sites cannot send
//! it). Scripts may send `Authorization: Bearer <token>` instead. Every page
//! and every `/api/` endpoint takes an [`Authed`] principal — a page
//! without one redirects to the login, an endpoint answers 401 — and then
//! checks its action and fleet with `domain::allows`, as gRPC does.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::api::json_object;
use super::{Dashboard, DashboardError};
use crate::app::tokens::AuthError;
use crate::domain::{Action, FleetId, Principal, allows};
use crate::store::Store;

/// The cookie that holds the token.
pub const COOKIE: &str = "lockstep_token";

/// The authenticated principal of a dashboard request.
pub struct Authed(pub Principal);

/// No usable token: pages redirect to the login (coming back afterwards),
/// the API answers 401 (or 503 when the token could not be checked).
pub struct LoginRequired {
    page: bool,
    next: String,
    error: DashboardError,
}

impl IntoResponse for LoginRequired {
    fn into_response(self) -> Response {
        if self.page && matches!(self.error, DashboardError::Unauthorized(_)) {
            let next: String = url_encode(&self.next);
            Redirect::to(&format!("/login?next={next}")).into_response()
        } else {
            self.error.into_response()
        }
    }
}

/// Percent-encodes everything but unreserved characters and `/`.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The token a request presents: the bearer header, else the cookie.
fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return Some(v.to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|t| !t.is_empty())
        .map(|t| format!("Bearer {t}"))
}

pub(super) fn from_auth(e: AuthError) -> DashboardError {
    match e {
        AuthError::Store(e) => e.into(),
        other => DashboardError::Unauthorized(other.to_string()),
    }
}

impl<S: Store> FromRequestParts<Dashboard<S>> for Authed {
    type Rejection = LoginRequired;

    async fn from_request_parts(
        parts: &mut Parts,
        d: &Dashboard<S>,
    ) -> Result<Self, Self::Rejection> {
        let header = presented(&parts.headers);
        match d.tokens.authenticate_header(header.as_deref()).await {
            Ok(p) => Ok(Authed(p)),
            Err(e) => Err(LoginRequired {
                page: !parts.uri.path().starts_with("/api/"),
                next: parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_else(|| "/".into()),
                error: from_auth(e),
            }),
        }
    }
}

/// 403 naming what is missing, unless `p` may take `action` on `fleet`.
pub(super) fn check(
    p: &Principal,
    action: Action,
    fleet: Option<&FleetId>,
) -> Result<(), DashboardError> {
    allows(p, action, fleet).map_err(|d| DashboardError::Forbidden(d.to_string()))
}

/// For a list without a fleet filter: 403 unless the role may take
/// `action`; then the fleets to restrict it to (`None`: every fleet).
pub(super) fn within(
    p: &Principal,
    action: Action,
) -> Result<Option<std::collections::BTreeSet<FleetId>>, DashboardError> {
    match p.scope.named() {
        None => check(p, action, None).map(|()| None),
        Some(fleets) => {
            if let Some(f) = fleets.first() {
                check(p, action, Some(f))?;
            }
            Ok(Some(fleets.clone()))
        }
    }
}

/// What the pages need to know about who is logged in.
#[derive(Debug, serde::Serialize)]
pub struct MeView {
    pub token: String,
    pub name: String,
    pub role: &'static str,
    /// Empty: every fleet.
    pub fleets: Vec<String>,
    /// The actions this token may take (on its fleets), by name.
    pub may: Vec<&'static str>,
}

impl From<&Principal> for MeView {
    fn from(p: &Principal) -> Self {
        MeView {
            token: p.token.to_string(),
            name: p.name.clone(),
            role: p.role.as_str(),
            fleets: p
                .scope
                .named()
                .map(|s| s.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            may: Action::ALL
                .into_iter()
                .filter(|a| crate::domain::role_allows(p.role, *a))
                .map(Action::as_str)
                .collect(),
        }
    }
}

/// GET /api/me: the logged-in token.
pub async fn me(Authed(p): Authed) -> Json<MeView> {
    Json(MeView::from(&p))
}

fn cookie(value: &str, max_age: Option<u32>) -> HeaderValue {
    let age = max_age
        .map(|s| format!("; Max-Age={s}"))
        .unwrap_or_default();
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("lockstep_token=; Path=/; Max-Age=0"))
}

/// POST /api/login with `{"token": "lst_..."}`: sets the cookie.
pub async fn login<S: Store>(
    State(d): State<Dashboard<S>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, DashboardError> {
    let m = json_object(&headers, &body)?;
    let token = match m.get("token") {
        Some(serde_json::Value::String(t)) if !t.trim().is_empty() => t.trim().to_owned(),
        _ => {
            return Err(DashboardError::bad(
                "token",
                "an API token (lst_...) is required",
            ));
        }
    };
    // Only what a cookie may carry: the token format is ASCII letters,
    // digits and underscores.
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(DashboardError::Unauthorized(
            AuthError::Malformed.to_string(),
        ));
    }
    let p = d.tokens.authenticate(&token).await.map_err(from_auth)?;
    tracing::info!(token = %p.token, name = %p.name, "dashboard login");
    let mut resp = Json(MeView::from(&p)).into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie(&token, None));
    Ok(resp)
}

/// POST /api/logout: forgets the cookie.
pub async fn logout() -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie("", Some(0)));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_from_the_bearer_header_first_then_the_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; lockstep_token=lst_a_b; x=y"),
        );
        assert_eq!(presented(&h).as_deref(), Some("Bearer lst_a_b"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer lst_c_d"),
        );
        assert_eq!(presented(&h).as_deref(), Some("Bearer lst_c_d"));
        let mut empty = HeaderMap::new();
        empty.insert(header::COOKIE, HeaderValue::from_static("lockstep_token="));
        assert_eq!(presented(&empty), None);
    }

    #[test]
    fn the_cookie_is_http_only_and_same_site_strict() {
        let c = cookie("lst_a_b", None);
        let c = c.to_str().unwrap();
        assert!(c.starts_with("lockstep_token=lst_a_b;"), "{c}");
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Path=/"));
        assert!(cookie("", Some(0)).to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn the_login_redirect_keeps_where_the_person_was_going() {
        assert_eq!(
            url_encode("/devices/dev-1?x=1&y"),
            "/devices/dev-1%3Fx%3D1%26y"
        );
    }
}
