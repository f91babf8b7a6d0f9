//! One conformance suite, run against both store backends: Postgres (a
//! throwaway cluster, or `DATABASE_URL`) and the embedded SQLite. Each test
//! gets a fresh database.

use std::collections::BTreeSet;
use std::sync::Arc;

use lockstep::domain::*;
use lockstep::store::*;

// ------------------------------------------------------------ fixtures

fn b(s: &str) -> BlockName {
    BlockName::new(s).unwrap()
}
fn dev(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}
fn fleet_id(s: &str) -> FleetId {
    FleetId::new(s).unwrap()
}
fn ts(ms: i64) -> Timestamp {
    Timestamp(ms)
}

fn block_version(name: &str, version: &str, deps: &[&str]) -> BlockVersion {
    BlockVersion {
        name: b(name),
        version: version.parse().unwrap(),
        image_digest: ImageDigest::new(format!(
            "sha256:{:064x}",
            name.len() * 1000 + version.len()
        ))
        .unwrap(),
        config: BlockConfig {
            command: vec![format!("run-{name}")],
            labels: [("tier".to_owned(), "x".to_owned())].into(),
            ..Default::default()
        },
        env: [(EnvName::new("LOG").unwrap(), "info".to_owned())].into(),
        depends_on: deps
            .iter()
            .map(|d| Dependency {
                block: b(d),
                restart: true,
            })
            .collect(),
        update_strategy: UpdateStrategy::HandOver {
            timeout: std::time::Duration::from_secs(20),
        },
    }
}

/// What the reconciler reads for one device (a batch of one).
async fn rows<S: Store>(s: &S, device: &str) -> DeviceRows {
    let mut all = s.gather(&[dev(device)]).await.unwrap();
    all.remove(&dev(device)).expect("the device is gathered")
}

async fn with_fleet<S: Store>(s: &S, id: &str) {
    s.create_fleet(&Fleet {
        id: fleet_id(id),
        name: format!("Fleet {id}"),
        created: ts(1),
    })
    .await
    .unwrap();
}

fn device(id: &str, fleet: &str, tags: &[&str]) -> DeviceRecord {
    DeviceRecord {
        id: dev(id),
        fleet: fleet_id(fleet),
        tags: tags.iter().map(|t| Tag::new(*t).unwrap()).collect(),
        status: DeviceStatus::Unknown,
        credential_revoked: false,
        created: ts(5),
    }
}

async fn with_catalog<S: Store>(s: &S) -> Release {
    with_fleet(s, "f1").await;
    for name in ["a", "b"] {
        s.create_block(&b(name), "", ts(1)).await.unwrap();
    }
    let va = block_version("a", "1.0.0", &[]);
    let vb = block_version("b", "1.0.0", &["a"]);
    s.create_block_version(&va, ts(2)).await.unwrap();
    s.create_block_version(&vb, ts(2)).await.unwrap();
    let r = Release::new(
        ReleaseId::new("r1").unwrap(),
        fleet_id("f1"),
        vec![Arc::new(va), Arc::new(vb)],
        [(EnvName::new("SITE").unwrap(), "n".to_owned())].into(),
    )
    .unwrap();
    s.create_release(&r, ts(3)).await.unwrap();
    r
}

fn lock(device: &str, block: &str, held: bool, g: u64) -> LockReport {
    LockReport {
        device: dev(device),
        block: b(block),
        state: LockState {
            held,
            generation: Generation(g),
            since: ts(g as i64 * 10),
        },
    }
}

// ------------------------------------------------------------ the suite

async fn fleets_are_created_listed_and_unique<S: Store>(s: S) {
    with_fleet(&s, "north").await;
    with_fleet(&s, "alpha").await;
    let err = s
        .create_fleet(&Fleet {
            id: fleet_id("north"),
            name: String::new(),
            created: ts(2),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::AlreadyExists {
                entity: "fleet",
                ..
            }
        ),
        "{err}"
    );
    let ids: Vec<String> = s
        .list_fleets()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.id.to_string())
        .collect();
    assert_eq!(ids, vec!["alpha", "north"]);
    assert_eq!(
        s.get_fleet(&fleet_id("north")).await.unwrap().name,
        "Fleet north"
    );
    assert!(matches!(
        s.get_fleet(&fleet_id("nope")).await.unwrap_err(),
        StoreError::NotFound {
            entity: "fleet",
            ..
        }
    ));
}

async fn block_versions_round_trip_and_are_unique<S: Store>(s: S) {
    s.create_block(&b("ctl"), "controller", ts(1))
        .await
        .unwrap();
    assert!(matches!(
        s.create_block(&b("ctl"), "", ts(1)).await.unwrap_err(),
        StoreError::AlreadyExists {
            entity: "block",
            ..
        }
    ));
    let v10 = block_version("ctl", "1.10.0", &[]);
    let v9 = block_version("ctl", "1.9.0", &[]);
    s.create_block_version(&v10, ts(2)).await.unwrap();
    s.create_block_version(&v9, ts(3)).await.unwrap();
    let err = s.create_block_version(&v9, ts(4)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::AlreadyExists {
                entity: "block version",
                ..
            }
        ),
        "{err}"
    );
    let err = s
        .create_block_version(&block_version("ghost", "1.0.0", &[]), ts(4))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                entity: "block",
                ..
            }
        ),
        "{err}"
    );
    let versions: Vec<String> = s
        .list_block_versions(&b("ctl"))
        .await
        .unwrap()
        .iter()
        .map(|v| v.version.to_string())
        .collect();
    assert_eq!(versions, vec!["1.9.0", "1.10.0"], "semver order");
    let got = s
        .get_block_versions(&[(b("ctl"), "1.10.0".parse().unwrap())])
        .await
        .unwrap();
    assert_eq!(got, vec![v10]);
    let err = s
        .get_block_versions(&[(b("ctl"), "2.0.0".parse().unwrap())])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ctl@2.0.0"), "{err}");
}

async fn releases_round_trip_and_list_in_pages<S: Store>(s: S) {
    let r1 = with_catalog(&s).await;
    assert_eq!(s.get_release(r1.id()).await.unwrap(), r1);
    assert!(matches!(
        s.create_release(&r1, ts(4)).await.unwrap_err(),
        StoreError::AlreadyExists {
            entity: "release",
            ..
        }
    ));
    for i in 2..=5 {
        let r = Release::new(
            ReleaseId::new(format!("r{i}")).unwrap(),
            fleet_id("f1"),
            r1.blocks().values().cloned().collect(),
            Env::new(),
        )
        .unwrap();
        s.create_release(&r, ts(10 + i)).await.unwrap();
    }
    let p1 = s
        .list_releases(
            Some(&fleet_id("f1")),
            None,
            &PageRequest {
                size: 2,
                token: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        p1.items
            .iter()
            .map(|r| r.id.to_string())
            .collect::<Vec<_>>(),
        vec!["r1", "r2"]
    );
    assert_eq!(p1.items[0].blocks, 2);
    let p2 = s
        .list_releases(
            None,
            None,
            &PageRequest {
                size: 2,
                token: p1.next.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        p2.items
            .iter()
            .map(|r| r.id.to_string())
            .collect::<Vec<_>>(),
        vec!["r3", "r4"]
    );
    let p3 = s
        .list_releases(
            None,
            None,
            &PageRequest {
                size: 2,
                token: p2.next.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(p3.items.len(), 1);
    assert_eq!(p3.next, None);
    let other = s
        .list_releases(Some(&fleet_id("elsewhere")), None, &PageRequest::default())
        .await
        .unwrap();
    assert!(other.items.is_empty());
    // Within a scope: only the scope's fleets' releases.
    let scoped = s
        .list_releases(
            None,
            Some(&[fleet_id("elsewhere")].into()),
            &PageRequest::default(),
        )
        .await
        .unwrap();
    assert!(scoped.items.is_empty());
    let scoped = s
        .list_releases(
            None,
            Some(&[fleet_id("f1"), fleet_id("elsewhere")].into()),
            &PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(scoped.items.len(), 5);
}

async fn releases_need_their_fleet_and_block_versions<S: Store>(s: S) {
    let r1 = with_catalog(&s).await;
    let orphan = Release::new(
        ReleaseId::new("r9").unwrap(),
        fleet_id("nofleet"),
        r1.blocks().values().cloned().collect(),
        Env::new(),
    )
    .unwrap();
    assert!(matches!(
        s.create_release(&orphan, ts(1)).await.unwrap_err(),
        StoreError::NotFound {
            entity: "fleet",
            ..
        }
    ));
    let uncatalogued = Release::new(
        ReleaseId::new("r10").unwrap(),
        fleet_id("f1"),
        vec![Arc::new(block_version("a", "9.9.9", &[]))],
        Env::new(),
    )
    .unwrap();
    let err = s.create_release(&uncatalogued, ts(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                entity: "block version",
                ..
            }
        ),
        "{err}"
    );
    // Nothing of the failed release was kept.
    assert!(matches!(
        s.get_release(&ReleaseId::new("r10").unwrap())
            .await
            .unwrap_err(),
        StoreError::NotFound { .. }
    ));
}

async fn devices_register_filter_and_paginate<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    with_fleet(&s, "f2").await;
    for (id, fleet, tags) in [
        ("d1", "f1", vec!["site-a"]),
        ("d2", "f1", vec!["site-b", "beta"]),
        ("d3", "f1", vec!["site-a"]),
        ("d4", "f2", vec!["site-a"]),
    ] {
        s.register_device(&device(id, fleet, &tags), "hash")
            .await
            .unwrap();
    }
    assert!(matches!(
        s.register_device(&device("d1", "f1", &[]), "h")
            .await
            .unwrap_err(),
        StoreError::AlreadyExists {
            entity: "device",
            ..
        }
    ));
    assert!(matches!(
        s.register_device(&device("d9", "nofleet", &[]), "h")
            .await
            .unwrap_err(),
        StoreError::NotFound {
            entity: "fleet",
            ..
        }
    ));
    let got = s.get_device(&dev("d2")).await.unwrap();
    assert_eq!(got, device("d2", "f1", &["beta", "site-b"]));

    let ids = |p: &Page<DeviceRecord>| p.items.iter().map(|d| d.id.to_string()).collect::<Vec<_>>();
    let all_f1 = DeviceFilter {
        fleet: Some(fleet_id("f1")),
        ..Default::default()
    };
    let p1 = s
        .list_devices(
            &all_f1,
            &PageRequest {
                size: 2,
                token: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&p1), vec!["d1", "d2"]);
    assert_eq!(
        p1.items[1].tags.len(),
        2,
        "tags are loaded for listed devices"
    );
    let p2 = s
        .list_devices(
            &all_f1,
            &PageRequest {
                size: 2,
                token: p1.next,
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&p2), vec!["d3"]);
    assert_eq!(p2.next, None);

    let site_a = DeviceFilter {
        tag: Some(Tag::new("site-a").unwrap()),
        ..Default::default()
    };
    assert_eq!(
        ids(&s
            .list_devices(&site_a, &PageRequest::default())
            .await
            .unwrap()),
        vec!["d1", "d3", "d4"]
    );

    s.set_device_status(&dev("d3"), DeviceStatus::WaitingLock)
        .await
        .unwrap();
    let waiting = DeviceFilter {
        status: Some(DeviceStatus::WaitingLock),
        ..Default::default()
    };
    assert_eq!(
        ids(&s
            .list_devices(&waiting, &PageRequest::default())
            .await
            .unwrap()),
        vec!["d3"]
    );
    // Within a token's scope: only its fleets' devices, paged the same way.
    let in_f2 = DeviceFilter {
        tag: Some(Tag::new("site-a").unwrap()),
        within: Some([fleet_id("f2")].into()),
        ..Default::default()
    };
    assert_eq!(
        ids(&s
            .list_devices(&in_f2, &PageRequest::default())
            .await
            .unwrap()),
        vec!["d4"]
    );
    let both = DeviceFilter {
        within: Some([fleet_id("f1"), fleet_id("f2")].into()),
        ..Default::default()
    };
    let first = s
        .list_devices(
            &both,
            &PageRequest {
                size: 3,
                token: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&first), vec!["d1", "d2", "d3"]);
    let rest = s
        .list_devices(
            &both,
            &PageRequest {
                size: 3,
                token: first.next,
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&rest), vec!["d4"]);
    let none = DeviceFilter {
        within: Some(BTreeSet::new()),
        ..Default::default()
    };
    assert!(
        s.list_devices(&none, &PageRequest::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(matches!(
        s.set_device_status(&dev("zz"), DeviceStatus::Done)
            .await
            .unwrap_err(),
        StoreError::NotFound { .. }
    ));
}

async fn device_credentials_are_stored_as_given_and_revocable<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    s.register_device(&device("d1", "f1", &[]), "sha256-of-secret")
        .await
        .unwrap();
    assert_eq!(
        s.device_credential(&dev("d1")).await.unwrap(),
        ("sha256-of-secret".into(), false)
    );
    s.revoke_device_credential(&dev("d1")).await.unwrap();
    assert!(s.device_credential(&dev("d1")).await.unwrap().1);
    assert!(s.get_device(&dev("d1")).await.unwrap().credential_revoked);
    assert!(matches!(
        s.revoke_device_credential(&dev("nope")).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
}

async fn env_vars_upsert_unset_and_scope<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    s.register_device(&device("d1", "f1", &[]), "h")
        .await
        .unwrap();
    let fleet = EnvOwner::Fleet(fleet_id("f1"));
    let devo = EnvOwner::Device(dev("d1"));
    let var = |n: &str, v: &str, blocks: &[&str]| EnvVar {
        name: EnvName::new(n).unwrap(),
        value: v.into(),
        scope: if blocks.is_empty() {
            EnvScope::Device
        } else {
            EnvScope::Blocks(blocks.iter().map(|x| b(x)).collect())
        },
    };
    s.set_env(
        &fleet,
        &[var("X", "1", &[]), var("Y", "2", &["a", "b"])],
        ts(1),
    )
    .await
    .unwrap();
    s.set_env(&fleet, &[var("X", "3", &[])], ts(2))
        .await
        .unwrap();
    s.set_env(&devo, &[var("Z", "4", &["a"])], ts(2))
        .await
        .unwrap();
    let mut expect = EnvLayer::default();
    expect.set(&var("X", "3", &[])).unwrap();
    expect.set(&var("Y", "2", &["a", "b"])).unwrap();
    assert_eq!(s.env_layer(&fleet).await.unwrap(), expect);
    let removed = s
        .unset_env(
            &fleet,
            &[(
                EnvName::new("Y").unwrap(),
                EnvScope::Blocks([b("a"), b("zz")].into()),
            )],
        )
        .await
        .unwrap();
    assert_eq!(removed, 1, "only a's entry existed");
    let layer = s.env_layer(&fleet).await.unwrap();
    assert!(!layer.scoped.contains_key(&b("a")));
    assert_eq!(layer.scoped[&b("b")].len(), 1);
    let dl = s.env_layer(&devo).await.unwrap();
    assert_eq!(dl.scoped[&b("a")][&EnvName::new("Z").unwrap()], "4");
    assert!(matches!(
        s.set_env(&EnvOwner::Device(dev("nope")), &[var("X", "1", &[])], ts(1))
            .await
            .unwrap_err(),
        StoreError::NotFound {
            entity: "device",
            ..
        }
    ));
    assert!(matches!(
        s.env_layer(&EnvOwner::Fleet(fleet_id("nope")))
            .await
            .unwrap_err(),
        StoreError::NotFound {
            entity: "fleet",
            ..
        }
    ));
}

async fn device_reports_round_trip<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    s.register_device(&device("d1", "f1", &[]), "h")
        .await
        .unwrap();
    assert_eq!(s.device_report(&dev("d1")).await.unwrap(), None);
    let fp = lockstep::domain::env::fingerprint(&Env::new());
    let mut report = DeviceReport {
        agent_version: "0.1.0".into(),
        current_release: Some(ReleaseId::new("r1").unwrap()),
        os_version: Some("6.1".into()),
        blocks: [
            (
                b("a"),
                ReportedBlock {
                    version: "1.0.0".parse().unwrap(),
                    env_fingerprint: fp,
                },
            ),
            (
                b("b"),
                ReportedBlock {
                    version: "2.0.0".parse().unwrap(),
                    env_fingerprint: fp,
                },
            ),
        ]
        .into(),
        last_intent_seq: IntentSeq(7),
        reported: ts(100),
    };
    s.record_device_report(&dev("d1"), &report).await.unwrap();
    assert_eq!(
        s.device_report(&dev("d1")).await.unwrap().as_ref(),
        Some(&report)
    );
    // A later report replaces the block list, it does not merge.
    report.blocks.remove(&b("b"));
    report.os_version = None;
    s.record_device_report(&dev("d1"), &report).await.unwrap();
    assert_eq!(
        s.device_report(&dev("d1")).await.unwrap(),
        Some(report.clone())
    );
    assert!(matches!(
        s.record_device_report(&dev("ghost"), &report)
            .await
            .unwrap_err(),
        StoreError::NotFound {
            entity: "device",
            ..
        }
    ));
}

async fn lock_ingest_is_fenced_idempotent_and_recorded<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    s.register_device(&device("d1", "f1", &[]), "h")
        .await
        .unwrap();
    s.register_device(&device("d2", "f1", &[]), "h")
        .await
        .unwrap();
    let batch = vec![
        lock("d1", "a", true, 3),
        lock("d1", "a", false, 2), // older, same batch: superseded
        lock("d1", "b", true, 1),
        lock("d2", "a", true, 5),
        lock("ghost", "a", true, 1), // unknown device: dropped, not an error
    ];
    let out = s.ingest_lock_reports(&batch, ts(1000)).await.unwrap();
    assert_eq!(
        out,
        IngestOutcome {
            applied: 3,
            dropped: 2
        }
    );
    // Resending the same batch changes nothing.
    let again = s.ingest_lock_reports(&batch, ts(1001)).await.unwrap();
    assert_eq!(
        again,
        IngestOutcome {
            applied: 0,
            dropped: 5
        }
    );
    // An older generation never overwrites a newer one; a newer one does.
    let out = s
        .ingest_lock_reports(
            &[lock("d1", "a", false, 2), lock("d1", "b", false, 4)],
            ts(1002),
        )
        .await
        .unwrap();
    assert_eq!(out.applied, 1);
    let locks = s.device_locks(&dev("d1")).await.unwrap();
    assert_eq!(
        locks[&b("a")],
        LockState {
            held: true,
            generation: Generation(3),
            since: ts(30)
        }
    );
    assert_eq!(
        locks[&b("b")],
        LockState {
            held: false,
            generation: Generation(4),
            since: ts(40)
        }
    );
    let history = s.lock_history(&dev("d1"), &b("b")).await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|l| (l.held, l.generation.0))
            .collect::<Vec<_>>(),
        vec![(true, 1), (false, 4)]
    );
    assert!(s.ingest_lock_reports(&[], ts(1)).await.unwrap() == IngestOutcome::default());
}

async fn lock_history_is_pruned_by_age<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    s.register_device(&device("d1", "f1", &[]), "h")
        .await
        .unwrap();
    s.ingest_lock_reports(&[lock("d1", "a", true, 1)], ts(100))
        .await
        .unwrap();
    s.ingest_lock_reports(&[lock("d1", "a", false, 2)], ts(200))
        .await
        .unwrap();
    assert_eq!(s.prune_lock_history(ts(150)).await.unwrap(), 1);
    let h = s.lock_history(&dev("d1"), &b("a")).await.unwrap();
    assert_eq!(
        h.iter().map(|l| l.generation.0).collect::<Vec<_>>(),
        vec![2]
    );
    // Current state is untouched by pruning.
    assert_eq!(
        s.device_locks(&dev("d1")).await.unwrap()[&b("a")].generation,
        Generation(2)
    );
}

async fn intent_sequences_have_no_gaps_under_concurrent_writers<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    s.register_device(&device("d1", "f1", &[]), "h")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for w in 0..8u32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..15u32 {
                let n = 1 + (w + i) as usize % 3;
                let intents: Vec<NewIntent> = (0..n)
                    .map(|k| NewIntent {
                        kind: IntentKind::Notice,
                        body: format!("{{\"w\":{w},\"i\":{i},\"k\":{k}}}"),
                        operation: None,
                    })
                    .collect();
                let seqs = s.append_intents(&dev("d1"), &intents, ts(1)).await.unwrap();
                assert_eq!(seqs.len(), n);
                assert!(
                    seqs.windows(2).all(|p| p[1].0 == p[0].0 + 1),
                    "one call's seqs are consecutive"
                );
                got.extend(seqs);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let n = all.len() as u64;
    assert_eq!(
        all,
        (1..=n).map(IntentSeq).collect::<Vec<_>>(),
        "no gaps, no duplicates"
    );
    let stored = s.unacked_intents(&dev("d1")).await.unwrap();
    assert_eq!(stored.len() as u64, n);
    assert!(stored.windows(2).all(|p| p[0].seq < p[1].seq));
    assert!(matches!(
        s.append_intents(
            &dev("ghost"),
            &[NewIntent {
                kind: IntentKind::Cancel,
                body: "{}".into(),
                operation: None
            }],
            ts(1)
        )
        .await
        .unwrap_err(),
        StoreError::NotFound {
            entity: "device",
            ..
        }
    ));
}

async fn acknowledged_intents_leave_the_outbox<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    s.register_device(&device("d1", "f1", &[]), "h")
        .await
        .unwrap();
    let seqs = s
        .append_intents(
            &dev("d1"),
            &[
                NewIntent {
                    kind: IntentKind::ReleaseRequest,
                    body: "{\"block\":\"a\"}".into(),
                    operation: None,
                },
                NewIntent {
                    kind: IntentKind::Apply,
                    body: "{}".into(),
                    operation: None,
                },
            ],
            ts(10),
        )
        .await
        .unwrap();
    assert_eq!(seqs, vec![IntentSeq(1), IntentSeq(2)]);
    s.ack_intent(&dev("d1"), IntentSeq(1), "received", "{}", ts(11))
        .await
        .unwrap();
    s.ack_intent(&dev("d1"), IntentSeq(1), "released", "{}", ts(12))
        .await
        .unwrap();
    let left = s.unacked_intents(&dev("d1")).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].seq, IntentSeq(2));
    assert_eq!(left[0].kind, IntentKind::Apply);
    assert_eq!(left[0].created, ts(10));
    assert!(matches!(
        s.ack_intent(&dev("d1"), IntentSeq(99), "received", "{}", ts(13))
            .await
            .unwrap_err(),
        StoreError::NotFound {
            entity: "intent",
            ..
        }
    ));
}

async fn a_device_timeline_interleaves_intents_and_answers_newest_first<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    for d in ["d1", "d2"] {
        s.register_device(&device(d, "f1", &[]), "h").await.unwrap();
    }
    let op = s
        .create_operation(&dev("d1"), &OperationSpec::Reboot, None, ts(5))
        .await
        .unwrap();
    let intent = |kind, body: &str| NewIntent {
        kind,
        body: body.into(),
        operation: Some(op.id),
    };
    s.append_intents(
        &dev("d1"),
        &[intent(IntentKind::ReleaseRequest, "{\"block\":\"a\"}")],
        ts(10),
    )
    .await
    .unwrap();
    s.append_intents(&dev("d2"), &[intent(IntentKind::Notice, "{}")], ts(11))
        .await
        .unwrap();
    s.ack_intent(&dev("d1"), IntentSeq(1), "received", "{}", ts(12))
        .await
        .unwrap();
    s.append_intents(&dev("d1"), &[intent(IntentKind::Apply, "{}")], ts(13))
        .await
        .unwrap();
    s.ack_intent(
        &dev("d1"),
        IntentSeq(1),
        "released",
        "{\"block\":\"a\"}",
        ts(14),
    )
    .await
    .unwrap();
    s.ack_intent(&dev("d1"), IntentSeq(2), "applied", "{}", ts(14))
        .await
        .unwrap();

    let all = s.device_timeline(&dev("d1"), 100).await.unwrap();
    let seen: Vec<(i64, u64, String)> = all
        .iter()
        .map(|e| {
            let what = match &e.event {
                TimelineEvent::Sent { kind, .. } => format!("sent {}", kind.as_str()),
                TimelineEvent::Acked { answer, .. } => format!("acked {answer}"),
            };
            (e.at.0, e.seq.0, what)
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (14, 2, "acked applied".to_owned()),
            (14, 1, "acked released".to_owned()),
            (13, 2, "sent apply".to_owned()),
            (12, 1, "acked received".to_owned()),
            (10, 1, "sent release_request".to_owned()),
        ]
    );
    assert!(all.iter().all(|e| e.operation == Some(op.id)));
    assert_eq!(
        all[1].event,
        TimelineEvent::Acked {
            answer: "released".into(),
            body: "{\"block\":\"a\"}".into()
        }
    );
    assert_eq!(
        all[4].event,
        TimelineEvent::Sent {
            kind: IntentKind::ReleaseRequest,
            body: "{\"block\":\"a\"}".into()
        }
    );
    // The limit keeps the newest.
    let two = s.device_timeline(&dev("d1"), 2).await.unwrap();
    assert_eq!(two, all[..2].to_vec());
    assert_eq!(s.device_timeline(&dev("d2"), 100).await.unwrap().len(), 1);
    assert!(
        s.device_timeline(&dev("nobody"), 100)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn device_status_counts_are_per_fleet_and_status<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    with_fleet(&s, "f2").await;
    assert!(s.device_status_counts().await.unwrap().is_empty());
    for (d, f) in [("a1", "f1"), ("a2", "f1"), ("a3", "f1"), ("b1", "f2")] {
        s.register_device(&device(d, f, &[]), "h").await.unwrap();
    }
    s.set_device_status(&dev("a1"), DeviceStatus::WaitingLock)
        .await
        .unwrap();
    s.set_device_status(&dev("a2"), DeviceStatus::WaitingLock)
        .await
        .unwrap();
    s.set_device_status(&dev("b1"), DeviceStatus::Offline)
        .await
        .unwrap();
    let counts = s.device_status_counts().await.unwrap();
    assert_eq!(
        counts.get(&fleet_id("f1")),
        Some(&[(DeviceStatus::Unknown, 1), (DeviceStatus::WaitingLock, 2)].into())
    );
    assert_eq!(
        counts.get(&fleet_id("f2")),
        Some(&[(DeviceStatus::Offline, 1)].into())
    );
    assert_eq!(counts.len(), 2);
}

async fn operation_status_counts_count_every_stored_status<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    assert!(s.operation_status_counts().await.unwrap().is_empty());
    for d in ["d1", "d2"] {
        s.register_device(&device(d, "f1", &[]), "h").await.unwrap();
    }
    let r = |id: &str| OperationSpec::AssignRelease(ReleaseId::new(id).unwrap());
    // d1: r1 is superseded by r2, which then waits on a lock; d2: a reboot.
    s.create_operation(&dev("d1"), &r("r1"), None, ts(1))
        .await
        .unwrap();
    let r2 = s
        .create_operation(&dev("d1"), &r("r2"), None, ts(2))
        .await
        .unwrap();
    s.create_operation(&dev("d2"), &OperationSpec::Reboot, None, ts(3))
        .await
        .unwrap();
    let mut step = r2.clone();
    step.status = OpStatus::WaitingLock;
    s.record_step(&step, &[], ts(4)).await.unwrap();
    assert_eq!(
        s.operation_status_counts().await.unwrap(),
        vec![(OpStatus::Pending, 2), (OpStatus::WaitingLock, 1),]
    );
}

async fn audit_entries_append_and_list_in_order<S: Store>(s: S) {
    let e = |n: i64| AuditEntry {
        at: ts(n),
        actor: "ops@example".into(),
        action: "force".into(),
        subject: format!("device d{n}"),
        fleet: Some(fleet_id("f1")),
        reason: "inverter replaced".into(),
        details: "{}".into(),
    };
    let id1 = s.append_audit(&e(1)).await.unwrap();
    let id2 = s.append_audit(&e(2)).await.unwrap();
    assert!(id2 > id1);
    let filter = |after: i64| AuditFilter {
        after,
        limit: 10,
        ..Default::default()
    };
    let all = s.list_audit(&filter(0)).await.unwrap();
    assert_eq!(all, vec![(id1, e(1)), (id2, e(2))]);
    assert_eq!(s.list_audit(&filter(id1)).await.unwrap(), vec![(id2, e(2))]);
}

async fn audit_entries_filter_by_action_subject_fleet_and_scope<S: Store>(s: S) {
    let entry = |action: &str, subject: &str, fleet: Option<&str>| AuditEntry {
        at: ts(7),
        actor: "ci (token abc)".into(),
        action: action.into(),
        subject: subject.into(),
        fleet: fleet.map(fleet_id),
        reason: String::new(),
        details: "{}".into(),
    };
    let rows = [
        entry("force_requested", "device dev-1 operation 1", Some("f1")),
        entry(
            "operation_cancelled",
            "device dev-10 operation 2",
            Some("f1"),
        ),
        entry("force_requested", "device dev-2 operation 3", Some("f2")),
        entry("token_created", "token abc", None),
        entry("rollout_paused", "device dev-1", Some("f1")),
    ];
    let mut ids = Vec::new();
    for r in &rows {
        ids.push(s.append_audit(r).await.unwrap());
    }
    let got = |f: AuditFilter| {
        let s = s.clone();
        async move {
            s.list_audit(&f)
                .await
                .unwrap()
                .into_iter()
                .map(|(_, e)| e.subject)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        got(AuditFilter {
            action: Some("force_requested".into()),
            ..Default::default()
        })
        .await,
        vec!["device dev-1 operation 1", "device dev-2 operation 3"]
    );
    assert_eq!(
        got(AuditFilter {
            subject: Some("device dev-1".into()),
            ..Default::default()
        })
        .await,
        vec!["device dev-1 operation 1", "device dev-1"],
        "a subject matches itself and what it starts by whole words"
    );
    assert_eq!(
        got(AuditFilter {
            fleet: Some(fleet_id("f2")),
            ..Default::default()
        })
        .await,
        vec!["device dev-2 operation 3"]
    );
    assert_eq!(
        got(AuditFilter {
            within: Some([fleet_id("f1")].into()),
            ..Default::default()
        })
        .await,
        vec![
            "device dev-1 operation 1",
            "device dev-10 operation 2",
            "device dev-1"
        ],
        "a scope leaves out other fleets and entries of no fleet"
    );
    assert_eq!(
        got(AuditFilter {
            after: ids[1],
            limit: 2,
            ..Default::default()
        })
        .await,
        vec!["device dev-2 operation 3", "token abc"]
    );
    let none = s.list_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(none[3].1.fleet, None);
}

fn api_token(id: &str, role: Role, fleets: &[&str], expires: Option<i64>) -> ApiToken {
    ApiToken {
        id: TokenId::new(id).unwrap(),
        name: format!("{id} token"),
        role,
        scope: Scope::fleets(fleets.iter().map(|f| fleet_id(f))),
        created_by: "admin (token a1)".into(),
        created: ts(10),
        expires: expires.map(ts),
        revoked: None,
        revoked_by: None,
    }
}

async fn api_tokens_round_trip_by_hash_and_revoke_once<S: Store>(s: S) {
    let op = api_token("op1", Role::Operator, &["f1", "f2"], Some(5_000));
    s.create_token(&op, "hash-op1").await.unwrap();
    assert_eq!(
        s.get_token(&op.id).await.unwrap(),
        (op.clone(), "hash-op1".to_owned())
    );
    assert!(matches!(
        s.create_token(&op, "other").await.unwrap_err(),
        StoreError::AlreadyExists {
            entity: "api token",
            ..
        }
    ));
    assert!(matches!(
        s.get_token(&TokenId::new("nope").unwrap())
            .await
            .unwrap_err(),
        StoreError::NotFound {
            entity: "api token",
            ..
        }
    ));
    let viewer = api_token("v1", Role::Viewer, &[], None);
    s.create_token(&viewer, "hash-v1").await.unwrap();
    assert_eq!(
        s.list_tokens().await.unwrap(),
        vec![op.clone(), viewer.clone()]
    );

    let revoked = s
        .revoke_token(&op.id, "admin (token a1)", ts(20))
        .await
        .unwrap();
    assert_eq!(
        (revoked.revoked, revoked.revoked_by.as_deref()),
        (Some(ts(20)), Some("admin (token a1)"))
    );
    assert_eq!(s.get_token(&op.id).await.unwrap().0, revoked);
    assert!(matches!(
        s.revoke_token(&op.id, "x", ts(21)).await.unwrap_err(),
        StoreError::Conflict { .. }
    ));
    assert!(matches!(
        s.revoke_token(&TokenId::new("nope").unwrap(), "x", ts(21))
            .await
            .unwrap_err(),
        StoreError::NotFound { .. }
    ));
}

async fn a_bootstrap_token_is_stored_only_while_no_admin_token_is_usable<S: Store>(s: S) {
    let first = api_token("boot1", Role::Admin, &[], None);
    assert!(
        s.create_token_unless_admin(&first, "h1", ts(100))
            .await
            .unwrap()
    );
    let second = api_token("boot2", Role::Admin, &[], None);
    assert!(
        !s.create_token_unless_admin(&second, "h2", ts(100))
            .await
            .unwrap(),
        "an admin token exists"
    );
    // Other roles do not count; a revoked or expired admin does not either.
    s.create_token(&api_token("v", Role::Viewer, &[], None), "h")
        .await
        .unwrap();
    s.revoke_token(&first.id, "x", ts(200)).await.unwrap();
    s.create_token(&api_token("old", Role::Admin, &[], Some(300)), "h")
        .await
        .unwrap();
    assert!(
        !s.create_token_unless_admin(&second, "h2", ts(299))
            .await
            .unwrap(),
        "old is usable until 300"
    );
    assert!(
        s.create_token_unless_admin(&second, "h2", ts(300))
            .await
            .unwrap()
    );
    assert_eq!(s.get_token(&second.id).await.unwrap().1, "h2");
}

async fn operations_are_kept_in_order_and_steps_are_atomic_with_their_intents<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    s.register_device(&device("d1", "f1", &[]), "h")
        .await
        .unwrap();
    let r = |id: &str| OperationSpec::AssignRelease(ReleaseId::new(id).unwrap());
    let force = Force::new([b("a")].into(), "site visit").unwrap();
    let first = s
        .create_operation(&dev("d1"), &r("r1"), None, ts(1))
        .await
        .unwrap();
    let reboot = s
        .create_operation(&dev("d1"), &OperationSpec::Reboot, Some(&force), ts(2))
        .await
        .unwrap();
    let second = s
        .create_operation(&dev("d1"), &r("r2"), None, ts(3))
        .await
        .unwrap();
    // Creating never decides: the reconciler supersedes r1 later.
    assert_eq!(
        s.get_operation(first.id).await.unwrap().status,
        OpStatus::Pending
    );
    assert_eq!(s.get_operation(reboot.id).await.unwrap().force, Some(force));
    let active: Vec<OperationId> = s
        .active_operations(&dev("d1"))
        .await
        .unwrap()
        .iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(active, vec![first.id, reboot.id, second.id], "oldest first");
    assert_eq!(
        s.devices_with_active_operations().await.unwrap(),
        vec![dev("d1")]
    );
    let listed: Vec<OperationId> = s
        .list_operations(&dev("d1"))
        .await
        .unwrap()
        .iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(listed, vec![second.id, reboot.id, first.id]);

    // A step stores status and progress and appends intents in one transaction.
    let mut step = reboot.clone();
    step.status = OpStatus::WaitingLock;
    step.progress.requested.insert((b("a"), Generation(2)));
    let intent = NewIntent {
        kind: IntentKind::ReleaseRequest,
        body: "{}".into(),
        operation: Some(reboot.id),
    };
    let seqs = s
        .record_step(&step, std::slice::from_ref(&intent), ts(4))
        .await
        .unwrap();
    assert_eq!(seqs, vec![IntentSeq(1)]);
    let stored = s.get_operation(reboot.id).await.unwrap();
    assert_eq!(
        (stored.status, stored.progress.clone(), stored.generation),
        (OpStatus::WaitingLock, step.progress.clone(), 1)
    );
    assert_eq!(
        s.intent_info(&dev("d1"), IntentSeq(1)).await.unwrap(),
        Some((Some(reboot.id), IntentKind::ReleaseRequest))
    );
    assert_eq!(s.intent_info(&dev("d1"), IntentSeq(2)).await.unwrap(), None);
    // A stale generation is refused and appends nothing.
    let err = s.record_step(&step, &[intent], ts(5)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(s.unacked_intents(&dev("d1")).await.unwrap().len(), 1);
    assert!(matches!(
        s.create_operation(&dev("ghost"), &OperationSpec::Reboot, None, ts(1))
            .await
            .unwrap_err(),
        StoreError::NotFound {
            entity: "device",
            ..
        }
    ));
}

async fn windows_and_policies_attach_to_fleets_tags_and_devices<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    with_fleet(&s, "f2").await;
    s.register_device(&device("d1", "f1", &["site-a"]), "h")
        .await
        .unwrap();
    s.register_device(&device("d2", "f2", &[]), "h")
        .await
        .unwrap();
    assert_eq!(
        s.fleet_policy(&fleet_id("f1")).await.unwrap(),
        FleetPolicy::default()
    );
    let none = FleetPolicy {
        missed_moves_to_next: true,
        partial_releases: true,
        needs_window: Default::default(),
        needs_approval: ["reboot".to_owned()].into(),
        max_deferral_ms: 5_000,
        on_deferral_expiry: DeferralExpiry::Force,
    };
    s.set_fleet_policy(&fleet_id("f1"), &none, ts(1))
        .await
        .unwrap();
    assert_eq!(s.fleet_policy(&fleet_id("f1")).await.unwrap(), none);
    assert!(matches!(
        s.set_fleet_policy(&fleet_id("nope"), &none, ts(1))
            .await
            .unwrap_err(),
        StoreError::NotFound { .. }
    ));
    let rule = |n: i64| WindowRule::OneOff {
        start: ts(n),
        end: ts(n + 10),
    };
    let wf = s
        .create_window(&WindowScope::Fleet(fleet_id("f1")), &rule(100), ts(1))
        .await
        .unwrap();
    let wt = s
        .create_window(
            &WindowScope::Tag(Tag::new("site-a").unwrap()),
            &rule(200),
            ts(1),
        )
        .await
        .unwrap();
    let wd = s
        .create_window(&WindowScope::Device(dev("d2")), &rule(300), ts(1))
        .await
        .unwrap();
    let weekly = WindowRule::Weekly {
        days: [1, 5].into(),
        start: "02:30".parse().unwrap(),
        duration: jiff::SignedDuration::from_mins(90),
        tz: "Europe/Amsterdam".into(),
    };
    let ww = s
        .create_window(&WindowScope::Fleet(fleet_id("f2")), &weekly, ts(1))
        .await
        .unwrap();
    let ids = |v: Vec<Window>| v.into_iter().map(|w| w.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.windows_for_device(&dev("d1")).await.unwrap()),
        vec![wf.id, wt.id]
    );
    assert_eq!(
        ids(s.windows_for_device(&dev("d2")).await.unwrap()),
        vec![wd.id, ww.id]
    );
    let all = s.list_windows().await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[3].rule, weekly);
    s.delete_window(wt.id).await.unwrap();
    assert_eq!(
        ids(s.windows_for_device(&dev("d1")).await.unwrap()),
        vec![wf.id]
    );
    assert!(matches!(
        s.delete_window(wt.id).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
}

async fn windows_and_policies_need_their_fleet_or_device_and_partial_updates_merge<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    s.register_device(&device("d1", "f1", &[]), "h")
        .await
        .unwrap();
    let rule = WindowRule::OneOff {
        start: ts(100),
        end: ts(110),
    };
    for (scope, want) in [
        (WindowScope::Fleet(fleet_id("nope")), ("fleet", "nope")),
        (WindowScope::Device(dev("ghost")), ("device", "ghost")),
    ] {
        match s.create_window(&scope, &rule, ts(1)).await {
            Err(StoreError::NotFound { entity, key }) => {
                assert_eq!((entity, key.as_str()), want);
            }
            other => panic!("{scope:?}: {other:?}"),
        }
    }
    assert!(s.list_windows().await.unwrap().is_empty());
    // A tag needs no device yet; existing scopes are fine.
    for scope in [
        WindowScope::Tag(Tag::new("nobody-yet").unwrap()),
        WindowScope::Fleet(fleet_id("f1")),
        WindowScope::Device(dev("d1")),
    ] {
        s.create_window(&scope, &rule, ts(1)).await.unwrap();
    }
    assert_eq!(s.list_windows().await.unwrap().len(), 3);

    let values = FleetPolicy {
        needs_window: ["apply_env".to_owned()].into(),
        needs_approval: BTreeSet::new(),
        max_deferral_ms: 60_000,
        on_deferral_expiry: DeferralExpiry::Force,
        partial_releases: true,
        missed_moves_to_next: true,
    };
    let only = |field: PolicyField| PolicyUpdate::Fields {
        values: values.clone(),
        fields: [field].into(),
    };
    assert!(matches!(
        s.update_fleet_policy(&fleet_id("nope"), &only(PolicyField::ReleaseMode), ts(1))
            .await
            .unwrap_err(),
        StoreError::NotFound {
            entity: "fleet",
            ..
        }
    ));
    // Concurrent updates of different settings: every one lands.
    for round in 0..5 {
        s.set_fleet_policy(&fleet_id("f1"), &FleetPolicy::default(), ts(round))
            .await
            .unwrap();
        let updates = PolicyField::ALL.map(only);
        let f1 = fleet_id("f1");
        let done = futures::future::join_all(
            updates
                .iter()
                .map(|u| s.update_fleet_policy(&f1, u, ts(10))),
        )
        .await;
        for d in done {
            d.unwrap();
        }
        assert_eq!(
            s.fleet_policy(&fleet_id("f1")).await.unwrap(),
            values,
            "round {round}"
        );
    }
    // An update answers the whole policy as it now is.
    let back = PolicyUpdate::Fields {
        values: FleetPolicy::default(),
        fields: [PolicyField::ReleaseMode].into(),
    };
    let now = s
        .update_fleet_policy(&fleet_id("f1"), &back, ts(20))
        .await
        .unwrap();
    assert_eq!(
        now,
        FleetPolicy {
            partial_releases: false,
            ..values.clone()
        }
    );
    assert_eq!(s.fleet_policy(&fleet_id("f1")).await.unwrap(), now);
    let replaced = s
        .update_fleet_policy(
            &fleet_id("f1"),
            &PolicyUpdate::Replace(FleetPolicy::default()),
            ts(21),
        )
        .await
        .unwrap();
    assert_eq!(replaced, FleetPolicy::default());
}

async fn rollouts_store_their_plan_and_start_members_in_plan_order<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    with_fleet(&s, "f2").await;
    for (id, tags) in [
        ("d1", &["edge"][..]),
        ("d2", &["edge"][..]),
        ("d3", &[][..]),
        ("d4", &["edge"][..]),
    ] {
        s.register_device(&device(id, "f1", tags), "h")
            .await
            .unwrap();
    }
    s.register_device(&device("other", "f2", &[]), "h")
        .await
        .unwrap();
    let r1 = ReleaseId::new("r1").unwrap();
    s.record_device_report(
        &dev("d4"),
        &DeviceReport {
            agent_version: "t".into(),
            current_release: Some(r1.clone()),
            os_version: Some("os-2".into()),
            blocks: Default::default(),
            last_intent_seq: IntentSeq(0),
            reported: ts(1),
        },
    )
    .await
    .unwrap();
    let target = RolloutTarget::Release(r1.clone());
    let edge = Tag::new("edge").unwrap();
    let candidates = s
        .rollout_candidates(&fleet_id("f1"), Some(&edge), &target)
        .await
        .unwrap();
    assert_eq!(
        candidates,
        vec![
            PlanDevice {
                id: dev("d1"),
                at_target: false
            },
            PlanDevice {
                id: dev("d2"),
                at_target: false
            },
            PlanDevice {
                id: dev("d4"),
                at_target: true
            },
        ]
    );
    let os = s
        .rollout_candidates(
            &fleet_id("f1"),
            None,
            &RolloutTarget::OsVersion("os-2".into()),
        )
        .await
        .unwrap();
    assert_eq!(os.len(), 4);
    assert_eq!(os.iter().filter(|d| d.at_target).count(), 1);

    let strategy = Strategy {
        canary: 1,
        batches: vec![Amount::Count(2)],
        max_in_flight: 3,
        ..Strategy::default()
    };
    let new = NewRollout {
        fleet: fleet_id("f1"),
        selector: None,
        target: target.clone(),
        strategy: strategy.clone(),
        seed: u64::MAX - 3,
        created_by: "ops".into(),
    };
    let all = s
        .rollout_candidates(&fleet_id("f1"), None, &target)
        .await
        .unwrap();
    let the_plan = plan(&all, &strategy, new.seed);
    let rollout = s
        .create_rollout(&new, &the_plan, false, ts(10))
        .await
        .unwrap();
    assert_eq!(rollout.devices, 3);
    assert_eq!(rollout.skipped, 1);
    assert_eq!(s.get_rollout(rollout.id).await.unwrap(), rollout);
    assert_eq!(s.active_rollouts().await.unwrap(), vec![rollout.id]);

    // One active rollout of a kind per fleet: refused, or superseded.
    let again = s.create_rollout(&new, &the_plan, false, ts(11)).await;
    assert!(
        matches!(&again, Err(StoreError::Precondition { message }) if message.contains("still active")),
        "{again:?}"
    );
    let os_rollout = NewRollout {
        target: RolloutTarget::OsVersion("os-3".into()),
        ..new.clone()
    };
    let os_one = s
        .create_rollout(&os_rollout, &the_plan, false, ts(12))
        .await
        .expect("another kind is fine");

    let counts = s.rollout_batch_counts(rollout.id).await.unwrap();
    let sizes: Vec<u64> = counts.iter().map(BatchCounts::size).collect();
    assert_eq!(sizes, vec![1, 2]);
    assert!(counts.iter().all(|c| c.queued == c.size()));

    // Starting follows plan order within a batch, and links the operations.
    let started = s
        .start_rollout_members(rollout.id, 1, 1, ts(20))
        .await
        .unwrap();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].device, the_plan.batches[1][0]);
    assert_eq!(started[0].spec, OperationSpec::AssignRelease(r1.clone()));
    let started = s
        .start_rollout_members(rollout.id, 1, 5, ts(21))
        .await
        .unwrap();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].device, the_plan.batches[1][1]);
    let counts = s.rollout_batch_counts(rollout.id).await.unwrap();
    assert_eq!(counts[1].in_flight, 2);
    assert_eq!(counts[0].queued, 1);
    assert_eq!(
        s.rollout_active_operations(rollout.id).await.unwrap().len(),
        2
    );
    let statuses = s.rollout_device_statuses(rollout.id).await.unwrap();
    assert_eq!(statuses.values().sum::<u64>(), 3);

    // A finished operation counts as succeeded.
    let mut op = started[0].clone();
    op.status = OpStatus::Done;
    s.record_step(&op, &[], ts(22)).await.unwrap();
    let counts = s.rollout_batch_counts(rollout.id).await.unwrap();
    assert_eq!((counts[1].succeeded, counts[1].in_flight), (1, 1));

    // Progress is compare-and-set on the state; paused starts nothing.
    let paused = RolloutProgress {
        state: RolloutState::Paused,
        ..rollout.progress
    };
    s.update_rollout(
        rollout.id,
        RolloutState::Running,
        &paused,
        Some("threshold"),
        ts(30),
    )
    .await
    .unwrap();
    let stale = s
        .update_rollout(
            rollout.id,
            RolloutState::Running,
            &rollout.progress,
            None,
            ts(31),
        )
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    assert!(
        s.start_rollout_members(rollout.id, 0, 1, ts(32))
            .await
            .unwrap()
            .is_empty()
    );
    let got = s.get_rollout(rollout.id).await.unwrap();
    assert_eq!(got.progress.state, RolloutState::Paused);
    assert_eq!(got.message, "threshold");

    // Superseding marks the older one.
    let newer = s
        .create_rollout(&new, &the_plan, true, ts(40))
        .await
        .unwrap();
    assert_eq!(
        s.get_rollout(rollout.id).await.unwrap().progress.state,
        RolloutState::Superseded
    );
    let listed: Vec<RolloutId> = s
        .list_rollouts(Some(&fleet_id("f1")))
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, vec![newer.id, os_one.id, rollout.id]);
    assert!(
        s.list_rollouts(Some(&fleet_id("f2")))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        s.get_rollout(RolloutId(999_999)).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
}

fn env_of(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| (EnvName::new(*k).unwrap(), (*v).to_owned()))
        .collect()
}

async fn a_plan_is_written_whole_or_not_at_all_guarded_by_generations<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    s.register_device(&device("d1", "f1", &[]), "h")
        .await
        .unwrap();
    let reboot = s
        .create_operation(&dev("d1"), &OperationSpec::Reboot, None, ts(1))
        .await
        .unwrap();
    let restart = s
        .create_operation(
            &dev("d1"),
            &OperationSpec::RestartBlock(b("b")),
            None,
            ts(2),
        )
        .await
        .unwrap();
    let mut waiting = reboot.clone();
    waiting.status = OpStatus::WaitingLock;
    waiting.progress.requested.insert((b("a"), Generation(3)));
    let mut applying = restart.clone();
    applying.status = OpStatus::Applying;
    applying.progress.applied_env = [(b("b"), env_of(&[("MODE", "x")]))].into();
    let audit = AuditEntry {
        at: ts(3),
        actor: "scheduler".into(),
        action: "force_applied".into(),
        subject: format!("device d1 operation {}", restart.id),
        fleet: Some(fleet_id("f1")),
        reason: "site visit".into(),
        details: "{}".into(),
    };
    let plan = PlanWrite {
        ops: vec![(waiting.clone(), 0), (applying.clone(), 0)],
        intents: vec![
            NewIntent {
                kind: IntentKind::ReleaseRequest,
                body: "{}".into(),
                operation: Some(reboot.id),
            },
            NewIntent {
                kind: IntentKind::Apply,
                body: "{}".into(),
                operation: Some(restart.id),
            },
        ],
        withdrawn: vec![],
        approvals: vec![ApprovalChange::Request {
            operation: reboot.id,
            audit: AuditEntry {
                action: "approval_requested".into(),
                ..audit.clone()
            },
        }],
        audits: vec![audit.clone()],
        device_status: Some(DeviceStatus::Applying),
        applied_env: Some([(b("a"), env_of(&[("MODE", "y")]))].into()),
        wake_at: Some(ts(500)),
        events: vec![lockstep::domain::NewEvent::device(
            &s.get_device(&dev("d1")).await.unwrap().fleet,
            &dev("d1"),
            Some(reboot.id),
            lockstep::domain::EventKind::Applying,
        )],
        session_epoch: None,
    };
    let seqs = s.write_plan(&dev("d1"), &plan, ts(3)).await.unwrap();
    assert_eq!(seqs, vec![IntentSeq(1), IntentSeq(2)]);
    // The plan's events are in the log, written with it.
    let logged = lockstep::store::ReplicaStore::events_after(&s, 0, 10)
        .await
        .unwrap();
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].event.operation, Some(reboot.id));
    let stored = s.get_operation(reboot.id).await.unwrap();
    assert_eq!(
        (stored.status, stored.generation, stored.progress),
        (OpStatus::WaitingLock, 1, waiting.progress.clone())
    );
    let stored = s.get_operation(restart.id).await.unwrap();
    assert_eq!((stored.status, stored.generation), (OpStatus::Applying, 1));
    assert_eq!(stored.progress.applied_env, applying.progress.applied_env);
    assert_eq!(
        s.get_device(&dev("d1")).await.unwrap().status,
        DeviceStatus::Applying
    );
    let state = rows(&s, "d1").await.plan_state;
    assert_eq!(
        state.applied_env,
        [(b("a"), env_of(&[("MODE", "y")]))].into()
    );
    assert_eq!(state.wake_at, Some(ts(500)));
    assert_eq!(state.last_apply_answer_at, None);
    s.ack_intent(&dev("d1"), IntentSeq(2), "applied", "{}", ts(3))
        .await
        .unwrap();
    assert_eq!(
        rows(&s, "d1").await.plan_state.last_apply_answer_at,
        Some(ts(3))
    );
    let approval = s.latest_approval(reboot.id).await.unwrap().unwrap();
    assert_eq!(approval.status, ApprovalStatus::Requested);
    let audits = s.list_audit(&AuditFilter::default()).await.unwrap();
    let actions: BTreeSet<String> = audits.iter().map(|(_, a)| a.action.clone()).collect();
    assert_eq!(
        actions,
        ["approval_requested".to_owned(), "force_applied".to_owned()].into()
    );
    assert!(
        audits
            .iter()
            .any(|(_, a)| a.details.contains(&approval.id.to_string())),
        "the request's audit entry names the approval"
    );
    assert_eq!(
        s.due_wakeups(ts(499)).await.unwrap(),
        Vec::<DeviceId>::new()
    );
    assert_eq!(s.due_wakeups(ts(500)).await.unwrap(), vec![dev("d1")]);
    assert_eq!(s.next_wakeup().await.unwrap(), Some(ts(500)));

    // The same plan again is decided on generation 0: nothing of it lands,
    // not even the parts about other rows.
    let stale = PlanWrite {
        ops: vec![(applying.clone(), 0)],
        intents: vec![NewIntent {
            kind: IntentKind::Notice,
            body: "{}".into(),
            operation: Some(restart.id),
        }],
        device_status: Some(DeviceStatus::Failed),
        wake_at: None,
        audits: vec![audit],
        ..PlanWrite::default()
    };
    let err = s.write_plan(&dev("d1"), &stale, ts(4)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    // Only the release request is left unacknowledged (the apply was
    // answered above); the stale plan's notice was not appended.
    assert_eq!(s.unacked_intents(&dev("d1")).await.unwrap().len(), 1);
    assert_eq!(
        s.get_device(&dev("d1")).await.unwrap().status,
        DeviceStatus::Applying
    );
    assert_eq!(rows(&s, "d1").await.plan_state.wake_at, Some(ts(500)));
    assert_eq!(
        s.list_audit(&AuditFilter::default()).await.unwrap().len(),
        2
    );
}

async fn the_reconcilers_facts_are_the_latest_answers_and_open_requests<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    s.register_device(&device("d1", "f1", &[]), "h")
        .await
        .unwrap();
    let op = s
        .create_operation(&dev("d1"), &OperationSpec::Reboot, None, ts(1))
        .await
        .unwrap();
    let other = s
        .create_operation(
            &dev("d1"),
            &OperationSpec::RestartBlock(b("c")),
            None,
            ts(1),
        )
        .await
        .unwrap();
    let intent = |kind, op: &OperationRecord| NewIntent {
        kind,
        body: "{}".into(),
        operation: Some(op.id),
    };
    let seqs = s
        .append_intents(
            &dev("d1"),
            &[
                intent(IntentKind::ReleaseRequest, &op),
                intent(IntentKind::ReleaseRequest, &op),
                intent(IntentKind::Apply, &op),
                intent(IntentKind::ReleaseRequest, &other),
            ],
            ts(2),
        )
        .await
        .unwrap();
    // a defers twice (the later counts), b releases, the apply is stale.
    s.ack_intent(
        &dev("d1"),
        seqs[0],
        "deferred",
        r#"{"block":"a","detail":{"until_unix_ms":100,"message":""}}"#,
        ts(3),
    )
    .await
    .unwrap();
    s.ack_intent(
        &dev("d1"),
        seqs[0],
        "deferred",
        r#"{"block":"a","detail":{"until_unix_ms":200,"message":""}}"#,
        ts(4),
    )
    .await
    .unwrap();
    s.ack_intent(
        &dev("d1"),
        seqs[1],
        "released",
        r#"{"block":"b","detail":{}}"#,
        ts(4),
    )
    .await
    .unwrap();
    s.ack_intent(
        &dev("d1"),
        seqs[2],
        "received",
        r#"{"block":"","detail":{}}"#,
        ts(5),
    )
    .await
    .unwrap();
    s.ack_intent(
        &dev("d1"),
        seqs[2],
        "stale",
        r#"{"block":"","detail":{"message":"moved"}}"#,
        ts(6),
    )
    .await
    .unwrap();
    let facts = rows(&s, "d1").await.acks;
    assert_eq!(facts.answers, [(op.id, ApplyOutcome::Stale)].into());
    assert_eq!(
        facts.deferrals,
        [(op.id, [(b("a"), ts(200))].into())].into()
    );
    // A newer apply without an answer hides the old answer.
    let newer = s
        .append_intents(&dev("d1"), &[intent(IntentKind::Apply, &op)], ts(7))
        .await
        .unwrap();
    assert!(rows(&s, "d1").await.acks.answers.is_empty());
    s.ack_intent(
        &dev("d1"),
        newer[0],
        "failed",
        r#"{"block":"","detail":{"error":"","held_by":["a"]}}"#,
        ts(8),
    )
    .await
    .unwrap();
    assert_eq!(
        rows(&s, "d1").await.acks.answers,
        [(
            op.id,
            ApplyOutcome::Blocked {
                held_by: vec![b("a")]
            }
        )]
        .into()
    );

    // Open requests: not released, not withdrawn.
    let open = rows(&s, "d1").await.open_requests;
    assert_eq!(
        open,
        vec![
            reconcile::OpenRequest {
                operation: op.id,
                seq: seqs[0]
            },
            reconcile::OpenRequest {
                operation: other.id,
                seq: seqs[3]
            },
        ]
    );
    let withdraw = PlanWrite {
        intents: vec![intent(IntentKind::Cancel, &other)],
        withdrawn: vec![seqs[3]],
        ..PlanWrite::default()
    };
    s.write_plan(&dev("d1"), &withdraw, ts(9)).await.unwrap();
    assert_eq!(
        rows(&s, "d1").await.open_requests,
        vec![reconcile::OpenRequest {
            operation: op.id,
            seq: seqs[0]
        }]
    );
}

async fn env_changes_merge_only_when_about_exactly_the_same_blocks<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    s.register_device(&device("d1", "f1", &[]), "h")
        .await
        .unwrap();
    let env = |blocks: &[&str]| {
        OperationSpec::ApplyEnv(if blocks.is_empty() {
            EnvTarget::AllBlocks
        } else {
            EnvTarget::Blocks(blocks.iter().map(|x| b(x)).collect())
        })
    };
    let a1 = s
        .create_operation(&dev("d1"), &env(&["a"]), None, ts(1))
        .await
        .unwrap();
    let a2 = s
        .create_operation(&dev("d1"), &env(&["a"]), None, ts(2))
        .await
        .unwrap();
    let b1 = s
        .create_operation(&dev("d1"), &env(&["b"]), None, ts(3))
        .await
        .unwrap();
    let ab = s
        .create_operation(&dev("d1"), &env(&["a", "b"]), None, ts(4))
        .await
        .unwrap();
    let all1 = s
        .create_operation(&dev("d1"), &env(&[]), None, ts(5))
        .await
        .unwrap();
    let all2 = s
        .create_operation(&dev("d1"), &env(&[]), None, ts(6))
        .await
        .unwrap();
    assert_eq!(a1.id, a2.id, "same blocks merge");
    assert_ne!(a1.id, b1.id, "other blocks never merge");
    assert_ne!(ab.id, a1.id);
    assert_eq!(all1.id, all2.id);
    assert_eq!(s.get_operation(ab.id).await.unwrap().spec, env(&["a", "b"]));
    // One that started applying takes no more changes.
    let mut applying = s.get_operation(a1.id).await.unwrap();
    applying.status = OpStatus::Applying;
    s.record_step(&applying, &[], ts(7)).await.unwrap();
    let a3 = s
        .create_operation(&dev("d1"), &env(&["a"]), None, ts(8))
        .await
        .unwrap();
    assert_ne!(a3.id, a1.id);
}

async fn env_edits_snapshot_the_running_env_and_create_their_operations_at_once<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    for d in ["d1", "d2"] {
        s.register_device(&device(d, "f1", &[]), "h").await.unwrap();
    }
    let var = |name: &str, value: &str, blocks: &[&str]| EnvVar {
        name: EnvName::new(name).unwrap(),
        value: value.into(),
        scope: if blocks.is_empty() {
            EnvScope::Device
        } else {
            EnvScope::Blocks(blocks.iter().map(|x| b(x)).collect())
        },
    };
    // d1 reports blocks a and b; d2 never reported.
    let mut report = DeviceReport {
        agent_version: "t".into(),
        current_release: None,
        os_version: None,
        blocks: Default::default(),
        last_intent_seq: IntentSeq(0),
        reported: ts(1),
    };
    for x in ["a", "b"] {
        report.blocks.insert(
            b(x),
            ReportedBlock {
                version: "1.0.0".parse().unwrap(),
                env_fingerprint: lockstep::domain::env::fingerprint(&Env::new()),
            },
        );
    }
    s.record_device_report(&dev("d1"), &report).await.unwrap();
    s.set_env(
        &EnvOwner::Fleet(fleet_id("f1")),
        &[var("SITE", "north", &[])],
        ts(1),
    )
    .await
    .unwrap();
    let target = EnvTarget::Blocks([b("a")].into());
    let changed = s
        .change_env(
            &EnvOwner::Fleet(fleet_id("f1")),
            &EnvEdit {
                set: vec![var("MODE", "eco", &["a"])],
                unset: vec![],
            },
            &target,
            ts(2),
        )
        .await
        .unwrap();
    assert_eq!(changed.removed, 0);
    let devices: Vec<&str> = changed
        .operations
        .iter()
        .map(|o| o.device.as_str())
        .collect();
    assert_eq!(
        devices,
        vec!["d1", "d2"],
        "one operation per device of the fleet"
    );
    assert!(
        changed
            .operations
            .iter()
            .all(|o| o.spec == OperationSpec::ApplyEnv(target.clone()))
    );
    // d1's blocks run with what was stored before the edit: SITE, no MODE.
    let site: Env = [(EnvName::new("SITE").unwrap(), "north".to_owned())].into();
    let applied = rows(&s, "d1").await.plan_state.applied_env;
    assert_eq!(applied, [(b("a"), site.clone()), (b("b"), site)].into());
    assert!(rows(&s, "d2").await.plan_state.applied_env.is_empty());
    let layer = s.env_layer(&EnvOwner::Fleet(fleet_id("f1"))).await.unwrap();
    assert_eq!(layer.scoped[&b("a")][&EnvName::new("MODE").unwrap()], "eco");
    // One read gives a device both levels, as the two layer reads do.
    s.set_env(
        &EnvOwner::Device(dev("d1")),
        &[var("LEVEL", "2", &[])],
        ts(2),
    )
    .await
    .unwrap();
    assert_eq!(
        rows(&s, "d1").await.env,
        EnvContext {
            fleet: layer,
            device: s.env_layer(&EnvOwner::Device(dev("d1"))).await.unwrap(),
        }
    );
    // A second edit about the same blocks merges into the same operations;
    // the snapshot is not taken again.
    let again = s
        .change_env(
            &EnvOwner::Device(dev("d1")),
            &EnvEdit {
                set: vec![var("MODE", "fast", &["a"])],
                unset: vec![],
            },
            &target,
            ts(3),
        )
        .await
        .unwrap();
    assert_eq!(again.operations[0].id, changed.operations[0].id);
    assert_eq!(
        rows(&s, "d1").await.plan_state.applied_env[&b("a")].len(),
        1
    );
    // Removing nothing creates nothing.
    let none = s
        .change_env(
            &EnvOwner::Device(dev("d2")),
            &EnvEdit {
                set: vec![],
                unset: vec![(EnvName::new("GHOST").unwrap(), EnvScope::Device)],
            },
            &EnvTarget::AllBlocks,
            ts(4),
        )
        .await
        .unwrap();
    assert_eq!((none.removed, none.operations.len()), (0, 0));
    assert!(matches!(
        s.change_env(
            &EnvOwner::Device(dev("ghost")),
            &EnvEdit::default(),
            &EnvTarget::AllBlocks,
            ts(5)
        )
        .await
        .unwrap_err(),
        StoreError::NotFound { .. }
    ));
}

/// A batch is read as each device alone would be, whatever else is in it,
/// and written device by device: one device whose operations moved on
/// keeps nothing of its plan while the others' are written.
async fn a_batch_is_gathered_like_each_device_alone_and_written_device_by_device<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    with_fleet(&s, "f2").await;
    for (d, fleet, tags) in [
        ("d1", "f1", &["site-a"][..]),
        ("d2", "f2", &[][..]),
        ("d3", "f1", &[][..]),
    ] {
        s.register_device(&device(d, fleet, tags), "h")
            .await
            .unwrap();
    }
    s.set_env(
        &EnvOwner::Fleet(fleet_id("f1")),
        &[EnvVar {
            name: EnvName::new("MODE").unwrap(),
            value: "x".into(),
            scope: EnvScope::Device,
        }],
        ts(1),
    )
    .await
    .unwrap();
    s.set_env(
        &EnvOwner::Device(dev("d1")),
        &[EnvVar {
            name: EnvName::new("LEVEL").unwrap(),
            value: "2".into(),
            scope: EnvScope::Blocks([b("a")].into()),
        }],
        ts(1),
    )
    .await
    .unwrap();
    let fp = lockstep::domain::env::fingerprint(&Env::new());
    for (d, block) in [("d1", "a"), ("d2", "b")] {
        let report = DeviceReport {
            agent_version: "0.1.0".into(),
            current_release: Some(ReleaseId::new("r1").unwrap()),
            os_version: Some("6.1".into()),
            blocks: [(
                b(block),
                ReportedBlock {
                    version: "1.0.0".parse().unwrap(),
                    env_fingerprint: fp,
                },
            )]
            .into(),
            last_intent_seq: IntentSeq(0),
            reported: ts(10),
        };
        s.record_device_report(&dev(d), &report).await.unwrap();
    }
    s.ingest_lock_reports(
        &[lock("d1", "a", true, 3), lock("d2", "b", false, 1)],
        ts(11),
    )
    .await
    .unwrap();
    let reboot = s
        .create_operation(&dev("d1"), &OperationSpec::Reboot, None, ts(12))
        .await
        .unwrap();
    let restart = s
        .create_operation(
            &dev("d2"),
            &OperationSpec::RestartBlock(b("b")),
            None,
            ts(13),
        )
        .await
        .unwrap();
    s.create_approval(reboot.id, ts(14)).await.unwrap();
    let rule = WindowRule::OneOff {
        start: ts(100),
        end: ts(110),
    };
    for scope in [
        WindowScope::Fleet(fleet_id("f1")),
        WindowScope::Tag(Tag::new("site-a").unwrap()),
        WindowScope::Device(dev("d2")),
    ] {
        s.create_window(&scope, &rule, ts(1)).await.unwrap();
    }

    let all = s
        .gather(&[dev("d1"), dev("d2"), dev("d3"), dev("ghost")])
        .await
        .unwrap();
    assert_eq!(
        all.keys().cloned().collect::<Vec<_>>(),
        vec![dev("d1"), dev("d2"), dev("d3")],
        "an unknown device is left out"
    );
    for d in ["d1", "d2", "d3"] {
        let rows = &all[&dev(d)];
        // The same as a batch of one, and as the single-device reads.
        assert_eq!(rows, &self::rows(&s, d).await, "{d}");
        let record = s.get_device(&dev(d)).await.unwrap();
        assert_eq!(rows.device, record, "{d}");
        assert_eq!(rows.report, s.device_report(&dev(d)).await.unwrap(), "{d}");
        assert_eq!(rows.locks, s.device_locks(&dev(d)).await.unwrap(), "{d}");
        assert_eq!(
            rows.windows,
            s.windows_for_device(&dev(d)).await.unwrap(),
            "{d}"
        );
        assert_eq!(rows.ops, s.active_operations(&dev(d)).await.unwrap(), "{d}");
        assert_eq!(
            rows.env.fleet,
            s.env_layer(&EnvOwner::Fleet(record.fleet.clone()))
                .await
                .unwrap(),
            "{d}"
        );
        assert_eq!(
            rows.env.device,
            s.env_layer(&EnvOwner::Device(dev(d))).await.unwrap(),
            "{d}"
        );
        for op in &rows.ops {
            assert_eq!(
                rows.approvals.get(&op.id).cloned(),
                s.latest_approval(op.id).await.unwrap(),
                "{d}"
            );
        }
    }
    assert_eq!(all[&dev("d1")].windows.len(), 2, "fleet and tag windows");
    assert_eq!(all[&dev("d2")].windows.len(), 1, "its own window");
    assert!(all[&dev("d3")].ops.is_empty() && all[&dev("d3")].report.is_none());
    assert!(
        all[&dev("d1")]
            .device
            .tags
            .contains(&Tag::new("site-a").unwrap()),
        "tags are read"
    );

    // d1's plan is stale (its reboot moved on since generation 7); d2's is
    // current. One transaction: d2's plan lands, d1's leaves no trace.
    let mut stale = reboot.clone();
    stale.status = OpStatus::WaitingLock;
    let mut applying = restart.clone();
    applying.status = OpStatus::Applying;
    let plan = |op: &OperationRecord, expected: u64| PlanWrite {
        ops: vec![(op.clone(), expected)],
        intents: vec![NewIntent {
            kind: IntentKind::Apply,
            body: "{}".into(),
            operation: Some(op.id),
        }],
        device_status: Some(DeviceStatus::Applying),
        wake_at: Some(ts(900)),
        ..PlanWrite::default()
    };
    let results = s
        .write_plans(
            &[
                (dev("d1"), plan(&stale, 7)),
                (dev("d2"), plan(&applying, restart.generation)),
            ],
            ts(20),
        )
        .await
        .unwrap();
    assert!(
        matches!(results[0], Err(StoreError::Conflict { .. })),
        "{results:?}"
    );
    assert_eq!(results[1].as_ref().unwrap(), &vec![IntentSeq(1)]);
    let d1 = s.get_operation(reboot.id).await.unwrap();
    assert_eq!(
        (d1.status, d1.generation),
        (reboot.status, reboot.generation)
    );
    assert!(s.unacked_intents(&dev("d1")).await.unwrap().is_empty());
    assert_eq!(rows(&s, "d1").await.plan_state.wake_at, None);
    let d2 = s.get_operation(restart.id).await.unwrap();
    assert_eq!(
        (d2.status, d2.generation),
        (OpStatus::Applying, restart.generation + 1)
    );
    assert_eq!(s.unacked_intents(&dev("d2")).await.unwrap().len(), 1);
    assert_eq!(rows(&s, "d2").await.plan_state.wake_at, Some(ts(900)));
    assert_eq!(
        s.get_device(&dev("d2")).await.unwrap().status,
        DeviceStatus::Applying
    );
}

/// Operations created together: each on its own (an unknown device fails
/// alone), a forced one with its audit entry naming it, an env change
/// merging into the pending one as a single create would.
async fn operations_created_together_each_commit_on_their_own<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    s.register_device(&device("d1", "f1", &[]), "h")
        .await
        .unwrap();
    let force = Force::new([b("a")].into(), "inverter replaced").unwrap();
    let audit = AuditEntry {
        at: ts(0),
        actor: "ops@example".into(),
        action: "force_requested".into(),
        subject: String::new(),
        fleet: Some(fleet_id("f1")),
        reason: "inverter replaced".into(),
        details: "{}".into(),
    };
    let new =
        |device: &str, spec: OperationSpec, force: Option<Force>, audit: Option<AuditEntry>| {
            NewOperation {
                device: dev(device),
                spec,
                force,
                audit,
            }
        };
    let env = OperationSpec::ApplyEnv(EnvTarget::Blocks([b("a")].into()));
    let results = s
        .create_operations(
            &[
                new(
                    "d1",
                    OperationSpec::Reboot,
                    Some(force.clone()),
                    Some(audit.clone()),
                ),
                new("ghost", OperationSpec::Reboot, None, None),
                new("d1", env.clone(), None, None),
                new("d1", env.clone(), None, None),
            ],
            ts(5),
        )
        .await
        .unwrap();
    assert_eq!(results.len(), 4);
    let forced = results[0].as_ref().unwrap();
    assert_eq!(forced.force, Some(force));
    assert!(
        matches!(results[1], Err(StoreError::NotFound { .. })),
        "{:?}",
        results[1]
    );
    let (e1, e2) = (results[2].as_ref().unwrap(), results[3].as_ref().unwrap());
    assert_eq!(e1.id, e2.id, "the second env change merges into the first");
    assert_eq!(
        s.list_operations(&dev("d1"))
            .await
            .unwrap()
            .iter()
            .map(|o| o.id)
            .collect::<BTreeSet<_>>(),
        [forced.id, e1.id].into()
    );
    let entries = s
        .list_audit(&AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        entries.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
        vec![AuditEntry {
            at: ts(5),
            subject: format!("device d1 operation {}", forced.id),
            ..audit
        }]
    );
}

async fn cancelling_and_phases_are_guarded_by_the_generation<S: Store>(s: S) {
    with_fleet(&s, "f1").await;
    s.register_device(&device("d1", "f1", &[]), "h")
        .await
        .unwrap();
    let op = s
        .create_operation(&dev("d1"), &OperationSpec::Reboot, None, ts(1))
        .await
        .unwrap();
    let audit = AuditEntry {
        at: ts(2),
        actor: "ops".into(),
        action: "operation_cancelled".into(),
        subject: format!("device d1 operation {}", op.id),
        fleet: Some(fleet_id("f1")),
        reason: "not today".into(),
        details: "{}".into(),
    };
    // The reconciler moved it on meanwhile: the cancel decided on
    // generation 0 is refused, with no audit entry.
    let mut moved = op.clone();
    moved.status = OpStatus::Applying;
    s.record_step(&moved, &[], ts(2)).await.unwrap();
    let late = cancelled(&op, "not today").unwrap();
    let err = s
        .transition_operation(&late, Some(&audit), &[], ts(3))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(
        s.list_audit(&AuditFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    // A phase is recorded only while applying, and bumps the generation.
    s.record_phase(op.id, "locks_acquired", ts(4))
        .await
        .unwrap();
    let stored = s.get_operation(op.id).await.unwrap();
    assert_eq!(stored.progress.phase.as_deref(), Some("locks_acquired"));
    assert_eq!(stored.generation, 2);
    // On the current generation a cancel lands with its audit entry.
    let other = s
        .create_operation(&dev("d1"), &OperationSpec::Shutdown, None, ts(5))
        .await
        .unwrap();
    let done = s
        .transition_operation(&cancelled(&other, "x").unwrap(), Some(&audit), &[], ts(6))
        .await
        .unwrap();
    assert_eq!((done.status, done.generation), (OpStatus::Cancelled, 1));
    assert_eq!(
        s.list_audit(&AuditFilter::default()).await.unwrap().len(),
        1
    );
    s.record_phase(other.id, "late", ts(7)).await.unwrap();
    assert_eq!(
        s.get_operation(other.id).await.unwrap().progress.phase,
        None
    );
}

fn replica(id: &str) -> ReplicaId {
    ReplicaId::new(id).unwrap()
}

async fn register_d<S: Store>(s: &S, ids: &[&str]) {
    with_fleet(s, "f").await;
    for id in ids {
        s.register_device(&device(id, "f", &[]), "h").await.unwrap();
    }
}

async fn session_of<S: Store>(s: &S, d: &str) -> Option<AgentSession> {
    rows(s, d).await.plan_state.session
}

async fn sessions_take_over_close_only_their_epoch_and_die_with_their_replica<S: Store>(s: S) {
    register_d(&s, &["d1", "d2"]).await;
    let (r1, r2) = (replica("r1"), replica("r2"));
    assert_eq!(
        s.register_replica(&r1, ts(1000), ts(16_000)).await.unwrap(),
        vec![]
    );
    s.register_replica(&r2, ts(1000), ts(16_000)).await.unwrap();
    assert_eq!(session_of(&s, "d1").await, None, "never connected");

    let first = s
        .open_session(&dev("d1"), &r1, None, ts(1100))
        .await
        .unwrap();
    assert_eq!((first.epoch, first.previous.clone()), (1, None));
    let live = session_of(&s, "d1").await.unwrap();
    assert!(live.is_live(ts(1200)) && !live.held_elsewhere(&r1, ts(1200)));
    assert!(live.held_elsewhere(&r2, ts(1200)));
    assert!(
        !live.is_live(ts(16_000)),
        "dead once its replica's lease ran out"
    );

    // A newer stream on r2 takes over; r1's stream ending closes nothing.
    let second = s
        .open_session(&dev("d1"), &r2, None, ts(1300))
        .await
        .unwrap();
    assert_eq!((second.epoch, second.previous), (2, Some(r1.clone())));
    assert!(!s.session_is_current(&dev("d1"), 1).await.unwrap());
    assert!(s.session_is_current(&dev("d1"), 2).await.unwrap());
    assert!(!s.close_session(&dev("d1"), 1, ts(1400)).await.unwrap());
    assert_eq!(
        session_of(&s, "d1").await.unwrap().replica,
        Some(r2.clone())
    );
    assert!(s.close_session(&dev("d1"), 2, ts(1500)).await.unwrap());
    assert_eq!(session_of(&s, "d1").await.unwrap().replica, None);
    assert_eq!(
        s.get_device(&dev("d1")).await.unwrap().status,
        DeviceStatus::Offline
    );

    // r1 holds d2 and stops renewing: a reaper on any replica closes it.
    s.open_session(&dev("d2"), &r1, None, ts(2000))
        .await
        .unwrap();
    assert!(s.renew_replica(&r2, ts(10_000), ts(40_000)).await.unwrap());
    assert_eq!(s.reap_replicas(ts(15_000)).await.unwrap(), vec![]);
    assert_eq!(s.reap_replicas(ts(16_000)).await.unwrap(), vec![dev("d2")]);
    assert_eq!(session_of(&s, "d2").await.unwrap().replica, None);
    let live: Vec<ReplicaId> = s
        .live_replicas(ts(16_000))
        .await
        .unwrap()
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(live, vec![r2.clone()]);
    // r1 comes back: told it was reaped, and starts a new life.
    assert!(!s.renew_replica(&r1, ts(17_000), ts(32_000)).await.unwrap());
    // r2 shuts down cleanly: its sessions close at once.
    s.open_session(&dev("d2"), &r2, None, ts(18_000))
        .await
        .unwrap();
    assert_eq!(
        s.release_replica(&r2, ts(18_500)).await.unwrap(),
        vec![dev("d2")]
    );
    assert_eq!(session_of(&s, "d2").await.unwrap().replica, None);

    // Every online/offline is in the event log, in commit order.
    let kinds: Vec<(Option<String>, String)> = s
        .events_after(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            (
                e.event.device.map(|d| d.to_string()),
                match e.event.body {
                    EventBody::Device(k) => k.name().to_owned(),
                    EventBody::Rollout { kind, .. } => kind,
                },
            )
        })
        .collect();
    let d = |d: &str, k: &str| (Some(d.to_owned()), k.to_owned());
    assert_eq!(
        kinds,
        vec![
            d("d1", "online"),
            d("d1", "online"),
            d("d1", "offline"),
            d("d2", "online"),
            d("d2", "offline"),
            d("d2", "online"),
            d("d2", "offline"),
        ]
    );
    let seqs: Vec<u64> = s
        .events_after(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(s.last_event_seq().await.unwrap(), *seqs.last().unwrap());
    assert_eq!(s.events_after(seqs[4], 100).await.unwrap().len(), 2);
    assert_eq!(s.prune_events(ts(1)).await.unwrap(), 0);
}

async fn wake_ups_go_to_the_replica_holding_the_device_once<S: Store>(s: S) {
    register_d(&s, &["d1", "d2", "d3"]).await;
    let (r1, r2) = (replica("r1"), replica("r2"));
    s.register_replica(&r1, ts(1000), ts(60_000)).await.unwrap();
    s.register_replica(&r2, ts(1000), ts(60_000)).await.unwrap();
    s.open_session(&dev("d1"), &r1, None, ts(1000))
        .await
        .unwrap();
    s.open_session(&dev("d2"), &r2, None, ts(1000))
        .await
        .unwrap();
    // d3 is held by nobody.
    s.forward_wakes(&[dev("d1"), dev("d2"), dev("d3")], &[], ts(2000))
        .await
        .unwrap();
    let mut r2_claims = s.claim_wakes(&r2, ts(2000), ts(32_000), 100).await.unwrap();
    r2_claims.sort();
    assert_eq!(
        r2_claims,
        vec![dev("d2"), dev("d3")],
        "its own and nobody's"
    );
    assert_eq!(
        s.claim_wakes(&r2, ts(2000), ts(32_000), 100).await.unwrap(),
        vec![],
        "claimed once"
    );
    assert_eq!(
        s.claim_wakes(&r1, ts(2000), ts(32_000), 100).await.unwrap(),
        vec![dev("d1")]
    );
    // Timers: a due one is claimed by its holder and pushed back.
    let plan = PlanWrite {
        wake_at: Some(ts(3000)),
        ..PlanWrite::default()
    };
    s.write_plan(&dev("d1"), &plan, ts(2500)).await.unwrap();
    assert_eq!(
        s.claim_wakes(&r1, ts(2999), ts(33_000), 100).await.unwrap(),
        vec![]
    );
    assert_eq!(
        s.claim_wakes(&r2, ts(3000), ts(33_000), 100).await.unwrap(),
        vec![]
    );
    assert_eq!(
        s.claim_wakes(&r1, ts(3000), ts(33_000), 100).await.unwrap(),
        vec![dev("d1")]
    );
    assert_eq!(rows(&s, "d1").await.plan_state.wake_at, Some(ts(33_000)));
    // A plan decided under session 1 does not land once session 2 holds
    // the device.
    let fenced = PlanWrite {
        session_epoch: Some(1),
        wake_at: Some(ts(9000)),
        ..PlanWrite::default()
    };
    s.write_plan(&dev("d1"), &fenced, ts(4000)).await.unwrap();
    s.open_session(&dev("d1"), &r2, None, ts(4100))
        .await
        .unwrap();
    assert!(matches!(
        s.write_plan(&dev("d1"), &fenced, ts(4200)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(rows(&s, "d1").await.plan_state.wake_at, Some(ts(9000)));
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(lockstep::testkit::pg_store().await).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let (store, _dir) = lockstep::testkit::sqlite_store().await;
                    super::$name(store).await
                }
            )*
        }
    };
}

conformance!(
    fleets_are_created_listed_and_unique,
    block_versions_round_trip_and_are_unique,
    releases_round_trip_and_list_in_pages,
    releases_need_their_fleet_and_block_versions,
    devices_register_filter_and_paginate,
    device_credentials_are_stored_as_given_and_revocable,
    env_vars_upsert_unset_and_scope,
    device_reports_round_trip,
    lock_ingest_is_fenced_idempotent_and_recorded,
    lock_history_is_pruned_by_age,
    intent_sequences_have_no_gaps_under_concurrent_writers,
    acknowledged_intents_leave_the_outbox,
    a_device_timeline_interleaves_intents_and_answers_newest_first,
    device_status_counts_are_per_fleet_and_status,
    operation_status_counts_count_every_stored_status,
    audit_entries_append_and_list_in_order,
    audit_entries_filter_by_action_subject_fleet_and_scope,
    api_tokens_round_trip_by_hash_and_revoke_once,
    a_bootstrap_token_is_stored_only_while_no_admin_token_is_usable,
    operations_are_kept_in_order_and_steps_are_atomic_with_their_intents,
    windows_and_policies_attach_to_fleets_tags_and_devices,
    windows_and_policies_need_their_fleet_or_device_and_partial_updates_merge,
    rollouts_store_their_plan_and_start_members_in_plan_order,
    a_plan_is_written_whole_or_not_at_all_guarded_by_generations,
    the_reconcilers_facts_are_the_latest_answers_and_open_requests,
    env_changes_merge_only_when_about_exactly_the_same_blocks,
    cancelling_and_phases_are_guarded_by_the_generation,
    env_edits_snapshot_the_running_env_and_create_their_operations_at_once,
    a_batch_is_gathered_like_each_device_alone_and_written_device_by_device,
    operations_created_together_each_commit_on_their_own,
    sessions_take_over_close_only_their_epoch_and_die_with_their_replica,
    wake_ups_go_to_the_replica_holding_the_device_once,
);

// ------------------------------------------- backend-specific behaviour

#[tokio::test]
async fn sqlite_data_survives_reopening_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SqliteStore::open(dir.path(), &PoolOptions::default())
            .await
            .unwrap();
        with_fleet(&s, "keep").await;
        s.pool().close().await;
    }
    let s = SqliteStore::open(dir.path(), &PoolOptions::default())
        .await
        .unwrap();
    assert_eq!(
        s.get_fleet(&fleet_id("keep")).await.unwrap().id,
        fleet_id("keep")
    );
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn sqlite_schema_newer_than_the_binary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path(), &PoolOptions::default())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (999, 'from the future', 1, x'00', 0)",
    )
    .execute(s.pool())
    .await
    .unwrap();
    s.pool().close().await;
    let err = SqliteStore::open(dir.path(), &PoolOptions::default())
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(err, StoreError::SchemaTooNew { database: 999, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("newer than this binary"), "{err}");
}

#[tokio::test]
async fn postgres_schema_newer_than_the_binary_is_refused() {
    let opts = lockstep::testkit::fresh_pg_database().await;
    let s = PgStore::connect_with(opts.clone(), &PoolOptions::default())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (999, 'from the future', true, '\\x00', 0)",
    )
    .execute(s.pool())
    .await
    .unwrap();
    s.pool().close().await;
    let err = PgStore::connect_with(opts, &PoolOptions::default())
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(err, StoreError::SchemaTooNew { database: 999, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn postgres_has_every_table() {
    let opts = lockstep::testkit::fresh_pg_database().await;
    let s = PgStore::connect_with(opts, &PoolOptions::default())
        .await
        .unwrap();
    let tables: BTreeSet<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_all(s.pool())
    .await
    .unwrap()
    .into_iter()
    .collect();
    for t in [
        "fleets",
        "blocks",
        "block_versions",
        "releases",
        "release_blocks",
        "devices",
        "device_tags",
        "device_reports",
        "device_blocks",
        "device_locks",
        "lock_history",
        "env_vars",
        "operations",
        "intents",
        "intent_acks",
        "maintenance_windows",
        "approvals",
        "rollouts",
        "rollout_members",
        "audit_log",
    ] {
        assert!(tables.contains(t), "missing table {t}: {tables:?}");
    }
}

#[tokio::test]
async fn unreachable_postgres_is_a_clear_error() {
    let opts = PoolOptions {
        max_connections: 1,
        acquire_timeout: std::time::Duration::from_secs(2),
    };
    let err = PgStore::connect("postgres://nobody@127.0.0.1:1/none", &opts)
        .await
        .err()
        .expect("must fail");
    assert!(err.is_unavailable(), "{err}");
}
