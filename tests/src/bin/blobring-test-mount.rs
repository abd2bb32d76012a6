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
    blobring_ctl::entry::mount_exit(match Cli::parse().cmd {
        Cmd::Mount(a) => {
            if a.foreground {
                blobring_ctl::entry::log_to_stderr();
            }
            blobring_mount::run(a)
        }
        Cmd::Unmount { mountpoint } => blobring_mount::unmount(&mountpoint),
    })
}
