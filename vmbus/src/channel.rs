//! The channel abstraction shared by the transports (`sim`, later `uio`).
//!
//! A channel is a pair of rings — one we produce on, one we consume — plus a way to signal the
//! peer and an fd that becomes readable when the peer signals us (the reactor polls it). The
//! trait's provided methods implement the signalling discipline of `reference/vmbus.md` §1.6,
//! §1.7 and §3.1 once, so a transport only supplies its [`ChannelRings`], `signal` and the fd.
//!
//! Receiving: [`Channel::recv`] copies and decodes one packet; the space is released to the
//! peer by [`Channel::release`] (batch several `recv`s before one `release`). Before sleeping
//! on the fd, call [`Channel::arm`]: it clears `interrupt_mask` and reports packets that
//! arrived meanwhile (they were not signalled).

use std::io;
use std::os::fd::AsFd;

use blobring_shm::SharedMemory;

use crate::packet::{Packet, Reply, decode, decode_reply};
use crate::ring::{Corruption, IncomingRing, OutgoingRing, ReadError, WriteError};

/// A channel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The outgoing ring has no room now; retry after the peer signals (see
    /// [`Channel::wait_for_space`]).
    #[error("outgoing ring full: {needed} bytes needed")]
    Full {
        /// Bytes the packet needs (the `pending_send_sz` to set).
        needed: u32,
    },
    /// The packet can never fit the ring.
    #[error("packet of {len} bytes exceeds the ring maximum of {max}")]
    TooLarge {
        /// Bytes.
        len: u64,
        /// Maximum.
        max: u32,
    },
    /// The peer broke the ring or packet format: stop using the channel.
    #[error("the peer corrupted the channel: {0}")]
    Corrupt(#[from] Corruption),
    /// Signalling the peer or draining our wakeups failed.
    #[error("channel signalling failed: {0}")]
    Signal(#[source] io::Error),
}

impl ChannelError {
    /// True if the peer is at fault (the channel should be torn down).
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, Self::Corrupt(_))
    }
}

impl From<WriteError> for ChannelError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Full { needed, .. } => Self::Full { needed },
            WriteError::TooLarge { len, max } => Self::TooLarge { len, max },
            WriteError::Corrupt(c) => Self::Corrupt(c),
        }
    }
}

/// The two rings of a channel, as a transport holds them.
pub struct ChannelRings<M> {
    /// The ring we produce on.
    pub outgoing: OutgoingRing<M>,
    /// The ring we consume.
    pub incoming: IncomingRing<M>,
}

/// Shows the size of one ring (header and data area; both rings have the same), not the
/// memory behind them.
impl<M: SharedMemory> std::fmt::Debug for ChannelRings<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ring = &self.outgoing;
        f.debug_struct("ChannelRings")
            .field(
                "ring_size",
                &(ring.header_size() + u64::from(ring.data_size())),
            )
            .finish_non_exhaustive()
    }
}

/// One VMBus channel as seen by one side. `AsFd` gives the fd that becomes readable when the
/// peer signals us (sim: our incoming eventfd; uio: the uio fd).
pub trait Channel: AsFd {
    /// Memory behind the rings.
    type Mem: SharedMemory;

    /// The channel's two rings.
    fn rings(&mut self) -> &mut ChannelRings<Self::Mem>;
    /// The ring we produce on.
    fn outgoing(&mut self) -> &mut OutgoingRing<Self::Mem> {
        &mut self.rings().outgoing
    }
    /// The ring we consume.
    fn incoming(&mut self) -> &mut IncomingRing<Self::Mem> {
        &mut self.rings().incoming
    }
    /// Signals the peer once (eventfd write, or uio `write(1)`).
    fn signal(&self) -> io::Result<()>;
    /// Consumes pending wakeups on our fd without blocking; returns how many were pending.
    fn clear_wakeups(&self) -> io::Result<u64>;

    /// Writes one encoded packet (see [`crate::packet`]) and signals the peer if the ring went
    /// from empty to non-empty.
    fn send(&mut self, packet: &[u8]) -> Result<(), ChannelError> {
        if self.outgoing().write(&[packet])? {
            self.signal().map_err(ChannelError::Signal)?;
        }
        Ok(())
    }

    /// Writes one packet without publishing it; [`flush`](Self::flush) publishes the batch.
    fn send_uncommitted(&mut self, packet: &[u8]) -> Result<(), ChannelError> {
        Ok(self.outgoing().write_uncommitted(&[packet])?)
    }

    /// Publishes packets written with [`send_uncommitted`](Self::send_uncommitted), signalling
    /// the peer if needed.
    fn flush(&mut self) -> Result<(), ChannelError> {
        if self.outgoing().commit_write()? {
            self.signal().map_err(ChannelError::Signal)?;
        }
        Ok(())
    }

    /// After [`ChannelError::Full`]: asks the peer to signal once more than `needed` bytes are
    /// free. Returns `true` if the space is already there (retry now, do not sleep).
    fn wait_for_space(&mut self, needed: u32) -> Result<bool, ChannelError> {
        Ok(self.outgoing().set_pending_send_size(needed)?)
    }

    /// Copies the next packet into `buf` and decodes it; `None` if the ring is empty. The ring
    /// space stays reserved until [`release`](Self::release).
    fn recv<'b>(&mut self, buf: &'b mut Vec<u8>) -> Result<Option<Packet<'b>>, ChannelError> {
        match self.incoming().read_packet(buf) {
            Ok(_) => Ok(Some(decode(buf)?)),
            Err(ReadError::Empty) => Ok(None),
            Err(ReadError::Corrupt(c)) => Err(c.into()),
        }
    }

    /// Like [`recv`](Self::recv), for the guest reading the host's replies: checks framing only
    /// and accepts any packet type, as the `hv_azure_blob` driver does ([`Reply`]). The ring
    /// space stays reserved until [`release`](Self::release), which the caller must call for
    /// every packet read, whatever it held.
    fn recv_reply<'b>(&mut self, buf: &'b mut Vec<u8>) -> Result<Option<Reply<'b>>, ChannelError> {
        match self.incoming().read_packet(buf) {
            Ok(_) => Ok(Some(decode_reply(buf)?)),
            Err(ReadError::Empty) => Ok(None),
            Err(ReadError::Corrupt(c)) => Err(c.into()),
        }
    }

    /// Releases the space of the packets received so far, signalling the peer if it waits for
    /// that space (`pending_send_sz`).
    fn release(&mut self) -> Result<(), ChannelError> {
        if self.incoming().commit_read()? {
            self.signal().map_err(ChannelError::Signal)?;
        }
        Ok(())
    }

    /// Before sleeping on the fd: clears `interrupt_mask` and returns `true` if packets are
    /// already waiting (then do not sleep; they were not signalled).
    fn arm(&mut self) -> Result<bool, ChannelError> {
        Ok(self.incoming().arm()?)
    }

    /// While draining: sets `interrupt_mask` so the peer does not signal packets we will see
    /// anyway (§3.1).
    fn mask(&mut self) -> Result<(), ChannelError> {
        Ok(self.incoming().set_interrupt_mask(true)?)
    }
}
