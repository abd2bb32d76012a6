//! Security of blobringd with real processes: the client socket's file modes and directory,
//! the uid/gid policy and per-uid limits seen by clients running under other uids and gids,
//! and the privileges the daemon keeps after startup (read from `/proc/<pid>/task/*/status`
//! and from the daemon's own report on the ctl socket).
//!
//! These tests run as root (as CI does): clients are spawned under other uids/gids with
//! `CommandExt::uid`/`gid`, and the daemon's privilege drop is only visible when it has
//! privileges to drop.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blobring::blob::{AccountConfig, BlobService, GetOptions, PutOptions};
use blobring::{Client, ConnectError, Connection, block_on};
use blobring_tests::{
    Daemon, HostStack, Reaped, TestHost, blob_sqe, daemon_refusal, launcher, reap_n, scratch,
};

const DAEMON: &str = env!("CARGO_BIN_EXE_blobring-test-daemon");
const SEC_CLIENT: &str = env!("CARGO_BIN_EXE_blobring-sec-client");

/// Unprivileged ids used by the tests (need not exist in /etc/passwd).
const NOBODY: u32 = 65534;
const OTHER_UID: u32 = 65533;
const SHARED_GID: u32 = 4321;

/// A scratch directory other uids can traverse (the sockets' own modes then decide), with a
/// copy of the client binary they can execute wherever the target directory lives.
fn open_scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = scratch();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("sec-client");
    std::fs::copy(SEC_CLIENT, &bin).expect("copy the client binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, bin)
}

/// Splits `flags` (one string, e.g. from `format!`) into arguments.
fn argv(flags: &str) -> Vec<&str> {
    flags.split_whitespace().collect()
}

/// A daemon in `dir` with `flags` on top of the fixture's.
fn daemon(dir: &Path, flags: &str) -> Daemon {
    Daemon::start(DAEMON, dir, &argv(flags))
}

fn client_cmd(bin: &Path, first: &Path, uid: u32, gid: u32, mode: &str) -> Command {
    let mut c = Command::new(bin);
    c.arg(first)
        .arg(mode)
        .uid(uid)
        .gid(gid)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Starts `blobring-sec-client SOCKET MODE` as `uid`:`gid` with `stdin`; returns it with its
/// first stdout line.
fn spawn_as(
    bin: &Path,
    socket: &Path,
    uid: u32,
    gid: u32,
    mode: &str,
    stdin: Stdio,
) -> (Reaped, String) {
    let mut c = Reaped(
        client_cmd(bin, socket, uid, gid, mode)
            .stdin(stdin)
            .spawn()
            .expect("spawn the client"),
    );
    let line = first_line(&mut c);
    (c, line)
}

/// Runs `blobring-sec-client SOCKET once` as `uid`:`gid`; returns its first stdout line
/// (`ok …`, `refused …` or `failed: …`), bounded by 20 s.
fn once_as(bin: &Path, socket: &Path, uid: u32, gid: u32) -> String {
    let (mut c, line) = spawn_as(bin, socket, uid, gid, "once", Stdio::null());
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.0.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "client did not exit: {line}");
        std::thread::sleep(Duration::from_millis(10));
    }
    line
}

/// Starts `blobring-sec-client SOCKET hold` as `uid`:`gid` and returns it with its first line;
/// it keeps its connection until dropped.
fn hold_as(bin: &Path, socket: &Path, uid: u32, gid: u32) -> (Reaped, String) {
    spawn_as(bin, socket, uid, gid, "hold", Stdio::piped())
}

fn first_line(c: &mut Reaped) -> String {
    let out = c.0.stdout.take().expect("stdout");
    let mut err = c.0.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(l) if !l.is_empty() => l.trim().to_owned(),
        _ => {
            let _ = c.0.kill();
            let mut e = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut e);
            panic!("the client printed nothing within 20 s; stderr: {e}");
        }
    }
}

fn assert_ok(line: &str, uid: u32, gid: u32) {
    assert!(
        line.starts_with("ok ") && line.ends_with(&format!(" {uid} {gid}")),
        "client {uid}:{gid} should have been admitted and served: {line}"
    );
}

/// `uid` is admitted and served as a member of `gid` (the socket's group), and cannot open
/// the socket (EACCES) with only its own gid.
fn assert_group_gate(bin: &Path, socket: &Path, uid: u32, gid: u32) {
    assert_ok(&once_as(bin, socket, uid, gid), uid, gid);
    let line = once_as(bin, socket, uid, uid);
    assert!(line.contains("Permission denied"), "{line}");
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// `(name, value)` lines of `/proc/<pid>/task/<tid>/status` for every thread of `pid`.
fn thread_status(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let path = e.unwrap().path().join("status");
        out.push((
            path.display().to_string(),
            std::fs::read_to_string(&path).expect("thread status"),
        ));
    }
    assert!(!out.is_empty());
    out
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("{name} missing in {status}"))
        .trim()
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap()
}

/// The test process's own capability sets (what an undropped daemon inherits).
fn own_caps() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    (hex(field(&s, "CapEff")), hex(field(&s, "CapBnd")))
}

#[test]
fn socket_file_and_directory_modes() {
    let dir = scratch();
    // Missing directories are created 755; the client socket gets --socket-mode (default
    // 660), the ctl socket 600.
    let sock = dir.path().join("run/blobring/d.sock");
    let ctl = dir.path().join("run/blobring/d.ctl");
    let _d = launcher(dir.path())
        .daemon_bin(DAEMON)
        .daemon_sockets(&sock, &ctl)
        .daemon_args(["--workers", "1", "--no-pin"])
        .timeout(Duration::from_secs(10))
        .start_daemon()
        .unwrap_or_else(|e| panic!("daemon did not start: {e}"));
    assert_eq!(mode(&sock), 0o660, "default --socket-mode");
    assert_eq!(mode(&ctl), 0o600, "ctl socket");
    assert_eq!(mode(&dir.path().join("run/blobring")), 0o755);
    assert_eq!(mode(&dir.path().join("run")), 0o755);
    let d = daemon(&dir.path().join("run"), "--socket-mode 604");
    assert_eq!(mode(&d.socket), 0o604, "--socket-mode honoured exactly");
    // A bad mode is refused before anything is created.
    let err = daemon_refusal(
        DAEMON,
        &dir.path().join("bad/d.sock"),
        &["--socket-mode", "1777"],
    );
    assert!(err.contains("1777 is not an octal file mode"), "{err}");
    assert!(!dir.path().join("bad").exists());
}

#[test]
fn socket_permissions_keep_out_uids_outside_the_sockets_group() {
    let (dir, bin) = open_scratch();
    // Default 660 root:root: a uid outside the group cannot even open the socket.
    let d = daemon(dir.path(), &format!("--allow-gid {SHARED_GID}"));
    let line = once_as(&bin, &d.socket, NOBODY, NOBODY);
    assert!(
        line.starts_with("failed: cannot connect to blobringd")
            && line.contains("Permission denied")
            && line.contains("--socket-mode")
            && line.contains("socket's group"),
        "EACCES should say what to do: {line}"
    );
    drop(d);
    // --group makes the socket's group SHARED_GID: its members get in (and pass the
    // handshake through --allow-gid); others still get EACCES.
    let d = daemon(
        dir.path(),
        &format!("--group {SHARED_GID} --allow-gid {SHARED_GID}"),
    );
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, SHARED_GID));
    assert_eq!(mode(&d.socket), 0o660);
    assert_group_gate(&bin, &d.socket, NOBODY, SHARED_GID);
    assert_eq!(
        d.stats()["daemon"]["clients"],
        0,
        "the admitted client left, the refused one never reached the daemon"
    );
}

#[test]
fn uid_and_gid_policy_admits_only_allowed_clients() {
    let (dir, bin) = open_scratch();
    let d = daemon(
        dir.path(),
        &format!("--socket-mode 666 --allow-uid {NOBODY} --allow-gid {SHARED_GID}"),
    );
    assert_ok(&once_as(&bin, &d.socket, NOBODY, NOBODY), NOBODY, NOBODY);
    assert_ok(
        &once_as(&bin, &d.socket, OTHER_UID, SHARED_GID),
        OTHER_UID,
        SHARED_GID,
    );
    let line = once_as(&bin, &d.socket, OTHER_UID, OTHER_UID);
    assert!(
        line.starts_with("refused not permitted:")
            && line.contains(&format!("uid {OTHER_UID}"))
            && line.contains(&format!("--allow-uid {OTHER_UID}"))
            && line.contains("--allow-gid"),
        "the refusal should name the policy flags: {line}"
    );
    // An explicit --allow-uid list replaces the default (the daemon's uid and root).
    let err = Connection::connect(&d.socket).unwrap_err();
    assert!(
        matches!(&err, ConnectError::Refused { kind: "not permitted", message, .. } if message.contains("--allow-uid 0")),
        "{err}"
    );
    let s = d.stats();
    assert_eq!(s["daemon"]["refused"], 2, "{}", s["daemon"]);
}

#[test]
fn per_uid_limit_counts_each_uid_separately_and_max_clients_is_global() {
    let (dir, bin) = open_scratch();
    let d = daemon(
        dir.path(),
        &format!(
            "--socket-mode 666 --allow-uid {NOBODY} --allow-uid {OTHER_UID} --allow-uid 0 \
             --max-clients-per-uid 2 --max-clients 4"
        ),
    );
    let (a1, l1) = hold_as(&bin, &d.socket, NOBODY, NOBODY);
    let (_a2, l2) = hold_as(&bin, &d.socket, NOBODY, NOBODY);
    assert_ok(&l1, NOBODY, NOBODY);
    assert_ok(&l2, NOBODY, NOBODY);
    let line = once_as(&bin, &d.socket, NOBODY, NOBODY);
    assert!(
        line.starts_with("refused limit exceeded:")
            && line.contains(&format!("uid {NOBODY} already has 2 connections"))
            && line.contains("--max-clients-per-uid 2"),
        "{line}"
    );
    // Another uid is not affected by NOBODY's limit.
    let (_b1, l) = hold_as(&bin, &d.socket, OTHER_UID, OTHER_UID);
    assert_ok(&l, OTHER_UID, OTHER_UID);
    let _root = Connection::connect(&d.socket).expect("root: fourth client");
    // Four clients of three uids: the global limit refuses a uid that has none yet.
    let (_b2, l) = hold_as(&bin, &d.socket, OTHER_UID, OTHER_UID);
    assert!(
        l.starts_with("refused limit exceeded:") && l.contains("--max-clients 4"),
        "{l}"
    );
    // NOBODY's slot frees once one of its clients has gone and been drained.
    drop(a1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (c, l) = hold_as(&bin, &d.socket, NOBODY, NOBODY);
        if l.starts_with("ok ") {
            drop(c);
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed: {l}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let clients = d.stats()["clients"].clone();
    let uids: Vec<u64> = clients
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["uid"].as_u64().unwrap())
        .collect();
    assert!(
        uids.contains(&u64::from(NOBODY)) && uids.contains(&u64::from(OTHER_UID)),
        "{clients}"
    );
}

/// The daemon's report on the ctl socket, checked against `/proc`.
fn assert_report_matches_proc(d: &Daemon) -> serde_json::Value {
    let pid = d.pid();
    let s = d.stats();
    let p = &s["process"];
    assert_eq!(p["pid"], pid);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    let reported = p["open_fds"].as_u64().unwrap();
    // The ctl connection itself comes and goes around the two readings.
    assert!(
        reported.abs_diff(fds) <= 2,
        "open_fds {reported} vs /proc {fds}"
    );
    let rss_kib: u64 = field(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap(),
        "VmRSS",
    )
    .trim_end_matches(" kB")
    .parse()
    .unwrap();
    let rss = p["rss_bytes"].as_u64().unwrap();
    assert!(
        rss > 1 << 20 && rss.abs_diff(rss_kib * 1024) < 16 << 20,
        "rss_bytes {rss} vs VmRSS {rss_kib} kB"
    );
    let threads = thread_status(pid);
    assert_eq!(p["threads"].as_u64().unwrap() as usize, threads.len());
    for (key, name) in [
        ("effective", "CapEff"),
        ("permitted", "CapPrm"),
        ("bounding", "CapBnd"),
    ] {
        let union = threads
            .iter()
            .fold(0u64, |a, (_, st)| a | hex(field(st, name)));
        assert_eq!(
            p["privileges"][key]["hex"],
            format!("{union:016x}"),
            "{key} in {p}"
        );
    }
    s
}

#[test]
fn privileges_are_dropped_after_startup_and_the_stack_still_serves() {
    let (dir, bin) = open_scratch();
    let flags = format!("--socket-mode 666 --allow-uid 0 --allow-uid {NOBODY}");
    let s = HostStack::start(DAEMON, dir.path(), &[], &argv(&flags));
    let pid = s.daemon.pid();
    // Every thread (control, both workers): no capability in any set, no_new_privs.
    let threads = thread_status(pid);
    assert_eq!(threads.len(), 3, "control thread + 2 workers");
    for (path, st) in &threads {
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(hex(field(st, set)), 0, "{set} in {path}");
        }
        assert_eq!(field(st, "NoNewPrivs"), "1", "{path}");
        assert!(field(st, "Uid").starts_with("0\t"), "{path}");
    }
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().collect::<Vec<_>>()[4..6],
        ["0", "0"],
        "{core}"
    );
    // Still serving end to end: the SDK from this process and a client as NOBODY.
    let svc = BlobService::new(
        Client::connect(&s.daemon.socket).expect("connect"),
        AccountConfig::emulator(),
    )
    .with_timeout(Duration::from_secs(10));
    block_on(svc.create_container("sec")).expect("create container");
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    block_on(svc.put_blob("sec", "b", &body, &PutOptions::default())).expect("put");
    let got = block_on(svc.get_blob("sec", "b", None, &GetOptions::default())).expect("get");
    assert_eq!(got.to_vec().unwrap(), body);
    assert_ok(
        &once_as(&bin, &s.daemon.socket, NOBODY, NOBODY),
        NOBODY,
        NOBODY,
    );
    let doc = assert_report_matches_proc(&s.daemon);
    let pr = &doc["process"]["privileges"];
    assert_eq!(pr["no_new_privs"], true, "{pr}");
    assert_eq!(pr["dumpable"], false, "{pr}");
    assert_eq!(pr["core_limit"], 0, "{pr}");
    assert_eq!(pr["effective"]["names"], "none", "{pr}");
}

#[test]
fn keep_privileges_leaves_them() {
    let dir = scratch();
    let d = daemon(dir.path(), "--keep-privileges");
    let (eff, bnd) = own_caps();
    assert_ne!(eff, 0, "these tests run as root with capabilities");
    for (path, st) in thread_status(d.pid()) {
        assert_eq!(hex(field(&st, "CapEff")), eff, "{path}");
        assert_eq!(hex(field(&st, "CapBnd")), bnd, "{path}");
        assert_eq!(field(&st, "NoNewPrivs"), "0", "{path}");
    }
    let doc = assert_report_matches_proc(&d);
    assert_eq!(doc["process"]["privileges"]["dumpable"], true);
    assert_eq!(doc["process"]["privileges"]["no_new_privs"], false);
    let mut c = Connection::connect(&d.socket).unwrap();
    c.submit(0, &[blobring_tests::nop(9)]).unwrap();
    assert_eq!(reap_n(&mut c, 0, 1, Duration::from_secs(5))[0].user_data, 9);
}

#[test]
fn user_and_group_switch_hands_over_the_sockets_and_still_serves() {
    let (dir, bin) = open_scratch();
    let host_sock = dir.path().join("host.sock");
    let host = TestHost::start(&host_sock, 4);
    // The daemon connects to the host after switching users.
    std::fs::set_permissions(&host_sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let d = daemon(
        dir.path(),
        &format!("--user {NOBODY} --group {SHARED_GID} --allow-gid {SHARED_GID}"),
    );
    for (p, m) in [(&d.socket, 0o660), (&d.ctl, 0o600)] {
        let meta = std::fs::metadata(p).unwrap();
        assert_eq!((meta.uid(), meta.gid(), mode(p)), (NOBODY, SHARED_GID, m));
    }
    for (path, st) in thread_status(d.pid()) {
        assert_eq!(
            field(&st, "Uid"),
            format!("{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}"),
            "{path}"
        );
        assert_eq!(
            field(&st, "Gid"),
            format!("{SHARED_GID}\t{SHARED_GID}\t{SHARED_GID}\t{SHARED_GID}"),
            "{path}"
        );
        assert_eq!(field(&st, "Groups"), SHARED_GID.to_string(), "{path}");
        for set in ["CapPrm", "CapEff", "CapBnd"] {
            assert_eq!(hex(field(&st, set)), 0, "{set} in {path}");
        }
        assert_eq!(field(&st, "NoNewPrivs"), "1", "{path}");
    }
    d.wait_stats(Duration::from_secs(10), "host connected", |s| {
        s["daemon"]["host_connected"] == true
    });
    // Root (the daemon's default list keeps it) gets a blob request answered by the host.
    let mut c = Connection::connect(&d.socket).expect("root connects");
    let sqe = blob_sqe(&mut c, 7, b"GET /sec", 4096);
    c.submit(0, &[sqe]).unwrap();
    let cqe = reap_n(&mut c, 0, 1, Duration::from_secs(10))[0];
    assert_eq!((cqe.user_data, cqe.res), (7, 0), "{cqe:?}");
    let mut head = vec![0u8; cqe.response_len as usize];
    c.read_buf(sqe.response_offset, &mut head).unwrap();
    assert_eq!(head, b"OK:GET /sec");
    assert!(host.answered() >= 1);
    // A member of the socket's group is admitted (--allow-gid); others cannot open it.
    assert_group_gate(&bin, &d.socket, OTHER_UID, SHARED_GID);
    // Non-dumpable: another process of the daemon's own uid cannot look inside it, while it
    // can look inside an ordinary process of that uid (a client holding a connection).
    let peek = |pid: u32| {
        let mut c = Reaped(
            client_cmd(
                &bin,
                Path::new("peek"),
                NOBODY,
                SHARED_GID,
                &pid.to_string(),
            )
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn peek"),
        );
        first_line(&mut c)
    };
    let line = peek(d.pid());
    assert!(line.starts_with("peek denied:"), "{line}");
    let (holder, l) = hold_as(&bin, &d.socket, NOBODY, SHARED_GID);
    assert_ok(&l, NOBODY, SHARED_GID);
    let line = peek(holder.0.id());
    assert!(line.starts_with("peek ok "), "{line}");
    let pr = &d.stats()["process"]["privileges"];
    assert_eq!(pr["uid"], NOBODY, "{pr}");
    assert_eq!(pr["gid"], SHARED_GID, "{pr}");
    assert_eq!(pr["dumpable"], false, "{pr}");
}

#[test]
fn unknown_user_is_refused_with_what_to_do() {
    let dir = scratch();
    let refusal = |socket: &str, user: &str| {
        let args = ["--workers", "1", "--transport", "sim", "--user", user];
        daemon_refusal(DAEMON, &dir.path().join(socket), &args)
    };
    let err = refusal("d.sock", "no-such-user-blobring");
    assert!(
        err.contains("--user no-such-user-blobring: no such user"),
        "{err}"
    );
    let err = refusal("d2.sock", "54321");
    assert!(err.contains("pass --group too"), "{err}");
}
