//! The gate: may this operation proceed on this device now? If not, exactly
//! which lock holders must be asked to release, and why.
//!
//! Architecture invariant: a lock on a block the operation does not disturb
//! never blocks it, and a force overrides only the locks it names.

use std::collections::BTreeSet;

use super::blockmap::BlockMap;

use super::device::{DeviceState, LockState};
use super::ids::{BlockName, Generation};
use super::impact::{self, Impact, ImpactError, Operation, Reason};

/// Why a force was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForceError {
    #[error("a force must name at least one block whose lock it overrides")]
    NoBlocks,
    #[error("a force requires a reason")]
    NoReason,
}

/// An operator's override of specific blocks' locks. It is audited upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Force {
    blocks: BTreeSet<BlockName>,
    reason: String,
}

impl Force {
    pub fn new(blocks: BTreeSet<BlockName>, reason: impl Into<String>) -> Result<Self, ForceError> {
        let reason = reason.into();
        if blocks.is_empty() {
            return Err(ForceError::NoBlocks);
        }
        if reason.trim().is_empty() {
            return Err(ForceError::NoReason);
        }
        Ok(Self { blocks, reason })
    }
    pub fn blocks(&self) -> &BTreeSet<BlockName> {
        &self.blocks
    }
    pub fn reason(&self) -> &str {
        &self.reason
    }
    pub fn overrides(&self, block: &BlockName) -> bool {
        self.blocks.contains(block)
    }
    /// The union of two forces, so merging operations never loses one.
    pub fn merge(&self, other: &Force) -> Force {
        let reason = if self.reason == other.reason {
            self.reason.clone()
        } else {
            format!("{}; {}", self.reason, other.reason)
        };
        Force {
            blocks: self.blocks.union(&other.blocks).cloned().collect(),
            reason,
        }
    }
}

/// A request to one lock holder to release its lock: what the scheduler sends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReleaseRequest {
    pub block: BlockName,
    pub reason: Reason,
    pub handover: bool,
    pub because_of: Option<BlockName>,
    /// The lock generation this request was decided against.
    pub generation: Generation,
}

/// The gate's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Apply now. `fence` holds, for every disturbed block, the lock
    /// generation the decision saw; the agent refuses the apply if any is
    /// older than its own. `forced` lists held locks the force overrode.
    Proceed {
        impact: Impact,
        fence: BlockMap<Generation>,
        forced: Vec<BlockName>,
    },
    /// Wait: ask each holder (in block order) to release.
    Blocked {
        impact: Impact,
        holders: Vec<ReleaseRequest>,
    },
}

impl Decision {
    pub fn proceeds(&self) -> bool {
        matches!(self, Decision::Proceed { .. })
    }
    pub fn impact(&self) -> &Impact {
        match self {
            Decision::Proceed { impact, .. } | Decision::Blocked { impact, .. } => impact,
        }
    }
    /// The blocks whose holders must release first (empty when proceeding).
    pub fn holders(&self) -> &[ReleaseRequest] {
        match self {
            Decision::Proceed { .. } => &[],
            Decision::Blocked { holders, .. } => holders,
        }
    }
}

/// Decides whether `op` may proceed on `device` now.
pub fn decide(
    op: &Operation,
    device: &DeviceState,
    force: Option<&Force>,
) -> Result<Decision, ImpactError> {
    let impact = impact::impact(op, device)?;
    Ok(gate(impact, device, force))
}

/// The gate on an already computed impact.
pub fn gate(impact: Impact, device: &DeviceState, force: Option<&Force>) -> Decision {
    let mut holders = Vec::new();
    let mut forced = Vec::new();
    let mut fence = Vec::with_capacity(impact.disturbed.len());
    // Both maps are ordered by block name: walk them together.
    let mut locks = device.locks.iter().peekable();
    for (block, d) in &impact.disturbed {
        while locks.next_if(|(name, _)| *name < block).is_some() {}
        let lock = match locks.peek() {
            Some((name, lock)) if *name == block => **lock,
            _ => LockState::UNREPORTED,
        };
        fence.push((block.clone(), lock.generation));
        if !lock.held {
            continue;
        }
        if force.is_some_and(|f| f.overrides(block)) {
            forced.push(block.clone());
        } else {
            holders.push(ReleaseRequest {
                block: block.clone(),
                reason: d.reason,
                handover: d.handover,
                because_of: d.because_of.clone(),
                generation: lock.generation,
            });
        }
    }
    if holders.is_empty() {
        Decision::Proceed {
            impact,
            fence: BlockMap::from_sorted_unchecked(fence),
            forced,
        }
    } else {
        Decision::Blocked { impact, holders }
    }
}
