//! io_uring-style submission and completion queues over untrusted shared memory.
//!
//! **Owns:** the SQ/CQ protocol of one queue pair in a client region
//! ([`blobring_abi::QueueControl`], SQE and CQE arrays; ARCHITECTURE.md §4, rings.md §1–2): the
//! four halves [`SqProducer`] (client), [`SqConsumer`] (daemon), [`CqProducer`] (daemon) and
//! [`CqConsumer`] (client) — one generic [`Producer`] and one generic [`Consumer`] (module `half`,
//! where their methods are documented), instantiated for [`blobring_abi::Sqe`] and
//! [`blobring_abi::Cqe`], whose entry type names its control words; the per-side pairs
//! [`ClientQueue`] and [`DaemonQueue`] (which adds credits); the need-wakeup handshake; and the
//! ways to act on it ([`EventFd`], [`FutexWord`] — the `cq_tail` word addressed inside the region
//! mapping the queues already use — behind the [`Sleeper`] / [`Notifier`] traits).
//!
//! **Trusts:** the daemon side trusts nothing the client writes: every index loaded from
//! shared memory is validated against the daemon's private state before use, and a bad one is
//! a [`RingError::Corrupt`] value — never a hang, a panic or an out-of-bounds access (all
//! accesses also go through the bounds-checked [`blobring_shm::SharedMemory`]). SQEs are
//! copied out once into private values and returned as written; validating their fields is
//! the daemon's job. The client side trusts the daemon but still validates `sq_head` and
//! `cq_tail` the same way, so a daemon bug shows as an error, not as memory corruption.
//! Flags (`sq_need_wakeup`, `cq_waiting`) are hints: a lying flag only costs its writer's
//! peer a spurious syscall, or makes the liar sleep until its timeout. The client clears
//! `sq_need_wakeup` when it finds it set and rings, so it rings once per daemon sleep, not once
//! per request published during it (`peer_flag` in `half.rs` explains why no wake-up is lost).
//!
//! **Invariants:**
//! - Each index has exactly one writer. The writer keeps the authoritative value in private
//!   memory and only *stores* it to shared memory; it never reads it back (the daemon's
//!   `sq_head`/`cq_tail`, the client's `sq_tail`/`cq_head`).
//! - Indices are free-running `u32`s; slot = `index & (entries − 1)`; entries are powers of
//!   two ≤ 2³¹, so wrapping differences are exact. Empty: `head == tail`; full:
//!   `tail − head == entries`.
//! - A peer index is accepted only if it moved forward, and by no more than the protocol
//!   allows: `sq_tail − sq_head ≤ sq_entries`, `cq_tail − cq_head ≤ cq_entries`, and a
//!   consumer's head never passes its producer's tail. A refused index changes no state.
//! - Each side caches the peer's index and reloads it only when the cached value cannot
//!   satisfy the request (ring looks empty / full for that batch).
//! - A batch is published with **one release store** of the index; the peer loads it with
//!   **acquire**. Entry bytes are written before the release and read after the acquire; a
//!   consumer's release of its head orders its copies before the producer's reuse of the slot.
//! - **Credits** ([`DaemonQueue`]): an SQE is taken only while
//!   `in_flight + pending completions < cq_entries`, so a completion always has a slot.
//! - **No lost wakeups** (rings.md §2.2, a Dekker handshake): a side going idle stores its
//!   flag, issues `fence(SeqCst)`, re-reads the peer's index and sleeps only if still idle; a
//!   side publishing an index stores it (release), issues `fence(SeqCst)` and then reads the
//!   peer's flag. The two fences are totally ordered, so at least one side sees the other's
//!   store. Client→daemon: `sq_need_wakeup` + eventfd; the client checks it after publishing
//!   `sq_tail` *and* `cq_head` (a daemon out of credits waits for `cq_head`). Daemon→client:
//!   `cq_waiting` + a shared futex on `cq_tail` itself, whose compare-and-sleep closes the gap
//!   between the re-check and the sleep.
//! - Every fence goes through [`blobring_shm::SharedMemory::fence`] and every atomic through
//!   its accessors, so the loom model (`cfg(loom)`, module `loom_support`) checks this exact code.
//!
//! Deciding whether to wake ([`Published::wake_peer`], [`SleepCheck`]) is kept apart from how
//! ([`Notifier`], [`Sleeper`]), because the daemon will act through io_uring (`PollAdd` on the
//! eventfd, `FutexWake`) rather than these blocking helpers.
//!
//! Dependencies: `rustix` for eventfd, poll and futex (no libc glue needed); `thiserror`
//! for the error enum (project standard).

mod cq;
mod error;
mod half;
mod layout;
mod queue;
mod sq;
mod wake;

#[cfg(loom)]
pub mod loom_support;

pub use cq::{CqConsumer, CqProducer};
pub use error::RingError;
pub use half::{Consumer, Producer};
pub use layout::QueueLayout;
pub use queue::{ClientQueue, DaemonQueue, SleepCheck};
pub use sq::{SqConsumer, SqProducer};
pub use wake::{EventFd, FutexWord, Notifier, Sleeper, Slept, WAIT_ANY_MAX, WaitOutcome, wait_any};

/// The result of publishing a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "if `wake_peer` is set the peer sleeps and must be notified"]
pub struct Published {
    /// Entries published (0 when nothing fitted or nothing was available).
    pub count: usize,
    /// The peer advertised that it sleeps: notify it (eventfd write / futex wake). Always
    /// act on it: the client's side has already cleared the daemon's flag, so no later
    /// publish will ask again for this sleep.
    pub wake_peer: bool,
}

impl Published {
    const NOTHING: Self = Self {
        count: 0,
        wake_peer: false,
    };
}

/// Validates a peer index `new` against the window `[cached, base + max_span]` (all wrapping,
/// measured from `base`): it must not move backwards from `cached` nor beyond `max_span`
/// entries past `base`.
fn check_advance(
    field: &'static str,
    base: u32,
    cached: u32,
    new: u32,
    max_span: u32,
) -> Result<(), RingError> {
    let d = new.wrapping_sub(base);
    if d < cached.wrapping_sub(base) || d > max_span {
        return Err(RingError::Corrupt {
            field,
            value: new,
            low: cached,
            high: base.wrapping_add(max_span),
        });
    }
    Ok(())
}
