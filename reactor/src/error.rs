//! The reactor's error type.

use std::io;

/// Everything that can go wrong in the reactor. Each message says what failed and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `io_uring_setup` was refused by the `kernel.io_uring_disabled` sysctl.
    #[error(
        "io_uring is disabled by /proc/sys/kernel/io_uring_disabled (value {value}); \
         set it to 0 (or to 1 and add this user to kernel.io_uring_group)"
    )]
    Disabled {
        /// The sysctl's value as read.
        value: String,
    },

    /// `io_uring_setup` failed for another reason.
    #[error(
        "creating the io_uring failed: {source}; check RLIMIT_MEMLOCK / the memory cgroup \
         and that the kernel is Linux 5.13 or newer"
    )]
    Setup {
        /// The error from `io_uring_setup`.
        #[source]
        source: io::Error,
    },

    /// The kernel lacks something the reactor cannot do without.
    #[error("the kernel lacks {what} (needs Linux {needs}); upgrade the kernel")]
    Unsupported {
        /// The missing capability.
        what: &'static str,
        /// The first Linux version that has it.
        needs: &'static str,
    },

    /// The submission queue stayed full after a flush.
    #[error(
        "the io_uring submission queue is full even after a flush; reap completions with \
         Reactor::wait or raise ReactorConfig::sq_entries"
    )]
    SubmissionQueueFull,

    /// `io_uring_enter` failed.
    #[error("io_uring_enter failed: {source}")]
    Enter {
        /// The error from `io_uring_enter`.
        #[source]
        source: io::Error,
    },

    /// Registering a fixed buffer failed.
    #[error(
        "registering a {len}-byte fixed buffer failed: {source}; only anonymous, memfd/shmem or \
         hugetlbfs memory can be registered, and pinned pages count against RLIMIT_MEMLOCK or \
         the memory cgroup"
    )]
    Register {
        /// Length of the region.
        len: usize,
        /// The error from `io_uring_register`.
        #[source]
        source: io::Error,
    },

    /// Every fixed-buffer slot is taken (or the reactor was built with none).
    #[error(
        "no free fixed-buffer slot (all {slots} in use); unregister a region or raise \
         ReactorConfig::fixed_buffer_slots"
    )]
    NoBufferSlot {
        /// Number of slots the reactor has.
        slots: u32,
    },

    /// A region is bigger than io_uring allows for one fixed buffer.
    #[error(
        "a region of {len} bytes is larger than io_uring's 1 GiB limit per fixed buffer; \
         register it as several regions"
    )]
    RegionTooLarge {
        /// Length of the region.
        len: usize,
    },

    /// A region is empty or has a null base.
    #[error(
        "a region with base {base:#x} and length {len} cannot be registered; it must be \
         non-empty and mapped"
    )]
    BadRegion {
        /// Base address reported by the region.
        base: usize,
        /// Length reported by the region.
        len: usize,
    },

    /// An (offset, length) pair does not fit in the region it names.
    #[error(
        "range offset {offset} + length {len} lies outside the {region_len}-byte region; \
         check the offsets against the region size"
    )]
    OutOfBounds {
        /// Offset into the region.
        offset: usize,
        /// Length of the range.
        len: usize,
        /// Length of the region.
        region_len: usize,
    },

    /// A futex word is misaligned or out of bounds.
    #[error(
        "futex word at offset {offset} is not a 4-byte aligned u32 inside the {region_len}-byte \
         region; futex words must be naturally aligned"
    )]
    BadFutexWord {
        /// Offset into the region.
        offset: usize,
        /// Length of the region.
        region_len: usize,
    },

    /// A region still has fixed-buffer operations queued or in flight.
    #[error(
        "fixed buffer {index} still has {in_flight} operation(s) queued or in flight; wait for \
         their completions before unregistering it"
    )]
    RegionBusy {
        /// The buffer index.
        index: u16,
        /// Operations queued or in flight on it.
        in_flight: u32,
    },

    /// A fixed-buffer index that names no registered region.
    #[error("fixed buffer {0} is not registered; register the region first")]
    UnknownBuffer(u16),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
