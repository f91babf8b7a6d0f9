//! The maintenance-window, fleet-policy and approval verbs end to end: the
//! real `lockstep` binary runs them, as an operator or a customer would,
//! against a real `lockstep serve` (and, for approvals, a real `lockstep
//! agent` with the hooks runtime, since the scheduler decides only for
//! devices that have reported). Output is checked as people read it (tables)
//! and as scripts read it (JSON), and so are the exit codes.

mod support;

use std::path::Path;

use lockstep::cli::parse::timestamp;
use serde_json::{Value, json};
use support::cli::{Run, eventually_blocking, run_cli};
use support::{Agent, Server};

/// The candidate rows (`#  START  END  DURATION`) `approval list` shows
/// for approval `id`.
fn candidates<'a>(run: &'a Run, id: &str) -> Vec<&'a str> {
    let title = format!("Candidates of approval {id} ");
    run.stdout
        .lines()
        .skip_while(|l| !l.starts_with(&title))
        .skip(2)
        .take_while(|l| !l.is_empty())
        .collect()
}

/// Runs `lockstep <args>` with `LOCKSTEP_SERVER=server` and no token.
fn lockstep(server: &str, args: &[&str]) -> Run {
    run_cli(server, None, args)
}

/// [`lockstep`] with `LOCKSTEP_TOKEN=token`.
fn lockstep_as(server: &str, token: &str, args: &[&str]) -> Run {
    run_cli(server, Some(token), args)
}

fn now_ms() -> i64 {
    lockstep::clock::now().0
}

/// The next whole minute at least `minutes` from now, in Unix ms.
fn minutes_from_now(minutes: i64) -> i64 {
    (now_ms() / 60_000 + minutes + 1) * 60_000
}

fn ids(list: &Value, key: &str) -> Vec<u64> {
    list[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} array in {list}"))
        .iter()
        .map(|x| x["id"].as_u64().expect("an id"))
        .collect()
}

#[test]
fn windows_of_each_kind_are_created_listed_and_deleted() {
    let server = Server::start(&[]);
    let url = server.url();
    let token = server.token();
    let cli = |args: &[&str]| lockstep_as(&url, &token, args);
    cli(&["fleet", "create", "inverters"]).ok();
    cli(&["device", "register", "inv-0042", "--fleet", "inverters"]).ok();

    let weekly = cli(&[
        "window",
        "create",
        "--fleet",
        "inverters",
        "--days",
        "mon-fri",
        "--start",
        "02:00",
        "--tz",
        "Europe/Amsterdam",
        "--duration",
        "2h",
        "--output",
        "json",
    ])
    .json();
    assert_eq!(weekly["kind"], "weekly");
    assert_eq!(weekly["scope"], json!({ "fleet": "inverters" }));
    assert_eq!(
        weekly["weekly"],
        json!({
            "days": [1, 2, 3, 4, 5],
            "start_local": "02:00",
            "duration_minutes": 120,
            "time_zone": "Europe/Amsterdam",
        })
    );

    // A recurrence typed on one line reaches the server one property a line.
    let recurrence = cli(&[
        "window",
        "create",
        "--tag",
        "site-north",
        "--rrule",
        "DTSTART;TZID=Europe/Amsterdam:20260104T020000 RRULE:FREQ=MONTHLY;BYDAY=1SU",
        "--duration",
        "3h",
        "--output",
        "json",
    ])
    .json();
    assert_eq!(recurrence["kind"], "recurrence");
    assert_eq!(recurrence["scope"], json!({ "tag": "site-north" }));
    assert_eq!(
        recurrence["recurrence"],
        json!({
            "rrule": "DTSTART;TZID=Europe/Amsterdam:20260104T020000\nRRULE:FREQ=MONTHLY;BYDAY=1SU",
            "duration_minutes": 180,
        })
    );

    let from = minutes_from_now(24 * 60);
    let one_off = cli(&[
        "window",
        "create",
        "--device",
        "inv-0042",
        "--from",
        &timestamp(from),
        "--duration",
        "90m",
    ])
    .ok();
    assert!(one_off.stdout.contains("one_off"), "{one_off:?}");
    assert!(
        one_off.stdout.contains(&format!(
            "{} to {}",
            timestamp(from),
            timestamp(from + 90 * 60_000)
        )),
        "{one_off:?}"
    );
    let until = cli(&[
        "window",
        "create",
        "--fleet",
        "inverters",
        "--from",
        &timestamp(from),
        "--until",
        &timestamp(from + 3_600_000),
        "--output",
        "json",
    ])
    .json();
    assert_eq!(
        until["one_off"],
        json!({ "start_unix_ms": from, "end_unix_ms": from + 3_600_000 })
    );

    let (w1, w2, w4) = (
        weekly["id"].to_string(),
        recurrence["id"].to_string(),
        until["id"].to_string(),
    );
    let list = cli(&["window", "list"]).ok();
    let row = list.row(&w1);
    assert!(
        row.contains("fleet inverters")
            && row.contains("weekly")
            && row.contains("2h")
            && row.contains("Mon-Fri 02:00 Europe/Amsterdam"),
        "{row}"
    );
    let row = list.row(&w2);
    assert!(
        row.contains("tag site-north") && row.contains("recurrence") && row.contains("3h"),
        "{row}"
    );
    assert!(list.stdout.contains("device inv-0042"), "{list:?}");
    let list = cli(&["window", "list", "--output", "json"]).json();
    assert_eq!(ids(&list, "windows").len(), 4, "{list}");
    let kinds: Vec<&str> = list["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["weekly", "recurrence", "one_off", "one_off"]);

    let deleted = cli(&["window", "delete", &w1]).ok();
    assert_eq!(deleted.stdout.trim(), format!("deleted window {w1}"));
    let deleted = cli(&["window", "delete", &w4, "--output", "json"]).json();
    assert_eq!(deleted["deleted"].to_string(), w4);
    let list = cli(&["window", "list", "--output", "json"]).json();
    let left = ids(&list, "windows");
    assert_eq!(left.len(), 2, "{list}");
    assert!(!left.iter().any(|id| id.to_string() == w1), "{list}");
    let again = cli(&["window", "delete", &w1]).fails(3);
    assert_eq!(
        again.stderr.trim(),
        format!("error: NOT_FOUND: window {w1} not found")
    );
}

#[test]
fn next_lists_the_occurrences_of_the_windows_that_apply_to_a_device() {
    let server = Server::start(&[]);
    let url = server.url();
    let token = server.token();
    let cli = |args: &[&str]| lockstep_as(&url, &token, args);
    cli(&["fleet", "create", "inverters"]).ok();
    cli(&[
        "device",
        "register",
        "inv-1",
        "--fleet",
        "inverters",
        "--tag",
        "north",
    ])
    .ok();
    cli(&["device", "register", "inv-2", "--fleet", "inverters"]).ok();
    let one_off = |scope: &str, who: &str, from: i64, minutes: i64| {
        cli(&[
            "window",
            "create",
            scope,
            who,
            "--from",
            &timestamp(from),
            "--until",
            &timestamp(from + minutes * 60_000),
        ])
        .ok();
        (from, from + minutes * 60_000)
    };
    let mine = one_off("--device", "inv-1", minutes_from_now(120), 60);
    let my_site = one_off("--tag", "north", minutes_from_now(60), 30);
    let open_now = one_off("--device", "inv-2", minutes_from_now(-2), 60);
    // Every day, for every device of the fleet, at least 11 hours away.
    let daily = format!("{:02}:00", (now_ms() / 3_600_000 + 12) % 24);
    cli(&[
        "window",
        "create",
        "--fleet",
        "inverters",
        "--days",
        "daily",
        "--start",
        &daily,
        "--tz",
        "UTC",
        "--duration",
        "1h",
    ])
    .ok();

    let next = cli(&[
        "window", "next", "inv-1", "--count", "50", "--output", "json",
    ])
    .json();
    assert_eq!(next["device"], "inv-1");
    let spans: Vec<(i64, i64)> = next["occurrences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["start_unix_ms"].as_i64().unwrap(),
                o["end_unix_ms"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(spans.contains(&mine), "{next}");
    assert!(spans.contains(&my_site), "{next}");
    assert!(
        !spans.contains(&open_now),
        "another device's window: {next}"
    );
    assert!(spans.is_sorted(), "{next}");
    assert!(
        spans
            .iter()
            .any(|(s, e)| e - s == 3_600_000 && timestamp(*s).ends_with(&format!("T{daily}:00Z"))),
        "the fleet's daily window: {next}"
    );
    let indexes: Vec<u64> = next["occurrences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, (1..=spans.len() as u64).collect::<Vec<_>>());

    // The open one first, numbered from 1, as many as asked.
    let next = cli(&["window", "next", "inv-2", "--count", "2"]).ok();
    assert_eq!(
        next.stdout.lines().count(),
        3,
        "a header and 2 rows: {next:?}"
    );
    let first = next.row("1");
    assert!(
        first.contains(&timestamp(open_now.0)) && first.contains(&timestamp(open_now.1)),
        "{first}"
    );
    next.row("2");

    cli(&["window", "next", "ghost"]).fails(3);
}

#[test]
fn a_fleet_policy_round_trips_and_set_changes_only_the_given_settings() {
    let server = Server::start(&[]);
    let url = server.url();
    let token = server.token();
    let cli = |args: &[&str]| lockstep_as(&url, &token, args);
    cli(&["fleet", "create", "inverters"]).ok();

    let defaults = cli(&["policy", "get", "inverters", "--output", "json"]).json();
    assert_eq!(
        defaults,
        json!({
            "fleet": "inverters",
            "needs_window": ["os_update", "reboot", "shutdown"],
            "needs_approval": ["os_update"],
            "max_deferral_seconds": 86_400,
            "on_deferral_expiry": "notify",
            "release_mode": "atomic",
            "on_missed_occurrence": "ask",
        })
    );

    let set = cli(&[
        "policy",
        "set",
        "inverters",
        "--needs-window",
        "reboot,os_update",
        "--needs-window",
        "apply_env",
        "--needs-approval",
        "none",
        "--max-deferral",
        "2h",
        "--on-deferral-expiry",
        "force",
        "--release-mode",
        "partial",
        "--on-missed-occurrence",
        "next",
        "--output",
        "json",
    ])
    .json();
    let want = json!({
        "fleet": "inverters",
        "needs_window": ["apply_env", "os_update", "reboot"],
        "needs_approval": [],
        "max_deferral_seconds": 7200,
        "on_deferral_expiry": "force",
        "release_mode": "partial",
        "on_missed_occurrence": "next",
    });
    assert_eq!(set, want);
    assert_eq!(
        cli(&["policy", "get", "inverters", "--output", "json"]).json(),
        want
    );

    // One setting changes; the others stay as they were.
    let set = cli(&["policy", "set", "inverters", "--release-mode", "atomic"]).ok();
    assert!(
        set.stdout.contains("release mode:          atomic"),
        "{set:?}"
    );
    let got = cli(&["policy", "get", "inverters"]).ok();
    for line in [
        "fleet:                 inverters",
        "needs window:          apply_env, os_update, reboot",
        "needs approval:        (none)",
        "max deferral:          2h",
        "on deferral expiry:    force",
        "release mode:          atomic",
        "on missed occurrence:  next",
    ] {
        assert!(got.stdout.lines().any(|l| l == line), "{line:?} in {got:?}");
    }

    let missing = cli(&["policy", "get", "ghost"]).fails(3);
    assert_eq!(
        missing.stderr.trim(),
        "error: NOT_FOUND: fleet ghost not found"
    );
    cli(&["policy", "set", "ghost", "--release-mode", "atomic"]).fails(3);
}

#[test]
fn every_list_and_get_verb_prints_one_json_document() {
    let server = Server::start(&[]);
    let url = server.url();
    let token = server.token();
    let cli = |args: &[&str]| lockstep_as(&url, &token, args);
    cli(&["fleet", "create", "inverters"]).ok();
    cli(&["device", "register", "inv-1", "--fleet", "inverters"]).ok();
    let cases: [(&[&str], Value); 6] = [
        (&["window", "list"], json!({ "windows": [] })),
        (
            &["window", "next", "inv-1"],
            json!({ "device": "inv-1", "occurrences": [] }),
        ),
        (&["approval", "list"], json!({ "approvals": [] })),
        (
            &["approval", "list", "--status", "requested"],
            json!({ "approvals": [] }),
        ),
        (
            &["approval", "list", "--status", "declined"],
            json!({ "approvals": [] }),
        ),
        (
            &["policy", "get", "inverters"],
            json!({
                "fleet": "inverters",
                "needs_window": ["os_update", "reboot", "shutdown"],
                "needs_approval": ["os_update"],
                "max_deferral_seconds": 86_400,
                "on_deferral_expiry": "notify",
                "release_mode": "atomic",
                "on_missed_occurrence": "ask",
            }),
        ),
    ];
    for (args, want) in cases {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        assert_eq!(cli(&args).json(), want, "{args:?}");
    }
    // With something to show, too.
    cli(&[
        "window",
        "create",
        "--device",
        "inv-1",
        "--days",
        "sat,sun",
        "--start",
        "22:30",
        "--tz",
        "America/New_York",
        "--duration",
        "1h",
    ])
    .ok();
    for args in [
        &["window", "list", "--output", "json"][..],
        &[
            "window", "--output", "json", "next", "inv-1", "--count", "3",
        ],
    ] {
        let doc = cli(args).json();
        assert!(doc.is_object(), "{args:?}: {doc}");
    }
}

/// A fleet whose OS updates need a window and a customer's approval, a
/// device whose agent (hooks runtime) has connected and reported, and one
/// window occurrence on it an hour from now.
struct ApprovalFixture {
    server: Server,
    _agent: Agent,
    _dir: tempfile::TempDir,
    /// The window's start and end.
    window: (i64, i64),
}

impl ApprovalFixture {
    fn start() -> ApprovalFixture {
        let server = Server::start(&[]);
        let dir = tempfile::tempdir().expect("temp dir");
        let url = server.url();
        let token = server.token();
        let cli = |args: &[&str]| lockstep_as(&url, &token, args);
        cli(&["fleet", "create", "site"]).ok();
        let credential = dir.path().join("credential");
        cli(&[
            "device",
            "register",
            "dev-1",
            "--fleet",
            "site",
            "--credential-out",
            credential.to_str().unwrap(),
        ])
        .ok();
        let agent = start_agent(&url, dir.path());
        eventually_blocking(30, "dev-1 to report its state", || {
            let state = cli(&["device", "state", "dev-1", "--output", "json"]).json();
            (state["reported"] == true).then_some(())
        });
        cli(&[
            "policy",
            "set",
            "site",
            "--needs-window",
            "os_update",
            "--needs-approval",
            "os_update",
        ])
        .ok();
        let start = minutes_from_now(60);
        let end = start + 3_600_000;
        cli(&[
            "window",
            "create",
            "--device",
            "dev-1",
            "--from",
            &timestamp(start),
            "--until",
            &timestamp(end),
        ])
        .ok();
        ApprovalFixture {
            server,
            _agent: agent,
            _dir: dir,
            window: (start, end),
        }
    }

    fn cli(&self, args: &[&str]) -> Run {
        lockstep_as(&self.server.url(), &self.server.token(), args)
    }

    /// Creates an OS update on dev-1 and waits until it asks for approval;
    /// returns the operation's id.
    fn os_update_waiting_for_approval(&self) -> u64 {
        let op = self
            .cli(&[
                "op",
                "create",
                "dev-1",
                "--os-update",
                "2.0",
                "--actor",
                "ops",
                "--output",
                "json",
            ])
            .json();
        let id = op["id"].as_u64().expect("an operation id");
        self.wait_op(id, |s| s == "waiting_approval");
        id
    }

    /// Polls the operation until its status satisfies `done`; returns it.
    fn wait_op(&self, id: u64, done: impl Fn(&str) -> bool) -> Value {
        let id = id.to_string();
        eventually_blocking(30, &format!("operation {id} to change status"), || {
            let op = self.cli(&["op", "get", &id, "--output", "json"]).json();
            done(op["status"].as_str().unwrap_or_default()).then_some(op)
        })
    }

    /// The requested approval of operation `op`, as `list` prints it in JSON.
    fn requested(&self, op: u64) -> Value {
        let list = self
            .cli(&[
                "approval",
                "list",
                "--status",
                "requested",
                "--output",
                "json",
            ])
            .json();
        list["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["operation_id"].as_u64() == Some(op))
            .cloned()
            .unwrap_or_else(|| panic!("no requested approval of operation {op}: {list}"))
    }
}

/// `lockstep agent` for dev-1 with the hooks runtime (no blocks; every hook
/// succeeds), connected.
fn start_agent(server: &str, dir: &Path) -> Agent {
    let path = |p: &str| dir.join(p).to_str().unwrap().to_owned();
    let agent = Agent::spawn(&[
        "--server".into(),
        server.into(),
        "--device".into(),
        "dev-1".into(),
        "--credential-file".into(),
        path("credential"),
        "--runtime".into(),
        "hooks".into(),
        "--lock-root".into(),
        path("locks"),
        "--state-dir".into(),
        path("agent-state"),
        "--api-listen".into(),
        format!("127.0.0.1:{}", support::free_port()),
        "--hook-os-update".into(),
        "true".into(),
    ]);
    agent.wait_log("connected to the server");
    agent
}

#[test]
fn a_customer_approves_an_occurrence_and_the_operation_waits_for_that_window() {
    let fx = ApprovalFixture::start();
    let (start, end) = fx.window;
    let op = fx.os_update_waiting_for_approval();
    let approval = fx.requested(op);
    let id = approval["id"].as_u64().unwrap().to_string();
    assert_eq!(approval["device"], "dev-1");
    assert_eq!(
        approval["candidates"],
        json!([{ "index": 1, "start_unix_ms": start, "end_unix_ms": end }])
    );

    // The customer reads the table and copies the start time it shows.
    let list = fx.cli(&["approval", "list"]).ok();
    let row = list.row(&id);
    assert!(
        row.contains(&op.to_string()) && row.contains("dev-1") && row.contains("requested"),
        "{row}"
    );
    assert!(
        list.stdout
            .contains(&format!("lockstep approval approve {id} --index N")),
        "{list:?}"
    );
    let candidates = candidates(&list, &id);
    assert_eq!(candidates.len(), 1, "{list:?}");
    let candidate = candidates[0];
    assert!(candidate.starts_with("1 "), "{candidate}");
    let shown_start = candidate.split_whitespace().nth(1).unwrap().to_owned();
    assert_eq!(shown_start, timestamp(start), "{candidate}");
    assert!(candidate.contains(&timestamp(end)), "{candidate}");

    let approved = fx
        .cli(&[
            "approval",
            "approve",
            &id,
            "--start",
            &shown_start,
            "--actor",
            "customer@site",
            "--output",
            "json",
        ])
        .json();
    assert_eq!(approved["status"], "approved");
    let decided_by = approved["decided_by"].as_str().unwrap_or_default();
    assert!(
        decided_by.starts_with("customer@site via bootstrap-admin (token "),
        "who the client named, beside the token that decided: {decided_by}"
    );
    assert_eq!(
        approved["approved"],
        json!({ "start_unix_ms": start, "end_unix_ms": end })
    );

    // Approved for an occurrence an hour away: it waits for that window.
    let waiting = fx.wait_op(op, |s| s != "waiting_approval");
    assert_eq!(waiting["status"], "waiting_window", "{waiting}");
    let list = fx
        .cli(&[
            "approval", "list", "--status", "approved", "--output", "json",
        ])
        .json();
    assert_eq!(ids(&list, "approvals"), [approved["id"].as_u64().unwrap()]);
    let list = fx.cli(&["approval", "list", "--status", "approved"]).ok();
    assert!(
        list.row(&id)
            .contains(&format!("{} to {}", timestamp(start), timestamp(end))),
        "{list:?}"
    );

    // Decided once: neither approved nor declined again.
    let again = fx
        .cli(&["approval", "approve", &id, "--index", "1", "--actor", "x"])
        .fails(4);
    assert_eq!(
        again.stderr.trim(),
        format!("error: FAILED_PRECONDITION: approval {id} is approved, not requested")
    );
    fx.cli(&[
        "approval",
        "decline",
        &id,
        "--message",
        "too late",
        "--actor",
        "x",
    ])
    .fails(4);
}

#[test]
fn a_customer_declines_and_the_operation_is_cancelled_with_the_message() {
    let fx = ApprovalFixture::start();
    let op = fx.os_update_waiting_for_approval();
    let id = fx.requested(op)["id"].as_u64().unwrap().to_string();

    // A candidate that is not there changes nothing.
    let bad = fx
        .cli(&[
            "approval",
            "approve",
            &id,
            "--index",
            "9",
            "--actor",
            "customer@site",
        ])
        .fails(2);
    assert!(
        bad.stderr
            .starts_with(&format!("error: --index 9: approval {id} has 1 candidate")),
        "{bad:?}"
    );
    fx.requested(op);

    let declined = fx
        .cli(&[
            "approval",
            "decline",
            &id,
            "--message",
            "harvest week",
            "--actor",
            "customer@site",
        ])
        .ok();
    assert!(declined.stdout.contains("declined"), "{declined:?}");
    assert!(declined.stdout.contains("harvest week"), "{declined:?}");
    let cancelled = fx.wait_op(op, |s| s != "waiting_approval");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let error = cancelled["error"].as_str().unwrap();
    assert!(
        error.contains("customer@site") && error.contains("harvest week"),
        "{error}"
    );
    let list = fx
        .cli(&[
            "approval", "list", "--status", "declined", "--output", "json",
        ])
        .json();
    assert_eq!(list["approvals"][0]["message"], "harvest week", "{list}");
    assert_eq!(list["approvals"][0]["candidates"], json!([]), "{list}");

    // The next request is approved by its number.
    let op = fx.os_update_waiting_for_approval();
    let id = fx.requested(op)["id"].as_u64().unwrap().to_string();
    let approved = fx
        .cli(&[
            "approval",
            "approve",
            &id,
            "--index",
            "1",
            "--actor",
            "customer@site",
        ])
        .ok();
    assert!(approved.stdout.contains("approved"), "{approved:?}");
    let waiting = fx.wait_op(op, |s| s != "waiting_approval");
    assert_eq!(waiting["status"], "waiting_window", "{waiting}");
}

#[test]
fn missing_things_exit_3() {
    let server = Server::start(&[]);
    let url = server.url();
    let token = server.token();
    let cli = |args: &[&str]| lockstep_as(&url, &token, args);
    for (args, line) in [
        (
            &["window", "delete", "999"][..],
            "error: NOT_FOUND: window 999 not found",
        ),
        (
            &["window", "next", "ghost", "--output", "json"],
            "error: NOT_FOUND: device ghost not found",
        ),
        (
            &["policy", "get", "ghost"],
            "error: NOT_FOUND: fleet ghost not found",
        ),
        (
            &["policy", "set", "ghost", "--needs-window", "reboot"],
            "error: NOT_FOUND: fleet ghost not found",
        ),
        // A window, env variable or operation on a scope that does not
        // exist (a typo) is refused naming it.
        (
            &[
                "window",
                "create",
                "--fleet",
                "ghost",
                "--days",
                "mon",
                "--start",
                "02:00",
                "--tz",
                "UTC",
                "--duration",
                "1h",
            ],
            "error: NOT_FOUND: fleet ghost not found",
        ),
        (
            &[
                "window",
                "create",
                "--device",
                "ghost",
                "--from",
                "2030-01-01T00:00:00Z",
                "--until",
                "2030-01-01T02:00:00Z",
            ],
            "error: NOT_FOUND: device ghost not found",
        ),
        (
            &["env", "set", "--fleet", "ghost", "GAIN=0.7"],
            "error: NOT_FOUND: fleet ghost not found",
        ),
        (
            &["env", "unset", "--device", "ghost", "GAIN"],
            "error: NOT_FOUND: device ghost not found",
        ),
        (
            &["op", "create", "ghost", "--reboot"],
            "error: NOT_FOUND: device ghost not found",
        ),
        (
            &[
                "approval", "approve", "999", "--index", "1", "--actor", "me",
            ],
            "error: NOT_FOUND: approval 999 not found",
        ),
        (
            &[
                "approval",
                "decline",
                "999",
                "--message",
                "no",
                "--actor",
                "me",
            ],
            "",
        ),
    ] {
        let run = cli(args).fails(3);
        if !line.is_empty() {
            assert_eq!(run.stderr.trim(), line, "{args:?}");
        }
    }
    // None of those windows was made.
    let windows = cli(&["window", "list", "--output", "json"]).json();
    assert_eq!(ids(&windows, "windows"), Vec::<u64>::new(), "{windows}");
}

#[test]
fn usage_errors_exit_2_before_any_call() {
    // No server listens here: only a call would turn these into exit 5.
    let nowhere = format!("http://127.0.0.1:{}", support::free_port());
    let weekly = |extra: &[&'static str]| {
        let mut a = vec![
            "window",
            "create",
            "--fleet",
            "f",
            "--days",
            "mon",
            "--start",
            "02:00",
            "--tz",
            "UTC",
            "--duration",
            "1h",
        ];
        a.extend_from_slice(extra);
        a
    };
    let swap = |args: Vec<&'static str>, flag: &str, value: &'static str| {
        let mut args = args;
        let i = args.iter().position(|a| *a == flag).unwrap();
        args[i + 1] = value;
        args
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (swap(weekly(&[]), "--days", "funday"), "--days"),
        (swap(weekly(&[]), "--start", "25:00"), "--start"),
        (swap(weekly(&[]), "--tz", "Mars/Olympus"), "--time-zone"),
        (swap(weekly(&[]), "--duration", "90s"), "--duration"),
        (swap(weekly(&[]), "--duration", "8d"), "--duration"),
        (weekly(&["--tag", "t"]), "--tag"),
        (weekly(&["--from", "2026-11-24T22:00:00Z"]), "--from"),
        (
            vec!["window", "create", "--fleet", "f", "--days", "mon"],
            "--start",
        ),
        (vec!["window", "create", "--fleet", "f"], "--days"),
        (
            vec![
                "window",
                "create",
                "--days",
                "mon",
                "--start",
                "02:00",
                "--tz",
                "UTC",
                "--duration",
                "1h",
            ],
            "--fleet",
        ),
        (
            vec![
                "window",
                "create",
                "--fleet",
                "f",
                "--rrule",
                "RRULE:FREQ=DAILY",
                "--duration",
                "1h",
            ],
            "--rrule",
        ),
        (
            vec![
                "window",
                "create",
                "--fleet",
                "f",
                "--rrule",
                "DTSTART:20260104T020000Z RRULE:FREQ=DAILY",
            ],
            "--duration",
        ),
        (
            vec![
                "window",
                "create",
                "--fleet",
                "f",
                "--from",
                "2026-11-24T22:00:00Z",
            ],
            "--until or --duration",
        ),
        (
            vec![
                "window",
                "create",
                "--fleet",
                "f",
                "--from",
                "2026-11-24T22:00:00Z",
                "--until",
                "2026-11-24T21:00:00Z",
            ],
            "--until",
        ),
        (
            vec![
                "window",
                "create",
                "--fleet",
                "f",
                "--from",
                "2026-11-24 22:00",
                "--duration",
                "1h",
            ],
            "--from",
        ),
        (vec!["window", "delete", "three"], "<ID>"),
        (vec!["window", "next", "d", "--count", "51"], "--count"),
        (vec!["policy", "set", "f"], "--needs-window"),
        (
            vec!["policy", "set", "f", "--needs-window", "nap"],
            "--needs-window",
        ),
        (
            vec!["policy", "set", "f", "--needs-approval", "none,reboot"],
            "--needs-approval",
        ),
        (
            vec!["policy", "set", "f", "--max-deferral", "0s"],
            "--max-deferral",
        ),
        (
            vec!["policy", "set", "f", "--on-deferral-expiry", "panic"],
            "--on-deferral-expiry",
        ),
        (
            vec!["policy", "set", "f", "--release-mode", "half"],
            "--release-mode",
        ),
        (
            vec!["policy", "set", "f", "--on-missed-occurrence", "skip"],
            "--on-missed-occurrence",
        ),
        (vec!["approval", "list", "--status", "pending"], "--status"),
        (vec!["approval", "approve", "3", "--actor", "me"], "--index"),
        (
            vec![
                "approval",
                "approve",
                "3",
                "--index",
                "1",
                "--start",
                "2026-11-24T22:00:00Z",
                "--actor",
                "me",
            ],
            "--start",
        ),
        (
            vec!["approval", "approve", "3", "--index", "0", "--actor", "me"],
            "--index",
        ),
        (
            vec![
                "approval", "approve", "3", "--start", "tomorrow", "--actor", "me",
            ],
            "--start",
        ),
        (
            vec!["approval", "decline", "3", "--actor", "me"],
            "--message",
        ),
        (vec!["window", "list", "--output", "yaml"], "--output"),
    ];
    for (args, names) in cases {
        let run = lockstep(&nowhere, &args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.starts_with("error:"), "{args:?}: {run:?}");
        assert!(
            run.stderr.contains(names),
            "{args:?}: the error names {names}: {run:?}"
        );
        assert!(run.stdout.is_empty(), "{args:?}: {run:?}");
    }
}
