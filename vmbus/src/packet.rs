//! VMBus packet encoding and validated decoding (`reference/vmbus.md` §2).
//!
//! Encoders write a whole packet — descriptor, type-specific header, payload, zero padding to
//! 8 bytes — into a caller-owned `Vec<u8>` (reused across packets), ready for
//! [`OutgoingRing::write`](crate::ring::OutgoingRing::write). The ring adds the trailer.
//!
//! [`decode`] parses a private copy of a packet (as returned by
//! [`IncomingRing::read_packet`](crate::ring::IncomingRing::read_packet)) and rejects
//! everything §2.4 calls corruption: `offset8 < 2`, `len8 < offset8`, unknown flag bits, types
//! other than in-band (0x6), GPA-direct (0x9) and completion (0xb), a GPA header shorter than
//! 24 bytes, no ranges, `byte_count == 0`, `byte_offset > 0xfff`, and PFN lists that do not end
//! exactly at `offset8 * 8`. Transfer-page packets (0x7) are host→guest only in practice and
//! are not used by the blob device, so they are rejected as an unknown type.

use blobring_abi::vmbus::{
    GpaDirectHeader, GpaRange, HV_PAGE_SIZE, PKT_COMP, PKT_DATA_INBAND, PKT_DATA_USING_GPA_DIRECT,
    PKT_FLAG_COMPLETION_REQUESTED, PacketDescriptor,
};
use zerocopy::{FromBytes, IntoBytes};

use crate::ring::{Corruption, MAX_PACKET_LEN, align8};

/// Why a packet could not be encoded (a local mistake, not a peer fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Transaction id 0 on a packet that requests a completion: Hyper-V ignores those (§2.5).
    #[error("transaction id 0 is reserved: Hyper-V never completes such requests")]
    ZeroTransId,
    /// The packet would be longer than `len8` (a u16) can describe.
    #[error("packet of {0} bytes exceeds the VMBus maximum of 524280")]
    TooLarge(u64),
    /// A GPA-direct packet with no range.
    #[error("a GPA-direct packet needs at least one range")]
    NoRanges,
    /// A range with `byte_count == 0`, `byte_offset > 0xfff`, or a PFN count other than
    /// `ceil((byte_offset + byte_count) / 4096)`.
    #[error(
        "GPA range {0} is invalid (zero length, offset beyond the first page, or wrong PFN count)"
    )]
    BadRange(usize),
}

/// One GPA range to encode: `byte_count` bytes starting `byte_offset` bytes into the first of
/// `pfns` (guest-physical 4 KiB frame numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpaRangeRef<'a> {
    /// Offset of the first byte in the first page (< 4096).
    pub byte_offset: u32,
    /// Bytes described (non-zero).
    pub byte_count: u32,
    /// `ceil((byte_offset + byte_count) / 4096)` frame numbers.
    pub pfns: &'a [u64],
}

/// Pages spanned by `len` bytes starting `offset` bytes into a page.
pub fn page_count(offset: u64, len: u64) -> u64 {
    ((offset % HV_PAGE_SIZE) + len).div_ceil(HV_PAGE_SIZE)
}

fn push_descriptor(
    out: &mut Vec<u8>,
    packet_type: u16,
    header_len: u64,
    payload_len: u64,
    flags: u16,
    trans_id: u64,
) -> Result<(), EncodeError> {
    let total = header_len + payload_len;
    if total > u64::from(MAX_PACKET_LEN) {
        return Err(EncodeError::TooLarge(total));
    }
    let desc = PacketDescriptor {
        packet_type,
        offset8: (header_len / 8) as u16,
        len8: (align8(total as u32) / 8) as u16,
        flags,
        trans_id,
    };
    out.clear();
    out.reserve(align8(total as u32) as usize);
    out.extend_from_slice(desc.as_bytes());
    Ok(())
}

fn pad8(out: &mut Vec<u8>) {
    let padded = align8(out.len() as u32) as usize;
    out.resize(padded, 0);
}

/// Encodes an in-band data packet (type 0x6, offset8 = 2). `completion_requested` sets
/// flags = 1 and then `trans_id` must not be 0.
pub fn encode_inband(
    out: &mut Vec<u8>,
    trans_id: u64,
    completion_requested: bool,
    payload: &[u8],
) -> Result<(), EncodeError> {
    if completion_requested && trans_id == 0 {
        return Err(EncodeError::ZeroTransId);
    }
    let flags = if completion_requested {
        PKT_FLAG_COMPLETION_REQUESTED
    } else {
        0
    };
    push_descriptor(
        out,
        PKT_DATA_INBAND,
        16,
        payload.len() as u64,
        flags,
        trans_id,
    )?;
    out.extend_from_slice(payload);
    pad8(out);
    Ok(())
}

/// Encodes a completion packet (type 0xb, flags = 0) for the request `trans_id`.
pub fn encode_completion(
    out: &mut Vec<u8>,
    trans_id: u64,
    payload: &[u8],
) -> Result<(), EncodeError> {
    push_descriptor(out, PKT_COMP, 16, payload.len() as u64, 0, trans_id)?;
    out.extend_from_slice(payload);
    pad8(out);
    Ok(())
}

/// Encodes a GPA-direct packet (type 0x9, always flags = 1, §2.2): `reserved`, `range_count`,
/// the ranges with their PFNs, then `payload` at `offset8 * 8`. `trans_id` must not be 0.
pub fn encode_gpa_direct(
    out: &mut Vec<u8>,
    trans_id: u64,
    ranges: &[GpaRangeRef<'_>],
    payload: &[u8],
) -> Result<(), EncodeError> {
    if trans_id == 0 {
        return Err(EncodeError::ZeroTransId);
    }
    if ranges.is_empty() {
        return Err(EncodeError::NoRanges);
    }
    let mut header_len: u64 = 24;
    for (i, r) in ranges.iter().enumerate() {
        if r.byte_count == 0
            || u64::from(r.byte_offset) >= HV_PAGE_SIZE
            || r.pfns.len() as u64 != page_count(r.byte_offset.into(), r.byte_count.into())
        {
            return Err(EncodeError::BadRange(i));
        }
        header_len += 8 + 8 * r.pfns.len() as u64;
    }
    if header_len + payload.len() as u64 > u64::from(MAX_PACKET_LEN) {
        return Err(EncodeError::TooLarge(header_len + payload.len() as u64));
    }
    push_descriptor(
        out,
        PKT_DATA_USING_GPA_DIRECT,
        header_len,
        payload.len() as u64,
        PKT_FLAG_COMPLETION_REQUESTED,
        trans_id,
    )?;
    let gpa = GpaDirectHeader {
        reserved: 0,
        range_count: ranges.len() as u32,
    };
    out.extend_from_slice(gpa.as_bytes());
    for r in ranges {
        let hdr = GpaRange {
            byte_count: r.byte_count,
            byte_offset: r.byte_offset,
        };
        out.extend_from_slice(hdr.as_bytes());
        for pfn in r.pfns {
            out.extend_from_slice(&pfn.to_le_bytes());
        }
    }
    out.extend_from_slice(payload);
    pad8(out);
    Ok(())
}

/// A decoded packet borrowing the private copy it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The descriptor (validated).
    pub desc: PacketDescriptor,
    /// Type-specific part.
    pub kind: PacketKind<'a>,
    /// Bytes from `offset8 * 8` to `len8 * 8` (the device message, with the sender's padding).
    pub payload: &'a [u8],
}

impl Packet<'_> {
    /// The transaction id.
    pub fn trans_id(&self) -> u64 {
        self.desc.trans_id
    }

    /// The sender asked for a completion (flags bit 0).
    pub fn completion_requested(&self) -> bool {
        self.desc.flags & PKT_FLAG_COMPLETION_REQUESTED != 0
    }
}

/// The type of a decoded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind<'a> {
    /// 0x6: in-band data.
    InBand,
    /// 0x9: data described by guest-physical ranges (validated).
    GpaDirect(GpaRanges<'a>),
    /// 0xb: completion of the request with the same transaction id.
    Completion,
}

/// The validated range list of a GPA-direct packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpaRanges<'a> {
    count: u32,
    /// The range headers and PFNs, exactly (`offset8 * 8 - 24` bytes).
    bytes: &'a [u8],
}

impl<'a> GpaRanges<'a> {
    /// Number of ranges (at least 1).
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Always false: decoding rejects GPA-direct packets without ranges.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The ranges in order.
    pub fn iter(&self) -> impl Iterator<Item = GpaRangeView<'a>> + 'a {
        let mut rest = self.bytes;
        (0..self.count).map_while(move |_| {
            let (range, tail) = split_range(rest).ok()?;
            rest = tail;
            Some(range)
        })
    }
}

/// One validated GPA range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpaRangeView<'a> {
    /// Bytes described (non-zero).
    pub byte_count: u32,
    /// Offset of the first byte in the first page (< 4096).
    pub byte_offset: u32,
    pfns: &'a [u8],
}

impl GpaRangeView<'_> {
    /// Number of PFNs (`ceil((byte_offset + byte_count) / 4096)`).
    pub fn pfn_count(&self) -> usize {
        self.pfns.len() / 8
    }

    /// PFN `i`, if in range.
    pub fn pfn(&self, i: usize) -> Option<u64> {
        let b = self.pfns.get(i * 8..i * 8 + 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    /// The PFNs in order.
    pub fn pfns(&self) -> impl Iterator<Item = u64> + '_ {
        self.pfns
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
    }
}

/// Splits one range (header + PFNs) off the front of `bytes`, validating it (§2.3).
fn split_range(bytes: &[u8]) -> Result<(GpaRangeView<'_>, &[u8]), RangeFault> {
    let (hdr, rest) = GpaRange::read_from_prefix(bytes).map_err(|_| RangeFault::Truncated)?;
    if hdr.byte_count == 0 {
        return Err(RangeFault::ZeroCount);
    }
    if u64::from(hdr.byte_offset) >= HV_PAGE_SIZE {
        return Err(RangeFault::Offset(hdr.byte_offset));
    }
    let n = page_count(hdr.byte_offset.into(), hdr.byte_count.into()) as usize;
    if rest.len() < n * 8 {
        return Err(RangeFault::Truncated);
    }
    let (pfns, tail) = rest.split_at(n * 8);
    Ok((
        GpaRangeView {
            byte_count: hdr.byte_count,
            byte_offset: hdr.byte_offset,
            pfns,
        },
        tail,
    ))
}

enum RangeFault {
    Truncated,
    ZeroCount,
    Offset(u32),
}

/// A packet the host wrote on a guest's incoming ring, checked for framing only: what the
/// `hv_azure_blob` driver reads as a reply.
///
/// The driver's receive callback takes every packet off its ring, looks up the request by
/// `trans_id` and copies `az_blob_vsp_response` from `hv_pkt_data(desc)` (`desc + offset8 * 8`)
/// without looking at the packet type or flags (`vmbus/SOURCES.md`). So the guest accepts a
/// reply of any type, where [`decode`] (the host's check of guest packets, and OV's rule)
/// refuses types other than 0x6, 0x9 and 0xb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply<'a> {
    /// The descriptor (framing validated: `offset8 >= 2`, `len8 >= offset8`, length matches).
    pub desc: PacketDescriptor,
    /// Bytes from `offset8 * 8` to `len8 * 8`: `hv_pkt_data` and what follows.
    pub payload: &'a [u8],
}

impl Reply<'_> {
    /// The transaction id.
    pub fn trans_id(&self) -> u64 {
        self.desc.trans_id
    }

    /// The packet type (0xb for a completion).
    pub fn packet_type(&self) -> u16 {
        self.desc.packet_type
    }

    /// True for a completion packet (type 0xb), the type the host is expected to use.
    pub fn is_completion(&self) -> bool {
        self.desc.packet_type == PKT_COMP
    }
}

/// The §2.4 framing of a descriptor, `offset8 >= 2` and `len8 >= offset8`; returns the
/// packet's length, `len8 * 8` (what a ring reader checks against what is available, and a
/// decoder against the bytes it was given).
pub(crate) fn framed_len(desc: &PacketDescriptor) -> Result<u32, Corruption> {
    if desc.offset8 < 2 {
        return Err(Corruption::OffsetTooSmall(desc.offset8));
    }
    if desc.len8 < desc.offset8 {
        return Err(Corruption::LenBelowOffset {
            len8: desc.len8,
            offset8: desc.offset8,
        });
    }
    Ok(u32::from(desc.len8) * 8)
}

/// Decodes a packet copied out of the guest's incoming ring as a [`Reply`]: validates the
/// framing (`offset8 >= 2`, `len8 >= offset8`, `buf.len() == len8 * 8`) and nothing else.
pub fn decode_reply(buf: &[u8]) -> Result<Reply<'_>, Corruption> {
    let Ok((desc, _)) = PacketDescriptor::read_from_prefix(buf) else {
        return Err(Corruption::Truncated(buf.len() as u32));
    };
    let len = framed_len(&desc)?;
    if buf.len() != len as usize {
        return Err(Corruption::LengthMismatch {
            expected: len,
            actual: buf.len() as u32,
        });
    }
    Ok(Reply {
        desc,
        payload: &buf[usize::from(desc.offset8) * 8..],
    })
}

/// Decodes and validates a packet copied out of a ring (`buf.len()` must be `len8 * 8`).
pub fn decode(buf: &[u8]) -> Result<Packet<'_>, Corruption> {
    // The framing checks are the reply's; a packet also has known flags and a typed payload.
    let Reply { desc, .. } = decode_reply(buf)?;
    if desc.flags & !PKT_FLAG_COMPLETION_REQUESTED != 0 {
        return Err(Corruption::UnknownFlags(desc.flags));
    }
    let header = u32::from(desc.offset8) * 8;
    let payload = &buf[header as usize..];
    let kind = match desc.packet_type {
        PKT_DATA_INBAND => PacketKind::InBand,
        PKT_COMP => PacketKind::Completion,
        PKT_DATA_USING_GPA_DIRECT => {
            if header < 24 {
                return Err(Corruption::GpaHeaderTooShort(header));
            }
            // Reserved (bytes 16..20) may hold garbage (§2.4); only range_count matters.
            let (gpa, _) = GpaDirectHeader::read_from_prefix(&buf[16..])
                .map_err(|_| Corruption::GpaHeaderTooShort(header))?;
            if gpa.range_count == 0 {
                return Err(Corruption::NoRanges);
            }
            let bytes = &buf[24..header as usize];
            let mut rest = bytes;
            // Bounded: every range consumes at least 16 bytes of a header ≤ 512 KiB, so a huge
            // range_count fails with RangeTruncated long before the counter runs out.
            for i in 0..gpa.range_count {
                match split_range(rest) {
                    Ok((_, tail)) => rest = tail,
                    Err(RangeFault::Truncated) => return Err(Corruption::RangeTruncated(i)),
                    Err(RangeFault::ZeroCount) => return Err(Corruption::ZeroByteCount(i)),
                    Err(RangeFault::Offset(byte_offset)) => {
                        return Err(Corruption::ByteOffsetTooLarge {
                            range: i,
                            byte_offset,
                        });
                    }
                }
            }
            if !rest.is_empty() {
                return Err(Corruption::GpaLengthMismatch {
                    header,
                    used: header - rest.len() as u32,
                });
            }
            PacketKind::GpaDirect(GpaRanges {
                count: gpa.range_count,
                bytes,
            })
        }
        other => return Err(Corruption::UnknownType(other)),
    };
    Ok(Packet {
        desc,
        kind,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpa_packet() -> Vec<u8> {
        let mut out = Vec::new();
        let pfns_a = [10u64, 11, 12];
        let pfns_b = [99u64];
        let ranges = [
            GpaRangeRef {
                byte_offset: 100,
                byte_count: 8192,
                pfns: &pfns_a,
            },
            GpaRangeRef {
                byte_offset: 0,
                byte_count: 4096,
                pfns: &pfns_b,
            },
        ];
        encode_gpa_direct(&mut out, 7, &ranges, b"hello").unwrap();
        out
    }

    #[test]
    fn gpa_round_trip_multi_range() {
        let out = gpa_packet();
        // offset8 = (24 + (8 + 24) + (8 + 8)) / 8 = 9; len8 = 9 + 1.
        assert_eq!(&out[0..8], &[9, 0, 9, 0, 10, 0, 1, 0]);
        let p = decode(&out).unwrap();
        assert_eq!(p.trans_id(), 7);
        assert!(p.completion_requested());
        assert_eq!(&p.payload[..5], b"hello");
        let PacketKind::GpaDirect(ranges) = p.kind else {
            panic!("not gpa")
        };
        let v: Vec<_> = ranges.iter().collect();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].byte_offset, 100);
        assert_eq!(v[0].pfns().collect::<Vec<_>>(), vec![10, 11, 12]);
        assert_eq!(v[1].pfn(0), Some(99));
        assert_eq!(v[1].pfn(1), None);
    }

    #[test]
    fn inband_and_completion_round_trip() {
        let mut out = Vec::new();
        encode_inband(&mut out, 5, true, b"abc").unwrap();
        assert_eq!(out.len(), 24);
        let p = decode(&out).unwrap();
        assert_eq!(p.kind, PacketKind::InBand);
        assert_eq!(p.payload, b"abc\0\0\0\0\0");
        encode_completion(&mut out, 5, &[1; 12]).unwrap();
        let p = decode(&out).unwrap();
        assert_eq!(p.kind, PacketKind::Completion);
        assert!(!p.completion_requested());
        assert_eq!(p.desc.len8, 4);
    }

    #[test]
    fn replies_of_any_type_decode_with_framing_checked() {
        // Hand-built as the host would write them: type 0x6 (in-band), 0x7 and 0x1234, each
        // with a 12-byte payload padded to 16, flags garbage; offset8 = 2, len8 = 4.
        for (ty, flags) in [(0x6u16, 0u16), (0x7, 1), (0x1234, 0xff)] {
            let mut b = vec![0u8; 32];
            set_u16(&mut b, 0, ty);
            set_u16(&mut b, 2, 2);
            set_u16(&mut b, 4, 4);
            set_u16(&mut b, 6, flags);
            b[8..16].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
            b[16..28].copy_from_slice(&[9; 12]);
            let r = decode_reply(&b).unwrap();
            assert_eq!(r.packet_type(), ty);
            assert!(!r.is_completion());
            assert_eq!(r.trans_id(), 0x0102_0304_0506_0708);
            assert_eq!(&r.payload[..12], &[9; 12]);
            assert_eq!(r.payload.len(), 16);
            if ty != 0x6 {
                assert!(decode(&b).is_err(), "the strict decoder refuses {ty:#x}");
            }
        }
        // Framing is still checked.
        let mut b = vec![0u8; 32];
        set_u16(&mut b, 0, 0xb);
        set_u16(&mut b, 2, 1);
        set_u16(&mut b, 4, 4);
        assert_eq!(decode_reply(&b), Err(Corruption::OffsetTooSmall(1)));
        set_u16(&mut b, 2, 5);
        assert!(matches!(
            decode_reply(&b),
            Err(Corruption::LenBelowOffset { .. })
        ));
        set_u16(&mut b, 2, 2);
        set_u16(&mut b, 4, 3);
        assert!(matches!(
            decode_reply(&b),
            Err(Corruption::LengthMismatch { .. })
        ));
        set_u16(&mut b, 4, 4);
        assert!(decode_reply(&b).unwrap().is_completion());
        assert!(matches!(
            decode_reply(&b[..8]),
            Err(Corruption::Truncated(8))
        ));
    }

    #[test]
    fn encode_rejects_bad_input() {
        let mut out = Vec::new();
        assert_eq!(
            encode_inband(&mut out, 0, true, b""),
            Err(EncodeError::ZeroTransId)
        );
        assert_eq!(
            encode_gpa_direct(&mut out, 0, &[], b""),
            Err(EncodeError::ZeroTransId)
        );
        assert_eq!(
            encode_gpa_direct(&mut out, 1, &[], b""),
            Err(EncodeError::NoRanges)
        );
        let r = GpaRangeRef {
            byte_offset: 4000,
            byte_count: 200,
            pfns: &[1],
        };
        assert_eq!(
            encode_gpa_direct(&mut out, 1, &[r], b""),
            Err(EncodeError::BadRange(0))
        );
        let big = vec![0u8; MAX_PACKET_LEN as usize];
        assert!(matches!(
            encode_inband(&mut out, 1, false, &big),
            Err(EncodeError::TooLarge(_))
        ));
    }

    fn set_u16(b: &mut [u8], off: usize, v: u16) {
        b[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn set_u32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn decode_rejects_each_malformed_case() {
        let good = gpa_packet();
        decode(&good).unwrap();
        let case = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            decode(&b).unwrap_err()
        };
        // (offset, bytes, value) written over the good packet, and the error decode reports.
        let cases = [
            (2, 2, 1, Corruption::OffsetTooSmall(1)),
            (
                4,
                2,
                8,
                Corruption::LenBelowOffset {
                    len8: 8,
                    offset8: 9,
                },
            ),
            (6, 2, 3, Corruption::UnknownFlags(3)),
            (0, 2, 0x7, Corruption::UnknownType(7)),
            (0, 2, 0x1, Corruption::UnknownType(1)),
            (20, 4, 0, Corruption::NoRanges),
            (20, 4, 3, Corruption::RangeTruncated(2)),
            (20, 4, u32::MAX, Corruption::RangeTruncated(2)),
            (24, 4, 0, Corruption::ZeroByteCount(0)),
            (
                28,
                4,
                0x1000,
                Corruption::ByteOffsetTooLarge {
                    range: 0,
                    byte_offset: 0x1000,
                },
            ),
            // Only one range: 8 spare header bytes remain.
            (
                20,
                4,
                1,
                Corruption::GpaLengthMismatch {
                    header: 72,
                    used: 56,
                },
            ),
        ];
        for (off, bytes, value, expected) in cases {
            let le = value.to_le_bytes();
            let got = case(&|b| b[off..off + bytes].copy_from_slice(&le[..bytes]));
            assert_eq!(got, expected, "{value:#x} at {off}");
        }
        assert!(matches!(
            case(&|b| set_u16(b, 4, 11)),
            Corruption::LengthMismatch { .. }
        ));
        // First range now needs 2 PFNs instead of 3: the second range header is misparsed.
        assert!(matches!(
            case(&|b| set_u32(b, 24, 100)),
            Corruption::RangeTruncated(_) | Corruption::GpaLengthMismatch { .. }
        ));
        // A GPA header shorter than its fixed part.
        let mut short = Vec::new();
        encode_inband(&mut short, 1, true, &[0; 16]).unwrap();
        set_u16(&mut short, 0, PKT_DATA_USING_GPA_DIRECT);
        assert_eq!(
            decode(&short).unwrap_err(),
            Corruption::GpaHeaderTooShort(16)
        );
        assert!(matches!(decode(&good[..8]), Err(Corruption::Truncated(8))));
        // Reserved garbage is tolerated.
        let mut b = good.clone();
        set_u32(&mut b, 16, 0xdead_beef);
        decode(&b).unwrap();
    }
}
