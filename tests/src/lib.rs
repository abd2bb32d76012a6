#![forbid(unsafe_code)]
//! Cross-process integration tests for blobring: real daemon, real host, real clients.
//! The tests live in `tests/tests/`; this library holds shared fixtures:
//! - [`launcher`]: the tests' settings of the one stack launcher, `blobring_ctl::stack`;
//! - [`Daemon`]: a `blobringd` process (the tests crate's copy of the binary), killed on drop;
//! - [`HostStack`]: a real `blobring-host` plus a [`Daemon`] connected to it;
//! - [`TestHost`]: an emulated host running in the test process on the vmbus `sim` host
//!   helpers (until `blobring-host --socket` exists), answering blob requests:
//!   response head = `"OK:"` + request head; data buffers of reads filled with `0xab`;
//!   requests whose head starts with `HANG` are held until [`TestHost::release_held`];
//!   requests whose head starts with `BADLEN` are answered with a response length larger than
//!   their buffer;
//! - SQE helpers.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blobring::{Connection, Cqe, Opcode, Sqe};
use blobring_abi::vmbus::AzBlobVspResponse;
use blobring_abi::{FromZeros, SqeBuffer, SqeFields};
use blobring_ctl::stack::{self, StackBuilder};
use blobring_vmbus::blob::{encode_blob_completion, parse_blob_request};
use blobring_vmbus::channel::Channel;
use blobring_vmbus::packet::PacketKind;
use blobring_vmbus::sim::host::{
    BusListener, HostConfig, HostEvent, HostSession, SharedGuestMemory,
};
use blobring_vmbus::sim::{SimChannel, wait_readable};

/// A scratch directory with short paths for sockets.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("br")
        .tempdir_in("/tmp")
        .expect("tempdir")
}

/// A scratch directory in `/dev/shm`: a store there is in memory.
pub fn shm_scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("brshm")
        .tempdir_in("/dev/shm")
        .expect("tempdir in /dev/shm")
}

/// The launcher of the tests' stacks in `dir` (sockets `host.sock`, `d.sock`, `d.ctl`, logs
/// `host.log`, `blobringd.log`, store `fs:DIR/store`): the real `blobring-host`
/// (`$BLOBRING_HOST_BIN`, else the Cargo target directory of the running test: build it
/// first), `RUST_LOG=warn`, readiness bounded by 20 s.
pub fn launcher(dir: &Path) -> StackBuilder {
    StackBuilder::new(dir)
        .env("RUST_LOG", "warn")
        .timeout(Duration::from_secs(20))
}

/// A running daemon process; SIGKILLed and reaped on drop.
pub struct Daemon {
    /// The process and its sockets.
    pub inner: stack::Daemon,
    /// Client socket.
    pub socket: PathBuf,
    /// Ctl socket.
    pub ctl: PathBuf,
}

impl Daemon {
    /// Starts the daemon with `--socket DIR/d.sock --ctl-socket DIR/d.ctl --host-socket
    /// DIR/host.sock --workers 2 --no-pin` plus `extra`, and waits (≤ 10 s) until it accepts.
    /// `bin` is `env!("CARGO_BIN_EXE_blobring-test-daemon")` (only tests can name it).
    pub fn start(bin: &str, dir: &Path, extra: &[&str]) -> Daemon {
        let inner = launcher(dir)
            .daemon_bin(bin)
            .daemon_args(["--workers", "2", "--no-pin"])
            .daemon_args(extra)
            .timeout(Duration::from_secs(10))
            .start_daemon()
            .unwrap_or_else(|e| panic!("daemon did not start: {e}"));
        let (socket, ctl) = (inner.socket.clone(), inner.ctl.clone());
        Daemon { inner, socket, ctl }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.inner.proc.pid()
    }

    /// SIGKILL (if still running) and reap.
    pub fn kill(&mut self) {
        self.inner.proc.kill();
    }

    /// Waits until it exits (after a signal).
    pub fn wait(&mut self) {
        self.inner.proc.wait();
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.inner.proc.try_wait()
    }

    /// The ctl socket's JSON document.
    pub fn stats(&self) -> serde_json::Value {
        self.inner.stats().expect("ctl socket")
    }

    /// Waits (≤ `limit`) until `f(stats)` holds.
    pub fn wait_stats(
        &self,
        limit: Duration,
        what: &str,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.stats();
            if f(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; stats: {s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (≤ 20 s) until the daemon reports `host_connected`.
    pub fn wait_host_connected(&self) {
        self.wait_stats(
            Duration::from_secs(20),
            "daemon connected to the host",
            |s| s["daemon"]["host_connected"] == true,
        );
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, sig).expect("kill");
    }
}

/// A [`TestHost`] at `DIR/host.sock` offering four channels and a [`Daemon`] (`extra` flags)
/// connected to it.
pub fn with_test_host(bin: &str, dir: &Path, extra: &[&str]) -> (TestHost, Daemon) {
    let host = TestHost::start(&dir.join("host.sock"), 4);
    let d = Daemon::start(bin, dir, extra);
    d.wait_host_connected();
    (host, d)
}

/// [`with_test_host`] (no extra daemon flags) in a fresh [`scratch`] directory, plus a
/// connection to the daemon; the directory is returned too (keep it until the end).
pub fn test_host_client(bin: &str) -> (tempfile::TempDir, TestHost, Daemon, Connection) {
    let dir = scratch();
    let (host, d) = with_test_host(bin, dir.path(), &[]);
    let c = Connection::connect(&d.socket).expect("connect");
    (dir, host, d, c)
}

/// A child process killed and reaped on drop.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reaps exactly `n` completions from queue `q`, sleeping on the queue between reaps; fails the
/// test if they have not all arrived within `limit`.
pub fn reap_n(conn: &mut Connection, q: u32, n: usize, limit: Duration) -> Vec<Cqe> {
    let mut out = Vec::new();
    let mut buf = vec![Cqe::new_zeroed(); 64];
    let deadline = Instant::now() + limit;
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} completions: {out:?}",
            out.len()
        );
        let got = conn.reap(q, &mut buf).expect("reap");
        out.extend_from_slice(&buf[..got]);
        if got == 0 {
            conn.wait(q, Some(Duration::from_millis(100)))
                .expect("wait");
        }
    }
    out
}

/// Submits one blob request (`head`, no data buffer) as `user_data` on queue `q` and reaps its
/// completion (≤ 5 s).
pub fn blob_call(conn: &mut Connection, q: u32, user_data: u64, head: &[u8]) -> Cqe {
    let sqe = blob_sqe(conn, user_data, head, 0);
    conn.submit(q, &[sqe]).expect("submit");
    reap_n(conn, q, 1, Duration::from_secs(5))[0]
}

/// A NOP SQE.
pub fn nop(user_data: u64) -> Sqe {
    Sqe::nop(user_data)
}

/// A blob SQE with a fresh request buffer holding `head`, a 256-byte response buffer and (if
/// `data_len > 0`) a data buffer, all allocated from `conn`'s arena (never freed: tests only).
pub fn blob_sqe(conn: &mut Connection, user_data: u64, head: &[u8], data_len: u32) -> Sqe {
    let rq = conn.alloc(head.len() as u64, 64).expect("alloc request");
    conn.write_buf(rq.offset, head).expect("write head");
    let rs = conn.alloc(256, 64).expect("alloc response");
    let data = if data_len > 0 {
        conn.alloc(data_len.into(), 4096)
            .expect("alloc data")
            .offset
    } else {
        0
    };
    Sqe::new(SqeFields {
        opcode: Opcode::Blob.code(),
        timeout_ms: 0,
        user_data,
        request: SqeBuffer {
            offset: rq.offset,
            len: head.len() as u32,
        },
        response: SqeBuffer {
            offset: rs.offset,
            len: 256,
        },
        data: SqeBuffer {
            offset: data,
            len: data_len,
        },
        data_valid: 0,
    })
}

/// Control of a [`TestHost`].
#[derive(Default)]
struct HostShared {
    stop: AtomicBool,
    release: AtomicBool,
    rescind: AtomicBool,
    answered: AtomicU64,
    held: AtomicU64,
    registered: AtomicU64,
    unregistered: AtomicU64,
}

/// The emulated host of the tests (one bus session at a time; accepts a new session after the
/// previous one ends, so daemon reconnection can be tested).
pub struct TestHost {
    shared: Arc<HostShared>,
    thread: Option<JoinHandle<()>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl TestHost {
    /// Listens at `path`, offering `max_channels` channels.
    pub fn start(path: &Path, max_channels: u32) -> TestHost {
        let listener = BusListener::bind(path).expect("bind host socket");
        let shared = Arc::new(HostShared::default());
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (s, e) = (shared.clone(), errors.clone());
        let thread = std::thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                if !wait_readable(listener.as_fd(), Duration::from_millis(20)).unwrap_or(false) {
                    continue;
                }
                let Ok(sock) = listener.accept() else {
                    continue;
                };
                let cfg = HostConfig {
                    max_channels,
                    ring_size: 64 * 1024,
                    ..HostConfig::default()
                };
                if let Err(err) = session(sock, cfg, &s) {
                    e.lock().unwrap().push(err);
                }
            }
        });
        TestHost {
            shared,
            thread: Some(thread),
            errors,
        }
    }

    /// Answers every held request from now on.
    pub fn release_held(&self) {
        self.shared.release.store(true, Ordering::Relaxed);
    }

    /// Rescinds the device on the current session (which then ends; the next connection gets
    /// a fresh offer).
    pub fn rescind(&self) {
        self.shared.rescind.store(true, Ordering::Relaxed);
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.shared.answered.load(Ordering::Relaxed)
    }

    /// Requests currently held.
    pub fn held(&self) -> u64 {
        self.shared.held.load(Ordering::Relaxed)
    }

    /// Waits (≤ 5 s, else fails the test) until at least `n` requests are held.
    pub fn wait_held(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.held() < n {
            assert!(
                Instant::now() < deadline,
                "the host holds {} of the {n} requests expected",
                self.held()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Guest memory regions registered and unregistered so far (all sessions).
    pub fn registrations(&self) -> (u64, u64) {
        (
            self.shared.registered.load(Ordering::Relaxed),
            self.shared.unregistered.load(Ordering::Relaxed),
        )
    }

    /// Errors the host saw (protocol violations by the daemon).
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn session(sock: std::os::fd::OwnedFd, cfg: HostConfig, s: &Arc<HostShared>) -> Result<(), String> {
    let mut session = HostSession::new(sock, cfg).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    let result = loop {
        if s.stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        if s.rescind.swap(false, Ordering::Relaxed) {
            let _ = session.rescind(1);
            break Ok(());
        }
        let ev = match session.try_next_event() {
            Ok(Some(ev)) => ev,
            Ok(None) => {
                let _ = wait_readable(session.as_fd(), Duration::from_millis(10));
                continue;
            }
            Err(e) => break Err(e.to_string()),
        };
        match ev {
            HostEvent::ChannelOpened(ch) => {
                let (mem, stop, s) = (session.memory(), stop.clone(), s.clone());
                workers.push(std::thread::spawn(move || vsp(ch, mem, stop, s)));
            }
            HostEvent::Disconnected => break Ok(()),
            HostEvent::MemoryRegistered { .. } => {
                s.registered.fetch_add(1, Ordering::Relaxed);
            }
            HostEvent::MemoryUnregistered { .. } => {
                s.unregistered.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    };
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    result
}

fn vsp(mut ch: SimChannel, memory: SharedGuestMemory, stop: Arc<AtomicBool>, s: Arc<HostShared>) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut held: Vec<(u64, AzBlobVspResponse)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut replies = Vec::new();
        loop {
            let p = match ch.recv(&mut buf) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(_) => return,
            };
            if !matches!(p.kind, PacketKind::GpaDirect(_)) {
                continue;
            }
            let Ok(req) = parse_blob_request(&p) else {
                continue;
            };
            let mem = memory.read().unwrap();
            // The guest memory of one of the request's buffers (a byte range of its pages).
            let buffer =
                |r: &std::ops::Range<u64>| mem.translate(&req.pfns, r.start, r.end - r.start).ok();
            let answer = (|| {
                let rq = buffer(&req.request)?;
                let rs = buffer(&req.response)?;
                let mut head = vec![0u8; rq.len() as usize];
                rq.read_at(0, &mut head).ok()?;
                let mut a = b"OK:".to_vec();
                a.extend_from_slice(&head);
                a.truncate(rs.len() as usize);
                rs.write_at(0, &a).ok()?;
                let mut length = 0;
                if req.vsp.data_buffer_valid == 0 && req.data.end > req.data.start {
                    let d = buffer(&req.data)?;
                    d.write_at(0, &vec![0xab; d.len() as usize]).ok()?;
                    length = d.len() as u32;
                }
                // BADLEN: claim more response bytes than the buffer holds (a lying host).
                let response_len = if head.starts_with(b"BADLEN") {
                    rs.len() as u32 + 1
                } else {
                    a.len() as u32
                };
                Some((
                    head.starts_with(b"HANG"),
                    AzBlobVspResponse {
                        length,
                        error: 0,
                        response_len,
                    },
                ))
            })();
            let (hang, resp) = answer.unwrap_or((
                false,
                AzBlobVspResponse {
                    length: 0,
                    error: 0xbad,
                    response_len: 0,
                },
            ));
            if hang && !s.release.load(Ordering::Relaxed) {
                s.held.fetch_add(1, Ordering::Relaxed);
                held.push((req.trans_id, resp));
            } else {
                replies.push((req.trans_id, resp));
            }
        }
        if s.release.load(Ordering::Relaxed) && !held.is_empty() {
            s.held.fetch_sub(held.len() as u64, Ordering::Relaxed);
            replies.append(&mut held);
        }
        if ch.release().is_err() {
            return;
        }
        for (tid, resp) in &replies {
            // Counted before sending, so a client that saw the completion sees the count.
            s.answered.fetch_add(1, Ordering::Relaxed);
            if encode_blob_completion(&mut out, *tid, resp).is_err() || ch.send(&out).is_err() {
                return;
            }
        }
        if replies.is_empty() && !ch.arm().unwrap_or(true) {
            let _ = wait_readable(ch.as_fd(), Duration::from_millis(5));
            let _ = ch.clear_wakeups();
        }
    }
}

/// A binary of this workspace's target directory: `target/<profile>/<name>`, found from the
/// running executable, which is either a test (`target/<profile>/deps/<test>`) or a binary
/// (`target/<profile>/<bin>`, e.g. `blobring-soak`). The path may not exist (not built yet).
pub fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("executable dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target dir").join(name)
    } else {
        dir.join(name)
    }
}

/// A real `blobring-host --socket DIR/host.sock --store fs:DIR/store` process plus a daemon
/// connected to it; both SIGKILLed on drop, the daemon first.
pub struct HostStack {
    /// The daemon.
    pub daemon: Daemon,
    /// The host process.
    pub host: stack::Host,
    /// The store directory.
    pub store: PathBuf,
    /// `http://127.0.0.1:PORT` when the host was started with `--http`.
    pub http_url: Option<String>,
}

impl HostStack {
    /// Starts the host (with `host_args` extra) and a daemon (`daemon_args` extra) in `dir`
    /// and waits (≤ 20 s) until the daemon has connected to the host.
    pub fn start(daemon_bin: &str, dir: &Path, host_args: &[&str], daemon_args: &[&str]) -> Self {
        let host = start_host(dir, host_args);
        let daemon = Daemon::start(daemon_bin, dir, daemon_args);
        daemon.wait_host_connected();
        HostStack {
            http_url: host.http_url.clone(),
            host,
            daemon,
            store: dir.join("store"),
        }
    }

    /// The fs store's data file of `container`/`blob`: the one its record in
    /// `containers/<container>/meta/*.json` names. Panics if there is none.
    pub fn data_file(&self, container: &str, blob: &str) -> PathBuf {
        let cdir = self.store.join("containers").join(container);
        let meta = cdir.join("meta");
        for e in std::fs::read_dir(&meta)
            .expect("read the store's meta dir")
            .flatten()
        {
            let raw = std::fs::read(e.path()).expect("read a blob record");
            let rec: serde_json::Value = serde_json::from_slice(&raw).expect("blob record JSON");
            if rec["props"]["name"] == blob {
                let file = rec["data"]
                    .as_str()
                    .expect("the record names its data file");
                return cdir.join("data").join(file);
            }
        }
        panic!("no record of {container}/{blob} in {}", meta.display());
    }

    /// Inverts byte `at` of the stored data of `container`/`blob` behind the host's back (in
    /// place: a data file the host holds open sees it too).
    pub fn corrupt_stored_byte(&self, container: &str, blob: &str, at: u64) {
        use std::os::unix::fs::FileExt;
        let path = self.data_file(container, blob);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open the data file");
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).expect("read the byte");
        f.write_all_at(&[!b[0]], at).expect("write the byte");
    }

    /// `kill -9` of the host (if still running), then a new host on the same socket and store
    /// (with `host_args`), waiting until its socket exists. The daemon reconnects by itself.
    pub fn restart_host(&mut self, dir: &Path, host_args: &[&str]) {
        self.host.proc.kill();
        self.host = start_host(dir, host_args);
    }

    /// `kill -9` of the daemon (if still running), then a new daemon on the same sockets
    /// (with `daemon_args`), waiting until it accepts and has connected to the host.
    pub fn restart_daemon(&mut self, daemon_bin: &str, dir: &Path, daemon_args: &[&str]) {
        self.daemon.kill();
        self.daemon = Daemon::start(daemon_bin, dir, daemon_args);
        self.daemon.wait_host_connected();
    }
}

/// Starts one `blobring-soak` process (`bin`: the test's `CARGO_BIN_EXE_blobring-soak`) against
/// the daemon at `socket` for `secs` seconds with workload seed `seed` and the extra `args`;
/// stdout (the JSON report) is piped for [`soak_report`], stderr goes to `stderr`.
pub fn spawn_soak(
    bin: &str,
    socket: &Path,
    secs: f64,
    seed: u64,
    args: &[&str],
    stderr: Stdio,
) -> Reaped {
    Reaped(
        Command::new(bin)
            .arg("--socket")
            .arg(socket)
            .args(["--duration", &secs.to_string()])
            .args(["--seed", &seed.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn blobring-soak"),
    )
}

/// Waits (until `limit`, else fails the test) for a `blobring-soak` process whose stdout is
/// piped to exit; returns its exit status and the JSON report it printed last (and its stderr,
/// if piped, in the failure message when there is no report).
pub fn soak_report(
    p: &mut Reaped,
    limit: Instant,
) -> (std::process::ExitStatus, serde_json::Value) {
    use std::io::Read;
    let status = loop {
        if let Some(st) = p.0.try_wait().expect("try_wait") {
            break st;
        }
        assert!(
            Instant::now() < limit,
            "blobring-soak (pid {}) did not finish in time",
            p.0.id()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut o) = p.0.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = p.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let report = serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap_or_else(|e| {
        panic!("no JSON report from blobring-soak ({e}; exit {status}): {out}\n{err}")
    });
    (status, report)
}

/// Runs the daemon `bin` (the test's `CARGO_BIN_EXE_blobring-test-daemon`) with `--socket
/// socket` and `args`, which it must refuse: fails the test if it exits successfully, else
/// returns what it wrote to stderr.
pub fn daemon_refusal(bin: &str, socket: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run the daemon");
    assert!(!out.status.success(), "the daemon accepted {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Starts `blobring-host --socket DIR/host.sock --store fs:DIR/store` plus `host_args` and
/// waits (≤ 20 s) for its socket (and, with `--http`, the URL it prints).
pub fn start_host(dir: &Path, host_args: &[&str]) -> stack::Host {
    launcher(dir)
        .host_args(host_args)
        .start_host()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts that the daemon's stats document `doc` counts none of the errors a healthy run
/// never has (invalid SQEs, timeouts, missing device, bad completions, corrupt clients).
pub fn assert_no_daemon_errors(doc: &serde_json::Value) {
    for k in [
        "invalid",
        "timed_out",
        "no_device",
        "bad_completions",
        "corrupt_clients",
    ] {
        assert_eq!(
            doc["totals"]["errors"][k], 0,
            "daemon error counter {k}: {doc}"
        );
    }
}

/// Asserts that a `blobring-soak` report `r` lost, corrupted, mislisted and overran nothing
/// and saw no unexpected error (nor any of the counters in `also`).
pub fn assert_soak_kept(r: &serde_json::Value, also: &[&str]) {
    let kept = [
        "lost_bytes",
        "corrupt_bytes",
        "list_mismatches",
        "late_calls",
        "unexpected_errors",
    ];
    for k in kept.iter().chain(also) {
        assert_eq!(r[*k], 0, "{k} must be 0: {r}");
    }
}

/// The number in kB of field `field` (e.g. `VmRSS`) of `/proc/<pid>/status`. Panics with the
/// field's name when it is missing.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} missing in /proc/{pid}/status"))
}

/// Open file descriptors of process `pid` (entries of `/proc/<pid>/fd`). Panics if the
/// directory cannot be read (another user's, or a non-dumpable process).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/fd: {e}"))
        .count()
}

/// A small xorshift64 generator for test workloads' choices (reproducible from its seed; not
/// for anything that needs real randomness).
pub struct XorShift(u64);

impl XorShift {
    /// A generator seeded from `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// `n` bytes of test content: the low byte of each next value.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}
