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
//!   the same view borrows hyper's header map, and the response's [`ResponseHeaders`] become a
//!   map only at that edge.
//!
//! Both end in the one response path (`respond`). Between the two, `dispatch` matches the
//! [`Backend`] once: a local store runs the operation here (blob operations in this file,
//! `listing`, `batch`, `parts`), an upstream gets the request forwarded (`forward`).
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
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use base64::prelude::BASE64_STANDARD;
use base64::{DecodeSliceError, Engine as _};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use md5::{Digest, Md5};
use percent_encoding::percent_decode_str;
use rand::{Rng, SeedableRng, rngs::StdRng};

use blobring_proto::header::{
    BODY_PART_HEADER, BODY_WINDOW_ETAG_HEADER, BODY_WINDOW_HEADER, CONTENT_LENGTH, CONTENT_MD5,
    X_MS_BLOB_CONTENT_MD5, X_MS_BLOB_CONTENT_TYPE, X_MS_BLOB_TYPE, X_MS_CONTENT_CRC64,
    X_MS_COPY_SOURCE, X_MS_COPY_STATUS, X_MS_META_PREFIX, X_MS_RANGE, X_MS_RANGE_GET_CONTENT_CRC64,
    X_MS_RANGE_GET_CONTENT_MD5,
};

use crate::auth::SharedKeyAuth;
use crate::backend::Backend;
use crate::request::{
    AzError, Body, Req, RequestHeaders, Resp, ResponseHeaders, borrow_map, decode_query,
    valid_name, valid_value,
};
use crate::store::{
    BlobProps, BlockRef, BodySink, Conditions, ContentHeaders, NewBlob, ReadConditionFailure,
    SliceSink, Store, StoreError, check_read,
};
use crate::xml::{Leaf, esc, leaves};

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

    fn get_blob(&self, at: BlobAt<'_>, req: &Req<'_>) -> Result<Resp, AzError> {
        let BlobAt { st, c, b } = at;
        let cond = conditions(req)?;
        let reader = st.open(c, b)?;
        let p = reader.props();
        if let Err(f) = check_read(&cond, p) {
            return Err(match f {
                ReadConditionFailure::NotModified => {
                    let mut e = AzError::new(
                        304,
                        "ConditionNotMet",
                        "The condition specified using HTTP conditional header(s) is not met.",
                    );
                    e.headers.push(("etag", p.etag.clone()));
                    let modified = http_date(p.last_modified).to_string();
                    e.headers.push(("last-modified", modified));
                    e
                }
                ReadConditionFailure::Failed => AzError::new(
                    412,
                    "ConditionNotMet",
                    "The condition specified using HTTP conditional header(s) is not met.",
                ),
            });
        }
        let range_hdr = req.header(X_MS_RANGE).or_else(|| req.header("range"));
        let range = match range_hdr {
            Some(r) => parse_range(r),
            None => None,
        };
        let mut r;
        let (offset, len) = match range {
            Some((start, end)) => {
                if start >= p.size {
                    let mut e = AzError::new(
                        416,
                        "InvalidRange",
                        "The range specified is invalid for the current size of the resource.",
                    );
                    e.headers
                        .push(("content-range", format!("bytes */{}", p.size)));
                    return Err(e);
                }
                let end = end.map_or(p.size - 1, |e| e.min(p.size - 1));
                let size = p.size;
                r = Resp::new(206).h("content-range", format_args!("bytes {start}-{end}/{size}"));
                (start, end - start + 1)
            }
            None => {
                r = Resp::new(200);
                (0, p.size)
            }
        };
        let want_md5 = req.header(X_MS_RANGE_GET_CONTENT_MD5) == Some("true");
        let want_crc = req.header(X_MS_RANGE_GET_CONTENT_CRC64) == Some("true");
        if (want_md5 || want_crc) && (range.is_none() || len > MAX_HASHED_RANGE) {
            return Err(AzError::bad(
                "InvalidHeaderValue",
                "x-ms-range-get-content-md5/crc64 needs a range of at most 4 MiB.",
            ));
        }
        blob_headers(&mut r.headers, p);
        if let Some(md5) = &p.content.content_md5 {
            let name = match range {
                None => CONTENT_MD5,
                Some(_) => X_MS_BLOB_CONTENT_MD5,
            };
            r.headers.set(name, md5);
        }
        if req.method == Method::HEAD {
            r.headers.set(CONTENT_LENGTH, p.size);
            r.head_only = true;
            return Ok(r);
        }
        let (offset, len) = match body_window(req, p, len)? {
            None => (offset, len),
            Some((first, n)) => {
                if (want_md5 || want_crc) && n != len {
                    return Err(AzError::bad(
                        "InvalidHeaderValue",
                        "A body window must cover the whole range when \
                         x-ms-range-get-content-md5/crc64 is asked for.",
                    ));
                }
                r.headers
                    .set(BODY_WINDOW_HEADER, format_args!("{first}/{len}"));
                (offset + first, n)
            }
        };
        r.body = Body::Blob {
            reader,
            offset,
            len,
            md5: want_md5,
            crc64: want_crc,
        };
        Ok(r)
    }

    fn put_blob(&self, at: BlobAt<'_>, req: &Req<'_>) -> Result<Resp, AzError> {
        let BlobAt { st, c, b } = at;
        if let Some(part) = req.header(BODY_PART_HEADER) {
            return self.put_blob_part(at, req, part);
        }
        check_block_blob(req)?;
        check_length(req, MAX_PUT_BLOB)?;
        let md5 = check_integrity(req)?;
        let cond = conditions(req)?;
        let mut attrs = new_blob(req, true)?;
        let md5 = md5.unwrap_or_else(|| BASE64_STANDARD.encode(Md5::digest(req.body)));
        if attrs.content.content_md5.is_none() {
            attrs.content.content_md5 = Some(md5.clone());
        }
        let p = st.put_blob(c, b, req.body, attrs, &cond)?;
        Ok(put_blob_resp(req, &p, md5))
    }

    /// Put Blob with a body that arrives in pieces (`next` yields them; `Err` if reading
    /// failed), with bounded memory: the body is staged in the store as blocks of
    /// [`STREAM_BLOCK`] bytes under ids of its own and committed with Put Block List — the
    /// conditions checked and the previous version replaced only then, so a failed or cut-off
    /// upload changes nothing visible (its staged blocks are discarded by the next commit of the
    /// blob). Content-Length, Content-MD5 and x-ms-content-crc64 are checked before the commit.
    fn put_blob_streamed(
        &self,
        st: &dyn Store,
        req: &Req<'_>,
        next: &mut dyn FnMut() -> Option<Result<Bytes, String>>,
    ) -> Result<Resp, AzError> {
        let Target::Blob(c, b) = self.target(req)? else {
            return Err(unsupported(req));
        };
        check_container_name(&c)?;
        check_block_blob(req)?;
        let cond = conditions(req)?;
        let attrs = new_blob(req, true)?;
        let declared = match req.header(CONTENT_LENGTH) {
            None => None,
            Some(v) => Some(v.trim().parse::<u64>().map_err(|_| {
                AzError::bad(
                    "InvalidHeaderValue",
                    format!("Content-Length {v} is not a number."),
                )
            })?),
        };
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let (mut md5, mut crc) = (Md5::new(), crc64fast_nvme::Digest::new());
        let mut buf: Vec<u8> = Vec::with_capacity(STREAM_BLOCK);
        let mut refs = Vec::new();
        let mut total = 0u64;
        let stage = |buf: &mut Vec<u8>, refs: &mut Vec<BlockRef>| -> Result<(), AzError> {
            let id = format!("blobring-stream-{tag}-{:08}", refs.len()).into_bytes();
            st.put_block(&c, &b, &id, buf)?;
            refs.push(BlockRef::Uncommitted(id));
            buf.clear();
            Ok(())
        };
        while let Some(piece) = next() {
            let piece = piece.map_err(|e| {
                AzError::bad(
                    "InvalidInput",
                    format!("The request body could not be read: {e}."),
                )
            })?;
            total += piece.len() as u64;
            if total > MAX_PUT_BLOB {
                return Err(AzError::new(
                    413,
                    "RequestBodyTooLarge",
                    "The request body is too large and exceeds the maximum permissible limit.",
                ));
            }
            md5.update(&piece);
            crc.write(&piece);
            let mut rest = &piece[..];
            while !rest.is_empty() {
                let take = rest.len().min(STREAM_BLOCK - buf.len());
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if buf.len() == STREAM_BLOCK {
                    stage(&mut buf, &mut refs)?;
                }
            }
        }
        if !buf.is_empty() {
            stage(&mut buf, &mut refs)?;
        }
        if let Some(n) = declared
            && n != total
        {
            return Err(AzError::bad(
                "InvalidHeaderValue",
                format!("Content-Length {n} does not match the {total} body bytes received."),
            ));
        }
        let at = BlobAt { st, c: &c, b: &b };
        self.commit_staged(at, req, &refs, md5, crc, &cond, attrs)
    }

    /// The end of a Put Blob whose body was staged as the blocks `refs` (streamed, or sent in
    /// parts): the client's Content-MD5 / x-ms-content-crc64 checked against the hashes of the
    /// whole body, then the blocks committed with the Put Blob's conditions and properties (its
    /// Content-MD5 the body's when the client gave none), answered as a Put Blob.
    #[allow(clippy::too_many_arguments)]
    fn commit_staged(
        &self,
        BlobAt { st, c, b }: BlobAt<'_>,
        req: &Req<'_>,
        refs: &[BlockRef],
        md5: Md5,
        crc: crc64fast_nvme::Digest,
        cond: &Conditions,
        mut attrs: NewBlob,
    ) -> Result<Resp, AzError> {
        let digest: [u8; 16] = md5.finalize().into();
        let crc = crc.sum64().to_le_bytes();
        let md5 = check_hashes(req, Some(digest), Some(crc))?
            .unwrap_or_else(|| BASE64_STANDARD.encode(digest));
        if attrs.content.content_md5.is_none() {
            attrs.content.content_md5 = Some(md5.clone());
        }
        let p = st.put_block_list(c, b, refs, attrs, cond)?;
        Ok(put_blob_resp(req, &p, md5))
    }

    fn put_block(&self, at: BlobAt<'_>, req: &Req<'_>) -> Result<Resp, AzError> {
        let BlobAt { st, c, b } = at;
        let mut buf = [0; 96];
        let id = block_id(req.query("blockid").unwrap_or(""), &mut buf)?;
        check_length(req, MAX_BLOCK)?;
        let md5 = check_integrity(req)?;
        st.put_block(c, b, id, req.body)?;
        let mut r = Resp::new(201).h("x-ms-request-server-encrypted", "true");
        if let Some(m) = md5 {
            r = r.h(CONTENT_MD5, m);
        }
        echo_crc(req, &mut r);
        Ok(r)
    }

    fn put_block_list(&self, at: BlobAt<'_>, req: &Req<'_>) -> Result<Resp, AzError> {
        let BlobAt { st, c, b } = at;
        check_integrity(req)?;
        let leaves = xml_leaves(req, "BlockList")?;
        let mut refs = Vec::with_capacity(leaves.len());
        let mut buf = [0; 96];
        for (path, text) in leaves {
            if path.len() != 2 {
                continue;
            }
            let id = block_id(text.trim(), &mut buf)?.to_vec();
            refs.push(match path[1].as_str() {
                "Latest" => BlockRef::Latest(id),
                "Committed" => BlockRef::Committed(id),
                "Uncommitted" => BlockRef::Uncommitted(id),
                other => {
                    return Err(AzError::bad(
                        "InvalidXmlNodeValue",
                        format!("Unexpected element {other:?} in BlockList."),
                    ));
                }
            });
        }
        if refs.len() > 50_000 {
            return Err(AzError::bad(
                "BlockListTooLong",
                "The block list may not contain more than 50,000 blocks.",
            ));
        }
        let cond = conditions(req)?;
        let attrs = new_blob(req, false)?;
        let p = st.put_block_list(c, b, &refs, attrs, &cond)?;
        Ok(Resp::new(201)
            .h("etag", &p.etag)
            .h("last-modified", http_date(p.last_modified))
            .h("x-ms-request-server-encrypted", "true"))
    }

    fn get_block_list(&self, at: BlobAt<'_>, req: &Req<'_>) -> Result<Resp, AzError> {
        let BlobAt { st, c, b } = at;
        let kind = req
            .query("blocklisttype")
            .unwrap_or("committed")
            .to_ascii_lowercase();
        let (with_c, with_u) = match kind.as_str() {
            "committed" => (true, false),
            "uncommitted" => (false, true),
            "all" => (true, true),
            _ => {
                return Err(AzError::bad(
                    "InvalidQueryParameterValue",
                    "blocklisttype must be committed, uncommitted or all.",
                ));
            }
        };
        let l = st.block_list(c, b)?;
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
        let mut list = |tag: &str, blocks: &[crate::store::BlockInfo]| {
            let _ = write!(x, "<{tag}>");
            for bl in blocks {
                let _ = write!(
                    x,
                    "<Block><Name>{}</Name><Size>{}</Size></Block>",
                    BASE64_STANDARD.encode(&bl.id),
                    bl.size
                );
            }
            let _ = write!(x, "</{tag}>");
        };
        if with_c {
            list("CommittedBlocks", &l.committed);
        }
        if with_u {
            list("UncommittedBlocks", &l.uncommitted);
        }
        x.push_str("</BlockList>");
        let mut r = Resp::new(200).xml(x);
        if let Some(p) = &l.props {
            r = r
                .h("etag", &p.etag)
                .h("last-modified", http_date(p.last_modified))
                .h("x-ms-blob-content-length", p.size.to_string());
        }
        Ok(r)
    }

    fn get_tags(&self, BlobAt { st, c, b }: BlobAt<'_>) -> Result<Resp, AzError> {
        let reader = st.open(c, b)?;
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><Tags><TagSet>");
        for (k, v) in &reader.props().tags {
            let _ = write!(
                x,
                "<Tag><Key>{}</Key><Value>{}</Value></Tag>",
                esc(k),
                esc(v)
            );
        }
        x.push_str("</TagSet></Tags>");
        Ok(Resp::new(200).xml(x))
    }

    fn set_tags(&self, at: BlobAt<'_>, req: &Req<'_>) -> Result<Resp, AzError> {
        let BlobAt { st, c, b } = at;
        let leaves = xml_leaves(req, "Tags")?;
        let mut tags: Vec<(String, String)> = Vec::new();
        let mut key: Option<String> = None;
        for (path, text) in leaves {
            match path.last().map(String::as_str) {
                Some("Key") => key = Some(text),
                Some("Value") => {
                    let k = key.take().ok_or_else(|| {
                        AzError::bad("InvalidXmlDocument", "Tag Value without a Key.")
                    })?;
                    tags.push((k, text));
                }
                _ => {}
            }
        }
        validate_tags(&tags)?;
        st.set_tags(c, b, tags, &conditions(req)?)?;
        Ok(Resp::new(204))
    }

    fn copy_blob(&self, at: BlobAt<'_>, req: &Req<'_>) -> Result<Resp, AzError> {
        let BlobAt { st, c, b } = at;
        let src = req.header(X_MS_COPY_SOURCE).unwrap_or("");
        let (sc, sb) = self.copy_source(src)?;
        let meta = metadata(req);
        let meta = if meta.is_empty() { None } else { Some(meta) };
        let cond = conditions(req)?;
        let p = match st.copy_blob(&sc, &sb, c, b, meta, &cond) {
            Err(StoreError::BlobNotFound(_)) | Err(StoreError::ContainerNotFound(_))
                if st.container(c).is_ok() =>
            {
                return Err(AzError::new(
                    404,
                    "CannotVerifyCopySource",
                    "The specified blob does not exist.",
                ));
            }
            r => r?,
        };
        Ok(Resp::new(202)
            .h("etag", &p.etag)
            .h("last-modified", http_date(p.last_modified))
            .h("x-ms-copy-id", uuid::Uuid::new_v4().to_string())
            .h(X_MS_COPY_STATUS, "success"))
    }

    /// Resolve an `x-ms-copy-source` URL to (container, blob) in this account.
    fn copy_source(&self, src: &str) -> Result<(String, String), AzError> {
        let bad = || {
            AzError::bad(
                "CannotVerifyCopySource",
                "x-ms-copy-source must be a URL of a blob in this account.",
            )
        };
        let rest = src.split_once("://").map(|(_, r)| r).ok_or_else(bad)?;
        let (host, path) = rest.split_once('/').ok_or_else(bad)?;
        let path = path.split('?').next().unwrap_or("");
        let path = if let Some(p) = path.strip_prefix(&format!("{}/", self.account)) {
            p
        } else if host.starts_with(&format!("{}.", self.account)) {
            path
        } else {
            return Err(bad());
        };
        let (c, b) = path.split_once('/').ok_or_else(bad)?;
        let dec = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| bad())
        };
        Ok((dec(c)?, dec(b)?))
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

/// The leaves of the request's XML body, whose root element must be `root`.
fn xml_leaves(req: &Req<'_>, root: &str) -> Result<Vec<Leaf>, AzError> {
    let (found, leaves) = leaves(req.body).map_err(|e| {
        AzError::bad(
            "InvalidXmlDocument",
            format!("XML specified is not syntactically valid: {e}"),
        )
    })?;
    if found != root {
        return Err(AzError::bad(
            "InvalidXmlDocument",
            format!("The root element must be {root}."),
        ));
    }
    Ok(leaves)
}

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

/// The body window a Get Blob asks for ([`BODY_WINDOW_HEADER`]) of a body of `len` bytes:
/// `(first, length)`, clipped to the body (a window past its end is empty), or `None` when the
/// request asks for none. A window pinned to another ETag than the blob's is 412.
fn body_window(req: &Req<'_>, p: &BlobProps, len: u64) -> Result<Option<(u64, u64)>, AzError> {
    let Some(w) = req.header(BODY_WINDOW_HEADER) else {
        return Ok(None);
    };
    let bad = || {
        AzError::bad(
            "InvalidHeaderValue",
            format!("{BODY_WINDOW_HEADER}: {w} is not <first>-<last> with first <= last."),
        )
    };
    let (a, b) = w.trim().split_once('-').ok_or_else(bad)?;
    let (first, last): (u64, u64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if last < first {
        return Err(bad());
    }
    if let Some(etag) = req.header(BODY_WINDOW_ETAG_HEADER)
        && etag.trim() != p.etag
    {
        return Err(AzError::new(
            412,
            "ConditionNotMet",
            "The blob changed while its body was read in windows (its ETag is no longer the \
             one pinned by x-blobring-body-window-etag); read it again.",
        ));
    }
    let first = first.min(len);
    Ok(Some((first, (last.saturating_add(1)).min(len) - first)))
}

/// Parse `bytes=a-b` / `bytes=a-`; anything else (suffix ranges, lists) means "no range".
fn parse_range(s: &str) -> Option<(u64, Option<u64>)> {
    let r = s.trim().strip_prefix("bytes=")?;
    if r.contains(',') {
        return None;
    }
    let (a, b) = r.split_once('-')?;
    let start = a.trim().parse::<u64>().ok()?;
    let end = if b.trim().is_empty() {
        None
    } else {
        let e = b.trim().parse::<u64>().ok()?;
        if e < start {
            return None;
        }
        Some(e)
    };
    Some((start, end))
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

fn validate_tags(tags: &[(String, String)]) -> Result<(), AzError> {
    if tags.len() > 10 {
        return Err(AzError::bad(
            "InvalidTag",
            "A blob may have at most 10 tags.",
        ));
    }
    for (k, v) in tags {
        if k.is_empty() || k.len() > 128 || v.len() > 256 {
            return Err(AzError::bad(
                "InvalidTag",
                "Tag keys must be 1-128 characters and values at most 256.",
            ));
        }
    }
    Ok(())
}

fn new_blob(req: &Req<'_>, put_blob: bool) -> Result<NewBlob, AzError> {
    let h = |ms: &str, plain: &str| {
        req.header(ms)
            .or_else(|| if put_blob { req.header(plain) } else { None })
            .map(str::to_owned)
    };
    let tags = match req.header("x-ms-tags") {
        None => Vec::new(),
        Some(t) => {
            let tags: Vec<(String, String)> = decode_query(t)
                .into_iter()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            validate_tags(&tags)?;
            tags
        }
    };
    Ok(NewBlob {
        content: ContentHeaders {
            content_type: h(X_MS_BLOB_CONTENT_TYPE, "content-type"),
            content_encoding: h("x-ms-blob-content-encoding", "content-encoding"),
            content_language: h("x-ms-blob-content-language", "content-language"),
            content_disposition: req
                .header("x-ms-blob-content-disposition")
                .map(str::to_owned),
            cache_control: h("x-ms-blob-cache-control", "cache-control"),
            content_md5: req.header(X_MS_BLOB_CONTENT_MD5).map(str::to_owned),
        },
        metadata: metadata(req),
        tags,
    })
}

/// The block id `s` (Base64 of 1-64 bytes) decoded into `buf`; Base64 too long for `buf` is
/// decoded on the heap only to tell which error it is.
fn block_id<'b>(s: &str, buf: &'b mut [u8; 96]) -> Result<&'b [u8], AzError> {
    let not_base64 = || {
        AzError::bad(
            "InvalidQueryParameterValue",
            "The block id is not valid Base64.",
        )
    };
    let n = match BASE64_STANDARD.decode_slice(s, buf) {
        Ok(n) => n,
        Err(DecodeSliceError::OutputSliceTooSmall) => {
            BASE64_STANDARD.decode(s).map_err(|_| not_base64())?.len()
        }
        Err(DecodeSliceError::DecodeError(_)) => return Err(not_base64()),
    };
    if n == 0 || n > 64 {
        return Err(AzError::bad(
            "InvalidBlockId",
            "The specified block id is invalid: it must be 1-64 bytes before Base64 encoding.",
        ));
    }
    Ok(&buf[..n])
}

/// Put Blob creates block blobs only.
fn check_block_blob(req: &Req<'_>) -> Result<(), AzError> {
    match req.header(X_MS_BLOB_TYPE) {
        Some("BlockBlob") => Ok(()),
        Some(other) => Err(AzError::bad(
            "InvalidHeaderValue",
            format!("x-ms-blob-type {other:?} is not supported by this host; only BlockBlob is."),
        )),
        None => Err(AzError::bad(
            "MissingRequiredHeader",
            "An HTTP header that's mandatory for this request is not specified: x-ms-blob-type.",
        )),
    }
}

/// Put Blob's answer.
fn put_blob_resp(req: &Req<'_>, p: &BlobProps, md5: String) -> Resp {
    let mut r = Resp::new(201)
        .h("etag", &p.etag)
        .h("last-modified", http_date(p.last_modified))
        .h(CONTENT_MD5, md5)
        .h("x-ms-request-server-encrypted", "true");
    echo_crc(req, &mut r);
    r
}

fn check_length(req: &Req<'_>, max: u64) -> Result<(), AzError> {
    if let Some(cl) = req.header(CONTENT_LENGTH) {
        match cl.trim().parse::<u64>() {
            Ok(n) if n == req.body.len() as u64 => {}
            _ => {
                return Err(AzError::bad(
                    "InvalidHeaderValue",
                    format!(
                        "Content-Length {cl} does not match the {} body bytes received.",
                        req.body.len()
                    ),
                ));
            }
        }
    }
    if req.body.len() as u64 > max {
        return Err(AzError::new(
            413,
            "RequestBodyTooLarge",
            "The request body is too large and exceeds the maximum permissible limit.",
        ));
    }
    Ok(())
}

/// Verify `Content-MD5` and `x-ms-content-crc64` against the body; returns the MD5 given.
fn check_integrity(req: &Req<'_>) -> Result<Option<String>, AzError> {
    let md5 = req
        .header(CONTENT_MD5)
        .map(|_| Md5::digest(req.body).into());
    let crc = req.header(X_MS_CONTENT_CRC64).map(|_| crc64(req.body));
    check_hashes(req, md5, crc)
}

/// Compares the body's digests (computed only when the request sent the header) with
/// `Content-MD5` and `x-ms-content-crc64`; returns the request's Content-MD5 if it matched.
fn check_hashes(
    req: &Req<'_>,
    md5: Option<[u8; 16]>,
    crc: Option<[u8; 8]>,
) -> Result<Option<String>, AzError> {
    let md5_out = check_digest(
        req,
        CONTENT_MD5,
        md5.as_ref().map(|d| d.as_slice()),
        (
            "InvalidMd5",
            "The MD5 value specified in the request is invalid: it must be Base64.",
        ),
        (
            "Md5Mismatch",
            "The MD5 value specified in the request did not match with the MD5 value calculated by the server.",
        ),
    )?;
    check_digest(
        req,
        X_MS_CONTENT_CRC64,
        crc.as_ref().map(|d| d.as_slice()),
        (
            "InvalidHeaderValue",
            "x-ms-content-crc64 must be Base64 of 8 bytes.",
        ),
        (
            "Crc64Mismatch",
            "The CRC64 value specified in the request did not match with the CRC64 value calculated by the server.",
        ),
    )?;
    Ok(md5_out.map(str::to_owned))
}

/// Compares the Base64 digest in header `name`, if the request sent one, with `computed`:
/// `invalid` when it is not Base64, `mismatch` when it differs. Returns the header's value.
fn check_digest<'r>(
    req: &'r Req<'_>,
    name: &str,
    computed: Option<&[u8]>,
    invalid: (&'static str, &'static str),
    mismatch: (&'static str, &'static str),
) -> Result<Option<&'r str>, AzError> {
    let Some(v) = req.header(name) else {
        return Ok(None);
    };
    let v = v.trim();
    let want = BASE64_STANDARD
        .decode(v)
        .map_err(|_| AzError::bad(invalid.0, invalid.1))?;
    if Some(want.as_slice()) != computed {
        return Err(AzError::bad(mismatch.0, mismatch.1));
    }
    Ok(Some(v))
}

/// Azure's CRC64 (the NVMe polynomial), as the 8 little-endian bytes Azure Base64-encodes.
pub fn crc64(data: &[u8]) -> [u8; 8] {
    let mut d = crc64fast_nvme::Digest::new();
    d.write(data);
    d.sum64().to_le_bytes()
}

fn echo_crc(req: &Req<'_>, r: &mut Resp) {
    if let Some(c) = req.header(X_MS_CONTENT_CRC64) {
        r.headers.set(X_MS_CONTENT_CRC64, c);
    }
}

fn blob_headers(h: &mut ResponseHeaders, p: &BlobProps) {
    h.set("etag", &p.etag);
    h.set("last-modified", http_date(p.last_modified));
    h.set("x-ms-creation-time", http_date(p.created));
    for (name, v) in [
        (X_MS_BLOB_TYPE, "BlockBlob"),
        ("accept-ranges", "bytes"),
        ("x-ms-lease-state", "available"),
        ("x-ms-lease-status", "unlocked"),
        ("x-ms-server-encrypted", "true"),
        ("x-ms-access-tier", "Hot"),
        ("x-ms-access-tier-inferred", "true"),
    ] {
        h.set(name, v);
    }
    let content_type = p.content.content_type.as_deref();
    h.set(
        "content-type",
        content_type.unwrap_or("application/octet-stream"),
    );
    let c = &p.content;
    for (name, v) in [
        ("content-encoding", &c.content_encoding),
        ("content-language", &c.content_language),
        ("content-disposition", &c.content_disposition),
        ("cache-control", &c.cache_control),
    ] {
        if let Some(v) = v {
            h.set(name, v);
        }
    }
    if !p.blocks.is_empty() {
        h.set("x-ms-blob-committed-block-count", p.blocks.len());
    }
    for (k, v) in &p.metadata {
        h.set_named(format_args!("x-ms-meta-{k}"), v);
    }
    if !p.tags.is_empty() {
        h.set("x-ms-tag-count", p.tags.len());
    }
}

mod batch;
mod respond;
pub use respond::Executed;
mod forward;
mod listing;
mod parts;
#[cfg(test)]
mod tests;
