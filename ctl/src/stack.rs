//! Starting a local stack: `blobring-host` and `blobringd` connected to it, written once for
//! `blobring up`, the cross-process tests, the benchmarks and the Python tests (through the
//! tests crate's `blobring-test-stack`).
//!
//! **Owns:** spawning both processes with their socket paths, one log file per process (its
//! stdout and stderr, in that order of writing), readiness, and killing. **Trusts:** the two
//! binaries it is given (their machine-readable stdout lines `listening on <url>` and
//! `tls certificate <path>`). **Invariants:** every wait is bounded ([`StackBuilder::timeout`]);
//! a process that exits before it is ready is an error naming its log file, with the log's last
//! lines; every [`Proc`] is SIGKILLed and reaped when dropped (also while a test unwinds), and
//! a [`Stack`] drops its daemon before its host.
//!
//! Readiness is probed, not guessed: the host is ready once its VMBus socket exists and it has
//! printed the address of every REST front end it was asked for (`--http`, `--https`); the
//! daemon once its ctl socket answers and, for a [`Stack`], once it reports
//! `host_connected` and its workers' statistics list every open channel.

use std::ffi::OsString;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::CtlError;

/// Default bound on how long each process may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of a log quoted in an error.
const TAIL_LINES: usize = 20;
/// Pause between two readiness probes.
const PROBE_EVERY: Duration = Duration::from_millis(10);

/// Why a stack (or one of its processes) could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A binary was not found.
    #[error(
        "{name} not found ({looked}): build it with `cargo build --workspace --release --bins` \
         (without --release for a debug build), or set {env} to its path"
    )]
    NotFound {
        /// Binary name.
        name: String,
        /// Where it was looked for.
        looked: String,
        /// The variable that overrides the search.
        env: String,
    },
    /// A file or directory operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// A process exited before it was ready.
    #[error("{name} exited ({status}) before it was ready; its log {log}:\n{tail}")]
    Exited {
        /// Process name.
        name: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
    /// A process did not become ready in time.
    #[error("{name} was not ready within {timeout:?} (waiting for {what}); its log {log}:\n{tail}")]
    NotReady {
        /// Process name.
        name: String,
        /// What was awaited.
        what: String,
        /// The bound.
        timeout: Duration,
        /// Its log file.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StackError {
    let what = what.into();
    move |source| StackError::Io { what, source }
}

/// Finds the binary `name`: `$env` if set, else next to the running executable or one directory
/// up (a test runs from `target/<profile>/deps`), else on `PATH`.
pub fn find_bin(name: &str, env: &str) -> Result<PathBuf, StackError> {
    let not_found = |looked: String| StackError::NotFound {
        name: name.into(),
        looked,
        env: env.into(),
    };
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(not_found(format!("{env}={} is not a file", p.display())))
        };
    }
    let exe = std::env::current_exe().ok();
    let near = exe.as_deref().and_then(Path::parent);
    let dirs = [near, near.and_then(Path::parent)].into_iter().flatten();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path_dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.map(Path::to_path_buf)
        .chain(path_dirs)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            let at = near.map_or("?".into(), |d| d.display().to_string());
            not_found(format!("not next to {at}, nor on PATH"))
        })
}

/// A child process whose stdout and stderr go to a log file; SIGKILLed and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `bin args` (with `envs` added to the environment) with stdin from `/dev/null` and
    /// stdout and stderr into the new file `log`.
    pub fn spawn(
        name: &str,
        bin: &Path,
        args: &[OsString],
        envs: &[(String, String)],
        log: &Path,
    ) -> Result<Proc, StackError> {
        let what = || format!("creating the log file {}", log.display());
        let out = std::fs::File::create(log).map_err(io(what()))?;
        let err = out.try_clone().map_err(io(what()))?;
        let child = Command::new(bin)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io(format!("starting {}", bin.display())))?;
        Ok(Proc {
            name: name.into(),
            child,
            log: log.to_owned(),
        })
    }

    /// The process's name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its exit status, if it has exited (reaping it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until it exits (reaping it); `None` if it cannot be waited for.
    pub fn wait(&mut self) -> Option<ExitStatus> {
        self.child.wait().ok()
    }

    /// SIGKILL (if still running) and reap.
    pub fn kill(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`; reaps it.
    pub fn stop(&mut self, grace: Duration) {
        if self.try_wait().is_some() {
            return;
        }
        let _ = nix::sys::signal::kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.try_wait().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop within {grace:?}; killing it", self.name);
        self.kill();
    }

    /// The whole log so far (empty if unreadable).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the log.
    pub fn tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
    }

    /// The rest of the first log line that starts with `prefix`.
    pub fn log_line(&self, prefix: &str) -> Option<String> {
        self.log_text()
            .lines()
            .find_map(|l| l.strip_prefix(prefix).map(|r| r.trim().to_owned()))
    }

    /// [`StackError::Exited`] if it has exited.
    pub fn check_alive(&mut self) -> Result<(), StackError> {
        match self.try_wait() {
            None => Ok(()),
            Some(status) => Err(StackError::Exited {
                name: self.name.clone(),
                status,
                log: self.log.clone(),
                tail: self.tail(),
            }),
        }
    }

    /// Polls `probe` until it returns a value, failing when this process (or one of `others`)
    /// exits first or `timeout` passes.
    pub fn wait_for<T>(
        &mut self,
        others: &mut [&mut Proc],
        timeout: Duration,
        what: &str,
        mut probe: impl FnMut(&Proc) -> Option<T>,
    ) -> Result<T, StackError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = probe(self) {
                return Ok(v);
            }
            self.check_alive()?;
            for o in others.iter_mut() {
                o.check_alive()?;
            }
            if Instant::now() > deadline {
                return Err(StackError::NotReady {
                    name: self.name.clone(),
                    what: what.into(),
                    timeout,
                    log: self.log.clone(),
                    tail: self.tail(),
                });
            }
            std::thread::sleep(PROBE_EVERY);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `blobring-host`.
#[derive(Debug)]
pub struct Host {
    /// The process.
    pub proc: Proc,
    /// Its VMBus (`sim`) socket.
    pub socket: PathBuf,
    /// `http://127.0.0.1:PORT` when started with `--http` (once ready).
    pub http_url: Option<String>,
    /// `https://127.0.0.1:PORT` when started with `--https` (once ready).
    pub https_url: Option<String>,
    /// Its TLS certificate (PEM) when started with `--https` (once ready).
    pub cert: Option<PathBuf>,
    wants_http: bool,
    wants_https: bool,
}

impl Host {
    /// Waits (≤ `timeout`) until the socket exists and every asked-for REST address is printed.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), StackError> {
        self.wait_ready_or(timeout, || false).map(|_| ())
    }

    /// As [`Host::wait_ready`], but gives up early with `Ok(false)` once `stop()` says so.
    pub fn wait_ready_or(
        &mut self,
        timeout: Duration,
        mut stop: impl FnMut() -> bool,
    ) -> Result<bool, StackError> {
        let (socket, http, https) = (self.socket.clone(), self.wants_http, self.wants_https);
        let what = format!("{} and its REST addresses", socket.display());
        let found = self.proc.wait_for(&mut [], timeout, &what, |p| {
            if stop() {
                return Some(None);
            }
            let url = |scheme: &str| p.log_line(&format!("listening on {scheme}://"));
            let http_url = url("http").map(|u| format!("http://{u}"));
            let https_url = url("https").map(|u| format!("https://{u}"));
            let cert = p.log_line("tls certificate ").map(PathBuf::from);
            let ready = socket.exists()
                && (!http || http_url.is_some())
                && (!https || (https_url.is_some() && cert.is_some()));
            ready.then_some(Some((http_url, https_url, cert)))
        })?;
        let Some((http_url, https_url, cert)) = found else {
            return Ok(false);
        };
        (self.http_url, self.https_url, self.cert) = (http_url, https_url, cert);
        Ok(true)
    }
}

/// A running `blobringd`.
#[derive(Debug)]
pub struct Daemon {
    /// The process.
    pub proc: Proc,
    /// Its client socket.
    pub socket: PathBuf,
    /// Its ctl socket.
    pub ctl: PathBuf,
}

impl Daemon {
    /// Its ctl socket's JSON document.
    pub fn stats(&self) -> Result<serde_json::Value, CtlError> {
        crate::fetch(&self.ctl)
    }

    /// Waits (≤ `timeout`) until its ctl socket answers.
    pub fn wait_accepting(&mut self, timeout: Duration) -> Result<(), StackError> {
        let ctl = self.ctl.clone();
        let what = format!("its ctl socket {}", ctl.display());
        self.proc.wait_for(&mut [], timeout, &what, |_| {
            UnixStream::connect(&ctl).ok().map(drop)
        })
    }

    /// Waits (≤ `timeout`) until it reports `host_connected` and its workers list every open
    /// channel (so what `blobring stats` shows next matches), failing early if it or `host`
    /// exits; gives up early with `Ok(false)` once `stop()` says so.
    pub fn wait_connected_or(
        &mut self,
        host: &mut Proc,
        timeout: Duration,
        mut stop: impl FnMut() -> bool,
    ) -> Result<bool, StackError> {
        let ctl = self.ctl.clone();
        self.proc
            .wait_for(&mut [host], timeout, "its connection to the host", |_| {
                if stop() {
                    return Some(false);
                }
                let doc = crate::fetch(&ctl).ok()?;
                let open = doc["daemon"]["channels_open"].as_u64()?;
                let listed = doc["channels"].as_array()?.len() as u64;
                (doc["daemon"]["host_connected"] == true && listed == open).then_some(true)
            })
    }
}

/// A host and a daemon connected to it; the daemon is killed first on drop.
#[derive(Debug)]
pub struct Stack {
    /// The daemon (declared first: dropped first).
    pub daemon: Daemon,
    /// The host.
    pub host: Host,
}

/// How to start a host and a daemon: binaries, paths, extra arguments.
#[derive(Debug, Clone)]
pub struct StackBuilder {
    dir: PathBuf,
    host_bin: Option<PathBuf>,
    daemon_bin: Option<PathBuf>,
    store: Option<String>,
    host_socket: PathBuf,
    socket: PathBuf,
    ctl: PathBuf,
    host_log: PathBuf,
    daemon_log: PathBuf,
    host_args: Vec<OsString>,
    daemon_args: Vec<OsString>,
    envs: Vec<(String, String)>,
    daemon_envs: Vec<(String, String)>,
    timeout: Duration,
}

impl StackBuilder {
    /// A stack in `dir` (which must exist): sockets `host.sock`, `d.sock`, `d.ctl`, logs
    /// `host.log`, `blobringd.log`, store `fs:<dir>/store`; binaries found by [`find_bin`]
    /// (`$BLOBRING_HOST_BIN`, `$BLOBRINGD_BIN`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            host_socket: dir.join("host.sock"),
            socket: dir.join("d.sock"),
            ctl: dir.join("d.ctl"),
            host_log: dir.join("host.log"),
            daemon_log: dir.join("blobringd.log"),
            dir,
            host_bin: None,
            daemon_bin: None,
            store: None,
            host_args: Vec::new(),
            daemon_args: Vec::new(),
            envs: Vec::new(),
            daemon_envs: Vec::new(),
            timeout: READY_TIMEOUT,
        }
    }

    /// The `blobring-host` binary to run.
    pub fn host_bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.host_bin = Some(bin.into());
        self
    }

    /// The `blobringd` binary to run.
    pub fn daemon_bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.daemon_bin = Some(bin.into());
        self
    }

    /// The host's `--store` value (an `fs:` directory is created if missing).
    pub fn store(mut self, store: impl Into<String>) -> Self {
        self.store = Some(store.into());
        self
    }

    /// The daemon's client and ctl socket paths.
    pub fn daemon_sockets(mut self, socket: impl Into<PathBuf>, ctl: impl Into<PathBuf>) -> Self {
        self.socket = socket.into();
        self.ctl = ctl.into();
        self
    }

    /// Extra arguments for the host.
    pub fn host_args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.host_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Extra arguments for the daemon.
    pub fn daemon_args<S: Into<OsString>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.daemon_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable for both processes (e.g. `RUST_LOG`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// An environment variable for the daemon only (after [`StackBuilder::env`]'s, so it wins).
    pub fn daemon_env(mut self, key: &str, value: &str) -> Self {
        self.daemon_envs.push((key.into(), value.into()));
        self
    }

    /// The bound on each readiness wait (default [`READY_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The readiness bound.
    pub fn ready_timeout(&self) -> Duration {
        self.timeout
    }

    /// The directory of sockets and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The host's `--store` value.
    pub fn store_value(&self) -> String {
        self.store
            .clone()
            .unwrap_or_else(|| format!("fs:{}", self.dir.join("store").display()))
    }

    /// The host's VMBus socket.
    pub fn host_socket(&self) -> &Path {
        &self.host_socket
    }

    /// The daemon's client socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's ctl socket.
    pub fn ctl(&self) -> &Path {
        &self.ctl
    }

    fn has_arg(args: &[OsString], flag: &str) -> bool {
        args.iter().any(|a| {
            let a = a.to_string_lossy();
            a == flag || a.starts_with(&format!("{flag}="))
        })
    }

    /// Starts the host without waiting for it (no thread is created, so a caller may change
    /// its signal mask afterwards without the host inheriting it).
    pub fn spawn_host(&self) -> Result<Host, StackError> {
        let bin = match &self.host_bin {
            Some(b) => b.clone(),
            None => find_bin("blobring-host", "BLOBRING_HOST_BIN")?,
        };
        let store = self.store_value();
        if let Some(d) = store.strip_prefix("fs:") {
            std::fs::create_dir_all(d).map_err(io(format!("creating the store directory {d}")))?;
        }
        // A stale socket would pass for readiness.
        let _ = std::fs::remove_file(&self.host_socket);
        let mut args: Vec<OsString> = vec![
            "--socket".into(),
            self.host_socket.clone().into(),
            "--store".into(),
            store.into(),
        ];
        args.extend(self.host_args.iter().cloned());
        let proc = Proc::spawn("blobring-host", &bin, &args, &self.envs, &self.host_log)?;
        Ok(Host {
            proc,
            socket: self.host_socket.clone(),
            http_url: None,
            https_url: None,
            cert: None,
            wants_http: Self::has_arg(&self.host_args, "--http"),
            wants_https: Self::has_arg(&self.host_args, "--https"),
        })
    }

    /// Starts the host and waits until it is ready.
    pub fn start_host(&self) -> Result<Host, StackError> {
        let mut host = self.spawn_host()?;
        host.wait_ready(self.timeout)?;
        Ok(host)
    }

    /// Starts the daemon and waits until its ctl socket answers (not for a host).
    pub fn start_daemon(&self) -> Result<Daemon, StackError> {
        let bin = match &self.daemon_bin {
            Some(b) => b.clone(),
            None => find_bin("blobringd", "BLOBRINGD_BIN")?,
        };
        let mut args: Vec<OsString> = Vec::new();
        for (flag, path) in [
            ("--socket", &self.socket),
            ("--ctl-socket", &self.ctl),
            ("--host-socket", &self.host_socket),
        ] {
            args.extend([flag.into(), path.clone().into()]);
        }
        args.extend(self.daemon_args.iter().cloned());
        let envs: Vec<_> = self.envs.iter().chain(&self.daemon_envs).cloned().collect();
        let proc = Proc::spawn("blobringd", &bin, &args, &envs, &self.daemon_log)?;
        let mut daemon = Daemon {
            proc,
            socket: self.socket.clone(),
            ctl: self.ctl.clone(),
        };
        daemon.wait_accepting(self.timeout)?;
        Ok(daemon)
    }

    /// Starts the host, then the daemon, and waits until the daemon has connected to the host.
    pub fn start(&self) -> Result<Stack, StackError> {
        let mut host = self.start_host()?;
        let mut daemon = self.start_daemon()?;
        daemon.wait_connected_or(&mut host.proc, self.timeout, || false)?;
        Ok(Stack { daemon, host })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, script: &str) -> Proc {
        let args = ["-c".into(), script.into()];
        Proc::spawn("sh", Path::new("/bin/sh"), &args, &[], &dir.join("sh.log")).unwrap()
    }

    #[test]
    fn an_early_exit_names_the_log_and_quotes_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = sh(dir.path(), "echo starting; echo boom >&2; exit 3");
        let e = p
            .wait_for(&mut [], Duration::from_secs(10), "never", |_| None::<()>)
            .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, StackError::Exited { .. }), "{msg}");
        assert!(
            msg.contains(&dir.path().join("sh.log").display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("starting") && msg.contains("boom"), "{msg}");
    }

    #[test]
    fn a_probe_that_never_holds_times_out_and_drop_kills() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = sh(dir.path(), "echo waiting; exec sleep 60");
        let e = p
            .wait_for(&mut [], Duration::from_millis(100), "a miracle", |_| {
                None::<()>
            })
            .unwrap_err();
        assert!(matches!(e, StackError::NotReady { .. }), "{e}");
        assert!(e.to_string().contains("a miracle"), "{e}");
        let got = p.wait_for(&mut [], Duration::from_secs(10), "its line", |p| {
            p.log_line("wait")
        });
        assert_eq!(got.unwrap(), "ing");
        let pid = p.pid();
        drop(p);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "not reaped");
    }

    #[test]
    fn a_missing_binary_says_what_to_set() {
        let e = find_bin("blobring-no-such-binary", "BLOBRING_NO_SUCH_BIN").unwrap_err();
        assert!(e.to_string().contains("BLOBRING_NO_SUCH_BIN"), "{e}");
    }
}
