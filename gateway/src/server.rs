//! Listeners and connections: one tokio task per connection (hyper HTTP/1.1 with keep-alive),
//! at most [`Config::max_connections`] at once, a header-read deadline so a client that never
//! finishes its head holds nothing but its socket; plus the metrics listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use crate::{Config, Gateway, GatewayError};

/// A started gateway: its bound addresses and state. Its tasks run on the runtime that
/// started it until [`Running::stop`] or the runtime ends.
#[derive(Debug)]
pub struct Running {
    /// The TCP address Blob REST is served on (the real port when 0 was asked for).
    pub addr: Option<SocketAddr>,
    /// The metrics listener's address.
    pub metrics: Option<SocketAddr>,
    /// The shared state (statistics).
    pub gateway: Arc<Gateway>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting (connections already open finish on their own).
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn bind_err(what: impl ToString) -> impl FnOnce(std::io::Error) -> GatewayError {
    let what = what.to_string();
    move |source| GatewayError::Bind { what, source }
}

/// Binds every listener of `cfg` and serves them on the current tokio runtime.
pub async fn start(cfg: Config) -> Result<Running, GatewayError> {
    if cfg.listen.is_none() && cfg.unix.is_none() {
        return Err(GatewayError::NoListener);
    }
    let gw = Gateway::new(cfg.clone());
    let sem = Arc::new(Semaphore::new(cfg.max_connections));
    let mut tasks = Vec::new();
    let mut addr = None;
    if let Some(a) = cfg.listen {
        if !a.ip().is_loopback() {
            tracing::warn!(
                %a,
                "the gateway listens beyond loopback: anyone who reaches {a} uses this \
                 blobring session (requests are still authenticated by the host)"
            );
        }
        let l = tokio::net::TcpListener::bind(a)
            .await
            .map_err(bind_err(a))?;
        addr = Some(l.local_addr().map_err(bind_err(a))?);
        tasks.push(serve(gw.clone(), sem.clone(), l));
    }
    if let Some(p) = &cfg.unix {
        use std::os::unix::fs::FileTypeExt as _;
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(p); // a stale socket of an earlier run
        }
        let l = tokio::net::UnixListener::bind(p).map_err(bind_err(p.display()))?;
        tasks.push(serve(gw.clone(), sem.clone(), l));
    }
    let mut metrics = None;
    if let Some(a) = cfg.metrics {
        let l = tokio::net::TcpListener::bind(a)
            .await
            .map_err(bind_err(a))?;
        metrics = Some(l.local_addr().map_err(bind_err(a))?);
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let gw = gw.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let gw = gw.clone();
                        async move { Ok::<_, std::convert::Infallible>(metrics_answer(&gw, &req)) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        }));
    }
    Ok(Running {
        addr,
        metrics,
        gateway: gw,
        tasks,
    })
}

/// A listener of Blob REST connections (TCP or unix).
trait Accept: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection, ready to serve.
    fn next(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn next(&self) -> std::io::Result<Self::Stream> {
        let (s, _) = self.accept().await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn next(&self) -> std::io::Result<Self::Stream> {
        Ok(self.accept().await?.0)
    }
}

/// Accepts on `l`, each connection once a permit of `sem` is free, and serves each in its own
/// task.
fn serve(gw: Arc<Gateway>, sem: Arc<Semaphore>, l: impl Accept) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok(permit) = sem.clone().acquire_owned().await else {
                return;
            };
            match l.next().await {
                Ok(s) => {
                    tokio::spawn(connection(gw.clone(), s, permit));
                }
                Err(e) => {
                    // EMFILE and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "gateway accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    })
}

fn metrics_answer<B>(gw: &Gateway, req: &http::Request<B>) -> http::Response<Full<Bytes>> {
    let (status, ty, body) = match req.uri().path() {
        "/metrics" => (200, "text/plain; version=0.0.4", gw.stats().prometheus()),
        "/stats" => (200, "application/json", gw.stats().json().to_string()),
        _ => (404, "text/plain", "try /metrics or /stats\n".to_string()),
    };
    let mut r = http::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    r.headers_mut()
        .insert("content-type", http::HeaderValue::from_static(ty));
    r
}

async fn connection<S>(gw: Arc<Gateway>, s: S, permit: tokio::sync::OwnedSemaphorePermit)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let st = gw.stats();
    st.connections_total.fetch_add(1, Ordering::Relaxed);
    st.connections_open.fetch_add(1, Ordering::Relaxed);
    let idle = gw.cfg.body_idle_timeout;
    let g = gw.clone();
    let svc = service_fn(move |req| g.clone().handle(req));
    let r = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .keep_alive(true)
        .serve_connection(TokioIo::new(s), svc)
        .await;
    if let Err(e) = r {
        // A client that went away mid-request is its own business: not a gateway error.
        tracing::debug!(error = %e, "gateway connection ended");
    }
    gw.stats().connections_open.fetch_sub(1, Ordering::Relaxed);
    drop(permit);
}

/// `blobring gateway`: starts the gateway on a new tokio runtime, prints where it listens
/// (`blobring gateway: listening on http://ADDR`, one line per listener, on stdout) and
/// serves until SIGINT or SIGTERM.
pub fn run(cfg: Config) -> Result<(), GatewayError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("blobring-gateway")
        .build()
        .map_err(GatewayError::Runtime)?;
    rt.block_on(async {
        use std::io::Write as _;
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(GatewayError::Runtime)?;
        let mut int = signal(SignalKind::interrupt()).map_err(GatewayError::Runtime)?;
        let socket = cfg.socket.clone();
        let r = start(cfg.clone()).await?;
        let mut out = std::io::stdout().lock();
        if let Some(a) = r.addr {
            let _ = writeln!(out, "blobring gateway: listening on http://{a}");
        }
        if let Some(p) = &cfg.unix {
            let _ = writeln!(out, "blobring gateway: listening on unix:{}", p.display());
        }
        if let Some(a) = r.metrics {
            let _ = writeln!(out, "blobring gateway: metrics on http://{a}/metrics");
        }
        let _ = out.flush();
        drop(out);
        tracing::info!(daemon = %socket.display(), "blobring gateway serving");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        r.stop();
        tracing::info!(
            requests = r.gateway.stats().requests(),
            "blobring gateway stopping"
        );
        Ok(())
    })
}
