//! Feeds arbitrary bytes through a VMBus ring consumer and the packet and blob decoders, as a
//! hostile peer could: the control page indices and the whole data area are fuzzer-chosen.
//!
//! Input layout: `write_index u32 | read_index u32 | pending_send_sz u32 | interrupt_mask u32 |
//! data area...` (the data area is padded to a multiple of 8, at least 64 bytes).
//! Must never panic, hang or access out of bounds; every failure must be a typed error.
#![no_main]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use blobring_abi::vmbus::rc;
use blobring_shm::{HeapMemory, SharedMemory, Window};
use blobring_vmbus::blob::{parse_blob_completion, parse_blob_request};
use blobring_vmbus::guest_memory::GuestMemory;
use blobring_vmbus::packet::{PacketKind, decode};
use blobring_vmbus::ring::{IncomingRing, OutgoingRing, init_ring};
use libfuzzer_sys::fuzz_target;

fn u32_at(b: &[u8], i: usize) -> u32 {
    b.get(i * 4..i * 4 + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap_or([0; 4])))
}

fuzz_target!(|data: &[u8]| {
    let body = data.get(16..).unwrap_or(&[]);
    let dsize = (body.len().div_ceil(8) * 8).clamp(64, 1 << 20) as u64;
    let size = 4096 + dsize;
    let heap = Arc::new(HeapMemory::new(size));
    let mem = || Window::new(heap.clone(), 0, size).unwrap();
    init_ring(&mem()).unwrap();
    heap.write(4096, &body[..body.len().min(dsize as usize)])
        .unwrap();
    heap.store_u32(rc::WRITE_INDEX, u32_at(data, 0), Ordering::Relaxed)
        .unwrap();
    heap.store_u32(rc::READ_INDEX, u32_at(data, 1), Ordering::Relaxed)
        .unwrap();
    heap.store_u32(rc::PENDING_SEND_SZ, u32_at(data, 2), Ordering::Relaxed)
        .unwrap();
    heap.store_u32(rc::INTERRUPT_MASK, u32_at(data, 3), Ordering::Relaxed)
        .unwrap();

    // Guest memory for translation: 4 pages at PFN 0x100.
    let guest = Arc::new(HeapMemory::new(4 * 4096));
    let mut table = GuestMemory::new();
    table.register(1, 0x100 * 4096, 4 * 4096, guest).unwrap();

    let Ok(mut inc) = IncomingRing::new(mem()) else {
        return;
    };
    let mut buf = Vec::new();
    // Bounded: each packet consumes at least 24 bytes of a ≤ 1 MiB ring.
    for _ in 0..64 {
        let Ok(raw) = inc.read_packet(&mut buf) else {
            break;
        };
        assert_eq!(buf.len(), raw.len as usize);
        let Ok(p) = decode(&buf) else { break };
        if let PacketKind::GpaDirect(ranges) = p.kind {
            let mut n = 0usize;
            for r in ranges.iter() {
                assert!(r.byte_count != 0 && r.byte_offset < 4096);
                n += r.pfns().count();
            }
            assert!(n <= buf.len() / 8);
        }
        if let Ok(req) = parse_blob_request(&p) {
            assert_ne!(req.trans_id, 0);
            for range in [&req.data, &req.request, &req.response] {
                if let Ok(b) = table.translate(&req.pfns, range.start, range.end - range.start) {
                    let mut tmp = vec![0u8; b.len().min(64) as usize];
                    b.read_at(0, &mut tmp).unwrap();
                }
            }
        }
        let _ = parse_blob_completion(&p);
    }
    let _ = inc.commit_read();
    let _ = inc.arm();

    // The producer half must cope with a hostile read index too.
    if let Ok(mut out) = OutgoingRing::new(mem()) {
        let _ = out.write(&[&data[..data.len().min(200)]]);
        let _ = out.set_pending_send_size(u32_at(data, 2));
    }
});
