#![forbid(unsafe_code)]
//! Hyper-V VMBus for blobring: rings, packets, the Azure Blob VSP messages, channels and the
//! simulated transport.
//!
//! **Owns** (spec: `reference/vmbus.md`, which this crate follows byte for byte in §1–3, §6;
//! `vmbus/SOURCES.md` names the Linux, driver, DPDK or OpenVMM source of every rule the `uio`
//! transport and the rings depend on, with the test that pins it):
//! - [`ring`]: the ring buffer, both halves ([`ring::OutgoingRing`], [`ring::IncomingRing`]),
//!   usable by the guest and by the emulated host: 8-byte aligned packets with the 8-byte
//!   trailer, the never-full rule, copies split at the wrap, full barriers, `interrupt_mask`
//!   and `pending_send_sz`, and "signal the peer?" answers only on the transitions of §1.6 and
//!   §1.7.
//! - [`packet`]: in-band, GPA-direct (multi-range) and completion packets; [`packet::decode`]
//!   validates everything §2.4 lists.
//! - [`blob`]: the Azure Blob request packet (§6.2–6.3) and its completion (§6.4).
//! - [`channel`]: the [`channel::Channel`] trait shared by transports.
//! - [`sim`]: the unix-socket bus between the daemon and `blobring-host` (protocol documented
//!   message by message in the [`sim`] module), with [`sim::guest`] and [`sim::host`] helpers.
//! - [`guest_memory`]: the emulated host's table of registered guest memory, translating page
//!   lists into spans and rejecting pages outside it.
//! - [`guest_phys`]: the guest side's page numbers for client buffers, per transport
//!   ([`guest_phys::PfnTranslator`]: base + offset on `sim`, hugepages + pagemap on `uio`).
//! - [`uio`]: the real Hyper-V transport through `uio_hv_generic` (§3–4): discovery, binding,
//!   mapping, signalling, interrupts, transport auto-detection.
//!
//! **Cargo feature `test-support`** (off by default; only dev-dependencies enable it): adds
//! `uio::fake`, a test fixture standing in for the kernel's uio device (a fake sysfs tree,
//! memfds for the `/dev/uioN` maps and subchannel `ring` files, a fake uio fd implementing the
//! [`uio::DeviceOpener`] / [`uio::UioEvents`] seams, and a fixture host answering blob
//! packets), shared by this crate's tests and the daemon's; and `sim::driver`, a small guest
//! Azure Blob driver over the `sim` bus for the host's tests and benchmarks. The shipped
//! binaries use only [`sim::guest`] (blobringd) and [`sim::host`] (blobring-host).
//!
//! **Trusts:** as the guest, the host for liveness only — every ring index, descriptor and bus
//! message it writes is still validated, and a broken one is an error
//! ([`ring::Corruption`], [`sim::BusError::Malformed`]) rather than a panic. As the host, the
//! guest **not at all**: bus messages are checked for magic, type, exact size and fd count;
//! memfds must be sealed and large enough before they are mapped; every PFN must fall inside
//! registered memory; requests with transaction id 0 are refused.
//!
//! **Invariants:**
//! - Peer-writable memory is only touched through [`blobring_shm::SharedMemory`]: atomics for
//!   control fields, copies for packets. A descriptor is copied once and the copy validated;
//!   nothing is re-read after validation.
//! - Every index the peer writes is validated (in range, multiple of 8) on every load; the
//!   index each half owns is kept privately and only stored.
//! - Signal only when told to by [`ring::OutgoingRing::commit_write`] /
//!   [`ring::IncomingRing::commit_read`] (Hyper-V throttles spurious interrupts).
//! - Transaction ids of requests are never 0.
//!
//! The `forbid` above holds for the whole crate: shared memory goes through `blobring_shm`,
//! fds received with `SCM_RIGHTS` arrive as `OwnedFd` from `rustix::net::recvmsg`. `rustix`
//! makes the system calls, `zerocopy` reads and writes every wire layout (defined in
//! `blobring_abi::vmbus`), `uuid` holds the GUIDs of the offer.

pub mod blob;
pub mod channel;
pub mod guest_memory;
pub mod guest_phys;
pub mod packet;
pub mod ring;
pub mod sim;
pub mod uio;

pub use channel::{Channel, ChannelError};
pub use packet::{Packet, PacketKind, Reply, decode, decode_reply};
pub use ring::{Corruption, IncomingRing, OutgoingRing, ReadError, RingError, WriteError};
