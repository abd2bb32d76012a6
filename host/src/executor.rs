//! The Blob executor: one HTTP-modelled Blob request in, one response out.
//!
//! Two entry points share all the semantics:
//! - [`Executor::execute`] for the VMBus path: the request head is the raw HTTP/1.1 head a Blob
//!   REST client would send (parsed with `httparse` into a view borrowing the head's bytes; no
//!   header map is built), the body is the data buffer's valid bytes,
//!   and a GET's body is written straight from the store into the caller's data buffer (one
//!   copy). A body larger than that buffer is [`ExecuteError::BodyTooLarge`] carrying the size
//!   needed, never a truncated success. The response head is then rendered into the response
//!   buffer by [`Executed::write_head`], which likewise reports the size needed if it does not fit.
//! - [`Executor::execute_request`] for the REST front end (`http::Request` in, `Response` out):
//!   the same view borrows hyper's header map, and the response's
//!   [`ResponseHeaders`](crate::ResponseHeaders) become a map only at that edge.
//!
//! Both end in the one response path (`respond`). Between the two, `dispatch` matches the
//! [`Backend`] once: a local store runs the operation here (container operations in this file,
//! blob operations in `blob`, then `listing`, `batch`, `parts`), an upstream gets the request
//! forwarded (`forward`).
//!
//! **Trust:** the request bytes come from an untrusted client: every header, query parameter,
//! range and XML body is validated and turned into an Azure error (`x-ms-error-code` + XML body)
//! rather than a panic. Nothing here logs above `debug`.
//!
//! Semantics follow `reference/blob-api-and-peers.md` §1 and what object_store 0.14 expects:
//! create-only writes (`If-None-Match: *`) on an existing blob answer 409 `BlobAlreadyExists`
//! (as Azurite does), a range on an empty blob answers 416 with `Content-Range: bytes */0` (as
//! Azure does), and List Blobs honours `startFrom`.

use std::borrow::Cow;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Method;
use percent_encoding::percent_decode_str;
use rand::{Rng, SeedableRng, rngs::StdRng};

use blobring_proto::header::{X_MS_COPY_SOURCE, X_MS_META_PREFIX};

use crate::auth::SharedKeyAuth;
use crate::backend::Backend;
use crate::request::{
    AzError, Body, Req, RequestHeaders, Resp, borrow_map, decode_query, valid_name, valid_value,
};
use crate::store::{BodySink, Conditions, SliceSink, Store};

/// The service version we answer with when a request names none.
pub const DEFAULT_VERSION: &str = "2025-11-05";
/// Most headers accepted in one request head.
const MAX_HEADERS: usize = 100;
/// Most sub-requests in one Blob Batch.
const MAX_BATCH: usize = 256;
/// Largest block (Put Block), 4,000 MiB.
const MAX_BLOCK: u64 = 4000 * 1024 * 1024;
/// Largest single Put Blob, 5,000 MiB.
const MAX_PUT_BLOB: u64 = 5000 * 1024 * 1024;
/// Block size of a streamed Put Blob (see [`Executor::execute_put_stream`]).
const STREAM_BLOCK: usize = 8 << 20;
/// Largest range for which a transactional MD5/CRC64 may be requested.
const MAX_HASHED_RANGE: u64 = 4 * 1024 * 1024;

/// Fault injection applied to every request, whatever the transport.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Extra latency added before executing each request.
    pub latency: Duration,
    /// Probability (0..=1) of answering 503 `ServerBusy` instead of executing.
    pub error_rate: f64,
    /// Probability (0..=1) that a request hangs for `hang_for` before answering 503.
    pub hang_rate: f64,
    /// How long a hung request blocks.
    pub hang_for: Duration,
    /// Seed of the fault RNG, so failures are reproducible.
    pub seed: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            latency: Duration::ZERO,
            error_rate: 0.0,
            hang_rate: 0.0,
            hang_for: Duration::from_secs(3600),
            seed: 0,
        }
    }
}

impl Faults {
    fn active(&self) -> bool {
        !self.latency.is_zero() || self.error_rate > 0.0 || self.hang_rate > 0.0
    }
}

/// Executor configuration.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Account name served (path-style URLs start with it).
    pub account: String,
    /// Verify SharedKey / SAS with this key; `None` accepts unauthenticated requests.
    pub auth: Option<SharedKeyAuth>,
    /// Fault injection.
    pub faults: Faults,
}

/// Errors of the VMBus entry point that cannot be expressed as an HTTP response.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExecuteError {
    /// The response body does not fit the caller's data buffer.
    #[error(
        "Response body needs {needed} bytes but the data buffer holds {capacity}; retry with a larger buffer or a smaller range"
    )]
    BodyTooLarge {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        capacity: u64,
    },
    /// Writing the body into the caller's data buffer failed.
    #[error("Writing the response body into the data buffer failed: {0}")]
    Destination(String),
    /// The response head does not fit the caller's response buffer.
    #[error(
        "Response head needs {needed} bytes but the response buffer holds {capacity}; give the response buffer at least {needed} bytes"
    )]
    HeadTooLarge {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        capacity: usize,
    },
}

/// `t` as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), written where it is displayed.
fn http_date(t: SystemTime) -> httpdate::HttpDate {
    t.into()
}

/// The blob a blob operation works on: the local store, the container and the blob's name.
#[derive(Clone, Copy)]
struct BlobAt<'a> {
    st: &'a dyn Store,
    c: &'a str,
    b: &'a str,
}

/// What the path addresses (names borrowed from the path unless percent-decoded).
enum Target<'a> {
    Service,
    Container(Cow<'a, str>),
    Blob(Cow<'a, str>, Cow<'a, str>),
}

/// A REST request's target as it appears in the request line: path and query.
fn request_target(parts: &http::request::Parts) -> String {
    match parts.uri.query() {
        Some(q) if !q.is_empty() => format!("{}?{q}", parts.uri.path()),
        _ => parts.uri.path().to_owned(),
    }
}

/// Executes Blob requests against its [`Backend`]: a local [`Store`] or an upstream.
pub struct Executor {
    backend: Backend,
    account: String,
    auth: Option<SharedKeyAuth>,
    faults: Faults,
    rng: Mutex<StdRng>,
    /// Put Blobs arriving in parts ([`BODY_PART_HEADER`]).
    parts: parts::PartUploads,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("backend", &self.backend.describe())
            .field("account", &self.account)
            .field("auth", &self.auth.is_some())
            .field("faults", &self.faults)
            .finish()
    }
}

impl Executor {
    /// An executor over `backend`: a local store (`Arc<MemStore>`, `Arc<dyn Store>`, …), a
    /// [`Passthrough`](crate::passthrough::Passthrough), or a [`Backend`] from
    /// [`open_store`](crate::open_store).
    pub fn new(backend: impl Into<Backend>, config: ExecutorConfig) -> Self {
        Executor {
            backend: backend.into(),
            account: config.account,
            auth: config.auth,
            rng: Mutex::new(StdRng::seed_from_u64(config.faults.seed)),
            faults: config.faults,
            parts: parts::PartUploads::default(),
        }
    }

    /// What this executor serves requests from.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Execute one request for the VMBus path.
    ///
    /// `head` holds the HTTP/1.1 request head (request line, headers and the empty line; bytes
    /// after it are ignored); `body` the request body (`data_valid` bytes of the data buffer,
    /// copied once out of guest memory by the caller, so integrity checks and the store see the
    /// same bytes). A response body is written into `out` from offset 0; its length is
    /// [`Executed::body_len`].
    ///
    /// A success body larger than `out.capacity()` is [`ExecuteError::BodyTooLarge`] with the
    /// size needed. An *error* body (Azure error XML) that does not fit is dropped: the status
    /// and `x-ms-error-code` still say what went wrong.
    pub fn execute(
        &self,
        head: &[u8],
        body: &[u8],
        out: &mut dyn BodySink,
    ) -> Result<Executed, ExecuteError> {
        self.execute_lazy(
            head,
            body.len(),
            |dst| {
                dst.copy_from_slice(body);
                true
            },
            out,
        )
    }

    /// [`Executor::execute`] with a body that is only read once the head is admitted: faults
    /// and authentication are decided on the head alone, and a refused request never has its
    /// `body_len` bytes read (`read_body` fills a buffer of that length, `false` on failure:
    /// a 500). The VMBus front end copies the body out of guest memory this way.
    pub fn execute_lazy(
        &self,
        head: &[u8],
        body_len: usize,
        read_body: impl FnOnce(&mut [u8]) -> bool,
        out: &mut dyn BodySink,
    ) -> Result<Executed, ExecuteError> {
        let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (method, target, headers) = match parse_head(head, &mut parsed) {
            Ok(parsed) => parsed,
            Err(e) => {
                let none = RequestHeaders::NONE;
                return self.deliver(none, self.error_response(e, none, false), out);
            }
        };
        let req = self.make_req(method, target, headers, &[]);
        let resp = match self.admit(&req) {
            Some(refused) => refused,
            None => {
                let mut body = vec![0u8; body_len];
                if read_body(&mut body) {
                    let req = Req {
                        body: &body,
                        body_limit: Some(out.capacity()),
                        ..req
                    };
                    return self.deliver(req.headers, self.run_admitted(&req), out);
                }
                let e = AzError::new(
                    500,
                    "InternalError",
                    "The request body could not be read from guest memory.",
                );
                self.error_response(e, req.headers, false)
            }
        };
        self.deliver(req.headers, resp, out)
    }

    /// [`Executor::execute`] into a host byte buffer.
    pub fn execute_into(
        &self,
        head: &[u8],
        body: &[u8],
        out: &mut [u8],
    ) -> Result<Executed, ExecuteError> {
        self.execute(head, body, &mut SliceSink(out))
    }

    /// Whether [`Executor::admit_request`] may block (injected latency or hangs), so that an
    /// async caller runs it on a blocking thread.
    pub fn admission_blocks(&self) -> bool {
        self.faults.active()
    }

    /// The REST front end's first step, on the head alone: faults and authentication. `Some`
    /// is the final response (the body must not be read); `None` means read the body (within
    /// the limit) and call [`Executor::execute_admitted`]. Blocking when
    /// [`Executor::admission_blocks`] (injected latency).
    pub fn admit_request(&self, parts: &http::request::Parts) -> Option<http::Response<Bytes>> {
        let target = request_target(parts);
        let headers = borrow_map(&parts.headers);
        let req = self.make_req(parts.method.clone(), &target, RequestHeaders(&headers), &[]);
        self.admit(&req).map(|r| self.rest_response(req.headers, r))
    }

    /// Execute one request for the REST front end, without admission (tests, and callers that
    /// run no authentication of their own). Blocking: call from a blocking thread.
    pub fn execute_request(&self, req: http::Request<Bytes>) -> http::Response<Bytes> {
        let (parts, body) = req.into_parts();
        if let Some(refused) = self.admit_request(&parts) {
            return refused;
        }
        self.execute_admitted(http::Request::from_parts(parts, body))
    }

    /// Whether Put Blob bodies may be streamed ([`Executor::execute_put_stream`]): not through
    /// a passthrough store, which forwards each request whole.
    pub fn streams_put_blob(&self) -> bool {
        self.backend.local().is_some()
    }

    /// Put Blob of an admitted request whose body arrives in pieces (`next` yields them, `Err`
    /// when reading failed), in bounded memory: the body goes to the store as blocks of 8 MiB,
    /// committed as one Put Block List once it is complete and its length and hashes checked.
    /// A request that is not a Put Blob gets 400. Blocking: call from a blocking thread.
    pub fn execute_put_stream(
        &self,
        parts: &http::request::Parts,
        next: &mut dyn FnMut() -> Option<Result<Bytes, String>>,
    ) -> http::Response<Bytes> {
        let target = request_target(parts);
        let headers = borrow_map(&parts.headers);
        let req = self.make_req(parts.method.clone(), &target, RequestHeaders(&headers), &[]);
        let result = match self.backend.local() {
            Some(st) => self.put_blob_streamed(&**st, &req, next),
            None => Err(AzError::new(
                500,
                "InternalError",
                "A streamed Put Blob cannot be forwarded upstream; send it whole \
                 (Executor::streams_put_blob is false for a passthrough backend).",
            )),
        };
        let resp = self.finish(&req, result);
        self.rest_response(req.headers, resp)
    }

    /// Execute a request that [`Executor::admit_request`] admitted. Blocking: call from a
    /// blocking thread.
    pub fn execute_admitted(&self, req: http::Request<Bytes>) -> http::Response<Bytes> {
        let (parts, body) = req.into_parts();
        let target = request_target(&parts);
        let headers = borrow_map(&parts.headers);
        let req = self.make_req(parts.method, &target, RequestHeaders(&headers), &body);
        let resp = self.run_admitted(&req);
        self.rest_response(req.headers, resp)
    }

    fn make_req<'a>(
        &self,
        method: Method,
        target: &'a str,
        headers: RequestHeaders<'a>,
        body: &'a [u8],
    ) -> Req<'a> {
        let (raw_path, q) = target.split_once('?').unwrap_or((target, ""));
        let first = raw_path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("");
        Req {
            method,
            raw_path,
            path_has_account: first == self.account,
            query: decode_query(q),
            headers,
            body,
            body_limit: None,
        }
    }

    /// What is decided on the head alone, before a body is read: injected faults and
    /// authentication. `Some` is the final response (a refusal).
    fn admit(&self, req: &Req<'_>) -> Option<Resp> {
        if self.faults.active()
            && let Some(r) = self.inject_faults(req)
        {
            return Some(r);
        }
        let e = self.auth.as_ref()?.verify(req).err()?;
        Some(self.finish(req, Err(e)))
    }

    /// Admission, then dispatch (batch sub-requests, each authenticated on its own).
    fn run(&self, req: &Req<'_>) -> Resp {
        match self.admit(req) {
            Some(refused) => refused,
            None => self.run_admitted(req),
        }
    }

    /// Dispatch of an admitted request, and the common response headers.
    fn run_admitted(&self, req: &Req<'_>) -> Resp {
        let resp = self.finish(req, self.dispatch(req));
        tracing::debug!(method = %req.method, path = req.raw_path, status = resp.status.as_u16(), "executed");
        resp
    }

    /// A result as the response: errors as Azure error documents, HEAD without a body, the
    /// common headers.
    fn finish(&self, req: &Req<'_>, result: Result<Resp, AzError>) -> Resp {
        let head = req.method == Method::HEAD;
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => self.error_resp(e, head),
        };
        if head {
            resp.head_only = true;
            resp.body = Body::Empty;
        }
        self.common_headers(&mut resp.headers, req.headers);
        resp
    }

    fn inject_faults(&self, req: &Req<'_>) -> Option<Resp> {
        if !self.faults.latency.is_zero() {
            std::thread::sleep(self.faults.latency);
        }
        let (err, hang) = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            (
                self.faults.error_rate > 0.0 && rng.random_bool(self.faults.error_rate.min(1.0)),
                self.faults.hang_rate > 0.0 && rng.random_bool(self.faults.hang_rate.min(1.0)),
            )
        };
        if hang {
            std::thread::sleep(self.faults.hang_for);
        }
        if err || hang {
            let e = AzError::new(
                503,
                "ServerBusy",
                "The server is busy (injected fault). Retry with exponential backoff.",
            );
            return Some(self.error_response(e, req.headers, req.method == Method::HEAD));
        }
        None
    }

    fn target<'a>(&self, req: &Req<'a>) -> Result<Target<'a>, AzError> {
        let mut p = req.raw_path.trim_start_matches('/');
        if req.path_has_account {
            p = p.split_once('/').map(|(_, rest)| rest).unwrap_or("");
        }
        if p.is_empty() {
            return Ok(Target::Service);
        }
        let (c, b) = p.split_once('/').unwrap_or((p, ""));
        let c = percent_decode_str(c)
            .decode_utf8()
            .map_err(|_| AzError::bad("InvalidUri", "container name is not UTF-8"))?;
        if b.is_empty() {
            return Ok(Target::Container(c));
        }
        let b = percent_decode_str(b)
            .decode_utf8()
            .map_err(|_| AzError::bad("InvalidUri", "blob name is not UTF-8"))?;
        if b.len() > 1024 {
            return Err(AzError::bad(
                "InvalidResourceName",
                "The blob name is longer than 1,024 characters.",
            ));
        }
        Ok(Target::Blob(c, b))
    }

    /// The one place the backend is chosen: a local store runs the operation here, an upstream
    /// gets the request forwarded (Blob Batch excepted: its sub-requests are verified here and
    /// forwarded one by one).
    fn dispatch(&self, req: &Req<'_>) -> Result<Resp, AzError> {
        match &self.backend {
            Backend::Local(st) => self.dispatch_local(&**st, req),
            #[cfg(feature = "passthrough")]
            Backend::Upstream(up) => match (&req.method, self.target(req)?) {
                (&Method::POST, Target::Container(c)) if req.query("comp") == Some("batch") => {
                    check_container_name(&c)?;
                    up.container(&c)?;
                    self.batch(req)
                }
                _ => self.forward(up, req),
            },
        }
    }

    /// Dispatch to the operations on a local store.
    fn dispatch_local(&self, st: &dyn Store, req: &Req<'_>) -> Result<Resp, AzError> {
        let comp = req.query("comp").unwrap_or("");
        let restype = req.query("restype").unwrap_or("");
        let m = &req.method;
        match self.target(req)? {
            Target::Service => match (m.as_str(), comp) {
                ("GET", "list") => self.list_containers(st, req),
                ("GET", "properties") if restype == "service" => Ok(Resp::new(200).xml(
                    "<?xml version=\"1.0\" encoding=\"utf-8\"?><StorageServiceProperties><DefaultServiceVersion>2025-11-05</DefaultServiceVersion></StorageServiceProperties>".into(),
                )),
                _ => Err(unsupported(req)),
            },
            Target::Container(c) => {
                check_container_name(&c)?;
                match (m.as_str(), restype, comp) {
                    ("PUT", "container", "") => self.create_container(st, req, &c),
                    ("DELETE", "container", "") => {
                        st.delete_container(&c)?;
                        Ok(Resp::new(202))
                    }
                    ("GET" | "HEAD", "container", "") => {
                        let p = st.container(&c)?;
                        let mut r = Resp::new(200)
                            .h("etag", &p.etag)
                            .h("last-modified", http_date(p.last_modified))
                            .h("x-ms-lease-state", "available")
                            .h("x-ms-lease-status", "unlocked")
                            .h("x-ms-has-immutability-policy", "false")
                            .h("x-ms-has-legal-hold", "false");
                        for (k, v) in &p.metadata {
                            r.headers.set_named(format_args!("x-ms-meta-{k}"), v);
                        }
                        Ok(r)
                    }
                    ("GET", "container", "list") => self.list_blobs(st, req, &c),
                    ("POST", "container", "batch") => {
                        st.container(&c)?;
                        self.batch(req)
                    }
                    _ => Err(unsupported(req)),
                }
            }
            Target::Blob(c, b) => {
                check_container_name(&c)?;
                let at = BlobAt { st, c: &c, b: &b };
                match (m.as_str(), comp) {
                    ("GET" | "HEAD", "") => self.get_blob(at, req),
                    ("PUT", "") if req.header(X_MS_COPY_SOURCE).is_some() => {
                        self.copy_blob(at, req)
                    }
                    ("PUT", "") => self.put_blob(at, req),
                    ("DELETE", "") => {
                        st.delete_blob(&c, &b, &conditions(req)?)?;
                        Ok(Resp::new(202).h("x-ms-delete-type-permanent", "true"))
                    }
                    ("PUT", "block") => self.put_block(at, req),
                    ("PUT", "blocklist") => self.put_block_list(at, req),
                    ("GET", "blocklist") => self.get_block_list(at, req),
                    ("GET", "tags") => self.get_tags(at),
                    ("PUT", "tags") => self.set_tags(at, req),
                    ("PUT", "properties") => {
                        // Set Blob Properties: the x-ms-blob-content-* headers replace the set.
                        let mut content = new_blob(req, false)?.content;
                        if content.content_md5.is_none() {
                            content.content_md5 = st.open(&c, &b)?.props().content.content_md5.clone();
                        }
                        let p = st.set_content_headers(&c, &b, content, &conditions(req)?)?;
                        Ok(Resp::new(200)
                            .h("etag", &p.etag)
                            .h("last-modified", http_date(p.last_modified)))
                    }
                    ("PUT", "metadata") => {
                        let p = st.set_metadata(
                            &c,
                            &b,
                            metadata(req),
                            &conditions(req)?,
                        )?;
                        Ok(Resp::new(200)
                            .h("etag", &p.etag)
                            .h("last-modified", http_date(p.last_modified))
                            .h("x-ms-request-server-encrypted", "true"))
                    }
                    _ => Err(unsupported(req)),
                }
            }
        }
    }

    fn create_container(&self, st: &dyn Store, req: &Req<'_>, c: &str) -> Result<Resp, AzError> {
        let p = st.create_container(c, metadata(req))?;
        Ok(Resp::new(201)
            .h("etag", &p.etag)
            .h("last-modified", http_date(p.last_modified)))
    }
}

fn unsupported(req: &Req<'_>) -> AzError {
    AzError::bad(
        "UnsupportedHttpVerb",
        format!(
            "The operation {} {}?{} is not supported by this host.",
            req.method,
            req.raw_path,
            req.query
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&")
        ),
    )
}

/// Parse a request head into method, request target and headers, the headers into `slots`
/// (borrowed, no copy): the headers `http` would refuse are refused here too.
fn parse_head<'h>(
    head: &'h [u8],
    slots: &'h mut [httparse::Header<'h>],
) -> Result<(Method, &'h str, RequestHeaders<'h>), AzError> {
    let mut r = httparse::Request::new(slots);
    match r.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(AzError::bad(
                "InvalidInput",
                "The request head is incomplete: it must end with an empty line (CRLF CRLF).",
            ));
        }
        Err(e) => {
            return Err(AzError::bad(
                "InvalidInput",
                format!("The request head is not valid HTTP/1.1: {e}."),
            ));
        }
    }
    let method = Method::from_bytes(r.method.unwrap_or("").as_bytes())
        .map_err(|_| AzError::bad("UnsupportedHttpVerb", "The HTTP method is not valid."))?;
    let path = r.path.unwrap_or("/");
    let headers: &'h [httparse::Header<'h>] = r.headers;
    for h in headers {
        if !valid_name(h.name.as_bytes()) {
            return Err(AzError::bad(
                "InvalidHeaderValue",
                "A header name is not valid.",
            ));
        }
        if !valid_value(h.value) {
            return Err(AzError::bad(
                "InvalidHeaderValue",
                "A header value is not valid.",
            ));
        }
    }
    Ok((method, path, RequestHeaders(headers)))
}

pub use crate::store::valid_container_name;

fn check_container_name(c: &str) -> Result<(), AzError> {
    if valid_container_name(c) {
        Ok(())
    } else {
        Err(AzError::bad(
            "OutOfRangeInput",
            format!(
                "The container name {c:?} is invalid: use 3-63 lower-case letters, digits and single hyphens."
            ),
        ))
    }
}

fn conditions(req: &Req<'_>) -> Result<Conditions, AzError> {
    Conditions::from_headers(|name| req.header(name))
        .map_err(|e| AzError::bad("InvalidHeaderValue", e.to_string()))
}

/// The `x-ms-meta-*` headers as (lower-case key, value) pairs, sorted.
fn metadata(req: &Req<'_>) -> Vec<(String, String)> {
    let prefix = X_MS_META_PREFIX;
    let mut m: Vec<(String, String)> = req
        .headers
        .texts()
        .filter_map(|(k, v)| {
            let name = k
                .get(prefix.len()..)
                .filter(|_| k[..prefix.len()].eq_ignore_ascii_case(prefix))?;
            Some((name.to_ascii_lowercase(), v?.to_owned()))
        })
        .collect();
    m.sort();
    m
}

mod batch;
mod blob;
mod respond;
pub use blob::crc64;
use blob::new_blob;
pub use respond::Executed;
#[cfg(feature = "passthrough")]
mod forward;
mod listing;
mod parts;
#[cfg(test)]
mod tests;
