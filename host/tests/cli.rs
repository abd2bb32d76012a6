//! The `blobring-host` binary: flags, auth modes, fault injection, loopback-only binding.

mod common;

use std::process::Command;

use common::{Host, header, host_fails, unsigned_get};

#[test]
fn help_documents_the_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_blobring-host"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--store",
        "--http",
        "--account",
        "--key",
        "--no-auth",
        "--log-format",
        "--fault-latency-ms",
        "--fault-error-rate",
        "--fault-hang-rate",
        "--fault-seed",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn refuses_non_loopback_and_bad_specs() {
    for args in [
        &["--store", "mem", "--http", "0.0.0.0:0"][..],
        &["--store", "s3:bucket", "--http", "127.0.0.1:0"][..],
        &[
            "--store",
            "mem",
            "--http",
            "127.0.0.1:0",
            "--fault-error-rate",
            "2",
        ][..],
        &[
            "--store",
            "mem",
            "--http",
            "127.0.0.1:0",
            "--key",
            "not base64!",
        ][..],
    ] {
        let err = host_fails(args);
        assert!(err.contains("Error"), "{args:?}: {err}");
    }
}

#[test]
fn auth_modes() {
    let host = Host::start("mem", &[]);
    let (s, h, _) = unsigned_get(&host.url, "/devstoreaccount1/test/x");
    assert_eq!(s, 401);
    assert_eq!(
        header(&h, "x-ms-error-code"),
        Some("NoAuthenticationInformation")
    );
    let (s, _, _) = host.request("GET", "/devstoreaccount1/test/x", &[], &[]);
    assert_eq!(s, 404);
    drop(host);

    let host = Host::start("mem", &["--no-auth"]);
    let (s, h, _) = unsigned_get(&host.url, "/devstoreaccount1/test/x");
    assert_eq!(s, 404);
    assert_eq!(header(&h, "x-ms-error-code"), Some("BlobNotFound"));
}

#[test]
fn injected_server_busy() {
    let host = Host::start(
        "mem",
        &["--fault-error-rate", "1", "--fault-latency-ms", "5"],
    );
    let (s, h, body) = host.request("GET", "/devstoreaccount1/test/x", &[], &[]);
    assert_eq!(s, 503);
    assert_eq!(header(&h, "x-ms-error-code"), Some("ServerBusy"));
    assert!(String::from_utf8_lossy(&body).contains("<Code>ServerBusy</Code>"));
}
