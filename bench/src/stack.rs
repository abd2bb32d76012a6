//! The system under test: a real `blobring-host` (fs store in a temp dir, VMBus sim socket and
//! REST front end on `127.0.0.1:0`, over HTTP and over HTTPS with a certificate generated at
//! start) and a real `blobringd` connected to it, plus, when asked, a `blobring gateway` in
//! front of the daemon. All are killed and reaped when the [`Stack`] is dropped.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The container every mode writes its blobs into.
pub const CONTAINER: &str = "bench";

/// Finds `name` (a workspace binary) next to the running executable, or in `$env` if set.
pub fn sibling_bin(name: &str, env: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!(
                "{env}={} is not a file: build {name} with `cargo build --workspace --release \
                 --bins` or point {env} at it",
                p.display()
            );
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locate the running executable")?;
    let dir = exe.parent().context("executable has no directory")?;
    // target/release/blobring-bench, or target/release/deps/<test> when run from a test.
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{name} not found next to {}: build it first with \
         `cargo build --workspace --release --bins` (or `cargo build --release -p blobring-host \
         -p blobring-daemon`), or set {env} to its path",
        exe.display()
    )
}

/// How to start the stack.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Largest client arena the daemon grants (`--arena-size`).
    pub max_arena: u64,
    /// Most concurrent clients (`--max-clients` and `--max-clients-per-uid`).
    pub max_clients: u32,
    /// Client regions on hugetlb pages (`--hugetlb`).
    pub hugetlb: bool,
    /// Also start `blobring gateway` (found next to this executable, or `$BLOBRING_BIN`).
    pub gateway: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            max_arena: 128 << 20,
            max_clients: 1024,
            hugetlb: false,
            gateway: false,
        }
    }
}

/// A running host + daemon pair.
pub struct Stack {
    host: Child,
    daemon: Child,
    /// Root of the fs store (`<tmp>/store`).
    pub store: PathBuf,
    /// Daemon client socket.
    pub socket: PathBuf,
    /// Daemon ctl socket (stats JSON).
    pub ctl: PathBuf,
    /// REST endpoint including the account: `http://127.0.0.1:PORT/devstoreaccount1`.
    pub endpoint: String,
    /// The same over TLS: `https://127.0.0.1:PORT/devstoreaccount1`.
    pub https_endpoint: String,
    /// The host's generated TLS certificate (PEM).
    pub cert: PathBuf,
    /// The gateway and its endpoint (with the account), when started.
    gateway: Option<(Child, String)>,
    daemon_log: PathBuf,
    /// `blobring mount` of [`CONTAINER`] (`blobring-bench mount`): the process and where.
    mount: Option<(Child, PathBuf)>,
    // Last: removed after the processes are gone.
    _dir: tempfile::TempDir,
}

impl Stack {
    /// Starts `blobring-host` and `blobringd` and waits (≤ 20 s) until the daemon is connected
    /// to the host.
    pub fn start(opts: &StackOptions) -> Result<Stack> {
        let host_bin = sibling_bin("blobring-host", "BLOBRING_HOST_BIN")?;
        let daemon_bin = sibling_bin("blobringd", "BLOBRINGD_BIN")?;
        let dir = tempfile::Builder::new()
            .prefix("brbench")
            .tempdir_in("/tmp")
            .context("create a temp dir under /tmp")?;
        let store = dir.path().join("store");
        std::fs::create_dir_all(&store).context("create the store dir")?;
        let host_sock = dir.path().join("host.sock");
        let mut host = Command::new(&host_bin)
            .arg("--socket")
            .arg(&host_sock)
            .arg("--store")
            .arg(format!("fs:{}", store.display()))
            .args(["--http", "127.0.0.1:0", "--https", "127.0.0.1:0"])
            .arg("--tls-cert-out")
            .arg(dir.path().join("host.pem"))
            .args(["--container", CONTAINER])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {}", host_bin.display()))?;
        // Read the `listening on` lines and the certificate's; keep draining stdout afterwards.
        let out = host.stdout.take().context("host stdout")?;
        let mut lines = BufReader::new(out).lines();
        let (mut url, mut https, mut cert) = (None, None, None);
        for line in lines.by_ref() {
            let line = line.context("read the host's stdout")?;
            if let Some(u) = line.strip_prefix("listening on http://") {
                url = Some(format!("http://{}", u.trim()));
            } else if let Some(u) = line.strip_prefix("listening on https://") {
                https = Some(format!("https://{}", u.trim()));
            } else if let Some(p) = line.strip_prefix("tls certificate ") {
                cert = Some(PathBuf::from(p.trim()));
            }
            if url.is_some() && https.is_some() && cert.is_some() {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let (Some(url), Some(https), Some(cert)) = (url, https, cert) else {
            let _ = host.kill();
            let st = host.wait();
            bail!(
                "blobring-host exited ({st:?}) without printing its `listening on` addresses and \
                 certificate (is it older than --https?)"
            );
        };
        let daemon_log = dir.path().join("daemon.log");
        let log = std::fs::File::create(&daemon_log).context("create the daemon log")?;
        let socket = dir.path().join("d.sock");
        let ctl = dir.path().join("d.ctl");
        let max = opts.max_clients.to_string();
        let daemon = Command::new(&daemon_bin)
            .arg("--socket")
            .arg(&socket)
            .arg("--ctl-socket")
            .arg(&ctl)
            .arg("--host-socket")
            .arg(&host_sock)
            .args(["--transport", "sim", "--no-pin"])
            .args(["--arena-size", &opts.max_arena.to_string()])
            .args(["--max-clients", &max, "--max-clients-per-uid", &max])
            .args(opts.hugetlb.then_some("--hugetlb"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        let daemon = match daemon {
            Ok(d) => d,
            Err(e) => {
                let _ = host.kill();
                let _ = host.wait();
                return Err(e).with_context(|| format!("start {}", daemon_bin.display()));
            }
        };
        let stack = Stack {
            host,
            daemon,
            store,
            socket,
            ctl,
            endpoint: format!("{url}/{}", blobring::blob::EMULATOR_ACCOUNT),
            https_endpoint: format!("{https}/{}", blobring::blob::EMULATOR_ACCOUNT),
            cert,
            gateway: None,
            daemon_log,
            mount: None,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = stack.stats()
                && s["daemon"]["host_connected"] == true
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "blobringd did not connect to blobring-host within 20 s; its log: {}",
                    std::fs::read_to_string(&stack.daemon_log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut stack = stack;
        if opts.gateway {
            stack.gateway = Some(start_gateway(&stack.socket, opts.max_arena)?);
        }
        Ok(stack)
    }

    /// The daemon's pid.
    pub fn daemon_pid(&self) -> u32 {
        self.daemon.id()
    }

    /// The host's pid.
    pub fn host_pid(&self) -> u32 {
        self.host.id()
    }

    /// The daemon's ctl-socket JSON document.
    pub fn stats(&self) -> Result<serde_json::Value> {
        let mut s = UnixStream::connect(&self.ctl).context("connect the daemon's ctl socket")?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut text = String::new();
        s.read_to_string(&mut text).context("read the ctl socket")?;
        serde_json::from_str(&text).context("parse the ctl JSON")
    }

    /// The page kind of the client regions as the daemon logged it (`pages=Small|Thp|Huge2M`
    /// on "client connected"), once a client has connected.
    pub fn region_pages(&self) -> Option<String> {
        let log = std::fs::read_to_string(&self.daemon_log).ok()?;
        log.lines()
            .filter(|l| l.contains("client connected"))
            .find_map(|l| {
                let l = strip_ansi(l);
                let at = l.find("pages=")? + "pages=".len();
                l[at..].split_whitespace().next().map(str::to_owned)
            })
    }

    /// Where workers connect.
    pub fn endpoint(&self) -> crate::worker::Endpoint {
        crate::worker::Endpoint {
            socket: self.socket.clone(),
            http: self.endpoint.clone(),
            https: self.https_endpoint.clone(),
            cert: self.cert.clone(),
            gateway: self.gateway.as_ref().map(|g| g.1.clone()),
            mount: self.mount.as_ref().map(|m| m.1.clone()),
        }
    }

    /// Mounts [`CONTAINER`] with `blobring mount --foreground` (the `blobring` binary next to
    /// this one, or `$BLOBRING_BIN`) in the stack's directory, and waits (≤ 30 s) until it is
    /// ready. It is unmounted and killed when the stack is dropped.
    pub fn mount_container(&mut self) -> Result<PathBuf> {
        let bin = sibling_bin("blobring", "BLOBRING_BIN")?;
        let mp = self._dir.path().join("mnt");
        std::fs::create_dir_all(&mp).context("create the mount point")?;
        let log = self._dir.path().join("mount.log");
        let mut child = Command::new(&bin)
            .arg("mount")
            .arg(format!("blob://{CONTAINER}"))
            .arg(&mp)
            .arg("--foreground")
            .arg("--socket")
            .arg(&self.socket)
            .env("BLOBRING_MOUNT_NOTIFY_READY", "1")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).context("create the mount's log")?)
            .spawn()
            .with_context(|| format!("start {} mount", bin.display()))?;
        let out = child.stdout.take().context("the mount's stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        self.mount = Some((child, mp.clone()));
        if line.trim() != "ready" {
            bail!(
                "blobring mount did not become ready: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok(mp)
    }

    /// The mount process's pid, if the container is mounted.
    pub fn mount_pid(&self) -> Option<u32> {
        self.mount.as_ref().map(|m| m.0.id())
    }

    /// CPU seconds (utime + stime) of the daemon and the host so far.
    pub fn cpu(&self) -> Result<(f64, f64)> {
        Ok((
            crate::machine::proc_cpu_seconds(self.daemon_pid())?,
            crate::machine::proc_cpu_seconds(self.host_pid())?,
        ))
    }

    /// CPU seconds of the gateway so far (0 without one).
    pub fn gateway_cpu(&self) -> Result<f64> {
        match &self.gateway {
            Some((g, _)) => crate::machine::proc_cpu_seconds(g.id()),
            None => Ok(0.0),
        }
    }

    /// Directory of the fs store (for the `pread` path).
    pub fn store_dir(&self) -> &Path {
        &self.store
    }
}

/// Starts `blobring gateway` on a free loopback port for the daemon at `socket` and returns
/// it with its endpoint (account included) once it prints `listening on` (≤ 20 s). It asks for
/// an `arena`-byte arena, so each of its requests can carry up to half of it.
fn start_gateway(socket: &Path, arena: u64) -> Result<(Child, String)> {
    let bin = sibling_bin("blobring", "BLOBRING_BIN")?;
    let mut child = Command::new(&bin)
        .args(["gateway", "--listen", "127.0.0.1:0", "--socket"])
        .arg(socket)
        .args(["--arena-mib", &(arena >> 20).to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {} gateway", bin.display()))?;
    let out = child.stdout.take().context("gateway stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                if let Some(u) = l.strip_prefix("blobring gateway: listening on http://") {
                    let url = format!("http://{}/{}", u.trim(), blobring::blob::EMULATOR_ACCOUNT);
                    return Ok((child, url));
                }
            }
            Err(_) => {
                let _ = child.kill();
                let st = child.wait();
                bail!("blobring gateway ({st:?}) printed no `listening on` line within 20 s");
            }
        }
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some((mut c, mp)) = self.mount.take() {
            // SIGTERM: the mount unmounts itself; a lazy unmount in case it cannot.
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&mp)
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
        let gateway = self.gateway.as_mut().map(|g| &mut g.0);
        for c in gateway
            .into_iter()
            .chain([&mut self.daemon, &mut self.host])
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Page-kind name as a page size in bytes (`Small` → 4096; THP and hugetlb → 2 MiB).
pub fn page_size_of(kind: &str) -> u64 {
    match kind {
        "Thp" | "Huge2M" => 2 << 20,
        _ => 4096,
    }
}
