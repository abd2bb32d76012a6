//! How long an idle worker busy-polls before it sleeps: a budget that adapts to what spinning
//! buys (pure; the worker's main loop feeds it, see [`crate::worker`]).
//!
//! **What a spin buys.** A worker that sleeps publishes `sq_need_wakeup`, arms its channels
//! and blocks in `io_uring_enter`; the client that submits next must then write the
//! doorbell eventfd and the worker pays a wakeup. Spinning avoids that round, and only that:
//! a spin that finds work after `t` has cost `t` of a core (taken from the client and the
//! host on a small machine) to save one sleep-and-wake round, worth a few µs of CPU.
//!
//! **The rule.** The budget starts at the configured maximum (`--spin-us`) and, after every
//! idle period in which the worker spun:
//! - work found within [`SPIN_WORTH`] (capped at the maximum): the spin paid, so the budget
//!   doubles (at least [`SPIN_FLOOR`], at most the maximum);
//! - work found later, or the budget ran out first: the spin cost more than it saved, so the
//!   budget halves, and drops to zero below [`SPIN_FLOOR`].
//!
//! With a budget of zero the worker sleeps at once, except that every [`PROBE_EVERY`]-th
//! idle period spins up to [`SPIN_WORTH`] as a probe, so a load that turns spin-friendly again
//! is noticed (a probe costs at most `SPIN_WORTH / PROBE_EVERY` per idle period on average).
//! A stream whose submissions arrive within microseconds (deep queues, NOPs) keeps the full
//! budget and the no-syscall fast path; a client at depth 1 that takes tens of µs to turn a
//! completion into its next request drives the budget to zero instead of paying that long a
//! spin per request. The rule only looks at outcomes, never at clocks other than the idle
//! period's own length, so it is tested without timing.

use std::time::Duration;

/// The longest wait for work that one avoided sleep-and-wake round is worth spinning for.
pub const SPIN_WORTH: Duration = Duration::from_micros(10);
/// The smallest non-zero budget.
pub const SPIN_FLOOR: Duration = Duration::from_micros(1);
/// With a budget of zero, every this many idle periods spin a probe of [`SPIN_WORTH`].
pub const PROBE_EVERY: u32 = 64;

/// How an idle period in which the worker spun ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpinOutcome {
    /// Work was found this long after the worker went idle, without sleeping.
    Found(Duration),
    /// The spin ran out; the worker went to sleep.
    RanOut,
}

/// The budget after an idle period ended with `outcome`, given the budget it spun with and the
/// configured maximum.
pub fn next_budget(budget: Duration, max: Duration, outcome: SpinOutcome) -> Duration {
    let worth = SPIN_WORTH.min(max);
    match outcome {
        SpinOutcome::Found(after) if after <= worth => {
            budget.saturating_mul(2).max(SPIN_FLOOR).min(max)
        }
        SpinOutcome::Found(_) | SpinOutcome::RanOut => {
            let half = budget / 2;
            if half < SPIN_FLOOR {
                Duration::ZERO
            } else {
                half
            }
        }
    }
}

/// One worker's adaptive spin budget with its counters.
#[derive(Debug, Clone)]
pub struct Spin {
    budget: Duration,
    max: Duration,
    /// Idle periods since the last probe, while the budget is zero.
    since_probe: u32,
    /// Idle periods in which spinning found work (probes included).
    pub hits: u64,
    /// Idle periods in which the spin ran out and the worker slept.
    pub misses: u64,
}

impl Spin {
    /// A budget starting at (and never above) `max`.
    pub fn new(max: Duration) -> Self {
        Self {
            budget: max,
            max,
            since_probe: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// The current budget.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// How long to spin in an idle period that is starting: the budget, or with a budget of
    /// zero a probe of [`SPIN_WORTH`] every [`PROBE_EVERY`]-th time (zero otherwise).
    pub fn allowance(&mut self) -> Duration {
        if !self.budget.is_zero() {
            return self.budget;
        }
        self.since_probe += 1;
        if self.since_probe < PROBE_EVERY {
            return Duration::ZERO;
        }
        self.since_probe = 0;
        SPIN_WORTH.min(self.max)
    }

    /// Adapts to how an idle period that spun (with a non-zero allowance) ended.
    pub fn record(&mut self, outcome: SpinOutcome) {
        match outcome {
            SpinOutcome::Found(_) => self.hits += 1,
            SpinOutcome::RanOut => self.misses += 1,
        }
        // A probe spins from a budget of zero: a paying one starts the budget at the floor.
        self.budget = next_budget(self.budget, self.max, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(30);

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn quick_work_grows_the_budget_up_to_the_maximum() {
        assert_eq!(next_budget(us(4), MAX, SpinOutcome::Found(us(1))), us(8));
        assert_eq!(next_budget(us(20), MAX, SpinOutcome::Found(us(2))), MAX);
        assert_eq!(next_budget(MAX, MAX, SpinOutcome::Found(SPIN_WORTH)), MAX);
        assert_eq!(
            next_budget(Duration::ZERO, MAX, SpinOutcome::Found(us(3))),
            SPIN_FLOOR,
            "a paying probe starts from the floor"
        );
    }

    #[test]
    fn late_work_or_running_out_halves_the_budget_down_to_zero() {
        assert_eq!(next_budget(MAX, MAX, SpinOutcome::Found(us(11))), us(15));
        assert_eq!(next_budget(MAX, MAX, SpinOutcome::RanOut), us(15));
        assert_eq!(
            next_budget(us(3), MAX, SpinOutcome::RanOut),
            Duration::from_nanos(1500)
        );
        assert_eq!(next_budget(us(1), MAX, SpinOutcome::RanOut), Duration::ZERO);
        assert_eq!(
            next_budget(Duration::ZERO, MAX, SpinOutcome::RanOut),
            Duration::ZERO
        );
    }

    #[test]
    fn a_small_maximum_caps_what_counts_as_quick() {
        let max = us(5);
        assert_eq!(next_budget(max, max, SpinOutcome::Found(us(5))), max);
        assert_eq!(
            next_budget(max, max, SpinOutcome::Found(us(6))),
            Duration::from_nanos(2500)
        );
        // No spinning configured: nothing ever grows.
        let zero = Duration::ZERO;
        assert_eq!(next_budget(zero, zero, SpinOutcome::Found(zero)), zero);
        let mut s = Spin::new(zero);
        assert!((0..3 * PROBE_EVERY).all(|_| s.allowance().is_zero()));
    }

    #[test]
    fn a_depth_one_client_turning_slowly_stops_the_spinning() {
        // Every idle period ends with the next request 25 µs later: the budget decays to zero
        // and stays there; probes keep missing.
        let mut s = Spin::new(MAX);
        for _ in 0..20 {
            let a = s.allowance();
            if a.is_zero() {
                continue;
            }
            s.record(if us(25) <= a {
                SpinOutcome::Found(us(25))
            } else {
                SpinOutcome::RanOut
            });
        }
        assert_eq!(s.budget(), Duration::ZERO);
        let spun: Vec<Duration> = (0..2 * PROBE_EVERY)
            .map(|_| s.allowance())
            .filter(|a| !a.is_zero())
            .collect();
        assert_eq!(
            spun,
            vec![SPIN_WORTH, SPIN_WORTH],
            "one probe per PROBE_EVERY"
        );
    }

    #[test]
    fn a_stream_of_quick_submissions_keeps_the_full_budget_and_a_probe_recovers_it() {
        let mut s = Spin::new(MAX);
        for _ in 0..100 {
            assert_eq!(s.allowance(), MAX);
            s.record(SpinOutcome::Found(us(2)));
        }
        assert_eq!((s.budget(), s.hits, s.misses), (MAX, 100, 0));
        // The load turns idle: the budget drains.
        while !s.budget().is_zero() {
            let _ = s.allowance();
            s.record(SpinOutcome::RanOut);
        }
        assert_eq!(s.misses, 5, "30 → 15 → 7.5 → 3.75 → 1.875 → 0");
        // Quick submissions again: the next probe finds work and the budget climbs back.
        let mut periods = 0;
        while s.budget() < MAX {
            periods += 1;
            if !s.allowance().is_zero() {
                s.record(SpinOutcome::Found(us(2)));
            }
        }
        assert!(periods <= PROBE_EVERY as usize + 6, "{periods}");
    }
}
