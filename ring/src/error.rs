//! The ring's error type.

use blobring_shm::AccessError;

/// Why a ring operation failed.
///
/// [`RingError::Corrupt`] is the peer's fault (see [`RingError::is_peer_fault`]); the half that
/// returned it has not changed any of its state and stays usable, so a caller may retry after
/// the peer repaired the index — but a daemon should disconnect a client that corrupts its
/// indices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// The peer published an index outside the window the protocol allows.
    #[error(
        "peer wrote {field} = {value}, outside the valid window {low}..={high} (free-running, wrapping)"
    )]
    Corrupt {
        /// Which index (`sq_tail`, `sq_head`, `cq_tail`, `cq_head`).
        field: &'static str,
        /// The value read from shared memory.
        value: u32,
        /// Lowest acceptable value (wrapping).
        low: u32,
        /// Highest acceptable value (wrapping).
        high: u32,
    },
    /// The queue layout does not fit the memory or is malformed.
    #[error("bad queue layout: {0}")]
    Layout(&'static str),
    /// A shared-memory access was refused (cannot happen once the layout was checked).
    #[error("shared memory access failed")]
    Access(#[from] AccessError),
    /// More completions than requests in flight (a bug in the caller).
    #[error("{completions} completions posted but only {in_flight} requests are in flight")]
    NotInFlight {
        /// Completions the caller tried to post.
        completions: usize,
        /// Requests in flight.
        in_flight: u32,
    },
    /// No completion slot is free beyond those promised to requests in flight.
    #[error("completion queue has no unreserved slot")]
    CqFull,
    /// A wakeup system call failed.
    #[error("{op} failed: {errno}")]
    Wake {
        /// The operation (`eventfd write`, `futex wait`, ...).
        op: &'static str,
        /// The errno.
        errno: rustix::io::Errno,
    },
}

impl RingError {
    /// True when the peer broke the protocol (as opposed to a local failure or misuse).
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, Self::Corrupt { .. })
    }
}
