#![forbid(unsafe_code)]
//! `blobringd`: parses arguments, sets up logging and runs [`blobring_daemon::run`].

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cfg = blobring_daemon::Config::parse();
    blobring_daemon::init_logging(cfg.log_format);
    blobring_daemon::run(cfg)?;
    Ok(())
}
