//! The `blobring` data commands (`cp`, `ls`, `cat`, `rm`, `mb`, `rb`; built as
//! `blobring-test-cli`, the same `blobring_ctl::data::main`) through a real `blobringd` and a
//! real `blobring-host --socket` with an `fs` store: transfers in every direction with their
//! summary line, the progress bar on a terminal (a pty from script(1)) and not elsewhere, and
//! every failure with its exit status and a message that says what to do.

use std::path::Path;
use std::process::{Command, Output};

use blobring_tests::{HostStack, scratch};

const DAEMON: &str = env!("CARGO_BIN_EXE_blobring-test-daemon");
const CLI: &str = env!("CARGO_BIN_EXE_blobring-test-cli");

/// What one CLI run did.
struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: o.stdout,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    #[track_caller]
    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success; stderr: {}", self.stderr);
        self
    }

    /// Asserts the exit status and that stderr is one `blobring: …` line holding every
    /// `needle`.
    #[track_caller]
    fn fails(self, code: i32, needles: &[&str]) -> Run {
        assert_eq!(self.code, code, "exit status; stderr: {}", self.stderr);
        assert!(
            self.stderr.starts_with("blobring: ") && self.stderr.trim_end().lines().count() == 1,
            "one `blobring: …` line expected: {:?}",
            self.stderr
        );
        for n in needles {
            assert!(self.stderr.contains(n), "{n:?} not in {:?}", self.stderr);
        }
        self
    }

    /// The summary line's byte count (`copied N files, X (B bytes) in S s (R/s)`), checking
    /// the file count and the line's shape.
    #[track_caller]
    fn summary(&self, files: &str) -> u64 {
        let line = self
            .stderr
            .lines()
            .find(|l| l.starts_with("copied "))
            .unwrap_or_else(|| panic!("no summary line in {:?}", self.stderr));
        assert!(
            line.starts_with(&format!("copied {files}, ")),
            "{line:?} should start with `copied {files}, `"
        );
        assert!(line.contains(" s (") && line.ends_with("/s)"), "{line:?}");
        let bytes = line
            .split_once('(')
            .and_then(|(_, r)| r.split_once(" bytes)"))
            .map(|(n, _)| n.parse::<u64>().expect("byte count"))
            .unwrap_or_else(|| panic!("no `(N bytes)` in {line:?}"));
        // Not a terminal: no bar drawn, no carriage returns or escape sequences.
        assert!(
            !self.stderr.contains('\r') && !self.stderr.contains('\x1b'),
            "bar drawn on a non-terminal: {:?}",
            self.stderr
        );
        bytes
    }
}

/// The CLI against `stack` (emulator account, or `env` overrides).
fn cli(stack: &HostStack, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = Command::new(CLI);
    c.args(args)
        .env("BLOBRING_SOCKET", &stack.daemon.socket)
        .env_remove("AZURE_STORAGE_CONNECTION_STRING")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    Run::from(c.output().expect("run blobring-test-cli"))
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(167).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn cp_every_direction_with_summary_lines() {
    let dir = scratch();
    let st = HostStack::start(DAEMON, dir.path(), &[], &["--arena-size", "67108864"]);
    let run = |args: &[&str]| cli(&st, args, &[]);
    run(&["mb", "blob://data"]).ok();

    // local → blob, one file of an odd size over several chunks.
    let one = dir.path().join("one.bin");
    let body = pattern(9 * 1024 * 1024 + 77, 1);
    std::fs::write(&one, &body).unwrap();
    let up = run(&["cp", "--chunk-mib", "2", s(&one), "blob://data/in/one.bin"]).ok();
    assert_eq!(up.summary("1 file"), body.len() as u64);
    // -q: nothing on stderr.
    let q = run(&["cp", "-q", s(&one), "blob://data/in/"]).ok();
    assert_eq!(q.stderr, "", "-q prints nothing");
    let ls = run(&["ls", "blob://data/in/"]).ok();
    let listing = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(
        listing.contains(&format!("{}  blob://data/in/one.bin", body.len())),
        "{listing}"
    );

    // blob → local (into an existing directory: keeps the blob's name), content equal.
    let down_dir = dir.path().join("down");
    std::fs::create_dir(&down_dir).unwrap();
    let down = run(&["cp", "blob://data/in/one.bin", s(&down_dir)]).ok();
    assert_eq!(down.summary("1 file"), body.len() as u64);
    assert_eq!(std::fs::read(down_dir.join("one.bin")).unwrap(), body);
    assert!(
        std::fs::read_dir(&down_dir).unwrap().count() == 1,
        "no temporary file left"
    );
    let cat = run(&["cat", "blob://data/in/one.bin"]).ok();
    assert!(cat.stdout == body, "cat writes the blob to stdout");

    // -r local → blob: a tree with an empty file and a nested directory.
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    let files: [(&str, Vec<u8>); 4] = [
        ("a.txt", b"alpha".to_vec()),
        ("empty", Vec::new()),
        ("sub/b.bin", pattern(3 << 20, 2)),
        ("sub/deeper/c.bin", pattern(70_000, 3)),
    ];
    for (name, data) in &files {
        std::fs::write(tree.join(name), data).unwrap();
    }
    let total: u64 = files.iter().map(|f| f.1.len() as u64).sum();
    let up = run(&["cp", "-r", s(&tree), "blob://data/tree"]).ok();
    assert_eq!(up.summary("4 files"), total);
    let ls = run(&["ls", "-r", "blob://data/tree/"]).ok();
    let listing = String::from_utf8_lossy(&ls.stdout).into_owned();
    for (name, data) in &files {
        assert!(
            listing.contains(&format!("{}  blob://data/tree/{name}\n", data.len())),
            "{name} missing from {listing}"
        );
    }
    // ls without -r groups by `/`.
    let ls = run(&["ls", "blob://data/tree/"]).ok();
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains("DIR  blob://data/tree/sub/"),
        "{}",
        String::from_utf8_lossy(&ls.stdout)
    );

    // -r blob → blob (server-side copies), then -r blob → local, compared with the source.
    let cp = run(&["cp", "-r", "blob://data/tree/", "blob://data/copy"]).ok();
    assert_eq!(cp.summary("4 blobs"), total);
    let back = dir.path().join("back");
    let down = run(&["cp", "-r", "blob://data/copy", s(&back)]).ok();
    assert_eq!(down.summary("4 files"), total);
    for (name, data) in &files {
        assert_eq!(&std::fs::read(back.join(name)).unwrap(), data, "{name}");
    }

    // blob → blob, one blob, into a "directory" destination.
    let cp = run(&["cp", "blob://data/tree/a.txt", "blob://data/single/"]).ok();
    assert_eq!(cp.summary("1 blob"), 5);
    assert_eq!(
        run(&["cat", "blob://data/single/a.txt"]).ok().stdout,
        b"alpha"
    );

    // rm, rm -r, rb.
    run(&["rm", "blob://data/single/a.txt"]).ok();
    run(&["rm", "-r", "blob://data/copy/"]).ok();
    let ls = run(&["ls", "-r", "blob://data/"]).ok();
    let listing = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(
        !listing.contains("/copy/") && !listing.contains("/single/"),
        "{listing}"
    );
    run(&["rb", "blob://data"]).ok();
}

#[test]
fn every_failure_has_its_exit_status_and_says_what_to_do() {
    let dir = scratch();
    let st = HostStack::start(DAEMON, dir.path(), &[], &[]);
    let run = |args: &[&str]| cli(&st, args, &[]);
    let file = dir.path().join("f.bin");
    std::fs::write(&file, b"payload").unwrap();
    run(&["mb", "blob://have"]).ok();
    run(&["cp", "-q", s(&file), "blob://have/f.bin"]).ok();

    // 2: usage.
    run(&["rm", "nota/url"]).fails(2, &["not a blob URL", "blob://<container>/<path>"]);
    run(&["cp", s(&file), s(&dir.path().join("x"))]).fails(2, &["cp(1)"]);
    run(&["cp", s(dir.path()), "blob://have/d"]).fails(2, &["is a directory", "-r"]);
    run(&["cp", "blob://have/", s(dir.path())]).fails(2, &["names no blob", "-r"]);
    run(&["mb", "blob://x"]).fails(2, &["400", "3-63"]);

    // 3: not found — local file (checked before the daemon is needed), container, blob, prefix.
    let missing = dir.path().join("nope.bin");
    let r = cli(
        &st,
        &["cp", s(&missing), "blob://have/x"],
        &[("BLOBRING_SOCKET", "/nonexistent/blobringd.sock")],
    );
    r.fails(3, &["cannot read", "nope.bin", "No such file"]);
    run(&["cp", s(&file), "blob://nocontainer/f.bin"])
        .fails(3, &["ContainerNotFound", "blobring mb blob://nocontainer"]);
    run(&["ls", "blob://nocontainer"]).fails(3, &["blobring mb blob://nocontainer"]);
    let dst = dir.path().join("got.bin");
    run(&["cp", "blob://have/missing.bin", s(&dst)])
        .fails(3, &["BlobNotFound", "blobring ls blob://have/"]);
    assert!(!dst.exists(), "a failed download leaves no file");
    assert!(
        !dir.path().join(".got.bin.blobring-partial").exists(),
        "and no partial file"
    );
    run(&["cat", "blob://have/missing.bin"]).fails(3, &["BlobNotFound"]);
    run(&["rm", "blob://have/missing.bin"]).fails(3, &["BlobNotFound"]);
    run(&["cp", "-r", "blob://have/nothing/", s(dir.path())])
        .fails(3, &["no blobs under blob://have/nothing/"]);
    run(&[
        "cp",
        "blob://have/f.bin",
        s(&dir.path().join("no/such/dir/f")),
    ])
    .fails(3, &["does not exist"]);

    // 4: the daemon is not running.
    let r = cli(
        &st,
        &["ls", "blob://have"],
        &[("BLOBRING_SOCKET", s(&dir.path().join("gone.sock")))],
    );
    r.fails(
        4,
        &[
            "cannot reach blobringd",
            "gone.sock",
            "blobring up",
            "BLOBRING_SOCKET",
        ],
    );

    // 5: wrong account key (the host checks SharedKey signatures).
    let bad = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;\
               AccountKey=d3Jvbmcga2V5IHdyb25nIGtleQ==;\
               BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;";
    cli(
        &st,
        &["ls", "blob://have"],
        &[("AZURE_STORAGE_CONNECTION_STRING", bad)],
    )
    .fails(5, &["403", "AZURE_STORAGE_CONNECTION_STRING"]);
    // A connection string that does not parse: usage.
    cli(
        &st,
        &["ls", "blob://have"],
        &[("AZURE_STORAGE_CONNECTION_STRING", "garbage")],
    )
    .fails(2, &["AZURE_STORAGE_CONNECTION_STRING"]);

    // 6: conflicts — container exists; -n onto an existing blob (up, blob→blob) or file (down).
    run(&["mb", "blob://have"]).fails(6, &["already exists", "ContainerAlreadyExists"]);
    run(&["cp", "-n", s(&file), "blob://have/f.bin"])
        .fails(6, &["BlobAlreadyExists", "--no-clobber"]);
    run(&["cp", "-n", "blob://have/f.bin", "blob://have/f.bin"]).fails(6, &["409"]);
    run(&["cp", "-n", "blob://have/f.bin", s(&file)]).fails(6, &["exists", "--no-clobber"]);
    // The blob is unchanged by the refused writes.
    assert_eq!(run(&["cat", "blob://have/f.bin"]).ok().stdout, b"payload");
}

#[test]
fn cp_checksum_md5_stores_the_blob_md5_and_catches_bytes_changed_at_rest() {
    use base64::Engine as _;
    use md5::Digest as _;
    let md5 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(b));
    let dir = scratch();
    let st = HostStack::start(DAEMON, dir.path(), &[], &["--arena-size", "67108864"]);
    let run = |args: &[&str]| cli(&st, args, &[]);
    let svc = blobring::blob::BlobService::new(
        blobring::Client::connect(&st.daemon.socket).expect("connect"),
        blobring::blob::AccountConfig::emulator(),
    );
    let stored_md5 = |blob: &str| {
        blobring::block_on(svc.head_blob("sums", blob, &Default::default()))
            .expect("HEAD")
            .content_md5
    };
    run(&["mb", "blob://sums"]).ok();
    let src = dir.path().join("src.bin");
    let body = pattern(5 * 1024 * 1024 + 99, 9);
    std::fs::write(&src, &body).unwrap();

    let up = ["cp", "--checksum", "md5", "--chunk-mib", "1"];
    let up = run(&[&up[..], &[s(&src), "blob://sums/f.bin"]].concat()).ok();
    assert_eq!(up.summary("1 file"), body.len() as u64);
    assert_eq!(
        stored_md5("f.bin"),
        Some(md5(&body)),
        "--checksum md5 stores the MD5"
    );
    run(&["cp", "--checksum", "crc64", s(&src), "blob://sums/crc.bin"]).ok();
    assert_eq!(stored_md5("crc.bin"), None, "--checksum crc64 stores none");

    let down = dir.path().join("down");
    std::fs::create_dir(&down).unwrap();
    let out = down.join("f.bin");
    run(&["cp", "--checksum", "md5", "blob://sums/f.bin", s(&out)]).ok();
    assert!(std::fs::read(&out).unwrap() == body, "verified download");
    std::fs::remove_file(&out).unwrap();

    st.corrupt_stored_byte("sums", "f.bin", 3 << 20);
    run(&["cp", "--checksum", "md5", "blob://sums/f.bin", s(&out)]).fails(
        1,
        &[
            "integrity check failed",
            "sums/f.bin",
            &md5(&body),
            "re-upload",
        ],
    );
    assert_eq!(
        std::fs::read_dir(&down).unwrap().count(),
        0,
        "a failed download leaves nothing behind"
    );
    run(&["cp", "blob://sums/f.bin", s(&out)]).ok();
    let got = std::fs::read(&out).unwrap();
    assert!(
        got != body && got.len() == body.len(),
        "unverified: the changed bytes"
    );

    let bad = run(&["cp", "--checksum", "sha1", s(&src), "blob://sums/g.bin"]);
    assert_eq!(bad.code, 2, "usage error: {}", bad.stderr);
    assert!(
        bad.stderr.contains("crc64") && bad.stderr.contains("md5"),
        "{}",
        bad.stderr
    );
}

#[test]
fn progress_bar_is_drawn_on_a_terminal() {
    let dir = scratch();
    let st = HostStack::start(DAEMON, dir.path(), &[], &["--arena-size", "67108864"]);
    cli(&st, &["mb", "blob://tty"], &[]).ok();
    let f = dir.path().join("big.bin");
    std::fs::write(&f, pattern(48 << 20, 9)).unwrap();
    // script(1) runs the CLI on a pty (stdin, stdout and stderr all the terminal) and copies
    // what it printed to our stdout.
    let tty = |extra: &str| {
        let cmd = format!(
            "stty cols 200; {CLI} cp --chunk-mib 1 --parallel 2 {extra} {} blob://tty/big.bin",
            s(&f)
        );
        let o = Command::new("script")
            .args(["-qefc", &cmd, "/dev/null"])
            .env("BLOBRING_SOCKET", &st.daemon.socket)
            .env_remove("AZURE_STORAGE_CONNECTION_STRING")
            .env("TERM", "xterm")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("script(1) from util-linux");
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let out = tty("");
    assert!(
        out.contains("ETA") && out.contains("MiB/s") && out.contains("big.bin"),
        "bar with rate, ETA and file name expected on a terminal: {out:?}"
    );
    assert!(
        out.contains(&format!(
            "copied 1 file, 48.00 MiB ({} bytes) in ",
            48u64 << 20
        )),
        "{out:?}"
    );
    let quiet = tty("-q");
    assert!(
        !quiet.contains("ETA") && !quiet.contains("copied"),
        "-q hides the bar and the summary: {quiet:?}"
    );
}
