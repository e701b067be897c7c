//! The local platform: the hosts of `faultline demo`, each a demo-init process tree (the
//! host's service and agent) on its own loopback address. Stopping a host ends its tree
//! (SIGTERM: the agent removes its faults first); starting it runs a new tree with the same
//! id, address and state directory; a termination ends it for good and, as an Auto Scaling
//! group would, launches a host with a new id in the same AZ on the same address, so the
//! load balancer's backend serves again.

use super::state::InstanceState;
use super::{Operation, PlatformError, Replacement, REPLACEMENT_DELAY};
use faultline_agent::protocol::HostDescription;
use std::collections::BTreeMap;
use std::process::Child;
use std::sync::{Arc, Mutex};

/// Starts a host's process tree (demo-init with the host's service and agent).
pub type Spawner = dyn Fn(&HostDescription) -> std::io::Result<Child> + Send + Sync;

struct LocalHost {
    description: HostDescription,
    child: Option<Child>,
    terminated: bool,
}

/// The demo's hosts; cheap to clone, all clones share them.
#[derive(Clone)]
pub struct Local {
    hosts: Arc<Mutex<BTreeMap<String, LocalHost>>>,
    spawn: Arc<Spawner>,
}

impl Local {
    /// Starts every host.
    pub fn start(hosts: &[HostDescription], spawn: Arc<Spawner>) -> std::io::Result<Local> {
        let local = Local {
            hosts: Default::default(),
            spawn,
        };
        for h in hosts {
            let child = (local.spawn)(h)?;
            local.lock().insert(
                h.host_id.clone(),
                LocalHost {
                    description: h.clone(),
                    child: Some(child),
                    terminated: false,
                },
            );
        }
        Ok(local)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, LocalHost>> {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this world started `host_id`.
    pub fn knows(&self, host_id: &str) -> bool {
        self.lock().contains_key(host_id)
    }

    /// A host's state: running, stopped or terminated; `None` for a host this world did not
    /// start.
    pub fn state(&self, host_id: &str) -> Option<InstanceState> {
        self.lock().get(host_id).map(|h| match (h.terminated, &h.child) {
            (true, _) => InstanceState::Terminated,
            (false, Some(_)) => InstanceState::Running,
            (false, None) => InstanceState::Stopped,
        })
    }

    /// Ends a host's process tree and waits for it; nothing when it is not running.
    async fn end(&self, host: &str) {
        let child = self.lock().get_mut(host).and_then(|h| h.child.take());
        if let Some(child) = child {
            let _ = tokio::task::spawn_blocking(move || terminate(child)).await;
        }
    }

    fn run(&self, host: &str, operation: Operation) -> Result<(), PlatformError> {
        let mut hosts = self.lock();
        let h = hosts
            .get_mut(host)
            .ok_or_else(|| PlatformError::NoPlatform(host.to_string()))?;
        if h.terminated {
            return Err(PlatformError::Terminated(host.to_string()));
        }
        if h.child.is_none() {
            h.child = Some((self.spawn)(&h.description).map_err(|e| PlatformError::Failed {
                host: host.to_string(),
                operation,
                message: e.to_string(),
            })?);
        }
        Ok(())
    }

    /// Does `operation` to a host of this world.
    pub async fn act(
        &self,
        host: &HostDescription,
        operation: Operation,
    ) -> Result<Option<Replacement>, PlatformError> {
        let id = host.host_id.as_str();
        if self.lock().get(id).is_some_and(|h| h.terminated) {
            return Err(PlatformError::Terminated(id.to_string()));
        }
        match operation {
            Operation::Stop => self.end(id).await,
            Operation::Start => self.run(id, operation)?,
            Operation::Reboot => {
                self.end(id).await;
                self.run(id, operation)?;
            }
            Operation::Terminate => {
                self.end(id).await;
                let old = {
                    let mut hosts = self.lock();
                    let h = hosts
                        .get_mut(id)
                        .ok_or_else(|| PlatformError::NoPlatform(id.to_string()))?;
                    h.terminated = true;
                    h.description.clone()
                };
                tokio::time::sleep(REPLACEMENT_DELAY).await;
                let mut description = old.clone();
                description.host_id = super::replacement_id(id, self.lock().keys().map(String::as_str));
                let child = (self.spawn)(&description).map_err(|e| PlatformError::Failed {
                    host: description.host_id.clone(),
                    operation,
                    message: format!("cannot launch the replacement: {e}"),
                })?;
                let replacement = Replacement {
                    host_id: description.host_id.clone(),
                    availability_zone: description.placement.availability_zone.clone(),
                };
                self.lock().insert(
                    description.host_id.clone(),
                    LocalHost {
                        description,
                        child: Some(child),
                        terminated: false,
                    },
                );
                return Ok(Some(replacement));
            }
        }
        Ok(None)
    }

    /// Ends every host (SIGTERM to all, then waits for each).
    pub fn shutdown(&self) {
        let children: Vec<Child> = self.lock().values_mut().filter_map(|h| h.child.take()).collect();
        for c in &children {
            // SAFETY: kill(2) on our own child; demo-init passes SIGTERM on and waits.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for mut c in children {
            let _ = c.wait();
        }
    }
}

/// SIGTERM to a host's demo-init, which passes it on and waits for its programs.
fn terminate(mut child: Child) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}
