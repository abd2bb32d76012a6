#![forbid(unsafe_code)]
//! `blobring gateway` built inside the tests crate, so integration tests can run it with
//! `env!("CARGO_BIN_EXE_blobring-test-gateway")`: the same flags and library entry point
//! ([`blobring_gateway::run`]) as the CLI's subcommand.

use clap::Parser;

/// The gateway's flags.
#[derive(Parser)]
#[command(name = "blobring-gateway")]
struct Cli {
    #[command(flatten)]
    args: blobring_gateway::GatewayArgs,
}

fn main() -> anyhow::Result<()> {
    blobring_ctl::entry::log_to_stderr();
    blobring_gateway::run(Cli::parse().args.config())?;
    Ok(())
}
