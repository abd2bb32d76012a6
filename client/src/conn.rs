//! The low-level connection: handshake, region, queues, arena, and the one table of requests
//! in flight on it.
//!
//! Each queue keeps the requests still owed a final completion, by `user_data`, each with its
//! owner's state (`T`: nothing for raw users of [`Connection`], the request's waiter and
//! buffers for [`crate::Client`]). When the daemon dies that table is how every request still
//! owed gets its `-ECONNRESET` completion: [`Connection::reap`] synthesises them one by one,
//! [`Connection::fail_all`] all at once; the SDK handles them exactly like completions the
//! daemon posted.

use std::collections::HashMap;
use std::io::{IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blobring_abi::{
    ABI_VERSION, CQE_F_BUFFERS_LENT, Cqe, FromBytes, HELLO_REPLY_MAGIC, HELLO_REQUEST_MAGIC,
    HelloReply, HelloRequest, HelloStatus, IntoBytes, RegionGeometry, RegionHeader, Sqe,
};
use blobring_ring::{
    ClientQueue, EventFd, FutexWord, Notifier, QueueLayout, Slept, WAIT_ANY_MAX, WaitOutcome,
};
use blobring_shm::{Allocation, Arena, Mapping, SharedMemory};
use rustix::event::{PollFd, PollFlags};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};

use crate::{ConnectError, Error};

/// Longest single futex sleep in [`Connection::wait`] before the daemon's liveness is checked
/// again (a dead daemon never wakes us, so this bounds how late its death is noticed).
pub const LIVENESS_SLICE: Duration = Duration::from_millis(20);

/// Most queue pairs a reply may announce (one eventfd each, plus the memfd).
const MAX_QUEUES: u32 = 1024;

/// Errno values used in completions (Linux numbering).
pub mod errno {
    /// The request's deadline passed.
    pub const ETIMEDOUT: i32 = 110;
    /// The daemon died or dropped the connection.
    pub const ECONNRESET: i32 = 104;
    /// The SQE was invalid.
    pub const EINVAL: i32 = 22;
    /// No host device (rescinded or not connected).
    pub const ENODEV: i32 = 19;
}

/// The daemon socket path: `$BLOBRING_SOCKET`, else `$XDG_RUNTIME_DIR/blobring/blobringd.sock`,
/// else `/run/blobring/blobringd.sock`.
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("BLOBRING_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return Path::new(&d).join("blobring/blobringd.sock");
    }
    PathBuf::from("/run/blobring/blobringd.sock")
}

/// What to ask the daemon for (0 = its default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// SQ entries per queue (a power of two).
    pub sq_entries: u32,
    /// Data arena bytes. The connect allocates them (charged to this process's memory and
    /// cgroup) and maps them in, so a connect with a large arena takes a few milliseconds
    /// per 16 MiB and fails with an out-of-memory error when they cannot be allocated.
    pub arena_len: u64,
    /// ABI version to announce (tests only: anything but [`ABI_VERSION`] is refused).
    pub abi_version: Option<u32>,
    /// How long to retry handshakes the daemon drops (default [`HANDSHAKE_RETRY`];
    /// `Some(Duration::ZERO)`: never retry).
    pub handshake_retry: Option<Duration>,
}

struct Queue<T> {
    ring: ClientQueue<Arc<Mapping>>,
    doorbell: EventFd,
    futex: Arc<FutexWord>,
    /// Requests still owed a final completion, so a dead daemon's requests can be failed with
    /// `-ECONNRESET`.
    owed: Owed<T>,
}

/// Requests still owed a final completion on one queue: by `user_data` (a multiset: raw users
/// may reuse a `user_data`), each with its owner's state.
struct Owed<T> {
    by_ud: HashMap<u64, OwedEntry<T>>,
    len: usize,
}

/// The states of the requests sharing one `user_data` (almost always exactly one).
struct OwedEntry<T> {
    first: T,
    more: Vec<T>,
}

impl<T> Owed<T> {
    fn new() -> Self {
        Self {
            by_ud: HashMap::new(),
            len: 0,
        }
    }

    fn insert(&mut self, ud: u64, t: T) {
        match self.by_ud.entry(ud) {
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().more.push(t),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(OwedEntry {
                    first: t,
                    more: Vec::new(),
                });
            }
        }
        self.len += 1;
    }

    /// Removes one request of `ud`.
    fn take(&mut self, ud: u64) -> Option<T> {
        let e = self.by_ud.get_mut(&ud)?;
        let t = match e.more.pop() {
            Some(t) => t,
            None => self.by_ud.remove(&ud)?.first,
        };
        self.len -= 1;
        Some(t)
    }

    /// Removes any one request.
    fn take_any(&mut self) -> Option<(u64, T)> {
        let ud = *self.by_ud.keys().next()?;
        self.take(ud).map(|t| (ud, t))
    }
}

/// What a reaped completion means for the request it names ([`Connection::reap_with`]).
pub(crate) enum Settled<'a, T> {
    /// The final completion: the request is no longer owed; here is its state back.
    Final(T),
    /// A completion flagged [`CQE_F_BUFFERS_LENT`]: the request has failed but its buffers
    /// stay lent until a later, final completion (flagged `CQE_F_BUFFERS_RELEASED`).
    Lent(&'a mut T),
}

/// The completion a request gets when the daemon is gone.
fn reset_cqe(user_data: u64) -> Cqe {
    Cqe::bare(user_data, -errno::ECONNRESET)
}

/// A connection to `blobringd`: the client's region, its queue pairs, its arena and the
/// requests in flight on it (each with a `T` of its owner's: see the module doc).
///
/// Not `Sync`: use it from one thread (or wrap it). Each queue pair is single-producer /
/// single-consumer.
pub struct Connection<T = ()> {
    sock: UnixStream,
    map: Arc<Mapping>,
    _memfd: OwnedFd,
    geometry: RegionGeometry,
    client_id: u64,
    queues: Vec<Queue<T>>,
    arena: Arena,
    dead: bool,
    last_check: Instant,
    /// Set by the watcher thread the moment the daemon's socket hangs up.
    hung_up: Arc<AtomicBool>,
    _watcher: Watcher,
}

/// A thread blocked in `poll()` on the daemon socket, a pidfd of the daemon process (from
/// `SO_PEERCRED`, when visible) and a stop eventfd: when the daemon hangs up or exits it sets
/// the connection's `hung_up` flag and wakes every `cq_tail` futex, so a client sleeping on
/// its completion queues learns of the death within a scheduling delay. (The pidfd matters:
/// a killed daemon's socket may stay open for seconds while the kernel tears down its
/// io_uring, but its pidfd turns readable the moment the process has exited.)
struct Watcher {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    fn spawn(
        sock: UnixStream,
        pidfd: Option<OwnedFd>,
        hung_up: Arc<AtomicBool>,
        words: Vec<Arc<FutexWord>>,
    ) -> Result<Self, ConnectError> {
        let stop = Arc::new(EventFd::new()?);
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("blobring-watch".into())
            .spawn(move || {
                loop {
                    let mut fds = vec![
                        PollFd::new(&*stop2, PollFlags::IN),
                        PollFd::new(&sock, PollFlags::RDHUP | PollFlags::IN),
                    ];
                    if let Some(p) = &pidfd {
                        fds.push(PollFd::new(p, PollFlags::IN));
                    }
                    match rustix::event::poll(&mut fds, None) {
                        Err(rustix::io::Errno::INTR) => continue,
                        Err(_) => return,
                        Ok(_) => {}
                    }
                    if !fds[0].revents().is_empty() {
                        return;
                    }
                    if fds[1..].iter().any(|f| !f.revents().is_empty()) {
                        // The daemon never sends after the handshake: EOF, an error or data
                        // all mean the connection is over.
                        hung_up.store(true, Ordering::Release);
                        for w in &words {
                            let _ = w.notify();
                        }
                        return;
                    }
                }
            })
            .map_err(io("spawn the daemon watcher thread"))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.stop.notify();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `cq_tail` futex words of every queue pair, armed by [`Connection::prepare_sleep`]:
/// sleep on them with [`SleepSet::sleep`] *without* holding the connection, then call
/// [`Connection::finish_sleep`].
#[derive(Debug, Default)]
pub struct SleepSet {
    words: Vec<(Arc<FutexWord>, u32)>,
    partial: bool,
}

impl SleepSet {
    /// Lets go of the words (and so of the mapping they live in: a replaced connection's
    /// region is not kept mapped by a set kept for the next sleep), keeping the space.
    pub(crate) fn clear(&mut self) {
        self.words.clear();
    }

    /// Blocks until a completion is posted on any queue, the daemon hangs up, or `timeout`
    /// passes. (With more than [`WAIT_ANY_MAX`] queues only the first ones are watched, and
    /// the sleep is capped at 1 ms.)
    pub fn sleep(&self, timeout: Option<Duration>) -> Result<Slept, Error> {
        let timeout = if self.partial {
            Some(timeout.map_or(Duration::from_millis(1), |t| {
                t.min(Duration::from_millis(1))
            }))
        } else {
            timeout
        };
        let Some(first) = self.words.first() else {
            return Ok(blobring_ring::wait_any(&[], timeout)?);
        };
        // On the stack (the tail past the words repeats the first): sleeping allocates nothing.
        let words: [(&FutexWord, u32); WAIT_ANY_MAX] = std::array::from_fn(|i| {
            let (w, seen) = self.words.get(i).unwrap_or(first);
            (&**w, *seen)
        });
        let n = self.words.len().min(WAIT_ANY_MAX);
        Ok(blobring_ring::wait_any(&words[..n], timeout)?)
    }
}

impl<T> std::fmt::Debug for Connection<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("client_id", &self.client_id)
            .field("geometry", &self.geometry)
            .field("dead", &self.dead)
            .finish_non_exhaustive()
    }
}

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> ConnectError {
    move |source| ConnectError::Io { op, source }
}

/// The short name of a refusal status, for [`ConnectError::Refused`]'s `kind`.
fn status_name(status: u32) -> &'static str {
    match HelloStatus::from_code(status) {
        Some(HelloStatus::Ok) => "accepted",
        Some(HelloStatus::VersionMismatch) => "version mismatch",
        Some(HelloStatus::NotPermitted) => "not permitted",
        Some(HelloStatus::LimitExceeded) => "limit exceeded",
        Some(HelloStatus::BadRequest) => "bad request",
        Some(HelloStatus::Unavailable) => "unavailable",
        None => "unknown status",
    }
}

/// How long [`Connection::connect_with`] retries handshakes the daemon dropped.
pub const HANDSHAKE_RETRY: Duration = Duration::from_secs(10);

impl Connection {
    /// Connects to the daemon at [`default_socket_path`].
    pub fn connect_default() -> Result<Self, ConnectError> {
        Self::connect(default_socket_path())
    }

    /// Connects to the daemon socket at `path` with the daemon's default sizes.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, ConnectError> {
        Self::connect_with(path, ConnectOptions::default())
    }

    /// Connects to the daemon socket at `path`. A handshake the daemon drops (it sheds
    /// pending handshakes beyond its limit when many clients connect at once) is retried
    /// with jittered backoff for up to [`ConnectOptions::handshake_retry`]; other failures
    /// return at once.
    pub fn connect_with(
        path: impl AsRef<Path>,
        opts: ConnectOptions,
    ) -> Result<Self, ConnectError> {
        Self::open(path, opts)
    }

    /// Publishes as many of `sqes` as fit on queue `q` (one release store) and rings the
    /// daemon's eventfd only if the worker sleeps. Returns how many were submitted.
    pub fn submit(&mut self, q: u32, sqes: &[Sqe]) -> Result<usize, Error> {
        self.submit_tracked(q, sqes, &mut std::iter::repeat(()))
    }
}

impl<T> Connection<T> {
    /// [`Connection::connect_with`] for a connection whose requests carry a `T` each.
    pub(crate) fn open(path: impl AsRef<Path>, opts: ConnectOptions) -> Result<Self, ConnectError> {
        let (path, budget) = (
            path.as_ref(),
            opts.handshake_retry.unwrap_or(HANDSHAKE_RETRY),
        );
        let start = std::time::Instant::now();
        let mut cap = Duration::from_millis(2);
        loop {
            match Self::connect_once(path, opts) {
                Err(e) if e.is_transient() && start.elapsed() < budget => {
                    std::thread::sleep(cap.mul_f64(rand::random::<f64>()));
                    cap = (cap * 2).min(Duration::from_millis(100));
                }
                r => return r,
            }
        }
    }

    fn connect_once(path: &Path, opts: ConnectOptions) -> Result<Self, ConnectError> {
        let mut sock = UnixStream::connect(path).map_err(|source| ConnectError::Connect {
            path: path.to_owned(),
            source,
        })?;
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io("set timeout"))?;
        let hello = HelloRequest {
            magic: HELLO_REQUEST_MAGIC,
            abi_version: opts.abi_version.unwrap_or(ABI_VERSION),
            sq_entries: opts.sq_entries,
            flags: 0,
            arena_len: opts.arena_len,
            reserved: [0; 40],
        };
        sock.write_all(hello.as_bytes()).map_err(io("send hello"))?;
        let (reply, fds) = recv_reply(&sock)?;
        if reply.magic != HELLO_REPLY_MAGIC {
            return Err(ConnectError::Protocol("bad reply magic".into()));
        }
        if reply.status != HelloStatus::Ok.code() {
            return Err(ConnectError::Refused {
                status: reply.status,
                kind: status_name(reply.status),
                message: reply.message_text(),
            });
        }
        if reply.n_queues == 0 || reply.n_queues > MAX_QUEUES {
            return Err(ConnectError::Protocol(format!("{} queues", reply.n_queues)));
        }
        if fds.len() != 1 + reply.n_queues as usize {
            return Err(ConnectError::Protocol(format!(
                "{} file descriptors for {} queues",
                fds.len(),
                reply.n_queues
            )));
        }
        let mut fds = fds.into_iter();
        let memfd = fds
            .next()
            .ok_or_else(|| ConnectError::Protocol("no memfd".into()))?;
        // Pre-faulted: the daemon allocated only the header and queues, so this allocates the
        // arena (charged to this process) now rather than on each page's first request, and a
        // failure to allocate it fails the connect with `RegionError::OutOfMemory`.
        let map = Arc::new(Mapping::map_peer(memfd.as_fd(), reply.region_len)?);
        // One copy of the header, validated as a whole.
        let header: RegionHeader = map
            .read_obj(0)
            .map_err(|e| ConnectError::Protocol(e.to_string()))?;
        let geometry = RegionGeometry::from_header(&header, reply.region_len)?;
        if geometry.n_queues != reply.n_queues || header.client_id != reply.client_id {
            return Err(ConnectError::Protocol(
                "region header disagrees with the reply".into(),
            ));
        }
        let mut queues = Vec::with_capacity(geometry.n_queues as usize);
        for (q, efd) in (0..geometry.n_queues).zip(fds) {
            let layout = QueueLayout::from_geometry(&geometry, q)?;
            queues.push(Queue {
                ring: ClientQueue::attach(map.clone(), &layout)?,
                doorbell: EventFd::from_fd(efd),
                futex: Arc::new(FutexWord::cq_tail(map.clone(), &layout)?),
                owed: Owed::new(),
            });
        }
        let arena = Arena::new(geometry.arena_offset, geometry.arena_len)
            .map_err(|e| ConnectError::Protocol(format!("arena: {e}")))?;
        sock.set_read_timeout(None).map_err(io("set timeout"))?;
        let hung_up = Arc::new(AtomicBool::new(false));
        // The daemon's pid as the kernel saw it at connect() (None in another pid namespace).
        let pidfd = rustix::net::sockopt::socket_peercred(&sock)
            .ok()
            .and_then(|c| {
                rustix::process::pidfd_open(c.pid, rustix::process::PidfdFlags::empty()).ok()
            });
        let watcher = Watcher::spawn(
            sock.try_clone().map_err(io("duplicate the socket"))?,
            pidfd,
            hung_up.clone(),
            queues.iter().map(|q| q.futex.clone()).collect(),
        )?;
        Ok(Self {
            sock,
            map,
            _memfd: memfd,
            geometry,
            client_id: reply.client_id,
            queues,
            arena,
            dead: false,
            last_check: Instant::now(),
            hung_up,
            _watcher: watcher,
        })
    }

    /// The daemon-assigned client id.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The region layout.
    pub fn geometry(&self) -> &RegionGeometry {
        &self.geometry
    }

    /// Queue pairs (one per daemon worker).
    pub fn n_queues(&self) -> u32 {
        self.geometry.n_queues
    }

    /// Completions still owed on queue `q` (requests submitted and not finally completed).
    pub fn in_flight(&self, q: u32) -> usize {
        self.queues.get(q as usize).map_or(0, |q| q.owed.len)
    }

    /// Completions still owed on all queues.
    pub fn in_flight_total(&self) -> usize {
        self.queues.iter().map(|q| q.owed.len).sum()
    }

    fn queue(&mut self, q: u32) -> Result<&mut Queue<T>, Error> {
        let n_queues = self.geometry.n_queues;
        self.queues
            .get_mut(q as usize)
            .ok_or(Error::NoSuchQueue { queue: q, n_queues })
    }

    /// [`Connection::submit`], recording the next item of `states` for each SQE published
    /// (handed back by [`Connection::reap_with`] or [`Connection::fail_all`]).
    pub(crate) fn submit_tracked(
        &mut self,
        q: u32,
        sqes: &[Sqe],
        states: &mut impl Iterator<Item = T>,
    ) -> Result<usize, Error> {
        if self.dead {
            return Err(Error::DaemonGone);
        }
        let queue = self.queue(q)?;
        let p = queue.ring.submit(sqes)?;
        for (s, t) in sqes[..p.count].iter().zip(states) {
            queue.owed.insert(s.user_data, t);
        }
        if p.wake_peer {
            queue.doorbell.notify()?;
        }
        Ok(p.count)
    }

    /// Copies up to `out.len()` completions of queue `q` into `out`; returns how many. When the
    /// daemon has died, returns a `-ECONNRESET` completion for every request still owed (and
    /// [`Error::DaemonGone`] once none are left).
    pub fn reap(&mut self, q: u32, out: &mut [Cqe]) -> Result<usize, Error> {
        self.reap_with(q, out, |_, _| {})
    }

    /// [`Connection::reap`], handing each completion of a request still owed to `settle`
    /// with what it means for the request ([`Settled`]).
    pub(crate) fn reap_with(
        &mut self,
        q: u32,
        out: &mut [Cqe],
        mut settle: impl FnMut(&Cqe, Settled<'_, T>),
    ) -> Result<usize, Error> {
        if self.dead {
            return self.fail_outstanding(q, out, settle);
        }
        let queue = self.queue(q)?;
        let p = queue.ring.reap(out)?;
        for c in &out[..p.count] {
            if c.flags & CQE_F_BUFFERS_LENT != 0 {
                if let Some(t) = queue.owed.by_ud.get_mut(&c.user_data) {
                    settle(c, Settled::Lent(&mut t.first));
                }
            } else if let Some(t) = queue.owed.take(c.user_data) {
                settle(c, Settled::Final(t));
            }
        }
        if p.wake_peer {
            // The worker waits for CQ space (it ran out of credits).
            queue.doorbell.notify()?;
        }
        if p.count == 0 && self.hung_up.load(Ordering::Acquire) {
            self.dead = true;
            return self.fail_outstanding(q, out, settle);
        }
        if p.count == 0 && self.last_check.elapsed() >= LIVENESS_SLICE {
            self.last_check = Instant::now();
            if !self.daemon_alive() {
                return self.fail_outstanding(q, out, settle);
            }
        }
        Ok(p.count)
    }

    fn fail_outstanding(
        &mut self,
        q: u32,
        out: &mut [Cqe],
        mut settle: impl FnMut(&Cqe, Settled<'_, T>),
    ) -> Result<usize, Error> {
        let queue = self.queue(q)?;
        let mut n = 0;
        while n < out.len() {
            let Some((ud, t)) = queue.owed.take_any() else {
                break;
            };
            out[n] = reset_cqe(ud);
            settle(&out[n], Settled::Final(t));
            n += 1;
        }
        if n == 0 {
            return Err(Error::DaemonGone);
        }
        Ok(n)
    }

    /// Gives up on the connection (the daemon is gone, or the caller replaced it): every
    /// request still owed on any queue gets its `-ECONNRESET` completion through `settle`, and
    /// nothing more can be submitted.
    pub(crate) fn fail_all(&mut self, mut settle: impl FnMut(&Cqe, Settled<'_, T>)) {
        self.dead = true;
        for queue in &mut self.queues {
            while let Some((ud, t)) = queue.owed.take_any() {
                settle(&reset_cqe(ud), Settled::Final(t));
            }
        }
    }

    /// Blocks until queue `q` has a completion, the daemon dies, or `timeout` passes (`None`:
    /// no limit). Sleeps on the `cq_tail` futex in slices of [`LIVENESS_SLICE`], checking the
    /// daemon's socket in between. After `Ok(_)`, call [`Connection::reap`].
    pub fn wait(&mut self, q: u32, timeout: Option<Duration>) -> Result<WaitOutcome, Error> {
        if self.dead {
            return Ok(WaitOutcome::Ready);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let slice = match deadline {
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .min(LIVENESS_SLICE),
                None => LIVENESS_SLICE,
            };
            let queue = self.queue(q)?;
            let outcome = queue.ring.wait(&*queue.futex, Some(slice))?;
            if outcome != WaitOutcome::TimedOut {
                return Ok(outcome);
            }
            self.last_check = Instant::now();
            if !self.daemon_alive() {
                // Completions (-ECONNRESET) are ready to reap.
                return Ok(WaitOutcome::Ready);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(WaitOutcome::TimedOut);
            }
        }
    }

    /// Arms every queue's `cq_waiting` flag for one sleep of a thread that reaps all queues
    /// (the SDK's reaper). `None`: completions are already there (or the daemon is gone),
    /// reap instead. After `Some`, sleep with [`SleepSet::sleep`] and then call
    /// [`Connection::finish_sleep`] (also if the sleep failed).
    pub fn prepare_sleep(&mut self) -> Result<Option<SleepSet>, Error> {
        let mut set = SleepSet::default();
        Ok(self.prepare_sleep_in(&mut set)?.then_some(set))
    }

    /// [`Connection::prepare_sleep`] into `set` (reused: no allocation once it has held every
    /// queue's word); `false` where that returns `None`.
    pub(crate) fn prepare_sleep_in(&mut self, set: &mut SleepSet) -> Result<bool, Error> {
        set.words.clear();
        if self.dead || self.hung_up.load(Ordering::Acquire) {
            return Ok(false);
        }
        set.partial = self.queues.len() > WAIT_ANY_MAX;
        for i in 0..self.queues.len().min(WAIT_ANY_MAX) {
            let q = &mut self.queues[i];
            match q.ring.cq.prepare_wait() {
                Ok(Some(seen)) => set.words.push((q.futex.clone(), seen)),
                r => {
                    self.finish_sleep();
                    set.words.clear();
                    return r.map(|_| false).map_err(Into::into);
                }
            }
        }
        Ok(true)
    }

    /// Clears the `cq_waiting` flags set by [`Connection::prepare_sleep`].
    pub fn finish_sleep(&mut self) {
        for q in &mut self.queues {
            let _ = q.ring.cq.finish_wait();
        }
    }

    /// Whether the watcher thread saw the daemon's socket hang up (one atomic load).
    pub fn hung_up(&self) -> bool {
        self.dead || self.hung_up.load(Ordering::Acquire)
    }

    /// Checks (without blocking) whether the daemon still holds the connection open.
    pub fn daemon_alive(&mut self) -> bool {
        if self.dead {
            return false;
        }
        if self.hung_up.load(Ordering::Acquire) {
            self.dead = true;
            return false;
        }
        let mut b = [0u8; 1];
        let r = rustix::net::recv(
            &self.sock,
            &mut b[..],
            RecvFlags::PEEK | RecvFlags::DONTWAIT,
        );
        // The daemon never sends after the handshake: EOF, an error or data all mean the
        // connection is over.
        self.dead = !matches!(r, Err(rustix::io::Errno::AGAIN));
        !self.dead
    }

    /// Allocates `len` bytes of the data arena (64-byte granules; `align` a power of two).
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<Allocation, Error> {
        Ok(self.arena.try_alloc(len, align)?)
    }

    /// Frees an allocation made by [`Connection::alloc`]. Never free a buffer whose request is
    /// in flight or whose buffers are still lent.
    pub fn free(&mut self, offset: u64) -> Result<(), Error> {
        self.arena.free(offset)?;
        Ok(())
    }

    /// Bytes of the arena still free.
    pub fn arena_free(&self) -> u64 {
        self.arena.free_bytes()
    }

    fn check_arena(&self, offset: u64, len: u64) -> Result<(), Error> {
        if !self.geometry.in_arena(offset, len) {
            return Err(Error::NotInArena { offset, len });
        }
        Ok(())
    }

    /// Copies `src` into the arena at region offset `offset`.
    pub fn write_buf(&self, offset: u64, src: &[u8]) -> Result<(), Error> {
        self.check_arena(offset, src.len() as u64)?;
        Ok(self.map.write(offset, src)?)
    }

    /// Copies `dst.len()` bytes out of the arena at region offset `offset`.
    pub fn read_buf(&self, offset: u64, dst: &mut [u8]) -> Result<(), Error> {
        self.check_arena(offset, dst.len() as u64)?;
        Ok(self.map.read(offset, dst)?)
    }

    /// The mapped region (tests and tools: e.g. to inspect or, in hostile tests, corrupt it).
    pub fn region(&self) -> &Arc<Mapping> {
        &self.map
    }

    /// Rings queue `q`'s eventfd unconditionally (tests: eventfd floods).
    pub fn ring_doorbell(&mut self, q: u32) -> Result<(), Error> {
        Ok(self.queue(q)?.doorbell.notify()?)
    }

    /// Queue `q`'s doorbell eventfd, as the daemon passed it (tools and hostile tests that work
    /// at the ABI level: it shares its open file description with the daemon's).
    pub fn doorbell_fd(&self, q: u32) -> Result<std::os::fd::BorrowedFd<'_>, Error> {
        let n_queues = self.geometry.n_queues;
        let queue = self
            .queues
            .get(q as usize)
            .ok_or(Error::NoSuchQueue { queue: q, n_queues })?;
        Ok(queue.doorbell.as_fd())
    }
}

fn recv_reply(sock: &UnixStream) -> Result<(HelloReply, Vec<OwnedFd>), ConnectError> {
    let mut buf = [0u8; size_of::<HelloReply>()];
    let mut got = 0;
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut space =
        [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_QUEUES as usize + 1))];
    while got < buf.len() {
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let r = rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut buf[got..])],
            &mut cmsg,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| io("receive reply")(e.into()))?;
        // Take ownership of every fd at once, before any check can return early.
        for msg in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = msg {
                fds.extend(rights);
            }
        }
        if r.flags.contains(ReturnFlags::CTRUNC) {
            return Err(ConnectError::Protocol(
                "control message truncated (too many file descriptors)".into(),
            ));
        }
        if r.bytes == 0 && got == 0 {
            return Err(ConnectError::Dropped);
        }
        if r.bytes == 0 {
            return Err(ConnectError::Protocol(format!(
                "the daemon hung up after {got} bytes of its reply"
            )));
        }
        got += r.bytes;
    }
    let reply = HelloReply::read_from_bytes(&buf)
        .map_err(|_| ConnectError::Protocol("short reply".into()))?;
    Ok((reply, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// The table of requests owed: a multiset by user_data (raw users may reuse one), each
    /// entry handed back once, and emptied by `take_any` as a dead daemon's requests are.
    #[test]
    fn owed_requests_are_a_multiset_handed_back_once() {
        let mut owed = Owed::new();
        owed.insert(7, "a");
        owed.insert(7, "b");
        owed.insert(9, "c");
        assert_eq!(owed.len, 3);
        let mut seven = [owed.take(7).unwrap(), owed.take(7).unwrap()];
        seven.sort();
        assert_eq!(seven, ["a", "b"]);
        assert_eq!(owed.take(7), None);
        assert_eq!(owed.take(8), None);
        assert_eq!(owed.take_any(), Some((9, "c")));
        assert_eq!((owed.take_any(), owed.len), (None, 0));
    }

    /// A "daemon" that reads each hello and hangs up, as blobringd does to handshakes it
    /// sheds: the client retries within its budget, then reports the drop; a refusal-like
    /// failure (no socket) is not retried.
    #[test]
    fn dropped_handshakes_are_retried_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shed.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let accepted = Arc::new(AtomicU32::new(0));
        let n = accepted.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                let mut hello = [0u8; size_of::<HelloRequest>()];
                let _ = s.read_exact(&mut hello);
                n.fetch_add(1, Ordering::SeqCst);
            }
        });
        let opts = |retry| ConnectOptions {
            handshake_retry: Some(retry),
            ..ConnectOptions::default()
        };
        let t = std::time::Instant::now();
        let r = Connection::connect_with(&path, opts(Duration::from_millis(300)));
        assert!(matches!(r, Err(ConnectError::Dropped)), "{:?}", r.err());
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(
            accepted.load(Ordering::SeqCst) >= 3,
            "attempts: {accepted:?}"
        );

        let missing = dir.path().join("none.sock");
        let t = std::time::Instant::now();
        let r = Connection::connect_with(&missing, opts(Duration::from_secs(5)));
        assert!(
            matches!(r, Err(ConnectError::Connect { .. })),
            "{:?}",
            r.err()
        );
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "not retried: {:?}",
            t.elapsed()
        );
    }
}
