//! Loom models of the ring protocol: publish/consume ordering and slot reuse (entry slots are
//! loom cells, so a premature reuse is a reported race) and the sleep/wake handshake (a lost
//! wakeup leaves both threads blocked, which loom reports as a deadlock).
//!
//! Run: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p blobring-ring --release --test loom`
#![cfg(loom)]

use std::sync::Arc;

use blobring_abi::{Cqe, FromZeros, Sqe, qc};
use blobring_ring::loom_support::{LoomEventFd, LoomFutex, LoomMemory};
use blobring_ring::{
    ClientQueue, CqConsumer, CqProducer, DaemonQueue, Notifier, QueueLayout, SqConsumer,
    SqProducer, WaitOutcome,
};
use loom::thread;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

fn setup(sq: u32, cq: u32, start: u32) -> (Arc<LoomMemory>, QueueLayout) {
    let layout = QueueLayout::contiguous(0, sq, cq).unwrap();
    let mem = Arc::new(LoomMemory::new(
        256,
        u64::from(sq) * 64 + u64::from(cq) * 32,
    ));
    layout.initialize(&*mem, start).unwrap();
    (mem, layout)
}

fn sqe(user_data: u64) -> Sqe {
    Sqe {
        user_data,
        opcode: 2,
        ..Sqe::new_zeroed()
    }
}

fn cqe(user_data: u64) -> Cqe {
    Cqe {
        user_data,
        ..Cqe::new_zeroed()
    }
}

/// Three SQEs through a 2-entry SQ (a batch of 2, then 1), starting one before the u32 wrap:
/// FIFO, no loss, no duplicate, no slot overwritten before it was copied out.
#[test]
fn sq_publish_consume() {
    model(|| {
        let (mem, layout) = setup(2, 2, u32::MAX);
        let mut prod = SqProducer::attach(mem.clone(), &layout).unwrap();
        let mut cons = SqConsumer::new(mem, &layout, u32::MAX).unwrap();
        let t = thread::spawn(move || {
            let items = [sqe(1), sqe(2), sqe(3)];
            let mut sent = 0;
            while sent < items.len() {
                let p = prod.push_batch(&items[sent..(sent + 2).min(3)]).unwrap();
                sent += p.count;
                if p.count == 0 {
                    thread::yield_now();
                }
            }
        });
        let mut got = Vec::new();
        let mut buf = [Sqe::new_zeroed(); 2];
        while got.len() < 3 {
            let n = cons.pop_batch(&mut buf).unwrap();
            got.extend(buf[..n].iter().map(|s| s.user_data));
            if n == 0 {
                thread::yield_now();
            }
        }
        t.join().unwrap();
        assert_eq!(got, [1, 2, 3]);
    });
}

/// Same for the CQ (producer = daemon, consumer = client).
#[test]
fn cq_publish_consume() {
    model(|| {
        let (mem, layout) = setup(1, 2, u32::MAX - 1);
        let mut prod = CqProducer::new(mem.clone(), &layout, u32::MAX - 1).unwrap();
        let mut cons = CqConsumer::attach(mem, &layout).unwrap();
        let t = thread::spawn(move || {
            let mut next = 1;
            while next <= 3 {
                let p = prod.push_batch(&[cqe(next)]).unwrap();
                next += p.count as u64;
                if p.count == 0 {
                    thread::yield_now();
                }
            }
        });
        let mut got = Vec::new();
        let mut buf = [Cqe::new_zeroed(); 2];
        while got.len() < 3 {
            let n = cons.pop_batch(&mut buf).unwrap().count;
            got.extend(buf[..n].iter().map(|c| c.user_data));
            if n == 0 {
                thread::yield_now();
            }
        }
        t.join().unwrap();
        assert_eq!(got, [1, 2, 3]);
    });
}

/// Client → daemon: the daemon goes idle (need_wakeup, fence, re-check, sleep on the eventfd)
/// while the client publishes and signals only if the flag is set. No lost wakeup.
#[test]
fn sq_sleep_wake() {
    model(|| {
        let (mem, layout) = setup(2, 2, 0);
        let mut prod = SqProducer::attach(mem.clone(), &layout).unwrap();
        let mut daemon = DaemonQueue::new(mem, &layout, 0).unwrap();
        let efd = Arc::new(LoomEventFd::new());
        let efd2 = efd.clone();
        let t = thread::spawn(move || {
            let p = prod.push_batch(&[sqe(7)]).unwrap();
            assert_eq!(p.count, 1);
            if p.wake_peer {
                efd2.notify().unwrap();
            }
        });
        let mut buf = [Sqe::new_zeroed(); 1];
        loop {
            if daemon.take(&mut buf).unwrap() == 1 {
                break;
            }
            daemon.wait(&*efd, None).unwrap();
        }
        assert_eq!(buf[0].user_data, 7);
        t.join().unwrap();
    });
}

/// Daemon → client: the client sets cq_waiting, fences, re-checks and futex-waits on cq_tail;
/// the daemon publishes cq_tail and wakes only if cq_waiting is set. No lost wakeup.
#[test]
fn cq_sleep_wake() {
    model(|| {
        let (mem, layout) = setup(1, 1, 5);
        let mut prod = CqProducer::new(mem.clone(), &layout, 5).unwrap();
        let mut client = ClientQueue::attach(mem.clone(), &layout).unwrap();
        let futex = Arc::new(LoomFutex::new(mem, layout.control + qc::CQ_TAIL));
        let futex2 = futex.clone();
        let t = thread::spawn(move || {
            let p = prod.push_batch(&[cqe(9)]).unwrap();
            assert_eq!(p.count, 1);
            if p.wake_peer {
                futex2.notify().unwrap();
            }
        });
        let mut buf = [Cqe::new_zeroed(); 1];
        loop {
            if client.reap(&mut buf).unwrap().count == 1 {
                break;
            }
            let _: WaitOutcome = client.wait(&*futex, None).unwrap();
        }
        assert_eq!(buf[0].user_data, 9);
        t.join().unwrap();
    });
}

/// Credits: with one CQ slot the daemon may hold an SQE it cannot take until the client reaps;
/// it sleeps on the eventfd and the client's reap (cq_head publish) must wake it. Both sides
/// sleep when idle; a lost wakeup in either direction deadlocks.
#[test]
fn credit_stall_wake() {
    model(|| {
        let (mem, layout) = setup(1, 1, 0);
        let mut client = ClientQueue::attach(mem.clone(), &layout).unwrap();
        let mut daemon = DaemonQueue::new(mem.clone(), &layout, 0).unwrap();
        let efd = Arc::new(LoomEventFd::new());
        let futex = Arc::new(LoomFutex::new(mem, layout.control + qc::CQ_TAIL));
        let (efd2, futex2) = (efd.clone(), futex.clone());
        let t = thread::spawn(move || {
            let mut buf = [Sqe::new_zeroed(); 1];
            let mut done = 0;
            while done < 2 {
                if daemon.take(&mut buf).unwrap() == 1 {
                    assert!(daemon.in_flight() <= 1);
                    let p = daemon.complete(&[cqe(buf[0].user_data)]).unwrap();
                    if p.wake_peer {
                        futex2.notify().unwrap();
                    }
                    done += 1;
                } else {
                    daemon.wait(&*efd2, None).unwrap();
                }
            }
        });
        let mut got = Vec::new();
        let mut next = 1;
        let mut buf = [Cqe::new_zeroed(); 1];
        while got.len() < 2 {
            if next <= 2 {
                let p = client.submit(&[sqe(next)]).unwrap();
                next += p.count as u64;
                if p.wake_peer {
                    efd.notify().unwrap();
                }
                if p.count == 1 {
                    continue;
                }
            }
            let p = client.reap(&mut buf).unwrap();
            if p.wake_peer {
                efd.notify().unwrap();
            }
            if p.count == 1 {
                got.push(buf[0].user_data);
            } else {
                // Nothing reaped and nothing submitted (all sent, or the SQ is full): a
                // completion is owed, so sleep on the CQ futex.
                client.wait(&*futex, None).unwrap();
            }
        }
        t.join().unwrap();
        assert_eq!(got, [1, 2]);
    });
}
