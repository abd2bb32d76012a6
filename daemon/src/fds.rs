//! The daemon's file-descriptor budget.
//!
//! Every client costs the daemon `2 + workers` descriptors for as long as it is connected (its
//! socket, its region's memfd and one doorbell eventfd per queue pair). With the common soft
//! `RLIMIT_NOFILE` of 1024, 251 two-worker clients used to exhaust the table, after which every
//! handshake — also from a uid within every limit — failed with "Too many open files". At start
//! [`plan`] raises the soft limit to the hard one and checks that `--max-clients` clients fit
//! beside what the daemon needs for itself; if they do not, `--max-clients` is lowered with a
//! warning naming both numbers (and the daemon refuses to start when not even one client fits).
//! A handshake that would still run out (something else took descriptors) is refused with a
//! message that says so ([`Budget::check`]), and a connection accepted while the table is full
//! is answered through a spare descriptor kept for that ([`Spare`]).

use std::fs::File;

use crate::DaemonError;

/// Descriptors a client holds besides its doorbells: its socket and its region's memfd.
pub const PER_CLIENT_FIXED: u64 = 2;

/// Descriptors kept for the daemon itself on top of those open at start: pending handshakes
/// (at most 64 sockets), ctl connections and their writer threads, the host connection and its
/// channels (a memfd and two eventfds each), the spare, and slack for short-lived files
/// (`/proc` reads, the metrics socket).
pub const SELF_RESERVE: u64 = 64 + 16 + 3 * 64 + 32;

/// The descriptor budget in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The soft `RLIMIT_NOFILE` in force (after raising it).
    pub limit: u64,
    /// Descriptors one client costs: [`PER_CLIENT_FIXED`] + one per worker.
    pub per_client: u64,
    /// Clients admitted at most (`--max-clients`, possibly lowered to fit).
    pub max_clients: usize,
    /// Descriptors kept for the daemon itself.
    pub reserve: u64,
}

/// What the limits allow: `max_clients` asked for, each costing `per_client`, beside `reserve`
/// descriptors of the daemon's own, under a soft limit that may be raised to `hard` (`None`:
/// unlimited, in which case `nr_open`, the kernel's ceiling, applies). Returns the soft limit
/// to set and the clients that fit. Pure, for tests.
pub fn fit(
    soft: u64,
    hard: Option<u64>,
    nr_open: u64,
    max_clients: usize,
    per_client: u64,
    reserve: u64,
) -> (u64, usize) {
    let ceiling = hard.unwrap_or(nr_open).min(nr_open).max(soft);
    let need = reserve.saturating_add(per_client.saturating_mul(max_clients as u64));
    // Raise only as far as needed (and never lower a larger soft limit).
    let limit = soft.max(need.min(ceiling));
    let fits = limit.saturating_sub(reserve) / per_client.max(1);
    (
        limit,
        usize::try_from(fits).unwrap_or(usize::MAX).min(max_clients),
    )
}

/// Raises the soft `RLIMIT_NOFILE` as far as `--max-clients` needs (up to the hard limit) and
/// returns the budget, with `max_clients` lowered (and a warning) when they do not all fit.
pub fn plan(max_clients: usize, workers: usize) -> Result<Budget, DaemonError> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let soft = lim.current.unwrap_or(u64::MAX);
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    let per_client = PER_CLIENT_FIXED + workers as u64;
    let reserve = in_use() + SELF_RESERVE;
    let (want, fits) = fit(soft, lim.maximum, nr_open, max_clients, per_client, reserve);
    let mut limit = soft;
    if want > soft {
        match setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want),
                maximum: lim.maximum,
            },
        ) {
            Ok(()) => limit = want,
            Err(e) => tracing::warn!(error = %e, "could not raise RLIMIT_NOFILE to {want}"),
        }
    }
    let fits =
        fits.min(usize::try_from(limit.saturating_sub(reserve) / per_client).unwrap_or(usize::MAX));
    if fits == 0 {
        return Err(DaemonError::Setup(format!(
            "RLIMIT_NOFILE is {limit} descriptors (hard limit {}), but the daemon needs {reserve} \
             for itself and {per_client} per client: raise it (ulimit -n, or LimitNOFILE= in the \
             service unit)",
            lim.maximum
                .map_or("unlimited".to_owned(), |h| h.to_string())
        )));
    }
    if fits < max_clients {
        tracing::warn!(
            "--max-clients {max_clients} needs {} descriptors ({per_client} per client with \
             {workers} workers, {reserve} for the daemon) but RLIMIT_NOFILE allows {limit} (hard \
             limit {}): serving at most {fits} clients; raise the hard limit (ulimit -Hn, \
             LimitNOFILE=) or lower --max-clients",
            reserve + per_client * max_clients as u64,
            lim.maximum
                .map_or("unlimited".to_owned(), |h| h.to_string())
        );
    } else {
        tracing::info!(
            rlimit_nofile = limit,
            max_clients,
            per_client,
            "descriptor budget"
        );
    }
    Ok(Budget {
        limit,
        per_client,
        max_clients: fits,
        reserve,
    })
}

/// Whether `e` says the descriptor table (the process's or the system's) is full.
pub fn exhausted(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    e.raw_os_error()
        .is_some_and(|n| n == Errno::MFILE.raw_os_error() || n == Errno::NFILE.raw_os_error())
}

/// Descriptors this process has open now.
pub fn in_use() -> u64 {
    // read_dir holds one descriptor of its own while listing.
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count().saturating_sub(1) as u64)
}

impl Budget {
    /// Whether one more client fits in the descriptor table now (`open`: descriptors open);
    /// the refusal text when not.
    pub fn check(&self, open: u64) -> Result<(), String> {
        // Keep a few for the control thread's own work (ctl, /proc) beside the new client.
        let need = self.per_client + 8;
        if open.saturating_add(need) > self.limit {
            return Err(self.refusal(open));
        }
        Ok(())
    }

    /// The refusal text for a handshake that does not fit (`open`: descriptors open).
    pub fn refusal(&self, open: u64) -> String {
        format!(
            "the daemon is out of file descriptors ({open} of RLIMIT_NOFILE {} open, a client \
             needs {}); retry later, or ask the administrator to raise the daemon's limit \
             (LimitNOFILE=) or lower --max-clients",
            self.limit, self.per_client
        )
    }
}

/// A descriptor held in reserve so that a connection accepted while the table is full can still
/// be answered: on `EMFILE` the spare is closed, the connection accepted, told why and closed,
/// and the spare reopened.
#[derive(Debug)]
pub struct Spare(Option<File>);

impl Spare {
    /// Opens the spare (`/dev/null`).
    pub fn new() -> Self {
        Spare(File::open("/dev/null").ok())
    }

    /// Runs `f` with the spare's descriptor free; reopens the spare afterwards.
    pub fn with_free<T>(&mut self, f: impl FnOnce() -> T) -> T {
        self.0 = None;
        let r = f();
        self.0 = File::open("/dev/null").ok();
        r
    }
}

impl Default for Spare {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issues_case_lowers_max_clients_to_what_fits() {
        // Soft and hard 1024, 2 workers (4 per client), default --max-clients 256, ~300 kept.
        let (limit, fits) = fit(1024, Some(1024), 1 << 20, 256, 4, 300);
        assert_eq!(limit, 1024);
        assert_eq!(fits, (1024 - 300) / 4);
    }

    #[test]
    fn the_soft_limit_is_raised_as_far_as_needed_within_the_hard_one() {
        let (limit, fits) = fit(1024, Some(524_288), 1 << 20, 256, 4, 300);
        assert_eq!((limit, fits), (300 + 256 * 4, 256));
        // Unlimited hard limit: nr_open is the ceiling.
        let (limit, fits) = fit(1024, None, 4096, 2000, 4, 300);
        assert_eq!((limit, fits), (4096, (4096 - 300) / 4));
        // A larger soft limit is kept.
        assert_eq!(fit(65_536, Some(65_536), 1 << 20, 10, 4, 300), (65_536, 10));
    }

    #[test]
    fn nothing_fits_below_the_reserve() {
        assert_eq!(fit(128, Some(128), 1 << 20, 256, 4, 300).1, 0);
    }

    #[test]
    fn check_refuses_with_the_numbers_when_the_table_is_full() {
        let b = Budget {
            limit: 1024,
            per_client: 4,
            max_clients: 100,
            reserve: 300,
        };
        assert!(b.check(500).is_ok());
        let e = b.check(1020).unwrap_err();
        assert!(
            e.contains("out of file descriptors") && e.contains("1020 of RLIMIT_NOFILE 1024"),
            "{e}"
        );
    }
}
