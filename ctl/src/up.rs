//! `blobring up`: a local stack in one command — `blobring-host` (the emulated Azure host, on
//! an `fs:` store) and `blobringd` connected to it — until Ctrl-C.
//!
//! Binaries are taken from the directory of the running `blobring` (a cargo target dir or an
//! install prefix), then from `PATH`. Sockets go to `--dir` (default
//! `$XDG_RUNTIME_DIR/blobring`, else `/run/blobring`): `host.sock`, `blobringd.sock`,
//! `blobringd.ctl`, and the children's logs `host.log`, `blobringd.log`.
//!
//! Signals: SIGINT and SIGTERM are blocked in this process and read from a `signalfd` (no
//! handler). A child inherits the blocked mask (`std::process::Command` does not reset it,
//! and resetting it needs a `pre_exec` hook, which this crate forbids), so `blobring-host`, which relies
//! on the default SIGTERM action, is started *before* the mask is set and before any thread
//! exists; `blobringd` blocks both signals and reads its own signalfd anyway, so it is started
//! after. On a signal both children get SIGTERM (SIGKILL after [`STOP_GRACE`]) and `up` exits
//! 0. If a child exits on its own, the other is stopped and
//! `up` fails with the dead child's stderr tail.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
// The account and key of the Azure storage emulator (public, well known), which
// `blobring-host` serves by default.
use blobring::blob::{EMULATOR_ACCOUNT, EMULATOR_KEY};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

/// How long a child may take to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long each child may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of a child's stderr kept for the error message.
const TAIL_LINES: usize = 20;

/// `blobring up` options.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Store of the emulated host: a directory (→ `fs:<dir>`), or a `blobring-host --store`
    /// value (`fs:<dir>`, `mem`, `passthrough:<url>`).
    #[arg(long, default_value = "./blobring-data")]
    pub store: String,
    /// Directory of the sockets and logs (default: $XDG_RUNTIME_DIR/blobring, else
    /// /run/blobring).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also serve the Blob REST API on this loopback address (e.g. 127.0.0.1:10000; port 0
    /// picks one).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    /// Daemon worker threads (default: one per CPU).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Extra argument for blobring-host (repeatable), e.g. --host-arg=--no-auth.
    #[arg(long = "host-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub host_args: Vec<String>,
    /// Extra argument for blobringd (repeatable), e.g. --daemon-arg=--spin-us=0.
    #[arg(long = "daemon-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub daemon_args: Vec<String>,
}

/// A child process with its stderr tail; killed on drop.
struct Proc {
    name: &'static str,
    child: Child,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Proc {
    fn tail(&self) -> String {
        let t = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps the child.
    fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "blobring up: {} did not stop within {grace:?}; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Finds `name` next to the running executable, then on `PATH`.
fn locate(name: &str) -> anyhow::Result<PathBuf> {
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "{name} not found next to this blobring or on PATH; build them with \
         cargo build --release -p blobring-host -p blobring-daemon"
    )
}

/// The default socket directory.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(d) => PathBuf::from(d).join("blobring"),
        None => PathBuf::from("/run/blobring"),
    }
}

/// Spawns `bin args` with stderr (and stdout if `stdout`) piped.
fn spawn(bin: &Path, args: &[String], stdout: bool) -> anyhow::Result<Child> {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(if stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// Starts the threads that copy `child`'s stderr to `log` (keeping a tail) and send its stdout
/// lines to `lines`.
fn attach(
    name: &'static str,
    mut child: Child,
    log: &Path,
    lines: Option<std::sync::mpsc::Sender<String>>,
) -> anyhow::Result<Proc> {
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let mut file = match std::fs::File::create(log) {
        Ok(f) => f,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e).with_context(|| format!("creating the log file {}", log.display()));
        }
    };
    let stderr = child.stderr.take().expect("piped");
    let t = tail.clone();
    std::thread::Builder::new()
        .name(format!("{name}-stderr"))
        .spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(file, "{line}");
                let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        })
        .context("starting a log thread")?;
    if let (Some(tx), Some(stdout)) = (lines, child.stdout.take()) {
        std::thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .context("starting a stdout thread")?;
    }
    Ok(Proc { name, child, tail })
}

fn died(p: &mut Proc, status: std::process::ExitStatus) -> anyhow::Error {
    anyhow!(
        "{} exited ({status}); last lines of its stderr:\n{}",
        p.name,
        p.tail()
    )
}

/// Runs `blobring up` until SIGINT/SIGTERM (`Ok`) or until a child dies (`Err`).
pub fn run(args: UpArgs) -> anyhow::Result<()> {
    let host_bin = locate("blobring-host")?;
    let daemon_bin = locate("blobringd")?;
    let dir = args.dir.clone().unwrap_or_else(default_dir);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating {} (use --dir to pick another)", dir.display()))?;
    let host_sock = dir.join("host.sock");
    let socket = dir.join("blobringd.sock");
    let ctl = dir.join("blobringd.ctl");
    let store = if ["fs:", "mem", "passthrough:"]
        .iter()
        .any(|p| args.store.starts_with(p))
    {
        args.store.clone()
    } else {
        std::fs::create_dir_all(&args.store)
            .with_context(|| format!("creating the store directory {}", args.store))?;
        format!("fs:{}", args.store)
    };

    let mut host_args = vec![
        "--store".to_string(),
        store.clone(),
        "--socket".into(),
        host_sock.display().to_string(),
    ];
    if let Some(a) = args.http {
        host_args.extend(["--http".into(), a.to_string()]);
    }
    host_args.extend(args.host_args.iter().cloned());
    // Before blocking the signals (see the module doc).
    let host_child = spawn(&host_bin, &host_args, true)?;

    // Before any thread exists, so every thread inherits the blocked mask.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    let signals = mask
        .thread_block()
        .and_then(|()| SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC))
        .context("blocking SIGINT/SIGTERM");
    let (tx, rx) = std::sync::mpsc::channel();
    let mut host = attach("blobring-host", host_child, &dir.join("host.log"), Some(tx))?;
    let signals = signals?;

    // The host is ready once it printed its VMBus line (and its REST address, if asked).
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut vmbus_ready = false;
    let mut rest: Option<String> = None;
    while !vmbus_ready || (args.http.is_some() && rest.is_none()) {
        if let Some(s) = host.exited() {
            return Err(died(&mut host, s));
        }
        if Instant::now() > deadline {
            bail!(
                "blobring-host was not ready within {READY_TIMEOUT:?}; its stderr:\n{}",
                host.tail()
            );
        }
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
            if line.starts_with("vmbus on ") {
                vmbus_ready = true;
            } else if let Some(url) = line.strip_prefix("listening on ") {
                rest = Some(url.trim().to_string());
            }
        }
        if got_signal(&signals) {
            host.stop(STOP_GRACE);
            return Ok(());
        }
    }

    let mut daemon_args = vec![
        "--transport".to_string(),
        "sim".into(),
        "--socket".into(),
        socket.display().to_string(),
        "--ctl-socket".into(),
        ctl.display().to_string(),
        "--host-socket".into(),
        host_sock.display().to_string(),
    ];
    if let Some(n) = args.workers {
        daemon_args.extend(["--workers".into(), n.to_string()]);
    }
    daemon_args.extend(args.daemon_args.iter().cloned());
    let mut daemon = attach(
        "blobringd",
        spawn(&daemon_bin, &daemon_args, false)?,
        &dir.join("blobringd.log"),
        None,
    )?;

    // The daemon is ready once its ctl socket answers and it has the host's channels.
    loop {
        if let Some(s) = daemon.exited() {
            host.stop(STOP_GRACE);
            return Err(died(&mut daemon, s));
        }
        if let Some(s) = host.exited() {
            daemon.stop(STOP_GRACE);
            return Err(died(&mut host, s));
        }
        if got_signal(&signals) {
            daemon.stop(STOP_GRACE);
            host.stop(STOP_GRACE);
            return Ok(());
        }
        if let Ok(doc) = blobring_ctl::fetch(&ctl)
            && doc["daemon"]["host_connected"] == true
        {
            break;
        }
        if Instant::now() > deadline {
            daemon.stop(STOP_GRACE);
            host.stop(STOP_GRACE);
            bail!(
                "blobringd did not connect to blobring-host within {READY_TIMEOUT:?}; its stderr:\n{}",
                daemon.tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut out = String::new();
    out += "blobring is up: blobring-host and blobringd are running.\n";
    out += &format!("  client socket: {}\n", socket.display());
    out += &format!("  export BLOBRING_SOCKET={}\n", socket.display());
    out += "  then: blobring stats | blobring top | blobring clients | blobring mb blob://<container> | blobring cp <file> blob://<container>/<blob>\n";
    out += &format!("  store: {store}\n");
    if let Some(url) = &rest {
        out += &format!("  REST endpoint: {url}/{EMULATOR_ACCOUNT}\n");
        out += &format!(
            "  connection string: DefaultEndpointsProtocol=http;AccountName={EMULATOR_ACCOUNT};AccountKey={EMULATOR_KEY};BlobEndpoint={url}/{EMULATOR_ACCOUNT};\n"
        );
    }
    out += &format!(
        "  logs: {} and {}\n",
        dir.join("host.log").display(),
        dir.join("blobringd.log").display()
    );
    out += "Press Ctrl-C to stop both.\n";
    print!("{out}");
    let _ = std::io::stdout().flush();

    loop {
        std::thread::sleep(Duration::from_millis(100));
        if got_signal(&signals) {
            eprintln!("blobring up: stopping blobringd and blobring-host");
            daemon.stop(STOP_GRACE);
            host.stop(STOP_GRACE);
            return Ok(());
        }
        if let Some(s) = daemon.exited() {
            host.stop(STOP_GRACE);
            return Err(died(&mut daemon, s));
        }
        if let Some(s) = host.exited() {
            daemon.stop(STOP_GRACE);
            return Err(died(&mut host, s));
        }
    }
}

fn got_signal(signals: &SignalFd) -> bool {
    matches!(signals.read_signal(), Ok(Some(_)))
}
