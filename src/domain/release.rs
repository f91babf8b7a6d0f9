//! A release: a validated set of block versions for a fleet, and its resolution
//! against one device's env into a concrete [`Target`].

use std::collections::BTreeMap;
use std::sync::Arc;

use super::block::{BlockError, BlockVersion, Fingerprint};
use super::device::RunningBlock;
use super::env::{Env, EnvContext};
use super::ids::{BlockName, FleetId, ReleaseId};

/// Why a release was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("release has no blocks")]
    Empty,
    #[error("block {block} appears twice in the release")]
    DuplicateBlock { block: BlockName },
    #[error("block {block} depends on {dependency}, which is not in the release")]
    UnknownDependency {
        block: BlockName,
        dependency: BlockName,
    },
    #[error("dependency cycle: {}", render_cycle(.cycle))]
    DependencyCycle { cycle: Vec<BlockName> },
    #[error("block {block}: {source}")]
    Block {
        block: BlockName,
        #[source]
        source: BlockError,
    },
}

fn render_cycle(cycle: &[BlockName]) -> String {
    let mut parts: Vec<&str> = cycle.iter().map(BlockName::as_str).collect();
    if let Some(first) = cycle.first() {
        parts.push(first.as_str());
    }
    parts.join(" -> ")
}

/// A validated release. Construct with [`Release::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    id: ReleaseId,
    fleet: FleetId,
    blocks: BTreeMap<BlockName, Arc<BlockVersion>>,
    env: Arc<Env>,
}

impl Release {
    /// Validates: at least one block, no duplicates, every dependency present,
    /// no cycles (the error names one).
    pub fn new(
        id: ReleaseId,
        fleet: FleetId,
        blocks: Vec<Arc<BlockVersion>>,
        env: Env,
    ) -> Result<Self, ReleaseError> {
        if blocks.is_empty() {
            return Err(ReleaseError::Empty);
        }
        let mut map = BTreeMap::new();
        for bv in blocks {
            bv.validate().map_err(|source| ReleaseError::Block {
                block: bv.name.clone(),
                source,
            })?;
            let name = bv.name.clone();
            if map.insert(name.clone(), bv).is_some() {
                return Err(ReleaseError::DuplicateBlock { block: name });
            }
        }
        for bv in map.values() {
            for dep in &bv.depends_on {
                if !map.contains_key(&dep.block) {
                    return Err(ReleaseError::UnknownDependency {
                        block: bv.name.clone(),
                        dependency: dep.block.clone(),
                    });
                }
            }
        }
        if let Some(cycle) = find_cycle(&map) {
            return Err(ReleaseError::DependencyCycle { cycle });
        }
        Ok(Self {
            id,
            fleet,
            blocks: map,
            env: Arc::new(env),
        })
    }

    pub fn id(&self) -> &ReleaseId {
        &self.id
    }
    pub fn fleet(&self) -> &FleetId {
        &self.fleet
    }
    pub fn blocks(&self) -> &BTreeMap<BlockName, Arc<BlockVersion>> {
        &self.blocks
    }
    pub fn env(&self) -> &Arc<Env> {
        &self.env
    }

    /// Resolves the release for a device with the given operator env: the
    /// fingerprint of each block's effective env. Devices that share an env
    /// context can share one `Target`.
    pub fn resolve(self: &Arc<Self>, ctx: &EnvContext) -> Target {
        let env_fingerprints = self
            .blocks
            .iter()
            .map(|(name, bv)| {
                (
                    name.clone(),
                    ctx.effective_fingerprint(name, &self.env, &bv.env),
                )
            })
            .collect();
        Target {
            release: Arc::clone(self),
            env_fingerprints,
        }
    }
}

/// Depth-first search for a cycle; returns its blocks in dependency order,
/// starting from the smallest name on it so the message is deterministic.
fn find_cycle(blocks: &BTreeMap<BlockName, Arc<BlockVersion>>) -> Option<Vec<BlockName>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit<'a>(
        name: &'a BlockName,
        blocks: &'a BTreeMap<BlockName, Arc<BlockVersion>>,
        marks: &mut BTreeMap<&'a BlockName, Mark>,
        stack: &mut Vec<&'a BlockName>,
    ) -> Option<Vec<BlockName>> {
        marks.insert(name, Mark::Active);
        stack.push(name);
        if let Some(bv) = blocks.get(name) {
            for dep in &bv.depends_on {
                match marks.get(&dep.block).copied().unwrap_or(Mark::New) {
                    Mark::Active => {
                        let start = stack.iter().position(|b| *b == &dep.block)?;
                        let mut cycle: Vec<BlockName> =
                            stack[start..].iter().map(|b| (*b).clone()).collect();
                        let min = cycle
                            .iter()
                            .enumerate()
                            .min_by(|a, b| a.1.cmp(b.1))
                            .map(|(i, _)| i)
                            .unwrap_or(0);
                        cycle.rotate_left(min);
                        return Some(cycle);
                    }
                    Mark::New => {
                        if let Some((key, _)) = blocks.get_key_value(&dep.block)
                            && let Some(c) = visit(key, blocks, marks, stack)
                        {
                            return Some(c);
                        }
                    }
                    Mark::Done => {}
                }
            }
        }
        stack.pop();
        marks.insert(name, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for name in blocks.keys() {
        if marks.get(name).copied().unwrap_or(Mark::New) == Mark::New {
            let mut stack = Vec::new();
            if let Some(c) = visit(name, blocks, &mut marks, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

/// What a device can move to now when some blocks must stay as they run:
/// the target, except that each `held` block keeps its running version and
/// env. Used for partial releases.
pub fn partial_target(
    target: &Target,
    running: &BTreeMap<BlockName, RunningBlock>,
    held: &std::collections::BTreeSet<BlockName>,
) -> Target {
    let mut blocks = target.release.blocks.clone();
    let mut env_fingerprints = target.env_fingerprints.clone();
    for name in held {
        if let Some(rb) = running.get(name) {
            blocks.insert(name.clone(), Arc::clone(&rb.spec));
            env_fingerprints.insert(name.clone(), rb.env_fingerprint);
        }
    }
    Target {
        release: Arc::new(Release {
            id: target.release.id.clone(),
            fleet: target.release.fleet.clone(),
            blocks,
            env: Arc::clone(&target.release.env),
        }),
        env_fingerprints,
    }
}

/// A release resolved for one env context: what a device should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub release: Arc<Release>,
    pub env_fingerprints: BTreeMap<BlockName, Fingerprint>,
}

impl Target {
    /// The blocks of this target as if they were running, e.g. to diff two releases.
    pub fn as_running(&self) -> BTreeMap<BlockName, RunningBlock> {
        self.release
            .blocks
            .iter()
            .map(|(name, bv)| {
                let fp = self.env_fingerprints[name];
                (
                    name.clone(),
                    RunningBlock {
                        spec: Arc::clone(bv),
                        release_env: Arc::clone(&self.release.env),
                        env_fingerprint: fp,
                    },
                )
            })
            .collect()
    }
}
