//! The docker platform: the container topology (`agents/compose.yaml`), through the Docker
//! Engine API on its Unix socket (`DOCKER_HOST` when set). Host `ID` is the container
//! `faultline-ID`.
//!
//! Stop, start and reboot are Docker's own: a container stopped through the API stays
//! stopped whatever its restart policy (`unless-stopped`), until it is started again or
//! `faultline topology up` starts it. A termination stops the container (its agent removes
//! its faults), removes it, and after a short delay creates its replacement, as an Auto
//! Scaling group launches from its launch template: the same image, environment, networks
//! and addresses, a new host id.
//!
//! A stop with a duration is guarded by a watchdog process ([`super::watch`]) started before
//! the container stops: should the controller die while the container is stopped, the
//! watchdog starts it at the end of the duration (and shortly after it should the controller
//! live without having started it). The controller's own start releases it.

use super::state::InstanceState;
use super::{Operation, PlatformError, Replacement, REPLACEMENT_DELAY};
use bollard::models::{ContainerCreateBody, EndpointIpamConfig, EndpointSettings, NetworkConnectRequest};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, RemoveContainerOptions,
    RestartContainerOptions, StartContainerOptions, StopContainerOptions,
};
use faultline_agent::protocol::HostDescription;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Seconds a container gets to stop (its agent removes its faults) before SIGKILL; as the
/// compose file's `stop_grace_period`.
const STOP_SECONDS: i32 = 15;

/// The label compose puts on the topology's containers.
const PROJECT_LABEL: &str = "com.docker.compose.project";
/// The topology's compose project name; its containers are named `faultline-HOST`.
pub const PROJECT: &str = "faultline";

/// A connection to the Docker Engine.
#[derive(Debug, Clone)]
pub struct Docker {
    api: bollard::Docker,
    /// The watchdogs of the containers stopped for a duration, by host id.
    watches: Arc<Mutex<HashMap<String, super::watch::Watch>>>,
}

/// The container of a host.
pub fn container(host_id: &str) -> String {
    format!("{}-{host_id}", PROJECT)
}

impl Docker {
    /// Connects to the local engine and agrees on an API version.
    pub async fn connect() -> Result<Docker, bollard::errors::Error> {
        let api = bollard::Docker::connect_with_local_defaults()?
            .negotiate_version()
            .await?;
        api.ping().await?;
        Ok(Docker {
            api,
            watches: Arc::default(),
        })
    }

    /// Starts a container; one running already, or gone, is started (what a watchdog wants).
    pub async fn start(&self, name: &str) -> Result<(), bollard::errors::Error> {
        match self.api.start_container(name, None::<StartContainerOptions>).await {
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304 | 404, ..
            }) => Ok(()),
            other => other,
        }
    }

    /// Stops a host's container until `until`, with a watchdog that starts it then should
    /// this controller die (or fail to start it) meanwhile. The stop is refused when the
    /// watchdog cannot start.
    pub async fn stop_until(&self, host: &HostDescription, until: SystemTime) -> Result<(), PlatformError> {
        let id = host.host_id.clone();
        let watch = super::watch::Watch::spawn(&container(&id), until).map_err(|e| PlatformError::Failed {
            host: id.clone(),
            operation: Operation::Stop,
            message: format!("cannot start the watchdog that would start it again: {e}"),
        })?;
        let replaced = self.watches().insert(id.clone(), watch);
        if let Some(old) = replaced {
            old.release().await;
        }
        let stopped = self.act(host, Operation::Stop).await.map(|_| ());
        match &stopped {
            Ok(()) => {}
            Err(PlatformError::Terminated(_)) => self.release(&id).await,
            // A failed stop may still have stopped it (an answer lost on the way back), and
            // the action, failed, will not start it: start it now (which releases the
            // watchdog); should even that fail, the watchdog stays and starts it later.
            Err(_) => {
                let _ = self.act(host, Operation::Start).await;
            }
        }
        stopped
    }

    /// Releases the watchdog of a host, if any.
    async fn release(&self, host_id: &str) {
        let watch = self.watches().remove(host_id);
        if let Some(w) = watch {
            w.release().await;
        }
    }

    fn watches(&self) -> std::sync::MutexGuard<'_, HashMap<String, super::watch::Watch>> {
        self.watches.lock().expect("never poisoned")
    }

    /// Does `operation` to a host's container.
    pub async fn act(
        &self,
        host: &HostDescription,
        operation: Operation,
    ) -> Result<Option<Replacement>, PlatformError> {
        let id = host.host_id.as_str();
        let name = container(id);
        let failed = |e: bollard::errors::Error| match e {
            bollard::errors::Error::DockerResponseServerError { status_code: 404, .. } => {
                PlatformError::Terminated(id.to_string())
            }
            e => PlatformError::Failed {
                host: id.to_string(),
                operation,
                message: e.to_string(),
            },
        };
        let stop = Some(StopContainerOptions {
            t: Some(STOP_SECONDS),
            signal: None,
        });
        match operation {
            Operation::Stop => self.api.stop_container(&name, stop).await.map_err(failed)?,
            Operation::Start => {
                let started = self
                    .api
                    .start_container(&name, None::<StartContainerOptions>)
                    .await
                    .map_err(failed);
                // Started, or terminated: the watchdog has nothing left to do. On another
                // failure it stays: it starts the container once this controller ends, or
                // shortly after the deadline should this controller still not have.
                if matches!(started, Ok(()) | Err(PlatformError::Terminated(_))) {
                    self.release(id).await;
                }
                started?
            }
            Operation::Reboot => self
                .api
                .restart_container(
                    &name,
                    Some(RestartContainerOptions {
                        t: Some(STOP_SECONDS),
                        signal: None,
                    }),
                )
                .await
                .map_err(failed)?,
            Operation::Terminate => {
                let launch = self
                    .api
                    .inspect_container(&name, None::<InspectContainerOptions>)
                    .await
                    .map_err(failed)?;
                self.api.stop_container(&name, stop).await.map_err(failed)?;
                self.api
                    .remove_container(
                        &name,
                        Some(RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        }),
                    )
                    .await
                    .map_err(failed)?;
                tokio::time::sleep(REPLACEMENT_DELAY).await;
                return self.replace(host, launch).await.map(Some);
            }
        }
        Ok(None)
    }

    /// Launches the replacement of a terminated host from the terminated container's
    /// configuration.
    async fn replace(
        &self,
        old: &HostDescription,
        launch: bollard::models::ContainerInspectResponse,
    ) -> Result<Replacement, PlatformError> {
        let failed = |message: String| PlatformError::Failed {
            host: old.host_id.clone(),
            operation: Operation::Terminate,
            message: format!("cannot launch the replacement: {message}"),
        };
        let in_use = self.host_ids().await.map_err(|e| failed(e.to_string()))?;
        let new_id = super::replacement_id(&old.host_id, in_use.iter().map(String::as_str));
        let config = launch.config.unwrap_or_default();
        let env = config.env.map(|env| {
            env.into_iter()
                .map(|var| relabel(&var, &old.host_id, &new_id))
                .collect::<Vec<_>>()
        });
        let mut networks: Vec<(String, EndpointSettings)> = launch
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_iter()
            .map(|(net, e)| {
                let endpoint = EndpointSettings {
                    ipam_config: Some(EndpointIpamConfig {
                        ipv4_address: e.ip_address.filter(|a| !a.is_empty()),
                        ..Default::default()
                    }),
                    aliases: Some(vec![new_id.clone()]),
                    ..Default::default()
                };
                (net, endpoint)
            })
            .collect();
        // The network of the host config's network mode is the one given at creation.
        let mode = launch.host_config.as_ref().and_then(|h| h.network_mode.clone());
        networks.sort_by_key(|(net, _)| Some(net) != mode.as_ref());
        let body = ContainerCreateBody {
            hostname: Some(new_id.clone()),
            env,
            cmd: config.cmd,
            entrypoint: config.entrypoint,
            image: config.image,
            labels: config.labels,
            stop_signal: config.stop_signal,
            host_config: launch.host_config,
            // The engine (API < 1.44) takes one network at creation; the others are
            // connected before the container starts.
            networking_config: networks.first().map(|(net, e)| bollard::models::NetworkingConfig {
                endpoints_config: Some(HashMap::from([(net.clone(), e.clone())])),
            }),
            ..Default::default()
        };
        let name = container(&new_id);
        self.api
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| failed(e.to_string()))?;
        for (net, endpoint) in networks.into_iter().skip(1) {
            self.api
                .connect_network(
                    &net,
                    NetworkConnectRequest {
                        container: name.clone(),
                        endpoint_config: Some(endpoint),
                    },
                )
                .await
                .map_err(|e| failed(format!("connecting {net}: {e}")))?;
        }
        self.api
            .start_container(&name, None::<StartContainerOptions>)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(Replacement {
            host_id: new_id,
            availability_zone: old.placement.availability_zone.clone(),
        })
    }

    /// The state of a host's container; terminated when it has none (a terminated host's
    /// container is removed).
    pub async fn state(&self, host_id: &str) -> Result<InstanceState, bollard::errors::Error> {
        match self
            .api
            .inspect_container(&container(host_id), None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(container_state(c.state.and_then(|s| s.status).map(|s| s.to_string()))),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                Ok(InstanceState::Terminated)
            }
            Err(e) => Err(e),
        }
    }

    /// The topology's hosts whose container is not running, described from the container's
    /// environment (the one their agent registers from), with their state.
    pub async fn idle_hosts(&self) -> Result<Vec<(HostDescription, InstanceState)>, bollard::errors::Error> {
        let all = self.containers().await?;
        let mut hosts = Vec::new();
        for c in all {
            let state = container_state(c.state.map(|s| s.to_string()));
            let Some(id) = c.id.filter(|_| state != InstanceState::Running) else {
                continue;
            };
            let env = self
                .api
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await?
                .config
                .and_then(|c| c.env)
                .unwrap_or_default();
            if let Some(host) = described(&env) {
                hosts.push((host, state));
            }
        }
        Ok(hosts)
    }

    /// The topology's containers, running or not.
    async fn containers(&self) -> Result<Vec<bollard::models::ContainerSummary>, bollard::errors::Error> {
        self.api
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([(
                    "label".to_string(),
                    vec![format!("{PROJECT_LABEL}={}", PROJECT)],
                )])),
                ..Default::default()
            }))
            .await
    }

    /// The ids of the topology's hosts that have a container (running or not).
    async fn host_ids(&self) -> Result<Vec<String>, bollard::errors::Error> {
        let prefix = format!("/{}", container(""));
        let all = self.containers().await?;
        Ok(all
            .into_iter()
            .flat_map(|c| c.names.unwrap_or_default())
            .filter_map(|n| n.strip_prefix(&prefix).map(String::from))
            .collect())
    }
}

/// One `KEY=VALUE` of the terminated host's environment, for its replacement: the host id
/// and the service's name change, nothing else.
fn relabel(var: &str, old: &str, new: &str) -> String {
    match var.split_once('=') {
        Some(("FAULTLINE_HOST_ID", _)) => format!("FAULTLINE_HOST_ID={new}"),
        Some(("DEMO_INIT_RUN", run)) => format!(
            "DEMO_INIT_RUN={}",
            run.replace(&format!("--name {old}"), &format!("--name {new}"))
        ),
        _ => var.to_string(),
    }
}

/// EC2's name for a container's state (Docker's `created`, `exited` and `dead` are stopped).
fn container_state(status: Option<String>) -> InstanceState {
    match status.as_deref() {
        Some("restarting") => InstanceState::Pending,
        Some("stopping") => InstanceState::Stopping,
        Some("removing") => InstanceState::ShuttingDown,
        Some("created" | "exited" | "dead") => InstanceState::Stopped,
        _ => InstanceState::Running,
    }
}

/// A host as its agent would register it, from its container's environment (the agent's
/// `FAULTLINE_HOST_ID`, `FAULTLINE_AZ`, `FAULTLINE_TAGS`, `FAULTLINE_ADDRESS`); `None` for a
/// container that is not a host (the load balancer).
fn described(env: &[String]) -> Option<HostDescription> {
    let var = |name: &str| {
        env.iter()
            .find_map(|v| v.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    let tags: std::collections::BTreeMap<String, String> = var("FAULTLINE_TAGS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    serde_json::from_value(serde_json::json!({
        "HostId": var("FAULTLINE_HOST_ID")?,
        "Placement": { "AvailabilityZone": var("FAULTLINE_AZ")? },
        "Tags": tags,
        "Address": var("FAULTLINE_ADDRESS").unwrap_or_default(),
    }))
    .ok()
}

/// Starts `container` through a fresh connection to the engine (the one of the failed try
/// may be what failed); running already, or removed, is success.
pub async fn start_container(container: &str) -> Result<(), String> {
    match Docker::connect().await {
        Ok(d) => d.start(container).await.map_err(|e| e.to_string()),
        Err(e) => Err(format!("cannot reach the Docker Engine: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replacement_keeps_the_environment_but_its_names() {
        assert_eq!(
            relabel("FAULTLINE_HOST_ID=web-a1", "web-a1", "web-a3"),
            "FAULTLINE_HOST_ID=web-a3"
        );
        assert_eq!(
            relabel(
                "DEMO_INIT_RUN=/demo-web --listen 127.0.0.1:8081 --name web-a1;/faultline-agent",
                "web-a1",
                "web-a3"
            ),
            "DEMO_INIT_RUN=/demo-web --listen 127.0.0.1:8081 --name web-a3;/faultline-agent"
        );
        assert_eq!(relabel("FAULTLINE_AZ=az-a", "web-a1", "web-a3"), "FAULTLINE_AZ=az-a");
    }

    #[test]
    fn a_stopped_container_is_described_as_its_agent_registers() {
        let env: Vec<String> = [
            "FAULTLINE_HOST_ID=web-b2",
            "FAULTLINE_AZ=az-b",
            "FAULTLINE_TAGS=tier=web,faultline:platform=docker",
            "FAULTLINE_ADDRESS=10.42.2.12",
        ]
        .map(String::from)
        .into();
        let h = described(&env).unwrap();
        assert_eq!(
            (h.host_id.as_str(), h.placement.availability_zone.as_str()),
            ("web-b2", "az-b")
        );
        assert_eq!(h.tags["faultline:platform"], "docker");
        assert_eq!(h.address, "10.42.2.12");
        assert!(described(&["LB=1".to_string()]).is_none());
        assert_eq!(container_state(Some("exited".into())), InstanceState::Stopped);
        assert_eq!(container_state(Some("running".into())), InstanceState::Running);
    }
}
