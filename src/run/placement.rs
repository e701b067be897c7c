//! Where each action acts, worked out once before anything starts (the preflight): the
//! resources its target resolved to and the fault each host receives, every host checked to
//! be running, connected and capable, and on a platform for instance actions.

use super::Run;
use crate::platform::PlatformError;
use crate::template::{Action, Effect, ResourceType};
use faultline_agent::protocol::{FaultKind, HostDescription};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The faults one action puts on one host.
#[derive(Debug, Clone)]
pub(super) struct Placement {
    pub(super) host: String,
    pub(super) fault: FaultKind,
}

/// Where each action acts, worked out once by [`Run::preflight`]: its resources (hosts, or
/// AZs for a blackout) and the fault each host receives.
#[derive(Debug)]
pub struct Placements(pub(super) BTreeMap<String, (Vec<String>, Vec<Placement>)>);

/// Why a host of an action cannot take its fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// The target selected a host whose agent has gone.
    #[error("{0} is not connected")]
    NotConnected(String),
    /// The target selected a host that its platform stopped or terminated.
    #[error("{host} is {state}: its agent cannot take a fault; add the filter State.Name=running to the target")]
    NotRunning {
        /// The host id.
        host: String,
        /// Its `State.Name`.
        state: String,
    },
    /// A `sources` list names an AZ in which no connected host has an address.
    #[error(
        "`sources` names the AZ {0}, but no connected host with an address is in it; name its hosts' \
         addresses instead, or start their agents"
    )]
    EmptySourceAz(String),
    /// Scope `availability-zone` of a subnet whose AZ is the only one with hosts.
    #[error(
        "scope availability-zone cuts {0} off from the other AZs, but no connected host with an address is in \
         another AZ; start their agents, or use scope all"
    )]
    NoOtherAz(String),
    /// The host's agent does not offer the fault's capability.
    #[error(
        "{host} cannot inject `{capability}` (its agent offers: {offers}); start it with that capability or target \
         other hosts"
    )]
    Incapable {
        /// The host id.
        host: String,
        /// What the fault needs.
        capability: &'static str,
        /// What the agent offers, comma-separated.
        offers: String,
    },
    /// An instance action selected a host no platform of this controller can act on.
    #[error(transparent)]
    Platform(#[from] PlatformError),
}

/// Whether `host` can take a fault that needs `capability`: it runs (a host its platform
/// stopped is known, but its agent is gone) and its agent offers it.
fn takes(host: &HostDescription, capability: &'static str) -> Result<(), PlacementError> {
    if host.state.name != "running" {
        return Err(PlacementError::NotRunning {
            host: host.host_id.clone(),
            state: host.state.name.clone(),
        });
    }
    if !host.agent.capabilities.iter().any(|c| c == capability) {
        return Err(PlacementError::Incapable {
            host: host.host_id.clone(),
            capability,
            offers: host.agent.capabilities.join(", "),
        });
    }
    Ok(())
}

/// Every action whose hosts cannot take its fault, found before anything starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|(action, e)| format!("action {action}: {e}")).collect::<Vec<_>>().join("\n"))]
pub struct PreflightError(pub Vec<(String, PlacementError)>);

impl Run {
    /// The faults of an action, host by host; an error when a host cannot take it.
    pub(super) fn placements(&self, action: &Action) -> Result<(Vec<String>, Vec<Placement>), PlacementError> {
        let Some(target) = &action.target else {
            return Ok((Vec::new(), Vec::new()));
        };
        let resources = self
            .resolution
            .targets
            .get(target)
            .map(|r| r.selected.clone())
            .unwrap_or_default();
        let by_id: BTreeMap<&str, &HostDescription> = self.hosts.iter().map(|h| (h.host_id.as_str(), h)).collect();
        let resource_type = self.experiment.targets[target].resource_type;
        let placements: Vec<Placement> = match (&action.spec.effect, resource_type) {
            // A subnet is its AZ's network: cutting it is that AZ's blackout.
            (
                Effect::Blackout {
                    keep_control_plane,
                    other_azs_only,
                },
                ResourceType::Az | ResourceType::Subnet,
            ) => {
                let mut placed = Vec::new();
                for r in &resources {
                    let az = match resource_type {
                        ResourceType::Subnet => crate::plan::subnet_az(r),
                        _ => r.as_str(),
                    };
                    // A stopped host's agent is gone: nothing to cut, and it is no peer to deny.
                    let (members, others): (Vec<&HostDescription>, Vec<&HostDescription>) = self
                        .hosts
                        .iter()
                        .filter(|h| h.state.name == "running")
                        .partition(|h| h.placement.availability_zone == az);
                    let addresses =
                        |hosts: &[&HostDescription]| hosts.iter().filter_map(|h| h.address.parse().ok()).collect();
                    let allow: Vec<IpAddr> = addresses(&members);
                    let deny: Vec<IpAddr> = if *other_azs_only {
                        addresses(&others)
                    } else {
                        Vec::new()
                    };
                    // An empty deny-list would cut everything: refuse rather than widen the fault.
                    if *other_azs_only && deny.is_empty() && !members.is_empty() {
                        return Err(PlacementError::NoOtherAz(az.to_string()));
                    }
                    placed.extend(members.into_iter().map(|h| Placement {
                        host: h.host_id.clone(),
                        fault: crate::actions::blackout_fault(*keep_control_plane, allow.clone(), deny.clone()),
                    }));
                }
                placed
            }
            (Effect::Sourced { fault, azs }, _) => {
                let mut more = Vec::new();
                for az in azs {
                    let before = more.len();
                    more.extend(
                        self.hosts
                            .iter()
                            .filter(|h| &h.placement.availability_zone == az)
                            .filter_map(|h| h.address.parse::<IpAddr>().ok()),
                    );
                    if more.len() == before {
                        return Err(PlacementError::EmptySourceAz(az.clone()));
                    }
                }
                let fault = crate::actions::with_sources(fault.clone(), more);
                resources
                    .iter()
                    .map(|h| Placement {
                        host: h.clone(),
                        fault: fault.clone(),
                    })
                    .collect()
            }
            _ => match action.spec.host_fault() {
                Some(fault) => resources
                    .iter()
                    .map(|h| Placement {
                        host: h.clone(),
                        fault: fault.clone(),
                    })
                    .collect(),
                None => Vec::new(),
            },
        };
        for p in &placements {
            let capability = p.fault.capability();
            let host = by_id
                .get(p.host.as_str())
                .ok_or_else(|| PlacementError::NotConnected(p.host.clone()))?;
            takes(host, capability)?;
        }
        Ok((resources, placements))
    }

    /// Places every action's faults, checking that each host can take its fault (and that
    /// each host of an instance action is on a platform this controller reaches), before
    /// anything starts. Actions whose target resolved to nothing are left out.
    pub async fn preflight(&self) -> Result<Placements, PreflightError> {
        let mut placed = BTreeMap::new();
        let mut errors = Vec::new();
        for (name, a) in &self.experiment.actions {
            if a.target.as_ref().is_some_and(|t| self.resolution.empty.contains(t)) {
                continue;
            }
            let placement = match self.placements(a) {
                Ok(p) => p,
                Err(e) => {
                    errors.push((name.clone(), e));
                    continue;
                }
            };
            if let Effect::Instances { .. } = a.spec.effect {
                if let Err(e) = self.instance_hosts(&placement.0).await {
                    errors.push((name.clone(), e));
                    continue;
                }
            }
            placed.insert(name.clone(), placement);
        }
        if errors.is_empty() {
            Ok(Placements(placed))
        } else {
            Err(PreflightError(errors))
        }
    }

    /// The descriptions of an instance action's hosts, each on a platform this controller
    /// reaches.
    pub(super) async fn instance_hosts(&self, ids: &[String]) -> Result<Vec<HostDescription>, PlacementError> {
        let mut hosts = Vec::new();
        for id in ids {
            let host = self
                .hosts
                .iter()
                .find(|h| &h.host_id == id)
                .ok_or_else(|| PlacementError::NotConnected(id.clone()))?;
            self.platforms.check(host).await?;
            hosts.push(host.clone());
        }
        Ok(hosts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_host_takes_no_fault_and_a_running_one_what_its_agent_offers() {
        let mut h: HostDescription = serde_json::from_value(serde_json::json!({
            "HostId": "web-a1", "Placement": { "AvailabilityZone": "az-a" },
            "Agent": { "Capabilities": ["cpu"] }
        }))
        .unwrap();
        assert_eq!(takes(&h, "cpu"), Ok(()));
        assert!(matches!(takes(&h, "kill"), Err(PlacementError::Incapable { .. })));
        h.state.name = "stopped".into();
        let e = takes(&h, "cpu").unwrap_err();
        assert_eq!(
            e.to_string(),
            "web-a1 is stopped: its agent cannot take a fault; add the filter State.Name=running to the target"
        );
    }
}
