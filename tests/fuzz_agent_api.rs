//! Fuzzing the agent's local API (proptest): arbitrary requests — methods,
//! paths (known routes with odd segments, and garbage), queries, headers
//! and bodies — straight into its router with `tower::ServiceExt::oneshot`.
//! None panics and none gets a 5xx: client garbage is a 4xx. A block's
//! valid answer is accepted and reaches the agent.
//!
//! Cases per property: `PROPTEST_CASES` (default 256; `.ci/run` runs a
//! larger bounded pass).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Body;
use http::Request;
use lockstep::agent::api::{self, ApiState, LocalEvent};
use lockstep::agent::state::{BlockIntent, StateFile};
use proptest::prelude::*;
use tower::ServiceExt as _;

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

const TOKEN: &str = "0123456789abcdef";

/// A paused-clock runtime: long-polls (`?wait=`) end at once.
fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime")
    })
}

/// The API's state: block `a` with a token and one pending release request
/// (seq 7); answers are drained as the agent's core would.
fn state() -> &'static (ApiState, tempfile::TempDir) {
    static S: OnceLock<(ApiState, tempfile::TempDir)> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut file = StateFile::load(dir.path()).unwrap();
        file.state.block_intents.insert(
            "a".into(),
            vec![BlockIntent {
                seq: 7,
                operation_id: 1,
                kind: "release_request".into(),
                reason: "reboot".into(),
                handover: false,
                because_of: None,
                generation: 1,
                target: String::new(),
                window: None,
                deadline_unix_ms: None,
                message: String::new(),
                received_unix_ms: 0,
            }],
        );
        let (_changed_tx, changed) = tokio::sync::watch::channel(0u64);
        // The sender must outlive every request: leak it for the process.
        std::mem::forget(_changed_tx);
        let (events, mut rx) = tokio::sync::mpsc::channel::<LocalEvent>(64);
        rt().spawn(async move { while rx.recv().await.is_some() {} });
        let tokens: BTreeMap<String, String> = [("a".to_owned(), TOKEN.to_owned())].into();
        let api = ApiState {
            state: Arc::new(Mutex::new(file)),
            changed,
            tokens: Arc::new(std::sync::RwLock::new(tokens)),
            events,
        };
        (api, dir)
    })
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("7".to_owned()),
        Just("%2e%2e".to_owned()),
        Just("18446744073709551616".to_owned()),
        "[a-z0-9%._-]{0,12}",
        "[^/?#]{0,8}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        segment().prop_map(|b| format!("/v1/blocks/{b}/intents")),
        (segment(), segment()).prop_map(|(b, s)| format!("/v1/blocks/{b}/intents/{s}/ack")),
        segment().prop_map(|b| format!("/v1/blocks/{b}/trigger")),
        prop::collection::vec(segment(), 0..6).prop_map(|s| format!("/{}", s.join("/"))),
    ]
}

fn query() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        (0u64..120).prop_map(|w| format!("?wait={w}")),
        Just("?wait=-1".to_owned()),
        Just("?wait=99999999999999999999".to_owned()),
        "\\?[a-z=&%0-9]{0,16}",
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        prop_oneof![
            Just(r#"{"answer":"release"}"#),
            Just(r#"{"answer":"defer","until_unix_ms":1}"#),
            Just(r#"{"answer":"defer"}"#),
            Just(r#"{"answer":"refuse","message":"no"}"#),
            Just(r#"{"answer":"release_at_window"}"#),
            Just(r#"{"answer":"dismiss"}"#),
            Just(r#"{"answer":"explode"}"#),
            Just(r#"{"answer":1}"#),
            Just(r#"[]"#),
        ]
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..64),
        (0usize..3).prop_map(|k| {
            // Large bodies: a long message, or past the body limit.
            let n = [
                lockstep::edge::limits::MAX_TEXT_BYTES + 1,
                lockstep::edge::limits::MAX_LOCAL_API_BODY_BYTES + 1,
                1 << 20,
            ][k];
            format!(r#"{{"answer":"refuse","message":"{}"}}"#, "m".repeat(n)).into_bytes()
        }),
    ]
}

fn method() -> impl Strategy<Value = http::Method> {
    prop_oneof![
        Just(http::Method::GET),
        Just(http::Method::POST),
        Just(http::Method::PUT),
        Just(http::Method::DELETE),
        Just(http::Method::HEAD),
        Just(http::Method::OPTIONS),
        Just(http::Method::PATCH),
        Just(http::Method::from_bytes(b"BREW").unwrap()),
    ]
}

fn auth() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some(format!("Bearer {TOKEN}"))),
        Just(Some("Bearer wrong".to_owned())),
        Just(Some(TOKEN.to_owned())),
        "[ -~]{0,24}".prop_map(Some),
    ]
}

fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json")),
        Just(Some("text/plain")),
        Just(Some("application/json; charset=utf-8")),
    ]
}

fn send(req: Request<Body>) -> http::StatusCode {
    let router = api::router(state().0.clone());
    rt().block_on(async { router.oneshot(req).await.expect("infallible").status() })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_requests_never_panic_nor_get_a_5xx(
        method in method(),
        path in path(),
        query in query(),
        auth in auth(),
        content_type in content_type(),
        body in body(),
    ) {
        let uri = format!("{path}{query}");
        let Ok(uri) = uri.parse::<http::Uri>() else { return Ok(()) };
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = auth
            && let Ok(v) = http::HeaderValue::from_str(&a)
        {
            req = req.header("authorization", v);
        }
        if let Some(c) = content_type {
            req = req.header("content-type", c);
        }
        let status = send(req.body(Body::from(body)).unwrap());
        prop_assert!(!status.is_server_error(), "{status}");
    }
}

#[test]
fn a_block_answers_its_own_intent_and_not_another_blocks() {
    let ack = |block: &str, token: &str| {
        Request::post(format!("/v1/blocks/{block}/intents/7/ack"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from(r#"{"answer":"release"}"#))
            .unwrap()
    };
    assert_eq!(send(ack("a", TOKEN)), http::StatusCode::ACCEPTED);
    assert_eq!(send(ack("a", "wrong")), http::StatusCode::UNAUTHORIZED);
    assert_eq!(send(ack("b", TOKEN)), http::StatusCode::NOT_FOUND);
    let big = Request::post("/v1/blocks/a/intents/7/ack")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Body::from(vec![
            b' ';
            lockstep::edge::limits::MAX_LOCAL_API_BODY_BYTES
                + 1
        ]))
        .unwrap();
    assert_eq!(send(big), http::StatusCode::PAYLOAD_TOO_LARGE);
}
