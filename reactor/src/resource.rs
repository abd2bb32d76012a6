//! Resources that in-flight operations borrow: file descriptors, memory regions, futex words.
//!
//! Each type here is held by the reactor (an `Arc` clone per operation) from the moment an
//! operation is queued until its last completion has been reaped, so the kernel never touches
//! memory or a descriptor number that the program has already released.

use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use crate::error::{Error, Result};

/// A file descriptor shared between its owner and the reactor.
///
/// The reactor keeps a clone for as long as an operation on it is in flight (for a multishot
/// poll: until the poll has ended), so the descriptor number cannot be closed and reused for
/// another file under the kernel's feet, nor can a re-arm land on a stranger's descriptor.
#[derive(Clone)]
pub struct SharedFd(Arc<dyn AsFd + Send + Sync>);

impl SharedFd {
    /// Wraps anything that owns a descriptor.
    pub fn new<T: AsFd + Send + Sync + 'static>(owner: T) -> Self {
        SharedFd(Arc::new(owner))
    }

    /// The raw descriptor number (valid while this value is alive).
    pub fn raw(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl fmt::Debug for SharedFd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedFd").field(&self.raw()).finish()
    }
}

impl From<OwnedFd> for SharedFd {
    fn from(fd: OwnedFd) -> Self {
        SharedFd::new(fd)
    }
}

impl From<File> for SharedFd {
    fn from(file: File) -> Self {
        SharedFd::new(file)
    }
}

impl<T: AsFd + Send + Sync + 'static> From<Arc<T>> for SharedFd {
    fn from(owner: Arc<T>) -> Self {
        SharedFd(owner)
    }
}

/// A mapped memory region the kernel may read and write asynchronously: the target of
/// fixed-buffer registration and of `read_fixed` / `write_fixed`.
///
/// The shm crate's mappings (memfd regions shared with clients and the host) implement this.
///
/// # Safety
///
/// Implementors guarantee, for as long as the value is alive:
/// - `[as_ptr(), as_ptr() + len())` is mapped readable and writable, and neither moves nor
///   shrinks (for a memfd: the mapping is not unmapped and the file is sealed against shrinking
///   or was created by us);
/// - nothing relies on Rust aliasing guarantees for that memory: it is accessed only through
///   raw pointers, volatile or atomic operations, never through `&[u8]` / `&mut [u8]` that live
///   across a reactor call, because the kernel writes into it at times Rust cannot see.
pub unsafe trait MemoryRegion: Send + Sync + 'static {
    /// Base address of the region.
    fn as_ptr(&self) -> *mut u8;
    /// Length of the region in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A `u32` futex word, possibly in memory shared with other processes.
///
/// Futex operations issued by the reactor never use the `PRIVATE` flag, so a word in a
/// `MAP_SHARED` mapping wakes (and is woken by) other processes.
///
/// # Safety
///
/// Implementors guarantee that `word()` returns a 4-byte aligned pointer to a `u32` that stays
/// mapped (readable and writable) for as long as the value is alive, and that the word is only
/// accessed atomically.
pub unsafe trait FutexWord: Send + Sync + 'static {
    /// Address of the word.
    fn word(&self) -> *const AtomicU32;
}

// SAFETY: an `AtomicU32` is 4-byte aligned, lives as long as the value (the reactor holds it in
// an `Arc`) and is only accessed atomically.
unsafe impl FutexWord for AtomicU32 {
    fn word(&self) -> *const AtomicU32 {
        self
    }
}

// SAFETY: a shm `Mapping` stays mapped read-write and shared until it is dropped, at a fixed
// address; its file is sealed against shrinking (`Region::create` seals it, `Mapping::map_peer`
// refuses an fd without F_SEAL_SHRINK), so the range cannot turn into a SIGBUS hole by
// truncation; and the crate only accesses it through atomic/copying accessors, never through
// references (its own documented rule for `as_raw_parts`).
unsafe impl MemoryRegion for blobring_shm::Mapping {
    fn as_ptr(&self) -> *mut u8 {
        self.as_raw_parts().0
    }
    fn len(&self) -> usize {
        self.as_raw_parts().1
    }
}

// SAFETY: a `Region` owns its `Mapping` (see the impl above) for its whole life.
unsafe impl MemoryRegion for blobring_shm::Region {
    fn as_ptr(&self) -> *mut u8 {
        self.mapping().as_raw_parts().0
    }
    fn len(&self) -> usize {
        self.mapping().as_raw_parts().1
    }
}

/// A futex word at a checked offset inside a [`MemoryRegion`] (e.g. a client's CQ epoch word).
#[derive(Clone)]
pub struct RegionWord {
    region: Arc<dyn MemoryRegion>,
    offset: usize,
}

impl RegionWord {
    /// Names the `u32` at `offset` in `region`. Fails unless the word lies wholly inside the
    /// region and is 4-byte aligned.
    pub fn new(region: Arc<dyn MemoryRegion>, offset: usize) -> Result<Self> {
        let region_len = region.len();
        let base = region.as_ptr() as usize;
        let fits = offset.checked_add(4).is_some_and(|end| end <= region_len);
        let aligned = base.wrapping_add(offset).is_multiple_of(4);
        if !fits || !aligned {
            return Err(Error::BadFutexWord { offset, region_len });
        }
        Ok(RegionWord { region, offset })
    }

    /// Offset of the word in its region.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

impl fmt::Debug for RegionWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegionWord")
            .field("base", &self.region.as_ptr())
            .field("offset", &self.offset)
            .finish()
    }
}

// SAFETY: `new` checked that `offset..offset + 4` lies inside the region and that the address is
// 4-byte aligned; the region stays mapped while `self.region` (an `Arc`) is alive, per the
// `MemoryRegion` contract, which also requires non-reference (atomic) access.
unsafe impl FutexWord for RegionWord {
    fn word(&self) -> *const AtomicU32 {
        self.region
            .as_ptr()
            .wrapping_add(self.offset)
            .cast::<AtomicU32>()
    }
}

/// Index of a region registered with [`Reactor::register_region`](crate::Reactor::register_region).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BufIndex(pub(crate) u16);

impl BufIndex {
    /// The io_uring buffer index.
    pub fn get(self) -> u16 {
        self.0
    }
}

/// A byte range inside a registered region: the buffer of a `read_fixed` / `write_fixed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedRange {
    /// The registered region.
    pub index: BufIndex,
    /// Offset of the range in the region.
    pub offset: usize,
    /// Length of the range.
    pub len: u32,
}
