//! The `uio` transport against a fake sysfs tree, memfds standing in for the uio maps and the
//! subchannel `ring` files, an eventfd-backed fake of the uio fd that records writes, and a
//! fixture playing the Hyper-V host with the crate's own ring code.
//!
//! Nothing here touches real Hyper-V: the fake tree follows `reference/vmbus.md` §4.

mod common;

use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use blobring_abi::vmbus::AZ_BLOB_CLASS_GUID_STR;
use blobring_abi::vmbus::rc;
use blobring_shm::{Mapping, Pagemap, SharedMemory};
use blobring_vmbus::blob::{
    BlobRequestDesc, encode_blob_request, parse_blob_completion, parse_blob_reply,
};
use blobring_vmbus::guest_phys::{GpaRefusal, PagemapPfns, PfnTranslator, SimPfns};
use blobring_vmbus::uio::fake::{
    FakeDriver, FakeOpener, HostChannel, INSTANCE, Machine, NEW, PAGE, PAGE_64K, PRIMARY_RING,
    SUB_RING, Spec, Tree, machine, machine_with, open, open_with, opts, probe_opts, standard_maps,
};
use blobring_vmbus::uio::sysfs::{self, Sysfs};
use blobring_vmbus::uio::{
    DeviceOpener, InterruptMode, KernelVersion, MaskProbe, SignalPath, Transport, TransportChoice,
    UioDevice, UioError, UioOptions, detect_with, select,
};
use blobring_vmbus::{Channel, ChannelError};
use common::{pages, without_data};

const NET_CLASS: &str = "f8615163-df3e-46c5-913f-f2d2f965ed0e";
const OLD: KernelVersion = KernelVersion::new(6, 8, 0);

/// A blob request on pages of a sim-style region (the fixture host does not touch them).
fn packet(trans_id: u64) -> Vec<u8> {
    let t = SimPfns::new(1 << 30, 1 << 20);
    let mut q = Vec::new();
    let mut r = Vec::new();
    let qo = t.buffer_pfns(0, 200, &mut q).unwrap();
    let ro = t.buffer_pfns(PAGE, 4096, &mut r).unwrap();
    let desc = BlobRequestDesc {
        timeout_ms: 1000,
        transaction_guid: [7; 16],
        ..without_data(pages(qo, 200, &q), pages(ro, 4096, &r))
    };
    let mut pkt = Vec::new();
    encode_blob_request(&mut pkt, &mut Vec::new(), trans_id, &desc).unwrap();
    pkt
}

fn load(m: &Mapping, off: u64) -> u32 {
    m.load_u32(off, Ordering::SeqCst).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Discovery

#[test]
fn discovery_found_not_found_wrong_class_missing_uio() {
    let tree = Tree::new();
    // Empty bus: not found, with the message the issue asks for.
    let e = sysfs::find_blob_device(&tree.sysfs()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "no Azure Blob device (class {AZ_BLOB_CLASS_GUID_STR}) under {}",
            tree.sysfs().devices_dir().display()
        )) && msg.contains("this VM does not offer host-accelerated Blob access"),
        "{msg}"
    );
    // A network device (wrong class) is ignored.
    tree.device("net-0", NET_CLASS, 3, Some(1));
    assert!(matches!(
        sysfs::find_blob_device(&tree.sysfs()),
        Err(UioError::NoDevice { .. })
    ));
    // A directory without class_id is ignored too.
    std::fs::create_dir_all(tree.dev_dir("junk")).unwrap();
    // The blob device, not monitored, not bound: found, no uio.
    tree.device(INSTANCE, AZ_BLOB_CLASS_GUID_STR, 14, None);
    let d = sysfs::find_blob_device(&tree.sysfs()).unwrap();
    assert_eq!(d.instance, INSTANCE);
    assert_eq!(d.relid, 14);
    assert_eq!(d.monitor_id, None);
    assert_eq!(d.driver, None);
    assert_eq!(d.uio, None);
    assert!(!d.is_uio_bound());
    // Opening an unbound device says how to bind it.
    let e = UioDevice::open(
        &tree.sysfs(),
        &d,
        &FakeOpener::new(&[]),
        &opts(InterruptMode::UserspaceMasks, 0),
    )
    .unwrap_err();
    assert!(matches!(e, UioError::NotBound { .. }), "{e}");
    assert!(e.to_string().contains("new_id"), "{e}");
    // Monitored and bound with uio0.
    tree.driver("uio_hv_generic");
    Tree::write(&tree.dev_dir(INSTANCE).join("monitor_id"), "37\n");
    tree.bind_to(INSTANCE, "uio_hv_generic");
    tree.uio(INSTANCE, "uio0", &standard_maps());
    let d = sysfs::find_blob_device(&tree.sysfs()).unwrap();
    assert_eq!(d.monitor_id, Some(37));
    assert_eq!(d.driver.as_deref(), Some("uio_hv_generic"));
    assert_eq!(d.uio.as_deref(), Some("uio0"));
    assert!(d.is_uio_bound());
    assert_eq!(sysfs::find_blob_devices(&tree.sysfs()).unwrap().len(), 1);
    // Garbage in `id`: a parse error naming the file.
    Tree::write(&tree.dev_dir(INSTANCE).join("id"), "fourteen\n");
    let e = sysfs::find_blob_device(&tree.sysfs()).unwrap_err();
    assert!(
        matches!(e, UioError::Parse { .. }) && e.to_string().contains("/id"),
        "{e}"
    );
    // No /sys/bus/vmbus at all (not a Hyper-V guest): not found, no I/O error.
    let bare = tempfile::tempdir().unwrap();
    assert!(matches!(
        sysfs::find_blob_device(&Sysfs::new(bare.path())),
        Err(UioError::NoDevice { .. })
    ));
}

#[test]
fn detect_and_select_the_transport() {
    let tree = Tree::new();
    let d = detect_with(&tree.sysfs(), Some(NEW));
    assert_eq!(d.transport, Transport::Sim);
    assert!(d.reason.contains("no Azure Blob device"), "{}", d.reason);
    let e = select(TransportChoice::Uio, &tree.sysfs(), Some(NEW)).unwrap_err();
    assert!(matches!(e, UioError::NoDevice { .. }));
    assert_eq!(
        select(TransportChoice::Sim, &tree.sysfs(), Some(NEW))
            .unwrap()
            .transport,
        Transport::Sim
    );

    // Device present, driver not loaded.
    tree.device(INSTANCE, AZ_BLOB_CLASS_GUID_STR, 14, None);
    let d = detect_with(&tree.sysfs(), Some(NEW));
    assert_eq!(d.transport, Transport::Sim);
    assert!(
        d.reason.contains("run `modprobe uio_hv_generic`"),
        "{}",
        d.reason
    );
    let e = select(TransportChoice::Uio, &tree.sysfs(), Some(NEW)).unwrap_err();
    assert!(matches!(e, UioError::ModuleNotLoaded { .. }), "{e}");

    // Unmonitored device on a kernel that refuses it.
    tree.driver("uio_hv_generic");
    let d = detect_with(&tree.sysfs(), Some(OLD));
    assert_eq!(d.transport, Transport::Sim);
    assert!(d.reason.contains("6.10"), "{}", d.reason);
    assert!(matches!(
        select(TransportChoice::Uio, &tree.sysfs(), Some(OLD)),
        Err(UioError::UnmonitoredUnsupported { .. })
    ));

    // Bindable on a new kernel.
    let d = detect_with(&tree.sysfs(), Some(NEW));
    assert_eq!(d.transport, Transport::Uio);
    assert!(d.needs_bind);
    assert_eq!(d.device.as_ref().unwrap().instance, INSTANCE);
    let auto = select(TransportChoice::Auto, &tree.sysfs(), Some(NEW)).unwrap();
    assert_eq!(auto, d);

    // Bound: uio without binding.
    tree.bind_to(INSTANCE, "uio_hv_generic");
    tree.uio(INSTANCE, "uio0", &standard_maps());
    let d = detect_with(&tree.sysfs(), Some(OLD));
    assert_eq!(d.transport, Transport::Uio, "{}", d.reason);
    assert!(!d.needs_bind);
    assert!(d.reason.contains("uio0"));
    // The public entry point with a path.
    let d = blobring_vmbus::uio::detect(tree.dir.path());
    assert_eq!(d.transport, Transport::Uio);
}

// ---------------------------------------------------------------------------------------------
// Binding

#[test]
fn bind_writes_new_id_unbind_override_and_bind() {
    let tree = Tree::new();
    let uio_drv = tree.driver("uio_hv_generic");
    let blob_drv = tree.driver("hv_azure_blob");
    tree.device(INSTANCE, AZ_BLOB_CLASS_GUID_STR, 14, Some(2));
    tree.bind_to(INSTANCE, "hv_azure_blob");
    let dev = sysfs::find_blob_device(&tree.sysfs()).unwrap();
    assert_eq!(dev.driver.as_deref(), Some("hv_azure_blob"));
    // "The kernel" creates uio0 a little after the bind.
    let dev_dir = tree.dev_dir(INSTANCE);
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        std::fs::create_dir_all(dev_dir.join("uio/uio0")).unwrap();
    });
    let bound = sysfs::bind(&tree.sysfs(), &dev, Some(NEW), Duration::from_secs(5)).unwrap();
    t.join().unwrap();
    assert_eq!(bound.uio.as_deref(), Some("uio0"));
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
    assert_eq!(read(uio_drv.join("new_id")), AZ_BLOB_CLASS_GUID_STR);
    assert_eq!(read(blob_drv.join("unbind")), INSTANCE);
    assert_eq!(
        read(tree.dev_dir(INSTANCE).join("driver_override")),
        "uio_hv_generic"
    );
    assert_eq!(read(uio_drv.join("bind")), INSTANCE);
    // Already bound: nothing written.
    tree.bind_to(INSTANCE, "uio_hv_generic");
    std::fs::write(uio_drv.join("bind"), "").unwrap();
    let again = sysfs::find_blob_device(&tree.sysfs()).unwrap();
    sysfs::bind(&tree.sysfs(), &again, Some(NEW), Duration::from_secs(1)).unwrap();
    assert_eq!(read(uio_drv.join("bind")), "");
}

#[test]
fn bind_refusals_say_what_to_do() {
    let tree = Tree::new();
    tree.device(INSTANCE, AZ_BLOB_CLASS_GUID_STR, 14, None);
    let dev = sysfs::find_blob_device(&tree.sysfs()).unwrap();
    // Module not loaded.
    let e = sysfs::bind(&tree.sysfs(), &dev, Some(NEW), Duration::from_secs(1)).unwrap_err();
    assert!(matches!(e, UioError::ModuleNotLoaded { .. }));
    assert!(
        e.to_string().contains("run `modprobe uio_hv_generic`"),
        "{e}"
    );
    // Old kernel, unmonitored device: refused before touching sysfs.
    let e = sysfs::bind(&tree.sysfs(), &dev, Some(OLD), Duration::from_secs(1)).unwrap_err();
    assert!(matches!(e, UioError::UnmonitoredUnsupported { .. }), "{e}");
    // Loaded, but the kernel never creates uio0: a bounded wait and a clear error.
    tree.driver("uio_hv_generic");
    let t0 = Instant::now();
    let e = sysfs::bind(&tree.sysfs(), &dev, Some(NEW), Duration::from_millis(100)).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(e, UioError::BindFailed { .. }) && e.to_string().contains("dmesg"),
        "{e}"
    );
    // A driver attribute that cannot be opened for writing (here: a directory, EISDIR);
    // permission errors map to the root/CAP_SYS_ADMIN message (unit-tested in uio::tests,
    // since this test may run as root).
    let new_id = tree.sysfs().driver_dir("uio_hv_generic").join("new_id");
    std::fs::remove_file(&new_id).unwrap();
    std::fs::create_dir(&new_id).unwrap();
    let e = sysfs::bind(&tree.sysfs(), &dev, Some(NEW), Duration::from_millis(100)).unwrap_err();
    assert!(
        matches!(e, UioError::Sysfs { op: "write", .. }) && e.to_string().contains("new_id"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Subchannels

#[test]
fn subchannel_ring_appearing_after_a_delay_is_found() {
    let m = machine(Some(5), 0);
    // Subchannel 1 (relid 20): directory first, ring 150 ms later, as the kernel's
    // hv_uio_new_channel does. A non-numeric entry is skipped.
    m.tree.subchannel(INSTANCE, 20, 1, Some(6), false);
    std::fs::create_dir_all(m.tree.dev_dir(INSTANCE).join("channels/not-a-relid")).unwrap();
    let ring = m.tree.ring_path(INSTANCE, 20);
    let fd = m.opener.add_ring(ring.clone(), 2 * SUB_RING);
    let host_sub = HostChannel::new(Arc::new(
        Mapping::map_peer(fd.as_fd(), 2 * SUB_RING).unwrap(),
    ));
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        std::fs::write(ring, "").unwrap();
    });
    let t0 = Instant::now();
    let dev = open(&m, InterruptMode::UserspaceMasks, 1);
    t.join().unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(100));
    assert_eq!(dev.channels().len(), 2);
    let sub = &dev.channels()[1];
    assert_eq!((sub.relid(), sub.subchannel_id()), (20, 1));
    assert_eq!(
        sub.signal_path(),
        SignalPath::Monitor {
            offset: 8,
            bit: 1 << 6
        }
    );
    drop(host_sub);
}

/// Opening the device of `m`, waiting up to `timeout` for `subchannels` subchannels, fails:
/// the error.
fn open_waiting_for(m: &Machine, subchannels: u32, timeout: Duration) -> UioError {
    let dev = sysfs::find_blob_device(&m.tree.sysfs()).unwrap();
    let opts = UioOptions {
        subchannels,
        subchannel_timeout: timeout,
        interrupt_mode: Some(InterruptMode::UserspaceMasks),
        page_size: PAGE,
    };
    UioDevice::open(&m.tree.sysfs(), &dev, &m.opener, &opts).unwrap_err()
}

#[test]
fn subchannel_that_never_gets_a_ring_times_out_clearly() {
    let m = machine(Some(5), 0);
    m.tree.subchannel(INSTANCE, 21, 1, None, false);
    let t0 = Instant::now();
    let e = open_waiting_for(&m, 1, Duration::from_millis(200));
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(5));
    match &e {
        UioError::SubchannelTimeout {
            expected,
            found,
            missing,
            ..
        } => {
            assert_eq!((*expected, *found), (1, 0));
            assert_eq!(missing, &vec![21]);
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("still without `ring`: [21]"), "{e}");
    // Waiting for more subchannels than the host offers: the same bounded error.
    let m = machine(Some(5), 1);
    let e = open_waiting_for(&m, 3, Duration::from_millis(50));
    assert!(
        matches!(
            e,
            UioError::SubchannelTimeout {
                expected: 3,
                found: 1,
                ..
            }
        ),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Mapping

#[test]
fn maps_are_sized_from_sysfs_and_checked() {
    let m = machine(Some(5), 2);
    let dev = open(&m, InterruptMode::UserspaceMasks, 2);
    assert_eq!(
        m.opener.uio_opens.load(Ordering::SeqCst),
        1,
        "uio fd opened once, kept"
    );
    let names: Vec<_> = dev
        .maps()
        .iter()
        .map(|m| (m.name.as_str(), m.size))
        .collect();
    assert_eq!(names, standard_maps().to_vec());
    assert_eq!(dev.channels().len(), 3);
    assert_eq!(dev.channels()[0].relid(), 14);
    assert_eq!(dev.channels()[0].subchannel_id(), 0);
    assert_eq!(
        dev.channels()
            .iter()
            .map(|c| c.subchannel_id())
            .collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    // Primary: 0x11000 per direction → 64 KiB data → 8179 pages (§7.1); the 64 KiB
    // subchannels have 60 KiB data; the device's limit is the smallest.
    assert_eq!(dev.channels()[0].max_request_pages(), 8179);
    let sub_limit = (SUB_RING as u32 - 4096 - 97) / 8;
    assert_eq!(dev.channels()[1].max_request_pages(), sub_limit);
    assert_eq!(dev.max_request_pages(), sub_limit);

    // Guest TX is [0, S) of map 0: a packet written by the guest is read by the host there.
    let mut dev = dev;
    let mut host = m.host;
    dev.channels_mut()[0].send(&packet(9)).unwrap();
    let ids = host[0].answer_all(&m.opener.events, false);
    assert_eq!(ids, vec![9]);

    // A wrong map name, a missing map, a map too small.
    for (maps, needle) in [
        (
            vec![
                ("txrx_rings", 2 * PRIMARY_RING),
                ("recv:1", PAGE),
                ("monitor_page", PAGE),
            ],
            "named \"recv:1\", expected int_page",
        ),
        (
            vec![("txrx_rings", 2 * PRIMARY_RING), ("int_page", PAGE)],
            "missing (expected monitor_page)",
        ),
        (
            vec![
                ("txrx_rings", 4096),
                ("int_page", PAGE),
                ("monitor_page", PAGE),
            ],
            "4096 bytes",
        ),
    ] {
        let m = machine(Some(5), 0);
        let maps_dir = m.tree.sysfs().uio_class_dir("uio0").join("maps");
        std::fs::remove_dir_all(&maps_dir).unwrap();
        m.tree.uio(INSTANCE, "uio0", &maps);
        let d = sysfs::find_blob_device(&m.tree.sysfs()).unwrap();
        let e = UioDevice::open(
            &m.tree.sysfs(),
            &d,
            &m.opener,
            &opts(InterruptMode::UserspaceMasks, 0),
        )
        .unwrap_err();
        assert!(
            matches!(e, UioError::BadMap { .. }) && e.to_string().contains(needle),
            "{e}"
        );
    }
}

#[test]
fn max_request_pages_follows_the_running_ring_size() {
    // 0x11000: hv_dev_ring_size() as is; 0x12000: rounded by VMBUS_RING_SIZE (vmbus/SOURCES.md).
    for (ring, want) in [
        (0x11000u64, 8179u32),
        (0x12000, 8192),
        (128 << 10, 8192),
        (2 << 20, 8192),
        (0x4000, 1523),
    ] {
        let tree = Tree::new();
        tree.driver("uio_hv_generic");
        tree.device(INSTANCE, AZ_BLOB_CLASS_GUID_STR, 14, Some(1));
        tree.bind_to(INSTANCE, "uio_hv_generic");
        tree.uio(
            INSTANCE,
            "uio0",
            &[
                ("txrx_rings", 2 * ring),
                ("int_page", PAGE),
                ("monitor_page", PAGE),
            ],
        );
        let opener = FakeOpener::new(&[2 * ring, PAGE, PAGE]);
        let _host = HostChannel::new(opener.map(0));
        let d = sysfs::find_blob_device(&tree.sysfs()).unwrap();
        let dev = UioDevice::open(
            &tree.sysfs(),
            &d,
            &opener,
            &opts(InterruptMode::UserspaceMasks, 0),
        )
        .unwrap();
        assert_eq!(dev.max_request_pages(), want, "ring {ring:#x}");
        // The bound is real: a request of exactly that many pages fits the empty ring.
        assert!(96 + 8 * u64::from(want) < ring - 4096);
    }
}

// ---------------------------------------------------------------------------------------------
// Signalling

/// A machine with `monitor` and `subs` subchannels, its device opened with userspace masks,
/// and the monitor page (map 2) and interrupt page (map 1); the primary signals by `primary`.
fn signalling(
    monitor: Option<u32>,
    subs: u32,
    primary: SignalPath,
) -> (Machine, UioDevice, Arc<Mapping>, Arc<Mapping>) {
    let m = machine(monitor, subs);
    let dev = open(&m, InterruptMode::UserspaceMasks, subs);
    let (mon, int) = (m.opener.map(2), m.opener.map(1));
    assert_eq!(dev.channels()[0].signal_path(), primary);
    (m, dev, mon, int)
}

#[test]
fn monitored_channel_sets_its_monitor_bit_without_a_write() {
    let monitor = SignalPath::Monitor {
        offset: 16,
        bit: 1 << 5,
    };
    let (m, mut dev, mon, int) = signalling(Some(37), 0, monitor);
    dev.channels_mut()[0].send(&packet(1)).unwrap();
    // trigger_group[1].pending, bit 5; nothing else in either page; no uio write.
    assert_eq!(load(&mon, 16), 1 << 5);
    for off in (0..PAGE).step_by(4).filter(|&o| o != 16) {
        assert_eq!(load(&mon, off), 0, "monitor page offset {off}");
        assert_eq!(load(&int, off), 0, "interrupt page offset {off}");
    }
    assert!(m.opener.events.writes().is_empty());
    // A second packet on the non-empty ring does not signal again (§1.6); the fixture clears
    // the bit as the hypervisor would and checks it stays clear.
    mon.store_u32(16, 0, Ordering::SeqCst).unwrap();
    dev.channels_mut()[0].send(&packet(2)).unwrap();
    assert_eq!(load(&mon, 16), 0);
}

#[test]
fn unmonitored_channel_sets_its_interrupt_page_bit_and_writes_one() {
    // Primary relid 14 → word 0 bit 14 of the send half; subchannel relid 15 → bit 15.
    let interrupt = SignalPath::Interrupt {
        offset: 2048,
        bit: 1 << 14,
    };
    let (m, mut dev, mon, int) = signalling(None, 1, interrupt);
    dev.channels_mut()[0].send(&packet(3)).unwrap();
    assert_eq!(load(&int, 2048), 1 << 14);
    assert_eq!(m.opener.events.writes(), vec![1]);
    dev.channels_mut()[1].send(&packet(4)).unwrap();
    assert_eq!(load(&int, 2048), (1 << 14) | (1 << 15));
    assert_eq!(m.opener.events.writes(), vec![1, 1]);
    // The receive half and the monitor page are untouched.
    for off in (0..2048).step_by(4) {
        assert_eq!(load(&int, off), 0);
    }
    for off in (0..PAGE).step_by(4) {
        assert_eq!(load(&mon, off), 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Round trip and interrupt modes

/// The guest sends blob requests on every channel; the fixture host answers each with a
/// completion and "interrupts"; `service` drains all rings and re-arms per the mode the
/// transport detected from how the fake `driver` behaves at open.
fn round_trip(driver: FakeDriver) {
    let m = machine_with(Spec {
        driver,
        ..Spec::new(Some(5), 1)
    });
    let mut dev = open_with(&m, &probe_opts(1, PAGE));
    let mode = dev.interrupt_mode();
    let kernel_masks = driver == FakeDriver::MasksOnOpenAndInterrupt;
    assert_eq!(
        mode,
        if kernel_masks {
            InterruptMode::KernelMasks
        } else {
            InterruptMode::UserspaceMasks
        }
    );
    let events = m.opener.events.clone();
    let open_writes = events.writes();
    assert_eq!(open_writes, if kernel_masks { vec![1] } else { vec![] });
    events.clear_writes();
    let mut host = m.host;
    dev.channels_mut()[0].send(&packet(101)).unwrap();
    dev.channels_mut()[1].send(&packet(202)).unwrap();
    // The subchannel is not monitored: its signal wrote 1.
    assert_eq!(events.writes(), vec![1]);
    events.clear_writes();

    let h = std::thread::spawn(move || {
        let a = host[0].answer_all(&events, kernel_masks);
        let b = host[1].answer_all(&events, kernel_masks);
        (host, a, b)
    });
    let (host, a, b) = h.join().unwrap();
    assert_eq!((a, b), (vec![101], vec![202]));
    if kernel_masks {
        // The "kernel" masked both RX rings when it interrupted.
        assert_eq!((host[0].rx_mask(), host[1].rx_mask()), (1, 1));
    }

    let mut got = Vec::new();
    let mut buf = Vec::new();
    let served = dev
        .service(Duration::from_secs(5), |i, ch| {
            while let Some(p) = ch.recv(&mut buf)? {
                let (tid, resp) = parse_blob_completion(&p)
                    .map_err(|_| ChannelError::Signal(std::io::Error::other("not a completion")))?;
                got.push((i, tid, resp.error, resp.response_len));
            }
            ch.release()
        })
        .unwrap();
    got.sort();
    assert_eq!(got, vec![(0, 101, 0, 7), (1, 202, 0, 7)]);
    assert_eq!(
        served.events,
        Some(2),
        "one event per ring that went non-empty"
    );
    assert_eq!(served.rounds, 1);
    assert!(!served.more);
    // After servicing, every RX mask is clear again (userspace cleared the subchannel's too).
    assert_eq!((host[0].rx_mask(), host[1].rx_mask()), (0, 0));
    let writes = m.opener.events.writes();
    match mode {
        // The driver that masks: one write(1) re-arms the interrupt.
        InterruptMode::KernelMasks => assert_eq!(writes, vec![1]),
        // The driver that leaves the mask alone: no system call to re-arm.
        InterruptMode::UserspaceMasks => assert!(writes.is_empty(), "{writes:?}"),
    }
    // Nothing pending: a zero-timeout service drains nothing and reports no event.
    let s = dev.service(Duration::ZERO, |_, _| Ok(())).unwrap();
    assert_eq!(s.events, None);
}

#[test]
fn round_trip_with_a_driver_that_masks_on_open_and_interrupt() {
    round_trip(FakeDriver::MasksOnOpenAndInterrupt);
}

#[test]
fn round_trip_with_a_driver_that_leaves_the_mask_to_userspace() {
    round_trip(FakeDriver::LeavesMaskToUserspace);
}

/// The interrupt-mask owner is read off the driver's behaviour at open, never a version: the
/// three observable cases, and a forced mode.
#[test]
fn interrupt_mask_owner_is_probed_from_the_drivers_behaviour() {
    // The driver since b15b7d2a1b09, fresh device: mask clear after the first open.
    let m = machine_with(Spec::new(Some(5), 0));
    let dev = open_with(&m, &probe_opts(0, PAGE));
    assert_eq!(dev.interrupt_mode(), InterruptMode::UserspaceMasks);
    assert_eq!(dev.mask_probe(), MaskProbe::ClearAfterOpen);
    assert_eq!(m.opener.uio_opens.load(Ordering::SeqCst), 1, "no reopen");
    assert!(m.opener.events.writes().is_empty(), "no write(1) at all");
    drop(dev);
    assert_eq!(m.opener.live_handles(), 0, "the device was closed");

    // Same driver, but a crashed daemon left the mask set: the reopen tells it apart.
    let m = machine_with(Spec::new(Some(5), 0));
    m.opener.set_primary_rx_mask(1);
    let dev = open_with(&m, &probe_opts(0, PAGE));
    assert_eq!(dev.interrupt_mode(), InterruptMode::UserspaceMasks);
    assert_eq!(dev.mask_probe(), MaskProbe::StaleMask);
    assert_eq!(
        m.opener.uio_opens.load(Ordering::SeqCst),
        2,
        "closed and reopened"
    );
    assert_eq!(m.opener.live_handles(), 1, "the first handle was closed");
    assert_eq!(m.opener.primary_rx_mask(), 0);
    assert!(m.opener.events.writes().is_empty());
    assert!(dev.mask_probe().to_string().contains("earlier user"));
    drop(dev);

    // The driver before b15b7d2a1b09 masks on every first open.
    let m = machine_with(Spec {
        driver: FakeDriver::MasksOnOpenAndInterrupt,
        ..Spec::new(None, 0)
    });
    let dev = open_with(&m, &probe_opts(0, PAGE));
    assert_eq!(dev.interrupt_mode(), InterruptMode::KernelMasks);
    assert_eq!(dev.mask_probe(), MaskProbe::SetByOpen);
    assert_eq!(m.opener.uio_opens.load(Ordering::SeqCst), 2);
    // Then the transport re-enabled the interrupt the driver's way: write(1) → mask 0.
    assert_eq!(m.opener.events.writes(), vec![1]);
    assert_eq!(m.opener.primary_rx_mask(), 0);
    let text = dev.mask_probe().to_string();
    assert!(
        text.contains("set the primary RX interrupt_mask on open"),
        "{text}"
    );
    drop(dev);

    // Forcing skips the probe (and its reopen) whatever the driver does.
    let m = machine_with(Spec {
        driver: FakeDriver::MasksOnOpenAndInterrupt,
        ..Spec::new(None, 0)
    });
    let dev = open(&m, InterruptMode::UserspaceMasks, 0);
    assert_eq!(dev.mask_probe(), MaskProbe::Forced);
    assert_eq!(m.opener.uio_opens.load(Ordering::SeqCst), 1);
}

#[test]
fn packets_arriving_while_masked_are_found_by_the_recheck() {
    let m = machine(Some(5), 0);
    let mut dev = open(&m, InterruptMode::UserspaceMasks, 0);
    let mut host = m.host;
    dev.channels_mut()[0].send(&packet(1)).unwrap();
    dev.mask_all().unwrap();
    // The host answers while we are masked: no interrupt is raised.
    host[0].answer_all(&m.opener.events, false);
    assert_eq!(dev.read_events().unwrap(), None);
    // Re-arming reports the waiting packet instead of letting us sleep on it.
    assert!(dev.rearm().unwrap());
    let mut n = 0;
    let mut buf = Vec::new();
    dev.service(Duration::ZERO, |_, ch| {
        while ch.recv(&mut buf)?.is_some() {
            n += 1;
        }
        ch.release()
    })
    .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn rescind_shows_as_eio_and_is_reported() {
    let m = machine(Some(5), 0);
    let mut dev = open(&m, InterruptMode::UserspaceMasks, 0);
    m.opener.events.interrupt();
    m.opener.events.rescinded.store(true, Ordering::SeqCst);
    let e = dev
        .service(Duration::from_secs(1), |_, _| Ok(()))
        .unwrap_err();
    assert!(e.is_rescind(), "{e}");
    assert!(e.to_string().contains("rescinded"), "{e}");
    assert!(matches!(dev.read_events(), Err(UioError::Rescinded)));
    // Through the Channel trait the same EIO surfaces as an I/O error.
    let err = dev.channels()[0].clear_wakeups().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5));
}

// ---------------------------------------------------------------------------------------------
// Guest-physical translation through a fake pagemap file

#[test]
fn pagemap_translation_through_a_fake_pagemap_file() {
    const PRESENT: u64 = 1 << 63;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pagemap");
    // Virtual 2 MiB..4 MiB: one hugepage at 4 KiB frame 0x12_3400; then a hugepage whose
    // entries are present with PFN 0 (hidden); then one not present.
    let mut f = std::fs::File::create(&path).unwrap();
    let mut entries = vec![0u64; 512];
    entries.extend((0..512).map(|i| PRESENT | (0x12_3400 + i)));
    entries.extend((0..512).map(|_| PRESENT));
    entries.extend((0..512).map(|_| 0));
    for e in &entries {
        f.write_all(&e.to_le_bytes()).unwrap();
    }
    drop(f);
    let huge = 2u64 << 20;
    let mut pm = Pagemap::new(std::fs::File::open(&path).unwrap(), 4096);
    let t = PagemapPfns::from_pagemap(&mut pm, huge, huge, huge).unwrap();
    assert_eq!(t.pfns().len(), 512);
    assert_eq!(t.pfns()[0], 0x12_3400);
    assert!(t.pfns().windows(2).all(|w| w[1] == w[0] + 1));
    // A request buffer at region offset 8 KiB + 16, 5000 bytes: 2 pages, offset 16.
    let mut v = Vec::new();
    assert_eq!(t.buffer_pfns(8192 + 16, 5000, &mut v).unwrap(), 16);
    assert_eq!(v, vec![0x12_3402, 0x12_3403]);
    // Hidden PFNs and absent pages are refused with the fix.
    let e = PagemapPfns::from_pagemap(&mut pm, 2 * huge, huge, huge).unwrap_err();
    assert!(matches!(e, GpaRefusal::PfnHidden), "{e}");
    assert!(e.to_string().contains("CAP_SYS_ADMIN"));
    let e = PagemapPfns::from_pagemap(&mut pm, 3 * huge, huge, huge).unwrap_err();
    assert!(matches!(e, GpaRefusal::NotPresent { .. }), "{e}");
    // The translators are interchangeable behind the trait.
    let translators: Vec<Box<dyn PfnTranslator>> =
        vec![Box::new(t), Box::new(SimPfns::new(0, huge))];
    for tr in &translators {
        assert_eq!(tr.region_len(), huge);
        assert_eq!(tr.buffer_pfns(0, 4096, &mut v).unwrap(), 0);
        assert_eq!(v.len(), 1);
    }
}

// ---------------------------------------------------------------------------------------------
// The real opener and uio file, on stand-ins the kernel provides everywhere

#[test]
fn system_opener_and_uio_file_use_four_byte_reads_and_writes() {
    use blobring_vmbus::uio::{SystemOpener, UioFile};
    let dir = tempfile::tempdir().unwrap();
    // A FIFO stands in for /dev/uio0: what irqcontrol writes, read_count reads back.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.path().join("uio0"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let opener = SystemOpener::new(dir.path());
    let events = opener.open_uio("uio0").unwrap();
    assert_eq!(
        events.read_count().unwrap(),
        None,
        "non-blocking: nothing pending"
    );
    events.irqcontrol(1).unwrap();
    assert_eq!(
        events.read_count().unwrap(),
        Some(1),
        "exactly 4 bytes per call"
    );
    // Map i is the uio fd itself at offset i * pagesize.
    let (_fd, off) = opener.open_map("uio0", &*events, 2).unwrap();
    assert_eq!(off, 2 * rustix::param::page_size() as u64);
    // Missing device node: an open error naming it.
    let e = opener.open_uio("uio9").unwrap_err();
    assert!(e.to_string().contains("uio9"), "{e}");
    assert!(UioFile::open(&dir.path().join("nope")).is_err());
    // A `ring` that is an ordinary file (not sysfs, not a sealed memfd) is refused at mmap
    // rather than risking SIGBUS.
    let ring = dir.path().join("ring");
    std::fs::write(&ring, vec![0u8; 2 * SUB_RING as usize]).unwrap();
    let fd = opener.open_ring(&ring).unwrap();
    assert!(matches!(
        Mapping::map_device(fd.as_fd(), 0, 2 * SUB_RING),
        Err(blobring_shm::RegionError::NotDevice)
    ));
}

// ---------------------------------------------------------------------------------------------
// Ring bytes as Linux leaves them, 4 KiB and 64 KiB guest pages

/// An in-band packet written out by hand (not by our encoder): type 0x6, offset8 2, len8 4
/// (16 + 13 bytes, padded to 32), flags 0, trans_id 0x1122334455667788, "hello, vmbus!".
fn hello() -> Vec<u8> {
    let mut p = vec![
        0x06, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22,
        0x11,
    ];
    p.extend_from_slice(b"hello, vmbus!");
    p
}

/// A 64 KiB-page machine: VMBUS_RING_SIZE(0x11000) = 0x30000-byte primary rings, 0x20000-byte
/// subchannel rings, the 4 KiB interrupt and monitor pages at offset 0x3000 of their 64 KiB
/// guest page, unmonitored.
fn machine_64k(subs: u32) -> Machine {
    machine_with(Spec {
        page_size: PAGE_64K,
        primary_ring: 0x30000,
        sub_ring: 0x20000,
        page_offset: 0x3000,
        ..Spec::new(None, subs)
    })
}

/// The guest writes two packets; the TX ring must then hold exactly what Linux's
/// hv_ringbuffer_write leaves: each packet at the old write index of the data area (which
/// starts one guest page into the ring), zero padding to 8, the u64 trailer `old index << 32`,
/// write_index past both, read_index untouched, feature_bits 1. Then a host-written RX image
/// (a completion and an xfer-pages packet, as Hyper-V writes them) is read back.
fn ring_images(m: &Machine, page: u64, ring: u64) {
    let mut dev = open_with(m, &probe_opts(0, page));
    let map0 = m.opener.map(0);
    dev.channels_mut()[0].send(&hello()).unwrap();
    dev.channels_mut()[0].send(&hello()).unwrap();
    let mut want = hello();
    want.extend_from_slice(&[0, 0, 0]); // pad 29 → 32
    want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]); // trailer: started at 0
    want.extend_from_slice(&hello());
    want.extend_from_slice(&[0, 0, 0]);
    want.extend_from_slice(&[0, 0, 0, 0, 0x28, 0, 0, 0]); // trailer: started at 40
    let mut got = vec![0u8; want.len()];
    map0.read(page, &mut got).unwrap();
    assert_eq!(got, want, "TX data area at byte {page} of the ring");
    assert_eq!(
        map0.load_u32(rc::WRITE_INDEX, Ordering::SeqCst).unwrap(),
        80
    );
    assert_eq!(map0.load_u32(rc::READ_INDEX, Ordering::SeqCst).unwrap(), 0);
    assert_eq!(
        map0.load_u32(rc::FEATURE_BITS, Ordering::SeqCst).unwrap(),
        1
    );
    // Between the control page and the data area nothing was written (a 4096-byte header
    // would have put the packets there).
    let mut gap = vec![0u8; (page - 4096) as usize];
    map0.read(4096, &mut gap).unwrap();
    assert!(gap.iter().all(|&b| b == 0), "bytes 4096..{page} untouched");

    // RX, written as the host writes it: a completion of trans_id 0x1_0000_0003 carrying
    // az_blob_vsp_response {length 4096, error 0, response_len 7}, then the same response in
    // a type-0x7 packet; trailers; write_index 80.
    let rx = ring;
    let mut image = vec![
        0x0b, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
        0x00, // descriptor
        0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, // response
        0x00, 0x00, 0x00, 0x00, // padding
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // trailer
    ];
    let mut second = image[..32].to_vec();
    second[0] = 0x07;
    second[8] = 0x04;
    image.extend_from_slice(&second);
    image.extend_from_slice(&[0, 0, 0, 0, 0x28, 0, 0, 0]);
    map0.write(rx + page, &image).unwrap();
    map0.store_u32(rx + rc::WRITE_INDEX, 80, Ordering::SeqCst)
        .unwrap();
    let mut replies = Vec::new();
    let mut buf = Vec::new();
    let ch = &mut dev.channels_mut()[0];
    while let Some(r) = ch.recv_reply(&mut buf).unwrap() {
        let (tid, resp) = parse_blob_reply(&r).unwrap();
        replies.push((
            r.packet_type(),
            tid,
            resp.length,
            resp.error,
            resp.response_len,
        ));
    }
    ch.release().unwrap();
    assert_eq!(
        replies,
        vec![
            (0x0b, 0x1_0000_0003, 4096, 0, 7),
            (0x07, 0x1_0000_0004, 4096, 0, 7)
        ]
    );
    assert_eq!(
        map0.load_u32(rx + rc::READ_INDEX, Ordering::SeqCst)
            .unwrap(),
        80,
        "both packets released"
    );
}

#[test]
fn ring_bytes_match_linux_with_4k_pages() {
    let m = machine(Some(5), 0);
    ring_images(&m, PAGE, PRIMARY_RING);
}

#[test]
fn ring_bytes_match_linux_with_64k_pages() {
    let m = machine_64k(0);
    ring_images(&m, PAGE_64K, 0x30000);
}

/// A whole device on a 64 KiB-page kernel: ring headers of 64 KiB, the interrupt page at its
/// sysfs offset, limits from the mapped rings, and a round trip through the fixture host.
#[test]
fn device_with_64k_pages_works_end_to_end() {
    let m = machine_64k(1);
    let mut dev = open_with(&m, &probe_opts(1, PAGE_64K));
    assert_eq!(dev.page_size(), PAGE_64K);
    // Primary: 0x30000 - 0x10000 = 128 KiB of data → the protocol cap; subchannel: 64 KiB of
    // data → 8179.
    assert_eq!(dev.channels()[0].max_request_pages(), 8192);
    assert_eq!(dev.channels()[1].max_request_pages(), 8179);
    assert_eq!(dev.max_request_pages(), 8179);
    dev.channels_mut()[0].send(&packet(5)).unwrap();
    // Relid 14, unmonitored: bit 14 of the send half of the interrupt page, which sits 0x3000
    // into its 64 KiB guest page; nothing else set.
    let int = m.opener.map(1);
    assert_eq!(load(&int, 0x3000 + 2048), 1 << 14);
    for off in (0..PAGE_64K).step_by(4).filter(|&o| o != 0x3000 + 2048) {
        assert_eq!(load(&int, off), 0, "interrupt page offset {off:#x}");
    }
    assert_eq!(m.opener.events.writes(), vec![1]);
    let mut host = m.host;
    assert_eq!(host[0].answer_all(&m.opener.events, false), vec![5]);
    let mut got = Vec::new();
    let mut buf = Vec::new();
    dev.service(Duration::from_secs(5), |i, ch| {
        while let Some(r) = ch.recv_reply(&mut buf)? {
            let (tid, resp) = parse_blob_reply(&r).unwrap();
            got.push((i, tid, resp.response_len));
        }
        ch.release()
    })
    .unwrap();
    assert_eq!(got, vec![(0, 5, 7)]);
    assert!(host[0].guest_released_all());
}

#[test]
fn page_sizes_that_do_not_fit_are_refused_clearly() {
    let m = machine(Some(5), 0);
    let d = sysfs::find_blob_device(&m.tree.sysfs()).unwrap();
    let e = UioDevice::open(&m.tree.sysfs(), &d, &m.opener, &probe_opts(0, 3000)).unwrap_err();
    assert!(
        matches!(e, UioError::UnsupportedPageSize { page_size: 3000 }),
        "{e}"
    );
    assert!(
        e.to_string().contains("power of two from 4096 to 65536"),
        "{e}"
    );
    // A 4 KiB-page device (0x11000-byte rings) opened as if pages were 64 KiB: the ring map is
    // not whole 64 KiB pages, and the error says so instead of misreading every index.
    let e = UioDevice::open(&m.tree.sysfs(), &d, &m.opener, &probe_opts(0, PAGE_64K)).unwrap_err();
    assert!(matches!(e, UioError::PageSizeMismatch { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("does not match the kernel's (rings are laid out in PAGE_SIZE units)"),
        "{e}"
    );
    // The 64 KiB machine's interrupt page at offset 0x3000 cannot sit in a 4 KiB page.
    let m = machine_64k(0);
    let d = sysfs::find_blob_device(&m.tree.sysfs()).unwrap();
    let e = UioDevice::open(&m.tree.sysfs(), &d, &m.opener, &probe_opts(0, PAGE)).unwrap_err();
    assert!(
        matches!(e, UioError::BadMap { index: 1, .. }) && e.to_string().contains("offset 0x3000"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Replies of another packet type

/// The host answers with in-band (0x6) and xfer-pages (0x7) packets instead of completions:
/// the transport reads the response at hv_pkt_data as the driver does, the channel stays up,
/// and the ring space is released.
#[test]
fn replies_of_any_packet_type_are_accepted_and_released() {
    let m = machine(Some(5), 0);
    let mut dev = open(&m, InterruptMode::UserspaceMasks, 0);
    let mut host = m.host;
    let mut got = Vec::new();
    let mut buf = Vec::new();
    for (tid, ty) in [(11u64, 0x6u16), (12, 0x7), (13, 0xb)] {
        host[0].reply_type = ty;
        dev.channels_mut()[0].send(&packet(tid)).unwrap();
        assert_eq!(host[0].answer_all(&m.opener.events, false), vec![tid]);
        dev.service(Duration::from_secs(5), |_, ch| {
            while let Some(r) = ch.recv_reply(&mut buf)? {
                let (tid, resp) = parse_blob_reply(&r).unwrap();
                got.push((r.packet_type(), r.is_completion(), tid, resp.response_len));
            }
            ch.release()
        })
        .unwrap();
        assert!(host[0].guest_released_all(), "type {ty:#x}: space released");
    }
    assert_eq!(
        got,
        vec![(0x6, false, 11, 7), (0x7, false, 12, 7), (0xb, true, 13, 7)]
    );
}

/// A packet that straddles the end of the data area: Linux's double mapping makes the copy
/// contiguous in the kernel, so in the single userspace mapping its first bytes end the data
/// area and the rest, trailer included, start it; write_index lands past the wrap.
fn wrap_image(m: &Machine, page: u64, ring: u64) {
    let map0 = m.opener.map(0);
    let dsize = ring - page;
    // An empty ring whose indices both stand 16 bytes before the end (as after earlier traffic).
    let at = (dsize - 16) as u32;
    map0.store_u32(rc::WRITE_INDEX, at, Ordering::SeqCst)
        .unwrap();
    map0.store_u32(rc::READ_INDEX, at, Ordering::SeqCst)
        .unwrap();
    let mut dev = open_with(m, &probe_opts(0, page));
    dev.channels_mut()[0].send(&hello()).unwrap();
    let p = hello();
    let mut tail = vec![0u8; 16];
    map0.read(page + dsize - 16, &mut tail).unwrap();
    assert_eq!(tail, p[..16], "the descriptor fills the last 16 bytes");
    let mut head = vec![0u8; 24];
    map0.read(page, &mut head).unwrap();
    let mut want = p[16..].to_vec(); // 13 payload bytes
    want.extend_from_slice(&[0, 0, 0]); // padding
    want.extend_from_slice(&((dsize - 16) << 32).to_le_bytes()); // trailer: the start index
    assert_eq!(head, want, "the rest wraps to the start of the data area");
    assert_eq!(
        map0.load_u32(rc::WRITE_INDEX, Ordering::SeqCst).unwrap(),
        24
    );
}

#[test]
fn ring_bytes_wrap_as_linux_leaves_them_4k_and_64k_pages() {
    wrap_image(&machine(Some(5), 0), PAGE, PRIMARY_RING);
    wrap_image(&machine_64k(0), PAGE_64K, 0x30000);
}
