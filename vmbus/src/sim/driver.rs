//! A small guest-side Azure Blob driver over the `sim` bus: for tests, benchmarks and tools
//! that talk to `blobring-host` without the daemon (and as a worked example for the daemon).
//!
//! [`BlobDriver::connect`] says `HELLO`, asks for subchannels, opens the primary and the
//! subchannels, creates one sealed memfd ([`Region`]) and registers it as guest memory at
//! [`DriverConfig::gpa_base`]. Buffers are carved from it with an [`Arena`]; because the region
//! is contiguous in guest-physical space, a buffer's page list is
//! [`contiguous_pfns`] of its guest-physical address.
//!
//! [`BlobDriver::submit`] copies the request head and body into fresh buffers, sends the
//! GPA-direct request on the chosen channel and returns its transaction id (never 0).
//! [`BlobDriver::poll_completions`] collects the completions that arrived, in arrival order,
//! with the response head and body copied out of guest memory (bounded by the buffers we
//! lent: a completion claiming more is reported as [`DriverError::BadCompletion`]), and frees
//! their buffers. [`BlobDriver::call`] is submit + wait.
//!
//! **Trusts** the host for liveness only: completions naming a transaction id we did not lend
//! are errors, lengths are checked against our buffers, every ring index is validated by the
//! ring halves.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use blobring_abi::vmbus::{AzBlobVspResponse, HV_PAGE_SIZE};
use blobring_shm::{Arena, Region, SharedMemory};

use super::guest::BusClient;
use super::{BusError, SimChannel};
use crate::blob::{
    BlobError, BlobRequestDesc, BufferPages, contiguous_pfns, encode_blob_request,
    parse_blob_completion,
};
use crate::channel::{Channel, ChannelError};

/// How a [`BlobDriver`] sets up its guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverConfig {
    /// Bytes of the guest-memory memfd (a multiple of 4096).
    pub region_len: u64,
    /// Guest-physical address it is registered at (a multiple of 4096).
    pub gpa_base: u64,
    /// Region id used on the bus.
    pub region_id: u64,
    /// Request deadline written into each request (`timeout_ms`).
    pub timeout_ms: u32,
    /// How long a blocked submit (ring full) or [`BlobDriver::call`] waits.
    pub wait_limit: Duration,
    /// Copy response bodies out of guest memory into [`Completion::body`] (turn off to
    /// measure the host alone: the body is then left empty and `vsp.length` says its size).
    pub copy_body: bool,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            region_len: 64 << 20,
            gpa_base: 1 << 32,
            region_id: 1,
            timeout_ms: 30_000,
            wait_limit: Duration::from_secs(30),
            copy_body: true,
        }
    }
}

/// A driver operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The bus refused or failed.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// A channel failed.
    #[error("channel: {0}")]
    Channel(#[from] ChannelError),
    /// The request could not be encoded.
    #[error("request: {0}")]
    Blob(#[from] BlobError),
    /// Creating the guest memory failed.
    #[error("guest memory: {0}")]
    Memory(#[from] blobring_shm::RegionError),
    /// Guest memory access failed (a bug: buffers are ours).
    #[error("guest memory access: {0}")]
    Access(#[from] blobring_shm::AccessError),
    /// No room for the buffers; wait for completions or use a larger region.
    #[error("guest memory full: {0}")]
    OutOfMemory(#[from] blobring_shm::ArenaError),
    /// No such channel.
    #[error("channel {0} is not open (the driver has {1})")]
    NoChannel(usize, usize),
    /// The host sent a completion we cannot accept.
    #[error("bad completion from the host: {0}")]
    BadCompletion(String),
    /// Nothing completed in time.
    #[error("no completion within {0:?}")]
    Timeout(Duration),
}

/// Buffers lent to the host for one request.
#[derive(Debug)]
struct Lent {
    request: u64,
    response: (u64, u64),
    data: Option<(u64, u64)>,
}

/// One completed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The transaction id [`BlobDriver::submit`] returned.
    pub trans_id: u64,
    /// The host's answer (`error` 0: executed; see the host's VSP codes).
    pub vsp: AzBlobVspResponse,
    /// The response head (`vsp.response_len` bytes of the response buffer, if `error == 0`).
    pub response_head: Vec<u8>,
    /// The body (`vsp.length` bytes of the data buffer, if `error == 0` and
    /// [`DriverConfig::copy_body`]).
    pub body: Vec<u8>,
}

/// A guest driver for the Azure Blob device over the `sim` bus. See the module docs.
pub struct BlobDriver {
    bus: BusClient,
    channels: Vec<SimChannel>,
    region: Region,
    arena: Arena,
    cfg: DriverConfig,
    lent: HashMap<u64, Lent>,
    next_id: u64,
    ready: VecDeque<Completion>,
    pkt: Vec<u8>,
    pfns: Vec<u64>,
    rx: Vec<u8>,
}

impl std::fmt::Debug for BlobDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobDriver")
            .field("channels", &self.channels.len())
            .field("in_flight", &self.lent.len())
            .finish_non_exhaustive()
    }
}

impl BlobDriver {
    /// Connects to the host at `host_socket` and opens `channels` channels (primary +
    /// `channels - 1` subchannels, fewer if the host offers fewer) with
    /// [`DriverConfig::default`].
    pub fn connect(host_socket: &Path, channels: u32) -> Result<Self, DriverError> {
        Self::connect_with(host_socket, channels, DriverConfig::default())
    }

    /// [`connect`](Self::connect) with a configuration.
    pub fn connect_with(
        host_socket: &Path,
        channels: u32,
        cfg: DriverConfig,
    ) -> Result<Self, DriverError> {
        let mut bus = BusClient::connect(host_socket)?;
        let want = channels.clamp(1, bus.offer().max_channels);
        let subs = if want > 1 {
            bus.request_subchannels(want - 1)?
        } else {
            0
        };
        let mut chans = Vec::new();
        for i in 0..=subs {
            chans.push(bus.open_channel(i)?);
        }
        let region = Region::create("blobring-driver", cfg.region_len)?;
        bus.register_memory(cfg.region_id, cfg.gpa_base, region.fd(), region.len())?;
        let arena = Arena::new(0, region.len())?;
        Ok(Self {
            bus,
            channels: chans,
            region,
            arena,
            cfg,
            lent: HashMap::new(),
            next_id: 1,
            ready: VecDeque::new(),
            pkt: Vec::new(),
            pfns: Vec::new(),
            rx: Vec::new(),
        })
    }

    /// Channels open.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Requests submitted and not completed.
    pub fn in_flight(&self) -> usize {
        self.lent.len()
    }

    /// The bus connection (for [`BusClient::poll_event`] and [`BusClient::is_rescinded`]).
    pub fn bus(&mut self) -> &mut BusClient {
        &mut self.bus
    }

    /// The guest memory (for tests that build their own requests).
    pub fn memory(&self) -> &Region {
        &self.region
    }

    /// The configuration.
    pub fn config(&self) -> &DriverConfig {
        &self.cfg
    }

    fn alloc(&mut self, len: u64, align: u64) -> Result<u64, DriverError> {
        Ok(self.arena.try_alloc(len.max(1), align)?.offset)
    }

    fn pages(&self, offset: u64, len: u32) -> Vec<u64> {
        contiguous_pfns(self.cfg.gpa_base + offset, len).collect()
    }

    fn next_trans_id(&mut self) -> u64 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if id != 0 && !self.lent.contains_key(&id) {
                return id;
            }
        }
    }

    /// Submits a request on `channel`: `request_head` (non-empty) and `body` are copied into
    /// guest memory; the host gets a `response_cap`-byte response buffer (≥ 1) and a data
    /// buffer of `max(data_cap, body.len())` bytes. Returns the transaction id (never 0).
    pub fn submit(
        &mut self,
        channel: usize,
        request_head: &[u8],
        body: &[u8],
        response_cap: u32,
        data_cap: u32,
    ) -> Result<u64, DriverError> {
        if channel >= self.channels.len() {
            return Err(DriverError::NoChannel(channel, self.channels.len()));
        }
        let data_len = data_cap.max(u32::try_from(body.len()).unwrap_or(u32::MAX));
        let head_len = u32::try_from(request_head.len()).unwrap_or(u32::MAX);
        let rq = self.alloc(request_head.len() as u64, 64)?;
        let rs = match self.alloc(response_cap.into(), 64) {
            Ok(o) => o,
            Err(e) => {
                let _ = self.arena.free(rq);
                return Err(e);
            }
        };
        let data = if data_len > 0 {
            match self.alloc(data_len.into(), HV_PAGE_SIZE) {
                Ok(o) => Some(o),
                Err(e) => {
                    let _ = self.arena.free(rq);
                    let _ = self.arena.free(rs);
                    return Err(e);
                }
            }
        } else {
            None
        };
        self.region.mapping().write(rq, request_head)?;
        if let Some(d) = data {
            self.region.mapping().write(d, body)?;
        }
        let (rq_p, rs_p) = (self.pages(rq, head_len), self.pages(rs, response_cap));
        let d_p = data.map(|d| self.pages(d, data_len)).unwrap_or_default();
        let page_off = |o: u64| ((self.cfg.gpa_base + o) % HV_PAGE_SIZE) as u32;
        let desc = BlobRequestDesc {
            timeout_ms: self.cfg.timeout_ms,
            transaction_guid: [0; 16],
            data: data.map(|d| BufferPages {
                offset: page_off(d),
                len: data_len,
                pfns: &d_p,
            }),
            data_valid: body.len() as u32,
            request: BufferPages {
                offset: page_off(rq),
                len: head_len,
                pfns: &rq_p,
            },
            response: BufferPages {
                offset: page_off(rs),
                len: response_cap,
                pfns: &rs_p,
            },
        };
        let lent = Lent {
            request: rq,
            response: (rs, response_cap.into()),
            data: data.map(|d| (d, data_len.into())),
        };
        match self.submit_desc_inner(channel, &desc) {
            Ok(id) => {
                self.lent.insert(id, lent);
                Ok(id)
            }
            Err(e) => {
                self.free(&lent);
                Err(e)
            }
        }
    }

    /// Submits a request described by page lists the caller built (e.g. naming pages outside
    /// the registered memory). Its completion comes back with empty head and body.
    pub fn submit_desc(
        &mut self,
        channel: usize,
        desc: &BlobRequestDesc<'_>,
    ) -> Result<u64, DriverError> {
        if channel >= self.channels.len() {
            return Err(DriverError::NoChannel(channel, self.channels.len()));
        }
        let id = self.submit_desc_inner(channel, desc)?;
        self.lent.insert(
            id,
            Lent {
                request: u64::MAX,
                response: (0, 0),
                data: None,
            },
        );
        Ok(id)
    }

    fn submit_desc_inner(
        &mut self,
        channel: usize,
        desc: &BlobRequestDesc<'_>,
    ) -> Result<u64, DriverError> {
        let id = self.next_trans_id();
        let mut pkt = std::mem::take(&mut self.pkt);
        let mut pfns = std::mem::take(&mut self.pfns);
        let r = encode_blob_request(&mut pkt, &mut pfns, id, desc);
        self.pfns = pfns;
        if let Err(e) = r {
            self.pkt = pkt;
            return Err(e.into());
        }
        let r = self.send_blocking(channel, &pkt);
        self.pkt = pkt;
        r.map(|()| id)
    }

    /// Sends one packet, waiting for ring space (and collecting completions meanwhile, so the
    /// host is never blocked on us).
    fn send_blocking(&mut self, channel: usize, pkt: &[u8]) -> Result<(), DriverError> {
        let deadline = Instant::now() + self.cfg.wait_limit;
        loop {
            match self.channels[channel].send(pkt) {
                Ok(()) => return Ok(()),
                Err(ChannelError::Full { needed }) => {
                    if self.channels[channel].wait_for_space(needed)? {
                        continue;
                    }
                    self.collect()?;
                    if Instant::now() >= deadline {
                        return Err(DriverError::Timeout(self.cfg.wait_limit));
                    }
                    self.wait_any(Duration::from_millis(5))?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn free(&mut self, l: &Lent) {
        if l.request != u64::MAX {
            let _ = self.arena.free(l.request);
            let _ = self.arena.free(l.response.0);
            if let Some((d, _)) = l.data {
                let _ = self.arena.free(d);
            }
        }
    }

    /// Reads every completion waiting on every channel into `ready`.
    fn collect(&mut self) -> Result<(), DriverError> {
        for i in 0..self.channels.len() {
            loop {
                let mut rx = std::mem::take(&mut self.rx);
                let got = match self.channels[i].recv(&mut rx) {
                    Ok(Some(p)) => Some(parse_blob_completion(&p)),
                    Ok(None) => None,
                    Err(e) => {
                        self.rx = rx;
                        return Err(e.into());
                    }
                };
                self.rx = rx;
                let Some(parsed) = got else { break };
                let (tid, vsp) = parsed.map_err(|e| DriverError::BadCompletion(e.to_string()))?;
                let Some(lent) = self.lent.remove(&tid) else {
                    return Err(DriverError::BadCompletion(format!(
                        "transaction id {tid} is not in flight"
                    )));
                };
                let c = self.complete(tid, vsp, &lent);
                self.free(&lent);
                self.ready.push_back(c?);
            }
            self.channels[i].release()?;
        }
        Ok(())
    }

    fn complete(
        &self,
        trans_id: u64,
        vsp: AzBlobVspResponse,
        lent: &Lent,
    ) -> Result<Completion, DriverError> {
        let (mut response_head, mut body) = (Vec::new(), Vec::new());
        if vsp.error == 0 && lent.request != u64::MAX {
            let (rs, rs_len) = lent.response;
            let (d, d_len) = lent.data.unwrap_or((0, 0));
            if u64::from(vsp.response_len) > rs_len || u64::from(vsp.length) > d_len {
                return Err(DriverError::BadCompletion(format!(
                    "transaction {trans_id}: head {} / body {} bytes exceed the {rs_len} / \
                     {d_len}-byte buffers",
                    vsp.response_len, vsp.length
                )));
            }
            response_head = vec![0; vsp.response_len as usize];
            self.region.mapping().read(rs, &mut response_head)?;
            if self.cfg.copy_body {
                body = vec![0; vsp.length as usize];
            }
            if !body.is_empty() {
                self.region.mapping().read(d, &mut body)?;
            }
        }
        Ok(Completion {
            trans_id,
            vsp,
            response_head,
            body,
        })
    }

    /// Completions that arrived so far (without blocking), in arrival order.
    pub fn poll_completions(&mut self) -> Result<Vec<Completion>, DriverError> {
        self.collect()?;
        Ok(self.ready.drain(..).collect())
    }

    /// Waits up to `timeout` for at least one completion; returns all that arrived (empty on
    /// timeout).
    pub fn wait_completions(&mut self, timeout: Duration) -> Result<Vec<Completion>, DriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.poll_completions()?;
            if !got.is_empty() {
                return Ok(got);
            }
            // Arm every channel; if something is already waiting, loop without sleeping.
            let mut waiting = false;
            for c in &mut self.channels {
                waiting |= c.arm()?;
            }
            if waiting {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            self.wait_any(left.min(Duration::from_millis(50)))?;
        }
    }

    /// Sleeps until a channel is signalled or `timeout` passes; clears the wakeups.
    fn wait_any(&mut self, timeout: Duration) -> Result<(), DriverError> {
        use rustix::event::{PollFd, PollFlags, Timespec};
        let ts = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut fds: Vec<PollFd<'_>> = self
            .channels
            .iter()
            .map(|c| PollFd::from_borrowed_fd(c.as_fd(), PollFlags::IN))
            .collect();
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(DriverError::Channel(ChannelError::Signal(e.into())));
            }
        }
        for c in &self.channels {
            c.clear_wakeups().map_err(ChannelError::Signal)?;
        }
        Ok(())
    }

    /// Submits a request and waits (up to [`DriverConfig::wait_limit`]) for its completion;
    /// other completions that arrive meanwhile stay queued for
    /// [`poll_completions`](Self::poll_completions).
    pub fn call(
        &mut self,
        channel: usize,
        request_head: &[u8],
        body: &[u8],
        response_cap: u32,
        data_cap: u32,
    ) -> Result<Completion, DriverError> {
        let id = self.submit(channel, request_head, body, response_cap, data_cap)?;
        self.wait_for(id, self.cfg.wait_limit)
    }

    /// Waits up to `timeout` for the completion of `trans_id`; other completions stay queued.
    pub fn wait_for(
        &mut self,
        trans_id: u64,
        timeout: Duration,
    ) -> Result<Completion, DriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.collect()?;
            if let Some(pos) = self.ready.iter().position(|c| c.trans_id == trans_id) {
                return Ok(self.ready.remove(pos).expect("position is in range"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DriverError::Timeout(timeout));
            }
            let mut waiting = false;
            for c in &mut self.channels {
                waiting |= c.arm()?;
            }
            if !waiting {
                self.wait_any(left.min(Duration::from_millis(50)))?;
            }
        }
    }
}
