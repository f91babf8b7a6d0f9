//! What runs on its own inside `lockstep serve`: the reconciler's driver
//! (woken by nudges and timers; the rollout controller lives beside its use
//! cases in `app::rollouts`) and the lock-report ingest (group commit).
//! Each only translates between the store and the domain.

pub mod ingest;
pub mod replica;
pub mod scheduler;
