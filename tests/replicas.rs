//! Several `lockstep serve` replicas on one throwaway Postgres, real agents
//! spread over them behind small TCP proxies (an L4 load balancer that can
//! fail over and drop connections half-open), real block processes. The
//! replicas' safety sweep is slowed to a minute, so what reaches a device
//! within the bounds below was carried by notifications between replicas,
//! not found by the sweep.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lockstep::edge::grpc::pb;
use pb::catalog_service_client::CatalogServiceClient;
use pb::device_service_client::DeviceServiceClient;
use pb::operation_service_client::OperationServiceClient;
use pb::operation_spec::Kind;
use pb::rollout_service_client::RolloutServiceClient;
use support::proxy::Proxy;
use support::{Agent, Server, eventually, free_port};

/// A block: logs its starts and stops (ms, version) and holds its lock
/// while `<lock dir>/hold` exists.
const BLOCK: &str = r#"# lockstep replicas TAG
echo $$ > "$LOCKSTEP_LOCK_DIR/pid"
echo "$(date +%s%3N) start TAG" >> "$LOCKSTEP_LOCK_DIR/starts.log"
trap 'echo "$(date +%s%3N) stop TAG" >> "$LOCKSTEP_LOCK_DIR/starts.log"; exit 0' TERM
while true; do
  if [ -f "$LOCKSTEP_LOCK_DIR/hold" ]; then
    flock "$LOCKSTEP_LOCK_FILE" sh -c 'while [ -f "$LOCKSTEP_LOCK_DIR/hold" ]; do sleep 0.05; done'
  fi
  sleep 0.05
done"#;

fn command(version: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        BLOCK.replace("TAG", &format!("a@{version}")),
    ]
}

fn digest(version: &str) -> String {
    format!(
        "sha256:{:064x}",
        if version == "1.0.0" { 0xa1 } else { 0xa2 }
    )
}

/// The sweep runs once a minute here: hand-overs must come by NOTIFY.
const SLOW_SWEEP: &str = "60s";

struct Device {
    id: String,
    dir: tempfile::TempDir,
    proxy: Proxy,
    agent: Option<Agent>,
}

impl Device {
    fn lock_dir(&self) -> PathBuf {
        self.dir.path().join("locks").join("a")
    }

    fn hold(&self, on: bool) {
        let hold = self.lock_dir().join("hold");
        if on {
            std::fs::write(hold, "").unwrap();
        } else {
            let _ = std::fs::remove_file(hold);
        }
    }

    /// `(ms, "start"|"stop", version)` lines of the block's log.
    fn starts(&self) -> Vec<(i64, String, String)> {
        std::fs::read_to_string(self.lock_dir().join("starts.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut p = l.split(' ');
                Some((
                    p.next()?.parse().ok()?,
                    p.next()?.to_owned(),
                    p.next()?.trim_start_matches("a@").to_owned(),
                ))
            })
            .collect()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // The agent first (blocks outlive it by design), then the block's
        // process group (its pid is its group's id).
        self.agent.take();
        let pid = std::fs::read_to_string(self.lock_dir().join("pid")).unwrap_or_default();
        if let Some(p) = pid
            .trim()
            .parse::<i32>()
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
        }
    }
}

struct Cluster {
    servers: Vec<Option<Server>>,
    addrs: Vec<SocketAddr>,
    devices: Vec<Device>,
    token: String,
    _token_dir: tempfile::TempDir,
}

impl Cluster {
    /// `replicas` servers on one fresh Postgres; device i connects through
    /// its proxy to replica `homes[i]` first, then the others in turn.
    async fn start(replicas: usize, homes: &[usize]) -> Cluster {
        let url = lockstep::testkit::fresh_pg_url().await;
        let token_dir = tempfile::tempdir().unwrap();
        let token = token_dir.path().join("admin.token");
        let token = token.to_str().unwrap().to_owned();
        let mut servers = Vec::new();
        for i in 0..replicas {
            let id = format!("r{}", i + 1);
            servers.push(Some(Server::spawn(
                &[
                    "--database-url",
                    &url,
                    "--replica-id",
                    &id,
                    "--bootstrap-token-file",
                    &token,
                    "--sweep-interval",
                    SLOW_SWEEP,
                ],
                None,
            )));
        }
        let addrs: Vec<SocketAddr> = servers.iter().flatten().map(|s| s.addr).collect();
        let admin = servers[0].as_ref().unwrap().token();
        let mut c = Cluster {
            servers,
            addrs,
            devices: Vec::new(),
            token: admin,
            _token_dir: token_dir,
        };
        c.catalog().await;
        for (i, home) in homes.iter().enumerate() {
            let d = c.device(&format!("d{}", i + 1), *home).await;
            c.devices.push(d);
        }
        for d in &c.devices {
            d.agent
                .as_ref()
                .unwrap()
                .wait_log("connected to the server");
        }
        for d in &c.devices {
            let id = d.id.clone();
            eventually(30, &format!("{id} reported and in sync"), || async {
                let s = c.state(0, &id).await;
                (s.reported
                    && s.device
                        .is_some_and(|d| d.status() == pb::DeviceStatus::InSync))
                .then_some(())
            })
            .await;
        }
        c
    }

    /// A channel to replica `i`.
    async fn ch(&self, i: usize) -> support::Chan {
        support::channel_to(self.addrs[i], &self.token).await
    }

    async fn catalog(&self) {
        let ch = self.ch(0).await;
        let mut cat = CatalogServiceClient::new(ch.clone());
        let mut devs = DeviceServiceClient::new(ch.clone());
        devs.create_fleet(pb::CreateFleetRequest {
            id: "site".into(),
            name: String::new(),
        })
        .await
        .unwrap();
        // Nothing waits for a maintenance window.
        pb::window_service_client::WindowServiceClient::new(ch.clone())
            .set_fleet_policy(pb::SetFleetPolicyRequest {
                policy: Some(pb::FleetPolicy {
                    fleet: "site".into(),
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await
            .unwrap();
        cat.create_block(pb::CreateBlockRequest {
            name: "a".into(),
            description: String::new(),
        })
        .await
        .unwrap();
        for v in ["1.0.0", "2.0.0"] {
            cat.create_block_version(pb::CreateBlockVersionRequest {
                block_version: Some(pb::BlockVersion {
                    block: "a".into(),
                    version: v.into(),
                    image_digest: digest(v),
                    config: Some(pb::BlockConfig {
                        command: command(v),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        }
        for (id, v) in [("rel1", "1.0.0"), ("rel2", "2.0.0")] {
            cat.create_release(pb::CreateReleaseRequest {
                id: id.into(),
                fleet: "site".into(),
                blocks: vec![pb::BlockRef {
                    block: "a".into(),
                    version: v.into(),
                }],
                env: Default::default(),
            })
            .await
            .unwrap();
        }
    }

    async fn device(&self, id: &str, home: usize) -> Device {
        let credential = DeviceServiceClient::new(self.ch(home).await)
            .register_device(pb::RegisterDeviceRequest {
                id: id.into(),
                fleet: "site".into(),
                tags: vec![],
            })
            .await
            .unwrap()
            .into_inner()
            .credential;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("credential"), &credential).unwrap();
        let manifest = serde_json::json!({
            "release": "rel1", "os_version": "1.0",
            "blocks": [{ "name": "a", "version": "1.0.0", "command": command("1.0.0"), "env": {} }],
        });
        std::fs::write(d.join("manifest.json"), manifest.to_string()).unwrap();
        let order: Vec<SocketAddr> = (0..self.addrs.len())
            .map(|k| self.addrs[(home + k) % self.addrs.len()])
            .collect();
        let proxy = Proxy::start(order).await;
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        let args: Vec<String> = vec![
            "--server".into(),
            proxy.url(),
            "--device".into(),
            id.into(),
            "--credential-file".into(),
            path(&d.join("credential")),
            "--lock-root".into(),
            path(&d.join("locks")),
            "--state-dir".into(),
            path(&d.join("agent-state")),
            "--manifest".into(),
            path(&d.join("manifest.json")),
            "--api-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--lock-poll".into(),
            "100ms".into(),
        ];
        let agent = Agent::spawn(&args);
        Device {
            id: id.into(),
            dir,
            proxy,
            agent: Some(agent),
        }
    }

    async fn state(&self, via: usize, device: &str) -> pb::GetDeviceStateResponse {
        DeviceServiceClient::new(self.ch(via).await)
            .get_device_state(pb::GetDeviceStateRequest { id: device.into() })
            .await
            .unwrap()
            .into_inner()
    }

    async fn create_op(&self, via: usize, device: &str, spec: Kind) -> u64 {
        OperationServiceClient::new(self.ch(via).await)
            .create_operation(pb::CreateOperationRequest {
                device: device.into(),
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

    async fn op(&self, via: usize, id: u64) -> pb::OperationInfo {
        OperationServiceClient::new(self.ch(via).await)
            .get_operation(pb::GetOperationRequest { id })
            .await
            .unwrap()
            .into_inner()
            .operation
            .unwrap()
    }

    /// Waits (at most `secs`) for operation `id` to have `status`; how long.
    async fn wait_op(&self, via: usize, id: u64, status: &str, secs: u64) -> Duration {
        let start = Instant::now();
        loop {
            let op = self.op(via, id).await;
            if op.status == status {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "operation {id} not {status} within {secs} s: {:?} waiting_on {:?} error {:?}",
                op.status,
                op.waiting_on,
                op.error
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut s) = self.servers[i].take() {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }
}

async fn rollout_status(c: &Cluster, via: usize, id: u64) -> pb::RolloutStatus {
    RolloutServiceClient::new(c.ch(via).await)
        .get_rollout(pb::GetRolloutRequest { id })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
}

/// Reads events from a watch until `done` says so (at most 20 s).
async fn collect_events(
    stream: &mut tonic::Streaming<pb::Event>,
    mut done: impl FnMut(&[pb::Event]) -> bool,
) -> Vec<pb::Event> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.message()).await {
            Ok(Ok(Some(e))) => seen.push(e),
            other => panic!(
                "the watch ended or timed out ({other:?}) having seen {:?}",
                seen.iter().map(|e| (e.seq, &e.kind)).collect::<Vec<_>>()
            ),
        }
    }
    seen
}

fn assert_in_order(events: &[pb::Event]) {
    for w in events.windows(2) {
        assert!(
            w[0].seq < w[1].seq,
            "events out of order or repeated: {:?}",
            events.iter().map(|e| (e.seq, &e.kind)).collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_created_on_one_replica_reaches_a_device_on_another_and_a_third_sees_every_event() {
    // d1 streams to r1, d2 to r2.
    let c = Cluster::start(3, &[0, 1]).await;

    // A watcher on r3 follows d1.
    let mut watch = OperationServiceClient::new(c.ch(2).await)
        .watch_events(pb::WatchEventsRequest {
            device: "d1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    // An operation created through r2 for d1 (held by r1) is applied.
    let op = c.create_op(1, "d1", Kind::RestartBlock("a".into())).await;
    let took = c.wait_op(2, op, "done", 20).await;
    eprintln!("restart created on r2, applied by d1 on r1: {took:?}");
    let seen = collect_events(&mut watch, |s| {
        s.iter()
            .any(|e| e.operation_id == op && e.kind == "applied")
    })
    .await;
    assert_in_order(&seen);
    let kinds: Vec<&str> = seen
        .iter()
        .filter(|e| e.operation_id == op)
        .map(|e| e.kind.as_str())
        .collect();
    let applying = kinds.iter().position(|k| *k == "applying");
    let applied = kinds.iter().position(|k| *k == "applied");
    assert!(
        applying.is_some() && applying < applied,
        "r3 sees d1's operation apply, in order: {kinds:?}"
    );
    let cursor = seen.last().unwrap().seq;
    drop(watch);

    // While nobody watches, more happens to d1 (through r3 this time).
    let second = c.create_op(2, "d1", Kind::RestartBlock("a".into())).await;
    c.wait_op(0, second, "done", 20).await;
    // Resuming from the cursor on r3 replays what was missed, once, in order.
    let mut resumed = OperationServiceClient::new(c.ch(2).await)
        .watch_events(pb::WatchEventsRequest {
            device: "d1".into(),
            after_seq: cursor,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let replayed = collect_events(&mut resumed, |s| {
        s.iter()
            .any(|e| e.operation_id == second && e.kind == "applied")
    })
    .await;
    assert_in_order(&replayed);
    assert!(replayed.iter().all(|e| e.seq > cursor && e.device == "d1"));
    assert!(
        replayed
            .iter()
            .any(|e| e.operation_id == second && e.kind == "applying"),
        "{:?}",
        replayed.iter().map(|e| &e.kind).collect::<Vec<_>>()
    );

    // A release request crosses replicas too: d2 (on r2) holds a, a restart
    // of a is created through r1; d2's holder is asked, the op waits.
    let d2 = &c.devices[1];
    d2.hold(true);
    eventually(20, "r1 to see d2's lock held", || async {
        c.state(0, "d2")
            .await
            .locks
            .into_iter()
            .find(|l| l.block == "a" && l.held)
    })
    .await;
    let asked = Instant::now();
    let held = c.create_op(0, "d2", Kind::RestartBlock("a".into())).await;
    eventually(20, "d2's holder to be asked for a", || async {
        let text = std::fs::read_to_string(d2.lock_dir().join("intent.json")).ok()?;
        let file: serde_json::Value = serde_json::from_str(&text).ok()?;
        file["intents"]
            .as_array()?
            .iter()
            .find(|i| i["operation_id"].as_u64() == Some(held) && i["kind"] == "release_request")?;
        Some(())
    })
    .await;
    eprintln!(
        "release request created on r1, on d2's device (r2): {:?}",
        asked.elapsed()
    );
    assert_eq!(c.op(2, held).await.status, "waiting_lock");
    d2.hold(false);
    c.wait_op(2, held, "done", 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_over_three_replicas_survives_a_killed_replica_without_exceeding_max_in_flight() {
    let mut c = Cluster::start(3, &[0, 1, 2, 0, 1, 2]).await;
    let rollout = RolloutServiceClient::new(c.ch(0).await)
        .create_rollout(pb::CreateRolloutRequest {
            fleet: "site".into(),
            target: Some(pb::create_rollout_request::Target::Release("rel2".into())),
            strategy: Some(pb::RolloutStrategy {
                max_in_flight: 1,
                ..Default::default()
            }),
            actor: "test".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .rollout
        .unwrap()
        .id;
    let mut max_in_flight = 0;
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        // Sampled through a replica that stays up.
        let s = rollout_status(&c, 2, rollout).await;
        let in_flight: u64 = s.batches.iter().map(|b| b.in_flight).sum();
        let succeeded: u64 = s.batches.iter().map(|b| b.succeeded).sum();
        max_in_flight = max_in_flight.max(in_flight);
        let state = s.rollout.as_ref().unwrap().state.clone();
        if state == "completed" {
            break;
        }
        assert_eq!(state, "running", "{s:?}");
        if !killed && succeeded >= 2 {
            // kill -9 of r1 mid-rollout: its agents reconnect elsewhere.
            c.kill(0);
            killed = true;
        }
        assert!(
            Instant::now() < deadline,
            "rollout not completed in 150 s: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(killed, "a replica was killed mid-rollout");
    assert!(max_in_flight <= 1, "sampled in flight: {max_in_flight}");

    // From the devices' own clocks: each moved to 2.0.0 exactly once, and
    // no two devices were between stopping 1.0.0 and starting 2.0.0 at once.
    let mut windows = Vec::new();
    for d in &c.devices {
        let log = d.starts();
        let started_2: Vec<_> = log
            .iter()
            .filter(|l| l.1 == "start" && l.2 == "2.0.0")
            .collect();
        assert_eq!(started_2.len(), 1, "{} applied once: {log:?}", d.id);
        let stop_1 = log
            .iter()
            .filter(|l| l.1 == "stop" && l.2 == "1.0.0")
            .map(|l| l.0)
            .max()
            .unwrap_or_else(|| panic!("{} stopped 1.0.0: {log:?}", d.id));
        windows.push((stop_1, started_2[0].0, d.id.clone()));
    }
    windows.sort();
    for w in windows.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "applies overlapped: {:?} and {:?}",
            w[0],
            w[1]
        );
    }

    // Presence: every device is online and in sync on the replicas left,
    // those that were on r1 included (they moved).
    for d in &c.devices {
        let id = d.id.clone();
        eventually(30, &format!("{id} in sync on r2 and r3"), || async {
            let on2 = c.state(1, &id).await.device?.status();
            let on3 = c.state(2, &id).await.device?.status();
            (on2 == pb::DeviceStatus::InSync && on3 == pb::DeviceStatus::InSync).then_some(())
        })
        .await;
    }
    let statuses: BTreeMap<String, u64> = rollout_status(&c, 1, rollout)
        .await
        .device_statuses
        .into_iter()
        .map(|s| (s.status, s.devices))
        .collect();
    assert_eq!(statuses.get("in_sync"), Some(&6), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_stream_heals_within_the_lease_and_the_old_replica_leaves_presence_alone() {
    let c = Cluster::start(3, &[0]).await;
    let d1 = &c.devices[0];
    // The balancer drops d1's connection to r1 half-open; new connections
    // go to r2.
    d1.proxy.set_targets(vec![c.addrs[1]]);
    d1.proxy.freeze_connections();
    let frozen = Instant::now();
    let op = c.create_op(2, "d1", Kind::RestartBlock("a".into())).await;
    // Within the lease (15 s), with room for a loaded machine.
    let took = c.wait_op(2, op, "done", 40).await;
    eprintln!("half-open stream: operation applied {took:?} after the freeze");
    // r1 notices its dead stream later (keepalive); it must not mark the
    // device offline, which now streams to r2.
    tokio::time::sleep(Duration::from_secs(16).saturating_sub(frozen.elapsed())).await;
    for via in 0..3 {
        let status = c.state(via, "d1").await.device.unwrap().status();
        assert_eq!(
            status,
            pb::DeviceStatus::InSync,
            "d1 as replica r{} sees it",
            via + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_sqlite_data_dir_is_refused() {
    let first = Server::start(&[]);
    let dir = first
        .data_dir
        .as_ref()
        .unwrap()
        .path()
        .to_str()
        .unwrap()
        .to_owned();
    let mut second = std::process::Command::new(support::BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--dashboard-listen",
            "off",
            "--data-dir",
            &dir,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Refused at once; a server that runs is killed after 30 s (and fails).
    let deadline = Instant::now() + Duration::from_secs(30);
    while second.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = second.kill();
    let out = second.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another lockstep server is using the embedded database"),
        "{err}"
    );
    drop(first);
}
