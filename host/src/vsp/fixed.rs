//! Response bodies straight into guest memory: the [`BodySink`] over a request's data buffer
//! ([`GuestSink`]) and, for `fs` store reads of at least `VspConfig::fixed_min_len` bytes, a
//! pool thread's io_uring that reads the blob file into the registered guest mapping with
//! `READ_FIXED` ([`FixedIo`]: each guest region registered once as a fixed buffer, reads of
//! 1 MiB, at most 32 in flight, every queued read waited for before the buffer is given back).
//! Anything it cannot do (no io_uring, a region the kernel refuses) falls back to `pread` and a
//! copy.

use super::*;

/// The data buffer of a request, in guest memory.
pub(super) struct GuestSink<'a> {
    pub(super) buf: &'a GuestBuffer,
    pub(super) fixed: Option<&'a mut FixedIo>,
    pub(super) shared: &'a Shared,
    /// Smallest body worth a fixed-buffer read.
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
        let Some(fixed) = self.fixed.as_deref_mut() else {
            c.bounce_reads.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        };
        let done = fixed.fill(self.buf, offset, file, file_offset, len)?;
        if done {
            c.fixed_reads.fetch_add(1, Ordering::Relaxed);
        } else {
            c.bounce_reads.fetch_add(1, Ordering::Relaxed);
        }
        Ok(done)
    }
}

/// A pool thread's io_uring for fixed-buffer reads into guest memory.
pub(super) struct FixedIo {
    reactor: Reactor,
    /// Guest regions seen, with their fixed-buffer slot (`None`: the kernel refused).
    regions: Vec<(Weak<Mapping>, Option<BufIndex>)>,
    next_token: u64,
}

/// Bytes per `READ_FIXED`: big enough to amortise the SQE, small enough to run in parallel.
const FIXED_CHUNK: u64 = 1 << 20;
/// Most fixed-buffer reads in flight per body (bounded by the reactor's queue sizes).
const FIXED_WINDOW: usize = 32;

impl FixedIo {
    pub(super) fn new() -> Option<Self> {
        let cfg = ReactorConfig {
            sq_entries: 64,
            cq_entries: 256,
            fixed_buffer_slots: 64,
            ..ReactorConfig::default()
        };
        match Reactor::with_config(cfg) {
            Ok(reactor) => Some(Self {
                reactor,
                regions: Vec::new(),
                next_token: 1,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "no io_uring for fixed-buffer reads; bodies are copied with pread");
                None
            }
        }
    }

    /// Forgets regions the guest unregistered and no request uses any more (the reactor holds
    /// the only strong reference left).
    fn prune(&mut self) {
        let reactor = &mut self.reactor;
        self.regions.retain(|(weak, slot)| {
            let ours = usize::from(slot.is_some());
            if weak.strong_count() > ours {
                return true;
            }
            match slot {
                Some(s) => reactor.unregister_region(*s).is_err(),
                None => false,
            }
        });
    }

    fn slot(&mut self, mem: &Arc<Mapping>) -> Option<BufIndex> {
        if let Some((_, slot)) = self
            .regions
            .iter()
            .find(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(mem)))
        {
            return *slot;
        }
        let region: Arc<dyn MemoryRegion> = mem.clone();
        let slot = match self.reactor.register_region(region) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(error = %e, "guest region not registered as a fixed buffer; using pread");
                None
            }
        };
        self.regions.push((Arc::downgrade(mem), slot));
        slot
    }

    /// Reads `len` bytes of `file` at `file_offset` into `buf` at `offset` with fixed-buffer
    /// reads. `Ok(false)`: a region could not be registered (nothing was read).
    fn fill(
        &mut self,
        buf: &GuestBuffer,
        offset: u64,
        file: &File,
        file_offset: u64,
        len: u64,
    ) -> io::Result<bool> {
        self.prune();
        // Plan the chunks: (slot, offset in region, len, file offset, offset in `buf`).
        let mut plan: Vec<(BufIndex, u64, u64, u64, u64)> = Vec::new();
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
            let Some(slot) = self.slot(&span.mem) else {
                return Ok(false);
            };
            let mut at = 0;
            while at < n {
                let c = (n - at).min(FIXED_CHUNK);
                plan.push((
                    slot,
                    span.offset + skip + at,
                    c,
                    file_offset + done + at,
                    offset + done + at,
                ));
                at += c;
            }
            done += n;
            skip = 0;
        }
        let fd = SharedFd::from(file.try_clone()?);
        let mut short: Vec<(usize, u32)> = Vec::new();
        for (w, window) in plan.chunks(FIXED_WINDOW).enumerate() {
            let first = w * FIXED_WINDOW;
            let base = self.next_token;
            self.next_token += window.len() as u64;
            let mut queued = 0usize;
            let mut result = Ok(());
            for (i, &(slot, off, n, foff, _)) in window.iter().enumerate() {
                let range = FixedRange {
                    index: slot,
                    offset: off as usize,
                    len: n as u32,
                };
                match self
                    .reactor
                    .read_fixed(fd.clone(), range, foff, base + i as u64)
                {
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
                            Event::Fixed(Ok(n)) if u64::from(n) == window[i].2 => {}
                            Event::Fixed(Ok(n)) => short.push((first + i, n)),
                            Event::Fixed(Err(_)) => short.push((first + i, u32::MAX)),
                            _ => {}
                        }
                    })
                    .map_err(|e| io::Error::other(e.to_string()))?;
            }
            result?;
        }
        for (i, n) in short {
            let (_, _, len, foff, buf_off) = plan[i];
            if n == u32::MAX {
                return Err(io::Error::other("io_uring read into guest memory failed"));
            }
            // The rest of a short read, with pread (EOF is an error: the store's data file is
            // shorter than its record says).
            let mut rest = vec![0u8; (len - u64::from(n)) as usize];
            std::os::unix::fs::FileExt::read_exact_at(file, &mut rest, foff + u64::from(n))?;
            buf.write_at(buf_off + u64::from(n), &rest)
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        Ok(true)
    }
}
