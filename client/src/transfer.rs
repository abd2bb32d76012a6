//! Striped large transfers: parallel ranged GETs delivered in order, and parallel Put Block +
//! Put Block List uploads with memory bounded by the arena.
//!
//! A download keeps up to [`TransferOptions::parallelism`] chunk requests in flight, spread
//! round-robin over every queue pair (so every daemon worker and host channel takes part), and
//! hands chunks to the sink strictly in blob order. Memory: at most `parallelism` arena buffers
//! of `chunk_size` bytes, and never more than half the arena.
//!
//! Defaults (`chunk_size` 4 MiB, `parallelism` 8), from one sweep on the development box (1 GiB
//! blob, fs store, 2 daemon workers, 128 MiB arena, `download_to_vec`, `tests/tests/
//! sdk_throughput.rs` with `BLOBRING_BENCH_CHUNK_MIB` / `BLOBRING_BENCH_PARALLEL`): 1–16 MiB
//! chunks × 4–16 in flight all gave 1.1–1.5 GB/s (noisy; 4 MiB × 8 at the top), so the request
//! path is not the limit there: the single in-order consumer copying out of the arena is.
//! 4 MiB × 8 needs 32 MiB of arena and keeps each range within Azure's 4 MiB limit for
//! per-range CRC64.
//!
//! ```no_run
//! # async fn demo(svc: blobring::blob::BlobService) -> Result<(), blobring::blob::BlobError> {
//! use blobring::transfer::{TransferOptions, download_to_file};
//! let opts = TransferOptions::default().with_progress(|done, total| eprintln!("{done}/{total}"));
//! download_to_file(&svc, "data", "big.bin", "/tmp/big.bin".as_ref(), &opts).await?;
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::blob::{BlobError, BlobService, BlockRef, PutOptions, block_id, crc64, sleep};
use crate::{Lease, Pending};

/// A progress callback: `(bytes done, total bytes)`.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Tuning of a striped transfer.
#[derive(Clone)]
pub struct TransferOptions {
    /// Bytes per ranged GET / Put Block (default 4 MiB).
    pub chunk_size: u64,
    /// Requests in flight (default 8; lowered automatically to fit half the arena).
    pub parallelism: usize,
    /// Verify each chunk with CRC64 (downloads: `x-ms-range-get-content-crc64`, chunks ≤ 4
    /// MiB; uploads: `x-ms-content-crc64` checked by the service).
    pub verify: bool,
    /// Called after each chunk.
    pub progress: Option<Progress>,
}

impl std::fmt::Debug for TransferOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferOptions")
            .field("chunk_size", &self.chunk_size)
            .field("parallelism", &self.parallelism)
            .field("verify", &self.verify)
            .finish_non_exhaustive()
    }
}

impl Default for TransferOptions {
    fn default() -> Self {
        Self {
            chunk_size: 4 << 20,
            parallelism: 8,
            verify: false,
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

    fn fit(&self, arena: u64) -> (u64, usize) {
        let chunk = self
            .chunk_size
            .clamp(64 << 10, (arena / 4).max(64 << 10))
            .min(crate::MAX_REQUEST_DATA);
        let n = ((arena / 2) / (chunk + 8192)).max(1) as usize;
        (chunk, self.parallelism.clamp(1, n))
    }
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

    /// The chunk as [`bytes::Bytes`].
    pub fn to_bytes(&self) -> Result<bytes::Bytes, BlobError> {
        Ok(match &self.data {
            Some(d) => d.to_bytes(self.len)?,
            None => bytes::Bytes::new(),
        })
    }
}

type Inflight = VecDeque<(u64, u64, crate::blob::Spec, Pending)>;

/// An in-order striped download: call [`Download::next_chunk`] until `None` (an async stream).
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
    verify: bool,
    progress: Option<Progress>,
    inflight: Inflight,
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
    /// Starts a download of the whole blob (one HEAD for its size and ETag; every range is
    /// pinned to that ETag with `If-Match`, so a concurrent overwrite fails with 412 instead
    /// of mixing versions).
    pub async fn start(
        svc: &BlobService,
        container: &str,
        blob: &str,
        opts: &TransferOptions,
    ) -> Result<Self, BlobError> {
        let props = svc.head_blob(container, blob, &Default::default()).await?;
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
            etag: props.etag,
            size: props.size,
            next: 0,
            done: 0,
            chunk,
            parallel,
            verify: opts.verify,
            progress: opts.progress.clone(),
            inflight: VecDeque::new(),
            queue_rr: 0,
            n_queues: svc.client().n_queues()?,
        })
    }

    /// Size of the blob.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn refill(&mut self) -> Result<(), BlobError> {
        while self.inflight.len() < self.parallel && self.next < self.size {
            let end = (self.next + self.chunk).min(self.size);
            let q = self.queue_rr % self.n_queues.max(1);
            self.queue_rr = self.queue_rr.wrapping_add(1);
            let (spec, p) = self.svc.start_get(
                &self.container,
                &self.blob,
                self.next..end,
                Some(&self.etag),
                self.verify,
                Some(q),
            )?;
            self.inflight.push_back((self.next, end, spec, p));
            self.next = end;
        }
        Ok(())
    }

    /// The next chunk in blob order, or `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Result<Chunk, BlobError>> {
        if let Err(e) = self.refill() {
            return Some(Err(e));
        }
        let (start, end, spec, p) = self.inflight.pop_front()?;
        let mut r = self.svc.finish(&spec, p.await);
        let mut attempt = 0;
        while let Err(e) = &r {
            if !BlobService::should_retry(e) || attempt >= self.svc.retry_policy().max_retries {
                break;
            }
            sleep(self.svc.retry_policy().clone().base * (1 << attempt.min(8))).await;
            attempt += 1;
            r = match self.svc.start_get(
                &self.container,
                &self.blob,
                start..end,
                Some(&self.etag),
                self.verify,
                None,
            ) {
                Ok((s, p)) => self.svc.finish(&s, p.await),
                Err(e) => Err(e),
            };
        }
        let a = match r {
            Ok(a) => a,
            Err(e) => return Some(Err(e)),
        };
        if a.len as u64 != end - start {
            return Some(Err(BlobError::Protocol(format!(
                "range {start}..{end} of {} returned {} bytes",
                self.blob, a.len
            ))));
        }
        if self.verify {
            let want = a
                .head
                .headers
                .get("x-ms-content-crc64")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let data = match &a.data {
                Some(d) => match d.to_vec(a.len) {
                    Ok(v) => v,
                    Err(e) => return Some(Err(e.into())),
                },
                None => Vec::new(),
            };
            let got = B64.encode(crc64(&data).to_le_bytes());
            match want {
                Some(w) if w == got => {}
                w => {
                    return Some(Err(BlobError::Integrity {
                        what: format!("{} bytes {start}..{end}", self.blob),
                        expected: w.unwrap_or_else(|| "(no x-ms-content-crc64 header)".into()),
                        actual: got,
                    }));
                }
            }
        }
        self.done += a.len as u64;
        if let Some(p) = &self.progress {
            p(self.done, self.size);
        }
        if let Err(e) = self.refill() {
            return Some(Err(e));
        }
        Some(Ok(Chunk {
            offset: start,
            data: a.data,
            len: a.len,
        }))
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
    let io = |what: String| move |source| BlobError::Io { what, source };
    let f = std::fs::File::create(path).map_err(io(format!("creating {}", path.display())))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let n = download_to_writer(svc, container, blob, &mut w, opts).await?;
    w.flush()
        .map_err(io(format!("writing {}", path.display())))?;
    Ok(n)
}

/// Uploads everything `r` yields as a block blob: parallel Put Block (`chunk_size` each, at
/// most `parallelism` in flight, so memory is bounded by the arena whatever the size), then
/// Put Block List. `total` (if known) feeds the progress callback. Returns the ETag.
pub async fn upload_from_reader(
    svc: &BlobService,
    container: &str,
    blob: &str,
    r: &mut (dyn Read + Send),
    total: Option<u64>,
    put: &PutOptions,
    opts: &TransferOptions,
) -> Result<String, BlobError> {
    let (chunk, parallel) = opts.fit(svc.client().arena_len());
    let n_queues = svc.client().n_queues()?.max(1);
    let upload = uuid::Uuid::new_v4().simple().to_string();
    let mut ids = Vec::new();
    let mut inflight: VecDeque<(crate::blob::Spec, Pending, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; chunk as usize];
    let mut done = 0u64;
    let mut eof = false;
    let mut n = 0u64;
    loop {
        while !eof && inflight.len() < parallel {
            let mut filled = 0;
            while filled < buf.len() {
                let k = r.read(&mut buf[filled..]).map_err(|e| BlobError::Io {
                    what: "reading upload data".into(),
                    source: e,
                })?;
                if k == 0 {
                    eof = true;
                    break;
                }
                filled += k;
            }
            if filled == 0 {
                break;
            }
            let id = block_id(&upload, n);
            let lease = svc.client().alloc(filled.max(1) as u64)?;
            lease.write(0, &buf[..filled])?;
            let crc = opts.verify.then(|| crc64(&buf[..filled]));
            let (spec, p) = svc.start_put_block(
                container,
                blob,
                &id,
                lease,
                filled,
                crc,
                Some((n % u64::from(n_queues)) as u32),
            )?;
            // Keep the bytes only when a retry might need them (the lease is consumed).
            inflight.push_back((spec, p, buf[..filled].to_vec()));
            ids.push((BlockRef::Uncommitted, id));
            n += 1;
        }
        let Some((spec, p, bytes)) = inflight.pop_front() else {
            break;
        };
        let len = bytes.len() as u64;
        if let Err(e) = svc.finish(&spec, p.await) {
            if !BlobService::should_retry(&e) {
                return Err(e);
            }
            // Retry this block through the retrying path.
            let id = spec
                .query
                .iter()
                .find(|(k, _)| k == "blockid")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            svc.put_block(container, blob, &id, &bytes, opts.verify, None)
                .await?;
        }
        done += len;
        if let Some(p) = &opts.progress {
            p(done, total.unwrap_or(done));
        }
    }
    svc.put_block_list(container, blob, &ids, put).await
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
    let io = |what: String| move |source| BlobError::Io { what, source };
    let f = std::fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
    let total = f.metadata().map(|m| m.len()).ok();
    let mut r = std::io::BufReader::with_capacity(1 << 20, f);
    upload_from_reader(svc, container, blob, &mut r, total, put, opts).await
}
