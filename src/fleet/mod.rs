//! The fleet: the agents connected to this controller and the way to command them. Agents
//! dial in over a websocket (`ws://`, or `wss://` with a certificate); both sides prove the
//! shared token by challenge-response (docs/wire.md) before the agent is admitted
//! ([`admission`]); each registered agent has one connection ([`connection`]) and its place
//! in the registry ([`registry`]), which also keeps the book of faults running actions own.
//! One host id has one connection: another agent instance claiming a connected host's id is
//! refused.

mod admission;
mod connection;
mod registry;

use admission::MAX_HANDSHAKES;
pub use admission::{websocket_config, Admission, ConnectionRefused, Stream};
use connection::MAX_AGENTS;
use registry::{Book, Link};

use faultline_agent::net::Throttle;
use faultline_agent::protocol::{ControllerMessage, EndReason, ErrorCode, Frame, HostDescription, Observed, Outcome};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Something that happened to the fleet, for the journal and the run.
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
        host: String,
        fault_id: String,
        /// Why.
        reason: EndReason,
        /// What the agent saw the fault do.
        observed: Option<Observed>,
    },
    /// A fault an agent reported holding when it registered, which no running action owns,
    /// was removed (or could not be).
    OrphanRemoved {
        host: String,
        fault_id: String,
        /// The controller that had applied it.
        owner: String,
        /// Why the removal was not confirmed, if it was not.
        error: Option<String>,
    },
    /// A (re)registering agent holds a fault of another controller: its owner's to refresh
    /// and remove (it ends with its owner's lease), so this controller leaves it alone.
    ForeignHeld {
        host: String,
        fault_id: String,
        /// The controller that applied it.
        owner: String,
    },
    /// An agent could not remove a fault on its own (at its deadline or lease); it retries.
    RemovalFailed {
        host: String,
        fault_id: String,
        /// What went wrong, and when the agent retries.
        message: String,
    },
    /// A connection was refused (bad token, bad path, no registration).
    Refused {
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
        host: String,
        /// Its reason.
        message: String,
    },
}

struct Inner {
    pub(super) controller_id: String,
    pub(super) token: String,
    pub(super) agents: Mutex<BTreeMap<String, Link>>,
    pub(super) book: Mutex<Book>,
    pub(super) next_id: AtomicU64,
    pub(super) next_conn: AtomicU64,
    pub(super) version: watch::Sender<u64>,
    pub(super) events: broadcast::Sender<FleetEvent>,
    pub(super) tls: Option<TlsAcceptor>,
    pub(super) advertise: Vec<SocketAddr>,
    pub(super) handshakes: Arc<Semaphore>,
    /// Handshakes in progress per peer address.
    pub(super) handshaking: Mutex<HashMap<std::net::IpAddr, usize>>,
    pub(super) connections: Arc<Semaphore>,
    pub(super) refusals: Mutex<Throttle>,
    /// Warnings about plain connections to a controller that has a certificate.
    pub(super) plain: Mutex<Throttle>,
    /// Ends every connection and task of the fleet.
    pub(super) cancel: CancellationToken,
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

    /// This controller's id; agents lease faults to it.
    pub fn controller_id(&self) -> &str {
        &self.inner.controller_id
    }

    /// Bumps whenever an agent connects or disconnects, or a fault ends on its own.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    /// Fleet events as they happen.
    pub fn events(&self) -> broadcast::Receiver<FleetEvent> {
        self.inner.events.subscribe()
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
