//! `blobring mount` against a real stack: blobring-host (fs store) + blobringd + the mount
//! process (`blobring-test-mount`, the CLI's entry points), with real FUSE mounts in temporary
//! directories and ordinary programs (`cp`, `find`, `ls`, `tar`, `truncate`, python3) and
//! syscalls on them:
//! - a nested tree of mixed sizes (0 B to 100 MiB) copied in with `cp -r` and out again
//!   byte-exact; `find` and `ls -l` names and sizes; `tar c` of the mount equal to `tar c` of
//!   the source, byte for byte;
//! - read patterns: sequential 1 MiB `read(2)` (served by prefetch, per the mount's stats),
//!   4 KiB random `pread`, concurrent readers of one file and of many files, `mmap`; a
//!   directory listed over two List Blobs pages;
//! - writes: create, overwrite by truncating open, fsync then read from a second mount after
//!   the metadata TTL, unlink, mkdir/rmdir, rename (copy + delete), and each refused
//!   operation's errno and log line;
//! - faults: blobringd killed during a blocked read (EIO within the deadline), restarted
//!   (reads work again); SIGTERM with open files (clean unmount, uncommitted data discarded);
//!   a mount process killed (`blobring unmount` clears the dead mount point); a container that
//!   does not exist (clear error, exit status 3, nothing mounted).
//!
//! Every mount is unmounted (`fusermount3 -u -z`) and every process killed on drop, also when
//! an assertion fails.

use std::io::{BufRead as _, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{FileExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blobring::blob::{AccountConfig, BlobService, PutOptions};
use blobring::{Client, block_on};
use blobring_tests::{HostStack, XorShift, scratch};
use tempfile::TempDir;

const DAEMON: &str = env!("CARGO_BIN_EXE_blobring-test-daemon");
const MOUNT: &str = env!("CARGO_BIN_EXE_blobring-test-mount");
/// The daemon's arena (and so the mount's): room for prefetch and uploads.
const ARENA: &str = "268435456";

const EPERM: i32 = 1;
const EIO: i32 = 5;
const EXDEV: i32 = 18;
const EINVAL: i32 = 22;
const EROFS: i32 = 30;
const ENOTEMPTY: i32 = 39;
const ENOTCONN: i32 = 107;

fn stack(dir: &Path, host_args: &[&str]) -> HostStack {
    HostStack::start(DAEMON, dir, host_args, &["--arena-size", ARENA])
}

fn service(stack: &HostStack) -> BlobService {
    let client = Client::connect(&stack.daemon.socket).expect("connect to blobringd");
    BlobService::new(client, AccountConfig::emulator())
}

/// A [`stack`] (`host_args` extra) in a fresh [`scratch`] directory with container `data`
/// created, and a service on it; with the directory (keep it to the end).
fn data_stack(host_args: &[&str]) -> (TempDir, HostStack, BlobService) {
    let dir = scratch();
    let stack = stack(dir.path(), host_args);
    let svc = service(&stack);
    block_on(svc.create_container("data")).unwrap();
    (dir, stack, svc)
}

/// Whether `mp` is a mount point now (from /proc/self/mountinfo).
fn mounted(mp: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mp = mp.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|p| p == mp))
}

/// A mount (foreground child, or detached with its pid): unmounted lazily and its process
/// killed on drop.
struct Mount {
    mp: PathBuf,
    child: Option<Child>,
    pid: Option<u32>,
    log: PathBuf,
    stats: PathBuf,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.mp)
            .stderr(Stdio::null())
            .status();
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pid) = self.pid {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

impl Mount {
    /// `blobring mount --foreground` of `url` at a new directory `dir/name`, logging to
    /// `dir/name.log`; returns once the mount says it is ready (≤ 30 s).
    fn foreground(stack: &HostStack, dir: &Path, name: &str, url: &str, extra: &[&str]) -> Mount {
        let mp = dir.join(name);
        std::fs::create_dir_all(&mp).expect("mount point");
        let log = dir.join(format!("{name}.log"));
        let stats = dir.join(format!("{name}.stats"));
        let child = Command::new(MOUNT)
            .arg("mount")
            .arg(url)
            .arg(&mp)
            .arg("--foreground")
            .arg("--socket")
            .arg(&stack.daemon.socket)
            .arg("--stats-socket")
            .arg(&stats)
            .args(extra)
            .env("BLOBRING_MOUNT_NOTIFY_READY", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn the mount");
        let mut m = Mount {
            mp,
            child: Some(child),
            pid: None,
            log,
            stats,
        };
        let out = m.child.as_mut().unwrap().stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        assert_eq!(
            line.trim(),
            "ready",
            "mount not ready; log: {}",
            m.log_text()
        );
        assert!(mounted(&m.mp), "{} not in mountinfo", m.mp.display());
        m
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The mount's figures from its stats socket.
    fn stats(&self) -> serde_json::Value {
        let mut s = std::os::unix::net::UnixStream::connect(&self.stats).expect("stats socket");
        let mut t = String::new();
        s.read_to_string(&mut t).expect("stats");
        serde_json::from_str::<serde_json::Value>(&t).expect("stats JSON")["mount"].clone()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mp.join(rel)
    }
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let o = cmd.output().expect("run a command");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[track_caller]
fn sh(cmd: &mut Command) -> String {
    let (code, out, err) = run(cmd);
    assert_eq!(code, 0, "{cmd:?} failed: {err}");
    out
}

#[track_caller]
fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("the operation should have been refused")
        .raw_os_error()
        .expect("an OS error")
}

/// The source tree: nested directories, sizes from 0 B to 100 MiB (around page and block
/// edges), content from a fixed seed; files 0644, directories 0755.
fn make_tree(root: &Path) -> Vec<(String, usize)> {
    let files: &[(&str, usize)] = &[
        ("empty", 0),
        ("one", 1),
        ("a/page-1", 4095),
        ("a/page", 4096),
        ("a/page+1", 4097),
        ("a/b/mib+7", (1 << 20) + 7),
        ("a/b/c/three-mib", 3 << 20),
        ("a/b/c/d/e/deep", 12_345),
        ("big/hundred-mib", 100 << 20),
        ("big/eleven-mib-odd", (11 << 20) + 12_345),
        ("z with space/name.txt", 100),
    ];
    let mut rng = XorShift::new(13);
    for (name, size) in files {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, rng.bytes(*size)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    for d in [
        "",
        "a",
        "a/b",
        "a/b/c",
        "a/b/c/d",
        "a/b/c/d/e",
        "big",
        "z with space",
    ] {
        std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    files.iter().map(|(n, s)| (n.to_string(), *s)).collect()
}

/// `find` output of a tree: files with sizes, directories, sorted.
fn find(root: &Path) -> String {
    let files = sh(Command::new("find")
        .arg(root)
        .args(["-type", "f", "-printf", "f %P %s\n"]));
    let dirs = sh(Command::new("find").arg(root).args([
        "-mindepth",
        "1",
        "-type",
        "d",
        "-printf",
        "d %P\n",
    ]));
    let mut lines: Vec<&str> = files.lines().chain(dirs.lines()).collect();
    lines.sort_unstable();
    lines.join("\n")
}

/// `tar c` of a tree with every field that is not content fixed (order, times, owners,
/// format).
fn tar(root: &Path) -> Vec<u8> {
    let o = Command::new("tar")
        .args([
            "c",
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--format=gnu",
            "-C",
        ])
        .arg(root)
        .arg(".")
        .output()
        .expect("tar");
    assert!(
        o.status.success(),
        "tar failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

#[test]
fn tree_copies_in_and_out_byte_exact_and_lists_like_the_source() {
    let (dir, stack, svc) = data_stack(&[]);
    let m = Mount::foreground(&stack, dir.path(), "mnt", "blob://data", &[]);
    let src = dir.path().join("src");
    let files = make_tree(&src);

    let t = Instant::now();
    sh(Command::new("cp").arg("-r").arg(&src).arg(m.path("")));
    let copy_in = t.elapsed();

    // Each file is a blob named by its path under the mount.
    for (name, size) in &files {
        let p = block_on(svc.head_blob("data", &format!("src/{name}"), &Default::default()))
            .unwrap_or_else(|e| panic!("blob src/{name}: {e}"));
        assert_eq!(p.size, *size as u64, "{name}");
    }
    let mounted_src = m.path("src");
    assert_eq!(
        find(&mounted_src),
        find(&src),
        "find of the mount vs the source"
    );

    // `ls -l`: names and sizes of one directory.
    let ls = sh(Command::new("ls").arg("-l").arg(m.path("src/a")));
    let mut got: Vec<(String, String)> = ls
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[8..].join(" "), f[4].to_owned())
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = std::fs::read_dir(src.join("a"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            let size = if md.is_dir() {
                "0".into()
            } else {
                md.len().to_string()
            };
            (e.file_name().to_string_lossy().into_owned(), size)
        })
        .collect();
    want.sort();
    assert_eq!(got, want, "ls -l of the mount's src/a");

    assert!(
        tar(&mounted_src) == tar(&src),
        "tar c of the mount differs from tar c of the source"
    );

    let out = dir.path().join("out");
    let t = Instant::now();
    sh(Command::new("cp").arg("-r").arg(&mounted_src).arg(&out));
    let copy_out = t.elapsed();
    for (name, _) in &files {
        let a = std::fs::read(src.join(name)).unwrap();
        let b = std::fs::read(out.join(name)).unwrap();
        assert!(a == b, "{name} differs after the round trip");
    }
    let total: usize = files.iter().map(|f| f.1).sum();
    eprintln!(
        "cp -r in: {total} bytes in {copy_in:?}; out: {copy_out:?}; stats {}",
        m.stats()
    );
}

/// A blob of `size` bytes uploaded through the SDK.
fn put(svc: &BlobService, name: &str, size: usize, seed: u64) -> Vec<u8> {
    let data = XorShift::new(seed).bytes(size);
    block_on(svc.put_blob("data", name, &data, &PutOptions::default())).unwrap();
    data
}

fn md5_hex(b: &[u8]) -> String {
    use md5::Digest as _;
    md5::Md5::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn read_patterns_sequential_random_concurrent_and_mmap() {
    let (dir, stack, svc) = data_stack(&[]);
    let big = put(&svc, "r/big", 40 << 20, 1);
    let smalls: Vec<Vec<u8>> = (0..6)
        .map(|i| {
            put(
                &svc,
                &format!("r/s{i}"),
                (3 << 20) + i * 1000,
                10 + i as u64,
            )
        })
        .collect();
    const MANY: usize = 1205;
    for i in 0..MANY {
        block_on(svc.put_blob(
            "data",
            &format!("r/many/n{i:05}"),
            b"abc",
            &PutOptions::default(),
        ))
        .unwrap();
    }
    let m = Mount::foreground(
        &stack,
        dir.path(),
        "mnt",
        "blob://data/r",
        &[
            "--read-only",
            "--cache-mib",
            "64",
            "--uid",
            "1234",
            "--gid",
            "4321",
            "--file-mode",
            "640",
            "--dir-mode",
            "750",
        ],
    );
    // Owner, group and modes are the mount's.
    use std::os::unix::fs::MetadataExt as _;
    let md = std::fs::metadata(m.path("big")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777, md.len()),
        (1234, 4321, 0o640, 40 << 20)
    );
    let md = std::fs::metadata(m.path("")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (1234, 4321, 0o750)
    );
    assert!(md.is_dir());

    // Sequential read(2) of 1 MiB.
    let before = m.stats();
    let t = Instant::now();
    let mut f = std::fs::File::open(m.path("big")).unwrap();
    let mut got = Vec::with_capacity(big.len());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let seq = t.elapsed();
    assert!(got == big, "sequential read differs");
    let after = m.stats();
    let hits = after["prefetch_hit_bytes"].as_u64().unwrap()
        - before["prefetch_hit_bytes"].as_u64().unwrap();
    assert!(
        hits > (big.len() as u64) / 2,
        "most of a sequential read should come from prefetch: {hits} of {} bytes; stats {after}",
        big.len()
    );
    assert!(after["cache_used"].as_u64().unwrap() <= after["cache_limit"].as_u64().unwrap());
    drop(f);

    // 4 KiB random pread.
    let f = std::fs::File::open(m.path("big")).unwrap();
    let mut rng = XorShift::new(7);
    let t = Instant::now();
    for _ in 0..300 {
        let off = rng.below(big.len() as u64 - 4096);
        let mut b = [0u8; 4096];
        f.read_exact_at(&mut b, off).unwrap();
        assert!(
            b[..] == big[off as usize..off as usize + 4096],
            "pread at {off}"
        );
    }
    let random = t.elapsed();
    // The last 100 bytes: a short read at the end of the file.
    let mut b = [0u8; 4096];
    let n = f.read_at(&mut b, big.len() as u64 - 100).unwrap();
    assert_eq!(&b[..n], &big[big.len() - 100..]);
    let s = m.stats();
    assert!(s["random_reads"].as_u64().unwrap() >= 100, "stats {s}");

    // Many concurrent readers of one file, and of many files.
    std::thread::scope(|sc| {
        for i in 0..4 {
            let (p, big) = (m.path("big"), &big);
            sc.spawn(move || {
                let got = std::fs::read(&p).unwrap();
                assert!(got == *big, "concurrent reader {i} of one file");
            });
        }
        for (i, want) in smalls.iter().enumerate() {
            let p = m.path(&format!("s{i}"));
            sc.spawn(move || {
                let got = std::fs::read(&p).unwrap();
                assert!(got == *want, "concurrent reader of s{i}");
            });
        }
    });

    // mmap (python3's mmap module over the mounted file) and python's open().read().
    let py = "import hashlib, mmap, sys\n\
              f = open(sys.argv[1], 'rb')\n\
              m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)\n\
              print(hashlib.md5(m).hexdigest(), len(m))\n\
              print(hashlib.md5(open(sys.argv[2], 'rb').read()).hexdigest())\n";
    let out = sh(Command::new("python3")
        .args(["-c", py])
        .arg(m.path("big"))
        .arg(m.path("s1")));
    let mut lines = out.lines();
    assert_eq!(
        lines.next().unwrap(),
        format!("{} {}", md5_hex(&big), big.len()),
        "mmap read"
    );
    assert_eq!(
        lines.next().unwrap(),
        md5_hex(&smalls[1]),
        "python open().read()"
    );

    // A directory of more than one List Blobs page (1,000 names): every name, in order.
    let listed = std::fs::read_dir(m.path("many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    let mut want: Vec<String> = (0..MANY).map(|i| format!("n{i:05}")).collect();
    want.sort();
    let mut got = listed.clone();
    got.sort();
    assert_eq!(got, want, "readdir across pages");
    assert_eq!(listed.len(), MANY, "no name twice");
    assert!(m.stats()["list_pages"].as_u64().unwrap() >= 2);
    assert_eq!(std::fs::metadata(m.path("many/n01204")).unwrap().len(), 3);

    // Read-only: writes are refused by the kernel.
    assert_eq!(errno_of(std::fs::write(m.path("new"), b"x")), EROFS);
    eprintln!(
        "sequential 1 MiB reads: {} MiB in {seq:?}; 300 random 4 KiB preads in {random:?}; stats {}",
        big.len() >> 20,
        m.stats()
    );
}

#[test]
fn writes_commit_on_close_and_fsync_and_refusals_have_stable_errnos() {
    let (dir, stack, svc) = data_stack(&[]);
    let a = Mount::foreground(
        &stack,
        dir.path(),
        "a",
        "blob://data",
        &["--metadata-ttl", "1"],
    );
    let b = Mount::foreground(
        &stack,
        dir.path(),
        "b",
        "blob://data",
        &["--metadata-ttl", "1"],
    );

    // Create (sequential 1 MiB writes), committed on close.
    let data = XorShift::new(3).bytes((5 << 20) + 333);
    {
        let mut f = std::fs::File::create(a.path("w1")).unwrap();
        for c in data.chunks(1 << 20) {
            f.write_all(c).unwrap();
        }
    }
    let got = block_on(svc.get_blob("data", "w1", None, &Default::default())).unwrap();
    assert!(got.to_vec().unwrap() == data, "w1 as committed");

    // A child started while a file is open for writing closes the inherited descriptor at
    // exec (a FUSE flush from another process): that must not commit half the file.
    {
        let mut f = std::fs::File::create(a.path("forked")).unwrap();
        f.write_all(&data[..1000]).unwrap();
        sh(&mut Command::new("true"));
        f.write_all(&data[1000..2000]).unwrap();
    }
    let got = block_on(svc.get_blob("data", "forked", None, &Default::default())).unwrap();
    assert!(
        got.to_vec().unwrap() == data[..2000],
        "forked: all of it, committed once"
    );

    // fsync, then read from the second mount (after its negative cache entry expires).
    assert!(
        b.path("w2").symlink_metadata().is_err(),
        "w2 absent at first"
    );
    let d2 = XorShift::new(4).bytes(777_777);
    let mut f = std::fs::File::create(a.path("w2")).unwrap();
    f.write_all(&d2).unwrap();
    f.sync_all().unwrap();
    std::thread::sleep(Duration::from_millis(1300));
    assert!(
        std::fs::read(b.path("w2")).unwrap() == d2,
        "w2 through the second mount after fsync"
    );
    // After the commit the handle writes no more.
    assert_eq!(errno_of(f.write_all(b"more")), EINVAL);
    drop(f);

    // Overwrite by truncating open: the blob is replaced on close, shorter.
    let d3 = b"replaced".to_vec();
    std::fs::write(a.path("w1"), &d3).unwrap();
    let got = block_on(svc.get_blob("data", "w1", None, &Default::default())).unwrap();
    assert_eq!(got.to_vec().unwrap(), d3);
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(
        std::fs::read(b.path("w1")).unwrap(),
        d3,
        "w1 replaced, seen by the second mount"
    );

    // An empty file.
    std::fs::File::create(a.path("empty")).unwrap();
    assert_eq!(std::fs::metadata(a.path("empty")).unwrap().len(), 0);
    assert_eq!(
        block_on(svc.head_blob("data", "empty", &Default::default()))
            .unwrap()
            .size,
        0
    );

    // mkdir / rmdir: an empty directory exists (in this mount) until rmdir.
    std::fs::create_dir(a.path("d")).unwrap();
    assert!(std::fs::metadata(a.path("d")).unwrap().is_dir());
    let names: Vec<String> = std::fs::read_dir(a.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"d".to_owned()), "{names:?}");
    std::fs::write(a.path("d/f"), b"in d").unwrap();
    assert_eq!(errno_of(std::fs::remove_dir(a.path("d"))), ENOTEMPTY);
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(std::fs::read(b.path("d/f")).unwrap(), b"in d");

    // File rename: copy + delete.
    std::fs::rename(a.path("d/f"), a.path("moved")).unwrap();
    assert_eq!(std::fs::read(a.path("moved")).unwrap(), b"in d");
    assert!(
        block_on(svc.head_blob("data", "d/f", &Default::default()))
            .unwrap_err()
            .is_not_found()
    );
    std::fs::remove_dir(a.path("d")).unwrap();
    assert!(
        a.path("d").symlink_metadata().is_err(),
        "d gone after rmdir"
    );

    // unlink is Delete Blob.
    std::fs::remove_file(a.path("moved")).unwrap();
    assert!(
        block_on(svc.head_blob("data", "moved", &Default::default()))
            .unwrap_err()
            .is_not_found()
    );

    // Refused operations: stable errnos, one log line each, nothing changed.
    let before = a.log_text().matches("refused").count();
    let mut f = std::fs::File::create(a.path("rand")).unwrap();
    f.write_all(b"0123456789").unwrap();
    f.seek(SeekFrom::Start(100)).unwrap();
    assert_eq!(errno_of(f.write_all(b"x")), EINVAL, "random write");
    drop(f);
    assert_eq!(
        errno_of(std::fs::OpenOptions::new().append(true).open(a.path("w2"))),
        EPERM,
        "append to an existing blob"
    );
    assert_eq!(
        errno_of(std::fs::OpenOptions::new().write(true).open(a.path("w2"))),
        EPERM,
        "write into an existing blob without O_TRUNC"
    );
    std::fs::create_dir(a.path("dir1")).unwrap();
    std::fs::write(a.path("dir1/x"), b"x").unwrap();
    assert_eq!(
        errno_of(std::fs::rename(a.path("dir1"), a.path("dir2"))),
        EXDEV,
        "directory rename"
    );
    assert_eq!(
        errno_of(std::fs::set_permissions(
            a.path("w2"),
            std::fs::Permissions::from_mode(0o600)
        )),
        EPERM,
        "chmod"
    );
    assert_eq!(
        errno_of(std::os::unix::fs::chown(a.path("w2"), Some(1), Some(1))),
        EPERM,
        "chown"
    );
    assert_eq!(
        errno_of(std::fs::hard_link(a.path("w2"), a.path("hl"))),
        EPERM,
        "link"
    );
    assert_eq!(
        errno_of(std::os::unix::fs::symlink("w2", a.path("sl"))),
        EPERM,
        "symlink"
    );
    let (code, _, err) = run(Command::new("truncate")
        .args(["-s", "10"])
        .arg(a.path("w2")));
    assert!(
        code != 0 && err.contains("Operation not permitted"),
        "truncate: {err}"
    );
    let refused = a.log_text().matches("refused").count() - before;
    assert!(
        refused >= 9,
        "one log line per refusal: {refused}\n{}",
        a.log_text()
    );
    // Nothing was changed by them.
    assert!(std::fs::read(b.path("w2")).unwrap() == d2);
    assert!(a.path("dir2").symlink_metadata().is_err());

    // What tools do about those refusals works: `mv` of a directory copies and deletes file
    // by file after EXDEV, and `cp -p` / `mv` set the owner and mode the mount already shows
    // (accepted as no-ops), without a complaint.
    let (code, _, err) = run(Command::new("mv").arg(a.path("dir1")).arg(a.path("dir3")));
    assert!(
        code == 0 && err.is_empty(),
        "mv of a directory: {code} {err}"
    );
    assert_eq!(std::fs::read(a.path("dir3/x")).unwrap(), b"x");
    assert!(a.path("dir1").symlink_metadata().is_err());
    let local = dir.path().join("local");
    std::fs::write(&local, b"kept").unwrap();
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = run(Command::new("cp").arg("-p").arg(&local).arg(a.path("p")));
    assert!(code == 0 && err.is_empty(), "cp -p: {code} {err}");
    assert_eq!(std::fs::read(a.path("p")).unwrap(), b"kept");
    assert_eq!(
        a.stats()["refused"].as_u64().unwrap(),
        a.log_text().matches("refused").count() as u64,
        "the refusal counter and the log agree"
    );
}

#[test]
fn daemon_killed_during_a_blocked_read_fails_with_eio_then_reads_work_again() {
    // Every request takes 1.5 s at the host: a read is blocked long enough to kill the daemon
    // under it.
    let (dir, mut stack, svc) = data_stack(&["--fault-latency-ms", "1500"]);
    let data = put(&svc, "slow", 1 << 20, 5);
    let m = Mount::foreground(
        &stack,
        dir.path(),
        "mnt",
        "blob://data",
        &["--timeout", "5"],
    );
    let f = std::fs::File::open(m.path("slow")).unwrap();
    let t = std::thread::scope(|sc| {
        let reader = sc.spawn(|| {
            let mut b = vec![0u8; 65536];
            let r = f.read_at(&mut b, 0);
            (r, Instant::now())
        });
        std::thread::sleep(Duration::from_millis(500));
        let killed = Instant::now();
        stack.daemon.kill();
        let (r, done) = reader.join().unwrap();
        assert_eq!(errno_of(r), EIO, "a read whose daemon died");
        done - killed
    });
    assert!(t < Duration::from_secs(10), "EIO took {t:?} after the kill");
    stack.restart_daemon(DAEMON, dir.path(), &["--arena-size", ARENA]);
    // Back: the same open file and a new open both read again (the SDK reconnects).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut b = vec![0u8; 65536];
    let n = loop {
        match f.read_at(&mut b, 4096) {
            Ok(n) => break n,
            Err(e) => assert!(
                Instant::now() < deadline,
                "reads still fail after restart: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(b[..n] == data[4096..4096 + n]);
    assert!(std::fs::read(m.path("slow")).unwrap() == data);
    eprintln!("EIO {t:?} after the daemon was killed");
}

#[test]
fn sigterm_with_open_files_unmounts_cleanly_and_commits_nothing_half_written() {
    let (dir, stack, svc) = data_stack(&[]);
    put(&svc, "r", 3 << 20, 9);
    let mut m = Mount::foreground(&stack, dir.path(), "mnt", "blob://data", &[]);
    let reading = std::fs::File::open(m.path("r")).unwrap();
    let mut b = vec![0u8; 4096];
    reading.read_exact_at(&mut b, 0).unwrap();
    let mut writing = std::fs::File::create(m.path("half")).unwrap();
    writing.write_all(&[7u8; 100_000]).unwrap();

    let pid = m.child.as_ref().unwrap().id();
    sh(Command::new("kill").args(["-TERM", &pid.to_string()]));
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = m.child.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the mount did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "exit status after SIGTERM: {status:?}; log {}",
        m.log_text()
    );
    assert!(!mounted(&m.mp), "still mounted after SIGTERM");
    assert!(
        m.log_text().contains("SIGTERM: unmounting"),
        "{}",
        m.log_text()
    );
    // The open files fail (no hang); the half-written blob was never committed.
    // (Far from what the kernel may have read ahead into its page cache.)
    assert!(reading.read_at(&mut b, (3 << 20) - 4096).is_err());
    assert!(
        writing
            .write_all(b"more")
            .and_then(|_| writing.sync_all())
            .is_err()
    );
    assert!(
        block_on(svc.head_blob("data", "half", &Default::default()))
            .is_err_and(|e| e.is_not_found()),
        "a blob still being written at SIGTERM must not be committed; log {}",
        m.log_text()
    );
    m.child = None;
}

#[test]
fn detached_mount_unmount_dead_mount_and_missing_container() {
    let (dir, stack, svc) = data_stack(&[]);
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let log = dir.path().join("mount.log");
    let detached = |url: &str| {
        run(Command::new(MOUNT)
            .arg("mount")
            .arg(url)
            .arg(&mp)
            .arg("--socket")
            .arg(&stack.daemon.socket)
            .arg("--log-file")
            .arg(&log))
    };

    // A container that does not exist: a clear error, exit status 3, nothing mounted.
    let (code, _, err) = detached("blob://nosuch");
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("container \"nosuch\" does not exist") && err.contains("blobring mb"),
        "{err}"
    );
    assert!(!mounted(&mp));

    // Detached (the default): returns once mounted; the mount process serves on.
    let mut guard = Mount {
        mp: mp.clone(),
        child: None,
        pid: None,
        log: log.clone(),
        stats: PathBuf::new(),
    };
    // A detached mount of the container; its pid, from what it printed.
    let mount_detached = || -> u32 {
        let (code, _, err) = detached("blob://data");
        assert_eq!(code, 0, "{err}");
        err.split("(pid ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {err:?}"))
    };
    let pid = mount_detached();
    guard.pid = Some(pid);
    assert!(mounted(&mp));
    std::fs::write(mp.join("hello"), b"hello").unwrap();
    assert_eq!(
        block_on(svc.get_blob("data", "hello", None, &Default::default()))
            .unwrap()
            .to_vec()
            .unwrap(),
        b"hello"
    );
    let (code, _, err) = run(Command::new(MOUNT).arg("unmount").arg(&mp));
    assert_eq!(code, 0, "{err}");
    assert!(!mounted(&mp));
    let gone = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < gone,
            "the mount process did not exit after unmount"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A mount process that dies leaves a dead mount point that `unmount` clears.
    let pid = mount_detached();
    guard.pid = Some(pid);
    sh(Command::new("kill").args(["-9", &pid.to_string()]));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        mounted(&mp),
        "a killed mount process leaves its mount point"
    );
    // (read_dir: a stat could be answered from the kernel's attribute cache.)
    assert_eq!(
        errno_of(std::fs::read_dir(&mp)),
        ENOTCONN,
        "a dead mount fails with ENOTCONN"
    );
    let (code, _, err) = run(Command::new(MOUNT).arg("unmount").arg(&mp));
    assert_eq!(code, 0, "{err}");
    assert!(!mounted(&mp));
    assert!(std::fs::metadata(&mp).unwrap().is_dir());
    // Unmounting what is not mounted is an error that says so.
    let (code, _, err) = run(Command::new(MOUNT).arg("unmount").arg(&mp));
    assert_ne!(code, 0);
    assert!(err.contains("not a mount point"), "{err}");
}
