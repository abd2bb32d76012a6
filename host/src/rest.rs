//! HTTP REST front end: the executor behind hyper on a loopback port, with path-style URLs
//! (`/<account>/<container>/<blob>`) as Azurite serves them.
//!
//! Each request body is collected, then the blocking executor runs on tokio's blocking pool
//! (`spawn_blocking`), so store I/O never stalls the reactor. Only loopback addresses may be
//! bound: the front end is a local comparison path, not a network service.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
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

/// Serve `exec` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    exec: Arc<Executor>,
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
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(Arc::clone(&exec), req));
            if let Err(e) = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

fn plain(status: StatusCode, msg: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(msg.as_bytes())));
    *r.status_mut() = status;
    r
}

async fn handle(
    exec: Arc<Executor>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                "request body could not be read",
            ));
        }
    };
    let req = Request::from_parts(parts, body);
    match tokio::task::spawn_blocking(move || exec.execute_request(req)).await {
        Ok(r) => Ok(r.map(Full::new)),
        Err(_) => Ok(plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "executor task failed",
        )),
    }
}
