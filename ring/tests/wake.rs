//! The wakeup primitives on real kernel objects: eventfd and a shared futex in a sealed memfd.

use std::sync::Arc;
use std::sync::atomic::Ordering::Release;
use std::time::{Duration, Instant};

use blobring_abi::qc;
use blobring_ring::{EventFd, FutexWord, Notifier, QueueLayout, Sleeper, Slept};
use blobring_shm::{Mapping, Region, SharedMemory};

/// What one sleep on `s` (seen value `seen`, bounded by `timeout`) ended with.
fn slept(s: &dyn Sleeper, seen: u32, timeout: Duration) -> Slept {
    s.sleep(seen, Some(timeout)).unwrap()
}

#[test]
fn eventfd_remembers_an_early_signal_and_times_out() {
    let e = EventFd::new().unwrap();
    assert_eq!(slept(&e, 0, Duration::from_millis(10)), Slept::TimedOut);
    e.notify().unwrap();
    e.notify().unwrap();
    let t = Instant::now();
    assert_eq!(slept(&e, 0, Duration::from_secs(5)), Slept::Woken);
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(e.drain().unwrap(), 0, "sleep consumed the counter");
}

#[test]
fn futex_on_a_memfd_word() {
    let layout = QueueLayout::contiguous(4096, 8, 16).unwrap();
    let region = Arc::new(Region::create("ring-futex-test", 16384).unwrap());
    let word = layout.control + qc::CQ_TAIL;
    let map = Arc::new(Mapping::map_peer(region.fd(), region.len()).unwrap());
    let f = Arc::new(FutexWord::cq_tail(map.clone(), &layout).unwrap());
    region.store_u32(word, 3, Release).unwrap();
    // Value differs from `seen`: returns at once.
    assert_eq!(slept(&*f, 2, Duration::from_secs(5)), Slept::Woken);
    // Value equals `seen`: times out.
    assert_eq!(slept(&*f, 3, Duration::from_millis(10)), Slept::TimedOut);
    // Woken through another mapping (the Region's own) by a change + wake.
    let (r2, f2) = (region.clone(), f.clone());
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        r2.store_u32(word, 4, Release).unwrap();
        f2.notify().unwrap();
    });
    let start = Instant::now();
    assert_eq!(slept(&*f, 3, Duration::from_secs(10)), Slept::Woken);
    assert!(start.elapsed() < Duration::from_secs(5));
    t.join().unwrap();
    // Bad offsets are refused.
    assert!(FutexWord::at(map.clone(), 2).is_err());
    assert!(FutexWord::at(map.clone(), region.len()).is_err());
    assert!(FutexWord::at(map, u64::MAX - 3).is_err());
}

/// The client's blocking wait end to end on real kernel objects in one process: it times out
/// (and clears `cq_waiting`) when nothing comes, and is woken through the futex when the
/// daemon side posts a completion and sees `cq_waiting` set.
#[test]
fn client_wait_times_out_then_is_woken() {
    use blobring_abi::{Cqe, FromZeros, RegionGeometry};
    use blobring_ring::{ClientQueue, CqProducer, WaitOutcome};
    use std::sync::atomic::Ordering::Relaxed;

    let g = RegionGeometry::new(1, 8, 16, 4096, 4096).unwrap();
    let region = Arc::new(Region::create("ring-wait-test", g.region_len).unwrap());
    let layout = QueueLayout::from_geometry(&g, 0).unwrap();
    layout.initialize(&*region, u32::MAX).unwrap();
    let map = Arc::new(Mapping::map_peer(region.fd(), region.len()).unwrap());
    let futex = Arc::new(FutexWord::cq_tail(map, &layout).unwrap());
    let mut client = ClientQueue::attach(&*region, &layout).unwrap();

    let t = Instant::now();
    let w = client
        .wait(&*futex, Some(Duration::from_millis(20)))
        .unwrap();
    assert_eq!(w, WaitOutcome::TimedOut);
    assert!(t.elapsed() >= Duration::from_millis(15));
    assert_eq!(
        region
            .load_u32(layout.control + qc::CQ_WAITING, Relaxed)
            .unwrap(),
        0
    );

    let (r2, f2) = (region.clone(), futex.clone());
    let daemon = std::thread::spawn(move || {
        let mut prod = CqProducer::new(&*r2, &layout, u32::MAX).unwrap();
        // Wait until the client advertises that it sleeps, then post and wake it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while r2
            .load_u32(layout.control + qc::CQ_WAITING, Relaxed)
            .unwrap()
            == 0
        {
            assert!(Instant::now() < deadline, "client never went to sleep");
            std::thread::sleep(Duration::from_millis(1));
        }
        let p = prod
            .push_batch(&[Cqe {
                user_data: 42,
                ..Cqe::new_zeroed()
            }])
            .unwrap();
        // Normally set (the client sleeps); clear only if the client woke spuriously and
        // re-checked, in which case its re-check sees this completion.
        if p.wake_peer {
            f2.notify().unwrap();
        }
    });
    let mut out = [Cqe::new_zeroed()];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if client.reap(&mut out).unwrap().count == 1 {
            break;
        }
        assert!(Instant::now() < deadline);
        let w = client.wait(&*futex, Some(Duration::from_secs(5))).unwrap();
        assert_ne!(w, WaitOutcome::TimedOut, "lost wakeup");
    }
    assert_eq!(out[0].user_data, 42);
    daemon.join().unwrap();
}

/// `wait_any` (futex_waitv) over two words of a memfd: returns at once when one already
/// changed, times out when none does, and is woken by a wake of either word.
#[test]
fn wait_any_over_two_futex_words() {
    use blobring_ring::{WAIT_ANY_MAX, wait_any};
    let region = Arc::new(Region::create("ring-waitv-test", 16384).unwrap());
    let map = Arc::new(Mapping::map_peer(region.fd(), region.len()).unwrap());
    let a = Arc::new(FutexWord::at(map.clone(), 64).unwrap());
    let b = Arc::new(FutexWord::at(map, 128).unwrap());
    region.store_u32(64, 1, Release).unwrap();
    region.store_u32(128, 7, Release).unwrap();
    let t = Some(Duration::from_secs(5));
    assert_eq!(wait_any(&[(&a, 1), (&b, 6)], t).unwrap(), Slept::Woken);
    assert_eq!(
        wait_any(&[(&a, 1), (&b, 7)], Some(Duration::from_millis(10))).unwrap(),
        Slept::TimedOut
    );
    let (r2, b2) = (region.clone(), b.clone());
    let th = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        r2.store_u32(128, 8, Release).unwrap();
        b2.notify().unwrap();
    });
    let start = Instant::now();
    assert_eq!(
        wait_any(&[(&a, 1), (&b, 7)], Some(Duration::from_secs(10))).unwrap(),
        Slept::Woken
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    th.join().unwrap();
    assert!(wait_any(&[], t).is_err());
    let many: Vec<(&FutexWord, u32)> = (0..=WAIT_ANY_MAX).map(|_| (&*a, 1)).collect();
    assert!(wait_any(&many, t).is_err());
}
