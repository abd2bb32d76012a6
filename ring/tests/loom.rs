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
    ClientQueue, CqConsumer, CqProducer, DaemonQueue, Notifier, Published, QueueLayout, SqConsumer,
    SqProducer, WaitOutcome,
};
use loom::thread;

/// Checks `f` under loom (preemption bound 3), each execution on a fresh queue pair from
/// [`setup`]`(sq, cq, start)`.
fn model(
    (sq, cq, start): (u32, u32, u32),
    f: impl Fn(Arc<LoomMemory>, QueueLayout) + Sync + Send + 'static,
) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(move || {
        let (mem, layout) = setup(sq, cq, start);
        f(mem, layout)
    });
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

/// Pushes until `n` entries went in, yielding while the ring takes none: `push(sent)` offers
/// the next entries and returns how many were published.
fn push_all(n: usize, mut push: impl FnMut(usize) -> usize) {
    let mut sent = 0;
    while sent < n {
        let count = push(sent);
        sent += count;
        if count == 0 {
            thread::yield_now();
        }
    }
}

/// Pops (up to 2 at a time) until `n` entries came out, yielding while there are none; their
/// `user_data` in order.
fn pop_all<T: FromZeros + Copy>(
    n: usize,
    mut pop: impl FnMut(&mut [T]) -> usize,
    user_data: impl Fn(&T) -> u64,
) -> Vec<u64> {
    let mut got = Vec::new();
    let mut buf = [T::new_zeroed(); 2];
    while got.len() < n {
        let count = pop(&mut buf);
        got.extend(buf[..count].iter().map(&user_data));
        if count == 0 {
            thread::yield_now();
        }
    }
    got
}

/// One entry from a producer thread to a consumer that sleeps while its queue is empty. The
/// thread publishes it with `publish` and wakes the consumer through `peer` if it advertised
/// sleep; the consumer tries `take` into a one-entry buffer and calls `sleep` after every empty
/// try. Returns the entry, once the producer thread is done.
fn one_to_a_sleeper<Q, T: FromZeros + Copy, N: Notifier + Send + Sync + 'static>(
    publish: impl FnOnce() -> Published + Send + 'static,
    peer: Arc<N>,
    consumer: &mut Q,
    mut take: impl FnMut(&mut Q, &mut [T]) -> usize,
    mut sleep: impl FnMut(&mut Q) -> WaitOutcome,
) -> T {
    let t = thread::spawn(move || {
        let p = publish();
        assert_eq!(p.count, 1);
        if p.wake_peer {
            peer.notify().unwrap();
        }
    });
    let mut buf = [T::new_zeroed(); 1];
    while take(consumer, &mut buf) != 1 {
        sleep(consumer);
    }
    t.join().unwrap();
    buf[0]
}

/// Three SQEs through a 2-entry SQ (a batch of 2, then 1), starting one before the u32 wrap:
/// FIFO, no loss, no duplicate, no slot overwritten before it was copied out.
#[test]
fn sq_publish_consume() {
    model((2, 2, u32::MAX), |mem, layout| {
        let mut prod = SqProducer::attach(mem.clone(), &layout).unwrap();
        let mut cons = SqConsumer::new(mem, &layout, u32::MAX).unwrap();
        let t = thread::spawn(move || {
            let items = [sqe(1), sqe(2), sqe(3)];
            push_all(3, |sent| {
                let batch = &items[sent..(sent + 2).min(3)];
                prod.push_batch(batch).unwrap().count
            });
        });
        let got = pop_all(
            3,
            |buf: &mut [Sqe]| cons.pop_batch(buf).unwrap(),
            |s| s.user_data,
        );
        t.join().unwrap();
        assert_eq!(got, [1, 2, 3]);
    });
}

/// Same for the CQ (producer = daemon, consumer = client).
#[test]
fn cq_publish_consume() {
    model((1, 2, u32::MAX - 1), |mem, layout| {
        let mut prod = CqProducer::new(mem.clone(), &layout, u32::MAX - 1).unwrap();
        let mut cons = CqConsumer::attach(mem, &layout).unwrap();
        let t = thread::spawn(move || {
            // One at a time: user_data 1, 2, 3.
            push_all(3, |sent| {
                let next = sent as u64 + 1;
                prod.push_batch(&[cqe(next)]).unwrap().count
            });
        });
        let pop = |buf: &mut [Cqe]| cons.pop_batch(buf).unwrap().count;
        let got = pop_all(3, pop, |c| c.user_data);
        t.join().unwrap();
        assert_eq!(got, [1, 2, 3]);
    });
}

/// Client → daemon: the daemon goes idle (need_wakeup, fence, re-check, sleep on the eventfd)
/// while the client publishes and signals only if the flag is set. No lost wakeup.
#[test]
fn sq_sleep_wake() {
    model((2, 2, 0), |mem, layout| {
        let mut prod = SqProducer::attach(mem.clone(), &layout).unwrap();
        let mut daemon = DaemonQueue::new(mem, &layout, 0).unwrap();
        let efd = Arc::new(LoomEventFd::new());
        let efd2 = efd.clone();
        let publish = move || prod.push_batch(&[sqe(7)]).unwrap();
        let take = |d: &mut DaemonQueue<_>, buf: &mut [Sqe]| d.take(buf).unwrap();
        let sleep = |d: &mut DaemonQueue<_>| d.wait(&*efd, None).unwrap();
        let got = one_to_a_sleeper(publish, efd2, &mut daemon, take, sleep);
        assert_eq!(got.user_data, 7);
    });
}

/// Client → daemon, twice: the client publishes two SQEs one after the other and rings only
/// when it finds (and claims, by clearing) the daemon's `sq_need_wakeup`; the daemon takes one
/// entry at a time and sleeps whenever its SQ is empty. Whatever the interleaving — the second
/// publish during the sleep the first one rang for, after the daemon woke, or after it went to
/// sleep again — the daemon gets both and nobody is left asleep.
#[test]
fn sq_two_publishes_claimed_wakeups() {
    model((2, 2, 0), |mem, layout| {
        let mut prod = SqProducer::attach(mem.clone(), &layout).unwrap();
        let mut daemon = DaemonQueue::new(mem, &layout, 0).unwrap();
        let efd = Arc::new(LoomEventFd::new());
        let efd2 = efd.clone();
        let t = thread::spawn(move || {
            for ud in [1, 2] {
                let p = prod.push_batch(&[sqe(ud)]).unwrap();
                assert_eq!(p.count, 1);
                if p.wake_peer {
                    efd2.notify().unwrap();
                }
            }
        });
        let mut got = Vec::new();
        let mut buf = [Sqe::new_zeroed(); 1];
        while got.len() < 2 {
            if daemon.take(&mut buf).unwrap() == 1 {
                got.push(buf[0].user_data);
            } else {
                daemon.wait(&*efd, None).unwrap();
            }
        }
        t.join().unwrap();
        assert_eq!(got, [1, 2]);
    });
}

/// Daemon → client: the client sets cq_waiting, fences, re-checks and futex-waits on cq_tail;
/// the daemon publishes cq_tail and wakes only if cq_waiting is set. No lost wakeup.
#[test]
fn cq_sleep_wake() {
    model((1, 1, 5), |mem, layout| {
        let mut prod = CqProducer::new(mem.clone(), &layout, 5).unwrap();
        let mut client = ClientQueue::attach(mem.clone(), &layout).unwrap();
        let futex = Arc::new(LoomFutex::new(mem, layout.control + qc::CQ_TAIL));
        let futex2 = futex.clone();
        let publish = move || prod.push_batch(&[cqe(9)]).unwrap();
        let reap = |c: &mut ClientQueue<_>, buf: &mut [Cqe]| c.reap(buf).unwrap().count;
        let sleep = |c: &mut ClientQueue<_>| c.wait(&*futex, None).unwrap();
        let got = one_to_a_sleeper(publish, futex2, &mut client, reap, sleep);
        assert_eq!(got.user_data, 9);
    });
}

/// Credits: with one CQ slot the daemon may hold an SQE it cannot take until the client reaps;
/// it sleeps on the eventfd and the client's reap (cq_head publish) must wake it. Both sides
/// sleep when idle; a lost wakeup in either direction deadlocks.
#[test]
fn credit_stall_wake() {
    model((1, 1, 0), |mem, layout| {
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
