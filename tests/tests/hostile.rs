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
//! this suite was written) can spoil any single window. The median is printed too.
//!
//! Attacks that are a tight loop in the attacker (garbage and crafted SQEs as fast as
//! completions return, doorbell floods, connect storms) also get a CPU-matched control: next to
//! each attacked window (before it in even rounds, after it in odd ones) a *burn* window, in
//! which `blobring-hostile-client burn` runs as many busy threads as the attack (one) doing pure
//! CPU work without a single call to the daemon. On a 2-core machine the victim's workload
//! (victim, host threads, daemon workers) already keeps both cores busy, so any extra busy
//! thread takes its scheduler share from the victim whatever the daemon does; what the design
//! promises is that the attack costs the victim no more than that share plus 20 %: the best
//! attacked/burn ratio must be at least [`MIN_RATIO`]. The attacked/clean ratios are printed
//! too, and on more than 2 cores (where a busy thread need not take the victim's CPU) also
//! asserted at [`MIN_RATIO`]. For each attacked and burn window the attacker's and the burner's
//! CPU time (`/proc/<pid>/stat`, utime + stime) and the daemon's are printed: the attackers
//! block in syscalls (waiting for completions or a handshake) and so take at most the burner's
//! CPU, usually less; the control is therefore the harsher of the two for the victim, which
//! makes the bound lenient by the difference (printed) rather than unfair to the daemon, and
//! the daemon's own extra CPU in attacked windows shows what the attack costs it.
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
/// Whether the attacked/clean ratio of a tight-loop attack is asserted too: only with more than
/// 2 cores (see the crate doc).
fn loop_vs_clean_asserted() -> bool {
    std::thread::available_parallelism().map_or(1, |n| n.get()) > 2
}

/// Whether an attack is a tight loop in the attacker, measured against a burn control too.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Paced or idle attacks: attacked vs clean only.
    Paced,
    /// Tight loops: attacked vs burn (and vs clean on > 2 cores).
    Loop,
}

/// CPU time (utime + stime) of process `pid` in milliseconds.
fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/stat: {e}"));
    // Fields after the command name (which may contain spaces) start with the state (field 3);
    // utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().expect("utime/stime"))
        .collect();
    (f[0] + f[1]) * 1000 / rustix::param::clock_ticks_per_second()
}

/// The daemon's doorbell wake-ups and worker sleeps, summed over its workers.
fn worker_wakes(doc: &serde_json::Value) -> (u64, u64) {
    let sum = |k: &str| {
        doc["workers"]
            .as_array()
            .map_or(0, |ws| ws.iter().filter_map(|w| w[k].as_u64()).sum())
    };
    (sum("doorbells"), sum("sleeps"))
}

fn best_median(ratios: &[f64]) -> (f64, f64) {
    let mut sorted = ratios.to_vec();
    sorted.sort_by(f64::total_cmp);
    (sorted[sorted.len() - 1], sorted[sorted.len() / 2])
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

    /// One request at a time for `window`: (requests, p50, p99, max) in microseconds.
    fn latency(&mut self, window: Duration) -> (u64, u64, u64, u64) {
        self.send(&format!("lat {}", window.as_millis()));
        let l = self.p.line(window + Duration::from_secs(150));
        let v: Vec<u64> = l
            .strip_prefix("lat ")
            .map(|r| {
                r.split_whitespace()
                    .skip(1)
                    .step_by(2)
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(v.len(), 4, "victim said {l:?}");
        (v[0], v[1], v[2], v[3])
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
        Self::start_nofile(daemon_args, None)
    }

    /// [`Bed::start`] with the daemon's `RLIMIT_NOFILE` (soft and hard) set to `nofile`.
    fn start_nofile(daemon_args: &[&str], nofile: Option<u64>) -> Bed {
        let dir = tempfile::Builder::new()
            .prefix("brhostile")
            .tempdir_in("/dev/shm")
            .expect("tempdir in /dev/shm");
        let daemon = match nofile {
            None => DAEMON.to_owned(),
            Some(n) => {
                use std::os::unix::fs::PermissionsExt;
                // `exec` keeps the pid: the stack's child is the daemon itself.
                let wrapper = dir.path().join("daemon-nofile.sh");
                std::fs::write(
                    &wrapper,
                    format!("#!/bin/sh\nulimit -n {n}\nexec {DAEMON} \"$@\"\n"),
                )
                .expect("write the wrapper");
                std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod the wrapper");
                wrapper.to_string_lossy().into_owned()
            }
        };
        let stack = HostStack::start(
            &daemon,
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
        self.stack.daemon.pid()
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
        assert!(self.stack.daemon.try_wait().is_none(), "the daemon died");
        let doc = self.stack.daemon.stats();
        assert_eq!(doc["workers"].as_array().map(Vec::len), Some(2), "{doc}");
        doc
    }

    /// Runs the victim for one [`WINDOW`] while `args` (an attack, or `burn`) runs; returns
    /// the victim's req/s, the attacker's summary, the attacker's CPU milliseconds during the
    /// window and the daemon's and the host's (as text).
    fn window_with(&mut self, args: &[&str]) -> (f64, BTreeMap<String, String>, u64, String) {
        let a = Attacker::start(self.socket(), args, WINDOW + Duration::from_millis(300));
        let pids = [a.0.child.0.id(), self.pid(), self.stack.host.proc.pid()];
        let cpu0 = pids.map(cpu_ms);
        let rate = self.victim.run(WINDOW);
        let cpu = pids.map(cpu_ms);
        let [own, daemon, host] = [0, 1, 2].map(|i| cpu[i] - cpu0[i]);
        (
            rate,
            a.finish(Duration::from_secs(30)),
            own,
            format!("daemon {daemon} host {host}"),
        )
    }

    /// Alternates clean and attacked windows (and, for [`Kind::Loop`], burn windows, see the
    /// crate doc); asserts the victim's best throughput ratio, the daemon alive, the victim's
    /// arena intact and the daemon's resources back at their baseline. Returns the attacker's
    /// summaries.
    fn duel(&mut self, name: &str, attack: &[&str], kind: Kind) -> Vec<BTreeMap<String, String>> {
        let wakes0 = worker_wakes(&self.settle());
        let (fd0, rss0) = resources(self.pid());
        let mut summaries = Vec::new();
        let (mut vs_clean, mut vs_burn) = (Vec::new(), Vec::new());
        let (mut figures, mut cpu) = (Vec::new(), Vec::new());
        // clean, [burn,] attacked, clean, …, clean: each attacked window is compared with the
        // mean of the clean windows on either side, so a drift of the machine's speed (warm-up,
        // other load) cancels instead of counting for or against the daemon; the burn window
        // is next to its attacked window, before it in even rounds and after it in odd ones.
        let mut before = self.victim.run(WINDOW);
        let mut rss0 = rss0;
        for pair in 0..PAIRS {
            let control = |bed: &mut Bed| bed.window_with(&["burn", "--threads", "1"]);
            let burn_first = kind == Kind::Loop && pair % 2 == 0;
            let early = burn_first.then(|| control(self));
            let (hit, summary, hit_cpu, hit_dcpu) = self.window_with(attack);
            summaries.push(summary);
            self.assert_up();
            self.settle();
            let burn = match early {
                Some(b) => Some(b),
                None if kind == Kind::Loop => Some(control(self)),
                None => None,
            };
            if pair == 0 {
                // The first attacker warms the daemon's allocator (per-thread malloc arenas,
                // slab and map growth); what must not grow is the RSS from one attacker to the
                // next.
                rss0 = resources(self.pid()).1.max(rss0);
            }
            let after = self.victim.run(WINDOW);
            let clean = (before + after) / 2.0;
            vs_clean.push(hit / clean);
            match burn {
                Some((rate, s, burn_cpu, burn_dcpu)) => {
                    assert!(num(&s, "spins") > 0, "{s:?}");
                    vs_burn.push(hit / rate);
                    figures.push(format!("{clean:.0}/{rate:.0}/{hit:.0}"));
                    cpu.push(format!(
                        "{burn_cpu}/{hit_cpu} (burn: {burn_dcpu}; attacked: {hit_dcpu})"
                    ));
                }
                None => {
                    figures.push(format!("{clean:.0}->{hit:.0}"));
                    cpu.push(format!("{hit_cpu} ({hit_dcpu})"));
                }
            }
            before = after;
        }
        self.victim.check();
        let doc = self.assert_up();
        let (fd1, rss1) = resources(self.pid());
        let wakes1 = worker_wakes(&doc);
        let (best, median) = best_median(&vs_clean);
        let burn_part = if kind == Kind::Loop {
            let (b, m) = best_median(&vs_burn);
            format!(
                "victim req/s clean/burn/attacked {}; attacked/burn best {b:.2} median {m:.2}, \
                 attacked/clean best {best:.2} median {median:.2}; CPU ms per window \
                 burner/attacker {}",
                figures.join(", "),
                cpu.join(", ")
            )
        } else {
            format!(
                "victim req/s clean->attacked {} (ratios: best {best:.2}, median {median:.2}); \
                 CPU ms per window attacker {}",
                figures.join(", "),
                cpu.join(", ")
            )
        };
        eprintln!(
            "hostile {name}: {burn_part}; daemon fds {fd0}->{fd1}, RSS {rss0}->{rss1} KiB, \
             worker doorbells +{}, sleeps +{} over all windows; attacker {:?}",
            wakes1.0 - wakes0.0,
            wakes1.1 - wakes0.1,
            summaries.last().unwrap()
        );
        let errors = &doc["totals"]["errors"];
        for k in ["timed_out", "no_device", "bad_completions"] {
            assert_eq!(errors[k], 0, "daemon error counter {k}: {doc}");
        }
        if kind == Kind::Loop {
            let (b, _) = best_median(&vs_burn);
            assert!(
                b >= MIN_RATIO,
                "{name}: the victim's throughput under attack fell to {b:.2} of its throughput \
                 next to a CPU-matched burner even in its best attacked window (attacked/burn \
                 {vs_burn:?}; req/s clean/burn/attacked {figures:?}; CPU ms {cpu:?}); the \
                 bound is {MIN_RATIO}"
            );
        }
        if kind == Kind::Paced || loop_vs_clean_asserted() {
            assert!(
                best >= MIN_RATIO,
                "{name}: the victim's throughput fell to {best:.2} of its clean baseline even in \
                 its best attacked window (ratios {vs_clean:?}; req/s {figures:?}); the bound is \
                 {MIN_RATIO}"
            );
        }
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
    let sums = bed.duel("garbage-sqes", &["garbage-sqes"], Kind::Loop);
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
    let sums = bed.duel("corrupt-indices", &["corrupt-indices"], Kind::Paced);
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
    let sums = bed.duel("never-drain", &["never-drain"], Kind::Paced);
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
/// (measured against a burner, see the crate doc). The daemon's side is bounded: the eventfd
/// counter coalesces rings while a worker is awake, and a client whose doorbell keeps ringing
/// with nothing to take has its doorbell muted for a few milliseconds (the worker's doorbell
/// throttle; its queue is still served whenever the worker is awake). Before the throttle (2-core
/// VM, load 12–18) ~1.2 M rings per attacked second became ~195 k worker wake-ups and the
/// daemon's CPU rose from 170–230 to 380–600 ms per second, and attacked/burn was 0.50–0.84;
/// with it, ~1.4 M rings over the test became ~56 k wake-ups, the daemon's CPU stayed at
/// 110–130 ms per window, and attacked/burn was 0.96–1.22.
#[test]
fn an_eventfd_flood_costs_the_flooder_not_the_victim() {
    let _turn = serial();
    let mut bed = Bed::start(&[]);
    let sums = bed.duel("eventfd-flood", &["eventfd-flood"], Kind::Loop);
    for s in &sums {
        assert!(num(s, "rings") > 10_000, "the flood was real: {s:?}");
        assert_eq!(num(s, "alive"), 1, "ringing the doorbell is allowed: {s:?}");
    }
    let doc = bed.settle();
    let mutes: u64 = doc["workers"].as_array().map_or(0, |ws| {
        ws.iter().filter_map(|w| w["doorbell_mutes"].as_u64()).sum()
    });
    assert!(mutes > 0, "the flooder's doorbell was never muted: {doc}");
}

/// Issue #18 class 1: the doorbells the daemon passes share their open file description with
/// the daemon. The attacker makes every doorbell blocking (`O_NONBLOCK` cleared) and steals every
/// ring with a blocking `read` of its own while ringing in a tight loop. A worker that drained
/// with a plain `read` blocked for good (every other client stalled, SIGTERM no longer ended the
/// daemon); the workers drain with per-operation non-blocking reads (`RWF_NOWAIT`), so the victim
/// keeps its share, and a SIGTERM during the attack ends the daemon cleanly within its drain
/// deadline (exit status 0: no worker was stuck).
#[test]
fn a_client_that_makes_its_doorbells_blocking_stalls_no_worker() {
    let _turn = serial();
    let mut bed = Bed::start(&["--drain-timeout", "2000"]);
    let sums = bed.duel("blocking-doorbell", &["blocking-doorbell"], Kind::Paced);
    for s in &sums {
        assert_eq!(num(s, "blocking"), 2, "both doorbells made blocking: {s:?}");
        assert!(num(s, "rings") > 1_000, "the attack was real: {s:?}");
        assert!(num(s, "stolen") > 0, "the attacker stole no ring: {s:?}");
    }
    // SIGTERM while an attacker holds both doorbells blocking and keeps stealing.
    let attacker = Attacker::start(
        bed.socket(),
        &["blocking-doorbell"],
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(300));
    bed.assert_up();
    let t0 = Instant::now();
    bed.stack.daemon.signal(rustix::process::Signal::TERM);
    let limit = Duration::from_millis(2000 + 500) + Duration::from_secs(3);
    let status = loop {
        if let Some(st) = bed.stack.daemon.try_wait() {
            break st;
        }
        assert!(
            t0.elapsed() < limit,
            "the daemon did not exit within {limit:?} of SIGTERM while a client held its \
             doorbells blocking"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!(
        "hostile blocking-doorbell: daemon exited {status} {:.0} ms after SIGTERM",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    assert!(
        status.success(),
        "the daemon's drain ended with {status} (a worker stuck?)"
    );
    drop(attacker);
}

#[test]
fn punching_holes_in_its_own_region_harms_only_the_puncher() {
    let _turn = serial();
    let mut bed = Bed::start(&[]);
    let sums = bed.duel("punch-hole", &["punch-hole"], Kind::Paced);
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
    let sums = bed.duel("cross-offsets", &["cross-offsets"], Kind::Loop);
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
    let sums = bed.duel("connect-cycles", &["connect-cycles"], Kind::Loop);
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

/// Issue #18 class 4: every client costs the daemon 2 + workers descriptors. With
/// `RLIMIT_NOFILE` at 420 (soft and hard, so it cannot be raised) the default `--max-clients
/// 256` does not fit: the daemon lowers it to what fits (and says so in its log and ctl stats)
/// instead of failing handshakes with "Too many open files" once the table is full. An
/// attacker trying to hold twice that many connections is refused with the `--max-clients`
/// message (never an fd error), the victim keeps its throughput, and once the attacker is gone
/// its slots are free again.
#[test]
fn a_small_descriptor_table_lowers_max_clients_instead_of_failing_handshakes() {
    let _turn = serial();
    let mut bed = Bed::start_nofile(&[], Some(420));
    let doc = bed.assert_up();
    assert_eq!(doc["daemon"]["fd_limit"], 420, "{doc}");
    let max = doc["daemon"]["max_clients"].as_u64().expect("max_clients");
    assert!(
        (8..256).contains(&max),
        "--max-clients should be lowered to what 420 descriptors allow: {doc}"
    );
    let count = (2 * max).to_string();
    let sums = bed.duel("fd-budget", &["over-limit", "--count", &count], Kind::Paced);
    for s in &sums {
        assert_eq!(num(s, "admitted"), max - 1, "{s:?}");
        assert_eq!(num(s, "admitted_later"), 0, "{s:?}");
        assert!(num(s, "refused") > max, "{s:?}");
        assert_eq!(num(s, "other_errors"), 0, "{s:?}");
        let m = &s["message"];
        assert!(
            m.starts_with("limit_exceeded:") && m.contains("--max-clients"),
            "the refusal should name the limit, not run out of descriptors: {m}"
        );
    }
    let doc = bed.assert_up();
    let open = doc["process"]["open_fds"].as_u64().unwrap();
    assert!(open < 420, "{doc}");
    let held: Vec<Connection> = (1..max)
        .map(|_| Connection::connect(bed.socket()).expect("a freed slot"))
        .collect();
    eprintln!(
        "hostile fd-budget: RLIMIT_NOFILE 420 -> max_clients {max}; {} clients held, daemon fds \
         {}",
        held.len() + 1,
        fd_count(bed.pid())
    );
    drop(held);
}

/// `--max-clients 4`: the victim holds one slot, the attacker tries to hold 40 connections
/// (ten times the limit) and retries every refused one each 50 ms.
#[test]
fn ten_times_more_clients_than_the_limit_are_refused_clearly() {
    let _turn = serial();
    let mut bed = Bed::start(&["--max-clients", "4", "--max-clients-per-uid", "4"]);
    let sums = bed.duel("over-limit", &["over-limit", "--count", "40"], Kind::Paced);
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

/// Writes `head` and then (unless `body` is 0) up to `body` bytes of chunked body in 1 MiB
/// chunks from another thread, while this thread waits (≤ 30 s) for the response; returns the
/// status, the response head and body, and how many body bytes the writer got into the socket
/// before the response came (the writer stops when the socket is shut down).
fn stream_request(addr: &str, head: &str, body: u64) -> (u16, String, String, u64) {
    use std::io::Read;
    use std::sync::atomic::{AtomicU64, Ordering};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the REST front end");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(head.as_bytes()).expect("write head");
    let sent = Arc::new(AtomicU64::new(0));
    let writer = (body > 0).then(|| {
        let (mut w, sent) = (s.try_clone().unwrap(), sent.clone());
        std::thread::spawn(move || {
            let chunk = vec![0x5au8; 1 << 20];
            let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
            frame.extend_from_slice(&chunk);
            frame.extend_from_slice(b"\r\n");
            while sent.load(Ordering::Relaxed) < body {
                if w.write_all(&frame).is_err() {
                    return;
                }
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            let _ = w.write_all(b"0\r\n\r\n");
        })
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = s.read(&mut buf).expect("read the response (30 s)");
        assert!(n > 0, "the host closed the connection without a response");
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let at_response = sent.load(std::sync::atomic::Ordering::Relaxed);
    let resp_head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    let len: usize = resp_head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    // A HEAD answer's Content-Length describes a body that is not sent.
    let len = if head.starts_with("HEAD ") { 0 } else { len };
    while got.len() < head_end + len {
        let n = s.read(&mut buf).expect("read the response body");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    if let Some(w) = writer {
        w.join().expect("writer");
    }
    let status = resp_head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = String::from_utf8_lossy(&got[head_end..]).into_owned();
    (status, resp_head, body, at_response)
}

/// A SharedKey-signed request head for the emulator account (`key` base64), path-style;
/// `path` may carry a query (`?comp=block&blockid=…`, values already URL-safe).
fn signed_head(addr: &str, method: &str, path: &str, key: &str, extra: &[(&str, &str)]) -> String {
    let (bare, query) = path.split_once('?').unwrap_or((path, ""));
    let query: Vec<(String, String)> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    use base64::Engine;
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let mut headers: Vec<(String, String)> = vec![
        ("x-ms-date".into(), date),
        ("x-ms-version".into(), "2025-11-05".into()),
    ];
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let sts = blobring::blob::string_to_sign(
        method,
        blobring::blob::EMULATOR_ACCOUNT,
        bare,
        &query,
        &headers,
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap();
    let sig = blobring::blob::sign(&key, &sts);
    let mut h = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in &headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str(&format!(
        "Authorization: SharedKey {}:{sig}\r\n\r\n",
        blobring::blob::EMULATOR_ACCOUNT
    ));
    h
}

/// Issue #18 class 2: the REST front end authenticates a request on its head and bounds every
/// body. Before, an unsigned chunked PUT of 800 MiB grew the host by up to 1.6 GiB before its
/// 401. Now: unsigned and wrongly signed chunked PUTs of 800 MiB are answered (401, 403) before
/// more than a socket buffer of their body is sent; a signed Put Block whose `Content-Length` is
/// above `--max-body` gets 413 `RequestBodyTooLarge` naming the limit before a byte of body; a
/// signed chunked Put Block is cut off with 413 once it passes the limit; a signed Put Blob of
/// five times the limit is streamed to the store and reads back at its full size; the host's
/// peak RSS grows by less than twice the limit over all of it; and a small signed PUT succeeds.
#[test]
fn bodies_are_authenticated_and_bounded_before_they_are_read() {
    let _turn = serial();
    const LIMIT: u64 = 64 << 20;
    const FLOOD: u64 = 800 << 20;
    let dir = tempfile::Builder::new()
        .prefix("brhostile")
        .tempdir_in("/dev/shm")
        .expect("tempdir in /dev/shm");
    let stack = HostStack::start(
        DAEMON,
        dir.path(),
        &[
            "--http",
            "127.0.0.1:0",
            "--max-body",
            &LIMIT.to_string(),
            "--container",
            "bodies",
        ],
        &[],
    );
    let url = stack.http_url.clone().expect("REST url");
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let host = stack.host.proc.pid();
    let hwm0 = proc_status_kib(host, "VmHWM");
    let key = blobring::blob::EMULATOR_KEY;
    let wrong_key = "d3Jvbmcga2V5IHdyb25nIGtleSB3cm9uZyBrZXk=";
    let chunked = [
        ("transfer-encoding", "chunked"),
        ("x-ms-blob-type", "BlockBlob"),
    ];
    let path = format!("/{}/bodies/big", blobring::blob::EMULATOR_ACCOUNT);

    let unsigned = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nx-ms-blob-type: BlockBlob\r\nTransfer-Encoding: \
         chunked\r\n\r\n"
    );
    let (st, _, _, sent) = stream_request(addr, &unsigned, FLOOD);
    assert_eq!(st, 401, "unsigned chunked PUT");
    assert!(sent < LIMIT, "{sent} bytes went out before the 401");
    let forged = signed_head(addr, "PUT", &path, wrong_key, &chunked);
    let (st, _, _, sent_forged) = stream_request(addr, &forged, FLOOD);
    assert_eq!(st, 403, "PUT signed with another key");
    assert!(
        sent_forged < LIMIT,
        "{sent_forged} bytes went out before the 403"
    );

    // Put Block is bounded by --max-body: refused on its Content-Length before any body, or
    // cut off once a chunked body passes the limit.
    let block = format!("{path}?comp=block&blockid=YmxrMDAx");
    let huge = signed_head(
        addr,
        "PUT",
        &block,
        key,
        &[("content-length", "1073741824")],
    );
    let (st, h, body, _) = stream_request(addr, &huge, 0);
    assert_eq!(st, 413, "{h}{body}");
    assert!(
        h.to_lowercase()
            .contains("x-ms-error-code: requestbodytoolarge"),
        "{h}"
    );
    assert!(
        body.contains(&LIMIT.to_string()) && body.contains("--max-body"),
        "{body}"
    );
    let signed = signed_head(
        addr,
        "PUT",
        &block,
        key,
        &[("transfer-encoding", "chunked")],
    );
    let (st, h, body, sent_signed) = stream_request(addr, &signed, FLOOD);
    assert_eq!(st, 413, "{h}{body}");
    assert!(sent_signed < FLOOD, "the whole chunked body was taken");
    // Put Blob streams to the store in bounded memory, whatever its size: 5 times the limit.
    const STREAMED: u64 = 5 * LIMIT;
    let put = signed_head(addr, "PUT", &path, key, &chunked);
    let (st, h, body, _) = stream_request(addr, &put, STREAMED);
    assert_eq!(st, 201, "streamed Put Blob: {h}{body}");
    let head = signed_head(addr, "HEAD", &path, key, &[]);
    let (st, h, _, _) = stream_request(addr, &head, 0);
    assert_eq!(st, 200, "{h}");
    assert!(
        h.to_lowercase()
            .contains(&format!("content-length: {STREAMED}")),
        "the streamed blob has the bytes sent: {h}"
    );
    let hwm1 = proc_status_kib(host, "VmHWM");
    eprintln!(
        "hostile bodies: 800 MiB chunked PUTs: unsigned 401 after {} KiB sent, forged 403 after \
         {} KiB, signed Put Block 413 after {} KiB (limit {} KiB); a {} MiB Put Blob streamed; \
         host peak RSS {hwm0} -> {hwm1} KiB",
        sent >> 10,
        sent_forged >> 10,
        sent_signed >> 10,
        LIMIT >> 10,
        STREAMED >> 20
    );
    assert!(
        hwm1 < hwm0 + 2 * (LIMIT >> 10),
        "host peak RSS grew from {hwm0} KiB to {hwm1} KiB"
    );

    // Within the limit, a signed PUT is served as before.
    let small = signed_head(
        addr,
        "PUT",
        &format!("/{}/bodies/small", blobring::blob::EMULATOR_ACCOUNT),
        key,
        &[("content-length", "5"), ("x-ms-blob-type", "BlockBlob")],
    );
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(small.as_bytes()).unwrap();
    s.write_all(b"hello").unwrap();
    let mut resp = [0u8; 64];
    let n = std::io::Read::read(&mut s, &mut resp).unwrap();
    let line = String::from_utf8_lossy(&resp[..n]);
    assert!(line.starts_with("HTTP/1.1 201"), "{line}");
}

/// Issue #18 class 3: fairness between uids. A flooder under another uid keeps 48 connections'
/// queues full of valid requests (GETs the host executes), ~24 k entries; before, they all went
/// to the host ahead of everyone else (the report: another uid's 4 KiB request went
/// from 0.6 ms to a median of 20 s; here, without the budget, 16 connections already made the
/// quiet client's p50 82 ms, p99 163 ms). Each worker now takes at most `--uid-inflight` requests of one uid (the rest
/// wait in that uid's own queues) and takes clients round-robin, so the quiet uid's requests
/// wait behind at most that many. Printed: the quiet client's latency (one request at a time)
/// unloaded and under the flood, and the flooder's own rate. Asserted: the quiet client is
/// served throughout (no request of the victim fails or times out), its median under the
/// flood stays under 100 ms and its p99 under a second, and the flooder was held back (uid
/// stalls counted) and still served.
#[test]
fn a_flooding_uid_leaves_other_uids_their_share() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    const FLOODER_UID: u32 = 65534;
    let _turn = serial();
    let mut bed = Bed::start(&[
        "--socket-mode",
        "666",
        "--allow-uid",
        "0",
        "--allow-uid",
        &FLOODER_UID.to_string(),
    ]);
    // The flooder runs under another uid: the directory must be traversable and the binary
    // executable by it.
    let dir = bed.socket().parent().expect("socket dir").to_owned();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("hostile-client");
    std::fs::copy(HOSTILE, &bin).expect("copy the attacker binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();

    let quiet = bed.victim.latency(Duration::from_millis(2000));
    let mut cmd = Command::new(&bin);
    cmd.arg(bed.socket())
        .args(["--duration-ms", "6000", "flood", "--connections", "48"])
        .uid(FLOODER_UID)
        .gid(FLOODER_UID)
        .stdin(Stdio::null());
    let mut flooder = Attacker(Proc::spawn(cmd, "blobring-hostile-client flood".into()));
    flooder.0.expect_line("attacking", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let flooded = bed.victim.latency(Duration::from_millis(3000));
    let s = flooder.finish(Duration::from_secs(120));
    let doc = bed.settle();
    let stalls: u64 = doc["workers"].as_array().map_or(0, |ws| {
        ws.iter().filter_map(|w| w["uid_stalls"].as_u64()).sum()
    });
    eprintln!(
        "hostile fairness: quiet uid one request at a time: unloaded n {} p50 {} us p99 {} us max \
         {} us; while uid {FLOODER_UID} floods ({} entries queued, {} completed in 6 s): n {} p50 \
         {} us p99 {} us max {} us (p99 {:.1}x unloaded); uid stalls {stalls}",
        quiet.0,
        quiet.1,
        quiet.2,
        quiet.3,
        num(&s, "queued"),
        num(&s, "completed"),
        flooded.0,
        flooded.1,
        flooded.2,
        flooded.3,
        flooded.2 as f64 / quiet.2.max(1) as f64
    );
    assert!(num(&s, "queued") >= 24_000, "the flood was real: {s:?}");
    assert!(
        num(&s, "completed") > 0,
        "the flooder was not served at all: {s:?}"
    );
    assert!(stalls > 0, "the flooder's uid was never held back: {doc}");
    assert!(
        flooded.0 >= 10,
        "the quiet client completed only {} requests",
        flooded.0
    );
    assert!(
        flooded.1 < 100_000,
        "the quiet uid's median under the flood is {} us (unloaded {} us)",
        flooded.1,
        quiet.1
    );
    assert!(
        flooded.2 < 1_000_000,
        "the quiet uid's p99 under the flood is {} us (unloaded {} us)",
        flooded.2,
        quiet.2
    );
    bed.victim.check();
    let errors = &bed.assert_up()["totals"]["errors"];
    assert_eq!(errors["timed_out"], 0, "{errors}");
}
