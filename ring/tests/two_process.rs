//! Two real processes share a sealed memfd region and an eventfd passed with `SCM_RIGHTS`, and
//! move 10 million entries (override with `BLOBRING_RING_ENTRIES`) through one queue pair. Both
//! sides sleep whenever idle (need-wakeup flags, eventfd one way, futex on `cq_tail` the other);
//! a lost wakeup shows as a sleep that times out, which fails the test. Every user_data is
//! checked in order on both sides, and the indices cross the u32 wrap.

mod common;

use std::time::{Duration, Instant};

use common::{ClientEnd, DaemonEnd, Idle, Params, Stats, recv_with_fds, send_with_fds, spawn_peer};

const CHILD_ENV: &str = "BLOBRING_RING_TWO_PROCESS_SOCK";
const TEST_NAME: &str = "ten_million_entries_between_two_processes";

fn entries() -> u64 {
    std::env::var("BLOBRING_RING_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000)
}

fn child(path: &str) -> Result<(), String> {
    common::die_with_parent()?;
    let sock = std::os::unix::net::UnixStream::connect(path).map_err(|e| e.to_string())?;
    let end = ClientEnd::receive(&sock)?;
    let deadline = Instant::now() + Duration::from_secs(240);
    let st = common::run_stream_client(&end, Idle::Sleep, 64, deadline)?;
    send_with_fds(
        &sock,
        &[st.entries, st.sleeps, st.timeouts, st.signals],
        &[],
    )
}

#[test]
fn ten_million_entries_between_two_processes() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        // Child role (the client), re-executed from this same test binary.
        if let Err(e) = child(&path) {
            panic!("client process failed: {e}");
        }
        return;
    }
    let count = entries();
    let params = Params {
        sq_entries: 256,
        cq_entries: 512,
        start: u32::MAX - 1000,
        count,
    };
    let daemon = DaemonEnd::create(params).unwrap();
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"]);
    let (mut guard, sock) = spawn_peer(cmd, CHILD_ENV).unwrap();
    daemon.send(&sock).unwrap();

    let t0 = Instant::now();
    let st: Stats =
        common::run_echo_daemon(&daemon, Idle::Sleep, t0 + Duration::from_secs(240)).unwrap();
    let elapsed = t0.elapsed();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let (c, _) = recv_with_fds::<4>(&sock, 0).unwrap();
    guard.wait_success(Duration::from_secs(60)).unwrap();
    let (c_entries, c_sleeps, c_timeouts, c_signals) = (c[0], c[1], c[2], c[3]);
    eprintln!(
        "{count} entries in {elapsed:?} ({:.1} ns/entry); daemon slept {} times ({} signals to \
         client), client slept {c_sleeps} times ({c_signals} eventfd signals)",
        elapsed.as_nanos() as f64 / count as f64,
        st.sleeps,
        st.signals,
    );
    assert_eq!(st.entries, count);
    assert_eq!(c_entries, count);
    assert_eq!(st.timeouts, 0, "daemon sleep timed out: lost wakeup");
    assert_eq!(c_timeouts, 0, "client sleep timed out: lost wakeup");
    assert!(
        st.sleeps > 0 && c_sleeps > 0,
        "both sides must have really slept"
    );
    assert!(
        st.signals > 0 && c_signals > 0,
        "both directions must have signalled"
    );
}
