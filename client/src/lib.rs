#![forbid(unsafe_code)]
//! The blobring client SDK (ARCHITECTURE.md §3–4).
//!
//! **Owns:** the connection to `blobringd`, queue pairs, arena leases, the Blob API, striped
//! transfers and the object_store connector. **Trusts:** the daemon (it may crash; every
//! in-flight request then fails with an error). **Invariants:** a buffer lent to the host is never
//! reused until its release completion arrives.
//!
//! Status: not built yet (issues "blobringd" and "Client SDK").
