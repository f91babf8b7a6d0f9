//! `lockstep serve` storage options, as a new user meets them: the embedded
//! default in ./lockstep-data, Postgres with --database-url, a database that
//! is missing at start-up, and one that goes away while running.

mod support;

use std::time::Duration;

use lockstep::edge::grpc::pb;
use pb::device_service_client::DeviceServiceClient;
use support::Server;
use tonic::Code;

#[tokio::test]
async fn serve_without_flags_creates_lockstep_data_and_keeps_data_across_restarts() {
    let cwd = tempfile::tempdir().unwrap();
    let server = Server::spawn(&[], Some(cwd.path()));
    assert!(
        cwd.path().join("lockstep-data/lockstep.db").exists(),
        "created on first run"
    );
    DeviceServiceClient::new(server.channel().await)
        .create_fleet(pb::CreateFleetRequest {
            id: "kept".into(),
            name: "survives".into(),
        })
        .await
        .unwrap();
    assert!(server.terminate().success());

    let server = Server::spawn(&[], Some(cwd.path()));
    let fleets = DeviceServiceClient::new(server.channel().await)
        .list_fleets(pb::ListFleetsRequest {})
        .await
        .unwrap()
        .into_inner()
        .fleets;
    assert_eq!(
        fleets.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        vec!["survives"]
    );
}

#[test]
fn unreachable_database_at_start_up_exits_non_zero_with_a_clear_error() {
    let out = std::process::Command::new(support::BIN)
        .args([
            "serve",
            "--dashboard-listen",
            "off",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "postgres://lockstep:hunter2@127.0.0.1:1/lockstep",
            "--db-acquire-timeout",
            "2s",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "opening the Postgres database at postgres://lockstep:***@127.0.0.1:1/lockstep"
        ),
        "{err}"
    );
    assert!(
        !err.contains("hunter2"),
        "the password is never logged: {err}"
    );
}

#[test]
fn a_bad_data_dir_is_a_clear_error() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let out = std::process::Command::new(support::BIN)
        .args([
            "serve",
            "--dashboard-listen",
            "off",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("opening the embedded database"), "{err}");
}

#[tokio::test]
async fn postgres_outage_is_unavailable_then_recovers() {
    // A cluster of its own, so stopping it disturbs no other test.
    let cluster = lockstep::testkit::pgtemp::PgCluster::start().expect("throwaway PostgreSQL");
    let server = Server::start_pg(&cluster.url("postgres"));
    let ch = server.channel().await;
    let mut devs = DeviceServiceClient::new(ch.clone());
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    devs.create_fleet(pb::CreateFleetRequest {
        id: "before".into(),
        name: String::new(),
    })
    .await
    .unwrap();

    cluster.pause().unwrap();
    let err = devs
        .list_fleets(pb::ListFleetsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // Health of the database-backed services turns NOT_SERVING, the server stays up.
    let check = |svc: &str| tonic_health::pb::HealthCheckRequest {
        service: svc.into(),
    };
    let mut saw_not_serving = false;
    for _ in 0..40 {
        let r = health
            .check(check("lockstep.v1.DeviceService"))
            .await
            .unwrap()
            .into_inner();
        if r.status() == tonic_health::pb::health_check_response::ServingStatus::NotServing {
            saw_not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        saw_not_serving,
        "DeviceService should report NOT_SERVING while the database is down"
    );
    let overall = health.check(check("")).await.unwrap().into_inner();
    assert_eq!(
        overall.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    cluster.resume().unwrap();
    let mut recovered = false;
    for _ in 0..60 {
        if let Ok(r) = devs.list_fleets(pb::ListFleetsRequest {}).await {
            assert_eq!(r.into_inner().fleets.len(), 1, "data is intact");
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        recovered,
        "requests succeed again once the database is back"
    );
}
