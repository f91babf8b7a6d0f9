//! Per-block update locks on the device, as the kernel keeps them.
//!
//! Every block has a directory `<lock-root>/<block>/`, meant to be mounted into
//! that block's container, holding an empty file `updates.lock`. A block that
//! must not be disturbed takes `flock(LOCK_EX)` on it; the kernel frees the lock
//! when the holder's last descriptor closes, so a crashed holder never leaves a
//! stale lock behind.
//!
//! The agent needs two things from those files, and this module gives both:
//!
//! - **Observation without interference** ([`LockDir::observe`]): which locks
//!   are held, read from `/proc/locks` (matched by device and inode), never by
//!   taking the lock to look — a probe would itself block a holder trying to
//!   take it at that moment. Any `FLOCK` holder counts (shared or exclusive: both
//!   stop the agent from taking its exclusive lock); queued waiters do not; the
//!   agent's own locks are not reported.
//! - **Atomic acquisition** ([`LockDir::acquire_all`]): before an operation, the
//!   agent takes every impacted lock non-blocking, in block-name order; if any
//!   is held it releases what it took and names every holder in the way.
//!   Otherwise the returned [`HeldLocks`] keep them until dropped — for the
//!   whole operation, including an OS update or a reboot.
//!
//! [`LockTracker`] turns observations into per-block generations that only move
//! forward, persisted in the agent's state directory so they keep increasing
//! across agent restarts (the cloud fences decisions on them).
//!
//! The kernel shows in `/proc/locks` only the locks of processes visible in
//! the reader's pid namespace: the agent must run in a pid namespace that
//! contains the blocks' processes (the host's, e.g. `pid: host`), or held locks
//! look free. The agent's lock descriptors are close-on-exec, so a block
//! started during an operation never inherits (and outlives) the agent's lock.
//!
//! Block directories are mode `0755`: writable by their owner only, never by
//! the world (a world-writable directory would let any local user replace
//! `updates.lock`, silently splitting the lock in two, or read another
//! block's token). The owner is the agent's user, unless the operator names
//! the block's own user ([`BlockOwner`], `--block-owner a=1000:1000`): then
//! the directory belongs to that user, who alone can create `handover.done`
//! there. A directory left world-writable by an older agent is tightened. The
//! lock file is mode `0644`: `flock(2)` needs only a read-only descriptor, so
//! any block user can take it and nobody but its owner can change it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use crate::domain::{BlockName, Generation, IdError, LockState, Timestamp};

/// The name of the lock file inside a block's lock directory.
pub const LOCK_FILE_NAME: &str = "updates.lock";

/// Where the kernel lists every file lock on the machine.
pub const PROC_LOCKS: &str = "/proc/locks";

/// Why a lock could not be observed, taken or tracked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot take the update lock of block {block} ({}): {source}", path.display())]
    Flock {
        block: BlockName,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("update locks held by {}", list(blocks))]
    Held { blocks: Vec<BlockName> },
    #[error("lock state file {} is corrupt: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("lock state file {} names an invalid block {name:?}: {source}", path.display())]
    CorruptBlock {
        path: PathBuf,
        name: String,
        #[source]
        source: IdError,
    },
    #[error("cannot encode lock state for {}: {source}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn list(blocks: &[BlockName]) -> String {
    blocks
        .iter()
        .map(BlockName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LockError {
    move |source| LockError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The user a block runs as, who owns its lock directory and token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockOwner {
    pub uid: u32,
    pub gid: Option<u32>,
}

impl std::str::FromStr for BlockOwner {
    type Err = String;

    /// `UID` or `UID:GID`, numeric.
    fn from_str(s: &str) -> Result<Self, String> {
        let (uid, gid) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        let num = |v: &str, what: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("{what} must be a number, not {v:?}"))
        };
        Ok(Self {
            uid: num(uid, "the uid")?,
            gid: gid.map(|g| num(g, "the gid")).transpose()?,
        })
    }
}

/// The root of the per-block lock directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockDir {
    root: PathBuf,
    owners: BTreeMap<BlockName, BlockOwner>,
}

impl LockDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            owners: BTreeMap::new(),
        }
    }

    /// Gives these blocks' directories (and tokens) to their own users.
    pub fn with_owners(mut self, owners: BTreeMap<BlockName, BlockOwner>) -> Self {
        self.owners = owners;
        self
    }

    /// The user a block's directory and token belong to, if not the agent's.
    pub fn owner(&self, block: &BlockName) -> Option<BlockOwner> {
        self.owners.get(block).copied()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<block>`: the directory mounted into the block's container.
    pub fn block_dir(&self, block: &BlockName) -> PathBuf {
        self.root.join(block.as_str())
    }

    /// `<root>/<block>/updates.lock`.
    pub fn lock_path(&self, block: &BlockName) -> PathBuf {
        self.block_dir(block).join(LOCK_FILE_NAME)
    }

    /// Creates `<root>/<block>/` (mode 0755, owned by the block's user if
    /// one is named) and an empty `updates.lock` (mode 0644: any user can
    /// open it read-only and lock it) if missing; tightens a directory an
    /// older agent left world-writable. Returns the lock file's path.
    pub fn ensure_block(&self, block: &BlockName) -> Result<PathBuf, LockError> {
        let dir = self.block_dir(block);
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(io_err("create lock directory", &dir))?;
        }
        let meta = std::fs::metadata(&dir).map_err(io_err("stat", &dir))?;
        if meta.permissions().mode() & 0o7777 != 0o755 {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                .map_err(io_err("set permissions of", &dir))?;
        }
        if let Some(owner) = self.owner(block) {
            use std::os::unix::fs::MetadataExt as _;
            if meta.uid() != owner.uid || owner.gid.is_some_and(|g| g != meta.gid()) {
                std::os::unix::fs::chown(&dir, Some(owner.uid), owner.gid)
                    .map_err(io_err("give the block's user", &dir))?;
            }
        }
        let path = dir.join(LOCK_FILE_NAME);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
        {
            Ok(_) => {
                // The umask may have narrowed the mode given to open(2).
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                    .map_err(io_err("set permissions of", &path))?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(LockError::Io {
                    op: "create lock file",
                    path,
                    source,
                });
            }
        }
        Ok(path)
    }

    /// Which of `blocks` have their `updates.lock` flocked by a process other
    /// than this one, read from `/proc/locks`. Never takes a lock. A missing
    /// lock file is not held.
    pub fn observe(&self, blocks: &[BlockName]) -> Result<BTreeMap<BlockName, bool>, LockError> {
        let proc_locks = Path::new(PROC_LOCKS);
        let text = std::fs::read_to_string(proc_locks).map_err(io_err("read", proc_locks))?;
        self.observe_in(blocks, &text, std::process::id())
    }

    /// [`observe`](Self::observe) against a given `/proc/locks` text, ignoring
    /// locks of `own_pid`.
    fn observe_in(
        &self,
        blocks: &[BlockName],
        proc_locks: &str,
        own_pid: u32,
    ) -> Result<BTreeMap<BlockName, bool>, LockError> {
        let own_pid = i64::from(own_pid);
        let holders: BTreeSet<FileId> = parse_proc_locks(proc_locks)
            .into_iter()
            .filter(|l| l.kind == LockKind::Flock && !l.waiter && l.pid != own_pid)
            .filter_map(|l| l.file)
            .collect();
        let mut out = BTreeMap::new();
        for block in blocks {
            let path = self.lock_path(block);
            let held = match rustix::fs::stat(&path) {
                Ok(st) => holders.contains(&FileId {
                    major: rustix::fs::major(st.st_dev),
                    minor: rustix::fs::minor(st.st_dev),
                    inode: st.st_ino,
                }),
                Err(rustix::io::Errno::NOENT) => false,
                Err(e) => {
                    return Err(LockError::Io {
                        op: "stat",
                        path,
                        source: e.into(),
                    });
                }
            };
            out.insert(block.clone(), held);
        }
        Ok(out)
    }

    /// Takes `LOCK_EX|LOCK_NB` on every block's `updates.lock` in block-name
    /// order, creating missing lock files. If any is held by someone else,
    /// releases the ones taken and returns [`LockError::Held`] naming every
    /// block found held (all are tried, not just up to the first).
    pub fn acquire_all(&self, blocks: &[BlockName]) -> Result<HeldLocks, LockError> {
        let ordered: BTreeSet<&BlockName> = blocks.iter().collect();
        let mut taken = Vec::with_capacity(ordered.len());
        let mut held = Vec::new();
        for block in ordered {
            let path = self.ensure_block(block)?;
            // Read-only is enough for flock(2), and works whoever owns the file.
            let file = File::open(&path).map_err(io_err("open lock file", &path))?;
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => taken.push((block.clone(), file)),
                Err(rustix::io::Errno::WOULDBLOCK) => held.push(block.clone()),
                Err(e) => {
                    return Err(LockError::Flock {
                        block: block.clone(),
                        path,
                        source: e.into(),
                    });
                }
            }
        }
        if held.is_empty() {
            Ok(HeldLocks { locks: taken })
        } else {
            // Dropping `taken` closes the descriptors, which releases the locks.
            drop(taken);
            Err(LockError::Held { blocks: held })
        }
    }
}

/// Locks taken by the agent; released on drop (closing the descriptors).
#[derive(Debug)]
pub struct HeldLocks {
    locks: Vec<(BlockName, File)>,
}

impl HeldLocks {
    /// The blocks whose locks are held, in block-name order.
    pub fn blocks(&self) -> Vec<BlockName> {
        self.locks.iter().map(|(b, _)| b.clone()).collect()
    }

    /// The lock descriptors, for an action's processes to inherit: a
    /// `flock` belongs to the open file, so it stays held while any process
    /// keeps a descriptor of it open.
    pub fn fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd as _;
        self.locks.iter().map(|(_, f)| f.as_fd()).collect()
    }
}

/// The kind of a lock in `/proc/locks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// `flock(2)`: what blocks use for update locks.
    Flock,
    /// `fcntl(F_SETLK)` record locks.
    Posix,
    /// Open-file-description record locks.
    Ofd,
    /// Leases, delegations and anything newer.
    Other,
}

/// The file a lock is on: device numbers and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId {
    pub major: u32,
    pub minor: u32,
    pub inode: u64,
}

/// One line of `/proc/locks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcLock {
    pub kind: LockKind,
    /// A `->` line: a process queued for the lock, not a holder.
    pub waiter: bool,
    /// `READ`, `WRITE`, … as the kernel prints it.
    pub access: String,
    /// The owner's pid (in the reader's pid namespace); -1 for OFD locks.
    pub pid: i64,
    /// `None` when the kernel prints `<none>` (no inode).
    pub file: Option<FileId>,
}

/// Parses the text of `/proc/locks`. Lines that do not parse are skipped: the
/// format is the kernel's, and one odd line must not blind the agent to the
/// rest.
pub fn parse_proc_locks(text: &str) -> Vec<ProcLock> {
    text.lines().filter_map(parse_proc_locks_line).collect()
}

/// Parses one line such as `1: FLOCK  ADVISORY  WRITE 12345 fd:01:1234567 0 EOF`
/// or its waiter form `1: -> FLOCK  ADVISORY  WRITE 12346 fd:01:1234567 0 EOF`.
pub fn parse_proc_locks_line(line: &str) -> Option<ProcLock> {
    let mut fields = line.split_whitespace();
    let id = fields.next()?;
    id.strip_suffix(':')?.parse::<u64>().ok()?;
    let mut kind = fields.next()?;
    let waiter = kind == "->";
    if waiter {
        kind = fields.next()?;
    }
    let kind = match kind {
        "FLOCK" => LockKind::Flock,
        "POSIX" => LockKind::Posix,
        "OFDLCK" => LockKind::Ofd,
        _ => LockKind::Other,
    };
    let _mode = fields.next()?;
    let access = fields.next()?.to_owned();
    let pid = fields.next()?.parse::<i64>().ok()?;
    let file = parse_file_id(fields.next()?)?;
    Some(ProcLock {
        kind,
        waiter,
        access,
        pid,
        file,
    })
}

/// `fd:01:1234567` (hex major, hex minor, decimal inode); `<none>:0` → `Some(None)`.
fn parse_file_id(field: &str) -> Option<Option<FileId>> {
    if field.starts_with("<none>") {
        return Some(None);
    }
    let mut parts = field.split(':');
    let major = u32::from_str_radix(parts.next()?, 16).ok()?;
    let minor = u32::from_str_radix(parts.next()?, 16).ok()?;
    let inode = parts.next()?.parse::<u64>().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(Some(FileId {
        major,
        minor,
        inode,
    }))
}

/// Per-block lock generations, persisted in the agent's state directory so
/// they keep increasing across agent restarts.
#[derive(Debug)]
pub struct LockTracker {
    path: PathBuf,
    states: BTreeMap<BlockName, LockState>,
}

/// The on-disk form of one [`LockState`].
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct StoredLock {
    held: bool,
    generation: u64,
    since_ms: i64,
}

impl LockTracker {
    /// Loads `path` (JSON) or starts empty if it does not exist; a corrupt file
    /// is an error naming the path.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, LockError> {
        let path = path.into();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Self {
                    path,
                    states: BTreeMap::new(),
                });
            }
            Err(source) => {
                return Err(LockError::Io {
                    op: "read lock state",
                    path,
                    source,
                });
            }
        };
        let stored: BTreeMap<String, StoredLock> = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(source) => return Err(LockError::Corrupt { path, source }),
        };
        let mut states = BTreeMap::new();
        for (name, s) in stored {
            let block = match BlockName::new(name.as_str()) {
                Ok(b) => b,
                Err(source) => return Err(LockError::CorruptBlock { path, name, source }),
            };
            states.insert(
                block,
                LockState {
                    held: s.held,
                    generation: Generation(s.generation),
                    since: Timestamp(s.since_ms),
                },
            );
        }
        Ok(Self { path, states })
    }

    /// Applies an observation: every block whose held state differs from the
    /// last known (or is new) gets generation+1 and `since = now`. Persists
    /// atomically before returning the changed entries; on error nothing
    /// changes in memory either. Blocks not in `observed` keep their state.
    pub fn update(
        &mut self,
        observed: &BTreeMap<BlockName, bool>,
        now: Timestamp,
    ) -> Result<Vec<(BlockName, LockState)>, LockError> {
        let mut changed = Vec::new();
        for (block, &held) in observed {
            match self.states.get(block) {
                Some(known) if known.held == held => {}
                known => {
                    let generation =
                        known.map_or(LockState::UNREPORTED.generation, |k| k.generation);
                    changed.push((
                        block.clone(),
                        LockState {
                            held,
                            generation: Generation(generation.0 + 1),
                            since: now,
                        },
                    ));
                }
            }
        }
        if changed.is_empty() {
            return Ok(changed);
        }
        let mut next = self.states.clone();
        next.extend(changed.iter().cloned());
        let stored: BTreeMap<&str, StoredLock> = next
            .iter()
            .map(|(b, s)| {
                (
                    b.as_str(),
                    StoredLock {
                        held: s.held,
                        generation: s.generation.0,
                        since_ms: s.since.0,
                    },
                )
            })
            .collect();
        let bytes = serde_json::to_vec_pretty(&stored).map_err(|source| LockError::Encode {
            path: self.path.clone(),
            source,
        })?;
        write_atomic(&self.path, &bytes).map_err(|(op, path, source)| LockError::Io {
            op,
            path,
            source,
        })?;
        self.states = next;
        Ok(changed)
    }

    /// The last known state of every block ever observed.
    pub fn current(&self) -> &BTreeMap<BlockName, LockState> {
        &self.states
    }

    /// Where the state is persisted.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Replaces `path` with `bytes` atomically: writes a temporary file in the same
/// directory, fsyncs it, renames it over `path` and fsyncs the directory, so a
/// crash leaves either the old or the new content, never a torn file. Creates
/// the parent directory if missing. On error, returns what failed and on which
/// path.
pub(crate) fn write_atomic(
    path: &Path,
    bytes: &[u8],
) -> Result<(), (&'static str, PathBuf, io::Error)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| ("create directory", dir.clone(), e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .map_err(|e| ("create a temporary file in", dir.clone(), e))?;
    tmp.write_all(bytes)
        .map_err(|e| ("write", tmp.path().to_owned(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| ("fsync", tmp.path().to_owned(), e))?;
    tmp.persist(path)
        .map_err(|e| ("rename over", path.to_owned(), e.error))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ("fsync directory", dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flock(pid: i64, file: Option<(u32, u32, u64)>, waiter: bool) -> ProcLock {
        ProcLock {
            kind: LockKind::Flock,
            waiter,
            access: "WRITE".into(),
            pid,
            file: file.map(|(major, minor, inode)| FileId {
                major,
                minor,
                inode,
            }),
        }
    }

    #[test]
    fn parses_proc_locks_lines() {
        let cases: Vec<(&str, Option<ProcLock>)> = vec![
            (
                "1: FLOCK  ADVISORY  WRITE 12345 fd:01:1234567 0 EOF",
                Some(flock(12345, Some((0xfd, 1, 1234567)), false)),
            ),
            (
                "1: -> FLOCK  ADVISORY  WRITE 12346 fd:01:1234567 0 EOF",
                Some(flock(12346, Some((0xfd, 1, 1234567)), true)),
            ),
            (
                "12: FLOCK  ADVISORY  READ 7 103:0a:42 0 EOF",
                Some(ProcLock {
                    access: "READ".into(),
                    ..flock(7, Some((0x103, 0x0a, 42)), false)
                }),
            ),
            (
                "3: POSIX  ADVISORY  WRITE 800 08:02:99 0 EOF",
                Some(ProcLock {
                    kind: LockKind::Posix,
                    ..flock(800, Some((8, 2, 99)), false)
                }),
            ),
            (
                "4: OFDLCK ADVISORY  READ -1 00:05:1 0 9",
                Some(ProcLock {
                    kind: LockKind::Ofd,
                    access: "READ".into(),
                    ..flock(-1, Some((0, 5, 1)), false)
                }),
            ),
            (
                "5: LEASE  ACTIVE    READ 99 08:01:7 0 EOF",
                Some(ProcLock {
                    kind: LockKind::Other,
                    access: "READ".into(),
                    ..flock(99, Some((8, 1, 7)), false)
                }),
            ),
            (
                "6: FLOCK  ADVISORY  WRITE 10 <none>:0 0 EOF",
                Some(flock(10, None, false)),
            ),
            ("", None),
            ("garbage", None),
            ("1 FLOCK ADVISORY WRITE 1 fd:01:2 0 EOF", None),
            ("1: FLOCK ADVISORY WRITE notapid fd:01:2 0 EOF", None),
            ("1: FLOCK ADVISORY WRITE 1 zz:01:2 0 EOF", None),
            ("1: FLOCK ADVISORY WRITE 1 fd:01 0 EOF", None),
            ("1: FLOCK ADVISORY WRITE 1 fd:01:2:3 0 EOF", None),
            ("1: FLOCK ADVISORY", None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_proc_locks_line(line), want, "{line:?}");
        }
    }

    #[test]
    fn parses_a_whole_file_skipping_bad_lines() {
        let text = "1: FLOCK  ADVISORY  WRITE 1 fd:01:2 0 EOF\nnonsense\n1: -> FLOCK  ADVISORY  WRITE 3 fd:01:2 0 EOF\n";
        let got = parse_proc_locks(text);
        assert_eq!(got.len(), 2);
        assert!(!got[0].waiter && got[1].waiter);
    }

    #[test]
    fn observation_matches_flock_holders_only() {
        let dir = tempfile::tempdir().unwrap();
        let locks = LockDir::new(dir.path());
        let a = BlockName::new("a").unwrap();
        let b = BlockName::new("b").unwrap();
        let c = BlockName::new("c").unwrap();
        let absent = BlockName::new("absent").unwrap();
        let mut ids = BTreeMap::new();
        for blk in [&a, &b, &c] {
            let p = locks.ensure_block(blk).unwrap();
            let st = rustix::fs::stat(&p).unwrap();
            ids.insert(
                blk.clone(),
                format!(
                    "{:02x}:{:02x}:{}",
                    rustix::fs::major(st.st_dev),
                    rustix::fs::minor(st.st_dev),
                    st.st_ino
                ),
            );
        }
        let text = format!(
            "1: FLOCK  ADVISORY  WRITE 100 {a} 0 EOF\n\
             1: -> FLOCK  ADVISORY  WRITE 101 {b} 0 EOF\n\
             2: POSIX  ADVISORY  WRITE 102 {b} 0 EOF\n\
             3: FLOCK  ADVISORY  WRITE 55 {c} 0 EOF\n",
            a = ids[&a],
            b = ids[&b],
            c = ids[&c],
        );
        let got = locks
            .observe_in(
                &[a.clone(), b.clone(), c.clone(), absent.clone()],
                &text,
                55,
            )
            .unwrap();
        assert_eq!(
            got,
            BTreeMap::from([(a, true), (b, false), (c, false), (absent, false)])
        );
    }

    #[test]
    fn ensure_block_creates_an_openable_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let locks = LockDir::new(dir.path().join("locks"));
        let blk = BlockName::new("telemetry").unwrap();
        let path = locks.ensure_block(&blk).unwrap();
        assert_eq!(path, dir.path().join("locks/telemetry/updates.lock"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o7777, 0o755, "not world-writable");
        // Idempotent, and keeps an existing file (same inode: same lock).
        let ino = rustix::fs::stat(&path).unwrap().st_ino;
        locks.ensure_block(&blk).unwrap();
        assert_eq!(rustix::fs::stat(&path).unwrap().st_ino, ino);
    }

    #[test]
    fn a_world_writable_directory_is_tightened_and_an_owner_gets_it() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let blk = BlockName::new("ui").unwrap();
        let legacy = dir.path().join("ui");
        std::fs::create_dir_all(&legacy).unwrap();
        std::fs::set_permissions(&legacy, std::fs::Permissions::from_mode(0o1777)).unwrap();
        // Owned by whoever runs the test: chown to oneself is always allowed.
        let me = std::fs::metadata(dir.path()).unwrap();
        let owner = BlockOwner {
            uid: me.uid(),
            gid: Some(me.gid()),
        };
        let locks = LockDir::new(dir.path()).with_owners([(blk.clone(), owner)].into());
        locks.ensure_block(&blk).unwrap();
        let meta = std::fs::metadata(&legacy).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
        assert_eq!((meta.uid(), meta.gid()), (me.uid(), me.gid()));
    }

    #[test]
    fn block_owners_parse_as_uid_and_optional_gid() {
        let cases = [
            ("1000", Ok((1000, None))),
            ("1000:50", Ok((1000, Some(50)))),
            ("bob", Err("the uid must be a number")),
            ("1000:staff", Err("the gid must be a number")),
        ];
        for (text, want) in cases {
            let got = text.parse::<BlockOwner>().map(|o| (o.uid, o.gid));
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{text}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{text}: {e}"),
                (g, w) => panic!("{text}: {g:?} vs {w:?}"),
            }
        }
    }

    #[test]
    fn acquire_all_is_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let locks = LockDir::new(dir.path());
        let a = BlockName::new("a").unwrap();
        let b = BlockName::new("b").unwrap();
        let held = locks
            .acquire_all(&[b.clone(), a.clone(), b.clone()])
            .unwrap();
        assert_eq!(held.blocks(), vec![a.clone(), b.clone()]);
        // A second open file description conflicts, even in this process.
        match locks.acquire_all(&[a.clone(), b.clone()]) {
            Err(LockError::Held { blocks }) => assert_eq!(blocks, vec![a.clone(), b.clone()]),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(held);
        assert!(locks.acquire_all(&[a, b]).is_ok());
    }

    #[test]
    fn tracker_bumps_generations_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/locks.json");
        let a = BlockName::new("a").unwrap();
        let b = BlockName::new("b").unwrap();
        let mut t = LockTracker::load(&path).unwrap();
        assert!(t.current().is_empty());

        let obs = BTreeMap::from([(a.clone(), false), (b.clone(), true)]);
        let changed = t.update(&obs, Timestamp(10)).unwrap();
        assert_eq!(changed.len(), 2);
        assert_eq!(t.current()[&a].generation, Generation(1));
        assert!(t.current()[&b].held);

        // No change: no bump, nothing returned.
        assert!(t.update(&obs, Timestamp(20)).unwrap().is_empty());
        assert_eq!(t.current()[&b].since, Timestamp(10));

        let obs = BTreeMap::from([(b.clone(), false)]);
        let changed = t.update(&obs, Timestamp(30)).unwrap();
        assert_eq!(
            changed,
            vec![(
                b.clone(),
                LockState {
                    held: false,
                    generation: Generation(2),
                    since: Timestamp(30)
                }
            )]
        );

        // A restarted agent continues from the persisted generations.
        let mut t2 = LockTracker::load(&path).unwrap();
        assert_eq!(t2.current(), t.current());
        let changed = t2
            .update(&BTreeMap::from([(b.clone(), true)]), Timestamp(40))
            .unwrap();
        assert_eq!(changed[0].1.generation, Generation(3));
        assert_eq!(t2.current()[&a].generation, Generation(1));
    }

    #[test]
    fn corrupt_tracker_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks.json");
        std::fs::write(&path, b"{ not json").unwrap();
        let err = LockTracker::load(&path).unwrap_err();
        assert!(matches!(err, LockError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("locks.json"), "{err}");

        std::fs::write(
            &path,
            br#"{"Bad Name":{"held":true,"generation":1,"since_ms":0}}"#,
        )
        .unwrap();
        let err = LockTracker::load(&path).unwrap_err();
        assert!(matches!(err, LockError::CorruptBlock { .. }), "{err:?}");
    }
}
