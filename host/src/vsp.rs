//! The VMBus path of the emulated host: the device offer on the `sim` bus and the VSP workers
//! that execute Azure Blob requests straight out of (and into) guest memory.
//!
//! # How a request travels
//!
//! 1. [`VspServer::run`] accepts one guest (the daemon) at a time on the bus socket and runs a
//!    [`HostSession`] for it (bus protocol: [`blobring_vmbus::sim`]). When the guest hangs up,
//!    the next connection gets a fresh offer (a restarted daemon reconnects).
//! 2. Every channel the guest opens gets **one VSP worker thread**. It sleeps in its own
//!    io_uring reactor on a multishot poll of the channel's guest → host eventfd and of a
//!    "completions ready" eventfd, drains the guest → host ring with `interrupt_mask` set,
//!    and for each GPA-direct blob request: parses and validates the packet
//!    ([`parse_blob_request`]), translates the page list through the registered guest memory
//!    (any page outside a registered region → [`VspStatus::BadPage`]), copies the request head
//!    out of guest memory **once**, and hands the request to the session's executor pool —
//!    or, when its data buffer is at most [`VspConfig::inline_max`] bytes, the backend is a
//!    local store and no delaying fault is set, runs it itself at once (step 3 on the channel
//!    thread: no hand-off, no wake-up of another thread; counted in
//!    [`VspStats::inline_requests`]).
//! 3. A pool thread runs [`Executor::execute_lazy`]: the head is admitted (faults, signature)
//!    before the `data_valid` body bytes are copied out of guest memory (once; never for a refused
//!    request), with a [`BodySink`](crate::store::BodySink) over the guest's data buffer, so the
//!    response body lands **in place** in guest memory; for `fs` store reads of at least
//!    [`VspConfig::direct_min_len`] bytes the sink reads the blob file straight into the guest
//!    mapping with the pool thread's io_uring (plain `READ`s into the mapped region, no fixed
//!    buffers: the private `vsp::direct` module says why; without io_uring, `pread` into a bounce
//!    buffer and a copy). It then renders the response head into the response buffer (through a
//!    buffer the thread reuses from request to request) and sends the completion back to the
//!    channel's worker.
//! 4. The worker posts a completion packet (type 0xb, the request's transaction id, an
//!    [`AzBlobVspResponse`]). Requests complete **in whatever order they finish**: a slow or
//!    hung request occupies one pool thread, not the channel. If the host → guest ring is
//!    full, the worker sets `pending_send_sz` and waits for the guest's signal; a completion
//!    is never dropped unless the drop fault says so.
//!
//! # VSP status codes (`AzBlobVspResponse::error`)
//!
//! | code | constant | meaning | `length` | `response_len` |
//! |---|---|---|---|---|
//! | 0 | [`VspStatus::Ok`] | executed; the HTTP status (2xx–5xx) is in the response head | body bytes written to the data buffer | head bytes written to the response buffer |
//! | 1 | [`VspStatus::BadRequest`] | the packet is not a valid blob request (version, operation, buffer offsets/lengths, page list shape) | 0 | 0 |
//! | 2 | [`VspStatus::BadPage`] | a page of a buffer is outside the registered guest memory | 0 | 0 |
//! | 3 | [`VspStatus::BodyTooLarge`] | the response body does not fit the data buffer; nothing was written; retry with a larger buffer or a smaller range | bytes needed (saturated at `u32::MAX`) | 0 |
//! | 4 | [`VspStatus::HeadTooLarge`] | the response head does not fit the response buffer; the body may have been written | 0 | bytes needed |
//! | 5 | [`VspStatus::Internal`] | the host failed (guest memory access, executor pool gone) | 0 | 0 |
//!
//! A success is never silently truncated. Packets with transaction id 0 or without the
//! completion-requested flag cannot be answered and are dropped (and counted).
//!
//! # Fault injection on this path
//!
//! The executor's faults ([`crate::Faults`]: latency, 503 error rate, hang) apply as on REST;
//! a hung request holds one pool thread. This path adds its own ([`VspConfig::faults`]):
//! [`VspFaults::drop_completion_rate`] executes a request but never posts its completion;
//! [`VspFaults::rescind_after`] sends `RESCIND` on the bus right after the completion of the
//! N-th request (counted over the whole process); later requests of that session are dropped;
//! the session ends, and the next connection (the guest reconnects and re-handshakes) gets the
//! device offered again. It fires once per process.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use blobring_abi::vmbus::AzBlobVspResponse;
use blobring_reactor::{Reactor, ReactorConfig, SharedFd};
use blobring_vmbus::blob::{encode_blob_completion, parse_blob_request};
use blobring_vmbus::channel::{Channel, ChannelError};
use blobring_vmbus::guest_memory::GuestBuffer;
use blobring_vmbus::packet::Packet;
use blobring_vmbus::sim::host::{
    BusListener, HostConfig, HostEvent, HostSession, SharedGuestMemory,
};
use blobring_vmbus::sim::{
    BusError, DEFAULT_RING_SIZE, SimChannel, drain_eventfd, signal_eventfd, wait_readable,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::executor::{ExecuteError, Executor};

/// The VSP status codes, defined beside the response layout in `blobring_abi::vmbus`.
pub use blobring_abi::vmbus::VspStatus;

mod direct;
use direct::{DirectIo, GuestSink};

/// Default socket of the bus: `$XDG_RUNTIME_DIR/blobring/host.sock`, else
/// `/run/blobring/host.sock` (the daemon's default `--host-socket`).
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(d) => PathBuf::from(d).join("blobring").join("host.sock"),
        None => PathBuf::from("/run/blobring/host.sock"),
    }
}

/// Channels a host offers unless told otherwise (`--channels`).
pub const DEFAULT_CHANNELS: u32 = 4;
/// Executor threads per offered channel unless told otherwise (`--vsp-threads`).
pub const EXECUTOR_THREADS_PER_CHANNEL: usize = 4;

/// How the VMBus path is served.
#[derive(Debug, Clone)]
pub struct VspConfig {
    /// Channels offered: the primary plus `channels - 1` subchannels (1..=256).
    pub channels: u32,
    /// Bytes of each ring (per direction): a multiple of 4096 in [8 KiB, 64 MiB].
    pub ring_size: u32,
    /// Executor threads per session (shared by its channels); requests beyond this many wait
    /// in a queue. A hung request (fault) holds one thread.
    pub executor_threads: usize,
    /// Read `fs` store bodies straight into guest memory with io_uring (else `pread` into a
    /// bounce buffer and a copy).
    pub direct_reads: bool,
    /// Smallest body read straight into guest memory (smaller ones: one `pread` + copy).
    pub direct_min_len: u64,
    /// Requests whose data buffer holds at most this many bytes run on the channel's worker
    /// thread that received them, without a hand-off to the pool — when the backend is a
    /// local store and no latency or hang fault is set (a forwarded or delayed request would
    /// hold up the channel). 0 sends every request to the pool.
    pub inline_max: u64,
    /// Fault injection of this path (none by default).
    pub faults: VspFaults,
}

impl Default for VspConfig {
    fn default() -> Self {
        Self {
            channels: DEFAULT_CHANNELS,
            ring_size: DEFAULT_RING_SIZE,
            executor_threads: EXECUTOR_THREADS_PER_CHANNEL * DEFAULT_CHANNELS as usize,
            direct_reads: true,
            direct_min_len: 64 << 10,
            inline_max: 16 << 10,
            faults: VspFaults::default(),
        }
    }
}

/// Fault injection of the VMBus path alone, beside the executor's [`crate::Faults`] that
/// apply on every transport. The default injects nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VspFaults {
    /// Probability (0..=1) that a request is executed but its completion never posted.
    pub drop_completion_rate: f64,
    /// Rescind the device after the completion of this many requests (once per process).
    pub rescind_after: Option<u64>,
    /// Seed of the drop-completion RNG, so drops are reproducible.
    pub seed: u64,
}

/// Why the VMBus path could not be served.
#[derive(Debug, thiserror::Error)]
pub enum VspError {
    /// The configuration is unusable.
    #[error("Invalid VMBus configuration: {0}")]
    Config(String),
    /// The bus socket could not be set up or accepted on.
    #[error("VMBus bus socket {path}: {source}; check that the directory exists and is writable")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The failure.
        #[source]
        source: BusError,
    },
    /// A local bus failure inside a session.
    #[error("VMBus session failed: {0}")]
    Session(#[from] BusError),
    /// A thread could not be started.
    #[error("Could not start a VSP thread: {0}")]
    Thread(#[source] io::Error),
}

/// Counters of the VMBus path (whole process).
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    completions: AtomicU64,
    dropped_completions: AtomicU64,
    rejected: AtomicU64,
    direct_reads: AtomicU64,
    bounce_reads: AtomicU64,
    inline_requests: AtomicU64,
    sessions: AtomicU64,
}

/// A snapshot of the VMBus path's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VspStats {
    /// Blob requests received (valid packets with a transaction id).
    pub requests: u64,
    /// Completions posted.
    pub completions: u64,
    /// Completions dropped by the drop fault (or the rescind fault).
    pub dropped_completions: u64,
    /// Packets answered with a VSP error before execution, or unanswerable.
    pub rejected: u64,
    /// Bodies read straight into guest memory with io_uring.
    pub direct_reads: u64,
    /// File bodies copied with `pread` + copy instead (direct reads off or no io_uring;
    /// bodies below [`VspConfig::direct_min_len`] are not counted).
    pub bounce_reads: u64,
    /// Requests executed on the channel thread that received them ([`VspConfig::inline_max`]).
    pub inline_requests: u64,
    /// Guest sessions accepted.
    pub sessions: u64,
}

struct Shared {
    counters: Counters,
    /// The rescind fault fired (once per process).
    rescind_fired: AtomicBool,
}

/// The VMBus front end of the emulated host.
pub struct VspServer {
    listener: BusListener,
    exec: Arc<Executor>,
    cfg: Arc<VspConfig>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for VspServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VspServer")
            .field("path", &self.listener.path())
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl VspServer {
    /// Binds the bus socket at `path` (creating its parent directory).
    pub fn bind(path: &Path, exec: Arc<Executor>, cfg: VspConfig) -> Result<Self, VspError> {
        if !(1..=blobring_vmbus::sim::host::MAX_CHANNELS).contains(&cfg.channels) {
            return Err(VspError::Config(format!(
                "--channels {} must be between 1 and {}",
                cfg.channels,
                blobring_vmbus::sim::host::MAX_CHANNELS
            )));
        }
        let s = cfg.ring_size;
        if !(blobring_vmbus::sim::MIN_RING_SIZE..=blobring_vmbus::sim::MAX_RING_SIZE).contains(&s)
            || !s.is_multiple_of(4096)
        {
            return Err(VspError::Config(format!(
                "--ring-size {s} must be a multiple of 4096 between {} and {}",
                blobring_vmbus::sim::MIN_RING_SIZE,
                blobring_vmbus::sim::MAX_RING_SIZE
            )));
        }
        if cfg.executor_threads == 0 {
            return Err(VspError::Config(
                "executor threads must be at least 1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&cfg.faults.drop_completion_rate) {
            return Err(VspError::Config(format!(
                "--fault-drop-completion-rate must be between 0 and 1, got {}",
                cfg.faults.drop_completion_rate
            )));
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| VspError::Socket {
                path: path.to_owned(),
                source: BusError::Io {
                    op: "create socket directory",
                    source: e,
                },
            })?;
        }
        let listener = BusListener::bind(path).map_err(|source| VspError::Socket {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            listener,
            exec,
            cfg: Arc::new(cfg),
            shared: Arc::new(Shared {
                counters: Counters::default(),
                rescind_fired: AtomicBool::new(false),
            }),
        })
    }

    /// The bus socket path.
    pub fn path(&self) -> &Path {
        self.listener.path()
    }

    /// The counters so far.
    pub fn stats(&self) -> VspStats {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        VspStats {
            requests: l(&c.requests),
            completions: l(&c.completions),
            dropped_completions: l(&c.dropped_completions),
            rejected: l(&c.rejected),
            direct_reads: l(&c.direct_reads),
            bounce_reads: l(&c.bounce_reads),
            inline_requests: l(&c.inline_requests),
            sessions: l(&c.sessions),
        }
    }

    /// Serves guests, one at a time, until `stop` is set (checked every 50 ms).
    pub fn run(&self, stop: &AtomicBool) -> Result<(), VspError> {
        while !stop.load(Ordering::Relaxed) {
            let ready =
                wait_readable(self.listener.as_fd(), Duration::from_millis(50)).map_err(|e| {
                    VspError::Socket {
                        path: self.path().to_owned(),
                        source: BusError::Io {
                            op: "poll",
                            source: e,
                        },
                    }
                })?;
            if !ready {
                continue;
            }
            let sock = match self.listener.accept() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a guest on the VMBus socket failed");
                    continue;
                }
            };
            self.shared
                .counters
                .sessions
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!("guest connected on the VMBus socket");
            match self.session(sock, stop) {
                Ok(()) => tracing::info!("guest session ended"),
                Err(e) => tracing::warn!(error = %e, "guest session failed"),
            }
        }
        Ok(())
    }

    fn session(&self, sock: OwnedFd, stop: &AtomicBool) -> Result<(), VspError> {
        let host_cfg = HostConfig {
            max_channels: self.cfg.channels,
            ring_size: self.cfg.ring_size,
            ..HostConfig::default()
        };
        let mut session = HostSession::new(sock, host_cfg)?;
        let sess = Arc::new(SessionState {
            ended: AtomicBool::new(false),
            rescinding: AtomicBool::new(false),
            rescind_now: AtomicBool::new(false),
        });
        let pool = Pool::start(self.exec.clone(), &self.cfg, &self.shared)?;
        let mut workers: Vec<Worker> = Vec::new();
        let result = loop {
            let ev = match next_event(&mut session, stop, &sess) {
                Ok(Some(ev)) => ev,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            match ev {
                HostEvent::ChannelOpened(ch) => {
                    let index = ch.index();
                    let w = Worker::spawn(
                        ch,
                        WorkerCtx {
                            exec: self.exec.clone(),
                            memory: session.memory(),
                            jobs: pool.tx.clone(),
                            cfg: self.cfg.clone(),
                            shared: self.shared.clone(),
                            sess: sess.clone(),
                        },
                    )?;
                    tracing::debug!(index, "channel opened");
                    workers.push(w);
                }
                HostEvent::ChannelClosed(index) => {
                    if let Some(pos) = workers.iter().position(|w| w.index == index) {
                        workers.swap_remove(pos).stop();
                    }
                }
                HostEvent::Disconnected => break Ok(()),
                HostEvent::Rejected(e) => tracing::debug!(error = %e, "bus request refused"),
                _ => {}
            }
        };
        sess.ended.store(true, Ordering::Release);
        for w in workers {
            w.stop();
        }
        // Pool threads finish their current request (a hung one may take long) and exit when
        // the job queue closes; queued jobs of an ended session are skipped. Not joined.
        drop(pool);
        result
    }
}

/// The session's next bus event, waited for in steps of 10 ms; `None` once the server is
/// stopping or the rescind fault has fired (`RESCIND` sent).
fn next_event(
    session: &mut HostSession,
    stop: &AtomicBool,
    sess: &SessionState,
) -> Result<Option<HostEvent>, VspError> {
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if sess.rescind_now.load(Ordering::Acquire) {
            tracing::info!("rescinding the device (fault injection)");
            let _ = session.rescind(1);
            return Ok(None);
        }
        if let Some(ev) = session.try_next_event()? {
            return Ok(Some(ev));
        }
        let _ = wait_readable(session.as_fd(), Duration::from_millis(10));
    }
}

struct SessionState {
    /// The session is over: skip its queued jobs.
    ended: AtomicBool,
    /// The rescind fault counted its N-th request: drop later requests.
    rescinding: AtomicBool,
    /// The N-th completion was posted: send RESCIND.
    rescind_now: AtomicBool,
}

/// A request handed to the pool.
struct Job {
    trans_id: u64,
    head: Vec<u8>,
    /// Body bytes at the start of `data` (`data_valid`).
    body_len: usize,
    data: GuestBuffer,
    response: GuestBuffer,
    drop_completion: bool,
    rescind_after_post: bool,
    done: crossbeam_channel::Sender<Done>,
    wake: Arc<OwnedFd>,
    sess: Arc<SessionState>,
}

/// A finished request, back to its channel's worker.
struct Done {
    trans_id: u64,
    resp: AzBlobVspResponse,
    drop_completion: bool,
    rescind_after_post: bool,
}

struct Pool {
    tx: crossbeam_channel::Sender<Job>,
}

impl Pool {
    fn start(exec: Arc<Executor>, cfg: &VspConfig, shared: &Arc<Shared>) -> Result<Self, VspError> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        for i in 0..cfg.executor_threads {
            let (rx, exec, shared) = (rx.clone(), exec.clone(), shared.clone());
            let (direct, min_len) = (cfg.direct_reads, cfg.direct_min_len);
            std::thread::Builder::new()
                .name(format!("vsp-exec-{i}"))
                .spawn(move || {
                    let mut direct = direct.then(DirectIo::new).flatten();
                    let mut head = Vec::new();
                    for job in rx {
                        if job.sess.ended.load(Ordering::Acquire) {
                            continue;
                        }
                        let sink = sink(&job, direct.as_mut(), &shared, min_len);
                        let resp = execute(&exec, &job, sink, &mut head);
                        let _ = job.done.send(Done {
                            trans_id: job.trans_id,
                            resp,
                            drop_completion: job.drop_completion,
                            rescind_after_post: job.rescind_after_post,
                        });
                        let _ = signal_eventfd(job.wake.as_fd());
                    }
                })
                .map_err(VspError::Thread)?;
        }
        Ok(Self { tx })
    }
}

fn vsp_error(status: VspStatus) -> AzBlobVspResponse {
    AzBlobVspResponse {
        length: 0,
        error: status.code(),
        response_len: 0,
    }
}

fn sat32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The body destination of `job`: its data buffer in guest memory.
fn sink<'a>(
    job: &'a Job,
    direct: Option<&'a mut DirectIo>,
    shared: &'a Shared,
    min_len: u64,
) -> GuestSink<'a> {
    GuestSink {
        buf: &job.data,
        direct,
        shared,
        min_len,
    }
}

/// Runs one request (on a pool thread, or inline on its channel's thread); writes the body
/// and the head into guest memory, the head rendered first into `head` (the thread's buffer,
/// reused from request to request).
fn execute(
    exec: &Executor,
    job: &Job,
    mut sink: GuestSink<'_>,
    head: &mut Vec<u8>,
) -> AzBlobVspResponse {
    let read_body = |dst: &mut [u8]| job.data.read_at(0, dst).is_ok();
    match exec.execute_lazy(&job.head, job.body_len, read_body, &mut sink) {
        Ok(ex) => {
            let head_len = ex.head_len();
            if head_len as u64 > job.response.len() {
                return AzBlobVspResponse {
                    length: 0,
                    error: VspStatus::HeadTooLarge.code(),
                    response_len: sat32(head_len as u64),
                };
            }
            head.clear();
            head.resize(head_len, 0);
            let written = ex
                .write_head(head)
                .map(|n| job.response.write_at(0, &head[..n]));
            if !matches!(written, Ok(Ok(_))) {
                return vsp_error(VspStatus::Internal);
            }
            AzBlobVspResponse {
                length: sat32(ex.body_len as u64),
                error: VspStatus::Ok.code(),
                response_len: sat32(head_len as u64),
            }
        }
        Err(ExecuteError::BodyTooLarge { needed, .. }) => AzBlobVspResponse {
            length: sat32(needed),
            error: VspStatus::BodyTooLarge.code(),
            response_len: 0,
        },
        Err(ExecuteError::HeadTooLarge { needed, .. }) => AzBlobVspResponse {
            length: 0,
            error: VspStatus::HeadTooLarge.code(),
            response_len: sat32(needed as u64),
        },
        Err(e) => {
            tracing::debug!(error = %e, "request failed on the host");
            vsp_error(VspStatus::Internal)
        }
    }
}

/// What a VSP worker needs from its session.
struct WorkerCtx {
    /// For requests run inline ([`VspConfig::inline_max`]).
    exec: Arc<Executor>,
    memory: SharedGuestMemory,
    jobs: crossbeam_channel::Sender<Job>,
    cfg: Arc<VspConfig>,
    shared: Arc<Shared>,
    sess: Arc<SessionState>,
}

struct Worker {
    index: u32,
    stop: Arc<AtomicBool>,
    wake: Arc<OwnedFd>,
    thread: JoinHandle<()>,
}

impl Worker {
    fn spawn(ch: SimChannel, ctx: WorkerCtx) -> Result<Self, VspError> {
        let index = ch.index();
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(
            rustix::event::eventfd(
                0,
                rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
            )
            .map_err(|e| VspError::Thread(e.into()))?,
        );
        let (s, w) = (stop.clone(), wake.clone());
        let thread = std::thread::Builder::new()
            .name(format!("vsp-ch{index}"))
            .spawn(move || {
                if let Err(e) = worker_loop(ch, ctx, &s, w) {
                    tracing::warn!(channel = index, error = %e, "VSP worker stopped");
                }
            })
            .map_err(VspError::Thread)?;
        Ok(Self {
            index,
            stop,
            wake,
            thread,
        })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = signal_eventfd(self.wake.as_fd());
        let _ = self.thread.join();
    }
}

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error("channel: {0}")]
    Channel(#[from] ChannelError),
    #[error("reactor: {0}")]
    Reactor(#[from] blobring_reactor::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
}

const TOKEN_CHANNEL: u64 = 1;
const TOKEN_WAKE: u64 = 2;
/// Packets taken from the ring before completions are posted again.
const INTAKE_BATCH: usize = 256;

fn worker_loop(
    mut ch: SimChannel,
    ctx: WorkerCtx,
    stop: &AtomicBool,
    wake: Arc<OwnedFd>,
) -> Result<(), WorkerError> {
    let mut reactor = Reactor::with_config(ReactorConfig {
        sq_entries: 16,
        cq_entries: 64,
        fixed_buffer_slots: 0,
        ..ReactorConfig::default()
    })?;
    let chan_fd = ch.as_fd().try_clone_to_owned()?;
    reactor.poll_multishot(SharedFd::from(chan_fd), TOKEN_CHANNEL)?;
    reactor.poll_multishot(SharedFd::from(wake.clone()), TOKEN_WAKE)?;
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Done>();
    let mut rng = StdRng::seed_from_u64(ctx.cfg.faults.seed ^ (u64::from(ch.index()) << 32));
    let mut pending: VecDeque<(u64, AzBlobVspResponse, bool)> = VecDeque::new();
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    let mut scratch = Scratch::default();
    loop {
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        ch.clear_wakeups()?;
        drain_eventfd(wake.as_fd())?;
        // Intake, with interrupt_mask set: the guest need not signal packets we will see.
        ch.mask()?;
        let mut taken = 0;
        while taken < INTAKE_BATCH {
            let Some(p) = ch.recv(&mut buf)? else { break };
            taken += 1;
            if let Some(d) = intake(&p, &ctx, &mut rng, (&done_tx, &wake), &mut scratch) {
                settle(d, &mut pending, &ctx);
            }
        }
        ch.release()?;
        for d in done_rx.try_iter() {
            settle(d, &mut pending, &ctx);
        }
        let blocked = post(&mut ch, &mut pending, &mut out, &ctx)?;
        let waiting = ch.arm()?;
        if taken == INTAKE_BATCH || waiting || (!pending.is_empty() && !blocked) {
            continue;
        }
        if !done_rx.is_empty() {
            continue;
        }
        reactor.wait(1, Some(Duration::from_millis(100)), |_| {})?;
    }
}

/// A finished request: queued for posting, or dropped by the drop-completion fault.
fn settle(d: Done, pending: &mut VecDeque<(u64, AzBlobVspResponse, bool)>, ctx: &WorkerCtx) {
    if d.drop_completion {
        let counters = &ctx.shared.counters;
        counters.dropped_completions.fetch_add(1, Ordering::Relaxed);
        if d.rescind_after_post {
            ctx.sess.rescind_now.store(true, Ordering::Release);
        }
    } else {
        pending.push_back((d.trans_id, d.resp, d.rescind_after_post));
    }
}

/// A channel thread's buffers, reused from request to request: the request head copied out of
/// guest memory and the response head rendered, for requests run inline.
#[derive(Default)]
struct Scratch {
    head: Vec<u8>,
    rendered: Vec<u8>,
}

impl Scratch {
    /// Keeps `head` for the next request unless it grew past the bound the response headers'
    /// spares use (an unusually large request head is freed, not held for the channel's
    /// lifetime).
    fn keep_head(&mut self, head: Vec<u8>) {
        if head.capacity() <= crate::request::SPARE_MAX_BYTES {
            self.head = head;
        }
    }
}

/// Validates and copies one packet; runs it here when it is small
/// ([`VspConfig::inline_max`]), else queues it for the pool (`back`: where its completion
/// goes, and the eventfd that wakes this worker then). Returns what finished at once: a
/// request refused before execution, or one run inline.
fn intake(
    p: &Packet<'_>,
    ctx: &WorkerCtx,
    rng: &mut StdRng,
    (done, wake): (&crossbeam_channel::Sender<Done>, &Arc<OwnedFd>),
    scratch: &mut Scratch,
) -> Option<Done> {
    let refused = |trans_id, error| Done {
        trans_id,
        resp: vsp_error(error),
        drop_completion: false,
        rescind_after_post: false,
    };
    let counters = &ctx.shared.counters;
    let trans_id = p.trans_id();
    let req = match parse_blob_request(p) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, trans_id, "bad blob request packet");
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            return (p.completion_requested() && trans_id != 0)
                .then(|| refused(trans_id, VspStatus::BadRequest));
        }
    };
    if ctx.sess.rescinding.load(Ordering::Acquire) {
        // The device is being rescinded: nothing more is served on this session.
        counters.dropped_completions.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let n = counters.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let mut rescind_after_post = false;
    if let Some(limit) = ctx.cfg.faults.rescind_after
        && n >= limit
        && !ctx.shared.rescind_fired.swap(true, Ordering::AcqRel)
    {
        ctx.sess.rescinding.store(true, Ordering::Release);
        rescind_after_post = true;
    }
    let bufs = {
        let mem = ctx.memory.read().unwrap_or_else(|e| e.into_inner());
        req.buffers(&mem)
    };
    let bufs = match bufs {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(error = %e, trans_id, "blob request names memory outside the guest's regions");
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            if rescind_after_post {
                ctx.sess.rescind_now.store(true, Ordering::Release);
            }
            return Some(refused(trans_id, VspStatus::BadPage));
        }
    };
    // Copy the head out of guest memory once; the executor sees only the copy. The body
    // (`data_valid` bytes, within the data buffer: checked when the packet was parsed) is copied
    // the same way, but only once the head is admitted (`Executor::execute_lazy`): a request
    // refused on its head never has its body read. A request run here reuses this thread's
    // head buffer; one for the pool takes a buffer of its own.
    let inline = runs_inline(ctx, bufs.data.len());
    let mut head = if inline {
        std::mem::take(&mut scratch.head)
    } else {
        Vec::new()
    };
    head.clear();
    head.resize(bufs.request.len() as usize, 0);
    if bufs.request.read_at(0, &mut head).is_err() {
        if inline {
            scratch.keep_head(head);
        }
        return Some(refused(trans_id, VspStatus::Internal));
    }
    let rate = ctx.cfg.faults.drop_completion_rate;
    let drop_completion = rate > 0.0 && rng.random_bool(rate);
    let job = Job {
        trans_id,
        head,
        body_len: req.vsp.data_buffer_valid as usize,
        data: bufs.data,
        response: bufs.response,
        drop_completion,
        rescind_after_post,
        done: done.clone(),
        wake: wake.clone(),
        sess: ctx.sess.clone(),
    };
    if inline {
        counters.inline_requests.fetch_add(1, Ordering::Relaxed);
        let sink = sink(&job, None, &ctx.shared, ctx.cfg.direct_min_len);
        let resp = execute(&ctx.exec, &job, sink, &mut scratch.rendered);
        scratch.keep_head(job.head);
        return Some(Done {
            trans_id,
            resp,
            drop_completion,
            rescind_after_post,
        });
    }
    if ctx.jobs.send(job).is_err() {
        return Some(refused(trans_id, VspStatus::Internal));
    }
    None
}

/// Whether a request with a data buffer of `data_len` bytes runs on the channel's thread: a
/// small data buffer, a local store (no upstream round trip) and no injected delay (which must
/// hold a pool thread, not the channel).
fn runs_inline(ctx: &WorkerCtx, data_len: u64) -> bool {
    data_len <= ctx.cfg.inline_max
        && ctx.exec.backend().local().is_some()
        && !ctx.exec.admission_blocks()
}

/// Posts pending completions in order; returns `true` if the host → guest ring is full and
/// we wait for the guest to free space (`pending_send_sz` is set; its signal wakes us).
fn post(
    ch: &mut SimChannel,
    pending: &mut VecDeque<(u64, AzBlobVspResponse, bool)>,
    out: &mut Vec<u8>,
    ctx: &WorkerCtx,
) -> Result<bool, WorkerError> {
    let mut wrote = false;
    let mut retries = 0;
    let mut rescind = false;
    let blocked = loop {
        let Some(&(tid, resp, after)) = pending.front() else {
            break false;
        };
        if encode_blob_completion(out, tid, &resp).is_err() {
            // Only a zero transaction id fails to encode, and intake never queues one.
            pending.pop_front();
            continue;
        }
        match ch.send_uncommitted(out) {
            Ok(()) => {
                pending.pop_front();
                wrote = true;
                retries = 0;
                rescind |= after;
                ctx.shared
                    .counters
                    .completions
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(ChannelError::Full { needed }) => {
                if wrote {
                    ch.flush()?;
                    wrote = false;
                }
                retries += 1;
                if retries <= 2 && ch.wait_for_space(needed)? {
                    continue;
                }
                break true;
            }
            Err(e) => return Err(e.into()),
        }
    };
    if wrote {
        ch.flush()?;
    }
    if rescind {
        ctx.sess.rescind_now.store(true, Ordering::Release);
    }
    Ok(blocked)
}
