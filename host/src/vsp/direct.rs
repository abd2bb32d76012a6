//! Response bodies straight into guest memory: the [`BodySink`] over a request's data buffer
//! ([`GuestSink`]) and, for `fs` store reads of at least `VspConfig::direct_min_len` bytes, a
//! pool thread's io_uring that reads the blob file straight into the guest mapping
//! ([`DirectIo`]: reads of 1 MiB, at most 32 in flight, every queued read waited for before the
//! buffer is given back), so the page cache is copied once, by the kernel, into the client's
//! region. Without io_uring it falls back to `pread` and a copy.
//!
//! The reads are plain `READ`s into the mapped region, not `READ_FIXED`: the store reads
//! through the page cache, where a fixed buffer saves nothing per read, while registering a
//! guest region pins every page of it, in every pool thread's ring (16 rings × a 128 MiB arena
//! per client). Measured with `blobring-bench seed --paths pread,native` (2 cores, same run),
//! the registrations cost the host more CPU than the copies themselves: 2.6–2.9 s against
//! 1.4 s for 12.9 GB, (d) at 0.32× of `pread` against 0.52–0.58× without them.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use blobring_reactor::{Event, MemoryRegion, Reactor, ReactorConfig, SharedFd};
use blobring_vmbus::guest_memory::GuestBuffer;

use super::Shared;
use crate::store::BodySink;

/// The data buffer of a request, in guest memory.
pub(super) struct GuestSink<'a> {
    pub(super) buf: &'a GuestBuffer,
    pub(super) direct: Option<&'a mut DirectIo>,
    pub(super) shared: &'a Shared,
    /// Smallest body worth a direct read.
    pub(super) min_len: u64,
}

impl BodySink for GuestSink<'_> {
    fn capacity(&self) -> u64 {
        self.buf.len()
    }

    fn write_at(&mut self, offset: u64, src: &[u8]) -> io::Result<()> {
        self.buf
            .write_at(offset, src)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
    }

    fn fill_from_file(
        &mut self,
        offset: u64,
        file: &File,
        file_offset: u64,
        len: u64,
    ) -> io::Result<bool> {
        if offset.checked_add(len).is_none_or(|e| e > self.buf.len()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{len} bytes at {offset} exceed the {}-byte data buffer",
                    self.buf.len()
                ),
            ));
        }
        if len < self.min_len {
            return Ok(false);
        }
        let c = &self.shared.counters;
        let Some(direct) = self.direct.as_deref_mut() else {
            c.bounce_reads.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        };
        direct.fill(self.buf, offset, file, file_offset, len)?;
        c.direct_reads.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }
}

/// A pool thread's io_uring for reads straight into guest memory.
pub(super) struct DirectIo {
    reactor: Reactor,
    next_token: u64,
}

/// Bytes per read: big enough to amortise the SQE, small enough to run in parallel.
const DIRECT_CHUNK: u64 = 1 << 20;
/// Most reads in flight per body (bounded by the reactor's queue sizes).
const DIRECT_WINDOW: usize = 32;

/// One read of a body: `len` bytes of the file at `file_offset` into `mem` at `offset`, which
/// is `buf_offset` bytes into the request's data buffer.
struct Chunk {
    mem: Arc<dyn MemoryRegion>,
    offset: u64,
    len: u64,
    file_offset: u64,
    buf_offset: u64,
}

impl DirectIo {
    pub(super) fn new() -> Option<Self> {
        let cfg = ReactorConfig {
            sq_entries: 64,
            cq_entries: 256,
            // No fixed buffers: see the module docs.
            fixed_buffer_slots: 0,
            ..ReactorConfig::default()
        };
        match Reactor::with_config(cfg) {
            Ok(reactor) => Some(Self {
                reactor,
                next_token: 1,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "no io_uring for direct reads; bodies are copied with pread");
                None
            }
        }
    }

    /// Reads `len` bytes of `file` at `file_offset` into `buf` at `offset` (the caller checked
    /// that they fit).
    fn fill(
        &mut self,
        buf: &GuestBuffer,
        offset: u64,
        file: &File,
        file_offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let mut plan: Vec<Chunk> = Vec::new();
        let (mut skip, mut done) = (offset, 0u64);
        for span in buf.spans() {
            if done == len {
                break;
            }
            if skip >= span.len {
                skip -= span.len;
                continue;
            }
            let n = (span.len - skip).min(len - done);
            let mut at = 0;
            while at < n {
                let c = (n - at).min(DIRECT_CHUNK);
                plan.push(Chunk {
                    mem: span.mem.clone() as Arc<dyn MemoryRegion>,
                    offset: span.offset + skip + at,
                    len: c,
                    file_offset: file_offset + done + at,
                    buf_offset: offset + done + at,
                });
                at += c;
            }
            done += n;
            skip = 0;
        }
        let fd = SharedFd::from(file.try_clone()?);
        let mut short: Vec<(usize, u32)> = Vec::new();
        for (w, window) in plan.chunks(DIRECT_WINDOW).enumerate() {
            let first = w * DIRECT_WINDOW;
            let base = self.next_token;
            self.next_token += window.len() as u64;
            let mut queued = 0usize;
            let mut result = Ok(());
            for (i, c) in window.iter().enumerate() {
                match self.reactor.read_into(
                    fd.clone(),
                    c.mem.clone(),
                    c.offset as usize,
                    c.len as u32,
                    c.file_offset,
                    base + i as u64,
                ) {
                    Ok(_) => queued += 1,
                    Err(e) => {
                        result = Err(io::Error::other(e.to_string()));
                        break;
                    }
                }
            }
            // Wait for every queued read, even after a failure: the kernel writes into guest
            // memory until each one completes. Tokens are never reused, so a completion of an
            // earlier call (after a reactor error) is ignored.
            let mut got = 0usize;
            while got < queued {
                self.reactor
                    .wait(queued - got, Some(Duration::from_secs(60)), |c| {
                        let Some(i) = c.token.checked_sub(base).filter(|&i| i < queued as u64)
                        else {
                            return;
                        };
                        got += 1;
                        let i = i as usize;
                        match c.event {
                            Event::Transferred(Ok(n)) if u64::from(n) == window[i].len => {}
                            Event::Transferred(Ok(n)) => short.push((first + i, n)),
                            Event::Transferred(Err(_)) => short.push((first + i, u32::MAX)),
                            _ => {}
                        }
                    })
                    .map_err(|e| io::Error::other(e.to_string()))?;
            }
            result?;
        }
        for (i, n) in short {
            let c = &plan[i];
            if n == u32::MAX {
                return Err(io::Error::other("io_uring read into guest memory failed"));
            }
            // The rest of a short read, with pread (EOF is an error: the store's data file is
            // shorter than its record says).
            let mut rest = vec![0u8; (c.len - u64::from(n)) as usize];
            std::os::unix::fs::FileExt::read_exact_at(
                file,
                &mut rest,
                c.file_offset + u64::from(n),
            )?;
            buf.write_at(c.buf_offset + u64::from(n), &rest)
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        Ok(())
    }
}
