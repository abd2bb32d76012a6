//! Discovery and binding of the Azure Blob device in sysfs (`reference/vmbus.md` §4.1, §4.4,
//! §4.5).
//!
//! All paths hang off a [`Sysfs`] root (`/sys` on a real VM, a tempdir in tests):
//! `bus/vmbus/devices/<instance>/{class_id, id, monitor_id?, driver -> …, driver_override,
//! channels/<relid>/{subchannel_id, monitor_id?, ring}, uio/uioN}`,
//! `bus/vmbus/drivers/<driver>/{new_id, bind, unbind}`, and
//! `class/uio/uioN/maps/mapX/{name, size}`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{BLOB_CLASS, UioError};

/// The generic VMBus uio driver.
pub const UIO_DRIVER: &str = "uio_hv_generic";

/// How long [`bind`] waits for the uio device to appear after binding.
pub const BIND_TIMEOUT: Duration = Duration::from_secs(5);

/// Poll interval while waiting for sysfs entries to appear (DPDK: 10 ms).
const POLL: Duration = Duration::from_millis(10);

/// A sysfs tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Self::new("/sys")
    }
}

impl Sysfs {
    /// The tree rooted at `root` (`/sys` on a real system).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `bus/vmbus/devices`.
    pub fn devices_dir(&self) -> PathBuf {
        self.root.join("bus/vmbus/devices")
    }

    /// `bus/vmbus/drivers/<name>`.
    pub fn driver_dir(&self, name: &str) -> PathBuf {
        self.root.join("bus/vmbus/drivers").join(name)
    }

    /// `class/uio/<uio>`.
    pub fn uio_class_dir(&self, uio: &str) -> PathBuf {
        self.root.join("class/uio").join(uio)
    }
}

/// The Azure Blob device as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobDevice {
    /// Instance GUID (the directory name).
    pub instance: String,
    /// `bus/vmbus/devices/<instance>`.
    pub dir: PathBuf,
    /// Relid of the primary channel (`id`).
    pub relid: u32,
    /// `monitor_id`, or `None` when the file is absent (no monitor allocated, §4.4).
    pub monitor_id: Option<u32>,
    /// The bound driver's name, if any.
    pub driver: Option<String>,
    /// `uioN` when bound to `uio_hv_generic`.
    pub uio: Option<String>,
}

impl BlobDevice {
    /// Whether the device is bound to `uio_hv_generic` with a uio device.
    pub fn is_uio_bound(&self) -> bool {
        self.driver.as_deref() == Some(UIO_DRIVER) && self.uio.is_some()
    }
}

/// A uio map (`class/uio/uioN/maps/mapX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapInfo {
    /// Map index (mmap offset `index * pagesize`).
    pub index: u32,
    /// `name`.
    pub name: String,
    /// `size`, bytes.
    pub size: u64,
    /// `offset`: where the memory starts inside the first mapped page (0 if the file is
    /// absent). Non-zero for a 4 KiB page inside a larger guest page.
    pub offset: u64,
}

/// A subchannel ready to be mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubchannelInfo {
    /// Relid (the directory name).
    pub relid: u32,
    /// `subchannel_id` (≥ 1).
    pub subchannel_id: u32,
    /// The channel's `monitor_id`, if the file exists.
    pub monitor_id: Option<u32>,
    /// `channels/<relid>/ring`.
    pub ring: PathBuf,
}

fn read_trimmed(path: &Path) -> Result<Option<String>, UioError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(UioError::sysfs("read", path, e)),
    }
}

fn parse_u32(path: &Path, text: &str, what: &'static str) -> Result<u32, UioError> {
    text.parse().map_err(|_| UioError::Parse {
        path: path.to_owned(),
        value: text.to_owned(),
        what,
    })
}

fn read_opt_u32(path: &Path, what: &'static str) -> Result<Option<u32>, UioError> {
    read_trimmed(path)?
        .map(|t| parse_u32(path, &t, what))
        .transpose()
}

/// Normalises a GUID as sysfs prints it (`{…}` or bare, any case).
fn normalise_guid(s: &str) -> String {
    s.trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .to_ascii_lowercase()
}

/// The name of the driver a device directory is bound to (its `driver` symlink).
fn driver_of(dir: &Path) -> Option<String> {
    let target = std::fs::read_link(dir.join("driver")).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// The `uioN` entry of a device directory.
fn uio_of(dir: &Path) -> Result<Option<String>, UioError> {
    let uio_dir = dir.join("uio");
    let entries = match std::fs::read_dir(&uio_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(UioError::sysfs("list", uio_dir, e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_prefix("uio")
                .is_some_and(|d| d.parse::<u32>().is_ok())
        })
        .collect();
    names.sort();
    Ok(names.into_iter().next())
}

/// Reads one device directory; `None` if it is not of the Azure Blob class.
pub fn read_device(dir: &Path) -> Result<Option<BlobDevice>, UioError> {
    let Some(class) = read_trimmed(&dir.join("class_id"))? else {
        return Ok(None);
    };
    if normalise_guid(&class) != BLOB_CLASS {
        return Ok(None);
    }
    let id_path = dir.join("id");
    let relid = match read_trimmed(&id_path)? {
        Some(t) => parse_u32(&id_path, &t, "a decimal relid")?,
        None => {
            return Err(UioError::Parse {
                path: id_path,
                value: String::new(),
                what: "a decimal relid (file missing)",
            });
        }
    };
    let monitor_id = read_opt_u32(&dir.join("monitor_id"), "a decimal monitor id")?;
    let instance = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Some(BlobDevice {
        instance,
        dir: dir.to_owned(),
        relid,
        monitor_id,
        driver: driver_of(dir),
        uio: uio_of(dir)?,
    }))
}

/// Every Azure Blob device under `bus/vmbus/devices`, sorted by instance. A missing
/// `bus/vmbus` (not a Hyper-V guest) is an empty list.
pub fn find_blob_devices(sysfs: &Sysfs) -> Result<Vec<BlobDevice>, UioError> {
    let dir = sysfs.devices_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(UioError::sysfs("list", dir, e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|e| UioError::sysfs("list", &dir, e))?;
        if let Some(d) = read_device(&e.path())? {
            out.push(d);
        }
    }
    out.sort_by(|a, b| a.instance.cmp(&b.instance));
    Ok(out)
}

/// The (first) Azure Blob device, or [`UioError::NoDevice`].
pub fn find_blob_device(sysfs: &Sysfs) -> Result<BlobDevice, UioError> {
    find_blob_devices(sysfs)?
        .into_iter()
        .next()
        .ok_or_else(|| UioError::NoDevice {
            dir: sysfs.devices_dir(),
        })
}

/// Writes `value` to a sysfs attribute in one `write` (no create, no truncate).
fn write_attr(path: &Path, value: &str) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

/// Binds `dev` to `uio_hv_generic` (§4.1) and returns it re-read, with its `uio`:
///
/// 1. already bound with a uio device → nothing to do;
/// 2. the driver must be loaded (`bus/vmbus/drivers/uio_hv_generic`), else
///    [`UioError::ModuleNotLoaded`];
/// 3. `echo <class> > new_id` (an `EEXIST` means it was already added); this alone binds the
///    device if no other driver holds it;
/// 4. if another driver holds it: `echo -n <instance> > drivers/<drv>/unbind`;
/// 5. `echo -n uio_hv_generic > driver_override` (if the kernel has the file) and
///    `echo -n <instance> > drivers/uio_hv_generic/bind` unless already bound;
/// 6. wait up to `timeout` for `uio/uioN`.
///
/// Needs root (or `CAP_SYS_ADMIN`): [`UioError::PermissionDenied`] otherwise. On a kernel
/// older than 6.10, a device without a monitor id is refused up front
/// ([`UioError::UnmonitoredUnsupported`]) because the driver's probe would fail.
pub fn bind(
    sysfs: &Sysfs,
    dev: &BlobDevice,
    kernel: Option<super::KernelVersion>,
    timeout: Duration,
) -> Result<BlobDevice, UioError> {
    if dev.is_uio_bound() {
        return Ok(dev.clone());
    }
    if dev.monitor_id.is_none()
        && let Some(k) = kernel
        && !k.allows_unmonitored()
    {
        return Err(UioError::UnmonitoredUnsupported {
            instance: dev.instance.clone(),
            kernel: k,
        });
    }
    let uio_drv = sysfs.driver_dir(UIO_DRIVER);
    if !uio_drv.is_dir() {
        return Err(UioError::ModuleNotLoaded { dir: uio_drv });
    }
    let new_id = uio_drv.join("new_id");
    match write_attr(&new_id, BLOB_CLASS) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::EXIST.raw_os_error()) => {}
        Err(e) => return Err(UioError::sysfs("write", new_id, e)),
    }
    let current = driver_of(&dev.dir);
    if let Some(drv) = current.as_deref()
        && drv != UIO_DRIVER
    {
        let unbind = sysfs.driver_dir(drv).join("unbind");
        write_attr(&unbind, &dev.instance).map_err(|e| UioError::sysfs("write", unbind, e))?;
    }
    let over = dev.dir.join("driver_override");
    if over.exists() {
        write_attr(&over, UIO_DRIVER).map_err(|e| UioError::sysfs("write", over, e))?;
    }
    if driver_of(&dev.dir).as_deref() != Some(UIO_DRIVER) {
        let bind = uio_drv.join("bind");
        match write_attr(&bind, &dev.instance) {
            Ok(()) => {}
            // Bound meanwhile by the new_id probe.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {}
            Err(e) if super::is_permission(&e) => {
                return Err(UioError::PermissionDenied {
                    path: bind,
                    source: e,
                });
            }
            Err(e) => {
                return Err(UioError::BindFailed {
                    instance: dev.instance.clone(),
                    reason: format!(
                        "writing {} failed: {e} (see `dmesg` for the driver's reason)",
                        bind.display()
                    ),
                });
            }
        }
    }
    let start = Instant::now();
    loop {
        if let Some(d) = read_device(&dev.dir)?
            && d.uio.is_some()
        {
            return Ok(d);
        }
        if start.elapsed() >= timeout {
            return Err(UioError::BindFailed {
                instance: dev.instance.clone(),
                reason: format!(
                    "no uio/uioN under {} after {timeout:?} (see `dmesg`)",
                    dev.dir.display()
                ),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// The maps of uio device `uio` (`class/uio/<uio>/maps/mapX/{name,size}`), by index.
pub fn read_maps(sysfs: &Sysfs, uio: &str) -> Result<Vec<MapInfo>, UioError> {
    let dir = sysfs.uio_class_dir(uio).join("maps");
    let mut out = Vec::new();
    for index in 0.. {
        let m = dir.join(format!("map{index}"));
        if !m.is_dir() {
            break;
        }
        let name = read_trimmed(&m.join("name"))?.unwrap_or_default();
        let size_path = m.join("size");
        let text = read_trimmed(&size_path)?.unwrap_or_default();
        let size = parse_size(&text).ok_or_else(|| UioError::Parse {
            path: size_path,
            value: text.clone(),
            what: "a map size such as 0x1000",
        })?;
        let offset_path = m.join("offset");
        let offset = match read_trimmed(&offset_path)? {
            Some(text) => parse_size(&text).ok_or_else(|| UioError::Parse {
                path: offset_path,
                value: text.clone(),
                what: "a map offset such as 0x0",
            })?,
            None => 0,
        };
        out.push(MapInfo {
            index,
            name,
            size,
            offset,
        });
    }
    Ok(out)
}

/// uio prints sizes as `0x%08llx`; accept decimal too.
fn parse_size(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// One pass over `channels/`: subchannels whose `ring` exists, and relids of subchannels
/// without one yet. Skips non-numeric names and the primary (`subchannel_id == 0`).
pub fn scan_subchannels(dev: &BlobDevice) -> Result<(Vec<SubchannelInfo>, Vec<u32>), UioError> {
    let dir = dev.dir.join("channels");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(UioError::sysfs("list", dir, e)),
    };
    let mut ready = Vec::new();
    let mut pending = Vec::new();
    for e in entries {
        let e = e.map_err(|e| UioError::sysfs("list", &dir, e))?;
        let Some(relid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let path = e.path();
        // The directory appears before its attributes are populated: a missing
        // subchannel_id means "not yet", not "primary".
        let Some(sub) = read_opt_u32(&path.join("subchannel_id"), "a decimal subchannel id")?
        else {
            pending.push(relid);
            continue;
        };
        if sub == 0 || relid == dev.relid {
            continue;
        }
        let ring = path.join("ring");
        if ring.exists() {
            ready.push(SubchannelInfo {
                relid,
                subchannel_id: sub,
                monitor_id: read_opt_u32(&path.join("monitor_id"), "a decimal monitor id")?,
                ring,
            });
        } else {
            pending.push(relid);
        }
    }
    ready.sort_by_key(|s| s.subchannel_id);
    pending.sort_unstable();
    Ok((ready, pending))
}

/// Waits (polling every 10 ms, at most `timeout`) until at least `expected` subchannels have
/// a `ring` and no subchannel directory is still without one, then returns them sorted by
/// subchannel id. With `expected == 0` it returns what is there once every listed
/// subchannel has its ring. [`UioError::SubchannelTimeout`] says what was missing.
pub fn wait_subchannels(
    dev: &BlobDevice,
    expected: u32,
    timeout: Duration,
) -> Result<Vec<SubchannelInfo>, UioError> {
    let start = Instant::now();
    loop {
        let (ready, pending) = scan_subchannels(dev)?;
        if ready.len() as u64 >= u64::from(expected) && pending.is_empty() {
            return Ok(ready);
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(UioError::SubchannelTimeout {
                instance: dev.instance.clone(),
                expected: expected.max(ready.len() as u32 + pending.len() as u32),
                found: ready.len() as u32,
                waited,
                missing: pending,
            });
        }
        std::thread::sleep(POLL.min(timeout - waited));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_guids_parse() {
        assert_eq!(parse_size("0x00011000"), Some(0x11000));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("0xzz"), None);
        assert_eq!(
            normalise_guid("{0590B792-DB64-45CC-81DB-B8D70C577C9E}\n"),
            BLOB_CLASS
        );
        assert_eq!(normalise_guid(BLOB_CLASS), BLOB_CLASS);
    }
}
