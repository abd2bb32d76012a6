#![forbid(unsafe_code)]
//! `blobring-host`: the emulated Azure host (ARCHITECTURE.md §7).
//!
//! **Owns:** the Blob executor ([`executor`]) and what it serves from ([`backend`]): a local
//! store ([`store`]: `fs:<dir>`, `mem`) or a `passthrough:<url>` upstream ([`passthrough`],
//! default feature `passthrough`); SharedKey and service-SAS verification ([`auth`]), fault
//! injection ([`executor::Faults`] on every transport, [`vsp::VspFaults`] on the VMBus path),
//! the HTTP REST front end (`rest`, default feature `rest`; over TLS too with `--https`), and
//! the VMBus front end ([`vsp`]). The `fs` store keeps up to `--open-files` data files open
//! between reads ([`store::DEFAULT_OPEN_FILES`] by default, 0 to open the file on every read):
//! data files are immutable once published, and a file leaves the cache when its blob version
//! is overwritten or deleted.
//!
//! # Shape
//!
//! - **Backend at the top.** [`Backend`] is chosen once from `--store` ([`open_store`]) and
//!   matched once, at the top of the executor's dispatch: a local [`Store`] gets the request
//!   mapped onto its operations, an upstream gets it forwarded whole (re-signed). The [`Store`]
//!   trait has only real implementations; nothing downcasts.
//! - **One response path.** Both front doors end in `executor::respond`: an Azure error
//!   becomes its error document and the common headers in one function, and an executed
//!   response becomes status, headers and body bytes in one function — into the VMBus data
//!   buffer (the VSP then only frames the head into the response buffer and posts the
//!   completion) or into a buffer for hyper (REST). The REST front end's own refusals (413
//!   over `--max-body`, a failed task) take the same path.
//! - **No header maps per request.** A request head is parsed by `httparse` into a borrowed
//!   view (`request::RequestHeaders`: the `(name, value)` slices of the head, looked up
//!   case-insensitively; the REST front end lends hyper's map the same way), its query into
//!   pairs borrowed unless percent-decoding changed them, and the SharedKey string-to-sign is
//!   hashed straight from that view. A response's headers are a [`ResponseHeaders`]: ordered
//!   entries with static names and values written into one byte buffer (both reused from the
//!   thread's previous responses), rendered straight into the response head
//!   ([`Executed::write_head`]); the REST front end converts them to hyper's map at its edge.
//!   A signed 4 KiB ranged GET allocates twice on the host, both in the in-memory store's
//!   `open` (`host/tests/exec_alloc.rs` holds the bounds).
//! - **Module map, imports pointing down only** (no import circle among the files of
//!   `host/src`): `main` (arguments) → `rest`, `vsp` (+ `vsp::direct`, the io_uring
//!   reads straight into guest memory) → `executor` (dispatch, admission, container
//!   operations; `blob`, `listing`, `batch`, `parts`, `forward` to an upstream, `respond`) →
//!   `backend` → `passthrough`, `store` (`engine` under `mem` and `fs`) and `auth` → `request`
//!   (the request view and its headers, the response being built and its headers, `AzError`,
//!   query decoding) and `xml`.
//!
//! # The bus protocol, message by message (host side)
//!
//! The wire layouts (a 16-byte header with magic `"BRVB"`, type, length and sequence number,
//! then one fixed-size body; fds as `SCM_RIGHTS`) are specified in [`blobring_vmbus::sim`].
//! What this host does on each message of a guest session (one `SOCK_SEQPACKET` connection):
//!
//! 1. **`HELLO`** (guest → host, bus version): checked against `BUS_VERSION`; answered with
//!    **`OFFER`**: class GUID `0590b792-db64-45cc-81db-b8d70c577c9e`, a fresh instance GUID,
//!    `max_channels` (= `--channels`: the primary plus subchannels) and the per-direction ring
//!    size `S` (= `--ring-size`).
//! 2. **`REQUEST_SUBCHANNELS`** (count): grants `min(count, max_channels - 1)` and answers
//!    **`SUBCHANNELS_OFFERED`**; subchannel indices are then `1..=granted`.
//! 3. **`OPEN_CHANNEL`** (index): creates one sealed memfd of `2 S` bytes (`[0, S)` guest → host
//!    ring, `[S, 2 S)` host → guest ring, each a 4096-byte control page initialised as Linux
//!    does plus data) and two eventfds, answers **`CHANNEL_OPENED`** with the three fds, and
//!    starts that channel's VSP worker thread (it waits on the guest → host eventfd).
//! 4. **`REGISTER_MEMORY`** (region id, guest-physical base, length, one memfd): the memfd must be
//!    sealed against shrinking and at least `length` bytes (`Mapping::map_peer_lazy`: mapped
//!    without pre-faulting, so registering costs the same for any length), the base page
//!    aligned and not overlapping another region, and the total under the host's cap; it is then
//!    mapped and answered with **`MEMORY_REGISTERED`**. From now on PFNs in request packets may point into it; any PFN
//!    outside every registered region fails that request with [`vsp::VspStatus::BadPage`].
//! 5. **`UNREGISTER_MEMORY`** (region id): forgotten for new requests, answered with
//!    **`MEMORY_UNREGISTERED`**; requests already executing keep their mapping alive until done.
//! 6. **`CLOSE_CHANNEL`** (index): the worker stops, **`CHANNEL_CLOSED`**.
//! 7. **`RESCIND`** (host → guest, unsolicited, `seq = 0`): sent by `--fault-rescind-after N`;
//!    the session then stops serving, and the next connection is offered the device again.
//! 8. **`ERROR`** (host → guest): the answer to anything malformed or refused (wrong magic, size
//!    or fd count, unknown channel, overlapping memory, …), with a `BUS_ERR_*` code and text; the
//!    session goes on. A hang-up ends the session: channels are closed and memory dropped.
//!
//! Requests themselves travel on the channel rings, not the bus: GPA-direct packets carrying an
//! `az_blob_vsp_request`, answered by completion packets carrying an `az_blob_vsp_response`
//! with the [`vsp`] status codes (0 ok, 1 bad packet, 2 page outside registered memory, 3 body
//! larger than the data buffer — `length` says how large, 4 head larger than the response
//! buffer — `response_len` says how large, 5 host internal error).
//!
//! # The VMBus path
//!
//! [`vsp::VspServer`] listens on the `sim` bus socket (protocol table in
//! [`blobring_vmbus::sim`]), offers the Azure Blob device with `--channels` channels of
//! `--ring-size` bytes per direction, and runs one VSP worker thread per opened channel. A
//! worker waits in its io_uring reactor on the channel's eventfd, validates each GPA-direct
//! request, translates its page list through the guest's registered memory (pages outside it
//! are refused with [`vsp::VspStatus::BadPage`]), copies the head and body out once, and runs a
//! small request itself ([`vsp::VspConfig::inline_max`]) or hands it to a pool of executor
//! threads, so requests complete out of order. The pool calls
//! [`Executor::execute_lazy`] with a [`BodySink`] over the guest's data buffer: the body lands
//! in place (for `fs` stores via io_uring reads straight into the guest
//! mapping), the head goes into the response buffer, and the worker posts the completion with
//! the [`vsp`] status codes. The same executor may serve REST at the same time.
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
//! responses), `hyper` + `tokio` (REST front end only), `quick-xml` (request XML),
//! `blobring-proto` (the SharedKey canonicalisation and signing the SDK uses too) + `base64`
//! (SAS), `sha2` (fs store names), `md-5` and `crc64fast-nvme` (Azure's transactional hashes;
//! the latter implements the NVMe polynomial Azure's CRC64 uses), `serde_json` (fs store records),
//! `lru` (the fs store's open-file cache, sized by `--open-files`); the VMBus path uses `blobring-vmbus` (rings, packets, bus session), `blobring-reactor`
//! (io_uring waits and reads into guest memory), `blobring-shm` (guest mappings), `crossbeam-channel`
//! (the multi-consumer job queue of the executor pool) and `rustix` (eventfds).

pub mod auth;
pub mod backend;
pub mod executor;
#[cfg(feature = "passthrough")]
pub mod passthrough;
mod request;
#[cfg(feature = "rest")]
pub mod rest;
pub mod store;
pub mod vsp;
mod xml;

pub use auth::{EMULATOR_ACCOUNT, EMULATOR_KEY, SharedKeyAuth};
pub use backend::{Backend, open_store, open_store_with};
pub use executor::{ExecuteError, Executed, Executor, ExecutorConfig, Faults};
pub use request::{NotText, ResponseHeaders, ResponseValue};
pub use store::{BlobReader, BodySink, SliceSink, Store, StoreError, StoreOptions};
