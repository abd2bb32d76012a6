#![forbid(unsafe_code)]
//! `blobring mount`: a container (or a prefix of one) as a directory tree, through FUSE, so
//! programs that only know files — `cp`, `tar`, `find`, shell scripts, any library that opens
//! paths — read and write blobs through blobring (ARCHITECTURE.md §10).
//!
//! **Owns:** the FUSE session (on [`fuser`], which speaks the kernel protocol over `/dev/fuse`
//! in Rust and mounts with `mount(2)` as root, else through the `fusermount3` helper — no
//! libfuse headers to build against); the mapping of paths to blob names (directories are
//! `/`-delimited prefixes); a metadata cache with a TTL and a negative cache; per-handle
//! sequential-read detection and prefetch within a shared memory budget ([`read`]); the
//! streaming upload of new blobs ([`write`](mod@write)); the mount's figures ([`stats`]);
//! detaching, signal handling and unmounting ([`run`], [`unmount`]).
//!
//! **Does not own:** Blob requests, striping, retries, deadlines and zero-copy leases: those
//! are the SDK's ([`blobring::blob::BlobService`], [`blobring::transfer`]); the mount calls
//! them and adds no second implementation.
//!
//! **Trusts:** the kernel's FUSE requests (it is the kernel), blobringd as every SDK client
//! does (a dead daemon fails requests with an error within their deadline; the SDK reconnects
//! when it is back), and the service's listings. It trusts nothing the kernel does not check
//! about callers beyond the mount options: `--allow-other` lets other users in, and then the
//! kernel enforces `--file-mode`/`--dir-mode` with `--uid`/`--gid` (`default_permissions`).
//!
//! **Invariants:**
//! - a blob is never half written: writes reach the service only as uncommitted blocks, and
//!   the blob appears (or is replaced) at once when Put Block List commits it on close, flush
//!   or fsync; a failed upload commits nothing;
//! - what the object API cannot do efficiently (random writes, appends to an existing blob,
//!   directory rename, chmod/chown, links, resizing) is refused with a stable errno and one
//!   log line, never emulated and never half done (the table in the README);
//! - a read of an open file is pinned to the ETag it had when opened (`If-Match`): a
//!   concurrent overwrite fails the read with `EIO`, it never mixes versions;
//! - the bytes held by prefetch (in flight and buffered) never exceed `--cache-mib`;
//! - no FUSE request waits longer than the SDK's deadline and retries (`--timeout`): a dead
//!   daemon turns into `EIO`, never a hang.

pub mod read;
pub mod stats;
pub mod write;

mod fs;

use std::ffi::OsString;
use std::io::{BufRead as _, Read as _, Seek as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use blobring::blob::{AccountConfig, BlobError, BlobService, ListOptions, RetryPolicy};
use blobring::{Client, ClientError, ClientOptions, ConnectOptions, block_on};
use fuser::{Config, MountOption, Session, SessionACL};

pub use stats::Stats;

/// Environment variable set by the detaching parent: the child prints `ready` on stdout once
/// the mount is up.
const READY_ENV: &str = "BLOBRING_MOUNT_NOTIFY_READY";

/// How long an unmount by signal waits for open files to be closed before the process exits
/// anyway (the mount point is already detached by then).
const SIGNAL_GRACE: Duration = Duration::from_secs(5);

/// The flags of `blobring mount`.
#[derive(Debug, Clone, clap::Args)]
pub struct MountArgs {
    /// What to mount: blob://container or blob://container/prefix.
    pub url: String,
    /// Where: an existing directory.
    pub mountpoint: PathBuf,
    /// Refuse every change (EROFS).
    #[arg(long)]
    pub read_only: bool,
    /// Stay in the foreground (default: detach once the mount is ready; its log goes to
    /// --log-file).
    #[arg(long)]
    pub foreground: bool,
    /// Memory for sequential prefetch, shared by every open file, in MiB (at most half the
    /// daemon's arena is used).
    #[arg(long, default_value_t = 256)]
    pub cache_mib: u64,
    /// Seconds a name's metadata (present or absent) is trusted before the service is asked
    /// again; also the kernel's attribute and entry cache time.
    #[arg(long, default_value_t = 1.0)]
    pub metadata_ttl: f64,
    /// Owner of every file and directory (default: the mounting user).
    #[arg(long)]
    pub uid: Option<u32>,
    /// Group of every file and directory (default: the mounting user's group).
    #[arg(long)]
    pub gid: Option<u32>,
    /// Mode of files, octal.
    #[arg(long, default_value = "644", value_parser = parse_mode)]
    pub file_mode: u16,
    /// Mode of directories, octal.
    #[arg(long, default_value = "755", value_parser = parse_mode)]
    pub dir_mode: u16,
    /// Let other users use the mount (needs root or `user_allow_other` in /etc/fuse.conf).
    #[arg(long)]
    pub allow_other: bool,
    /// blobringd's client socket (default: $BLOBRING_SOCKET or the standard path).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Deadline of each Blob request in seconds (retries of idempotent ones come on top, a
    /// few seconds at most): how long an operation may take before it fails with EIO.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// FUSE worker threads (requests served concurrently).
    #[arg(long, default_value_t = 16)]
    pub threads: usize,
    /// Serve the mount's figures (JSON, one document per connection) on this unix socket;
    /// read them with `blobring stats --json --ctl-socket PATH`.
    #[arg(long)]
    pub stats_socket: Option<PathBuf>,
    /// Log file of a detached mount (default: blobring-mount-MOUNTPOINT.log in
    /// $XDG_RUNTIME_DIR, else /tmp; in MOUNTPOINT, characters other than letters and digits
    /// become underscores).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
}

fn parse_mode(s: &str) -> Result<u16, String> {
    u16::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal mode such as 644"))
}

/// Why a mount or unmount failed. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// blobringd could not be reached.
    #[error(
        "cannot reach blobringd at {socket}: {source}; start a local stack with `blobring up`, \
         or point BLOBRING_SOCKET or --socket at a running blobringd's socket"
    )]
    NoDaemon {
        /// The socket tried.
        socket: PathBuf,
        /// Why.
        #[source]
        source: ClientError,
    },
    /// The container does not exist.
    #[error(
        "container {container:?} does not exist; create it with `blobring mb blob://{container}` \
         (nothing was mounted)"
    )]
    NoContainer {
        /// Its name.
        container: String,
    },
    /// The service refused or failed a request at start.
    #[error("checking blob://{container}: {source}")]
    Service {
        /// Container.
        container: String,
        /// Why.
        #[source]
        source: BlobError,
    },
    /// The FUSE mount failed.
    #[error(
        "mounting at {mountpoint} failed: {source}; check that /dev/fuse exists and is usable, \
         that fusermount3 is installed (Debian: fuse3) when not root, and that nothing is \
         mounted there already (`blobring unmount {mountpoint}`)"
    )]
    Mount {
        /// Where.
        mountpoint: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The unmount failed.
    #[error("unmounting {mountpoint} failed: {message}")]
    Unmount {
        /// Where.
        mountpoint: PathBuf,
        /// Why.
        message: String,
    },
    /// The detached mount process failed before it was ready; its own message follows.
    #[error("{output}")]
    Detached {
        /// Its exit status.
        code: i32,
        /// What it logged.
        output: String,
    },
    /// Local I/O (the log file, the stats socket, spawning).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl MountError {
    /// The process exit status for this error (as the data commands: 2 usage, 3 not found,
    /// 4 daemon unreachable, 1 otherwise).
    pub fn exit_code(&self) -> i32 {
        match self {
            MountError::Usage(_) => 2,
            MountError::NoContainer { .. } => 3,
            MountError::NoDaemon { .. } => 4,
            MountError::Detached { code, .. } => *code,
            _ => 1,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MountError {
    let what = what.into();
    move |source| MountError::Io { what, source }
}

/// `blob://container[/prefix]` → (container, prefix ending with `/` or empty).
pub fn parse_source(url: &str) -> Result<(String, String), MountError> {
    let rest = url.strip_prefix("blob://").ok_or_else(|| {
        MountError::Usage(format!(
            "{url:?} is not a blob URL: use blob://<container>[/<prefix>]"
        ))
    })?;
    let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if container.is_empty() {
        return Err(MountError::Usage(format!(
            "{url:?} names no container: use blob://<container>[/<prefix>]"
        )));
    }
    let prefix = prefix.trim_matches('/');
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    Ok((container.to_owned(), prefix))
}

/// The default log file of a detached mount of `mountpoint`.
fn default_log(mountpoint: &Path) -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let name: String = mountpoint
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    dir.join(format!("blobring-mount-{name}.log"))
}

/// Mounts as `args` say: detached (the default: returns once the mount is ready, leaving a
/// child process serving it) or in the foreground (returns when it is unmounted, by
/// `blobring unmount`/`fusermount3 -u` or by SIGINT/SIGTERM).
pub fn run(args: MountArgs) -> Result<(), MountError> {
    let (container, prefix) = parse_source(&args.url)?;
    if !args.mountpoint.is_dir() {
        return Err(MountError::Usage(format!(
            "mount point {} is not a directory; create it first",
            args.mountpoint.display()
        )));
    }
    if args.threads == 0 || !(args.metadata_ttl >= 0.0 && args.metadata_ttl.is_finite()) {
        return Err(MountError::Usage(
            "--threads must be at least 1 and --metadata-ttl a number of seconds ≥ 0".into(),
        ));
    }
    if !args.foreground {
        return detach(&args);
    }
    serve(args, container, prefix)
}

/// Starts this same command with `--foreground` as a child in its own process group, logging
/// to the log file, and waits until it says the mount is ready (or exits, and then reports
/// what it logged).
fn detach(args: &MountArgs) -> Result<(), MountError> {
    let log_path = args
        .log_file
        .clone()
        .unwrap_or_else(|| default_log(&args.mountpoint));
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(&log_path)
        .map_err(io(format!("opening the log file {}", log_path.display())))?;
    let start = log
        .seek(std::io::SeekFrom::End(0))
        .map_err(io("reading the log file"))?;
    let exe = std::env::current_exe().map_err(io("finding this program"))?;
    let mut argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    argv.push("--foreground".into());
    let mut child = Command::new(exe)
        .args(argv)
        .env(READY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log.try_clone().map_err(io("duplicating the log fd"))?)
        .process_group(0)
        .spawn()
        .map_err(io("starting the mount process"))?;
    let mut line = String::new();
    let out = child.stdout.take().expect("piped stdout");
    let _ = std::io::BufReader::new(out).read_line(&mut line);
    if line.trim() == "ready" {
        eprintln!(
            "mounted {} at {} (pid {}, log {})",
            args.url,
            args.mountpoint.display(),
            child.id(),
            log_path.display()
        );
        return Ok(());
    }
    let status = child.wait().map_err(io("waiting for the mount process"))?;
    let mut output = String::new();
    log.seek(std::io::SeekFrom::Start(start))
        .map_err(io("reading the log file"))?;
    let _ = log.read_to_string(&mut output);
    Err(MountError::Detached {
        code: status.code().unwrap_or(1).max(1),
        output: output.trim_end().to_owned(),
    })
}

/// The foreground mount: connect, check the container, mount, serve until unmounted or a
/// signal.
fn serve(args: MountArgs, container: String, prefix: String) -> Result<(), MountError> {
    use nix::sys::signal::{SigSet, Signal};
    // Block SIGINT/SIGTERM in this thread before any other starts (the SDK's, FUSE's), so
    // they inherit the mask and only the waiter below receives them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .map_err(|e| io("blocking signals")(e.into()))?;

    let want_cache = args.cache_mib.saturating_mul(1 << 20);
    let (svc, arena) = connect(&args, &container, &prefix)?;

    let stats = Arc::new(Stats::default());
    let cache = want_cache.min(arena / 2);
    if cache < want_cache {
        tracing::warn!(
            "--cache-mib {} is more than half of blobringd's {} MiB arena: prefetch gets {} MiB \
             (start blobringd with a larger --arena-size for more)",
            args.cache_mib,
            arena >> 20,
            cache >> 20
        );
    }
    let budget = Arc::new(read::Budget::new(cache, stats.clone()));
    let uid = args.uid.unwrap_or_else(|| nix::unistd::getuid().as_raw());
    let gid = args.gid.unwrap_or_else(|| nix::unistd::getgid().as_raw());
    let opts = fs::FsOptions {
        container: container.clone(),
        prefix: prefix.clone(),
        ttl: Duration::from_secs_f64(args.metadata_ttl),
        uid,
        gid,
        file_mode: args.file_mode,
        dir_mode: args.dir_mode,
        read_only: args.read_only,
    };
    let source = format!("blob://{container}/{prefix}");
    let fs = fs::BlobFs::new(svc, opts, budget, stats.clone());
    let config = fuse_config(&args, &source);
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .map_err(io(format!("resolving {}", args.mountpoint.display())))?;
    let session = Session::new(fs, &mountpoint, &config).map_err(|source| MountError::Mount {
        mountpoint: mountpoint.clone(),
        source,
    })?;
    if let Some(p) = &args.stats_socket {
        let _ = std::fs::remove_file(p);
        let l = std::os::unix::net::UnixListener::bind(p)
            .map_err(io(format!("binding the stats socket {}", p.display())))?;
        stats::serve(l, stats.clone(), source.clone(), mountpoint.clone())
            .map_err(io("starting the stats thread"))?;
    }
    tracing::info!(
        "mounted {source} at {} (prefetch budget {} MiB, arena {} MiB, metadata TTL {} s)",
        mountpoint.display(),
        cache >> 20,
        arena >> 20,
        args.metadata_ttl
    );
    if std::env::var_os(READY_ENV).is_some() {
        println!("ready");
    }

    run_until_unmounted(session, signals, &mountpoint)?;
    tracing::info!(
        "unmounted {}; figures: {}",
        mountpoint.display(),
        stats.to_json(&source, &mountpoint)["mount"]
    );
    if let Some(p) = &args.stats_socket {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// Connects to the daemon and checks that `container` exists (a listing of at most one name
/// under `prefix`); returns the service and the arena's size.
fn connect(
    args: &MountArgs,
    container: &str,
    prefix: &str,
) -> Result<(BlobService, u64), MountError> {
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(blobring::default_socket_path);
    let timeout = Duration::from_secs(args.timeout.max(1));
    let client = Client::connect_with(ClientOptions {
        socket: socket.clone(),
        // The daemon's default arena, which is also the largest it grants (--arena-size):
        // the prefetch budget gets at most half of it, the rest is for uploads and reads.
        connect: ConnectOptions::default(),
        default_timeout: timeout,
        arena_wait: timeout,
    })
    .map_err(|source| MountError::NoDaemon {
        socket: socket.clone(),
        source,
    })?;
    let account = AccountConfig::from_env()
        .map_err(|e| MountError::Usage(format!("AZURE_STORAGE_CONNECTION_STRING: {e}")))?;
    let arena = client.arena_len();
    let svc = BlobService::new(client, account)
        .with_timeout(timeout)
        .with_retry(RetryPolicy {
            max_retries: 3,
            base: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
        });
    // The container must exist: a listing of at most one name.
    let probe = ListOptions {
        prefix: Some(prefix.to_owned()).filter(|p| !p.is_empty()),
        max_results: Some(1),
        ..ListOptions::default()
    };
    match block_on(svc.list_blobs_page(container, &probe)) {
        Err(e) if e.is_not_found() => Err(MountError::NoContainer {
            container: container.into(),
        }),
        Err(source) => Err(MountError::Service {
            container: container.into(),
            source,
        }),
        Ok(_) => Ok((svc, arena)),
    }
}

/// The FUSE session's configuration: options, access and threads.
fn fuse_config(args: &MountArgs, source: &str) -> Config {
    let mut mount_options = vec![
        MountOption::FSName(source.into()),
        MountOption::Subtype("blobring".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    mount_options.push(if args.read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = if args.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(args.threads);
    config
}

/// Serves `session` on its own thread until it is unmounted or SIGINT/SIGTERM (blocked in
/// `signals`) arrives; on a signal unmounts lazily and serves open files for [`SIGNAL_GRACE`]
/// more.
fn run_until_unmounted(
    session: Session<fs::BlobFs>,
    signals: nix::sys::signal::SigSet,
    mountpoint: &Path,
) -> Result<(), MountError> {
    use nix::sys::signal::Signal;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<&'static str>();
    let session_done = done_tx.clone();
    let runner = std::thread::Builder::new()
        .name("mount-session".into())
        .spawn(move || {
            let r = session.run();
            let _ = session_done.send("unmounted");
            r
        })
        .map_err(io("starting the session thread"))?;
    raise_readahead(mountpoint);
    std::thread::Builder::new()
        .name("mount-signals".into())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                let _ = done_tx.send(if sig == Signal::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                });
            }
        })
        .map_err(io("starting the signal thread"))?;
    let why = done_rx.recv().unwrap_or("unmounted");
    if why != "unmounted" {
        tracing::info!("{why}: unmounting {}", mountpoint.display());
        if let Err(e) = unmount(mountpoint) {
            tracing::warn!("{e}");
        }
        // Open files keep a lazily detached mount alive: serve them a little longer, then go
        // (the kernel fails what is left with ENOTCONN; uncommitted writes are discarded).
        let deadline = std::time::Instant::now() + SIGNAL_GRACE;
        while !runner.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    } else if let Ok(Err(e)) = runner.join() {
        tracing::warn!("the FUSE session ended with an error: {e}");
    }
    Ok(())
}

/// Kernel readahead for the mount: FUSE's INIT lets the kernel cap it at its default
/// (128 KiB), so sequential readers would ask 128 KiB at a time; the mount's block device info
/// (`/sys/class/bdi/<major>:<minor>/read_ahead_kb`, writable by root) raises it to
/// [`fs::MAX_WRITE`] so each FUSE read carries 1 MiB. Not root: left as it is. Called once the
/// session serves requests (the `stat` of the mount point is one).
fn raise_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(md) = std::fs::metadata(mountpoint) else {
        return;
    };
    let (major, minor) = (
        nix::sys::stat::major(md.dev()),
        nix::sys::stat::minor(md.dev()),
    );
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    match std::fs::write(&path, (fs::MAX_WRITE / 1024).to_string()) {
        Ok(()) => tracing::debug!("{path} set to {} KiB", fs::MAX_WRITE / 1024),
        Err(e) => tracing::debug!("kernel readahead left as it is ({path}: {e})"),
    }
}

/// Unmounts `mountpoint` lazily (it disappears from the namespace at once; files still open
/// are served until closed or until their mount process exits). Also clears the mount point
/// of a mount process that died (`Transport endpoint is not connected`). As root this is
/// `umount2(MNT_DETACH)`, else `fusermount3 -u -z`.
pub fn unmount(mountpoint: &Path) -> Result<(), MountError> {
    let fail = |message: String| MountError::Unmount {
        mountpoint: mountpoint.to_owned(),
        message,
    };
    if nix::unistd::geteuid().is_root() {
        return nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
            fail(match e {
                nix::errno::Errno::EINVAL => "it is not a mount point".into(),
                nix::errno::Errno::ENOENT => "no such directory".into(),
                e => e.to_string(),
            })
        });
    }
    let out = Command::new("fusermount3")
        .args(["-u", "-z", "--"])
        .arg(mountpoint)
        .output()
        .map_err(|e| {
            fail(format!(
                "cannot run fusermount3 ({e}); install it (Debian: apt-get install fuse3)"
            ))
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_into_container_and_prefix() {
        assert_eq!(parse_source("blob://c").unwrap(), ("c".into(), "".into()));
        assert_eq!(parse_source("blob://c/").unwrap(), ("c".into(), "".into()));
        assert_eq!(
            parse_source("blob://c/a/b/").unwrap(),
            ("c".into(), "a/b/".into())
        );
        assert_eq!(parse_source("/x").unwrap_err().exit_code(), 2);
        assert_eq!(parse_source("blob:///x").unwrap_err().exit_code(), 2);
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("644"), Ok(0o644));
        assert_eq!(parse_mode("0o750"), Ok(0o750));
        assert!(parse_mode("9").is_err());
        assert!(parse_mode("77777").is_err());
    }
}
