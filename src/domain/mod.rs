//! The pure core: blocks, releases, env, device state, and the decisions made
//! over them (delta, impact, gate).
//!
//! Architecture invariant: nothing in `domain` does IO, reads a clock or draws
//! randomness: no tokio, sqlx, tonic or prost. Time and randomness are
//! parameters. `tests/domain_is_pure.rs` enforces the import ban.

pub mod block;
pub mod blockmap;
pub mod delta;
pub mod device;
pub mod env;
pub mod fleet;
pub mod gate;
pub mod ids;
pub mod impact;
pub mod operation;
pub mod release;
pub mod window;

pub use block::{
    BlockConfig, BlockError, BlockVersion, Dependency, Fingerprint, ImageDigest, UpdateStrategy,
};
pub use blockmap::BlockMap;
pub use delta::{BlockDelta, RestartCause};
pub use device::{DeviceState, LockState, RunningBlock};
pub use env::{
    Env, EnvChange, EnvContext, EnvError, EnvLayer, EnvLevel, EnvName, EnvScope, EnvVar,
};
pub use fleet::{
    AuditEntry, DeviceRecord, DeviceReport, DeviceStatus, Fleet, IntentKind, LockReport, NewIntent,
    ReportedBlock, StoredIntent,
};
pub use gate::{Decision, Force, ForceError, ReleaseRequest, decide, gate};
pub use ids::{
    BlockName, DeviceId, FleetId, Generation, IdError, IntentSeq, OperationId, ReleaseId, Tag,
    Timestamp,
};
pub use impact::{
    Disturbance, Impact, ImpactError, Operation, Reason, ReleaseDiff, diff_releases, impact,
    release_impact,
};
pub use operation::{
    ApplyOutcome, Approval, ApprovalGate, ApprovalStatus, DeferralExpiry, FleetPolicy, OpProgress,
    OpStatus, OperationRecord, OperationSpec, Step, WindowGate, after_apply, approval_gate,
    deferral_deadline, expired_holders, next_step,
};
pub use release::{Release, ReleaseError, Target};
pub use window::{Occurrence, Window, WindowError, WindowRule, WindowScope, open_or_next};
