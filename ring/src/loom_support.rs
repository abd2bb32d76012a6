//! Loom stand-ins (only under `cfg(loom)`): a [`SharedMemory`] whose control words are loom
//! atomics and whose entry slots are loom `UnsafeCell`s, plus a futex and an eventfd built on
//! loom's mutex and condition variable.
//!
//! Entry slots being cells (not atomics) makes the model *stronger*: loom reports any
//! read of a slot that is not ordered (happens-before) against its last write — a slot reused
//! too early, or read before its publication — as a data race.

use std::sync::atomic::Ordering;
use std::time::Duration;

use blobring_shm::{AccessError, SharedMemory};
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU32, fence};
use loom::sync::{Condvar, Mutex};

use crate::{Notifier, RingError, Sleeper, Slept};

const CHUNK: u64 = 32;

/// Memory for loom models: bytes `[0, atomic_len)` are loom atomics (one per u32 word; use
/// for the control block), bytes `[atomic_len, len)` are 32-byte `UnsafeCell` chunks (entry
/// arrays). Atomics on chunk bytes, or byte copies that are not whole chunks, panic: they
/// would be bugs in the model's layout, not in the ring.
#[derive(Debug)]
pub struct LoomMemory {
    words: Box<[AtomicU32]>,
    chunks: Box<[UnsafeCell<[u8; CHUNK as usize]>]>,
    atomic_len: u64,
    len: u64,
}

// SAFETY: cells are only accessed through loom's `with`/`with_mut`, which check every access
// for causality violations and fail the model on a race, instead of racing for real.
unsafe impl Sync for LoomMemory {}
// SAFETY: as above; every field is owned.
unsafe impl Send for LoomMemory {}

impl LoomMemory {
    /// `atomic_len` bytes of atomic words followed by `cell_len` bytes of cells (both rounded
    /// up to whole words / chunks).
    pub fn new(atomic_len: u64, cell_len: u64) -> Self {
        let atomic_len = atomic_len.div_ceil(CHUNK) * CHUNK;
        let n_chunks = cell_len.div_ceil(CHUNK);
        Self {
            words: (0..atomic_len / 4).map(|_| AtomicU32::new(0)).collect(),
            chunks: (0..n_chunks)
                .map(|_| UnsafeCell::new([0; CHUNK as usize]))
                .collect(),
            atomic_len,
            len: atomic_len + n_chunks * CHUNK,
        }
    }

    fn word(&self, offset: u64) -> Result<&AtomicU32, AccessError> {
        if offset.checked_add(4).is_none_or(|e| e > self.len) {
            return Err(AccessError::OutOfBounds {
                offset,
                len: 4,
                size: self.len,
            });
        }
        if !offset.is_multiple_of(4) {
            return Err(AccessError::Misaligned { offset, len: 4 });
        }
        assert!(
            offset < self.atomic_len,
            "atomic access to a cell chunk at {offset}"
        );
        Ok(&self.words[(offset / 4) as usize])
    }

    fn chunks_for(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>, AccessError> {
        let len = len as u64;
        if offset.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(AccessError::OutOfBounds {
                offset,
                len,
                size: self.len,
            });
        }
        assert!(
            offset >= self.atomic_len
                && (offset - self.atomic_len).is_multiple_of(CHUNK)
                && len.is_multiple_of(CHUNK),
            "byte copy at {offset}+{len} is not whole cell chunks"
        );
        let first = ((offset - self.atomic_len) / CHUNK) as usize;
        Ok(first..first + (len / CHUNK) as usize)
    }
}

impl SharedMemory for LoomMemory {
    fn size(&self) -> u64 {
        self.len
    }
    blobring_shm::u32_cell_methods!(self.word);
    /// Two 32-bit loads (low word first): not single-copy atomic, which the ring never needs.
    fn load_u64(&self, offset: u64, order: Ordering) -> Result<u64, AccessError> {
        if !offset.is_multiple_of(8) {
            return Err(AccessError::Misaligned { offset, len: 8 });
        }
        let lo = self.word(offset)?.load(order);
        let hi = self.word(offset + 4)?.load(order);
        Ok(u64::from(lo) | (u64::from(hi) << 32))
    }
    /// Two 32-bit stores (low word first); see `load_u64`.
    fn store_u64(&self, offset: u64, value: u64, order: Ordering) -> Result<(), AccessError> {
        if !offset.is_multiple_of(8) {
            return Err(AccessError::Misaligned { offset, len: 8 });
        }
        self.word(offset)?.store(value as u32, order);
        self.word(offset + 4)?.store((value >> 32) as u32, order);
        Ok(())
    }
    fn read(&self, offset: u64, dst: &mut [u8]) -> Result<(), AccessError> {
        let range = self.chunks_for(offset, dst.len())?;
        for (c, out) in self.chunks[range]
            .iter()
            .zip(dst.chunks_mut(CHUNK as usize))
        {
            // SAFETY: loom hands us a pointer valid for the duration of the closure and
            // records the access for race detection.
            c.with(|p| out.copy_from_slice(unsafe { &*p }));
        }
        Ok(())
    }
    fn write(&self, offset: u64, src: &[u8]) -> Result<(), AccessError> {
        let range = self.chunks_for(offset, src.len())?;
        for (c, inp) in self.chunks[range].iter().zip(src.chunks(CHUNK as usize)) {
            // SAFETY: as in `read`; loom checks the exclusive access.
            c.with_mut(|p| unsafe { &mut *p }.copy_from_slice(inp));
        }
        Ok(())
    }
    fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<(), AccessError> {
        self.write(offset, &vec![byte; len as usize])
    }
    fn fence(&self, order: Ordering) {
        fence(order);
    }
}

/// A futex on a [`LoomMemory`] word: `sleep(seen)` blocks only if the word still equals
/// `seen`, checked under the same lock `notify` takes, like the kernel's hash-bucket lock.
#[derive(Debug)]
pub struct LoomFutex<M> {
    mem: M,
    offset: u64,
    lock: Mutex<()>,
    cv: Condvar,
}

impl<M: std::ops::Deref<Target = LoomMemory>> LoomFutex<M> {
    /// The futex at `offset` of `mem`.
    pub fn new(mem: M, offset: u64) -> Self {
        Self {
            mem,
            offset,
            lock: Mutex::new(()),
            cv: Condvar::new(),
        }
    }
}

impl<M: std::ops::Deref<Target = LoomMemory>> Sleeper for LoomFutex<M> {
    fn sleep(&self, seen: u32, _timeout: Option<Duration>) -> Result<Slept, RingError> {
        let guard = self.lock.lock().unwrap();
        if self.mem.load_u32(self.offset, Ordering::SeqCst)? != seen {
            return Ok(Slept::Woken);
        }
        drop(self.cv.wait(guard).unwrap());
        Ok(Slept::Woken)
    }
}

impl<M: std::ops::Deref<Target = LoomMemory>> Notifier for LoomFutex<M> {
    fn notify(&self) -> Result<(), RingError> {
        let _guard = self.lock.lock().unwrap();
        self.cv.notify_all();
        Ok(())
    }
}

/// An eventfd model: a counter that `notify` increments and `sleep` waits for and clears.
#[derive(Debug, Default)]
pub struct LoomEventFd {
    count: Mutex<u64>,
    cv: Condvar,
}

impl LoomEventFd {
    /// Counter 0.
    pub fn new() -> Self {
        Self {
            count: Mutex::new(0),
            cv: Condvar::new(),
        }
    }
}

impl Sleeper for LoomEventFd {
    fn sleep(&self, _seen: u32, _timeout: Option<Duration>) -> Result<Slept, RingError> {
        let mut count = self.count.lock().unwrap();
        while *count == 0 {
            count = self.cv.wait(count).unwrap();
        }
        *count = 0;
        Ok(Slept::Woken)
    }
}

impl Notifier for LoomEventFd {
    fn notify(&self) -> Result<(), RingError> {
        *self.count.lock().unwrap() += 1;
        self.cv.notify_one();
        Ok(())
    }
}
