//! Guest (daemon) side of the sim bus: connect, open channels, register memory, see rescinds.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blobring_abi::vmbus::*;
use blobring_shm::{Mapping, SharedMemory};
use uuid::Uuid;
use zerocopy::IntoBytes;

use super::proto::{self, Message, Received};
use super::{BusError, Side, SimChannel, check_ring_size, io_err, seqpacket_socket, wait_readable};

/// Default time to wait for a host reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The device the host offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// Device class (the Azure Blob class).
    pub class_guid: Uuid,
    /// Device instance.
    pub instance_guid: Uuid,
    /// Channels offered: primary + up to `max_channels - 1` subchannels.
    pub max_channels: u32,
    /// Bytes of each ring (control page + data).
    pub ring_size: u32,
}

/// Something the host told us without being asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusEvent {
    /// The device is gone (`RESCIND`): stop using every channel.
    Rescinded {
        /// The host's reason code.
        reason: u32,
    },
    /// The host hung up.
    Closed,
}

/// A connection to the emulated host's bus. `AsFd` is the socket, readable when the host sends
/// something (poll it for rescinds, then call [`BusClient::poll_event`]).
#[derive(Debug)]
pub struct BusClient {
    sock: OwnedFd,
    next_seq: u32,
    offer: Offer,
    rescinded: Option<u32>,
    closed: bool,
    subchannels: u32,
    timeout: Duration,
}

impl AsFd for BusClient {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl BusClient {
    /// Connects to the host socket at `path` and performs `HELLO` → `OFFER`.
    pub fn connect(path: &Path) -> Result<Self, BusError> {
        let (sock, addr) = seqpacket_socket(path)?;
        rustix::net::connect(&sock, &addr).map_err(io_err("connect"))?;
        Self::from_socket(sock)
    }

    /// Uses an already connected `SOCK_SEQPACKET` socket (e.g. one end of a socketpair) and
    /// performs `HELLO` → `OFFER`. Refuses a device that is not the Azure Blob class.
    pub fn from_socket(sock: OwnedFd) -> Result<Self, BusError> {
        let mut c = Self {
            sock,
            next_seq: 1,
            offer: Offer {
                class_guid: Uuid::nil(),
                instance_guid: Uuid::nil(),
                max_channels: 0,
                ring_size: 0,
            },
            rescinded: None,
            closed: false,
            subchannels: 0,
            timeout: DEFAULT_TIMEOUT,
        };
        let hello = BusHello {
            version: BUS_VERSION,
            reserved: 0,
        };
        let Message::Offer(o) = c.request(BUS_MSG_HELLO, hello.as_bytes(), &[])? else {
            return Err(BusError::Unexpected(BUS_MSG_HELLO));
        };
        if o.class_guid != AZ_BLOB_CLASS_GUID {
            return Err(BusError::Incompatible(format!(
                "class {} is not the Azure Blob class {AZ_BLOB_CLASS_GUID_STR}",
                Uuid::from_bytes_le(o.class_guid)
            )));
        }
        if o.version != BUS_VERSION {
            return Err(BusError::Incompatible(format!("bus version {}", o.version)));
        }
        if o.max_channels == 0 {
            return Err(BusError::Incompatible("no channels offered".into()));
        }
        check_ring_size(o.ring_size)?;
        c.offer = Offer {
            class_guid: Uuid::from_bytes_le(o.class_guid),
            instance_guid: Uuid::from_bytes_le(o.instance_guid),
            max_channels: o.max_channels,
            ring_size: o.ring_size,
        };
        Ok(c)
    }

    /// Sets how long requests wait for the host's reply.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The offered device.
    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    /// Subchannels the host has offered so far.
    pub fn subchannels(&self) -> u32 {
        self.subchannels
    }

    /// True once a `RESCIND` was seen.
    pub fn is_rescinded(&self) -> bool {
        self.rescinded.is_some()
    }

    /// Handles an unsolicited message; returns the event it represents.
    fn unsolicited(&mut self, msg: Message) -> Result<BusEvent, BusError> {
        match msg {
            Message::Rescind(r) => {
                self.rescinded = Some(r.reason);
                Ok(BusEvent::Rescinded { reason: r.reason })
            }
            other => Err(BusError::Unexpected(other.msg_type())),
        }
    }

    /// Sends a request and waits for the reply with the same `seq`, handling unsolicited
    /// messages on the way. An `ERROR` reply becomes [`BusError::Refused`].
    fn request(
        &mut self,
        msg_type: u32,
        body: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<Message, BusError> {
        if self.closed {
            return Err(BusError::Closed);
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.checked_add(1).unwrap_or(1);
        proto::send(self.sock.as_fd(), seq, msg_type, body, fds)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !wait_readable(self.sock.as_fd(), left).map_err(|e| BusError::Io {
                op: "poll",
                source: e,
            })? {
                return Err(BusError::Timeout(self.timeout));
            }
            let Received { seq: got, msg } = match proto::recv(self.sock.as_fd(), true) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    self.closed = true;
                    return Err(BusError::Closed);
                }
                Err((_, BusError::WouldBlock)) => continue,
                Err((_, e)) => return Err(e),
            };
            if got == 0 {
                self.unsolicited(msg)?;
                continue;
            }
            if got != seq {
                // A late reply to an earlier request that timed out: drop it.
                tracing::debug!(got, seq, "ignoring a stale bus reply");
                continue;
            }
            return match msg {
                Message::Error(e) => {
                    if e.code == BUS_ERR_RESCINDED {
                        self.rescinded.get_or_insert(0);
                    }
                    Err(BusError::Refused {
                        code: e.code,
                        message: proto::error_text(&e),
                    })
                }
                m => Ok(m),
            };
        }
    }

    /// Opens channel `index` (0 = primary) and maps its rings.
    pub fn open_channel(&mut self, index: u32) -> Result<SimChannel, BusError> {
        let body = BusChannelIndex { index, reserved: 0 };
        let Message::ChannelOpened(o, [memfd, g2h, h2g]) =
            self.request(BUS_MSG_OPEN_CHANNEL, body.as_bytes(), &[])?
        else {
            return Err(BusError::Unexpected(BUS_MSG_OPEN_CHANNEL));
        };
        if o.index != index {
            return Err(BusError::Malformed("CHANNEL_OPENED for another channel"));
        }
        check_ring_size(o.ring_size)?;
        let map = Mapping::map_peer(memfd.as_fd(), 2 * u64::from(o.ring_size))?;
        drop(memfd);
        let mem: Arc<dyn SharedMemory> = Arc::new(map);
        SimChannel::new(index, Side::Guest, mem, o.ring_size, g2h, h2g)
    }

    /// Closes channel `index` on the host.
    pub fn close_channel(&mut self, index: u32) -> Result<(), BusError> {
        let body = BusChannelIndex { index, reserved: 0 };
        match self.request(BUS_MSG_CLOSE_CHANNEL, body.as_bytes(), &[])? {
            Message::ChannelClosed(c) if c.index == index => Ok(()),
            m => Err(BusError::Unexpected(m.msg_type())),
        }
    }

    /// Asks for `count` subchannels; returns how many exist now (indices `1..=n`).
    pub fn request_subchannels(&mut self, count: u32) -> Result<u32, BusError> {
        let body = BusSubchannelCount { count, reserved: 0 };
        match self.request(BUS_MSG_REQUEST_SUBCHANNELS, body.as_bytes(), &[])? {
            Message::SubchannelsOffered(c) => {
                if c.count >= self.offer.max_channels {
                    return Err(BusError::Malformed("more subchannels than offered"));
                }
                self.subchannels = c.count;
                Ok(c.count)
            }
            m => Err(BusError::Unexpected(m.msg_type())),
        }
    }

    /// Registers `len` bytes of the sealed memfd `memfd` at guest-physical `gpa_base`.
    pub fn register_memory(
        &mut self,
        region_id: u64,
        gpa_base: u64,
        memfd: BorrowedFd<'_>,
        len: u64,
    ) -> Result<(), BusError> {
        let body = BusRegisterMemory {
            region_id,
            gpa_base,
            len,
        };
        match self.request(BUS_MSG_REGISTER_MEMORY, body.as_bytes(), &[memfd])? {
            Message::MemoryRegistered(r) if r.region_id == region_id => Ok(()),
            m => Err(BusError::Unexpected(m.msg_type())),
        }
    }

    /// Unregisters region `region_id`.
    pub fn unregister_memory(&mut self, region_id: u64) -> Result<(), BusError> {
        let body = BusRegionId { region_id };
        match self.request(BUS_MSG_UNREGISTER_MEMORY, body.as_bytes(), &[])? {
            Message::MemoryUnregistered(r) if r.region_id == region_id => Ok(()),
            m => Err(BusError::Unexpected(m.msg_type())),
        }
    }

    /// Reads one pending unsolicited message without blocking: `Ok(None)` if there is none.
    pub fn poll_event(&mut self) -> Result<Option<BusEvent>, BusError> {
        if self.closed {
            return Ok(Some(BusEvent::Closed));
        }
        match proto::recv(self.sock.as_fd(), true) {
            Ok(Some(Received { seq: 0, msg })) => self.unsolicited(msg).map(Some),
            Ok(Some(Received { msg, .. })) => Err(BusError::Unexpected(msg.msg_type())),
            Ok(None) => {
                self.closed = true;
                Ok(Some(BusEvent::Closed))
            }
            Err((_, BusError::WouldBlock)) => Ok(None),
            Err((_, e)) => Err(e),
        }
    }
}
