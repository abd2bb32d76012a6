//! The ring's measurements in one table (the project's temporary "main job"):
//! `cargo run --release -p blobring-ring --example ring-demo`.
//!
//! 1. One process: ns per entry for batches of 1, 8 and 64 (SQ push+pop; full queue-pair trip).
//! 2. Two processes (a spawned echo daemon that created the sealed memfd region and passed it,
//!    with its eventfd, over a unix socket with SCM_RIGHTS): round-trip latency of one request
//!    with both sides spinning, and with both sides sleeping (need-wakeup + eventfd / futex).
//! 3. Two processes streaming 10 M entries in batches of 64 with sleeping wakeups.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use blobring_abi::{Cqe, FromZeros, Sqe};
use blobring_ring::{ClientQueue, DaemonQueue, Notifier, QueueLayout, SqConsumer, SqProducer};
use blobring_shm::HeapMemory;
use common::{ClientEnd, DaemonEnd, Idle, Params};
use hdrhistogram::Histogram;

const SOCK_ENV: &str = "BLOBRING_RING_DEMO_SOCK";
const MODE_ENV: &str = "BLOBRING_RING_DEMO_MODE";
const COUNT_ENV: &str = "BLOBRING_RING_DEMO_COUNT";

fn main() {
    if let Ok(path) = std::env::var(SOCK_ENV) {
        std::process::exit(match peer(&path) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("ring-demo peer: {e}");
                1
            }
        });
    }
    if let Err(e) = run() {
        eprintln!("ring-demo: {e}");
        std::process::exit(1);
    }
}

/// The spawned echo daemon.
fn peer(path: &str) -> Result<(), String> {
    common::die_with_parent()?;
    let idle = if std::env::var(MODE_ENV).as_deref() == Ok("spin") {
        Idle::Spin
    } else {
        Idle::Sleep
    };
    let count: u64 = std::env::var(COUNT_ENV)
        .map_err(|e| e.to_string())?
        .parse()
        .map_err(|_| "count")?;
    let sock = std::os::unix::net::UnixStream::connect(path).map_err(|e| e.to_string())?;
    let end = DaemonEnd::create(Params {
        sq_entries: 256,
        cq_entries: 512,
        start: u32::MAX - 100,
        count,
    })?;
    end.send(&sock)?;
    common::run_echo_daemon(&end, idle, Instant::now() + Duration::from_secs(300)).map(drop)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("{cpu}, {cores} logical CPUs, Linux {kernel}, load average {load} at start")
}

/// A queue pair's region in process memory (256 SQ / 512 CQ entries, indices just below
/// `u32::MAX`).
fn region() -> (HeapMemory, QueueLayout) {
    let layout = QueueLayout::contiguous(0, 256, 512).unwrap();
    let mem = HeapMemory::new(layout.end());
    layout.initialize(&mem, u32::MAX - 7).unwrap();
    (mem, layout)
}

/// ns per entry of `step` (one batch: the `batch` SQEs it is given) run for `total` entries.
fn per_entry(batch: usize, total: usize, mut step: impl FnMut(&[Sqe])) -> f64 {
    let input = vec![Sqe::new_zeroed(); batch];
    let rounds = total / batch;
    let t = Instant::now();
    for _ in 0..rounds {
        step(&input);
    }
    t.elapsed().as_nanos() as f64 / (rounds * batch) as f64
}

fn per_entry_sq(batch: usize, total: usize) -> f64 {
    let (mem, layout) = region();
    let mut prod = SqProducer::attach(&mem, &layout).unwrap();
    let mut cons = SqConsumer::new(&mem, &layout, u32::MAX - 7).unwrap();
    let mut out = vec![Sqe::new_zeroed(); batch];
    per_entry(batch, total, |input| {
        let _ = prod.push_batch(std::hint::black_box(input)).unwrap();
        std::hint::black_box(cons.pop_batch(&mut out).unwrap());
    })
}

fn per_entry_pair(batch: usize, total: usize) -> f64 {
    let (mem, layout) = region();
    let mut client = ClientQueue::attach(&mem, &layout).unwrap();
    let mut daemon = DaemonQueue::new(&mem, &layout, u32::MAX - 7).unwrap();
    let mut sqes = vec![Sqe::new_zeroed(); batch];
    let mut cqes = vec![Cqe::new_zeroed(); batch];
    per_entry(batch, total, |input| {
        let _ = client.submit(std::hint::black_box(input)).unwrap();
        let n = daemon.take(&mut sqes).unwrap();
        for (s, c) in sqes[..n].iter().zip(cqes.iter_mut()) {
            c.user_data = s.user_data;
        }
        let _ = daemon.complete(&cqes[..n]).unwrap();
        let _ = std::hint::black_box(client.reap(&mut cqes).unwrap());
    })
}

fn spawn_daemon(idle: Idle, count: u64) -> Result<(common::ChildGuard, ClientEnd), String> {
    let mut cmd = std::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
    cmd.env(MODE_ENV, if idle == Idle::Spin { "spin" } else { "sleep" })
        .env(COUNT_ENV, count.to_string());
    let (guard, sock) = common::spawn_peer(cmd, SOCK_ENV)?;
    let end = ClientEnd::receive(&sock)?;
    Ok((guard, end))
}

/// One request at a time; returns the RTT histogram (ns) of the last `n` of `warmup + n`.
fn round_trips(idle: Idle, warmup: u64, n: u64) -> Result<Histogram<u64>, String> {
    let (mut guard, end) = spawn_daemon(idle, warmup + n)?;
    let mut q = end.queue();
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    let mut cqe = [Cqe::new_zeroed()];
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..warmup + n {
        let sqe = Sqe {
            user_data: i,
            ..Sqe::new_zeroed()
        };
        let t = Instant::now();
        let p = q
            .submit(std::slice::from_ref(&sqe))
            .map_err(|e| e.to_string())?;
        if p.wake_peer {
            end.doorbell.notify().map_err(|e| e.to_string())?;
        }
        loop {
            let p = q.reap(&mut cqe).map_err(|e| e.to_string())?;
            if p.count == 1 {
                break;
            }
            if Instant::now() > deadline {
                return Err("round trip deadline passed".into());
            }
            match idle {
                Idle::Spin => std::hint::spin_loop(),
                Idle::Sleep => drop(
                    q.wait(&end.futex, Some(common::SLEEP_TIMEOUT))
                        .map_err(|e| e.to_string())?,
                ),
            }
        }
        let ns = t.elapsed().as_nanos() as u64;
        if cqe[0].user_data != i {
            return Err(format!("completion {} for request {i}", cqe[0].user_data));
        }
        if i >= warmup {
            hist.saturating_record(ns);
        }
    }
    guard.wait_success(Duration::from_secs(30))?;
    Ok(hist)
}

fn stream(count: u64) -> Result<(Duration, common::Stats), String> {
    let (mut guard, end) = spawn_daemon(Idle::Sleep, count)?;
    let t = Instant::now();
    let st = common::run_stream_client(&end, Idle::Sleep, 64, t + Duration::from_secs(120))?;
    let el = t.elapsed();
    guard.wait_success(Duration::from_secs(30))?;
    Ok((el, st))
}

fn us(ns: u64) -> String {
    format!("{:.2} µs", ns as f64 / 1000.0)
}

fn run() -> Result<(), String> {
    println!("blobring-ring demo — {}", machine());
    println!("(queues: 256 SQ / 512 CQ entries; indices start just below u32::MAX)\n");
    println!("| measurement | batch | result |");
    println!("|---|---|---|");
    for b in [1, 8, 64] {
        let _ = per_entry_sq(b, 200_000);
        let sq = per_entry_sq(b, 4_000_000);
        println!("| 1 process, SQ push+pop | {b} | {sq:.1} ns/entry |");
    }
    for b in [1, 8, 64] {
        let _ = per_entry_pair(b, 200_000);
        let qp = per_entry_pair(b, 4_000_000);
        println!("| 1 process, submit+take+complete+reap | {b} | {qp:.1} ns/entry |");
    }
    for (idle, name, n) in [
        (Idle::Spin, "spinning", 200_000),
        (Idle::Sleep, "sleeping wakeups", 100_000),
    ] {
        let h = round_trips(idle, 10_000, n)?;
        println!(
            "| 2 processes, round trip, {name} ({n} samples) | 1 | p50 {} / p99 {} / p99.9 {} / max {} |",
            us(h.value_at_quantile(0.5)),
            us(h.value_at_quantile(0.99)),
            us(h.value_at_quantile(0.999)),
            us(h.max()),
        );
    }
    let count = 10_000_000;
    let (el, st) = stream(count)?;
    println!(
        "| 2 processes, stream 10 M entries, sleeping wakeups | 64 | {:.2} s, {:.1} M entries/s, {:.0} ns/entry (client slept {} times) |",
        el.as_secs_f64(),
        count as f64 / el.as_secs_f64() / 1e6,
        el.as_nanos() as f64 / count as f64,
        st.sleeps,
    );
    Ok(())
}
