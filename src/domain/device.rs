//! What the platform knows of one device: what it runs, with which env, and
//! which blocks hold their update locks. The device is the authority on locks;
//! this is its last report, fenced by generations.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::block::{BlockVersion, Fingerprint};
use super::env::{Env, EnvContext};
use super::ids::{BlockName, DeviceId, Generation, ReleaseId, Timestamp};

/// One block as it runs on the device: the catalog's block version it reported,
/// the release-wide env it was started with, and the fingerprint of the
/// effective env it reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningBlock {
    pub spec: Arc<BlockVersion>,
    pub release_env: Arc<Env>,
    pub env_fingerprint: Fingerprint,
}

impl RunningBlock {
    pub fn version(&self) -> &semver::Version {
        &self.spec.version
    }
}

/// A block's update lock as last reported by the device agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockState {
    pub held: bool,
    /// Bumped by the agent on every change; older reports never overwrite newer.
    pub generation: Generation,
    /// When the lock last changed state.
    pub since: Timestamp,
}

impl LockState {
    /// The state of a lock the agent has never reported: free, generation 0.
    pub const UNREPORTED: LockState = LockState {
        held: false,
        generation: Generation(0),
        since: Timestamp(0),
    };

    /// Whether `newer` may replace `self`: only a strictly newer generation does.
    pub fn superseded_by(&self, newer: &LockState) -> bool {
        newer.generation > self.generation
    }
}

/// A device's state, as the scheduler decides against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    pub id: DeviceId,
    pub current_release: Option<ReleaseId>,
    pub os_version: Option<String>,
    /// The operator-set env (fleet and device levels) that applies now.
    pub env: Arc<EnvContext>,
    pub blocks: BTreeMap<BlockName, RunningBlock>,
    /// Blocks without an entry have never reported a lock: not held, generation 0.
    pub locks: BTreeMap<BlockName, LockState>,
}

impl DeviceState {
    pub fn lock(&self, block: &BlockName) -> LockState {
        self.locks
            .get(block)
            .copied()
            .unwrap_or(LockState::UNREPORTED)
    }

    /// Applies a lock report unless it is older than what is known.
    /// Returns whether it was applied.
    pub fn apply_lock_report(&mut self, block: BlockName, report: LockState) -> bool {
        let current = self.locks.get(&block);
        if current.is_none_or(|c| c.superseded_by(&report)) {
            self.locks.insert(block, report);
            true
        } else {
            false
        }
    }
}
