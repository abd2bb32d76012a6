//! The wakeup primitives on real kernel objects: eventfd and a shared futex in a sealed memfd.

use std::sync::Arc;
use std::sync::atomic::Ordering::Release;
use std::time::{Duration, Instant};

use blobring_abi::qc;
use blobring_ring::{EventFd, FutexWord, Notifier, QueueLayout, Sleeper, Slept};
use blobring_shm::{Region, SharedMemory};

#[test]
fn eventfd_remembers_an_early_signal_and_times_out() {
    let e = EventFd::new().unwrap();
    assert_eq!(
        e.sleep(0, Some(Duration::from_millis(10))).unwrap(),
        Slept::TimedOut
    );
    e.notify().unwrap();
    e.notify().unwrap();
    let t = Instant::now();
    assert_eq!(
        e.sleep(0, Some(Duration::from_secs(5))).unwrap(),
        Slept::Woken
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(e.drain().unwrap(), 0, "sleep consumed the counter");
}

#[test]
fn futex_on_a_memfd_word() {
    let layout = QueueLayout::contiguous(4096, 8, 16).unwrap();
    let region = Arc::new(Region::create("ring-futex-test", 16384).unwrap());
    let word = layout.control + qc::CQ_TAIL;
    let f = Arc::new(FutexWord::cq_tail(region.fd(), region.len(), &layout).unwrap());
    region.store_u32(word, 3, Release).unwrap();
    // Value differs from `seen`: returns at once.
    assert_eq!(
        f.sleep(2, Some(Duration::from_secs(5))).unwrap(),
        Slept::Woken
    );
    // Value equals `seen`: times out.
    assert_eq!(
        f.sleep(3, Some(Duration::from_millis(10))).unwrap(),
        Slept::TimedOut
    );
    // Woken through another mapping (the Region's own) by a change + wake.
    let (r2, f2) = (region.clone(), f.clone());
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        r2.store_u32(word, 4, Release).unwrap();
        f2.notify().unwrap();
    });
    let start = Instant::now();
    assert_eq!(
        f.sleep(3, Some(Duration::from_secs(10))).unwrap(),
        Slept::Woken
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    t.join().unwrap();
    // Bad offsets are refused.
    assert!(FutexWord::map(region.fd(), region.len(), 2).is_err());
    assert!(FutexWord::map(region.fd(), region.len(), region.len()).is_err());
    assert!(FutexWord::map(region.fd(), region.len() + 4096, 0).is_err());
}
