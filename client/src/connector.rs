//! An object_store [`HttpConnector`] that carries object_store's Azure requests through
//! blobring instead of TCP (cargo feature `object-store`).
//!
//! object_store signs and builds each request as usual; [`BlobringService`] serialises it into
//! an HTTP/1.1 head (request line with the URL's path and query, a `Host` header and every
//! header object_store set) plus the body in an arena buffer, submits it, parses the response
//! head and returns the body. Nothing else in object_store changes, so DataFusion, delta-rs,
//! Lance or Polars users switch with one builder call.
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

use http_body_util::BodyExt;
use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService,
};

use crate::blob::parse_response_head;
use crate::{Client, ClientError, Request};

/// Creates [`BlobringService`]s over one [`Client`].
#[derive(Debug, Clone)]
pub struct BlobringConnector {
    client: Client,
}

impl BlobringConnector {
    /// A connector over `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl HttpConnector for BlobringConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(BlobringService {
            client: self.client.clone(),
        }))
    }
}

/// The [`HttpService`]: one blobring request per HTTP request.
#[derive(Debug, Clone)]
pub struct BlobringService {
    client: Client,
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

fn range_len(req: &HttpRequest) -> Option<u64> {
    let v = req
        .headers()
        .get("range")
        .or_else(|| req.headers().get("x-ms-range"))?
        .to_str()
        .ok()?;
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    let a: u64 = a.parse().ok()?;
    let b: u64 = b.parse().ok()?;
    Some(b.checked_sub(a)? + 1)
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
        let data = match &c.data {
            Some(l) => l.to_bytes(c.data_len())?,
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
        // The request is already signed, so it cannot be changed (no added range, no probing
        // HEAD): a whole-object GET gets the largest buffer the arena allows, and a larger
        // object fails with a VSP error naming the limit (ask object_store for ranges, or start
        // blobringd with a larger --arena-size).
        let recv = match range_len(&probe) {
            Some(n) => n,
            None if probe.method() == http::Method::GET => {
                (self.client.arena_len() / 2).min(crate::MAX_REQUEST_DATA)
            }
            None => DEFAULT_RECV,
        };
        let recv = recv
            .min(self.client.arena_len())
            .min(crate::MAX_REQUEST_DATA);
        self.once(&head, &body, recv).await.map_err(err)
    }
}
