//! The agent's runtimes and locks against real processes: `sh` blocks started,
//! stopped, replaced and adopted by the process runtime; hooks run by both
//! runtimes; update locks held by a real `flock` child and observed through
//! `/proc/locks`. Every wait is bounded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use lockstep::agent::locks::*;
use lockstep::agent::runtime::*;
use lockstep::domain::{BlockName, Generation, Timestamp};

/// The longest any single wait in these tests may take.
const BOUND: Duration = Duration::from_secs(10);

/// Kills the process groups of every block a test started, even if it panics,
/// so no `sleep` outlives its test.
#[derive(Default)]
struct Reaper(Vec<u32>);

impl Reaper {
    fn track(&mut self, pid: u32) -> u32 {
        self.0.push(pid);
        pid
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
            }
        }
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    reaper: Reaper,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            reaper: Reaper::default(),
        }
    }
    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn locks(&self) -> LockDir {
        LockDir::new(self.dir.path().join("locks"))
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    async fn runtime(&self, hooks: Hooks) -> ProcessRuntime {
        let extra = BTreeMap::from([("LOCKSTEP_API".to_owned(), "http://agent.test".to_owned())]);
        ProcessRuntime::new(self.state_dir(), self.locks(), hooks, extra)
            .await
            .expect("process runtime")
    }
    /// The pid of a running block, remembered for cleanup.
    fn pid(&mut self, rt: &ProcessRuntime, block: &str) -> u32 {
        let pid = rt
            .pid(block)
            .unwrap_or_else(|| panic!("{block} has no pid"));
        self.reaper.track(pid)
    }
}

fn sh(name: &str, version: &str, script: &str) -> BlockSpec {
    BlockSpec {
        name: name.into(),
        version: version.into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        working_dir: None,
        env: BTreeMap::new(),
        env_fingerprint: String::new(),
        hand_over_timeout_secs: None,
    }
}

fn idle(name: &str, version: &str) -> BlockSpec {
    sh(name, version, "exec sleep 30")
}

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("?");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read_when_present(path: &Path) -> String {
    wait_until(&format!("{}", path.display()), || path.exists()).await;
    std::fs::read_to_string(path).expect("read")
}

/// `sh` that writes `text` to `path` atomically (so readers never see half).
fn write_atomically(path: &Path, text: &str) -> String {
    let p = path.display();
    format!("{text} > '{p}.tmp' && mv '{p}.tmp' '{p}'")
}

#[tokio::test]
async fn start_stop_restart_and_release_keep_or_replace_pids() {
    let mut fx = Fixture::new();
    let mut rt = fx.runtime(Hooks::default()).await;

    rt.apply(Action::Start(idle("a", "1.0.0"))).await.unwrap();
    let a1 = fx.pid(&rt, "a");
    assert!(alive(a1));

    // Starting the same spec again is a no-op.
    rt.apply(Action::Start(idle("a", "1.0.0"))).await.unwrap();
    assert_eq!(rt.pid("a"), Some(a1));

    rt.apply(Action::Restart("a".into())).await.unwrap();
    let a2 = fx.pid(&rt, "a");
    assert_ne!(a1, a2);
    assert!(!alive(a1) && alive(a2));

    rt.apply(Action::Start(idle("b", "1.0.0"))).await.unwrap();
    let b1 = fx.pid(&rt, "b");

    rt.apply(Action::Stop("a".into())).await.unwrap();
    assert!(!alive(a2));
    assert_eq!(rt.pid("a"), None);
    assert_eq!(rt.running().keys().collect::<Vec<_>>(), ["b"]);
    // Stopping what does not run is fine; restarting it is not.
    rt.apply(Action::Stop("a".into())).await.unwrap();
    assert!(matches!(
        rt.apply(Action::Restart("a".into())).await,
        Err(RuntimeError::UnknownBlock { .. })
    ));

    // A release: b unchanged keeps its pid, c is new.
    rt.apply(Action::Release {
        release: "r2".into(),
        blocks: vec![idle("b", "1.0.0"), idle("c", "1.0.0")],
    })
    .await
    .unwrap();
    assert_eq!(rt.pid("b"), Some(b1));
    let c1 = fx.pid(&rt, "c");
    assert_eq!(Runtime::release(&rt).as_deref(), Some("r2"));

    // The next one changes b and drops c.
    rt.apply(Action::Release {
        release: "r3".into(),
        blocks: vec![idle("b", "2.0.0")],
    })
    .await
    .unwrap();
    let b2 = fx.pid(&rt, "b");
    assert_ne!(b1, b2);
    assert!(!alive(b1) && !alive(c1) && alive(b2));
    assert_eq!(rt.running()["b"].version, "2.0.0");
    assert_eq!(rt.running().len(), 1);

    rt.apply(Action::Shutdown).await.unwrap();
    assert!(!alive(b2));
    assert!(rt.running().is_empty());
}

#[tokio::test]
async fn a_block_gets_exactly_its_effective_env() {
    let mut fx = Fixture::new();
    let mut rt = fx.runtime(Hooks::default()).await;
    let out = fx.path("env.txt");
    let work = fx.path("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut spec = sh(
        "telemetry",
        "1.2.3",
        &format!(
            "echo hello from the block; {{ env; echo CWD=$(pwd); }} > '{o}.tmp' && mv '{o}.tmp' '{o}'; exec sleep 30",
            o = out.display()
        ),
    );
    spec.env = BTreeMap::from([
        ("FOO".to_owned(), "bar baz".to_owned()),
        ("LOCKSTEP_BLOCK".to_owned(), "spoofed".to_owned()),
    ]);
    spec.working_dir = Some(work.display().to_string());
    rt.apply(Action::Start(spec)).await.unwrap();
    fx.pid(&rt, "telemetry");

    let env = read_when_present(&out).await;
    let vars: BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let lock_dir = fx.locks().root().join("telemetry");
    assert_eq!(vars["FOO"], "bar baz");
    assert_eq!(
        vars["LOCKSTEP_BLOCK"], "telemetry",
        "the agent's value wins"
    );
    assert_eq!(vars["LOCKSTEP_BLOCK_VERSION"], "1.2.3");
    assert_eq!(vars["LOCKSTEP_API"], "http://agent.test");
    assert_eq!(Path::new(vars["LOCKSTEP_LOCK_DIR"]), lock_dir);
    assert_eq!(
        Path::new(vars["LOCKSTEP_LOCK_FILE"]),
        lock_dir.join("updates.lock")
    );
    assert!(lock_dir.join("updates.lock").is_file());
    assert!(vars.contains_key("PATH"));
    assert_eq!(Path::new(vars["CWD"]), work);
    assert!(!vars.contains_key("LOCKSTEP_HANDOVER"));
    assert!(
        !vars.keys().any(|k| k.starts_with("CARGO")),
        "the agent's own env leaked: {env}"
    );

    let log = read_when_present(&rt.log_path("telemetry")).await;
    wait_until("the block's stdout in its log", || {
        std::fs::read_to_string(rt.log_path("telemetry"))
            .is_ok_and(|l| l.contains("hello from the block"))
    })
    .await;
    assert!(log.contains("started telemetry 1.2.3"), "{log}");
    rt.apply(Action::Shutdown).await.unwrap();
}

#[tokio::test]
async fn hand_over_starts_the_new_process_before_stopping_the_old() {
    let mut fx = Fixture::new();
    let mut rt = fx.runtime(Hooks::default()).await;
    rt.apply(Action::Start(idle("ctl", "1.0.0"))).await.unwrap();
    let old = fx.pid(&rt, "ctl");

    // A stale completion file from an earlier hand-over must not count.
    let done = fx.locks().root().join("ctl/handover.done");
    std::fs::write(&done, "").unwrap();

    let result = fx.path("result.txt");
    let mut new = sh(
        "ctl",
        "2.0.0",
        &format!(
            "sleep 0.3; if kill -0 \"$OLD_PID\" 2>/dev/null; then s=alive; else s=dead; fi; {}; touch \"$LOCKSTEP_HANDOVER_FILE\"; exec sleep 30",
            write_atomically(&result, "echo \"$s $LOCKSTEP_HANDOVER\"")
        ),
    );
    new.env = BTreeMap::from([("OLD_PID".to_owned(), old.to_string())]);
    new.hand_over_timeout_secs = Some(10);

    let started = Instant::now();
    rt.apply(Action::Replace(new)).await.unwrap();
    let took = started.elapsed();
    let new_pid = fx.pid(&rt, "ctl");

    assert_eq!(std::fs::read_to_string(&result).unwrap().trim(), "alive 1");
    assert!(
        took < Duration::from_secs(5),
        "waited for the timeout: {took:?}"
    );
    assert_ne!(old, new_pid);
    assert!(
        !alive(old),
        "the old process is stopped after the hand-over"
    );
    assert!(alive(new_pid));
    assert!(done.exists());
    assert_eq!(rt.running()["ctl"].version, "2.0.0");
    rt.apply(Action::Shutdown).await.unwrap();
}

#[tokio::test]
async fn hand_over_stops_the_old_process_at_the_timeout() {
    let mut fx = Fixture::new();
    let mut rt = fx.runtime(Hooks::default()).await;
    rt.apply(Action::Start(idle("ctl", "1.0.0"))).await.unwrap();
    let old = fx.pid(&rt, "ctl");

    let mut new = idle("ctl", "2.0.0"); // never signals completion
    new.hand_over_timeout_secs = Some(1);
    let started = Instant::now();
    rt.apply(Action::Replace(new)).await.unwrap();
    let took = started.elapsed();
    let new_pid = fx.pid(&rt, "ctl");

    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(!alive(old) && alive(new_pid));
    rt.apply(Action::Shutdown).await.unwrap();
}

#[tokio::test]
async fn hand_over_keeps_the_old_process_if_the_new_one_dies() {
    let mut fx = Fixture::new();
    let mut rt = fx.runtime(Hooks::default()).await;
    rt.apply(Action::Start(idle("ctl", "1.0.0"))).await.unwrap();
    let old = fx.pid(&rt, "ctl");

    let mut new = sh("ctl", "2.0.0", "exit 4");
    new.hand_over_timeout_secs = Some(10);
    let err = rt.apply(Action::Replace(new)).await.unwrap_err();
    assert!(
        matches!(&err, RuntimeError::HandoverExited { status, .. } if status.code() == Some(4)),
        "{err:?}"
    );
    assert_eq!(rt.pid("ctl"), Some(old));
    assert!(alive(old));
    assert_eq!(rt.running()["ctl"].version, "1.0.0");
    rt.apply(Action::Shutdown).await.unwrap();
}

#[tokio::test]
async fn replace_without_hand_over_stops_then_starts() {
    let mut fx = Fixture::new();
    let mut rt = fx.runtime(Hooks::default()).await;
    rt.apply(Action::Start(idle("ui", "1.0.0"))).await.unwrap();
    let old = fx.pid(&rt, "ui");
    let seen = fx.path("seen.txt");
    let new = sh(
        "ui",
        "1.1.0",
        &format!(
            "if kill -0 {old} 2>/dev/null; then s=alive; else s=dead; fi; {}; exec sleep 30",
            write_atomically(&seen, "echo $s")
        ),
    );
    rt.apply(Action::Replace(new)).await.unwrap();
    fx.pid(&rt, "ui");
    assert_eq!(read_when_present(&seen).await.trim(), "dead");
    rt.apply(Action::Shutdown).await.unwrap();
}

#[tokio::test]
async fn a_block_ignoring_sigterm_is_killed_after_the_stop_timeout() {
    let mut fx = Fixture::new();
    let mut rt = fx
        .runtime(Hooks::default())
        .await
        .with_stop_timeout(Duration::from_millis(300));
    let ready = fx.path("ready");
    rt.apply(Action::Start(sh(
        "stubborn",
        "1.0.0",
        &format!("trap '' TERM; touch '{}'; exec sleep 30", ready.display()),
    )))
    .await
    .unwrap();
    let pid = fx.pid(&rt, "stubborn");
    read_when_present(&ready).await;
    let started = Instant::now();
    rt.apply(Action::Stop("stubborn".into())).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(!alive(pid));
}

#[tokio::test]
async fn reboot_and_os_update_run_their_hooks_with_every_block_stopped() {
    let mut fx = Fixture::new();
    let marker = fx.path("hook.log");
    let pids = fx.path("pids");
    let (m, p) = (marker.display(), pids.display());
    // The reboot hook records whether any block process still ran (a zombie
    // does not count: it has exited).
    let hooks = Hooks {
        reboot: Some(format!(
            "alive() {{ [ -e /proc/$1 ] && ! grep -q '^State:[[:space:]]*Z' /proc/$1/status; }}; \
             s=stopped; for pid in $(cat '{p}'); do if alive $pid; then s=running; fi; done; \
             echo \"$LOCKSTEP_ACTION $s\" >> '{m}'"
        )),
        os_update: Some(format!(
            "echo \"$LOCKSTEP_ACTION $LOCKSTEP_OS_VERSION $LOCKSTEP_RELEASE\" >> '{m}'; if [ \"$LOCKSTEP_OS_VERSION\" = bad ]; then echo 'disk full' >&2; exit 3; fi"
        )),
        ..Hooks::default()
    };
    let manifest = Manifest {
        release: "r1".into(),
        os_version: Some("os-1".into()),
        blocks: vec![idle("a", "1.0.0"), idle("b", "1.0.0")],
    };
    let mut rt = fx.runtime(hooks).await;
    rt.ensure_started(&manifest).await.unwrap();
    let (a, b) = (fx.pid(&rt, "a"), fx.pid(&rt, "b"));
    assert_eq!(rt.os_version().as_deref(), Some("os-1"));
    std::fs::write(&pids, format!("{a} {b}")).unwrap();

    rt.apply(Action::Reboot).await.unwrap();
    let (a2, b2) = (fx.pid(&rt, "a"), fx.pid(&rt, "b"));
    assert!(a2 != a && b2 != b && alive(a2) && alive(b2));
    assert!(!alive(a) && !alive(b));
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "reboot stopped\n"
    );

    rt.apply(Action::OsUpdate {
        version: "os-2".into(),
    })
    .await
    .unwrap();
    assert_eq!(rt.os_version().as_deref(), Some("os-2"));
    let a3 = fx.pid(&rt, "a");
    assert!(a3 != a2 && alive(a3) && !alive(a2));

    // A failing hook is an error with its status and stderr; the OS version
    // stays, and the blocks come back anyway.
    let err = rt
        .apply(Action::OsUpdate {
            version: "bad".into(),
        })
        .await
        .unwrap_err();
    match &err {
        RuntimeError::HookFailed {
            action,
            status,
            stderr_tail,
        } => {
            assert_eq!(*action, "os_update");
            assert_eq!(status.code(), Some(3));
            assert_eq!(stderr_tail, "disk full");
        }
        other => panic!("expected HookFailed, got {other:?}"),
    }
    assert!(err.to_string().contains("disk full"), "{err}");
    assert_eq!(rt.os_version().as_deref(), Some("os-2"));
    let a4 = fx.pid(&rt, "a");
    assert!(alive(a4));
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "reboot stopped\nos_update os-2 r1\nos_update bad r1\n"
    );
    let hooks_log = std::fs::read_to_string(fx.state_dir().join("logs/hooks.log")).unwrap();
    assert!(hooks_log.contains("disk full"), "{hooks_log}");
    rt.apply(Action::Shutdown).await.unwrap();
}

#[tokio::test]
async fn a_new_runtime_adopts_live_blocks_and_restarts_dead_ones() {
    let mut fx = Fixture::new();
    let manifest = Manifest {
        release: "r1".into(),
        os_version: None,
        blocks: vec![idle("a", "1.0.0"), idle("b", "1.0.0")],
    };
    let mut rt = fx.runtime(Hooks::default()).await;
    rt.ensure_started(&manifest).await.unwrap();
    let (a, b) = (fx.pid(&rt, "a"), fx.pid(&rt, "b"));
    drop(rt); // the agent goes away; its blocks keep running

    // b dies while the agent is down.
    let b_pid = rustix::process::Pid::from_raw(b as i32).unwrap();
    rustix::process::kill_process(b_pid, rustix::process::Signal::KILL).unwrap();
    wait_until("b to die", || !alive(b)).await;

    let mut rt = fx.runtime(Hooks::default()).await;
    assert_eq!(rt.pid("a"), Some(a), "a is adopted, not restarted");
    let b2 = fx.pid(&rt, "b");
    assert_ne!(b2, b);
    assert!(alive(b2));
    assert_eq!(Runtime::release(&rt).as_deref(), Some("r1"));

    // The manifest is a first-boot thing: it starts nothing now.
    rt.ensure_started(&manifest).await.unwrap();
    assert_eq!((rt.pid("a"), rt.pid("b")), (Some(a), Some(b2)));

    // An adopted block is stopped by signal, without being our child.
    rt.apply(Action::Stop("a".into())).await.unwrap();
    assert!(!alive(a));

    // After a shutdown, the next agent start brings the blocks back (a boot).
    rt.apply(Action::Shutdown).await.unwrap();
    assert!(!alive(b2));
    drop(rt);
    let rt = fx.runtime(Hooks::default()).await;
    let b3 = fx.pid(&rt, "b");
    assert!(b3 != b2 && alive(b3));
    assert_eq!(rt.running().keys().collect::<Vec<_>>(), ["b"]);
    let mut rt = rt;
    rt.apply(Action::Shutdown).await.unwrap();
}

#[tokio::test]
async fn hooks_runtime_runs_the_operator_hooks_and_records_the_result() {
    let fx = Fixture::new();
    let out = fx.path("hooks.out");
    let o = out.display();
    let hooks = Hooks {
        release: Some(format!(
            "cp \"$LOCKSTEP_TARGET_FILE\" '{o}.target'; echo \"$LOCKSTEP_ACTION $LOCKSTEP_RELEASE\" >> '{o}'"
        )),
        restart_block: Some(format!(
            "echo \"$LOCKSTEP_ACTION $LOCKSTEP_BLOCK ${{LOCKSTEP_BLOCK_VERSION:-}}\" >> '{o}'"
        )),
        os_update: Some("echo nope >&2; exit 1".into()),
        ..Hooks::default()
    };
    let mut rt = HooksRuntime::new(fx.state_dir(), hooks.clone()).unwrap();
    let manifest = Manifest {
        release: "r1".into(),
        os_version: Some("os-1".into()),
        blocks: vec![idle("a", "1.0.0")],
    };
    rt.ensure_started(&manifest).unwrap();
    assert_eq!(rt.running().keys().collect::<Vec<_>>(), ["a"]);

    rt.apply(Action::Release {
        release: "r2".into(),
        blocks: vec![idle("a", "1.1.0"), idle("b", "1.0.0")],
    })
    .await
    .unwrap();
    let target: Manifest =
        serde_json::from_str(&std::fs::read_to_string(format!("{o}.target")).unwrap()).unwrap();
    assert_eq!(target.release, "r2");
    assert_eq!(target.blocks, vec![idle("a", "1.1.0"), idle("b", "1.0.0")]);
    assert_eq!(Runtime::release(&rt).as_deref(), Some("r2"));
    assert_eq!(rt.running()["a"].version, "1.1.0");

    rt.apply(Action::Restart("a".into())).await.unwrap();
    rt.apply(Action::Stop("b".into())).await.unwrap();
    rt.apply(Action::Start(idle("c", "3.0.0"))).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "release r2\nrestart a \nstop b \nstart c 3.0.0\n"
    );
    assert_eq!(rt.running().keys().collect::<Vec<_>>(), ["a", "c"]);

    // Missing hook; failing hook: both errors, neither changes the state.
    assert!(matches!(
        rt.apply(Action::Reboot).await,
        Err(RuntimeError::NoHook { action: "reboot" })
    ));
    let err = rt
        .apply(Action::OsUpdate {
            version: "os-2".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RuntimeError::HookFailed { stderr_tail, .. } if stderr_tail == "nope"),
        "{err:?}"
    );
    assert_eq!(rt.os_version().as_deref(), Some("os-1"));

    // The recorded state survives an agent restart.
    let rt2 = HooksRuntime::new(fx.state_dir(), hooks).unwrap();
    assert_eq!(rt2.running(), rt.running());
    assert_eq!(Runtime::release(&rt2).as_deref(), Some("r2"));
}

#[tokio::test]
async fn any_runtime_dispatches() {
    let fx = Fixture::new();
    let mut rt = AnyRuntime::Hooks(HooksRuntime::new(fx.state_dir(), Hooks::default()).unwrap());
    assert!(matches!(
        rt.apply(Action::Shutdown).await,
        Err(RuntimeError::NoHook { action: "shutdown" })
    ));
    assert_eq!(rt.pid("a"), None);
    assert!(rt.running().is_empty());
}

// ---------------------------------------------------------------------------
// Locks
// ---------------------------------------------------------------------------

/// `flock <path> -c 'sleep 30'` in its own process group; killed with the group.
struct FlockHolder(Child);

impl FlockHolder {
    fn spawn(path: &Path) -> Self {
        use std::os::unix::process::CommandExt;
        let child = Command::new("flock")
            .arg(path)
            .args(["-c", "sleep 30"])
            .process_group(0)
            .spawn()
            .expect("spawn flock");
        Self(child)
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
    /// Kills the holder (and the `sleep` sharing its lock) and reaps it.
    fn kill(mut self) {
        self.kill_group();
        let _ = self.0.wait();
    }
    fn kill_group(&mut self) {
        if let Some(p) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for FlockHolder {
    fn drop(&mut self) {
        self.kill_group();
        let _ = self.0.try_wait();
    }
}

fn block(name: &str) -> BlockName {
    BlockName::new(name).unwrap()
}

async fn wait_held(locks: &LockDir, b: &BlockName, want: bool) {
    let deadline = Instant::now() + BOUND;
    loop {
        let seen = locks.observe(std::slice::from_ref(b)).unwrap()[b];
        if seen == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {b} held={want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_lock_held_by_another_process_is_observed_and_blocks_acquisition() {
    let fx = Fixture::new();
    let locks = fx.locks();
    let (a, b) = (block("a"), block("b"));
    let path = locks.ensure_block(&a).unwrap();
    locks.ensure_block(&b).unwrap();

    let before = locks
        .observe(&[a.clone(), b.clone(), block("never")])
        .unwrap();
    assert_eq!(before.values().filter(|h| **h).count(), 0);

    let mut tracker = LockTracker::load(fx.state_dir().join("locks.json")).unwrap();
    tracker.update(&before, Timestamp(1)).unwrap();

    let holder = FlockHolder::spawn(&path);
    wait_held(&locks, &a, true).await;
    let seen = locks.observe(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(
        seen,
        BTreeMap::from([(a.clone(), true), (b.clone(), false)])
    );
    let changed = tracker.update(&seen, Timestamp(2)).unwrap();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].0, a);
    assert_eq!(changed[0].1.generation, Generation(2));

    match locks.acquire_all(&[b.clone(), a.clone()]) {
        Err(LockError::Held { blocks }) => assert_eq!(blocks, vec![a.clone()]),
        other => panic!("expected Held, got {other:?}"),
    }
    // What was taken on the way (b) was released again.
    drop(locks.acquire_all(std::slice::from_ref(&b)).unwrap());

    holder.kill(); // a crashed holder leaves no stale lock
    wait_held(&locks, &a, false).await;
    let held = locks.acquire_all(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(held.blocks(), vec![a.clone(), b.clone()]);

    // The agent's own locks are not reported as held…
    let seen = locks.observe(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(
        seen,
        BTreeMap::from([(a.clone(), false), (b.clone(), false)])
    );
    // …yet they are real: another process cannot take them.
    let status = Command::new("flock")
        .args(["-n", "-E", "7"])
        .arg(&path)
        .arg("true")
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(7));
    let changed = tracker.update(&seen, Timestamp(3)).unwrap();
    assert_eq!(changed[0].1.generation, Generation(3));
    assert_eq!(tracker.current()[&b].generation, Generation(1));
}

#[tokio::test]
async fn a_process_waiting_for_the_lock_is_not_a_holder() {
    let fx = Fixture::new();
    let locks = fx.locks();
    let a = block("a");
    let path = locks.ensure_block(&a).unwrap();
    let held = locks.acquire_all(std::slice::from_ref(&a)).unwrap();

    let waiter = FlockHolder::spawn(&path);
    let pid = waiter.pid().to_string();
    // Wait until the kernel lists it as a blocked waiter on our lock.
    wait_until("the waiter to queue", || {
        std::fs::read_to_string("/proc/locks").is_ok_and(|t| {
            parse_proc_locks(&t)
                .iter()
                .any(|l| l.waiter && l.pid.to_string() == pid)
        })
    })
    .await;
    assert!(!locks.observe(std::slice::from_ref(&a)).unwrap()[&a]);

    drop(held); // the waiter gets it
    wait_held(&locks, &a, true).await;
    waiter.kill();
    wait_held(&locks, &a, false).await;
}
