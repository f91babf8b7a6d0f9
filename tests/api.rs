//! The catalog and device APIs end to end: the real `lockstep serve` binary
//! on each backend, driven by a gRPC client as a pipeline or operator would.

mod support;

use lockstep::edge::grpc::pb;
use pb::catalog_service_client::CatalogServiceClient;
use pb::device_service_client::DeviceServiceClient;
use support::Server;
use tonic::Code;

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

fn version(block: &str, v: &str, image: char, deps: &[(&str, bool)]) -> pb::BlockVersion {
    pb::BlockVersion {
        block: block.into(),
        version: v.into(),
        image_digest: digest(image),
        config: Some(pb::BlockConfig {
            command: vec![format!("/bin/{block}")],
            ..Default::default()
        }),
        env: Default::default(),
        depends_on: deps
            .iter()
            .map(|(b, r)| pb::Dependency {
                block: (*b).into(),
                restart: *r,
            })
            .collect(),
        update_strategy: None,
    }
}

fn refs(list: &[(&str, &str)]) -> Vec<pb::BlockRef> {
    list.iter()
        .map(|(b, v)| pb::BlockRef {
            block: (*b).into(),
            version: (*v).into(),
        })
        .collect()
}

async fn catalog_and_devices_work_end_to_end(server: &Server) {
    let ch = server.channel().await;
    let mut cat = CatalogServiceClient::new(ch.clone());
    let mut devs = DeviceServiceClient::new(ch);

    devs.create_fleet(pb::CreateFleetRequest {
        id: "inverters".into(),
        name: "Site inverters".into(),
    })
    .await
    .unwrap();
    for b in ["telemetry", "controller", "ui"] {
        cat.create_block(pb::CreateBlockRequest {
            name: b.into(),
            description: String::new(),
        })
        .await
        .unwrap();
    }
    let err = cat
        .create_block(pb::CreateBlockRequest {
            name: "ui".into(),
            description: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    for bv in [
        version("telemetry", "1.25.3", 'a', &[]),
        version("telemetry", "1.26.0", 'b', &[]),
        version("controller", "4.0.0", 'c', &[]),
        version("ui", "2.0.0", 'd', &[("telemetry", true)]),
    ] {
        cat.create_block_version(pb::CreateBlockVersionRequest {
            block_version: Some(bv),
        })
        .await
        .unwrap();
    }
    // A bad digest is refused naming the field.
    let mut bad = version("ui", "2.0.1", 'e', &[]);
    bad.image_digest = "latest".into();
    let err = cat
        .create_block_version(pb::CreateBlockVersionRequest {
            block_version: Some(bad),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("block_version.image_digest"),
        "{}",
        err.message()
    );
    // A version of an unknown block.
    let err = cat
        .create_block_version(pb::CreateBlockVersionRequest {
            block_version: Some(version("ghost", "1.0.0", 'f', &[])),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let r1 = cat
        .create_release(pb::CreateReleaseRequest {
            id: "2026.11.24-1".into(),
            fleet: "inverters".into(),
            blocks: refs(&[
                ("telemetry", "1.25.3"),
                ("controller", "4.0.0"),
                ("ui", "2.0.0"),
            ]),
            env: [("SITE".to_owned(), "north".to_owned())].into(),
        })
        .await
        .unwrap()
        .into_inner()
        .release
        .unwrap();
    assert_eq!(r1.blocks.len(), 3);
    cat.create_release(pb::CreateReleaseRequest {
        id: "2026.11.24-2".into(),
        fleet: "inverters".into(),
        blocks: refs(&[
            ("telemetry", "1.26.0"),
            ("controller", "4.0.0"),
            ("ui", "2.0.0"),
        ]),
        env: [("SITE".to_owned(), "north".to_owned())].into(),
    })
    .await
    .unwrap();

    // Unknown dependency: ui depends on telemetry, which this release lacks.
    let err = cat
        .create_release(pb::CreateReleaseRequest {
            id: "broken".into(),
            fleet: "inverters".into(),
            blocks: refs(&[("ui", "2.0.0")]),
            env: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("ui depends on telemetry"),
        "{}",
        err.message()
    );
    // A missing block version.
    let err = cat
        .create_release(pb::CreateReleaseRequest {
            id: "missing".into(),
            fleet: "inverters".into(),
            blocks: refs(&[("controller", "9.9.9")]),
            env: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("controller@9.9.9"),
        "{}",
        err.message()
    );
    // Bad version syntax names the field.
    let err = cat
        .create_release(pb::CreateReleaseRequest {
            id: "bad".into(),
            fleet: "inverters".into(),
            blocks: refs(&[("controller", "four")]),
            env: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("blocks[0].version"),
        "{}",
        err.message()
    );

    let got = cat
        .get_release(pb::GetReleaseRequest {
            id: "2026.11.24-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .release
        .unwrap();
    assert_eq!(got, r1);
    let list = cat
        .list_releases(pb::ListReleasesRequest {
            fleet: "inverters".into(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.releases.len(), 1);
    assert!(!list.next_page_token.is_empty());

    // The diff: telemetry's image changed, ui restarts because it depends on
    // telemetry, controller is untouched.
    let diff = cat
        .diff_releases(pb::DiffReleasesRequest {
            from: "2026.11.24-1".into(),
            to: "2026.11.24-2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let by_block: std::collections::BTreeMap<String, pb::BlockDiff> = diff
        .blocks
        .into_iter()
        .map(|b| (b.block.clone(), b))
        .collect();
    let tel = &by_block["telemetry"];
    assert_eq!(
        (tel.from_version.as_str(), tel.to_version.as_str()),
        ("1.25.3", "1.26.0")
    );
    assert!(matches!(
        tel.delta.as_ref().unwrap().change,
        Some(pb::block_delta::Change::Restart(pb::block_delta::Restart { cause })) if cause == pb::RestartCause::Image as i32
    ));
    assert_eq!(
        tel.disturbance.as_ref().unwrap().reason(),
        pb::Reason::UpdateRestart
    );
    let ui = &by_block["ui"];
    assert!(matches!(
        ui.delta.as_ref().unwrap().change,
        Some(pb::block_delta::Change::Unchanged(_))
    ));
    let d = ui.disturbance.as_ref().unwrap();
    assert_eq!(
        (d.reason(), d.because_of.as_str()),
        (pb::Reason::DependencyRestart, "telemetry")
    );
    assert!(
        by_block["controller"].disturbance.is_none(),
        "controller is untouched"
    );

    // Devices.
    let reg = devs
        .register_device(pb::RegisterDeviceRequest {
            id: "inv-0042".into(),
            fleet: "inverters".into(),
            tags: vec!["site-north".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reg.credential.starts_with("lsd_"), "credential shown once");
    devs.register_device(pb::RegisterDeviceRequest {
        id: "inv-0043".into(),
        fleet: "inverters".into(),
        tags: vec![],
    })
    .await
    .unwrap();
    let err = devs
        .register_device(pb::RegisterDeviceRequest {
            id: "inv-0042".into(),
            fleet: "inverters".into(),
            tags: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = devs
        .register_device(pb::RegisterDeviceRequest {
            id: "x".into(),
            fleet: "nope".into(),
            tags: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = devs
        .register_device(pb::RegisterDeviceRequest {
            id: "bad id".into(),
            fleet: "inverters".into(),
            tags: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("id"), "{}", err.message());

    let listed = devs
        .list_devices(pb::ListDevicesRequest {
            tag: "site-north".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .devices
            .iter()
            .map(|d| d.id.as_str())
            .collect::<Vec<_>>(),
        vec!["inv-0042"]
    );
    assert_eq!(listed.devices[0].status(), pb::DeviceStatus::Unknown);
    let page = devs
        .list_devices(pb::ListDevicesRequest {
            fleet: "inverters".into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let page2 = devs
        .list_devices(pb::ListDevicesRequest {
            fleet: "inverters".into(),
            page_size: 1,
            page_token: page.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            page.devices[0].id.as_str(),
            page2.devices[0].id.as_str(),
            page2.next_page_token.as_str()
        ),
        ("inv-0042", "inv-0043", "")
    );

    // Scoped env vars at fleet and device level.
    let fleet_owner = Some(pb::EnvOwner {
        owner: Some(pb::env_owner::Owner::Fleet("inverters".into())),
    });
    let dev_owner = Some(pb::EnvOwner {
        owner: Some(pb::env_owner::Owner::Device("inv-0042".into())),
    });
    devs.set_env(pb::SetEnvRequest {
        owner: fleet_owner.clone(),
        vars: vec![
            pb::EnvVar {
                name: "LOG_LEVEL".into(),
                value: "info".into(),
                blocks: vec![],
            },
            pb::EnvVar {
                name: "UPLINK".into(),
                value: "lte".into(),
                blocks: vec!["telemetry".into(), "ui".into()],
            },
        ],
    })
    .await
    .unwrap();
    devs.set_env(pb::SetEnvRequest {
        owner: dev_owner.clone(),
        vars: vec![pb::EnvVar {
            name: "GAIN".into(),
            value: "0.7".into(),
            blocks: vec!["controller".into()],
        }],
    })
    .await
    .unwrap();
    let err = devs
        .set_env(pb::SetEnvRequest {
            owner: dev_owner.clone(),
            vars: vec![pb::EnvVar {
                name: "1BAD".into(),
                value: String::new(),
                blocks: vec![],
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("vars[0].name"),
        "{}",
        err.message()
    );
    let env = devs
        .list_env(pb::ListEnvRequest {
            owner: fleet_owner.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut rows: Vec<(String, String, Vec<String>)> = env
        .vars
        .into_iter()
        .map(|v| (v.name, v.value, v.blocks))
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        vec![
            ("LOG_LEVEL".into(), "info".into(), vec![]),
            ("UPLINK".into(), "lte".into(), vec!["telemetry".into()]),
            ("UPLINK".into(), "lte".into(), vec!["ui".into()]),
        ]
    );
    let removed = devs
        .unset_env(pb::UnsetEnvRequest {
            owner: fleet_owner,
            keys: vec![pb::EnvVarKey {
                name: "UPLINK".into(),
                blocks: vec!["ui".into()],
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .removed;
    assert_eq!(removed, 1);

    let state = devs
        .get_device_state(pb::GetDeviceStateRequest {
            id: "inv-0042".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!state.reported, "no agent has reported yet");
    assert!(state.locks.is_empty());
    assert_eq!(state.device.unwrap().tags, vec!["site-north".to_owned()]);
    let err = devs
        .get_device_state(pb::GetDeviceStateRequest { id: "ghost".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn catalog_and_device_apis_on_sqlite() {
    let server = Server::start(&[]);
    catalog_and_devices_work_end_to_end(&server).await;
}

#[tokio::test]
async fn catalog_and_device_apis_on_postgres() {
    let url = lockstep::testkit::fresh_pg_url().await;
    let server = Server::start_pg(&url);
    catalog_and_devices_work_end_to_end(&server).await;
}

#[tokio::test]
async fn dependency_cycles_are_refused_naming_the_cycle() {
    let server = Server::start(&[]);
    let ch = server.channel().await;
    let mut cat = CatalogServiceClient::new(ch.clone());
    DeviceServiceClient::new(ch)
        .create_fleet(pb::CreateFleetRequest {
            id: "f".into(),
            name: String::new(),
        })
        .await
        .unwrap();
    for (b, dep) in [("a", "b"), ("b", "a")] {
        cat.create_block(pb::CreateBlockRequest {
            name: b.into(),
            description: String::new(),
        })
        .await
        .unwrap();
        cat.create_block_version(pb::CreateBlockVersionRequest {
            block_version: Some(version(b, "1.0.0", 'a', &[(dep, true)])),
        })
        .await
        .unwrap();
    }
    let err = cat
        .create_release(pb::CreateReleaseRequest {
            id: "cyclic".into(),
            fleet: "f".into(),
            blocks: refs(&[("a", "1.0.0"), ("b", "1.0.0")]),
            env: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("a -> b -> a"), "{}", err.message());
}

#[tokio::test]
async fn recurrence_windows_are_created_listed_and_expanded_for_a_device() {
    use pb::window_service_client::WindowServiceClient;
    let server = Server::start(&[]);
    let ch = server.channel().await;
    let mut devs = DeviceServiceClient::new(ch.clone());
    let mut windows = WindowServiceClient::new(ch);
    devs.create_fleet(pb::CreateFleetRequest {
        id: "site".into(),
        name: String::new(),
    })
    .await
    .unwrap();
    devs.register_device(pb::RegisterDeviceRequest {
        id: "d1".into(),
        fleet: "site".into(),
        tags: vec![],
    })
    .await
    .unwrap();
    let rule = "DTSTART;TZID=Europe/Amsterdam:20260104T020000\nRRULE:FREQ=MONTHLY;BYDAY=1SU";
    let created = windows
        .create_window(pb::CreateWindowRequest {
            scope: Some(pb::WindowScope {
                scope: Some(pb::window_scope::Scope::Fleet("site".into())),
            }),
            rule: Some(pb::create_window_request::Rule::Recurrence(
                pb::RecurrenceRule {
                    rrule: rule.into(),
                    duration_minutes: 180,
                },
            )),
        })
        .await
        .unwrap()
        .into_inner()
        .window
        .unwrap();
    assert!(
        matches!(created.rule, Some(pb::window_info::Rule::Recurrence(ref r)) if r.rrule == rule)
    );
    let next = windows
        .next_windows(pb::NextWindowsRequest {
            device: "d1".into(),
            count: 3,
        })
        .await
        .unwrap()
        .into_inner()
        .occurrences;
    assert_eq!(next.len(), 3);
    assert!(
        next.windows(2)
            .all(|w| w[0].start_unix_ms < w[1].start_unix_ms)
    );
    assert!(
        next.iter()
            .all(|w| w.end_unix_ms - w.start_unix_ms == 180 * 60_000)
    );
    // A floating local DTSTART is refused, naming the field.
    let err = windows
        .create_window(pb::CreateWindowRequest {
            scope: Some(pb::WindowScope {
                scope: Some(pb::window_scope::Scope::Fleet("site".into())),
            }),
            rule: Some(pb::create_window_request::Rule::Recurrence(
                pb::RecurrenceRule {
                    rrule: "DTSTART:20260104T020000\nRRULE:FREQ=DAILY".into(),
                    duration_minutes: 60,
                },
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("recurrence"), "{}", err.message());
}
