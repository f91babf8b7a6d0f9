//! A block version: one container image plus everything that decides whether a
//! running instance of it must be restarted (image digest, config, env).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::env::Env;
use super::ids::BlockName;
use super::shown::Shown;

/// Why a block version was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("image digest {value} is not of the form sha256:<64 lowercase hex digits>")]
    BadImageDigest { value: Shown },
    #[error("block {block} depends on itself")]
    SelfDependency { block: BlockName },
    #[error("block {block} lists dependency {dependency} twice")]
    DuplicateDependency {
        block: BlockName,
        dependency: BlockName,
    },
    #[error("hand_over timeout must be between 1 s and 1 h, got {secs} s")]
    BadHandoverTimeout { secs: u64 },
}

/// A content-addressed image reference (`sha256:...`). Two block versions with
/// the same digest run the same bits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageDigest(String);

impl ImageDigest {
    pub fn new(value: impl Into<String>) -> Result<Self, BlockError> {
        let value = value.into();
        let ok = value.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64
                && hex
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        });
        if ok {
            Ok(Self(value))
        } else {
            Err(BlockError::BadImageDigest {
                value: Shown::new(&value),
            })
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SHA-256 over a canonical encoding. Used for config and effective env, so
/// that devices can report what they run without shipping the values back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Builds a [`Fingerprint`] from length-prefixed fields, so that no two
/// different inputs share an encoding (`["ab","c"]` differs from `["a","bc"]`).
pub(crate) struct Fingerprinter(Sha256);

impl Fingerprinter {
    pub(crate) fn new(domain: &str) -> Self {
        let mut me = Self(Sha256::new());
        me.field(domain);
        me
    }
    pub(crate) fn field(&mut self, s: &str) {
        self.0.update((s.len() as u64).to_le_bytes());
        self.0.update(s.as_bytes());
    }
    pub(crate) fn count(&mut self, n: usize) {
        self.0.update((n as u64).to_le_bytes());
    }
    pub(crate) fn finish(self) -> Fingerprint {
        Fingerprint(self.0.finalize().into())
    }
}

/// How a block runs, apart from its image and env. A change here restarts it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockConfig {
    pub entrypoint: Vec<String>,
    pub command: Vec<String>,
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl BlockConfig {
    /// A stable digest of the config; equal configs have equal digests.
    pub fn digest(&self) -> Fingerprint {
        let mut h = Fingerprinter::new("lockstep.config.v1");
        h.count(self.entrypoint.len());
        self.entrypoint.iter().for_each(|s| h.field(s));
        h.count(self.command.len());
        self.command.iter().for_each(|s| h.field(s));
        match &self.working_dir {
            Some(d) => {
                h.count(1);
                h.field(d)
            }
            None => h.count(0),
        }
        h.count(self.labels.len());
        for (k, v) in &self.labels {
            h.field(k);
            h.field(v);
        }
        h.finish()
    }
}

/// Compose's long-form `depends_on` entry: `restart: true` means "restart me
/// when that block restarts or stops".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dependency {
    pub block: BlockName,
    pub restart: bool,
}

/// How the runtime replaces a running block with a new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpdateStrategy {
    /// Fetch the new image first, then stop the old one (shortest downtime).
    #[default]
    DownloadThenKill,
    /// Stop the old one first (for devices short on disk).
    KillThenDownload,
    /// Start the new one beside the old and let them hand state over; the old
    /// one is stopped when the new one signals completion or `timeout` passes.
    HandOver { timeout: Duration },
}

impl UpdateStrategy {
    pub fn hand_over(timeout: Duration) -> Result<Self, BlockError> {
        let secs = timeout.as_secs();
        if (1..=3600).contains(&secs) {
            Ok(Self::HandOver { timeout })
        } else {
            Err(BlockError::BadHandoverTimeout { secs })
        }
    }
    pub fn allows_handover(&self) -> bool {
        matches!(self, Self::HandOver { .. })
    }
}

/// One version of a block, as the catalog stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockVersion {
    pub name: BlockName,
    pub version: semver::Version,
    pub image_digest: ImageDigest,
    pub config: BlockConfig,
    /// Env baked into this block version (lowest precedence but one; see [`super::env`]).
    pub env: Env,
    pub depends_on: Vec<Dependency>,
    pub update_strategy: UpdateStrategy,
}

impl BlockVersion {
    /// Checks what can be checked on one block alone.
    pub fn validate(&self) -> Result<(), BlockError> {
        let mut seen = std::collections::BTreeSet::new();
        for dep in &self.depends_on {
            if dep.block == self.name {
                return Err(BlockError::SelfDependency {
                    block: self.name.clone(),
                });
            }
            if !seen.insert(&dep.block) {
                return Err(BlockError::DuplicateDependency {
                    block: self.name.clone(),
                    dependency: dep.block.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_digest_requires_sha256_and_64_lowercase_hex() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert!(ImageDigest::new(good).is_ok());
        for bad in [
            "latest".to_owned(),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha512:{}", "a".repeat(64)),
        ] {
            assert!(ImageDigest::new(bad).is_err());
        }
    }

    #[test]
    fn config_digest_separates_fields_unambiguously() {
        let a = BlockConfig {
            command: vec!["ab".into(), "c".into()],
            ..Default::default()
        };
        let b = BlockConfig {
            command: vec!["a".into(), "bc".into()],
            ..Default::default()
        };
        let c = BlockConfig {
            entrypoint: vec!["ab".into()],
            command: vec!["c".into()],
            ..Default::default()
        };
        assert_ne!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
        assert_eq!(a.digest(), a.clone().digest());
        let wd = BlockConfig {
            working_dir: Some(String::new()),
            ..Default::default()
        };
        assert_ne!(wd.digest(), BlockConfig::default().digest());
    }

    #[test]
    fn fingerprint_hex_round_trips() {
        let f = BlockConfig::default().digest();
        assert_eq!(Fingerprint::from_hex(&f.to_hex()), Some(f));
        assert_eq!(Fingerprint::from_hex("zz"), None);
    }

    #[test]
    fn hand_over_timeout_is_bounded() {
        assert!(UpdateStrategy::hand_over(Duration::from_secs(0)).is_err());
        assert!(UpdateStrategy::hand_over(Duration::from_secs(1)).is_ok());
        assert!(UpdateStrategy::hand_over(Duration::from_secs(3600)).is_ok());
        assert!(UpdateStrategy::hand_over(Duration::from_secs(3601)).is_err());
        assert!(
            UpdateStrategy::hand_over(Duration::from_secs(30))
                .unwrap()
                .allows_handover()
        );
        assert!(!UpdateStrategy::DownloadThenKill.allows_handover());
        assert!(!UpdateStrategy::KillThenDownload.allows_handover());
    }
}
