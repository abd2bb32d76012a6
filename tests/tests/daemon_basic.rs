//! blobringd end to end: handshake, NOP round trips from several threads and processes,
//! blob requests through the emulated host, refusals, stats on the ctl socket.

use std::process::Command;
use std::time::{Duration, Instant};

use blobring::{ConnectError, ConnectOptions, Connection, Sqe};
use blobring_tests::{Daemon, blob_sqe, nop, reap_n, scratch, test_host_client};

const DAEMON: &str = env!("CARGO_BIN_EXE_blobring-test-daemon");
const CLIENT: &str = env!("CARGO_BIN_EXE_blobring-test-client");

/// The NOPs all the daemon's workers have completed, from its stats document `s`.
fn worker_nops(s: &serde_json::Value) -> u64 {
    s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["nops"].as_u64().unwrap())
        .sum()
}

#[test]
fn handshake_and_nop_round_trips_from_threads_and_processes() {
    let dir = scratch();
    let d = Daemon::start(DAEMON, dir.path(), &[]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "--socket-mode default");
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let path = d.socket.clone();
            std::thread::spawn(move || {
                let mut c = Connection::connect(&path).expect("connect");
                assert_eq!(c.n_queues(), 2);
                for q in 0..2 {
                    for round in 0..200u64 {
                        let sqes: Vec<Sqe> =
                            (0..8).map(|i| nop(t * 1_000_000 + round * 8 + i)).collect();
                        assert_eq!(c.submit(q, &sqes).unwrap(), 8);
                        let got = reap_n(&mut c, q, 8, Duration::from_secs(15));
                        let mut ud: Vec<u64> = got.iter().map(|c| c.user_data).collect();
                        ud.sort();
                        assert_eq!(ud, sqes.iter().map(|s| s.user_data).collect::<Vec<_>>());
                        assert!(got.iter().all(|c| c.res == 0 && c.flags == 0));
                    }
                }
                c.client_id()
            })
        })
        .collect();
    let procs: Vec<_> = (0..2)
        .map(|_| {
            Command::new(CLIENT)
                .arg(&d.socket)
                .args(["nop", "5000"])
                .output()
        })
        .collect();
    let mut ids: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "client ids are unique");
    for p in procs {
        let out = p.expect("client ran");
        assert!(
            out.status.success(),
            "client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok 5000");
    }
    let s = d.wait_stats(Duration::from_secs(5), "all clients gone", |s| {
        s["clients"].as_array().unwrap().is_empty()
    });
    assert_eq!(worker_nops(&s), 3 * 2 * 200 * 8 + 2 * 5000);
    assert_eq!(s["workers"].as_array().unwrap().len(), 2);
    assert!(s["channels"].is_array());
}

#[test]
fn refusals_carry_the_daemons_message() {
    let dir = scratch();
    let d = Daemon::start(
        DAEMON,
        dir.path(),
        &[
            "--max-clients-per-uid",
            "1",
            "--queue-depth",
            "64",
            "--arena-size",
            "1048576",
        ],
    );
    let err = Connection::connect_with(
        &d.socket,
        ConnectOptions {
            abi_version: Some(99),
            ..Default::default()
        },
    )
    .unwrap_err();
    match &err {
        ConnectError::Refused { kind, message, .. } => {
            assert_eq!(*kind, "version mismatch");
            assert!(message.contains("ABI version 99"), "{message}");
        }
        e => panic!("unexpected {e}"),
    }
    assert!(err.to_string().contains("refused"), "{err}");
    let err = Connection::connect_with(
        &d.socket,
        ConnectOptions {
            sq_entries: 128,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(&err, ConnectError::Refused { message, .. } if message.contains("--queue-depth")),
        "{err}"
    );
    let err = Connection::connect_with(
        &d.socket,
        ConnectOptions {
            arena_len: 2 << 20,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(&err, ConnectError::Refused { message, .. } if message.contains("--arena-size")),
        "{err}"
    );
    let first = Connection::connect(&d.socket).expect("first client");
    let err = Connection::connect(&d.socket).unwrap_err();
    assert!(
        matches!(&err, ConnectError::Refused { kind: "limit exceeded", message, .. } if message.contains("--max-clients-per-uid")),
        "{err}"
    );
    drop(first);
    // The slot frees once the daemon has drained the first client.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Connection::connect(&d.socket) {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "slot never freed: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(d.stats()["daemon"]["refused"].as_u64().unwrap() >= 4);
}

#[test]
fn not_permitted_uid_is_refused() {
    let dir = scratch();
    // Allow only a uid that is not ours (and not root unless we are root).
    let me = rustix::process::getuid().as_raw();
    let other = if me == 4242 { "4243" } else { "4242" };
    let d = Daemon::start(DAEMON, dir.path(), &["--allow-uid", other]);
    let err = Connection::connect(&d.socket).unwrap_err();
    assert!(
        matches!(&err, ConnectError::Refused { kind: "not permitted", message, .. } if message.contains(&format!("uid {me}"))),
        "{err}"
    );
}

#[test]
fn blob_requests_reach_the_host_and_invalid_sqes_get_einval() {
    let (_dir, host, d, mut c) = test_host_client(DAEMON);
    for q in 0..2 {
        let good = blob_sqe(&mut c, 1, b"GET /c/b HTTP/1.1\r\n\r\n", 8192);
        let mut bad_reserved = good;
        bad_reserved.user_data = 2;
        bad_reserved.reserved1 = 1;
        let mut bad_range = good;
        bad_range.user_data = 3;
        bad_range.response_offset = 0; // the header page, outside the arena
        let mut bad_valid = good;
        bad_valid.user_data = 4;
        bad_valid.data_valid = good.data_len + 1;
        let mut bad_op = good;
        bad_op.user_data = 5;
        bad_op.opcode = 77;
        let good2 = Sqe {
            user_data: 6,
            ..good
        };
        let sqes = [good, bad_reserved, bad_range, bad_valid, bad_op, good2];
        assert_eq!(c.submit(q, &sqes).unwrap(), 6);
        let mut got = reap_n(&mut c, q, 6, Duration::from_secs(15));
        got.sort_by_key(|c| c.user_data);
        for cqe in &got {
            match cqe.user_data {
                1 | 6 => {
                    assert_eq!(cqe.res, 0, "{cqe:?}");
                    assert_eq!(cqe.vsp_status, 0);
                    assert_eq!(cqe.data_len, 8192);
                    let mut head = vec![0u8; cqe.response_len as usize];
                    c.read_buf(good.response_offset, &mut head).unwrap();
                    assert_eq!(&head, b"OK:GET /c/b HTTP/1.1\r\n\r\n");
                    let mut data = vec![0u8; 8192];
                    c.read_buf(good.data_offset, &mut data).unwrap();
                    assert!(data.iter().all(|&b| b == 0xab));
                }
                _ => assert_eq!(cqe.res, -blobring::errno::EINVAL, "{cqe:?}"),
            }
        }
    }
    assert_eq!(host.answered(), 4);
    let s = d.wait_stats(Duration::from_secs(2), "stats published", |s| {
        s["totals"]["errors"]["invalid"].as_u64() == Some(8)
            && s["totals"]["host_service"]["count"].as_u64() >= Some(4)
    });
    assert_eq!(s["clients"][0]["errors"]["invalid"].as_u64(), Some(8));
    assert!(s["totals"]["host_service"]["count"].as_u64().unwrap() >= 4);
    assert!(host.errors().is_empty(), "{:?}", host.errors());
}

#[test]
fn silent_connections_do_not_block_handshakes() {
    let dir = scratch();
    let d = Daemon::start(DAEMON, dir.path(), &[]);
    let silent: Vec<_> = (0..20)
        .map(|_| std::os::unix::net::UnixStream::connect(&d.socket).unwrap())
        .collect();
    // A partial hello too.
    let mut partial = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    std::io::Write::write_all(&mut partial, &[0x42; 10]).unwrap();
    let t0 = Instant::now();
    let mut c = Connection::connect(&d.socket).expect("handshake despite silent peers");
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    c.submit(0, &[nop(1)]).unwrap();
    assert_eq!(reap_n(&mut c, 0, 1, Duration::from_secs(15))[0].res, 0);
    drop(silent);
}

#[test]
fn forty_clients_at_once() {
    let dir = scratch();
    let d = Daemon::start(DAEMON, dir.path(), &["--arena-size", "1048576"]);
    let threads: Vec<_> = (0..40u64)
        .map(|t| {
            let path = d.socket.clone();
            std::thread::spawn(move || {
                let mut c = Connection::connect(&path).expect("connect");
                for r in 0..50u64 {
                    let q = (r % 2) as u32;
                    let sqes: Vec<Sqe> = (0..4).map(|i| nop(t << 32 | r << 8 | i)).collect();
                    assert_eq!(c.submit(q, &sqes).unwrap(), 4);
                    assert!(
                        reap_n(&mut c, q, 4, Duration::from_secs(15))
                            .iter()
                            .all(|c| c.res == 0)
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = d.wait_stats(Duration::from_secs(10), "all drained", |s| {
        s["clients"].as_array().unwrap().is_empty() && s["daemon"]["clients"].as_u64() == Some(0)
    });
    assert_eq!(worker_nops(&s), 40 * 50 * 4);
}

#[test]
fn max_clients_is_enforced_across_uids() {
    let dir = scratch();
    let d = Daemon::start(DAEMON, dir.path(), &["--max-clients", "2"]);
    let _a = Connection::connect(&d.socket).unwrap();
    let _b = Connection::connect(&d.socket).unwrap();
    let err = Connection::connect(&d.socket).unwrap_err();
    assert!(
        matches!(&err, ConnectError::Refused { kind: "limit exceeded", message, .. } if message.contains("--max-clients 2")),
        "{err}"
    );
}
