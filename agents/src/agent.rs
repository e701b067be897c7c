//! The agent's one owner task: it holds the fault table, the leases and the link to the
//! controller, and reacts to frames, deadlines, lapsed leases and shutdown. Nothing else
//! touches the faults, so there are no locks and no races between a remove and an expiry.

use crate::lease::Leases;
use crate::session::{self, Connected, Ws};
use faultline_agent::faults::{Applied, Faults, Refusal, Removed};
use faultline_agent::protocol::{
    decode, AgentInfo, AgentMessage, ControllerMessage, DecodeError, EndReason, ErrorCode, Frame, HostDescription,
    Observed, Outcome,
};
use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// How long a controller has to welcome a registration.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a frame may take to go out before the link counts as down: a controller that
/// stops reading must not stall the agent's timers and removals.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How many "fault ended" notices wait for an owner that is not connected.
const MAX_PENDING_NOTICES: usize = 256;

/// Who this agent says it is.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) host_id: String,
    /// Availability zone.
    pub(crate) az: String,
    pub(crate) tags: std::collections::BTreeMap<String, String>,
    /// Address to register; the local end of the controller connection when `None`.
    pub(crate) address: Option<IpAddr>,
}

/// The state of the link to the controller.
enum Link {
    Down,
    /// The controller refused the registration: down, and dial again only after a pause.
    Refused,
    /// Registered, waiting for the welcome.
    Registering {
        c: Connected,
        since: Instant,
    },
    /// Welcomed by `controller_id`.
    Up {
        c: Connected,
        controller_id: String,
    },
}

/// The agent.
pub(crate) struct Agent {
    dialer: session::Dialer,
    identity: Identity,
    faults: Faults,
    leases: Leases,
    /// "Fault ended" notices for owners not connected right now.
    notices: VecDeque<(String, String, EndReason, Option<Observed>)>,
    /// A fault whose rest takes effect once the reply to its apply is sent (a blackout's cut).
    act_after_reply: Option<String>,
    next_id: u64,
    /// Random id of this process, registered so that the controller tells a reconnect of
    /// this agent from another agent claiming the same host id.
    instance: String,
}

impl Agent {
    /// An agent that will dial with `dialer`; `restarted` are faults a previous life left behind
    /// and this start-up removed, to be reported to their owners.
    pub(crate) fn new(
        dialer: session::Dialer,
        identity: Identity,
        faults: Faults,
        lease: Duration,
        restarted: Vec<(String, String)>,
    ) -> Self {
        Agent {
            dialer,
            identity,
            faults,
            leases: Leases::new(lease),
            notices: restarted
                .into_iter()
                .map(|(owner, id)| (owner, id, EndReason::AgentRestarted, None))
                .collect(),
            act_after_reply: None,
            next_id: 0,
            instance: format!("{:016x}", rand::random::<u64>()),
        }
    }

    fn describe(&self, local_ip: IpAddr) -> HostDescription {
        HostDescription {
            host_id: self.identity.host_id.clone(),
            placement: faultline_agent::protocol::Placement {
                availability_zone: self.identity.az.clone(),
            },
            state: Default::default(),
            tags: self.identity.tags.clone(),
            address: self.identity.address.unwrap_or(local_ip).to_string(),
            agent: AgentInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                capabilities: self.faults.capabilities().kinds.iter().map(|k| k.to_string()).collect(),
            },
        }
    }

    fn frame(&mut self, msg: AgentMessage) -> String {
        self.next_id += 1;
        Frame::new(self.next_id, msg).encode()
    }

    /// Runs until `shutdown` is cancelled; removes every fault before it returns.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut link = Link::Down;
        let (connected_tx, mut connected_rx) = mpsc::channel::<Connected>(1);
        let mut dialer = Some(self.spawn_dialer(connected_tx.clone(), &shutdown, Duration::ZERO));
        let mut refused = false;
        let mut pending: JoinSet<(u64, String, Outcome)> = JoinSet::new();
        loop {
            let now = Instant::now();
            let wake = [
                self.faults.next_deadline(),
                self.leases.next_expiry(),
                match &link {
                    Link::Registering { since, .. } => Some(*since + WELCOME_TIMEOUT),
                    _ => None,
                },
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(c) = connected_rx.recv() => {
                    dialer = None;
                    link = self.register(c).await;
                }
                incoming = next_frame(&mut link) => {
                    match incoming {
                        Incoming::Text(text) => link = self.on_frame(link, &text, &mut pending).await,
                        Incoming::Binary => {
                            let reply = self.frame(AgentMessage::Error {
                                re: None,
                                code: ErrorCode::Malformed,
                                message: "binary frames are not part of the protocol; send JSON text".into(),
                            });
                            link = send(link, reply).await;
                        }
                        Incoming::Closed => {
                            tracing::warn!("lost the controller; reconnecting");
                            link = Link::Down;
                        }
                    }
                }
                Some(done) = pending.join_next() => {
                    if let Ok((re, owner, outcome)) = done {
                        if let Link::Up { controller_id, .. } = &link {
                            if *controller_id == owner {
                                let text = self.frame(AgentMessage::Ack { re, outcome });
                                link = send(link, text).await;
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake.unwrap_or(now)), if wake.is_some() => {
                    link = self.on_timers(link).await;
                }
            }
            if let Link::Refused = link {
                refused = true;
                link = Link::Down;
            }
            if matches!(link, Link::Down) && dialer.is_none() {
                let wait = if std::mem::take(&mut refused) {
                    session::MAX_BACKOFF
                } else {
                    Duration::ZERO
                };
                dialer = Some(self.spawn_dialer(connected_tx.clone(), &shutdown, wait));
            }
        }
        if let Some(d) = dialer {
            d.abort();
        }
        let removed = self.faults.remove_where(|_, _, _| true);
        tracing::info!(count = removed.len(), "shutting down: every fault removed");
        if let Link::Up { controller_id, .. } = &link {
            let owner = controller_id.clone();
            let texts: Vec<String> = removed
                .into_iter()
                .filter(|r| r.owner == owner)
                .map(|r| {
                    self.frame(AgentMessage::FaultEnded {
                        fault_id: r.fault_id,
                        reason: EndReason::Shutdown,
                        observed: seen(r.observed),
                    })
                })
                .collect();
            let mut link = link;
            for text in texts {
                link = send(link, text).await;
            }
            if let Link::Up { mut c, .. } = link {
                let _ = tokio::time::timeout(Duration::from_millis(500), c.ws.close(None)).await;
            }
        }
    }

    /// Dials in the background, after `first_wait` (a refused registration must not loop fast).
    fn spawn_dialer(
        &self,
        tx: mpsc::Sender<Connected>,
        shutdown: &CancellationToken,
        first_wait: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let (dialer, cancel) = (self.dialer.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Some(c) = dialer.connect(&cancel, first_wait).await {
                let _ = tx.send(c).await;
            }
        })
    }

    async fn register(&mut self, c: Connected) -> Link {
        let host = self.describe(c.local_ip);
        let text = self.frame(AgentMessage::Register {
            proof: c.proof.clone(),
            host,
            lease_ms: self.leases.interval().as_millis() as u64,
            instance: self.instance.clone(),
            held: self.faults.held(),
        });
        send(
            Link::Registering {
                c,
                since: Instant::now(),
            },
            text,
        )
        .await
    }

    async fn on_frame(&mut self, link: Link, text: &str, pending: &mut JoinSet<(u64, String, Outcome)>) -> Link {
        let frame = match decode::<ControllerMessage>(text) {
            Ok(f) => f,
            Err(DecodeError { id, code, message }) => {
                tracing::warn!(%message, "refused a frame from the controller");
                let reply = self.frame(AgentMessage::Error { re: id, code, message });
                return send(link, reply).await;
            }
        };
        let id = frame.id;
        match (link, frame.msg) {
            (Link::Registering { c, .. }, ControllerMessage::Welcome { controller_id }) => {
                tracing::info!(controller = %controller_id, "registered");
                self.leases.heard(&controller_id, Instant::now());
                let mut link = Link::Up {
                    c,
                    controller_id: controller_id.clone(),
                };
                let (mine, others): (Vec<_>, Vec<_>) =
                    self.notices.drain(..).partition(|(o, _, _, _)| *o == controller_id);
                self.notices = others.into();
                for (_, fault_id, reason, observed) in mine {
                    let text = self.frame(AgentMessage::FaultEnded {
                        fault_id,
                        reason,
                        observed,
                    });
                    link = send(link, text).await;
                }
                link
            }
            (Link::Up { c, controller_id }, msg) => {
                self.leases.heard(&controller_id, Instant::now());
                let reply = self.command(id, &controller_id, c.controller_ip, msg, pending);
                let mut link = Link::Up { c, controller_id };
                if let Some(msg) = reply {
                    let text = self.frame(msg);
                    link = send(link, text).await;
                }
                if let Some(fault_id) = self.act_after_reply.take() {
                    if let Link::Up { c, .. } = &link {
                        session::wait_sent(&c.ws).await;
                    }
                    if let Err(e) = self.faults.after_answer(&fault_id) {
                        tracing::error!(fault = %fault_id, error = %e, "the rest of the fault did not take effect (a blackout keeps the control plane)");
                    }
                    // Leases pause only now that a cut is really in place.
                    self.sync_lease_pause(Instant::now());
                }
                link
            }
            (Link::Registering { .. }, ControllerMessage::Error { message, .. }) => {
                tracing::error!(%message, "the controller refused this agent's registration");
                Link::Refused
            }
            (link, _) => {
                let reply = self.frame(AgentMessage::Error {
                    re: Some(id),
                    code: ErrorCode::NotRegistered,
                    message: "no command is accepted before the controller welcomes this agent".into(),
                });
                send(link, reply).await
            }
        }
    }

    /// Carries out one command; the reply to send now, if any.
    fn command(
        &mut self,
        id: u64,
        owner: &str,
        controller_ip: IpAddr,
        msg: ControllerMessage,
        pending: &mut JoinSet<(u64, String, Outcome)>,
    ) -> Option<AgentMessage> {
        let ack = |outcome| Some(AgentMessage::Ack { re: id, outcome });
        match msg {
            ControllerMessage::Apply { fault } => {
                let fault_id = fault.fault_id.clone();
                let kind = fault.kind.capability();
                let result = self.faults.apply(owner, fault, Some(controller_ip));
                self.sync_lease_pause(Instant::now());
                match result {
                    Ok(Applied::Now(outcome)) => {
                        log_outcome(&fault_id, kind, &outcome);
                        ack(outcome)
                    }
                    Ok(Applied::ThenAct(outcome)) => {
                        log_outcome(&fault_id, kind, &outcome);
                        self.act_after_reply = Some(fault_id);
                        ack(outcome)
                    }
                    Ok(Applied::Later(rx)) => {
                        let owner = owner.to_string();
                        pending.spawn(async move {
                            let outcome = rx.await.unwrap_or(Outcome::Failed {
                                message: "the fault was removed before it took full effect".into(),
                            });
                            log_outcome(&fault_id, kind, &outcome);
                            (id, owner, outcome)
                        });
                        None
                    }
                    Err(refusal) => {
                        tracing::warn!(fault = %fault_id, %refusal, "refused a fault");
                        Some(AgentMessage::Error {
                            re: Some(id),
                            code: match refusal {
                                Refusal::NotAllowed(_) => ErrorCode::NotAllowed,
                                Refusal::OutOfRange(_) => ErrorCode::OutOfRange,
                            },
                            message: refusal.to_string(),
                        })
                    }
                }
            }
            ControllerMessage::Remove { fault_id } => {
                if self.faults.owner(&fault_id).is_some_and(|o| o != owner) {
                    tracing::warn!(fault = %fault_id, controller = %owner, "refused to remove another controller's fault");
                    return ack(Outcome::Failed {
                        message: faultline_agent::faults::not_owner(&fault_id, "removed"),
                    });
                }
                let outcome = match self.faults.remove(&fault_id) {
                    Ok(observed) => {
                        if observed.is_some() {
                            tracing::info!(fault = %fault_id, "removed on request");
                        }
                        Outcome::Removed {
                            count: u32::from(observed.is_some()),
                            observed: observed.and_then(seen),
                        }
                    }
                    Err(e) => Outcome::Failed { message: e.to_string() },
                };
                self.sync_lease_pause(Instant::now());
                ack(outcome)
            }
            ControllerMessage::RemoveAll { experiment } => {
                let prefix = experiment.map(|e| format!("{e}/"));
                let matches =
                    |id: &str, o: &str| o == owner && prefix.as_ref().is_none_or(|p| id.starts_with(p.as_str()));
                let removed = self.faults.remove_where(|id, o, _| matches(id, o));
                match &prefix {
                    Some(p) => {
                        tracing::info!(count = removed.len(), experiment = %p.trim_end_matches('/'), "removed the experiment's faults on request")
                    }
                    // The one removal wider than a run: every run of this controller (its
                    // lever); another controller's faults stay, whatever it asks.
                    None => {
                        tracing::warn!(count = removed.len(), controller = %owner, "removed every fault of this controller on request")
                    }
                }
                self.sync_lease_pause(Instant::now());
                // What could not be removed stays held and is retried with backoff; the
                // controller learns of it here rather than from a count that looks complete.
                let left: Vec<String> = self
                    .faults
                    .held()
                    .into_iter()
                    .filter(|h| matches(&h.fault_id, &h.owner))
                    .map(|h| h.fault_id)
                    .collect();
                ack(if left.is_empty() {
                    Outcome::Removed {
                        count: removed.len() as u32,
                        observed: None,
                    }
                } else {
                    Outcome::Failed {
                        message: format!(
                            "removed {}, but could not remove {} (retrying with backoff; the agent's log says why)",
                            removed.len(),
                            left.join(", ")
                        ),
                    }
                })
            }
            ControllerMessage::Ping {} => ack(Outcome::Pong {}),
            ControllerMessage::Error { re, code, message } => {
                tracing::warn!(?re, ?code, %message, "the controller refused a frame of this agent");
                None
            }
            ControllerMessage::Welcome { .. } | ControllerMessage::Challenge { .. } => Some(AgentMessage::Error {
                re: Some(id),
                code: ErrorCode::Malformed,
                message: "the handshake is over on this connection".into(),
            }),
        }
    }

    /// Leases pause while a fault cuts this host off from its controllers, and only then.
    fn sync_lease_pause(&mut self, now: Instant) {
        self.leases.set_paused(self.faults.cuts_control_plane(), now);
    }

    async fn on_timers(&mut self, mut link: Link) -> Link {
        let now = Instant::now();
        if let Link::Registering { since, .. } = &link {
            if now >= *since + WELCOME_TIMEOUT {
                tracing::warn!("the controller did not welcome this agent; reconnecting");
                return Link::Down;
            }
        }
        let was_cut = self.faults.cuts_control_plane();
        let mut ended: Vec<(Removed, EndReason)> = self
            .faults
            .remove_where(|_, _, deadline| deadline <= now)
            .into_iter()
            .map(|r| (r, EndReason::DurationElapsed))
            .collect();
        self.sync_lease_pause(now);
        let expired = self.leases.expired(now);
        for owner in expired {
            tracing::warn!(controller = %owner, lease = ?self.leases.interval(), "the controller has been silent for the lease; removing its faults");
            ended.extend(
                self.faults
                    .remove_where(|_, o, _| o == owner)
                    .into_iter()
                    .map(|r| (r, EndReason::LeaseExpired)),
            );
            if matches!(&link, Link::Up { controller_id, .. } if *controller_id == owner) {
                // A silent controller on an open socket: start over with a fresh connection.
                link = Link::Down;
            }
        }
        for (
            Removed {
                fault_id,
                owner,
                observed,
            },
            reason,
        ) in ended
        {
            tracing::info!(fault = %fault_id, ?reason, "fault ended");
            let observed = seen(observed);
            match &link {
                Link::Up { controller_id, .. } if *controller_id == owner => {
                    let text = self.frame(AgentMessage::FaultEnded {
                        fault_id,
                        reason,
                        observed,
                    });
                    link = send(link, text).await;
                }
                _ => {
                    if self.notices.len() == MAX_PENDING_NOTICES {
                        self.notices.pop_front();
                    }
                    self.notices.push_back((owner, fault_id, reason, observed));
                }
            }
        }
        for failure in self.faults.take_failed() {
            // The owner hears of it now if it is connected; the retry itself is the agent's.
            if let Link::Up { controller_id, .. } = &link {
                if *controller_id == failure.owner {
                    let text = self.frame(AgentMessage::RemovalFailed {
                        fault_id: failure.fault_id,
                        message: failure.message,
                        retry_in_ms: failure.retry_at.saturating_duration_since(now).as_millis() as u64,
                    });
                    link = send(link, text).await;
                }
            }
        }
        // After the lapsed leases: only the faults of owners still holding one are renewed.
        let leases = &self.leases;
        self.faults.refresh(now, |owner| leases.holds(owner));
        if was_cut && !self.faults.cuts_control_plane() {
            // The link may have died during the cut; a fresh one is quicker than finding out.
            tracing::info!("the control plane is back; reconnecting");
            return Link::Down;
        }
        link
    }
}

/// An observed effect worth sending: one with figures.
fn seen(observed: Observed) -> Option<Observed> {
    (!observed.figures.is_empty()).then_some(observed)
}

fn log_outcome(fault_id: &str, kind: &str, outcome: &Outcome) {
    match outcome {
        Outcome::Applied { detail, .. } => {
            tracing::info!(fault = %fault_id, kind, %detail, "applied")
        }
        Outcome::Failed { message } => {
            tracing::warn!(fault = %fault_id, kind, %message, "could not apply")
        }
        _ => {}
    }
}

/// What arrived on the link.
enum Incoming {
    Text(String),
    Binary,
    Closed,
}

/// The next data frame of a live link. Pends forever when the link is down.
async fn next_frame(link: &mut Link) -> Incoming {
    let ws: &mut Ws = match link {
        Link::Down | Link::Refused => return std::future::pending().await,
        Link::Registering { c, .. } | Link::Up { c, .. } => &mut c.ws,
    };
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Incoming::Text(t.as_str().to_string()),
            Some(Ok(Message::Binary(_))) => return Incoming::Binary,
            Some(Ok(Message::Close(_)) | Err(_)) | None => return Incoming::Closed,
            Some(Ok(_)) => continue,
        }
    }
}

/// Sends a frame; a link that cannot send, or not within [`SEND_TIMEOUT`], is down.
async fn send(link: Link, text: String) -> Link {
    let (mut c, up) = match link {
        Link::Down | Link::Refused => return Link::Down,
        Link::Registering { c, since } => (c, Err(since)),
        Link::Up { c, controller_id } => (c, Ok(controller_id)),
    };
    match tokio::time::timeout(SEND_TIMEOUT, c.ws.send(Message::text(text))).await {
        Ok(Ok(())) => match up {
            Ok(controller_id) => Link::Up { c, controller_id },
            Err(since) => Link::Registering { c, since },
        },
        Ok(Err(_)) => Link::Down,
        Err(_) => {
            tracing::warn!(timeout = ?SEND_TIMEOUT, "the controller does not take frames; reconnecting");
            Link::Down
        }
    }
}
