//! The agent's durable memory, in `<state-dir>/agent.json`: the last intent
//! it handled (so each block sees each intent once, across restarts and
//! reconnects), its lock-report sequence, the intents each block has yet
//! to answer, its epoch, the journal of the apply under way and the outcomes
//! of recent applies. Written atomically (temp file, fsync, rename) before
//! the agent acknowledges anything.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::action::{InFlight, Outcome};

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// An intent a block has been given and not yet answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockIntent {
    pub seq: u64,
    pub operation_id: u64,
    /// `release_request` or `notice`.
    pub kind: String,
    pub reason: String,
    pub handover: bool,
    #[serde(default)]
    pub because_of: Option<String>,
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub window: Option<(i64, i64)>,
    #[serde(default)]
    pub deadline_unix_ms: Option<i64>,
    #[serde(default)]
    pub message: String,
    pub received_unix_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// The highest intent sequence handled.
    pub last_intent_seq: u64,
    /// The sequence of the last lock report sent.
    pub report_seq: u64,
    #[serde(default)]
    pub current_release: Option<String>,
    /// Unanswered intents per block.
    #[serde(default)]
    pub block_intents: BTreeMap<String, Vec<BlockIntent>>,
    /// This agent's life on the device: a random id made when the state is
    /// created (see `Hello.agent_epoch`).
    #[serde(default)]
    pub epoch: String,
    /// The apply under way, journalled before each of its steps.
    #[serde(default)]
    pub in_flight: Option<InFlight>,
    /// The outcomes of the latest applies, by intent sequence, to answer a
    /// resent apply (after a reconnect or a restart) without applying twice.
    #[serde(default)]
    pub outcomes: BTreeMap<u64, Outcome>,
}

/// The state and where it lives.
pub struct StateFile {
    path: PathBuf,
    pub state: AgentState,
}

impl StateFile {
    pub fn load(dir: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
            op: "creating",
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join("agent.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AgentState::default(),
            Err(source) => {
                return Err(StateError::Io {
                    op: "reading",
                    path,
                    source,
                });
            }
        };
        Ok(Self { path, state })
    }

    /// Writes the state durably.
    pub fn save(&self) -> Result<(), StateError> {
        write_atomic(
            &self.path,
            &serde_json::to_vec_pretty(&self.state).unwrap_or_default(),
        )
    }
}

/// Writes `bytes` to `path` so that readers see the old or the new content,
/// never a torn one, and it survives a crash once this returns.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let io = |op: &'static str, p: &Path| {
        let p = p.to_owned();
        move |source| StateError::Io {
            op,
            path: p,
            source,
        }
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    f.write_all(bytes).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("renaming into", path))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateFile::load(dir.path()).unwrap();
        assert_eq!(s.state, AgentState::default());
        s.state.last_intent_seq = 7;
        s.state.block_intents.insert(
            "a".into(),
            vec![BlockIntent {
                seq: 7,
                operation_id: 1,
                kind: "release_request".into(),
                reason: "os_update".into(),
                handover: false,
                because_of: None,
                generation: 3,
                target: "6.2".into(),
                window: Some((1, 2)),
                deadline_unix_ms: None,
                message: String::new(),
                received_unix_ms: 5,
            }],
        );
        s.save().unwrap();
        let again = StateFile::load(dir.path()).unwrap();
        assert_eq!(again.state, s.state);
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agent.json"), b"{nope").unwrap();
        let err = StateFile::load(dir.path())
            .err()
            .expect("corrupt")
            .to_string();
        assert!(err.contains("agent.json"), "{err}");
    }
}
