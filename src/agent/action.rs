//! What an apply does on the device, decided before anything runs, and what
//! the agent concludes about an apply that a crash interrupted.
//!
//! An apply is planned as a list of runtime [`Action`]s ([`plan`]): the
//! agent journals the plan and the step it is on ([`InFlight`], in
//! `agent.json`) before each step, so an agent that restarts knows exactly
//! what was under way. Hook steps run in a separate process that inherits the
//! apply's lock descriptors and records its own exit status; what that
//! process left behind is a [`StepFact`]. [`conclude`] turns the journal, the
//! fact and whether the device rebooted into the outcome the agent reports —
//! `applied` only when every step is known to have finished, `failed` only
//! when a step is known to have failed, and `interrupted` when nobody can
//! tell, never "failed" for an action that ran.
//!
//! Everything here is pure: no clock, no files, no processes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::runtime::{Action, BlockSpec};
use crate::edge::grpc::pb;

/// The runtime actions of an apply, in the order they run. `running` is
/// what runs now (by block name): blocks a release leaves alone keep their
/// running spec, so the runtime does not touch them.
pub fn plan(apply: &pb::Apply, running: &BTreeMap<String, BlockSpec>) -> Vec<Action> {
    use pb::operation::Kind as Op;
    let dependents: Vec<String> = apply
        .disturbed
        .iter()
        .filter(|d| d.reason == pb::Reason::DependencyRestart as i32)
        .map(|d| d.block.clone())
        .collect();
    let Some(kind) = apply.operation.as_ref().and_then(|o| o.kind.clone()) else {
        return Vec::new();
    };
    let restart_dependents = |actions: &mut Vec<Action>, only: &dyn Fn(&str) -> bool| {
        actions.extend(
            dependents
                .iter()
                .filter(|d| only(d))
                .map(|d| Action::Restart(d.clone())),
        );
    };
    let mut actions = Vec::new();
    match kind {
        Op::ReleaseUpdate(r) => {
            let disturbed: BTreeSet<&str> =
                apply.disturbed.iter().map(|d| d.block.as_str()).collect();
            let targets: Vec<BlockSpec> = r.blocks.iter().filter_map(spec_from_target).collect();
            let specs = targets
                .iter()
                .map(|spec| match running.get(&spec.name) {
                    Some(cur) if !disturbed.contains(spec.name.as_str()) => cur.clone(),
                    _ => spec.clone(),
                })
                .collect();
            actions.push(Action::Release {
                release: r.release.clone(),
                blocks: specs,
            });
            // A dependent the release itself replaces is restarted by that;
            // one it leaves as it runs (or that does not run yet) is
            // restarted explicitly.
            restart_dependents(&mut actions, &|d| match running.get(d) {
                Some(cur) => targets.iter().any(|s| s.name == d && s == cur),
                None => true,
            });
        }
        Op::EnvUpdate(e) => {
            let changed: BTreeSet<&str> = apply
                .disturbed
                .iter()
                .filter(|d| d.reason == pb::Reason::EnvChange as i32)
                .map(|d| d.block.as_str())
                .collect();
            actions.extend(
                e.blocks
                    .iter()
                    .filter_map(spec_from_target)
                    .filter(|s| changed.contains(s.name.as_str()))
                    .map(Action::Replace),
            );
            restart_dependents(&mut actions, &|_| true);
        }
        Op::RestartBlock(b) => {
            actions.push(Action::Restart(b));
            restart_dependents(&mut actions, &|_| true);
        }
        Op::StopBlock(b) => {
            actions.push(Action::Stop(b));
            restart_dependents(&mut actions, &|_| true);
        }
        Op::StartBlock(t) => actions.extend(spec_from_target(&t).map(Action::Start)),
        Op::Reboot(_) => actions.push(Action::Reboot),
        Op::Shutdown(_) => actions.push(Action::Shutdown),
        Op::OsUpdate(version) => actions.push(Action::OsUpdate { version }),
    }
    actions
}

/// A block as the server describes it, as the runtime runs it.
pub fn spec_from_target(t: &pb::TargetBlock) -> Option<BlockSpec> {
    let bv = t.block_version.as_ref()?;
    let cfg = bv.config.clone().unwrap_or_default();
    let hand_over_timeout_secs = match bv
        .update_strategy
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
    {
        Some(pb::update_strategy::Strategy::HandOver(h)) => Some(u64::from(h.timeout_seconds)),
        _ => None,
    };
    Some(BlockSpec {
        name: bv.block.clone(),
        version: bv.version.clone(),
        command: cfg.entrypoint.into_iter().chain(cfg.command).collect(),
        working_dir: cfg.working_dir,
        env: t.env.clone(),
        env_fingerprint: t.env_fingerprint.clone(),
        hand_over_timeout_secs,
    })
}

/// The apply under way, journalled before each step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// The apply intent's sequence.
    pub seq: u64,
    pub operation_id: u64,
    pub actions: Vec<Action>,
    /// The index in `actions` of the step under way.
    pub step: usize,
    /// The machine's boot when the apply started.
    pub boot_id: Option<String>,
    /// The blocks whose locks the apply holds.
    pub blocks: Vec<String>,
}

impl InFlight {
    fn step_name(&self) -> String {
        let name = self.actions.get(self.step).map_or("?", Action::name);
        format!(
            "{name} (step {} of {})",
            self.step.saturating_add(1),
            self.actions.len()
        )
    }

    /// Whether the apply's last step is a reboot or a shutdown: a new boot
    /// means it happened.
    fn ends_in_restart(&self) -> bool {
        matches!(self.actions.last(), Some(Action::Reboot | Action::Shutdown))
            && self.step + 1 == self.actions.len()
    }
}

/// What the step under way left behind when the agent looked after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepFact {
    /// Its action process recorded this exit status.
    Finished { status: i32, stderr_tail: String },
    /// Its action process still runs (and holds the apply's locks).
    Running,
    /// No action process ran it to the end: the step ran inside the agent,
    /// or its process was killed before recording a status.
    Unfinished,
}

/// An apply's final answer, as the agent keeps it to answer a resend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    /// The locks of these blocks were held.
    Blocked {
        error: String,
        held_by: Vec<String>,
    },
    Stale {
        message: String,
    },
    Failed {
        error: String,
    },
    /// Nobody can tell whether the action finished.
    Interrupted {
        message: String,
    },
}

impl Outcome {
    pub fn to_pb(&self) -> pb::intent_ack::Kind {
        use pb::intent_ack::Kind as K;
        match self.clone() {
            Self::Applied => K::Applied(pb::intent_ack::Applied {}),
            Self::Blocked { error, held_by } => {
                K::Failed(pb::intent_ack::Failed { error, held_by })
            }
            Self::Stale { message } => K::Stale(pb::intent_ack::Stale { message }),
            Self::Failed { error } => K::Failed(pb::intent_ack::Failed {
                error,
                held_by: vec![],
            }),
            Self::Interrupted { message } => {
                K::Interrupted(pb::intent_ack::Interrupted { message })
            }
        }
    }
}

/// What the agent does about an apply it finds in its journal at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conclusion {
    /// The step's process still runs: wait for it (it holds the locks).
    Wait,
    /// The apply is over. `record_step` says whether the step under way
    /// finished, so its effect (a new OS version, a new release) is to be
    /// recorded as if the agent had seen it finish.
    Done { outcome: Outcome, record_step: bool },
}

/// Concludes an interrupted apply from what its step left behind and
/// whether the machine booted since the apply started.
pub fn conclude(f: &InFlight, fact: &StepFact, rebooted: bool) -> Conclusion {
    let step = f.step_name();
    let done = |outcome, record_step| Conclusion::Done {
        outcome,
        record_step,
    };
    if rebooted {
        return if f.ends_in_restart() {
            done(Outcome::Applied, false)
        } else {
            done(
                Outcome::Interrupted {
                    message: format!("the device restarted during {step}"),
                },
                false,
            )
        };
    }
    match fact {
        StepFact::Running => Conclusion::Wait,
        StepFact::Finished { status: 0, .. } if f.step + 1 >= f.actions.len() => {
            done(Outcome::Applied, true)
        }
        StepFact::Finished { status: 0, .. } => done(
            Outcome::Interrupted {
                message: format!(
                    "the agent stopped after {step} finished; the steps after it did not run"
                ),
            },
            true,
        ),
        StepFact::Finished {
            status,
            stderr_tail,
        } => done(
            Outcome::Failed {
                error: format!(
                    "{step} failed (exit status {status}) while the agent was down; stderr ends with: {stderr_tail}"
                ),
            },
            false,
        ),
        StepFact::Unfinished => done(
            Outcome::Interrupted {
                message: format!("the agent stopped during {step}; it did not finish"),
            },
            false,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, version: &str) -> pb::TargetBlock {
        pb::TargetBlock {
            block_version: Some(pb::BlockVersion {
                block: name.into(),
                version: version.into(),
                config: Some(pb::BlockConfig {
                    command: vec!["true".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn spec(name: &str, version: &str) -> BlockSpec {
        spec_from_target(&target(name, version)).unwrap()
    }

    fn disturbed(block: &str, reason: pb::Reason) -> pb::Disturbance {
        pb::Disturbance {
            block: block.into(),
            reason: reason as i32,
            ..Default::default()
        }
    }

    fn apply(kind: pb::operation::Kind, disturbed: Vec<pb::Disturbance>) -> pb::Apply {
        pb::Apply {
            operation: Some(pb::Operation { kind: Some(kind) }),
            disturbed,
            ..Default::default()
        }
    }

    #[test]
    fn plans_list_every_action_in_order() {
        use pb::Reason as R;
        use pb::operation::Kind as Op;
        // c runs with an env the target does not spell out: the release
        // leaves c alone, so it keeps its running spec.
        let mut c_running = spec("c", "1");
        c_running.env.insert("MODE".into(), "eco".into());
        let running: BTreeMap<String, BlockSpec> = [
            ("a".to_owned(), spec("a", "1")),
            ("b".to_owned(), spec("b", "1")),
            ("c".to_owned(), c_running.clone()),
        ]
        .into();
        let release = Op::ReleaseUpdate(pb::operation::ReleaseUpdate {
            release: "r2".into(),
            blocks: vec![target("a", "2"), target("b", "1"), target("c", "1")],
        });
        let cases: Vec<(&str, pb::Apply, Vec<Action>)> = vec![
            (
                "release: a changes, b restarts as a's dependent, c is left alone",
                apply(
                    release.clone(),
                    vec![
                        disturbed("a", R::UpdateRestart),
                        disturbed("b", R::DependencyRestart),
                    ],
                ),
                vec![
                    Action::Release {
                        release: "r2".into(),
                        blocks: vec![spec("a", "2"), spec("b", "1"), c_running.clone()],
                    },
                    Action::Restart("b".into()),
                ],
            ),
            (
                "release replacing a dependent itself: no extra restart",
                apply(
                    Op::ReleaseUpdate(pb::operation::ReleaseUpdate {
                        release: "r3".into(),
                        blocks: vec![target("a", "2"), target("b", "2"), target("c", "1")],
                    }),
                    vec![
                        disturbed("a", R::UpdateRestart),
                        disturbed("b", R::DependencyRestart),
                    ],
                ),
                vec![Action::Release {
                    release: "r3".into(),
                    blocks: vec![spec("a", "2"), spec("b", "2"), c_running.clone()],
                }],
            ),
            (
                "restart with a dependent",
                apply(
                    Op::RestartBlock("a".into()),
                    vec![
                        disturbed("a", R::Restart),
                        disturbed("c", R::DependencyRestart),
                    ],
                ),
                vec![Action::Restart("a".into()), Action::Restart("c".into())],
            ),
            (
                "stop",
                apply(Op::StopBlock("b".into()), vec![disturbed("b", R::Stop)]),
                vec![Action::Stop("b".into())],
            ),
            (
                "env change replaces only the changed block",
                apply(
                    Op::EnvUpdate(pb::operation::EnvUpdate {
                        blocks: vec![target("a", "1"), target("b", "1")],
                    }),
                    vec![disturbed("b", R::EnvChange)],
                ),
                vec![Action::Replace(spec("b", "1"))],
            ),
            (
                "reboot",
                apply(Op::Reboot(pb::operation::Empty {}), vec![]),
                vec![Action::Reboot],
            ),
            (
                "os update",
                apply(Op::OsUpdate("2.0".into()), vec![]),
                vec![Action::OsUpdate {
                    version: "2.0".into(),
                }],
            ),
            ("no operation", pb::Apply::default(), vec![]),
        ];
        for (name, apply, want) in cases {
            assert_eq!(plan(&apply, &running), want, "{name}");
        }
    }

    fn in_flight(actions: Vec<Action>, step: usize) -> InFlight {
        InFlight {
            seq: 7,
            operation_id: 3,
            actions,
            step,
            boot_id: Some("boot-1".into()),
            blocks: vec!["a".into()],
        }
    }

    #[test]
    fn an_interrupted_apply_is_concluded_from_what_its_step_left() {
        let restart = vec![Action::Restart("a".into()), Action::Restart("b".into())];
        let ok = StepFact::Finished {
            status: 0,
            stderr_tail: String::new(),
        };
        let applied = |record_step| Conclusion::Done {
            outcome: Outcome::Applied,
            record_step,
        };
        let interrupted = |c: &Conclusion| {
            matches!(
                c,
                Conclusion::Done {
                    outcome: Outcome::Interrupted { .. },
                    ..
                }
            )
        };
        // (case, journal, fact, rebooted, check)
        type Check = Box<dyn Fn(&Conclusion) -> bool>;
        let cases: Vec<(&str, InFlight, StepFact, bool, Check)> = vec![
            (
                "still running: wait",
                in_flight(restart.clone(), 0),
                StepFact::Running,
                false,
                Box::new(|c| *c == Conclusion::Wait),
            ),
            (
                "last step finished: applied, recorded",
                in_flight(restart.clone(), 1),
                ok.clone(),
                false,
                Box::new(move |c| *c == applied(true)),
            ),
            (
                "a middle step finished: interrupted, the step recorded",
                in_flight(restart.clone(), 0),
                ok.clone(),
                false,
                Box::new(move |c| {
                    interrupted(c)
                        && matches!(
                            c,
                            Conclusion::Done {
                                record_step: true,
                                ..
                            }
                        )
                }),
            ),
            (
                "the step's process failed: failed, naming the status",
                in_flight(restart.clone(), 1),
                StepFact::Finished {
                    status: 3,
                    stderr_tail: "boom".into(),
                },
                false,
                Box::new(|c| match c {
                    Conclusion::Done {
                        outcome: Outcome::Failed { error },
                        record_step: false,
                    } => error.contains("status 3") && error.contains("boom"),
                    _ => false,
                }),
            ),
            (
                "killed or in-agent step: interrupted, naming the step",
                in_flight(restart.clone(), 1),
                StepFact::Unfinished,
                false,
                Box::new(|c| match c {
                    Conclusion::Done {
                        outcome: Outcome::Interrupted { message },
                        record_step: false,
                    } => message.contains("restart (step 2 of 2)"),
                    _ => false,
                }),
            ),
            (
                "a reboot that rebooted the machine: applied",
                in_flight(vec![Action::Reboot], 0),
                StepFact::Unfinished,
                true,
                Box::new(move |c| *c == applied(false)),
            ),
            (
                "a shutdown that stopped the machine: applied",
                in_flight(vec![Action::Shutdown], 0),
                StepFact::Running,
                true,
                Box::new(move |c| *c == applied(false)),
            ),
            (
                "an os update cut by a reboot: interrupted",
                in_flight(
                    vec![Action::OsUpdate {
                        version: "2".into(),
                    }],
                    0,
                ),
                ok.clone(),
                true,
                Box::new(interrupted),
            ),
            (
                "a restart cut by a reboot: interrupted",
                in_flight(restart.clone(), 0),
                StepFact::Running,
                true,
                Box::new(interrupted),
            ),
        ];
        for (name, f, fact, rebooted, check) in cases {
            let got = conclude(&f, &fact, rebooted);
            assert!(check(&got), "{name}: {got:?}");
        }
    }

    #[test]
    fn outcomes_survive_a_round_trip_through_json_and_map_to_acks() {
        use pb::intent_ack::Kind as K;
        let all = [
            Outcome::Applied,
            Outcome::Blocked {
                error: "held".into(),
                held_by: vec!["a".into()],
            },
            Outcome::Stale {
                message: "s".into(),
            },
            Outcome::Failed { error: "e".into() },
            Outcome::Interrupted {
                message: "i".into(),
            },
        ];
        for o in all {
            let back: Outcome = serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
            assert_eq!(back, o);
            let ok = match (&o, o.to_pb()) {
                (Outcome::Applied, K::Applied(_)) => true,
                (Outcome::Blocked { .. }, K::Failed(f)) => f.held_by == ["a"],
                (Outcome::Failed { .. }, K::Failed(f)) => f.held_by.is_empty(),
                (Outcome::Stale { .. }, K::Stale(_)) => true,
                (Outcome::Interrupted { .. }, K::Interrupted(i)) => i.message == "i",
                _ => false,
            };
            assert!(ok, "{o:?}");
        }
    }
}
