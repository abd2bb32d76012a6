//! blobringd administration surfaces: the ctl socket through the `blobring` CLI library, the
//! Prometheus endpoint on loopback, and refusal of a non-loopback metrics address.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use blobring::{Connection, Cqe, FromZeros};
use blobring_tests::{Daemon, TestHost, blob_sqe, daemon_refusal, nop, scratch};

const DAEMON: &str = env!("CARGO_BIN_EXE_blobring-test-daemon");

fn drive(c: &mut Connection) {
    let mut buf = vec![Cqe::new_zeroed(); 8];
    let sqe = blob_sqe(c, 1, b"GET /m", 0);
    c.submit(0, &[sqe, nop(2)]).unwrap();
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while got < 2 {
        assert!(Instant::now() < deadline);
        got += c.reap(0, &mut buf).unwrap();
        c.wait(0, Some(Duration::from_millis(50))).unwrap();
    }
}

#[test]
fn ctl_tables_and_prometheus_metrics_show_live_figures() {
    let dir = scratch();
    let _host = TestHost::start(&dir.path().join("host.sock"), 4);
    // Port 0: the daemon binds a free port and reports it (no race with another process
    // taking a port picked here first).
    let d = Daemon::start(DAEMON, dir.path(), &["--metrics", "127.0.0.1:0"]);
    let addr = d.stats()["daemon"]["metrics"]
        .as_str()
        .expect("daemon.metrics in the ctl stats")
        .to_owned();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    // Channels open one after the other once the host is connected: wait for both.
    d.wait_stats(
        Duration::from_secs(10),
        "host connected, both channels open",
        |s| {
            s["daemon"]["host_connected"] == true
                && s["channels"].as_array().map(Vec::len) == Some(2)
        },
    );
    let mut c = Connection::connect(&d.socket).unwrap();
    drive(&mut c);
    d.wait_stats(Duration::from_secs(5), "requests counted", |s| {
        s["totals"]["requests"].as_u64() == Some(2)
    });
    let doc = blobring_ctl::fetch(&d.ctl).unwrap();
    let clients = blobring_ctl::render_clients(&doc);
    let row: Vec<&str> = clients
        .lines()
        .nth(1)
        .expect("a client row")
        .split_whitespace()
        .collect();
    assert_eq!(row[0], c.client_id().to_string(), "{clients}");
    assert_eq!(row[3], "2", "{clients}");
    let channels = blobring_ctl::render_channels(&doc);
    assert_eq!(
        channels.lines().count(),
        1 + 2,
        "two channels (one per worker): {channels}"
    );
    assert!(blobring_ctl::render_stats(&doc).contains("host: connected"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let body = loop {
        let mut s = TcpStream::connect(&addr).expect("metrics port");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        if text.contains("blobring_client_requests_total{client=") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed the client: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("blobring_host_connected 1"), "{body}");
    assert!(
        body.contains("blobring_end_to_end_seconds{worker=\"0\",quantile=\"0.99\"}"),
        "{body}"
    );
}

#[test]
fn metrics_on_a_non_loopback_address_is_refused() {
    let dir = scratch();
    let socket = dir.path().join("d.sock");
    let err = daemon_refusal(
        DAEMON,
        &socket,
        &["--metrics", "0.0.0.0:9464", "--workers", "1"],
    );
    assert!(err.contains("not a loopback address"), "{err}");
}
