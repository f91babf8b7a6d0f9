//! `lockstep demo`: one command that shows what Lockstep does. It starts the
//! real server on the embedded database, several real agents (the `process`
//! runtime) running three sample blocks — `telemetry`, `controller` (which
//! holds its update lock through each control cycle) and `ui` — creates two
//! releases, starts a phased rollout of the second, and narrates what
//! happens and why: which blocks update, which lock holders are asked to
//! release and for what reason, how the batches advance. Everything it does
//! goes through the public gRPC API, as an operator's tools would.
//!
//! The sample blocks are this binary too (`lockstep debug demo-block`), so
//! the demo needs nothing but the binary. It uses the admin token its
//! server wrote on first start (`<dir>/server-data/admin.token`), and
//! prints a dashboard link that logs in with it.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::client::{AuthChannel, Bearer};
use crate::edge::grpc::pb;
use pb::catalog_service_client::CatalogServiceClient;
use pb::device_service_client::DeviceServiceClient;
use pb::operation_service_client::OperationServiceClient;
use pb::rollout_service_client::RolloutServiceClient;

/// Options of `lockstep demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Simulated devices (each a real agent process).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub devices: u32,
    /// Where the demo keeps its database, agents' state and logs (default:
    /// a new temporary directory, removed at exit).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The gRPC address of the demo's server.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// The dashboard's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub dashboard_listen: String,
    /// Servers sharing one Postgres; agents are spread over them. More than
    /// one needs Postgres: `--database-url`, or a throwaway cluster is
    /// started (Debian's postgresql server binaries).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub replicas: u32,
    /// Postgres for the demo's servers (default: the embedded SQLite with
    /// one server, a throwaway Postgres with several).
    #[arg(long)]
    pub database_url: Option<String>,
    /// Exit when the rollout is done instead of waiting for Ctrl-C.
    #[arg(long)]
    pub exit_when_done: bool,
    /// How long each controller takes to finish its control cycle once
    /// asked to release its lock.
    #[arg(long, default_value = "2s", value_parser = super::parse::duration)]
    pub cycle: Duration,
}

/// Why the demo stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the demo server did not come up: {0}")]
    Server(String),
    #[error("{what}: {status}")]
    Api {
        what: &'static str,
        #[source]
        status: tonic::Status,
    },
    #[error("{0}")]
    Timeout(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

fn api(what: &'static str) -> impl FnOnce(tonic::Status) -> DemoError {
    move |status| DemoError::Api { what, status }
}

/// Children that die with the demo.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Narrator {
    start: Instant,
}

impl Narrator {
    fn say(&self, who: &str, what: impl AsRef<str>) {
        let t = self.start.elapsed().as_secs_f64();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "[{t:6.1}s] {who:<10} {}", what.as_ref());
        let _ = out.flush();
    }
}

const FLEET: &str = "demo-site";

/// Runs the demo; returns the process exit code.
pub async fn run(args: DemoArgs) -> Result<i32, DemoError> {
    let exe = std::env::current_exe().map_err(io("finding this binary"))?;
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("lockstep-demo-")
                .tempdir()
                .map_err(io("creating a temporary directory"))?;
            tmp.path().to_owned()
        }
    };
    let n = Narrator {
        start: Instant::now(),
    };
    let mut children = Children(Vec::new());
    n.say("demo", format!("working in {}", dir.display()));
    let mut args = args;
    args.listen = concrete_addr(&args.listen, "--listen")?;
    args.dashboard_listen = concrete_addr(&args.dashboard_listen, "--dashboard-listen")?;

    // 1. The server, on the embedded SQLite database; or several replicas
    // on one Postgres.
    let mut _cluster = None;
    let database_url = match (&args.database_url, args.replicas) {
        (Some(url), _) => Some(url.clone()),
        (None, 1) => None,
        (None, _) => {
            n.say("demo", "starting a throwaway Postgres for the replicas");
            let cluster = crate::pgtemp::PgCluster::start()
                .map_err(|e| DemoError::Server(format!("a throwaway Postgres: {e}")))?;
            let url = cluster.url("postgres");
            _cluster = Some(cluster);
            Some(url)
        }
    };
    let token_file = dir.join("server-data").join("admin.token");
    let mut urls = Vec::new();
    for r in 0..args.replicas {
        let listen = if r == 0 {
            args.listen.clone()
        } else {
            concrete_addr("127.0.0.1:0", "--listen")?
        };
        let log_name = if r == 0 {
            "server.log".to_owned()
        } else {
            format!("server-{}.log", r + 1)
        };
        let server_log = std::fs::File::create(dir.join(&log_name))
            .map_err(io(format!("creating {log_name}")))?;
        let mut cmd = Command::new(&exe);
        cmd.args(["serve", "--listen", &listen])
            .args([
                "--dashboard-listen",
                if r == 0 {
                    &args.dashboard_listen
                } else {
                    "off"
                },
            ])
            .arg("--data-dir")
            .arg(dir.join("server-data"))
            .arg("--bootstrap-token-file")
            .arg(&token_file);
        if let Some(db) = &database_url {
            cmd.args(["--database-url", db])
                .args(["--replica-id", &format!("r{}", r + 1)]);
        }
        let server = cmd
            .env("LOCKSTEP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(server_log)
            .spawn()
            .map_err(io("starting lockstep serve"))?;
        children.0.push(server);
        let url = format!("http://{listen}");
        let last = children.0.len() - 1;
        connect(&url, &dir.join(&log_name), &mut children.0[last]).await?;
        if r == 0 {
            // The first server writes the admin token on start, before it
            // serves; the others find it in the database.
            read_token(&token_file, &mut children.0[0]).await?;
        }
        if args.replicas > 1 {
            n.say("server", format!("replica r{} listening on {url}", r + 1));
        }
        urls.push(url);
    }
    let url = urls[0].clone();
    let ch = connect(&url, &dir.join("server.log"), &mut children.0[0]).await?;
    let token = read_token(&token_file, &mut children.0[0]).await?;
    let bearer = Bearer::new(&token).ok_or_else(|| {
        DemoError::Server(format!("{} holds no usable token", token_file.display()))
    })?;
    let ch: AuthChannel = InterceptedService::new(ch, bearer);
    n.say(
        "server",
        format!(
            "listening on {url} ({}); admin token in {}",
            match (&database_url, args.replicas) {
                (None, _) => "embedded SQLite".to_owned(),
                (Some(_), 1) => "Postgres".to_owned(),
                (Some(_), r) => format!("{r} replicas on one Postgres"),
            },
            token_file.display()
        ),
    );
    n.say(
        "server",
        format!(
            "dashboard: http://{}/login#token={token}",
            args.dashboard_listen
        ),
    );

    // 2. The catalog: three blocks, release r1, and r2 which changes two.
    let mut cat = CatalogServiceClient::new(ch.clone());
    let mut devs = DeviceServiceClient::new(ch.clone());
    devs.create_fleet(pb::CreateFleetRequest {
        id: FLEET.into(),
        name: "Demo site (inverters)".into(),
    })
    .await
    .map_err(api("creating the fleet"))?;
    pb::window_service_client::WindowServiceClient::new(ch.clone())
        .set_fleet_policy(pb::SetFleetPolicyRequest {
            policy: Some(pb::FleetPolicy {
                fleet: FLEET.into(),
                // No maintenance windows in the demo: releases apply as soon
                // as locks allow. (By default OS updates, reboots and
                // shutdowns wait for a window.)
                needs_window: vec!["os_update".into()],
                needs_approval: vec!["os_update".into()],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["needs_window".into(), "needs_approval".into()],
            }),
        })
        .await
        .map_err(api("setting the fleet policy"))?;
    let blocks = ["telemetry", "controller", "ui"];
    for b in blocks {
        cat.create_block(pb::CreateBlockRequest {
            name: b.into(),
            description: String::new(),
        })
        .await
        .map_err(api("creating a block"))?;
    }
    let command = |role: &str| -> Vec<String> {
        vec![
            exe.to_string_lossy().into_owned(),
            "debug".into(),
            "demo-block".into(),
            "--role".into(),
            role.into(),
            "--cycle-ms".into(),
            args.cycle.as_millis().to_string(),
            "--demo-pid".into(),
            std::process::id().to_string(),
        ]
    };
    let versions = [
        ("telemetry", "1.25.3", 1u32),
        ("controller", "4.0.0", 2),
        ("ui", "2.0.0", 3),
        ("telemetry", "1.26.0", 4),
        ("controller", "4.1.0", 5),
    ];
    for (b, v, digest) in versions {
        cat.create_block_version(pb::CreateBlockVersionRequest {
            block_version: Some(pb::BlockVersion {
                block: b.into(),
                version: v.into(),
                image_digest: format!("sha256:{digest:064x}"),
                config: Some(pb::BlockConfig {
                    command: command(b),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .map_err(api("creating a block version"))?;
    }
    for (id, set) in [
        (
            "r1",
            [
                ("telemetry", "1.25.3"),
                ("controller", "4.0.0"),
                ("ui", "2.0.0"),
            ],
        ),
        (
            "r2",
            [
                ("telemetry", "1.26.0"),
                ("controller", "4.1.0"),
                ("ui", "2.0.0"),
            ],
        ),
    ] {
        cat.create_release(pb::CreateReleaseRequest {
            id: id.into(),
            fleet: FLEET.into(),
            blocks: set
                .iter()
                .map(|(b, v)| pb::BlockRef {
                    block: (*b).into(),
                    version: (*v).into(),
                })
                .collect(),
            env: Default::default(),
        })
        .await
        .map_err(api("creating a release"))?;
    }
    n.say(
        "catalog",
        "r1 = telemetry@1.25.3 controller@4.0.0 ui@2.0.0; r2 = telemetry@1.26.0 controller@4.1.0 ui@2.0.0",
    );

    // 3. The devices: one real agent each, running r1.
    let manifest_blocks: Vec<serde_json::Value> = [
        ("telemetry", "1.25.3"),
        ("controller", "4.0.0"),
        ("ui", "2.0.0"),
    ]
    .iter()
    .map(|(b, v)| serde_json::json!({"name": b, "version": v, "command": command(b), "env": {}}))
    .collect();
    let mut device_ids = Vec::new();
    for i in 1..=args.devices {
        let id = format!("inv-{i:02}");
        let reg = devs
            .register_device(pb::RegisterDeviceRequest {
                id: id.clone(),
                fleet: FLEET.into(),
                tags: vec!["inverter".into()],
            })
            .await
            .map_err(api("registering a device"))?
            .into_inner();
        let d = dir.join(&id);
        std::fs::create_dir_all(&d).map_err(io(format!("creating {}", d.display())))?;
        write(&d.join("credential"), &reg.credential)?;
        let manifest =
            serde_json::json!({"release": "r1", "os_version": "1.0", "blocks": manifest_blocks});
        write(&d.join("manifest.json"), &manifest.to_string())?;
        let log = std::fs::File::create(d.join("agent.log")).map_err(io("creating agent.log"))?;
        // Agents are spread over the replicas.
        let server = &urls[(i as usize - 1) % urls.len()];
        let agent = Command::new(&exe)
            .arg("agent")
            .args(["--server", server, "--device", &id])
            .arg("--credential-file")
            .arg(d.join("credential"))
            .arg("--lock-root")
            .arg(d.join("locks"))
            .arg("--state-dir")
            .arg(d.join("state"))
            .arg("--manifest")
            .arg(d.join("manifest.json"))
            .args(["--api-listen", "127.0.0.1:0", "--lock-poll", "200ms"])
            .env("LOCKSTEP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io("starting lockstep agent"))?;
        children.0.push(agent);
        device_ids.push(id);
    }
    for id in &device_ids {
        wait_reported(&mut devs, id).await?;
    }
    n.say(
        "fleet",
        format!(
            "{} devices run r1; each controller holds its update lock through its control cycle",
            device_ids.len()
        ),
    );

    // 4. What r2 would disturb.
    let diff = cat
        .diff_releases(pb::DiffReleasesRequest {
            from: "r1".into(),
            to: "r2".into(),
        })
        .await
        .map_err(api("diffing r1 and r2"))?
        .into_inner();
    let applied = diff
        .blocks
        .iter()
        .map(|b| match &b.disturbance {
            Some(_) => format!("{} {} -> {}", b.block, b.from_version, b.to_version),
            None => format!("{} untouched", b.block),
        })
        .collect::<Vec<_>>()
        .join(", ");
    for b in &diff.blocks {
        let what = match &b.disturbance {
            Some(d) => format!(
                "{} -> {}: {}{}",
                b.from_version,
                b.to_version,
                reason_text(d.reason),
                if d.handover {
                    " (handover possible)"
                } else {
                    ""
                }
            ),
            None => format!("{}: untouched, keeps running", b.to_version),
        };
        n.say("r1 -> r2", format!("{:<10} {what}", b.block));
    }

    // 5. Watch what happens, then start the rollout.
    let mut events = OperationServiceClient::new(ch.clone())
        .watch_events(pb::WatchEventsRequest {
            fleet: FLEET.into(),
            device: String::new(),
            ..Default::default()
        })
        .await
        .map_err(api("watching events"))?
        .into_inner();
    let strategy = pb::RolloutStrategy {
        canary: 1,
        batches: vec![pb::Amount {
            amount: Some(pb::amount::Amount::Percent(50)),
        }],
        max_in_flight: 2,
        soak_seconds: 3,
        ..Default::default()
    };
    let created = RolloutServiceClient::new(ch.clone())
        .create_rollout(pb::CreateRolloutRequest {
            fleet: FLEET.into(),
            target: Some(pb::create_rollout_request::Target::Release("r2".into())),
            strategy: Some(strategy),
            actor: "demo".into(),
            ..Default::default()
        })
        .await
        .map_err(api("starting the rollout"))?
        .into_inner()
        .status
        .unwrap_or_default();
    let rollout_id = created.rollout.as_ref().map(|r| r.id).unwrap_or_default();
    let sizes: Vec<String> = created.batches.iter().map(|b| b.size.to_string()).collect();
    n.say(
        "rollout",
        format!(
            "rollout {rollout_id} of r2 started: batches of {} devices (canary first), at most 2 in flight, 3 s soak",
            sizes.join(", ")
        ),
    );
    n.say(
        "rollout",
        format!(
            "watch it: http://{}/rollouts/{rollout_id}  or  lockstep rollout watch {rollout_id} --server {url} --token-file {}",
            args.dashboard_listen,
            token_file.display()
        ),
    );
    let mut watch = RolloutServiceClient::new(ch.clone())
        .watch_rollout(pb::GetRolloutRequest { id: rollout_id })
        .await
        .map_err(api("watching the rollout"))?
        .into_inner();
    let mut last: Option<pb::RolloutStatus> = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let mut final_state = String::new();
    let mut events_open = true;
    // Every controller was seen holding its lock before the rollout began.
    let mut locks: std::collections::HashMap<(String, String), bool> = device_ids
        .iter()
        .map(|d| ((d.clone(), "controller".to_owned()), true))
        .collect();
    loop {
        tokio::select! {
            ev = events.message(), if events_open => match ev {
                Ok(Some(e)) => narrate_event(&n, &applied, &mut locks, &e),
                _ => events_open = false,
            },
            st = watch.message() => match st {
                Ok(Some(s)) => {
                    narrate_rollout(&n, last.as_ref(), &s);
                    final_state = s.rollout.as_ref().map(|r| r.state.clone()).unwrap_or_default();
                    last = Some(s);
                }
                Ok(None) => break,
                Err(status) => return Err(DemoError::Api { what: "watching the rollout", status }),
            },
            () = tokio::time::sleep_until(deadline) => {
                return Err(DemoError::Timeout("the rollout did not finish within 5 minutes; see the logs in the demo directory".into()));
            }
        }
    }
    // Let the last events of the final devices print.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(Some(e)) = events.message().await {
            narrate_event(&n, &applied, &mut locks, &e);
        }
    })
    .await;
    n.say("rollout", format!("rollout {rollout_id} is {final_state}"));
    for id in &device_ids {
        if let Ok(st) = devs
            .get_device_state(pb::GetDeviceStateRequest { id: id.clone() })
            .await
        {
            let st = st.into_inner();
            n.say(
                id,
                format!("runs {}: {}", st.current_release, versions_text(&st.blocks)),
            );
        }
    }
    if args.exit_when_done {
        return Ok(if final_state == "completed" { 0 } else { 1 });
    }
    n.say(
        "demo",
        format!(
            "still running: dashboard http://{}/ · server {url} · Ctrl-C to stop",
            args.dashboard_listen
        ),
    );
    crate::edge::server::shutdown_signal().await;
    n.say("demo", "stopping");
    drop(children);
    Ok(0)
}

/// The address itself, or with port 0, a free port on that host (so the
/// demo knows the URL to print and connect to).
fn concrete_addr(addr: &str, flag: &str) -> Result<String, DemoError> {
    let parsed: std::net::SocketAddr = addr.parse().map_err(|e| DemoError::Io {
        what: format!("{flag} {addr:?}"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })?;
    if parsed.port() != 0 {
        return Ok(addr.to_owned());
    }
    let l = std::net::TcpListener::bind(parsed).map_err(io(format!("{flag} {addr}")))?;
    let a = l.local_addr().map_err(io(format!("{flag} {addr}")))?;
    Ok(a.to_string())
}

fn write(path: &Path, body: &str) -> Result<(), DemoError> {
    std::fs::write(path, body).map_err(io(format!("writing {}", path.display())))
}

async fn connect(url: &str, log: &Path, server: &mut Child) -> Result<Channel, DemoError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = server.try_wait() {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            return Err(DemoError::Server(format!(
                "it exited ({status}); its log ends with:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        if let Ok(endpoint) = Channel::from_shared(url.to_owned())
            && let Ok(ch) = endpoint.connect().await
        {
            return Ok(ch);
        }
        if Instant::now() > deadline {
            return Err(DemoError::Server(format!("no answer on {url} within 30 s")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The token the server writes to `path` (atomically) on its first start,
/// once it is there.
async fn read_token(path: &Path, server: &mut Child) -> Result<String, DemoError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match crate::app::tokens::read_token_file(path) {
            Ok(t) if !t.is_empty() => return Ok(t),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(format!("reading {}", path.display()))(e));
            }
            _ => {}
        }
        if let Ok(Some(status)) = server.try_wait() {
            return Err(DemoError::Server(format!(
                "it exited ({status}) before writing {}",
                path.display()
            )));
        }
        if Instant::now() > deadline {
            return Err(DemoError::Server(format!(
                "no admin token in {} within 30 s",
                path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_reported(
    devs: &mut DeviceServiceClient<AuthChannel>,
    id: &str,
) -> Result<(), DemoError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = devs
            .get_device_state(pb::GetDeviceStateRequest { id: id.into() })
            .await
            .map_err(api("reading a device's state"))?
            .into_inner();
        if st.reported && st.locks.iter().any(|l| l.block == "controller" && l.held) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(DemoError::Timeout(format!(
                "{id}'s agent did not report within 30 s; see {id}/agent.log in the demo directory"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn reason_text(r: i32) -> &'static str {
    match pb::Reason::try_from(r).unwrap_or(pb::Reason::Unspecified) {
        pb::Reason::UpdateRestart => "replaced by the release (update_restart)",
        pb::Reason::UpdateNoRestart => "untouched by the release (update_no_restart)",
        pb::Reason::EnvChange => "its env changes (env_change)",
        pb::Reason::Restart => "restarted (restart)",
        pb::Reason::Stop => "stopped (stop)",
        pb::Reason::DependencyRestart => "a dependency restarts (dependency_restart)",
        pb::Reason::Reboot => "the device reboots (reboot)",
        pb::Reason::Shutdown => "the device shuts down (shutdown)",
        pb::Reason::OsUpdate => "the OS is updated (os_update)",
        pb::Reason::Unspecified => "unspecified",
    }
}

fn versions_text(blocks: &[pb::ReportedBlock]) -> String {
    blocks
        .iter()
        .map(|b| format!("{}@{}", b.block, b.version))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Narrates one event. `locks` remembers each device's lock states, so only
/// a lock that changed is told (agents report every lock each time).
fn narrate_event(
    n: &Narrator,
    applied: &str,
    locks: &mut std::collections::HashMap<(String, String), bool>,
    e: &pb::Event,
) {
    let text = match e.kind.as_str() {
        "blocked_by_lock" => {
            let holders: Vec<String> = e
                .blocks
                .iter()
                .map(|h| match h.split_once(':') {
                    Some((block, reason)) => format!("{block} ({reason})"),
                    None => h.clone(),
                })
                .collect();
            format!(
                "waits: {} holds its lock; asked to release — it finishes its control cycle first",
                holders.join(", ")
            )
        }
        "deferred" => format!("{} defers until {}", e.blocks.join(", "), e.message),
        "applying" => {
            "locks released; applying r2 (the agent takes every impacted lock at once)".into()
        }
        "applied" => format!("applied r2: {applied}"),
        "lock_changed" => {
            let mut changed = Vec::new();
            for l in &e.blocks {
                let Some((b, state)) = l.split_once(':') else {
                    continue;
                };
                let held = state == "held";
                let before = locks.insert((e.device.clone(), b.to_owned()), held);
                // A free lock seen for the first time is no news.
                if before.unwrap_or(false) != held {
                    changed.push(if held {
                        format!("{b} took its lock")
                    } else {
                        format!("{b} released its lock")
                    });
                }
            }
            if changed.is_empty() {
                return;
            }
            changed.join(", ")
        }
        "online" | "offline" => format!("agent {}", e.kind),
        "failed" => format!("failed: {}", e.message),
        "waiting_window" => format!("waits for a maintenance window ({})", e.message),
        "approval_requested" => "waits for a customer to approve a window".into(),
        "cancelled" => format!("cancelled: {}", e.message),
        "lagged" => return,
        other => {
            if e.message.is_empty() {
                other.to_owned()
            } else {
                format!("{other}: {}", e.message)
            }
        }
    };
    n.say(&e.device, text);
}

fn narrate_rollout(n: &Narrator, before: Option<&pb::RolloutStatus>, now: &pb::RolloutStatus) {
    let Some(r) = &now.rollout else { return };
    let was = before.and_then(|b| b.rollout.as_ref());
    if was.map(|w| w.current_batch) != Some(r.current_batch) && r.current_batch > 0 {
        n.say(
            "rollout",
            format!(
                "batch {} met its success threshold: batch {} starts",
                r.current_batch - 1,
                r.current_batch
            ),
        );
    }
    if now.soak_until_unix_ms != 0
        && before.map(|b| b.soak_until_unix_ms) != Some(now.soak_until_unix_ms)
    {
        n.say(
            "rollout",
            format!(
                "batch {} succeeded; soaking before the next one",
                r.current_batch
            ),
        );
    }
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for c in &now.device_statuses {
        counts.insert(&c.status, c.devices);
    }
    let done: u64 = now.batches.iter().map(|b| b.succeeded).sum();
    let total: u64 = now.batches.iter().map(|b| b.size).sum();
    let waits: Vec<String> = now
        .waiting_lock
        .iter()
        .map(|w| {
            format!(
                "{} on {} ({})",
                w.devices,
                w.block,
                pb::Reason::try_from(w.reason)
                    .map(|r| r.as_str_name().trim_start_matches("REASON_").to_lowercase())
                    .unwrap_or_default()
            )
        })
        .collect();
    let progress = format!(
        "{} · {done}/{total} devices updated{}",
        r.state,
        if waits.is_empty() {
            String::new()
        } else {
            format!(" · waiting_lock: {}", waits.join(", "))
        }
    );
    let before_done: Option<u64> = before.map(|b| b.batches.iter().map(|x| x.succeeded).sum());
    let before_waits = before.map(|b| b.waiting_lock.clone());
    if before_done != Some(done)
        || before_waits.as_ref() != Some(&now.waiting_lock)
        || was.map(|w| &w.state) != Some(&r.state)
    {
        n.say("rollout", progress);
    }
}

/// `lockstep debug demo-block`: the demo's sample block. `controller`
/// holds its update lock (flock on `$LOCKSTEP_LOCK_FILE`) while it runs its
/// control cycle; when its `intent.json` shows a new release request, it
/// finishes the cycle (`cycle`) and lets go. Other roles just run.
/// Blocks outlive their agent by design (a restarted agent adopts them);
/// the demo's blocks end with the demo (`demo_pid`).
pub fn run_block(role: &str, cycle: Duration, demo_pid: u32) -> Result<(), DemoError> {
    let version = std::env::var("LOCKSTEP_BLOCK_VERSION").unwrap_or_default();
    println!("{role} {version} running");
    let demo = PathBuf::from(format!("/proc/{demo_pid}"));
    let wait_for_demo_end = || {
        while demo.exists() {
            std::thread::sleep(Duration::from_millis(500));
        }
        std::process::exit(0);
    };
    if role != "controller" {
        wait_for_demo_end();
    }
    let lock_file = std::env::var("LOCKSTEP_LOCK_FILE")
        .map_err(|_| DemoError::Server("LOCKSTEP_LOCK_FILE is not set".into()))?;
    let lock_dir = std::env::var("LOCKSTEP_LOCK_DIR")
        .map_err(|_| DemoError::Server("LOCKSTEP_LOCK_DIR is not set".into()))?;
    let intents = Path::new(&lock_dir).join("intent.json");
    // Requests already there were answered by an older process.
    let seen = newest_release_request(&intents);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_file)
        .map_err(io(format!("opening {lock_file}")))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io(format!("locking {lock_file}"))(e.into()))?;
    println!("controller {version} holds its update lock");
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if newest_release_request(&intents) > seen {
            break;
        }
        if !demo.exists() {
            std::process::exit(0);
        }
    }
    println!("controller asked to release: finishing the control cycle");
    std::thread::sleep(cycle);
    drop(file);
    println!("controller released its lock");
    wait_for_demo_end();
    Ok(())
}

/// The highest sequence of a release request in a block's `intent.json`.
fn newest_release_request(path: &Path) -> u64 {
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return 0;
    };
    v["intents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["kind"] == "release_request")
        .filter_map(|i| i["seq"].as_u64())
        .max()
        .unwrap_or(0)
}
