//! The operator CLI: `lockstep fleet|block|release|device|env|op ...`,
//! `lockstep window|policy|approval ...`, `lockstep rollout ...` and
//! `lockstep token|audit ...` in the same binary as the server and the
//! agent, so operators, customers and scripts drive every API without a
//! gRPC tool. Each verb is a thin client of the public gRPC API: aligned tables for people by default, one JSON document with
//! `--output json` for scripts, and exit codes scripts can branch on
//! ([`exit`]: 0 ok, 1 operation failed, 2 usage, 3 not found, 4 already
//! exists / failed precondition, 5 server unavailable, 6 other, 7 not
//! authenticated or not allowed). Every verb sends the API token given by
//! `--token`, `--token-file` (or their env variables), else the one a local
//! server wrote to `./lockstep-data/admin.token`.
//!
//! The binary wires each verb group as a subcommand holding a [`Verb`]; the
//! group enums and [`run`] are usable on their own.

mod approval;
mod audit;
mod block;
mod client;
pub mod demo;
mod device;
mod env;
mod error;
mod fleet;
mod op;
pub mod parse;
mod policy;
mod progress;
mod release;
mod rollout;
mod table;
mod token;
mod view;
mod window;

pub use approval::{ApprovalCommand, PickArgs};
pub use audit::AuditCommand;
pub use block::{AddVersionArgs, BlockCommand};
pub use device::DeviceCommand;
pub use env::{EnvCommand, OwnerArgs};
pub use error::{CliError, exit};
pub use fleet::FleetCommand;
pub use op::{OpCommand, OpCreateArgs, OpKindArgs};
pub use policy::{PolicyChanges, PolicyCommand};
pub use release::ReleaseCommand;
pub use rollout::{RolloutActionArgs, RolloutCommand, RolloutCreateArgs, RolloutTargetArgs};
pub use token::{TokenCommand, TokenCreateArgs};
pub use window::{RuleArgs, ScopeArgs, WindowCommand, WindowCreateArgs};

use client::{Api, Target};
pub use client::{AuthChannel, Bearer};

/// How results are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON document on stdout, for scripts.
    Json,
}

/// Where the server is and how results are printed; accepted before or
/// after the verb (`lockstep op --output json get 7`, `lockstep op get 7
/// --output json`).
#[derive(Debug, Clone, clap::Args)]
pub struct ClientOpts {
    /// The server's gRPC URL.
    #[arg(
        long,
        global = true,
        env = "LOCKSTEP_SERVER",
        default_value = "http://127.0.0.1:50051",
        help_heading = "Client options"
    )]
    pub server: String,
    /// The API token, sent as `authorization: Bearer <token>` metadata.
    #[arg(
        long,
        global = true,
        env = "LOCKSTEP_TOKEN",
        hide_env_values = true,
        help_heading = "Client options"
    )]
    pub token: Option<String>,
    /// PEM CA certificate(s) to trust for an https:// server.
    #[arg(
        long,
        global = true,
        env = "LOCKSTEP_TLS_CA",
        help_heading = "Client options"
    )]
    pub tls_ca: Option<std::path::PathBuf>,
    /// A file holding the API token (when --token is not given). With
    /// neither, ./lockstep-data/admin.token is used if it exists: the token
    /// a local `lockstep serve` wrote on its first start.
    #[arg(
        long,
        global = true,
        env = "LOCKSTEP_TOKEN_FILE",
        value_name = "FILE",
        help_heading = "Client options"
    )]
    pub token_file: Option<std::path::PathBuf>,
    /// table (for people) or json (for scripts).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = Output::Table,
        help_heading = "Client options"
    )]
    pub output: Output,
}

/// Every operator verb, by group.
#[derive(Debug, clap::Subcommand)]
pub enum CliCommand {
    /// Fleets: create, list.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Blocks and their versions: create, versions, add-version.
    #[command(subcommand)]
    Block(BlockCommand),
    /// Releases: create, get, list, diff.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Devices: register, get, list, state.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Fleet- and device-level env variables: set, unset, list.
    #[command(subcommand)]
    Env(EnvCommand),
    /// Operations on devices: create, get, list, cancel, wait.
    #[command(subcommand)]
    Op(OpCommand),
    /// Maintenance windows: create, list, delete, next.
    #[command(subcommand)]
    Window(WindowCommand),
    /// A fleet's scheduling policy: get, set.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Customer approvals of operations: list, approve, decline.
    #[command(subcommand)]
    Approval(ApprovalCommand),
    /// Phased rollouts: create, get, list, pause, resume, abort, watch.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// API tokens: create, list, revoke, whoami.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The audit log: list.
    #[command(subcommand)]
    Audit(AuditCommand),
}

macro_rules! into_cli_command {
    ($($variant:ident($ty:ty)),* $(,)?) => {$(
        impl From<$ty> for CliCommand {
            fn from(c: $ty) -> Self {
                CliCommand::$variant(c)
            }
        }
    )*};
}

into_cli_command!(
    Fleet(FleetCommand),
    Block(BlockCommand),
    Release(ReleaseCommand),
    Device(DeviceCommand),
    Env(EnvCommand),
    Op(OpCommand),
    Window(WindowCommand),
    Policy(PolicyCommand),
    Approval(ApprovalCommand),
    Rollout(RolloutCommand),
    Token(TokenCommand),
    Audit(AuditCommand),
);

/// One verb group as a subcommand of the binary: its verbs plus the client
/// options.
#[derive(Debug, clap::Args)]
pub struct Verb<C: clap::Subcommand> {
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(subcommand)]
    pub command: C,
}

impl<C: clap::Subcommand + Into<CliCommand>> Verb<C> {
    /// Runs the verb; returns the process exit code, any error already
    /// printed on stderr.
    pub async fn run(self) -> i32 {
        run_and_report(self.opts, self.command.into()).await
    }
}

/// What every verb needs: where the server is and how to print.
pub(crate) struct Ctx {
    target: Target,
    output: Output,
}

impl Ctx {
    async fn connect(&self) -> Result<Api, CliError> {
        self.target.connect().await
    }
}

/// Runs one operator verb.
pub async fn run(opts: ClientOpts, cmd: CliCommand) -> Result<(), CliError> {
    let ctx = Ctx {
        target: Target::new(&opts)?,
        output: opts.output,
    };
    match cmd {
        CliCommand::Fleet(c) => fleet::run(&ctx, c).await,
        CliCommand::Block(c) => block::run(&ctx, c).await,
        CliCommand::Release(c) => release::run(&ctx, c).await,
        CliCommand::Device(c) => device::run(&ctx, c).await,
        CliCommand::Env(c) => env::run(&ctx, c).await,
        CliCommand::Op(c) => op::run(&ctx, c).await,
        CliCommand::Window(c) => window::run(&ctx, c).await,
        CliCommand::Policy(c) => policy::run(&ctx, c).await,
        CliCommand::Approval(c) => approval::run(&ctx, c).await,
        CliCommand::Rollout(c) => rollout::run(&ctx, c).await,
        CliCommand::Token(c) => token::run(&ctx, c).await,
        CliCommand::Audit(c) => audit::run(&ctx, c).await,
    }
}

/// [`run`], printing an error as one `error: ...` line on stderr; returns
/// the process exit code.
pub async fn run_and_report(opts: ClientOpts, cmd: CliCommand) -> i32 {
    match run(opts, cmd).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser, Subcommand as _};

    use super::*;

    /// The binary's wiring, as `src/main.rs` does it.
    #[derive(Debug, Parser)]
    struct Bin {
        #[command(subcommand)]
        command: Group,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Group {
        #[command(subcommand)]
        Serve(Serve),
        Fleet(Verb<FleetCommand>),
        Block(Verb<BlockCommand>),
        Release(Verb<ReleaseCommand>),
        Device(Verb<DeviceCommand>),
        Env(Verb<EnvCommand>),
        Op(Verb<OpCommand>),
        Window(Verb<WindowCommand>),
        Policy(Verb<PolicyCommand>),
        Approval(Verb<ApprovalCommand>),
        Rollout(Verb<RolloutCommand>),
        Token(Verb<TokenCommand>),
        Audit(Verb<AuditCommand>),
    }

    /// Stands in for the server's own `--server`-free subcommands.
    #[derive(Debug, clap::Subcommand)]
    enum Serve {
        Now,
    }

    fn parse(line: &str) -> Result<(ClientOpts, CliCommand), clap::Error> {
        let bin = Bin::try_parse_from(line.split_whitespace())?;
        Ok(match bin.command {
            Group::Serve(_) => unreachable!("not an operator verb"),
            Group::Fleet(v) => (v.opts, v.command.into()),
            Group::Block(v) => (v.opts, v.command.into()),
            Group::Release(v) => (v.opts, v.command.into()),
            Group::Device(v) => (v.opts, v.command.into()),
            Group::Env(v) => (v.opts, v.command.into()),
            Group::Op(v) => (v.opts, v.command.into()),
            Group::Window(v) => (v.opts, v.command.into()),
            Group::Policy(v) => (v.opts, v.command.into()),
            Group::Approval(v) => (v.opts, v.command.into()),
            Group::Rollout(v) => (v.opts, v.command.into()),
            Group::Token(v) => (v.opts, v.command.into()),
            Group::Audit(v) => (v.opts, v.command.into()),
        })
    }

    #[test]
    fn the_wiring_is_a_valid_clap_command() {
        Bin::command().debug_assert();
        CliCommand::augment_subcommands(clap::Command::new("x")).debug_assert();
    }

    #[test]
    fn command_lines_parse_or_are_refused() {
        let cases = [
            ("lockstep fleet list", true),
            ("lockstep fleet create inverters --name Site", true),
            ("lockstep fleet create", false),
            ("lockstep block add-version ui 2.0.0 --image sha256:x", true),
            ("lockstep block add-version ui 2.0.0", false),
            ("lockstep block add-version --from-json f.json", true),
            (
                "lockstep block add-version ui 2.0.0 --from-json f.json",
                true,
            ),
            (
                "lockstep block add-version ui 2.0.0 --image x --from-json f",
                false,
            ),
            (
                "lockstep block add-version ui 2.0.0 --image x --hand-over 30",
                true,
            ),
            (
                "lockstep block add-version ui 2.0.0 --image x --hand-over 0",
                false,
            ),
            (
                "lockstep block add-version ui 2.0.0 --image x --hand-over 5 --kill-then-download",
                false,
            ),
            (
                "lockstep block add-version ui 2.0.0 --image x --depends-on a:restart --depends-on b",
                true,
            ),
            (
                "lockstep block add-version ui 2.0.0 --image x --depends-on a:always",
                false,
            ),
            (
                "lockstep block add-version ui 2.0.0 --image x --command /bin/ui --command --verbose",
                true,
            ),
            (
                "lockstep release create r1 --fleet f a@1.0.0 b@2.0.0 --env K=V",
                true,
            ),
            ("lockstep release create r1 --fleet f", false),
            ("lockstep release create r1 --fleet f a-1.0.0", false),
            ("lockstep release create r1 a@1.0.0", false),
            ("lockstep release diff r1 r2", true),
            ("lockstep release list --fleet f --output json", true),
            ("lockstep release list --output yaml", false),
            (
                "lockstep device register d1 --fleet f --tag a --tag b --credential-out /tmp/c",
                true,
            ),
            ("lockstep device list --status in-sync", true),
            ("lockstep device list --status sleepy", false),
            ("lockstep env set --fleet f A=1 B=2 --block ui", true),
            ("lockstep env set --fleet f --device d A=1", false),
            ("lockstep env set A=1", false),
            ("lockstep env set --device d A", false),
            ("lockstep env unset --device d A B", true),
            ("lockstep env list --device d", true),
            ("lockstep env list", false),
            ("lockstep op create d1 --reboot", true),
            (
                "lockstep op create d1 --assign-release r2 --force-block a --force-reason why --actor me",
                true,
            ),
            ("lockstep op create d1", false),
            ("lockstep op create d1 --reboot --shutdown", false),
            ("lockstep op create d1 --reboot --force-reason why", false),
            ("lockstep op get 7", true),
            ("lockstep op get seven", false),
            ("lockstep op cancel 7 --reason not-now", true),
            ("lockstep op wait 7 --timeout 90s", true),
            ("lockstep op wait 7 --timeout 90", false),
            (
                "lockstep op --server http://h:1 --output json list d1",
                true,
            ),
            (
                "lockstep window create --fleet f --days mon-fri --start 02:00 --time-zone Europe/Amsterdam --duration 2h",
                true,
            ),
            (
                "lockstep window create --tag t --days 1,3 --start 2:30 --tz UTC --duration 90m",
                true,
            ),
            (
                "lockstep window create --device d --rrule DTSTART:20260104T020000Z\\nRRULE:FREQ=DAILY --duration 1h",
                true,
            ),
            (
                "lockstep window create --fleet f --from 2026-11-24T22:00:00Z --until 2026-11-25T02:00:00Z",
                true,
            ),
            (
                "lockstep window create --fleet f --from 2026-11-24T22:00:00Z --duration 4h",
                true,
            ),
            ("lockstep window create --fleet f", false),
            (
                "lockstep window create --days mon --start 02:00 --tz UTC --duration 1h",
                false,
            ),
            (
                "lockstep window create --fleet f --tag t --days mon --start 02:00 --tz UTC --duration 1h",
                false,
            ),
            (
                "lockstep window create --fleet f --days mon --start 02:00 --duration 1h",
                false,
            ),
            (
                "lockstep window create --fleet f --days mon --start 02:00 --tz Mars/Base --duration 1h",
                false,
            ),
            (
                "lockstep window create --fleet f --days funday --start 02:00 --tz UTC --duration 1h",
                false,
            ),
            (
                "lockstep window create --fleet f --days mon --start 25:00 --tz UTC --duration 1h",
                false,
            ),
            (
                "lockstep window create --fleet f --days mon --start 02:00 --tz UTC --duration 90s",
                false,
            ),
            (
                "lockstep window create --fleet f --days mon --rrule DTSTART:20260104T020000Z\\nRRULE:FREQ=DAILY --duration 1h",
                false,
            ),
            (
                "lockstep window create --fleet f --rrule RRULE:FREQ=DAILY --duration 1h",
                false,
            ),
            (
                "lockstep window create --fleet f --rrule DTSTART:20260104T020000Z\\nRRULE:FREQ=DAILY",
                false,
            ),
            (
                "lockstep window create --fleet f --from 2026-11-24T22:00:00Z --until 2026-11-25T02:00:00Z --duration 1h",
                false,
            ),
            (
                "lockstep window create --fleet f --from 2026-11-24 --duration 1h",
                false,
            ),
            (
                "lockstep window create --fleet f --from 2026-11-24T22:00:00Z --start 02:00 --duration 1h",
                false,
            ),
            ("lockstep window list --output json", true),
            ("lockstep window delete 3", true),
            ("lockstep window delete three", false),
            ("lockstep window next d1 --count 50", true),
            ("lockstep window next d1 --count 51", false),
            ("lockstep window next d1 --count 0", false),
            ("lockstep window next", false),
            ("lockstep policy get f", true),
            ("lockstep policy get", false),
            (
                "lockstep policy set f --needs-window os_update,reboot --needs-window shutdown --needs-approval none --max-deferral 12h --on-deferral-expiry force --release-mode partial --on-missed-occurrence next",
                true,
            ),
            ("lockstep policy set f", false),
            ("lockstep policy set f --needs-window nap", false),
            ("lockstep policy set f --max-deferral 12", false),
            ("lockstep policy set f --on-deferral-expiry panic", false),
            ("lockstep policy set f --release-mode half", false),
            ("lockstep policy set f --on-missed-occurrence skip", false),
            ("lockstep approval list", true),
            ("lockstep approval list --status requested", true),
            ("lockstep approval list --status pending", false),
            ("lockstep approval approve 3 --index 2 --actor me", true),
            (
                "lockstep approval approve 3 --start 2026-11-24T22:00:00Z --actor me",
                true,
            ),
            ("lockstep approval approve 3 --actor me", false),
            ("lockstep approval approve 3 --index 0 --actor me", false),
            ("lockstep approval approve 3 --index 1", true),
            (
                "lockstep approval approve 3 --index 1 --start 2026-11-24T22:00:00Z --actor me",
                false,
            ),
            (
                "lockstep approval decline 3 --message harvest --actor me",
                true,
            ),
            ("lockstep approval decline 3 --actor me", false),
            ("lockstep approval decline 3 --message no", true),
            (
                "lockstep token create --role operator --fleet a --fleet b --expires 30d --name ci",
                true,
            ),
            (
                "lockstep token create --role admin --token-out /tmp/t",
                true,
            ),
            ("lockstep token create", false),
            ("lockstep token create --role root", false),
            ("lockstep token create --role viewer --expires 30", false),
            ("lockstep token list --output json", true),
            ("lockstep token revoke 0a1b2c3d4e5f --reason leaked", true),
            ("lockstep token revoke", false),
            ("lockstep token whoami", true),
            ("lockstep audit list", true),
            (
                "lockstep audit list --after 10 --limit 50 --action force_requested --subject device_d1 --fleet f",
                true,
            ),
            ("lockstep audit list --limit 0", false),
            ("lockstep audit list --limit 1001", false),
            ("lockstep audit list --after x", false),
            ("lockstep fleet list --token-file /tmp/t", true),
            (
                "lockstep rollout create --fleet f --release r2 --canary 1 --batches 10%,25%,50 --max-in-flight 3 --soak 10m --success-threshold 95 --error-threshold 5% --on-error abort --supersede --actor me --seed 7 --tag north",
                true,
            ),
            ("lockstep rollout create --fleet f --os-version 13.1", true),
            (
                "lockstep rollout create --fleet f --release r2 --batches 10% --batches 50",
                true,
            ),
            (
                "lockstep rollout create --fleet f --release r2 --error-threshold 2 --success-threshold 95%",
                true,
            ),
            ("lockstep rollout create --fleet f", false),
            ("lockstep rollout create --release r2", false),
            (
                "lockstep rollout create --fleet f --release r2 --os-version 13.1",
                false,
            ),
            (
                "lockstep rollout create --fleet f --release r2 --batches 0",
                false,
            ),
            (
                "lockstep rollout create --fleet f --release r2 --batches 10%,150%",
                false,
            ),
            (
                "lockstep rollout create --fleet f --release r2 --error-threshold 0",
                false,
            ),
            (
                "lockstep rollout create --fleet f --release r2 --success-threshold 0",
                false,
            ),
            (
                "lockstep rollout create --fleet f --release r2 --soak 31d",
                false,
            ),
            (
                "lockstep rollout create --fleet f --release r2 --soak 10",
                false,
            ),
            (
                "lockstep rollout create --fleet f --release r2 --on-error explode",
                false,
            ),
            ("lockstep rollout get 3", true),
            ("lockstep rollout get 0", false),
            ("lockstep rollout get three", false),
            ("lockstep rollout list", true),
            ("lockstep rollout list --fleet f --output json", true),
            ("lockstep rollout pause 3 --actor me --reason why", true),
            ("lockstep rollout resume 3", true),
            ("lockstep rollout abort 3 --reason bad", true),
            ("lockstep rollout abort", false),
            ("lockstep rollout watch 3 --output json", true),
            ("lockstep rollout watch", false),
        ];
        for (line, ok) in cases {
            let got = parse(line);
            assert_eq!(got.is_ok(), ok, "{line}: {got:?}");
            if let Err(e) = got {
                assert_eq!(e.exit_code(), exit::USAGE, "{line}");
            }
        }
    }

    #[test]
    fn global_options_parse_before_or_after_the_verb() {
        for line in [
            "lockstep op --output json --server h:1 --token t get 7",
            "lockstep op get 7 --output json --server h:1 --token t",
        ] {
            let (opts, cmd) = parse(line).unwrap();
            assert_eq!(opts.output, Output::Json, "{line}");
            assert_eq!(opts.server, "h:1", "{line}");
            assert_eq!(opts.token.as_deref(), Some("t"), "{line}");
            assert!(
                matches!(cmd, CliCommand::Op(OpCommand::Get { id: 7 })),
                "{line}"
            );
        }
    }
}
