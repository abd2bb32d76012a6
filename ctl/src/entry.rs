//! What the `blobring` binary and the tests crate's copies of its subcommands
//! (`blobring-test-gateway`, `blobring-test-mount`) share, so both behave the same: logging and
//! the exit status of a mount.

use std::process::ExitCode;

use blobring_mount::MountError;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn log_to_stderr() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The exit status of `mount` or `unmount` (2 usage, 3 no such container, 4 no daemon, …),
/// after printing its error.
pub fn mount_exit(r: Result<(), MountError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ MountError::Detached { .. }) => {
            // The mount process's own `blobring: …` lines.
            eprintln!("{e}");
            ExitCode::from(e.exit_code().clamp(1, 255) as u8)
        }
        Err(e) => {
            eprintln!("blobring: {e}");
            ExitCode::from(e.exit_code().clamp(1, 255) as u8)
        }
    }
}
