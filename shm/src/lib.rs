//! Shared-memory regions for blobring.
//!
//! **Owns:** memfd regions (create, size, pre-fault, seal), mapping of memfds received from a
//! peer (with seal and size checks), bounds-checked atomic and copying access to mapped memory
//! ([`SharedMemory`]), and the arena allocator the SDK uses for data buffers ([`arena`]).
//!
//! **Trusts:** nothing in the mapped bytes — a peer may write any byte at any time, and may
//! punch holes in a memfd it can write. Sealing (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`)
//! removes the one attack that could crash us (truncation → SIGBUS).
//!
//! **Invariants:** no Rust reference into peer-writable memory ever leaves this crate; every
//! access is bounds-checked against the mapping's length; a mapping is never larger than its
//! memfd's size at the time it was checked, and that size cannot shrink afterwards (sealed).
//!
//! `unsafe` here is limited to `mmap`/`munmap` and the raw-pointer accessors in `access.rs`;
//! each block names its invariant.

pub mod arena;

mod access;
mod region;

pub use access::{AccessError, HeapMemory, SharedMemory, Window};
pub use arena::{Allocation, Arena, ArenaError};
pub use region::{Mapping, PageKind, Region, RegionError};
