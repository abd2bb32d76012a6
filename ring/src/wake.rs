//! How a sleeping peer is woken, kept apart from the decision whether to wake it.
//!
//! The ring halves only *decide* ([`crate::Published::wake_peer`], [`crate::SleepCheck`]);
//! the types here *act*: [`Notifier`] signals, [`Sleeper`] blocks. Client→daemon uses an
//! [`EventFd`] (the daemon will poll it from io_uring); daemon→client wakes a futex on
//! `cq_tail` itself ([`FutexWord`]; the daemon will use io_uring `FutexWake` later).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::fs::SealFlags;
use rustix::io::{Errno, ReadWriteFlags};
use rustix::mm::{MapFlags, ProtFlags};
use rustix::thread::futex;
use rustix::time::Timespec;

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

/// A u32 in a shared memfd used as a futex: the client's `cq_tail` wait/wake word.
///
/// Shared futexes are keyed by (file, page, offset), so this word is woken by a
/// `futex_wake` on the same memfd word through *any* mapping, in any process — including the
/// daemon's io_uring `FutexWake`. The word is never dereferenced in user space here: it is
/// only passed to the kernel, which reads it with `get_user` (a peer cannot crash us through
/// it). It needs its own mapping because [`blobring_shm::SharedMemory`] does not expose
/// addresses.
#[derive(Debug)]
pub struct FutexWord {
    base: NonNull<u8>,
    map_len: usize,
    word: NonNull<AtomicU32>,
}

// SAFETY: the mapping is process-wide shared memory, and the word is only used through atomic
// futex system calls, which are safe from any thread.
unsafe impl Send for FutexWord {}
// SAFETY: as for Send.
unsafe impl Sync for FutexWord {}

impl FutexWord {
    /// Maps `fd` (a memfd sealed against shrinking, at least `region_len` bytes) and addresses
    /// the 4-byte aligned word at `offset`.
    pub fn map(fd: BorrowedFd<'_>, region_len: u64, offset: u64) -> Result<Self, RingError> {
        if !offset.is_multiple_of(4)
            || offset.checked_add(4).is_none_or(|end| end > region_len)
            || region_len > isize::MAX as u64
        {
            return Err(RingError::Layout(
                "futex word outside the region or misaligned",
            ));
        }
        let seals = rustix::fs::fcntl_get_seals(fd).map_err(wake_err("F_GET_SEALS"))?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(RingError::Layout(
                "futex memfd is not sealed against shrinking",
            ));
        }
        let size = rustix::fs::fstat(fd).map_err(wake_err("fstat"))?.st_size as u64;
        if size < region_len {
            return Err(RingError::Layout("futex memfd is smaller than the region"));
        }
        let map_len = region_len as usize;
        // SAFETY: a fresh shared mapping at a kernel-chosen address (no MAP_FIXED), so it
        // aliases no Rust object; the memfd is at least `map_len` bytes and cannot shrink
        // (sealed, checked above). It is unmapped only in Drop.
        let base = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                map_len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }
        .map_err(wake_err("mmap"))?;
        let base = NonNull::new(base.cast::<u8>()).ok_or(RingError::Wake {
            op: "mmap",
            errno: Errno::FAULT,
        })?;
        // SAFETY: `offset + 4 <= map_len` (checked), so the pointer stays inside the mapping;
        // the mapping is page aligned and `offset` 4-aligned, so it is aligned for AtomicU32.
        let word = unsafe { base.add(offset as usize) }.cast::<AtomicU32>();
        Ok(Self {
            base,
            map_len,
            word,
        })
    }

    /// The `cq_tail` futex word of a queue pair in a region memfd.
    pub fn cq_tail(
        fd: BorrowedFd<'_>,
        region_len: u64,
        layout: &QueueLayout,
    ) -> Result<Self, RingError> {
        Self::map(fd, region_len, layout.field(blobring_abi::qc::CQ_TAIL))
    }

    /// The word's address in this process, for kernel interfaces that take one (io_uring
    /// `FutexWake`/`FutexWait`). Valid while `self` lives; only pass it to the kernel.
    pub fn as_ptr(&self) -> *const u32 {
        self.word.as_ptr().cast_const().cast()
    }

    fn atomic(&self) -> &AtomicU32 {
        // SAFETY: `word` points into our live mapping (unmapped only in Drop, after every
        // borrow of self ended), aligned; AtomicU32 tolerates concurrent writes by the peer.
        unsafe { self.word.as_ref() }
    }
}

impl Drop for FutexWord {
    fn drop(&mut self) {
        // SAFETY: `base`/`map_len` describe the mapping made in `map`; no reference into it
        // outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.map_len) };
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
