//! The one path from an executed request to its response, for both front doors: an Azure
//! error becomes its error document here ([`Executor::error_response`]), and a [`Resp`]
//! becomes status, headers and body bytes here ([`Executor::deliver`]) — into the VMBus data
//! buffer (a [`BodySink`] over guest memory, whose front end then only frames the head with
//! [`Executed::write_head`]) or into a growing buffer for the REST front end
//! ([`Executor::rest_response`]).

use std::time::SystemTime;

use base64::prelude::BASE64_STANDARD;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use md5::{Digest, Md5};

use blobring_proto::header::{
    CONTENT_LENGTH, CONTENT_MD5, DATE, X_MS_CONTENT_CRC64, X_MS_ERROR_CODE, X_MS_VERSION,
};

use super::{DEFAULT_VERSION, ExecuteError, Executor, crc64, http_date};
use crate::request::{AzError, Body, RequestHeaders, Resp, ResponseHeaders, borrow_map};
use crate::store::{BodySink, SliceSink, StoreError};
use crate::xml::esc;

/// Result of [`Executor::execute`]: the status and headers to render, and how many body bytes
/// were written into the caller's data buffer.
#[derive(Debug, Clone)]
pub struct Executed {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers (including `Content-Length`), in order.
    pub headers: ResponseHeaders,
    /// Body bytes written at the start of the data buffer.
    pub body_len: usize,
}

impl Executed {
    /// Size of the rendered head (`HTTP/1.1 <status>\r\n` + headers + blank line).
    pub fn head_len(&self) -> usize {
        let mut n =
            "HTTP/1.1 000 \r\n".len() + self.status.canonical_reason().unwrap_or("").len() + 2;
        for (k, v) in self.headers.iter() {
            n += k.len() + 2 + v.len() + 2;
        }
        n
    }

    /// Render the response head into `dst`; returns the bytes written.
    pub fn write_head(&self, dst: &mut [u8]) -> Result<usize, ExecuteError> {
        let needed = self.head_len();
        if needed > dst.len() {
            return Err(ExecuteError::HeadTooLarge {
                needed,
                capacity: dst.len(),
            });
        }
        let mut w = 0;
        let mut put = |b: &[u8]| {
            dst[w..w + b.len()].copy_from_slice(b);
            w += b.len();
        };
        put(b"HTTP/1.1 ");
        put(self.status.as_str().as_bytes());
        put(b" ");
        put(self.status.canonical_reason().unwrap_or("").as_bytes());
        put(b"\r\n");
        for (k, v) in self.headers.iter() {
            put(k.as_bytes());
            put(b": ");
            put(v);
            put(b"\r\n");
        }
        put(b"\r\n");
        Ok(w)
    }

    /// The rendered head as a vector.
    pub fn head_bytes(&self) -> Vec<u8> {
        let mut v = vec![0; self.head_len()];
        let n = self.write_head(&mut v).expect("sized by head_len");
        v.truncate(n);
        v
    }
}

/// The REST front end's body destination: a host buffer that grows to what is written.
struct VecSink<'a>(&'a mut Vec<u8>);

impl VecSink<'_> {
    /// Grow the buffer to hold `len` bytes at `offset`.
    fn grow(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        let end = offset
            .checked_add(len)
            .and_then(|e| usize::try_from(e).ok());
        let end = end.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{len} bytes at {offset} do not fit in memory"),
            )
        })?;
        if self.0.len() < end {
            self.0.resize(end, 0);
        }
        Ok(())
    }
}

impl BodySink for VecSink<'_> {
    fn capacity(&self) -> u64 {
        u64::MAX
    }
    fn write_at(&mut self, offset: u64, src: &[u8]) -> std::io::Result<()> {
        self.grow(offset, src.len() as u64)?;
        SliceSink(self.0).write_at(offset, src)
    }
    fn fill_from_file(
        &mut self,
        offset: u64,
        file: &std::fs::File,
        file_offset: u64,
        len: u64,
    ) -> std::io::Result<bool> {
        self.grow(offset, len)?;
        SliceSink(self.0).fill_from_file(offset, file, file_offset, len)
    }
}

impl Executor {
    /// The headers every response carries: request id, version, client request id, date.
    pub(super) fn common_headers(&self, h: &mut ResponseHeaders, req: RequestHeaders<'_>) {
        if !h.contains_key("x-ms-request-id") {
            h.set("x-ms-request-id", uuid::Uuid::new_v4().hyphenated());
        }
        let version = req.get(X_MS_VERSION).unwrap_or(DEFAULT_VERSION);
        h.set(X_MS_VERSION, version);
        if let Some(id) = req.raw("x-ms-client-request-id") {
            h.set_bytes("x-ms-client-request-id", id);
        }
        h.set(DATE, http_date(SystemTime::now()));
        h.set("server", "blobring-host");
    }

    /// `e` as an Azure error document (none for HEAD and 304), without the common headers
    /// (a Blob Batch part does not repeat them); [`Executor::error_response`] adds them.
    pub(super) fn error_resp(&self, e: AzError, head: bool) -> Resp {
        let rid = uuid::Uuid::new_v4().to_string();
        let mut r = Resp::new(e.status)
            .h(X_MS_ERROR_CODE, e.code)
            .h("x-ms-request-id", &rid);
        for (k, v) in e.headers {
            r.headers.set(k, v);
        }
        if !head && e.status != 304 {
            let doc = format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{}</Code><Message>{}\nRequestId:{}\nTime:{}</Message></Error>",
                e.code,
                esc(&e.message),
                rid,
                iso_now()
            );
            r = r.xml(doc);
        } else {
            r.head_only = head;
        }
        r
    }

    /// `e` as a complete response: its error document and the common headers.
    pub(super) fn error_response(
        &self,
        e: AzError,
        req_headers: RequestHeaders<'_>,
        head: bool,
    ) -> Resp {
        let mut r = self.error_resp(e, head);
        self.common_headers(&mut r.headers, req_headers);
        r
    }

    /// Render `resp` for a front door: its body written into `out` from offset 0 (a blob
    /// straight from the store, once), `Content-Length` set (HEAD keeps the blob's), the status
    /// and headers returned. A success body larger than `out` is
    /// [`ExecuteError::BodyTooLarge`]; an error document that does not fit is dropped (status
    /// and `x-ms-error-code` still say what went wrong); a store failure while reading the
    /// blob becomes its error response.
    pub(super) fn deliver(
        &self,
        req_headers: RequestHeaders<'_>,
        resp: Resp,
        out: &mut dyn BodySink,
    ) -> Result<Executed, ExecuteError> {
        let Resp {
            status,
            mut headers,
            body,
            head_only,
        } = resp;
        let cap = out.capacity();
        let too_large = |needed| ExecuteError::BodyTooLarge {
            needed,
            capacity: cap,
        };
        let destination = |e: std::io::Error| ExecuteError::Destination(e.to_string());
        let body_len = match body {
            Body::Empty => 0,
            Body::TooLarge(needed) => return Err(too_large(needed)),
            Body::Bytes(v) if v.len() as u64 > cap && status.as_u16() >= 300 => 0,
            Body::Bytes(v) if v.len() as u64 > cap => return Err(too_large(v.len() as u64)),
            Body::Bytes(v) => {
                out.write_at(0, &v).map_err(destination)?;
                v.len() as u64
            }
            Body::Blob {
                reader,
                offset,
                len,
                md5,
                crc64,
            } => {
                if len > cap {
                    return Err(too_large(len));
                }
                match reader.read_to(offset, len, out, 0) {
                    Ok(()) => {}
                    Err(StoreError::Destination(e)) => return Err(destination(e)),
                    Err(e) => {
                        let r = self.error_response(e.into(), req_headers, false);
                        return self.deliver(req_headers, r, out);
                    }
                }
                if md5 || crc64 {
                    // Transactional hashes cover at most 4 MiB; re-read the local snapshot
                    // rather than the destination, which the peer may have changed.
                    let mut v = vec![0u8; len as usize];
                    if reader.read_at(offset, &mut v).is_ok() {
                        add_range_hashes(&mut headers, &v, md5, crc64);
                    }
                }
                len
            }
        };
        if !head_only {
            headers.set(CONTENT_LENGTH, body_len);
        }
        Ok(Executed {
            status,
            headers,
            body_len: body_len as usize,
        })
    }

    /// [`Executor::deliver`] for the REST front end: the body into a buffer of its own, as an
    /// `http::Response`.
    pub(super) fn rest_response(
        &self,
        req_headers: RequestHeaders<'_>,
        resp: Resp,
    ) -> http::Response<Bytes> {
        let mut body = Vec::new();
        let done = match self.deliver(req_headers, resp, &mut VecSink(&mut body)) {
            Ok(done) => done,
            Err(e) => {
                // Unreachable in practice: a growing buffer takes any body.
                let e = AzError::new(500, "InternalError", &e.to_string());
                let r = self.error_response(e, req_headers, false);
                self.deliver(req_headers, r, &mut VecSink(&mut body))
                    .expect("an error document fits a growing buffer")
            }
        };
        body.truncate(done.body_len);
        let mut out = http::Response::new(Bytes::from(body));
        *out.status_mut() = done.status;
        *out.headers_mut() = done.headers.to_map();
        out
    }

    /// A refusal of the REST front end's own (a body over its limit, a failed task), rendered
    /// by the same error path as the executor's.
    pub fn rest_error(
        &self,
        req_headers: &HeaderMap,
        status: u16,
        code: &'static str,
        message: &str,
    ) -> http::Response<Bytes> {
        let list = borrow_map(req_headers);
        let req_headers = RequestHeaders(&list);
        let r = self.error_response(AzError::new(status, code, message), req_headers, false);
        self.rest_response(req_headers, r)
    }
}

fn iso_now() -> String {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let dd = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:07}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos() / 100
    )
}

fn add_range_hashes(h: &mut ResponseHeaders, data: &[u8], md5: bool, crc: bool) {
    use base64::display::Base64Display;
    if md5 {
        let digest = Md5::digest(data);
        h.set(CONTENT_MD5, Base64Display::new(&digest, &BASE64_STANDARD));
    }
    if crc {
        let digest = crc64(data);
        h.set(
            X_MS_CONTENT_CRC64,
            Base64Display::new(&digest, &BASE64_STANDARD),
        );
    }
}
