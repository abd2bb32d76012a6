#![forbid(unsafe_code)]
//! `blobring-soak`: a bounded mixed Blob workload through blobringd that checks every byte it
//! reads against what was acknowledged as written.
//!
//! Workers (`--clients` connections × `--threads-per-client` threads, one sequential worker
//! per thread) each own a disjoint set of `--keys` blob names (`w<N>/k<M>` in container
//! `--container`), so a worker's model of its keys is exact: no other writer touches them.
//! Operations: Put Blob (new names and overwrites, 0 B – `--max-size`), block uploads (Put Block
//! × 1–4 + Put Block List), whole GETs, ranged GETs, HEAD, List Blobs and Delete Blob.
//!
//! Contents are generated from a 64-bit seed (a counter-based PRNG, so any range can be
//! recomputed), so the model keeps `(seed, len)` per version rather than the bytes. Per key it
//! keeps the set of versions a read may legally return:
//! - an acknowledged write (or delete) replaces the set with its version;
//! - a write that ended in an ambiguous error (timeout, ENODEV, connection reset: it may or may
//!   not have run, possibly late) adds its version as "unsettled": it may appear at any time
//!   until `--settle-ms` after it failed, and stays possible until a later read or an
//!   acknowledged write started after it settled decides;
//! - a write refused with 503 ServerBusy did not run (the host injects it before executing).
//!
//! A read that returns none of the legal versions counts as *lost* bytes (the blob or its bytes
//! are missing although every legal version has them) or *corrupt* bytes (bytes differ from
//! every legal version, e.g. a partially written blob). A listing that shows a name or size no
//! legal version explains counts as a *list mismatch*. After `--duration`, every key is read
//! back once more (transient errors retried for up to `--verify-secs`).
//!
//! Deadlines: every SDK call must end within its deadline plus `--slack-ms`, the deadline
//! being (timeout × (retries + 1) + the longest backoffs) per request it makes; later calls
//! count as *late*. Errors are classified: `timeout`, `no_device`, `reset` (daemon gone,
//! connect refused), `busy` (503) and `other`. Without `--expect-faults` every error is
//! unexpected; with it only `other` is.
//!
//! Without `--socket`, a fresh stack (`blobring-host --store fs:` under /dev/shm and
//! `blobring-test-daemon`, both next to this binary) is started and stopped at the end.
//!
//! Prints progress to stderr every `--progress-secs` and a summary; the last stdout line is a
//! JSON report. Exits 1 if any byte was lost or corrupt, any listing mismatched, any call was
//! late, or an unexpected error occurred.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use blobring::blob::{
    AccountConfig, BlobError, BlobService, BlockRef, Conditions, GetOptions, ListOptions,
    PutOptions, RetryPolicy, block_id,
};
use blobring::transfer::{TransferOptions, download_to_vec};
use blobring::{Client, ClientError, Error, block_on, errno};
use blobring_tests::XorShift;
use clap::Parser;

/// Command line.
#[derive(Debug, Clone, Parser)]
#[command(name = "blobring-soak")]
struct Args {
    /// Daemon socket of a running stack; without it a fresh stack is started.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Seconds of mixed workload (then the final read-back).
    #[arg(long, default_value_t = 120.0)]
    duration: f64,
    /// Client connections (each its own `Client`, so its own region in the daemon).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Worker threads sharing each connection.
    #[arg(long, default_value_t = 2)]
    threads_per_client: usize,
    /// Seed of the workload (contents, sizes, operation mix).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Blob names per worker.
    #[arg(long, default_value_t = 12)]
    keys: usize,
    /// Largest blob written (bytes); puts above 8 MiB go through the SDK's block upload.
    #[arg(long, default_value_t = 10 << 20)]
    max_size: u64,
    /// Per-request deadline (ms) given to the SDK.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// SDK retries of idempotent requests (default: the SDK's policy, 6).
    #[arg(long, default_value_t = 6)]
    retries: u32,
    /// Faults are being injected: timeouts, ENODEV, resets and 503s are expected errors.
    #[arg(long)]
    expect_faults: bool,
    /// Slack (ms) over a call's deadline before it counts as late.
    #[arg(long, default_value_t = 2_000)]
    slack_ms: u64,
    /// How long (ms) after an ambiguous write failed it may still take effect.
    #[arg(long, default_value_t = 5_000)]
    settle_ms: u64,
    /// Container (created if missing; default `soak-<pid>`).
    #[arg(long)]
    container: Option<String>,
    /// Progress line interval on stderr (seconds; 0 = none).
    #[arg(long, default_value_t = 10)]
    progress_secs: u64,
    /// Bound (seconds) of the final read-back of each key (transient errors are retried).
    #[arg(long, default_value_t = 60)]
    verify_secs: u64,
    /// Pause (ms) after an expected error before the next operation.
    #[arg(long, default_value_t = 20)]
    error_pause_ms: u64,
}

// ------------------------------------------------------------------- contents

/// splitmix64 of `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Bytes `range` of the content with `seed` (counter-based: word `i` is `mix(seed ^ i·γ)`).
fn content(seed: u64, start: u64, end: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity((end - start) as usize);
    let mut w = start / 8;
    while (w * 8) < end {
        let word = mix(seed ^ w.wrapping_mul(0xd1b5_4a32_d192_ed03)).to_le_bytes();
        let lo = (w * 8).max(start) - w * 8;
        let hi = ((w + 1) * 8).min(end) - w * 8;
        out.extend_from_slice(&word[lo as usize..hi as usize]);
        w += 1;
    }
    out
}

/// Bytes of `got` that differ from `want` (missing or extra bytes count).
fn diff_bytes(got: &[u8], want: &[u8]) -> u64 {
    let common = got.iter().zip(want).filter(|(a, b)| a != b).count() as u64;
    common + got.len().abs_diff(want.len()) as u64
}

// ------------------------------------------------------------------- model

/// One version of a blob: its content seed and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Body {
    seed: u64,
    len: u64,
}

/// `None` = the blob does not exist.
type Version = Option<Body>;

/// What reads of one key may legally return.
#[derive(Debug)]
struct KeyState {
    /// Settled possibilities.
    possible: Vec<Version>,
    /// Ambiguous writes that may still take effect, with the time they settle.
    unsettled: Vec<(Version, Instant)>,
}

impl KeyState {
    fn new() -> Self {
        Self {
            possible: vec![None],
            unsettled: Vec::new(),
        }
    }

    fn tick(&mut self, now: Instant) {
        let (done, keep): (Vec<_>, Vec<_>) = self.unsettled.drain(..).partition(|u| u.1 <= now);
        self.unsettled = keep;
        for (v, _) in done {
            if !self.possible.contains(&v) {
                self.possible.push(v);
            }
        }
    }

    fn candidates(&mut self) -> Vec<Version> {
        self.tick(Instant::now());
        let mut c = self.possible.clone();
        for (v, _) in &self.unsettled {
            if !c.contains(v) {
                c.push(*v);
            }
        }
        c
    }

    /// A write acknowledged; it started at `started`.
    fn acked(&mut self, v: Version, started: Instant) {
        // Ambiguous writes settled before this one started are overwritten by it.
        self.unsettled.retain(|u| u.1 > started);
        self.possible = vec![v];
    }

    /// A write of unknown outcome.
    fn ambiguous(&mut self, v: Version, settle: Duration) {
        self.unsettled.push((v, Instant::now() + settle));
    }

    /// A read returned `v` (already checked to be a candidate).
    fn observed(&mut self, v: Version) {
        self.tick(Instant::now());
        if self.unsettled.is_empty() {
            self.possible = vec![v];
        }
    }

    /// A present version to aim ranged reads at.
    fn some_body(&mut self) -> Option<Body> {
        self.candidates().into_iter().flatten().next()
    }
}

// ------------------------------------------------------------------- counters

const OPS: [&str; 8] = [
    "put",
    "overwrite",
    "block_upload",
    "get",
    "range_get",
    "head",
    "list",
    "delete",
];
const CLASSES: [&str; 5] = ["timeout", "no_device", "reset", "busy", "other"];

#[derive(Clone, Copy)]
enum Op {
    Put,
    Overwrite,
    BlockUpload,
    Get,
    RangeGet,
    Head,
    List,
    Delete,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    Timeout,
    NoDevice,
    Reset,
    Busy,
    Other,
}

fn classify(e: &BlobError) -> Class {
    match e {
        BlobError::Service { status: 503, .. } => Class::Busy,
        BlobError::Transport(t) => match t {
            ClientError::TimedOut(_) => Class::Timeout,
            ClientError::Errno(e, _) if *e == errno::ENODEV => Class::NoDevice,
            ClientError::Errno(e, _) if *e == errno::ETIMEDOUT => Class::Timeout,
            ClientError::ConnectionReset
            | ClientError::Connect(_)
            | ClientError::Connection(Error::DaemonGone) => Class::Reset,
            _ => Class::Other,
        },
        _ => Class::Other,
    }
}

#[derive(Default)]
struct Counters {
    ops: [AtomicU64; 8],
    errors: [AtomicU64; 5],
    unexpected: AtomicU64,
    bytes_written: AtomicU64,
    bytes_read: AtomicU64,
    lost_bytes: AtomicU64,
    corrupt_bytes: AtomicU64,
    list_mismatches: AtomicU64,
    late_calls: AtomicU64,
    max_call_ms: AtomicU64,
    /// Failures kept for the report (first 20).
    failures: Mutex<Vec<String>>,
}

impl Counters {
    fn fail(&self, msg: String) {
        eprintln!("soak: {msg}");
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() < 20 {
            f.push(msg);
        }
    }
    fn get(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }
    fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

// ------------------------------------------------------------------- worker

struct Worker {
    id: usize,
    svc: BlobService,
    container: String,
    keys: Vec<KeyState>,
    rng: XorShift,
    args: Arc<Args>,
    c: Arc<Counters>,
    /// Successful calls since this worker's last error (the report's minimum shows every
    /// worker recovered after the last fault).
    ok_since_error: u64,
    errors_seen: u64,
    uploads: u64,
}

enum Read {
    Absent,
    Bytes(Vec<u8>),
}

impl Worker {
    fn name(&self, k: usize) -> String {
        format!("w{}/k{k:03}", self.id)
    }

    /// The service and container of this worker's calls, as copies: a call's future holds
    /// them while [`Worker::call`] borrows the worker.
    fn target(&self) -> (BlobService, String) {
        (self.svc.clone(), self.container.clone())
    }

    /// Budget of one request: every attempt's deadline plus the longest backoffs between.
    fn per_request(&self) -> Duration {
        let p = RetryPolicy::default();
        let mut backoff = Duration::ZERO;
        for a in 0..self.args.retries {
            backoff += p.base.saturating_mul(1 << a.min(16)).min(p.max_backoff);
        }
        Duration::from_millis(self.args.timeout_ms) * (self.args.retries + 1) + backoff
    }

    /// Runs one SDK call of `requests` requests, checks its deadline and classifies its error.
    async fn call<T>(
        &mut self,
        what: &str,
        requests: u32,
        f: impl Future<Output = Result<T, BlobError>>,
    ) -> Result<T, (Class, BlobError)> {
        let t0 = Instant::now();
        let r = f.await;
        let took = t0.elapsed();
        self.c
            .max_call_ms
            .fetch_max(took.as_millis() as u64, Ordering::Relaxed);
        let deadline = self.per_request() * requests + Duration::from_millis(self.args.slack_ms);
        if took > deadline {
            Counters::add(&self.c.late_calls, 1);
            self.c.fail(format!(
                "{what} took {took:?}, over its deadline + slack {deadline:?} ({:?})",
                r.as_ref().err()
            ));
        }
        match r {
            Ok(v) => {
                self.ok_since_error += 1;
                Ok(v)
            }
            Err(e) => {
                let class = classify(&e);
                if class == Class::Other && e.status().is_some() {
                    // A service answer (404, 412, 416…): the request was carried.
                    self.ok_since_error += 1;
                }
                Err((class, e))
            }
        }
    }

    /// Counts an error that is not a service answer the caller handles.
    fn error(&mut self, what: &str, class: Class, e: &BlobError) {
        self.errors_seen += 1;
        self.ok_since_error = 0;
        Counters::add(&self.c.errors[class as usize], 1);
        if class == Class::Other || !self.args.expect_faults {
            Counters::add(&self.c.unexpected, 1);
            self.c.fail(format!("{what}: unexpected error: {e}"));
        }
        std::thread::sleep(Duration::from_millis(self.args.error_pause_ms));
    }

    fn pick_len(&mut self) -> u64 {
        let max = self.args.max_size;
        let r = self.rng.below(100);
        let cap = match r {
            0..60 => 16 << 10,
            60..90 => 256 << 10,
            90..99 => 2 << 20,
            _ => max,
        };
        self.rng.below(cap.min(max) + 1)
    }

    async fn run(&mut self, until: Instant) {
        while Instant::now() < until {
            let k = self.rng.below(self.keys.len() as u64) as usize;
            match self.rng.below(100) {
                0..25 => self.put(k).await,
                25..33 => self.block_upload(k).await,
                33..50 => self.get(k).await,
                50..72 => self.range_get(k).await,
                72..80 => self.head(k).await,
                80..87 => self.list().await,
                _ => self.delete(k).await,
            }
        }
    }

    fn count(&self, op: Op) {
        Counters::add(&self.c.ops[op as usize], 1);
    }

    fn write_failed(&mut self, what: &str, k: usize, v: Version, class: Class, e: &BlobError) {
        self.error(what, class, e);
        if class != Class::Busy {
            let settle = Duration::from_millis(self.args.settle_ms);
            self.keys[k].ambiguous(v, settle);
        }
    }

    async fn put(&mut self, k: usize) {
        let body = Body {
            seed: self.rng.next_u64(),
            len: self.pick_len(),
        };
        let data = content(body.seed, 0, body.len);
        let existed = self.keys[k].candidates().iter().any(Option::is_some);
        let name = self.name(k);
        let what = format!("put {name} ({} B)", body.len);
        let requests = if body.len > 8 << 20 {
            body.len.div_ceil(4 << 20) as u32 + 1
        } else {
            1
        };
        let started = Instant::now();
        let (svc, container) = self.target();
        let r = self
            .call(
                &what,
                requests,
                svc.put_blob(&container, &name, &data, &PutOptions::default()),
            )
            .await;
        match r {
            Ok(_) => {
                self.keys[k].acked(Some(body), started);
                Counters::add(&self.c.bytes_written, body.len);
                self.count(if existed { Op::Overwrite } else { Op::Put });
            }
            Err((class, e)) => self.write_failed(&what, k, Some(body), class, &e),
        }
    }

    async fn block_upload(&mut self, k: usize) {
        let nblocks = 1 + self.rng.below(4);
        let len = self.pick_len().min(self.args.max_size);
        let body = Body {
            seed: self.rng.next_u64(),
            len,
        };
        let name = self.name(k);
        let what = format!("block upload {name} ({len} B in {nblocks} blocks)");
        self.uploads += 1;
        let upload = format!("{:016x}", self.rng.next_u64());
        let (svc, container) = self.target();
        let mut ids = Vec::new();
        let started = Instant::now();
        for b in 0..nblocks {
            let (s, e) = (len * b / nblocks, len * (b + 1) / nblocks);
            let id = block_id(&upload, b);
            let data = content(body.seed, s, e);
            let crc = b % 2 == 0;
            let r = self
                .call(
                    &what,
                    1,
                    svc.put_block(&container, &name, &id, &data, crc, None),
                )
                .await;
            if let Err((class, e)) = r {
                // Staged blocks are invisible until committed: the blob is unchanged.
                self.error(&what, class, &e);
                return;
            }
            ids.push((BlockRef::Latest, id));
        }
        let r = self
            .call(
                &what,
                1,
                svc.put_block_list(&container, &name, &ids, &PutOptions::default()),
            )
            .await;
        match r {
            Ok(_) => {
                self.keys[k].acked(Some(body), started);
                Counters::add(&self.c.bytes_written, len);
                self.count(Op::BlockUpload);
            }
            Err((class, e)) => self.write_failed(&what, k, Some(body), class, &e),
        }
    }

    /// Reads the whole blob `k` (`None` = a transient error, already counted).
    async fn read_whole(&mut self, k: usize, what: &str) -> Option<Read> {
        let name = self.name(k);
        let (svc, container) = self.target();
        let big = self.keys[k]
            .candidates()
            .iter()
            .flatten()
            .any(|b| b.len > 4 << 20);
        let r = if big {
            let opts = TransferOptions::default();
            let requests = (self.args.max_size.div_ceil(4 << 20) + 2) as u32;
            self.call(
                what,
                requests,
                download_to_vec(&svc, &container, &name, &opts),
            )
            .await
        } else {
            self.call(what, 2, async {
                let g = svc
                    .get_blob(&container, &name, None, &GetOptions::default())
                    .await?;
                g.to_vec()
            })
            .await
        };
        match r {
            Ok(v) => Some(Read::Bytes(v)),
            Err((_, e)) if e.is_not_found() => Some(Read::Absent),
            // The blob changed between the parts of a multi-request read (a late write).
            Err((_, e)) if e.is_condition_not_met() => None,
            Err((class, e)) => {
                self.error(what, class, &e);
                None
            }
        }
    }

    /// A read found blob `k` absent: fine if no blob is legal, else its bytes are lost.
    fn absent(&mut self, k: usize, what: &str) {
        let cands = self.keys[k].candidates();
        if cands.contains(&None) {
            self.keys[k].observed(None);
            return;
        }
        let lost = cands.iter().flatten().map(|b| b.len).min().unwrap_or(0);
        Counters::add(&self.c.lost_bytes, lost.max(1));
        self.c.fail(format!(
            "{what}: 404 for an acknowledged blob ({lost} B lost; legal: {cands:?})"
        ));
    }

    /// Checks a whole-blob read against the model; returns whether it matched.
    fn check_whole(&mut self, k: usize, what: &str, got: &Read) -> bool {
        let cands = self.keys[k].candidates();
        match got {
            Read::Absent => {
                self.absent(k, what);
                cands.contains(&None)
            }
            Read::Bytes(b) => {
                Counters::add(&self.c.bytes_read, b.len() as u64);
                let mut best = u64::MAX;
                for v in cands.iter().flatten() {
                    let d = if v.len == b.len() as u64 {
                        diff_bytes(b, &content(v.seed, 0, v.len))
                    } else {
                        diff_bytes(b, &content(v.seed, 0, v.len.min(b.len() as u64)))
                            + v.len.abs_diff(b.len() as u64)
                    };
                    if d == 0 {
                        self.keys[k].observed(Some(*v));
                        return true;
                    }
                    best = best.min(d);
                }
                if best == u64::MAX {
                    best = b.len() as u64;
                }
                if b.is_empty() || cands.iter().flatten().all(|v| v.len > b.len() as u64) {
                    // Shorter than every legal version: bytes went missing.
                    let lost = best.min(
                        cands.iter().flatten().map(|v| v.len).min().unwrap_or(0) - b.len() as u64,
                    );
                    Counters::add(&self.c.lost_bytes, lost.max(1));
                    Counters::add(&self.c.corrupt_bytes, best - lost.min(best));
                } else {
                    Counters::add(&self.c.corrupt_bytes, best);
                }
                self.c.fail(format!(
                    "{what}: read {} B matching no legal version ({best} B differ; legal: {cands:?})",
                    b.len()
                ));
                false
            }
        }
    }

    async fn get(&mut self, k: usize) {
        let what = format!("get {}", self.name(k));
        if let Some(r) = self.read_whole(k, &what).await {
            self.check_whole(k, &what, &r);
            self.count(Op::Get);
        }
    }

    async fn range_get(&mut self, k: usize) {
        let target = self.keys[k].some_body();
        let len = target.map_or(4096, |b| b.len.max(1));
        let start = self.rng.below(len);
        let end = start + 1 + self.rng.below((len - start).min(1 << 20));
        let name = self.name(k);
        let what = format!("range get {name} [{start}, {end})");
        let (svc, container) = self.target();
        let r = self
            .call(&what, 1, async {
                let g = svc
                    .get_range(&container, &name, start..end, &GetOptions::default(), None)
                    .await?;
                Ok((g.properties.size, g.to_vec()?))
            })
            .await;
        let cands = self.keys[k].candidates();
        match r {
            Ok((size, bytes)) => {
                Counters::add(&self.c.bytes_read, bytes.len() as u64);
                let ok = cands.iter().flatten().find(|v| {
                    v.len == size
                        && start < v.len
                        && bytes == content(v.seed, start, end.min(v.len))
                });
                if let Some(v) = ok.copied() {
                    self.keys[k].observed(Some(v));
                } else {
                    let mut best = bytes.len() as u64;
                    for v in cands.iter().flatten().filter(|v| start < v.len) {
                        best =
                            best.min(diff_bytes(&bytes, &content(v.seed, start, end.min(v.len))));
                    }
                    if cands.iter().flatten().all(|v| v.len == size) && best == 0 {
                        best = 1;
                    }
                    Counters::add(&self.c.corrupt_bytes, best.max(1));
                    self.c.fail(format!(
                        "{what}: {} B of a {size}-B blob match no legal version (legal: {cands:?})",
                        bytes.len()
                    ));
                }
            }
            Err((_, e)) if e.is_not_found() => self.absent(k, &what),
            Err((_, e)) if e.status() == Some(416) => {
                if !cands.iter().flatten().any(|v| v.len <= start) {
                    Counters::add(&self.c.lost_bytes, end - start);
                    self.c.fail(format!("{what}: 416 although every legal version covers the start (legal: {cands:?})"));
                }
            }
            Err((class, e)) => {
                self.error(&what, class, &e);
                return;
            }
        }
        self.count(Op::RangeGet);
    }

    async fn head(&mut self, k: usize) {
        let name = self.name(k);
        let what = format!("head {name}");
        let (svc, container) = self.target();
        let r = self
            .call(
                &what,
                1,
                svc.head_blob(&container, &name, &GetOptions::default()),
            )
            .await;
        let cands = self.keys[k].candidates();
        match r {
            Ok(p) => {
                if !cands.iter().flatten().any(|v| v.len == p.size) {
                    Counters::add(&self.c.list_mismatches, 1);
                    self.c.fail(format!(
                        "{what}: size {} matches no legal version (legal: {cands:?})",
                        p.size
                    ));
                }
            }
            Err((_, e)) if e.is_not_found() => {
                if !cands.contains(&None) {
                    Counters::add(&self.c.list_mismatches, 1);
                    self.c.fail(format!(
                        "{what}: 404 for an acknowledged blob (legal: {cands:?})"
                    ));
                }
            }
            Err((class, e)) => {
                self.error(&what, class, &e);
                return;
            }
        }
        self.count(Op::Head);
    }

    async fn list(&mut self) {
        let prefix = format!("w{}/", self.id);
        let what = format!("list {prefix}");
        let (svc, container) = self.target();
        let opts = ListOptions {
            prefix: Some(prefix.clone()),
            // Small pages, so paging is exercised too.
            max_results: Some(5),
            ..ListOptions::default()
        };
        let pages = (self.keys.len() / 5 + 2) as u32;
        let r = self
            .call(&what, pages, svc.list_blobs(&container, &opts))
            .await;
        let page = match r {
            Ok(p) => p,
            Err((class, e)) => {
                self.error(&what, class, &e);
                return;
            }
        };
        let mut seen = vec![None; self.keys.len()];
        for b in &page.blobs {
            let idx = b
                .name
                .strip_prefix(&prefix)
                .and_then(|n| n.strip_prefix('k'))
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&i| i < self.keys.len() && b.name == self.name(i));
            match idx {
                Some(i) => seen[i] = Some(b.size),
                None => {
                    Counters::add(&self.c.list_mismatches, 1);
                    self.c
                        .fail(format!("{what}: a blob nobody wrote is listed: {}", b.name));
                }
            }
        }
        for (i, s) in seen.into_iter().enumerate() {
            let cands = self.keys[i].candidates();
            let ok = match s {
                None => cands.contains(&None),
                Some(size) => cands.iter().flatten().any(|v| v.len == size),
            };
            if !ok {
                Counters::add(&self.c.list_mismatches, 1);
                self.c.fail(format!(
                    "{what}: {} listed as {s:?} (size), legal: {cands:?}",
                    self.name(i)
                ));
            }
        }
        self.count(Op::List);
    }

    async fn delete(&mut self, k: usize) {
        let name = self.name(k);
        let what = format!("delete {name}");
        let (svc, container) = self.target();
        let started = Instant::now();
        let r = self
            .call(
                &what,
                1,
                svc.delete_blob(&container, &name, &Conditions::default()),
            )
            .await;
        match r {
            Ok(()) => self.keys[k].acked(None, started),
            Err((_, e)) if e.is_not_found() => self.absent(k, &what),
            Err((class, e)) => {
                self.write_failed(&what, k, None, class, &e);
                return;
            }
        }
        self.count(Op::Delete);
    }

    /// Reads every key back, retrying transient errors for up to `--verify-secs`.
    async fn verify_all(&mut self) -> u64 {
        let mut verified = 0;
        for k in 0..self.keys.len() {
            let what = format!("final read-back of {}", self.name(k));
            let until = Instant::now() + Duration::from_secs(self.args.verify_secs);
            loop {
                if let Some(r) = self.read_whole(k, &what).await {
                    self.check_whole(k, &what, &r);
                    verified += 1;
                    break;
                }
                if Instant::now() > until {
                    Counters::add(&self.c.unexpected, 1);
                    self.c.fail(format!(
                        "{what}: no answer within {} s",
                        self.args.verify_secs
                    ));
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        verified
    }
}

// ------------------------------------------------------------------- main

/// Runs the workload against `socket`; returns the JSON report.
fn soak(args: Arc<Args>, socket: PathBuf) -> anyhow::Result<serde_json::Value> {
    let container = args
        .container
        .clone()
        .unwrap_or_else(|| format!("soak-{}", std::process::id()));
    let account = AccountConfig::emulator();
    let retry = RetryPolicy {
        max_retries: args.retries,
        ..RetryPolicy::default()
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut services = Vec::new();
    for i in 0..args.clients {
        let client = Client::connect(&socket)
            .with_context(|| format!("client {i}: connecting to {}", socket.display()))?;
        services.push(
            BlobService::new(client, account.clone())
                .with_retry(retry.clone())
                .with_timeout(timeout),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match block_on(services[0].create_container(&container)) {
            Ok(()) => break,
            Err(e) if e.is_already_exists() => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("soak: creating {container}: {e} (retrying)");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e).with_context(|| format!("creating container {container}")),
        }
    }
    let c = Arc::new(Counters::default());
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(args.duration);
    let done = Arc::new(AtomicBool::new(false));
    let progress = (args.progress_secs > 0).then(|| {
        let (c, done, every) = (c.clone(), done.clone(), args.progress_secs);
        std::thread::spawn(move || {
            let mut next = Instant::now() + Duration::from_secs(every);
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if Instant::now() >= next {
                    next += Duration::from_secs(every);
                    let ops: u64 = c.ops.iter().map(Counters::get).sum();
                    let errs: u64 = c.errors.iter().map(Counters::get).sum();
                    eprintln!(
                        "soak: {:>6.1} s  ops {ops}  errors {errs}  written {} MiB  read {} MiB  lost {} B  corrupt {} B",
                        t0.elapsed().as_secs_f64(),
                        Counters::get(&c.bytes_written) >> 20,
                        Counters::get(&c.bytes_read) >> 20,
                        Counters::get(&c.lost_bytes),
                        Counters::get(&c.corrupt_bytes),
                    );
                }
            }
        })
    });
    let mut threads = Vec::new();
    let workers = args.clients * args.threads_per_client;
    for w in 0..workers {
        let mut worker = Worker {
            id: w,
            svc: services[w % args.clients].clone(),
            container: container.clone(),
            keys: (0..args.keys).map(|_| KeyState::new()).collect(),
            rng: XorShift::new(mix(args.seed ^ mix(w as u64 + 1))),
            args: args.clone(),
            c: c.clone(),
            ok_since_error: 0,
            errors_seen: 0,
            uploads: 0,
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("soak-{w}"))
                .spawn(move || {
                    block_on(worker.run(until));
                    let verified = block_on(worker.verify_all());
                    (worker.ok_since_error, worker.errors_seen, verified)
                })
                .context("spawning a worker")?,
        );
    }
    let mut min_ok_after_last_error = u64::MAX;
    let mut workers_with_errors = 0;
    let mut verified = 0;
    for t in threads {
        let (ok, errs, v) = t.join().map_err(|_| anyhow::anyhow!("a worker panicked"))?;
        verified += v;
        if errs > 0 {
            workers_with_errors += 1;
            min_ok_after_last_error = min_ok_after_last_error.min(ok);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    let ops: serde_json::Map<String, serde_json::Value> = OPS
        .iter()
        .zip(&c.ops)
        .map(|(n, a)| ((*n).to_owned(), Counters::get(a).into()))
        .collect();
    let errors: serde_json::Map<String, serde_json::Value> = CLASSES
        .iter()
        .zip(&c.errors)
        .map(|(n, a)| ((*n).to_owned(), Counters::get(a).into()))
        .collect();
    let failures = c.failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(serde_json::json!({
        "seconds": (secs * 10.0).round() / 10.0,
        "workers": workers,
        "clients": args.clients,
        "ops_total": c.ops.iter().map(Counters::get).sum::<u64>(),
        "ops": ops,
        "errors_total": c.errors.iter().map(Counters::get).sum::<u64>(),
        "errors": errors,
        "unexpected_errors": Counters::get(&c.unexpected),
        "bytes_written": Counters::get(&c.bytes_written),
        "bytes_read": Counters::get(&c.bytes_read),
        "lost_bytes": Counters::get(&c.lost_bytes),
        "corrupt_bytes": Counters::get(&c.corrupt_bytes),
        "list_mismatches": Counters::get(&c.list_mismatches),
        "late_calls": Counters::get(&c.late_calls),
        "max_call_ms": Counters::get(&c.max_call_ms),
        "keys_verified": verified,
        "workers_with_errors": workers_with_errors,
        "min_ok_after_last_error": if workers_with_errors > 0 { min_ok_after_last_error } else { 0 },
        "failures": failures,
    }))
}

fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    if args.clients == 0 || args.threads_per_client == 0 || args.keys == 0 {
        bail!("--clients, --threads-per-client and --keys must be at least 1");
    }
    if args.keys > 999 {
        bail!("--keys must be at most 999");
    }
    // Our own stack unless told where one runs (kept alive until the report is printed).
    let (stack, dir, socket) = match &args.socket {
        Some(s) => (None, None, s.clone()),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("brsoak")
                .tempdir_in("/dev/shm")
                .context("creating a scratch dir in /dev/shm")?;
            let daemon = blobring_tests::sibling_bin("blobring-test-daemon");
            let stack = blobring_tests::HostStack::start(
                daemon.to_str().context("daemon path is not UTF-8")?,
                dir.path(),
                &[],
                &[],
            );
            let socket = stack.daemon.socket.clone();
            (Some(stack), Some(dir), socket)
        }
    };
    let report = soak(args.clone(), socket);
    // Stop our stack before exiting (process::exit skips destructors).
    drop(stack);
    drop(dir);
    let report = report?;
    let r = &report;
    eprintln!(
        "soak: {} ops in {} s from {} workers ({}); errors {} ({}), unexpected {}; written {} MiB, read {} MiB; lost {} B, corrupt {} B, list mismatches {}, late calls {}, keys verified {}",
        r["ops_total"],
        r["seconds"],
        r["workers"],
        r["ops"],
        r["errors_total"],
        r["errors"],
        r["unexpected_errors"],
        r["bytes_written"].as_u64().unwrap_or(0) >> 20,
        r["bytes_read"].as_u64().unwrap_or(0) >> 20,
        r["lost_bytes"],
        r["corrupt_bytes"],
        r["list_mismatches"],
        r["late_calls"],
        r["keys_verified"],
    );
    println!("{report}");
    let bad = [
        "lost_bytes",
        "corrupt_bytes",
        "list_mismatches",
        "late_calls",
        "unexpected_errors",
    ]
    .iter()
    .any(|k| r[*k] != 0);
    if bad {
        std::process::exit(1);
    }
    Ok(())
}
