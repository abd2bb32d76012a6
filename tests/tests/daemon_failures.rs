//! blobringd under failure: dead, stalled, corrupting and flooding clients, deadlines with
//! late host answers, host rescind and reconnection, daemon death and SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blobring::{CQE_F_BUFFERS_LENT, CQE_F_BUFFERS_RELEASED, Connection, Sqe, errno};
use blobring_shm::SharedMemory;
use blobring_tests::{
    Daemon, Reaped, TestHost, blob_call, blob_sqe, nop, reap_n, scratch, test_host_client,
    with_test_host,
};

const DAEMON: &str = env!("CARGO_BIN_EXE_blobring-test-daemon");
const CLIENT: &str = env!("CARGO_BIN_EXE_blobring-test-client");

fn nops_work(conn: &mut Connection, rounds: u64) {
    for q in 0..conn.n_queues() {
        for r in 0..rounds {
            let sqes: Vec<Sqe> = (0..4).map(|i| nop(r * 4 + i)).collect();
            assert_eq!(conn.submit(q, &sqes).unwrap(), 4);
            let got = reap_n(conn, q, 4, Duration::from_secs(5));
            assert!(got.iter().all(|c| c.res == 0));
        }
    }
}

fn spawn_client(
    socket: &std::path::Path,
    args: &[&str],
) -> (Reaped, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(CLIENT)
        .arg(socket)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("client");
    let out = BufReader::new(child.stdout.take().unwrap());
    (Reaped(child), out)
}

#[test]
fn killed_client_with_requests_in_flight_is_cleaned_up_and_others_keep_working() {
    let dir = scratch();
    let (host, d) = with_test_host(DAEMON, dir.path(), &["--default-timeout", "400"]);
    let mut other = Connection::connect(&d.socket).unwrap();
    let (mut victim, mut out) = spawn_client(&d.socket, &["hang"]);
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "submitted");
    host.wait_held(8);
    victim.0.kill().unwrap();
    victim.0.wait().unwrap();
    // The daemon keeps serving the other client at once.
    nops_work(&mut other, 50);
    assert_eq!(blob_call(&mut other, 1, 9, b"GET /x").res, 0);
    // The victim's requests time out, then its region is released (only one client left).
    let s = d.wait_stats(Duration::from_secs(10), "victim released", |s| {
        s["clients"].as_array().unwrap().len() == 1 && s["daemon"]["clients"].as_u64() == Some(1)
    });
    assert_eq!(s["daemon"]["clients"].as_u64(), Some(1));
    // Its guest memory was unregistered from the host (the other client's stays).
    let deadline = Instant::now() + Duration::from_secs(5);
    while host.registrations() != (2, 1) {
        assert!(
            Instant::now() < deadline,
            "registrations {:?}",
            host.registrations()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(s["clients"][0]["id"].as_u64(), Some(other.client_id()));
    // Late answers for the dead client are counted, not delivered.
    host.release_held();
    d.wait_stats(Duration::from_secs(5), "stale completions counted", |s| {
        s["totals"]["errors"]["bad_completions"].as_u64() == Some(8)
    });
    nops_work(&mut other, 10);
}

#[test]
fn deadline_gives_etimedout_with_buffers_lent_then_released() {
    let (_dir, host, d, mut c) = test_host_client(DAEMON);
    let mut sqe = blob_sqe(&mut c, 77, b"HANG /slow", 4096);
    sqe.timeout_ms = 150;
    let t0 = Instant::now();
    c.submit(0, &[sqe]).unwrap();
    let first = reap_n(&mut c, 0, 1, Duration::from_secs(5))[0];
    let waited = t0.elapsed();
    assert_eq!(first.user_data, 77);
    assert_eq!(first.res, -errno::ETIMEDOUT);
    assert_eq!(first.flags, CQE_F_BUFFERS_LENT);
    assert!(
        waited >= Duration::from_millis(140) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(c.in_flight(0), 1, "the request still owes its release");
    host.release_held();
    let second = reap_n(&mut c, 0, 1, Duration::from_secs(5))[0];
    assert_eq!(second.user_data, 77);
    assert_eq!(second.flags, CQE_F_BUFFERS_RELEASED);
    assert_eq!(second.res, -errno::ETIMEDOUT);
    assert_eq!(c.in_flight(0), 0);
    d.wait_stats(Duration::from_secs(5), "timeout counted", |s| {
        s["totals"]["errors"]["timed_out"].as_u64() == Some(1)
    });
}

#[test]
fn client_that_never_drains_stalls_only_itself() {
    let dir = scratch();
    let d = Daemon::start(DAEMON, dir.path(), &["--queue-depth", "16"]);
    let mut hog = Connection::connect(&d.socket).unwrap();
    let mut good = Connection::connect(&d.socket).unwrap();
    // CQ = 32 entries: 32 completions fit, the SQ holds 16 more, then submit refuses.
    let mut submitted = 0;
    for i in 0..100 {
        submitted += hog.submit(0, &[nop(i)]).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!((32..=48).contains(&submitted), "{submitted}");
    nops_work(&mut good, 200);
    let s = d.wait_stats(Duration::from_secs(5), "hog stalls published", |s| {
        s["clients"].as_array().unwrap().iter().any(|c| {
            c["id"].as_u64() == Some(hog.client_id()) && c["credit_stalls"].as_u64() > Some(0)
        })
    });
    let hog_stats = s["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"].as_u64() == Some(hog.client_id()))
        .unwrap()
        .clone();
    assert!(
        hog_stats["credit_stalls"].as_u64().unwrap() > 0,
        "{hog_stats}"
    );
    // Draining lets the hog continue.
    let got = reap_n(&mut hog, 0, submitted, Duration::from_secs(5));
    assert!(got.iter().all(|c| c.res == 0));
}

/// A daemon with two clients, `bad` (which has done `rounds` rounds of NOPs first) and `good`;
/// with its directory (keep it until the end).
fn bad_and_good(rounds: u64) -> (tempfile::TempDir, Daemon, Connection, Connection) {
    let dir = scratch();
    let d = Daemon::start(DAEMON, dir.path(), &[]);
    let mut bad = Connection::connect(&d.socket).unwrap();
    let good = Connection::connect(&d.socket).unwrap();
    nops_work(&mut bad, rounds);
    (dir, d, bad, good)
}

#[test]
fn corrupt_indices_disconnect_only_that_client() {
    let (_dir, d, mut bad, mut good) = bad_and_good(2);
    let g = *bad.geometry();
    // sq_tail far beyond sq_head + entries.
    bad.region()
        .store_u32(
            g.queue_control(0) + blobring_abi::qc::SQ_TAIL,
            0x4000_0000,
            Ordering::Release,
        )
        .unwrap();
    bad.ring_doorbell(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while bad.daemon_alive() {
        assert!(
            Instant::now() < deadline,
            "corrupting client was not disconnected"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    nops_work(&mut good, 100);
    let s = d.wait_stats(
        Duration::from_secs(5),
        "corrupt client counted and released",
        |s| {
            s["totals"]["errors"]["corrupt_clients"].as_u64() == Some(1)
                && s["clients"].as_array().unwrap().len() == 1
        },
    );
    assert_eq!(s["clients"][0]["id"].as_u64(), Some(good.client_id()));
}

#[test]
fn eventfd_flood_does_not_starve_others() {
    let dir = scratch();
    let d = Daemon::start(DAEMON, dir.path(), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let (path, stop) = (d.socket.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut c = Connection::connect(&path).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                c.ring_doorbell(0).unwrap();
                c.ring_doorbell(1).unwrap();
                n += 1;
            }
            n
        })
    };
    let mut good = Connection::connect(&d.socket).unwrap();
    let t0 = Instant::now();
    // Keep working while the flood lasts at least 300 ms.
    while t0.elapsed() < Duration::from_millis(300) {
        nops_work(&mut good, 100);
    }
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let rings = flooder.join().unwrap();
    assert!(rings > 1000, "the flood was real: {rings}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn daemon_death_fails_in_flight_requests_with_econnreset_promptly() {
    let dir = scratch();
    let (_host, mut d) = with_test_host(DAEMON, dir.path(), &[]);
    let (mut waiter, mut out) = spawn_client(&d.socket, &["wait"]);
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "submitted");
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    d.kill();
    line.clear();
    out.read_line(&mut line).unwrap();
    let took = t0.elapsed();
    assert_eq!(line.trim(), format!("res -{}", errno::ECONNRESET));
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(waiter.0.wait().unwrap().success());
}

#[test]
fn host_rescind_fails_in_flight_with_enodev_and_the_daemon_reconnects() {
    let (_dir, host, d, mut c) = test_host_client(DAEMON);
    let sqe = blob_sqe(&mut c, 5, b"HANG /r", 0);
    c.submit(0, &[sqe]).unwrap();
    host.wait_held(1);
    host.rescind();
    let got = reap_n(&mut c, 0, 1, Duration::from_secs(5))[0];
    assert_eq!(got.res, -errno::ENODEV);
    // ctl keeps answering and the daemon reconnects by itself.
    d.wait_stats(Duration::from_secs(10), "reconnected", |s| {
        s["daemon"]["host_connected"] == true && s["daemon"]["host_connects"].as_u64() == Some(2)
    });
    let got = blob_call(&mut c, 1, 6, b"GET /again");
    assert_eq!((got.user_data, got.res), (6, 0));
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let dir = scratch();
    let mut d = Daemon::start(DAEMON, dir.path(), &[]);
    let mut c = Connection::connect(&d.socket).unwrap();
    nops_work(&mut c, 10);
    d.signal(rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = d.try_wait() {
            break s;
        }
        assert!(Instant::now() < deadline, "daemon did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
    assert!(!d.socket.exists(), "socket removed");
    assert!(!c.daemon_alive());
}

#[test]
fn host_absent_at_start_then_crashing_then_back() {
    let dir = scratch();
    let host_path = dir.path().join("host.sock");
    let d = Daemon::start(DAEMON, dir.path(), &[]);
    let mut c = Connection::connect(&d.socket).unwrap();
    // No host yet: NOPs work, blob requests fail fast with ENODEV.
    nops_work(&mut c, 5);
    assert_eq!(blob_call(&mut c, 0, 1, b"GET /early").res, -errno::ENODEV);
    let host = TestHost::start(&host_path, 4);
    d.wait_stats(Duration::from_secs(10), "connected", |s| {
        s["daemon"]["host_connected"] == true
    });
    assert_eq!(blob_call(&mut c, 0, 2, b"GET /now").res, 0);
    // The host dies with a request in flight.
    let sqe = blob_sqe(&mut c, 3, b"HANG /lost", 0);
    c.submit(1, &[sqe]).unwrap();
    host.wait_held(1);
    drop(host);
    let got = reap_n(&mut c, 1, 1, Duration::from_secs(5))[0];
    assert_eq!((got.user_data, got.res), (3, -errno::ENODEV));
    let _host = TestHost::start(&host_path, 4);
    d.wait_stats(Duration::from_secs(10), "reconnected", |s| {
        s["daemon"]["host_connected"] == true && s["daemon"]["host_connects"].as_u64() == Some(2)
    });
    assert_eq!(blob_call(&mut c, 1, 4, b"GET /back").res, 0);
}

/// The memfd of region `client_id`, reopened through `/proc/self/fd` (the connection keeps its
/// own fd private). Names carry the daemon's pid, so parallel tests never pick another's.
fn open_region_fd(daemon_pid: u32, client_id: u64) -> std::fs::File {
    let want = format!("/memfd:blobring-client-{daemon_pid}-{client_id} (deleted)");
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == want) {
            return std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(e.path())
                .unwrap();
        }
    }
    panic!("no memfd {want}");
}

#[test]
fn punched_region_harms_only_its_owner() {
    let (_dir, d, mut bad, mut good) = bad_and_good(3);
    let len = bad.geometry().region_len;
    let fd = open_region_fd(d.pid(), bad.client_id());
    // Punch the whole region (header, queues, arena): the pages read back as zeroes, so the
    // daemon's view of the indices jumps backwards.
    rustix::fs::fallocate(
        &fd,
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        0,
        len,
    )
    .unwrap();
    // Truncation is refused by the seals.
    assert!(fd.set_len(4096).is_err());
    bad.ring_doorbell(0).unwrap();
    bad.ring_doorbell(1).unwrap();
    let _ = bad.submit(0, &[nop(1)]);
    nops_work(&mut good, 100);
    let s = d.stats();
    assert!(
        s["workers"].as_array().unwrap().len() == 2,
        "daemon alive: {s}"
    );
}

#[test]
fn lying_host_completion_is_dropped_and_the_request_times_out() {
    let (_dir, _host, d, mut c) = test_host_client(DAEMON);
    let mut sqe = blob_sqe(&mut c, 8, b"BADLEN /x", 0);
    sqe.timeout_ms = 200;
    c.submit(0, &[sqe]).unwrap();
    let first = reap_n(&mut c, 0, 1, Duration::from_secs(5))[0];
    assert_eq!(
        (first.user_data, first.res, first.flags),
        (8, -errno::ETIMEDOUT, CQE_F_BUFFERS_LENT)
    );
    d.wait_stats(Duration::from_secs(5), "bad completion counted", |s| {
        s["totals"]["errors"]["bad_completions"].as_u64() == Some(1)
    });
    // Normal requests still work on the same queue.
    let got = blob_call(&mut c, 0, 9, b"GET /fine");
    assert_eq!((got.user_data, got.res), (9, 0));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = scratch();
    let mut child = Reaped(
        Command::new(DAEMON)
            .arg("--socket")
            .arg(dir.path().join("d.sock"))
            .arg("--host-socket")
            .arg(dir.path().join("none.sock"))
            .args(["--workers", "1", "--no-pin", "--log-format", "json"])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut err = BufReader::new(child.0.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    drop(child);
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert!(
        v["level"].is_string() && v["fields"]["message"].is_string(),
        "{v}"
    );
}

#[test]
fn connection_is_send() {
    fn send<T: Send>() {}
    send::<Connection>();
}
