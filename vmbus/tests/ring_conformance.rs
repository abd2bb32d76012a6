//! Ring conformance against a model (`reference/vmbus.md` §1): random packet sizes through
//! small rings starting at every offset, the never-full rule, byte-exact payloads, and the
//! exact signalling transitions on both sides.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use blobring_abi::vmbus::rc;
use blobring_shm::{HeapMemory, SharedMemory, Window};
use blobring_vmbus::packet::{decode, encode_inband};
use blobring_vmbus::ring::{
    Corruption, IncomingRing, OutgoingRing, ReadError, WriteError, align8, init_ring,
};
use proptest::prelude::*;

type Mem = Window<Arc<HeapMemory>>;

fn ring(dsize: u32, start: u32) -> (Arc<HeapMemory>, OutgoingRing<Mem>, IncomingRing<Mem>) {
    let size = 4096 + u64::from(dsize);
    let heap = Arc::new(HeapMemory::new(size));
    let w = || Window::new(heap.clone(), 0, size).unwrap();
    init_ring(&w()).unwrap();
    heap.store_u32(rc::WRITE_INDEX, start, Ordering::Relaxed)
        .unwrap();
    heap.store_u32(rc::READ_INDEX, start, Ordering::Relaxed)
        .unwrap();
    let out = OutgoingRing::new(w()).unwrap();
    let inc = IncomingRing::new(w()).unwrap();
    (heap, out, inc)
}

#[derive(Debug, Clone)]
enum Op {
    Write(usize, u8),
    Commit,
    Read,
    Release,
    Mask(bool),
    Pending(u32),
}

fn op(dsize: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..=dsize as usize, any::<u8>()).prop_map(|(l, s)| Op::Write(l, s)),
        2 => Just(Op::Commit),
        4 => Just(Op::Read),
        2 => Just(Op::Release),
        1 => any::<bool>().prop_map(Op::Mask),
        1 => (0..dsize + 16).prop_map(Op::Pending),
    ]
}

/// Model: packets in order with their ring footprint; four cursors (counts of packets).
struct Model {
    dsize: u32,
    packets: Vec<(Vec<u8>, u32)>,
    committed: usize,
    read: usize,
    released: usize,
    mask: bool,
    pending: u32,
}

impl Model {
    fn bytes(&self, from: usize, to: usize) -> u32 {
        self.packets[from..to].iter().map(|p| p.1).sum()
    }
}

fn run(dsize: u32, start: u32, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (heap, mut out, mut inc) = ring(dsize, start);
    let mut m = Model {
        dsize,
        packets: Vec::new(),
        committed: 0,
        read: 0,
        released: 0,
        mask: false,
        pending: 0,
    };
    let mut buf = Vec::new();
    let mut pkt = Vec::new();
    for op in ops {
        match op {
            Op::Write(len, seed) => {
                let payload: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
                encode_inband(&mut pkt, 1, false, &payload).unwrap();
                let total = align8(pkt.len() as u32) + 8;
                let used = m.bytes(m.released, m.packets.len());
                let free = dsize - used;
                match out.write_uncommitted(&[&pkt]) {
                    Ok(()) => {
                        prop_assert!(pkt.len() as u32 <= dsize - 16);
                        // Never full: strictly more than the packet must have been free.
                        prop_assert!(free > total, "wrote {total} with only {free} free");
                        m.packets.push((payload, total));
                        m.pending = 0;
                    }
                    Err(WriteError::Full { needed, available }) => {
                        prop_assert_eq!(needed, total);
                        prop_assert_eq!(available, free);
                        prop_assert!(free <= total);
                    }
                    Err(WriteError::TooLarge { .. }) => prop_assert!(pkt.len() as u32 > dsize - 16),
                    Err(e) => return Err(TestCaseError::fail(format!("write: {e}"))),
                }
            }
            Op::Commit => {
                let was_empty = m.released == m.committed;
                let new = m.committed < m.packets.len();
                let sig = out.commit_write().unwrap();
                // Producer signals only on empty → non-empty with the mask clear (§1.6).
                prop_assert_eq!(sig, new && was_empty && !m.mask);
                m.committed = m.packets.len();
            }
            Op::Read => match inc.read_packet(&mut buf) {
                Ok(raw) => {
                    prop_assert!(m.read < m.committed, "read an uncommitted packet");
                    let p = decode(&buf).unwrap();
                    let (payload, total) = &m.packets[m.read];
                    prop_assert_eq!(raw.len + 8, *total);
                    prop_assert_eq!(&p.payload[..payload.len()], &payload[..]);
                    prop_assert!(p.payload[payload.len()..].iter().all(|&b| b == 0));
                    m.read += 1;
                }
                Err(ReadError::Empty) => prop_assert_eq!(m.read, m.committed),
                Err(e) => return Err(TestCaseError::fail(format!("read: {e}"))),
            },
            Op::Release => {
                let freed = m.bytes(m.released, m.read);
                let sig = inc.commit_read().unwrap();
                m.released = m.read;
                // Free space as the consumer sees it: from the published write index.
                let cur = m.dsize - m.bytes(m.released, m.committed);
                let pend = m.pending & !7;
                let expect =
                    freed != 0 && pend != 0 && cur.saturating_sub(freed) <= pend && cur > pend;
                prop_assert_eq!(sig, expect, "freed {} cur {} pend {}", freed, cur, pend);
            }
            Op::Mask(b) => {
                inc.set_interrupt_mask(b).unwrap();
                m.mask = b;
            }
            Op::Pending(x) => {
                let now = out.set_pending_send_size(x).unwrap();
                m.pending = align8(x);
                let free = dsize - m.bytes(m.released, m.packets.len());
                prop_assert_eq!(now, free > m.pending);
            }
        }
        // Control-page invariants after every step.
        let w = heap.load_u32(rc::WRITE_INDEX, Ordering::Relaxed).unwrap();
        let r = heap.load_u32(rc::READ_INDEX, Ordering::Relaxed).unwrap();
        prop_assert_eq!(w, (start + m.bytes(0, m.committed)) % dsize);
        prop_assert_eq!(r, (start + m.bytes(0, m.released)) % dsize);
        prop_assert_eq!(
            heap.load_u32(rc::PENDING_SEND_SZ, Ordering::Relaxed)
                .unwrap(),
            m.pending
        );
    }
    Ok(())
}

fn dsize_and_start() -> impl Strategy<Value = (u32, u32)> {
    prop_oneof![Just(64u32), Just(72), Just(128), Just(200), Just(4096)]
        .prop_flat_map(|d| (Just(d), (0..d / 8).prop_map(|k| k * 8)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn ring_matches_model((dsize, start) in dsize_and_start(), ops in prop::collection::vec(op(200), 1..120)) {
        let ops = ops.into_iter().map(|o| match o {
            Op::Write(l, s) => Op::Write(l % (dsize as usize + 1), s),
            Op::Pending(x) => Op::Pending(x % (dsize + 16)),
            o => o,
        }).collect();
        run(dsize, start, ops)?;
    }
}

/// Wrap at every offset of a 4096-byte ring with a packet that straddles the end, checking
/// the raw bytes: descriptor split, zero padding and the trailer `start << 32` (§1.4, §1.5).
#[test]
fn wrap_at_every_offset_is_byte_exact() {
    let dsize = 4096u32;
    for start in (0..dsize).step_by(8) {
        let (heap, mut out, mut inc) = ring(dsize, start);
        let payload: Vec<u8> = (0..45u32).map(|i| (i * 7 + start) as u8).collect();
        let mut pkt = Vec::new();
        encode_inband(&mut pkt, 0xabcd, true, &payload).unwrap();
        assert_eq!(pkt.len(), 64);
        assert!(
            out.write(&[&pkt]).unwrap(),
            "first packet into an empty ring signals"
        );
        // Raw ring bytes, unwrapped.
        let mut raw = [0u8; 72];
        for (i, b) in raw.iter_mut().enumerate() {
            let mut x = [0u8];
            heap.read(4096 + u64::from((start + i as u32) % dsize), &mut x)
                .unwrap();
            *b = x[0];
        }
        assert_eq!(&raw[..64], &pkt[..]);
        assert_eq!(&raw[64..72], &(u64::from(start) << 32).to_le_bytes());
        let mut buf = Vec::new();
        let p = inc.read_packet(&mut buf).unwrap();
        assert_eq!(p.desc.trans_id, 0xabcd);
        assert_eq!(buf, pkt);
        assert!(!inc.commit_read().unwrap());
        assert_eq!(inc.read_packet(&mut buf), Err(ReadError::Empty));
    }
}

#[test]
fn never_full_leaves_eight_bytes() {
    let (_, mut out, mut inc) = ring(64, 0);
    // 40-byte packet + 8 trailer = 48 < 64: fits; a second one does not.
    assert!(out.write(&[&pkt(40)]).unwrap());
    assert!(matches!(
        out.write(&[&[0u8; 8]]),
        Err(WriteError::Full {
            needed: 16,
            available: 16
        })
    ));
    assert!(matches!(
        out.write(&[&[0u8; 1]]),
        Err(WriteError::Full { .. })
    ));
    assert_eq!(out.max_packet_len(), 48);
    assert!(matches!(
        out.write(&[&[0u8; 49]]),
        Err(WriteError::TooLarge { .. })
    ));
    let _ = inc.read_packet(&mut Vec::new()).unwrap();
}

#[test]
fn peer_indices_are_validated_on_every_load() {
    let (heap, mut out, mut inc) = ring(128, 0);
    let mut buf = Vec::new();
    for bad in [4u32, 128, 1000, u32::MAX] {
        heap.store_u32(rc::READ_INDEX, bad, Ordering::Relaxed)
            .unwrap();
        assert!(matches!(
            out.available(),
            Err(Corruption::BadIndex {
                field: "read_index",
                ..
            })
        ));
        assert!(matches!(
            out.write(&[&[0u8; 8]]),
            Err(WriteError::Corrupt(Corruption::BadIndex { .. }))
        ));
        heap.store_u32(rc::WRITE_INDEX, bad, Ordering::Relaxed)
            .unwrap();
        assert!(matches!(
            inc.read_packet(&mut buf),
            Err(ReadError::Corrupt(Corruption::BadIndex {
                field: "write_index",
                ..
            }))
        ));
    }
    // A fresh half refuses an invalid own index at construction.
    let size = 4096 + 128;
    assert!(OutgoingRing::new(Window::new(heap.clone(), 0, size).unwrap()).is_err());
    assert!(IncomingRing::new(Window::new(heap, 0, size).unwrap()).is_err());
}

#[test]
fn malformed_descriptors_in_the_ring_are_corruption() {
    let put = |heap: &HeapMemory, bytes: &[u8], w: u32| {
        heap.write(4096, bytes).unwrap();
        heap.store_u32(rc::WRITE_INDEX, w, Ordering::Release)
            .unwrap();
    };
    let desc = |off8: u16, len8: u16| {
        let mut d = vec![6, 0];
        d.extend_from_slice(&off8.to_le_bytes());
        d.extend_from_slice(&len8.to_le_bytes());
        d.extend_from_slice(&[0; 10]);
        d
    };
    let mut buf = Vec::new();
    let cases: Vec<(Vec<u8>, u32, Corruption)> = vec![
        (desc(1, 2), 24, Corruption::OffsetTooSmall(1)),
        (
            desc(3, 2),
            24,
            Corruption::LenBelowOffset {
                len8: 2,
                offset8: 3,
            },
        ),
        (
            desc(2, 3),
            24,
            Corruption::PacketTooLong { len: 24, avail: 24 },
        ),
        (desc(2, 2), 16, Corruption::Truncated(16)),
        (desc(2, 2), 8, Corruption::Truncated(8)),
    ];
    for (bytes, w, want) in cases {
        let (heap, _, mut inc) = ring(128, 0);
        put(&heap, &bytes, w);
        assert_eq!(inc.read_packet(&mut buf), Err(ReadError::Corrupt(want)));
    }
}

/// §1.7: the consumer signals exactly when the free space crosses pending_send_sz, and only if
/// the producer set the feature bit.
#[test]
fn pending_send_size_transition() {
    let (heap, mut out, mut inc) = ring(256, 0);
    let mut buf = Vec::new();
    for _ in 0..4 {
        out.write(&[&pkt(40)]).unwrap(); // 48 bytes each: 192 used, 64 free
    }
    let Err(WriteError::Full { needed, .. }) = out.write(&[&pkt(96)]) else {
        panic!()
    };
    assert_eq!(needed, 104);
    assert!(!out.set_pending_send_size(needed).unwrap());
    inc.read_packet(&mut buf).unwrap();
    // 64 free before, 112 after: crosses 104 → signal.
    assert!(inc.commit_read().unwrap());
    inc.read_packet(&mut buf).unwrap();
    // 112 before: the producer was already signalled.
    assert!(!inc.commit_read().unwrap());
    // The blocked write now succeeds and clears pending_send_sz.
    out.write(&[&pkt(96)]).unwrap();
    assert_eq!(
        heap.load_u32(rc::PENDING_SEND_SZ, Ordering::Relaxed)
            .unwrap(),
        0
    );
    // Without the feature bit the consumer never signals.
    heap.store_u32(rc::FEATURE_BITS, 0, Ordering::Relaxed)
        .unwrap();
    heap.store_u32(rc::PENDING_SEND_SZ, 200, Ordering::Relaxed)
        .unwrap();
    inc.read_packet(&mut buf).unwrap();
    assert!(!inc.commit_read().unwrap());
}

/// An encoded in-band packet of exactly `n` bytes (`n` a multiple of 8, ≥ 16).
fn pkt(n: usize) -> Vec<u8> {
    let mut v = Vec::new();
    encode_inband(&mut v, 1, false, &vec![1u8; n - 16]).unwrap();
    assert_eq!(v.len(), n);
    v
}

/// Found by `fuzz/vmbus_packet`: an absurd pending size must not overflow the rounding.
#[test]
fn regress_pending_size_align_overflow() {
    let (_, mut out, _) = ring(64, 0);
    assert!(!out.set_pending_send_size(u32::MAX).unwrap());
    out.clear_pending_send_size().unwrap();
}
