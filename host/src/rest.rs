//! HTTP REST front end: the executor behind hyper on a loopback port, with path-style URLs
//! (`/<account>/<container>/<blob>`) as Azurite serves them; over plain HTTP and, with
//! [`Tls`], over HTTPS (rustls), as Azure Blob itself is served — the honest baseline for
//! what an HTTP client pays.
//!
//! Each request is admitted on its head first (injected faults and the SharedKey or SAS
//! signature, [`Executor::admit_request`]): a request that will be refused is answered without
//! reading a byte of its body. An admitted body is then collected up to `max_body` bytes — a
//! `Content-Length` above it is refused at once with 413 `RequestBodyTooLarge` naming the
//! limit, and a chunked body is cut off (and refused the same way) as soon as it passes it — so
//! no client, signed or not, makes the host hold more than `max_body` bytes per request. The
//! blocking executor runs on tokio's blocking pool (`spawn_blocking`), so store I/O never
//! stalls the reactor. Only loopback addresses may be bound: the front end is a local
//! comparison path, not a network service.
//!
//! Put Blob is the exception to the body bound: its body, when larger than 16 MiB or of unknown
//! length, is streamed to the store in 8 MiB blocks committed at the end
//! ([`Executor::execute_put_stream`]), up to the service's 5000 MiB limit, in bounded memory.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::executor::Executor;

/// Errors starting the REST front end.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// The address is not a loopback address.
    #[error(
        "Refusing to serve on {0}: the REST front end binds loopback only; use 127.0.0.1:PORT or [::1]:PORT"
    )]
    NotLoopback(SocketAddr),
    /// Binding failed.
    #[error("Cannot listen on {addr}: {source}; pick a free port or stop the process using it")]
    Bind {
        /// Requested address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Bind a loopback listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, RestError> {
    if !addr.ip().is_loopback() {
        return Err(RestError::NotLoopback(addr));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| RestError::Bind { addr, source })
}

/// The default bound on a request body (`--max-body`): 256 MiB.
pub const DEFAULT_MAX_BODY: u64 = 256 << 20;

/// Errors setting up TLS for `--https`.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds no usable certificate or key.
    #[error(
        "cannot use {path} for --https: {why}; give a PEM certificate chain (--tls-cert) and its PEM private key (--tls-key), or neither to have one generated"
    )]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// Generating the self-signed certificate failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    /// The generated certificate could not be written.
    #[error(
        "cannot write the generated certificate to {path}: {source}; pick another --tls-cert-out"
    )]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// rustls refused the certificate and key.
    #[error("the TLS certificate and key do not form a valid server identity: {0}")]
    Config(#[from] rustls::Error),
}

/// TLS for the REST front end (`--https`): rustls with the aws-lc-rs provider (the same TLS
/// stack object_store and reqwest use), HTTP/1.1 only.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    /// The certificate clients should trust (PEM): the one given, or the generated one.
    pub cert_path: PathBuf,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert_path", &self.cert_path)
            .finish()
    }
}

impl Tls {
    /// TLS from a PEM certificate chain and private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let pem = |path: &Path, why: String| TlsError::Pem {
            path: path.to_owned(),
            why,
        };
        let certs = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem(cert, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem(cert, e.to_string()))?;
        if certs.is_empty() {
            return Err(pem(cert, "no CERTIFICATE block".into()));
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e.to_string()))?;
        Tls::new(certs, key_der, cert.to_owned())
    }

    /// A self-signed certificate for `localhost`, `127.0.0.1` and `::1`, generated now; its PEM
    /// is written to `cert_out` for clients to trust (the key stays in memory).
    pub fn self_signed(cert_out: &Path) -> Result<Tls, TlsError> {
        let names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
        let ck = rcgen::generate_simple_self_signed(names)
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        std::fs::write(cert_out, ck.cert.pem()).map_err(|source| TlsError::Write {
            path: cert_out.to_owned(),
            source,
        })?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        Tls::new(vec![ck.cert.der().clone()], key, cert_out.to_owned())
    }

    fn new(
        certs: Vec<rustls::pki_types::CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
        cert_path: PathBuf,
    ) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
            cert_path,
        })
    }
}

/// Serve `exec` on `listener` until `shutdown` completes; request bodies are bounded by
/// `max_body` bytes. With `tls`, every connection is TLS (a failed handshake closes it).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Tls>,
    exec: Arc<Executor>,
    max_body: u64,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Transient accept errors (EMFILE, ECONNABORTED) must not stop the server.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let exec = Arc::clone(&exec);
        let tls = tls.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(Arc::clone(&exec), max_body, req));
            let mut http = http1::Builder::new();
            let r = match tls {
                None => {
                    http.keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await
                }
                Some(tls) => match tls.acceptor.accept(stream).await {
                    Ok(s) => {
                        http.keep_alive(true)
                            .serve_connection(TokioIo::new(s), svc)
                            .await
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                },
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

/// A failed blocking task (a panic in the executor), answered by the executor's error path.
fn task_failed(exec: &Executor, req_headers: &HeaderMap) -> Response<Full<Bytes>> {
    let msg = "The host's executor task failed; retry the request, and report it if it persists.";
    exec.rest_error(req_headers, 500, "InternalError", msg)
        .map(Full::new)
}

/// Mark a response as the last on its connection (its request's body was not read to the end).
fn close(mut r: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    r.headers_mut()
        .insert("connection", HeaderValue::from_static("close"));
    r
}

/// Put Blob bodies larger than this (or of unknown length) are streamed to the store.
const STREAM_ABOVE: u64 = 16 << 20;

/// Streams an admitted Put Blob's body to the executor (on a blocking thread) a frame at a
/// time through a small channel: at most a few frames and one 8 MiB staging block are in
/// memory, whatever the body's size.
async fn put_stream(
    exec: Arc<Executor>,
    parts: hyper::http::request::Parts,
    mut body: Incoming,
) -> Response<Full<Bytes>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(8);
    let headers = parts.headers.clone();
    let task = tokio::task::spawn_blocking({
        let exec = Arc::clone(&exec);
        move || exec.execute_put_stream(&parts, &mut || rx.blocking_recv())
    });
    let mut finished = true;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if tx.send(Ok(data)).await.is_err() {
                    // The executor stopped reading (an error): the rest stays unread.
                    finished = false;
                    break;
                }
            }
            Some(Err(e)) => {
                let _ = tx.send(Err(e.to_string())).await;
                finished = false;
                break;
            }
        }
    }
    drop(tx);
    let r = match task.await {
        Ok(r) => r.map(Full::new),
        Err(_) => task_failed(&exec, &headers),
    };
    if finished { r } else { close(r) }
}

/// 413 `RequestBodyTooLarge` naming the limit, by the executor's error path; the rest of the
/// body is not read, so the connection closes.
fn too_large(
    exec: &Executor,
    req_headers: &HeaderMap,
    max_body: u64,
    what: String,
) -> Response<Full<Bytes>> {
    tracing::info!(max_body, "{what}; refused with 413");
    let msg = format!(
        "{what}: the request body is larger than the limit of {max_body} bytes \
         (blobring-host --max-body); send it in smaller blocks (Put Block)."
    );
    close(
        exec.rest_error(req_headers, 413, "RequestBodyTooLarge", &msg)
            .map(Full::new),
    )
}

async fn handle(
    exec: Arc<Executor>,
    max_body: u64,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    // Admission on the head alone, before any body byte: inline (an HMAC), or on the
    // blocking pool when injected faults may sleep.
    let (parts, admitted) = if !exec.admission_blocks() {
        let r = exec.admit_request(&parts);
        (parts, r)
    } else {
        let blocking = Arc::clone(&exec);
        match tokio::task::spawn_blocking(move || {
            let r = blocking.admit_request(&parts);
            (parts, r)
        })
        .await
        {
            Ok(x) => x,
            Err(_) => return Ok(task_failed(&exec, &HeaderMap::new())),
        }
    };
    if let Some(refused) = admitted {
        let r = refused.map(Full::new);
        // An unread body makes the connection unusable for another request.
        let ended = hyper::body::Body::is_end_stream(&body);
        return Ok(if ended { r } else { close(r) });
    }
    let declared = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if blobring_proto::is_put_blob(&parts)
        && exec.streams_put_blob()
        && declared.is_none_or(|n| n > STREAM_ABOVE)
    {
        return Ok(put_stream(exec, parts, body).await);
    }
    if let Some(n) = declared
        && n > max_body
    {
        return Ok(too_large(
            &exec,
            &parts.headers,
            max_body,
            format!("Content-Length {n}"),
        ));
    }
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    let body = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let what = "a chunked body".into();
            return Ok(too_large(&exec, &parts.headers, max_body, what));
        }
        Err(e) => {
            let msg = format!("The request body could not be read: {e}.");
            let r = exec.rest_error(&parts.headers, 400, "InvalidInput", &msg);
            return Ok(close(r.map(Full::new)));
        }
    };
    let headers = parts.headers.clone();
    let req = Request::from_parts(parts, body);
    let task = tokio::task::spawn_blocking({
        let exec = Arc::clone(&exec);
        move || exec.execute_admitted(req)
    });
    Ok(match task.await {
        Ok(r) => r.map(Full::new),
        Err(_) => task_failed(&exec, &headers),
    })
}
