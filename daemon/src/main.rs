#![forbid(unsafe_code)]
//! `blobringd`: parses arguments, sets up logging and runs the daemon
//! ([`blobring_daemon::main_from_args`]).

fn main() -> anyhow::Result<()> {
    blobring_daemon::main_from_args()?;
    Ok(())
}
