//! The delta between what a device runs and what it should run, per block.
//!
//! Architecture invariant: a block is unchanged iff its image digest, config and
//! effective env are equal. A new release id or version label alone never
//! restarts anything.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::block::{BlockVersion, Fingerprint};
use super::device::RunningBlock;
use super::ids::BlockName;
use super::release::Target;

/// What changed about a block that makes it restart. When several changed,
/// the first in this order is reported: image, config, env.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RestartCause {
    Image,
    Config,
    Env,
}

/// What happens to one block when moving from one state to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockDelta {
    Unchanged,
    Restart {
        cause: RestartCause,
    },
    /// The block is new: started, nothing running is disturbed.
    Start,
    /// The block is removed: stopped.
    Stop,
}

/// Compares one block's two incarnations.
pub fn compare(from: &RunningBlock, to: &RunningBlock) -> BlockDelta {
    compare_spec(from, &to.spec, &to.env_fingerprint)
}

/// Compares a running block with a block version and the fingerprint of the
/// effective env it would get.
pub fn compare_spec(
    from: &RunningBlock,
    to_spec: &Arc<BlockVersion>,
    to_env: &Fingerprint,
) -> BlockDelta {
    // Block versions are shared from the catalog: the same Arc is the same spec.
    let same_spec = Arc::ptr_eq(&from.spec, to_spec);
    if !same_spec && from.spec.image_digest != to_spec.image_digest {
        BlockDelta::Restart {
            cause: RestartCause::Image,
        }
    } else if !same_spec && from.spec.config != to_spec.config {
        BlockDelta::Restart {
            cause: RestartCause::Config,
        }
    } else if from.env_fingerprint != *to_env {
        BlockDelta::Restart {
            cause: RestartCause::Env,
        }
    } else {
        BlockDelta::Unchanged
    }
}

/// The per-block delta from `from` to `to`, over the union of their blocks.
pub fn delta(
    from: &BTreeMap<BlockName, RunningBlock>,
    to: &BTreeMap<BlockName, RunningBlock>,
) -> BTreeMap<BlockName, BlockDelta> {
    let mut out = BTreeMap::new();
    for (name, f) in from {
        let d = match to.get(name) {
            Some(t) => compare(f, t),
            None => BlockDelta::Stop,
        };
        out.insert(name.clone(), d);
    }
    for name in to.keys() {
        if !from.contains_key(name) {
            out.insert(name.clone(), BlockDelta::Start);
        }
    }
    out
}

/// The per-block delta from what runs to a release target.
pub fn delta_to_target(
    from: &BTreeMap<BlockName, RunningBlock>,
    to: &Target,
) -> BTreeMap<BlockName, BlockDelta> {
    let blocks = to.release.blocks();
    let mut out = BTreeMap::new();
    for (name, f) in from {
        let d = match (blocks.get(name), to.env_fingerprints.get(name)) {
            (Some(spec), Some(fp)) => compare_spec(f, spec, fp),
            _ => BlockDelta::Stop,
        };
        out.insert(name.clone(), d);
    }
    for name in blocks.keys() {
        if !from.contains_key(name) {
            out.insert(name.clone(), BlockDelta::Start);
        }
    }
    out
}
