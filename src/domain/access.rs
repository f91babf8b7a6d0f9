//! Who may do what. Every non-agent RPC and every dashboard request is made
//! by a [`Principal`] — an API token's role and fleet scope — and asks
//! [`allows`] whether that principal may take one [`Action`] on one fleet.
//! The shell authenticates the bearer token and looks up which fleet a
//! request touches (a device's, an operation's device's, a release's, a
//! rollout's, an approval's operation's device's); the decision is made
//! here, once, as a pure function.
//!
//! The matrix (✓: allowed on the fleets the token is scoped to):
//!
//! | action | admin | operator | customer | viewer |
//! |---|---|---|---|---|
//! | read the catalog (blocks, versions) | ✓ | ✓ | ✓ | ✓ |
//! | add blocks or block versions | ✓ | ✓ | | |
//! | create fleets | ✓ | | | |
//! | read fleets | ✓ | ✓ | ✓ | ✓ |
//! | read releases (and diffs) | ✓ | ✓ | ✓ | ✓ |
//! | create releases | ✓ | ✓ | | |
//! | read devices and their state, watch events | ✓ | ✓ | ✓ | ✓ |
//! | register devices | ✓ | ✓ | | |
//! | read env variables | ✓ | ✓ | | ✓ |
//! | set or unset env variables | ✓ | ✓ | | |
//! | read operations | ✓ | ✓ | ✓ | ✓ |
//! | create or cancel operations | ✓ | ✓ | | |
//! | force operations past locks | ✓ | ✓ | | |
//! | read rollouts | ✓ | ✓ | ✓ | ✓ |
//! | start, pause, resume, abort rollouts | ✓ | ✓ | | |
//! | read windows and fleet policy | ✓ | ✓ | ✓ | ✓ |
//! | change windows or fleet policy | ✓ | ✓ | | |
//! | read approvals | ✓ | ✓ | ✓ | ✓ |
//! | approve or decline | ✓ | | ✓ | |
//! | read the audit log | ✓ | ✓ | | ✓ |
//! | manage API tokens | ✓ | | | |
//!
//! Scope: blocks and block versions are one **global catalog** (inert until
//! a fleet's release uses them), so reading and adding them needs no fleet.
//! Everything else belongs to a fleet: a request on fleet F needs a token
//! whose scope covers F, and a request that spans every fleet (creating a
//! fleet, a window on a device tag, managing tokens, an audit entry of no
//! fleet) needs a token scoped to all fleets. Admin tokens always cover
//! every fleet; operator and customer tokens name at least one fleet; a
//! viewer may do either (a wall dashboard, or one customer's site).

use std::collections::BTreeSet;
use std::fmt;

use super::ids::{FleetId, Timestamp, TokenId};

/// What a token may do, before its fleet scope is considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Everything, on every fleet, including tokens and fleets.
    Admin,
    /// Runs fleets: catalog, devices, env, operations (and forces),
    /// rollouts, windows and policy.
    Operator,
    /// Follows their fleets and approves or declines maintenance windows.
    Customer,
    /// Reads everything in scope and changes nothing (dashboards).
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Customer, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Customer => "customer",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fleets a token may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    AllFleets,
    /// These fleets only; never empty (see [`Scope::fleets`]).
    Fleets(BTreeSet<FleetId>),
}

impl Scope {
    /// A scope of the named fleets; none named means every fleet.
    pub fn fleets(fleets: impl IntoIterator<Item = FleetId>) -> Scope {
        let set: BTreeSet<FleetId> = fleets.into_iter().collect();
        if set.is_empty() {
            Scope::AllFleets
        } else {
            Scope::Fleets(set)
        }
    }

    pub fn covers(&self, fleet: &FleetId) -> bool {
        match self {
            Scope::AllFleets => true,
            Scope::Fleets(set) => set.contains(fleet),
        }
    }

    pub fn is_all(&self) -> bool {
        matches!(self, Scope::AllFleets)
    }

    /// The fleets named, or `None` for every fleet.
    pub fn named(&self) -> Option<&BTreeSet<FleetId>> {
        match self {
            Scope::AllFleets => None,
            Scope::Fleets(set) => Some(set),
        }
    }
}

/// Who makes a request: an authenticated API token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token: TokenId,
    pub name: String,
    pub role: Role,
    pub scope: Scope,
}

impl Principal {
    /// How the audit log and decisions name this principal:
    /// `name (token id)`.
    pub fn actor(&self) -> String {
        format!("{} (token {})", self.name, self.token)
    }

    /// [`Principal::actor`], with what the client said about who it acts
    /// for (`--actor`), if anything: `customer@site via name (token id)`.
    pub fn actor_noting(&self, note: &str) -> String {
        let note = note.trim();
        if note.is_empty() || note == self.name {
            self.actor()
        } else {
            let note: String = note.chars().take(256).collect();
            format!("{note} via {}", self.actor())
        }
    }

    /// Whether this principal may see things of `fleet` at all.
    pub fn sees(&self, fleet: &FleetId) -> bool {
        self.scope.covers(fleet)
    }
}

/// The kinds of request, one per kind of RPC (see the module's matrix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    ReadCatalog,
    WriteCatalog,
    CreateFleet,
    ReadFleets,
    ReadReleases,
    WriteReleases,
    ReadDevices,
    RegisterDevices,
    ReadEnv,
    WriteEnv,
    ReadOperations,
    WriteOperations,
    Force,
    ReadRollouts,
    WriteRollouts,
    ReadWindows,
    WriteWindows,
    ReadApprovals,
    DecideApprovals,
    ReadAudit,
    ManageTokens,
}

impl Action {
    pub const ALL: [Action; 21] = [
        Action::ReadCatalog,
        Action::WriteCatalog,
        Action::CreateFleet,
        Action::ReadFleets,
        Action::ReadReleases,
        Action::WriteReleases,
        Action::ReadDevices,
        Action::RegisterDevices,
        Action::ReadEnv,
        Action::WriteEnv,
        Action::ReadOperations,
        Action::WriteOperations,
        Action::Force,
        Action::ReadRollouts,
        Action::WriteRollouts,
        Action::ReadWindows,
        Action::WriteWindows,
        Action::ReadApprovals,
        Action::DecideApprovals,
        Action::ReadAudit,
        Action::ManageTokens,
    ];

    /// A stable name (`write_operations`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::ReadCatalog => "read_catalog",
            Action::WriteCatalog => "write_catalog",
            Action::CreateFleet => "create_fleet",
            Action::ReadFleets => "read_fleets",
            Action::ReadReleases => "read_releases",
            Action::WriteReleases => "write_releases",
            Action::ReadDevices => "read_devices",
            Action::RegisterDevices => "register_devices",
            Action::ReadEnv => "read_env",
            Action::WriteEnv => "write_env",
            Action::ReadOperations => "read_operations",
            Action::WriteOperations => "write_operations",
            Action::Force => "force",
            Action::ReadRollouts => "read_rollouts",
            Action::WriteRollouts => "write_rollouts",
            Action::ReadWindows => "read_windows",
            Action::WriteWindows => "write_windows",
            Action::ReadApprovals => "read_approvals",
            Action::DecideApprovals => "decide_approvals",
            Action::ReadAudit => "read_audit",
            Action::ManageTokens => "manage_tokens",
        }
    }

    /// What it is, in words, for refusals (`a viewer token may not ...`).
    pub fn describe(self) -> &'static str {
        match self {
            Action::ReadCatalog => "read the catalog",
            Action::WriteCatalog => "add blocks or block versions",
            Action::CreateFleet => "create fleets",
            Action::ReadFleets => "read fleets",
            Action::ReadReleases => "read releases",
            Action::WriteReleases => "create releases",
            Action::ReadDevices => "read devices",
            Action::RegisterDevices => "register devices",
            Action::ReadEnv => "read env variables",
            Action::WriteEnv => "set or unset env variables",
            Action::ReadOperations => "read operations",
            Action::WriteOperations => "create or cancel operations",
            Action::Force => "force operations past locks",
            Action::ReadRollouts => "read rollouts",
            Action::WriteRollouts => "start, pause, resume or abort rollouts",
            Action::ReadWindows => "read maintenance windows or fleet policy",
            Action::WriteWindows => "change maintenance windows or fleet policy",
            Action::ReadApprovals => "read approvals",
            Action::DecideApprovals => "approve or decline",
            Action::ReadAudit => "read the audit log",
            Action::ManageTokens => "manage API tokens",
        }
    }

    /// Whether the action is on the global catalog, which belongs to no
    /// fleet: any scope may take it.
    pub fn is_global(self) -> bool {
        matches!(self, Action::ReadCatalog | Action::WriteCatalog)
    }
}

/// Whether `role` may take `action` at all (on the fleets in its scope).
pub fn role_allows(role: Role, action: Action) -> bool {
    use Action as A;
    match role {
        Role::Admin => true,
        Role::Operator => !matches!(
            action,
            A::CreateFleet | A::DecideApprovals | A::ManageTokens
        ),
        Role::Customer => matches!(
            action,
            A::ReadCatalog
                | A::ReadFleets
                | A::ReadReleases
                | A::ReadDevices
                | A::ReadOperations
                | A::ReadRollouts
                | A::ReadWindows
                | A::ReadApprovals
                | A::DecideApprovals
        ),
        Role::Viewer => matches!(
            action,
            A::ReadCatalog
                | A::ReadFleets
                | A::ReadReleases
                | A::ReadDevices
                | A::ReadEnv
                | A::ReadOperations
                | A::ReadRollouts
                | A::ReadWindows
                | A::ReadApprovals
                | A::ReadAudit
        ),
    }
}

/// Why a principal may not do something; the message names what is missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{} {role} token may not {}", article(*role), action.describe())]
    Role { role: Role, action: Action },
    #[error("this token is not scoped to fleet {fleet} (it may {} only on fleets {})", action.describe(), list(fleets))]
    Fleet {
        fleet: FleetId,
        action: Action,
        fleets: BTreeSet<FleetId>,
    },
    #[error("to {} across every fleet, a token scoped to all fleets is needed (this one covers {})", action.describe(), list(fleets))]
    AllFleets {
        action: Action,
        fleets: BTreeSet<FleetId>,
    },
}

fn article(role: Role) -> &'static str {
    match role {
        Role::Admin | Role::Operator => "an",
        Role::Customer | Role::Viewer => "a",
    }
}

fn list(fleets: &BTreeSet<FleetId>) -> String {
    fleets
        .iter()
        .map(FleetId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The one access decision: may `p` take `action` on `fleet`? `fleet` is
/// the fleet the request touches, or `None` for a request that spans every
/// fleet (or, for the global catalog, none).
pub fn allows(p: &Principal, action: Action, fleet: Option<&FleetId>) -> Result<(), Denied> {
    if !role_allows(p.role, action) {
        return Err(Denied::Role {
            role: p.role,
            action,
        });
    }
    if action.is_global() {
        return Ok(());
    }
    match (&p.scope, fleet) {
        (Scope::AllFleets, _) => Ok(()),
        (Scope::Fleets(set), Some(f)) if set.contains(f) => Ok(()),
        (Scope::Fleets(set), Some(f)) => Err(Denied::Fleet {
            fleet: f.clone(),
            action,
            fleets: set.clone(),
        }),
        (Scope::Fleets(set), None) => Err(Denied::AllFleets {
            action,
            fleets: set.clone(),
        }),
    }
}

/// Why a token cannot be issued with this role and scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("an admin token covers every fleet; do not name fleets")]
    AdminNamesFleets,
    #[error("{} {role} token must name at least one fleet", article(*role))]
    FleetsRequired { role: Role },
}

/// Checks the scope rule for a new token: admin tokens cover every fleet,
/// operator and customer tokens name fleets, viewers may do either.
pub fn check_scope(role: Role, scope: &Scope) -> Result<(), ScopeError> {
    match (role, scope) {
        (Role::Admin, Scope::Fleets(_)) => Err(ScopeError::AdminNamesFleets),
        (Role::Operator | Role::Customer, Scope::AllFleets) => {
            Err(ScopeError::FleetsRequired { role })
        }
        _ => Ok(()),
    }
}

/// An API token as stored: everything but its secret (only a hash of the
/// whole token is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: TokenId,
    pub name: String,
    pub role: Role,
    pub scope: Scope,
    /// Who created it (an actor, see [`Principal::actor`]; `lockstep serve`
    /// for the bootstrap token).
    pub created_by: String,
    pub created: Timestamp,
    /// `None`: never expires.
    pub expires: Option<Timestamp>,
    pub revoked: Option<Timestamp>,
    pub revoked_by: Option<String>,
}

/// Whether a token can be used at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Active,
    Expired,
    Revoked,
}

impl TokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Active => "active",
            TokenState::Expired => "expired",
            TokenState::Revoked => "revoked",
        }
    }
}

/// Why a stored token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefused {
    #[error("token {id} was revoked")]
    Revoked { id: TokenId },
    #[error("token {id} expired")]
    Expired { id: TokenId },
}

impl ApiToken {
    /// Revoked wins over expired; a token expires at its `expires` instant.
    pub fn state_at(&self, now: Timestamp) -> TokenState {
        if self.revoked.is_some() {
            TokenState::Revoked
        } else if self.expires.is_some_and(|e| now >= e) {
            TokenState::Expired
        } else {
            TokenState::Active
        }
    }

    /// The principal this token authenticates, if it is usable at `now`.
    pub fn principal_at(&self, now: Timestamp) -> Result<Principal, TokenRefused> {
        match self.state_at(now) {
            TokenState::Active => Ok(Principal {
                token: self.id.clone(),
                name: self.name.clone(),
                role: self.role,
                scope: self.scope.clone(),
            }),
            TokenState::Expired => Err(TokenRefused::Expired {
                id: self.id.clone(),
            }),
            TokenState::Revoked => Err(TokenRefused::Revoked {
                id: self.id.clone(),
            }),
        }
    }
}

/// Every API token starts with this (device credentials with `lsd_`).
pub const TOKEN_PREFIX: &str = "lst_";

/// Splits a presented bearer token `lst_<id>_<secret>` into its id and
/// secret; `None` if it does not have that shape.
pub fn split_token(token: &str) -> Option<(TokenId, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    if secret.is_empty() {
        return None;
    }
    Some((TokenId::new(id).ok()?, secret))
}
