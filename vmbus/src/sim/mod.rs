//! The `sim` transport: VMBus channels between the daemon (guest) and the emulated host
//! (`blobring-host`) on one machine.
//!
//! # Channels
//!
//! Each channel is one sealed memfd of `2 * S` bytes created by the host: `[0, S)` is the
//! guest → host ring, `[S, 2S)` the host → guest ring (`reference/vmbus.md` §1.1), each a
//! 4096-byte control page plus `S - 4096` data bytes, initialised by the host as Linux does
//! (§1.2). Signalling uses **one eventfd per direction**: the guest writes the guest → host
//! eventfd (after a TX write that made its ring non-empty, or after freeing RX space the host
//! waits for), the host writes the host → guest eventfd likewise. Each side polls the eventfd
//! the other writes. [`SimChannel`] implements [`crate::channel::Channel`] for both
//! sides.
//!
//! # Bus protocol
//!
//! The guest connects to the host's unix `SOCK_SEQPACKET` socket. Every message is one
//! datagram: a 16-byte [`BusHeader`](blobring_abi::vmbus::BusHeader) (`magic = "BRVB"`,
//! `msg_type`, `length` = whole datagram, `seq`) and exactly one body struct from
//! `blobring_abi::vmbus`. The guest numbers its requests (`seq` ≠ 0); each host reply echoes
//! the `seq` of the request it answers; unsolicited host messages carry `seq = 0`. Fds travel
//! as `SCM_RIGHTS`, received with `MSG_CMSG_CLOEXEC`, wrapped in `OwnedFd` at once; a message
//! whose type, size, fd count or magic is wrong is refused (`MSG_TRUNC`/`MSG_CTRUNC` too).
//!
//! | # | direction | message | body | fds | meaning |
//! |---|---|---|---|---|---|
//! | 1 | G → H | `HELLO` | `BusHello { version }` | 0 | first message; version must be [`BUS_VERSION`](blobring_abi::vmbus::BUS_VERSION) |
//! | 2 | H → G | `OFFER` | `BusOffer { class_guid, instance_guid, max_channels, ring_size, version }` | 0 | reply to `HELLO`: the device (class `0590b792-db64-45cc-81db-b8d70c577c9e`), how many channels it offers (primary + `max_channels - 1` subchannels) and the size `S` of each ring |
//! | 3 | G → H | `OPEN_CHANNEL` | `BusChannelIndex { index }` | 0 | open channel `index` (0 = primary; subchannels only after `REQUEST_SUBCHANNELS` offered them) |
//! | 4 | H → G | `CHANNEL_OPENED` | `BusChannelOpened { index, ring_size }` | 3 | reply: the ring memfd (`2 S` bytes, sealed), the guest → host eventfd, the host → guest eventfd, in that order |
//! | 5 | G → H | `REQUEST_SUBCHANNELS` | `BusSubchannelCount { count }` | 0 | ask for `count` subchannels |
//! | 6 | H → G | `SUBCHANNELS_OFFERED` | `BusSubchannelCount { count }` | 0 | reply: subchannels `1..=count` now exist (at most `max_channels - 1`) |
//! | 7 | G → H | `REGISTER_MEMORY` | `BusRegisterMemory { region_id, gpa_base, len }` | 1 | register `len` bytes of a sealed memfd at guest-physical `gpa_base` (both multiples of 4096, no overlap, unique id) |
//! | 8 | H → G | `MEMORY_REGISTERED` | `BusRegionId { region_id }` | 0 | reply: the host mapped it (`Mapping::map_peer_lazy`: pages are mapped on first touch) |
//! | 9 | G → H | `UNREGISTER_MEMORY` | `BusRegionId { region_id }` | 0 | forget a region (the host keeps it mapped until in-flight requests drop it) |
//! | 10 | H → G | `MEMORY_UNREGISTERED` | `BusRegionId { region_id }` | 0 | reply |
//! | 11 | G → H | `CLOSE_CHANNEL` | `BusChannelIndex { index }` | 0 | close an open channel |
//! | 12 | H → G | `CHANNEL_CLOSED` | `BusChannelIndex { index }` | 0 | reply |
//! | 13 | H → G | `RESCIND` | `BusRescind { reason }` | 0 | unsolicited (`seq = 0`): the device is gone; the guest fails in-flight work and stops using every channel; later requests get `ERROR(RESCINDED)` |
//! | 14 | H → G | `ERROR` | `BusError { request_type, code, message }` | 0 | reply to a refused request (`code` = `BUS_ERR_*`, `message` = UTF-8 text) |
//!
//! Hanging up the socket is how each side learns of the other's death: the host then drops
//! the guest's channels and memory registrations.
//!
//! **Trust.** The host trusts nothing from the guest: every message is validated, garbage
//! gets an `ERROR` reply and the session goes on; PFNs in packets are checked against the
//! registered regions ([`GuestMemory`](crate::guest_memory::GuestMemory)). The guest trusts
//! the host for liveness but still validates every message and every ring index.

#[cfg(feature = "test-support")]
pub mod driver;
pub mod guest;
pub mod host;
mod proto;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use blobring_shm::{SharedMemory, Window};
use rustix::event::{EventfdFlags, eventfd};

use crate::channel::{Channel, ChannelRings};
use crate::ring::{IncomingRing, OutgoingRing, RingError};

/// Smallest ring size (`S`, control page included) the bus accepts.
pub const MIN_RING_SIZE: u32 = 8192;
/// Largest ring size (`S`) the bus accepts.
pub const MAX_RING_SIZE: u32 = 64 << 20;
/// Default ring size: 128 KiB per direction, as the Linux blob driver used (§6.1).
pub const DEFAULT_RING_SIZE: u32 = 128 << 10;

/// Memory behind a sim ring: a window of the channel's shared mapping.
pub type RingMem = Window<Arc<dyn SharedMemory>>;

/// A bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The peer hung up.
    #[error("the peer closed the bus connection")]
    Closed,
    /// A non-blocking receive found nothing.
    #[error("no bus message pending")]
    WouldBlock,
    /// No reply within the timeout.
    #[error("no reply from the host within {0:?}")]
    Timeout(std::time::Duration),
    /// The peer sent a message that is not valid.
    #[error("malformed bus message: {0}")]
    Malformed(&'static str),
    /// The peer sent a valid message we did not expect now.
    #[error("unexpected bus message type {0}")]
    Unexpected(u32),
    /// The host refused the request.
    #[error("the host refused the request (code {code}): {message}")]
    Refused {
        /// `BUS_ERR_*`.
        code: u32,
        /// The host's message.
        message: String,
    },
    /// The host offers a device of another class or protocol version.
    #[error("the host offers an incompatible device: {0}")]
    Incompatible(String),
    /// The device was rescinded.
    #[error("the device was rescinded by the host (reason {0})")]
    Rescinded(u32),
    /// A channel's ring memory could not be mapped.
    #[error("cannot map channel memory: {0}")]
    Map(#[from] blobring_shm::RegionError),
    /// A channel's rings are not usable.
    #[error("bad channel rings: {0}")]
    Ring(#[from] RingError),
}

impl BusError {
    /// True if the peer is at fault (malformed or unexpected message).
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            Self::Malformed(_) | Self::Unexpected(_) | Self::Incompatible(_)
        )
    }
}

fn io_err(op: &'static str) -> impl FnOnce(rustix::io::Errno) -> BusError {
    move |e| BusError::Io {
        op,
        source: e.into(),
    }
}

/// A close-on-exec unix `SOCK_SEQPACKET` socket and the address `path`, for the guest to
/// connect to or the host to bind.
pub(crate) fn seqpacket_socket(
    path: &std::path::Path,
) -> Result<(OwnedFd, rustix::net::SocketAddrUnix), BusError> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(io_err("socket"))?;
    let addr = SocketAddrUnix::new(path).map_err(io_err("socket path"))?;
    Ok((sock, addr))
}

/// A new non-blocking, close-on-exec eventfd.
pub(crate) fn new_eventfd() -> Result<OwnedFd, BusError> {
    eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(io_err("eventfd"))
}

/// Adds 1 to an eventfd (a signal). A full counter (`EAGAIN`) already means "signalled".
pub fn signal_eventfd(fd: BorrowedFd<'_>) -> io::Result<()> {
    match rustix::io::write(fd, &1u64.to_ne_bytes()) {
        Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reads and resets an eventfd counter without blocking (0 if nothing was pending).
///
/// Non-blocking per operation (`RWF_NOWAIT`), whatever the description's `O_NONBLOCK` says:
/// the peer holds the same open file description and may have cleared it.
pub fn drain_eventfd(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut b = [0u8; 8];
    let mut iov = [io::IoSliceMut::new(&mut b)];
    match rustix::io::preadv2(fd, &mut iov, u64::MAX, rustix::io::ReadWriteFlags::NOWAIT) {
        Ok(8) => Ok(u64::from_ne_bytes(b)),
        Ok(_) => Ok(0),
        Err(rustix::io::Errno::AGAIN) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Waits up to `timeout` for `fd` to become readable; returns `true` if it did.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let ts = Timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    loop {
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(n) => return Ok(n > 0),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Which side of a channel a [`SimChannel`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The daemon: produces on `[0, S)`, consumes `[S, 2S)`.
    Guest,
    /// The emulated host: produces on `[S, 2S)`, consumes `[0, S)`.
    Host,
}

/// One open sim channel, for either side.
#[derive(Debug)]
pub struct SimChannel {
    index: u32,
    side: Side,
    rings: ChannelRings<RingMem>,
    /// The eventfd the peer polls.
    signal_fd: OwnedFd,
    /// The eventfd we poll.
    wait_fd: OwnedFd,
}

impl AsFd for SimChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wait_fd.as_fd()
    }
}

impl SimChannel {
    /// Builds the channel over `mem` (`2 * ring_size` bytes) for `side`. `guest_to_host` and
    /// `host_to_guest` are the two eventfds.
    pub(crate) fn new(
        index: u32,
        side: Side,
        mem: Arc<dyn SharedMemory>,
        ring_size: u32,
        guest_to_host: OwnedFd,
        host_to_guest: OwnedFd,
    ) -> Result<Self, BusError> {
        let s = u64::from(ring_size);
        let tx = Window::new(mem.clone(), 0, s).map_err(RingError::from)?;
        let rx = Window::new(mem, s, s).map_err(RingError::from)?;
        let (out_mem, in_mem, signal_fd, wait_fd) = match side {
            Side::Guest => (tx, rx, guest_to_host, host_to_guest),
            Side::Host => (rx, tx, host_to_guest, guest_to_host),
        };
        Ok(Self {
            index,
            side,
            rings: ChannelRings {
                outgoing: OutgoingRing::new(out_mem)?,
                incoming: IncomingRing::new(in_mem)?,
            },
            signal_fd,
            wait_fd,
        })
    }

    /// The channel index (0 = primary).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Which side this is.
    pub fn side(&self) -> Side {
        self.side
    }
}

impl Channel for SimChannel {
    type Mem = RingMem;

    fn rings(&mut self) -> &mut ChannelRings<RingMem> {
        &mut self.rings
    }

    fn signal(&self) -> io::Result<()> {
        signal_eventfd(self.signal_fd.as_fd())
    }

    fn clear_wakeups(&self) -> io::Result<u64> {
        drain_eventfd(self.wait_fd.as_fd())
    }
}

/// Validates a ring size from a peer or a configuration.
pub(crate) fn check_ring_size(s: u32) -> Result<(), BusError> {
    if !(MIN_RING_SIZE..=MAX_RING_SIZE).contains(&s) || !s.is_multiple_of(4096) {
        return Err(BusError::Malformed(
            "ring size must be a multiple of 4096 in [8 KiB, 64 MiB]",
        ));
    }
    Ok(())
}
