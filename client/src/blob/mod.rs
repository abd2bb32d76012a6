//! The Azure Blob API over blobring: [`BlobService`].
//!
//! Every request head is exactly what an Azure REST client sends (method, path, `Host`,
//! `x-ms-version`, `x-ms-date`, `Authorization: SharedKey …` or a SAS query), so the host can
//! execute it like the real service would. Errors carry the Azure error code and HTTP status
//! ([`BlobError::Service`]); idempotent operations are retried on 500/503/408/429, timeouts and
//! daemon restarts with exponential backoff and full jitter ([`RetryPolicy`]).
//!
//! All operations are `async` and run on any executor (or none: wrap them in
//! [`crate::block_on`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), blobring::blob::BlobError> {
//! use blobring::blob::{AccountConfig, BlobService};
//! let svc = BlobService::new(blobring::Client::connect_default()?, AccountConfig::from_env()?);
//! svc.create_container("data").await?;
//! svc.put_blob("data", "a/b.txt", b"hello", &Default::default()).await?;
//! let got = svc.get_blob("data", "a/b.txt", None, &Default::default()).await?;
//! assert_eq!(got.to_vec()?, b"hello");
//! # Ok(()) }
//! ```

mod auth;
mod head;
mod xml;

/// The parsers of the service's XML response bodies, public only for the `xml` fuzz target
/// (`fuzz/`); not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::xml::{parse_block_list, parse_container_list, parse_error, parse_list};
}

use std::borrow::Cow;
use std::ops::Range;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use blobring_proto::header::{
    CONTENT_LENGTH, CONTENT_MD5, IF_MATCH, X_MS_BLOB_CONTENT_MD5, X_MS_BLOB_CONTENT_TYPE,
    X_MS_CONTENT_CRC64, X_MS_COPY_SOURCE, X_MS_COPY_STATUS, X_MS_ERROR_CODE, X_MS_META_PREFIX,
    X_MS_RANGE, X_MS_RANGE_GET_CONTENT_CRC64, X_MS_RANGE_GET_CONTENT_MD5,
};
use http::HeaderMap;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

pub use auth::{AccountConfig, Credentials, EMULATOR_ACCOUNT, EMULATOR_KEY, sign, string_to_sign};
/// The `x-ms-version` sent.
pub use blobring_proto::{API_VERSION, Conditions};
pub use head::HeadBuilder;

use crate::{Client, ClientError, Lease, Request};

/// Characters left unescaped in a path segment (RFC 3986 unreserved) — `/` kept separately.
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Why a Blob API call failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The service answered with an error status.
    #[error("{method} {path}: HTTP {status} {code}: {message}")]
    Service {
        /// HTTP status (404, 409, 412, 416, …).
        status: u16,
        /// Azure error code (`BlobNotFound`, `ContainerAlreadyExists`, `ConditionNotMet`, …;
        /// empty if the response carried none).
        code: String,
        /// The service's message.
        message: String,
        /// Method of the failed request.
        method: &'static str,
        /// Path of the failed request.
        path: String,
    },
    /// The request could not be carried (daemon, arena, deadline).
    #[error(transparent)]
    Transport(#[from] ClientError),
    /// The configuration (connection string, key, names) is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The service's response broke the protocol.
    #[error("unexpected response: {0}")]
    Protocol(String),
    /// Transferred bytes do not match their checksum: a range against the checksum the
    /// service computed for it, a whole download against the `Content-MD5` stored with the
    /// blob, or an uploaded stream against [`PutOptions::content_md5`].
    #[error(
        "integrity check failed for {what}: expected {expected}, computed {actual}; retry the \
         transfer, and if it fails the same way again the stored bytes (or the checksum given) \
         are wrong: restore or re-upload the blob"
    )]
    Integrity {
        /// Which blob or range, and what was compared.
        what: String,
        /// The checksum the bytes should have (Base64).
        expected: String,
        /// The checksum of the bytes (Base64).
        actual: String,
    },
    /// A local file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl BlobError {
    /// HTTP status of a service error.
    pub fn status(&self) -> Option<u16> {
        match self {
            BlobError::Service { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Azure error code of a service error.
    pub fn code(&self) -> Option<&str> {
        match self {
            BlobError::Service { code, .. } => Some(code),
            _ => None,
        }
    }

    /// 404.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// 409 or a 412 of a create-only write (`BlobAlreadyExists`, `ContainerAlreadyExists`).
    pub fn is_already_exists(&self) -> bool {
        self.status() == Some(409) || self.code().is_some_and(|c| c.ends_with("AlreadyExists"))
    }

    /// 412 / 304 (`ConditionNotMet`).
    pub fn is_condition_not_met(&self) -> bool {
        matches!(self.status(), Some(412) | Some(304))
    }

    fn retryable(&self) -> bool {
        match self {
            BlobError::Service { status, .. } => {
                matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
            }
            // The call already waited its whole deadline for arena space: that wait was the
            // retry, and waiting again (max_retries times) only multiplies the deadline.
            BlobError::Transport(ClientError::ArenaBusy { .. }) => false,
            BlobError::Transport(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// Retry schedule of idempotent operations: `base * 2^attempt`, capped, with full jitter.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff.
    pub base: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 6,
            base: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry `attempt + 1`: capped exponential with full jitter.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_backoff);
        cap.mul_f64(rand::random::<f64>())
    }
}

/// Properties of a blob (from HEAD or a GET's headers).
#[derive(Debug, Clone, Default)]
pub struct BlobProperties {
    /// Size of the whole blob.
    pub size: u64,
    /// ETag (with quotes).
    pub etag: String,
    /// `Last-Modified`.
    pub last_modified: String,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Content-MD5` (Base64) of the whole blob, when stored: `x-ms-blob-content-md5` of a
    /// ranged GET (whose `Content-MD5`, if any, is the range's), else `Content-MD5`.
    pub content_md5: Option<String>,
    /// `x-ms-meta-*` pairs.
    pub metadata: Vec<(String, String)>,
}

impl BlobProperties {
    fn from_headers(h: &HeaderMap) -> Self {
        let s = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let size = s("content-range")
            .and_then(|r| r.rsplit('/').next().and_then(|t| t.parse().ok()))
            .or_else(|| s(CONTENT_LENGTH).and_then(|v| v.parse().ok()))
            .unwrap_or(0);
        Self {
            size,
            etag: s("etag").unwrap_or_default(),
            last_modified: s("last-modified").unwrap_or_default(),
            content_type: s("content-type"),
            content_md5: s(X_MS_BLOB_CONTENT_MD5).or_else(|| {
                // A ranged answer's Content-MD5 is the range's (x-ms-range-get-content-md5).
                s(CONTENT_MD5).filter(|_| !h.contains_key("content-range"))
            }),
            metadata: h
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        k.as_str().strip_prefix(X_MS_META_PREFIX)?.to_owned(),
                        v.to_str().ok()?.to_owned(),
                    ))
                })
                .collect(),
        }
    }
}

/// Options of a write.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Conditions.
    pub conditions: Conditions,
    /// `x-ms-blob-content-type`.
    pub content_type: Option<String>,
    /// `x-ms-meta-*`.
    pub metadata: Vec<(String, String)>,
    /// Send `x-ms-content-crc64` so the service verifies the body.
    pub crc64: bool,
    /// Send `Content-MD5` so the service verifies the body.
    pub md5: bool,
    /// `x-ms-blob-content-md5`: the whole blob's MD5 (Base64) to store with it (returned as
    /// [`BlobProperties::content_md5`]); not checked by the service. Striped uploads with
    /// [`Checksum::Md5`] compute and send it themselves (and fail if it is given and differs
    /// from the bytes uploaded).
    pub content_md5: Option<String>,
}

/// The checksum that protects the bytes of a transfer
/// (`transfer::TransferOptions::checksum`, [`BlobService::put_block_with`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Checksum {
    /// Azure's CRC64 ([`crc64`]): `x-ms-content-crc64` on writes,
    /// `x-ms-range-get-content-crc64` on ranged reads. Fast; covers the bytes in flight.
    #[default]
    Crc64,
    /// MD5: `Content-MD5` on writes, `x-ms-range-get-content-md5` on ranged reads. Slower,
    /// but a striped upload also stores the whole blob's MD5 with it (`x-ms-blob-content-md5`,
    /// like `azcopy --put-md5`) and a striped download checks the whole blob against the one
    /// stored, which also catches bytes changed at rest.
    Md5,
}

impl Checksum {
    /// The header carrying this checksum of a body: a write's (for the service to verify) or
    /// a ranged read's answer (asked for with [`Checksum::range_header`]).
    pub fn header(self) -> &'static str {
        match self {
            Checksum::Crc64 => X_MS_CONTENT_CRC64,
            Checksum::Md5 => CONTENT_MD5,
        }
    }

    /// The request header asking for this checksum of a range.
    pub fn range_header(self) -> &'static str {
        match self {
            Checksum::Crc64 => X_MS_RANGE_GET_CONTENT_CRC64,
            Checksum::Md5 => X_MS_RANGE_GET_CONTENT_MD5,
        }
    }

    /// This checksum of `data`, Base64 (as sent in the headers above).
    pub fn of(self, data: &[u8]) -> String {
        match self {
            Checksum::Crc64 => B64.encode(crc64(data).to_le_bytes()),
            Checksum::Md5 => content_md5(data),
        }
    }
}

/// Options of a read.
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    /// Conditions.
    pub conditions: Conditions,
}

/// A blob (or range) read into an arena [`Lease`].
#[derive(Debug)]
pub struct GetResult {
    /// Properties (size is the whole blob's).
    pub properties: BlobProperties,
    /// The bytes (`len` of them at the start).
    pub data: Option<Lease>,
    /// Bytes read.
    pub len: usize,
}

impl GetResult {
    /// The bytes as a vector.
    pub fn to_vec(&self) -> Result<Vec<u8>, BlobError> {
        match &self.data {
            Some(l) => Ok(l.to_vec(self.len)?),
            None => Ok(Vec::new()),
        }
    }

    /// The bytes as [`bytes::Bytes`] (one copy; the arena buffer stays with `self`).
    pub fn to_bytes(&self) -> Result<bytes::Bytes, BlobError> {
        Ok(bytes::Bytes::from(self.to_vec()?))
    }

    /// The bytes as [`bytes::Bytes`] without a copy ([`Lease::into_bytes`]): the arena
    /// buffer is returned when the last clone drops.
    pub fn into_bytes(self) -> Result<bytes::Bytes, BlobError> {
        match self.data {
            Some(l) => Ok(l.into_bytes(self.len)?),
            None => Ok(bytes::Bytes::new()),
        }
    }
}

/// One entry of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobItem {
    /// Blob name.
    pub name: String,
    /// Size.
    pub size: u64,
    /// ETag.
    pub etag: String,
    /// Last modification.
    pub last_modified: String,
}

/// One page of List Blobs.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    /// Blobs.
    pub blobs: Vec<BlobItem>,
    /// Common prefixes (when listing with a delimiter).
    pub prefixes: Vec<String>,
    /// Marker of the next page (`None` = done).
    pub next_marker: Option<String>,
}

/// List Blobs parameters.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Only names starting with this.
    pub prefix: Option<String>,
    /// Group names by this delimiter (usually `/`).
    pub delimiter: Option<String>,
    /// Continue after a previous page.
    pub marker: Option<String>,
    /// Page size (≤ 5000; default 1000).
    pub max_results: Option<u32>,
}

/// A block of Get Block List.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockInfo {
    /// Base64 block id.
    pub id: String,
    /// Size.
    pub size: u64,
}

/// Get Block List result.
#[derive(Debug, Clone, Default)]
pub struct BlockList {
    /// Committed blocks in blob order.
    pub committed: Vec<BlockInfo>,
    /// Uncommitted blocks.
    pub uncommitted: Vec<BlockInfo>,
}

/// Which list Put Block List takes each id from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockRef {
    /// `<Latest>`.
    Latest,
    /// `<Committed>`.
    Committed,
    /// `<Uncommitted>`.
    Uncommitted,
}

/// Encodes a blob path (`/<prefix>/<container>/<blob>`), escaping each segment.
fn encode_path(prefix: &str, container: &str, blob: Option<&str>) -> String {
    let mut p =
        String::with_capacity(prefix.len() + container.len() + 2 + blob.map_or(0, str::len));
    p.push_str(prefix);
    p.push('/');
    p.extend(utf8_percent_encode(container, PATH));
    for seg in blob.into_iter().flat_map(|b| b.split('/')) {
        p.push('/');
        p.extend(utf8_percent_encode(seg, PATH));
    }
    p
}

/// A query or header name or value of a [`Spec`]: a literal, or text made for the request.
pub(crate) type Text = Cow<'static, str>;

/// A request being built.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub method: &'static str,
    pub path: String,
    pub query: Vec<(Text, Text)>,
    pub headers: Vec<(Text, Text)>,
    pub idempotent: bool,
}

impl Spec {
    pub(crate) fn new(method: &'static str, path: String) -> Self {
        Self {
            method,
            path,
            query: Vec::new(),
            headers: Vec::new(),
            idempotent: true,
        }
    }

    fn q(mut self, k: &'static str, v: impl Into<Text>) -> Self {
        self.query.push((k.into(), v.into()));
        self
    }

    pub(crate) fn h(mut self, k: &'static str, v: impl Into<Text>) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    /// Adds the headers of `c`.
    fn conditions(&mut self, c: &Conditions) {
        self.headers
            .extend(c.headers().map(|(n, v)| (n.into(), v.into())));
    }
}

/// Adds `metadata` to `s` as `x-ms-meta-*` headers.
fn push_metadata(s: &mut Spec, metadata: &[(String, String)]) {
    for (k, v) in metadata {
        s.headers
            .push((format!("x-ms-meta-{k}").into(), v.clone().into()));
    }
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
}

/// Parses an HTTP/1.1 response head.
pub fn parse_response_head(head: &[u8]) -> Result<ResponseHead, ClientError> {
    let mut hs = [httparse::EMPTY_HEADER; 96];
    let mut r = httparse::Response::new(&mut hs);
    match r.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(ClientError::BadResponse(
                "truncated response head (give a larger response buffer)".into(),
            ));
        }
        Err(e) => return Err(ClientError::BadResponse(e.to_string())),
    }
    let mut headers = HeaderMap::new();
    for h in r.headers.iter() {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_bytes(h.value),
        ) {
            headers.append(n, v);
        }
    }
    Ok(ResponseHead {
        status: r.code.unwrap_or(0),
        headers,
    })
}

/// The Blob API over one [`Client`] (cheap to clone).
#[derive(Debug, Clone)]
pub struct BlobService {
    client: Client,
    account: AccountConfig,
    /// The account's heads, prepared once (keyed HMAC, constant lines); shared by clones.
    head: std::sync::Arc<HeadBuilder>,
    retry: RetryPolicy,
    timeout: Duration,
}

/// What an attempt returns: the head, the data lease and the body length.
pub(crate) struct Answer {
    pub head: ResponseHead,
    pub data: Option<Lease>,
    pub len: usize,
}

impl Answer {
    fn body(&self) -> Result<Vec<u8>, BlobError> {
        match &self.data {
            Some(d) => Ok(d.to_vec(self.len)?),
            None => Ok(Vec::new()),
        }
    }
}

/// Body bytes a request carries.
#[derive(Clone, Copy)]
pub(crate) enum Body<'a> {
    None,
    Bytes(&'a [u8]),
}

impl BlobService {
    /// A service over `client` for `account`.
    pub fn new(client: Client, account: AccountConfig) -> Self {
        Self {
            client,
            head: std::sync::Arc::new(HeadBuilder::new(&account)),
            account,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(60),
        }
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the per-request deadline (client side; each attempt gets it).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The deadline of each request (also bounding its wait for arena space).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The account.
    pub fn account(&self) -> &AccountConfig {
        &self.account
    }

    pub(crate) fn path(&self, container: &str, blob: Option<&str>) -> String {
        encode_path(&self.account.path_prefix, container, blob)
    }

    /// One attempt: render, submit, parse. `recv` = bytes reserved for a response body.
    pub(crate) async fn attempt(
        &self,
        spec: &Spec,
        body: Body<'_>,
        recv: u64,
        queue: Option<u32>,
    ) -> Result<Answer, BlobError> {
        let p = self.start_within(spec, body, recv, queue).await?;
        self.finish(spec, p.await)
    }

    fn service_error(&self, spec: &Spec, ans: &Answer) -> BlobError {
        let body = ans.body().unwrap_or_default();
        let (code, msg) = xml::parse_error(&body);
        let header_code = ans
            .head
            .headers
            .get(X_MS_ERROR_CODE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = ans.head.status;
        BlobError::Service {
            status,
            code: header_code.or(code).unwrap_or_default(),
            message: msg
                .map(|m| m.lines().next().unwrap_or("").to_owned())
                .unwrap_or_else(|| {
                    http::StatusCode::from_u16(status)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("")
                        .to_owned()
                }),
            method: spec.method,
            path: spec.path.clone(),
        }
    }

    /// Attempts with retries (idempotent requests only).
    pub(crate) async fn send(
        &self,
        spec: &Spec,
        body: Body<'_>,
        recv: u64,
        queue: Option<u32>,
    ) -> Result<Answer, BlobError> {
        let mut attempt = 0;
        let mut recv = recv;
        let mut resized = false;
        loop {
            match self.attempt(spec, body, recv, queue).await {
                Ok(a) => return Ok(a),
                Err(BlobError::Transport(ClientError::BodyTooLarge { needed }))
                    if !resized && needed <= self.client.arena_len() / 2 =>
                {
                    // The host said how much the body needs: ask again with that much.
                    resized = true;
                    recv = needed;
                }
                Err(e) if spec.idempotent && e.retryable() && attempt < self.retry.max_retries => {
                    let d = self.retry.backoff(attempt);
                    attempt += 1;
                    crate::timer::sleep(d).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    // ---------------------------------------------------------------- containers

    /// Create Container (`PUT ?restype=container`); 409 `ContainerAlreadyExists` if present.
    pub async fn create_container(&self, container: &str) -> Result<(), BlobError> {
        let mut s = Spec::new("PUT", self.path(container, None)).q("restype", "container");
        s.idempotent = false;
        self.send(&s, Body::None, 0, None).await.map(drop)
    }

    /// Delete Container.
    pub async fn delete_container(&self, container: &str) -> Result<(), BlobError> {
        let s = Spec::new("DELETE", self.path(container, None)).q("restype", "container");
        self.send(&s, Body::None, 0, None).await.map(drop)
    }

    /// List Containers (`GET /?comp=list`): the names of every container whose name starts
    /// with `prefix`, following `NextMarker`.
    pub async fn list_containers(&self, prefix: Option<&str>) -> Result<Vec<String>, BlobError> {
        let path = match self.account.path_prefix.as_str() {
            "" => "/".to_owned(),
            p => p.to_owned(),
        };
        let mut names = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut s = Spec::new("GET", path.clone()).q("comp", "list");
            if let Some(p) = prefix {
                s = s.q("prefix", p.to_owned());
            }
            if let Some(m) = &marker {
                s = s.q("marker", m.clone());
            }
            let cap = (5000u64 * 1024).min(self.client.arena_len() / 2);
            let a = self.send(&s, Body::None, cap, None).await?;
            let (page, next) = xml::parse_container_list(&a.body()?)?;
            names.extend(page);
            match next {
                Some(m) => marker = Some(m),
                None => return Ok(names),
            }
        }
    }

    /// One page of List Blobs.
    pub async fn list_blobs_page(
        &self,
        container: &str,
        opts: &ListOptions,
    ) -> Result<ListPage, BlobError> {
        let mut s = Spec::new("GET", self.path(container, None))
            .q("restype", "container")
            .q("comp", "list");
        if let Some(p) = &opts.prefix {
            s = s.q("prefix", p.clone());
        }
        if let Some(d) = &opts.delimiter {
            s = s.q("delimiter", d.clone());
        }
        if let Some(m) = &opts.marker {
            s = s.q("marker", m.clone());
        }
        let max = opts.max_results.unwrap_or(1000).clamp(1, 5000);
        s = s.q("maxresults", max.to_string());
        let cap = (u64::from(max) * 2048).min(self.client.arena_len() / 2);
        let a = self.send(&s, Body::None, cap, None).await?;
        xml::parse_list(&a.body()?)
    }

    /// Every blob (and prefix) of a listing, following `NextMarker`.
    pub async fn list_blobs(
        &self,
        container: &str,
        opts: &ListOptions,
    ) -> Result<ListPage, BlobError> {
        let mut all = ListPage::default();
        let mut o = opts.clone();
        loop {
            let p = self.list_blobs_page(container, &o).await?;
            all.blobs.extend(p.blobs);
            all.prefixes.extend(p.prefixes);
            match p.next_marker {
                Some(m) => o.marker = Some(m),
                None => return Ok(all),
            }
        }
    }

    // ---------------------------------------------------------------- blobs

    /// Get Blob Properties (HEAD).
    pub async fn head_blob(
        &self,
        container: &str,
        blob: &str,
        opts: &GetOptions,
    ) -> Result<BlobProperties, BlobError> {
        let mut s = Spec::new("HEAD", self.path(container, Some(blob)));
        s.conditions(&opts.conditions);
        let a = self.send(&s, Body::None, 0, None).await?;
        Ok(BlobProperties::from_headers(&a.head.headers))
    }

    /// Ranged Get Blob into a fresh lease: `range` of `None` reads the whole blob (which must
    /// fit the arena; use the striped downloads of `blobring::transfer` for large blobs).
    pub async fn get_blob(
        &self,
        container: &str,
        blob: &str,
        range: Option<Range<u64>>,
        opts: &GetOptions,
    ) -> Result<GetResult, BlobError> {
        match range {
            Some(r) => self.get_range(container, blob, r, opts, None).await,
            None => {
                // First 4 MiB (or the whole blob if smaller); then the rest pinned to the ETag.
                let first = (4u64 << 20).min(self.client.arena_len() / 2);
                let g = match self.get_range(container, blob, 0..first, opts, None).await {
                    Err(BlobError::Service { status: 416, .. }) => {
                        // A zero-byte blob: no range is satisfiable.
                        let p = self.head_blob(container, blob, opts).await?;
                        return Ok(GetResult {
                            properties: p,
                            data: None,
                            len: 0,
                        });
                    }
                    r => r?,
                };
                if g.properties.size <= first {
                    return Ok(g);
                }
                let limit = (self.client.arena_len() / 2).min(crate::MAX_REQUEST_DATA);
                if g.properties.size > limit {
                    return Err(BlobError::Config(format!(
                        "{container}/{blob} is {} bytes, more than one request can carry \
                         ({limit}); read ranges or use blobring::transfer::download_*",
                        g.properties.size
                    )));
                }
                let (etag, size) = (g.properties.etag.clone(), g.properties.size);
                // Return the first buffer before asking for the whole blob.
                drop(g);
                let mut o = opts.clone();
                o.conditions.if_match = Some(etag);
                self.get_range(container, blob, 0..size, &o, None).await
            }
        }
    }

    /// Get Blob of `range` into a lease; `queue` pins the queue pair.
    pub async fn get_range(
        &self,
        container: &str,
        blob: &str,
        range: Range<u64>,
        opts: &GetOptions,
        queue: Option<u32>,
    ) -> Result<GetResult, BlobError> {
        if range.end <= range.start {
            return Err(BlobError::Config(format!(
                "empty range {}..{}",
                range.start, range.end
            )));
        }
        let limit = (self.client.arena_len() / 2).min(crate::MAX_REQUEST_DATA);
        if range.end - range.start > limit {
            return Err(BlobError::Config(format!(
                "a {}-byte range is more than one request can carry ({limit}); split it or use \
                 blobring::transfer::download_*",
                range.end - range.start
            )));
        }
        let mut s = self.get_spec(container, blob, &range, None, None);
        s.conditions(&opts.conditions);
        let a = self
            .send(&s, Body::None, range.end - range.start, queue)
            .await?;
        Ok(GetResult {
            properties: BlobProperties::from_headers(&a.head.headers),
            len: a.len,
            data: a.data,
        })
    }

    /// Get Blob of `range` into the caller's buffer; returns the blob's properties.
    pub async fn get_range_into(
        &self,
        container: &str,
        blob: &str,
        offset: u64,
        buf: &mut [u8],
        opts: &GetOptions,
    ) -> Result<BlobProperties, BlobError> {
        let g = self
            .get_range(
                container,
                blob,
                offset..offset + buf.len() as u64,
                opts,
                None,
            )
            .await?;
        if g.len != buf.len() {
            return Err(BlobError::Protocol(format!(
                "asked for {} bytes at {offset}, got {} (the blob is {} bytes)",
                buf.len(),
                g.len,
                g.properties.size
            )));
        }
        if let Some(d) = &g.data {
            d.read(0, buf)?;
        }
        Ok(g.properties)
    }

    /// The headers a Put Blob or a Put Block List takes from `opts` (`BlobService::put_blob`
    /// lives in the transfer module, above this one).
    pub(crate) fn put_headers(&self, s: &mut Spec, data: &[u8], opts: &PutOptions) {
        s.conditions(&opts.conditions);
        if let Some(ct) = &opts.content_type {
            s.headers
                .push((X_MS_BLOB_CONTENT_TYPE.into(), ct.clone().into()));
        }
        push_metadata(s, &opts.metadata);
        if opts.crc64 {
            s.headers.push((
                X_MS_CONTENT_CRC64.into(),
                B64.encode(crc64(data).to_le_bytes()).into(),
            ));
        }
        if opts.md5 {
            s.headers
                .push((CONTENT_MD5.into(), content_md5(data).into()));
        }
        if let Some(m) = &opts.content_md5 {
            s.headers
                .push((X_MS_BLOB_CONTENT_MD5.into(), m.clone().into()));
        }
        // A create-only write that lost its answer cannot be retried: the retry would find
        // the blob the first attempt created and fail with 409.
        if opts.conditions.if_none_match.as_deref() == Some("*") {
            s.idempotent = false;
        }
    }

    /// Delete Blob.
    pub async fn delete_blob(
        &self,
        container: &str,
        blob: &str,
        conditions: &Conditions,
    ) -> Result<(), BlobError> {
        let mut s = Spec::new("DELETE", self.path(container, Some(blob)));
        s.conditions(conditions);
        self.send(&s, Body::None, 0, None).await.map(drop)
    }

    /// Set Blob Metadata (`?comp=metadata`): replaces every `x-ms-meta-*` pair of the blob
    /// with `metadata`; returns the new ETag.
    pub async fn set_metadata(
        &self,
        container: &str,
        blob: &str,
        metadata: &[(String, String)],
        conditions: &Conditions,
    ) -> Result<String, BlobError> {
        let mut s = Spec::new("PUT", self.path(container, Some(blob))).q("comp", "metadata");
        s.conditions(conditions);
        push_metadata(&mut s, metadata);
        let a = self.send(&s, Body::None, 0, None).await?;
        Ok(etag(&a.head.headers))
    }

    /// Copy Blob within the account (`x-ms-copy-source`); returns `x-ms-copy-status`.
    pub async fn copy_blob(
        &self,
        src_container: &str,
        src_blob: &str,
        container: &str,
        blob: &str,
        conditions: &Conditions,
    ) -> Result<String, BlobError> {
        let src = self.account.url(&self.path(src_container, Some(src_blob)));
        let mut s = Spec::new("PUT", self.path(container, Some(blob))).h(X_MS_COPY_SOURCE, src);
        s.conditions(conditions);
        s.idempotent = conditions.if_none_match.is_none();
        let a = self.send(&s, Body::None, 0, None).await?;
        Ok(a.head
            .headers
            .get(X_MS_COPY_STATUS)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("success")
            .to_owned())
    }

    /// Put Block (`?comp=block&blockid=`); `id` is the Base64 block id; `crc` sends
    /// `x-ms-content-crc64` for the service to verify ([`BlobService::put_block_with`] with
    /// [`Checksum::Crc64`]).
    pub async fn put_block(
        &self,
        container: &str,
        blob: &str,
        id: &str,
        data: &[u8],
        crc: bool,
        queue: Option<u32>,
    ) -> Result<(), BlobError> {
        let check = crc.then_some(Checksum::Crc64);
        self.put_block_with(container, blob, id, data, check, queue)
            .await
    }

    /// Put Block with the body's `checksum` (if any) sent for the service to verify
    /// (`x-ms-content-crc64` or `Content-MD5`; a mismatch fails with 400).
    pub async fn put_block_with(
        &self,
        container: &str,
        blob: &str,
        id: &str,
        data: &[u8],
        checksum: Option<Checksum>,
        queue: Option<u32>,
    ) -> Result<(), BlobError> {
        let s = self.put_block_spec(container, blob, id, checksum.map(|c| (c, c.of(data))));
        self.send(&s, Body::Bytes(data), 0, queue).await.map(drop)
    }

    /// Put Block List: commits `blocks` in order; returns the ETag. `opts.crc64` and
    /// `opts.md5` are ignored (they would cover the XML list, not the blob);
    /// `opts.content_md5` is stored as the blob's MD5.
    pub async fn put_block_list(
        &self,
        container: &str,
        blob: &str,
        blocks: &[(BlockRef, String)],
        opts: &PutOptions,
    ) -> Result<String, BlobError> {
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
        for (r, id) in blocks {
            let t = match r {
                BlockRef::Latest => "Latest",
                BlockRef::Committed => "Committed",
                BlockRef::Uncommitted => "Uncommitted",
            };
            x.push_str(&format!("<{t}>{id}</{t}>"));
        }
        x.push_str("</BlockList>");
        let mut s = Spec::new("PUT", self.path(container, Some(blob))).q("comp", "blocklist");
        let mut o = opts.clone();
        o.crc64 = false;
        o.md5 = false;
        self.put_headers(&mut s, x.as_bytes(), &o);
        let a = self.send(&s, Body::Bytes(x.as_bytes()), 0, None).await?;
        Ok(etag(&a.head.headers))
    }

    /// Get Block List (`blocklisttype=all`).
    pub async fn get_block_list(
        &self,
        container: &str,
        blob: &str,
    ) -> Result<BlockList, BlobError> {
        let s = Spec::new("GET", self.path(container, Some(blob)))
            .q("comp", "blocklist")
            .q("blocklisttype", "all");
        let a = self.send(&s, Body::None, 1 << 20, None).await?;
        xml::parse_block_list(&a.body()?)
    }
}

pub(crate) fn etag(h: &HeaderMap) -> String {
    h.get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// `bytes=<first>-<last>` of `range`, written into one right-sized string.
fn range_header(range: &Range<u64>) -> String {
    use std::fmt::Write as _;
    // "bytes=" and two 20-digit numbers with their dash.
    let mut v = String::with_capacity(48);
    let _ = write!(v, "bytes={}-{}", range.start, range.end - 1);
    v
}

/// Azure's CRC64 (the NVMe polynomial), as sent in `x-ms-content-crc64` (little-endian bytes).
pub fn crc64(data: &[u8]) -> u64 {
    let mut d = crc64fast_nvme::Digest::new();
    d.write(data);
    d.sum64()
}

/// The MD5 of `data`, Base64 (as in `Content-MD5` and [`BlobProperties::content_md5`]).
pub fn content_md5(data: &[u8]) -> String {
    use md5::Digest as _;
    B64.encode(md5::Md5::digest(data))
}

/// A block id for block `n` of an upload (same length for every block, as Azure requires).
pub fn block_id(upload: &str, n: u64) -> String {
    B64.encode(format!("{upload}-{n:08}"))
}

impl BlobService {
    /// A ranged Get Blob (pinned to `if_match`, with the range's `checksum` asked for).
    pub(crate) fn get_spec(
        &self,
        container: &str,
        blob: &str,
        range: &Range<u64>,
        if_match: Option<&str>,
        checksum: Option<Checksum>,
    ) -> Spec {
        let mut s =
            Spec::new("GET", self.path(container, Some(blob))).h(X_MS_RANGE, range_header(range));
        if let Some(e) = if_match {
            s = s.h(IF_MATCH, e.to_owned());
        }
        if let Some(c) = checksum {
            s = s.h(c.range_header(), "true");
        }
        s
    }

    /// Renders `spec` (with a body of `body_len` bytes) into a request with this service's
    /// deadline and no buffers yet.
    fn request(&self, spec: &Spec, body_len: u64, queue: Option<u32>) -> Request {
        let mut head = self.client.head_buffer();
        self.head.render(
            &mut head,
            spec.method,
            &spec.path,
            &spec.query,
            &spec.headers,
            body_len,
        );
        let mut req = Request::new(head);
        req.timeout = Some(self.timeout);
        req.queue = queue;
        req
    }

    /// Submits `spec` (no body; `recv` bytes for the response body) now if the arena has
    /// room for its buffers; `None`, holding nothing, if not. A transfer that holds buffers
    /// of its own tries this, and awaits space ([`BlobService::start_within`]) only when it
    /// holds none: the space it would wait for may be its own.
    pub(crate) fn try_start(
        &self,
        spec: &Spec,
        recv: u64,
        queue: Option<u32>,
    ) -> Result<Option<crate::Pending>, BlobError> {
        let mut req = self.request(spec, 0, queue);
        let Some(lease) = self.client.try_alloc(recv.max(4096))? else {
            return Ok(None);
        };
        req.data = Some(lease);
        if !self.client.try_reserve_head(&mut req)? {
            return Ok(None);
        }
        Ok(Some(self.client.submit(req)?))
    }

    /// Submits `spec` with `body`, `recv` bytes reserved for the response body, awaiting
    /// arena space (waiting counts against the request's deadline). Every request gets a
    /// data buffer: error bodies (Azure XML) land there too.
    pub(crate) async fn start_within(
        &self,
        spec: &Spec,
        body: Body<'_>,
        recv: u64,
        queue: Option<u32>,
    ) -> Result<crate::Pending, BlobError> {
        let body_len = match body {
            Body::None => 0,
            Body::Bytes(b) => b.len() as u64,
        };
        let mut req = self.request(spec, body_len, queue);
        let cap = recv.max(body_len).max(4096);
        let lease = self.client.alloc_async_within(cap, self.timeout).await?;
        if let Body::Bytes(b) = body
            && !b.is_empty()
        {
            lease.write(0, b)?;
        }
        req.data = Some(lease);
        req.data_valid = body_len as u32;
        Ok(self.client.start(req).await?)
    }

    /// A Put Block of block `id`, with the body's checksum header if given (header kind and
    /// Base64 value).
    fn put_block_spec(
        &self,
        container: &str,
        blob: &str,
        id: &str,
        checksum: Option<(Checksum, String)>,
    ) -> Spec {
        let s = Spec::new("PUT", self.path(container, Some(blob)))
            .q("comp", "block")
            .q("blockid", id.to_owned());
        match checksum {
            Some((c, v)) => s.h(c.header(), v),
            None => s,
        }
    }

    /// Renders one Put Block of the `len` bytes at the start of `data`, without its head
    /// buffer: the caller reserves it ([`Client::try_reserve_head`]) and submits. `checksum`
    /// is the header and Base64 value of the body's checksum ([`Checksum::header`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn put_block_request(
        &self,
        container: &str,
        blob: &str,
        id: &str,
        data: Lease,
        len: usize,
        checksum: Option<(Checksum, String)>,
        queue: Option<u32>,
    ) -> (Spec, Request) {
        let s = self.put_block_spec(container, blob, id, checksum);
        let mut req = self.request(&s, len as u64, queue);
        req.data = Some(data);
        req.data_valid = len as u32;
        (s, req)
    }

    /// Turns a completion of a request started with `start*` into an [`Answer`].
    pub(crate) fn finish(
        &self,
        spec: &Spec,
        c: Result<crate::Completion, ClientError>,
    ) -> Result<Answer, BlobError> {
        let c = c?;
        let head = parse_response_head(&c.head)?;
        let len = c.data_len();
        let ans = Answer {
            head,
            data: c.data,
            len,
        };
        if ans.head.status >= 300 {
            return Err(self.service_error(spec, &ans));
        }
        Ok(ans)
    }

    /// Whether a failure of an idempotent request is worth retrying.
    pub(crate) fn should_retry(e: &BlobError) -> bool {
        e.retryable()
    }

    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }
}
