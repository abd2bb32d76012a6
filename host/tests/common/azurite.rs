//! Test fixture: the Azurite emulator (npm `azurite`, installed by `scripts/azurite.sh`) on a
//! free loopback port with in-memory persistence, killed on drop (also when a test panics).
//!
//! The binary is `$BLOBRING_AZURITE` or `target/azurite/node_modules/.bin/azurite-blob` under
//! the workspace root. A missing binary fails the test (never skips it): run
//! `scripts/azurite.sh` first.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Environment variable naming the `azurite-blob` binary.
pub const AZURITE_ENV: &str = "BLOBRING_AZURITE";
/// How long Azurite may take to start listening and to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running Azurite blob service.
pub struct Azurite {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    _cwd: tempfile::TempDir,
}

/// Where `azurite-blob` is expected; panics with what to run when it is missing.
pub fn azurite_binary() -> PathBuf {
    let path = match std::env::var_os(AZURITE_ENV) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("host/ has a parent (the workspace root)")
            .join("target/azurite/node_modules/.bin/azurite-blob"),
    };
    assert!(
        path.is_file(),
        "Azurite not found at {}: run scripts/azurite.sh (it installs azurite@3.37.0 into \
         target/azurite/), or set {AZURITE_ENV} to an azurite-blob binary",
        path.display()
    );
    path
}

impl Azurite {
    /// Start `azurite-blob` on `127.0.0.1:0` (it picks a free port and prints it) and wait
    /// until it answers HTTP.
    pub fn start() -> Azurite {
        let bin = azurite_binary();
        let cwd = tempfile::tempdir().expect("temp dir for Azurite");
        let mut child = Command::new(&bin)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                "0",
                "--inMemoryPersistence",
                "--extentMemoryLimit",
                "1024",
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
            ])
            .current_dir(cwd.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}; is Node.js installed? (run scripts/azurite.sh)",
                    bin.display()
                )
            });
        let stdout = child.stdout.take().expect("stdout piped");
        // Guard first, so the child is killed if anything below panics.
        let mut az = Azurite {
            child,
            url: String::new(),
            _cwd: cwd,
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // "Azurite Blob service successfully listens on http://127.0.0.1:PORT"
                if let Some(i) = line.find("listens on http://") {
                    let _ = tx.send(line[i + "listens on ".len()..].trim().to_owned());
                }
                // Keep draining so Azurite never blocks on a full pipe.
            }
        });
        az.url = match rx.recv_timeout(START_TIMEOUT) {
            Ok(url) => url,
            Err(_) => {
                let status = az.child.try_wait().ok().flatten();
                panic!(
                    "Azurite did not report its address within {START_TIMEOUT:?} (exit status: {status:?})"
                );
            }
        };
        az.wait_ready();
        az
    }

    /// Poll until a plain GET gets any HTTP answer.
    fn wait_ready(&mut self) {
        let addr = self
            .url
            .strip_prefix("http://")
            .expect("http url")
            .to_owned();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!("Azurite exited during start-up: {s}");
            }
            let answered = (|| -> std::io::Result<bool> {
                let mut s = TcpStream::connect(&addr)?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                write!(
                    s,
                    "GET /devstoreaccount1?comp=list HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
                )?;
                let mut buf = Vec::new();
                s.read_to_end(&mut buf)?;
                Ok(buf.starts_with(b"HTTP/1.1 "))
            })();
            if matches!(answered, Ok(true)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Azurite at {} did not answer within {START_TIMEOUT:?}: {answered:?}",
                self.url
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Account base URL, `http://127.0.0.1:PORT/devstoreaccount1`.
    pub fn account_url(&self) -> String {
        format!("{}/devstoreaccount1", self.url)
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
