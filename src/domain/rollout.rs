//! Phased rollouts of a release or an OS version across a fleet: the pure
//! planner (which devices go in which batch) and the pure controller step
//! (given how each batch is doing, what to start next, and whether to soak,
//! advance, pause, abort or finish). The service gathers counts from the
//! store, calls [`advance`], and acts on its answer; each device's operation
//! then goes through the scheduler like any other, so windows, approvals,
//! locks and deferral policy all apply.
//!
//! Randomness (which devices are the canaries) is the `seed` parameter; time
//! is the `now` parameter.

use std::collections::BTreeMap;

use crate::domain::{BlockName, DeviceId, FleetId, OpStatus, Reason, ReleaseId, Tag, Timestamp};

/// A rollout's identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RolloutId(pub i64);

impl std::fmt::Display for RolloutId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a rollout brings to each device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutTarget {
    Release(ReleaseId),
    OsVersion(String),
}

/// At most one active rollout of each kind per fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RolloutKind {
    Release,
    Os,
}

impl RolloutKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutKind::Release => "release",
            RolloutKind::Os => "os",
        }
    }
}

impl RolloutTarget {
    pub fn kind(&self) -> RolloutKind {
        match self {
            RolloutTarget::Release(_) => RolloutKind::Release,
            RolloutTarget::OsVersion(_) => RolloutKind::Os,
        }
    }
}

/// A number of devices, absolute or relative to a total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Count(u32),
    /// 1..=100 percent.
    Percent(u8),
}

impl Amount {
    /// How many devices of `total` this is. A percentage rounds up, so
    /// `Percent(10)` of 5 devices is 1, never 0.
    pub fn of(self, total: u64) -> u64 {
        match self {
            Amount::Count(n) => u64::from(n),
            Amount::Percent(p) => (total * u64::from(p)).div_ceil(100),
        }
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// What crossing the error threshold does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Stop starting devices until an operator resumes.
    Pause,
    /// Stop for good, and cancel operations that have not started applying.
    Abort,
}

impl OnError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Pause => "pause",
            OnError::Abort => "abort",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pause" => Some(OnError::Pause),
            "abort" => Some(OnError::Abort),
            _ => None,
        }
    }
}

/// How a rollout proceeds.
///
/// Batches: first `canary` devices (if not 0), then one batch per entry of
/// `batches`; if those do not cover every device, the last entry repeats
/// until they do (no entries: one batch with everyone left). Percentages are
/// of all devices in the rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Strategy {
    pub canary: u32,
    pub batches: Vec<Amount>,
    /// Devices whose operation has started and not finished, across the
    /// rollout; 0 means no limit.
    pub max_in_flight: u32,
    /// After a batch reaches its success threshold, wait this long before
    /// the next batch starts.
    pub soak_seconds: u64,
    /// Percent (1..=100) of a batch's devices (not counting cancelled ones)
    /// that must have succeeded before the next batch may start.
    pub success_threshold: u8,
    /// Failures (since the last resume) that stop the rollout. A percentage
    /// is of the devices that finished (succeeded or failed), so a failed
    /// canary trips a percentage threshold at once.
    pub error_threshold: Amount,
    pub on_error: OnError,
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy {
            canary: 0,
            batches: Vec::new(),
            max_in_flight: 0,
            soak_seconds: 0,
            success_threshold: 100,
            error_threshold: Amount::Count(1),
            on_error: OnError::Pause,
        }
    }
}

/// Why a strategy was refused; `field` names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct StrategyError {
    pub field: &'static str,
    pub message: String,
}

impl Strategy {
    /// The longest soak accepted: 30 days.
    pub const MAX_SOAK_SECONDS: u64 = 30 * 86_400;
    /// The most batch entries accepted.
    pub const MAX_BATCH_ENTRIES: usize = 1000;

    pub fn validate(&self) -> Result<(), StrategyError> {
        let err = |field, message: String| Err(StrategyError { field, message });
        if self.batches.len() > Self::MAX_BATCH_ENTRIES {
            return err(
                "strategy.batches",
                format!("at most {} entries", Self::MAX_BATCH_ENTRIES),
            );
        }
        for (i, b) in self.batches.iter().enumerate() {
            match *b {
                Amount::Count(0) => {
                    return err(
                        "strategy.batches",
                        format!("entry {i} is 0 devices; a batch needs at least one"),
                    );
                }
                Amount::Percent(p) if p == 0 || p > 100 => {
                    return err(
                        "strategy.batches",
                        format!("entry {i} is {p}%; a percentage is 1..=100"),
                    );
                }
                _ => {}
            }
        }
        if self.success_threshold == 0 || self.success_threshold > 100 {
            return err(
                "strategy.success_threshold_percent",
                format!("{} is not in 1..=100", self.success_threshold),
            );
        }
        match self.error_threshold {
            Amount::Count(0) => {
                return err(
                    "strategy.error_threshold",
                    "0 failures would stop the rollout before it starts; use at least 1".into(),
                );
            }
            Amount::Percent(p) if p == 0 || p > 100 => {
                return err(
                    "strategy.error_threshold",
                    format!("{p}% is not in 1..=100"),
                );
            }
            _ => {}
        }
        if self.soak_seconds > Self::MAX_SOAK_SECONDS {
            return err(
                "strategy.soak_seconds",
                format!("at most {} (30 days)", Self::MAX_SOAK_SECONDS),
            );
        }
        Ok(())
    }

    /// The batch sizes for `total` devices: they sum to `total`, none is 0.
    pub fn batch_sizes(&self, total: u64) -> Vec<u64> {
        let mut sizes = Vec::new();
        let mut left = total;
        let canary = u64::from(self.canary).min(left);
        if canary > 0 {
            sizes.push(canary);
            left -= canary;
        }
        let mut entries = self.batches.iter();
        let mut last = None;
        while left > 0 {
            let amount = match entries.next() {
                Some(a) => {
                    last = Some(*a);
                    *a
                }
                None => match last {
                    Some(a) => a,
                    None => {
                        sizes.push(left);
                        break;
                    }
                },
            };
            let n = amount.of(total).clamp(1, left);
            sizes.push(n);
            left -= n;
        }
        sizes
    }
}

/// One device as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanDevice {
    pub id: DeviceId,
    /// Already runs the target: left out of the batches.
    pub at_target: bool,
}

/// Batches out: which devices go when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub batches: Vec<Vec<DeviceId>>,
    /// Devices already at the target.
    pub skipped: Vec<DeviceId>,
}

/// Plans a rollout: devices not at the target are shuffled with `seed` (so
/// canaries are a random sample, the same one for the same seed and input
/// order) and cut into the strategy's batches.
pub fn plan(devices: &[PlanDevice], strategy: &Strategy, seed: u64) -> Plan {
    let mut todo: Vec<&DeviceId> = Vec::with_capacity(devices.len());
    let mut skipped = Vec::new();
    for d in devices {
        if d.at_target {
            skipped.push(d.id.clone());
        } else {
            todo.push(&d.id);
        }
    }
    let mut rng = SplitMix64(seed);
    // Fisher–Yates.
    for i in (1..todo.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        todo.swap(i, j);
    }
    let mut batches = Vec::new();
    let mut rest = todo.as_slice();
    for size in strategy.batch_sizes(todo.len() as u64) {
        let (head, tail) = rest.split_at(size as usize);
        batches.push(head.iter().map(|d| (*d).clone()).collect());
        rest = tail;
    }
    Plan { batches, skipped }
}

/// A small, well-known generator (Steele et al., "SplitMix"): enough for a
/// reproducible shuffle, and keeps this module free of an RNG dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (Lemire's multiply-shift with rejection).
    fn below(&mut self, n: u64) -> u64 {
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RolloutState {
    Running,
    Paused,
    Aborted,
    Completed,
    /// A newer rollout of the same kind for the fleet replaced it.
    Superseded,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Aborted => "aborted",
            RolloutState::Completed => "completed",
            RolloutState::Superseded => "superseded",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            RolloutState::Running,
            RolloutState::Paused,
            RolloutState::Aborted,
            RolloutState::Completed,
            RolloutState::Superseded,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
    /// Running or paused: the one of its kind for the fleet.
    pub fn is_active(self) -> bool {
        matches!(self, RolloutState::Running | RolloutState::Paused)
    }
}

/// A device's part in a rollout, from its operation's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberState {
    /// No operation yet.
    Queued,
    /// Its operation has started and not finished (waiting on a lock, a
    /// window or an approval counts: the device is being worked on).
    InFlight,
    Succeeded,
    Failed,
    /// Its operation was cancelled or superseded: neither success nor failure.
    Cancelled,
}

impl MemberState {
    /// A member with an operation in this status.
    pub fn of(status: OpStatus) -> MemberState {
        match status {
            OpStatus::Done => MemberState::Succeeded,
            OpStatus::Failed => MemberState::Failed,
            OpStatus::Cancelled | OpStatus::Superseded => MemberState::Cancelled,
            OpStatus::Pending
            | OpStatus::Queued
            | OpStatus::WaitingLock
            | OpStatus::WaitingWindow
            | OpStatus::WaitingApproval
            | OpStatus::PartiallyApplied
            | OpStatus::Applying => MemberState::InFlight,
        }
    }
}

/// How one batch is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    pub queued: u64,
    pub in_flight: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl BatchCounts {
    pub fn size(&self) -> u64 {
        self.queued + self.in_flight + self.succeeded + self.failed + self.cancelled
    }
    pub fn add(&mut self, state: MemberState, n: u64) {
        match state {
            MemberState::Queued => self.queued += n,
            MemberState::InFlight => self.in_flight += n,
            MemberState::Succeeded => self.succeeded += n,
            MemberState::Failed => self.failed += n,
            MemberState::Cancelled => self.cancelled += n,
        }
    }
    /// Whether enough of the batch succeeded for the next one to start;
    /// `excused` failures (accepted by an operator's resume) do not count
    /// against it.
    pub fn meets(&self, success_threshold: u8, excused: u64) -> bool {
        let counted = self.size() - self.cancelled - excused.min(self.failed);
        self.succeeded * 100 >= u64::from(success_threshold) * counted
    }
}

/// The controller's memory between steps (stored with the rollout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutProgress {
    pub state: RolloutState,
    /// The batch being worked on; earlier ones met their threshold.
    pub current_batch: u32,
    /// When the current batch met its success threshold (its soak started).
    pub batch_met_at: Option<Timestamp>,
    /// Failures accepted by the last resume: they no longer count towards
    /// the error threshold, nor against their batch's success threshold.
    pub errors_acknowledged: u64,
}

impl RolloutProgress {
    pub fn started() -> Self {
        RolloutProgress {
            state: RolloutState::Running,
            current_batch: 0,
            batch_met_at: None,
            errors_acknowledged: 0,
        }
    }
}

/// What just happened, for the event stream and the narration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutEvent {
    BatchStarted {
        batch: u32,
    },
    Soaking {
        batch: u32,
        until: Timestamp,
    },
    /// The error threshold was crossed.
    ErrorThreshold {
        failed: u64,
        threshold: Amount,
        then: OnError,
    },
    Completed,
}

/// The controller's decision for one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    pub progress: RolloutProgress,
    /// How many queued devices to start, per batch index.
    pub start: Vec<(u32, u64)>,
    pub events: Vec<RolloutEvent>,
    /// When to look again even if nothing happens (a soak ending).
    pub wake_at: Option<Timestamp>,
}

/// One controller step: given the progress so far and each batch's counts
/// (`batches[i]` for batch `i`, in plan order), decide what to start and
/// where the rollout goes. Idempotent: applying the answer and asking again
/// with the same counts starts nothing new.
pub fn advance(
    strategy: &Strategy,
    progress: RolloutProgress,
    batches: &[BatchCounts],
    now: Timestamp,
) -> Advance {
    let mut out = Advance {
        progress,
        start: Vec::new(),
        events: Vec::new(),
        wake_at: None,
    };
    if progress.state != RolloutState::Running {
        return out;
    }
    let failed: u64 = batches.iter().map(|b| b.failed).sum();
    let finished: u64 = batches.iter().map(|b| b.succeeded + b.failed).sum();
    let new_failures = failed.saturating_sub(progress.errors_acknowledged);
    let tripped = new_failures > 0
        && match strategy.error_threshold {
            Amount::Count(n) => new_failures >= u64::from(n),
            Amount::Percent(p) => new_failures * 100 >= u64::from(p) * finished,
        };
    if tripped {
        out.progress.state = match strategy.on_error {
            OnError::Pause => RolloutState::Paused,
            OnError::Abort => RolloutState::Aborted,
        };
        out.events.push(RolloutEvent::ErrorThreshold {
            failed: new_failures,
            threshold: strategy.error_threshold,
            then: strategy.on_error,
        });
        return out;
    }
    if batches.is_empty() {
        out.progress.state = RolloutState::Completed;
        out.events.push(RolloutEvent::Completed);
        return out;
    }
    // Failures an operator accepted by resuming, assigned to the earliest
    // batches first: they no longer hold those batches back.
    let mut left = progress.errors_acknowledged;
    let excused: Vec<u64> = batches
        .iter()
        .map(|b| {
            let e = left.min(b.failed);
            left -= e;
            e
        })
        .collect();
    let last = batches.len() as u32 - 1;
    let soak = strategy.soak_seconds.saturating_mul(1000) as i64;
    // Move through every batch that met its threshold and finished soaking.
    loop {
        let b = out.progress.current_batch.min(last);
        out.progress.current_batch = b;
        let counts = &batches[b as usize];
        if counts.queued > 0 && counts.in_flight + counts.succeeded + counts.failed == 0 {
            // Not started yet: nothing to measure.
            break;
        }
        if !counts.meets(strategy.success_threshold, excused[b as usize]) {
            out.progress.batch_met_at = None;
            break;
        }
        let met = *out.progress.batch_met_at.get_or_insert(now);
        let until = Timestamp(met.0.saturating_add(soak));
        if now < until {
            if met == now {
                out.events.push(RolloutEvent::Soaking { batch: b, until });
            }
            out.wake_at = Some(until);
            break;
        }
        if b == last {
            break;
        }
        out.progress.current_batch = b + 1;
        out.progress.batch_met_at = None;
        out.events.push(RolloutEvent::BatchStarted { batch: b + 1 });
    }
    // Start queued devices of the current and earlier batches, oldest batch
    // first, within the in-flight limit.
    let in_flight: u64 = batches.iter().map(|b| b.in_flight).sum();
    let mut free = if strategy.max_in_flight == 0 {
        u64::MAX
    } else {
        u64::from(strategy.max_in_flight).saturating_sub(in_flight)
    };
    for (i, counts) in batches
        .iter()
        .enumerate()
        .take(out.progress.current_batch as usize + 1)
    {
        if free == 0 {
            break;
        }
        let n = counts.queued.min(free);
        if n > 0 {
            out.start.push((i as u32, n));
            free -= n;
        }
    }
    let all_started_and_finished = batches.iter().all(|b| b.queued == 0 && b.in_flight == 0);
    if out.progress.current_batch == last
        && out.progress.batch_met_at.is_some()
        && out.wake_at.is_none()
        && all_started_and_finished
    {
        out.progress.state = RolloutState::Completed;
        out.events.push(RolloutEvent::Completed);
    }
    out
}

/// Resuming a paused rollout: the operator accepts the failures so far, so
/// only new ones count towards the error threshold, and the accepted ones no
/// longer hold their batch back from its success threshold (a failed canary
/// does not block the rollout forever). `None` unless it is paused.
pub fn resume(progress: RolloutProgress, failed_so_far: u64) -> Option<RolloutProgress> {
    (progress.state == RolloutState::Paused).then_some(RolloutProgress {
        state: RolloutState::Running,
        errors_acknowledged: failed_so_far,
        ..progress
    })
}

/// A rollout as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    pub id: RolloutId,
    pub fleet: FleetId,
    /// Only devices with this tag; `None`: the whole fleet.
    pub selector: Option<Tag>,
    pub target: RolloutTarget,
    pub strategy: Strategy,
    pub seed: u64,
    pub progress: RolloutProgress,
    /// Devices in batches, and devices already at the target.
    pub devices: u64,
    pub skipped: u64,
    /// Why it stopped (error threshold, an operator's reason, superseded by).
    pub message: String,
    pub created_by: String,
    pub created: Timestamp,
    pub updated: Timestamp,
}

/// Devices waiting on a lock, by block and reason: the answer to "which
/// block holds this rollout up, and why".
pub fn waiting_lock_breakdown<'a>(
    waits: impl IntoIterator<Item = &'a [(BlockName, Reason)]>,
) -> BTreeMap<(BlockName, Reason), u64> {
    let mut out = BTreeMap::new();
    for device in waits {
        // A device counts once per (block, reason), however it is listed.
        let mut seen: Vec<&(BlockName, Reason)> = Vec::new();
        for w in device {
            if !seen.contains(&w) {
                seen.push(w);
                *out.entry(w.clone()).or_insert(0) += 1;
            }
        }
    }
    out
}

/// The notice of members started.
pub fn devices_started_message(batch: u32, n: usize) -> String {
    format!("{n} devices of batch {batch} started")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_below_stays_in_range() {
        let mut r = SplitMix64(7);
        for n in 1..200 {
            assert!(r.below(n) < n);
        }
    }
}
