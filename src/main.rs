//! The `lockstep` binary: one executable for the server, the device agent and
//! the operator CLI, as Nomad and Consul do. Only argument parsing and wiring
//! live here; `anyhow` is used nowhere else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use lockstep::edge::server::{Bound, ServeConfig, shutdown_signal};
use lockstep::store::{PgStore, PoolOptions, SqliteStore};

#[derive(Debug, Parser)]
#[command(
    name = "lockstep",
    version,
    about = "Fleet-side scheduling of disruptive operations on edge devices, honouring per-block update locks"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "LOCKSTEP_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Lockstep server.
    Serve(ServeArgs),
    /// Run the device agent beside the blocks on a device.
    Agent(Box<AgentArgs>),
    /// Apply the database schema's pending migrations and exit (run once
    /// before rolling out replicas; `serve` also migrates at start).
    Migrate(MigrateArgs),
    /// See Lockstep work: a server, simulated devices and a narrated rollout.
    Demo(lockstep::cli::demo::DemoArgs),
    /// Tools for developers (load generation).
    #[command(hide = true, subcommand)]
    Debug(DebugCommand),
    /// Fleets: create, list.
    Fleet(lockstep::cli::Verb<lockstep::cli::FleetCommand>),
    /// Blocks and their versions: create, versions, add-version.
    Block(lockstep::cli::Verb<lockstep::cli::BlockCommand>),
    /// Releases: create, get, list, diff.
    Release(lockstep::cli::Verb<lockstep::cli::ReleaseCommand>),
    /// Devices: register, get, list, state.
    Device(lockstep::cli::Verb<lockstep::cli::DeviceCommand>),
    /// Fleet- and device-level env variables: set, unset, list.
    Env(lockstep::cli::Verb<lockstep::cli::EnvCommand>),
    /// Operations on devices: create, get, list, cancel, wait.
    Op(lockstep::cli::Verb<lockstep::cli::OpCommand>),
    /// Maintenance windows: create, list, delete, next.
    Window(lockstep::cli::Verb<lockstep::cli::WindowCommand>),
    /// A fleet's scheduling policy: get, set.
    Policy(lockstep::cli::Verb<lockstep::cli::PolicyCommand>),
    /// Customer approvals of operations: list, approve, decline.
    Approval(lockstep::cli::Verb<lockstep::cli::ApprovalCommand>),
    /// Phased rollouts: create, get, list, pause, resume, abort, watch.
    Rollout(lockstep::cli::Verb<lockstep::cli::RolloutCommand>),
    /// API tokens: create, list, revoke, whoami.
    Token(lockstep::cli::Verb<lockstep::cli::TokenCommand>),
    /// The audit log: list.
    Audit(lockstep::cli::Verb<lockstep::cli::AuditCommand>),
}

#[derive(Debug, clap::Args)]
struct MigrateArgs {
    /// Postgres URL (postgres://user:pass@host/db).
    #[arg(long, env = "LOCKSTEP_DATABASE_URL")]
    database_url: String,
    /// How long to wait for the database.
    #[arg(long, env = "LOCKSTEP_DB_ACQUIRE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    db_acquire_timeout: Duration,
}

/// `lockstep migrate`: connects (which migrates, refusing a schema newer
/// than this binary) and reports the version.
async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let pool = PoolOptions {
        max_connections: 1,
        acquire_timeout: args.db_acquire_timeout,
    };
    PgStore::connect(&args.database_url, &pool)
        .await
        .with_context(|| {
            format!(
                "migrating the Postgres database at {}",
                redact(&args.database_url)
            )
        })?;
    println!(
        "database at {} is at schema version {}",
        redact(&args.database_url),
        lockstep::store::migrations::latest(lockstep::store::Backend::Postgres)
    );
    Ok(())
}

/// Agent settings: flags, else `LOCKSTEP_*` env, else the `--config` JSON file
/// (same names, snake_case), else the defaults.
#[derive(Debug, clap::Args, Default)]
struct AgentArgs {
    /// A JSON file with any of the settings below (snake_case keys).
    #[arg(long, env = "LOCKSTEP_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// The server's gRPC URL, e.g. http://127.0.0.1:50051.
    #[arg(long, env = "LOCKSTEP_SERVER")]
    server: Option<String>,
    /// This device's id.
    #[arg(long, env = "LOCKSTEP_DEVICE")]
    device: Option<String>,
    /// File holding the device credential returned by RegisterDevice.
    #[arg(long, env = "LOCKSTEP_CREDENTIAL_FILE")]
    credential_file: Option<PathBuf>,
    /// Where each block's lock directory lives (<lock-root>/<block>/updates.lock).
    #[arg(long, env = "LOCKSTEP_LOCK_ROOT")]
    lock_root: Option<PathBuf>,
    /// The agent's durable state.
    #[arg(long, env = "LOCKSTEP_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// process (blocks are local processes) or hooks (operator commands).
    #[arg(long, env = "LOCKSTEP_RUNTIME", value_parser = ["process", "hooks"])]
    runtime: Option<String>,
    /// The device's initial blocks (JSON manifest).
    #[arg(long, env = "LOCKSTEP_MANIFEST")]
    manifest: Option<PathBuf>,
    /// Address of the local API for blocks (loopback).
    #[arg(long, env = "LOCKSTEP_API_LISTEN")]
    api_listen: Option<SocketAddr>,
    /// How often to look at the locks (e.g. 250ms, 1s).
    #[arg(long, env = "LOCKSTEP_LOCK_POLL", value_parser = parse_duration)]
    lock_poll: Option<Duration>,
    #[arg(long, env = "LOCKSTEP_HOOK_REBOOT")]
    hook_reboot: Option<String>,
    #[arg(long, env = "LOCKSTEP_HOOK_SHUTDOWN")]
    hook_shutdown: Option<String>,
    #[arg(long, env = "LOCKSTEP_HOOK_OS_UPDATE")]
    hook_os_update: Option<String>,
    #[arg(long, env = "LOCKSTEP_HOOK_RELEASE")]
    hook_release: Option<String>,
    #[arg(long, env = "LOCKSTEP_HOOK_RESTART_BLOCK")]
    hook_restart_block: Option<String>,
    /// A block that runs as its own user: BLOCK=UID[:GID] (repeatable). Its
    /// lock directory and token then belong to that user alone (the agent
    /// must run as root to give them away).
    #[arg(long = "block-owner", value_name = "BLOCK=UID[:GID]")]
    block_owners: Vec<String>,
    /// PEM CA certificate(s) to trust for an https:// server.
    #[arg(long, env = "LOCKSTEP_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (must name this device id).
    #[arg(long, env = "LOCKSTEP_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "LOCKSTEP_TLS_KEY")]
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    server: Option<String>,
    device: Option<String>,
    credential_file: Option<PathBuf>,
    lock_root: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    runtime: Option<String>,
    manifest: Option<PathBuf>,
    api_listen: Option<SocketAddr>,
    lock_poll: Option<String>,
    hook_reboot: Option<String>,
    hook_shutdown: Option<String>,
    hook_os_update: Option<String>,
    hook_release: Option<String>,
    hook_restart_block: Option<String>,
    /// Block name → "UID[:GID]".
    #[serde(default)]
    block_owners: std::collections::BTreeMap<String, String>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

fn agent_config(a: AgentArgs) -> anyhow::Result<lockstep::agent::run::AgentConfig> {
    use lockstep::agent::run::{AgentConfig, RuntimeKind};
    let file: AgentFile = match &a.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading agent config {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("parsing agent config {}", path.display()))?
        }
        None => AgentFile::default(),
    };
    let server = a
        .server
        .or(file.server)
        .context("--server (or LOCKSTEP_SERVER, or \"server\" in the config file) is required")?;
    let device = a.device.or(file.device).context("--device is required")?;
    lockstep::domain::DeviceId::new(&device).context("--device")?;
    let credential_file = a
        .credential_file
        .or(file.credential_file)
        .context("--credential-file is required")?;
    let credential = std::fs::read_to_string(&credential_file)
        .with_context(|| format!("reading the credential file {}", credential_file.display()))?
        .trim()
        .to_owned();
    anyhow::ensure!(
        !credential.is_empty(),
        "the credential file {} is empty",
        credential_file.display()
    );
    let runtime = match a.runtime.or(file.runtime).as_deref().unwrap_or("process") {
        "process" => RuntimeKind::Process,
        "hooks" => RuntimeKind::Hooks,
        other => anyhow::bail!("runtime must be process or hooks, not {other:?}"),
    };
    let manifest = match a.manifest.or(file.manifest) {
        Some(p) => Some(lockstep::agent::runtime::load_manifest(&p)?),
        None => None,
    };
    let lock_poll = match (a.lock_poll, file.lock_poll) {
        (Some(d), _) => d,
        (None, Some(s)) => parse_duration(&s)
            .map_err(anyhow::Error::msg)
            .context("lock_poll")?,
        (None, None) => Duration::from_millis(250),
    };
    let api_listen = a
        .api_listen
        .or(file.api_listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7070)));
    anyhow::ensure!(
        api_listen.ip().is_loopback(),
        "--api-listen must be a loopback address, not {api_listen}"
    );
    let mut block_owners = std::collections::BTreeMap::new();
    let from_flags = a.block_owners.iter().map(|s| {
        s.split_once('=')
            .map(|(b, o)| (b.to_owned(), o.to_owned()))
            .with_context(|| format!("--block-owner {s:?}: expected BLOCK=UID[:GID]"))
    });
    let pairs: Vec<(String, String)> = file
        .block_owners
        .into_iter()
        .map(Ok)
        .chain(from_flags)
        .collect::<anyhow::Result<_>>()?;
    for (block, owner) in pairs {
        let name = lockstep::domain::BlockName::new(&block)
            .with_context(|| format!("block owner for {block:?}"))?;
        let owner: lockstep::agent::locks::BlockOwner =
            owner
                .parse()
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("block owner of {block}"))?;
        block_owners.insert(name, owner);
    }
    let tls = lockstep::edge::tls::ClientTls::load(
        a.tls_ca.or(file.tls_ca).as_deref(),
        a.tls_cert.or(file.tls_cert).as_deref(),
        a.tls_key.or(file.tls_key).as_deref(),
    )
    .context("agent TLS")?;
    Ok(AgentConfig {
        tls,
        server,
        device,
        credential,
        lock_root: a
            .lock_root
            .or(file.lock_root)
            .unwrap_or_else(|| PathBuf::from("./lockstep-locks")),
        state_dir: a
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from("./lockstep-agent")),
        runtime,
        manifest,
        api_listen,
        hooks: lockstep::agent::runtime::Hooks {
            reboot: a.hook_reboot.or(file.hook_reboot),
            shutdown: a.hook_shutdown.or(file.hook_shutdown),
            os_update: a.hook_os_update.or(file.hook_os_update),
            release: a.hook_release.or(file.hook_release),
            restart_block: a.hook_restart_block.or(file.hook_restart_block),
        },
        lock_poll,
        block_owners,
    })
}

#[derive(Debug, Subcommand)]
enum DebugCommand {
    /// Push synthetic lock reports through the real ingest path, printing
    /// each acknowledgement.
    IngestLoad(IngestLoadArgs),
    /// The sample block `lockstep demo` runs (controller holds its lock).
    DemoBlock {
        #[arg(long)]
        role: String,
        #[arg(long, default_value_t = 2000)]
        cycle_ms: u64,
        /// Exit when this process (the demo) is gone.
        #[arg(long)]
        demo_pid: u32,
    },
}

#[derive(Debug, clap::Args)]
struct IngestLoadArgs {
    #[arg(long, env = "LOCKSTEP_DATA_DIR", default_value = "./lockstep-data")]
    data_dir: PathBuf,
    #[arg(long, env = "LOCKSTEP_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    #[arg(long, default_value_t = 10)]
    blocks: usize,
    #[arg(long, default_value_t = 3)]
    rounds: u64,
    /// Devices per submission.
    #[arg(long, default_value_t = 50)]
    chunk: usize,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 4)]
    writers: usize,
}

async fn ingest_load(args: IngestLoadArgs) -> anyhow::Result<()> {
    let spec = lockstep::loadgen::LoadSpec {
        fleet: lockstep::domain::FleetId::new("load")?,
        devices: args.devices,
        blocks: args.blocks,
        rounds: args.rounds,
        chunk: args.chunk,
        writers: args.writers,
    };
    let pool = PoolOptions::default();
    match &args.database_url {
        Some(url) => {
            let store = PgStore::connect(url, &pool)
                .await
                .with_context(|| format!("opening {}", redact(url)))?;
            lockstep::loadgen::run(store, spec).await?;
        }
        None => {
            let store = SqliteStore::open(&args.data_dir, &pool)
                .await
                .with_context(|| format!("opening {}", args.data_dir.display()))?;
            lockstep::loadgen::run(store, spec).await?;
        }
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address for the gRPC API.
    #[arg(long, env = "LOCKSTEP_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Address for the web dashboard, or `off`. People log in with an API
    /// token.
    #[arg(long, env = "LOCKSTEP_DASHBOARD_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_dashboard_listen)]
    dashboard_listen: DashboardListen,
    /// Where the embedded SQLite database lives (used unless --database-url is given).
    #[arg(long, env = "LOCKSTEP_DATA_DIR", default_value = "./lockstep-data")]
    data_dir: PathBuf,
    /// Postgres URL (postgres://user:pass@host/db); replaces the embedded SQLite.
    #[arg(long, env = "LOCKSTEP_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Most database connections in the pool.
    #[arg(long, env = "LOCKSTEP_DB_MAX_CONNECTIONS", default_value_t = 10)]
    db_max_connections: u32,
    /// How long to wait for a database connection (also the start-up connect timeout).
    #[arg(long, env = "LOCKSTEP_DB_ACQUIRE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    db_acquire_timeout: Duration,
    /// Lock history older than this is pruned.
    #[arg(long, env = "LOCKSTEP_LOCK_HISTORY_RETENTION", default_value = "30d", value_parser = parse_duration)]
    lock_history_retention: Duration,
    /// PEM certificate chain: serves gRPC and the dashboard over TLS.
    #[arg(long, env = "LOCKSTEP_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "LOCKSTEP_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): agents must present a client certificate signed
    /// by it that names their device id (a DNS subject alternative name).
    #[arg(long, env = "LOCKSTEP_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Allows plain text on a non-loopback address (traffic is readable on the network).
    #[arg(long, env = "LOCKSTEP_INSECURE_PLAINTEXT", conflicts_with = "tls_cert")]
    insecure_plaintext: bool,
    /// Longest a unary gRPC call may take (streams are exempt).
    #[arg(long, env = "LOCKSTEP_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Unary gRPC calls handled at once; more are refused with UNAVAILABLE.
    #[arg(long, env = "LOCKSTEP_MAX_IN_FLIGHT", default_value_t = 256)]
    max_in_flight: usize,
    /// Streams (agents, watchers) open at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "LOCKSTEP_MAX_STREAMS", default_value_t = 20_000)]
    max_streams: usize,
    /// Unary gRPC calls per second per client (token, else address); burst twice that; 0 = off.
    #[arg(long, env = "LOCKSTEP_RATE_LIMIT", default_value_t = 100)]
    rate_limit: u32,
    /// Where to write the bootstrap admin token, created when no admin token
    /// is usable (the first start). Default: <data-dir>/admin.token on the
    /// embedded database, ./lockstep-admin.token with --database-url.
    #[arg(long, env = "LOCKSTEP_BOOTSTRAP_TOKEN_FILE")]
    bootstrap_token_file: Option<PathBuf>,
    /// OpenTelemetry collector (OTLP over gRPC, e.g. http://collector:4317):
    /// spans and metrics are exported there. Unset: nothing is exported.
    #[arg(long, env = "LOCKSTEP_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Address for the Prometheus scrape endpoint (GET /metrics), or `off`.
    /// It has no login: bind it where only the scraper reaches it.
    #[arg(long, env = "LOCKSTEP_METRICS_LISTEN", default_value = "off", value_parser = parse_dashboard_listen)]
    metrics_listen: DashboardListen,
    /// This replica's name among the servers sharing one Postgres (shown in
    /// presence and logs). Default: the host name and a random suffix.
    #[arg(long, env = "LOCKSTEP_REPLICA_ID", value_parser = parse_replica_id)]
    replica_id: Option<lockstep::domain::ReplicaId>,
    /// Events (what `WatchEvents` and the dashboard stream, resumable from a
    /// cursor) older than this are pruned.
    #[arg(long, env = "LOCKSTEP_EVENT_RETENTION", default_value = "7d", value_parser = parse_duration)]
    event_retention: Duration,
    /// How often the reconciler's safety sweep looks for due timers and
    /// hand-overs it was not told of (tests lengthen it to show that
    /// notifications, not the sweep, carry the work).
    #[arg(long, env = "LOCKSTEP_SWEEP_INTERVAL", default_value = "5s", value_parser = parse_duration, hide = true)]
    sweep_interval: Duration,
}

fn parse_replica_id(s: &str) -> Result<lockstep::domain::ReplicaId, String> {
    lockstep::domain::ReplicaId::new(s).map_err(|e| e.to_string())
}

/// `--dashboard-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DashboardListen(Option<SocketAddr>);

fn parse_dashboard_listen(s: &str) -> Result<DashboardListen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(DashboardListen(None));
    }
    s.parse()
        .map(|a| DashboardListen(Some(a)))
        .map_err(|_| format!("{s:?}: expected an address such as 127.0.0.1:8080, or off"))
}

/// `250ms`, `90s`, `15m`, `12h`, `30d`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number followed by ms, s, m, h or d"))?;
    if unit == "ms" {
        return Ok(Duration::from_millis(n));
    }
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: unit must be ms, s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

async fn serve(args: ServeArgs, scrape: lockstep::telemetry::Scrape) -> anyhow::Result<()> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            lockstep::edge::tls::ServerTls::load(cert, key, args.tls_client_ca.as_deref())
                .context("setting up TLS")?,
        ),
        _ => None,
    };
    let bootstrap_token_file = match (&args.bootstrap_token_file, &args.database_url) {
        (Some(path), _) => path.clone(),
        (None, Some(_)) => PathBuf::from("./lockstep-admin.token"),
        (None, None) => args.data_dir.join("admin.token"),
    };
    let config = ServeConfig {
        listen: args.listen,
        dashboard: args.dashboard_listen.0,
        lock_history_retention: args.lock_history_retention,
        tls,
        insecure_plaintext: args.insecure_plaintext,
        overload: lockstep::edge::overload::OverloadConfig {
            request_timeout: args.request_timeout,
            max_in_flight: args.max_in_flight,
            max_streams: args.max_streams,
            rate_per_client: args.rate_limit,
            rate_burst: args.rate_limit.saturating_mul(2),
        },
        bootstrap_token_file,
        metrics: args
            .metrics_listen
            .0
            .map(|listen| lockstep::telemetry::MetricsEndpoint { listen, scrape }),
        replica: args.replica_id.clone(),
        event_retention: args.event_retention,
        sweep_interval: args.sweep_interval,
    };
    let pool = PoolOptions {
        max_connections: args.db_max_connections,
        acquire_timeout: args.db_acquire_timeout,
    };
    let bound = Bound::bind(config)
        .await
        .context("starting lockstep serve")?;
    match &args.database_url {
        Some(url) => {
            let store = PgStore::connect(url, &pool)
                .await
                .with_context(|| format!("opening the Postgres database at {}", redact(url)))?;
            tracing::info!(database = %redact(url), "storage: postgres");
            bound.serve(store, shutdown_signal()).await?;
        }
        None => {
            // One server per embedded database (replicas need Postgres).
            let _lock =
                lockstep::store::sqlite::ServerLock::take(&args.data_dir).with_context(|| {
                    format!(
                        "opening the embedded database in {}",
                        args.data_dir.display()
                    )
                })?;
            let store = SqliteStore::open(&args.data_dir, &pool)
                .await
                .with_context(|| {
                    format!(
                        "opening the embedded database in {}",
                        args.data_dir.display()
                    )
                })?;
            tracing::info!(data_dir = %args.data_dir.display(), "storage: embedded sqlite");
            bound.serve(store, shutdown_signal()).await?;
        }
    }
    Ok(())
}

/// Logs for every command; spans and metrics for `serve` as its flags ask.
fn telemetry_config(cli: &Cli) -> lockstep::telemetry::TelemetryConfig {
    use lockstep::telemetry::{LogFormat, TelemetryConfig};
    let log_format = LogFormat::parse(&cli.log_format).unwrap_or_default();
    match &cli.command {
        Command::Serve(a) => TelemetryConfig {
            log_format,
            otlp_endpoint: a.otlp_endpoint.clone(),
            prometheus: a.metrics_listen.0.is_some(),
        },
        _ => TelemetryConfig {
            log_format,
            ..TelemetryConfig::default()
        },
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Flushes spans and metrics when dropped, at the end of main.
    let telemetry = lockstep::telemetry::install(&telemetry_config(&cli))?;
    match cli.command {
        Command::Serve(args) => serve(args, telemetry.scrape()).await?,
        Command::Agent(args) => {
            let cfg = agent_config(*args)?;
            tracing::info!(device = %cfg.device, server = %cfg.server, "starting agent");
            lockstep::agent::run::run(cfg, shutdown_signal()).await?;
        }
        Command::Migrate(args) => migrate(args).await?,
        Command::Debug(DebugCommand::IngestLoad(args)) => ingest_load(args).await?,
        Command::Debug(DebugCommand::DemoBlock {
            role,
            cycle_ms,
            demo_pid,
        }) => lockstep::cli::demo::run_block(&role, Duration::from_millis(cycle_ms), demo_pid)?,
        Command::Demo(args) => std::process::exit(lockstep::cli::demo::run(args).await?),
        // Operator verbs: each prints its own error line and picks the exit code.
        Command::Fleet(v) => std::process::exit(v.run().await),
        Command::Block(v) => std::process::exit(v.run().await),
        Command::Release(v) => std::process::exit(v.run().await),
        Command::Device(v) => std::process::exit(v.run().await),
        Command::Env(v) => std::process::exit(v.run().await),
        Command::Op(v) => std::process::exit(v.run().await),
        Command::Window(v) => std::process::exit(v.run().await),
        Command::Policy(v) => std::process::exit(v.run().await),
        Command::Approval(v) => std::process::exit(v.run().await),
        Command::Rollout(v) => std::process::exit(v.run().await),
        Command::Token(v) => std::process::exit(v.run().await),
        Command::Audit(v) => std::process::exit(v.run().await),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5w").is_err());
    }

    #[test]
    fn the_dashboard_listens_on_an_address_or_is_off() {
        assert_eq!(
            parse_dashboard_listen("127.0.0.1:8080"),
            Ok(DashboardListen(Some(SocketAddr::from((
                [127, 0, 0, 1],
                8080
            )))))
        );
        assert_eq!(parse_dashboard_listen("off"), Ok(DashboardListen(None)));
        assert!(parse_dashboard_listen("8080").is_err());
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
