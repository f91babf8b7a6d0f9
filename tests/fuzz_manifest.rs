//! Fuzzing agent manifests (proptest): arbitrary bytes, JSON documents of
//! manifest-like shape with values of any type, and valid manifests with
//! random byte edits. Parsing never panics; a refusal names the file (and,
//! for a bad field, the field); an accepted manifest holds only valid,
//! distinct blocks with 64-hex-digit env fingerprints.
//!
//! Cases per property: `PROPTEST_CASES` (default 256; `.ci/run` runs a
//! larger bounded pass).

use std::path::Path;

use lockstep::agent::runtime::{RuntimeError, parse_manifest};
use proptest::prelude::*;
use serde_json::{Value, json};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const PATH: &str = "/etc/lockstep/manifest.json";

fn valid() -> Value {
    json!({
        "release": "r1",
        "os_version": "os-1",
        "blocks": [
            {"name": "telemetry", "version": "1.25.3", "command": ["/bin/telemetry", "--fast"],
             "env": {"LOG": "info"}},
            {"name": "controller", "version": "4.0.0", "command": ["/bin/controller"],
             "working_dir": "/srv", "hand_over_timeout_secs": 30,
             "env_fingerprint": "0".repeat(64)},
        ]
    })
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        "[a-z][a-z0-9-]{0,8}".prop_map(Value::String),
        "[0-9]\\.[0-9]\\.[0-9]".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A block object whose fields are sometimes right and sometimes any value.
fn block() -> impl Strategy<Value = Value> {
    let field = |good: Value| prop_oneof![3 => Just(good), 1 => any_json()];
    (
        prop_oneof!["[a-z][a-z0-9-]{0,6}".prop_map(Value::String), any_json()],
        field(json!("1.0.0")),
        field(json!(["/bin/x"])),
        field(json!({"K": "v"})),
        prop::option::of(field(json!(60))),
        prop::option::of(field(json!("f".repeat(64)))),
        any::<bool>(),
    )
        .prop_map(|(name, version, command, env, hand_over, fp, extra)| {
            let mut b = json!({"name": name, "version": version, "command": command, "env": env});
            if let Some(h) = hand_over {
                b["hand_over_timeout_secs"] = h;
            }
            if let Some(f) = fp {
                b["env_fingerprint"] = f;
            }
            if extra {
                b["unexpected"] = json!(1);
            }
            b
        })
}

fn manifest_like() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(json!("r1")), any_json()],
        prop::option::of(any_json()),
        prop::collection::vec(block(), 0..5),
    )
        .prop_map(|(release, os, blocks)| {
            let mut m = json!({"release": release, "blocks": blocks});
            if let Some(os) = os {
                m["os_version"] = os;
            }
            serde_json::to_vec(&m).unwrap()
        })
}

fn mutated_valid() -> impl Strategy<Value = Vec<u8>> {
    let base = serde_json::to_vec(&valid()).unwrap();
    prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..6).prop_map(move |edits| {
        let mut b = base.clone();
        for (pos, byte, kind) in edits {
            let len = b.len();
            match kind {
                0 if len > 0 => b[pos % len] = byte,
                1 => b.insert(pos % (len + 1), byte),
                _ if len > 0 => {
                    b.remove(pos % len);
                }
                _ => {}
            }
        }
        b
    })
}

fn check(text: &[u8]) -> Result<(), TestCaseError> {
    match parse_manifest(Path::new(PATH), text) {
        Ok(m) => {
            let mut names = std::collections::BTreeSet::new();
            for b in &m.blocks {
                prop_assert!(b.validate().is_ok(), "accepted an invalid block {b:?}");
                prop_assert!(
                    names.insert(b.name.clone()),
                    "accepted a duplicate {}",
                    b.name
                );
                prop_assert_eq!(b.env_fingerprint.len(), 64);
            }
        }
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(
                msg.contains(PATH),
                "the error does not name the file: {msg}"
            );
            if let RuntimeError::Manifest { field, .. } = &e {
                prop_assert!(!field.is_empty(), "no field in {msg}");
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes)?;
    }

    #[test]
    fn manifest_shaped_json_is_accepted_valid_or_refused_naming_the_field(text in manifest_like()) {
        check(&text)?;
    }

    #[test]
    fn edited_valid_manifests_never_panic(text in mutated_valid()) {
        check(&text)?;
    }
}

#[test]
fn the_valid_seed_is_accepted_and_deep_nesting_is_refused() {
    let m = parse_manifest(Path::new(PATH), &serde_json::to_vec(&valid()).unwrap()).unwrap();
    assert_eq!(m.blocks.len(), 2);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(parse_manifest(Path::new(PATH), deep.as_bytes()).is_err());
    let big = vec![b' '; lockstep::edge::limits::MAX_MANIFEST_BYTES + 1];
    let err = parse_manifest(Path::new(PATH), &big)
        .unwrap_err()
        .to_string();
    assert!(err.contains("larger than"), "{err}");
}
