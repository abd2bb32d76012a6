//! The VMBus ring buffer, byte-compatible with Hyper-V (`reference/vmbus.md` §1).
//!
//! One ring is a header holding the 4096-byte control page
//! ([`blobring_abi::vmbus::RingControl`]) followed by a data area of `dsize` bytes. The header is
//! one guest page: 4096 bytes on `sim` and on 4 KiB-page kernels, but Linux pads
//! `struct hv_ring_buffer` to the guest's `PAGE_SIZE`, so under `uio_hv_generic` on a 64 KiB-page
//! kernel the data area starts at byte 65536 of each ring (the hypervisor sees only the first
//! 4 KiB of the header; `hv_ring_gpadl_send_hvpgoffset` in drivers/hv/channel.c skips the gap).
//! [`OutgoingRing::with_header`] and [`IncomingRing::with_header`] take the header size; see
//! `vmbus/SOURCES.md`. The same code serves both sides of a channel: the guest produces
//! on its outgoing (TX) ring and consumes its incoming (RX) ring; the emulated host does the
//! opposite on the same two rings.
//!
//! * [`OutgoingRing`] is the producer half: it copies packets (8-byte aligned, zero padded, each
//!   followed by the 8-byte trailer `start << 32`) at a private write index, splitting every copy
//!   at the end of the data area (a userspace mapping is linear, not double-mapped, §1.5), and
//!   publishes them with [`OutgoingRing::commit_write`], which tells the caller whether the peer
//!   must be signalled (only on empty → non-empty with `interrupt_mask` clear, §1.6 step 4).
//! * [`IncomingRing`] is the consumer half: it copies packets out at a private read index
//!   (batching) and publishes the read index with [`IncomingRing::commit_read`], which tells the
//!   caller whether the peer must be signalled (only when the free space crosses the producer's
//!   `pending_send_sz`, §1.7 step 4).
//!
//! Every index the peer writes is validated on every load (inside the data area, a multiple of
//! 8); a bad one is a [`Corruption`], never a panic or an out-of-bounds access. The index each
//! half writes itself is read from shared memory once, at construction, and kept privately.

use std::sync::atomic::Ordering;

use blobring_abi::vmbus::{
    PACKET_TRAILER_LEN, PacketDescriptor, RING_CONTROL_LEN, RING_FEAT_PENDING_SEND_SZ, rc,
};
use blobring_shm::{AccessError, SharedMemory};

/// Header size of a ring with 4 KiB guest pages (and of every `sim` ring): the control page.
pub const DEFAULT_HEADER: u64 = RING_CONTROL_LEN;
/// Largest header accepted (a 64 KiB guest page; arm64 kernels go no higher).
pub const MAX_HEADER: u64 = 64 << 10;
/// Bytes of the trailer.
const TRAILER: u32 = PACKET_TRAILER_LEN as u32;
/// Bytes of a packet descriptor.
const DESC: u32 = 16;
/// Smallest data area accepted: room for one small packet plus the never-full gap.
pub const MIN_DATA_SIZE: u32 = 64;
/// Largest packet (descriptor to padding, trailer excluded) the `len8: u16` field can describe.
pub const MAX_PACKET_LEN: u32 = u16::MAX as u32 * 8;

/// Rounds `n` up to a multiple of 8 (saturating at `u32::MAX & !7` for absurd inputs).
pub const fn align8(n: u32) -> u32 {
    n.saturating_add(7) & !7
}

/// Why a ring cannot be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The memory is not a header plus a data area of a multiple of 8 bytes.
    #[error(
        "ring memory of {size} bytes is not a {header}-byte header plus at least {MIN_DATA_SIZE} \
         data bytes (a multiple of 8, below 4 GiB)"
    )]
    BadSize {
        /// Bytes of the ring memory.
        size: u64,
        /// Bytes of the header (one guest page).
        header: u64,
    },
    /// The header size is not a power of two between 4 KiB and 64 KiB.
    #[error(
        "ring header of {0} bytes: the header is one guest page, a power of two from 4096 to \
         65536 bytes"
    )]
    BadHeader(u64),
    /// The index this side owns is already invalid.
    #[error("ring is corrupt at setup: {0}")]
    Corrupt(#[from] Corruption),
    /// The memory refused an access.
    #[error("ring memory access failed: {0}")]
    Access(#[from] AccessError),
}

/// The peer broke the ring or packet format. The channel cannot be trusted any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// A peer-written index is outside the data area or not a multiple of 8 (§1.3).
    #[error("peer wrote {field} = {value}, outside the {dsize}-byte data area or not 8-aligned")]
    BadIndex {
        /// `write_index` or `read_index`.
        field: &'static str,
        /// The value read.
        value: u32,
        /// Bytes of the data area.
        dsize: u32,
    },
    /// Fewer bytes are readable than the smallest packet (descriptor + trailer).
    #[error("only {0} bytes readable: shorter than the smallest packet")]
    Truncated(u32),
    /// `offset8 < 2` (§2.4).
    #[error("packet offset8 {0} is below the 16-byte descriptor")]
    OffsetTooSmall(u16),
    /// `len8 < offset8` (§2.4).
    #[error("packet len8 {len8} is below its offset8 {offset8}")]
    LenBelowOffset {
        /// `len8`.
        len8: u16,
        /// `offset8`.
        offset8: u16,
    },
    /// `len8 * 8` plus the trailer is more than is readable (§2.4).
    #[error("packet of {len} bytes plus trailer exceeds the {avail} readable bytes")]
    PacketTooLong {
        /// `len8 * 8`.
        len: u32,
        /// Readable bytes.
        avail: u32,
    },
    /// A packet buffer handed to the decoder does not match its own `len8`.
    #[error("packet buffer of {actual} bytes but len8 says {expected}")]
    LengthMismatch {
        /// `len8 * 8`.
        expected: u32,
        /// Bytes given.
        actual: u32,
    },
    /// Flag bits other than COMPLETION_REQUESTED (§2.4).
    #[error("unknown packet flags {0:#x}")]
    UnknownFlags(u16),
    /// A packet type other than in-band, GPA-direct or completion (§2.2).
    #[error("unsupported packet type {0:#x}")]
    UnknownType(u16),
    /// A GPA-direct packet whose header is shorter than its fixed part (§2.4).
    #[error("GPA-direct header of {0} bytes is shorter than 24")]
    GpaHeaderTooShort(u32),
    /// A GPA-direct packet with no range.
    #[error("GPA-direct packet has no ranges")]
    NoRanges,
    /// A range (or its PFN list) runs past the header (`offset8 * 8`).
    #[error("GPA range {0} runs past the packet header")]
    RangeTruncated(u32),
    /// A range with `byte_count == 0` (§2.3).
    #[error("GPA range {0} has byte_count 0")]
    ZeroByteCount(u32),
    /// A range with `byte_offset > 0xfff` (§2.3).
    #[error("GPA range {range} has byte_offset {byte_offset} beyond the first page")]
    ByteOffsetTooLarge {
        /// Range index.
        range: u32,
        /// The offset.
        byte_offset: u32,
    },
    /// The ranges do not end exactly at `offset8 * 8` (§2.3: `offset8 = (24 + Σ(8 + 8·npfn)) / 8`).
    #[error("GPA ranges use {used} header bytes but offset8 says {header}")]
    GpaLengthMismatch {
        /// `offset8 * 8`.
        header: u32,
        /// Bytes the ranges use.
        used: u32,
    },
    /// An access to the ring memory failed (only possible with an inconsistent index).
    #[error("ring memory access failed: {0}")]
    Access(#[from] AccessError),
}

/// Why no packet was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Nothing to read: not an error of the peer.
    #[error("ring is empty")]
    Empty,
    /// The peer broke the format.
    #[error("corrupt ring: {0}")]
    Corrupt(#[from] Corruption),
}

/// Why a packet was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// Not enough room now (never-full rule, §1.3); `needed` is the ring bytes the packet takes
    /// (packet + trailer), the value to put in `pending_send_sz`.
    #[error("ring full: {needed} bytes needed, {available} free")]
    Full {
        /// Bytes the write needs (`align8(len) + 8`); the write succeeds once more than this is
        /// free.
        needed: u32,
        /// Bytes free now.
        available: u32,
    },
    /// The packet can never fit this ring, or is longer than `len8` can describe.
    #[error("packet of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Bytes of the packet.
        len: u64,
        /// Largest packet this ring takes.
        max: u32,
    },
    /// The peer broke the ring.
    #[error("corrupt ring: {0}")]
    Corrupt(#[from] Corruption),
}

impl From<AccessError> for WriteError {
    fn from(e: AccessError) -> Self {
        Self::Corrupt(e.into())
    }
}

impl From<AccessError> for ReadError {
    fn from(e: AccessError) -> Self {
        Self::Corrupt(e.into())
    }
}

/// Where a ring's data area is: at `data` (the header size), `dsize` bytes.
#[derive(Debug, Clone, Copy)]
struct Geo {
    data: u64,
    dsize: u32,
}

/// Data-area offset and size of a ring memory with a `header`-byte header, checked.
fn geometry<M: SharedMemory>(mem: &M, header: u64) -> Result<Geo, RingError> {
    if !header.is_power_of_two() || !(RING_CONTROL_LEN..=MAX_HEADER).contains(&header) {
        return Err(RingError::BadHeader(header));
    }
    let size = mem.size();
    let bad = RingError::BadSize { size, header };
    let dsize = size.checked_sub(header).ok_or(bad)?;
    if dsize < u64::from(MIN_DATA_SIZE)
        || !dsize.is_multiple_of(8)
        || dsize > u64::from(u32::MAX - 7)
    {
        return Err(bad);
    }
    Ok(Geo {
        data: header,
        dsize: dsize as u32,
    })
}

/// Prepares a ring as Linux does at open (§1.2): indices, mask and pending size zero,
/// `feature_bits = feat_pending_send_sz`. Called by whoever creates the ring memory (the
/// emulated host in `sim`; the kernel on real Hyper-V). 4096-byte header.
pub fn init_ring<M: SharedMemory>(mem: &M) -> Result<(), RingError> {
    init_ring_with_header(mem, DEFAULT_HEADER)
}

/// [`init_ring`] for a ring whose header is `header` bytes (one guest page).
pub fn init_ring_with_header<M: SharedMemory>(mem: &M, header: u64) -> Result<(), RingError> {
    geometry(mem, header)?;
    mem.fill(0, RING_CONTROL_LEN, 0)?;
    mem.store_u32(
        rc::FEATURE_BITS,
        RING_FEAT_PENDING_SEND_SZ,
        Ordering::Relaxed,
    )?;
    mem.fence(Ordering::SeqCst);
    Ok(())
}

/// Loads a peer-written index and validates it (§1.3: in `[0, dsize)`, a multiple of 8).
fn load_index<M: SharedMemory>(
    mem: &M,
    offset: u64,
    dsize: u32,
    field: &'static str,
    order: Ordering,
) -> Result<u32, Corruption> {
    let value = mem.load_u32(offset, order)?;
    if value >= dsize || !value.is_multiple_of(8) {
        return Err(Corruption::BadIndex {
            field,
            value,
            dsize,
        });
    }
    Ok(value)
}

/// `idx + n` modulo the data size (`n <= dsize`).
fn advance(idx: u32, n: u32, dsize: u32) -> u32 {
    let next = u64::from(idx) + u64::from(n);
    if next >= u64::from(dsize) {
        (next - u64::from(dsize)) as u32
    } else {
        next as u32
    }
}

/// Bytes free for the producer at write index `w` with read index `r` (§1.3 `avail_w`).
fn avail_write(w: u32, r: u32, dsize: u32) -> u32 {
    if w >= r { dsize - (w - r) } else { r - w }
}

/// Copies `src` into the data area at `idx`, splitting at the wrap (§1.5); returns the index
/// after the copy. `src.len() <= dsize`.
fn copy_to<M: SharedMemory>(mem: &M, g: Geo, idx: u32, src: &[u8]) -> Result<u32, AccessError> {
    let first = (g.dsize - idx).min(src.len() as u32) as usize;
    mem.write(g.data + u64::from(idx), &src[..first])?;
    if first < src.len() {
        mem.write(g.data, &src[first..])?;
    }
    Ok(advance(idx, src.len() as u32, g.dsize))
}

/// Zero-fills `len` bytes of the data area at `idx`, splitting at the wrap.
fn zero_at<M: SharedMemory>(mem: &M, g: Geo, idx: u32, len: u32) -> Result<u32, AccessError> {
    let first = (g.dsize - idx).min(len);
    mem.fill(g.data + u64::from(idx), u64::from(first), 0)?;
    if first < len {
        mem.fill(g.data, u64::from(len - first), 0)?;
    }
    Ok(advance(idx, len, g.dsize))
}

/// Copies `dst.len()` bytes out of the data area at `idx`, splitting at the wrap (§1.5).
fn copy_from<M: SharedMemory>(
    mem: &M,
    g: Geo,
    idx: u32,
    dst: &mut [u8],
) -> Result<(), AccessError> {
    let first = (g.dsize - idx).min(dst.len() as u32) as usize;
    mem.read(g.data + u64::from(idx), &mut dst[..first])?;
    if first < dst.len() {
        mem.read(g.data, &mut dst[first..])?;
    }
    Ok(())
}

/// What both halves of a ring keep: the memory, where its data area is, and the index this half
/// owns (the write index for the producer, the read index for the consumer), published and
/// private.
#[derive(Debug)]
struct Half<M> {
    mem: M,
    /// Offset of the data area (the header size).
    data: u64,
    dsize: u32,
    /// Our index as last published.
    committed: u32,
    /// Our private index: end of the packets written (or read) but not yet published.
    next: u32,
}

impl<M: SharedMemory> Half<M> {
    /// Checks the geometry of `mem` with a `header`-byte header and takes the current value of
    /// our own index (at `own`, named `field`) as both the published and the private index.
    fn open(mem: M, header: u64, own: u64, field: &'static str) -> Result<Self, RingError> {
        let Geo { data, dsize } = geometry(&mem, header)?;
        let index = load_index(&mem, own, dsize, field, Ordering::Acquire)?;
        Ok(Self {
            mem,
            data,
            dsize,
            committed: index,
            next: index,
        })
    }

    fn geo(&self) -> Geo {
        Geo {
            data: self.data,
            dsize: self.dsize,
        }
    }

    /// Loads and validates the index the peer owns (at `offset`, named `field`).
    fn peer_index(
        &self,
        offset: u64,
        field: &'static str,
        order: Ordering,
    ) -> Result<u32, Corruption> {
        load_index(&self.mem, offset, self.dsize, field, order)
    }
}

/// The producer half of one ring (guest TX, or host RX).
#[derive(Debug)]
pub struct OutgoingRing<M> {
    /// The ring; its own index is the write index.
    half: Half<M>,
    /// We stored a non-zero `pending_send_sz` and have not cleared it yet.
    pending_armed: bool,
}

impl<M: SharedMemory> OutgoingRing<M> {
    /// The producer half over `mem` (control page + data area). Takes the current
    /// `write_index` as its own (zero on a fresh ring; see [`init_ring`]) and sets
    /// `feat_pending_send_sz` in `feature_bits`: we promise to fill `pending_send_sz` when
    /// blocked (§1.2, as OV's outgoing ring does). The header is 4096 bytes.
    pub fn new(mem: M) -> Result<Self, RingError> {
        Self::with_header(mem, DEFAULT_HEADER)
    }

    /// [`new`](Self::new) for a ring whose header is `header` bytes: one guest `PAGE_SIZE`
    /// under `uio_hv_generic` (64 KiB on a 64 KiB-page kernel), the data area following it.
    pub fn with_header(mem: M, header: u64) -> Result<Self, RingError> {
        let half = Half::open(mem, header, rc::WRITE_INDEX, "write_index")?;
        half.mem.fetch_or_u32(
            rc::FEATURE_BITS,
            RING_FEAT_PENDING_SEND_SZ,
            Ordering::Relaxed,
        )?;
        Ok(Self {
            half,
            pending_armed: false,
        })
    }

    /// Bytes of the header before the data area.
    pub fn header_size(&self) -> u64 {
        self.half.data
    }

    /// Bytes of the data area.
    pub fn data_size(&self) -> u32 {
        self.half.dsize
    }

    /// Largest packet (trailer excluded) this ring can ever take: `total = len + 8` must stay
    /// below `dsize` (never-full rule), and `len8` is a u16.
    pub fn max_packet_len(&self) -> u32 {
        (self.half.dsize - 2 * TRAILER).min(MAX_PACKET_LEN)
    }

    /// The ring memory.
    pub fn memory(&self) -> &M {
        &self.half.mem
    }

    fn read_index(&self, order: Ordering) -> Result<u32, Corruption> {
        self.half.peer_index(rc::READ_INDEX, "read_index", order)
    }

    /// Bytes free now, counting packets written but not committed as used (§1.3 `avail_w`).
    pub fn available(&self) -> Result<u32, Corruption> {
        Ok(avail_write(
            self.half.next,
            self.read_index(Ordering::Acquire)?,
            self.half.dsize,
        ))
    }

    /// Copies one packet made of `parts` (concatenated, zero-padded to 8, then the trailer)
    /// without publishing it. Several writes may be batched before one
    /// [`commit_write`](Self::commit_write).
    pub fn write_uncommitted(&mut self, parts: &[&[u8]]) -> Result<(), WriteError> {
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let max = self.max_packet_len();
        if len > u64::from(max) {
            return Err(WriteError::TooLarge { len, max });
        }
        let padded = align8(len as u32);
        let total = padded + TRAILER;
        // Acquire: the consumer's reads of the space it freed happen before we overwrite it.
        let available = self.available()?;
        // Never-full rule (§1.3): at least 8 bytes stay free so full never looks like empty.
        if available <= total {
            return Err(WriteError::Full {
                needed: total,
                available,
            });
        }
        if self.pending_armed {
            // §1.6 step 1: clear our pending_send_sz once we can write again.
            self.half
                .mem
                .store_u32(rc::PENDING_SEND_SZ, 0, Ordering::Relaxed)?;
            self.pending_armed = false;
        }
        let start = self.half.next;
        let mut idx = start;
        for part in parts {
            idx = copy_to(&self.half.mem, self.half.geo(), idx, part)?;
        }
        idx = zero_at(&self.half.mem, self.half.geo(), idx, padded - len as u32)?;
        // Trailer: the u64 `start << 32` (bytes 0..3 zero, 4..7 the packet's start, §1.4).
        let trailer = (u64::from(start) << 32).to_le_bytes();
        self.half.next = copy_to(&self.half.mem, self.half.geo(), idx, &trailer)?;
        Ok(())
    }

    /// Publishes the packets written since the last commit (§1.6 steps 3–4). Returns `true`
    /// if the peer must be signalled: the ring went from empty to non-empty and the consumer's
    /// `interrupt_mask` is clear. Signal only then (Hyper-V throttles spurious interrupts).
    pub fn commit_write(&mut self) -> Result<bool, Corruption> {
        if self.half.next == self.half.committed {
            return Ok(false);
        }
        let old = self.half.committed;
        // Step 3: full barrier so the packet bytes are visible before the new index; the
        // release store pairs with the consumer's acquire load of write_index.
        self.half.mem.fence(Ordering::SeqCst);
        self.half
            .mem
            .store_u32(rc::WRITE_INDEX, self.half.next, Ordering::Release)?;
        self.half.committed = self.half.next;
        // Step 4: store → load. Without this SeqCst fence our index store could be ordered
        // after the loads below, and a consumer that just emptied the ring and unmasked would
        // be missed (it re-checks after unmasking; we check after publishing).
        self.half.mem.fence(Ordering::SeqCst);
        if self
            .half
            .mem
            .load_u32(rc::INTERRUPT_MASK, Ordering::Relaxed)?
            != 0
        {
            return Ok(false);
        }
        let r = self.read_index(Ordering::Acquire)?;
        Ok(r == old)
    }

    /// [`write_uncommitted`](Self::write_uncommitted) then [`commit_write`](Self::commit_write):
    /// returns whether to signal the peer.
    pub fn write(&mut self, parts: &[&[u8]]) -> Result<bool, WriteError> {
        self.write_uncommitted(parts)?;
        Ok(self.commit_write()?)
    }

    /// A blocked producer asks to be signalled once more than `needed` bytes are free (the
    /// `needed` of [`WriteError::Full`]), §1.6 step 1. Returns `true` if that much is already
    /// free (retry the write now instead of waiting). The value is cleared by the next
    /// successful write.
    pub fn set_pending_send_size(&mut self, needed: u32) -> Result<bool, Corruption> {
        let needed = align8(needed);
        self.half
            .mem
            .store_u32(rc::PENDING_SEND_SZ, needed, Ordering::Relaxed)?;
        self.pending_armed = needed != 0;
        // Store → load again: the consumer reads pending_send_sz after publishing read_index.
        self.half.mem.fence(Ordering::SeqCst);
        Ok(self.available()? > needed)
    }

    /// Clears `pending_send_sz` (e.g. when giving up on a blocked write).
    pub fn clear_pending_send_size(&mut self) -> Result<(), Corruption> {
        self.half
            .mem
            .store_u32(rc::PENDING_SEND_SZ, 0, Ordering::Relaxed)?;
        self.pending_armed = false;
        Ok(())
    }

    /// True if every committed packet has been consumed (diagnostics and tests).
    pub fn is_drained(&self) -> Result<bool, Corruption> {
        Ok(self.read_index(Ordering::Acquire)? == self.half.committed)
    }
}

/// Where the descriptor of a packet read from a ring says its parts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawPacket {
    /// The descriptor, copied once.
    pub desc: PacketDescriptor,
    /// `len8 * 8`: bytes copied into the caller's buffer.
    pub len: u32,
}

/// The consumer half of one ring (guest RX, or host TX).
#[derive(Debug)]
pub struct IncomingRing<M> {
    /// The ring; its own index is the read index.
    half: Half<M>,
}

impl<M: SharedMemory> IncomingRing<M> {
    /// The consumer half over `mem` (control page + data area). Takes the current `read_index`
    /// as its own. The header is 4096 bytes.
    pub fn new(mem: M) -> Result<Self, RingError> {
        Self::with_header(mem, DEFAULT_HEADER)
    }

    /// [`new`](Self::new) for a ring whose header is `header` bytes (one guest page; see
    /// [`OutgoingRing::with_header`]).
    pub fn with_header(mem: M, header: u64) -> Result<Self, RingError> {
        let half = Half::open(mem, header, rc::READ_INDEX, "read_index")?;
        Ok(Self { half })
    }

    /// Bytes of the header before the data area.
    pub fn header_size(&self) -> u64 {
        self.half.data
    }

    /// Bytes of the data area.
    pub fn data_size(&self) -> u32 {
        self.half.dsize
    }

    /// The ring memory.
    pub fn memory(&self) -> &M {
        &self.half.mem
    }

    fn write_index(&self) -> Result<u32, Corruption> {
        // Acquire: pairs with the producer's release store, so the packet bytes we copy next
        // are the ones written before the index was published.
        self.half
            .peer_index(rc::WRITE_INDEX, "write_index", Ordering::Acquire)
    }

    /// Bytes readable from the private read index (§1.3 `avail_r`).
    pub fn readable(&self) -> Result<u32, Corruption> {
        let w = self.write_index()?;
        Ok(self.half.dsize - avail_write(w, self.half.next, self.half.dsize))
    }

    /// Copies the next packet (`len8 * 8` bytes: descriptor, headers, payload, padding) into
    /// `buf` and advances the private read index past it and its trailer (§1.7 steps 1–2).
    /// The descriptor's lengths are validated against the readable bytes; its type, flags and
    /// headers are left to [`crate::packet::decode`]. Publish with
    /// [`commit_read`](Self::commit_read).
    pub fn read_packet(&mut self, buf: &mut Vec<u8>) -> Result<RawPacket, ReadError> {
        let avail = self.readable()?;
        if avail == 0 {
            return Err(ReadError::Empty);
        }
        // The producer publishes whole packets, so anything shorter than the smallest packet
        // is corruption, not a packet in progress.
        if avail < DESC + TRAILER {
            return Err(Corruption::Truncated(avail).into());
        }
        let mut d = [0u8; DESC as usize];
        copy_from(&self.half.mem, self.half.geo(), self.half.next, &mut d)?;
        // Copied once; only the local copy is inspected from here on.
        let desc: PacketDescriptor = zerocopy::transmute!(d);
        let len = check_lengths(&desc, avail)?;
        buf.clear();
        buf.resize(len as usize, 0);
        copy_from(&self.half.mem, self.half.geo(), self.half.next, buf)?;
        self.half.next = advance(self.half.next, len + TRAILER, self.half.dsize);
        Ok(RawPacket { desc, len })
    }

    /// Skips the packets read but not released, re-reading them next time (e.g. a packet the
    /// caller could not handle yet).
    pub fn rewind(&mut self) {
        self.half.next = self.half.committed;
    }

    /// Publishes the read index (§1.7 steps 3–4). Returns `true` if the peer must be
    /// signalled: it set `pending_send_sz` and this batch made the free space cross it.
    pub fn commit_read(&mut self) -> Result<bool, Corruption> {
        if self.half.next == self.half.committed {
            return Ok(false);
        }
        // Bytes this batch released (packets and trailers), modulo the wrap.
        let freed = if self.half.next >= self.half.committed {
            self.half.next - self.half.committed
        } else {
            self.half.dsize - self.half.committed + self.half.next
        };
        // Step 3: the release store orders our copies out of the data area before the index
        // that lets the producer overwrite them.
        self.half
            .mem
            .store_u32(rc::READ_INDEX, self.half.next, Ordering::Release)?;
        self.half.committed = self.half.next;
        // Step 4.
        let features = self
            .half
            .mem
            .load_u32(rc::FEATURE_BITS, Ordering::Relaxed)?;
        if features & RING_FEAT_PENDING_SEND_SZ == 0 {
            return Ok(false);
        }
        // Store → load: a producer that stores pending_send_sz and then re-reads read_index
        // must see our index, or we must see its pending size.
        self.half.mem.fence(Ordering::SeqCst);
        // Some peers set ring size − 1; only whole 8-byte units matter (OV commit_read).
        let pend = self
            .half
            .mem
            .load_u32(rc::PENDING_SEND_SZ, Ordering::Relaxed)?
            & !7;
        if pend == 0 {
            return Ok(false);
        }
        let cur = avail_write(self.write_index()?, self.half.committed, self.half.dsize);
        // Not enough before this batch, enough after it.
        Ok(cur.saturating_sub(freed) <= pend && cur > pend)
    }

    /// Sets or clears this ring's `interrupt_mask` (consumer-owned, §3.1). After clearing it,
    /// call [`has_data`](Self::has_data) again: a packet may have arrived while masked.
    pub fn set_interrupt_mask(&self, masked: bool) -> Result<(), Corruption> {
        self.half
            .mem
            .store_u32(rc::INTERRUPT_MASK, u32::from(masked), Ordering::Relaxed)?;
        // Store → load: our unmask must be visible before we re-check write_index, pairing
        // with the producer's fence between its index store and its mask load.
        self.half.mem.fence(Ordering::SeqCst);
        Ok(())
    }

    /// Clears `interrupt_mask` and returns whether packets are already waiting (they will not
    /// be signalled).
    pub fn arm(&self) -> Result<bool, Corruption> {
        self.set_interrupt_mask(false)?;
        self.has_data()
    }

    /// True if a packet is readable at the private read index.
    pub fn has_data(&self) -> Result<bool, Corruption> {
        Ok(self.readable()? != 0)
    }
}

/// §2.4 length checks a ring reader needs before copying: `offset8 >= 2`,
/// `len8 >= offset8`, `len8 * 8 + trailer <= avail`. Returns `len8 * 8`.
fn check_lengths(desc: &PacketDescriptor, avail: u32) -> Result<u32, Corruption> {
    let len = crate::packet::framed_len(desc)?;
    if len + TRAILER > avail {
        return Err(Corruption::PacketTooLong { len, avail });
    }
    Ok(len)
}
