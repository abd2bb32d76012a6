#![forbid(unsafe_code)]
//! `blobring-bench`: argument parsing only; the work is in the library.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    blobring_bench::cli::run(blobring_bench::cli::Cli::parse())
}
