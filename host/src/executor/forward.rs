//! The executor's side of the `passthrough:<url>` store: hand a verified request to the
//! upstream and turn its answer into a response (see [`crate::passthrough`] for the design).

use blobring_proto::header::X_MS_COPY_SOURCE;
use bytes::Bytes;
use http::header::HeaderValue;

use super::Executor;
use crate::passthrough::Passthrough;
use crate::request::{AzError, Body, Req, Resp, ResponseHeaders};

impl Executor {
    /// Forward `req` (already fault-injected and auth-verified by [`Executor::run`]) upstream.
    pub(super) fn forward(&self, up: &Passthrough, req: &Req<'_>) -> Result<Resp, AzError> {
        let mut path = req.raw_path;
        if req.path_has_account {
            let p = path.trim_start_matches('/');
            path = p.find('/').map_or("", |i| &p[i..]);
        }
        let mut headers = req.headers.to_map();
        if let Some(src) = req.header(X_MS_COPY_SOURCE)
            && let Ok((c, b)) = self.copy_source(src)
        {
            // The upstream cannot reach this host: name the source by its upstream URL.
            if let Ok(v) = HeaderValue::from_str(&up.blob_url(&c, &b)) {
                headers.insert(X_MS_COPY_SOURCE, v);
            }
        }
        // The upstream client takes owned pairs (forwarding is off the per-request path).
        let query: Vec<(String, String)> = req
            .query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let f = up.forward(
            &req.method,
            path,
            &query,
            &headers,
            Bytes::copy_from_slice(req.body),
            req.body_limit,
        )?;
        let mut r = Resp::new(f.status.as_u16());
        r.status = f.status;
        r.headers = ResponseHeaders::from_map(&f.headers);
        r.body = if let Some(needed) = f.too_large {
            Body::TooLarge(needed)
        } else if f.body.is_empty() {
            Body::Empty
        } else {
            Body::Bytes(Vec::from(f.body))
        };
        Ok(r)
    }
}
