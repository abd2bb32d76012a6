//! Signalling decisions and kernel-dependent behaviour of `uio_hv_generic`
//! (`reference/vmbus.md` §3.2–3.4, §4.6, §7).

use std::fmt;
use std::path::Path;
use std::sync::atomic::Ordering;

use blobring_abi::vmbus::AZ_BLOB_MAX_PAGES;
use blobring_shm::SharedMemory;

use super::UioError;

/// Offset of `trigger_group[0].pending` in the monitor page (§3.4).
pub const MONITOR_TRIGGER_GROUP: u64 = 8;
/// Trigger groups in the monitor page.
pub const MONITOR_GROUPS: u32 = 4;
/// Offset of the send (guest → host) half of the interrupt page (§3.4).
pub const INT_PAGE_SEND: u64 = 2048;
/// Bytes of each half of the interrupt page.
const INT_PAGE_HALF: u32 = 2048;

/// An array of u32 flag words in a page: flag `n` is bit `n % 32` of word `n / 32`.
struct FlagArray {
    /// Byte offset of word 0.
    base: u64,
    /// Bytes from one word to the next.
    stride: u64,
    /// Words in the array.
    words: u32,
    /// What the flag number is, and which page (for the error).
    what: &'static str,
    page: &'static str,
}

impl FlagArray {
    /// `trigger_group[i].pending` of the monitor page, indexed by monitor id.
    const MONITOR: Self = Self {
        base: MONITOR_TRIGGER_GROUP,
        stride: 8,
        words: MONITOR_GROUPS,
        what: "monitor id",
        page: "monitor",
    };
    /// The send half of the interrupt page, indexed by relid.
    const INTERRUPT: Self = Self {
        base: INT_PAGE_SEND,
        stride: 4,
        words: INT_PAGE_HALF / 4,
        what: "relid",
        page: "interrupt",
    };
}

/// Byte offset of the word holding flag `n` of `array`, and its bit mask.
fn flag_bit(n: u32, array: FlagArray) -> Result<(u64, u32), UioError> {
    if n / 32 >= array.words {
        return Err(UioError::SignalOutOfRange {
            what: array.what,
            value: n,
            page: array.page,
        });
    }
    Ok((array.base + array.stride * u64::from(n / 32), 1 << (n % 32)))
}

/// How one channel tells the host "look at my TX ring" (§3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalPath {
    /// Monitored channel: atomic OR of `bit` into the u32 at `offset` of the monitor page
    /// (`trigger_group[monitor_id / 32].pending`). The hypervisor scans the page; no
    /// system call.
    Monitor {
        /// Byte offset in the monitor page.
        offset: u64,
        /// Bit mask (`1 << monitor_id % 32`).
        bit: u32,
    },
    /// Unmonitored channel: atomic OR of `bit` into the u32 at `offset` of the interrupt
    /// page (word `relid / 32` of its send half), then `write(uio_fd, 1)` so the kernel
    /// issues the signal hypercall.
    Interrupt {
        /// Byte offset in the interrupt page.
        offset: u64,
        /// Bit mask (`1 << relid % 32`).
        bit: u32,
    },
}

impl SignalPath {
    /// The path for channel `relid` with `monitor_id` (None when sysfs has no `monitor_id`).
    pub fn for_channel(relid: u32, monitor_id: Option<u32>) -> Result<Self, UioError> {
        Ok(match monitor_id {
            Some(id) => {
                let (offset, bit) = flag_bit(id, FlagArray::MONITOR)?;
                Self::Monitor { offset, bit }
            }
            None => {
                let (offset, bit) = flag_bit(relid, FlagArray::INTERRUPT)?;
                Self::Interrupt { offset, bit }
            }
        })
    }

    /// Sets the bit in the right page. Returns `true` if the caller must also `write(1)` to
    /// the uio fd (unmonitored channels).
    pub fn raise(
        &self,
        int_page: &dyn SharedMemory,
        monitor_page: &dyn SharedMemory,
    ) -> Result<bool, blobring_shm::AccessError> {
        // SeqCst: the ring's write_index store (fenced in commit_write) must be visible to the
        // hypervisor before it sees the bit and scans the ring.
        match *self {
            Self::Monitor { offset, bit } => {
                monitor_page.fetch_or_u32(offset, bit, Ordering::SeqCst)?;
                Ok(false)
            }
            Self::Interrupt { offset, bit } => {
                int_page.fetch_or_u32(offset, bit, Ordering::SeqCst)?;
                Ok(true)
            }
        }
    }
}

/// A Linux kernel release, as `/proc/sys/kernel/osrelease` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch (0 if absent).
    pub patch: u32,
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl KernelVersion {
    /// A version.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Parses a release string such as `6.8.0-1017-azure` or `5.15.0`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let mut it = s[..end].split('.').filter(|p| !p.is_empty());
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        let patch = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(Self::new(major, minor, patch))
    }

    /// Reads and parses an `osrelease` file.
    pub fn read(path: &Path) -> Result<Self, UioError> {
        let text = std::fs::read_to_string(path).map_err(|e| UioError::sysfs("read", path, e))?;
        Self::parse(&text).ok_or_else(|| UioError::Parse {
            path: path.to_owned(),
            value: text.trim().to_owned(),
            what: "a kernel release like 6.8.0-1017-azure",
        })
    }

    /// The running kernel (`/proc/sys/kernel/osrelease`).
    pub fn running() -> Result<Self, UioError> {
        Self::read(Path::new("/proc/sys/kernel/osrelease"))
    }

    /// Whether `uio_hv_generic` accepts devices without a monitor id (e566ed5b/547fa4ffd799,
    /// ≈6.10; before, probe fails with "vmbus channel requires hypercall", §4.6).
    pub fn allows_unmonitored(self) -> bool {
        self >= Self::new(6, 10, 0)
    }
}

/// Who owns the RX `interrupt_mask` under `uio_hv_generic` (§3.3). It decides whether
/// re-arming needs a `write(1)`. Not a function of the kernel version: the change
/// (b15b7d2a1b09 "uio_hv_generic: Let userspace take care of interrupt mask", tagged for
/// stable) is in some 5.4–6.6 and 6.12 stable releases and not in others. The transport
/// detects it from the driver's behaviour when it opens the device ([`MaskProbe`]); a caller
/// may still force it ([`super::UioOptions::interrupt_mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptMode {
    /// The driver before b15b7d2a1b09: it sets the primary RX `interrupt_mask` when the device
    /// is opened and a channel's RX mask on every host interrupt, then notifies once;
    /// userspace clears the masks and re-arms with `write(uio_fd, 1)`.
    KernelMasks,
    /// The driver since b15b7d2a1b09: it leaves `interrupt_mask` alone (only `write(fd, v)`
    /// sets it to `!v`); userspace masks while draining and unmasks (with a re-check) before
    /// sleeping, without a system call. No `write(1)` to re-arm: for an unmonitored channel it
    /// is also a signal hypercall to the host.
    UserspaceMasks,
}

/// What decided the [`InterruptMode`] of an opened device; its `Display` is the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskProbe {
    /// The caller forced the mode.
    Forced,
    /// The primary RX `interrupt_mask` was clear right after the first open: the driver does
    /// not mask on open.
    ClearAfterOpen,
    /// The mask was set after the first open, and set again after we cleared it, closed and
    /// reopened the device: the driver masks on open (and on interrupt).
    SetByOpen,
    /// The mask was set after the first open but stayed clear after we cleared it and
    /// reopened: an earlier user left it set; the driver does not mask.
    StaleMask,
}

impl fmt::Display for MaskProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Forced => "forced by the caller",
            Self::ClearAfterOpen => {
                "the primary RX interrupt_mask was clear after opening the device: \
                 uio_hv_generic leaves the mask to userspace (b15b7d2a1b09 or a backport)"
            }
            Self::SetByOpen => {
                "uio_hv_generic set the primary RX interrupt_mask on open, again after a \
                 clear-close-reopen: the kernel masks on interrupt (driver before b15b7d2a1b09); \
                 re-arming writes 1 to the uio fd"
            }
            Self::StaleMask => {
                "the primary RX interrupt_mask was left set by an earlier user and stayed clear \
                 across a close and reopen: uio_hv_generic leaves the mask to userspace \
                 (b15b7d2a1b09 or a backport)"
            }
        })
    }
}

impl InterruptMode {
    /// Whether re-arming after a wakeup needs `write(uio_fd, 1)`.
    pub fn rearm_needs_write(self) -> bool {
        matches!(self, Self::KernelMasks)
    }
}

/// Fixed bytes of a blob request on the ring, besides 8 per page: the descriptor, GPA header,
/// one range header, the 56-byte request and the trailer (§6.2: `96 + 8N`).
const BLOB_PACKET_FIXED: u32 = 96;

/// The largest number of pages (data + request + response together) one blob request may
/// carry on a ring whose data area has `data_size` bytes: the packet takes `96 + 8N` bytes and
/// must stay below `data_size` (never-full rule, §1.3, §7.1), and the protocol allows at most
/// [`AZ_BLOB_MAX_PAGES`]. 0 if not even a one-page request fits.
///
/// The data area depends on the kernel, so this is computed from the mapped ring, never
/// assumed (vmbus/SOURCES.md): for a class it does not know (the blob class), the driver asks
/// for `hv_dev_ring_size()` = 0x11000 bytes per ring. Kernels whose `hv_uio_probe` passes it
/// through use 0x11000-byte rings (64 KiB of data: **8179** pages); kernels that round it with
/// `VMBUS_RING_SIZE()` (adding a header page) use 0x12000-byte rings (68 KiB of data: the
/// protocol cap, **8192**); a 64 KiB-page kernel rounds up further; older kernels use 2 MiB.
pub fn max_request_pages(data_size: u32) -> u32 {
    let Some(room) = data_size.checked_sub(BLOB_PACKET_FIXED + 1) else {
        return 0;
    };
    (room / 8).min(AZ_BLOB_MAX_PAGES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use blobring_shm::HeapMemory;

    #[test]
    fn monitor_and_interrupt_offsets() {
        assert_eq!(
            SignalPath::for_channel(14, Some(0)).unwrap(),
            SignalPath::Monitor { offset: 8, bit: 1 }
        );
        assert_eq!(
            SignalPath::for_channel(14, Some(37)).unwrap(),
            SignalPath::Monitor {
                offset: 16,
                bit: 1 << 5
            }
        );
        assert_eq!(
            SignalPath::for_channel(14, Some(127)).unwrap(),
            SignalPath::Monitor {
                offset: 32,
                bit: 1 << 31
            }
        );
        assert!(SignalPath::for_channel(14, Some(128)).is_err());
        assert_eq!(
            SignalPath::for_channel(14, None).unwrap(),
            SignalPath::Interrupt {
                offset: 2048,
                bit: 1 << 14
            }
        );
        assert_eq!(
            SignalPath::for_channel(70, None).unwrap(),
            SignalPath::Interrupt {
                offset: 2048 + 8,
                bit: 1 << 6
            }
        );
        assert!(SignalPath::for_channel(16383, None).is_ok());
        assert!(SignalPath::for_channel(16384, None).is_err());
    }

    #[test]
    fn raise_sets_one_bit_in_the_right_page() {
        let int = HeapMemory::new(4096);
        let mon = HeapMemory::new(4096);
        mon.store_u32(16, 1, Ordering::Relaxed).unwrap();
        let p = SignalPath::for_channel(3, Some(33)).unwrap();
        assert!(!p.raise(&int, &mon).unwrap());
        assert_eq!(mon.load_u32(16, Ordering::Relaxed).unwrap(), 0b11);
        let p = SignalPath::for_channel(33, None).unwrap();
        assert!(p.raise(&int, &mon).unwrap());
        assert_eq!(int.load_u32(2052, Ordering::Relaxed).unwrap(), 0b10);
        let mut all = vec![0u8; 4096];
        int.read(0, &mut all).unwrap();
        assert_eq!(all.iter().map(|b| b.count_ones()).sum::<u32>(), 1);
    }

    #[test]
    fn kernel_versions_and_modes() {
        let v = KernelVersion::parse("6.8.0-1017-azure\n").unwrap();
        assert_eq!(v, KernelVersion::new(6, 8, 0));
        assert_eq!(
            KernelVersion::parse("6.12-rc3").unwrap(),
            KernelVersion::new(6, 12, 0)
        );
        assert_eq!(
            KernelVersion::parse("5.15.167.4-microsoft-standard-WSL2").unwrap(),
            KernelVersion::new(5, 15, 167)
        );
        assert_eq!(KernelVersion::parse("garbage"), None);
        assert_eq!(KernelVersion::parse("6"), None);
        assert!(InterruptMode::KernelMasks.rearm_needs_write());
        assert!(!InterruptMode::UserspaceMasks.rearm_needs_write());
        assert!(!v.allows_unmonitored());
        assert!(KernelVersion::new(6, 10, 0).allows_unmonitored());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("osrelease");
        std::fs::write(&p, "6.13.2-arch1\n").unwrap();
        assert_eq!(
            KernelVersion::read(&p).unwrap(),
            KernelVersion::new(6, 13, 2)
        );
        std::fs::write(&p, "x").unwrap();
        assert!(matches!(
            KernelVersion::read(&p),
            Err(UioError::Parse { .. })
        ));
        KernelVersion::running().unwrap();
    }

    #[test]
    fn max_request_pages_for_ring_sizes() {
        // Unknown class, ring 0x11000 → 64 KiB data; rounded by VMBUS_RING_SIZE to 0x12000 →
        // 68 KiB data, where the protocol's cap is reached.
        assert_eq!(max_request_pages(0x11000 - 4096), 8179);
        assert_eq!(max_request_pages(0x12000 - 4096), 8192);
        // The 128 KiB rings of the Linux blob driver, and 2 MiB rings: the protocol cap.
        assert_eq!(max_request_pages((128 << 10) - 4096), 8192);
        assert_eq!(max_request_pages((2 << 20) - 4096), 8192);
        // Small rings.
        assert_eq!(max_request_pages(4096), (4096 - 97) / 8);
        assert_eq!(max_request_pages(104), 0);
        assert_eq!(max_request_pages(105), 1);
        assert_eq!(max_request_pages(0), 0);
        // The bound is exact: 96 + 8N < data size.
        for d in [4096u32, 8192, 65536, 65536 + 8] {
            let n = max_request_pages(d);
            assert!(96 + 8 * n < d && 96 + 8 * (n + 1) >= d, "{d}");
        }
    }
}
