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
use blobring_abi::{Cqe, FromZeros, OP_BLOB, RegionGeometry, Sqe};
use blobring_daemon::stats::WorkerStats;
use blobring_daemon::uio::UioWorkerChannel;
use blobring_daemon::worker::{self, ClientShared, ToControl, ToWorker, WorkerChannel};
use blobring_ring::{ClientQueue, EventFd, Notifier, QueueLayout};
use blobring_shm::{PagePolicy, Region, RegionOptions, SharedMemory};
use blobring_vmbus::guest_phys::SimPfns;
use blobring_vmbus::uio::InterruptMode;
use blobring_vmbus::uio::fake::{
    FakeEvents, HostChannel, INSTANCE, Machine, NEW, PAGE, Tree, machine, open,
};

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
