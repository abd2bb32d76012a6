#![forbid(unsafe_code)]
//! `blobring-host`: the emulated Azure host (ARCHITECTURE.md §7).
//!
//! **Owns:** the Blob executor ([`executor`]), its stores ([`store`]: `fs:<dir>`, `mem`), SharedKey
//! and service-SAS verification ([`auth`]), fault injection ([`executor::Faults`]) and the HTTP
//! REST front end ([`rest`]). The VMBus device offer and VSP workers will call
//! [`Executor::execute`] with the request head and data buffer of each packet.
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
//! Dependencies: `httparse` (request heads, the same parser object_store uses for batch
//! responses), `hyper` + `tokio` (REST front end only), `quick-xml` (request XML), `hmac` +
//! `sha2` + `base64` (SharedKey), `md-5` and `crc64fast-nvme` (Azure's transactional hashes;
//! the latter implements the NVMe polynomial Azure's CRC64 uses), `serde_json` (fs store records).

pub mod auth;
pub mod executor;
pub mod rest;
pub mod store;
mod xml;

pub use auth::{EMULATOR_ACCOUNT, EMULATOR_KEY, SharedKeyAuth};
pub use executor::{ExecuteError, Executed, Executor, ExecutorConfig, Faults};
pub use store::{BlobReader, BodySink, SliceSink, Store, StoreError, open_store};
