//! Fresh stores for tests and benchmarks: a throwaway Postgres cluster per
//! process (or the server in `DATABASE_URL`), one new database per caller
//! cloned from a migrated template, and SQLite in a temporary directory.
//! Without Postgres the callers fail loudly, saying how to install it.
//!
//! Test tooling, not part of the shipped library: compiled only for this
//! crate's own tests and benches (the `testkit` feature, which the crate's
//! dev-dependency on itself turns on).

pub use crate::pgtemp;

use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use crate::store::{PgStore, PoolOptions, SqliteStore};
use crate::testkit::pgtemp::PgCluster;

const TEMPLATE: &str = "lockstep_template";

enum Server {
    Temp(PgCluster),
    External(Box<PgConnectOptions>),
}

impl Server {
    fn options(&self, db: &str) -> PgConnectOptions {
        match self {
            Server::Temp(c) => PgConnectOptions::from_str(&c.url(db))
                .unwrap_or_else(|e| panic!("pgtemp produced an unparsable URL: {e}")),
            Server::External(base) => base.as_ref().clone().database(db),
        }
    }
}

static SERVER: OnceLock<Server> = OnceLock::new();
static TEMPLATE_READY: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
static CREATE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

fn server() -> &'static Server {
    SERVER.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Server::External(Box::new(
            PgConnectOptions::from_str(&url)
                .unwrap_or_else(|e| panic!("DATABASE_URL is not a Postgres URL: {e}")),
        )),
        _ => {
            let cluster = PgCluster::start().unwrap_or_else(|e| {
                panic!("cannot start a throwaway PostgreSQL for the tests: {e}")
            });
            if let Err(e) = cluster.stop_with_process() {
                panic!("cannot arrange cleanup of the throwaway PostgreSQL: {e}");
            }
            Server::Temp(cluster)
        }
    })
}

async fn admin() -> PgConnection {
    PgConnection::connect_with(&server().options("postgres"))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL: {e}"))
}

/// Connection options for a new, empty, fully migrated Postgres database.
pub async fn fresh_pg_database() -> PgConnectOptions {
    TEMPLATE_READY
        .get_or_init(|| async {
            let mut conn = admin().await;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {TEMPLATE}"
            )))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("dropping the template database: {e}"));
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {TEMPLATE}")))
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("creating the template database: {e}"));
            let store = PgStore::connect_with(server().options(TEMPLATE), &PoolOptions::default())
                .await
                .unwrap_or_else(|e| panic!("migrating the template database: {e}"));
            store.pool().close().await;
        })
        .await;
    let name = format!(
        "lockstep_test_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    // Cloning needs the template to have no other sessions: one at a time.
    let _guard = CREATE_LOCK.lock().await;
    let mut conn = admin().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} TEMPLATE {TEMPLATE}"
    )))
    .execute(&mut conn)
    .await
    .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
    server().options(&name)
}

/// A Postgres store on a fresh database.
pub async fn pg_store() -> PgStore {
    let opts = fresh_pg_database().await;
    PgStore::connect_with(opts, &PoolOptions::default())
        .await
        .unwrap_or_else(|e| panic!("connecting to the test database: {e}"))
}

/// A SQLite store in a fresh temporary directory (kept alive by the guard).
pub async fn sqlite_store() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("creating a temp dir: {e}"));
    let store = SqliteStore::open(dir.path(), &PoolOptions::default())
        .await
        .unwrap_or_else(|e| panic!("opening SQLite in {}: {e}", dir.path().display()));
    (store, dir)
}

/// A URL for `lockstep serve --database-url` pointing at a fresh database.
pub async fn fresh_pg_url() -> String {
    let opts = fresh_pg_database().await;
    let db = opts.get_database().unwrap_or("postgres").to_owned();
    match server() {
        Server::Temp(c) => c.url(&db),
        Server::External(_) => {
            let base = std::env::var("DATABASE_URL").unwrap_or_default();
            match base.rsplit_once('/') {
                Some((prefix, rest)) => {
                    let query = rest
                        .split_once('?')
                        .map(|(_, q)| format!("?{q}"))
                        .unwrap_or_default();
                    format!("{prefix}/{db}{query}")
                }
                None => base,
            }
        }
    }
}
