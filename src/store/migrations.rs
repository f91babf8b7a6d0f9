//! The schema migrations of both backends, embedded in the binary, and the
//! check that refuses a database whose schema is newer than this binary.

use std::borrow::Cow;

use sqlx::SqlSafeStr as _;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::Backend;

const POSTGRES: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "fleet policies",
        include_str!("../../migrations/postgres/0002_fleet_policies.sql"),
    ),
    (
        3,
        "deferral policy",
        include_str!("../../migrations/postgres/0003_deferral_policy.sql"),
    ),
    (
        4,
        "approval policy",
        include_str!("../../migrations/postgres/0004_approval_policy.sql"),
    ),
    (
        5,
        "release mode",
        include_str!("../../migrations/postgres/0005_release_mode.sql"),
    ),
    (
        6,
        "missed occurrence",
        include_str!("../../migrations/postgres/0006_missed_occurrence.sql"),
    ),
    (
        7,
        "rollouts",
        include_str!("../../migrations/postgres/0007_rollouts.sql"),
    ),
    (
        8,
        "api tokens",
        include_str!("../../migrations/postgres/0008_api_tokens.sql"),
    ),
    (
        9,
        "reconciler",
        include_str!("../../migrations/postgres/0009_reconciler.sql"),
    ),
    (
        10,
        "replicas",
        include_str!("../../migrations/postgres/0010_replicas.sql"),
    ),
    (
        11,
        "agent_epoch",
        include_str!("../../migrations/postgres/0011_agent_epoch.sql"),
    ),
];

const SQLITE: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "fleet policies",
        include_str!("../../migrations/sqlite/0002_fleet_policies.sql"),
    ),
    (
        3,
        "deferral policy",
        include_str!("../../migrations/sqlite/0003_deferral_policy.sql"),
    ),
    (
        4,
        "approval policy",
        include_str!("../../migrations/sqlite/0004_approval_policy.sql"),
    ),
    (
        5,
        "release mode",
        include_str!("../../migrations/sqlite/0005_release_mode.sql"),
    ),
    (
        6,
        "missed occurrence",
        include_str!("../../migrations/sqlite/0006_missed_occurrence.sql"),
    ),
    (
        7,
        "rollouts",
        include_str!("../../migrations/sqlite/0007_rollouts.sql"),
    ),
    (
        8,
        "api tokens",
        include_str!("../../migrations/sqlite/0008_api_tokens.sql"),
    ),
    (
        9,
        "reconciler",
        include_str!("../../migrations/sqlite/0009_reconciler.sql"),
    ),
    (
        10,
        "replicas",
        include_str!("../../migrations/sqlite/0010_replicas.sql"),
    ),
    (
        11,
        "agent_epoch",
        include_str!("../../migrations/sqlite/0011_agent_epoch.sql"),
    ),
];

fn list(backend: Backend) -> &'static [(i64, &'static str, &'static str)] {
    match backend {
        Backend::Postgres => POSTGRES,
        Backend::Sqlite => SQLITE,
    }
}

/// The migrator for a backend.
pub(crate) fn migrator(backend: Backend) -> Migrator {
    let migrations = list(backend)
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}

/// The newest schema version this binary knows.
pub fn latest(backend: Backend) -> i64 {
    list(backend).iter().map(|m| m.0).max().unwrap_or(0)
}

/// Refuses a database whose applied schema (`applied`, the highest version in
/// `_sqlx_migrations`, if any) is newer than this binary knows.
pub(crate) fn check_not_newer(
    backend: Backend,
    applied: Option<i64>,
) -> Result<(), super::StoreError> {
    let binary = latest(backend);
    match applied.filter(|v| *v > binary) {
        Some(database) => Err(super::StoreError::SchemaTooNew { database, binary }),
        None => Ok(()),
    }
}
