//! Striped large transfers: parallel ranged GETs delivered in order, and parallel Put Block +
//! Put Block List uploads with memory bounded by the arena.
//!
//! A download keeps up to [`TransferOptions::parallelism`] chunk requests in flight, spread
//! round-robin over every queue pair (so every daemon worker and host channel takes part), and
//! hands chunks to the sink strictly in blob order. Memory: at most `parallelism` arena buffers
//! of `chunk_size` bytes, and never more than half the arena.
//!
//! Defaults (`chunk_size` 4 MiB, `parallelism` 8) by measurement on the development box
//! (2 cores shared with other builds, so every figure is noisy; 1 GiB blob, fs store, 2
//! daemon workers, 128 MiB arena; `tests/tests/sdk_throughput.rs` with
//! `BLOBRING_BENCH_CHUNK_MIB` / `BLOBRING_BENCH_PARALLEL` / `BLOBRING_BENCH_ONLY_SDK`).
//! Zero-copy stream (CRC64 of each chunk, no destination buffer), three interleaved runs each:
//! 2 MiB × 4: 1.3 / 2.4 / 5.2 GB/s; 4 MiB × 4: 3.3 / 4.4 / 4.4; **4 MiB × 8: 4.9 / 5.1 / 4.2**;
//! 8 MiB × 8: 6.2 / 4.4 / 5.1. A one-pass sweep of 1–16 MiB × 2–16 ranged 2.9–6.9 GB/s with
//! no pattern beyond noise except that 1 MiB chunks and 16 MiB × 8+ (which no longer fit half
//! the arena) were slower. 4 MiB × 8 is at the top within the noise, needs only 32 MiB of
//! arena (8 MiB × 8 needs 64) and keeps each range within Azure's 4 MiB limit for per-range
//! CRC64. [`download_to_vec`] reached 0.9–1.6 GB/s in the same runs whatever the knobs: it is
//! limited by copying into (and page-faulting in) a fresh 1 GiB buffer on one thread —
//! splitting the copy over 4 threads measured no faster on 2 cores — so prefer the
//! [`Download`] stream when the bytes need not end up in one buffer. In a small arena the
//! chunk shrinks rather than the parallelism (see [`TransferOptions::parallelism`]).
//!
//! **Checksums** ([`TransferOptions::verify`], [`TransferOptions::checksum`]): with
//! [`Checksum::Crc64`] (the default) every range of a download is checked against the CRC64
//! the service computes for it, and every block of an upload carries one the service checks.
//! With [`Checksum::Md5`] the same happens with MD5, and besides: an upload stores the MD5 of
//! the whole blob with it (`x-ms-blob-content-md5` on Put Block List, like `azcopy
//! --put-md5`), and a download of a blob that has a stored MD5 hashes every byte in order and
//! fails at the end (withholding the last chunk) if the whole blob does not match it. The
//! service computes a range's checksum from the bytes it stores, so only that whole-blob
//! comparison catches bytes changed at rest.
//!
//! ```no_run
//! # async fn demo(svc: blobring::blob::BlobService) -> Result<(), blobring::blob::BlobError> {
//! use blobring::transfer::{TransferOptions, download_to_file};
//! let opts = TransferOptions::default().with_progress(|done, total| eprintln!("{done}/{total}"));
//! download_to_file(&svc, "data", "big.bin", "/tmp/big.bin".as_ref(), &opts).await?;
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::io::{Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use blobring_proto::header::X_MS_BLOB_TYPE;

use md5::Digest as _;

pub use crate::blob::Checksum;
use crate::blob::{BlobError, BlobService, BlockRef, Body, PutOptions, block_id};
use crate::timer::sleep;
use crate::{Lease, Pending};

impl BlobService {
    /// Put Blob (a block blob); returns the new ETag. Data too large for one request is
    /// staged in blocks and committed ([`upload_from_slice`]), with the same result.
    ///
    /// Defined here rather than in `blob`, so that the Blob layer does not depend on the
    /// striped transfers built on top of it.
    pub async fn put_blob(
        &self,
        container: &str,
        blob: &str,
        data: &[u8],
        opts: &PutOptions,
    ) -> Result<String, BlobError> {
        if data.len() as u64 > (self.client().arena_len() / 2).min(crate::MAX_REQUEST_DATA) {
            return Box::pin(upload_from_slice(
                self,
                container,
                blob,
                data,
                opts,
                &TransferOptions::default(),
            ))
            .await;
        }
        let mut s = crate::blob::Spec::new("PUT", self.path(container, Some(blob)))
            .h(X_MS_BLOB_TYPE, "BlockBlob");
        self.put_headers(&mut s, data, opts);
        let a = self.send(&s, Body::Bytes(data), 0, None).await?;
        Ok(crate::blob::etag(&a.head.headers))
    }
}

/// A progress callback: `(bytes done, total bytes)`.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Tuning of a striped transfer.
#[derive(Clone)]
pub struct TransferOptions {
    /// Bytes per ranged GET / Put Block (default 4 MiB).
    pub chunk_size: u64,
    /// Requests in flight (default 8). At most half the arena is used: in a small arena the
    /// chunk is first shrunk so that at least `min(parallelism, 4)` requests stay in flight
    /// (the daemon's default 16 MiB arena gives about 2 MiB × 4), then the parallelism.
    pub parallelism: usize,
    /// Verify each chunk with [`TransferOptions::checksum`] (downloads: the range's checksum
    /// asked of the service and compared, so chunks are at most 4 MiB; uploads: each Put
    /// Block's checksum checked by the service). A mismatch fails with
    /// [`BlobError::Integrity`].
    pub verify: bool,
    /// The checksum `verify` uses (default [`Checksum::Crc64`]). [`Checksum::Md5`] also
    /// stores the whole blob's MD5 on upload and checks it on download (see the module docs).
    pub checksum: Checksum,
    /// Called after each chunk.
    pub progress: Option<Progress>,
}

impl std::fmt::Debug for TransferOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferOptions")
            .field("chunk_size", &self.chunk_size)
            .field("parallelism", &self.parallelism)
            .field("verify", &self.verify)
            .field("checksum", &self.checksum)
            .finish_non_exhaustive()
    }
}

impl Default for TransferOptions {
    fn default() -> Self {
        Self {
            chunk_size: 4 << 20,
            parallelism: 8,
            verify: false,
            checksum: Checksum::Crc64,
            progress: None,
        }
    }
}

impl TransferOptions {
    /// Sets the progress callback.
    pub fn with_progress(mut self, f: impl Fn(u64, u64) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    /// Verifies every chunk with `checksum` (sets [`TransferOptions::verify`] and
    /// [`TransferOptions::checksum`]).
    pub fn with_checksum(mut self, checksum: Checksum) -> Self {
        self.verify = true;
        self.checksum = checksum;
        self
    }

    /// The checksum in use: `checksum` if `verify`.
    fn check(&self) -> Option<Checksum> {
        self.verify.then_some(self.checksum)
    }

    /// The chunk size and parallelism actually used with an arena of `arena` bytes: at most
    /// half the arena in flight, and in a small arena smaller chunks rather than fewer
    /// requests (at least `min(parallelism, 4)` in flight; e.g. the daemon's default 16 MiB
    /// arena gives ~2 MiB × 4 instead of 4 MiB × 1).
    fn fit(&self, arena: u64) -> (u64, usize) {
        const GRAIN: u64 = 64 << 10;
        // Per request besides the data: the head + response buffer, and alignment.
        const OVERHEAD: u64 = 16 << 10;
        let budget = arena / 2;
        let keep = (self.parallelism.clamp(1, 4)) as u64;
        let per = (budget / keep).saturating_sub(OVERHEAD) / GRAIN * GRAIN;
        let cap = per.clamp(GRAIN, crate::MAX_REQUEST_DATA);
        let chunk = self.chunk_size.clamp(GRAIN, cap);
        let n = (budget / (chunk + OVERHEAD)).max(1) as usize;
        (chunk, self.parallelism.clamp(1, n))
    }
}

/// `spec` submitted by `svc` once arena space is free.
fn start_within(
    svc: &BlobService,
    spec: &crate::blob::Spec,
    recv: u64,
    queue: Option<u32>,
) -> Starting {
    let (svc, spec) = (svc.clone(), spec.clone());
    Box::pin(async move { svc.start_within(&spec, Body::None, recv, queue).await })
}

/// One in-order chunk of a download.
#[derive(Debug)]
pub struct Chunk {
    /// Offset in the blob.
    pub offset: u64,
    /// The bytes (`len` at the start of the lease).
    pub data: Option<Lease>,
    /// Length.
    pub len: usize,
}

impl Chunk {
    /// Copies the chunk into `dst` (`dst.len() == len`).
    pub fn copy_to(&self, dst: &mut [u8]) -> Result<(), BlobError> {
        if let Some(d) = &self.data {
            d.read(0, dst)?;
        }
        Ok(())
    }

    /// The chunk as [`bytes::Bytes`] (one copy).
    pub fn to_bytes(&self) -> Result<bytes::Bytes, BlobError> {
        Ok(match &self.data {
            Some(d) => d.to_bytes(self.len)?,
            None => bytes::Bytes::new(),
        })
    }

    /// The chunk as [`bytes::Bytes`] without a copy ([`Lease::into_bytes`]): its arena
    /// buffer returns when the last clone drops, so a consumer holding many chunks holds
    /// arena space (and stalls the download) until it lets go.
    pub fn into_bytes(self) -> Result<bytes::Bytes, BlobError> {
        Ok(match self.data {
            Some(d) => d.into_bytes(self.len)?,
            None => bytes::Bytes::new(),
        })
    }
}

/// One ranged GET of a download: its range, request and attempt number (`pending` is `None`
/// while a retry waits out its backoff, or while `starting` awaits arena space).
struct InflightGet {
    start: u64,
    end: u64,
    spec: crate::blob::Spec,
    pending: Option<Pending>,
    starting: Option<Starting>,
    attempt: u32,
}

/// A checksum being computed over bytes given in order.
enum Running {
    Crc64(crc64fast_nvme::Digest),
    Md5(md5::Md5),
}

impl Running {
    fn new(c: Checksum) -> Self {
        match c {
            Checksum::Crc64 => Running::Crc64(crc64fast_nvme::Digest::new()),
            Checksum::Md5 => Running::Md5(md5::Md5::new()),
        }
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            Running::Crc64(d) => d.write(b),
            Running::Md5(d) => d.update(b),
        }
    }

    /// The checksum, Base64 (as [`Checksum::of`] gives it).
    fn finish(self) -> String {
        match self {
            Running::Crc64(d) => B64.encode(d.sum64().to_le_bytes()),
            Running::Md5(d) => B64.encode(d.finalize()),
        }
    }
}

/// The whole-blob MD5 check of a download: the MD5 of the bytes `..next` so far, and the
/// `Content-MD5` stored with the blob.
struct WholeMd5 {
    running: Running,
    next: u64,
    expected: String,
}

/// A backoff sleep (boxed so that [`Download`] stays `Unpin`, `Send` and `Sync`).
type Backoff = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// A ranged GET awaiting arena space before it is submitted.
type Starting = Pin<Box<dyn Future<Output = Result<Pending, BlobError>> + Send + Sync>>;

/// An in-order striped download: call [`Download::next_chunk`] until `None`, or use it as a
/// [`futures_util::Stream`] of zero-copy [`bytes::Bytes`] chunks in blob order.
///
/// ```no_run
/// # async fn demo(svc: blobring::blob::BlobService) -> Result<(), blobring::blob::BlobError> {
/// use blobring::transfer::{Download, TransferOptions};
/// use futures_util::TryStreamExt;
/// let mut d = Download::start(&svc, "data", "big.bin", &TransferOptions::default()).await?;
/// let mut total = 0;
/// while let Some(bytes) = d.try_next().await? {
///     total += bytes.len(); // `bytes` points into the arena; dropping it frees the space
/// }
/// assert_eq!(total as u64, d.size());
/// # Ok(()) }
/// ```
pub struct Download {
    svc: BlobService,
    container: String,
    blob: String,
    etag: String,
    size: u64,
    next: u64,
    done: u64,
    chunk: u64,
    parallel: usize,
    check: Option<Checksum>,
    whole: Option<WholeMd5>,
    progress: Option<Progress>,
    inflight: VecDeque<InflightGet>,
    backoff: Option<Backoff>,
    queue_rr: u32,
    n_queues: u32,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("blob", &self.blob)
            .field("size", &self.size)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Download {
    /// Starts a download of the whole blob (one HEAD for its size, ETag and stored MD5; every
    /// range is pinned to that ETag with `If-Match`, so a concurrent overwrite fails with 412
    /// instead of mixing versions).
    pub async fn start(
        svc: &BlobService,
        container: &str,
        blob: &str,
        opts: &TransferOptions,
    ) -> Result<Self, BlobError> {
        let props = svc.head_blob(container, blob, &Default::default()).await?;
        Self::with_properties(svc, container, blob, &props, opts)
    }

    /// Like [`Download::start`] for a blob whose size and ETag are already known (from a HEAD
    /// or a listing): no request is made until the first chunk is asked for. With
    /// [`Checksum::Md5`] the whole blob is checked against `props.content_md5` if it is set
    /// (a listing does not carry it).
    pub fn with_properties(
        svc: &BlobService,
        container: &str,
        blob: &str,
        props: &crate::blob::BlobProperties,
        opts: &TransferOptions,
    ) -> Result<Self, BlobError> {
        let (chunk, parallel) = opts.fit(svc.client().arena_len());
        let chunk = if opts.verify {
            chunk.min(4 << 20)
        } else {
            chunk
        };
        Ok(Self {
            svc: svc.clone(),
            container: container.into(),
            blob: blob.into(),
            etag: props.etag.clone(),
            size: props.size,
            next: 0,
            done: 0,
            chunk,
            parallel,
            check: opts.check(),
            whole: props
                .content_md5
                .clone()
                .filter(|_| opts.check() == Some(Checksum::Md5))
                .map(|expected| WholeMd5 {
                    running: Running::new(Checksum::Md5),
                    next: 0,
                    expected,
                }),
            progress: opts.progress.clone(),
            inflight: VecDeque::new(),
            backoff: None,
            queue_rr: 0,
            n_queues: svc.client().n_queues()?,
        })
    }

    /// Size of the blob.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Limits a download that has not started to the bytes `r` of the blob (the connector's
    /// and the Python package's large ranged GETs, `blobring mount`'s prefetch from the
    /// reader's offset);
    /// [`Download::size`] then reports `r.end`. Chunks still start at multiples of the chunk
    /// size from `r.start`.
    pub fn restrict(&mut self, r: std::ops::Range<u64>) {
        // Part of the blob: nothing to compare its stored MD5 with.
        self.whole = None;
        self.next = r.start;
        self.size = r.end.min(self.size);
    }

    /// Starts ranges until `parallel` are in flight. Space is only tried, never waited for,
    /// while this download holds buffers: the ones it would wait on may be its own completed
    /// ranges, which only the consumer frees. Holding none, it waits (within the service's
    /// timeout) for space others hold.
    fn refill(&mut self) -> Result<(), BlobError> {
        // A range waiting for space goes first: none after it may take the space it waits for.
        if let Some(f) = self.inflight.front_mut()
            && f.starting.is_some()
        {
            match self.svc.try_start(&f.spec, f.end - f.start, None)? {
                Some(p) => {
                    f.starting = None;
                    f.pending = Some(p);
                }
                None => return Ok(()),
            }
        }
        while self.inflight.len() < self.parallel && self.next < self.size {
            let end = (self.next + self.chunk).min(self.size);
            let q = Some(self.queue_rr % self.n_queues.max(1));
            let spec = self.spec(self.next..end);
            let (pending, starting) = match self.svc.try_start(&spec, end - self.next, q)? {
                Some(p) => (Some(p), None),
                None if self.inflight.is_empty() => (
                    None,
                    Some(start_within(&self.svc, &spec, end - self.next, q)),
                ),
                None => break,
            };
            self.queue_rr = self.queue_rr.wrapping_add(1);
            self.inflight.push_back(InflightGet {
                start: self.next,
                end,
                spec,
                pending,
                starting,
                attempt: 0,
            });
            self.next = end;
        }
        Ok(())
    }

    fn spec(&self, r: std::ops::Range<u64>) -> crate::blob::Spec {
        self.svc.get_spec(
            &self.container,
            &self.blob,
            &r,
            Some(&self.etag),
            self.check,
        )
    }

    /// Compares the MD5 of the whole blob, when every byte has passed through
    /// [`Download::accept`] in order, with the one stored with the blob (once).
    fn check_whole(&mut self) -> Result<(), BlobError> {
        let Some(w) = self.whole.take() else {
            return Ok(());
        };
        if w.next != self.size {
            return Ok(());
        }
        let actual = w.running.finish();
        if actual == w.expected {
            return Ok(());
        }
        Err(BlobError::Integrity {
            what: format!(
                "{}/{} as a whole: the MD5 of its {} bytes against the Content-MD5 stored with \
                 it (each range matched the MD5 the service computed for it, so the stored \
                 bytes changed after their MD5 was stored, or a wrong MD5 was stored)",
                self.container, self.blob, self.size
            ),
            expected: w.expected,
            actual,
        })
    }

    /// The end of the download: `None`, or the failure of the whole-blob check.
    fn end(&mut self) -> Poll<Option<Result<Chunk, BlobError>>> {
        Poll::Ready(self.check_whole().err().map(Err))
    }

    /// The next chunk in blob order, or `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Result<Chunk, BlobError>> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    /// Polls for the next chunk in blob order (`Ready(None)` at the end): the poll form of
    /// [`Download::next_chunk`]. Retryable failures of a range are retried (with the
    /// service's backoff) before the error is returned.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Chunk, BlobError>>> {
        if let Err(e) = self.refill() {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            if let Some(b) = &mut self.backoff {
                std::task::ready!(b.as_mut().poll(cx));
                self.backoff = None;
                let Some(f) = self.inflight.front_mut() else {
                    return self.end();
                };
                let recv = f.end - f.start;
                match self.svc.try_start(&f.spec, recv, None) {
                    Ok(Some(p)) => f.pending = Some(p),
                    // Later ranges keep their buffers until delivered after this one: wait
                    // for space others hold (within the service's timeout).
                    Ok(None) => f.starting = Some(start_within(&self.svc, &f.spec, recv, None)),
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
            }
            let Some(f) = self.inflight.front_mut() else {
                return self.end();
            };
            if let Some(st) = f.starting.as_mut() {
                let started = std::task::ready!(st.as_mut().poll(cx));
                f.starting = None;
                match started {
                    Ok(p) => f.pending = Some(p),
                    Err(e) => {
                        self.inflight.pop_front();
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
            let Some(p) = f.pending.as_mut() else {
                return Poll::Ready(Some(Err(BlobError::Protocol(
                    "download polled without a request in flight".into(),
                ))));
            };
            let c = std::task::ready!(Pin::new(p).poll(cx));
            f.pending = None;
            let r = self.svc.finish(&f.spec, c);
            if let Err(e) = &r
                && BlobService::should_retry(e)
                && f.attempt < self.svc.retry_policy().max_retries
            {
                let wait = self.svc.retry_policy().backoff(f.attempt);
                f.attempt += 1;
                self.backoff = Some(Box::pin(sleep(wait)));
                continue;
            }
            let f = self.inflight.pop_front().expect("front checked above");
            return Poll::Ready(Some(self.accept(f.start, f.end, r)));
        }
    }

    fn accept(
        &mut self,
        start: u64,
        end: u64,
        r: Result<crate::blob::Answer, BlobError>,
    ) -> Result<Chunk, BlobError> {
        let a = r?;
        if a.len as u64 != end - start {
            return Err(BlobError::Protocol(format!(
                "range {start}..{end} of {} returned {} bytes",
                self.blob, a.len
            )));
        }
        if let Some(check) = self.check {
            let want = a
                .head
                .headers
                .get(check.header())
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            // A copy: the bytes checked are the bytes hashed.
            let data = match &a.data {
                Some(d) => d.to_vec(a.len)?,
                None => Vec::new(),
            };
            let got = check.of(&data);
            match want {
                Some(w) if w == got => {}
                w => {
                    return Err(BlobError::Integrity {
                        what: format!(
                            "{}/{} bytes {start}..{end} ({check:?} of the range, computed by the \
                             service)",
                            self.container, self.blob
                        ),
                        expected: w.unwrap_or_else(|| format!("(no {} header)", check.header())),
                        actual: got,
                    });
                }
            }
            if let Some(w) = &mut self.whole {
                if w.next == start {
                    w.running.update(&data);
                    w.next = end;
                } else {
                    // A range was skipped (its failure returned): no whole to compare.
                    self.whole = None;
                }
            }
        }
        self.done += a.len as u64;
        if let Some(p) = &self.progress {
            p(self.done, self.size);
        }
        if self.next >= self.size && self.inflight.is_empty() {
            // The last chunk: withheld if the whole blob does not match its stored MD5.
            self.check_whole()?;
        }
        self.refill()?;
        Ok(Chunk {
            offset: start,
            data: a.data,
            len: a.len,
        })
    }
}

/// The chunks in blob order as zero-copy [`bytes::Bytes`] ([`Chunk::into_bytes`]); an empty
/// blob yields no item. Holding many items holds their arena space: the download stalls
/// until the consumer drops them.
impl futures_util::Stream for Download {
    type Item = Result<bytes::Bytes, BlobError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_chunk(cx)
            .map(|o| o.map(|r| r.and_then(Chunk::into_bytes)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self
            .size
            .saturating_sub(self.next)
            .div_ceil(self.chunk.max(1)) as usize
            + self.inflight.len();
        (left, Some(left))
    }
}

/// Downloads a whole blob into `buf` (which must be exactly the blob's size); returns it.
pub async fn download_into(
    svc: &BlobService,
    container: &str,
    blob: &str,
    buf: &mut [u8],
    opts: &TransferOptions,
) -> Result<u64, BlobError> {
    let mut d = Download::start(svc, container, blob, opts).await?;
    if d.size() != buf.len() as u64 {
        return Err(BlobError::Config(format!(
            "the buffer holds {} bytes but {container}/{blob} is {} bytes",
            buf.len(),
            d.size()
        )));
    }
    while let Some(c) = d.next_chunk().await {
        let c = c?;
        c.copy_to(&mut buf[c.offset as usize..c.offset as usize + c.len])?;
    }
    Ok(d.size())
}

/// Downloads a whole blob into a vector.
pub async fn download_to_vec(
    svc: &BlobService,
    container: &str,
    blob: &str,
    opts: &TransferOptions,
) -> Result<Vec<u8>, BlobError> {
    let mut d = Download::start(svc, container, blob, opts).await?;
    let mut v = vec![0u8; d.size() as usize];
    while let Some(c) = d.next_chunk().await {
        let c = c?;
        c.copy_to(&mut v[c.offset as usize..c.offset as usize + c.len])?;
    }
    Ok(v)
}

/// Downloads a whole blob into any writer, in order; returns the bytes written.
pub async fn download_to_writer(
    svc: &BlobService,
    container: &str,
    blob: &str,
    w: &mut (dyn Write + Send),
    opts: &TransferOptions,
) -> Result<u64, BlobError> {
    let mut d = Download::start(svc, container, blob, opts).await?;
    let mut buf = Vec::new();
    while let Some(c) = d.next_chunk().await {
        let c = c?;
        buf.resize(c.len, 0);
        c.copy_to(&mut buf)?;
        w.write_all(&buf).map_err(|e| BlobError::Io {
            what: "writing downloaded data".into(),
            source: e,
        })?;
    }
    Ok(d.size())
}

/// Downloads a whole blob into a file (created or truncated).
pub async fn download_to_file(
    svc: &BlobService,
    container: &str,
    blob: &str,
    path: &Path,
    opts: &TransferOptions,
) -> Result<u64, BlobError> {
    let f = std::fs::File::create(path).map_err(file_error("creating", path))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let n = download_to_writer(svc, container, blob, &mut w, opts).await?;
    w.flush().map_err(file_error("writing", path))?;
    Ok(n)
}

/// The error of `doing` (`"opening"`, …) the file at `path`.
fn file_error(doing: &str, path: &Path) -> impl FnOnce(std::io::Error) -> BlobError {
    let what = format!("{doing} {}", path.display());
    move |source| BlobError::Io { what, source }
}

/// Uploads everything `r` yields as a block blob: `r` is read in `chunk_size` blocks that go
/// through [`upload_from_stream`] (parallel Put Block, at most `parallelism` in flight, so
/// memory is bounded by the arena whatever the size, then Put Block List). Each block is read
/// once into its own buffer, copied once into the arena, and kept (without a copy) until its
/// Put Block succeeds in case it must be sent again. `total` (if known) feeds the progress
/// callback. Returns the ETag.
pub async fn upload_from_reader(
    svc: &BlobService,
    container: &str,
    blob: &str,
    r: &mut (dyn Read + Send),
    total: Option<u64>,
    put: &PutOptions,
    opts: &TransferOptions,
) -> Result<String, BlobError> {
    let chunk = opts.fit(svc.client().arena_len()).0 as usize;
    let mut eof = false;
    let blocks = std::iter::from_fn(move || {
        if eof {
            return None;
        }
        let mut buf = vec![0u8; chunk];
        let mut filled = 0;
        while filled < chunk {
            match r.read(&mut buf[filled..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(k) => filled += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eof = true;
                    return Some(Err(e));
                }
            }
        }
        buf.truncate(filled);
        (filled > 0).then(|| Ok(bytes::Bytes::from(buf)))
    });
    let blocks = futures_util::stream::iter(blocks);
    upload_from_stream(svc, container, blob, blocks, total, put, opts).await
}

/// A Put Block of an upload in flight.
struct InflightBlock {
    /// Its request, to judge the completion by.
    spec: crate::blob::Spec,
    /// Its block id (sent again as it is if the block must be retried).
    id: String,
    pending: Pending,
    /// The bytes it carries, kept by reference in case it must be sent again.
    parts: Vec<bytes::Bytes>,
    len: usize,
}

/// Completes one Put Block of an upload (which frees its buffers); on a retryable failure the
/// block is sent again through the retrying path. Returns the block's length.
async fn finish_block(
    svc: &BlobService,
    container: &str,
    blob: &str,
    b: InflightBlock,
    check: Option<Checksum>,
) -> Result<u64, BlobError> {
    if let Err(e) = svc.finish(&b.spec, b.pending.await) {
        if !BlobService::should_retry(&e) {
            return Err(e);
        }
        svc.put_block_with(container, blob, &b.id, &b.parts.concat(), check, None)
            .await?;
    }
    Ok(b.len as u64)
}

/// Uploads everything `stream` yields as a block blob: the items are packed into
/// `chunk_size` blocks straight in arena buffers (one copy, from the items into the arena),
/// sent as parallel Put Block (at most `parallelism` in flight, so memory is bounded by the
/// arena whatever the stream's length or item sizes), then Put Block List. Items may have any
/// size, including empty. `total` (if known) feeds the progress callback. Returns the ETag.
/// With [`Checksum::Md5`] the whole stream's MD5 is stored with the blob (and must equal
/// `put.content_md5` if that is given). A stream error aborts the upload (the uncommitted
/// blocks are discarded by the service).
///
/// ```no_run
/// # async fn demo(svc: blobring::blob::BlobService) -> Result<(), blobring::blob::BlobError> {
/// use blobring::transfer::{TransferOptions, upload_from_stream};
/// let parts = vec![Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"hello ")),
///                  Ok(bytes::Bytes::from_static(b"world"))];
/// upload_from_stream(&svc, "data", "greeting", futures_util::stream::iter(parts), Some(11),
///     &Default::default(), &TransferOptions::default()).await?;
/// # Ok(()) }
/// ```
pub async fn upload_from_stream<S, E>(
    svc: &BlobService,
    container: &str,
    blob: &str,
    stream: S,
    total: Option<u64>,
    put: &PutOptions,
    opts: &TransferOptions,
) -> Result<String, BlobError>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (chunk, parallel) = opts.fit(svc.client().arena_len());
    let chunk = chunk as usize;
    let check = opts.check();
    let mut whole = (check == Some(Checksum::Md5)).then(|| Running::new(Checksum::Md5));
    let n_queues = svc.client().n_queues()?.max(1);
    let upload = uuid::Uuid::new_v4().simple().to_string();
    let mut source = StreamSource {
        stream: std::pin::pin!(stream),
        carry: None,
        eof: false,
    };
    let mut ids = Vec::new();
    let mut inflight: VecDeque<InflightBlock> = VecDeque::new();
    let (mut done, mut n, mut eof) = (0u64, 0u64, false);
    let client = svc.client();
    let progress = |done: u64| {
        if let Some(p) = &opts.progress {
            p(done, total.unwrap_or(done));
        }
    };
    loop {
        while !eof && inflight.len() < parallel {
            // Space is awaited only when no block of this upload is in flight: a finished
            // block keeps its buffer until it is completed below, so waiting then could be
            // waiting on this upload itself.
            let lease = match client.try_alloc(chunk as u64)? {
                Some(l) => l,
                None if !inflight.is_empty() => break,
                None => {
                    client
                        .alloc_async_within(chunk as u64, svc.timeout())
                        .await?
                }
            };
            let mut sum = check.map(Running::new);
            let mut sums = [&mut sum, &mut whole];
            let (filled, parts) =
                source
                    .fill(&lease, chunk, &mut sums)
                    .await
                    .map_err(|e| match e {
                        StreamFill::Stream(e) => BlobError::Io {
                            what: format!("reading the stream uploaded to {container}/{blob}"),
                            source: std::io::Error::other(e),
                        },
                        StreamFill::Lease(e) => e.into(),
                    })?;
            eof = source.eof;
            if filled == 0 {
                break;
            }
            let id = block_id(&upload, n);
            let (spec, mut req) = svc.put_block_request(
                container,
                blob,
                &id,
                lease,
                filled,
                check.zip(sum.map(Running::finish)),
                Some((n % u64::from(n_queues)) as u32),
            );
            // Its head buffer: complete this upload's own blocks until one fits, then wait
            // for space others hold.
            while !client.try_reserve_head(&mut req)? {
                match inflight.pop_front() {
                    Some(b) => {
                        done += finish_block(svc, container, blob, b, check).await?;
                        progress(done);
                    }
                    None => client.reserve_head_within(&mut req, svc.timeout()).await?,
                }
            }
            inflight.push_back(InflightBlock {
                spec,
                id: id.clone(),
                pending: client.submit(req)?,
                parts,
                len: filled,
            });
            ids.push((BlockRef::Uncommitted, id));
            n += 1;
        }
        let Some(b) = inflight.pop_front() else {
            break;
        };
        done += finish_block(svc, container, blob, b, check).await?;
        progress(done);
    }
    commit_checked(svc, container, blob, &ids, put, whole).await
}

/// A stream being cut into blocks: what is left of the last item, and whether it has ended.
struct StreamSource<'a, S> {
    stream: Pin<&'a mut S>,
    carry: Option<bytes::Bytes>,
    eof: bool,
}

impl<S, E> StreamSource<'_, S>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>>,
{
    /// Copies up to `chunk` bytes of the stream into `lease`, feeding them to each running
    /// checksum in `sums`; returns the bytes copied (fewer at the end of the stream) and the
    /// items they came from, kept (reference counts, no copy) in case the block must be sent
    /// again.
    async fn fill(
        &mut self,
        lease: &Lease,
        chunk: usize,
        sums: &mut [&mut Option<Running>],
    ) -> Result<(usize, Vec<bytes::Bytes>), StreamFill<E>> {
        use futures_util::StreamExt as _;
        let (mut filled, mut parts) = (0, Vec::new());
        while filled < chunk {
            let b = match self.carry.take() {
                Some(b) => b,
                None => match self.stream.next().await {
                    Some(Ok(b)) => b,
                    Some(Err(e)) => return Err(StreamFill::Stream(e)),
                    None => {
                        self.eof = true;
                        break;
                    }
                },
            };
            let take = b.len().min(chunk - filled);
            lease.write(filled, &b[..take]).map_err(StreamFill::Lease)?;
            for s in sums.iter_mut().filter_map(|s| s.as_mut()) {
                s.update(&b[..take]);
            }
            if take < b.len() {
                self.carry = Some(b.slice(take..));
            }
            parts.push(b.slice(..take));
            filled += take;
        }
        Ok((filled, parts))
    }
}

/// Why a block could not be filled from a stream.
enum StreamFill<E> {
    Stream(E),
    Lease(crate::ClientError),
}

/// Commits the staged blocks `ids`, first checking the MD5 of the whole upload (`whole`, when
/// one was kept) against [`PutOptions::content_md5`] and defaulting it.
async fn commit_checked(
    svc: &BlobService,
    container: &str,
    blob: &str,
    ids: &[(BlockRef, String)],
    put: &PutOptions,
    whole: Option<Running>,
) -> Result<String, BlobError> {
    let Some(w) = whole else {
        return svc.put_block_list(container, blob, ids, put).await;
    };
    let actual = w.finish();
    if let Some(expected) = &put.content_md5
        && *expected != actual
    {
        return Err(BlobError::Integrity {
            what: format!(
                "the bytes uploaded to {container}/{blob} (their MD5 against \
                 PutOptions::content_md5; nothing was committed)"
            ),
            expected: expected.clone(),
            actual,
        });
    }
    let put = PutOptions {
        content_md5: Some(actual),
        ..put.clone()
    };
    svc.put_block_list(container, blob, ids, &put).await
}

/// Uploads a buffer (see [`upload_from_reader`]).
pub async fn upload_from_slice(
    svc: &BlobService,
    container: &str,
    blob: &str,
    data: &[u8],
    put: &PutOptions,
    opts: &TransferOptions,
) -> Result<String, BlobError> {
    let mut r = data;
    upload_from_reader(
        svc,
        container,
        blob,
        &mut r,
        Some(data.len() as u64),
        put,
        opts,
    )
    .await
}

/// Uploads a file (see [`upload_from_reader`]).
pub async fn upload_from_file(
    svc: &BlobService,
    container: &str,
    blob: &str,
    path: &Path,
    put: &PutOptions,
    opts: &TransferOptions,
) -> Result<String, BlobError> {
    let f = std::fs::File::open(path).map_err(file_error("opening", path))?;
    let total = f.metadata().map(|m| m.len()).ok();
    let mut r = std::io::BufReader::with_capacity(1 << 20, f);
    upload_from_reader(svc, container, blob, &mut r, total, put, opts).await
}
