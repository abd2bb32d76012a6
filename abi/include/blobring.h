/* blobring.h — generated from the blobring-abi crate; do not edit.
 * Regenerate: cargo run -p blobring-abi --example gen-header
 * All fields little-endian. Never read peer-written memory twice: copy, then validate. */
#ifndef BLOBRING_H
#define BLOBRING_H

#include <stddef.h>
#include <stdint.h>

#if defined(__cplusplus)
#define BLOBRING_STATIC_ASSERT static_assert
#else
#define BLOBRING_STATIC_ASSERT _Static_assert
#endif

#define BLOBRING_REGION_MAGIC 0x31474e52424f4c42ULL
#define BLOBRING_ABI_VERSION 1
#define BLOBRING_HEADER_LEN 4096
#define BLOBRING_QUEUE_CONTROL_LEN 256
#define BLOBRING_MAX_SQ_ENTRIES 32768
#define BLOBRING_OP_BLOB 1
#define BLOBRING_OP_NOP 2
#define BLOBRING_CQE_F_BUFFERS_LENT 1
#define BLOBRING_CQE_F_BUFFERS_RELEASED 2
#define BLOBRING_HELLO_REQUEST_MAGIC 0x51485242u
#define BLOBRING_HELLO_REPLY_MAGIC 0x52485242u
#define BLOBRING_HELLO_OK 0
#define BLOBRING_HELLO_VERSION_MISMATCH 1
#define BLOBRING_HELLO_NOT_PERMITTED 2
#define BLOBRING_HELLO_LIMIT_EXCEEDED 3
#define BLOBRING_HELLO_BAD_REQUEST 4
#define BLOBRING_HELLO_UNAVAILABLE 5
#define HV_PKT_DATA_INBAND 6
#define HV_PKT_DATA_USING_GPA_DIRECT 9
#define HV_PKT_COMP 11
#define HV_PKT_FLAG_COMPLETION_REQUESTED 1
#define HV_RING_CONTROL_LEN 4096
#define AZ_BLOB_OP_USER_REQUEST 0x100
#define AZ_BLOB_VSP_PROTOCOL_VERSION 0
#define AZ_BLOB_MAX_PAGES 8192
#define AZ_BLOB_VSP_OK 0
#define AZ_BLOB_VSP_ERR_BAD_REQUEST 1
#define AZ_BLOB_VSP_ERR_BAD_PAGE 2
#define AZ_BLOB_VSP_ERR_BODY_TOO_LARGE 3
#define AZ_BLOB_VSP_ERR_HEAD_TOO_LARGE 4
#define AZ_BLOB_VSP_ERR_INTERNAL 5

/*
 *Region header, daemon-written line (offset 0 of the region, 128 bytes).
 */
struct blobring_region_header {
    uint64_t magic;
    uint32_t abi_version;
    uint32_t header_len;
    uint64_t region_len;
    uint32_t page_size;
    uint32_t n_queues;
    uint32_t sq_entries;
    uint32_t cq_entries;
    uint64_t queue_offset;
    uint64_t queue_stride;
    uint64_t arena_offset;
    uint64_t arena_len;
    uint64_t client_id;
    uint8_t reserved[48];
};
BLOBRING_STATIC_ASSERT(sizeof(struct blobring_region_header) == 128, "struct blobring_region_header size");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_region_header, magic) == 0, "blobring_region_header.magic");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_region_header, abi_version) == 8, "blobring_region_header.abi_version");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_region_header, header_len) == 12, "blobring_region_header.header_len");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_region_header, region_len) == 16, "blobring_region_header.region_len");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_region_header, page_size) == 24, "blobring_region_header.page_size");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_region_header, n_queues) == 28, "blobring_region_header.n_queues");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_region_header, sq_entries) == 32, "blobring_region_header.sq_entries");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_region_header, cq_entries) == 36, "blobring_region_header.cq_entries");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_region_header, queue_offset) == 40, "blobring_region_header.queue_offset");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_region_header, queue_stride) == 48, "blobring_region_header.queue_stride");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_region_header, arena_offset) == 56, "blobring_region_header.arena_offset");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_region_header, arena_len) == 64, "blobring_region_header.arena_len");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_region_header, client_id) == 72, "blobring_region_header.client_id");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_region_header, reserved) == 80, "blobring_region_header.reserved");

/*
 *Queue-pair control block: two 128-byte lines, one per writer.
 */
struct blobring_queue_control {
    uint32_t sq_tail;
    uint32_t cq_head;
    uint32_t cq_waiting;
    uint8_t client_reserved[116];
    uint32_t sq_head;
    uint32_t cq_tail;
    uint32_t sq_need_wakeup;
    uint32_t sq_rejected;
    uint8_t daemon_reserved[112];
};
BLOBRING_STATIC_ASSERT(sizeof(struct blobring_queue_control) == 256, "struct blobring_queue_control size");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_queue_control, sq_tail) == 0, "blobring_queue_control.sq_tail");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_queue_control, cq_head) == 4, "blobring_queue_control.cq_head");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_queue_control, cq_waiting) == 8, "blobring_queue_control.cq_waiting");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_queue_control, client_reserved) == 12, "blobring_queue_control.client_reserved");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_queue_control, sq_head) == 128, "blobring_queue_control.sq_head");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_queue_control, cq_tail) == 132, "blobring_queue_control.cq_tail");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_queue_control, sq_need_wakeup) == 136, "blobring_queue_control.sq_need_wakeup");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_queue_control, sq_rejected) == 140, "blobring_queue_control.sq_rejected");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_queue_control, daemon_reserved) == 144, "blobring_queue_control.daemon_reserved");

/*
 *Submission queue entry (64 bytes, one cache line).
 */
struct blobring_sqe {
    uint8_t opcode;
    uint8_t flags;
    uint16_t reserved0;
    uint32_t timeout_ms;
    uint64_t user_data;
    uint64_t request_offset;
    uint64_t response_offset;
    uint64_t data_offset;
    uint32_t request_len;
    uint32_t response_len;
    uint32_t data_len;
    uint32_t data_valid;
    uint64_t reserved1;
};
BLOBRING_STATIC_ASSERT(sizeof(struct blobring_sqe) == 64, "struct blobring_sqe size");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_sqe, opcode) == 0, "blobring_sqe.opcode");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_sqe, flags) == 1, "blobring_sqe.flags");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_sqe, reserved0) == 2, "blobring_sqe.reserved0");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_sqe, timeout_ms) == 4, "blobring_sqe.timeout_ms");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_sqe, user_data) == 8, "blobring_sqe.user_data");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_sqe, request_offset) == 16, "blobring_sqe.request_offset");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_sqe, response_offset) == 24, "blobring_sqe.response_offset");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_sqe, data_offset) == 32, "blobring_sqe.data_offset");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_sqe, request_len) == 40, "blobring_sqe.request_len");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_sqe, response_len) == 44, "blobring_sqe.response_len");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_sqe, data_len) == 48, "blobring_sqe.data_len");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_sqe, data_valid) == 52, "blobring_sqe.data_valid");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_sqe, reserved1) == 56, "blobring_sqe.reserved1");

/*
 *Completion queue entry (32 bytes).
 */
struct blobring_cqe {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
    uint32_t vsp_status;
    uint32_t response_len;
    uint32_t data_len;
    uint32_t reserved;
};
BLOBRING_STATIC_ASSERT(sizeof(struct blobring_cqe) == 32, "struct blobring_cqe size");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_cqe, user_data) == 0, "blobring_cqe.user_data");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_cqe, res) == 8, "blobring_cqe.res");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_cqe, flags) == 12, "blobring_cqe.flags");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_cqe, vsp_status) == 16, "blobring_cqe.vsp_status");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_cqe, response_len) == 20, "blobring_cqe.response_len");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_cqe, data_len) == 24, "blobring_cqe.data_len");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_cqe, reserved) == 28, "blobring_cqe.reserved");

/*
 *First message of a client on the daemon socket (64 bytes).
 */
struct blobring_hello_request {
    uint32_t magic;
    uint32_t abi_version;
    uint32_t sq_entries;
    uint32_t flags;
    uint64_t arena_len;
    uint8_t reserved[40];
};
BLOBRING_STATIC_ASSERT(sizeof(struct blobring_hello_request) == 64, "struct blobring_hello_request size");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_hello_request, magic) == 0, "blobring_hello_request.magic");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_hello_request, abi_version) == 4, "blobring_hello_request.abi_version");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_hello_request, sq_entries) == 8, "blobring_hello_request.sq_entries");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_hello_request, flags) == 12, "blobring_hello_request.flags");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_hello_request, arena_len) == 16, "blobring_hello_request.arena_len");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_hello_request, reserved) == 24, "blobring_hello_request.reserved");

/*
 *The daemon's answer (256 bytes). With [`HELLO_OK`] it carries, as `SCM_RIGHTS`, the
 * region memfd followed by one eventfd per queue pair; otherwise `message` says why.
 */
struct blobring_hello_reply {
    uint32_t magic;
    uint32_t abi_version;
    uint32_t status;
    uint32_t n_queues;
    uint64_t region_len;
    uint64_t client_id;
    uint8_t message[224];
};
BLOBRING_STATIC_ASSERT(sizeof(struct blobring_hello_reply) == 256, "struct blobring_hello_reply size");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_hello_reply, magic) == 0, "blobring_hello_reply.magic");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_hello_reply, abi_version) == 4, "blobring_hello_reply.abi_version");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_hello_reply, status) == 8, "blobring_hello_reply.status");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_hello_reply, n_queues) == 12, "blobring_hello_reply.n_queues");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_hello_reply, region_len) == 16, "blobring_hello_reply.region_len");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_hello_reply, client_id) == 24, "blobring_hello_reply.client_id");
BLOBRING_STATIC_ASSERT(offsetof(struct blobring_hello_reply, message) == 32, "blobring_hello_reply.message");

/*
 *Ring control page (`hv_ring_buffer`), 4096 bytes at the start of each ring.
 */
struct hv_ring_control {
    uint32_t write_index;
    uint32_t read_index;
    uint32_t interrupt_mask;
    uint32_t pending_send_sz;
    uint32_t reserved1[12];
    uint32_t feature_bits;
    uint8_t reserved2[4028];
};
BLOBRING_STATIC_ASSERT(sizeof(struct hv_ring_control) == 4096, "struct hv_ring_control size");
BLOBRING_STATIC_ASSERT(offsetof(struct hv_ring_control, write_index) == 0, "hv_ring_control.write_index");
BLOBRING_STATIC_ASSERT(offsetof(struct hv_ring_control, read_index) == 4, "hv_ring_control.read_index");
BLOBRING_STATIC_ASSERT(offsetof(struct hv_ring_control, interrupt_mask) == 8, "hv_ring_control.interrupt_mask");
BLOBRING_STATIC_ASSERT(offsetof(struct hv_ring_control, pending_send_sz) == 12, "hv_ring_control.pending_send_sz");
BLOBRING_STATIC_ASSERT(offsetof(struct hv_ring_control, reserved1) == 16, "hv_ring_control.reserved1");
BLOBRING_STATIC_ASSERT(offsetof(struct hv_ring_control, feature_bits) == 64, "hv_ring_control.feature_bits");
BLOBRING_STATIC_ASSERT(offsetof(struct hv_ring_control, reserved2) == 68, "hv_ring_control.reserved2");

/*
 *`vmpacket_descriptor`: the 16 bytes that start every packet.
 */
struct hv_packet_descriptor {
    uint16_t packet_type;
    uint16_t offset8;
    uint16_t len8;
    uint16_t flags;
    uint64_t trans_id;
};
BLOBRING_STATIC_ASSERT(sizeof(struct hv_packet_descriptor) == 16, "struct hv_packet_descriptor size");
BLOBRING_STATIC_ASSERT(offsetof(struct hv_packet_descriptor, packet_type) == 0, "hv_packet_descriptor.packet_type");
BLOBRING_STATIC_ASSERT(offsetof(struct hv_packet_descriptor, offset8) == 2, "hv_packet_descriptor.offset8");
BLOBRING_STATIC_ASSERT(offsetof(struct hv_packet_descriptor, len8) == 4, "hv_packet_descriptor.len8");
BLOBRING_STATIC_ASSERT(offsetof(struct hv_packet_descriptor, flags) == 6, "hv_packet_descriptor.flags");
BLOBRING_STATIC_ASSERT(offsetof(struct hv_packet_descriptor, trans_id) == 8, "hv_packet_descriptor.trans_id");

/*
 *Header after the descriptor of a GPA-direct packet; the ranges follow at offset 24.
 */
struct hv_gpa_direct_header {
    uint32_t reserved;
    uint32_t range_count;
};
BLOBRING_STATIC_ASSERT(sizeof(struct hv_gpa_direct_header) == 8, "struct hv_gpa_direct_header size");
BLOBRING_STATIC_ASSERT(offsetof(struct hv_gpa_direct_header, reserved) == 0, "hv_gpa_direct_header.reserved");
BLOBRING_STATIC_ASSERT(offsetof(struct hv_gpa_direct_header, range_count) == 4, "hv_gpa_direct_header.range_count");

/*
 *One GPA range header; `ceil((byte_offset + byte_count) / 4096)` u64 PFNs follow.
 */
struct hv_gpa_range {
    uint32_t byte_count;
    uint32_t byte_offset;
};
BLOBRING_STATIC_ASSERT(sizeof(struct hv_gpa_range) == 8, "struct hv_gpa_range size");
BLOBRING_STATIC_ASSERT(offsetof(struct hv_gpa_range, byte_count) == 0, "hv_gpa_range.byte_count");
BLOBRING_STATIC_ASSERT(offsetof(struct hv_gpa_range, byte_offset) == 4, "hv_gpa_range.byte_offset");

/*
 *`az_blob_vsp_request` (56 bytes): the in-band payload of a GPA-direct blob request.
 */
struct az_blob_vsp_request {
    uint32_t version;
    uint32_t timeout_ms;
    uint32_t data_buffer_offset;
    uint32_t data_buffer_length;
    uint32_t data_buffer_valid;
    uint32_t operation_type;
    uint32_t request_buffer_offset;
    uint32_t request_buffer_length;
    uint32_t response_buffer_offset;
    uint32_t response_buffer_length;
    uint8_t transaction_id[16];
};
BLOBRING_STATIC_ASSERT(sizeof(struct az_blob_vsp_request) == 56, "struct az_blob_vsp_request size");
BLOBRING_STATIC_ASSERT(offsetof(struct az_blob_vsp_request, version) == 0, "az_blob_vsp_request.version");
BLOBRING_STATIC_ASSERT(offsetof(struct az_blob_vsp_request, timeout_ms) == 4, "az_blob_vsp_request.timeout_ms");
BLOBRING_STATIC_ASSERT(offsetof(struct az_blob_vsp_request, data_buffer_offset) == 8, "az_blob_vsp_request.data_buffer_offset");
BLOBRING_STATIC_ASSERT(offsetof(struct az_blob_vsp_request, data_buffer_length) == 12, "az_blob_vsp_request.data_buffer_length");
BLOBRING_STATIC_ASSERT(offsetof(struct az_blob_vsp_request, data_buffer_valid) == 16, "az_blob_vsp_request.data_buffer_valid");
BLOBRING_STATIC_ASSERT(offsetof(struct az_blob_vsp_request, operation_type) == 20, "az_blob_vsp_request.operation_type");
BLOBRING_STATIC_ASSERT(offsetof(struct az_blob_vsp_request, request_buffer_offset) == 24, "az_blob_vsp_request.request_buffer_offset");
BLOBRING_STATIC_ASSERT(offsetof(struct az_blob_vsp_request, request_buffer_length) == 28, "az_blob_vsp_request.request_buffer_length");
BLOBRING_STATIC_ASSERT(offsetof(struct az_blob_vsp_request, response_buffer_offset) == 32, "az_blob_vsp_request.response_buffer_offset");
BLOBRING_STATIC_ASSERT(offsetof(struct az_blob_vsp_request, response_buffer_length) == 36, "az_blob_vsp_request.response_buffer_length");
BLOBRING_STATIC_ASSERT(offsetof(struct az_blob_vsp_request, transaction_id) == 40, "az_blob_vsp_request.transaction_id");

/*
 *`az_blob_vsp_response` (12 bytes): the payload of the completion packet.
 */
struct az_blob_vsp_response {
    uint32_t length;
    uint32_t error;
    uint32_t response_len;
};
BLOBRING_STATIC_ASSERT(sizeof(struct az_blob_vsp_response) == 12, "struct az_blob_vsp_response size");
BLOBRING_STATIC_ASSERT(offsetof(struct az_blob_vsp_response, length) == 0, "az_blob_vsp_response.length");
BLOBRING_STATIC_ASSERT(offsetof(struct az_blob_vsp_response, error) == 4, "az_blob_vsp_response.error");
BLOBRING_STATIC_ASSERT(offsetof(struct az_blob_vsp_response, response_len) == 8, "az_blob_vsp_response.response_len");

#endif /* BLOBRING_H */
