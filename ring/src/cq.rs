//! The completion queue: daemon-side producer, client-side consumer ([`crate::half`] over
//! [`Cqe`]), plus what only the CQ does: the client's sleep on the `cq_tail` futex.

use std::ops::Deref;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use blobring_abi::{Cqe, qc};
use blobring_shm::SharedMemory;

use crate::half::{Consumer, Producer};
use crate::{Published, QueueLayout, RingError, Sleeper, WaitOutcome};

/// Daemon half of a completion queue: writes CQEs and publishes `cq_tail` (also the client's
/// futex word); `wake_peer` says whether the client sleeps on it.
///
/// `tail` is authoritative and private (never read back from shared memory); `head` caches the
/// client's `cq_head`, refreshed only when the ring looks too full, validated on every refresh.
pub type CqProducer<M> = Producer<M, Cqe>;

/// Client half of a completion queue: copies CQEs out and publishes `cq_head`.
///
/// `head` is authoritative and private; `tail` caches the daemon's `cq_tail`. The client trusts
/// the daemon, but a corrupt `cq_tail` is still reported as an error rather than read past.
pub type CqConsumer<M> = Consumer<M, Cqe>;

impl<M: Deref<Target: SharedMemory>> Producer<M, Cqe> {
    /// A producer whose private `cq_tail` starts at `start` (the value the daemon initialised).
    pub fn new(mem: M, layout: &QueueLayout, start: u32) -> Result<Self, RingError> {
        Self::from_parts(mem, layout, start, start)
    }
}

impl<M: Deref<Target: SharedMemory>> Consumer<M, Cqe> {
    /// Attaches to a queue pair the daemon initialised: reads the current `cq_head` (our own
    /// index; from now on it lives in private memory) and validates `cq_tail`.
    pub fn attach(mem: M, layout: &QueueLayout) -> Result<Self, RingError> {
        layout.check_fits(&*mem)?;
        // Relaxed: the region reached us through a syscall ordering the initialisation.
        let head = mem.load_u32(layout.field(qc::CQ_HEAD), Relaxed)?;
        let mut me = Self::from_head(mem, layout, head)?;
        me.refresh()?;
        Ok(me)
    }

    /// Copies up to `out.len()` CQEs out and publishes the new `cq_head` with one release
    /// store. `wake_peer` is true when the daemon sleeps (it may be waiting for CQ credits) and
    /// must be signalled through the queue's eventfd.
    pub fn pop_batch(&mut self, out: &mut [Cqe]) -> Result<Published, RingError> {
        self.pop(out)
    }

    /// First half of going to sleep: sets `cq_waiting`, fences, and re-reads `cq_tail`.
    /// Returns `Some(seen)` — the raw `cq_tail` value to pass to the futex wait — when the
    /// client may sleep, or `None` (flag cleared) when completions are already available.
    ///
    /// A wake that lands between the re-read and the futex wait is not lost either: the kernel
    /// compares `cq_tail` with `seen` atomically and returns at once.
    pub fn prepare_wait(&mut self) -> Result<Option<u32>, RingError> {
        if self.cached_tail() != self.head() {
            return Ok(None);
        }
        self.prepare_idle()
    }

    /// Clears `cq_waiting` after a sleep.
    pub fn finish_wait(&mut self) -> Result<(), RingError> {
        self.set_sleeping(false)
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
        Ok(slept?.into())
    }
}
