//! Shared by the VMBus tests (`vmbus_path.rs`, `vmbus_passthrough.rs`): the real `blobring-host`
//! serving the `sim` bus in a scratch directory (killed and reaped on drop), a guest driver
//! connected to it, and answers parsed out of completions.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blobring_host::vsp::VSP_OK;
use blobring_vmbus::sim::driver::{BlobDriver, Completion, DriverConfig};

/// How long start-up and driver connection may take.
const START_LIMIT: Duration = Duration::from_secs(10);

/// A `blobring-host` process serving the bus in a scratch directory.
pub struct VmbusHost {
    child: Child,
    /// The bus socket.
    pub socket: PathBuf,
    /// With `--http`: the REST address (`127.0.0.1:PORT`).
    pub http: Option<String>,
    channels: u32,
    _dir: tempfile::TempDir,
}

impl Drop for VmbusHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl VmbusHost {
    /// `--socket DIR/h.sock --store STORE --channels N` plus `extra` (`store` `None`:
    /// `fs:DIR/store`); waits (≤ 10 s) for the bus socket and, with `--http`, the REST address.
    pub fn start(store: Option<&str>, channels: u32, extra: &[&str]) -> VmbusHost {
        let dir = tempfile::Builder::new()
            .prefix("brh")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let socket = dir.path().join("h.sock");
        let store = store.map_or_else(
            || format!("fs:{}", dir.path().join("store").display()),
            str::to_owned,
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_blobring-host"))
            .arg("--socket")
            .arg(&socket)
            .args(["--store", &store, "--channels", &channels.to_string()])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn blobring-host");
        let stdout = child.stdout.take().expect("stdout");
        let mut host = VmbusHost {
            child,
            socket,
            http: None,
            channels,
            _dir: dir,
        };
        let wants_http = extra.contains(&"--http");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + START_LIMIT;
        while wants_http && host.http.is_none() {
            assert!(Instant::now() < deadline, "host did not print its address");
            let line = lines.next().expect("host exited").expect("read stdout");
            if let Some(a) = line.strip_prefix("listening on http://") {
                host.http = Some(a.to_owned());
            }
        }
        // Keep draining stdout so the host never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        while !host.socket.exists() {
            assert!(Instant::now() < deadline, "host socket did not appear");
            if let Ok(Some(st)) = host.child.try_wait() {
                panic!("blobring-host exited early: {st}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        host
    }

    /// A guest driver on all the host's channels, with the default configuration.
    pub fn driver(&self) -> BlobDriver {
        self.driver_with(DriverConfig::default())
    }

    /// A guest driver on all the host's channels, retrying the connection for up to 10 s.
    pub fn driver_with(&self, cfg: DriverConfig) -> BlobDriver {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            match BlobDriver::connect_with(&self.socket, self.channels, cfg) {
                Ok(d) => return d,
                Err(e) => {
                    assert!(Instant::now() < deadline, "driver connect: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// A parsed answer: status, headers (names lower-cased) and body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// The value of header `name` (any case).
    pub fn h(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parse a complete response head; returns the answer without body and the head length
/// (`None`: the head is not complete yet).
pub fn parse_head(buf: &[u8]) -> Option<(Resp, usize)> {
    let (status, headers, n) = super::parse_head(buf)?;
    let body = Vec::new();
    Some((
        Resp {
            status,
            headers,
            body,
        },
        n,
    ))
}

/// The answer a completion carries: `VSP_OK`, a response head exactly `response_len` long, and
/// the body from the data buffer.
pub fn completion_resp(c: &Completion) -> Resp {
    assert_eq!(
        c.vsp.error, VSP_OK,
        "VSP error for {}: {:?}",
        c.trans_id, c.vsp
    );
    let (mut resp, n) = parse_head(&c.response_head).expect("complete response head");
    assert_eq!(
        n,
        c.response_head.len(),
        "response_len covers exactly the head"
    );
    resp.body = c.body.clone();
    resp
}
