//! The control thread: client handshakes (the decision is [`crate::admission`]'s; here the
//! credentials and load are gathered and a grant is provisioned: region, translation,
//! doorbells, registration, reply), regions, the host bus and its channels (spread by
//! [`crate::spread_channels`]), the ctl socket, signals and shutdown. Nothing here is on the
//! request path.

use std::collections::HashMap;
use std::io::{IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use blobring_abi::{
    ABI_VERSION, FromBytes, HELLO_REPLY_MAGIC, HelloReply, HelloRequest, HelloStatus, IntoBytes,
    RegionGeometry,
};
use blobring_ring::{EventFd, Notifier, QueueLayout};
use blobring_shm::Pagemap;
use blobring_shm::{PagePolicy, Region, RegionOptions, SharedMemory};
use blobring_vmbus::guest_phys::{GpaEnvironment, PagemapPfns, PfnTranslator, SimPfns, preflight};
use blobring_vmbus::sim::guest::{BusClient, BusEvent};
use blobring_vmbus::uio::{
    DeviceOpener, KernelVersion, Sysfs, SystemOpener, Transport, UioDevice, UioError, UioOptions,
};
use crossbeam_channel::{Receiver, Sender};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rustix::event::{PollFd, PollFlags};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

use crate::DaemonError;
use crate::admission::{self, Grant, Load, Peer, Policy, Refusal};
use crate::config::Config;
use crate::fds::{Budget, Spare};
use crate::stats::{DaemonInfo, StatsCell};
use crate::worker::{ClientShared, ToControl, ToWorker};

/// Spacing of guest-physical bases: every region starts on a 1 GiB boundary, so a region
/// never touches its neighbour (a hole of at least one page between regions).
const GPA_ALIGN: u64 = 1 << 30;
/// First guest-physical base handed out.
const GPA_START: u64 = 1 << 32;

/// A worker as the control thread sees it.
pub struct WorkerHandle {
    /// Message channel.
    pub tx: Sender<ToWorker>,
    /// Its control eventfd.
    pub doorbell: Arc<EventFd>,
    /// Its statistics.
    pub stats: StatsCell,
}

impl WorkerHandle {
    fn send(&self, msg: ToWorker) {
        let _ = self.tx.send(msg);
        let _ = self.doorbell.notify();
    }
}

struct ClientEntry {
    sock: UnixStream,
    shared: Arc<ClientShared>,
    removing: bool,
    drained: usize,
    registered: bool,
}

/// The connected host: the emulated host's bus (sim), or nothing to talk to besides the
/// channels (uio: no memory registration, rescind shows on the uio fd).
struct Host {
    bus: Option<BusClient>,
}

/// What the `uio` transport needs to (re)open the device.
struct UioSetup {
    sysfs: Sysfs,
    device: blobring_vmbus::uio::BlobDevice,
    kernel: Option<KernelVersion>,
    opener: SystemOpener,
    pagemap: Pagemap<std::fs::File>,
}

/// A connection whose hello has not fully arrived yet. Handshakes never block the control
/// thread: a client that connects and stays silent only occupies one of
/// [`MAX_PENDING_HANDSHAKES`] slots until [`HANDSHAKE_TIMEOUT`].
struct PendingHello {
    sock: UnixStream,
    buf: [u8; size_of::<HelloRequest>()],
    got: usize,
    since: Instant,
}

/// What one poll of the control thread found readable.
struct Ready {
    accept: bool,
    ctl: bool,
    signal: bool,
    bus: bool,
    /// Clients whose socket is readable (a hang-up, see [`Control::remove_hung_up`]).
    clients: Vec<u64>,
    /// Indices into [`Control::pending`] whose hello has more bytes.
    hellos: Vec<usize>,
}

/// Most connections waiting for their hello at once (the oldest is dropped beyond this).
const MAX_PENDING_HANDSHAKES: usize = 64;
/// How long a connection may take to send its hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most ctl replies finished for slow readers at once.
const MAX_CTL_WRITERS: usize = 4;

/// The control thread's state.
pub struct Control {
    cfg: Config,
    listener: UnixListener,
    ctl: UnixListener,
    socket_path: PathBuf,
    ctl_path: PathBuf,
    signals: SignalFd,
    wake: Arc<EventFd>,
    from_workers: Receiver<ToControl>,
    workers: Vec<WorkerHandle>,
    clients: HashMap<u64, ClientEntry>,
    next_id: u64,
    next_gpa: u64,
    host: Option<Host>,
    next_attempt: Instant,
    backoff: Duration,
    info: DaemonInfo,
    allow_uid: Vec<u32>,
    shutting_down: Option<Instant>,
    metrics_doc: Arc<std::sync::Mutex<String>>,
    exited: Arc<std::sync::atomic::AtomicUsize>,
    pending: Vec<PendingHello>,
    /// `Some` on the uio transport.
    uio: Option<UioSetup>,
    /// Threads finishing a ctl reply for a slow reader (see `serve_ctl`).
    ctl_writers: Arc<AtomicUsize>,
    /// The descriptor budget (`--max-clients` already fitted to it).
    budget: Budget,
    /// A descriptor kept to answer a connection accepted while the table is full.
    spare: Spare,
}

/// Binds a listening socket at `path` with exactly `mode`: the umask is narrowed around
/// `bind`, so the socket is never wider than `mode`, not even before the `chmod` (call while
/// only one thread runs: the umask is per process). Missing parent directories are created
/// with mode 755; the deepest one created is returned (handed to `--user` with the sockets).
fn bind_socket(path: &Path, mode: u32) -> Result<(UnixListener, Option<PathBuf>), DaemonError> {
    use rustix::fs::Mode;
    let setup = |what: &'static str| {
        move |e: std::io::Error| DaemonError::Setup(format!("{what} {}: {e}", path.display()))
    };
    let mut created = None;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut missing = Vec::new();
        let mut d = Some(dir);
        while let Some(x) = d.filter(|x| !x.as_os_str().is_empty() && !x.exists()) {
            missing.push(x.to_path_buf());
            d = x.parent();
        }
        std::fs::create_dir_all(dir).map_err(setup("cannot create the directory of"))?;
        for m in &missing {
            std::fs::set_permissions(m, std::fs::Permissions::from_mode(0o755))
                .map_err(setup("cannot chmod the directory of"))?;
        }
        created = missing.into_iter().next();
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            if UnixStream::connect(path).is_ok() {
                return Err(DaemonError::Setup(format!(
                    "another daemon is listening on {}; stop it or choose another --socket",
                    path.display()
                )));
            }
            let _ = std::fs::remove_file(path);
        }
    }
    let old = rustix::process::umask(Mode::from_raw_mode(!mode & 0o777));
    let bound = UnixListener::bind(path);
    rustix::process::umask(old);
    let l = bound.map_err(setup("cannot bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(setup("cannot chmod"))?;
    l.set_nonblocking(true).map_err(setup("cannot configure"))?;
    Ok((l, created))
}

/// What [`bind`] set up before any thread is spawned and privileges are dropped.
pub struct Bound {
    listener: UnixListener,
    ctl: UnixListener,
    socket_path: PathBuf,
    ctl_path: PathBuf,
    /// `Some` on the uio transport.
    uio: Option<UioSetup>,
    created_dirs: Vec<PathBuf>,
}

impl Bound {
    /// Whether the uio transport was selected.
    pub fn is_uio(&self) -> bool {
        self.uio.is_some()
    }

    /// The files to hand to `--user`/`--group`: both sockets and the socket directories the
    /// daemon created.
    pub fn owned_paths(&self) -> Vec<PathBuf> {
        let mut v = vec![self.socket_path.clone(), self.ctl_path.clone()];
        v.extend(self.created_dirs.iter().cloned());
        v
    }
}

/// Selects the transport and binds the client and ctl sockets (call before spawning any
/// thread: see `bind_socket`, which narrows the umask around `bind`).
pub fn bind(cfg: &Config, n_workers: u32) -> Result<Bound, DaemonError> {
    let uio = select_transport(cfg, n_workers)?;
    let socket_path = cfg.socket_path();
    let ctl_path = cfg.ctl_path();
    let (listener, d1) = bind_socket(&socket_path, cfg.socket_mode)?;
    let (ctl, d2) = bind_socket(&ctl_path, 0o600)?;
    Ok(Bound {
        listener,
        ctl,
        socket_path,
        ctl_path,
        uio,
        created_dirs: d1.into_iter().chain(d2).collect(),
    })
}

/// Blocks SIGTERM and SIGINT in the calling thread (call before spawning any thread, so every
/// thread inherits the mask) and returns a signalfd for them.
pub fn block_signals() -> Result<SignalFd, DaemonError> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block()
        .map_err(|e| DaemonError::Setup(format!("sigprocmask: {e}")))?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| DaemonError::Setup(format!("signalfd: {e}")))
}

impl Control {
    /// Takes over the bound sockets. Workers must already run.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Config,
        budget: Budget,
        bound: Bound,
        signals: SignalFd,
        wake: Arc<EventFd>,
        from_workers: Receiver<ToControl>,
        workers: Vec<WorkerHandle>,
        metrics_doc: Arc<std::sync::Mutex<String>>,
        exited: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Result<Self, DaemonError> {
        let Bound {
            listener,
            ctl,
            socket_path,
            ctl_path,
            uio,
            created_dirs: _,
        } = bound;
        // After any --user switch: "the daemon's own uid" is the one it runs as.
        let mut allow_uid = cfg.allow_uid.clone();
        if allow_uid.is_empty() {
            allow_uid = vec![rustix::process::getuid().as_raw(), 0];
        }
        tracing::info!(socket = %socket_path.display(), ctl = %ctl_path.display(), workers = workers.len(), "listening");
        Ok(Self {
            cfg,
            listener,
            ctl,
            socket_path,
            ctl_path,
            signals,
            wake,
            from_workers,
            workers,
            clients: HashMap::new(),
            next_id: 1,
            next_gpa: GPA_START,
            host: None,
            next_attempt: Instant::now(),
            backoff: Duration::from_millis(100),
            info: DaemonInfo::default(),
            allow_uid,
            shutting_down: None,
            metrics_doc,
            exited,
            pending: Vec::new(),
            ctl_writers: Arc::new(AtomicUsize::new(0)),
            budget,
            spare: Spare::new(),
            uio,
        })
    }

    /// Runs until a signal asks to stop and every worker drained.
    pub fn run(mut self) -> Result<(), DaemonError> {
        loop {
            if self.shutting_down.is_none()
                && self.host.is_none()
                && Instant::now() >= self.next_attempt
            {
                self.connect_host();
            }
            let ready = self.poll()?;
            if ready.signal {
                while let Ok(Some(sig)) = self.signals.read_signal() {
                    tracing::info!(signal = sig.ssi_signo, "stopping: draining requests");
                    self.begin_shutdown();
                }
            }
            let _ = self.wake.drain();
            self.worker_messages();
            self.remove_hung_up(&ready.clients);
            if ready.bus {
                self.bus_event();
            }
            if ready.ctl {
                self.serve_ctl();
            }
            self.read_hellos(&ready.hellos);
            if ready.accept && self.shutting_down.is_none() {
                self.accept();
            }
            self.publish_metrics();
            if self.shutting_down.is_none()
                && self.exited.load(std::sync::atomic::Ordering::Acquire) > 0
            {
                // A worker died (error or panic): its queue in every region is unserved, so
                // stop the whole daemon; clients see the hang-up and fail with ECONNRESET.
                tracing::error!("a worker stopped unexpectedly; shutting the daemon down");
                let _ = std::fs::remove_file(&self.socket_path);
                let _ = std::fs::remove_file(&self.ctl_path);
                self.begin_shutdown();
                return Err(DaemonError::Setup(
                    "a worker thread stopped unexpectedly (see the log above); restart blobringd"
                        .into(),
                ));
            }
            if let Some(deadline) = self.shutting_down
                && (self.workers_exited() || Instant::now() >= deadline)
            {
                let _ = std::fs::remove_file(&self.ctl_path);
                return Ok(());
            }
        }
    }

    /// Waits (up to 100 ms) until a socket of the control thread is readable: the listener,
    /// the ctl socket, the signalfd, the workers' wake eventfd, the host bus, a client's socket
    /// (after the handshake only a hang-up makes it readable) or a pending handshake.
    fn poll(&self) -> Result<Ready, DaemonError> {
        let client_ids: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.removing)
            .map(|(id, _)| *id)
            .collect();
        let mut fds = vec![
            PollFd::new(&self.listener, PollFlags::IN),
            PollFd::new(&self.ctl, PollFlags::IN),
            PollFd::new(&self.signals, PollFlags::IN),
            PollFd::new(&*self.wake, PollFlags::IN),
        ];
        let bus_fd: Option<BorrowedFd<'_>> = self
            .host
            .as_ref()
            .and_then(|h| h.bus.as_ref())
            .map(|b| b.as_fd());
        if let Some(b) = &bus_fd {
            fds.push(PollFd::from_borrowed_fd(*b, PollFlags::IN));
        }
        let base = fds.len();
        for id in &client_ids {
            fds.push(PollFd::new(
                &self.clients[id].sock,
                PollFlags::IN | PollFlags::RDHUP,
            ));
        }
        let pending_base = fds.len();
        for p in &self.pending {
            fds.push(PollFd::new(&p.sock, PollFlags::IN | PollFlags::RDHUP));
        }
        let timeout = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(DaemonError::Setup(format!("poll: {e}"))),
        }
        let ready = |i: usize| !fds[i].revents().is_empty();
        Ok(Ready {
            accept: ready(0),
            ctl: ready(1),
            signal: ready(2),
            bus: bus_fd.is_some() && ready(4),
            clients: client_ids
                .iter()
                .enumerate()
                .filter(|(i, _)| ready(base + i))
                .map(|(_, id)| *id)
                .collect(),
            hellos: (0..self.pending.len())
                .filter(|i| ready(pending_base + i))
                .collect(),
        })
    }

    /// Removes the clients among `readable` whose socket hung up. A client never sends after
    /// the handshake: readable means hang-up (or a protocol violation, handled the same way).
    fn remove_hung_up(&mut self, readable: &[u64]) {
        for &id in readable {
            let mut b = [0u8; 64];
            let gone = match (&self.clients[&id].sock).read(&mut b) {
                Ok(_) => true,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            if gone {
                self.remove_client(id, "disconnected");
            }
        }
    }

    fn workers_exited(&self) -> bool {
        self.exited.load(std::sync::atomic::Ordering::Acquire) == self.workers.len()
    }

    fn begin_shutdown(&mut self) {
        if self.shutting_down.is_some() {
            return;
        }
        let deadline = Instant::now() + Duration::from_millis(self.cfg.drain_timeout);
        self.shutting_down = Some(deadline + Duration::from_millis(500));
        let _ = std::fs::remove_file(&self.socket_path);
        for w in &self.workers {
            w.send(ToWorker::Shutdown { deadline });
        }
    }

    fn worker_messages(&mut self) {
        while let Ok(msg) = self.from_workers.try_recv() {
            match msg {
                ToControl::Drained { id, worker } => {
                    let Some(c) = self.clients.get_mut(&id) else {
                        continue;
                    };
                    c.drained += 1;
                    tracing::debug!(client = id, worker, "client drained on worker");
                    if c.drained == self.workers.len() {
                        let c = self.clients.remove(&id).expect("present");
                        if c.registered
                            && let Some(h) = &mut self.host
                            && let Some(bus) = &mut h.bus
                            && let Err(e) = bus.unregister_memory(id)
                        {
                            tracing::warn!(client = id, error = %e, "could not unregister the client's memory from the host");
                        }
                        tracing::info!(client = id, "client region released");
                        self.info.clients = self.clients.len();
                    }
                }
                ToControl::Misbehaved { id, reason } => {
                    tracing::warn!(client = id, %reason, "disconnecting client");
                    self.remove_client(id, "protocol violation");
                }
                ToControl::ChannelBroken { worker, reason } => {
                    tracing::warn!(worker, %reason, "host channel broken; reconnecting to the host");
                    self.lose_host();
                }
            }
        }
    }

    fn remove_client(&mut self, id: u64, why: &str) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        if c.removing {
            return;
        }
        c.removing = true;
        let _ = c.sock.shutdown(std::net::Shutdown::Both);
        tracing::info!(client = id, why, "client leaving; draining its requests");
        for w in &self.workers {
            w.send(ToWorker::RemoveClient(id));
        }
    }

    fn lose_host(&mut self) {
        if self.host.take().is_some() {
            for w in &self.workers {
                w.send(ToWorker::ChannelsLost);
            }
            for c in self.clients.values_mut() {
                c.registered = false;
            }
            self.info.host_connected = false;
            self.info.channels_open = 0;
            self.next_attempt = Instant::now() + self.backoff;
        }
    }

    fn bus_event(&mut self) {
        let Some(bus) = self.host.as_mut().and_then(|h| h.bus.as_mut()) else {
            return;
        };
        match bus.poll_event() {
            Ok(None) => {}
            Ok(Some(BusEvent::Rescinded { reason })) => {
                tracing::warn!(
                    reason,
                    "host rescinded the device; failing in-flight requests with ENODEV"
                );
                self.lose_host();
            }
            Ok(Some(BusEvent::Closed)) => {
                tracing::warn!("host bus hung up; failing in-flight requests with ENODEV");
                self.lose_host();
            }
            Err(e) => {
                tracing::warn!(error = %e, "host bus error");
                self.lose_host();
            }
        }
    }

    fn connect_host(&mut self) {
        if self.uio.is_some() {
            self.connect_uio();
            return;
        }
        let path = self.cfg.host_path();
        let result = (|| -> Result<(Host, Vec<blobring_vmbus::sim::SimChannel>), String> {
            let mut bus = BusClient::connect(&path).map_err(|e| e.to_string())?;
            bus.set_timeout(Duration::from_secs(5));
            let n_workers = self.workers.len() as u32;
            let want = self
                .cfg
                .channels
                .unwrap_or(n_workers)
                .max(n_workers)
                .min(bus.offer().max_channels);
            let subs = if want > 1 {
                bus.request_subchannels(want - 1)
                    .map_err(|e| e.to_string())?
            } else {
                0
            };
            let mut chans = Vec::new();
            for i in 0..=subs {
                chans.push(bus.open_channel(i).map_err(|e| e.to_string())?);
            }
            Ok((Host { bus: Some(bus) }, chans))
        })();
        match result {
            Ok((mut host, chans)) => {
                self.backoff = Duration::from_millis(100);
                let n = chans.len();
                if n < self.workers.len() {
                    tracing::warn!(
                        channels = n,
                        workers = self.workers.len(),
                        "the host offers fewer channels than workers; workers without a channel fail blob requests with ENODEV"
                    );
                }
                for c in self.clients.values_mut() {
                    if c.removing {
                        continue;
                    }
                    let s = &c.shared;
                    let Some(bus) = &mut host.bus else { break };
                    match bus.register_memory(
                        s.id,
                        s.gpa_base,
                        s.region.fd(),
                        s.geometry.region_len,
                    ) {
                        Ok(()) => c.registered = true,
                        Err(e) => {
                            tracing::warn!(client = s.id, error = %e, "could not register client memory with the host")
                        }
                    }
                }
                let n_workers = self.workers.len();
                self.hand_out_channels(crate::spread_channels(chans, n_workers, |_, c| {
                    Box::new(c) as Box<dyn crate::worker::WorkerChannel>
                }));
                self.info.host_connected = true;
                self.info.channels_open = n as u32;
                self.info.host_connects += 1;
                tracing::info!(channels = n, "connected to the host");
                self.host = Some(host);
            }
            Err(e) => {
                if self.info.host_connects == 0 && self.backoff <= Duration::from_millis(100) {
                    tracing::warn!(host = %path.display(), error = %e, "host not reachable; retrying with backoff (blob requests fail with ENODEV meanwhile)");
                } else {
                    tracing::debug!(error = %e, "host reconnect failed");
                }
                self.next_attempt = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(Duration::from_secs(2));
            }
        }
    }

    /// Hands each worker its share of the channels (`per_worker[w]` to worker `w`, as
    /// [`crate::spread_channels`] made them).
    fn hand_out_channels(&self, per_worker: Vec<Vec<Box<dyn crate::worker::WorkerChannel>>>) {
        for (w, chs) in self.workers.iter().zip(per_worker) {
            w.send(ToWorker::Channels(chs));
        }
    }

    /// Opens the uio device (binding it first if needed and allowed), opens one listener per
    /// worker and spreads the channels over the workers (see [`crate::uio`]).
    fn connect_uio(&mut self) {
        let Some(u) = &self.uio else { return };
        let n_workers = self.workers.len();
        let bind = self.cfg.bind;
        let result = (|| -> Result<_, UioError> {
            // Who owns interrupt_mask is probed from the driver's behaviour at open, not taken
            // from the kernel version (UioDevice::open logs the evidence).
            let opts = UioOptions::default();
            // Found again on every attempt: after a rescind the host re-offers the device,
            // possibly as another uioN.
            let device = blobring_vmbus::uio::sysfs::find_blob_device(&u.sysfs)
                .unwrap_or_else(|_| u.device.clone());
            if !device.is_uio_bound() && !bind {
                return Err(UioError::NotBound {
                    instance: device.instance.clone(),
                    driver: device.driver.clone().unwrap_or_else(|| "none".into()),
                });
            }
            let dev = if device.is_uio_bound() {
                UioDevice::open(&u.sysfs, &device, &u.opener, &opts)?
            } else {
                UioDevice::bind_and_open(&u.sysfs, &device, &u.opener, &opts, u.kernel)?
            };
            let listeners = (0..n_workers)
                .map(|_| dev.open_listener(&u.opener as &dyn DeviceOpener))
                .collect::<Result<Vec<_>, _>>()?;
            let mode = dev.interrupt_mode();
            let max_pages = dev.max_request_pages();
            Ok((dev.into_channels(), listeners, mode, max_pages))
        })();
        match result {
            Ok((chans, listeners, mode, max_pages)) => {
                self.backoff = Duration::from_millis(100);
                let n = chans.len();
                self.hand_out_channels(crate::uio::worker_channels(chans, &listeners, mode));
                self.info.host_connected = true;
                self.info.channels_open = n as u32;
                self.info.host_connects += 1;
                tracing::info!(
                    channels = n,
                    max_request_pages = max_pages,
                    ?mode,
                    "uio device opened"
                );
                self.host = Some(Host { bus: None });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the uio device; retrying with backoff (blob requests fail with ENODEV meanwhile)");
                self.next_attempt = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(Duration::from_secs(2));
            }
        }
    }

    fn serve_ctl(&mut self) {
        let Ok((mut s, _)) = self.ctl.accept() else {
            return;
        };
        let mut text = self.stats_json().to_string();
        text.push('\n');
        // The control thread never waits for a ctl reader: what the socket buffer takes now is
        // written here; a reader too slow for the rest gets it from a short-lived thread (at
        // most MAX_CTL_WRITERS at once, each bounded by a 1 s write timeout) or not at all.
        let _ = s.set_nonblocking(true);
        let sent = match s.write(text.as_bytes()) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(_) => return,
        };
        if sent == text.len() {
            return;
        }
        if self.ctl_writers.fetch_add(1, Ordering::AcqRel) >= MAX_CTL_WRITERS {
            self.ctl_writers.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!("too many slow ctl readers; dropping one reply");
            return;
        }
        let writers = self.ctl_writers.clone();
        let spawned = std::thread::Builder::new()
            .name("blobring-ctl-write".into())
            .spawn(move || {
                let _ = s.set_nonblocking(false);
                let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = s.write_all(&text.as_bytes()[sent..]);
                writers.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            self.ctl_writers.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn stats_json(&mut self) -> serde_json::Value {
        self.info.clients = self.clients.len();
        let cells: Vec<StatsCell> = self.workers.iter().map(|w| w.stats.clone()).collect();
        let mut doc = crate::stats::to_json(&cells, &self.info);
        doc["process"] = crate::privs::process_json();
        // Where the metrics are served (the port bound, also when `--metrics` gave port 0).
        doc["daemon"]["metrics"] = self.cfg.metrics.map(|a| a.to_string()).into();
        doc["daemon"]["max_clients"] = self.cfg.max_clients.into();
        doc["daemon"]["fd_limit"] = self.budget.limit.into();
        doc
    }

    fn publish_metrics(&mut self) {
        if self.cfg.metrics.is_some() {
            let text = crate::stats::to_prometheus(&self.stats_json());
            *self.metrics_doc.lock().unwrap_or_else(|e| e.into_inner()) = text;
        }
    }

    fn accept(&mut self) {
        loop {
            let sock = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if crate::fds::exhausted(&e) => {
                    // The table is full: answer the connection through the spare descriptor
                    // (else it would wait in the backlog, and poll would keep reporting it).
                    self.refuse_for_fds();
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    return;
                }
            };
            if sock.set_nonblocking(true).is_err() {
                continue;
            }
            if self.pending.len() >= MAX_PENDING_HANDSHAKES {
                // Serve the hellos that have arrived first: in a connect storm (many workers
                // starting at once) the pending connections are mostly complete, not silent.
                let all: Vec<usize> = (0..self.pending.len()).collect();
                self.read_hellos(&all);
            }
            if self.pending.len() >= MAX_PENDING_HANDSHAKES {
                // Still full of connections that have not sent their hello: shed the oldest.
                let oldest = (0..self.pending.len())
                    .min_by_key(|&i| self.pending[i].since)
                    .unwrap_or(0);
                self.pending.swap_remove(oldest);
                self.info.refused += 1;
            }
            self.pending.push(PendingHello {
                sock,
                buf: [0; size_of::<HelloRequest>()],
                got: 0,
                since: Instant::now(),
            });
        }
    }

    /// Accepts one connection through the spare descriptor and tells it the daemon is out of
    /// descriptors (without reading its hello: the reply is what the client waits for).
    fn refuse_for_fds(&mut self) {
        let open = crate::fds::in_use();
        let msg = self.budget.refusal(open);
        let listener = &self.listener;
        self.spare.with_free(|| {
            if let Ok((sock, _)) = listener.accept() {
                let mut reply = HelloReply::new_zeroed_reply();
                reply.status = HelloStatus::Unavailable.code();
                reply.set_message(&msg);
                let _ = sock.set_nonblocking(true);
                let _ = (&sock).write(reply.as_bytes());
            }
        });
        self.info.refused += 1;
        tracing::warn!(
            open,
            limit = self.budget.limit,
            "handshake refused: out of file descriptors"
        );
    }

    /// Reads what arrived of pending hellos (`ready` are indices into `self.pending`), runs
    /// the handshakes that are complete, and drops silent or broken connections.
    fn read_hellos(&mut self, ready: &[usize]) {
        let mut complete = Vec::new();
        let mut drop_idx = Vec::new();
        for &i in ready {
            let p = &mut self.pending[i];
            match (&p.sock).read(&mut p.buf[p.got..]) {
                Ok(0) => drop_idx.push(i),
                Ok(n) => {
                    p.got += n;
                    if p.got == p.buf.len() {
                        complete.push(i);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => drop_idx.push(i),
            }
        }
        let now = Instant::now();
        for (i, p) in self.pending.iter().enumerate() {
            if now.duration_since(p.since) > HANDSHAKE_TIMEOUT && !complete.contains(&i) {
                drop_idx.push(i);
            }
        }
        let mut taken: Vec<(usize, bool)> = complete
            .into_iter()
            .map(|i| (i, true))
            .chain(drop_idx.into_iter().map(|i| (i, false)))
            .collect();
        taken.sort_unstable();
        taken.dedup_by_key(|(i, _)| *i);
        for &(i, run) in taken.iter().rev() {
            let p = self.pending.swap_remove(i);
            if run {
                if let Err(msg) = self.handshake(p.sock, &p.buf) {
                    self.info.refused += 1;
                    tracing::info!(reason = %msg, "handshake refused");
                }
            } else {
                self.info.refused += 1;
            }
        }
    }

    /// Runs one handshake: the admission decision ([`admission::decide`], pure), then the
    /// provisioning of a grant ([`Self::provision`]) and the hand-over ([`Self::hand_over`]).
    /// On refusal the reply has been sent and the socket is dropped.
    fn handshake(&mut self, sock: UnixStream, buf: &[u8]) -> Result<(), String> {
        // The reply (256 bytes) goes into an empty socket buffer: it does not block; the
        // timeout only bounds a pathological case.
        let _ = sock.set_nonblocking(false);
        let _ = sock.set_write_timeout(Some(Duration::from_millis(200)));
        // nix's SO_PEERCRED keeps the pid a plain integer: the kernel reports 0 for a peer
        // whose pid is not visible in our pid namespace.
        let cred = nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::PeerCredentials)
            .map_err(|e| format!("SO_PEERCRED: {e}"))?;
        let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
        let req = HelloRequest::read_from_bytes(buf)
            .map_err(|_| format!("short hello from pid {pid}"))?;
        let policy = Policy {
            allow_uid: &self.allow_uid,
            allow_gid: &self.cfg.allow_gid,
            max_clients: self.cfg.max_clients,
            max_clients_per_uid: self.cfg.max_clients_per_uid,
            queue_depth: self.cfg.queue_depth,
            arena_size: self.cfg.arena_size,
            n_queues: self.workers.len() as u32,
            budget: self.budget,
        };
        let groups = if policy.needs_groups(uid, gid) {
            supplementary_groups(pid)
        } else {
            Vec::new()
        };
        let peer = Peer {
            uid,
            gid,
            pid,
            groups,
        };
        let live = || self.clients.values().filter(|c| !c.removing);
        let load = Load {
            shutting_down: self.shutting_down.is_some(),
            live: live().count(),
            live_for_uid: live().filter(|c| c.shared.uid == uid).count(),
            open_fds: crate::fds::in_use(),
        };
        let provisioned =
            admission::decide(&req, &peer, &policy, &load).and_then(|g| self.provision(g, &peer));
        match provisioned {
            Ok(p) => self.hand_over(sock, &peer, p),
            Err(r) => {
                let mut reply = HelloReply::new_zeroed_reply();
                reply.status = r.status.code();
                reply.set_message(&r.message);
                let _ = (&sock).write_all(reply.as_bytes());
                Err(r.message)
            }
        }
    }

    /// Creates what a grant to `peer` promises: the client's region (initialised), its translation for
    /// the host, one doorbell eventfd per queue. Nothing is shared yet: dropping the result
    /// undoes it.
    fn provision(&mut self, grant: Grant, peer: &Peer) -> Result<Provisioned, Refusal> {
        let unavailable = |message: String| Refusal {
            status: HelloStatus::Unavailable,
            message,
        };
        let id = self.next_id;
        let (region, geometry) = create_region(
            id,
            grant.n_queues,
            grant.sq_entries,
            grant.arena_len,
            self.cfg.hugetlb,
            self.uio.is_some(),
        )
        .map_err(|e| unavailable(format!("cannot create the shared region: {e}")))?;
        // uio: the host reads guest-physical pages; translate the (locked, hugetlb) region
        // once through pagemap. sim: the daemon-assigned guest-physical base.
        let gpa_base = self.next_gpa;
        let pfns: Arc<dyn PfnTranslator> = match &mut self.uio {
            Some(u) => Arc::new(
                PagemapPfns::for_region(&region, &mut u.pagemap).map_err(|e| {
                    unavailable(format!(
                        "cannot translate the shared region for Hyper-V: {e}"
                    ))
                })?,
            ),
            None => Arc::new(SimPfns::new(gpa_base, geometry.region_len)),
        };
        let doorbells = (0..grant.n_queues)
            .map(|_| EventFd::new().map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| unavailable(format!("cannot create an eventfd: {e}")))?;
        Ok(Provisioned {
            shared: ClientShared {
                pfns,
                id,
                uid: peer.uid,
                pid: peer.pid,
                region: Arc::new(region),
                geometry,
                gpa_base,
                doorbells,
            },
            sq_entries: grant.sq_entries,
        })
    }

    /// Registers a provisioned client's memory with the host (sim), sends it the reply with
    /// its region and doorbells, and hands it to every worker.
    fn hand_over(&mut self, sock: UnixStream, peer: &Peer, p: Provisioned) -> Result<(), String> {
        let Provisioned { shared, sq_entries } = p;
        let (id, len) = (shared.id, shared.geometry.region_len);
        let mut registered = false;
        if let Some(bus) = self.host.as_mut().and_then(|h| h.bus.as_mut()) {
            match bus.register_memory(id, shared.gpa_base, shared.region.fd(), len) {
                Ok(()) => registered = true,
                Err(e) => {
                    tracing::warn!(client = id, error = %e, "could not register client memory with the host")
                }
            }
        }
        let mut reply = HelloReply::new_zeroed_reply();
        reply.status = HelloStatus::Ok.code();
        reply.n_queues = shared.doorbells.len() as u32;
        reply.region_len = len;
        reply.client_id = id;
        let mut fds: Vec<BorrowedFd<'_>> = vec![shared.region.fd()];
        fds.extend(shared.doorbells.iter().map(|d| d.as_fd()));
        if let Err(e) = send_with_fds(&sock, reply.as_bytes(), &fds) {
            if registered && let Some(bus) = self.host.as_mut().and_then(|h| h.bus.as_mut()) {
                let _ = bus.unregister_memory(id);
            }
            return Err(format!("sending the reply to pid {}: {e}", peer.pid));
        }
        drop(fds);
        self.next_id += 1;
        self.next_gpa = self
            .next_gpa
            .saturating_add(len.div_ceil(GPA_ALIGN) * GPA_ALIGN + GPA_ALIGN);
        let _ = sock.set_nonblocking(true);
        let shared = Arc::new(shared);
        for w in &self.workers {
            w.send(ToWorker::AddClient(shared.clone()));
        }
        tracing::info!(
            client = id,
            uid = peer.uid,
            pid = peer.pid,
            sq = sq_entries,
            arena = shared.geometry.arena_len,
            pages = ?shared.region.page_kind(),
            "client connected"
        );
        self.clients.insert(
            id,
            ClientEntry {
                sock,
                shared,
                removing: false,
                drained: 0,
                registered,
            },
        );
        self.info.clients = self.clients.len();
        Ok(())
    }
}

/// A granted client's resources, created but not yet shared with anyone.
struct Provisioned {
    /// What the workers get.
    shared: ClientShared,
    /// SQ entries per queue (for the log).
    sq_entries: u32,
}

trait ZeroedReply {
    fn new_zeroed_reply() -> Self;
}

impl ZeroedReply for HelloReply {
    fn new_zeroed_reply() -> Self {
        use blobring_abi::FromZeros;
        let mut r = HelloReply::new_zeroed();
        r.magic = HELLO_REPLY_MAGIC;
        r.abi_version = ABI_VERSION;
        r
    }
}

/// Applies `--transport` (logging why), and for `uio` checks that client regions can be
/// hugetlb-backed, locked and translated (refusing to start with the fix otherwise).
fn select_transport(cfg: &Config, n_queues: u32) -> Result<Option<UioSetup>, DaemonError> {
    let sysfs = Sysfs::new(&cfg.sysfs_root);
    let kernel = KernelVersion::running().ok();
    let d = blobring_vmbus::uio::select(cfg.transport.into(), &sysfs, kernel)
        .map_err(|e| DaemonError::Setup(format!("--transport uio: {e}")))?;
    tracing::info!(transport = ?d.transport, reason = %d.reason, "transport selected");
    if d.transport == Transport::Sim {
        return Ok(None);
    }
    let Some(device) = d.device else {
        return Err(DaemonError::Setup(format!(
            "uio transport chosen but no Azure Blob device found: {}",
            d.reason
        )));
    };
    if d.needs_bind && !cfg.bind {
        return Err(DaemonError::Setup(format!(
            "the Azure Blob device {} is not bound to uio_hv_generic; rerun blobringd with --bind \
             (as root), or pass --transport sim to use blobring-host",
            device.instance
        )));
    }
    // One client region of the default size must fit: the daemon is useless otherwise. The
    // pool bounds how many clients can connect (each refused one is told why).
    let g = RegionGeometry::new(
        n_queues,
        cfg.queue_depth,
        cfg.queue_depth * 2,
        cfg.arena_size,
        2 << 20,
    )
    .map_err(|e| DaemonError::Setup(format!("region geometry: {e}")))?;
    let env = GpaEnvironment::probe("/proc".as_ref())
        .map_err(|e| DaemonError::Setup(format!("uio transport: {e}")))?;
    preflight(&env, g.region_len).map_err(|e| DaemonError::Setup(format!("uio transport: {e}")))?;
    tracing::info!(
        hugepages_free = env.hugepages_free,
        region_bytes = g.region_len,
        clients_possible = env.hugepages_free * env.hugepage_size / g.region_len.max(1),
        "hugepages for client regions"
    );
    let pagemap = Pagemap::open_self()
        .map_err(|e| DaemonError::Setup(format!("opening /proc/self/pagemap: {e}")))?;
    Ok(Some(UioSetup {
        sysfs,
        device,
        kernel,
        opener: SystemOpener::new(&cfg.dev_dir),
        pagemap,
    }))
}

/// The supplementary groups of process `pid` (`/proc/<pid>/status`); none when unreadable.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse::<u32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Creates, initialises and returns a client region: THP (falling back to 4 KiB pages) by
/// default, hugetlb first when `hugetlb`.
fn create_region(
    id: u64,
    n_queues: u32,
    sq: u32,
    arena: u64,
    hugetlb: bool,
    uio: bool,
) -> Result<(Region, RegionGeometry), String> {
    // The daemon's pid makes the name unique on the machine (visible in /proc/<pid>/fd).
    let name = format!("blobring-client-{}-{id}", std::process::id());
    let attempts: &[(PagePolicy, u32)] = if uio {
        // Hyper-V needs stable, translatable pages: hugetlb only, never a fallback.
        &[(PagePolicy::Huge, 2 << 20)]
    } else if hugetlb {
        &[(PagePolicy::Auto, 2 << 20), (PagePolicy::Small, 4096)]
    } else {
        &[(PagePolicy::Thp, 2 << 20), (PagePolicy::Small, 4096)]
    };
    let mut last = String::new();
    for &(pages, page_size) in attempts {
        let g = RegionGeometry::new(n_queues, sq, sq * 2, arena, page_size)
            .map_err(|e| e.to_string())?;
        match Region::create_with(
            &name,
            g.region_len,
            RegionOptions {
                pages,
                // uio: Hyper-V reads and writes guest-physical pages, which must exist before
                // their PFNs are translated. Otherwise the daemon allocates only the pages it
                // initialises (header, queues): the client's pre-faulted mapping allocates its
                // arena, charged to the client and paid by its connect, and the host maps the
                // region lazily, so a handshake costs the daemon and the host the same for any
                // arena size. (Pre-allocating a 16 MiB arena here cost the daemon ~4 ms of CPU
                // per handshake and the host's pre-faulted mapping as much again: a client
                // reconnecting in a loop spent half a core of theirs.)
                prefault: uio,
            },
        ) {
            Ok(region) => {
                region
                    .write_obj(0, &g.header(id))
                    .map_err(|e| e.to_string())?;
                for q in 0..n_queues {
                    QueueLayout::from_geometry(&g, q)
                        .and_then(|l| l.initialize(&region, 0))
                        .map_err(|e| e.to_string())?;
                }
                tracing::debug!(client = id, kind = ?region.page_kind(), len = region.len(), "client region created");
                return Ok((region, g));
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

fn send_with_fds(sock: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !cmsg.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("too many fds for the control buffer"));
    }
    let n = rustix::net::sendmsg(sock, &[IoSlice::new(bytes)], &mut cmsg, SendFlags::NOSIGNAL)?;
    if n < bytes.len() {
        (&*sock).write_all(&bytes[n..])?;
    }
    Ok(())
}
