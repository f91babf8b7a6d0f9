//! The rollout planner and controller step, table-driven: batch sizes,
//! determinism of the plan, and every transition of `advance`.

use lockstep::domain::Strategy;
use lockstep::domain::*;
use proptest::prelude::{Strategy as _, prop_assert, prop_assert_eq, prop_oneof, proptest};

fn devices(n: usize) -> Vec<PlanDevice> {
    (0..n)
        .map(|i| PlanDevice {
            id: DeviceId::new(format!("dev-{i:05}")).unwrap(),
            at_target: false,
        })
        .collect()
}

fn counts(queued: u64, in_flight: u64, succeeded: u64, failed: u64, cancelled: u64) -> BatchCounts {
    BatchCounts {
        queued,
        in_flight,
        succeeded,
        failed,
        cancelled,
    }
}

fn running(batch: u32, met_at: Option<i64>) -> RolloutProgress {
    RolloutProgress {
        state: RolloutState::Running,
        current_batch: batch,
        batch_met_at: met_at.map(Timestamp),
        errors_acknowledged: 0,
    }
}

#[test]
fn batch_sizes_follow_canary_then_entries_then_repeat_the_last() {
    use Amount::*;
    let cases: Vec<(u32, Vec<Amount>, u64, Vec<u64>)> = vec![
        // canary, entries, total, expected sizes
        (0, vec![], 10, vec![10]),
        (1, vec![], 10, vec![1, 9]),
        (2, vec![Count(3)], 10, vec![2, 3, 3, 2]),
        (1, vec![Percent(10), Percent(50)], 20, vec![1, 2, 10, 7]),
        (0, vec![Percent(10)], 5, vec![1, 1, 1, 1, 1]),
        (5, vec![Count(3)], 3, vec![3]),
        (0, vec![Count(100)], 10, vec![10]),
        (0, vec![], 0, vec![]),
        (3, vec![Count(2)], 0, vec![]),
        (0, vec![Percent(100)], 7, vec![7]),
        (1, vec![Count(1), Percent(50)], 10, vec![1, 1, 5, 3]),
    ];
    for (canary, batches, total, want) in cases {
        let s = Strategy {
            canary,
            batches: batches.clone(),
            ..Strategy::default()
        };
        assert_eq!(
            s.batch_sizes(total),
            want,
            "canary {canary}, batches {batches:?}, total {total}"
        );
    }
}

#[test]
fn percent_amounts_round_up_and_counts_are_absolute() {
    assert_eq!(Amount::Percent(10).of(5), 1);
    assert_eq!(Amount::Percent(10).of(10), 1);
    assert_eq!(Amount::Percent(10).of(11), 2);
    assert_eq!(Amount::Percent(100).of(3), 3);
    assert_eq!(Amount::Count(4).of(1000), 4);
    assert_eq!(Amount::Percent(50).of(0), 0);
}

#[test]
fn strategy_validation_names_the_field() {
    let bad: Vec<(Strategy, &str)> = vec![
        (
            Strategy {
                batches: vec![Amount::Count(0)],
                ..Strategy::default()
            },
            "strategy.batches",
        ),
        (
            Strategy {
                batches: vec![Amount::Percent(0)],
                ..Strategy::default()
            },
            "strategy.batches",
        ),
        (
            Strategy {
                batches: vec![Amount::Percent(101)],
                ..Strategy::default()
            },
            "strategy.batches",
        ),
        (
            Strategy {
                success_threshold: 0,
                ..Strategy::default()
            },
            "strategy.success_threshold_percent",
        ),
        (
            Strategy {
                success_threshold: 101,
                ..Strategy::default()
            },
            "strategy.success_threshold_percent",
        ),
        (
            Strategy {
                error_threshold: Amount::Count(0),
                ..Strategy::default()
            },
            "strategy.error_threshold",
        ),
        (
            Strategy {
                error_threshold: Amount::Percent(0),
                ..Strategy::default()
            },
            "strategy.error_threshold",
        ),
        (
            Strategy {
                soak_seconds: Strategy::MAX_SOAK_SECONDS + 1,
                ..Strategy::default()
            },
            "strategy.soak_seconds",
        ),
        (
            Strategy {
                batches: vec![Amount::Count(1); Strategy::MAX_BATCH_ENTRIES + 1],
                ..Strategy::default()
            },
            "strategy.batches",
        ),
    ];
    for (s, field) in bad {
        let e = s.validate().expect_err(field);
        assert_eq!(e.field, field, "{s:?}");
    }
    let good = Strategy {
        canary: 1,
        batches: vec![Amount::Percent(100), Amount::Count(1)],
        success_threshold: 100,
        error_threshold: Amount::Percent(100),
        soak_seconds: Strategy::MAX_SOAK_SECONDS,
        ..Strategy::default()
    };
    good.validate().unwrap();
}

#[test]
fn the_plan_is_the_same_for_the_same_seed_and_differs_for_another() {
    let s = Strategy {
        canary: 3,
        batches: vec![Amount::Percent(25)],
        ..Strategy::default()
    };
    let d = devices(200);
    let a = plan(&d, &s, 42);
    let b = plan(&d, &s, 42);
    let c = plan(&d, &s, 43);
    assert_eq!(a, b);
    assert_ne!(a.batches[0], c.batches[0], "canaries depend on the seed");
}

#[test]
fn the_plan_places_every_device_once_and_skips_those_at_the_target() {
    let mut d = devices(50);
    for dev in d.iter_mut().step_by(5) {
        dev.at_target = true;
    }
    let s = Strategy {
        canary: 2,
        batches: vec![Amount::Count(7)],
        ..Strategy::default()
    };
    let p = plan(&d, &s, 1);
    assert_eq!(p.skipped.len(), 10);
    let sizes: Vec<usize> = p.batches.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![2, 7, 7, 7, 7, 7, 3]);
    let mut seen: Vec<&DeviceId> = p.batches.iter().flatten().chain(&p.skipped).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 50);
    for s in &p.skipped {
        assert!(d.iter().any(|x| &x.id == s && x.at_target));
    }
}

#[test]
fn a_fresh_rollout_starts_its_first_batch() {
    let s = Strategy {
        canary: 1,
        ..Strategy::default()
    };
    let a = advance(
        &s,
        RolloutProgress::started(),
        &[counts(1, 0, 0, 0, 0), counts(9, 0, 0, 0, 0)],
        Timestamp(0),
    );
    assert_eq!(a.start, vec![(0, 1)]);
    assert_eq!(a.progress.state, RolloutState::Running);
    assert_eq!(a.progress.current_batch, 0);
    assert!(a.events.is_empty());
}

#[test]
fn advance_transitions_table() {
    // (name, strategy, progress, batch counts, now) -> (state, batch, start, events, wake_at)
    struct Case {
        name: &'static str,
        strategy: Strategy,
        progress: RolloutProgress,
        batches: Vec<BatchCounts>,
        now: i64,
        state: RolloutState,
        batch: u32,
        start: Vec<(u32, u64)>,
        events: Vec<RolloutEvent>,
        wake_at: Option<i64>,
    }
    let soak60 = Strategy {
        soak_seconds: 60,
        ..Strategy::default()
    };
    let cases = vec![
        Case {
            name: "canary in flight: nothing more starts",
            strategy: Strategy::default(),
            progress: running(0, None),
            batches: vec![counts(0, 1, 0, 0, 0), counts(5, 0, 0, 0, 0)],
            now: 10,
            state: RolloutState::Running,
            batch: 0,
            start: vec![],
            events: vec![],
            wake_at: None,
        },
        Case {
            name: "canary succeeded, no soak: the next batch starts at once",
            strategy: Strategy::default(),
            progress: running(0, None),
            batches: vec![counts(0, 0, 1, 0, 0), counts(5, 0, 0, 0, 0)],
            now: 10,
            state: RolloutState::Running,
            batch: 1,
            start: vec![(1, 5)],
            events: vec![RolloutEvent::BatchStarted { batch: 1 }],
            wake_at: None,
        },
        Case {
            name: "canary succeeded with a soak: soak starts, wake at its end",
            strategy: soak60.clone(),
            progress: running(0, None),
            batches: vec![counts(0, 0, 1, 0, 0), counts(5, 0, 0, 0, 0)],
            now: 1_000,
            state: RolloutState::Running,
            batch: 0,
            start: vec![],
            events: vec![RolloutEvent::Soaking {
                batch: 0,
                until: Timestamp(61_000),
            }],
            wake_at: Some(61_000),
        },
        Case {
            name: "still soaking: no event again, same wake",
            strategy: soak60.clone(),
            progress: running(0, Some(1_000)),
            batches: vec![counts(0, 0, 1, 0, 0), counts(5, 0, 0, 0, 0)],
            now: 30_000,
            state: RolloutState::Running,
            batch: 0,
            start: vec![],
            events: vec![],
            wake_at: Some(61_000),
        },
        Case {
            name: "soak over: the next batch starts",
            strategy: soak60.clone(),
            progress: running(0, Some(1_000)),
            batches: vec![counts(0, 0, 1, 0, 0), counts(5, 0, 0, 0, 0)],
            now: 61_000,
            state: RolloutState::Running,
            batch: 1,
            start: vec![(1, 5)],
            events: vec![RolloutEvent::BatchStarted { batch: 1 }],
            wake_at: None,
        },
        Case {
            name: "max in flight limits what starts",
            strategy: Strategy {
                max_in_flight: 3,
                ..Strategy::default()
            },
            progress: running(0, None),
            batches: vec![counts(8, 1, 0, 0, 0)],
            now: 0,
            state: RolloutState::Running,
            batch: 0,
            start: vec![(0, 2)],
            events: vec![],
            wake_at: None,
        },
        Case {
            name: "in flight at the limit: nothing starts",
            strategy: Strategy {
                max_in_flight: 3,
                ..Strategy::default()
            },
            progress: running(0, None),
            batches: vec![counts(6, 3, 0, 0, 0)],
            now: 0,
            state: RolloutState::Running,
            batch: 0,
            start: vec![],
            events: vec![],
            wake_at: None,
        },
        Case {
            name: "one failure with the default threshold pauses",
            strategy: Strategy::default(),
            progress: running(0, None),
            batches: vec![counts(0, 0, 0, 1, 0), counts(5, 0, 0, 0, 0)],
            now: 0,
            state: RolloutState::Paused,
            batch: 0,
            start: vec![],
            events: vec![RolloutEvent::ErrorThreshold {
                failed: 1,
                threshold: Amount::Count(1),
                then: OnError::Pause,
            }],
            wake_at: None,
        },
        Case {
            name: "error threshold with abort aborts",
            strategy: Strategy {
                error_threshold: Amount::Count(2),
                on_error: OnError::Abort,
                success_threshold: 50,
                ..Strategy::default()
            },
            progress: running(1, None),
            batches: vec![counts(0, 0, 4, 1, 0), counts(3, 2, 0, 1, 0)],
            now: 0,
            state: RolloutState::Aborted,
            batch: 1,
            start: vec![],
            events: vec![RolloutEvent::ErrorThreshold {
                failed: 2,
                threshold: Amount::Count(2),
                then: OnError::Abort,
            }],
            wake_at: None,
        },
        Case {
            name: "failures below the count threshold keep going",
            strategy: Strategy {
                error_threshold: Amount::Count(3),
                success_threshold: 50,
                ..Strategy::default()
            },
            progress: running(0, None),
            batches: vec![counts(0, 0, 3, 2, 0), counts(5, 0, 0, 0, 0)],
            now: 0,
            state: RolloutState::Running,
            batch: 1,
            start: vec![(1, 5)],
            events: vec![RolloutEvent::BatchStarted { batch: 1 }],
            wake_at: None,
        },
        Case {
            name: "a percentage threshold is of finished devices",
            strategy: Strategy {
                error_threshold: Amount::Percent(20),
                success_threshold: 50,
                ..Strategy::default()
            },
            progress: running(0, None),
            batches: vec![counts(0, 0, 9, 1, 0), counts(5, 0, 0, 0, 0)],
            now: 0,
            state: RolloutState::Running,
            batch: 1,
            start: vec![(1, 5)],
            events: vec![RolloutEvent::BatchStarted { batch: 1 }],
            wake_at: None,
        },
        Case {
            name: "a percentage threshold reached pauses",
            strategy: Strategy {
                error_threshold: Amount::Percent(20),
                success_threshold: 50,
                ..Strategy::default()
            },
            progress: running(0, None),
            batches: vec![counts(0, 0, 8, 2, 0), counts(5, 0, 0, 0, 0)],
            now: 0,
            state: RolloutState::Paused,
            batch: 0,
            start: vec![],
            events: vec![RolloutEvent::ErrorThreshold {
                failed: 2,
                threshold: Amount::Percent(20),
                then: OnError::Pause,
            }],
            wake_at: None,
        },
        Case {
            name: "acknowledged failures do not trip the threshold again",
            strategy: Strategy {
                success_threshold: 50,
                ..Strategy::default()
            },
            progress: RolloutProgress {
                errors_acknowledged: 1,
                ..running(0, None)
            },
            batches: vec![counts(0, 0, 1, 1, 0), counts(2, 0, 0, 0, 0)],
            now: 0,
            state: RolloutState::Running,
            batch: 1,
            start: vec![(1, 2)],
            events: vec![RolloutEvent::BatchStarted { batch: 1 }],
            wake_at: None,
        },
        Case {
            name: "after a resume, an accepted failed canary no longer holds the rollout back",
            strategy: Strategy::default(),
            progress: RolloutProgress {
                errors_acknowledged: 1,
                ..running(0, None)
            },
            batches: vec![counts(0, 0, 0, 1, 0), counts(3, 0, 0, 0, 0)],
            now: 0,
            state: RolloutState::Running,
            batch: 1,
            start: vec![(1, 3)],
            events: vec![RolloutEvent::BatchStarted { batch: 1 }],
            wake_at: None,
        },
        Case {
            name: "a failed canary without a resume holds the rollout back",
            strategy: Strategy {
                error_threshold: Amount::Count(5),
                ..Strategy::default()
            },
            progress: running(0, None),
            batches: vec![counts(0, 0, 0, 1, 0), counts(3, 0, 0, 0, 0)],
            now: 0,
            state: RolloutState::Running,
            batch: 0,
            start: vec![],
            events: vec![],
            wake_at: None,
        },
        Case {
            name: "below the success threshold the next batch waits",
            strategy: Strategy {
                success_threshold: 80,
                error_threshold: Amount::Count(10),
                ..Strategy::default()
            },
            progress: running(0, None),
            batches: vec![counts(0, 3, 7, 0, 0), counts(5, 0, 0, 0, 0)],
            now: 0,
            state: RolloutState::Running,
            batch: 0,
            start: vec![],
            events: vec![],
            wake_at: None,
        },
        Case {
            name: "cancelled devices do not count against the success threshold",
            strategy: Strategy::default(),
            progress: running(0, None),
            batches: vec![counts(0, 0, 2, 0, 3), counts(5, 0, 0, 0, 0)],
            now: 0,
            state: RolloutState::Running,
            batch: 1,
            start: vec![(1, 5)],
            events: vec![RolloutEvent::BatchStarted { batch: 1 }],
            wake_at: None,
        },
        Case {
            name: "a threshold met early leaves stragglers queued: they start before the next batch",
            strategy: Strategy {
                success_threshold: 50,
                max_in_flight: 4,
                ..Strategy::default()
            },
            progress: running(0, None),
            batches: vec![counts(2, 1, 5, 0, 0), counts(5, 0, 0, 0, 0)],
            now: 0,
            state: RolloutState::Running,
            batch: 1,
            start: vec![(0, 2), (1, 1)],
            events: vec![RolloutEvent::BatchStarted { batch: 1 }],
            wake_at: None,
        },
        Case {
            name: "several finished batches in a row are passed in one step",
            strategy: Strategy::default(),
            progress: running(0, None),
            batches: vec![
                counts(0, 0, 1, 0, 0),
                counts(0, 0, 2, 0, 0),
                counts(3, 0, 0, 0, 0),
            ],
            now: 0,
            state: RolloutState::Running,
            batch: 2,
            start: vec![(2, 3)],
            events: vec![
                RolloutEvent::BatchStarted { batch: 1 },
                RolloutEvent::BatchStarted { batch: 2 },
            ],
            wake_at: None,
        },
        Case {
            name: "the last batch done: completed",
            strategy: Strategy::default(),
            progress: running(1, None),
            batches: vec![counts(0, 0, 1, 0, 0), counts(0, 0, 4, 0, 1)],
            now: 0,
            state: RolloutState::Completed,
            batch: 1,
            start: vec![],
            events: vec![RolloutEvent::Completed],
            wake_at: None,
        },
        Case {
            name: "the last batch met its threshold but devices are still in flight: not yet completed",
            strategy: Strategy {
                success_threshold: 50,
                error_threshold: Amount::Count(5),
                ..Strategy::default()
            },
            progress: running(0, None),
            batches: vec![counts(0, 1, 3, 0, 0)],
            now: 5,
            state: RolloutState::Running,
            batch: 0,
            start: vec![],
            events: vec![],
            wake_at: None,
        },
        Case {
            name: "the last batch soaks before completion",
            strategy: soak60.clone(),
            progress: running(0, None),
            batches: vec![counts(0, 0, 3, 0, 0)],
            now: 0,
            state: RolloutState::Running,
            batch: 0,
            start: vec![],
            events: vec![RolloutEvent::Soaking {
                batch: 0,
                until: Timestamp(60_000),
            }],
            wake_at: Some(60_000),
        },
        Case {
            name: "no devices at all: completed",
            strategy: Strategy::default(),
            progress: running(0, None),
            batches: vec![],
            now: 0,
            state: RolloutState::Completed,
            batch: 0,
            start: vec![],
            events: vec![RolloutEvent::Completed],
            wake_at: None,
        },
        Case {
            name: "a paused rollout starts nothing",
            strategy: Strategy::default(),
            progress: RolloutProgress {
                state: RolloutState::Paused,
                ..running(0, None)
            },
            batches: vec![counts(5, 0, 0, 0, 0)],
            now: 0,
            state: RolloutState::Paused,
            batch: 0,
            start: vec![],
            events: vec![],
            wake_at: None,
        },
        Case {
            name: "an aborted rollout starts nothing",
            strategy: Strategy::default(),
            progress: RolloutProgress {
                state: RolloutState::Aborted,
                ..running(0, None)
            },
            batches: vec![counts(5, 0, 0, 0, 0)],
            now: 0,
            state: RolloutState::Aborted,
            batch: 0,
            start: vec![],
            events: vec![],
            wake_at: None,
        },
    ];
    for c in cases {
        let a = advance(&c.strategy, c.progress, &c.batches, Timestamp(c.now));
        assert_eq!(a.progress.state, c.state, "{}: state", c.name);
        assert_eq!(a.progress.current_batch, c.batch, "{}: batch", c.name);
        assert_eq!(a.start, c.start, "{}: start", c.name);
        assert_eq!(a.events, c.events, "{}: events", c.name);
        assert_eq!(a.wake_at, c.wake_at.map(Timestamp), "{}: wake_at", c.name);
    }
}

#[test]
fn resume_acknowledges_failures_so_far_and_only_from_paused() {
    let paused = RolloutProgress {
        state: RolloutState::Paused,
        ..running(1, None)
    };
    let r = resume(paused, 3).unwrap();
    assert_eq!(r.state, RolloutState::Running);
    assert_eq!(r.errors_acknowledged, 3);
    assert_eq!(r.current_batch, 1);
    for st in [
        RolloutState::Running,
        RolloutState::Aborted,
        RolloutState::Completed,
        RolloutState::Superseded,
    ] {
        let p = RolloutProgress {
            state: st,
            ..running(0, None)
        };
        assert_eq!(resume(p, 0), None, "{st:?}");
    }
}

#[test]
fn member_state_follows_the_operation_status() {
    use MemberState::*;
    let table = [
        (OpStatus::Pending, InFlight),
        (OpStatus::Queued, InFlight),
        (OpStatus::WaitingLock, InFlight),
        (OpStatus::WaitingWindow, InFlight),
        (OpStatus::WaitingApproval, InFlight),
        (OpStatus::PartiallyApplied, InFlight),
        (OpStatus::Applying, InFlight),
        (OpStatus::Done, Succeeded),
        (OpStatus::Failed, Failed),
        (OpStatus::Cancelled, Cancelled),
        (OpStatus::Superseded, Cancelled),
    ];
    assert_eq!(table.len(), OpStatus::ALL.len());
    for (op, want) in table {
        assert_eq!(MemberState::of(op), want, "{op:?}");
    }
}

#[test]
fn waiting_lock_breakdown_counts_devices_per_block_and_reason() {
    let a = BlockName::new("controller").unwrap();
    let b = BlockName::new("ui").unwrap();
    let d1 = vec![(a.clone(), Reason::UpdateRestart)];
    let d2 = vec![
        (a.clone(), Reason::UpdateRestart),
        (b.clone(), Reason::DependencyRestart),
        (a.clone(), Reason::UpdateRestart),
    ];
    let d3 = vec![(a.clone(), Reason::OsUpdate)];
    let m = waiting_lock_breakdown([d1.as_slice(), d2.as_slice(), d3.as_slice()]);
    assert_eq!(m[&(a.clone(), Reason::UpdateRestart)], 2);
    assert_eq!(m[&(b, Reason::DependencyRestart)], 1);
    assert_eq!(m[&(a, Reason::OsUpdate)], 1);
    assert_eq!(m.len(), 3);
}

#[test]
fn rollout_states_round_trip_and_only_running_and_paused_are_active() {
    for st in [
        RolloutState::Running,
        RolloutState::Paused,
        RolloutState::Aborted,
        RolloutState::Completed,
        RolloutState::Superseded,
    ] {
        assert_eq!(RolloutState::parse(st.as_str()), Some(st));
        assert_eq!(
            st.is_active(),
            matches!(st, RolloutState::Running | RolloutState::Paused)
        );
    }
    assert_eq!(RolloutState::parse("nope"), None);
    assert_eq!(OnError::parse("pause"), Some(OnError::Pause));
    assert_eq!(OnError::parse("abort"), Some(OnError::Abort));
    assert_eq!(OnError::parse("explode"), None);
}

fn arb_amount() -> impl proptest::strategy::Strategy<Value = Amount> {
    prop_oneof![
        (1u32..50).prop_map(Amount::Count),
        (1u8..=100).prop_map(Amount::Percent)
    ]
}

proptest! {
    #[test]
    fn batch_sizes_always_cover_the_total_without_empty_batches(
        canary in 0u32..20,
        entries in proptest::collection::vec(arb_amount(), 0..6),
        total in 0u64..500,
    ) {
        let s = Strategy { canary, batches: entries, ..Default::default() };
        let sizes = s.batch_sizes(total);
        prop_assert_eq!(sizes.iter().sum::<u64>(), total);
        prop_assert!(sizes.iter().all(|&n| n > 0));
    }

    #[test]
    fn advance_never_starts_more_than_is_queued_or_allowed(
        max_in_flight in 0u32..10,
        success in 1u8..=100,
        rows in proptest::collection::vec((0u64..6, 0u64..6, 0u64..6, 0u64..2, 0u64..3), 1..5),
        batch in 0u32..5,
    ) {
        let s = Strategy {
            max_in_flight,
            success_threshold: success,
            error_threshold: Amount::Count(1000),
            ..Default::default()
        };
        let batches: Vec<BatchCounts> = rows.iter().map(|&(q, i, ok, f, c)| counts(q, i, ok, f, c)).collect();
        let a = advance(&s, running(batch.min(batches.len() as u32 - 1), None), &batches, Timestamp(0));
        let in_flight: u64 = batches.iter().map(|b| b.in_flight).sum();
        let started: u64 = a.start.iter().map(|(_, n)| n).sum();
        if max_in_flight > 0 {
            prop_assert!(in_flight + started <= u64::from(max_in_flight).max(in_flight));
        }
        for (b, n) in &a.start {
            prop_assert!(*n <= batches[*b as usize].queued);
            prop_assert!(*b <= a.progress.current_batch);
        }
        // Idempotent: with those devices started (now in flight), asking
        // again starts nothing beyond the limit.
        let mut after = batches.clone();
        for (b, n) in &a.start {
            after[*b as usize].queued -= n;
            after[*b as usize].in_flight += n;
        }
        let again = advance(&s, a.progress, &after, Timestamp(0));
        let in_flight2: u64 = after.iter().map(|b| b.in_flight).sum();
        let started2: u64 = again.start.iter().map(|(_, n)| n).sum();
        if max_in_flight > 0 {
            prop_assert!(in_flight2 + started2 <= u64::from(max_in_flight).max(in_flight2));
        }
    }
}
