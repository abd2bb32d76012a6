#![forbid(unsafe_code)]
//! `blobringd`: the thread-per-core daemon that owns the VMBus channels and serves client
//! processes through shared-memory queues (ARCHITECTURE.md §5).
//!
//! **Owns:** the control socket, client sessions, per-core workers, channel fan-out, deadlines,
//! cleanup and statistics. **Trusts:** nothing a client writes; the host mostly (completions are
//! still validated). **Invariants:** no client can reach another client's memory; a misbehaving
//! client only stalls itself.
//!
//! Status: not built yet (issue "blobringd: the thread-per-core proxy").
