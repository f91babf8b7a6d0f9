//! Environment variables and the one precedence rule that turns the layers into
//! a block's effective env.
//!
//! Precedence, lowest first (a later layer overrides an earlier one):
//! 1. the release's release-wide env;
//! 2. the block version's own env;
//! 3. fleet variables that apply device-wide;
//! 4. fleet variables scoped to this block;
//! 5. device variables that apply device-wide;
//! 6. device variables scoped to this block.
//!
//! More specific always wins: device beats fleet, block-scoped beats device-wide
//! at the same level, and anything an operator sets beats what was baked into a
//! release. A variable "scoped to named blocks" is stored as one entry per block.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::block::{Fingerprint, Fingerprinter};
use super::ids::BlockName;
use super::shown::Shown;

/// Why an env variable was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error(
        "env variable name {name} must match [A-Za-z_][A-Za-z0-9_]* and be at most 255 characters"
    )]
    BadName { name: Shown },
    #[error(
        "env variable {name} is scoped to an empty list of blocks; use a device-wide scope instead"
    )]
    EmptyScope { name: String },
}

/// A validated env variable name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvName(String);

impl EnvName {
    pub fn new(name: impl Into<String>) -> Result<Self, EnvError> {
        let name = name.into();
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if first_ok && rest_ok && name.len() <= 255 {
            Ok(Self(name))
        } else {
            Err(EnvError::BadName {
                name: Shown::new(&name),
            })
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EnvName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A set of variables, ordered by name so that fingerprints are canonical.
pub type Env = BTreeMap<EnvName, String>;

/// The fingerprint of an effective env: equal envs, equal fingerprints.
pub fn fingerprint(env: &Env) -> Fingerprint {
    let mut h = Fingerprinter::new("lockstep.env.v1");
    h.count(env.len());
    for (k, v) in env {
        h.field(k.as_str());
        h.field(v);
    }
    h.finish()
}

/// Where a variable applies on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvScope {
    /// Every block on the device.
    Device,
    /// Only the named blocks.
    Blocks(BTreeSet<BlockName>),
}

/// Whether a variable is set for a whole fleet or for one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnvLevel {
    Fleet,
    Device,
}

/// One variable as an operator sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    pub name: EnvName,
    pub value: String,
    pub scope: EnvScope,
}

/// The variables of one level (fleet or device), normalised: device-wide ones
/// and, per block, the ones scoped to it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnvLayer {
    pub wide: Env,
    pub scoped: BTreeMap<BlockName, Env>,
}

impl EnvLayer {
    pub fn set(&mut self, var: &EnvVar) -> Result<(), EnvError> {
        match &var.scope {
            EnvScope::Device => {
                self.wide.insert(var.name.clone(), var.value.clone());
            }
            EnvScope::Blocks(blocks) if blocks.is_empty() => {
                return Err(EnvError::EmptyScope {
                    name: var.name.to_string(),
                });
            }
            EnvScope::Blocks(blocks) => {
                for b in blocks {
                    self.scoped
                        .entry(b.clone())
                        .or_default()
                        .insert(var.name.clone(), var.value.clone());
                }
            }
        }
        Ok(())
    }

    pub fn unset(&mut self, name: &EnvName, scope: &EnvScope) {
        match scope {
            EnvScope::Device => {
                self.wide.remove(name);
            }
            EnvScope::Blocks(blocks) => {
                for b in blocks {
                    if let Some(env) = self.scoped.get_mut(b) {
                        env.remove(name);
                        if env.is_empty() {
                            self.scoped.remove(b);
                        }
                    }
                }
            }
        }
    }

    /// Blocks this layer names explicitly.
    pub fn scoped_blocks(&self) -> impl Iterator<Item = &BlockName> {
        self.scoped.keys()
    }
}

/// The operator-set variables that apply to one device: its fleet's and its own.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnvContext {
    pub fleet: EnvLayer,
    pub device: EnvLayer,
}

impl EnvContext {
    /// The effective env of `block`, given the release-wide and block-version env
    /// it runs with. See the module docs for the precedence.
    pub fn effective(&self, block: &BlockName, release_env: &Env, block_env: &Env) -> Env {
        let mut out = release_env.clone();
        let layers = [
            Some(block_env),
            Some(&self.fleet.wide),
            self.fleet.scoped.get(block),
            Some(&self.device.wide),
            self.device.scoped.get(block),
        ];
        for layer in layers.into_iter().flatten() {
            for (k, v) in layer {
                out.insert(k.clone(), v.clone());
            }
        }
        out
    }

    /// The effective value of one variable for `block`: the same answer as
    /// `effective(..).get(name)`, without building the whole env.
    pub fn value_of<'a>(
        &'a self,
        block: &BlockName,
        release_env: &'a Env,
        block_env: &'a Env,
        name: &EnvName,
    ) -> Option<&'a String> {
        let layers = [
            self.device.scoped.get(block),
            Some(&self.device.wide),
            self.fleet.scoped.get(block),
            Some(&self.fleet.wide),
            Some(block_env),
            Some(release_env),
        ];
        layers.into_iter().flatten().find_map(|l| l.get(name))
    }

    /// The operator's part of `block`'s env (levels 3–6 merged): what an
    /// env change sets, and what a release keeps when it replaces a block.
    pub fn operator_env(&self, block: &BlockName) -> Env {
        let mut out = Env::new();
        let layers = [
            Some(&self.fleet.wide),
            self.fleet.scoped.get(block),
            Some(&self.device.wide),
            self.device.scoped.get(block),
        ];
        for layer in layers.into_iter().flatten() {
            for (k, v) in layer {
                out.insert(k.clone(), v.clone());
            }
        }
        out
    }

    pub fn effective_fingerprint(
        &self,
        block: &BlockName,
        release_env: &Env,
        block_env: &Env,
    ) -> Fingerprint {
        fingerprint(&self.effective(block, release_env, block_env))
    }

    /// This context with `change` applied.
    pub fn with_change(&self, change: &EnvChange) -> Result<Self, EnvError> {
        let mut next = self.clone();
        let layer = match change.level {
            EnvLevel::Fleet => &mut next.fleet,
            EnvLevel::Device => &mut next.device,
        };
        for (name, scope) in &change.unset {
            layer.unset(name, scope);
        }
        for var in &change.set {
            layer.set(var)?;
        }
        Ok(next)
    }
}

/// A block's effective env from its release-wide and block-version env and
/// the operator env it runs with: the same answer as
/// [`EnvContext::effective`] when `operator` is that context's
/// [`EnvContext::operator_env`].
pub fn effective_with(release_env: &Env, block_env: &Env, operator: &Env) -> Env {
    let mut out = release_env.clone();
    for layer in [block_env, operator] {
        for (k, v) in layer {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// Setting and unsetting variables at one level, as one operation.
/// Unsets are applied before sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvChange {
    pub level: EnvLevel,
    pub set: Vec<EnvVar>,
    pub unset: Vec<(EnvName, EnvScope)>,
}

impl EnvChange {
    fn scopes(&self) -> impl Iterator<Item = (&EnvName, &EnvScope)> {
        self.set
            .iter()
            .map(|v| (&v.name, &v.scope))
            .chain(self.unset.iter().map(|(n, s)| (n, s)))
    }

    /// Whether the change can affect `block` at all, by scope.
    pub fn may_touch(&self, block: &BlockName) -> bool {
        self.scopes().any(|(_, scope)| match scope {
            EnvScope::Device => true,
            EnvScope::Blocks(bs) => bs.contains(block),
        })
    }

    /// The variable names the change sets or unsets.
    pub fn names(&self) -> impl Iterator<Item = &EnvName> {
        self.scopes().map(|(n, _)| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> EnvName {
        EnvName::new(s).unwrap()
    }
    fn b(s: &str) -> BlockName {
        BlockName::new(s).unwrap()
    }
    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs.iter().map(|(k, v)| (n(k), (*v).to_owned())).collect()
    }
    fn var(name: &str, value: &str, scope: &[&str]) -> EnvVar {
        EnvVar {
            name: n(name),
            value: value.into(),
            scope: if scope.is_empty() {
                EnvScope::Device
            } else {
                EnvScope::Blocks(scope.iter().map(|s| b(s)).collect())
            },
        }
    }

    #[test]
    fn env_names_follow_posix_shell_rules() {
        for ok in ["A", "_x", "LOG_LEVEL", "a1"] {
            assert!(EnvName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "É"] {
            assert!(EnvName::new(bad).is_err(), "{bad}");
        }
        assert!(EnvName::new("A".repeat(256)).is_err());
    }

    #[test]
    fn precedence_is_release_then_block_then_fleet_then_device_scoped_last() {
        // Each row: which layers define X; the expected winner.
        let rows: &[(&str, &[&str], &str)] = &[
            ("release only", &["release"], "release"),
            ("block beats release", &["release", "block"], "block"),
            (
                "fleet-wide beats block",
                &["block", "fleet_wide"],
                "fleet_wide",
            ),
            (
                "fleet-scoped beats fleet-wide",
                &["fleet_wide", "fleet_scoped"],
                "fleet_scoped",
            ),
            (
                "device-wide beats fleet-scoped",
                &["fleet_scoped", "device_wide"],
                "device_wide",
            ),
            (
                "device-scoped beats all",
                &[
                    "release",
                    "block",
                    "fleet_wide",
                    "fleet_scoped",
                    "device_wide",
                    "device_scoped",
                ],
                "device_scoped",
            ),
        ];
        let a = b("a");
        for (name, layers, winner) in rows {
            let mut ctx = EnvContext::default();
            let mut release = Env::new();
            let mut block = Env::new();
            for layer in *layers {
                match *layer {
                    "release" => drop(release.insert(n("X"), "release".into())),
                    "block" => drop(block.insert(n("X"), "block".into())),
                    "fleet_wide" => ctx.fleet.set(&var("X", "fleet_wide", &[])).unwrap(),
                    "fleet_scoped" => ctx.fleet.set(&var("X", "fleet_scoped", &["a"])).unwrap(),
                    "device_wide" => ctx.device.set(&var("X", "device_wide", &[])).unwrap(),
                    "device_scoped" => ctx.device.set(&var("X", "device_scoped", &["a"])).unwrap(),
                    other => unreachable!("{other}"),
                }
            }
            let eff = ctx.effective(&a, &release, &block);
            assert_eq!(
                eff.get(&n("X")).map(String::as_str),
                Some(*winner),
                "{name}"
            );
        }
    }

    #[test]
    fn scoped_variables_reach_only_their_blocks() {
        let mut ctx = EnvContext::default();
        ctx.device.set(&var("ONLY_A", "1", &["a"])).unwrap();
        let empty = Env::new();
        assert_eq!(
            ctx.effective(&b("a"), &empty, &empty),
            env(&[("ONLY_A", "1")])
        );
        assert_eq!(ctx.effective(&b("b"), &empty, &empty), Env::new());
    }

    #[test]
    fn empty_block_scope_is_refused() {
        let mut layer = EnvLayer::default();
        let v = EnvVar {
            name: n("X"),
            value: "1".into(),
            scope: EnvScope::Blocks(BTreeSet::new()),
        };
        assert!(matches!(layer.set(&v), Err(EnvError::EmptyScope { .. })));
    }

    #[test]
    fn unset_removes_only_the_named_scope() {
        let mut ctx = EnvContext::default();
        ctx.fleet.set(&var("X", "wide", &[])).unwrap();
        ctx.fleet.set(&var("X", "scoped", &["a", "b"])).unwrap();
        let change = EnvChange {
            level: EnvLevel::Fleet,
            set: vec![],
            unset: vec![(n("X"), EnvScope::Blocks([b("a")].into()))],
        };
        let next = ctx.with_change(&change).unwrap();
        let empty = Env::new();
        assert_eq!(
            next.effective(&b("a"), &empty, &empty),
            env(&[("X", "wide")])
        );
        assert_eq!(
            next.effective(&b("b"), &empty, &empty),
            env(&[("X", "scoped")])
        );
        assert!(
            !next.fleet.scoped.contains_key(&b("a")),
            "empty scoped maps are pruned"
        );
    }

    #[test]
    fn fingerprints_depend_on_names_and_values_only() {
        let x = env(&[("A", "1"), ("B", "2")]);
        let y = env(&[("B", "2"), ("A", "1")]);
        assert_eq!(fingerprint(&x), fingerprint(&y));
        assert_ne!(
            fingerprint(&x),
            fingerprint(&env(&[("A", "1"), ("B", "3")]))
        );
        assert_ne!(
            fingerprint(&env(&[("A", "1")])),
            fingerprint(&env(&[("A1", "")]))
        );
        assert_ne!(fingerprint(&Env::new()), fingerprint(&env(&[("A", "")])));
    }
}
