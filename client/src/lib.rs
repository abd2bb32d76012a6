#![forbid(unsafe_code)]
//! The blobring client SDK (ARCHITECTURE.md §3–4).
//!
//! **Owns:** the connection to `blobringd` ([`Connection`]: handshake, the client's mapped
//! region, one queue pair per daemon worker, the data arena, and the one table of requests in
//! flight on it), the request layer on top of it ([`Client`]: async and blocking calls,
//! zero-copy [`Lease`]s, reconnect, who reaps completions), the Blob API
//! ([`blob::BlobService`]), striped transfers ([`transfer`], which also holds
//! [`blob::BlobService::put_blob`]'s path for data too large for one request) and, behind the
//! `object-store` feature, the object_store connector (`connector`).
//!
//! Layers, each using only those below it: `conn` (the ABI) ← `client` (requests) ← `blob`
//! (HTTP heads, SharedKey, the Blob operations) ← `transfer` (striped uploads and downloads)
//! ← `connector`.
//!
//! ```no_run
//! use blobring::blob::{AccountConfig, BlobService, GetOptions, PutOptions};
//! use blobring::{Client, block_on};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The daemon's socket from BLOBRING_SOCKET (else the default path); the account from
//! // AZURE_STORAGE_CONNECTION_STRING (else the emulator account).
//! let svc = BlobService::new(Client::connect_default()?, AccountConfig::from_env()?);
//! block_on(async {
//!     svc.put_blob("data", "hello.txt", b"hello", &PutOptions::default()).await?;
//!     let got = svc.get_blob("data", "hello.txt", None, &GetOptions::default()).await?;
//!     assert_eq!(got.to_vec()?, b"hello");
//!     Ok::<_, blobring::blob::BlobError>(())
//! })?;
//! # Ok(())
//! # }
//! ```
//!
//! **Trusts:** the daemon — it may crash, and then every in-flight request completes with
//! `-ECONNRESET`, synthesised from the [`Connection`]'s table of requests in flight when the
//! daemon's socket hangs up (the one failure path: the [`Client`] handles these completions
//! like any other). The daemon's indices are still validated by the ring crate, and the region header
//! is checked against [`RegionGeometry::from_header`] before anything is attached.
//!
//! **Invariants:**
//! - the handshake socket stays open for the life of the [`Connection`]: its hang-up is how
//!   each side learns of the other's death;
//! - the eventfd of a queue is written only when the daemon said it sleeps (`sq_need_wakeup`);
//! - a blocking [`Connection::wait`] never sleeps longer than [`LIVENESS_SLICE`] without
//!   checking that the daemon is alive, so a dead daemon is noticed promptly;
//! - each connection has a watcher thread blocked in `poll()` on the daemon socket and the
//!   daemon's pidfd: on hang-up or exit it wakes every `cq_tail` futex, so the thread that
//!   reaps (asleep on all of them at once with `futex_waitv`) fails in-flight requests
//!   within milliseconds;
//! - one thread at a time reaps a [`Client`]'s completions and sleeps on its futexes: a
//!   caller blocked in [`Pending::wait`] when no one else does (it reaps for everyone until
//!   its own request completes, then hands the role to another blocked caller), else the
//!   client's reaper thread (async callers, and the fallback);
//! - a `Bytes` from [`Lease::into_bytes`] points into the arena without a copy (through
//!   [`blobring_shm::Frozen`]): sound because the daemon is trusted and a lease in the
//!   caller's hands is never lent to it; the `Bytes` owns the lease, so the space returns only
//!   when its last clone drops;
//! - a buffer named by a completion with [`CQE_F_BUFFERS_LENT`] may still be written by the
//!   host: the caller must not free or reuse it until the matching
//!   [`CQE_F_BUFFERS_RELEASED`] completion (the low-level layer reports both).
//!
//! The low-level layer in this crate is deliberately small: it moves SQEs and CQEs and copies
//! bytes in and out of arena buffers; building HTTP request heads is the Blob layer's job.

pub mod blob;
mod client;
mod conn;
#[cfg(feature = "object-store")]
pub mod connector;
mod error;
mod timer;
pub mod transfer;

/// The Blob REST names and SharedKey canonicalisation the SDK shares with the host
/// (`blobring-proto`), for crates built on the SDK.
pub use blobring_abi::vmbus::VspStatus;
pub use blobring_abi::{
    CQE_F_BUFFERS_LENT, CQE_F_BUFFERS_RELEASED, Cqe, FromZeros, Opcode, RegionGeometry, Sqe,
};
pub use blobring_proto as proto;
pub use blobring_ring::WaitOutcome;
pub use blobring_shm::Allocation;
pub use client::{
    Client, ClientError, ClientOptions, Completion, Lease, MAX_REQUEST_DATA, Pending, Request,
    block_on,
};
pub use conn::{
    ConnectOptions, Connection, HANDSHAKE_RETRY, LIVENESS_SLICE, SleepSet, default_socket_path,
    errno,
};
pub use error::{ConnectError, Error};
