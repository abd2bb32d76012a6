//! The `uio` transport as the daemon uses it: real Hyper-V through `uio_hv_generic`
//! (ARCHITECTURE.md §6, `reference/vmbus.md` §3–4).
//!
//! **Interrupt routing.** All channels of the device share one interrupt: the uio fd. Each
//! worker gets its *own* open file of the device ([`UioDevice::open_listener`]): uio counts
//! events per open file, so every interrupt wakes every worker's multishot poll, and a worker
//! reading its handle's count never consumes another worker's wakeup. A woken worker drains
//! the channels it owns (as on `sim`); before sleeping it clears each RX `interrupt_mask`
//! and, when the kernel masks on interrupt ([`InterruptMode::KernelMasks`], detected from the
//! driver's behaviour when the device is opened, not from the kernel version), writes `1` to
//! its handle to re-enable the interrupt, then re-checks its rings (packets that arrived
//! meanwhile were not signalled). No dispatcher thread: a spurious wakeup of a worker whose
//! channels are idle costs one empty ring check.
//!
//! **Rescind.** `read` of a uio fd fails with `EIO` once the host rescinded the device; the
//! worker reports the channel broken, the control thread fails every request in flight with
//! `ENODEV` (as on `sim`) and reopens the device with backoff.
//!
//! **Request size.** A blob request's GPA-direct packet must fit the channel's TX ring
//! ([`UioChannel::max_request_pages`]); a request whose three buffers need more pages gets
//! `-E2BIG` (the SDK splits).
//!
//! **Memory.** No registration with the host: client regions are hugetlb-backed, pre-faulted
//! and locked, and their guest PFNs read once from `/proc/self/pagemap`
//! ([`blobring_vmbus::guest_phys::PagemapPfns`]).
//!
//! [`UioDevice::open_listener`]: blobring_vmbus::uio::UioDevice::open_listener

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use blobring_vmbus::uio::{InterruptMode, UioChannel, UioEvents};
use blobring_vmbus::{Channel, ChannelError, Packet, Reply};

use crate::worker::WorkerChannel;

/// The device's channels spread over the workers ([`crate::spread_channels`], as on `sim`),
/// each wrapped with its worker's own listener (`listeners[w]` for worker `w`).
pub fn worker_channels(
    chans: Vec<UioChannel>,
    listeners: &[Arc<dyn UioEvents>],
    mode: InterruptMode,
) -> Vec<Vec<Box<dyn WorkerChannel>>> {
    crate::spread_channels(chans, listeners.len(), |w, ch| {
        Box::new(UioWorkerChannel::new(ch, listeners[w].clone(), mode)) as Box<dyn WorkerChannel>
    })
}

/// A [`UioChannel`] driven by one worker through that worker's own uio listener.
#[derive(Debug)]
pub struct UioWorkerChannel {
    ch: UioChannel,
    listener: Arc<dyn UioEvents>,
    rearm_write: bool,
    max_pages: u32,
}

impl UioWorkerChannel {
    /// Wraps `ch` for a worker whose uio handle is `listener`.
    pub fn new(ch: UioChannel, listener: Arc<dyn UioEvents>, mode: InterruptMode) -> Self {
        let max_pages = ch.max_request_pages();
        Self {
            ch,
            listener,
            rearm_write: mode.rearm_needs_write(),
            max_pages,
        }
    }
}

impl AsFd for UioWorkerChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl WorkerChannel for UioWorkerChannel {
    fn index(&self) -> u32 {
        self.ch.subchannel_id()
    }
    fn recv<'b>(&mut self, buf: &'b mut Vec<u8>) -> Result<Option<Packet<'b>>, ChannelError> {
        Channel::recv(&mut self.ch, buf)
    }
    fn recv_reply<'b>(&mut self, buf: &'b mut Vec<u8>) -> Result<Option<Reply<'b>>, ChannelError> {
        Channel::recv_reply(&mut self.ch, buf)
    }
    fn send_uncommitted(&mut self, packet: &[u8]) -> Result<(), ChannelError> {
        Channel::send_uncommitted(&mut self.ch, packet)
    }
    fn flush(&mut self) -> Result<(), ChannelError> {
        Channel::flush(&mut self.ch)
    }
    fn release(&mut self) -> Result<(), ChannelError> {
        Channel::release(&mut self.ch)
    }
    fn arm(&mut self) -> Result<bool, ChannelError> {
        let mut pending = Channel::arm(&mut self.ch)?;
        if self.rearm_write {
            self.listener.irqcontrol(1).map_err(ChannelError::Signal)?;
            // The write may have cleared masks again; packets that came meanwhile were not
            // signalled.
            pending |= self.ch.incoming().has_data()?;
        }
        Ok(pending)
    }
    fn wait_for_space(&mut self, needed: u32) -> Result<bool, ChannelError> {
        Channel::wait_for_space(&mut self.ch, needed)
    }
    fn clear_wakeups(&self) -> std::io::Result<u64> {
        self.listener.drain()
    }
    fn max_request_pages(&self) -> Option<u32> {
        Some(self.max_pages)
    }
}
