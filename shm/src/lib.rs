//! Shared-memory regions for blobring.
//!
//! **Owns:** memfd regions (create on hugetlb → THP → 4 KiB pages, size, seal, pre-fault:
//! [`Region`]), mapping of memfds received from a peer with seal and size checks
//! ([`Mapping::map_peer`]), bounds-checked atomic and copying access to mapped memory
//! ([`SharedMemory`], [`Window`]), the `/proc/self/pagemap` reader that gives real Hyper-V the
//! physical frames of our regions ([`gpa`]), and the arena allocator the SDK uses for data buffers ([`arena`]).
//!
//! **Trusts:** nothing in the mapped bytes — a peer may write any byte at any time, and may
//! punch holes in a memfd it can write. Sealing (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`)
//! removes the one attack that could crash us on shmem (truncation → SIGBUS); a punched shmem
//! page reads back as zeroes. On hugetlb a punched page needs a free pool page when touched
//! again (see [`Region`]). A received fd is trusted for nothing until
//! `F_GET_SEALS` and `fstat` have vouched for it; PFNs and pagemap bytes are only ever looked
//! up, never used as addresses.
//!
//! **Invariants:**
//! - no Rust reference into peer-writable memory ever leaves this crate, except through
//!   [`Frozen`], the SDK's view of a buffer its *trusted* daemon has finished with (see its
//!   trust model; never used by the daemon or host) (raw addresses are
//!   available via [`Mapping::as_raw_parts`] and [`Mapping::raw_addr`], only for handing to
//!   the kernel: io_uring buffer registration, futexes, pagemap look-ups);
//! - every access is bounds-checked against the mapping's length;
//! - a mapping is never larger than its memfd's size at the time it was checked, and that
//!   size cannot shrink afterwards (sealed);
//! - a [`Region`] is sealed before its fd can be handed to anyone, and (by default) every page
//!   is allocated before `create` returns; never `MAP_NORESERVE`, never `MAP_FIXED`;
//! - guest-physical regions never overlap; the arena never hands out overlapping blocks.
//!
//! `unsafe` here is limited to `mmap`/`munmap`/`madvise` in `region.rs` and the raw-pointer
//! accessors in `access.rs`; each block names its invariant. `gpa` and `arena` are safe code.
//!
//! **Dependencies:** `rustix` for memfd, seals, `fallocate`, `mmap`/`madvise` (direct syscalls,
//! typed flags and errnos, no libc shims to audit); `zerocopy` for copying typed records in and
//! out without references into shared memory; `blobring-abi` for the Hyper-V page size;
//! `thiserror` for error enums; `tracing` to log which page size a region got (never on a hot
//! path); `proptest` (tests) to check the arena against a model.

pub mod arena;
pub mod gpa;

mod access;
mod frozen;
mod region;

pub use access::{AccessError, HeapMemory, SharedMemory, Window};
pub use arena::{Allocation, Arena, ArenaError};
pub use frozen::Frozen;
pub use gpa::{Pagemap, PagemapEntry};
pub use region::{
    HUGE_PAGE_SIZE, Mapping, PageKind, PagePolicy, Region, RegionError, RegionOptions,
    SMALL_PAGE_SIZE, ShmemThpMode,
};
