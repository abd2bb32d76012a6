#![forbid(unsafe_code)]
//! `blobringd` built inside the tests crate, so integration tests can start it with
//! `env!("CARGO_BIN_EXE_blobring-test-daemon")` (Cargo only exposes binaries of the crate under
//! test). Same library entry point as the real binary.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cfg = blobring_daemon::Config::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    blobring_daemon::run(cfg)?;
    Ok(())
}
