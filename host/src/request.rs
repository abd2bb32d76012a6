//! The host's request and response types, below everything that handles a request: the
//! parsed request view ([`Req`]), the response being built ([`Resp`], [`Body`]), the Azure
//! error ([`AzError`], also what a [`StoreError`] becomes) and query decoding. `auth`, the
//! executor and its modules import them from here; this module imports only the store's types,
//! so no import circle runs among `auth`, `executor` and `store`.

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use percent_encoding::percent_decode_str;

use crate::store::{BlobReader, StoreError};

/// An Azure error: status, error code and message.
#[derive(Debug, Clone)]
pub(crate) struct AzError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl AzError {
    pub(crate) fn new(status: u16, code: &'static str, message: &str) -> Self {
        AzError {
            status,
            code,
            message: message.to_owned(),
            headers: Vec::new(),
        }
    }
    pub(crate) fn bad(code: &'static str, message: impl Into<String>) -> Self {
        AzError {
            status: 400,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }
}

impl From<StoreError> for AzError {
    fn from(e: StoreError) -> Self {
        let msg = e.to_string();
        let (status, code) = match &e {
            StoreError::ContainerNotFound(_) => (404, "ContainerNotFound"),
            StoreError::ContainerAlreadyExists(_) => (409, "ContainerAlreadyExists"),
            StoreError::BlobNotFound(_) => (404, "BlobNotFound"),
            StoreError::BlobAlreadyExists(_) => (409, "BlobAlreadyExists"),
            StoreError::ConditionNotMet => (412, "ConditionNotMet"),
            StoreError::InvalidBlockList(_) => (400, "InvalidBlockList"),
            StoreError::BlockCountExceedsLimit(_) => (409, "BlockCountExceedsLimit"),
            StoreError::InvalidContainerName(_) => (400, "OutOfRangeInput"),
            StoreError::OutOfRange { .. } => (416, "InvalidRange"),
            StoreError::UpstreamUnreachable { .. } => (502, "UpstreamUnreachable"),
            StoreError::UpstreamStatus { .. } => (502, "UpstreamError"),
            StoreError::UpstreamTimeout { .. } => (504, "UpstreamTimeout"),
            StoreError::Io { .. }
            | StoreError::Corrupt { .. }
            | StoreError::BadSpec(_)
            | StoreError::BadUpstream { .. }
            | StoreError::Destination(_) => {
                tracing::debug!(error = %e, "store failure");
                (500, "InternalError")
            }
        };
        AzError {
            status,
            code,
            message: msg,
            headers: Vec::new(),
        }
    }
}

/// A parsed request, borrowed from the transport's buffers.
pub(crate) struct Req<'a> {
    pub method: Method,
    /// Path as on the wire, without the query.
    pub raw_path: &'a str,
    /// Whether the first path segment is the account (path-style URL).
    pub path_has_account: bool,
    /// Decoded query pairs in order.
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: &'a [u8],
    /// The largest success body the caller can take (the VMBus data buffer's capacity;
    /// `None`: any, as on the REST path). A passthrough store reports a larger upstream body
    /// from its `Content-Length` without fetching it.
    pub body_limit: Option<u64>,
}

impl Req<'_> {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub(crate) fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes a query string into its pairs, in order (`+` as space, percent-decoded).
pub(crate) fn decode_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                let s = s.replace('+', " ");
                percent_decode_str(&s).decode_utf8_lossy().into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

/// Body of a response.
pub(crate) enum Body {
    Empty,
    Bytes(Vec<u8>),
    /// A forwarded (passthrough) success body of this many bytes that does not fit the
    /// caller's data buffer; it was not downloaded.
    #[cfg_attr(not(feature = "passthrough"), allow(dead_code))]
    TooLarge(u64),
    Blob {
        reader: Box<dyn BlobReader>,
        offset: u64,
        len: u64,
        md5: bool,
        crc64: bool,
    },
}

pub(crate) struct Resp {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Body,
    /// HEAD: headers describe a body that is not sent.
    pub(crate) head_only: bool,
}

impl Resp {
    pub(crate) fn new(status: u16) -> Self {
        Resp {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            headers: HeaderMap::new(),
            body: Body::Empty,
            head_only: false,
        }
    }
    pub(crate) fn h(mut self, name: &'static str, value: impl AsRef<str>) -> Self {
        set(&mut self.headers, name, value.as_ref());
        self
    }
    pub(crate) fn xml(mut self, doc: String) -> Self {
        set(&mut self.headers, "content-type", "application/xml");
        self.body = Body::Bytes(doc.into_bytes());
        self
    }
}

/// Sets header `name` (replacing it) if name and value are valid.
pub(crate) fn set(h: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        h.insert(n, v);
    }
}
