//! Rollouts end to end: a real `lockstep serve`, several real `lockstep
//! agent` processes (one per device, `process` runtime with shell blocks
//! that take their locks with `flock`, or `hooks` runtime), and the embedded
//! database. Each device's operation goes through the scheduler, so locks
//! hold devices up exactly as they do outside a rollout.

mod support;

use std::path::PathBuf;

use lockstep::edge::grpc::pb;
use pb::catalog_service_client::CatalogServiceClient;
use pb::device_service_client::DeviceServiceClient;
use pb::operation_service_client::OperationServiceClient;
use pb::rollout_service_client::RolloutServiceClient;
use support::{Agent, Server, eventually, free_port};
use tonic::Code;

/// `controller` holds its lock while `<lock-dir>/hold` exists.
const LOCKING_BLOCK: &str = r#"# lockstep-test MARKER
while true; do
  if [ -f "$LOCKSTEP_LOCK_DIR/hold" ]; then
    flock "$LOCKSTEP_LOCK_FILE" sh -c 'while [ -f "$LOCKSTEP_LOCK_DIR/hold" ]; do sleep 0.05; done'
  fi
  sleep 0.05
done"#;

const PLAIN_BLOCK: &str = "# lockstep-test MARKER\nwhile true; do sleep 0.2; done";

struct Fleet {
    server: Server,
    dir: tempfile::TempDir,
    marker: String,
    agents: Vec<Agent>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.agents.clear();
        let _ = std::process::Command::new("pkill")
            .args(["-f", &format!("lockstep-test {}", self.marker)])
            .status();
    }
}

impl Fleet {
    async fn channel(&self) -> support::Chan {
        self.server.channel().await
    }

    fn command(&self, block: &str) -> Vec<String> {
        let body = if block == "controller" {
            LOCKING_BLOCK
        } else {
            PLAIN_BLOCK
        };
        vec![
            "sh".into(),
            "-c".into(),
            body.replace("MARKER", &self.marker),
        ]
    }

    fn device_dir(&self, device: &str) -> PathBuf {
        self.dir.path().join(device)
    }

    fn hold(&self, device: &str, block: &str, on: bool) {
        let f = self
            .device_dir(device)
            .join("locks")
            .join(block)
            .join("hold");
        if on {
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(f);
        }
    }

    async fn wait_held(&self, device: &str, block: &str) {
        eventually(
            30,
            &format!("{device}'s {block} lock to be seen held"),
            || async {
                let st = DeviceServiceClient::new(self.channel().await)
                    .get_device_state(pb::GetDeviceStateRequest { id: device.into() })
                    .await
                    .unwrap()
                    .into_inner();
                st.locks
                    .iter()
                    .any(|l| l.block == block && l.held)
                    .then_some(())
            },
        )
        .await;
    }

    async fn rollouts(&self) -> RolloutServiceClient<support::Chan> {
        RolloutServiceClient::new(self.channel().await)
    }

    async fn status(&self, id: u64) -> pb::RolloutStatus {
        self.rollouts()
            .await
            .get_rollout(pb::GetRolloutRequest { id })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap()
    }

    async fn wait_state(&self, id: u64, state: &str) -> pb::RolloutStatus {
        eventually(60, &format!("rollout {id} to be {state}"), || async {
            let s = self.status(id).await;
            (s.rollout.as_ref().unwrap().state == state).then_some(s)
        })
        .await
    }

    async fn ops(&self, device: &str) -> Vec<pb::OperationInfo> {
        OperationServiceClient::new(self.channel().await)
            .list_operations(pb::ListOperationsRequest {
                device: device.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .operations
    }
}

async fn block_version(
    cat: &mut CatalogServiceClient<support::Chan>,
    fleet: &Fleet,
    block: &str,
    version: &str,
    digest: u32,
) {
    cat.create_block_version(pb::CreateBlockVersionRequest {
        block_version: Some(pb::BlockVersion {
            block: block.into(),
            version: version.into(),
            image_digest: format!("sha256:{digest:064x}"),
            config: Some(pb::BlockConfig {
                command: fleet.command(block),
                ..Default::default()
            }),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
}

async fn release(cat: &mut CatalogServiceClient<support::Chan>, id: &str, blocks: &[(&str, &str)]) {
    cat.create_release(pb::CreateReleaseRequest {
        id: id.into(),
        fleet: "site".into(),
        blocks: blocks
            .iter()
            .map(|(b, v)| pb::BlockRef {
                block: (*b).into(),
                version: (*v).into(),
            })
            .collect(),
        env: Default::default(),
    })
    .await
    .unwrap();
}

/// A server, the catalog (telemetry and controller at 1.0.0 in r1; r2
/// changes telemetry; r3 changes controller), no windows needed, and
/// `devices` devices running r1 with the `process` runtime (or, with
/// `os_hook`, the `hooks` runtime and that OS-update hook).
async fn fleet(devices: &[&str], os_hook: Option<&str>) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!(
        "r{}",
        dir.path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(['.', '-'], "")
    );
    let server = Server::start(&[]);
    let mut f = Fleet {
        server,
        dir,
        marker,
        agents: Vec::new(),
    };
    let ch = f.channel().await;
    let mut cat = CatalogServiceClient::new(ch.clone());
    let mut devs = DeviceServiceClient::new(ch.clone());
    devs.create_fleet(pb::CreateFleetRequest {
        id: "site".into(),
        name: String::new(),
    })
    .await
    .unwrap();
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
    for block in ["telemetry", "controller"] {
        cat.create_block(pb::CreateBlockRequest {
            name: block.into(),
            description: String::new(),
        })
        .await
        .unwrap();
    }
    block_version(&mut cat, &f, "telemetry", "1.0.0", 1).await;
    block_version(&mut cat, &f, "controller", "1.0.0", 2).await;
    block_version(&mut cat, &f, "telemetry", "1.1.0", 3).await;
    block_version(&mut cat, &f, "controller", "1.1.0", 4).await;
    release(
        &mut cat,
        "r1",
        &[("telemetry", "1.0.0"), ("controller", "1.0.0")],
    )
    .await;
    release(
        &mut cat,
        "r2",
        &[("telemetry", "1.1.0"), ("controller", "1.0.0")],
    )
    .await;
    release(
        &mut cat,
        "r3",
        &[("telemetry", "1.1.0"), ("controller", "1.1.0")],
    )
    .await;
    let manifest_blocks: Vec<serde_json::Value> = ["telemetry", "controller"]
        .iter()
        .map(|b| {
            serde_json::json!({
                "name": b, "version": "1.0.0", "command": f.command(b), "env": {}
            })
        })
        .collect();
    for device in devices {
        let reg = devs
            .register_device(pb::RegisterDeviceRequest {
                id: (*device).into(),
                fleet: "site".into(),
                tags: vec!["inverter".into()],
            })
            .await
            .unwrap()
            .into_inner();
        let d = f.device_dir(device);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("credential"), &reg.credential).unwrap();
        let mut args: Vec<String> = vec![
            "--server".into(),
            f.server.url(),
            "--device".into(),
            (*device).into(),
            "--credential-file".into(),
            d.join("credential").to_str().unwrap().into(),
            "--lock-root".into(),
            d.join("locks").to_str().unwrap().into(),
            "--state-dir".into(),
            d.join("state").to_str().unwrap().into(),
            "--api-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--lock-poll".into(),
            "100ms".into(),
        ];
        match os_hook {
            Some(hook) => {
                args.extend(["--runtime".into(), "hooks".into()]);
                args.extend(["--hook-os-update".into(), hook.into()]);
            }
            None => {
                let manifest = serde_json::json!({
                    "release": "r1", "os_version": "1.0", "blocks": manifest_blocks
                });
                std::fs::write(d.join("manifest.json"), manifest.to_string()).unwrap();
                args.extend([
                    "--manifest".into(),
                    d.join("manifest.json").to_str().unwrap().into(),
                ]);
            }
        }
        let agent = Agent::spawn(&args);
        agent.wait_log("connected to the server");
        f.agents.push(agent);
    }
    // Every device has reported what it runs before a rollout plans.
    for device in devices {
        eventually(30, &format!("{device} to report"), || async {
            let st = DeviceServiceClient::new(f.channel().await)
                .get_device_state(pb::GetDeviceStateRequest {
                    id: (*device).into(),
                })
                .await
                .unwrap()
                .into_inner();
            st.reported.then_some(())
        })
        .await;
    }
    f
}

fn strategy(canary: u32, batches: &[u32]) -> pb::RolloutStrategy {
    pb::RolloutStrategy {
        canary,
        batches: batches
            .iter()
            .map(|n| pb::Amount {
                amount: Some(pb::amount::Amount::Count(*n)),
            })
            .collect(),
        ..Default::default()
    }
}

async fn create(
    f: &Fleet,
    target: pb::create_rollout_request::Target,
    s: pb::RolloutStrategy,
) -> u64 {
    f.rollouts()
        .await
        .create_rollout(pb::CreateRolloutRequest {
            fleet: "site".into(),
            target: Some(target),
            strategy: Some(s),
            actor: "ops@example".into(),
            seed: 7,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .rollout
        .unwrap()
        .id
}

fn release_target(id: &str) -> pb::create_rollout_request::Target {
    pb::create_rollout_request::Target::Release(id.into())
}

#[tokio::test]
async fn a_release_rollout_goes_canary_first_then_the_rest_and_completes() {
    let devices = ["inv-1", "inv-2", "inv-3"];
    let f = fleet(&devices, None).await;
    let id = create(&f, release_target("r2"), strategy(1, &[])).await;
    let done = f.wait_state(id, "completed").await;
    let sizes: Vec<u64> = done.batches.iter().map(|b| b.size).collect();
    assert_eq!(sizes, vec![1, 2]);
    assert!(done.batches.iter().all(|b| b.succeeded == b.size));
    // The canary's operation finished before the others were created.
    let mut canary_done = None;
    let mut others_created = Vec::new();
    for d in devices {
        let ops = f.ops(d).await;
        assert_eq!(ops.len(), 1, "{d}: {ops:?}");
        let op = &ops[0];
        assert_eq!(op.status, "done");
        others_created.push((op.created_unix_ms, op.updated_unix_ms));
    }
    others_created.sort();
    let (first_created, first_done) = others_created[0];
    canary_done.get_or_insert(first_done);
    for (created, _) in &others_created[1..] {
        assert!(
            *created >= first_done,
            "batch 1 started ({created}) before the canary finished ({first_done}); first created {first_created}"
        );
    }
    // Every device runs r2 now.
    for d in devices {
        let st = DeviceServiceClient::new(f.channel().await)
            .get_device_state(pb::GetDeviceStateRequest { id: d.into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.current_release, "r2", "{d}");
    }
    // A second active rollout of the same kind is refused while one runs;
    // this one is completed, so another may start.
    let again = create(&f, release_target("r1"), strategy(0, &[])).await;
    assert!(again > id);
}

#[tokio::test]
async fn a_locked_controller_shows_as_waiting_lock_by_block_and_reason_and_the_rest_proceed() {
    let devices = ["inv-1", "inv-2"];
    let f = fleet(&devices, None).await;
    f.hold("inv-2", "controller", true);
    f.wait_held("inv-2", "controller").await;
    // r3 replaces the controller: inv-2 must wait for its lock.
    let id = create(&f, release_target("r3"), strategy(0, &[])).await;
    let waiting = eventually(60, "inv-2 to wait on controller", || async {
        let s = f.status(id).await;
        (s.waiting_lock.len() == 1 && s.batches[0].succeeded == 1).then_some(s)
    })
    .await;
    let w = &waiting.waiting_lock[0];
    assert_eq!(w.block, "controller");
    assert_eq!(w.reason, pb::Reason::UpdateRestart as i32);
    assert_eq!(w.devices, 1);
    assert!(
        waiting
            .device_statuses
            .iter()
            .any(|c| c.status == "waiting_lock" && c.devices == 1),
        "{:?}",
        waiting.device_statuses
    );
    // Waiting on a lock is not failure: the rollout is running, not paused.
    assert_eq!(waiting.rollout.as_ref().unwrap().state, "running");
    assert_eq!(waiting.batches[0].failed, 0);
    f.hold("inv-2", "controller", false);
    let done = f.wait_state(id, "completed").await;
    assert!(done.waiting_lock.is_empty());
    assert_eq!(done.batches[0].succeeded, 2);
}

#[tokio::test]
async fn a_rollout_pauses_by_itself_when_its_error_threshold_is_crossed() {
    let devices = ["inv-1", "inv-2", "inv-3", "inv-4"];
    // Every OS update fails: the hook exits 1.
    let f = fleet(&devices, Some("false")).await;
    let id = create(
        &f,
        pb::create_rollout_request::Target::OsVersion("2.0".into()),
        strategy(1, &[1]),
    )
    .await;
    let paused = f.wait_state(id, "paused").await;
    let info = paused.rollout.as_ref().unwrap();
    assert!(
        info.message.contains("error threshold crossed: 1 failed"),
        "{info:?}"
    );
    // The canary failed; nobody else was started.
    assert_eq!(paused.batches[0].failed, 1);
    assert!(paused.batches[1..].iter().all(|b| b.queued == b.size));
    // Resuming acknowledges that failure: the next batch starts, fails, and
    // pauses the rollout again.
    let mut api = f.rollouts().await;
    api.resume_rollout(pb::RolloutActionRequest {
        id,
        actor: "ops@example".into(),
        reason: "hook fixed, retry".into(),
    })
    .await
    .unwrap();
    let again = eventually(60, "the second batch to fail and pause", || async {
        let s = f.status(id).await;
        (s.rollout.as_ref().unwrap().state == "paused" && s.batches[1].failed == 1).then_some(s)
    })
    .await;
    assert_eq!(again.batches[2].queued, again.batches[2].size);
    // Pausing a paused rollout is refused; aborting ends it.
    let err = api
        .pause_rollout(pb::RolloutActionRequest {
            id,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let aborted = api
        .abort_rollout(pb::RolloutActionRequest {
            id,
            actor: "ops@example".into(),
            reason: "giving up".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap();
    assert_eq!(aborted.state, "aborted");
    assert!(aborted.message.contains("giving up"));
}

#[tokio::test]
async fn a_second_active_rollout_is_refused_unless_it_supersedes() {
    let devices = ["inv-1", "inv-2"];
    let f = fleet(&devices, None).await;
    for d in devices {
        f.hold(d, "controller", true);
        f.wait_held(d, "controller").await;
    }
    // r3 waits on both controllers, so it stays active.
    let first = create(&f, release_target("r3"), strategy(0, &[])).await;
    let mut api = f.rollouts().await;
    let refused = api
        .create_rollout(pb::CreateRolloutRequest {
            fleet: "site".into(),
            target: Some(release_target("r2")),
            strategy: Some(strategy(0, &[])),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("still active"), "{refused:?}");
    // An OS rollout is another kind: allowed alongside.
    let second = api
        .create_rollout(pb::CreateRolloutRequest {
            fleet: "site".into(),
            target: Some(release_target("r2")),
            strategy: Some(strategy(0, &[])),
            supersede: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .rollout
        .unwrap();
    assert_eq!(f.status(first).await.rollout.unwrap().state, "superseded");
    // The newer assignment supersedes the older pending ones on each device;
    // r2 leaves the controller alone, so it applies despite the locks.
    f.wait_state(second.id, "completed").await;
    let listed = api
        .list_rollouts(pb::ListRolloutsRequest {
            fleet: "site".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .rollouts;
    assert_eq!(
        listed.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![second.id, first]
    );
}

#[tokio::test]
async fn bad_rollout_requests_name_the_field() {
    let f = fleet(&[], None).await;
    let mut api = f.rollouts().await;
    let cases: Vec<(pb::CreateRolloutRequest, &str)> = vec![
        (
            pb::CreateRolloutRequest {
                fleet: "site".into(),
                ..Default::default()
            },
            "target",
        ),
        (
            pb::CreateRolloutRequest {
                fleet: "site".into(),
                target: Some(release_target("r2")),
                strategy: Some(pb::RolloutStrategy {
                    batches: vec![pb::Amount {
                        amount: Some(pb::amount::Amount::Percent(150)),
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            },
            "strategy.batches[0]",
        ),
        (
            pb::CreateRolloutRequest {
                fleet: "site".into(),
                target: Some(release_target("r2")),
                strategy: Some(pb::RolloutStrategy {
                    on_error: "explode".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "strategy.on_error",
        ),
        (
            pb::CreateRolloutRequest {
                fleet: "Not A Fleet".into(),
                target: Some(release_target("r2")),
                ..Default::default()
            },
            "fleet",
        ),
        (
            pb::CreateRolloutRequest {
                fleet: "site".into(),
                target: Some(pb::create_rollout_request::Target::OsVersion(" ".into())),
                ..Default::default()
            },
            "os_version",
        ),
    ];
    for (req, field) in cases {
        let e = api.create_rollout(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    let missing = api
        .create_rollout(pb::CreateRolloutRequest {
            fleet: "site".into(),
            target: Some(release_target("nope")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let unknown = api
        .get_rollout(pb::GetRolloutRequest { id: 4242 })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let zero = api
        .get_rollout(pb::GetRolloutRequest { id: 0 })
        .await
        .unwrap_err();
    assert_eq!(zero.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn watch_rollout_streams_progress_until_the_rollout_ends() {
    let devices = ["inv-1", "inv-2"];
    let f = fleet(&devices, None).await;
    // Both controllers hold their locks: r3 waits until the test lets go.
    for d in devices {
        f.hold(d, "controller", true);
        f.wait_held(d, "controller").await;
    }
    let id = create(&f, release_target("r3"), strategy(0, &[])).await;
    let mut stream = f
        .rollouts()
        .await
        .watch_rollout(pb::GetRolloutRequest { id })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.rollout.as_ref().unwrap().state, "running");
    let mut seen = vec![("running".to_owned(), 0)];
    for d in devices {
        f.hold(d, "controller", false);
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while let Some(msg) = tokio::time::timeout_at(deadline, stream.message())
        .await
        .expect("the watch ends within 60 s")
        .unwrap()
    {
        let r = msg.rollout.as_ref().unwrap();
        let finished: u64 = msg.batches.iter().map(|b| b.succeeded).sum();
        seen.push((r.state.clone(), finished));
    }
    assert_eq!(
        seen.last().unwrap(),
        &("completed".to_owned(), 2),
        "{seen:?}"
    );
    assert!(
        seen.len() >= 2,
        "progress was streamed, not only the end: {seen:?}"
    );
}
