//! The arena allocator the SDK uses for data buffers in its region.
//!
//! Pure bookkeeping over offsets: it never touches the memory, so it needs no `unsafe` and
//! trusts nothing in the region. The arena `[base, base + len)` is carved into blocks of
//! whole [`GRANULE`]s (64 bytes, one cache line), so every block starts on a cache line and
//! two buffers never share one.
//!
//! Free space is kept twice: by start offset (for coalescing with both neighbours on free)
//! and by (length, recency, start) (for best fit). Allocation takes the smallest free block
//! that fits the length and alignment; among blocks of one size the most recently freed
//! first (LIFO: its cache lines and TLB entries are the warmest; a block merged on free counts
//! as freed then), then the lowest offset. The allocation takes the block's first aligned
//! offset (the lowest address: carving at the front keeps the rest of the block in one
//! piece); the leftovers on either side go back to the free lists.
//! Freeing merges with adjacent free blocks, so once everything is freed the arena is one
//! block again.
//!
//! Cost: `alloc` is `O(log n)` for `align <= 64`; for larger alignments it also looks at the
//! free blocks whose size lies in `[len, len + align - 64)` (those may or may not fit,
//! depending on where they start) before the `O(log n)` guaranteed-fit look-up. `free` is
//! `O(log n)`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

/// Allocation granule and minimum alignment: one cache line.
pub const GRANULE: u64 = 64;

/// A block handed out by [`Arena::alloc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// Start offset (absolute: `base <= offset`), aligned as asked.
    pub offset: u64,
    /// Bytes reserved: the requested length rounded up to a multiple of [`GRANULE`].
    pub len: u64,
}

/// Why the arena refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ArenaError {
    /// The arena's base is not 64-byte aligned, or it is smaller than one granule.
    #[error(
        "an arena needs a base aligned to {GRANULE} bytes and at least {GRANULE} bytes \
         (got base {base:#x}, length {len})"
    )]
    BadArena {
        /// The base.
        base: u64,
        /// The length.
        len: u64,
    },
    /// Zero-length allocations are not supported.
    #[error("zero-length allocation")]
    ZeroLength,
    /// The alignment is not a power of two.
    #[error("alignment {0} is not a power of two")]
    BadAlign(u64),
    /// No free block fits; free something or use a larger arena.
    #[error("no free block of {len} bytes aligned to {align} (largest free block: {largest})")]
    OutOfSpace {
        /// Bytes asked for (rounded).
        len: u64,
        /// Alignment asked for.
        align: u64,
        /// The largest free block.
        largest: u64,
    },
    /// `free` of an offset that is not the start of a live allocation (double free, or a
    /// buffer that was never handed out).
    #[error("offset {0:#x} is not the start of a live allocation")]
    UnknownOffset(u64),
}

/// An offset allocator over `[base, base + len)`. Not thread-safe by itself: the SDK wraps it
/// in a lock.
#[derive(Debug, Clone)]
pub struct Arena {
    base: u64,
    len: u64,
    /// Free blocks: start → block. Never two adjacent ones (they are merged).
    free_by_start: BTreeMap<u64, FreeBlock>,
    /// The same blocks as (length, most recently freed first, start), for best fit.
    free_by_size: BTreeSet<(u64, Reverse<u64>, u64)>,
    /// Live allocations: start → length.
    live: BTreeMap<u64, u64>,
    free_bytes: u64,
    /// Stamps frees, so that the most recently freed space is handed out first.
    clock: u64,
}

/// A free block's length and when space in it was last freed.
#[derive(Debug, Clone, Copy)]
struct FreeBlock {
    len: u64,
    /// [`Arena::clock`] at that free (0: never).
    stamp: u64,
}

impl Arena {
    /// An arena managing `[base, base + len)`. `base` must be a multiple of [`GRANULE`];
    /// `len` is rounded down to one.
    pub fn new(base: u64, len: u64) -> Result<Self, ArenaError> {
        let usable = len - len % GRANULE;
        if !base.is_multiple_of(GRANULE) || usable == 0 || base.checked_add(usable).is_none() {
            return Err(ArenaError::BadArena { base, len });
        }
        let mut arena = Self {
            base,
            len: usable,
            free_by_start: BTreeMap::new(),
            free_by_size: BTreeSet::new(),
            live: BTreeMap::new(),
            free_bytes: 0,
            clock: 0,
        };
        arena.insert_free(base, usable, 0);
        Ok(arena)
    }

    /// Allocates `len` bytes aligned to `align` (a power of two; anything below 64 counts as
    /// 64). `None` if `len` is 0, `align` is not a power of two, or nothing fits; use
    /// [`Arena::try_alloc`] to learn which.
    pub fn alloc(&mut self, len: u64, align: u64) -> Option<Allocation> {
        self.try_alloc(len, align).ok()
    }

    /// [`Arena::alloc`], saying why it failed.
    pub fn try_alloc(&mut self, len: u64, align: u64) -> Result<Allocation, ArenaError> {
        if len == 0 {
            return Err(ArenaError::ZeroLength);
        }
        if !align.is_power_of_two() {
            return Err(ArenaError::BadAlign(align));
        }
        let align = align.max(GRANULE);
        let out_of_space = ArenaError::OutOfSpace {
            len,
            align,
            largest: self.largest_free(),
        };
        let len = len.checked_next_multiple_of(GRANULE).ok_or(out_of_space)?;
        // Any block at least this long fits whatever its start (starts are 64-aligned).
        let sure = len.checked_add(align - GRANULE).ok_or(out_of_space)?;
        let fits = |&(size, Reverse(stamp), start): &(u64, Reverse<u64>, u64)| {
            let aligned = start.checked_next_multiple_of(align)?;
            (aligned - start <= size - len).then_some((size, stamp, start, aligned))
        };
        let found = self
            .free_by_size
            .range((len, Reverse(u64::MAX), 0)..(sure, Reverse(u64::MAX), 0))
            .find_map(fits)
            .or_else(|| {
                self.free_by_size
                    .range((sure, Reverse(u64::MAX), 0)..)
                    .next()
                    .and_then(fits)
            })
            .ok_or(out_of_space)?;
        let (size, stamp, start, aligned) = found;
        self.remove_free(start);
        if aligned > start {
            self.insert_free(start, aligned - start, stamp);
        }
        let tail = start + size - (aligned + len);
        if tail > 0 {
            self.insert_free(aligned + len, tail, stamp);
        }
        self.live.insert(aligned, len);
        Ok(Allocation {
            offset: aligned,
            len,
        })
    }

    /// Frees the allocation starting at `offset`, merging it with free neighbours; returns
    /// its length. An offset that is not the start of a live allocation is an error, and
    /// leaves the arena unchanged.
    pub fn free(&mut self, offset: u64) -> Result<u64, ArenaError> {
        let len = self
            .live
            .remove(&offset)
            .ok_or(ArenaError::UnknownOffset(offset))?;
        let (mut start, mut end) = (offset, offset + len);
        if let Some((&prev, prev_block)) = self.free_by_start.range(..offset).next_back()
            && prev + prev_block.len == offset
        {
            self.remove_free(prev);
            start = prev;
        }
        if self.free_by_start.contains_key(&end) {
            end += self.remove_free(end).len;
        }
        self.clock += 1;
        self.insert_free(start, end - start, self.clock);
        Ok(len)
    }

    /// The live allocation starting at `offset`, if any.
    pub fn get(&self, offset: u64) -> Option<Allocation> {
        self.live
            .get(&offset)
            .map(|&len| Allocation { offset, len })
    }

    /// First byte managed.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Bytes managed (the length given to [`Arena::new`], rounded down to 64).
    pub fn capacity(&self) -> u64 {
        self.len
    }

    /// Bytes free, in all blocks.
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes
    }

    /// The largest free block (what one allocation with 64-byte alignment could get).
    pub fn largest_free(&self) -> u64 {
        self.free_by_size.last().map_or(0, |&(size, _, _)| size)
    }

    /// Live allocations.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Free blocks (a fragmentation measure).
    pub fn free_block_count(&self) -> usize {
        self.free_by_start.len()
    }

    fn insert_free(&mut self, start: u64, len: u64, stamp: u64) {
        debug_assert!(len > 0 && start.is_multiple_of(GRANULE) && len.is_multiple_of(GRANULE));
        self.free_by_start.insert(start, FreeBlock { len, stamp });
        self.free_by_size.insert((len, Reverse(stamp), start));
        self.free_bytes += len;
    }

    /// Removes the free block at `start` (which must exist) and returns it.
    fn remove_free(&mut self, start: u64) -> FreeBlock {
        let b = self
            .free_by_start
            .remove(&start)
            .expect("a free block starts here");
        self.free_by_size.remove(&(b.len, Reverse(b.stamp), start));
        self.free_bytes -= b.len;
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn basic_alloc_free_and_coalesce() {
        let mut a = Arena::new(4096, 4096).unwrap();
        let x = a.alloc(100, 64).unwrap();
        assert_eq!(
            x,
            Allocation {
                offset: 4096,
                len: 128
            }
        );
        let y = a.alloc(1, 1).unwrap();
        assert_eq!(
            y,
            Allocation {
                offset: 4096 + 128,
                len: 64
            }
        );
        let z = a.alloc(64, 1024).unwrap();
        assert_eq!(z.offset, 5120);
        assert_eq!(a.free_bytes(), 4096 - 128 - 64 - 64);
        assert_eq!(a.free(y.offset), Ok(64));
        assert_eq!(a.free(y.offset), Err(ArenaError::UnknownOffset(y.offset)));
        assert_eq!(a.free(x.offset), Ok(128));
        assert_eq!(a.free(z.offset), Ok(64));
        assert_eq!((a.free_block_count(), a.largest_free()), (1, 4096));
        assert_eq!(
            a.alloc(4096, 4096),
            Some(Allocation {
                offset: 4096,
                len: 4096
            })
        );
        assert_eq!(a.alloc(64, 64), None);
    }

    #[test]
    fn refusals_are_errors_not_panics() {
        assert!(matches!(
            Arena::new(3, 4096),
            Err(ArenaError::BadArena { .. })
        ));
        assert!(matches!(
            Arena::new(0, 63),
            Err(ArenaError::BadArena { .. })
        ));
        assert!(matches!(
            Arena::new(u64::MAX - 63, 128),
            Err(ArenaError::BadArena { .. })
        ));
        let mut a = Arena::new(0, 1000).unwrap();
        assert_eq!(a.capacity(), 960);
        assert_eq!(a.try_alloc(0, 64), Err(ArenaError::ZeroLength));
        assert_eq!(a.try_alloc(64, 96), Err(ArenaError::BadAlign(96)));
        assert_eq!(a.try_alloc(64, 0), Err(ArenaError::BadAlign(0)));
        assert!(matches!(
            a.try_alloc(u64::MAX, 64),
            Err(ArenaError::OutOfSpace { .. })
        ));
        // An arena at 4096 has no offset aligned to 2^63 (and the search must not overflow).
        let mut b = Arena::new(4096, 1000).unwrap();
        assert!(matches!(
            b.try_alloc(64, 1 << 63),
            Err(ArenaError::OutOfSpace { .. })
        ));
        assert!(matches!(
            a.try_alloc(961, 64),
            Err(ArenaError::OutOfSpace { largest: 960, .. })
        ));
        assert_eq!(a.free(12345), Err(ArenaError::UnknownOffset(12345)));
        let x = a.alloc(64, 64).unwrap();
        assert_eq!(
            a.free(x.offset + 64),
            Err(ArenaError::UnknownOffset(x.offset + 64))
        );
        assert_eq!(a.live_count(), 1);
        // Offset 0 is aligned to anything.
        a.free(x.offset).unwrap();
        assert_eq!(a.alloc(64, 1 << 63).map(|x| x.offset), Some(0));
    }

    #[test]
    fn best_fit_prefers_the_smallest_hole() {
        let mut a = Arena::new(0, 64 * 20).unwrap();
        let blocks: Vec<_> = [4, 1, 2, 1, 1]
            .iter()
            .map(|g| a.alloc(g * 64, 64).unwrap())
            .collect();
        // Holes of 4 and 2 granules (the tail of 11 granules stays free too).
        a.free(blocks[0].offset).unwrap();
        a.free(blocks[2].offset).unwrap();
        let hole_of_two = blocks[2].offset;
        assert_eq!(a.alloc(128, 64).unwrap().offset, hole_of_two);
        assert_eq!(a.alloc(200, 64).unwrap().offset, 0);
    }

    #[test]
    fn misaligned_hole_in_the_size_band_is_skipped_for_large_alignment() {
        let mut a = Arena::new(0, 8192).unwrap();
        let _x = a.alloc(64, 64).unwrap();
        let h = a.alloc(1088, 64).unwrap();
        let _y = a.alloc(4096 - 1152, 64).unwrap();
        assert_eq!(h.offset, 64);
        a.free(h.offset).unwrap();
        // Free: [64, 1152) and [4096, 8192). The first is long enough for 1024 bytes but its
        // first 1024-aligned offset leaves only 128 bytes: skipped.
        assert_eq!(a.alloc(1024, 1024).unwrap().offset, 4096);
        // With 64-byte alignment it is the best fit.
        assert_eq!(a.alloc(1024, 64).unwrap().offset, 64);
    }

    /// Same-size blocks come back last freed, first reused (the warmest cache lines).
    #[test]
    fn same_size_blocks_are_reused_most_recently_freed_first() {
        let mut a = Arena::new(0, 64 * 64).unwrap();
        // Three 4-granule blocks, each followed by a live 1-granule fence so none merge.
        let blocks: Vec<_> = (0..3)
            .map(|_| {
                let b = a.alloc(256, 64).unwrap();
                a.alloc(64, 64).unwrap();
                b.offset
            })
            .collect();
        for &i in &[0, 2, 1] {
            a.free(blocks[i]).unwrap();
        }
        let order: Vec<u64> = (0..3).map(|_| a.alloc(256, 64).unwrap().offset).collect();
        assert_eq!(order, vec![blocks[1], blocks[2], blocks[0]]);
        // Smaller fits still go to the smallest hole first (best fit before recency).
        a.free(blocks[0]).unwrap();
        let big = a.alloc(64 * 40, 64).unwrap();
        a.free(big.offset).unwrap();
        assert_eq!(a.alloc(256, 64).unwrap().offset, blocks[0]);
    }

    /// A block merged on free counts as freed then: among same-size holes it comes first.
    #[test]
    fn a_block_merged_on_free_is_as_recent_as_that_free() {
        let mut a = Arena::new(0, 8192).unwrap();
        let x = a.alloc(128, 64).unwrap();
        let _f1 = a.alloc(64, 64).unwrap();
        let y1 = a.alloc(64, 64).unwrap();
        let y2 = a.alloc(64, 64).unwrap();
        let _f2 = a.alloc(64, 64).unwrap();
        a.free(y1.offset).unwrap();
        a.free(x.offset).unwrap();
        a.free(y2.offset).unwrap(); // merges with y1: a 128-byte hole, freed after x's
        assert_eq!(a.alloc(128, 64).unwrap().offset, y1.offset);
        assert_eq!(a.alloc(128, 64).unwrap().offset, x.offset);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc { len: u64, align_shift: u32 },
        Free { pick: usize },
        FreeBogus { offset: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1u64..3000, 0u32..13).prop_map(|(len, align_shift)| Op::Alloc { len, align_shift }),
            2 => any::<usize>().prop_map(|pick| Op::Free { pick }),
            1 => any::<u64>().prop_map(|offset| Op::FreeBogus { offset }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn random_sequences_match_a_model(
            base_granules in 0u64..100,
            len in 64u64..40_000,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let base = base_granules * GRANULE;
            let mut arena = Arena::new(base, len).unwrap();
            let cap = arena.capacity();
            prop_assert_eq!(cap, len / 64 * 64);
            // The model: live allocations by offset.
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Alloc { len, align_shift } => {
                        let align = 1u64 << align_shift;
                        if let Some(a) = arena.alloc(len, align) {
                            prop_assert!(a.len >= len && a.len < len + GRANULE);
                            prop_assert_eq!(a.len % GRANULE, 0);
                            prop_assert_eq!(a.offset % align.max(GRANULE), 0);
                            prop_assert!(a.offset >= base && a.offset + a.len <= base + cap);
                            if let Some((&o, &l)) = model.range(..=a.offset).next_back() {
                                prop_assert!(o + l <= a.offset, "overlaps [{o}, +{l})");
                            }
                            if let Some((&o, _)) = model.range(a.offset..).next() {
                                prop_assert!(a.offset + a.len <= o, "overlaps block at {o}");
                            }
                            model.insert(a.offset, a.len);
                        } else {
                            // A 64-aligned request that fits the free space in one block must
                            // succeed: best fit never misses a block that is large enough.
                            let rounded = len.next_multiple_of(GRANULE);
                            prop_assert!(align > GRANULE || rounded > arena.largest_free());
                        }
                    }
                    Op::Free { pick } => {
                        if model.is_empty() {
                            continue;
                        }
                        let (&o, &l) = model.iter().nth(pick % model.len()).unwrap();
                        prop_assert_eq!(arena.free(o), Ok(l));
                        model.remove(&o);
                    }
                    Op::FreeBogus { offset } => {
                        if !model.contains_key(&offset) {
                            prop_assert_eq!(arena.free(offset), Err(ArenaError::UnknownOffset(offset)));
                        }
                    }
                }
                let used: u64 = model.values().sum();
                prop_assert_eq!(arena.free_bytes() + used, cap);
                prop_assert_eq!(arena.live_count(), model.len());
            }
            for (o, l) in std::mem::take(&mut model) {
                prop_assert_eq!(arena.free(o), Ok(l));
            }
            prop_assert_eq!(arena.free_block_count(), 1);
            prop_assert_eq!(arena.alloc(cap, 64), Some(Allocation { offset: base, len: cap }));
        }
    }
}
