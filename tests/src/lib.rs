#![forbid(unsafe_code)]
//! Cross-process integration tests for blobring: real daemon, real host, real clients.
//! The tests live in `tests/tests/`; this library holds shared fixtures:
//! - [`Daemon`]: a `blobringd` process (the tests crate's copy of the binary), killed on drop;
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

use blobring::{Connection, Cqe, OP_BLOB, Sqe};
use blobring_abi::vmbus::AzBlobVspResponse;
use blobring_abi::{FromZeros, SqeBuffer, SqeFields};
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

/// A running daemon process; SIGKILLed and reaped on drop.
pub struct Daemon {
    /// The process.
    pub child: Child,
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
        let socket = dir.join("d.sock");
        let ctl = dir.join("d.ctl");
        let host = dir.join("host.sock");
        let child = Command::new(bin)
            .arg("--socket")
            .arg(&socket)
            .arg("--ctl-socket")
            .arg(&ctl)
            .arg("--host-socket")
            .arg(&host)
            .args(["--workers", "2", "--no-pin"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn blobringd");
        let d = Daemon { child, socket, ctl };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&d.ctl).is_err() {
            assert!(Instant::now() < deadline, "daemon did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }

    /// The ctl socket's JSON document.
    pub fn stats(&self) -> serde_json::Value {
        use std::io::Read;
        let mut s = std::os::unix::net::UnixStream::connect(&self.ctl).expect("ctl connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).expect("ctl read");
        serde_json::from_str(&text).expect("ctl json")
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

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, sig).expect("kill");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
        opcode: OP_BLOB,
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
            let answer = (|| {
                let rq = mem
                    .translate(
                        &req.pfns,
                        req.request.start,
                        req.request.end - req.request.start,
                    )
                    .ok()?;
                let rs = mem
                    .translate(
                        &req.pfns,
                        req.response.start,
                        req.response.end - req.response.start,
                    )
                    .ok()?;
                let mut head = vec![0u8; rq.len() as usize];
                rq.read_at(0, &mut head).ok()?;
                let mut a = b"OK:".to_vec();
                a.extend_from_slice(&head);
                a.truncate(rs.len() as usize);
                rs.write_at(0, &a).ok()?;
                let mut length = 0;
                if req.vsp.data_buffer_valid == 0 && req.data.end > req.data.start {
                    let d = mem
                        .translate(&req.pfns, req.data.start, req.data.end - req.data.start)
                        .ok()?;
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

/// The real `blobring-host` binary: `$BLOBRING_HOST_BIN`, else `blobring-host` in the Cargo
/// target directory of the running test (`cargo test --workspace` builds it). Panics with what
/// to do when it is missing.
pub fn host_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BLOBRING_HOST_BIN") {
        return PathBuf::from(p);
    }
    let p = sibling_bin("blobring-host");
    assert!(
        p.exists(),
        "{} not found: build it first (cargo build -p blobring-host, or cargo test --workspace) \
         or set BLOBRING_HOST_BIN",
        p.display()
    );
    p
}

/// A real `blobring-host --socket DIR/host.sock --store fs:DIR/store` process (SIGKILLed on
/// drop), plus a daemon connected to it.
pub struct HostStack {
    /// The host process.
    pub host: Reaped,
    /// The daemon.
    pub daemon: Daemon,
    /// The store directory.
    pub store: PathBuf,
    /// `http://127.0.0.1:PORT` when the host was started with `--http`.
    pub http_url: Option<String>,
}

impl HostStack {
    /// Starts the host (with `host_args` extra) and a daemon (`daemon_args` extra) in `dir`
    /// and waits (≤ 20 s) until the daemon has connected to the host.
    pub fn start(daemon_bin: &str, dir: &Path, host_args: &[&str], daemon_args: &[&str]) -> Self {
        let store = dir.join("store");
        std::fs::create_dir_all(&store).expect("store dir");
        let (host, http_url) = spawn_host(dir, &store, host_args);
        let daemon = Daemon::start(daemon_bin, dir, daemon_args);
        daemon.wait_stats(
            Duration::from_secs(20),
            "daemon connected to the host",
            |s| s["daemon"]["host_connected"] == true,
        );
        HostStack {
            host,
            daemon,
            store,
            http_url,
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
        let _ = self.host.0.kill();
        let _ = self.host.0.wait();
        let _ = std::fs::remove_file(dir.join("host.sock"));
        self.host = spawn_host(dir, &self.store, host_args).0;
    }

    /// `kill -9` of the daemon (if still running), then a new daemon on the same sockets
    /// (with `daemon_args`), waiting until it accepts and has connected to the host.
    pub fn restart_daemon(&mut self, daemon_bin: &str, dir: &Path, daemon_args: &[&str]) {
        let _ = self.daemon.child.kill();
        let _ = self.daemon.child.wait();
        self.daemon = Daemon::start(daemon_bin, dir, daemon_args);
        self.daemon.wait_stats(
            Duration::from_secs(20),
            "restarted daemon connected to the host",
            |s| s["daemon"]["host_connected"] == true,
        );
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

/// Spawns `blobring-host --socket DIR/host.sock --store fs:STORE` plus `host_args` and waits
/// (≤ 20 s) for its socket; with `--http` also returns the URL it printed.
fn spawn_host(dir: &Path, store: &Path, host_args: &[&str]) -> (Reaped, Option<String>) {
    let sock = dir.join("host.sock");
    let mut child = Command::new(host_bin())
        .arg("--socket")
        .arg(&sock)
        .arg("--store")
        .arg(format!("fs:{}", store.display()))
        .args(host_args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn blobring-host");
    let mut http_url = None;
    if host_args.contains(&"--http") {
        use std::io::BufRead;
        let out = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(out).lines();
        for line in lines.by_ref() {
            let line = line.expect("host stdout");
            if let Some(u) = line.strip_prefix("listening on ") {
                http_url = Some(u.trim().to_owned());
                break;
            }
        }
        assert!(
            http_url.is_some(),
            "blobring-host printed no `listening on` line"
        );
        std::thread::spawn(move || for _ in lines {});
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "blobring-host exited ({st}) before creating {}; does it support --socket?",
                sock.display()
            );
        }
        assert!(
            Instant::now() < deadline,
            "blobring-host did not create its socket"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (Reaped(child), http_url)
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
