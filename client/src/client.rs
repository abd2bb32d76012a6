//! The thread-safe request layer over [`Connection`]: [`Client`], [`Lease`], [`Request`].
//!
//! One background *reaper* thread per client drains every completion queue and completes the
//! matching request, waking an async task (any executor: the future only stores a
//! [`std::task::Waker`]) or a blocked thread. No runtime is required.
//!
//! **Invariants:**
//! - arena buffers of a request are owned by the in-flight entry until its final completion;
//!   a completion flagged [`CQE_F_BUFFERS_LENT`] fails the request at once but parks its
//!   buffers until the matching [`CQE_F_BUFFERS_RELEASED`] completion: a lent buffer is never
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use blobring_abi::{
    CQE_F_BUFFERS_LENT, CQE_F_BUFFERS_RELEASED, Cqe, FromZeros, OP_BLOB, Sqe, SqeBuffer, SqeFields,
};
use blobring_shm::{Mapping, SharedMemory};
use bytes::Bytes;

use crate::{ConnectError, ConnectOptions, Connection, Error, errno};

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
    /// The host could not execute the request (VSP status; e.g. the response did not fit).
    #[error(
        "the host could not execute the request (VSP status {0:#x}); the response may not fit \
         the buffers: use a smaller range"
    )]
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

/// VSP status: the response body does not fit the data buffer (`data_len` = bytes needed).
pub const VSP_BODY_TOO_LARGE: u32 = blobring_abi::vmbus::VSP_ERR_BODY_TOO_LARGE;
/// VSP status: the response head does not fit the response buffer (`response_len` = needed).
pub const VSP_HEAD_TOO_LARGE: u32 = blobring_abi::vmbus::VSP_ERR_HEAD_TOO_LARGE;

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

struct InFlight {
    slot: Arc<Slot>,
    head_buf: Lease,
    response_at: usize,
    response_cap: u32,
    data: Option<Lease>,
    timeout: Duration,
}

struct State {
    conn: Option<Connection>,
    generation: u64,
    next_ud: u64,
    in_flight: HashMap<u64, InFlight>,
    /// Buffers of timed-out requests the host may still write: (head buffer, data lease).
    lent: HashMap<u64, (Lease, Option<Lease>)>,
}

pub(crate) struct Inner {
    opts: ClientOptions,
    state: Mutex<State>,
    /// Signalled when requests are submitted (wakes the idle reaper).
    work: Condvar,
    shutdown: AtomicBool,
    arena_len: Mutex<u64>,
    /// Tasks awaiting arena space ([`Client::alloc_async`]).
    space_waiters: Mutex<Vec<Waker>>,
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
        let conn = Connection::connect_with(&opts.socket, opts.connect)?;
        let arena = conn.geometry().arena_len;
        let inner = Arc::new(Inner {
            opts,
            state: Mutex::new(State {
                conn: Some(conn),
                generation: 1,
                next_ud: 1,
                in_flight: HashMap::new(),
                lent: HashMap::new(),
            }),
            work: Condvar::new(),
            shutdown: AtomicBool::new(false),
            arena_len: Mutex::new(arena),
            space_waiters: Mutex::new(Vec::new()),
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
        Ok(self.submit_batch(vec![req])?.remove(0))
    }

    /// Submits several requests with one publication per queue where possible.
    pub fn submit_batch(&self, reqs: Vec<Request>) -> Result<Vec<Pending>, ClientError> {
        self.inner.submit_batch(reqs)
    }

    /// Submits and waits (blocking the calling thread).
    pub fn execute_blocking(&self, req: Request) -> Result<Completion, ClientError> {
        self.submit(req)?.wait()
    }

    /// Submits and awaits. Arena space is awaited without blocking the thread.
    pub async fn execute(&self, req: Request) -> Result<Completion, ClientError> {
        self.start(req).await?.await
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
    fn ensure_conn<'a>(&self, st: &'a mut State) -> Result<(&'a mut Connection, u64), ClientError> {
        // A connection whose daemon is gone is replaced here, so the first request after a
        // daemon restart reconnects (requests still owed by the old one are failed by the
        // reaper, which sees `conn` gone; leases of the old arena carry the old generation).
        if st.conn.as_ref().is_some_and(Connection::hung_up) {
            st.conn = None;
            self.work.notify_all();
        }
        if st.conn.is_none() {
            let conn = Connection::connect_with(&self.opts.socket, self.opts.connect)?;
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

    fn submit_batch(self: &Arc<Self>, reqs: Vec<Request>) -> Result<Vec<Pending>, ClientError> {
        let cpu = rustix::thread::sched_getcpu() as u32;
        let mut out = Vec::with_capacity(reqs.len());
        // Prepare head buffers first (allocation may wait for space).
        let mut prepared = Vec::with_capacity(reqs.len());
        for mut r in reqs {
            let (rsp, total) = r.head_space();
            let buf = match r.head_lease.take() {
                Some(b) if b.len >= total => b,
                _ => self.alloc(total, self.opts.arena_wait)?,
            };
            buf.write(0, &r.head)?;
            prepared.push((r, buf, rsp));
        }
        let mut st = lock(&self.state);
        let (_, generation) = self.ensure_conn(&mut st)?;
        let mut by_queue: HashMap<u32, Vec<Sqe>> = HashMap::new();
        let n_queues = st.conn.as_ref().map_or(1, |c| c.n_queues());
        if prepared.iter().any(|(r, buf, _)| {
            buf.generation != generation
                || r.data.as_ref().is_some_and(|d| d.generation != generation)
        }) {
            // The daemon restarted between allocation and submission; the buffers belong to
            // the old arena (dropped after the lock is released).
            drop(st);
            return Err(ClientError::ConnectionReset);
        }
        for (r, buf, rsp) in prepared {
            let ud = st.next_ud;
            st.next_ud += 1;
            let timeout = r.timeout.unwrap_or(self.opts.default_timeout);
            let (data_offset, data_len) = r
                .data
                .as_ref()
                .map_or((0, 0), |d| (d.offset, d.len.min(u32::MAX as u64) as u32));
            let sqe = Sqe::new(SqeFields {
                opcode: OP_BLOB,
                timeout_ms: timeout.as_millis().clamp(1, u32::MAX as u128) as u32,
                user_data: ud,
                request: SqeBuffer {
                    offset: buf.offset,
                    len: r.head.len() as u32,
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
            let q = r.queue.unwrap_or(cpu) % n_queues;
            let slot = Arc::new(Slot {
                state: Mutex::new(SlotState {
                    result: None,
                    waker: None,
                }),
                cv: Condvar::new(),
            });
            out.push(Pending { slot: slot.clone() });
            st.in_flight.insert(
                ud,
                InFlight {
                    slot,
                    head_buf: buf,
                    response_at: rsp as usize,
                    response_cap: r.response_cap,
                    data: r.data,
                    timeout,
                },
            );
            by_queue.entry(q).or_default().push(sqe);
        }
        for (q, sqes) in by_queue {
            let mut done = 0;
            let mut spins = 0u32;
            while done < sqes.len() {
                let conn = st.conn.as_mut().ok_or(ClientError::ConnectionReset)?;
                match conn.submit(q, &sqes[done..]) {
                    Ok(n) => done += n,
                    Err(e) => {
                        let mut garbage = Vec::new();
                        for s in &sqes[done..] {
                            if let Some(f) = st.in_flight.remove(&s.user_data) {
                                f.slot.complete(Err(ClientError::ConnectionReset));
                                garbage.push(f);
                            }
                        }
                        drop(st);
                        drop(garbage);
                        self.work.notify_all();
                        return match e {
                            Error::DaemonGone => Err(ClientError::ConnectionReset),
                            e => Err(e.into()),
                        };
                    }
                }
                if done < sqes.len() {
                    // The SQ is full: let the reaper drain completions.
                    drop(st);
                    self.work.notify_all();
                    spins += 1;
                    std::thread::sleep(Duration::from_micros(20 * u64::from(spins.min(50))));
                    st = lock(&self.state);
                    if st.generation != generation {
                        return Err(ClientError::ConnectionReset);
                    }
                }
            }
        }
        drop(st);
        self.work.notify_all();
        Ok(out)
    }

    fn reap_loop(self: Arc<Self>) {
        let mut cqes = vec![Cqe::new_zeroed(); 256];
        loop {
            let mut finished: Vec<(Arc<Slot>, Result<Completion, ClientError>)> = Vec::new();
            let mut garbage: Vec<Lease> = Vec::new();
            let mut st = lock(&self.state);
            if self.shutdown.load(Ordering::Acquire) && st.in_flight.is_empty() {
                return;
            }
            if st.in_flight.is_empty() && st.lent.is_empty() {
                let _ = self
                    .work
                    .wait_timeout(st, Duration::from_millis(100))
                    .map(|(g, _)| drop(g));
                continue;
            }
            let mut got = 0;
            let mut dead = false;
            let n_queues = st.conn.as_ref().map_or(0, |c| c.n_queues());
            for q in 0..n_queues {
                while let Some(conn) = st.conn.as_mut() {
                    match conn.reap(q, &mut cqes) {
                        Ok(n) => {
                            got += n;
                            for c in &cqes[..n] {
                                self.on_cqe(&mut st, *c, &mut finished, &mut garbage);
                            }
                            if n < cqes.len() {
                                break;
                            }
                        }
                        Err(_) => {
                            dead = true;
                            break;
                        }
                    }
                }
            }
            if dead || (st.conn.is_none() && !st.in_flight.is_empty()) {
                // Everything still owed fails; the next request reconnects.
                for (_, f) in st.in_flight.drain() {
                    finished.push((f.slot, Err(ClientError::ConnectionReset)));
                    garbage.push(f.head_buf);
                    garbage.extend(f.data);
                }
                for (_, (h, d)) in st.lent.drain() {
                    garbage.push(h);
                    garbage.extend(d);
                }
                st.conn = None;
            }
            // Nothing reaped: arm every queue's `cq_waiting` flag while still holding the
            // connection, then sleep on all `cq_tail` futexes at once without it. The daemon
            // wakes the futex when it posts a completion; the connection's watcher thread
            // wakes it when the daemon hangs up.
            let sleep = if got == 0 && !dead {
                let generation = st.generation;
                st.conn
                    .as_mut()
                    .and_then(|c| c.prepare_sleep().ok().flatten())
                    .map(|s| (s, generation))
            } else {
                None
            };
            drop(st);
            drop(garbage);
            for (slot, r) in finished {
                slot.complete(r);
            }
            if let Some((s, generation)) = sleep {
                // Bounded only as a safety net: a wake is never needed to notice anything.
                let _ = s.sleep(Some(REAPER_SLEEP));
                let mut st = lock(&self.state);
                if st.generation == generation
                    && let Some(c) = st.conn.as_mut()
                {
                    c.finish_sleep();
                }
            }
        }
    }

    fn on_cqe(
        &self,
        st: &mut State,
        c: Cqe,
        finished: &mut Vec<(Arc<Slot>, Result<Completion, ClientError>)>,
        garbage: &mut Vec<Lease>,
    ) {
        if c.flags & CQE_F_BUFFERS_RELEASED != 0 {
            // The host is done with a timed-out request's buffers: now they may be reused.
            if let Some((head, data)) = st.lent.remove(&c.user_data) {
                garbage.push(head);
                garbage.extend(data);
            }
            return;
        }
        let Some(f) = st.in_flight.remove(&c.user_data) else {
            return;
        };
        if c.flags & CQE_F_BUFFERS_LENT != 0 {
            st.lent.insert(c.user_data, (f.head_buf, f.data));
            finished.push((f.slot, Err(ClientError::TimedOut(f.timeout))));
            return;
        }
        let r = if c.res != 0 {
            let e = -c.res;
            Err(match e {
                errno::ETIMEDOUT => ClientError::TimedOut(f.timeout),
                errno::ECONNRESET => ClientError::ConnectionReset,
                e => ClientError::Errno(e, errno_name(e)),
            })
        } else if c.vsp_status == VSP_BODY_TOO_LARGE {
            Err(ClientError::BodyTooLarge {
                needed: c.data_len.into(),
            })
        } else if c.vsp_status == VSP_HEAD_TOO_LARGE {
            Err(ClientError::HeadTooLarge {
                needed: c.response_len,
            })
        } else if c.vsp_status != blobring_abi::vmbus::VSP_OK {
            Err(ClientError::Vsp(c.vsp_status))
        } else {
            let n = c.response_len.min(f.response_cap) as usize;
            let mut head = vec![0u8; n];
            match f.head_buf.read(f.response_at, &mut head) {
                Ok(()) => Ok(head),
                Err(e) => Err(e),
            }
        };
        garbage.push(f.head_buf);
        match r {
            Ok(head) => finished.push((
                f.slot,
                Ok(Completion {
                    cqe: c,
                    head,
                    data: f.data,
                }),
            )),
            Err(e) => {
                garbage.extend(f.data);
                finished.push((f.slot, Err(e)));
            }
        }
    }
}

/// A submitted request: a future of its [`Completion`], or [`Pending::wait`] to block.
#[must_use = "a pending request does nothing unless awaited or waited for"]
pub struct Pending {
    slot: Arc<Slot>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl Pending {
    /// Blocks the calling thread until the request completes.
    pub fn wait(self) -> Result<Completion, ClientError> {
        let mut s = lock(&self.slot.state);
        loop {
            if let Some(r) = s.result.take() {
                return r;
            }
            s = self.slot.cv.wait(s).unwrap_or_else(|p| p.into_inner());
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
    let mut f = std::pin::pin!(f);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
