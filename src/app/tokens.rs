//! API tokens in the shell: issuing one (random secret, only its hash
//! stored, audited), authenticating a presented bearer token into a
//! [`Principal`], and the bootstrap admin token a server writes to a file
//! when no admin token is usable. What a principal may do is decided by
//! `domain::access`; the gRPC edge (`grpc::access`) and the dashboard call
//! [`Tokens::authenticate`] and then that decision.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::clock;
use crate::domain::{
    ApiToken, AuditEntry, Principal, Role, Scope, Timestamp, TokenRefused, split_token,
};
use crate::edge::auth;
use crate::store::{Store, StoreError};

/// Why a request could not be authenticated (`UNAUTHENTICATED`, or 401 on
/// the dashboard); the message never echoes the secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing authorization: Bearer <API token>")]
    Missing,
    #[error(
        "a device credential is accepted only by AgentService; other services need an API token (lst_...)"
    )]
    DeviceCredential,
    #[error("not an API token (expected lst_<id>_<secret>)")]
    Malformed,
    #[error("invalid API token")]
    Invalid,
    #[error(transparent)]
    Refused(#[from] TokenRefused),
    /// The token could not be checked (the database is unreachable).
    #[error(transparent)]
    Store(StoreError),
}

/// Authenticates API tokens against the store. Cheap to clone.
#[derive(Clone)]
pub struct Tokens<S> {
    store: S,
}

impl<S: Store> Tokens<S> {
    pub fn new(store: S) -> Self {
        Self { store }
    }

    /// The principal of an `authorization` header value (`Bearer <token>`).
    pub async fn authenticate_header(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let value = header.map(str::trim).filter(|v| !v.is_empty());
        let Some(value) = value else {
            return Err(AuthError::Missing);
        };
        let token = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => return Err(AuthError::Malformed),
        };
        self.authenticate(token).await
    }

    /// The principal of a presented token: it must exist, match its stored
    /// hash (compared in constant time), and be neither revoked nor expired.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        if token.starts_with("lsd_") {
            return Err(AuthError::DeviceCredential);
        }
        let (id, _) = split_token(token).ok_or(AuthError::Malformed)?;
        let (stored, hash) = match self.store.get_token(&id).await {
            Ok(found) => found,
            Err(StoreError::NotFound { .. }) => return Err(AuthError::Invalid),
            Err(e) => return Err(AuthError::Store(e)),
        };
        if !auth::verify_credential(token, &hash) {
            return Err(AuthError::Invalid);
        }
        Ok(stored.principal_at(clock::now())?)
    }
}

/// How often a long-lived stream (a watch) checks that the token that
/// opened it is still usable.
pub const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Resolves once the token `id` can no longer be used (revoked, expired or
/// deleted), looking every `every`; the database being away is not a
/// reason (the stream goes on and the next look decides). A watch selects
/// on this and ends `UNAUTHENTICATED` when it resolves.
pub async fn until_unusable<S: Store>(
    store: S,
    id: crate::domain::TokenId,
    every: std::time::Duration,
) -> AuthError {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.get_token(&id).await {
            Ok((token, _)) => {
                if let Err(refused) = token.principal_at(clock::now()) {
                    return AuthError::Refused(refused);
                }
            }
            Err(StoreError::NotFound { .. }) => return AuthError::Invalid,
            Err(e) => tracing::debug!(error = %e, token = %id, "cannot re-check a watch's token"),
        }
    }
}

/// A token just created: the record, and the token itself, shown once.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: ApiToken,
    pub secret: String,
}

/// What a new token is.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub role: Role,
    pub scope: Scope,
    pub expires: Option<Timestamp>,
}

/// Creates a token (its hash stored) and audits it as `token_created` by
/// `actor`.
pub async fn issue<S: Store>(store: &S, new: NewToken, actor: &str) -> Result<Issued, StoreError> {
    let (id, secret, hash) = auth::new_api_token();
    let now = clock::now();
    let token = ApiToken {
        id,
        name: new.name,
        role: new.role,
        scope: new.scope,
        created_by: actor.to_owned(),
        created: now,
        expires: new.expires,
        revoked: None,
        revoked_by: None,
    };
    store.create_token(&token, &hash).await?;
    audit_created(store, &token, actor).await?;
    Ok(Issued { token, secret })
}

/// Writes `token_created` to the audit log (a token belongs to no fleet).
async fn audit_created<S: Store>(
    store: &S,
    token: &ApiToken,
    actor: &str,
) -> Result<(), StoreError> {
    store
        .append_audit(&AuditEntry {
            at: token.created,
            actor: actor.to_owned(),
            action: "token_created".into(),
            subject: format!("token {}", token.id),
            fleet: None,
            reason: String::new(),
            details: serde_json::json!({
                "name": token.name,
                "role": token.role.as_str(),
                "fleets": token.scope.named().map(|s| s.iter().map(ToString::to_string).collect::<Vec<_>>()).unwrap_or_default(),
                "expires_unix_ms": token.expires.map(|t| t.0),
            })
            .to_string(),
        })
        .await
        .map(drop)
}

/// Why the bootstrap admin token could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("writing the bootstrap admin token to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("storing the bootstrap admin token: {0}")]
    Store(#[from] StoreError),
}

/// The name of the bootstrap admin token.
pub const BOOTSTRAP_NAME: &str = "bootstrap-admin";
/// Who creates it, in the audit log.
pub const BOOTSTRAP_ACTOR: &str = "lockstep serve";

/// When no admin token is usable (the first start, or every admin token
/// was revoked or has expired), creates one and writes it to `path` (mode
/// 0600, replacing what is there). Returns the new token's record, or
/// `None` when an admin token exists. The file is written before the token
/// is stored, so a stored bootstrap token always has its file; replicas
/// starting together store one (the store checks and inserts in one
/// statement).
pub async fn bootstrap<S: Store>(
    store: &S,
    path: &Path,
) -> Result<Option<ApiToken>, BootstrapError> {
    let write_err = |source| BootstrapError::Write {
        path: path.to_owned(),
        source,
    };
    let (id, secret, hash) = auth::new_api_token();
    let now = clock::now();
    let token = ApiToken {
        id,
        name: BOOTSTRAP_NAME.into(),
        role: Role::Admin,
        scope: Scope::AllFleets,
        created_by: BOOTSTRAP_ACTOR.into(),
        created: now,
        expires: None,
        revoked: None,
        revoked_by: None,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(write_err)?;
    // Created 0600 by tempfile, beside the target, so the rename is atomic.
    let mut file = tempfile::NamedTempFile::new_in(&dir).map_err(write_err)?;
    file.write_all(format!("{secret}\n").as_bytes())
        .and_then(|()| file.as_file().sync_all())
        .map_err(write_err)?;
    if !store.create_token_unless_admin(&token, &hash, now).await? {
        return Ok(None);
    }
    let persisted = file.persist(path).map_err(|e| e.error).and_then(|f| {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
    });
    if let Err(source) = persisted {
        // Nobody could read it: revoke it, so the next start tries again.
        let _ = store.revoke_token(&token.id, BOOTSTRAP_ACTOR, now).await;
        return Err(write_err(source));
    }
    audit_created(store, &token, BOOTSTRAP_ACTOR).await?;
    Ok(Some(token))
}

/// Reads a token file (as written by the bootstrap or `lockstep token
/// create --token-out`): the token, trimmed.
pub fn read_token_file(path: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_owned())
}
