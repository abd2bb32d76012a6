//! `blobring up`: a local stack in one command — `blobring-host` (the emulated Azure host, on
//! an `fs:` store) and `blobringd` connected to it — until Ctrl-C.
//!
//! The stack is started by [`blobring_ctl::stack`]. Binaries are `$BLOBRING_HOST_BIN` and
//! `$BLOBRINGD_BIN` if set, else taken from the directory of the running `blobring` (a cargo
//! target dir or an install prefix), then from `PATH`. Sockets go to `--dir` (default
//! `$XDG_RUNTIME_DIR/blobring`, else `/run/blobring`): `host.sock`, `blobringd.sock`,
//! `blobringd.ctl`, and the children's logs (stdout and stderr) `host.log`, `blobringd.log`.
//!
//! Signals: SIGINT and SIGTERM are blocked in this process and read from a `signalfd` (no
//! handler). A child inherits the blocked mask (`std::process::Command` does not reset it,
//! and resetting it needs a `pre_exec` hook, which this crate forbids), so `blobring-host`, which relies
//! on the default SIGTERM action, is started *before* the mask is set and before any thread
//! exists; `blobringd` blocks both signals and reads its own signalfd anyway, so it is started
//! after. On a signal both children get SIGTERM (SIGKILL after [`STOP_GRACE`]) and `up` exits
//! 0. If a child exits on its own, the other is stopped and `up` fails naming the dead child's
//! log and quoting its last lines.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
// The account and key of the Azure storage emulator (public, well known), which
// `blobring-host` serves by default.
use blobring::blob::{EMULATOR_ACCOUNT, EMULATOR_KEY};
use blobring_ctl::stack::{Daemon, Host, StackBuilder};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// How long a child may take to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

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

/// The default socket directory.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(d) => PathBuf::from(d).join("blobring"),
        None => PathBuf::from("/run/blobring"),
    }
}

/// The launcher of `args`' stack in `dir`: sockets `host.sock`, `blobringd.sock`,
/// `blobringd.ctl`; logs `host.log`, `blobringd.log`.
fn builder(args: &UpArgs, dir: &std::path::Path) -> StackBuilder {
    let store = if ["fs:", "mem", "passthrough:"]
        .iter()
        .any(|p| args.store.starts_with(p))
    {
        args.store.clone()
    } else {
        format!("fs:{}", args.store)
    };
    let mut host_args = Vec::new();
    if let Some(a) = args.http {
        host_args.extend(["--http".to_string(), a.to_string()]);
    }
    host_args.extend(args.host_args.iter().cloned());
    let mut daemon_args = vec!["--transport".to_string(), "sim".into()];
    if let Some(n) = args.workers {
        daemon_args.extend(["--workers".into(), n.to_string()]);
    }
    daemon_args.extend(args.daemon_args.iter().cloned());
    StackBuilder::new(dir)
        .store(store)
        .daemon_sockets(dir.join("blobringd.sock"), dir.join("blobringd.ctl"))
        .host_args(host_args)
        .daemon_args(daemon_args)
}

/// Blocks SIGINT and SIGTERM in this thread (and the threads it starts later) and returns a
/// signalfd that reads them.
fn block_signals() -> anyhow::Result<SignalFd> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.thread_block()
        .and_then(|()| SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC))
        .context("blocking SIGINT/SIGTERM")
}

/// Stops both (daemon first) and passes `result` on.
fn stop_both<T>(daemon: Option<&mut Daemon>, host: &mut Host, result: T) -> T {
    if let Some(d) = daemon {
        d.proc.stop(STOP_GRACE);
    }
    host.proc.stop(STOP_GRACE);
    result
}

/// Runs `blobring up` until SIGINT/SIGTERM (`Ok`) or until a child dies (`Err`).
pub fn run(args: UpArgs) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(default_dir);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating {} (use --dir to pick another)", dir.display()))?;
    let launcher = builder(&args, &dir);
    // Before blocking the signals (see the module doc).
    let mut host = launcher.spawn_host()?;
    let signals = match block_signals() {
        Ok(s) => s,
        Err(e) => return stop_both(None, &mut host, Err(e)),
    };
    let timeout = launcher.ready_timeout();
    match host.wait_ready_or(timeout, || got_signal(&signals)) {
        Ok(true) => {}
        Ok(false) => return stop_both(None, &mut host, Ok(())),
        Err(e) => return stop_both(None, &mut host, Err(e.into())),
    }
    let mut daemon = match launcher.start_daemon() {
        Ok(d) => d,
        Err(e) => return stop_both(None, &mut host, Err(e.into())),
    };
    // The daemon is ready once it has the host's channels.
    match daemon.wait_connected_or(&mut host.proc, timeout, || got_signal(&signals)) {
        Ok(true) => {}
        Ok(false) => return stop_both(Some(&mut daemon), &mut host, Ok(())),
        Err(e) => return stop_both(Some(&mut daemon), &mut host, Err(e.into())),
    }
    print!("{}", banner(&launcher, &host, &daemon));
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if got_signal(&signals) {
            eprintln!("blobring up: stopping blobringd and blobring-host");
            return stop_both(Some(&mut daemon), &mut host, Ok(()));
        }
        if let Err(e) = daemon.proc.check_alive().and(host.proc.check_alive()) {
            return stop_both(Some(&mut daemon), &mut host, Err(e.into()));
        }
    }
}

/// What `up` prints once both are ready.
fn banner(launcher: &StackBuilder, host: &Host, daemon: &Daemon) -> String {
    let socket = launcher.socket().display();
    let mut out = String::new();
    out += "blobring is up: blobring-host and blobringd are running.\n";
    out += &format!("  client socket: {socket}\n");
    out += &format!("  export BLOBRING_SOCKET={socket}\n");
    out += "  then: blobring stats | blobring top | blobring clients | blobring mb blob://<container> | blobring cp <file> blob://<container>/<blob>\n";
    out += &format!("  store: {}\n", launcher.store_value());
    if let Some(url) = &host.http_url {
        out += &format!("  REST endpoint: {url}/{EMULATOR_ACCOUNT}\n");
        out += &format!(
            "  connection string: DefaultEndpointsProtocol=http;AccountName={EMULATOR_ACCOUNT};AccountKey={EMULATOR_KEY};BlobEndpoint={url}/{EMULATOR_ACCOUNT};\n"
        );
    }
    out += &format!(
        "  logs: {} and {}\n",
        host.proc.log().display(),
        daemon.proc.log().display()
    );
    out += "Press Ctrl-C to stop both.\n";
    out
}

fn got_signal(signals: &SignalFd) -> bool {
    matches!(signals.read_signal(), Ok(Some(_)))
}
