#![forbid(unsafe_code)]
//! `blobring-host`: the emulated Azure host (ARCHITECTURE.md §7).
//!
//! **Owns:** the VMBus device offer, VSP workers, the Blob executor and its stores, the HTTP REST
//! front end and fault injection. **Trusts:** nothing the guest writes into packets or guest
//! memory. Status: being built (issue "VMBus transport and the emulated Azure host").
