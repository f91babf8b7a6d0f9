//! Fuzzing the gRPC edge (proptest): arbitrary bytes, and valid requests
//! with random byte mutations, are decoded as each request type and handed
//! to the real handlers over an embedded store. No input may panic, and
//! every refusal is a client error — `INVALID_ARGUMENT` naming a field
//! (`blocks[1].version: ...`), `NOT_FOUND`, `ALREADY_EXISTS`,
//! `FAILED_PRECONDITION` — never `INTERNAL` or `UNKNOWN`. Generated
//! well-typed messages convert to the domain and back unchanged. Agent
//! streams of mutated messages never take the server down.
//!
//! Cases per property: `PROPTEST_CASES` (default 48; `.ci/run` runs a
//! larger bounded pass).

use std::sync::OnceLock;

use lockstep::app::events::Events;
use lockstep::background::scheduler::Wakeups;
use lockstep::edge::grpc::pb;
use lockstep::edge::grpc::pb::catalog_service_server::CatalogService;
use lockstep::edge::grpc::pb::device_service_server::DeviceService;
use lockstep::edge::grpc::pb::operation_service_server::OperationService;
use lockstep::edge::grpc::pb::rollout_service_server::RolloutService;
use lockstep::edge::grpc::pb::window_service_server::WindowService;
use lockstep::edge::grpc::{catalog, device, operation, rollout, window};
use lockstep::store::SqliteStore;
use proptest::prelude::*;
use prost::Message as _;
use tonic::{Code, Request, Status};

/// A request as `RequireToken` hands it on: carrying an admin principal
/// (the handlers are called in-process, without the token layer).
fn authed<T>(message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.extensions_mut().insert(lockstep::domain::Principal {
        token: lockstep::domain::TokenId::new("fuzz").unwrap(),
        name: "fuzz".into(),
        role: lockstep::domain::Role::Admin,
        scope: lockstep::domain::Scope::AllFleets,
    });
    req
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(48),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

struct Services {
    catalog: catalog::Catalog<SqliteStore>,
    devices: device::Devices<SqliteStore>,
    operations: operation::Operations<SqliteStore>,
    windows: window::Windows<SqliteStore>,
    rollouts: rollout::RolloutApi<SqliteStore>,
    _dir: tempfile::TempDir,
}

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

fn block_version(name: &str) -> pb::BlockVersion {
    pb::BlockVersion {
        block: name.into(),
        version: "1.0.0".into(),
        image_digest: digest('a'),
        config: Some(pb::BlockConfig {
            entrypoint: vec!["/bin/run".into()],
            command: vec!["--fast".into()],
            working_dir: Some("/app".into()),
            labels: [("tier".to_owned(), "edge".to_owned())].into(),
        }),
        env: [("LOG".to_owned(), "info".to_owned())].into(),
        depends_on: vec![],
        update_strategy: Some(pb::UpdateStrategy {
            strategy: Some(pb::update_strategy::Strategy::HandOver(
                pb::update_strategy::HandOver {
                    timeout_seconds: 30,
                },
            )),
        }),
    }
}

/// Services over one store, seeded with a fleet, two blocks, a release and
/// a device, so mutated requests reach past "not found".
fn services() -> &'static Services {
    static S: OnceLock<Services> = OnceLock::new();
    S.get_or_init(|| {
        rt().block_on(async {
            let (store, dir) = lockstep::testkit::sqlite_store().await;
            let wakeups = Wakeups::default();
            let events = Events::default();
            let s = Services {
                catalog: catalog::Catalog::new(store.clone()),
                devices: device::Devices::new(store.clone(), wakeups.clone()),
                operations: operation::Operations::new(
                    store.clone(),
                    wakeups.clone(),
                    events.clone(),
                ),
                windows: window::Windows::new(store.clone(), wakeups.clone()),
                rollouts: rollout::RolloutApi::new(lockstep::app::rollouts::Rollouts::new(
                    store.clone(),
                    wakeups.clone(),
                    events.clone(),
                    Default::default(),
                )),
                _dir: dir,
            };
            s.devices
                .create_fleet(authed(pb::CreateFleetRequest {
                    id: "site".into(),
                    name: "Site".into(),
                }))
                .await
                .unwrap();
            for b in ["a", "b"] {
                s.catalog
                    .create_block(authed(pb::CreateBlockRequest {
                        name: b.into(),
                        description: String::new(),
                    }))
                    .await
                    .unwrap();
                s.catalog
                    .create_block_version(authed(pb::CreateBlockVersionRequest {
                        block_version: Some(block_version(b)),
                    }))
                    .await
                    .unwrap();
            }
            s.catalog
                .create_release(authed(release_request()))
                .await
                .unwrap();
            s.devices
                .register_device(authed(pb::RegisterDeviceRequest {
                    id: "d1".into(),
                    fleet: "site".into(),
                    tags: vec!["north".into()],
                }))
                .await
                .unwrap();
            s
        })
    })
}

fn release_request() -> pb::CreateReleaseRequest {
    pb::CreateReleaseRequest {
        id: "r1".into(),
        fleet: "site".into(),
        blocks: ["a", "b"]
            .iter()
            .map(|b| pb::BlockRef {
                block: (*b).into(),
                version: "1.0.0".into(),
            })
            .collect(),
        env: [("SITE".to_owned(), "n".to_owned())].into(),
    }
}

/// Whether an INVALID_ARGUMENT message starts with a field path
/// (`vars[3].value:`, `recurrence:`).
fn names_a_field(message: &str) -> bool {
    let Some((field, _)) = message.split_once(": ") else {
        return false;
    };
    !field.is_empty()
        && field
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.[]".contains(c))
}

fn check(what: &str, result: Result<(), Status>) -> Result<(), TestCaseError> {
    let Err(status) = result else { return Ok(()) };
    match status.code() {
        Code::InvalidArgument => {
            prop_assert!(
                names_a_field(status.message()),
                "{what}: INVALID_ARGUMENT without a field: {:?}",
                status.message()
            );
        }
        Code::NotFound | Code::AlreadyExists | Code::FailedPrecondition => {}
        other => prop_assert!(false, "{what}: {other:?}: {}", status.message()),
    }
    Ok(())
}

/// A byte edit: (kind, position, byte).
type Edit = (u8, usize, u8);

fn mutate(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for &(kind, pos, byte) in edits {
        let len = bytes.len();
        match kind % 5 {
            0 if len > 0 => bytes[pos % len] ^= 1 << (byte % 8),
            1 if len > 0 => bytes[pos % len] = byte,
            2 => bytes.insert(pos % (len + 1), byte),
            3 if len > 0 => {
                bytes.remove(pos % len);
            }
            4 => {
                // Duplicates a slice, which repeats fields and nests lengths.
                let start = pos % (len + 1);
                let end = (start + usize::from(byte % 16)).min(len);
                let copy = bytes[start..end].to_vec();
                bytes.splice(start..start, copy);
            }
            _ => {}
        }
    }
    bytes
}

/// Random bytes, or `seed` encoded with a few random edits.
fn input(seed: impl prost::Message) -> impl Strategy<Value = Vec<u8>> {
    let encoded = seed.encode_to_vec();
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        3 => prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..8)
            .prop_map(move |edits| mutate(encoded.clone(), &edits)),
    ]
}

/// One property per RPC: decode the input as its request, call the handler.
macro_rules! fuzz_rpc {
    ($($name:ident: $req:ty = $seed:expr => |$s:ident, $r:ident| $call:expr;)*) => {
        proptest! {
            #![proptest_config(config())]
            $(
                #[test]
                fn $name(bytes in input($seed)) {
                    if let Ok($r) = <$req>::decode(bytes.as_slice()) {
                        let $s = services();
                        let result = rt().block_on(async { $call.await.map(drop) });
                        check(stringify!($name), result)?;
                    }
                }
            )*
        }
    };
}

fn scope() -> Option<pb::WindowScope> {
    Some(pb::WindowScope {
        scope: Some(pb::window_scope::Scope::Fleet("site".into())),
    })
}

fn strategy() -> pb::RolloutStrategy {
    pb::RolloutStrategy {
        canary: 1,
        batches: vec![pb::Amount {
            amount: Some(pb::amount::Amount::Percent(50)),
        }],
        max_in_flight: 2,
        soak_seconds: 0,
        success_threshold_percent: 90,
        error_threshold: None,
        on_error: "pause".into(),
    }
}

fuzz_rpc! {
    create_block: pb::CreateBlockRequest = pb::CreateBlockRequest { name: "c".into(), description: "a block".into() }
        => |s, r| s.catalog.create_block(authed(r));
    create_block_version: pb::CreateBlockVersionRequest = pb::CreateBlockVersionRequest { block_version: Some(block_version("a")) }
        => |s, r| s.catalog.create_block_version(authed(r));
    create_release: pb::CreateReleaseRequest = release_request()
        => |s, r| s.catalog.create_release(authed(r));
    diff_releases: pb::DiffReleasesRequest = pb::DiffReleasesRequest { from: "r1".into(), to: "r1".into() }
        => |s, r| s.catalog.diff_releases(authed(r));
    list_releases: pb::ListReleasesRequest = pb::ListReleasesRequest { fleet: "site".into(), page_size: 10, page_token: String::new() }
        => |s, r| s.catalog.list_releases(authed(r));
    create_fleet: pb::CreateFleetRequest = pb::CreateFleetRequest { id: "f2".into(), name: "F".into() }
        => |s, r| s.devices.create_fleet(authed(r));
    register_device: pb::RegisterDeviceRequest = pb::RegisterDeviceRequest { id: "d2".into(), fleet: "site".into(), tags: vec!["north".into()] }
        => |s, r| s.devices.register_device(authed(r));
    list_devices: pb::ListDevicesRequest = pb::ListDevicesRequest { fleet: "site".into(), tag: "north".into(), status: 1, page_size: 5, page_token: String::new() }
        => |s, r| s.devices.list_devices(authed(r));
    set_env: pb::SetEnvRequest = pb::SetEnvRequest {
            owner: Some(pb::EnvOwner { owner: Some(pb::env_owner::Owner::Device("d1".into())) }),
            vars: vec![pb::EnvVar { name: "GAIN".into(), value: "0.7".into(), blocks: vec!["a".into()] }],
        }
        => |s, r| s.devices.set_env(authed(r));
    unset_env: pb::UnsetEnvRequest = pb::UnsetEnvRequest {
            owner: Some(pb::EnvOwner { owner: Some(pb::env_owner::Owner::Fleet("site".into())) }),
            keys: vec![pb::EnvVarKey { name: "GAIN".into(), blocks: vec!["a".into()] }],
        }
        => |s, r| s.devices.unset_env(authed(r));
    get_device_state: pb::GetDeviceStateRequest = pb::GetDeviceStateRequest { id: "d1".into() }
        => |s, r| s.devices.get_device_state(authed(r));
    create_operation: pb::CreateOperationRequest = pb::CreateOperationRequest {
            device: "d1".into(),
            spec: Some(pb::OperationSpec { kind: Some(pb::operation_spec::Kind::AssignRelease("r1".into())) }),
            force: Some(pb::Force { blocks: vec!["a".into()], reason: "urgent".into() }),
            actor: "me".into(),
        }
        => |s, r| s.operations.create_operation(authed(r));
    cancel_operation: pb::CancelOperationRequest = pb::CancelOperationRequest { id: 1, actor: "me".into(), reason: "no".into() }
        => |s, r| s.operations.cancel_operation(authed(r));
    create_window: pb::CreateWindowRequest = pb::CreateWindowRequest {
            scope: scope(),
            rule: Some(pb::create_window_request::Rule::Recurrence(pb::RecurrenceRule {
                rrule: "DTSTART;TZID=Europe/Amsterdam:20260104T020000\nRRULE:FREQ=MONTHLY;BYDAY=1SU".into(),
                duration_minutes: 180,
            })),
        }
        => |s, r| s.windows.create_window(authed(r));
    create_weekly_window: pb::CreateWindowRequest = pb::CreateWindowRequest {
            scope: scope(),
            rule: Some(pb::create_window_request::Rule::Weekly(pb::WeeklyRule {
                days: vec![2, 4],
                start_local: "02:30".into(),
                duration_minutes: 120,
                time_zone: "Europe/Amsterdam".into(),
            })),
        }
        => |s, r| s.windows.create_window(authed(r));
    next_windows: pb::NextWindowsRequest = pb::NextWindowsRequest { device: "d1".into(), count: 5 }
        => |s, r| s.windows.next_windows(authed(r));
    set_fleet_policy: pb::SetFleetPolicyRequest = pb::SetFleetPolicyRequest {
            policy: Some(pb::FleetPolicy {
                fleet: "site".into(),
                needs_window: vec!["reboot".into()],
                max_deferral_seconds: 3600,
                on_deferral_expiry: "force".into(),
                needs_approval: vec!["os_update".into()],
                release_mode: "partial".into(),
                on_missed_occurrence: "next".into(),
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["release_mode".into(), "needs_window".into()],
            }),
        }
        => |s, r| s.windows.set_fleet_policy(authed(r));
    approve: pb::ApproveRequest = pb::ApproveRequest {
            approval_id: 1,
            occurrence: Some(pb::Window { start_unix_ms: 1, end_unix_ms: 2 }),
            actor: "customer".into(),
        }
        => |s, r| s.windows.approve(authed(r));
    decline: pb::DeclineRequest = pb::DeclineRequest { approval_id: 1, message: "not now".into(), actor: "customer".into() }
        => |s, r| s.windows.decline(authed(r));
    create_rollout: pb::CreateRolloutRequest = pb::CreateRolloutRequest {
            fleet: "site".into(),
            tag: "north".into(),
            target: Some(pb::create_rollout_request::Target::Release("r1".into())),
            strategy: Some(strategy()),
            supersede: true,
            actor: "me".into(),
            seed: 7,
        }
        => |s, r| s.rollouts.create_rollout(authed(r));
    pause_rollout: pb::RolloutActionRequest = pb::RolloutActionRequest { id: 1, actor: "me".into(), reason: "look".into() }
        => |s, r| s.rollouts.pause_rollout(authed(r));
}

// ------------------------------------------------ well-typed messages

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_-]{0,12}",
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(-[a-z0-9.]{1,6})?",
        ".{0,24}",
        Just(String::new()),
    ]
}

fn pb_block_version() -> impl Strategy<Value = pb::BlockVersion> {
    (
        text(),
        text(),
        prop_oneof![Just(digest('a')), text()],
        prop::collection::vec(text(), 0..4),
        prop::collection::btree_map("[A-Z_][A-Z0-9_]{0,6}|.{0,4}", text(), 0..4),
        prop::collection::vec((text(), any::<bool>()), 0..3),
        prop::option::of(0u32..5000),
    )
        .prop_map(
            |(block, version, image_digest, command, env, deps, hand_over)| pb::BlockVersion {
                block,
                version,
                image_digest,
                config: Some(pb::BlockConfig {
                    entrypoint: vec![],
                    command,
                    working_dir: None,
                    labels: Default::default(),
                }),
                env,
                depends_on: deps
                    .into_iter()
                    .map(|(block, restart)| pb::Dependency { block, restart })
                    .collect(),
                update_strategy: hand_over.map(|timeout_seconds| pb::UpdateStrategy {
                    strategy: Some(pb::update_strategy::Strategy::HandOver(
                        pb::update_strategy::HandOver { timeout_seconds },
                    )),
                }),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn block_versions_convert_or_name_the_field_and_round_trip(m in pb_block_version()) {
        match lockstep::domain::BlockVersion::try_from(m) {
            Ok(bv) => {
                let back = pb::BlockVersion::from(&bv);
                let again = lockstep::domain::BlockVersion::try_from(back);
                prop_assert_eq!(again.as_ref(), Ok(&bv));
            }
            Err(e) => prop_assert!(
                names_a_field(&e.to_string()),
                "no field in {:?}",
                e.to_string()
            ),
        }
    }

    #[test]
    fn releases_convert_or_name_the_field_and_round_trip(
        id in text(),
        fleet in text(),
        blocks in prop::collection::vec(pb_block_version(), 0..4),
    ) {
        let m = pb::Release { id, fleet, blocks, env: Default::default() };
        match lockstep::domain::Release::try_from(m) {
            Ok(r) => {
                let back = pb::Release::from(&r);
                let again = lockstep::domain::Release::try_from(back.clone()).unwrap();
                prop_assert_eq!(pb::Release::from(&again), back);
            }
            Err(e) => prop_assert!(names_a_field(&e.to_string()), "no field in {:?}", e.to_string()),
        }
    }
}

// ---------------------------------------------------------- agent streams

/// A real server (in this process) with device `d1` registered; its
/// address and d1's credential.
fn agent_server() -> &'static (std::net::SocketAddr, String) {
    static S: OnceLock<(std::net::SocketAddr, String)> = OnceLock::new();
    S.get_or_init(|| {
        rt().block_on(async {
            let (store, dir) = lockstep::testkit::sqlite_store().await;
            let config = lockstep::edge::server::ServeConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                dashboard: None,
                lock_history_retention: std::time::Duration::from_secs(3600),
                tls: None,
                insecure_plaintext: false,
                overload: lockstep::edge::overload::OverloadConfig {
                    rate_per_client: 0,
                    ..Default::default()
                },
                bootstrap_token_file: dir.path().join("admin.token"),
                metrics: None,
                replica: None,
                event_retention: std::time::Duration::from_secs(3600),
                sweep_interval: std::time::Duration::from_secs(5),
            };
            let token_file = dir.path().join("admin.token");
            let bound = lockstep::edge::server::Bound::bind(config).await.unwrap();
            let addr = bound.local_addr();
            tokio::spawn(async move {
                let _dir = dir;
                let _ = bound.serve(store, std::future::pending()).await;
            });
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            // The server writes its bootstrap admin token as it starts.
            let token = loop {
                match lockstep::app::tokens::read_token_file(&token_file) {
                    Ok(t) if !t.is_empty() => break t,
                    _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                }
            };
            let bearer = lockstep::cli::Bearer::new(&token).unwrap();
            let mut devices =
                pb::device_service_client::DeviceServiceClient::with_interceptor(channel, bearer);
            devices
                .create_fleet(pb::CreateFleetRequest {
                    id: "site".into(),
                    name: String::new(),
                })
                .await
                .unwrap();
            let credential = devices
                .register_device(pb::RegisterDeviceRequest {
                    id: "d1".into(),
                    fleet: "site".into(),
                    tags: vec![],
                })
                .await
                .unwrap()
                .into_inner()
                .credential;
            (addr, credential)
        })
    })
}

fn agent_seeds() -> Vec<pb::AgentMessage> {
    use pb::agent_message::Msg;
    vec![
        pb::AgentMessage {
            msg: Some(Msg::LockReport(pb::LockReport {
                seq: 9,
                locks: vec![pb::BlockLock {
                    block: "a".into(),
                    held: true,
                    generation: 3,
                    since_unix_ms: 1000,
                }],
            })),
        },
        pb::AgentMessage {
            msg: Some(Msg::State(pb::StateReport {
                current_release: "r1".into(),
                os_version: "os-1".into(),
                blocks: vec![pb::ReportedBlock {
                    block: "a".into(),
                    version: "1.0.0".into(),
                    env_fingerprint: "0".repeat(64),
                }],
            })),
        },
        pb::AgentMessage {
            msg: Some(Msg::Ack(pb::IntentAck {
                intent_seq: 1,
                block: "a".into(),
                kind: Some(pb::intent_ack::Kind::Deferred(pb::intent_ack::Deferred {
                    until_unix_ms: 5000,
                    message: "busy".into(),
                })),
            })),
        },
        pb::AgentMessage {
            msg: Some(Msg::Progress(pb::Progress {
                intent_seq: 1,
                phase: "pulling".into(),
            })),
        },
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(24), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn agent_streams_of_mutated_messages_never_take_the_server_down(
        picks in prop::collection::vec((0usize..4, prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..6)), 1..6),
    ) {
        let (addr, credential) = agent_server();
        let seeds = agent_seeds();
        let messages: Vec<pb::AgentMessage> = picks
            .iter()
            .filter_map(|(i, edits)| {
                pb::AgentMessage::decode(mutate(seeds[*i].encode_to_vec(), edits).as_slice()).ok()
            })
            .collect();
        let outcome: Result<(), Status> = rt().block_on(async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let hello = pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
                    agent_version: "fuzz".into(),
                    state: None,
                    locks: None,
                    last_intent_seq: 0,
                    agent_epoch: String::new(),
                })),
            };
            let outbound = tokio_stream::iter(std::iter::once(hello).chain(messages));
            let mut req = Request::new(outbound);
            req.metadata_mut().insert("x-lockstep-device", "d1".parse().unwrap());
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {credential}").parse().unwrap(),
            );
            let mut inbound = pb::agent_service_client::AgentServiceClient::new(channel.clone())
                .connect(req)
                .await?
                .into_inner();
            // Read until the server ends the stream or a quiet second passes.
            let result = loop {
                match tokio::time::timeout(std::time::Duration::from_secs(1), inbound.message()).await {
                    Ok(Ok(Some(_))) => continue,
                    Ok(Ok(None)) | Err(_) => break Ok(()),
                    Ok(Err(status)) => break Err(status),
                }
            };
            let health = tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                .await;
            assert!(health.is_ok(), "the server is unhealthy after a fuzzed stream");
            result
        });
        match outcome {
            Ok(()) => {}
            Err(s) => prop_assert!(
                matches!(s.code(), Code::InvalidArgument | Code::Aborted | Code::ResourceExhausted | Code::Cancelled),
                "{:?}: {}",
                s.code(),
                s.message()
            ),
        }
    }
}
