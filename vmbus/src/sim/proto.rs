//! Bus message codec: one message per `SOCK_SEQPACKET` datagram, fds with `SCM_RIGHTS`.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use blobring_abi::vmbus::*;
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::BusError;

/// Most fds the kernel passes in one message (`SCM_MAX_FD`); our control buffer holds that
/// many so that `MSG_CTRUNC` (which would leak the fds that did fit) cannot happen.
const SCM_MAX_FD: usize = 253;

/// A validated bus message.
#[derive(Debug)]
pub(crate) enum Message {
    Hello(BusHello),
    Offer(BusOffer),
    OpenChannel(BusChannelIndex),
    ChannelOpened(BusChannelOpened, [OwnedFd; 3]),
    RequestSubchannels(BusSubchannelCount),
    SubchannelsOffered(BusSubchannelCount),
    RegisterMemory(BusRegisterMemory, OwnedFd),
    MemoryRegistered(BusRegionId),
    UnregisterMemory(BusRegionId),
    MemoryUnregistered(BusRegionId),
    CloseChannel(BusChannelIndex),
    ChannelClosed(BusChannelIndex),
    Rescind(BusRescind),
    Error(BusError_),
}

/// Re-export under a name that does not clash with [`super::BusError`].
pub(crate) use blobring_abi::vmbus::BusError as BusError_;

impl Message {
    /// `BUS_MSG_*` of this message.
    pub(crate) fn msg_type(&self) -> u32 {
        match self {
            Self::Hello(_) => BUS_MSG_HELLO,
            Self::Offer(_) => BUS_MSG_OFFER,
            Self::OpenChannel(_) => BUS_MSG_OPEN_CHANNEL,
            Self::ChannelOpened(..) => BUS_MSG_CHANNEL_OPENED,
            Self::RequestSubchannels(_) => BUS_MSG_REQUEST_SUBCHANNELS,
            Self::SubchannelsOffered(_) => BUS_MSG_SUBCHANNELS_OFFERED,
            Self::RegisterMemory(..) => BUS_MSG_REGISTER_MEMORY,
            Self::MemoryRegistered(_) => BUS_MSG_MEMORY_REGISTERED,
            Self::UnregisterMemory(_) => BUS_MSG_UNREGISTER_MEMORY,
            Self::MemoryUnregistered(_) => BUS_MSG_MEMORY_UNREGISTERED,
            Self::CloseChannel(_) => BUS_MSG_CLOSE_CHANNEL,
            Self::ChannelClosed(_) => BUS_MSG_CHANNEL_CLOSED,
            Self::Rescind(_) => BUS_MSG_RESCIND,
            Self::Error(_) => BUS_MSG_ERROR,
        }
    }
}

/// A received message with the header's sequence number.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) seq: u32,
    pub(crate) msg: Message,
}

/// Expected body size and fd count of a message type; `None` for an unknown type.
fn shape(msg_type: u32) -> Option<(usize, usize)> {
    use core::mem::size_of;
    Some(match msg_type {
        BUS_MSG_HELLO => (size_of::<BusHello>(), 0),
        BUS_MSG_OFFER => (size_of::<BusOffer>(), 0),
        BUS_MSG_OPEN_CHANNEL | BUS_MSG_CLOSE_CHANNEL | BUS_MSG_CHANNEL_CLOSED => {
            (size_of::<BusChannelIndex>(), 0)
        }
        BUS_MSG_CHANNEL_OPENED => (size_of::<BusChannelOpened>(), 3),
        BUS_MSG_REQUEST_SUBCHANNELS | BUS_MSG_SUBCHANNELS_OFFERED => {
            (size_of::<BusSubchannelCount>(), 0)
        }
        BUS_MSG_REGISTER_MEMORY => (size_of::<BusRegisterMemory>(), 1),
        BUS_MSG_MEMORY_REGISTERED | BUS_MSG_UNREGISTER_MEMORY | BUS_MSG_MEMORY_UNREGISTERED => {
            (size_of::<BusRegionId>(), 0)
        }
        BUS_MSG_RESCIND => (size_of::<BusRescind>(), 0),
        BUS_MSG_ERROR => (size_of::<BusError_>(), 0),
        _ => return None,
    })
}

fn body<T: FromBytes + KnownLayout + Immutable>(b: &[u8]) -> T {
    // Sizes were checked against `shape` before this is called.
    T::read_from_bytes(b).unwrap_or_else(|_| T::new_zeroed())
}

/// Sends one message with `fds` attached.
pub(crate) fn send(
    sock: BorrowedFd<'_>,
    seq: u32,
    msg_type: u32,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), BusError> {
    let header = BusHeader {
        magic: BUS_MAGIC,
        msg_type,
        length: (size_of::<BusHeader>() + payload.len()) as u32,
        seq,
    };
    let iov = [IoSlice::new(header.as_bytes()), IoSlice::new(payload)];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(SCM_MAX_FD))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !cmsg.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(BusError::Malformed("too many fds for one message"));
    }
    let sent = rustix::net::sendmsg(sock, &iov, &mut cmsg, SendFlags::NOSIGNAL).map_err(|e| {
        BusError::Io {
            op: "sendmsg",
            source: e.into(),
        }
    })?;
    if sent != header.length as usize {
        return Err(BusError::Malformed("short send"));
    }
    Ok(())
}

/// Receives and validates one message. `Ok(None)` = the peer closed the socket.
/// `nonblocking` uses `MSG_DONTWAIT` (then `WouldBlock` is returned as [`BusError::WouldBlock`]).
/// A malformed message is consumed and reported as [`BusError::Malformed`] with its sequence
/// number (0 if unknown) so that the receiver can answer it.
pub(crate) fn recv(
    sock: BorrowedFd<'_>,
    nonblocking: bool,
) -> Result<Option<Received>, (u32, BusError)> {
    let mut buf = [0u8; BUS_MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(SCM_MAX_FD))];
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if nonblocking {
        flags |= RecvFlags::DONTWAIT;
    }
    let (bytes, msg_flags, fds) = {
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let msg =
            match rustix::net::recvmsg(sock, &mut [IoSliceMut::new(&mut buf)], &mut cmsg, flags) {
                Ok(m) => m,
                Err(Errno::AGAIN) => return Err((0, BusError::WouldBlock)),
                Err(e) => {
                    return Err((
                        0,
                        BusError::Io {
                            op: "recvmsg",
                            source: e.into(),
                        },
                    ));
                }
            };
        // Take ownership of every received fd at once (rustix hands them over as `OwnedFd`),
        // so that each is closed on every path. With room for SCM_MAX_FD fds MSG_CTRUNC cannot
        // come from SCM_RIGHTS; if it happens anyway the message is rejected below.
        let mut fds: Vec<OwnedFd> = Vec::new();
        for c in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = c {
                fds.extend(rights);
            }
        }
        (msg.bytes, msg.flags, fds)
    };
    if bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    // From here on any early return drops (closes) the received fds.
    let header = BusHeader::read_from_prefix(&buf[..bytes])
        .ok()
        .map(|(h, _)| h);
    let seq = header.map_or(0, |h| h.seq);
    let fail = |why| Err((seq, BusError::Malformed(why)));
    if msg_flags.contains(ReturnFlags::TRUNC) {
        return fail("message longer than the bus maximum");
    }
    if msg_flags.contains(ReturnFlags::CTRUNC) {
        return fail("control data truncated");
    }
    let Some(header) = header else {
        return fail("message shorter than the header");
    };
    if header.magic != BUS_MAGIC {
        return fail("bad magic");
    }
    if header.length as usize != bytes {
        return fail("header length differs from the datagram size");
    }
    let Some((body_len, nfds)) = shape(header.msg_type) else {
        return fail("unknown message type");
    };
    if bytes != size_of::<BusHeader>() + body_len {
        return fail("wrong body size for the message type");
    }
    if fds.len() != nfds {
        return fail("wrong number of file descriptors for the message type");
    }
    let b = &buf[size_of::<BusHeader>()..bytes];
    let mut fds = fds.into_iter();
    let mut fd = || fds.next().ok_or((seq, BusError::Malformed("missing fd")));
    let msg = match header.msg_type {
        BUS_MSG_HELLO => Message::Hello(body(b)),
        BUS_MSG_OFFER => Message::Offer(body(b)),
        BUS_MSG_OPEN_CHANNEL => Message::OpenChannel(body(b)),
        BUS_MSG_CHANNEL_OPENED => Message::ChannelOpened(body(b), [fd()?, fd()?, fd()?]),
        BUS_MSG_REQUEST_SUBCHANNELS => Message::RequestSubchannels(body(b)),
        BUS_MSG_SUBCHANNELS_OFFERED => Message::SubchannelsOffered(body(b)),
        BUS_MSG_REGISTER_MEMORY => Message::RegisterMemory(body(b), fd()?),
        BUS_MSG_MEMORY_REGISTERED => Message::MemoryRegistered(body(b)),
        BUS_MSG_UNREGISTER_MEMORY => Message::UnregisterMemory(body(b)),
        BUS_MSG_MEMORY_UNREGISTERED => Message::MemoryUnregistered(body(b)),
        BUS_MSG_CLOSE_CHANNEL => Message::CloseChannel(body(b)),
        BUS_MSG_CHANNEL_CLOSED => Message::ChannelClosed(body(b)),
        BUS_MSG_RESCIND => Message::Rescind(body(b)),
        BUS_MSG_ERROR => Message::Error(body(b)),
        _ => return fail("unknown message type"),
    };
    Ok(Some(Received { seq, msg }))
}

/// Builds a [`BusError_`] body with `message` truncated to fit.
pub(crate) fn error_body(request_type: u32, code: u32, message: &str) -> BusError_ {
    let mut e = BusError_ {
        request_type,
        code,
        message: [0; 120],
    };
    blobring_abi::set_nul_padded(&mut e.message, message);
    e
}

/// The text of a [`BusError_`] body (lossy, up to the first NUL).
pub(crate) fn error_text(e: &BusError_) -> String {
    blobring_abi::nul_padded_text(&e.message)
}
