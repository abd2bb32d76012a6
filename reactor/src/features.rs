//! What we ask the kernel for, what it offers, and how we degrade when it offers less.
//!
//! The decisions are pure functions ([`setup_ladder`], [`plan`]) so they are unit-tested
//! without a kernel; `Reactor::with_config` feeds them the results of live probes.

use std::fmt;

/// Setup flags the reactor would like on its ring (each used only when the kernel has it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupFlags {
    /// `IORING_SETUP_SINGLE_ISSUER` (6.0): only the creating thread submits; no internal locks.
    pub single_issuer: bool,
    /// `IORING_SETUP_DEFER_TASKRUN` (6.1): completion work runs only when we wait. Needs
    /// `single_issuer`.
    pub defer_taskrun: bool,
    /// `IORING_SETUP_COOP_TASKRUN` (5.19) with `TASKRUN_FLAG`: no IPIs for completion work.
    pub coop_taskrun: bool,
    /// `IORING_SETUP_NO_SQARRAY` (6.6): SQEs are used in ring order, no index array.
    pub no_sqarray: bool,
    /// `IORING_SETUP_SUBMIT_ALL` (5.18): one bad SQE does not hold back the rest of a batch.
    pub submit_all: bool,
}

impl SetupFlags {
    /// Every flag on: what a thread-per-core worker wants.
    pub const ALL: SetupFlags = SetupFlags {
        single_issuer: true,
        defer_taskrun: true,
        coop_taskrun: true,
        no_sqarray: true,
        submit_all: true,
    };

    /// No flag: a plain ring.
    pub const NONE: SetupFlags = SetupFlags {
        single_issuer: false,
        defer_taskrun: false,
        coop_taskrun: false,
        no_sqarray: false,
        submit_all: false,
    };

    /// Drops flags whose prerequisites are missing (DEFER_TASKRUN needs SINGLE_ISSUER).
    fn normalized(mut self) -> Self {
        if !self.single_issuer {
            self.defer_taskrun = false;
        }
        self
    }
}

impl Default for SetupFlags {
    fn default() -> Self {
        SetupFlags::ALL
    }
}

/// The order in which setup attempts are made: the wished set first, then dropping the newest
/// flag at each step (NO_SQARRAY 6.6, DEFER_TASKRUN 6.1, SINGLE_ISSUER 6.0, COOP_TASKRUN 5.19,
/// SUBMIT_ALL 5.18), ending with a plain ring. Consecutive duplicates are removed.
pub fn setup_ladder(wish: SetupFlags) -> Vec<SetupFlags> {
    let mut step = wish.normalized();
    let mut ladder = vec![step];
    let drops: [fn(&mut SetupFlags); 5] = [
        |f| f.no_sqarray = false,
        |f| f.defer_taskrun = false,
        |f| {
            f.single_issuer = false;
            f.defer_taskrun = false;
        },
        |f| f.coop_taskrun = false,
        |f| f.submit_all = false,
    ];
    for drop_flag in drops {
        drop_flag(&mut step);
        if ladder.last() != Some(&step) {
            ladder.push(step);
        }
    }
    ladder
}

/// What the kernel offered, as found by probing a built ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KernelCaps {
    /// `PollAdd` with `IORING_POLL_ADD_MULTI` returned a CQE with `F_MORE`.
    pub multishot_poll: bool,
    /// `IORING_OP_FUTEX_WAIT` and `IORING_OP_FUTEX_WAKE` are in the opcode probe (6.7).
    pub futex_ops: bool,
    /// `READ_FIXED`/`WRITE_FIXED` are supported and a sparse buffer table registered.
    pub fixed_buffers: bool,
    /// `IORING_FEAT_NODROP`: overflowed CQEs are kept, not dropped.
    pub nodrop: bool,
}

/// Which operations the reactor may use; every `true` is used only if the kernel has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wants {
    /// Multishot poll (else one-shot polls re-armed after every event).
    pub multishot_poll: bool,
    /// io_uring futex ops (else a direct `futex` syscall for wakes; no futex wait).
    pub futex_ops: bool,
    /// Fixed buffers (else plain `Read`/`Write` into the same region memory).
    pub fixed_buffers: bool,
}

impl Default for Wants {
    fn default() -> Self {
        Wants {
            multishot_poll: true,
            futex_ops: true,
            fixed_buffers: true,
        }
    }
}

/// What the reactor actually uses; reported by `Reactor::features()` and `blobring stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Setup flags the ring was built with.
    pub setup: SetupFlags,
    /// Multishot poll in use (else one-shot + re-arm).
    pub multishot_poll: bool,
    /// io_uring `FutexWake`/`FutexWait` in use (else `futex(2)` wakes, no reactor futex wait).
    pub futex_ops: bool,
    /// Registered fixed buffers in use (else plain reads/writes into region memory).
    pub fixed_buffers: bool,
    /// The kernel keeps overflowed CQEs (`IORING_FEAT_NODROP`).
    pub nodrop: bool,
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = |b: bool| if b { "on" } else { "off" };
        write!(
            f,
            "single_issuer={} defer_taskrun={} coop_taskrun={} no_sqarray={} submit_all={} \
             multishot_poll={} futex_ops={} fixed_buffers={} nodrop={}",
            on(self.setup.single_issuer),
            on(self.setup.defer_taskrun),
            on(self.setup.coop_taskrun),
            on(self.setup.no_sqarray),
            on(self.setup.submit_all),
            on(self.multishot_poll),
            on(self.futex_ops),
            on(self.fixed_buffers),
            on(self.nodrop),
        )
    }
}

/// A wished-for feature the kernel did not provide, with the fallback taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Degradation {
    /// No `IORING_SETUP_NO_SQARRAY`.
    NoSqArray,
    /// No `IORING_SETUP_DEFER_TASKRUN`.
    DeferTaskrun,
    /// No `IORING_SETUP_SINGLE_ISSUER`.
    SingleIssuer,
    /// No `IORING_SETUP_COOP_TASKRUN`.
    CoopTaskrun,
    /// No `IORING_SETUP_SUBMIT_ALL`.
    SubmitAll,
    /// No multishot poll.
    MultishotPoll,
    /// No io_uring futex ops.
    FutexOps,
    /// No fixed buffers.
    FixedBuffers,
}

impl Degradation {
    /// The log line for this degradation: what is missing and what we do instead.
    pub fn message(self) -> &'static str {
        match self {
            Degradation::NoSqArray => {
                "io_uring NO_SQARRAY unavailable (needs Linux 6.6); using the SQ index array"
            }
            Degradation::DeferTaskrun => {
                "io_uring DEFER_TASKRUN unavailable (needs Linux 6.1); completion work may \
                 interrupt the worker"
            }
            Degradation::SingleIssuer => {
                "io_uring SINGLE_ISSUER unavailable (needs Linux 6.0); the kernel keeps its \
                 submission locks"
            }
            Degradation::CoopTaskrun => {
                "io_uring COOP_TASKRUN unavailable (needs Linux 5.19); completions are \
                 delivered with IPIs"
            }
            Degradation::SubmitAll => {
                "io_uring SUBMIT_ALL unavailable (needs Linux 5.18); a refused SQE delays the \
                 rest of its batch to the next enter"
            }
            Degradation::MultishotPoll => {
                "io_uring multishot poll unavailable (needs Linux 5.13); re-arming a one-shot \
                 poll after every event"
            }
            Degradation::FutexOps => {
                "io_uring futex ops unavailable (needs Linux 6.7); waking with the futex(2) \
                 syscall, and Reactor::futex_wait is unsupported"
            }
            Degradation::FixedBuffers => {
                "io_uring fixed buffers unavailable; read_fixed/write_fixed use plain \
                 reads/writes (pages are pinned per operation)"
            }
        }
    }
}

/// Decides the features to use from what was wished, the setup flags the ring was built with
/// and the probed capabilities; lists every wished feature that is missing.
pub fn plan(
    wish_setup: SetupFlags,
    got_setup: SetupFlags,
    wants: Wants,
    caps: KernelCaps,
) -> (Features, Vec<Degradation>) {
    let wish_setup = wish_setup.normalized();
    let mut missing = Vec::new();
    let pairs = [
        (
            wish_setup.no_sqarray,
            got_setup.no_sqarray,
            Degradation::NoSqArray,
        ),
        (
            wish_setup.defer_taskrun,
            got_setup.defer_taskrun,
            Degradation::DeferTaskrun,
        ),
        (
            wish_setup.single_issuer,
            got_setup.single_issuer,
            Degradation::SingleIssuer,
        ),
        (
            wish_setup.coop_taskrun,
            got_setup.coop_taskrun,
            Degradation::CoopTaskrun,
        ),
        (
            wish_setup.submit_all,
            got_setup.submit_all,
            Degradation::SubmitAll,
        ),
        (
            wants.multishot_poll,
            caps.multishot_poll,
            Degradation::MultishotPoll,
        ),
        (wants.futex_ops, caps.futex_ops, Degradation::FutexOps),
        (
            wants.fixed_buffers,
            caps.fixed_buffers,
            Degradation::FixedBuffers,
        ),
    ];
    for (wished, got, degradation) in pairs {
        if wished && !got {
            missing.push(degradation);
        }
    }
    let features = Features {
        setup: got_setup,
        multishot_poll: wants.multishot_poll && caps.multishot_poll,
        futex_ops: wants.futex_ops && caps.futex_ops,
        fixed_buffers: wants.fixed_buffers && caps.fixed_buffers,
        nodrop: caps.nodrop,
    };
    (features, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladder_drops_newest_flag_first_and_ends_plain() {
        let ladder = setup_ladder(SetupFlags::ALL);
        assert_eq!(ladder.first(), Some(&SetupFlags::ALL));
        assert_eq!(ladder.last(), Some(&SetupFlags::NONE));
        assert_eq!(ladder.len(), 6);
        assert!(!ladder[1].no_sqarray && ladder[1].defer_taskrun);
        assert!(!ladder[2].defer_taskrun && ladder[2].single_issuer && ladder[2].coop_taskrun);
        assert!(!ladder[3].single_issuer && ladder[3].coop_taskrun);
        assert!(!ladder[4].coop_taskrun && ladder[4].submit_all);
        // Every step is a subset of the one before it.
        for pair in ladder.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert!(a.single_issuer || !b.single_issuer);
            assert!(a.defer_taskrun || !b.defer_taskrun);
            assert!(a.coop_taskrun || !b.coop_taskrun);
            assert!(a.no_sqarray || !b.no_sqarray);
            assert!(a.submit_all || !b.submit_all);
        }
    }

    #[test]
    fn ladder_never_asks_defer_without_single_issuer() {
        let wish = SetupFlags {
            single_issuer: false,
            ..SetupFlags::ALL
        };
        for step in setup_ladder(wish) {
            assert!(!step.defer_taskrun || step.single_issuer);
        }
    }

    #[test]
    fn ladder_of_plain_wish_is_one_step() {
        assert_eq!(setup_ladder(SetupFlags::NONE), vec![SetupFlags::NONE]);
    }

    #[test]
    fn full_kernel_means_no_degradation() {
        let caps = KernelCaps {
            multishot_poll: true,
            futex_ops: true,
            fixed_buffers: true,
            nodrop: true,
        };
        let (features, missing) = plan(SetupFlags::ALL, SetupFlags::ALL, Wants::default(), caps);
        assert!(missing.is_empty());
        assert!(features.futex_ops && features.multishot_poll && features.fixed_buffers);
        assert_eq!(features.setup, SetupFlags::ALL);
    }

    #[test]
    fn old_kernel_degrades_each_missing_feature() {
        // A 5.15-like kernel: COOP_TASKRUN missing too, multishot poll present, no futex ops.
        let got = SetupFlags::NONE;
        let caps = KernelCaps {
            multishot_poll: true,
            futex_ops: false,
            fixed_buffers: true,
            nodrop: true,
        };
        let (features, missing) = plan(SetupFlags::ALL, got, Wants::default(), caps);
        assert_eq!(
            missing,
            vec![
                Degradation::NoSqArray,
                Degradation::DeferTaskrun,
                Degradation::SingleIssuer,
                Degradation::CoopTaskrun,
                Degradation::SubmitAll,
                Degradation::FutexOps,
            ]
        );
        assert!(!features.futex_ops);
        assert!(features.multishot_poll);
        assert!(Degradation::FutexOps.message().contains("futex(2)"));
    }

    #[test]
    fn unwanted_feature_is_off_but_not_a_degradation() {
        let caps = KernelCaps {
            multishot_poll: true,
            futex_ops: true,
            fixed_buffers: false,
            nodrop: false,
        };
        let wants = Wants {
            futex_ops: false,
            ..Wants::default()
        };
        let (features, missing) = plan(SetupFlags::ALL, SetupFlags::ALL, wants, caps);
        assert!(!features.futex_ops);
        assert_eq!(missing, vec![Degradation::FixedBuffers]);
        assert!(!features.fixed_buffers);
    }

    #[test]
    fn display_lists_every_feature() {
        let (features, _) = plan(
            SetupFlags::ALL,
            SetupFlags::NONE,
            Wants::default(),
            KernelCaps::default(),
        );
        let text = features.to_string();
        for key in [
            "single_issuer=off",
            "futex_ops=off",
            "multishot_poll=off",
            "nodrop=off",
        ] {
            assert!(text.contains(key), "{text}");
        }
    }
}
