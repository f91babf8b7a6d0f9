//! Fuzzing maintenance window rules (proptest): arbitrary recurrence text
//! (RFC 5545 pieces and plain garbage), weekly rules with any days, times,
//! durations and zones, and one-off rules, at any instant. Validation and
//! occurrence computation never panic; the occurrences of a valid rule are
//! at most as many as asked for, in order, each lasting the rule's duration
//! and not yet ended at the instant asked about.
//!
//! Cases per property: `PROPTEST_CASES` (default 128; `.ci/run` runs a
//! larger bounded pass).

use std::collections::BTreeSet;

use jiff::SignedDuration;
use lockstep::domain::{Occurrence, Timestamp, WindowRule, open_or_next};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(128),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Mostly 1970..2200, sometimes the extremes.
fn instant() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        8 => (0i64..7_258_118_400_000).prop_map(Timestamp),
        1 => any::<i64>().prop_map(Timestamp),
        1 => prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(-1), Just(0)].prop_map(Timestamp),
    ]
}

fn zone() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("UTC".to_owned()),
        Just("Europe/Amsterdam".to_owned()),
        Just("America/New_York".to_owned()),
        Just("Australia/Lord_Howe".to_owned()),
        Just("Pacific/Chatham".to_owned()),
        ".{0,20}",
    ]
}

fn dtstart() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just("DTSTART:".to_owned()),
            zone().prop_map(|z| format!("DTSTART;TZID={z}:")),
            Just("DTSTART;VALUE=DATE:".to_owned()),
        ],
        0u32..10_000,
        0u32..14,
        0u32..33,
        0u32..25,
        0u32..61,
        prop_oneof![Just(""), Just("Z")],
    )
        .prop_map(|(head, y, mo, d, h, mi, z)| {
            format!("{head}{y:04}{mo:02}{d:02}T{h:02}{mi:02}00{z}")
        })
}

fn rrule_part() -> impl Strategy<Value = String> {
    prop_oneof![
        prop_oneof![
            Just("SECONDLY"),
            Just("MINUTELY"),
            Just("HOURLY"),
            Just("DAILY"),
            Just("WEEKLY"),
            Just("MONTHLY"),
            Just("YEARLY"),
            Just("NEVER"),
        ]
        .prop_map(|f| format!("FREQ={f}")),
        (0u32..1000).prop_map(|n| format!("INTERVAL={n}")),
        (0u32..100_000).prop_map(|n| format!("COUNT={n}")),
        (-60i32..60).prop_map(|n| format!("BYMONTHDAY={n}")),
        (-400i32..400).prop_map(|n| format!("BYSETPOS={n}")),
        (-60i32..60).prop_map(|n| format!("BYWEEKNO={n}")),
        (-400i32..400).prop_map(|n| format!("BYYEARDAY={n}")),
        (0u32..14).prop_map(|n| format!("BYMONTH={n}")),
        (0u32..26).prop_map(|n| format!("BYHOUR={n}")),
        (0u32..62).prop_map(|n| format!("BYMINUTE={n}")),
        (-6i32..6, prop_oneof![Just("MO"), Just("SU"), Just("XX")])
            .prop_map(|(n, d)| format!("BYDAY={n}{d}")),
        Just("BYDAY=MO,TU,WE,TH,FR".to_owned()),
        Just("UNTIL=20300101T000000Z".to_owned()),
        Just("WKST=SU".to_owned()),
        "[A-Z=;,0-9-]{0,16}",
    ]
}

fn recurrence() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (
            dtstart(),
            prop::collection::vec(rrule_part(), 0..6),
            prop::collection::vec(prop_oneof![
                Just("EXDATE:20260301T020000Z".to_owned()),
                Just("RDATE:20260401T020000Z".to_owned()),
                Just("EXRULE:FREQ=WEEKLY".to_owned()),
                ".{0,12}",
            ], 0..3),
        )
            .prop_map(|(start, parts, extra)| {
                let mut text = format!("{start}\nRRULE:{}", parts.join(";"));
                for line in extra {
                    text.push('\n');
                    text.push_str(&line);
                }
                text
            }),
        1 => ".{0,64}",
        1 => "(DTSTART|RRULE|EXDATE|RDATE)[:;=A-Z0-9,\\n]{0,80}",
    ]
}

/// Checks what `occurrences` promises for a valid rule.
fn check_occurrences(
    rule: &WindowRule,
    duration_ms: Option<i64>,
    after: Timestamp,
    limit: usize,
) -> Result<(), TestCaseError> {
    let got = rule.occurrences(after, limit);
    prop_assert!(got.len() <= limit, "{} > {limit}", got.len());
    for pair in got.windows(2) {
        prop_assert!(pair[0].start <= pair[1].start, "out of order: {pair:?}");
    }
    for o in &got {
        prop_assert!(o.end > after, "{o:?} had ended at {after:?}");
        prop_assert!(o.end > o.start, "empty {o:?}");
        if let Some(d) = duration_ms
            && o.start.0.checked_add(d).is_some()
            && o.start.0 > i64::MIN / 2
        {
            prop_assert_eq!(o.end.0 - o.start.0, d, "{:?}", o);
        }
    }
    let open = rule.open_at(after);
    if let Some(o) = open {
        prop_assert!(o.contains(after));
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn recurrences_never_panic_and_occur_in_order(
        text in recurrence(),
        minutes in prop_oneof![Just(0i64), 1i64..=10_080, any::<i32>().prop_map(i64::from)],
        after in instant(),
        limit in 0usize..8,
    ) {
        let rule = WindowRule::Recurrence {
            rule: text,
            duration: SignedDuration::from_mins(minutes),
        };
        if rule.validate().is_ok() {
            check_occurrences(&rule, Some(minutes * 60_000), after, limit)?;
        } else {
            // Invalid rules may still be asked (a stored row from an older
            // version): never a panic.
            let _ = rule.occurrences(after, limit);
        }
    }

    #[test]
    fn weekly_rules_never_panic_and_occur_in_order(
        days in prop::collection::btree_set(any::<i8>(), 0..9),
        good_days in prop::collection::btree_set(1i8..=7, 1..8),
        use_good in any::<bool>(),
        hour in 0i8..24,
        minute in 0i8..60,
        minutes in prop_oneof![1i64..=10_080, any::<i32>().prop_map(i64::from)],
        tz in zone(),
        after in instant(),
        limit in 0usize..10,
    ) {
        let rule = WindowRule::Weekly {
            days: if use_good { good_days } else { days },
            start: jiff::civil::Time::new(hour, minute, 0, 0).unwrap(),
            duration: SignedDuration::from_mins(minutes),
            tz,
        };
        if rule.validate().is_ok() {
            check_occurrences(&rule, Some(minutes * 60_000), after, limit)?;
        } else {
            let _ = rule.occurrences(after, limit);
        }
    }

    #[test]
    fn one_off_rules_and_several_rules_together_never_panic(
        start in instant(),
        end in instant(),
        after in instant(),
        texts in prop::collection::vec(recurrence(), 0..3),
    ) {
        let one_off = WindowRule::OneOff { start, end };
        if one_off.validate().is_ok() {
            check_occurrences(&one_off, None, after, 3)?;
        }
        let mut rules = vec![one_off];
        rules.extend(texts.into_iter().map(|rule| WindowRule::Recurrence {
            rule,
            duration: SignedDuration::from_mins(60),
        }));
        let (open, next): (Option<Occurrence>, Option<Occurrence>) = open_or_next(&rules, after);
        if let Some(o) = open {
            prop_assert!(o.contains(after));
        }
        if let Some(n) = next {
            prop_assert!(n.start > after);
        }
        let _: BTreeSet<Occurrence> = rules.iter().flat_map(|r| r.occurrences(after, 2)).collect();
    }
}
