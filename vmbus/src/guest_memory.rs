//! Guest-physical translation for the emulated host.
//!
//! In the `sim` transport the guest (the daemon) registers memfds with the host, each at a
//! guest-physical base it chose (compare vhost-user's memory table). PFNs in packets are page
//! numbers in that space. [`GuestMemory`] is the host's table of registered regions; it turns
//! a page list plus a byte range into [`GuestBuffer`] spans inside the mapped regions and
//! **rejects any page that is not wholly inside a registered region**. Consecutive pages that
//! are contiguous in one region are merged into one span; a buffer may cross from one region
//! into another only page by page, each page checked on its own.
//!
//! Spans hold an `Arc` of their region's memory, so a region unregistered while a request is
//! executing stays mapped until that request drops its buffer.

use std::collections::BTreeMap;
use std::sync::Arc;

use blobring_abi::vmbus::HV_PAGE_SIZE;
use blobring_shm::{AccessError, Mapping, SharedMemory};

/// Most regions one guest may register (bounds the table a hostile guest can grow).
pub const MAX_REGIONS: usize = 4096;

/// Why a registration or translation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestMemoryError {
    /// Base or length not a multiple of 4096, zero length, overflow, or longer than the memory.
    #[error(
        "region {id}: base {gpa:#x} and length {len:#x} must be non-zero multiples of 4096 inside the memfd"
    )]
    BadRegion {
        /// Region id.
        id: u64,
        /// Guest-physical base.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// The region overlaps a registered one.
    #[error("region {id} overlaps registered region {other}")]
    Overlap {
        /// The new region.
        id: u64,
        /// The region it overlaps.
        other: u64,
    },
    /// The id is already registered.
    #[error("region id {0} is already registered")]
    DuplicateId(u64),
    /// No region has this id.
    #[error("no registered region has id {0}")]
    UnknownId(u64),
    /// Too many regions.
    #[error("too many registered regions (limit {MAX_REGIONS})")]
    TooManyRegions,
    /// A page of the buffer is not inside a registered region.
    #[error("guest page {pfn:#x} is not inside registered guest memory")]
    NotRegistered {
        /// The offending frame number.
        pfn: u64,
    },
    /// The byte range runs past the page list.
    #[error("buffer [{offset}, +{len}) runs past its {pages}-page list")]
    OutOfRange {
        /// Offset into the page list's virtual buffer.
        offset: u64,
        /// Length.
        len: u64,
        /// Pages in the list.
        pages: usize,
    },
}

/// Why a copy into or out of a [`GuestBuffer`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GuestAccessError {
    /// Outside the buffer.
    #[error("access of {len} bytes at {offset} is outside the {size}-byte guest buffer")]
    OutOfBounds {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Buffer size.
        size: u64,
    },
    /// The region memory refused the access.
    #[error(transparent)]
    Access(#[from] AccessError),
}

#[derive(Debug)]
struct Entry<M> {
    id: u64,
    len: u64,
    mem: Arc<M>,
}

/// The host's table of registered guest regions, keyed by guest-physical base.
#[derive(Debug)]
pub struct GuestMemory<M = Mapping> {
    by_base: BTreeMap<u64, Entry<M>>,
}

impl<M> Default for GuestMemory<M> {
    fn default() -> Self {
        Self {
            by_base: BTreeMap::new(),
        }
    }
}

/// A contiguous piece of a guest buffer inside one region.
#[derive(Debug)]
pub struct Span<M = Mapping> {
    /// The region's memory.
    pub mem: Arc<M>,
    /// Offset in the region.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

impl<M> Clone for Span<M> {
    fn clone(&self) -> Self {
        Self {
            mem: self.mem.clone(),
            offset: self.offset,
            len: self.len,
        }
    }
}

impl<M: SharedMemory> GuestMemory<M> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of registered regions.
    pub fn len(&self) -> usize {
        self.by_base.len()
    }

    /// True if no region is registered.
    pub fn is_empty(&self) -> bool {
        self.by_base.is_empty()
    }

    /// Bytes registered in all regions.
    pub fn bytes(&self) -> u64 {
        self.by_base.values().map(|e| e.len).sum()
    }

    /// Registers `len` bytes of `mem` at guest-physical `gpa` under `id`.
    pub fn register(
        &mut self,
        id: u64,
        gpa: u64,
        len: u64,
        mem: Arc<M>,
    ) -> Result<(), GuestMemoryError> {
        let bad = GuestMemoryError::BadRegion { id, gpa, len };
        if len == 0
            || !gpa.is_multiple_of(HV_PAGE_SIZE)
            || !len.is_multiple_of(HV_PAGE_SIZE)
            || len > mem.size()
            || gpa.checked_add(len).is_none()
        {
            return Err(bad);
        }
        if self.by_base.values().any(|e| e.id == id) {
            return Err(GuestMemoryError::DuplicateId(id));
        }
        if self.by_base.len() >= MAX_REGIONS {
            return Err(GuestMemoryError::TooManyRegions);
        }
        // The region below must end at or before `gpa`; the one above must start at or after
        // `gpa + len`.
        if let Some((&base, e)) = self.by_base.range(..=gpa).next_back()
            && base + e.len > gpa
        {
            return Err(GuestMemoryError::Overlap { id, other: e.id });
        }
        if let Some((_, e)) = self.by_base.range(gpa..gpa + len).next() {
            return Err(GuestMemoryError::Overlap { id, other: e.id });
        }
        self.by_base.insert(gpa, Entry { id, len, mem });
        Ok(())
    }

    /// Forgets region `id`; returns its memory (still alive while spans hold it).
    pub fn unregister(&mut self, id: u64) -> Result<Arc<M>, GuestMemoryError> {
        let base = self
            .by_base
            .iter()
            .find(|(_, e)| e.id == id)
            .map(|(b, _)| *b)
            .ok_or(GuestMemoryError::UnknownId(id))?;
        self.by_base
            .remove(&base)
            .map(|e| e.mem)
            .ok_or(GuestMemoryError::UnknownId(id))
    }

    /// The region holding the whole page `pfn`: (base, entry).
    fn page(&self, pfn: u64) -> Result<(u64, &Entry<M>), GuestMemoryError> {
        let missing = GuestMemoryError::NotRegistered { pfn };
        let gpa = pfn.checked_mul(HV_PAGE_SIZE).ok_or(missing.clone())?;
        let (&base, e) = self
            .by_base
            .range(..=gpa)
            .next_back()
            .ok_or(missing.clone())?;
        // Regions are page multiples, so a page starting inside one ends inside it too.
        if gpa - base >= e.len {
            return Err(missing);
        }
        Ok((base, e))
    }

    /// Translates bytes `[offset, offset + len)` of the virtually contiguous buffer described
    /// by `pfns` into spans of registered memory. Every page touched must be registered.
    pub fn translate(
        &self,
        pfns: &[u64],
        offset: u64,
        len: u64,
    ) -> Result<GuestBuffer<M>, GuestMemoryError> {
        let out_of_range = GuestMemoryError::OutOfRange {
            offset,
            len,
            pages: pfns.len(),
        };
        let end = offset.checked_add(len).ok_or(out_of_range.clone())?;
        if end > pfns.len() as u64 * HV_PAGE_SIZE {
            return Err(out_of_range);
        }
        let mut spans: Vec<Span<M>> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let page = (pos / HV_PAGE_SIZE) as usize;
            let in_page = pos % HV_PAGE_SIZE;
            let chunk = (HV_PAGE_SIZE - in_page).min(end - pos);
            let (base, e) = self.page(pfns[page])?;
            let region_off = pfns[page] * HV_PAGE_SIZE - base + in_page;
            match spans.last_mut() {
                Some(last)
                    if Arc::ptr_eq(&last.mem, &e.mem) && last.offset + last.len == region_off =>
                {
                    last.len += chunk;
                }
                _ => spans.push(Span {
                    mem: e.mem.clone(),
                    offset: region_off,
                    len: chunk,
                }),
            }
            pos += chunk;
        }
        Ok(GuestBuffer { spans, len })
    }
}

/// A guest buffer as spans of registered memory.
#[derive(Debug)]
pub struct GuestBuffer<M = Mapping> {
    spans: Vec<Span<M>>,
    len: u64,
}

impl<M> Clone for GuestBuffer<M> {
    fn clone(&self) -> Self {
        Self {
            spans: self.spans.clone(),
            len: self.len,
        }
    }
}

impl<M: SharedMemory> GuestBuffer<M> {
    /// Bytes of the buffer.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The spans in order.
    pub fn spans(&self) -> &[Span<M>] {
        &self.spans
    }

    fn walk(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&Span<M>, u64, usize, usize) -> Result<(), AccessError>,
    ) -> Result<(), GuestAccessError> {
        let oob = GuestAccessError::OutOfBounds {
            offset,
            len,
            size: self.len,
        };
        if offset.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(oob);
        }
        for (s, at, from, n) in self.pieces(offset, len) {
            f(s, at, from as usize, n as usize)?;
        }
        Ok(())
    }

    /// The pieces of the guest-physical range `[offset, offset + len)`, in order: for each span
    /// it touches, `(span, offset in the span's region, offset in the range, bytes)`. The range
    /// must lie within [`len`](Self::len) (a range past the end yields only the pieces that
    /// exist).
    pub fn pieces(
        &self,
        offset: u64,
        len: u64,
    ) -> impl Iterator<Item = (&Span<M>, u64, u64, u64)> + '_ {
        let walked = (offset, 0u64); // (bytes still to skip, bytes of the range covered)
        self.spans
            .iter()
            .scan(walked, move |(skip, done), s| {
                if *done == len {
                    return None;
                }
                if *skip >= s.len {
                    *skip -= s.len;
                    return Some(None);
                }
                let n = (s.len - *skip).min(len - *done);
                let piece = (s, s.offset + *skip, *done, n);
                *done += n;
                *skip = 0;
                Some(Some(piece))
            })
            .flatten()
    }

    /// Copies `dst.len()` bytes at `offset` out of guest memory.
    pub fn read_at(&self, offset: u64, dst: &mut [u8]) -> Result<(), GuestAccessError> {
        self.walk(offset, dst.len() as u64, |s, at, from, n| {
            s.mem.read(at, &mut dst[from..from + n])
        })
    }

    /// Copies `src` into guest memory at `offset`.
    pub fn write_at(&self, offset: u64, src: &[u8]) -> Result<(), GuestAccessError> {
        self.walk(offset, src.len() as u64, |s, at, from, n| {
            s.mem.write(at, &src[from..from + n])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blobring_shm::HeapMemory;

    fn table() -> (GuestMemory<HeapMemory>, Arc<HeapMemory>, Arc<HeapMemory>) {
        let a = Arc::new(HeapMemory::new(4 * 4096));
        let b = Arc::new(HeapMemory::new(2 * 4096));
        let mut g = GuestMemory::new();
        g.register(1, 0x10_0000, 4 * 4096, a.clone()).unwrap();
        g.register(2, 0x10_4000, 2 * 4096, b.clone()).unwrap();
        (g, a, b)
    }

    #[test]
    fn register_rules() {
        let (mut g, a, _) = table();
        assert!(matches!(
            g.register(3, 0x10_1000, 4096, a.clone()),
            Err(GuestMemoryError::Overlap { other: 1, .. })
        ));
        assert!(matches!(
            g.register(3, 0xf_f000, 8192, a.clone()),
            Err(GuestMemoryError::Overlap { other: 1, .. })
        ));
        assert_eq!(
            g.register(1, 0, 4096, a.clone()),
            Err(GuestMemoryError::DuplicateId(1))
        );
        assert!(matches!(
            g.register(3, 0x800, 4096, a.clone()),
            Err(GuestMemoryError::BadRegion { .. })
        ));
        assert!(matches!(
            g.register(3, 0, 8 * 4096, a.clone()),
            Err(GuestMemoryError::BadRegion { .. })
        ));
        assert!(matches!(
            g.register(3, !0xfffu64, 4096, a.clone()),
            Err(GuestMemoryError::BadRegion { .. })
        ));
        g.register(3, 0, 4096, a).unwrap();
        assert_eq!(g.len(), 3);
        g.unregister(3).unwrap();
        assert_eq!(g.unregister(3).unwrap_err(), GuestMemoryError::UnknownId(3));
    }

    #[test]
    fn translate_merges_and_rejects() {
        let (g, a, b) = table();
        // Pages 0x101, 0x102 (region 1, contiguous) then 0x104 (region 2).
        let pfns = [0x101, 0x102, 0x104];
        let buf = g.translate(&pfns, 100, 3 * 4096 - 200).unwrap();
        assert_eq!(buf.spans().len(), 2);
        assert_eq!(
            (buf.spans()[0].offset, buf.spans()[0].len),
            (4096 + 100, 2 * 4096 - 100)
        );
        assert_eq!((buf.spans()[1].offset, buf.spans()[1].len), (0, 4096 - 100));
        let data: Vec<u8> = (0..buf.len()).map(|i| i as u8).collect();
        buf.write_at(0, &data).unwrap();
        let mut back = vec![0; data.len()];
        buf.read_at(0, &mut back).unwrap();
        assert_eq!(back, data);
        let mut x = [0u8; 1];
        a.read(4096 + 100, &mut x).unwrap();
        assert_eq!(x[0], 0);
        b.read(0, &mut x).unwrap();
        assert_eq!(x[0], (2 * 4096 - 100) as u8);
        assert!(buf.read_at(buf.len() - 1, &mut [0; 2]).is_err());
        // Pages outside: below, in a gap after region 2, absurd.
        for pfn in [0xff, 0x106, u64::MAX] {
            assert_eq!(
                g.translate(&[pfn], 0, 10).unwrap_err(),
                GuestMemoryError::NotRegistered { pfn }
            );
        }
        assert!(matches!(
            g.translate(&[0x101], 4000, 200),
            Err(GuestMemoryError::OutOfRange { .. })
        ));
        assert_eq!(g.translate(&[0x101], 0, 0).unwrap().len(), 0);
    }
}
