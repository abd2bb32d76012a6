#![forbid(unsafe_code)]
//! A hostile client process for the hostile-client suite (`tests/tests/hostile.rs`): one
//! subcommand per attack on `blobringd`, run for `--duration-ms` against `SOCKET`.
//!
//! Every attack prints `attacking` once its setup is done (so the test can start measuring),
//! attacks until the duration has passed (or, for `connect-cycles --count N`, N cycles are
//! done), and then prints one summary line `done key=value ...` and exits 0. The attacker only
//! reports what it saw; the test decides what the design requires.
//!
//! Attacks (summary keys in brackets):
//! - `garbage-sqes`: batches of SQEs of three kinds — 64 random bytes, a well-formed blob SQE
//!   with exactly one field broken (unknown opcode, flags, reserved, empty or out-of-arena
//!   buffers, `data_valid > data_len`, wrapping offsets), and a valid SQE whose request head is
//!   random bytes. [`sent`, `einval`, `broken_not_einval` (broken SQEs that did not get
//!   `-EINVAL`), `random_not_einval`, `host_answered` (garbage heads the host answered with
//!   `res == 0`), `other`, `alive` (still connected and a NOP still completes)]
//! - `corrupt-indices`: every 50 ms, connect (1 MiB arena), work a little, then corrupt one
//!   index (cycling through: `sq_tail` far ahead, one past the SQ size, behind `sq_head`;
//!   `cq_head` ahead of `cq_tail` followed by submissions until the daemon refreshes it; the
//!   whole control line scribbled), ring the doorbells and wait ≤ 2 s for the daemon to hang up. [`cycles`,
//!   `disconnected`, `kept`, `per_variant` (variant:tried/disconnected)]
//! - `never-drain`: four connections each submit NOPs and blob requests until their queues are
//!   full and never reap. [`connections`, `submitted` (max per queue), `cq_entries`,
//!   `sq_entries`]
//! - `eventfd-flood`: one connection rings every queue's eventfd in a tight loop. \[`rings`\]
//! - `blocking-doorbell`: the eventfds the daemon passed are the daemon's own open file
//!   descriptions. One connection clears `O_NONBLOCK` on every doorbell and runs a thread per
//!   doorbell that blocks in `read` on it, stealing every ring from the daemon, while the main
//!   thread submits NOPs and rings every ~100 µs. A daemon that drained a doorbell with a
//!   plain `read` would block in it for good (one stuck worker per doorbell). [`rings`,
//!   `stolen` (rings read by the attacker), `blocking` (doorbells left blocking: one per
//!   queue), `alive` (the attacker's own NOPs still complete; rings it steals from itself may
//!   leave them waiting, which stalls only the attacker)]
//! - `flood`: `--connections` connections (default 16, 1 MiB arenas) each keep every queue full of valid
//!   blob requests (GET of a missing blob, a full executor pass on the host) for the duration,
//!   resubmitting each completion at once: the most load one uid can put on the daemon within
//!   its limits. Started full before `attacking`. [`connections`, `submitted`, `completed`,
//!   `queued` (entries in the queues when the attack started)]
//! - `punch-hole`: `fallocate(PUNCH_HOLE)` on its own region (1 MiB arena; every 25 ms: the
//!   arena while blob requests are in flight, then the queues, then everything), ring the
//!   doorbells, and try to shrink and to grow the memfd; reconnect when the daemon hangs up. [`punches`, `shrink_refused`,
//!   `grow_refused`, `shrink_allowed`, `grow_allowed`, `disconnects`]
//! - `cross-offsets`: blob SQEs whose buffers point outside its arena — the header, the queues,
//!   just past the region, straddling its end, far away (where other clients' guest-physical
//!   ranges lie), offsets that wrap `u64` — with the other buffers valid. [`sent`, `einval`,
//!   `escaped` (any other result)]
//! - `connect-cycles`: connect (with the daemon's default arena, or `--arena BYTES`), one NOP
//!   round trip, disconnect; every 10th cycle instead hangs up in the middle of the hello, every
//!   10th+5 leaves NOPs in flight. [`cycles`, `failed`]
//! - `over-limit`: tries to hold `--count` connections at once, retrying refused ones every
//!   50 ms. [`admitted`, `refused`, `other_errors`, `message` (the daemon's refusal text, with
//!   spaces as `_`)]
//! - `burn`: not an attack but the suite's CPU-matched control: `--threads` threads (default 1,
//!   as many as any attack above runs) doing pure CPU work, no syscall to the daemon. The
//!   socket argument is ignored. [`threads`, `spins`]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use blobring::{ConnectError, Connection, Cqe, FromZeros, Opcode, Sqe, errno};
use blobring_abi::{FromBytes, qc};
use blobring_shm::SharedMemory;
use blobring_tests::XorShift;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "blobring-hostile-client")]
struct Args {
    /// The daemon's client socket.
    socket: std::path::PathBuf,
    /// How long to attack after printing `attacking`, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    duration_ms: u64,
    /// Seed of the attack's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(subcommand)]
    attack: Attack,
}

#[derive(Subcommand)]
enum Attack {
    GarbageSqes,
    CorruptIndices,
    NeverDrain,
    EventfdFlood,
    BlockingDoorbell,
    Flood {
        /// Connections to keep full.
        #[arg(long, default_value_t = 16)]
        connections: usize,
    },
    PunchHole,
    CrossOffsets,
    ConnectCycles {
        /// Run exactly this many cycles (ignoring --duration-ms).
        #[arg(long)]
        count: Option<u64>,
        /// Arena bytes to ask for (0: the daemon's default, which is also its maximum).
        #[arg(long, default_value_t = 0)]
        arena: u64,
    },
    OverLimit {
        /// Connections to try to hold at once.
        #[arg(long, default_value_t = 40)]
        count: usize,
    },
    /// The control: busy threads, no daemon.
    Burn {
        /// Busy threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

#[derive(Default)]
struct Summary(BTreeMap<&'static str, String>);

impl Summary {
    fn set(&mut self, k: &'static str, v: impl ToString) {
        self.0.insert(k, v.to_string());
    }
    fn add(&mut self, k: &'static str, n: u64) {
        let e = self.0.entry(k).or_insert_with(|| "0".into());
        *e = (e.parse::<u64>().unwrap_or(0) + n).to_string();
    }
    fn print(&self) {
        let line: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("done {}", line.join(" "));
    }
}

/// Arena of the connections of attacks about indices and holes (not about region size, which
/// `connect-cycles` and `never-drain` exercise at the daemon's default): 1 MiB.
const SMALL_ARENA: u64 = 1 << 20;

/// Pause between two rounds of an event-like attack (index corruption, hole punching), so
/// the attack measures the daemon's handling of the event, not connection churn, which
/// `connect-cycles` measures at full speed.
const ROUND: Duration = Duration::from_millis(50);

fn connect_small(a: &Args) -> anyhow::Result<Connection> {
    Ok(Connection::connect_with(
        &a.socket,
        blobring::ConnectOptions {
            arena_len: SMALL_ARENA,
            ..Default::default()
        },
    )?)
}

fn attacking() {
    println!("attacking");
    let _ = std::io::stdout().flush();
}

/// Reaps whatever is there on every queue into `out` (errors ignored: hostile clients break
/// their own rings).
fn reap_all(conn: &mut Connection, out: &mut Vec<Cqe>) {
    let mut buf = vec![Cqe::new_zeroed(); 64];
    for q in 0..conn.n_queues() {
        while let Ok(n) = conn.reap(q, &mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }
}

/// A NOP round trip on every queue (≤ 2 s): whether the daemon still serves this client.
fn still_served(conn: &mut Connection) -> bool {
    for q in 0..conn.n_queues() {
        if conn
            .submit(
                q,
                &[Sqe {
                    opcode: Opcode::Nop.code(),
                    user_data: u64::MAX,
                    ..Sqe::new_zeroed()
                }],
            )
            .ok()
            != Some(1)
        {
            return false;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut cq = vec![Cqe::new_zeroed(); 64];
        loop {
            match conn.reap(q, &mut cq) {
                Ok(n)
                    if cq[..n]
                        .iter()
                        .any(|c| c.user_data == u64::MAX && c.res == 0) =>
                {
                    break;
                }
                Ok(_) => {}
                Err(_) => return false,
            }
            if Instant::now() > deadline {
                return false;
            }
            let _ = conn.wait(q, Some(Duration::from_millis(10)));
        }
    }
    true
}

/// A valid blob SQE on preallocated buffers (request head, 1 KiB response, 4 KiB data).
struct Bufs {
    req: u64,
    resp: u64,
    data: u64,
}

impl Bufs {
    fn new(conn: &mut Connection, head: &[u8]) -> anyhow::Result<Self> {
        let req = conn.alloc(4096, 64)?.offset;
        conn.write_buf(req, head)?;
        let resp = conn.alloc(1024, 64)?.offset;
        let data = conn.alloc(4096, 4096)?.offset;
        Ok(Self { req, resp, data })
    }
    fn sqe(&self, user_data: u64, head_len: u32) -> Sqe {
        Sqe {
            opcode: Opcode::Blob.code(),
            user_data,
            timeout_ms: 2000,
            request_offset: self.req,
            request_len: head_len,
            response_offset: self.resp,
            response_len: 1024,
            data_offset: self.data,
            data_len: 4096,
            ..Sqe::new_zeroed()
        }
    }
}

const GET_MISSING: &[u8] =
    b"GET /devstoreaccount1/hostile/none HTTP/1.1\r\nHost: localhost\r\nx-ms-version: 2021-08-06\r\n\r\n";

/// Submits `sqes` on queue `q` (as many as fit, waiting for completions in between, ≤ 5 s) and
/// reaps until every one has completed; returns the completions.
fn round_trip(conn: &mut Connection, q: u32, sqes: &[Sqe]) -> anyhow::Result<Vec<Cqe>> {
    let mut out = Vec::new();
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![Cqe::new_zeroed(); 64];
    while out.len() < sqes.len() {
        if Instant::now() > deadline {
            bail!("{} of {} completions after 5 s", out.len(), sqes.len());
        }
        if sent < sqes.len() {
            sent += conn.submit(q, &sqes[sent..])?;
        }
        let n = conn.reap(q, &mut buf)?;
        out.extend_from_slice(&buf[..n]);
        if n == 0 {
            conn.wait(q, Some(Duration::from_millis(5)))?;
        }
    }
    Ok(out)
}

fn garbage_sqes(a: &Args, rng: &mut XorShift, s: &mut Summary) -> anyhow::Result<()> {
    let mut conn = Connection::connect(&a.socket)?;
    let g = *conn.geometry();
    let good = Bufs::new(&mut conn, GET_MISSING)?;
    let garbage = conn.alloc(4096, 64)?.offset;
    let end = Instant::now() + Duration::from_millis(a.duration_ms);
    attacking();
    let mut q = 0;
    while Instant::now() < end {
        let mut batch = Vec::new();
        for i in 0..16u64 {
            let kind = rng.below(3);
            let ud = kind << 56 | i;
            let sqe = match kind {
                0 => {
                    let mut raw = [0u8; 64];
                    for c in raw.chunks_mut(8) {
                        c.copy_from_slice(&rng.next_u64().to_le_bytes());
                    }
                    let mut sqe = Sqe::read_from_bytes(&raw).expect("64 bytes");
                    sqe.user_data = ud;
                    // Tell apart the (vanishingly rare) random entry that is well-formed.
                    if sqe.flags == 0 && sqe.reserved0 == 0 && sqe.reserved1 == 0 {
                        sqe.reserved1 = 1;
                    }
                    sqe
                }
                1 => {
                    let mut sqe = good.sqe(ud, GET_MISSING.len() as u32);
                    match rng.below(12) {
                        0 => sqe.opcode = 3 + rng.below(250) as u8,
                        1 => sqe.flags = 1 + rng.below(255) as u8,
                        2 => sqe.reserved0 = 1 + rng.below(65_535) as u16,
                        3 => sqe.reserved1 = rng.next_u64() | 1,
                        4 => sqe.request_len = 0,
                        5 => sqe.response_len = 0,
                        6 => sqe.data_valid = sqe.data_len + 1 + rng.below(1000) as u32,
                        7 => sqe.request_offset = rng.below(g.arena_offset),
                        8 => sqe.response_offset = g.region_len + rng.below(1 << 40),
                        9 => sqe.data_offset = u64::MAX - rng.below(8192),
                        10 => sqe.data_len = u32::MAX - rng.below(1 << 20) as u32,
                        _ => sqe.request_offset = g.region_len - 1,
                    }
                    sqe
                }
                _ => {
                    let mut head = vec![0u8; 1 + rng.below(4095) as usize];
                    for b in head.iter_mut() {
                        *b = rng.next_u64() as u8;
                    }
                    conn.write_buf(garbage, &head)?;
                    Sqe {
                        request_offset: garbage,
                        request_len: head.len() as u32,
                        ..good.sqe(ud, 1)
                    }
                }
            };
            batch.push(sqe);
        }
        // A garbage head makes the host answer; keep requests on the queue they went to.
        let got = round_trip(&mut conn, q, &batch)?;
        q = (q + 1) % conn.n_queues();
        s.add("sent", got.len() as u64);
        for c in got {
            let kind = c.user_data >> 56;
            let einval = c.res == -errno::EINVAL;
            if einval {
                s.add("einval", 1);
            }
            match kind {
                0 if !einval => s.add("random_not_einval", 1),
                1 if !einval => s.add("broken_not_einval", 1),
                2 if c.res == 0 => s.add("host_answered", 1),
                0 | 1 => {}
                _ => s.add("other", 1),
            }
        }
    }
    s.add("random_not_einval", 0);
    s.add("broken_not_einval", 0);
    s.add("other", 0);
    s.set("alive", u8::from(still_served(&mut conn)));
    Ok(())
}

fn corrupt_indices(a: &Args, rng: &mut XorShift, s: &mut Summary) -> anyhow::Result<()> {
    const VARIANTS: [&str; 5] = [
        "tail_far",
        "tail_past_size",
        "tail_behind",
        "cq_head_ahead",
        "scribble",
    ];
    let end = Instant::now() + Duration::from_millis(a.duration_ms);
    attacking();
    let mut per: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut cycle = 0usize;
    while Instant::now() < end {
        let variant = VARIANTS[cycle % VARIANTS.len()];
        cycle += 1;
        let round_end = Instant::now() + ROUND;
        let mut conn = connect_small(a)?;
        let g = *conn.geometry();
        for q in 0..g.n_queues {
            round_trip(
                &mut conn,
                q,
                &[Sqe {
                    opcode: Opcode::Nop.code(),
                    ..Sqe::new_zeroed()
                }; 4],
            )?;
        }
        let q = rng.below(u64::from(g.n_queues)) as u32;
        let ctl = g.queue_control(q);
        let map = conn.region().clone();
        let head = map.load_u32(ctl + qc::SQ_HEAD, Ordering::Acquire)?;
        match variant {
            "tail_far" => map.store_u32(
                ctl + qc::SQ_TAIL,
                head.wrapping_add(0x4000_0000),
                Ordering::Release,
            )?,
            "tail_past_size" => map.store_u32(
                ctl + qc::SQ_TAIL,
                head.wrapping_add(g.sq_entries + 1),
                Ordering::Release,
            )?,
            "tail_behind" => {
                map.store_u32(ctl + qc::SQ_TAIL, head.wrapping_sub(1), Ordering::Release)?
            }
            "cq_head_ahead" => {
                let tail = map.load_u32(ctl + qc::CQ_TAIL, Ordering::Acquire)?;
                map.store_u32(
                    ctl + qc::CQ_HEAD,
                    tail.wrapping_add(1000 + rng.below(1 << 20) as u32),
                    Ordering::Release,
                )?;
            }
            _ => {
                let mut junk = vec![0u8; 256];
                for b in junk.iter_mut() {
                    *b = rng.next_u64() as u8;
                }
                map.write(ctl, &junk)?;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut gone = false;
        while Instant::now() < deadline {
            for q in 0..g.n_queues {
                let _ = conn.ring_doorbell(q);
            }
            if variant == "cq_head_ahead" {
                // The daemon re-reads cq_head only when its cached view of the CQ looks full:
                // keep it busy until then, never reaping.
                let nops = [Sqe {
                    opcode: Opcode::Nop.code(),
                    ..Sqe::new_zeroed()
                }; 32];
                let _ = conn.submit(q, &nops);
            }
            if !conn.daemon_alive() {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(round_end.saturating_duration_since(Instant::now()));
        let e = per.entry(variant).or_default();
        e.0 += 1;
        if gone {
            e.1 += 1;
            s.add("disconnected", 1);
        } else {
            s.add("kept", 1);
        }
    }
    s.set("cycles", cycle);
    s.add("disconnected", 0);
    s.add("kept", 0);
    let per: Vec<String> = per
        .iter()
        .map(|(k, (t, d))| format!("{k}:{t}/{d}"))
        .collect();
    s.set("per_variant", per.join(","));
    Ok(())
}

fn never_drain(a: &Args, s: &mut Summary) -> anyhow::Result<()> {
    let mut conns = Vec::new();
    let mut max_submitted = 0;
    for _ in 0..4 {
        let mut conn = Connection::connect(&a.socket)?;
        let bufs = Bufs::new(&mut conn, GET_MISSING)?;
        for q in 0..conn.n_queues() {
            let mut total = 0;
            let deadline = Instant::now() + Duration::from_millis(500);
            // Keep pushing until the SQ stays full: the CQ is full and the daemon holds
            // no more credits for us.
            let mut idle = 0;
            while Instant::now() < deadline && idle < 20 {
                let batch: Vec<Sqe> = (0..16u64)
                    .map(|i| {
                        if i % 2 == 0 {
                            Sqe {
                                opcode: Opcode::Nop.code(),
                                user_data: i,
                                ..Sqe::new_zeroed()
                            }
                        } else {
                            bufs.sqe(i, GET_MISSING.len() as u32)
                        }
                    })
                    .collect();
                let n = conn.submit(q, &batch)?;
                total += n;
                idle = if n == 0 { idle + 1 } else { 0 };
                std::thread::sleep(Duration::from_millis(2));
            }
            max_submitted = max_submitted.max(total);
        }
        s.set("cq_entries", conn.geometry().cq_entries);
        s.set("sq_entries", conn.geometry().sq_entries);
        conns.push(conn);
    }
    s.set("connections", conns.len());
    s.set("submitted", max_submitted);
    attacking();
    std::thread::sleep(Duration::from_millis(a.duration_ms));
    Ok(())
}

fn eventfd_flood(a: &Args, s: &mut Summary) -> anyhow::Result<()> {
    let mut conn = Connection::connect(&a.socket)?;
    let end = Instant::now() + Duration::from_millis(a.duration_ms);
    attacking();
    let mut rings = 0u64;
    while Instant::now() < end {
        for _ in 0..256 {
            for q in 0..conn.n_queues() {
                conn.ring_doorbell(q)?;
                rings += 1;
            }
        }
    }
    s.set("rings", rings);
    s.set("alive", u8::from(still_served(&mut conn)));
    Ok(())
}

fn blocking_doorbell(a: &Args, s: &mut Summary) -> anyhow::Result<()> {
    use std::sync::atomic::AtomicU64;
    let mut conn = Connection::connect(&a.socket)?;
    let n = conn.n_queues();
    let mut blocking = 0;
    let mut thieves = Vec::new();
    for q in 0..n {
        let fd = conn.doorbell_fd(q)?.try_clone_to_owned()?;
        rustix::fs::fcntl_setfl(&fd, rustix::fs::OFlags::empty())?;
        if !rustix::fs::fcntl_getfl(&fd)?.contains(rustix::fs::OFlags::NONBLOCK) {
            blocking += 1;
        }
        thieves.push(fd);
    }
    let stolen = std::sync::Arc::new(AtomicU64::new(0));
    // The thieves block in `read` until a ring comes; they are left blocked when the attack
    // ends (the process exits under them).
    for fd in thieves {
        let stolen = stolen.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 8];
            while rustix::io::read(&fd, &mut b).is_ok() {
                stolen.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let end = Instant::now() + Duration::from_millis(a.duration_ms);
    attacking();
    let mut rings = 0u64;
    let mut out = Vec::new();
    while Instant::now() < end {
        for q in 0..n {
            let nops: Vec<Sqe> = (0..8)
                .map(|i| Sqe {
                    opcode: Opcode::Nop.code(),
                    user_data: i,
                    ..Sqe::new_zeroed()
                })
                .collect();
            conn.submit(q, &nops)?;
            conn.ring_doorbell(q)?;
            rings += 1;
        }
        reap_all(&mut conn, &mut out);
        out.clear();
        // Paced: the attack is the race between the daemon's drain and the thieves, which
        // needs rings, not a tight loop (a NOP flood is measured elsewhere).
        std::thread::sleep(Duration::from_micros(100));
    }
    s.set("rings", rings);
    s.set("stolen", stolen.load(Ordering::Relaxed));
    s.set("blocking", blocking);
    s.set("alive", u8::from(still_served(&mut conn)));
    Ok(())
}

fn flood(a: &Args, connections: usize, s: &mut Summary) -> anyhow::Result<()> {
    let mut conns = Vec::new();
    for _ in 0..connections {
        let mut conn = connect_small(a)?;
        let bufs = Bufs::new(&mut conn, GET_MISSING)?;
        let sqe = Sqe {
            timeout_ms: 60_000,
            ..bufs.sqe(1, GET_MISSING.len() as u32)
        };
        conns.push((conn, sqe));
    }
    let (mut submitted, mut completed) = (0u64, 0u64);
    let mut cq = vec![Cqe::new_zeroed(); 256];
    let fill = |conns: &mut Vec<(Connection, Sqe)>, submitted: &mut u64| -> anyhow::Result<()> {
        for (conn, sqe) in conns.iter_mut() {
            for q in 0..conn.n_queues() {
                let batch = vec![*sqe; 64];
                loop {
                    let n = conn.submit(q, &batch)?;
                    *submitted += n as u64;
                    if n < batch.len() {
                        break;
                    }
                }
            }
        }
        Ok(())
    };
    fill(&mut conns, &mut submitted)?;
    s.set("queued", submitted);
    let end = Instant::now() + Duration::from_millis(a.duration_ms);
    attacking();
    while Instant::now() < end {
        let mut got = 0;
        for (conn, _) in conns.iter_mut() {
            for q in 0..conn.n_queues() {
                let n = conn.reap(q, &mut cq)?;
                got += n;
            }
        }
        completed += got as u64;
        fill(&mut conns, &mut submitted)?;
        if got == 0 {
            let _ = conns[0].0.wait(0, Some(Duration::from_millis(1)));
        }
    }
    s.set("connections", conns.len());
    s.set("submitted", submitted);
    s.set("completed", completed);
    Ok(())
}

/// This process's memfd of `conn`'s region, reopened through `/proc/self/fd` (the connection
/// keeps its own fd private).
fn region_file(conn: &Connection) -> anyhow::Result<std::fs::File> {
    let suffix = format!("-{} (deleted)", conn.client_id());
    for e in std::fs::read_dir("/proc/self/fd")?.flatten() {
        let Ok(t) = std::fs::read_link(e.path()) else {
            continue;
        };
        let t = t.to_string_lossy();
        if t.starts_with("/memfd:blobring-client-") && t.ends_with(&suffix) {
            return Ok(std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(e.path())?);
        }
    }
    bail!("no memfd for client {}", conn.client_id())
}

fn punch_hole(a: &Args, rng: &mut XorShift, s: &mut Summary) -> anyhow::Result<()> {
    use rustix::fs::{FallocateFlags, fallocate};
    let end = Instant::now() + Duration::from_millis(a.duration_ms);
    let mut conn = connect_small(a)?;
    attacking();
    let mut round = 0u64;
    while Instant::now() < end {
        let round_end = Instant::now() + 3 * ROUND;
        let g = *conn.geometry();
        let fd = region_file(&conn)?;
        let bufs = Bufs::new(&mut conn, GET_MISSING)?;
        let mut gone = false;
        for step in 0..3 {
            let sqes: Vec<Sqe> = (0..8)
                .map(|i| bufs.sqe(i, GET_MISSING.len() as u32))
                .collect();
            for q in 0..g.n_queues {
                let _ = conn.submit(q, &sqes);
            }
            let (off, len) = match step {
                0 => (g.arena_offset, g.arena_len),
                1 => (g.queue_offset, g.arena_offset - g.queue_offset),
                _ => (0, g.region_len),
            };
            fallocate(
                fd.as_fd(),
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                off,
                len,
            )
            .context("punching a hole in the region")?;
            s.add("punches", 1);
            for q in 0..g.n_queues {
                let _ = conn.ring_doorbell(q);
            }
            let mut out = Vec::new();
            reap_all(&mut conn, &mut out);
            match fd.set_len(g.region_len / 2 + rng.below(4096)) {
                Ok(()) => s.add("shrink_allowed", 1),
                Err(_) => s.add("shrink_refused", 1),
            }
            match fallocate(fd.as_fd(), FallocateFlags::empty(), g.region_len, 1 << 20) {
                Ok(()) => s.add("grow_allowed", 1),
                Err(_) => s.add("grow_refused", 1),
            }
            std::thread::sleep(ROUND / 2);
            if !conn.daemon_alive() {
                gone = true;
                break;
            }
        }
        round += 1;
        std::thread::sleep(round_end.saturating_duration_since(Instant::now()));
        if gone || round.is_multiple_of(4) {
            if gone {
                s.add("disconnects", 1);
            }
            drop(fd);
            conn = connect_small(a)?;
        }
    }
    for k in ["shrink_allowed", "grow_allowed", "disconnects"] {
        s.add(k, 0);
    }
    Ok(())
}

fn cross_offsets(a: &Args, rng: &mut XorShift, s: &mut Summary) -> anyhow::Result<()> {
    let mut conn = Connection::connect(&a.socket)?;
    let g = *conn.geometry();
    let good = Bufs::new(&mut conn, GET_MISSING)?;
    let end = Instant::now() + Duration::from_millis(a.duration_ms);
    attacking();
    let mut q = 0;
    while Instant::now() < end {
        let batch: Vec<Sqe> = (0..32u64)
            .map(|i| {
                let mut sqe = good.sqe(i, GET_MISSING.len() as u32);
                let field = rng.below(3);
                let len = u64::from(match field {
                    0 => sqe.request_len,
                    1 => sqe.response_len,
                    _ => sqe.data_len,
                });
                let bad = match rng.below(9) {
                    // the header page
                    0 => rng.below(g.queue_offset),
                    // the queues
                    1 => g.queue_offset + rng.below(g.arena_offset - g.queue_offset),
                    // just past the end
                    2 => g.region_len + rng.below(4096),
                    // straddling the end
                    3 => g.region_len - len + 1 + rng.below(len - 1),
                    // where other clients' guest-physical ranges lie
                    4 => g.region_len + rng.below(1 << 36),
                    5 => (1 << 40) + rng.below(1 << 40),
                    // wrapping u64
                    6 => u64::MAX - rng.below(1 << 20),
                    // straddling the start of the arena
                    7 => g.arena_offset - 1 - rng.below(len - 1),
                    _ => rng.next_u64() | (1 << 63),
                };
                match field {
                    0 => sqe.request_offset = bad,
                    1 => sqe.response_offset = bad,
                    _ if rng.below(2) == 0 => sqe.data_offset = bad,
                    _ => {
                        // A data buffer starting inside the arena and running out of it.
                        sqe.data_offset = g.arena_offset + g.arena_len - 4096;
                        sqe.data_len = 4097 + rng.below(1 << 24) as u32;
                    }
                }
                sqe
            })
            .collect();
        let got = round_trip(&mut conn, q, &batch)?;
        q = (q + 1) % conn.n_queues();
        s.add("sent", got.len() as u64);
        for c in got {
            if c.res == -errno::EINVAL {
                s.add("einval", 1);
            } else {
                s.add("escaped", 1);
                eprintln!("escaped: {c:?}");
            }
        }
    }
    s.add("escaped", 0);
    s.set("alive", u8::from(still_served(&mut conn)));
    Ok(())
}

fn connect_cycles(a: &Args, count: Option<u64>, arena: u64, s: &mut Summary) -> anyhow::Result<()> {
    let opts = blobring::ConnectOptions {
        arena_len: arena,
        ..Default::default()
    };
    let end = Instant::now() + Duration::from_millis(a.duration_ms);
    attacking();
    let mut n = 0u64;
    while count.map_or(Instant::now() < end, |c| n < c) {
        n += 1;
        let r = (|| -> anyhow::Result<()> {
            match n % 10 {
                0 => {
                    // Hang up in the middle of the hello.
                    let mut raw = std::os::unix::net::UnixStream::connect(&a.socket)?;
                    raw.write_all(&blobring_abi::HELLO_REQUEST_MAGIC.to_le_bytes())?;
                }
                5 => {
                    // Leave requests in flight.
                    let mut conn = Connection::connect_with(&a.socket, opts)?;
                    conn.submit(
                        0,
                        &[Sqe {
                            opcode: Opcode::Nop.code(),
                            ..Sqe::new_zeroed()
                        }; 8],
                    )?;
                }
                _ => {
                    let mut conn = Connection::connect_with(&a.socket, opts)?;
                    let got = round_trip(
                        &mut conn,
                        0,
                        &[Sqe {
                            opcode: Opcode::Nop.code(),
                            ..Sqe::new_zeroed()
                        }],
                    )?;
                    if got[0].res != 0 {
                        bail!("NOP failed: {:?}", got[0]);
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = r {
            s.add("failed", 1);
            eprintln!("cycle {n}: {e:#}");
        }
    }
    s.set("cycles", n);
    s.add("failed", 0);
    Ok(())
}

fn over_limit(a: &Args, count: usize, s: &mut Summary) -> anyhow::Result<()> {
    let mut held: Vec<Connection> = Vec::new();
    let mut refused = 0u64;
    let mut other = 0u64;
    let mut message = String::new();
    // Every missing connection is attempted each round (a connection flood, not one probe).
    let mut try_fill = |held: &mut Vec<Connection>| {
        for _ in held.len()..count {
            match Connection::connect(&a.socket) {
                Ok(c) => held.push(c),
                Err(ConnectError::Refused {
                    kind, message: m, ..
                }) => {
                    refused += 1;
                    if message.is_empty() {
                        message = format!("{kind}: {m}");
                    }
                }
                Err(e) => {
                    other += 1;
                    eprintln!("{e}");
                }
            }
        }
    };
    try_fill(&mut held);
    let admitted_first = held.len();
    let end = Instant::now() + Duration::from_millis(a.duration_ms);
    attacking();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
        try_fill(&mut held);
    }
    s.set("admitted", admitted_first);
    s.set("admitted_later", held.len() - admitted_first);
    s.set("refused", refused);
    s.set("other_errors", other);
    s.set("message", message.replace(' ', "_"));
    Ok(())
}

/// `threads` threads of pure CPU work (a xorshift chain, no syscalls but the vDSO clock every
/// 4096 steps) until the duration has passed.
fn burn(a: &Args, threads: usize, s: &mut Summary) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_millis(a.duration_ms);
    attacking();
    let spins: u64 = std::thread::scope(|sc| {
        let burners: Vec<_> = (0..threads as u64)
            .map(|t| {
                sc.spawn(move || {
                    let mut rng = XorShift::new(a.seed + t);
                    let mut spins = 0u64;
                    while Instant::now() < end {
                        for _ in 0..4096 {
                            std::hint::black_box(rng.next_u64());
                        }
                        spins += 1;
                    }
                    spins
                })
            })
            .collect();
        burners.into_iter().map(|b| b.join().unwrap_or(0)).sum()
    });
    s.set("threads", threads);
    s.set("spins", spins);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut rng = XorShift::new(a.seed);
    let mut s = Summary::default();
    match a.attack {
        Attack::GarbageSqes => garbage_sqes(&a, &mut rng, &mut s)?,
        Attack::CorruptIndices => corrupt_indices(&a, &mut rng, &mut s)?,
        Attack::NeverDrain => never_drain(&a, &mut s)?,
        Attack::EventfdFlood => eventfd_flood(&a, &mut s)?,
        Attack::BlockingDoorbell => blocking_doorbell(&a, &mut s)?,
        Attack::Flood { connections } => flood(&a, connections, &mut s)?,
        Attack::PunchHole => punch_hole(&a, &mut rng, &mut s)?,
        Attack::CrossOffsets => cross_offsets(&a, &mut rng, &mut s)?,
        Attack::ConnectCycles { count, arena } => connect_cycles(&a, count, arena, &mut s)?,
        Attack::OverLimit { count } => over_limit(&a, count, &mut s)?,
        Attack::Burn { threads } => burn(&a, threads, &mut s)?,
    }
    s.print();
    Ok(())
}
