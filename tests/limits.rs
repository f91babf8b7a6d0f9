//! Hostile input and overload against the real `lockstep serve`: an
//! oversized message is `RESOURCE_EXHAUSTED`; fields over their limits are
//! `INVALID_ARGUMENT` naming the field; a flood of calls from one client is
//! rate-limited while the server stays healthy and other clients are served;
//! an agent stream that sends faster than its rate is ended with
//! `RESOURCE_EXHAUSTED`; a huge bad value is refused with a short message
//! that a standard client accepts. Every loop is bounded and talks to
//! loopback only.

mod support;

use lockstep::edge::grpc::pb;
use lockstep::edge::grpc::pb::agent_service_client::AgentServiceClient;
use lockstep::edge::grpc::pb::catalog_service_client::CatalogServiceClient;
use lockstep::edge::grpc::pb::device_service_client::DeviceServiceClient;
use lockstep::edge::grpc::pb::operation_service_client::OperationServiceClient;
use lockstep::edge::grpc::pb::token_service_client::TokenServiceClient;
use lockstep::edge::grpc::pb::window_service_client::WindowServiceClient;
use lockstep::edge::limits;
use support::Server;
use tonic::Code;

async fn healthy(server: &Server) -> bool {
    tonic_health::pb::health_client::HealthClient::new(server.channel().await)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok_and(|r| {
            r.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        })
}

#[tokio::test]
async fn an_oversized_message_is_resource_exhausted_and_the_server_stays_up() {
    let server = Server::start(&[]);
    let err = CatalogServiceClient::new(server.channel().await)
        .create_block(pb::CreateBlockRequest {
            name: "big".into(),
            description: "x".repeat(limits::MAX_MESSAGE_BYTES + 1),
        })
        .await
        .expect_err("a message over the limit");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(healthy(&server).await);
}

#[tokio::test]
async fn too_many_env_vars_are_invalid_argument_naming_vars() {
    let server = Server::start(&[]);
    let err = DeviceServiceClient::new(server.channel().await)
        .set_env(pb::SetEnvRequest {
            owner: Some(pb::EnvOwner {
                owner: Some(pb::env_owner::Owner::Fleet("site".into())),
            }),
            vars: (0..=limits::MAX_ENV_VARS)
                .map(|i| pb::EnvVar {
                    name: format!("V{i}"),
                    value: String::new(),
                    blocks: vec![],
                })
                .collect(),
        })
        .await
        .expect_err("too many variables");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("vars:"), "{}", err.message());
}

/// Checks that `result` is INVALID_ARGUMENT whose message starts with `field:`.
fn names<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>, field: &str) {
    let err = result.expect_err(what);
    assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    assert!(
        err.message().starts_with(&format!("{field}:")),
        "{what}: expected the field {field}, got {:?}",
        err.message()
    );
}

/// `INVALID_ARGUMENT` naming `field`, in a message under 1 KiB that shows
/// only a prefix of the 200,000-byte value.
fn short<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>, field: &str) {
    let err = result.expect_err(what);
    assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    let msg = err.message();
    assert!(msg.len() < 1024, "{what}: {} bytes: {msg:.200}", msg.len());
    assert!(
        msg.starts_with(&format!("{field}:")),
        "{what}: expected the field {field}, got {msg:?}"
    );
}

#[tokio::test]
async fn a_huge_bad_value_is_invalid_argument_with_a_short_message_naming_the_field() {
    let server = Server::start(&[]);
    // The stock tonic client, with its default metadata limits.
    let channel = server.channel().await;
    let mut catalog = CatalogServiceClient::new(channel.clone());
    let mut devices = DeviceServiceClient::new(channel.clone());
    let mut ops = OperationServiceClient::new(channel.clone());
    let mut windows = WindowServiceClient::new(channel.clone());
    let mut tokens = TokenServiceClient::new(channel);
    let huge = "x".repeat(200_000);
    devices
        .create_fleet(pb::CreateFleetRequest {
            id: "site".into(),
            name: "Site".into(),
        })
        .await
        .unwrap();
    let fleet_env = |name: &str, value: &str| pb::SetEnvRequest {
        owner: Some(pb::EnvOwner {
            owner: Some(pb::env_owner::Owner::Fleet("site".into())),
        }),
        vars: vec![pb::EnvVar {
            name: name.into(),
            value: value.into(),
            blocks: vec![],
        }],
    };

    short(
        "block name",
        catalog
            .create_block(pb::CreateBlockRequest {
                name: huge.clone(),
                description: String::new(),
            })
            .await,
        "name",
    );
    short(
        "device id",
        devices
            .register_device(pb::RegisterDeviceRequest {
                id: huge.clone(),
                fleet: "site".into(),
                tags: vec![],
            })
            .await,
        "id",
    );
    short(
        "fleet id",
        devices
            .create_fleet(pb::CreateFleetRequest {
                id: huge.clone(),
                name: "n".into(),
            })
            .await,
        "id",
    );
    short(
        "fleet name",
        devices
            .create_fleet(pb::CreateFleetRequest {
                id: "other".into(),
                name: huge.clone(),
            })
            .await,
        "name",
    );
    short(
        "env key",
        devices.set_env(fleet_env(&huge, "v")).await,
        "vars[0].name",
    );
    short(
        "env value",
        devices.set_env(fleet_env("BIG", &huge)).await,
        "vars[0].value",
    );
    short(
        "token id",
        tokens
            .revoke_token(pb::RevokeTokenRequest {
                id: huge.clone(),
                reason: String::new(),
            })
            .await,
        "id",
    );
    short(
        "token role",
        tokens
            .create_token(pb::CreateTokenRequest {
                name: "ci".into(),
                role: huge.clone(),
                fleets: vec![],
                expires_in_seconds: 0,
            })
            .await,
        "role",
    );
    short(
        "operation device",
        ops.create_operation(pb::CreateOperationRequest {
            device: huge.clone(),
            spec: Some(pb::OperationSpec {
                kind: Some(pb::operation_spec::Kind::Reboot(
                    pb::operation_spec::Empty {},
                )),
            }),
            force: None,
            actor: String::new(),
        })
        .await,
        "device",
    );
    short(
        "policy kind",
        windows
            .set_fleet_policy(pb::SetFleetPolicyRequest {
                policy: Some(pb::FleetPolicy {
                    fleet: "site".into(),
                    needs_window: vec![huge.clone()],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await,
        "policy.needs_window[0]",
    );
    short(
        "window device",
        windows
            .create_window(pb::CreateWindowRequest {
                scope: Some(pb::WindowScope {
                    scope: Some(pb::window_scope::Scope::Device(huge.clone())),
                }),
                rule: None,
            })
            .await,
        "scope.device",
    );
    assert!(healthy(&server).await);
}

#[tokio::test]
async fn fields_over_their_limits_are_invalid_argument_naming_the_field() {
    let server = Server::start(&[]);
    let channel = server.channel().await;
    let mut catalog = CatalogServiceClient::new(channel.clone());
    let mut devices = DeviceServiceClient::new(channel.clone());
    let mut ops = OperationServiceClient::new(channel.clone());
    let mut windows = WindowServiceClient::new(channel);
    let text = "x".repeat(limits::MAX_TEXT_BYTES + 1);
    let actor = "a".repeat(limits::MAX_ACTOR_BYTES + 1);

    names(
        "description",
        catalog
            .create_block(pb::CreateBlockRequest {
                name: "a".into(),
                description: "d".repeat(limits::MAX_DESCRIPTION_BYTES + 1),
            })
            .await,
        "description",
    );
    names(
        "release blocks",
        catalog
            .create_release(pb::CreateReleaseRequest {
                id: "r1".into(),
                fleet: "site".into(),
                blocks: (0..=limits::MAX_RELEASE_BLOCKS)
                    .map(|i| pb::BlockRef {
                        block: format!("b{i}"),
                        version: "1.0.0".into(),
                    })
                    .collect(),
                env: Default::default(),
            })
            .await,
        "blocks",
    );
    names(
        "env value",
        devices
            .set_env(pb::SetEnvRequest {
                owner: Some(pb::EnvOwner {
                    owner: Some(pb::env_owner::Owner::Fleet("site".into())),
                }),
                vars: vec![pb::EnvVar {
                    name: "BIG".into(),
                    value: "v".repeat(limits::MAX_ENV_VALUE_BYTES + 1),
                    blocks: vec![],
                }],
            })
            .await,
        "vars[0].value",
    );
    names(
        "tags",
        devices
            .register_device(pb::RegisterDeviceRequest {
                id: "d1".into(),
                fleet: "site".into(),
                tags: (0..=limits::MAX_TAGS).map(|i| format!("t{i}")).collect(),
            })
            .await,
        "tags",
    );
    names(
        "force reason",
        ops.create_operation(pb::CreateOperationRequest {
            device: "d1".into(),
            spec: Some(pb::OperationSpec {
                kind: Some(pb::operation_spec::Kind::Reboot(
                    pb::operation_spec::Empty {},
                )),
            }),
            force: Some(pb::Force {
                blocks: vec!["a".into()],
                reason: text.clone(),
            }),
            actor: String::new(),
        })
        .await,
        "force.reason",
    );
    names(
        "actor",
        ops.create_operation(pb::CreateOperationRequest {
            device: "d1".into(),
            spec: Some(pb::OperationSpec {
                kind: Some(pb::operation_spec::Kind::Reboot(
                    pb::operation_spec::Empty {},
                )),
            }),
            force: None,
            actor: actor.clone(),
        })
        .await,
        "actor",
    );
    names(
        "cancel reason",
        ops.cancel_operation(pb::CancelOperationRequest {
            id: 1,
            actor: "me".into(),
            reason: text.clone(),
        })
        .await,
        "reason",
    );
    names(
        "recurrence",
        windows
            .create_window(pb::CreateWindowRequest {
                scope: Some(pb::WindowScope {
                    scope: Some(pb::window_scope::Scope::Fleet("site".into())),
                }),
                rule: Some(pb::create_window_request::Rule::Recurrence(
                    pb::RecurrenceRule {
                        rrule: format!(
                            "DTSTART:20260101T000000Z\nRRULE:FREQ=DAILY;{}",
                            "X".repeat(limits::MAX_RECURRENCE_BYTES)
                        ),
                        duration_minutes: 60,
                    },
                )),
            })
            .await,
        "recurrence.rrule",
    );
    names(
        "recurrence lines",
        windows
            .create_window(pb::CreateWindowRequest {
                scope: Some(pb::WindowScope {
                    scope: Some(pb::window_scope::Scope::Fleet("site".into())),
                }),
                rule: Some(pb::create_window_request::Rule::Recurrence(
                    pb::RecurrenceRule {
                        rrule: "RRULE:FREQ=DAILY\n".repeat(limits::MAX_RECURRENCE_LINES + 1),
                        duration_minutes: 60,
                    },
                )),
            })
            .await,
        "recurrence.rrule",
    );
    names(
        "weekly days",
        windows
            .create_window(pb::CreateWindowRequest {
                scope: Some(pb::WindowScope {
                    scope: Some(pb::window_scope::Scope::Fleet("site".into())),
                }),
                rule: Some(pb::create_window_request::Rule::Weekly(pb::WeeklyRule {
                    days: vec![1; limits::MAX_WEEK_DAYS + 1],
                    start_local: "02:00".into(),
                    duration_minutes: 60,
                    time_zone: "UTC".into(),
                })),
            })
            .await,
        "weekly.days",
    );
    names(
        "decline message",
        windows
            .decline(pb::DeclineRequest {
                approval_id: 1,
                message: text.clone(),
                actor: "me".into(),
            })
            .await,
        "message",
    );
    names(
        "approve actor",
        windows
            .approve(pb::ApproveRequest {
                approval_id: 1,
                occurrence: None,
                actor,
            })
            .await,
        "actor",
    );
    assert!(healthy(&server).await);
}

#[tokio::test]
async fn a_flood_from_one_client_is_rate_limited_while_the_server_stays_healthy() {
    let server = Server::start(&["--rate-limit", "5"]);
    let mut devices = DeviceServiceClient::new(server.channel().await);
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..100 {
        match devices.list_fleets(pb::ListFleetsRequest {}).await {
            Ok(_) => ok += 1,
            Err(e) if e.code() == Code::ResourceExhausted => limited += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(ok >= 10, "the burst is served: {ok} ok, {limited} limited");
    assert!(
        limited > 0,
        "a flood is limited: {ok} ok, {limited} limited"
    );
    // Health checks are never limited, and another token has its own budget:
    // its call passes the rate limit and reaches the token check (which
    // refuses a token that does not exist).
    assert!(healthy(&server).await);
    let mut req = tonic::Request::new(pb::ListFleetsRequest {});
    req.metadata_mut().insert(
        "authorization",
        "Bearer lst_another_secret".parse().unwrap(),
    );
    let err = devices
        .list_fleets(req)
        .await
        .expect_err("an unknown token is refused");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
}

#[tokio::test]
async fn an_agent_stream_over_its_message_rate_is_ended_with_resource_exhausted() {
    let server = Server::start(&[]);
    let channel = server.channel().await;
    let mut devices = DeviceServiceClient::new(channel.clone());
    devices
        .create_fleet(pb::CreateFleetRequest {
            id: "site".into(),
            name: String::new(),
        })
        .await
        .unwrap();
    let credential = devices
        .register_device(pb::RegisterDeviceRequest {
            id: "dev-1".into(),
            fleet: "site".into(),
            tags: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .credential;
    let hello = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            agent_version: "test".into(),
            state: None,
            locks: Some(pb::LockReport {
                seq: 1,
                locks: vec![],
            }),
            last_intent_seq: 0,
            agent_epoch: String::new(),
        })),
    };
    // Stale lock reports cost the server nothing but a comparison: the
    // rate limit is what stops them.
    let flood = (0..limits::AGENT_MESSAGE_BURST as usize * 4).map(|_| pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::LockReport(pb::LockReport {
            seq: 0,
            locks: vec![],
        })),
    });
    let outbound = tokio_stream::iter(std::iter::once(hello).chain(flood));
    let mut req = tonic::Request::new(outbound);
    req.metadata_mut()
        .insert("x-lockstep-device", "dev-1".parse().unwrap());
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    let mut inbound = AgentServiceClient::new(channel)
        .connect(req)
        .await
        .expect("stream accepted")
        .into_inner();
    let ended = loop {
        match inbound.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    assert!(healthy(&server).await);
}

#[tokio::test]
async fn the_dashboard_refuses_a_body_over_its_limit() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = Server::start(&["--dashboard-listen", "127.0.0.1:0"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let addr = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = server.log.recv_timeout(left).expect("dashboard url logged");
        if let Some(url) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("url=http://"))
        {
            break url.trim_end_matches('/').to_owned();
        }
    };
    let body = format!(
        r#"{{"message":"{}","actor":"me"}}"#,
        "m".repeat(limits::MAX_DASHBOARD_BODY_BYTES)
    );
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/approvals/1/decline HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        server.token(),
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and close before reading it all.
    let _ = tcp.write_all(body.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tcp.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
}
