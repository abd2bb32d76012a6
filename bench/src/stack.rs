//! The system under test: a real `blobring-host` (fs store in a temp dir, VMBus sim socket and
//! REST front end on `127.0.0.1:0`, over HTTP and over HTTPS with a certificate generated at
//! start) and a real `blobringd` connected to it, plus, when asked, a `blobring gateway` in
//! front of the daemon, or a `blobring mount`. All are started by the one stack launcher,
//! `blobring_ctl::stack`, and killed and reaped when the [`Stack`] is dropped.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use blobring_ctl::stack::{self, Proc, StackBuilder};

/// The container every mode writes its blobs into.
pub const CONTAINER: &str = "bench";

/// Finds `name` (a workspace binary) in `$env` if set, else next to the running executable
/// (or one directory up, when run from a test), else on `PATH`.
pub fn sibling_bin(name: &str, env: &str) -> Result<PathBuf> {
    Ok(stack::find_bin(name, env)?)
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
    /// Serve from the host's in-memory store (`--store mem`) instead of the fs store.
    pub mem_store: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            max_arena: 128 << 20,
            max_clients: 1024,
            hugetlb: false,
            gateway: false,
            mem_store: false,
        }
    }
}

/// A running host + daemon pair, and the gateway and mount when asked for; every process is
/// killed and reaped on drop (the mount first, the host last).
pub struct Stack {
    /// `blobring mount` of [`CONTAINER`] (`blobring-bench mount`): the process and where.
    mount: Option<(Proc, PathBuf)>,
    /// The gateway and its endpoint (with the account), when started.
    gateway: Option<(Proc, String)>,
    inner: stack::Stack,
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
    // Last: removed after the processes are gone.
    _dir: tempfile::TempDir,
}

impl Stack {
    /// Starts `blobring-host` and `blobringd` and waits (≤ 20 s each) until the daemon is
    /// connected to the host.
    pub fn start(opts: &StackOptions) -> Result<Stack> {
        let dir = tempfile::Builder::new()
            .prefix("brbench")
            .tempdir_in("/tmp")
            .context("create a temp dir under /tmp")?;
        let max = opts.max_clients.to_string();
        let mut daemon_args = vec!["--transport", "sim", "--no-pin", "--arena-size"];
        let arena = opts.max_arena.to_string();
        daemon_args.extend([&arena, "--max-clients", &max, "--max-clients-per-uid", &max]);
        daemon_args.extend(opts.hugetlb.then_some("--hugetlb"));
        let pem = dir.path().join("host.pem");
        let mut builder = StackBuilder::new(dir.path());
        if opts.mem_store {
            builder = builder.store("mem");
        }
        let inner = builder
            .host_args([
                "--http",
                "127.0.0.1:0",
                "--https",
                "127.0.0.1:0",
                "--tls-cert-out",
            ])
            .host_args([&pem])
            .host_args(["--container", CONTAINER])
            .daemon_args(daemon_args)
            .env("RUST_LOG", "warn")
            // The daemon logs the page kind of client regions at info (`region_pages`).
            .daemon_env("RUST_LOG", "info")
            .timeout(Duration::from_secs(20))
            .start()?;
        let host = &inner.host;
        let (Some(url), Some(https), Some(cert)) = (&host.http_url, &host.https_url, &host.cert)
        else {
            bail!("blobring-host was ready without its REST addresses and certificate");
        };
        let account = blobring::blob::EMULATOR_ACCOUNT;
        let mut stack = Stack {
            store: dir.path().join("store"),
            socket: inner.daemon.socket.clone(),
            ctl: inner.daemon.ctl.clone(),
            endpoint: format!("{url}/{account}"),
            https_endpoint: format!("{https}/{account}"),
            cert: cert.clone(),
            inner,
            gateway: None,
            mount: None,
            _dir: dir,
        };
        if opts.gateway {
            stack.gateway = Some(stack.start_gateway(opts.max_arena)?);
        }
        Ok(stack)
    }

    /// The daemon's pid.
    pub fn daemon_pid(&self) -> u32 {
        self.inner.daemon.proc.pid()
    }

    /// The host's pid.
    pub fn host_pid(&self) -> u32 {
        self.inner.host.proc.pid()
    }

    /// The daemon's ctl-socket JSON document.
    pub fn stats(&self) -> Result<serde_json::Value> {
        Ok(self.inner.daemon.stats()?)
    }

    /// The page kind of the client regions as the daemon logged it (`pages=Small|Thp|Huge2M`
    /// on "client connected"), once a client has connected.
    pub fn region_pages(&self) -> Option<String> {
        let log = self.inner.daemon.proc.log_text();
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
        let mp = self._dir.path().join("mnt");
        std::fs::create_dir_all(&mp).context("create the mount point")?;
        let args = [
            OsString::from("mount"),
            format!("blob://{CONTAINER}").into(),
            mp.clone().into(),
            "--foreground".into(),
            "--socket".into(),
            self.socket.clone().into(),
        ];
        let env = [("BLOBRING_MOUNT_NOTIFY_READY", "1")];
        let child = self.spawn_blobring("blobring mount", &args, &env)?;
        let mount = self.mount.insert((child, mp.clone()));
        mount
            .0
            .wait_for(&mut [], Duration::from_secs(30), "`ready`", |p| {
                p.log_text()
                    .lines()
                    .any(|l| l.trim() == "ready")
                    .then_some(())
            })?;
        Ok(mp)
    }

    /// Starts `blobring ARGS` (`$BLOBRING_BIN`, else next to this executable) with `RUST_LOG=warn`
    /// and `env`, logging to `<dir>/<last word of name>.log`.
    fn spawn_blobring(&self, name: &str, args: &[OsString], env: &[(&str, &str)]) -> Result<Proc> {
        let bin = sibling_bin("blobring", "BLOBRING_BIN")?;
        let mut envs = vec![("RUST_LOG".to_string(), "warn".to_string())];
        envs.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let word = name.rsplit(' ').next().unwrap_or(name);
        let log = self._dir.path().join(format!("{word}.log"));
        Ok(Proc::spawn(name, &bin, args, &envs, &log)?)
    }

    /// Starts `blobring gateway` on a free loopback port for the daemon and returns it with its
    /// endpoint (account included) once it prints `listening on` (≤ 20 s). It asks for an
    /// `arena`-byte arena, so each of its requests can carry up to half of it.
    fn start_gateway(&self, arena: u64) -> Result<(Proc, String)> {
        let args = [
            OsString::from("gateway"),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--socket".into(),
            self.socket.clone().into(),
            "--arena-mib".into(),
            (arena >> 20).to_string().into(),
        ];
        let mut child = self.spawn_blobring("blobring gateway", &args, &[])?;
        let what = "its `listening on` line";
        let at = child.wait_for(&mut [], Duration::from_secs(20), what, |p| {
            p.log_line("blobring gateway: listening on http://")
        })?;
        let url = format!("http://{at}/{}", blobring::blob::EMULATOR_ACCOUNT);
        Ok((child, url))
    }

    /// The mount process's pid, if the container is mounted.
    pub fn mount_pid(&self) -> Option<u32> {
        self.mount.as_ref().map(|m| m.0.pid())
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
            Some((g, _)) => crate::machine::proc_cpu_seconds(g.pid()),
            None => Ok(0.0),
        }
    }

    /// Directory of the fs store (for the `pread` path).
    pub fn store_dir(&self) -> &Path {
        &self.store
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
            c.stop(Duration::from_secs(10));
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&mp)
                .stderr(Stdio::null())
                .status();
        }
        // The gateway, then the daemon, then the host: by their drops, in field order.
    }
}

/// Page-kind name as a page size in bytes (`Small` → 4096; THP and hugetlb → 2 MiB).
pub fn page_size_of(kind: &str) -> u64 {
    match kind {
        "Thp" | "Huge2M" => 2 << 20,
        _ => 4096,
    }
}
