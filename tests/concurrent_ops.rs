//! Concurrent operations on one device, end to end: a real `lockstep serve`
//! (on the embedded SQLite and on a throwaway Postgres), a real `lockstep
//! agent` with the `process` runtime, and real block processes (shell scripts
//! that take their `flock` locks). The reconciler looks at all of a device's
//! active operations together: an operation waits for an earlier one only
//! when they conflict, so one held lock does not stall unrelated work.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockstep::edge::grpc::pb;
use pb::catalog_service_client::CatalogServiceClient;
use pb::device_service_client::DeviceServiceClient;
use pb::operation_service_client::OperationServiceClient;
use pb::operation_spec::{Empty, Kind};
use support::{Agent, Server, eventually, free_port};

/// Every block: writes its pid to `<lock dir>/pid`, and holds its lock while
/// `<lock dir>/hold` exists. `TAG` makes each block version's command its own.
const LOCKING_BLOCK: &str = r#"# lockstep concurrent-ops TAG
echo $$ > "$LOCKSTEP_LOCK_DIR/pid"
while true; do
  if [ -f "$LOCKSTEP_LOCK_DIR/hold" ]; then
    flock "$LOCKSTEP_LOCK_FILE" sh -c 'while [ -f "$LOCKSTEP_LOCK_DIR/hold" ]; do sleep 0.05; done'
  fi
  sleep 0.05
done"#;

const DEVICE: &str = "dev-1";

#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

struct Fixture {
    agent: Option<Agent>,
    server: Option<Server>,
    dir: tempfile::TempDir,
    backend: Backend,
}

fn command(block: &str, version: &str) -> Vec<String> {
    let tag = format!("{block}@{version}");
    vec!["sh".into(), "-c".into(), LOCKING_BLOCK.replace("TAG", &tag)]
}

/// The image digest of `block@version` (distinct for every version).
fn digest(block: &str, version: &str) -> String {
    let n = match (block, version) {
        ("a", "1.0.0") => 0xa1,
        ("b", "1.0.0") => 0xb1,
        ("c", "1.0.0") => 0xc1,
        ("a", "2.0.0") => 0xa2,
        ("b", "2.0.0") => 0xb2,
        _ => 0xff,
    };
    format!("sha256:{n:064x}")
}

impl Fixture {
    fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    fn lock_root(&self) -> PathBuf {
        self.dir.path().join("locks")
    }

    fn lock_dir(&self, block: &str) -> PathBuf {
        self.lock_root().join(block)
    }

    fn pid_file(&self, block: &str) -> PathBuf {
        self.lock_dir(block).join("pid")
    }

    fn pid_of(&self, block: &str) -> u32 {
        read_pid(&self.pid_file(block))
    }

    fn hold(&self, block: &str, on: bool) {
        let f = self.lock_dir(block).join("hold");
        if on {
            std::fs::write(f, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(f);
        }
    }

    fn intents_in_file(&self, block: &str) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.lock_dir(block).join("intent.json"))
            .unwrap_or_else(|_| "{}".into());
        let file: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        file["intents"].as_array().cloned().unwrap_or_default()
    }

    async fn channel(&self) -> support::Chan {
        self.server().channel().await
    }

    async fn state(&self) -> pb::GetDeviceStateResponse {
        DeviceServiceClient::new(self.channel().await)
            .get_device_state(pb::GetDeviceStateRequest { id: DEVICE.into() })
            .await
            .unwrap()
            .into_inner()
    }

    async fn device_status(&self) -> pb::DeviceStatus {
        self.state().await.device.expect("the device").status()
    }

    /// Waits until the server sees `block`'s lock held.
    async fn hold_and_wait(&self, block: &str) {
        self.hold(block, true);
        eventually(20, &format!("the server to see {block} held"), || async {
            self.state()
                .await
                .locks
                .into_iter()
                .find(|l| l.block == block && l.held)
        })
        .await;
    }

    async fn create_op(&self, spec: Kind) -> u64 {
        OperationServiceClient::new(self.channel().await)
            .create_operation(pb::CreateOperationRequest {
                device: DEVICE.into(),
                spec: Some(pb::OperationSpec { kind: Some(spec) }),
                force: None,
                actor: "test".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .operation
            .unwrap()
            .id
    }

    async fn op(&self, id: u64) -> pb::OperationInfo {
        OperationServiceClient::new(self.channel().await)
            .get_operation(pb::GetOperationRequest { id })
            .await
            .unwrap()
            .into_inner()
            .operation
            .unwrap()
    }

    /// Waits (at most 25 s) until operation `id` has `status`; the failure
    /// names the last status seen.
    async fn wait_op(&self, id: u64, status: &str) -> pb::OperationInfo {
        let deadline = std::time::Instant::now() + Duration::from_secs(25);
        loop {
            let op = self.op(id).await;
            if op.status == status {
                return op;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "[{:?}] timed out after 25 s waiting for operation {id} to be {status}; \
                 last seen: status {:?}, behind {}, waiting_on {:?}, error {:?}",
                self.backend,
                op.status,
                op.behind,
                op.waiting_on,
                op.error
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sets one device-level variable scoped to `block`; returns the
    /// operations the server says carry it.
    async fn set_env(&self, name: &str, value: &str, block: &str) -> Vec<u64> {
        DeviceServiceClient::new(self.channel().await)
            .set_env(pb::SetEnvRequest {
                owner: Some(pb::EnvOwner {
                    owner: Some(pb::env_owner::Owner::Device(DEVICE.into())),
                }),
                vars: vec![pb::EnvVar {
                    name: name.into(),
                    value: value.into(),
                    blocks: vec![block.into()],
                }],
            })
            .await
            .unwrap()
            .into_inner()
            .operations
    }

    async fn set_policy(&self, needs_window: &[&str], needs_approval: &[&str]) {
        let list = |l: &[&str]| l.iter().map(|k| (*k).to_string()).collect();
        pb::window_service_client::WindowServiceClient::new(self.channel().await)
            .set_fleet_policy(pb::SetFleetPolicyRequest {
                policy: Some(pb::FleetPolicy {
                    fleet: "site".into(),
                    needs_window: list(needs_window),
                    max_deferral_seconds: 0,
                    on_deferral_expiry: String::new(),
                    needs_approval: list(needs_approval),
                    release_mode: String::new(),
                    on_missed_occurrence: String::new(),
                }),
                update_mask: None,
            })
            .await
            .unwrap();
    }

    /// Asserts that operation `id` waits on exactly block `a` for `reason`.
    async fn assert_waits_on_a(&self, id: u64, reason: pb::Reason) {
        let op = self.op(id).await;
        assert_eq!(op.status, "waiting_lock", "operation {id}: {op:?}");
        let on: Vec<(String, i32)> = op
            .waiting_on
            .iter()
            .map(|d| (d.block.clone(), d.reason))
            .collect();
        assert_eq!(on, vec![("a".to_owned(), reason as i32)], "operation {id}");
    }

    /// Waits until `block` runs a process other than `before`; returns it.
    async fn wait_restarted(&self, block: &str, before: u32) -> u32 {
        eventually(20, &format!("{block} to run a new process"), || async {
            let now = self.pid_of(block);
            (now != 0 && now != before).then_some(now)
        })
        .await
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // The agent first (blocks outlive it by design), then each block's
        // process group (a block's pid is its group's id), then the server.
        self.agent.take();
        for block in ["a", "b", "c"] {
            let pid = self.pid_of(block);
            if let Some(p) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
            }
        }
        self.server.take();
    }
}

fn read_pid(file: &Path) -> u32 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The environment process `pid` was started with (`NAME=value` entries).
fn environ(pid: u32) -> BTreeSet<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|e| !e.is_empty())
                .map(|e| String::from_utf8_lossy(e).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Records every process id `block` runs until stopped: proof that a block
/// was never restarted, not merely restarted back to a lookalike.
struct PidWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<u32>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PidWatch {
    fn start(fx: &Fixture, block: &str) -> PidWatch {
        let file = fx.pid_file(block);
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let (s, v) = (Arc::clone(&stop), Arc::clone(&seen));
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                v.lock().unwrap().insert(read_pid(&file));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        PidWatch { stop, seen, task }
    }

    async fn finish(self) -> BTreeSet<u32> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        self.seen.lock().unwrap().clone()
    }
}

async fn setup(backend: Backend) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let server = match backend {
        Backend::Sqlite => Server::start(&[]),
        Backend::Postgres => {
            let url = lockstep::testkit::fresh_pg_url().await;
            Server::start_pg(&url)
        }
    };
    let mut fx = Fixture {
        agent: None,
        server: Some(server),
        dir,
        backend,
    };
    let ch = fx.channel().await;
    let mut cat = CatalogServiceClient::new(ch.clone());
    let mut devs = DeviceServiceClient::new(ch);
    devs.create_fleet(pb::CreateFleetRequest {
        id: "site".into(),
        name: String::new(),
    })
    .await
    .unwrap();
    // Nothing waits for a maintenance window or an approval unless a test
    // says so.
    fx.set_policy(&[], &[]).await;
    for block in ["a", "b", "c"] {
        cat.create_block(pb::CreateBlockRequest {
            name: block.into(),
            description: String::new(),
        })
        .await
        .unwrap();
    }
    for (block, version) in [
        ("a", "1.0.0"),
        ("b", "1.0.0"),
        ("c", "1.0.0"),
        ("b", "2.0.0"),
        ("a", "2.0.0"),
    ] {
        cat.create_block_version(pb::CreateBlockVersionRequest {
            block_version: Some(pb::BlockVersion {
                block: block.into(),
                version: version.into(),
                image_digest: digest(block, version),
                config: Some(pb::BlockConfig {
                    command: command(block, version),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    }
    for (id, versions) in [
        ("r1", ["1.0.0", "1.0.0", "1.0.0"]),
        ("r2", ["1.0.0", "2.0.0", "1.0.0"]),
        ("r3", ["2.0.0", "1.0.0", "1.0.0"]),
    ] {
        cat.create_release(pb::CreateReleaseRequest {
            id: id.into(),
            fleet: "site".into(),
            blocks: ["a", "b", "c"]
                .iter()
                .zip(versions)
                .map(|(b, v)| pb::BlockRef {
                    block: (*b).into(),
                    version: v.into(),
                })
                .collect(),
            env: Default::default(),
        })
        .await
        .unwrap();
    }
    let credential = devs
        .register_device(pb::RegisterDeviceRequest {
            id: DEVICE.into(),
            fleet: "site".into(),
            tags: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .credential;
    let d = fx.dir.path().to_owned();
    std::fs::write(d.join("credential"), &credential).unwrap();
    let blocks: Vec<serde_json::Value> = ["a", "b", "c"]
        .iter()
        .map(|b| {
            serde_json::json!({
                "name": b, "version": "1.0.0", "command": command(b, "1.0.0"), "env": {}
            })
        })
        .collect();
    let manifest = serde_json::json!({ "release": "r1", "os_version": "1.0", "blocks": blocks });
    std::fs::write(d.join("manifest.json"), manifest.to_string()).unwrap();

    let path = |p: PathBuf| p.to_str().unwrap().to_owned();
    let args: Vec<String> = vec![
        "--server".into(),
        fx.server().url(),
        "--device".into(),
        DEVICE.into(),
        "--credential-file".into(),
        path(d.join("credential")),
        "--lock-root".into(),
        path(fx.lock_root()),
        "--state-dir".into(),
        path(d.join("agent-state")),
        "--manifest".into(),
        path(d.join("manifest.json")),
        "--api-listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--lock-poll".into(),
        "100ms".into(),
        "--hook-reboot".into(),
        "true".into(),
        "--hook-os-update".into(),
        "true".into(),
    ];
    let agent = Agent::spawn(&args);
    agent.wait_log("connected to the server");
    fx.agent = Some(agent);
    eventually(
        20,
        "the agent's first report and every block running",
        || async {
            let s = fx.state().await;
            let running = ["a", "b", "c"].iter().all(|b| fx.pid_of(b) != 0);
            (s.reported && s.blocks.len() == 3 && running).then_some(())
        },
    )
    .await;
    assert_eq!(fx.state().await.current_release, "r1");
    fx
}

/// Runs each scenario on both backends.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::setup(super::Backend::Sqlite).await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::setup(super::Backend::Postgres).await).await
                }
            )*
        }
    };
}

// ---------------------------------------------------------------- scenarios

/// Env changes for different blocks do not conflict: the one for `b` applies
/// while the one for `a` waits for a's lock; once a releases, a restarts
/// with its new variable.
async fn env_for_a_waits_on_its_lock_while_env_for_b_applies(fx: Fixture) {
    fx.hold_and_wait("a").await;
    let (a0, b0) = (fx.pid_of("a"), fx.pid_of("b"));

    let ops = fx.set_env("MODE", "fast", "a").await;
    assert_eq!(ops.len(), 1, "one apply_env operation for the device");
    let op1 = ops[0];
    let ops = fx.set_env("LEVEL", "2", "b").await;
    assert_eq!(ops.len(), 1, "one apply_env operation for the device");
    let op2 = ops[0];
    assert_ne!(op1, op2, "b's env change is an operation of its own");

    fx.wait_op(op2, "done").await;
    let b1 = fx.wait_restarted("b", b0).await;
    let b_env = environ(b1);
    assert!(b_env.contains("LEVEL=2"), "b runs with LEVEL: {b_env:?}");
    assert!(
        !b_env.iter().any(|e| e.starts_with("MODE=")),
        "a's variable is not b's: {b_env:?}"
    );
    assert_eq!(fx.pid_of("a"), a0, "a was not restarted while it holds");
    fx.wait_op(op1, "waiting_lock").await;
    fx.assert_waits_on_a(op1, pb::Reason::EnvChange).await;

    fx.hold("a", false);
    fx.wait_op(op1, "done").await;
    let a1 = fx.wait_restarted("a", a0).await;
    let a_env = environ(a1);
    assert!(
        a_env.contains("MODE=fast"),
        "a runs with its new variable: {a_env:?}"
    );
    assert_eq!(fx.op(op2).await.status, "done");
}

/// A reboot needs the whole device but conflicts only with other
/// device-wide operations: while it waits for a's lock, a restart of `b`
/// goes ahead.
async fn a_reboot_waiting_on_a_lets_a_restart_of_b_apply(fx: Fixture) {
    fx.hold_and_wait("a").await;
    let (a0, b0) = (fx.pid_of("a"), fx.pid_of("b"));
    let reboot = fx.create_op(Kind::Reboot(Empty {})).await;
    fx.wait_op(reboot, "waiting_lock").await;
    fx.assert_waits_on_a(reboot, pb::Reason::Reboot).await;

    let restart = fx.create_op(Kind::RestartBlock("b".into())).await;
    fx.wait_op(restart, "done").await;
    fx.wait_restarted("b", b0).await;
    fx.assert_waits_on_a(reboot, pb::Reason::Reboot).await;
    assert_eq!(fx.pid_of("a"), a0, "a was not touched");
}

/// A reboot waiting for a maintenance window (none is defined) does not
/// hold up a restart of `b`.
async fn a_reboot_waiting_for_a_window_lets_a_restart_of_b_apply(fx: Fixture) {
    fx.set_policy(&["reboot"], &[]).await;
    let b0 = fx.pid_of("b");
    let reboot = fx.create_op(Kind::Reboot(Empty {})).await;
    fx.wait_op(reboot, "waiting_window").await;

    let restart = fx.create_op(Kind::RestartBlock("b".into())).await;
    fx.wait_op(restart, "done").await;
    fx.wait_restarted("b", b0).await;
    assert_eq!(fx.op(reboot).await.status, "waiting_window");
}

/// An OS update waiting for a customer's approval does not hold up a
/// restart of `c`.
async fn an_os_update_waiting_for_approval_lets_a_restart_of_c_apply(fx: Fixture) {
    fx.set_policy(&["os_update"], &["os_update"]).await;
    let c0 = fx.pid_of("c");
    let update = fx.create_op(Kind::OsUpdate("2.0".into())).await;
    fx.wait_op(update, "waiting_approval").await;

    let restart = fx.create_op(Kind::RestartBlock("c".into())).await;
    fx.wait_op(restart, "done").await;
    fx.wait_restarted("c", c0).await;
    assert_eq!(fx.op(update).await.status, "waiting_approval");
    assert_eq!(fx.state().await.os_version, "1.0", "the OS was not updated");
}

/// A release that leaves `a` alone does not conflict with an env change for
/// `a`: it applies at once, without restarting a and without carrying a's
/// pending variable; the env change keeps waiting for a's lock.
async fn a_release_leaving_a_unchanged_applies_while_env_for_a_waits(fx: Fixture) {
    fx.hold_and_wait("a").await;
    let (a0, b0) = (fx.pid_of("a"), fx.pid_of("b"));
    let watch = PidWatch::start(&fx, "a");

    let ops = fx.set_env("MODE", "fast", "a").await;
    assert_eq!(ops.len(), 1);
    let env_op = ops[0];
    fx.wait_op(env_op, "waiting_lock").await;

    let release = fx.create_op(Kind::AssignRelease("r2".into())).await;
    fx.wait_op(release, "done").await;
    let state = eventually(20, "the device to report r2", || async {
        let s = fx.state().await;
        (s.current_release == "r2").then_some(s)
    })
    .await;
    assert!(
        state
            .blocks
            .iter()
            .any(|b| b.block == "b" && b.version == "2.0.0"),
        "{:?}",
        state.blocks
    );
    fx.wait_restarted("b", b0).await;
    // Let the watch see a little beyond the release.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let seen = watch.finish().await;
    assert_eq!(seen, BTreeSet::from([a0]), "a ran one process throughout");
    assert_eq!(fx.pid_of("a"), a0);
    let a_env = environ(a0);
    assert!(
        !a_env.iter().any(|e| e.starts_with("MODE=")),
        "the pending env change did not reach a: {a_env:?}"
    );
    fx.assert_waits_on_a(env_op, pb::Reason::EnvChange).await;
}

/// A release that changes `a` conflicts with the env change for `a` made
/// before it: it is queued behind it, and once a releases both apply in
/// order (the release then runs the new a with the new variable).
async fn a_release_changing_a_is_queued_behind_the_env_change_for_a(fx: Fixture) {
    fx.hold_and_wait("a").await;
    let a0 = fx.pid_of("a");
    let ops = fx.set_env("MODE", "fast", "a").await;
    assert_eq!(ops.len(), 1);
    let env_op = ops[0];
    fx.wait_op(env_op, "waiting_lock").await;

    let release = fx.create_op(Kind::AssignRelease("r3".into())).await;
    let queued = fx.wait_op(release, "queued").await;
    assert_eq!(queued.behind, env_op, "{queued:?}");
    fx.assert_waits_on_a(env_op, pb::Reason::EnvChange).await;

    fx.hold("a", false);
    // Never the release done before the env change.
    eventually(30, "both operations to be done", || async {
        // The release is read first: were it done before the env change,
        // the env change read after it could not be done yet.
        let rel = fx.op(release).await;
        let env = fx.op(env_op).await;
        if rel.status == "done" {
            assert_eq!(
                env.status, "done",
                "the release finished before the env change it was queued behind: {env:?} {rel:?}"
            );
        }
        for o in [&env, &rel] {
            assert!(
                !matches!(o.status.as_str(), "failed" | "cancelled" | "superseded"),
                "{o:?}"
            );
        }
        (env.status == "done" && rel.status == "done").then_some(())
    })
    .await;
    let (env, rel) = (fx.op(env_op).await, fx.op(release).await);
    assert!(
        env.updated_unix_ms <= rel.updated_unix_ms,
        "env change done at {}, release at {}",
        env.updated_unix_ms,
        rel.updated_unix_ms
    );
    let state = eventually(20, "the device to report r3", || async {
        let s = fx.state().await;
        (s.current_release == "r3").then_some(s)
    })
    .await;
    assert!(
        state
            .blocks
            .iter()
            .any(|b| b.block == "a" && b.version == "2.0.0"),
        "{:?}",
        state.blocks
    );
    let a1 = fx.wait_restarted("a", a0).await;
    let a_env = eventually(20, "a@2.0.0 running", || async {
        let env = environ(fx.pid_of("a"));
        env.contains("LOCKSTEP_BLOCK_VERSION=2.0.0").then_some(env)
    })
    .await;
    assert!(
        a_env.contains("MODE=fast"),
        "the new a runs with the env a ran with (a1 = {a1}): {a_env:?}"
    );
}

/// Cancelling an operation withdraws its release request from the block's
/// `intent.json`, and the device's status is projected again.
async fn cancelling_withdraws_the_release_request_and_the_device_status_follows(fx: Fixture) {
    fx.hold_and_wait("a").await;
    let reboot = fx.create_op(Kind::Reboot(Empty {})).await;
    fx.wait_op(reboot, "waiting_lock").await;
    let is_request = |i: &serde_json::Value| {
        i["kind"] == "release_request" && i["operation_id"].as_u64() == Some(reboot)
    };
    let request = eventually(20, "the release request in a's intent.json", || async {
        fx.intents_in_file("a").into_iter().find(is_request)
    })
    .await;
    assert_eq!(request["reason"], "reboot", "{request}");
    eventually(20, "the device to be waiting_lock", || async {
        (fx.device_status().await == pb::DeviceStatus::WaitingLock).then_some(())
    })
    .await;

    let cancelled = OperationServiceClient::new(fx.channel().await)
        .cancel_operation(pb::CancelOperationRequest {
            id: reboot,
            actor: "test".into(),
            reason: "not today".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    assert_eq!(cancelled.status, "cancelled");

    eventually(
        20,
        "the release request to leave a's intent.json",
        || async { (!fx.intents_in_file("a").iter().any(is_request)).then_some(()) },
    )
    .await;
    let mut last = pb::DeviceStatus::Unspecified;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while last != pb::DeviceStatus::InSync {
        assert!(
            std::time::Instant::now() < deadline,
            "[{:?}] the device status stayed {last:?} after the cancel",
            fx.backend
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = fx.device_status().await;
    }
    assert_eq!(fx.op(reboot).await.status, "cancelled");
}

on_both_backends!(
    env_for_a_waits_on_its_lock_while_env_for_b_applies,
    a_reboot_waiting_on_a_lets_a_restart_of_b_apply,
    a_reboot_waiting_for_a_window_lets_a_restart_of_b_apply,
    an_os_update_waiting_for_approval_lets_a_restart_of_c_apply,
    a_release_leaving_a_unchanged_applies_while_env_for_a_waits,
    a_release_changing_a_is_queued_behind_the_env_change_for_a,
    cancelling_withdraws_the_release_request_and_the_device_status_follows,
);
