//! The agent's main loop. One core task owns the runtime, the lock tracker
//! and the durable state; it reacts to four kinds of events: a tick of the
//! lock observer, a message from the server, a request from a block on the
//! local API, and the connection coming up or going down. A separate task
//! keeps the stream to the server up, reconnecting with exponential backoff
//! and jitter.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use super::action::{self, Conclusion, InFlight, Outcome};
use super::api::{self, Answer, ApiState, LocalEvent};
use super::locks::{BlockOwner, LockDir, LockError, LockTracker};
use super::runtime::{
    AnyRuntime, Hooks, HooksRuntime, Manifest, ProcessRuntime, Runtime, RuntimeError,
    current_boot_id, step_fact,
};
use super::state::{BlockIntent, StateError, StateFile, write_atomic};
use crate::clock;
use crate::domain::BlockName;
use crate::edge::grpc::pb;

/// Which runtime performs operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    Process,
    Hooks,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: String,
    /// TLS for an `https://` server (CA, and a client certificate for mTLS).
    pub tls: Option<crate::edge::tls::ClientTls>,
    pub device: String,
    pub credential: String,
    pub lock_root: PathBuf,
    pub state_dir: PathBuf,
    pub runtime: RuntimeKind,
    pub manifest: Option<Manifest>,
    pub api_listen: SocketAddr,
    pub hooks: Hooks,
    /// How often the lock observer looks at `/proc/locks`.
    pub lock_poll: Duration,
    /// Blocks that run as their own user: their lock directory and token
    /// belong to it.
    pub block_owners: BTreeMap<BlockName, BlockOwner>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Locks(#[from] LockError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("local API on {addr}: {source}")]
    Api {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server {0}")]
    Server(#[from] crate::edge::tls::TlsError),
}

/// Events the core reacts to.
enum CoreEvent {
    /// The connection task needs a hello for a new stream.
    Hello(oneshot::Sender<pb::Hello>),
    Connected(mpsc::Sender<pb::AgentMessage>),
    Disconnected,
    Server(Box<pb::ServerMessage>),
}

/// Acks kept while disconnected, at most this many (the server resends
/// unacknowledged intents anyway).
const MAX_QUEUED: usize = 1024;
/// The most apply outcomes remembered, to answer a resent apply without
/// applying it twice.
const MAX_OUTCOMES: usize = 64;

struct Core {
    lock_dir: LockDir,
    tracker: LockTracker,
    runtime: AnyRuntime,
    state: Arc<Mutex<StateFile>>,
    changed: watch::Sender<u64>,
    out: Option<mpsc::Sender<pb::AgentMessage>>,
    queued: VecDeque<pb::AgentMessage>,
    tokens: Arc<std::sync::RwLock<BTreeMap<String, String>>>,
}

fn now_ms() -> i64 {
    clock::now().0
}

fn reason_name(r: i32) -> String {
    pb::Reason::try_from(r)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("REASON_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| "unspecified".into())
}

/// Makes `path` mode 0600, owned by `owner` if given (else the agent's user).
fn private_to(path: &std::path::Path, owner: Option<BlockOwner>) -> Result<(), StateError> {
    use std::os::unix::fs::PermissionsExt as _;
    let io = |op: &'static str| {
        move |source| StateError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("restricting"))?;
    if let Some(o) = owner {
        std::os::unix::fs::chown(path, Some(o.uid), o.gid)
            .map_err(io("giving the block's user"))?;
    }
    Ok(())
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill(&mut bytes);
    hex::encode(bytes)
}

impl Core {
    fn with_state<T>(&self, f: impl FnOnce(&mut StateFile) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }

    fn block_names(&self) -> Vec<BlockName> {
        self.runtime
            .running()
            .keys()
            .filter_map(|n| BlockName::new(n).ok())
            .collect()
    }

    /// Creates each running block's lock directory, lock file and API token.
    fn prepare_blocks(&mut self) -> Result<(), AgentError> {
        let mut tokens = self
            .tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for block in self.block_names() {
            self.lock_dir.ensure_block(&block)?;
            let path = self.lock_dir.block_dir(&block).join("token");
            let token = match std::fs::read_to_string(&path) {
                Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
                _ => {
                    let t = random_token();
                    write_atomic(&path, t.as_bytes())?;
                    t
                }
            };
            // Readable by the block's user only (an older agent wrote 0644).
            private_to(&path, self.lock_dir.owner(&block))?;
            tokens.insert(block.to_string(), token);
        }
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = tokens;
        Ok(())
    }

    fn send(&mut self, msg: pb::AgentMessage) {
        if let Some(out) = &self.out
            && out.try_send(msg.clone()).is_ok()
        {
            return;
        }
        if self.queued.len() >= MAX_QUEUED {
            self.queued.pop_front();
        }
        self.queued.push_back(msg);
    }

    fn ack(&mut self, seq: u64, block: &str, kind: pb::intent_ack::Kind) {
        self.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Ack(pb::IntentAck {
                intent_seq: seq,
                kind: Some(kind),
                block: block.to_owned(),
            })),
        });
    }

    fn state_report(&self) -> pb::StateReport {
        pb::StateReport {
            current_release: self.runtime.release().unwrap_or_default(),
            os_version: self.runtime.os_version().unwrap_or_default(),
            blocks: self
                .runtime
                .running()
                .values()
                .map(|s| pb::ReportedBlock {
                    block: s.name.clone(),
                    version: s.version.clone(),
                    env_fingerprint: s.env_fingerprint.clone(),
                })
                .collect(),
        }
    }

    fn lock_report(&mut self) -> Result<pb::LockReport, AgentError> {
        let seq = self.with_state(|s| {
            s.state.report_seq += 1;
            s.save().map(|()| s.state.report_seq)
        })?;
        Ok(pb::LockReport {
            seq,
            locks: self
                .tracker
                .current()
                .iter()
                .map(|(b, l)| pb::BlockLock {
                    block: b.to_string(),
                    held: l.held,
                    generation: l.generation.0,
                    since_unix_ms: l.since.0,
                })
                .collect(),
        })
    }

    fn hello(&mut self) -> Result<pb::Hello, AgentError> {
        Ok(pb::Hello {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            state: Some(self.state_report()),
            locks: Some(self.lock_report()?),
            last_intent_seq: self.with_state(|s| s.state.last_intent_seq),
            agent_epoch: self.with_state(|s| s.state.epoch.clone()),
        })
    }

    /// Looks at the locks; reports any change, and tells the server when a
    /// block that was asked to release has done so.
    fn observe_locks(&mut self) -> Result<(), AgentError> {
        let blocks = self.block_names();
        let observed = self.lock_dir.observe(&blocks)?;
        let changed = self.tracker.update(&observed, clock::now())?;
        if changed.is_empty() {
            return Ok(());
        }
        for (block, lock) in &changed {
            tracing::info!(block = %block, held = lock.held, generation = lock.generation.0, "lock changed");
        }
        let report = self.lock_report()?;
        self.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::LockReport(report)),
        });
        Ok(())
    }

    fn write_block_intents(&self, block: &str) {
        let intents = self.with_state(|s| {
            s.state
                .block_intents
                .get(block)
                .cloned()
                .unwrap_or_default()
        });
        let Ok(name) = BlockName::new(block) else {
            return;
        };
        let path = self.lock_dir.block_dir(&name).join("intent.json");
        let body = serde_json::json!({ "block": block, "intents": intents });
        if let Err(e) = write_atomic(&path, body.to_string().as_bytes()) {
            tracing::warn!(block, error = %e, "cannot write intent.json");
        }
        self.changed.send_modify(|v| *v += 1);
    }

    async fn on_server(&mut self, msg: pb::ServerMessage) -> Result<(), AgentError> {
        use pb::intent::Kind;
        use pb::intent_ack::Kind as Ack;
        let Some(pb::server_message::Msg::Intent(intent)) = msg.msg else {
            return Ok(());
        };
        let seq = intent.seq;
        let handled = self.with_state(|s| s.state.last_intent_seq);
        if seq <= handled {
            // Resent after a reconnect: answer again, never deliver twice.
            match &intent.kind {
                Some(Kind::Apply(_)) => {
                    let outcome = self.with_state(|s| s.state.outcomes.get(&seq).cloned());
                    let kind = outcome.map_or_else(
                        || {
                            Ack::Interrupted(pb::intent_ack::Interrupted {
                                message: "the agent lost track of this apply (it restarted \
                                          before recording an outcome)"
                                    .into(),
                            })
                        },
                        |o| o.to_pb(),
                    );
                    self.ack(seq, "", kind);
                    // The server takes an answer with the state after it.
                    let report = self.state_report();
                    self.send(pb::AgentMessage {
                        msg: Some(pb::agent_message::Msg::State(report)),
                    });
                }
                _ => self.ack(seq, "", Ack::Received(pb::intent_ack::Received {})),
            }
            return Ok(());
        }
        match intent.kind {
            Some(Kind::ReleaseRequest(r)) => {
                let bi = BlockIntent {
                    seq,
                    operation_id: intent.operation_id,
                    kind: "release_request".into(),
                    reason: reason_name(r.reason),
                    handover: r.handover,
                    because_of: (!r.because_of.is_empty()).then_some(r.because_of.clone()),
                    generation: r.generation,
                    target: r.target.clone(),
                    window: r.window.map(|w| (w.start_unix_ms, w.end_unix_ms)),
                    deadline_unix_ms: (r.deadline_unix_ms != 0).then_some(r.deadline_unix_ms),
                    message: String::new(),
                    received_unix_ms: now_ms(),
                };
                self.deliver(seq, &r.block, bi)?;
                tracing::info!(seq, block = %r.block, reason = %reason_name(r.reason), "release requested");
                self.ack(seq, &r.block, Ack::Received(pb::intent_ack::Received {}));
            }
            Some(Kind::Notice(n)) => {
                let bi = BlockIntent {
                    seq,
                    operation_id: intent.operation_id,
                    kind: "notice".into(),
                    reason: reason_name(n.reason),
                    handover: false,
                    because_of: None,
                    generation: 0,
                    target: String::new(),
                    window: None,
                    deadline_unix_ms: None,
                    message: n.message.clone(),
                    received_unix_ms: now_ms(),
                };
                self.deliver(seq, &n.block, bi)?;
                self.ack(seq, &n.block, Ack::Received(pb::intent_ack::Received {}));
            }
            Some(Kind::Cancel(c)) => {
                let touched: Vec<String> = self.with_state(|s| {
                    let mut touched = Vec::new();
                    for (block, list) in s.state.block_intents.iter_mut() {
                        let before = list.len();
                        list.retain(|i| i.seq != c.intent_seq);
                        if list.len() != before {
                            touched.push(block.clone());
                        }
                    }
                    s.state.last_intent_seq = seq;
                    touched
                });
                self.with_state(|s| s.save())?;
                for b in &touched {
                    self.write_block_intents(b);
                }
                self.ack(seq, "", Ack::Received(pb::intent_ack::Received {}));
            }
            Some(Kind::Apply(apply)) => {
                // Recorded as handled before acting: a crash mid-apply is
                // concluded from the journal at the next start, never
                // applied twice.
                self.with_state(|s| {
                    s.state.last_intent_seq = seq;
                    s.save()
                })?;
                let outcome = self.apply(seq, intent.operation_id, apply).await;
                self.finish_apply(seq, &outcome)?;
                self.ack(seq, "", outcome.to_pb());
                self.send(pb::AgentMessage {
                    msg: Some(pb::agent_message::Msg::State(self.state_report())),
                });
                self.observe_locks()?;
            }
            None => {
                self.with_state(|s| {
                    s.state.last_intent_seq = seq;
                    s.save()
                })?;
            }
        }
        Ok(())
    }

    fn deliver(&mut self, seq: u64, block: &str, bi: BlockIntent) -> Result<(), AgentError> {
        self.with_state(|s| {
            s.state
                .block_intents
                .entry(block.to_owned())
                .or_default()
                .push(bi);
            s.state.last_intent_seq = seq;
            s.save()
        })?;
        self.write_block_intents(block);
        Ok(())
    }

    /// Records an apply's outcome (to answer a resend) and clears the
    /// journal, in one durable write.
    fn finish_apply(&mut self, seq: u64, outcome: &Outcome) -> Result<(), AgentError> {
        self.with_state(|s| {
            s.state.in_flight = None;
            s.state.outcomes.insert(seq, outcome.clone());
            while s.state.outcomes.len() > MAX_OUTCOMES {
                s.state.outcomes.pop_first();
            }
            s.save()
        })?;
        Ok(())
    }

    /// Takes every impacted lock atomically, performs the operation while
    /// holding them, and answers with the outcome.
    async fn apply(&mut self, seq: u64, operation_id: u64, apply: pb::Apply) -> Outcome {
        // Fenced: refuse what was decided against an older lock state.
        let current = self.tracker.current();
        for f in &apply.fence {
            let Ok(block) = BlockName::new(&f.block) else {
                continue;
            };
            if let Some(lock) = current.get(&block)
                && lock.generation.0 > f.generation
            {
                tracing::info!(seq, block = %block, decided = f.generation, now = lock.generation.0, "stale apply refused");
                return Outcome::Stale {
                    message: format!(
                        "lock of {block} is at generation {}, the apply was decided at {}",
                        lock.generation.0, f.generation
                    ),
                };
            }
        }
        // Every disturbed block's lock, except those an audited force overrides.
        let blocks: Vec<BlockName> = apply
            .disturbed
            .iter()
            .filter(|d| !apply.forced.contains(&d.block))
            .filter_map(|d| BlockName::new(&d.block).ok())
            .collect();
        let held = match self.lock_dir.acquire_all(&blocks) {
            Ok(h) => h,
            Err(LockError::Held { blocks, .. }) => {
                tracing::info!(seq, ?blocks, "apply blocked by lock holders");
                return Outcome::Blocked {
                    error: "blocks hold their locks".into(),
                    held_by: blocks.iter().map(ToString::to_string).collect(),
                };
            }
            Err(e) => {
                return Outcome::Failed {
                    error: e.to_string(),
                };
            }
        };
        self.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Progress(pb::Progress {
                intent_seq: seq,
                phase: "locks_acquired".into(),
            })),
        });
        let actions = action::plan(&apply, &self.runtime.running());
        let mut journal = InFlight {
            seq,
            operation_id,
            actions: actions.clone(),
            step: 0,
            boot_id: current_boot_id(),
            blocks: held.blocks().iter().map(ToString::to_string).collect(),
        };
        let mut result = Ok(());
        for (step, act) in actions.into_iter().enumerate() {
            journal.step = step;
            // Journalled before the step runs: an agent that dies during it
            // learns at its next start what was under way.
            if let Err(e) = self.with_state(|s| {
                s.state.in_flight = Some(journal.clone());
                s.save()
            }) {
                result = Err(e.to_string());
                break;
            }
            if let Err(e) = self.runtime.apply_holding(act, &held.fds()).await {
                result = Err(e.to_string());
                break;
            }
        }
        // Locks are held until the runtime actions have finished.
        drop(held);
        if let Err(e) = self.prepare_blocks() {
            tracing::warn!(error = %e, "preparing lock directories after apply");
        }
        match result {
            Ok(()) => {
                tracing::info!(seq, "operation applied");
                Outcome::Applied
            }
            Err(error) => {
                tracing::warn!(seq, error = %error, "operation failed");
                Outcome::Failed { error }
            }
        }
    }

    fn on_local(&mut self, ev: LocalEvent) -> Result<(), AgentError> {
        use pb::intent_ack::Kind as Ack;
        match ev {
            LocalEvent::Answer { block, seq, answer } => {
                let (kind, remove) = match answer {
                    Answer::Release => (Ack::Released(pb::intent_ack::Released {}), true),
                    Answer::Defer {
                        until_unix_ms,
                        message,
                    } => (
                        Ack::Deferred(pb::intent_ack::Deferred {
                            until_unix_ms,
                            message,
                        }),
                        false,
                    ),
                    Answer::ReleaseAtWindow => (
                        Ack::WillReleaseAtWindow(pb::intent_ack::WillReleaseAtWindow {}),
                        false,
                    ),
                    Answer::Refuse { message } => {
                        (Ack::Refused(pb::intent_ack::Refused { message }), false)
                    }
                    Answer::Dismiss => (Ack::Received(pb::intent_ack::Received {}), true),
                };
                if remove {
                    self.with_state(|s| {
                        if let Some(list) = s.state.block_intents.get_mut(&block) {
                            list.retain(|i| i.seq != seq);
                        }
                        s.save()
                    })?;
                    self.write_block_intents(&block);
                }
                tracing::info!(block = %block, seq, answer = ?kind, "block answered");
                self.ack(seq, &block, kind);
            }
            LocalEvent::Trigger { block } => {
                // "I'm ready, go now": release everything this block was
                // asked for, and report the locks right away.
                let pending: Vec<u64> = self.with_state(|s| {
                    s.state
                        .block_intents
                        .get(&block)
                        .map(|l| {
                            l.iter()
                                .filter(|i| i.kind == "release_request")
                                .map(|i| i.seq)
                                .collect()
                        })
                        .unwrap_or_default()
                });
                for seq in pending {
                    self.on_local(LocalEvent::Answer {
                        block: block.clone(),
                        seq,
                        answer: Answer::Release,
                    })?;
                }
                self.observe_locks()?;
            }
        }
        Ok(())
    }
}

/// Runs the agent until `shutdown` completes.
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let lock_dir = LockDir::new(&cfg.lock_root).with_owners(cfg.block_owners.clone());
    std::fs::create_dir_all(&cfg.lock_root).map_err(|source| StateError::Io {
        op: "creating",
        path: cfg.lock_root.clone(),
        source,
    })?;
    let mut state = StateFile::load(&cfg.state_dir)?;
    if state.state.epoch.is_empty() {
        state.state.epoch = random_token();
        state.save()?;
        tracing::info!(epoch = %state.state.epoch, "new agent epoch");
    }
    tokio::pin!(shutdown);
    // An apply the last agent did not see finish: its hook may still run
    // (holding the apply's locks); nothing starts until it is over.
    let runtime_dir = cfg.state_dir.join("runtime");
    let interrupted = match state.state.in_flight.clone() {
        Some(f) => {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                c = settle(&f, &runtime_dir) => Some((f, c)),
            }
        }
        None => None,
    };
    let tracker = LockTracker::load(cfg.state_dir.join("locks.json"))?;
    let api_listener = tokio::net::TcpListener::bind(cfg.api_listen)
        .await
        .map_err(|source| AgentError::Api {
            addr: cfg.api_listen,
            source,
        })?;
    let api_addr = api_listener
        .local_addr()
        .map_err(|source| AgentError::Api {
            addr: cfg.api_listen,
            source,
        })?;
    let extra_env: BTreeMap<String, String> =
        [("LOCKSTEP_API".to_owned(), format!("http://{api_addr}"))].into();
    let mut runtime = match cfg.runtime {
        RuntimeKind::Process => AnyRuntime::Process(
            ProcessRuntime::new(
                cfg.state_dir.join("runtime"),
                LockDir::new(&cfg.lock_root).with_owners(cfg.block_owners.clone()),
                cfg.hooks.clone(),
                extra_env,
            )
            .await?,
        ),
        RuntimeKind::Hooks => AnyRuntime::Hooks(HooksRuntime::new(
            cfg.state_dir.join("runtime"),
            cfg.hooks.clone(),
        )?),
    };
    // Lock directories exist before any block starts, so blocks can lock at once.
    if let Some(m) = &cfg.manifest {
        for spec in &m.blocks {
            if let Ok(b) = BlockName::new(&spec.name) {
                lock_dir.ensure_block(&b)?;
            }
        }
        runtime.ensure_started(m).await?;
    }
    let (changed_tx, changed_rx) = watch::channel(0u64);
    let mut core = Core {
        lock_dir,
        tracker,
        runtime,
        state: Arc::new(Mutex::new(state)),
        changed: changed_tx,
        out: None,
        queued: VecDeque::new(),
        tokens: Arc::new(std::sync::RwLock::new(BTreeMap::new())),
    };
    if let Some((f, (outcome, record_step))) = interrupted {
        if record_step && let Some(act) = f.actions.get(f.step) {
            core.runtime.record_finished(act)?;
        }
        tracing::info!(
            seq = f.seq,
            operation = f.operation_id,
            ?outcome,
            "concluded an apply interrupted by an agent restart"
        );
        core.finish_apply(f.seq, &outcome)?;
        // As after any apply: the answer, then the state it left (the
        // server decides on an answered apply only with a newer state).
        core.ack(f.seq, "", outcome.to_pb());
        let report = core.state_report();
        core.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::State(report)),
        });
    }
    core.prepare_blocks()?;
    for block in core.block_names() {
        core.write_block_intents(block.as_str());
    }
    let (local_tx, mut local_rx) = mpsc::channel(64);
    let api_state = ApiState {
        state: Arc::clone(&core.state),
        changed: changed_rx,
        tokens: Arc::clone(&core.tokens),
        events: local_tx,
    };
    tracing::info!(addr = %api_addr, "agent local API listening");
    let api_task = tokio::spawn(async move {
        if let Err(e) = axum::serve(api_listener, api::router(api_state)).await {
            tracing::error!(error = %e, "local API stopped");
        }
    });
    let (core_tx, mut core_rx) = mpsc::channel::<CoreEvent>(64);
    let endpoint = crate::edge::tls::endpoint(&cfg.server, cfg.tls.as_ref())?
        .connect_timeout(Duration::from_secs(10))
        // A connection that stops answering pings (half-open behind a load
        // balancer) is dropped within 10 s and the agent reconnects.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let conn_task = tokio::spawn(connection_loop(
        endpoint,
        cfg.device.clone(),
        cfg.credential.clone(),
        core_tx,
    ));

    let mut tick = tokio::time::interval(cfg.lock_poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let step: Result<(), AgentError> = tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => core.observe_locks(),
            Some(ev) = local_rx.recv() => core.on_local(ev),
            Some(ev) = core_rx.recv() => match ev {
                CoreEvent::Hello(reply) => {
                    let hello = core.hello();
                    match hello {
                        Ok(h) => { let _ = reply.send(h); Ok(()) }
                        Err(e) => Err(e),
                    }
                }
                CoreEvent::Connected(out) => {
                    tracing::info!("connected to the server");
                    while let Some(m) = core.queued.pop_front() {
                        if out.try_send(m.clone()).is_err() {
                            core.queued.push_front(m);
                            break;
                        }
                    }
                    core.out = Some(out);
                    Ok(())
                }
                CoreEvent::Disconnected => {
                    core.out = None;
                    Ok(())
                }
                CoreEvent::Server(msg) => core.on_server(*msg).await,
            },
        };
        if let Err(e) = step {
            tracing::error!(error = %e, "agent step failed");
        }
    }
    conn_task.abort();
    api_task.abort();
    tracing::info!("agent stopped");
    Ok(())
}

/// How often a restarted agent looks whether an interrupted apply's hook has
/// finished.
const SETTLE_POLL: Duration = Duration::from_millis(200);

/// Waits until the apply `f` is over (its hook, if one still runs, has
/// exited) and concludes its outcome, and whether its step finished.
async fn settle(f: &InFlight, runtime_dir: &std::path::Path) -> (Outcome, bool) {
    let rebooted = f.boot_id.is_some() && current_boot_id() != f.boot_id;
    let mut told = false;
    loop {
        match action::conclude(f, &step_fact(runtime_dir), rebooted) {
            Conclusion::Done {
                outcome,
                record_step,
            } => return (outcome, record_step),
            Conclusion::Wait => {
                if !told {
                    tracing::info!(
                        seq = f.seq,
                        operation = f.operation_id,
                        "an apply's hook outlived the last agent; waiting for it to finish"
                    );
                    told = true;
                }
                tokio::time::sleep(SETTLE_POLL).await;
            }
        }
    }
}

/// The first wait before reconnecting, and the longest.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// A session that lasted this long was healthy: the next reconnect starts
/// from the first backoff again, however it ended.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// The wait before the next connection attempt (before jitter): after a
/// healthy session (it ended cleanly, or lasted [`HEALTHY_SESSION`]) the
/// first backoff, else twice the last, up to [`BACKOFF_MAX`].
fn next_backoff(last: Option<Duration>, healthy: bool) -> Duration {
    match last {
        Some(last) if !healthy => (last * 2).min(BACKOFF_MAX),
        _ => BACKOFF_FIRST,
    }
}

/// Keeps one stream to the server: connect, hello, relay messages; on a
/// failure, back off (1 s doubling to 60 s, with jitter) and try again. A
/// healthy session resets the backoff, so a short blip after a long
/// outage reconnects at once.
async fn connection_loop(
    endpoint: tonic::transport::Endpoint,
    device: String,
    credential: String,
    core: mpsc::Sender<CoreEvent>,
) {
    let mut last: Option<Duration> = None;
    loop {
        let started = tokio::time::Instant::now();
        let ended = session(&endpoint, &device, &credential, &core).await;
        let healthy = ended.is_ok() || started.elapsed() >= HEALTHY_SESSION;
        let backoff = next_backoff(last, healthy);
        last = Some(backoff);
        if let Err(e) = ended {
            tracing::warn!(error = %e, retry_in = ?backoff, "connection to the server failed");
        }
        if core.send(CoreEvent::Disconnected).await.is_err() {
            return;
        }
        let jitter = rand::rng().random_range(0.5..1.5);
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
    }
}

async fn session(
    endpoint: &tonic::transport::Endpoint,
    device: &str,
    credential: &str,
    core: &mpsc::Sender<CoreEvent>,
) -> Result<(), tonic::Status> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let (hello_tx, hello_rx) = oneshot::channel();
    core.send(CoreEvent::Hello(hello_tx))
        .await
        .map_err(|_| tonic::Status::cancelled("agent stopping"))?;
    let hello = hello_rx
        .await
        .map_err(|_| tonic::Status::internal("no hello"))?;
    let (out_tx, out_rx) = mpsc::channel(64);
    let first = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(hello)),
    };
    let outbound = tokio_stream::once(first).chain(ReceiverStream::new(out_rx));
    let mut request = tonic::Request::new(outbound);
    let meta = request.metadata_mut();
    meta.insert(
        crate::edge::grpc::agent::DEVICE_HEADER,
        device
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("device id is not valid metadata"))?,
    );
    meta.insert(
        "authorization",
        format!("Bearer {credential}")
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("credential is not valid metadata"))?,
    );
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel)
        .max_decoding_message_size(crate::edge::limits::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::edge::limits::MAX_MESSAGE_BYTES);
    let mut inbound = client.connect(request).await?.into_inner();
    core.send(CoreEvent::Connected(out_tx))
        .await
        .map_err(|_| tonic::Status::cancelled("agent stopping"))?;
    while let Some(msg) = inbound.message().await? {
        core.send(CoreEvent::Server(Box::new(msg)))
            .await
            .map_err(|_| tonic::Status::cancelled("agent stopping"))?;
    }
    Ok(())
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn backoff_doubles_after_failures_and_restarts_after_a_healthy_session() {
        let s = Duration::from_secs;
        let cases = [
            (None, false, s(1)),
            (None, true, s(1)),
            (Some(s(1)), false, s(2)),
            (Some(s(16)), false, s(32)),
            (Some(s(32)), false, s(60)),
            (Some(s(60)), false, s(60)),
            // A long outage, then a healthy session, then a blip.
            (Some(s(60)), true, s(1)),
            (Some(s(4)), true, s(1)),
        ];
        for (last, healthy, want) in cases {
            assert_eq!(next_backoff(last, healthy), want, "{last:?} {healthy}");
        }
    }
}
