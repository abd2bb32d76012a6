#![forbid(unsafe_code)]
//! `blobring-host`: the emulated Azure host (ARCHITECTURE.md §7).
//!
//! **Owns:** the Blob executor ([`executor`]), its stores ([`store`]: `fs:<dir>`, `mem`), SharedKey
//! and service-SAS verification ([`auth`]), fault injection ([`executor::Faults`]) and the HTTP
//! REST front end ([`rest`]), and the VMBus path ([`vsp`]).
//!
//! # The VMBus path
//!
//! [`vsp::VspServer`] listens on the `sim` bus socket (protocol table in
//! [`blobring_vmbus::sim`]), offers the Azure Blob device with `--channels` channels of
//! `--ring-size` bytes per direction, and runs one VSP worker thread per opened channel. A
//! worker waits in its io_uring reactor on the channel's eventfd, validates each GPA-direct
//! request, translates its page list through the guest's registered memory (pages outside it
//! are refused with [`vsp::VSP_ERR_BAD_PAGE`]), copies the head and body out once, and hands the
//! request to a pool of executor threads, so requests complete out of order. The pool calls
//! [`Executor::execute`] with a [`BodySink`] over the guest's data buffer: the body lands in
//! place (for `fs` stores via io_uring fixed-buffer reads into the registered guest mapping),
//! the head goes into the response buffer, and the worker posts the completion with the
//! [`vsp`] status codes. The same executor may serve REST at the same time.
//!
//! **Trusts:** nothing in a request: heads, queries, ranges, XML and multipart bodies are
//! validated and answered with Azure error codes; auth is verified when a key is configured.
//! It trusts its own store directory (a corrupt record stops start-up with the file named) and
//! the operator's command line.
//!
//! **Invariants:** a blob is never visible partially written; conditional writes are atomic
//! with the write they guard; a response body is never silently truncated (the VMBus entry
//! point reports the size it needs instead); the REST front end binds loopback only; nothing on
//! the per-request path logs above `debug`.
//!
//! # Calling the executor (the VSP worker's view)
//!
//! ```
//! use std::sync::Arc;
//! use blobring_host::{Executor, ExecutorConfig, Faults, store::MemStore, Store};
//!
//! let store = Arc::new(MemStore::new());
//! store.create_container("data", Vec::new()).unwrap();
//! let exec = Executor::new(store, ExecutorConfig {
//!     account: "devstoreaccount1".into(),
//!     auth: None, // or Some(SharedKeyAuth::new(account, key)?)
//!     faults: Faults::default(),
//! });
//! let put = b"PUT /devstoreaccount1/data/hello.txt HTTP/1.1\r\n\
//!             x-ms-blob-type: BlockBlob\r\nContent-Length: 5\r\n\r\n";
//! let mut data = vec![0u8; 4096]; // the request's data buffer
//! let done = exec.execute_into(put, b"hello", &mut data).unwrap();
//! assert_eq!(done.status, 201);
//!
//! let get = b"GET /devstoreaccount1/data/hello.txt HTTP/1.1\r\nx-ms-range: bytes=1-3\r\n\r\n";
//! let done = exec.execute_into(get, &[], &mut data).unwrap();
//! assert_eq!((done.status.as_u16(), &data[..done.body_len]), (206, &b"ell"[..]));
//! let mut response = [0u8; 2048]; // the request's response buffer
//! let head_len = done.write_head(&mut response).unwrap();
//! assert!(response[..head_len].starts_with(b"HTTP/1.1 206 Partial Content\r\n"));
//! ```
//!
//! A transport whose data buffer is guest memory implements [`BodySink`] over its accessor and
//! calls [`Executor::execute`] instead; bodies larger than the buffer come back as
//! [`ExecuteError::BodyTooLarge`] with the size needed.
//!
//! Dependencies: `httparse` (request heads, the same parser object_store uses for batch
//! responses), `hyper` + `tokio` (REST front end only), `quick-xml` (request XML), `hmac` +
//! `sha2` + `base64` (SharedKey), `md-5` and `crc64fast-nvme` (Azure's transactional hashes;
//! the latter implements the NVMe polynomial Azure's CRC64 uses), `serde_json` (fs store records); the VMBus path uses `blobring-vmbus` (rings, packets, bus session), `blobring-reactor`
//! (io_uring waits and fixed-buffer reads), `blobring-shm` (guest mappings), `crossbeam-channel`
//! (the multi-consumer job queue of the executor pool) and `rustix` (eventfds).

pub mod auth;
pub mod executor;
#[cfg(feature = "rest")]
pub mod rest;
pub mod store;
pub mod vsp;
mod xml;

pub use auth::{EMULATOR_ACCOUNT, EMULATOR_KEY, SharedKeyAuth};
pub use executor::{ExecuteError, Executed, Executor, ExecutorConfig, Faults};
pub use store::{BlobReader, BodySink, SliceSink, Store, StoreError, open_store};
