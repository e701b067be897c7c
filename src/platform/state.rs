//! What the controller knows of hosts beyond their connected agents: as FIS asks EC2, a host
//! the platform stopped is still a host, `State.Name=stopped`, even though its agent is gone.
//!
//! The platforms keep a ledger of every host they acted on (its last description, as its
//! agent registered it, and the operation in progress); the container platform can also
//! list the topology's containers. [`merge`] puts that together with the connected agents:
//! a connected host is `running` (or `stopping`/`shutting-down` while the platform is at it);
//! a host whose agent is gone is listed only when its platform says it is stopped, stopping,
//! pending, shutting down or terminated. A host whose agent is gone while the platform says
//! it runs is not listed (its agent is lost; nothing could act on it through it).

use faultline_agent::protocol::{HostDescription, HostState};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a terminated host stays listed, as EC2 lists a terminated instance for about an
/// hour before it forgets it.
pub const TERMINATED_VISIBLE: Duration = Duration::from_secs(3600);

/// An instance's state, with EC2's names (`State.Name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    /// Being started.
    Pending,
    /// Up.
    Running,
    /// Being stopped.
    Stopping,
    /// Stopped: it keeps its id and can be started again.
    Stopped,
    /// Being terminated.
    ShuttingDown,
    /// Gone for good.
    Terminated,
}

impl InstanceState {
    /// EC2's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
        }
    }
}

/// A host a platform acted on.
#[derive(Debug, Clone)]
struct Entry {
    description: HostDescription,
    /// The operation under way, as the state it puts the host in meanwhile.
    in_progress: Option<InstanceState>,
    /// When it was terminated.
    terminated: Option<Instant>,
}

/// The hosts the platforms acted on; cheap to clone, all clones share it.
#[derive(Debug, Clone, Default)]
pub struct Ledger(Arc<Mutex<BTreeMap<String, Entry>>>);

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An operation on `host` begins; meanwhile the host is `during` (none: unchanged).
    pub fn begin(&self, host: &HostDescription, during: Option<InstanceState>) {
        let mut hosts = self.lock();
        let entry = hosts.entry(host.host_id.clone()).or_insert_with(|| Entry {
            description: host.clone(),
            in_progress: None,
            terminated: None,
        });
        // A description from a connected agent is newer than the one kept.
        if host.state.name == InstanceState::Running.as_str() {
            entry.description = host.clone();
        }
        entry.in_progress = during;
    }

    /// The operation on `host` ended; `terminated` when it ended the host for good.
    pub fn end(&self, host: &str, terminated: bool) {
        if let Some(e) = self.lock().get_mut(host) {
            e.in_progress = None;
            if terminated {
                e.terminated = Some(Instant::now());
            }
        }
    }

    /// Every host acted on, with what the ledger alone says of its state: the operation in
    /// progress, or terminated; `None` when the platform must be asked.
    pub(super) fn entries(&self) -> Vec<(HostDescription, Option<InstanceState>)> {
        let mut hosts = self.lock();
        hosts.retain(|_, e| e.terminated.is_none_or(|at| at.elapsed() < TERMINATED_VISIBLE));
        hosts
            .values()
            .map(|e| {
                let known = e.in_progress.or(e.terminated.map(|_| InstanceState::Terminated));
                (e.description.clone(), known)
            })
            .collect()
    }
}

/// The hosts as filters and `faultline agents` see them: the connected agents, and the
/// hosts their platform knows that are not running, each with its `State.Name`; sorted by id.
pub fn merge(connected: Vec<HostDescription>, platform: Vec<(HostDescription, InstanceState)>) -> Vec<HostDescription> {
    let mut by_id: BTreeMap<String, HostDescription> = connected.into_iter().map(|h| (h.host_id.clone(), h)).collect();
    for (mut host, state) in platform {
        match (by_id.get_mut(&host.host_id), state) {
            (_, InstanceState::Running) => {}
            // The platform is ending or stopping it: its agent may not have left yet.
            (Some(live), state) => {
                live.state = HostState {
                    name: state.as_str().into(),
                }
            }
            (None, state) => {
                host.state = HostState {
                    name: state.as_str().into(),
                };
                by_id.insert(host.host_id.clone(), host);
            }
        }
    }
    by_id.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str) -> HostDescription {
        serde_json::from_value(serde_json::json!({
            "HostId": id, "Placement": { "AvailabilityZone": "az-a" },
            "Agent": { "Capabilities": ["cpu"] }
        }))
        .unwrap()
    }

    fn states(hosts: &[HostDescription]) -> Vec<(&str, &str)> {
        hosts
            .iter()
            .map(|h| (h.host_id.as_str(), h.state.name.as_str()))
            .collect()
    }

    #[test]
    fn a_host_the_platform_stopped_is_listed_stopped_and_one_it_runs_only_while_connected() {
        let merged = merge(
            vec![host("web-a1"), host("web-b1")],
            vec![
                (host("web-a2"), InstanceState::Stopped),
                (host("web-a3"), InstanceState::Terminated),
                // Its agent is gone although the platform runs it: not a target.
                (host("web-c1"), InstanceState::Running),
                // Being stopped while its agent is still connected.
                (host("web-b1"), InstanceState::Stopping),
                // Started again, its agent back: running.
                (host("web-a1"), InstanceState::Running),
            ],
        );
        assert_eq!(
            states(&merged),
            [
                ("web-a1", "running"),
                ("web-a2", "stopped"),
                ("web-a3", "terminated"),
                ("web-b1", "stopping")
            ]
        );
        // The last description is kept: filters and capabilities still see it.
        assert_eq!(merged[1].agent.capabilities, ["cpu"]);
    }

    #[test]
    fn the_ledger_shows_the_operation_under_way_then_asks_the_platform() {
        let ledger = Ledger::default();
        ledger.begin(&host("web-a1"), Some(InstanceState::Stopping));
        assert_eq!(ledger.entries()[0].1, Some(InstanceState::Stopping));
        ledger.end("web-a1", false);
        assert_eq!(ledger.entries()[0].1, None);
        ledger.begin(&host("web-a1"), Some(InstanceState::ShuttingDown));
        ledger.end("web-a1", true);
        assert_eq!(ledger.entries()[0].1, Some(InstanceState::Terminated));
    }
}
