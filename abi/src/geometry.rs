//! Where everything lives in a client region. Both peers compute it from the same few numbers;
//! the client recomputes it from the header it received and refuses a header that does not
//! match its own computation.

use crate::{
    ABI_VERSION, Cqe, HEADER_LEN, MAX_SQ_ENTRIES, QUEUE_CONTROL_LEN, REGION_MAGIC, RegionHeader,
    Sqe,
};

/// Why a geometry was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GeometryError {
    /// A size that must be a power of two is not, or is out of range.
    BadEntries {
        /// Which field.
        what: &'static str,
        /// The value found.
        value: u32,
    },
    /// No queue pairs, or too many.
    BadQueueCount(u32),
    /// The page size is not 4 KiB or 2 MiB.
    BadPageSize(u32),
    /// The sizes overflow a u64 or exceed the region.
    TooLarge,
    /// A header field disagrees with the geometry its sizes imply.
    HeaderMismatch(&'static str),
}

impl core::fmt::Display for GeometryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadEntries { what, value } => write!(
                f,
                "{what} = {value} is not a power of two between 1 and {MAX_SQ_ENTRIES}"
            ),
            Self::BadQueueCount(n) => write!(f, "{n} queue pairs is out of range (1..=1024)"),
            Self::BadPageSize(p) => write!(f, "page size {p} is neither 4096 nor 2097152"),
            Self::TooLarge => write!(f, "region sizes overflow"),
            Self::HeaderMismatch(field) => {
                write!(
                    f,
                    "region header field `{field}` does not match its geometry"
                )
            }
        }
    }
}

impl std::error::Error for GeometryError {}

/// The layout of one client region.
///
/// ```text
/// 0            header page (RegionHeader, daemon-written)
/// 4096         queue pair 0: QueueControl (256 B) | SQE[sq_entries] | CQE[cq_entries] | pad
/// +stride      queue pair 1 ...
/// arena_offset data arena (aligned to the backing page size)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionGeometry {
    /// Queue pairs.
    pub n_queues: u32,
    /// SQ entries per queue.
    pub sq_entries: u32,
    /// CQ entries per queue.
    pub cq_entries: u32,
    /// Backing page size.
    pub page_size: u32,
    /// Offset of queue pair 0.
    pub queue_offset: u64,
    /// Distance between queue pairs.
    pub queue_stride: u64,
    /// Offset of the data arena.
    pub arena_offset: u64,
    /// Bytes of the data arena.
    pub arena_len: u64,
    /// Total bytes.
    pub region_len: u64,
}

const MAX_QUEUES: u32 = 1024;

fn check_entries(what: &'static str, value: u32) -> Result<(), GeometryError> {
    if value == 0 || !value.is_power_of_two() || value > 2 * MAX_SQ_ENTRIES {
        return Err(GeometryError::BadEntries { what, value });
    }
    Ok(())
}

fn round_up(v: u64, align: u64) -> Option<u64> {
    v.checked_add(align - 1).map(|x| x / align * align)
}

impl RegionGeometry {
    /// Computes the layout. `arena_len` is rounded up to the page size.
    pub fn new(
        n_queues: u32,
        sq_entries: u32,
        cq_entries: u32,
        arena_len: u64,
        page_size: u32,
    ) -> Result<Self, GeometryError> {
        if n_queues == 0 || n_queues > MAX_QUEUES {
            return Err(GeometryError::BadQueueCount(n_queues));
        }
        check_entries("sq_entries", sq_entries)?;
        if sq_entries > MAX_SQ_ENTRIES {
            return Err(GeometryError::BadEntries {
                what: "sq_entries",
                value: sq_entries,
            });
        }
        check_entries("cq_entries", cq_entries)?;
        if cq_entries < sq_entries {
            return Err(GeometryError::BadEntries {
                what: "cq_entries",
                value: cq_entries,
            });
        }
        if page_size != 4096 && page_size != 2 << 20 {
            return Err(GeometryError::BadPageSize(page_size));
        }
        let page = u64::from(page_size);
        let sqe = core::mem::size_of::<Sqe>() as u64;
        let cqe = core::mem::size_of::<Cqe>() as u64;
        let queue_bytes =
            QUEUE_CONTROL_LEN + u64::from(sq_entries) * sqe + u64::from(cq_entries) * cqe;
        let queue_stride = round_up(queue_bytes, 4096).ok_or(GeometryError::TooLarge)?;
        let queue_offset = HEADER_LEN;
        let queues_end = u64::from(n_queues)
            .checked_mul(queue_stride)
            .and_then(|q| q.checked_add(queue_offset))
            .ok_or(GeometryError::TooLarge)?;
        let arena_offset = round_up(queues_end, page).ok_or(GeometryError::TooLarge)?;
        let arena_len = round_up(arena_len, page).ok_or(GeometryError::TooLarge)?;
        let region_len = arena_offset
            .checked_add(arena_len)
            .ok_or(GeometryError::TooLarge)?;
        Ok(Self {
            n_queues,
            sq_entries,
            cq_entries,
            page_size,
            queue_offset,
            queue_stride,
            arena_offset,
            arena_len,
            region_len,
        })
    }

    /// Region offset of queue pair `q`'s [`crate::QueueControl`].
    pub fn queue_control(&self, q: u32) -> u64 {
        debug_assert!(q < self.n_queues);
        self.queue_offset + u64::from(q) * self.queue_stride
    }

    /// Region offset of queue pair `q`'s SQE array.
    pub fn sqes(&self, q: u32) -> u64 {
        self.queue_control(q) + QUEUE_CONTROL_LEN
    }

    /// Region offset of queue pair `q`'s CQE array.
    pub fn cqes(&self, q: u32) -> u64 {
        self.sqes(q) + u64::from(self.sq_entries) * core::mem::size_of::<Sqe>() as u64
    }

    /// True when `[offset, offset + len)` lies inside the data arena (no overflow).
    pub fn in_arena(&self, offset: u64, len: u64) -> bool {
        let arena_end = self.arena_offset + self.arena_len;
        offset >= self.arena_offset && offset.checked_add(len).is_some_and(|end| end <= arena_end)
    }

    /// The header the daemon writes at offset 0.
    pub fn header(&self, client_id: u64) -> RegionHeader {
        RegionHeader {
            magic: REGION_MAGIC,
            abi_version: ABI_VERSION,
            header_len: HEADER_LEN as u32,
            region_len: self.region_len,
            page_size: self.page_size,
            n_queues: self.n_queues,
            sq_entries: self.sq_entries,
            cq_entries: self.cq_entries,
            queue_offset: self.queue_offset,
            queue_stride: self.queue_stride,
            arena_offset: self.arena_offset,
            arena_len: self.arena_len,
            client_id,
            reserved: [0; 48],
        }
    }

    /// Validates a header copied out of a region of `region_len` bytes and returns its geometry.
    /// Every derived field must equal what the sizes imply, so a client never trusts an offset
    /// it did not compute itself.
    pub fn from_header(h: &RegionHeader, region_len: u64) -> Result<Self, GeometryError> {
        if h.magic != REGION_MAGIC {
            return Err(GeometryError::HeaderMismatch("magic"));
        }
        if h.abi_version != ABI_VERSION {
            return Err(GeometryError::HeaderMismatch("abi_version"));
        }
        if u64::from(h.header_len) != HEADER_LEN {
            return Err(GeometryError::HeaderMismatch("header_len"));
        }
        let g = Self::new(
            h.n_queues,
            h.sq_entries,
            h.cq_entries,
            h.arena_len,
            h.page_size,
        )?;
        let checks = [
            (
                "region_len",
                h.region_len == g.region_len && g.region_len <= region_len,
            ),
            ("queue_offset", h.queue_offset == g.queue_offset),
            ("queue_stride", h.queue_stride == g.queue_stride),
            ("arena_offset", h.arena_offset == g.arena_offset),
            ("arena_len", h.arena_len == g.arena_len),
        ];
        for (field, ok) in checks {
            if !ok {
                return Err(GeometryError::HeaderMismatch(field));
            }
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_page_aligned_and_round_trips() {
        let g = RegionGeometry::new(2, 256, 512, 1 << 20, 4096).unwrap();
        assert_eq!(g.queue_offset, 4096);
        assert_eq!(g.queue_stride % 4096, 0);
        assert_eq!(g.arena_offset % 4096, 0);
        assert!(g.cqes(1) + 512 * 32 <= g.arena_offset);
        assert_eq!(
            RegionGeometry::from_header(&g.header(7), g.region_len),
            Ok(g)
        );
        let huge = RegionGeometry::new(2, 256, 512, 1, 2 << 20).unwrap();
        assert_eq!(huge.arena_offset % (2 << 20), 0);
        assert_eq!(huge.region_len % (2 << 20), 0);
    }

    #[test]
    fn refuses_bad_sizes_and_lying_headers() {
        assert!(RegionGeometry::new(0, 256, 512, 4096, 4096).is_err());
        assert!(RegionGeometry::new(1, 100, 512, 4096, 4096).is_err());
        assert!(RegionGeometry::new(1, 256, 128, 4096, 4096).is_err());
        assert!(RegionGeometry::new(1, 256, 512, 4096, 8192).is_err());
        assert!(RegionGeometry::new(1, 256, 512, u64::MAX - 10, 4096).is_err());
        let g = RegionGeometry::new(1, 64, 128, 8192, 4096).unwrap();
        let mut h = g.header(1);
        h.arena_offset += 4096;
        assert_eq!(
            RegionGeometry::from_header(&h, g.region_len),
            Err(GeometryError::HeaderMismatch("arena_offset"))
        );
        assert!(RegionGeometry::from_header(&g.header(1), g.region_len - 1).is_err());
    }

    #[test]
    fn in_arena_rejects_overflow_and_edges() {
        let g = RegionGeometry::new(1, 64, 128, 8192, 4096).unwrap();
        assert!(g.in_arena(g.arena_offset, g.arena_len));
        assert!(!g.in_arena(g.arena_offset, g.arena_len + 1));
        assert!(!g.in_arena(g.arena_offset - 1, 1));
        assert!(!g.in_arena(u64::MAX, 2));
        assert!(g.in_arena(g.arena_offset + g.arena_len, 0));
    }
}
