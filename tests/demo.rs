//! `lockstep demo` end to end: the real binary starts its server, agents and
//! sample blocks, uses the admin token its server wrote (and prints a
//! dashboard link that logs in with it), rolls r2 out, narrates, and exits
//! when the rollout is done (`--exit-when-done`), leaving no process behind.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_demo_rolls_r2_out_and_narrates_why_devices_wait() {
    let dir = tempfile::tempdir().unwrap();
    let (child_id, status, out) = run_demo(
        &["--devices", "3", "--exit-when-done", "--cycle", "500ms"],
        dir.path(),
        120,
    );
    assert!(status.success(), "demo exited with {status}");
    for needle in [
        "dashboard: http://127.0.0.1:",
        "/login#token=lst_",
        "admin token in ",
        "ui         2.0.0: untouched, keeps running",
        "controller (update_restart) holds its lock; asked to release",
        "batch 1 starts",
        "rollout 1 is completed",
        "inv-03     runs r2: controller@4.1.0 telemetry@1.26.0 ui@2.0.0",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    // The login link carries the admin token the server wrote, and the
    // rollout's page and CLI watch are named with the same token.
    let token_file = dir.path().join("server-data").join("admin.token");
    let token = std::fs::read_to_string(&token_file).unwrap();
    let link = out
        .split_whitespace()
        .find(|w| w.contains("/login#token="))
        .expect("a login link");
    assert_eq!(
        link.split_once("#token=").unwrap().1,
        token.trim(),
        "the link logs in with the server's token"
    );
    let dashboard = link.split_once("/login#").unwrap().0;
    let watch = format!(
        "watch it: {dashboard}/rollouts/1  or  lockstep rollout watch 1 --server http://127.0.0.1:"
    );
    assert!(out.contains(&watch), "missing {watch:?} in:\n{out}");
    assert!(
        out.contains(&format!("--token-file {}", token_file.display())),
        "{out}"
    );
    // The sample blocks end with the demo.
    let marker = format!("--demo-pid {child_id}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .unwrap();
        if left.stdout.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "demo blocks still running: {}",
            String::from_utf8_lossy(&left.stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_demo_runs_three_replicas_on_a_throwaway_postgres_and_narrates_every_device() {
    let dir = tempfile::tempdir().unwrap();
    let (_, status, out) = run_demo(
        &[
            "--replicas",
            "3",
            "--devices",
            "3",
            "--exit-when-done",
            "--cycle",
            "500ms",
        ],
        dir.path(),
        180,
    );
    assert!(status.success(), "demo exited with {status}");
    for needle in [
        "replica r1 listening on",
        "replica r3 listening on",
        "(3 replicas on one Postgres)",
        "rollout 1 is completed",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    // The narration follows r1's event stream; each device streams to its
    // own replica (inv-02 to r2, inv-03 to r3), and every one is narrated.
    for d in ["inv-01", "inv-02", "inv-03"] {
        assert!(
            out.contains(&format!("{d}     applied r2")),
            "{d} applied, as r1 tells it:\n{out}"
        );
    }
    for (log, device) in [("server-2.log", "inv-02"), ("server-3.log", "inv-03")] {
        let text = std::fs::read_to_string(dir.path().join(log)).unwrap();
        assert!(
            text.contains("agent connected") && text.contains(device),
            "{device} streams to the replica of {log}"
        );
    }
}

/// Runs `lockstep demo <args>` (on loopback ports of its choosing, in
/// `dir`) until it exits, at most `secs`; its pid, exit status and stdout
/// (both outputs are echoed for a failing test's log).
fn run_demo(
    args: &[&str],
    dir: &std::path::Path,
    secs: u64,
) -> (u32, std::process::ExitStatus, String) {
    let mut child = Command::new(support::BIN)
        .arg("demo")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .args(["--dashboard-listen", "127.0.0.1:0"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo did not finish within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
    let err = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    eprintln!("{out}\n{err}");
    (child.id(), status, out)
}
