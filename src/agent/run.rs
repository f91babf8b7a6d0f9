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

use super::api::{self, Answer, ApiState, LocalEvent};
use super::locks::{LockDir, LockError, LockTracker};
use super::runtime::{
    Action, AnyRuntime, BlockSpec, Hooks, HooksRuntime, Manifest, ProcessRuntime, Runtime,
    RuntimeError,
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
    /// Outcomes of recent applies, by intent sequence.
    outcomes: BTreeMap<u64, pb::intent_ack::Kind>,
    tokens: Arc<std::sync::RwLock<BTreeMap<String, String>>>,
}

fn now_ms() -> i64 {
    clock::now().0
}

fn spec_from_target(t: &pb::TargetBlock) -> Option<BlockSpec> {
    let bv = t.block_version.as_ref()?;
    let cfg = bv.config.clone().unwrap_or_default();
    let hand_over_timeout_secs = match bv
        .update_strategy
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
    {
        Some(pb::update_strategy::Strategy::HandOver(h)) => Some(u64::from(h.timeout_seconds)),
        _ => None,
    };
    Some(BlockSpec {
        name: bv.block.clone(),
        version: bv.version.clone(),
        command: cfg.entrypoint.into_iter().chain(cfg.command).collect(),
        working_dir: cfg.working_dir,
        env: t.env.clone(),
        env_fingerprint: t.env_fingerprint.clone(),
        hand_over_timeout_secs,
    })
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
                    let kind = self
                        .outcomes
                        .get(&seq)
                        .cloned()
                        .unwrap_or(Ack::Failed(pb::intent_ack::Failed {
                        error:
                            "the agent restarted while applying this operation; it was not retried"
                                .into(),
                        held_by: vec![],
                    }));
                    self.ack(seq, "", kind);
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
                // reported as failed, never applied twice.
                self.with_state(|s| {
                    s.state.last_intent_seq = seq;
                    s.save()
                })?;
                let outcome = self.apply(seq, apply).await;
                self.outcomes.insert(seq, outcome.clone());
                while self.outcomes.len() > MAX_OUTCOMES {
                    self.outcomes.pop_first();
                }
                self.ack(seq, "", outcome);
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

    /// Takes every impacted lock atomically, performs the operation while
    /// holding them, and answers with the outcome.
    async fn apply(&mut self, seq: u64, apply: pb::Apply) -> pb::intent_ack::Kind {
        use pb::intent_ack::Kind as Ack;
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
                return Ack::Stale(pb::intent_ack::Stale {
                    message: format!(
                        "lock of {block} is at generation {}, the apply was decided at {}",
                        lock.generation.0, f.generation
                    ),
                });
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
                return Ack::Failed(pb::intent_ack::Failed {
                    error: "blocks hold their locks".into(),
                    held_by: blocks.iter().map(ToString::to_string).collect(),
                });
            }
            Err(e) => {
                return Ack::Failed(pb::intent_ack::Failed {
                    error: e.to_string(),
                    held_by: vec![],
                });
            }
        };
        self.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Progress(pb::Progress {
                intent_seq: seq,
                phase: "locks_acquired".into(),
            })),
        });
        let result = self.perform(&apply).await;
        // Locks are held until the runtime action has finished.
        drop(held);
        if let Err(e) = self.prepare_blocks() {
            tracing::warn!(error = %e, "preparing lock directories after apply");
        }
        match result {
            Ok(()) => {
                tracing::info!(seq, "operation applied");
                Ack::Applied(pb::intent_ack::Applied {})
            }
            Err(e) => {
                tracing::warn!(seq, error = %e, "operation failed");
                Ack::Failed(pb::intent_ack::Failed {
                    error: e.to_string(),
                    held_by: vec![],
                })
            }
        }
    }

    async fn perform(&mut self, apply: &pb::Apply) -> Result<(), RuntimeError> {
        use pb::operation::Kind as Op;
        let dependents: Vec<String> = apply
            .disturbed
            .iter()
            .filter(|d| d.reason == pb::Reason::DependencyRestart as i32)
            .map(|d| d.block.clone())
            .collect();
        let Some(kind) = apply.operation.as_ref().and_then(|o| o.kind.clone()) else {
            return Ok(());
        };
        match kind {
            Op::ReleaseUpdate(r) => {
                let disturbed: std::collections::BTreeSet<&str> =
                    apply.disturbed.iter().map(|d| d.block.as_str()).collect();
                let running = self.runtime.running();
                // Blocks the release leaves alone keep their running spec, so
                // the runtime does not touch them.
                let specs: Vec<BlockSpec> = r
                    .blocks
                    .iter()
                    .filter_map(|t| {
                        let spec = spec_from_target(t)?;
                        match running.get(&spec.name) {
                            Some(cur) if !disturbed.contains(spec.name.as_str()) => {
                                Some(cur.clone())
                            }
                            _ => Some(spec),
                        }
                    })
                    .collect();
                self.runtime
                    .apply(Action::Release {
                        release: r.release.clone(),
                        blocks: specs,
                    })
                    .await?;
                for d in dependents {
                    if running.get(&d).is_some_and(|cur| {
                        r.blocks
                            .iter()
                            .filter_map(spec_from_target)
                            .any(|s| s.name == d && s == *cur)
                    }) || !running.contains_key(&d)
                    {
                        self.runtime.apply(Action::Restart(d)).await?;
                    }
                }
            }
            Op::EnvUpdate(e) => {
                let changed: std::collections::BTreeSet<&str> = apply
                    .disturbed
                    .iter()
                    .filter(|d| d.reason == pb::Reason::EnvChange as i32)
                    .map(|d| d.block.as_str())
                    .collect();
                for t in &e.blocks {
                    if let Some(spec) = spec_from_target(t)
                        && changed.contains(spec.name.as_str())
                    {
                        self.runtime.apply(Action::Replace(spec)).await?;
                    }
                }
                for d in dependents {
                    self.runtime.apply(Action::Restart(d)).await?;
                }
            }
            Op::RestartBlock(b) => {
                self.runtime.apply(Action::Restart(b)).await?;
                for d in dependents {
                    self.runtime.apply(Action::Restart(d)).await?;
                }
            }
            Op::StopBlock(b) => {
                self.runtime.apply(Action::Stop(b)).await?;
                for d in dependents {
                    self.runtime.apply(Action::Restart(d)).await?;
                }
            }
            Op::StartBlock(t) => {
                if let Some(spec) = spec_from_target(&t) {
                    self.runtime.apply(Action::Start(spec)).await?;
                }
            }
            Op::Reboot(_) => self.runtime.apply(Action::Reboot).await?,
            Op::Shutdown(_) => self.runtime.apply(Action::Shutdown).await?,
            Op::OsUpdate(version) => self.runtime.apply(Action::OsUpdate { version }).await?,
        }
        Ok(())
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
    let lock_dir = LockDir::new(&cfg.lock_root);
    std::fs::create_dir_all(&cfg.lock_root).map_err(|source| StateError::Io {
        op: "creating",
        path: cfg.lock_root.clone(),
        source,
    })?;
    let state = StateFile::load(&cfg.state_dir)?;
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
                LockDir::new(&cfg.lock_root),
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
        outcomes: BTreeMap::new(),
        tokens: Arc::new(std::sync::RwLock::new(BTreeMap::new())),
    };
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
    tokio::pin!(shutdown);
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
