//! Names of the headers both the SDK and the host read or write, lower-case as both send them
//! (HTTP header names are case-insensitive; `http::HeaderMap` keeps them lower-case).
//!
//! Standard HTTP headers the SharedKey string-to-sign covers are listed in
//! [`crate::STANDARD_HEADERS`]; the ones named here are those the two sides otherwise spell
//! out.

/// `Authorization` (`SharedKey <account>:<signature>`).
pub const AUTHORIZATION: &str = "authorization";
/// `Date` (signed; a request with `x-ms-date` may sign it empty).
pub const DATE: &str = "date";
/// `Content-Length` (signed empty when `0`).
pub const CONTENT_LENGTH: &str = "content-length";
/// `Content-MD5`: a write's body MD5 for the service to check, or a read's stored MD5.
pub const CONTENT_MD5: &str = "content-md5";
/// `If-Match`.
pub const IF_MATCH: &str = "if-match";
/// `If-None-Match` (`*`: create only).
pub const IF_NONE_MATCH: &str = "if-none-match";
/// `If-Modified-Since`.
pub const IF_MODIFIED_SINCE: &str = "if-modified-since";
/// `If-Unmodified-Since`.
pub const IF_UNMODIFIED_SINCE: &str = "if-unmodified-since";

/// Prefix of the headers the SharedKey string-to-sign lists by name.
pub const X_MS_PREFIX: &str = "x-ms-";
/// Prefix of user metadata headers (`x-ms-meta-<name>`).
pub const X_MS_META_PREFIX: &str = "x-ms-meta-";
/// The request time (RFC 1123), signed instead of `Date`.
pub const X_MS_DATE: &str = "x-ms-date";
/// The service version of the request.
pub const X_MS_VERSION: &str = "x-ms-version";
/// The Azure error code of an error response.
pub const X_MS_ERROR_CODE: &str = "x-ms-error-code";
/// A byte range (`bytes=<first>-<last>`), preferred over `Range`.
pub const X_MS_RANGE: &str = "x-ms-range";
/// The type of blob a Put Blob creates (`BlockBlob`).
pub const X_MS_BLOB_TYPE: &str = "x-ms-blob-type";
/// The `Content-Type` stored with a blob.
pub const X_MS_BLOB_CONTENT_TYPE: &str = "x-ms-blob-content-type";
/// The whole blob's MD5 stored with it (Base64).
pub const X_MS_BLOB_CONTENT_MD5: &str = "x-ms-blob-content-md5";
/// Azure's CRC64 of a write's body, for the service to check (Base64, little-endian).
pub const X_MS_CONTENT_CRC64: &str = "x-ms-content-crc64";
/// Asks for the CRC64 of a ranged read (`true`).
pub const X_MS_RANGE_GET_CONTENT_CRC64: &str = "x-ms-range-get-content-crc64";
/// Asks for the MD5 of a ranged read (`true`).
pub const X_MS_RANGE_GET_CONTENT_MD5: &str = "x-ms-range-get-content-md5";
/// The source URL of Copy Blob.
pub const X_MS_COPY_SOURCE: &str = "x-ms-copy-source";
/// The state of a copy (`success`).
pub const X_MS_COPY_STATUS: &str = "x-ms-copy-status";

/// Request header (blobring's own; not an `x-ms-` header, so never part of a SharedKey
/// signature) asking the host for one *window* of a Get Blob answer's body: `<first>-<last>`,
/// inclusive byte offsets into the body the request would otherwise get (the whole blob, or the
/// signed range). The answer has the status and headers of the whole answer, with this header
/// set to `<first>/<total>` (`total`: the whole body's length) and `Content-Length` the
/// window's length. It lets a peer that holds no account key, and so cannot sign a range of
/// its own (`blobring gateway`), carry a body larger than one request's data buffer as several
/// requests. A host that does not know the header answers whole (no such header in the
/// answer).
pub const BODY_WINDOW_HEADER: &str = "x-blobring-body-window";
/// With [`BODY_WINDOW_HEADER`]: the ETag the blob must still have, else 412 `ConditionNotMet`, so
/// that every window of one answer comes from one version of the blob.
pub const BODY_WINDOW_ETAG_HEADER: &str = "x-blobring-body-window-etag";

/// Request header (blobring's own, never signed) on a Put Blob whose body is larger than one
/// request's data buffer: `<first>/<total>` — this request carries body bytes `first..` of a
/// `total`-byte body (the signed `Content-Length` is `total`), sent in order, each part in its
/// own request with the same signed head. The host stages each part and answers 202 with this
/// header set to the next offset expected (`<next>/<total>`), until the last part, whose answer
/// is the Put Blob's own (the blob is committed, whole, only then, its length and hashes
/// checked). Lets a peer that holds no account key (`blobring gateway`) carry a single Put Blob
/// larger than one request.
pub const BODY_PART_HEADER: &str = "x-blobring-body-part";
/// With [`BODY_PART_HEADER`]: the upload's id (1–40 of `[A-Za-z0-9-]`, unique per upload).
pub const BODY_PART_ID_HEADER: &str = "x-blobring-body-part-id";
