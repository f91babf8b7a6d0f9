//! How the agent makes blocks run: the runtimes that carry out an applied
//! operation (start, stop, restart, replace a block; move to a release; update
//! the OS; reboot; shut down) once the agent holds every impacted lock.
//!
//! Two runtimes exist:
//!
//! - **`process`** ([`ProcessRuntime`]): blocks are real local processes from a
//!   manifest. Used by tests and demos. Each block runs in its own process
//!   group with a clean environment; its stdout and stderr are appended to
//!   `<state-dir>/logs/<block>.log`. Stopping sends `SIGTERM` to the group,
//!   waits up to 5 s, then sends `SIGKILL`. A block with a hand-over timeout is
//!   replaced by starting the new process first and stopping the old one when
//!   the new one signals completion (by creating its hand-over file) or the
//!   timeout passes. OS update and reboot are *simulated*: every block is
//!   stopped, the `os_update`/`reboot` hook runs if configured (a test machine
//!   does not reboot), and every block is started again. Shutdown stops every
//!   block (they start again when the agent next starts, as after a boot).
//! - **`hooks`** ([`HooksRuntime`]): every action runs an operator-provided
//!   command (`/bin/sh -c <hook>`), e.g. a wrapper around `docker compose`,
//!   `systemctl reboot` or the OS updater; the runtime records the resulting
//!   state. A requested action without its hook is [`RuntimeError::NoHook`].
//!
//! Both keep their state in `<state-dir>/runtime.json` (written atomically),
//! so an agent restart does not restart anything: the process runtime adopts
//! the blocks whose processes are still alive (same pid, same start time, same
//! boot) and restarts the dead ones.
//!
//! A hook that exits non-zero fails the action with its exit status and the
//! tail of its stderr. Hook output is appended to `<state-dir>/logs/hooks.log`.
//! Hooks have no timeout of their own; one that never exits stalls the agent.
//!
//! # Environment of a block (process runtime)
//!
//! The environment is cleared, then set in this order (later wins):
//!
//! | Variable | Value |
//! |---|---|
//! | `PATH` | the agent's `PATH` (or a standard default) |
//! | *the block's effective env* | from its spec (`env`) |
//! | *the agent's extra env* | e.g. `LOCKSTEP_API`, added to every block |
//! | `LOCKSTEP_BLOCK` | the block's name |
//! | `LOCKSTEP_BLOCK_VERSION` | the block's version |
//! | `LOCKSTEP_LOCK_DIR` | `<lock-root>/<block>`: the block's lock directory |
//! | `LOCKSTEP_LOCK_FILE` | `<lock-root>/<block>/updates.lock`: `flock(LOCK_EX)` it to hold off disruptive operations |
//! | `LOCKSTEP_HANDOVER` | `1`, only for the new process of a hand-over replacement |
//! | `LOCKSTEP_HANDOVER_FILE` | `<lock-root>/<block>/handover.done`, only with `LOCKSTEP_HANDOVER`: create it when the hand-over is complete |
//!
//! During an operation the agent itself holds the block's `updates.lock`: a
//! process handing over must not wait on that lock before creating its
//! hand-over file (use `LOCK_NB`, or take the lock afterwards).
//!
//! # Environment of a hook
//!
//! Hooks inherit the agent's environment, plus:
//!
//! | Variable | Set for | Value |
//! |---|---|---|
//! | `LOCKSTEP_ACTION` | every hook | `start`, `stop`, `restart`, `replace`, `reboot`, `shutdown`, `os_update` or `release` |
//! | `LOCKSTEP_RELEASE` | every hook, when known; `release` | the current release id; for `release`, the target release id |
//! | `LOCKSTEP_OS_VERSION` | `os_update` | the OS version to install |
//! | `LOCKSTEP_BLOCK` | `restart_block` | the block to start, stop, restart or replace |
//! | `LOCKSTEP_BLOCK_VERSION` | `restart_block` for `start`, `replace` | the block's target version |
//! | `LOCKSTEP_HANDOVER_TIMEOUT_SECS` | `restart_block` for `replace` | the hand-over timeout, if the block hands over |
//! | `LOCKSTEP_TARGET_FILE` | `release`; `restart_block` for `start`, `replace` | a JSON file shaped like the manifest (`{"release", "os_version", "blocks": [...]}`) holding the target blocks (for `start`/`replace`: the one block) |
//!
//! Hooks run with the state directory as working directory. In the process
//! runtime only the `reboot`, `shutdown` and `os_update` hooks are used.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::action::StepFact;

use super::locks::{LockDir, LockError, write_atomic};
use crate::domain::env::{EnvError, EnvName, fingerprint};
use crate::domain::{BlockName, Fingerprint, IdError, ReleaseId};
use crate::edge::limits::{MAX_COMMAND_ARGS, MAX_MANIFEST_BYTES, MAX_RELEASE_BLOCKS};

/// How long a stopped block gets between `SIGTERM` and `SIGKILL`.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The file a handing-over process creates in its lock directory when done.
pub const HANDOVER_FILE_NAME: &str = "handover.done";
/// The runtime's state file inside the state directory.
pub const STATE_FILE_NAME: &str = "runtime.json";

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How often waits (hand-over, process exit) look again.
const POLL: Duration = Duration::from_millis(20);
/// How long a process gets to disappear after `SIGKILL`.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How much of a failed hook's stderr its error carries.
const STDERR_TAIL_BYTES: u64 = 2048;

/// What one block runs as.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockSpec {
    /// A valid block name (see [`BlockName`]).
    pub name: String,
    /// A semantic version.
    pub version: String,
    /// argv; entrypoint and command already joined.
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// The block's effective env.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Hex SHA-256 of the effective env; [`load_manifest`] computes it when
    /// empty or missing.
    #[serde(default)]
    pub env_fingerprint: String,
    /// `Some` => the block is replaced by hand-over, waiting at most this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hand_over_timeout_secs: Option<u64>,
}

/// Why a [`BlockSpec`] (or a manifest's own fields) was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("invalid block name {value:?}: {source}")]
    BadName {
        value: String,
        #[source]
        source: IdError,
    },
    #[error("invalid version {value:?}: {source}")]
    BadVersion {
        value: String,
        #[source]
        source: semver::Error,
    },
    #[error("command must not be empty, nor start with an empty program")]
    EmptyCommand,
    #[error("invalid env variable name: {source}")]
    BadEnvName {
        #[source]
        source: EnvError,
    },
    #[error("env fingerprint {value:?} is not 64 hex digits")]
    BadFingerprint { value: String },
    #[error("hand-over timeout of {secs}s is outside 1..=3600")]
    BadHandOverTimeout { secs: u64 },
    #[error("block {name} appears more than once")]
    Duplicate { name: String },
    #[error("invalid release id {value:?}: {source}")]
    BadRelease {
        value: String,
        #[source]
        source: IdError,
    },
    #[error("{count} entries; at most {max}")]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
}

impl SpecError {
    /// The spec field at fault, as it is spelled in JSON.
    pub fn field(&self) -> &'static str {
        match self {
            Self::BadName { .. } | Self::Duplicate { .. } => "name",
            Self::BadVersion { .. } => "version",
            Self::EmptyCommand => "command",
            Self::BadEnvName { .. } => "env",
            Self::BadFingerprint { .. } => "env_fingerprint",
            Self::BadHandOverTimeout { .. } => "hand_over_timeout_secs",
            Self::BadRelease { .. } => "release",
            Self::TooMany { field, .. } => field,
        }
    }
}

impl BlockSpec {
    /// Checks every field; returns the validated name.
    pub fn validate(&self) -> Result<BlockName, SpecError> {
        let name = self.block_name()?;
        semver::Version::parse(&self.version).map_err(|source| SpecError::BadVersion {
            value: self.version.clone(),
            source,
        })?;
        if self.command.first().is_none_or(String::is_empty) {
            return Err(SpecError::EmptyCommand);
        }
        for key in self.env.keys() {
            EnvName::new(key.as_str()).map_err(|source| SpecError::BadEnvName { source })?;
        }
        if !self.env_fingerprint.is_empty()
            && Fingerprint::from_hex(&self.env_fingerprint).is_none()
        {
            return Err(SpecError::BadFingerprint {
                value: self.env_fingerprint.clone(),
            });
        }
        if let Some(secs) = self.hand_over_timeout_secs
            && !(1..=3600).contains(&secs)
        {
            return Err(SpecError::BadHandOverTimeout { secs });
        }
        Ok(name)
    }

    /// The name as a [`BlockName`].
    pub fn block_name(&self) -> Result<BlockName, SpecError> {
        BlockName::new(self.name.as_str()).map_err(|source| SpecError::BadName {
            value: self.name.clone(),
            source,
        })
    }

    /// The hand-over timeout, if this block is replaced by hand-over.
    pub fn hand_over(&self) -> Option<Duration> {
        self.hand_over_timeout_secs.map(Duration::from_secs)
    }

    /// The fingerprint of `env`, computed as the platform does.
    pub fn computed_env_fingerprint(&self) -> Result<Fingerprint, SpecError> {
        let mut env = BTreeMap::new();
        for (k, v) in &self.env {
            let name =
                EnvName::new(k.as_str()).map_err(|source| SpecError::BadEnvName { source })?;
            env.insert(name, v.clone());
        }
        Ok(fingerprint(&env))
    }
}

/// The initial blocks of a device, from a JSON manifest file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub release: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    pub blocks: Vec<BlockSpec>,
}

/// Reads and validates a manifest. Errors name the file and the field
/// (`blocks[1].version`). Missing env fingerprints are computed.
pub fn load_manifest(path: impl AsRef<Path>) -> Result<Manifest, RuntimeError> {
    let path = path.as_ref();
    let io = |source| RuntimeError::Io {
        op: "read manifest",
        path: path.to_owned(),
        source,
    };
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_MANIFEST_BYTES as u64 + 1).read_to_end(&mut text))
        .map_err(io)?;
    parse_manifest(path, &text)
}

/// Parses and validates manifest text; `path` names it in errors. At most
/// [`MAX_MANIFEST_BYTES`], [`MAX_RELEASE_BLOCKS`] blocks and
/// [`MAX_COMMAND_ARGS`] arguments per block.
pub fn parse_manifest(path: &Path, text: &[u8]) -> Result<Manifest, RuntimeError> {
    let bad = |field: String, source: SpecError| RuntimeError::Manifest {
        path: path.to_owned(),
        field,
        source: Box::new(source),
    };
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(RuntimeError::Io {
            op: "read manifest",
            path: path.to_owned(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {MAX_MANIFEST_BYTES} bytes"),
            ),
        });
    }
    let mut manifest: Manifest =
        serde_json::from_slice(text).map_err(|source| RuntimeError::ManifestParse {
            path: path.to_owned(),
            source,
        })?;
    if manifest.blocks.len() > MAX_RELEASE_BLOCKS {
        let e = SpecError::TooMany {
            field: "blocks",
            count: manifest.blocks.len(),
            max: MAX_RELEASE_BLOCKS,
        };
        return Err(bad("blocks".into(), e));
    }
    for (i, spec) in manifest.blocks.iter().enumerate() {
        if spec.command.len() > MAX_COMMAND_ARGS {
            let e = SpecError::TooMany {
                field: "command",
                count: spec.command.len(),
                max: MAX_COMMAND_ARGS,
            };
            return Err(bad(format!("blocks[{i}].command"), e));
        }
    }
    ReleaseId::new(manifest.release.as_str()).map_err(|source| {
        bad(
            "release".into(),
            SpecError::BadRelease {
                value: manifest.release.clone(),
                source,
            },
        )
    })?;
    let mut seen = std::collections::BTreeSet::new();
    for (i, spec) in manifest.blocks.iter_mut().enumerate() {
        let name = spec
            .validate()
            .map_err(|e| bad(format!("blocks[{i}].{}", e.field()), e))?;
        if !seen.insert(name) {
            let e = SpecError::Duplicate {
                name: spec.name.clone(),
            };
            return Err(bad(format!("blocks[{i}].name"), e));
        }
        if spec.env_fingerprint.is_empty() {
            spec.env_fingerprint = spec
                .computed_env_fingerprint()
                .map_err(|e| bad(format!("blocks[{i}].env"), e))?
                .to_hex();
        }
    }
    Ok(manifest)
}

/// Operator-provided shell command lines, run with `/bin/sh -c`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hooks {
    pub reboot: Option<String>,
    pub shutdown: Option<String>,
    pub os_update: Option<String>,
    pub release: Option<String>,
    pub restart_block: Option<String>,
}

/// One thing the runtime is asked to do. Block names are those of
/// [`BlockSpec::name`]. Serializable: the agent journals an apply's actions.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Starts a block (a no-op if it already runs this spec; a replacement if
    /// it runs another).
    Start(BlockSpec),
    /// Stops and forgets a block (a no-op if it does not run).
    Stop(String),
    /// Stops and starts a block with its current spec.
    Restart(String),
    /// Replaces a block's running spec (by hand-over if the new spec says so).
    Replace(BlockSpec),
    Reboot,
    Shutdown,
    OsUpdate {
        version: String,
    },
    /// Moves to a release: stops blocks not in it, replaces changed ones,
    /// starts new ones; unchanged blocks keep running untouched.
    Release {
        release: String,
        blocks: Vec<BlockSpec>,
    },
}

impl Action {
    /// The action's name, as in `LOCKSTEP_ACTION`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Start(_) => "start",
            Self::Stop(_) => "stop",
            Self::Restart(_) => "restart",
            Self::Replace(_) => "replace",
            Self::Reboot => "reboot",
            Self::Shutdown => "shutdown",
            Self::OsUpdate { .. } => "os_update",
            Self::Release { .. } => "release",
        }
    }
}

/// Why the runtime could not carry out an action.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("manifest {} is not valid: {source}", path.display())]
    ManifestParse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("manifest {}: {field}: {source}", path.display())]
    Manifest {
        path: PathBuf,
        field: String,
        #[source]
        source: Box<SpecError>,
    },
    #[error("runtime state file {} is corrupt: {source}", path.display())]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode {}: {source}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("block spec {block:?}: {}: {source}", source.field())]
    BadSpec {
        block: String,
        #[source]
        source: Box<SpecError>,
    },
    #[error("lock directory of block {block}: {source}")]
    LockDir {
        block: String,
        #[source]
        source: Box<LockError>,
    },
    #[error("cannot start block {block} ({program}): {source}")]
    Spawn {
        block: String,
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot send {signal} to block {block} (pid {pid}): {source}")]
    Signal {
        block: String,
        pid: u32,
        signal: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("block {block} (pid {pid}) did not exit within {waited:?} of SIGKILL")]
    StopTimeout {
        block: String,
        pid: u32,
        waited: Duration,
    },
    #[error("block {block} is not running")]
    UnknownBlock { block: String },
    #[error(
        "new process of block {block} exited ({status}) before completing the hand-over; the old one keeps running"
    )]
    HandoverExited { block: String, status: ExitStatus },
    #[error("no {action} hook is configured")]
    NoHook { action: &'static str },
    #[error("cannot run the {action} hook: {source}")]
    HookSpawn {
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the {action} hook failed ({status}); stderr ends with: {stderr_tail}")]
    HookFailed {
        action: &'static str,
        status: ExitStatus,
        stderr_tail: String,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RuntimeError {
    move |source| RuntimeError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn bad_spec(block: &str) -> impl FnOnce(SpecError) -> RuntimeError {
    move |source| RuntimeError::BadSpec {
        block: block.to_owned(),
        source: Box::new(source),
    }
}

/// A runtime: carries out actions and says what runs.
pub trait Runtime: Send {
    /// Carries out `action`; the caller holds every impacted lock meanwhile.
    fn apply(&mut self, action: Action) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        self.apply_holding(action, &[])
    }
    /// Carries out `action` while the caller holds the locks behind `locks`:
    /// every hook the action runs inherits duplicates of them, so the locks
    /// stay held until the hook has exited even if the agent dies meanwhile.
    fn apply_holding(
        &mut self,
        action: Action,
        locks: &[BorrowedFd<'_>],
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Records the effect of `action`, which a hook finished while the agent
    /// was not running (the agent learnt it from the hook's recorded status).
    fn record_finished(&mut self, action: &Action) -> Result<(), RuntimeError>;
    /// The blocks running now, by name.
    fn running(&self) -> BTreeMap<String, BlockSpec>;
    /// The OS version, if known.
    fn os_version(&self) -> Option<String>;
    /// The release the device runs, if known.
    fn release(&self) -> Option<String>;
}

/// The runtime the agent was configured with.
#[derive(Debug)]
pub enum AnyRuntime {
    Process(ProcessRuntime),
    Hooks(HooksRuntime),
}

impl AnyRuntime {
    /// See [`ProcessRuntime::ensure_started`] and [`HooksRuntime::ensure_started`].
    pub async fn ensure_started(&mut self, manifest: &Manifest) -> Result<(), RuntimeError> {
        match self {
            Self::Process(r) => r.ensure_started(manifest).await,
            Self::Hooks(r) => r.ensure_started(manifest),
        }
    }

    /// A block's pid; always `None` for the hooks runtime.
    pub fn pid(&self, block: &str) -> Option<u32> {
        match self {
            Self::Process(r) => r.pid(block),
            Self::Hooks(_) => None,
        }
    }
}

impl Runtime for AnyRuntime {
    async fn apply_holding(
        &mut self,
        action: Action,
        locks: &[BorrowedFd<'_>],
    ) -> Result<(), RuntimeError> {
        match self {
            Self::Process(r) => r.apply_holding(action, locks).await,
            Self::Hooks(r) => r.apply_holding(action, locks).await,
        }
    }
    fn record_finished(&mut self, action: &Action) -> Result<(), RuntimeError> {
        match self {
            Self::Process(r) => r.record_finished(action),
            Self::Hooks(r) => r.record_finished(action),
        }
    }
    fn running(&self) -> BTreeMap<String, BlockSpec> {
        match self {
            Self::Process(r) => r.running(),
            Self::Hooks(r) => r.running(),
        }
    }
    fn os_version(&self) -> Option<String> {
        match self {
            Self::Process(r) => r.os_version(),
            Self::Hooks(r) => r.os_version(),
        }
    }
    fn release(&self) -> Option<String> {
        match self {
            Self::Process(r) => Runtime::release(r),
            Self::Hooks(r) => Runtime::release(r),
        }
    }
}

// ---------------------------------------------------------------------------
// Process runtime
// ---------------------------------------------------------------------------

/// A live block process.
#[derive(Debug)]
struct Proc {
    pid: u32,
    /// Kernel start time (clock ticks since boot): tells our process from a
    /// later one that reused its pid.
    start_time: Option<u64>,
    /// Present when this agent spawned it (and must reap it); absent when adopted.
    child: Option<Child>,
}

/// A block the process runtime manages. `proc` is `None` when it is stopped by
/// a shutdown or failed to start again: it is (re)started at the next agent
/// start.
#[derive(Debug)]
struct Managed {
    spec: BlockSpec,
    proc: Option<Proc>,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct ProcessState {
    #[serde(default)]
    boot_id: Option<String>,
    #[serde(default)]
    release: Option<String>,
    #[serde(default)]
    os_version: Option<String>,
    #[serde(default)]
    manifest_applied: bool,
    #[serde(default)]
    blocks: BTreeMap<String, PersistedBlock>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PersistedBlock {
    spec: BlockSpec,
    pid: Option<u32>,
    #[serde(default)]
    start_time: Option<u64>,
}

/// Blocks as real local processes. See the module documentation.
#[derive(Debug)]
pub struct ProcessRuntime {
    state_dir: PathBuf,
    lock_dir: LockDir,
    hooks: Hooks,
    extra_env: BTreeMap<String, String>,
    path_env: String,
    stop_timeout: Duration,
    boot_id: Option<String>,
    release: Option<String>,
    os_version: Option<String>,
    manifest_applied: bool,
    blocks: BTreeMap<String, Managed>,
    /// During an apply: the lock descriptors its hooks inherit.
    inherit: Vec<OwnedFd>,
}

impl ProcessRuntime {
    /// Loads `<state_dir>/runtime.json` if present: blocks whose process is
    /// still alive are adopted, the others are started again. Blocks that fail
    /// to start are logged and retried at the next start.
    pub async fn new(
        state_dir: impl Into<PathBuf>,
        lock_dir: LockDir,
        hooks: Hooks,
        extra_env: BTreeMap<String, String>,
    ) -> Result<Self, RuntimeError> {
        let state_dir = state_dir.into();
        let logs = state_dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(io_err("create directory", &logs))?;
        let state: ProcessState = read_state(&state_dir.join(STATE_FILE_NAME))?.unwrap_or_default();
        let boot_id = current_boot_id();
        let same_boot = match (&state.boot_id, &boot_id) {
            (Some(then), Some(now)) => then == now,
            _ => true,
        };
        let mut me = Self {
            state_dir,
            lock_dir,
            hooks,
            extra_env,
            path_env: std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned()),
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            boot_id,
            release: state.release,
            os_version: state.os_version,
            manifest_applied: state.manifest_applied,
            blocks: BTreeMap::new(),
            inherit: Vec::new(),
        };
        for (name, p) in state.blocks {
            let proc = match p.pid {
                Some(pid) if same_boot && process_alive(pid, p.start_time) => {
                    tracing::info!(block = %name, pid, "adopted running block");
                    Some(Proc {
                        pid,
                        start_time: p.start_time,
                        child: None,
                    })
                }
                _ => None,
            };
            me.blocks.insert(name, Managed { spec: p.spec, proc });
        }
        // Failures are logged; those blocks stay stopped and are tried again
        // at the next agent start or reboot.
        let _ = me.start_stopped().await;
        me.persist()?;
        Ok(me)
    }

    /// Changes how long a stopped block gets between `SIGTERM` and `SIGKILL`
    /// (default 5 s).
    pub fn with_stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// First boot: starts the manifest's blocks that do not run, and takes its
    /// release and OS version if none is known. Once that has succeeded it is
    /// never done again, so a later release is not undone by the manifest.
    pub async fn ensure_started(&mut self, manifest: &Manifest) -> Result<(), RuntimeError> {
        if self.manifest_applied {
            return Ok(());
        }
        let result = self.apply_manifest(manifest).await;
        let persisted = self.persist();
        result.and(persisted)
    }

    async fn apply_manifest(&mut self, manifest: &Manifest) -> Result<(), RuntimeError> {
        for spec in &manifest.blocks {
            spec.validate().map_err(bad_spec(&spec.name))?;
        }
        for spec in &manifest.blocks {
            if self.blocks.get(&spec.name).is_none_or(|m| m.proc.is_none()) {
                let proc = self.spawn(spec, false)?;
                self.blocks.insert(
                    spec.name.clone(),
                    Managed {
                        spec: spec.clone(),
                        proc: Some(proc),
                    },
                );
            }
        }
        if self.release.is_none() {
            self.release = Some(manifest.release.clone());
        }
        if self.os_version.is_none() {
            self.os_version.clone_from(&manifest.os_version);
        }
        self.manifest_applied = true;
        Ok(())
    }

    /// The pid of a running block (the leader of its process group).
    pub fn pid(&self, block: &str) -> Option<u32> {
        self.blocks.get(block)?.proc.as_ref().map(|p| p.pid)
    }

    /// Where a block's stdout and stderr go.
    pub fn log_path(&self, block: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("{block}.log"))
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn lock_dir(&self) -> &LockDir {
        &self.lock_dir
    }

    async fn apply_action(&mut self, action: Action) -> Result<(), RuntimeError> {
        let result = match action {
            Action::Start(spec) => self.start(spec).await,
            Action::Stop(block) => self.stop(&block).await,
            Action::Restart(block) => self.restart(&block).await,
            Action::Replace(spec) => {
                spec.validate().map_err(bad_spec(&spec.name))?;
                self.replace(spec).await
            }
            Action::Reboot => self.simulate_reboot("reboot", None).await,
            Action::OsUpdate { version } => self.simulate_reboot("os_update", Some(version)).await,
            Action::Shutdown => self.shutdown().await,
            Action::Release { release, blocks } => self.move_to_release(release, blocks).await,
        };
        let persisted = self.persist();
        result.and(persisted)
    }

    async fn start(&mut self, spec: BlockSpec) -> Result<(), RuntimeError> {
        spec.validate().map_err(bad_spec(&spec.name))?;
        match self.blocks.get(&spec.name) {
            Some(m) if m.proc.is_some() && m.spec == spec => Ok(()),
            Some(m) if m.proc.is_some() => self.replace(spec).await,
            _ => {
                let proc = self.spawn(&spec, false)?;
                self.blocks.insert(
                    spec.name.clone(),
                    Managed {
                        spec,
                        proc: Some(proc),
                    },
                );
                Ok(())
            }
        }
    }

    async fn stop(&mut self, block: &str) -> Result<(), RuntimeError> {
        let Some(mut managed) = self.blocks.remove(block) else {
            return Ok(());
        };
        if let Some(proc) = managed.proc.take()
            && let Err((e, proc)) = self.stop_proc(block, proc).await
        {
            managed.proc = Some(proc);
            self.blocks.insert(block.to_owned(), managed);
            return Err(e);
        }
        Ok(())
    }

    async fn restart(&mut self, block: &str) -> Result<(), RuntimeError> {
        let Some(managed) = self.blocks.get_mut(block) else {
            return Err(RuntimeError::UnknownBlock {
                block: block.to_owned(),
            });
        };
        let spec = managed.spec.clone();
        if let Some(proc) = managed.proc.take()
            && let Err((e, proc)) = self.stop_proc(block, proc).await
        {
            self.set_proc(block, Some(proc));
            return Err(e);
        }
        let proc = self.spawn(&spec, false)?;
        self.set_proc(block, Some(proc));
        Ok(())
    }

    fn set_proc(&mut self, block: &str, proc: Option<Proc>) {
        if let Some(m) = self.blocks.get_mut(block) {
            m.proc = proc;
        }
    }

    /// Replaces a block's process with one running `spec` (validated).
    async fn replace(&mut self, spec: BlockSpec) -> Result<(), RuntimeError> {
        let old = self.blocks.get_mut(&spec.name).and_then(|m| m.proc.take());
        let Some(old) = old else {
            let proc = self.spawn(&spec, false)?;
            self.blocks.insert(
                spec.name.clone(),
                Managed {
                    spec,
                    proc: Some(proc),
                },
            );
            return Ok(());
        };
        let name = spec.name.clone();
        match spec.hand_over() {
            Some(timeout) => {
                let new = match self.hand_over(&spec, timeout).await {
                    Ok(new) => new,
                    Err(e) => {
                        self.set_proc(&name, Some(old));
                        return Err(e);
                    }
                };
                let stopped = self.stop_proc(&name, old).await;
                // Even if the old one survived, the new one runs the new spec.
                self.blocks.insert(
                    name.clone(),
                    Managed {
                        spec,
                        proc: Some(new),
                    },
                );
                stopped.map_err(|(e, _)| e)
            }
            None => {
                if let Err((e, old)) = self.stop_proc(&name, old).await {
                    self.set_proc(&name, Some(old));
                    return Err(e);
                }
                // Stopped: whatever happens next, the old spec no longer runs.
                self.blocks.remove(&name);
                let proc = self.spawn(&spec, false)?;
                self.blocks.insert(
                    name,
                    Managed {
                        spec,
                        proc: Some(proc),
                    },
                );
                Ok(())
            }
        }
    }

    /// Starts the new process of a hand-over and waits until it creates its
    /// hand-over file or `timeout` passes. Fails if it exits before either.
    async fn hand_over(&self, spec: &BlockSpec, timeout: Duration) -> Result<Proc, RuntimeError> {
        let block = spec.block_name().map_err(bad_spec(&spec.name))?;
        let done = self.lock_dir.block_dir(&block).join(HANDOVER_FILE_NAME);
        match std::fs::remove_file(&done) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(RuntimeError::Io {
                    op: "remove stale hand-over file",
                    path: done,
                    source,
                });
            }
        }
        let mut new = self.spawn(spec, true)?;
        let deadline = Instant::now() + timeout;
        loop {
            if done.exists() {
                tracing::info!(block = %block, pid = new.pid, "hand-over complete");
                return Ok(new);
            }
            if let Some(child) = new.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(RuntimeError::HandoverExited {
                    block: spec.name.clone(),
                    status,
                });
            }
            if Instant::now() >= deadline {
                tracing::warn!(block = %block, ?timeout, "hand-over timed out; stopping the old process anyway");
                return Ok(new);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops every block (keeping their specs), runs the hook, starts them all
    /// again; the OS version changes only if the hook succeeded.
    async fn simulate_reboot(
        &mut self,
        action: &'static str,
        os_version: Option<String>,
    ) -> Result<(), RuntimeError> {
        let stopped = self.stop_all().await;
        let hook = match stopped {
            Ok(()) => {
                let command = if action == "reboot" {
                    self.hooks.reboot.clone()
                } else {
                    self.hooks.os_update.clone()
                };
                let mut env = self.hook_env(action);
                if let Some(v) = &os_version {
                    env.push(("LOCKSTEP_OS_VERSION".into(), v.clone()));
                }
                match command {
                    Some(c) => run_hook(action, &c, &env, &self.state_dir, &self.inherit).await,
                    None => Ok(()),
                }
            }
            Err(e) => Err(e),
        };
        if hook.is_ok()
            && let Some(v) = os_version
        {
            self.os_version = Some(v);
        }
        let failed_starts = self.start_stopped().await;
        hook.and(failed_starts)
    }

    async fn shutdown(&mut self) -> Result<(), RuntimeError> {
        self.stop_all().await?;
        match self.hooks.shutdown.clone() {
            Some(c) => {
                run_hook(
                    "shutdown",
                    &c,
                    &self.hook_env("shutdown"),
                    &self.state_dir,
                    &self.inherit,
                )
                .await
            }
            None => Ok(()),
        }
    }

    async fn move_to_release(
        &mut self,
        release: String,
        blocks: Vec<BlockSpec>,
    ) -> Result<(), RuntimeError> {
        let mut seen = std::collections::BTreeSet::new();
        for spec in &blocks {
            spec.validate().map_err(bad_spec(&spec.name))?;
            if !seen.insert(spec.name.as_str()) {
                return Err(bad_spec(&spec.name)(SpecError::Duplicate {
                    name: spec.name.clone(),
                }));
            }
        }
        let gone: Vec<String> = self
            .blocks
            .keys()
            .filter(|name| !seen.contains(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.stop(&name).await?;
        }
        for spec in blocks {
            match self.blocks.get(&spec.name) {
                Some(m) if m.proc.is_some() && m.spec == spec => {}
                Some(m) if m.proc.is_some() => self.replace(spec).await?,
                _ => self.start(spec).await?,
            }
        }
        self.release = Some(release);
        Ok(())
    }

    /// Stops every running block, keeping its spec. Stops them all even if one
    /// fails; returns the first failure.
    async fn stop_all(&mut self) -> Result<(), RuntimeError> {
        let mut first = Ok(());
        let names: Vec<String> = self.blocks.keys().rev().cloned().collect();
        for name in names {
            let Some(proc) = self.blocks.get_mut(&name).and_then(|m| m.proc.take()) else {
                continue;
            };
            if let Err((e, proc)) = self.stop_proc(&name, proc).await {
                self.set_proc(&name, Some(proc));
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Starts every managed block that is not running. Tries them all; returns
    /// the first failure (the failed ones stay stopped, to be tried again).
    async fn start_stopped(&mut self) -> Result<(), RuntimeError> {
        let mut first = Ok(());
        let stopped: Vec<BlockSpec> = self
            .blocks
            .values()
            .filter(|m| m.proc.is_none())
            .map(|m| m.spec.clone())
            .collect();
        for spec in stopped {
            match self.spawn(&spec, false) {
                Ok(proc) => self.set_proc(&spec.name, Some(proc)),
                Err(e) => {
                    tracing::warn!(block = %spec.name, error = %e, "cannot start block");
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
        }
        first
    }

    fn hook_env(&self, action: &'static str) -> Vec<(String, String)> {
        let mut env = vec![("LOCKSTEP_ACTION".to_owned(), action.to_owned())];
        if let Some(r) = &self.release {
            env.push(("LOCKSTEP_RELEASE".into(), r.clone()));
        }
        env
    }

    /// Spawns `spec` (validated) in its own process group with its environment
    /// (see the module documentation).
    fn spawn(&self, spec: &BlockSpec, handover: bool) -> Result<Proc, RuntimeError> {
        let block = spec.block_name().map_err(bad_spec(&spec.name))?;
        let lock_file =
            self.lock_dir
                .ensure_block(&block)
                .map_err(|source| RuntimeError::LockDir {
                    block: spec.name.clone(),
                    source: Box::new(source),
                })?;
        let block_dir = self.lock_dir.block_dir(&block);
        let log_path = self.log_path(&spec.name);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err("open log", &log_path))?;
        let log_err = log.try_clone().map_err(io_err("open log", &log_path))?;
        let Some((program, args)) = spec.command.split_first() else {
            return Err(bad_spec(&spec.name)(SpecError::EmptyCommand));
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", &self.path_env)
            .envs(&spec.env)
            .envs(&self.extra_env)
            .env("LOCKSTEP_BLOCK", &spec.name)
            .env("LOCKSTEP_BLOCK_VERSION", &spec.version)
            .env("LOCKSTEP_LOCK_DIR", &block_dir)
            .env("LOCKSTEP_LOCK_FILE", &lock_file)
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                log_err.try_clone().map_err(io_err("open log", &log_path))?,
            ))
            .stderr(Stdio::from(log_err))
            .process_group(0);
        if handover {
            cmd.env("LOCKSTEP_HANDOVER", "1")
                .env("LOCKSTEP_HANDOVER_FILE", block_dir.join(HANDOVER_FILE_NAME));
        }
        if let Some(dir) = &spec.working_dir {
            cmd.current_dir(dir);
        }
        let spawn_err = |source| RuntimeError::Spawn {
            block: spec.name.clone(),
            program: program.clone(),
            source,
        };
        let child = cmd.spawn().map_err(spawn_err)?;
        let Some(pid) = child.id() else {
            return Err(spawn_err(io::Error::other(
                "exited before its pid was known",
            )));
        };
        let _ = writeln!(
            log,
            "== lockstep: started {} {} as pid {pid}{}",
            spec.name,
            spec.version,
            if handover { " (hand-over)" } else { "" }
        );
        tracing::info!(block = %spec.name, version = %spec.version, pid, handover, "started block");
        Ok(Proc {
            pid,
            start_time: proc_stat(pid).map(|s| s.start_time),
            child: Some(child),
        })
    }

    /// `SIGTERM` to the block's process group, up to the stop timeout, then
    /// `SIGKILL`. On failure, hands the process back with the error.
    async fn stop_proc(&self, block: &str, mut proc: Proc) -> Result<(), (RuntimeError, Proc)> {
        let pid = proc.pid;
        if let Err(e) = signal_block(block, &proc, Signal::TERM, "SIGTERM") {
            return Err((e, proc));
        }
        if !wait_exit(&mut proc, self.stop_timeout).await {
            tracing::warn!(block, pid, "block ignored SIGTERM; sending SIGKILL");
            if let Err(e) = signal_block(block, &proc, Signal::KILL, "SIGKILL") {
                return Err((e, proc));
            }
            if !wait_exit(&mut proc, KILL_GRACE).await {
                return Err((
                    RuntimeError::StopTimeout {
                        block: block.to_owned(),
                        pid,
                        waited: KILL_GRACE,
                    },
                    proc,
                ));
            }
        }
        // The leader is gone; whatever else remains in its group belongs to the
        // stopped block too. (While any member lives, its pgid is not reused.)
        if let Some(p) = raw_pid(pid) {
            let _ = rustix::process::kill_process_group(p, Signal::KILL);
        }
        tracing::info!(block, pid, "stopped block");
        Ok(())
    }

    fn persist(&self) -> Result<(), RuntimeError> {
        let state = ProcessState {
            boot_id: self.boot_id.clone(),
            release: self.release.clone(),
            os_version: self.os_version.clone(),
            manifest_applied: self.manifest_applied,
            blocks: self
                .blocks
                .iter()
                .map(|(name, m)| {
                    (
                        name.clone(),
                        PersistedBlock {
                            spec: m.spec.clone(),
                            pid: m.proc.as_ref().map(|p| p.pid),
                            start_time: m.proc.as_ref().and_then(|p| p.start_time),
                        },
                    )
                })
                .collect(),
        };
        write_state(&self.state_dir.join(STATE_FILE_NAME), &state)
    }
}

impl Runtime for ProcessRuntime {
    async fn apply_holding(
        &mut self,
        action: Action,
        locks: &[BorrowedFd<'_>],
    ) -> Result<(), RuntimeError> {
        self.inherit = dup_all(locks, &self.state_dir)?;
        let result = self.apply_action(action).await;
        self.inherit.clear();
        result
    }
    /// Only the OS update's hook can finish without the agent: blocks are
    /// started and stopped by the agent itself (and started again when it
    /// starts).
    fn record_finished(&mut self, action: &Action) -> Result<(), RuntimeError> {
        if let Action::OsUpdate { version } = action {
            self.os_version = Some(version.clone());
            self.persist()?;
        }
        Ok(())
    }
    fn running(&self) -> BTreeMap<String, BlockSpec> {
        self.blocks
            .iter()
            .filter(|(_, m)| m.proc.is_some())
            .map(|(n, m)| (n.clone(), m.spec.clone()))
            .collect()
    }
    fn os_version(&self) -> Option<String> {
        self.os_version.clone()
    }
    fn release(&self) -> Option<String> {
        self.release.clone()
    }
}

fn raw_pid(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw)
}

/// Signals the block's process group; falls back to the process alone if the
/// group is gone (the block moved itself to another group). A process that no
/// longer exists is not an error.
fn signal_block(
    block: &str,
    proc: &Proc,
    signal: Signal,
    name: &'static str,
) -> Result<(), RuntimeError> {
    let Some(pid) = raw_pid(proc.pid) else {
        return Ok(());
    };
    let result = match rustix::process::kill_process_group(pid, signal) {
        Err(rustix::io::Errno::SRCH) => rustix::process::kill_process(pid, signal),
        other => other,
    };
    match result {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(RuntimeError::Signal {
            block: block.to_owned(),
            pid: proc.pid,
            signal: name,
            source: e.into(),
        }),
    }
}

/// Waits up to `timeout` for the process to exit; reaps it if it is ours.
async fn wait_exit(proc: &mut Proc, timeout: Duration) -> bool {
    if let Some(child) = proc.child.as_mut() {
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(_)) => return true,
            // Cannot wait (already reaped elsewhere?): fall back to polling.
            Ok(Err(_)) => proc.child = None,
            Err(_) => return false,
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        if !process_alive(proc.pid, proc.start_time) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether `pid` is alive (not a zombie) and, if `start_time` is known, is
/// still the process that started then.
fn process_alive(pid: u32, start_time: Option<u64>) -> bool {
    let Some(p) = raw_pid(pid) else {
        return false;
    };
    match rustix::process::test_kill_process(p) {
        Ok(()) | Err(rustix::io::Errno::PERM) => {}
        Err(_) => return false,
    }
    match proc_stat(pid) {
        Some(stat) => {
            !matches!(stat.state, 'Z' | 'X')
                && start_time.is_none_or(|expected| expected == stat.start_time)
        }
        // No /proc: trust the signal test.
        None => true,
    }
}

/// The fields of `/proc/<pid>/stat` this module uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    state: char,
    start_time: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    parse_proc_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses `/proc/<pid>/stat`: `pid (comm) state ppid … starttime …`. `comm`
/// may hold spaces and parentheses, so fields are counted after the last `)`;
/// `starttime` is field 22 overall, the 20th after `comm`.
fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// This boot of the machine (`/proc/sys/kernel/random/boot_id`).
pub fn current_boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
}

// ---------------------------------------------------------------------------
// Hooks runtime
// ---------------------------------------------------------------------------

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct HooksState {
    #[serde(default)]
    release: Option<String>,
    #[serde(default)]
    os_version: Option<String>,
    #[serde(default)]
    manifest_applied: bool,
    #[serde(default)]
    blocks: BTreeMap<String, BlockSpec>,
}

/// Every action is an operator-provided hook. See the module documentation.
#[derive(Debug)]
pub struct HooksRuntime {
    state_dir: PathBuf,
    hooks: Hooks,
    state: HooksState,
    /// During an apply: the lock descriptors its hooks inherit.
    inherit: Vec<OwnedFd>,
}

impl HooksRuntime {
    /// Loads `<state_dir>/runtime.json` if present.
    pub fn new(state_dir: impl Into<PathBuf>, hooks: Hooks) -> Result<Self, RuntimeError> {
        let state_dir = state_dir.into();
        let logs = state_dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(io_err("create directory", &logs))?;
        let state = read_state(&state_dir.join(STATE_FILE_NAME))?.unwrap_or_default();
        Ok(Self {
            state_dir,
            hooks,
            state,
            inherit: Vec::new(),
        })
    }

    /// First boot: records the manifest as what runs (the operator's system
    /// started it; no hook runs). Never done again once recorded.
    pub fn ensure_started(&mut self, manifest: &Manifest) -> Result<(), RuntimeError> {
        if self.state.manifest_applied {
            return Ok(());
        }
        for spec in &manifest.blocks {
            spec.validate().map_err(bad_spec(&spec.name))?;
        }
        if self.state.blocks.is_empty() {
            self.state.blocks = manifest
                .blocks
                .iter()
                .map(|s| (s.name.clone(), s.clone()))
                .collect();
        }
        if self.state.release.is_none() {
            self.state.release = Some(manifest.release.clone());
        }
        if self.state.os_version.is_none() {
            self.state.os_version.clone_from(&manifest.os_version);
        }
        self.state.manifest_applied = true;
        self.persist()
    }

    fn hook(&self, action: &Action) -> Result<String, RuntimeError> {
        let hook = match action {
            Action::Start(_) | Action::Stop(_) | Action::Restart(_) | Action::Replace(_) => {
                &self.hooks.restart_block
            }
            Action::Reboot => &self.hooks.reboot,
            Action::Shutdown => &self.hooks.shutdown,
            Action::OsUpdate { .. } => &self.hooks.os_update,
            Action::Release { .. } => &self.hooks.release,
        };
        hook.clone().ok_or(RuntimeError::NoHook {
            action: action.name(),
        })
    }

    /// Writes `<state_dir>/target.json` (manifest-shaped) and returns its path.
    fn write_target(&self, release: &str, blocks: &[BlockSpec]) -> Result<PathBuf, RuntimeError> {
        let path = self.state_dir.join("target.json");
        let target = Manifest {
            release: release.to_owned(),
            os_version: self.state.os_version.clone(),
            blocks: blocks.to_vec(),
        };
        write_state(&path, &target)?;
        Ok(path)
    }

    async fn apply_action(&mut self, action: Action) -> Result<(), RuntimeError> {
        let command = self.hook(&action)?;
        let name = action.name();
        let mut env = vec![("LOCKSTEP_ACTION".to_owned(), name.to_owned())];
        if let Some(r) = &self.state.release
            && !matches!(action, Action::Release { .. })
        {
            env.push(("LOCKSTEP_RELEASE".into(), r.clone()));
        }
        let current_release = self.state.release.clone().unwrap_or_default();
        match &action {
            Action::Start(spec) | Action::Replace(spec) => {
                spec.validate().map_err(bad_spec(&spec.name))?;
                let target = self.write_target(&current_release, std::slice::from_ref(spec))?;
                env.push(("LOCKSTEP_BLOCK".into(), spec.name.clone()));
                env.push(("LOCKSTEP_BLOCK_VERSION".into(), spec.version.clone()));
                env.push(("LOCKSTEP_TARGET_FILE".into(), path_string(&target)));
                if let (Action::Replace(_), Some(secs)) = (&action, spec.hand_over_timeout_secs) {
                    env.push(("LOCKSTEP_HANDOVER_TIMEOUT_SECS".into(), secs.to_string()));
                }
            }
            Action::Stop(block) | Action::Restart(block) => {
                BlockName::new(block.as_str()).map_err(|source| {
                    bad_spec(block)(SpecError::BadName {
                        value: block.clone(),
                        source,
                    })
                })?;
                env.push(("LOCKSTEP_BLOCK".into(), block.clone()));
            }
            Action::OsUpdate { version } => {
                env.push(("LOCKSTEP_OS_VERSION".into(), version.clone()));
            }
            Action::Release { release, blocks } => {
                let mut seen = std::collections::BTreeSet::new();
                for spec in blocks {
                    spec.validate().map_err(bad_spec(&spec.name))?;
                    if !seen.insert(spec.name.as_str()) {
                        return Err(bad_spec(&spec.name)(SpecError::Duplicate {
                            name: spec.name.clone(),
                        }));
                    }
                }
                let target = self.write_target(release, blocks)?;
                env.push(("LOCKSTEP_RELEASE".into(), release.clone()));
                env.push(("LOCKSTEP_TARGET_FILE".into(), path_string(&target)));
            }
            Action::Reboot | Action::Shutdown => {}
        }
        run_hook(name, &command, &env, &self.state_dir, &self.inherit).await?;
        self.record(action)
    }

    /// Records what a finished action changed.
    fn record(&mut self, action: Action) -> Result<(), RuntimeError> {
        match action {
            Action::Start(spec) | Action::Replace(spec) => {
                self.state.blocks.insert(spec.name.clone(), spec);
            }
            Action::Stop(block) => {
                self.state.blocks.remove(&block);
            }
            Action::OsUpdate { version } => self.state.os_version = Some(version),
            Action::Release { release, blocks } => {
                self.state.release = Some(release);
                self.state.blocks = blocks.into_iter().map(|s| (s.name.clone(), s)).collect();
            }
            // A restart changes nothing recorded; after a reboot or shutdown
            // the operator's system brings the same blocks back.
            Action::Restart(_) | Action::Reboot | Action::Shutdown => {}
        }
        self.persist()
    }

    fn persist(&self) -> Result<(), RuntimeError> {
        write_state(&self.state_dir.join(STATE_FILE_NAME), &self.state)
    }
}

impl Runtime for HooksRuntime {
    async fn apply_holding(
        &mut self,
        action: Action,
        locks: &[BorrowedFd<'_>],
    ) -> Result<(), RuntimeError> {
        self.inherit = dup_all(locks, &self.state_dir)?;
        let result = self.apply_action(action).await;
        self.inherit.clear();
        result
    }
    fn record_finished(&mut self, action: &Action) -> Result<(), RuntimeError> {
        self.record(action.clone())
    }
    fn running(&self) -> BTreeMap<String, BlockSpec> {
        self.state.blocks.clone()
    }
    fn os_version(&self) -> Option<String> {
        self.state.os_version.clone()
    }
    fn release(&self) -> Option<String> {
        self.state.release.clone()
    }
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------
// Shared: state files and hooks
// ---------------------------------------------------------------------------

/// Reads a JSON state file; `None` if it does not exist.
fn read_state<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, RuntimeError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| RuntimeError::State {
                    path: path.to_owned(),
                    source,
                })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RuntimeError::Io {
            op: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

fn write_state<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), RuntimeError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| RuntimeError::Encode {
        path: path.to_owned(),
        source,
    })?;
    write_atomic(path, &bytes).map_err(|(op, path, source)| RuntimeError::Io { op, path, source })
}

/// Where the hook of the step under way records itself, inside the
/// runtime's state directory: `pid`, then `status` (its exit status) and
/// `stderr`.
pub const ACTION_DIR: &str = "action";

/// The first descriptor number a hook finds the apply's locks at (then
/// `4`, `5`, …; their numbers are in `LOCKSTEP_LOCK_FDS`).
const FIRST_LOCK_FD: i32 = 3;

/// Runs the hook inside a small `/bin/sh` wrapper that records its pid,
/// then the hook's exit status, in the action directory (`$2`): the agent
/// reads them after a restart to learn what became of an action it did not
/// see finish. The wrapper holds the inherited lock descriptors until the
/// status is written, so a restarted agent that sees no running wrapper and
/// no status knows the action was killed.
const HOOK_WRAPPER: &str = r#"echo $$ > "$2/pid.tmp" && mv -f "$2/pid.tmp" "$2/pid"
/bin/sh -c "$1"
s=$?
echo "$s" > "$2/status.tmp" && mv -f "$2/status.tmp" "$2/status"
exit "$s""#;

/// Duplicates the caller's lock descriptors for hooks to inherit.
fn dup_all(locks: &[BorrowedFd<'_>], state_dir: &Path) -> Result<Vec<OwnedFd>, RuntimeError> {
    locks
        .iter()
        .map(|fd| {
            fd.try_clone_to_owned()
                .map_err(io_err("duplicate a lock descriptor for", state_dir))
        })
        .collect()
}

/// Runs `/bin/sh -c <command>` with the agent's environment plus `env`, in
/// `state_dir`, inside [`HOOK_WRAPPER`]. The hook inherits `inherit` (the
/// apply's lock descriptors) at descriptors 3, 4, …, listed in
/// `LOCKSTEP_LOCK_FDS`: the locks stay held until the hook and everything it
/// started with them have exited, even if the agent dies meanwhile. The hook
/// runs in a process group of its own and is not killed when the agent
/// stops. stdout goes to
/// `<state_dir>/logs/hooks.log`; stderr to `<state_dir>/action/stderr`,
/// whose tail ends up in the error if the hook fails (files, not pipes, so a
/// hook leaving a background process behind cannot stall us).
async fn run_hook(
    action: &'static str,
    command: &str,
    env: &[(String, String)],
    state_dir: &Path,
    inherit: &[OwnedFd],
) -> Result<(), RuntimeError> {
    let logs = state_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(io_err("create directory", &logs))?;
    let step_dir = clear_step(state_dir)?;
    let log_path = logs.join("hooks.log");
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_err("open log", &log_path))?;
    let _ = writeln!(log, "== lockstep: {action} hook: {command}");
    let stdout = log.try_clone().map_err(io_err("open log", &log_path))?;
    let stderr_path = step_dir.join("stderr");
    let stderr_for_child =
        std::fs::File::create(&stderr_path).map_err(io_err("create", &stderr_path))?;
    let spawn_err = |source| RuntimeError::HookSpawn { action, source };
    let mut mappings = Vec::with_capacity(inherit.len());
    let mut numbers = Vec::with_capacity(inherit.len());
    for (child_fd, fd) in (FIRST_LOCK_FD..).zip(inherit) {
        mappings.push(command_fds::FdMapping {
            parent_fd: fd.try_clone().map_err(spawn_err)?,
            child_fd,
        });
        numbers.push(child_fd.to_string());
    }
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(HOOK_WRAPPER)
        .arg("lockstep-action")
        .arg(command)
        .arg(&step_dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("LOCKSTEP_LOCK_FDS", numbers.join(","))
        .current_dir(state_dir)
        // Its own process group (led by the wrapper, whose pid is recorded):
        // a signal meant for the agent's group does not end the action.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr_for_child));
    command_fds::CommandFdExt::fd_mappings(&mut cmd, mappings)
        .map_err(|e| spawn_err(io::Error::other(e)))?;
    let mut child = cmd.spawn().map_err(spawn_err)?;
    // The parent's copies go with `cmd`: only the agent's own descriptors
    // and the child's keep the locks.
    drop(cmd);
    let status = child.wait().await.map_err(spawn_err)?;
    let err_text = std::fs::read(&stderr_path).unwrap_or_default();
    let _ = log.write_all(&err_text);
    let _ = writeln!(log, "== lockstep: {action} hook exited ({status})");
    if status.success() {
        tracing::info!(action, "hook succeeded");
        return Ok(());
    }
    Err(RuntimeError::HookFailed {
        action,
        status,
        stderr_tail: tail(&err_text, STDERR_TAIL_BYTES),
    })
}

/// Empties the action directory for a new step; returns its path.
pub fn clear_step(state_dir: &Path) -> Result<PathBuf, RuntimeError> {
    let dir = state_dir.join(ACTION_DIR);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(RuntimeError::Io {
                op: "clear",
                path: dir,
                source,
            });
        }
    }
    std::fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
    Ok(dir)
}

/// What the hook of the step under way left in the action directory of
/// `state_dir`: a recorded status, a wrapper still running, or neither.
pub fn step_fact(state_dir: &Path) -> StepFact {
    let dir = state_dir.join(ACTION_DIR);
    if let Ok(text) = std::fs::read_to_string(dir.join("status"))
        && let Ok(status) = text.trim().parse::<i32>()
    {
        let stderr = std::fs::read(dir.join("stderr")).unwrap_or_default();
        return StepFact::Finished {
            status,
            stderr_tail: tail(&stderr, STDERR_TAIL_BYTES),
        };
    }
    let running = std::fs::read_to_string(dir.join("pid"))
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .is_some_and(|pid| is_wrapper_of(pid, &dir));
    if running {
        StepFact::Running
    } else {
        StepFact::Unfinished
    }
}

/// Whether `pid` is a live hook wrapper for `dir` (its command line names
/// the directory), not an unrelated process that reused the pid.
fn is_wrapper_of(pid: u32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let want = dir.as_os_str().as_encoded_bytes();
    let zombie = proc_stat(pid).is_some_and(|s| s.state == 'Z');
    !zombie && cmdline.split(|b| *b == 0).any(|arg| arg == want)
}

/// The last `max` bytes of `bytes` as text, trimmed, starting at a line
/// boundary when the cut falls mid-line.
fn tail(bytes: &[u8], max: u64) -> String {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let start = bytes.len().saturating_sub(max);
    let mut slice = &bytes[start..];
    if start > 0
        && let Some(nl) = slice.iter().position(|&b| b == b'\n')
    {
        slice = &slice[nl + 1..];
    }
    String::from_utf8_lossy(slice).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let line = "4242 (sh (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 100 18446744073709551615";
        assert_eq!(
            parse_proc_stat(line),
            Some(ProcStat {
                state: 'S',
                start_time: 987654
            })
        );
        assert_eq!(parse_proc_stat("1 (x) Z 0"), None);
        assert_eq!(parse_proc_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_alive_and_start_time_is_checked() {
        let me = std::process::id();
        let stat = proc_stat(me).unwrap();
        assert!(process_alive(me, Some(stat.start_time)));
        assert!(!process_alive(me, Some(stat.start_time + 1)));
        assert!(!process_alive(0, None));
    }

    #[test]
    fn tail_keeps_the_end_at_a_line_boundary() {
        assert_eq!(tail(b"one\ntwo\nthree\n", 100), "one\ntwo\nthree");
        assert_eq!(tail(b"one\ntwo\nthree\n", 9), "three");
    }

    fn spec(name: &str) -> BlockSpec {
        BlockSpec {
            name: name.into(),
            version: "1.0.0".into(),
            command: vec!["true".into()],
            working_dir: None,
            env: BTreeMap::new(),
            env_fingerprint: String::new(),
            hand_over_timeout_secs: None,
        }
    }

    #[test]
    fn spec_validation_names_the_field() {
        let cases: Vec<(BlockSpec, &str)> = vec![
            (spec("Bad"), "name"),
            (
                BlockSpec {
                    version: "1.0".into(),
                    ..spec("a")
                },
                "version",
            ),
            (
                BlockSpec {
                    command: vec![],
                    ..spec("a")
                },
                "command",
            ),
            (
                BlockSpec {
                    env: BTreeMap::from([("1X".into(), "v".into())]),
                    ..spec("a")
                },
                "env",
            ),
            (
                BlockSpec {
                    env_fingerprint: "abc".into(),
                    ..spec("a")
                },
                "env_fingerprint",
            ),
            (
                BlockSpec {
                    hand_over_timeout_secs: Some(0),
                    ..spec("a")
                },
                "hand_over_timeout_secs",
            ),
        ];
        for (s, field) in cases {
            assert_eq!(s.validate().unwrap_err().field(), field, "{s:?}");
        }
        assert!(spec("a").validate().is_ok());
    }

    #[test]
    fn manifest_errors_name_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        std::fs::write(
            &path,
            r#"{"release":"r1","blocks":[
                {"name":"a","version":"1.0.0","command":["true"]},
                {"name":"b","version":"x","command":["true"]}]}"#,
        )
        .unwrap();
        let err = load_manifest(&path).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("manifest.json") && msg.contains("blocks[1].version"),
            "{msg}"
        );

        std::fs::write(
            &path,
            r#"{"release":"r1","blocks":[
                {"name":"a","version":"1.0.0","command":["true"]},
                {"name":"a","version":"1.0.0","command":["true"]}]}"#,
        )
        .unwrap();
        let msg = load_manifest(&path).unwrap_err().to_string();
        assert!(msg.contains("blocks[1].name"), "{msg}");

        std::fs::write(&path, r#"{"release":"r1","blocks":[{"name":"a"}]}"#).unwrap();
        let msg = load_manifest(&path).unwrap_err().to_string();
        assert!(
            msg.contains("manifest.json") && msg.contains("version"),
            "{msg}"
        );

        std::fs::write(
            &path,
            r#"{"release":"r1","os_version":"os-1","blocks":[
                {"name":"a","version":"1.0.0","command":["true"],"env":{"K":"v"}}]}"#,
        )
        .unwrap();
        let m = load_manifest(&path).unwrap();
        assert_eq!(m.os_version.as_deref(), Some("os-1"));
        let mut env = crate::domain::Env::new();
        env.insert(EnvName::new("K").unwrap(), "v".into());
        assert_eq!(m.blocks[0].env_fingerprint, fingerprint(&env).to_hex());
    }
}
