//! `lockstep token create|list|revoke|whoami`: API tokens (admin only,
//! except `whoami`). A token is shown once, when it is created — printed,
//! or written to a new file only its owner can read (`--token-out`); the
//! server keeps only a hash of it.

use std::path::PathBuf;

use serde::Serialize;

use super::Ctx;
use super::device::{create_private, write_secret};
use super::error::{Call as _, CliError};
use super::parse::{self, timestamp};
use super::table::{Table, fields};
use super::view::{Human, emit};
use crate::edge::grpc::pb;

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Creates a token; it is shown once.
    Create(TokenCreateArgs),
    /// Lists every token (revoked and expired ones too).
    List,
    /// Revokes a token at once.
    Revoke {
        /// The token's id (as `token list` shows it).
        id: String,
        /// Why (recorded in the audit log).
        #[arg(
            long,
            value_name = "TEXT",
            default_value = "",
            hide_default_value = true
        )]
        reason: String,
    },
    /// Shows the token this CLI sends.
    Whoami,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TokenCreateArgs {
    /// admin (everything), operator (runs its fleets), customer (follows
    /// its fleets, approves or declines windows) or viewer (reads).
    #[arg(long, value_parser = ["admin", "operator", "customer", "viewer"])]
    pub role: String,
    /// A fleet the token may touch (repeatable). Operator and customer
    /// tokens need one at least; admin tokens take none (every fleet); a
    /// viewer without one reads every fleet.
    #[arg(long = "fleet", value_name = "FLEET")]
    pub fleets: Vec<String>,
    /// How long it lives (e.g. 30d, 12h); default: until revoked.
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    pub expires: Option<std::time::Duration>,
    /// Who or what uses it (e.g. ci, "north site customer").
    #[arg(long, default_value = "", hide_default_value = true)]
    pub name: String,
    /// Write the token to this new file (mode 0600) instead of printing it;
    /// an existing file is never overwritten.
    #[arg(long, value_name = "FILE")]
    pub token_out: Option<PathBuf>,
}

/// A token as listed (never its secret).
#[derive(Debug, Serialize)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub role: String,
    /// Empty: every fleet.
    pub fleets: Vec<String>,
    pub state: String,
    pub created_by: String,
    pub created_unix_ms: i64,
    pub expires_unix_ms: i64,
    pub revoked_unix_ms: i64,
    pub revoked_by: String,
}

impl From<pb::TokenInfo> for TokenView {
    fn from(t: pb::TokenInfo) -> Self {
        TokenView {
            id: t.id,
            name: t.name,
            role: t.role,
            fleets: t.fleets,
            state: t.state,
            created_by: t.created_by,
            created_unix_ms: t.created_unix_ms,
            expires_unix_ms: t.expires_unix_ms,
            revoked_unix_ms: t.revoked_unix_ms,
            revoked_by: t.revoked_by,
        }
    }
}

impl TokenView {
    fn fleets_text(&self) -> String {
        if self.fleets.is_empty() {
            "(all)".into()
        } else {
            self.fleets.join(",")
        }
    }

    fn expires_text(&self) -> String {
        if self.expires_unix_ms == 0 {
            "never".into()
        } else {
            timestamp(self.expires_unix_ms)
        }
    }

    fn lines(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("id", self.id.clone()),
            ("name", self.name.clone()),
            ("role", self.role.clone()),
            ("fleets", self.fleets_text()),
            ("state", self.state.clone()),
            ("created", timestamp(self.created_unix_ms)),
            ("created by", self.created_by.clone()),
            ("expires", self.expires_text()),
        ];
        if self.revoked_unix_ms != 0 {
            out.push(("revoked", timestamp(self.revoked_unix_ms)));
            out.push(("revoked by", self.revoked_by.clone()));
        }
        out
    }
}

impl Human for TokenView {
    fn human(&self) -> String {
        fields(&self.lines())
    }
}

#[derive(Debug, Serialize)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

impl Human for TokenList {
    fn human(&self) -> String {
        let mut t = Table::new(&[
            "ID",
            "NAME",
            "ROLE",
            "FLEETS",
            "STATE",
            "EXPIRES",
            "CREATED",
            "CREATED BY",
        ]);
        for v in &self.tokens {
            t.row(vec![
                v.id.clone(),
                v.name.clone(),
                v.role.clone(),
                v.fleets_text(),
                v.state.clone(),
                v.expires_text(),
                timestamp(v.created_unix_ms),
                v.created_by.clone(),
            ]);
        }
        t.render()
    }
}

/// A token just created, with the token itself (or where it was written).
#[derive(Debug, Serialize)]
pub struct CreatedView {
    #[serde(flatten)]
    pub info: TokenView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
}

impl Human for CreatedView {
    fn human(&self) -> String {
        let mut lines = self.info.lines();
        match (&self.token, &self.token_file) {
            (Some(t), _) => {
                lines.push(("token", t.clone()));
                let mut out = fields(&lines);
                out.push_str("The token is shown once: store it now.\n");
                return out;
            }
            (None, Some(f)) => lines.push(("token file", f.clone())),
            (None, None) => {}
        }
        fields(&lines)
    }
}

pub(super) async fn run(ctx: &Ctx, cmd: TokenCommand) -> Result<(), CliError> {
    match cmd {
        TokenCommand::Create(args) => create(ctx, args).await,
        TokenCommand::List => {
            let api = ctx.connect().await?;
            let tokens = api
                .tokens()
                .list_tokens(api.req(pb::ListTokensRequest {}))
                .await
                .during("ListTokens")?
                .tokens;
            emit(
                ctx.output,
                &TokenList {
                    tokens: tokens.into_iter().map(Into::into).collect(),
                },
            )
        }
        TokenCommand::Revoke { id, reason } => {
            let api = ctx.connect().await?;
            const CALL: &str = "RevokeToken";
            let token = api
                .tokens()
                .revoke_token(api.req(pb::RevokeTokenRequest { id, reason }))
                .await
                .during(CALL)?
                .token
                .ok_or(CliError::Malformed {
                    call: CALL,
                    field: "token",
                })?;
            emit(ctx.output, &TokenView::from(token))
        }
        TokenCommand::Whoami => {
            let api = ctx.connect().await?;
            const CALL: &str = "WhoAmI";
            let token = api
                .tokens()
                .who_am_i(api.req(pb::WhoAmIRequest {}))
                .await
                .during(CALL)?
                .token
                .ok_or(CliError::Malformed {
                    call: CALL,
                    field: "token",
                })?;
            emit(ctx.output, &TokenView::from(token))
        }
    }
}

async fn create(ctx: &Ctx, args: TokenCreateArgs) -> Result<(), CliError> {
    // Create the file first: the token is shown once, so learn that it
    // cannot be stored before it exists.
    let file = match &args.token_out {
        Some(path) => Some(create_private(path)?),
        None => None,
    };
    let remove_file = || {
        if let Some(p) = &args.token_out {
            let _ = std::fs::remove_file(p);
        }
    };
    let answer = async {
        let api = ctx.connect().await?;
        const CALL: &str = "CreateToken";
        let r = api
            .tokens()
            .create_token(api.req(pb::CreateTokenRequest {
                name: args.name.clone(),
                role: args.role.clone(),
                fleets: args.fleets.clone(),
                expires_in_seconds: args.expires.map_or(0, |d| d.as_secs().max(1)),
            }))
            .await
            .during(CALL)?;
        let info = r.token.ok_or(CliError::Malformed {
            call: CALL,
            field: "token",
        })?;
        Ok::<_, CliError>((info, r.secret))
    }
    .await;
    let (info, secret) = match answer {
        Ok(a) => a,
        Err(e) => {
            remove_file();
            return Err(e);
        }
    };
    let mut view = CreatedView {
        info: info.into(),
        token: None,
        token_file: None,
    };
    match (file, &args.token_out) {
        (Some(file), Some(path)) => {
            if let Err(source) = write_secret(file, &secret) {
                remove_file();
                // The only copy: print it rather than lose it.
                view.token = Some(secret);
                emit(ctx.output, &view)?;
                return Err(CliError::WriteOutput {
                    action: "writing the token to",
                    path: path.clone(),
                    source,
                });
            }
            view.token_file = Some(path.display().to_string());
        }
        _ => view.token = Some(secret),
    }
    emit(ctx.output, &view)
}
