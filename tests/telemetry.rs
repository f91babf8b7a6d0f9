//! Observability end to end: a real `lockstep serve` exporting over OTLP to
//! a collector this test runs (an OTLP/gRPC trace and metrics receiver on
//! loopback), a real `lockstep agent` (hooks runtime, no blocks) so the
//! scheduler has a reporting device to decide for, the Prometheus scrape
//! endpoint, and JSON logs.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockstep::edge::grpc::pb;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    metrics_service_server::{MetricsService, MetricsServiceServer},
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use pb::device_service_client::DeviceServiceClient;
use pb::operation_service_client::OperationServiceClient;
use support::{Agent, BIN, Server, eventually, free_port};
use tokio_stream::wrappers::TcpListenerStream;

/// One span as the collector received it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    name: String,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: BTreeMap<String, String>,
    /// The resource's `service.name`.
    service: String,
}

impl ReceivedSpan {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// What the in-test collector has received so far.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// Names of the metrics in every export.
    metrics: Arc<Mutex<Vec<String>>>,
}

fn value_text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value_text(kv.value.as_ref())))
        .collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let resource = attributes(&rs.resource.unwrap_or_default().attributes);
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(ReceivedSpan {
                        name: s.name,
                        span_id: s.span_id,
                        parent_span_id: s.parent_span_id,
                        attributes: attributes(&s.attributes),
                        service: service.clone(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut names = self.metrics.lock().unwrap();
        for rm in req.into_inner().resource_metrics {
            for sm in rm.scope_metrics {
                names.extend(sm.metrics.into_iter().map(|m| m.name));
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Starts an OTLP/gRPC receiver on a loopback port; returns its URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(self.clone()))
            .add_service(MetricsServiceServer::new(self.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener));
        tokio::spawn(server);
        format!("http://{addr}")
    }

    /// Waits (at most 30 s) for a span that satisfies `wanted`.
    async fn span(&self, what: &str, wanted: impl Fn(&ReceivedSpan) -> bool) -> ReceivedSpan {
        eventually(30, what, || {
            let found = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .find(|s| wanted(s))
                .cloned();
            async move { found }
        })
        .await
    }
}

/// Starts `lockstep [global] serve --listen 127.0.0.1:0 <args>` with `env`
/// and waits (at most 60 s) for its listening line, read as text or JSON.
fn serve(global: &[&str], args: &[&str], env: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(global)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--dashboard-listen",
            "off",
        ])
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .args(args)
        .env("LOCKSTEP_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lockstep serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[server] {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut server = Server::adopt(child, log, dir);
    let line = wait_line(&server, "lockstep listening");
    let addr = match serde_json::from_str::<serde_json::Value>(&line) {
        Ok(json) => json["fields"]["addr"].as_str().unwrap().to_owned(),
        Err(_) => field(&line, "addr=").to_owned(),
    };
    server.addr = addr.parse().unwrap();
    server
}

/// Waits (at most 60 s) for a server log line containing `needle`.
fn wait_line(server: &Server, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.log.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => panic!("the server never logged {needle:?} within 60 s"),
        }
    }
}

/// The value after `key` (e.g. `url=`) in a text log line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

/// `GET url` over plain HTTP/1.0; returns (status, body).
fn http_get(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut conn = std::net::TcpStream::connect(host).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// The value of the Prometheus sample `name` whose labels include all of
/// `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        (metric == name && labels.iter().all(|l| rest.contains(l)))
            .then(|| value.parse().ok())
            .flatten()
    })
}

/// A fleet whose reboots need no window, and dev-1 registered in it; the
/// credential is written to `dir/credential`.
async fn fleet_with_device(server: &Server, dir: &std::path::Path) {
    let mut devices = DeviceServiceClient::new(server.channel().await);
    devices
        .create_fleet(pb::CreateFleetRequest {
            id: "site".into(),
            name: String::new(),
        })
        .await
        .unwrap();
    pb::window_service_client::WindowServiceClient::new(server.channel().await)
        .set_fleet_policy(pb::SetFleetPolicyRequest {
            policy: Some(pb::FleetPolicy {
                fleet: "site".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap();
    let reg = devices
        .register_device(pb::RegisterDeviceRequest {
            id: "dev-1".into(),
            fleet: "site".into(),
            tags: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    std::fs::write(dir.join("credential"), reg.credential).unwrap();
}

/// `lockstep agent` for dev-1, hooks runtime, no blocks; reboots succeed.
fn start_agent(server: &Server, dir: &std::path::Path) -> Agent {
    let path = |p: &str| dir.join(p).to_str().unwrap().to_owned();
    let agent = Agent::spawn(&[
        "--server".into(),
        server.url(),
        "--device".into(),
        "dev-1".into(),
        "--credential-file".into(),
        path("credential"),
        "--runtime".into(),
        "hooks".into(),
        "--lock-root".into(),
        path("locks"),
        "--state-dir".into(),
        path("agent-state"),
        "--api-listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--hook-reboot".into(),
        "true".into(),
    ]);
    agent.wait_log("connected to the server");
    agent
}

// Multi-threaded: the collector keeps serving while the test thread waits
// on child processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otlp_collector_receives_spans_for_calls_and_scheduler_decisions_and_metrics_are_scraped()
 {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let server = serve(
        &[],
        &[
            "--otlp-endpoint",
            &endpoint,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        // Export quickly, so the waits below stay short.
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
        ],
    );
    let metrics_url = field(&wait_line(&server, "metrics listening"), "url=").to_owned();
    let dir = tempfile::tempdir().unwrap();
    fleet_with_device(&server, dir.path()).await;
    let mut agent = start_agent(&server, dir.path());

    let mut ops = OperationServiceClient::new(server.channel().await);
    let op = ops
        .create_operation(pb::CreateOperationRequest {
            device: "dev-1".into(),
            spec: Some(pb::OperationSpec {
                kind: Some(pb::operation_spec::Kind::Reboot(
                    pb::operation_spec::Empty {},
                )),
            }),
            force: None,
            actor: "test".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    let op_label = format!("op-{}", op.id);
    eventually(30, "the reboot to be done", || {
        let mut ops = ops.clone();
        async move {
            let got = ops
                .get_operation(pb::GetOperationRequest { id: op.id })
                .await
                .unwrap()
                .into_inner()
                .operation
                .unwrap();
            (got.status == "done").then_some(())
        }
    })
    .await;
    let missing = DeviceServiceClient::new(server.channel().await)
        .get_device(pb::GetDeviceRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    // Calls the access check refuses are spanned too: the span layer is
    // outside it.
    let anonymous = DeviceServiceClient::new(server.raw_channel().await)
        .list_fleets(pb::ListFleetsRequest {})
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
    let viewer = pb::token_service_client::TokenServiceClient::new(server.channel().await)
        .create_token(pb::CreateTokenRequest {
            name: "wall".into(),
            role: "viewer".into(),
            fleets: vec![],
            expires_in_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let denied = DeviceServiceClient::new(server.channel_as(&viewer).await)
        .create_fleet(pb::CreateFleetRequest {
            id: "other".into(),
            name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    // A span per call, named after its method, with its status and the ids
    // the handler knew.
    let fleet = collector
        .span("the CreateFleet span", |s| {
            s.name == "lockstep.v1.DeviceService/CreateFleet"
        })
        .await;
    assert_eq!(fleet.service, "lockstep");
    assert_eq!(fleet.attr("rpc.system"), Some("grpc"));
    assert_eq!(fleet.attr("rpc.service"), Some("lockstep.v1.DeviceService"));
    assert_eq!(fleet.attr("rpc.method"), Some("CreateFleet"));
    assert_eq!(fleet.attr("rpc.grpc.status_code"), Some("0"));
    let created = collector
        .span("the CreateOperation span", |s| {
            s.name == "lockstep.v1.OperationService/CreateOperation"
        })
        .await;
    assert_eq!(created.attr("device"), Some("dev-1"));
    assert_eq!(created.attr("operation"), Some(op_label.as_str()));
    let not_found = collector
        .span("the failed GetDevice span", |s| {
            s.name == "lockstep.v1.DeviceService/GetDevice"
        })
        .await;
    assert_eq!(not_found.attr("rpc.grpc.status_code"), Some("5"));
    assert_eq!(not_found.attr("device"), Some("nope"));
    let unauthenticated = collector
        .span("the ListFleets span without a token", |s| {
            s.name == "lockstep.v1.DeviceService/ListFleets"
        })
        .await;
    assert_eq!(unauthenticated.attr("rpc.grpc.status_code"), Some("16"));
    collector
        .span("the viewer's refused CreateFleet span", |s| {
            s.name == "lockstep.v1.DeviceService/CreateFleet"
                && s.attr("rpc.grpc.status_code") == Some("7")
        })
        .await;

    // A span per scheduler decision, with the device and operation.
    let decision = collector
        .span("the decision that sent the apply", |s| {
            s.name == "scheduler.decide" && s.attr("step") == Some("apply")
        })
        .await;
    assert_eq!(decision.attr("device"), Some("dev-1"));
    assert_eq!(decision.attr("operation"), Some(op_label.as_str()));

    // Scraped: one agent connected, the apply intent, timed decisions, the
    // operation done.
    let text = eventually(30, "the operation counted as done", || {
        let (status, text) = http_get(&metrics_url);
        assert_eq!(status, 200);
        let done = sample(&text, "lockstep_operations", &[r#"status="done""#]);
        async move { (done == Some(1.0)).then_some(text) }
    })
    .await;
    assert_eq!(sample(&text, "lockstep_agents_connected", &[]), Some(1.0));
    assert_eq!(
        sample(
            &text,
            "lockstep_intents_sent_total",
            &[r#"kind="apply""#, r#"reason="none""#]
        ),
        Some(1.0)
    );
    let decisions = sample(
        &text,
        "lockstep_scheduler_decision_duration_seconds_count",
        &[],
    );
    assert!(decisions.is_some_and(|n| n >= 1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "lockstep_db_errors_total",
            &[r#"kind="unavailable""#]
        ),
        Some(0.0)
    );

    // The same instruments reach the collector over OTLP.
    for name in [
        "lockstep.agents.connected",
        "lockstep.intents.sent",
        "lockstep.scheduler.decision.duration",
        "lockstep.operations",
    ] {
        eventually(30, &format!("{name} exported over OTLP"), || {
            let seen = collector.metrics.lock().unwrap().iter().any(|n| n == name);
            async move { seen.then_some(()) }
        })
        .await;
    }

    // The agent's stream is one span per connection: it ends, and is
    // exported, when the agent goes; its messages are its children.
    agent.kill9();
    let stream = collector
        .span("the agent stream's span after disconnect", |s| {
            s.name == "lockstep.v1.AgentService/Connect"
        })
        .await;
    assert_eq!(stream.attr("device"), Some("dev-1"));
    let message = collector
        .span("an agent message span", |s| s.name == "agent.message")
        .await;
    assert_eq!(message.parent_span_id, stream.span_id);
    assert_eq!(message.attr("device"), Some("dev-1"));
    eventually(30, "no agent connected", || {
        let connected = sample(&http_get(&metrics_url).1, "lockstep_agents_connected", &[]);
        async move { (connected == Some(0.0)).then_some(()) }
    })
    .await;
    assert!(server.terminate().success());
}

#[tokio::test]
async fn spans_still_buffered_at_shutdown_are_flushed_to_the_collector() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    // Spans would wait a minute for their batch: only the shutdown flush
    // can deliver them in time.
    let server = serve(
        &[],
        &["--otlp-endpoint", &endpoint],
        &[("OTEL_BSP_SCHEDULE_DELAY", "60000")],
    );
    DeviceServiceClient::new(server.channel().await)
        .create_fleet(pb::CreateFleetRequest {
            id: "site".into(),
            name: String::new(),
        })
        .await
        .unwrap();
    assert!(collector.spans.lock().unwrap().is_empty());
    // The collector runs on this test's runtime: wait for the exit elsewhere.
    let stopped = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(stopped.success());
    let span = collector
        .span("the CreateFleet span, flushed", |s| {
            s.name == "lockstep.v1.DeviceService/CreateFleet"
        })
        .await;
    assert_eq!(span.attr("rpc.grpc.status_code"), Some("0"));
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_calls_span_fields() {
    let server = serve(&["--log-format", "json"], &[], &[]);
    DeviceServiceClient::new(server.channel().await)
        .create_fleet(pb::CreateFleetRequest {
            id: "site".into(),
            name: String::new(),
        })
        .await
        .unwrap();
    let line = wait_line(&server, "fleet created");
    let json: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(json["level"], "INFO");
    assert_eq!(json["fields"]["message"], "fleet created");
    assert_eq!(json["fields"]["fleet"], "site");
    assert_eq!(json["span"]["rpc.method"], "CreateFleet");
    assert!(json["timestamp"].is_string(), "{json}");
}
