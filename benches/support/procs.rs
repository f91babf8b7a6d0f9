//! What the fleet benches share: the release binary beside them, the
//! open-files limit, children that die with the driver, a process's memory
//! and CPU from /proc, and the bench catalog and device rows (fleet
//! `bench`, block `b` 1.0.0, release `r1`, every device with the
//! credential `lsd_bench`).

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use lockstep::domain::{
    BlockName, BlockVersion, Env, Fleet, FleetId, ImageDigest, Release, ReleaseId,
};
use lockstep::store::Store;
use tokio::process::Command;

/// The one credential every bench device shares (hashing is per device row).
pub const SECRET: &str = "lsd_bench";
pub const FLEET: &str = "bench";
pub const BLOCK: &str = "b";
pub const RELEASE: &str = "r1";

pub fn device_id(i: usize) -> String {
    format!("bench-{i:06}")
}

/// The `lockstep` binary cargo built with this bench (same profile, same
/// sources): never a stale one left by an earlier `cargo build --release`.
pub fn server_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lockstep"))
}

/// Raises the soft open-files limit to the hard one (children inherit it)
/// and returns the hard limit.
pub fn open_files_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            },
        );
    }
    let lim = getrlimit(Resource::Nofile);
    lim.current.unwrap_or(1 << 20)
}

/// Kills the child if this process dies, whatever the cause.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only makes one
    // async-signal-safe system call (prctl).
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    pub rss_kib: u64,
    pub anon_kib: u64,
    pub hwm_kib: u64,
}

pub fn proc_mem(pid: u32) -> Mem {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Mem {
        rss_kib: field("VmRSS:"),
        anon_kib: field("RssAnon:"),
        hwm_kib: field("VmHWM:"),
    }
}

/// CPU time (user + system) the process has used so far, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th, in clock ticks (100 per second on Linux).
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

/// One bench device row (all share the credential `SECRET`).
pub fn insert_device<DB: sqlx::Database>(
    i: usize,
) -> sqlx::query::Query<'static, DB, <DB as sqlx::Database>::Arguments>
where
    String: sqlx::Encode<'static, DB> + sqlx::Type<DB>,
    &'static str: sqlx::Encode<'static, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'static, DB> + sqlx::Type<DB>,
{
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let hash = HASH.get_or_init(|| lockstep::edge::auth::hash_credential(SECRET));
    sqlx::query(
        "INSERT INTO devices (id, fleet, credential_hash, created_ms) VALUES ($1, $2, $3, $4)",
    )
    .bind(device_id(i))
    .bind(FLEET)
    .bind(hash.as_str())
    .bind(lockstep::clock::now().0)
}

/// The fleet, block `b` 1.0.0 and release `r1`, through the store.
pub async fn catalog<S: Store>(store: &S) {
    let now = lockstep::clock::now();
    let fleet = FleetId::new(FLEET).expect("fleet id");
    store
        .create_fleet(&Fleet {
            id: fleet.clone(),
            name: "bench".into(),
            created: now,
        })
        .await
        .expect("creating the fleet");
    let block = BlockName::new(BLOCK).expect("block name");
    store
        .create_block(&block, "streams bench", now)
        .await
        .expect("creating the block");
    let bv = BlockVersion {
        name: block,
        version: semver::Version::new(1, 0, 0),
        image_digest: ImageDigest::new(format!("sha256:{}", "0".repeat(64))).expect("digest"),
        config: Default::default(),
        env: Env::new(),
        depends_on: Vec::new(),
        update_strategy: Default::default(),
    };
    store
        .create_block_version(&bv, now)
        .await
        .expect("creating the block version");
    let release = Release::new(
        ReleaseId::new(RELEASE).expect("release id"),
        fleet,
        vec![Arc::new(bv)],
        Env::new(),
    )
    .expect("a valid release");
    store
        .create_release(&release, now)
        .await
        .expect("creating the release");
}
