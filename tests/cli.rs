//! The operator CLI end to end: the real `lockstep` binary runs its verbs,
//! as an operator or a script would, against a real `lockstep serve`; output
//! is checked as people read it (tables) and as scripts read it (JSON), and
//! so are the exit codes.

mod support;

use serde_json::Value;
use support::Server;
use support::cli::{Run, run_cli};

/// Runs `lockstep <args>` with `LOCKSTEP_SERVER=server` and no token.
fn lockstep(server: &str, args: &[&str]) -> Run {
    run_cli(server, None, args)
}

/// [`lockstep`] with `LOCKSTEP_TOKEN=token`.
fn lockstep_as(server: &str, token: &str, args: &[&str]) -> Run {
    run_cli(server, Some(token), args)
}

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

#[test]
fn an_operator_runs_the_catalog_devices_env_and_operations() {
    let server = Server::start(&[]);
    let url = server.url();
    let token = server.token();
    let cli = |args: &[&str]| lockstep_as(&url, &token, args);
    let tmp = tempfile::tempdir().expect("temp dir");

    // Fleets.
    cli(&["fleet", "create", "inverters", "--name", "Site inverters"]).ok();
    let fleets = cli(&["fleet", "list"]).ok();
    assert!(
        fleets.row("inverters").contains("Site inverters"),
        "{fleets:?}"
    );
    let fleets = cli(&["fleet", "list", "--output", "json"]).json();
    assert_eq!(fleets["fleets"][0]["id"], "inverters");
    let again = cli(&["fleet", "create", "inverters"]);
    assert_eq!(again.code, 4, "{again:?}");
    assert_eq!(
        again.stderr.trim(),
        "error: ALREADY_EXISTS: fleet inverters already exists"
    );

    // Blocks and versions, from flags and from the README's JSON shape.
    for b in ["telemetry", "controller", "ui"] {
        cli(&["block", "create", b]).ok();
    }
    let (a, b, d) = (digest('a'), digest('b'), digest('d'));
    cli(&[
        "block",
        "add-version",
        "telemetry",
        "1.25.3",
        "--image",
        &a,
        "--command",
        "/bin/telemetry",
        "--command",
        "--verbose",
    ])
    .ok();
    cli(&["block", "add-version", "telemetry", "1.26.0", "--image", &b]).ok();
    let controller = tmp.path().join("controller.json");
    std::fs::write(
        &controller,
        format!(
            r#"{{"block_version":{{"block":"controller","version":"4.0.0","image_digest":"{}","update_strategy":{{"hand_over":{{"timeout_seconds":30}}}}}}}}"#,
            digest('c')
        ),
    )
    .unwrap();
    let created = cli(&[
        "block",
        "add-version",
        "--from-json",
        controller.to_str().unwrap(),
        "--output",
        "json",
    ])
    .json();
    assert_eq!(
        created["update_strategy"]["hand_over"]["timeout_seconds"],
        30
    );
    cli(&[
        "block",
        "add-version",
        "ui",
        "2.0.0",
        "--image",
        &d,
        "--depends-on",
        "telemetry:restart",
        "--env",
        "MODE=full",
    ])
    .ok();
    let versions = cli(&["block", "versions", "telemetry"]).ok();
    assert!(
        versions.row("1.25.3").contains("/bin/telemetry --verbose"),
        "{versions:?}"
    );
    versions.row("1.26.0");
    let versions = cli(&["block", "versions", "ui", "--output", "json"]).json();
    assert_eq!(
        versions["block_versions"][0]["depends_on"][0]["restart"],
        true
    );

    // Two releases and what moving between them disturbs.
    cli(&[
        "release",
        "create",
        "r1",
        "--fleet",
        "inverters",
        "telemetry@1.25.3",
        "controller@4.0.0",
        "ui@2.0.0",
        "--env",
        "SITE=north",
    ])
    .ok();
    let r2 = cli(&[
        "release",
        "create",
        "r2",
        "--fleet",
        "inverters",
        "telemetry@1.26.0",
        "controller@4.0.0",
        "ui@2.0.0",
        "--env",
        "SITE=north",
        "--output",
        "json",
    ])
    .json();
    assert_eq!(r2["blocks"].as_array().map(Vec::len), Some(3), "{r2}");
    let r1 = cli(&["release", "get", "r1"]).ok();
    assert!(r1.row("ui").contains("telemetry (restart)"), "{r1:?}");
    let r1 = cli(&["release", "get", "r1", "--output", "json"]).json();
    assert_eq!(r1["env"]["SITE"], "north");
    let list = cli(&["release", "list"]).ok();
    list.row("r1");
    list.row("r2");
    let list = cli(&[
        "release",
        "list",
        "--fleet",
        "inverters",
        "--output",
        "json",
    ])
    .json();
    assert_eq!(list["releases"].as_array().map(Vec::len), Some(2), "{list}");

    let diff = cli(&["release", "diff", "r1", "r2"]).ok();
    let telemetry = diff.row("telemetry");
    assert!(telemetry.contains("restart: image"), "{telemetry}");
    assert!(telemetry.contains("update_restart"), "{telemetry}");
    let ui = diff.row("ui");
    assert!(ui.contains("unchanged"), "{ui}");
    assert!(ui.contains("dependency_restart"), "{ui}");
    assert!(ui.contains("telemetry"), "{ui}");
    assert!(diff.row("controller").contains("unchanged"), "{diff:?}");
    let diff = cli(&["release", "diff", "r1", "r2", "--output", "json"]).json();
    let ui = diff["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["block"] == "ui")
        .unwrap();
    assert_eq!(ui["disturbance"]["reason"], "dependency_restart");
    assert_eq!(ui["disturbance"]["because_of"], "telemetry");

    // Devices: the credential goes to a private file, or is shown once.
    let cred = tmp.path().join("inv-0042.credential");
    let registered = cli(&[
        "device",
        "register",
        "inv-0042",
        "--fleet",
        "inverters",
        "--tag",
        "site-north",
        "--credential-out",
        cred.to_str().unwrap(),
    ])
    .ok();
    let secret = std::fs::read_to_string(&cred).expect("credential file written");
    let secret = secret.trim();
    assert!(!secret.is_empty());
    assert!(!registered.stdout.contains(secret), "{registered:?}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&cred).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "credential file mode {mode:o}");
    let shown = cli(&[
        "device",
        "register",
        "inv-0043",
        "--fleet",
        "inverters",
        "--output",
        "json",
    ])
    .json();
    assert!(
        shown["credential"].as_str().is_some_and(|c| !c.is_empty()),
        "{shown}"
    );
    let device = cli(&["device", "get", "inv-0042"]).ok();
    assert!(device.stdout.contains("site-north"), "{device:?}");
    let device = cli(&["device", "get", "inv-0042", "--output", "json"]).json();
    assert_eq!(device["fleet"], "inverters");
    let tagged = cli(&["device", "list", "--tag", "site-north"]).ok();
    tagged.row("inv-0042");
    assert!(!tagged.stdout.contains("inv-0043"), "{tagged:?}");
    let all = cli(&[
        "device",
        "list",
        "--fleet",
        "inverters",
        "--status",
        "unknown",
        "--output",
        "json",
    ])
    .json();
    assert_eq!(all["devices"].as_array().map(Vec::len), Some(2), "{all}");
    let state = cli(&["device", "state", "inv-0042"]).ok();
    assert!(state.stdout.contains("reported:"), "{state:?}");
    let state = cli(&["device", "state", "inv-0042", "--output", "json"]).json();
    assert_eq!(state["reported"], false);

    // Env variables, scoped to a block and fleet-wide.
    cli(&[
        "env",
        "set",
        "--device",
        "inv-0042",
        "GAIN=0.7",
        "--block",
        "controller",
    ])
    .ok();
    cli(&["env", "set", "--fleet", "inverters", "LEVEL=3"]).ok();
    let env = cli(&["env", "list", "--device", "inv-0042"]).ok();
    let gain = env.row("GAIN");
    assert!(
        gain.contains("0.7") && gain.contains("controller"),
        "{gain}"
    );
    let env = cli(&["env", "list", "--fleet", "inverters", "--output", "json"]).json();
    assert_eq!(env["vars"][0]["name"], "LEVEL");
    let removed = cli(&[
        "env",
        "unset",
        "--device",
        "inv-0042",
        "GAIN",
        "--block",
        "controller",
        "--output",
        "json",
    ])
    .json();
    assert_eq!(removed["removed"], 1);
    let env = cli(&["env", "list", "--device", "inv-0042", "--output", "json"]).json();
    assert_eq!(env["vars"], Value::Array(vec![]), "{env}");

    // An operation on a device that never connected waits; cancelled, it ends.
    let op = cli(&[
        "op", "create", "inv-0042", "--reboot", "--actor", "ops", "--output", "json",
    ])
    .json();
    let id = op["id"].as_u64().expect("an operation id").to_string();
    assert_eq!(op["kind"], "reboot");
    let got = cli(&["op", "get", &id]).ok();
    assert!(got.stdout.contains("pending"), "{got:?}");
    let got = cli(&["op", "get", &id, "--output", "json"]).json();
    assert_eq!(got["status"], "pending");
    // --token wins over LOCKSTEP_TOKEN: a made-up one is refused, exit 7.
    let refused = cli(&["op", "get", &id, "--token", "t0k3n"]);
    assert_eq!(refused.code, 7, "{refused:?}");
    assert!(
        refused
            .stderr
            .starts_with("error: UNAUTHENTICATED: not an API token"),
        "{refused:?}"
    );
    let waited = cli(&["op", "wait", &id, "--timeout", "300ms"]);
    assert_eq!(waited.code, 6, "{waited:?}");
    assert!(waited.stderr.contains("still pending"), "{waited:?}");
    let ops = cli(&["op", "list", "inv-0042"]).ok();
    assert!(ops.row(&id).contains("reboot"), "{ops:?}");
    let ops = cli(&["op", "list", "inv-0042", "--output", "json"]).json();
    assert!(
        ops["operations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["id"].as_u64() == op["id"].as_u64()),
        "{ops}"
    );
    let cancelled = cli(&[
        "op", "cancel", &id, "--reason", "not now", "--output", "json",
    ])
    .json();
    assert_eq!(cancelled["status"], "cancelled");
    let got = cli(&["op", "get", &id]).ok();
    assert!(got.stdout.contains("cancelled"), "{got:?}");
    let waited = cli(&["op", "wait", &id, "--timeout", "5s"]);
    assert_eq!(waited.code, 1, "{waited:?}");
    // A cancelled operation says why.
    assert_eq!(
        waited.stderr.trim(),
        format!("error: operation {id} cancelled: not now")
    );
    let again = cli(&["op", "cancel", &id]);
    assert_eq!(again.code, 4, "{again:?}");

    // Exit codes of failures the server reports.
    let missing = cli(&["release", "get", "ghost"]);
    assert_eq!(missing.code, 3, "{missing:?}");
    assert_eq!(
        missing.stderr.trim(),
        "error: NOT_FOUND: release ghost not found"
    );
    assert!(missing.stdout.is_empty(), "{missing:?}");
    let missing = cli(&["device", "get", "ghost", "--output", "json"]);
    assert_eq!(missing.code, 3, "{missing:?}");
    let invalid = cli(&["block", "add-version", "ui", "2.0.1", "--image", "latest"]);
    assert_eq!(invalid.code, 2, "{invalid:?}");
    assert!(
        invalid
            .stderr
            .starts_with("error: INVALID_ARGUMENT: block_version.image_digest"),
        "{invalid:?}"
    );
    let bad_ref = cli(&[
        "release",
        "create",
        "r3",
        "--fleet",
        "inverters",
        "telemetry-1.25.3",
    ]);
    assert_eq!(bad_ref.code, 2, "{bad_ref:?}");
    assert!(bad_ref.stderr.contains("BLOCK@VERSION"), "{bad_ref:?}");
}

#[test]
fn usage_errors_exit_2_before_any_call() {
    // No server listens here: only a call would turn these into exit 5.
    let nowhere = format!("http://127.0.0.1:{}", support::free_port());
    for args in [
        &[
            "release",
            "create",
            "r3",
            "--fleet",
            "f",
            "telemetry@latest",
        ][..],
        &["release", "create", "r3", "--fleet", "f", "telemetry"],
        &["op", "create", "d1"],
        &["op", "create", "d1", "--reboot", "--shutdown"],
        &["env", "set", "--fleet", "f", "--device", "d", "A=1"],
        &["env", "set", "--fleet", "f", "A"],
        &["op", "wait", "1", "--timeout", "soon"],
        &[
            "block",
            "add-version",
            "--from-json",
            "/nonexistent/bv.json",
        ],
        &["fleet", "list", "--output", "yaml"],
    ] {
        let run = lockstep(&nowhere, args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.starts_with("error:"), "{args:?}: {run:?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:?}");
    }
}

#[test]
fn a_server_that_is_not_there_exits_5() {
    let nowhere = format!("http://127.0.0.1:{}", support::free_port());
    for args in [
        &["fleet", "list"][..],
        &["release", "get", "r1", "--output", "json"],
        &["op", "wait", "1"],
    ] {
        let run = lockstep(&nowhere, args);
        assert_eq!(run.code, 5, "{args:?}: {run:?}");
        let line = run.stderr.trim();
        assert!(
            line.starts_with(&format!(
                "error: UNAVAILABLE: cannot reach the server at {nowhere}"
            )),
            "{line}"
        );
        assert_eq!(line.lines().count(), 1, "one line: {line}");
        assert!(run.stdout.is_empty(), "{run:?}");
    }
    // --server overrides LOCKSTEP_SERVER.
    let run = lockstep(
        "http://127.0.0.1:9",
        &["fleet", "list", "--server", &nowhere],
    );
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stderr.contains(&nowhere), "{run:?}");
}
