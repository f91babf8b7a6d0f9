//! Throwaway PostgreSQL clusters for tests, benchmarks and
//! `lockstep demo --replicas N` (several servers need a shared Postgres).
//!
//! The Postgres-backed store has to be exercised against a real server, and CI
//! has no long-lived database: it has Debian's `postgresql` package installed
//! and runs as root. This module finds the server binaries, runs `initdb` into
//! a fresh temporary directory (as the unprivileged `postgres` system user when
//! we are root, because `initdb` and `postgres` refuse to run as root), starts
//! the server listening only on a private Unix socket with durability turned
//! off for speed, and tears everything down again when the [`PgCluster`] is
//! dropped. A missing installation is a hard error with an actionable message,
//! never a silently skipped test.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

/// Port the server is started on. Every cluster has its own socket directory,
/// so concurrent clusters can all use the default port without colliding; it
/// is passed explicitly on both sides so a stray `PGPORT` cannot interfere.
const PORT: u16 = 5432;

/// Unprivileged account that owns the cluster when we run as root, and the
/// database superuser name created by `initdb -U`.
const PG_USER: &str = "postgres";

/// Where the temporary cluster directories are created. Deliberately not
/// `$TMPDIR`: the Unix socket path must stay well under the ~107-byte
/// `sun_path` limit, and when we run as root the `postgres` user must be able to
/// traverse every parent directory (`/tmp` is world-traversable).
const TMP_PARENT: &str = "/tmp";

/// Debian installs each major version's server binaries under
/// `/usr/lib/postgresql/<N>/bin`.
const DEBIAN_LIB_ROOT: &str = "/usr/lib/postgresql";

/// Seconds `pg_ctl -w` waits for the server to start or stop.
const PG_CTL_TIMEOUT_SECS: &str = "60";

/// Number of trailing server-log lines included in a start failure.
const LOG_TAIL_LINES: usize = 40;

/// Libpq environment variables that would otherwise leak into `initdb`,
/// `pg_ctl` and `postgres` and point them somewhere else.
const SCRUBBED_ENV: &[&str] = &[
    "PGDATA",
    "PGPORT",
    "PGHOST",
    "PGHOSTADDR",
    "PGUSER",
    "PGDATABASE",
    "PGOPTIONS",
    "PGPASSWORD",
    "PGSERVICE",
    "PGCTLTIMEOUT",
];

/// Why a throwaway cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum PgTempError {
    /// No usable `initdb`/`pg_ctl`/`postgres` installation was found.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin; install them with `apt-get install -y postgresql` or set DATABASE_URL"
    )]
    BinariesNotFound,

    /// Neither `/proc/self/status` nor `id -u` told us our effective uid.
    #[error("could not determine the effective uid (read /proc/self/status and ran `id -u`)")]
    UnknownUid {
        #[source]
        source: io::Error,
    },

    /// Running as root, but there is no `postgres` account to drop to.
    #[error(
        "running as root, but the unprivileged `{user}` system user does not exist; initdb and postgres refuse to run as root (install the server with `apt-get install -y postgresql`, which creates the user, or set DATABASE_URL)"
    )]
    NoPostgresUser { user: &'static str },

    /// Running as root, but neither `runuser` nor `su` is available.
    #[error(
        "running as root, but neither `runuser` nor `su` was found to run initdb/pg_ctl as the `{user}` user"
    )]
    NoPrivilegeDrop { user: &'static str },

    /// The temporary cluster directory could not be created.
    #[error("failed to create a temporary directory under {parent}")]
    TempDir {
        parent: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A directory inside the cluster directory could not be created.
    #[error("failed to create directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A helper program could not be spawned at all.
    #[error("failed to run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },

    /// A helper program (`chown`, `initdb`, ...) ran but failed.
    #[error("`{command}` failed ({status}):\n{output}")]
    CommandFailed {
        command: String,
        status: ExitStatus,
        output: String,
    },

    /// `pg_ctl start` failed; carries the tail of the server log.
    #[error(
        "PostgreSQL failed to start: `{command}` failed ({status}):\n{output}\n--- last lines of {log} ---\n{log_tail}"
    )]
    StartFailed {
        command: String,
        status: ExitStatus,
        output: String,
        log: PathBuf,
        log_tail: String,
    },
}

/// How helper programs are run: directly, or dropped from root to `postgres`.
#[derive(Debug, Clone)]
enum RunAs {
    /// We are not root; run the binaries ourselves.
    Current,
    /// `runuser -u postgres -- <cmd> ...`
    Runuser(PathBuf),
    /// `su postgres -s /bin/sh -c '<cmd> ...'`
    Su(PathBuf),
}

/// A running, throwaway PostgreSQL cluster. Stopped and deleted on drop.
///
/// The superuser is `postgres` with `trust` authentication; the server only
/// listens on a Unix socket in [`PgCluster::socket_dir`].
#[derive(Debug)]
pub struct PgCluster {
    /// Root of the cluster: `data/`, `sock/` and `log` live here. Removed when
    /// this field is dropped, i.e. after [`Drop::drop`] has stopped the server.
    dir: tempfile::TempDir,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: RunAs,
}

impl PgCluster {
    /// Creates a fresh cluster in a new temporary directory and starts it.
    ///
    /// Blocks until the server accepts connections (`pg_ctl -w`). Fails with
    /// [`PgTempError::BinariesNotFound`] if PostgreSQL is not installed.
    pub fn start() -> Result<PgCluster, PgTempError> {
        let bin_dir = find_bin_dir(
            std::env::var_os("PATH").as_deref(),
            Path::new(DEBIAN_LIB_ROOT),
        )
        .ok_or(PgTempError::BinariesNotFound)?;

        let run_as = if effective_uid()? == 0 {
            root_run_as()?
        } else {
            RunAs::Current
        };
        Self::start_with(bin_dir, run_as)
    }

    fn start_with(bin_dir: PathBuf, run_as: RunAs) -> Result<PgCluster, PgTempError> {
        let parent = PathBuf::from(TMP_PARENT);
        let dir = tempfile::Builder::new()
            .prefix("lockstep-pgtemp-")
            .tempdir_in(&parent)
            .map_err(|source| PgTempError::TempDir { parent, source })?;
        let root = dir.path().to_path_buf();
        let socket_dir = root.join("sock");
        std::fs::create_dir(&socket_dir).map_err(|source| PgTempError::CreateDir {
            path: socket_dir.clone(),
            source,
        })?;
        // The socket directory is only reachable through the 0700 cluster
        // directory anyway; keep it private too.
        std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| PgTempError::CreateDir {
                path: socket_dir.clone(),
                source,
            },
        )?;

        if !matches!(run_as, RunAs::Current) {
            // The tempdir is 0700 root-owned inside world-traversable /tmp;
            // hand it (and the socket dir) to `postgres`. Root can still
            // connect to the socket and delete everything afterwards.
            let mut chown = Command::new("chown");
            chown.arg("-R").arg(PG_USER).arg(&root);
            run_checked(&mut chown)?;
        }

        // From here on the cluster owns the directory; if anything below fails,
        // dropping `cluster` stops whatever was started and removes the tree.
        let cluster = PgCluster {
            data_dir: root.join("data"),
            socket_dir,
            bin_dir,
            run_as,
            dir,
        };
        cluster.initdb()?;
        cluster.pg_ctl_start()?;
        Ok(cluster)
    }

    /// `postgres://` URL for database `db` over this cluster's Unix socket.
    ///
    /// Shape: `postgres://postgres@localhost:5432/<db>?host=<socket dir>&sslmode=disable`.
    /// sqlx 0.9 (`PgConnectOptions::from_str`, `PgPool::connect`) treats a
    /// `host` query parameter starting with `/` as the socket directory and
    /// connects to `<dir>/.s.PGSQL.5432`; the `localhost` authority is only a
    /// placeholder. The database name and the directory are percent-encoded.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{PG_USER}@localhost:{PORT}/{}?host={}&sslmode=disable",
            percent_encode(db, |_| false),
            percent_encode(&self.socket_dir.to_string_lossy(), |b| b == b'/'),
        )
    }

    /// Directory holding the server's Unix socket (`.s.PGSQL.5432`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    fn initdb(&self) -> Result<(), PgTempError> {
        let args: Vec<OsString> = vec![
            "-D".into(),
            self.data_dir.clone().into(),
            "-A".into(),
            "trust".into(),
            "-U".into(),
            PG_USER.into(),
            "--no-sync".into(),
            "-E".into(),
            "UTF8".into(),
            "--locale=C".into(),
        ];
        let mut cmd = self.pg_command("initdb", &args);
        run_checked(&mut cmd).map(drop)
    }

    fn pg_ctl_start(&self) -> Result<(), PgTempError> {
        let server_opts = format!(
            "-c listen_addresses='' -k {} -p {PORT} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200 -c shared_buffers=128MB",
            shell_quote(&self.socket_dir.to_string_lossy()),
        );
        let log = self.log_file();
        let args: Vec<OsString> = vec![
            "start".into(),
            "-w".into(),
            "-t".into(),
            PG_CTL_TIMEOUT_SECS.into(),
            "-D".into(),
            self.data_dir.clone().into(),
            "-l".into(),
            log.clone().into(),
            "-o".into(),
            server_opts.into(),
        ];
        let mut cmd = self.pg_command("pg_ctl", &args);
        match run_checked(&mut cmd) {
            Ok(_) => Ok(()),
            Err(PgTempError::CommandFailed {
                command,
                status,
                output,
            }) => Err(PgTempError::StartFailed {
                command,
                status,
                output,
                log_tail: log_tail(&log),
                log,
            }),
            Err(other) => Err(other),
        }
    }

    /// Stops the server (fast shutdown), keeping the cluster: for tests of
    /// what happens when the database goes away. [`PgCluster::resume`]
    /// starts it again.
    pub fn pause(&self) -> Result<(), PgTempError> {
        let args: Vec<OsString> = vec![
            "stop".into(),
            "-w".into(),
            "-t".into(),
            PG_CTL_TIMEOUT_SECS.into(),
            "-m".into(),
            "fast".into(),
            "-D".into(),
            self.data_dir.clone().into(),
        ];
        run_checked(&mut self.pg_command("pg_ctl", &args)).map(drop)
    }

    /// Starts a server stopped by [`PgCluster::pause`].
    pub fn resume(&self) -> Result<(), PgTempError> {
        self.pg_ctl_start()
    }

    /// For a cluster kept in a `static` (never dropped): starts a watchdog
    /// shell that, once this process has exited, stops the server (immediate
    /// shutdown) and deletes the cluster directory.
    pub fn stop_with_process(&self) -> Result<(), PgTempError> {
        let script = r#"while kill -0 "$0" 2>/dev/null; do sleep 0.5; done
pid=$(head -n 1 "$1/data/postmaster.pid" 2>/dev/null)
[ -n "$pid" ] && kill -QUIT "$pid" 2>/dev/null
sleep 1
rm -rf "$1""#;
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .arg(std::process::id().to_string())
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.spawn().map(drop).map_err(|source| PgTempError::Spawn {
            command: "/bin/sh (pgtemp watchdog)".to_owned(),
            source,
        })
    }

    /// Builds a command running `<bin_dir>/<program> args...` as the right
    /// user, from inside the cluster directory, with libpq env vars scrubbed.
    fn pg_command(&self, program: &str, args: &[OsString]) -> Command {
        let program = self.bin_dir.join(program);
        let mut cmd = match &self.run_as {
            RunAs::Current => {
                let mut cmd = Command::new(&program);
                cmd.args(args);
                cmd
            }
            RunAs::Runuser(runuser) => {
                let mut cmd = Command::new(runuser);
                cmd.arg("-u")
                    .arg(PG_USER)
                    .arg("--")
                    .arg(&program)
                    .args(args);
                cmd
            }
            RunAs::Su(su) => {
                let mut line = shell_quote(&program.to_string_lossy());
                for arg in args {
                    line.push(' ');
                    line.push_str(&shell_quote(&arg.to_string_lossy()));
                }
                let mut cmd = Command::new(su);
                cmd.arg(PG_USER)
                    .arg("-s")
                    .arg("/bin/sh")
                    .arg("-c")
                    .arg(line);
                cmd
            }
        };
        // Our own cwd may not be readable by `postgres` (e.g. /root).
        cmd.current_dir(self.dir.path());
        for var in SCRUBBED_ENV {
            cmd.env_remove(var);
        }
        cmd.env("LC_ALL", "C");
        cmd
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.data_dir.join("postmaster.pid").exists() {
            let args: Vec<OsString> = vec![
                "stop".into(),
                "-w".into(),
                "-t".into(),
                PG_CTL_TIMEOUT_SECS.into(),
                "-m".into(),
                "immediate".into(),
                "-D".into(),
                self.data_dir.clone().into(),
            ];
            let mut cmd = self.pg_command("pg_ctl", &args);
            // Best effort: nothing useful can be done with a failure here.
            let _ = cmd.stdin(Stdio::null()).output();
        }
        // `self.dir` (the TempDir) is dropped after this, removing the tree.
    }
}

/// Renders a command for error messages.
struct DisplayCommand<'a>(&'a Command);

impl fmt::Display for DisplayCommand<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.get_program().to_string_lossy())?;
        for arg in self.0.get_args() {
            write!(f, " {}", shell_quote(&arg.to_string_lossy()))?;
        }
        Ok(())
    }
}

/// Runs `cmd` to completion, capturing its output; non-zero exit is an error.
fn run_checked(cmd: &mut Command) -> Result<Output, PgTempError> {
    let command = DisplayCommand(cmd).to_string();
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| PgTempError::Spawn {
            command: command.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(output)
    } else {
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !stdout.trim().is_empty() {
            text.push_str(&stdout);
        }
        Err(PgTempError::CommandFailed {
            command,
            status: output.status,
            output: text.trim_end().to_owned(),
        })
    }
}

/// Last [`LOG_TAIL_LINES`] lines of the server log, or why it is unreadable.
fn log_tail(log: &Path) -> String {
    match std::fs::read(log) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            lines[start..].join("\n")
        }
        Err(err) => format!("(could not read log: {err})"),
    }
}

/// Locates a directory containing `initdb`, `pg_ctl` and `postgres`: first via
/// `path_var` (following symlinks such as `/usr/local/bin/initdb`, since
/// `pg_ctl` looks for `postgres` next to its real location), then the highest
/// version under `lib_root/<N>/bin`.
fn find_bin_dir(path_var: Option<&OsStr>, lib_root: &Path) -> Option<PathBuf> {
    if let Some(path_var) = path_var {
        for entry in std::env::split_paths(path_var) {
            let initdb = entry.join("initdb");
            if !is_executable(&initdb) {
                continue;
            }
            let Ok(real) = std::fs::canonicalize(&initdb) else {
                continue;
            };
            if let Some(dir) = real.parent()
                && has_server_binaries(dir)
            {
                return Some(dir.to_path_buf());
            }
            if has_server_binaries(&entry) {
                return Some(entry);
            }
        }
    }

    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(lib_root)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = name
                .to_str()?
                .split('.')
                .map(|part| part.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            has_server_binaries(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|name| is_executable(&dir.join(name)))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Effective uid from `/proc/self/status` (`Uid: real effective saved fs`),
/// falling back to `id -u`.
fn effective_uid() -> Result<u32, PgTempError> {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(uid) = parse_status_euid(&status)
    {
        return Ok(uid);
    }
    let output = Command::new("id")
        .arg("-u")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| PgTempError::UnknownUid { source })?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .ok()
        .filter(|_| output.status.success())
        .ok_or_else(|| PgTempError::UnknownUid {
            source: io::Error::other(format!(
                "`id -u` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )),
        })
}

fn parse_status_euid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
}

/// Picks how to drop from root to `postgres`, checking the user exists.
fn root_run_as() -> Result<RunAs, PgTempError> {
    let user_exists = Command::new("id")
        .arg("-u")
        .arg(PG_USER)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|status| status.success())
        .unwrap_or(false);
    if !user_exists {
        return Err(PgTempError::NoPostgresUser { user: PG_USER });
    }
    if let Some(runuser) = find_program("runuser", &["/usr/sbin", "/sbin", "/usr/bin", "/bin"]) {
        return Ok(RunAs::Runuser(runuser));
    }
    if let Some(su) = find_program("su", &["/usr/bin", "/bin", "/usr/sbin", "/sbin"]) {
        return Ok(RunAs::Su(su));
    }
    Err(PgTempError::NoPrivilegeDrop { user: PG_USER })
}

/// Finds `name` on PATH, then in `fallback` directories (root's PATH in CI
/// containers does not always include the sbin directories).
fn find_program(name: &str, fallback: &[&str]) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(fallback.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Single-quotes `s` for `/bin/sh` unless it is made only of safe characters.
fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if safe {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Percent-encodes every byte except RFC 3986 unreserved characters and those
/// for which `keep` returns true.
fn percent_encode(s: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || keep(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bin_dir(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        for name in ["initdb", "pg_ctl", "postgres"] {
            let path = dir.join(name);
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn missing_binaries_error_is_actionable() {
        let empty = tempfile::tempdir().unwrap();
        let found = find_bin_dir(Some(OsStr::new("")), &empty.path().join("nope"));
        assert_eq!(found, None);
        let msg = PgTempError::BinariesNotFound.to_string();
        assert_eq!(
            msg,
            "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in \
             /usr/lib/postgresql/*/bin; install them with `apt-get install -y postgresql` \
             or set DATABASE_URL"
        );
    }

    #[test]
    fn picks_highest_debian_version_when_not_on_path() {
        let root = tempfile::tempdir().unwrap();
        for version in ["9.6", "13", "16", "not-a-version"] {
            fake_bin_dir(&root.path().join(version).join("bin"));
        }
        // 17 exists but is incomplete (no binaries), so it must be skipped.
        std::fs::create_dir_all(root.path().join("17/bin")).unwrap();
        let found = find_bin_dir(Some(OsStr::new("")), root.path());
        assert_eq!(found, Some(root.path().join("16/bin")));
    }

    #[test]
    fn path_wins_over_debian_layout() {
        let root = tempfile::tempdir().unwrap();
        let on_path = root.path().join("path-bin");
        fake_bin_dir(&on_path);
        fake_bin_dir(&root.path().join("lib/15/bin"));
        let path_var = std::env::join_paths([root.path().join("empty"), on_path.clone()]).unwrap();
        let found = find_bin_dir(Some(&path_var), &root.path().join("lib"));
        assert_eq!(found, Some(std::fs::canonicalize(&on_path).unwrap()));
    }

    #[test]
    fn parses_effective_uid_from_proc_status() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(parse_status_euid(status), Some(0));
        assert_eq!(parse_status_euid("Name:\tx\n"), None);
    }

    #[test]
    fn url_encodes_database_and_socket_dir() {
        assert_eq!(
            percent_encode("/tmp/a b+c", |b| b == b'/'),
            "/tmp/a%20b%2Bc"
        );
        assert_eq!(percent_encode("my db/x", |_| false), "my%20db%2Fx");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("/tmp/x-1"), "/tmp/x-1");
    }

    #[test]
    fn concurrent_clusters_do_not_collide() {
        let handles: Vec<_> = (0..2)
            .map(|_| std::thread::spawn(PgCluster::start))
            .collect();
        let clusters: Vec<PgCluster> = handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap_or_else(|e| panic!("{e}")))
            .collect();
        assert_ne!(clusters[0].socket_dir(), clusters[1].socket_dir());
        for cluster in &clusters {
            assert!(cluster.socket_dir().join(".s.PGSQL.5432").exists());
        }
        let dirs: Vec<PathBuf> = clusters.iter().map(|c| c.dir.path().to_owned()).collect();
        drop(clusters);
        for dir in dirs {
            assert!(!dir.exists(), "{} not removed", dir.display());
        }
    }

    /// The `su` fallback (for images without `runuser`) works too.
    #[test]
    fn su_fallback_starts_when_root() {
        if effective_uid().unwrap() != 0 {
            return;
        }
        let su = find_program("su", &["/usr/bin", "/bin"]).expect("su not found");
        let bin_dir = find_bin_dir(
            std::env::var_os("PATH").as_deref(),
            Path::new(DEBIAN_LIB_ROOT),
        )
        .expect("no PostgreSQL binaries");
        let cluster =
            PgCluster::start_with(bin_dir, RunAs::Su(su)).unwrap_or_else(|e| panic!("{e}"));
        assert!(cluster.socket_dir().join(".s.PGSQL.5432").exists());
    }

    /// Proves the URL shape against the real sqlx 0.9 parser and a live server.
    #[test]
    fn sqlx_connects_over_unix_socket() {
        use sqlx::Connection;
        use std::str::FromStr;

        let cluster = PgCluster::start().unwrap_or_else(|e| panic!("{e}"));
        let url = cluster.url("postgres");
        let opts = sqlx::postgres::PgConnectOptions::from_str(&url).unwrap();
        assert_eq!(
            opts.get_socket().map(PathBuf::as_path),
            Some(cluster.socket_dir())
        );
        assert_eq!(opts.get_database(), Some("postgres"));

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            let one: i32 = sqlx::query_scalar("SELECT 1")
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(one, 1);
            sqlx::query("CREATE DATABASE \"odd name+x\"")
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;

            let mut conn = sqlx::PgConnection::connect(&cluster.url("odd name+x"))
                .await
                .unwrap();
            let db: String = sqlx::query_scalar("SELECT current_database()")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            assert_eq!(db, "odd name+x");
            conn.close().await.unwrap();
        });
    }
}
