//! Blob data commands: `cp`, `ls`, `cat`, `rm`, `mb`, `rb` over the SDK.
//!
//! Blobs are named `blob://<container>/<path>`. The account comes from
//! `AZURE_STORAGE_CONNECTION_STRING` (else the emulator account), the daemon from
//! `--socket` / `BLOBRING_SOCKET`.
//!
//! Transfers (`cp`) show an [`indicatif`] progress bar on stderr (bytes, rate, ETA; for `-r`
//! one bar for the total plus the current file's name) when stderr is a terminal and `-q` is
//! not given, and end with one summary line on stderr (unless `-q`), e.g.
//! `copied 1 file, 1.00 GiB (1073741824 bytes) in 2.31 s (443.29 MiB/s)`.
//!
//! Failures print one line `blobring: <what went wrong>; <what to do>` on stderr and exit with
//! an [`Exit`] code: 1 other failure, 2 usage, 3 not found, 4 blobringd unreachable, 5 access
//! denied, 6 conflict or precondition failed.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use blobring::blob::{
    AccountConfig, BlobError, BlobItem, BlobService, Conditions, ListOptions, PutOptions,
};
use blobring::proto::code as az;
use blobring::transfer::{self, Checksum, TransferOptions};
use blobring::{Client, ClientError, ClientOptions, ConnectError, block_on};
use clap::{Args, Subcommand};
use indicatif::{BinaryBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Data commands (flattened into the CLI's subcommands).
#[derive(Debug, Subcommand)]
pub enum DataCmd {
    /// Copy local ↔ blob or blob ↔ blob (`-r` for directories / prefixes).
    #[command(after_help = EXIT_HELP)]
    Cp {
        /// Source: a local path or blob://container/path.
        src: String,
        /// Destination: a local path or blob://container/path.
        dst: String,
        /// Copy a directory tree / every blob under a prefix.
        #[arg(short, long)]
        recursive: bool,
        /// Connection and transfer options.
        #[command(flatten)]
        common: Common,
    },
    /// List blobs under blob://container[/prefix].
    #[command(after_help = EXIT_HELP)]
    Ls(Under),
    /// Write a blob to standard output.
    #[command(after_help = EXIT_HELP)]
    Cat {
        /// blob://container/path.
        url: String,
        /// Connection and transfer options.
        #[command(flatten)]
        common: Common,
    },
    /// Delete a blob (or, with -r, every blob under a prefix).
    #[command(after_help = EXIT_HELP)]
    Rm(Under),
    /// Create a container.
    #[command(after_help = EXIT_HELP)]
    Mb {
        /// blob://container.
        url: String,
        /// Connection and transfer options.
        #[command(flatten)]
        common: Common,
    },
    /// Delete a container.
    #[command(after_help = EXIT_HELP)]
    Rb {
        /// blob://container.
        url: String,
        /// Connection and transfer options.
        #[command(flatten)]
        common: Common,
    },
}

const EXIT_HELP: &str = "Exit status: 0 success, 1 failure, 2 usage error, 3 not found, \
                         4 blobringd unreachable, 5 access denied, 6 conflict or condition not met.";

/// The arguments of `ls` and `rm`.
#[derive(Debug, Args)]
pub struct Under {
    /// blob://container[/prefix] (`rm` without -r: blob://container/path).
    url: String,
    /// Every blob under the prefix (`ls`: without `/` grouping; `rm`: deletes them all).
    #[arg(short, long)]
    recursive: bool,
    /// Connection and transfer options.
    #[command(flatten)]
    common: Common,
}

/// Options shared by data commands.
#[derive(Debug, Args)]
pub struct Common {
    /// blobringd's client socket (default: $BLOBRING_SOCKET or the standard path).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Transfer chunk size in MiB.
    #[arg(long, default_value_t = 4)]
    chunk_mib: u64,
    /// Requests in flight per transfer.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Verify transfers (each chunk with the `--checksum`, CRC64 unless told).
    #[arg(long)]
    verify: bool,
    /// Verify transfers with this checksum (implies `--verify`). `md5` also stores the whole
    /// blob's MD5 with an upload and checks a download against the one stored, which catches
    /// bytes changed at rest (slower than `crc64`).
    #[arg(long, value_enum, value_name = "CHECKSUM")]
    checksum: Option<ChecksumArg>,
    /// No progress bar and no summary line.
    #[arg(long, short)]
    quiet: bool,
    /// `cp`: never overwrite an existing destination (blobs: `If-None-Match: *`); an existing
    /// one fails with exit status 6.
    #[arg(long, short = 'n')]
    no_clobber: bool,
}

/// `--checksum` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChecksumArg {
    /// CRC64 of each chunk (`x-ms-content-crc64`).
    Crc64,
    /// MD5 of each chunk (`Content-MD5`) and of the whole blob (stored with it).
    Md5,
}

impl From<ChecksumArg> for Checksum {
    fn from(c: ChecksumArg) -> Self {
        match c {
            ChecksumArg::Crc64 => Checksum::Crc64,
            ChecksumArg::Md5 => Checksum::Md5,
        }
    }
}

/// Exit status of a data command, by what went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Any other failure (1).
    Failure = 1,
    /// Bad arguments: not a blob URL, a directory without `-r`, an invalid name (2, like clap).
    Usage = 2,
    /// A local file, container or blob does not exist (3).
    NotFound = 3,
    /// blobringd cannot be reached, or lost its host (4).
    NoDaemon = 4,
    /// The service refused the credentials (403) (5).
    Denied = 5,
    /// 409 (already exists, being deleted) or 412 (condition not met) (6).
    Conflict = 6,
}

/// A failure with its exit status; the message says what went wrong and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// Exit status.
    pub exit: Exit,
    /// One line for the user.
    pub message: String,
}

fn fail(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    Failure {
        exit,
        message: message.into(),
    }
    .into()
}

/// A parsed `blob://container/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobUrl {
    /// Container.
    pub container: String,
    /// Path inside it (may be empty).
    pub path: String,
}

impl std::fmt::Display for BlobUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "blob://{}/{}", self.container, self.path)
    }
}

/// Parses `blob://container[/path]`; `None` for a local path.
pub fn parse_blob_url(s: &str) -> Result<Option<BlobUrl>> {
    let Some(rest) = s.strip_prefix("blob://") else {
        return Ok(None);
    };
    let (c, p) = rest.split_once('/').unwrap_or((rest, ""));
    if c.is_empty() {
        return Err(fail(
            Exit::Usage,
            format!("{s:?} names no container: use blob://<container>/<path>"),
        ));
    }
    Ok(Some(BlobUrl {
        container: c.to_owned(),
        path: p.to_owned(),
    }))
}

fn need_blob(s: &str) -> Result<BlobUrl> {
    parse_blob_url(s)?.ok_or_else(|| {
        fail(
            Exit::Usage,
            format!("{s:?} is not a blob URL: use blob://<container>/<path>"),
        )
    })
}

fn service(c: &Common) -> Result<BlobService> {
    let mut o = ClientOptions::default();
    if let Some(s) = &c.socket {
        o.socket = s.clone();
    }
    let socket = o.socket.clone();
    let client = Client::connect_with(o).map_err(|e| match e {
        ClientError::Connect(ConnectError::Connect { source, .. }) => fail(
            Exit::NoDaemon,
            format!(
                "cannot reach blobringd at {} ({source}); start a local stack with `blobring up` \
                 (it prints the BLOBRING_SOCKET to export), or point BLOBRING_SOCKET or --socket \
                 at a running blobringd's socket",
                socket.display()
            ),
        ),
        e => fail(
            Exit::NoDaemon,
            format!("connecting to blobringd at {}: {e}", socket.display()),
        ),
    })?;
    let account = AccountConfig::from_env()
        .map_err(|e| fail(Exit::Usage, format!("AZURE_STORAGE_CONNECTION_STRING: {e}")))?;
    Ok(BlobService::new(client, account))
}

/// Turns an SDK error into a [`Failure`] that says what to do. `what` names the operation
/// ("uploading a.bin to blob://c/a.bin"), `container` the container it touched.
fn explain(e: BlobError, what: &str, container: &str) -> anyhow::Error {
    use Exit::*;
    let (status, code) = (e.status(), e.code().unwrap_or("").to_owned());
    let (exit, msg) = match (&e, status) {
        (_, Some(404)) if code == az::CONTAINER_NOT_FOUND => (
            NotFound,
            format!(
                "{what}: container {container:?} does not exist (404 ContainerNotFound); create \
                 it first with `blobring mb blob://{container}`"
            ),
        ),
        (_, Some(404)) if code == az::BLOB_NOT_FOUND => (
            NotFound,
            format!(
                "{what}: no such blob (404 BlobNotFound); see what is there with `blobring ls \
                 blob://{container}/`"
            ),
        ),
        (_, Some(404)) => (NotFound, format!("{what}: not found (404 {code})")),
        (BlobError::Service { message, .. }, Some(403)) => (
            Denied,
            format!(
                "{what}: access denied (403 {code}: {message}); check the account name and key \
                 or SAS in AZURE_STORAGE_CONNECTION_STRING (when it is unset the emulator \
                 account {} is used)",
                blobring::blob::EMULATOR_ACCOUNT
            ),
        ),
        (_, Some(409)) if code == az::CONTAINER_ALREADY_EXISTS => (
            Conflict,
            format!("{what}: container {container:?} already exists (409 ContainerAlreadyExists)"),
        ),
        (_, Some(409)) if code == az::BLOB_ALREADY_EXISTS => (
            Conflict,
            format!(
                "{what}: the blob already exists (409 BlobAlreadyExists) and -n/--no-clobber is set"
            ),
        ),
        (_, Some(409)) if code == "ContainerBeingDeleted" => (
            Conflict,
            format!(
                "{what}: container {container:?} is being deleted (409 ContainerBeingDeleted); \
                 wait a few seconds and retry"
            ),
        ),
        (BlobError::Service { message, .. }, Some(409)) => (
            Conflict,
            format!("{what}: conflict (409 {code}: {message})"),
        ),
        (_, Some(412 | 304)) => (
            Conflict,
            format!(
                "{what}: the blob changed while it was being copied, or a condition was not met \
                 ({} {code}); run the command again",
                status.unwrap_or(412)
            ),
        ),
        (BlobError::Service { message, .. }, Some(400))
            if code.starts_with("InvalidResourceName") || code == "OutOfRangeInput" =>
        {
            (
                Usage,
                format!(
                    "{what}: invalid name (400 {code}: {message}); container names are 3-63 \
                     lower-case letters, digits and single hyphens"
                ),
            )
        }
        (BlobError::Service { message, .. }, Some(s)) if s >= 500 => (
            Failure,
            format!(
                "{what}: the service failed ({s} {code}: {message}) even after retries; check \
                 the host (`blobring stats`) and retry"
            ),
        ),
        (BlobError::Service { message, .. }, Some(s)) => {
            (Failure, format!("{what}: HTTP {s} {code}: {message}"))
        }
        (
            BlobError::Transport(
                ClientError::Connect(_)
                | ClientError::ConnectionReset
                | ClientError::Connection(blobring::Error::DaemonGone),
            ),
            _,
        ) => (
            NoDaemon,
            format!(
                "{what}: {e}; is blobringd still running? (`blobring stats`; start one with \
                 `blobring up`)"
            ),
        ),
        (BlobError::Transport(ClientError::Errno(n, _)), _) if *n == blobring::errno::ENODEV => (
            NoDaemon,
            format!(
                "{what}: {e}; blobringd has no connection to a host: check `blobring stats` and \
                 the host process"
            ),
        ),
        (BlobError::Io { source, .. }, _) if source.kind() == std::io::ErrorKind::NotFound => {
            (NotFound, format!("{what}: {e}"))
        }
        _ => (Failure, format!("{what}: {e}")),
    };
    fail(exit, msg)
}

/// Runs a data command and reports a failure on stderr: the CLI's entry point. Returns the
/// process exit status ([`Exit`]).
pub fn main(cmd: DataCmd) -> ExitCode {
    match run(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let (exit, text) = report(&e);
            eprintln!("blobring: {text}");
            ExitCode::from(exit as u8)
        }
    }
}

/// The exit status and one-line message of an error from [`run`].
pub fn report(e: &anyhow::Error) -> (Exit, String) {
    if let Some(f) = e.downcast_ref::<Failure>() {
        return (f.exit, f.message.clone());
    }
    let exit = match e.root_cause().downcast_ref::<std::io::Error>() {
        Some(io) if io.kind() == std::io::ErrorKind::NotFound => Exit::NotFound,
        Some(io) if io.kind() == std::io::ErrorKind::PermissionDenied => Exit::Denied,
        _ => Exit::Failure,
    };
    (exit, format!("{e:#}"))
}

/// Progress of one `cp`: an indicatif bar on stderr (hidden unless stderr is a terminal and
/// not `-q`) under a line naming the current file, and the summary line.
struct Meter {
    bar: ProgressBar,
    start: Instant,
    quiet: bool,
}

impl Meter {
    fn new(total: Option<u64>, quiet: bool) -> Self {
        let target = if quiet || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let style = ProgressStyle::with_template(
            "{wide_msg}\n[{elapsed_precise}] [{bar:30}] {binary_bytes}/{binary_total_bytes} \
             ({binary_bytes_per_sec}, ETA {eta})",
        )
        .expect("valid template")
        .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(total, target).with_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Self {
            bar,
            start: Instant::now(),
            quiet,
        }
    }

    /// Transfer options whose progress callback moves the bar to `base + done`; `base` is the
    /// bytes of the files already copied. With `set_len`, the callback's total sets the bar's
    /// length (a single transfer whose size was not known up front).
    fn options(&self, c: &Common, name: &str, base: u64, set_len: bool) -> TransferOptions {
        self.bar.set_message(name.to_owned());
        let bar = self.bar.clone();
        TransferOptions {
            chunk_size: c.chunk_mib.max(1) << 20,
            parallelism: c.parallel.max(1),
            verify: c.verify || c.checksum.is_some(),
            checksum: c.checksum.map_or(Checksum::Crc64, Checksum::from),
            progress: None,
        }
        .with_progress(move |done, total| {
            if set_len {
                bar.set_length(total);
            }
            bar.set_position(base + done);
        })
    }

    /// Clears the bar and prints the summary line (unless quiet).
    fn finish(&self, files: u64, bytes: u64, what: &str) {
        self.bar.finish_and_clear();
        if !self.quiet {
            eprintln!("{}", summary(files, bytes, self.start.elapsed(), what));
        }
    }
}

/// `copied 2 files, 1.50 MiB (1572864 bytes) in 0.12 s (12.50 MiB/s)`.
fn summary(files: u64, bytes: u64, elapsed: Duration, what: &str) -> String {
    let s = elapsed.as_secs_f64().max(1e-6);
    format!(
        "copied {files} {what}{}, {} ({bytes} bytes) in {s:.2} s ({}/s)",
        if files == 1 { "" } else { "s" },
        BinaryBytes(bytes),
        BinaryBytes((bytes as f64 / s) as u64)
    )
}

/// Runs a data command (errors carry a [`Failure`] when the cause is known; see [`report`]).
pub fn run(cmd: DataCmd) -> Result<()> {
    // Every command but `cp` names one blob, prefix or container.
    let (url, common) = match &cmd {
        DataCmd::Cp {
            src,
            dst,
            recursive,
            common,
        } => return cp(src, dst, *recursive, common),
        DataCmd::Mb { url, common }
        | DataCmd::Rb { url, common }
        | DataCmd::Cat { url, common }
        | DataCmd::Ls(Under { url, common, .. })
        | DataCmd::Rm(Under { url, common, .. }) => (url, common),
    };
    let u = need_blob(url)?;
    let svc = service(common)?;
    match &cmd {
        DataCmd::Mb { .. } => block_on(svc.create_container(&u.container))
            .map_err(|e| explain(e, &format!("creating {url}"), &u.container)),
        DataCmd::Rb { .. } => block_on(svc.delete_container(&u.container))
            .map_err(|e| explain(e, &format!("deleting {url}"), &u.container)),
        DataCmd::Ls(Under { recursive, .. }) => {
            let page = block_on(svc.list_blobs(
                &u.container,
                &ListOptions {
                    prefix: (!u.path.is_empty()).then(|| u.path.clone()),
                    delimiter: (!recursive).then(|| "/".to_owned()),
                    ..Default::default()
                },
            ))
            .map_err(|e| explain(e, &format!("listing {url}"), &u.container))?;
            let mut out = std::io::stdout().lock();
            for p in &page.prefixes {
                writeln!(out, "{:>12}  blob://{}/{p}", "DIR", u.container)?;
            }
            for b in &page.blobs {
                writeln!(out, "{:>12}  blob://{}/{}", b.size, u.container, b.name)?;
            }
            Ok(())
        }
        DataCmd::Cat { .. } => {
            let mut out = std::io::stdout();
            block_on(transfer::download_to_writer(
                &svc,
                &u.container,
                &u.path,
                &mut out,
                &TransferOptions::default(),
            ))
            .map_err(|e| explain(e, &format!("reading {url}"), &u.container))?;
            out.flush()?;
            Ok(())
        }
        DataCmd::Rm(Under { recursive, .. }) => {
            if !recursive {
                return block_on(svc.delete_blob(&u.container, &u.path, &Default::default()))
                    .map_err(|e| explain(e, &format!("deleting {url}"), &u.container));
            }
            let blobs = list_under(&svc, &u)?;
            for b in blobs {
                let what = format!("deleting blob://{}/{}", u.container, b.name);
                block_on(svc.delete_blob(&u.container, &b.name, &Default::default()))
                    .map_err(|e| explain(e, &what, &u.container))?;
            }
            Ok(())
        }
        DataCmd::Cp { .. } => unreachable!("cp returned above"),
    }
}

/// Every blob under `u.path` (no delimiter); fails with [`Exit::NotFound`] when there is none.
fn list_under(svc: &BlobService, u: &BlobUrl) -> Result<Vec<BlobItem>> {
    let page = block_on(svc.list_blobs(
        &u.container,
        &ListOptions {
            prefix: (!u.path.is_empty()).then(|| u.path.clone()),
            ..Default::default()
        },
    ))
    .map_err(|e| explain(e, &format!("listing {u}"), &u.container))?;
    if page.blobs.is_empty() {
        return Err(fail(
            Exit::NotFound,
            format!(
                "no blobs under {u}; see what is there with `blobring ls blob://{}/`",
                u.container
            ),
        ));
    }
    Ok(page.blobs)
}

/// `rel` of a blob listed under the prefix `prefix`.
fn relative<'a>(name: &'a str, prefix: &str) -> &'a str {
    name[prefix.len().min(name.len())..].trim_start_matches('/')
}

fn cp(src: &str, dst: &str, recursive: bool, c: &Common) -> Result<()> {
    match (parse_blob_url(src)?, parse_blob_url(dst)?) {
        (None, None) => Err(fail(
            Exit::Usage,
            format!(
                "neither {src:?} nor {dst:?} is a blob URL (blob://<container>/<path>); use \
                 cp(1) for local copies"
            ),
        )),
        (None, Some(d)) => cp_up(Path::new(src), &d, recursive, c),
        (Some(s), None) => cp_down(&s, Path::new(dst), recursive, c),
        (Some(s), Some(d)) => cp_blobs(&s, &d, recursive, c),
    }
}

/// local → blob.
fn cp_up(root: &Path, d: &BlobUrl, recursive: bool, c: &Common) -> Result<()> {
    // Check the source before connecting: a typo should not need a daemon to be reported.
    let meta = std::fs::metadata(root).map_err(|e| {
        let exit = match e.kind() {
            std::io::ErrorKind::NotFound => Exit::NotFound,
            std::io::ErrorKind::PermissionDenied => Exit::Denied,
            _ => Exit::Failure,
        };
        fail(exit, format!("cannot read {}: {e}", root.display()))
    })?;
    let files: Vec<(PathBuf, String, u64)> = if recursive {
        if !meta.is_dir() {
            return Err(fail(
                Exit::Usage,
                format!(
                    "{} is not a directory: drop -r to copy one file",
                    root.display()
                ),
            ));
        }
        let mut files = Vec::new();
        walk(root, &mut files)?;
        files.sort();
        files
            .into_iter()
            .map(|f| {
                let rel = f.strip_prefix(root)?.to_string_lossy().replace('\\', "/");
                let len = std::fs::metadata(&f)
                    .with_context(|| format!("reading {}", f.display()))?
                    .len();
                Ok((f, join(&d.path, &rel), len))
            })
            .collect::<Result<_>>()?
    } else {
        if meta.is_dir() {
            return Err(fail(
                Exit::Usage,
                format!(
                    "{} is a directory: pass -r to copy it recursively",
                    root.display()
                ),
            ));
        }
        let name = if d.path.is_empty() || d.path.ends_with('/') {
            let file = root
                .file_name()
                .with_context(|| format!("{} has no file name", root.display()))?;
            join(&d.path, &file.to_string_lossy())
        } else {
            d.path.clone()
        };
        vec![(root.to_owned(), name, meta.len())]
    };
    let svc = service(c)?;
    let total = files.iter().map(|f| f.2).sum();
    let m = Meter::new(Some(total), c.quiet);
    let put = PutOptions {
        conditions: conditions(c),
        ..Default::default()
    };
    let mut done = 0;
    for (file, name, len) in &files {
        let shown = if recursive {
            file.strip_prefix(root)
                .unwrap_or(file)
                .display()
                .to_string()
        } else {
            file.display().to_string()
        };
        let o = m.options(c, &shown, done, false);
        let what = format!(
            "uploading {} to blob://{}/{name}",
            file.display(),
            d.container
        );
        block_on(transfer::upload_from_file(
            &svc,
            &d.container,
            name,
            file,
            &put,
            &o,
        ))
        .map_err(|e| explain(e, &what, &d.container))?;
        done += len;
        m.bar.set_position(done);
    }
    m.finish(files.len() as u64, done, "file");
    Ok(())
}

/// blob → local.
fn cp_down(s: &BlobUrl, root: &Path, recursive: bool, c: &Common) -> Result<()> {
    let svc = service(c)?;
    let (items, total): (Vec<(String, PathBuf)>, Option<u64>) = if recursive {
        let blobs = list_under(&svc, s)?;
        let total = blobs.iter().map(|b| b.size).sum();
        let items = blobs
            .into_iter()
            .map(|b| {
                let to = root.join(relative(&b.name, &s.path));
                (b.name, to)
            })
            .collect();
        (items, Some(total))
    } else {
        if s.path.is_empty() || s.path.ends_with('/') {
            return Err(fail(
                Exit::Usage,
                format!("{s} names no blob: pass -r to copy every blob under a prefix"),
            ));
        }
        let to = if root.is_dir() || dst_is_dir_syntax(root) {
            root.join(s.path.rsplit('/').next().unwrap_or("blob"))
        } else {
            root.to_owned()
        };
        (vec![(s.path.clone(), to)], None)
    };
    if c.no_clobber
        && let Some((_, to)) = items.iter().find(|(_, to)| to.exists())
    {
        return Err(fail(
            Exit::Conflict,
            format!("{} exists and -n/--no-clobber is set", to.display()),
        ));
    }
    let m = Meter::new(total, c.quiet);
    let mut done = 0;
    for (name, to) in &items {
        if let Some(p) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
            if recursive {
                std::fs::create_dir_all(p)
                    .map_err(|e| fail(Exit::Failure, format!("creating {}: {e}", p.display())))?;
            } else if !p.is_dir() {
                return Err(fail(
                    Exit::NotFound,
                    format!(
                        "cannot write {}: directory {} does not exist",
                        to.display(),
                        p.display()
                    ),
                ));
            }
        }
        let shown = if recursive {
            relative(name, &s.path).to_owned()
        } else {
            format!("blob://{}/{name}", s.container)
        };
        let o = m.options(c, &shown, done, !recursive);
        let what = format!(
            "downloading blob://{}/{name} to {}",
            s.container,
            to.display()
        );
        // Into a temporary file next to the target, renamed on success: a failed download
        // leaves no truncated file behind.
        let tmp = partial_path(to);
        let r = block_on(transfer::download_to_file(
            &svc,
            &s.container,
            name,
            &tmp,
            &o,
        ));
        let n = match r {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(explain(e, &what, &s.container));
            }
        };
        std::fs::rename(&tmp, to).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail(Exit::Failure, format!("{what}: renaming into place: {e}"))
        })?;
        done += n;
        m.bar.set_position(done);
    }
    m.finish(items.len() as u64, done, "file");
    Ok(())
}

/// A destination written as a directory (`dir/`, `.`), created or not.
fn dst_is_dir_syntax(p: &Path) -> bool {
    let s = p.as_os_str().to_string_lossy();
    s.ends_with('/') || s == "." || s == ".."
}

/// `<dir>/.<name>.blobring-partial`.
fn partial_path(to: &Path) -> PathBuf {
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "blob".into());
    to.with_file_name(format!(".{name}.blobring-partial"))
}

/// blob → blob (server-side Copy Blob; the bar counts the bytes of copied blobs).
fn cp_blobs(s: &BlobUrl, d: &BlobUrl, recursive: bool, c: &Common) -> Result<()> {
    let svc = service(c)?;
    let pairs: Vec<(String, String, u64)> = if recursive {
        list_under(&svc, s)?
            .into_iter()
            .map(|b| {
                let to = join(&d.path, relative(&b.name, &s.path));
                (b.name, to, b.size)
            })
            .collect()
    } else {
        if s.path.is_empty() || s.path.ends_with('/') {
            return Err(fail(
                Exit::Usage,
                format!("{s} names no blob: pass -r to copy every blob under a prefix"),
            ));
        }
        let p = block_on(svc.head_blob(&s.container, &s.path, &Default::default()))
            .map_err(|e| explain(e, &format!("reading {s}"), &s.container))?;
        let to = if d.path.is_empty() || d.path.ends_with('/') {
            join(&d.path, s.path.rsplit('/').next().unwrap_or(&s.path))
        } else {
            d.path.clone()
        };
        vec![(s.path.clone(), to, p.size)]
    };
    let m = Meter::new(Some(pairs.iter().map(|p| p.2).sum()), c.quiet);
    let mut done = 0;
    for (from, to, size) in &pairs {
        m.bar.set_message(from.clone());
        let what = format!(
            "copying blob://{}/{from} to blob://{}/{to}",
            s.container, d.container
        );
        let status = block_on(svc.copy_blob(&s.container, from, &d.container, to, &conditions(c)))
            .map_err(|e| explain(e, &what, &d.container))?;
        if status != "success" {
            m.bar.suspend(|| {
                eprintln!("blobring: {what}: the service reports copy status {status:?}")
            });
        }
        done += size;
        m.bar.set_position(done);
    }
    m.finish(pairs.len() as u64, done, "blob");
    Ok(())
}

/// `If-None-Match: *` with `--no-clobber`.
fn conditions(c: &Common) -> Conditions {
    if c.no_clobber {
        Conditions::create_only()
    } else {
        Conditions::default()
    }
}

fn join(prefix: &str, rel: &str) -> String {
    if prefix.is_empty() {
        rel.to_owned()
    } else if prefix.ends_with('/') {
        format!("{prefix}{rel}")
    } else {
        format!("{prefix}/{rel}")
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_urls_parse() {
        assert_eq!(parse_blob_url("/tmp/x").unwrap(), None);
        assert_eq!(
            parse_blob_url("blob://c/a/b").unwrap(),
            Some(BlobUrl {
                container: "c".into(),
                path: "a/b".into()
            })
        );
        let e = parse_blob_url("blob:///x").unwrap_err();
        assert_eq!(report(&e).0, Exit::Usage);
        assert_eq!(join("a", "b"), "a/b");
        assert_eq!(join("a/", "b"), "a/b");
        assert_eq!(relative("p/q/r", "p"), "q/r");
        assert_eq!(relative("p/q/r", "p/"), "q/r");
        assert_eq!(
            partial_path(Path::new("/d/x.bin")),
            Path::new("/d/.x.bin.blobring-partial")
        );
    }

    #[test]
    fn summary_line_names_bytes_time_and_rate() {
        assert_eq!(
            summary(1, 3 << 20, Duration::from_secs(2), "file"),
            "copied 1 file, 3.00 MiB (3145728 bytes) in 2.00 s (1.50 MiB/s)"
        );
        assert!(summary(2, 0, Duration::ZERO, "blob").starts_with("copied 2 blobs, 0 B (0 bytes)"));
    }

    #[test]
    fn service_errors_map_to_exit_codes_and_hints() {
        let svc = |status, code: &str| BlobError::Service {
            status,
            code: code.into(),
            message: "m".into(),
            method: "PUT",
            path: "/a/c/b".into(),
        };
        let r = |e| report(&explain(e, "op", "c"));
        let (x, m) = r(svc(404, "ContainerNotFound"));
        assert_eq!(x, Exit::NotFound);
        assert!(m.contains("blobring mb blob://c"), "{m}");
        assert_eq!(r(svc(404, "BlobNotFound")).0, Exit::NotFound);
        let (x, m) = r(svc(403, "AuthenticationFailed"));
        assert_eq!(x, Exit::Denied);
        assert!(m.contains("AZURE_STORAGE_CONNECTION_STRING"), "{m}");
        assert_eq!(r(svc(409, "ContainerAlreadyExists")).0, Exit::Conflict);
        assert_eq!(r(svc(412, "ConditionNotMet")).0, Exit::Conflict);
        assert_eq!(r(svc(400, "InvalidResourceName")).0, Exit::Usage);
        assert_eq!(r(svc(503, "ServerBusy")).0, Exit::Failure);
        let (x, m) = r(BlobError::Transport(ClientError::ConnectionReset));
        assert_eq!(x, Exit::NoDaemon);
        assert!(m.contains("blobring up"), "{m}");
    }
}
