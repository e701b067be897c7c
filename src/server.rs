//! The controller's agent server: agents dial in over a websocket (`ws://`, or `wss://` when
//! the controller has a certificate), both sides prove the shared token by challenge-response
//! (docs/wire.md), the agent registers, and then takes commands. The [`Fleet`] is the
//! registry of connected agents and the way to command them. One host id has one connection:
//! another agent instance claiming a connected host's id is refused.

use faultline_agent::auth::{self, Role};
use faultline_agent::net::Throttle;
use faultline_agent::protocol::{
    decode, AgentMessage, ControllerMessage, DecodeError, EndReason, ErrorCode, Frame, HeldFault, HostDescription,
    Observed, Outcome, AGENT_PATH, MAX_FRAME_BYTES,
};
use futures_util::{SinkExt, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// How long an agent has to confirm the removal of a fault it reported holding.
const ORPHAN_REMOVAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer has for TLS, the upgrade, its hello and its registration together.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections in their handshake at once; more are closed at once, so a flood of peers
/// that never authenticate cannot starve agents of descriptors.
const MAX_HANDSHAKES: usize = 1024;
/// Connections in their handshake at once from one address, so that one peer cannot take
/// every slot (agents behind one NAT still get many).
const MAX_HANDSHAKES_PER_PEER: usize = 64;
/// Registered agent connections at once.
const MAX_AGENTS: usize = 20_000;
/// The first byte of a TLS handshake record: how a `wss://` agent is told from a `ws://` one
/// on the same port.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// Frames queued to one agent before the controller waits for it.
const OUTBOX: usize = 256;
/// Read buffer of one agent's websocket. Agents' frames are small, and tungstenite zero-fills
/// the whole buffer before each read: its 128 KiB default made every idle agent cost the
/// controller 128 KiB of resident memory. A larger frame grows the buffer for itself.
const READ_BUFFER: usize = 4096;

/// Something that happened to the fleet, for the journal and the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum FleetEvent {
    /// An agent registered.
    Connected(HostDescription),
    /// An agent's connection ended.
    Disconnected {
        /// Its host id.
        host: String,
    },
    /// An agent ended a fault on its own.
    FaultEnded {
        /// The host.
        host: String,
        /// The fault.
        fault_id: String,
        /// Why.
        reason: EndReason,
        /// What the agent saw the fault do.
        observed: Option<Observed>,
    },
    /// A fault an agent reported holding when it registered, which no running action owns,
    /// was removed (or could not be).
    OrphanRemoved {
        /// The host.
        host: String,
        /// The fault.
        fault_id: String,
        /// The controller that had applied it.
        owner: String,
        /// Why the removal was not confirmed, if it was not.
        error: Option<String>,
    },
    /// An agent could not remove a fault on its own (at its deadline or lease); it retries.
    RemovalFailed {
        /// The host.
        host: String,
        /// The fault.
        fault_id: String,
        /// What went wrong, and when the agent retries.
        message: String,
    },
    /// A connection was refused (bad token, bad path, no registration).
    Refused {
        /// The peer.
        peer: SocketAddr,
        /// Why.
        reason: ConnectionRefused,
    },
}

/// Why a command did not get an answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DispatchError {
    /// No agent with that host id is connected.
    #[error("{0} is not connected")]
    NotConnected(String),
    /// The agent did not answer in time.
    #[error("{host} did not answer within {}", faultline_agent::duration::human(*.after))]
    Timeout {
        /// The host.
        host: String,
        /// How long the controller waited.
        after: Duration,
    },
    /// The connection ended before the answer.
    #[error("{0} disconnected before answering")]
    Disconnected(String),
    /// The agent refused the command.
    #[error("{host} refused: {message}")]
    Refused {
        /// The host.
        host: String,
        /// Its reason.
        message: String,
    },
}

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

/// The faults running actions own, and those of them their hosts ended on their own.
#[derive(Default)]
struct Book {
    /// Fault id → the host it was dispatched to, from dispatch until its action lets go.
    owned: HashMap<String, String>,
    /// Faults their host ended, by host and fault id.
    ended: HashMap<(String, String), (EndReason, Option<Observed>)>,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Outcome, String>>>>>;

#[derive(Clone)]
struct Link {
    description: HostDescription,
    /// The agent process, as it registered: a reconnect of the same one replaces this link.
    instance: String,
    peer: SocketAddr,
    conn: u64,
    lease: Duration,
    outbox: mpsc::Sender<String>,
    pending: Pending,
    /// Ends the connection's task, e.g. when a new connection of the same host replaces it.
    closed: CancellationToken,
}

struct Inner {
    controller_id: String,
    token: String,
    agents: Mutex<BTreeMap<String, Link>>,
    book: Mutex<Book>,
    next_id: AtomicU64,
    next_conn: AtomicU64,
    version: watch::Sender<u64>,
    events: broadcast::Sender<FleetEvent>,
    tls: Option<TlsAcceptor>,
    advertise: Vec<SocketAddr>,
    handshakes: Arc<Semaphore>,
    /// Handshakes in progress per peer address.
    handshaking: Mutex<HashMap<std::net::IpAddr, usize>>,
    connections: Arc<Semaphore>,
    refusals: Mutex<Throttle>,
    /// Warnings about plain connections to a controller that has a certificate.
    plain: Mutex<Throttle>,
    /// Ends every connection and task of the fleet.
    cancel: CancellationToken,
}

/// How agents reach the controller, beyond the address it listens on.
#[derive(Clone, Default)]
pub struct Endpoint {
    /// Certificate and key for `wss://`; agents may then dial `wss://` as well as `ws://`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Addresses agents dial that forward to this controller (a NAT, a published container
    /// port), besides the address a connection arrives at.
    pub advertise: Vec<SocketAddr>,
}

/// The stream under an agent's websocket: plain TCP or TLS.
pub type Stream = tokio_util::either::Either<TcpStream, tokio_rustls::server::TlsStream<TcpStream>>;

/// The agents connected to this controller.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

impl Fleet {
    /// Binds `listen` and serves agents until `cancel`; returns the fleet and the bound address.
    pub async fn start(
        listen: SocketAddr,
        token: String,
        controller_id: String,
        endpoint: Endpoint,
        cancel: CancellationToken,
    ) -> std::io::Result<(Fleet, SocketAddr)> {
        let fleet = Fleet::new(token, controller_id, endpoint, cancel);
        let addr = fleet.listen(listen).await?;
        Ok((fleet, addr))
    }

    /// A fleet without a listener of its own, until `cancel`: agents arrive through
    /// [`Fleet::listen`] or [`Fleet::upgraded`] (a server that owns the port hands them over).
    pub fn new(token: String, controller_id: String, endpoint: Endpoint, cancel: CancellationToken) -> Fleet {
        let fleet = Fleet {
            inner: Arc::new(Inner {
                controller_id,
                token,
                agents: Mutex::new(BTreeMap::new()),
                book: Mutex::default(),
                next_id: AtomicU64::new(1),
                next_conn: AtomicU64::new(1),
                version: watch::Sender::new(0),
                events: broadcast::channel(1024).0,
                tls: endpoint.tls.map(TlsAcceptor::from),
                advertise: endpoint.advertise,
                handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
                handshaking: Mutex::default(),
                connections: Arc::new(Semaphore::new(MAX_AGENTS)),
                refusals: Mutex::new(Throttle::new(Duration::from_secs(2))),
                plain: Mutex::new(Throttle::new(Duration::from_secs(60))),
                cancel: cancel.clone(),
            }),
        };
        tokio::spawn(fleet.clone().heartbeats(cancel));
        fleet
    }

    /// Binds `listen` and accepts agents there (`ws://`, and `wss://` with a certificate);
    /// returns the bound address.
    pub async fn listen(&self, listen: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(self.clone().accept_loop(listener, self.inner.cancel.clone()));
        Ok(addr)
    }

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

    /// This controller's id; agents lease faults to it.
    pub fn controller_id(&self) -> &str {
        &self.inner.controller_id
    }

    /// Descriptions of the connected agents, by host id.
    pub fn hosts(&self) -> Vec<HostDescription> {
        self.agents().values().map(|l| l.description.clone()).collect()
    }

    /// Whether a host is connected.
    pub fn is_connected(&self, host: &str) -> bool {
        self.agents().contains_key(host)
    }

    fn agents(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Link>> {
        self.inner.agents.lock().expect("fleet lock is never poisoned")
    }

    /// Bumps whenever an agent connects or disconnects, or a fault ends on its own.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    /// Fleet events as they happen.
    pub fn events(&self) -> broadcast::Receiver<FleetEvent> {
        self.inner.events.subscribe()
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.inner.book.lock().expect("fault book lock is never poisoned")
    }

    /// Why `host` ended the fault on its own, if it did, and what the fault did; ends count
    /// only from the host the fault was dispatched to, while a running action owns it.
    pub fn ended(&self, host: &str, fault_id: &str) -> Option<(EndReason, Option<Observed>)> {
        self.book()
            .ended
            .get(&(host.to_string(), fault_id.to_string()))
            .cloned()
    }

    /// A running action owns this fault on `host` from now on (call before the apply is
    /// sent): only `host` can end it, and a reconnect of `host` that reports it keeps it.
    pub fn claim(&self, host: &str, fault_id: &str) {
        self.book().owned.insert(fault_id.to_string(), host.to_string());
    }

    /// No running action owns this fault any more (its removal was confirmed, or its action
    /// ended): a host that reports it at registration has it removed at once.
    pub fn release(&self, fault_id: &str) {
        let mut book = self.book();
        if let Some(host) = book.owned.remove(fault_id) {
            book.ended.remove(&(host, fault_id.to_string()));
        }
    }

    /// Removes every fault a (re)registering agent holds that no running action owns: an
    /// apply whose answer was lost, or a fault of a run that has ended. Runs in the
    /// background so the connection's frames (the answers) keep being read.
    fn registered(&self, description: &HostDescription, held: Vec<HeldFault>) {
        let host = description.host_id.clone();
        // By fault id: a fault reported twice is removed once.
        let orphans: BTreeMap<String, String> = {
            let book = self.book();
            held.into_iter()
                .filter(|h| book.owned.get(&h.fault_id) != Some(&host))
                .map(|HeldFault { fault_id, owner }| (fault_id, owner))
                .collect()
        };
        for (fault_id, owner) in orphans {
            let (fleet, host) = (self.clone(), host.clone());
            tokio::spawn(async move {
                tracing::info!(%host, fault = %fault_id, %owner, "removing a fault that no running action owns");
                let remove = ControllerMessage::Remove {
                    fault_id: fault_id.clone(),
                };
                let error = match fleet.command(&host, remove, ORPHAN_REMOVAL_TIMEOUT).await {
                    Ok(Outcome::Removed { .. }) => None,
                    Ok(Outcome::Failed { message }) => Some(message),
                    Ok(other) => Some(format!("unexpected answer {other:?}")),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(e) = &error {
                    tracing::warn!(%host, fault = %fault_id, error = %e, "could not remove a fault that no running action owns");
                }
                let _ = fleet.inner.events.send(FleetEvent::OrphanRemoved {
                    host,
                    fault_id,
                    owner,
                    error,
                });
            });
        }
    }

    /// Sends a command to a host and waits up to `timeout` for its answer.
    pub async fn command(
        &self,
        host: &str,
        msg: ControllerMessage,
        timeout: Duration,
    ) -> Result<Outcome, DispatchError> {
        // Only the channel and the answers' table: cloning the whole link (the host's
        // description, its tags and capabilities) cost a dozen allocations per command.
        let (outbox, pending) = self
            .agents()
            .get(host)
            .map(|l| (l.outbox.clone(), l.pending.clone()))
            .ok_or_else(|| DispatchError::NotConnected(host.to_string()))?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        pending.lock().expect("never poisoned").insert(id, tx);
        // Queued at once when the outbox has room, as it nearly always has: waiting for a
        // slot (a semaphore and a timer) was a tenth of the controller's CPU in a fan-out to
        // 10,000 agents.
        // Disconnected means the command was queued and may have reached the agent; a
        // command that was never queued cannot have.
        let not_connected = || Some(DispatchError::NotConnected(host.to_string()));
        let unsent = match outbox.try_send(Frame::new(id, msg).encode()) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Closed(_)) => not_connected(),
            Err(mpsc::error::TrySendError::Full(text)) => {
                match tokio::time::timeout(timeout, outbox.send(text)).await {
                    Ok(Ok(())) => None,
                    Ok(Err(_)) => not_connected(),
                    Err(_) => Some(DispatchError::Timeout {
                        host: host.to_string(),
                        after: timeout,
                    }),
                }
            }
        };
        if let Some(e) = unsent {
            pending.lock().expect("never poisoned").remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(outcome))) => Ok(outcome),
            Ok(Ok(Err(message))) => Err(DispatchError::Refused {
                host: host.to_string(),
                message,
            }),
            Ok(Err(_)) => Err(DispatchError::Disconnected(host.to_string())),
            Err(_) => {
                pending.lock().expect("never poisoned").remove(&id);
                Err(DispatchError::Timeout {
                    host: host.to_string(),
                    after: timeout,
                })
            }
        }
    }

    async fn accept_loop(self, listener: TcpListener, cancel: CancellationToken) {
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
    fn refused(&self, peer: SocketAddr, reason: ConnectionRefused) {
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
    async fn secure(&self, stream: TcpStream) -> Result<Stream, ConnectionRefused> {
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
    async fn serve(
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

    /// A registered agent: takes its place in the fleet, then frames until the connection
    /// ends or the agent has been silent for its lease.
    async fn link<S>(
        &self,
        (mut sink, mut stream, registration): Authenticated<S>,
        peer: SocketAddr,
        cancel: CancellationToken,
        handshake: HandshakeSlot,
    ) -> Result<(), ConnectionRefused>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Registration {
            description,
            lease,
            instance,
            held,
        } = registration;
        let refuse = |code: ErrorCode, message: String| Message::text(error_frame(None, code, &message));
        let Ok(_connection) = self.inner.connections.clone().try_acquire_owned() else {
            let _ = sink
                .send(refuse(ErrorCode::HostConflict, "too many agents are connected".into()))
                .await;
            return Err(ConnectionRefused::TooMany);
        };
        drop(handshake);

        let host = description.host_id.clone();
        let conn = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let (outbox, mut outgoing) = mpsc::channel::<String>(OUTBOX);
        let pending: Pending = Arc::default();
        let closed = cancel.child_token();
        let link = Link {
            description: description.clone(),
            instance: instance.clone(),
            peer,
            conn,
            lease,
            outbox: outbox.clone(),
            pending: pending.clone(),
            closed: closed.clone(),
        };
        // One host id, one connection: only the same agent instance (a reconnect) may replace
        // a live link; anyone else claiming the id is refused, whatever token it holds.
        let claimed = {
            let mut agents = self.agents();
            match agents.get(&host) {
                Some(old) if old.instance != instance && !old.closed.is_cancelled() => Err(old.peer),
                _ => Ok(agents.insert(host.clone(), link)),
            }
        };
        let replaced = match claimed {
            Ok(replaced) => replaced,
            Err(holder) => {
                let conflict = ConnectionRefused::HostConflict {
                    host: host.clone(),
                    peer: holder,
                };
                let message = format!("{conflict}; give each agent its own --host-id");
                let _ = sink.send(refuse(ErrorCode::HostConflict, message)).await;
                let _ = sink.close().await;
                return Err(conflict);
            }
        };
        if let Some(old) = replaced {
            // The same agent came back (a cut that ended, a connection that died unnoticed):
            // what waits on the old connection will not be answered there.
            tracing::info!(%host, %peer, "the agent reconnected; its new connection replaces the old one");
            old.pending.lock().expect("never poisoned").clear();
            old.closed.cancel();
        }
        let welcome = Frame::new(
            self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            ControllerMessage::Welcome {
                controller_id: self.inner.controller_id.clone(),
            },
        );
        if let Err(e) = sink.send(Message::text(welcome.encode())).await {
            self.forget(&host, conn);
            return Err(ConnectionRefused::Welcome(e.to_string()));
        }
        tracing::info!(%host, az = %description.placement.availability_zone, %peer, "agent connected");
        self.inner.version.send_modify(|v| *v += 1);
        self.registered(&description, held);
        let _ = self.inner.events.send(FleetEvent::Connected(description));

        let writer = tokio::spawn(async move {
            while let Some(text) = outgoing.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        loop {
            let msg = tokio::select! {
                _ = closed.cancelled() => break,
                m = tokio::time::timeout(lease, stream.next()) => match m {
                    Ok(m) => m,
                    Err(_) => {
                        tracing::warn!(%host, lease = ?lease, "the agent has been silent for its lease; closing its connection");
                        break;
                    }
                },
            };
            match msg {
                Some(Ok(Message::Text(t))) => self.on_frame(&host, t.as_str(), &pending, &outbox).await,
                Some(Ok(Message::Binary(_))) => {
                    let _ = outbox.try_send(error_frame(
                        None,
                        ErrorCode::Malformed,
                        "binary frames are not part of the protocol",
                    ));
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
        drop(outbox);
        self.forget(&host, conn);
        // Dropping the senders tells every waiting command that the connection ended.
        pending.lock().expect("never poisoned").clear();
        writer.abort();
        if cancel.is_cancelled() {
            tracing::debug!(%host, "agent disconnected: the controller is shutting down");
        } else {
            tracing::info!(%host, "agent disconnected");
        }
        self.inner.version.send_modify(|v| *v += 1);
        let _ = self.inner.events.send(FleetEvent::Disconnected { host });
        Ok(())
    }

    /// Removes a host's link if it is still connection `conn` (not a newer one).
    fn forget(&self, host: &str, conn: u64) {
        let mut agents = self.agents();
        if agents.get(host).is_some_and(|l| l.conn == conn) {
            agents.remove(host);
        }
    }

    /// TLS and the upgrade on the agent path.
    async fn accept(&self, stream: TcpStream) -> Result<(WebSocketStream<Stream>, SocketAddr), ConnectionRefused> {
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
    async fn authenticate<S>(
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

    async fn on_frame(&self, host: &str, text: &str, pending: &Pending, outbox: &mpsc::Sender<String>) {
        match decode::<AgentMessage>(text) {
            Ok(Frame {
                msg: AgentMessage::Ack { re, outcome },
                ..
            }) => {
                if let Some(tx) = pending.lock().expect("never poisoned").remove(&re) {
                    let _ = tx.send(Ok(outcome));
                }
            }
            Ok(Frame {
                msg: AgentMessage::Error { re, code, message },
                ..
            }) => {
                tracing::warn!(%host, ?code, %message, "agent reported an error");
                if let Some(tx) = re.and_then(|re| pending.lock().expect("never poisoned").remove(&re)) {
                    let _ = tx.send(Err(message));
                }
            }
            Ok(Frame {
                msg:
                    AgentMessage::FaultEnded {
                        fault_id,
                        reason,
                        observed,
                    },
                ..
            }) => {
                {
                    let mut book = self.book();
                    match book.owned.get(&fault_id) {
                        Some(h) if h == host => {
                            book.ended
                                .insert((host.to_string(), fault_id.clone()), (reason, observed.clone()));
                        }
                        // Only the host a fault was dispatched to can say it ended.
                        Some(h) => {
                            tracing::warn!(%host, fault = %fault_id, holder = %h, "ignored the end of a fault dispatched to another host");
                            return;
                        }
                        None => {
                            tracing::debug!(%host, fault = %fault_id, ?reason, "ignored the end of a fault no running action owns");
                            return;
                        }
                    }
                }
                if reason == EndReason::DurationElapsed {
                    tracing::debug!(%host, fault = %fault_id, "agent ended a fault at the end of its duration");
                } else {
                    tracing::info!(%host, fault = %fault_id, ?reason, "agent ended a fault");
                }
                self.inner.version.send_modify(|v| *v += 1);
                let _ = self.inner.events.send(FleetEvent::FaultEnded {
                    host: host.to_string(),
                    fault_id,
                    reason,
                    observed,
                });
            }
            Ok(Frame {
                msg:
                    AgentMessage::RemovalFailed {
                        fault_id,
                        message,
                        retry_in_ms,
                    },
                ..
            }) => {
                tracing::warn!(%host, fault = %fault_id, %message, retry_in_ms, "the agent could not remove a fault; it retries");
                let _ = self.inner.events.send(FleetEvent::RemovalFailed {
                    host: host.to_string(),
                    fault_id,
                    message: format!("{message} (the agent retries in {retry_in_ms} ms)"),
                });
            }
            Ok(Frame {
                id,
                msg: AgentMessage::Register { .. } | AgentMessage::Hello { .. },
                ..
            }) => {
                let _ = outbox.try_send(error_frame(
                    Some(id),
                    ErrorCode::Malformed,
                    "the handshake is over on this connection",
                ));
            }
            Err(DecodeError { id, code, message }) => {
                tracing::warn!(%host, %message, "refused a frame from an agent");
                let _ = outbox.try_send(error_frame(id, code, &message));
            }
        }
    }

    /// Pings every agent well within its lease, so its faults stay leased to this controller.
    async fn heartbeats(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        // By connection (each has its own number): keying by host id cloned every host's id
        // twice a tick, 80,000 allocations a second with 10,000 agents.
        let mut last: HashMap<u64, tokio::time::Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = tokio::time::Instant::now();
            let due: Vec<(String, u64, Duration)> = self
                .agents()
                .iter()
                .filter(|(_, l)| last.get(&l.conn).is_none_or(|t| now.duration_since(*t) >= l.lease / 4))
                .map(|(h, l)| (h.clone(), l.conn, l.lease / 4))
                .collect();
            for (host, conn, every) in due {
                last.insert(conn, now);
                let fleet = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = fleet.command(&host, ControllerMessage::Ping {}, every * 2).await {
                        tracing::debug!(%host, error = %e, "heartbeat not answered");
                    }
                });
            }
            // Connections are never renumbered, so entries beyond the live links' count are of
            // gone ones. (A scan of every live link per entry was quadratic, a tenth of a
            // second of a worker four times a second with 10,000 agents.)
            let agents = self.agents();
            if last.len() > agents.len() {
                let live: std::collections::HashSet<u64> = agents.values().map(|l| l.conn).collect();
                last.retain(|conn, _| live.contains(conn));
            }
        }
    }
}

/// A connection's place among the handshakes in progress: one of [`MAX_HANDSHAKES`] and of
/// its address's [`MAX_HANDSHAKES_PER_PEER`]; given back when dropped.
struct HandshakeSlot {
    inner: Arc<Inner>,
    peer: std::net::IpAddr,
    _global: OwnedSemaphorePermit,
}

/// A connection admitted to the agents' handshake ([`Fleet::admit`]); holds its slot.
pub struct Admission(HandshakeSlot);

impl HandshakeSlot {
    fn take(inner: &Arc<Inner>, peer: std::net::IpAddr) -> Option<HandshakeSlot> {
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
struct Registration {
    description: HostDescription,
    /// Its lease, clamped to 1 s - 1 h.
    lease: Duration,
    instance: String,
    held: Vec<HeldFault>,
}

/// The next text frame of a connection in its handshake, decoded.
async fn next_agent_frame<S: AsyncRead + AsyncWrite + Unpin>(
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
type Authenticated<S> = (
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
struct PathCheck;

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

/// The error frame the controller sends for something it cannot accept.
fn error_frame(re: Option<u64>, code: ErrorCode, message: &str) -> String {
    Frame::new(
        0,
        ControllerMessage::Error {
            re,
            code,
            message: message.into(),
        },
    )
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_peer_cannot_take_every_handshake_slot() {
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
