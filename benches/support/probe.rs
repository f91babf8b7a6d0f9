//! A probe agent shared by the benches: one device's real `Connect` stream
//! reporting release `r1` with block `b` 1.0.0, `b` holding its lock. Each
//! sample asks for a restart of `b`, waits for the release request, lets go
//! of the lock (t0) and times until the APPLY arrives (t1); then answers
//! `applied`, reports its state and takes the lock again (a new generation),
//! as the real agent does, and waits until the server has seen it held.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use lockstep::domain::Env;
use lockstep::edge::grpc::agent::DEVICE_HEADER;
use lockstep::edge::grpc::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

/// The probe's block, version and release (the benches create them).
pub const BLOCK: &str = "b";
pub const VERSION: &str = "1.0.0";
pub const RELEASE: &str = "r1";

pub struct Probe {
    device: String,
    auth: MetadataValue<Ascii>,
    tx: mpsc::Sender<pb::AgentMessage>,
    inbound: tonic::Streaming<pb::ServerMessage>,
    ops: pb::operation_service_client::OperationServiceClient<Channel>,
    devices: pb::device_service_client::DeviceServiceClient<Channel>,
    seq: u64,
    generation: u64,
}

fn msg(m: pb::agent_message::Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(m) }
}

fn state() -> pb::StateReport {
    pb::StateReport {
        current_release: RELEASE.into(),
        os_version: String::new(),
        blocks: vec![pb::ReportedBlock {
            block: BLOCK.into(),
            version: VERSION.into(),
            env_fingerprint: lockstep::domain::env::fingerprint(&Env::new()).to_hex(),
        }],
    }
}

fn locks(seq: u64, held: bool, generation: u64) -> pb::LockReport {
    pb::LockReport {
        seq,
        locks: vec![pb::BlockLock {
            block: BLOCK.into(),
            held,
            generation,
            since_unix_ms: lockstep::clock::now().0,
        }],
    }
}

impl Probe {
    /// Connects `device` (with its `credential`) and says hello, `b` held;
    /// `auth` is the operator's `authorization` value for the API calls.
    pub async fn connect(
        channel: Channel,
        auth: MetadataValue<Ascii>,
        device: &str,
        credential: &str,
    ) -> Probe {
        let (tx, rx) = mpsc::channel::<pb::AgentMessage>(64);
        let (seq, generation) = (1, 1);
        tx.send(msg(pb::agent_message::Msg::Hello(pb::Hello {
            agent_version: "bench-probe".into(),
            state: Some(state()),
            locks: Some(locks(seq, true, generation)),
            last_intent_seq: 0,
            agent_epoch: String::new(),
        })))
        .await
        .expect("hello");
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        req.metadata_mut()
            .insert(DEVICE_HEADER, device.parse().expect("device header"));
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {credential}")
                .parse()
                .expect("credential header"),
        );
        let inbound = pb::agent_service_client::AgentServiceClient::new(channel.clone())
            .connect(req)
            .await
            .expect("Connect")
            .into_inner();
        Probe {
            device: device.to_owned(),
            auth,
            tx,
            inbound,
            ops: pb::operation_service_client::OperationServiceClient::new(channel.clone()),
            devices: pb::device_service_client::DeviceServiceClient::new(channel),
            seq,
            generation,
        }
    }

    fn req<T>(&self, m: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(m);
        r.metadata_mut().insert("authorization", self.auth.clone());
        r
    }

    async fn send(&self, m: pb::agent_message::Msg) {
        self.tx.send(msg(m)).await.expect("probe stream open");
    }

    /// A lock report the server has nothing to decide on, then a read of
    /// the device's state showing it: transport, ingest and a read, in ms.
    #[allow(dead_code)] // each bench binary includes this file; not all use it
    pub async fn baseline(&mut self) -> f64 {
        self.seq += 1;
        let t0 = Instant::now();
        self.send(pb::agent_message::Msg::LockReport(locks(
            self.seq,
            true,
            self.generation,
        )))
        .await;
        let r = self.req(pb::GetDeviceStateRequest {
            id: self.device.clone(),
        });
        self.devices
            .get_device_state(r)
            .await
            .expect("GetDeviceState");
        t0.elapsed().as_secs_f64() * 1000.0
    }

    /// The next server message that is an intent of the kind `want` picks,
    /// within 30 s; returns its sequence number.
    async fn next_intent(&mut self, what: &str, want: fn(&pb::intent::Kind) -> bool) -> u64 {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.inbound.next())
                .await
                .unwrap_or_else(|_| panic!("probe {}: no {what} within 30 s", self.device))
                .expect("probe stream open")
                .expect("server message");
            if let Some(pb::server_message::Msg::Intent(i)) = m.msg
                && i.kind.as_ref().is_some_and(want)
            {
                return i.seq;
            }
        }
    }

    /// One sample: lock release → APPLY, in ms.
    pub async fn sample(&mut self) -> f64 {
        let r = self.req(pb::CreateOperationRequest {
            device: self.device.clone(),
            spec: Some(pb::OperationSpec {
                kind: Some(pb::operation_spec::Kind::RestartBlock(BLOCK.into())),
            }),
            force: None,
            actor: "bench-probe".into(),
        });
        self.ops.create_operation(r).await.expect("CreateOperation");
        self.next_intent("release request", |k| {
            matches!(k, pb::intent::Kind::ReleaseRequest(_))
        })
        .await;
        // b lets go: t0.
        self.generation += 1;
        self.seq += 1;
        let t0 = Instant::now();
        self.send(pb::agent_message::Msg::LockReport(locks(
            self.seq,
            false,
            self.generation,
        )))
        .await;
        let apply_seq = self
            .next_intent("APPLY", |k| matches!(k, pb::intent::Kind::Apply(_)))
            .await;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        // Applied; the state after it; b takes its lock again.
        self.send(pb::agent_message::Msg::Ack(pb::IntentAck {
            intent_seq: apply_seq,
            kind: Some(pb::intent_ack::Kind::Applied(pb::intent_ack::Applied {})),
            block: String::new(),
        }))
        .await;
        self.send(pb::agent_message::Msg::State(state())).await;
        self.generation += 1;
        self.seq += 1;
        self.send(pb::agent_message::Msg::LockReport(locks(
            self.seq,
            true,
            self.generation,
        )))
        .await;
        // The next sample starts once the server has the lock held again
        // (else it could decide on the free lock, and the APPLY would be
        // answered `stale`).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                Instant::now() < deadline,
                "probe {}: the server never saw b held again",
                self.device
            );
            let r = self.req(pb::GetDeviceStateRequest {
                id: self.device.clone(),
            });
            let s = self
                .devices
                .get_device_state(r)
                .await
                .expect("GetDeviceState")
                .into_inner();
            if s.locks
                .iter()
                .any(|l| l.block == BLOCK && l.generation == self.generation)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        ms
    }
}

/// The `p` quantile of `sorted` (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}
