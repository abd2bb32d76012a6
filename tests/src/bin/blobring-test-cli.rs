#![forbid(unsafe_code)]
//! The `blobring` CLI's data commands built inside the tests crate, so integration tests can
//! run them with `env!("CARGO_BIN_EXE_blobring-test-cli")`. Same library entry point
//! (`blobring_ctl::data::main`: same messages and exit codes).

use clap::Parser;

/// Data commands only.
#[derive(Parser)]
#[command(name = "blobring")]
struct Cli {
    #[command(subcommand)]
    cmd: blobring_ctl::data::DataCmd,
}

fn main() -> std::process::ExitCode {
    blobring_ctl::data::main(Cli::parse().cmd)
}
