//! Hyper-V VMBus layouts (`reference/vmbus.md` §1–2) and the Azure Blob VSP messages (§6).
//!
//! These are the exact wire shapes; validation of values read from a ring is the `vmbus`
//! crate's job.

use crate::cdecl::abi_struct;

/// Bytes of a ring's control page; the data area starts right after it.
pub const RING_CONTROL_LEN: u64 = 4096;
/// `feature_bits` bit 0: the sender honours and fills `pending_send_sz`.
pub const RING_FEAT_PENDING_SEND_SZ: u32 = 1;
/// Bytes of the trailer after every packet (`u64` = old write index `<< 32`).
pub const PACKET_TRAILER_LEN: u64 = 8;

/// Packet type: in-band data, payload at offset 16.
pub const PKT_DATA_INBAND: u16 = 0x6;
/// Packet type: data using transfer pages (host → guest; not used by the blob device).
pub const PKT_DATA_USING_XFER_PAGES: u16 = 0x7;
/// Packet type: data described by guest-physical page ranges.
pub const PKT_DATA_USING_GPA_DIRECT: u16 = 0x9;
/// Packet type: completion of the request with the same `trans_id`.
pub const PKT_COMP: u16 = 0xb;
/// Descriptor flag: the sender wants a completion packet.
pub const PKT_FLAG_COMPLETION_REQUESTED: u16 = 1;

/// Class GUID of the Azure Blob device, `{0590b792-db64-45cc-81db-b8d70c577c9e}`, in the
/// little-endian (Windows `GUID`) byte order used on the wire and in sysfs `class_id` parsing.
pub const AZ_BLOB_CLASS_GUID: [u8; 16] = [
    0x92, 0xb7, 0x90, 0x05, 0x64, 0xdb, 0xcc, 0x45, 0x81, 0xdb, 0xb8, 0xd7, 0x0c, 0x57, 0x7c, 0x9e,
];
/// The class GUID as text, as sysfs prints it.
pub const AZ_BLOB_CLASS_GUID_STR: &str = "0590b792-db64-45cc-81db-b8d70c577c9e";
/// `operation_type` of a user request.
pub const AZ_BLOB_OP_USER_REQUEST: u32 = 0x100;
/// `version` of [`AzBlobVspRequest`] (`VSP_PROTOCOL_VERSION_V1` = 0).
pub const AZ_BLOB_VSP_PROTOCOL_VERSION: u32 = 0;
/// Most pages (data + request + response) one request may name.
pub const AZ_BLOB_MAX_PAGES: u32 = 8192;
/// Hyper-V page size; PFNs in packets count these.
pub const HV_PAGE_SIZE: u64 = 4096;

abi_struct! {
    /// Ring control page (`hv_ring_buffer`), 4096 bytes at the start of each ring.
    ///
    /// `write_index` is written by the ring's producer, `read_index` and `interrupt_mask` by its
    /// consumer, `pending_send_sz` by a blocked producer.
    c "hv_ring_control",
    pub struct RingControl {
        /// Producer's next write offset in the data area (multiple of 8).
        pub write_index: u32,
        /// Consumer's next read offset in the data area (multiple of 8).
        pub read_index: u32,
        /// Set by the consumer: non-zero = do not signal me on empty → non-empty.
        pub interrupt_mask: u32,
        /// Set by a blocked producer: signal me when this many bytes are free.
        pub pending_send_sz: u32,
        /// Reserved.
        pub reserved1: [u32; 12],
        /// Bit 0 = [`RING_FEAT_PENDING_SEND_SZ`].
        pub feature_bits: u32,
        /// Reserved up to 4096 bytes.
        pub reserved2: [u8; 4028],
    }
}

abi_struct! {
    /// `vmpacket_descriptor`: the 16 bytes that start every packet.
    c "hv_packet_descriptor",
    pub struct PacketDescriptor {
        /// `PKT_*`.
        pub packet_type: u16,
        /// Header length ÷ 8 from the descriptor start; payload at `offset8 * 8`.
        pub offset8: u16,
        /// Packet length ÷ 8, excluding the trailer.
        pub len8: u16,
        /// `PKT_FLAG_*`.
        pub flags: u16,
        /// Opaque request id, echoed in the completion; never 0 on requests.
        pub trans_id: u64,
    }
}

abi_struct! {
    /// Header after the descriptor of a GPA-direct packet; the ranges follow at offset 24.
    c "hv_gpa_direct_header",
    pub struct GpaDirectHeader {
        /// Reserved.
        pub reserved: u32,
        /// Number of [`GpaRange`]s.
        pub range_count: u32,
    }
}

abi_struct! {
    /// One GPA range header; `ceil((byte_offset + byte_count) / 4096)` u64 PFNs follow.
    c "hv_gpa_range",
    pub struct GpaRange {
        /// Bytes described by this range.
        pub byte_count: u32,
        /// Offset of the first byte in the first page (< 4096).
        pub byte_offset: u32,
    }
}

abi_struct! {
    /// `az_blob_vsp_request` (56 bytes): the in-band payload of a GPA-direct blob request.
    ///
    /// Buffer offsets index the virtually contiguous buffer described by the page list, whose
    /// pages are the data pages, then the request pages, then the response pages.
    c "az_blob_vsp_request",
    pub struct AzBlobVspRequest {
        /// [`AZ_BLOB_VSP_PROTOCOL_VERSION`].
        pub version: u32,
        /// Request deadline in milliseconds.
        pub timeout_ms: u32,
        /// Offset of the data buffer (within the first data page; 0 if no data).
        pub data_buffer_offset: u32,
        /// Bytes of the data buffer.
        pub data_buffer_length: u32,
        /// Bytes of body present (writes).
        pub data_buffer_valid: u32,
        /// [`AZ_BLOB_OP_USER_REQUEST`].
        pub operation_type: u32,
        /// Offset of the request head (page offset + data_pages × 4096).
        pub request_buffer_offset: u32,
        /// Bytes of the request head.
        pub request_buffer_length: u32,
        /// Offset of the response buffer (page offset + (data + request pages) × 4096).
        pub response_buffer_offset: u32,
        /// Bytes of the response buffer.
        pub response_buffer_length: u32,
        /// Client-chosen GUID, byte for byte.
        pub transaction_id: [u8; 16],
    }
}

abi_struct! {
    /// `az_blob_vsp_response` (12 bytes): the payload of the completion packet.
    c "az_blob_vsp_response",
    pub struct AzBlobVspResponse {
        /// Bytes of body the host wrote into the data buffer (unused by the seed driver).
        pub length: u32,
        /// VSP status: 0 = the request was executed (the HTTP status is in the response head).
        pub error: u32,
        /// Bytes of response head the host wrote.
        pub response_len: u32,
    }
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<RingControl>() == RING_CONTROL_LEN as usize);
    assert!(offset_of!(RingControl, interrupt_mask) == 8);
    assert!(offset_of!(RingControl, pending_send_sz) == 12);
    assert!(offset_of!(RingControl, feature_bits) == 64);
    assert!(size_of::<PacketDescriptor>() == 16);
    assert!(offset_of!(PacketDescriptor, trans_id) == 8);
    assert!(size_of::<GpaDirectHeader>() == 8);
    assert!(size_of::<GpaRange>() == 8);
    assert!(size_of::<AzBlobVspRequest>() == 56);
    assert!(offset_of!(AzBlobVspRequest, operation_type) == 20);
    assert!(offset_of!(AzBlobVspRequest, transaction_id) == 40);
    assert!(size_of::<AzBlobVspResponse>() == 12);
};

/// Byte offsets of the [`RingControl`] fields, for atomic access through a mapping.
pub mod rc {
    use super::RingControl;
    use core::mem::offset_of;
    /// `write_index`.
    pub const WRITE_INDEX: u64 = offset_of!(RingControl, write_index) as u64;
    /// `read_index`.
    pub const READ_INDEX: u64 = offset_of!(RingControl, read_index) as u64;
    /// `interrupt_mask`.
    pub const INTERRUPT_MASK: u64 = offset_of!(RingControl, interrupt_mask) as u64;
    /// `pending_send_sz`.
    pub const PENDING_SEND_SZ: u64 = offset_of!(RingControl, pending_send_sz) as u64;
    /// `feature_bits`.
    pub const FEATURE_BITS: u64 = offset_of!(RingControl, feature_bits) as u64;
}
