//! The host's request and response types, below everything that handles a request: the
//! parsed request view ([`Req`] with its borrowed [`RequestHeaders`] and query pairs), the
//! response being built ([`Resp`] with its [`ResponseHeaders`], [`Body`]), the Azure error
//! ([`AzError`], also what a [`StoreError`] becomes) and query decoding. `auth`, the executor
//! and its modules import them from here; this module imports only the store's types, so no
//! import circle runs among `auth`, `executor` and `store`.
//!
//! Nothing here builds a header map on the per-request path: a request's headers are the
//! `(name, value)` slices `httparse` found in the head (the REST front end lends hyper's map
//! the same way, as a list of borrowed pairs), looked up case-insensitively by a scan; query
//! components are borrowed unless they need percent-decoding; a response's headers go into
//! one vector of entries and one byte buffer (reused by the thread's next response), rendered
//! straight into the response head.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::{self, Display, Write as _};
use std::mem::take;

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
    /// Headers the error response carries besides the common ones (`etag` of a 304, …).
    pub headers: Vec<(&'static str, String)>,
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

/// A request's headers, borrowed from the transport: name and raw value of each, in the order
/// they were sent (names as sent, any case). The VMBus path lends the `httparse` headers of
/// the head it parsed; the REST front end lends hyper's map as a list of borrowed pairs
/// ([`borrow_map`]). Lookups scan (a head holds a few dozen headers at most) and ignore case.
#[derive(Clone, Copy)]
pub(crate) struct RequestHeaders<'a>(pub &'a [httparse::Header<'a>]);

impl<'a> RequestHeaders<'a> {
    /// No headers (a head that did not parse).
    pub(crate) const NONE: RequestHeaders<'static> = RequestHeaders(&[]);

    /// The raw value of the first header called `name`.
    pub(crate) fn raw(self, name: &str) -> Option<&'a [u8]> {
        self.0
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// The value of the first header called `name`, if it is text (visible ASCII and tabs, as
    /// `HeaderValue::to_str` has it).
    pub(crate) fn get(self, name: &str) -> Option<&'a str> {
        self.raw(name).and_then(text)
    }

    /// Every header in order as the SharedKey canonicaliser reads them: name, and the value if
    /// it is text.
    pub(crate) fn texts(self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> + Clone {
        self.0.iter().map(|h| (h.name, text(h.value)))
    }

    /// An owned map of the headers (forwarding upstream, off the per-request path); a header
    /// that is not a valid `http` header is left out.
    #[cfg(any(feature = "passthrough", test))]
    pub(crate) fn to_map(self) -> HeaderMap {
        let mut m = HeaderMap::with_capacity(self.0.len());
        for h in self.0 {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(h.name.as_bytes()),
                HeaderValue::from_bytes(h.value),
            ) {
                m.append(n, v);
            }
        }
        m
    }
}

/// hyper's header map as the pairs a [`RequestHeaders`] borrows, in the map's order.
pub(crate) fn borrow_map(map: &HeaderMap) -> Vec<httparse::Header<'_>> {
    map.iter()
        .map(|(k, v)| httparse::Header {
            name: k.as_str(),
            value: v.as_bytes(),
        })
        .collect()
}

/// `v` as text if every byte is visible ASCII or a tab (`HeaderValue::to_str`).
fn text(v: &[u8]) -> Option<&str> {
    if v.iter().all(|&b| (32..127).contains(&b) || b == b'\t') {
        std::str::from_utf8(v).ok()
    } else {
        None
    }
}

/// Whether `name` is a valid header name (an RFC 9110 token of at most 65,535 bytes, what
/// `http::HeaderName` accepts in any case).
pub(crate) fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() < 1 << 16
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `value` is a valid header value (what `http::HeaderValue` accepts: no control
/// bytes but tab, no DEL).
pub(crate) fn valid_value(value: &[u8]) -> bool {
    value.iter().all(|&b| b >= 32 && b != 127 || b == b'\t')
}

/// A request's decoded query pairs, in order.
pub(crate) type QueryPairs<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;

/// A parsed request, borrowed from the transport's buffers.
pub(crate) struct Req<'a> {
    pub method: Method,
    /// Path as on the wire, without the query.
    pub raw_path: &'a str,
    /// Whether the first path segment is the account (path-style URL).
    pub path_has_account: bool,
    /// Decoded query pairs in order (borrowed from the target unless decoding changed them).
    pub query: QueryPairs<'a>,
    pub headers: RequestHeaders<'a>,
    pub body: &'a [u8],
    /// The largest success body the caller can take (the VMBus data buffer's capacity;
    /// `None`: any, as on the REST path). A passthrough store reports a larger upstream body
    /// from its `Content-Length` without fetching it.
    #[cfg_attr(
        not(feature = "passthrough"),
        expect(dead_code, reason = "only a passthrough store reads it")
    )]
    pub body_limit: Option<u64>,
}

impl Req<'_> {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
    pub(crate) fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| &**v)
    }
}

/// Decodes a query string into its pairs, in order (`+` as space, percent-decoded); a
/// component with neither `+` nor `%` is borrowed.
pub(crate) fn decode_query(q: &str) -> QueryPairs<'_> {
    fn dec(s: &str) -> Cow<'_, str> {
        if !s.contains(['+', '%']) {
            return Cow::Borrowed(s);
        }
        let spaced = if s.contains('+') {
            Cow::Owned(s.replace('+', " "))
        } else {
            Cow::Borrowed(s)
        };
        Cow::Owned(percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
    }
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
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

/// A header name of a response: static text, or bytes of the value buffer (`x-ms-meta-*`,
/// forwarded headers).
#[derive(Clone, Copy, Debug)]
enum Name {
    Static(&'static str),
    Buf(usize, usize),
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    name: Name,
    /// The value's bytes in the buffer.
    value: (usize, usize),
}

/// Entries and buffer bytes reserved up front: a Get Blob answer has about 20 headers and
/// 400 bytes of values, so it never grows them.
const ENTRIES: usize = 32;
const VALUE_BYTES: usize = 1024;
/// Spare buffers a thread keeps for its next responses.
const SPARES: usize = 4;
/// The largest value buffer kept as a spare (also the bound on a VSP channel thread's kept
/// request-head buffer); a spare's entry list is kept up to 4 × [`ENTRIES`].
pub(crate) const SPARE_MAX_BYTES: usize = 64 << 10;

thread_local! {
    /// The buffers of this thread's dropped [`ResponseHeaders`], reused by its next ones: a
    /// thread that answers request after request allocates none for their headers.
    static SPARE: RefCell<Vec<(Vec<Entry>, Vec<u8>)>> = const { RefCell::new(Vec::new()) };
}

/// A response's headers, in order: lower-case names (mostly `&'static str`) and values
/// written into one byte buffer, both taken from (and given back to, when dropped) a few
/// spares the thread keeps, so a thread serving request after request allocates nothing for
/// them. Setting a name that is present replaces its value in place (as `HeaderMap::insert`
/// does); a name or value `http` would refuse is not set.
/// [`Executed::write_head`](crate::Executed::write_head) renders them straight into the
/// response head; the REST front end converts them to hyper's map at its edge
/// ([`ResponseHeaders::to_map`]).
#[derive(Clone, Default)]
pub struct ResponseHeaders {
    entries: Vec<Entry>,
    buf: Vec<u8>,
}

impl fmt::Debug for ResponseHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(k, v)| (k, String::from_utf8_lossy(v))))
            .finish()
    }
}

/// The text of `n`, whose bytes (if not static) are in `buf`.
fn name_of(buf: &[u8], n: Name) -> &str {
    match n {
        Name::Static(s) => s,
        // Checked to be a token (ASCII) when written.
        Name::Buf(a, b) => std::str::from_utf8(&buf[a..b]).unwrap_or(""),
    }
}

/// `fmt::Write` appending to a byte vector.
struct Append<'a>(&'a mut Vec<u8>);

impl fmt::Write for Append<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

impl ResponseHeaders {
    /// Empty, with room for a typical response (a spare of this thread's, if it has one).
    pub(crate) fn new() -> Self {
        let spare = SPARE.try_with(|s| s.try_borrow_mut().ok()?.pop());
        let (entries, buf) = spare
            .ok()
            .flatten()
            .unwrap_or_else(|| (Vec::with_capacity(ENTRIES), Vec::with_capacity(VALUE_BYTES)));
        ResponseHeaders { entries, buf }
    }

    /// Every header in order: name and value bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.entries
            .iter()
            .map(|e| (name_of(&self.buf, e.name), &self.buf[e.value.0..e.value.1]))
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| name_of(&self.buf, e.name).eq_ignore_ascii_case(name))
    }

    /// The value of the first header called `name` (any case).
    pub fn get(&self, name: &str) -> Option<ResponseValue<'_>> {
        let e = self.entries[self.position(name)?];
        Some(ResponseValue(&self.buf[e.value.0..e.value.1]))
    }

    /// Whether a header called `name` is present.
    pub fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_some()
    }

    /// Removes every header called `name`, keeping the order of the others.
    pub fn remove(&mut self, name: &str) {
        let buf = &self.buf;
        self.entries
            .retain(|e| !name_of(buf, e.name).eq_ignore_ascii_case(name));
    }

    /// Writes `value` at the end of the buffer; its span, or `None` (and nothing kept) when it
    /// is not a valid header value.
    fn push_value(&mut self, value: impl Display) -> Option<(usize, usize)> {
        let start = self.buf.len();
        let _ = write!(Append(&mut self.buf), "{value}");
        if valid_value(&self.buf[start..]) {
            Some((start, self.buf.len()))
        } else {
            self.buf.truncate(start);
            None
        }
    }

    /// Sets `name` to the value at `value`: in place of the first header of that name (later
    /// ones, which only a forwarded answer has, removed), else at the end.
    fn put(&mut self, name: Name, value: (usize, usize)) {
        let Some(i) = self.position(name_of(&self.buf, name)) else {
            self.entries.push(Entry { name, value });
            return;
        };
        self.entries[i].value = value;
        let mut j = i + 1;
        while j < self.entries.len() {
            let (first, e) = (self.entries[i].name, self.entries[j].name);
            if name_of(&self.buf, e).eq_ignore_ascii_case(name_of(&self.buf, first)) {
                self.entries.remove(j);
            } else {
                j += 1;
            }
        }
    }

    /// Sets header `name` (a lower-case static name) to `value`, replacing it if present.
    pub(crate) fn set(&mut self, name: &'static str, value: impl Display) {
        debug_assert!(valid_name(name.as_bytes()) && !name.bytes().any(|b| b.is_ascii_uppercase()));
        if let Some(v) = self.push_value(value) {
            self.put(Name::Static(name), v);
        }
    }

    /// [`ResponseHeaders::set`] with raw value bytes (a request header echoed back).
    pub(crate) fn set_bytes(&mut self, name: &'static str, value: &[u8]) {
        if valid_value(value) {
            let start = self.buf.len();
            self.buf.extend_from_slice(value);
            self.put(Name::Static(name), (start, self.buf.len()));
        }
    }

    /// Writes `name` lower-cased into the buffer; its span, or `None` (and nothing kept) when
    /// it is not a valid header name.
    fn push_name(&mut self, name: impl Display) -> Option<Name> {
        let start = self.buf.len();
        let _ = write!(Append(&mut self.buf), "{name}");
        if valid_name(&self.buf[start..]) {
            self.buf[start..].make_ascii_lowercase();
            Some(Name::Buf(start, self.buf.len()))
        } else {
            self.buf.truncate(start);
            None
        }
    }

    /// Sets a header whose name is built at run time (`x-ms-meta-<key>`), lower-cased.
    pub(crate) fn set_named(&mut self, name: impl Display, value: impl Display) {
        let mark = self.buf.len();
        let Some(name) = self.push_name(name) else {
            return;
        };
        match self.push_value(value) {
            Some(v) => self.put(name, v),
            None => self.buf.truncate(mark),
        }
    }

    /// Appends a header as a map would (a forwarded answer may repeat a name).
    fn append(&mut self, name: &HeaderName, value: &HeaderValue) {
        if let Some(name) = self.push_name(name.as_str()) {
            let start = self.buf.len();
            self.buf.extend_from_slice(value.as_bytes());
            self.entries.push(Entry {
                name,
                value: (start, self.buf.len()),
            });
        }
    }

    /// The headers of a forwarded answer, in its map's order.
    #[cfg_attr(not(feature = "passthrough"), allow(dead_code))]
    pub(crate) fn from_map(map: &HeaderMap) -> Self {
        let mut h = ResponseHeaders::new();
        for (k, v) in map {
            h.append(k, v);
        }
        h
    }

    /// The headers as hyper's map (the REST front end's edge).
    pub fn to_map(&self) -> HeaderMap {
        let mut m = HeaderMap::with_capacity(self.len());
        for (k, v) in self.iter() {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_bytes(v),
            ) {
                m.append(n, v);
            }
        }
        m
    }
}

impl Drop for ResponseHeaders {
    /// Gives the buffers to the thread's spares (unless it has enough, or they grew large).
    fn drop(&mut self) {
        if self.entries.capacity() == 0
            || self.entries.capacity() > 4 * ENTRIES
            || self.buf.capacity() > SPARE_MAX_BYTES
        {
            return;
        }
        let (mut entries, mut buf) = (take(&mut self.entries), take(&mut self.buf));
        entries.clear();
        buf.clear();
        let _ = SPARE.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut()
                && s.len() < SPARES
            {
                s.push((entries, buf));
            }
        });
    }
}

impl std::ops::Index<&str> for ResponseHeaders {
    type Output = str;

    /// The value of header `name` as text; panics when it is absent or not text (as
    /// `HeaderMap`'s index panics when absent). For tests.
    fn index(&self, name: &str) -> &str {
        match self.get(name).map(|v| v.to_str()) {
            Some(Ok(v)) => v,
            _ => panic!("no text header {name:?}"),
        }
    }
}

/// The value of a response header ([`ResponseHeaders::get`]), read as `http::HeaderValue`s
/// are: bytes, or text when they are visible ASCII.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseValue<'a>(&'a [u8]);

/// A header value that is not text ([`ResponseValue::to_str`]).
#[derive(Debug, thiserror::Error)]
#[error("the header value is not visible ASCII text")]
pub struct NotText;

impl<'a> ResponseValue<'a> {
    /// The value's bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The value as text, if every byte is visible ASCII or a tab.
    pub fn to_str(&self) -> Result<&'a str, NotText> {
        text(self.0).ok_or(NotText)
    }
}

impl PartialEq<str> for ResponseValue<'_> {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for ResponseValue<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

pub(crate) struct Resp {
    pub(crate) status: StatusCode,
    pub(crate) headers: ResponseHeaders,
    pub(crate) body: Body,
    /// HEAD: headers describe a body that is not sent.
    pub(crate) head_only: bool,
}

impl Resp {
    pub(crate) fn new(status: u16) -> Self {
        Resp {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            headers: ResponseHeaders::new(),
            body: Body::Empty,
            head_only: false,
        }
    }
    pub(crate) fn h(mut self, name: &'static str, value: impl Display) -> Self {
        self.headers.set(name, value);
        self
    }
    pub(crate) fn xml(mut self, doc: String) -> Self {
        self.headers.set("content-type", "application/xml");
        self.body = Body::Bytes(doc.into_bytes());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(h: &ResponseHeaders) -> Vec<(String, String)> {
        h.iter()
            .map(|(k, v)| (k.to_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    /// Setting a present name replaces its value where it stands (as `HeaderMap::insert`), a
    /// run-time name is lower-cased, what `http` would refuse is not set, and removal keeps
    /// the order of the rest.
    #[test]
    fn response_headers_behave_like_the_map_they_replace() {
        let mut h = ResponseHeaders::new();
        h.set("etag", "\"0x1\"");
        h.set("content-length", 5);
        h.set_named(format_args!("x-ms-meta-{}", "Colour"), "blue");
        h.set("etag", "\"0x2\"");
        h.set("x-bad-value", "a\r\nb");
        h.set_named("bad name", "v");
        h.set_bytes("x-raw", b"caf\xc3\xa9");
        assert_eq!(
            pairs(&h),
            [
                ("etag", "\"0x2\""),
                ("content-length", "5"),
                ("x-ms-meta-colour", "blue"),
                ("x-raw", "café"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(h.get("ETag").unwrap(), "\"0x2\"");
        assert!(
            h.get("x-raw").unwrap().to_str().is_err(),
            "not visible ASCII"
        );
        assert_eq!(h.get("x-raw").unwrap().as_bytes(), b"caf\xc3\xa9");
        assert!(!h.contains_key("x-bad-value") && !h.contains_key("bad name"));
        assert_eq!(&h["x-ms-meta-colour"], "blue");
        h.remove("etag");
        let map = h.to_map();
        assert_eq!(
            map.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["content-length", "x-ms-meta-colour", "x-raw"]
        );
        assert_eq!(map["x-raw"].as_bytes(), b"caf\xc3\xa9");
    }

    /// A forwarded answer may repeat a name; setting it keeps the first place only.
    #[test]
    fn forwarded_headers_keep_their_order_and_repeats() {
        let mut m = HeaderMap::new();
        m.append("x-a", HeaderValue::from_static("1"));
        m.append("x-b", HeaderValue::from_static("2"));
        m.append("x-a", HeaderValue::from_static("3"));
        let mut h = ResponseHeaders::from_map(&m);
        assert_eq!(h.len(), 3);
        h.set("x-a", "4");
        assert_eq!(
            pairs(&h),
            [("x-a", "4"), ("x-b", "2")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    /// Request headers are looked up in any case, first one wins, and a value that is not
    /// text reads as absent (as `HeaderValue::to_str` failing did).
    #[test]
    fn request_headers_are_read_like_a_map() {
        let raw = [
            httparse::Header {
                name: "X-Ms-Version",
                value: b"2023-11-03",
            },
            httparse::Header {
                name: "x-ms-version",
                value: b"2020-01-01",
            },
            httparse::Header {
                name: "x-ms-meta-k",
                value: b"\xff",
            },
        ];
        let h = RequestHeaders(&raw);
        assert_eq!(h.get("x-ms-version"), Some("2023-11-03"));
        assert_eq!(h.get("x-ms-meta-k"), None);
        assert_eq!(h.raw("x-ms-meta-k"), Some(&b"\xff"[..]));
        assert_eq!(h.texts().nth(2), Some(("x-ms-meta-k", None)));
        let map = h.to_map();
        assert_eq!(map.get_all("x-ms-version").iter().count(), 2);
    }

    #[test]
    fn query_components_are_borrowed_unless_decoded() {
        let q = decode_query("comp=block&blockid=QQ%3D%3D&prefix=a+b&&flag");
        let got: Vec<(&str, &str)> = q.iter().map(|(k, v)| (&**k, &**v)).collect();
        assert_eq!(
            got,
            [
                ("comp", "block"),
                ("blockid", "QQ=="),
                ("prefix", "a b"),
                ("flag", "")
            ]
        );
        assert!(matches!(q[0].1, Cow::Borrowed(_)));
        assert!(matches!(q[1].1, Cow::Owned(_)));
    }
}
