//! Memfd regions: creation (size, pre-fault, seal) and mapping.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

use crate::access::{RawMemory, delegate_shared_memory};

/// Which page size backs a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// hugetlbfs 2 MiB pages (`MFD_HUGETLB`).
    Huge2M,
    /// Transparent huge pages on shmem (`MADV_HUGEPAGE`).
    Thp,
    /// Ordinary 4 KiB pages.
    Small,
}

impl PageKind {
    /// The page size in bytes.
    pub fn page_size(self) -> u32 {
        match self {
            Self::Huge2M | Self::Thp => 2 << 20,
            Self::Small => 4096,
        }
    }
}

/// Why a region could not be created or mapped.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Sys {
        /// What we were doing.
        op: &'static str,
        /// The errno.
        #[source]
        source: rustix::io::Errno,
    },
    /// A received fd is not a memfd (or other shmem file).
    #[error("the received file descriptor is not a memfd (F_GET_SEALS refused it)")]
    NotMemfd,
    /// A received memfd is not sealed against shrinking.
    #[error("the received memfd is not sealed against shrinking (F_SEAL_SHRINK missing)")]
    NotSealed,
    /// A received memfd is smaller than its geometry says.
    #[error("the received memfd has {actual} bytes but {expected} are needed")]
    TooSmall {
        /// Bytes needed.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// A zero or absurd length.
    #[error("invalid region length {0}")]
    BadLength(u64),
}

fn sys(op: &'static str) -> impl FnOnce(rustix::io::Errno) -> RegionError {
    move |source| RegionError::Sys { op, source }
}

/// A shared mapping of a memfd, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    raw: RawMemory,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all access goes through RawMemory's atomic and
// copying accessors, which are safe to call from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as for Send.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` read-write and shared, without checking seals or size. Callers
    /// outside this crate use [`Region::create`] or [`Mapping::map_peer`].
    fn map(fd: BorrowedFd<'_>, len: u64, populate: bool) -> Result<Self, RegionError> {
        if len == 0 || len > isize::MAX as u64 {
            return Err(RegionError::BadLength(len));
        }
        let mut flags = MapFlags::SHARED;
        if populate {
            flags |= MapFlags::POPULATE;
        }
        // SAFETY: a fresh mapping at an address chosen by the kernel (no MAP_FIXED), so it
        // cannot alias any Rust object. The fd's size was checked (or set) by the caller to be
        // at least `len` and is sealed against shrinking, so no access within `len` can SIGBUS.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len as usize,
                ProtFlags::READ | ProtFlags::WRITE,
                flags,
                fd,
                0,
            )
        }
        .map_err(sys("mmap"))?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(RegionError::BadLength(len))?;
        // SAFETY: `ptr` is a live, page-aligned mapping of `len` bytes that lives until `Drop`,
        // which drops `raw` only as part of dropping `self`.
        let raw = unsafe { RawMemory::new(ptr.as_ptr(), len) };
        Ok(Self { raw, ptr, len: len as usize })
    }

    /// Maps a memfd received from a peer, refusing one that is not a memfd, is not sealed
    /// against shrinking, or is smaller than `expected_len`. Adds `F_SEAL_GROW | F_SEAL_SEAL`
    /// if they are missing and allowed. Maps exactly `expected_len` bytes.
    pub fn map_peer(fd: BorrowedFd<'_>, expected_len: u64) -> Result<Self, RegionError> {
        let seals = rustix::fs::fcntl_get_seals(fd).map_err(|e| {
            if e == rustix::io::Errno::INVAL { RegionError::NotMemfd } else { sys("F_GET_SEALS")(e) }
        })?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(RegionError::NotSealed);
        }
        let actual = rustix::fs::fstat(fd).map_err(sys("fstat"))?.st_size as u64;
        if actual < expected_len {
            return Err(RegionError::TooSmall { expected: expected_len, actual });
        }
        Self::map(fd, expected_len, true)
    }

    /// Bytes mapped.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Always false: mappings are never empty.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe the mapping created in `map`; no reference into it
        // exists outside this value (the crate never lets one escape), and `raw` is not used
        // after this point.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

delegate_shared_memory!(Mapping, raw);

/// A memfd this process created, sized, pre-faulted and sealed, with its mapping.
#[derive(Debug)]
pub struct Region {
    fd: OwnedFd,
    map: Mapping,
    kind: PageKind,
}

impl Region {
    /// Creates a sealed region of `len` bytes named `name` (visible in `/proc/<pid>/fd`).
    pub fn create(name: &str, len: u64) -> Result<Self, RegionError> {
        if len == 0 {
            return Err(RegionError::BadLength(len));
        }
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(sys("memfd_create"))?;
        rustix::fs::ftruncate(&fd, len).map_err(sys("ftruncate"))?;
        let map = Mapping::map(fd.as_fd(), len, true)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(sys("F_ADD_SEALS"))?;
        Ok(Self { fd, map, kind: PageKind::Small })
    }

    /// The memfd, to pass to a peer.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The mapping.
    pub fn mapping(&self) -> &Mapping {
        &self.map
    }

    /// Which page size backs the region.
    pub fn page_kind(&self) -> PageKind {
        self.kind
    }

    /// Bytes of the region.
    pub fn len(&self) -> u64 {
        self.map.len()
    }

    /// Always false: regions are never empty.
    pub fn is_empty(&self) -> bool {
        false
    }
}

delegate_shared_memory!(Region, map);
