#![forbid(unsafe_code)]
//! The daemon's `uio` wiring in-process: a real worker ([`blobring_daemon::worker::run`])
//! drives `UioChannel`s of a fake device (fake sysfs tree, memfds standing in for the uio
//! maps, an eventfd standing in for the uio fd; the fixture `blobring_vmbus::uio::fake`)
//! through its own listener, with a fixture host answering on the rings. The whole daemon
//! process cannot run uio here (no Hyper-V, no hugetlb pool for `preflight`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blobring_abi::vmbus::AZ_BLOB_CLASS_GUID_STR;
use blobring_abi::{Cqe, FromZeros, Opcode, RegionGeometry, Sqe};
use blobring_daemon::stats::WorkerStats;
use blobring_daemon::uio;
use blobring_daemon::worker::{self, ClientShared, ToControl, ToWorker, WorkerChannel};
use blobring_ring::{ClientQueue, EventFd, Notifier, QueueLayout};
use blobring_shm::{PagePolicy, Region, RegionOptions, SharedMemory};
use blobring_vmbus::guest_phys::SimPfns;
use blobring_vmbus::uio::fake::{
    FakeDriver, FakeEvents, HostChannel, INSTANCE, Machine, PAGE, Spec, Tree, machine,
    machine_with, open, open_with, probe_opts,
};
use blobring_vmbus::uio::{InterruptMode, UioDevice};

// ---------------------------------------------------------------------------------------------
// A worker of the daemon over the fake device

/// A running worker thread; asks it to stop and joins it on drop (also when a test fails).
struct RunningWorker {
    to: crossbeam_channel::Sender<ToWorker>,
    from: crossbeam_channel::Receiver<ToControl>,
    doorbell: Arc<EventFd>,
    cell: Arc<Mutex<WorkerStats>>,
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
            uid_inflight: 256,
            default_timeout: Duration::from_secs(10),
        };
        let db = doorbell.clone();
        let c = cell.clone();
        let thread = std::thread::spawn(move || worker::run(settings, rx, tc, db, wake, c));
        Self {
            to,
            from,
            doorbell,
            cell,
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
        opcode: Opcode::Blob.code(),
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
    thread: Option<std::thread::JoinHandle<(usize, Vec<[u8; 16]>)>>,
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
            let guids = host.iter().flat_map(|h| h.guids.iter().copied()).collect();
            (answered, guids)
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Requests answered, and the transaction GUID of each as seen on the wire.
    fn stop(mut self) -> (usize, Vec<[u8; 16]>) {
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
    wrap_channels(m, open(m, mode, subs))
}

/// A running worker serving a new client (arena of `arena` bytes) over `chans`.
fn serving(
    chans: Vec<Box<dyn WorkerChannel>>,
    arena: u64,
) -> (
    RunningWorker,
    Arc<ClientShared>,
    ClientQueue<Arc<Region>>,
    RegionGeometry,
) {
    let w = RunningWorker::start();
    let (shared, q) = client(arena);
    let g = shared.geometry;
    w.send(ToWorker::AddClient(shared.clone()));
    w.send(ToWorker::Channels(chans));
    (w, shared, q, g)
}

/// The channels of an opened device, wrapped as `blobringd` does (one worker).
fn wrap_channels(m: &Machine, dev: UioDevice) -> (Vec<Box<dyn WorkerChannel>>, u32) {
    let max = dev.max_request_pages();
    let listener = dev.open_listener(&m.opener).unwrap();
    let mode = dev.interrupt_mode();
    let mut per_worker = uio::worker_channels(dev.into_channels(), &[listener], mode);
    (per_worker.remove(0), max)
}

#[test]
fn worker_serves_requests_over_uio_channels_both_interrupt_modes() {
    // The mode is not given: the transport detects it from how the fake driver behaves.
    for (driver, mode) in [
        (
            FakeDriver::LeavesMaskToUserspace,
            InterruptMode::UserspaceMasks,
        ),
        (
            FakeDriver::MasksOnOpenAndInterrupt,
            InterruptMode::KernelMasks,
        ),
    ] {
        let kernel_masks = driver == FakeDriver::MasksOnOpenAndInterrupt;
        let mut m = machine_with(Spec {
            driver,
            ..Spec::new(Some(3), 2)
        });
        let dev = open_with(&m, &probe_opts(2, PAGE));
        assert_eq!(dev.interrupt_mode(), mode, "{driver:?}");
        let (chans, max) = wrap_channels(&m, dev);
        assert_eq!(chans.len(), 3, "primary + 2 subchannels");
        assert!(chans.iter().all(|c| c.max_request_pages() >= Some(max)));
        assert!(chans.iter().any(|c| c.max_request_pages() == Some(max)));
        let host = HostThread::start(
            std::mem::take(&mut m.host),
            m.opener.events.clone(),
            kernel_masks,
        );
        let (w, shared, mut q, g) = serving(chans, 1 << 20);
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
        let (answered, guids) = host.stop();
        assert_eq!(
            answered, total,
            "every request reached the host exactly once"
        );
        // The driver copies a caller-supplied GUID into every request: ours are unique per
        // request, never zero.
        let distinct: std::collections::HashSet<_> = guids.iter().collect();
        assert_eq!(distinct.len(), total, "one GUID per request");
        assert!(!guids.contains(&[0; 16]));
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
    let (chans, max) = worker_channels(&m, InterruptMode::UserspaceMasks, 0);
    assert_eq!(max, 8179, "64 KiB data ring");
    let host = HostThread::start(std::mem::take(&mut m.host), m.opener.events.clone(), false);
    let (_w, shared, mut q, g) = serving(chans, 40 << 20);
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
        host.stop().0,
        2,
        "the oversized request never reached the host"
    );
}

#[test]
fn rescind_is_reported_and_fails_in_flight_with_enodev() {
    let mut m = machine(Some(3), 0);
    let (chans, _) = worker_channels(&m, InterruptMode::UserspaceMasks, 0);
    // No host thread: the request stays in flight.
    let _host = std::mem::take(&mut m.host);
    let (w, shared, mut q, g) = serving(chans, 1 << 20);
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

/// The GUID a request carries on the wire is the one the ctl stats list for it while it is in
/// flight (and the worker's debug log prints), so a host-side trace can be joined with ours.
#[test]
fn in_flight_list_shows_the_guid_sent_on_the_wire() {
    let mut m = machine(Some(3), 0);
    let (chans, _) = worker_channels(&m, InterruptMode::UserspaceMasks, 0);
    let (w, shared, mut q, g) = serving(chans, 1 << 20);
    let _ = q.submit(&[blob_sqe(&g, 77, 4096)]).unwrap();
    shared.doorbells[0].notify().unwrap();
    // The host takes the request and does not answer yet.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (tid, guid) = loop {
        if let Some(&r) = m.host[0].take_requests().first() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the request never reached the host"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_ne!(guid, [0; 16]);
    let listed = loop {
        let list = w.cell.lock().unwrap().in_flight_list.clone();
        if let Some(r) = list.iter().find(|r| r.state == "sent") {
            break *r;
        }
        assert!(Instant::now() < deadline, "not listed in flight: {list:?}");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!((listed.user_data, listed.transaction_id), (77, tid));
    assert_eq!(listed.guid, guid, "the listed GUID is the one on the wire");
    assert_eq!(listed.channel, Some(0));
    let doc = blobring_daemon::stats::to_json(std::slice::from_ref(&w.cell), &Default::default());
    let entry = &doc["in_flight"][0];
    assert_eq!(
        entry["guid"].as_str().unwrap(),
        blobring_vmbus::blob::guid_string(&guid)
    );
    assert_eq!(entry["transaction_id"].as_u64(), Some(tid));
    // Now the host answers; the request leaves the list.
    m.host[0].reply_type = 0xb;
    let events = m.opener.events.clone();
    let mut host = std::mem::take(&mut m.host);
    // Re-queue the answer by hand: a completion for `tid`.
    host[0].complete(tid, &events);
    let c = reap(&mut q, 1);
    assert_eq!((c[0].user_data, c[0].res, c[0].response_len), (77, 0, 7));
}

/// With more requests in flight than the list holds, the oldest are listed, each with its own
/// GUID, and the ctl document orders them oldest first.
#[test]
fn in_flight_list_keeps_the_oldest_when_many_are_in_flight() {
    let mut m = machine(Some(3), 0);
    let (chans, _) = worker_channels(&m, InterruptMode::UserspaceMasks, 0);
    let (w, shared, mut q, g) = serving(chans, 1 << 20);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut taken = Vec::new();
    for batch in 0..2u64 {
        let sqes: Vec<Sqe> = (0..50)
            .map(|i| blob_sqe(&g, batch * 100 + i, 4096))
            .collect();
        assert_eq!(q.submit(&sqes).unwrap().count, 50);
        shared.doorbells[0].notify().unwrap();
        // The host takes them and never answers.
        while taken.len() < 50 * (batch as usize + 1) {
            taken.extend(m.host[0].take_requests());
            assert!(
                Instant::now() < deadline,
                "only {} reached the host",
                taken.len()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let list = loop {
        let st = w.cell.lock().unwrap().clone();
        if st.in_flight == 100 && st.in_flight_list.iter().all(|r| r.state == "sent") {
            break st.in_flight_list;
        }
        assert!(Instant::now() < deadline, "in flight: {}", st.in_flight);
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(list.len(), blobring_daemon::worker::IN_FLIGHT_LIST_MAX);
    // All of the first batch (taken first) are listed.
    let mut first: Vec<u64> = list
        .iter()
        .map(|r| r.user_data)
        .filter(|&u| u < 100)
        .collect();
    first.sort_unstable();
    assert_eq!(first, (0..50).collect::<Vec<_>>());
    // Every listed GUID is the one its request carried on the wire.
    for r in &list {
        let wire = taken.iter().find(|t| t.0 == r.transaction_id).unwrap();
        assert_eq!(r.guid, wire.1);
    }
    let doc = blobring_daemon::stats::to_json(std::slice::from_ref(&w.cell), &Default::default());
    let ages: Vec<u64> = doc["in_flight"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["age_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(ages.len(), list.len());
    assert!(
        ages.windows(2).all(|a| a[0] >= a[1]),
        "oldest first: {ages:?}"
    );
    w.send(ToWorker::ChannelsLost);
    assert_eq!(reap(&mut q, 100).len(), 100);
}

/// The host answers with packets that are not completions (0x6 in-band, 0x7 xfer pages): the
/// worker reads the response where the driver reads it, counts the unexpected type, keeps the
/// channel, and releases the ring space of every packet read — including replies that match no
/// request, which used to stay reserved and fill the ring.
#[test]
fn replies_of_other_packet_types_complete_and_always_free_ring_space() {
    let mut m = machine(Some(3), 0);
    let (chans, _) = worker_channels(&m, InterruptMode::UserspaceMasks, 0);
    let (w, shared, mut q, g) = serving(chans, 1 << 20);
    let events = m.opener.events.clone();
    let mut host = std::mem::take(&mut m.host);
    for (i, ty) in [0x6u16, 0x7, 0xb].into_iter().enumerate() {
        host[0].reply_type = ty;
        let _ = q.submit(&[blob_sqe(&g, i as u64, 4096)]).unwrap();
        shared.doorbells[0].notify().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while host[0].answer_all(&events, false).is_empty() {
            assert!(
                Instant::now() < deadline,
                "request {i} never reached the host"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let c = reap(&mut q, 1);
        assert_eq!(
            (c[0].user_data, c[0].res, c[0].response_len),
            (i as u64, 0, 7)
        );
    }
    // Replies nobody asked for (unknown transaction ids), of a foreign type: dropped, counted,
    // and their space released.
    for tid in [0xdead_0001u64, 0xdead_0002] {
        host[0].reply_type = 0x7;
        host[0].complete(tid, &events);
    }
    // A completion too short to hold az_blob_vsp_response (descriptor only: offset8 = len8 =
    // 2), alone on the ring so nothing else read in the same pass could trigger the release.
    std::thread::sleep(Duration::from_millis(50));
    let short = [0x0b, 0, 2, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    host[0].reply_raw(&short, &events);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (bad, unexpected) = {
            let st = w.cell.lock().unwrap();
            (st.errors.bad_completions, st.errors.unexpected_reply_type)
        };
        if bad == 3 && unexpected == 4 && host[0].guest_released_all() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bad {bad}, unexpected {unexpected}, released {}",
            host[0].guest_released_all()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        w.from.try_recv().is_err(),
        "the channel was not reported broken"
    );
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
