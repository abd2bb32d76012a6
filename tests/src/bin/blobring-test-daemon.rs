#![forbid(unsafe_code)]
//! `blobringd` built inside the tests crate, so integration tests can start it with
//! `env!("CARGO_BIN_EXE_blobring-test-daemon")` (Cargo only exposes binaries of the crate under
//! test). Same code as the real binary.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cfg = blobring_daemon::Config::parse();
    blobring_daemon::init_logging(cfg.log_format);
    blobring_daemon::run(cfg)?;
    Ok(())
}
