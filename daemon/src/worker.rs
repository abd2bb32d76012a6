//! One worker: pinned to a core, owns one io_uring [`Reactor`], queue pair `index` of every
//! client, some VMBus channels, and the slab of its in-flight requests.
//!
//! A turn: control messages → host completions → SQ intake (≤ `batch` per client, credits
//! permitting) → requests waiting for ring space → channel flushes → deadlines → CQ posts
//! (one release store per client per turn) and futex wakes (batched into the next
//! `io_uring_enter`). With nothing to do the worker spins — only while no request waits on the
//! host, and only for its adaptive spin budget ([`crate::spin`]: at most `spin`, doubled
//! after a spin that found work within 10 µs, halved after one that found it later or ran
//! out, zero but for an occasional probe when spinning does not pay) — then publishes
//! `sq_need_wakeup` on every client queue, arms its channels and sleeps in `io_uring_enter`
//! on: client doorbells, channel interrupt eventfds, its control eventfd and the nearest
//! deadline.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::ops::{Deref, DerefMut};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blobring_abi::vmbus::{AZ_BLOB_MAX_PAGES, AzBlobVspResponse, HV_PAGE_SIZE};
use blobring_abi::{
    CQE_F_BUFFERS_LENT, CQE_F_BUFFERS_RELEASED, Cqe, CqeFields, FromZeros, Opcode, RegionGeometry,
    Sqe, SqeBuffer, SqeFields, qc,
};
use blobring_reactor::{Event, FutexWord, MemoryRegion, OpId, Reactor, RegionWord};
use blobring_ring::{DaemonQueue, EventFd, QueueLayout, RingError, SleepCheck};
use blobring_shm::{Region, SharedMemory};
use blobring_vmbus::blob::{
    BlobRequestDesc, BufferPages, encode_blob_request, guid_string, parse_blob_reply,
};
use blobring_vmbus::channel::{Channel, ChannelError};
use blobring_vmbus::guest_phys::PfnTranslator;
use blobring_vmbus::packet::{Packet, Reply};
use blobring_vmbus::sim::SimChannel;
use crossbeam_channel::{Receiver, Sender};
use slab::Slab;

use crate::spin::{Spin, SpinOutcome};
use crate::stats::{ChannelCounters, ClientCounters, PUBLISH_EVERY, StatsCell, lock};

/// Linux errno values posted in CQEs.
pub mod errno {
    /// Invalid SQE.
    pub const EINVAL: i32 = 22;
    /// Deadline passed.
    pub const ETIMEDOUT: i32 = 110;
    /// No host device.
    pub const ENODEV: i32 = 19;
    /// Daemon shutting down.
    pub const ECONNRESET: i32 = 104;
    /// The request's buffers span more pages than the channel takes in one request (uio:
    /// [`blobring_vmbus::uio::UioChannel::max_request_pages`]); split it.
    pub const E2BIG: i32 = 7;
}

/// What the control thread shares with the workers about one client.
#[derive(Debug)]
pub struct ClientShared {
    /// Daemon-assigned id.
    pub id: u64,
    /// Peer uid.
    pub uid: u32,
    /// Peer pid.
    pub pid: i32,
    /// The sealed region.
    pub region: Arc<Region>,
    /// Its layout.
    pub geometry: RegionGeometry,
    /// Guest-physical address of region offset 0 (sim transport; diagnostics).
    pub gpa_base: u64,
    /// Region offsets → guest page numbers for the packets (per transport).
    pub pfns: Arc<dyn PfnTranslator>,
    /// One doorbell per queue pair (index = worker).
    pub doorbells: Vec<Arc<EventFd>>,
}

/// Control thread → worker.
#[derive(Debug)]
pub enum ToWorker {
    /// Serve this client's queue pair `worker index`.
    AddClient(Arc<ClientShared>),
    /// The client is gone or misbehaved: stop intake, drain, then report
    /// [`ToControl::Drained`].
    RemoveClient(u64),
    /// Channels to use from now on (after a host (re)connection).
    Channels(Vec<Box<dyn WorkerChannel>>),
    /// The host is gone: fail every in-flight request with `-ENODEV`, drop the channels.
    ChannelsLost,
    /// Stop intake, drain (bounded by `deadline`), exit.
    Shutdown {
        /// Give up waiting for the host at this time.
        deadline: Instant,
    },
}

/// Worker → control thread.
#[derive(Debug)]
pub enum ToControl {
    /// Worker `worker` no longer references client `id`.
    Drained {
        /// Client id.
        id: u64,
        /// Worker index.
        worker: usize,
    },
    /// The client broke its queue protocol; disconnect it.
    Misbehaved {
        /// Client id.
        id: u64,
        /// What it did.
        reason: String,
    },
    /// A channel broke (corrupted by the host); the host should be reconnected.
    ChannelBroken {
        /// Worker index.
        worker: usize,
        /// What happened.
        reason: String,
    },
}

/// What a worker needs of a VMBus channel, object-safe so one worker can drive channels of any
/// transport (`sim` now; `uio` implements the same [`Channel`] trait). See [`Channel`] for the
/// meaning of each method.
pub trait WorkerChannel: Send + AsFd + std::fmt::Debug {
    /// Channel index (0 = primary).
    fn index(&self) -> u32;
    /// [`Channel::recv`].
    fn recv<'b>(&mut self, buf: &'b mut Vec<u8>) -> Result<Option<Packet<'b>>, ChannelError>;
    /// [`Channel::recv_reply`]: a host reply of any packet type, as the driver reads them.
    fn recv_reply<'b>(&mut self, buf: &'b mut Vec<u8>) -> Result<Option<Reply<'b>>, ChannelError>;
    /// [`Channel::send_uncommitted`].
    fn send_uncommitted(&mut self, packet: &[u8]) -> Result<(), ChannelError>;
    /// [`Channel::flush`].
    fn flush(&mut self) -> Result<(), ChannelError>;
    /// [`Channel::release`].
    fn release(&mut self) -> Result<(), ChannelError>;
    /// [`Channel::arm`].
    fn arm(&mut self) -> Result<bool, ChannelError>;
    /// [`Channel::wait_for_space`].
    fn wait_for_space(&mut self, needed: u32) -> Result<bool, ChannelError>;
    /// [`Channel::clear_wakeups`]. An error (uio: `EIO` after a rescind) means the channel
    /// is gone.
    fn clear_wakeups(&self) -> std::io::Result<u64>;
    /// Most pages (data + request + response) one blob request may name on this channel, if
    /// the transport limits it (uio: what fits the TX ring). Larger requests get `-E2BIG`.
    fn max_request_pages(&self) -> Option<u32> {
        None
    }
}

impl WorkerChannel for SimChannel {
    fn index(&self) -> u32 {
        SimChannel::index(self)
    }
    fn recv<'b>(&mut self, buf: &'b mut Vec<u8>) -> Result<Option<Packet<'b>>, ChannelError> {
        Channel::recv(self, buf)
    }
    fn recv_reply<'b>(&mut self, buf: &'b mut Vec<u8>) -> Result<Option<Reply<'b>>, ChannelError> {
        Channel::recv_reply(self, buf)
    }
    fn send_uncommitted(&mut self, packet: &[u8]) -> Result<(), ChannelError> {
        Channel::send_uncommitted(self, packet)
    }
    fn flush(&mut self) -> Result<(), ChannelError> {
        Channel::flush(self)
    }
    fn release(&mut self) -> Result<(), ChannelError> {
        Channel::release(self)
    }
    fn arm(&mut self) -> Result<bool, ChannelError> {
        Channel::arm(self)
    }
    fn wait_for_space(&mut self, needed: u32) -> Result<bool, ChannelError> {
        Channel::wait_for_space(self, needed)
    }
    fn clear_wakeups(&self) -> std::io::Result<u64> {
        Channel::clear_wakeups(self)
    }
}

/// Static settings of a worker.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Worker index (= queue pair index in every region).
    pub index: usize,
    /// CPU to pin to.
    pub cpu: Option<usize>,
    /// The most an idle worker busy-polls before sleeping: the maximum of its adaptive
    /// budget ([`crate::spin`]).
    pub spin: Duration,
    /// Most SQEs per client per turn.
    pub batch: usize,
    /// Most requests of one uid in this worker's slab (`--uid-inflight`).
    pub uid_inflight: u32,
    /// Deadline of SQEs with `timeout_ms == 0`.
    pub default_timeout: Duration,
}

/// What a reactor token refers to: its top byte. The rest of the token is a slab key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    /// The control thread's eventfd.
    Control = 1,
    /// A client's doorbell (key: the client).
    Client,
    /// A channel's wait fd (key: the channel).
    Channel,
    /// The next request deadline.
    Deadline,
    /// A futex wake of a sleeping client.
    Wake,
}

const TAG_SHIFT: u32 = 56;

impl Tag {
    const ALL: [Self; 5] = [
        Self::Control,
        Self::Client,
        Self::Channel,
        Self::Deadline,
        Self::Wake,
    ];

    /// The tag and the key of `token` (no tag if its top byte is none this worker issues).
    fn split(token: u64) -> (Option<Self>, usize) {
        let tag = Self::ALL
            .into_iter()
            .find(|&t| t as u64 == token >> TAG_SHIFT);
        (tag, (token & ((1 << TAG_SHIFT) - 1)) as usize)
    }
}

fn token(tag: Tag, key: usize) -> u64 {
    ((tag as u64) << TAG_SHIFT) | key as u64
}

struct ClientQ {
    shared: Arc<ClientShared>,
    queue: DaemonQueue<Arc<Region>>,
    futex: Arc<dyn FutexWord>,
    poll: Option<OpId>,
    dead: bool,
    /// Requests of this client in the slab (waiting, sent, or timed out and still lent).
    in_slab: u32,
    /// Final completions to post this turn.
    cqes: Vec<Cqe>,
    /// "Buffers still lent" notices waiting for an unreserved CQ slot.
    notices: VecDeque<(usize, u32, Cqe)>,
    rejected: u32,
    counters: ClientCounters,
    /// The doorbell rang since the last intake pass.
    rang: bool,
    /// Doorbells in a row after which intake found nothing new.
    empty_rings: u32,
    /// While set, the doorbell poll is cancelled until then (see [`MUTE_AFTER_EMPTY_RINGS`]).
    muted_until: Option<Instant>,
}

/// Doorbell throttle. A client rings its doorbell only after publishing SQEs while the worker
/// sleeps, so a ring after which intake finds nothing is rare for a well-behaved client (it
/// happens when the worker took the SQEs before it saw the ring). A client that rings this many
/// times in a row with nothing to take is flooding: its doorbell poll is cancelled for
/// [`DOORBELL_MUTE`], during which its queue is still served whenever the worker is awake, and
/// the worker sleeps at most until the mute ends. This bounds the wakeups a flooder causes to
/// about this many per mute period, instead of one per ring (measured before the throttle: 1.2 M
/// rings/s became ~195 k worker wakeups/s).
const MUTE_AFTER_EMPTY_RINGS: u32 = 16;
/// How long a flooding client's doorbell stays muted.
const DOORBELL_MUTE: Duration = Duration::from_millis(2);

/// Where a request in a worker's [`InFlight`] slab is.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqState {
    /// Taken, waiting for room on a channel.
    Waiting,
    /// Handed to the host on channel (slab key) `chan`.
    Sent {
        /// Channel slab key.
        chan: usize,
    },
    /// Past its deadline while the host holds its buffers (lent) on channel `chan`.
    TimedOut {
        /// Channel slab key.
        chan: usize,
    },
}

/// One request a worker has taken and not yet retired.
#[doc(hidden)]
#[derive(Debug)]
pub struct Req {
    client: usize,
    generation: u32,
    /// The validated copy of the client's SQE.
    pub sqe: Sqe,
    /// Where the request is.
    pub state: ReqState,
    taken: Instant,
    sent: Instant,
    bytes: u64,
    notice_posted: bool,
    /// The transaction GUID sent in its `az_blob_vsp_request` (unique per request; shown in
    /// debug logs and the ctl stats' in-flight list so a host-side trace can be joined).
    pub guid: [u8; 16],
}

/// The transaction id lent to the host for the request at slab `key` of `generation`:
/// `generation << 32 | (key + 1)` (never 0).
#[doc(hidden)]
pub fn transaction_id(key: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | (key as u64 + 1)
}

/// A worker's in-flight requests (a slab; read and edited through `Deref`) and the generation
/// counter that makes every transaction id unique among recent ones, so a stale or forged
/// completion cannot retire a newer request that reused the slot.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct InFlight {
    slab: Slab<Req>,
    generation: u32,
    /// First 8 bytes of every transaction GUID of this worker ([`guid_prefix`]).
    guid_prefix: [u8; 8],
    /// Requests inserted so far: the last 8 bytes of the next GUID.
    sequence: u64,
}

/// The first 8 bytes of worker `index`'s transaction GUIDs: 6 random bytes drawn once per
/// daemon start (so GUIDs differ across restarts) and the worker index. The last 8 bytes are
/// the worker's request sequence number, so every request of a daemon run gets its own GUID
/// without a random draw per request. Both numbers are big-endian, so the printed form
/// ([`guid_string`], the driver's `%pUb`) reads `rrrrrrrr-rrrr-wwww-ssss-ssssssssssss`.
#[doc(hidden)]
pub fn guid_prefix(index: usize) -> [u8; 8] {
    use std::io::Read as _;
    let mut p = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut p[..6]));
    if random.is_err() {
        // No urandom: time and pid still tell runs apart.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 40);
        p[..6].copy_from_slice(&t.to_le_bytes()[..6]);
    }
    p[6..].copy_from_slice(&(index as u16).to_be_bytes());
    p
}

impl Deref for InFlight {
    type Target = Slab<Req>;
    fn deref(&self) -> &Slab<Req> {
        &self.slab
    }
}

impl DerefMut for InFlight {
    fn deref_mut(&mut self) -> &mut Slab<Req> {
        &mut self.slab
    }
}

impl InFlight {
    /// An empty slab (GUID prefix zero: tests).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty slab whose requests get GUIDs starting with `prefix` ([`guid_prefix`]).
    pub fn with_guid_prefix(prefix: [u8; 8]) -> Self {
        Self {
            guid_prefix: prefix,
            ..Self::default()
        }
    }

    /// Inserts request `sqe` of client (slab key) `client`, [`ReqState::Waiting`], under a new
    /// generation; `bytes` is what it sends (head + valid data). Returns `(key, generation)`.
    pub fn insert_waiting(
        &mut self,
        client: usize,
        sqe: Sqe,
        now: Instant,
        bytes: u64,
    ) -> (usize, u32) {
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        self.sequence += 1;
        let mut guid = [0u8; 16];
        guid[..8].copy_from_slice(&self.guid_prefix);
        guid[8..].copy_from_slice(&self.sequence.to_be_bytes());
        let key = self.slab.insert(Req {
            client,
            generation,
            sqe,
            state: ReqState::Waiting,
            taken: now,
            sent: now,
            bytes,
            notice_posted: false,
            guid,
        });
        (key, generation)
    }

    /// The transaction id of the request at `key`, if any.
    pub fn tid(&self, key: usize) -> Option<u64> {
        self.slab
            .get(key)
            .map(|r| transaction_id(key, r.generation))
    }

    /// Matches host completion `(tid, resp)` received on channel `chan` against the slab:
    /// returns the key of the request it retires, or `None` for a bad completion (unknown or
    /// stale id, a request never sent or sent on another channel, or success lengths larger
    /// than the buffers lent), which the worker counts and drops.
    pub fn match_completion(
        &self,
        chan: usize,
        tid: u64,
        resp: &AzBlobVspResponse,
    ) -> Option<usize> {
        let key = ((tid & 0xffff_ffff) as usize).checked_sub(1)?;
        let generation = (tid >> 32) as u32;
        let r = self.slab.get(key)?;
        let valid = r.generation == generation
            && matches!(r.state, ReqState::Sent { chan: c } | ReqState::TimedOut { chan: c } if c == chan)
            // On success the lengths say what the host wrote, so they must fit the buffers it
            // was lent. On a VSP error (e.g. body or head too large) they carry the size that
            // would have been needed, for the client to retry with.
            && (resp.error != 0
                || (resp.response_len <= r.sqe.response_len && resp.length <= r.sqe.data_len));
        valid.then_some(key)
    }
}

/// An idle period of the main loop (no work in the last turn).
struct Idle {
    since: Instant,
    /// How long this period may spin, decided at its first look with nothing at the host.
    allowance: Option<Duration>,
    /// Whether the worker slept in it (it then spins no more).
    slept: bool,
}

struct Chan {
    ch: Box<dyn WorkerChannel>,
    poll: Option<OpId>,
    outstanding: u32,
    outstanding_bytes: u64,
    dirty: bool,
    full: bool,
    counters: ChannelCounters,
}

/// A worker's state. Built and run on its own thread ([`run`]).
struct Worker {
    s: WorkerSettings,
    reactor: Reactor,
    rx: Receiver<ToWorker>,
    tx: Sender<ToControl>,
    control_wake: Arc<EventFd>,
    control_fd: Arc<EventFd>,
    clients: Slab<ClientQ>,
    by_id: HashMap<u64, usize>,
    reqs: InFlight,
    waiting: VecDeque<(usize, u32)>,
    deadlines: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    chans: Slab<Chan>,
    stats: crate::stats::WorkerStats,
    cell: StatsCell,
    last_publish: Instant,
    dirty_clients: Vec<usize>,
    sqe_buf: Vec<Sqe>,
    verdicts: Vec<Admission>,
    pkt: Vec<u8>,
    pfns: [Vec<u64>; 4],
    rx_buf: Vec<u8>,
    shutdown: Option<Instant>,
    scratch_keys: Vec<usize>,
    scratch_done: Vec<(usize, u64, AzBlobVspResponse)>,
    /// The earliest end of a doorbell mute, if any client is muted.
    next_unmute: Option<Instant>,
    /// Requests in the slab per uid (the sum of its clients' `in_slab`), against
    /// [`WorkerSettings::uid_inflight`].
    uid_in_slab: HashMap<u32, u32>,
    /// Where the next intake pass starts in the client list (round-robin).
    intake_turn: usize,
    /// The adaptive spin budget (at most [`WorkerSettings::spin`]).
    spin: Spin,
}

/// The worker thread body: builds the reactor (on this thread: it is `!Send`) and loops until
/// shutdown. `control_fd` is the eventfd the control thread writes after sending a message.
pub fn run(
    s: WorkerSettings,
    rx: Receiver<ToWorker>,
    tx: Sender<ToControl>,
    control_fd: Arc<EventFd>,
    control_wake: Arc<EventFd>,
    cell: StatsCell,
) -> Result<(), String> {
    let mut reactor =
        Reactor::new().map_err(|e| format!("worker {}: io_uring setup: {e}", s.index))?;
    tracing::info!(worker = s.index, cpu = ?s.cpu, features = %reactor.features(), "worker started");
    reactor
        .poll_multishot(control_fd.clone(), token(Tag::Control, 0))
        .map_err(|e| e.to_string())?;
    let stats = crate::stats::WorkerStats::new(s.index, s.cpu);
    let mut w = Worker {
        reactor,
        rx,
        tx,
        control_wake,
        control_fd,
        clients: Slab::new(),
        by_id: HashMap::new(),
        reqs: InFlight::with_guid_prefix(guid_prefix(s.index)),
        waiting: VecDeque::new(),
        deadlines: BinaryHeap::new(),
        chans: Slab::new(),
        stats,
        cell,
        last_publish: Instant::now(),
        dirty_clients: Vec::new(),
        sqe_buf: vec![Sqe::new_zeroed(); s.batch.max(1)],
        verdicts: Vec::with_capacity(s.batch.max(1)),
        pkt: Vec::new(),
        pfns: Default::default(),
        rx_buf: Vec::new(),
        shutdown: None,
        scratch_keys: Vec::new(),
        scratch_done: Vec::new(),
        next_unmute: None,
        uid_in_slab: HashMap::new(),
        intake_turn: 0,
        spin: Spin::new(s.spin),
        s,
    };
    w.main_loop()
}

impl Worker {
    fn main_loop(&mut self) -> Result<(), String> {
        let mut idle: Option<Idle> = None;
        let mut events = Vec::new();
        loop {
            let mut work = self.handle_control()?;
            if let Some(at) = self.next_unmute {
                let now = Instant::now();
                if now >= at {
                    self.next_unmute = self.unmute(now);
                }
            }
            work |= self.poll_channels();
            work |= self.intake();
            work |= self.send_waiting();
            self.flush_channels();
            self.expire(Instant::now());
            self.post_completions();
            self.reap_removed();
            self.reactor
                .wait(0, None, |c| events.push((c.token, c.event)))
                .map_err(|e| e.to_string())?;
            work |= self.handle_events(&mut events);
            if self.last_publish.elapsed() >= PUBLISH_EVERY {
                self.publish();
            }
            if let Some(deadline) = self.shutdown
                && (self.reqs.is_empty() || Instant::now() >= deadline)
            {
                self.fail_all(errno::ECONNRESET);
                self.post_completions();
                self.publish();
                return Ok(());
            }
            if work {
                self.end_idle(idle.take());
                continue;
            }
            let i = idle.get_or_insert_with(|| Idle {
                since: Instant::now(),
                allowance: None,
                slept: false,
            });
            // Spin only while nothing waits on the host: the next event is then a client
            // submission, which a busy client sends within microseconds. With requests at the
            // host the next event is its completion (tens of µs on the emulated host), which
            // wakes io_uring anyway; spinning then only burns CPU (measured: 4 KiB GET at
            // depth 1, daemon CPU per request 41 µs spinning vs 14 µs not, same latency).
            // How long: the adaptive budget ([`crate::spin`]).
            let host_busy = self.reqs.len() > self.waiting.len();
            if !host_busy && !i.slept {
                let allowance = *i.allowance.get_or_insert_with(|| self.spin.allowance());
                if i.since.elapsed() < allowance {
                    std::hint::spin_loop();
                    continue;
                }
            }
            if self.sleep(&mut events)? {
                self.end_idle(idle.take());
            } else {
                if !i.slept && i.allowance.is_some_and(|a| !a.is_zero()) {
                    self.spin.record(SpinOutcome::RanOut);
                }
                i.slept = true;
            }
        }
    }

    /// An idle period ended with work found: a spin that found it adapts the budget.
    fn end_idle(&mut self, idle: Option<Idle>) {
        if let Some(i) = idle
            && !i.slept
            && i.allowance.is_some_and(|a| !a.is_zero())
        {
            self.spin.record(SpinOutcome::Found(i.since.elapsed()));
        }
    }

    /// Goes idle: need-wakeup on every queue, arm channels, sleep in io_uring. Returns true if
    /// work was found while preparing.
    fn sleep(&mut self, events: &mut Vec<(u64, Event)>) -> Result<bool, String> {
        let mut armed = Vec::new();
        let mut found = false;
        let keys: Vec<usize> = self.clients.iter().map(|(k, _)| k).collect();
        for k in keys {
            if self.clients[k].dead || self.shutdown.is_some() {
                continue;
            }
            // A uid at its budget has nothing to take until one of its requests completes,
            // which wakes the worker through the channel: its pending entries are no reason
            // to stay awake.
            if self.uid_room(self.clients[k].shared.uid) == 0 {
                continue;
            }
            match self.clients[k].queue.prepare_sleep() {
                Ok(SleepCheck::Sleep) => armed.push(k),
                Ok(SleepCheck::Work) => found = true,
                Err(e) => self.misbehaved(k, e.to_string()),
            }
        }
        let mut broken = None;
        for (_, ch) in self.chans.iter_mut() {
            match ch.ch.arm() {
                Ok(true) => found = true,
                Ok(false) => {}
                Err(e) => broken = Some(e.to_string()),
            }
        }
        if let Some(reason) = broken {
            self.channel_broken(reason);
        }
        if !found {
            if let Some(Reverse((at, _, _))) = self.deadlines.peek() {
                let at = *at;
                self.reactor
                    .set_deadline(at, token(Tag::Deadline, 0))
                    .map_err(|e| e.to_string())?;
            }
            self.stats.sleeps += 1;
            // Publishing copies three histograms; at low load the worker sleeps after nearly
            // every request, so publish at most once per millisecond here and otherwise wake
            // up within PUBLISH_EVERY to publish what changed.
            let cap = if self.shutdown.is_some() {
                Duration::from_millis(10)
            } else if self.last_publish.elapsed() >= Duration::from_millis(1) {
                self.publish();
                Duration::from_secs(1)
            } else {
                PUBLISH_EVERY
            };
            // A muted doorbell cannot wake us: wake when its mute ends to re-arm it.
            let cap = match self.next_unmute {
                Some(at) => cap.min(at.saturating_duration_since(Instant::now())),
                None => cap,
            };
            self.reactor
                .wait(1, Some(cap), |c| events.push((c.token, c.event)))
                .map_err(|e| e.to_string())?;
            self.handle_events(events);
        }
        for k in armed {
            if let Some(c) = self.clients.get_mut(k) {
                let _ = c.queue.finish_sleep();
            }
        }
        Ok(found)
    }

    fn handle_events(&mut self, events: &mut Vec<(u64, Event)>) -> bool {
        let mut any = false;
        for (tok, ev) in events.drain(..) {
            let (tag, key) = Tag::split(tok);
            match (tag, ev) {
                (Some(Tag::Control), Event::Readable { .. }) => {
                    let _ = self.control_fd.drain();
                    any = true;
                }
                (Some(Tag::Client), Event::Readable { .. }) => {
                    if let Some(c) = self.clients.get_mut(key) {
                        let _ = c.shared.doorbells[self.s.index].drain();
                        c.rang = true;
                        self.stats.doorbells += 1;
                        any = true;
                    }
                }
                (Some(Tag::Channel), Event::Readable { .. }) => {
                    if let Some(c) = self.chans.get(key) {
                        if let Err(e) = c.ch.clear_wakeups() {
                            // uio: EIO after a rescind. The control thread fails everything
                            // in flight with ENODEV and reconnects.
                            self.channel_broken(format!("reading the channel's interrupt: {e}"));
                        }
                        any = true;
                    }
                }
                (Some(Tag::Wake), _) => {}
                (Some(Tag::Deadline), _) => any = true,
                _ => {}
            }
        }
        any
    }

    fn handle_control(&mut self) -> Result<bool, String> {
        let mut any = false;
        while let Ok(msg) = self.rx.try_recv() {
            any = true;
            match msg {
                ToWorker::AddClient(shared) => {
                    let id = shared.id;
                    if let Err(reason) = self.add_client(shared) {
                        // Refuse this client only; the control thread disconnects it.
                        let _ = self.tx.send(ToControl::Misbehaved { id, reason });
                        self.control_wake_up();
                    }
                }
                ToWorker::RemoveClient(id) => {
                    if let Some(&k) = self.by_id.get(&id) {
                        self.kill_client(k);
                    } else {
                        let _ = self.tx.send(ToControl::Drained {
                            id,
                            worker: self.s.index,
                        });
                        self.control_wake_up();
                    }
                }
                ToWorker::Channels(chs) => {
                    self.drop_channels(errno::ENODEV);
                    for ch in chs {
                        if let Err(reason) = self.add_channel(ch) {
                            self.channel_broken(reason);
                        }
                    }
                    // A new channel set is published at once (not at the next periodic
                    // publish, up to PUBLISH_EVERY later): `blobring stats` right after the
                    // daemon reports `host_connected` lists the channels.
                    self.publish();
                }
                ToWorker::ChannelsLost => {
                    self.drop_channels(errno::ENODEV);
                    self.publish();
                }
                ToWorker::Shutdown { deadline } => {
                    self.shutdown = Some(deadline);
                    let keys: Vec<usize> = self.clients.iter().map(|(k, _)| k).collect();
                    for k in keys {
                        self.stop_intake(k);
                    }
                }
            }
        }
        Ok(any)
    }

    fn control_wake_up(&self) {
        use blobring_ring::Notifier;
        let _ = self.control_wake.notify();
    }

    /// Tells the control thread a channel broke (it reconnects the host) and wakes it.
    fn channel_broken(&self, reason: String) {
        let _ = self.tx.send(ToControl::ChannelBroken {
            worker: self.s.index,
            reason,
        });
        self.control_wake_up();
    }

    fn add_client(&mut self, shared: Arc<ClientShared>) -> Result<(), String> {
        let q = self.s.index as u32;
        let layout = QueueLayout::from_geometry(&shared.geometry, q).map_err(|e| e.to_string())?;
        let queue =
            DaemonQueue::new(shared.region.clone(), &layout, 0).map_err(|e| e.to_string())?;
        let region: Arc<dyn MemoryRegion> = shared.region.clone();
        let word = RegionWord::new(region, layout.control as usize + qc::CQ_TAIL as usize)
            .map_err(|e| e.to_string())?;
        let futex: Arc<dyn FutexWord> = Arc::new(word);
        let key = self.clients.vacant_key();
        let poll = self
            .reactor
            .poll_multishot(
                shared.doorbells[self.s.index].clone(),
                token(Tag::Client, key),
            )
            .map_err(|e| e.to_string())?;
        let counters = ClientCounters {
            uid: shared.uid,
            pid: shared.pid,
            ..Default::default()
        };
        self.by_id.insert(shared.id, key);
        self.clients.insert(ClientQ {
            shared,
            queue,
            futex,
            poll: Some(poll),
            dead: false,
            in_slab: 0,
            cqes: Vec::new(),
            notices: VecDeque::new(),
            rejected: 0,
            counters,
            rang: false,
            empty_rings: 0,
            muted_until: None,
        });
        Ok(())
    }

    /// Counts a doorbell that brought nothing and mutes the client's doorbell when it keeps
    /// doing so (see [`MUTE_AFTER_EMPTY_RINGS`]).
    fn note_ring(&mut self, k: usize, took: usize, now: Instant) {
        let c = &mut self.clients[k];
        if !std::mem::take(&mut c.rang) {
            return;
        }
        if took > 0 {
            c.empty_rings = 0;
            return;
        }
        c.empty_rings += 1;
        if c.empty_rings < MUTE_AFTER_EMPTY_RINGS {
            return;
        }
        c.empty_rings = 0;
        if let Some(op) = c.poll.take() {
            let _ = self.reactor.cancel(op);
            let until = now + DOORBELL_MUTE;
            c.muted_until = Some(until);
            self.next_unmute = Some(self.next_unmute.map_or(until, |n| n.min(until)));
            self.stats.doorbell_mutes += 1;
        }
    }

    /// Re-arms the doorbells whose mute has ended; returns the earliest mute still running.
    fn unmute(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let index = self.s.index;
        for (k, c) in self.clients.iter_mut() {
            let Some(until) = c.muted_until else { continue };
            if c.dead || self.shutdown.is_some() {
                c.muted_until = None;
                continue;
            }
            if until > now {
                next = Some(next.map_or(until, |n| n.min(until)));
                continue;
            }
            c.muted_until = None;
            match self
                .reactor
                .poll_multishot(c.shared.doorbells[index].clone(), token(Tag::Client, k))
            {
                Ok(op) => c.poll = Some(op),
                // Without a poll the client is still served whenever the worker is awake;
                // try again after another mute period.
                Err(_) => {
                    let until = now + DOORBELL_MUTE;
                    c.muted_until = Some(until);
                    next = Some(next.map_or(until, |n| n.min(until)));
                }
            }
        }
        next
    }

    fn stop_intake(&mut self, k: usize) {
        let c = &mut self.clients[k];
        if let Some(op) = c.poll.take() {
            let _ = self.reactor.cancel(op);
        }
    }

    fn kill_client(&mut self, k: usize) {
        self.stop_intake(k);
        self.clients[k].dead = true;
        // Requests not yet handed to the host are dropped now; those the host holds are left
        // to complete or time out (their buffers are lent).
        let waiting: Vec<usize> = self
            .reqs
            .iter()
            .filter(|(_, r)| r.client == k && r.state == ReqState::Waiting)
            .map(|(key, _)| key)
            .collect();
        for key in waiting {
            let cqe = Cqe::bare(self.reqs[key].sqe.user_data, -errno::ECONNRESET);
            self.finish(key, cqe);
        }
    }

    fn misbehaved(&mut self, k: usize, reason: String) {
        let c = &mut self.clients[k];
        if c.dead {
            return;
        }
        c.counters.errors.corrupt_clients += 1;
        self.stats.errors.corrupt_clients += 1;
        let id = c.shared.id;
        self.kill_client(k);
        let _ = self.tx.send(ToControl::Misbehaved { id, reason });
        self.control_wake_up();
    }

    /// Removes dead clients with nothing left in the slab and reports them drained.
    fn reap_removed(&mut self) {
        let done: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.dead && c.in_slab == 0)
            .map(|(k, _)| k)
            .collect();
        for k in done {
            let c = self.clients.remove(k);
            self.by_id.remove(&c.shared.id);
            self.stats.clients.remove(&c.shared.id);
            let _ = self.tx.send(ToControl::Drained {
                id: c.shared.id,
                worker: self.s.index,
            });
            self.control_wake_up();
        }
    }

    fn add_channel(&mut self, ch: Box<dyn WorkerChannel>) -> Result<(), String> {
        let fd = ch.as_fd().try_clone_to_owned().map_err(|e| e.to_string())?;
        let key = self.chans.vacant_key();
        let poll = self
            .reactor
            .poll_multishot(fd, token(Tag::Channel, key))
            .map_err(|e| e.to_string())?;
        let counters = ChannelCounters {
            index: ch.index(),
            worker: self.s.index,
            ..Default::default()
        };
        self.chans.insert(Chan {
            ch,
            poll: Some(poll),
            outstanding: 0,
            outstanding_bytes: 0,
            dirty: false,
            full: false,
            counters,
        });
        Ok(())
    }

    /// Drops every channel and fails every request sent or waiting for one with `-res`.
    fn drop_channels(&mut self, res: i32) {
        let keys: Vec<usize> = self.chans.iter().map(|(k, _)| k).collect();
        for k in keys {
            let c = self.chans.remove(k);
            if let Some(op) = c.poll {
                let _ = self.reactor.cancel(op);
            }
        }
        self.fail_all(res);
    }

    fn fail_all(&mut self, res: i32) {
        let keys: Vec<usize> = self.reqs.iter().map(|(k, _)| k).collect();
        for k in keys {
            let r = &self.reqs[k];
            let cqe = Cqe {
                flags: if matches!(r.state, ReqState::TimedOut { .. }) {
                    CQE_F_BUFFERS_RELEASED
                } else {
                    0
                },
                ..Cqe::bare(r.sqe.user_data, -res)
            };
            if res == errno::ENODEV {
                self.stats.errors.no_device += 1;
            }
            self.finish(k, cqe);
        }
        self.waiting.clear();
    }

    fn poll_channels(&mut self) -> bool {
        let mut any = false;
        let mut keys = std::mem::take(&mut self.scratch_keys);
        keys.clear();
        keys.extend(self.chans.iter().map(|(k, _)| k));
        let mut done = std::mem::take(&mut self.scratch_done);
        done.clear();
        for &ck in &keys {
            let mut broken = None;
            {
                let chan = &mut self.chans[ck];
                let mut read = false;
                for _ in 0..1024 {
                    // Any packet type: the driver reads az_blob_vsp_response at hv_pkt_data of
                    // whatever the host sends; other types than 0xb are counted.
                    match chan.ch.recv_reply(&mut self.rx_buf) {
                        Ok(Some(r)) => {
                            read = true;
                            if !r.is_completion() {
                                self.stats.errors.unexpected_reply_type += 1;
                                tracing::debug!(
                                    packet_type = r.packet_type(),
                                    tid = r.trans_id(),
                                    "host replied with a packet that is not a completion"
                                );
                            }
                            match parse_blob_reply(&r) {
                                Ok((tid, resp)) => done.push((ck, tid, resp)),
                                Err(_) => self.stats.errors.bad_completions += 1,
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            broken = Some(e.to_string());
                            break;
                        }
                    }
                }
                // Release the space of everything read, whether or not it matched a request:
                // otherwise bad replies would fill the ring and stall the host.
                if read && let Err(e) = chan.ch.release() {
                    broken = Some(e.to_string());
                }
            }
            if let Some(reason) = broken {
                self.channel_broken(reason);
            }
        }
        self.scratch_keys = keys;
        let now = Instant::now();
        for &(ck, tid, resp) in &done {
            any = true;
            let Some(key) = self.reqs.match_completion(ck, tid, &resp) else {
                self.stats.errors.bad_completions += 1;
                continue;
            };
            let r = &self.reqs[key];
            let timed_out = matches!(r.state, ReqState::TimedOut { .. });
            let _ = self
                .stats
                .latency
                .host_service
                .record(now.duration_since(r.sent).as_nanos() as u64);
            let bytes_in = if resp.error == 0 {
                u64::from(resp.response_len) + u64::from(resp.length)
            } else {
                0
            };
            self.stats.bytes_in += bytes_in;
            if let Some(c) = self.clients.get_mut(r.client) {
                c.counters.bytes_in += bytes_in;
            }
            if let Some(ch) = self.chans.get_mut(ck) {
                ch.counters.bytes_in += bytes_in;
            }
            let cqe = Cqe::new(CqeFields {
                user_data: r.sqe.user_data,
                res: if timed_out { -errno::ETIMEDOUT } else { 0 },
                flags: if timed_out { CQE_F_BUFFERS_RELEASED } else { 0 },
                vsp_status: resp.error,
                response_len: resp.response_len,
                data_len: resp.length,
            });
            self.finish(key, cqe);
        }
        self.scratch_done = done;
        any
    }

    /// Retires request `k`: channel bookkeeping, final CQE queued for its client.
    fn finish(&mut self, k: usize, cqe: Cqe) {
        let r = self.reqs.remove(k);
        if let ReqState::Sent { chan } | ReqState::TimedOut { chan } = r.state
            && let Some(ch) = self.chans.get_mut(chan)
        {
            ch.outstanding -= 1;
            ch.outstanding_bytes -= r.bytes;
        }
        let _ = self
            .stats
            .latency
            .end_to_end
            .record(r.taken.elapsed().as_nanos() as u64);
        let Some(c) = self.clients.get_mut(r.client) else {
            return;
        };
        c.in_slab -= 1;
        if let Some(n) = self.uid_in_slab.get_mut(&c.shared.uid) {
            *n -= 1;
            if *n == 0 {
                self.uid_in_slab.remove(&c.shared.uid);
            }
        }
        // A notice never posted is superseded by this final completion.
        c.notices
            .retain(|(key, generation, _)| !(*key == k && *generation == r.generation));
        c.counters.requests += 1;
        self.stats.requests += 1;
        if !c.dead {
            if c.cqes.is_empty() {
                self.dirty_clients.push(r.client);
            }
            c.cqes.push(cqe);
        } else {
            // The queue still holds the request's credit; retire it without a CQE reaching
            // anyone who cares (the region is about to be dropped).
            let _ = c.queue.complete(std::slice::from_ref(&cqe));
        }
    }

    /// Requests `uid` may still start in this worker (`--uid-inflight` less its requests in
    /// the slab).
    fn uid_room(&self, uid: u32) -> usize {
        let used = self.uid_in_slab.get(&uid).copied().unwrap_or(0);
        self.s.uid_inflight.saturating_sub(used) as usize
    }

    fn intake(&mut self) -> bool {
        if self.shutdown.is_some() {
            return false;
        }
        let mut any = false;
        let mut keys = std::mem::take(&mut self.scratch_keys);
        keys.clear();
        keys.extend(self.clients.iter().filter(|(_, c)| !c.dead).map(|(k, _)| k));
        // Round-robin: each pass starts one client further, so no client (and, with the uid
        // budget, no uid) is always served first.
        if !keys.is_empty() {
            self.intake_turn = self.intake_turn.wrapping_add(1);
            let at = self.intake_turn % keys.len();
            keys.rotate_left(at);
        }
        let now = Instant::now();
        let have_channels = !self.chans.is_empty();
        for &k in &keys {
            // The uid's budget: what it may still start in this worker.
            let room = self.uid_room(self.clients[k].shared.uid);
            if room == 0 {
                let c = &mut self.clients[k];
                if c.queue.sq().cached_tail() != c.queue.sq().head() {
                    c.counters.uid_stalls += 1;
                    self.stats.uid_stalls += 1;
                }
                continue;
            }
            let mut buf = std::mem::take(&mut self.sqe_buf);
            let mut verdicts = std::mem::take(&mut self.verdicts);
            let c = &mut self.clients[k];
            let limit = room.min(buf.len());
            let taken = take_sqes(
                &mut c.queue,
                &mut buf[..limit],
                &mut verdicts,
                &c.shared.geometry,
                c.shared.gpa_base,
                have_channels,
                &mut c.rejected,
            );
            let n = match taken {
                Ok(n) => n,
                Err(e) => {
                    self.sqe_buf = buf;
                    self.verdicts = verdicts;
                    self.misbehaved(k, e.to_string());
                    continue;
                }
            };
            if n == 0 && c.queue.sq().cached_tail() != c.queue.sq().head() {
                c.counters.credit_stalls += 1;
            }
            self.note_ring(k, n, now);
            for (sqe, &verdict) in buf[..n].iter().zip(&verdicts) {
                any = true;
                self.accept(k, *sqe, verdict, now);
            }
            self.sqe_buf = buf;
            self.verdicts = verdicts;
        }
        self.scratch_keys = keys;
        any
    }

    /// Acts on the [`take_sqes`] verdict of one copied SQE: completes it at once or starts it.
    fn accept(&mut self, k: usize, sqe: Sqe, verdict: Admission, now: Instant) {
        let c = &mut self.clients[k];
        match verdict {
            Admission::Invalid => {
                c.counters.errors.invalid += 1;
                self.stats.errors.invalid += 1;
            }
            Admission::Nop => self.stats.nops += 1,
            Admission::NoDevice => {
                c.counters.errors.no_device += 1;
                self.stats.errors.no_device += 1;
            }
            Admission::Start => {}
        }
        if let Some(res) = verdict.immediate_res() {
            c.counters.requests += 1;
            self.stats.requests += 1;
            let _ = self
                .stats
                .latency
                .end_to_end
                .record(now.elapsed().as_nanos() as u64);
            if c.cqes.is_empty() {
                self.dirty_clients.push(k);
            }
            c.cqes.push(Cqe::bare(sqe.user_data, res));
            return;
        }
        let timeout = if sqe.timeout_ms == 0 {
            self.s.default_timeout
        } else {
            Duration::from_millis(sqe.timeout_ms.into())
        };
        let bytes = u64::from(sqe.request_len) + u64::from(sqe.data_valid);
        c.in_slab += 1;
        *self.uid_in_slab.entry(c.shared.uid).or_insert(0) += 1;
        c.counters.bytes_out += bytes;
        self.stats.bytes_out += bytes;
        let deadline = now + timeout;
        let (key, generation) = self.reqs.insert_waiting(k, sqe, now, bytes);
        self.deadlines.push(Reverse((deadline, key, generation)));
        // Keep submission order: while others wait for ring space, queue behind them.
        if !self.waiting.is_empty() || !self.try_send(key) {
            self.waiting.push_back((key, generation));
        }
    }

    /// Puts request `key` on the least-loaded channel with room. False if none had room.
    fn try_send(&mut self, key: usize) -> bool {
        let Some(ck) = self
            .chans
            .iter()
            .filter(|(_, c)| !c.full)
            .min_by_key(|(_, c)| c.outstanding_bytes)
            .map(|(k, _)| k)
        else {
            return false;
        };
        let r = &self.reqs[key];
        let Some(c) = self.clients.get(r.client) else {
            return false;
        };
        let tid = transaction_id(key, r.generation);
        let pfns = c.shared.pfns.clone();
        let sqe = r.sqe;
        let guid = r.guid;
        let limit = self.chans[ck].ch.max_request_pages();
        if let Err(e) = encode_request(
            &mut self.pkt,
            &mut self.pfns,
            &*pfns,
            &sqe,
            tid,
            &guid,
            limit,
        ) {
            if e == errno::E2BIG {
                self.stats.errors.too_big += 1;
            }
            let cqe = Cqe::bare(sqe.user_data, -e);
            self.finish(key, cqe);
            return true;
        }
        let chan = &mut self.chans[ck];
        match chan.ch.send_uncommitted(&self.pkt) {
            Ok(()) => {
                tracing::debug!(
                    tid,
                    guid = %guid_string(&guid),
                    channel = chan.ch.index(),
                    "blob request sent to the host"
                );
                chan.dirty = true;
                chan.outstanding += 1;
                chan.outstanding_bytes += self.reqs[key].bytes;
                chan.counters.requests += 1;
                chan.counters.bytes_out += self.reqs[key].bytes;
                let now = Instant::now();
                let r = &mut self.reqs[key];
                r.state = ReqState::Sent { chan: ck };
                r.sent = now;
                let _ = self
                    .stats
                    .latency
                    .queue_wait
                    .record(now.duration_since(r.taken).as_nanos() as u64);
                true
            }
            Err(ChannelError::Full { needed }) => {
                chan.full = true;
                chan.counters.ring_full += 1;
                let _ = chan.ch.wait_for_space(needed);
                // Another channel may have room.
                self.try_send(key)
            }
            Err(e) => {
                chan.full = true;
                self.channel_broken(e.to_string());
                false
            }
        }
    }

    fn send_waiting(&mut self) -> bool {
        // Channels marked full get another chance each turn (the host signals when space frees).
        for (_, c) in self.chans.iter_mut() {
            c.full = false;
        }
        let mut any = false;
        while let Some(&(key, generation)) = self.waiting.front() {
            if self
                .reqs
                .get(key)
                .is_none_or(|r| r.generation != generation || r.state != ReqState::Waiting)
            {
                self.waiting.pop_front();
                continue;
            }
            if self.chans.is_empty() {
                break;
            }
            if !self.try_send(key) {
                break;
            }
            self.waiting.pop_front();
            any = true;
        }
        any
    }

    fn flush_channels(&mut self) {
        let mut broken = None;
        for (_, c) in self.chans.iter_mut() {
            if c.dirty {
                c.dirty = false;
                if let Err(e) = c.ch.flush() {
                    broken = Some(e.to_string());
                }
            }
        }
        if let Some(reason) = broken {
            self.channel_broken(reason);
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(Reverse((at, key, generation))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let Some(r) = self.reqs.get_mut(key) else {
                continue;
            };
            if r.generation != generation {
                continue;
            }
            self.stats.errors.timed_out += 1;
            let client = r.client;
            match r.state {
                ReqState::Waiting => {
                    let cqe = Cqe::bare(r.sqe.user_data, -errno::ETIMEDOUT);
                    if let Some(c) = self.clients.get_mut(client) {
                        c.counters.errors.timed_out += 1;
                    }
                    self.finish(key, cqe);
                }
                ReqState::Sent { chan } => {
                    r.state = ReqState::TimedOut { chan };
                    let notice = Cqe {
                        flags: CQE_F_BUFFERS_LENT,
                        ..Cqe::bare(r.sqe.user_data, -errno::ETIMEDOUT)
                    };
                    let c = &mut self.clients[client];
                    c.counters.errors.timed_out += 1;
                    if c.dead {
                        // Nobody will read the notice; the host's late answer finds no
                        // request and is counted as stale. Releasing the request here lets
                        // the dead client's region be unregistered (the host then refuses
                        // its pages).
                        let cqe = Cqe { flags: 0, ..notice };
                        self.finish(key, cqe);
                    } else {
                        c.notices.push_back((key, generation, notice));
                    }
                }
                ReqState::TimedOut { .. } => {}
            }
        }
    }

    fn post_completions(&mut self) {
        let dirty = std::mem::take(&mut self.dirty_clients);
        for k in dirty {
            let Some(c) = self.clients.get_mut(k) else {
                continue;
            };
            if c.cqes.is_empty() {
                continue;
            }
            match c.queue.complete(&c.cqes) {
                Ok(p) => {
                    c.cqes.clear();
                    if p.wake_peer {
                        self.stats.client_wakes += 1;
                        let _ = self
                            .reactor
                            .futex_wake(c.futex.clone(), token(Tag::Wake, k));
                    }
                }
                Err(e) => {
                    c.cqes.clear();
                    let reason = e.to_string();
                    self.misbehaved(k, reason);
                }
            }
        }
        // Lent notices take unreserved slots; retry those that did not fit.
        let keys: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.notices.is_empty())
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            let c = &mut self.clients[k];
            let mut wake = false;
            while let Some(&(key, generation, cqe)) = c.notices.front() {
                match c.queue.post_unreserved(&cqe) {
                    Ok(p) => {
                        wake |= p.wake_peer;
                        c.notices.pop_front();
                        if let Some(r) = self
                            .reqs
                            .get_mut(key)
                            .filter(|r| r.generation == generation)
                        {
                            r.notice_posted = true;
                        }
                    }
                    Err(_) => break,
                }
            }
            if wake {
                self.stats.client_wakes += 1;
                let _ = self
                    .reactor
                    .futex_wake(c.futex.clone(), token(Tag::Wake, k));
            }
        }
    }

    fn publish(&mut self) {
        self.last_publish = Instant::now();
        self.stats.in_flight = self.reqs.len() as u64;
        self.publish_in_flight_list();
        self.stats.waiting = self.waiting.len() as u64;
        self.stats.spin_budget_ns = self.spin.budget().as_nanos() as u64;
        (self.stats.spin_hits, self.stats.spin_misses) = (self.spin.hits, self.spin.misses);
        for (_, c) in &self.clients {
            let mut cc = c.counters;
            cc.in_flight = u64::from(c.in_slab);
            cc.sq_pending = u64::from(c.queue.sq().cached_tail().wrapping_sub(c.queue.sq().head()));
            self.stats.clients.insert(c.shared.id, cc);
        }
        self.stats.channels = self
            .chans
            .iter()
            .map(|(_, c)| ChannelCounters {
                in_flight: u64::from(c.outstanding),
                outstanding_bytes: c.outstanding_bytes,
                ..c.counters
            })
            .collect();
        let mut cell = lock(&self.cell);
        cell.clone_from(&self.stats);
    }
}

impl Worker {
    /// The oldest [`IN_FLIGHT_LIST_MAX`] requests, for the ctl stats' in-flight list (the
    /// control thread orders them). Allocates only when more than that many are in flight.
    fn publish_in_flight_list(&mut self) {
        let now = self.last_publish;
        let mut list = std::mem::take(&mut self.stats.in_flight_list);
        list.clear();
        let entry = |key: usize, r: &Req| {
            let (state, chan) = match r.state {
                ReqState::Waiting => ("waiting", None),
                ReqState::Sent { chan } => ("sent", Some(chan)),
                ReqState::TimedOut { chan } => ("timed_out_lent", Some(chan)),
            };
            crate::stats::InFlightRequest {
                client: self.clients.get(r.client).map_or(0, |c| c.shared.id),
                user_data: r.sqe.user_data,
                transaction_id: transaction_id(key, r.generation),
                guid: r.guid,
                state,
                channel: chan.and_then(|c| self.chans.get(c)).map(|c| c.ch.index()),
                age: now.saturating_duration_since(r.taken),
            }
        };
        if self.reqs.len() <= IN_FLIGHT_LIST_MAX {
            list.extend(self.reqs.iter().map(|(k, r)| entry(k, r)));
        } else {
            let mut oldest: Vec<(Instant, usize)> =
                self.reqs.iter().map(|(k, r)| (r.taken, k)).collect();
            oldest.select_nth_unstable(IN_FLIGHT_LIST_MAX - 1);
            oldest.truncate(IN_FLIGHT_LIST_MAX);
            list.extend(oldest.iter().map(|&(_, k)| entry(k, &self.reqs[k])));
        }
        self.stats.in_flight_list = list;
    }
}

/// Most in-flight requests a worker lists in the ctl stats (the oldest).
pub const IN_FLIGHT_LIST_MAX: usize = 64;

/// What intake decided for one copied SQE, before any host resource is used.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Refused by [`validate_sqe`]: completes at once with `-EINVAL`.
    Invalid,
    /// [`Opcode::Nop`]: completes at once with 0.
    Nop,
    /// A valid blob request while the worker has no host channel: `-ENODEV` at once.
    NoDevice,
    /// A valid blob request: start it on a channel ([`encode_request`]).
    Start,
}

impl Admission {
    /// The `res` of the immediate completion, `None` for [`Admission::Start`].
    pub fn immediate_res(self) -> Option<i32> {
        match self {
            Admission::Invalid => Some(-errno::EINVAL),
            Admission::Nop => Some(0),
            Admission::NoDevice => Some(-errno::ENODEV),
            Admission::Start => None,
        }
    }
}

/// One client's SQ intake for one worker turn, exactly as the worker runs it (and as the
/// `sqe_intake` fuzz target drives it): copies up to `sqes.len()` SQEs out of `queue`
/// (credits permitting), judges each copy against the client's region (`g`, `gpa_base`), adds
/// the refused ones to `rejected` and publishes that total in `sq_rejected`. Returns how many
/// were taken, with `verdicts[..n]` the [`Admission`] of `sqes[..n]`.
///
/// An error means the client corrupted its queue indices: disconnect it. Nothing was taken.
#[doc(hidden)]
pub fn take_sqes<M: Deref<Target: SharedMemory> + Clone>(
    queue: &mut DaemonQueue<M>,
    sqes: &mut [Sqe],
    verdicts: &mut Vec<Admission>,
    g: &RegionGeometry,
    gpa_base: u64,
    have_channels: bool,
    rejected: &mut u32,
) -> Result<usize, RingError> {
    verdicts.clear();
    let n = queue.take(sqes)?;
    let before = *rejected;
    verdicts.extend(sqes[..n].iter().map(|sqe| {
        if !validate_sqe(sqe, g, gpa_base) {
            *rejected += 1;
            Admission::Invalid
        } else if sqe.opcode == Opcode::Nop.code() {
            Admission::Nop
        } else if !have_channels {
            Admission::NoDevice
        } else {
            Admission::Start
        }
    }));
    if *rejected != before {
        // A diagnostic word for the client; never read back.
        let _ = queue.sq().publish_rejected(*rejected);
    }
    Ok(n)
}

/// Builds into `pkt` the GPA-direct packet of the admitted blob request `sqe` under
/// transaction id `tid` and transaction GUID `guid` (copied into `az_blob_vsp_request`, as
/// the driver copies the caller's), translating its buffers through `translator` (`pfns` are
/// scratch page lists). `Err` is the errno to complete the request with: `E2BIG` when the buffers span
/// more than `max_pages` pages (the channel's limit), `EINVAL` when they cannot be translated
/// or encoded (not expected after [`validate_sqe`]; the request fails, not the worker).
#[doc(hidden)]
pub fn encode_request(
    pkt: &mut Vec<u8>,
    pfns: &mut [Vec<u64>; 4],
    translator: &dyn PfnTranslator,
    sqe: &Sqe,
    tid: u64,
    guid: &[u8; 16],
    max_pages: Option<u32>,
) -> Result<(), i32> {
    let [pd, pq, pr, scratch] = pfns;
    let SqeFields {
        timeout_ms,
        request,
        response,
        data,
        data_valid,
        ..
    } = sqe.fields();
    let translated = (|| {
        let d = if data.len > 0 {
            Some(translator.buffer_pfns(data.offset, data.len, pd)?)
        } else {
            None
        };
        let q = translator.buffer_pfns(request.offset, request.len, pq)?;
        let r = translator.buffer_pfns(response.offset, response.len, pr)?;
        Ok::<_, blobring_vmbus::guest_phys::OutOfRegion>((d, q, r))
    })();
    let Ok((d, q, rs)) = translated else {
        return Err(errno::EINVAL);
    };
    if let Some(max) = max_pages
        && d.map_or(0, |_| pd.len()) + pq.len() + pr.len() > max as usize
    {
        return Err(errno::E2BIG);
    }
    let desc = BlobRequestDesc {
        timeout_ms,
        transaction_guid: *guid,
        data: d.map(|offset| BufferPages {
            offset,
            len: data.len,
            pfns: pd,
        }),
        data_valid,
        request: BufferPages {
            offset: q,
            len: request.len,
            pfns: pq,
        },
        response: BufferPages {
            offset: rs,
            len: response.len,
            pfns: pr,
        },
    };
    encode_blob_request(pkt, scratch, tid, &desc).map_err(|_| errno::EINVAL)
}

/// Checks a copied SQE against its client's region: known opcode, reserved fields zero, and
/// for [`Opcode::Blob`] non-empty request and response buffers, `data_valid <= data_len`,
/// every buffer inside the data arena (never the header or the queues) and at most
/// [`AZ_BLOB_MAX_PAGES`] pages in the packet. [`Opcode::Nop`] uses no buffer, so only its
/// reserved fields are checked.
pub fn validate_sqe(sqe: &Sqe, g: &RegionGeometry, gpa_base: u64) -> bool {
    // Every field is named: a field added to the SQE fails to compile here until its check
    // is written (`timeout_ms` and `user_data` take any value).
    let SqeFields {
        opcode,
        timeout_ms: _,
        user_data: _,
        request,
        response,
        data,
        data_valid,
    } = sqe.fields();
    let in_arena = |b: SqeBuffer| g.in_arena(b.offset, b.len.into());
    sqe.reserved_is_zero()
        && match Opcode::from_code(opcode) {
            Some(Opcode::Nop) => true,
            Some(Opcode::Blob) => {
                request.len > 0
                    && response.len > 0
                    && data_valid <= data.len
                    && in_arena(request)
                    && in_arena(response)
                    && (data.len == 0 || in_arena(data))
                    && pages(gpa_base, sqe) <= u64::from(AZ_BLOB_MAX_PAGES)
            }
            None => false,
        }
}

/// Pages the packet of `sqe` would carry.
fn pages(base: u64, sqe: &Sqe) -> u64 {
    let n = |b: SqeBuffer| -> u64 {
        if b.len == 0 {
            return 0;
        }
        let gpa = base + b.offset;
        (gpa % HV_PAGE_SIZE + u64::from(b.len)).div_ceil(HV_PAGE_SIZE)
    };
    let f = sqe.fields();
    n(f.data) + n(f.request) + n(f.response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> RegionGeometry {
        RegionGeometry::new(2, 64, 128, 64 << 20, 4096).unwrap()
    }

    fn blob(g: &RegionGeometry) -> Sqe {
        let a = g.arena_offset;
        Sqe {
            opcode: Opcode::Blob.code(),
            request_offset: a,
            request_len: 100,
            response_offset: a + 4096,
            response_len: 200,
            data_offset: a + 8192,
            data_len: 4096,
            data_valid: 4096,
            ..Sqe::new_zeroed()
        }
    }

    #[test]
    fn accepts_well_formed_entries() {
        let g = geometry();
        assert!(validate_sqe(&blob(&g), &g, 1 << 32));
        assert!(validate_sqe(
            &Sqe {
                data_len: 0,
                data_valid: 0,
                data_offset: 0,
                ..blob(&g)
            },
            &g,
            1 << 32
        ));
        assert!(validate_sqe(
            &Sqe {
                opcode: Opcode::Nop.code(),
                ..Sqe::new_zeroed()
            },
            &g,
            0
        ));
    }

    #[test]
    fn refuses_each_kind_of_bad_field() {
        let g = geometry();
        let ok = blob(&g);
        let end = g.arena_offset + g.arena_len;
        let bad = [
            Sqe { opcode: 0, ..ok },
            Sqe { opcode: 3, ..ok },
            Sqe { flags: 1, ..ok },
            Sqe { reserved0: 1, ..ok },
            Sqe { reserved1: 1, ..ok },
            Sqe {
                request_len: 0,
                ..ok
            },
            Sqe {
                response_len: 0,
                ..ok
            },
            Sqe {
                data_valid: 4097,
                ..ok
            },
            Sqe {
                request_offset: 0,
                ..ok
            },
            Sqe {
                response_offset: g.queue_control(1),
                ..ok
            },
            Sqe {
                data_offset: end - 4095,
                ..ok
            },
            Sqe {
                data_offset: u64::MAX - 10,
                ..ok
            },
            Sqe {
                request_offset: end,
                request_len: 1,
                ..ok
            },
            Sqe {
                opcode: Opcode::Nop.code(),
                reserved1: 5,
                ..ok
            },
            // 8192 + 2 pages: more than one packet may carry.
            Sqe {
                data_len: 8192 * 4096,
                data_valid: 0,
                ..ok
            },
        ];
        for (i, s) in bad.iter().enumerate() {
            assert!(!validate_sqe(s, &g, 1 << 32), "entry {i} accepted: {s:?}");
        }
    }

    #[test]
    fn page_count_includes_offsets_within_pages() {
        let s = Sqe {
            request_offset: 4095,
            request_len: 2,
            response_offset: 0,
            response_len: 1,
            ..Sqe::new_zeroed()
        };
        assert_eq!(pages(0, &s), 3);
        // Shifted by one byte the request no longer straddles a page boundary.
        assert_eq!(pages(1, &s), 2);
        let s2 = Sqe {
            response_len: 2,
            ..s
        };
        assert_eq!(pages(4095, &s2), 1 + 2, "the response straddles a page");
    }

    #[test]
    fn intake_judges_each_copy_and_refuses_corrupt_indices() {
        use std::sync::atomic::Ordering::Relaxed;
        let g = RegionGeometry::new(1, 8, 16, 64 << 10, 4096).unwrap();
        let mem = Arc::new(blobring_shm::HeapMemory::new(g.region_len));
        let layout = QueueLayout::from_geometry(&g, 0).unwrap();
        layout.initialize(&*mem, 0).unwrap();
        let mut client = blobring_ring::ClientQueue::attach(mem.clone(), &layout).unwrap();
        let bad = Sqe {
            flags: 1,
            ..blob(&g)
        };
        let nop = Sqe {
            opcode: Opcode::Nop.code(),
            ..Sqe::new_zeroed()
        };
        assert_eq!(client.submit(&[blob(&g), bad, nop]).unwrap().count, 3);
        let mut q = DaemonQueue::new(mem.clone(), &layout, 0).unwrap();
        let mut buf = vec![Sqe::new_zeroed(); 4];
        let (mut verdicts, mut rejected) = (Vec::new(), 0);
        let mut take = |q: &mut DaemonQueue<_>, channels| {
            take_sqes(
                q,
                &mut buf,
                &mut verdicts,
                &g,
                1 << 32,
                channels,
                &mut rejected,
            )
            .map(|n| (n, verdicts.clone()))
        };
        let (n, v) = take(&mut q, false).unwrap();
        assert_eq!(n, 3);
        assert_eq!(v, [Admission::NoDevice, Admission::Invalid, Admission::Nop]);
        let sq_rejected = layout.control + qc::SQ_REJECTED;
        assert_eq!(mem.load_u32(sq_rejected, Relaxed).unwrap(), 1);
        assert_eq!(client.submit(&[blob(&g)]).unwrap().count, 1);
        assert_eq!(take(&mut q, true).unwrap().1, [Admission::Start]);
        // A tail beyond the ring is corruption: an error, and nothing is taken.
        mem.store_u32(layout.control + qc::SQ_TAIL, 100, Relaxed)
            .unwrap();
        assert!(matches!(
            take(&mut q, true),
            Err(RingError::Corrupt {
                field: "sq_tail",
                ..
            })
        ));
        assert_eq!((q.in_flight(), q.sq().head()), (4, 4));
    }

    #[test]
    fn completions_retire_only_their_request() {
        let mut slab = InFlight::new();
        let sqe = Sqe {
            response_len: 200,
            data_len: 4096,
            ..Sqe::new_zeroed()
        };
        let (key, generation) = slab.insert_waiting(0, sqe, Instant::now(), 0);
        let tid = transaction_id(key, generation);
        assert_eq!(slab.tid(key), Some(tid));
        let ok = AzBlobVspResponse {
            length: 4096,
            error: 0,
            response_len: 200,
        };
        assert_eq!(slab.match_completion(0, tid, &ok), None, "never sent");
        slab[key].state = ReqState::Sent { chan: 1 };
        assert_eq!(slab.match_completion(0, tid, &ok), None, "other channel");
        assert_eq!(
            slab.match_completion(1, tid ^ (1 << 32), &ok),
            None,
            "stale"
        );
        assert_eq!(
            slab.match_completion(1, tid & !0xffff_ffff, &ok),
            None,
            "id 0"
        );
        let long = AzBlobVspResponse { length: 4097, ..ok };
        assert_eq!(slab.match_completion(1, tid, &long), None, "body overflows");
        let needs_more = AzBlobVspResponse { error: 3, ..long };
        assert_eq!(slab.match_completion(1, tid, &needs_more), Some(key));
        slab[key].state = ReqState::TimedOut { chan: 1 };
        assert_eq!(slab.match_completion(1, tid, &ok), Some(key));
        slab.remove(key);
        let (again, _) = slab.insert_waiting(0, sqe, Instant::now(), 0);
        slab[again].state = ReqState::Sent { chan: 1 };
        assert_eq!(again, key, "slot reused");
        assert_eq!(slab.match_completion(1, tid, &ok), None, "old id is stale");
    }

    #[test]
    fn tokens_keep_tag_and_key_apart() {
        let t = token(Tag::Client, 12345);
        assert_eq!(t >> TAG_SHIFT, Tag::Client as u64);
        assert_eq!(t & ((1 << TAG_SHIFT) - 1), 12345);
        assert_eq!(Tag::split(t), (Some(Tag::Client), 12345));
        assert_eq!(Tag::split(t | (9 << TAG_SHIFT)).0, None);
    }
}
