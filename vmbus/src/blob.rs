//! The Azure Blob VSP messages (`reference/vmbus.md` §6.2–6.4).
//!
//! A request is a GPA-direct packet with exactly one range of `N` whole pages (`byte_offset`
//! 0, `byte_count = N * 4096`) whose PFNs are the data pages, then the request pages, then the
//! response pages; the 56-byte [`AzBlobVspRequest`] follows as the in-band payload. Its buffer
//! offsets index the virtually contiguous buffer the page list describes (§6.3). The host
//! answers with a packet carrying the same transaction id and the 12-byte
//! [`AzBlobVspResponse`] at `offset8 * 8`: a completion (0xb) is expected, but the driver reads
//! the response from a packet of any type, and so does [`parse_blob_reply`].
//!
//! Transaction ids are never 0: the encoder refuses 0 and the host-side parser rejects it.

use std::ops::Range;

use blobring_abi::vmbus::{
    AZ_BLOB_MAX_PAGES, AZ_BLOB_OP_USER_REQUEST, AZ_BLOB_VSP_PROTOCOL_VERSION, AzBlobVspRequest,
    AzBlobVspResponse, HV_PAGE_SIZE,
};
use zerocopy::{FromBytes, IntoBytes};

use blobring_shm::SharedMemory;

use crate::guest_memory::{GuestBuffer, GuestMemory, GuestMemoryError};
use crate::packet::{EncodeError, GpaRangeRef, Packet, PacketKind, encode_completion, page_count};

/// Why a blob message could not be built or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// The packet could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A buffer's page list does not match its offset and length.
    #[error("the {0} buffer's page list does not match its offset and length")]
    BadPages(&'static str),
    /// Request and response buffers must not be empty; `data_valid <= data_len`.
    #[error("invalid buffer lengths: {0}")]
    BadLengths(&'static str),
    /// More pages than one request may carry.
    #[error("{0} pages exceed the limit of {AZ_BLOB_MAX_PAGES} per request")]
    TooManyPages(u64),
    /// The packet is not a blob request (wrong type, flags, ranges or payload).
    #[error("not a blob request: {0}")]
    NotARequest(&'static str),
    /// The request names a buffer outside its page list, or a zero length.
    #[error("blob request buffer invalid: {0}")]
    BadBuffer(&'static str),
    /// Transaction id 0 (never valid for a request, §2.5).
    #[error("blob request with transaction id 0")]
    ZeroTransId,
    /// Unknown protocol version or operation.
    #[error("unsupported blob request: version {version}, operation {operation:#x}")]
    Unsupported {
        /// `version`.
        version: u32,
        /// `operation_type`.
        operation: u32,
    },
    /// The packet is not a completion with a 12-byte response.
    #[error("not a blob completion: {0}")]
    NotACompletion(&'static str),
}

/// A buffer as guest pages: `len` bytes starting `offset` bytes into the first of `pfns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferPages<'a> {
    /// Offset of the first byte in the first page (< 4096).
    pub offset: u32,
    /// Bytes of the buffer.
    pub len: u32,
    /// `ceil((offset + len) / 4096)` guest-physical frame numbers.
    pub pfns: &'a [u64],
}

impl BufferPages<'_> {
    fn check(&self, what: &'static str) -> Result<(), BlobError> {
        if u64::from(self.offset) >= HV_PAGE_SIZE
            || self.pfns.len() as u64 != page_count(self.offset.into(), self.len.into())
        {
            return Err(BlobError::BadPages(what));
        }
        Ok(())
    }
}

/// Frame numbers of a buffer that is contiguous in guest-physical space (the `sim` transport's
/// registered regions): `gpa` is the address of its first byte.
pub fn contiguous_pfns(gpa: u64, len: u32) -> impl Iterator<Item = u64> {
    let first = gpa / HV_PAGE_SIZE;
    first..first + page_count(gpa % HV_PAGE_SIZE, len.into())
}

/// What the guest asks for (§6.3 fields not derived from the page lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRequestDesc<'a> {
    /// Request deadline in milliseconds.
    pub timeout_ms: u32,
    /// Client-chosen GUID, copied byte for byte.
    pub transaction_guid: [u8; 16],
    /// The data buffer (body to write, or to receive the body read), if any.
    pub data: Option<BufferPages<'a>>,
    /// Bytes of body present in `data` (writes); ≤ its length.
    pub data_valid: u32,
    /// The HTTP request head (non-empty).
    pub request: BufferPages<'a>,
    /// The buffer receiving the response head (non-empty).
    pub response: BufferPages<'a>,
}

/// The 56-byte request for a description (§6.3 offsets).
pub fn vsp_request(desc: &BlobRequestDesc<'_>) -> AzBlobVspRequest {
    let data_pages = desc.data.map_or(0, |d| d.pfns.len() as u64);
    let request_pages = desc.request.pfns.len() as u64;
    let (data_offset, data_len) = desc.data.map_or((0, 0), |d| (d.offset, d.len));
    AzBlobVspRequest {
        version: AZ_BLOB_VSP_PROTOCOL_VERSION,
        timeout_ms: desc.timeout_ms,
        data_buffer_offset: data_offset,
        data_buffer_length: data_len,
        data_buffer_valid: desc.data_valid,
        operation_type: AZ_BLOB_OP_USER_REQUEST,
        request_buffer_offset: (u64::from(desc.request.offset) + data_pages * HV_PAGE_SIZE) as u32,
        request_buffer_length: desc.request.len,
        response_buffer_offset: (u64::from(desc.response.offset)
            + (data_pages + request_pages) * HV_PAGE_SIZE) as u32,
        response_buffer_length: desc.response.len,
        transaction_id: desc.transaction_guid,
    }
}

/// Encodes a blob request packet (§6.2): GPA-direct, one range of `N` pages (data, request,
/// response), the [`AzBlobVspRequest`] at `offset8 * 8` with `offset8 = 4 + N`,
/// `len8 = 11 + N`. `pfn_scratch` is reused to assemble the page list.
pub fn encode_blob_request(
    out: &mut Vec<u8>,
    pfn_scratch: &mut Vec<u64>,
    trans_id: u64,
    desc: &BlobRequestDesc<'_>,
) -> Result<(), BlobError> {
    if trans_id == 0 {
        return Err(EncodeError::ZeroTransId.into());
    }
    if desc.request.len == 0 || desc.response.len == 0 {
        return Err(BlobError::BadLengths(
            "request and response buffers must not be empty",
        ));
    }
    if let Some(d) = &desc.data {
        d.check("data")?;
    }
    if desc.data_valid > desc.data.map_or(0, |d| d.len) {
        return Err(BlobError::BadLengths("data_valid exceeds the data buffer"));
    }
    desc.request.check("request")?;
    desc.response.check("response")?;
    pfn_scratch.clear();
    if let Some(d) = &desc.data {
        pfn_scratch.extend_from_slice(d.pfns);
    }
    pfn_scratch.extend_from_slice(desc.request.pfns);
    pfn_scratch.extend_from_slice(desc.response.pfns);
    let n = pfn_scratch.len() as u64;
    if n > u64::from(AZ_BLOB_MAX_PAGES) {
        return Err(BlobError::TooManyPages(n));
    }
    let req = vsp_request(desc);
    let range = GpaRangeRef {
        byte_offset: 0,
        byte_count: (n * HV_PAGE_SIZE) as u32,
        pfns: pfn_scratch,
    };
    crate::packet::encode_gpa_direct(out, trans_id, &[range], req.as_bytes())?;
    Ok(())
}

/// A blob request parsed and validated on the host side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRequest {
    /// The packet's transaction id (non-zero), to echo in the completion.
    pub trans_id: u64,
    /// The 56-byte request as received.
    pub vsp: AzBlobVspRequest,
    /// The page list (data, request, response pages).
    pub pfns: Vec<u64>,
    /// Bytes of the data buffer within the virtual buffer the page list describes.
    pub data: Range<u64>,
    /// The request head within the virtual buffer.
    pub request: Range<u64>,
    /// The response buffer within the virtual buffer.
    pub response: Range<u64>,
}

fn buffer(offset: u32, len: u32, total: u64, what: &'static str) -> Result<Range<u64>, BlobError> {
    let start = u64::from(offset);
    let end = start + u64::from(len);
    if end > total {
        return Err(BlobError::BadBuffer(what));
    }
    Ok(start..end)
}

/// Parses a decoded packet as a blob request and checks it completely: GPA-direct with
/// completion requested, transaction id ≠ 0, exactly one page-aligned range of at most
/// [`AZ_BLOB_MAX_PAGES`] pages, a 56-byte payload with version 0 and operation 0x100,
/// non-empty request and response buffers, `data_valid <= data_len`, and every buffer inside
/// the page list. (Whether the pages are registered guest memory is
/// [`crate::guest_memory::GuestMemory`]'s check.)
pub fn parse_blob_request(p: &Packet<'_>) -> Result<BlobRequest, BlobError> {
    let PacketKind::GpaDirect(ranges) = p.kind else {
        return Err(BlobError::NotARequest("not a GPA-direct packet"));
    };
    if !p.completion_requested() {
        return Err(BlobError::NotARequest("completion not requested"));
    }
    if p.trans_id() == 0 {
        return Err(BlobError::ZeroTransId);
    }
    if ranges.len() != 1 {
        return Err(BlobError::NotARequest("not exactly one GPA range"));
    }
    let Some(range) = ranges.iter().next() else {
        return Err(BlobError::NotARequest("not exactly one GPA range"));
    };
    if range.byte_offset != 0 || !u64::from(range.byte_count).is_multiple_of(HV_PAGE_SIZE) {
        return Err(BlobError::NotARequest("the GPA range is not whole pages"));
    }
    let n = range.pfn_count() as u64;
    if n > u64::from(AZ_BLOB_MAX_PAGES) {
        return Err(BlobError::TooManyPages(n));
    }
    let Ok((vsp, _)) = AzBlobVspRequest::read_from_prefix(p.payload) else {
        return Err(BlobError::NotARequest(
            "payload shorter than az_blob_vsp_request",
        ));
    };
    if vsp.version != AZ_BLOB_VSP_PROTOCOL_VERSION || vsp.operation_type != AZ_BLOB_OP_USER_REQUEST
    {
        return Err(BlobError::Unsupported {
            version: vsp.version,
            operation: vsp.operation_type,
        });
    }
    if vsp.request_buffer_length == 0 || vsp.response_buffer_length == 0 {
        return Err(BlobError::BadBuffer("empty request or response buffer"));
    }
    if vsp.data_buffer_valid > vsp.data_buffer_length {
        return Err(BlobError::BadBuffer("data_valid exceeds the data buffer"));
    }
    let total = n * HV_PAGE_SIZE;
    let data = buffer(
        vsp.data_buffer_offset,
        vsp.data_buffer_length,
        total,
        "data",
    )?;
    let request = buffer(
        vsp.request_buffer_offset,
        vsp.request_buffer_length,
        total,
        "request",
    )?;
    let response = buffer(
        vsp.response_buffer_offset,
        vsp.response_buffer_length,
        total,
        "response",
    )?;
    Ok(BlobRequest {
        trans_id: p.trans_id(),
        vsp,
        pfns: range.pfns().collect(),
        data,
        request,
        response,
    })
}

/// The three buffers of a [`BlobRequest`] in registered guest memory.
#[derive(Debug)]
pub struct BlobBuffers<M = blobring_shm::Mapping> {
    /// The data buffer (empty if the request has none).
    pub data: GuestBuffer<M>,
    /// The request head.
    pub request: GuestBuffer<M>,
    /// The response-head buffer.
    pub response: GuestBuffer<M>,
}

impl BlobRequest {
    /// Translates the data, request and response buffers through the host's table of
    /// registered guest memory; fails if any page is outside it.
    pub fn buffers<M: SharedMemory>(
        &self,
        mem: &GuestMemory<M>,
    ) -> Result<BlobBuffers<M>, GuestMemoryError> {
        let t = |r: &Range<u64>| mem.translate(&self.pfns, r.start, r.end - r.start);
        Ok(BlobBuffers {
            data: t(&self.data)?,
            request: t(&self.request)?,
            response: t(&self.response)?,
        })
    }
}

/// Encodes the completion of blob request `trans_id` (type 0xb, flags 0, §6.4).
pub fn encode_blob_completion(
    out: &mut Vec<u8>,
    trans_id: u64,
    response: &AzBlobVspResponse,
) -> Result<(), BlobError> {
    encode_completion(out, trans_id, response.as_bytes())?;
    Ok(())
}

/// Parses a completion packet: returns its transaction id and the [`AzBlobVspResponse`].
/// (Whether the id is one we lent is the caller's bookkeeping.)
pub fn parse_blob_completion(p: &Packet<'_>) -> Result<(u64, AzBlobVspResponse), BlobError> {
    if p.kind != PacketKind::Completion {
        return Err(BlobError::NotACompletion("not a completion packet"));
    }
    let Ok((resp, _)) = AzBlobVspResponse::read_from_prefix(p.payload) else {
        return Err(BlobError::NotACompletion(
            "payload shorter than az_blob_vsp_response",
        ));
    };
    Ok((p.trans_id(), resp))
}

/// A transaction GUID as the `hv_azure_blob` driver prints it (`%pUb`, in its debug log of
/// each request and reply and in its debugfs list of pending requests): the 16 bytes in wire
/// order, grouped 4-2-2-2-6, e.g. bytes `01 02 … 10` → `01020304-0506-0708-090a-0b0c0d0e0f10`.
/// (A tool that reads the field as a Windows `GUID` struct shows the first three groups
/// byte-swapped: `04030201-0605-0807-…`.) Logs and the ctl stats use this form.
pub fn guid_string(g: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in g.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Reads the reply to a blob request as the `hv_azure_blob` driver does: the
/// [`AzBlobVspResponse`] at `hv_pkt_data` (`offset8 * 8`) of a packet of **any** type, with its
/// transaction id (`vmbus/SOURCES.md`). Only a payload shorter than the 12-byte response is
/// refused. Callers count replies whose type is not 0xb ([`crate::packet::Reply::is_completion`]).
pub fn parse_blob_reply(
    r: &crate::packet::Reply<'_>,
) -> Result<(u64, AzBlobVspResponse), BlobError> {
    let Ok((resp, _)) = AzBlobVspResponse::read_from_prefix(r.payload) else {
        return Err(BlobError::NotACompletion(
            "payload shorter than az_blob_vsp_response",
        ));
    };
    Ok((r.trans_id(), resp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::decode;

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn guid_prints_as_the_driver_prints_it() {
        let g: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        assert_eq!(guid_string(&g), "01020304-0506-0708-090a-0b0c0d0e0f10");
        assert_eq!(
            guid_string(&[0; 16]),
            "00000000-0000-0000-0000-000000000000"
        );
    }

    /// §6.2 byte by byte: 2 data pages (offset 0x10, 5000 bytes), 1 request page (offset 0x20),
    /// 1 response page (offset 0x30): N = 4.
    #[test]
    fn request_layout_matches_spec_byte_by_byte() {
        let data = [100u64, 101];
        let req = [200u64];
        let resp = [300u64];
        let desc = BlobRequestDesc {
            timeout_ms: 30_000,
            transaction_guid: *b"0123456789abcdef",
            data: Some(BufferPages {
                offset: 0x10,
                len: 5000,
                pfns: &data,
            }),
            data_valid: 4000,
            request: BufferPages {
                offset: 0x20,
                len: 300,
                pfns: &req,
            },
            response: BufferPages {
                offset: 0x30,
                len: 1000,
                pfns: &resp,
            },
        };
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        encode_blob_request(&mut out, &mut scratch, 0x1122_3344_5566_7788, &desc).unwrap();
        let n = 4usize;
        assert_eq!(out.len(), 88 + 8 * n, "len8*8 = 88 + 8N");
        assert_eq!(u16_at(&out, 0), 0x0009);
        assert_eq!(u16_at(&out, 2), (4 + n) as u16, "offset8 = 4 + N");
        assert_eq!(u16_at(&out, 4), (11 + n) as u16, "len8 = 11 + N");
        assert_eq!(u16_at(&out, 6), 1, "flags");
        assert_eq!(u64_at(&out, 8), 0x1122_3344_5566_7788);
        assert_eq!(u32_at(&out, 16), 0, "reserved");
        assert_eq!(u32_at(&out, 20), 1, "rangecount");
        assert_eq!(u32_at(&out, 24), (n * 4096) as u32, "byte_count");
        assert_eq!(u32_at(&out, 28), 0, "byte_offset");
        let pfns: Vec<u64> = (0..n).map(|i| u64_at(&out, 32 + 8 * i)).collect();
        assert_eq!(
            pfns,
            vec![100, 101, 200, 300],
            "data, then request, then response pages"
        );
        let r = 32 + 8 * n;
        assert_eq!(u32_at(&out, r), 0, "version");
        assert_eq!(u32_at(&out, r + 4), 30_000, "timeout");
        assert_eq!(u32_at(&out, r + 8), 0x10, "data offset");
        assert_eq!(u32_at(&out, r + 12), 5000, "data len");
        assert_eq!(u32_at(&out, r + 16), 4000, "data valid");
        assert_eq!(u32_at(&out, r + 20), 0x100, "operation");
        assert_eq!(u32_at(&out, r + 24), 0x20 + 2 * 4096, "request offset");
        assert_eq!(u32_at(&out, r + 28), 300, "request len");
        assert_eq!(u32_at(&out, r + 32), 0x30 + 3 * 4096, "response offset");
        assert_eq!(u32_at(&out, r + 36), 1000, "response len");
        assert_eq!(&out[r + 40..r + 56], b"0123456789abcdef");

        let p = decode(&out).unwrap();
        let parsed = parse_blob_request(&p).unwrap();
        assert_eq!(parsed.trans_id, 0x1122_3344_5566_7788);
        assert_eq!(parsed.pfns, vec![100, 101, 200, 300]);
        assert_eq!(parsed.data, 0x10..0x10 + 5000);
        assert_eq!(parsed.request, 0x2020..0x2020 + 300);
        assert_eq!(parsed.response, 0x3030..0x3030 + 1000);
    }

    /// A request without data: `request_len` bytes of request head on page 1, a 10-byte
    /// response buffer on page 2.
    fn one_page_each(request_len: u32) -> BlobRequestDesc<'static> {
        let page = |len, pfns| BufferPages {
            offset: 0,
            len,
            pfns,
        };
        BlobRequestDesc {
            timeout_ms: 0,
            transaction_guid: [0; 16],
            data: None,
            data_valid: 0,
            request: page(request_len, &[1]),
            response: page(10, &[2]),
        }
    }

    #[test]
    fn request_without_data_and_one_page_each() {
        let desc = one_page_each(4096);
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        encode_blob_request(&mut out, &mut scratch, 9, &desc).unwrap();
        assert_eq!(u16_at(&out, 2), 6);
        assert_eq!(u16_at(&out, 4), 13);
        let parsed = parse_blob_request(&decode(&out).unwrap()).unwrap();
        assert_eq!(parsed.data, 0..0);
        assert_eq!(parsed.request, 0..4096);
        assert_eq!(parsed.response, 4096..4106);
        assert_eq!(
            encode_blob_request(&mut out, &mut scratch, 0, &desc),
            Err(BlobError::Encode(EncodeError::ZeroTransId))
        );
        let bad = one_page_each(4097);
        assert_eq!(
            encode_blob_request(&mut out, &mut scratch, 1, &bad),
            Err(BlobError::BadPages("request"))
        );
    }

    #[test]
    fn host_parser_rejects_bad_requests() {
        let desc = one_page_each(100);
        let (mut good, mut scratch) = (Vec::new(), Vec::new());
        encode_blob_request(&mut good, &mut scratch, 9, &desc).unwrap();
        let r = 32 + 16;
        let check = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            parse_blob_request(&decode(&b).unwrap()).unwrap_err()
        };
        assert_eq!(check(&|b| b[8..16].fill(0)), BlobError::ZeroTransId);
        assert!(matches!(check(&|b| b[6] = 0), BlobError::NotARequest(_)));
        assert!(matches!(
            check(&|b| b[r] = 1),
            BlobError::Unsupported { version: 1, .. }
        ));
        assert!(matches!(
            check(&|b| b[r + 21] = 2),
            BlobError::Unsupported { .. }
        ));
        // response offset beyond the two pages
        assert_eq!(
            check(&|b| b[r + 34] = 0x20),
            BlobError::BadBuffer("response")
        );
        assert!(matches!(
            check(&|b| b[r + 28..r + 32].fill(0)),
            BlobError::BadBuffer(_)
        ));
        assert!(matches!(check(&|b| b[r + 16] = 1), BlobError::BadBuffer(_)));
        let mut out = Vec::new();
        crate::packet::encode_inband(&mut out, 1, true, &good[r..]).unwrap();
        assert!(matches!(
            parse_blob_request(&decode(&out).unwrap()),
            Err(BlobError::NotARequest(_))
        ));
    }

    #[test]
    fn completion_round_trip() {
        let mut out = Vec::new();
        let resp = AzBlobVspResponse {
            length: 1,
            error: 2,
            response_len: 3,
        };
        encode_blob_completion(&mut out, 42, &resp).unwrap();
        assert_eq!(u16_at(&out, 0), 0xb);
        assert_eq!(u16_at(&out, 6), 0);
        let p = decode(&out).unwrap();
        assert_eq!(parse_blob_completion(&p).unwrap(), (42, resp));
        let mut short = Vec::new();
        crate::packet::encode_completion(&mut short, 42, &[0; 8]).unwrap();
        assert!(parse_blob_completion(&decode(&short).unwrap()).is_err());
    }

    #[test]
    fn contiguous_pfns_cover_the_buffer() {
        assert_eq!(
            contiguous_pfns(0x1_0ff0, 0x20).collect::<Vec<_>>(),
            vec![0x10, 0x11]
        );
        assert_eq!(contiguous_pfns(0x2000, 4096).collect::<Vec<_>>(), vec![2]);
    }
}
