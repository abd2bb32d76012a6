//! How a sleeping peer is woken, kept apart from the decision whether to wake it.
//!
//! The ring halves only *decide* ([`crate::Published::wake_peer`], [`crate::SleepCheck`]);
//! the types here *act*: [`Notifier`] signals, [`Sleeper`] blocks. Client→daemon uses an
//! [`EventFd`] (the daemon will poll it from io_uring); daemon→client wakes a futex on
//! `cq_tail` itself ([`FutexWord`]; the daemon will use io_uring `FutexWake` later).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::io::{Errno, ReadWriteFlags};
use rustix::thread::futex;
use rustix::time::Timespec;

use blobring_shm::Mapping;

use crate::{QueueLayout, RingError};

/// How a sleep ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slept {
    /// Woken, or returned early (value changed, signal); re-check the ring.
    Woken,
    /// The timeout passed.
    TimedOut,
}

/// How a `wait` on a queue ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Work was already there; no sleep happened.
    Ready,
    /// Slept and was woken (possibly spuriously); re-check the ring.
    Woken,
    /// Slept until the timeout.
    TimedOut,
}

impl From<Slept> for WaitOutcome {
    fn from(s: Slept) -> Self {
        match s {
            Slept::Woken => Self::Woken,
            Slept::TimedOut => Self::TimedOut,
        }
    }
}

/// Something that blocks until a peer signals it.
pub trait Sleeper {
    /// Blocks until woken or `timeout` (None = forever). `seen` is the raw peer index observed
    /// empty right before sleeping; a futex uses it as the value to compare, an eventfd ignores
    /// it (its counter remembers a signal that came early).
    fn sleep(&self, seen: u32, timeout: Option<Duration>) -> Result<Slept, RingError>;
}

/// Something that wakes a sleeping peer.
pub trait Notifier {
    /// Wakes the peer (idempotent; extra signals only cost a spurious wake).
    fn notify(&self) -> Result<(), RingError>;
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

fn wake_err(op: &'static str) -> impl FnOnce(Errno) -> RingError {
    move |errno| RingError::Wake { op, errno }
}

/// An eventfd: the client→daemon doorbell of one queue pair.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new non-blocking, close-on-exec eventfd with counter 0.
    pub fn new() -> Result<Self, RingError> {
        let fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(wake_err("eventfd"))?;
        Ok(Self { fd })
    }

    /// Wraps an eventfd received from a peer. (Not verified to be an eventfd: a wrong fd makes
    /// `notify`/`sleep` fail, never misbehave.)
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Reads and clears the counter; 0 if it was already clear. Never blocks.
    ///
    /// The read is non-blocking *per operation* (`preadv2` with `RWF_NOWAIT`), not through the
    /// description's `O_NONBLOCK`: an eventfd passed to a peer shares its open file description,
    /// so the peer can clear `O_NONBLOCK` and drain the counter itself, and a plain `read` here
    /// would then block until the peer chose to write again. A kernel whose eventfd cannot be
    /// read with `RWF_NOWAIT` (before Linux 5.12) gets an error, never a blocking read; see
    /// [`EventFd::check_nowait`].
    pub fn drain(&self) -> Result<u64, RingError> {
        let mut buf = [0u8; 8];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        // u64::MAX: the current file position (an eventfd has none to move).
        match rustix::io::preadv2(&self.fd, &mut iov, u64::MAX, ReadWriteFlags::NOWAIT) {
            Ok(8) => Ok(u64::from_ne_bytes(buf)),
            Ok(_) => Err(RingError::Wake {
                op: "eventfd read",
                errno: Errno::INVAL,
            }),
            Err(Errno::AGAIN) | Err(Errno::INTR) => Ok(0),
            Err(e) => Err(wake_err("eventfd read (RWF_NOWAIT)")(e)),
        }
    }

    /// Checks that this kernel reads eventfds without blocking per operation: drains a fresh
    /// eventfd whose description is *blocking* and whose counter is 0, which must return at
    /// once. A daemon that shares eventfds with untrusted peers calls this at start and refuses
    /// to run without it.
    pub fn check_nowait() -> Result<(), RingError> {
        let e = Self::new()?;
        rustix::fs::fcntl_setfl(&e.fd, rustix::fs::OFlags::empty()).map_err(wake_err("F_SETFL"))?;
        e.drain().map(|_| ())
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Notifier for EventFd {
    fn notify(&self) -> Result<(), RingError> {
        match rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
            // AGAIN: the counter is saturated, so the reader is already signalled.
            Ok(_) | Err(Errno::AGAIN) => Ok(()),
            Err(e) => Err(wake_err("eventfd write")(e)),
        }
    }
}

impl Sleeper for EventFd {
    fn sleep(&self, _seen: u32, timeout: Option<Duration>) -> Result<Slept, RingError> {
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        let ts = timeout.map(timespec);
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(0) => Ok(Slept::TimedOut),
            Ok(_) => {
                self.drain()?;
                Ok(Slept::Woken)
            }
            Err(Errno::INTR) => Ok(Slept::Woken),
            Err(e) => Err(wake_err("poll eventfd")(e)),
        }
    }
}

/// A u32 in a shared memfd mapping used as a futex: the client's `cq_tail` wait/wake word.
///
/// Shared futexes are keyed by (file, page, offset), so this word is woken by a
/// `futex_wake` on the same memfd word through *any* mapping, in any process — including the
/// daemon's io_uring `FutexWake`. The word addresses the mapping the queue pair is already
/// accessed through (kept alive by the `Arc`), not a second mapping of the region. It is never
/// dereferenced as plain memory: it is only passed to the kernel, which reads it with
/// `get_user` (a peer cannot crash us through it).
#[derive(Debug)]
pub struct FutexWord {
    /// Keeps the mapping `word` points into alive.
    _map: Arc<Mapping>,
    word: NonNull<AtomicU32>,
}

// SAFETY: the mapping is process-wide shared memory (and `Mapping` itself is Send + Sync), and
// the word is only used through atomic futex system calls, which are safe from any thread.
unsafe impl Send for FutexWord {}
// SAFETY: as for Send.
unsafe impl Sync for FutexWord {}

impl FutexWord {
    /// Addresses the 4-byte aligned word at `offset` of `map` (a mapping made by
    /// [`Mapping::map_peer`] or [`blobring_shm::Region`], so the memfd cannot shrink under it).
    pub fn at(map: Arc<Mapping>, offset: u64) -> Result<Self, RingError> {
        let outside = || RingError::Layout("futex word outside the region or misaligned");
        if !offset.is_multiple_of(4) {
            return Err(outside());
        }
        let ptr = map.raw_addr(offset, 4).map_err(|_| outside())?;
        // The mapping is page aligned and `offset` 4-aligned, so the word is aligned for
        // AtomicU32; `raw_addr` checked that it lies inside the mapping.
        let word = NonNull::new(ptr.cast::<AtomicU32>()).ok_or_else(outside)?;
        Ok(Self { _map: map, word })
    }

    /// The `cq_tail` futex word of a queue pair in a region mapping.
    pub fn cq_tail(map: Arc<Mapping>, layout: &QueueLayout) -> Result<Self, RingError> {
        Self::at(map, layout.field(blobring_abi::qc::CQ_TAIL))
    }

    /// The word's address in this process, for kernel interfaces that take one (io_uring
    /// `FutexWake`/`FutexWait`). Valid while `self` lives; only pass it to the kernel.
    pub fn as_ptr(&self) -> *const u32 {
        self.word.as_ptr().cast_const().cast()
    }

    fn atomic(&self) -> &AtomicU32 {
        // SAFETY: `word` points into `self._map`, which stays mapped while `self` holds the
        // Arc, and is aligned; AtomicU32 tolerates concurrent writes by the peer.
        unsafe { self.word.as_ref() }
    }
}

impl Sleeper for FutexWord {
    fn sleep(&self, seen: u32, timeout: Option<Duration>) -> Result<Slept, RingError> {
        let ts = timeout.map(timespec);
        // Flags::empty(): a *shared* futex (no FUTEX_PRIVATE_FLAG), so a wake from another
        // process's mapping of the memfd reaches us.
        match futex::wait(self.atomic(), futex::Flags::empty(), seen, ts.as_ref()) {
            // AGAIN: `cq_tail != seen` already, i.e. a completion was posted.
            Ok(()) | Err(Errno::AGAIN) | Err(Errno::INTR) => Ok(Slept::Woken),
            Err(Errno::TIMEDOUT) => Ok(Slept::TimedOut),
            Err(e) => Err(wake_err("futex wait")(e)),
        }
    }
}

impl Notifier for FutexWord {
    fn notify(&self) -> Result<(), RingError> {
        futex::wake(self.atomic(), futex::Flags::empty(), i32::MAX as u32)
            .map(drop)
            .map_err(wake_err("futex wake"))
    }
}

/// Most words one [`wait_any`] call can sleep on (the kernel's `FUTEX_WAITV_MAX`).
pub const WAIT_ANY_MAX: usize = 128;

/// Blocks until any of `words` is woken or no longer holds the value it was seen with, or
/// `timeout` passes (`None`: no limit): how one thread (the SDK's reaper) sleeps on the
/// `cq_tail` futex of every queue pair at once, with `futex_waitv` (Linux ≥ 5.16).
///
/// Each `seen` comes from [`CqConsumer::prepare_wait`](crate::CqConsumer::prepare_wait) on the
/// word's queue, so a completion posted after that check either changed the word (the kernel
/// returns at once) or found `cq_waiting` set and woke it. At most [`WAIT_ANY_MAX`] words.
pub fn wait_any(
    words: &[(&FutexWord, u32)],
    timeout: Option<Duration>,
) -> Result<Slept, RingError> {
    if words.is_empty() || words.len() > WAIT_ANY_MAX {
        return Err(RingError::Layout("wait_any needs 1..=128 futex words"));
    }
    let waiters: Vec<futex::Wait> = words
        .iter()
        .map(|(w, seen)| {
            let mut x = futex::Wait::new();
            x.val = u64::from(*seen);
            x.uaddr = futex::WaitPtr::new(w.as_ptr().cast_mut().cast());
            // Shared (no FUTEX2_PRIVATE): the daemon wakes it through its own mapping.
            x.flags = futex::WaitFlags::SIZE_U32;
            x
        })
        .collect();
    // futex_waitv takes an absolute deadline on the given clock.
    let deadline = timeout.map(|t| {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let now = Duration::new(now.tv_sec.max(0) as u64, now.tv_nsec as u32);
        timespec(now.saturating_add(t))
    });
    match futex::waitv(
        &waiters,
        futex::WaitvFlags::empty(),
        deadline.as_ref(),
        futex::ClockId::Monotonic,
    ) {
        // AGAIN: some word already differs from its `seen`, i.e. a completion was posted.
        Ok(_) | Err(Errno::AGAIN) | Err(Errno::INTR) => Ok(Slept::Woken),
        Err(Errno::TIMEDOUT) => Ok(Slept::TimedOut),
        Err(e) => Err(wake_err("futex_waitv")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that shares the description clears `O_NONBLOCK` and empties the counter: the
    /// drain still returns at once (with 0), and still reads what the peer rings afterwards.
    #[test]
    fn drain_never_blocks_on_a_description_made_blocking() {
        let e = EventFd::new().unwrap();
        EventFd::check_nowait().expect("RWF_NOWAIT reads of an eventfd");
        rustix::fs::fcntl_setfl(&e.fd, rustix::fs::OFlags::empty()).unwrap();
        assert!(
            !rustix::fs::fcntl_getfl(&e.fd)
                .unwrap()
                .contains(rustix::fs::OFlags::NONBLOCK)
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let fd = e.fd.try_clone().unwrap();
        std::thread::spawn(move || {
            let e = EventFd::from_fd(fd);
            let empty = e.drain();
            e.notify().unwrap();
            e.notify().unwrap();
            let two = e.drain();
            let _ = tx.send((empty.unwrap(), two.unwrap()));
        });
        let got = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("drain blocked on an eventfd whose O_NONBLOCK a peer cleared");
        assert_eq!(got, (0, 2));
    }
}
