#![forbid(unsafe_code)]
//! `blobringd` built inside the tests crate, so integration tests can start it with
//! `env!("CARGO_BIN_EXE_blobring-test-daemon")` (Cargo only exposes binaries of the crate under
//! test). Same code as the real binary.

fn main() -> anyhow::Result<()> {
    blobring_daemon::main_from_args()?;
    Ok(())
}
