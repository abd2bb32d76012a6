//! The C header generated from the Rust layouts must compile with the machine's C and C++
//! compilers (its `_Static_assert`s check every size and offset).

use std::process::Command;

#[test]
fn header_compiles_as_c_and_cxx() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("blobring.h"), blobring_abi::c_header()).unwrap();
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
            .arg(dir.path())
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
