//! Which blocks an operation stops, and why: the answer every lock decision
//! rests on. Dependency propagation lives here too.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::block::Dependency;
use super::blockmap::BlockMap;
use super::delta::{self, BlockDelta, RestartCause};
use super::device::{DeviceState, RunningBlock};
use super::env::EnvContext;
use super::env::{EnvChange, EnvError};
use super::ids::BlockName;
use super::release::{Release, Target};

/// Why a block is disturbed (or, for `UpdateNoRestart`, told about a release
/// that leaves it alone). These are what a lock holder is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// A release replaces this block; a handover may be possible.
    UpdateRestart,
    /// A release lands and leaves this block untouched (informational).
    UpdateNoRestart,
    /// The block's effective env changes, so it restarts.
    EnvChange,
    /// An operator restarts this block.
    Restart,
    /// The block is stopped (by an operator, or removed by a release).
    Stop,
    /// A block this one depends on (`restart: true`) restarts or stops.
    DependencyRestart,
    Reboot,
    Shutdown,
    /// The host OS is updated: a reboot, never a handover.
    OsUpdate,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::UpdateRestart,
        Reason::UpdateNoRestart,
        Reason::EnvChange,
        Reason::Restart,
        Reason::Stop,
        Reason::DependencyRestart,
        Reason::Reboot,
        Reason::Shutdown,
        Reason::OsUpdate,
    ];

    /// The wire and log spelling (`update_restart`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UpdateRestart => "update_restart",
            Reason::UpdateNoRestart => "update_no_restart",
            Reason::EnvChange => "env_change",
            Reason::Restart => "restart",
            Reason::Stop => "stop",
            Reason::DependencyRestart => "dependency_restart",
            Reason::Reboot => "reboot",
            Reason::Shutdown => "shutdown",
            Reason::OsUpdate => "os_update",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something the platform wants to do to a device.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// Move the device to a release (resolved for its env).
    UpdateRelease {
        target: Arc<Target>,
    },
    /// Set or unset operator env variables.
    EnvChange(EnvChange),
    /// Bring running blocks to the effective env of `target` (the device's
    /// current release resolved with the operator env as now stored): the
    /// blocks whose env differs from what they run with restart.
    ApplyEnv {
        target: Arc<Target>,
    },
    RestartBlock(BlockName),
    StopBlock(BlockName),
    StartBlock(BlockName),
    Reboot,
    Shutdown,
    OsUpdate {
        version: String,
    },
}

impl Operation {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Operation::UpdateRelease { .. } => "update_release",
            Operation::EnvChange(_) => "env_change",
            Operation::ApplyEnv { .. } => "apply_env",
            Operation::RestartBlock(_) => "restart_block",
            Operation::StopBlock(_) => "stop_block",
            Operation::StartBlock(_) => "start_block",
            Operation::Reboot => "reboot",
            Operation::Shutdown => "shutdown",
            Operation::OsUpdate { .. } => "os_update",
        }
    }
}

/// Why an operation's impact could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImpactError {
    #[error("block {block} is not running on the device")]
    NotRunning { block: BlockName },
    #[error("invalid env change: {source}")]
    Env {
        #[source]
        source: EnvError,
    },
}

/// How one block is disturbed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Disturbance {
    pub reason: Reason,
    /// Whether the block can hand its state over to its replacement.
    pub handover: bool,
    /// For [`Reason::DependencyRestart`]: the dependency whose restart or stop
    /// causes this one.
    pub because_of: Option<BlockName>,
    /// For a release update: what changed about the block, if it restarts for
    /// its own sake.
    pub cause: Option<RestartCause>,
}

impl Disturbance {
    fn plain(reason: Reason) -> Self {
        Self {
            reason,
            handover: false,
            because_of: None,
            cause: None,
        }
    }
}

/// An operation's impact on one device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Impact {
    /// Running blocks the operation stops or restarts.
    pub disturbed: BlockMap<Disturbance>,
    /// Running blocks that are not disturbed but are told what is happening
    /// (`UpdateNoRestart` for blocks a release leaves alone).
    pub notices: BlockMap<Reason>,
    /// New blocks the operation starts (disturbs nothing that runs), in order.
    pub started: Vec<BlockName>,
}

/// Computes which running blocks `op` disturbs on `device`, and why.
pub fn impact(op: &Operation, device: &DeviceState) -> Result<Impact, ImpactError> {
    let running = &device.blocks;
    // Built in block order, so the maps at the end are bulk-built.
    let mut disturbed: Disturbed = Vec::new();
    let mut started = Vec::new();
    let notices = Vec::new();
    match op {
        Operation::UpdateRelease { target } => return Ok(release_impact(running, target)),
        Operation::ApplyEnv { target } => {
            for (name, rb) in running {
                let Some(fp) = target.env_fingerprints.get(name) else {
                    continue;
                };
                if *fp != rb.env_fingerprint {
                    disturbed.push((name.clone(), Disturbance::plain(Reason::EnvChange)));
                }
            }
            propagate(&mut disturbed, &running_deps(running));
        }
        Operation::EnvChange(change) => {
            let next = device
                .env
                .with_change(change)
                .map_err(|source| ImpactError::Env { source })?;
            for (name, rb) in running {
                if !change.may_touch(name) {
                    continue;
                }
                let changed = change.names().any(|var| {
                    let before = device
                        .env
                        .value_of(name, &rb.release_env, &rb.spec.env, var);
                    let after = next.value_of(name, &rb.release_env, &rb.spec.env, var);
                    before != after
                });
                if changed {
                    disturbed.push((name.clone(), Disturbance::plain(Reason::EnvChange)));
                }
            }
            propagate(&mut disturbed, &running_deps(running));
        }
        Operation::RestartBlock(block) | Operation::StopBlock(block) => {
            if !running.contains_key(block) {
                return Err(ImpactError::NotRunning {
                    block: block.clone(),
                });
            }
            let reason = if matches!(op, Operation::RestartBlock(_)) {
                Reason::Restart
            } else {
                Reason::Stop
            };
            disturbed.push((block.clone(), Disturbance::plain(reason)));
            propagate(&mut disturbed, &running_deps(running));
        }
        Operation::StartBlock(block) => {
            if !running.contains_key(block) {
                started.push(block.clone());
            }
        }
        Operation::Reboot | Operation::Shutdown | Operation::OsUpdate { .. } => {
            let reason = match op {
                Operation::Reboot => Reason::Reboot,
                Operation::Shutdown => Reason::Shutdown,
                _ => Reason::OsUpdate,
            };
            disturbed = running
                .keys()
                .map(|n| (n.clone(), Disturbance::plain(reason)))
                .collect();
        }
    }
    Ok(Impact {
        disturbed: BlockMap::from_sorted_unchecked(disturbed),
        notices: BlockMap::from_sorted_unchecked(notices),
        started,
    })
}

/// The impact of moving `running` to `target`: changed blocks restart
/// (`UpdateRestart`), removed ones stop, dependents restart, and every running
/// block left alone gets an `UpdateNoRestart` notice.
pub fn release_impact(running: &BTreeMap<BlockName, RunningBlock>, target: &Target) -> Impact {
    let mut disturbed: Disturbed = Vec::new();
    let mut started = Vec::new();
    let to = target.release.blocks();
    let mut survivors: Vec<(&BlockName, [&[Dependency]; 2])> = Vec::new();
    for side in merge_join(running, to) {
        match side {
            Side::Old(name) => {
                disturbed.push((name.clone(), Disturbance::plain(Reason::Stop)));
            }
            Side::New(name) => started.push(name.clone()),
            Side::Both(name, rb, bv) => {
                let to_env = target.env_fingerprints.get(name);
                let d = match to_env {
                    Some(fp) => delta::compare_spec(rb, bv, fp),
                    None => BlockDelta::Restart {
                        cause: RestartCause::Env,
                    },
                };
                if let BlockDelta::Restart { cause } = d {
                    disturbed.push((
                        name.clone(),
                        Disturbance {
                            reason: Reason::UpdateRestart,
                            handover: bv.update_strategy.allows_handover(),
                            because_of: None,
                            cause: Some(cause),
                        },
                    ));
                }
                // It keeps running across the update: it restarts when
                // a dependency does, under its old or new depends_on.
                survivors.push((name, [&rb.spec.depends_on, &bv.depends_on]));
            }
        }
    }
    propagate(&mut disturbed, &survivors);
    let notices: Vec<(BlockName, Reason)> = running
        .keys()
        .filter(|n| find(&disturbed, n).is_none())
        .map(|n| (n.clone(), Reason::UpdateNoRestart))
        .collect();
    Impact {
        disturbed: BlockMap::from_sorted_unchecked(disturbed),
        notices: BlockMap::from_sorted_unchecked(notices),
        started,
    }
}

/// What moving from release `from` to release `to` changes, as a pipeline
/// sees it before rolling out: the per-block delta, and the impact with
/// dependency propagation, both under the same operator env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseDiff {
    pub deltas: BTreeMap<BlockName, BlockDelta>,
    pub impact: Impact,
}

pub fn diff_releases(from: &Arc<Release>, to: &Arc<Release>, env: &EnvContext) -> ReleaseDiff {
    let running = from.resolve(env).as_running();
    let target = to.resolve(env);
    ReleaseDiff {
        deltas: delta::delta_to_target(&running, &target),
        impact: release_impact(&running, &target),
    }
}

/// Disturbed blocks, kept sorted by name.
type Disturbed = Vec<(BlockName, Disturbance)>;

fn find<'a>(disturbed: &'a Disturbed, block: &BlockName) -> Option<&'a Disturbance> {
    disturbed
        .binary_search_by(|(n, _)| n.cmp(block))
        .ok()
        .map(|i| &disturbed[i].1)
}

enum Side<'a, A, B> {
    Old(&'a BlockName),
    New(&'a BlockName),
    Both(&'a BlockName, &'a A, &'a B),
}

/// Walks two maps keyed by block name in one ordered pass.
fn merge_join<'a, A, B>(
    old: &'a BTreeMap<BlockName, A>,
    new: &'a BTreeMap<BlockName, B>,
) -> impl Iterator<Item = Side<'a, A, B>> {
    let mut o = old.iter().peekable();
    let mut n = new.iter().peekable();
    std::iter::from_fn(move || match (o.peek(), n.peek()) {
        (None, None) => None,
        (Some(_), None) => o.next().map(|(k, _)| Side::Old(k)),
        (None, Some(_)) => n.next().map(|(k, _)| Side::New(k)),
        (Some((ko, _)), Some((kn, _))) => match ko.cmp(kn) {
            std::cmp::Ordering::Less => o.next().map(|(k, _)| Side::Old(k)),
            std::cmp::Ordering::Greater => n.next().map(|(k, _)| Side::New(k)),
            std::cmp::Ordering::Equal => {
                let (k, a) = o.next()?;
                let (_, b) = n.next()?;
                Some(Side::Both(k, a, b))
            }
        },
    })
}

fn running_deps(
    running: &BTreeMap<BlockName, RunningBlock>,
) -> Vec<(&BlockName, [&[Dependency]; 2])> {
    running
        .iter()
        .map(|(n, rb)| (n, [rb.spec.depends_on.as_slice(), &[]]))
        .collect()
}

/// Every candidate that depends (`restart: true`, transitively) on a
/// disturbed block and is not disturbed itself restarts with
/// `DependencyRestart`. Works in rounds, one per dependency hop, so the cause
/// named is the nearest disturbed dependency, ties going to the smallest name.
fn propagate(disturbed: &mut Disturbed, candidates: &[(&BlockName, [&[Dependency]; 2])]) {
    let mut pending: Vec<&(&BlockName, [&[Dependency]; 2])> = candidates
        .iter()
        .filter(|(_, lists)| lists.iter().any(|l| l.iter().any(|d| d.restart)))
        .collect();
    while !pending.is_empty() {
        let mut added = Vec::new();
        for (name, dep_lists) in pending.iter().copied() {
            if find(disturbed, name).is_some() {
                continue;
            }
            let cause = dep_lists
                .iter()
                .flat_map(|l| l.iter())
                .filter(|d| d.restart && find(disturbed, &d.block).is_some())
                .map(|d| &d.block)
                .min();
            if let Some(x) = cause {
                added.push((
                    (*name).clone(),
                    Disturbance {
                        reason: Reason::DependencyRestart,
                        handover: false,
                        because_of: Some(x.clone()),
                        cause: None,
                    },
                ));
            }
        }
        if added.is_empty() {
            return;
        }
        disturbed.extend(added);
        disturbed.sort_by(|a, b| a.0.cmp(&b.0));
        pending.retain(|(name, _)| find(disturbed, name).is_none());
    }
}
