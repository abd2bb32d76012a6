//! Opening the bound device: the uio fd, its maps, every channel's rings (§4.2–4.5), and the
//! interrupt loop (§3.3).

use std::fmt::Debug;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use blobring_abi::vmbus::rc;
use blobring_shm::{Mapping, SharedMemory, Window};
use rustix::fs::{Mode, OFlags};

use super::UioError;
use super::signal::{InterruptMode, MaskProbe, SignalPath, max_request_pages};
use super::sysfs::{self, BlobDevice, MapInfo, Sysfs};
use crate::channel::{Channel, ChannelError, ChannelRings};
use crate::ring::{IncomingRing, MAX_HEADER, OutgoingRing, RingError};

/// Memory behind a uio ring: a window of a device mapping.
pub type RingMem = Window<Arc<dyn SharedMemory>>;
/// The interrupt or monitor page: 4096 bytes at the map's sysfs `offset` into its mapping.
type PageMem = Arc<Window<Arc<Mapping>>>;

/// Map names in index order (§4.2).
const MAP_NAMES: [&str; 3] = ["txrx_rings", "int_page", "monitor_page"];
/// Bytes of the interrupt and monitor pages.
const HV_PAGE: u64 = blobring_abi::vmbus::HV_PAGE_SIZE;
/// Bound on drain/re-arm rounds in one [`UioDevice::service`] call, so a host that keeps the
/// rings busy cannot keep us in one call forever.
const MAX_SERVICE_ROUNDS: u32 = 64;

/// The event side of `/dev/uioN` (§3.3): the fd polls readable on a host interrupt.
pub trait UioEvents: AsFd + Send + Sync + Debug {
    /// `write(fd, &v, 4)`: irqcontrol — re-enable (and, for an unmonitored channel, signal the
    /// host) with 1.
    fn irqcontrol(&self, v: i32) -> io::Result<()>;
    /// Non-blocking `read(fd, 4)`: `Some(total event count)`, or `None` if no event is
    /// pending. `EIO` means the device was rescinded.
    fn read_count(&self) -> io::Result<Option<u32>>;

    /// Reads pending event counts until none is left (at most 1024 reads, so a storm cannot
    /// hold the caller); returns how many reads succeeded. A rescind shows as an `EIO` error.
    fn drain(&self) -> io::Result<u64> {
        let mut n = 0;
        while self.read_count()?.is_some() {
            n += 1;
            if n >= 1024 {
                break;
            }
        }
        Ok(n)
    }
}

/// The real `/dev/uioN`, opened non-blocking.
#[derive(Debug)]
pub struct UioFile {
    fd: OwnedFd,
}

impl UioFile {
    /// Opens `path` (`/dev/uioN`) read-write, close-on-exec, non-blocking.
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )?;
        Ok(Self { fd })
    }
}

impl AsFd for UioFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl UioEvents for UioFile {
    fn irqcontrol(&self, v: i32) -> io::Result<()> {
        let n = rustix::io::write(&self.fd, &v.to_ne_bytes())?;
        if n != 4 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short uio write"));
        }
        Ok(())
    }

    fn read_count(&self) -> io::Result<Option<u32>> {
        let mut b = [0u8; 4];
        loop {
            match rustix::io::read(&self.fd, &mut b) {
                Ok(4) => return Ok(Some(u32::from_ne_bytes(b))),
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "short uio read",
                    ));
                }
                Err(rustix::io::Errno::AGAIN) => return Ok(None),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Opens the files behind a uio device. [`SystemOpener`] is the real one; tests substitute
/// memfds and a fake event fd.
pub trait DeviceOpener: Debug {
    /// Opens `uioN` (`/dev/uioN`). The returned handle must stay open while the device is used
    /// (the first open connects the primary channel).
    fn open_uio(&self, uio: &str) -> Result<Arc<dyn UioEvents>, UioError>;
    /// An fd and file offset to mmap uio map `index` from (real: the uio fd at
    /// `index * pagesize`).
    fn open_map(
        &self,
        uio: &str,
        events: &dyn UioEvents,
        index: u32,
    ) -> Result<(OwnedFd, u64), UioError>;
    /// Opens a subchannel's `ring` file (`channels/<relid>/ring`).
    fn open_ring(&self, ring: &Path) -> Result<OwnedFd, UioError>;
}

/// Opens `/dev/uioN` (under `dev_dir`, default `/dev`) and the sysfs `ring` files.
#[derive(Debug, Clone)]
pub struct SystemOpener {
    dev_dir: PathBuf,
}

impl Default for SystemOpener {
    fn default() -> Self {
        Self {
            dev_dir: PathBuf::from("/dev"),
        }
    }
}

impl SystemOpener {
    /// Device nodes under `dev_dir`.
    pub fn new(dev_dir: impl Into<PathBuf>) -> Self {
        Self {
            dev_dir: dev_dir.into(),
        }
    }
}

impl DeviceOpener for SystemOpener {
    fn open_uio(&self, uio: &str) -> Result<Arc<dyn UioEvents>, UioError> {
        let path = self.dev_dir.join(uio);
        let f = UioFile::open(&path)
            .map_err(|e| UioError::open(path.display().to_string(), Some(path.clone()), e))?;
        Ok(Arc::new(f))
    }

    fn open_map(
        &self,
        uio: &str,
        events: &dyn UioEvents,
        index: u32,
    ) -> Result<(OwnedFd, u64), UioError> {
        let fd = events
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| UioError::Io {
                op: "dup",
                source: e,
            })?;
        let _ = uio;
        Ok((fd, u64::from(index) * rustix::param::page_size() as u64))
    }

    fn open_ring(&self, ring: &Path) -> Result<OwnedFd, UioError> {
        rustix::fs::open(ring, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).map_err(|e| {
            UioError::open(ring.display().to_string(), Some(ring.to_owned()), e.into())
        })
    }
}

/// How to open the device.
#[derive(Debug, Clone, Copy)]
pub struct UioOptions {
    /// Subchannels to wait for (0, the default: take those present once their rings exist).
    /// The blob protocol has no subchannel request (§6.1), so the host decides.
    pub subchannels: u32,
    /// How long to wait for them. Default: 10 s (DPDK waits 1000 × 10 ms).
    pub subchannel_timeout: Duration,
    /// Who owns `interrupt_mask`: `None` (the default) detects it from what `uio_hv_generic`
    /// does at open ([`MaskProbe`]); `Some` forces it.
    pub interrupt_mode: Option<InterruptMode>,
    /// The guest kernel's `PAGE_SIZE`: each ring's header is one such page (the data area
    /// starts after it) and map *i* is at mmap offset `i * page_size`. Default: the running
    /// kernel's. 4 KiB to 64 KiB.
    pub page_size: u64,
}

impl Default for UioOptions {
    fn default() -> Self {
        Self {
            subchannels: 0,
            subchannel_timeout: Duration::from_secs(10),
            interrupt_mode: None,
            page_size: rustix::param::page_size() as u64,
        }
    }
}

/// Offset of the RX ring's `interrupt_mask` in map 0 (TX ring first, then RX, §1.1).
fn rx_mask_offset(map0_size: u64) -> u64 {
    map0_size / 2 + rc::INTERRUPT_MASK
}

/// The uio fd, map 0, and who owns `interrupt_mask` with the evidence.
type OpenedRings = (Arc<dyn UioEvents>, Arc<Mapping>, InterruptMode, MaskProbe);

/// Opens the uio fd and maps map 0 (`txrx_rings`), deciding who owns `interrupt_mask` unless
/// `opts` forces it. The probe watches what `uio_hv_generic` does on the first open, the one
/// observable difference made by b15b7d2a1b09 "uio_hv_generic: Let userspace take care of
/// interrupt mask" (upstream, and backported to stable lines, so no version number decides
/// it; vmbus/SOURCES.md):
///
/// - before it, `hv_uio_open` sets the primary RX `interrupt_mask` to 1 after connecting the
///   ring (and the ISR sets it on every interrupt);
/// - after it, nothing in the driver writes the mask except `write(fd, v)` (mask = !v).
///
/// So: mask clear right after our open → userspace owns it. Mask set → either the driver set
/// it, or an earlier user (a daemon that crashed) left it set and the kernel kept it across
/// close/open. To tell them apart, clear it, unmap, close (the last close disconnects the
/// ring), open again and look once more: set again → the driver sets it
/// ([`InterruptMode::KernelMasks`]); still clear → it was stale
/// ([`InterruptMode::UserspaceMasks`]).
fn open_rings(
    opener: &dyn DeviceOpener,
    uio: &str,
    map0: &MapInfo,
    opts: &UioOptions,
) -> Result<OpenedRings, UioError> {
    let what = || format!("{uio} map 0 ({})", map0.name);
    let open = || -> Result<(Arc<dyn UioEvents>, Arc<Mapping>), UioError> {
        let events = opener.open_uio(uio)?;
        let (fd, offset) = opener.open_map(uio, &*events, 0)?;
        let rings = map_device(fd.as_fd(), offset, map0.size, what())?;
        Ok((events, rings))
    };
    let access = |e: blobring_shm::AccessError| UioError::BadMap {
        uio: uio.to_owned(),
        index: 0,
        problem: format!("{}: {e}", what()),
    };
    let mask_at = rx_mask_offset(map0.size);
    let (events, rings) = open()?;
    if let Some(mode) = opts.interrupt_mode {
        return Ok((events, rings, mode, MaskProbe::Forced));
    }
    if rings.load_u32(mask_at, Ordering::SeqCst).map_err(access)? == 0 {
        return Ok((
            events,
            rings,
            InterruptMode::UserspaceMasks,
            MaskProbe::ClearAfterOpen,
        ));
    }
    rings
        .store_u32(mask_at, 0, Ordering::SeqCst)
        .map_err(access)?;
    // Every reference to the file goes: the mapping, then the fd (last close → disconnect).
    drop(rings);
    drop(events);
    let (events, rings) = open()?;
    if rings.load_u32(mask_at, Ordering::SeqCst).map_err(access)? != 0 {
        Ok((
            events,
            rings,
            InterruptMode::KernelMasks,
            MaskProbe::SetByOpen,
        ))
    } else {
        Ok((
            events,
            rings,
            InterruptMode::UserspaceMasks,
            MaskProbe::StaleMask,
        ))
    }
}

fn map_device(
    fd: BorrowedFd<'_>,
    offset: u64,
    len: u64,
    what: String,
) -> Result<Arc<Mapping>, UioError> {
    Mapping::map_device(fd, offset, len)
        .map(Arc::new)
        .map_err(|source| UioError::Map { what, source })
}

/// One VMBus channel of the device (primary or subchannel). Implements [`Channel`]; its fd
/// is the device's shared uio fd.
#[derive(Debug)]
pub struct UioChannel {
    relid: u32,
    subchannel_id: u32,
    path: SignalPath,
    rings: ChannelRings<RingMem>,
    events: Arc<dyn UioEvents>,
    int_page: PageMem,
    monitor_page: PageMem,
}

impl AsFd for UioChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }
}

impl UioChannel {
    fn new(
        relid: u32,
        subchannel_id: u32,
        monitor_id: Option<u32>,
        mem: Arc<dyn SharedMemory>,
        pages: (&PageMem, &PageMem),
        events: Arc<dyn UioEvents>,
        page_size: u64,
    ) -> Result<Self, UioError> {
        let size = mem.size();
        let ring_err = |source: RingError| UioError::Ring { relid, source };
        // Each ring is a whole number of guest pages (VMBUS_RING_SIZE page-aligns it): on a
        // wrong page size this is where the sizes stop adding up.
        if !size.is_multiple_of(2 * page_size) {
            return Err(UioError::PageSizeMismatch {
                what: format!("channel {relid}'s rings"),
                size,
                page_size,
            });
        }
        let s = size / 2;
        // TX (guest → host) first, then RX (§1.1, §4.4).
        let tx = Window::new(mem.clone(), 0, s).map_err(|e| ring_err(e.into()))?;
        let rx = Window::new(mem, s, s).map_err(|e| ring_err(e.into()))?;
        Ok(Self {
            relid,
            subchannel_id,
            path: SignalPath::for_channel(relid, monitor_id)?,
            // The data area starts one guest page into each ring (Linux pads
            // struct hv_ring_buffer to PAGE_SIZE; vmbus/SOURCES.md).
            rings: ChannelRings {
                outgoing: OutgoingRing::with_header(tx, page_size).map_err(ring_err)?,
                incoming: IncomingRing::with_header(rx, page_size).map_err(ring_err)?,
            },
            events,
            int_page: pages.0.clone(),
            monitor_page: pages.1.clone(),
        })
    }

    /// The channel's relid.
    pub fn relid(&self) -> u32 {
        self.relid
    }

    /// 0 for the primary channel.
    pub fn subchannel_id(&self) -> u32 {
        self.subchannel_id
    }

    /// How this channel signals the host.
    pub fn signal_path(&self) -> SignalPath {
        self.path
    }

    /// Pages per blob request this channel's TX ring can take ([`max_request_pages`]).
    pub fn max_request_pages(&self) -> u32 {
        max_request_pages(self.rings.outgoing.data_size())
    }
}

impl Channel for UioChannel {
    type Mem = RingMem;

    fn rings(&mut self) -> &mut ChannelRings<RingMem> {
        &mut self.rings
    }

    /// §3.2: monitor bit (no system call), or interrupt-page bit plus `write(uio_fd, 1)`.
    /// That write is also the kernel's irqcontrol: on 6.12+ kernels it clears every RX
    /// `interrupt_mask` of the device, so a masked drain may see one extra interrupt — harmless,
    /// and there is no signal-only call (§3.2, §7.3).
    fn signal(&self) -> io::Result<()> {
        let write = self
            .path
            .raise(&*self.int_page, &*self.monitor_page)
            .map_err(io::Error::other)?;
        if write {
            self.events.irqcontrol(1)?;
        }
        Ok(())
    }

    /// Drains the pending event counts ([`UioEvents::drain`]; all channels share the fd).
    fn clear_wakeups(&self) -> io::Result<u64> {
        self.events.drain()
    }
}

/// What one [`UioDevice::service`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Serviced {
    /// The event count read, if an interrupt was pending.
    pub events: Option<u32>,
    /// Drain passes over all rings (≥ 1).
    pub rounds: u32,
    /// `true` if data was still arriving after the round limit (call again without sleeping).
    pub more: bool,
}

/// The Azure Blob device opened through `uio_hv_generic`.
#[derive(Debug)]
pub struct UioDevice {
    device: BlobDevice,
    uio: String,
    maps: Vec<MapInfo>,
    events: Arc<dyn UioEvents>,
    channels: Vec<UioChannel>,
    mode: InterruptMode,
    probe: MaskProbe,
    page_size: u64,
}

/// Checks uio's maps of the device against what §4.2 expects: `MAP_NAMES` in order, large
/// enough, map 0 a whole number of guest-page-sized ring pairs, and maps 1–2 leaving a whole
/// Hyper-V page inside their guest page.
fn check_maps(uio: &str, maps: &[MapInfo], page: u64) -> Result<(), UioError> {
    for (i, want) in MAP_NAMES.iter().enumerate() {
        let bad = |problem: String| UioError::BadMap {
            uio: uio.to_string(),
            index: i as u32,
            problem,
        };
        let Some(m) = maps.get(i) else {
            return Err(bad(format!(
                "missing (expected {want}); is the device bound to uio_hv_generic?"
            )));
        };
        if m.name != *want {
            return Err(bad(format!("named {:?}, expected {want}", m.name)));
        }
        let min = if i == 0 { 2 * (page + 64) } else { HV_PAGE };
        if m.size < min {
            return Err(bad(format!("{} bytes, expected at least {min}", m.size)));
        }
        if i == 0 && !m.size.is_multiple_of(2 * page) {
            return Err(UioError::PageSizeMismatch {
                what: format!("{uio} map 0 (txrx_rings)"),
                size: m.size,
                page_size: page,
            });
        }
        // uio's `offset`: where the page starts inside the mapped guest page (non-zero
        // when a 4 KiB Hyper-V page sits inside a 64 KiB guest page).
        if i > 0 && (!m.offset.is_multiple_of(8) || m.offset + HV_PAGE > page) {
            return Err(bad(format!(
                "offset {:#x} does not leave a 4096-byte page inside a {page}-byte guest page",
                m.offset
            )));
        }
    }
    Ok(())
}

/// Maps the interrupt page (map 1) and the monitor page (map 2), each as a 4096-byte window
/// at uio's offset inside its guest page.
fn map_pages(
    opener: &dyn DeviceOpener,
    uio: &str,
    events: &dyn UioEvents,
    maps: &[MapInfo],
) -> Result<(PageMem, PageMem), UioError> {
    let mut pages = Vec::new();
    for (i, m) in maps.iter().enumerate().take(3).skip(1) {
        let (fd, offset) = opener.open_map(uio, events, i as u32)?;
        let what = format!("{uio} map {i} ({})", m.name);
        let mapping = map_device(fd.as_fd(), offset, m.offset + HV_PAGE, what.clone())?;
        let window = Window::new(mapping, m.offset, HV_PAGE).map_err(|e| UioError::BadMap {
            uio: uio.to_string(),
            index: i as u32,
            problem: format!("{what}: {e}"),
        })?;
        pages.push(Arc::new(window));
    }
    let monitor_page = pages.pop().expect("2 pages");
    let int_page = pages.pop().expect("2 pages");
    Ok((int_page, monitor_page))
}

impl UioDevice {
    /// Opens `device` (bound to `uio_hv_generic`, see [`sysfs::bind`]): the uio fd, map 0
    /// (`txrx_rings`, primary TX then RX), map 1 (`int_page`), map 2 (`monitor_page`), and
    /// every subchannel's `ring`, waiting for `opts.subchannels` of them (§4.2–4.5).
    pub fn open(
        sysfs: &Sysfs,
        device: &BlobDevice,
        opener: &dyn DeviceOpener,
        opts: &UioOptions,
    ) -> Result<Self, UioError> {
        let Some(uio) = device.uio.clone() else {
            return Err(UioError::NotBound {
                instance: device.instance.clone(),
                driver: device.driver.clone().unwrap_or_else(|| "none".into()),
            });
        };
        let page = opts.page_size;
        if !page.is_power_of_two() || !(HV_PAGE..=MAX_HEADER).contains(&page) {
            return Err(UioError::UnsupportedPageSize { page_size: page });
        }
        let maps = sysfs::read_maps(sysfs, &uio)?;
        check_maps(&uio, &maps, page)?;
        // Keep this open for the life of the device: the first open connects the rings. Who
        // owns interrupt_mask is decided here, from what the driver does on that open.
        let (events, rings, mode, probe) = open_rings(opener, &uio, &maps[0], opts)?;
        tracing::info!(
            uio = %uio,
            mode = ?mode,
            evidence = %probe,
            "interrupt_mask owner decided"
        );
        let (int_page, monitor_page) = map_pages(opener, &uio, &*events, &maps)?;
        let pages = (&int_page, &monitor_page);
        let mut channels = vec![UioChannel::new(
            device.relid,
            0,
            device.monitor_id,
            rings,
            pages,
            events.clone(),
            page,
        )?];
        for sc in sysfs::wait_subchannels(device, opts.subchannels, opts.subchannel_timeout)? {
            let fd = opener.open_ring(&sc.ring)?;
            let st = rustix::fs::fstat(&fd).map_err(|e| UioError::Io {
                op: "fstat ring",
                source: e.into(),
            })?;
            let size = u64::try_from(st.st_size).unwrap_or(0);
            let mem = map_device(fd.as_fd(), 0, size, sc.ring.display().to_string())?;
            channels.push(UioChannel::new(
                sc.relid,
                sc.subchannel_id,
                sc.monitor_id,
                mem,
                pages,
                events.clone(),
                page,
            )?);
        }
        let dev = Self {
            device: device.clone(),
            uio,
            maps,
            events,
            channels,
            mode,
            probe,
            page_size: page,
        };
        // Interrupts on from the start on every channel: the driver before b15b7d2a1b09 masks
        // each subchannel when it opens it, and only userspace clears those masks.
        for ch in &dev.channels {
            ch.rings
                .incoming
                .set_interrupt_mask(false)
                .map_err(|c| UioError::Channel {
                    relid: ch.relid,
                    source: c.into(),
                })?;
        }
        if dev.mode.rearm_needs_write() {
            // Old kernels: interrupts start enabled, but make sure (idempotent).
            dev.events.irqcontrol(1).map_err(|source| UioError::Io {
                op: "write",
                source,
            })?;
        }
        Ok(dev)
    }

    /// Binds `device` to `uio_hv_generic` if it is not yet ([`sysfs::bind`], refusing an
    /// unmonitored device on kernels older than 6.10), then [`opens`](Self::open) it. This is
    /// what the daemon calls after [`super::detect()`] chose `uio`.
    pub fn bind_and_open(
        sysfs: &Sysfs,
        device: &BlobDevice,
        opener: &dyn DeviceOpener,
        opts: &UioOptions,
        kernel: Option<super::KernelVersion>,
    ) -> Result<Self, UioError> {
        let device = sysfs::bind(sysfs, device, kernel, sysfs::BIND_TIMEOUT)?;
        Self::open(sysfs, &device, opener, opts)
    }

    /// The device as discovered.
    pub fn device(&self) -> &BlobDevice {
        &self.device
    }

    /// `uioN`.
    pub fn uio_name(&self) -> &str {
        &self.uio
    }

    /// The uio maps as sysfs lists them.
    pub fn maps(&self) -> &[MapInfo] {
        &self.maps
    }

    /// The interrupt-mask mode in use.
    pub fn interrupt_mode(&self) -> InterruptMode {
        self.mode
    }

    /// What decided [`interrupt_mode`](Self::interrupt_mode) (for the log and diagnostics).
    pub fn mask_probe(&self) -> MaskProbe {
        self.probe
    }

    /// The guest page size the rings were laid out with ([`UioOptions::page_size`]).
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Channels: the primary first, then subchannels by subchannel id.
    pub fn channels(&self) -> &[UioChannel] {
        &self.channels
    }

    /// Mutable channels.
    pub fn channels_mut(&mut self) -> &mut [UioChannel] {
        &mut self.channels
    }

    /// Takes the channels out (e.g. to spread them over workers); they keep the uio fd open.
    /// Each worker that wants its own wakeups can open another listener with
    /// [`UioDevice::open_listener`].
    pub fn into_channels(self) -> Vec<UioChannel> {
        self.channels
    }

    /// Opens another handle on the same uio device: each open file counts events on its own,
    /// so every worker polling its own handle is woken by every interrupt (§3.3: all channels
    /// share one device).
    pub fn open_listener(&self, opener: &dyn DeviceOpener) -> Result<Arc<dyn UioEvents>, UioError> {
        opener.open_uio(&self.uio)
    }

    /// The largest blob request, in pages (data + request + response), that fits every
    /// channel's TX ring (§4.6, §7.1); the SDK splits larger transfers.
    pub fn max_request_pages(&self) -> u32 {
        self.channels
            .iter()
            .map(UioChannel::max_request_pages)
            .min()
            .unwrap_or(0)
    }

    /// The uio fd (poll it; readable on a host interrupt).
    pub fn event_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }

    /// Non-blocking `read` of the event count; [`UioError::Rescinded`] on `EIO`.
    pub fn read_events(&self) -> Result<Option<u32>, UioError> {
        read_events(&*self.events)
    }

    /// Waits up to `timeout` for an interrupt and reads its count.
    pub fn wait_events(&self, timeout: Duration) -> Result<Option<u32>, UioError> {
        if crate::sim::wait_readable(self.events.as_fd(), timeout)
            .map_err(|source| UioError::Io { op: "poll", source })?
        {
            self.read_events()
        } else {
            Ok(None)
        }
    }

    /// Masks every channel's RX ring (while draining, §3.1).
    pub fn mask_all(&mut self) -> Result<(), UioError> {
        for ch in &mut self.channels {
            let relid = ch.relid;
            ch.mask()
                .map_err(|source| UioError::Channel { relid, source })?;
        }
        Ok(())
    }

    /// Before sleeping: clears every RX `interrupt_mask` (old kernels also leave subchannel
    /// masks set; only userspace clears those), and in [`InterruptMode::KernelMasks`] writes
    /// `1` to re-arm the uio interrupt. Returns `true` if a ring already holds data (drain
    /// again instead of sleeping; those packets were not signalled).
    pub fn rearm(&mut self) -> Result<bool, UioError> {
        let mut pending = false;
        for ch in &mut self.channels {
            let relid = ch.relid;
            pending |= ch
                .arm()
                .map_err(|source| UioError::Channel { relid, source })?;
        }
        if self.mode.rearm_needs_write() {
            self.events.irqcontrol(1).map_err(|source| UioError::Io {
                op: "write",
                source,
            })?;
            // The write cleared the primary's mask again; re-check every ring after it.
            for ch in &mut self.channels {
                pending |= ch.incoming().has_data().map_err(|c| UioError::Channel {
                    relid: ch.relid,
                    source: c.into(),
                })?;
            }
        }
        Ok(pending)
    }

    /// One turn of the interrupt loop (§3.3): wait up to `timeout` for an interrupt and read
    /// its count, then repeat "mask, drain all rings (`drain(index, channel)`), re-arm,
    /// re-check" until the rings stay empty (bounded). Call with a zero timeout to drain
    /// without waiting. [`UioError::Rescinded`] when the device is gone.
    pub fn service<F>(&mut self, timeout: Duration, mut drain: F) -> Result<Serviced, UioError>
    where
        F: FnMut(usize, &mut UioChannel) -> Result<(), ChannelError>,
    {
        let events = self.wait_events(timeout)?;
        let mut rounds = 0;
        loop {
            rounds += 1;
            self.mask_all()?;
            for (i, ch) in self.channels.iter_mut().enumerate() {
                let relid = ch.relid;
                drain(i, ch).map_err(|source| UioError::Channel { relid, source })?;
            }
            if !self.rearm()? {
                return Ok(Serviced {
                    events,
                    rounds,
                    more: false,
                });
            }
            if rounds >= MAX_SERVICE_ROUNDS {
                return Ok(Serviced {
                    events,
                    rounds,
                    more: true,
                });
            }
        }
    }
}

/// `read` of the event count with EIO → [`UioError::Rescinded`].
fn read_events(events: &dyn UioEvents) -> Result<Option<u32>, UioError> {
    match events.read_count() {
        Ok(c) => Ok(c),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
            Err(UioError::Rescinded)
        }
        Err(source) => Err(UioError::Io { op: "read", source }),
    }
}
