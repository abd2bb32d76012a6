//! blobring-reactor: a per-thread io_uring event loop with a safe API for exactly the
//! operations blobring uses.
//!
//! The daemon's workers and the emulated host's VSP workers do all their waiting here:
//! - **multishot poll** of eventfds (client doorbells, channel interrupts, a control eventfd),
//!   re-armed automatically when the kernel ends a multishot;
//! - **timeouts**: one-shot relative timers, and one "wake me at the nearest deadline" timer;
//! - **futex wake / wait** on `u32` words in shared memory (futex2 `SIZE_U32`, never
//!   `PRIVATE`, so other processes are woken), many wakes per submit;
//! - **fixed buffers**: memory regions registered once (sparse table + update) and
//!   `ReadFixed` / `WriteFixed` into them; plain `Read`s into a region that is not registered
//!   (`read_into`, the region kept alive until the completion: for page-cache reads the same
//!   copy without pinning the region in every ring); plain `Read` / `Write` with owned buffers;
//! - **submit + wait** with a timeout; completions come back as [`Completion`]s keyed by the
//!   caller's `u64` token.
//!
//! It is not a futures executor or a general runtime: one [`Reactor`] per thread, driven by a
//! loop that queues operations and calls [`Reactor::wait`].
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use blobring_reactor::{Event, Reactor, TimerOutcome};
//! use rustix::event::{EventfdFlags, eventfd};
//!
//! let mut reactor = Reactor::new()?;
//! let doorbell = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
//! reactor.poll_multishot(Arc::clone(&doorbell), 1)?;
//! reactor.timeout(Duration::from_millis(20), 2)?;
//! rustix::io::write(&*doorbell, &1u64.to_ne_bytes())?;
//! let mut seen = Vec::new();
//! while seen.len() < 2 {
//!     reactor.wait(1, Some(Duration::from_secs(5)), |c| seen.push((c.token, c.event)))?;
//! }
//! assert!(matches!(seen[0], (1, Event::Readable { .. })));
//! assert_eq!(seen[1], (2, Event::Timer(TimerOutcome::Fired)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Why io_uring (and the `io-uring` crate)
//! One `io_uring_enter` both submits a batch (e.g. every futex wake owed to sleeping clients)
//! and sleeps on every source at once, with no per-event syscall; multishot poll avoids
//! re-arming; `SINGLE_ISSUER` + `DEFER_TASKRUN` keep completion work on the worker's own core
//! without IPIs or locks; registered buffers pin client regions once. The `io-uring` crate is a
//! thin, exact wrapper of the kernel ABI (tokio-rs), so this crate only adds the ownership rules.
//! `slab` holds the in-flight operations (O(1) insert/remove, dense keys for `user_data`);
//! `rustix` gives the `futex(2)` fallback and eventfds.
//!
//! # What it owns
//! The ring, a slab of in-flight operations and, per operation, everything the kernel may
//! touch until that operation's final completion: an `Arc` clone of the fd ([`SharedFd`]), of
//! the region ([`MemoryRegion`]) or futex word ([`FutexWord`]), or the caller's `Vec<u8>`
//! (handed back in the completion, tokio-uring style). Timeout timespecs live until the
//! kernel has consumed their SQEs. Registered regions are held in the buffer table until
//! unregistered.
//!
//! # Whom it trusts
//! The kernel, and implementors of the two `unsafe` traits [`MemoryRegion`] and
//! [`FutexWord`], which promise that the memory they name stays mapped while they live and is
//! never accessed through Rust references. This crate implements them for the shm crate's
//! `Mapping` and `Region` (so callers under `forbid(unsafe_code)` pass an `Arc` of either, and
//! a [`RegionWord`] for a futex word inside one), for `AtomicU32`, and tests use their own
//! memfd mappings. It does not trust the *contents*
//! of that memory (clients may write anything there at any time): it never reads region bytes
//! itself, and futex words are only handed to the kernel.
//!
//! # Invariants
//! - An operation's resources are dropped only after its final CQE (no `F_MORE`) is reaped.
//!   A multishot poll is "final" only when it was cancelled or failed; otherwise it is re-armed.
//! - On drop, the reactor cancels everything and waits (bounded) for the final CQEs; whatever
//!   the kernel has not released by then is leaked, never freed.
//! - Fixed-buffer reads and writes are bounds-checked against the registered region.
//! - `user_data` is `generation << 32 | slab key`; bit 63 marks the reactor's own entries,
//!   whose CQEs never reach the caller.
//! - The reactor is `!Send`: with `SINGLE_ISSUER`/`DEFER_TASKRUN` only the creating thread may
//!   submit and wait.
//!
//! # Degradation
//! [`Reactor::with_config`] probes the kernel (setup flags by attempt, `register_probe`, a live
//! multishot poll, a sparse buffer registration) and logs a `warn!` for every missing piece:
//! no futex ops → `futex(2)` wakes (and no reactor futex wait); no multishot → one-shot polls
//! re-armed per event; no fixed buffers → plain reads/writes into the same memory; missing
//! setup flags → a plainer ring. [`Reactor::features`] reports what is in use.

mod error;
mod features;
mod reactor;
mod resource;

pub use error::{Error, Result};
pub use features::{Degradation, Features, KernelCaps, SetupFlags, Wants, plan, setup_ladder};
pub use reactor::{Completion, Event, OpId, Reactor, ReactorConfig, ReactorStats, TimerOutcome};
pub use resource::{BufIndex, FixedRange, FutexWord, MemoryRegion, RegionWord, SharedFd};
