//! The per-thread event loop.

use std::collections::VecDeque;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{EnterFlags, IoUring, Probe, cqueue, opcode, squeue, types};
use rustix::io::Errno;
use slab::Slab;

use crate::error::{Error, Result};
use crate::features::{
    Features, KernelCaps, SetupFlags, Wants, plan as plan_features, setup_ladder,
};
use crate::resource::{BufIndex, FixedRange, FutexWord, MemoryRegion, SharedFd};

/// user_data bit for the reactor's own entries (cancels, timeout updates, probes); their CQEs
/// are consumed internally and never reach the caller.
const INTERNAL: u64 = 1 << 63;
const UD_CANCEL: u64 = INTERNAL | 1;
const UD_TIMEOUT_UPDATE: u64 = INTERNAL | 2;
const UD_PROBE: u64 = INTERNAL | 3;
const UD_PROBE_CANCEL: u64 = INTERNAL | 4;
/// The id of completions the reactor produced without the kernel (futex syscall fallback).
const UD_SYNTHETIC: u64 = INTERNAL | 5;

/// io_uring refuses fixed buffers larger than 1 GiB.
const MAX_FIXED_BUFFER: usize = 1 << 30;
/// `IORING_MAX_REG_BUFFERS`.
const MAX_BUFFER_SLOTS: u32 = 1 << 14;
/// futex2 `FUTEX2_SIZE_U32`; `FUTEX2_PRIVATE` (0x80) is deliberately absent: words live in
/// memory shared with other processes.
const FUTEX2_SIZE_U32: u32 = 0x02;
/// `FUTEX_BITSET_MATCH_ANY` truncated to the 32-bit futex size.
const FUTEX_MATCH_ANY: u64 = 0xffff_ffff;
/// Wake every waiter.
const FUTEX_WAKE_ALL: u64 = i32::MAX as u64;

/// How to build a [`Reactor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReactorConfig {
    /// Submission queue entries (rounded up to a power of two by the kernel).
    pub sq_entries: u32,
    /// Completion queue entries (at least `sq_entries`).
    pub cq_entries: u32,
    /// Slots in the sparse fixed-buffer table (0: no regions can be registered). At most 16384.
    pub fixed_buffer_slots: u32,
    /// Setup flags to try (each dropped if the kernel refuses it).
    pub setup: SetupFlags,
    /// Operations to use when the kernel has them.
    pub wants: Wants,
}

impl Default for ReactorConfig {
    fn default() -> Self {
        ReactorConfig {
            sq_entries: 256,
            cq_entries: 1024,
            fixed_buffer_slots: 64,
            setup: SetupFlags::ALL,
            wants: Wants::default(),
        }
    }
}

/// Handle of a queued operation, for [`Reactor::cancel`]. Unique for the life of the reactor
/// (a generation counter guards against slot reuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpId(u64);

/// How a timer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerOutcome {
    /// The time passed.
    Fired,
    /// It was cancelled.
    Cancelled,
    /// The kernel refused it.
    Failed(Errno),
}

impl TimerOutcome {
    /// The outcome a timeout op's CQE result says: `-ETIME` (or success) is the time passing.
    fn of(result: Result<u32, Errno>) -> Self {
        match result {
            Ok(_) => Self::Fired,
            Err(e) if e == Errno::TIME => Self::Fired,
            Err(e) if e == Errno::CANCELED => Self::Cancelled,
            Err(e) => Self::Failed(e),
        }
    }
}

/// What happened to an operation.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// The polled fd signalled `events` (`POLLIN` etc.). More may follow: the poll stays armed
    /// (re-armed by the reactor when the kernel ends a multishot) until cancelled or failed.
    /// The reactor does not read the fd; drain the eventfd yourself.
    Readable {
        /// `poll(2)` event bits.
        events: u32,
    },
    /// The poll is over and its fd clone released: `Ok` when ended by [`Reactor::cancel`],
    /// `Err` when the kernel ended it with an error.
    PollEnded(Result<(), Errno>),
    /// A [`Reactor::timeout`] ended.
    Timer(TimerOutcome),
    /// The deadline set with [`Reactor::set_deadline`] passed (or failed). Recheck every
    /// deadline you track and set the next one.
    Deadline(TimerOutcome),
    /// A futex wake ran: the number of waiters woken.
    FutexWake(Result<u32, Errno>),
    /// A futex wait ended: `Ok` when woken, `Err(EAGAIN)` when the word did not hold the
    /// expected value, `Err(ECANCELED)` when cancelled.
    FutexWait(Result<(), Errno>),
    /// A `read_fixed`, `write_fixed` or `read_into` ended: bytes transferred.
    Transferred(Result<u32, Errno>),
    /// A plain read ended; the buffer is handed back with the bytes read appended.
    Read {
        /// The caller's buffer.
        buf: Vec<u8>,
        /// Bytes read.
        result: Result<u32, Errno>,
    },
    /// A plain write ended; the buffer is handed back.
    Write {
        /// The caller's buffer.
        buf: Vec<u8>,
        /// Bytes written.
        result: Result<u32, Errno>,
    },
}

/// One completion, keyed by the caller's token.
#[derive(Debug, PartialEq, Eq)]
pub struct Completion {
    /// The token given when the operation was queued.
    pub token: u64,
    /// The operation.
    pub op: OpId,
    /// What happened.
    pub event: Event,
}

/// Counters for `blobring stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReactorStats {
    /// `io_uring_enter` calls.
    pub enters: u64,
    /// SQEs queued (including re-arms and cancels).
    pub sqes: u64,
    /// Completions delivered to callers.
    pub completions: u64,
    /// Polls re-armed after the kernel ended them.
    pub poll_rearms: u64,
    /// Futex wakes done with the syscall fallback.
    pub futex_syscall_wakes: u64,
    /// CQEs for unknown operations (should stay 0).
    pub stray_cqes: u64,
}

/// Resources an operation holds until its last CQE: the kernel may touch them until then.
enum OpKind {
    Poll {
        fd: SharedFd,
    },
    Timer,
    Deadline,
    FutexWake {
        _word: Arc<dyn FutexWord>,
    },
    FutexWait {
        _word: Arc<dyn FutexWord>,
    },
    Fixed {
        _fd: SharedFd,
        _region: Arc<dyn MemoryRegion>,
        slot: u16,
    },
    /// A plain read into region memory that is not in the fixed-buffer table.
    Into {
        _fd: SharedFd,
        _region: Arc<dyn MemoryRegion>,
    },
    Read {
        _fd: SharedFd,
        buf: Vec<u8>,
    },
    Write {
        _fd: SharedFd,
        buf: Vec<u8>,
    },
}

struct Op {
    token: u64,
    generation: u32,
    cancel_requested: bool,
    kind: OpKind,
}

#[derive(Clone, Copy)]
struct DeadlineTimer {
    at: Instant,
    op: OpId,
}

/// A per-thread io_uring event loop. See the crate documentation.
///
/// Not `Send`: with `SINGLE_ISSUER`/`DEFER_TASKRUN` only the creating thread may submit and
/// wait, so create the reactor on the thread that drives it.
///
/// ```compile_fail
/// fn needs_send<T: Send>() {}
/// needs_send::<blobring_reactor::Reactor>();
/// ```
pub struct Reactor {
    ring: IoUring,
    features: Features,
    ops: Slab<Op>,
    generation: u32,
    /// Registered regions by buffer index; an in-flight op holds its own clone too.
    regions: Vec<Option<Arc<dyn MemoryRegion>>>,
    /// Fixed-buffer operations queued or in flight per slot; a busy slot cannot be unregistered.
    region_ops: Vec<u32>,
    /// Timespecs of queued `Timeout` / `TimeoutUpdate` SQEs. The kernel copies a timespec when
    /// it consumes the SQE, so these live until the submission queue has been drained.
    #[expect(
        clippy::vec_box,
        reason = "the kernel holds each timespec's address, which must not move as the Vec grows"
    )]
    timespecs: Vec<Box<types::Timespec>>,
    /// Completions not yet handed to the caller.
    ready: VecDeque<Completion>,
    cqes: Vec<cqueue::Entry>,
    deadline: Option<DeadlineTimer>,
    stats: ReactorStats,
    _not_send: PhantomData<*const ()>,
}

impl Reactor {
    /// Builds a reactor with [`ReactorConfig::default`].
    pub fn new() -> Result<Self> {
        Self::with_config(ReactorConfig::default())
    }

    /// Builds a reactor: creates the ring with the best setup flags the kernel accepts, probes
    /// opcodes, multishot poll and fixed buffers, and logs (`warn`) every degradation.
    pub fn with_config(config: ReactorConfig) -> Result<Self> {
        let (mut ring, got_setup) = build_ring(&config)?;
        if !ring.params().is_feature_ext_arg() {
            return Err(Error::Unsupported {
                what: "IORING_FEAT_EXT_ARG (waits with a timeout)",
                needs: "5.11",
            });
        }
        let mut probe = Probe::new();
        let probed = match ring.submitter().register_probe(&mut probe) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "io_uring opcode probe failed; assuming only base opcodes"
                );
                false
            }
        };
        let supported = |code: u8| probed && probe.is_supported(code);
        let required = [
            (opcode::PollAdd::CODE, "IORING_OP_POLL_ADD"),
            (opcode::Timeout::CODE, "IORING_OP_TIMEOUT"),
            (opcode::TimeoutRemove::CODE, "IORING_OP_TIMEOUT_REMOVE"),
            (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
            (opcode::Read::CODE, "IORING_OP_READ"),
            (opcode::Write::CODE, "IORING_OP_WRITE"),
        ];
        if probed {
            for (code, what) in required {
                if !supported(code) {
                    return Err(Error::Unsupported { what, needs: "5.6" });
                }
            }
        }

        let slots = config.fixed_buffer_slots.min(MAX_BUFFER_SLOTS);
        let wants = Wants {
            fixed_buffers: config.wants.fixed_buffers && slots > 0,
            ..config.wants
        };
        let multishot_poll = wants.multishot_poll && probe_multishot_poll(&mut ring);
        let futex_ops = supported(opcode::FutexWait::CODE) && supported(opcode::FutexWake::CODE);
        let fixed_buffers = wants.fixed_buffers
            && supported(opcode::ReadFixed::CODE)
            && supported(opcode::WriteFixed::CODE)
            && match ring.submitter().register_buffers_sparse(slots) {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(error = %e, slots, "sparse fixed-buffer registration failed");
                    false
                }
            };
        let caps = KernelCaps {
            multishot_poll,
            futex_ops,
            fixed_buffers,
            nodrop: ring.params().is_feature_nodrop(),
        };
        let (features, missing) = plan_features(config.setup, got_setup, wants, caps);
        for degradation in missing {
            tracing::warn!("{}", degradation.message());
        }
        let (sq, cq) = (ring.params().sq_entries(), ring.params().cq_entries());
        tracing::info!(%features, sq, cq, "io_uring reactor ready");

        Ok(Reactor {
            ring,
            features,
            ops: Slab::new(),
            generation: 0,
            regions: (0..slots).map(|_| None).collect(),
            region_ops: vec![0; slots as usize],
            timespecs: Vec::new(),
            ready: VecDeque::new(),
            cqes: Vec::new(),
            deadline: None,
            stats: ReactorStats::default(),
            _not_send: PhantomData,
        })
    }

    /// What the reactor uses on this kernel.
    pub fn features(&self) -> Features {
        self.features
    }

    /// Counters since creation.
    pub fn stats(&self) -> ReactorStats {
        self.stats
    }

    /// Operations queued or in flight (a multishot poll counts until it has ended).
    pub fn in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Watches `fd` for readability (`POLLIN`) until cancelled: one
    /// [`Event::Readable`] per wakeup. When the kernel ends the multishot (CQE without
    /// `F_MORE`, e.g. after a CQ overflow) the poll is re-armed; on kernels without multishot
    /// poll a one-shot poll is re-armed after every event. The reactor keeps a clone of `fd`
    /// until [`Event::PollEnded`].
    pub fn poll_multishot(&mut self, fd: impl Into<SharedFd>, token: u64) -> Result<OpId> {
        let fd = fd.into();
        let entry = self.poll_entry(&fd);
        self.queue(token, OpKind::Poll { fd }, entry)
    }

    /// A one-shot timer firing `after` from now ([`Event::Timer`]).
    pub fn timeout(&mut self, after: Duration, token: u64) -> Result<OpId> {
        let ts = Box::new(types::Timespec::from(after));
        let entry = opcode::Timeout::new(&*ts).build();
        let id = self.queue(token, OpKind::Timer, entry)?;
        self.timespecs.push(ts);
        Ok(id)
    }

    /// "Wake me at the nearest deadline": keeps one timer armed for the earliest `at` asked
    /// since it last fired. A later `at` than the armed one is ignored (you will be woken
    /// earlier and can set it again); an earlier one moves the timer. Fires
    /// [`Event::Deadline`] with the latest `token`.
    pub fn set_deadline(&mut self, at: Instant, token: u64) -> Result<()> {
        let after = at.saturating_duration_since(Instant::now());
        if let Some(DeadlineTimer { at: armed_at, op }) = self.deadline {
            if let Some(armed) = self.op_mut(op) {
                armed.token = token;
            }
            if armed_at <= at {
                return Ok(());
            }
            let ts = Box::new(types::Timespec::from(after));
            let entry = opcode::TimeoutUpdate::new(op.0, &*ts)
                .build()
                .user_data(UD_TIMEOUT_UPDATE);
            // SAFETY: the only pointer in the entry is `ts`, which is moved into
            // `self.timespecs` below and kept until the submission queue has been consumed.
            unsafe { self.push(&entry) }?;
            self.timespecs.push(ts);
            self.deadline = Some(DeadlineTimer { at, op });
            return Ok(());
        }
        let ts = Box::new(types::Timespec::from(after));
        let entry = opcode::Timeout::new(&*ts).build();
        let op = self.queue(token, OpKind::Deadline, entry)?;
        self.timespecs.push(ts);
        self.deadline = Some(DeadlineTimer { at, op });
        Ok(())
    }

    /// The armed deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline.as_ref().map(|d| d.at)
    }

    /// Disarms the deadline timer (no event is delivered for it).
    pub fn clear_deadline(&mut self) -> Result<()> {
        if let Some(current) = self.deadline.take() {
            self.cancel(current.op)?;
        }
        Ok(())
    }

    /// Asks the kernel to cancel `op`. Returns `false` if it has already completed. The
    /// operation still ends with its own completion (`PollEnded(Ok)`, `Timer(Cancelled)`,
    /// `FutexWait(Err(ECANCELED))`…), except the deadline timer, which ends silently.
    pub fn cancel(&mut self, op: OpId) -> Result<bool> {
        match self.op_mut(op) {
            Some(state) if !state.cancel_requested => state.cancel_requested = true,
            Some(_) => return Ok(true),
            None => return Ok(false),
        }
        let entry = opcode::AsyncCancel::new(op.0).build().user_data(UD_CANCEL);
        // SAFETY: a cancel entry carries no pointers, only the target's user_data.
        unsafe { self.push(&entry) }?;
        Ok(true)
    }

    /// Wakes every waiter on `word` ([`Event::FutexWake`] with the number woken). Queued, so
    /// many wakes go to the kernel in one submit. Uses io_uring `FutexWake` (futex2,
    /// `SIZE_U32`, not `PRIVATE`), or the `futex(2)` syscall at once where that op is missing.
    pub fn futex_wake(&mut self, word: Arc<dyn FutexWord>, token: u64) -> Result<OpId> {
        if !self.features.futex_ops {
            // SAFETY: the `FutexWord` contract: an aligned, mapped u32 while `word` is alive
            // (it is, for this whole call), accessed only atomically.
            let atomic = unsafe { &*word.word() };
            let result = rustix::thread::futex::wake(
                atomic,
                rustix::thread::futex::Flags::empty(),
                i32::MAX as u32,
            )
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
            self.stats.futex_syscall_wakes += 1;
            let op = OpId(UD_SYNTHETIC);
            self.ready.push_back(Completion {
                token,
                op,
                event: Event::FutexWake(result),
            });
            return Ok(op);
        }
        let entry = opcode::FutexWake::new(
            word.word().cast::<u32>(),
            FUTEX_WAKE_ALL,
            FUTEX_MATCH_ANY,
            FUTEX2_SIZE_U32,
        )
        .build();
        self.queue(token, OpKind::FutexWake { _word: word }, entry)
    }

    /// Waits (asynchronously) until `word` is woken while holding `expected`
    /// ([`Event::FutexWait`]). Needs io_uring futex ops (Linux 6.7); there is no fallback.
    pub fn futex_wait(
        &mut self,
        word: Arc<dyn FutexWord>,
        expected: u32,
        token: u64,
    ) -> Result<OpId> {
        if !self.features.futex_ops {
            return Err(Error::Unsupported {
                what: "io_uring futex wait (IORING_OP_FUTEX_WAIT)",
                needs: "6.7",
            });
        }
        let entry = opcode::FutexWait::new(
            word.word().cast::<u32>(),
            u64::from(expected),
            FUTEX_MATCH_ANY,
            FUTEX2_SIZE_U32,
        )
        .build();
        self.queue(token, OpKind::FutexWait { _word: word }, entry)
    }

    /// Registers `region` as a fixed buffer (pages pinned once) and returns its index. Without
    /// kernel fixed buffers the region is only recorded, and `read_fixed`/`write_fixed` fall
    /// back to plain reads and writes into it.
    pub fn register_region(&mut self, region: Arc<dyn MemoryRegion>) -> Result<BufIndex> {
        let (base, len) = (region.as_ptr(), region.len());
        if base.is_null() || len == 0 {
            return Err(Error::BadRegion {
                base: base as usize,
                len,
            });
        }
        if len > MAX_FIXED_BUFFER {
            return Err(Error::RegionTooLarge { len });
        }
        let slot = self
            .regions
            .iter()
            .position(Option::is_none)
            .ok_or(Error::NoBufferSlot {
                slots: self.regions.len() as u32,
            })?;
        if self.features.fixed_buffers {
            let iov = libc::iovec {
                iov_base: base.cast(),
                iov_len: len,
            };
            // SAFETY: by the `MemoryRegion` contract `base..base + len` is mapped read-write
            // while `region` is alive; we keep `region` in `self.regions[slot]` until the slot
            // is cleared by `unregister_region` (and the kernel pins the pages it registered,
            // so it never touches an unmapped address).
            unsafe {
                self.ring
                    .submitter()
                    .register_buffers_update(slot as u32, &[iov], None)
            }
            .map_err(|source| Error::Register { len, source })?;
        }
        self.regions[slot] = Some(region);
        Ok(BufIndex(slot as u16))
    }

    /// Removes a region from the fixed-buffer table. Refused ([`Error::RegionBusy`]) while a
    /// `read_fixed`/`write_fixed` on it is queued or in flight: the kernel resolves the buffer
    /// index when it issues the operation, so the slot must stay until then.
    pub fn unregister_region(&mut self, index: BufIndex) -> Result<()> {
        let slot = usize::from(index.0);
        if self.regions.get(slot).is_none_or(Option::is_none) {
            return Err(Error::UnknownBuffer(index.0));
        }
        if self.region_ops[slot] > 0 {
            return Err(Error::RegionBusy {
                index: index.0,
                in_flight: self.region_ops[slot],
            });
        }
        if self.features.fixed_buffers {
            let empty = libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            };
            // SAFETY: a null, zero-length iovec clears the slot; it names no memory.
            unsafe {
                self.ring
                    .submitter()
                    .register_buffers_update(u32::from(index.0), &[empty], None)
            }
            .map_err(|source| Error::Register { len: 0, source })?;
        }
        self.regions[slot] = None;
        Ok(())
    }

    /// Reads from `fd` at `file_offset` into `range` of a registered region
    /// ([`Event::Transferred`] with the bytes read).
    pub fn read_fixed(
        &mut self,
        fd: impl Into<SharedFd>,
        range: FixedRange,
        file_offset: u64,
        token: u64,
    ) -> Result<OpId> {
        self.fixed_io(false, fd.into(), range, file_offset, token)
    }

    /// Writes `range` of a registered region to `fd` at `file_offset`
    /// ([`Event::Transferred`] with the bytes written).
    pub fn write_fixed(
        &mut self,
        fd: impl Into<SharedFd>,
        range: FixedRange,
        file_offset: u64,
        token: u64,
    ) -> Result<OpId> {
        self.fixed_io(true, fd.into(), range, file_offset, token)
    }

    fn fixed_io(
        &mut self,
        write: bool,
        fd: SharedFd,
        range: FixedRange,
        file_offset: u64,
        token: u64,
    ) -> Result<OpId> {
        let (region, ptr) = self.resolve(range)?;
        let target = types::Fd(fd.raw());
        let slot = range.index.0;
        let entry = match (write, self.features.fixed_buffers) {
            (false, true) => opcode::ReadFixed::new(target, ptr, range.len, slot)
                .offset(file_offset)
                .build(),
            (true, true) => opcode::WriteFixed::new(target, ptr, range.len, slot)
                .offset(file_offset)
                .build(),
            (false, false) => opcode::Read::new(target, ptr, range.len)
                .offset(file_offset)
                .build(),
            (true, false) => opcode::Write::new(target, ptr, range.len)
                .offset(file_offset)
                .build(),
        };
        let kind = OpKind::Fixed {
            _fd: fd,
            _region: region,
            slot,
        };
        let op = self.queue(token, kind, entry)?;
        self.region_ops[usize::from(slot)] += 1;
        Ok(op)
    }

    /// Reads from `fd` at `file_offset` into `len` bytes of `region` at `offset`
    /// ([`Event::Transferred`] with the bytes read), without registering the region: the
    /// reactor keeps `region` (and `fd`) alive until the completion. For reads served from the
    /// page cache this is the same copy as [`Reactor::read_fixed`] without pinning every page
    /// of the region in this ring first (a cost paid again in every ring that registers it,
    /// and larger than the copies themselves for a region read from once); fixed buffers pay
    /// off for `O_DIRECT` I/O, where the kernel would otherwise pin the pages on every read.
    pub fn read_into(
        &mut self,
        fd: impl Into<SharedFd>,
        region: Arc<dyn MemoryRegion>,
        offset: usize,
        len: u32,
        file_offset: u64,
        token: u64,
    ) -> Result<OpId> {
        let ptr = range_ptr(&*region, offset, len)?;
        let fd = fd.into();
        let entry = opcode::Read::new(types::Fd(fd.raw()), ptr, len)
            .offset(file_offset)
            .build();
        self.queue(
            token,
            OpKind::Into {
                _fd: fd,
                _region: region,
            },
            entry,
        )
    }

    /// Reads from `fd` into the spare capacity of `buf` (at most `u32::MAX` bytes); the buffer
    /// comes back in [`Event::Read`] with the bytes appended. `file_offset` `u64::MAX` means
    /// the file position (pipes, eventfds).
    pub fn read(
        &mut self,
        fd: impl Into<SharedFd>,
        mut buf: Vec<u8>,
        file_offset: u64,
        token: u64,
    ) -> Result<OpId> {
        let fd = fd.into();
        let spare = buf.spare_capacity_mut();
        let len = u32::try_from(spare.len()).unwrap_or(u32::MAX);
        let ptr = spare.as_mut_ptr().cast::<u8>();
        let entry = opcode::Read::new(types::Fd(fd.raw()), ptr, len)
            .offset(file_offset)
            .build();
        self.queue(token, OpKind::Read { _fd: fd, buf }, entry)
    }

    /// Writes `buf` (at most `u32::MAX` bytes) to `fd`; the buffer comes back in
    /// [`Event::Write`]. `file_offset` `u64::MAX` means the file position.
    pub fn write(
        &mut self,
        fd: impl Into<SharedFd>,
        buf: Vec<u8>,
        file_offset: u64,
        token: u64,
    ) -> Result<OpId> {
        let fd = fd.into();
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let entry = opcode::Write::new(types::Fd(fd.raw()), buf.as_ptr(), len)
            .offset(file_offset)
            .build();
        self.queue(token, OpKind::Write { _fd: fd, buf }, entry)
    }

    /// Hands queued operations to the kernel without waiting.
    pub fn submit(&mut self) -> Result<()> {
        self.enter(0, None).map(drop)
    }

    /// Submits queued operations, waits until at least `min_complete` completions have been
    /// delivered or `timeout` has passed (`None`: no limit), and calls `f` for every completion
    /// available. Returns the number delivered: fewer than `min_complete` on timeout or a
    /// signal, and 0 at once if nothing is in flight.
    ///
    /// `wait(0, ..)` never blocks, and makes no syscall when there is nothing to submit and no
    /// completion work pending (a busy-polling worker's fast path).
    ///
    /// `f` cannot call back into the reactor: collect what to do and do it after `wait`
    /// returns.
    pub fn wait(
        &mut self,
        min_complete: usize,
        timeout: Option<Duration>,
        mut f: impl FnMut(Completion),
    ) -> Result<usize> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut delivered = self.reap(&mut f)?;
        loop {
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let need = min_complete.saturating_sub(delivered);
            let idle = self.ops.is_empty() && self.ring.submission().is_empty();
            let want = if need == 0 || remaining == Some(Duration::ZERO) || idle {
                0
            } else {
                need
            };
            if want == 0 && !self.needs_enter() {
                // Nothing to submit and no deferred completion work: no syscall.
                return Ok(delivered);
            }
            let stopped = self.enter(want, if want == 0 { None } else { remaining })?;
            delivered += self.reap(&mut f)?;
            if want == 0 || stopped || delivered >= min_complete {
                return Ok(delivered);
            }
        }
    }

    /// Whether a non-waiting `io_uring_enter` would do anything: SQEs to submit, completion
    /// work the kernel deferred to us (`IORING_SQ_TASKRUN`, set because we always ask for
    /// `TASKRUN_FLAG` with COOP/DEFER_TASKRUN; plain rings post CQEs without our help), or
    /// overflowed CQEs to flush.
    fn needs_enter(&mut self) -> bool {
        let sq = self.ring.submission();
        !sq.is_empty() || sq.taskrun() || sq.cq_overflow()
    }

    fn poll_entry(&self, fd: &SharedFd) -> squeue::Entry {
        opcode::PollAdd::new(types::Fd(fd.raw()), libc::POLLIN as u32)
            .multi(self.features.multishot_poll)
            .build()
    }

    fn op_mut(&mut self, op: OpId) -> Option<&mut Op> {
        let (key, generation) = split_user_data(op.0)?;
        self.ops
            .get_mut(key)
            .filter(|state| state.generation == generation)
    }

    /// Looks up a registered range: the region (to keep alive) and the start address.
    fn resolve(&self, range: FixedRange) -> Result<(Arc<dyn MemoryRegion>, *mut u8)> {
        let region = self
            .regions
            .get(usize::from(range.index.0))
            .and_then(Option::as_ref)
            .ok_or(Error::UnknownBuffer(range.index.0))?;
        let ptr = range_ptr(&**region, range.offset, range.len)?;
        Ok((Arc::clone(region), ptr))
    }

    /// Records an operation that owns every resource `entry` points into, then queues it.
    fn queue(&mut self, token: u64, kind: OpKind, entry: squeue::Entry) -> Result<OpId> {
        self.generation = self.generation.wrapping_add(1) & 0x7fff_ffff;
        let generation = self.generation;
        let key = self.ops.insert(Op {
            token,
            generation,
            cancel_requested: false,
            kind,
        });
        let Some(user_data) = join_user_data(key, generation) else {
            self.ops.remove(key);
            return Err(Error::SubmissionQueueFull);
        };
        let entry = entry.user_data(user_data);
        // SAFETY: every pointer in `entry` points into a resource now owned by `self.ops[key]`
        // (heap buffers and `Arc`s do not move when their owner moves) or into a timespec box
        // the caller moves into `self.timespecs` right after; `self.ops[key]` is removed only
        // when its final CQE is reaped (or leaked on drop if the kernel never finishes it).
        if let Err(e) = unsafe { self.push(&entry) } {
            self.ops.remove(key);
            return Err(e);
        }
        Ok(OpId(user_data))
    }

    /// Pushes one SQE, flushing the queue to the kernel once if it is full.
    ///
    /// # Safety
    ///
    /// Every pointer in `entry` must stay valid until the kernel is done with it: for
    /// operation memory, until the operation's final CQE; for a timeout's timespec, until the
    /// submission queue has been consumed (the kernel copies it at submission).
    unsafe fn push(&mut self, entry: &squeue::Entry) -> Result<()> {
        // SAFETY: forwarded from this function's contract.
        if unsafe { self.ring.submission().push(entry) }.is_err() {
            self.enter(0, None)?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(entry) }
                .map_err(|_| Error::SubmissionQueueFull)?;
        }
        self.stats.sqes += 1;
        Ok(())
    }

    /// One `io_uring_enter`: submits everything queued, runs deferred completion work and
    /// waits for `want` CQEs (up to `timeout`). Returns `true` if the wait timed out or was
    /// interrupted by a signal.
    fn enter(&mut self, want: usize, timeout: Option<Duration>) -> Result<bool> {
        let to_submit = self.ring.submission().len() as u32;
        let want = u32::try_from(want).unwrap_or(u32::MAX);
        let flags = EnterFlags::GETEVENTS;
        self.stats.enters += 1;
        let result = match timeout {
            Some(timeout) => {
                let ts = types::Timespec::from(timeout);
                let args = types::SubmitArgs::new().timespec(&ts);
                // SAFETY: `args` is a `SubmitArgs` (repr(transparent) over
                // `io_uring_getevents_arg`) whose timespec `ts` outlives the call, and EXT_ARG
                // tells the kernel to read exactly that struct; every queued SQE's pointers are
                // kept valid per `push`'s contract.
                unsafe {
                    self.ring.submitter().enter(
                        to_submit,
                        want,
                        (flags | EnterFlags::EXT_ARG).bits(),
                        Some(&args),
                    )
                }
            }
            // SAFETY: no argument is passed; every queued SQE's pointers are kept valid per
            // `push`'s contract.
            None => unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(to_submit, want, flags.bits(), None)
            },
        };
        if self.ring.submission().is_empty() {
            // The kernel has consumed (and copied the timespecs of) every queued SQE.
            self.timespecs.clear();
        }
        match result {
            Ok(_) => Ok(false),
            Err(e) => match e.raw_os_error() {
                Some(libc::ETIME | libc::EINTR) => Ok(true),
                // CQ overflow backlog or no memory for it: reap, then retry.
                Some(libc::EBUSY | libc::EAGAIN) => Ok(false),
                _ => Err(Error::Enter { source: e }),
            },
        }
    }

    /// Processes every available CQE and hands every ready completion to `f`.
    fn reap(&mut self, f: &mut impl FnMut(Completion)) -> Result<usize> {
        let mut delivered = 0;
        // Overflowed CQEs (NODROP) are flushed by an enter once the ring has room; bound the
        // rounds so a flood cannot keep us here forever.
        for _ in 0..8 {
            let mut batch = std::mem::take(&mut self.cqes);
            batch.clear();
            batch.extend(self.ring.completion());
            let empty = batch.is_empty();
            for cqe in &batch {
                self.complete(cqe);
            }
            self.cqes = batch;
            while let Some(completion) = self.ready.pop_front() {
                self.stats.completions += 1;
                f(completion);
                delivered += 1;
            }
            if !self.ring.submission().cq_overflow() {
                if empty {
                    break;
                }
                continue;
            }
            self.enter(0, None)?;
        }
        Ok(delivered)
    }

    /// Turns one CQE into completions in `self.ready`, re-arming ended polls.
    fn complete(&mut self, cqe: &cqueue::Entry) {
        let user_data = cqe.user_data();
        if user_data & INTERNAL != 0 {
            return;
        }
        let res = cqe.result();
        let more = cqueue::more(cqe.flags());
        let op = OpId(user_data);
        let Some(state) = self.op_mut(op) else {
            self.stats.stray_cqes += 1;
            return;
        };
        let token = state.token;
        let cancel_requested = state.cancel_requested;
        let poll_fd = match &state.kind {
            OpKind::Poll { fd } => Some(fd.raw()),
            _ => None,
        };
        let result = if res >= 0 {
            Ok(res as u32)
        } else {
            Err(Errno::from_raw_os_error(res.saturating_neg()))
        };
        let event = match poll_fd {
            Some(raw_fd) => self.poll_completed(op, token, raw_fd, cancel_requested, more, result),
            None => self.op_completed(op, cancel_requested, more, result),
        };
        if let Some(event) = event {
            self.ready.push_back(Completion { token, op, event });
        }
    }

    /// A CQE of poll `op`: readiness is delivered at once; a poll the kernel ended (not
    /// multishot, or multishot stopped) is re-armed unless its cancellation was asked for.
    /// Returns the poll's end, if it ended.
    fn poll_completed(
        &mut self,
        op: OpId,
        token: u64,
        raw_fd: RawFd,
        cancel_requested: bool,
        more: bool,
        result: Result<u32, Errno>,
    ) -> Option<Event> {
        let events = match result {
            Err(errno) => {
                self.remove(op);
                let ended = if cancel_requested && errno == Errno::CANCELED {
                    Ok(())
                } else {
                    Err(errno)
                };
                return Some(Event::PollEnded(ended));
            }
            Ok(events) => events,
        };
        self.ready.push_back(Completion {
            token,
            op,
            event: Event::Readable { events },
        });
        if more {
            return None;
        }
        if cancel_requested {
            self.remove(op);
            return Some(Event::PollEnded(Ok(())));
        }
        let entry = opcode::PollAdd::new(types::Fd(raw_fd), libc::POLLIN as u32)
            .multi(self.features.multishot_poll)
            .build()
            .user_data(op.0);
        self.stats.poll_rearms += 1;
        // SAFETY: the entry names the fd by number only; the fd clone stays in this op until
        // its final CQE, so the number cannot be reused meanwhile.
        match unsafe { self.push(&entry) } {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(error = %e, "could not re-arm a poll; ending it");
                self.remove(op);
                Some(Event::PollEnded(Err(Errno::BUSY)))
            }
        }
    }

    /// The final CQE of a one-shot `op` (anything but a poll): the op is removed and what it
    /// owned (a read buffer, a write buffer) comes back in its event. `None` for an op whose
    /// end is not reported (a cancelled deadline) or a stray CQE.
    fn op_completed(
        &mut self,
        op: OpId,
        cancel_requested: bool,
        more: bool,
        result: Result<u32, Errno>,
    ) -> Option<Event> {
        if more {
            // Only polls are multishot; keep the op (and what it owns) alive regardless.
            self.stats.stray_cqes += 1;
            return None;
        }
        let kind = self.remove(op)?;
        Some(match kind {
            OpKind::Poll { .. } => return None,
            OpKind::Timer => Event::Timer(TimerOutcome::of(result)),
            OpKind::Deadline => {
                if self.deadline.as_ref().is_some_and(|d| d.op == op) {
                    self.deadline = None;
                }
                if cancel_requested {
                    return None;
                }
                Event::Deadline(TimerOutcome::of(result))
            }
            OpKind::FutexWake { .. } => Event::FutexWake(result),
            OpKind::FutexWait { .. } => Event::FutexWait(result.map(drop)),
            OpKind::Fixed { slot, .. } => {
                self.region_ops[usize::from(slot)] -= 1;
                Event::Transferred(result)
            }
            OpKind::Into { .. } => Event::Transferred(result),
            OpKind::Read { mut buf, .. } => {
                if let Ok(n) = result {
                    let new_len = buf.len() + n as usize;
                    assert!(new_len <= buf.capacity(), "kernel read past the buffer");
                    // SAFETY: the kernel wrote `n` bytes into the spare capacity that starts
                    // at the old length (we asked for at most the spare length; the assert
                    // above re-checks), so they are initialized.
                    unsafe { buf.set_len(new_len) };
                }
                Event::Read { buf, result }
            }
            OpKind::Write { buf, .. } => Event::Write { buf, result },
        })
    }

    fn remove(&mut self, op: OpId) -> Option<OpKind> {
        let (key, generation) = split_user_data(op.0)?;
        if self.ops.get(key)?.generation != generation {
            return None;
        }
        Some(self.ops.remove(key).kind)
    }

    /// Test hook: runs the kernel's deferred completion work without reaping CQEs.
    #[cfg(test)]
    pub(crate) fn enter_without_reaping(&mut self) -> Result<bool> {
        self.enter(0, None)
    }
}

impl Drop for Reactor {
    /// Cancels everything in flight and waits (bounded) for the kernel to let go of the memory
    /// the operations own; whatever it has not released after 2 s is leaked, never freed.
    fn drop(&mut self) {
        if self.ops.is_empty() {
            return;
        }
        let targets: Vec<u64> = self
            .ops
            .iter_mut()
            .filter_map(|(key, op)| {
                op.cancel_requested = true;
                join_user_data(key, op.generation)
            })
            .collect();
        for user_data in targets {
            let entry = opcode::AsyncCancel::new(user_data)
                .build()
                .user_data(UD_CANCEL);
            // SAFETY: a cancel entry carries no pointers.
            if unsafe { self.push(&entry) }.is_err() {
                break;
            }
        }
        let give_up = Instant::now() + Duration::from_secs(2);
        while !self.ops.is_empty() {
            let now = Instant::now();
            if now >= give_up {
                break;
            }
            if self.enter(1, Some(give_up - now)).is_err() {
                break;
            }
            if self.reap(&mut drop).is_err() {
                break;
            }
        }
        if !self.ops.is_empty() {
            tracing::warn!(
                ops = self.ops.len(),
                "io_uring operations did not finish on shutdown; leaking their buffers"
            );
            std::mem::forget(std::mem::take(&mut self.ops));
        }
    }
}

fn join_user_data(key: usize, generation: u32) -> Option<u64> {
    let key = u32::try_from(key).ok()?;
    Some((u64::from(generation & 0x7fff_ffff) << 32) | u64::from(key))
}

fn split_user_data(user_data: u64) -> Option<(usize, u32)> {
    if user_data & INTERNAL != 0 {
        return None;
    }
    Some(((user_data & 0xffff_ffff) as usize, (user_data >> 32) as u32))
}

/// Builds the ring with the first setup-flag set of the ladder that the kernel accepts.
fn build_ring(config: &ReactorConfig) -> Result<(IoUring, SetupFlags)> {
    let mut last = None;
    for step in setup_ladder(config.setup) {
        let mut builder = IoUring::builder();
        builder
            .setup_cqsize(config.cq_entries.max(config.sq_entries))
            .setup_clamp();
        if step.single_issuer {
            builder.setup_single_issuer();
        }
        if step.defer_taskrun {
            builder.setup_defer_taskrun();
        }
        if step.coop_taskrun {
            builder.setup_coop_taskrun();
        }
        if step.coop_taskrun || step.defer_taskrun {
            builder.setup_taskrun_flag();
        }
        if step.no_sqarray {
            builder.setup_no_sqarray();
        }
        if step.submit_all {
            builder.setup_submit_all();
        }
        match builder.build(config.sq_entries) {
            Ok(ring) => return Ok((ring, step)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!(?step, "io_uring setup flags refused; trying fewer");
                last = Some(e);
            }
            Err(e) => return Err(setup_error(e)),
        }
    }
    Err(setup_error(last.unwrap_or_else(|| {
        io::Error::from_raw_os_error(libc::EINVAL)
    })))
}

fn setup_error(e: io::Error) -> Error {
    classify_setup_error(e, || {
        std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok()
    })
}

/// Maps an `io_uring_setup` failure to an actionable error; `disabled_sysctl` reads
/// `kernel.io_uring_disabled` (only consulted for EPERM).
fn classify_setup_error(e: io::Error, disabled_sysctl: impl FnOnce() -> Option<String>) -> Error {
    match e.raw_os_error() {
        Some(libc::EPERM) => match disabled_sysctl() {
            Some(value) if value.trim() != "0" => Error::Disabled {
                value: value.trim().to_owned(),
            },
            _ => Error::Setup { source: e },
        },
        Some(libc::ENOSYS) => Error::Unsupported {
            what: "io_uring",
            needs: "5.1",
        },
        _ => Error::Setup { source: e },
    }
}

/// Live probe: does a multishot `PollAdd` on a readable eventfd complete with `F_MORE`?
fn probe_multishot_poll(ring: &mut IoUring) -> bool {
    use rustix::event::{EventfdFlags, eventfd};
    let Ok(efd) = eventfd(1, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK) else {
        return false;
    };
    let entry = opcode::PollAdd::new(types::Fd(efd.as_raw_fd()), libc::POLLIN as u32)
        .multi(true)
        .build()
        .user_data(UD_PROBE);
    // SAFETY: the entry names `efd` by number only; `efd` stays open until the poll has ended
    // below, or is leaked (never closed) if it has not, so the number cannot be reused.
    if unsafe { ring.submission().push(&entry) }.is_err() {
        return false;
    }
    let (mut supported, mut ended, mut cancelled) = (false, false, false);
    let ts = types::Timespec::from(Duration::from_millis(500));
    let args = types::SubmitArgs::new().timespec(&ts);
    for _ in 0..4 {
        let _ = ring.submitter().submit_with_args(1, &args);
        for cqe in ring.completion() {
            if cqe.user_data() == UD_PROBE {
                if cqueue::more(cqe.flags()) {
                    supported = true;
                } else {
                    ended = true;
                }
            }
        }
        if ended {
            break;
        }
        if !cancelled {
            let cancel = opcode::AsyncCancel::new(UD_PROBE)
                .build()
                .user_data(UD_PROBE_CANCEL);
            // SAFETY: a cancel entry carries no pointers.
            cancelled = unsafe { ring.submission().push(&cancel) }.is_ok();
        }
    }
    // Drain the cancel's own CQE if it arrived late.
    ring.completion().for_each(drop);
    if !ended {
        std::mem::forget(efd);
    }
    supported
}

/// The address of `len` bytes at `offset` in `region`, refused ([`Error::OutOfBounds`]) unless
/// the range lies inside it.
fn range_ptr(region: &dyn MemoryRegion, offset: usize, len: u32) -> Result<*mut u8> {
    let (len, region_len) = (len as usize, region.len());
    if offset.checked_add(len).is_none_or(|end| end > region_len) {
        return Err(Error::OutOfBounds {
            offset,
            len,
            region_len,
        });
    }
    Ok(region.as_ptr().wrapping_add(offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::{EventfdFlags, eventfd};

    #[test]
    fn user_data_round_trips_and_never_sets_internal_bit() {
        for (key, generation) in [(0, 1), (7, 0x7fff_ffff), (u32::MAX as usize, 12345)] {
            let ud = join_user_data(key, generation).unwrap();
            assert_eq!(ud & INTERNAL, 0);
            assert_eq!(split_user_data(ud), Some((key, generation)));
        }
        assert_eq!(split_user_data(UD_CANCEL), None);
    }

    #[test]
    fn setup_errors_say_what_to_do() {
        let eperm = || io::Error::from_raw_os_error(libc::EPERM);
        let err = classify_setup_error(eperm(), || Some("2\n".into()));
        assert!(matches!(&err, Error::Disabled { value } if value == "2"));
        assert!(err.to_string().contains("set it to 0"), "{err}");
        assert!(matches!(
            classify_setup_error(eperm(), || Some("0\n".into())),
            Error::Setup { .. }
        ));
        assert!(matches!(
            classify_setup_error(io::Error::from_raw_os_error(libc::ENOSYS), || None),
            Error::Unsupported {
                what: "io_uring",
                ..
            }
        ));
        let err = classify_setup_error(io::Error::from_raw_os_error(libc::ENOMEM), || None);
        assert!(err.to_string().contains("RLIMIT_MEMLOCK"), "{err}");
    }

    /// A CQ of 2 entries overflows on the third poll event; the kernel then ends the multishot
    /// (final CQE without F_MORE) and the reactor must re-arm it.
    #[test]
    fn multishot_poll_is_rearmed_after_cq_overflow() {
        let config = ReactorConfig {
            sq_entries: 2,
            cq_entries: 2,
            fixed_buffer_slots: 0,
            ..ReactorConfig::default()
        };
        let mut reactor = Reactor::with_config(config).unwrap();
        assert!(
            reactor.features().multishot_poll,
            "kernel 6.18 has multishot poll"
        );
        let efd = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap());
        reactor.poll_multishot(Arc::clone(&efd), 9).unwrap();
        reactor.submit().unwrap();
        for _ in 0..4 {
            rustix::io::write(&*efd, &1u64.to_ne_bytes()).unwrap();
            reactor.enter_without_reaping().unwrap();
        }
        let mut events = Vec::new();
        reactor
            .wait(1, Some(Duration::from_secs(5)), |c| events.push(c))
            .unwrap();
        assert!(events.len() >= 3, "{events:?}");
        assert!(
            events
                .iter()
                .all(|c| c.token == 9 && matches!(c.event, Event::Readable { .. })),
            "{events:?}"
        );
        assert!(reactor.stats().poll_rearms >= 1, "{:?}", reactor.stats());
        // The re-armed poll still delivers.
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&*efd, &mut buf);
        let mut later = Vec::new();
        for _ in 0..50 {
            rustix::io::write(&*efd, &1u64.to_ne_bytes()).unwrap();
            reactor
                .wait(1, Some(Duration::from_millis(100)), |c| later.push(c))
                .unwrap();
            if !later.is_empty() {
                break;
            }
        }
        assert!(
            matches!(
                later.first().map(|c| &c.event),
                Some(Event::Readable { .. })
            ),
            "{later:?}"
        );
    }
}
