//! Shared helpers for host integration tests: start the real `blobring-host` binary on a free
//! loopback port and kill it on drop (also when a test panics), or check that it refuses to
//! start; signed and unsigned raw requests; an executor without auth; object_store's suite.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use blobring_host::{
    Backend, EMULATOR_ACCOUNT, EMULATOR_KEY, Executor, ExecutorConfig, Faults, SharedKeyAuth,
};
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::integration::*;

pub mod vmbus;

/// `blobring-host <args>` started with `RUST_LOG=warn`, no stdin, stdout piped (for the lines
/// it prints) and stderr passed through.
pub fn spawn_host<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Child {
    Command::new(env!("CARGO_BIN_EXE_blobring-host"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn blobring-host")
}

/// Runs `blobring-host <args>`, which must fail; returns what it wrote to stderr.
pub fn host_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_blobring-host"))
        .args(args)
        .output()
        .expect("run blobring-host");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} should fail: {err}");
    err
}

/// An executor over `store` for the emulator account, without auth or faults.
pub fn plain_executor(store: impl Into<Backend>) -> Executor {
    Executor::new(
        store,
        ExecutorConfig {
            account: EMULATOR_ACCOUNT.into(),
            auth: None,
            faults: Faults::default(),
        },
    )
}

/// A running host process.
pub struct Host {
    child: Child,
    /// `http://127.0.0.1:PORT` (or `https://…` with `--https`).
    pub url: String,
    /// The lines the host prints after its address.
    lines: mpsc::Receiver<String>,
}

impl Host {
    /// Start `blobring-host --store <store> --http 127.0.0.1:0 --container test <extra>`.
    pub fn start(store: &str, extra: &[&str]) -> Host {
        let args = [
            "--store",
            store,
            "--http",
            "127.0.0.1:0",
            "--container",
            "test",
        ];
        Host::spawn(&[&args[..], extra].concat())
    }

    /// Start `blobring-host <args>` and wait (≤ 30 s) for its `listening on <url>` line.
    pub fn spawn(args: &[&str]) -> Host {
        let mut child = spawn_host(args);
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, lines) = mpsc::channel();
        // Keep draining, so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        // Guard first, so the child is killed if we panic below.
        let mut host = Host {
            child,
            url: String::new(),
            lines,
        };
        while host.url.is_empty() {
            let line = host.next_line();
            if let Some(u) = line.strip_prefix("listening on ") {
                host.url = u.trim().to_owned();
            }
        }
        host
    }

    /// The next line the host prints (≤ 30 s).
    pub fn next_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .expect("blobring-host printed no further line within 30 s")
    }

    /// Kill the host and wait for it.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Account base URL, `http://127.0.0.1:PORT/devstoreaccount1`.
    pub fn account_url(&self) -> String {
        format!("{}/{}", self.url, EMULATOR_ACCOUNT)
    }

    /// Send one raw request signed with the emulator key; returns (status, headers, body).
    pub fn request(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        signed_request(&self.url, method, path_and_query, headers, body)
    }

    /// [`Host::request`] whose answer must have `status`; returns its headers and body.
    pub fn expect(
        &self,
        status: u16,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (Headers, Vec<u8>) {
        let (s, h, b) = self.request(method, path_and_query, headers, body);
        assert_eq!(
            s,
            status,
            "{method} {path_and_query}: {}",
            String::from_utf8_lossy(&b)
        );
        (h, b)
    }
}

/// Send one raw request to `url` (`http://127.0.0.1:PORT`), signed with the emulator key, on a
/// connection of its own; returns (status, headers, body).
pub fn signed_request(
    url: &str,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let addr = url.strip_prefix("http://").expect("http url");
    let mut hm = http::HeaderMap::new();
    for (k, v) in headers {
        hm.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    hm.insert("x-ms-version", http::HeaderValue::from_static("2023-11-03"));
    hm.insert(
        "x-ms-date",
        http::HeaderValue::from_str(&httpdate::fmt_http_date(std::time::SystemTime::now()))
            .unwrap(),
    );
    hm.insert("content-length", body.len().into());
    let auth = SharedKeyAuth::new(EMULATOR_ACCOUNT, EMULATOR_KEY).unwrap();
    let sig = auth.authorization(&method.parse().unwrap(), path_and_query, &hm);
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: {sig}\r\n"
    );
    for (k, v) in &hm {
        head.push_str(&format!("{}: {}\r\n", k, v.to_str().unwrap()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read response");
    parse_response(&buf)
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Header lookup in a raw response.
pub fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Just the URL of a host started by another process.
pub struct HostRef {
    /// `http://127.0.0.1:PORT`
    pub url: String,
}

impl HostRef {
    /// Wrap a URL.
    pub fn new(url: String) -> Self {
        HostRef { url }
    }
}

/// GET `pq` without any Authorization header; returns (status, headers, body).
pub fn unsigned_get(url: &str, pq: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    unsigned_get_with(url, pq, &[])
}

/// [`unsigned_get`] with the header `lines` (`Name: value` each) after `Host`.
pub fn unsigned_get_with(url: &str, pq: &str, lines: &[&str]) -> (u16, Headers, Vec<u8>) {
    let addr = url.strip_prefix("http://").unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("GET {pq} HTTP/1.1\r\nHost: {addr}\r\n");
    for l in lines {
        head.push_str(l);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    parse_response(&buf)
}

/// Splits a whole HTTP/1.1 response into (status, lower-cased headers, body).
pub fn parse_response(buf: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let (status, headers, n) = parse_head(buf).expect("partial response");
    (status, headers, buf[n..].to_vec())
}

/// Response headers, names lower-cased, in order.
pub type Headers = Vec<(String, String)>;

/// Parses a response head: (status, lower-cased headers, head length), `None` while the head
/// is incomplete; panics when it is not HTTP.
pub fn parse_head(buf: &[u8]) -> Option<(u16, Headers, usize)> {
    let mut hdrs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut hdrs);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return None,
        Err(e) => panic!(
            "response head does not parse ({e}): {:?}",
            String::from_utf8_lossy(buf)
        ),
    };
    let h = r
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    Some((r.code.expect("status"), h, n))
}

/// object_store's Azure client for `container` at `account_url`, with the emulator account.
pub fn azure(account_url: &str, container: &str) -> MicrosoftAzure {
    MicrosoftAzureBuilder::new()
        .with_account(EMULATOR_ACCOUNT)
        .with_access_key(EMULATOR_KEY)
        .with_container_name(container)
        .with_endpoint(account_url.to_owned())
        .with_allow_http(true)
        .with_http_connector(MarkerHttpConnector::default())
        .build()
        .expect("build MicrosoftAzure")
}

/// object_store's private `signing` check: a SAS URL from `signed_url` GETs `file.txt` (put
/// first) from the host at `url` without any SharedKey. Returns the URL's path and query, for
/// a tampered copy.
pub async fn sas_get(store: &MicrosoftAzure, url: &str) -> String {
    use object_store::signer::Signer;
    use object_store::{ObjectStoreExt, path::Path};
    let path = Path::from("file.txt");
    store.put(&path, "hello world".into()).await.unwrap();
    let signed = store
        .signed_url(http::Method::GET, &path, Duration::from_secs(60))
        .await
        .unwrap();
    let pq = signed.as_str()[url.len()..].to_owned();
    let (status, _, body) = unsigned_get(url, &pq);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"hello world");
    pq
}

/// The functions of object_store's `integration` suite that object_store itself runs against
/// Azurite (its `azure_blob_test`); callers add the ones that need more than a store.
pub async fn azurite_suite(integration: &MicrosoftAzure) {
    put_get_delete_list(integration).await;
    list_with_offset_exclusivity(integration).await;
    get_opts(integration).await;
    list_uses_directories_correctly(integration).await;
    list_with_delimiter(integration).await;
    rename_and_copy(integration).await;
    copy_if_not_exists(integration).await;
    stream_get(integration).await;
    put_opts(integration, true).await;
    multipart(integration, integration).await;
    multipart_put_part_out_of_order(integration, integration).await;
    multipart_race_condition(integration, false).await;
    multipart_out_of_order(integration).await;
    list_paginated(integration, integration).await;
    response_extensions(integration, true).await;
}
