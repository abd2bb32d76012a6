#![forbid(unsafe_code)]
//! Every byte layout blobring shares with a peer.
//!
//! **Owns:** the client region (header page, queue-pair control block, SQE, CQE), the
//! client↔daemon handshake messages, the Hyper-V VMBus ring control page and packet headers, and
//! the Azure Blob VSP request/response (`reference/vmbus.md` §1–2, §6). Each type is `#[repr(C)]`
//! with [`zerocopy`] derives, so it is read from and written to peer memory by copying bytes —
//! never by forming a reference into memory a peer can write. Sizes and offsets are asserted at
//! compile time, and the C header `include/blobring.h` is generated from the same declarations
//! (see [`c_header`]; a test compiles it as C and C++, checking every size and offset again).
//! Codes that travel in an integer field are enums ([`Opcode`], [`HelloStatus`],
//! [`vmbus::VspStatus`]) declared with their C names and meanings in one table; the field itself
//! stays an integer (a peer may write any value) and `from_code` names it. Such codes, flag bits
//! and magics follow the layout whose field carries them, as `linux/io_uring.h` orders its
//! structs and their `#define`s; the constants of the whole region open the crate.
//!
//! **Trusts:** nothing. A layout is only a shape: every value read from a peer must be validated
//! by the crate that reads it (`ring`, `vmbus`, the daemon).
//!
//! **Building and reading [`Sqe`] and [`Cqe`]:** through [`Sqe::new`] / [`Sqe::fields`] /
//! [`Sqe::reserved_is_zero`] and [`Cqe::new`] / [`Cqe::bare`] / [`Cqe::fields`], which name
//! every field of the layout by destructuring, so that a field added to a layout fails to
//! compile wherever it is not handled. (The VSP request and response are each built by
//! complete struct literals, which have the same property.)
//!
//! **Invariants:** little-endian, naturally aligned fields, no implicit padding (zerocopy's
//! `IntoBytes` derive refuses padding), fields written by different parties on separate 128-byte
//! lines. Changing any layout means bumping [`ABI_VERSION`].
//!
//! `zerocopy` was chosen because its derives prove at compile time that a type has no padding
//! and that any byte pattern is a valid value, which is exactly what peer-written bytes need.

mod cdecl;
mod geometry;
pub mod vmbus;

pub use cdecl::{CStruct, CType};
pub use geometry::{GeometryError, RegionGeometry};
pub use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

use cdecl::{abi_struct, c_codes, c_consts, field_offsets};

c_consts! {
    fn region_consts;
    /// `"BLOBRNG1"` little-endian: first 8 bytes of every client region.
    pub const REGION_MAGIC: u64 = u64::from_le_bytes(*b"BLOBRNG1") => "BLOBRING_REGION_MAGIC", "0x{:016x}ULL";
    /// Version of every layout in this crate; both peers must agree exactly.
    pub const ABI_VERSION: u32 = 1 => "BLOBRING_ABI_VERSION";
    /// Size of the region header page. Queue pairs start right after it.
    pub const HEADER_LEN: u64 = 4096 => "BLOBRING_HEADER_LEN";
    /// Size of the queue-pair control block ([`QueueControl`]); the SQE array follows it.
    pub const QUEUE_CONTROL_LEN: u64 = 256 => "BLOBRING_QUEUE_CONTROL_LEN";
    /// Largest SQ size a daemon accepts (entries; a power of two).
    pub const MAX_SQ_ENTRIES: u32 = 32768 => "BLOBRING_MAX_SQ_ENTRIES";
}

// ---------------------------------------------------------------------------------------------
// Client region
// ---------------------------------------------------------------------------------------------

abi_struct! {
    /// Region header, daemon-written line (offset 0 of the region, 128 bytes).
    ///
    /// Written once by the daemon before the memfd is sealed and handed over; the daemon never
    /// reads it back (its own copy of the geometry is authoritative).
    c "blobring_region_header",
    pub struct RegionHeader {
        /// [`REGION_MAGIC`].
        pub magic: u64,
        /// [`ABI_VERSION`].
        pub abi_version: u32,
        /// [`HEADER_LEN`].
        pub header_len: u32,
        /// Total bytes of the region (the memfd's size).
        pub region_len: u64,
        /// Backing page size the daemon obtained: 4096, or 2 MiB for hugepages.
        pub page_size: u32,
        /// Number of queue pairs (one per daemon worker).
        pub n_queues: u32,
        /// Entries per submission queue (power of two).
        pub sq_entries: u32,
        /// Entries per completion queue (power of two, ≥ `sq_entries`).
        pub cq_entries: u32,
        /// Region offset of queue pair 0.
        pub queue_offset: u64,
        /// Bytes from one queue pair to the next (a multiple of 4096).
        pub queue_stride: u64,
        /// Region offset of the data arena (aligned to `page_size`).
        pub arena_offset: u64,
        /// Bytes of the data arena.
        pub arena_len: u64,
        /// Daemon-assigned id of this client (diagnostics, `blobring clients`).
        pub client_id: u64,
        /// Reserved, zero.
        pub reserved: [u8; 48],
    }
}

abi_struct! {
    /// Queue-pair control block: two 128-byte lines, one per writer.
    ///
    /// Client-written: `sq_tail`, `cq_head`, `cq_waiting`. Daemon-written: `sq_head`, `cq_tail`,
    /// `sq_need_wakeup`, `sq_rejected`. Indices are free-running u32s (slot = index & mask), each
    /// stored with release and loaded with acquire by the peer. The futex word on which a
    /// sleeping client waits is `cq_tail` itself (shared futex, no PRIVATE flag).
    c "blobring_queue_control",
    pub struct QueueControl {
        /// Client: next SQ index the client will fill.
        pub sq_tail: u32,
        /// Client: next CQ index the client will read.
        pub cq_head: u32,
        /// Client: non-zero while the client sleeps (or is about to) on the `cq_tail` futex.
        pub cq_waiting: u32,
        /// Reserved (client line padding).
        pub client_reserved: [u8; 116],
        /// Daemon: next SQ index the daemon will take.
        pub sq_head: u32,
        /// Daemon: next CQ index the daemon will fill; also the client's futex word.
        pub cq_tail: u32,
        /// Daemon: non-zero while the daemon worker sleeps; the client must then signal the
        /// queue's eventfd after publishing `sq_tail`.
        pub sq_need_wakeup: u32,
        /// Daemon: SQEs refused as invalid since the queue was created (diagnostics).
        pub sq_rejected: u32,
        /// Reserved (daemon line padding).
        pub daemon_reserved: [u8; 112],
    }
}

abi_struct! {
    /// Submission queue entry (64 bytes, one cache line).
    ///
    /// The three buffers are (region offset, length) pairs that must lie inside the client's data
    /// arena: the HTTP/1.1 request head, the buffer receiving the response head, and the data
    /// buffer (the body to write, or the buffer receiving the body read).
    c "blobring_sqe",
    pub struct Sqe {
        /// An [`Opcode`] code.
        pub opcode: u8,
        /// Reserved flags, zero.
        pub flags: u8,
        /// Reserved, zero.
        pub reserved0: u16,
        /// Per-request deadline in milliseconds; 0 = the daemon's default.
        pub timeout_ms: u32,
        /// Opaque, echoed in the CQE.
        pub user_data: u64,
        /// Region offset of the request head.
        pub request_offset: u64,
        /// Region offset of the response-head buffer.
        pub response_offset: u64,
        /// Region offset of the data buffer (ignored when `data_len` is 0).
        pub data_offset: u64,
        /// Bytes of request head.
        pub request_len: u32,
        /// Bytes available for the response head.
        pub response_len: u32,
        /// Bytes of the data buffer.
        pub data_len: u32,
        /// Bytes of body present in the data buffer (writes); ≤ `data_len`.
        pub data_valid: u32,
        /// Reserved, zero.
        pub reserved1: u64,
    }
}

c_codes! {
    fn opcode_consts;
    /// The `opcode` of an [`Sqe`].
    pub enum Opcode: u8 {
        Blob = 1 => "BLOBRING_OP_BLOB": "an HTTP-modelled Azure Blob request executed by the host (the seed's `USER_REQUEST`)",
        Nop = 2 => "BLOBRING_OP_NOP": "complete at once without involving the host (ring and wakeup measurements)",
    }
}

/// One buffer of an [`Sqe`]: a region offset and a length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SqeBuffer {
    /// Region offset of the first byte.
    pub offset: u64,
    /// Bytes.
    pub len: u32,
}

/// The meaningful fields of an [`Sqe`] (the reserved ones are zero when built and checked by
/// [`Sqe::reserved_is_zero`] when read). Build an SQE with [`Sqe::new`] and read one with
/// [`Sqe::fields`]: both name every field of the layout, so a field added to [`Sqe`] fails to
/// compile there until it is handled, and then wherever an `SqeFields` is built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SqeFields {
    /// An [`Opcode`] code.
    pub opcode: u8,
    /// Per-request deadline in milliseconds; 0 = the daemon's default.
    pub timeout_ms: u32,
    /// Opaque, echoed in the CQE.
    pub user_data: u64,
    /// The HTTP/1.1 request head.
    pub request: SqeBuffer,
    /// The buffer receiving the response head.
    pub response: SqeBuffer,
    /// The data buffer (ignored when its length is 0).
    pub data: SqeBuffer,
    /// Bytes of body present in the data buffer (writes); ≤ `data.len`.
    pub data_valid: u32,
}

impl Sqe {
    /// The SQE carrying `fields`, reserved fields zero.
    pub const fn new(fields: SqeFields) -> Self {
        let SqeFields {
            opcode,
            timeout_ms,
            user_data,
            request,
            response,
            data,
            data_valid,
        } = fields;
        Self {
            opcode,
            flags: 0,
            reserved0: 0,
            timeout_ms,
            user_data,
            request_offset: request.offset,
            response_offset: response.offset,
            data_offset: data.offset,
            request_len: request.len,
            response_len: response.len,
            data_len: data.len,
            data_valid,
            reserved1: 0,
        }
    }

    /// An [`Opcode::Nop`] SQE.
    pub const fn nop(user_data: u64) -> Self {
        Self::new(SqeFields {
            opcode: Opcode::Nop.code(),
            timeout_ms: 0,
            user_data,
            request: SqeBuffer { offset: 0, len: 0 },
            response: SqeBuffer { offset: 0, len: 0 },
            data: SqeBuffer { offset: 0, len: 0 },
            data_valid: 0,
        })
    }

    /// The meaningful fields, as written (not validated).
    pub const fn fields(&self) -> SqeFields {
        self.parts().0
    }

    /// Whether every reserved field (`flags`, `reserved0`, `reserved1`) is zero.
    pub const fn reserved_is_zero(&self) -> bool {
        let [flags, reserved0, reserved1] = self.parts().1;
        flags == 0 && reserved0 == 0 && reserved1 == 0
    }

    /// The meaningful fields and the reserved ones, every field named.
    const fn parts(&self) -> (SqeFields, [u64; 3]) {
        let Self {
            opcode,
            flags,
            reserved0,
            timeout_ms,
            user_data,
            request_offset,
            response_offset,
            data_offset,
            request_len,
            response_len,
            data_len,
            data_valid,
            reserved1,
        } = *self;
        let fields = SqeFields {
            opcode,
            timeout_ms,
            user_data,
            request: SqeBuffer {
                offset: request_offset,
                len: request_len,
            },
            response: SqeBuffer {
                offset: response_offset,
                len: response_len,
            },
            data: SqeBuffer {
                offset: data_offset,
                len: data_len,
            },
            data_valid,
        };
        (fields, [flags as u64, reserved0 as u64, reserved1])
    }
}

abi_struct! {
    /// Completion queue entry (32 bytes).
    c "blobring_cqe",
    pub struct Cqe {
        /// The SQE's `user_data`.
        pub user_data: u64,
        /// 0, or a negative errno for a daemon-level failure (`ETIMEDOUT`, `ECONNRESET`,
        /// `EINVAL`, `ENODEV`, …). `-E2BIG` (-7): the request's buffers span more pages than
        /// the daemon's channel takes in one request (uio transport: what fits the VMBus TX
        /// ring, see `blobring_vmbus::uio::max_request_pages`); split the transfer.
        pub res: i32,
        /// `CQE_F_*`.
        pub flags: u32,
        /// The VSP status (`az_blob_vsp_response.error`; 0 = the host executed the request and
        /// the HTTP status is in the response head). Non-zero codes are [`vmbus::VspStatus`]
        /// errors: 3 = the body needs a larger data buffer (`data_len` says how large), 4 =
        /// the response head needs a larger response buffer (`response_len` says how large).
        pub vsp_status: u32,
        /// Bytes of response head the host wrote (`vsp_status` 0), or the size needed.
        pub response_len: u32,
        /// Bytes of body the host wrote into the data buffer (`vsp_status` 0), or the size
        /// needed.
        pub data_len: u32,
        reserved
        /// Reserved, zero.
        pub reserved: u32,
    }
    /// The meaningful fields of a [`Cqe`] (`reserved` is zero). Build a CQE with [`Cqe::new`]
    /// and read one with [`Cqe::fields`]; the three are declared together from one field list.
    fields CqeFields;
}

c_consts! {
    fn cqe_flag_consts;
    /// CQE flag: the request failed (e.g. `-ETIMEDOUT`) but the host may still write into its
    /// buffers; a second CQE with [`CQE_F_BUFFERS_RELEASED`] follows.
    pub const CQE_F_BUFFERS_LENT: u32 = 1 => "BLOBRING_CQE_F_BUFFERS_LENT";
    /// CQE flag: the buffers of an earlier [`CQE_F_BUFFERS_LENT`] completion are free again.
    pub const CQE_F_BUFFERS_RELEASED: u32 = 2 => "BLOBRING_CQE_F_BUFFERS_RELEASED";
}

impl Cqe {
    /// A CQE with only `user_data` and `res`: a daemon-level failure (`res` a negative errno)
    /// or a NOP's completion (`res` 0) — no flags, no VSP result.
    pub const fn bare(user_data: u64, res: i32) -> Self {
        Self::new(CqeFields {
            user_data,
            res,
            flags: 0,
            vsp_status: 0,
            response_len: 0,
            data_len: 0,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Handshake (unix stream socket)
// ---------------------------------------------------------------------------------------------

abi_struct! {
    /// First message of a client on the daemon socket (64 bytes).
    c "blobring_hello_request",
    pub struct HelloRequest {
        /// [`HELLO_REQUEST_MAGIC`].
        pub magic: u32,
        /// [`ABI_VERSION`] the client was built against.
        pub abi_version: u32,
        /// Wanted SQ entries per queue (power of two); 0 = the daemon's default.
        pub sq_entries: u32,
        /// Reserved flags, zero.
        pub flags: u32,
        /// Wanted data arena bytes; 0 = the daemon's default.
        pub arena_len: u64,
        /// Reserved, zero.
        pub reserved: [u8; 40],
    }
}

abi_struct! {
    /// The daemon's answer (256 bytes). With [`HelloStatus::Ok`] it carries, as `SCM_RIGHTS`, the
    /// region memfd followed by one eventfd per queue pair; otherwise `message` says why.
    c "blobring_hello_reply",
    pub struct HelloReply {
        /// [`HELLO_REPLY_MAGIC`].
        pub magic: u32,
        /// The daemon's [`ABI_VERSION`].
        pub abi_version: u32,
        /// A [`HelloStatus`] code.
        pub status: u32,
        /// Queue pairs (eventfds attached).
        pub n_queues: u32,
        /// Bytes of the region memfd.
        pub region_len: u64,
        /// Daemon-assigned client id.
        pub client_id: u64,
        /// NUL-padded UTF-8 explanation of a refusal (what went wrong and what to do).
        pub message: [u8; 224],
    }
}

c_consts! {
    fn hello_magic_consts;
    /// Magic of [`HelloRequest`] (`"BRHQ"`).
    pub const HELLO_REQUEST_MAGIC: u32 = u32::from_le_bytes(*b"BRHQ") => "BLOBRING_HELLO_REQUEST_MAGIC", "0x{:08x}u";
    /// Magic of [`HelloReply`] (`"BRHR"`).
    pub const HELLO_REPLY_MAGIC: u32 = u32::from_le_bytes(*b"BRHR") => "BLOBRING_HELLO_REPLY_MAGIC", "0x{:08x}u";
}

c_codes! {
    fn hello_status_consts;
    /// The `status` of a [`HelloReply`]: the handshake's outcome.
    pub enum HelloStatus: u32 {
        Ok = 0 => "BLOBRING_HELLO_OK": "accepted; the memfd and eventfds travel with the reply",
        VersionMismatch = 1 => "BLOBRING_HELLO_VERSION_MISMATCH": "the daemon speaks another ABI version",
        NotPermitted = 2 => "BLOBRING_HELLO_NOT_PERMITTED": "the peer's uid/gid is not allowed by the daemon's policy",
        LimitExceeded = 3 => "BLOBRING_HELLO_LIMIT_EXCEEDED": "a per-client or per-uid limit would be exceeded",
        BadRequest = 4 => "BLOBRING_HELLO_BAD_REQUEST": "the request was malformed",
        Unavailable = 5 => "BLOBRING_HELLO_UNAVAILABLE": "the daemon cannot serve now (e.g. no host channel)",
    }
}

impl HelloReply {
    /// The refusal message as text (up to the first NUL; invalid UTF-8 replaced).
    pub fn message_text(&self) -> String {
        nul_padded_text(&self.message)
    }

    /// Sets `message`, truncated at a character boundary to fit.
    pub fn set_message(&mut self, text: &str) {
        set_nul_padded(&mut self.message, text);
    }
}

/// The text of a NUL-padded UTF-8 field (up to the first NUL; invalid UTF-8 replaced): the
/// refusal message of [`HelloReply`], the message of [`vmbus::BusError`].
pub fn nul_padded_text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Fills a NUL-padded UTF-8 field with `text`, truncated at a character boundary to fit.
pub fn set_nul_padded(field: &mut [u8], text: &str) {
    let mut end = text.len().min(field.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    field.fill(0);
    field[..end].copy_from_slice(&text.as_bytes()[..end]);
}

// ---------------------------------------------------------------------------------------------
// Compile-time layout checks
// ---------------------------------------------------------------------------------------------

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<RegionHeader>() == 128);
    assert!(size_of::<QueueControl>() == QUEUE_CONTROL_LEN as usize);
    assert!(offset_of!(QueueControl, sq_tail) == 0);
    assert!(offset_of!(QueueControl, sq_head) == 128);
    assert!(size_of::<Sqe>() == 64);
    assert!(offset_of!(Sqe, user_data) == 8);
    assert!(offset_of!(Sqe, request_offset) == 16);
    assert!(offset_of!(Sqe, request_len) == 40);
    assert!(size_of::<Cqe>() == 32);
    assert!(offset_of!(Cqe, res) == 8);
    assert!(offset_of!(Cqe, vsp_status) == 16);
    assert!(size_of::<HelloRequest>() == 64);
    assert!(size_of::<HelloReply>() == 256);
};

field_offsets! {
    /// Byte offsets of the [`QueueControl`] fields, for atomic access through a mapping.
    pub mod qc for QueueControl {
        SQ_TAIL = sq_tail,
        CQ_HEAD = cq_head,
        CQ_WAITING = cq_waiting,
        SQ_HEAD = sq_head,
        CQ_TAIL = cq_tail,
        SQ_NEED_WAKEUP = sq_need_wakeup,
        SQ_REJECTED = sq_rejected,
    }
}

// ---------------------------------------------------------------------------------------------
// C header
// ---------------------------------------------------------------------------------------------

/// The C header for non-Rust clients. `cargo run -p blobring-abi --example gen-header` writes
/// it to `abi/include/blobring.h`; it is not checked in, so the Rust declarations stay its only
/// source.
pub fn c_header() -> String {
    use cdecl::emit_struct;
    let mut out = String::from(
        "/* blobring.h — generated from the blobring-abi crate; do not edit.\n \
         * Generate: cargo run -p blobring-abi --example gen-header\n \
         * All fields little-endian. Never read peer-written memory twice: copy, then validate. */\n\
         #ifndef BLOBRING_H\n#define BLOBRING_H\n\n#include <stddef.h>\n#include <stdint.h>\n\n\
         #if defined(__cplusplus)\n#define BLOBRING_STATIC_ASSERT static_assert\n#else\n\
         #define BLOBRING_STATIC_ASSERT _Static_assert\n#endif\n\n",
    );
    let consts = [
        region_consts(),
        opcode_consts(),
        cqe_flag_consts(),
        hello_magic_consts(),
        hello_status_consts(),
        vmbus::ring_consts(),
        vmbus::packet_consts(),
        vmbus::vsp_consts(),
        vmbus::vsp_status_consts(),
    ];
    for (name, value) in consts.iter().flatten() {
        out.push_str(&format!("#define {name} {value}\n"));
    }
    out.push('\n');
    emit_struct::<RegionHeader>(&mut out);
    emit_struct::<QueueControl>(&mut out);
    emit_struct::<Sqe>(&mut out);
    emit_struct::<Cqe>(&mut out);
    emit_struct::<HelloRequest>(&mut out);
    emit_struct::<HelloReply>(&mut out);
    emit_struct::<vmbus::RingControl>(&mut out);
    emit_struct::<vmbus::PacketDescriptor>(&mut out);
    emit_struct::<vmbus::GpaDirectHeader>(&mut out);
    emit_struct::<vmbus::GpaRange>(&mut out);
    emit_struct::<vmbus::AzBlobVspRequest>(&mut out);
    emit_struct::<vmbus::AzBlobVspResponse>(&mut out);
    out.push_str("#endif /* BLOBRING_H */\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_name_every_code_once_and_only_theirs() {
        for s in HelloStatus::ALL {
            assert_eq!(HelloStatus::from_code(s.code()), Some(*s));
        }
        for s in vmbus::VspStatus::ALL {
            assert_eq!(vmbus::VspStatus::from_code(s.code()), Some(*s));
        }
        assert_eq!(HelloStatus::ALL.len(), 6);
        assert_eq!(HelloStatus::from_code(6), None);
        assert_eq!(vmbus::VspStatus::from_code(u32::MAX), None);
        assert_eq!(HelloStatus::LimitExceeded.code(), 3);
        assert_eq!(vmbus::VspStatus::BadPage.code(), 2);
        assert_eq!(
            vmbus::VspStatus::BadPage.to_string(),
            "a buffer page is outside the registered guest memory"
        );
        let h = c_header();
        assert!(h.contains("#define BLOBRING_HELLO_UNAVAILABLE 5\n"), "{h}");
        assert!(h.contains("#define AZ_BLOB_VSP_ERR_INTERNAL 5\n"), "{h}");
    }

    #[test]
    fn sqe_and_cqe_fields_round_trip() {
        let f = SqeFields {
            opcode: Opcode::Blob.code(),
            timeout_ms: 7,
            user_data: 9,
            request: SqeBuffer { offset: 1, len: 2 },
            response: SqeBuffer { offset: 3, len: 4 },
            data: SqeBuffer { offset: 5, len: 6 },
            data_valid: 6,
        };
        let sqe = Sqe::new(f);
        assert_eq!(sqe.fields(), f);
        assert!(sqe.reserved_is_zero());
        assert_eq!(
            (sqe.request_offset, sqe.response_len, sqe.data_valid),
            (1, 4, 6)
        );
        for bad in [
            Sqe { flags: 1, ..sqe },
            Sqe {
                reserved0: 1,
                ..sqe
            },
            Sqe {
                reserved1: 1,
                ..sqe
            },
        ] {
            assert!(!bad.reserved_is_zero());
            assert_eq!(bad.fields(), f);
        }
        assert_eq!(Sqe::nop(3).fields().opcode, Opcode::Nop.code());
        let c = CqeFields {
            user_data: 1,
            res: -4,
            flags: CQE_F_BUFFERS_LENT,
            vsp_status: 3,
            response_len: 5,
            data_len: 6,
        };
        assert_eq!(Cqe::new(c).fields(), c);
        assert_eq!(
            Cqe::bare(1, -4).fields(),
            CqeFields {
                flags: 0,
                vsp_status: 0,
                response_len: 0,
                data_len: 0,
                ..c
            }
        );
    }
}
