//! Getting in: a bounded number of handshakes at once (and a share per address), TLS when the
//! peer starts one, the upgrade on the agent path, then the mutual proof of the token bound
//! to the address the agent dialed, and the agent's registration.

use faultline_agent::auth::{self, Role};
use faultline_agent::protocol::{
    decode, AgentMessage, ControllerMessage, ErrorCode, Frame, HeldFault, HostDescription, AGENT_PATH, MAX_FRAME_BYTES,
};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// How long an agent has to confirm the removal of a fault it reported holding.
use super::{error_frame, Fleet, FleetEvent, Inner};

/// Read buffer of one agent's websocket. Agents' frames are small, and tungstenite zero-fills
/// the whole buffer before each read: its 128 KiB default made every idle agent cost the
/// controller 128 KiB of resident memory. A larger frame grows the buffer for itself.
const READ_BUFFER: usize = 4096;

/// How long a peer has for TLS, the upgrade, its hello and its registration together.
pub(super) const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections in their handshake at once; more are closed at once, so a flood of peers
/// that never authenticate cannot starve agents of descriptors.
pub(super) const MAX_HANDSHAKES: usize = 1024;

/// Connections in their handshake at once from one address, so that one peer cannot take
/// every slot (agents behind one NAT still get many).
pub(super) const MAX_HANDSHAKES_PER_PEER: usize = 64;

/// The first byte of a TLS handshake record: how a `wss://` agent is told from a `ws://` one
/// on the same port.
pub(super) const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Why an agent connection was turned away before or while it registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionRefused {
    /// The websocket handshake did not complete in time.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The peer did not prove that it knows the token.
    #[error("the peer did not prove the token")]
    BadProof,
    /// The first frame was not a well-formed hello.
    #[error("the first frame was not a hello with a nonce")]
    NotHello,
    /// Another agent instance is connected with this host id.
    #[error("host id {host} is already connected from {peer} by another agent instance")]
    HostConflict {
        /// The host id.
        host: String,
        /// Where the connected instance is.
        peer: SocketAddr,
    },
    /// Too many connections at once.
    #[error("too many connections at once")]
    TooMany,
    /// The agent dialed another address than the one it reached: a relay.
    #[error("the agent dialed {dialed} but reached this controller at {here}")]
    Relayed {
        /// What the agent says it dialed.
        dialed: String,
        /// Where the connection arrived.
        here: String,
    },
    /// The TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The upgrade request asked for another path.
    #[error("wrong path; agents connect to {AGENT_PATH}")]
    WrongPath,
    /// Any other handshake failure.
    #[error("handshake: {0}")]
    Handshake(String),
    /// The first frame was something other than a registration.
    #[error("the first frame was not a registration")]
    NotRegistration,
    /// The peer closed before it registered.
    #[error("closed before registering")]
    ClosedEarly,
    /// The peer did not register in time.
    #[error("did not register in time")]
    RegisterTimeout,
    /// The welcome could not be sent.
    #[error("cannot welcome the agent: {0}")]
    Welcome(String),
}

/// The stream under an agent's websocket: plain TCP or TLS.
pub type Stream = tokio_util::either::Either<TcpStream, tokio_rustls::server::TlsStream<TcpStream>>;

/// A connection's place among the handshakes in progress: one of [`MAX_HANDSHAKES`] and of
/// its address's [`MAX_HANDSHAKES_PER_PEER`]; given back when dropped.
pub(super) struct HandshakeSlot {
    pub(super) inner: Arc<Inner>,
    pub(super) peer: std::net::IpAddr,
    pub(super) _global: OwnedSemaphorePermit,
}

/// A connection admitted to the agents' handshake ([`Fleet::admit`]); holds its slot.
pub struct Admission(HandshakeSlot);

impl HandshakeSlot {
    pub(super) fn take(inner: &Arc<Inner>, peer: std::net::IpAddr) -> Option<HandshakeSlot> {
        let global = inner.handshakes.clone().try_acquire_owned().ok()?;
        let mut per_peer = inner.handshaking.lock().expect("never poisoned");
        let count = per_peer.entry(peer).or_default();
        if *count >= MAX_HANDSHAKES_PER_PEER {
            return None;
        }
        *count += 1;
        Some(HandshakeSlot {
            inner: inner.clone(),
            peer,
            _global: global,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut per_peer = self.inner.handshaking.lock().expect("never poisoned");
        if let Some(count) = per_peer.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                per_peer.remove(&self.peer);
            }
        }
    }
}

/// What an agent said when it registered.
pub(super) struct Registration {
    pub(super) description: HostDescription,
    /// Its lease, clamped to 1 s - 1 h.
    pub(super) lease: Duration,
    pub(super) instance: String,
    pub(super) held: Vec<HeldFault>,
}

/// The next text frame of a connection in its handshake, decoded.
pub(super) async fn next_agent_frame<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut futures_util::stream::SplitStream<WebSocketStream<S>>,
) -> Result<AgentMessage, ConnectionRefused> {
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(Message::Text(t)) => {
                return decode::<AgentMessage>(t.as_str())
                    .map(|f| f.msg)
                    .map_err(|_| ConnectionRefused::NotRegistration)
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(_) => return Err(ConnectionRefused::NotRegistration),
            Err(e) => return Err(ConnectionRefused::Handshake(e.to_string())),
        }
    }
    Err(ConnectionRefused::ClosedEarly)
}

/// A websocket whose agent proved the token and registered.
pub(super) type Authenticated<S> = (
    futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    futures_util::stream::SplitStream<WebSocketStream<S>>,
    Registration,
);

/// The limits of an agent's websocket, wherever it was accepted.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

/// Accepts the upgrade only on the agent path; authentication follows inside the websocket.
pub(super) struct PathCheck;

impl Callback for PathCheck {
    fn on_request(self, req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
        let refuse = |status: StatusCode, why: &str| {
            let mut r = ErrorResponse::new(Some(why.to_string()));
            *r.status_mut() = status;
            r
        };
        if req.uri().path() != AGENT_PATH {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                &format!("agents connect to {AGENT_PATH}"),
            ));
        }
        Ok(resp)
    }
}

impl Fleet {
    /// Takes a handshake slot for a connection from `peer`, or `None` when too many are in
    /// their handshake (the connection should be refused).
    pub fn admit(&self, peer: SocketAddr) -> Option<Admission> {
        match HandshakeSlot::take(&self.inner, peer.ip()) {
            Some(slot) => Some(Admission(slot)),
            None => {
                self.refused(peer, ConnectionRefused::TooMany);
                None
            }
        }
    }

    /// Serves an agent whose websocket upgrade another server accepted on `local` (TLS, if
    /// any, is that server's): the agent's hello, the mutual proof, registration, then frames
    /// until it ends.
    pub async fn upgraded<S>(&self, ws: WebSocketStream<S>, peer: SocketAddr, local: SocketAddr, admission: Admission)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let fleet = self.clone();
        let cancel = self.inner.cancel.clone();
        let authenticated = tokio::time::timeout(REGISTER_TIMEOUT, fleet.authenticate(ws, local)).await;
        let result = match authenticated {
            Err(_) => Err(ConnectionRefused::HandshakeTimeout),
            Ok(Err(e)) => Err(e),
            Ok(Ok(link)) => fleet.link(link, peer, cancel, admission.0).await,
        };
        if let Err(reason) = result {
            fleet.refused(peer, reason);
        }
    }

    pub(super) async fn accept_loop(self, listener: TcpListener, cancel: CancellationToken) {
        loop {
            let Some((stream, peer)) = faultline_agent::net::accept(&listener, &cancel).await else {
                return;
            };
            let Some(permit) = HandshakeSlot::take(&self.inner, peer.ip()) else {
                self.refused(peer, ConnectionRefused::TooMany);
                continue;
            };
            let (fleet, cancel) = (self.clone(), cancel.clone());
            tokio::spawn(async move {
                if let Err(reason) = fleet.serve(stream, peer, cancel, permit).await {
                    fleet.refused(peer, reason);
                }
            });
        }
    }

    /// Logs a refused connection at a bounded rate, and tells the journal.
    pub(super) fn refused(&self, peer: SocketAddr, reason: ConnectionRefused) {
        let allowed = self
            .inner
            .refusals
            .lock()
            .expect("never poisoned")
            .allow(std::time::Instant::now());
        if let Some(suppressed) = allowed {
            tracing::warn!(%peer, %reason, suppressed, "agent connection refused");
        }
        let _ = self.inner.events.send(FleetEvent::Refused { peer, reason });
    }

    /// TLS when the peer starts one and this controller has a certificate, else plain TCP.
    pub(super) async fn secure(&self, stream: TcpStream) -> Result<Stream, ConnectionRefused> {
        let Some(acceptor) = &self.inner.tls else {
            return Ok(Stream::Left(stream));
        };
        let mut first = [0u8; 1];
        let n = stream
            .peek(&mut first)
            .await
            .map_err(|e| ConnectionRefused::Handshake(e.to_string()))?;
        if n == 0 || first[0] != TLS_HANDSHAKE_RECORD {
            let peer = stream
                .peer_addr()
                .map_err(|e| ConnectionRefused::Handshake(e.to_string()))?;
            if !peer.ip().is_loopback() {
                let allowed = self
                    .inner
                    .plain
                    .lock()
                    .expect("never poisoned")
                    .allow(std::time::Instant::now());
                if let Some(suppressed) = allowed {
                    tracing::warn!(%peer, suppressed, "an agent connects over plain ws:// although this controller has a certificate; give it wss:// and --ca");
                }
            }
            return Ok(Stream::Left(stream));
        }
        let tls = acceptor
            .accept(stream)
            .await
            .map_err(|e| ConnectionRefused::Tls(e.to_string()))?;
        Ok(Stream::Right(tls))
    }

    /// One agent connection on a listener of the fleet's: TLS, the upgrade, then as
    /// [`Fleet::upgraded`].
    pub(super) async fn serve(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        cancel: CancellationToken,
        handshake: HandshakeSlot,
    ) -> Result<(), ConnectionRefused> {
        let _ = stream.set_nodelay(true);
        let accepted = async {
            let (ws, local) = self.accept(stream).await?;
            self.authenticate(ws, local).await
        };
        let link = tokio::time::timeout(REGISTER_TIMEOUT, accepted)
            .await
            .map_err(|_| ConnectionRefused::HandshakeTimeout)??;
        self.link(link, peer, cancel, handshake).await
    }

    /// TLS and the upgrade on the agent path.
    pub(super) async fn accept(
        &self,
        stream: TcpStream,
    ) -> Result<(WebSocketStream<Stream>, SocketAddr), ConnectionRefused> {
        let local = stream
            .local_addr()
            .map_err(|e| ConnectionRefused::Handshake(e.to_string()))?;
        let stream = self.secure(stream).await?;
        let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, PathCheck, Some(websocket_config()))
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == StatusCode::NOT_FOUND => {
                    ConnectionRefused::WrongPath
                }
                other => ConnectionRefused::Handshake(other.to_string()),
            })?;
        Ok((ws, local))
    }

    /// The agent's hello, this controller's proof, and the agent's registration with its
    /// proof (docs/wire.md), on a websocket accepted on `local`.
    pub(super) async fn authenticate<S>(
        &self,
        ws: WebSocketStream<S>,
        local: SocketAddr,
    ) -> Result<Authenticated<S>, ConnectionRefused>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut sink, mut stream) = ws.split();
        let (agent_nonce, dialed) = match next_agent_frame(&mut stream).await? {
            AgentMessage::Hello { nonce, dialed } if auth::well_formed(&nonce) => (nonce, dialed),
            _ => return Err(ConnectionRefused::NotHello),
        };
        // The agent dialed this very socket, or an address the operator says forwards to it:
        // anything else is a peer relaying our proof to an agent that dialed someone else.
        let here = auth::address(local);
        if dialed != here && !self.inner.advertise.iter().any(|a| auth::address(*a) == dialed) {
            let refusal = ConnectionRefused::Relayed { dialed, here };
            let message =
                format!("{refusal}; if a NAT or proxy is expected there, start the controller with --advertise");
            let _ = sink
                .send(Message::text(error_frame(None, ErrorCode::Unauthorized, &message)))
                .await;
            let _ = sink.close().await;
            return Err(refusal);
        }
        let controller_nonce = auth::nonce();
        let transcript = auth::Transcript {
            agent_nonce: &agent_nonce,
            controller_nonce: &controller_nonce,
            dialed: &dialed,
        };
        let challenge = Frame::new(
            self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            ControllerMessage::Challenge {
                proof: auth::prove(&self.inner.token, Role::Controller, &transcript),
                nonce: controller_nonce.clone(),
            },
        );
        sink.send(Message::text(challenge.encode()))
            .await
            .map_err(|e| ConnectionRefused::Handshake(e.to_string()))?;
        let AgentMessage::Register {
            proof,
            host,
            lease_ms,
            instance,
            held,
        } = next_agent_frame(&mut stream).await?
        else {
            return Err(ConnectionRefused::NotRegistration);
        };
        if !auth::verify(&self.inner.token, Role::Agent, &transcript, &proof) {
            let refusal = error_frame(None, ErrorCode::Unauthorized, "the agent did not prove the token");
            let _ = sink.send(Message::text(refusal)).await;
            let _ = sink.close().await;
            return Err(ConnectionRefused::BadProof);
        }
        Ok((
            sink,
            stream,
            Registration {
                description: host,
                lease: Duration::from_millis(lease_ms.clamp(1000, 3_600_000)),
                instance,
                held,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Endpoint;

    #[tokio::test]
    pub(super) async fn one_peer_cannot_take_every_handshake_slot() {
        let cancel = CancellationToken::new();
        let (fleet, _) = Fleet::start(
            "127.0.0.1:0".parse().unwrap(),
            "t".into(),
            "ctl".into(),
            Endpoint::default(),
            cancel.clone(),
        )
        .await
        .unwrap();
        let (greedy, other) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let mut held: Vec<HandshakeSlot> = (0..MAX_HANDSHAKES_PER_PEER)
            .map(|_| HandshakeSlot::take(&fleet.inner, greedy).expect("a slot"))
            .collect();
        assert!(HandshakeSlot::take(&fleet.inner, greedy).is_none(), "past its share");
        assert!(
            HandshakeSlot::take(&fleet.inner, other).is_some(),
            "others still get in"
        );
        held.pop();
        assert!(
            HandshakeSlot::take(&fleet.inner, greedy).is_some(),
            "a slot given back is free"
        );
        drop(held);
        assert!(
            fleet.inner.handshaking.lock().unwrap().is_empty(),
            "nothing is left counted"
        );
        cancel.cancel();
    }
}
