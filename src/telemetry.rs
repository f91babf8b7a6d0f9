//! Observability: logs, traces and metrics.
//!
//! [`install`] sets up the process's `tracing` subscriber — logs on stderr as
//! text or JSON lines, filtered by `LOCKSTEP_LOG` — and, when asked, the
//! OpenTelemetry pipeline: spans and metrics exported over OTLP/gRPC, and a
//! Prometheus registry for the scrape endpoint ([`router`]). Both metric
//! routes read the same meter provider, so they always agree.
//!
//! Spans: [`RpcSpans`] opens one per gRPC call (named after the method, with
//! `rpc.*` attributes, the gRPC status, and `device` / `operation` /
//! `rollout` fields that handlers fill in with [`record_device`] and its
//! siblings); the scheduler opens one per device decision and the rollout
//! controller one per step. [`Metrics`] holds the instruments the server
//! records into. Telemetry never decides: everything here is recorded by the
//! shell, never by `crate::domain`.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _, UpDownCounter};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::app::events::Events;
use crate::domain::OpStatus;
use crate::store::Store;

/// The OpenTelemetry `service.name` of the server.
pub const SERVICE_NAME: &str = "lockstep";
/// The instrumentation scope of every span and metric.
const SCOPE: &str = "lockstep";

/// How log lines look on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    /// `text` or `json`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// What [`install`] sets up.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// The OTLP/gRPC collector (`http://collector:4317`): spans and metrics
    /// are exported there. `None` exports nothing.
    pub otlp_endpoint: Option<String>,
    /// Keep a Prometheus registry of the metrics, for the scrape endpoint.
    pub prometheus: bool,
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("building the OTLP exporter for {endpoint}: {source}")]
    Otlp {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("building the Prometheus exporter: {source}")]
    Prometheus {
        #[source]
        source: opentelemetry_sdk::error::OTelSdkError,
    },
    #[error("installing the log subscriber: {source}")]
    Subscriber {
        #[source]
        source: tracing_subscriber::util::TryInitError,
    },
}

/// The installed pipeline. Dropping it flushes what is still buffered (spans,
/// a last metrics export) and shuts the exporters down.
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    scrape: Scrape,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("traces", &self.tracer_provider.is_some())
            .field("metrics", &self.meter_provider.is_some())
            .finish()
    }
}

impl Telemetry {
    /// The Prometheus registry (empty unless `prometheus` was asked for).
    pub fn scrape(&self) -> Scrape {
        self.scrape.clone()
    }

    /// Flushes and shuts down the exporters; later calls do nothing. Blocks
    /// (at most the exporters' timeouts): call it outside async workers or
    /// let the drop at the end of `main` do it.
    pub fn shutdown(&mut self) {
        if let Some(p) = self.tracer_provider.take()
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "flushing spans at shutdown failed");
        }
        if let Some(p) = self.meter_provider.take()
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "flushing metrics at shutdown failed");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Installs logging and, as configured, the OTLP exporters and the
/// Prometheus registry; sets the process-wide [`Metrics`]. Must run inside
/// a Tokio runtime (the OTLP exporter's gRPC channel lives there), once.
pub fn install(config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let resource = Resource::builder()
        .with_service_name(SERVICE_NAME)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let otlp = |source| TelemetryError::Otlp {
        endpoint: config.otlp_endpoint.clone().unwrap_or_default(),
        source,
    };

    let tracer_provider = match &config.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(otlp)?;
            Some(
                SdkTracerProvider::builder()
                    .with_resource(resource.clone())
                    .with_batch_exporter(exporter)
                    .build(),
            )
        }
        None => None,
    };

    let registry = prometheus::Registry::new();
    let mut meter_provider = None;
    if config.otlp_endpoint.is_some() || config.prometheus {
        let mut builder = SdkMeterProvider::builder().with_resource(resource);
        if let Some(endpoint) = &config.otlp_endpoint {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(otlp)?;
            builder = builder.with_periodic_exporter(exporter);
        }
        if config.prometheus {
            let exporter = opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                .build()
                .map_err(|source| TelemetryError::Prometheus { source })?;
            builder = builder.with_reader(exporter);
        }
        let provider = builder.build();
        let _ = GLOBAL_METRICS.set(Metrics::new(&provider.meter(SCOPE)));
        meter_provider = Some(provider);
    }

    let filter = tracing_subscriber::EnvFilter::try_from_env("LOCKSTEP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match config.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => logs.json().with_ansi(false).with_filter(filter).boxed(),
    };
    // Our own spans and events go to the collector whatever the log level;
    // libraries' (tonic, h2, sqlx) stay out.
    let traces = tracer_provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(SCOPE))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("lockstep", tracing::Level::INFO),
            )
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|source| TelemetryError::Subscriber { source })?;

    Ok(Telemetry {
        tracer_provider,
        meter_provider,
        scrape: Scrape { registry },
    })
}

// ---------------------------------------------------------------- metrics

static GLOBAL_METRICS: OnceLock<Metrics> = OnceLock::new();

/// Upper bounds of the decision-latency buckets, in seconds (10 µs to 1 s).
const DECISION_BUCKETS: [f64; 14] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.1, 0.25, 1.0,
];
/// Upper bounds of the ingest batch-size buckets, in reports.
const BATCH_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// The server's instruments. Cheap to clone; a handle made with
/// [`Metrics::default`] records nothing.
///
/// | OTel name | Prometheus name | labels |
/// | --- | --- | --- |
/// | `lockstep.agents.connected` | `lockstep_agents_connected` | |
/// | `lockstep.intents.sent` | `lockstep_intents_sent_total` | `kind`, `reason` |
/// | `lockstep.operations` | `lockstep_operations` | `status` |
/// | `lockstep.scheduler.decision.duration` (s) | `lockstep_scheduler_decision_duration_seconds` | |
/// | `lockstep.ingest.batch.size` | `lockstep_ingest_batch_size` | |
/// | `lockstep.db.errors` | `lockstep_db_errors_total` | `kind` |
#[derive(Clone)]
pub struct Metrics {
    agents_connected: UpDownCounter<i64>,
    intents_sent: Counter<u64>,
    decision_duration: Histogram<f64>,
    ingest_batch_size: Histogram<u64>,
    db_errors: Counter<u64>,
    /// Operations per stored status, as last counted from the store; the
    /// observable gauge reads it at each collection.
    operations: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    _operations_gauge: opentelemetry::metrics::ObservableGauge<u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(&opentelemetry::metrics::noop::NoopMeterProvider::new().meter(SCOPE))
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The instruments, created on `meter`.
    pub fn new(meter: &Meter) -> Self {
        let operations: Arc<Mutex<BTreeMap<&'static str, u64>>> = Arc::default();
        let seen = Arc::clone(&operations);
        let metrics = Metrics {
            agents_connected: meter
                .i64_up_down_counter("lockstep.agents.connected")
                .with_description("Agent streams connected to this server")
                .build(),
            intents_sent: meter
                .u64_counter("lockstep.intents.sent")
                .with_description(
                    "Intents appended to device outboxes, by kind and reason (none for apply)",
                )
                .build(),
            decision_duration: meter
                .f64_histogram("lockstep.scheduler.decision.duration")
                .with_unit("s")
                .with_description("Time the pure scheduling decision (domain::decide) took")
                .with_boundaries(DECISION_BUCKETS.to_vec())
                .build(),
            ingest_batch_size: meter
                .u64_histogram("lockstep.ingest.batch.size")
                .with_description("Lock reports committed per ingest transaction")
                .with_boundaries(BATCH_BUCKETS.to_vec())
                .build(),
            db_errors: meter
                .u64_counter("lockstep.db.errors")
                .with_description("Database errors, by kind (unavailable or query)")
                .build(),
            _operations_gauge: meter
                .u64_observable_gauge("lockstep.operations")
                .with_description(
                    "Operations in the store by status, counted every 15 s and after events",
                )
                .with_callback(move |obs| {
                    let counts = seen.lock().unwrap_or_else(|p| p.into_inner());
                    for (status, n) in counts.iter() {
                        obs.observe(*n, &[KeyValue::new("status", *status)]);
                    }
                })
                .build(),
            operations,
        };
        // Shown as 0 from the start, rather than missing until the first
        // agent or error.
        metrics.agents_connected(0);
        for kind in ["unavailable", "query"] {
            metrics.db_errors.add(0, &[KeyValue::new("kind", kind)]);
        }
        metrics
    }

    /// The process-wide instruments: those [`install`] created, or ones
    /// that record nothing when it was not asked for metrics.
    pub fn global() -> Self {
        GLOBAL_METRICS.get().cloned().unwrap_or_default()
    }

    /// A device's agent stream registered (`+1`) or left (`-1`).
    pub fn agents_connected(&self, delta: i64) {
        self.agents_connected.add(delta, &[]);
    }

    /// An intent of `kind` appended to an outbox, for `reason` (`none` when
    /// the kind has no single reason, as apply).
    pub fn intent_sent(&self, kind: &'static str, reason: &'static str) {
        self.intents_sent.add(
            1,
            &[KeyValue::new("kind", kind), KeyValue::new("reason", reason)],
        );
    }

    /// One pure scheduling decision took `took`.
    pub fn decision(&self, took: Duration) {
        self.decision_duration.record(took.as_secs_f64(), &[]);
    }

    /// An ingest transaction committed (or tried) `reports` lock reports.
    pub fn ingest_batch(&self, reports: usize) {
        self.ingest_batch_size
            .record(u64::try_from(reports).unwrap_or(u64::MAX), &[]);
    }

    /// A database error of `kind` (`unavailable`: connection lost or pool
    /// exhausted; `query`: anything else the driver reported).
    pub fn db_error(&self, kind: &'static str) {
        self.db_errors.add(1, &[KeyValue::new("kind", kind)]);
    }

    /// Replaces the operation counts the `lockstep.operations` gauge shows.
    pub fn set_operation_counts(&self, counts: &[(OpStatus, u64)]) {
        let mut shown = self.operations.lock().unwrap_or_else(|p| p.into_inner());
        // Statuses that emptied report 0 rather than vanish.
        shown.values_mut().for_each(|n| *n = 0);
        for (status, n) in counts {
            shown.insert(status.as_str(), *n);
        }
    }
}

/// Keeps the `lockstep.operations` gauge current: counts operations by
/// status every 15 s, and a second after any burst of events. Runs until
/// aborted.
pub async fn count_operations<S: Store>(store: S, events: Events, metrics: Metrics) {
    const EVERY: Duration = Duration::from_secs(15);
    const SETTLE: Duration = Duration::from_secs(1);
    let mut changes = events.subscribe();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut events_open = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            ev = changes.recv(), if events_open => match ev {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    tokio::time::sleep(SETTLE).await;
                    changes = changes.resubscribe();
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => events_open = false,
            },
        }
        match store.operation_status_counts().await {
            Ok(counts) => metrics.set_operation_counts(&counts),
            Err(e) => tracing::debug!(error = %e, "cannot count operations for metrics"),
        }
    }
}

// ------------------------------------------------------------ scrape

/// The Prometheus view of the metrics. Cheap to clone.
#[derive(Clone, Default)]
pub struct Scrape {
    registry: prometheus::Registry,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

impl Scrape {
    /// The current metrics in the Prometheus text format (0.0.4).
    pub fn render(&self) -> String {
        use prometheus::Encoder as _;
        let encoder = prometheus::TextEncoder::new();
        let mut out = Vec::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Where the scrape endpoint listens and what it serves.
#[derive(Debug, Clone)]
pub struct MetricsEndpoint {
    pub listen: SocketAddr,
    pub scrape: Scrape,
}

/// `GET /metrics`: the Prometheus scrape endpoint. It has no login: bind it
/// where only the scraper reaches it.
pub fn router(scrape: Scrape) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let scrape = scrape.clone();
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    scrape.render(),
                )
            }
        }),
    )
}

// ------------------------------------------------------------ spans

/// Records the device a call or decision is about on the current span.
pub fn record_device(device: &impl Display) {
    Span::current().record("device", tracing::field::display(device));
}

/// Records the operation a call or decision is about on the current span.
pub fn record_operation(operation: &impl Display) {
    Span::current().record("operation", tracing::field::display(operation));
}

/// Records the rollout a call is about on the current span.
pub fn record_rollout(rollout: &impl Display) {
    Span::current().record("rollout", tracing::field::display(rollout));
}

/// A tower layer for the gRPC server: one span per call, named after the
/// method (`lockstep.v1.DeviceService/GetDevice`), with `rpc.system`,
/// `rpc.service`, `rpc.method` and `rpc.grpc.status_code` attributes, empty
/// `device`, `operation` and `rollout` fields for handlers to fill in, and
/// the caller's W3C `traceparent` as its parent. The span lasts until the
/// response body ends — for a stream, until it closes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcSpans;

impl<S> tower_layer::Layer<S> for RpcSpans {
    type Service = RpcSpanService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcSpanService { inner }
    }
}

/// The service [`RpcSpans`] wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct RpcSpanService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for RpcSpanService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<RpcBody<ResBody>>;
    type Error = S::Error;
    type Future = RpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let span = rpc_span(&req);
        let inner = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        RpcFuture {
            inner,
            span: Some(span),
        }
    }
}

fn rpc_span<B>(req: &http::Request<B>) -> Span {
    let path = req.uri().path().trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        "rpc",
        otel.name = %path,
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = Empty,
        device = Empty,
        operation = Empty,
        rollout = Empty,
    );
    if req.headers().contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(req.headers()));
        // Only fails when the span is disabled; then there is nothing to link.
        let _ = span.set_parent(parent);
    }
    span
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Records a gRPC status code on the span: server-side failures mark the
/// span as an error, as OpenTelemetry's gRPC conventions say.
fn record_grpc_status(span: &Span, headers: &http::HeaderMap) -> bool {
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
    else {
        return false;
    };
    span.record("rpc.grpc.status_code", code);
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
    if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
        span.record("otel.status_code", "ERROR");
    }
    true
}

pin_project_lite::pin_project! {
    /// The response future of [`RpcSpanService`]: polls the call inside its span.
    pub struct RpcFuture<F> {
        #[pin]
        inner: F,
        span: Option<Span>,
    }
}

impl<F, B, E> Future for RpcFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<RpcBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.span.as_ref().map(Span::enter);
            ready!(this.inner.poll(cx))
        };
        let span = this.span.take().unwrap_or_else(Span::none);
        Poll::Ready(match result {
            Ok(response) => {
                // A trailers-only response (an error) carries its status here.
                record_grpc_status(&span, response.headers());
                Ok(response.map(|inner| RpcBody {
                    inner,
                    span: Some(span),
                }))
            }
            Err(e) => {
                span.record("otel.status_code", "ERROR");
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call's span open until it ends, and
    /// records the status from the trailers.
    pub struct RpcBody<B> {
        #[pin]
        inner: B,
        span: Option<Span>,
    }
}

impl<B: http_body::Body> http_body::Body for RpcBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = {
            let _entered = this.span.as_ref().map(Span::enter);
            ready!(this.inner.poll_frame(cx))
        };
        let ended = match (&frame, this.span.as_ref()) {
            (Some(Ok(f)), Some(span)) => f
                .trailers_ref()
                .is_some_and(|t| record_grpc_status(span, t)),
            (Some(Err(_)), Some(span)) => {
                span.record("otel.status_code", "ERROR");
                true
            }
            (None, _) => true,
            _ => false,
        };
        if ended {
            // Closes the span (unless the handler's task still holds it).
            this.span.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Instruments over a meter provider of their own, scraped by the
/// returned registry (keep the provider alive as long as both are used).
#[cfg(test)]
pub(crate) fn scraped_metrics() -> (Metrics, Scrape, SdkMeterProvider) {
    let registry = prometheus::Registry::new();
    let exporter = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .build()
        .expect("a Prometheus exporter");
    let provider = SdkMeterProvider::builder().with_reader(exporter).build();
    (
        Metrics::new(&provider.meter(SCOPE)),
        Scrape { registry },
        provider,
    )
}

/// The value of the sample `name` whose labels include every one of
/// `labels` (`key="value"`), from Prometheus text.
#[cfg(test)]
pub(crate) fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        (metric == name && labels.iter().all(|l| rest.contains(l)))
            .then(|| value.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_scraped_under_its_documented_name_and_labels() {
        let (m, scrape, _provider) = scraped_metrics();
        m.agents_connected(1);
        m.agents_connected(1);
        m.agents_connected(-1);
        m.intent_sent("release_request", "update_restart");
        m.intent_sent("release_request", "update_restart");
        m.intent_sent("apply", "none");
        m.decision(Duration::from_micros(40));
        m.decision(Duration::from_millis(2));
        m.ingest_batch(7);
        m.db_error("unavailable");
        m.set_operation_counts(&[(OpStatus::WaitingLock, 3), (OpStatus::Done, 2)]);
        m.set_operation_counts(&[(OpStatus::Done, 5)]);
        let text = scrape.render();

        assert_eq!(sample(&text, "lockstep_agents_connected", &[]), Some(1.0));
        assert_eq!(
            sample(
                &text,
                "lockstep_intents_sent_total",
                &[r#"kind="release_request""#, r#"reason="update_restart""#]
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                "lockstep_intents_sent_total",
                &[r#"kind="apply""#, r#"reason="none""#]
            ),
            Some(1.0)
        );
        let decisions = "lockstep_scheduler_decision_duration_seconds";
        assert_eq!(sample(&text, &format!("{decisions}_count"), &[]), Some(2.0));
        assert_eq!(
            sample(&text, &format!("{decisions}_bucket"), &[r#"le="0.00005""#]),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "lockstep_ingest_batch_size_sum", &[]),
            Some(7.0)
        );
        assert_eq!(
            sample(
                &text,
                "lockstep_db_errors_total",
                &[r#"kind="unavailable""#]
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "lockstep_db_errors_total", &[r#"kind="query""#]),
            Some(0.0)
        );
        // A status that emptied shows 0 rather than its last count.
        assert_eq!(
            sample(&text, "lockstep_operations", &[r#"status="done""#]),
            Some(5.0)
        );
        assert_eq!(
            sample(&text, "lockstep_operations", &[r#"status="waiting_lock""#]),
            Some(0.0)
        );
    }

    #[test]
    fn a_default_handle_records_nothing_and_never_fails() {
        let m = Metrics::default();
        m.agents_connected(1);
        m.intent_sent("apply", "none");
        m.decision(Duration::from_millis(1));
        m.set_operation_counts(&[(OpStatus::Done, 1)]);
        assert!(Scrape::default().render().is_empty());
    }

    #[test]
    fn log_formats_parse_by_name() {
        assert_eq!(LogFormat::parse("json"), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse("text"), Some(LogFormat::Text));
        assert_eq!(LogFormat::parse("xml"), None);
    }
}
