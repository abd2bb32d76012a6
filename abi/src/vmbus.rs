//! Hyper-V VMBus layouts (`reference/vmbus.md` §1–2) and the Azure Blob VSP messages (§6).
//!
//! These are the exact wire shapes; validation of values read from a ring is the `vmbus`
//! crate's job.

use crate::cdecl::{abi_struct, c_codes, c_consts, field_offsets};

c_consts! {
    fn ring_consts;
    /// Bytes of a ring's control page; the data area starts right after it.
    pub const RING_CONTROL_LEN: u64 = 4096 => "HV_RING_CONTROL_LEN";
    /// `feature_bits` bit 0: the sender honours and fills `pending_send_sz`.
    pub const RING_FEAT_PENDING_SEND_SZ: u32 = 1 => "HV_RING_FEAT_PENDING_SEND_SZ";
    /// Bytes of the trailer after every packet (`u64` = old write index `<< 32`).
    pub const PACKET_TRAILER_LEN: u64 = 8 => "HV_PACKET_TRAILER_LEN";
}

c_consts! {
    fn packet_consts;
    /// Packet type: in-band data, payload at offset 16.
    pub const PKT_DATA_INBAND: u16 = 0x6 => "HV_PKT_DATA_INBAND";
    /// Packet type: data using transfer pages (host → guest; not used by the blob device).
    pub const PKT_DATA_USING_XFER_PAGES: u16 = 0x7 => "HV_PKT_DATA_USING_XFER_PAGES";
    /// Packet type: data described by guest-physical page ranges.
    pub const PKT_DATA_USING_GPA_DIRECT: u16 = 0x9 => "HV_PKT_DATA_USING_GPA_DIRECT";
    /// Packet type: completion of the request with the same `trans_id`.
    pub const PKT_COMP: u16 = 0xb => "HV_PKT_COMP";
    /// Descriptor flag: the sender wants a completion packet.
    pub const PKT_FLAG_COMPLETION_REQUESTED: u16 = 1 => "HV_PKT_FLAG_COMPLETION_REQUESTED";
}

/// Class GUID of the Azure Blob device, `{0590b792-db64-45cc-81db-b8d70c577c9e}`, in the
/// little-endian (Windows `GUID`) byte order used on the wire and in sysfs `class_id` parsing.
pub const AZ_BLOB_CLASS_GUID: [u8; 16] = [
    0x92, 0xb7, 0x90, 0x05, 0x64, 0xdb, 0xcc, 0x45, 0x81, 0xdb, 0xb8, 0xd7, 0x0c, 0x57, 0x7c, 0x9e,
];
/// The class GUID as text, as sysfs prints it.
pub const AZ_BLOB_CLASS_GUID_STR: &str = "0590b792-db64-45cc-81db-b8d70c577c9e";

c_consts! {
    fn vsp_consts;
    /// `operation_type` of a user request.
    pub const AZ_BLOB_OP_USER_REQUEST: u32 = 0x100 => "AZ_BLOB_OP_USER_REQUEST", "0x{:x}";
    /// `version` of [`AzBlobVspRequest`] (`VSP_PROTOCOL_VERSION_V1` = 0).
    pub const AZ_BLOB_VSP_PROTOCOL_VERSION: u32 = 0 => "AZ_BLOB_VSP_PROTOCOL_VERSION";
    /// Most pages (data + request + response) one request may name.
    pub const AZ_BLOB_MAX_PAGES: u32 = 8192 => "AZ_BLOB_MAX_PAGES";
}

/// Hyper-V page size; PFNs in packets count these. (Not in the C header: Hyper-V headers define
/// their own page-size macros.)
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
        /// A [`VspStatus`] code: 0 = the request was executed (the HTTP status is in the response
        /// head).
        pub error: u32,
        /// Bytes of response head the host wrote.
        pub response_len: u32,
    }
}

c_codes! {
    fn vsp_status_consts;
    /// The status of a VSP response ([`AzBlobVspResponse::error`]).
    pub enum VspStatus: u32 {
        Ok = 0 => "AZ_BLOB_VSP_OK": "executed; the HTTP status is in the response head",
        BadRequest = 1 => "AZ_BLOB_VSP_ERR_BAD_REQUEST": "the packet is not a valid blob request",
        BadPage = 2 => "AZ_BLOB_VSP_ERR_BAD_PAGE": "a buffer page is outside the registered guest memory",
        BodyTooLarge = 3 => "AZ_BLOB_VSP_ERR_BODY_TOO_LARGE": "the response body does not fit the data buffer; `length` carries the bytes needed (saturated at `u32::MAX`); nothing was written",
        HeadTooLarge = 4 => "AZ_BLOB_VSP_ERR_HEAD_TOO_LARGE": "the response head does not fit the response buffer; `response_len` carries the bytes needed (the body may have been written)",
        Internal = 5 => "AZ_BLOB_VSP_ERR_INTERNAL": "the host failed internally",
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

field_offsets! {
    /// Byte offsets of the [`RingControl`] fields, for atomic access through a mapping.
    pub mod rc for RingControl {
        WRITE_INDEX = write_index,
        READ_INDEX = read_index,
        INTERRUPT_MASK = interrupt_mask,
        PENDING_SEND_SZ = pending_send_sz,
        FEATURE_BITS = feature_bits,
    }
}

// ---------------------------------------------------------------------------------------------
// Simulated VMBus bus protocol (blobring-vmbus `sim` transport)
// ---------------------------------------------------------------------------------------------
//
// Messages on the unix `SOCK_SEQPACKET` socket between the daemon (guest) and the emulated host.
// Each message is one datagram: a [`BusHeader`] followed by exactly one body struct. The
// protocol is documented message by message in the `blobring-vmbus` crate (`sim` module).

/// `"BRVB"` little-endian: first 4 bytes of every bus message.
pub const BUS_MAGIC: u32 = u32::from_le_bytes(*b"BRVB");
/// Version of the bus protocol carried in [`BusHello`] and [`BusOffer`].
pub const BUS_VERSION: u32 = 1;
/// Largest bus message (header + body) either side sends or accepts.
pub const BUS_MAX_MESSAGE: usize = 256;

/// Guest → host: [`BusHello`]. Answered with [`BUS_MSG_OFFER`].
pub const BUS_MSG_HELLO: u32 = 1;
/// Host → guest: [`BusOffer`].
pub const BUS_MSG_OFFER: u32 = 2;
/// Guest → host: [`BusChannelIndex`], open a channel. Answered with [`BUS_MSG_CHANNEL_OPENED`].
pub const BUS_MSG_OPEN_CHANNEL: u32 = 3;
/// Host → guest: [`BusChannelOpened`] + 3 fds (ring memfd, guest→host eventfd, host→guest
/// eventfd).
pub const BUS_MSG_CHANNEL_OPENED: u32 = 4;
/// Guest → host: [`BusSubchannelCount`], ask for subchannels. Answered with
/// [`BUS_MSG_SUBCHANNELS_OFFERED`].
pub const BUS_MSG_REQUEST_SUBCHANNELS: u32 = 5;
/// Host → guest: [`BusSubchannelCount`], how many subchannels (indices `1..=count`) now exist.
pub const BUS_MSG_SUBCHANNELS_OFFERED: u32 = 6;
/// Guest → host: [`BusRegisterMemory`] + 1 fd (a sealed memfd).
pub const BUS_MSG_REGISTER_MEMORY: u32 = 7;
/// Host → guest: [`BusRegionId`], the region is registered.
pub const BUS_MSG_MEMORY_REGISTERED: u32 = 8;
/// Guest → host: [`BusRegionId`], forget a region.
pub const BUS_MSG_UNREGISTER_MEMORY: u32 = 9;
/// Host → guest: [`BusRegionId`], the region is unregistered.
pub const BUS_MSG_MEMORY_UNREGISTERED: u32 = 10;
/// Guest → host: [`BusChannelIndex`], close a channel.
pub const BUS_MSG_CLOSE_CHANNEL: u32 = 11;
/// Host → guest: [`BusChannelIndex`], the channel is closed.
pub const BUS_MSG_CHANNEL_CLOSED: u32 = 12;
/// Host → guest, unsolicited: [`BusRescind`], the device is gone.
pub const BUS_MSG_RESCIND: u32 = 13;
/// Host → guest: [`BusError`], the request with the header's `seq` failed.
pub const BUS_MSG_ERROR: u32 = 14;

/// [`BusError::code`]: malformed message (bad magic, length, type or fds).
pub const BUS_ERR_MALFORMED: u32 = 1;
/// [`BusError::code`]: protocol version not supported.
pub const BUS_ERR_VERSION: u32 = 2;
/// [`BusError::code`]: no such channel, or not offered.
pub const BUS_ERR_NO_CHANNEL: u32 = 3;
/// [`BusError::code`]: the channel is already open.
pub const BUS_ERR_BUSY: u32 = 4;
/// [`BusError::code`]: a memory region is invalid (alignment, overlap, unknown id, bad memfd).
pub const BUS_ERR_BAD_REGION: u32 = 5;
/// [`BusError::code`]: the device has been rescinded.
pub const BUS_ERR_RESCINDED: u32 = 6;
/// [`BusError::code`]: the host failed locally (out of memory, fd limit...).
pub const BUS_ERR_INTERNAL: u32 = 7;
/// [`BusError::code`]: the message was valid but not expected now (e.g. before hello).
pub const BUS_ERR_UNEXPECTED: u32 = 8;

abi_struct! {
    /// Header of every bus message (16 bytes).
    c "blobring_bus_header",
    pub struct BusHeader {
        /// [`BUS_MAGIC`].
        pub magic: u32,
        /// `BUS_MSG_*`.
        pub msg_type: u32,
        /// Bytes of the whole message, header included; must equal the datagram size.
        pub length: u32,
        /// Request sequence number chosen by the guest (non-zero), echoed in the reply; 0 on
        /// unsolicited host messages.
        pub seq: u32,
    }
}

abi_struct! {
    /// Body of [`BUS_MSG_HELLO`].
    c "blobring_bus_hello",
    pub struct BusHello {
        /// [`BUS_VERSION`].
        pub version: u32,
        /// Reserved, zero.
        pub reserved: u32,
    }
}

abi_struct! {
    /// Body of [`BUS_MSG_OFFER`]: the device the host offers.
    c "blobring_bus_offer",
    pub struct BusOffer {
        /// Device class, little-endian GUID bytes ([`AZ_BLOB_CLASS_GUID`]).
        pub class_guid: [u8; 16],
        /// Device instance, little-endian GUID bytes.
        pub instance_guid: [u8; 16],
        /// Channels the host offers: the primary plus at most `max_channels - 1` subchannels.
        pub max_channels: u32,
        /// Bytes of one ring (4096-byte control page + data); a channel's memfd holds two.
        pub ring_size: u32,
        /// [`BUS_VERSION`].
        pub version: u32,
        /// Reserved, zero.
        pub reserved: u32,
    }
}

abi_struct! {
    /// Body of [`BUS_MSG_OPEN_CHANNEL`], [`BUS_MSG_CLOSE_CHANNEL`] and [`BUS_MSG_CHANNEL_CLOSED`].
    c "blobring_bus_channel_index",
    pub struct BusChannelIndex {
        /// 0 = primary, `1..max_channels` = subchannels.
        pub index: u32,
        /// Reserved, zero.
        pub reserved: u32,
    }
}

abi_struct! {
    /// Body of [`BUS_MSG_CHANNEL_OPENED`]; the datagram carries three fds.
    c "blobring_bus_channel_opened",
    pub struct BusChannelOpened {
        /// The channel opened.
        pub index: u32,
        /// Bytes of one ring; the memfd holds `2 * ring_size`: `[0, S)` guest → host,
        /// `[S, 2S)` host → guest.
        pub ring_size: u32,
    }
}

abi_struct! {
    /// Body of [`BUS_MSG_REQUEST_SUBCHANNELS`] and [`BUS_MSG_SUBCHANNELS_OFFERED`].
    c "blobring_bus_subchannel_count",
    pub struct BusSubchannelCount {
        /// Subchannels asked for / now offered (indices `1..=count`).
        pub count: u32,
        /// Reserved, zero.
        pub reserved: u32,
    }
}

abi_struct! {
    /// Body of [`BUS_MSG_REGISTER_MEMORY`]; the datagram carries one sealed memfd.
    c "blobring_bus_register_memory",
    pub struct BusRegisterMemory {
        /// Guest-chosen id, unique among registered regions.
        pub region_id: u64,
        /// Guest-physical address of byte 0 of the memfd (multiple of 4096).
        pub gpa_base: u64,
        /// Bytes to register (multiple of 4096, ≤ the memfd's size).
        pub len: u64,
    }
}

abi_struct! {
    /// Body of [`BUS_MSG_UNREGISTER_MEMORY`], [`BUS_MSG_MEMORY_REGISTERED`] and
    /// [`BUS_MSG_MEMORY_UNREGISTERED`].
    c "blobring_bus_region_id",
    pub struct BusRegionId {
        /// The region.
        pub region_id: u64,
    }
}

abi_struct! {
    /// Body of [`BUS_MSG_RESCIND`].
    c "blobring_bus_rescind",
    pub struct BusRescind {
        /// Free-form reason code (0 = the host is going away).
        pub reason: u32,
        /// Reserved, zero.
        pub reserved: u32,
    }
}

abi_struct! {
    /// Body of [`BUS_MSG_ERROR`].
    c "blobring_bus_error",
    pub struct BusError {
        /// `msg_type` of the request that failed (0 if it could not be parsed).
        pub request_type: u32,
        /// `BUS_ERR_*`.
        pub code: u32,
        /// UTF-8 message, NUL-padded.
        pub message: [u8; 120],
    }
}

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<BusHeader>() == 16);
    assert!(size_of::<BusHello>() == 8);
    assert!(size_of::<BusOffer>() == 48);
    assert!(size_of::<BusChannelIndex>() == 8);
    assert!(size_of::<BusChannelOpened>() == 8);
    assert!(size_of::<BusSubchannelCount>() == 8);
    assert!(size_of::<BusRegisterMemory>() == 24);
    assert!(size_of::<BusRegionId>() == 8);
    assert!(size_of::<BusRescind>() == 8);
    assert!(size_of::<BusError>() == 128);
    assert!(size_of::<BusHeader>() + size_of::<BusError>() <= BUS_MAX_MESSAGE);
};
