//! The submission queue: client-side producer, daemon-side consumer.

use std::ops::Deref;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};

use blobring_abi::{Sqe, qc};
use blobring_shm::SharedMemory;

use crate::{Published, QueueLayout, RingError, check_advance};

/// Client half of a submission queue: writes SQEs and publishes `sq_tail`.
///
/// `tail` is authoritative and private; the shared `sq_tail` is only ever stored. `head` is a
/// cache of the daemon's `sq_head`, refreshed only when the ring looks too full for a push.
#[derive(Debug)]
pub struct SqProducer<M> {
    mem: M,
    layout: QueueLayout,
    tail: u32,
    head: u32,
}

impl<M: Deref<Target: SharedMemory>> SqProducer<M> {
    /// Attaches to a queue pair the daemon initialised ([`QueueLayout::initialize`]): reads the
    /// current `sq_tail` (our own index; from now on it lives in private memory) and `sq_head`.
    pub fn attach(mem: M, layout: &QueueLayout) -> Result<Self, RingError> {
        layout.check_fits(&*mem)?;
        // Relaxed: the region reached us through a syscall that orders the daemon's
        // initialisation before this load.
        let tail = mem.load_u32(layout.field(qc::SQ_TAIL), Relaxed)?;
        let head = mem.load_u32(layout.field(qc::SQ_HEAD), Acquire)?;
        // Within the last `sq_entries` indices before our tail.
        let oldest = tail.wrapping_sub(layout.sq_entries);
        check_advance("sq_head", oldest, oldest, head, layout.sq_entries)?;
        Ok(Self {
            mem,
            layout: *layout,
            tail,
            head,
        })
    }

    /// The next index this producer will fill (private copy of `sq_tail`).
    pub fn tail(&self) -> u32 {
        self.tail
    }

    /// Free slots, refreshing the cached `sq_head` only if fewer than `want` look free.
    pub fn free(&mut self, want: u32) -> Result<u32, RingError> {
        let entries = self.layout.sq_entries;
        let mut free = entries - self.tail.wrapping_sub(self.head);
        if free < want {
            // Acquire pairs with the daemon's release store of `sq_head`, issued after it
            // copied the SQEs out: our later overwrites of those slots happen after its reads.
            let head = self.mem.load_u32(self.layout.field(qc::SQ_HEAD), Acquire)?;
            // The head may only move forward, and never past what we published.
            check_advance(
                "sq_head",
                self.head,
                self.head,
                head,
                self.tail.wrapping_sub(self.head),
            )?;
            self.head = head;
            free = entries - self.tail.wrapping_sub(self.head);
        }
        Ok(free)
    }

    /// Copies as many of `sqes` as fit into the ring and publishes them with one release store
    /// of `sq_tail`. Then reports whether the daemon sleeps and must be signalled.
    pub fn push_batch(&mut self, sqes: &[Sqe]) -> Result<Published, RingError> {
        let want = u32::try_from(sqes.len())
            .unwrap_or(u32::MAX)
            .min(self.layout.sq_entries);
        let n = want.min(self.free(want)?);
        if n == 0 {
            return Ok(Published::NOTHING);
        }
        self.layout
            .write_sqes(&*self.mem, self.tail, &sqes[..n as usize])?;
        self.tail = self.tail.wrapping_add(n);
        // Release: the SQE bytes written above become visible to a daemon that loads this tail
        // with acquire. One store per batch.
        self.mem
            .store_u32(self.layout.field(qc::SQ_TAIL), self.tail, Release)?;
        let wake_peer = self.peer_sleeps()?;
        Ok(Published {
            count: n as usize,
            wake_peer,
        })
    }

    /// Producer half of the Dekker handshake (rings.md §2.2), after publishing an index.
    fn peer_sleeps(&self) -> Result<bool, RingError> {
        peer_flag(&*self.mem, &self.layout, qc::SQ_NEED_WAKEUP)
    }
}

/// Loads a peer's sleep flag after a full fence.
///
/// The fence pairs with the one the sleeper issues between storing its flag and re-reading our
/// index: either the sleeper's re-read sees the index we just published (and it does not
/// sleep), or this load sees its flag (and we signal). Without it the store of our index could
/// still sit in the store buffer while we read a stale 0 (tokio-rs/io-uring#197).
pub(crate) fn peer_flag<S: SharedMemory + ?Sized>(
    mem: &S,
    layout: &QueueLayout,
    flag: u64,
) -> Result<bool, RingError> {
    mem.fence(SeqCst);
    // Relaxed: ordering comes from the fence; any non-zero value means "asleep" (a lying flag
    // only costs the liar's peer a syscall).
    Ok(mem.load_u32(layout.field(flag), Relaxed)? != 0)
}

/// Daemon half of a submission queue: copies SQEs out and publishes `sq_head`.
///
/// `head` is authoritative and private (never read back from shared memory); `tail` caches the
/// client's `sq_tail`, refreshed only when the ring looks too empty, and validated on every
/// refresh.
#[derive(Debug)]
pub struct SqConsumer<M> {
    mem: M,
    layout: QueueLayout,
    head: u32,
    tail: u32,
}

impl<M: Deref<Target: SharedMemory>> SqConsumer<M> {
    /// A consumer whose private `sq_head` starts at `start` (the value the daemon initialised).
    pub fn new(mem: M, layout: &QueueLayout, start: u32) -> Result<Self, RingError> {
        layout.check_fits(&*mem)?;
        Ok(Self {
            mem,
            layout: *layout,
            head: start,
            tail: start,
        })
    }

    /// The next index this consumer will take (private `sq_head`).
    pub fn head(&self) -> u32 {
        self.head
    }

    /// SQEs available, refreshing the cached `sq_tail` only if fewer than `want` are cached.
    pub fn available(&mut self, want: u32) -> Result<u32, RingError> {
        let avail = self.tail.wrapping_sub(self.head);
        if avail >= want {
            return Ok(avail);
        }
        self.refresh()
    }

    /// Re-reads and validates `sq_tail`; returns the SQEs available.
    pub(crate) fn refresh(&mut self) -> Result<u32, RingError> {
        // Acquire pairs with the client's release store of `sq_tail`: the SQE bytes it wrote
        // before publishing are visible to the copies we make after this load.
        let tail = self.mem.load_u32(self.layout.field(qc::SQ_TAIL), Acquire)?;
        // A tail more than `sq_entries` ahead of our head, or behind what it already
        // published, is corrupt: taking it would read slots twice or spin forever.
        check_advance(
            "sq_tail",
            self.head,
            self.tail,
            tail,
            self.layout.sq_entries,
        )?;
        self.tail = tail;
        Ok(tail.wrapping_sub(self.head))
    }

    /// Copies up to `out.len()` SQEs out (one copy each, into private memory) and publishes the
    /// new `sq_head` with one release store. Returns how many were taken. Field validation is
    /// the caller's job: the bytes are returned exactly as the client wrote them.
    pub fn pop_batch(&mut self, out: &mut [Sqe]) -> Result<usize, RingError> {
        let want = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let n = want.min(self.available(want)?);
        if n == 0 {
            return Ok(0);
        }
        // One copy out of shared memory per slot range (at most two, split at the wrap),
        // straight into the caller's private array; never a reference into shared memory.
        self.layout
            .read_sqes(&*self.mem, self.head, &mut out[..n as usize])?;
        self.head = self.head.wrapping_add(n);
        // Release: our copies above happen before the client sees the slots as free and
        // overwrites them (it loads `sq_head` with acquire).
        self.mem
            .store_u32(self.layout.field(qc::SQ_HEAD), self.head, Release)?;
        Ok(n as usize)
    }

    /// First half of going idle: sets `sq_need_wakeup`, fences, and re-reads `sq_tail`.
    /// Returns `true` when the daemon may sleep (the SQ is still empty); otherwise the flag is
    /// cleared again and there is work. After sleeping call [`SqConsumer::finish_sleep`].
    pub fn prepare_sleep(&mut self) -> Result<bool, RingError> {
        self.set_need_wakeup(true)?;
        // Pairs with the fence in the client's `push_batch` between its `sq_tail` store and its
        // load of our flag: at least one side sees the other's store, so no wakeup is lost.
        self.mem.fence(SeqCst);
        match self.refresh() {
            Ok(0) => Ok(true),
            other => {
                self.set_need_wakeup(false)?;
                other.map(|_| false)
            }
        }
    }

    /// Clears `sq_need_wakeup` after a sleep (or instead of one).
    pub fn finish_sleep(&mut self) -> Result<(), RingError> {
        self.set_need_wakeup(false)
    }

    pub(crate) fn fence(&self) {
        self.mem.fence(SeqCst);
    }

    pub(crate) fn set_need_wakeup(&self, on: bool) -> Result<(), RingError> {
        // Relaxed: ordered against the following re-check by the SeqCst fence in
        // `prepare_sleep`; clearing it late only costs the client a spurious signal.
        self.mem.store_u32(
            self.layout.field(qc::SQ_NEED_WAKEUP),
            u32::from(on),
            Relaxed,
        )?;
        Ok(())
    }

    /// The index the daemon saw last (the client's `sq_tail`, validated).
    pub fn cached_tail(&self) -> u32 {
        self.tail
    }

    /// Publishes the daemon's private count of refused SQEs in the diagnostic `sq_rejected`
    /// word (never read back).
    pub fn publish_rejected(&self, total: u32) -> Result<(), RingError> {
        self.mem
            .store_u32(self.layout.field(qc::SQ_REJECTED), total, Relaxed)?;
        Ok(())
    }
}
