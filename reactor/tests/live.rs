//! Tests against the live kernel: every operation of the reactor, and its fallbacks.

use std::fs::File;
use std::io::{Read as _, Seek, SeekFrom, Write as _};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use blobring_reactor::{
    BufIndex, Completion, Error, Event, FixedRange, FutexWord, MemoryRegion, Reactor,
    ReactorConfig, RegionWord, SetupFlags, TimerOutcome, Wants,
};
use rustix::event::{EventfdFlags, eventfd};
use rustix::thread::futex;

const LONG: Duration = Duration::from_secs(5);

/// A shared memfd mapping, as the shm crate provides.
struct MemfdRegion {
    _fd: OwnedFd,
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is process-wide and only accessed through raw pointers and atomics.
unsafe impl Send for MemfdRegion {}
// SAFETY: as above.
unsafe impl Sync for MemfdRegion {}

impl MemfdRegion {
    fn new(len: usize) -> Arc<Self> {
        let fd = rustix::fs::memfd_create("reactor-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, len as u64).unwrap();
        // SAFETY: a fresh shared mapping of our own memfd at a kernel-chosen address.
        let base = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .unwrap();
        Arc::new(MemfdRegion {
            _fd: fd,
            base: base.cast(),
            len,
        })
    }

    fn write_bytes(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.len);
        // SAFETY: bounds checked above; the mapping is alive while `self` is.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(offset), bytes.len())
        };
    }

    fn read_bytes(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(offset + len <= self.len);
        let mut out = vec![0u8; len];
        // SAFETY: bounds checked above; the mapping is alive while `self` is.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(offset), out.as_mut_ptr(), len) };
        out
    }
}

impl Drop for MemfdRegion {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; nothing uses it after drop.
        unsafe { rustix::mm::munmap(self.base.cast(), self.len) }.unwrap();
    }
}

// SAFETY: the mapping stays valid until drop, and is accessed only via raw pointers/atomics.
unsafe impl MemoryRegion for MemfdRegion {
    fn as_ptr(&self) -> *mut u8 {
        self.base
    }
    fn len(&self) -> usize {
        self.len
    }
}

fn atomic(word: &Arc<dyn FutexWord>) -> &AtomicU32 {
    // SAFETY: the `FutexWord` contract; `word` outlives the returned reference.
    unsafe { &*word.word() }
}

fn collect(reactor: &mut Reactor, min: usize, timeout: Duration) -> Vec<Completion> {
    let mut out = Vec::new();
    let until = Instant::now() + timeout;
    while out.len() < min && Instant::now() < until {
        let left = until.saturating_duration_since(Instant::now());
        reactor
            .wait(min - out.len(), Some(left), |c| out.push(c))
            .unwrap();
    }
    out
}

fn ring_eventfd(fd: &OwnedFd) {
    rustix::io::write(fd, &1u64.to_ne_bytes()).unwrap();
}

fn drain_eventfd(fd: &OwnedFd) {
    let mut buf = [0u8; 8];
    let _ = rustix::io::read(fd, &mut buf);
}

/// The default configuration with `off` applied to its wants (a feature turned off, to test
/// its fallback).
fn config_without(off: impl FnOnce(&mut Wants)) -> ReactorConfig {
    let mut config = ReactorConfig::default();
    off(&mut config.wants);
    config
}

#[test]
fn this_kernel_gets_every_feature() {
    let reactor = Reactor::new().unwrap();
    let f = reactor.features();
    eprintln!("features: {f}");
    assert!(f.setup.single_issuer && f.setup.defer_taskrun && f.setup.coop_taskrun);
    assert!(f.setup.no_sqarray && f.setup.submit_all);
    assert!(f.multishot_poll && f.futex_ops && f.fixed_buffers && f.nodrop);
}

#[test]
fn multishot_poll_delivers_several_events_then_cancels() {
    let mut reactor = Reactor::new().unwrap();
    let efd = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap());
    let op = reactor.poll_multishot(Arc::clone(&efd), 42).unwrap();
    let sqes_after_arm = reactor.stats().sqes;
    for round in 0..5 {
        ring_eventfd(&efd);
        let got = collect(&mut reactor, 1, LONG);
        assert_eq!(got.len(), 1, "round {round}: {got:?}");
        assert_eq!(got[0].token, 42);
        assert_eq!(got[0].op, op);
        match got[0].event {
            Event::Readable { events } => assert_ne!(events & libc::POLLIN as u32, 0),
            ref other => panic!("round {round}: {other:?}"),
        }
        drain_eventfd(&efd);
    }
    // One SQE served all five events: multishot, no re-arm.
    assert_eq!(reactor.stats().sqes, sqes_after_arm);
    assert_eq!(reactor.in_flight(), 1);

    assert!(reactor.cancel(op).unwrap());
    let got = collect(&mut reactor, 1, LONG);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].event, Event::PollEnded(Ok(())));
    assert_eq!(reactor.in_flight(), 0);
    // The reactor released its fd clone.
    assert_eq!(Arc::strong_count(&efd), 1);
    // Cancelling a finished op is a no-op.
    assert!(!reactor.cancel(op).unwrap());
}

#[test]
fn one_shot_poll_fallback_rearms_after_every_event() {
    let config = config_without(|w| w.multishot_poll = false);
    let mut reactor = Reactor::with_config(config).unwrap();
    assert!(!reactor.features().multishot_poll);
    let efd = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap());
    reactor.poll_multishot(Arc::clone(&efd), 1).unwrap();
    for _ in 0..3 {
        ring_eventfd(&efd);
        let got = collect(&mut reactor, 1, LONG);
        assert!(matches!(
            got[..],
            [Completion {
                token: 1,
                event: Event::Readable { .. },
                ..
            }]
        ));
        drain_eventfd(&efd);
    }
    assert!(reactor.stats().poll_rearms >= 3, "{:?}", reactor.stats());
}

#[test]
fn timeout_fires_after_its_duration() {
    let mut reactor = Reactor::new().unwrap();
    let start = Instant::now();
    reactor.timeout(Duration::from_millis(50), 7).unwrap();
    let got = collect(&mut reactor, 1, LONG);
    let elapsed = start.elapsed();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].token, 7);
    assert_eq!(got[0].event, Event::Timer(TimerOutcome::Fired));
    assert!(elapsed >= Duration::from_millis(45), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[test]
fn timeout_can_be_cancelled() {
    let mut reactor = Reactor::new().unwrap();
    let op = reactor.timeout(Duration::from_secs(30), 8).unwrap();
    reactor.submit().unwrap();
    assert!(reactor.cancel(op).unwrap());
    let start = Instant::now();
    let got = collect(&mut reactor, 1, LONG);
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event, Event::Timer(TimerOutcome::Cancelled));
    assert_eq!(reactor.in_flight(), 0);
}

#[test]
fn wait_times_out_with_nothing_ready() {
    let mut reactor = Reactor::new().unwrap();
    let efd = eventfd(0, EventfdFlags::CLOEXEC).unwrap();
    reactor.poll_multishot(efd, 1).unwrap();
    let start = Instant::now();
    let n = reactor
        .wait(1, Some(Duration::from_millis(50)), |c| panic!("{c:?}"))
        .unwrap();
    assert_eq!(n, 0);
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(45) && elapsed < Duration::from_secs(2));
}

#[test]
fn deadline_moves_earlier_and_ignores_later() {
    let mut reactor = Reactor::new().unwrap();
    let start = Instant::now();
    reactor
        .set_deadline(start + Duration::from_secs(10), 1)
        .unwrap();
    reactor.submit().unwrap();
    reactor
        .set_deadline(start + Duration::from_millis(40), 2)
        .unwrap();
    // Later than the armed one: ignored.
    reactor
        .set_deadline(start + Duration::from_secs(20), 3)
        .unwrap();
    assert_eq!(reactor.deadline(), Some(start + Duration::from_millis(40)));
    let got = collect(&mut reactor, 1, LONG);
    let elapsed = start.elapsed();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].event, Event::Deadline(TimerOutcome::Fired));
    assert_eq!(got[0].token, 3);
    assert!(elapsed >= Duration::from_millis(35), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(reactor.deadline(), None);
    assert_eq!(reactor.in_flight(), 0);

    // Cleared deadlines end silently.
    reactor
        .set_deadline(Instant::now() + Duration::from_millis(20), 4)
        .unwrap();
    reactor.clear_deadline().unwrap();
    let mut seen = Vec::new();
    reactor
        .wait(1, Some(Duration::from_millis(100)), |c| seen.push(c))
        .unwrap();
    assert!(seen.is_empty(), "{seen:?}");
    assert_eq!(reactor.in_flight(), 0);
}

/// Runs `waiter` on a thread that sleeps in `futex(2)` on `word` while it holds 0, until the
/// word becomes 1. Returns how many times the thread returned from a sleep.
fn spawn_syscall_waiter(word: Arc<dyn FutexWord>) -> (thread::JoinHandle<u32>, Arc<AtomicBool>) {
    let started = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&started);
    let handle = thread::spawn(move || {
        let word = atomic(&word);
        flag.store(true, Ordering::SeqCst);
        let mut returns = 0;
        let until = Instant::now() + LONG;
        while word.load(Ordering::SeqCst) == 0 && Instant::now() < until {
            let ts = rustix::thread::futex::Timespec {
                tv_sec: 0,
                tv_nsec: 200_000_000,
            };
            if futex::wait(word, futex::Flags::empty(), 0, Some(&ts)).is_ok() {
                returns += 1;
            }
        }
        returns
    });
    (handle, started)
}

/// Wakes `word` through the reactor until a wake reports a woken waiter; returns that count.
fn wake_until_someone_woken(reactor: &mut Reactor, word: &Arc<dyn FutexWord>) -> u32 {
    let until = Instant::now() + LONG;
    while Instant::now() < until {
        reactor.futex_wake(Arc::clone(word), 5).unwrap();
        let got = collect(reactor, 1, LONG);
        match got[..] {
            [
                Completion {
                    token: 5,
                    event: Event::FutexWake(Ok(n)),
                    ..
                },
            ] if n > 0 => return n,
            [
                Completion {
                    token: 5,
                    event: Event::FutexWake(Ok(0)),
                    ..
                },
            ] => thread::sleep(Duration::from_millis(5)),
            _ => panic!("{got:?}"),
        }
    }
    0
}

#[test]
fn futex_wake_reaches_a_thread_sleeping_on_a_memfd_word() {
    let region = MemfdRegion::new(4096);
    let word: Arc<dyn FutexWord> = Arc::new(RegionWord::new(region.clone(), 128).unwrap());
    let mut reactor = Reactor::new().unwrap();
    let (handle, started) = spawn_syscall_waiter(Arc::clone(&word));
    while !started.load(Ordering::SeqCst) {
        thread::yield_now();
    }
    let woken = wake_until_someone_woken(&mut reactor, &word);
    assert_eq!(
        woken, 1,
        "the io_uring FutexWake never woke the sleeping thread"
    );
    atomic(&word).store(1, Ordering::SeqCst);
    reactor.futex_wake(Arc::clone(&word), 6).unwrap();
    collect(&mut reactor, 1, LONG);
    let returns = handle.join().unwrap();
    assert!(returns >= 1);
}

#[test]
fn futex_wake_reaches_a_forked_process() {
    let region = MemfdRegion::new(4096);
    let word: Arc<dyn FutexWord> = Arc::new(RegionWord::new(region.clone(), 64).unwrap());
    let mut reactor = Reactor::new().unwrap();
    // SAFETY: the child only makes raw syscalls (futex, clock via Instant) and atomic loads,
    // then `_exit`s; it never allocates or touches locks the parent's threads may hold.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let word = atomic(&word);
        let mut woken = 0u32;
        for _ in 0..100 {
            if word.load(Ordering::SeqCst) == 2 {
                break;
            }
            let ts = rustix::thread::futex::Timespec {
                tv_sec: 0,
                tv_nsec: 100_000_000,
            };
            if futex::wait(word, futex::Flags::empty(), 0, Some(&ts)).is_ok() {
                woken += 1;
            }
        }
        let ok = word.load(Ordering::SeqCst) == 2 && woken >= 1;
        // SAFETY: terminating the forked child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let woken = wake_until_someone_woken(&mut reactor, &word);
    atomic(&word).store(2, Ordering::SeqCst);
    reactor.futex_wake(Arc::clone(&word), 6).unwrap();
    collect(&mut reactor, 1, LONG);
    let mut status = 0;
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if Instant::now() > until {
            // SAFETY: killing our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("child did not exit");
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        woken, 1,
        "the io_uring FutexWake never woke the other process"
    );
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status}"
    );
}

#[test]
fn futex_wait_is_woken_by_another_thread() {
    let region = MemfdRegion::new(4096);
    let word: Arc<dyn FutexWord> = Arc::new(RegionWord::new(region.clone(), 0).unwrap());
    let mut reactor = Reactor::new().unwrap();
    reactor.futex_wait(Arc::clone(&word), 0, 11).unwrap();
    reactor.submit().unwrap();
    // The wait is armed once submit returns (futex wait is issued inline).
    let waker_word = Arc::clone(&word);
    let waker = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        let w = atomic(&waker_word);
        w.store(1, Ordering::SeqCst);
        futex::wake(w, futex::Flags::empty(), 1).unwrap()
    });
    let got = collect(&mut reactor, 1, LONG);
    assert_eq!(
        waker.join().unwrap(),
        1,
        "the reactor's wait was not registered"
    );
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].token, 11);
    assert_eq!(got[0].event, Event::FutexWait(Ok(())));
}

#[test]
fn futex_wait_on_a_changed_word_fails_at_once_and_can_be_cancelled() {
    let word: Arc<dyn FutexWord> = Arc::new(AtomicU32::new(3));
    let mut reactor = Reactor::new().unwrap();
    reactor.futex_wait(Arc::clone(&word), 0, 1).unwrap();
    let got = collect(&mut reactor, 1, LONG);
    assert_eq!(
        got[0].event,
        Event::FutexWait(Err(rustix::io::Errno::AGAIN))
    );

    let op = reactor.futex_wait(Arc::clone(&word), 3, 2).unwrap();
    reactor.submit().unwrap();
    reactor.cancel(op).unwrap();
    let got = collect(&mut reactor, 1, LONG);
    assert_eq!(
        got[0].event,
        Event::FutexWait(Err(rustix::io::Errno::CANCELED))
    );
    assert_eq!(Arc::strong_count(&word), 1);
}

#[test]
fn many_futex_wakes_go_in_one_submit() {
    let region = MemfdRegion::new(4096);
    let words: Vec<Arc<dyn FutexWord>> = (0..64)
        .map(|i| Arc::new(RegionWord::new(region.clone(), i * 4).unwrap()) as Arc<dyn FutexWord>)
        .collect();
    let mut reactor = Reactor::new().unwrap();
    for (i, word) in words.iter().enumerate() {
        reactor.futex_wake(Arc::clone(word), i as u64).unwrap();
    }
    let enters_before = reactor.stats().enters;
    let got = collect(&mut reactor, 64, LONG);
    assert_eq!(got.len(), 64);
    assert!(got.iter().all(|c| c.event == Event::FutexWake(Ok(0))));
    let mut tokens: Vec<u64> = got.iter().map(|c| c.token).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, (0..64).collect::<Vec<u64>>());
    assert!(
        reactor.stats().enters - enters_before <= 2,
        "{:?}",
        reactor.stats()
    );
}

#[test]
fn futex_fallback_uses_the_syscall() {
    let config = config_without(|w| w.futex_ops = false);
    let mut reactor = Reactor::with_config(config).unwrap();
    assert!(!reactor.features().futex_ops);
    let region = MemfdRegion::new(4096);
    let word: Arc<dyn FutexWord> = Arc::new(RegionWord::new(region.clone(), 256).unwrap());
    let (handle, started) = spawn_syscall_waiter(Arc::clone(&word));
    while !started.load(Ordering::SeqCst) {
        thread::yield_now();
    }
    assert_eq!(wake_until_someone_woken(&mut reactor, &word), 1);
    assert!(reactor.stats().futex_syscall_wakes >= 1);
    atomic(&word).store(1, Ordering::SeqCst);
    reactor.futex_wake(Arc::clone(&word), 6).unwrap();
    collect(&mut reactor, 1, LONG);
    handle.join().unwrap();
    assert!(matches!(
        reactor.futex_wait(word, 0, 1),
        Err(Error::Unsupported { .. })
    ));
}

#[test]
fn futex_word_checks_alignment_and_bounds() {
    let region = MemfdRegion::new(4096);
    assert!(RegionWord::new(region.clone(), 4092).is_ok());
    assert!(matches!(
        RegionWord::new(region.clone(), 4093),
        Err(Error::BadFutexWord { .. })
    ));
    assert!(RegionWord::new(region.clone(), 4096).is_err());
    assert!(RegionWord::new(region.clone(), 2).is_err());
    assert!(RegionWord::new(region, usize::MAX - 1).is_err());
}

/// `len` bytes at `offset` in the registered region `index`.
fn fixed(index: BufIndex, offset: usize, len: u32) -> FixedRange {
    FixedRange { index, offset, len }
}

fn fixed_buffer_round_trip(config: ReactorConfig) {
    let mut reactor = Reactor::with_config(config).unwrap();
    let region = MemfdRegion::new(64 * 1024);
    let index = reactor.register_region(region.clone()).unwrap();
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    region.write_bytes(4096, &pattern);

    let mut file = tempfile::tempfile().unwrap();
    let fd = Arc::new(file.try_clone().unwrap());
    let range = fixed(index, 4096, 8192);
    reactor
        .write_fixed(Arc::clone(&fd), range, 512, 21)
        .unwrap();
    // Queued, not yet issued: the slot must stay registered.
    assert!(matches!(
        reactor.unregister_region(index),
        Err(Error::RegionBusy { in_flight: 1, .. })
    ));
    let got = collect(&mut reactor, 1, LONG);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].token, 21);
    assert_eq!(got[0].event, Event::Transferred(Ok(8192)));
    let mut on_disk = Vec::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_end(&mut on_disk).unwrap();
    assert_eq!(on_disk.len(), 512 + 8192);
    assert_eq!(&on_disk[512..], &pattern[..]);

    // Change the file, read it back into another part of the region.
    let fresh: Vec<u8> = (0..3000u32).map(|i| (i ^ 0x5a) as u8).collect();
    file.seek(SeekFrom::Start(100)).unwrap();
    file.write_all(&fresh).unwrap();
    let range = fixed(index, 32 * 1024, 3000);
    reactor.read_fixed(Arc::clone(&fd), range, 100, 22).unwrap();
    let got = collect(&mut reactor, 1, LONG);
    assert_eq!(got[0].event, Event::Transferred(Ok(3000)));
    assert_eq!(region.read_bytes(32 * 1024, 3000), fresh);
    // Bytes next to the range are untouched.
    assert_eq!(region.read_bytes(32 * 1024 + 3000, 16), vec![0u8; 16]);

    // Out of bounds and unknown indices are refused before reaching the kernel.
    let too_far = fixed(index, 64 * 1024 - 10, 11);
    assert!(matches!(
        reactor.read_fixed(Arc::clone(&fd), too_far, 0, 1),
        Err(Error::OutOfBounds { .. })
    ));
    reactor.unregister_region(index).unwrap();
    assert!(matches!(
        reactor.read_fixed(Arc::clone(&fd), range, 0, 1),
        Err(Error::UnknownBuffer(_))
    ));
    assert_eq!(Arc::strong_count(&region), 1);
    // The slot can be reused.
    let again = reactor.register_region(region.clone()).unwrap();
    assert_eq!(again, index);
}

#[test]
fn fixed_buffers_write_and_read_a_file() {
    let reactor_config = ReactorConfig::default();
    fixed_buffer_round_trip(reactor_config);
}

#[test]
fn fixed_buffer_fallback_uses_plain_reads_and_writes() {
    let config = config_without(|w| w.fixed_buffers = false);
    assert!(
        !Reactor::with_config(config)
            .unwrap()
            .features()
            .fixed_buffers
    );
    fixed_buffer_round_trip(config);
}

#[test]
fn read_into_fills_an_unregistered_region_and_holds_it_until_done() {
    // No fixed-buffer slots at all: `read_into` needs none.
    let mut reactor = Reactor::with_config(ReactorConfig {
        fixed_buffer_slots: 0,
        ..ReactorConfig::default()
    })
    .unwrap();
    let region = MemfdRegion::new(64 * 1024);
    let mut file = tempfile::tempfile().unwrap();
    let pattern: Vec<u8> = (0..20_000u32).map(|i| (i * 13 + 1) as u8).collect();
    file.write_all(&pattern).unwrap();
    let fd = Arc::new(file);
    reactor
        .read_into(Arc::clone(&fd), region.clone(), 4095, 12_000, 300, 7)
        .unwrap();
    // The reactor holds the region until the read completes.
    assert_eq!(Arc::strong_count(&region), 2);
    let got = collect(&mut reactor, 1, LONG);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].token, 7);
    assert_eq!(got[0].event, Event::Transferred(Ok(12_000)));
    assert_eq!(Arc::strong_count(&region), 1);
    assert_eq!(region.read_bytes(4095, 12_000), &pattern[300..12_300]);
    // Bytes on either side are untouched.
    assert_eq!(region.read_bytes(4079, 16), vec![0u8; 16]);
    assert_eq!(region.read_bytes(4095 + 12_000, 16), vec![0u8; 16]);
    // Past the end of the file: a short read, reported as such.
    reactor
        .read_into(Arc::clone(&fd), region.clone(), 0, 4096, 19_000, 8)
        .unwrap();
    let got = collect(&mut reactor, 1, LONG);
    assert_eq!(got[0].event, Event::Transferred(Ok(1000)));
    assert_eq!(region.read_bytes(0, 1000), &pattern[19_000..]);
    // A range past the region is refused before reaching the kernel.
    assert!(matches!(
        reactor.read_into(Arc::clone(&fd), region.clone(), 64 * 1024 - 10, 11, 0, 9),
        Err(Error::OutOfBounds {
            offset: 65526,
            len: 11,
            region_len: 65536
        })
    ));
    assert_eq!(Arc::strong_count(&region), 1);
}

#[test]
fn region_slots_run_out_with_a_clear_error() {
    let config = ReactorConfig {
        fixed_buffer_slots: 2,
        ..ReactorConfig::default()
    };
    let mut reactor = Reactor::with_config(config).unwrap();
    let region = MemfdRegion::new(4096);
    reactor.register_region(region.clone()).unwrap();
    reactor.register_region(region.clone()).unwrap();
    let err = reactor.register_region(region).unwrap_err();
    assert!(matches!(err, Error::NoBufferSlot { slots: 2 }));
    assert!(err.to_string().contains("fixed_buffer_slots"));
}

#[test]
fn plain_read_and_write_hand_buffers_back() {
    let mut reactor = Reactor::new().unwrap();
    let file: File = tempfile::tempfile().unwrap();
    let fd = Arc::new(file);
    reactor
        .write(Arc::clone(&fd), b"hello, reactor".to_vec(), 0, 1)
        .unwrap();
    let got = collect(&mut reactor, 1, LONG);
    let want = Event::Write {
        buf: b"hello, reactor".to_vec(),
        result: Ok(14),
    };
    assert_eq!(got[0].event, want);
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(b">>");
    reactor.read(Arc::clone(&fd), buf, 7, 2).unwrap();
    let got = collect(&mut reactor, 1, LONG);
    let want = Event::Read {
        buf: b">>reactor".to_vec(),
        result: Ok(7),
    };
    assert_eq!(got[0].event, want);
}

#[test]
fn drop_with_operations_in_flight_returns_promptly() {
    let mut reactor = Reactor::new().unwrap();
    let efd = Arc::new(eventfd(0, EventfdFlags::CLOEXEC).unwrap());
    reactor.poll_multishot(Arc::clone(&efd), 1).unwrap();
    reactor.timeout(Duration::from_secs(60), 2).unwrap();
    // A read of an eventfd holding 0 blocks until cancelled.
    let reader = eventfd(0, EventfdFlags::CLOEXEC).unwrap();
    reactor
        .read(reader, Vec::with_capacity(8), u64::MAX, 3)
        .unwrap();
    let word: Arc<dyn FutexWord> = Arc::new(AtomicU32::new(0));
    reactor.futex_wait(Arc::clone(&word), 0, 4).unwrap();
    reactor.submit().unwrap();
    assert_eq!(reactor.in_flight(), 4);
    let start = Instant::now();
    drop(reactor);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    // Everything the operations held was released, not leaked.
    assert_eq!(Arc::strong_count(&efd), 1);
    assert_eq!(Arc::strong_count(&word), 1);
}

#[test]
fn plain_ring_without_setup_flags_still_works() {
    let config = ReactorConfig {
        setup: SetupFlags::NONE,
        ..ReactorConfig::default()
    };
    let mut reactor = Reactor::with_config(config).unwrap();
    assert_eq!(reactor.features().setup, SetupFlags::NONE);
    let efd = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap());
    reactor.poll_multishot(Arc::clone(&efd), 1).unwrap();
    reactor.timeout(Duration::from_millis(10), 2).unwrap();
    let word: Arc<dyn FutexWord> = Arc::new(AtomicU32::new(0));
    reactor.futex_wake(word, 3).unwrap();
    ring_eventfd(&efd);
    let mut got = collect(&mut reactor, 3, LONG);
    got.sort_by_key(|c| c.token);
    assert!(matches!(got[0].event, Event::Readable { .. }), "{got:?}");
    assert_eq!(got[1].event, Event::Timer(TimerOutcome::Fired));
    assert_eq!(got[2].event, Event::FutexWake(Ok(0)));
}

#[test]
fn nonblocking_wait_makes_no_syscall_when_idle_but_still_sees_completions() {
    let mut reactor = Reactor::new().unwrap();
    reactor.timeout(Duration::from_millis(10), 1).unwrap();
    reactor.submit().unwrap();
    let enters = reactor.stats().enters;
    // Spin like a worker's busy phase: completions must still show up (deferred task work is
    // flagged by IORING_SQ_TASKRUN), and idle spins must not enter the kernel every time.
    let mut got = Vec::new();
    let mut spins = 0u64;
    let until = Instant::now() + LONG;
    while got.is_empty() && Instant::now() < until {
        reactor
            .wait(0, Some(Duration::ZERO), |c| got.push(c))
            .unwrap();
        spins += 1;
    }
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event, Event::Timer(TimerOutcome::Fired));
    let entered = reactor.stats().enters - enters;
    assert!(entered < spins / 2, "{entered} enters for {spins} spins");
}

/// The daemon's path, with no `unsafe`: a shm region registered as a fixed buffer and a futex
/// word inside it.
#[test]
fn shm_region_serves_as_fixed_buffer_and_futex_word() {
    use blobring_shm::SharedMemory as _;
    let region = Arc::new(blobring_shm::Region::create("reactor-shm-test", 64 * 1024).unwrap());
    let mut reactor = Reactor::new().unwrap();
    let index = reactor.register_region(region.clone()).unwrap();
    region.mapping().write(8192, b"from shared memory").unwrap();
    let file = Arc::new(tempfile::tempfile().unwrap());
    let range = fixed(index, 8192, 18);
    reactor.write_fixed(Arc::clone(&file), range, 0, 1).unwrap();
    let got = collect(&mut reactor, 1, LONG);
    assert_eq!(got[0].event, Event::Transferred(Ok(18)));
    let back = fixed(index, 100, 18);
    reactor.read_fixed(Arc::clone(&file), back, 0, 2).unwrap();
    let got = collect(&mut reactor, 1, LONG);
    assert_eq!(got[0].event, Event::Transferred(Ok(18)));
    let mut bytes = [0u8; 18];
    region.mapping().read(100, &mut bytes).unwrap();
    assert_eq!(&bytes, b"from shared memory");

    let word: Arc<dyn FutexWord> = Arc::new(RegionWord::new(region.clone(), 4096).unwrap());
    region
        .mapping()
        .store_u32(4096, 7, Ordering::SeqCst)
        .unwrap();
    assert_eq!(atomic(&word).load(Ordering::SeqCst), 7);
    reactor.futex_wait(Arc::clone(&word), 6, 3).unwrap();
    let got = collect(&mut reactor, 1, LONG);
    assert_eq!(
        got[0].event,
        Event::FutexWait(Err(rustix::io::Errno::AGAIN))
    );
}

#[test]
fn regions_over_one_gib_are_refused_with_a_clear_error() {
    // A sparse 1 GiB + 4 KiB memfd: nothing is faulted in.
    let region = MemfdRegion::new((1 << 30) + 4096);
    let mut reactor = Reactor::new().unwrap();
    let err = reactor.register_region(region).unwrap_err();
    assert!(matches!(err, Error::RegionTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("1 GiB"));
}

#[test]
fn many_doorbells_each_report_under_their_own_token() {
    let mut reactor = Reactor::new().unwrap();
    let bells: Vec<Arc<OwnedFd>> = (0..32)
        .map(|_| Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap()))
        .collect();
    for (i, bell) in bells.iter().enumerate() {
        reactor
            .poll_multishot(Arc::clone(bell), 1000 + i as u64)
            .unwrap();
    }
    reactor.submit().unwrap();
    for round in 0..5u64 {
        // Ring a different subset each round, in a scrambled order.
        let rung: Vec<usize> = (0..32)
            .filter(|i| !(i * 7 + round as usize).is_multiple_of(3))
            .collect();
        for &i in rung.iter().rev() {
            ring_eventfd(&bells[i]);
        }
        let mut seen = std::collections::BTreeSet::new();
        let until = Instant::now() + LONG;
        while seen.len() < rung.len() && Instant::now() < until {
            reactor
                .wait(1, Some(Duration::from_millis(200)), |c| {
                    assert!(matches!(c.event, Event::Readable { .. }), "{c:?}");
                    seen.insert((c.token - 1000) as usize);
                })
                .unwrap();
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), rung, "round {round}");
        for &i in &rung {
            drain_eventfd(&bells[i]);
        }
    }
    assert_eq!(reactor.in_flight(), 32);
    assert_eq!(reactor.stats().poll_rearms, 0);
}
