//! The thread-safe request layer over [`Connection`]: [`Client`], [`Lease`], [`Request`].
//!
//! Completions are reaped by whichever thread holds the *reaping role* ([`Inner::reaping`]):
//! a thread blocked in [`Pending::wait`] takes it when it is free and reaps for everyone
//! until its own completion arrives (no thread switch between the daemon's futex wake and
//! the caller), then hands it to another blocked caller still waiting. One background
//! *reaper* thread per client takes the role when no caller is blocked (async tasks on any
//! executor: the future only stores a [`std::task::Waker`]). No runtime is required.
//!
//! **Invariants:**
//! - the requests in flight are tracked in one place, the [`Connection`]'s table, each entry
//!   holding the request's waiter and buffers; when the daemon dies (or a hung-up connection
//!   is replaced) that table fails every entry with a synthesised `-ECONNRESET` completion,
//!   handled like any other;
//! - only the holder of the reaping role reaps and sleeps on the `cq_tail` futexes (the
//!   `cq_waiting` flag has room for one sleeper), and only it completes submitted requests;
//! - no lost wake-ups: a blocked caller registers in [`Inner::waiters`] before it tries the
//!   role and sleeps on its slot's condvar holding the slot's lock from that try on; every
//!   thread giving up the role then wakes a registered caller still waiting, and the last
//!   blocked caller to leave wakes the reaper thread if anything is still owed;
//! - arena buffers of a request are owned by the in-flight entry until its final completion;
//!   a completion flagged [`CQE_F_BUFFERS_LENT`](crate::CQE_F_BUFFERS_LENT) fails the request at once but parks its
//!   buffers until the matching [`CQE_F_BUFFERS_RELEASED`](crate::CQE_F_BUFFERS_RELEASED) completion: a lent buffer is never
//!   reused;
//! - every [`Lease`] remembers the connection generation it was allocated in; after a daemon
//!   restart (new connection, new arena) a stale lease is never freed into the new arena, and
//!   its bytes stay readable through its own reference to the old mapping;
//! - when the daemon dies every in-flight request fails with
//!   [`ClientError::ConnectionReset`]; the next request reconnects.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use blobring_abi::vmbus::VspStatus;
use blobring_abi::{Cqe, FromZeros, Opcode, Sqe, SqeBuffer, SqeFields};
use blobring_shm::{Mapping, SharedMemory};
use bytes::Bytes;

use crate::conn::Settled;
use crate::{ConnectError, ConnectOptions, Connection, Error, SleepSet, errno};

/// Why a request through a [`Client`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection to the daemon could be made.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection layer failed.
    #[error(transparent)]
    Connection(#[from] Error),
    /// The daemon died or restarted while the request was in flight; it may or may not have
    /// been executed. The next request reconnects.
    #[error(
        "blobringd restarted or stopped while the request was in flight (ECONNRESET); the \
         request may or may not have run: retry if it is idempotent"
    )]
    ConnectionReset,
    /// The request's deadline passed.
    #[error("the request timed out after {0:?} (raise the timeout or check the host)")]
    TimedOut(Duration),
    /// The daemon failed the request with an errno.
    #[error("blobringd failed the request: errno {0} ({1})")]
    Errno(i32, &'static str),
    /// The host refused or failed the request with this VSP status (other than the two
    /// buffer-size ones, which are [`ClientError::BodyTooLarge`] and
    /// [`ClientError::HeadTooLarge`]).
    #[error("the host could not execute the request: {}", vsp_failure(*.0))]
    Vsp(u32),
    /// The response body did not fit the data buffer (VSP status 3); `needed` bytes would.
    #[error(
        "the response body needs {needed} bytes but the data buffer holds fewer; retry with a larger buffer or a smaller range"
    )]
    BodyTooLarge {
        /// Bytes needed.
        needed: u64,
    },
    /// The response head did not fit the response buffer (VSP status 4).
    #[error("the response head needs {needed} bytes but the response buffer holds fewer")]
    HeadTooLarge {
        /// Bytes needed.
        needed: u32,
    },
    /// The arena cannot hold a buffer of this size even when empty.
    #[error(
        "a {len}-byte buffer does not fit the {arena}-byte data arena; use smaller chunks or \
         start blobringd with a larger --arena-size"
    )]
    TooLarge {
        /// Bytes asked for.
        len: u64,
        /// Arena capacity.
        arena: u64,
    },
    /// No arena space became free in time.
    #[error("no {len}-byte arena buffer became free within {waited:?}; fewer requests in flight")]
    ArenaBusy {
        /// Bytes asked for.
        len: u64,
        /// How long we waited.
        waited: Duration,
    },
    /// The host's response head is not valid HTTP/1.1.
    #[error("the host sent a malformed response head: {0}")]
    BadResponse(String),
}

impl ClientError {
    /// Whether retrying the same (idempotent) request may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::ConnectionReset
                | ClientError::TimedOut(_)
                | ClientError::Connect(_)
                | ClientError::ArenaBusy { .. }
        ) || matches!(self, ClientError::Errno(e, _) if *e == errno::ENODEV)
            || matches!(self, ClientError::Connection(Error::DaemonGone))
    }
}

/// Largest data buffer one request may carry: the VSP names at most
/// [`blobring_abi::vmbus::AZ_BLOB_MAX_PAGES`] pages per request (data, request head and
/// response head together; a buffer may straddle one extra page at each end), so 32 MiB less
/// 64 KiB of headroom. Larger transfers are split ([`crate::transfer`]).
pub const MAX_REQUEST_DATA: u64 = (blobring_abi::vmbus::AZ_BLOB_MAX_PAGES as u64 - 16) * 4096;

/// Longest single sleep of the reaper thread on the completion queues (a safety net only:
/// completions and the daemon's death both wake it at once).
const REAPER_SLEEP: Duration = Duration::from_secs(1);

/// Most request-head buffers a [`Client`] keeps for reuse ([`Client::head_buffer`]).
const HEAD_POOL: usize = 64;
/// The largest head buffer kept for reuse (a bigger one is freed).
const HEAD_POOL_MAX_CAP: usize = 16 << 10;
/// Capacity of a fresh head buffer (the SDK's heads are 300–700 bytes).
const HEAD_CAP: usize = 1024;
/// Most completion slots a [`Client`] keeps for reuse (see [`Pending`]'s `Drop`).
const SLOT_POOL: usize = 256;

/// What a failing VSP status means and what to do about it.
fn vsp_failure(code: u32) -> String {
    let Some(status) = VspStatus::from_code(code) else {
        return format!("unknown VSP status {code}; the host may be newer than this SDK");
    };
    let advice = match status {
        VspStatus::BadRequest => "blobringd and the host may be of different versions",
        VspStatus::BadPage => "a daemon bug: report it with blobringd's log",
        VspStatus::Internal => "check the host's log, then retry",
        VspStatus::Ok | VspStatus::BodyTooLarge | VspStatus::HeadTooLarge => "a client bug",
    };
    format!("{status} (VSP status {code}); {advice}")
}

fn errno_name(e: i32) -> &'static str {
    match e {
        errno::ETIMEDOUT => "ETIMEDOUT",
        errno::ECONNRESET => "ECONNRESET",
        errno::EINVAL => "EINVAL: the daemon rejected the request's buffers",
        errno::ENODEV => "ENODEV: the host device is gone",
        _ => "unknown",
    }
}

/// Tuning of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Daemon socket (default: [`crate::default_socket_path`]).
    pub socket: PathBuf,
    /// Sizes to ask the daemon for (0 = its defaults).
    pub connect: ConnectOptions,
    /// Deadline of a request when the caller sets none.
    pub default_timeout: Duration,
    /// How long a request waits for arena space before failing with
    /// [`ClientError::ArenaBusy`].
    pub arena_wait: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            socket: crate::default_socket_path(),
            connect: ConnectOptions::default(),
            default_timeout: Duration::from_secs(60),
            arena_wait: Duration::from_secs(60),
        }
    }
}

/// A completed request: the CQE, the response head and the data buffer (for reads, holding
/// [`Completion::data_len`] body bytes).
#[derive(Debug)]
pub struct Completion {
    /// The raw completion.
    pub cqe: Cqe,
    /// The response head the host wrote (`HTTP/1.1 …\r\n…\r\n\r\n`).
    pub head: Vec<u8>,
    /// The data buffer given with the request, returned.
    pub data: Option<Lease>,
}

impl Completion {
    /// Body bytes in the data buffer.
    pub fn data_len(&self) -> usize {
        self.cqe.data_len as usize
    }
}

/// One blob request: an HTTP/1.1 request head, a response-head capacity and an optional data
/// buffer (holding `data_valid` body bytes for a write; receiving the body of a read).
#[derive(Debug)]
pub struct Request {
    /// The request head (request line, headers, blank line).
    pub head: Vec<u8>,
    /// Bytes reserved for the response head.
    pub response_cap: u32,
    /// The data buffer.
    pub data: Option<Lease>,
    /// Body bytes present at the start of `data` (writes).
    pub data_valid: u32,
    /// Deadline (default: [`ClientOptions::default_timeout`]).
    pub timeout: Option<Duration>,
    /// Queue to use (default: the queue of the current CPU).
    pub queue: Option<u32>,
    /// Head + response buffer allocated ahead (async callers: without blocking the thread).
    head_lease: Option<Lease>,
}

impl Request {
    /// A request with `head`, an 8 KiB response-head buffer and no data buffer.
    pub fn new(head: Vec<u8>) -> Self {
        Self {
            head,
            response_cap: 8192,
            data: None,
            data_valid: 0,
            timeout: None,
            queue: None,
            head_lease: None,
        }
    }

    fn head_space(&self) -> (u64, u64) {
        let rsp = (self.head.len() as u64).div_ceil(64) * 64;
        (rsp, rsp + u64::from(self.response_cap))
    }
}

struct SlotState {
    result: Option<Result<Completion, ClientError>>,
    waker: Option<Waker>,
}

struct Slot {
    state: Mutex<SlotState>,
    cv: Condvar,
}

impl Slot {
    fn done(&self) -> bool {
        lock(&self.state).result.is_some()
    }

    fn complete(&self, r: Result<Completion, ClientError>) {
        let waker = {
            let mut s = lock(&self.state);
            s.result = Some(r);
            s.waker.take()
        };
        self.cv.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// What the SDK keeps of a request in flight (in the [`Connection`]'s table).
struct InFlight {
    /// Whom to tell; `None` once told (the request failed but its buffers stay lent).
    slot: Option<Arc<Slot>>,
    head_buf: Lease,
    response_at: usize,
    response_cap: u32,
    data: Option<Lease>,
    timeout: Duration,
}

struct State {
    conn: Option<Connection<InFlight>>,
    /// Connections given up on (their daemon hung up) whose requests the next reaping pass
    /// fails.
    retired: Vec<Connection<InFlight>>,
    generation: u64,
    next_ud: u64,
}

impl State {
    /// Whether anything waits for the reaping role: requests owed or connections to retire.
    fn has_work(&self) -> bool {
        !self.retired.is_empty() || self.conn.as_ref().is_some_and(|c| c.in_flight_total() > 0)
    }
}

pub(crate) struct Inner {
    opts: ClientOptions,
    state: Mutex<State>,
    /// The reaping role (see the module doc), with its scratch space. Only ever `try_lock`ed,
    /// never waited for.
    reaping: Mutex<Reaping>,
    /// Threads inside [`Pending::wait`]; while there are any, the reaper thread leaves the
    /// role to them.
    blocked: AtomicUsize,
    /// The slots of those threads, for the hand-off of the role.
    waiters: Mutex<Vec<Arc<Slot>>>,
    /// Signalled when requests are submitted and no one else will reap (wakes the idle
    /// reaper).
    work: Condvar,
    shutdown: AtomicBool,
    arena_len: Mutex<u64>,
    /// Tasks awaiting arena space ([`Client::alloc_async`]).
    space_waiters: Mutex<Vec<Waker>>,
    /// Request-head buffers whose bytes are already in the arena, for the next heads
    /// ([`Client::head_buffer`]; at most [`HEAD_POOL`]).
    heads: Mutex<Vec<Vec<u8>>>,
    /// Completion slots no one holds any more, emptied, for the next requests (at most
    /// [`SLOT_POOL`]).
    slots: Mutex<Vec<Arc<Slot>>>,
}

/// The scratch space of the reaping role, kept between passes so that reaping allocates
/// nothing in steady state.
struct Reaping {
    /// Completions copied out of a completion queue.
    cqes: Vec<Cqe>,
    /// Waiters to tell, once the state lock is released.
    finished: Vec<(Arc<Slot>, Result<Completion, ClientError>)>,
    /// Buffers to return to the arena, once the state lock is released.
    garbage: Vec<Lease>,
    /// The futex words to sleep on.
    sleep: SleepSet,
}

/// A request whose head is in its arena buffer, ready for its SQE.
struct Prepared {
    /// The request (its head buffer already recycled).
    req: Request,
    /// The arena buffer holding the request head, with room for the response head at `rsp`.
    buf: Lease,
    head_len: u32,
    rsp: u64,
}

impl Prepared {
    /// Whether its buffers belong to a connection older than `generation` (the daemon
    /// restarted between allocation and submission).
    fn stale(&self, generation: u64) -> bool {
        self.buf.generation != generation
            || self
                .req
                .data
                .as_ref()
                .is_some_and(|d| d.generation != generation)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Dropped with the last [`Client`] clone: stops the reaper.
struct Handle(Arc<Inner>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.shutdown.store(true, Ordering::Release);
        self.0.work.notify_all();
    }
}

/// A thread-safe handle to `blobringd` (cheap to clone; all clones share one connection).
///
/// Requests go to the queue of the calling thread's CPU unless [`Request::queue`] says
/// otherwise. The connection is re-established automatically after a daemon restart.
///
/// ```no_run
/// # fn main() -> Result<(), blobring::ClientError> {
/// let client = blobring::Client::connect_default()?;
/// let lease = client.alloc(4096)?;
/// lease.write(0, b"hello")?;
/// assert_eq!(&lease.to_vec(5)?, b"hello");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    _handle: Arc<Handle>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("socket", &self.inner.opts.socket)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the daemon at [`crate::default_socket_path`] (`BLOBRING_SOCKET`).
    pub fn connect_default() -> Result<Self, ClientError> {
        Self::connect_with(ClientOptions::default())
    }

    /// Connects to the daemon socket at `path`.
    pub fn connect(path: impl Into<PathBuf>) -> Result<Self, ClientError> {
        Self::connect_with(ClientOptions {
            socket: path.into(),
            ..ClientOptions::default()
        })
    }

    /// Connects with explicit options.
    pub fn connect_with(opts: ClientOptions) -> Result<Self, ClientError> {
        let conn = Connection::open(&opts.socket, opts.connect)?;
        let arena = conn.geometry().arena_len;
        let inner = Arc::new(Inner {
            opts,
            state: Mutex::new(State {
                conn: Some(conn),
                retired: Vec::new(),
                generation: 1,
                next_ud: 1,
            }),
            reaping: Mutex::new(Reaping {
                cqes: vec![Cqe::new_zeroed(); 256],
                finished: Vec::new(),
                garbage: Vec::new(),
                sleep: SleepSet::default(),
            }),
            blocked: AtomicUsize::new(0),
            waiters: Mutex::new(Vec::new()),
            work: Condvar::new(),
            shutdown: AtomicBool::new(false),
            arena_len: Mutex::new(arena),
            space_waiters: Mutex::new(Vec::new()),
            heads: Mutex::new(Vec::with_capacity(HEAD_POOL)),
            slots: Mutex::new(Vec::with_capacity(SLOT_POOL)),
        });
        let reaper = inner.clone();
        std::thread::Builder::new()
            .name("blobring-reaper".into())
            .spawn(move || reaper.reap_loop())
            .map_err(|e| {
                ClientError::Connect(ConnectError::Io {
                    op: "spawn the reaper thread",
                    source: e,
                })
            })?;
        Ok(Self {
            _handle: Arc::new(Handle(inner.clone())),
            inner,
        })
    }

    /// Queue pairs of the current connection (reconnecting if needed).
    pub fn n_queues(&self) -> Result<u32, ClientError> {
        let mut st = lock(&self.inner.state);
        Ok(self.inner.ensure_conn(&mut st)?.0.n_queues())
    }

    /// Bytes of the data arena (the most a single buffer can hold).
    pub fn arena_len(&self) -> u64 {
        *lock(&self.inner.arena_len)
    }

    /// Bytes of the data arena free right now (leases, in-flight requests and zero-copy
    /// `Bytes` hold the rest).
    pub fn arena_free(&self) -> Result<u64, ClientError> {
        let mut st = lock(&self.inner.state);
        Ok(self.inner.ensure_conn(&mut st)?.0.arena_free())
    }

    /// The address range of the current connection's mapped region as numbers:
    /// `(start, len)`. For diagnostics and for tests that show a zero-copy view
    /// ([`Lease::into_bytes`]) lies inside the shared memory; never turn it into a pointer.
    pub fn region_span(&self) -> Result<(usize, usize), ClientError> {
        let mut st = lock(&self.inner.state);
        let (ptr, len) = self.inner.ensure_conn(&mut st)?.0.region().as_raw_parts();
        Ok((ptr as usize, len))
    }

    /// Allocates a `len`-byte buffer in the arena, waiting (up to
    /// [`ClientOptions::arena_wait`]) for space held by other requests.
    pub fn alloc(&self, len: u64) -> Result<Lease, ClientError> {
        self.inner.alloc(len, self.inner.opts.arena_wait)
    }

    /// Allocates without waiting: `Ok(None)` when the arena is momentarily full.
    pub fn try_alloc(&self, len: u64) -> Result<Option<Lease>, ClientError> {
        self.inner.alloc_once(len)
    }

    /// Submits a request; the returned future resolves on completion (works on any executor,
    /// or call [`Pending::wait`] from a plain thread).
    pub fn submit(&self, req: Request) -> Result<Pending, ClientError> {
        self.inner.submit_one(req, false)
    }

    /// Submits several requests with one publication per queue where possible.
    pub fn submit_batch(&self, reqs: Vec<Request>) -> Result<Vec<Pending>, ClientError> {
        self.inner.submit_batch(reqs, false)
    }

    /// Submits and waits (blocking the calling thread, which reaps completions itself when no
    /// one else does: see [`Pending::wait`]).
    pub fn execute_blocking(&self, req: Request) -> Result<Completion, ClientError> {
        self.inner.submit_one(req, true)?.wait()
    }

    /// Submits and awaits. Arena space is awaited without blocking the thread.
    pub async fn execute(&self, req: Request) -> Result<Completion, ClientError> {
        self.start(req).await?.await
    }

    /// An empty buffer to render a request head into ([`Request::new`]): one a submitted
    /// request left behind once its head was copied into the arena, when there is one, so
    /// heads are rendered without allocating in steady state.
    pub(crate) fn head_buffer(&self) -> Vec<u8> {
        lock(&self.inner.heads)
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(HEAD_CAP))
    }

    /// Submits once a head buffer is free, awaiting it (at most the request's deadline or
    /// [`ClientOptions::arena_wait`]) without blocking the thread.
    pub(crate) async fn start(&self, mut req: Request) -> Result<Pending, ClientError> {
        let wait = req.timeout.map_or(self.inner.opts.arena_wait, |t| {
            t.min(self.inner.opts.arena_wait)
        });
        self.reserve_head_within(&mut req, wait).await?;
        self.submit(req)
    }

    /// Gives `req` its head buffer (request head and response head) now if the arena has
    /// room; `false`, with `req` unchanged, if not. Callers that hold buffers only they can
    /// free (a transfer's own completed ranges) try this first, and wait only when they hold
    /// nothing: waiting on space they hold themselves would never end.
    pub(crate) fn try_reserve_head(&self, req: &mut Request) -> Result<bool, ClientError> {
        let (_, total) = req.head_space();
        if req.head_lease.as_ref().is_some_and(|l| l.len >= total) {
            return Ok(true);
        }
        let Some(l) = self.inner.alloc_once(total)? else {
            return Ok(false);
        };
        req.head_lease = Some(l);
        Ok(true)
    }

    /// Awaits (at most `wait`) a head buffer for `req` (see [`Client::try_reserve_head`]).
    pub(crate) async fn reserve_head_within(
        &self,
        req: &mut Request,
        wait: Duration,
    ) -> Result<(), ClientError> {
        if !self.try_reserve_head(req)? {
            let (_, total) = req.head_space();
            req.head_lease = Some(self.alloc_async_within(total, wait).await?);
        }
        Ok(())
    }

    /// Allocates a `len`-byte arena buffer, awaiting (without blocking the thread) space that
    /// other requests or leases hold. Wakes when any lease is returned; fails with
    /// [`ClientError::ArenaBusy`] after [`ClientOptions::arena_wait`] (e.g. when the caller
    /// itself holds the space, in leases or zero-copy `Bytes`).
    pub async fn alloc_async(&self, len: u64) -> Result<Lease, ClientError> {
        self.alloc_async_within(len, self.inner.opts.arena_wait)
            .await
    }

    /// [`Client::alloc_async`] waiting at most `wait` for space: a request with a deadline
    /// passes its deadline here, so that a call never outlives it waiting for arena space
    /// (space can stay taken for long: buffers lent to a host that has not answered a
    /// timed-out request are not reused until it does).
    pub async fn alloc_async_within(&self, len: u64, wait: Duration) -> Result<Lease, ClientError> {
        let start = Instant::now();
        let mut timer: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>> = None;
        std::future::poll_fn(|cx| {
            if let Some(l) = self.inner.alloc_once(len)? {
                return Poll::Ready(Ok(l));
            }
            lock(&self.inner.space_waiters).push(cx.waker().clone());
            // Re-check: a lease may have been returned before the waker was registered.
            if let Some(l) = self.inner.alloc_once(len)? {
                return Poll::Ready(Ok(l));
            }
            let t = timer.get_or_insert_with(|| Box::pin(crate::timer::sleep(wait)));
            if t.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(ClientError::ArenaBusy {
                    len,
                    waited: start.elapsed(),
                }));
            }
            Poll::Pending
        })
        .await
    }
}

impl Inner {
    fn ensure_conn<'a>(
        &self,
        st: &'a mut State,
    ) -> Result<(&'a mut Connection<InFlight>, u64), ClientError> {
        // A connection whose daemon is gone is replaced here, so the first request after a
        // daemon restart reconnects (requests still owed by the old one are failed by the
        // next reaping pass, which finds it retired; leases of the old arena carry the old
        // generation).
        if st.conn.as_ref().is_some_and(Connection::hung_up) {
            let old = st.conn.take();
            st.retired.extend(old);
            self.work.notify_all();
        }
        if st.conn.is_none() {
            let conn = Connection::open(&self.opts.socket, self.opts.connect)?;
            *lock(&self.arena_len) = conn.geometry().arena_len;
            st.generation += 1;
            st.conn = Some(conn);
        }
        let g = st.generation;
        Ok((st.conn.as_mut().expect("just set"), g))
    }

    fn alloc_once(self: &Arc<Self>, len: u64) -> Result<Option<Lease>, ClientError> {
        let len = len.max(1);
        let mut st = lock(&self.state);
        let (conn, generation) = self.ensure_conn(&mut st)?;
        let arena = conn.geometry().arena_len;
        if len > arena {
            return Err(ClientError::TooLarge { len, arena });
        }
        match conn.alloc(len, 4096) {
            Ok(a) => Ok(Some(Lease {
                inner: self.clone(),
                map: conn.region().clone(),
                offset: a.offset,
                len,
                generation,
            })),
            Err(Error::Arena(blobring_shm::ArenaError::OutOfSpace { .. })) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn alloc(self: &Arc<Self>, len: u64, wait: Duration) -> Result<Lease, ClientError> {
        let start = Instant::now();
        let mut nap = Duration::from_micros(20);
        loop {
            if let Some(l) = self.alloc_once(len)? {
                return Ok(l);
            }
            if start.elapsed() >= wait {
                return Err(ClientError::ArenaBusy {
                    len,
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(2));
        }
    }

    /// Puts `r`'s head into its arena buffer (allocated now unless reserved ahead; allocation
    /// may wait for space) and keeps the head's own buffer for the next head.
    fn prepare(self: &Arc<Self>, mut r: Request) -> Result<Prepared, ClientError> {
        let (rsp, total) = r.head_space();
        let buf = match r.head_lease.take() {
            Some(b) if b.len >= total => b,
            _ => self.alloc(total, self.opts.arena_wait)?,
        };
        buf.write(0, &r.head)?;
        let head_len = r.head.len() as u32;
        self.recycle_head(std::mem::take(&mut r.head));
        Ok(Prepared {
            req: r,
            buf,
            head_len,
            rsp,
        })
    }

    /// Keeps `head` (its bytes already copied into the arena) for [`Client::head_buffer`].
    fn recycle_head(&self, mut head: Vec<u8>) {
        if head.capacity() == 0 || head.capacity() > HEAD_POOL_MAX_CAP {
            return;
        }
        head.clear();
        let mut pool = lock(&self.heads);
        if pool.len() < HEAD_POOL {
            pool.push(head);
        }
    }

    /// Locks the state for submitting `prepared`: the current connection (reconnecting if
    /// needed), its generation and queue count. Fails with
    /// [`ClientError::ConnectionReset`] if the daemon restarted since their buffers were
    /// allocated (the buffers belong to the old arena; the caller drops them after the lock).
    fn lock_for(
        &self,
        prepared: &[Prepared],
    ) -> Result<(MutexGuard<'_, State>, u64, u32), ClientError> {
        let mut st = lock(&self.state);
        let (conn, generation) = self.ensure_conn(&mut st)?;
        let n_queues = conn.n_queues();
        if prepared.iter().any(|p| p.stale(generation)) {
            drop(st);
            return Err(ClientError::ConnectionReset);
        }
        Ok((st, generation, n_queues))
    }

    /// After submitting: releases the state lock and, unless `caller_reaps` (the caller is
    /// about to wait in [`Pending::wait`] and will reap itself) or a blocked caller holds (or
    /// is about to be handed) the reaping role, wakes the reaper thread.
    fn submitted(&self, st: MutexGuard<'_, State>, caller_reaps: bool) {
        let wake = !caller_reaps && self.blocked.load(Ordering::SeqCst) == 0;
        drop(st);
        if wake {
            self.work.notify_all();
        }
    }

    /// Submits one request (see [`Inner::submit_batch`]) without a batch's bookkeeping.
    fn submit_one(
        self: &Arc<Self>,
        req: Request,
        caller_reaps: bool,
    ) -> Result<Pending, ClientError> {
        let cpu = rustix::thread::sched_getcpu() as u32;
        let p = self.prepare(req)?;
        let (mut st, generation, n_queues) = self.lock_for(std::slice::from_ref(&p))?;
        let q = p.req.queue.unwrap_or(cpu) % n_queues;
        let (sqe, f, pending) = self.in_flight(&mut st, p);
        let st = self.publish(
            st,
            generation,
            q,
            std::slice::from_ref(&sqe),
            std::iter::once(f),
        )?;
        self.submitted(st, caller_reaps);
        Ok(pending)
    }

    /// Submits `reqs`, with one publication per queue. `caller_reaps`: the caller is about to
    /// wait for them in [`Pending::wait`] and will reap itself, so the reaper thread is not
    /// woken.
    fn submit_batch(
        self: &Arc<Self>,
        reqs: Vec<Request>,
        caller_reaps: bool,
    ) -> Result<Vec<Pending>, ClientError> {
        let cpu = rustix::thread::sched_getcpu() as u32;
        // Prepare head buffers first (allocation may wait for space).
        let prepared = reqs
            .into_iter()
            .map(|r| self.prepare(r))
            .collect::<Result<Vec<_>, _>>()?;
        let (mut st, generation, n_queues) = self.lock_for(&prepared)?;
        let mut out = Vec::with_capacity(prepared.len());
        let mut by_queue: HashMap<u32, (Vec<Sqe>, Vec<InFlight>)> = HashMap::new();
        for p in prepared {
            let q = p.req.queue.unwrap_or(cpu) % n_queues;
            let (sqe, f, pending) = self.in_flight(&mut st, p);
            out.push(pending);
            let (sqes, states) = by_queue.entry(q).or_default();
            sqes.push(sqe);
            states.push(f);
        }
        for (q, (sqes, states)) in by_queue {
            st = self.publish(st, generation, q, &sqes, states.into_iter())?;
        }
        self.submitted(st, caller_reaps);
        Ok(out)
    }

    /// The SQE of `p` (with the next `user_data`), what the SDK keeps of it while it is in
    /// flight, and its [`Pending`].
    fn in_flight(self: &Arc<Self>, st: &mut State, p: Prepared) -> (Sqe, InFlight, Pending) {
        let Prepared {
            req: r,
            buf,
            head_len,
            rsp,
        } = p;
        let ud = st.next_ud;
        st.next_ud += 1;
        let timeout = r.timeout.unwrap_or(self.opts.default_timeout);
        let (data_offset, data_len) = r
            .data
            .as_ref()
            .map_or((0, 0), |d| (d.offset, d.len.min(u32::MAX as u64) as u32));
        let sqe = Sqe::new(SqeFields {
            opcode: Opcode::Blob.code(),
            timeout_ms: timeout.as_millis().clamp(1, u32::MAX as u128) as u32,
            user_data: ud,
            request: SqeBuffer {
                offset: buf.offset,
                len: head_len,
            },
            response: SqeBuffer {
                offset: buf.offset + rsp,
                len: r.response_cap,
            },
            data: SqeBuffer {
                offset: data_offset,
                len: data_len,
            },
            data_valid: r.data_valid.min(data_len),
        });
        let slot = lock(&self.slots).pop().unwrap_or_else(|| {
            Arc::new(Slot {
                state: Mutex::new(SlotState {
                    result: None,
                    waker: None,
                }),
                cv: Condvar::new(),
            })
        });
        let pending = Pending {
            slot: slot.clone(),
            inner: self.clone(),
        };
        let f = InFlight {
            slot: Some(slot),
            head_buf: buf,
            response_at: rsp as usize,
            response_cap: r.response_cap,
            data: r.data,
            timeout,
        };
        (sqe, f, pending)
    }

    /// Publishes `sqes` (with their `states`) on queue `q` of connection `generation`,
    /// reaping while the SQ is full; gives the state lock back.
    fn publish<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        generation: u64,
        q: u32,
        sqes: &[Sqe],
        mut states: impl Iterator<Item = InFlight>,
    ) -> Result<MutexGuard<'a, State>, ClientError> {
        let mut done = 0;
        let mut spins = 0u32;
        while done < sqes.len() {
            let current = st.generation == generation;
            let r = match st.conn.as_mut() {
                Some(c) if current => c.submit_tracked(q, &sqes[done..], &mut states),
                _ => Err(Error::DaemonGone),
            };
            match r {
                Ok(n) => done += n,
                Err(e) => {
                    // The requests not published hold leases: drop them without the lock.
                    drop(st);
                    drop(states);
                    return Err(match e {
                        Error::DaemonGone => ClientError::ConnectionReset,
                        e => e.into(),
                    });
                }
            }
            if done < sqes.len() {
                // The SQ is full: completions must be reaped before the daemon takes more.
                drop(st);
                self.work.notify_all();
                if let Some(mut role) = self.try_reaping() {
                    self.reap_pass(&mut role);
                    drop(role);
                    self.hand_off();
                }
                spins += 1;
                std::thread::sleep(Duration::from_micros(20 * u64::from(spins.min(50))));
                st = lock(&self.state);
            }
        }
        Ok(st)
    }

    /// The reaping role, if no one holds it.
    fn try_reaping(&self) -> Option<MutexGuard<'_, Reaping>> {
        match self.reaping.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// One pass of the holder of the reaping role over every completion queue: settles each
    /// completion, and fails every request of a connection whose daemon is gone (through
    /// [`Connection::fail_all`], like a completion the daemon posted). Returns whether
    /// anything was settled.
    fn reap_pass(&self, r: &mut Reaping) -> bool {
        let Reaping {
            cqes,
            finished,
            garbage,
            ..
        } = r;
        let mut settle = |c: &Cqe, s: Settled<'_, InFlight>| settle(c, s, finished, garbage);
        let mut st = lock(&self.state);
        let mut gone = std::mem::take(&mut st.retired);
        let (mut got, mut dead) = (0, false);
        if let Some(conn) = st.conn.as_mut() {
            for q in 0..conn.n_queues() {
                loop {
                    match conn.reap_with(q, cqes, &mut settle) {
                        Ok(n) if n == cqes.len() => got += n,
                        Ok(n) => {
                            got += n;
                            break;
                        }
                        Err(_) => {
                            dead = true;
                            break;
                        }
                    }
                }
            }
            // Every queue is drained: a daemon that hung up posts nothing more.
            dead |= conn.hung_up();
        }
        if dead {
            // The next request reconnects.
            gone.extend(st.conn.take());
        }
        for c in &mut gone {
            c.fail_all(&mut settle);
        }
        drop(st);
        // Buffers (leases) and connections are dropped without the lock.
        drop(gone);
        garbage.clear();
        let progressed = got > 0 || !finished.is_empty();
        for (slot, r) in finished.drain(..) {
            slot.complete(r);
        }
        progressed
    }

    /// Sleeps, holding the reaping role, until a completion is posted on any queue, the
    /// daemon hangs up, or [`REAPER_SLEEP`] passes; returns at once if completions are there.
    fn sleep_on_queues(&self, set: &mut SleepSet) {
        let mut st = lock(&self.state);
        let generation = st.generation;
        // Arm every queue's `cq_waiting` flag while holding the connection, then sleep on all
        // `cq_tail` futexes at once without it. The daemon wakes the futex when it posts a
        // completion; the connection's watcher thread wakes it when the daemon hangs up.
        let sleep = match st.conn.as_mut() {
            Some(c) => c.prepare_sleep_in(set).unwrap_or(false),
            None => {
                // Nothing to sleep on (not reached: a request owed is owed by a connection).
                drop(st);
                std::thread::sleep(Duration::from_millis(1));
                return;
            }
        };
        drop(st);
        if sleep {
            // Bounded only as a safety net: a wake is never needed to notice anything.
            let _ = set.sleep(Some(REAPER_SLEEP));
            set.clear();
            let mut st = lock(&self.state);
            if st.generation == generation
                && let Some(c) = st.conn.as_mut()
            {
                c.finish_sleep();
            }
        }
    }

    /// Called after giving up the reaping role: wakes one blocked caller still waiting for its
    /// completion, to take the role over.
    fn hand_off(&self) {
        for slot in lock(&self.waiters).iter() {
            if lock(&slot.state).result.is_none() {
                slot.cv.notify_all();
                return;
            }
        }
    }

    /// [`Pending::wait`]: waits for `slot`, reaping for everyone while no one else does.
    fn wait_blocking(&self, slot: &Arc<Slot>) -> Result<Completion, ClientError> {
        let _blocked = Blocked::enter(self, slot);
        loop {
            let mut s = lock(&slot.state);
            if let Some(r) = s.result.take() {
                return r;
            }
            let Some(mut role) = self.try_reaping() else {
                // Someone else reaps; it completes our slot or hands us the role.
                drop(slot.cv.wait(s));
                continue;
            };
            drop(s);
            self.unregister(slot);
            while !slot.done() {
                if !self.reap_pass(&mut role) && !slot.done() {
                    self.sleep_on_queues(&mut role.sleep);
                }
            }
            drop(role);
            self.hand_off();
        }
    }

    fn unregister(&self, slot: &Arc<Slot>) {
        lock(&self.waiters).retain(|w| !Arc::ptr_eq(w, slot));
    }

    /// The reaper thread: holds the reaping role while requests are owed and no caller is
    /// blocked in [`Pending::wait`] (async callers, and the fallback); idle otherwise.
    fn reap_loop(self: Arc<Self>) {
        loop {
            let st = lock(&self.state);
            let work = st.has_work();
            if !work && self.shutdown.load(Ordering::Acquire) {
                return;
            }
            // Tried under the state lock: a blocked caller leaving notifies `work` under it.
            let role = if work && self.blocked.load(Ordering::SeqCst) == 0 {
                self.try_reaping()
            } else {
                None
            };
            let Some(mut role) = role else {
                drop(self.work.wait_timeout(st, Duration::from_millis(100)));
                continue;
            };
            drop(st);
            if !self.reap_pass(&mut role) && self.blocked.load(Ordering::SeqCst) == 0 {
                self.sleep_on_queues(&mut role.sleep);
            }
            drop(role);
            if self.blocked.load(Ordering::SeqCst) > 0 {
                self.hand_off();
            }
        }
    }
}

/// A thread inside [`Pending::wait`]: counted in [`Inner::blocked`] and registered in
/// [`Inner::waiters`] (before it first tries the reaping role: whoever holds the role then
/// wakes it when leaving) until it leaves, also by unwinding.
struct Blocked<'a> {
    inner: &'a Inner,
    slot: &'a Arc<Slot>,
}

impl<'a> Blocked<'a> {
    fn enter(inner: &'a Inner, slot: &'a Arc<Slot>) -> Self {
        inner.blocked.fetch_add(1, Ordering::SeqCst);
        lock(&inner.waiters).push(slot.clone());
        Self { inner, slot }
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        self.inner.unregister(self.slot);
        if self.inner.blocked.fetch_sub(1, Ordering::SeqCst) == 1 {
            // The last blocked caller leaves: the reaper thread takes over what is still owed
            // (notified under the state lock, under which the reaper thread decides to wait).
            let st = lock(&self.inner.state);
            if st.has_work() {
                self.inner.work.notify_all();
            }
        }
    }
}

/// A completion (or a connection's synthesised `-ECONNRESET`) for a request in flight: its
/// waiter is told (`finished`) and buffers no longer needed go to `garbage` (dropped without
/// the state lock: a [`Lease`] takes it on drop).
fn settle(
    c: &Cqe,
    s: Settled<'_, InFlight>,
    finished: &mut Vec<(Arc<Slot>, Result<Completion, ClientError>)>,
    garbage: &mut Vec<Lease>,
) {
    let f = match s {
        Settled::Lent(f) => {
            // The host may still write the buffers: fail the request now and keep them (in the
            // connection's table) until the completion that releases them.
            if let Some(slot) = f.slot.take() {
                finished.push((slot, Err(ClientError::TimedOut(f.timeout))));
            }
            return;
        }
        Settled::Final(f) => f,
    };
    let Some(slot) = f.slot else {
        // A lent request's buffers came back (or its daemon is gone): now they may be reused.
        garbage.push(f.head_buf);
        garbage.extend(f.data);
        return;
    };
    let r = if c.res != 0 {
        let e = -c.res;
        Err(match e {
            errno::ETIMEDOUT => ClientError::TimedOut(f.timeout),
            errno::ECONNRESET => ClientError::ConnectionReset,
            e => ClientError::Errno(e, errno_name(e)),
        })
    } else {
        match VspStatus::from_code(c.vsp_status) {
            Some(VspStatus::Ok) => {
                let n = c.response_len.min(f.response_cap) as usize;
                let mut head = vec![0u8; n];
                f.head_buf.read(f.response_at, &mut head).map(|()| head)
            }
            Some(VspStatus::BodyTooLarge) => Err(ClientError::BodyTooLarge {
                needed: c.data_len.into(),
            }),
            Some(VspStatus::HeadTooLarge) => Err(ClientError::HeadTooLarge {
                needed: c.response_len,
            }),
            _ => Err(ClientError::Vsp(c.vsp_status)),
        }
    };
    garbage.push(f.head_buf);
    match r {
        Ok(head) => finished.push((
            slot,
            Ok(Completion {
                cqe: *c,
                head,
                data: f.data,
            }),
        )),
        Err(e) => {
            garbage.extend(f.data);
            finished.push((slot, Err(e)));
        }
    }
}

/// A submitted request: a future of its [`Completion`], or [`Pending::wait`] to block.
#[must_use = "a pending request does nothing unless awaited or waited for"]
pub struct Pending {
    slot: Arc<Slot>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl Pending {
    /// Blocks the calling thread until the request completes. When no one else is reaping
    /// completions, the calling thread does (for every request, until its own completes)
    /// instead of waiting for the reaper thread to wake it.
    pub fn wait(self) -> Result<Completion, ClientError> {
        self.inner.wait_blocking(&self.slot)
    }
}

impl Drop for Pending {
    /// Keeps the slot for the next request if no one else holds it any more (its request was
    /// settled and its waiter told; a slot still held is simply freed by its last holder).
    fn drop(&mut self) {
        let Some(Ok(s)) = Arc::get_mut(&mut self.slot).map(|s| s.state.get_mut()) else {
            return;
        };
        // Emptied before it is pooled, without holding a lock: a completion's leases take the
        // state lock when they drop.
        drop((s.result.take(), s.waker.take()));
        let mut pool = lock(&self.inner.slots);
        if pool.len() < SLOT_POOL {
            pool.push(self.slot.clone());
        }
    }
}

impl Future for Pending {
    type Output = Result<Completion, ClientError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = lock(&self.slot.state);
        if let Some(r) = s.result.take() {
            return Poll::Ready(r);
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// A buffer in the client's data arena, returned to the arena on drop.
///
/// Pass it as [`Request::data`] to read into it or write from it without an extra copy on the
/// SDK side (the host copies store ↔ arena once).
pub struct Lease {
    inner: Arc<Inner>,
    map: Arc<Mapping>,
    offset: u64,
    len: u64,
    generation: u64,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl Lease {
    /// Capacity in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the capacity is zero (never: leases have at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `src` into the buffer at `at`.
    pub fn write(&self, at: usize, src: &[u8]) -> Result<(), ClientError> {
        self.check(at, src.len())?;
        self.map
            .write(self.offset + at as u64, src)
            .map_err(|e| ClientError::Connection(e.into()))
    }

    /// Copies bytes out of the buffer at `at` into `dst`.
    pub fn read(&self, at: usize, dst: &mut [u8]) -> Result<(), ClientError> {
        self.check(at, dst.len())?;
        self.map
            .read(self.offset + at as u64, dst)
            .map_err(|e| ClientError::Connection(e.into()))
    }

    /// The first `n` bytes as a vector.
    pub fn to_vec(&self, n: usize) -> Result<Vec<u8>, ClientError> {
        let mut v = vec![0u8; n];
        self.read(0, &mut v)?;
        Ok(v)
    }

    /// The first `n` bytes as [`Bytes`] (one copy out of shared memory: the arena is shared
    /// with the daemon and host, so the SDK never hands out references into it).
    pub fn to_bytes(&self, n: usize) -> Result<Bytes, ClientError> {
        Ok(Bytes::from(self.to_vec(n)?))
    }

    /// The first `n` bytes as [`Bytes`] **without a copy**: the `Bytes` (and every clone of
    /// it) points straight into the arena and owns this lease, so the arena space is returned
    /// only when the last clone is dropped.
    ///
    /// Sound because the client trusts its daemon (ARCHITECTURE §8) and a lease in the caller's
    /// hands is never lent to the daemon or host: a request's buffers come back only with a
    /// completion *without* [`CQE_F_BUFFERS_LENT`](crate::CQE_F_BUFFERS_LENT) (a timed-out
    /// request's buffers stay parked until released), and the lease moves into the `Bytes`, so
    /// no code can write through it either. See [`blobring_shm::Frozen`]. Long-lived `Bytes`
    /// hold arena space: copy ([`Lease::to_bytes`]) what you keep for long.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), blobring::ClientError> {
    /// let client = blobring::Client::connect_default()?;
    /// let lease = client.alloc(4096)?;
    /// lease.write(0, b"hello")?;
    /// let b = lease.into_bytes(5)?; // no copy; the 4 KiB return to the arena when `b` drops
    /// assert_eq!(&b[..], b"hello");
    /// # Ok(()) }
    /// ```
    pub fn into_bytes(self, n: usize) -> Result<Bytes, ClientError> {
        self.check(0, n)?;
        if n == 0 {
            return Ok(Bytes::new());
        }
        let (map, offset) = (self.map.clone(), self.offset);
        let view = blobring_shm::Frozen::trusting_peer(map, offset, n as u64, self)
            .map_err(|e| ClientError::Connection(e.into()))?;
        Ok(Bytes::from_owner(view))
    }

    fn check(&self, at: usize, n: usize) -> Result<(), ClientError> {
        if at.checked_add(n).is_none_or(|e| e as u64 > self.len) {
            return Err(ClientError::Connection(Error::NotInArena {
                offset: self.offset + at as u64,
                len: n as u64,
            }));
        }
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let mut st = lock(&self.inner.state);
            if st.generation == self.generation
                && let Some(c) = st.conn.as_mut()
            {
                let _ = c.free(self.offset);
            }
        }
        let waiters = std::mem::take(&mut *lock(&self.inner.space_waiters));
        for w in waiters {
            w.wake();
        }
    }
}

struct ThreadWaker(std::thread::Thread);

impl std::task::Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on the calling thread (the blocking API: every `async` call of
/// this crate works without a runtime).
///
/// ```
/// assert_eq!(blobring::block_on(async { 1 + 1 }), 2);
/// ```
pub fn block_on<F: Future>(f: F) -> F::Output {
    thread_local! {
        /// This thread's waker, made once (waking it unparks the thread).
        static WAKER: Waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    }
    let mut f = std::pin::pin!(f);
    let waker = WAKER.try_with(Waker::clone).unwrap_or_else(|_| {
        // Called while the thread's locals are being destroyed.
        Waker::from(Arc::new(ThreadWaker(std::thread::current())))
    });
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vsp_failure_says_what_the_status_means_and_what_to_do() {
        let e = ClientError::Vsp(VspStatus::BadPage.code()).to_string();
        assert!(
            e.contains("a buffer page is outside the registered guest memory (VSP status 2)"),
            "{e}"
        );
        assert!(e.contains("report it"), "{e}");
        let e = ClientError::Vsp(1).to_string();
        assert!(
            e.contains("not a valid blob request") && e.contains("versions"),
            "{e}"
        );
        let e = ClientError::Vsp(77).to_string();
        assert!(e.contains("unknown VSP status 77"), "{e}");
    }
}
