//! Scopes must exist, and fleet policies change partially — against the
//! real `lockstep serve` on SQLite, with the generated gRPC clients. A
//! window, policy, env variable or operation on a fleet or device that does
//! not exist is `NOT_FOUND` naming it (a typo never makes a window that
//! never applies), and leaves nothing behind; a tag with no devices yet is
//! a valid window scope. `SetFleetPolicy` with an update mask changes only
//! the settings it names, and concurrent partial updates of different
//! settings all survive.

mod support;

use lockstep::edge::grpc::pb;
use pb::device_service_client::DeviceServiceClient;
use pb::operation_service_client::OperationServiceClient;
use pb::window_service_client::WindowServiceClient;
use support::{Chan, Server};
use tonic::Code;

fn weekly() -> Option<pb::create_window_request::Rule> {
    Some(pb::create_window_request::Rule::Weekly(pb::WeeklyRule {
        days: vec![2],
        start_local: "02:00".into(),
        duration_minutes: 60,
        time_zone: "UTC".into(),
    }))
}

fn window(scope: pb::window_scope::Scope) -> pb::CreateWindowRequest {
    pb::CreateWindowRequest {
        scope: Some(pb::WindowScope { scope: Some(scope) }),
        rule: weekly(),
    }
}

fn owner(o: pb::env_owner::Owner) -> Option<pb::EnvOwner> {
    Some(pb::EnvOwner { owner: Some(o) })
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

#[track_caller]
fn not_found<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>, message: &str) {
    let err = result.expect_err(what);
    assert_eq!(err.code(), Code::NotFound, "{what}: {err:?}");
    assert_eq!(err.message(), message, "{what}");
}

/// A server with fleet `site` and device `dev-1` (tag `site-north`).
async fn site() -> (Server, Chan) {
    let server = Server::start(&[]);
    let ch = server.channel().await;
    let mut devices = DeviceServiceClient::new(ch.clone());
    devices
        .create_fleet(pb::CreateFleetRequest {
            id: "site".into(),
            name: "Site".into(),
        })
        .await
        .unwrap();
    devices
        .register_device(pb::RegisterDeviceRequest {
            id: "dev-1".into(),
            fleet: "site".into(),
            tags: vec!["site-north".into()],
        })
        .await
        .unwrap();
    (server, ch)
}

#[tokio::test]
async fn windows_policies_env_and_operations_on_a_missing_fleet_or_device_are_not_found() {
    use pb::env_owner::Owner;
    use pb::window_scope::Scope;
    let (_server, ch) = site().await;
    let mut windows = WindowServiceClient::new(ch.clone());
    let mut devices = DeviceServiceClient::new(ch.clone());
    let mut ops = OperationServiceClient::new(ch);
    let fleet_gone = "fleet sitx not found";
    let device_gone = "device dev-x not found";

    not_found(
        "window on a missing fleet",
        windows
            .create_window(window(Scope::Fleet("sitx".into())))
            .await,
        fleet_gone,
    );
    not_found(
        "window on a missing device",
        windows
            .create_window(window(Scope::Device("dev-x".into())))
            .await,
        device_gone,
    );
    for update_mask in [None, mask(&["release_mode"])] {
        not_found(
            "policy of a missing fleet",
            windows
                .set_fleet_policy(pb::SetFleetPolicyRequest {
                    policy: Some(pb::FleetPolicy {
                        fleet: "sitx".into(),
                        release_mode: "partial".into(),
                        ..Default::default()
                    }),
                    update_mask,
                })
                .await,
            fleet_gone,
        );
    }
    for (o, message) in [
        (Owner::Fleet("sitx".into()), fleet_gone),
        (Owner::Device("dev-x".into()), device_gone),
    ] {
        not_found(
            "env set",
            devices
                .set_env(pb::SetEnvRequest {
                    owner: owner(o.clone()),
                    vars: vec![pb::EnvVar {
                        name: "GAIN".into(),
                        value: "0.7".into(),
                        blocks: vec![],
                    }],
                })
                .await,
            message,
        );
        not_found(
            "env unset",
            devices
                .unset_env(pb::UnsetEnvRequest {
                    owner: owner(o),
                    keys: vec![pb::EnvVarKey {
                        name: "GAIN".into(),
                        blocks: vec![],
                    }],
                })
                .await,
            message,
        );
    }
    not_found(
        "operation on a missing device",
        ops.create_operation(pb::CreateOperationRequest {
            device: "dev-x".into(),
            spec: Some(pb::OperationSpec {
                kind: Some(pb::operation_spec::Kind::Reboot(
                    pb::operation_spec::Empty {},
                )),
            }),
            force: None,
            actor: String::new(),
        })
        .await,
        device_gone,
    );
    // Nothing was left behind.
    let listed = windows
        .list_windows(pb::ListWindowsRequest {})
        .await
        .unwrap()
        .into_inner()
        .windows;
    assert!(listed.is_empty(), "{listed:?}");

    // The scopes that exist, and a tag no device has yet, are accepted.
    for scope in [
        Scope::Fleet("site".into()),
        Scope::Device("dev-1".into()),
        Scope::Tag("site-north".into()),
        Scope::Tag("site-south".into()),
    ] {
        windows
            .create_window(window(scope.clone()))
            .await
            .unwrap_or_else(|e| panic!("{scope:?}: {e:?}"));
    }
    let listed = windows
        .list_windows(pb::ListWindowsRequest {})
        .await
        .unwrap()
        .into_inner()
        .windows;
    assert_eq!(listed.len(), 4, "{listed:?}");
}

async fn policy(windows: &mut WindowServiceClient<Chan>) -> pb::FleetPolicy {
    windows
        .get_fleet_policy(pb::GetFleetPolicyRequest {
            fleet: "site".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .policy
        .expect("a policy")
}

fn defaults() -> pb::FleetPolicy {
    pb::FleetPolicy {
        fleet: "site".into(),
        needs_window: vec!["os_update".into(), "reboot".into(), "shutdown".into()],
        max_deferral_seconds: 86_400,
        on_deferral_expiry: "notify".into(),
        needs_approval: vec!["os_update".into()],
        release_mode: "atomic".into(),
        on_missed_occurrence: "ask".into(),
    }
}

#[tokio::test]
async fn a_policy_update_with_a_mask_changes_only_the_settings_it_names() {
    let (_server, ch) = site().await;
    let mut windows = WindowServiceClient::new(ch);
    assert_eq!(policy(&mut windows).await, defaults());

    // The README's example: only needs_window changes; customer approval of
    // OS updates stays on.
    let set = windows
        .set_fleet_policy(pb::SetFleetPolicyRequest {
            policy: Some(pb::FleetPolicy {
                fleet: "site".into(),
                needs_window: vec!["os_update".into()],
                ..Default::default()
            }),
            update_mask: mask(&["needs_window"]),
        })
        .await
        .unwrap()
        .into_inner()
        .policy;
    let want = pb::FleetPolicy {
        needs_window: vec!["os_update".into()],
        ..defaults()
    };
    assert_eq!(set.as_ref(), Some(&want));
    assert_eq!(policy(&mut windows).await, want);

    // Values of settings the mask does not name are ignored.
    windows
        .set_fleet_policy(pb::SetFleetPolicyRequest {
            policy: Some(pb::FleetPolicy {
                fleet: "site".into(),
                needs_window: vec!["reboot".into()],
                release_mode: "partial".into(),
                max_deferral_seconds: 60,
                ..Default::default()
            }),
            update_mask: mask(&["release_mode", "max_deferral_seconds"]),
        })
        .await
        .unwrap();
    let want = pb::FleetPolicy {
        release_mode: "partial".into(),
        max_deferral_seconds: 60,
        ..want
    };
    assert_eq!(policy(&mut windows).await, want);

    // An unknown path, or a mask naming nothing, is refused naming it.
    for (paths, field, names) in [
        (
            &["needs_window", "colour"][..],
            "update_mask.paths[1]:",
            "\"colour\"",
        ),
        (
            &["policy.needs_window"],
            "update_mask.paths[0]:",
            "\"policy.needs_window\"",
        ),
        (&["fleet"], "update_mask.paths[0]:", "\"fleet\""),
        (&[], "update_mask:", "names no setting"),
    ] {
        let err = windows
            .set_fleet_policy(pb::SetFleetPolicyRequest {
                policy: Some(pb::FleetPolicy {
                    fleet: "site".into(),
                    ..Default::default()
                }),
                update_mask: mask(paths),
            })
            .await
            .expect_err("a bad mask");
        assert_eq!(err.code(), Code::InvalidArgument, "{paths:?}: {err:?}");
        assert!(
            err.message().starts_with(field) && err.message().contains(names),
            "{paths:?}: {}",
            err.message()
        );
    }
    assert_eq!(
        policy(&mut windows).await,
        want,
        "a refused update changes nothing"
    );

    // Without a mask the whole policy is replaced: what is not given takes
    // its default, and an empty needs_approval means none.
    let replaced = windows
        .set_fleet_policy(pb::SetFleetPolicyRequest {
            policy: Some(pb::FleetPolicy {
                fleet: "site".into(),
                needs_window: vec!["reboot".into()],
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner()
        .policy;
    let want = pb::FleetPolicy {
        needs_window: vec!["reboot".into()],
        needs_approval: vec![],
        ..defaults()
    };
    assert_eq!(replaced, Some(want));
}

#[tokio::test]
async fn concurrent_partial_policy_updates_of_different_settings_all_survive() {
    let (_server, ch) = site().await;
    let changed = pb::FleetPolicy {
        fleet: "site".into(),
        needs_window: vec!["apply_env".into()],
        max_deferral_seconds: 600,
        on_deferral_expiry: "force".into(),
        needs_approval: vec![],
        release_mode: "partial".into(),
        on_missed_occurrence: "next".into(),
    };
    let fields = [
        "needs_window",
        "needs_approval",
        "max_deferral_seconds",
        "on_deferral_expiry",
        "release_mode",
        "on_missed_occurrence",
    ];
    let mut windows = WindowServiceClient::new(ch.clone());
    for round in 0..8 {
        windows
            .set_fleet_policy(pb::SetFleetPolicyRequest {
                policy: Some(defaults()),
                update_mask: None,
            })
            .await
            .unwrap();
        let updates = fields.map(|field| {
            let mut client = WindowServiceClient::new(ch.clone());
            let changed = changed.clone();
            tokio::spawn(async move {
                client
                    .set_fleet_policy(pb::SetFleetPolicyRequest {
                        policy: Some(changed),
                        update_mask: mask(&[field]),
                    })
                    .await
                    .map(|_| ())
            })
        });
        for u in updates {
            u.await.expect("task").expect("a partial update");
        }
        assert_eq!(policy(&mut windows).await, changed, "round {round}");
    }
}
