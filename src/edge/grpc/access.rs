//! Access at the gRPC edge. [`RequireToken`] wraps every service but
//! `AgentService` (and health, reflection): it authenticates the bearer
//! API token before the handler runs and puts the [`Principal`] into the
//! request's extensions, or answers `UNAUTHENTICATED` itself. Each handler
//! then takes the principal ([`principal`]) and asks [`check`] about the
//! action and the fleet the request touches — `PERMISSION_DENIED` naming
//! what is missing otherwise. The decision itself is `domain::allows`.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Request, Status};

use crate::app::tokens::{AuthError, Tokens};
use crate::domain::{Action, FleetId, Principal, allows};
use crate::store::Store;

/// `UNAUTHENTICATED` for a token problem; `UNAVAILABLE` when the token
/// could not be checked.
pub fn status_from_auth(e: AuthError) -> Status {
    match e {
        AuthError::Store(e) => super::status_from_store(e),
        other => Status::unauthenticated(other.to_string()),
    }
}

/// The authenticated caller of a request that passed [`RequireToken`].
pub fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        // Only a service registered without `RequireToken` gets here.
        .ok_or_else(|| Status::unauthenticated("this service was reached without authentication"))
}

/// `PERMISSION_DENIED` unless `p` may take `action` on `fleet` (`None`:
/// across every fleet, or the global catalog).
pub fn check(p: &Principal, action: Action, fleet: Option<&FleetId>) -> Result<(), Status> {
    allows(p, action, fleet).map_err(|d| Status::permission_denied(d.to_string()))
}

/// A gRPC service that only authenticated callers reach.
pub struct RequireToken<Svc, S> {
    inner: Svc,
    tokens: Tokens<S>,
}

impl<Svc: Clone, S: Clone> Clone for RequireToken<Svc, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            tokens: self.tokens.clone(),
        }
    }
}

impl<Svc, S: Store> RequireToken<Svc, S> {
    pub fn new(inner: Svc, tokens: Tokens<S>) -> Self {
        Self { inner, tokens }
    }
}

impl<Svc: NamedService, S> NamedService for RequireToken<Svc, S> {
    const NAME: &'static str = Svc::NAME;
}

impl<Svc, S> Service<http::Request<Body>> for RequireToken<Svc, S>
where
    Svc: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    Svc::Future: Send + 'static,
    S: Store,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let tokens = self.tokens.clone();
        Box::pin(async move {
            let header = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap_or("?"));
            match tokens.authenticate_header(header).await {
                Ok(p) => {
                    req.extensions_mut().insert(p);
                    inner.call(req).await
                }
                Err(e) => {
                    if !matches!(e, AuthError::Store(_)) {
                        tracing::debug!(path = %req.uri().path(), error = %e, "request refused: not authenticated");
                    }
                    Ok(status_from_auth(e).into_http())
                }
            }
        })
    }
}

/// For a list without a fleet filter: `PERMISSION_DENIED` unless the role
/// may take `action` at all; then the fleets to restrict the list to
/// (`None`: the token covers every fleet).
pub fn within(
    p: &Principal,
    action: Action,
) -> Result<Option<std::collections::BTreeSet<FleetId>>, Status> {
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
