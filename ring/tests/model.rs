//! Property test of a full queue pair (client and daemon sides, credits, wake flags) against a
//! `VecDeque` model: no loss, no duplication, FIFO, never more in flight than credits, and the
//! need-wakeup flags reported exactly when the peer advertised sleep — the daemon's once per
//! sleep, since the client claims (clears) it when it rings. Indices start anywhere,
//! often just below `u32::MAX`, so the wrap is crossed.

use std::collections::{HashSet, VecDeque};

use blobring_abi::{Cqe, FromZeros, Sqe};
use blobring_ring::{ClientQueue, DaemonQueue, QueueLayout, SleepCheck};
use blobring_shm::HeapMemory;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Submit(usize),
    Take(usize),
    /// Complete `n` requests in flight, picking them in an order derived from the seed
    /// (completions may come back out of order).
    Complete(usize, usize),
    Reap(usize),
    DaemonIdle,
    ClientIdle,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..10usize).prop_map(Op::Submit),
        3 => (0..10usize).prop_map(Op::Take),
        3 => (0..10usize, any::<usize>()).prop_map(|(n, s)| Op::Complete(n, s)),
        3 => (0..10usize).prop_map(Op::Reap),
        1 => Just(Op::DaemonIdle),
        1 => Just(Op::ClientIdle),
    ]
}

fn start() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(u32::MAX),
        (u32::MAX - 40)..=u32::MAX,
        any::<u32>(),
        Just(0u32),
    ]
}

#[derive(Default)]
struct Model {
    sq: VecDeque<u64>,
    in_flight: Vec<u64>,
    cq: VecDeque<u64>,
    next_id: u64,
    daemon_sleeping: bool,
    /// The daemon's `sq_need_wakeup` is set and not yet claimed by a client ring.
    daemon_flag: bool,
    client_waiting: bool,
    completed: HashSet<u64>,
}

fn run(sq_entries: u32, cq_mult: u32, start: u32, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let cq_entries = sq_entries * cq_mult;
    let layout = QueueLayout::contiguous(0, sq_entries, cq_entries).unwrap();
    let mem = HeapMemory::new(layout.end());
    layout.initialize(&mem, start).unwrap();
    let mut client = ClientQueue::attach(&mem, &layout).unwrap();
    let mut daemon = DaemonQueue::new(&mem, &layout, start).unwrap();
    let mut m = Model::default();
    let cap = cq_entries as usize;

    for op in ops {
        // A side that acts is awake: end its advertised sleep first.
        let daemon_acts = matches!(op, Op::Take(_) | Op::Complete(..) | Op::DaemonIdle);
        if daemon_acts && m.daemon_sleeping {
            daemon.finish_sleep().unwrap();
            m.daemon_sleeping = false;
            m.daemon_flag = false;
        }
        if !daemon_acts && m.client_waiting {
            client.cq.finish_wait().unwrap();
            m.client_waiting = false;
        }
        match op {
            Op::Submit(k) => {
                let sqes: Vec<Sqe> = (0..k as u64)
                    .map(|i| Sqe {
                        user_data: m.next_id + i,
                        ..Sqe::new_zeroed()
                    })
                    .collect();
                let p = client.submit(&sqes).unwrap();
                let expect = k.min(sq_entries as usize - m.sq.len());
                prop_assert_eq!(p.count, expect);
                prop_assert_eq!(p.wake_peer, p.count > 0 && m.daemon_flag);
                m.daemon_flag &= !p.wake_peer;
                for _ in 0..p.count {
                    m.sq.push_back(m.next_id);
                    m.next_id += 1;
                }
            }
            Op::Take(k) => {
                let mut out = vec![Sqe::new_zeroed(); k];
                let n = daemon.take(&mut out).unwrap();
                let credits = cap - m.in_flight.len() - m.cq.len();
                prop_assert_eq!(n, k.min(m.sq.len()).min(credits));
                for s in &out[..n] {
                    prop_assert_eq!(Some(s.user_data), m.sq.pop_front(), "SQ FIFO");
                    m.in_flight.push(s.user_data);
                }
            }
            Op::Complete(k, seed) => {
                let k = k.min(m.in_flight.len());
                let mut cqes = Vec::new();
                for j in 0..k {
                    let id = m.in_flight.swap_remove((seed + j) % m.in_flight.len());
                    cqes.push(Cqe {
                        user_data: id,
                        res: -(j as i32),
                        ..Cqe::new_zeroed()
                    });
                }
                let p = daemon.complete(&cqes).unwrap();
                prop_assert_eq!(p.count, k);
                prop_assert_eq!(p.wake_peer, k > 0 && m.client_waiting);
                m.cq.extend(cqes.iter().map(|c| c.user_data));
            }
            Op::Reap(k) => {
                let mut out = vec![Cqe::new_zeroed(); k];
                let p = client.reap(&mut out).unwrap();
                prop_assert_eq!(p.count, k.min(m.cq.len()));
                prop_assert_eq!(p.wake_peer, p.count > 0 && m.daemon_flag);
                m.daemon_flag &= !p.wake_peer;
                for c in &out[..p.count] {
                    prop_assert_eq!(Some(c.user_data), m.cq.pop_front(), "CQ FIFO");
                    prop_assert!(m.completed.insert(c.user_data), "duplicate completion");
                }
            }
            Op::DaemonIdle => {
                let credits = cap - m.in_flight.len() - m.cq.len();
                let expect = if !m.sq.is_empty() && credits > 0 {
                    SleepCheck::Work
                } else {
                    SleepCheck::Sleep
                };
                prop_assert_eq!(daemon.prepare_sleep().unwrap(), expect);
                m.daemon_sleeping = expect == SleepCheck::Sleep;
                m.daemon_flag = m.daemon_sleeping;
            }
            Op::ClientIdle => {
                let seen = client.cq.prepare_wait().unwrap();
                prop_assert_eq!(seen.is_some(), m.cq.is_empty());
                m.client_waiting = seen.is_some();
            }
        }
        prop_assert_eq!(daemon.in_flight() as usize, m.in_flight.len());
        prop_assert!(
            m.in_flight.len() + m.cq.len() <= cap,
            "more in flight than credits"
        );
    }

    // Drain everything: every submitted id completes exactly once.
    if m.daemon_sleeping {
        daemon.finish_sleep().unwrap();
    }
    if m.client_waiting {
        client.cq.finish_wait().unwrap();
    }
    for _ in 0..10_000 {
        if m.completed.len() as u64 == m.next_id {
            break;
        }
        let mut out = vec![Sqe::new_zeroed(); 3];
        let n = daemon.take(&mut out).unwrap();
        let cqes: Vec<Cqe> = m
            .in_flight
            .drain(..)
            .chain(out[..n].iter().map(|s| s.user_data))
            .map(|id| Cqe {
                user_data: id,
                ..Cqe::new_zeroed()
            })
            .collect();
        let _ = daemon.complete(&cqes).unwrap();
        let mut got = vec![Cqe::new_zeroed(); 4];
        let p = client.reap(&mut got).unwrap();
        for c in &got[..p.count] {
            prop_assert!(m.completed.insert(c.user_data), "duplicate completion");
        }
    }
    prop_assert_eq!(m.completed.len() as u64, m.next_id, "lost entries");
    prop_assert!(m.completed.iter().all(|&id| id < m.next_id));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn queue_pair_matches_model(
        sq_pow in 0u32..4,
        cq_mult in prop_oneof![Just(1u32), Just(2u32)],
        start in start(),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        run(1 << sq_pow, cq_mult, start, ops)?;
    }
}
