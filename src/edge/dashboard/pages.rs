//! The dashboard's pages and assets, compiled into the binary from
//! `src/dashboard/assets/`. Every page is the same shell — shared nav,
//! `app.css`, `app.js` (fetch, live-event and formatting helpers) — around
//! its own body (`<page>.html`) and script (`<page>.js`). Adding a page:
//! write those two files, add a [`Page`] below, route it in `mod.rs`, and
//! add a [`NAV`] entry if it should be in the nav.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};

use super::auth::Authed;
use super::{Dashboard, DashboardError};
use crate::domain::{Action, DeviceId, Principal, RolloutId, allows, shown};
use crate::store::{Store, StoreError};

/// The nav, in order: (path, label). Only pages that exist are listed, so
/// there is never a dead link (a rollout's own page, `/rollouts/<id>`, is
/// linked from the rollouts list).
const NAV: &[(&str, &str)] = &[
    ("/", "Fleet"),
    ("/rollouts", "Rollouts"),
    ("/approvals", "Approvals"),
];

/// One page: its asset names and the nav entry it belongs to.
struct Page {
    /// `<name>.js` is its script.
    name: &'static str,
    title: &'static str,
    body: &'static str,
    /// The nav path shown as current.
    nav: &'static str,
}

const FLEET: Page = Page {
    name: "fleet",
    title: "Fleet",
    body: include_str!("assets/fleet.html"),
    nav: "/",
};
const DEVICE: Page = Page {
    name: "device",
    title: "Device",
    body: include_str!("assets/device.html"),
    nav: "/",
};
const ROLLOUTS: Page = Page {
    name: "rollouts",
    title: "Rollouts",
    body: include_str!("assets/rollouts.html"),
    nav: "/rollouts",
};
const ROLLOUT: Page = Page {
    name: "rollout",
    title: "Rollout",
    body: include_str!("assets/rollout.html"),
    nav: "/rollouts",
};
const APPROVALS: Page = Page {
    name: "approvals",
    title: "Approvals",
    body: include_str!("assets/approvals.html"),
    nav: "/approvals",
};
const LOGIN: Page = Page {
    name: "login",
    title: "Log in",
    body: include_str!("assets/login.html"),
    nav: "",
};

/// (name, content type, content) of every file under `/assets/`.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("assets/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "fleet.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/fleet.js"),
    ),
    (
        "device.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/device.js"),
    ),
    (
        "approvals.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/approvals.js"),
    ),
    (
        "login.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/login.js"),
    ),
    (
        "rollouts.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/rollouts.js"),
    ),
    (
        "rollout.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/rollout.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("assets/favicon.svg"),
    ),
];

/// Everything is served from here; nothing is loaded from elsewhere.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page in the shell, for a logged-in `who` (`None` on the login page).
/// `data` becomes `data-*` attributes of `<body>` (the page's script reads
/// them from `document.body.dataset`).
fn render(page: &Page, who: Option<&Principal>, title: &str, data: &[(&str, &str)]) -> Response {
    shell(
        Some(page.name),
        who,
        page.nav,
        title,
        page.body,
        data,
        StatusCode::OK,
    )
}

/// The shared shell: nav, who is logged in (with a log-out button),
/// stylesheet, `app.js`, and the page's own script.
fn shell(
    script: Option<&str>,
    who: Option<&Principal>,
    nav_current: &str,
    title: &str,
    body: &str,
    data: &[(&str, &str)],
    status: StatusCode,
) -> Response {
    let nav: String = NAV
        .iter()
        .filter(|_| who.is_some())
        .map(|(href, label)| {
            let current = if *href == nav_current {
                " aria-current=\"page\""
            } else {
                ""
            };
            format!("<a href=\"{href}\"{current}>{label}</a>")
        })
        .collect();
    let attrs: String = data
        .iter()
        .map(|(k, v)| format!(" data-{k}=\"{}\"", escape(v)))
        .collect();
    let account = who
        .map(|p| {
            let fleets = p
                .scope
                .named()
                .map(|f| f.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", "))
                .unwrap_or_else(|| "all fleets".into());
            format!(
                "<span class=\"who\" id=\"who\" data-role=\"{role}\">{name} · {role} · {fleets}</span>\n\
                 <button type=\"button\" id=\"logout\" class=\"logout\">Log out</button>\n",
                name = escape(&p.name),
                role = p.role.as_str(),
                fleets = escape(&fleets),
            )
        })
        .unwrap_or_default();
    let page_script = script
        .map(|name| format!("<script src=\"/assets/{name}.js\"></script>\n"))
        .unwrap_or_default();
    let html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} · Lockstep</title>\n\
         <link rel=\"icon\" href=\"/assets/favicon.svg\" type=\"image/svg+xml\">\n\
         <link rel=\"stylesheet\" href=\"/assets/app.css\">\n</head>\n\
         <body data-page=\"{name}\"{attrs}>\n\
         <header class=\"top\">\n<a class=\"brand\" href=\"/\">Lockstep</a>\n\
         <nav aria-label=\"Main\">{nav}</nav>\n\
         <span id=\"live\" class=\"live\" role=\"status\" data-state=\"idle\"></span>\n\
         {account}</header>\n<main id=\"main\">\n{body}</main>\n\
         <script src=\"/assets/app.js\"></script>\n{page_script}</body>\n</html>\n",
        title = escape(title),
        name = script.unwrap_or("plain"),
    );
    let mut resp = (status, Html(html)).into_response();
    secure(&mut resp);
    resp
}

fn secure(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

/// `/login`: paste an API token (or follow a link ending `#token=...`).
pub async fn login() -> Response {
    render(&LOGIN, None, LOGIN.title, &[])
}

/// `/`: fleets, device counts per status, devices.
pub async fn fleet<S: Store>(State(_): State<Dashboard<S>>, Authed(p): Authed) -> Response {
    render(&FLEET, Some(&p), FLEET.title, &[])
}

/// `/approvals`: pending approvals to decide, and recent decisions.
pub async fn approvals<S: Store>(State(_): State<Dashboard<S>>, Authed(p): Authed) -> Response {
    let decides = if crate::domain::role_allows(p.role, Action::DecideApprovals) {
        "yes"
    } else {
        "no"
    };
    render(
        &APPROVALS,
        Some(&p),
        APPROVALS.title,
        &[("decides", decides)],
    )
}

/// `/rollouts`: rollouts, newest first, with their progress (those of the
/// token's fleets).
pub async fn rollouts<S: Store>(State(_): State<Dashboard<S>>, Authed(p): Authed) -> Response {
    render(&ROLLOUTS, Some(&p), ROLLOUTS.title, &[])
}

/// `/rollouts/{id}`: one rollout, live; 404 when there is no such rollout,
/// 403 when it is of a fleet the token does not cover. Pause, resume and
/// abort are offered only to a token that may take them on its fleet.
pub async fn rollout<S: Store>(
    State(d): State<Dashboard<S>>,
    Authed(p): Authed,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Some(id) = id
        .ok()
        .and_then(|Path(id)| id.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .map(RolloutId)
    else {
        return message(
            StatusCode::NOT_FOUND,
            Some(&p),
            "Not found",
            "No such rollout.",
        );
    };
    match d.store.get_rollout(id).await {
        Ok(r) => match allows(&p, Action::ReadRollouts, Some(&r.fleet)) {
            Ok(()) => {
                let acts = if allows(&p, Action::WriteRollouts, Some(&r.fleet)).is_ok() {
                    "yes"
                } else {
                    "no"
                };
                render(
                    &ROLLOUT,
                    Some(&p),
                    &format!("Rollout {id}"),
                    &[("rollout", &id.to_string()), ("acts", acts)],
                )
            }
            Err(denied) => message(
                StatusCode::FORBIDDEN,
                Some(&p),
                "Not allowed",
                &denied.to_string(),
            ),
        },
        Err(StoreError::NotFound { .. }) => message(
            StatusCode::NOT_FOUND,
            Some(&p),
            "Not found",
            &format!("No rollout {id}."),
        ),
        Err(e) => {
            let e = DashboardError::from(e);
            message(e.status(), Some(&p), "Unavailable", &e.to_string())
        }
    }
}

/// `/devices/{id}`: one device; 404 when there is no such device, 403 when
/// it is of a fleet the token does not cover.
pub async fn device<S: Store>(
    State(d): State<Dashboard<S>>,
    Authed(p): Authed,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Some(device) = id.ok().and_then(|Path(id)| DeviceId::new(id).ok()) else {
        return message(
            StatusCode::NOT_FOUND,
            Some(&p),
            "Not found",
            "No such device.",
        );
    };
    match d.store.get_device(&device).await {
        Ok(record) => match allows(&p, Action::ReadDevices, Some(&record.fleet)) {
            Ok(()) => render(
                &DEVICE,
                Some(&p),
                &format!("Device {device}"),
                &[("device", device.as_str())],
            ),
            Err(denied) => message(
                StatusCode::FORBIDDEN,
                Some(&p),
                "Not allowed",
                &denied.to_string(),
            ),
        },
        Err(StoreError::NotFound { .. }) => message(
            StatusCode::NOT_FOUND,
            Some(&p),
            "Not found",
            &format!("No device {device}."),
        ),
        Err(e) => {
            let e = DashboardError::from(e);
            message(e.status(), Some(&p), "Unavailable", &e.to_string())
        }
    }
}

/// A page that only says something (not found, not allowed, unavailable).
fn message(status: StatusCode, who: Option<&Principal>, title: &str, text: &str) -> Response {
    let body = format!(
        "<h1>{}</h1>\n<p>{}</p>\n<p><a href=\"/\">Back to the fleet</a></p>\n",
        escape(title),
        escape(text)
    );
    shell(None, who, "", title, &body, &[], status)
}

/// `/assets/{name}`.
pub async fn asset(name: Result<Path<String>, PathRejection>) -> Response {
    let found = name
        .ok()
        .and_then(|Path(n)| ASSETS.iter().find(|(a, _, _)| *a == n));
    match found {
        Some((_, content_type, content)) => {
            let mut resp = (
                [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
                *content,
            )
                .into_response();
            secure(&mut resp);
            resp
        }
        None => DashboardError::NotFound("no such asset".into()).into_response(),
    }
}

/// Anything else: JSON under `/api/`, a page otherwise.
pub async fn not_found(uri: Uri) -> Response {
    if uri.path().starts_with("/api/") || uri.path() == "/api" {
        DashboardError::NotFound(format!("no endpoint {}", shown(uri.path()))).into_response()
    } else {
        message(
            StatusCode::NOT_FOUND,
            None,
            "Not found",
            &format!("There is no page at {}.", uri.path()),
        )
    }
}
