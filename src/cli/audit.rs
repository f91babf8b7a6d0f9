//! `lockstep audit list`: the audit log — who forced, approved, declined,
//! cancelled, started or stopped a rollout, created or revoked a token —
//! oldest first, filtered; page on with `--after` the last id shown. A
//! token scoped to fleets reads only its fleets' entries.

use serde::Serialize;

use super::Ctx;
use super::error::{Call as _, CliError};
use super::parse::timestamp;
use super::table::Table;
use super::view::{Human, emit};
use crate::edge::grpc::pb;

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Lists audit entries, oldest first.
    List {
        /// Only entries after this id (page on from the last one shown).
        #[arg(long, value_name = "ID", default_value_t = 0)]
        after: u64,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Only this action (force_requested, approval_declined,
        /// operation_cancelled, rollout_paused, token_revoked, ...).
        #[arg(long)]
        action: Option<String>,
        /// Only this subject, or those it starts (by whole words): "device
        /// dev-1" matches "device dev-1 operation 7".
        #[arg(long)]
        subject: Option<String>,
        /// Only this fleet's entries.
        #[arg(long)]
        fleet: Option<String>,
    },
}

#[derive(Debug, Serialize)]
pub struct AuditEntryView {
    pub id: u64,
    pub at_unix_ms: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub fleet: String,
    pub reason: String,
    /// The entry's details (a JSON object).
    pub details: serde_json::Value,
}

impl From<pb::AuditEntry> for AuditEntryView {
    fn from(e: pb::AuditEntry) -> Self {
        AuditEntryView {
            id: e.id,
            at_unix_ms: e.at_unix_ms,
            actor: e.actor,
            action: e.action,
            subject: e.subject,
            fleet: e.fleet,
            reason: e.reason,
            details: serde_json::from_str(&e.details_json)
                .unwrap_or(serde_json::Value::String(e.details_json)),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AuditList {
    pub entries: Vec<AuditEntryView>,
}

impl Human for AuditList {
    fn human(&self) -> String {
        let mut t = Table::new(&[
            "ID", "TIME", "ACTOR", "ACTION", "SUBJECT", "FLEET", "REASON",
        ]);
        for e in &self.entries {
            t.row(vec![
                e.id.to_string(),
                timestamp(e.at_unix_ms),
                e.actor.clone(),
                e.action.clone(),
                e.subject.clone(),
                e.fleet.clone(),
                e.reason.clone(),
            ]);
        }
        t.render()
    }
}

pub(super) async fn run(ctx: &Ctx, cmd: AuditCommand) -> Result<(), CliError> {
    match cmd {
        AuditCommand::List {
            after,
            limit,
            action,
            subject,
            fleet,
        } => {
            let api = ctx.connect().await?;
            let entries = api
                .audit()
                .list_audit(api.req(pb::ListAuditRequest {
                    after_id: after,
                    limit,
                    action: action.unwrap_or_default(),
                    subject: subject.unwrap_or_default(),
                    fleet: fleet.unwrap_or_default(),
                }))
                .await
                .during("ListAudit")?
                .entries;
            emit(
                ctx.output,
                &AuditList {
                    entries: entries.into_iter().map(Into::into).collect(),
                },
            )
        }
    }
}
