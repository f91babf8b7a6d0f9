//! Faults and hostile input against the real server (issue 13): one
//! device's bad lock report never hurts another's, on both backends, and a
//! new agent life (state wiped) starts a new fencing life, logged and
//! audited. Agents here are driven by hand over raw gRPC streams, so each
//! test says exactly what a device sends.

mod support;

use std::time::Duration;

use lockstep::edge::grpc::pb;
use pb::device_service_client::DeviceServiceClient;
use support::{Chan, Server, eventually};
use tonic::Code;

/// Creates fleet `f` and registers `n` devices `d0`…; their credentials.
async fn devices(ch: Chan, n: usize) -> Vec<String> {
    let mut devs = DeviceServiceClient::new(ch);
    devs.create_fleet(pb::CreateFleetRequest {
        id: "f".into(),
        name: String::new(),
    })
    .await
    .unwrap();
    let mut creds = Vec::new();
    for i in 0..n {
        let reg = devs
            .register_device(pb::RegisterDeviceRequest {
                id: format!("d{i}"),
                fleet: "f".into(),
                tags: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        creds.push(reg.credential);
    }
    creds
}

fn hello(epoch: &str, locks: Vec<pb::BlockLock>) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            agent_version: "test".into(),
            state: Some(pb::StateReport::default()),
            locks: Some(pb::LockReport { seq: 1, locks }),
            last_intent_seq: 0,
            agent_epoch: epoch.into(),
        })),
    }
}

fn lock(block: &str, held: bool, generation: u64) -> pb::BlockLock {
    pb::BlockLock {
        block: block.into(),
        held,
        generation,
        since_unix_ms: 1,
    }
}

fn report(seq: u64, locks: Vec<pb::BlockLock>) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::LockReport(pb::LockReport {
            seq,
            locks,
        })),
    }
}

/// An agent stream driven by hand: the sender stays open until dropped.
async fn connect(
    ch: Chan,
    device: &str,
    credential: &str,
    first: pb::AgentMessage,
) -> (
    tonic::Streaming<pb::ServerMessage>,
    tokio::sync::mpsc::Sender<pb::AgentMessage>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tx.send(first).await.unwrap();
    let mut client = pb::agent_service_client::AgentServiceClient::new(ch);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("x-lockstep-device", device.parse().unwrap());
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    let mut inbound = client.connect(req).await.unwrap().into_inner();
    // The welcome: the hello (and its locks) are committed.
    let welcome = inbound.message().await.unwrap().unwrap();
    assert!(
        matches!(welcome.msg, Some(pb::server_message::Msg::Welcome(_))),
        "{welcome:?}"
    );
    (inbound, tx)
}

async fn locks_of(ch: Chan, device: &str) -> Vec<pb::BlockLock> {
    let mut locks = DeviceServiceClient::new(ch)
        .get_device_state(pb::GetDeviceStateRequest { id: device.into() })
        .await
        .unwrap()
        .into_inner()
        .locks;
    locks.sort_by(|a, b| a.block.cmp(&b.block));
    locks
}

/// A small deterministic generator (no clock, no OS randomness): the same
/// mix every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

const DEVICES: usize = 24;
const REPORTS: u64 = 30;

/// Every device streams `REPORTS` reports of three blocks at once; every
/// third device slips one report with generation 2^64−1 (or 2^63) in at a
/// random place. Only those streams end, with `INVALID_ARGUMENT` naming the
/// field; every other device's last report is what the server shows.
async fn good_and_bad_reports_from_many_devices_fail_only_the_bad_ones(server: &Server) {
    let ch = server.channel().await;
    let creds = devices(ch.clone(), DEVICES).await;
    let mut rng = Lcg(13);
    let mut tasks = Vec::new();
    for (i, cred) in creds.into_iter().enumerate() {
        let bad_at = (i % 3 == 0).then(|| 2 + rng.next() % (REPORTS - 2));
        let bad_value = if rng.next().is_multiple_of(2) {
            u64::MAX
        } else {
            1 << 63
        };
        // Its own connection, as every agent has (the server allows 16
        // streams per connection).
        let ch = server.channel().await;
        tasks.push(tokio::spawn(async move {
            let device = format!("d{i}");
            let (mut inbound, tx) = connect(ch, &device, &cred, hello("", vec![])).await;
            for seq in 2..=REPORTS {
                let g = seq;
                let mut locks = vec![
                    lock("a", seq.is_multiple_of(2), g),
                    lock("b", seq.is_multiple_of(3), g),
                    lock("c", false, g),
                ];
                if bad_at == Some(seq) {
                    locks[1].generation = bad_value;
                }
                if tx.send(report(seq, locks)).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            // Hold the stream open until the server has seen everything:
            // a good stream stays open (no message, no error) for 2 s; a
            // bad one ends with the error.
            let end = tokio::time::timeout(Duration::from_secs(2), inbound.message()).await;
            drop(tx);
            (i, bad_at, end)
        }));
    }
    for t in tasks {
        let (i, bad_at, end) = t.await.unwrap();
        match (bad_at, end) {
            (Some(_), Ok(Err(status))) => {
                assert_eq!(status.code(), Code::InvalidArgument, "d{i}: {status:?}");
                assert!(
                    status.message().contains("locks[1].generation"),
                    "d{i}: {status:?}"
                );
            }
            (None, Err(_elapsed)) => {}
            (bad_at, other) => panic!("d{i} (bad at {bad_at:?}): {other:?}"),
        }
    }
    for i in (0..DEVICES).filter(|i| i % 3 != 0) {
        let device = format!("d{i}");
        let want = vec![
            lock("a", REPORTS.is_multiple_of(2), REPORTS),
            lock("b", REPORTS.is_multiple_of(3), REPORTS),
            lock("c", false, REPORTS),
        ];
        let got: Vec<(String, bool, u64)> = locks_of(ch.clone(), &device)
            .await
            .into_iter()
            .map(|l| (l.block, l.held, l.generation))
            .collect();
        let want: Vec<(String, bool, u64)> = want
            .into_iter()
            .map(|l| (l.block, l.held, l.generation))
            .collect();
        assert_eq!(got, want, "{device}");
    }
    // The bad devices keep what they sent before the bad report.
    for i in (0..DEVICES).filter(|i| i % 3 == 0) {
        let locks = locks_of(ch.clone(), &format!("d{i}")).await;
        assert!(
            locks.iter().all(|l| l.generation < REPORTS),
            "d{i}: {locks:?}"
        );
    }
}

#[tokio::test]
async fn good_and_bad_lock_reports_fail_only_the_bad_ones_on_sqlite() {
    let server = Server::start(&[]);
    good_and_bad_reports_from_many_devices_fail_only_the_bad_ones(&server).await;
}

#[tokio::test]
async fn good_and_bad_lock_reports_fail_only_the_bad_ones_on_postgres() {
    let url = lockstep::testkit::fresh_pg_url().await;
    let server = Server::start_pg(&url);
    good_and_bad_reports_from_many_devices_fail_only_the_bad_ones(&server).await;
}

#[tokio::test]
async fn a_new_agent_epoch_starts_a_new_fencing_life_logged_and_audited() {
    let server = Server::start(&[]);
    let ch = server.channel().await;
    let cred = devices(ch.clone(), 1).await.remove(0);
    let mut watch = pb::operation_service_client::OperationServiceClient::new(ch.clone())
        .watch_events(pb::WatchEventsRequest {
            device: "d0".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let shown = |ch: Chan| async move {
        locks_of(ch, "d0")
            .await
            .into_iter()
            .map(|l| (l.held, l.generation))
            .collect::<Vec<_>>()
    };

    // Life 1: generations up to 10.
    let (s1, tx1) = connect(
        ch.clone(),
        "d0",
        &cred,
        hello("life-1", vec![lock("a", true, 10)]),
    )
    .await;
    assert_eq!(shown(ch.clone()).await, [(true, 10)]);
    drop((s1, tx1));
    // The same life again, with an older generation: fenced off.
    let (s2, tx2) = connect(
        ch.clone(),
        "d0",
        &cred,
        hello("life-1", vec![lock("a", false, 3)]),
    )
    .await;
    assert_eq!(
        shown(ch.clone()).await,
        [(true, 10)],
        "an older generation of the same life is dropped"
    );
    drop((s2, tx2));
    // State wiped: a new epoch, generations from 1 again — taken.
    let (_s3, tx3) = connect(
        ch.clone(),
        "d0",
        &cred,
        hello("life-2", vec![lock("a", false, 1)]),
    )
    .await;
    assert_eq!(
        shown(ch.clone()).await,
        [(false, 1)],
        "the new life's first report is taken"
    );
    tx3.send(report(2, vec![lock("a", true, 2)])).await.unwrap();
    eventually(10, "the new life's next report", || async {
        (shown(ch.clone()).await == [(true, 2)]).then_some(())
    })
    .await;

    // Seen by people: an event and an audit entry.
    let seen = loop {
        let e = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("a new_agent_epoch event within 10 s")
            .unwrap()
            .expect("the watch stays open");
        if e.kind == "new_agent_epoch" {
            break e;
        }
    };
    assert!(seen.message.contains("life-2"), "{seen:?}");
    let audit = pb::audit_service_client::AuditServiceClient::new(ch.clone())
        .list_audit(pb::ListAuditRequest {
            action: "new_agent_epoch".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert!(audit[0].subject.contains("d0"), "{audit:?}");

    // A hello naming a malformed epoch is refused, naming the field.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello("not an epoch!", vec![])).await.unwrap();
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("x-lockstep-device", "d0".parse().unwrap());
    req.metadata_mut()
        .insert("authorization", format!("Bearer {cred}").parse().unwrap());
    let err = pb::agent_service_client::AgentServiceClient::new(ch)
        .connect(req)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("hello.agent_epoch"), "{err:?}");
}
