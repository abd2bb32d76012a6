//! Writes `abi/include/blobring.h` from the Rust layouts.
fn main() -> std::io::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("include/blobring.h");
    std::fs::write(&path, blobring_abi::c_header())?;
    println!("wrote {}", path.display());
    Ok(())
}
