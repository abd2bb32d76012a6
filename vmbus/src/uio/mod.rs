//! The `uio` transport: the real Azure Blob VMBus device, owned from userspace through
//! `uio_hv_generic` (`reference/vmbus.md` §3–4, §6–7).
//!
//! # How it fits together
//!
//! 1. **Discovery and binding** ([`sysfs`]): find the device whose `class_id` is the Azure
//!    Blob class `0590b792-db64-45cc-81db-b8d70c577c9e` under `/sys/bus/vmbus/devices`
//!    (the root is a parameter, so tests use a fake tree), read its primary relid (`id`), its
//!    `monitor_id` (absent = not monitored, §4.4) and its `uio/uioN`; [`sysfs::bind`] binds
//!    it to `uio_hv_generic` (`new_id`, unbind from the current driver, `driver_override`,
//!    `bind`, §4.1).
//! 2. **Opening** ([`UioDevice::open`]): open `/dev/uioN` and keep it open (the first open
//!    connects the primary channel, the last close disconnects it, §4.3); read map names and
//!    sizes from `/sys/class/uio/uioN/maps/mapX/{name,size}`; map `txrx_rings` (TX ring then
//!    RX ring), `int_page` and `monitor_page` at offsets `i * pagesize` (§4.2); map each
//!    subchannel's `channels/<relid>/ring` (full size, TX first), waiting a bounded time for
//!    subchannels to appear (§4.5). Every open goes through a [`DeviceOpener`], so tests hand
//!    in memfds and a fake event fd instead of the device.
//! 3. **Signalling** ([`SignalPath`], §3.2): a monitored channel sets its bit in the monitor
//!    page's trigger group; any other sets its relid bit in the send half of the interrupt
//!    page and writes `1` to the uio fd (which makes the kernel issue the hypercall). Both
//!    pages are VM-global, so a wrong bit would signal someone else's channel: the offsets are
//!    computed in one place and range-checked.
//! 4. **Interrupts** (§3.3): all channels of the device share the one uio fd. `read()` of 4
//!    bytes returns the event count (EIO once the device is rescinded);
//!    [`UioDevice::service`] runs the loop "drain all rings, re-arm, re-check, read". Who
//!    owns `interrupt_mask` depends on the driver ([`InterruptMode`]): before "Let userspace
//!    take care of interrupt mask" (b15b7d2a1b09) the kernel masks the RX ring on open and on
//!    each interrupt and `write(1)` re-arms; since then the kernel leaves the mask to us and a
//!    `write(1)` would only cost a hypercall. The change was backported to stable lines, so
//!    [`UioDevice::open`] decides by watching what the driver does on open ([`MaskProbe`]) and
//!    logs the evidence.
//! 5. **Page size**: a ring's header is one guest `PAGE_SIZE` (Linux pads `struct
//!    hv_ring_buffer` to it), so on a 64 KiB-page kernel the data area starts at 64 KiB;
//!    [`UioOptions::page_size`] (the running kernel's by default) lays the rings out, places
//!    the maps, and honours each map's sysfs `offset`.
//! 6. **Limits** ([`max_request_pages`], §4.6, §7.1): the ring size depends on the kernel —
//!    0x11000-byte rings (64 KiB of data, at most 8179 pages per request) where
//!    `hv_uio_probe` takes `hv_dev_ring_size()` as is, 0x12000 (8192, the protocol's cap)
//!    where it rounds it with `VMBUS_RING_SIZE()`, 2 MiB on older kernels — so the limit is
//!    computed from the mapped ring, never assumed.
//! 7. **Replies**: the host's answer is read as the `hv_azure_blob` driver reads it, from a
//!    packet of any type ([`crate::packet::Reply`], [`crate::blob::parse_blob_reply`]).
//!
//! Which source each rule comes from: `vmbus/SOURCES.md`.
//!
//! Guest-physical addresses for GPA-direct packets come from [`crate::guest_phys`]
//! ([`PagemapPfns`](crate::guest_phys::PagemapPfns) on this transport).
//!
//! **Trusts:** the kernel's sysfs (values are still parsed strictly) and the host for
//! liveness; ring indices and packets are validated by [`crate::ring`] as on `sim`.
//!
//! **Not verified on real Hyper-V.** Everything here is tested against a fake sysfs tree and
//! memfds (the `fake` module, a test fixture behind the `test-support` feature, used by
//! `vmbus/tests/uio_fixture.rs` and the daemon's tests); whether the Azure host offers the
//! blob device to a given VM, allocates it a monitor id, or offers subchannels is unconfirmed
//! (§6.6).

pub mod detect;
mod device;
#[cfg(feature = "test-support")]
pub mod fake;
pub mod signal;
pub mod sysfs;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use detect::{Detection, Transport, TransportChoice, detect, detect_with, select};
pub use device::{
    DeviceOpener, RingMem, Serviced, SystemOpener, UioChannel, UioDevice, UioEvents, UioFile,
    UioOptions,
};
pub use signal::{InterruptMode, KernelVersion, MaskProbe, SignalPath, max_request_pages};
pub use sysfs::{BlobDevice, MapInfo, Sysfs, UIO_DRIVER};

/// The class GUID as sysfs prints it (without braces, lower case).
pub const BLOB_CLASS: &str = blobring_abi::vmbus::AZ_BLOB_CLASS_GUID_STR;

/// Why the uio transport cannot be used; every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum UioError {
    /// No device of the Azure Blob class.
    #[error(
        "no Azure Blob device (class {BLOB_CLASS}) under {}: this VM does not offer \
         host-accelerated Blob access (use --transport sim for the emulated host)",
        dir.display()
    )]
    NoDevice {
        /// The devices directory searched.
        dir: PathBuf,
    },
    /// `uio_hv_generic` is not loaded.
    #[error("the uio_hv_generic driver is not loaded ({} is missing): run `modprobe uio_hv_generic`", dir.display())]
    ModuleNotLoaded {
        /// The driver directory expected.
        dir: PathBuf,
    },
    /// A sysfs or device write/open was refused.
    #[error(
        "permission denied on {}: owning a VMBus device needs root or CAP_SYS_ADMIN \
         (run blobringd as root, or with AmbientCapabilities=CAP_SYS_ADMIN in its unit)",
        path.display()
    )]
    PermissionDenied {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The device is not bound to `uio_hv_generic`.
    #[error(
        "Azure Blob device {instance} is not bound to uio_hv_generic (driver: {driver}); bind \
         it (blobringd binds it when asked, or: echo {BLOB_CLASS} > \
         /sys/bus/vmbus/drivers/uio_hv_generic/new_id)"
    )]
    NotBound {
        /// Instance GUID.
        instance: String,
        /// The current driver, or "none".
        driver: String,
    },
    /// Binding did not produce a uio device.
    #[error("binding Azure Blob device {instance} to uio_hv_generic failed: {reason}")]
    BindFailed {
        /// Instance GUID.
        instance: String,
        /// What happened.
        reason: String,
    },
    /// The kernel's uio_hv_generic refuses devices without a monitor id.
    #[error(
        "Azure Blob device {instance} has no monitor id and kernel {kernel} refuses such \
         devices in uio_hv_generic (\"vmbus channel requires hypercall\"); use a 6.10 or newer \
         kernel"
    )]
    UnmonitoredUnsupported {
        /// Instance GUID.
        instance: String,
        /// The running kernel.
        kernel: KernelVersion,
    },
    /// Reading or writing a sysfs file failed.
    #[error("{op} {} failed: {source}", path.display())]
    Sysfs {
        /// What we did.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A sysfs file holds something unexpected.
    #[error("unexpected content in {}: {value:?} ({what})", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it held.
        value: String,
        /// What was expected.
        what: &'static str,
    },
    /// A uio map is missing or not what §4.2 describes.
    #[error("uio map {index} of {uio}: {problem}")]
    BadMap {
        /// The uio device.
        uio: String,
        /// Map index.
        index: u32,
        /// What is wrong.
        problem: String,
    },
    /// Opening a device file failed.
    #[error("opening {what} failed: {source}")]
    Open {
        /// What.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Mapping device memory failed.
    #[error("mapping {what} failed: {source}")]
    Map {
        /// What.
        what: String,
        /// The error.
        #[source]
        source: blobring_shm::RegionError,
    },
    /// A channel's rings are not usable.
    #[error("channel {relid}: bad rings: {source}")]
    Ring {
        /// Relid.
        relid: u32,
        /// The error.
        #[source]
        source: crate::ring::RingError,
    },
    /// The guest page size is outside what the rings can use.
    #[error(
        "guest page size {page_size} is not supported by the uio transport: a VMBus ring's \
         header is one guest page, expected a power of two from 4096 to 65536 bytes"
    )]
    UnsupportedPageSize {
        /// The page size.
        page_size: u64,
    },
    /// A ring mapping is not a whole number of guest pages per ring.
    #[error(
        "{what} is {size} bytes, not two rings of whole {page_size}-byte guest pages: the page \
         size used to open the device does not match the kernel's (rings are laid out in \
         PAGE_SIZE units); open it with the running kernel's page size"
    )]
    PageSizeMismatch {
        /// Which mapping.
        what: String,
        /// Its size.
        size: u64,
        /// The page size assumed.
        page_size: u64,
    },
    /// Subchannels did not appear in time.
    #[error(
        "device {instance}: expected {expected} subchannel(s) with a ring file, found {found} \
         after {waited:?} (still without `ring`: {missing:?}); the host did not offer them or \
         uio_hv_generic did not open them — retry, or start with fewer channels"
    )]
    SubchannelTimeout {
        /// Instance GUID.
        instance: String,
        /// Subchannels wanted.
        expected: u32,
        /// Subchannels ready.
        found: u32,
        /// Time waited.
        waited: Duration,
        /// Channel directories seen without a ring file.
        missing: Vec<u32>,
    },
    /// A relid or monitor id outside the interrupt or monitor page.
    #[error("{what} {value} is outside the {page} page; the sysfs values are inconsistent")]
    SignalOutOfRange {
        /// "relid" or "monitor id".
        what: &'static str,
        /// The value.
        value: u32,
        /// Which page.
        page: &'static str,
    },
    /// The device was rescinded (uio `read` returned EIO).
    #[error(
        "the host rescinded the Azure Blob device (uio read returned EIO): fail in-flight \
         requests and wait for the device to be offered again"
    )]
    Rescinded,
    /// Reading or writing the uio fd failed.
    #[error("uio {op} failed: {source}")]
    Io {
        /// What.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A channel operation failed while servicing an interrupt.
    #[error("channel {relid}: {source}")]
    Channel {
        /// Relid.
        relid: u32,
        /// The error.
        #[source]
        source: crate::channel::ChannelError,
    },
}

impl UioError {
    /// A sysfs I/O error, turned into [`UioError::PermissionDenied`] when it is one.
    pub(crate) fn sysfs(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if is_permission(&source) {
            Self::PermissionDenied { path, source }
        } else {
            Self::Sysfs { op, path, source }
        }
    }

    /// An open error, turned into [`UioError::PermissionDenied`] when it is one.
    pub(crate) fn open(what: impl Into<String>, path: Option<PathBuf>, source: io::Error) -> Self {
        match path {
            Some(path) if is_permission(&source) => Self::PermissionDenied { path, source },
            _ => Self::Open {
                what: what.into(),
                source,
            },
        }
    }

    /// True if the host rescinded the device.
    pub fn is_rescind(&self) -> bool {
        matches!(self, Self::Rescinded)
    }
}

/// EACCES and EPERM (std maps both to `PermissionDenied`): "not privileged enough" for
/// sysfs and /dev/uioN.
pub(crate) fn is_permission(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::PermissionDenied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_errors_name_the_fix() {
        for e in [
            io::Error::from_raw_os_error(13),
            io::Error::from_raw_os_error(1),
        ] {
            let err = UioError::sysfs("write", "/sys/bus/vmbus/drivers/uio_hv_generic/new_id", e);
            assert!(matches!(err, UioError::PermissionDenied { .. }));
            assert!(
                err.to_string().contains("needs root or CAP_SYS_ADMIN"),
                "{err}"
            );
        }
        let err = UioError::sysfs("read", "/x", io::Error::from_raw_os_error(2));
        assert!(matches!(err, UioError::Sysfs { .. }));
        let err = UioError::open(
            "/dev/uio0",
            Some("/dev/uio0".into()),
            io::Error::from_raw_os_error(13),
        );
        assert!(matches!(err, UioError::PermissionDenied { .. }));
    }
}
