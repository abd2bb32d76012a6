#![forbid(unsafe_code)]
//! `blobringd`: the thread-per-core daemon that owns the VMBus channels and serves client
//! processes through shared-memory queues (ARCHITECTURE.md §5).
//!
//! **Owns:** the client socket and handshake ([`control`]: a pure admission decision in
//! [`admission`] — hello, peer credentials, policy and load → grant or refusal with its
//! message — then the provisioning of a grant), every client's sealed region and doorbells,
//! the per-core workers ([`worker`]) with their io_uring reactors, in-flight slabs, adaptive
//! spinning ([`spin`]) and deadlines, the spreading of channels over workers (one function,
//! [`spread_channels`], for both transports), the host bus connection (reconnected with
//! backoff), cleanup of dead clients, and statistics ([`stats`]: JSON on the ctl socket,
//! Prometheus on loopback).
//!
//! **Trusts:** nothing a client writes: every SQE is copied once and the copy validated
//! (opcode, reserved fields, buffers inside the client's arena, lengths), every index is
//! validated by the ring crate, and a client that corrupts its indices is disconnected without
//! affecting others. The host mostly: its completions are matched against our own bookkeeping
//! (transaction id = slab key + 1 with a generation in the high half, lengths within the
//! request's buffers) and bad ones are counted and dropped; a silent host is handled by
//! deadlines.
//!
//! **Invariants:**
//! - a client's region is used only by its own queues and is unregistered from the host and
//!   dropped only after every worker has drained that client's requests;
//! - a worker takes an SQE only with a CQ credit (ring crate), so a client that never drains
//!   its CQ stalls only itself; at most `--batch` SQEs per client per turn;
//! - nothing on the request path logs or takes a lock; statistics are published by copying;
//! - a client is admitted only by [`admission::decide`], and a grant never exceeds the
//!   configured limits;
//! - a handshake costs the daemon the same for any arena size: it allocates only the region
//!   pages it initialises (header and queues; `uio` regions, which Hyper-V must find in
//!   memory, are pre-faulted), and the client's own mapping allocates its arena;
//! - a worker spins only while no request waits on the host, for at most `--spin-us`, and
//!   only as long as spinning finds work soon enough to pay for itself ([`spin`]);
//! - no unchecked memory access here: that lives only in shm, ring, vmbus and reactor;
//! - once the sockets are bound and the transport is set up, and before any other thread
//!   exists, the daemon drops its privileges ([`privs`]): `no_new_privs`, every capability
//!   set emptied (the `uio` transport keeps `CAP_IPC_LOCK` in the control thread to lock new
//!   client regions), no core dumps, not dumpable, optionally another user (`--user`,
//!   `--group`); `--keep-privileges` skips this for debugging.
//!
//! Startup order: signals blocked, transport selected and sockets bound
//! ([`control::bind`]), metrics port bound, privileges dropped ([`privs::drop_process`]),
//! workers and the metrics thread spawned (each drops what the control thread keeps), then
//! the control loop. Threads: a control thread (this crate's [`run`]), one worker per core (pinned, named
//! `blobring-wN`), and an optional metrics thread. `crossbeam-channel` carries control messages
//! to workers (each paired with an eventfd the worker's io_uring polls); `slab` holds in-flight
//! requests, clients and channels; `hdrhistogram` the latency distributions; `nix` gives
//! `signalfd` and `sched_setaffinity` through safe wrappers; `rustix` the `SCM_RIGHTS` messages
//! (fds become `OwnedFd` at once).

pub mod admission;
pub mod config;
pub mod control;
pub mod fds;
pub mod privs;
pub mod spin;
pub mod stats;
pub mod uio;
pub mod worker;

use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blobring_ring::{EventFd, Notifier};

pub use config::{Config, LogFormat, TransportArg};

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Setting something up failed; the message says what and what to do.
    #[error("{0}")]
    Setup(String),
    /// A worker failed.
    #[error("worker {index} failed: {message}")]
    Worker {
        /// Worker index.
        index: usize,
        /// Why.
        message: String,
    },
}

fn cpus() -> Vec<usize> {
    use nix::sched::{CpuSet, sched_getaffinity};
    use nix::unistd::Pid;
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&i| set.is_set(i).unwrap_or(false))
            .collect(),
        Err(_) => vec![0],
    }
}

fn pin(cpu: usize) {
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;
    let mut set = CpuSet::new();
    if set.set(cpu).is_ok()
        && let Err(e) = sched_setaffinity(Pid::from_raw(0), &set)
    {
        tracing::warn!(cpu, error = %e, "could not pin worker");
    }
}

/// Installs the global `tracing` subscriber: `RUST_LOG` filter (default `info`), to stderr, as
/// human-readable lines or one JSON object per line.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

/// The whole of `blobringd`'s `main` (the real binary and the tests crate's copy): parses the
/// command line (exiting with clap's usage on an error), sets up logging and [`run`]s.
pub fn main_from_args() -> Result<(), DaemonError> {
    use clap::Parser;
    let cfg = Config::parse();
    init_logging(cfg.log_format);
    run(cfg)
}

/// Runs the daemon until SIGTERM/SIGINT; returns after draining.
pub fn run(mut cfg: Config) -> Result<(), DaemonError> {
    // Before any thread exists, so every thread inherits the blocked mask.
    let signals = control::block_signals()?;
    // Every doorbell eventfd is shared with an untrusted client, which can make its description
    // blocking: the workers drain them with per-operation non-blocking reads only.
    EventFd::check_nowait().map_err(|e| {
        DaemonError::Setup(format!(
            "this kernel cannot read an eventfd without blocking per operation ({e}); \
             blobringd needs Linux 5.12 or later"
        ))
    })?;
    let cpus = cpus();
    let n = cfg.workers.unwrap_or(cpus.len()).max(1);
    if let Some(addr) = cfg.metrics
        && !addr.ip().is_loopback()
    {
        return Err(DaemonError::Setup(format!(
            "--metrics {addr} is not a loopback address; use 127.0.0.1:PORT"
        )));
    }
    // Sockets, transport and metrics port first, while this is the only thread (the socket
    // umask and the privilege drop are per process / per thread), then the drop, then the
    // threads, which inherit the reduced credentials.
    let ids = privs::resolve_ids(cfg.user.as_deref(), cfg.group.as_deref())?;
    let bound = control::bind(&cfg, n as u32)?;
    let metrics_listener = bind_metrics(&mut cfg)?;
    let plan = privs::Plan::for_transport(bound.is_uio(), ids)?;
    let thread_caps = if cfg.keep_privileges {
        tracing::warn!("--keep-privileges: running with every privilege the daemon started with");
        None
    } else {
        privs::drop_process(&plan, &bound.owned_paths())?;
        Some(plan.threads)
    };
    let (to_control, from_workers) = crossbeam_channel::unbounded();
    let wake = Arc::new(EventFd::new().map_err(|e| DaemonError::Setup(format!("eventfd: {e}")))?);
    let exited = Arc::new(AtomicUsize::new(0));
    let shared = Spawned {
        thread_caps,
        to_control,
        wake: wake.clone(),
        exited: exited.clone(),
    };
    let (handles, threads) = spawn_workers(&cfg, n, &cpus, &shared)?;
    let metrics_doc = Arc::new(Mutex::new(String::new()));
    if let Some(l) = metrics_listener {
        spawn_metrics(l, metrics_doc.clone(), thread_caps)?;
    }
    let drain = Duration::from_millis(cfg.drain_timeout) + Duration::from_millis(500);
    // After the workers exist (their rings and eventfds are the daemon's own descriptors).
    let budget = fds::plan(cfg.max_clients, n)?;
    cfg.max_clients = budget.max_clients;
    let ctl = control::Control::new(
        cfg,
        budget,
        bound,
        signals,
        wake,
        from_workers,
        handles,
        metrics_doc,
        exited,
    )?;
    let r = ctl.run();
    // Stopped early (a worker died): the others were just told to drain; give them the drain
    // deadline `run` would have given them. Otherwise every worker has counted its exit (or
    // the deadline passed): a counted worker is still unwinding its stack and thread-locals
    // after the count, so give it a moment to finish before calling it stuck.
    let grace = if r.is_err() {
        drain
    } else {
        Duration::from_millis(500)
    };
    join_workers(threads, grace)?;
    tracing::info!("stopped");
    r
}

/// Binds the Prometheus port of `--metrics` and records the port bound.
fn bind_metrics(cfg: &mut Config) -> Result<Option<TcpListener>, DaemonError> {
    let Some(addr) = cfg.metrics else {
        return Ok(None);
    };
    let setup = |e: std::io::Error| DaemonError::Setup(format!("--metrics {addr}: {e}"));
    let l = TcpListener::bind(addr).map_err(setup)?;
    // Port 0 picks a free port: report the one bound (log, ctl stats).
    let bound = l.local_addr().map_err(setup)?;
    tracing::info!(%bound, "serving Prometheus metrics");
    cfg.metrics = Some(bound);
    Ok(Some(l))
}

/// What every worker thread shares with the control thread.
struct Spawned {
    /// The capabilities threads keep (`None`: `--keep-privileges`).
    thread_caps: Option<rustix::thread::CapabilitySet>,
    to_control: crossbeam_channel::Sender<worker::ToControl>,
    /// The control thread's eventfd.
    wake: Arc<EventFd>,
    /// Workers that have exited.
    exited: Arc<AtomicUsize>,
}

type WorkerThread = std::thread::JoinHandle<Result<(), String>>;

/// Starts `n` workers (pinned round-robin over `cpus` unless `--no-pin`).
fn spawn_workers(
    cfg: &Config,
    n: usize,
    cpus: &[usize],
    shared: &Spawned,
) -> Result<(Vec<control::WorkerHandle>, Vec<WorkerThread>), DaemonError> {
    let mut handles = Vec::new();
    let mut threads = Vec::new();
    for index in 0..n {
        let (tx, rx) = crossbeam_channel::unbounded();
        let doorbell =
            Arc::new(EventFd::new().map_err(|e| DaemonError::Setup(format!("eventfd: {e}")))?);
        let cpu = (!cfg.no_pin).then(|| cpus[index % cpus.len()]);
        let cell = Arc::new(Mutex::new(stats::WorkerStats::new(index, cpu)));
        let settings = worker::WorkerSettings {
            index,
            cpu,
            spin: Duration::from_micros(cfg.spin_us),
            batch: cfg.batch.max(1),
            uid_inflight: cfg.uid_inflight,
            default_timeout: cfg.default_timeout(),
        };
        let (tc, db, wk, cl, ex) = (
            shared.to_control.clone(),
            doorbell.clone(),
            shared.wake.clone(),
            cell.clone(),
            shared.exited.clone(),
        );
        let thread_caps = shared.thread_caps;
        let t = std::thread::Builder::new()
            .name(format!("blobring-w{index}"))
            .spawn(move || {
                // Counts the exit even when the worker panics (the guard drops while unwinding).
                let _exit = ExitGuard(ex, wk.clone());
                if let Some(keep) = thread_caps {
                    privs::drop_thread(keep)
                        .map_err(|e| format!("dropping the worker's privileges: {e}"))?;
                }
                if let Some(cpu) = settings.cpu {
                    pin(cpu);
                }
                let r = worker::run(settings, rx, tc, db, wk, cl);
                if let Err(e) = &r {
                    tracing::error!(worker = index, error = %e, "worker failed");
                }
                r
            })
            .map_err(|e| DaemonError::Setup(format!("spawning worker {index}: {e}")))?;
        threads.push(t);
        handles.push(control::WorkerHandle {
            tx,
            doorbell,
            stats: cell,
        });
    }
    Ok((handles, threads))
}

/// Starts the thread answering Prometheus scrapes on `l` with the latest `doc`.
fn spawn_metrics(
    l: TcpListener,
    doc: Arc<Mutex<String>>,
    thread_caps: Option<rustix::thread::CapabilitySet>,
) -> Result<(), DaemonError> {
    std::thread::Builder::new()
        .name("blobring-metrics".into())
        .spawn(move || {
            // It only answers on its bound socket: it needs no capability at all.
            if thread_caps.is_some()
                && let Err(e) = privs::drop_thread(rustix::thread::CapabilitySet::empty())
            {
                tracing::error!(error = %e, "metrics thread: dropping privileges failed; not serving metrics");
                return;
            }
            serve_metrics(l, doc)
        })
        .map_err(|e| DaemonError::Setup(format!("spawning the metrics thread: {e}")))?;
    Ok(())
}

/// Waits up to `grace` for the workers to finish and joins them: the first that failed,
/// panicked or is still running is the error.
fn join_workers(threads: Vec<WorkerThread>, grace: Duration) -> Result<(), DaemonError> {
    let give_up = Instant::now() + grace;
    while threads.iter().any(|t| !t.is_finished()) && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(5));
    }
    // `run` returns once every worker has exited or the drain deadline has passed. A worker
    // still running then is stuck (it must never be, but if it is, a SIGTERM still ends the
    // daemon): it is left behind, and ends with the process.
    let mut stuck = None;
    for (index, t) in threads.into_iter().enumerate() {
        if !t.is_finished() {
            tracing::error!(
                worker = index,
                "worker did not stop within the drain deadline; exiting without it"
            );
            stuck.get_or_insert(index);
            continue;
        }
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => return Err(DaemonError::Worker { index, message }),
            Err(_) => {
                return Err(DaemonError::Worker {
                    index,
                    message: "panicked".into(),
                });
            }
        }
    }
    match stuck {
        Some(index) => Err(DaemonError::Worker {
            index,
            message: "did not stop within the drain deadline (--drain-timeout)".into(),
        }),
        None => Ok(()),
    }
}

/// Spreads `chans` over `workers` workers, the same way for both transports: channel `i` to
/// worker `i % workers`, so every worker owns one when there are at least as many channels
/// as workers, and the channels of a worker keep their order. `wrap(w, ch)` makes channel
/// `ch` what worker `w` drives (uio: wrapped with that worker's listener). Returns one list
/// per worker (`workers` lists; none when `workers` is 0).
pub fn spread_channels<C, T>(
    chans: Vec<C>,
    workers: usize,
    mut wrap: impl FnMut(usize, C) -> T,
) -> Vec<Vec<T>> {
    let mut per_worker: Vec<Vec<T>> = (0..workers).map(|_| Vec::new()).collect();
    if workers == 0 {
        return per_worker;
    }
    for (i, ch) in chans.into_iter().enumerate() {
        per_worker[i % workers].push(wrap(i % workers, ch));
    }
    per_worker
}

/// Counts a worker's exit and wakes the control thread, also on panic.
struct ExitGuard(Arc<AtomicUsize>, Arc<EventFd>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
        let _ = self.1.notify();
    }
}

fn serve_metrics(l: TcpListener, doc: Arc<Mutex<String>>) {
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 1024];
        let _ = std::io::Read::read(&mut s, &mut buf);
        let body = doc.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::spread_channels;

    #[test]
    fn channels_go_round_robin_and_each_is_wrapped_for_its_worker() {
        let per = spread_channels((0..5).collect(), 2, |w, c| (w, c));
        assert_eq!(
            per,
            vec![vec![(0, 0), (0, 2), (0, 4)], vec![(1, 1), (1, 3)]]
        );
    }

    #[test]
    fn every_worker_gets_one_when_channels_match_workers() {
        for n in 1..=8 {
            let per = spread_channels((0..n).collect(), n, |_, c| c);
            assert_eq!(per.len(), n);
            assert!(per.iter().enumerate().all(|(w, cs)| cs == &vec![w]));
        }
    }

    #[test]
    fn fewer_channels_than_workers_leave_the_last_workers_without() {
        let per = spread_channels(vec!['a', 'b'], 4, |_, c| c);
        assert_eq!(per, vec![vec!['a'], vec!['b'], vec![], vec![]]);
        let none: Vec<Vec<u8>> = spread_channels(vec![1u8], 0, |_, c| c);
        assert!(none.is_empty());
    }
}
