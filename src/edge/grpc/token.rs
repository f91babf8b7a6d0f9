//! `TokenService`: API tokens for everything but the agents — created with
//! a role and fleets (the token shown once, only its hash stored), listed,
//! revoked at once; every change audited. Admin only, except `WhoAmI`.

use tonic::{Request, Response, Status};

use super::access::{check, principal};
use super::convert::{ConvertError, at_most, count_at_most};
use super::pb::{self, token_service_server::TokenService};
use super::status_from_store;
use crate::app::tokens::{self, NewToken};
use crate::clock;
use crate::domain::{
    Action, ApiToken, AuditEntry, FleetId, Role, Scope, Timestamp, TokenId, check_scope, shown,
};
use crate::edge::limits::{MAX_TEXT_BYTES, MAX_TOKEN_FLEETS, MAX_TOKEN_NAME_CHARS};
use crate::store::Store;

pub struct TokenApi<S> {
    store: S,
}

impl<S: Store> TokenApi<S> {
    pub fn new(store: S) -> Self {
        Self { store }
    }
}

/// Longest a token may live: ten years.
const MAX_LIFETIME_SECONDS: u64 = 10 * 366 * 86_400;

pub(crate) fn token_to_pb(t: &ApiToken, now: Timestamp) -> pb::TokenInfo {
    pb::TokenInfo {
        id: t.id.to_string(),
        name: t.name.clone(),
        role: t.role.as_str().to_owned(),
        fleets: t
            .scope
            .named()
            .map(|s| s.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        created_by: t.created_by.clone(),
        created_unix_ms: t.created.0,
        expires_unix_ms: t.expires.map_or(0, |e| e.0),
        revoked_unix_ms: t.revoked.map_or(0, |r| r.0),
        revoked_by: t.revoked_by.clone().unwrap_or_default(),
        state: t.state_at(now).as_str().to_owned(),
    }
}

impl TryFrom<pb::CreateTokenRequest> for NewToken {
    type Error = ConvertError;

    fn try_from(r: pb::CreateTokenRequest) -> Result<Self, ConvertError> {
        let role = Role::parse(&r.role).ok_or_else(|| {
            ConvertError::new(
                "role",
                format!(
                    "{} is not admin, operator, customer or viewer",
                    shown(&r.role)
                ),
            )
        })?;
        let name = r.name.trim();
        if name.chars().count() > MAX_TOKEN_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(ConvertError::new(
                "name",
                format!("at most {MAX_TOKEN_NAME_CHARS} characters, no control characters"),
            ));
        }
        count_at_most("fleets", r.fleets.len(), MAX_TOKEN_FLEETS)?;
        let fleets = r
            .fleets
            .iter()
            .enumerate()
            .map(|(i, f)| FleetId::new(f).map_err(|e| ConvertError::new(format!("fleets[{i}]"), e)))
            .collect::<Result<Vec<_>, _>>()?;
        let scope = Scope::fleets(fleets);
        check_scope(role, &scope).map_err(|e| ConvertError::new("fleets", e))?;
        let expires = match r.expires_in_seconds {
            0 => None,
            s if s > MAX_LIFETIME_SECONDS => {
                return Err(ConvertError::new("expires_in_seconds", "at most ten years"));
            }
            s => Some(Timestamp(
                clock::now()
                    .0
                    .saturating_add(i64::try_from(s * 1000).unwrap_or(i64::MAX)),
            )),
        };
        Ok(NewToken {
            name: if name.is_empty() {
                role.as_str().to_owned()
            } else {
                name.to_owned()
            },
            role,
            scope,
            expires,
        })
    }
}

#[tonic::async_trait]
impl<S: Store> TokenService for TokenApi<S> {
    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let p = principal(&req)?;
        check(&p, Action::ManageTokens, None)?;
        let new = NewToken::try_from(req.into_inner())?;
        for f in new.scope.named().into_iter().flatten() {
            self.store.get_fleet(f).await.map_err(status_from_store)?;
        }
        let issued = tokens::issue(&self.store, new, &p.actor())
            .await
            .map_err(status_from_store)?;
        let t = &issued.token;
        tracing::info!(token = %t.id, role = %t.role, by = %p.actor(), "API token created");
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(token_to_pb(t, clock::now())),
            secret: issued.secret,
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let p = principal(&req)?;
        check(&p, Action::ManageTokens, None)?;
        let now = clock::now();
        let tokens = self.store.list_tokens().await.map_err(status_from_store)?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.iter().map(|t| token_to_pb(t, now)).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let p = principal(&req)?;
        check(&p, Action::ManageTokens, None)?;
        let req = req.into_inner();
        let id = TokenId::new(&req.id).map_err(|e| ConvertError::new("id", e))?;
        at_most("reason", &req.reason, MAX_TEXT_BYTES)?;
        let now = clock::now();
        let token = self
            .store
            .revoke_token(&id, &p.actor(), now)
            .await
            .map_err(status_from_store)?;
        self.store
            .append_audit(&AuditEntry {
                at: now,
                actor: p.actor(),
                action: "token_revoked".into(),
                subject: format!("token {id}"),
                fleet: None,
                reason: req.reason,
                details: serde_json::json!({
                    "name": token.name,
                    "role": token.role.as_str(),
                })
                .to_string(),
            })
            .await
            .map_err(status_from_store)?;
        tracing::info!(token = %id, by = %p.actor(), "API token revoked");
        Ok(Response::new(pb::RevokeTokenResponse {
            token: Some(token_to_pb(&token, now)),
        }))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let p = principal(&req)?;
        let (token, _) = self
            .store
            .get_token(&p.token)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(pb::WhoAmIResponse {
            token: Some(token_to_pb(&token, clock::now())),
        }))
    }
}
