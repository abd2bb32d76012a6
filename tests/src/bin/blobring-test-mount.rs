#![forbid(unsafe_code)]
//! `blobring mount` and `blobring unmount` built inside the tests crate, so integration tests
//! can run them with `env!("CARGO_BIN_EXE_blobring-test-mount")`: the same flags, library entry
//! points ([`blobring_mount::run`], [`blobring_mount::unmount`]), messages and exit codes as
//! the CLI's subcommands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "blobring")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// As `blobring mount`.
    Mount(blobring_mount::MountArgs),
    /// As `blobring unmount`.
    Unmount {
        /// The mount point.
        mountpoint: PathBuf,
    },
}

fn main() -> ExitCode {
    let r = match Cli::parse().cmd {
        Cmd::Mount(a) => {
            if a.foreground {
                let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
                tracing_subscriber::fmt()
                    .with_env_filter(filter)
                    .with_writer(std::io::stderr)
                    .init();
            }
            blobring_mount::run(a)
        }
        Cmd::Unmount { mountpoint } => blobring_mount::unmount(&mountpoint),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ blobring_mount::MountError::Detached { .. }) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code().clamp(1, 255) as u8)
        }
        Err(e) => {
            eprintln!("blobring: {e}");
            ExitCode::from(e.exit_code().clamp(1, 255) as u8)
        }
    }
}
