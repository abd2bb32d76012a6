//! Soak (issue #7, item 4): a bounded mixed workload against a real stack
//! (`blobring-host --store fs:` + blobringd) from two `blobring-soak` processes of 4 clients
//! × 2 workers each: puts of random sizes (0 B – 10 MiB, the largest through the SDK's block
//! upload), explicit block uploads, overwrites, whole and ranged GETs, HEAD, paged listings
//! and deletes. Every byte read is checked against what was acknowledged as written (see
//! `tests/src/bin/blobring-soak.rs`), and every blob is read back at the end.
//!
//! 2 minutes by default; `BLOBRING_SOAK_SECS` changes it, e.g. an hour:
//! `BLOBRING_SOAK_SECS=3600 cargo test --release -p blobring-tests --test soak -- --nocapture`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use blobring_tests::{
    HostStack, Reaped, assert_no_daemon_errors, assert_soak_kept, soak_report, spawn_soak,
};

const DAEMON: &str = env!("CARGO_BIN_EXE_blobring-test-daemon");
const SOAK: &str = env!("CARGO_BIN_EXE_blobring-soak");

#[test]
fn soak_mixed_workload_loses_and_corrupts_nothing() {
    let secs: f64 = std::env::var("BLOBRING_SOAK_SECS")
        .ok()
        .map(|s| {
            s.parse()
                .expect("BLOBRING_SOAK_SECS must be a number of seconds")
        })
        .unwrap_or(120.0);
    let dir = tempfile::Builder::new()
        .prefix("brsoak")
        .tempdir_in("/dev/shm")
        .expect("tempdir in /dev/shm");
    let s = HostStack::start(DAEMON, dir.path(), &[], &[]);
    let t0 = Instant::now();
    let mut procs: Vec<Reaped> = (0..2u64)
        .map(|i| {
            let args = [
                "--clients",
                "4",
                "--threads-per-client",
                "2",
                "--progress-secs",
                "15",
            ];
            spawn_soak(
                SOAK,
                &s.daemon.socket,
                secs,
                42 + i,
                &args,
                Stdio::inherit(),
            )
        })
        .collect();
    // Bounded: the workload, the final read-back (≤ 60 s per key but normally a second), slack.
    let limit = t0 + Duration::from_secs_f64(secs) + Duration::from_secs(180);
    let mut reports = Vec::new();
    for p in &mut procs {
        let (status, r) = soak_report(p, limit);
        println!("{r}");
        reports.push((status, r));
    }
    for (status, r) in &reports {
        assert_soak_kept(r, &["errors_total"]);
        for (op, n) in r["ops"].as_object().expect("ops") {
            assert!(n.as_u64().unwrap() > 0, "no successful {op}: {r}");
        }
        assert_eq!(r["keys_verified"], 8 * 12, "final read-back: {r}");
        assert!(status.success(), "blobring-soak exited {status}: {r}");
    }
    assert_no_daemon_errors(&s.daemon.stats());
}
