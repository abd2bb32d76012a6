//! Shared by the vmbus integration tests: blob request descriptions and socket pairs.

#![allow(dead_code)]

use std::os::fd::OwnedFd;

use blobring_vmbus::blob::{BlobRequestDesc, BufferPages};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

/// `len` bytes starting `offset` bytes into the first of `pfns`.
pub fn pages(offset: u32, len: u32, pfns: &[u64]) -> BufferPages<'_> {
    BufferPages { offset, len, pfns }
}

/// A request without a data buffer, no deadline and an all-zero GUID: only the request head
/// and the response head's buffer (override the rest with `..without_data(…)`).
pub fn without_data<'a>(
    request: BufferPages<'a>,
    response: BufferPages<'a>,
) -> BlobRequestDesc<'a> {
    BlobRequestDesc {
        timeout_ms: 0,
        transaction_guid: [0; 16],
        data: None,
        data_valid: 0,
        request,
        response,
    }
}

/// A connected pair of close-on-exec unix `SOCK_SEQPACKET` sockets (host end, guest end).
pub fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap()
}
