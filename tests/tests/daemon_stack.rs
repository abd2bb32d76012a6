//! The whole stack with real processes: `blobring-host --socket` on an `fs` store,
//! `blobringd` (built here as `blobring-test-daemon`, the same library entry point), and
//! client processes (`blobring-stack-client`) or in-process SDK clients.
//!
//! The store lives on tmpfs (`/dev/shm`) so the host's fsyncs do not dominate the timings;
//! it is still the `fs` store with its temp-file + rename commit protocol.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blobring::blob::{AccountConfig, BlobService, GetOptions, PutOptions};
use blobring::{Client, block_on};
use blobring_tests::{Reaped, assert_no_daemon_errors};
use common::shm_stack;

const CLIENT: &str = env!("CARGO_BIN_EXE_blobring-stack-client");

fn spawn_client(socket: &Path, id: u64, n: &str, seed: u64) -> Reaped {
    Reaped(
        Command::new(CLIENT)
            .arg(socket)
            .arg(id.to_string())
            .arg(n)
            .arg(seed.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn blobring-stack-client"),
    )
}

/// Waits (bounded) for the child to exit; returns (success, stdout, stderr).
fn finish(c: &mut Reaped, limit: Duration) -> (bool, String, String) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = c.0.try_wait().expect("try_wait") {
            let mut out = String::new();
            let mut err = String::new();
            if let Some(mut o) = c.0.stdout.take() {
                let _ = std::io::Read::read_to_string(&mut o, &mut out);
            }
            if let Some(mut e) = c.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return (st.success(), out, err);
        }
        assert!(
            Instant::now() < deadline,
            "client {} still running after {limit:?}",
            c.0.id()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads the child's stdout until `line`, bounded.
fn wait_line(c: &mut Child, line: &str, limit: Duration) {
    let out = c.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let want = line.to_owned();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if l.trim() == want {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("client {} did not print {line:?} within {limit:?}", c.id()));
}

fn service(socket: &Path) -> BlobService {
    BlobService::new(
        Client::connect(socket).expect("connect"),
        AccountConfig::emulator(),
    )
    .with_timeout(Duration::from_secs(10))
}

#[test]
fn sixteen_client_processes_ten_thousand_mixed_requests_each() {
    let (_dir, s) = shm_stack(&[], &[]);
    let t0 = Instant::now();
    let mut clients: Vec<Reaped> = (0..16)
        .map(|i| spawn_client(&s.daemon.socket, i, "10000", 1000 + i))
        .collect();
    let mut total = 0u64;
    for (i, c) in clients.iter_mut().enumerate() {
        let (ok, out, err) = finish(c, Duration::from_secs(150));
        assert!(ok, "client {i} failed: {out}\n{err}");
        assert!(out.starts_with("ok 10000 "), "client {i}: {out}");
        total += 10_000;
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!("{total} mixed requests from 16 processes in {secs:.1} s");
    let doc = s.daemon.stats();
    assert_no_daemon_errors(&doc);
    assert!(
        doc["totals"]["requests"].as_u64().unwrap() >= total,
        "{doc}"
    );
}

#[test]
fn kill9_of_a_client_in_flight_frees_its_region_others_keep_working() {
    let (_dir, s) = shm_stack(&[], &[]);
    let mut busy: Vec<Reaped> = (0..4)
        .map(|i| spawn_client(&s.daemon.socket, i, "loop", 7 + i))
        .collect();
    for c in &mut busy {
        wait_line(&mut c.0, "running", Duration::from_secs(20));
    }
    let victim = busy[0].0.id();
    let listed = |doc: &serde_json::Value, pid: u32| {
        doc["clients"]
            .as_array()
            .expect("clients array")
            .iter()
            .any(|c| c["pid"] == pid)
    };
    assert!(listed(&s.daemon.stats(), victim));
    busy[0].0.kill().expect("SIGKILL");
    busy[0].0.wait().expect("reap");
    // Its requests drain, then its region is released and it leaves `clients`.
    s.daemon.wait_stats(
        Duration::from_secs(15),
        "killed client's region released",
        |d| !listed(d, victim),
    );
    // The others never noticed: still running, and a fresh client completes a full run.
    for c in &mut busy[1..] {
        assert!(
            c.0.try_wait().unwrap().is_none(),
            "a bystander client stopped"
        );
    }
    let mut fresh = spawn_client(&s.daemon.socket, 9, "500", 99);
    let (ok, out, err) = finish(&mut fresh, Duration::from_secs(60));
    assert!(ok, "{out}\n{err}");
    for c in &mut busy[1..] {
        assert!(
            c.0.try_wait().unwrap().is_none(),
            "a bystander client stopped"
        );
    }
}

#[test]
fn daemon_killed_under_load_clients_fail_promptly() {
    let (_dir, mut s) = shm_stack(&[], &[]);
    let mut busy: Vec<Reaped> = (0..4)
        .map(|i| spawn_client(&s.daemon.socket, i, "loop", 31 + i))
        .collect();
    for c in &mut busy {
        wait_line(&mut c.0, "running", Duration::from_secs(20));
    }
    s.daemon.kill();
    let t0 = Instant::now();
    for c in &mut busy {
        let (ok, _, err) = finish(c, Duration::from_secs(5));
        assert!(!ok, "a client survived the daemon's death");
        let e = err.to_lowercase();
        assert!(
            e.contains("reset") || e.contains("104") || e.contains("daemon"),
            "client error does not say the daemon went away: {err}"
        );
    }
    eprintln!(
        "clients failed {:.0} ms after the daemon died",
        t0.elapsed().as_secs_f64() * 1e3
    );
}

#[test]
fn host_killed_and_restarted_under_load_daemon_recovers_acknowledged_writes_survive() {
    let (dir, mut s) = shm_stack(&[], &[]);
    let svc = service(&s.daemon.socket);
    let mut acked: Vec<(String, Vec<u8>)> = Vec::new();
    block_on(svc.create_container("keep")).expect("create");
    let put = |i: usize| {
        let name = format!("w{i}");
        let body: Vec<u8> = (0..(i * 997) % 70_000)
            .map(|j| (j * 31 + i) as u8)
            .collect();
        (name, body)
    };
    for i in 0..50 {
        let (n, b) = put(i);
        block_on(svc.put_blob("keep", &n, &b, &PutOptions::default())).expect("put");
        acked.push((n, b));
    }
    // Load from a second process while the host dies.
    let mut load = spawn_client(&s.daemon.socket, 5, "loop", 5);
    wait_line(&mut load.0, "running", Duration::from_secs(20));
    s.host.proc.kill();
    // Requests fail (ENODEV) while the host is away; the daemon stays up and serves ctl.
    let mut failed = 0;
    for i in 50..60 {
        let (n, b) = put(i);
        match block_on(svc.put_blob("keep", &n, &b, &PutOptions::default())) {
            Ok(_) => acked.push((n, b)),
            Err(_) => failed += 1,
        }
    }
    assert!(failed > 0, "no request failed while the host was dead");
    s.daemon
        .wait_stats(Duration::from_secs(10), "host disconnected", |d| {
            d["daemon"]["host_connected"] == false
        });
    assert!(
        s.daemon.stats()["totals"]["errors"]["no_device"]
            .as_u64()
            .unwrap()
            > 0
    );
    // Restart the host on the same socket and store; the daemon reconnects by itself.
    s.restart_host(dir.path(), &[]);
    s.daemon
        .wait_stats(Duration::from_secs(20), "daemon reconnected", |d| {
            d["daemon"]["host_connected"] == true && d["daemon"]["host_connects"] == 2
        });
    // New requests work, and every acknowledged write reads back byte-exact.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match block_on(svc.head_blob("keep", "w0", &GetOptions::default())) {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "no recovery: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for (n, b) in &acked {
        let g = block_on(svc.get_blob("keep", n, None, &GetOptions::default()))
            .unwrap_or_else(|e| panic!("acknowledged {n} lost: {e}"));
        assert_eq!(&g.to_vec().unwrap(), b, "{n}");
    }
    drop(load);
}

#[test]
fn hung_host_times_out_with_buffers_lent_then_released_after_the_host_answers() {
    use blobring::{CQE_F_BUFFERS_LENT, CQE_F_BUFFERS_RELEASED, Connection, Cqe, FromZeros};
    const HANG_MS: u64 = 1500;
    let (_dir, s) = shm_stack(
        &[
            "--no-auth",
            "--fault-hang-rate",
            "1",
            "--fault-hang-ms",
            "1500",
        ],
        &[],
    );
    let mut conn = Connection::connect(&s.daemon.socket).expect("connect");
    let head = b"GET /devstoreaccount1/c/x HTTP/1.1\r\nHost: localhost\r\nx-ms-version: 2021-08-06\r\n\r\n";
    let mut sqes = Vec::new();
    for i in 0..4u64 {
        let mut sqe = blobring_tests::blob_sqe(&mut conn, 100 + i, head, 4096);
        sqe.response_offset = conn.alloc(4096, 64).expect("alloc").offset;
        sqe.response_len = 4096;
        sqe.timeout_ms = 100;
        sqes.push(sqe);
    }
    let t0 = Instant::now();
    conn.submit(0, &sqes).expect("submit");
    let mut cq = vec![Cqe::new_zeroed(); 16];
    let mut lent = Vec::new();
    let mut released = Vec::new();
    let deadline = t0 + Duration::from_secs(15);
    while released.len() < sqes.len() {
        assert!(
            Instant::now() < deadline,
            "lent {lent:?}, released {released:?} after 15 s"
        );
        let _ = conn.wait(0, Some(Duration::from_millis(50)));
        let n = conn.reap(0, &mut cq).expect("reap");
        for c in &cq[..n] {
            let at = t0.elapsed();
            if c.flags & CQE_F_BUFFERS_RELEASED != 0 {
                assert!(
                    lent.iter().any(|&(u, _)| u == c.user_data),
                    "released before lent: {c:?}"
                );
                released.push((c.user_data, at));
            } else {
                assert_eq!(c.res, -110, "ETIMEDOUT expected: {c:?}");
                assert_ne!(
                    c.flags & CQE_F_BUFFERS_LENT,
                    0,
                    "BUFFERS_LENT expected: {c:?}"
                );
                lent.push((c.user_data, at));
            }
        }
    }
    for &(u, at) in &lent {
        assert!(
            at < Duration::from_millis(HANG_MS / 2),
            "request {u} timed out only after {at:?} (deadline 100 ms)"
        );
    }
    // The buffers stay lent until the host really answered: not before its hang ends.
    for &(u, at) in &released {
        assert!(
            at >= Duration::from_millis(HANG_MS - 100),
            "request {u}'s buffers released after {at:?}, before the host's {HANG_MS} ms hang ended"
        );
    }
    let doc = s.daemon.stats();
    assert!(
        doc["totals"]["errors"]["timed_out"].as_u64().unwrap() >= 4,
        "{doc}"
    );
}

#[test]
fn response_head_larger_than_its_buffer_completes_with_head_too_large() {
    use blobring::{Connection, Cqe, FromZeros};
    let (_dir, s) = shm_stack(&["--no-auth"], &["--default-timeout", "20000"]);
    let mut conn = Connection::connect(&s.daemon.socket).expect("connect");
    let head = b"GET /devstoreaccount1/c/x HTTP/1.1\r\nHost: localhost\r\nx-ms-version: 2021-08-06\r\n\r\n";
    let mut sqe = blobring_tests::blob_sqe(&mut conn, 5, head, 4096);
    sqe.response_len = 16;
    let t0 = Instant::now();
    conn.submit(0, &[sqe]).expect("submit");
    let mut cq = vec![Cqe::new_zeroed(); 4];
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no completion for a request whose response head does not fit its buffer: {}",
            s.daemon.stats()
        );
        let _ = conn.wait(0, Some(Duration::from_millis(50)));
        if conn.reap(0, &mut cq).expect("reap") > 0 {
            break;
        }
    }
    let c = cq[0];
    assert_eq!(c.res, 0, "{c:?}");
    assert_eq!(
        c.vsp_status,
        blobring_abi::vmbus::VspStatus::HeadTooLarge.code(),
        "{c:?}"
    );
    assert!(c.response_len > 16, "the bytes needed: {c:?}");
}
