//! Guest-physical frame numbers of our own memory, for the real Hyper-V (`uio`) transport: the
//! host needs the physical frame numbers of our (hugepage-backed) regions, read from
//! `/proc/self/pagemap` ([`Pagemap`]). The emulated host's table of registered guest memory
//! lives in `blobring_vmbus::guest_memory`.
//!
//! Guest PFNs are in Hyper-V pages of [`GUEST_PAGE_SIZE`] bytes whatever backs the region.

use std::io::{Read, Seek, SeekFrom};

use crate::region::Mapping;

/// The guest page size PFNs count in (Hyper-V's `HV_PAGE_SIZE`).
pub const GUEST_PAGE_SIZE: u64 = blobring_abi::vmbus::HV_PAGE_SIZE;

/// One 64-bit `/proc/<pid>/pagemap` entry (see the kernel's `admin-guide/mm/pagemap.rst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagemapEntry(pub u64);

impl PagemapEntry {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    const PFN_MASK: u64 = (1 << 55) - 1;

    /// Bit 63: the page is in RAM.
    pub fn present(self) -> bool {
        self.0 & Self::PRESENT != 0
    }

    /// Bit 62: the page is swapped out.
    pub fn swapped(self) -> bool {
        self.0 & Self::SWAPPED != 0
    }

    /// Bits 0–54 when present: the physical frame number (0 for callers without
    /// `CAP_SYS_ADMIN`, which the kernel hides it from).
    pub fn pfn(self) -> Option<u64> {
        self.present().then_some(self.0 & Self::PFN_MASK)
    }
}

/// Why a pagemap look-up failed.
#[derive(Debug, thiserror::Error)]
pub enum PagemapError {
    /// Reading the pagemap failed (or it was short).
    #[error("reading pagemap failed: {0}")]
    Io(#[from] std::io::Error),
    /// A page of the range is not in RAM; pre-fault (and lock) the region first.
    #[error("page at virtual address {vaddr:#x} is not present in RAM; pre-fault the region")]
    NotPresent {
        /// The page's virtual address.
        vaddr: u64,
    },
    /// The kernel reported PFN 0: it hides PFNs from processes without `CAP_SYS_ADMIN`.
    #[error("pagemap hides physical frame numbers; run with CAP_SYS_ADMIN")]
    PfnHidden,
    /// The virtual range overflows.
    #[error("virtual range at {vaddr:#x} of {len} bytes overflows")]
    Overflow {
        /// Start.
        vaddr: u64,
        /// Length.
        len: u64,
    },
}

/// A reader of pagemap-format bytes (8 little-endian bytes per virtual page) from any
/// seekable source: `/proc/self/pagemap`, or a fake file in tests.
#[derive(Debug)]
pub struct Pagemap<R> {
    src: R,
    page_size: u64,
}

impl Pagemap<std::fs::File> {
    /// Opens this process's pagemap, with the system page size.
    pub fn open_self() -> std::io::Result<Self> {
        let file = std::fs::File::open("/proc/self/pagemap")?;
        Ok(Self::new(file, rustix::param::page_size() as u64))
    }
}

impl<R: Read + Seek> Pagemap<R> {
    /// Reads pagemap entries from `src`, one per virtual page of `page_size` bytes (a power
    /// of two).
    pub fn new(src: R, page_size: u64) -> Self {
        assert!(
            page_size.is_power_of_two(),
            "page size {page_size} is not a power of two"
        );
        Self { src, page_size }
    }

    /// The virtual page size entries are indexed by.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The entry of the page holding virtual address `vaddr`.
    pub fn entry(&mut self, vaddr: u64) -> Result<PagemapEntry, PagemapError> {
        let mut buf = [0u8; 8];
        self.src.seek(SeekFrom::Start(vaddr / self.page_size * 8))?;
        self.src.read_exact(&mut buf)?;
        Ok(PagemapEntry(u64::from_le_bytes(buf)))
    }

    /// The physical frame numbers (in units of the page size) of every page overlapping
    /// `[vaddr, vaddr + len)`, in order. Every page must be present with a visible PFN.
    pub fn frames(&mut self, vaddr: u64, len: u64) -> Result<Vec<u64>, PagemapError> {
        let overflow = PagemapError::Overflow { vaddr, len };
        let end = vaddr.checked_add(len).ok_or(overflow)?;
        let first = vaddr / self.page_size;
        let count = end.div_ceil(self.page_size) - first;
        let mut bytes = vec![
            0u8;
            usize::try_from(count * 8)
                .map_err(|_| PagemapError::Overflow { vaddr, len })?
        ];
        self.src.seek(SeekFrom::Start(first * 8))?;
        self.src.read_exact(&mut bytes)?;
        bytes
            .chunks_exact(8)
            .enumerate()
            .map(|(i, b)| {
                let entry = PagemapEntry(u64::from_le_bytes(b.try_into().expect("8 bytes")));
                match entry.pfn() {
                    None => Err(PagemapError::NotPresent {
                        vaddr: (first + i as u64) * self.page_size,
                    }),
                    Some(0) => Err(PagemapError::PfnHidden),
                    Some(pfn) => Ok(pfn),
                }
            })
            .collect()
    }

    /// The physical frame numbers of every page of `mapping`.
    pub fn mapping_frames(&mut self, mapping: &Mapping) -> Result<Vec<u64>, PagemapError> {
        let (ptr, len) = mapping.as_raw_parts();
        self.frames(ptr as u64, len as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Region;
    use std::io::Cursor;

    fn fake_pagemap(entries: &[u64]) -> Pagemap<Cursor<Vec<u8>>> {
        let bytes = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        Pagemap::new(Cursor::new(bytes), 4096)
    }

    #[test]
    fn pagemap_entry_bits() {
        let e = PagemapEntry((1 << 63) | (1 << 55) | 0x1234);
        assert!(e.present() && !e.swapped());
        assert_eq!(e.pfn(), Some(0x1234));
        let all = PagemapEntry(u64::MAX);
        assert_eq!(all.pfn(), Some((1 << 55) - 1));
        let swapped = PagemapEntry((1 << 62) | 77);
        assert!(swapped.swapped() && !swapped.present());
        assert_eq!(swapped.pfn(), None);
    }

    #[test]
    fn pagemap_frames_from_fake_file() {
        let present = 1u64 << 63;
        let mut pm = fake_pagemap(&[0, present | 10, present | 11, present | 99, 0, present]);
        assert_eq!(pm.frames(4096, 3 * 4096).unwrap(), vec![10, 11, 99]);
        // Unaligned ranges cover every page they touch.
        assert_eq!(pm.frames(4096 + 4000, 200).unwrap(), vec![10, 11]);
        assert_eq!(pm.entry(3 * 4096 + 5).unwrap().pfn(), Some(99));
        assert!(matches!(
            pm.frames(3 * 4096, 2 * 4096),
            Err(PagemapError::NotPresent { vaddr }) if vaddr == 4 * 4096
        ));
        assert!(matches!(
            pm.frames(5 * 4096, 1),
            Err(PagemapError::PfnHidden)
        ));
        // Past the end of the file: a short read, not a panic.
        assert!(matches!(
            pm.frames(5 * 4096, 2 * 4096),
            Err(PagemapError::Io(_))
        ));
        assert!(matches!(pm.entry(6 * 4096), Err(PagemapError::Io(_))));
        assert!(matches!(
            pm.frames(u64::MAX, 2),
            Err(PagemapError::Overflow { .. })
        ));
    }

    #[test]
    fn real_pagemap_sees_touched_region() {
        let r = Region::create("pagemap", 8 * 4096).unwrap();
        for page in 0..8 {
            crate::SharedMemory::write(&r, page * 4096, &[1]).unwrap();
        }
        let mut pm = Pagemap::open_self().unwrap();
        let (ptr, len) = r.mapping().as_raw_parts();
        for i in 0..(len as u64).div_ceil(pm.page_size()) {
            assert!(pm.entry(ptr as u64 + i * pm.page_size()).unwrap().present());
        }
        match pm.mapping_frames(r.mapping()) {
            Ok(frames) => {
                assert_eq!(frames.len() as u64, 8 * 4096 / pm.page_size());
                assert!(frames.iter().all(|&f| f != 0));
            }
            // Unprivileged: the kernel zeroes the PFNs but still reports presence.
            Err(PagemapError::PfnHidden) => {}
            Err(e) => panic!("{e}"),
        }
    }
}
