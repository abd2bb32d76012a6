//! Client processes: the bench binary re-executed as `blobring-bench worker`.
//!
//! Protocol (one JSON line each way, plus a start barrier): the parent writes a [`Job`] line on
//! the worker's stdin; the worker sets up (connects, builds its runtime), prints `ready`, waits
//! for a `go` line, does the work, and prints one [`Outcome`] line. CPU (`getrusage`) and
//! wall time cover only the work between `go` and the outcome, so process start-up and
//! connection set-up are not charged to any path. A checksum mismatch or any failure makes
//! the worker exit non-zero with the reason on stderr, which the parent turns into an error.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

use crate::data::BlobRef;

/// The five read paths of the seed experiment.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// (a) `pread` of the store's files: the ceiling for moving the same bytes.
    Pread,
    /// (b) object_store's Azure client over HTTP on loopback to the host's REST front end.
    Http,
    /// (b) over HTTPS (rustls, as Azure Blob is served): what an HTTP client really pays.
    Https,
    /// (g) object_store over HTTP to `blobring gateway`, which carries it over blobring.
    Gateway,
    /// (c) object_store through the blobring connector.
    Connector,
    /// (d) the native SDK's striped download into arena leases.
    Native,
    /// (e) the seed driver's model: one synchronous request at a time per client.
    Sync,
    /// (m) `blobring mount`: `read(2)` of 1 MiB (streams) or 4 KiB `pread` (ranges) of the
    /// blob's file in a FUSE mount of the container (`blobring-bench mount` only).
    Mount,
}

impl PathKind {
    /// All paths, in the order of the report's tables (rows appear only for paths that were
    /// measured).
    pub const ALL: [PathKind; 8] = [
        PathKind::Pread,
        PathKind::Http,
        PathKind::Https,
        PathKind::Gateway,
        PathKind::Connector,
        PathKind::Native,
        PathKind::Sync,
        PathKind::Mount,
    ];

    /// What `seed` runs by default: every path but the gateway (`blobring-bench gateway`
    /// measures that one beside (b) and (c)).
    pub const SEED: [PathKind; 6] = [
        PathKind::Pread,
        PathKind::Http,
        PathKind::Https,
        PathKind::Connector,
        PathKind::Native,
        PathKind::Sync,
    ];

    /// JSON key.
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Pread => "pread",
            PathKind::Http => "http",
            PathKind::Https => "https",
            PathKind::Gateway => "gateway",
            PathKind::Connector => "connector",
            PathKind::Native => "native",
            PathKind::Sync => "sync",
            PathKind::Mount => "mount",
        }
    }

    /// Table label.
    pub fn label(self) -> &'static str {
        match self {
            PathKind::Pread => "(a) pread of the store's files",
            PathKind::Http => "(b) object_store HTTP (loopback REST)",
            PathKind::Https => "(b) object_store HTTPS (loopback REST)",
            PathKind::Gateway => "(g) object_store HTTP via blobring gateway",
            PathKind::Connector => "(c) object_store via blobring connector",
            PathKind::Native => "(d) blobring striped download",
            PathKind::Sync => "(e) blobring, 1 sync request at a time",
            PathKind::Mount => "(m) blobring mount (FUSE), read(2)",
        }
    }
}

/// Where the stack listens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    /// Daemon client socket.
    pub socket: PathBuf,
    /// REST endpoint with the account (`http://127.0.0.1:PORT/devstoreaccount1`).
    pub http: String,
    /// The same over TLS (`https://127.0.0.1:PORT/devstoreaccount1`).
    pub https: String,
    /// The host's TLS certificate (PEM), the only one (b) over HTTPS trusts.
    pub cert: PathBuf,
    /// `blobring gateway` with the account (`http://127.0.0.1:PORT/devstoreaccount1`), when
    /// the stack runs one.
    pub gateway: Option<String>,
    /// Mount point of the container (`blobring-bench mount`).
    #[serde(default)]
    pub mount: Option<std::path::PathBuf>,
}

/// Request shapes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tuning {
    /// Bytes per ranged GET (or per `pread`) on streaming paths.
    pub chunk: u64,
    /// Ranged GETs in flight per client on the concurrent paths (b), (c), (d).
    pub parallel: usize,
    /// Bytes per request on the synchronous path (e).
    pub sync_chunk: u64,
    /// Arena bytes each blobring client asks for.
    pub arena: u64,
}

/// What a worker does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Work {
    /// Read every blob in full, starting with `blobs[first]`, checking each blob's xxh3.
    Stream {
        /// The blobs.
        blobs: Vec<BlobRef>,
        /// Index of the first blob (clients start at different blobs).
        first: usize,
    },
    /// Upload each blob (Put Block + Put Block List in chunks of `tuning.chunk`, `parallel` in
    /// flight), made in memory before the barrier.
    Write {
        /// The blobs, this client's own.
        blobs: Vec<WriteSpec>,
    },
    /// Random aligned ranged reads of `len` bytes from `blob` (which has per-block checksums)
    /// with `depth` in flight, for `millis` or at most `max` requests.
    Ranges {
        /// The blob.
        blob: BlobRef,
        /// Bytes per request (a multiple of [`crate::data::BLOCK`]).
        len: u64,
        /// Requests in flight.
        depth: usize,
        /// Time budget.
        millis: u64,
        /// Request budget.
        max: u64,
        /// RNG seed for the offsets.
        seed: u64,
    },
}

/// A blob one writer uploads: its bytes are [`crate::data::fill`] of `seed`, made before the
/// start barrier (so generating them is not timed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteSpec {
    /// Name in the container.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Seed of its bytes.
    pub seed: u64,
}

/// One worker's job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// Read path.
    pub path: PathKind,
    /// The stack.
    pub endpoint: Endpoint,
    /// Request shapes.
    pub tuning: Tuning,
    /// The work.
    pub work: Work,
}

/// What a worker reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// Body bytes read and verified.
    pub bytes: u64,
    /// Requests (or `pread` calls) made.
    pub requests: u64,
    /// Requests made including warm-up (ranges).
    pub requests_total: u64,
    /// Blobs (stream) or ranges (ranges) whose checksum matched.
    pub verified: u64,
    /// CPU seconds of this process between `go` and the end (`getrusage`).
    pub cpu_s: f64,
    /// Wall seconds between `go` and the end (ranged work: of the measured window, after
    /// warm-up).
    pub wall_s: f64,
    /// Ranged work: the measured window as wall-clock times (ns since the Unix epoch), so
    /// that windows of many processes can be joined ([`union_rate`]).
    #[serde(default)]
    pub window_ns: Option<(u64, u64)>,
    /// Latency histogram in ns (ranges), V2-serialised and base64-encoded.
    pub hist: Option<String>,
}

/// Wall-clock now, in ns since the Unix epoch (comparable across the bench's processes).
pub fn epoch_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The aggregate rate of `f` (bytes, requests) over concurrent workers: their total over the
/// union of their measured windows (first start to last end). Summing each worker's own rate
/// instead overstates it when windows do not overlap — with a thousand processes on two
/// cores, some measure a window of a few milliseconds.
pub fn union_rate(outs: &[Outcome], f: fn(&Outcome) -> u64) -> f64 {
    let total: u64 = outs.iter().map(f).sum();
    let windows = outs.iter().filter_map(|o| o.window_ns);
    let start = windows.clone().map(|w| w.0).min();
    let end = windows.map(|w| w.1).max();
    match (start, end) {
        (Some(a), Some(b)) if b > a => total as f64 / ((b - a) as f64 / 1e9),
        _ => outs.iter().map(|x| f(x) as f64 / x.wall_s.max(1e-9)).sum(),
    }
}

impl Outcome {
    /// The latency histogram, if any.
    pub fn histogram(&self) -> Result<Option<Histogram<u64>>> {
        let Some(h) = &self.hist else {
            return Ok(None);
        };
        let raw = B64.decode(h).context("decode a worker's histogram")?;
        let h = Deserializer::new()
            .deserialize(&mut raw.as_slice())
            .map_err(|e| anyhow::anyhow!("deserialize a worker's histogram: {e:?}"))?;
        Ok(Some(h))
    }
}

/// Serialises a histogram for [`Outcome::hist`].
pub fn encode_histogram(h: &Histogram<u64>) -> Result<String> {
    let mut v = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut v)
        .map_err(|e| anyhow::anyhow!("serialize a histogram: {e:?}"))?;
    Ok(B64.encode(v))
}

/// The worker side: runs one [`Job`] read from stdin (the hidden `worker` subcommand).
pub fn worker_main() -> Result<()> {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let line = lines.next().context("no job on stdin")??;
    let job: Job = serde_json::from_str(&line).context("parse the job")?;
    let mut reader = crate::paths::Reader::new(&job)?;
    // A writer's bytes, made before the barrier.
    let data: Vec<Vec<u8>> = match &job.work {
        Work::Write { blobs } => blobs
            .iter()
            .map(|b| {
                let mut v = vec![0u8; b.size as usize];
                crate::data::fill(&mut v, b.seed);
                v
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    match lines.next() {
        Some(Ok(l)) if l.trim() == "go" => {}
        _ => bail!("expected `go` on stdin"),
    }
    let (t0, c0) = (Instant::now(), crate::machine::self_cpu_seconds());
    let mut o = match &job.work {
        Work::Write { blobs } => reader.write(&job, blobs, &data)?,
        _ => reader.run(&job)?,
    };
    if o.wall_s == 0.0 {
        // Ranged work measures its own window (after warm-up).
        o.wall_s = t0.elapsed().as_secs_f64();
    }
    o.cpu_s = crate::machine::self_cpu_seconds() - c0;
    writeln!(out, "{}", serde_json::to_string(&o)?)?;
    out.flush()?;
    Ok(())
}

/// Raises the soft `RLIMIT_NOFILE` to at least `need` (three pipes per worker) within the hard
/// limit, or says how to raise that.
fn ensure_fds(need: u64) -> Result<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let cur = lim.current.unwrap_or(u64::MAX);
    if cur >= need {
        return Ok(());
    }
    let hard = lim.maximum.unwrap_or(u64::MAX);
    if hard < need {
        bail!(
            "{need} file descriptors are needed for the workers' pipes but RLIMIT_NOFILE's hard \
             limit is {hard}: raise it (ulimit -Hn, or LimitNOFILE) or run fewer clients"
        );
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(need),
            maximum: lim.maximum,
        },
    )
    .with_context(|| format!("raise RLIMIT_NOFILE to {need}"))
}

/// Worker processes started and waiting at the barrier; killed and reaped on drop.
pub struct Fleet {
    children: Vec<(Child, ChildStdin, BufReader<ChildStdout>)>,
}

impl Fleet {
    /// Starts one worker per job and waits until every one is `ready` (connected).
    pub fn spawn(jobs: &[Job]) -> Result<Fleet> {
        let exe = std::env::current_exe().context("locate the bench executable")?;
        ensure_fds(3 * jobs.len() as u64 + 256)?;
        let mut fleet = Fleet {
            children: Vec::with_capacity(jobs.len()),
        };
        for job in jobs {
            let mut c = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("start a worker ({})", exe.display()))?;
            let mut stdin = c.stdin.take().context("worker stdin")?;
            let stdout = BufReader::new(c.stdout.take().context("worker stdout")?);
            // Keep the child in the fleet before any fallible write, so drop reaps it.
            let line = serde_json::to_string(job)?;
            let w = writeln!(stdin, "{line}").and_then(|_| stdin.flush());
            fleet.children.push((c, stdin, stdout));
            w.context("send a worker its job")?;
        }
        for (i, (c, _, out)) in fleet.children.iter_mut().enumerate() {
            let mut l = String::new();
            out.read_line(&mut l)
                .context("read a worker's ready line")?;
            if l.trim() != "ready" {
                let st = c.wait().ok();
                bail!("worker {i} failed to start (exit {st:?}); its stderr says why");
            }
        }
        Ok(fleet)
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Whether the fleet is empty.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Pids of the workers.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(c, _, _)| c.id()).collect()
    }

    /// Releases every worker and collects their outcomes; returns them with the wall time
    /// from `go` to the last outcome.
    pub fn go(mut self) -> Result<(Vec<Outcome>, f64)> {
        let t0 = Instant::now();
        for (_, stdin, _) in &mut self.children {
            writeln!(stdin, "go").and_then(|_| stdin.flush())?;
        }
        let mut outs = Vec::with_capacity(self.children.len());
        for (i, (c, _, out)) in self.children.iter_mut().enumerate() {
            let mut l = String::new();
            out.read_line(&mut l).context("read a worker's outcome")?;
            if l.trim().is_empty() {
                let st = c.wait().ok();
                bail!("worker {i} failed (exit {st:?}); its stderr above says why");
            }
            outs.push(serde_json::from_str(&l).context("parse a worker's outcome")?);
        }
        let wall = t0.elapsed().as_secs_f64();
        for (c, _, _) in &mut self.children {
            let st = c.wait()?;
            if !st.success() {
                bail!("a worker exited with {st} after reporting");
            }
        }
        Ok((outs, wall))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (c, _, _) in &mut self.children {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}
