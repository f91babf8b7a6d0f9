//! `AgentService.Connect`: one bidirectional stream per device. The agent
//! authenticates, says what it runs and holds, then streams lock reports and
//! acknowledgements; the server streams intents from the device's durable
//! outbox, resending everything unacknowledged after every reconnect.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use super::convert::{ConvertError, at_most, block_name};
use super::pb::{self, agent_service_server::AgentService};
use super::status_from_store;
use crate::app::events::Events;
use crate::background::ingest::Ingestor;
use crate::background::scheduler::Wakeups;
use crate::clock;
use crate::domain::{
    AgentEpoch, ApplyOutcome, BlockName, DeviceId, DeviceReport, Fingerprint, FleetId, Generation,
    IntentKind, IntentSeq, LockReport, LockState, NewEvent, ReleaseId, ReplicaId, ReportedBlock,
    StoredIntent, Timestamp,
};
use crate::edge::auth;
use crate::edge::hub::Hub;
use crate::edge::limits::{
    AGENT_MESSAGE_BURST, AGENT_MESSAGES_PER_SEC, MAX_LOCKS, MAX_PHASE_BYTES, MAX_RELEASE_BLOCKS,
    MAX_TEXT_BYTES, MAX_VERSION_BYTES,
};
use crate::edge::overload::TokenBucket;
use crate::store::intents::{ApplyOp, IntentBody, TargetBlock};
use crate::store::{Store, StoreError};

/// Metadata key naming the device a stream speaks for.
pub const DEVICE_HEADER: &str = "x-lockstep-device";
/// How long a new stream may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Outbound messages buffered per stream before the sender waits.
const SEND_QUEUE: usize = 16;

/// An intent sent on a live stream and not acknowledged this long after is
/// sent again (the agent ignores sequences it has handled), then again after
/// twice as long each time, up to [`RESEND_MAX`]: a stream that went
/// half-open heals well within a replica's lease, and an agent that never
/// acknowledges is not flooded.
pub const RESEND_AFTER: Duration = Duration::from_secs(5);
pub const RESEND_MAX: Duration = Duration::from_secs(60);

pub struct Agents<S> {
    store: S,
    hub: Hub,
    wakeups: Wakeups,
    ingestor: Ingestor,
    events: Events,
    /// This replica: sessions opened here are recorded under its name.
    replica: ReplicaId,
    require_client_cert: bool,
}

impl<S: Store> Agents<S> {
    pub fn new(
        store: S,
        hub: Hub,
        wakeups: Wakeups,
        ingestor: Ingestor,
        events: Events,
        replica: ReplicaId,
    ) -> Self {
        Self {
            store,
            hub,
            wakeups,
            ingestor,
            events,
            replica,
            require_client_cert: false,
        }
    }

    /// With mutual TLS: every stream must come with a client certificate
    /// (verified against the client CA in the handshake) that names its
    /// device id as a DNS subject alternative name.
    pub fn require_client_cert(mut self, required: bool) -> Self {
        self.require_client_cert = required;
        self
    }
}

/// Under mutual TLS, the stream's client certificate must name `device`.
fn check_client_cert<T>(req: &Request<T>, device: &DeviceId) -> Result<(), Status> {
    let certs = req.peer_certs().unwrap_or_default();
    let Some(leaf) = certs.first() else {
        return Err(Status::unauthenticated(
            "a client certificate is required (mutual TLS)",
        ));
    };
    if crate::edge::tls::cert_names_device(leaf, device.as_str()) {
        Ok(())
    } else {
        Err(Status::unauthenticated(format!(
            "the client certificate does not name device {device}"
        )))
    }
}

async fn authenticate<S: Store>(
    store: &S,
    meta: &tonic::metadata::MetadataMap,
) -> Result<DeviceId, Status> {
    let device = meta
        .get(DEVICE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Status::unauthenticated(format!("missing {DEVICE_HEADER} metadata")))?;
    let device =
        DeviceId::new(device).map_err(|_| Status::unauthenticated("invalid device credential"))?;
    let secret = meta
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <credential>"))?;
    let (hash, revoked) = match store.device_credential(&device).await {
        Ok(x) => x,
        // Unknown devices get the same answer as a wrong secret.
        Err(StoreError::NotFound { .. }) => {
            return Err(Status::unauthenticated("invalid device credential"));
        }
        Err(e) => return Err(status_from_store(e)),
    };
    if revoked {
        return Err(Status::unauthenticated("device credential revoked"));
    }
    if !auth::verify_credential(secret, &hash) {
        return Err(Status::unauthenticated("invalid device credential"));
    }
    Ok(device)
}

fn state_to_report(
    state: pb::StateReport,
    last_intent_seq: u64,
) -> Result<DeviceReport, ConvertError> {
    let current_release = (!state.current_release.is_empty())
        .then(|| ReleaseId::new(&state.current_release))
        .transpose()
        .map_err(|e| ConvertError::new("state.current_release", e))?;
    at_most("state.os_version", &state.os_version, MAX_VERSION_BYTES)?;
    if i64::try_from(last_intent_seq).is_err() {
        return Err(ConvertError::new(
            "last_intent_seq",
            format!("at most {}", i64::MAX),
        ));
    }
    if state.blocks.len() > MAX_RELEASE_BLOCKS {
        return Err(ConvertError::new(
            "state.blocks",
            format!("at most {MAX_RELEASE_BLOCKS} blocks"),
        ));
    }
    let mut blocks = std::collections::BTreeMap::new();
    for (i, b) in state.blocks.into_iter().enumerate() {
        let name = block_name(&format!("state.blocks[{i}].block"), &b.block)?;
        at_most(
            format!("state.blocks[{i}].version"),
            &b.version,
            MAX_VERSION_BYTES,
        )?;
        let version = semver::Version::parse(&b.version)
            .map_err(|e| ConvertError::new(format!("state.blocks[{i}].version"), e))?;
        let env_fingerprint = Fingerprint::from_hex(&b.env_fingerprint).ok_or_else(|| {
            ConvertError::new(
                format!("state.blocks[{i}].env_fingerprint"),
                "64 hex digits expected",
            )
        })?;
        blocks.insert(
            name,
            ReportedBlock {
                version,
                env_fingerprint,
            },
        );
    }
    Ok(DeviceReport {
        agent_version: String::new(),
        current_release,
        os_version: (!state.os_version.is_empty()).then_some(state.os_version),
        blocks,
        last_intent_seq: IntentSeq(last_intent_seq),
        reported: clock::now(),
    })
}

fn locks_to_reports(
    device: &DeviceId,
    locks: Vec<pb::BlockLock>,
) -> Result<Vec<LockReport>, ConvertError> {
    if locks.len() > MAX_LOCKS {
        return Err(ConvertError::new(
            "locks",
            format!("at most {MAX_LOCKS} locks"),
        ));
    }
    locks
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            // Checked here, before the report joins a group-commit batch:
            // one device's bad value must never fail another's report.
            if l.generation > Generation::MAX.0 {
                return Err(ConvertError::new(
                    format!("locks[{i}].generation"),
                    format!("at most {}", Generation::MAX.0),
                ));
            }
            Ok(LockReport {
                device: device.clone(),
                block: block_name(&format!("locks[{i}].block"), &l.block)?,
                state: LockState {
                    held: l.held,
                    generation: Generation(l.generation),
                    since: Timestamp(l.since_unix_ms),
                },
            })
        })
        .collect()
}

/// The live event for a lock report: each lock as `block:held` or
/// `block:free`; `None` for an empty report.
fn lock_changed(reports: &[LockReport]) -> Option<crate::app::events::EventKind> {
    (!reports.is_empty()).then(|| crate::app::events::EventKind::LockChanged {
        locks: reports
            .iter()
            .map(|r| format!("{}:{}", r.block, if r.state.held { "held" } else { "free" }))
            .collect(),
    })
}

fn reason_to_pb(s: &str) -> i32 {
    crate::store::intents::reason_from_str(s)
        .map(|r| pb::Reason::from(r) as i32)
        .unwrap_or(pb::Reason::Unspecified as i32)
}

fn target_block_to_pb(t: &TargetBlock) -> pb::TargetBlock {
    use pb::update_strategy::{self as us, Strategy};
    pb::TargetBlock {
        block_version: Some(pb::BlockVersion {
            block: t.name.clone(),
            version: t.version.clone(),
            image_digest: t.image_digest.clone(),
            config: Some(pb::BlockConfig {
                entrypoint: t.entrypoint.clone(),
                command: t.command.clone(),
                working_dir: t.working_dir.clone(),
                labels: t.labels.clone(),
            }),
            env: Default::default(),
            depends_on: t
                .depends_on
                .iter()
                .map(|(b, r)| pb::Dependency {
                    block: b.clone(),
                    restart: *r,
                })
                .collect(),
            update_strategy: Some(pb::UpdateStrategy {
                strategy: Some(match t.hand_over_timeout_secs {
                    Some(secs) => Strategy::HandOver(us::HandOver {
                        timeout_seconds: u32::try_from(secs).unwrap_or(u32::MAX),
                    }),
                    None => Strategy::DownloadThenKill(us::DownloadThenKill {}),
                }),
            }),
        }),
        env: t.env.clone(),
        env_fingerprint: t.env_fingerprint.clone(),
    }
}

/// A stored intent as the wire message the agent receives.
pub fn intent_to_pb(i: &StoredIntent) -> Result<pb::Intent, serde_json::Error> {
    use pb::intent::Kind;
    use pb::operation::Kind as Op;
    let body = IntentBody::from_json(&i.body)?;
    let kind = match body {
        IntentBody::ReleaseRequest {
            block,
            reason,
            handover,
            because_of,
            generation,
            target,
            window,
            deadline_ms,
        } => Kind::ReleaseRequest(pb::ReleaseRequest {
            block,
            reason: reason_to_pb(&reason),
            handover,
            because_of: because_of.unwrap_or_default(),
            generation,
            window: window.map(|(s, e)| pb::Window {
                start_unix_ms: s,
                end_unix_ms: e,
            }),
            deadline_unix_ms: deadline_ms.unwrap_or_default(),
            target,
        }),
        IntentBody::Apply {
            operation,
            fence,
            disturbed,
            forced,
        } => {
            let kind = match operation {
                ApplyOp::ReleaseUpdate { release, blocks } => {
                    Op::ReleaseUpdate(pb::operation::ReleaseUpdate {
                        release,
                        blocks: blocks.iter().map(target_block_to_pb).collect(),
                    })
                }
                ApplyOp::EnvUpdate { blocks } => Op::EnvUpdate(pb::operation::EnvUpdate {
                    blocks: blocks.iter().map(target_block_to_pb).collect(),
                }),
                ApplyOp::RestartBlock { block } => Op::RestartBlock(block),
                ApplyOp::StopBlock { block } => Op::StopBlock(block),
                ApplyOp::StartBlock { block } => Op::StartBlock(target_block_to_pb(&block)),
                ApplyOp::Reboot => Op::Reboot(pb::operation::Empty {}),
                ApplyOp::Shutdown => Op::Shutdown(pb::operation::Empty {}),
                ApplyOp::OsUpdate { version } => Op::OsUpdate(version),
            };
            Kind::Apply(pb::Apply {
                operation: Some(pb::Operation { kind: Some(kind) }),
                fence: fence
                    .into_iter()
                    .map(|(block, generation)| pb::BlockLock {
                        block,
                        held: false,
                        generation,
                        since_unix_ms: 0,
                    })
                    .collect(),
                disturbed: disturbed
                    .into_iter()
                    .map(|d| pb::Disturbance {
                        block: d.block,
                        reason: reason_to_pb(&d.reason),
                        handover: d.handover,
                        because_of: d.because_of.unwrap_or_default(),
                        cause: 0,
                    })
                    .collect(),
                forced,
            })
        }
        IntentBody::Notice {
            block,
            reason,
            message,
        } => Kind::Notice(pb::Notice {
            block,
            reason: reason_to_pb(&reason),
            message,
        }),
        IntentBody::Cancel { seq } => Kind::Cancel(pb::Cancel { intent_seq: seq }),
    };
    Ok(pb::Intent {
        seq: i.seq.0,
        operation_id: i
            .operation
            .map(|o| u64::try_from(o.0).unwrap_or(0))
            .unwrap_or(0),
        kind: Some(kind),
    })
}

fn ack_name_and_outcome(kind: &pb::intent_ack::Kind) -> (&'static str, Option<ApplyOutcome>) {
    use pb::intent_ack::Kind as K;
    match kind {
        K::Received(_) => ("received", None),
        K::Released(_) => ("released", None),
        K::Deferred(_) => ("deferred", None),
        K::WillReleaseAtWindow(_) => ("will_release_at_window", None),
        K::Refused(_) => ("refused", None),
        K::Applied(_) => ("applied", Some(ApplyOutcome::Applied)),
        K::Failed(f) if !f.held_by.is_empty() => (
            "failed",
            Some(ApplyOutcome::Blocked {
                held_by: f
                    .held_by
                    .iter()
                    .filter_map(|b| BlockName::new(b).ok())
                    .collect(),
            }),
        ),
        K::Failed(f) => (
            "failed",
            Some(ApplyOutcome::Failed {
                error: f.error.clone(),
            }),
        ),
        K::Stale(_) => ("stale", Some(ApplyOutcome::Stale)),
        K::Interrupted(i) => (
            "interrupted",
            Some(ApplyOutcome::Interrupted {
                message: i.message.clone(),
            }),
        ),
    }
}

/// An answer's free text and lists are bounded like every other input.
fn check_ack(ack: &pb::IntentAck) -> Result<(), ConvertError> {
    use pb::intent_ack::Kind as K;
    at_most("ack.block", &ack.block, MAX_TEXT_BYTES)?;
    match &ack.kind {
        Some(K::Deferred(d)) => at_most("ack.deferred.message", &d.message, MAX_TEXT_BYTES),
        Some(K::Refused(r)) => at_most("ack.refused.message", &r.message, MAX_TEXT_BYTES),
        Some(K::Stale(s)) => at_most("ack.stale.message", &s.message, MAX_TEXT_BYTES),
        Some(K::Interrupted(i)) => at_most("ack.interrupted.message", &i.message, MAX_TEXT_BYTES),
        Some(K::Failed(f)) => {
            at_most("ack.failed.error", &f.error, MAX_TEXT_BYTES)?;
            if f.held_by.len() > MAX_RELEASE_BLOCKS {
                return Err(ConvertError::new(
                    "ack.failed.held_by",
                    format!("at most {MAX_RELEASE_BLOCKS} blocks"),
                ));
            }
            for (i, b) in f.held_by.iter().enumerate() {
                at_most(format!("ack.failed.held_by[{i}]"), b, MAX_TEXT_BYTES)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// An ingest failure as a status: the database being away is `UNAVAILABLE`
/// (resend later); anything else is `INTERNAL` (reports are validated before
/// they are submitted, so it is not the caller's fault).
fn ingest_status(e: crate::background::ingest::IngestError) -> Status {
    use crate::background::ingest::IngestError;
    match &e {
        IngestError::Store {
            unavailable: false, ..
        } => Status::internal(e.to_string()),
        _ => Status::unavailable(e.to_string()),
    }
}

fn ack_body(ack: &pb::IntentAck) -> String {
    use pb::intent_ack::Kind as K;
    let detail = match &ack.kind {
        Some(K::Deferred(d)) => {
            serde_json::json!({ "until_unix_ms": d.until_unix_ms, "message": d.message })
        }
        Some(K::Refused(r)) => serde_json::json!({ "message": r.message }),
        Some(K::Failed(f)) => serde_json::json!({ "error": f.error, "held_by": f.held_by }),
        Some(K::Stale(s)) => serde_json::json!({ "message": s.message }),
        Some(K::Interrupted(i)) => serde_json::json!({ "message": i.message }),
        _ => serde_json::json!({}),
    };
    serde_json::json!({ "block": ack.block, "detail": detail }).to_string()
}

type Outbound = Box<Result<pb::ServerMessage, Status>>;

/// What an agent message is, for its span.
fn message_kind(m: &pb::AgentMessage) -> &'static str {
    use pb::agent_message::Msg;
    match &m.msg {
        Some(Msg::Hello(_)) => "hello",
        Some(Msg::LockReport(_)) => "lock_report",
        Some(Msg::State(_)) => "state",
        Some(Msg::Ack(_)) => "ack",
        Some(Msg::Progress(_)) => "progress",
        None => "empty",
    }
}

/// The per-connection state of one agent stream.
struct Session<S> {
    store: S,
    hub: Hub,
    wakeups: Wakeups,
    ingestor: Ingestor,
    events: Events,
    device: DeviceId,
    fleet: FleetId,
    /// This stream's session epoch: acknowledgements are refused once a
    /// newer session holds the device.
    epoch: u64,
    /// Boxed: a channel allocates its slots in blocks of 32, and an unboxed
    /// message is ~360 bytes; idle streams should cost little.
    tx: mpsc::Sender<Outbound>,
    last_sent: u64,
    /// Intents sent on this stream and not acknowledged on it yet: when
    /// each is due to be sent again, and the wait after that.
    sent_at: VecDeque<(u64, tokio::time::Instant, Duration)>,
    last_report_seq: u64,
}

impl<S: Store> Session<S> {
    /// Sends every unacknowledged intent not yet sent on this stream.
    async fn send_outbox(&mut self) -> Result<(), ()> {
        let pending = match self.store.unacked_intents(&self.device).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(device = %self.device, error = %e, "cannot read the outbox; will retry on the next wake");
                return Ok(());
            }
        };
        let from = self.last_sent;
        for intent in pending.iter().filter(|i| i.seq.0 > from) {
            let msg = match intent_to_pb(intent) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(device = %self.device, seq = intent.seq.0, error = %e, "undecodable intent in the outbox; skipped");
                    self.last_sent = intent.seq.0;
                    continue;
                }
            };
            let msg = pb::ServerMessage {
                msg: Some(pb::server_message::Msg::Intent(msg)),
            };
            self.tx.send(Box::new(Ok(msg))).await.map_err(|_| ())?;
            self.last_sent = intent.seq.0;
            self.sent_at.push_back((
                intent.seq.0,
                tokio::time::Instant::now() + RESEND_AFTER,
                RESEND_AFTER,
            ));
        }
        Ok(())
    }

    /// Sends again what is due and still unacknowledged (backing off per
    /// intent); forgets what was acknowledged.
    async fn resend_unacked(&mut self) -> Result<(), ()> {
        let pending = match self.store.unacked_intents(&self.device).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(device = %self.device, error = %e, "cannot read the outbox; will retry");
                return Ok(());
            }
        };
        let unacked: std::collections::HashSet<u64> = pending.iter().map(|i| i.seq.0).collect();
        self.sent_at.retain(|(seq, _, _)| unacked.contains(seq));
        let now = tokio::time::Instant::now();
        let late: std::collections::HashSet<u64> = self
            .sent_at
            .iter()
            .filter(|(_, due, _)| *due <= now)
            .map(|(seq, _, _)| *seq)
            .collect();
        if late.is_empty() {
            return Ok(());
        }
        tracing::info!(device = %self.device, intents = late.len(), "intents unacknowledged; sending them again");
        for intent in pending.iter().filter(|i| late.contains(&i.seq.0)) {
            let Ok(msg) = intent_to_pb(intent) else {
                continue;
            };
            let msg = pb::ServerMessage {
                msg: Some(pb::server_message::Msg::Intent(msg)),
            };
            self.tx.send(Box::new(Ok(msg))).await.map_err(|_| ())?;
        }
        for entry in self
            .sent_at
            .iter_mut()
            .filter(|(seq, _, _)| late.contains(seq))
        {
            entry.2 = (entry.2 * 2).min(RESEND_MAX);
            entry.1 = now + entry.2;
        }
        Ok(())
    }

    /// Refuses writes from a stream whose session a newer one replaced.
    async fn check_current(&self) -> Result<(), Status> {
        match self
            .store
            .session_is_current(&self.device, self.epoch)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(Status::aborted(
                "superseded by a newer stream for this device",
            )),
            Err(e) => Err(status_from_store(e)),
        }
    }

    async fn handle(&mut self, m: pb::AgentMessage) -> Result<(), Status> {
        use pb::agent_message::Msg;
        match m.msg {
            Some(Msg::LockReport(r)) => self.lock_report(r).await,
            Some(Msg::State(s)) => {
                self.check_current().await?;
                let prev = self
                    .store
                    .device_report(&self.device)
                    .await
                    .map_err(status_from_store)?;
                let mut report = state_to_report(s, 0)?;
                if let Some(prev) = prev {
                    report.agent_version = prev.agent_version;
                    report.last_intent_seq = prev.last_intent_seq;
                }
                self.store
                    .record_device_report(&self.device, &report)
                    .await
                    .map_err(status_from_store)?;
                self.wakeups.wake_first(&self.device);
                Ok(())
            }
            Some(Msg::Ack(ack)) => self.ack(ack).await,
            Some(Msg::Progress(p)) => {
                tracing::info!(device = %self.device, seq = p.intent_seq, phase = %p.phase, "operation progress");
                at_most("progress.phase", &p.phase, MAX_PHASE_BYTES)?;
                let info = self
                    .store
                    .intent_info(&self.device, IntentSeq(p.intent_seq))
                    .await
                    .map_err(status_from_store)?;
                if let Some((Some(op_id), IntentKind::Apply)) = info {
                    self.store
                        .record_phase(op_id, &p.phase, clock::now())
                        .await
                        .map_err(status_from_store)?;
                }
                Ok(())
            }
            Some(Msg::Hello(_)) => Err(Status::invalid_argument(
                "hello may only be the first message",
            )),
            None => Err(Status::invalid_argument("msg: empty message")),
        }
    }

    async fn lock_report(&mut self, r: pb::LockReport) -> Result<(), Status> {
        if r.seq <= self.last_report_seq {
            tracing::debug!(device = %self.device, seq = r.seq, last = self.last_report_seq, "out-of-order lock report dropped");
            return Ok(());
        }
        self.last_report_seq = r.seq;
        let reports = locks_to_reports(&self.device, r.locks)?;
        let changed = lock_changed(&reports);
        let logged: Vec<NewEvent> = changed
            .map(|kind| NewEvent::device(&self.fleet, &self.device, None, kind))
            .into_iter()
            .collect();
        let any = !logged.is_empty();
        self.ingestor
            .submit_logged(reports, logged)
            .await
            .map_err(ingest_status)?;
        if any {
            self.events.appended();
        }
        self.wakeups.wake_first(&self.device);
        Ok(())
    }

    async fn ack(&mut self, ack: pb::IntentAck) -> Result<(), Status> {
        let Some(kind) = &ack.kind else {
            return Err(ConvertError::new("ack.kind", "required").into());
        };
        check_ack(&ack)?;
        self.check_current().await?;
        // Answered on this stream: no need to send it again.
        self.sent_at.retain(|(seq, _, _)| *seq != ack.intent_seq);
        let (name, outcome) = ack_name_and_outcome(kind);
        let seq = IntentSeq(ack.intent_seq);
        match self
            .store
            .ack_intent(&self.device, seq, name, &ack_body(&ack), clock::now())
            .await
        {
            Ok(()) => {}
            Err(StoreError::NotFound { .. }) => {
                return Err(Status::invalid_argument(format!(
                    "ack.intent_seq: no intent {seq} for this device"
                )));
            }
            Err(e) => return Err(status_from_store(e)),
        }
        // The answer is a fact, stored above; the reconciler decides what
        // it means for the operation.
        if outcome.is_some() || name != "received" {
            tracing::info!(device = %self.device, seq = seq.0, block = %ack.block, answer = name, "agent answered");
        }
        self.wakeups.wake_first(&self.device);
        Ok(())
    }
}

#[tonic::async_trait]
impl<S: Store> AgentService for Agents<S> {
    type ConnectStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ServerMessage, Status>> + Send>>;

    async fn connect(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let device = authenticate(&self.store, req.metadata()).await?;
        if self.require_client_cert {
            check_client_cert(&req, &device)?;
        }
        crate::telemetry::record_device(&device);
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 30 s"))??;
        let Some(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message must be a hello",
            ));
        };
        at_most(
            "hello.agent_version",
            &hello.agent_version,
            MAX_VERSION_BYTES,
        )?;
        let mut report = state_to_report(hello.state.unwrap_or_default(), hello.last_intent_seq)
            .map_err(|e| e.within("hello"))?;
        report.agent_version = hello.agent_version;
        self.store
            .record_device_report(&device, &report)
            .await
            .map_err(status_from_store)?;
        let agent_epoch = (!hello.agent_epoch.is_empty())
            .then(|| AgentEpoch::new(&hello.agent_epoch))
            .transpose()
            .map_err(|e| ConvertError::new("hello.agent_epoch", e))?;
        let locks = hello.locks.unwrap_or_default();
        let last_report_seq = locks.seq;
        let reports =
            locks_to_reports(&device, locks.locks).map_err(|e| e.within("hello.locks"))?;
        let changed = lock_changed(&reports);
        // The session: this stream takes the device over from any earlier
        // one, on any replica (logged `online`).
        let opened = self
            .store
            .open_session(&device, &self.replica, agent_epoch.as_ref(), clock::now())
            .await
            .map_err(status_from_store)?;
        if opened.new_life {
            tracing::warn!(device = %device, epoch = ?agent_epoch.as_ref().map(AgentEpoch::as_str), "the device's agent started a new life; its lock generations start over");
        }
        let logged: Vec<NewEvent> = changed
            .map(|kind| NewEvent::device(&opened.fleet, &device, None, kind))
            .into_iter()
            .collect();
        self.ingestor
            .submit_logged(reports, logged)
            .await
            .map_err(ingest_status)?;
        let registration = self.hub.register(&device, opened.epoch);
        tracing::info!(device = %device, epoch = opened.epoch, previous = ?opened.previous.as_ref().map(|r| r.as_str()), connected = self.hub.connected(), "agent connected");
        // Online again: the reconciler, woken below, sets its status.
        self.events.appended();
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let welcome = pb::ServerMessage {
            msg: Some(pb::server_message::Msg::Welcome(pb::Welcome {
                device: device.to_string(),
            })),
        };
        tx.send(Box::new(Ok(welcome)))
            .await
            .map_err(|_| Status::cancelled("stream closed"))?;
        let mut session = Session {
            store: self.store.clone(),
            hub: self.hub.clone(),
            wakeups: self.wakeups.clone(),
            ingestor: self.ingestor.clone(),
            events: self.events.clone(),
            device: device.clone(),
            fleet: opened.fleet.clone(),
            epoch: opened.epoch,
            tx,
            last_sent: 0,
            sent_at: VecDeque::new(),
            last_report_seq,
        };
        self.wakeups.wake(&device);
        let mut rate = TokenBucket::new(AGENT_MESSAGES_PER_SEC, AGENT_MESSAGE_BURST);
        tokio::spawn(async move {
            let mut superseded = registration.superseded.clone();
            let mut resend = tokio::time::interval_at(
                tokio::time::Instant::now() + RESEND_AFTER,
                RESEND_AFTER,
            );
            resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let outcome: Result<(), ()> = async {
                Box::pin(session.send_outbox()).await?;
                loop {
                    tokio::select! {
                        msg = inbound.message() => match msg {
                            Ok(Some(_)) if !rate.take() => {
                                tracing::warn!(device = %session.device, "agent stream over its message rate; ending it");
                                let status = Status::resource_exhausted(format!(
                                    "more than {AGENT_MESSAGES_PER_SEC} messages per second; reconnect and resend"
                                ));
                                let _ = session.tx.send(Box::new(Err(status))).await;
                                return Err(());
                            }
                            Ok(Some(m)) => {
                                // A span per message, inside the connection's.
                                let span = tracing::info_span!(
                                    "agent.message",
                                    otel.status_code = tracing::field::Empty,
                                    device = %session.device,
                                    kind = message_kind(&m),
                                );
                                // Boxed so the idle session future stays small.
                                let handled = Box::pin(session.handle(m)).instrument(span.clone()).await;
                                if let Err(status) = handled {
                                    span.record("otel.status_code", "ERROR");
                                    tracing::warn!(device = %session.device, %status, "agent message refused");
                                    let _ = session.tx.send(Box::new(Err(status))).await;
                                    return Err(());
                                }
                            }
                            Ok(None) => return Ok(()),
                            Err(status) => {
                                tracing::info!(device = %session.device, %status, "agent stream ended");
                                return Ok(());
                            }
                        },
                        () = registration.outbox.notified() => Box::pin(session.send_outbox()).await?,
                        _ = resend.tick(), if !session.sent_at.is_empty() => Box::pin(session.resend_unacked()).await?,
                        _ = superseded.changed() => {
                            let _ = session
                                .tx
                                .send(Box::new(Err(Status::aborted(
                                    "superseded by a newer stream for this device",
                                ))))
                                .await;
                            return Ok(());
                        }
                        () = session.tx.closed() => return Ok(()),
                    }
                }
            }
            .await;
            let _ = outcome;
            session.hub.unregister(&session.device, registration.id);
            tracing::info!(device = %session.device, epoch = session.epoch, "agent disconnected");
            // Offline, not failed — unless a newer stream (here or on another
            // replica) took over: only this session's epoch is closed. If this
            // fails, the lease reaper closes it when the replica is gone.
            // Retried while the database is away: a session left open
            // would show the device online for as long as this replica
            // lives.
            let mut wait = Duration::from_millis(500);
            loop {
                match session
                    .store
                    .close_session(&session.device, session.epoch, clock::now())
                    .await
                {
                    Ok(closed) => {
                        if closed {
                            session.events.appended();
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(device = %session.device, error = %e, retry_in = ?wait, "cannot close the agent session; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(30));
                    }
                }
            }
            session.wakeups.wake(&session.device);
        }
        // The call's span lasts as long as the connection: it ends at
        // disconnect, with the messages' spans as its children.
        .instrument(tracing::Span::current()));
        Ok(Response::new(Box::pin(
            ReceiverStream::new(rx).map(|m: Outbound| *m),
        )))
    }
}
