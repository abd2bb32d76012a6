//! `passthrough:<url>`: forward every Blob request to a real Blob endpoint (Azure over https
//! with rustls, Azurite over http), so that on a VM without the host service the same stack
//! still serves clients, through one shared keep-alive connection pool.
//!
//! # Design: forward HTTP requests, not `Store` calls
//!
//! The executor does not map requests onto [`Store`](crate::Store) calls when its backend is
//! an upstream: after its own checks (fault injection, SharedKey/SAS verification of the *client's*
//! signature) it hands the request itself (method, path after the account, query, headers,
//! body) to [`Passthrough::forward`], which re-signs it for the upstream and returns the
//! upstream's status, headers and body unchanged. Mapping `Store` calls onto REST instead would
//!
//! - lose every header the trait does not model (`x-ms-range-get-content-md5`, `Content-MD5`
//!   checks, `x-ms-tags`, `x-ms-access-tier`, leases, version ids, ...), so clients would see a
//!   subset of the service instead of the service;
//! - re-implement the service's semantics (conditions, ranges, 416/304 rules, block protocol,
//!   list pagination markers) in the host a second time, and answer with *our* judgement where
//!   the upstream would answer with its own (the point of passthrough is that it answers);
//! - cost a round trip per trait call (`open` then `read_to`, `container` then `put_blob`).
//!
//! The price of forwarding is that a response body is held in memory once (the upstream's
//! bytes, then copied into the caller's data buffer). A success body that does not fit the
//! caller's data buffer is the same
//! [`ExecuteError::BodyTooLarge`](crate::ExecuteError::BodyTooLarge) as for the other stores,
//! decided from the upstream's `Content-Length` *before* downloading it, so a client cannot
//! make the host buffer a blob its data buffer could never take. Blob Batch is the one operation the executor still splits itself: its
//! sub-requests carry signatures for this host, so each is verified here and forwarded (and
//! re-signed) on its own. Copy Blob sources naming this host's account are rewritten to the
//! upstream's URL, since the upstream cannot reach the host's loopback address.
//!
//! A passthrough upstream is not a [`Store`](crate::Store): the executor picks it or a local
//! store once, at the top of its dispatch ([`Backend`](crate::Backend)). The host's own
//! requests outside the executor (`create_container` for `--container`, and the container check
//! of a Blob Batch) are upstream requests of their own.
//!
//! # Upstream, account and key
//!
//! `passthrough:http://127.0.0.1:10000/devstoreaccount1` (path style: the account is the first
//! path segment, as for Azurite) or `passthrough:https://<account>.blob.core.windows.net`
//! (the account is the first host label). Requests are re-signed with SharedKey using the key
//! in the environment variable `BLOBRING_UPSTREAM_KEY` (Base64; kept out of the command line so
//! it does not show in `ps`); for the emulator account `devstoreaccount1` the well-known
//! emulator key is the default. Without a key, requests go upstream unsigned (anonymous access
//! to public containers). A SAS in a client request was verified by the executor and is
//! replaced by the SharedKey signature.
//!
//! # Connections, runtime and timeouts
//!
//! One `reqwest` client (hyper 1 underneath, rustls with aws-lc-rs: the same TLS stack
//! object_store's Azure backend uses, so the workspace builds one) holds the keep-alive pool;
//! it runs on a small tokio runtime owned by the store ([`UPSTREAM_THREADS`] threads), so
//! synchronous callers (VSP worker threads, the REST front end's blocking pool) share it
//! without an async context of their own. Connecting times out after [`CONNECT_TIMEOUT`], each
//! read after [`READ_TIMEOUT`]; an unreachable upstream answers 502 `UpstreamUnreachable`, a
//! timeout 504 `UpstreamTimeout`, both with a message naming the URL.
//!
//! **Trusts:** the operator's URL and key. The upstream's answers are passed back as they are
//! (minus hop-by-hop headers); it is the service the client asked for.

use std::future::Future;
use std::time::{Duration, SystemTime};

use blobring_proto::header::{
    AUTHORIZATION, CONTENT_LENGTH, X_MS_DATE, X_MS_ERROR_CODE, X_MS_VERSION,
};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::auth::{EMULATOR_ACCOUNT, EMULATOR_KEY, SharedKeyAuth};
use crate::store::{StoreError, valid_container_name};

/// Environment variable holding the upstream account key (Base64).
pub const UPSTREAM_KEY_ENV: &str = "BLOBRING_UPSTREAM_KEY";
/// Connect timeout towards the upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of each read from the upstream (not of the whole transfer: large bodies may take
/// longer, as long as bytes keep coming).
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle keep-alive connections are closed after this long.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Worker threads of the upstream runtime (I/O only; the bytes are copied by the callers).
pub const UPSTREAM_THREADS: usize = 2;
/// Service version sent when the client named none (SharedKey requires one).
const UPSTREAM_VERSION: &str = blobring_proto::API_VERSION;

/// Query values are percent-encoded except RFC 3986 unreserved characters.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// Path segments: like [`QUERY`], keeping `/` between segments.
const PATH: &AsciiSet = &QUERY.remove(b'/');

/// Query parameters of a SAS signature, dropped when the request is re-signed with SharedKey.
const SAS_PARAMS: &[&str] = &[
    "sv", "ss", "srt", "sp", "se", "st", "spr", "sip", "sig", "sr", "si", "sdd", "ses", "skoid",
    "sktid", "skt", "ske", "sks", "skv", "saoid", "suoid", "scid",
];

/// Request headers that concern one connection, not the request (RFC 9110 §7.6.1), plus the
/// ones the forwarder sets itself.
const DROP_REQUEST: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "host",
    AUTHORIZATION,
    CONTENT_LENGTH,
];
/// Response headers not passed back (the caller's transport frames the body itself).
const DROP_RESPONSE: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The upstream's answer to one forwarded request.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// Status as the upstream sent it.
    pub status: StatusCode,
    /// Headers without hop-by-hop ones. `Content-Length` is kept (a HEAD answer needs it).
    pub headers: HeaderMap,
    /// The whole body (empty when `too_large` is set).
    pub body: Bytes,
    /// A success body longer than the caller's limit: its length; it was not downloaded.
    pub too_large: Option<u64>,
}

/// Shuts the upstream runtime down without blocking, so the store may be dropped anywhere,
/// including inside another runtime (dropping a `Runtime` there would panic).
struct RuntimeGuard(Option<tokio::runtime::Runtime>);

impl Drop for RuntimeGuard {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A real Blob endpoint that requests are forwarded to. See the module docs.
pub struct Passthrough {
    /// The URL as configured, without a trailing `/`.
    url: String,
    /// `scheme://authority`.
    origin: String,
    /// Path before the container, `/devstoreaccount1` for path-style, empty otherwise.
    base_path: String,
    account: String,
    signer: Option<SharedKeyAuth>,
    client: reqwest::Client,
    handle: tokio::runtime::Handle,
    _rt: RuntimeGuard,
}

impl std::fmt::Debug for Passthrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passthrough")
            .field("url", &self.url)
            .field("account", &self.account)
            .field("signed", &self.signer.is_some())
            .finish()
    }
}

fn bad_url(url: &str, reason: impl Into<String>) -> StoreError {
    StoreError::BadUpstream {
        url: url.to_owned(),
        reason: reason.into(),
    }
}

/// `error: cause: cause` for an error and its sources.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}

impl Passthrough {
    /// A passthrough to `url`, taking the key from [`UPSTREAM_KEY_ENV`] (or the
    /// emulator key for `devstoreaccount1`).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let key = std::env::var(UPSTREAM_KEY_ENV)
            .ok()
            .filter(|k| !k.is_empty());
        Self::with_key(url, key.as_deref())
    }

    /// A passthrough to `url`, signing with `key` (Base64) when given; with
    /// `None`, the emulator account uses the emulator key and other accounts go unsigned.
    pub fn with_key(url: &str, key: Option<&str>) -> Result<Self, StoreError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| bad_url(url, e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad_url(url, "the scheme must be http or https"));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad_url(url, "the URL must not have a query or fragment"));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| bad_url(url, "the URL has no host"))?;
        let origin = match parsed.port() {
            Some(p) => format!("{}://{host}:{p}", parsed.scheme()),
            None => format!("{}://{host}", parsed.scheme()),
        };
        let base_path = parsed.path().trim_end_matches('/').to_owned();
        let first_segment = base_path.trim_start_matches('/').split('/').next();
        let account = match first_segment {
            Some(seg) if !seg.is_empty() => {
                if base_path.trim_start_matches('/').contains('/') {
                    return Err(bad_url(
                        url,
                        "the path may hold only the account (path style), e.g. /devstoreaccount1",
                    ));
                }
                seg.to_owned()
            }
            _ => match host.split_once('.') {
                Some((label, _))
                    if !label.is_empty()
                        && host.parse::<std::net::Ipv4Addr>().is_err()
                        && !host.starts_with('[') =>
                {
                    label.to_owned()
                }
                _ => {
                    return Err(bad_url(
                        url,
                        "cannot tell the account: use a path-style URL (http://127.0.0.1:10000/devstoreaccount1) or https://<account>.blob.core.windows.net",
                    ));
                }
            },
        };
        let key = match key {
            Some(k) => Some(k),
            None if account == EMULATOR_ACCOUNT => Some(EMULATOR_KEY),
            None => None,
        };
        let signer = key
            .map(|k| SharedKeyAuth::new(&account, k))
            .transpose()
            .map_err(|e| {
                bad_url(
                    url,
                    format!("{e} (account {account:?}, key from {UPSTREAM_KEY_ENV})"),
                )
            })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(UPSTREAM_THREADS)
            .thread_name("blobring-upstream")
            .enable_all()
            .build()
            .map_err(|e| StoreError::io("tokio runtime for the passthrough store", e))?;
        let client = {
            let _enter = rt.enter();
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(READ_TIMEOUT)
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .tcp_nodelay(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| bad_url(url, format!("cannot build the HTTP client: {}", chain(&e))))?
        };
        Ok(Passthrough {
            url: format!("{origin}{base_path}"),
            origin,
            base_path,
            account,
            signer,
            client,
            handle: rt.handle().clone(),
            _rt: RuntimeGuard(Some(rt)),
        })
    }

    /// Short description for logs: `passthrough:<url>`.
    pub fn describe(&self) -> String {
        format!("passthrough:{}", self.url)
    }

    /// The upstream URL (`scheme://authority[/account]`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The upstream account.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// Whether requests are re-signed with SharedKey.
    pub fn signs(&self) -> bool {
        self.signer.is_some()
    }

    /// The upstream URL of a blob (for rewriting Copy Blob sources).
    pub fn blob_url(&self, container: &str, blob: &str) -> String {
        format!(
            "{}/{}/{}",
            self.url,
            utf8_percent_encode(container, PATH),
            utf8_percent_encode(blob, PATH)
        )
    }

    /// The upstream's path and query for `path` (after the account) and the decoded `query`:
    /// the upstream's base path first, each pair re-encoded, and the client's SAS parameters
    /// dropped when this store signs with its own key.
    fn path_and_query(&self, path: &str, query: &[(String, String)]) -> String {
        let signing = self.signer.is_some();
        let mut pq = format!("{}{}", self.base_path, path);
        if pq.is_empty() {
            pq.push('/');
        }
        let mut sep = '?';
        for (k, v) in query {
            if signing && SAS_PARAMS.iter().any(|p| k.eq_ignore_ascii_case(p)) {
                continue;
            }
            pq.push(sep);
            sep = '&';
            pq.extend(utf8_percent_encode(k, QUERY));
            pq.push('=');
            pq.extend(utf8_percent_encode(v, QUERY));
        }
        pq
    }

    /// The headers sent upstream: the client's, less those of its connection and those the
    /// forwarder sets itself ([`DROP_REQUEST`]), with the body's length, and — when this store
    /// signs — a fresh `x-ms-date`, a version if the client named none, and our
    /// `Authorization`.
    fn upstream_headers(
        &self,
        method: &Method,
        pq: &str,
        headers: &HeaderMap,
        body_len: usize,
    ) -> Result<HeaderMap, StoreError> {
        let mut h = HeaderMap::with_capacity(headers.len() + 4);
        for (k, v) in headers {
            if !DROP_REQUEST.contains(&k.as_str()) {
                h.append(k.clone(), v.clone());
            }
        }
        if body_len > 0 || matches!(*method, Method::PUT | Method::POST) {
            h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body_len));
        }
        if let Some(signer) = &self.signer {
            h.remove(http::header::DATE);
            let now = httpdate::fmt_http_date(SystemTime::now());
            h.insert(
                HeaderName::from_static(X_MS_DATE),
                HeaderValue::from_str(&now).expect("HTTP dates are ASCII"),
            );
            if !h.contains_key(X_MS_VERSION) {
                h.insert(
                    HeaderName::from_static(X_MS_VERSION),
                    HeaderValue::from_static(UPSTREAM_VERSION),
                );
            }
            let auth = signer.authorization(method, pq, &h);
            h.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&auth).map_err(|_| StoreError::UpstreamUnreachable {
                    url: self.url.clone(),
                    reason: "the signature is not a valid header value".into(),
                })?,
            );
        }
        Ok(h)
    }

    /// Forward one request and wait for the whole answer. Blocking: call from a thread that
    /// may block (a VSP worker, `spawn_blocking`).
    ///
    /// `path` is the wire-form (percent-encoded) path after the account, `""` or `/c[/b]`;
    /// `query` the decoded query pairs (SAS parameters are dropped when re-signing). A success
    /// body longer than `max_body` is not downloaded: its size comes back in
    /// [`Forwarded::too_large`] (the connection is then closed rather than drained).
    pub fn forward(
        &self,
        method: &Method,
        path: &str,
        query: &[(String, String)],
        headers: &HeaderMap,
        body: Bytes,
        max_body: Option<u64>,
    ) -> Result<Forwarded, StoreError> {
        let pq = self.path_and_query(path, query);
        let h = self.upstream_headers(method, &pq, headers, body.len())?;
        let target = format!("{}{}", self.origin, pq);
        let request = self
            .client
            .request(method.clone(), &target)
            .headers(h)
            .body(body);
        let url = self.url.clone();
        // A HEAD answer describes a body it does not carry.
        let max_body = max_body.filter(|_| *method != Method::HEAD);
        self.run(async move {
            let map_err = |e: reqwest::Error| {
                if e.is_timeout() {
                    StoreError::UpstreamTimeout {
                        url: url.clone(),
                        reason: chain(&e),
                    }
                } else {
                    StoreError::UpstreamUnreachable {
                        url: url.clone(),
                        reason: chain(&e),
                    }
                }
            };
            let mut resp = request.send().await.map_err(map_err)?;
            let status = resp.status();
            let mut headers = resp.headers().clone();
            for n in DROP_RESPONSE {
                headers.remove(*n);
            }
            let limit = max_body.filter(|_| status.is_success()).unwrap_or(u64::MAX);
            if let Some(len) = resp.content_length()
                && len > limit
            {
                return Ok(Forwarded {
                    status,
                    headers,
                    body: Bytes::new(),
                    too_large: Some(len),
                });
            }
            let mut body = bytes::BytesMut::new();
            while let Some(chunk) = resp.chunk().await.map_err(map_err)? {
                body.extend_from_slice(&chunk);
                if body.len() as u64 > limit {
                    // No (or a lying) Content-Length: report what we know is needed.
                    return Ok(Forwarded {
                        status,
                        headers,
                        body: Bytes::new(),
                        too_large: Some(body.len() as u64),
                    });
                }
            }
            Ok(Forwarded {
                status,
                headers,
                body: body.freeze(),
                too_large: None,
            })
        })?
    }

    /// Run `fut` on the upstream runtime and wait for it from this (synchronous) thread.
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| StoreError::UpstreamUnreachable {
            url: self.url.clone(),
            reason: "the upstream runtime stopped".into(),
        })
    }

    /// A simple container-level request from the host itself (not a client).
    fn container_request(
        &self,
        method: Method,
        name: &str,
        headers: HeaderMap,
    ) -> Result<Forwarded, StoreError> {
        self.forward(
            &method,
            &format!("/{}", utf8_percent_encode(name, PATH)),
            &[("restype".into(), "container".into())],
            &headers,
            Bytes::new(),
            None,
        )
    }

    fn unexpected(&self, what: &str, f: &Forwarded) -> StoreError {
        StoreError::UpstreamStatus {
            url: self.url.clone(),
            what: what.to_owned(),
            status: f.status.as_u16(),
            code: f
                .headers
                .get(X_MS_ERROR_CODE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
        }
    }

    /// Create container `name` upstream (the host's `--container`), with user `metadata`.
    /// An existing container is [`StoreError::ContainerAlreadyExists`], as for a local store.
    pub fn create_container(
        &self,
        name: &str,
        metadata: &[(String, String)],
    ) -> Result<(), StoreError> {
        if !valid_container_name(name) {
            return Err(StoreError::InvalidContainerName(name.to_owned()));
        }
        let mut h = HeaderMap::new();
        for (k, v) in metadata {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(format!("x-ms-meta-{k}").as_bytes()),
                HeaderValue::from_str(v),
            ) {
                h.insert(k, v);
            }
        }
        let f = self.container_request(Method::PUT, name, h)?;
        match f.status.as_u16() {
            201 => Ok(()),
            409 => Err(StoreError::ContainerAlreadyExists(name.to_owned())),
            _ => Err(self.unexpected(&format!("creating container {name:?}"), &f)),
        }
    }

    /// Whether container `name` exists upstream: `Ok` if so,
    /// [`StoreError::ContainerNotFound`] if not (Blob Batch checks this before its sub-requests).
    pub fn container(&self, name: &str) -> Result<(), StoreError> {
        let f = self.container_request(Method::GET, name, HeaderMap::new())?;
        match f.status.as_u16() {
            200 => Ok(()),
            404 => Err(StoreError::ContainerNotFound(name.to_owned())),
            _ => Err(self.unexpected(&format!("reading container {name:?}"), &f)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_style_url_gives_account_and_base_path() {
        let s = Passthrough::with_key("http://127.0.0.1:10000/devstoreaccount1/", None).unwrap();
        assert_eq!(s.account(), EMULATOR_ACCOUNT);
        assert_eq!(s.url(), "http://127.0.0.1:10000/devstoreaccount1");
        assert!(
            s.signs(),
            "the emulator account is signed with the emulator key"
        );
        assert_eq!(
            s.blob_url("c", "a b/ü"),
            "http://127.0.0.1:10000/devstoreaccount1/c/a%20b/%C3%BC"
        );
    }

    #[test]
    fn production_url_gives_account_from_host() {
        let s = Passthrough::with_key("https://myacct.blob.core.windows.net", None).unwrap();
        assert_eq!(s.account(), "myacct");
        assert!(!s.signs(), "no key configured: anonymous");
        let s = Passthrough::with_key("https://myacct.blob.core.windows.net", Some(EMULATOR_KEY))
            .unwrap();
        assert!(s.signs());
    }

    #[test]
    fn bad_urls_are_rejected_with_a_hint() {
        for u in [
            "ftp://127.0.0.1/devstoreaccount1",
            "http://127.0.0.1:10000",
            "http://127.0.0.1:10000/a/b",
            "http://127.0.0.1:10000/devstoreaccount1?x=1",
            "not a url",
        ] {
            let e = Passthrough::with_key(u, None).unwrap_err();
            assert!(matches!(e, StoreError::BadUpstream { .. }), "{u}: {e}");
        }
        let e =
            Passthrough::with_key("http://127.0.0.1:1/devstoreaccount1", Some("%%%")).unwrap_err();
        assert!(e.to_string().contains(UPSTREAM_KEY_ENV), "{e}");
    }

    #[test]
    fn unreachable_upstream_names_the_url() {
        // Port 1 on loopback: nothing listens there (tcpmux needs root and is never enabled).
        let s = Passthrough::with_key("http://127.0.0.1:1/devstoreaccount1", None).unwrap();
        let e = s.container("data").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, StoreError::UpstreamUnreachable { .. }), "{msg}");
        assert!(msg.contains("http://127.0.0.1:1/devstoreaccount1"), "{msg}");
        assert!(msg.contains("is Azurite/the endpoint running?"), "{msg}");
    }

    #[test]
    fn store_can_be_dropped_inside_a_runtime() {
        let s = Passthrough::with_key("http://127.0.0.1:1/devstoreaccount1", None).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async move { drop(s) });
    }
}
