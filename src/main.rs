//! The `lockstep` binary: one executable for the server, the device agent and
//! the operator CLI, as Nomad and Consul do. Only argument parsing and wiring
//! live here; `anyhow` is used nowhere else.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use lockstep::server::{Bound, ServeConfig, shutdown_signal};

#[derive(Debug, Parser)]
#[command(
    name = "lockstep",
    version,
    about = "Fleet-side scheduling of disruptive operations on edge devices, honouring per-block update locks"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "LOCKSTEP_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Lockstep server.
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address for the gRPC API.
    #[arg(long, env = "LOCKSTEP_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOCKSTEP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    match cli.command {
        Command::Serve(args) => {
            let bound = Bound::bind(ServeConfig {
                listen: args.listen,
            })
            .await
            .context("starting lockstep serve")?;
            bound.serve(shutdown_signal()).await?;
        }
    }
    Ok(())
}
