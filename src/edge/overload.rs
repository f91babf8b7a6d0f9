//! Overload protection for the gRPC server: one tower layer in front of
//! every service, so overload degrades into statuses, never into a crash or
//! unbounded memory.
//!
//! | what | limit | when exceeded |
//! |---|---|---|
//! | unary calls per client (token, else peer address) | `rate_per_client`/s, burst `rate_burst` | `RESOURCE_EXHAUSTED` |
//! | unary calls in flight, server-wide | `max_in_flight` | `UNAVAILABLE` at once (shed, never queued) |
//! | time a unary call may take | `request_timeout` | `DEADLINE_EXCEEDED` |
//! | open streams (agents, watchers), server-wide | `max_streams` | `RESOURCE_EXHAUSTED` |
//! | one message's size (set per service) | [`crate::edge::limits::MAX_MESSAGE_BYTES`] | `RESOURCE_EXHAUSTED` |
//!
//! Long-lived streams (`AgentService.Connect`, `WatchEvents`, `WatchRollout`,
//! health `Watch`, reflection) are recognised from the descriptor sets —
//! every method that streams in either direction — and are exempt from the
//! request timeout, the rate limit and the in-flight limit; they count
//! against `max_streams` until they end. Health checks are exempt from the
//! rate limit, so a load balancer is never throttled into marking the
//! server down.
//!
//! The rate limiter is keyed by [`client_key`]: per API token (its id with
//! its secret) when a bearer token is present, else per peer address. This
//! layer runs inside `RpcSpans` but before `RequireToken`, so it never sees
//! the principal; a refused call is still spanned with its status.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use sha2::Digest as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::edge::limits::MAX_RATE_CLIENTS;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The server's overload settings (`lockstep serve` flags).
#[derive(Debug, Clone, PartialEq)]
pub struct OverloadConfig {
    /// Longest a unary call may take.
    pub request_timeout: Duration,
    /// Unary calls handled at once, server-wide; more are shed.
    pub max_in_flight: usize,
    /// Streams open at once, server-wide.
    pub max_streams: usize,
    /// Unary calls per second per client, sustained; 0 turns the limit off.
    pub rate_per_client: u32,
    /// Unary calls a client may make at once before the rate applies.
    pub rate_burst: u32,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            max_in_flight: 256,
            max_streams: 20_000,
            rate_per_client: 100,
            rate_burst: 200,
        }
    }
}

/// A token bucket: `burst` tokens, refilled at `per_sec`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_sec: f64::from(per_sec),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn idle_since(&self) -> Instant {
        self.last
    }
}

/// Who a unary call is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// An API token, by a hash of its id and secret (the value itself is
    /// never kept): one bucket per token however the header is spelled.
    Token([u8; 16]),
    /// Any other `authorization` value (a device credential, a malformed
    /// token), by a hash of the header.
    Header([u8; 16]),
    /// The peer's IP address, for calls without an `authorization` header.
    Peer(IpAddr),
    /// Neither is known.
    Unknown,
}

fn hash16(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0]);
    }
    let mut key = [0u8; 16];
    key.copy_from_slice(&h.finalize()[..16]);
    key
}

/// The key a call is rate-limited by, the one place that decides it.
///
/// This layer runs before `RequireToken`, so the token is not yet
/// authenticated here (and the principal is not known). A bearer API token
/// `lst_<id>_<secret>` is keyed by its token id together with its secret: a
/// real token therefore gets exactly one bucket per token id however the
/// header is spelled (scheme case, spaces), while a caller who knows only an
/// id cannot forge `lst_<someone's id>_x` to drain that token's bucket. Any
/// other `authorization` value is keyed by a hash of the header; calls
/// without one by the peer's address.
pub fn client_key<B>(req: &http::Request<B>) -> ClientKey {
    if let Some(v) = req.headers().get("authorization") {
        let token = v
            .to_str()
            .ok()
            .map(str::trim)
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .and_then(|(_, t)| crate::domain::split_token(t.trim()));
        return match token {
            Some((id, secret)) => {
                ClientKey::Token(hash16(&[id.as_str().as_bytes(), secret.as_bytes()]))
            }
            None => ClientKey::Header(hash16(&[v.as_bytes()])),
        };
    }
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
        .map_or(ClientKey::Unknown, |a| ClientKey::Peer(a.ip()))
}

/// Token buckets per client, at most [`MAX_RATE_CLIENTS`] of them; past
/// that, clients idle for a minute are forgotten, and if none is, new
/// clients share one bucket.
struct RateLimiter {
    per_sec: u32,
    burst: u32,
    buckets: Mutex<(HashMap<ClientKey, TokenBucket>, TokenBucket)>,
}

impl RateLimiter {
    fn new(per_sec: u32, burst: u32) -> Self {
        Self {
            per_sec,
            burst,
            buckets: Mutex::new((HashMap::new(), TokenBucket::new(per_sec, burst))),
        }
    }

    fn allow(&self, key: ClientKey) -> bool {
        if self.per_sec == 0 {
            return true;
        }
        let mut guard = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (buckets, overflow) = &mut *guard;
        if let Some(b) = buckets.get_mut(&key) {
            return b.take();
        }
        if buckets.len() >= MAX_RATE_CLIENTS {
            let now = Instant::now();
            buckets.retain(|_, b| {
                now.saturating_duration_since(b.idle_since()) < Duration::from_secs(60)
            });
            if buckets.len() >= MAX_RATE_CLIENTS {
                return overflow.take();
            }
        }
        let mut b = TokenBucket::new(self.per_sec, self.burst);
        let ok = b.take();
        buckets.insert(key, b);
        ok
    }
}

/// Every `/package.Service/Method` path that streams in either direction,
/// from encoded descriptor sets.
pub fn streaming_methods(descriptor_sets: &[&[u8]]) -> HashSet<String> {
    use prost::Message as _;
    let mut out = HashSet::new();
    for set in descriptor_sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name = service.name.unwrap_or_default();
                for m in service.method {
                    if m.client_streaming() || m.server_streaming() {
                        let prefix = if package.is_empty() {
                            String::new()
                        } else {
                            format!("{package}.")
                        };
                        out.insert(format!("/{prefix}{name}/{}", m.name()));
                    }
                }
            }
        }
    }
    out
}

/// The streaming methods of every service `lockstep serve` runs.
pub fn served_streaming_methods() -> HashSet<String> {
    streaming_methods(&[
        crate::edge::grpc::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ])
}

struct Shared {
    config: OverloadConfig,
    streaming: HashSet<String>,
    unary: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    limiter: RateLimiter,
}

/// The layer; see the module docs.
#[derive(Clone)]
pub struct OverloadLayer {
    shared: Arc<Shared>,
}

impl OverloadLayer {
    pub fn new(config: OverloadConfig, streaming: HashSet<String>) -> Self {
        Self {
            shared: Arc::new(Shared {
                unary: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
                streams: Arc::new(Semaphore::new(config.max_streams.max(1))),
                limiter: RateLimiter::new(config.rate_per_client, config.rate_burst),
                streaming,
                config,
            }),
        }
    }
}

impl<S> tower::Layer<S> for OverloadLayer {
    type Service = Overload<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Overload {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`OverloadLayer`] wraps around the server's routes.
#[derive(Clone)]
pub struct Overload<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// A response body holding a stream's slot until the stream ends.
pub struct Guarded<B> {
    inner: B,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<B: http_body::Body + Unpin> http_body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// tonic reports a message over the decoding limit as `OUT_OF_RANGE`; gRPC
/// says `RESOURCE_EXHAUSTED`.
fn too_large_is_resource_exhausted<B>(mut resp: http::Response<B>) -> http::Response<B> {
    if let Some(status) = Status::from_header_map(resp.headers())
        && status.code() == tonic::Code::OutOfRange
        && status.message().contains("message length too large")
    {
        let replaced = Status::resource_exhausted(status.message().to_owned());
        let _ = replaced.add_header(resp.headers_mut());
    }
    resp
}

impl<S, B, RB> tower::Service<http::Request<B>> for Overload<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
    RB: Send + 'static,
{
    type Response = http::Response<Guarded<RB>>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path();
        if shared.streaming.contains(path) {
            let Ok(permit) = shared.streams.clone().try_acquire_owned() else {
                tracing::warn!(path, "stream refused: too many open streams");
                return Box::pin(async {
                    Err(Status::resource_exhausted("too many open streams; retry later").into())
                });
            };
            let fut = inner.call(req);
            return Box::pin(async move {
                let resp = fut.await.map_err(Into::into)?;
                Ok(resp.map(|inner| Guarded {
                    inner,
                    _permit: Some(permit),
                }))
            });
        }
        let health = path.starts_with("/grpc.health.v1.Health/");
        if !health && !shared.limiter.allow(client_key(&req)) {
            return Box::pin(async {
                Err(Status::resource_exhausted(
                    "rate limit: too many calls from this client; retry later",
                )
                .into())
            });
        }
        let Ok(permit) = shared.unary.clone().try_acquire_owned() else {
            tracing::warn!(path, "call shed: too many calls in flight");
            return Box::pin(async {
                Err(Status::unavailable("server overloaded; retry later").into())
            });
        };
        let timeout = shared.config.request_timeout;
        let fut = inner.call(req);
        Box::pin(async move {
            let _permit = permit;
            match tokio::time::timeout(timeout, fut).await {
                Ok(resp) => {
                    let resp = too_large_is_resource_exhausted(resp.map_err(Into::into)?);
                    Ok(resp.map(|inner| Guarded {
                        inner,
                        _permit: None,
                    }))
                }
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "the server's request timeout of {} s passed",
                    timeout.as_secs_f64()
                ))
                .into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer as _, Service as _, ServiceExt as _};

    type Resp = http::Response<String>;

    fn key_of(auth: Option<&str>) -> ClientKey {
        let mut req = http::Request::new(());
        if let Some(a) = auth {
            req.headers_mut()
                .insert("authorization", a.parse().unwrap());
        }
        client_key(&req)
    }

    #[test]
    fn a_token_is_one_bucket_however_spelled_and_its_id_alone_is_not_enough() {
        let k = key_of(Some("Bearer lst_abc_secret"));
        assert!(matches!(k, ClientKey::Token(_)));
        assert_eq!(k, key_of(Some("bearer   lst_abc_secret ")));
        assert_ne!(k, key_of(Some("Bearer lst_abc_other")), "a forged secret");
        assert_ne!(k, key_of(Some("Bearer lst_xyz_secret")));
        assert!(matches!(
            key_of(Some("Bearer lsd_device")),
            ClientKey::Header(_)
        ));
        assert_eq!(key_of(None), ClientKey::Unknown);
    }

    fn layer(config: OverloadConfig) -> OverloadLayer {
        OverloadLayer::new(config, ["/s.S/Stream".to_owned()].into())
    }

    fn request(path: &str, token: Option<&str>) -> http::Request<()> {
        let mut r = http::Request::builder().uri(path).body(()).unwrap();
        if let Some(t) = token {
            r.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }

    /// A handler that takes `delay` to answer.
    fn slow(
        delay: Duration,
    ) -> impl tower::Service<
        http::Request<()>,
        Response = Resp,
        Error = BoxError,
        Future = BoxFuture<'static, Result<Resp, BoxError>>,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(
            move |_req: http::Request<()>| -> BoxFuture<'static, Result<Resp, BoxError>> {
                Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    Ok(http::Response::new(String::from("ok")))
                })
            },
        )
    }

    fn code(r: Result<http::Response<Guarded<String>>, BoxError>) -> tonic::Code {
        match r {
            Ok(_) => tonic::Code::Ok,
            Err(e) => Status::try_from_error(e).expect("a status").code(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_unary_call_times_out_with_deadline_exceeded() {
        let config = OverloadConfig {
            request_timeout: Duration::from_secs(1),
            ..OverloadConfig::default()
        };
        let mut svc = layer(config).layer(slow(Duration::from_secs(5)));
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(request("/s.S/Unary", None))
            .await;
        assert_eq!(code(r), tonic::Code::DeadlineExceeded);
    }

    #[tokio::test(start_paused = true)]
    async fn streams_are_exempt_from_the_request_timeout() {
        let config = OverloadConfig {
            request_timeout: Duration::from_secs(1),
            ..OverloadConfig::default()
        };
        let mut svc = layer(config).layer(slow(Duration::from_secs(5)));
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(request("/s.S/Stream", None))
            .await;
        assert_eq!(code(r), tonic::Code::Ok);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_beyond_the_in_flight_limit_are_shed_as_unavailable() {
        let config = OverloadConfig {
            max_in_flight: 2,
            ..OverloadConfig::default()
        };
        let svc = layer(config).layer(slow(Duration::from_secs(5)));
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = svc.clone();
            held.push(tokio::spawn(async move {
                s.ready()
                    .await
                    .unwrap()
                    .call(request("/s.S/Unary", None))
                    .await
            }));
        }
        tokio::task::yield_now().await;
        let mut s = svc.clone();
        let r = s
            .ready()
            .await
            .unwrap()
            .call(request("/s.S/Unary", None))
            .await;
        assert_eq!(code(r), tonic::Code::Unavailable);
        for h in held {
            assert_eq!(code(h.await.unwrap()), tonic::Code::Ok);
        }
        // The slots are free again.
        let r = s
            .ready()
            .await
            .unwrap()
            .call(request("/s.S/Unary", None))
            .await;
        assert_eq!(code(r), tonic::Code::Ok);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_holds_its_slot_until_its_body_is_dropped() {
        let config = OverloadConfig {
            max_streams: 1,
            ..OverloadConfig::default()
        };
        let mut svc = layer(config).layer(slow(Duration::ZERO));
        let open = svc
            .ready()
            .await
            .unwrap()
            .call(request("/s.S/Stream", None))
            .await
            .unwrap();
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(request("/s.S/Stream", None))
            .await;
        assert_eq!(code(r), tonic::Code::ResourceExhausted);
        drop(open);
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(request("/s.S/Stream", None))
            .await;
        assert_eq!(code(r), tonic::Code::Ok);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_over_its_rate_gets_resource_exhausted_and_others_do_not() {
        let config = OverloadConfig {
            rate_per_client: 10,
            rate_burst: 5,
            ..OverloadConfig::default()
        };
        let mut svc = layer(config).layer(slow(Duration::ZERO));
        for _ in 0..5 {
            let r = svc
                .ready()
                .await
                .unwrap()
                .call(request("/s.S/Unary", Some("a")))
                .await;
            assert_eq!(code(r), tonic::Code::Ok);
        }
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(request("/s.S/Unary", Some("a")))
            .await;
        assert_eq!(code(r), tonic::Code::ResourceExhausted);
        // Another token has its own bucket; health checks are never limited.
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(request("/s.S/Unary", Some("b")))
            .await;
        assert_eq!(code(r), tonic::Code::Ok);
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(request("/grpc.health.v1.Health/Check", Some("a")))
            .await;
        assert_eq!(code(r), tonic::Code::Ok);
        // A tenth of a second refills one call.
        tokio::time::advance(Duration::from_millis(100)).await;
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(request("/s.S/Unary", Some("a")))
            .await;
        assert_eq!(code(r), tonic::Code::Ok);
    }

    #[test]
    fn every_streaming_method_served_is_recognised() {
        let s = served_streaming_methods();
        for path in [
            "/lockstep.v1.AgentService/Connect",
            "/lockstep.v1.OperationService/WatchEvents",
            "/lockstep.v1.RolloutService/WatchRollout",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(s.contains(path), "{path} missing from {s:?}");
        }
        assert!(!s.contains("/lockstep.v1.CatalogService/CreateBlock"));
    }

    #[test]
    fn an_oversized_message_is_reported_as_resource_exhausted() {
        let resp: http::Response<()> = Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        )
        .into_http();
        let resp = too_large_is_resource_exhausted(resp);
        let status = Status::from_header_map(resp.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("too large"));
    }
}
