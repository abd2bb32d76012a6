//! Writes the C header generated from the Rust layouts: to the path given, or by default to
//! `abi/include/blobring.h`.
fn main() -> std::io::Result<()> {
    let path = match std::env::args_os().nth(1) {
        Some(path) => std::path::PathBuf::from(path),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("include/blobring.h"),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, blobring_abi::c_header())?;
    println!("wrote {}", path.display());
    Ok(())
}
