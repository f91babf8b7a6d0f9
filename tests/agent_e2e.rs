//! The agent end to end: a real `lockstep serve`, real `lockstep agent`
//! processes with the `process` runtime, real block processes (shell scripts
//! that take their locks with `flock`), and the real embedded database.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use lockstep::domain::{DeviceId, IntentKind, IntentSeq, NewIntent};
use lockstep::edge::grpc::pb;
use lockstep::store::{AuditFilter, PoolOptions, SqliteStore, Store};
use pb::catalog_service_client::CatalogServiceClient;
use pb::device_service_client::DeviceServiceClient;
use pb::operation_service_client::OperationServiceClient;
use support::{Agent, Server, eventually, free_port};
use tonic::Code;

/// Block `a` holds its lock while `<lock-dir>/hold` exists.
const LOCKING_BLOCK: &str = r#"# lockstep-test MARKER
echo $$ > "$LOCKSTEP_LOCK_DIR/pid"
while true; do
  if [ -f "$LOCKSTEP_LOCK_DIR/hold" ]; then
    flock "$LOCKSTEP_LOCK_FILE" sh -c 'while [ -f "$LOCKSTEP_LOCK_DIR/hold" ]; do sleep 0.05; done'
  fi
  sleep 0.05
done"#;

const PLAIN_BLOCK: &str =
    "# lockstep-test MARKER\necho $$ > \"$LOCKSTEP_LOCK_DIR/pid\"\nwhile true; do sleep 0.2; done";

struct Fixture {
    server: Option<Server>,
    agent: Option<Agent>,
    port: u16,
    dir: tempfile::TempDir,
    data_dir: PathBuf,
    marker: String,
    credential: String,
    api_port: u16,
}

impl Fixture {
    fn script(&self, block: &str) -> String {
        let body = if block == "a" {
            LOCKING_BLOCK
        } else {
            PLAIN_BLOCK
        };
        body.replace("MARKER", &self.marker)
    }

    fn command(&self, block: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), self.script(block)]
    }

    fn lock_root(&self) -> PathBuf {
        self.dir.path().join("locks")
    }

    fn lock_dir(&self, block: &str) -> PathBuf {
        self.lock_root().join(block)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start_server(&mut self) {
        let listen = format!("127.0.0.1:{}", self.port);
        self.server = Some(Server::spawn_at(
            &listen,
            &["--data-dir", self.data_dir.to_str().unwrap()],
            None,
        ));
    }

    fn stop_server(&mut self) {
        if let Some(s) = self.server.take() {
            assert!(s.terminate().success());
        }
    }

    fn start_agent(&mut self, hook_reboot: &str) {
        let d = self.dir.path();
        let args: Vec<String> = vec![
            "--server".into(),
            self.url(),
            "--device".into(),
            "dev-1".into(),
            "--credential-file".into(),
            d.join("credential").to_str().unwrap().into(),
            "--lock-root".into(),
            self.lock_root().to_str().unwrap().into(),
            "--state-dir".into(),
            d.join("agent-state").to_str().unwrap().into(),
            "--manifest".into(),
            d.join("manifest.json").to_str().unwrap().into(),
            "--api-listen".into(),
            format!("127.0.0.1:{}", self.api_port),
            "--lock-poll".into(),
            "100ms".into(),
            "--hook-reboot".into(),
            hook_reboot.into(),
            "--hook-os-update".into(),
            hook_reboot.into(),
        ];
        let agent = Agent::spawn(&args);
        agent.wait_log("connected to the server");
        self.agent = Some(agent);
    }

    async fn channel(&self) -> support::Chan {
        self.server
            .as_ref()
            .expect("server running")
            .channel()
            .await
    }

    async fn state(&self) -> pb::GetDeviceStateResponse {
        DeviceServiceClient::new(self.channel().await)
            .get_device_state(pb::GetDeviceStateRequest { id: "dev-1".into() })
            .await
            .unwrap()
            .into_inner()
    }

    async fn lock_of(&self, block: &str) -> Option<pb::BlockLock> {
        self.state()
            .await
            .locks
            .into_iter()
            .find(|l| l.block == block)
    }

    fn hold(&self, block: &str, on: bool) {
        let f = self.lock_dir(block).join("hold");
        if on {
            std::fs::write(f, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(f);
        }
    }

    async fn create_op(&self, spec: pb::operation_spec::Kind) -> pb::OperationInfo {
        OperationServiceClient::new(self.channel().await)
            .create_operation(pb::CreateOperationRequest {
                device: "dev-1".into(),
                spec: Some(pb::OperationSpec { kind: Some(spec) }),
                force: None,
                actor: "test".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .operation
            .unwrap()
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

    async fn wait_op(&self, id: u64, status: &str) -> pb::OperationInfo {
        eventually(30, &format!("operation {id} to be {status}"), || async {
            let op = self.op(id).await;
            (op.status == status).then_some(op)
        })
        .await
    }

    fn token(&self, block: &str) -> String {
        std::fs::read_to_string(self.lock_dir(block).join("token")).unwrap()
    }

    fn intent_file(&self, block: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(self.lock_dir(block).join("intent.json"))
            .unwrap_or_else(|_| "{}".into());
        serde_json::from_str(&text).unwrap_or_default()
    }

    fn intents_in_file(&self, block: &str) -> Vec<serde_json::Value> {
        self.intent_file(block)["intents"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.agent.take();
        self.server.take();
        // Block processes outlive the agent by design; end this test's.
        let _ = std::process::Command::new("pkill")
            .args(["-f", &format!("lockstep-test {}", self.marker)])
            .status();
    }
}

async fn setup() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!(
        "m{}",
        dir.path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(['.', '-'], "")
    );
    let data_dir = dir.path().join("server-data");
    let mut fx = Fixture {
        server: None,
        agent: None,
        port: free_port(),
        dir,
        data_dir,
        marker,
        credential: String::new(),
        api_port: free_port(),
    };
    fx.start_server();
    let ch = fx.channel().await;
    let mut cat = CatalogServiceClient::new(ch.clone());
    let mut devs = DeviceServiceClient::new(ch);
    devs.create_fleet(pb::CreateFleetRequest {
        id: "site".into(),
        name: String::new(),
    })
    .await
    .unwrap();
    // These tests are about locks: no operation waits for a maintenance
    // window unless a test says so.
    set_policy(&fx, &[]).await;
    let mut manifest_blocks = Vec::new();
    for (i, block) in ["a", "b", "c"].into_iter().enumerate() {
        cat.create_block(pb::CreateBlockRequest {
            name: block.into(),
            description: String::new(),
        })
        .await
        .unwrap();
        cat.create_block_version(pb::CreateBlockVersionRequest {
            block_version: Some(pb::BlockVersion {
                block: block.into(),
                version: "1.0.0".into(),
                image_digest: format!("sha256:{:064x}", i + 1),
                config: Some(pb::BlockConfig {
                    command: fx.command(block),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
        manifest_blocks.push(serde_json::json!({
            "name": block, "version": "1.0.0", "command": fx.command(block), "env": {}
        }));
    }
    cat.create_release(pb::CreateReleaseRequest {
        id: "r1".into(),
        fleet: "site".into(),
        blocks: ["a", "b", "c"]
            .iter()
            .map(|b| pb::BlockRef {
                block: (*b).into(),
                version: "1.0.0".into(),
            })
            .collect(),
        env: Default::default(),
    })
    .await
    .unwrap();
    let reg = devs
        .register_device(pb::RegisterDeviceRequest {
            id: "dev-1".into(),
            fleet: "site".into(),
            tags: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    fx.credential = reg.credential.clone();
    std::fs::write(fx.dir.path().join("credential"), &reg.credential).unwrap();
    let manifest =
        serde_json::json!({ "release": "r1", "os_version": "1.0", "blocks": manifest_blocks });
    std::fs::write(fx.dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    fx
}

fn reboot_hook(dir: &Path) -> String {
    format!("echo rebooted >> {}", dir.join("reboots").display())
}

/// An agent stream driven by hand: the sender stays open until dropped.
async fn raw_connect(
    fx: &Fixture,
    device: &str,
    credential: &str,
    first: pb::AgentMessage,
) -> Result<
    (
        tonic::Streaming<pb::ServerMessage>,
        tokio::sync::mpsc::Sender<pb::AgentMessage>,
    ),
    tonic::Status,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(first).await.unwrap();
    let mut client = pb::agent_service_client::AgentServiceClient::new(fx.channel().await);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("x-lockstep-device", device.parse().unwrap());
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    client.connect(req).await.map(|r| (r.into_inner(), tx))
}

fn lock_msg(seq: u64, block: &str, held: bool, generation: u64) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::LockReport(pb::LockReport {
            seq,
            locks: vec![pb::BlockLock {
                block: block.into(),
                held,
                generation,
                since_unix_ms: 1,
            }],
        })),
    }
}

fn pid_of(fx: &Fixture, block: &str) -> u32 {
    std::fs::read_to_string(fx.lock_dir(block).join("pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

async fn ack_kinds(data_dir: &Path, seq: u64) -> Vec<String> {
    let Ok(store) = SqliteStore::open(data_dir, &PoolOptions::default()).await else {
        return vec![];
    };
    let kinds = sqlx::query_scalar("SELECT kind FROM intent_acks WHERE seq = $1 ORDER BY id")
        .bind(seq as i64)
        .fetch_all(store.pool())
        .await
        .unwrap_or_default();
    store.pool().close().await;
    kinds
}

/// Appends intents to the device's outbox directly, as the scheduler would,
/// while the server is stopped.
async fn inject(fx: &Fixture, intents: Vec<NewIntent>) -> Vec<IntentSeq> {
    let store = SqliteStore::open(&fx.data_dir, &PoolOptions::default())
        .await
        .unwrap();
    let seqs = store
        .append_intents(
            &DeviceId::new("dev-1").unwrap(),
            &intents,
            lockstep::clock::now(),
        )
        .await
        .unwrap();
    store.pool().close().await;
    seqs
}

fn hello(seq: u64) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            agent_version: "test".into(),
            state: Some(pb::StateReport::default()),
            locks: Some(pb::LockReport { seq, locks: vec![] }),
            last_intent_seq: 0,
            agent_epoch: String::new(),
        })),
    }
}

#[tokio::test]
async fn agent_connects_reports_locks_and_relays_intents_both_ways() {
    let mut fx = setup().await;
    let hook = reboot_hook(fx.dir.path());
    fx.start_agent(&hook);

    // Connected and reporting what it runs.
    let state = eventually(20, "the agent's first report", || async {
        let s = fx.state().await;
        (s.reported && s.blocks.len() == 3).then_some(s)
    })
    .await;
    assert_eq!(state.current_release, "r1");

    // A lock taken by a block reaches the server.
    fx.hold("a", true);
    let lock = eventually(20, "a's lock to be reported held", || async {
        fx.lock_of("a").await.filter(|l| l.held)
    })
    .await;
    assert!(lock.generation >= 1);

    // A dashboard watches the fleet's events.
    let mut watch = OperationServiceClient::new(fx.channel().await)
        .watch_events(pb::WatchEventsRequest {
            fleet: "site".into(),
            device: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(e)) = watch.message().await {
            let done = e.kind == "applied";
            seen.push(e);
            if done {
                break;
            }
        }
        seen
    });

    // A reboot must wait: a is asked to release, with the reason.
    let op = fx
        .create_op(pb::operation_spec::Kind::Reboot(
            pb::operation_spec::Empty {},
        ))
        .await;
    let waiting = fx.wait_op(op.id, "waiting_lock").await;
    assert_eq!(
        waiting
            .waiting_on
            .iter()
            .map(|d| d.block.as_str())
            .collect::<Vec<_>>(),
        vec!["a"]
    );
    let intents = eventually(20, "the release request in a's intent.json", || async {
        let list = fx.intents_in_file("a");
        (!list.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(intents[0]["reason"], "reboot");
    assert_eq!(intents[0]["handover"], false);
    assert!(
        fx.intents_in_file("b").is_empty(),
        "b holds no lock and is not asked"
    );

    // The block reads it on the local API with its own token, and only its own.
    let api = api_base(&fx);
    let http = reqwest_like::Client::new();
    let seq = intents[0]["seq"].as_u64().unwrap();
    let listed = http
        .get(&format!("{api}/v1/blocks/a/intents"), &fx.token("a"))
        .await;
    assert_eq!(listed.0, 200);
    assert_eq!(listed.1["intents"][0]["seq"].as_u64(), Some(seq));
    let other = http
        .get(&format!("{api}/v1/blocks/a/intents"), &fx.token("b"))
        .await;
    assert_eq!(other.0, 401, "b cannot read a's intents");

    // It defers; the server keeps waiting on it.
    let until = lockstep::clock::now().0 + 60_000;
    let deferred = http
        .post(
            &format!("{api}/v1/blocks/a/intents/{seq}/ack"),
            &fx.token("a"),
            serde_json::json!({"answer": "defer", "until_unix_ms": until, "message": "mid-cycle"}),
        )
        .await;
    assert_eq!(deferred.0, 202, "{:?}", deferred.1);
    let bad = http
        .post(
            &format!("{api}/v1/blocks/a/intents/{seq}/ack"),
            &fx.token("a"),
            serde_json::json!({"answer": "maybe"}),
        )
        .await;
    assert_eq!(bad.0, 400);
    let acks = eventually(20, "the deferral to reach the server", || async {
        let store = SqliteStore::open(&fx.data_dir, &PoolOptions::default())
            .await
            .ok()?;
        let kinds: Vec<String> = sqlx::query_scalar("SELECT kind FROM intent_acks WHERE seq = $1")
            .bind(seq as i64)
            .fetch_all(store.pool())
            .await
            .ok()?;
        kinds.contains(&"deferred".to_owned()).then_some(kinds)
    })
    .await;
    assert!(acks.contains(&"received".to_owned()), "{acks:?}");
    // The deferral is recorded on the operation right after the ack is stored.
    let waiting = eventually(20, "the deferral on the operation", || async {
        let op = fx.op(op.id).await;
        op.waits
            .first()
            .is_some_and(|w| w.deferred_until_unix_ms != 0)
            .then_some(op)
    })
    .await;
    assert_eq!(waiting.status, "waiting_lock");
    let wait = &waiting.waits[0];
    assert_eq!(
        (wait.block.as_str(), wait.deferred_until_unix_ms),
        ("a", until),
        "{wait:?}"
    );
    assert!(wait.since_unix_ms > 0 && wait.since_unix_ms <= lockstep::clock::now().0);

    // It releases and triggers the operation itself: the reboot runs.
    fx.hold("a", false);
    let trig = http
        .post(
            &format!("{api}/v1/blocks/a/trigger"),
            &fx.token("a"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(trig.0, 202);
    fx.wait_op(op.id, "done").await;
    let reboots = std::fs::read_to_string(fx.dir.path().join("reboots")).unwrap();
    assert_eq!(reboots.lines().count(), 1, "the reboot hook ran once");
    assert!(
        fx.intents_in_file("a").is_empty(),
        "answered intents leave the list"
    );
    let seen = tokio::time::timeout(std::time::Duration::from_secs(20), watcher)
        .await
        .expect("the watcher sees the operation through")
        .unwrap();
    let kinds: Vec<&str> = seen.iter().map(|e| e.kind.as_str()).collect();
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("{k} missing from {kinds:?}"))
    };
    assert!(
        pos("blocked_by_lock") < pos("deferred")
            && pos("deferred") < pos("applying")
            && pos("applying") < pos("applied"),
        "{kinds:?}"
    );
    let blocked = &seen[pos("blocked_by_lock")];
    assert_eq!(
        (blocked.device.as_str(), blocked.blocks.clone()),
        ("dev-1", vec!["a:reboot".to_owned()])
    );
    assert_eq!(seen[pos("deferred")].blocks, vec!["a".to_owned()]);
    // a letting go of its lock is an event too, before the reboot goes ahead.
    let freed = seen
        .iter()
        .position(|e| e.kind == "lock_changed" && e.blocks.contains(&"a:free".to_owned()))
        .unwrap_or_else(|| panic!("no lock_changed a:free in {kinds:?}"));
    assert!(
        pos("deferred") < freed && freed < pos("applying"),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn bad_credentials_are_refused_and_a_newer_stream_supersedes_the_older() {
    let fx = setup().await;
    let err = raw_connect(&fx, "dev-1", "lsd_wrong", hello(1))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = raw_connect(&fx, "ghost", &fx.credential, hello(1))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Unauthenticated);
    // A credential speaks only for its own device.
    let other = DeviceServiceClient::new(fx.channel().await)
        .register_device(pb::RegisterDeviceRequest {
            id: "dev-2".into(),
            fleet: "site".into(),
            tags: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .credential;
    let err = raw_connect(&fx, "dev-1", &other, hello(1))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Unauthenticated);

    let (mut first, _tx1) = raw_connect(&fx, "dev-1", &fx.credential, hello(1))
        .await
        .unwrap();
    let welcome = first.message().await.unwrap().unwrap();
    assert!(matches!(
        welcome.msg,
        Some(pb::server_message::Msg::Welcome(_))
    ));
    let (mut second, _tx2) = raw_connect(&fx, "dev-1", &fx.credential, hello(1))
        .await
        .unwrap();
    assert!(second.message().await.unwrap().is_some());
    let ended = tokio::time::timeout(Duration::from_secs(10), first.message())
        .await
        .expect("first stream ends");
    assert_eq!(
        ended.unwrap_err().code(),
        Code::Aborted,
        "the older stream is told it was superseded"
    );
    // A revoked credential no longer connects.
    let store = SqliteStore::open(&fx.data_dir, &PoolOptions::default())
        .await
        .unwrap();
    store
        .revoke_device_credential(&DeviceId::new("dev-1").unwrap())
        .await
        .unwrap();
    let err = raw_connect(&fx, "dev-1", &fx.credential, hello(1))
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("revoked"), "{}", err.message());
}

#[tokio::test]
async fn out_of_order_lock_reports_never_overwrite_newer_state() {
    let fx = setup().await;
    let (_rx, tx) = raw_connect(&fx, "dev-1", &fx.credential, hello(1))
        .await
        .unwrap();
    tx.send(lock_msg(5, "a", true, 5)).await.unwrap();
    tx.send(lock_msg(3, "a", false, 9)).await.unwrap(); // older report: dropped
    tx.send(lock_msg(6, "a", false, 4)).await.unwrap(); // older generation: fenced
    tx.send(lock_msg(7, "b", true, 1)).await.unwrap(); // marks the end
    eventually(20, "the last report to land", || async {
        fx.lock_of("b").await.filter(|l| l.held)
    })
    .await;
    let a = fx.lock_of("a").await.expect("a reported");
    assert_eq!((a.held, a.generation), (true, 5));
}

#[tokio::test]
async fn unacknowledged_intents_are_redelivered_after_a_server_restart_and_seen_once() {
    let mut fx = setup().await;
    fx.start_agent("true");
    eventually(20, "the agent's first report", || async {
        fx.state().await.reported.then_some(())
    })
    .await;
    fx.stop_server();
    let notice = NewIntent {
        kind: IntentKind::Notice,
        body: lockstep::store::intents::IntentBody::notice(
            &lockstep::domain::BlockName::new("b").unwrap(),
            lockstep::domain::Reason::UpdateNoRestart,
            "written while the server was down",
        )
        .to_json(),
        operation: None,
    };
    let seq = inject(&fx, vec![notice]).await[0];
    fx.start_server();
    eventually(30, "the notice in b's intent.json", || async {
        (fx.intents_in_file("b").len() == 1).then_some(())
    })
    .await;
    eventually(20, "the notice to be acknowledged", || async {
        let k = ack_kinds(&fx.data_dir, seq.0).await;
        (!k.is_empty()).then_some(())
    })
    .await;
    // Lose the acknowledgement: the server resends, the block still sees it once.
    fx.stop_server();
    let store = SqliteStore::open(&fx.data_dir, &PoolOptions::default())
        .await
        .unwrap();
    sqlx::query("UPDATE intents SET acked_ms = NULL WHERE seq = $1")
        .bind(seq.0 as i64)
        .execute(store.pool())
        .await
        .unwrap();
    store.pool().close().await;
    fx.start_server();
    eventually(30, "the resent notice to be acknowledged again", || async {
        (ack_kinds(&fx.data_dir, seq.0).await.len() >= 2).then_some(())
    })
    .await;
    let list = fx.intents_in_file("b");
    assert_eq!(list.len(), 1, "delivered once: {list:?}");
    assert_eq!(list[0]["seq"].as_u64(), Some(seq.0));
}

#[tokio::test]
async fn a_stale_apply_is_refused_and_not_applied() {
    let mut fx = setup().await;
    fx.start_agent("true");
    // a's lock moves on: taken, then released (generation 2).
    fx.hold("a", true);
    eventually(20, "a held", || async {
        fx.lock_of("a").await.filter(|l| l.held)
    })
    .await;
    fx.hold("a", false);
    eventually(20, "a free again", || async {
        fx.lock_of("a")
            .await
            .filter(|l| !l.held && l.generation >= 2)
    })
    .await;
    let pid_before = pid_of(&fx, "a");
    fx.stop_server();
    // An apply decided against generation 0 of a's lock.
    let apply = lockstep::store::intents::IntentBody::Apply {
        operation: lockstep::store::intents::ApplyOp::RestartBlock { block: "a".into() },
        fence: vec![("a".into(), 0)],
        forced: vec![],
        disturbed: vec![lockstep::store::intents::DisturbedBlock {
            block: "a".into(),
            reason: "restart".into(),
            handover: false,
            because_of: None,
        }],
    };
    let seq = inject(
        &fx,
        vec![NewIntent {
            kind: IntentKind::Apply,
            body: apply.to_json(),
            operation: None,
        }],
    )
    .await[0];
    fx.start_server();
    let kinds = eventually(30, "the agent's answer", || async {
        let k = ack_kinds(&fx.data_dir, seq.0).await;
        (!k.is_empty()).then_some(k)
    })
    .await;
    assert_eq!(kinds, vec!["stale".to_owned()]);
    assert_eq!(pid_of(&fx, "a"), pid_before, "a was not restarted");
}

#[tokio::test]
async fn restarting_b_goes_ahead_while_a_holds_its_lock() {
    let mut fx = setup().await;
    fx.start_agent("true");
    fx.hold("a", true);
    eventually(20, "a held", || async {
        fx.lock_of("a").await.filter(|l| l.held)
    })
    .await;
    let (a_before, b_before) = (pid_of(&fx, "a"), pid_of(&fx, "b"));
    assert!(a_before > 0 && b_before > 0);
    let op = fx
        .create_op(pb::operation_spec::Kind::RestartBlock("b".into()))
        .await;
    fx.wait_op(op.id, "done").await;
    eventually(20, "b restarted", || async {
        (pid_of(&fx, "b") != b_before).then_some(())
    })
    .await;
    assert_eq!(pid_of(&fx, "a"), a_before, "a was never touched");
    assert!(fx.intents_in_file("a").is_empty(), "a was not even asked");
}

#[tokio::test]
async fn lock_directories_and_tokens_are_private_to_their_block() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut fx = setup().await;
    // An older agent left a's directory world-writable and its token 0644.
    std::fs::create_dir_all(fx.lock_dir("a")).unwrap();
    std::fs::set_permissions(fx.lock_dir("a"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(fx.lock_dir("a").join("token"), "old-token").unwrap();
    std::fs::set_permissions(
        fx.lock_dir("a").join("token"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    fx.start_agent("true");
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    for block in ["a", "b", "c"] {
        assert_eq!(mode(fx.lock_dir(block)), 0o755, "{block}'s directory");
        assert_eq!(
            mode(fx.lock_dir(block).join("token")),
            0o600,
            "{block}'s token"
        );
        assert_eq!(
            mode(fx.lock_dir(block).join("updates.lock")),
            0o644,
            "{block}'s lock file"
        );
    }
    assert_eq!(fx.token("a"), "old-token", "a kept its token");
}

#[tokio::test]
async fn a_device_whose_agent_state_was_wiped_starts_a_new_life_and_works_again() {
    let mut fx = setup().await;
    fx.start_agent("true");
    // Life 1: a's lock changes a few times, its generation climbs.
    for held in [true, false, true, false] {
        fx.hold("a", held);
        eventually(20, "a's lock to be reported", || async {
            fx.lock_of("a").await.filter(|l| l.held == held)
        })
        .await;
    }
    let before = fx.lock_of("a").await.unwrap().generation;
    assert!(before >= 4, "{before}");
    // Re-flashed: the agent's state is gone; it starts over at generation 1.
    fx.agent.as_mut().unwrap().kill9();
    fx.agent = None;
    std::fs::remove_dir_all(fx.dir.path().join("agent-state")).unwrap();
    fx.start_agent("true");
    fx.hold("a", true);
    let now = eventually(20, "the new life's report of a to be taken", || async {
        fx.lock_of("a").await.filter(|l| l.held)
    })
    .await;
    assert!(
        now.generation < before,
        "{} then {}",
        before,
        now.generation
    );
    // And the device works: b restarts while a holds its lock; a restart of
    // a waits for a, then goes ahead once a lets go.
    let b = fx
        .create_op(pb::operation_spec::Kind::RestartBlock("b".into()))
        .await;
    fx.wait_op(b.id, "done").await;
    let a = fx
        .create_op(pb::operation_spec::Kind::RestartBlock("a".into()))
        .await;
    fx.wait_op(a.id, "waiting_lock").await;
    fx.hold("a", false);
    fx.wait_op(a.id, "done").await;
}

/// Whether `flock -n` can take `f` right now (and lets it go again).
fn can_lock(f: &Path) -> bool {
    std::process::Command::new("flock")
        .args(["-n"])
        .arg(f)
        .arg("true")
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Creates the reboot operation and waits until the agent holds its locks
/// and has said so.
async fn reboot_under_way(fx: &Fixture) -> pb::OperationInfo {
    eventually(20, "the agent's first report", || async {
        fx.state().await.reported.then_some(())
    })
    .await;
    let op = fx
        .create_op(pb::operation_spec::Kind::Reboot(
            pb::operation_spec::Empty {},
        ))
        .await;
    fx.wait_op(op.id, "applying").await;
    eventually(20, "the agent's phase", || async {
        (fx.op(op.id).await.phase == "locks_acquired").then_some(())
    })
    .await;
    let lock_file = fx.lock_dir("a").join("updates.lock");
    eventually(
        20,
        "the agent to hold a's lock during the reboot",
        || async { (!can_lock(&lock_file)).then_some(()) },
    )
    .await;
    op
}

/// The event kinds `watch` has seen for operation `op` up to (and with)
/// `last`.
async fn kinds_until(watch: &mut tonic::Streaming<pb::Event>, op: u64, last: &str) -> Vec<String> {
    let mut kinds = Vec::new();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(30), watch.message())
            .await
            .unwrap_or_else(|_| panic!("no {last} event within 30 s; saw {kinds:?}"))
            .unwrap()
            .expect("the watch stays open");
        if e.operation_id == op {
            kinds.push(e.kind.clone());
            if e.kind == last {
                return kinds;
            }
        }
    }
}

#[tokio::test]
async fn killing_the_agent_mid_reboot_keeps_the_locks_until_the_hook_ends_and_the_reboot_applies() {
    let mut fx = setup().await;
    let done = fx.dir.path().join("hook-done");
    let hook = format!(
        "sleep 3; touch {} # lockstep-hook {}",
        done.display(),
        fx.marker
    );
    fx.start_agent(&hook);
    let op = reboot_under_way(&fx).await;
    fx.agent.as_mut().unwrap().kill9();
    fx.agent = None;
    // A block process trying its lock every 200 ms: it must not get it
    // before the reboot hook has finished, although the agent is gone.
    let lock_file = fx.lock_dir("a").join("updates.lock");
    let got = fx.dir.path().join("got");
    let mut tryer = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "until flock -n {lock} -c 'if [ -f {done} ]; then echo after; else echo before; fi > {got}'; do sleep 0.2; done",
            lock = lock_file.display(),
            done = done.display(),
            got = got.display(),
        ))
        .spawn()
        .unwrap();
    // The new agent waits for the orphaned hook before it does anything.
    fx.start_agent("true");
    assert!(tryer.wait().unwrap().success());
    assert_eq!(
        std::fs::read_to_string(&got).unwrap().trim(),
        "after",
        "a block took its lock while the reboot hook still ran"
    );
    let applied = fx.wait_op(op.id, "done").await;
    assert!(applied.error.is_empty(), "{}", applied.error);
    assert!(done.exists());
}

#[tokio::test]
async fn an_action_killed_with_its_agent_is_reported_interrupted_and_applied_again() {
    let mut fx = setup().await;
    let first = fx.dir.path().join("first-run");
    let runs = fx.dir.path().join("runs");
    // The first run hangs (and is killed below); the second finishes.
    let hook = format!(
        "if [ ! -f {first} ]; then touch {first}; sleep 60; fi; echo run >> {runs} # lockstep-hook {marker}",
        first = first.display(),
        runs = runs.display(),
        marker = fx.marker,
    );
    fx.start_agent(&hook);
    let mut watch = OperationServiceClient::new(fx.channel().await)
        .watch_events(pb::WatchEventsRequest {
            device: "dev-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let op = reboot_under_way(&fx).await;
    fx.agent.as_mut().unwrap().kill9();
    fx.agent = None;
    // The action dies too (its process group: the wrapper, the hook and its
    // `sleep`, which all hold the inherited lock).
    let pid =
        std::fs::read_to_string(fx.dir.path().join("agent-state/runtime/action/pid")).unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-9", "--", &format!("-{}", pid.trim())])
        .status()
        .unwrap();
    assert!(killed.success(), "the hook was running");
    fx.start_agent(&hook);
    let kinds = kinds_until(&mut watch, op.id, "applied").await;
    assert!(
        kinds.iter().any(|k| k == "interrupted"),
        "an interrupted event precedes the second apply: {kinds:?}"
    );
    let applied = fx.wait_op(op.id, "done").await;
    assert!(applied.error.is_empty(), "{}", applied.error);
    assert_eq!(applied.interruptions, 1);
    assert!(
        applied.interrupted.contains("reboot"),
        "{}",
        applied.interrupted
    );
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n");
}

async fn set_policy(fx: &Fixture, needs_window: &[&str]) {
    pb::window_service_client::WindowServiceClient::new(fx.channel().await)
        .set_fleet_policy(pb::SetFleetPolicyRequest {
            policy: Some(pb::FleetPolicy {
                fleet: "site".into(),
                needs_window: needs_window.iter().map(|k| (*k).to_string()).collect(),
                max_deferral_seconds: 0,
                on_deferral_expiry: String::new(),
                needs_approval: vec![],
                release_mode: String::new(),
                on_missed_occurrence: String::new(),
            }),
            update_mask: None,
        })
        .await
        .unwrap();
}

/// An OS update while A holds its lock, with the default policy: it waits for
/// the window, A is told the reason and the window before it opens, and the
/// update runs inside the window once A releases and triggers it.
#[tokio::test]
async fn os_update_waits_for_the_window_and_a_releases_inside_it() {
    use pb::operation_spec::Kind;
    let mut fx = setup().await;
    let hook_log = fx.dir.path().join("os-updates");
    let agent_args_hook = format!("echo rebooted >> {}", hook_log.display());
    fx.start_agent(&agent_args_hook);
    set_policy(&fx, &["os_update", "reboot", "shutdown"]).await;
    fx.hold("a", true);
    eventually(20, "a held", || async {
        fx.lock_of("a").await.filter(|l| l.held)
    })
    .await;

    // No window defined: the update waits, and is not failed.
    let op = fx.create_op(Kind::OsUpdate("2.0".into())).await;
    fx.wait_op(op.id, "waiting_window").await;
    assert_eq!(
        fx.state().await.device.unwrap().status(),
        pb::DeviceStatus::WaitingWindow
    );

    // A window opening in 2 s: a is told now, with the window and deadline.
    let start = lockstep::clock::now().0 + 2_000;
    let end = start + 120_000;
    let mut windows = pb::window_service_client::WindowServiceClient::new(fx.channel().await);
    one_off_window(
        &fx,
        pb::window_scope::Scope::Device("dev-1".into()),
        start,
        end,
    )
    .await;
    let told = eventually(20, "a to be told the window", || async {
        fx.intents_in_file("a")
            .into_iter()
            .find(|i| i["reason"] == "os_update" && !i["window"].is_null())
    })
    .await;
    assert_eq!(told["handover"], false);
    assert_eq!(told["window"], serde_json::json!([start, end]));
    assert_eq!(told["deadline_unix_ms"].as_i64(), Some(end));
    assert_eq!(fx.op(op.id).await.status, "waiting_window");
    let next = windows
        .next_windows(pb::NextWindowsRequest {
            device: "dev-1".into(),
            count: 3,
        })
        .await
        .unwrap()
        .into_inner()
        .occurrences;
    assert_eq!(
        next.first().map(|w| (w.start_unix_ms, w.end_unix_ms)),
        Some((start, end))
    );

    // The window opens; a still holds its lock, so the update waits on a.
    waits_on_a(&fx, op.id, pb::Reason::OsUpdate).await;
    assert!(lockstep::clock::now().0 >= start, "not before the window");
    // a releases inside the window and triggers the update itself.
    fx.hold("a", false);
    let http = reqwest_like::Client::new();
    let trig = http
        .post(
            &format!("{}/v1/blocks/a/trigger", api_base(&fx)),
            &fx.token("a"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(trig.0, 202);
    fx.wait_op(op.id, "done").await;
    assert!(
        std::fs::read_to_string(&hook_log)
            .unwrap_or_default()
            .contains("rebooted")
    );
    let state = eventually(20, "the new OS version", || async {
        let s = fx.state().await;
        (s.os_version == "2.0").then_some(s)
    })
    .await;
    assert_eq!(state.current_release, "r1");
    // After the simulated reboot a takes its lock again.
    fx.hold("a", true);
    eventually(20, "a held again", || async {
        fx.lock_of("a").await.filter(|l| l.held)
    })
    .await;
}

async fn set_deferral(fx: &Fixture, seconds: u64, expiry: &str) {
    pb::window_service_client::WindowServiceClient::new(fx.channel().await)
        .set_fleet_policy(pb::SetFleetPolicyRequest {
            policy: Some(pb::FleetPolicy {
                fleet: "site".into(),
                needs_window: vec![],
                max_deferral_seconds: seconds,
                on_deferral_expiry: expiry.into(),
                needs_approval: vec![],
                release_mode: String::new(),
                on_missed_occurrence: String::new(),
            }),
            update_mask: None,
        })
        .await
        .unwrap();
}

/// A holds and defers; the fleet allows 2 s of deferral, then forces: A is
/// restarted anyway, and the override is audited as time-forced.
#[tokio::test]
async fn a_deferral_past_the_limit_is_time_forced_when_the_policy_says_force() {
    let mut fx = setup().await;
    fx.start_agent("true");
    set_deferral(&fx, 2, "force").await;
    fx.hold("a", true);
    eventually(20, "a held", || async {
        fx.lock_of("a").await.filter(|l| l.held)
    })
    .await;
    let a_pid = pid_of(&fx, "a");
    let op = fx
        .create_op(pb::operation_spec::Kind::RestartBlock("a".into()))
        .await;
    waits_on_a(&fx, op.id, pb::Reason::Restart).await;
    let seq = eventually(20, "the request", || async {
        fx.intents_in_file("a")
            .first()
            .and_then(|i| i["seq"].as_u64())
    })
    .await;
    let until = lockstep::clock::now().0 + 3_600_000;
    let http = reqwest_like::Client::new();
    let r = http
        .post(
            &format!("{}/v1/blocks/a/intents/{seq}/ack", api_base(&fx)),
            &fx.token("a"),
            serde_json::json!({"answer": "defer", "until_unix_ms": until, "message": "mid-cycle"}),
        )
        .await;
    assert_eq!(r.0, 202);
    fx.wait_op(op.id, "done").await;
    eventually(20, "a restarted despite its lock", || async {
        (pid_of(&fx, "a") != a_pid).then_some(())
    })
    .await;
    let store = SqliteStore::open(&fx.data_dir, &PoolOptions::default())
        .await
        .unwrap();
    let audit = store.list_audit(&AuditFilter::default()).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|(_, e)| e.action == "time_forced" && e.details.contains("\"a\"")),
        "{audit:?}"
    );
}

/// With the notify policy the operation turns overdue (and an event is
/// written) but keeps waiting: A's lock is never overridden.
#[tokio::test]
async fn a_deferral_past_the_limit_turns_the_operation_overdue_when_the_policy_says_notify() {
    let mut fx = setup().await;
    fx.start_agent("true");
    set_deferral(&fx, 1, "notify").await;
    fx.hold("a", true);
    eventually(20, "a held", || async {
        fx.lock_of("a").await.filter(|l| l.held)
    })
    .await;
    let op = fx
        .create_op(pb::operation_spec::Kind::RestartBlock("a".into()))
        .await;
    fx.wait_op(op.id, "overdue").await;
    assert_eq!(
        fx.state().await.device.unwrap().status(),
        pb::DeviceStatus::Overdue
    );
    let store = SqliteStore::open(&fx.data_dir, &PoolOptions::default())
        .await
        .unwrap();
    let audit = store.list_audit(&AuditFilter::default()).await.unwrap();
    assert!(
        audit.iter().any(|(_, e)| e.action == "deferral_expired"),
        "{audit:?}"
    );
    // Releasing still lets it finish.
    fx.hold("a", false);
    fx.wait_op(op.id, "done").await;
}

/// The request's second scenario: a release in which A changed and hands
/// over. A is told `update_restart` with a handover possible; it releases;
/// the new A starts beside the old one, completes the handover and takes the
/// lock; B and C, unchanged, keep running (same process ids).
#[tokio::test]
async fn a_changed_release_hands_over_from_the_old_a_to_the_new_one() {
    let mut fx = setup().await;
    fx.start_agent("true");
    fx.hold("a", true);
    eventually(20, "a held", || async {
        fx.lock_of("a").await.filter(|l| l.held)
    })
    .await;
    let (a_pid, b_pid, c_pid) = (pid_of(&fx, "a"), pid_of(&fx, "b"), pid_of(&fx, "c"));
    // The new A: completes the handover first, then takes its lock.
    let new_a = format!(
        "# lockstep-test {}\n\
         echo $$ > \"$LOCKSTEP_LOCK_DIR/pid\"\n\
         [ \"$LOCKSTEP_HANDOVER\" = 1 ] && echo handed-over > \"$LOCKSTEP_HANDOVER_FILE\"\n\
         exec flock \"$LOCKSTEP_LOCK_FILE\" sh -c 'while true; do sleep 0.2; done'",
        fx.marker
    );
    add_version(
        &fx,
        "a",
        "2.0.0",
        0xa2,
        vec!["sh".into(), "-c".into(), new_a],
        Some(10),
    )
    .await;
    add_release(&fx, "r2", &[("a", "2.0.0"), ("b", "1.0.0"), ("c", "1.0.0")]).await;
    let op = fx
        .create_op(pb::operation_spec::Kind::AssignRelease("r2".into()))
        .await;
    waits_on_a(&fx, op.id, pb::Reason::UpdateRestart).await;
    let told = eventually(20, "a's release request", || async {
        fx.intents_in_file("a")
            .into_iter()
            .find(|i| i["reason"] == "update_restart")
    })
    .await;
    assert_eq!(told["handover"], true, "a is told a handover is possible");
    assert_eq!(told["target"], "r2");
    // A releases; the release applies with a handover.
    fx.hold("a", false);
    fx.wait_op(op.id, "done").await;
    let handed =
        std::fs::read_to_string(fx.lock_dir("a").join("handover.done")).unwrap_or_default();
    assert!(
        handed.contains("handed-over"),
        "the new A completed the handover"
    );
    assert_ne!(pid_of(&fx, "a"), a_pid, "A was replaced");
    assert_eq!(
        (pid_of(&fx, "b"), pid_of(&fx, "c")),
        (b_pid, c_pid),
        "B and C kept running"
    );
    // The new A holds the lock again.
    let lock = eventually(20, "the new A to take its lock", || async {
        fx.lock_of("a").await.filter(|l| l.held)
    })
    .await;
    assert!(lock.generation >= 3);
    let state = fx.state().await;
    assert!(
        state
            .blocks
            .iter()
            .any(|b| b.block == "a" && b.version == "2.0.0"),
        "{:?}",
        state.blocks
    );
}

/// OS updates need a customer's approval of a window occurrence: the
/// operation waits for it, a decline cancels with the customer's message,
/// an approval lets it run inside the approved occurrence only.
#[tokio::test]
async fn a_customer_approves_a_window_occurrence_or_declines() {
    use pb::operation_spec::Kind;
    let mut fx = setup().await;
    fx.start_agent("true");
    let mut windows = pb::window_service_client::WindowServiceClient::new(fx.channel().await);
    windows
        .set_fleet_policy(pb::SetFleetPolicyRequest {
            policy: Some(pb::FleetPolicy {
                fleet: "site".into(),
                needs_window: vec!["os_update".into()],
                needs_approval: vec!["os_update".into()],
                release_mode: String::new(),
                on_missed_occurrence: String::new(),
                max_deferral_seconds: 0,
                on_deferral_expiry: String::new(),
            }),
            update_mask: None,
        })
        .await
        .unwrap();
    let start = lockstep::clock::now().0 + 1_500;
    let end = start + 120_000;
    one_off_window(
        &fx,
        pb::window_scope::Scope::Fleet("site".into()),
        start,
        end,
    )
    .await;

    // Declined: cancelled, with the customer's message.
    let op = fx.create_op(Kind::OsUpdate("2.0".into())).await;
    fx.wait_op(op.id, "waiting_approval").await;
    assert_eq!(
        fx.state().await.device.unwrap().status(),
        pb::DeviceStatus::WaitingApproval
    );
    let pending = |windows: &mut pb::window_service_client::WindowServiceClient<support::Chan>| {
        let mut w = windows.clone();
        async move {
            w.list_approvals(pb::ListApprovalsRequest {
                status: "requested".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .approvals
        }
    };
    let first = pending(&mut windows).await.remove(0);
    assert_eq!(first.operation_id, op.id);
    assert_eq!(
        first
            .candidates
            .first()
            .map(|w| (w.start_unix_ms, w.end_unix_ms)),
        Some((start, end))
    );
    windows
        .decline(pb::DeclineRequest {
            approval_id: first.id,
            message: "harvest week".into(),
            actor: "customer@site".into(),
        })
        .await
        .unwrap();
    let cancelled = fx.wait_op(op.id, "cancelled").await;
    assert!(
        cancelled.error.contains("customer@site") && cancelled.error.contains("harvest week"),
        "{}",
        cancelled.error
    );

    // Approved: applies only inside the approved occurrence.
    let op = fx.create_op(Kind::OsUpdate("2.0".into())).await;
    fx.wait_op(op.id, "waiting_approval").await;
    let req = eventually(20, "a new approval request", || {
        let mut w = windows.clone();
        async move {
            pending(&mut w)
                .await
                .into_iter()
                .find(|a| a.operation_id == op.id)
        }
    })
    .await;
    let bogus = windows
        .approve(pb::ApproveRequest {
            approval_id: req.id,
            occurrence: Some(pb::Window {
                start_unix_ms: start + 1,
                end_unix_ms: end,
            }),
            actor: "customer@site".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        bogus.code(),
        Code::InvalidArgument,
        "only a real candidate can be approved"
    );
    windows
        .approve(pb::ApproveRequest {
            approval_id: req.id,
            occurrence: req.candidates.first().cloned(),
            actor: "customer@site".into(),
        })
        .await
        .unwrap();
    let twice = windows
        .decline(pb::DeclineRequest {
            approval_id: req.id,
            message: String::new(),
            actor: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition);
    fx.wait_op(op.id, "done").await;
    assert!(
        lockstep::clock::now().0 >= start,
        "applied inside the approved occurrence, not before"
    );
    let store = SqliteStore::open(&fx.data_dir, &PoolOptions::default())
        .await
        .unwrap();
    let actions: Vec<String> = store
        .list_audit(&AuditFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.action)
        .collect();
    for a in [
        "approval_requested",
        "approval_declined",
        "approval_approved",
    ] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} missing from {actions:?}"
        );
    }
}

/// A fleet with partial releases: a release that changes A (locked) and B
/// updates B now, reports partially_applied, and updates A once released.
#[tokio::test]
async fn a_partial_release_updates_unlocked_blocks_now_and_locked_ones_when_released() {
    let mut fx = setup().await;
    fx.start_agent("true");
    pb::window_service_client::WindowServiceClient::new(fx.channel().await)
        .set_fleet_policy(pb::SetFleetPolicyRequest {
            policy: Some(pb::FleetPolicy {
                fleet: "site".into(),
                release_mode: "partial".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap();
    fx.hold("a", true);
    eventually(20, "a held", || async {
        fx.lock_of("a").await.filter(|l| l.held)
    })
    .await;
    let (a_pid, b_pid, c_pid) = (pid_of(&fx, "a"), pid_of(&fx, "b"), pid_of(&fx, "c"));
    for (block, image) in [("a", 0xa11), ("b", 0xb11)] {
        add_version(&fx, block, "1.1.0", image, fx.command(block), None).await;
    }
    add_release(&fx, "r2", &[("a", "1.1.0"), ("b", "1.1.0"), ("c", "1.0.0")]).await;
    let op = fx
        .create_op(pb::operation_spec::Kind::AssignRelease("r2".into()))
        .await;
    // Partially applied, and still waiting on a (settled after the partial apply).
    eventually(30, "partially applied, waiting on a", || async {
        let op = fx.op(op.id).await;
        (op.status == "partially_applied"
            && op
                .waiting_on
                .iter()
                .map(|d| d.block.as_str())
                .collect::<Vec<_>>()
                == ["a"])
        .then_some(())
    })
    .await;
    eventually(20, "b updated now", || async {
        (pid_of(&fx, "b") != b_pid).then_some(())
    })
    .await;
    assert_eq!(pid_of(&fx, "a"), a_pid, "a, locked, untouched");
    assert_eq!(pid_of(&fx, "c"), c_pid, "c, unchanged, untouched");
    let state = fx.state().await;
    assert_eq!(
        state.device.as_ref().unwrap().status(),
        pb::DeviceStatus::PartiallyApplied
    );
    let versions: Vec<(String, String)> = state
        .blocks
        .iter()
        .map(|b| (b.block.clone(), b.version.clone()))
        .collect();
    assert!(
        versions.contains(&("a".into(), "1.0.0".into()))
            && versions.contains(&("b".into(), "1.1.0".into())),
        "{versions:?}"
    );
    // A releases: the rest of the release lands.
    fx.hold("a", false);
    fx.wait_op(op.id, "done").await;
    eventually(20, "a updated", || async {
        (pid_of(&fx, "a") != a_pid).then_some(())
    })
    .await;
    let state = eventually(20, "a at 1.1.0", || async {
        let s = fx.state().await;
        s.blocks
            .iter()
            .any(|b| b.block == "a" && b.version == "1.1.0")
            .then_some(s)
    })
    .await;
    assert_eq!(state.device.unwrap().status(), pb::DeviceStatus::InSync);
    assert_eq!(pid_of(&fx, "c"), c_pid);
}

/// An approved occurrence that passes while A still holds its lock is missed;
/// with the fleet's `next` policy the approval moves to the next occurrence
/// by itself and A is told the new window.
#[tokio::test]
async fn a_missed_approved_occurrence_moves_to_the_next_one_when_the_policy_says_so() {
    use pb::operation_spec::Kind;
    let mut fx = setup().await;
    fx.start_agent("true");
    let mut windows = pb::window_service_client::WindowServiceClient::new(fx.channel().await);
    windows
        .set_fleet_policy(pb::SetFleetPolicyRequest {
            policy: Some(pb::FleetPolicy {
                fleet: "site".into(),
                needs_window: vec!["os_update".into()],
                needs_approval: vec!["os_update".into()],
                on_missed_occurrence: "next".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap();
    let now = lockstep::clock::now().0;
    let (first, second) = ((now + 1_000, now + 3_000), (now + 60_000, now + 120_000));
    for (start, end) in [first, second] {
        one_off_window(
            &fx,
            pb::window_scope::Scope::Device("dev-1".into()),
            start,
            end,
        )
        .await;
    }
    fx.hold("a", true);
    eventually(20, "a held", || async {
        fx.lock_of("a").await.filter(|l| l.held)
    })
    .await;
    let op = fx.create_op(Kind::OsUpdate("2.0".into())).await;
    fx.wait_op(op.id, "waiting_approval").await;
    let lister = windows.clone();
    let list = |status: &'static str| {
        let mut w = lister.clone();
        async move {
            w.list_approvals(pb::ListApprovalsRequest {
                status: status.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .approvals
        }
    };
    let req = eventually(20, "the approval request", || async {
        list("requested").await.into_iter().next()
    })
    .await;
    windows
        .approve(pb::ApproveRequest {
            approval_id: req.id,
            occurrence: Some(pb::Window {
                start_unix_ms: first.0,
                end_unix_ms: first.1,
            }),
            actor: "customer@site".into(),
        })
        .await
        .unwrap();
    // A keeps its lock through the first occurrence; then the approval moves.
    let moved = eventually(
        30,
        "the approval to move to the next occurrence",
        || async {
            list("approved").await.into_iter().find(|a| {
                a.approved
                    .as_ref()
                    .is_some_and(|w| w.start_unix_ms == second.0)
            })
        },
    )
    .await;
    assert!(
        moved.decided_by.starts_with("policy"),
        "{}",
        moved.decided_by
    );
    assert_eq!(list("missed").await.len(), 1);
    let told = eventually(20, "a to be told the new window", || async {
        fx.intents_in_file("a")
            .into_iter()
            .find(|i| i["window"] == serde_json::json!([second.0, second.1]))
    })
    .await;
    assert_eq!(told["reason"], "os_update");
    assert_eq!(fx.op(op.id).await.status, "waiting_window");
}

/// The request's first scenario, literally: an OS update while A holds its
/// lock, with the default approval policy. A customer approves a window
/// occurrence; A is told `os_update`, no handover, with the approved window;
/// it releases only inside the window and triggers the update through the
/// local API; the update runs (hooks); after the simulated reboot A takes its
/// lock again.
#[tokio::test]
async fn scenario_1_os_update_in_the_approved_window_triggered_by_a() {
    use pb::operation_spec::Kind;
    let mut fx = setup().await;
    let hook_log = fx.dir.path().join("os-updates");
    fx.start_agent(&format!("echo updated >> {}", hook_log.display()));
    let mut windows = pb::window_service_client::WindowServiceClient::new(fx.channel().await);
    windows
        .set_fleet_policy(pb::SetFleetPolicyRequest {
            policy: Some(pb::FleetPolicy {
                fleet: "site".into(),
                needs_window: vec!["os_update".into(), "reboot".into(), "shutdown".into()],
                needs_approval: vec!["os_update".into()],
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap();
    let start = lockstep::clock::now().0 + 2_500;
    let end = start + 120_000;
    one_off_window(
        &fx,
        pb::window_scope::Scope::Device("dev-1".into()),
        start,
        end,
    )
    .await;
    fx.hold("a", true);
    eventually(20, "a held", || async {
        fx.lock_of("a").await.filter(|l| l.held)
    })
    .await;
    let op = fx.create_op(Kind::OsUpdate("2.0".into())).await;
    fx.wait_op(op.id, "waiting_approval").await;
    let req = eventually(20, "the approval request", || {
        let mut w = windows.clone();
        async move {
            w.list_approvals(pb::ListApprovalsRequest {
                status: "requested".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .approvals
            .into_iter()
            .next()
        }
    })
    .await;
    windows
        .approve(pb::ApproveRequest {
            approval_id: req.id,
            occurrence: Some(pb::Window {
                start_unix_ms: start,
                end_unix_ms: end,
            }),
            actor: "customer@site".into(),
        })
        .await
        .unwrap();
    let told = eventually(20, "a to be told, with the approved window", || async {
        fx.intents_in_file("a")
            .into_iter()
            .find(|i| i["reason"] == "os_update" && i["window"] == serde_json::json!([start, end]))
    })
    .await;
    assert_eq!(
        told["handover"], false,
        "an OS update never offers a handover"
    );
    assert_eq!(told["deadline_unix_ms"].as_i64(), Some(end));
    assert_eq!(told["target"], "2.0");
    // A waits for the window, then releases inside it and triggers the update.
    waits_on_a(&fx, op.id, pb::Reason::OsUpdate).await;
    assert!(lockstep::clock::now().0 >= start);
    fx.hold("a", false);
    let trig = reqwest_like::Client::new()
        .post(
            &format!("{}/v1/blocks/a/trigger", api_base(&fx)),
            &fx.token("a"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(trig.0, 202);
    fx.wait_op(op.id, "done").await;
    assert!(
        lockstep::clock::now().0 < end,
        "applied inside the approved occurrence"
    );
    assert!(
        std::fs::read_to_string(&hook_log)
            .unwrap_or_default()
            .contains("updated")
    );
    eventually(20, "OS 2.0 reported", || async {
        (fx.state().await.os_version == "2.0").then_some(())
    })
    .await;
    fx.hold("a", true);
    eventually(20, "a takes its lock again", || async {
        fx.lock_of("a").await.filter(|l| l.held)
    })
    .await;
}

/// A newer release assignment supersedes a pending older one.
#[tokio::test]
async fn a_newer_release_assignment_supersedes_a_pending_one() {
    let mut fx = setup().await;
    fx.start_agent("true");
    fx.hold("a", true);
    eventually(20, "a held", || async {
        fx.lock_of("a").await.filter(|l| l.held)
    })
    .await;
    add_version(&fx, "a", "1.1.0", 0xa11, fx.command("a"), None).await;
    add_version(&fx, "b", "1.1.0", 0xb11, fx.command("b"), None).await;
    add_release(&fx, "r2", &[("a", "1.1.0"), ("b", "1.0.0"), ("c", "1.0.0")]).await;
    add_release(&fx, "r3", &[("a", "1.0.0"), ("b", "1.1.0"), ("c", "1.0.0")]).await;
    let first = fx
        .create_op(pb::operation_spec::Kind::AssignRelease("r2".into()))
        .await;
    waits_on_a(&fx, first.id, pb::Reason::UpdateRestart).await;
    let second = fx
        .create_op(pb::operation_spec::Kind::AssignRelease("r3".into()))
        .await;
    fx.wait_op(first.id, "superseded").await;
    // r3 leaves a alone: it applies at once although a holds its lock.
    fx.wait_op(second.id, "done").await;
    let state = fx.state().await;
    assert_eq!(state.current_release, "r3");
}

/// Creates a one-off maintenance window `[start, end)` on `scope`.
async fn one_off_window(fx: &Fixture, scope: pb::window_scope::Scope, start: i64, end: i64) {
    pb::window_service_client::WindowServiceClient::new(fx.channel().await)
        .create_window(pb::CreateWindowRequest {
            scope: Some(pb::WindowScope { scope: Some(scope) }),
            rule: Some(pb::create_window_request::Rule::OneOff(pb::OneOffRule {
                start_unix_ms: start,
                end_unix_ms: end,
            })),
        })
        .await
        .unwrap();
}

/// Adds a version of a block to the catalog (`hand_over`: its timeout).
async fn add_version(
    fx: &Fixture,
    block: &str,
    version: &str,
    image: u64,
    command: Vec<String>,
    hand_over: Option<u32>,
) {
    CatalogServiceClient::new(fx.channel().await)
        .create_block_version(pb::CreateBlockVersionRequest {
            block_version: Some(pb::BlockVersion {
                block: block.into(),
                version: version.into(),
                image_digest: format!("sha256:{image:064x}"),
                config: Some(pb::BlockConfig {
                    command,
                    ..Default::default()
                }),
                update_strategy: hand_over.map(|timeout_seconds| pb::UpdateStrategy {
                    strategy: Some(pb::update_strategy::Strategy::HandOver(
                        pb::update_strategy::HandOver { timeout_seconds },
                    )),
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
}

/// Creates a release of the fleet from `block@version` pairs.
async fn add_release(fx: &Fixture, id: &str, blocks: &[(&str, &str)]) {
    CatalogServiceClient::new(fx.channel().await)
        .create_release(pb::CreateReleaseRequest {
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

async fn set_env(fx: &Fixture, owner: pb::env_owner::Owner, name: &str, blocks: &[&str]) {
    DeviceServiceClient::new(fx.channel().await)
        .set_env(pb::SetEnvRequest {
            owner: Some(pb::EnvOwner { owner: Some(owner) }),
            vars: vec![pb::EnvVar {
                name: name.into(),
                value: "1".into(),
                blocks: blocks.iter().map(|b| (*b).to_string()).collect(),
            }],
        })
        .await
        .unwrap();
}

async fn latest_op(fx: &Fixture) -> pb::OperationInfo {
    OperationServiceClient::new(fx.channel().await)
        .list_operations(pb::ListOperationsRequest {
            device: "dev-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .operations
        .remove(0)
}

async fn cancel(fx: &Fixture, id: u64) {
    let op = OperationServiceClient::new(fx.channel().await)
        .cancel_operation(pb::CancelOperationRequest {
            id,
            actor: "test".into(),
            reason: "next row".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    assert_eq!(op.status, "cancelled");
}

/// Waits until the operation waits on exactly block a, for `reason`.
async fn waits_on_a(fx: &Fixture, id: u64, reason: pb::Reason) {
    let op = fx.wait_op(id, "waiting_lock").await;
    let on: Vec<(String, i32)> = op
        .waiting_on
        .iter()
        .map(|d| (d.block.clone(), d.reason))
        .collect();
    assert_eq!(on, vec![("a".to_owned(), reason as i32)], "operation {id}");
}

/// The request's matrix, row by row, with block `a` holding its lock, on a
/// real server, agent and blocks.
#[tokio::test]
async fn seed_matrix_end_to_end_with_a_locked() {
    use pb::env_owner::Owner;
    use pb::operation_spec::{Empty, Kind};
    let mut fx = setup().await;
    fx.start_agent("true");
    fx.hold("a", true);
    eventually(20, "a held", || async {
        fx.lock_of("a").await.filter(|l| l.held)
    })
    .await;
    let a_pid = pid_of(&fx, "a");

    // Restarting or stopping B or C goes ahead.
    for block in ["b", "c"] {
        let before = pid_of(&fx, block);
        let op = fx.create_op(Kind::RestartBlock(block.into())).await;
        fx.wait_op(op.id, "done").await;
        eventually(20, "restarted", || async {
            (pid_of(&fx, block) != before).then_some(())
        })
        .await;
    }

    // Env change for B and C only: applied, B and C restart, A untouched.
    let (b_pid, c_pid) = (pid_of(&fx, "b"), pid_of(&fx, "c"));
    set_env(&fx, Owner::Fleet("site".into()), "UPLINK", &["b", "c"]).await;
    let op = latest_op(&fx).await;
    fx.wait_op(op.id, "done").await;
    eventually(20, "b and c restarted with the new env", || async {
        (pid_of(&fx, "b") != b_pid && pid_of(&fx, "c") != c_pid).then_some(())
    })
    .await;

    // A release in which A is unchanged: applied at once; A is told.
    add_version(&fx, "b", "1.1.0", 0xb2, fx.command("b"), None).await;
    add_release(&fx, "r2", &[("a", "1.0.0"), ("b", "1.1.0"), ("c", "1.0.0")]).await;
    let b_pid = pid_of(&fx, "b");
    let op = fx.create_op(Kind::AssignRelease("r2".into())).await;
    fx.wait_op(op.id, "done").await;
    eventually(20, "b replaced", || async {
        (pid_of(&fx, "b") != b_pid).then_some(())
    })
    .await;
    let notices = fx.intents_in_file("a");
    assert!(
        notices
            .iter()
            .any(|i| i["kind"] == "notice" && i["reason"] == "update_no_restart"),
        "a is told the release leaves it alone: {notices:?}"
    );
    let state = eventually(20, "the device to report r2", || async {
        let s = fx.state().await;
        (s.current_release == "r2").then_some(s)
    })
    .await;
    assert!(
        state
            .blocks
            .iter()
            .any(|b| b.block == "b" && b.version == "1.1.0")
    );

    // Reboot, shutdown and OS update wait for A, with the reason.
    for (kind, reason) in [
        (Kind::Reboot(Empty {}), pb::Reason::Reboot),
        (Kind::Shutdown(Empty {}), pb::Reason::Shutdown),
        (Kind::OsUpdate("2.0".into()), pb::Reason::OsUpdate),
    ] {
        let op = fx.create_op(kind).await;
        waits_on_a(&fx, op.id, reason).await;
        cancel(&fx, op.id).await;
    }

    // Env changes touching A, alone or with B, wait for A.
    set_env(&fx, Owner::Device("dev-1".into()), "GAIN", &["a"]).await;
    let op = latest_op(&fx).await;
    waits_on_a(&fx, op.id, pb::Reason::EnvChange).await;
    cancel(&fx, op.id).await;
    set_env(&fx, Owner::Device("dev-1".into()), "MODE", &["a", "b"]).await;
    let op = latest_op(&fx).await;
    waits_on_a(&fx, op.id, pb::Reason::EnvChange).await;
    cancel(&fx, op.id).await;

    assert_eq!(pid_of(&fx, "a"), a_pid, "a was never restarted");
    let a = fx.lock_of("a").await.unwrap();
    assert!(a.held, "a held its lock throughout");
}

#[tokio::test]
async fn a_force_naming_a_overrides_only_a_and_is_audited() {
    let mut fx = setup().await;
    let hook = reboot_hook(fx.dir.path());
    fx.start_agent(&hook);
    fx.hold("a", true);
    eventually(20, "a held", || async {
        fx.lock_of("a").await.filter(|l| l.held)
    })
    .await;
    let force = |blocks: &[&str]| pb::Force {
        blocks: blocks.iter().map(|b| (*b).to_string()).collect(),
        reason: "inverter replaced on site".into(),
    };
    let create = |f: pb::Force| {
        let ch = fx.channel();
        async move {
            OperationServiceClient::new(ch.await)
                .create_operation(pb::CreateOperationRequest {
                    device: "dev-1".into(),
                    spec: Some(pb::OperationSpec {
                        kind: Some(pb::operation_spec::Kind::Reboot(
                            pb::operation_spec::Empty {},
                        )),
                    }),
                    force: Some(f),
                    actor: "ops@example".into(),
                })
                .await
        }
    };
    // A force without a reason is refused, naming the field.
    let err = create(pb::Force {
        blocks: vec!["a".into()],
        reason: String::new(),
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("force"), "{}", err.message());
    // Forcing b does not override a.
    let op = create(force(&["b"]))
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    waits_on_a(&fx, op.id, pb::Reason::Reboot).await;
    cancel(&fx, op.id).await;
    // Forcing a does: the reboot runs without waiting for a's lock.
    let op = create(force(&["a"]))
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    fx.wait_op(op.id, "done").await;
    assert_eq!(
        std::fs::read_to_string(fx.dir.path().join("reboots"))
            .unwrap()
            .lines()
            .count(),
        1
    );
    let store = SqliteStore::open(&fx.data_dir, &PoolOptions::default())
        .await
        .unwrap();
    let audit = store.list_audit(&AuditFilter::default()).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|(_, e)| e.action.as_str()).collect();
    assert!(
        actions.contains(&"force_requested") && actions.contains(&"force_applied"),
        "{actions:?}"
    );
    assert!(
        audit
            .iter()
            .all(|(_, e)| e.action != "force_applied" || e.reason == "inverter replaced on site")
    );
}

fn api_base(fx: &Fixture) -> String {
    format!("http://127.0.0.1:{}", fx.api_port)
}

/// A tiny HTTP/1.1 client over tokio, enough for the agent's local API.
mod reqwest_like {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub struct Client;

    impl Client {
        pub fn new() -> Self {
            Client
        }

        async fn send(
            &self,
            method: &str,
            url: &str,
            token: &str,
            body: Option<serde_json::Value>,
        ) -> (u16, serde_json::Value) {
            let rest = url.strip_prefix("http://").expect("http url");
            let (host, path) = rest.split_once('/').expect("path");
            let mut stream = tokio::net::TcpStream::connect(host)
                .await
                .expect("connect to the local API");
            let body = body.map(|b| b.to_string()).unwrap_or_default();
            let req = format!(
                "{method} /{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(req.as_bytes()).await.unwrap();
            let mut buf = Vec::new();
            stream.read_to_end(&mut buf).await.unwrap();
            let text = String::from_utf8_lossy(&buf);
            let status: u16 = text
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let json = text
                .split_once("\r\n\r\n")
                .and_then(|(_, b)| serde_json::from_str(b.trim()).ok())
                .unwrap_or(serde_json::Value::Null);
            (status, json)
        }

        pub async fn get(&self, url: &str, token: &str) -> (u16, serde_json::Value) {
            self.send("GET", url, token, None).await
        }

        pub async fn post(
            &self,
            url: &str,
            token: &str,
            body: serde_json::Value,
        ) -> (u16, serde_json::Value) {
            self.send("POST", url, token, Some(body)).await
        }
    }
}
