//! Who is connected (one link per host id) and the book of the faults running actions own,
//! with those their hosts ended on their own; a (re)registering agent's faults that no
//! running action owns are removed.

use faultline_agent::protocol::{ControllerMessage, EndReason, HeldFault, HostDescription, Observed, Outcome};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// How long an agent has to confirm the removal of a fault it reported holding.
use super::{Fleet, FleetEvent};

/// How long an agent has to confirm the removal of a fault it reported holding.
pub(super) const ORPHAN_REMOVAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The faults running actions own, and those of them their hosts ended on their own.
#[derive(Default)]
pub(super) struct Book {
    /// Fault id → the host it was dispatched to, from dispatch until its action lets go.
    pub(super) owned: HashMap<String, String>,
    /// Faults their host ended, by host and fault id.
    pub(super) ended: HashMap<(String, String), (EndReason, Option<Observed>)>,
}

pub(super) type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Outcome, String>>>>>;

#[derive(Clone)]
pub(super) struct Link {
    pub(super) description: HostDescription,
    /// The agent process, as it registered: a reconnect of the same one replaces this link.
    pub(super) instance: String,
    pub(super) peer: SocketAddr,
    pub(super) conn: u64,
    pub(super) lease: Duration,
    pub(super) outbox: mpsc::Sender<String>,
    pub(super) pending: Pending,
    /// Ends the connection's task, e.g. when a new connection of the same host replaces it.
    pub(super) closed: CancellationToken,
}

impl Fleet {
    /// Descriptions of the connected agents, by host id.
    pub fn hosts(&self) -> Vec<HostDescription> {
        self.agents().values().map(|l| l.description.clone()).collect()
    }

    /// Whether a host is connected.
    pub fn is_connected(&self, host: &str) -> bool {
        self.agents().contains_key(host)
    }

    pub(super) fn agents(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Link>> {
        self.inner.agents.lock().expect("fleet lock is never poisoned")
    }

    pub(super) fn book(&self) -> std::sync::MutexGuard<'_, Book> {
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

    /// Removes every fault of this controller's that a (re)registering agent holds and no
    /// running action owns: an apply whose answer was lost, or a fault of a run that has
    /// ended. A fault of another controller is its owner's to remove, and ends with its
    /// owner's lease if that controller is gone: it is reported, never touched. Runs in the
    /// background so the connection's frames (the answers) keep being read.
    pub(super) fn registered(&self, description: &HostDescription, held: Vec<HeldFault>) {
        let host = description.host_id.clone();
        let ours = self.controller_id();
        let (held, foreign): (Vec<HeldFault>, Vec<HeldFault>) = held.into_iter().partition(|h| h.owner == ours);
        for HeldFault { fault_id, owner } in foreign {
            tracing::info!(%host, fault = %fault_id, %owner, "the agent holds a fault of another controller; left to its owner");
            let _ = self.inner.events.send(FleetEvent::ForeignHeld {
                host: host.clone(),
                fault_id,
                owner,
            });
        }
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

    /// Removes a host's link if it is still connection `conn` (not a newer one).
    pub(super) fn forget(&self, host: &str, conn: u64) {
        let mut agents = self.agents();
        if agents.get(host).is_some_and(|l| l.conn == conn) {
            agents.remove(host);
        }
    }
}
