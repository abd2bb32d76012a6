//! Choosing the transport: `--transport uio|sim|auto`.
//!
//! `auto` picks `uio` when an Azure Blob device exists under sysfs and is bound to
//! `uio_hv_generic` or can be bound (driver loaded, its sysfs files writable, kernel accepts
//! the device), and `sim` otherwise; [`Detection::reason`] says why, for the daemon's log.

use std::path::Path;
use std::str::FromStr;

use super::UioError;
use super::signal::KernelVersion;
use super::sysfs::{self, BlobDevice, Sysfs, UIO_DRIVER};

/// A transport the daemon can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Real Hyper-V through `uio_hv_generic`.
    Uio,
    /// The emulated host (`blobring-host`) over its unix socket.
    Sim,
}

/// The `--transport` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportChoice {
    /// Detect ([`detect`]).
    #[default]
    Auto,
    /// Require `uio`.
    Uio,
    /// Require `sim`.
    Sim,
}

impl FromStr for TransportChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "uio" => Ok(Self::Uio),
            "sim" => Ok(Self::Sim),
            other => Err(format!(
                "unknown transport {other:?}: expected uio, sim or auto"
            )),
        }
    }
}

/// What detection found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// The transport to use.
    pub transport: Transport,
    /// The Azure Blob device, if one exists.
    pub device: Option<BlobDevice>,
    /// `uio` was chosen but the device still has to be bound ([`sysfs::bind`]).
    pub needs_bind: bool,
    /// Why, in one sentence (for the log, and the error when `uio` was required).
    pub reason: String,
}

/// [`detect_with`] on the sysfs tree at `sysfs_root` (`/sys`), for the running kernel
/// (`/proc/sys/kernel/osrelease`; unknown → assumed recent).
pub fn detect(sysfs_root: &Path) -> Detection {
    detect_with(&Sysfs::new(sysfs_root), KernelVersion::running().ok())
}

/// Decides between `uio` and `sim` without changing anything.
pub fn detect_with(sysfs: &Sysfs, kernel: Option<KernelVersion>) -> Detection {
    let sim = |device: Option<BlobDevice>, reason: String| Detection {
        transport: Transport::Sim,
        device,
        needs_bind: false,
        reason,
    };
    let dev = match sysfs::find_blob_device(sysfs) {
        Ok(d) => d,
        Err(e) => return sim(None, e.to_string()),
    };
    if dev.is_uio_bound() {
        let uio = dev.uio.clone().unwrap_or_default();
        return Detection {
            transport: Transport::Uio,
            reason: format!(
                "Azure Blob device {} is bound to {UIO_DRIVER} as {uio}",
                dev.instance
            ),
            device: Some(dev),
            needs_bind: false,
        };
    }
    if dev.monitor_id.is_none()
        && let Some(k) = kernel
        && !k.allows_unmonitored()
    {
        let e = UioError::UnmonitoredUnsupported {
            instance: dev.instance.clone(),
            kernel: k,
        };
        return sim(Some(dev), e.to_string());
    }
    let drv = sysfs.driver_dir(UIO_DRIVER);
    if !drv.is_dir() {
        let e = UioError::ModuleNotLoaded { dir: drv };
        return sim(Some(dev), e.to_string());
    }
    for f in ["new_id", "bind"] {
        let p = drv.join(f);
        if let Err(e) = rustix::fs::access(&p, rustix::fs::Access::WRITE_OK) {
            let e = UioError::sysfs("write", p, e.into());
            return sim(Some(dev), e.to_string());
        }
    }
    Detection {
        transport: Transport::Uio,
        reason: format!(
            "Azure Blob device {} can be bound to {UIO_DRIVER} (currently: {})",
            dev.instance,
            dev.driver.as_deref().unwrap_or("no driver")
        ),
        device: Some(dev),
        needs_bind: true,
    }
}

/// Applies the `--transport` flag: `sim` always works; `uio` must be possible
/// (else the reason is the error); `auto` is [`detect_with`].
pub fn select(
    choice: TransportChoice,
    sysfs: &Sysfs,
    kernel: Option<KernelVersion>,
) -> Result<Detection, UioError> {
    match choice {
        TransportChoice::Sim => Ok(Detection {
            transport: Transport::Sim,
            device: None,
            needs_bind: false,
            reason: "--transport sim".into(),
        }),
        TransportChoice::Auto => Ok(detect_with(sysfs, kernel)),
        TransportChoice::Uio => {
            let d = detect_with(sysfs, kernel);
            if d.transport == Transport::Uio {
                return Ok(d);
            }
            // Re-derive the precise error for the caller to print.
            let dev = sysfs::find_blob_device(sysfs)?;
            if dev.monitor_id.is_none()
                && let Some(k) = kernel
                && !k.allows_unmonitored()
            {
                return Err(UioError::UnmonitoredUnsupported {
                    instance: dev.instance,
                    kernel: k,
                });
            }
            let drv = sysfs.driver_dir(UIO_DRIVER);
            if !drv.is_dir() {
                return Err(UioError::ModuleNotLoaded { dir: drv });
            }
            Err(UioError::BindFailed {
                instance: dev.instance,
                reason: d.reason,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_flag_parses() {
        assert_eq!("uio".parse::<TransportChoice>(), Ok(TransportChoice::Uio));
        assert_eq!("sim".parse::<TransportChoice>(), Ok(TransportChoice::Sim));
        assert_eq!("auto".parse::<TransportChoice>(), Ok(TransportChoice::Auto));
        assert!(
            "hv".parse::<TransportChoice>()
                .unwrap_err()
                .contains("uio, sim or auto")
        );
    }
}
