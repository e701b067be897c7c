//! Shared pieces of the demo binaries: serving HTTP/1.1 until told to stop, signals, flags.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A response body.
pub type Body = Full<Bytes>;

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("static parts are valid")
}

/// Serves HTTP/1.1 on `listener` with `handler` until `cancel`; open connections finish
/// their current request.
pub async fn serve<H, F>(listener: TcpListener, handler: Arc<H>, cancel: CancellationToken)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let Some((stream, _)) = faultline_agent::net::accept(&listener, &cancel).await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let (handler, cancel) = (handler.clone(), cancel.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let fut = handler(req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
        });
    }
}

/// Binds `addr`, logging why not when it cannot; the listener and the address it got.
pub async fn bind(addr: std::net::SocketAddr) -> Option<(TcpListener, std::net::SocketAddr)> {
    match TcpListener::bind(addr).await {
        Ok(l) => {
            let bound = l.local_addr().unwrap_or(addr);
            Some((l, bound))
        }
        Err(e) => {
            tracing::error!(listen = %addr, error = %e, "cannot listen");
            None
        }
    }
}

/// Cancels the returned token on SIGTERM or SIGINT.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    tokio::spawn(faultline_agent::signals::cancel_on_signal(token.clone()));
    token
}

/// A one-threaded runtime: the demo services are small.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime can be built")
}
