//! The `uio` transport against a fake sysfs tree, memfds standing in for the uio maps and the
//! subchannel `ring` files, an eventfd-backed fake of the uio fd that records writes, and a
//! fixture playing the Hyper-V host with the crate's own ring code.
//!
//! Nothing here touches real Hyper-V: the fake tree follows `reference/vmbus.md` §4.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blobring_abi::vmbus::{AZ_BLOB_CLASS_GUID_STR, AzBlobVspResponse, rc};
use blobring_shm::{Mapping, Pagemap, SharedMemory, Window};
use blobring_vmbus::blob::{
    BlobRequestDesc, BufferPages, encode_blob_completion, encode_blob_request,
    parse_blob_completion, parse_blob_request,
};
use blobring_vmbus::guest_phys::{GpaRefusal, PagemapPfns, PfnTranslator, SimPfns};
use blobring_vmbus::packet::decode;
use blobring_vmbus::ring::{IncomingRing, OutgoingRing, init_ring};
use blobring_vmbus::uio::sysfs::{self, Sysfs};
use blobring_vmbus::uio::{
    DeviceOpener, InterruptMode, KernelVersion, SignalPath, Transport, TransportChoice, UioDevice,
    UioError, UioEvents, UioOptions, detect_with, select,
};
use blobring_vmbus::{Channel, ChannelError};
use rustix::event::{EventfdFlags, eventfd};
use rustix::fs::{MemfdFlags, SealFlags};

const INSTANCE: &str = "a1b2c3d4-0000-4000-8000-00000000b10b";
const NET_CLASS: &str = "f8615163-df3e-46c5-913f-f2d2f965ed0e";
/// Current kernels' ring size for an unknown class (§4.6): 64 KiB data + control page.
const PRIMARY_RING: u64 = 0x11000;
const SUB_RING: u64 = 64 << 10;
const PAGE: u64 = 4096;
const NEW: KernelVersion = KernelVersion::new(6, 12, 3);
const OLD: KernelVersion = KernelVersion::new(6, 8, 0);

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

    fn rx_mask(&self) -> u32 {
        self.to_guest
            .memory()
            .load_u32(rc::INTERRUPT_MASK, Ordering::SeqCst)
            .unwrap()
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
        data: None,
        data_valid: 0,
        request: BufferPages {
            offset: qo,
            len: 200,
            pfns: &q,
        },
        response: BufferPages {
            offset: ro,
            len: 4096,
            pfns: &r,
        },
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

#[test]
fn subchannel_that_never_gets_a_ring_times_out_clearly() {
    let m = machine(Some(5), 0);
    m.tree.subchannel(INSTANCE, 21, 1, None, false);
    let dev = sysfs::find_blob_device(&m.tree.sysfs()).unwrap();
    let t0 = Instant::now();
    let e = UioDevice::open(
        &m.tree.sysfs(),
        &dev,
        &m.opener,
        &UioOptions {
            subchannels: 1,
            subchannel_timeout: Duration::from_millis(200),
            interrupt_mode: InterruptMode::UserspaceMasks,
        },
    )
    .unwrap_err();
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
    let dev = sysfs::find_blob_device(&m.tree.sysfs()).unwrap();
    let e = UioDevice::open(
        &m.tree.sysfs(),
        &dev,
        &m.opener,
        &UioOptions {
            subchannels: 3,
            subchannel_timeout: Duration::from_millis(50),
            interrupt_mode: InterruptMode::UserspaceMasks,
        },
    )
    .unwrap_err();
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
    for (ring, want) in [
        (0x11000u64, 8179u32),
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

#[test]
fn monitored_channel_sets_its_monitor_bit_without_a_write() {
    let m = machine(Some(37), 0);
    let mut dev = open(&m, InterruptMode::UserspaceMasks, 0);
    let mon = m.opener.map(2);
    let int = m.opener.map(1);
    assert_eq!(
        dev.channels()[0].signal_path(),
        SignalPath::Monitor {
            offset: 16,
            bit: 1 << 5
        }
    );
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
    let m = machine(None, 1);
    let mut dev = open(&m, InterruptMode::UserspaceMasks, 1);
    let mon = m.opener.map(2);
    let int = m.opener.map(1);
    // Primary relid 14 → word 0 bit 14 of the send half; subchannel relid 15 → bit 15.
    assert_eq!(
        dev.channels()[0].signal_path(),
        SignalPath::Interrupt {
            offset: 2048,
            bit: 1 << 14
        }
    );
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
/// completion and "interrupts"; `service` drains all rings and re-arms per `mode`.
fn round_trip(mode: InterruptMode) {
    let m = machine(Some(5), 1);
    let mut dev = open(&m, mode, 1);
    let events = m.opener.events.clone();
    let open_writes = events.writes();
    assert_eq!(
        open_writes,
        if mode == InterruptMode::KernelMasks {
            vec![1]
        } else {
            vec![]
        }
    );
    events.clear_writes();
    let mut host = m.host;
    dev.channels_mut()[0].send(&packet(101)).unwrap();
    dev.channels_mut()[1].send(&packet(202)).unwrap();
    // The subchannel is not monitored: its signal wrote 1.
    assert_eq!(events.writes(), vec![1]);
    events.clear_writes();

    let kernel_masks = mode == InterruptMode::KernelMasks;
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
        // Old kernels: one write(1) re-arms the interrupt.
        InterruptMode::KernelMasks => assert_eq!(writes, vec![1]),
        // New kernels: no system call to re-arm.
        InterruptMode::UserspaceMasks => assert!(writes.is_empty(), "{writes:?}"),
    }
    // Nothing pending: a zero-timeout service drains nothing and reports no event.
    let s = dev.service(Duration::ZERO, |_, _| Ok(())).unwrap();
    assert_eq!(s.events, None);
}

#[test]
fn round_trip_with_kernel_owned_interrupt_mask() {
    round_trip(InterruptMode::KernelMasks);
}

#[test]
fn round_trip_with_userspace_owned_interrupt_mask() {
    round_trip(InterruptMode::UserspaceMasks);
}

#[test]
fn interrupt_mode_follows_the_kernel_version() {
    assert_eq!(
        UioOptions::for_kernel(OLD).interrupt_mode,
        InterruptMode::KernelMasks
    );
    assert_eq!(
        UioOptions::for_kernel(NEW).interrupt_mode,
        InterruptMode::UserspaceMasks
    );
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
