//! `lockstep serve`: assembles the gRPC server (our services, health,
//! reflection) and the web dashboard over the same store, scheduler and
//! events, and runs them until SIGINT or SIGTERM. Every service but
//! `AgentService`, health and reflection is wrapped in
//! [`RequireToken`](grpc::access::RequireToken); when no admin token is
//! usable, one is created first and written to the bootstrap token file.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::app::events::Events;
use crate::app::tokens::{self, BootstrapError, Tokens};
use crate::background::ingest::{IngestConfig, Ingestor};
use crate::background::scheduler::{Scheduler, Wakeups};
use crate::edge::dashboard::{self, Dashboard};
use crate::edge::grpc;
use crate::edge::grpc::access::RequireToken;
use crate::edge::hub::Hub;
use crate::edge::limits::MAX_MESSAGE_BYTES;
use crate::edge::overload::{OverloadConfig, OverloadLayer};
use crate::edge::tls::ServerTls;
use crate::store::Store;
use crate::telemetry::{self, Metrics, MetricsEndpoint};

/// HTTP/2 pings on every connection: a peer that does not answer within
/// the timeout is dropped (together less than a replica's lease).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long in-flight calls may finish after a shutdown signal.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("building the reflection service: {source}")]
    Reflection {
        #[source]
        source: tonic_reflection::server::Error,
    },
    #[error("gRPC transport failed: {source}")]
    Transport {
        #[source]
        source: tonic::transport::Error,
    },
    #[error(
        "refusing plain text on {addr}, which is not a loopback address: give --tls-cert and --tls-key, or --insecure-plaintext to accept that traffic is readable on the network"
    )]
    Plaintext { addr: SocketAddr },
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error("registering this replica in the database: {source}")]
    Replica {
        #[source]
        source: crate::store::StoreError,
    },
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Where the web dashboard listens; `None` runs none.
    pub dashboard: Option<SocketAddr>,
    /// Lock history older than this is pruned (hourly).
    pub lock_history_retention: Duration,
    /// TLS for gRPC and the dashboard; `None` serves plain text.
    pub tls: Option<ServerTls>,
    /// Allows plain text on a non-loopback address.
    pub insecure_plaintext: bool,
    /// Timeouts, in-flight and rate limits of the gRPC server.
    pub overload: OverloadConfig,
    /// Where a bootstrap admin token is written when no admin token is
    /// usable (mode 0600).
    pub bootstrap_token_file: std::path::PathBuf,
    /// The Prometheus scrape endpoint (`GET /metrics`), if any.
    pub metrics: Option<MetricsEndpoint>,
    /// This replica's name; `None`: the host name and a random suffix.
    pub replica: Option<crate::domain::ReplicaId>,
    /// Events older than this are pruned from the event log (hourly).
    pub event_retention: Duration,
    /// How often the reconciler's safety sweep claims due wake-ups.
    pub sweep_interval: Duration,
}

impl ServeConfig {
    /// Plain text is for loopback development: on any other address it is
    /// refused unless explicitly accepted.
    fn check_plaintext(&self) -> Result<(), ServeError> {
        if self.tls.is_some() || self.insecure_plaintext {
            return Ok(());
        }
        for addr in std::iter::once(self.listen).chain(self.dashboard) {
            if !addr.ip().is_loopback() {
                return Err(ServeError::Plaintext { addr });
            }
        }
        Ok(())
    }
}

/// Applies the message-size limit to a generated service server.
macro_rules! limited {
    ($server:expr) => {
        $server
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    };
}

/// The gRPC services whose health follows the database's.
const DB_BACKED: [&str; 8] = [
    "lockstep.v1.TokenService",
    "lockstep.v1.AuditService",
    "lockstep.v1.RolloutService",
    "lockstep.v1.WindowService",
    "lockstep.v1.CatalogService",
    "lockstep.v1.DeviceService",
    "lockstep.v1.OperationService",
    "lockstep.v1.AgentService",
];

/// A bound server, not yet serving: lets callers learn the real port when
/// binding to port 0.
pub struct Bound {
    listener: TcpListener,
    dashboard: Option<TcpListener>,
    metrics: Option<TcpListener>,
    config: ServeConfig,
}

impl Bound {
    /// Binds the gRPC address, then the dashboard's (if any): a taken
    /// address is an error before anything is served.
    pub async fn bind(config: ServeConfig) -> Result<Self, ServeError> {
        config.check_plaintext()?;
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })
        };
        let listener = bind(config.listen).await?;
        let dashboard = match config.dashboard {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let metrics = match &config.metrics {
            Some(m) => Some(bind(m.listen).await?),
            None => None,
        };
        Ok(Self {
            listener,
            dashboard,
            metrics,
            config,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// Where the dashboard listens, if it runs.
    pub fn dashboard_addr(&self) -> Option<SocketAddr> {
        let l = self.dashboard.as_ref()?;
        l.local_addr().ok().or(self.config.dashboard)
    }

    /// Serves until `shutdown` completes, then drains in-flight calls for at
    /// most [`DRAIN_GRACE`]; long-lived streams (agents, watchers) that are
    /// still open then are cut, and their clients reconnect elsewhere.
    pub async fn serve<S: Store>(
        self,
        store: S,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let token_file = &self.config.bootstrap_token_file;
        if let Some(t) = tokens::bootstrap(&store, token_file).await? {
            tracing::warn!(
                token = %t.id,
                path = %token_file.display(),
                "no usable admin token: created one and wrote it to the bootstrap token file (mode 0600); use it to create scoped tokens (lockstep token create), then keep it safe or revoke it"
            );
        }
        let tokens = Tokens::new(store.clone());
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(grpc::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|source| ServeError::Reflection { source })?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(grpc::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|source| ServeError::Reflection { source })?;
        // The empty service name means "the server as a whole": up while
        // the process is; services that need the database follow it.
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        for name in DB_BACKED {
            health
                .set_service_status(name, tonic_health::ServingStatus::Serving)
                .await;
        }
        let background = tokio::spawn(watch_database(store.clone(), health.clone()));
        let metrics = Metrics::global();
        let hub = Hub::with_metrics(metrics.clone());
        let wakeups = Wakeups::default();
        let (ingestor, ingest_task) =
            Ingestor::spawn_with_metrics(store.clone(), IngestConfig::default(), metrics.clone());
        let events = Events::default();
        let replica = self
            .config
            .replica
            .clone()
            .unwrap_or_else(crate::background::replica::default_replica_id);
        // Presence, hand-overs between replicas, the event log's tail.
        let replica_tasks = crate::background::replica::Replica {
            store: store.clone(),
            id: replica.clone(),
            hub: hub.clone(),
            wakeups: wakeups.clone(),
            events: events.clone(),
            event_retention: self.config.event_retention,
        }
        .start()
        .await
        .map_err(|source| ServeError::Replica { source })?;
        let scheduler = tokio::spawn(
            Scheduler::new(
                store.clone(),
                hub.clone(),
                wakeups.clone(),
                events.clone(),
                replica.clone(),
            )
            .with_metrics(metrics.clone())
            .with_sweep_interval(self.config.sweep_interval)
            .run(),
        );
        let counting = tokio::spawn(telemetry::count_operations(
            store.clone(),
            events.clone(),
            metrics,
        ));
        let rollouts = crate::app::rollouts::Rollouts::new(
            store.clone(),
            wakeups.clone(),
            events.clone(),
            crate::app::rollouts::RolloutWakeups::default(),
        );
        let rollout_controller =
            tokio::spawn(crate::app::rollouts::run_controller(rollouts.clone()));
        let pruning = tokio::spawn(prune_lock_history(
            store.clone(),
            self.config.lock_history_retention,
        ));

        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let tls = self.config.tls.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(addr = %self.local_addr(), tls = tls.is_some(), mutual_tls = tls.as_ref().is_some_and(ServerTls::mutual), "lockstep listening");
        if tls.is_none() {
            tracing::warn!(
                "serving gRPC and the dashboard in PLAIN TEXT: anyone on the path can read and change the traffic; use --tls-cert and --tls-key outside loopback development"
            );
        }
        let dashboard_url = self.dashboard_addr().map(|a| format!("{scheme}://{a}/"));
        let web = self.dashboard.map(|listener| {
            let app = dashboard::router(Dashboard::new(
                store.clone(),
                wakeups.clone(),
                events.clone(),
                rollouts.clone(),
                stop_rx.clone(),
            ));
            let mut stopped = stop_rx.clone();
            let acceptor = tls.as_ref().map(ServerTls::dashboard);
            tokio::spawn(dashboard::serve(listener, acceptor, app, async move {
                let _ = stopped.wait_for(|s| *s).await;
            }))
        });
        if let Some(url) = &dashboard_url {
            tracing::info!(url = %url, "dashboard listening");
        }
        let scrape = self.metrics.zip(self.config.metrics).map(|(listener, m)| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(url = %format!("http://{addr}/metrics"), "metrics listening");
            }
            let mut stopped = stop_rx.clone();
            tokio::spawn(dashboard::serve(
                listener,
                None,
                telemetry::router(m.scrape),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            ))
        });
        let incoming = TcpListenerStream::new(self.listener);
        let mut stopped = stop_rx.clone();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &tls {
            builder = builder
                .tls_config(tls.grpc())
                .map_err(|source| ServeError::Transport { source })?;
        }
        // Layers: status messages bounded outermost (whatever answered),
        // then spans (a call refused by any layer below still gets its span
        // and status), then overload (rate, in-flight, timeout, stream cap),
        // then per service the message-size limits around the token check.
        let server = builder
            .layer(grpc::status::BoundedStatus)
            .layer(telemetry::RpcSpans)
            .layer(OverloadLayer::new(
                self.config.overload.clone(),
                crate::edge::overload::served_streaming_methods(),
            ))
            // A peer that stops answering pings (a half-open connection) is
            // dropped well within a replica's lease.
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .max_concurrent_streams(Some(16))
            .http2_max_header_list_size(Some(crate::edge::limits::MAX_HEADER_LIST_BYTES))
            .add_service(limited!(health_service))
            .add_service(RequireToken::new(
                limited!(grpc::pb::catalog_service_server::CatalogServiceServer::new(
                    grpc::catalog::Catalog::new(store.clone()),
                )),
                tokens.clone(),
            ))
            .add_service(RequireToken::new(
                limited!(grpc::pb::device_service_server::DeviceServiceServer::new(
                    grpc::device::Devices::new(store.clone(), wakeups.clone()),
                )),
                tokens.clone(),
            ))
            .add_service(RequireToken::new(
                limited!(
                    grpc::pb::operation_service_server::OperationServiceServer::new(
                        grpc::operation::Operations::new(
                            store.clone(),
                            wakeups.clone(),
                            events.clone(),
                        ),
                    )
                ),
                tokens.clone(),
            ))
            .add_service(RequireToken::new(
                limited!(grpc::pb::window_service_server::WindowServiceServer::new(
                    grpc::window::Windows::new(store.clone(), wakeups.clone()),
                )),
                tokens.clone(),
            ))
            .add_service(RequireToken::new(
                limited!(grpc::pb::rollout_service_server::RolloutServiceServer::new(
                    grpc::rollout::RolloutApi::new(rollouts.clone()),
                )),
                tokens.clone(),
            ))
            .add_service(RequireToken::new(
                limited!(grpc::pb::token_service_server::TokenServiceServer::new(
                    grpc::token::TokenApi::new(store.clone()),
                )),
                tokens.clone(),
            ))
            .add_service(RequireToken::new(
                limited!(grpc::pb::audit_service_server::AuditServiceServer::new(
                    grpc::audit::AuditApi::new(store.clone()),
                )),
                tokens,
            ))
            // Devices authenticate with their own credential, on their stream.
            .add_service(limited!(
                grpc::pb::agent_service_server::AgentServiceServer::new(
                    grpc::agent::Agents::new(
                        store.clone(),
                        hub.clone(),
                        wakeups.clone(),
                        ingestor,
                        events.clone(),
                        replica.clone(),
                    )
                    .require_client_cert(tls.as_ref().is_some_and(ServerTls::mutual)),
                )
            ))
            .add_service(limited!(reflection_v1))
            .add_service(limited!(reflection_v1alpha))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stopped.wait_for(|s| *s).await;
            });
        let signal = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        let drain_deadline = async move {
            let _ = stop_rx.wait_for(|s| *s).await;
            tokio::time::sleep(DRAIN_GRACE).await;
        };
        tokio::pin!(server, signal, drain_deadline);
        let mut signalled = false;
        loop {
            tokio::select! {
                res = &mut server => {
                    res.map_err(|source| ServeError::Transport { source })?;
                    break;
                }
                () = &mut signal, if !signalled => signalled = true,
                () = &mut drain_deadline => {
                    tracing::warn!(grace = ?DRAIN_GRACE, "connections still open after the drain grace period; closing them");
                    break;
                }
            }
        }
        if let Some(web) = web {
            // Live streams end on the stop signal; plain requests are short.
            match tokio::time::timeout(DRAIN_GRACE, web).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the dashboard stopped with an error"),
                Ok(Err(e)) => tracing::warn!(error = %e, "the dashboard task failed"),
                Err(_) => tracing::warn!(
                    "dashboard requests still open after the drain grace period; closing them"
                ),
            }
        }
        if let Some(scrape) = scrape {
            scrape.abort();
        }
        // Sessions still open end now (their devices reconnect elsewhere).
        scheduler.abort();
        drop(replica_tasks);
        crate::background::replica::release(&store, &replica).await;
        counting.abort();
        background.abort();
        pruning.abort();
        scheduler.abort();
        rollout_controller.abort();
        ingest_task.abort();
        tracing::info!("lockstep stopped");
        Ok(())
    }
}

/// Pings the database; while it is unreachable, marks the database-backed
/// services NOT_SERVING and retries with exponential backoff (1 s to 30 s).
/// Requests meanwhile fail fast with `UNAVAILABLE`; the pool reconnects by
/// itself once the database is back.
async fn watch_database<S: Store>(store: S, health: tonic_health::server::HealthReporter) {
    const HEALTHY_INTERVAL: Duration = Duration::from_secs(5);
    let mut backoff = Duration::from_secs(1);
    let mut healthy = true;
    loop {
        let ok = match tokio::time::timeout(Duration::from_secs(5), store.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                if healthy {
                    tracing::error!(error = %e, "database unreachable; retrying with backoff");
                }
                false
            }
            Err(_) => {
                if healthy {
                    tracing::error!("database ping timed out; retrying with backoff");
                }
                false
            }
        };
        if ok != healthy {
            let status = if ok {
                tracing::info!("database reachable again");
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            for name in DB_BACKED {
                health.set_service_status(name, status).await;
            }
            healthy = ok;
        }
        let wait = if ok {
            backoff = Duration::from_secs(1);
            HEALTHY_INTERVAL
        } else {
            let w = backoff;
            backoff = (backoff * 2).min(Duration::from_secs(30));
            w
        };
        tokio::time::sleep(wait).await;
    }
}

/// Hourly, drops lock history older than the retention period.
async fn prune_lock_history<S: Store>(store: S, retention: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let before = crate::domain::Timestamp(crate::clock::now().0.saturating_sub(retention_ms));
        match store.prune_lock_history(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "pruned lock history"),
            Err(e) => tracing::warn!(error = %e, "pruning lock history failed; will retry"),
        }
    }
}

/// Completes on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}
