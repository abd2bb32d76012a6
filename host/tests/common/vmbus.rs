//! Shared by the VMBus tests (`vmbus_path.rs`, `vmbus_passthrough.rs`): the real `blobring-host`
//! serving the `sim` bus in a scratch directory (killed and reaped on drop), a guest driver
//! connected to it, and answers parsed out of completions.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use blobring_host::vsp::VspStatus;
use blobring_host::{EMULATOR_ACCOUNT, EMULATOR_KEY, SharedKeyAuth};
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
        let socket_arg = socket.to_str().expect("UTF-8 scratch path");
        let channels_arg = channels.to_string();
        let args = [
            "--socket",
            socket_arg,
            "--store",
            &store,
            "--channels",
            &channels_arg,
        ];
        let mut child = super::spawn_host(args.iter().chain(extra));
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

/// The answer a completion carries: `VspStatus::Ok`, a response head exactly `response_len` long, and
/// the body from the data buffer.
pub fn completion_resp(c: &Completion) -> Resp {
    assert_eq!(
        c.vsp.error,
        VspStatus::Ok.code(),
        "VSP error for {}: {:?}",
        c.trans_id,
        c.vsp
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

/// A request head: the request line for `path_and_query`, then `lines` (`Name: value` each),
/// then the blank line.
pub fn request_head<L: AsRef<str>>(
    method: &str,
    path_and_query: &str,
    lines: impl IntoIterator<Item = L>,
) -> Vec<u8> {
    let mut s = format!("{method} {path_and_query} HTTP/1.1\r\n");
    for l in lines {
        s.push_str(l.as_ref());
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// A head for `/devstoreaccount1/<path>` signed with the emulator key: `Host: <host>`,
/// `Authorization`, then `x-ms-date`, `x-ms-version`, `extra` and (when given) `Content-Length`.
pub fn signed_head(
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    content_length: Option<usize>,
    host: &str,
) -> Vec<u8> {
    let mut hm = http::HeaderMap::new();
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    hm.insert("x-ms-date", date.parse().unwrap());
    hm.insert("x-ms-version", http::HeaderValue::from_static("2023-11-03"));
    for (k, v) in extra {
        hm.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    if let Some(n) = content_length {
        hm.insert("content-length", n.into());
    }
    let pq = format!("/{EMULATOR_ACCOUNT}/{path}");
    let auth = SharedKeyAuth::new(EMULATOR_ACCOUNT, EMULATOR_KEY).unwrap();
    let sig = auth.authorization(&method.parse().unwrap(), &pq, &hm);
    let fixed = [format!("Host: {host}"), format!("Authorization: {sig}")];
    let lines = hm
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()));
    request_head(method, &pq, fixed.into_iter().chain(lines))
}

/// Bytes of a recognisable pattern (`seed` varies it).
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// Standard base64 of `s`.
pub fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The Put Block path of block `id` (base64, `=` escaped) of `blob`.
pub fn block_path(blob: &str, id: &str) -> String {
    format!("{blob}?comp=block&blockid={}", b64(id).replace('=', "%3D"))
}

/// A Put Block List body naming the blocks `ids` (base64 of each), all `Latest`, in order.
pub fn block_list_xml(ids: &[&str]) -> String {
    let latest: String = ids
        .iter()
        .map(|id| format!("<Latest>{}</Latest>", b64(id)))
        .collect();
    format!("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>{latest}</BlockList>")
}

/// `r` is the 206 answer to `bytes=<first>-<last>` of `whole`: its Content-Range and bytes.
pub fn assert_ranged(r: &Resp, whole: &[u8], first: usize, last: usize) {
    assert_eq!(r.status, 206);
    let range = format!("bytes {first}-{last}/{}", whole.len());
    assert_eq!(r.h("content-range"), Some(range.as_str()));
    assert!(r.body == whole[first..=last], "ranged GET is byte-exact");
}
