//! The completion queue: daemon-side producer, client-side consumer.

use std::ops::Deref;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::time::Duration;

use blobring_abi::{Cqe, qc};
use blobring_shm::SharedMemory;

use crate::sq::peer_flag;
use crate::{Published, QueueLayout, RingError, Sleeper, Slept, WaitOutcome, check_advance};

/// Daemon half of a completion queue: writes CQEs and publishes `cq_tail`.
///
/// `tail` is authoritative and private (never read back from shared memory); `head` caches the
/// client's `cq_head`, refreshed only when the ring looks too full, validated on every refresh.
#[derive(Debug)]
pub struct CqProducer<M> {
    mem: M,
    layout: QueueLayout,
    tail: u32,
    head: u32,
}

impl<M: Deref<Target: SharedMemory>> CqProducer<M> {
    /// A producer whose private `cq_tail` starts at `start` (the value the daemon initialised).
    pub fn new(mem: M, layout: &QueueLayout, start: u32) -> Result<Self, RingError> {
        layout.check_fits(&*mem)?;
        Ok(Self {
            mem,
            layout: *layout,
            tail: start,
            head: start,
        })
    }

    /// The next index this producer will fill (private `cq_tail`).
    pub fn tail(&self) -> u32 {
        self.tail
    }

    /// CQEs posted but not yet consumed, as far as the cached `cq_head` knows.
    pub fn pending(&self) -> u32 {
        self.tail.wrapping_sub(self.head)
    }

    /// Free slots, refreshing the cached `cq_head` only if fewer than `want` look free.
    pub fn free(&mut self, want: u32) -> Result<u32, RingError> {
        let free = self.layout.cq_entries - self.pending();
        if free >= want {
            return Ok(free);
        }
        self.refresh()
    }

    /// Re-reads and validates `cq_head`; returns the free slots.
    pub(crate) fn refresh(&mut self) -> Result<u32, RingError> {
        // Acquire pairs with the client's release store of `cq_head`, issued after it copied
        // the CQEs out: our later overwrites of those slots happen after its reads.
        let head = self.mem.load_u32(self.layout.field(qc::CQ_HEAD), Acquire)?;
        // The head may only move forward, and never past what we posted
        // (`my_cq_tail - client_cq_head > cq_entries` is the classic corruption).
        check_advance("cq_head", self.head, self.head, head, self.pending())?;
        self.head = head;
        Ok(self.layout.cq_entries - self.pending())
    }

    /// Copies as many of `cqes` as fit and publishes them with one release store of `cq_tail`.
    /// Then reports whether the client sleeps on the `cq_tail` futex and must be woken.
    pub fn push_batch(&mut self, cqes: &[Cqe]) -> Result<Published, RingError> {
        let want = u32::try_from(cqes.len())
            .unwrap_or(u32::MAX)
            .min(self.layout.cq_entries);
        let n = want.min(self.free(want)?);
        if n == 0 {
            return Ok(Published::NOTHING);
        }
        self.layout
            .write_cqes(&*self.mem, self.tail, &cqes[..n as usize])?;
        self.tail = self.tail.wrapping_add(n);
        // Release: the CQE bytes written above become visible to a client that loads this tail
        // with acquire. One store per batch. This word is also the client's futex word.
        self.mem
            .store_u32(self.layout.field(qc::CQ_TAIL), self.tail, Release)?;
        // Fence + load `cq_waiting`: pairs with the fence in `CqConsumer::prepare_wait`.
        let wake_peer = peer_flag(&*self.mem, &self.layout, qc::CQ_WAITING)?;
        Ok(Published {
            count: n as usize,
            wake_peer,
        })
    }
}

/// Client half of a completion queue: copies CQEs out and publishes `cq_head`.
///
/// `head` is authoritative and private; `tail` caches the daemon's `cq_tail`. The client trusts
/// the daemon, but a corrupt `cq_tail` is still reported as an error rather than read past.
#[derive(Debug)]
pub struct CqConsumer<M> {
    mem: M,
    layout: QueueLayout,
    head: u32,
    tail: u32,
}

impl<M: Deref<Target: SharedMemory>> CqConsumer<M> {
    /// Attaches to a queue pair the daemon initialised: reads the current `cq_head` (our own
    /// index; from now on it lives in private memory) and validates `cq_tail`.
    pub fn attach(mem: M, layout: &QueueLayout) -> Result<Self, RingError> {
        layout.check_fits(&*mem)?;
        // Relaxed: the region reached us through a syscall ordering the initialisation.
        let head = mem.load_u32(layout.field(qc::CQ_HEAD), Relaxed)?;
        let mut me = Self {
            mem,
            layout: *layout,
            head,
            tail: head,
        };
        me.refresh()?;
        Ok(me)
    }

    /// The next index this consumer will read (private `cq_head`).
    pub fn head(&self) -> u32 {
        self.head
    }

    /// CQEs available, refreshing the cached `cq_tail` only if fewer than `want` are cached.
    pub fn available(&mut self, want: u32) -> Result<u32, RingError> {
        let avail = self.tail.wrapping_sub(self.head);
        if avail >= want {
            return Ok(avail);
        }
        self.refresh()
    }

    /// Re-reads and validates `cq_tail`; returns `(available, raw value read)`.
    fn refresh_raw(&mut self) -> Result<(u32, u32), RingError> {
        // Acquire pairs with the daemon's release store of `cq_tail`: the CQE bytes it wrote
        // before publishing are visible to the copies we make after this load.
        let tail = self.mem.load_u32(self.layout.field(qc::CQ_TAIL), Acquire)?;
        check_advance(
            "cq_tail",
            self.head,
            self.tail,
            tail,
            self.layout.cq_entries,
        )?;
        self.tail = tail;
        Ok((tail.wrapping_sub(self.head), tail))
    }

    fn refresh(&mut self) -> Result<u32, RingError> {
        self.refresh_raw().map(|(n, _)| n)
    }

    /// Copies up to `out.len()` CQEs out and publishes the new `cq_head` with one release
    /// store. `wake_peer` is true when the daemon sleeps (it may be waiting for CQ credits) and
    /// must be signalled through the queue's eventfd.
    pub fn pop_batch(&mut self, out: &mut [Cqe]) -> Result<Published, RingError> {
        let want = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let n = want.min(self.available(want)?);
        if n == 0 {
            return Ok(Published::NOTHING);
        }
        self.layout
            .read_cqes(&*self.mem, self.head, &mut out[..n as usize])?;
        self.head = self.head.wrapping_add(n);
        // Release: our copies happen before the daemon reuses the slots (it loads `cq_head`
        // with acquire).
        self.mem
            .store_u32(self.layout.field(qc::CQ_HEAD), self.head, Release)?;
        // A daemon out of CQ credits sleeps until `cq_head` moves: same handshake as for
        // `sq_tail` (fence, then read `sq_need_wakeup`).
        let wake_peer = peer_flag(&*self.mem, &self.layout, qc::SQ_NEED_WAKEUP)?;
        Ok(Published {
            count: n as usize,
            wake_peer,
        })
    }

    /// First half of going to sleep: sets `cq_waiting`, fences, and re-reads `cq_tail`.
    /// Returns `Some(seen)` — the raw `cq_tail` value to pass to the futex wait — when the
    /// client may sleep, or `None` (flag cleared) when completions are already available.
    pub fn prepare_wait(&mut self) -> Result<Option<u32>, RingError> {
        if self.tail != self.head {
            return Ok(None);
        }
        self.set_waiting(true)?;
        // Pairs with the fence in `CqProducer::push_batch` between its `cq_tail` store and its
        // load of `cq_waiting`: either we see its new tail now, or it sees our flag and wakes
        // the futex. A wake that lands between this re-read and the futex wait is not lost
        // either: the kernel compares `cq_tail` with `seen` atomically and returns at once.
        self.mem.fence(SeqCst);
        match self.refresh_raw() {
            Ok((0, seen)) => Ok(Some(seen)),
            other => {
                self.set_waiting(false)?;
                other.map(|_| None)
            }
        }
    }

    /// Clears `cq_waiting` after a sleep.
    pub fn finish_wait(&mut self) -> Result<(), RingError> {
        self.set_waiting(false)
    }

    fn set_waiting(&self, on: bool) -> Result<(), RingError> {
        // Relaxed: ordered against the re-check by the SeqCst fence in `prepare_wait`; a flag
        // cleared late only costs the daemon a spurious futex wake.
        self.mem
            .store_u32(self.layout.field(qc::CQ_WAITING), u32::from(on), Relaxed)?;
        Ok(())
    }

    /// Blocks until completions are available, the sleeper is woken, or `timeout` passes.
    /// Implements the lost-wakeup-free protocol of rings.md §2.2 on the `cq_tail` futex.
    pub fn wait<S: Sleeper + ?Sized>(
        &mut self,
        sleeper: &S,
        timeout: Option<Duration>,
    ) -> Result<WaitOutcome, RingError> {
        let Some(seen) = self.prepare_wait()? else {
            return Ok(WaitOutcome::Ready);
        };
        let slept = sleeper.sleep(seen, timeout);
        self.finish_wait()?;
        Ok(match slept? {
            Slept::Woken => WaitOutcome::Woken,
            Slept::TimedOut => WaitOutcome::TimedOut,
        })
    }
}
