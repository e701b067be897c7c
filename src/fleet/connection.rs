//! A registered agent's connection: its place in the registry, the writer and the frames it
//! sends (answers, faults it ended, removals it could not do) until it closes or is silent
//! for its lease; and the heartbeats that keep every agent's faults leased to this controller.

use faultline_agent::protocol::{decode, AgentMessage, ControllerMessage, DecodeError, EndReason, ErrorCode, Frame};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// How long an agent has to confirm the removal of a fault it reported holding.
use super::admission::{Authenticated, ConnectionRefused, HandshakeSlot, Registration};
use super::registry::{Link, Pending};
use super::{error_frame, Fleet, FleetEvent};

/// Registered agent connections at once.
pub(super) const MAX_AGENTS: usize = 20_000;

/// Frames queued to one agent before the controller waits for it.
pub(super) const OUTBOX: usize = 256;

impl Fleet {
    /// A registered agent: takes its place in the fleet, then frames until the connection
    /// ends or the agent has been silent for its lease.
    pub(super) async fn link<S>(
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

    pub(super) async fn on_frame(&self, host: &str, text: &str, pending: &Pending, outbox: &mpsc::Sender<String>) {
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
    pub(super) async fn heartbeats(self, cancel: CancellationToken) {
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
