//! The submission queue: client-side producer, daemon-side consumer ([`crate::half`] over
//! [`Sqe`]), plus what only the SQ does: the daemon's `sq_need_wakeup` sleep and its
//! diagnostic `sq_rejected` word.

use std::ops::Deref;
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};

use blobring_abi::{Sqe, qc};
use blobring_shm::SharedMemory;

use crate::half::{Consumer, Producer};
use crate::{QueueLayout, RingError, check_advance};

/// Client half of a submission queue: writes SQEs and publishes `sq_tail`.
///
/// `tail` is authoritative and private; the shared `sq_tail` is only ever stored. `head` is a
/// cache of the daemon's `sq_head`, refreshed only when the ring looks too full for a push.
pub type SqProducer<M> = Producer<M, Sqe>;

/// Daemon half of a submission queue: copies SQEs out and publishes `sq_head`.
///
/// `head` is authoritative and private (never read back from shared memory); `tail` caches the
/// client's `sq_tail`, refreshed only when the ring looks too empty, and validated on every
/// refresh.
pub type SqConsumer<M> = Consumer<M, Sqe>;

impl<M: Deref<Target: SharedMemory>> Producer<M, Sqe> {
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
        Self::from_parts(mem, layout, tail, head)
    }
}

impl<M: Deref<Target: SharedMemory>> Consumer<M, Sqe> {
    /// A consumer whose private `sq_head` starts at `start` (the value the daemon initialised).
    pub fn new(mem: M, layout: &QueueLayout, start: u32) -> Result<Self, RingError> {
        Self::from_head(mem, layout, start)
    }

    /// Copies up to `out.len()` SQEs out (one copy each, into private memory) and publishes the
    /// new `sq_head` with one release store. Returns how many were taken. Field validation is
    /// the caller's job: the bytes are returned exactly as the client wrote them.
    pub fn pop_batch(&mut self, out: &mut [Sqe]) -> Result<usize, RingError> {
        self.pop(out).map(|p| p.count)
    }

    /// First half of going idle: sets `sq_need_wakeup`, fences, and re-reads `sq_tail`.
    /// Returns `true` when the daemon may sleep (the SQ is still empty); otherwise the flag is
    /// cleared again and there is work. After sleeping call [`SqConsumer::finish_sleep`].
    pub fn prepare_sleep(&mut self) -> Result<bool, RingError> {
        // The fence inside pairs with the one in the client's `push_batch` between its
        // `sq_tail` store and its load of our flag: no wakeup is lost.
        self.prepare_idle().map(|seen| seen.is_some())
    }

    /// Clears `sq_need_wakeup` after a sleep (or instead of one).
    pub fn finish_sleep(&mut self) -> Result<(), RingError> {
        self.set_need_wakeup(false)
    }

    pub(crate) fn fence(&self) {
        self.mem().fence(SeqCst);
    }

    pub(crate) fn set_need_wakeup(&self, on: bool) -> Result<(), RingError> {
        self.set_sleeping(on)
    }

    /// Publishes the daemon's private count of refused SQEs in the diagnostic `sq_rejected`
    /// word (never read back).
    pub fn publish_rejected(&self, total: u32) -> Result<(), RingError> {
        self.mem()
            .store_u32(self.layout().field(qc::SQ_REJECTED), total, Relaxed)?;
        Ok(())
    }
}
