#![forbid(unsafe_code)]
//! The loopback Azure Blob REST endpoint behind `blobring gateway`: any unmodified Blob client
//! (azure-storage-blob, the Java/.NET/Go/C++ SDKs, pyarrow's `AzureFileSystem`, azcopy,
//! object_store over HTTP) points its Blob endpoint at it and its requests travel over
//! blobring instead of TCP and TLS (ARCHITECTURE §10).
//!
//! **What it owns.** An HTTP/1.1 server (hyper on tokio; keep-alive, many concurrent
//! connections, on TCP — loopback by default — and/or a unix socket), the translation of each
//! HTTP request into one blobring request through the SDK ([`blobring::Client`]: arena
//! buffers, submission, completion, reconnection after a daemon restart — nothing of that is
//! written again here), the gateway's limits and errors, and its statistics (Prometheus text
//! and JSON on an optional loopback listener, see [`Stats`]).
//!
//! **Whom it trusts.** The daemon, as every SDK user does (ARCHITECTURE §8). Not its HTTP
//! clients: it authenticates nobody and holds **no account key**. Each request goes to the host
//! exactly as the client signed it — the request line's path and query, the `Host` header and
//! every other end-to-end header unchanged, only hop-by-hop headers (`Connection`,
//! `Transfer-Encoding`, `Expect`…) removed — so SharedKey and SAS signatures are verified by
//! the host, and a request signed for another key is refused there (403), never here. Anyone
//! who can reach the gateway's listener can use the daemon's uid's blobring session: that is
//! why it listens on loopback unless told otherwise.
//!
//! **Invariants.**
//! - Memory is bounded: a request body streams from the socket straight into the arena buffer
//!   of its blobring request (never a heap copy of the whole body); a body announced larger
//!   than the gateway's limit ([`Config::max_body`], at most [`blobring::MAX_REQUEST_DATA`] and
//!   half the arena) is refused with 413 **before any of it is read** (the authenticate-
//!   before-body rule of issue 18 applies to us too: we never buffer past the limit), and a
//!   chunked body is cut off the moment it passes the limit. The exception is a Put Blob of
//!   announced length (up to the service's 5000 MiB): it goes in body parts, one request's
//!   worth in memory at a time (below). A response body is the arena
//!   buffer itself, handed to hyper without a copy and returned to the arena when sent.
//! - Every request gets one HTTP answer: the host's (status, headers and body as the host
//!   wrote them), or a gateway error with an Azure-style XML body (`<Error><Code>…`) and
//!   `x-ms-error-code` — 503 `ServerBusy` when blobringd cannot be reached or died during the
//!   request (clients retry it), 413 naming the limit, 408 for a client too slow to send its
//!   body, 504 on the SDK's deadline. Each gateway error is logged once, with its cause.
//! - A slow or vanished client only holds its own connection task and its own arena buffer;
//!   its body is read with an idle deadline ([`Config::body_idle_timeout`]).
//!
//! **Large GETs.** One blobring request carries at most [`blobring::MAX_REQUEST_DATA`]
//! (32 MiB less 64 KiB). A GET whose answer may be larger (no range, or a range larger than
//! one request) is carried as *body windows*: the request goes to the host as signed, with
//! blobring's own window header added ([`BODY_WINDOW_HEADER`]: not an `x-ms-` header, so the
//! signature still verifies; the gateway still signs nothing), and the host answers the first
//! window with the status and headers of the whole answer. If the body is longer, the client
//! gets that head at once (with the whole body's `Content-Length`) and the rest of the body
//! streams in windows of [`STRIPE`] bytes, [`STRIPES_IN_FLIGHT`] at a time, each pinned to the
//! first answer's ETag ([`BODY_WINDOW_ETAG_HEADER`]) so that all come from one version of the
//! blob. Memory stays bounded by the windows in flight. A window that fails after the head was
//! sent (the blob changed, blobringd died, a deadline) cuts the connection off mid-body, as any
//! server failing mid-transfer does; the client sees a short body, never mixed versions. A
//! host without windows (a passthrough store) answers whole, and an answer larger than one
//! request is then 413 `BlobringResponseTooLarge` naming the limit.
//!
//! **Large Put Blobs.** The other direction, for the same reason: a single Put Blob whose body
//! is larger than one request (SDKs send up to 64 or 256 MiB that way by default) is sent as
//! *body parts* — the signed head once per part, with blobring's [`BODY_PART_HEADER`] and an
//! upload id added — read from the client one part at a time. The host verifies each part's
//! signature, stages it, and commits the blob whole with the last part, after checking the
//! body's length and the client's Content-MD5 / CRC-64 over all of it; the client gets that
//! last answer (or the first refusal, e.g. 403 for another key, with the rest of its body
//! unread).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blobring::proto::header::{
    BODY_PART_HEADER, BODY_PART_ID_HEADER, BODY_WINDOW_ETAG_HEADER, BODY_WINDOW_HEADER,
    X_MS_ERROR_CODE, X_MS_RANGE,
};
use blobring::proto::{bounded_range_len, is_put_blob};
use blobring::{Client, ClientError, ClientOptions};
use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body::{Body as _, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Incoming;

mod stats;
pub use stats::{Op, Stats};

/// Why the gateway could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A listener could not be bound.
    #[error("cannot listen on {what}: {source} (is another gateway or Azurite running there?)")]
    Bind {
        /// The address or path.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Neither `--listen` nor `--unix` was given.
    #[error("nothing to listen on: give --listen ADDR and/or --unix PATH")]
    NoListener,
    /// The tokio runtime or a signal handler could not be set up.
    #[error("cannot start the gateway's runtime: {0}")]
    Runtime(std::io::Error),
}

/// The gateway's settings (the `blobring gateway` flags, see [`GatewayArgs`]).
#[derive(Debug, Clone)]
pub struct Config {
    /// TCP address to serve Blob REST on (`None`: no TCP listener).
    pub listen: Option<SocketAddr>,
    /// Unix socket to serve Blob REST on.
    pub unix: Option<PathBuf>,
    /// blobringd's client socket.
    pub socket: PathBuf,
    /// Largest request body accepted: a Put Blob's up to it (at most the service's 5000 MiB;
    /// larger than one request, in parts), any other body also at most one blobring request
    /// and half the arena.
    pub max_body: u64,
    /// Most connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// How long a client may leave its request head or body without sending a byte.
    pub body_idle_timeout: Duration,
    /// Deadline of each blobring request.
    pub request_timeout: Duration,
    /// Where to serve `/metrics` (Prometheus text) and `/stats` (JSON); `None`: nowhere.
    pub metrics: Option<SocketAddr>,
    /// Data arena to ask blobringd for (0: the daemon's default). One request carries at most
    /// half of it, so 64 MiB or more lets each request carry the full
    /// [`blobring::MAX_REQUEST_DATA`]. When the daemon refuses the size (its `--arena-size`
    /// is smaller), the gateway takes the daemon's default and logs how to raise it.
    pub arena: u64,
}

/// The `blobring gateway` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// TCP address for Blob REST (loopback unless you name another address; port 0 picks a
    /// free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:10000")]
    pub listen: SocketAddr,
    /// Also (or, with --no-tcp, only) serve on this unix socket.
    #[arg(long)]
    pub unix: Option<PathBuf>,
    /// Serve no TCP listener (only --unix).
    #[arg(long, requires = "unix")]
    pub no_tcp: bool,
    /// blobringd's client socket (default: $BLOBRING_SOCKET, else the daemon's default path).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Largest request body in bytes: a single Put Blob's up to it (at most the service's
    /// 5000 MiB; above one blobring request it goes in parts), any other body also at most one
    /// blobring request (32 MiB less 64 KiB).
    #[arg(long, default_value_t = MAX_PUT_BLOB)]
    pub max_body: u64,
    /// Most connections served at once.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds a client may stay silent while sending its request.
    #[arg(long, default_value_t = 30)]
    pub idle_timeout_secs: u64,
    /// Deadline of each request to the host, in seconds.
    #[arg(long, default_value_t = 60)]
    pub request_timeout_secs: u64,
    /// Serve Prometheus text on http://ADDR/metrics and JSON on http://ADDR/stats.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Data arena to ask blobringd for, in MiB (its --arena-size must allow it; otherwise the
    /// daemon's default is used). One request carries at most half of it, and at most 32 MiB.
    #[arg(long, default_value_t = 256)]
    pub arena_mib: u64,
}

impl GatewayArgs {
    /// The [`Config`] these flags name.
    pub fn config(&self) -> Config {
        Config {
            listen: (!self.no_tcp).then_some(self.listen),
            unix: self.unix.clone(),
            socket: self
                .socket
                .clone()
                .unwrap_or_else(blobring::default_socket_path),
            max_body: self.max_body,
            max_connections: self.max_connections.max(1),
            body_idle_timeout: Duration::from_secs(self.idle_timeout_secs.max(1)),
            request_timeout: Duration::from_secs(self.request_timeout_secs.max(1)),
            metrics: self.metrics,
            arena: self.arena_mib << 20,
        }
    }
}

/// Bytes reserved for a response body when the request says nothing about its size (listings,
/// block lists, error bodies) — as the SDK's object_store connector does.
const DEFAULT_RECV: u64 = 1 << 20;
/// Response-head capacity (heads with many metadata headers fit).
const RESPONSE_HEAD_CAP: u32 = 32 << 10;
/// Smallest response body handed to hyper without a copy.
const ZERO_COPY_MIN: usize = 64 << 10;

/// Body windows after the first: bytes per window.
pub const STRIPE: u64 = 8 << 20;
/// Body windows after the first: how many are in flight at once (memory per large GET is at
/// most this many windows, plus the one being written to the client).
pub const STRIPES_IN_FLIGHT: usize = 4;

/// The error type of a streamed response body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The response body type: one buffer, or a body streamed in windows.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

/// A gateway-made error answer.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("blobringd at {socket} cannot be reached: {source}")]
    Unreachable { socket: String, source: ClientError },
    #[error("blobringd stopped or restarted during the request: {0}")]
    DaemonLost(ClientError),
    #[error("the gateway's shared-memory arena stayed full: {0}")]
    ArenaFull(ClientError),
    #[error("the request body is {len} bytes, more than the gateway's limit of {limit} bytes")]
    BodyTooLarge { len: u64, limit: u64 },
    #[error("the answer is {needed} bytes, more than one blobring request carries ({limit} bytes)")]
    ResponseTooLarge { needed: u64, limit: u64 },
    #[error("the client sent nothing for {0:?} while sending its body")]
    ClientSlow(Duration),
    #[error("the client's body could not be read: {0}")]
    ClientBody(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("the request timed out: {0}")]
    TimedOut(ClientError),
    #[error("blobring failed the request: {0}")]
    Other(ClientError),
}

impl Failure {
    fn status_code(&self) -> (StatusCode, &'static str, String) {
        match self {
            Failure::Unreachable { .. } | Failure::DaemonLost(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServerBusy",
                format!(
                    "{self}. The blobring gateway cannot reach the storage service: start \
                     blobringd (blobring up) or check BLOBRING_SOCKET; retry."
                ),
            ),
            Failure::ArenaFull(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServerBusy",
                format!(
                    "{self}. Too many large requests in flight at once through the gateway: \
                     retry, or give it a larger arena (--arena-mib, within blobringd's \
                     --arena-size)."
                ),
            ),
            Failure::BodyTooLarge { limit, .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestBodyTooLarge",
                format!(
                    "{self} (blobring gateway --max-body; a body other than a Put Blob's is \
                     also at most one blobring request): send it in smaller pieces (Put Block \
                     of at most {limit} bytes each)."
                ),
            ),
            Failure::ResponseTooLarge { limit, .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "BlobringResponseTooLarge",
                format!(
                    "{self}: read the blob in ranges of at most {limit} bytes (the range is \
                     signed, so the gateway, which holds no key, cannot split it)."
                ),
            ),
            Failure::ClientSlow(_) | Failure::ClientBody(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeout",
                self.to_string(),
            ),
            Failure::BadRequest(_) => (StatusCode::BAD_REQUEST, "InvalidInput", self.to_string()),
            Failure::TimedOut(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                "OperationTimedOut",
                self.to_string(),
            ),
            Failure::Other(_) => (StatusCode::BAD_GATEWAY, "InternalError", self.to_string()),
        }
    }

    /// The Azure-style answer: XML `Error` body (none for HEAD), `x-ms-error-code`,
    /// `x-ms-request-id`.
    fn response(&self, method: &Method) -> http::Response<Body> {
        let (status, code, message) = self.status_code();
        let id = uuid::Uuid::new_v4();
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from(format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{}\n\
                 RequestId:{id}\nTime:{}</Message></Error>",
                xml_escape(&message),
                httpdate::fmt_http_date(std::time::SystemTime::now()),
            ))
        };
        let len = body.len();
        let mut r = http::Response::new(full(body));
        *r.status_mut() = status;
        let h = r.headers_mut();
        h.insert(X_MS_ERROR_CODE, HeaderValue::from_static(code));
        if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
            h.insert("x-ms-request-id", v);
        }
        h.insert("content-type", HeaderValue::from_static("application/xml"));
        if method != Method::HEAD {
            h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        if matches!(
            self,
            Failure::BodyTooLarge { .. } | Failure::ClientSlow(_) | Failure::ClientBody(_)
        ) {
            // The body was not (fully) read: the connection cannot carry another request.
            h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Hop-by-hop headers: they describe one HTTP connection, are never part of a signature, and
/// are not carried over blobring (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// The gateway's shared state: the SDK client (made on first use, remade after it fails to
/// connect) and the statistics.
#[derive(Debug)]
pub struct Gateway {
    cfg: Config,
    client: Mutex<Option<Client>>,
    /// Held while connecting, so concurrent first requests make one daemon session, not one
    /// each.
    connecting: tokio::sync::Mutex<()>,
    stats: Arc<Stats>,
}

impl Gateway {
    /// A gateway with `cfg` (connects to blobringd on first request).
    pub fn new(cfg: Config) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            client: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            stats: Arc::new(Stats::default()),
        })
    }

    /// Its statistics.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    async fn client(&self) -> Result<Client, Failure> {
        let current = || {
            self.client
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        };
        if let Some(c) = current() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = current() {
            return Ok(c);
        }
        let mut opts = ClientOptions {
            socket: self.cfg.socket.clone(),
            default_timeout: self.cfg.request_timeout,
            ..ClientOptions::default()
        };
        opts.connect.arena_len = self.cfg.arena;
        let socket = self.cfg.socket.display().to_string();
        // The handshake is a few blocking socket calls: off the reactor threads.
        let c = tokio::task::spawn_blocking(move || match Client::connect_with(opts.clone()) {
            Err(ClientError::Connect(blobring::ConnectError::Refused { message, .. }))
                if opts.connect.arena_len != 0 && message.contains("arena") =>
            {
                tracing::warn!(
                    asked = opts.connect.arena_len,
                    %message,
                    "blobringd refused the gateway's arena; using its default (start \
                     blobringd with a larger --arena-size, or pass --arena-mib, so one \
                     request can carry up to 32 MiB)"
                );
                opts.connect.arena_len = 0;
                Client::connect_with(opts)
            }
            r => r,
        })
        .await
        .map_err(|e| Failure::Other(ClientError::BadResponse(format!("connect task: {e}"))))?
        .map_err(|source| Failure::Unreachable { socket, source })?;
        let mut slot = self.client.lock().unwrap_or_else(|e| e.into_inner());
        Ok(slot.get_or_insert(c).clone())
    }

    /// The most data (body either way) one blobring request may carry here.
    fn limit(client: &Client) -> u64 {
        blobring::MAX_REQUEST_DATA.min(client.arena_len() / 2)
    }

    /// Serves one HTTP request: always an answer, never an error to hyper.
    pub async fn handle(
        self: Arc<Self>,
        req: http::Request<Incoming>,
    ) -> Result<http::Response<Body>, Infallible> {
        let t0 = Instant::now();
        let method = req.method().clone();
        let op = Op::classify(&method, req.uri().query(), req.headers());
        let target = req.uri().to_string();
        let mut bytes_in = 0u64;
        let resp = match self.forward(req, &mut bytes_in).await {
            Ok(r) => r,
            Err(f) => {
                // Logged once, here, with its cause.
                tracing::warn!(%method, %target, error = %f, "blobring gateway error");
                if matches!(f, Failure::Unreachable { .. } | Failure::DaemonLost(_)) {
                    self.stats.daemon_errors.fetch_add(1, Ordering::Relaxed);
                }
                f.response(&method)
            }
        };
        // The whole body's length (a windowed body's size is not known to hyper up front).
        let bytes_out = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .or_else(|| resp.body().size_hint().exact())
            .unwrap_or(0);
        self.stats.record(
            op,
            resp.status().as_u16(),
            bytes_in,
            bytes_out,
            t0.elapsed(),
        );
        Ok(resp)
    }

    async fn forward(
        &self,
        req: http::Request<Incoming>,
        bytes_in: &mut u64,
    ) -> Result<http::Response<Body>, Failure> {
        let (parts, body) = req.into_parts();
        let announced = match parts.headers.get(http::header::CONTENT_LENGTH) {
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| Failure::BadRequest("invalid Content-Length".into()))?,
            ),
            None => body.size_hint().exact().filter(|_| body.is_end_stream()),
        };
        // A Put Blob of announced length larger than one request goes in body parts (up to
        // the service's Put Blob limit); any other body over the limit is refused before it
        // is read, and before even connecting.
        let in_parts = is_put_blob(&parts).then_some(announced).flatten();
        let static_limit = match in_parts {
            Some(_) => self.cfg.max_body.min(MAX_PUT_BLOB),
            None => self.cfg.max_body.min(blobring::MAX_REQUEST_DATA),
        };
        if let Some(len) = announced
            && len > static_limit
        {
            return Err(Failure::BodyTooLarge {
                len,
                limit: static_limit,
            });
        }
        let client = self.client().await?;
        let limit = Self::limit(&client);
        let mut body = BodyReader {
            body,
            pending: None,
            idle: self.cfg.body_idle_timeout,
        };
        if let Some(total) = in_parts
            && total > limit
        {
            return self
                .put_in_parts(&client, &parts, &mut body, total, limit, bytes_in)
                .await;
        }
        let body_limit = limit.min(self.cfg.max_body);
        if let Some(len) = announced
            && len > body_limit
        {
            return Err(Failure::BodyTooLarge {
                len,
                limit: body_limit,
            });
        }
        let is_get = parts.method == Method::GET;
        // A GET whose answer may not fit one request asks for its first window.
        let asked = range_len(&parts.headers);
        let windowed = is_get && asked.is_none_or(|n| n > limit);
        let recv = if is_get {
            asked.unwrap_or(limit).min(limit)
        } else if parts.method == Method::HEAD {
            0
        } else {
            DEFAULT_RECV
        };
        let body_cap = announced.unwrap_or(body_limit);
        let lease = client
            .alloc_async(recv.min(limit).max(body_cap).max(4096))
            .await
            .map_err(|e| self.classify(e))?;
        // Stream the body into the arena buffer as it arrives.
        let at = body.fill(&lease, body_cap).await?;
        *bytes_in = at;
        if !body.ended().await? {
            *bytes_in = at + 1;
            return Err(Failure::BodyTooLarge {
                len: at + 1,
                limit: body_cap,
            });
        }
        let base = request_head(&parts, announced.is_none().then_some(at));
        let head = if windowed {
            windowed_head(&base, 0, limit - 1, None)
        } else {
            base.clone()
        };
        let c = self.execute(&client, head, lease, at, limit).await?;
        self.answer(&client, &parts.method, c, windowed.then_some((base, limit)))
    }

    /// One blobring request: `head`, with `data_valid` body bytes at the start of `lease`
    /// (which also receives the answer's body).
    async fn execute(
        &self,
        client: &Client,
        head: Vec<u8>,
        lease: blobring::Lease,
        data_valid: u64,
        limit: u64,
    ) -> Result<blobring::Completion, Failure> {
        let mut r = blobring::Request::new(head);
        r.response_cap = RESPONSE_HEAD_CAP;
        r.data_valid = data_valid as u32;
        r.data = Some(lease);
        r.timeout = Some(self.cfg.request_timeout);
        match client.execute(r).await {
            Ok(c) => Ok(c),
            Err(ClientError::BodyTooLarge { needed }) => {
                Err(Failure::ResponseTooLarge { needed, limit })
            }
            Err(e) => Err(self.classify(e)),
        }
    }

    /// The HTTP answer to a completed request: the host's status, headers and body (from the
    /// arena, without a copy when large). `windows`: the request as signed and the first
    /// window's size, when it asked for a body window; a longer body then streams in windows.
    fn answer(
        &self,
        client: &Client,
        method: &Method,
        c: blobring::Completion,
        windows: Option<(Vec<u8>, u64)>,
    ) -> Result<http::Response<Body>, Failure> {
        let rh = blobring::blob::parse_response_head(&c.head).map_err(Failure::Other)?;
        let n = c.data_len();
        let data = match c.data {
            Some(l) if n >= ZERO_COPY_MIN && n >= l.len() / 2 => l.into_bytes(n),
            Some(l) => l.to_bytes(n),
            None => Ok(Bytes::new()),
        }
        .map_err(Failure::Other)?;
        let mut headers = rh.headers;
        for h in HOP_BY_HOP {
            headers.remove(h);
        }
        // The whole body's length: more than this window when the host windowed the answer.
        let n = n as u64;
        let total = match (headers.remove(BODY_WINDOW_HEADER), &windows) {
            (Some(w), Some(_)) => parse_window_answer(&w)
                .filter(|&(first, total)| first == 0 && total >= n)
                .map(|(_, total)| total)
                .ok_or_else(|| {
                    Failure::Other(ClientError::BadResponse(format!(
                        "the host answered body window {w:?} to a request for the first window"
                    )))
                })?,
            _ => n,
        };
        let body = match windows {
            Some((base, limit)) if total > n => {
                self.stats.windowed_gets.fetch_add(1, Ordering::Relaxed);
                let rest = Windows {
                    client: client.clone(),
                    base: Arc::new(base),
                    etag: headers.get(http::header::ETAG).cloned(),
                    status: rh.status,
                    total,
                    timeout: self.cfg.request_timeout,
                    stats: self.stats.clone(),
                    failed: false.into(),
                };
                let first = futures_util::stream::once(std::future::ready(Ok(data)));
                let stream = first.chain(rest.stream(n, STRIPE.min(limit)));
                StreamBody::new(stream.map_ok(Frame::data)).boxed_unsync()
            }
            _ => full(data),
        };
        let mut resp = http::Response::new(body);
        *resp.status_mut() = StatusCode::from_u16(rh.status)
            .map_err(|e| Failure::Other(ClientError::BadResponse(e.to_string())))?;
        if method != Method::HEAD && !no_body_status(rh.status) {
            headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(total));
        }
        *resp.headers_mut() = headers;
        Ok(resp)
    }

    /// A Put Blob of `total` bytes, more than one request (`limit`) carries: the signed head
    /// goes once per part of at most `limit` bytes, each with blobring's body-part headers
    /// ([`BODY_PART_HEADER`]; the host stages each part and commits the blob with the last).
    /// One part in memory at a time. The answer is the last part's (the Put Blob's), or the
    /// first refusal (a bad signature, a full host…), with the rest of the body left unread.
    async fn put_in_parts(
        &self,
        client: &Client,
        parts: &http::request::Parts,
        body: &mut BodyReader,
        total: u64,
        limit: u64,
        bytes_in: &mut u64,
    ) -> Result<http::Response<Body>, Failure> {
        self.stats.put_in_parts.fetch_add(1, Ordering::Relaxed);
        let base = request_head(parts, None);
        let id = uuid::Uuid::new_v4().to_string();
        let mut first = 0u64;
        loop {
            let n = limit.min(total - first);
            let lease = client
                .alloc_async(n.max(4096))
                .await
                .map_err(|e| self.classify(e))?;
            let got = body.fill(&lease, n).await?;
            *bytes_in = first + got;
            if got < n {
                return Err(Failure::ClientBody(format!(
                    "the body ended after {} of the {total} bytes its Content-Length announced",
                    first + got
                )));
            }
            let head = part_head(&base, first, total, &id);
            let c = self.execute(client, head, lease, n, limit).await?;
            let last = first + n == total;
            let staged = format!("{}/{total}", first + n);
            if !last {
                let rh = blobring::blob::parse_response_head(&c.head).map_err(Failure::Other)?;
                let next = rh
                    .headers
                    .get(BODY_PART_HEADER)
                    .and_then(|v| v.to_str().ok());
                if rh.status == 202 && next == Some(staged.as_str()) {
                    first += n;
                    continue;
                }
                // Refused (or a host without parts): its answer; the rest is not read.
                let mut r = self.answer(client, &parts.method, c, None)?;
                r.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                return Ok(r);
            }
            return self.answer(client, &parts.method, c, None);
        }
    }

    /// A transport error as the answer it deserves; the SDK's client is dropped when its
    /// daemon is gone, so the next request reconnects.
    fn classify(&self, e: ClientError) -> Failure {
        match e {
            ClientError::Connect(_)
            | ClientError::ConnectionReset
            | ClientError::Connection(blobring::Error::DaemonGone) => {
                if matches!(e, ClientError::Connect(_)) {
                    *self.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                Failure::DaemonLost(e)
            }
            ClientError::Errno(code, _) if code == blobring::errno::ENODEV => {
                Failure::DaemonLost(e)
            }
            ClientError::ArenaBusy { .. } => Failure::ArenaFull(e),
            ClientError::TimedOut(_) => Failure::TimedOut(e),
            e => Failure::Other(e),
        }
    }
}

/// The rest of a windowed GET's body: the request as the client signed it (`base`), asked for
/// window after window and pinned to the first answer's ETag.
struct Windows {
    client: Client,
    base: Arc<Vec<u8>>,
    etag: Option<HeaderValue>,
    /// The first answer's status: every window must have it.
    status: u16,
    total: u64,
    timeout: Duration,
    stats: Arc<Stats>,
    /// Set by the first window that fails: the answer is cut off once, counted and logged
    /// once (the windows in flight beside it fail too).
    failed: std::sync::atomic::AtomicBool,
}

impl Windows {
    /// Windows of `stripe` bytes from `from` to the end, [`STRIPES_IN_FLIGHT`] at a time, in
    /// order. The first failure ends the stream with an error (hyper then cuts the connection
    /// off), logged once here.
    fn stream(
        self,
        from: u64,
        stripe: u64,
    ) -> impl futures_util::Stream<Item = Result<Bytes, BoxError>> + Send + 'static {
        let this = Arc::new(self);
        let starts = (from..this.total).step_by(stripe as usize);
        futures_util::stream::iter(starts)
            .map(move |first| {
                let this = this.clone();
                async move {
                    let n = stripe.min(this.total - first);
                    this.stats.extra_windows.fetch_add(1, Ordering::Relaxed);
                    this.fetch(first, n).await.map_err(|e| {
                        if this.failed.swap(true, Ordering::Relaxed) {
                            return BoxError::from(e);
                        }
                        this.stats.aborted_bodies.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            window = %format!("{first}-{}", first + n - 1),
                            total = this.total,
                            error = %e,
                            "blobring gateway error: a body window failed after the answer's \
                             head was sent; the client's connection is cut off"
                        );
                        BoxError::from(e)
                    })
                }
            })
            .buffered(STRIPES_IN_FLIGHT)
    }

    async fn fetch(&self, first: u64, n: u64) -> Result<Bytes, ClientError> {
        let head = windowed_head(&self.base, first, first + n - 1, self.etag.as_ref());
        let lease = self.client.alloc_async(n).await?;
        let mut r = blobring::Request::new(head);
        r.response_cap = RESPONSE_HEAD_CAP;
        r.data = Some(lease);
        r.timeout = Some(self.timeout);
        let c = self.client.execute(r).await?;
        let rh = blobring::blob::parse_response_head(&c.head)?;
        let window = rh
            .headers
            .get(BODY_WINDOW_HEADER)
            .and_then(parse_window_answer);
        let got = c.data_len();
        if rh.status != self.status || window != Some((first, self.total)) || got as u64 != n {
            let code = rh.headers.get(X_MS_ERROR_CODE);
            return Err(ClientError::BadResponse(format!(
                "window {first}-{} of a {} byte answer came back as status {} ({code:?}), \
                 window {window:?}, {got} bytes (the blob changed during the read?)",
                first + n - 1,
                self.total,
                rh.status,
            )));
        }
        match c.data {
            Some(l) => l.into_bytes(got),
            None => Ok(Bytes::new()),
        }
    }
}

/// A request body read from the client into arena buffers, with an idle deadline; a frame
/// that straddles two buffers is kept for the next.
struct BodyReader {
    body: Incoming,
    pending: Option<Bytes>,
    idle: Duration,
}

impl BodyReader {
    /// The next data of the body (`None` at its end).
    async fn next(&mut self) -> Result<Option<Bytes>, Failure> {
        if let Some(b) = self.pending.take() {
            return Ok(Some(b));
        }
        loop {
            let frame = match tokio::time::timeout(self.idle, self.body.frame()).await {
                Err(_) => return Err(Failure::ClientSlow(self.idle)),
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => return Err(Failure::ClientBody(e.to_string())),
                Ok(Some(Ok(f))) => f,
            };
            // Trailers are not part of a Blob request; empty frames carry nothing.
            if let Ok(data) = frame.into_data()
                && !data.is_empty()
            {
                return Ok(Some(data));
            }
        }
    }

    /// Reads up to `max` bytes into `lease` from offset 0; fewer only at the body's end.
    async fn fill(&mut self, lease: &blobring::Lease, max: u64) -> Result<u64, Failure> {
        let mut at = 0u64;
        while at < max {
            let Some(mut data) = self.next().await? else {
                break;
            };
            let take = (max - at).min(data.len() as u64) as usize;
            if take < data.len() {
                self.pending = Some(data.split_off(take));
            }
            lease.write(at as usize, &data).map_err(Failure::Other)?;
            at += take as u64;
        }
        Ok(at)
    }

    /// Whether the body has ended (reads ahead one frame, kept for later).
    async fn ended(&mut self) -> Result<bool, Failure> {
        match self.next().await? {
            None => Ok(true),
            Some(b) => {
                self.pending = Some(b);
                Ok(false)
            }
        }
    }
}

/// The service's limit on one Put Blob (5000 MiB); up to it a Put Blob goes in body parts.
pub const MAX_PUT_BLOB: u64 = 5000 << 20;

/// `request` with the body-part headers of part `first`/`total` of upload `id` added.
fn part_head(request: &[u8], first: u64, total: u64, id: &str) -> Vec<u8> {
    add_headers(
        request,
        &[
            (BODY_PART_HEADER, format!("{first}/{total}").as_bytes()),
            (BODY_PART_ID_HEADER, id.as_bytes()),
        ],
    )
}

/// `request` (a whole head, ending with the empty line) with `headers` added before its end.
fn add_headers(request: &[u8], headers: &[(&str, &[u8])]) -> Vec<u8> {
    let end = request.len().saturating_sub(2); // before the empty line's CRLF
    let mut h = Vec::with_capacity(request.len() + 128);
    h.extend_from_slice(&request[..end]);
    for (k, v) in headers {
        h.extend_from_slice(k.as_bytes());
        h.extend_from_slice(b": ");
        h.extend_from_slice(v);
        h.extend_from_slice(b"\r\n");
    }
    h.extend_from_slice(b"\r\n");
    h
}

/// `request` (a whole head, ending with the empty line) with the body-window headers added:
/// bytes `first..=last` of the answer's body, pinned to `etag` when given.
fn windowed_head(request: &[u8], first: u64, last: u64, etag: Option<&HeaderValue>) -> Vec<u8> {
    let window = format!("{first}-{last}");
    match etag {
        Some(e) => add_headers(
            request,
            &[
                (BODY_WINDOW_HEADER, window.as_bytes()),
                (BODY_WINDOW_ETAG_HEADER, e.as_bytes()),
            ],
        ),
        None => add_headers(request, &[(BODY_WINDOW_HEADER, window.as_bytes())]),
    }
}

/// The host's `<first>/<total>` window answer.
fn parse_window_answer(v: &HeaderValue) -> Option<(u64, u64)> {
    let (a, b) = v.to_str().ok()?.split_once('/')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// 1xx, 204 and 304 answers carry no body (and no Content-Length of ours).
fn no_body_status(s: u16) -> bool {
    s < 200 || s == 204 || s == 304
}

/// The request head sent over blobring: the client's request line (path and query exactly as
/// sent) and every end-to-end header as sent, `Host` included; `content-length` added only
/// for a chunked body (its length is known once read).
fn request_head(parts: &http::request::Parts, chunked_len: Option<u64>) -> Vec<u8> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut h = Vec::with_capacity(1024);
    h.extend_from_slice(parts.method.as_str().as_bytes());
    h.push(b' ');
    h.extend_from_slice(target.as_bytes());
    h.extend_from_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(http::header::HOST)
        && let Some(a) = parts.uri.authority()
    {
        h.extend_from_slice(format!("host: {a}\r\n").as_bytes());
    }
    for (k, v) in &parts.headers {
        if HOP_BY_HOP.contains(&k.as_str()) {
            continue;
        }
        h.extend_from_slice(k.as_str().as_bytes());
        h.extend_from_slice(b": ");
        h.extend_from_slice(v.as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    if let Some(n) = chunked_len
        && (n > 0 || parts.method == Method::PUT)
    {
        h.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
    }
    h.extend_from_slice(b"\r\n");
    h
}

/// The length of a bounded `bytes=a-b` range (`Range` or `x-ms-range`).
fn range_len(headers: &HeaderMap) -> Option<u64> {
    let v = headers
        .get(X_MS_RANGE)
        .or_else(|| headers.get("range"))?
        .to_str()
        .ok()?;
    bounded_range_len(v)
}

pub mod server;
pub use server::{Running, run, start};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_keeps_host_path_query_and_drops_hop_by_hop() {
        let req = http::Request::builder()
            .method("PUT")
            .uri("/devstoreaccount1/c/a%20b?comp=block&blockid=QUE%3D")
            .header("host", "127.0.0.1:10000")
            .header("x-ms-date", "d")
            .header("authorization", "SharedKey a:b")
            .header("connection", "keep-alive")
            .header("expect", "100-continue")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let h = String::from_utf8(request_head(&parts, Some(5))).unwrap();
        assert!(
            h.starts_with("PUT /devstoreaccount1/c/a%20b?comp=block&blockid=QUE%3D HTTP/1.1\r\n")
        );
        assert!(h.contains("host: 127.0.0.1:10000\r\n"));
        assert!(h.contains("authorization: SharedKey a:b\r\n"));
        assert!(h.contains("content-length: 5\r\n"));
        assert!(!h.contains("connection"));
        assert!(!h.contains("expect"));
        assert!(!h.contains("chunked"));
        assert!(h.ends_with("\r\n\r\n"));
    }

    #[test]
    fn ranges() {
        let mut h = HeaderMap::new();
        h.insert("x-ms-range", HeaderValue::from_static("bytes=10-19"));
        assert_eq!(range_len(&h), Some(10));
        h.insert("x-ms-range", HeaderValue::from_static("bytes=10-"));
        assert_eq!(range_len(&h), None);
    }

    #[test]
    fn error_answers_are_azure_style() {
        let f = Failure::BodyTooLarge { len: 9, limit: 4 };
        let r = f.response(&Method::PUT);
        assert_eq!(r.status(), 413);
        assert_eq!(r.headers()["x-ms-error-code"], "RequestBodyTooLarge");
        assert_eq!(r.headers()["connection"], "close");
        let r = Failure::ClientSlow(Duration::from_secs(1)).response(&Method::HEAD);
        assert_eq!(r.body().size_hint().exact(), Some(0));
    }
}
