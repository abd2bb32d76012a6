//! An object_store [`HttpConnector`] that carries object_store's Azure requests through
//! blobring instead of TCP (cargo feature `object-store`).
//!
//! object_store signs and builds each request as usual; [`BlobringService`] serialises it into
//! an HTTP/1.1 head (request line with the URL's path and query, a `Host` header and every
//! header object_store set) plus the body in an arena buffer, submits it, parses the response
//! head and returns the body — without a copy: the body is a `Bytes` pointing into the arena
//! buffer ([`crate::Lease::into_bytes`]), whose space returns when object_store drops it.
//! Nothing else in object_store changes, so DataFusion, delta-rs, Lance or Polars users switch
//! with one builder call.
//!
//! **Large whole-object GETs.** One blobring request carries at most
//! [`crate::MAX_REQUEST_DATA`] (and at most half the arena). object_store's requests arrive
//! signed, so the connector cannot add a `Range` to them; given the account
//! ([`BlobringConnector::with_account`]) it answers a GET whose body does not fit by
//! streaming the blob as a striped [`Download`] (ranged GETs signed by the SDK, pinned to the
//! blob's ETag), so `get()` of a blob of any size works with any arena. Without the account
//! such a GET fails with a message naming this fix.
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use object_store::azure::MicrosoftAzureBuilder;
//! let client = blobring::Client::connect_default()?;
//! let store = MicrosoftAzureBuilder::new()
//!     .with_account("devstoreaccount1")
//!     .with_access_key(blobring::blob::EMULATOR_KEY)
//!     .with_container_name("data")
//!     .with_endpoint("http://127.0.0.1:10000/devstoreaccount1".into())
//!     .with_allow_http(true)
//!     .with_http_connector(blobring::connector::BlobringConnector::new(client))
//!     .build()?;
//! # Ok(()) }
//! ```

use blobring_proto::header::{
    CONTENT_LENGTH, CONTENT_MD5, IF_MATCH, X_MS_BLOB_CONTENT_MD5, X_MS_BLOB_TYPE, X_MS_RANGE,
};
use futures_util::StreamExt as _;
use http_body_util::BodyExt;
use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService,
};

use crate::blob::{AccountConfig, BlobError, BlobService, parse_response_head};
use crate::transfer::{Download, TransferOptions};
use crate::{Client, ClientError, Request};

/// Creates [`BlobringService`]s over one [`Client`].
#[derive(Debug, Clone)]
pub struct BlobringConnector {
    client: Client,
    stream: Option<BlobService>,
}

impl BlobringConnector {
    /// A connector over `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            stream: None,
        }
    }

    /// Lets the connector stream whole-object GETs too large for one request (see the
    /// [module docs](self)): `account` must name the same account and credentials that
    /// object_store uses (its `path_prefix` is how request paths are split into container and
    /// blob).
    ///
    /// ```no_run
    /// # fn demo(client: blobring::Client) {
    /// let c = blobring::connector::BlobringConnector::new(client)
    ///     .with_account(blobring::blob::AccountConfig::emulator());
    /// # }
    /// ```
    pub fn with_account(mut self, account: AccountConfig) -> Self {
        self.stream = Some(BlobService::new(self.client.clone(), account));
        self
    }
}

impl HttpConnector for BlobringConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(BlobringService {
            client: self.client.clone(),
            stream: self.stream.clone(),
        }))
    }
}

/// The [`HttpService`]: one blobring request per HTTP request (or a striped download for a
/// large whole-object GET, see [`BlobringConnector::with_account`]).
#[derive(Debug, Clone)]
pub struct BlobringService {
    client: Client,
    stream: Option<BlobService>,
}

fn kind(e: &ClientError) -> HttpErrorKind {
    match e {
        ClientError::TimedOut(_) => HttpErrorKind::Timeout,
        ClientError::ConnectionReset => HttpErrorKind::Interrupted,
        ClientError::Connect(_) => HttpErrorKind::Connect,
        ClientError::BadResponse(_) => HttpErrorKind::Decode,
        _ => HttpErrorKind::Request,
    }
}

fn err(e: ClientError) -> HttpError {
    HttpError::new(kind(&e), e)
}

/// Bytes reserved for a response body when the request says nothing about its size
/// (listings, block lists, error bodies).
const DEFAULT_RECV: u64 = 1 << 20;

/// Smallest body handed out without a copy (below this a copy is cheaper than holding a
/// buffer).
const ZERO_COPY_MIN: usize = 64 << 10;

/// The length of a bounded `bytes=a-b` range; `None` for other forms or no range.
fn range_len(req: &HttpRequest) -> Option<u64> {
    match range_header(req)? {
        (Some(a), Some(b)) => Some(b.checked_sub(a)? + 1),
        _ => None,
    }
}

impl BlobringService {
    fn head(req: &HttpRequest, body_len: usize) -> Vec<u8> {
        let uri = req.uri();
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut h = format!("{} {} HTTP/1.1\r\n", req.method(), target);
        if let Some(a) = uri.authority() {
            h.push_str(&format!("host: {a}\r\n"));
        }
        let mut has_len = false;
        for (k, v) in req.headers() {
            if k == http::header::CONTENT_LENGTH {
                has_len = true;
            }
            h.push_str(k.as_str());
            h.push_str(": ");
            h.push_str(&String::from_utf8_lossy(v.as_bytes()));
            h.push_str("\r\n");
        }
        if !has_len && (body_len > 0 || req.method() == http::Method::PUT) {
            h.push_str(&format!("content-length: {body_len}\r\n"));
        }
        h.push_str("\r\n");
        h.into_bytes()
    }

    async fn once(&self, head: &[u8], body: &[u8], recv: u64) -> Result<HttpResponse, ClientError> {
        let lease = self
            .client
            .alloc_async(recv.max(body.len() as u64).max(4096))
            .await?;
        if !body.is_empty() {
            lease.write(0, body)?;
        }
        let mut r = Request::new(head.to_vec());
        r.data = Some(lease);
        r.data_valid = body.len() as u32;
        let c = self.client.execute(r).await?;
        let rh = parse_response_head(&c.head)?;
        let n = c.data_len();
        let data = match c.data {
            // Zero-copy: the body owns the arena buffer until object_store drops it — worth it
            // only when the body fills most of the buffer; a small body (an error document,
            // a small object read with a whole-object buffer) is copied so its large buffer
            // goes back to the arena at once.
            Some(l) if n >= ZERO_COPY_MIN && n >= l.len() / 2 => l.into_bytes(n)?,
            Some(l) => l.to_bytes(n)?,
            None => bytes::Bytes::new(),
        };
        let mut resp = http::Response::new(HttpResponseBody::from(data));
        *resp.status_mut() = http::StatusCode::from_u16(rh.status)
            .map_err(|e| ClientError::BadResponse(e.to_string()))?;
        *resp.headers_mut() = rh.headers;
        Ok(resp)
    }
}

#[async_trait::async_trait]
impl HttpService for BlobringService {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| HttpError::new(HttpErrorKind::Request, e))?
            .to_bytes();
        let probe =
            http::Request::from_parts(parts, object_store::client::HttpRequestBody::empty());
        let head = Self::head(&probe, body.len());
        // The request is already signed, so it cannot be changed (no added range): a
        // whole-object GET first gets the largest buffer one request allows; a larger body is
        // then streamed by ranged GETs the SDK signs (with the account), or fails naming the fix.
        let is_get = probe.method() == http::Method::GET;
        let range = range_header(&probe);
        let whole_get = is_get && range.is_none();
        let recv = match range_len(&probe) {
            Some(n) => n,
            None if whole_get => (self.client.arena_len() / 2).min(crate::MAX_REQUEST_DATA),
            None => DEFAULT_RECV,
        };
        let recv = recv
            // Half the arena at most: the head buffer (and other requests) need the rest.
            .min(self.client.arena_len() / 2)
            .min(crate::MAX_REQUEST_DATA);
        match self.once(&head, &body, recv).await {
            Err(ClientError::BodyTooLarge { needed }) if is_get => match &self.stream {
                Some(svc) => stream_get(svc, &probe, range).await.map_err(|e| match e {
                    BlobError::Transport(e) => err(e),
                    e => HttpError::new(HttpErrorKind::Request, e),
                }),
                None => Err(HttpError::new(
                    HttpErrorKind::Request,
                    ClientError::BadResponse(format!(
                        "the object is {needed} bytes, more than one blobring request carries                          ({recv} here); give the connector the account                          (BlobringConnector::with_account) so it can stream large GETs, or                          read smaller ranges"
                    )),
                )),
            },
            r => r.map_err(err),
        }
    }
}

/// `/<prefix>/<container>/<blob>` of a request path, percent-decoded.
fn split_path(account: &AccountConfig, path: &str) -> Result<(String, String), BlobError> {
    let rest = path
        .strip_prefix(account.path_prefix.as_str())
        .unwrap_or(path);
    let (c, b) = rest
        .trim_start_matches('/')
        .split_once('/')
        .ok_or_else(|| BlobError::Config(format!("{path} names no blob")))?;
    let dec = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|e| BlobError::Config(format!("{path}: {e}")))
    };
    Ok((dec(c)?, dec(b)?))
}

fn frame(r: Result<bytes::Bytes, BlobError>) -> Result<http_body::Frame<bytes::Bytes>, HttpError> {
    r.map(http_body::Frame::data)
        .map_err(|e| HttpError::new(HttpErrorKind::Request, e))
}

/// The request's byte range as `(first, last)` (`bytes=a-b`, `bytes=a-` or `bytes=-n`, the
/// forms object_store sends); `None` without a range header.
fn range_header(req: &HttpRequest) -> Option<(Option<u64>, Option<u64>)> {
    let v = req
        .headers()
        .get("range")
        .or_else(|| req.headers().get(X_MS_RANGE))?
        .to_str()
        .ok()?;
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    Some((a.parse().ok(), b.parse().ok()))
}

/// A GET whose body does not fit one request, answered by a striped [`Download`] of the
/// whole blob or of the asked range: the HEAD's headers with status 200 (or 206 and a
/// `Content-Range`), the body a stream of zero-copy chunks in order.
async fn stream_get(
    svc: &BlobService,
    req: &HttpRequest,
    range: Option<(Option<u64>, Option<u64>)>,
) -> Result<HttpResponse, BlobError> {
    let (container, blob) = split_path(svc.account(), req.uri().path())?;
    let props = svc
        .head_blob(&container, &blob, &Default::default())
        .await?;
    if let Some(want) = req.headers().get(IF_MATCH).and_then(|v| v.to_str().ok())
        && want != "*"
        && want != props.etag
    {
        // The blob changed between object_store's GET and our HEAD.
        return Err(BlobError::Config(format!(
            "{container}/{blob} changed while it was read (ETag {} instead of {want})",
            props.etag
        )));
    }
    let size = props.size;
    let (start, end) = match range {
        None => (0, size),
        Some((Some(a), Some(b))) => (a, b.saturating_add(1).min(size)),
        Some((Some(a), None)) => (a, size),
        Some((None, Some(n))) => (size - n.min(size), size),
        Some((None, None)) => {
            return Err(BlobError::Config("an empty byte range".into()));
        }
    };
    if start >= end {
        return Err(BlobError::Config(format!(
            "range {start}..{end} is outside {container}/{blob} ({size} bytes)"
        )));
    }
    let mut dl =
        Download::with_properties(svc, &container, &blob, &props, &TransferOptions::default())?;
    dl.restrict(start..end);
    let mut resp = http::Response::new(HttpResponseBody::new(http_body_util::StreamBody::new(
        dl.map(frame),
    )));
    if range.is_some() {
        *resp.status_mut() = http::StatusCode::PARTIAL_CONTENT;
    }
    let h = resp.headers_mut();
    let mut put = |k: &'static str, v: &str| {
        if let Ok(v) = http::HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    put(CONTENT_LENGTH, &(end - start).to_string());
    if range.is_some() {
        put(
            "content-range",
            &format!("bytes {start}-{}/{size}", end - 1),
        );
    }
    put("etag", &props.etag);
    put("last-modified", &props.last_modified);
    put(X_MS_BLOB_TYPE, "BlockBlob");
    if let Some(t) = &props.content_type {
        put("content-type", t);
    }
    // The whole blob's MD5: `Content-MD5` of a whole-blob answer, `x-ms-blob-content-md5` of
    // a ranged one (as the service answers).
    if let Some(m) = &props.content_md5 {
        put(
            if range.is_some() {
                X_MS_BLOB_CONTENT_MD5
            } else {
                CONTENT_MD5
            },
            m,
        );
    }
    for (k, v) in &props.metadata {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(format!("x-ms-meta-{k}").as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            h.insert(k, v);
        }
    }
    Ok(resp)
}
