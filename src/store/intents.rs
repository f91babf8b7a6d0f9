//! The intents the scheduler stores in a device's outbox, as JSON bodies.
//! Stored in a neutral form (not protobuf) so the outbox is readable in the
//! database; `grpc::agent` converts them to wire messages when sending.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::reconcile::{ApplyAction, PlannedIntent};
use crate::domain::{
    BlockMap, BlockName, BlockVersion, Disturbance, EnvContext, Generation, IntentKind, NewIntent,
    Occurrence, Reason, ReleaseRequest, UpdateStrategy,
};

/// One block as the agent should run it: its version and effective env.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetBlock {
    pub name: String,
    pub version: String,
    pub image_digest: String,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub depends_on: Vec<(String, bool)>,
    /// `Some` when the block hands over to its replacement.
    #[serde(default)]
    pub hand_over_timeout_secs: Option<u64>,
    pub env: BTreeMap<String, String>,
    pub env_fingerprint: String,
}

impl TargetBlock {
    /// A block version with the effective env it gets under `ctx`.
    pub fn new(bv: &BlockVersion, release_env: &crate::domain::Env, ctx: &EnvContext) -> Self {
        let env = ctx.effective(&bv.name, release_env, &bv.env);
        TargetBlock {
            name: bv.name.to_string(),
            version: bv.version.to_string(),
            image_digest: bv.image_digest.to_string(),
            entrypoint: bv.config.entrypoint.clone(),
            command: bv.config.command.clone(),
            working_dir: bv.config.working_dir.clone(),
            labels: bv.config.labels.clone(),
            depends_on: bv
                .depends_on
                .iter()
                .map(|d| (d.block.to_string(), d.restart))
                .collect(),
            hand_over_timeout_secs: match bv.update_strategy {
                UpdateStrategy::HandOver { timeout } => Some(timeout.as_secs()),
                _ => None,
            },
            env_fingerprint: crate::domain::env::fingerprint(&env).to_hex(),
            env: env
                .into_iter()
                .map(|(k, v)| (k.as_str().to_owned(), v))
                .collect(),
        }
    }
}

impl TargetBlock {
    /// A block as the reconciler targets it (spec and effective env).
    pub fn from_target(t: &crate::domain::reconcile::BlockTarget) -> Self {
        let bv = &t.spec;
        TargetBlock {
            name: bv.name.to_string(),
            version: bv.version.to_string(),
            image_digest: bv.image_digest.to_string(),
            entrypoint: bv.config.entrypoint.clone(),
            command: bv.config.command.clone(),
            working_dir: bv.config.working_dir.clone(),
            labels: bv.config.labels.clone(),
            depends_on: bv
                .depends_on
                .iter()
                .map(|d| (d.block.to_string(), d.restart))
                .collect(),
            hand_over_timeout_secs: match bv.update_strategy {
                UpdateStrategy::HandOver { timeout } => Some(timeout.as_secs()),
                _ => None,
            },
            env_fingerprint: crate::domain::env::fingerprint(&t.env).to_hex(),
            env: t
                .env
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                .collect(),
        }
    }
}

impl ApplyOp {
    /// The stored form of the reconciler's typed action.
    pub fn from_action(action: &ApplyAction) -> Self {
        let blocks = |bs: &[crate::domain::reconcile::BlockTarget]| {
            bs.iter().map(TargetBlock::from_target).collect()
        };
        match action {
            ApplyAction::Release {
                release,
                blocks: bs,
            } => ApplyOp::ReleaseUpdate {
                release: release.to_string(),
                blocks: blocks(bs),
            },
            ApplyAction::Env { blocks: bs } => ApplyOp::EnvUpdate { blocks: blocks(bs) },
            ApplyAction::Restart(b) => ApplyOp::RestartBlock {
                block: b.to_string(),
            },
            ApplyAction::Stop(b) => ApplyOp::StopBlock {
                block: b.to_string(),
            },
            ApplyAction::Start(t) => ApplyOp::StartBlock {
                block: Box::new(TargetBlock::from_target(t)),
            },
            ApplyAction::Reboot => ApplyOp::Reboot,
            ApplyAction::Shutdown => ApplyOp::Shutdown,
            ApplyAction::OsUpdate(v) => ApplyOp::OsUpdate { version: v.clone() },
        }
    }
}

/// Encodes a planned intent for the outbox.
pub fn encode(intent: &PlannedIntent) -> NewIntent {
    match intent {
        PlannedIntent::ReleaseRequest {
            operation,
            request,
            target,
            window,
        } => NewIntent {
            kind: IntentKind::ReleaseRequest,
            body: IntentBody::release_request(request, target, *window).to_json(),
            operation: Some(*operation),
        },
        PlannedIntent::Notice {
            operation,
            block,
            reason,
            coming,
        } => NewIntent {
            kind: IntentKind::Notice,
            body: IntentBody::notice(
                block,
                *reason,
                format!("release {coming} lands; {block} is unchanged and keeps running"),
            )
            .to_json(),
            operation: Some(*operation),
        },
        PlannedIntent::Apply {
            operation,
            action,
            fence,
            disturbed,
            forced,
        } => NewIntent {
            kind: IntentKind::Apply,
            body: IntentBody::apply(ApplyOp::from_action(action), fence, disturbed, forced)
                .to_json(),
            operation: Some(*operation),
        },
        PlannedIntent::Withdraw { operation, seq } => NewIntent {
            kind: IntentKind::Cancel,
            body: IntentBody::Cancel { seq: seq.0 }.to_json(),
            operation: Some(*operation),
        },
    }
}

/// What an apply asks the agent to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ApplyOp {
    /// Move to `release`: `blocks` is the full target.
    ReleaseUpdate {
        release: String,
        blocks: Vec<TargetBlock>,
    },
    /// New effective env for the device's blocks; those disturbed restart.
    EnvUpdate {
        blocks: Vec<TargetBlock>,
    },
    RestartBlock {
        block: String,
    },
    StopBlock {
        block: String,
    },
    StartBlock {
        block: Box<TargetBlock>,
    },
    Reboot,
    Shutdown,
    OsUpdate {
        version: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisturbedBlock {
    pub block: String,
    pub reason: String,
    pub handover: bool,
    #[serde(default)]
    pub because_of: Option<String>,
}

/// The body of an intent in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum IntentBody {
    ReleaseRequest {
        block: String,
        reason: String,
        handover: bool,
        #[serde(default)]
        because_of: Option<String>,
        generation: u64,
        /// What is coming (a release id, an OS version, a block).
        target: String,
        #[serde(default)]
        window: Option<(i64, i64)>,
        #[serde(default)]
        deadline_ms: Option<i64>,
    },
    Apply {
        operation: ApplyOp,
        /// Lock generation per disturbed block, as decided.
        fence: Vec<(String, u64)>,
        disturbed: Vec<DisturbedBlock>,
        /// Blocks whose locks an audited force overrides: the agent does
        /// not wait for them.
        #[serde(default)]
        forced: Vec<String>,
    },
    Notice {
        block: String,
        reason: String,
        message: String,
    },
    Cancel {
        seq: u64,
    },
}

impl IntentBody {
    /// A release request; with a window, the holder is told the occurrence
    /// and that its end is the deadline.
    pub fn release_request(r: &ReleaseRequest, target: &str, window: Option<Occurrence>) -> Self {
        IntentBody::ReleaseRequest {
            block: r.block.to_string(),
            reason: r.reason.as_str().to_owned(),
            handover: r.handover,
            because_of: r.because_of.as_ref().map(ToString::to_string),
            generation: r.generation.0,
            target: target.to_owned(),
            window: window.map(|o| (o.start.0, o.end.0)),
            deadline_ms: window.map(|o| o.end.0),
        }
    }

    pub fn apply(
        operation: ApplyOp,
        fence: &BlockMap<Generation>,
        disturbed: &BlockMap<Disturbance>,
        forced: &[BlockName],
    ) -> Self {
        IntentBody::Apply {
            forced: forced.iter().map(ToString::to_string).collect(),
            operation,
            fence: fence.iter().map(|(b, g)| (b.to_string(), g.0)).collect(),
            disturbed: disturbed
                .iter()
                .map(|(b, d)| DisturbedBlock {
                    block: b.to_string(),
                    reason: d.reason.as_str().to_owned(),
                    handover: d.handover,
                    because_of: d.because_of.as_ref().map(ToString::to_string),
                })
                .collect(),
        }
    }

    pub fn notice(block: &BlockName, reason: Reason, message: impl Into<String>) -> Self {
        IntentBody::Notice {
            block: block.to_string(),
            reason: reason.as_str().to_owned(),
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> String {
        // Plain data with string keys: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    pub fn from_json(s: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(s)
    }
}

/// Parses a wire reason name (`update_restart`).
pub fn reason_from_str(s: &str) -> Option<Reason> {
    Reason::ALL.into_iter().find(|r| r.as_str() == s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_through_json() {
        let bodies = vec![
            IntentBody::ReleaseRequest {
                block: "a".into(),
                reason: "os_update".into(),
                handover: false,
                because_of: None,
                generation: 3,
                target: "6.2".into(),
                window: Some((1, 2)),
                deadline_ms: Some(2),
            },
            IntentBody::Apply {
                operation: ApplyOp::OsUpdate {
                    version: "6.2".into(),
                },
                fence: vec![("a".into(), 3)],
                forced: vec!["a".into()],
                disturbed: vec![DisturbedBlock {
                    block: "a".into(),
                    reason: "os_update".into(),
                    handover: false,
                    because_of: None,
                }],
            },
            IntentBody::Notice {
                block: "a".into(),
                reason: "update_no_restart".into(),
                message: "r2 leaves a untouched".into(),
            },
            IntentBody::Cancel { seq: 4 },
        ];
        for b in bodies {
            assert_eq!(IntentBody::from_json(&b.to_json()).unwrap(), b);
        }
        for r in Reason::ALL {
            assert_eq!(reason_from_str(r.as_str()), Some(r));
        }
    }
}
