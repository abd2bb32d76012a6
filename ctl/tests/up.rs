#![forbid(unsafe_code)]
//! `blobring up` end to end: the real `blobring-host` and `blobringd` (found next to the
//! `blobring` binary under test, i.e. in the same cargo target directory: build them with
//! `cargo build --release -p blobring-host -p blobring-daemon`), stats through the printed
//! socket, and a clean stop on SIGINT with no process left behind.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Kills `blobring up` and every child it had (by pid) on drop, also when the test fails.
struct Up {
    child: Child,
    children: Vec<i32>,
}

impl Drop for Up {
    fn drop(&mut self) {
        for &p in &self.children {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pids whose parent is `pid` (from /proc/<pid>/task/*/children).
fn children_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

#[test]
fn up_serves_stats_and_stops_both_on_sigint() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let store = tmp.path().join("data");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_blobring"));
    let mut up = Up {
        child: Command::new(&bin)
            .arg("up")
            .arg("--dir")
            .arg(&run)
            .arg("--store")
            .arg(&store)
            .args(["--workers", "2", "--http", "127.0.0.1:0"])
            .current_dir(tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        children: Vec::new(),
    };
    let (tx, rx) = mpsc::channel();
    let stdout = up.child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let (etx, erx) = mpsc::channel();
    let stderr = up.child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        let _ = etx.send(s);
    });

    // Wait for the printed socket (and the REST endpoint line).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut socket = None;
    let mut rest = false;
    let mut printed = Vec::new();
    while socket.is_none() || !rest {
        if let Some(s) = up.child.try_wait().unwrap() {
            let err = erx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
            panic!("blobring up exited early ({s}): {err}");
        }
        assert!(
            Instant::now() < deadline,
            "blobring up not ready within 30 s; printed {printed:?}"
        );
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            if let Some(p) = l.trim().strip_prefix("export BLOBRING_SOCKET=") {
                socket = Some(PathBuf::from(p));
            }
            rest |= l.contains("REST endpoint: http://127.0.0.1:");
            printed.push(l);
        }
    }
    let socket = socket.unwrap();
    assert_eq!(socket, run.join("blobringd.sock"));
    up.children = children_of(up.child.id());
    let names: Vec<String> = up.children.iter().filter_map(|&p| comm(p)).collect();
    assert!(
        names.iter().any(|n| n == "blobring-host") && names.iter().any(|n| n == "blobringd"),
        "children of blobring up: {names:?}"
    );

    // `blobring stats --json` through the printed socket.
    let out = Command::new(&bin)
        .args(["stats", "--json"])
        .env("BLOBRING_SOCKET", &socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let workers = doc["workers"].as_array().expect("workers array");
    let channels = doc["channels"].as_array().expect("channels array");
    assert_eq!(workers.len(), 2, "{doc}");
    assert!(!channels.is_empty(), "{doc}");
    assert_eq!(doc["daemon"]["host_connected"], true, "{doc}");

    // SIGINT: both children stop, `up` exits 0.
    kill(Pid::from_raw(up.child.id() as i32), Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = up.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "blobring up did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = erx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
    assert!(status.success(), "exit {status}: {err}");
    for &p in &up.children {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}")).exists(),
            "child {p} ({:?}) still exists after blobring up stopped",
            comm(p)
        );
    }
    assert!(
        !socket.exists(),
        "blobringd removed its socket on a clean stop"
    );
}

#[test]
fn up_fails_with_the_dead_childs_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    // An invalid host flag makes blobring-host exit at once.
    let out = Command::new(env!("CARGO_BIN_EXE_blobring"))
        .arg("up")
        .arg("--dir")
        .arg(tmp.path().join("run"))
        .arg("--store")
        .arg(tmp.path().join("data"))
        .arg("--host-arg=--channels=0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("blobring-host exited"), "{err}");
}
