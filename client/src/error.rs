//! Error types of the client connection layer.

use std::path::PathBuf;

use blobring_abi::GeometryError;
use blobring_ring::RingError;
use blobring_shm::{AccessError, ArenaError, RegionError};

/// Why [`crate::Connection::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The socket could not be reached.
    #[error(
        "cannot connect to blobringd at {path}: {source}; {}",
        connect_hint(source)
    )]
    Connect {
        /// The socket path tried.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The daemon refused the handshake; `message` is its explanation.
    #[error("blobringd refused the connection ({kind}): {message}")]
    Refused {
        /// The reply's status code (`blobring_abi::HelloStatus`).
        status: u32,
        /// A short name of the status.
        kind: &'static str,
        /// The daemon's message (what went wrong and what to do).
        message: String,
    },
    /// The daemon's reply broke the handshake protocol.
    #[error(
        "blobringd sent a malformed handshake reply: {0}; client and daemon versions may differ"
    )]
    Protocol(String),
    /// The daemon closed the connection before replying: it sheds pending handshakes beyond
    /// its limit when many clients connect at once (or it is stopping). Transient:
    /// [`crate::Connection::connect_with`] retries it.
    #[error(
        "blobringd closed the connection during the handshake (too many clients connecting at \
         once, or the daemon is stopping); retry"
    )]
    Dropped,
    /// A system call failed during the handshake.
    #[error("handshake with blobringd failed during {op}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The region memfd could not be mapped.
    #[error("cannot map the region blobringd sent: {0}")]
    Map(#[from] RegionError),
    /// The region header does not describe a valid layout.
    #[error("the region header blobringd wrote is invalid: {0}")]
    Header(#[from] GeometryError),
    /// A queue pair could not be attached.
    #[error("cannot attach a queue pair: {0}")]
    Ring(#[from] RingError),
}

impl ConnectError {
    /// Whether trying again soon may succeed: the daemon dropped the handshake (or reset the
    /// connection during it), as it does when more clients connect at once than it keeps
    /// pending. A refusal, a missing socket or a protocol mismatch is not transient.
    pub fn is_transient(&self) -> bool {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof, WouldBlock};
        match self {
            Self::Dropped => true,
            Self::Io { source, .. } => {
                matches!(source.kind(), ConnectionReset | BrokenPipe | UnexpectedEof)
            }
            // The listen backlog is full.
            Self::Connect { source, .. } => source.kind() == WouldBlock,
            _ => false,
        }
    }
}

/// What to do about a failed `connect` to the daemon's socket.
fn connect_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        "this user may not open the socket (connecting needs write permission on it and search \
         permission on its directory; blobringd sets its mode with --socket-mode, default 660, \
         and its group with --group): ask the administrator to add you to the socket's group"
    } else {
        "is the daemon running? (set BLOBRING_SOCKET to its socket path)"
    }
}

/// Why an operation on a [`crate::Connection`] failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The daemon hung up (crashed or was stopped); reconnect.
    #[error("blobringd closed the connection (daemon stopped or crashed); reconnect")]
    DaemonGone,
    /// A queue index out of range.
    #[error("queue {queue} does not exist (the connection has {n_queues} queues)")]
    NoSuchQueue {
        /// Asked for.
        queue: u32,
        /// Queues available.
        n_queues: u32,
    },
    /// The ring refused an operation (a daemon bug or a corrupted region).
    #[error("queue error: {0}")]
    Ring(#[from] RingError),
    /// The arena could not satisfy an allocation or a free.
    #[error("arena: {0}")]
    Arena(#[from] ArenaError),
    /// A copy into or out of the region was outside it.
    #[error("region access: {0}")]
    Access(#[from] AccessError),
    /// The buffer does not lie inside the arena.
    #[error("buffer [{offset}, +{len}) is not inside the data arena")]
    NotInArena {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
}
