//! Identities and roles end to end, against the real `lockstep serve`: a
//! token scoped to fleet X can neither list, read nor approve anything of
//! fleet Y; a viewer reads and never changes; a device credential opens
//! only `AgentService`; revoked and expired tokens are `UNAUTHENTICATED`;
//! the first start writes a bootstrap admin token (0600) and the database
//! keeps only its hash; tokens are made, listed and revoked with the CLI;
//! the audit log names the token and is read through the API and the CLI,
//! each token seeing its own fleets.

mod support;

use std::future::Future;
use std::io::Read as _;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::time::Duration;

use lockstep::edge::grpc::pb;
use pb::audit_service_client::AuditServiceClient;
use pb::catalog_service_client::CatalogServiceClient;
use pb::device_service_client::DeviceServiceClient;
use pb::operation_service_client::OperationServiceClient;
use pb::rollout_service_client::RolloutServiceClient;
use pb::token_service_client::TokenServiceClient;
use pb::window_service_client::WindowServiceClient;
use serde_json::Value;
use support::{BIN, Chan, Server};
use tonic::{Code, Status};

/// Every client, on one channel (one token).
#[derive(Clone)]
struct Api {
    cat: CatalogServiceClient<Chan>,
    devs: DeviceServiceClient<Chan>,
    ops: OperationServiceClient<Chan>,
    win: WindowServiceClient<Chan>,
    roll: RolloutServiceClient<Chan>,
    tok: TokenServiceClient<Chan>,
    aud: AuditServiceClient<Chan>,
}

impl Api {
    async fn as_token(server: &Server, token: &str) -> Api {
        let ch = server.channel_as(token).await;
        Api {
            cat: CatalogServiceClient::new(ch.clone()),
            devs: DeviceServiceClient::new(ch.clone()),
            ops: OperationServiceClient::new(ch.clone()),
            win: WindowServiceClient::new(ch.clone()),
            roll: RolloutServiceClient::new(ch.clone()),
            tok: TokenServiceClient::new(ch.clone()),
            aud: AuditServiceClient::new(ch),
        }
    }
}

/// One pending call, its answer reduced to success or the status.
type Pending = Pin<Box<dyn Future<Output = Result<(), Status>>>>;

/// `(name, call)`: calls `$client.$method($req)` on a clone of the client.
macro_rules! rpc {
    ($client:expr, $method:ident, $req:expr) => {{
        let mut c = $client.clone();
        let req = $req;
        (
            stringify!($method),
            Box::pin(async move { c.$method(req).await.map(|_| ()) }) as Pending,
        )
    }};
}

/// Every call must fail with `code`, its message containing `needle`.
async fn all_fail(calls: Vec<(&'static str, Pending)>, code: Code, needle: &str) {
    assert!(!calls.is_empty());
    for (name, call) in calls {
        match call.await {
            Ok(()) => panic!("{name} succeeded; expected {code:?}"),
            Err(e) => {
                assert_eq!(e.code(), code, "{name}: {e:?}");
                assert!(e.message().contains(needle), "{name}: {:?}", e.message());
            }
        }
    }
}

/// Every call must succeed.
async fn all_succeed(calls: Vec<(&'static str, Pending)>) {
    for (name, call) in calls {
        if let Err(e) = call.await {
            panic!("{name} failed: {e:?}");
        }
    }
}

fn env_owner_fleet(f: &str) -> Option<pb::EnvOwner> {
    Some(pb::EnvOwner {
        owner: Some(pb::env_owner::Owner::Fleet(f.into())),
    })
}

fn reboot() -> Option<pb::OperationSpec> {
    Some(pb::OperationSpec {
        kind: Some(pb::operation_spec::Kind::Reboot(
            pb::operation_spec::Empty {},
        )),
    })
}

fn one_off_window(scope: pb::window_scope::Scope) -> pb::CreateWindowRequest {
    let start = lockstep::clock::now().0 + 3_600_000;
    pb::CreateWindowRequest {
        scope: Some(pb::WindowScope { scope: Some(scope) }),
        rule: Some(pb::create_window_request::Rule::OneOff(pb::OneOffRule {
            start_unix_ms: start,
            end_unix_ms: start + 3_600_000,
        })),
    }
}

/// Two fleets seen through the admin token: `site-x` and `site-y`, each
/// with a device (`dx`, `dy`), a release (`rx`, `ry`), a window and env;
/// on `site-y` an operation, a rollout and an open approval.
struct World {
    server: Server,
    admin: Api,
    op_y: u64,
    rollout_y: u64,
    approval_y: u64,
    window_y: u64,
    credential_y: String,
}

async fn world() -> World {
    let server = Server::start(&[]);
    let admin = Api::as_token(&server, &server.token()).await;
    let mut a = admin.clone();
    a.cat
        .create_block(pb::CreateBlockRequest {
            name: "app".into(),
            description: String::new(),
        })
        .await
        .unwrap();
    a.cat
        .create_block_version(pb::CreateBlockVersionRequest {
            block_version: Some(pb::BlockVersion {
                block: "app".into(),
                version: "1.0.0".into(),
                image_digest: format!("sha256:{}", "a".repeat(64)),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let mut credential_y = String::new();
    for f in ["x", "y"] {
        let fleet = format!("site-{f}");
        a.devs
            .create_fleet(pb::CreateFleetRequest {
                id: fleet.clone(),
                name: String::new(),
            })
            .await
            .unwrap();
        a.cat
            .create_release(pb::CreateReleaseRequest {
                id: format!("r{f}"),
                fleet: fleet.clone(),
                blocks: vec![pb::BlockRef {
                    block: "app".into(),
                    version: "1.0.0".into(),
                }],
                env: Default::default(),
            })
            .await
            .unwrap();
        let reg = a
            .devs
            .register_device(pb::RegisterDeviceRequest {
                id: format!("d{f}"),
                fleet: fleet.clone(),
                tags: vec!["everywhere".into()],
            })
            .await
            .unwrap()
            .into_inner();
        if f == "y" {
            credential_y = reg.credential;
        }
        a.devs
            .set_env(pb::SetEnvRequest {
                owner: env_owner_fleet(&fleet),
                vars: vec![pb::EnvVar {
                    name: "SITE".into(),
                    value: f.into(),
                    blocks: vec![],
                }],
            })
            .await
            .unwrap();
    }
    let window_y = a
        .win
        .create_window(one_off_window(pb::window_scope::Scope::Fleet(
            "site-y".into(),
        )))
        .await
        .unwrap()
        .into_inner()
        .window
        .unwrap()
        .id;
    a.win
        .create_window(one_off_window(pb::window_scope::Scope::Fleet(
            "site-x".into(),
        )))
        .await
        .unwrap();
    a.win
        .create_window(one_off_window(pb::window_scope::Scope::Tag(
            "everywhere".into(),
        )))
        .await
        .unwrap();
    let op_y = a
        .ops
        .create_operation(pb::CreateOperationRequest {
            device: "dy".into(),
            spec: Some(pb::OperationSpec {
                kind: Some(pb::operation_spec::Kind::OsUpdate("2.0".into())),
            }),
            force: None,
            actor: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap()
        .id;
    // dy never connects, so the scheduler leaves it be: open its approval
    // straight in the database.
    let store = lockstep::store::SqliteStore::open(
        server.data_dir.as_ref().unwrap().path(),
        &lockstep::store::PoolOptions::default(),
    )
    .await
    .unwrap();
    use lockstep::store::Store as _;
    let approval_y = store
        .create_approval(
            lockstep::domain::OperationId(op_y as i64),
            lockstep::clock::now(),
        )
        .await
        .unwrap()
        .id as u64;
    let rollout_y = a
        .roll
        .create_rollout(pb::CreateRolloutRequest {
            fleet: "site-y".into(),
            target: Some(pb::create_rollout_request::Target::Release("ry".into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .rollout
        .unwrap()
        .id;
    World {
        server,
        admin,
        op_y,
        rollout_y,
        approval_y,
        window_y,
        credential_y,
    }
}

/// A new token through `TokenService`, as the admin.
async fn token(w: &World, role: &str, fleets: &[&str], name: &str) -> String {
    w.admin
        .tok
        .clone()
        .create_token(pb::CreateTokenRequest {
            name: name.into(),
            role: role.into(),
            fleets: fleets.iter().map(|f| (*f).into()).collect(),
            expires_in_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .secret
}

/// Everything of fleet `site-y` a token could try to list, read or decide.
fn reads_of_fleet_y(a: &Api, w: &World) -> Vec<(&'static str, Pending)> {
    vec![
        rpc!(a.devs, get_device, pb::GetDeviceRequest { id: "dy".into() }),
        rpc!(
            a.devs,
            get_device_state,
            pb::GetDeviceStateRequest { id: "dy".into() }
        ),
        rpc!(
            a.devs,
            list_devices,
            pb::ListDevicesRequest {
                fleet: "site-y".into(),
                ..Default::default()
            }
        ),
        rpc!(
            a.cat,
            get_release,
            pb::GetReleaseRequest { id: "ry".into() }
        ),
        rpc!(
            a.cat,
            list_releases,
            pb::ListReleasesRequest {
                fleet: "site-y".into(),
                ..Default::default()
            }
        ),
        rpc!(
            a.cat,
            diff_releases,
            pb::DiffReleasesRequest {
                from: "ry".into(),
                to: "ry".into()
            }
        ),
        rpc!(a.ops, get_operation, pb::GetOperationRequest { id: w.op_y }),
        rpc!(
            a.ops,
            list_operations,
            pb::ListOperationsRequest {
                device: "dy".into()
            }
        ),
        rpc!(
            a.ops,
            watch_events,
            pb::WatchEventsRequest {
                fleet: "site-y".into(),
                device: String::new(),
                ..Default::default()
            }
        ),
        rpc!(
            a.ops,
            watch_events,
            pb::WatchEventsRequest {
                fleet: String::new(),
                device: "dy".into(),
                ..Default::default()
            }
        ),
        rpc!(
            a.roll,
            get_rollout,
            pb::GetRolloutRequest { id: w.rollout_y }
        ),
        rpc!(
            a.roll,
            watch_rollout,
            pb::GetRolloutRequest { id: w.rollout_y }
        ),
        rpc!(
            a.roll,
            list_rollouts,
            pb::ListRolloutsRequest {
                fleet: "site-y".into()
            }
        ),
        rpc!(
            a.win,
            next_windows,
            pb::NextWindowsRequest {
                device: "dy".into(),
                count: 1
            }
        ),
        rpc!(
            a.win,
            get_fleet_policy,
            pb::GetFleetPolicyRequest {
                fleet: "site-y".into()
            }
        ),
    ]
}

#[tokio::test]
async fn a_fleet_x_token_cannot_list_read_or_approve_anything_of_fleet_y() {
    let w = world().await;
    for role in ["operator", "customer", "viewer"] {
        let t = token(&w, role, &["site-x"], &format!("{role} of x")).await;
        let x = Api::as_token(&w.server, &t).await;
        let mut reads = reads_of_fleet_y(&x, &w);
        // A diff needs both releases in scope.
        reads.push(rpc!(
            x.cat,
            diff_releases,
            pb::DiffReleasesRequest {
                from: "rx".into(),
                to: "ry".into()
            }
        ));
        all_fail(reads, Code::PermissionDenied, "not scoped to fleet site-y").await;

        // Lists without a fleet show fleet x only.
        let mut c = x.clone();
        let fleets = c
            .devs
            .list_fleets(pb::ListFleetsRequest {})
            .await
            .unwrap()
            .into_inner()
            .fleets;
        assert_eq!(
            fleets.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(),
            ["site-x"],
            "{role}"
        );
        let devices = c
            .devs
            .list_devices(pb::ListDevicesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .devices;
        assert_eq!(
            devices.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            ["dx"],
            "{role}"
        );
        let releases = c
            .cat
            .list_releases(pb::ListReleasesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .releases;
        assert_eq!(
            releases.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["rx"],
            "{role}"
        );
        let rollouts = c
            .roll
            .list_rollouts(pb::ListRolloutsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .rollouts;
        assert!(rollouts.is_empty(), "{role}: {rollouts:?}");
        let approvals = c
            .win
            .list_approvals(pb::ListApprovalsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .approvals;
        assert!(approvals.is_empty(), "{role}: {approvals:?}");
        let windows = c
            .win
            .list_windows(pb::ListWindowsRequest {})
            .await
            .unwrap()
            .into_inner()
            .windows;
        assert_eq!(windows.len(), 2, "x's window and the tag's: {windows:?}");
        assert!(windows.iter().all(|win| win.id != w.window_y), "{role}");
    }

    // Deciding y's approval: refused to x's customer, allowed to y's.
    let customer_x =
        Api::as_token(&w.server, &token(&w, "customer", &["site-x"], "cx").await).await;
    let y_window = w
        .admin
        .win
        .clone()
        .next_windows(pb::NextWindowsRequest {
            device: "dy".into(),
            count: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .occurrences;
    all_fail(
        vec![
            rpc!(
                customer_x.win,
                approve,
                pb::ApproveRequest {
                    approval_id: w.approval_y,
                    occurrence: y_window.first().cloned(),
                    actor: "customer@x".into(),
                }
            ),
            rpc!(
                customer_x.win,
                decline,
                pb::DeclineRequest {
                    approval_id: w.approval_y,
                    message: "no".into(),
                    actor: "customer@x".into(),
                }
            ),
        ],
        Code::PermissionDenied,
        "not scoped to fleet site-y",
    )
    .await;
    let customer_y = Api::as_token(
        &w.server,
        &token(&w, "customer", &["site-y"], "north customer").await,
    )
    .await;
    let declined = customer_y
        .win
        .clone()
        .decline(pb::DeclineRequest {
            approval_id: w.approval_y,
            message: "harvest week".into(),
            actor: "anna@site-y".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    assert_eq!(declined.status, "declined");
    assert!(
        declined
            .decided_by
            .starts_with("anna@site-y via north customer (token "),
        "{}",
        declined.decided_by
    );
    // ... and y's customer cannot read x.
    all_fail(
        vec![rpc!(
            customer_y.devs,
            get_device,
            pb::GetDeviceRequest { id: "dx".into() }
        )],
        Code::PermissionDenied,
        "not scoped to fleet site-x",
    )
    .await;
}

#[tokio::test]
async fn a_viewer_reads_but_cannot_change_anything() {
    let w = world().await;
    for fleets in [&["site-y"][..], &[]] {
        let v = Api::as_token(&w.server, &token(&w, "viewer", fleets, "wall").await).await;
        all_succeed(reads_of_fleet_y(&v, &w)).await;
        all_succeed(vec![
            rpc!(
                v.devs,
                list_env,
                pb::ListEnvRequest {
                    owner: env_owner_fleet("site-y")
                }
            ),
            rpc!(
                v.aud,
                list_audit,
                pb::ListAuditRequest {
                    fleet: "site-y".into(),
                    ..Default::default()
                }
            ),
            rpc!(
                v.cat,
                list_block_versions,
                pb::ListBlockVersionsRequest {
                    block: "app".into()
                }
            ),
            rpc!(v.win, list_approvals, pb::ListApprovalsRequest::default()),
        ])
        .await;
        let mutations = vec![
            rpc!(
                v.devs,
                create_fleet,
                pb::CreateFleetRequest {
                    id: "site-z".into(),
                    name: String::new()
                }
            ),
            rpc!(
                v.cat,
                create_block,
                pb::CreateBlockRequest {
                    name: "new".into(),
                    description: String::new()
                }
            ),
            rpc!(
                v.cat,
                create_block_version,
                pb::CreateBlockVersionRequest {
                    block_version: Some(pb::BlockVersion {
                        block: "app".into(),
                        version: "9.0.0".into(),
                        image_digest: format!("sha256:{}", "b".repeat(64)),
                        ..Default::default()
                    })
                }
            ),
            rpc!(
                v.cat,
                create_release,
                pb::CreateReleaseRequest {
                    id: "r9".into(),
                    fleet: "site-y".into(),
                    blocks: vec![pb::BlockRef {
                        block: "app".into(),
                        version: "1.0.0".into()
                    }],
                    env: Default::default()
                }
            ),
            rpc!(
                v.devs,
                register_device,
                pb::RegisterDeviceRequest {
                    id: "d9".into(),
                    fleet: "site-y".into(),
                    tags: vec![]
                }
            ),
            rpc!(
                v.devs,
                set_env,
                pb::SetEnvRequest {
                    owner: env_owner_fleet("site-y"),
                    vars: vec![pb::EnvVar {
                        name: "A".into(),
                        value: "1".into(),
                        blocks: vec![]
                    }]
                }
            ),
            rpc!(
                v.devs,
                unset_env,
                pb::UnsetEnvRequest {
                    owner: env_owner_fleet("site-y"),
                    keys: vec![pb::EnvVarKey {
                        name: "SITE".into(),
                        blocks: vec![]
                    }]
                }
            ),
            rpc!(
                v.ops,
                create_operation,
                pb::CreateOperationRequest {
                    device: "dy".into(),
                    spec: reboot(),
                    force: None,
                    actor: String::new()
                }
            ),
            rpc!(
                v.ops,
                cancel_operation,
                pb::CancelOperationRequest {
                    id: w.op_y,
                    actor: String::new(),
                    reason: String::new()
                }
            ),
            rpc!(
                v.win,
                create_window,
                one_off_window(pb::window_scope::Scope::Fleet("site-y".into()))
            ),
            rpc!(
                v.win,
                delete_window,
                pb::DeleteWindowRequest { id: w.window_y }
            ),
            rpc!(
                v.win,
                set_fleet_policy,
                pb::SetFleetPolicyRequest {
                    policy: Some(pb::FleetPolicy {
                        fleet: "site-y".into(),
                        ..Default::default()
                    }),
                    update_mask: None
                }
            ),
            rpc!(
                v.win,
                approve,
                pb::ApproveRequest {
                    approval_id: w.approval_y,
                    occurrence: None,
                    actor: String::new()
                }
            ),
            rpc!(
                v.win,
                decline,
                pb::DeclineRequest {
                    approval_id: w.approval_y,
                    message: String::new(),
                    actor: String::new()
                }
            ),
            rpc!(
                v.roll,
                create_rollout,
                pb::CreateRolloutRequest {
                    fleet: "site-y".into(),
                    target: Some(pb::create_rollout_request::Target::Release("ry".into())),
                    supersede: true,
                    ..Default::default()
                }
            ),
            rpc!(
                v.roll,
                pause_rollout,
                pb::RolloutActionRequest {
                    id: w.rollout_y,
                    ..Default::default()
                }
            ),
            rpc!(
                v.roll,
                resume_rollout,
                pb::RolloutActionRequest {
                    id: w.rollout_y,
                    ..Default::default()
                }
            ),
            rpc!(
                v.roll,
                abort_rollout,
                pb::RolloutActionRequest {
                    id: w.rollout_y,
                    ..Default::default()
                }
            ),
            rpc!(
                v.tok,
                create_token,
                pb::CreateTokenRequest {
                    role: "admin".into(),
                    ..Default::default()
                }
            ),
            rpc!(v.tok, list_tokens, pb::ListTokensRequest {}),
            rpc!(
                v.tok,
                revoke_token,
                pb::RevokeTokenRequest {
                    id: "abc".into(),
                    reason: String::new()
                }
            ),
        ];
        all_fail(mutations, Code::PermissionDenied, "a viewer token may not").await;
    }
    // Nothing changed: the operation still waits, the rollout runs.
    let op = w
        .admin
        .ops
        .clone()
        .get_operation(pb::GetOperationRequest { id: w.op_y })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    assert_ne!(op.status, "cancelled");

    // The other roles' limits: operators do not decide approvals or manage
    // tokens; customers do not operate.
    let operator = Api::as_token(&w.server, &token(&w, "operator", &["site-y"], "ops").await).await;
    all_fail(
        vec![
            rpc!(
                operator.win,
                decline,
                pb::DeclineRequest {
                    approval_id: w.approval_y,
                    message: String::new(),
                    actor: String::new()
                }
            ),
            rpc!(operator.tok, list_tokens, pb::ListTokensRequest {}),
            rpc!(
                operator.devs,
                create_fleet,
                pb::CreateFleetRequest {
                    id: "site-z".into(),
                    name: String::new()
                }
            ),
        ],
        Code::PermissionDenied,
        "an operator token may not",
    )
    .await;
    let customer = Api::as_token(&w.server, &token(&w, "customer", &["site-y"], "c").await).await;
    all_fail(
        vec![
            rpc!(
                customer.ops,
                create_operation,
                pb::CreateOperationRequest {
                    device: "dy".into(),
                    spec: reboot(),
                    force: None,
                    actor: String::new()
                }
            ),
            rpc!(
                customer.devs,
                list_env,
                pb::ListEnvRequest {
                    owner: env_owner_fleet("site-y")
                }
            ),
            rpc!(customer.aud, list_audit, pb::ListAuditRequest::default()),
        ],
        Code::PermissionDenied,
        "a customer token may not",
    )
    .await;
    // A window on a tag spans fleets: only a token for every fleet adds one.
    all_fail(
        vec![rpc!(
            operator.win,
            create_window,
            one_off_window(pb::window_scope::Scope::Tag("everywhere".into()))
        )],
        Code::PermissionDenied,
        "a token scoped to all fleets is needed",
    )
    .await;
    // An operator of y operates y (and may add to the shared catalog).
    all_succeed(vec![
        rpc!(
            operator.ops,
            cancel_operation,
            pb::CancelOperationRequest {
                id: w.op_y,
                actor: String::new(),
                reason: "not now".into()
            }
        ),
        rpc!(
            operator.cat,
            create_block,
            pb::CreateBlockRequest {
                name: "extra".into(),
                description: String::new()
            }
        ),
    ])
    .await;
}

#[tokio::test]
async fn a_device_credential_works_only_on_the_agent_service() {
    let w = world().await;
    let device = Api::as_token(&w.server, &w.credential_y).await;
    all_fail(
        vec![
            rpc!(device.devs, list_fleets, pb::ListFleetsRequest {}),
            rpc!(
                device.devs,
                get_device,
                pb::GetDeviceRequest { id: "dy".into() }
            ),
            rpc!(
                device.ops,
                list_operations,
                pb::ListOperationsRequest {
                    device: "dy".into()
                }
            ),
            rpc!(
                device.ops,
                create_operation,
                pb::CreateOperationRequest {
                    device: "dy".into(),
                    spec: reboot(),
                    force: None,
                    actor: String::new()
                }
            ),
            rpc!(
                device.cat,
                list_block_versions,
                pb::ListBlockVersionsRequest {
                    block: "app".into()
                }
            ),
            rpc!(
                device.win,
                list_approvals,
                pb::ListApprovalsRequest::default()
            ),
            rpc!(
                device.roll,
                list_rollouts,
                pb::ListRolloutsRequest::default()
            ),
            rpc!(device.tok, who_am_i, pb::WhoAmIRequest {}),
            rpc!(device.aud, list_audit, pb::ListAuditRequest::default()),
        ],
        Code::Unauthenticated,
        "a device credential is accepted only by AgentService",
    )
    .await;
    // The agent stream still takes it (and refuses an API token).
    let connect = |credential: String| {
        let ch = w.server.raw_channel();
        async move {
            let mut client = pb::agent_service_client::AgentServiceClient::new(ch.await);
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
                    agent_version: "test".into(),
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
            let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            req.metadata_mut()
                .insert("x-lockstep-device", "dy".parse().unwrap());
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {credential}").parse().unwrap(),
            );
            let answer = client.connect(req).await;
            (answer.map(|_| ()), tx)
        }
    };
    let (answer, _open) = connect(w.credential_y.clone()).await;
    answer.expect("the device's own credential opens its stream");
    let (answer, _) = connect(w.server.token()).await;
    assert_eq!(answer.unwrap_err().code(), Code::Unauthenticated);
}

#[tokio::test]
async fn every_method_of_every_service_but_the_agents_needs_an_api_token() {
    use prost::Message as _;
    let w = world().await;
    let set =
        prost_types::FileDescriptorSet::decode(lockstep::edge::grpc::FILE_DESCRIPTOR_SET).unwrap();
    let mut checked = std::collections::BTreeSet::new();
    for file in &set.file {
        for service in &file.service {
            let name = format!("{}.{}", file.package(), service.name());
            if name == "lockstep.v1.AgentService" {
                continue;
            }
            for method in &service.method {
                let path = format!("/{name}/{}", method.name());
                for (token, needle) in [
                    (None, "missing authorization"),
                    (
                        Some(w.credential_y.as_str()),
                        "accepted only by AgentService",
                    ),
                ] {
                    let ch = w.server.raw_channel().await;
                    let mut grpc = tonic::client::Grpc::new(ch);
                    grpc.ready().await.unwrap();
                    let mut req = tonic::Request::new(());
                    if let Some(t) = token {
                        req.metadata_mut()
                            .insert("authorization", format!("Bearer {t}").parse().unwrap());
                    }
                    let err = grpc
                        .unary::<(), (), _>(
                            req,
                            path.parse().unwrap(),
                            tonic_prost::ProstCodec::default(),
                        )
                        .await
                        .unwrap_err();
                    assert_eq!(err.code(), Code::Unauthenticated, "{path}: {err:?}");
                    assert!(err.message().contains(needle), "{path}: {err:?}");
                }
                checked.insert(path);
            }
        }
    }
    assert!(checked.len() >= 42, "only {} methods found", checked.len());
    // Every service's every method is among them, the rollouts' stream too.
    for path in [
        "/lockstep.v1.RolloutService/CreateRollout",
        "/lockstep.v1.RolloutService/GetRollout",
        "/lockstep.v1.RolloutService/ListRollouts",
        "/lockstep.v1.RolloutService/PauseRollout",
        "/lockstep.v1.RolloutService/ResumeRollout",
        "/lockstep.v1.RolloutService/AbortRollout",
        "/lockstep.v1.RolloutService/WatchRollout",
        "/lockstep.v1.OperationService/WatchEvents",
        "/lockstep.v1.TokenService/WhoAmI",
        "/lockstep.v1.AuditService/ListAudit",
    ] {
        assert!(
            checked.contains(path),
            "{path} was not checked: {checked:?}"
        );
    }
}

#[tokio::test]
async fn missing_bad_revoked_and_expired_tokens_are_unauthenticated() {
    let w = world().await;
    let list = |a: &Api| rpc!(a.devs, list_fleets, pb::ListFleetsRequest {});
    // No token at all.
    let mut bare = DeviceServiceClient::new(w.server.raw_channel().await);
    let err = bare
        .list_fleets(pb::ListFleetsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("missing authorization"), "{err:?}");
    // Not a token; a real id with a made-up secret.
    let admin_id = w.server.token().split('_').nth(1).unwrap().to_owned();
    for (bad, needle) in [
        ("hunter2", "not an API token"),
        (
            &*format!("lst_{admin_id}_{}", "0".repeat(64)),
            "invalid API token",
        ),
        ("lst_000000000000_secret", "invalid API token"),
    ] {
        let a = Api::as_token(&w.server, bad).await;
        all_fail(vec![list(&a)], Code::Unauthenticated, needle).await;
    }

    // Revoked: refused from the next call on.
    let t = token(&w, "operator", &["site-x"], "ci").await;
    let ci = Api::as_token(&w.server, &t).await;
    all_succeed(vec![list(&ci)]).await;
    let id = t.split('_').nth(1).unwrap().to_owned();
    let revoked = w
        .admin
        .tok
        .clone()
        .revoke_token(pb::RevokeTokenRequest {
            id: id.clone(),
            reason: "leaked in a log".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(revoked.state, "revoked");
    assert!(revoked.revoked_by.starts_with("bootstrap-admin (token "));
    all_fail(
        vec![list(&ci)],
        Code::Unauthenticated,
        &format!("token {id} was revoked"),
    )
    .await;
    let again = w
        .admin
        .tok
        .clone()
        .revoke_token(pb::RevokeTokenRequest {
            id,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");

    // Expired: fine until its time, refused after.
    let short = w
        .admin
        .tok
        .clone()
        .create_token(pb::CreateTokenRequest {
            name: "short".into(),
            role: "viewer".into(),
            fleets: vec![],
            expires_in_seconds: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let brief = Api::as_token(&w.server, &short.secret).await;
    all_succeed(vec![list(&brief)]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    all_fail(vec![list(&brief)], Code::Unauthenticated, "expired").await;
    let listed = w
        .admin
        .tok
        .clone()
        .list_tokens(pb::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let states: Vec<(&str, &str)> = listed
        .iter()
        .map(|t| (t.name.as_str(), t.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("bootstrap-admin", "active"),
            ("ci", "revoked"),
            ("short", "expired")
        ]
    );
}

#[tokio::test]
async fn the_first_start_writes_a_bootstrap_admin_token_for_its_owner_only_and_stores_only_its_hash()
 {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::spawn(&["--data-dir", data.to_str().unwrap()], None);
    let file = data.join("admin.token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let token = server.token();
    let (id, secret) = lockstep::domain::split_token(&token).unwrap();
    // The log says where, never what.
    let said = server
        .startup
        .iter()
        .find(|l| l.contains("bootstrap token file"))
        .expect("the start-up log says a token was written");
    assert!(said.contains(&file.display().to_string()), "{said}");
    assert!(said.contains(id.as_str()), "{said}");
    assert!(server.startup.iter().all(|l| !l.contains(secret)));
    // It is an admin token.
    let me = TokenServiceClient::new(server.channel().await)
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(
        (me.name.as_str(), me.role.as_str(), me.fleets.len()),
        ("bootstrap-admin", "admin", 0)
    );

    // The database holds a SHA-256 of the token, and the secret nowhere.
    let db = rusqlite_free_dump(&data).await;
    assert!(!db.contains(secret), "the secret is stored in clear");
    let hash = lockstep::edge::auth::hash_credential(&token);
    assert!(db.contains(&hash), "the token's SHA-256 is stored");

    // A restart keeps the token; revoking every admin token makes the next
    // start write a new one.
    assert!(server.terminate().success());
    let server = Server::spawn(&["--data-dir", data.to_str().unwrap()], None);
    assert_eq!(server.token(), token, "the token file is left alone");
    assert!(
        server
            .startup
            .iter()
            .all(|l| !l.contains("bootstrap token file"))
    );
    TokenServiceClient::new(server.channel().await)
        .revoke_token(pb::RevokeTokenRequest {
            id: id.to_string(),
            reason: "rotated".into(),
        })
        .await
        .unwrap();
    assert!(server.terminate().success());
    let server = Server::spawn(&["--data-dir", data.to_str().unwrap()], None);
    let fresh = server.token();
    assert_ne!(fresh, token);
    let err = DeviceServiceClient::new(server.channel_as(&token).await)
        .list_fleets(pb::ListFleetsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    DeviceServiceClient::new(server.channel().await)
        .list_fleets(pb::ListFleetsRequest {})
        .await
        .unwrap();
}

/// Every text value of every `api_tokens` row, read straight from SQLite.
async fn rusqlite_free_dump(data: &std::path::Path) -> String {
    use sqlx::Row as _;
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}?mode=ro",
        data.join("lockstep.db").display()
    ))
    .await
    .unwrap();
    let rows = sqlx::query("SELECT * FROM api_tokens")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(!rows.is_empty());
    let mut out = String::new();
    for r in &rows {
        for i in 0..r.len() {
            if let Ok(Some(v)) = r.try_get::<Option<String>, _>(i) {
                out.push_str(&v);
                out.push('\n');
            }
        }
    }
    out
}

#[tokio::test]
async fn a_postgres_server_writes_its_bootstrap_token_where_it_is_told() {
    use std::os::unix::fs::PermissionsExt as _;
    let url = lockstep::testkit::fresh_pg_url().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets/admin.token");
    let server = Server::spawn(
        &[
            "--database-url",
            &url,
            "--bootstrap-token-file",
            file.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(server.token_file, file);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    DeviceServiceClient::new(server.channel().await)
        .create_fleet(pb::CreateFleetRequest {
            id: "pg".into(),
            name: String::new(),
        })
        .await
        .unwrap();
}

// ------------------------------------------------------------------ the CLI

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Run {
    #[track_caller]
    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success: {self:?}");
        self
    }

    #[track_caller]
    fn json(self) -> Value {
        let run = self.ok();
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
    }
}

/// `lockstep <args>` against `server`, with `token` as LOCKSTEP_TOKEN (none
/// if `None`), in a directory of its own (no ./lockstep-data there).
fn cli(server: &Server, token: Option<&str>, args: &[&str]) -> Run {
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.current_dir(cwd.path())
        .env("LOCKSTEP_SERVER", server.url())
        .env_remove("LOCKSTEP_TOKEN")
        .env_remove("LOCKSTEP_TOKEN_FILE")
        .env("LOCKSTEP_LOG", "warn");
    if let Some(t) = token {
        cmd.env("LOCKSTEP_TOKEN", t);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let code = child.wait().unwrap().code().unwrap();
    let run = Run {
        code,
        stdout,
        stderr,
    };
    eprintln!("$ lockstep {}\n{run:?}", args.join(" "));
    run
}

#[tokio::test]
async fn admins_create_list_and_revoke_tokens_with_the_cli() {
    use std::os::unix::fs::PermissionsExt as _;
    let w = world().await;
    let s = &w.server;
    let admin = s.token();
    let admin = Some(admin.as_str());

    // Without a token the CLI says how to give one, exit 7.
    let run = cli(s, None, &["fleet", "list"]);
    assert_eq!(run.code, 7, "{run:?}");
    assert!(
        run.stderr.contains("UNAUTHENTICATED") && run.stderr.contains("--token-file"),
        "{run:?}"
    );

    let created = cli(
        s,
        admin,
        &[
            "token",
            "create",
            "--role",
            "customer",
            "--fleet",
            "site-y",
            "--name",
            "north customer",
            "--expires",
            "30d",
            "--output",
            "json",
        ],
    )
    .json();
    assert_eq!(created["role"], "customer");
    assert_eq!(created["fleets"], serde_json::json!(["site-y"]));
    assert_eq!(created["state"], "active");
    let in_30_days = lockstep::clock::now().0 + 30 * 86_400_000;
    let expires = created["expires_unix_ms"].as_i64().unwrap();
    assert!((in_30_days - expires).abs() < 60_000, "{created}");
    let customer = created["token"].as_str().unwrap().to_owned();
    let customer_id = created["id"].as_str().unwrap().to_owned();
    assert!(customer.starts_with(&format!("lst_{customer_id}_")));

    // --token-out: a new file only its owner reads; --token-file uses it.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("viewer.token");
    let run = cli(
        s,
        admin,
        &[
            "token",
            "create",
            "--role",
            "viewer",
            "--token-out",
            out.to_str().unwrap(),
        ],
    )
    .ok();
    assert!(!run.stdout.contains("lst_"), "not printed: {run:?}");
    assert!(run.stdout.contains("token file:"), "{run:?}");
    let mode = std::fs::metadata(&out).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let me = cli(
        s,
        None,
        &[
            "token",
            "whoami",
            "--token-file",
            out.to_str().unwrap(),
            "--output",
            "json",
        ],
    )
    .json();
    assert_eq!(
        (me["role"].as_str(), me["name"].as_str()),
        (Some("viewer"), Some("viewer"))
    );
    // A file that is there already is never overwritten.
    let run = cli(
        s,
        admin,
        &[
            "token",
            "create",
            "--role",
            "viewer",
            "--token-out",
            out.to_str().unwrap(),
        ],
    );
    assert_ne!(run.code, 0, "{run:?}");

    // Bad requests name what is wrong.
    let run = cli(s, admin, &["token", "create", "--role", "operator"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("fleets: an operator token must name at least one fleet"),
        "{run:?}"
    );
    let run = cli(
        s,
        admin,
        &["token", "create", "--role", "admin", "--fleet", "site-x"],
    );
    assert_eq!(run.code, 2, "{run:?}");
    let run = cli(
        s,
        admin,
        &[
            "token", "create", "--role", "customer", "--fleet", "nowhere",
        ],
    );
    assert_eq!(run.code, 3, "{run:?}");

    // The customer sees itself and its fleet, and may not manage tokens.
    let me = cli(s, Some(&customer), &["token", "whoami"]).ok();
    assert!(me.stdout.contains("north customer"), "{me:?}");
    let run = cli(s, Some(&customer), &["token", "list"]);
    assert_eq!(run.code, 7, "{run:?}");
    assert!(
        run.stderr
            .contains("PERMISSION_DENIED: a customer token may not manage API tokens"),
        "{run:?}"
    );
    let run = cli(s, Some(&customer), &["device", "get", "dx"]);
    assert_eq!(run.code, 7, "{run:?}");
    assert!(run.stderr.contains("not scoped to fleet site-x"), "{run:?}");

    let list = cli(s, admin, &["token", "list"]).ok();
    let row = list
        .stdout
        .lines()
        .find(|l| l.starts_with(&customer_id))
        .unwrap_or_else(|| panic!("{list:?}"));
    for cell in ["north customer", "customer", "site-y", "active"] {
        assert!(row.contains(cell), "{cell} in {row}");
    }

    cli(
        s,
        admin,
        &[
            "token",
            "revoke",
            &customer_id,
            "--reason",
            "left the company",
        ],
    )
    .ok();
    let run = cli(s, Some(&customer), &["token", "whoami"]);
    assert_eq!(run.code, 7, "{run:?}");
    assert!(run.stderr.contains("was revoked"), "{run:?}");
    let run = cli(s, admin, &["token", "revoke", &customer_id]);
    assert_eq!(run.code, 4, "revoking twice: {run:?}");
    let listed = cli(s, admin, &["token", "list", "--output", "json"]).json();
    let state = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == customer_id.as_str())
        .map(|t| t["state"].clone());
    assert_eq!(state, Some(Value::from("revoked")));
}

#[tokio::test]
async fn the_audit_log_names_the_token_and_each_token_reads_its_own_fleets() {
    let w = world().await;
    let s = &w.server;
    let ops_y = token(&w, "operator", &["site-y"], "ops y").await;
    let ops_x = token(&w, "operator", &["site-x"], "ops x").await;
    // A force on each fleet, by each fleet's operator; a cancellation on y.
    for (t, device) in [(&ops_y, "dy"), (&ops_x, "dx")] {
        let op = OperationServiceClient::new(s.channel_as(t).await)
            .create_operation(pb::CreateOperationRequest {
                device: device.into(),
                spec: reboot(),
                force: Some(pb::Force {
                    blocks: vec!["app".into()],
                    reason: "site visit".into(),
                }),
                actor: "ops@example".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .operation
            .unwrap();
        if device == "dy" {
            OperationServiceClient::new(s.channel_as(t).await)
                .cancel_operation(pb::CancelOperationRequest {
                    id: op.id,
                    actor: String::new(),
                    reason: "wrong device".into(),
                })
                .await
                .unwrap();
        }
    }
    RolloutServiceClient::new(s.channel_as(&ops_y).await)
        .pause_rollout(pb::RolloutActionRequest {
            id: w.rollout_y,
            actor: String::new(),
            reason: "holiday".into(),
        })
        .await
        .unwrap();

    // Through the API: filtered by action, by subject; the actor is the token.
    let mut audit = AuditServiceClient::new(s.channel().await);
    let forces = audit
        .list_audit(pb::ListAuditRequest {
            action: "force_requested".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(forces.len(), 2, "{forces:?}");
    let y = forces.iter().find(|e| e.fleet == "site-y").unwrap();
    assert!(
        y.actor.starts_with("ops@example via ops y (token "),
        "{}",
        y.actor
    );
    assert_eq!(y.reason, "site visit");
    assert!(
        y.subject.starts_with("device dy operation "),
        "{}",
        y.subject
    );
    let about_dy = audit
        .list_audit(pb::ListAuditRequest {
            subject: "device dy".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let actions: Vec<&str> = about_dy.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["force_requested", "operation_cancelled"]);
    let paged = audit
        .list_audit(pb::ListAuditRequest {
            after_id: about_dy[0].id,
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(paged.len(), 1);
    assert!(paged[0].id > about_dy[0].id);

    // A token of fleet x reads x's entries only, and may not ask for y's.
    let mut audit_x = AuditServiceClient::new(s.channel_as(&ops_x).await);
    let seen = audit_x
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|e| e.fleet == "site-x"), "{seen:?}");
    let err = audit_x
        .list_audit(pb::ListAuditRequest {
            fleet: "site-y".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Through the CLI: a table for people, JSON for scripts.
    let admin = s.token();
    let table = cli(s, Some(&admin), &["audit", "list", "--fleet", "site-y"]).ok();
    for needle in [
        "force_requested",
        "operation_cancelled",
        "rollout_paused",
        "holiday",
        "ops y (token",
    ] {
        assert!(table.stdout.contains(needle), "{needle}: {table:?}");
    }
    let tokens = cli(
        s,
        Some(&admin),
        &[
            "audit",
            "list",
            "--action",
            "token_created",
            "--output",
            "json",
        ],
    )
    .json();
    let entries = tokens["entries"].as_array().unwrap();
    assert_eq!(
        entries.len(),
        3,
        "the bootstrap token and two operators: {tokens}"
    );
    assert_eq!(entries[0]["actor"], "lockstep serve");
    assert_eq!(entries[1]["details"]["role"], "operator");
    assert_eq!(
        entries[1]["details"]["fleets"],
        serde_json::json!(["site-y"])
    );
    let scoped = cli(s, Some(&ops_x), &["audit", "list", "--output", "json"]).json();
    assert!(
        scoped["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["fleet"] == "site-x"),
        "{scoped}"
    );
}

#[tokio::test]
async fn revoking_a_token_ends_the_watches_it_opened() {
    let w = world().await;
    let t = token(&w, "viewer", &["site-x"], "wall x").await;
    let ch = w.server.channel_as(&t).await;
    let mut events = OperationServiceClient::new(ch.clone())
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Another token's watch is not touched.
    let other = token(&w, "viewer", &["site-x"], "wall y").await;
    let mut others = OperationServiceClient::new(w.server.channel_as(&other).await)
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let id = t.split('_').nth(1).unwrap().to_owned();
    w.admin
        .tok
        .clone()
        .revoke_token(pb::RevokeTokenRequest {
            id: id.clone(),
            reason: "the wall screen was stolen".into(),
        })
        .await
        .unwrap();
    // Events go on flowing meanwhile; the watch ends within a re-check.
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the revoked token's watch ends within 20 s");
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("token {id} was revoked")),
        "{status:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(1), others.message())
            .await
            .is_err(),
        "the other token's watch stays open and quiet"
    );
}

#[tokio::test]
async fn a_scoped_token_watches_only_its_fleets_devices() {
    let w = world().await;
    let viewer_x = token(&w, "viewer", &["site-x"], "wall x").await;
    let mut events = OperationServiceClient::new(w.server.channel_as(&viewer_x).await)
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Cancellations publish events: y's first, then x's.
    let mut ops = w.admin.ops.clone();
    for device in ["dy", "dx"] {
        let op = ops
            .create_operation(pb::CreateOperationRequest {
                device: device.into(),
                spec: reboot(),
                force: None,
                actor: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .operation
            .unwrap();
        ops.cancel_operation(pb::CancelOperationRequest {
            id: op.id,
            actor: String::new(),
            reason: format!("not on {device}"),
        })
        .await
        .unwrap();
    }
    let first = tokio::time::timeout(Duration::from_secs(20), events.message())
        .await
        .expect("an event within 20 s")
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            first.device.as_str(),
            first.kind.as_str(),
            first.message.as_str()
        ),
        ("dx", "cancelled", "not on dx"),
        "y's event is not shown to x's viewer"
    );
}

#[tokio::test]
async fn rollouts_keep_to_their_fleet_and_name_the_token_that_acts() {
    let w = world().await;
    let s = &w.server;
    let ops_x = token(&w, "operator", &["site-x"], "ops x").await;
    let ops_y = token(&w, "operator", &["site-y"], "ops y").await;
    let x = Api::as_token(s, &ops_x).await;
    let action = |id: u64| pb::RolloutActionRequest {
        id,
        actor: "mallory".into(),
        reason: "not mine".into(),
    };
    // Fleet x's operator can neither see nor act on fleet y's rollout, nor
    // start one there (or one of y's release on x).
    all_fail(
        vec![
            rpc!(
                x.roll,
                get_rollout,
                pb::GetRolloutRequest { id: w.rollout_y }
            ),
            rpc!(
                x.roll,
                watch_rollout,
                pb::GetRolloutRequest { id: w.rollout_y }
            ),
            rpc!(
                x.roll,
                list_rollouts,
                pb::ListRolloutsRequest {
                    fleet: "site-y".into()
                }
            ),
            rpc!(x.roll, pause_rollout, action(w.rollout_y)),
            rpc!(x.roll, resume_rollout, action(w.rollout_y)),
            rpc!(x.roll, abort_rollout, action(w.rollout_y)),
            rpc!(
                x.roll,
                create_rollout,
                pb::CreateRolloutRequest {
                    fleet: "site-y".into(),
                    target: Some(pb::create_rollout_request::Target::Release("ry".into())),
                    supersede: true,
                    ..Default::default()
                }
            ),
            rpc!(
                x.roll,
                create_rollout,
                pb::CreateRolloutRequest {
                    fleet: "site-x".into(),
                    target: Some(pb::create_rollout_request::Target::Release("ry".into())),
                    ..Default::default()
                }
            ),
        ],
        Code::PermissionDenied,
        "not scoped to fleet site-y",
    )
    .await;
    // y's rollout is untouched.
    let y = w
        .admin
        .roll
        .clone()
        .get_rollout(pb::GetRolloutRequest { id: w.rollout_y })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .rollout
        .unwrap();
    assert_eq!(y.state, "running");

    // On its own fleet it starts, reads, watches and pauses a rollout; the
    // rollout and the audit log name the token, with the client's note.
    let mut roll_x = x.roll.clone();
    let mine = roll_x
        .create_rollout(pb::CreateRolloutRequest {
            fleet: "site-x".into(),
            target: Some(pb::create_rollout_request::Target::Release("rx".into())),
            actor: "ci job 7".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .rollout
        .unwrap();
    assert!(
        mine.created_by.starts_with("ci job 7 via ops x (token "),
        "{}",
        mine.created_by
    );
    let first = roll_x
        .watch_rollout(pb::GetRolloutRequest { id: mine.id })
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.rollout.unwrap().id, mine.id);
    roll_x
        .pause_rollout(pb::RolloutActionRequest {
            id: mine.id,
            actor: "anna".into(),
            reason: "look first".into(),
        })
        .await
        .unwrap();
    let paused = AuditServiceClient::new(s.channel().await)
        .list_audit(pb::ListAuditRequest {
            action: "rollout_paused".into(),
            fleet: "site-x".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(paused.len(), 1, "{paused:?}");
    assert!(
        paused[0].actor.starts_with("anna via ops x (token "),
        "{}",
        paused[0].actor
    );
    assert_eq!(paused[0].subject, format!("rollout {}", mine.id));

    // Lists without a fleet keep to each token's fleets.
    for (t, want) in [(&ops_x, vec![mine.id]), (&ops_y, vec![w.rollout_y])] {
        let listed: Vec<u64> = RolloutServiceClient::new(s.channel_as(t).await)
            .list_rollouts(pb::ListRolloutsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .rollouts
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(listed, want);
    }
    let all: Vec<u64> = w
        .admin
        .roll
        .clone()
        .list_rollouts(pb::ListRolloutsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .rollouts
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(all.len(), 2, "{all:?}");

    // A viewer of y follows y's rollout and changes nothing, and the CLI
    // says so with exit 7, as it does for a token of another fleet.
    let viewer_y = token(&w, "viewer", &["site-y"], "wall y").await;
    let v = Api::as_token(s, &viewer_y).await;
    all_succeed(vec![
        rpc!(
            v.roll,
            get_rollout,
            pb::GetRolloutRequest { id: w.rollout_y }
        ),
        rpc!(
            v.roll,
            watch_rollout,
            pb::GetRolloutRequest { id: w.rollout_y }
        ),
    ])
    .await;
    all_fail(
        vec![
            rpc!(v.roll, pause_rollout, action(w.rollout_y)),
            rpc!(
                v.roll,
                create_rollout,
                pb::CreateRolloutRequest {
                    fleet: "site-y".into(),
                    target: Some(pb::create_rollout_request::Target::Release("ry".into())),
                    supersede: true,
                    ..Default::default()
                }
            ),
        ],
        Code::PermissionDenied,
        "a viewer token may not",
    )
    .await;
    let id_y = w.rollout_y.to_string();
    for (t, args) in [
        (
            &viewer_y,
            vec!["rollout", "pause", id_y.as_str(), "--reason", "x"],
        ),
        (
            &viewer_y,
            vec![
                "rollout",
                "create",
                "--fleet",
                "site-y",
                "--release",
                "ry",
                "--supersede",
            ],
        ),
        (&ops_x, vec!["rollout", "watch", id_y.as_str()]),
        (&ops_x, vec!["rollout", "get", id_y.as_str()]),
    ] {
        let run = cli(s, Some(t), &args);
        assert_eq!(run.code, 7, "{args:?}: {run:?}");
        assert!(run.stderr.contains("PERMISSION_DENIED"), "{run:?}");
    }
    let run = cli(s, None, &["rollout", "list"]);
    assert_eq!(run.code, 7, "{run:?}");
    let listed = cli(s, Some(&ops_x), &["rollout", "list", "--output", "json"]).json();
    let ids: Vec<u64> = listed["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [mine.id]);
    let got = cli(
        s,
        Some(&viewer_y),
        &["rollout", "get", id_y.as_str(), "--output", "json"],
    )
    .json();
    assert_eq!(got["rollout"]["state"], "running");
}
