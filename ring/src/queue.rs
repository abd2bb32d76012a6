//! Both halves of a queue pair, per side, with credits and the idle protocol.

use std::ops::Deref;
use std::time::Duration;

use blobring_abi::{Cqe, Sqe};
use blobring_shm::SharedMemory;

use crate::{
    CqConsumer, CqProducer, Published, QueueLayout, RingError, Sleeper, SqConsumer, SqProducer,
    WaitOutcome,
};

/// The client's side of a queue pair: an [`SqProducer`] and a [`CqConsumer`].
#[derive(Debug)]
pub struct ClientQueue<M> {
    /// Submission half.
    pub sq: SqProducer<M>,
    /// Completion half.
    pub cq: CqConsumer<M>,
}

impl<M: Deref<Target: SharedMemory> + Clone> ClientQueue<M> {
    /// Attaches to a queue pair the daemon initialised.
    pub fn attach(mem: M, layout: &QueueLayout) -> Result<Self, RingError> {
        Ok(Self {
            sq: SqProducer::attach(mem.clone(), layout)?,
            cq: CqConsumer::attach(mem, layout)?,
        })
    }

    /// See [`SqProducer::push_batch`].
    pub fn submit(&mut self, sqes: &[Sqe]) -> Result<Published, RingError> {
        self.sq.push_batch(sqes)
    }

    /// See [`CqConsumer::pop_batch`].
    pub fn reap(&mut self, out: &mut [Cqe]) -> Result<Published, RingError> {
        self.cq.pop_batch(out)
    }

    /// See [`CqConsumer::wait`].
    pub fn wait<S: Sleeper + ?Sized>(
        &mut self,
        sleeper: &S,
        timeout: Option<Duration>,
    ) -> Result<WaitOutcome, RingError> {
        self.cq.wait(sleeper, timeout)
    }
}

/// The daemon's side of a queue pair: an [`SqConsumer`], a [`CqProducer`] and the credit count.
///
/// **Credits:** an SQE is taken only while `in_flight + pending completions < cq_entries`, so
/// every request taken has a CQ slot reserved for its completion and a client that never drains
/// its CQ stalls only itself. Each [`DaemonQueue::complete`]d CQE retires one request; a request
/// that needs two CQEs (buffers lent, then released) posts the first with
/// [`DaemonQueue::post_unreserved`] and the last with `complete`.
#[derive(Debug)]
pub struct DaemonQueue<M> {
    sq: SqConsumer<M>,
    cq: CqProducer<M>,
    in_flight: u32,
    cq_entries: u32,
}

/// What a daemon going idle should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepCheck {
    /// `sq_need_wakeup` is set and nothing can be taken: sleep (with a timeout), then call
    /// [`DaemonQueue::finish_sleep`].
    Sleep,
    /// Work arrived while going idle; the flag was cleared again.
    Work,
}

impl<M: Deref<Target: SharedMemory> + Clone> DaemonQueue<M> {
    /// The daemon side of a queue pair whose indices were initialised to `start`.
    pub fn new(mem: M, layout: &QueueLayout, start: u32) -> Result<Self, RingError> {
        Ok(Self {
            sq: SqConsumer::new(mem.clone(), layout, start)?,
            cq: CqProducer::new(mem, layout, start)?,
            in_flight: 0,
            cq_entries: layout.cq_entries,
        })
    }

    /// Requests taken and not yet completed.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Credits left: CQ slots neither holding a pending completion nor reserved for a request
    /// in flight. Refreshes `cq_head` only if fewer than `want` are cached.
    pub fn credits(&mut self, want: u32) -> Result<u32, RingError> {
        let reserve = |free: u32, in_flight: u32| free.saturating_sub(in_flight);
        let c = reserve(self.cq_entries - self.cq.pending(), self.in_flight);
        if c >= want {
            return Ok(c);
        }
        Ok(reserve(self.cq.refresh()?, self.in_flight))
    }

    /// Takes up to `out.len()` SQEs, limited by credits. Returns how many were copied out.
    pub fn take(&mut self, out: &mut [Sqe]) -> Result<usize, RingError> {
        let want = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let n = want.min(self.credits(want)?) as usize;
        if n == 0 {
            return Ok(0);
        }
        let n = self.sq.pop_batch(&mut out[..n])?;
        self.in_flight += n as u32;
        Ok(n)
    }

    /// Posts the final completion of `cqes.len()` requests in flight (one release store).
    /// `wake_peer` says whether to wake the client's `cq_tail` futex.
    pub fn complete(&mut self, cqes: &[Cqe]) -> Result<Published, RingError> {
        if cqes.len() > self.in_flight as usize {
            return Err(RingError::NotInFlight {
                completions: cqes.len(),
                in_flight: self.in_flight,
            });
        }
        // Credits guarantee `free >= in_flight >= cqes.len()`, and the validated `cq_head`
        // only moves forward, so the whole batch fits.
        let p = self.cq.push_batch(cqes)?;
        self.in_flight -= p.count as u32;
        if p.count < cqes.len() {
            return Err(RingError::CqFull);
        }
        Ok(p)
    }

    /// Posts a completion that does not retire a request (e.g. "buffers still lent"): only
    /// into a slot not reserved for a request in flight; [`RingError::CqFull`] otherwise.
    pub fn post_unreserved(&mut self, cqe: &Cqe) -> Result<Published, RingError> {
        if self.credits(1)? == 0 {
            return Err(RingError::CqFull);
        }
        self.cq.push_batch(std::slice::from_ref(cqe))
    }

    /// First half of going idle: sets `sq_need_wakeup`, fences, re-reads `sq_tail` and
    /// `cq_head`. Work means "an SQE is available and a credit is free"; a daemon out of credits
    /// sleeps until the client moves `cq_head` (the client checks the flag after reaping).
    pub fn prepare_sleep(&mut self) -> Result<SleepCheck, RingError> {
        self.sq.set_need_wakeup(true)?;
        // Pairs with the fences in the client's `push_batch` (after `sq_tail`) and `pop_batch`
        // (after `cq_head`): either our re-reads below see its new index, or it sees our flag.
        self.sq.fence();
        let check = (|| {
            let avail = self.sq.refresh()?;
            let credits = self.cq.refresh()?.saturating_sub(self.in_flight);
            Ok(if avail > 0 && credits > 0 {
                SleepCheck::Work
            } else {
                SleepCheck::Sleep
            })
        })();
        if check != Ok(SleepCheck::Sleep) {
            self.sq.set_need_wakeup(false)?;
        }
        check
    }

    /// Clears `sq_need_wakeup` after a sleep.
    pub fn finish_sleep(&mut self) -> Result<(), RingError> {
        self.sq.set_need_wakeup(false)
    }

    /// Blocks (through `sleeper`, e.g. the queue's eventfd) until the client publishes work or
    /// `timeout` passes. The daemon proper will sleep in io_uring instead and only use
    /// [`DaemonQueue::prepare_sleep`] / [`DaemonQueue::finish_sleep`].
    pub fn wait<S: Sleeper + ?Sized>(
        &mut self,
        sleeper: &S,
        timeout: Option<Duration>,
    ) -> Result<WaitOutcome, RingError> {
        if self.prepare_sleep()? == SleepCheck::Work {
            return Ok(WaitOutcome::Ready);
        }
        let slept = sleeper.sleep(self.sq.cached_tail(), timeout);
        self.finish_sleep()?;
        Ok(slept?.into())
    }

    /// The submission half (e.g. to publish `sq_rejected`).
    pub fn sq(&self) -> &SqConsumer<M> {
        &self.sq
    }
}
