#![forbid(unsafe_code)]
//! The daemon's `uio` wiring in-process: a real worker ([`blobring_daemon::worker::run`])
//! drives `UioChannel`s of a fake device (fake sysfs tree, memfds standing in for the uio
//! maps, an eventfd standing in for the uio fd; the fixture of `vmbus/tests/uio_fixture.rs`)
//! through its own listener, with a fixture host answering on the rings. The whole daemon
//! process cannot run uio here (no Hyper-V, no hugetlb pool for `preflight`).

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blobring_abi::vmbus::{AZ_BLOB_CLASS_GUID_STR, AzBlobVspResponse, rc};
use blobring_abi::{Cqe, FromZeros, OP_BLOB, RegionGeometry, Sqe};
use blobring_daemon::stats::WorkerStats;
use blobring_daemon::uio::UioWorkerChannel;
use blobring_daemon::worker::{self, ClientShared, ToControl, ToWorker, WorkerChannel};
use blobring_ring::{ClientQueue, EventFd, Notifier, QueueLayout};
use blobring_shm::{Mapping, PagePolicy, Region, RegionOptions, SharedMemory, Window};
use blobring_vmbus::blob::{encode_blob_completion, parse_blob_request};
use blobring_vmbus::guest_phys::SimPfns;
use blobring_vmbus::packet::decode;
use blobring_vmbus::ring::{IncomingRing, OutgoingRing, init_ring};
use blobring_vmbus::uio::sysfs::{self, Sysfs};
use blobring_vmbus::uio::{
    DeviceOpener, InterruptMode, KernelVersion, UioDevice, UioError, UioEvents, UioOptions,
};
use rustix::event::{EventfdFlags, eventfd};
use rustix::fs::{MemfdFlags, SealFlags};

const INSTANCE: &str = "a1b2c3d4-0000-4000-8000-00000000b10b";
const PRIMARY_RING: u64 = 0x11000;
const SUB_RING: u64 = 64 << 10;
const PAGE: u64 = 4096;
const NEW: KernelVersion = KernelVersion::new(6, 12, 3);

// ---------------------------------------------------------------------------------------------
// Fake sysfs tree

struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Self {
        let t = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(t.sysfs().devices_dir()).unwrap();
        t
    }

    fn sysfs(&self) -> Sysfs {
        Sysfs::new(self.dir.path())
    }

    fn dev_dir(&self, instance: &str) -> PathBuf {
        self.sysfs().devices_dir().join(instance)
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A loaded driver with empty `new_id`, `bind`, `unbind` attributes.
    fn driver(&self, name: &str) -> PathBuf {
        let d = self.sysfs().driver_dir(name);
        for f in ["new_id", "bind", "unbind"] {
            Self::write(&d.join(f), "");
        }
        d
    }

    fn device(&self, instance: &str, class: &str, relid: u32, monitor: Option<u32>) -> PathBuf {
        let d = self.dev_dir(instance);
        // sysfs prints the class with braces.
        Self::write(&d.join("class_id"), &format!("{{{class}}}\n"));
        Self::write(&d.join("id"), &format!("{relid}\n"));
        if let Some(m) = monitor {
            Self::write(&d.join("monitor_id"), &format!("{m}\n"));
        }
        Self::write(&d.join("driver_override"), "");
        // The primary shows up in channels/ too, with subchannel_id 0.
        Self::write(&d.join(format!("channels/{relid}/subchannel_id")), "0\n");
        Self::write(&d.join(format!("channels/{relid}/ring")), "");
        d
    }

    fn bind_to(&self, instance: &str, driver: &str) {
        let link = self.dev_dir(instance).join("driver");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(self.sysfs().driver_dir(driver), link).unwrap();
    }

    fn uio(&self, instance: &str, uio: &str, maps: &[(&str, u64)]) {
        std::fs::create_dir_all(self.dev_dir(instance).join("uio").join(uio)).unwrap();
        let m = self.sysfs().uio_class_dir(uio).join("maps");
        for (i, (name, size)) in maps.iter().enumerate() {
            Self::write(&m.join(format!("map{i}/name")), &format!("{name}\n"));
            Self::write(&m.join(format!("map{i}/size")), &format!("0x{size:08x}\n"));
        }
    }

    fn subchannel(&self, instance: &str, relid: u32, sub: u32, monitor: Option<u32>, ring: bool) {
        let c = self.dev_dir(instance).join(format!("channels/{relid}"));
        Self::write(&c.join("subchannel_id"), &format!("{sub}\n"));
        if let Some(m) = monitor {
            Self::write(&c.join("monitor_id"), &format!("{m}\n"));
        }
        if ring {
            Self::write(&c.join("ring"), "");
        }
    }

    fn ring_path(&self, instance: &str, relid: u32) -> PathBuf {
        self.dev_dir(instance)
            .join(format!("channels/{relid}/ring"))
    }
}

fn standard_maps() -> [(&'static str, u64); 3] {
    [
        ("txrx_rings", 2 * PRIMARY_RING),
        ("int_page", PAGE),
        ("monitor_page", PAGE),
    ]
}

// ---------------------------------------------------------------------------------------------
// Fake device files

fn sealed_memfd(len: u64) -> OwnedFd {
    let fd = rustix::fs::memfd_create("uio-fake", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
    fd
}

/// The uio fd: an eventfd the fixture "interrupts" through, plus a record of the s32 values
/// written (irqcontrol) and a rescind switch (reads then fail with EIO, as uio does).
#[derive(Debug)]
struct FakeEvents {
    efd: OwnedFd,
    writes: Mutex<Vec<i32>>,
    rescinded: AtomicBool,
}

impl FakeEvents {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            efd: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap(),
            writes: Mutex::new(Vec::new()),
            rescinded: AtomicBool::new(false),
        })
    }

    /// The kernel's ISR: `uio_event_notify`.
    fn interrupt(&self) {
        rustix::io::write(&self.efd, &1u64.to_ne_bytes()).unwrap();
    }

    fn writes(&self) -> Vec<i32> {
        self.writes.lock().unwrap().clone()
    }

    fn clear_writes(&self) {
        self.writes.lock().unwrap().clear();
    }
}

impl AsFd for FakeEvents {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.efd.as_fd()
    }
}

impl UioEvents for FakeEvents {
    fn irqcontrol(&self, v: i32) -> std::io::Result<()> {
        self.writes.lock().unwrap().push(v);
        Ok(())
    }

    fn read_count(&self) -> std::io::Result<Option<u32>> {
        if self.rescinded.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(5)); // EIO
        }
        let mut b = [0u8; 8];
        match rustix::io::read(&self.efd, &mut b) {
            Ok(_) => Ok(Some(u64::from_ne_bytes(b) as u32)),
            Err(rustix::io::Errno::AGAIN) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Hands out memfds for the uio maps and `ring` files, and the fake event fd.
#[derive(Debug)]
struct FakeOpener {
    events: Arc<FakeEvents>,
    maps: Vec<OwnedFd>,
    rings: Mutex<HashMap<PathBuf, OwnedFd>>,
    uio_opens: AtomicUsize,
}

impl FakeOpener {
    fn new(map_sizes: &[u64]) -> Self {
        Self {
            events: FakeEvents::new(),
            maps: map_sizes.iter().map(|&s| sealed_memfd(s)).collect(),
            rings: Mutex::new(HashMap::new()),
            uio_opens: AtomicUsize::new(0),
        }
    }

    fn add_ring(&self, path: PathBuf, len: u64) -> OwnedFd {
        let fd = sealed_memfd(len);
        let dup = fd.try_clone().unwrap();
        self.rings.lock().unwrap().insert(path, fd);
        dup
    }

    fn map(&self, index: usize) -> Arc<Mapping> {
        let len = rustix::fs::fstat(&self.maps[index]).unwrap().st_size as u64;
        Arc::new(Mapping::map_peer(self.maps[index].as_fd(), len).unwrap())
    }
}

impl DeviceOpener for FakeOpener {
    fn open_uio(&self, uio: &str) -> Result<Arc<dyn UioEvents>, UioError> {
        assert_eq!(uio, "uio0");
        self.uio_opens.fetch_add(1, Ordering::SeqCst);
        Ok(self.events.clone())
    }

    fn open_map(
        &self,
        _uio: &str,
        _events: &dyn UioEvents,
        index: u32,
    ) -> Result<(OwnedFd, u64), UioError> {
        Ok((self.maps[index as usize].try_clone().unwrap(), 0))
    }

    fn open_ring(&self, ring: &Path) -> Result<OwnedFd, UioError> {
        match self.rings.lock().unwrap().get(ring) {
            Some(fd) => Ok(fd.try_clone().unwrap()),
            None => Err(UioError::Open {
                what: ring.display().to_string(),
                source: std::io::Error::from_raw_os_error(19), // ENODEV: channel not open
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The host side: the crate's own rings over the same memory

type HostMem = Window<Arc<Mapping>>;

/// One channel as the host sees it: consumes the guest's TX ring, produces on its RX ring.
struct HostChannel {
    from_guest: IncomingRing<HostMem>,
    to_guest: OutgoingRing<HostMem>,
}

impl HostChannel {
    /// Over a `2 * S` mapping; initialises both rings as the kernel does on open (§1.2).
    fn new(mem: Arc<Mapping>) -> Self {
        let s = mem.size() / 2;
        let tx = Window::new(mem.clone(), 0, s).unwrap();
        let rx = Window::new(mem, s, s).unwrap();
        init_ring(&tx).unwrap();
        init_ring(&rx).unwrap();
        Self {
            from_guest: IncomingRing::new(tx).unwrap(),
            to_guest: OutgoingRing::new(rx).unwrap(),
        }
    }

    /// Answers every blob request waiting on the TX ring with a completion (status 0,
    /// `response_len = 7`). `kernel_masks`: play an old kernel's ISR, which sets the RX
    /// `interrupt_mask` before notifying. Returns the transaction ids answered.
    fn answer_all(&mut self, events: &FakeEvents, kernel_masks: bool) -> Vec<u64> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut answered = Vec::new();
        while self.from_guest.read_packet(&mut buf).is_ok() {
            let p = decode(&buf).unwrap();
            let req = parse_blob_request(&p).unwrap();
            let resp = AzBlobVspResponse {
                length: req.vsp.data_buffer_length,
                error: 0,
                response_len: 7,
            };
            encode_blob_completion(&mut out, req.trans_id, &resp).unwrap();
            if self.to_guest.write(&[&out]).unwrap() {
                if kernel_masks {
                    self.to_guest
                        .memory()
                        .store_u32(rc::INTERRUPT_MASK, 1, Ordering::SeqCst)
                        .unwrap();
                }
                events.interrupt();
            }
            answered.push(req.trans_id);
        }
        self.from_guest.commit_read().unwrap();
        answered
    }
}

/// A whole fake machine: tree, opener, host view of every channel.
struct Machine {
    tree: Tree,
    opener: FakeOpener,
    host: Vec<HostChannel>,
}

/// Device with relid 14 (monitor id `monitor`), bound to uio0, and `subs` subchannels
/// (relids 15.., not monitored) whose rings already exist.
fn machine(monitor: Option<u32>, subs: u32) -> Machine {
    let tree = Tree::new();
    tree.driver("uio_hv_generic");
    tree.device(INSTANCE, AZ_BLOB_CLASS_GUID_STR, 14, monitor);
    tree.bind_to(INSTANCE, "uio_hv_generic");
    tree.uio(INSTANCE, "uio0", &standard_maps());
    let opener = FakeOpener::new(&[2 * PRIMARY_RING, PAGE, PAGE]);
    let mut host = vec![HostChannel::new(opener.map(0))];
    for i in 0..subs {
        let relid = 15 + i;
        tree.subchannel(INSTANCE, relid, i + 1, None, true);
        let fd = opener.add_ring(tree.ring_path(INSTANCE, relid), 2 * SUB_RING);
        host.push(HostChannel::new(Arc::new(
            Mapping::map_peer(fd.as_fd(), 2 * SUB_RING).unwrap(),
        )));
    }
    Machine { tree, opener, host }
}

fn opts(mode: InterruptMode, subchannels: u32) -> UioOptions {
    UioOptions {
        subchannels,
        subchannel_timeout: Duration::from_secs(5),
        interrupt_mode: mode,
    }
}

fn open(m: &Machine, mode: InterruptMode, subs: u32) -> UioDevice {
    let dev = sysfs::find_blob_device(&m.tree.sysfs()).unwrap();
    // Already bound: bind_and_open only opens.
    UioDevice::bind_and_open(
        &m.tree.sysfs(),
        &dev,
        &m.opener,
        &opts(mode, subs),
        Some(NEW),
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// A worker of the daemon over the fake device

/// A running worker thread; asks it to stop and joins it on drop (also when a test fails).
struct RunningWorker {
    to: crossbeam_channel::Sender<ToWorker>,
    from: crossbeam_channel::Receiver<ToControl>,
    doorbell: Arc<EventFd>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl RunningWorker {
    fn start() -> Self {
        let (to, rx) = crossbeam_channel::unbounded();
        let (tc, from) = crossbeam_channel::unbounded();
        let doorbell = Arc::new(EventFd::new().unwrap());
        let wake = Arc::new(EventFd::new().unwrap());
        let cell = Arc::new(Mutex::new(WorkerStats::new(0, None)));
        let settings = worker::WorkerSettings {
            index: 0,
            cpu: None,
            spin: Duration::ZERO,
            batch: 32,
            default_timeout: Duration::from_secs(10),
        };
        let db = doorbell.clone();
        let thread = std::thread::spawn(move || worker::run(settings, rx, tc, db, wake, cell));
        Self {
            to,
            from,
            doorbell,
            thread: Some(thread),
        }
    }

    fn send(&self, msg: ToWorker) {
        self.to.send(msg).unwrap();
        self.doorbell.notify().unwrap();
    }
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        let _ = self.to.send(ToWorker::Shutdown {
            deadline: Instant::now() + Duration::from_millis(500),
        });
        let _ = self.doorbell.notify();
        if let Some(t) = self.thread.take() {
            let r = t.join();
            if !std::thread::panicking() {
                assert!(matches!(r, Ok(Ok(()))), "worker ended with {r:?}");
            }
        }
    }
}

/// A client region with one queue pair, as the control thread creates it.
fn client(arena: u64) -> (Arc<ClientShared>, ClientQueue<Arc<Region>>) {
    let g = RegionGeometry::new(1, 64, 128, arena, 4096).unwrap();
    let region = Region::create_with(
        "uio-worker-test",
        g.region_len,
        RegionOptions {
            pages: PagePolicy::Small,
            prefault: false,
        },
    )
    .unwrap();
    region.write_obj(0, &g.header(1)).unwrap();
    let layout = QueueLayout::from_geometry(&g, 0).unwrap();
    layout.initialize(&region, 0).unwrap();
    let region = Arc::new(region);
    let q = ClientQueue::attach(region.clone(), &layout).unwrap();
    let shared = Arc::new(ClientShared {
        id: 1,
        uid: 0,
        pid: std::process::id() as i32,
        region,
        geometry: g,
        gpa_base: 1 << 32,
        pfns: Arc::new(SimPfns::new(1 << 32, g.region_len)),
        doorbells: vec![Arc::new(EventFd::new().unwrap())],
    });
    (shared, q)
}

fn blob_sqe(g: &RegionGeometry, user_data: u64, data_len: u32) -> Sqe {
    let a = g.arena_offset;
    Sqe {
        opcode: OP_BLOB,
        user_data,
        request_offset: a,
        request_len: 100,
        response_offset: a + PAGE,
        response_len: 200,
        data_offset: a + 2 * PAGE,
        data_len,
        data_valid: 0,
        ..Sqe::new_zeroed()
    }
}

/// Reaps `n` completions within 10 s.
fn reap(q: &mut ClientQueue<Arc<Region>>, n: usize) -> Vec<Cqe> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut buf = vec![Cqe::new_zeroed(); 64];
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} completions within 10 s: {got:?}",
            got.len()
        );
        let p = q.reap(&mut buf).unwrap();
        got.extend_from_slice(&buf[..p.count as usize]);
        std::thread::sleep(Duration::from_micros(200));
    }
    got
}

/// The fixture host answering on every ring until dropped.
struct HostThread {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl HostThread {
    fn start(mut host: Vec<HostChannel>, events: Arc<FakeEvents>, kernel_masks: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut answered = 0;
            while !s.load(Ordering::SeqCst) {
                for h in &mut host {
                    answered += h.answer_all(&events, kernel_masks).len();
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            answered
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for HostThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Opens the fake device as `blobringd` does: channels wrapped with the worker's listener.
fn worker_channels(
    m: &Machine,
    mode: InterruptMode,
    subs: u32,
) -> (Vec<Box<dyn WorkerChannel>>, u32) {
    let dev = open(m, mode, subs);
    let max = dev.max_request_pages();
    let listener = dev.open_listener(&m.opener).unwrap();
    let mode = dev.interrupt_mode();
    let chans = dev
        .into_channels()
        .into_iter()
        .map(|c| {
            Box::new(UioWorkerChannel::new(c, listener.clone(), mode)) as Box<dyn WorkerChannel>
        })
        .collect();
    (chans, max)
}

#[test]
fn worker_serves_requests_over_uio_channels_both_interrupt_modes() {
    for (mode, kernel_masks) in [
        (InterruptMode::for_kernel(NEW), false),
        (InterruptMode::KernelMasks, true),
    ] {
        let mut m = machine(Some(3), 2);
        let (chans, max) = worker_channels(&m, mode, 2);
        assert_eq!(chans.len(), 3, "primary + 2 subchannels");
        assert!(chans.iter().all(|c| c.max_request_pages() >= Some(max)));
        assert!(chans.iter().any(|c| c.max_request_pages() == Some(max)));
        let host = HostThread::start(
            std::mem::take(&mut m.host),
            m.opener.events.clone(),
            kernel_masks,
        );
        let w = RunningWorker::start();
        let (shared, mut q) = client(1 << 20);
        let g = shared.geometry;
        w.send(ToWorker::AddClient(shared.clone()));
        w.send(ToWorker::Channels(chans));
        m.opener.events.clear_writes();
        // Several rounds, so the worker sleeps on its uio listener between them.
        let mut total = 0;
        for round in 0..5u64 {
            let sqes: Vec<Sqe> = (0..40)
                .map(|i| blob_sqe(&g, round * 100 + i, 4096))
                .collect();
            let _ = q.submit(&sqes).unwrap();
            shared.doorbells[0].notify().unwrap();
            let cqes = reap(&mut q, sqes.len());
            let mut ids: Vec<u64> = cqes.iter().map(|c| c.user_data).collect();
            ids.sort_unstable();
            assert_eq!(ids, (round * 100..round * 100 + 40).collect::<Vec<_>>());
            for c in &cqes {
                assert_eq!((c.res, c.vsp_status, c.response_len), (0, 0, 7), "{c:?}");
                assert_eq!(c.data_len, 4096);
            }
            total += cqes.len();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            host.stop(),
            total,
            "every request reached the host exactly once"
        );
        if mode.rearm_needs_write() {
            assert!(
                m.opener.events.writes().contains(&1),
                "{mode:?}: the worker re-enabled the interrupt with write(1) before sleeping"
            );
        }
        // Each worker has its own listener: the uio fd was opened for the device and again
        // for the worker.
        assert!(m.opener.uio_opens.load(Ordering::SeqCst) >= 2);
        drop(w);
    }
}

#[test]
fn oversized_request_gets_e2big_others_still_served() {
    let mut m = machine(None, 0);
    let (chans, max) = worker_channels(&m, InterruptMode::for_kernel(NEW), 0);
    assert_eq!(max, 8179, "64 KiB data ring");
    let host = HostThread::start(std::mem::take(&mut m.host), m.opener.events.clone(), false);
    let w = RunningWorker::start();
    let (shared, mut q) = client(40 << 20);
    let g = shared.geometry;
    w.send(ToWorker::AddClient(shared.clone()));
    w.send(ToWorker::Channels(chans));
    // Request + response + data pages: exactly the limit, then one more.
    let fits = blob_sqe(&g, 1, (max - 2) * PAGE as u32);
    let too_big = blob_sqe(&g, 2, (max - 1) * PAGE as u32);
    let small = blob_sqe(&g, 3, 100);
    let _ = q.submit(&[fits, too_big, small]).unwrap();
    shared.doorbells[0].notify().unwrap();
    let mut cqes = reap(&mut q, 3);
    cqes.sort_by_key(|c| c.user_data);
    assert_eq!(cqes[0].res, 0, "{:?}", cqes[0]);
    assert_eq!(cqes[1].res, -7, "E2BIG: {:?}", cqes[1]);
    assert_eq!(cqes[2].res, 0, "{:?}", cqes[2]);
    assert_eq!(
        host.stop(),
        2,
        "the oversized request never reached the host"
    );
}

#[test]
fn rescind_is_reported_and_fails_in_flight_with_enodev() {
    let mut m = machine(Some(3), 0);
    let (chans, _) = worker_channels(&m, InterruptMode::for_kernel(NEW), 0);
    // No host thread: the request stays in flight.
    let _host = std::mem::take(&mut m.host);
    let w = RunningWorker::start();
    let (shared, mut q) = client(1 << 20);
    let g = shared.geometry;
    w.send(ToWorker::AddClient(shared.clone()));
    w.send(ToWorker::Channels(chans));
    let _ = q.submit(&[blob_sqe(&g, 9, 4096)]).unwrap();
    shared.doorbells[0].notify().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    m.opener.events.rescinded.store(true, Ordering::SeqCst);
    m.opener.events.interrupt();
    let msg = w
        .from
        .recv_timeout(Duration::from_secs(5))
        .expect("the worker reports the broken channel");
    match msg {
        ToControl::ChannelBroken { reason, .. } => {
            assert!(reason.contains("interrupt"), "{reason}")
        }
        other => panic!("unexpected {other:?}"),
    }
    // What the control thread does on that report.
    w.send(ToWorker::ChannelsLost);
    let c = reap(&mut q, 1);
    assert_eq!((c[0].user_data, c[0].res), (9, -19), "ENODEV: {:?}", c[0]);
}

/// `blobringd --transport uio` refuses to start, saying why and what to do.
fn refused(tree: &Tree, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_blobringd"))
        .args(["--transport", "uio", "--workers", "1", "--socket"])
        .arg(dir.path().join("d.sock"))
        .arg("--sysfs-root")
        .arg(tree.dir.path())
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("blobringd --transport uio did not refuse within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    err
}

#[test]
fn daemon_refuses_uio_without_device_or_binding() {
    let tree = Tree::new();
    let err = refused(&tree, &[]);
    assert!(err.contains("no Azure Blob device"), "{err}");
    // A device on the bus, not bound, driver loaded: only with --bind.
    tree.driver("uio_hv_generic");
    tree.device(INSTANCE, AZ_BLOB_CLASS_GUID_STR, 14, Some(3));
    let err = refused(&tree, &[]);
    assert!(
        err.contains("--bind") || err.contains("uio_hv_generic"),
        "{err}"
    );
}
