//! A hostile (or broken) peer: random indices, random entry bytes, indices moving backwards.
//! Every case must end in a value or a `RingError`, never a panic, a hang or a bad access, and
//! the half that refused an index must stay usable.

use std::sync::atomic::Ordering::Relaxed;

use blobring_abi::{Cqe, FromZeros, IntoBytes, Sqe, qc};
use blobring_ring::{ClientQueue, CqConsumer, DaemonQueue, QueueLayout, RingError, SqProducer};
use blobring_shm::{HeapMemory, SharedMemory};
use proptest::prelude::*;

const SQ: u32 = 8;
const CQ: u32 = 16;

fn setup(start: u32) -> (HeapMemory, QueueLayout) {
    let layout = QueueLayout::contiguous(128, SQ, CQ).unwrap();
    let mem = HeapMemory::new(layout.end());
    layout.initialize(&mem, start).unwrap();
    (mem, layout)
}

fn poke(mem: &HeapMemory, layout: &QueueLayout, field: u64, v: u32) {
    mem.store_u32(layout.control + field, v, Relaxed).unwrap();
}

fn is_corrupt(e: &RingError, name: &str) -> bool {
    e.is_peer_fault() && matches!(e, RingError::Corrupt { field, .. } if *field == name)
}

proptest! {
    /// Random `sq_tail` values: the daemon takes only entries inside the window, refuses the
    /// rest with `Corrupt`, and afterwards still serves a sane tail.
    #[test]
    fn random_sq_tail(start in any::<u32>(), tails in proptest::collection::vec(any::<u32>(), 1..40)) {
        let (mem, layout) = setup(start);
        let mut d = DaemonQueue::new(&mem, &layout, start).unwrap();
        let mut head = start;
        let mut buf = [Sqe::new_zeroed(); 4];
        for t in tails {
            poke(&mem, &layout, qc::SQ_TAIL, t);
            match d.take(&mut buf) {
                Ok(n) => {
                    prop_assert!(t.wrapping_sub(head) <= SQ, "accepted tail outside the window");
                    prop_assert!(n <= 4 && n as u32 <= t.wrapping_sub(head));
                    head = head.wrapping_add(n as u32);
                    // Complete them so credits never run out.
                    let cqes = vec![Cqe::new_zeroed(); n];
                    let _ = d.complete(&cqes).unwrap();
                    poke(&mem, &layout, qc::CQ_HEAD, mem.load_u32(layout.control + qc::CQ_TAIL, Relaxed).unwrap());
                }
                Err(e) => prop_assert!(is_corrupt(&e, "sq_tail"), "{e}"),
            }
            prop_assert_eq!(mem.load_u32(layout.control + qc::SQ_HEAD, Relaxed).unwrap(), head);
        }
        // Repaired: publish exactly one more entry past what the daemon has taken or seen.
        let mut clean = d.sq().cached_tail();
        if clean == head {
            clean = head.wrapping_add(1);
        }
        poke(&mem, &layout, qc::SQ_TAIL, clean);
        let n = d.take(&mut buf).unwrap();
        prop_assert_eq!(n as u32, clean.wrapping_sub(head).min(4));
    }

    /// Random SQE bytes are copied out once and returned exactly as written.
    #[test]
    fn random_sqe_bytes(start in any::<u32>(), bytes in proptest::collection::vec(any::<[u8; 64]>(), 1..=8)) {
        let (mem, layout) = setup(start);
        let mut d = DaemonQueue::new(&mem, &layout, start).unwrap();
        for (i, b) in bytes.iter().enumerate() {
            let slot = start.wrapping_add(i as u32) & (SQ - 1);
            mem.write(layout.sqes + u64::from(slot) * 64, b).unwrap();
        }
        poke(&mem, &layout, qc::SQ_TAIL, start.wrapping_add(bytes.len() as u32));
        let mut out = vec![Sqe::new_zeroed(); 8];
        let n = d.take(&mut out).unwrap();
        prop_assert_eq!(n, bytes.len());
        for (s, b) in out.iter().zip(&bytes) {
            prop_assert_eq!(s.as_bytes(), &b[..]);
        }
    }

    /// Random `cq_head` values written by the client: the daemon refuses a head beyond its
    /// tail or moving backwards, and never posts past the CQ's capacity.
    #[test]
    fn random_cq_head(start in any::<u32>(), heads in proptest::collection::vec(any::<u32>(), 1..40)) {
        let (mem, layout) = setup(start);
        let mut d = DaemonQueue::new(&mem, &layout, start).unwrap();
        poke(&mem, &layout, qc::SQ_TAIL, start.wrapping_add(SQ));
        let mut buf = [Sqe::new_zeroed(); SQ as usize];
        prop_assert_eq!(d.take(&mut buf).unwrap(), SQ as usize);
        let _ = d.complete(&[Cqe::new_zeroed(); SQ as usize]).unwrap();
        let tail = start.wrapping_add(SQ);
        let mut head = start;
        for h in heads {
            poke(&mem, &layout, qc::CQ_HEAD, h);
            match d.credits(CQ) {
                Ok(c) => {
                    let moved = h.wrapping_sub(head);
                    prop_assert!(moved <= tail.wrapping_sub(head), "accepted a head past the tail");
                    head = h;
                    prop_assert_eq!(c, CQ - tail.wrapping_sub(head));
                }
                Err(e) => prop_assert!(is_corrupt(&e, "cq_head"), "{e}"),
            }
        }
    }

    /// A client facing random `cq_tail` values (a broken daemon) gets `Corrupt`, never reads
    /// past the window, and recovers when the tail is sane again.
    #[test]
    fn random_cq_tail(start in any::<u32>(), tails in proptest::collection::vec(any::<u32>(), 1..40)) {
        let (mem, layout) = setup(start);
        let mut c = CqConsumer::attach(&mem, &layout).unwrap();
        let mut out = [Cqe::new_zeroed(); 4];
        let mut head = start;
        for t in tails {
            poke(&mem, &layout, qc::CQ_TAIL, t);
            match c.pop_batch(&mut out) {
                Ok(p) => {
                    prop_assert!(t.wrapping_sub(head) <= CQ);
                    head = head.wrapping_add(p.count as u32);
                }
                Err(e) => prop_assert!(is_corrupt(&e, "cq_tail"), "{e}"),
            }
            prop_assert_eq!(c.head(), head);
            // prepare_wait must not panic either; undo its flag.
            let _ = c.prepare_wait();
            c.finish_wait().unwrap();
        }
    }

    /// Random garbage in every control word and flag: nothing panics.
    #[test]
    fn random_control_block(words in proptest::collection::vec(any::<u32>(), 64)) {
        let (mem, layout) = setup(0);
        let mut client = ClientQueue::attach(&mem, &layout).unwrap();
        let mut d = DaemonQueue::new(&mem, &layout, 0).unwrap();
        for (i, w) in words.iter().enumerate() {
            mem.store_u32(layout.control + 4 * i as u64, *w, Relaxed).unwrap();
        }
        let _ = d.take(&mut [Sqe::new_zeroed(); 4]);
        let _ = d.prepare_sleep();
        let _ = d.post_unreserved(&Cqe::new_zeroed());
        let _ = client.submit(&[Sqe::new_zeroed(); 3]);
        let _ = client.reap(&mut [Cqe::new_zeroed(); 3]);
        let _ = client.cq.prepare_wait();
        let _ = ClientQueue::attach(&mem, &layout);
    }
}

#[test]
fn cq_tail_corruption_cases() {
    let (mem, layout) = setup(u32::MAX - 2);
    let mut c = CqConsumer::attach(&mem, &layout).unwrap();
    let mut out = [Cqe::new_zeroed(); 4];
    // More than cq_entries ahead of our head.
    poke(
        &mem,
        &layout,
        qc::CQ_TAIL,
        (u32::MAX - 2).wrapping_add(CQ + 1),
    );
    let e = c.pop_batch(&mut out).unwrap_err();
    assert!(is_corrupt(&e, "cq_tail"), "{e}");
    // Behind our head.
    poke(&mem, &layout, qc::CQ_TAIL, u32::MAX - 3);
    assert!(c.pop_batch(&mut out).is_err());
    assert!(c.prepare_wait().is_err());
    assert_eq!(
        mem.load_u32(layout.control + qc::CQ_WAITING, Relaxed)
            .unwrap(),
        0
    );
    // Exactly full is fine, across the wrap.
    poke(&mem, &layout, qc::CQ_TAIL, (u32::MAX - 2).wrapping_add(CQ));
    assert_eq!(c.pop_batch(&mut out).unwrap().count, 4);
    // And it may not move backwards afterwards.
    poke(
        &mem,
        &layout,
        qc::CQ_TAIL,
        (u32::MAX - 2).wrapping_add(CQ - 1),
    );
    assert_eq!(
        c.pop_batch(&mut out).unwrap().count,
        4,
        "served from the cache"
    );
    let mut big = [Cqe::new_zeroed(); CQ as usize];
    assert!(
        c.pop_batch(&mut big).is_err(),
        "backwards tail refused on refresh"
    );
    assert_eq!(
        c.head(),
        (u32::MAX - 2).wrapping_add(8),
        "a refused index changes nothing"
    );
}

#[test]
fn sq_head_corruption_is_seen_by_the_client() {
    let (mem, layout) = setup(10);
    let mut p = SqProducer::attach(&mem, &layout).unwrap();
    assert_eq!(
        p.push_batch(&[Sqe::new_zeroed(); SQ as usize])
            .unwrap()
            .count,
        SQ as usize
    );
    poke(&mem, &layout, qc::SQ_HEAD, 10 + SQ + 1);
    let e = p.push_batch(&[Sqe::new_zeroed()]).unwrap_err();
    assert!(is_corrupt(&e, "sq_head"), "{e}");
    poke(&mem, &layout, qc::SQ_HEAD, 12);
    assert_eq!(p.push_batch(&[Sqe::new_zeroed(); 4]).unwrap().count, 2);
    // A head that jumped past our tail at attach time.
    poke(&mem, &layout, qc::SQ_HEAD, 5);
    assert!(SqProducer::attach(&mem, &layout).is_err());
}

#[test]
fn credit_misuse_is_an_error() {
    let (mem, layout) = setup(0);
    let mut d = DaemonQueue::new(&mem, &layout, 0).unwrap();
    assert!(matches!(
        d.complete(&[Cqe::new_zeroed()]),
        Err(RingError::NotInFlight {
            completions: 1,
            in_flight: 0
        })
    ));
    // Fill the CQ with unreserved completions, then one more is refused.
    for _ in 0..CQ {
        let _ = d.post_unreserved(&Cqe::new_zeroed()).unwrap();
    }
    assert_eq!(
        d.post_unreserved(&Cqe::new_zeroed()),
        Err(RingError::CqFull)
    );
    // No credit: an available SQE is not taken.
    poke(&mem, &layout, qc::SQ_TAIL, 1);
    assert_eq!(d.take(&mut [Sqe::new_zeroed()]).unwrap(), 0);
    poke(&mem, &layout, qc::CQ_HEAD, 1);
    assert_eq!(d.take(&mut [Sqe::new_zeroed()]).unwrap(), 1);
}

#[test]
fn layout_must_fit() {
    let layout = QueueLayout::contiguous(0, SQ, CQ).unwrap();
    let mem = HeapMemory::new(layout.end() - 8);
    assert!(matches!(
        DaemonQueue::new(&mem, &layout, 0),
        Err(RingError::Layout(_))
    ));
    assert!(matches!(
        ClientQueue::attach(&mem, &layout),
        Err(RingError::Layout(_))
    ));
    assert!(layout.initialize(&mem, 0).is_err());
}
