//! The pure core: blocks, releases, env, device state, and the decisions made
//! over them (delta, impact, gate).
//!
//! ```
//! use std::sync::Arc;
//! use lockstep::domain::*;
//!
//! let block = |name: &str, image: char| Arc::new(BlockVersion {
//!     name: BlockName::new(name).unwrap(),
//!     version: "1.0.0".parse().unwrap(),
//!     image_digest: ImageDigest::new(format!("sha256:{}", image.to_string().repeat(64))).unwrap(),
//!     config: BlockConfig::default(),
//!     env: Env::new(),
//!     depends_on: vec![],
//!     update_strategy: UpdateStrategy::DownloadThenKill,
//! });
//! let release = Arc::new(Release::new(
//!     ReleaseId::new("r1").unwrap(),
//!     FleetId::new("site").unwrap(),
//!     vec![block("a", 'a'), block("b", 'b')],
//!     Env::new(),
//! ).unwrap());
//! let env = Arc::new(EnvContext::default());
//! let a = BlockName::new("a").unwrap();
//! let device = DeviceState {
//!     id: DeviceId::new("dev-1").unwrap(),
//!     current_release: Some(release.id().clone()),
//!     os_version: None,
//!     blocks: release.resolve(&env).as_running(),
//!     env,
//!     locks: [(a.clone(), LockState { held: true, generation: Generation(1), since: Timestamp(0) })].into(),
//! };
//! // a holds its lock: restarting b goes ahead, a reboot asks a to release.
//! let restart_b = decide(&Operation::RestartBlock(BlockName::new("b").unwrap()), &device, None).unwrap();
//! assert!(restart_b.proceeds());
//! let reboot = decide(&Operation::Reboot, &device, None).unwrap();
//! assert_eq!(reboot.holders()[0].block, a);
//! assert_eq!(reboot.holders()[0].reason, Reason::Reboot);
//! ```
//!
//! Architecture invariant: nothing in `domain` does IO, reads a clock or draws
//! randomness: no tokio, sqlx, tonic or prost. Time and randomness are
//! parameters. `tests/domain_is_pure.rs` enforces the import ban.

pub mod access;
pub mod block;
pub mod blockmap;
pub mod delta;
pub mod device;
pub mod env;
pub mod event;
pub mod fleet;
pub mod gate;
pub mod ids;
pub mod impact;
pub mod operation;
pub mod reconcile;
pub mod release;
pub mod rollout;
pub mod shown;
pub mod window;

pub use access::{
    Action, ApiToken, Denied, Principal, Role, Scope, ScopeError, TokenRefused, TokenState, allows,
    check_scope, role_allows, split_token,
};
pub use block::{
    BlockConfig, BlockError, BlockVersion, Dependency, Fingerprint, ImageDigest, UpdateStrategy,
};
pub use blockmap::BlockMap;
pub use delta::{BlockDelta, RestartCause};
pub use device::{DeviceState, LockState, RunningBlock};
pub use env::{
    Env, EnvChange, EnvContext, EnvError, EnvLayer, EnvLevel, EnvName, EnvScope, EnvVar,
};
pub use event::{AgentLife, AgentSession, EventBody, EventKind, LoggedEvent, NewEvent, agent_life};
pub use fleet::{
    AuditEntry, DeviceRecord, DeviceReport, DeviceStatus, Fleet, IntentKind, LockReport, NewIntent,
    ReportedBlock, StoredIntent, TimelineEntry, TimelineEvent,
};
pub use gate::{Decision, Force, ForceError, ReleaseRequest, decide, gate};
pub use ids::{
    AgentEpoch, BlockName, DeviceId, FleetId, Generation, IdError, IntentSeq, OperationId,
    ReleaseId, ReplicaId, Tag, Timestamp, TokenId,
};
pub use impact::{
    Disturbance, Impact, ImpactError, Operation, Reason, ReleaseDiff, diff_releases, impact,
    release_impact,
};
pub use operation::{
    ApplyOutcome, Approval, ApprovalGate, ApprovalStatus, DeferralExpiry, EnvTarget, FleetPolicy,
    NotCancellable, OpProgress, OpStatus, OperationRecord, OperationSpec, PolicyField,
    PolicyUpdate, Step, WindowGate, after_apply, approval_gate, cancelled, deferral_deadline,
    expired_holders, held_back, next_after_missed, next_step,
};
pub use release::{Release, ReleaseError, Target, partial_target};
pub use rollout::{
    Advance, Amount, BatchCounts, MemberState, OnError, Plan, PlanDevice, Rollout, RolloutEvent,
    RolloutId, RolloutKind, RolloutProgress, RolloutState, RolloutTarget, Strategy, StrategyError,
    advance, plan, resume, waiting_lock_breakdown,
};
pub use shown::{Shown, prefix_at_most, shown};
pub use window::{Occurrence, Window, WindowError, WindowRule, WindowScope, open_or_next};
