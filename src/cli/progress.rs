//! How `rollout watch` shows a rollout's status stream, one of three ways:
//! - on a terminal, live bars drawn with `indicatif`: a message line (state,
//!   batch, soak, device status counts, which block's lock holds devices
//!   up), one overall bar (finished / total devices) and one bar per batch
//!   (at most [`MAX_BATCH_BARS`], around the current batch);
//! - when stdout is not a terminal (logs, CI), where indicatif hides bars,
//!   one plain line per change instead;
//! - with `--output json`, each status as one JSON document per line.
//!
//! Bars and lines both narrate what happens: a header, each batch started,
//! a pause (a paused rollout is still active, so the watch goes on),
//! a resume, and the completion. What to print is decided by pure functions
//! ([`progress_line`], [`batch_notice`], [`state_notice`]), pinned by tests.

use std::io::Write as _;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Output;
use super::error::CliError;
use super::view::RolloutStatusView;

/// The most batch bars drawn at once; a longer plan shows those around the
/// current batch.
pub const MAX_BATCH_BARS: usize = 10;

/// `rollout watch`'s display; fed each status in turn.
pub struct Watch {
    id: u64,
    mode: Mode,
    last: Option<RolloutStatusView>,
}

enum Mode {
    Json,
    Lines { last_line: String },
    Bars(Option<Bars>),
}

impl Watch {
    /// JSON lines for `--output json`; otherwise bars when indicatif would
    /// draw them on stdout, plain lines when it would hide them.
    pub fn new(output: Output, id: u64) -> Self {
        let mode = match output {
            Output::Json => Mode::Json,
            Output::Table if ProgressDrawTarget::stdout().is_hidden() => Mode::Lines {
                last_line: String::new(),
            },
            Output::Table => Mode::Bars(None),
        };
        Watch {
            id,
            mode,
            last: None,
        }
    }

    /// Shows one status.
    pub fn show(&mut self, now: RolloutStatusView) -> Result<(), CliError> {
        let prev = self.last.as_ref();
        match &mut self.mode {
            Mode::Json => {
                let line = serde_json::to_string(&now).map_err(|e| CliError::Stdout {
                    source: std::io::Error::other(e),
                })?;
                print_lines(&[line])?;
            }
            Mode::Lines { last_line } => {
                let mut out = Vec::new();
                if prev.is_none() {
                    out.push(header(self.id, &now));
                }
                out.extend(batch_notice(self.id, prev, &now));
                let line = progress_line(self.id, &now);
                if line != *last_line {
                    out.push(line.clone());
                    *last_line = line;
                }
                out.extend(state_notice(self.id, prev, &now));
                print_lines(&out)?;
            }
            Mode::Bars(bars) => {
                let bars = bars.get_or_insert_with(|| {
                    let bars = Bars::new(self.id, &now);
                    bars.println(&header(self.id, &now));
                    bars
                });
                let notices = [
                    batch_notice(self.id, prev, &now),
                    state_notice(self.id, prev, &now),
                ];
                for line in notices.iter().flatten() {
                    bars.println(line);
                }
                bars.update(&now);
            }
        }
        self.last = Some(now);
        Ok(())
    }

    /// Leaves the bars as they are; returns the last status shown.
    pub fn stop(&mut self) -> Option<RolloutStatusView> {
        if let Mode::Bars(Some(bars)) = &self.mode {
            bars.stop();
        }
        self.last.take()
    }
}

fn print_lines(lines: &[String]) -> Result<(), CliError> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    lines
        .iter()
        .try_for_each(|l| writeln!(out, "{l}"))
        .and_then(|()| out.flush())
        .map_err(|source| CliError::Stdout { source })
}

/// `Watching rollout 7: release r2 on fleet site (tag north), 10 devices in
/// 3 batches (2 already at the target).`
pub fn header(id: u64, s: &RolloutStatusView) -> String {
    let r = &s.rollout;
    let tag = if r.tag.is_empty() {
        String::new()
    } else {
        format!(" (tag {})", r.tag)
    };
    format!(
        "Watching rollout {id}: {} on fleet {}{tag}, {} devices in {} batches ({} already at the target).",
        r.target(),
        r.fleet,
        r.devices,
        s.batches.len(),
        r.skipped
    )
}

/// One plain progress line: `rollout 7: 4/10 finished · running · batch 2/3
/// · waiting_lock 3 (controller: update_restart) · failed 1`.
pub fn progress_line(id: u64, s: &RolloutStatusView) -> String {
    format!(
        "rollout {id}: {}/{} finished · {}",
        s.finished(),
        s.total(),
        s.summary()
    )
}

/// A line when the rollout moved on to its next batch.
pub fn batch_notice(
    id: u64,
    prev: Option<&RolloutStatusView>,
    now: &RolloutStatusView,
) -> Option<String> {
    let r = &now.rollout;
    let p = prev?;
    (r.state == "running" && p.rollout.current_batch != r.current_batch)
        .then(|| format!("rollout {id}: batch {} started", r.batch()))
}

/// A line when the state changed in a way that deserves one: a pause (with
/// how to go on, since the watch does not stop), a resume, the completion.
/// An aborted or superseded rollout gets none: the verb's error line says
/// so.
pub fn state_notice(
    id: u64,
    prev: Option<&RolloutStatusView>,
    now: &RolloutStatusView,
) -> Option<String> {
    let r = &now.rollout;
    let before = prev.map(|p| p.rollout.state.as_str());
    if before == Some(r.state.as_str()) {
        return None;
    }
    match (before, r.state.as_str()) {
        (_, "paused") => Some(format!(
            "rollout {id} paused{}. It is still active, so the watch goes on: `lockstep rollout resume {id}` carries on, `lockstep rollout abort {id}` stops it.",
            if r.message.is_empty() {
                String::new()
            } else {
                format!(": {}", r.message)
            }
        )),
        (Some("paused"), "running") => Some(format!("rollout {id} resumed")),
        (_, "completed") => {
            let (succeeded, failed, cancelled) = now.outcomes();
            Some(format!(
                "rollout {id} completed: {succeeded} succeeded, {failed} failed, {cancelled} cancelled ({} already at the target)",
                r.skipped
            ))
        }
        _ => None,
    }
}

/// The live bars: a message line, the overall bar, and batch bars.
struct Bars {
    id: u64,
    multi: MultiProgress,
    line: ProgressBar,
    overall: ProgressBar,
    /// One per shown batch; which batch each shows moves with the current
    /// batch when the plan has more than [`MAX_BATCH_BARS`].
    batches: Vec<ProgressBar>,
}

impl Bars {
    fn new(id: u64, first: &RolloutStatusView) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let line = multi.add(ProgressBar::new_spinner());
        line.set_style(
            ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        // Redraws now and then too, so no update is left undrawn by the
        // draw rate limit.
        line.enable_steady_tick(Duration::from_millis(250));
        let style = ProgressStyle::with_template(
            "  {prefix:<16} [{bar:40.green/blue}] {pos:>5}/{len:<5} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let overall = multi.add(ProgressBar::new(0).with_style(style.clone()));
        overall.set_prefix("all devices");
        let batches = (0..first.batches.len().min(MAX_BATCH_BARS))
            .map(|_| multi.add(ProgressBar::new(0).with_style(style.clone())))
            .collect();
        Bars {
            id,
            multi,
            line,
            overall,
            batches,
        }
    }

    fn update(&self, s: &RolloutStatusView) {
        self.line
            .set_message(format!("rollout {}: {}", self.id, s.summary()));
        self.overall.set_length(s.total());
        self.overall.set_position(s.finished());
        self.overall.set_message("finished");
        let first = first_shown(
            s.rollout.current_batch as usize,
            s.batches.len(),
            self.batches.len(),
        );
        for (bar, b) in self.batches.iter().zip(s.batches.iter().skip(first)) {
            bar.set_prefix(format!("batch {}", s.batch_name(b.index)));
            bar.set_length(b.size);
            bar.set_position(b.finished());
            bar.set_message(batch_detail(b));
        }
    }

    fn println(&self, line: &str) {
        // Hidden bars print nothing; these are drawn, so this shows.
        let _ = self.multi.println(line);
    }

    fn stop(&self) {
        self.line.disable_steady_tick();
        for bar in std::iter::once(&self.line)
            .chain(std::iter::once(&self.overall))
            .chain(&self.batches)
        {
            // Keeps each bar as it is (finish would fill it).
            bar.abandon();
        }
    }
}

/// The first batch shown on `bars` bars out of `count` batches: the two
/// before the current one, then onwards, as far as the plan allows.
pub fn first_shown(current: usize, count: usize, bars: usize) -> usize {
    current.saturating_sub(2).min(count.saturating_sub(bars))
}

/// `done`, or what is left of a batch: `2 queued, 1 in flight, 1 failed`.
pub fn batch_detail(b: &super::view::BatchView) -> String {
    let parts: Vec<String> = [
        (b.queued, "queued"),
        (b.in_flight, "in flight"),
        (b.failed, "failed"),
        (b.cancelled, "cancelled"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if parts.is_empty() {
        "done".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::grpc::pb;

    /// A status of rollout 7: a canary of 1, then batches of 2 and 2.
    fn status(
        state: &str,
        current: u32,
        batches: [(u64, u64, u64, u64); 3],
        statuses: &[(&str, u64)],
        waits: &[(&str, pb::Reason, u64)],
    ) -> RolloutStatusView {
        RolloutStatusView::from_pb(pb::RolloutStatus {
            rollout: Some(pb::RolloutInfo {
                id: 7,
                fleet: "site".into(),
                target: Some(pb::rollout_info::Target::Release("r2".into())),
                strategy: Some(pb::RolloutStrategy {
                    canary: 1,
                    batches: vec![pb::Amount {
                        amount: Some(pb::amount::Amount::Count(2)),
                    }],
                    ..Default::default()
                }),
                state: state.into(),
                current_batch: current,
                devices: 5,
                skipped: 1,
                message: if state == "paused" {
                    "error threshold crossed: 1 failed (threshold 1); paused".into()
                } else {
                    String::new()
                },
                ..Default::default()
            }),
            batches: batches
                .iter()
                .enumerate()
                .map(
                    |(i, &(queued, in_flight, succeeded, failed))| pb::BatchProgress {
                        index: i as u32,
                        size: if i == 0 { 1 } else { 2 },
                        queued,
                        in_flight,
                        succeeded,
                        failed,
                        cancelled: 0,
                    },
                )
                .collect(),
            device_statuses: statuses
                .iter()
                .map(|(s, n)| pb::StatusCount {
                    status: (*s).into(),
                    devices: *n,
                })
                .collect(),
            waiting_lock: waits
                .iter()
                .map(|(b, r, n)| pb::LockWaitCount {
                    block: (*b).into(),
                    reason: *r as i32,
                    devices: *n,
                })
                .collect(),
            soak_until_unix_ms: 0,
        })
        .unwrap()
    }

    #[test]
    fn a_progress_line_shows_the_state_batch_and_what_holds_devices_up() {
        let s = status(
            "running",
            1,
            [(0, 0, 1, 0), (0, 2, 0, 0), (2, 0, 0, 0)],
            &[("in_sync", 3), ("waiting_lock", 2)],
            &[("controller", pb::Reason::UpdateRestart, 2)],
        );
        assert_eq!(
            progress_line(7, &s),
            "rollout 7: 1/5 finished · running · batch 2/3 · waiting_lock 2 (controller: update_restart)"
        );
        let two_blocks = status(
            "running",
            1,
            [(0, 0, 0, 1), (0, 2, 0, 0), (2, 0, 0, 0)],
            &[("waiting_lock", 2), ("failed", 1)],
            &[
                ("controller", pb::Reason::UpdateRestart, 2),
                ("ui", pb::Reason::DependencyRestart, 1),
            ],
        );
        assert_eq!(
            two_blocks.summary(),
            "running · batch 2/3 · waiting_lock 2 (controller: update_restart 2, ui: dependency_restart 1) · failed 1"
        );
        assert_eq!(
            header(7, &s),
            "Watching rollout 7: release r2 on fleet site, 5 devices in 3 batches (1 already at the target)."
        );
    }

    /// Both notices, in the order they print.
    fn notices(prev: Option<&RolloutStatusView>, now: &RolloutStatusView) -> Vec<String> {
        [batch_notice(7, prev, now), state_notice(7, prev, now)]
            .into_iter()
            .flatten()
            .collect()
    }

    #[test]
    fn a_pause_says_the_watch_goes_on_and_a_completion_counts_outcomes() {
        let running = status(
            "running",
            0,
            [(0, 1, 0, 0), (2, 0, 0, 0), (2, 0, 0, 0)],
            &[],
            &[],
        );
        assert_eq!(notices(None, &running), Vec::<String>::new());
        let paused = status(
            "paused",
            0,
            [(0, 0, 0, 1), (2, 0, 0, 0), (2, 0, 0, 0)],
            &[("failed", 1)],
            &[],
        );
        assert_eq!(
            notices(Some(&running), &paused),
            [
                "rollout 7 paused: error threshold crossed: 1 failed (threshold 1); paused. It is still active, so the watch goes on: `lockstep rollout resume 7` carries on, `lockstep rollout abort 7` stops it."
            ]
        );
        // Watching a rollout that is already paused says so too.
        assert_eq!(notices(None, &paused).len(), 1);
        assert_eq!(notices(Some(&paused), &paused), Vec::<String>::new());
        let resumed = status(
            "running",
            0,
            [(0, 0, 0, 1), (2, 0, 0, 0), (2, 0, 0, 0)],
            &[],
            &[],
        );
        assert_eq!(notices(Some(&paused), &resumed), ["rollout 7 resumed"]);
        let next = status(
            "running",
            1,
            [(0, 0, 0, 1), (0, 2, 0, 0), (2, 0, 0, 0)],
            &[],
            &[],
        );
        assert_eq!(
            notices(Some(&resumed), &next),
            ["rollout 7: batch 2/3 started"]
        );
        let completed = status(
            "completed",
            2,
            [(0, 0, 0, 1), (0, 0, 2, 0), (0, 0, 2, 0)],
            &[("in_sync", 4), ("failed", 1)],
            &[],
        );
        assert_eq!(
            notices(Some(&next), &completed),
            ["rollout 7 completed: 4 succeeded, 1 failed, 0 cancelled (1 already at the target)"]
        );
        let aborted = status(
            "aborted",
            2,
            [(0, 0, 0, 1), (0, 0, 2, 0), (0, 0, 2, 0)],
            &[],
            &[],
        );
        assert_eq!(notices(Some(&next), &aborted), Vec::<String>::new());
    }

    #[test]
    fn batch_bars_follow_the_current_batch_in_a_long_plan() {
        assert_eq!(first_shown(0, 3, 3), 0);
        assert_eq!(first_shown(2, 3, 3), 0);
        assert_eq!(first_shown(0, 40, 10), 0);
        assert_eq!(first_shown(5, 40, 10), 3);
        assert_eq!(first_shown(39, 40, 10), 30);
    }

    #[test]
    fn batch_details_say_what_is_left() {
        let s = status(
            "running",
            1,
            [(0, 0, 1, 0), (1, 1, 0, 0), (2, 0, 0, 0)],
            &[],
            &[],
        );
        assert_eq!(batch_detail(&s.batches[0]), "done");
        assert_eq!(batch_detail(&s.batches[1]), "1 queued, 1 in flight");
        assert_eq!(s.batch_name(0), "1 (canary)");
        assert_eq!(s.batch_name(2), "3");
    }
}
