//! Guest-physical translation.
//!
//! Two directions, for the two VMBus transports:
//!
//! - [`GuestMemoryTable`] (emulated host, `sim`): the daemon assigns each client region a
//!   guest-physical base and registers the memfd with the host, which maps it and enters it
//!   here. A PFN found in a VMBus packet is translated to (region, byte offset); anything
//!   outside a registered region is refused (`None`), never guessed.
//! - [`Pagemap`] (real Hyper-V, `uio`): the host needs the physical frame numbers of our
//!   (hugepage-backed) regions, read from `/proc/self/pagemap`.
//!
//! Guest PFNs are in Hyper-V pages of [`GUEST_PAGE_SIZE`] bytes whatever backs the region.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};

use crate::access::SharedMemory;
use crate::region::Mapping;

/// The guest page size PFNs count in (Hyper-V's `HV_PAGE_SIZE`).
pub const GUEST_PAGE_SIZE: u64 = blobring_abi::vmbus::HV_PAGE_SIZE;

/// The identity of a region registered in a [`GuestMemoryTable`]. Ids are never reused by a
/// table, so a stale id cannot name a newer region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(pub u64);

/// Why a region could not be registered or unregistered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpaError {
    /// The base is not a multiple of the guest page size.
    #[error("guest-physical base {base:#x} is not aligned to {GUEST_PAGE_SIZE} bytes")]
    MisalignedBase {
        /// The base asked for.
        base: u64,
    },
    /// The region's length is zero or not a whole number of guest pages.
    #[error("region length {len} is not a positive multiple of {GUEST_PAGE_SIZE} bytes")]
    BadLength {
        /// The length.
        len: u64,
    },
    /// `base + len` overflows the guest-physical address space.
    #[error("region at {base:#x} of {len} bytes overflows the guest-physical address space")]
    Overflow {
        /// The base asked for.
        base: u64,
        /// The length.
        len: u64,
    },
    /// The range overlaps a registered region; pick another base.
    #[error(
        "region [{base:#x}, +{len:#x}) overlaps registered region {other:?} at \
         [{other_base:#x}, +{other_len:#x}); assign non-overlapping bases"
    )]
    Overlap {
        /// The base asked for.
        base: u64,
        /// The length.
        len: u64,
        /// The region in the way.
        other: RegionId,
        /// Its base.
        other_base: u64,
        /// Its length.
        other_len: u64,
    },
    /// No region has this id (never registered, or already unregistered).
    #[error("no guest memory region {0:?} is registered")]
    UnknownRegion(RegionId),
}

#[derive(Debug)]
struct Entry<M> {
    id: RegionId,
    len: u64,
    mem: M,
}

/// Guest-physical base → registered memory, for the emulated host.
///
/// `M` is whatever holds the memory (by default a [`Mapping`]; `Arc<Mapping>` or
/// [`HeapMemory`](crate::HeapMemory) work too). Look-ups are `O(log n)`.
#[derive(Debug)]
pub struct GuestMemoryTable<M = Mapping> {
    by_base: BTreeMap<u64, Entry<M>>,
    base_of: HashMap<RegionId, u64>,
    next_id: u64,
}

impl<M> Default for GuestMemoryTable<M> {
    fn default() -> Self {
        Self {
            by_base: BTreeMap::new(),
            base_of: HashMap::new(),
            next_id: 1,
        }
    }
}

impl<M: SharedMemory> GuestMemoryTable<M> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `mem` at guest-physical `base`. Its size ([`SharedMemory::size`]) must be a
    /// positive multiple of [`GUEST_PAGE_SIZE`] and `base` must be page-aligned; the range must
    /// not overlap a registered region.
    pub fn register(&mut self, base: u64, mem: M) -> Result<RegionId, GpaError> {
        let len = mem.size();
        if !base.is_multiple_of(GUEST_PAGE_SIZE) {
            return Err(GpaError::MisalignedBase { base });
        }
        if len == 0 || !len.is_multiple_of(GUEST_PAGE_SIZE) {
            return Err(GpaError::BadLength { len });
        }
        let end = base
            .checked_add(len)
            .ok_or(GpaError::Overflow { base, len })?;
        // Neighbours: the last region starting at or before `base`, and the first starting
        // after it. Registered regions never overlap each other, so these two suffice.
        let before = self.by_base.range(..=base).next_back();
        let after = self.by_base.range(base..).find(|(b, _)| **b != base);
        for (&other_base, e) in before.into_iter().chain(after) {
            if other_base < end && base < other_base + e.len {
                return Err(GpaError::Overlap {
                    base,
                    len,
                    other: e.id,
                    other_base,
                    other_len: e.len,
                });
            }
        }
        let id = RegionId(self.next_id);
        self.next_id += 1;
        self.by_base.insert(base, Entry { id, len, mem });
        self.base_of.insert(id, base);
        Ok(id)
    }

    /// Removes a region and gives its memory back (drop it once nothing in flight uses it).
    pub fn unregister(&mut self, id: RegionId) -> Result<M, GpaError> {
        let base = self
            .base_of
            .remove(&id)
            .ok_or(GpaError::UnknownRegion(id))?;
        let entry = self
            .by_base
            .remove(&base)
            .expect("base_of and by_base agree");
        Ok(entry.mem)
    }

    /// The region holding guest page `pfn` and the byte offset of that page in it, or `None`
    /// if the page is not (entirely) inside a registered region.
    pub fn translate(&self, pfn: u64) -> Option<(RegionId, u64)> {
        self.translate_range(pfn.checked_mul(GUEST_PAGE_SIZE)?, GUEST_PAGE_SIZE)
    }

    /// The region holding the guest-physical bytes `[gpa, gpa + len)` and the byte offset of
    /// `gpa` in it, or `None` unless the whole range lies inside one registered region.
    pub fn translate_range(&self, gpa: u64, len: u64) -> Option<(RegionId, u64)> {
        let end = gpa.checked_add(len)?;
        let (&base, e) = self.by_base.range(..=gpa).next_back()?;
        (end <= base + e.len).then_some((e.id, gpa - base))
    }

    /// The memory of region `id`.
    pub fn memory(&self, id: RegionId) -> Option<&M> {
        self.by_base.get(self.base_of.get(&id)?).map(|e| &e.mem)
    }

    /// The guest-physical base and length of region `id`.
    pub fn extent(&self, id: RegionId) -> Option<(u64, u64)> {
        let base = *self.base_of.get(&id)?;
        Some((base, self.by_base[&base].len))
    }

    /// Regions registered.
    pub fn len(&self) -> usize {
        self.by_base.len()
    }

    /// Whether no region is registered.
    pub fn is_empty(&self) -> bool {
        self.by_base.is_empty()
    }
}

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
    use crate::{HeapMemory, Region};
    use std::io::Cursor;
    use std::sync::Arc;

    const P: u64 = GUEST_PAGE_SIZE;

    #[test]
    fn translate_finds_registered_pages_only() {
        let mut t = GuestMemoryTable::new();
        let a = t.register(0x10_0000, HeapMemory::new(4 * P)).unwrap();
        let b = t
            .register(0x10_0000 + 4 * P, HeapMemory::new(2 * P))
            .unwrap();
        assert_ne!(a, b);
        let pfn0 = 0x10_0000 / P;
        assert_eq!(t.translate(pfn0), Some((a, 0)));
        assert_eq!(t.translate(pfn0 + 3), Some((a, 3 * P)));
        assert_eq!(t.translate(pfn0 + 4), Some((b, 0)));
        assert_eq!(t.translate(pfn0 + 5), Some((b, P)));
        assert_eq!(t.translate(pfn0 + 6), None);
        assert_eq!(t.translate(pfn0 - 1), None);
        assert_eq!(t.translate(0), None);
        assert_eq!(t.translate(u64::MAX), None);
        assert_eq!(t.translate(u64::MAX / P), None);
        // Byte ranges must not straddle regions.
        assert_eq!(t.translate_range(0x10_0000 + 100, 50), Some((a, 100)));
        assert_eq!(t.translate_range(0x10_0000 + 4 * P - 8, 16), None);
        assert_eq!(
            t.translate_range(0x10_0000 + 4 * P - 8, 8),
            Some((a, 4 * P - 8))
        );
        assert_eq!(t.translate_range(u64::MAX - 1, 4), None);
        assert_eq!(t.extent(b), Some((0x10_0000 + 4 * P, 2 * P)));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn register_refuses_overlap_misalignment_and_bad_lengths() {
        let mut t = GuestMemoryTable::new();
        let a = t.register(10 * P, HeapMemory::new(4 * P)).unwrap();
        for (base, len) in [
            (10 * P, P),
            (9 * P, 2 * P),
            (13 * P, 4 * P),
            (8 * P, 8 * P),
            (11 * P, P),
        ] {
            let err = t.register(base, HeapMemory::new(len)).unwrap_err();
            assert!(
                matches!(err, GpaError::Overlap { other, other_base, .. } if other == a && other_base == 10 * P),
                "{base} {len}: {err:?}"
            );
        }
        // Adjacent on both sides is fine.
        t.register(9 * P, HeapMemory::new(P)).unwrap();
        t.register(14 * P, HeapMemory::new(P)).unwrap();
        assert_eq!(
            t.register(P + 1, HeapMemory::new(P)).unwrap_err(),
            GpaError::MisalignedBase { base: P + 1 }
        );
        assert_eq!(
            t.register(0, HeapMemory::new(100)).unwrap_err(),
            GpaError::BadLength { len: 100 }
        );
        assert_eq!(
            t.register(0, HeapMemory::new(0)).unwrap_err(),
            GpaError::BadLength { len: 0 }
        );
        assert!(matches!(
            t.register(u64::MAX - P + 1, HeapMemory::new(2 * P)),
            Err(GpaError::Overflow { .. })
        ));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn unregister_frees_the_range_and_ids_are_not_reused() {
        let mut t = GuestMemoryTable::new();
        let a = t.register(0, HeapMemory::new(2 * P)).unwrap();
        let mem = t.unregister(a).unwrap();
        assert_eq!(mem.size(), 2 * P);
        assert_eq!(t.unregister(a).unwrap_err(), GpaError::UnknownRegion(a));
        assert_eq!(t.translate(0), None);
        assert!(t.memory(a).is_none() && t.is_empty());
        let b = t.register(0, HeapMemory::new(P)).unwrap();
        assert_ne!(a, b);
        assert_eq!(t.translate(0), Some((b, 0)));
    }

    #[test]
    fn table_over_shared_mappings() {
        let region = Region::create("gpa", 2 * P).unwrap();
        let (_fd, map, _) = region.into_parts();
        let map = Arc::new(map);
        let mut t: GuestMemoryTable<Arc<Mapping>> = GuestMemoryTable::new();
        let id = t.register(1 << 30, map.clone()).unwrap();
        let (rid, off) = t.translate((1 << 30) / P + 1).unwrap();
        assert_eq!(rid, id);
        t.memory(rid).unwrap().write(off, b"guest").unwrap();
        let mut b = [0u8; 5];
        map.read(P, &mut b).unwrap();
        assert_eq!(&b, b"guest");
    }

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
    fn real_pagemap_sees_prefaulted_region() {
        let r = Region::create("pagemap", 8 * 4096).unwrap();
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
