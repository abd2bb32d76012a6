//! A test fixture standing in for the kernel's uio device (`uio_hv_generic`), for tests of the
//! [`uio`](super) transport and of its users (the daemon's workers) without Hyper-V.
//!
//! **Test support only:** compiled with the `test-support` cargo feature, which only
//! dev-dependencies enable. Nothing here touches real Hyper-V; it follows
//! `reference/vmbus.md` §4:
//! - [`Tree`]: a fake sysfs tree (devices, drivers, `uio` maps, subchannels) in a temporary
//!   directory.
//! - [`FakeOpener`]: the [`DeviceOpener`] seam, handing out sealed memfds standing in for the
//!   `/dev/uioN` maps and the subchannel `ring` files, and a [`FakeEvents`].
//! - [`FakeEvents`]: the [`UioEvents`] seam, an eventfd standing in for the uio fd that records
//!   what is written to it (irqcontrol: primary RX `interrupt_mask = !v`, as the driver does)
//!   and can be rescinded.
//! - [`FakeDriver`]: which `uio_hv_generic` the fake plays — the one that masks the RX ring on
//!   open and on interrupt (before b15b7d2a1b09) or the one that leaves the mask to userspace —
//!   so the transport's probe is tested against behaviour, not a version string.
//! - [`HostChannel`]: the Hyper-V host's side of one channel, answering blob packets with the
//!   crate's own ring code over the same memory (optionally with a packet type other than
//!   0xb), and recording the transaction GUIDs it saw.
//! - [`machine`], [`machine_with`], [`opts`], [`open`]: a whole bound device, ready to open,
//!   with 4 KiB or 64 KiB guest pages.
//!
//! Every helper panics on failure, as test code does.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blobring_abi::vmbus::{AZ_BLOB_CLASS_GUID_STR, AzBlobVspResponse, rc};
use blobring_shm::{Mapping, SharedMemory, Window};
use rustix::event::{EventfdFlags, eventfd};
use rustix::fs::{MemfdFlags, SealFlags};

use crate::blob::{encode_blob_completion, parse_blob_request};
use crate::packet::decode;
use crate::ring::{IncomingRing, OutgoingRing, init_ring_with_header};
use crate::uio::sysfs::{self, Sysfs};
use crate::uio::{
    DeviceOpener, InterruptMode, KernelVersion, UioDevice, UioError, UioEvents, UioOptions,
};

/// The instance GUID of the fake blob device.
pub const INSTANCE: &str = "a1b2c3d4-0000-4000-8000-00000000b10b";
/// Current kernels' ring size for an unknown class (§4.6): 64 KiB data + control page.
pub const PRIMARY_RING: u64 = 0x11000;
/// Size of each ring (TX or RX) of a fake subchannel.
pub const SUB_RING: u64 = 64 << 10;
/// The page size the fixture assumes unless told otherwise ([`Spec::page_size`]).
pub const PAGE: u64 = 4096;
/// A 64 KiB guest page (arm64 kernels built with 64 KiB pages).
pub const PAGE_64K: u64 = 64 << 10;

/// Which `uio_hv_generic` the fake device plays (vmbus/SOURCES.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeDriver {
    /// Before b15b7d2a1b09: sets the primary RX `interrupt_mask` when the device is first
    /// opened, a subchannel's when it is created, and a channel's on each host interrupt.
    MasksOnOpenAndInterrupt,
    /// Since b15b7d2a1b09: only `write(fd, v)` touches the mask.
    LeavesMaskToUserspace,
}
/// A kernel recent enough that userspace owns `interrupt_mask`; [`open`] passes it to
/// `bind_and_open`.
pub const NEW: KernelVersion = KernelVersion::new(6, 12, 3);

// ---------------------------------------------------------------------------------------------
// Fake sysfs tree

/// A fake sysfs tree (`reference/vmbus.md` §4) in a temporary directory, removed on drop.
#[derive(Debug)]
pub struct Tree {
    /// The root standing in for `/sys`.
    pub dir: tempfile::TempDir,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// An empty tree with an empty `bus/vmbus/devices`.
    pub fn new() -> Self {
        let t = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(t.sysfs().devices_dir()).unwrap();
        t
    }

    /// The [`Sysfs`] rooted at this tree.
    pub fn sysfs(&self) -> Sysfs {
        Sysfs::new(self.dir.path())
    }

    /// The directory of device `instance` under the devices directory.
    pub fn dev_dir(&self, instance: &str) -> PathBuf {
        self.sysfs().devices_dir().join(instance)
    }

    /// Writes `text` to `path`, creating its parent directories.
    pub fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A loaded driver with empty `new_id`, `bind`, `unbind` attributes.
    pub fn driver(&self, name: &str) -> PathBuf {
        let d = self.sysfs().driver_dir(name);
        for f in ["new_id", "bind", "unbind"] {
            Self::write(&d.join(f), "");
        }
        d
    }

    /// A device `instance` of class `class` with primary relid `relid` and, if `Some`, a
    /// `monitor_id`; not bound to any driver. Returns its directory.
    pub fn device(&self, instance: &str, class: &str, relid: u32, monitor: Option<u32>) -> PathBuf {
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

    /// Binds device `instance` to `driver` (the `driver` symlink).
    pub fn bind_to(&self, instance: &str, driver: &str) {
        let link = self.dev_dir(instance).join("driver");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(self.sysfs().driver_dir(driver), link).unwrap();
    }

    /// Gives device `instance` the uio device `uio` with `maps` (name, size) in order.
    pub fn uio(&self, instance: &str, uio: &str, maps: &[(&str, u64)]) {
        std::fs::create_dir_all(self.dev_dir(instance).join("uio").join(uio)).unwrap();
        let m = self.sysfs().uio_class_dir(uio).join("maps");
        for (i, (name, size)) in maps.iter().enumerate() {
            Self::write(&m.join(format!("map{i}/name")), &format!("{name}\n"));
            Self::write(&m.join(format!("map{i}/size")), &format!("0x{size:08x}\n"));
        }
    }

    /// Subchannel `sub` of device `instance` with relid `relid`, a `monitor_id` if `Some`, and
    /// a `ring` file if `ring` (it exists once the subchannel is open).
    pub fn subchannel(
        &self,
        instance: &str,
        relid: u32,
        sub: u32,
        monitor: Option<u32>,
        ring: bool,
    ) {
        let c = self.dev_dir(instance).join(format!("channels/{relid}"));
        Self::write(&c.join("subchannel_id"), &format!("{sub}\n"));
        if let Some(m) = monitor {
            Self::write(&c.join("monitor_id"), &format!("{m}\n"));
        }
        if ring {
            Self::write(&c.join("ring"), "");
        }
    }

    /// The `ring` file of channel `relid` of device `instance`.
    pub fn ring_path(&self, instance: &str, relid: u32) -> PathBuf {
        self.dev_dir(instance)
            .join(format!("channels/{relid}/ring"))
    }
}

/// The maps `uio_hv_generic` exposes: `txrx_rings` (two primary rings), `int_page`,
/// `monitor_page`.
pub fn standard_maps() -> [(&'static str, u64); 3] {
    [
        ("txrx_rings", 2 * PRIMARY_RING),
        ("int_page", PAGE),
        ("monitor_page", PAGE),
    ]
}

// ---------------------------------------------------------------------------------------------
// Fake device files

/// A memfd of `len` bytes sealed against shrinking and growing, as the maps are.
pub fn sealed_memfd(len: u64) -> OwnedFd {
    let fd = rustix::fs::memfd_create("uio-fake", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
    fd
}

/// The uio fd: an eventfd the fixture "interrupts" through, plus a record of the s32 values
/// written (irqcontrol) and a rescind switch (reads then fail with EIO, as uio does).
#[derive(Debug)]
pub struct FakeEvents {
    efd: OwnedFd,
    writes: Mutex<Vec<i32>>,
    /// Set to make reads fail with EIO, as after the device is rescinded.
    pub rescinded: AtomicBool,
    /// Map 0 and the offset of the primary RX `interrupt_mask` in it, once known: irqcontrol
    /// writes `!v` there, as `hv_uio_irqcontrol` does.
    primary_rx_mask: Mutex<Option<(Arc<Mapping>, u64)>>,
}

impl FakeEvents {
    /// A fresh fd with no pending events and no writes.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            efd: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap(),
            writes: Mutex::new(Vec::new()),
            rescinded: AtomicBool::new(false),
            primary_rx_mask: Mutex::new(None),
        })
    }

    /// The kernel's ISR: `uio_event_notify`.
    pub fn interrupt(&self) {
        rustix::io::write(&self.efd, &1u64.to_ne_bytes()).unwrap();
    }

    /// The values written so far, oldest first.
    pub fn writes(&self) -> Vec<i32> {
        self.writes.lock().unwrap().clone()
    }

    /// Forgets the values written so far.
    pub fn clear_writes(&self) {
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
        if let Some((m, off)) = &*self.primary_rx_mask.lock().unwrap() {
            m.store_u32(*off, u32::from(v == 0), Ordering::SeqCst)
                .unwrap();
        }
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
pub struct FakeOpener {
    /// The fake uio fd every `open_uio` returns (one event counter for all opens).
    pub events: Arc<FakeEvents>,
    maps: Vec<OwnedFd>,
    rings: Mutex<HashMap<PathBuf, OwnedFd>>,
    /// How many times `open_uio` was called.
    pub uio_opens: AtomicUsize,
    /// Open handles now; the first open "connects" the primary channel, as `hv_uio_open`.
    live: Arc<AtomicUsize>,
    driver: FakeDriver,
}

impl FakeOpener {
    /// One sealed memfd per map, of the given sizes; no `ring` files yet; the driver that
    /// leaves the mask to userspace.
    pub fn new(map_sizes: &[u64]) -> Self {
        Self::with_driver(map_sizes, FakeDriver::LeavesMaskToUserspace)
    }

    /// [`new`](Self::new) playing `driver`.
    pub fn with_driver(map_sizes: &[u64], driver: FakeDriver) -> Self {
        let o = Self {
            events: FakeEvents::new(),
            maps: map_sizes.iter().map(|&s| sealed_memfd(s)).collect(),
            rings: Mutex::new(HashMap::new()),
            uio_opens: AtomicUsize::new(0),
            live: Arc::new(AtomicUsize::new(0)),
            driver,
        };
        if let Some(&size) = map_sizes.first() {
            *o.events.primary_rx_mask.lock().unwrap() =
                Some((o.map(0), size / 2 + rc::INTERRUPT_MASK));
        }
        o
    }

    /// The primary RX `interrupt_mask` as the kernel sees it.
    pub fn primary_rx_mask(&self) -> u32 {
        let (m, off) = self.events.primary_rx_mask.lock().unwrap().clone().unwrap();
        m.load_u32(off, Ordering::SeqCst).unwrap()
    }

    /// Sets the primary RX `interrupt_mask` (e.g. as a daemon that crashed left it).
    pub fn set_primary_rx_mask(&self, v: u32) {
        let (m, off) = self.events.primary_rx_mask.lock().unwrap().clone().unwrap();
        m.store_u32(off, v, Ordering::SeqCst).unwrap();
    }

    /// Handles open now.
    pub fn live_handles(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Creates the `ring` file at `path` (`len` bytes); returns an fd of it for the host.
    pub fn add_ring(&self, path: PathBuf, len: u64) -> OwnedFd {
        let fd = sealed_memfd(len);
        let dup = fd.try_clone().unwrap();
        self.rings.lock().unwrap().insert(path, fd);
        dup
    }

    /// Map `index` mapped as the host sees it.
    pub fn map(&self, index: usize) -> Arc<Mapping> {
        let len = rustix::fs::fstat(&self.maps[index]).unwrap().st_size as u64;
        Arc::new(Mapping::map_peer(self.maps[index].as_fd(), len).unwrap())
    }
}

/// One open file of the fake device: the shared [`FakeEvents`], and a count of open handles
/// (the last close "disconnects").
#[derive(Debug)]
struct FakeHandle {
    events: Arc<FakeEvents>,
    live: Arc<AtomicUsize>,
}

impl Drop for FakeHandle {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AsFd for FakeHandle {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }
}

impl UioEvents for FakeHandle {
    fn irqcontrol(&self, v: i32) -> std::io::Result<()> {
        self.events.irqcontrol(v)
    }

    fn read_count(&self) -> std::io::Result<Option<u32>> {
        self.events.read_count()
    }
}

impl DeviceOpener for FakeOpener {
    fn open_uio(&self, uio: &str) -> Result<Arc<dyn UioEvents>, UioError> {
        assert_eq!(uio, "uio0");
        self.uio_opens.fetch_add(1, Ordering::SeqCst);
        if self.live.fetch_add(1, Ordering::SeqCst) == 0
            && self.driver == FakeDriver::MasksOnOpenAndInterrupt
        {
            // hv_uio_open before b15b7d2a1b09: connect the ring, then mask its RX side.
            self.set_primary_rx_mask(1);
        }
        Ok(Arc::new(FakeHandle {
            events: self.events.clone(),
            live: self.live.clone(),
        }))
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
pub struct HostChannel {
    from_guest: IncomingRing<HostMem>,
    to_guest: OutgoingRing<HostMem>,
    /// The packet type of the replies: 0xb (completion) unless a test asks for another; the
    /// `hv_azure_blob` driver reads the response from a packet of any type.
    pub reply_type: u16,
    /// The `transaction_id` GUID of every request answered, in order.
    pub guids: Vec<[u8; 16]>,
}

impl HostChannel {
    /// Over a `2 * S` mapping with 4 KiB ring headers; initialises both rings as the kernel
    /// does on open (§1.2).
    pub fn new(mem: Arc<Mapping>) -> Self {
        Self::with_header(mem, PAGE)
    }

    /// [`new`](Self::new) with `header`-byte ring headers (the guest page size).
    pub fn with_header(mem: Arc<Mapping>, header: u64) -> Self {
        let s = mem.size() / 2;
        let tx = Window::new(mem.clone(), 0, s).unwrap();
        let rx = Window::new(mem, s, s).unwrap();
        init_ring_with_header(&tx, header).unwrap();
        init_ring_with_header(&rx, header).unwrap();
        Self {
            from_guest: IncomingRing::with_header(tx, header).unwrap(),
            to_guest: OutgoingRing::with_header(rx, header).unwrap(),
            reply_type: blobring_abi::vmbus::PKT_COMP,
            guids: Vec::new(),
        }
    }

    /// Answers every blob request waiting on the TX ring with a reply of type
    /// [`reply_type`](Self::reply_type) (status 0, `response_len = 7`). `kernel_masks`: play
    /// an old kernel's ISR, which sets the RX `interrupt_mask` before notifying. Returns the
    /// transaction ids answered.
    pub fn answer_all(&mut self, events: &FakeEvents, kernel_masks: bool) -> Vec<u64> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut answered = Vec::new();
        while self.from_guest.read_packet(&mut buf).is_ok() {
            let p = decode(&buf).unwrap();
            let req = parse_blob_request(&p).unwrap();
            self.guids.push(req.vsp.transaction_id);
            let resp = AzBlobVspResponse {
                length: req.vsp.data_buffer_length,
                error: 0,
                response_len: 7,
            };
            encode_blob_completion(&mut out, req.trans_id, &resp).unwrap();
            // Same bytes under another type: offset8 = 2, so the response is at hv_pkt_data.
            out[..2].copy_from_slice(&self.reply_type.to_le_bytes());
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

    /// Writes one reply of type [`reply_type`](Self::reply_type) for transaction `tid`
    /// (status 0, `length` 4096, `response_len` 7) and interrupts if the guest must be signalled.
    pub fn complete(&mut self, tid: u64, events: &FakeEvents) {
        let resp = AzBlobVspResponse {
            length: 4096,
            error: 0,
            response_len: 7,
        };
        let mut out = Vec::new();
        encode_blob_completion(&mut out, tid, &resp).unwrap();
        out[..2].copy_from_slice(&self.reply_type.to_le_bytes());
        if self.to_guest.write(&[&out]).unwrap() {
            events.interrupt();
        }
    }

    /// Writes `packet` (descriptor onwards, as given) to the guest's RX ring and interrupts if
    /// the guest must be signalled: a host sending whatever it likes.
    pub fn reply_raw(&mut self, packet: &[u8], events: &FakeEvents) {
        if self.to_guest.write(&[packet]).unwrap() {
            events.interrupt();
        }
    }

    /// Takes every blob request waiting on the TX ring without answering it (a host that is
    /// slow to reply); returns each one's transaction id and GUID.
    pub fn take_requests(&mut self) -> Vec<(u64, [u8; 16])> {
        let mut buf = Vec::new();
        let mut taken = Vec::new();
        while self.from_guest.read_packet(&mut buf).is_ok() {
            let req = parse_blob_request(&decode(&buf).unwrap()).unwrap();
            self.guids.push(req.vsp.transaction_id);
            taken.push((req.trans_id, req.vsp.transaction_id));
        }
        self.from_guest.commit_read().unwrap();
        taken
    }

    /// True once the guest has consumed and released everything written to its RX ring.
    pub fn guest_released_all(&self) -> bool {
        self.to_guest.is_drained().unwrap()
    }

    /// The `interrupt_mask` of the RX ring (the one the guest reads).
    pub fn rx_mask(&self) -> u32 {
        self.to_guest
            .memory()
            .load_u32(rc::INTERRUPT_MASK, Ordering::SeqCst)
            .unwrap()
    }
}

/// What [`machine_with`] builds.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The device's `monitor_id`, if monitored.
    pub monitor: Option<u32>,
    /// Subchannels (relids 15.., not monitored), rings present.
    pub subs: u32,
    /// The guest page size: ring headers, map sizes.
    pub page_size: u64,
    /// Bytes per primary ring (TX or RX).
    pub primary_ring: u64,
    /// Bytes per subchannel ring.
    pub sub_ring: u64,
    /// The sysfs `offset` of the interrupt and monitor pages inside their guest page.
    pub page_offset: u64,
    /// The driver played.
    pub driver: FakeDriver,
}

impl Spec {
    /// 4 KiB pages, [`PRIMARY_RING`] and [`SUB_RING`] rings, offsets 0, the driver that leaves
    /// the mask to userspace.
    pub fn new(monitor: Option<u32>, subs: u32) -> Self {
        Self {
            monitor,
            subs,
            page_size: PAGE,
            primary_ring: PRIMARY_RING,
            sub_ring: SUB_RING,
            page_offset: 0,
            driver: FakeDriver::LeavesMaskToUserspace,
        }
    }
}

/// A whole fake machine: tree, opener, host view of every channel.
pub struct Machine {
    /// The sysfs tree.
    pub tree: Tree,
    /// The device files.
    pub opener: FakeOpener,
    /// The host side of the primary, then of each subchannel.
    pub host: Vec<HostChannel>,
}

/// Device with relid 14 (monitor id `monitor`), bound to uio0, and `subs` subchannels
/// (relids 15.., not monitored) whose rings already exist; 4 KiB pages.
pub fn machine(monitor: Option<u32>, subs: u32) -> Machine {
    machine_with(Spec::new(monitor, subs))
}

/// A machine as `spec` says: maps sized for its page size (map 0 holds two primary rings;
/// the interrupt and monitor pages are one guest page each with the 4 KiB page at
/// `page_offset`, and sysfs says so), rings initialised with a one-page header, and, for the
/// driver that masks, subchannel RX rings masked at creation (`hv_uio_new_channel`).
pub fn machine_with(spec: Spec) -> Machine {
    let tree = Tree::new();
    tree.driver("uio_hv_generic");
    tree.device(INSTANCE, AZ_BLOB_CLASS_GUID_STR, 14, spec.monitor);
    tree.bind_to(INSTANCE, "uio_hv_generic");
    let page_map = if spec.page_size == PAGE {
        PAGE
    } else {
        spec.page_size
    };
    tree.uio(
        INSTANCE,
        "uio0",
        &[
            ("txrx_rings", 2 * spec.primary_ring),
            ("int_page", PAGE),
            ("monitor_page", PAGE),
        ],
    );
    let maps = tree.sysfs().uio_class_dir("uio0").join("maps");
    for i in 1..3 {
        Tree::write(
            &maps.join(format!("map{i}/offset")),
            &format!("0x{:x}\n", spec.page_offset),
        );
    }
    let opener = FakeOpener::with_driver(&[2 * spec.primary_ring, page_map, page_map], spec.driver);
    let mut host = vec![HostChannel::with_header(opener.map(0), spec.page_size)];
    for i in 0..spec.subs {
        let relid = 15 + i;
        tree.subchannel(INSTANCE, relid, i + 1, None, true);
        let fd = opener.add_ring(tree.ring_path(INSTANCE, relid), 2 * spec.sub_ring);
        let mem = Arc::new(Mapping::map_peer(fd.as_fd(), 2 * spec.sub_ring).unwrap());
        host.push(HostChannel::with_header(mem, spec.page_size));
        if spec.driver == FakeDriver::MasksOnOpenAndInterrupt {
            // hv_uio_new_channel before b15b7d2a1b09 masks a subchannel once it is open.
            host.last()
                .unwrap()
                .to_guest
                .memory()
                .store_u32(rc::INTERRUPT_MASK, 1, Ordering::SeqCst)
                .unwrap();
        }
    }
    Machine { tree, opener, host }
}

/// Options asking for `subchannels` subchannels (waiting up to 5 s) in interrupt mode `mode`
/// (forced), 4 KiB pages.
pub fn opts(mode: InterruptMode, subchannels: u32) -> UioOptions {
    UioOptions {
        subchannels,
        subchannel_timeout: Duration::from_secs(5),
        interrupt_mode: Some(mode),
        page_size: PAGE,
    }
}

/// Options that let the transport probe who owns `interrupt_mask`, with page size `page`.
pub fn probe_opts(subchannels: u32, page: u64) -> UioOptions {
    UioOptions {
        interrupt_mode: None,
        page_size: page,
        ..opts(InterruptMode::UserspaceMasks, subchannels)
    }
}

/// Opens the device of `m` (already bound) with `subs` subchannels, as on kernel [`NEW`],
/// interrupt mode forced to `mode`.
pub fn open(m: &Machine, mode: InterruptMode, subs: u32) -> UioDevice {
    open_with(m, &opts(mode, subs))
}

/// Opens the device of `m` (already bound) with `o`.
pub fn open_with(m: &Machine, o: &UioOptions) -> UioDevice {
    let dev = sysfs::find_blob_device(&m.tree.sysfs()).unwrap();
    // Already bound: bind_and_open only opens.
    UioDevice::bind_and_open(&m.tree.sysfs(), &dev, &m.opener, o, Some(NEW)).unwrap()
}
