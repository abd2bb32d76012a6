//! The hostile-client suite (issue #7 item 2), with real processes: `blobring-host --no-auth`
//! on an `fs` store in `/dev/shm`, `blobringd` (as `blobring-test-daemon`), one well-behaved
//! victim process (`blobring-victim`: PUT/GET of content unique to it, every byte checked, its
//! whole arena compared with a private shadow copy) and one attacker process per attack
//! (`blobring-hostile-client`).
//!
//! For each attack: the victim's throughput in alternating clean and attacked windows, the
//! attacker's own view (`EINVAL` per bad entry, or a disconnect, as ARCHITECTURE.md §5 says),
//! the daemon alive and answering ctl throughout, the victim error-free and its arena intact,
//! and the daemon's fd count and RSS back at their baseline once the attacker is gone.
//!
//! The tests take turns (one lock): each measures throughput, and on a 2-core machine two of
//! them at once would measure each other.
//!
//! Throughput: [`PAIRS`] attacked [`WINDOW`]s, each between two clean ones, each compared with
//! the mean of its clean neighbours (so a drift of the machine's speed cancels). The assertion is
//! on the best of these ratios: a daemon hurt by an attack is hurt in every attacked window,
//! while the CI machine (2 cores shared with other jobs; load averages above 10 were seen while
//! this suite was written) can spoil any single window. The median is printed too. Attacks that
//! are a tight loop in the attacker have a lower bound on 2 cores (see [`loop_bound`]).
//!
//! Resources, read from `/proc/<daemon pid>`: fds exactly back to the baseline (every region,
//! eventfd and socket of a client is an fd of the daemon, so any leak of per-client state shows
//! as at least one fd); RSS after the last attacker within [`RSS_SLACK_KIB`] of the RSS after
//! the first, which warmed the daemon's allocator (a leaked default region is a pre-faulted
//! 16 MiB memfd mapped by the daemon and counted in its RSS, 4× the slack; allocator retention
//! of freed per-client state measured 1–2.5 MiB, once).
//!
//! Figures measured while this suite was written (2-core VM, other jobs running) are in the
//! `hostile …` lines each test prints.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blobring::{ConnectError, Connection};
use blobring_tests::{HostStack, Reaped, fd_count, proc_status_kib};

const DAEMON: &str = env!("CARGO_BIN_EXE_blobring-test-daemon");
const VICTIM: &str = env!("CARGO_BIN_EXE_blobring-victim");
const HOSTILE: &str = env!("CARGO_BIN_EXE_blobring-hostile-client");

/// Attacked windows per attack (each between two clean ones).
const PAIRS: usize = 3;
/// One measurement window.
const WINDOW: Duration = Duration::from_millis(1000);
/// The bound: other clients' throughput within 20 % of a clean baseline.
const MIN_RATIO: f64 = 0.8;
/// The bound for attacks that are a tight loop in the attacker (garbage and crafted SQEs as fast
/// as completions return, doorbell floods, connect storms) on a machine with 2 cores or fewer.
/// There, the victim's own workload (victim process, host threads, daemon workers) already
/// keeps both cores busy, and the attacker's loop is one more busy thread taking its scheduler
/// share of the same cores: the victim loses that share whatever the daemon does. What the
/// design promises there is that the attacker buys no more than that (the daemon's work per
/// bad entry, doorbell or handshake is bounded), asserted as 40 % of the clean throughput; the
/// best ratios measured on the 2-core CI VM under load were 0.59–1.18 (the flood lowest). With
/// more cores the 80 % applies.
fn loop_bound() -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores > 2 { MIN_RATIO } else { 0.4 }
}

/// RSS may exceed its baseline by this much once the attacker is gone (see the crate doc).
const RSS_SLACK_KIB: u64 = 4 * 1024;

/// One test at a time: they all measure throughput.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child whose stdout lines arrive on a channel and whose stderr is collected, so that a
/// failure can say what the child said.
struct Proc {
    child: Reaped,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    what: String,
}

impl Proc {
    fn spawn(mut cmd: Command, what: String) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        let (tx, lines) = std::sync::mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (err, sink) = (child.stderr.take().expect("stderr"), stderr.clone());
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines() {
                let Ok(l) = l else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        Proc {
            child: Reaped(child),
            lines,
            stderr,
            what,
        }
    }

    /// The next stdout line (≤ `limit`); panics with the child's stderr on exit or timeout.
    fn line(&mut self, limit: Duration) -> String {
        match self.lines.recv_timeout(limit) {
            Ok(l) => l,
            Err(e) => {
                let status = if e == RecvTimeoutError::Timeout {
                    format!("no output within {limit:?}")
                } else {
                    // Give the stderr reader a moment to collect the last words.
                    let st = self.child.0.wait();
                    std::thread::sleep(Duration::from_millis(50));
                    format!("exited ({st:?})")
                };
                panic!(
                    "{} {status}; stderr:\n{}",
                    self.what,
                    self.stderr.lock().unwrap()
                )
            }
        }
    }

    fn expect_line(&mut self, want: &str, limit: Duration) {
        let l = self.line(limit);
        assert_eq!(l, want, "{} said {l:?}", self.what);
    }
}

/// The well-behaved client.
struct Victim {
    p: Proc,
    stdin: ChildStdin,
}

impl Victim {
    fn start(socket: &Path) -> Victim {
        let mut cmd = Command::new(VICTIM);
        cmd.arg(socket).arg("victim").stdin(Stdio::piped());
        let mut p = Proc::spawn(cmd, "blobring-victim".into());
        let stdin = p.child.0.stdin.take().expect("stdin");
        p.expect_line("ready", Duration::from_secs(20));
        Victim { p, stdin }
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("victim stdin");
    }

    /// Runs the workload for `window`; returns requests per second. Every completion was
    /// checked byte for byte by the victim (it exits on the first mismatch or error).
    fn run(&mut self, window: Duration) -> f64 {
        self.send(&format!("run {}", window.as_millis()));
        let l = self.p.line(window + Duration::from_secs(30));
        let ops: u64 = l
            .strip_prefix("ops ")
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("victim said {l:?}"));
        ops as f64 / window.as_secs_f64()
    }

    /// The victim's whole arena still equals its shadow copy.
    fn check(&mut self) {
        self.send("check");
        let l = self.p.line(Duration::from_secs(10));
        assert!(l.starts_with("check ok "), "victim said {l:?}");
    }
}

/// One attacker process.
struct Attacker(Proc);

impl Attacker {
    /// Starts `attack` and waits until it reports that the attack is under way.
    fn start(socket: &Path, attack: &[&str], duration: Duration) -> Attacker {
        let mut cmd = Command::new(HOSTILE);
        cmd.arg(socket)
            .arg("--duration-ms")
            .arg(duration.as_millis().to_string())
            .args(attack)
            .stdin(Stdio::null());
        let mut p = Proc::spawn(cmd, format!("blobring-hostile-client {}", attack.join(" ")));
        p.expect_line("attacking", Duration::from_secs(30));
        Attacker(p)
    }

    /// Waits for the summary line and a successful exit; returns the summary.
    fn finish(mut self, limit: Duration) -> BTreeMap<String, String> {
        let l = self.0.line(limit);
        let Some(rest) = l.strip_prefix("done") else {
            panic!("{} said {l:?}", self.0.what);
        };
        let st = self.0.child.0.wait().expect("wait attacker");
        assert!(st.success(), "{} exited {st}", self.0.what);
        let mut s: BTreeMap<String, String> = rest
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        let err = self.0.stderr.lock().unwrap();
        if !err.is_empty() {
            let tail = err.len().saturating_sub(2000);
            s.insert(
                "stderr".into(),
                err[err.floor_char_boundary(tail)..].to_owned(),
            );
        }
        s
    }
}

fn num(s: &BTreeMap<String, String>, k: &str) -> u64 {
    s.get(k)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("attacker summary has no number {k}: {s:?}"))
}

/// Daemon fd count and RSS (KiB), each the minimum of a few samples (a ctl connection being
/// torn down, or a page being freed, must not count).
fn resources(pid: u32) -> (usize, u64) {
    let mut best = (usize::MAX, u64::MAX);
    for _ in 0..5 {
        best.0 = best.0.min(fd_count(pid));
        best.1 = best.1.min(proc_status_kib(pid, "VmRSS"));
        std::thread::sleep(Duration::from_millis(20));
    }
    best
}

/// A stack with one victim attached.
struct Bed {
    victim: Victim,
    stack: HostStack,
    _dir: tempfile::TempDir,
}

impl Bed {
    fn start(daemon_args: &[&str]) -> Bed {
        let dir = tempfile::Builder::new()
            .prefix("brhostile")
            .tempdir_in("/dev/shm")
            .expect("tempdir in /dev/shm");
        let stack = HostStack::start(
            DAEMON,
            dir.path(),
            &["--no-auth", "--container", "victim"],
            daemon_args,
        );
        let mut victim = Victim::start(&stack.daemon.socket);
        // Warm-up: host threads, allocator arenas, page cache of the store.
        victim.run(Duration::from_millis(300));
        Bed {
            victim,
            stack,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.stack.daemon.child.id()
    }

    fn socket(&self) -> &Path {
        &self.stack.daemon.socket
    }

    /// Waits until the victim is the daemon's only client again (the attacker's regions
    /// drained, unregistered and unmapped); returns the stats document.
    fn settle(&self) -> serde_json::Value {
        self.stack.daemon.wait_stats(
            Duration::from_secs(20),
            "the attacker's connections released",
            |d| d["daemon"]["clients"] == 1 && d["clients"].as_array().map(Vec::len) == Some(1),
        )
    }

    /// The daemon process is alive and answers ctl.
    fn assert_up(&mut self) -> serde_json::Value {
        assert!(
            self.stack
                .daemon
                .child
                .try_wait()
                .expect("try_wait")
                .is_none(),
            "the daemon died"
        );
        let doc = self.stack.daemon.stats();
        assert_eq!(doc["workers"].as_array().map(Vec::len), Some(2), "{doc}");
        doc
    }

    /// Alternates clean and attacked windows; asserts the victim's best throughput ratio,
    /// the daemon alive, the victim's arena intact and the daemon's resources back at their
    /// baseline. Returns the attacker's summaries.
    fn duel(
        &mut self,
        name: &str,
        attack: &[&str],
        min_ratio: f64,
    ) -> Vec<BTreeMap<String, String>> {
        self.settle();
        let (fd0, rss0) = resources(self.pid());
        let mut summaries = Vec::new();
        let mut ratios = Vec::new();
        let mut figures = Vec::new();
        // clean, attacked, clean, …, clean: each attacked window is compared with the mean of
        // the clean windows on either side, so a drift of the machine's speed (warm-up,
        // other load) cancels instead of counting for or against the daemon.
        let mut before = self.victim.run(WINDOW);
        let mut rss0 = rss0;
        for pair in 0..PAIRS {
            let a = Attacker::start(self.socket(), attack, WINDOW + Duration::from_millis(300));
            let hit = self.victim.run(WINDOW);
            summaries.push(a.finish(Duration::from_secs(30)));
            self.assert_up();
            self.settle();
            if pair == 0 {
                // The first attacker warms the daemon's allocator (per-thread malloc arenas,
                // slab and map growth); what must not grow is the RSS from one attacker to the
                // next.
                rss0 = resources(self.pid()).1.max(rss0);
            }
            let after = self.victim.run(WINDOW);
            let clean = (before + after) / 2.0;
            ratios.push(hit / clean);
            figures.push(format!("{clean:.0}->{hit:.0}"));
            before = after;
        }
        self.victim.check();
        let doc = self.assert_up();
        let (fd1, rss1) = resources(self.pid());
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let best = sorted[sorted.len() - 1];
        eprintln!(
            "hostile {name}: victim req/s clean->attacked {} (ratios: best {best:.2}, median {median:.2}); daemon \
             fds {fd0}->{fd1}, RSS {rss0}->{rss1} KiB; attacker {:?}",
            figures.join(", "),
            summaries.last().unwrap()
        );
        let errors = &doc["totals"]["errors"];
        for k in ["timed_out", "no_device", "bad_completions"] {
            assert_eq!(errors[k], 0, "daemon error counter {k}: {doc}");
        }
        assert!(
            best >= min_ratio,
            "{name}: the victim's throughput fell to {best:.2} of its clean baseline even in its \
             best attacked window (ratios {ratios:?}; req/s {figures:?}); the bound is {min_ratio}"
        );
        assert_eq!(
            fd1, fd0,
            "{name}: daemon fds {fd0} before the attacks, {fd1} after the attacker left"
        );
        assert!(
            rss1 <= rss0 + RSS_SLACK_KIB,
            "{name}: daemon RSS {rss0} KiB after the first attacker left, {rss1} KiB after the last"
        );
        summaries
    }
}

#[test]
fn garbage_sqes_each_get_einval_and_the_victim_never_notices() {
    let _turn = serial();
    let mut bed = Bed::start(&[]);
    let sums = bed.duel("garbage-sqes", &["garbage-sqes"], loop_bound());
    let mut einval = 0;
    for s in &sums {
        assert!(num(s, "sent") > 100, "{s:?}");
        assert_eq!(
            num(s, "broken_not_einval"),
            0,
            "a broken SQE was accepted: {s:?}"
        );
        assert_eq!(
            num(s, "random_not_einval"),
            0,
            "a random SQE was accepted: {s:?}"
        );
        assert_eq!(num(s, "other"), 0, "{s:?}");
        assert!(
            num(s, "host_answered") > 0,
            "no garbage head reached the host: {s:?}"
        );
        assert_eq!(
            num(s, "alive"),
            1,
            "garbage SQEs must not cost the connection: {s:?}"
        );
        einval += num(s, "einval");
    }
    let doc = bed.assert_up();
    assert!(
        doc["totals"]["errors"]["invalid"].as_u64().unwrap() >= einval,
        "daemon counted fewer invalid entries than the attacker saw: {doc}"
    );
    assert_eq!(doc["totals"]["errors"]["corrupt_clients"], 0, "{doc}");
}

#[test]
fn corrupt_indices_disconnect_only_the_corrupter() {
    let _turn = serial();
    let mut bed = Bed::start(&[]);
    let sums = bed.duel("corrupt-indices", &["corrupt-indices"], MIN_RATIO);
    let mut disconnected = 0;
    for s in &sums {
        assert!(num(s, "cycles") >= 5, "{s:?}");
        assert_eq!(
            num(s, "kept"),
            0,
            "a client with corrupt indices was not disconnected within 2 s: {s:?}"
        );
        disconnected += num(s, "disconnected");
    }
    let doc = bed.assert_up();
    assert_eq!(
        doc["totals"]["errors"]["corrupt_clients"].as_u64(),
        Some(disconnected),
        "every disconnect counted as a corrupt client: {doc}"
    );
}

#[test]
fn a_client_that_never_drains_stalls_only_itself() {
    let _turn = serial();
    let mut bed = Bed::start(&[]);
    let sums = bed.duel("never-drain", &["never-drain"], MIN_RATIO);
    for s in &sums {
        assert_eq!(num(s, "connections"), 4, "{s:?}");
        // Credits: at most a CQ's worth taken, plus a full SQ waiting.
        let bound = num(s, "cq_entries") + num(s, "sq_entries");
        let got = num(s, "submitted");
        assert!(
            got >= num(s, "cq_entries") && got <= bound,
            "submitted {got}, credits allow {bound}: {s:?}"
        );
    }
}

/// The flood is a tight `write(eventfd)` loop, so the attacker takes its own scheduler share
/// ([`loop_bound`]). The daemon's side is bounded by design: the eventfd counter coalesces the
/// rings, and each wake-up costs one multishot-poll completion and one look at an empty SQ
/// (measured: 1.29 M rings in 2 s became ~120 k worker wake-ups and 0.5 s of daemon CPU).
#[test]
fn an_eventfd_flood_costs_the_flooder_not_the_victim() {
    let _turn = serial();
    let mut bed = Bed::start(&[]);
    let sums = bed.duel("eventfd-flood", &["eventfd-flood"], loop_bound());
    for s in &sums {
        assert!(num(s, "rings") > 10_000, "the flood was real: {s:?}");
        assert_eq!(num(s, "alive"), 1, "ringing the doorbell is allowed: {s:?}");
    }
}

#[test]
fn punching_holes_in_its_own_region_harms_only_the_puncher() {
    let _turn = serial();
    let mut bed = Bed::start(&[]);
    let sums = bed.duel("punch-hole", &["punch-hole"], MIN_RATIO);
    for s in &sums {
        assert!(num(s, "punches") >= 3, "{s:?}");
        assert_eq!(
            num(s, "shrink_allowed"),
            0,
            "the region's seals let it shrink: {s:?}"
        );
        assert_eq!(
            num(s, "grow_allowed"),
            0,
            "the region's seals let it grow: {s:?}"
        );
        assert_eq!(num(s, "punches"), num(s, "shrink_refused"), "{s:?}");
    }
}

#[test]
fn crafted_offsets_never_reach_outside_the_attackers_arena() {
    let _turn = serial();
    let mut bed = Bed::start(&[]);
    let sums = bed.duel("cross-offsets", &["cross-offsets"], loop_bound());
    for s in &sums {
        assert!(num(s, "sent") > 100, "{s:?}");
        assert_eq!(
            num(s, "escaped"),
            0,
            "an SQE naming memory outside its arena was not refused: {s:?}"
        );
        assert_eq!(num(s, "einval"), num(s, "sent"), "{s:?}");
        assert_eq!(num(s, "alive"), 1, "{s:?}");
    }
    let refused: u64 = sums.iter().map(|s| num(s, "einval")).sum();
    let doc = bed.assert_up();
    assert!(
        doc["totals"]["errors"]["invalid"].as_u64().unwrap() >= refused,
        "the daemon counted fewer invalid entries than the attacker saw refused: {doc}"
    );
    assert_eq!(
        doc["clients"][0]["errors"]["invalid"], 0,
        "the victim's entries: {doc}"
    );
}

/// Connect storms at full speed with the daemon's default (and largest) arena, for throughput;
/// then 1,000 connect/disconnect cycles (one in ten hanging up mid-hello, one in ten leaving
/// NOPs in flight) while the victim works: the daemon's fds come back exactly and its RSS within
/// [`RSS_SLACK_KIB`]. The 1,000 cycles ask for a 256 KiB arena: a leak shows the same (an fd
/// per region, eventfd or socket; 1,000 leaked regions would be 250 MiB of RSS), while a 16 MiB
/// region costs the daemon ~10 ms of CPU per handshake (`fallocate` zeroing it and
/// `MAP_POPULATE` mapping it), which would make 1,000 cycles take about a minute on 2 cores.
/// (Moved here from `daemon_stack.rs`, now with a victim and abrupt hang-ups.)
#[test]
fn a_thousand_connect_disconnect_cycles_leave_no_trace() {
    let _turn = serial();
    let mut bed = Bed::start(&[]);
    let sums = bed.duel("connect-cycles", &["connect-cycles"], loop_bound());
    for s in &sums {
        assert!(num(s, "cycles") > 10, "{s:?}");
        assert_eq!(num(s, "failed"), 0, "{s:?}");
    }
    let (fd0, rss0) = resources(bed.pid());
    let t0 = Instant::now();
    let mut a = Attacker::start(
        bed.socket(),
        &["connect-cycles", "--count", "1000", "--arena", "262144"],
        WINDOW,
    );
    let mut windows = Vec::new();
    while a.0.child.0.try_wait().ok().flatten().is_none() && t0.elapsed() < Duration::from_secs(90)
    {
        windows.push(bed.victim.run(Duration::from_millis(500)).round());
    }
    let s = a.finish(Duration::from_secs(90));
    let took = t0.elapsed();
    assert_eq!((num(&s, "cycles"), num(&s, "failed")), (1000, 0), "{s:?}");
    bed.assert_up();
    bed.settle();
    bed.victim.check();
    let (fd1, rss1) = resources(bed.pid());
    eprintln!(
        "hostile connect-cycles x1000 in {:.1} s, victim req/s meanwhile {windows:?}; daemon fds \
         {fd0}->{fd1}, RSS {rss0}->{rss1} KiB",
        took.as_secs_f64()
    );
    assert_eq!(fd1, fd0, "daemon fds after 1,000 connect/disconnect cycles");
    assert!(
        rss1 <= rss0 + RSS_SLACK_KIB,
        "daemon RSS grew from {rss0} KiB to {rss1} KiB over 1,000 cycles"
    );
}

/// `--max-clients 4`: the victim holds one slot, the attacker tries to hold 40 connections
/// (ten times the limit) and retries every refused one each 50 ms.
#[test]
fn ten_times_more_clients_than_the_limit_are_refused_clearly() {
    let _turn = serial();
    let mut bed = Bed::start(&["--max-clients", "4", "--max-clients-per-uid", "4"]);
    let sums = bed.duel("over-limit", &["over-limit", "--count", "40"], MIN_RATIO);
    for s in &sums {
        assert_eq!(num(s, "admitted"), 3, "{s:?}");
        assert_eq!(num(s, "admitted_later"), 0, "{s:?}");
        assert!(num(s, "refused") >= 37, "{s:?}");
        assert_eq!(num(s, "other_errors"), 0, "{s:?}");
        let m = &s["message"];
        assert!(
            m.starts_with("limit_exceeded:") && m.contains("--max-clients"),
            "the refusal should say which limit: {m}"
        );
    }
    let doc = bed.assert_up();
    assert!(
        doc["daemon"]["refused"].as_u64().unwrap() >= 3 * 37,
        "{doc}"
    );
    // Once the attacker is gone, its slots are free again.
    let held: Vec<Connection> = (0..3)
        .map(|_| Connection::connect(bed.socket()).expect("a freed slot"))
        .collect();
    let err = Connection::connect(bed.socket()).unwrap_err();
    assert!(
        matches!(
            &err,
            ConnectError::Refused {
                kind: "limit exceeded",
                ..
            }
        ),
        "{err}"
    );
    drop(held);
}
