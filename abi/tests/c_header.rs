//! The checked-in C header must equal the one generated from the Rust layouts, and must compile
//! with the machine's C compiler (its `_Static_assert`s check every size and offset).

use std::path::Path;
use std::process::Command;

fn header_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("include/blobring.h")
}

#[test]
fn checked_in_header_is_current() {
    let on_disk = std::fs::read_to_string(header_path()).expect("read abi/include/blobring.h");
    assert!(
        on_disk == blobring_abi::c_header(),
        "abi/include/blobring.h is stale: run `cargo run -p blobring-abi --example gen-header`"
    );
}

#[test]
fn header_compiles_as_c_and_cxx() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("t.c");
    std::fs::write(
        &src,
        "#include \"blobring.h\"\nint main(void) { return 0; }\n",
    )
    .unwrap();
    for (cc, extra) in [
        ("cc", vec!["-std=c11"]),
        ("c++", vec!["-x", "c++", "-std=c++11"]),
    ] {
        let out = Command::new(cc)
            .args(&extra)
            .args(["-fsyntax-only", "-Wall", "-Werror", "-I"])
            .arg(header_path().parent().unwrap())
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("run {cc}: {e}"));
        assert!(
            out.status.success(),
            "{cc} rejected blobring.h: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
