//! Host (emulated VSP) side of the sim bus: listen, offer the device, answer bus requests,
//! create channels, keep the guest's memory table, rescind.
//!
//! The `blobring-host` binary runs one [`HostSession`] per guest connection and loops on
//! [`HostSession::next_event`]: every request is validated and answered inside the session;
//! the events it returns tell the binary what changed (a channel to hand to a VSP worker, a
//! channel closed, the guest gone). Garbage from the guest is answered with `ERROR` and
//! reported as [`HostEvent::Rejected`]; the session goes on.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use blobring_abi::vmbus::*;
use blobring_shm::{Mapping, Region, SharedMemory, Window};
use uuid::Uuid;
use zerocopy::IntoBytes;

use super::proto::{self, Message, Received};
use super::{BusError, Side, SimChannel, check_ring_size, io_err, new_eventfd, seqpacket_socket};
use crate::guest_memory::GuestMemory;
use crate::ring::init_ring;

/// The guest's registered memory, shared between the session and the VSP workers.
pub type SharedGuestMemory = Arc<RwLock<GuestMemory<Mapping>>>;

/// How long the host waits to hand a reply to a guest that does not read its socket.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// What the host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostConfig {
    /// Device instance GUID.
    pub instance_guid: Uuid,
    /// Channels offered: primary + up to `max_channels - 1` subchannels (1..=256).
    pub max_channels: u32,
    /// Bytes of each ring (`S`): a multiple of 4096 in [8 KiB, 64 MiB].
    pub ring_size: u32,
    /// Most bytes of guest memory registered at once. The host maps (and pre-faults) every
    /// registered region, so a guest must not be able to make it map unbounded memory.
    pub max_guest_memory: u64,
}

/// Default [`HostConfig::max_guest_memory`]: 64 GiB.
pub const DEFAULT_MAX_GUEST_MEMORY: u64 = 64 << 30;

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            instance_guid: Uuid::new_v4(),
            max_channels: 8,
            ring_size: super::DEFAULT_RING_SIZE,
            max_guest_memory: DEFAULT_MAX_GUEST_MEMORY,
        }
    }
}

/// Largest `max_channels` a host may offer.
pub const MAX_CHANNELS: u32 = 256;

/// A listening bus socket. The socket file is removed on drop.
#[derive(Debug)]
pub struct BusListener {
    sock: OwnedFd,
    path: PathBuf,
}

impl BusListener {
    /// Binds and listens at `path`, replacing a stale socket file (only a socket) there.
    pub fn bind(path: &Path) -> Result<Self, BusError> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                let _ = std::fs::remove_file(path);
            }
        }
        let (sock, addr) = seqpacket_socket(path)?;
        rustix::net::bind(&sock, &addr).map_err(io_err("bind"))?;
        rustix::net::listen(&sock, 16).map_err(io_err("listen"))?;
        Ok(Self {
            sock,
            path: path.to_owned(),
        })
    }

    /// Waits for a guest and returns its connection.
    pub fn accept(&self) -> Result<OwnedFd, BusError> {
        rustix::net::accept_with(&self.sock, rustix::net::SocketFlags::CLOEXEC)
            .map_err(io_err("accept"))
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsFd for BusListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl Drop for BusListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a bus message changed.
#[derive(Debug)]
pub enum HostEvent {
    /// The guest said hello and got the offer.
    Hello,
    /// A channel was opened: hand it to a VSP worker.
    ChannelOpened(SimChannel),
    /// The guest closed channel `index`: its worker should stop.
    ChannelClosed(u32),
    /// Subchannels `1..=n` are now offered.
    SubchannelsOffered(u32),
    /// A memory region was registered.
    MemoryRegistered {
        /// Region id.
        region_id: u64,
        /// Guest-physical base.
        gpa_base: u64,
        /// Bytes.
        len: u64,
    },
    /// A memory region was unregistered.
    MemoryUnregistered {
        /// Region id.
        region_id: u64,
    },
    /// A request was refused (already answered with `ERROR`).
    Rejected(BusError),
    /// The guest hung up: stop every channel of this session.
    Disconnected,
}

/// One guest's bus connection on the host.
#[derive(Debug)]
pub struct HostSession {
    sock: OwnedFd,
    config: HostConfig,
    greeted: bool,
    subchannels: u32,
    open: Vec<bool>,
    memory: SharedGuestMemory,
    rescinded: bool,
}

impl AsFd for HostSession {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

fn refuse(code: u32, message: String) -> BusError {
    BusError::Refused { code, message }
}

impl HostSession {
    /// A session on an accepted connection.
    pub fn new(sock: OwnedFd, config: HostConfig) -> Result<Self, BusError> {
        check_ring_size(config.ring_size)?;
        if !(1..=MAX_CHANNELS).contains(&config.max_channels) {
            return Err(BusError::Incompatible(format!(
                "max_channels {} not in 1..={MAX_CHANNELS}",
                config.max_channels
            )));
        }
        rustix::net::sockopt::set_socket_timeout(
            &sock,
            rustix::net::sockopt::Timeout::Send,
            Some(SEND_TIMEOUT),
        )
        .map_err(io_err("SO_SNDTIMEO"))?;
        Ok(Self {
            sock,
            config,
            greeted: false,
            subchannels: 0,
            open: vec![false; config.max_channels as usize],
            memory: Arc::default(),
            rescinded: false,
        })
    }

    /// The guest's registered memory (for VSP workers).
    pub fn memory(&self) -> SharedGuestMemory {
        self.memory.clone()
    }

    /// The configuration offered.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// True once [`rescind`](Self::rescind) was called.
    pub fn is_rescinded(&self) -> bool {
        self.rescinded
    }

    /// Tells the guest the device is gone (`RESCIND`, unsolicited). Later requests are refused
    /// with `ERROR(RESCINDED)`.
    pub fn rescind(&mut self, reason: u32) -> Result<(), BusError> {
        self.rescinded = true;
        self.open.iter_mut().for_each(|o| *o = false);
        let body = BusRescind {
            reason,
            reserved: 0,
        };
        proto::send(self.sock.as_fd(), 0, BUS_MSG_RESCIND, body.as_bytes(), &[])
    }

    /// Waits for the next guest message, handles and answers it. Errors are local I/O
    /// failures only; guest mistakes come back as [`HostEvent::Rejected`].
    pub fn next_event(&mut self) -> Result<HostEvent, BusError> {
        self.step(false)
            .map(|e| e.unwrap_or(HostEvent::Disconnected))
    }

    /// As [`next_event`](Self::next_event) but returns `Ok(None)` at once if no message is
    /// pending (for a poll loop on [`AsFd`]).
    pub fn try_next_event(&mut self) -> Result<Option<HostEvent>, BusError> {
        self.step(true)
    }

    fn step(&mut self, nonblocking: bool) -> Result<Option<HostEvent>, BusError> {
        match self.step_inner(nonblocking) {
            // The guest hung up while we answered it: that is a disconnect, not a host fault.
            Err(BusError::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                Ok(Some(HostEvent::Disconnected))
            }
            other => other,
        }
    }

    fn step_inner(&mut self, nonblocking: bool) -> Result<Option<HostEvent>, BusError> {
        let (seq, msg) = match proto::recv(self.sock.as_fd(), nonblocking) {
            Ok(Some(Received { seq, msg })) => (seq, msg),
            Ok(None) => return Ok(Some(HostEvent::Disconnected)),
            Err((_, BusError::WouldBlock)) => return Ok(None),
            Err((seq, BusError::Malformed(why))) => {
                tracing::debug!(why, "malformed bus message from guest");
                self.send_error(seq, 0, BUS_ERR_MALFORMED, why)?;
                return Ok(Some(HostEvent::Rejected(BusError::Malformed(why))));
            }
            Err((_, e)) => return Err(e),
        };
        let request_type = msg.msg_type();
        match self.handle(seq, msg) {
            Ok(ev) => Ok(Some(ev)),
            Err(BusError::Refused { code, message }) => {
                tracing::debug!(code, %message, "refused bus request");
                self.send_error(seq, request_type, code, &message)?;
                Ok(Some(HostEvent::Rejected(BusError::Refused {
                    code,
                    message,
                })))
            }
            Err(e) => Err(e),
        }
    }

    fn send_error(
        &self,
        seq: u32,
        request_type: u32,
        code: u32,
        message: &str,
    ) -> Result<(), BusError> {
        let body = proto::error_body(request_type, code, message);
        proto::send(self.sock.as_fd(), seq, BUS_MSG_ERROR, body.as_bytes(), &[])
    }

    fn reply(
        &self,
        seq: u32,
        msg_type: u32,
        body: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), BusError> {
        proto::send(self.sock.as_fd(), seq, msg_type, body, fds)
    }

    fn handle(&mut self, seq: u32, msg: Message) -> Result<HostEvent, BusError> {
        if seq == 0 {
            return Err(refuse(
                BUS_ERR_MALFORMED,
                "requests need a non-zero seq".into(),
            ));
        }
        if let Message::Hello(h) = &msg {
            if h.version != BUS_VERSION {
                return Err(refuse(
                    BUS_ERR_VERSION,
                    format!("bus version {} not supported", h.version),
                ));
            }
            if self.rescinded {
                return Err(refuse(BUS_ERR_RESCINDED, "the device was rescinded".into()));
            }
            self.greeted = true;
            let offer = BusOffer {
                class_guid: AZ_BLOB_CLASS_GUID,
                instance_guid: self.config.instance_guid.to_bytes_le(),
                max_channels: self.config.max_channels,
                ring_size: self.config.ring_size,
                version: BUS_VERSION,
                reserved: 0,
            };
            self.reply(seq, BUS_MSG_OFFER, offer.as_bytes(), &[])?;
            return Ok(HostEvent::Hello);
        }
        if !self.greeted {
            return Err(refuse(BUS_ERR_UNEXPECTED, "HELLO must come first".into()));
        }
        if self.rescinded {
            return Err(refuse(BUS_ERR_RESCINDED, "the device was rescinded".into()));
        }
        match msg {
            Message::OpenChannel(c) => self.open_channel(seq, c.index),
            Message::CloseChannel(c) => {
                let Some(open) = self.open.get_mut(c.index as usize).filter(|o| **o) else {
                    return Err(refuse(
                        BUS_ERR_NO_CHANNEL,
                        format!("channel {} is not open", c.index),
                    ));
                };
                *open = false;
                let body = BusChannelIndex {
                    index: c.index,
                    reserved: 0,
                };
                self.reply(seq, BUS_MSG_CHANNEL_CLOSED, body.as_bytes(), &[])?;
                Ok(HostEvent::ChannelClosed(c.index))
            }
            Message::RequestSubchannels(r) => {
                let granted = r
                    .count
                    .min(self.config.max_channels - 1)
                    .max(self.subchannels);
                self.subchannels = granted;
                let body = BusSubchannelCount {
                    count: granted,
                    reserved: 0,
                };
                self.reply(seq, BUS_MSG_SUBCHANNELS_OFFERED, body.as_bytes(), &[])?;
                Ok(HostEvent::SubchannelsOffered(granted))
            }
            Message::RegisterMemory(r, fd) => self.register_memory(seq, r, fd),
            Message::UnregisterMemory(r) => {
                self.memory
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .unregister(r.region_id)
                    .map_err(|e| refuse(BUS_ERR_BAD_REGION, e.to_string()))?;
                self.reply(seq, BUS_MSG_MEMORY_UNREGISTERED, r.as_bytes(), &[])?;
                Ok(HostEvent::MemoryUnregistered {
                    region_id: r.region_id,
                })
            }
            other => Err(refuse(
                BUS_ERR_UNEXPECTED,
                format!("message type {} is not a guest request", other.msg_type()),
            )),
        }
    }

    /// `REGISTER_MEMORY`: maps the guest's sealed memfd (checked by `Mapping::map_peer_lazy`)
    /// and adds it to the guest-memory table, within the host's limit. The mapping is not
    /// pre-faulted: registering costs the host the same for any length (a client that connects
    /// and leaves does not make it map megabytes), and a page is mapped the first time a
    /// request's data lands in it.
    fn register_memory(
        &mut self,
        seq: u32,
        r: BusRegisterMemory,
        fd: OwnedFd,
    ) -> Result<HostEvent, BusError> {
        let bad = |e: String| refuse(BUS_ERR_BAD_REGION, e);
        if r.len == 0
            || !r.len.is_multiple_of(HV_PAGE_SIZE)
            || !r.gpa_base.is_multiple_of(HV_PAGE_SIZE)
        {
            return Err(bad(format!(
                "region {}: base {:#x} and length {:#x} must be non-zero multiples of 4096",
                r.region_id, r.gpa_base, r.len
            )));
        }
        let registered = self
            .memory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .bytes();
        if r.len > self.config.max_guest_memory.saturating_sub(registered) {
            return Err(bad(format!(
                "region {}: {} more bytes would exceed the host's limit of {} bytes of \
                 registered guest memory",
                r.region_id, r.len, self.config.max_guest_memory
            )));
        }
        let map = Mapping::map_peer_lazy(fd.as_fd(), r.len).map_err(|e| bad(e.to_string()))?;
        drop(fd);
        self.memory
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .register(r.region_id, r.gpa_base, r.len, Arc::new(map))
            .map_err(|e| bad(e.to_string()))?;
        let body = BusRegionId {
            region_id: r.region_id,
        };
        self.reply(seq, BUS_MSG_MEMORY_REGISTERED, body.as_bytes(), &[])?;
        Ok(HostEvent::MemoryRegistered {
            region_id: r.region_id,
            gpa_base: r.gpa_base,
            len: r.len,
        })
    }

    fn open_channel(&mut self, seq: u32, index: u32) -> Result<HostEvent, BusError> {
        if index > self.subchannels {
            return Err(refuse(
                BUS_ERR_NO_CHANNEL,
                format!("channel {index} is not offered"),
            ));
        }
        if self.open[index as usize] {
            return Err(refuse(
                BUS_ERR_BUSY,
                format!("channel {index} is already open"),
            ));
        }
        let internal = |e: String| refuse(BUS_ERR_INTERNAL, e);
        let (channel, memfd, g2h, h2g) =
            create_channel(index, self.config.ring_size).map_err(|e| internal(e.to_string()))?;
        let body = BusChannelOpened {
            index,
            ring_size: self.config.ring_size,
        };
        self.reply(
            seq,
            BUS_MSG_CHANNEL_OPENED,
            body.as_bytes(),
            &[memfd.as_fd(), g2h.as_fd(), h2g.as_fd()],
        )?;
        self.open[index as usize] = true;
        Ok(HostEvent::ChannelOpened(channel))
    }
}

/// Creates a channel's memory (two initialised rings in one sealed memfd) and its two
/// eventfds. Returns the host side and the fds to send: memfd, guest → host, host → guest.
pub fn create_channel(
    index: u32,
    ring_size: u32,
) -> Result<(SimChannel, OwnedFd, OwnedFd, OwnedFd), BusError> {
    check_ring_size(ring_size)?;
    let s = u64::from(ring_size);
    let region = Arc::new(Region::create(&format!("blobring-vmbus-ch{index}"), 2 * s)?);
    let memfd = region.fd().try_clone_to_owned().map_err(|e| BusError::Io {
        op: "dup",
        source: e,
    })?;
    let mem: Arc<dyn SharedMemory> = region;
    for off in [0, s] {
        init_ring(&Window::new(mem.clone(), off, s).map_err(crate::ring::RingError::from)?)?;
    }
    let g2h = new_eventfd()?;
    let h2g = new_eventfd()?;
    let dup = |fd: &OwnedFd| {
        fd.try_clone().map_err(|e| BusError::Io {
            op: "dup",
            source: e,
        })
    };
    let channel = SimChannel::new(index, Side::Host, mem, ring_size, dup(&g2h)?, dup(&h2g)?)?;
    Ok((channel, memfd, g2h, h2g))
}
