#![forbid(unsafe_code)]
//! `blobringd`: parses arguments, sets up logging and runs [`blobring_daemon::run`].

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cfg = blobring_daemon::Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log_format {
        blobring_daemon::LogFormat::Json => builder.json().init(),
        blobring_daemon::LogFormat::Human => builder.init(),
    }
    blobring_daemon::run(cfg)?;
    Ok(())
}
