//! The rollout verbs end to end: the real `lockstep` binary runs them, as an
//! operator or a CI job would, against a real `lockstep serve` on SQLite.
//! Rollouts that must finish get real `lockstep agent`s (hooks runtime, no
//! blocks, the release hook a shell command), since the scheduler applies
//! operations only on devices whose agent has reported; the others use
//! devices without agents, whose operations stay in flight. Output is
//! checked as people read it (tables, and `rollout watch`'s plain lines, as
//! printed when stdout is not a terminal) and as scripts read it (JSON, and
//! JSON lines from `watch`), and so are the exit codes.

mod support;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cli::{Run, drain, eventually_blocking, run_cli, spawn, wait_exit};
use support::{Agent, Server};

/// Runs `lockstep <args>` with `LOCKSTEP_SERVER=server` and
/// `LOCKSTEP_TOKEN=token`, for at most 60 s.
fn lockstep(server: &str, token: Option<&str>, args: &[&str]) -> Run {
    run_cli(server, token, args)
}

/// A running `lockstep rollout watch`, its stdout read line by line as it
/// comes.
struct Watcher {
    child: Child,
    args: Vec<String>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Watcher {
    fn start(site: &Site, id: &str, extra: &[&str]) -> Watcher {
        let mut args = vec!["rollout", "watch", id];
        args.extend_from_slice(extra);
        let mut child = spawn(&site.url(), Some(&site.server.token()), &args);
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = drain(child.stderr.take().expect("stderr piped"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watcher {
            child,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            lines: rx,
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// Waits (at most 30 s) for a line containing `needle`; returns it.
    #[track_caller]
    fn wait_line(&mut self, needle: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    eprintln!("[watch] {line}");
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "watch never printed {needle:?} within 30 s; it printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits (at most 60 s) for the watch to end; everything it printed.
    fn finish(mut self) -> Run {
        let code = wait_exit(&mut self.child, 60, &format!("lockstep {:?}", self.args));
        // The reader ends at EOF.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            eprintln!("[watch] {line}");
            self.seen.push(line);
        }
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().expect("stderr reader"))
            .unwrap_or_default();
        eprintln!(
            "$ lockstep {} ... exit {code}\n{stderr}",
            self.args.join(" ")
        );
        Run {
            code,
            stdout: self.seen.iter().map(|l| format!("{l}\n")).collect(),
            stderr,
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` (at most `secs` seconds, every 100 ms) until it returns
/// `Some`; panics with `what` otherwise.
fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

/// A fleet `site` with releases r1 (app 1.0.0) and r2 (app 2.0.0) and a
/// few devices; those given a release hook run a `lockstep agent` (hooks
/// runtime) that has reported, so their operations apply.
struct Site {
    server: Server,
    _dir: tempfile::TempDir,
    _agents: Vec<Agent>,
}

impl Site {
    /// `devices`: each device's id, tags and release hook (`None`: no agent).
    fn start(devices: &[(&str, &[&str], Option<&str>)]) -> Site {
        let server = Server::start(&[]);
        let dir = tempfile::tempdir().expect("temp dir");
        let url = server.url();
        let token = server.token();
        let cli = |args: &[&str]| lockstep(&url, Some(&token), args);
        cli(&["fleet", "create", "site"]).ok();
        cli(&["block", "create", "app"]).ok();
        for (version, c) in [("1.0.0", 'a'), ("2.0.0", 'b')] {
            cli(&[
                "block",
                "add-version",
                "app",
                version,
                "--image",
                &digest(c),
                "--command",
                "/bin/app",
            ])
            .ok();
        }
        cli(&["release", "create", "r1", "--fleet", "site", "app@1.0.0"]).ok();
        cli(&["release", "create", "r2", "--fleet", "site", "app@2.0.0"]).ok();
        let mut agents = Vec::new();
        for (id, tags, hook) in devices {
            let credential = dir.path().join(format!("{id}.credential"));
            let mut args = vec![
                "device",
                "register",
                id,
                "--fleet",
                "site",
                "--credential-out",
                credential.to_str().unwrap(),
            ];
            for t in *tags {
                args.extend(["--tag", t]);
            }
            cli(&args).ok();
            if let Some(hook) = hook {
                agents.push(start_agent(&url, dir.path(), id, hook));
            }
        }
        for (id, _, hook) in devices {
            if hook.is_some() {
                eventually_blocking(30, &format!("{id} to report its state"), || {
                    let state = cli(&["device", "state", id, "--output", "json"]).json();
                    (state["reported"] == true).then_some(())
                });
            }
        }
        Site {
            server,
            _dir: dir,
            _agents: agents,
        }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    fn cli(&self, args: &[&str]) -> Run {
        lockstep(&self.server.url(), Some(&self.server.token()), args)
    }

    /// `rollout create <args> --output json`; returns the rollout's id.
    fn create(&self, args: &[&str]) -> String {
        let mut all = vec!["rollout", "create"];
        all.extend_from_slice(args);
        all.extend(["--output", "json"]);
        let status = self.cli(&all).json();
        status["rollout"]["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no rollout id in {status}"))
            .to_string()
    }

    fn get(&self, id: &str) -> Value {
        self.cli(&["rollout", "get", id, "--output", "json"]).json()
    }
}

/// `lockstep agent` for `device` with the hooks runtime (no blocks), its
/// release hook `hook`, connected.
fn start_agent(server: &str, dir: &Path, device: &str, hook: &str) -> Agent {
    let path = |p: &str| dir.join(device).join(p).to_str().unwrap().to_owned();
    let agent = Agent::spawn(&[
        "--server".into(),
        server.into(),
        "--device".into(),
        device.into(),
        "--credential-file".into(),
        dir.join(format!("{device}.credential"))
            .to_str()
            .unwrap()
            .to_owned(),
        "--runtime".into(),
        "hooks".into(),
        "--lock-root".into(),
        path("locks"),
        "--state-dir".into(),
        path("state"),
        "--api-listen".into(),
        format!("127.0.0.1:{}", support::free_port()),
        "--hook-release".into(),
        hook.into(),
    ]);
    agent.wait_log("connected to the server");
    agent
}

/// A planner seed that makes `canary` the one canary among `devices`, as
/// the server plans them (in id order, with the same planner).
fn seed_for_canary(devices: &[&str], canary: &str) -> u64 {
    use lockstep::domain::{DeviceId, PlanDevice, Strategy, plan};
    let candidates: Vec<PlanDevice> = devices
        .iter()
        .map(|d| PlanDevice {
            id: DeviceId::new(*d).expect("a device id"),
            at_target: false,
        })
        .collect();
    let strategy = Strategy {
        canary: 1,
        ..Strategy::default()
    };
    (1..1000)
        .find(|seed| plan(&candidates, &strategy, *seed).batches[0][0].as_str() == canary)
        .expect("some seed picks it")
}

#[test]
fn a_created_rollout_is_shown_by_get_and_list_as_tables_and_json() {
    // No agents: the canary's operation starts and stays in flight.
    let site = Site::start(&[
        ("dev-1", &["north"], None),
        ("dev-2", &["north"], None),
        ("dev-3", &[], None),
    ]);
    let created = site
        .cli(&[
            "rollout",
            "create",
            "--fleet",
            "site",
            "--release",
            "r2",
            "--tag",
            "north",
            "--canary",
            "1",
            "--batches",
            "50%",
            "--max-in-flight",
            "2",
            "--soak",
            "10m",
            "--success-threshold",
            "95",
            "--error-threshold",
            "5%",
            "--on-error",
            "abort",
            "--actor",
            "ops",
            "--seed",
            "7",
        ])
        .ok();
    let id = created.field("rollout").to_owned();
    assert_eq!(created.field("target"), "release r2");
    assert_eq!(created.field("tag"), "north");
    assert_eq!(created.field("state"), "running");
    assert_eq!(created.field("devices"), "2 (0 already at the target)");
    assert_eq!(
        created.field("strategy"),
        "canary 1, batches 50%, max in flight 2, soak 10m, success threshold 95%, error threshold 5%, on error abort"
    );

    // The canary starts; nothing else does while it is in flight.
    let status = eventually_blocking(30, "the canary to start", || {
        let s = site.get(&id);
        (s["batches"][0]["in_flight"] == 1).then_some(s)
    });
    let rollout = &status["rollout"];
    assert_eq!(rollout["id"].as_u64().unwrap().to_string(), id);
    assert_eq!(rollout["fleet"], "site");
    assert_eq!(rollout["tag"], "north");
    assert_eq!(rollout["release"], "r2");
    assert!(rollout.get("os_version").is_none(), "{rollout}");
    assert_eq!(
        rollout["strategy"],
        json!({
            "canary": 1,
            "batches": [{ "percent": 50 }],
            "max_in_flight": 2,
            "soak_seconds": 600,
            "success_threshold_percent": 95,
            "error_threshold": { "percent": 5 },
            "on_error": "abort",
        })
    );
    assert_eq!(rollout["state"], "running");
    assert_eq!(rollout["current_batch"], 0);
    assert_eq!(rollout["batch_count"], 2);
    assert_eq!(rollout["devices"], 2);
    assert_eq!(rollout["skipped"], 0);
    // The token that created it, with `--actor` noted beside it.
    let created_by = rollout["created_by"].as_str().unwrap();
    assert!(
        created_by.starts_with("ops via bootstrap-admin (token "),
        "{created_by}"
    );
    assert_eq!(rollout["seed"], 7);
    assert_eq!(
        status["batches"],
        json!([
            { "index": 0, "size": 1, "queued": 0, "in_flight": 1, "succeeded": 0, "failed": 0, "cancelled": 0 },
            { "index": 1, "size": 1, "queued": 1, "in_flight": 0, "succeeded": 0, "failed": 0, "cancelled": 0 },
        ])
    );
    let counted: u64 = status["device_statuses"]
        .as_array()
        .expect("device_statuses")
        .iter()
        .map(|c| c["devices"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 2, "{status}");
    assert_eq!(status["waiting_lock"], json!([]));
    assert!(status["soak_until_unix_ms"].is_null(), "{status}");

    // As people read it.
    let get = site.cli(&["rollout", "get", &id]).ok();
    assert_eq!(get.field("batch"), "1/2");
    let created = get.field("created");
    assert!(
        created.contains(" by ops via bootstrap-admin (token "),
        "{created}"
    );
    let canary: Vec<&str> = get.row("1").split_whitespace().collect();
    assert_eq!(canary, ["1", "(canary)", "1", "0", "1", "0", "0", "0"]);
    let second: Vec<&str> = get.row("2").split_whitespace().collect();
    assert_eq!(second, ["2", "1", "1", "0", "0", "0", "0"]);
    assert!(
        get.stdout.contains("\nDevices by status:\nSTATUS"),
        "{get:?}"
    );
    assert!(
        get.stdout.contains("Waiting on a block's lock: none"),
        "{get:?}"
    );

    let list = site.cli(&["rollout", "list"]).ok();
    let row: Vec<&str> = list.row(&id).split_whitespace().collect();
    assert_eq!(
        &row[..8],
        [
            &*id, "site", "north", "release", "r2", "running", "1/2", "2"
        ]
    );
    let list = site.cli(&["rollout", "list", "--output", "json"]).json();
    assert_eq!(list["rollouts"][0]["id"].as_u64().unwrap().to_string(), id);
    assert_eq!(list["rollouts"][0]["batch_count"], 2);
    site.cli(&["fleet", "create", "other"]).ok();
    assert_eq!(
        site.cli(&["rollout", "list", "--fleet", "other", "--output", "json"])
            .json(),
        json!({ "rollouts": [] })
    );
    let empty = site.cli(&["rollout", "list", "--fleet", "other"]).ok();
    assert_eq!(
        empty.stdout,
        "ID  FLEET  TAG  TARGET  STATE  BATCH  DEVICES  CREATED  MESSAGE\n"
    );
}

#[test]
fn a_second_active_rollout_of_a_kind_is_refused_unless_it_supersedes() {
    let site = Site::start(&[("dev-1", &[], None), ("dev-2", &[], None)]);
    let first = site.create(&["--fleet", "site", "--release", "r2", "--canary", "1"]);
    let refused = site
        .cli(&["rollout", "create", "--fleet", "site", "--release", "r1"])
        .fails(4);
    assert!(
        refused.stderr.starts_with("error: FAILED_PRECONDITION: ")
            && refused.stderr.contains(&format!("rollout {first}"))
            && refused.stderr.contains("supersede"),
        "{refused:?}"
    );
    // One of each kind: an OS rollout may run beside it.
    let os = site.create(&["--fleet", "site", "--os-version", "13.1"]);
    assert_eq!(site.get(&os)["rollout"]["os_version"], "13.1");

    let second = site.create(&["--fleet", "site", "--release", "r1", "--supersede"]);
    let old = site.get(&first);
    assert_eq!(old["rollout"]["state"], "superseded", "{old}");
    assert!(
        !old["rollout"]["message"].as_str().unwrap().is_empty(),
        "{old}"
    );
    assert_eq!(site.get(&second)["rollout"]["state"], "running");
    // Newest first.
    let list = site.cli(&["rollout", "list", "--output", "json"]).json();
    let ids: Vec<String> = list["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap().to_string())
        .collect();
    assert_eq!(ids, [second, os, first]);
}

#[test]
fn pause_resume_and_abort_change_the_state_or_exit_4_when_it_does_not_allow_them() {
    let site = Site::start(&[("dev-1", &[], None), ("dev-2", &[], None)]);
    let id = site.create(&["--fleet", "site", "--release", "r2", "--canary", "1"]);
    let act = |verb: &str, extra: &[&str]| {
        let mut args = vec!["rollout", verb, &id];
        args.extend_from_slice(extra);
        site.cli(&args)
    };

    let paused = act("pause", &["--actor", "me", "--reason", "look first"]).ok();
    assert_eq!(paused.field("state"), "paused");
    assert_eq!(paused.field("message"), "paused by an operator: look first");
    let again = act("pause", &[]).fails(4);
    assert_eq!(
        again.stderr.trim(),
        format!("error: FAILED_PRECONDITION: rollout {id} is paused; pause needs it running")
    );

    let resumed = act("resume", &["--output", "json"]).json();
    assert_eq!(resumed["state"], "running");
    assert_eq!(resumed["message"], "");
    act("resume", &[]).fails(4);

    // The canary's operation is in flight (no agent); abort cancels it.
    eventually_blocking(30, "the canary to start", || {
        (site.get(&id)["batches"][0]["in_flight"] == 1).then_some(())
    });
    let aborted = act("abort", &["--reason", "enough", "--output", "json"]).json();
    assert_eq!(aborted["state"], "aborted");
    assert_eq!(aborted["message"], "aborted by an operator: enough");
    for verb in ["abort", "pause", "resume"] {
        act(verb, &[]).fails(4);
    }
    let status = site.get(&id);
    assert_eq!(status["batches"][0]["cancelled"], 1, "{status}");
    assert_eq!(status["batches"][1]["queued"], 1, "{status}");
}

#[test]
fn watch_follows_a_canary_rollout_to_completed_in_plain_lines_and_json_lines() {
    let site = Site::start(&[
        ("dev-1", &[], Some("sleep 1")),
        ("dev-2", &[], Some("sleep 1")),
        ("dev-3", &[], Some("sleep 1")),
    ]);
    // The soak after the canary keeps the two batches apart in time.
    let id = site.create(&[
        "--fleet",
        "site",
        "--release",
        "r2",
        "--canary",
        "1",
        "--soak",
        "3s",
    ]);
    let plain = Watcher::start(&site, &id, &[]);
    let lines = Watcher::start(&site, &id, &["--output", "json"]);
    let plain = plain.finish().ok();
    let lines = lines.finish().ok();

    // Plain lines, as a CI log shows them (stdout is not a terminal).
    let out: Vec<&str> = plain.stdout.lines().collect();
    assert_eq!(
        out[0],
        format!(
            "Watching rollout {id}: release r2 on fleet site, 3 devices in 2 batches (0 already at the target)."
        )
    );
    let position = |needle: &str| {
        out.iter()
            .position(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no line starting {needle:?} in:\n{}", plain.stdout))
    };
    let soaking = position(&format!(
        "rollout {id}: 1/3 finished · running · batch 1/2 · soaking until "
    ));
    let started = position(&format!("rollout {id}: batch 2/2 started"));
    let done = position(&format!(
        "rollout {id}: 3/3 finished · completed · batch 2/2"
    ));
    assert!(soaking < started && started < done, "{}", plain.stdout);
    assert_eq!(
        out.last().copied(),
        Some(&*format!(
            "rollout {id} completed: 3 succeeded, 0 failed, 0 cancelled (0 already at the target)"
        ))
    );
    assert!(plain.stderr.is_empty(), "{plain:?}");

    // JSON lines: one status per line, the canary done before the rest.
    let docs: Vec<Value> = lines
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(docs.len() >= 2, "{}", lines.stdout);
    assert!(
        docs.iter().any(|d| d["batches"][0]["succeeded"] == 1
            && d["batches"][1]["succeeded"] == 0
            && d["rollout"]["state"] == "running"),
        "{}",
        lines.stdout
    );
    let last = docs.last().unwrap();
    assert_eq!(last["rollout"]["state"], "completed");
    assert_eq!(
        last["batches"],
        json!([
            { "index": 0, "size": 1, "queued": 0, "in_flight": 0, "succeeded": 1, "failed": 0, "cancelled": 0 },
            { "index": 1, "size": 2, "queued": 0, "in_flight": 0, "succeeded": 2, "failed": 0, "cancelled": 0 },
        ])
    );

    // The devices run the release, as their agents report it.
    for d in ["dev-1", "dev-2", "dev-3"] {
        let state = site.cli(&["device", "state", d, "--output", "json"]).json();
        assert_eq!(state["current_release"], "r2", "{d}: {state}");
    }
    // Watching a rollout that has ended prints it once and exits at once.
    let again = Watcher::start(&site, &id, &[]).finish().ok();
    assert_eq!(again.stdout.lines().count(), 3, "{again:?}");
}

#[test]
fn watch_keeps_watching_a_rollout_paused_by_its_error_threshold_and_exits_1_when_aborted() {
    // dev-1's release hook fails: as the canary it fails, and one failure
    // (the default threshold) pauses the rollout. dev-2 has no agent:
    // whatever it is asked stays in flight.
    let site = Site::start(&[("dev-1", &[], Some("false")), ("dev-2", &[], None)]);
    let seed = seed_for_canary(&["dev-1", "dev-2"], "dev-1").to_string();
    let id = site.create(&[
        "--fleet",
        "site",
        "--release",
        "r2",
        "--canary",
        "1",
        "--seed",
        &seed,
    ]);
    let mut watch = Watcher::start(&site, &id, &[]);
    let paused = watch.wait_line(&format!("rollout {id} paused: error threshold crossed"));
    assert!(
        paused.ends_with(&format!(
            "It is still active, so the watch goes on: `lockstep rollout resume {id}` carries on, `lockstep rollout abort {id}` stops it."
        )),
        "{paused}"
    );
    watch.wait_line(&format!("rollout {id}: 1/2 finished · paused · batch 1/2"));
    let status = site.get(&id);
    assert_eq!(status["rollout"]["state"], "paused");
    assert_eq!(status["batches"][0]["failed"], 1, "{status}");
    let get = site.cli(&["rollout", "get", &id]).ok();
    assert!(
        get.field("message")
            .starts_with("error threshold crossed: 1 failed"),
        "{get:?}"
    );

    std::thread::sleep(Duration::from_millis(500));
    assert!(watch.running(), "a paused rollout is still watched");
    site.cli(&["rollout", "resume", &id]).ok();
    watch.wait_line(&format!("rollout {id} resumed"));
    assert!(watch.running(), "a resumed rollout is still watched");
    site.cli(&["rollout", "abort", &id, "--reason", "bad canary"])
        .ok();
    let run = watch.finish();
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.stderr.trim(),
        format!("error: rollout {id} aborted: aborted by an operator: bad canary")
    );
    let last = run.stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("rollout {id}: ")) && last.contains(" · aborted · "),
        "{run:?}"
    );
}

#[test]
fn unknown_rollouts_fleets_and_releases_exit_3() {
    let site = Site::start(&[("dev-1", &[], None)]);
    for args in [
        &["rollout", "get", "999"][..],
        &["rollout", "get", "999", "--output", "json"],
        &["rollout", "pause", "999"],
        &["rollout", "resume", "999"],
        &["rollout", "abort", "999"],
        &["rollout", "watch", "999"],
        &["rollout", "watch", "999", "--output", "json"],
    ] {
        let run = site.cli(args).fails(3);
        assert_eq!(
            run.stderr.trim(),
            "error: NOT_FOUND: rollout 999 not found",
            "{args:?}"
        );
    }
    let fleet = site
        .cli(&["rollout", "create", "--fleet", "ghost", "--release", "r2"])
        .fails(3);
    assert_eq!(
        fleet.stderr.trim(),
        "error: NOT_FOUND: fleet ghost not found"
    );
    let release = site
        .cli(&["rollout", "create", "--fleet", "site", "--release", "ghost"])
        .fails(3);
    assert_eq!(
        release.stderr.trim(),
        "error: NOT_FOUND: release ghost not found"
    );
    // Another fleet's release is the server's invalid argument: exit 2.
    site.cli(&["fleet", "create", "other"]).ok();
    site.cli(&["release", "create", "r9", "--fleet", "other", "app@1.0.0"])
        .ok();
    let foreign = site
        .cli(&["rollout", "create", "--fleet", "site", "--release", "r9"])
        .fails(2);
    assert_eq!(
        foreign.stderr.trim(),
        "error: INVALID_ARGUMENT: release: release r9 belongs to fleet other, not site"
    );
}

#[test]
fn usage_errors_exit_2_before_any_call() {
    // No server listens here: only a call would turn these into exit 5.
    let nowhere = format!("http://127.0.0.1:{}", support::free_port());
    let create = |extra: &[&'static str]| {
        let mut a = vec!["rollout", "create", "--fleet", "site", "--release", "r2"];
        a.extend_from_slice(extra);
        a
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (create(&["--batches", "0"]), "--batches"),
        (create(&["--batches", "150%"]), "--batches"),
        (create(&["--batches", "10%,0%"]), "--batches"),
        (create(&["--batches", "ten"]), "--batches"),
        (create(&["--os-version", "13.1"]), "--os-version"),
        (
            vec!["rollout", "create", "--fleet", "site"],
            "--release <RELEASE>|--os-version <VERSION>",
        ),
        (vec!["rollout", "create", "--release", "r2"], "--fleet"),
        (create(&["--canary", "many"]), "--canary"),
        (create(&["--max-in-flight", "many"]), "--max-in-flight"),
        (create(&["--soak", "10"]), "--soak"),
        (create(&["--soak", "31d"]), "--soak"),
        (create(&["--success-threshold", "0"]), "--success-threshold"),
        (
            create(&["--success-threshold", "101"]),
            "--success-threshold",
        ),
        (create(&["--error-threshold", "0"]), "--error-threshold"),
        (create(&["--error-threshold", "101%"]), "--error-threshold"),
        (create(&["--on-error", "explode"]), "--on-error"),
        (create(&["--seed", "x"]), "--seed"),
        (
            vec!["rollout", "create", "--fleet", "site", "--os-version", ""],
            "--os-version",
        ),
        (vec!["rollout", "get", "0"], "<ID>"),
        (vec!["rollout", "get", "seven"], "<ID>"),
        (vec!["rollout", "pause"], "<ID>"),
        (vec!["rollout", "abort", "0"], "<ID>"),
        (vec!["rollout", "watch"], "<ID>"),
        (vec!["rollout", "list", "--output", "yaml"], "--output"),
    ];
    for (args, names) in cases {
        let run = lockstep(&nowhere, None, &args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.starts_with("error:"), "{args:?}: {run:?}");
        assert!(
            run.stderr.contains(names),
            "{args:?}: the error names {names}: {run:?}"
        );
        assert!(run.stdout.is_empty(), "{args:?}: {run:?}");
    }
    // Well-formed, it gets as far as the call.
    lockstep(&nowhere, None, &create(&["--batches", "10%,25%,50"])).fails(5);
}
