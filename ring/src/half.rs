//! One producer and one consumer half, generic over the entry type: the SQ
//! ([`SqProducer`](crate::SqProducer), [`SqConsumer`](crate::SqConsumer)) and the CQ
//! ([`CqProducer`](crate::CqProducer), [`CqConsumer`](crate::CqConsumer)) are the same protocol
//! over different words of the [`QueueControl`](blobring_abi::QueueControl) block, named by
//! [`Entry`]. What only one queue does (the daemon's `sq_rejected`, the client's futex wait)
//! lives in `sq.rs` / `cq.rs`.

use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};

use blobring_abi::{Cqe, FromBytes, Immutable, IntoBytes, Sqe, qc};
use blobring_shm::SharedMemory;

use crate::{Published, QueueLayout, RingError, check_advance};

/// A free-running index in the control block: where it is, and its name for
/// [`RingError::Corrupt`].
#[derive(Debug, Clone, Copy)]
pub struct IndexWord {
    /// Offset in the control block.
    pub offset: u64,
    /// The field's name (`sq_head`, ...).
    pub name: &'static str,
}

impl IndexWord {
    const fn new(offset: u64, name: &'static str) -> Self {
        Self { offset, name }
    }
}

/// A sleep flag in the control block: where it is, and whether the side that finds it set
/// claims it (clears it before waking the sleeper; see [`peer_flag`]).
#[derive(Debug, Clone, Copy)]
pub struct SleepFlag {
    /// Offset in the control block.
    pub offset: u64,
    /// The waker clears the flag when it finds it set (one wake-up per sleep).
    pub claimed: bool,
}

/// The daemon's `sq_need_wakeup` (it sleeps on its eventfd), claimed by the client.
const SQ_NEED_WAKEUP: SleepFlag = SleepFlag {
    offset: qc::SQ_NEED_WAKEUP,
    claimed: true,
};
/// The client's `cq_waiting` (it sleeps on the `cq_tail` futex; several threads may), never
/// claimed.
const CQ_WAITING: SleepFlag = SleepFlag {
    offset: qc::CQ_WAITING,
    claimed: false,
};

/// An entry type and the control words of its queue.
pub trait Entry: FromBytes + IntoBytes + Immutable + Copy {
    /// The consumer's index.
    const HEAD: IndexWord;
    /// The producer's index.
    const TAIL: IndexWord;
    /// The consumer's "I sleep" flag, which the producer reads after publishing its tail.
    const CONSUMER_SLEEPS: SleepFlag;
    /// The flag the consumer reads after publishing its head, if its producer may sleep
    /// waiting for free slots (the daemon out of CQ credits).
    const PRODUCER_SLEEPS: Option<SleepFlag>;
    /// Entries of this queue in `layout`.
    fn entries(layout: &QueueLayout) -> u32;
    /// Offset of entry 0 of this queue in `layout`.
    fn array(layout: &QueueLayout) -> u64;
}

impl Entry for Sqe {
    const HEAD: IndexWord = IndexWord::new(qc::SQ_HEAD, "sq_head");
    const TAIL: IndexWord = IndexWord::new(qc::SQ_TAIL, "sq_tail");
    const CONSUMER_SLEEPS: SleepFlag = SQ_NEED_WAKEUP;
    const PRODUCER_SLEEPS: Option<SleepFlag> = None;
    fn entries(layout: &QueueLayout) -> u32 {
        layout.sq_entries
    }
    fn array(layout: &QueueLayout) -> u64 {
        layout.sqes
    }
}

impl Entry for Cqe {
    const HEAD: IndexWord = IndexWord::new(qc::CQ_HEAD, "cq_head");
    const TAIL: IndexWord = IndexWord::new(qc::CQ_TAIL, "cq_tail");
    const CONSUMER_SLEEPS: SleepFlag = CQ_WAITING;
    // A daemon out of CQ credits sleeps until `cq_head` moves, on the SQ's flag.
    const PRODUCER_SLEEPS: Option<SleepFlag> = Some(SQ_NEED_WAKEUP);
    fn entries(layout: &QueueLayout) -> u32 {
        layout.cq_entries
    }
    fn array(layout: &QueueLayout) -> u64 {
        layout.cqes
    }
}

/// The producer half of a queue: writes entries and publishes the tail.
///
/// `tail` is authoritative and private; the shared tail is only ever stored, never read back.
/// `head` caches the consumer's head, refreshed only when the ring looks too full for a push,
/// and validated on every refresh.
#[derive(Debug)]
pub struct Producer<M, E> {
    mem: M,
    layout: QueueLayout,
    tail: u32,
    head: u32,
    entry: PhantomData<fn(E) -> E>,
}

impl<M: Deref<Target: SharedMemory>, E: Entry> Producer<M, E> {
    /// A producer whose private tail is `tail` and whose cached head is `head` (validated by
    /// the caller).
    pub(crate) fn from_parts(
        mem: M,
        layout: &QueueLayout,
        tail: u32,
        head: u32,
    ) -> Result<Self, RingError> {
        layout.check_fits(&*mem)?;
        Ok(Self {
            mem,
            layout: *layout,
            tail,
            head,
            entry: PhantomData,
        })
    }

    /// The next index this producer will fill (its private tail).
    pub fn tail(&self) -> u32 {
        self.tail
    }

    /// Entries published but not yet consumed, as far as the cached head knows.
    pub fn pending(&self) -> u32 {
        self.tail.wrapping_sub(self.head)
    }

    /// Free slots, refreshing the cached head only if fewer than `want` look free.
    pub fn free(&mut self, want: u32) -> Result<u32, RingError> {
        let free = E::entries(&self.layout) - self.pending();
        if free >= want {
            return Ok(free);
        }
        self.refresh()
    }

    /// Re-reads and validates the consumer's head; returns the free slots.
    pub(crate) fn refresh(&mut self) -> Result<u32, RingError> {
        // Acquire pairs with the consumer's release store of its head, issued after it copied
        // the entries out: our later overwrites of those slots happen after its reads.
        let head = self
            .mem
            .load_u32(self.layout.field(E::HEAD.offset), Acquire)?;
        // The head may only move forward, and never past what we published
        // (`my_cq_tail - client_cq_head > cq_entries` is the classic corruption).
        check_advance(E::HEAD.name, self.head, self.head, head, self.pending())?;
        self.head = head;
        Ok(E::entries(&self.layout) - self.pending())
    }

    /// Copies as many of `entries` as fit into the ring and publishes them with one release
    /// store of the tail. Then reports whether the consumer sleeps and must be woken.
    pub fn push_batch(&mut self, entries: &[E]) -> Result<Published, RingError> {
        let want = u32::try_from(entries.len())
            .unwrap_or(u32::MAX)
            .min(E::entries(&self.layout));
        let n = want.min(self.free(want)?);
        if n == 0 {
            return Ok(Published::NOTHING);
        }
        self.layout
            .write_entries(&*self.mem, self.tail, &entries[..n as usize])?;
        self.tail = self.tail.wrapping_add(n);
        // Release: the entry bytes written above become visible to a consumer that loads this
        // tail with acquire. One store per batch. (`cq_tail` is also the client's futex word.)
        self.mem
            .store_u32(self.layout.field(E::TAIL.offset), self.tail, Release)?;
        // Fence + load the consumer's flag: pairs with the fence in `Consumer::prepare_idle`.
        let wake_peer = peer_flag(&*self.mem, &self.layout, E::CONSUMER_SLEEPS)?;
        Ok(Published {
            count: n as usize,
            wake_peer,
        })
    }
}

/// The consumer half of a queue: copies entries out and publishes the head.
///
/// `head` is authoritative and private (never read back from shared memory); `tail` caches the
/// producer's tail, refreshed only when the ring looks too empty, and validated on every
/// refresh.
#[derive(Debug)]
pub struct Consumer<M, E> {
    mem: M,
    layout: QueueLayout,
    head: u32,
    tail: u32,
    entry: PhantomData<fn(E) -> E>,
}

impl<M: Deref<Target: SharedMemory>, E: Entry> Consumer<M, E> {
    /// A consumer whose private head and cached tail are `head` (the tail is then refreshed
    /// on demand).
    pub(crate) fn from_head(mem: M, layout: &QueueLayout, head: u32) -> Result<Self, RingError> {
        layout.check_fits(&*mem)?;
        Ok(Self {
            mem,
            layout: *layout,
            head,
            tail: head,
            entry: PhantomData,
        })
    }

    pub(crate) fn mem(&self) -> &M::Target {
        &self.mem
    }

    pub(crate) fn layout(&self) -> &QueueLayout {
        &self.layout
    }

    /// The next index this consumer will take (its private head).
    pub fn head(&self) -> u32 {
        self.head
    }

    /// The producer's tail as last loaded and validated.
    pub fn cached_tail(&self) -> u32 {
        self.tail
    }

    /// Entries available, refreshing the cached tail only if fewer than `want` are cached.
    pub fn available(&mut self, want: u32) -> Result<u32, RingError> {
        let avail = self.tail.wrapping_sub(self.head);
        if avail >= want {
            return Ok(avail);
        }
        self.refresh()
    }

    /// Re-reads and validates the producer's tail; returns the entries available.
    pub(crate) fn refresh(&mut self) -> Result<u32, RingError> {
        self.refresh_raw().map(|(n, _)| n)
    }

    /// Re-reads and validates the tail; returns `(available, raw value read)`.
    fn refresh_raw(&mut self) -> Result<(u32, u32), RingError> {
        // Acquire pairs with the producer's release store of its tail: the entry bytes it
        // wrote before publishing are visible to the copies we make after this load.
        let tail = self
            .mem
            .load_u32(self.layout.field(E::TAIL.offset), Acquire)?;
        // A tail more than `entries` ahead of our head, or behind what it already published,
        // is corrupt: taking it would read slots twice or spin forever.
        check_advance(
            E::TAIL.name,
            self.head,
            self.tail,
            tail,
            E::entries(&self.layout),
        )?;
        self.tail = tail;
        Ok((tail.wrapping_sub(self.head), tail))
    }

    /// Copies up to `out.len()` entries out (one copy each, into private memory; at most two
    /// copies per batch, split at the wrap — never a reference into shared memory) and
    /// publishes the new head with one release store. The bytes are returned exactly as the
    /// producer wrote them; validating their fields is the caller's job. `wake_peer` is set
    /// when the producer sleeps waiting for free slots ([`Entry::PRODUCER_SLEEPS`]).
    pub(crate) fn pop(&mut self, out: &mut [E]) -> Result<Published, RingError> {
        let want = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let n = want.min(self.available(want)?);
        if n == 0 {
            return Ok(Published::NOTHING);
        }
        self.layout
            .read_entries(&*self.mem, self.head, &mut out[..n as usize])?;
        self.head = self.head.wrapping_add(n);
        // Release: our copies above happen before the producer sees the slots as free and
        // overwrites them (it loads the head with acquire).
        self.mem
            .store_u32(self.layout.field(E::HEAD.offset), self.head, Release)?;
        let wake_peer = match E::PRODUCER_SLEEPS {
            // Same handshake as for the tail (fence, then read the producer's flag).
            Some(flag) => peer_flag(&*self.mem, &self.layout, flag)?,
            None => false,
        };
        Ok(Published {
            count: n as usize,
            wake_peer,
        })
    }

    /// First half of going idle: sets the consumer's flag, fences, and re-reads the tail.
    /// Returns `Some(seen)` — the raw tail — when the consumer may sleep, or `None` (flag
    /// cleared again) when entries are available.
    pub(crate) fn prepare_idle(&mut self) -> Result<Option<u32>, RingError> {
        self.set_sleeping(true)?;
        // Pairs with the fence in `Producer::push_batch` between its tail store and its load
        // of our flag: either we see its new tail now, or it sees our flag and wakes us.
        self.mem.fence(SeqCst);
        match self.refresh_raw() {
            Ok((0, seen)) => Ok(Some(seen)),
            other => {
                self.set_sleeping(false)?;
                other.map(|_| None)
            }
        }
    }

    pub(crate) fn set_sleeping(&self, on: bool) -> Result<(), RingError> {
        // Relaxed: ordered against the following re-check by the SeqCst fence in
        // `prepare_idle`; a flag cleared late only costs the producer a spurious wake.
        self.mem.store_u32(
            self.layout.field(E::CONSUMER_SLEEPS.offset),
            u32::from(on),
            Relaxed,
        )?;
        Ok(())
    }
}

/// Loads a peer's sleep flag after a full fence, and claims it if it is set and
/// [`SleepFlag::claimed`] (the daemon's `sq_need_wakeup`; see below).
///
/// The fence pairs with the one the sleeper issues between storing its flag and re-reading our
/// index: either the sleeper's re-read sees the index we just published (and it does not
/// sleep), or this load sees its flag (and we signal). Without it the store of our index could
/// still sit in the store buffer while we read a stale 0 (tokio-rs/io-uring#197).
///
/// **Claiming `sq_need_wakeup`.** The client (producer of the SQ, consumer of the CQ) that
/// finds the daemon's flag set clears it, and its caller rings the doorbell right after
/// (`wake_peer`): the client's later publishes during the same sleep then find it clear and
/// make no syscall, instead of one eventfd write per request until the daemon's worker is
/// back on a CPU and clears the flag itself. No sleep is left without a ring: every clear is
/// followed by its caller's ring, so a clear that lands after the worker set the flag again
/// for a new sleep wakes that sleep too (spuriously at worst), and a publish that finds the
/// flag clear is covered by the fences as above — the worker sets the flag before its re-read,
/// so it either sees this publish or this load sees its new flag. The daemon never reads its
/// flag back; a client that clears it without ringing only delays its own requests until the
/// worker's sleep times out or another ring arrives. `cq_waiting` (the client's flag, read by
/// the daemon) is not claimed: several client threads may sleep on it.
fn peer_flag<S: SharedMemory + ?Sized>(
    mem: &S,
    layout: &QueueLayout,
    flag: SleepFlag,
) -> Result<bool, RingError> {
    mem.fence(SeqCst);
    let at = layout.field(flag.offset);
    // Relaxed: ordering comes from the fence; any non-zero value means "asleep" (a lying flag
    // only costs the liar's peer a syscall).
    let asleep = mem.load_u32(at, Relaxed)? != 0;
    if asleep && flag.claimed {
        // Relaxed: the ring that follows (a syscall) is what the worker waits for.
        mem.store_u32(at, 0, Relaxed)?;
    }
    Ok(asleep)
}
