//! Where one queue pair lives in a shared memory.

use blobring_abi::{Cqe, IntoBytes, QUEUE_CONTROL_LEN, RegionGeometry, Sqe, qc};
use blobring_shm::SharedMemory;
use std::ops::Range;
use std::sync::atomic::Ordering;

use crate::RingError;
use crate::half::Entry;

/// Byte offsets and sizes of one SQ/CQ pair: a [`blobring_abi::QueueControl`] block, an SQE
/// array and a CQE array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLayout {
    /// Offset of the `QueueControl` block (4-byte aligned at least).
    pub control: u64,
    /// Offset of `sqes[0]`.
    pub sqes: u64,
    /// Offset of `cqes[0]`.
    pub cqes: u64,
    /// SQ entries (a power of two, at most 2^31).
    pub sq_entries: u32,
    /// CQ entries (a power of two, at most 2^31).
    pub cq_entries: u32,
}

const SQE: u64 = size_of::<Sqe>() as u64;
const CQE: u64 = size_of::<Cqe>() as u64;

fn pow2(n: u32) -> bool {
    n.is_power_of_two() && n <= 1 << 31
}

impl QueueLayout {
    /// A checked layout. Sizes must be powers of two (≤ 2^31, so that wrapping index
    /// differences are unambiguous), the control block must be 128-byte aligned and the three
    /// parts must not overlap.
    pub fn new(
        control: u64,
        sqes: u64,
        cqes: u64,
        sq_entries: u32,
        cq_entries: u32,
    ) -> Result<Self, RingError> {
        if !pow2(sq_entries) || !pow2(cq_entries) {
            return Err(RingError::Layout(
                "entries must be powers of two between 1 and 2^31",
            ));
        }
        if !control.is_multiple_of(128) || !sqes.is_multiple_of(8) || !cqes.is_multiple_of(8) {
            return Err(RingError::Layout("misaligned control block or entry array"));
        }
        let l = Self {
            control,
            sqes,
            cqes,
            sq_entries,
            cq_entries,
        };
        let parts = [l.control_range()?, l.sq_range()?, l.cq_range()?];
        for (i, a) in parts.iter().enumerate() {
            for b in &parts[i + 1..] {
                if a.0 < b.1 && b.0 < a.1 {
                    return Err(RingError::Layout("control block and entry arrays overlap"));
                }
            }
        }
        Ok(l)
    }

    /// Control block, SQEs and CQEs back to back from `base` (tests, benches, in-process use).
    pub fn contiguous(base: u64, sq_entries: u32, cq_entries: u32) -> Result<Self, RingError> {
        let sqes = base
            .checked_add(QUEUE_CONTROL_LEN)
            .ok_or(RingError::Layout("overflow"))?;
        let cqes = u64::from(sq_entries)
            .checked_mul(SQE)
            .and_then(|b| b.checked_add(sqes))
            .ok_or(RingError::Layout("overflow"))?;
        Self::new(base, sqes, cqes, sq_entries, cq_entries)
    }

    /// Queue pair `q` of a client region.
    pub fn from_geometry(g: &RegionGeometry, q: u32) -> Result<Self, RingError> {
        if q >= g.n_queues {
            return Err(RingError::Layout("queue index out of range"));
        }
        Self::new(
            g.queue_control(q),
            g.sqes(q),
            g.cqes(q),
            g.sq_entries,
            g.cq_entries,
        )
    }

    /// One past the last byte the layout uses.
    pub fn end(&self) -> u64 {
        // Cannot fail: `new` checked every range.
        [self.control_range(), self.sq_range(), self.cq_range()]
            .into_iter()
            .filter_map(Result::ok)
            .map(|r| r.1)
            .max()
            .unwrap_or(0)
    }

    fn control_range(&self) -> Result<(u64, u64), RingError> {
        range(self.control, QUEUE_CONTROL_LEN)
    }
    fn sq_range(&self) -> Result<(u64, u64), RingError> {
        range(self.sqes, u64::from(self.sq_entries) * SQE)
    }
    fn cq_range(&self) -> Result<(u64, u64), RingError> {
        range(self.cqes, u64::from(self.cq_entries) * CQE)
    }

    /// Refuses a memory too small for the layout; after this check no access through the
    /// layout can fail.
    pub(crate) fn check_fits<S: SharedMemory + ?Sized>(&self, mem: &S) -> Result<(), RingError> {
        if self.end() > mem.size() {
            return Err(RingError::Layout(
                "queue pair does not fit in the shared memory",
            ));
        }
        Ok(())
    }

    /// Writes every index of a fresh queue pair to `start` and clears the flags. Called by the
    /// daemon before the memory is shared (the only time it writes the client's line).
    pub fn initialize<S: SharedMemory + ?Sized>(
        &self,
        mem: &S,
        start: u32,
    ) -> Result<(), RingError> {
        self.check_fits(mem)?;
        for off in [qc::SQ_TAIL, qc::CQ_HEAD, qc::SQ_HEAD, qc::CQ_TAIL] {
            mem.store_u32(self.control + off, start, Ordering::Relaxed)?;
        }
        for off in [qc::CQ_WAITING, qc::SQ_NEED_WAKEUP, qc::SQ_REJECTED] {
            mem.store_u32(self.control + off, 0, Ordering::Relaxed)?;
        }
        // Publication of the whole region to the peer happens later through a syscall
        // (sendmsg), which orders these stores before anything the peer reads.
        Ok(())
    }

    /// Offset of the entry of `E`'s queue for free-running index `i`.
    #[inline]
    pub(crate) fn slot_at<E: Entry>(&self, i: u32) -> u64 {
        E::array(self) + u64::from(i & (E::entries(self) - 1)) * size_of::<E>() as u64
    }

    /// Copies `src` into the slots of `E`'s queue from free-running index `i` on: the entries
    /// up to the end of the array, then the rest from its start. At most two copies per batch,
    /// never a reference into shared memory.
    pub(crate) fn write_entries<M: SharedMemory + ?Sized, E: Entry>(
        &self,
        mem: &M,
        i: u32,
        src: &[E],
    ) -> Result<(), RingError> {
        for (at, part) in self.pieces::<E>(i, src.len()) {
            if !part.is_empty() {
                mem.write(at, src[part].as_bytes())?;
            }
        }
        Ok(())
    }

    /// The copy out of the slots of `E`'s queue into `dst` (private memory), split like
    /// [`QueueLayout::write_entries`].
    pub(crate) fn read_entries<M: SharedMemory + ?Sized, E: Entry>(
        &self,
        mem: &M,
        i: u32,
        dst: &mut [E],
    ) -> Result<(), RingError> {
        for (at, part) in self.pieces::<E>(i, dst.len()) {
            if !part.is_empty() {
                mem.read(at, dst[part].as_mut_bytes())?;
            }
        }
        Ok(())
    }

    /// Where `n` entries starting at free-running index `i` go in the array of `E`'s queue:
    /// `(offset, entries)` up to the end of the array, then the rest from its start (empty
    /// when nothing wraps).
    fn pieces<E: Entry>(&self, i: u32, n: usize) -> [(u64, Range<usize>); 2] {
        let entries = E::entries(self);
        let first = n.min((entries - (i & (entries - 1))) as usize);
        [(self.slot_at::<E>(i), 0..first), (E::array(self), first..n)]
    }

    /// Offset of a `QueueControl` field (`blobring_abi::qc::*`).
    #[inline]
    pub(crate) fn field(&self, off: u64) -> u64 {
        self.control + off
    }
}

fn range(start: u64, len: u64) -> Result<(u64, u64), RingError> {
    let end = start
        .checked_add(len)
        .ok_or(RingError::Layout("offset overflow"))?;
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_layouts() {
        assert!(QueueLayout::contiguous(0, 3, 4).is_err());
        assert!(QueueLayout::contiguous(0, 4, 0).is_err());
        assert!(
            QueueLayout::new(64, 256, 512, 2, 2).is_err(),
            "misaligned control"
        );
        assert!(
            QueueLayout::new(0, 128, 1024, 16, 2).is_err(),
            "sqes overlap control"
        );
        assert!(
            QueueLayout::new(0, 256, 256 + 64, 2, 2).is_err(),
            "cqes overlap sqes"
        );
        assert!(QueueLayout::new(u64::MAX - 127, 0, 0, 1, 1).is_err());
        let l = QueueLayout::contiguous(128, 4, 8).unwrap();
        assert_eq!(l.end(), 128 + 256 + 4 * 64 + 8 * 32);
        assert_eq!(l.slot_at::<Sqe>(5), l.sqes + 64);
        assert_eq!(l.slot_at::<Cqe>(u32::MAX), l.cqes + 7 * 32);
    }

    #[test]
    fn from_geometry_matches_abi() {
        let g = RegionGeometry::new(2, 64, 128, 4096, 4096).unwrap();
        let l = QueueLayout::from_geometry(&g, 1).unwrap();
        assert_eq!(l.control, g.queue_control(1));
        assert_eq!(l.cqes, g.cqes(1));
        assert!(l.end() <= g.arena_offset);
        assert!(QueueLayout::from_geometry(&g, 2).is_err());
    }
}
