//! `blobring gateway` against a real stack: blobring-host (fs store, SharedKey verified with the
//! emulator key) + blobringd + the gateway process (`blobring-test-gateway`, the CLI's entry
//! point), with unmodified HTTP clients pointed at the gateway:
//! - object_store over HTTP runs object_store's own integration suite;
//! - a request signed for another key is refused by the host through the gateway (403), the
//!   same request signed with the account's key is accepted;
//! - limits and errors: an over-limit body gets 413 before it is sent, an unreachable daemon
//!   503 with an Azure-style body;
//! - faults: the daemon killed mid-request (a clean 503, then the same gateway serves again
//!   once the daemon is back), 1,000 clients vanishing mid-body (fds and RSS back at
//!   baseline), slow clients do not hold up others and are cut off at the idle deadline;
//! - azure-storage-blob (Python) runs one scenario through the gateway and directly against
//!   the host's REST front end with identical transcripts, and pyarrow's `AzureFileSystem`
//!   writes and reads a Parquet dataset through the gateway (`tests/python/
//!   gateway_compare.py`, in the venv `./scripts/test.sh` creates: `$BLOBRING_VENV`, else
//!   `target/venv`).
//!
//! Every process is killed on drop (also when an assertion fails).

mod common;

use std::io::{BufRead as _, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path as FsPath;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blobring::blob::{EMULATOR_ACCOUNT, EMULATOR_KEY, sign, string_to_sign};
use blobring_tests::{HostStack, Reaped, fd_count, proc_status_kib, scratch};
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::path::Path;
use object_store::{ObjectStoreExt as _, PutPayload};
use tempfile::TempDir;

const DAEMON: &str = env!("CARGO_BIN_EXE_blobring-test-daemon");
const GATEWAY: &str = env!("CARGO_BIN_EXE_blobring-test-gateway");
const ARENA: &str = "134217728";
const API_VERSION: &str = "2023-11-03";

/// A running gateway process (killed on drop) and where it listens.
struct Gateway {
    proc: Reaped,
    /// `http://127.0.0.1:PORT`
    url: String,
    /// `127.0.0.1:PORT`
    addr: String,
    /// `http://127.0.0.1:PORT/metrics`
    metrics: String,
}

impl Gateway {
    /// Starts the gateway on free loopback ports for the daemon at `socket`, logging to
    /// `dir/gateway.log`, and waits (≤ 20 s) for its `listening on` lines.
    fn start(dir: &FsPath, socket: &FsPath, extra: &[&str]) -> Gateway {
        let log = std::fs::File::create(dir.join("gateway.log")).expect("gateway log");
        let mut child = Command::new(GATEWAY)
            .args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
            .arg("--socket")
            .arg(socket)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn blobring-test-gateway");
        let out = child.stdout.take().expect("stdout");
        let proc = Reaped(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let (mut url, mut metrics) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while url.is_none() || metrics.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("the gateway printed no `listening on` / `metrics on` lines in 20 s");
            if let Some(u) = line.strip_prefix("blobring gateway: listening on http://") {
                url = Some(format!("http://{}", u.trim()));
            } else if let Some(u) = line.strip_prefix("blobring gateway: metrics on ") {
                metrics = Some(u.trim().to_owned());
            }
        }
        let url = url.unwrap();
        let addr = url.trim_start_matches("http://").to_owned();
        Gateway {
            proc,
            url,
            addr,
            metrics: metrics.unwrap(),
        }
    }

    fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    fn log(dir: &FsPath) -> String {
        std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default()
    }

    /// The value of one Prometheus sample line `name` (exact, labels included).
    fn metric(&self, name: &str) -> u64 {
        let (status, _, body) = raw(
            self.metrics
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap(),
            "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        );
        assert_eq!(status, 200);
        let text = String::from_utf8(body).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }
}

fn stack(dir: &FsPath, host_args: &[&str]) -> HostStack {
    let mut a = vec!["--container", "test"];
    a.extend_from_slice(host_args);
    HostStack::start(DAEMON, dir, &a, &["--arena-size", ARENA])
}

/// A [`stack`] (`host_args` extra) in a fresh [`scratch`] directory and a [`Gateway`]
/// (`gateway_args` extra) in front of its daemon; with the directory (keep it to the end).
fn stack_and_gateway(host_args: &[&str], gateway_args: &[&str]) -> (TempDir, HostStack, Gateway) {
    let dir = scratch();
    let s = stack(dir.path(), host_args);
    let gw = Gateway::start(dir.path(), &s.daemon.socket, gateway_args);
    (dir, s, gw)
}

fn store(url: &str, key: &str) -> MicrosoftAzure {
    MicrosoftAzureBuilder::new()
        .with_account(EMULATOR_ACCOUNT)
        .with_access_key(key)
        .with_container_name("test")
        .with_endpoint(format!("{url}/{EMULATOR_ACCOUNT}"))
        .with_allow_http(true)
        .with_retry(object_store::RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
            ..Default::default()
        })
        .build()
        .expect("object_store builder")
}

/// One raw HTTP/1.1 exchange on a new connection (`req` is the whole request, which should
/// say `connection: close`): status, head and body.
fn raw(addr: &str, req: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect to the gateway");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    parse_answer(all)
}

/// [`raw`] over the gateway's unix socket.
fn raw_unix(path: &FsPath, req: &str) -> (u16, String, Vec<u8>) {
    let mut s = std::os::unix::net::UnixStream::connect(path).expect("connect to the gateway");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    parse_answer(all)
}

fn parse_answer(all: Vec<u8>) -> (u16, String, Vec<u8>) {
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(&all)));
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, head, all[split + 4..].to_vec())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A SharedKey-signed raw request head for `method /devstoreaccount1/test/<blob>` with
/// `len` body bytes, signed with `key`.
fn signed_head(addr: &str, method: &str, blob: &str, len: usize, key: &[u8]) -> String {
    signed_head_with(addr, method, blob, len, key, &[])
}

/// [`signed_head`] with `extra` `x-ms-` headers (signed with the rest).
fn signed_head_with(
    addr: &str,
    method: &str,
    blob: &str,
    len: usize,
    key: &[u8],
    extra: &[(&str, &str)],
) -> String {
    let path = format!("/{EMULATOR_ACCOUNT}/test/{blob}");
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let mut h: Vec<(String, String)> = vec![
        ("x-ms-date".into(), date),
        ("x-ms-version".into(), API_VERSION.into()),
    ];
    h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    if method == "PUT" {
        h.push(("x-ms-blob-type".into(), "BlockBlob".into()));
        h.push(("content-length".into(), len.to_string()));
    }
    let sts = string_to_sign(method, EMULATOR_ACCOUNT, &path, &[], &h);
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\
         authorization: SharedKey {EMULATOR_ACCOUNT}:{}\r\n",
        sign(key, &sts)
    );
    for (k, v) in h {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out
}

fn emulator_key() -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(EMULATOR_KEY)
        .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn object_store_integration_suite_through_the_gateway() {
    let (_dir, s, gw) = stack_and_gateway(&[], &[]);
    let store = store(&gw.url, EMULATOR_KEY);
    let before = s.daemon.stats()["totals"]["requests"].as_u64().unwrap_or(0);
    common::object_store_suite(&rt(), &store, "through the gateway ");
    // The traffic went over blobring, and the gateway counted it.
    let served = gw.metric("blobring_gateway_requests_total{op=\"get_blob\"}")
        + gw.metric("blobring_gateway_requests_total{op=\"put_blob\"}")
        + gw.metric("blobring_gateway_requests_total{op=\"list\"}");
    assert!(served > 50, "the gateway counted only {served} requests");
    assert!(gw.metric("blobring_gateway_connections_total") >= 1);
    assert!(gw.metric("blobring_gateway_response_bytes_total{op=\"get_blob\"}") > 0);
    let after = s.daemon.stats();
    let n = after["totals"]["requests"].as_u64().unwrap_or(0);
    assert!(
        n > before + 50,
        "blobringd saw {n} requests (before: {before}); stats: {after}"
    );
}

#[test]
fn signatures_verify_on_the_host_and_a_foreign_key_is_refused() {
    let dir = scratch();
    let s = stack(dir.path(), &[]);
    let unix = dir.path().join("gw.sock");
    let gw = Gateway::start(
        dir.path(),
        &s.daemon.socket,
        &["--unix", unix.to_str().unwrap()],
    );
    let key = emulator_key();
    // Over the unix socket too (the Host header is whatever the client sent).
    let (st, head, b) = raw_unix(
        &unix,
        &(signed_head("localhost", "PUT", "via-unix", 3, &key) + "uds"),
    );
    assert_eq!(st, 201, "{head}\n{}", String::from_utf8_lossy(&b));
    let (st, _, b) = raw_unix(&unix, &signed_head("localhost", "GET", "via-unix", 0, &key));
    assert_eq!((st, &b[..]), (200, &b"uds"[..]));
    // Signed with the account key: the Host and path reached the host unchanged.
    let body = "hello";
    let (st, head, b) = raw(
        &gw.addr,
        &(signed_head(&gw.addr, "PUT", "signed", body.len(), &key) + body),
    );
    assert_eq!(st, 201, "{head}\n{}", String::from_utf8_lossy(&b));
    let (st, _, b) = raw(&gw.addr, &signed_head(&gw.addr, "GET", "signed", 0, &key));
    assert_eq!((st, &b[..]), (200, body.as_bytes()));
    // Signed for another key: refused by the host (403), nothing written.
    let other = [7u8; 64];
    let (st, head, b) = raw(
        &gw.addr,
        &(signed_head(&gw.addr, "PUT", "forged", body.len(), &other) + body),
    );
    assert_eq!(st, 403, "{head}\n{}", String::from_utf8_lossy(&b));
    assert_eq!(
        header(&head, "x-ms-error-code"),
        Some("AuthenticationFailed")
    );
    let (st, _, _) = raw(&gw.addr, &signed_head(&gw.addr, "GET", "forged", 0, &key));
    assert_eq!(st, 404, "the forged PUT must not have written anything");
    let (st, head, _) = raw(&gw.addr, &signed_head(&gw.addr, "GET", "signed", 0, &other));
    assert_eq!(st, 403, "{head}");
    // A valid signature for another path does not carry over (the path is not rewritten).
    let req = signed_head(&gw.addr, "GET", "signed", 0, &key).replacen(
        "/test/signed ",
        "/test/other ",
        1,
    );
    assert_eq!(raw(&gw.addr, &req).0, 403);
    // object_store with the wrong key fails; with the right key it works.
    rt().block_on(async {
        let bad = store(&gw.url, &base64_of(&other));
        let e = bad
            .put(&Path::from("x"), PutPayload::from_static(b"x"))
            .await
            .expect_err("a foreign key must be refused");
        assert!(e.to_string().contains("403"), "{e}");
        let good = store(&gw.url, EMULATOR_KEY);
        good.put(&Path::from("x"), PutPayload::from_static(b"x"))
            .await
            .expect("the account key is accepted");
    });
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn limits_and_an_unreachable_daemon_are_azure_style_errors() {
    let (dir, _s, gw) = stack_and_gateway(&[], &["--max-body", "1048576"]);
    let key = emulator_key();
    // 2 MiB announced, none sent: refused at once, before any of the body is read.
    let t = Instant::now();
    let (st, head, b) = raw(
        &gw.addr,
        &signed_head(&gw.addr, "PUT", "big", 2 << 20, &key),
    );
    let text = String::from_utf8_lossy(&b);
    assert_eq!(st, 413, "{head}\n{text}");
    assert_eq!(
        header(&head, "x-ms-error-code"),
        Some("RequestBodyTooLarge")
    );
    assert!(text.contains("<Code>RequestBodyTooLarge</Code>"), "{text}");
    assert!(text.contains("1048576"), "the limit is named: {text}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // A gateway whose daemon is not there: 503 with an Azure-style body, for HEAD too.
    let missing = dir.path().join("nobody.sock");
    let dir2 = scratch();
    let gw2 = Gateway::start(dir2.path(), &missing, &[]);
    let (st, head, b) = raw(&gw2.addr, &signed_head(&gw2.addr, "GET", "x", 0, &key));
    let text = String::from_utf8_lossy(&b);
    assert_eq!(st, 503, "{head}\n{text}");
    assert_eq!(header(&head, "x-ms-error-code"), Some("ServerBusy"));
    assert!(
        text.contains("<Code>ServerBusy</Code>") && text.contains("nobody.sock"),
        "{text}"
    );
    let (st, head, b) = raw(&gw2.addr, &signed_head(&gw2.addr, "HEAD", "x", 0, &key));
    assert_eq!((st, b.len()), (503, 0), "{head}");
    assert_eq!(gw2.metric("blobring_gateway_daemon_errors_total"), 2);
    // Logged once per error, with its cause.
    let log = Gateway::log(dir2.path());
    assert_eq!(log.matches("blobring gateway error").count(), 2, "{log}");
    assert!(log.contains("nobody.sock"), "{log}");
}

#[test]
fn daemon_killed_mid_request_is_a_clean_503_and_the_gateway_serves_after_it_returns() {
    // Every request spends 1.5 s in the host, so the kill lands while one is in flight.
    let (dir, mut s, gw) = stack_and_gateway(&["--fault-latency-ms", "1500"], &[]);
    let key = emulator_key();
    let body = vec![b'z'; 1 << 20];
    let mut put = signed_head(&gw.addr, "PUT", "k", body.len(), &key).into_bytes();
    put.extend_from_slice(&body);
    let addr = gw.addr.clone();
    let inflight = std::thread::spawn(move || {
        let t = Instant::now();
        let r = raw(&addr, std::str::from_utf8(&put).unwrap());
        (r, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    s.daemon.kill();
    let ((st, head, b), took) = inflight.join().unwrap();
    let text = String::from_utf8_lossy(&b);
    assert_eq!(st, 503, "{head}\n{text}");
    assert_eq!(header(&head, "x-ms-error-code"), Some("ServerBusy"));
    assert!(took < Duration::from_secs(10), "the error took {took:?}");
    // While the daemon is away: 503 at once.
    let (st, _, _) = raw(&gw.addr, &signed_head(&gw.addr, "GET", "k", 0, &key));
    assert_eq!(st, 503);
    // The daemon returns: the same gateway process serves again.
    let _ = std::fs::remove_file(&s.daemon.socket);
    let _ = std::fs::remove_file(&s.daemon.ctl);
    s.restart_daemon(DAEMON, dir.path(), &["--arena-size", ARENA]);
    let (st, head, b) = raw(
        &gw.addr,
        &(signed_head(&gw.addr, "PUT", "k2", 5, &key) + "again"),
    );
    assert_eq!(st, 201, "{head}\n{}", String::from_utf8_lossy(&b));
    let (st, _, b) = raw(&gw.addr, &signed_head(&gw.addr, "GET", "k2", 0, &key));
    assert_eq!((st, &b[..]), (200, &b"again"[..]));
    assert!(gw.metric("blobring_gateway_daemon_errors_total") >= 2);
}

#[test]
fn clients_vanishing_mid_body_leak_nothing_and_slow_clients_block_no_one() {
    let (_dir, s, gw) = stack_and_gateway(&[], &["--idle-timeout-secs", "2"]);
    let key = emulator_key();
    let pid = gw.pid();
    let cycle = |n: usize| {
        let head = signed_head(&gw.addr, "PUT", "gone", 1 << 20, &key);
        let chunk = vec![b'q'; 64 << 10];
        for _ in 0..n {
            let mut c = TcpStream::connect(&gw.addr).unwrap();
            c.write_all(head.as_bytes()).unwrap();
            c.write_all(&chunk).unwrap();
            drop(c); // gone mid-body
        }
    };
    let settle = || {
        let t = Instant::now();
        let deadline = t + Duration::from_secs(60);
        loop {
            let open = gw.metric("blobring_gateway_connections_open");
            if open == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{open} connections still open after 60 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("connections closed {:?} after the clients", t.elapsed());
        // Let the runtime finish dropping what the closed connections held.
        std::thread::sleep(Duration::from_millis(200));
    };
    // Warm up (the SDK's connection, runtime threads, allocator pools), then measure. RSS
    // here is RssAnon, the gateway's private memory: the arena is shared memory whose touched
    // pages vary with where buffers land, not with leaks.
    // The allocator keeps what the busiest moment needed (reached within the first 1,000
    // cycles and flat after); a leak would grow with every cycle.
    cycle(1000);
    settle();
    let (fds0, rss0) = (fd_count(pid), proc_status_kib(pid, "RssAnon"));
    // 1,000 concurrent first requests made one daemon session, not one each.
    let st = s.daemon.stats();
    assert_eq!(
        st["daemon"]["clients"], 1,
        "daemon sessions: {}",
        st["daemon"]
    );
    cycle(1000);
    settle();
    let (fds1, rss1) = (fd_count(pid), proc_status_kib(pid, "RssAnon"));
    eprintln!(
        "gateway after 1000 vanished clients: fds {fds0} -> {fds1}, RssAnon {rss0} -> {rss1} KiB"
    );
    assert_eq!(fds1, fds0, "file descriptors leaked");
    assert!(
        // A leaked request would keep at least its 64 KiB read buffer: 1,000 of them, 64 MiB.
        rss1 <= rss0 + 8 * 1024,
        "private RSS grew from {rss0} KiB to {rss1} KiB over 1000 vanished clients"
    );
    // It still serves, and the arena buffers came back (a 30 MiB body fits again and again).
    let big = vec![b'b'; 30 << 20];
    for i in 0..3 {
        let mut req =
            signed_head(&gw.addr, "PUT", &format!("big{i}"), big.len(), &key).into_bytes();
        req.extend_from_slice(&big);
        let mut c = TcpStream::connect(&gw.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(&req).unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        assert!(
            out.starts_with(b"HTTP/1.1 201"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    // Slow clients: 16 connections trickle a body (and 16 never finish their head); a fast
    // client's 20 requests are not held up by them.
    let mut slow = Vec::new();
    for i in 0..16 {
        let mut c = TcpStream::connect(&gw.addr).unwrap();
        c.write_all(signed_head(&gw.addr, "PUT", &format!("slow{i}"), 1000, &key).as_bytes())
            .unwrap();
        c.write_all(b"x").unwrap();
        slow.push(c);
        let mut h = TcpStream::connect(&gw.addr).unwrap();
        h.write_all(b"GET /devstoreaccount1/test/x HTTP/1.1\r\nhost: a\r\n")
            .unwrap();
        slow.push(h);
    }
    let t = Instant::now();
    for _ in 0..20 {
        let (st, _, b) = raw(&gw.addr, &signed_head(&gw.addr, "GET", "big0", 0, &key));
        assert_eq!((st, b.len()), (200, 30 << 20));
    }
    let fast = t.elapsed();
    assert!(
        fast < Duration::from_secs(20),
        "20 GETs took {fast:?} beside slow clients"
    );
    // The idle deadline cuts the slow ones off: 408 for the body, closed for the head.
    for c in &mut slow {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let mut out = Vec::new();
    let _ = slow[0].read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("RequestTimeout"), "{text}");
    let mut out = Vec::new();
    let _ = slow[1].read_to_end(&mut out); // returns once the gateway closes it
    drop(slow);
    settle();
    assert_eq!(
        fd_count(pid),
        fds0,
        "file descriptors leaked by slow clients"
    );
}

/// The Python venv ./scripts/test.sh fills: `$BLOBRING_VENV`, else `target/venv`. Panics with
/// what to do when it is missing.
/// A GET whose answer is larger than one blobring request — no range, or a signed range over
/// the limit — is carried in body windows and answered exactly as the host's REST front end
/// answers the same GET in one piece: status, the headers that matter, every byte. A blob
/// overwritten while its answer streams cuts the answer short (a prefix of the old version,
/// never a mix), and the gateway counts and logs it.
#[test]
fn gets_larger_than_one_request_stream_in_windows_exactly_like_a_single_get() {
    let (dir, s, gw) = stack_and_gateway(&["--http", "127.0.0.1:0"], &[]);
    let host_url = s.http_url.clone().expect("the host's REST front end");
    let host_addr = host_url.trim_start_matches("http://").to_owned();
    let key = emulator_key();
    let total = (80 << 20) + 12_345;
    let v1 = blobring_tests::XorShift::new(18).bytes(total);
    let direct = store(&host_url, EMULATOR_KEY);
    rt().block_on(direct.put(&Path::from("big"), PutPayload::from(v1.clone())))
        .expect("put the blob through the host's REST front end");
    let ranged = [("x-ms-range", "bytes=1000-50000999")];
    for (what, extra) in [("whole", &[][..]), ("ranged", &ranged[..])] {
        let (st_gw, head_gw, body_gw) = raw(
            &gw.addr,
            &signed_head_with(&gw.addr, "GET", "big", 0, &key, extra),
        );
        let (st_h, head_h, body_h) = raw(
            &host_addr,
            &signed_head_with(&host_addr, "GET", "big", 0, &key, extra),
        );
        assert_eq!(st_h, if extra.is_empty() { 200 } else { 206 }, "{head_h}");
        assert_eq!(st_gw, st_h, "{what}: {head_gw}");
        for h in [
            "content-length",
            "content-range",
            "etag",
            "last-modified",
            "content-md5",
            "x-ms-blob-content-md5",
            "content-type",
            "x-ms-blob-type",
            "accept-ranges",
        ] {
            assert_eq!(
                header(&head_gw, h),
                header(&head_h, h),
                "{what}: {h}\n{head_gw}"
            );
        }
        assert_eq!(
            header(&head_gw, "x-blobring-body-window"),
            None,
            "{head_gw}"
        );
        assert_eq!(body_gw.len(), body_h.len(), "{what}");
        assert!(body_gw == body_h, "{what}: the bodies differ");
    }
    let whole = signed_head(&gw.addr, "GET", "big", 0, &key);
    assert!(
        raw(&gw.addr, &whole).2 == v1,
        "a whole GET differs from what was put"
    );
    assert_eq!(gw.metric("blobring_gateway_windowed_gets_total"), 3);
    // 80 MiB: one window of the request limit (32 MiB less 64 KiB), the rest in 8 MiB ones.
    let limit = blobring::MAX_REQUEST_DATA as usize;
    let extra_whole = (total - limit).div_ceil(8 << 20) as u64;
    assert_eq!(
        gw.metric("blobring_gateway_extra_windows_total"),
        2 * extra_whole + (50_000_000 - limit).div_ceil(8 << 20) as u64
    );
    assert_eq!(gw.metric("blobring_gateway_aborted_bodies_total"), 0);
    // Overwritten mid-answer: the client reads the head and a little, the blob changes, the
    // client reads on. It gets a prefix of the old version and a cut-off connection.
    let mut c = TcpStream::connect(&gw.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(signed_head(&gw.addr, "GET", "big", 0, &key).as_bytes())
        .unwrap();
    let mut first = vec![0u8; 1 << 20];
    c.read_exact(&mut first).unwrap();
    rt().block_on(direct.put(&Path::from("big"), PutPayload::from(vec![7u8; 4096])))
        .expect("overwrite the blob");
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest); // ends with EOF or a reset
    first.extend_from_slice(&rest);
    let (st, h, body) = parse_answer(first);
    assert_eq!(st, 200, "{h}");
    assert_eq!(header(&h, "content-length"), Some(&*total.to_string()));
    assert!(
        body.len() >= limit && body.len() < total,
        "{} bytes of a {total} byte answer whose blob changed after the first window",
        body.len()
    );
    assert!(
        body == v1[..body.len()],
        "not a prefix of the version the answer began with"
    );
    assert_eq!(gw.metric("blobring_gateway_aborted_bodies_total"), 1);
    let log = Gateway::log(dir.path());
    assert!(log.contains("a body window failed"), "{log}");
}

/// One request with a body on a new connection: `head` (saying `connection: close`), then
/// `body`; status, head and body of the answer.
fn raw_with_body(addr: &str, head: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect to the gateway");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    // A refusal may come (and the connection close) before the whole body is sent.
    let _ = s.write_all(body);
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    parse_answer(all)
}

/// A single Put Blob larger than one blobring request is carried in body parts and committed
/// whole by the host: the same blob as the same Put Blob made directly to the host's REST
/// front end; refused by its first part when signed with another key (nothing created); a
/// Content-MD5 that is not the body's refused at the end (the earlier version stays).
#[test]
fn a_put_blob_larger_than_one_request_goes_in_parts_and_commits_whole() {
    let (_dir, s, gw) = stack_and_gateway(&["--http", "127.0.0.1:0"], &[]);
    use md5::Digest as _;
    let key = emulator_key();
    let data = blobring_tests::XorShift::new(19).bytes((70 << 20) + 999);
    let md5 = base64_of(&md5::Md5::digest(&data));
    let md5h = [("content-md5", md5.as_str())];
    // `send`: the body bytes written (a refused upload is answered after its first part).
    let put = |blob: &str, extra: &[(&str, &str)], key: &[u8], send: usize| {
        let head = signed_head_with(&gw.addr, "PUT", blob, data.len(), key, extra);
        raw_with_body(&gw.addr, &head, &data[..send])
    };
    let (st, head, b) = put("parts", &md5h, &key, data.len());
    assert_eq!(st, 201, "{head}\n{}", String::from_utf8_lossy(&b));
    assert_eq!(header(&head, "content-md5"), Some(md5.as_str()));
    assert_eq!(gw.metric("blobring_gateway_put_in_parts_total"), 1);
    let host = s.http_url.clone().unwrap();
    let host_addr = host.trim_start_matches("http://");
    let (st, h, got) = raw(host_addr, &signed_head(host_addr, "GET", "parts", 0, &key));
    assert_eq!(st, 200, "{h}");
    assert!(
        got == data,
        "the blob put in parts differs from the body sent"
    );
    assert_eq!(header(&h, "content-md5"), Some(md5.as_str()));
    // Another key: the host refuses the first part; nothing is created.
    let first_part = blobring::MAX_REQUEST_DATA as usize;
    let (st, head, _) = put("foreign", &[], &[7u8; 64], first_part);
    assert_eq!(st, 403, "{head}");
    let (st, _, _) = raw(
        host_addr,
        &signed_head(host_addr, "GET", "foreign", 0, &key),
    );
    assert_eq!(st, 404);
    // A Content-MD5 that is not this body's: 400 once all parts are in; "parts" unchanged.
    let wrong = [("content-md5", "AAAAAAAAAAAAAAAAAAAAAA==")];
    let (st, head, _) = put("parts", &wrong, &key, data.len());
    assert_eq!(st, 400, "{head}");
    let (_, _, got) = raw(host_addr, &signed_head(host_addr, "GET", "parts", 0, &key));
    assert!(got == data, "a refused Put Blob in parts changed the blob");
}

fn venv_python() -> std::path::PathBuf {
    let venv = std::env::var_os("BLOBRING_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let bin = blobring_tests::sibling_bin("x");
            bin.parent()
                .and_then(|p| p.parent())
                .expect("target dir")
                .join("venv")
        });
    let py = venv.join("bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import azure.storage.blob, pyarrow"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "no Python venv with azure-storage-blob and pyarrow at {}: run ./scripts/test.sh (it \
         creates it), or python3.11 -m venv {0} && {0}/bin/pip install azure-storage-blob \
         pyarrow pytest, or set BLOBRING_VENV",
        venv.display()
    );
    py
}

#[test]
fn azure_storage_blob_and_pyarrow_through_the_gateway_match_the_host_rest_front_end() {
    let py = venv_python();
    let dir = scratch();
    let s = stack(dir.path(), &["--http", "127.0.0.1:0"]);
    let direct = s
        .http_url
        .clone()
        .expect("host REST url")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let gw = Gateway::start(dir.path(), &s.daemon.socket, &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/gateway_compare.py");
    let out = std::fs::File::create(dir.path().join("python.out")).unwrap();
    let mut child = Reaped(
        Command::new(py)
            .arg(script)
            .arg(&gw.addr)
            .arg(&direct)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn python"),
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(dir.path().join("python.out")).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("the Python scenario hung (300 s):\n{text}"));
    assert!(
        status.success(),
        "azure-storage-blob/pyarrow through the gateway differ from the host's REST front end \
         ({status}):\n{text}\ngateway log:\n{}",
        Gateway::log(dir.path())
    );
    assert!(text.contains(" 0 differ"), "{text}");
    assert!(text.contains("pyarrow: 300000 rows"), "{text}");
    // The gateway side really went through the gateway (and blobring).
    assert!(gw.metric("blobring_gateway_requests_total{op=\"put_block\"}") >= 18);
    assert!(gw.metric("blobring_gateway_requests_total{op=\"get_blob\"}") >= 20);
    assert!(gw.metric("blobring_gateway_request_bytes_total{op=\"put_block\"}") >= 70 << 20);
    // The SDK's default first GET (32 MiB) of the 70 and 40 MiB blobs went in body windows.
    assert!(gw.metric("blobring_gateway_windowed_gets_total") >= 2);
    assert_eq!(gw.metric("blobring_gateway_aborted_bodies_total"), 0);
}
