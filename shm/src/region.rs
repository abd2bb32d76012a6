//! Memfd regions: creation (page size, size, seal, pre-fault) and mapping.
//!
//! # Page-size chain
//!
//! [`Region::create`] (policy [`PagePolicy::Auto`]) tries, in order:
//!
//! 1. **hugetlb** (`MFD_HUGETLB | MFD_HUGE_2MB`, size rounded up to 2 MiB). With an empty pool
//!    `memfd_create` and `ftruncate` succeed and the *mmap* (or the pre-faulting `fallocate`)
//!    fails with `ENOMEM`/`ENOSPC`, so every step of the attempt is allowed to fail.
//! 2. **THP on shmem** (`madvise(MADV_HUGEPAGE)`, size rounded up to 2 MiB), only when
//!    `shmem_enabled` selects `always`, `within_size`, `advise` or `force` ([`ShmemThpMode`]);
//!    otherwise the advice would be accepted and silently ignored.
//! 3. **4 KiB pages**, which is the only attempt whose failure is reported.
//!
//! Whatever the kind, the memfd is sealed `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL` right
//! after it is sized, and (unless [`RegionOptions::prefault`] is off) every page is allocated
//! before `create` returns: a later first touch can then neither SIGBUS nor fail. Mappings are
//! never `MAP_NORESERVE`.
//!
//! # Known limit: hole punching on hugetlb
//!
//! Seals do not stop `fallocate(PUNCH_HOLE)`. On shmem (THP or 4 KiB) a punched page refaults
//! as zeroes. On hugetlb the punch also drops the page's pool reservation, so if the pool is
//! exhausted when the page is touched again, the toucher gets SIGBUS. A daemon that hands
//! hugetlb regions to untrusted clients must keep spare pages in the pool (or use
//! [`PagePolicy::Thp`] / [`PagePolicy::Small`]).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};
use rustix::io::Errno;
use rustix::mm::{Advice, MapFlags, ProtFlags};

use crate::access::{AccessError, RawMemory, delegate_shared_memory};

/// 2 MiB, the huge page size we use for hugetlb and THP.
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;

/// 4 KiB, the base page size.
pub const SMALL_PAGE_SIZE: u64 = 4096;

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
            Self::Huge2M | Self::Thp => HUGE_PAGE_SIZE as u32,
            Self::Small => SMALL_PAGE_SIZE as u32,
        }
    }
}

/// Which page sizes [`Region::create_with`] may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PagePolicy {
    /// hugetlb, then THP, then 4 KiB: the first that works.
    #[default]
    Auto,
    /// hugetlb 2 MiB pages or an error ([`RegionError::HugeUnavailable`]).
    Huge,
    /// Shmem THP or an error ([`RegionError::ThpUnavailable`]).
    Thp,
    /// 4 KiB pages only.
    Small,
}

/// How [`Region::create_with`] builds a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionOptions {
    /// Which page sizes to try.
    pub pages: PagePolicy,
    /// Allocate every page before returning (default `true`). Without it, a first touch under
    /// memory pressure can fail (OOM kill, or SIGBUS on hugetlb after a punched hole), so turn
    /// it off only for regions that are never shared with an untrusted peer.
    pub prefault: bool,
}

impl Default for RegionOptions {
    fn default() -> Self {
        Self {
            pages: PagePolicy::Auto,
            prefault: true,
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
        source: Errno,
    },
    /// The kernel could not supply the memory for a region.
    #[error(
        "could not allocate {len} bytes of shared memory ({op}: {source}); lower the region \
         size or raise the memory limit of this process's cgroup"
    )]
    OutOfMemory {
        /// Bytes requested.
        len: u64,
        /// What we were doing.
        op: &'static str,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// hugetlb pages were required but could not be had.
    #[error(
        "2 MiB hugetlb pages are unavailable ({op}: {source}); reserve some with \
         `sysctl vm.nr_hugepages=N` or use PagePolicy::Auto to fall back"
    )]
    HugeUnavailable {
        /// The step that failed.
        op: &'static str,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// Shmem THP was required but is disabled.
    #[error(
        "transparent huge pages are disabled for shmem ({mode}); write `advise` to \
         /sys/kernel/mm/transparent_hugepage/shmem_enabled or use PagePolicy::Auto to fall back"
    )]
    ThpUnavailable {
        /// What the sysfs file says (or why it could not be read).
        mode: String,
    },
    /// A received fd is not a memfd (or other shmem file).
    #[error("the received file descriptor is not a memfd (F_GET_SEALS refused it); send a memfd")]
    NotMemfd,
    /// A received memfd is not sealed against shrinking.
    #[error(
        "the received memfd is not sealed against shrinking (F_SEAL_SHRINK missing); create it \
         with MFD_ALLOW_SEALING and add F_SEAL_SHRINK before sending it"
    )]
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
    #[error("invalid region length {0} (must be between 1 and isize::MAX)")]
    BadLength(u64),
    /// [`Mapping::map_device`] was given an offset that is not page-aligned.
    #[error("mapping offset {offset} is not a multiple of the {page}-byte page size")]
    BadOffset {
        /// The offset.
        offset: u64,
        /// The system page size.
        page: u64,
    },
    /// [`Mapping::map_device`] was given a file that could shrink under the mapping.
    #[error(
        "refusing to map a file that is not a character device (uio), a sysfs file or a memfd \
         sealed against shrinking"
    )]
    NotDevice,
}

/// `f_type` of sysfs (`SYSFS_MAGIC` in `linux/magic.h`).
const SYSFS_MAGIC: i64 = 0x6265_6572;

fn sys(op: &'static str) -> impl FnOnce(Errno) -> RegionError {
    move |source| RegionError::Sys { op, source }
}

fn alloc_err(op: &'static str, len: u64) -> impl FnOnce(Errno) -> RegionError {
    move |source| {
        if source == Errno::NOMEM || source == Errno::NOSPC {
            RegionError::OutOfMemory { len, op, source }
        } else {
            RegionError::Sys { op, source }
        }
    }
}

fn check_len(len: u64) -> Result<(), RegionError> {
    if len == 0 || len > isize::MAX as u64 {
        return Err(RegionError::BadLength(len));
    }
    Ok(())
}

fn round_up(len: u64, to: u64) -> Result<u64, RegionError> {
    len.checked_next_multiple_of(to)
        .ok_or(RegionError::BadLength(len))
}

/// A shared mapping of a memfd, unmapped on drop.
///
/// Accessible only through [`SharedMemory`](crate::SharedMemory): no reference into the
/// mapped bytes is ever handed out, because a peer may write them at any time.
#[derive(Debug)]
pub struct Mapping {
    raw: RawMemory,
    ptr: NonNull<u8>,
    /// Bytes accessible (`raw`'s length).
    len: usize,
    /// Bytes mapped (`len` rounded up to the file's page size), for `munmap`.
    map_len: usize,
}

// SAFETY: the mapping is plain shared memory; all access goes through RawMemory's atomic and
// copying accessors, which are safe to call from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as for Send.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `map_len` bytes of `fd` read-write and shared and exposes the first `len`, without
    /// checking seals or size. Callers outside this crate use [`Region::create`] or
    /// [`Mapping::map_peer`].
    fn map(
        fd: BorrowedFd<'_>,
        len: u64,
        map_len: u64,
        populate: bool,
    ) -> Result<Self, (&'static str, Errno)> {
        Self::map_at(fd, 0, len, map_len, populate)
    }

    /// [`Mapping::map`] at file offset `offset` (a multiple of the system page size).
    fn map_at(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: u64,
        map_len: u64,
        populate: bool,
    ) -> Result<Self, (&'static str, Errno)> {
        debug_assert!(len > 0 && len <= map_len && map_len <= isize::MAX as u64);
        let mut flags = MapFlags::SHARED;
        if populate {
            flags |= MapFlags::POPULATE;
        }
        // SAFETY: a fresh mapping at an address chosen by the kernel (no MAP_FIXED), so it
        // cannot alias any Rust object. Every caller has set or checked the fd's size to be at
        // least `offset + map_len` and sealed it (or checked it is sealed) against shrinking,
        // or checked that it is a device or sysfs file whose size the kernel fixes
        // (`map_device`), so no access within `map_len` can SIGBUS by truncation.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                map_len as usize,
                ProtFlags::READ | ProtFlags::WRITE,
                flags,
                fd,
                offset,
            )
        }
        .map_err(|e| ("mmap", e))?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(("mmap", Errno::FAULT))?;
        // SAFETY: `ptr` is a live, page-aligned (hence 8-aligned) mapping of `map_len >= len`
        // bytes that lives until `Drop`, which unmaps it only while dropping `self` (and with
        // it `raw`).
        let raw = unsafe { RawMemory::new(ptr.as_ptr(), len) };
        Ok(Self {
            raw,
            ptr,
            len: len as usize,
            map_len: map_len as usize,
        })
    }

    /// `madvise` over the whole mapping.
    fn advise(&self, advice: Advice) -> Result<(), Errno> {
        // SAFETY: the range is exactly this mapping, which is live. The advice values used in
        // this crate (HUGEPAGE, POPULATE_WRITE) change how pages are backed, never their
        // contents, so no Rust-visible state changes.
        unsafe { rustix::mm::madvise(self.ptr.as_ptr().cast(), self.map_len, advice) }
    }

    /// Maps a memfd received from a peer.
    ///
    /// Refuses ([`RegionError`]) an fd that is not a memfd ([`RegionError::NotMemfd`]: regular
    /// files, pipes, sockets…), one not sealed against shrinking ([`RegionError::NotSealed`]),
    /// or one smaller than `expected_len` ([`RegionError::TooSmall`]). Adds
    /// `F_SEAL_GROW | F_SEAL_SEAL` if `F_SEAL_SEAL` is not yet set, so the peer cannot change
    /// the seals afterwards. Exposes exactly `expected_len` bytes (the mapping itself is
    /// rounded up to the file's page size, which the size check keeps inside the file).
    ///
    /// The peer can still write any byte at any time and punch holes (which read as zeroes on
    /// shmem); see the module docs for hugetlb.
    ///
    /// The mapping is pre-faulted (`MADV_POPULATE_WRITE`): every page is mapped now, and a
    /// page the creator did not allocate is allocated now, by (and charged to) this process;
    /// if that fails the call does ([`RegionError::OutOfMemory`]), where `MAP_POPULATE` would
    /// leave the failure to a later touch. Use [`Mapping::map_peer_lazy`] for a mapping whose
    /// pages are mapped on first touch.
    pub fn map_peer(fd: BorrowedFd<'_>, expected_len: u64) -> Result<Self, RegionError> {
        Self::peer(fd, expected_len, true)
    }

    /// [`Mapping::map_peer`] without pre-faulting: mapping costs the same for any length, and
    /// each page is mapped (and, if the creator did not allocate it, allocated) when this
    /// process first touches it. For a peer's memory of which this process may touch little,
    /// such as the host's view of a client's region.
    pub fn map_peer_lazy(fd: BorrowedFd<'_>, expected_len: u64) -> Result<Self, RegionError> {
        Self::peer(fd, expected_len, false)
    }

    fn peer(fd: BorrowedFd<'_>, expected_len: u64, populate: bool) -> Result<Self, RegionError> {
        check_len(expected_len)?;
        let seals = rustix::fs::fcntl_get_seals(fd).map_err(|e| {
            if e == Errno::INVAL {
                RegionError::NotMemfd
            } else {
                sys("F_GET_SEALS")(e)
            }
        })?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(RegionError::NotSealed);
        }
        let stat = rustix::fs::fstat(fd).map_err(sys("fstat"))?;
        let actual = u64::try_from(stat.st_size).unwrap_or(0);
        if actual < expected_len {
            return Err(RegionError::TooSmall {
                expected: expected_len,
                actual,
            });
        }
        // Only now, so that a refused fd is left as it came. The size can no longer shrink
        // (SHRINK is set); this stops the peer from changing the seals from here on.
        if !seals.contains(SealFlags::SEAL) {
            rustix::fs::fcntl_add_seals(fd, SealFlags::GROW | SealFlags::SEAL)
                .map_err(sys("F_ADD_SEALS"))?;
        }
        // hugetlb files report their huge page size here and must be mapped in whole pages;
        // their size is a multiple of it, so the rounded length stays inside the file.
        let file_page = (stat.st_blksize as u64).max(SMALL_PAGE_SIZE);
        let map_len = round_up(expected_len, file_page)?.min(actual);
        check_len(map_len)?;
        let map = Self::map(fd, expected_len, map_len, false).map_err(|(op, e)| sys(op)(e))?;
        if populate {
            match map.advise(Advice::LinuxPopulateWrite) {
                Ok(()) => {}
                // Before Linux 5.14: allocate through the file (still reporting a failure);
                // the pages are then mapped on first touch.
                Err(Errno::INVAL) => rustix::fs::fallocate(fd, FallocateFlags::empty(), 0, map_len)
                    .map_err(alloc_err("fallocate", map_len))?,
                Err(e) => return Err(alloc_err("madvise(MADV_POPULATE_WRITE)", map_len)(e)),
            }
        }
        Ok(map)
    }

    /// Maps `len` bytes of a device-like file at `offset`, read-write and shared, for the
    /// real Hyper-V transport: a uio device (`/dev/uioN`, map *i* at offset `i * pagesize`), a
    /// sysfs binary attribute (a VMBus channel's `ring`), or a memfd sealed against shrinking
    /// (tests standing in for either).
    ///
    /// These are the only kinds accepted, because they are the only files whose size cannot
    /// shrink under the mapping (which would SIGBUS us): a character device's mappings are
    /// bounded by its driver (uio refuses a mapping larger than the map with `EINVAL`), a
    /// sysfs file's size is fixed by the kernel, and a sealed memfd cannot shrink. Anything
    /// else is refused with [`RegionError::NotDevice`]. For sysfs files and memfds,
    /// `offset + len` must be within the file. `offset` must be a multiple of the system page
    /// size; the mapping is rounded up to whole pages and pre-faulted (`MAP_POPULATE`), and
    /// exposes exactly `len` bytes.
    ///
    /// The memory is shared with the hypervisor (or, in tests, with a fixture) and accessed
    /// like any peer memory: through [`SharedMemory`](crate::SharedMemory) only.
    pub fn map_device(fd: BorrowedFd<'_>, offset: u64, len: u64) -> Result<Self, RegionError> {
        check_len(len)?;
        let page = rustix::param::page_size() as u64;
        if !offset.is_multiple_of(page) {
            return Err(RegionError::BadOffset { offset, page });
        }
        let map_len = round_up(len, page)?;
        check_len(map_len)?;
        let stat = rustix::fs::fstat(fd).map_err(sys("fstat"))?;
        match rustix::fs::FileType::from_raw_mode(stat.st_mode) {
            rustix::fs::FileType::CharacterDevice => {}
            rustix::fs::FileType::RegularFile => {
                let fs = rustix::fs::fstatfs(fd).map_err(sys("fstatfs"))?;
                #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
                let on_sysfs = fs.f_type as i64 == SYSFS_MAGIC;
                let sealed =
                    rustix::fs::fcntl_get_seals(fd).is_ok_and(|s| s.contains(SealFlags::SHRINK));
                if !on_sysfs && !sealed {
                    return Err(RegionError::NotDevice);
                }
                let actual = u64::try_from(stat.st_size).unwrap_or(0);
                let end = offset
                    .checked_add(map_len)
                    .ok_or(RegionError::BadLength(len))?;
                if actual < end {
                    return Err(RegionError::TooSmall {
                        expected: end,
                        actual,
                    });
                }
            }
            _ => return Err(RegionError::NotDevice),
        }
        Self::map_at(fd, offset, len, map_len, true).map_err(|(op, e)| sys(op)(e))
    }

    /// Locks the mapping's pages in RAM (`mlock`), so they are never swapped out while a
    /// peer that addresses them physically (the Hyper-V host, through guest-physical page
    /// numbers) may use them. Fails with `ENOMEM` or `EPERM` when `RLIMIT_MEMLOCK` is too low
    /// (raise it: `LimitMEMLOCK=infinity` in a systemd unit). Note that locked pages may
    /// still be migrated by the kernel; hugetlb pages are the ones it moves least.
    pub fn lock(&self) -> Result<(), Errno> {
        // SAFETY: the range is exactly this live mapping; mlock changes residency only, never
        // contents or permissions, so no Rust-visible state changes.
        unsafe { rustix::mm::mlock(self.ptr.as_ptr().cast(), self.map_len) }
    }

    /// Bytes accessible.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Always false: mappings are never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The base address and length (bytes accessible) of the mapping, for registering it with
    /// the kernel (io_uring fixed buffers, `/proc/self/pagemap` look-ups).
    ///
    /// Do **not** turn the pointer into a reference or slice: a peer may write the memory at
    /// any time, so that would be undefined behaviour. It stays valid only while `self` lives;
    /// whoever registers it must unregister it before dropping the mapping.
    pub fn as_raw_parts(&self) -> (*mut u8, usize) {
        (self.ptr.as_ptr(), self.len)
    }

    /// The address of `[offset, offset + len)` inside the mapping, bounds-checked, for handing
    /// to the kernel only (a futex word for `futex_wait`/io_uring `FutexWake`, a buffer for
    /// `ReadFixed`). The same rules as [`Mapping::as_raw_parts`] apply.
    pub fn raw_addr(&self, offset: u64, len: u64) -> Result<*mut u8, AccessError> {
        let off = crate::access::check(offset, len, self.len as u64)?;
        Ok(self.ptr.as_ptr().wrapping_add(off))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`map_len` describe the mapping created in `map`; no reference into it
        // exists (the crate never lets one escape), and `raw` is not used after this point.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.map_len) };
    }
}

delegate_shared_memory!(Mapping, raw);

/// A memfd this process created, sized, sealed and pre-faulted, with its mapping.
///
/// Page sizes are tried in the order hugetlb 2 MiB → shmem THP → 4 KiB ([`PagePolicy::Auto`]);
/// the last is the only one whose failure is reported, so `create` works wherever 4 KiB pages
/// would.
///
/// **Known limit (hugetlb):** seals do not stop `fallocate(PUNCH_HOLE)`. On shmem (THP or
/// 4 KiB) a punched page refaults as zeroes, but on hugetlb the punch also drops the page's
/// pool reservation, so touching it again SIGBUSes if the pool is exhausted by then. A daemon
/// handing hugetlb regions to untrusted clients should keep spare pages in the pool, or use
/// [`PagePolicy::Thp`] / [`PagePolicy::Small`].
#[derive(Debug)]
pub struct Region {
    fd: OwnedFd,
    map: Mapping,
    kind: PageKind,
}

impl Region {
    /// Creates a sealed, pre-faulted region of at least `len` bytes named `name` (visible in
    /// `/proc/<pid>/fd`), on the largest pages available ([`PagePolicy::Auto`]).
    pub fn create(name: &str, len: u64) -> Result<Self, RegionError> {
        Self::create_with(name, len, RegionOptions::default())
    }

    /// Creates a region as `opts` says. Huge-page regions are rounded up to 2 MiB; see
    /// [`Region::len`]. Which page size was used is logged at debug level and reported by
    /// [`Region::page_kind`].
    pub fn create_with(name: &str, len: u64, opts: RegionOptions) -> Result<Self, RegionError> {
        check_len(len)?;
        let region = match opts.pages {
            PagePolicy::Small => Self::create_small(name, len, opts.prefault)?,
            PagePolicy::Huge => Self::create_huge(name, len, opts.prefault)
                .map_err(|(op, source)| RegionError::HugeUnavailable { op, source })?,
            PagePolicy::Thp => Self::create_thp(name, len, opts.prefault)?,
            PagePolicy::Auto => match Self::create_huge(name, len, opts.prefault) {
                Ok(r) => r,
                Err((op, e)) => {
                    tracing::debug!(name, len, op, error = %e, "hugetlb region unavailable");
                    match Self::create_thp(name, len, opts.prefault) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::debug!(name, len, error = %e, "THP region unavailable");
                            Self::create_small(name, len, opts.prefault)?
                        }
                    }
                }
            },
        };
        tracing::debug!(name, len = region.len(), kind = ?region.kind, "created region");
        Ok(region)
    }

    /// hugetlb: every failure is returned as (step, errno) so `Auto` can fall back.
    fn create_huge(name: &str, len: u64, prefault: bool) -> Result<Self, (&'static str, Errno)> {
        let len = len
            .checked_next_multiple_of(HUGE_PAGE_SIZE)
            .ok_or(("size", Errno::INVAL))?;
        if len > isize::MAX as u64 {
            return Err(("size", Errno::INVAL));
        }
        let fd = new_memfd(name, MemfdFlags::HUGETLB | MemfdFlags::HUGE_2MB)
            .map_err(|e| ("memfd_create(MFD_HUGETLB)", e))?;
        size_and_seal(&fd, len)?;
        if prefault {
            rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, len)
                .map_err(|e| ("fallocate", e))?;
        }
        // Without MAP_NORESERVE the mmap reserves every page of the pool for this mapping; with
        // an empty pool this is where ENOMEM shows up.
        let map = Mapping::map(fd.as_fd(), len, len, prefault)?;
        Ok(Self {
            fd,
            map,
            kind: PageKind::Huge2M,
        })
    }

    fn create_thp(name: &str, len: u64, prefault: bool) -> Result<Self, RegionError> {
        let mode = ShmemThpMode::current();
        match mode {
            Ok(m) if m.allows_thp() => {}
            Ok(m) => {
                return Err(RegionError::ThpUnavailable {
                    mode: format!("{m:?}"),
                });
            }
            Err(e) => {
                return Err(RegionError::ThpUnavailable {
                    mode: e.to_string(),
                });
            }
        }
        let len = round_up(len, HUGE_PAGE_SIZE)?;
        check_len(len)?;
        let fd = new_memfd(name, MemfdFlags::empty()).map_err(sys("memfd_create"))?;
        size_and_seal(&fd, len).map_err(|(op, e)| sys(op)(e))?;
        let map = Mapping::map(fd.as_fd(), len, len, false).map_err(|(op, e)| sys(op)(e))?;
        map.advise(Advice::LinuxHugepage)
            .map_err(sys("madvise(MADV_HUGEPAGE)"))?;
        if prefault {
            // Populate through the mapping so the huge-page advice applies (a fallocate would
            // allocate small pages in `advise` mode).
            match map.advise(Advice::LinuxPopulateWrite) {
                Ok(()) => {}
                // Before Linux 5.14: allocate through the file instead.
                Err(Errno::INVAL) => rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, len)
                    .map_err(alloc_err("fallocate", len))?,
                Err(e) => return Err(alloc_err("madvise(MADV_POPULATE_WRITE)", len)(e)),
            }
        }
        Ok(Self {
            fd,
            map,
            kind: PageKind::Thp,
        })
    }

    fn create_small(name: &str, len: u64, prefault: bool) -> Result<Self, RegionError> {
        let fd = new_memfd(name, MemfdFlags::empty()).map_err(sys("memfd_create"))?;
        size_and_seal(&fd, len).map_err(|(op, e)| sys(op)(e))?;
        if prefault {
            // Allocates every page of the file now (reporting ENOSPC/ENOMEM instead of a later
            // OOM at first touch). The mapping is not populated: the pages already exist, so a
            // first touch is a minor fault, and the creator (the daemon) touches only the header
            // and queues. Populating the whole arena cost the daemon ~7 ms of CPU per 16 MiB
            // handshake and counted every arena page in its RSS.
            rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, len)
                .map_err(alloc_err("fallocate", len))?;
        }
        let map = Mapping::map(fd.as_fd(), len, len, false).map_err(|(op, e)| match e {
            Errno::NOMEM => RegionError::OutOfMemory { len, op, source: e },
            _ => sys(op)(e),
        })?;
        Ok(Self {
            fd,
            map,
            kind: PageKind::Small,
        })
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

    /// Bytes of the region: the memfd's size, i.e. the requested length, rounded up to
    /// 2 MiB for huge-page kinds.
    pub fn len(&self) -> u64 {
        self.map.len()
    }

    /// Always false: regions are never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Splits the region into its memfd, its mapping and its page kind (e.g. to keep the
    /// mapping in a guest memory table and close the fd once the peer has it).
    pub fn into_parts(self) -> (OwnedFd, Mapping, PageKind) {
        (self.fd, self.map, self.kind)
    }
}

delegate_shared_memory!(Region, map);

/// `memfd_create` with `CLOEXEC | ALLOW_SEALING | NOEXEC_SEAL` (Linux 6.3+), retrying without
/// `NOEXEC_SEAL` on older kernels.
fn new_memfd(name: &str, extra: MemfdFlags) -> Result<OwnedFd, Errno> {
    let base = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | extra;
    match rustix::fs::memfd_create(name, base | MemfdFlags::NOEXEC_SEAL) {
        Err(Errno::INVAL) => rustix::fs::memfd_create(name, base),
        r => r,
    }
}

/// Sets the size, then seals it: after this the file can neither shrink (no SIGBUS for anyone
/// mapping it) nor grow, and its seals cannot change.
fn size_and_seal(fd: &OwnedFd, len: u64) -> Result<(), (&'static str, Errno)> {
    rustix::fs::ftruncate(fd, len).map_err(|e| ("ftruncate", e))?;
    rustix::fs::fcntl_add_seals(fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .map_err(|e| ("F_ADD_SEALS", e))
}

/// The shmem THP setting, from `/sys/kernel/mm/transparent_hugepage/shmem_enabled` (or the
/// per-size `hugepages-2048kB/shmem_enabled`, whose `inherit` defers to the former).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShmemThpMode {
    /// Huge pages whenever possible.
    Always,
    /// Huge pages if they fit inside the file size.
    WithinSize,
    /// Huge pages where `madvise(MADV_HUGEPAGE)` asks for them.
    Advise,
    /// No huge pages.
    Never,
    /// Never, even on mounts that ask (emergency off).
    Deny,
    /// Huge pages everywhere, even on mounts that refuse (testing).
    Force,
    /// Per-size setting: use the top-level one.
    Inherit,
}

/// The top-level shmem THP setting.
const SHMEM_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";
/// The per-size setting for 2 MiB pages (Linux 6.11+).
const SHMEM_ENABLED_2M: &str = "/sys/kernel/mm/transparent_hugepage/hugepages-2048kB/shmem_enabled";

impl ShmemThpMode {
    /// Parses the sysfs text, where the selected value is in brackets, e.g.
    /// `always within_size advise [never] deny force`. `None` unless exactly one known value is
    /// selected.
    pub fn parse(text: &str) -> Option<Self> {
        let mut selected = text
            .split_ascii_whitespace()
            .filter_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')));
        let mode = match selected.next()? {
            "always" => Self::Always,
            "within_size" => Self::WithinSize,
            "advise" => Self::Advise,
            "never" => Self::Never,
            "deny" => Self::Deny,
            "force" => Self::Force,
            "inherit" => Self::Inherit,
            _ => return None,
        };
        selected.next().is_none().then_some(mode)
    }

    /// The effective mode for 2 MiB pages from the top-level text and, if the kernel has it,
    /// the per-size text.
    pub fn effective(top: &str, per_size: Option<&str>) -> Option<Self> {
        match per_size.map(Self::parse) {
            Some(Some(Self::Inherit)) | None => Self::parse(top).filter(|m| *m != Self::Inherit),
            Some(m) => m,
        }
    }

    /// Reads the current mode from sysfs.
    pub fn current() -> std::io::Result<Self> {
        let top = std::fs::read_to_string(SHMEM_ENABLED)?;
        let per_size = std::fs::read_to_string(SHMEM_ENABLED_2M).ok();
        Self::effective(&top, per_size.as_deref()).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("cannot parse {SHMEM_ENABLED}: {top:?}"),
            )
        })
    }

    /// Whether `madvise(MADV_HUGEPAGE)` on a memfd mapping gets huge pages in this mode.
    pub fn allows_thp(self) -> bool {
        matches!(
            self,
            Self::Always | Self::WithinSize | Self::Advise | Self::Force
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SharedMemory;
    use crate::gpa::Pagemap;
    use std::io::{Read, Seek};
    use std::os::fd::AsRawFd;

    /// Free hugetlb pages of the default size, from /proc/meminfo.
    fn free_huge_pages() -> u64 {
        let info = std::fs::read_to_string("/proc/meminfo").unwrap();
        let line = info
            .lines()
            .find(|l| l.starts_with("HugePages_Free:"))
            .unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn thp_allowed() -> bool {
        ShmemThpMode::current().unwrap().allows_thp()
    }

    /// The kind the chain must pick on this machine for a region of `len` bytes.
    fn expected_auto_kind(len: u64) -> PageKind {
        if free_huge_pages() * HUGE_PAGE_SIZE >= len.next_multiple_of(HUGE_PAGE_SIZE) {
            PageKind::Huge2M
        } else if thp_allowed() {
            PageKind::Thp
        } else {
            PageKind::Small
        }
    }

    fn memfd(len: u64, flags: MemfdFlags) -> OwnedFd {
        let fd = rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | flags).unwrap();
        rustix::fs::ftruncate(&fd, len).unwrap();
        fd
    }

    fn pagemap_present(map: &Mapping) -> Vec<bool> {
        let (ptr, len) = map.as_raw_parts();
        let mut pm = Pagemap::open_self().unwrap();
        let page = pm.page_size();
        (0..(len as u64).div_ceil(page))
            .map(|i| pm.entry(ptr as u64 + i * page).unwrap().present())
            .collect()
    }

    #[test]
    fn auto_chain_picks_what_this_machine_has_and_works() {
        let len = 3 * 4096 + 100;
        let r = Region::create("blobring-test", len).unwrap();
        assert_eq!(r.page_kind(), expected_auto_kind(len));
        // On the reference machine (no hugetlb pool, shmem THP `never`) this is the 4 KiB case.
        if r.page_kind() == PageKind::Small {
            assert_eq!(r.len(), len);
        } else {
            assert_eq!(r.len(), HUGE_PAGE_SIZE);
        }
        let stat = rustix::fs::fstat(r.fd()).unwrap();
        assert_eq!(stat.st_size as u64, r.len());
        r.write(len - 5, b"hello").unwrap();
        let mut b = [0u8; 5];
        r.read(len - 5, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        assert!(r.read(r.len() - 4, &mut b).is_err());
    }

    #[test]
    fn strict_policies_fail_clearly_when_unavailable() {
        let huge = Region::create_with(
            "t",
            4096,
            RegionOptions {
                pages: PagePolicy::Huge,
                prefault: true,
            },
        );
        if free_huge_pages() == 0 {
            let err = huge.unwrap_err();
            assert!(
                matches!(err, RegionError::HugeUnavailable { .. }),
                "{err:?}"
            );
            assert!(err.to_string().contains("vm.nr_hugepages"), "{err}");
        } else {
            assert_eq!(huge.unwrap().page_kind(), PageKind::Huge2M);
        }
        // Without pre-faulting nothing is allocated up front, so with an empty pool it is the
        // mmap's reservation that fails (ENOMEM), and Auto still falls back.
        let lazy = RegionOptions {
            pages: PagePolicy::Huge,
            prefault: false,
        };
        if free_huge_pages() == 0 {
            let err = Region::create_with("t", 4096, lazy).unwrap_err();
            assert!(
                matches!(
                    err,
                    RegionError::HugeUnavailable {
                        op: "mmap",
                        source: Errno::NOMEM
                    }
                ),
                "{err:?}"
            );
        }
        let auto_lazy = RegionOptions {
            pages: PagePolicy::Auto,
            prefault: false,
        };
        let r = Region::create_with("t", 4096, auto_lazy).unwrap();
        assert_eq!(r.page_kind(), expected_auto_kind(4096));
        r.store_u64(4088, 7, std::sync::atomic::Ordering::Relaxed)
            .unwrap();
        let thp = Region::create_with(
            "t",
            4096,
            RegionOptions {
                pages: PagePolicy::Thp,
                prefault: true,
            },
        );
        if thp_allowed() {
            let r = thp.unwrap();
            assert_eq!((r.page_kind(), r.len()), (PageKind::Thp, HUGE_PAGE_SIZE));
        } else {
            let err = thp.unwrap_err();
            assert!(matches!(err, RegionError::ThpUnavailable { .. }), "{err:?}");
            assert!(err.to_string().contains("shmem_enabled"), "{err}");
        }
        let small = Region::create_with(
            "t",
            4096,
            RegionOptions {
                pages: PagePolicy::Small,
                prefault: true,
            },
        )
        .unwrap();
        assert_eq!((small.page_kind(), small.len()), (PageKind::Small, 4096));
    }

    #[test]
    fn bad_lengths_are_refused() {
        assert!(matches!(
            Region::create("t", 0),
            Err(RegionError::BadLength(0))
        ));
        assert!(matches!(
            Region::create("t", u64::MAX),
            Err(RegionError::BadLength(_))
        ));
    }

    #[test]
    fn region_is_sealed_against_resizing_through_any_handle() {
        let r = Region::create_with("t", 8192, RegionOptions::default()).unwrap();
        let seals = rustix::fs::fcntl_get_seals(r.fd()).unwrap();
        assert!(
            seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL),
            "{seals:?}"
        );
        assert_eq!(rustix::fs::ftruncate(r.fd(), 4096), Err(Errno::PERM));
        assert_eq!(rustix::fs::ftruncate(r.fd(), 1 << 20), Err(Errno::PERM));
        // A second, independently opened handle (what a client could do with the fd it got).
        let path = format!("/proc/self/fd/{}", r.fd().as_raw_fd());
        let reopened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        assert_eq!(rustix::fs::ftruncate(&reopened, 0), Err(Errno::PERM));
        assert_eq!(
            reopened.set_len(0).unwrap_err().raw_os_error(),
            Some(libc_eperm())
        );
        let dup = rustix::io::dup(r.fd()).unwrap();
        assert_eq!(rustix::fs::ftruncate(&dup, 0), Err(Errno::PERM));
        // Seals can no longer be removed or changed.
        assert_eq!(
            rustix::fs::fcntl_add_seals(&dup, SealFlags::WRITE),
            Err(Errno::PERM)
        );
        assert_eq!(rustix::fs::fstat(r.fd()).unwrap().st_size, 8192);
    }

    fn libc_eperm() -> i32 {
        Errno::PERM.raw_os_error()
    }

    #[test]
    fn prefault_allocates_every_page_and_lazy_does_not() {
        let eager = Region::create_with(
            "t",
            16 * 4096,
            RegionOptions {
                pages: PagePolicy::Small,
                prefault: true,
            },
        )
        .unwrap();
        // Every page of the file is allocated (st_blocks counts 512-byte units) but the mapping
        // is not populated: the creator only touches what it uses.
        assert!(rustix::fs::fstat(eager.fd()).unwrap().st_blocks as u64 * 512 >= 16 * 4096);
        assert!(pagemap_present(eager.mapping()).iter().all(|&p| !p));
        let lazy = Region::create_with(
            "t",
            16 * 4096,
            RegionOptions {
                pages: PagePolicy::Small,
                prefault: false,
            },
        )
        .unwrap();
        assert_eq!(rustix::fs::fstat(lazy.fd()).unwrap().st_blocks, 0);
        assert!(pagemap_present(lazy.mapping()).iter().all(|&p| !p));
        lazy.write(5 * 4096, &[1]).unwrap();
        let present = pagemap_present(lazy.mapping());
        assert!(
            present[5] && present.iter().filter(|&&p| p).count() == 1,
            "{present:?}"
        );
        // A lazy peer mapping maps nothing until touched; a pre-faulted one maps every page
        // and allocates the pages the creator left unallocated.
        let on_touch = Mapping::map_peer_lazy(lazy.fd(), 16 * 4096).unwrap();
        assert!(pagemap_present(&on_touch).iter().all(|&p| !p));
        assert_eq!(rustix::fs::fstat(lazy.fd()).unwrap().st_blocks * 512, 4096);
        on_touch.write(7 * 4096, &[2]).unwrap();
        let present = pagemap_present(&on_touch);
        assert!(
            present[7] && present.iter().filter(|&&p| p).count() == 1,
            "{present:?}"
        );
        let populated = Mapping::map_peer(lazy.fd(), 16 * 4096).unwrap();
        assert!(pagemap_present(&populated).iter().all(|&p| p));
        assert_eq!(
            rustix::fs::fstat(lazy.fd()).unwrap().st_blocks * 512,
            16 * 4096
        );
    }

    #[test]
    fn punched_hole_reads_as_zeroes_and_does_not_crash() {
        let r = Region::create("t", 4 * 4096).unwrap();
        r.fill(0, 4 * 4096, 0xAB).unwrap();
        let peer = Mapping::map_peer(r.fd(), 4 * 4096).unwrap();
        // What a hostile client may do with its writable fd: seals do not stop it.
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        rustix::fs::fallocate(r.fd(), flags, 4096, 4096).unwrap();
        assert!(!pagemap_present(r.mapping())[1]);
        for m in [r.mapping(), &peer] {
            let mut page = vec![0u8; 4 * 4096];
            m.read(0, &mut page).unwrap();
            assert!(page[..4096].iter().all(|&b| b == 0xAB));
            assert!(page[4096..8192].iter().all(|&b| b == 0));
            assert!(page[8192..].iter().all(|&b| b == 0xAB));
            assert_eq!(
                m.load_u64(4096 + 8, std::sync::atomic::Ordering::Acquire)
                    .unwrap(),
                0
            );
        }
        assert_eq!(rustix::fs::fstat(r.fd()).unwrap().st_size, 4 * 4096);
    }

    #[test]
    fn peer_mapping_shares_bytes_and_exposes_only_expected_len() {
        let r = Region::create("t", 3 * 4096).unwrap();
        let peer = Mapping::map_peer(r.fd(), 4096 + 10).unwrap();
        assert_eq!(peer.len(), 4096 + 10);
        r.store_u32(4096, 0xdead_beef, std::sync::atomic::Ordering::Release)
            .unwrap();
        assert_eq!(
            peer.load_u32(4096, std::sync::atomic::Ordering::Acquire)
                .unwrap(),
            0xdead_beef
        );
        peer.write(4096 + 6, b"hi").unwrap();
        let mut b = [0u8; 2];
        r.read(4096 + 6, &mut b).unwrap();
        assert_eq!(&b, b"hi");
        assert!(peer.write(4096 + 9, b"xy").is_err());
        assert_eq!(
            peer.raw_addr(4096, 10).unwrap(),
            peer.as_raw_parts().0.wrapping_add(4096)
        );
        assert!(peer.raw_addr(4096, 11).is_err());
        assert!(peer.raw_addr(u64::MAX, 2).is_err());
        let (ptr, len) = peer.as_raw_parts();
        assert_eq!((ptr as usize % 4096, len), (0, 4096 + 10));
    }

    #[test]
    fn peer_memfd_must_be_sealed_against_shrinking() {
        let fd = memfd(8192, MemfdFlags::ALLOW_SEALING);
        assert!(matches!(
            Mapping::map_peer(fd.as_fd(), 8192),
            Err(RegionError::NotSealed)
        ));
        // Without MFD_ALLOW_SEALING the memfd carries only F_SEAL_SEAL.
        let fd = memfd(8192, MemfdFlags::empty());
        assert!(matches!(
            Mapping::map_peer(fd.as_fd(), 8192),
            Err(RegionError::NotSealed)
        ));
        // Only GROW, no SHRINK: still refused.
        let fd = memfd(8192, MemfdFlags::ALLOW_SEALING);
        rustix::fs::fcntl_add_seals(&fd, SealFlags::GROW).unwrap();
        let err = Mapping::map_peer(fd.as_fd(), 8192).unwrap_err();
        assert!(matches!(err, RegionError::NotSealed));
        assert!(err.to_string().contains("F_SEAL_SHRINK"));
    }

    #[test]
    fn peer_memfd_gets_grow_and_seal_added() {
        let fd = memfd(8192, MemfdFlags::ALLOW_SEALING);
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK).unwrap();
        let m = Mapping::map_peer(fd.as_fd(), 8192).unwrap();
        let seals = rustix::fs::fcntl_get_seals(&fd).unwrap();
        assert!(
            seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL),
            "{seals:?}"
        );
        assert_eq!(rustix::fs::ftruncate(&fd, 1 << 20), Err(Errno::PERM));
        m.fill(0, 8192, 1).unwrap();
    }

    #[test]
    fn short_peer_memfd_is_refused() {
        let fd = memfd(8192, MemfdFlags::ALLOW_SEALING);
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK).unwrap();
        let err = Mapping::map_peer(fd.as_fd(), 8193).unwrap_err();
        assert!(
            matches!(
                err,
                RegionError::TooSmall {
                    expected: 8193,
                    actual: 8192
                }
            ),
            "{err:?}"
        );
        assert!(matches!(
            Mapping::map_peer(fd.as_fd(), 0),
            Err(RegionError::BadLength(0))
        ));
        // A refused fd is left as it came.
        let seals = rustix::fs::fcntl_get_seals(&fd).unwrap();
        assert!(
            !seals.intersects(SealFlags::GROW | SealFlags::SEAL),
            "{seals:?}"
        );
    }

    #[test]
    fn non_memfds_are_refused() {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("blobring-shm-test-{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file.set_len(8192).unwrap();
        let err = Mapping::map_peer(file.as_fd(), 8192).unwrap_err();
        // On disk filesystems F_GET_SEALS says EINVAL; should TMPDIR be a tmpfs, the file has
        // only F_SEAL_SEAL. Refused either way.
        assert!(
            matches!(err, RegionError::NotMemfd | RegionError::NotSealed),
            "{err:?}"
        );
        let mut buf = Vec::new();
        file.rewind().unwrap();
        file.read_to_end(&mut buf).unwrap();
        assert_eq!(buf.len(), 8192);

        let (reader, writer) = std::io::pipe().unwrap();
        for fd in [reader.as_fd(), writer.as_fd()] {
            let err = Mapping::map_peer(fd, 4096).unwrap_err();
            assert!(matches!(err, RegionError::NotMemfd), "{err:?}");
            assert!(err.to_string().contains("not a memfd"));
        }
    }

    #[test]
    fn into_parts_keeps_the_mapping_alive() {
        let r = Region::create("t", 4096).unwrap();
        r.write(0, b"abc").unwrap();
        let (fd, map, kind) = r.into_parts();
        drop(fd);
        assert_eq!(kind, expected_auto_kind(4096));
        let mut b = [0u8; 3];
        map.read(0, &mut b).unwrap();
        assert_eq!(&b, b"abc");
    }

    #[test]
    fn thp_mode_parser() {
        use ShmemThpMode::*;
        let all = ["always", "within_size", "advise", "never", "deny", "force"];
        let modes = [Always, WithinSize, Advise, Never, Deny, Force];
        for (i, mode) in modes.iter().enumerate() {
            let text: Vec<String> = all
                .iter()
                .enumerate()
                .map(|(j, w)| {
                    if i == j {
                        format!("[{w}]")
                    } else {
                        w.to_string()
                    }
                })
                .collect();
            assert_eq!(ShmemThpMode::parse(&(text.join(" ") + "\n")), Some(*mode));
        }
        for (text, expected) in [
            ("always within_size advise [never] deny force", Some(Never)),
            ("[always] within_size advise never", Some(Always)),
            ("always inherit within_size [advise] never", Some(Advise)),
            ("always [inherit] within_size advise never", Some(Inherit)),
            ("always advise never", None),
            ("[always] [never]", None),
            ("[sometimes] never", None),
            ("[never", None),
            ("", None),
        ] {
            assert_eq!(ShmemThpMode::parse(text), expected, "{text:?}");
        }
        assert!(
            [Always, WithinSize, Advise, Force]
                .iter()
                .all(|m| m.allows_thp())
        );
        assert!([Never, Deny, Inherit].iter().all(|m| !m.allows_thp()));
    }

    #[test]
    fn thp_effective_mode_honours_per_size_setting() {
        use ShmemThpMode::*;
        let top = "always within_size advise [never] deny force";
        let inherit = "always [inherit] within_size advise never";
        let advise = "always inherit within_size [advise] never";
        assert_eq!(ShmemThpMode::effective(top, None), Some(Never));
        assert_eq!(ShmemThpMode::effective(top, Some(inherit)), Some(Never));
        assert_eq!(ShmemThpMode::effective(top, Some(advise)), Some(Advise));
        assert_eq!(ShmemThpMode::effective("garbage", Some(inherit)), None);
        assert_eq!(ShmemThpMode::effective(inherit, None), None);
        // The live machine's files parse.
        ShmemThpMode::current().unwrap();
    }

    #[test]
    fn map_device_accepts_devices_and_sealed_memfds_only() {
        use rustix::fs::{MemfdFlags, SealFlags};
        let page = rustix::param::page_size() as u64;
        // A sealed memfd, mapped at a page offset: sees the file's bytes there.
        let fd = rustix::fs::memfd_create("dev", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .unwrap();
        rustix::fs::ftruncate(&fd, 3 * page).unwrap();
        rustix::io::pwrite(&fd, b"map1", page).unwrap();
        // Not sealed yet: could shrink under us.
        assert!(matches!(
            Mapping::map_device(fd.as_fd(), 0, page),
            Err(RegionError::NotDevice)
        ));
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK).unwrap();
        let m = Mapping::map_device(fd.as_fd(), page, 100).unwrap();
        assert_eq!(m.len(), 100);
        let mut b = [0u8; 4];
        m.read(0, &mut b).unwrap();
        assert_eq!(&b, b"map1");
        assert!(m.read(98, &mut b).is_err(), "exposes exactly len bytes");
        m.lock().unwrap_or_else(|e| assert_eq!(e, Errno::NOMEM));
        // Past the end of the file, and unaligned offsets.
        assert!(matches!(
            Mapping::map_device(fd.as_fd(), 2 * page, page + 1),
            Err(RegionError::TooSmall { .. })
        ));
        assert!(matches!(
            Mapping::map_device(fd.as_fd(), 1, 8),
            Err(RegionError::BadOffset { offset: 1, .. })
        ));
        assert!(matches!(
            Mapping::map_device(fd.as_fd(), 0, 0),
            Err(RegionError::BadLength(0))
        ));
        // A character device (uio is one) is accepted; /dev/zero maps shared memory.
        let zero = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/zero")
            .unwrap();
        let z = Mapping::map_device(zero.as_fd(), 0, 64).unwrap();
        z.store_u32(0, 5, std::sync::atomic::Ordering::Relaxed)
            .unwrap();
        assert_eq!(
            z.load_u32(0, std::sync::atomic::Ordering::Relaxed).unwrap(),
            5
        );
        // A plain file on an ordinary file system could be truncated: refused.
        let path = std::env::temp_dir().join(format!("blobring-map-device-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(page).unwrap();
        let r = Mapping::map_device(f.as_fd(), 0, page);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(r, Err(RegionError::NotDevice)), "{r:?}");
    }
}
