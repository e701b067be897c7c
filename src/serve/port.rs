//! One port for everything `faultline serve` offers: the listener tells TLS from plain TCP by
//! the first byte (as the agents' own endpoint does), HTTP is served by axum through hyper
//! with a header timeout and a connection cap with a per-address share, and a websocket
//! upgrade on `/v1/agents` is handed to the fleet, which runs the agents' handshake
//! (docs/wire.md) on it as if it had accepted the connection itself. With a certificate the
//! port speaks TLS only, but to the agents `--allow-plaintext-agents` names.

use super::Service;
use crate::fleet::{websocket_config, Stream};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use faultline_agent::protocol::AGENT_PATH;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tower_service::Service as _;

/// How long a client has to finish its TLS handshake.
const TLS_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// What a connection refused at the cap is told (plain HTTP: a TLS client sees a failed
/// handshake, as it would from a closed connection).
const AT_THE_CAP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"error\": \"this address holds its share of the server's connections (--max-connections-per-address), or the server all it holds (--max-connections)\"}";

/// Where a connection came from and arrived at: the agents' proof covers the address dialed.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The client's address.
    pub remote: SocketAddr,
    /// The address it connected to.
    pub local: SocketAddr,
}

/// How many connections the port holds, and for how long a request may take to arrive, so
/// that no client (slow, half-open, or many) locks the others out of the API and the lever.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Connections held at once. An agent's websocket leaves the count once upgraded (the
    /// fleet admits those).
    pub connections: usize,
    /// Connections held at once from one address.
    pub per_address: usize,
    /// Time a client has to send a request's headers (from the connection's start or the
    /// end of its previous answer); then its connection is closed.
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 4096,
            per_address: 256,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// What the port speaks.
#[derive(Clone, Default)]
pub struct Transport {
    /// Certificate and key: then the port speaks TLS (`https://`, `wss://`) only, but to the
    /// agents `plaintext_agents` names.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// With `tls`, the networks whose agents may still dial plain `ws://` (`--allow-plaintext-agents`;
    /// empty: any address); `None`: no one.
    pub plaintext_agents: Option<Vec<ipnet::IpNet>>,
}

impl Transport {
    fn plain_agent_allowed(&self, ip: IpAddr) -> bool {
        self.plaintext_agents
            .as_ref()
            .is_some_and(|nets| nets.is_empty() || nets.iter().any(|n| n.contains(&ip)))
    }
}

/// Serves `app` on `listener` until `shutdown`, then lets the open connections finish their
/// requests (the caller bounds that wait). Each connection is secured and served in a task of
/// its own, so a slow one holds up nobody.
pub async fn serve(
    listener: TcpListener,
    transport: Transport,
    limits: Limits,
    app: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let slots = Arc::new(Slots::new(limits));
    let transport = Arc::new(transport);
    // Every connection task holds a receiver: all are gone when `closed` returns.
    let (open_tx, open_rx) = watch::channel(());
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
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
        let Some(slot) = slots.take(remote.ip()) else {
            // One write that never waits, then closed: a refused client costs one accept.
            let _ = stream.try_write(AT_THE_CAP);
            tracing::debug!(%remote, "connection refused: at the connection cap or this address's share of it");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let peer = Peer { remote, local };
        let task = Connection {
            transport: transport.clone(),
            app: app.clone(),
            limits,
            shutdown: shutdown.clone(),
            _open: open_rx.clone(),
        };
        tokio::spawn(task.run(stream, peer, slot));
    }
    drop(open_rx);
    open_tx.closed().await;
    Ok(())
}

/// What a connection's task needs.
struct Connection {
    transport: Arc<Transport>,
    app: axum::Router,
    limits: Limits,
    shutdown: CancellationToken,
    _open: watch::Receiver<()>,
}

impl Connection {
    async fn run(self, stream: TcpStream, peer: Peer, slot: Slot) {
        let secured = tokio::select! {
            s = tokio::time::timeout(TLS_TIMEOUT, secure(stream, self.transport.tls.as_ref())) => s,
            _ = slot.evicted() => return,
        };
        let (io, encrypted) = match secured {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return tracing::debug!(remote = %peer.remote, error = %e, "TLS handshake failed"),
            Err(_) => return tracing::debug!(remote = %peer.remote, "TLS handshake timed out"),
        };
        // With a certificate, plain HTTP gets a refusal naming https://; only agents of the
        // networks `--allow-plaintext-agents` names may speak plain ws://.
        let plain_refused = self.transport.tls.is_some() && !encrypted;
        let plain_agent = plain_refused && self.transport.plain_agent_allowed(peer.remote.ip());
        let app = self.app;
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let mut app = app.clone();
            async move {
                let to_agents = req.uri().path() == AGENT_PATH;
                if plain_refused && !(plain_agent && to_agents) {
                    return Ok::<_, Infallible>(plaintext_refused(peer.local, to_agents));
                }
                req.extensions_mut().insert(ConnectInfo(peer));
                app.call(req.map(axum::body::Body::new)).await
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout);
        let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
        tokio::pin!(conn);
        let mut draining = false;
        loop {
            tokio::select! {
                served = conn.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(remote = %peer.remote, error = %e, "connection ended");
                    }
                    return;
                }
                // Dropping the connection closes it.
                _ = slot.evicted() => return tracing::debug!(remote = %peer.remote, "connection closed to make room at the cap"),
                _ = self.shutdown.cancelled(), if !draining => {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
        }
    }
}

/// The answer to plain HTTP on a port that speaks TLS.
fn plaintext_refused(local: SocketAddr, to_agents: bool) -> Response {
    let message = if to_agents {
        format!("this port speaks TLS only: agents dial wss://{local}{AGENT_PATH} (plain ws:// only from the networks the server's --allow-plaintext-agents names)")
    } else {
        format!("this port speaks TLS only: use https://{local}/")
    };
    let mut r = refuse(StatusCode::BAD_REQUEST, &message);
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// TLS when the client starts one and there is a certificate, else plain TCP; and whether
/// it is TLS.
async fn secure(stream: TcpStream, tls: Option<&Arc<rustls::ServerConfig>>) -> std::io::Result<(Stream, bool)> {
    let Some(config) = tls else {
        return Ok((Stream::Left(stream), false));
    };
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    if n == 0 || first[0] != TLS_HANDSHAKE_RECORD {
        return Ok((Stream::Left(stream), false));
    }
    let secured = TlsAcceptor::from(config.clone()).accept(stream).await?;
    Ok((Stream::Right(secured), true))
}

/// The connections held, by address.
struct Slots {
    limits: Limits,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    /// Oldest first.
    by_address: HashMap<IpAddr, VecDeque<(u64, CancellationToken)>>,
    total: usize,
    next: u64,
}

/// One connection's place in [`Slots`]; given back when dropped.
struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
    id: u64,
    evicted: CancellationToken,
}

impl Slots {
    fn new(limits: Limits) -> Slots {
        Slots {
            limits,
            held: Mutex::new(Held::default()),
        }
    }

    /// A place for a connection from `ip`: none when that address holds its share. At the
    /// cap, the address holding the most connections gives up its oldest, as long as it
    /// holds more than `ip` would: a flood from a few addresses cannot keep out another.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut held = self.held.lock().expect("never poisoned");
        let mine = held.by_address.get(&ip).map_or(0, VecDeque::len);
        if mine >= self.limits.per_address {
            return None;
        }
        if held.total >= self.limits.connections {
            let heaviest = held
                .by_address
                .iter()
                .max_by_key(|(_, c)| c.len())
                .map(|(a, c)| (*a, c.len()))?;
            if heaviest.1 <= mine + 1 {
                return None;
            }
            let list = held.by_address.get_mut(&heaviest.0).expect("just found");
            if let Some((_, evicted)) = list.pop_front() {
                evicted.cancel();
                held.total -= 1;
            }
        }
        held.next += 1;
        let id = held.next;
        let evicted = CancellationToken::new();
        held.by_address.entry(ip).or_default().push_back((id, evicted.clone()));
        held.total += 1;
        Some(Slot {
            slots: self.clone(),
            ip,
            id,
            evicted,
        })
    }
}

impl Slot {
    async fn evicted(&self) {
        self.evicted.cancelled().await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().expect("never poisoned");
        let Some(list) = held.by_address.get_mut(&self.ip) else {
            return;
        };
        // An evicted slot was already taken out of the count.
        if let Some(at) = list.iter().position(|(id, _)| *id == self.id) {
            list.remove(at);
            let empty = list.is_empty();
            held.total -= 1;
            if empty {
                held.by_address.remove(&self.ip);
            }
        }
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
