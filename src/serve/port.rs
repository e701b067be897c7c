//! One port for everything `faultline serve` offers: the listener tells TLS from plain TCP by
//! the first byte (as the agents' own endpoint does), HTTP is served by axum, and a
//! websocket upgrade on `/v1/agents` is handed to the fleet, which runs the agents'
//! handshake (docs/wire.md) on it as if it had accepted the connection itself.

use super::Service;
use crate::fleet::{websocket_config, Stream};
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// How long a client has to finish its TLS handshake.
const TLS_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections secured and waiting for the HTTP server to take them.
const BACKLOG: usize = 128;
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Where a connection came from and arrived at: the agents' proof covers the address dialed.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The client's address.
    pub remote: SocketAddr,
    /// The address it connected to.
    pub local: SocketAddr,
}

impl Connected<IncomingStream<'_, PortListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, PortListener>) -> Self {
        *stream.remote_addr()
    }
}

/// The serve port: accepts TCP, runs TLS for clients that start it (each in its own task, so
/// a slow one holds up nobody), and gives the HTTP server plain or TLS streams.
pub struct PortListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(Stream, Peer)>,
}

impl PortListener {
    /// Serves `listener`; with `tls`, clients may speak TLS (`https://`, `wss://`) or not.
    pub fn new(listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> std::io::Result<PortListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(BACKLOG);
        let tls = tls.map(TlsAcceptor::from);
        tokio::spawn(async move {
            loop {
                let (stream, remote) = tokio::select! {
                    _ = tx.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of descriptors and the like: wait instead of spinning.
                            tracing::warn!(error = %e, "cannot accept a connection");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let _ = stream.set_nodelay(true);
                let (tx, tls) = (tx.clone(), tls.clone());
                tokio::spawn(async move {
                    let secured = tokio::time::timeout(TLS_TIMEOUT, secure(stream, tls.as_ref())).await;
                    match secured {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, Peer { remote, local })).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(PortListener { local, ready })
    }
}

/// TLS when the client starts one and there is a certificate, else plain TCP.
async fn secure(stream: TcpStream, tls: Option<&TlsAcceptor>) -> std::io::Result<Stream> {
    let Some(acceptor) = tls else {
        return Ok(Stream::Left(stream));
    };
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    if n == 0 || first[0] != TLS_HANDSHAKE_RECORD {
        return Ok(Stream::Left(stream));
    }
    Ok(Stream::Right(acceptor.accept(stream).await?))
}

impl axum::serve::Listener for PortListener {
    type Io = Stream;
    type Addr = Peer;

    async fn accept(&mut self) -> (Stream, Peer) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accepting task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer {
            remote: self.local,
            local: self.local,
        })
    }
}

/// `GET /v1/agents`: the agents' websocket. Authentication is the fleet's, inside the
/// websocket (no API token); the upgrade is answered here and the connection handed over.
pub async fn agents(
    State(service): State<Arc<Service>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    mut req: Request,
) -> Response {
    let key = match websocket_key(req.method(), req.headers()) {
        Ok(key) => key,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, why),
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return refuse(StatusCode::BAD_REQUEST, "this connection cannot be upgraded");
    };
    let fleet = service.controller.fleet().clone();
    let Some(admission) = fleet.admit(peer.remote) else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections are in their handshake; retry",
        );
    };
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(peer = %peer.remote, error = %e, "the agent's upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(websocket_config())).await;
        fleet.upgraded(ws, peer.remote, peer.local, admission).await;
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&key) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// The accept key for a websocket upgrade request (RFC 6455 §4.2.1), or why it is not one.
fn websocket_key(method: &Method, headers: &HeaderMap) -> Result<String, &'static str> {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if method != Method::GET || !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err("agents connect to /v1/agents with a websocket upgrade (GET, Upgrade: websocket)");
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err("the websocket upgrade needs Sec-WebSocket-Version: 13");
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or("the websocket upgrade needs a Sec-WebSocket-Key")?;
    Ok(derive_accept_key(key.as_bytes()))
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_websocket_upgrade_is_accepted() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        // The example of RFC 6455 §1.3.
        assert_eq!(websocket_key(&Method::GET, &h).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(websocket_key(&Method::POST, &h).is_err());
        h.remove(header::UPGRADE);
        assert!(websocket_key(&Method::GET, &h).is_err());
    }
}
