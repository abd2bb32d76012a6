//! Bounds-checked access to memory a peer may write at any moment.
//!
//! [`SharedMemory`] is the only way the rest of blobring touches shared bytes: atomics for
//! indices and flags, and copies in and out for records and payloads. No method hands out a
//! Rust reference into the memory, so a peer scribbling on it can never break Rust's aliasing
//! rules in safe code; it can only make the values we copy out wrong, which the caller
//! validates.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use zerocopy::{FromBytes, Immutable, IntoBytes};

/// An access outside the memory, or a misaligned atomic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// `[offset, offset + len)` is not inside the memory.
    #[error("access of {len} bytes at offset {offset} is outside the {size}-byte shared memory")]
    OutOfBounds {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Size of the memory.
        size: u64,
    },
    /// An atomic access at an offset not aligned to its size.
    #[error("atomic access of {len} bytes at offset {offset} is misaligned")]
    Misaligned {
        /// Requested offset.
        offset: u64,
        /// Access size.
        len: u64,
    },
}

/// Memory shared with a peer (a mapped memfd, or heap memory in tests).
///
/// Offsets are bytes from the start. Atomic accesses must be naturally aligned. The `fence`
/// method exists so that a model checker can substitute its own fences; real implementations
/// call [`std::sync::atomic::fence`].
pub trait SharedMemory: Send + Sync {
    /// Bytes accessible.
    fn size(&self) -> u64;
    /// Atomic load of the u32 at `offset`.
    fn load_u32(&self, offset: u64, order: Ordering) -> Result<u32, AccessError>;
    /// Atomic store of the u32 at `offset`.
    fn store_u32(&self, offset: u64, value: u32, order: Ordering) -> Result<(), AccessError>;
    /// Atomic fetch-or of the u32 at `offset`; returns the previous value.
    fn fetch_or_u32(&self, offset: u64, value: u32, order: Ordering) -> Result<u32, AccessError>;
    /// Atomic load of the u64 at `offset`.
    fn load_u64(&self, offset: u64, order: Ordering) -> Result<u64, AccessError>;
    /// Atomic store of the u64 at `offset`.
    fn store_u64(&self, offset: u64, value: u64, order: Ordering) -> Result<(), AccessError>;
    /// Copies `dst.len()` bytes out of the memory, starting at `offset`.
    fn read(&self, offset: u64, dst: &mut [u8]) -> Result<(), AccessError>;
    /// Copies `src` into the memory at `offset`.
    fn write(&self, offset: u64, src: &[u8]) -> Result<(), AccessError>;
    /// Fills `len` bytes at `offset` with `byte`.
    fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<(), AccessError>;
    /// A memory fence of the given ordering.
    fn fence(&self, order: Ordering) {
        std::sync::atomic::fence(order);
    }

    /// Copies a `T` out of the memory (one copy; validate the result, never re-read).
    fn read_obj<T: FromBytes + IntoBytes>(&self, offset: u64) -> Result<T, AccessError>
    where
        Self: Sized,
    {
        let mut v = T::new_zeroed();
        self.read(offset, v.as_mut_bytes())?;
        Ok(v)
    }

    /// Copies `value` into the memory at `offset`.
    fn write_obj<T: IntoBytes + Immutable>(&self, offset: u64, value: &T) -> Result<(), AccessError>
    where
        Self: Sized,
    {
        self.write(offset, value.as_bytes())
    }
}

/// The 32-bit atomic methods of a [`SharedMemory`] impl whose memory is atomic cells:
/// `$self.$cell(offset)` returns the bounds- and alignment-checked `AtomicU32` at `offset`
/// (std's in [`RawMemory`], loom's in `blobring-ring`'s model-checking memory).
#[doc(hidden)]
#[macro_export]
macro_rules! u32_cell_methods {
    ($self:ident . $cell:ident) => {
        fn load_u32(
            &$self,
            offset: u64,
            order: ::std::sync::atomic::Ordering,
        ) -> Result<u32, $crate::AccessError> {
            Ok($self.$cell(offset)?.load(order))
        }
        fn store_u32(
            &$self,
            offset: u64,
            value: u32,
            order: ::std::sync::atomic::Ordering,
        ) -> Result<(), $crate::AccessError> {
            $self.$cell(offset)?.store(value, order);
            Ok(())
        }
        fn fetch_or_u32(
            &$self,
            offset: u64,
            value: u32,
            order: ::std::sync::atomic::Ordering,
        ) -> Result<u32, $crate::AccessError> {
            Ok($self.$cell(offset)?.fetch_or(value, order))
        }
    };
}

/// Checks `[offset, offset + len)` against `size`; returns `offset` as `usize`.
pub(crate) fn check(offset: u64, len: u64, size: u64) -> Result<usize, AccessError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(offset as usize),
        _ => Err(AccessError::OutOfBounds { offset, len, size }),
    }
}

fn check_atomic(offset: u64, len: u64, size: u64) -> Result<usize, AccessError> {
    let off = check(offset, len, size)?;
    if !offset.is_multiple_of(len) {
        return Err(AccessError::Misaligned { offset, len });
    }
    Ok(off)
}

/// A raw window of shared memory: base pointer and length. The owner (a mapping or a heap
/// allocation) guarantees that `[base, base + len)` stays valid and 8-byte aligned at `base`
/// for the life of the `RawMemory`.
#[derive(Debug)]
pub(crate) struct RawMemory {
    base: *mut u8,
    len: u64,
}

// SAFETY: RawMemory only performs atomic and volatile accesses through raw pointers; it never
// hands out references, so sharing it between threads cannot create data races in Rust's sense
// beyond those a peer process can already cause, which the access methods tolerate.
unsafe impl Send for RawMemory {}
// SAFETY: as for Send.
unsafe impl Sync for RawMemory {}

impl RawMemory {
    /// # Safety
    /// `base` must be valid for reads and writes of `len` bytes, aligned to 8, for as long as
    /// the returned value is used (the caller keeps the mapping alive and drops this first).
    pub(crate) unsafe fn new(base: *mut u8, len: u64) -> Self {
        debug_assert_eq!(base as usize % 8, 0);
        Self { base, len }
    }

    fn atomic_u32(&self, offset: u64) -> Result<&AtomicU32, AccessError> {
        let off = check_atomic(offset, 4, self.len)?;
        // SAFETY: `off + 4 <= len` and `off` is 4-aligned (base is 8-aligned), so the pointer is
        // in bounds and aligned for an AtomicU32; the memory is only ever accessed atomically or
        // volatilely. The reference does not outlive `&self` and never leaves this crate.
        Ok(unsafe { AtomicU32::from_ptr(self.base.add(off).cast()) })
    }

    fn atomic_u64(&self, offset: u64) -> Result<&AtomicU64, AccessError> {
        let off = check_atomic(offset, 8, self.len)?;
        // SAFETY: as in `atomic_u32`, with 8-byte alignment checked above.
        Ok(unsafe { AtomicU64::from_ptr(self.base.add(off).cast()) })
    }
}

impl SharedMemory for RawMemory {
    fn size(&self) -> u64 {
        self.len
    }

    crate::u32_cell_methods!(self.atomic_u32);

    fn load_u64(&self, offset: u64, order: Ordering) -> Result<u64, AccessError> {
        Ok(self.atomic_u64(offset)?.load(order))
    }

    fn store_u64(&self, offset: u64, value: u64, order: Ordering) -> Result<(), AccessError> {
        self.atomic_u64(offset)?.store(value, order);
        Ok(())
    }

    fn read(&self, offset: u64, dst: &mut [u8]) -> Result<(), AccessError> {
        let off = check(offset, dst.len() as u64, self.len)?;
        // SAFETY: the source range is in bounds (checked) and `dst` is a distinct, private
        // buffer. A concurrent peer write can only change which bytes we copy, never their
        // validity as u8.
        unsafe { volatile_copy(self.base.add(off), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn write(&self, offset: u64, src: &[u8]) -> Result<(), AccessError> {
        let off = check(offset, src.len() as u64, self.len)?;
        // SAFETY: the destination range is in bounds (checked); `src` is private memory.
        unsafe { volatile_copy(src.as_ptr(), self.base.add(off), src.len()) };
        Ok(())
    }

    fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<(), AccessError> {
        let off = check(offset, len, self.len)?;
        // SAFETY: the destination range is in bounds (checked).
        unsafe { std::ptr::write_bytes(self.base.add(off), byte, len as usize) };
        Ok(())
    }
}

/// Copies `len` bytes between shared and private memory.
///
/// The copy is a plain `memcpy` into or out of memory that another process may modify
/// concurrently; this is the same contract as the kernel's `copy_{to,from}_user` and vm-memory's
/// volatile slices: the bytes copied may be any mix of old and new values, which is why callers
/// copy once and validate the private copy.
///
/// # Safety
/// `src` must be valid for `len` reads, `dst` for `len` writes, and they must not overlap.
pub(crate) unsafe fn volatile_copy(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: guaranteed by the caller.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
}

/// Heap memory with the [`SharedMemory`] interface, for tests and for rings shared between
/// threads of one process.
#[derive(Debug)]
pub struct HeapMemory {
    raw: RawMemory,
    _storage: Box<[AtomicU64]>,
}

impl HeapMemory {
    /// `len` zeroed bytes (rounded up to a multiple of 8).
    pub fn new(len: u64) -> Self {
        let words = len.div_ceil(8) as usize;
        let storage: Box<[AtomicU64]> = (0..words).map(|_| AtomicU64::new(0)).collect();
        let base = storage.as_ptr() as *mut u8;
        // SAFETY: `storage` is a live allocation of `words * 8` bytes, 8-aligned, interior
        // mutable (atomics), kept alive by `_storage` for as long as `raw` exists (fields drop
        // in declaration order, so `raw` goes first).
        let raw = unsafe { RawMemory::new(base, len) };
        Self {
            raw,
            _storage: storage,
        }
    }
}

/// The methods of a [`SharedMemory`] impl that forwards every call, `fence` included, to
/// `$inner` (an expression of `$self`): for wrappers that add nothing to the access itself.
macro_rules! forward_shared_memory {
    ($self:ident => $inner:expr) => {
        fn size(&$self) -> u64 {
            $inner.size()
        }
        fn load_u32(&$self, offset: u64, order: ::std::sync::atomic::Ordering) -> Result<u32, $crate::AccessError> {
            $inner.load_u32(offset, order)
        }
        fn store_u32(&$self, offset: u64, value: u32, order: ::std::sync::atomic::Ordering) -> Result<(), $crate::AccessError> {
            $inner.store_u32(offset, value, order)
        }
        fn fetch_or_u32(&$self, offset: u64, value: u32, order: ::std::sync::atomic::Ordering) -> Result<u32, $crate::AccessError> {
            $inner.fetch_or_u32(offset, value, order)
        }
        fn load_u64(&$self, offset: u64, order: ::std::sync::atomic::Ordering) -> Result<u64, $crate::AccessError> {
            $inner.load_u64(offset, order)
        }
        fn store_u64(&$self, offset: u64, value: u64, order: ::std::sync::atomic::Ordering) -> Result<(), $crate::AccessError> {
            $inner.store_u64(offset, value, order)
        }
        fn read(&$self, offset: u64, dst: &mut [u8]) -> Result<(), $crate::AccessError> {
            $inner.read(offset, dst)
        }
        fn write(&$self, offset: u64, src: &[u8]) -> Result<(), $crate::AccessError> {
            $inner.write(offset, src)
        }
        fn fill(&$self, offset: u64, len: u64, byte: u8) -> Result<(), $crate::AccessError> {
            $inner.fill(offset, len, byte)
        }
        fn fence(&$self, order: ::std::sync::atomic::Ordering) {
            $inner.fence(order)
        }
    };
}

/// Implements [`SharedMemory`] for `$t` by forwarding to its field `$field`.
macro_rules! delegate_shared_memory {
    ($t:ty, $field:ident) => {
        impl $crate::SharedMemory for $t {
            $crate::access::forward_shared_memory!(self => self.$field);
        }
    };
}
pub(crate) use {delegate_shared_memory, forward_shared_memory};

delegate_shared_memory!(HeapMemory, raw);

/// Shared ownership of a shared memory (e.g. `Arc<Mapping>` held by a ring and by a guest
/// memory table at once).
impl<T: SharedMemory + ?Sized> SharedMemory for std::sync::Arc<T> {
    forward_shared_memory!(self => (**self));
}

/// A shared memory viewed through a window `[offset, offset + len)` of another; offsets are
/// relative to the window. Used to give a ring or a queue pair only its own part of a region.
#[derive(Debug, Clone)]
pub struct Window<M> {
    mem: M,
    offset: u64,
    len: u64,
}

impl<M: std::ops::Deref<Target = S> + Send + Sync, S: SharedMemory + ?Sized> Window<M> {
    /// The window `[offset, offset + len)` of `mem`.
    pub fn new(mem: M, offset: u64, len: u64) -> Result<Self, AccessError> {
        check(offset, len, mem.size())?;
        Ok(Self { mem, offset, len })
    }

    fn at(&self, offset: u64, len: u64) -> Result<u64, AccessError> {
        check(offset, len, self.len)?;
        Ok(self.offset + offset)
    }
}

impl<M: std::ops::Deref<Target = S> + Send + Sync, S: SharedMemory + ?Sized> SharedMemory
    for Window<M>
{
    fn size(&self) -> u64 {
        self.len
    }
    fn load_u32(&self, offset: u64, order: Ordering) -> Result<u32, AccessError> {
        self.mem.load_u32(self.at(offset, 4)?, order)
    }
    fn store_u32(&self, offset: u64, value: u32, order: Ordering) -> Result<(), AccessError> {
        self.mem.store_u32(self.at(offset, 4)?, value, order)
    }
    fn fetch_or_u32(&self, offset: u64, value: u32, order: Ordering) -> Result<u32, AccessError> {
        self.mem.fetch_or_u32(self.at(offset, 4)?, value, order)
    }
    fn load_u64(&self, offset: u64, order: Ordering) -> Result<u64, AccessError> {
        self.mem.load_u64(self.at(offset, 8)?, order)
    }
    fn store_u64(&self, offset: u64, value: u64, order: Ordering) -> Result<(), AccessError> {
        self.mem.store_u64(self.at(offset, 8)?, value, order)
    }
    fn read(&self, offset: u64, dst: &mut [u8]) -> Result<(), AccessError> {
        self.mem.read(self.at(offset, dst.len() as u64)?, dst)
    }
    fn write(&self, offset: u64, src: &[u8]) -> Result<(), AccessError> {
        self.mem.write(self.at(offset, src.len() as u64)?, src)
    }
    fn fill(&self, offset: u64, len: u64, byte: u8) -> Result<(), AccessError> {
        self.mem.fill(self.at(offset, len)?, len, byte)
    }
    fn fence(&self, order: Ordering) {
        self.mem.fence(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn bounds_alignment_and_round_trip() {
        let m = HeapMemory::new(64);
        m.store_u32(4, 7, Ordering::Release).unwrap();
        assert_eq!(m.load_u32(4, Ordering::Acquire).unwrap(), 7);
        assert!(matches!(
            m.load_u32(2, Ordering::Relaxed),
            Err(AccessError::Misaligned { .. })
        ));
        assert!(matches!(
            m.load_u64(64, Ordering::Relaxed),
            Err(AccessError::OutOfBounds { .. })
        ));
        assert!(m.read(60, &mut [0u8; 5]).is_err());
        assert!(m.write(u64::MAX, &[1]).is_err());
        m.write(10, b"hello").unwrap();
        let mut b = [0u8; 5];
        m.read(10, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        assert_eq!(m.fetch_or_u32(16, 4, Ordering::AcqRel).unwrap(), 0);
        assert_eq!(m.load_u32(16, Ordering::Relaxed).unwrap(), 4);
    }

    #[test]
    fn window_confines_accesses() {
        let m = Arc::new(HeapMemory::new(128));
        let w = Window::new(m.clone(), 64, 32).unwrap();
        w.store_u32(0, 9, Ordering::Relaxed).unwrap();
        assert_eq!(m.load_u32(64, Ordering::Relaxed).unwrap(), 9);
        assert!(w.load_u32(32, Ordering::Relaxed).is_err());
        assert!(Window::new(m, 100, 64).is_err());
    }
}
