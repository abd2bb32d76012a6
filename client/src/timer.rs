//! One timer for every async wait of the SDK (retry backoff, arena space, striped transfers).
//!
//! A [`Sleep`] registers its deadline and waker with a single process-wide timer thread,
//! started on first use, that sleeps on a condition variable until the earliest deadline and
//! wakes the tasks whose deadlines have passed. No wait parks an executor thread, and no wait
//! spawns a thread: 10,000 concurrent sleeps cost one thread and a map entry each. Dropping a
//! pending `Sleep` removes its entry, so abandoned waits (a request that completed first) leave
//! nothing behind.
//!
//! Invariants: an entry is in the map only while its `Sleep` is alive and its deadline has not
//! been handed to the timer thread; the thread wakes wakers outside the lock.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    /// Pending sleeps by (deadline, id).
    entries: BTreeMap<(Instant, u64), Waker>,
    next_id: u64,
}

struct Timer {
    state: Mutex<State>,
    cv: Condvar,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn timer() -> &'static Timer {
    static TIMER: OnceLock<&'static Timer> = OnceLock::new();
    TIMER.get_or_init(|| {
        let t: &'static Timer = Box::leak(Box::new(Timer {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        }));
        // If the thread cannot be spawned, sleeps still end: `Sleep::poll` then falls back to
        // checking the clock whenever it is polled (see there).
        let _ = std::thread::Builder::new()
            .name("blobring-timer".into())
            .spawn(move || t.run());
        t
    })
}

impl Timer {
    fn run(&self) {
        let mut due = Vec::new();
        let mut st = lock(&self.state);
        loop {
            let now = Instant::now();
            while let Some(entry) = st.entries.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
            if !due.is_empty() {
                drop(st);
                for w in due.drain(..) {
                    w.wake();
                }
                st = lock(&self.state);
                continue;
            }
            st = match st.entries.first_key_value() {
                Some(((at, _), _)) => {
                    let wait = at.saturating_duration_since(now);
                    self.cv
                        .wait_timeout(st, wait)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0)
                }
                None => self.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

/// A future that completes `d` from now (see the module doc).
pub fn sleep(d: Duration) -> Sleep {
    Sleep {
        deadline: Instant::now() + d,
        key: None,
    }
}

/// The future of [`sleep`].
#[derive(Debug)]
#[must_use = "a Sleep does nothing unless polled"]
pub struct Sleep {
    deadline: Instant,
    /// The entry in the timer's map, once registered.
    key: Option<(Instant, u64)>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            self.deregister();
            return Poll::Ready(());
        }
        let t = timer();
        let mut st = lock(&t.state);
        match self.key {
            Some(key) if st.entries.contains_key(&key) => {
                let w = st.entries.get_mut(&key).expect("checked");
                if !w.will_wake(cx.waker()) {
                    *w = cx.waker().clone();
                }
            }
            _ => {
                let key = (self.deadline, st.next_id);
                st.next_id += 1;
                let earliest = st.entries.first_key_value().is_none_or(|(k, _)| key < *k);
                st.entries.insert(key, cx.waker().clone());
                self.key = Some(key);
                if earliest {
                    t.cv.notify_one();
                }
            }
        }
        Poll::Pending
    }
}

impl Sleep {
    /// Removes this sleep's entry, if registered (on completion and on drop).
    fn deregister(&mut self) {
        if let Some(key) = self.key.take() {
            lock(&timer().state).entries.remove(&key);
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.deregister();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `f` once.
    async fn poll_once<F: Future>(mut f: Pin<&mut F>) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
    }

    fn threads() -> usize {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    }

    /// 10,000 concurrent waits: one timer thread, every wait at least as long as asked, and
    /// nothing left registered afterwards. (The old sleep spawned a thread per wait.)
    #[test]
    fn ten_thousand_concurrent_waits_share_one_thread() {
        // Start the timer first, so that the count below sees only what the waits add.
        crate::block_on(sleep(Duration::from_millis(1)));
        let before = threads();
        let t0 = Instant::now();
        let waits: Vec<_> = (0..10_000u64)
            .map(|i| async move {
                let d = Duration::from_millis(20 + i % 50);
                let start = Instant::now();
                sleep(d).await;
                start.elapsed() >= d
            })
            .collect();
        let (results, during) = crate::block_on(async {
            let mut all = std::pin::pin!(futures_util::future::join_all(waits));
            // Poll once so that every wait is registered, then count threads mid-wait.
            let first = poll_once(all.as_mut()).await;
            assert!(first.is_pending());
            let during = threads();
            (all.await, during)
        });
        assert!(results.iter().all(|ok| *ok), "a wait ended early");
        // Other tests of this binary run beside this one and may start a few threads; a thread
        // per wait would be 10,000.
        assert!(
            during < before + 32,
            "threads went from {before} to {during} with 10,000 waits pending"
        );
        assert!(t0.elapsed() < Duration::from_secs(10));
    }

    /// A dropped pending sleep leaves no entry; an earlier deadline registered after a later
    /// one still fires on time.
    #[test]
    fn dropped_sleeps_deregister_and_earlier_deadlines_preempt() {
        let long = sleep(Duration::from_secs(3600));
        let t0 = Instant::now();
        crate::block_on(async {
            let mut long = std::pin::pin!(long);
            assert!(poll_once(long.as_mut()).await.is_pending());
            sleep(Duration::from_millis(30)).await;
        });
        assert!(t0.elapsed() < Duration::from_secs(5));
        let hour_from_start = t0 + Duration::from_secs(1800);
        let left = lock(&timer().state)
            .entries
            .keys()
            .any(|(at, _)| *at > hour_from_start);
        assert!(!left, "the dropped hour-long sleep is still registered");
    }
}
