//! Cross-process plumbing shared by `tests/two_process.rs` and `examples/ring-demo.rs`: the
//! daemon end creates a sealed memfd region and an eventfd and passes them over a unix socket
//! with `SCM_RIGHTS`; the client end maps them; echo-daemon and streaming-client loops with
//! real sleeping wakeups.
#![allow(dead_code)]

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blobring_abi::{Cqe, FromZeros, RegionGeometry, Sqe};
use blobring_ring::{
    ClientQueue, DaemonQueue, EventFd, FutexWord, Notifier, QueueLayout, WaitOutcome,
};
use blobring_shm::{Mapping, Region};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// How long a sleeper waits before counting a timeout (a lost wakeup shows up as one).
pub const SLEEP_TIMEOUT: Duration = Duration::from_secs(5);

/// In a child: have the kernel SIGKILL us if the parent dies, so no stray process survives a
/// crashed test run.
pub fn die_with_parent() -> Result<(), String> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))
}

/// Kills and reaps the child when dropped (test failure, panic, early return).
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// Waits for the child to exit, up to `limit`; kills it on timeout.
    pub fn wait_success(&mut self, limit: Duration) -> Result<(), String> {
        let child = self.0.as_mut().ok_or("no child")?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                self.0 = None;
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("child: {status}"))
                };
            }
            if Instant::now() > deadline {
                return Err("child did not exit in time".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `cmd` as a child that connects back to a fresh listening socket, whose path is put
/// in the environment variable `env`. Returns the guard and the accepted connection.
pub fn spawn_peer(mut cmd: Command, env: &str) -> Result<(ChildGuard, UnixStream), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("peer.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let child = cmd
        .env(env, &path)
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let mut guard = ChildGuard(Some(child));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok((guard, s));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(Ok(Some(st))) = guard.0.as_mut().map(Child::try_wait) {
                    guard.0 = None;
                    return Err(format!("child exited before connecting: {st}"));
                }
                if Instant::now() > deadline {
                    return Err("child did not connect".into());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Sends `words` (as little-endian u64s) with `fds` attached.
pub fn send_with_fds(sock: &UnixStream, words: &[u64], fds: &[RawFd]) -> Result<(), String> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    let n = sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        cmsgs,
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| format!("sendmsg: {e}"))?;
    if n != bytes.len() {
        return Err("short sendmsg".into());
    }
    Ok(())
}

/// Receives `N` words and up to `max_fds` descriptors, wrapped in `OwnedFd` at once.
pub fn recv_with_fds<const N: usize>(
    sock: &UnixStream,
    max_fds: usize,
) -> Result<([u64; N], Vec<OwnedFd>), String> {
    let mut bytes = vec![0u8; N * 8];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let (n, fds, truncated) = {
        let mut iov = [IoSliceMut::new(&mut bytes)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| format!("recvmsg: {e}"))?;
        let mut fds = Vec::new();
        let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for fd in raw {
                        // SAFETY: the kernel just installed `fd` in our table for this
                        // message; nothing else owns it, so wrapping it transfers ownership.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
        }
        (msg.bytes, fds, truncated)
    };
    if truncated || fds.len() > max_fds {
        return Err("control message truncated or too many fds".into());
    }
    if n != bytes.len() {
        return Err(format!("expected {} bytes, got {n}", bytes.len()));
    }
    let mut words = [0u64; N];
    for (w, c) in words.iter_mut().zip(bytes.chunks(8)) {
        *w = u64::from_le_bytes(c.try_into().unwrap());
    }
    Ok((words, fds))
}

/// Queue sizes and the first index (near `u32::MAX` so that the run crosses the wrap).
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub sq_entries: u32,
    pub cq_entries: u32,
    pub start: u32,
    pub count: u64,
}

/// The daemon's end: it owns the region, the doorbell eventfd and the `cq_tail` futex word.
pub struct DaemonEnd {
    pub region: Region,
    pub layout: QueueLayout,
    pub doorbell: EventFd,
    pub futex: FutexWord,
    pub params: Params,
}

impl DaemonEnd {
    pub fn create(params: Params) -> Result<Self, String> {
        let g = RegionGeometry::new(1, params.sq_entries, params.cq_entries, 4096, 4096)
            .map_err(|e| e.to_string())?;
        let region =
            Region::create("blobring-ring-test", g.region_len).map_err(|e| e.to_string())?;
        let layout = QueueLayout::from_geometry(&g, 0).map_err(|e| e.to_string())?;
        layout
            .initialize(&region, params.start)
            .map_err(|e| e.to_string())?;
        let doorbell = EventFd::new().map_err(|e| e.to_string())?;
        // The daemon wakes the word through a mapping of its own, as the real daemon does.
        let own = Mapping::map_peer(region.fd(), region.len()).map_err(|e| e.to_string())?;
        let futex = FutexWord::cq_tail(Arc::new(own), &layout).map_err(|e| e.to_string())?;
        Ok(Self {
            region,
            layout,
            doorbell,
            futex,
            params,
        })
    }

    /// Handshake: sizes + memfd + eventfd.
    pub fn send(&self, sock: &UnixStream) -> Result<(), String> {
        let p = self.params;
        send_with_fds(
            sock,
            &[
                self.region.len(),
                p.sq_entries.into(),
                p.cq_entries.into(),
                p.start.into(),
                p.count,
            ],
            &[
                self.region.fd().as_raw_fd(),
                self.doorbell.as_fd().as_raw_fd(),
            ],
        )
    }

    pub fn queue(&self) -> DaemonQueue<&Region> {
        DaemonQueue::new(&self.region, &self.layout, self.params.start).expect("fits")
    }
}

/// The client's end: the peer-mapped region, the doorbell and the futex word.
pub struct ClientEnd {
    pub mapping: Arc<Mapping>,
    pub layout: QueueLayout,
    pub doorbell: EventFd,
    pub futex: FutexWord,
    pub params: Params,
}

impl ClientEnd {
    pub fn receive(sock: &UnixStream) -> Result<Self, String> {
        let (w, mut fds) = recv_with_fds::<5>(sock, 2)?;
        if fds.len() != 2 {
            return Err(format!("expected 2 fds, got {}", fds.len()));
        }
        let evfd = fds.pop().unwrap();
        let memfd = fds.pop().unwrap();
        let params = Params {
            sq_entries: w[1] as u32,
            cq_entries: w[2] as u32,
            start: w[3] as u32,
            count: w[4],
        };
        let g = RegionGeometry::new(1, params.sq_entries, params.cq_entries, 4096, 4096)
            .map_err(|e| e.to_string())?;
        if g.region_len != w[0] {
            return Err("region length mismatch".into());
        }
        let mapping = Mapping::map_peer(memfd.as_fd(), w[0]).map_err(|e| e.to_string())?;
        let mapping = Arc::new(mapping);
        let layout = QueueLayout::from_geometry(&g, 0).map_err(|e| e.to_string())?;
        let futex = FutexWord::cq_tail(mapping.clone(), &layout).map_err(|e| e.to_string())?;
        Ok(Self {
            mapping,
            layout,
            doorbell: EventFd::from_fd(evfd),
            futex,
            params,
        })
    }

    pub fn queue(&self) -> ClientQueue<&Mapping> {
        ClientQueue::attach(&*self.mapping, &self.layout).expect("fits")
    }
}

/// What a side does when it finds nothing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Busy-poll (never advertise sleep).
    Spin,
    /// Advertise sleep at once and block (need-wakeup protocol).
    Sleep,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub entries: u64,
    pub sleeps: u64,
    pub woken: u64,
    pub timeouts: u64,
    pub signals: u64,
}

fn count_wait(stats: &mut Stats, w: WaitOutcome) {
    match w {
        WaitOutcome::Ready => {}
        WaitOutcome::Woken => {
            stats.sleeps += 1;
            stats.woken += 1;
        }
        WaitOutcome::TimedOut => {
            stats.sleeps += 1;
            stats.timeouts += 1;
        }
    }
}

/// Nothing to do this round: an error once `deadline` has passed, else one spin or one sleep
/// through `wait` (given [`SLEEP_TIMEOUT`]), counted in `st`.
fn idle_round<E: std::fmt::Display>(
    who: &str,
    idle: Idle,
    deadline: Instant,
    st: &mut Stats,
    wait: impl FnOnce(Duration) -> Result<WaitOutcome, E>,
) -> Result<(), String> {
    if Instant::now() > deadline {
        return Err(format!(
            "{who}: deadline passed after {} entries",
            st.entries
        ));
    }
    match idle {
        Idle::Spin => std::hint::spin_loop(),
        Idle::Sleep => {
            let w = wait(SLEEP_TIMEOUT).map_err(|e| e.to_string())?;
            count_wait(st, w);
        }
    }
    Ok(())
}

/// Wakes `peer` when the ring asked for it (`wake_peer`), counting the signal in `st`.
fn signal_if(wake_peer: bool, peer: &impl Notifier, st: &mut Stats) -> Result<(), String> {
    if wake_peer {
        st.signals += 1;
        peer.notify().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Echo daemon: takes SQEs (user_data must be `0, 1, 2, ...`), completes each at once with a
/// CQE echoing it, until `count` entries were served.
pub fn run_echo_daemon(end: &DaemonEnd, idle: Idle, deadline: Instant) -> Result<Stats, String> {
    let mut q = end.queue();
    let mut sqes = vec![Sqe::new_zeroed(); 64];
    let mut cqes = vec![Cqe::new_zeroed(); 64];
    let mut st = Stats::default();
    while st.entries < end.params.count {
        let n = q.take(&mut sqes).map_err(|e| e.to_string())?;
        if n == 0 {
            idle_round("daemon", idle, deadline, &mut st, |t| {
                q.wait(&end.doorbell, Some(t))
            })?;
            continue;
        }
        for (s, c) in sqes[..n].iter().zip(cqes.iter_mut()) {
            if s.user_data != st.entries {
                return Err(format!(
                    "daemon: got user_data {} expected {}",
                    s.user_data, st.entries
                ));
            }
            st.entries += 1;
            *c = Cqe {
                user_data: s.user_data,
                res: 0,
                ..Cqe::new_zeroed()
            };
        }
        let p = q.complete(&cqes[..n]).map_err(|e| e.to_string())?;
        signal_if(p.wake_peer, &end.futex, &mut st)?;
    }
    Ok(st)
}

/// Streaming client: submits `count` SQEs with user_data `0..count` in batches of up to
/// `batch`, reaps completions and checks every user_data arrives once, in order.
pub fn run_stream_client(
    end: &ClientEnd,
    idle: Idle,
    batch: usize,
    deadline: Instant,
) -> Result<Stats, String> {
    let mut q = end.queue();
    let count = end.params.count;
    let mut sqes: Vec<Sqe> = vec![
        Sqe {
            opcode: blobring_abi::Opcode::Nop.code(),
            ..Sqe::new_zeroed()
        };
        batch
    ];
    let mut cqes = vec![Cqe::new_zeroed(); batch.max(64)];
    let (mut next, mut st) = (0u64, Stats::default());
    while st.entries < count {
        let mut progressed = false;
        if next < count {
            let k = (batch as u64).min(count - next) as usize;
            for (i, s) in sqes[..k].iter_mut().enumerate() {
                s.user_data = next + i as u64;
            }
            let p = q.submit(&sqes[..k]).map_err(|e| e.to_string())?;
            next += p.count as u64;
            progressed |= p.count > 0;
            signal_if(p.wake_peer, &end.doorbell, &mut st)?;
        }
        let p = q.reap(&mut cqes).map_err(|e| e.to_string())?;
        signal_if(p.wake_peer, &end.doorbell, &mut st)?;
        for c in &cqes[..p.count] {
            if c.user_data != st.entries || c.res != 0 {
                return Err(format!(
                    "client: got user_data {} expected {}",
                    c.user_data, st.entries
                ));
            }
            st.entries += 1;
        }
        progressed |= p.count > 0;
        if !progressed {
            idle_round("client", idle, deadline, &mut st, |t| {
                q.wait(&end.futex, Some(t))
            })?;
        }
    }
    Ok(st)
}
