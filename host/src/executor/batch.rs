//! Blob Batch: a multipart body of sub-requests (Delete Blob), each run through the executor
//! as if sent alone, answered as one multipart response.

use std::fmt::Write as _;

use blobring_proto::header::DATE;
use http::Method;

use super::{Executor, MAX_BATCH, MAX_HEADERS, parse_head};
use crate::request::{AzError, Body, Req, Resp};

impl Executor {
    /// A Blob Batch on a container the caller has checked exists.
    pub(super) fn batch(&self, req: &Req<'_>) -> Result<Resp, AzError> {
        let ct = req.header("content-type").unwrap_or("");
        let boundary = ct
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("boundary="))
            .next()
            .map(|b| b.trim_matches('"').to_owned())
            .ok_or_else(|| {
                AzError::bad(
                    "InvalidHeaderValue",
                    "Content-Type must be multipart/mixed with a boundary.",
                )
            })?;
        let parts = split_multipart(req.body, &boundary)?;
        if parts.len() > MAX_BATCH {
            return Err(AzError::bad(
                "ExceedsMaxBatchRequestCount",
                "The batch operation exceeds the maximum number of sub-requests (256).",
            ));
        }
        let out_boundary = format!("batchresponse_{}", uuid::Uuid::new_v4());
        let mut out = Vec::with_capacity(parts.len() * 300);
        for part in parts {
            let mut hdrs = [httparse::EMPTY_HEADER; 16];
            let (pos, part_headers) = match httparse::parse_headers(part, &mut hdrs) {
                Ok(httparse::Status::Complete(x)) => x,
                _ => {
                    return Err(AzError::bad(
                        "InvalidInput",
                        "A batch part's headers could not be parsed.",
                    ));
                }
            };
            let content_id = part_headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-id"))
                .map(|h| String::from_utf8_lossy(h.value).into_owned());
            let sub = &part[pos..];
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let resp = match parse_head(sub, &mut slots) {
                Ok((method, target, headers)) => {
                    let sreq = self.make_req(method, target, headers, &[]);
                    if sreq.method != Method::DELETE {
                        self.error_resp(
                            AzError::bad(
                                "InvalidInput",
                                "Only Delete Blob sub-requests are supported in a batch.",
                            ),
                            false,
                        )
                    } else {
                        let mut r = self.run(&sreq);
                        // Date/server headers are not repeated per part.
                        r.headers.remove(DATE);
                        r.headers.remove("server");
                        r
                    }
                }
                Err(e) => self.error_resp(e, false),
            };
            let _ = write!(
                Wr(&mut out),
                "--{out_boundary}\r\nContent-Type: application/http\r\n"
            );
            if let Some(id) = content_id {
                let _ = write!(Wr(&mut out), "Content-ID: {id}\r\n");
            }
            let _ = write!(
                Wr(&mut out),
                "\r\nHTTP/1.1 {} {}\r\n",
                resp.status.as_str(),
                resp.status.canonical_reason().unwrap_or("")
            );
            let body: &[u8] = match &resp.body {
                Body::Bytes(v) => v,
                _ => &[],
            };
            for (k, v) in resp.headers.iter() {
                out.extend_from_slice(k.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(v);
                out.extend_from_slice(b"\r\n");
            }
            let _ = write!(Wr(&mut out), "Content-Length: {}\r\n\r\n", body.len());
            out.extend_from_slice(body);
            if !body.is_empty() {
                out.extend_from_slice(b"\r\n");
            }
        }
        let _ = write!(Wr(&mut out), "--{out_boundary}--\r\n");
        let mut r = Resp::new(202).h(
            "content-type",
            format!("multipart/mixed; boundary={out_boundary}"),
        );
        r.body = Body::Bytes(out);
        Ok(r)
    }
}

/// `fmt::Write` over a byte vector.
struct Wr<'a>(&'a mut Vec<u8>);
impl std::fmt::Write for Wr<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Split a multipart body into parts (the bytes between boundary lines).
fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<&'a [u8]>, AzError> {
    let delim = format!("--{boundary}");
    let d = delim.as_bytes();
    let find = |hay: &[u8], from: usize| {
        hay.get(from..)
            .and_then(|h| h.windows(d.len()).position(|w| w == d))
            .map(|p| p + from)
    };
    let bad = || {
        AzError::bad(
            "InvalidInput",
            "The batch body is not valid multipart/mixed.",
        )
    };
    let mut parts = Vec::new();
    let mut pos = find(body, 0).ok_or_else(bad)?;
    loop {
        let after = pos + d.len();
        if body.get(after..after + 2) == Some(b"--") {
            break;
        }
        let start = after
            + if body.get(after..after + 2) == Some(b"\r\n") {
                2
            } else {
                0
            };
        let next = find(body, start).ok_or_else(bad)?;
        let mut part = &body[start..next];
        if part.ends_with(b"\r\n") {
            part = &part[..part.len() - 2];
        }
        parts.push(part);
        if parts.len() > MAX_BATCH {
            break;
        }
        pos = next;
    }
    Ok(parts)
}
