//! The read path: per open file, sequential access is detected and served from a striped
//! prefetch ([`blobring::transfer::Download`] restricted to the rest of the blob from the
//! reader's offset) within a memory budget shared by every open file; anything else is a
//! ranged GET of exactly the bytes asked. Bytes go from the arena lease to the FUSE reply
//! (`Bytes` over the lease, no copy) unless one read straddles two prefetched chunks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use blobring::blob::{BlobError, BlobService, Conditions, GetOptions};
use blobring::block_on;
use blobring::transfer::{Download, TransferOptions};
use bytes::Bytes;

use crate::stats::Stats;

/// Bytes per prefetch request (a striped download's chunk; the SDK shrinks it in a small
/// arena).
pub(crate) const PREFETCH_CHUNK: u64 = 2 << 20;
/// Requests in flight per sequential reader at most.
pub(crate) const PREFETCH_PARALLEL: u64 = 4;
/// A read this far behind a stream's buffered bytes is served on its own without ending the
/// stream (out-of-order readahead).
const BEHIND: u64 = 4 << 20;

/// The prefetch memory budget shared by all open files (`--cache-mib`): a stream reserves
/// `2 × parallel × chunk` (in flight + buffered) before it starts and returns it when it
/// ends, so the bytes held never exceed the limit.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: u64,
    used: AtomicU64,
    stats: Arc<Stats>,
}

impl Budget {
    pub(crate) fn new(limit: u64, stats: Arc<Stats>) -> Self {
        stats.cache_limit.store(limit, Ordering::Relaxed);
        Self {
            limit,
            used: AtomicU64::new(0),
            stats,
        }
    }

    /// Takes the largest multiple of `unit` up to `want` that fits (0 if not even one).
    fn take(&self, want: u64, unit: u64) -> u64 {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let free = self.limit.saturating_sub(cur);
            let n = want.min(free) / unit * unit;
            if n == 0 {
                return 0;
            }
            match self.used.compare_exchange_weak(
                cur,
                cur + n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.stats.cache_used.fetch_add(n, Ordering::Relaxed);
                    return n;
                }
                Err(c) => cur = c,
            }
        }
    }

    fn give(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::Relaxed);
        self.stats.cache_used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Why a read failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The blob changed since it was opened (its ETag no longer matches).
    Changed,
    /// The request failed (daemon, host, deadline).
    Io(BlobError),
}

/// One open file being read: the blob as it was at open (size, ETag — every request is pinned
/// to it with `If-Match`, so a concurrent overwrite fails the read instead of mixing
/// versions).
pub(crate) struct ReadHandle {
    svc: BlobService,
    blob: Pinned,
    budget: Arc<Budget>,
    stats: Arc<Stats>,
    state: Mutex<ReadState>,
}

#[derive(Default)]
struct ReadState {
    /// End of the previous read (for sequential detection).
    last_end: Option<u64>,
    prefetch: Option<Prefetch>,
}

/// A prefetch stream: the download, the in-order chunks taken from it and not yet passed by
/// the reader, and the budget it holds.
struct Prefetch {
    dl: Download,
    /// Chunks in blob order, contiguous, ending at `next`.
    chunks: VecDeque<(u64, Bytes)>,
    /// Offset of the first byte not yet taken from the download.
    next: u64,
    /// Chunks kept at most (the rest of the reservation is in flight).
    max_chunks: usize,
    reserved: u64,
}

impl Prefetch {
    fn start(&self) -> u64 {
        self.chunks.front().map_or(self.next, |c| c.0)
    }
}

/// The blob version an open file reads: where it is, and its ETag and size at open.
pub(crate) struct Pinned {
    container: String,
    key: String,
    /// Quoted, as If-Match takes it; empty when the service gave none (reads are then not
    /// pinned).
    etag: String,
    size: u64,
}

impl Pinned {
    pub(crate) fn new(container: String, key: String, etag: String, size: u64) -> Self {
        // A listing's ETag may come without the quotes a header's has.
        let etag = if etag.starts_with('"') || etag.is_empty() {
            etag
        } else {
            format!("\"{etag}\"")
        };
        Self {
            container,
            key,
            etag,
            size,
        }
    }
}

impl ReadHandle {
    pub(crate) fn new(
        svc: BlobService,
        blob: Pinned,
        budget: Arc<Budget>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            svc,
            blob,
            budget,
            stats,
            state: Mutex::new(ReadState::default()),
        }
    }

    /// The bytes `offset..offset + len` (fewer at the end of the blob, none past it).
    pub(crate) fn read(&self, offset: u64, len: u32) -> Result<Bytes, ReadError> {
        let end = offset.saturating_add(u64::from(len)).min(self.blob.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = &st.prefetch {
            let start = p.start();
            let window = p.reserved.max(PREFETCH_CHUNK);
            if offset >= start && offset <= p.next + window {
                st.last_end = Some(end);
                let r = self.serve_prefetched(&mut st, offset, end);
                if r.is_err() {
                    self.stop(&mut st);
                }
                return r;
            }
            if offset < start && start - offset <= BEHIND {
                // A little behind the stream: the kernel's concurrent readahead requests can
                // arrive out of order. Served on their own; the stream goes on.
                drop(st);
                return self.ranged(offset, end);
            }
            // Elsewhere: a seek ends the stream.
            self.stop(&mut st);
        }
        let sequential = st.last_end == Some(offset);
        st.last_end = Some(end);
        if sequential && end < self.blob.size {
            st.prefetch = self.start_prefetch(offset);
            if st.prefetch.is_some() {
                let r = self.serve_prefetched(&mut st, offset, end);
                if r.is_err() {
                    self.stop(&mut st);
                }
                return r;
            }
        }
        drop(st);
        self.ranged(offset, end)
    }

    /// A ranged GET of exactly `offset..end`.
    fn ranged(&self, offset: u64, end: u64) -> Result<Bytes, ReadError> {
        let opts = GetOptions {
            conditions: if self.blob.etag.is_empty() {
                Conditions::default()
            } else {
                Conditions::if_match(self.blob.etag.clone())
            },
        };
        let g = block_on(self.svc.get_range(
            &self.blob.container,
            &self.blob.key,
            offset..end,
            &opts,
            None,
        ))
        .map_err(classify)?;
        Stats::add(&self.stats.random_reads, 1);
        Stats::add(&self.stats.random_bytes, end - offset);
        g.into_bytes().map_err(ReadError::Io)
    }

    /// Starts a stream at `offset` with as much of the budget as it can get (none: `None`, and
    /// the read goes out as a ranged GET).
    fn start_prefetch(&self, offset: u64) -> Option<Prefetch> {
        let unit = 2 * PREFETCH_CHUNK;
        let reserved = self.budget.take(PREFETCH_PARALLEL * unit, unit);
        if reserved == 0 {
            Stats::add(&self.stats.prefetch_denied, 1);
            return None;
        }
        let parallel = (reserved / unit) as usize;
        let props = blobring::blob::BlobProperties {
            size: self.blob.size,
            etag: self.blob.etag.clone(),
            ..Default::default()
        };
        let opts = TransferOptions {
            chunk_size: PREFETCH_CHUNK,
            parallelism: parallel,
            ..TransferOptions::default()
        };
        match Download::with_properties(
            &self.svc,
            &self.blob.container,
            &self.blob.key,
            &props,
            &opts,
        ) {
            Ok(mut dl) => {
                dl.restrict(offset..self.blob.size);
                Stats::add(&self.stats.prefetch_streams, 1);
                Some(Prefetch {
                    dl,
                    chunks: VecDeque::new(),
                    next: offset,
                    max_chunks: parallel,
                    reserved,
                })
            }
            Err(e) => {
                tracing::warn!(blob = %self.blob.key, "prefetch not started: {e}");
                self.budget.give(reserved);
                None
            }
        }
    }

    fn stop(&self, st: &mut ReadState) {
        if let Some(p) = st.prefetch.take() {
            self.budget.give(p.reserved);
        }
    }

    /// Serves `offset..end` from the stream, waiting for the chunks it needs, then takes the
    /// chunks already completed (without waiting) so the download keeps its requests in
    /// flight while the reader works.
    fn serve_prefetched(
        &self,
        st: &mut ReadState,
        offset: u64,
        end: u64,
    ) -> Result<Bytes, ReadError> {
        let p = st.prefetch.as_mut().expect("prefetch");
        while p
            .chunks
            .front()
            .is_some_and(|(o, b)| o + b.len() as u64 <= offset)
        {
            p.chunks.pop_front();
        }
        let mut waited = false;
        while p.next < end {
            waited = true;
            match block_on(p.dl.next_chunk()) {
                Some(Ok(c)) => push(p, c, &self.stats)?,
                Some(Err(e)) => return Err(classify(e)),
                None => break,
            }
        }
        let out = assemble(&p.chunks, offset, end);
        // Top up without waiting: completed chunks move into the buffer, and the download
        // refills its requests.
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        while p.chunks.len() < p.max_chunks {
            match p.dl.poll_chunk(&mut cx) {
                Poll::Ready(Some(Ok(c))) => push(p, c, &self.stats)?,
                Poll::Ready(Some(Err(e))) => return Err(classify(e)),
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        Stats::add(&self.stats.prefetch_hits, 1);
        Stats::add(&self.stats.prefetch_hit_bytes, out.len() as u64);
        if waited {
            Stats::add(&self.stats.prefetch_waits, 1);
        }
        Ok(out)
    }
}

impl Drop for ReadHandle {
    fn drop(&mut self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = st.prefetch.take() {
            self.budget.give(p.reserved);
        }
    }
}

fn push(p: &mut Prefetch, c: blobring::transfer::Chunk, stats: &Stats) -> Result<(), ReadError> {
    let (off, len) = (c.offset, c.len as u64);
    let b = c.into_bytes().map_err(ReadError::Io)?;
    Stats::add(&stats.prefetch_bytes, len);
    p.next = off + len;
    p.chunks.push_back((off, b));
    Ok(())
}

/// `offset..end` from contiguous chunks: a slice of one chunk (no copy) or, across chunks, one
/// copy into a new buffer.
fn assemble(chunks: &VecDeque<(u64, Bytes)>, offset: u64, end: u64) -> Bytes {
    let mut parts = chunks
        .iter()
        .filter(|(o, b)| *o < end && o + b.len() as u64 > offset);
    let Some((o, b)) = parts.next() else {
        return Bytes::new();
    };
    let from = (offset - o) as usize;
    if o + b.len() as u64 >= end {
        return b.slice(from..(end - o) as usize);
    }
    let mut v = Vec::with_capacity((end - offset) as usize);
    v.extend_from_slice(&b[from..]);
    for (o, b) in parts {
        let to = ((end - o) as usize).min(b.len());
        v.extend_from_slice(&b[..to]);
    }
    Bytes::from(v)
}

fn classify(e: BlobError) -> ReadError {
    if e.is_condition_not_met() {
        ReadError::Changed
    } else {
        ReadError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assemble_slices_one_chunk_and_copies_across_two() {
        let mut c = VecDeque::new();
        c.push_back((0u64, Bytes::from(vec![1u8; 4])));
        c.push_back((4u64, Bytes::from(vec![2u8; 4])));
        assert_eq!(&assemble(&c, 1, 3)[..], &[1, 1]);
        assert_eq!(&assemble(&c, 3, 6)[..], &[1, 2, 2]);
        assert_eq!(&assemble(&c, 4, 8)[..], &[2, 2, 2, 2]);
        // Past the chunks: nothing (the caller never asks; the end of the blob).
        assert!(assemble(&c, 8, 9).is_empty());
    }

    #[test]
    fn budget_hands_out_whole_units_and_never_more_than_the_limit() {
        let s = Arc::new(Stats::default());
        let b = Budget::new(10, s.clone());
        assert_eq!(b.take(8, 4), 8);
        assert_eq!(b.take(8, 4), 0, "2 bytes free: not one unit");
        b.give(8);
        assert_eq!(b.take(100, 3), 9);
        assert_eq!(s.cache_used.load(Ordering::Relaxed), 9);
    }
}
