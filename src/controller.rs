//! The embedded controller: serves agents, waits for them, and runs an experiment end to
//! end (resolve, preflight, engine, report). `faultline run` and `faultline demo` use it.

use crate::engine::{Run, RunOutcome, Settings, StopRequest};
use crate::exit;
use crate::journal::{Event, Journal, State};
use crate::plan;
use crate::report::Report;
use crate::server::{Fleet, FleetEvent};
use crate::template::Experiment;
use crate::token;
use faultline_agent::protocol::HostDescription;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Agents are taken to be all there once none has connected for this long.
pub const SETTLE: Duration = Duration::from_secs(2);

/// A run that could not happen or finish, with the exit status it means.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RunError {
    /// Exit status.
    pub code: u8,
    /// What happened and what to do.
    pub message: String,
}

fn failed(message: impl Into<String>) -> RunError {
    RunError {
        code: exit::FAILED,
        message: message.into(),
    }
}

/// Which agents to wait for before resolving targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentWait {
    /// At least this many.
    Count(usize),
    /// These hosts, then no newcomer for [`SETTLE`].
    Settle(BTreeSet<String>),
}

/// A controller serving agents.
pub struct Controller {
    fleet: Fleet,
    addr: SocketAddr,
    cancel: CancellationToken,
}

impl Controller {
    /// Binds `listen` and starts serving agents that present `token`.
    pub async fn start(listen: SocketAddr, token: String) -> Result<Controller, RunError> {
        let cancel = CancellationToken::new();
        let (fleet, addr) = Fleet::start(listen, token, token::random_id("ctl-"), cancel.clone())
            .await
            .map_err(|e| failed(format!("cannot listen on {listen}: {e}")))?;
        tracing::info!(
            "controller listening on ws://{addr}{}",
            faultline_agent::protocol::AGENT_PATH
        );
        Ok(Controller { fleet, addr, cancel })
    }

    /// The address agents dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The connected agents.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Waits for agents as `wait` says, up to `timeout`; the hosts connected then.
    pub async fn wait_for_agents(&self, wait: &AgentWait, timeout: Duration) -> Result<Vec<HostDescription>, RunError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.fleet.changes();
        let mut last_change = tokio::time::Instant::now();
        loop {
            changes.borrow_and_update();
            let hosts = self.fleet.hosts();
            let connected: BTreeSet<&str> = hosts.iter().map(|h| h.host_id.as_str()).collect();
            let now = tokio::time::Instant::now();
            let (done, wake) = match wait {
                AgentWait::Count(n) => (hosts.len() >= *n, deadline),
                AgentWait::Settle(named) => {
                    let all_named = named.iter().all(|n| connected.contains(n.as_str()));
                    let quiet = last_change + SETTLE;
                    (all_named && !hosts.is_empty() && now >= quiet, quiet.min(deadline))
                }
            };
            if done {
                return Ok(hosts);
            }
            if now >= deadline {
                let missing: Vec<&String> = match wait {
                    AgentWait::Settle(named) => named.iter().filter(|n| !connected.contains(n.as_str())).collect(),
                    AgentWait::Count(_) => Vec::new(),
                };
                return match (wait, hosts.len()) {
                    (_, 0) => Err(failed(format!(
                        "no agent connected to ws://{} within {}; start agents with --controller ws://HOST:{} and the same token",
                        self.addr,
                        crate::duration::human(timeout),
                        self.addr.port()
                    ))),
                    (AgentWait::Count(n), k) => Err(failed(format!("only {k} of the {n} agents asked for connected within {}", crate::duration::human(timeout)))),
                    (AgentWait::Settle(_), _) if !missing.is_empty() => Err(failed(format!(
                        "hosts named by the targets did not connect: {}",
                        missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    ))),
                    _ => Ok(hosts),
                };
            }
            tokio::select! {
                r = changes.changed() => {
                    if r.is_err() {
                        return Err(failed("the agent server stopped"));
                    }
                    last_change = tokio::time::Instant::now();
                }
                _ = tokio::time::sleep_until(wake.max(now + Duration::from_millis(10))) => {}
            }
        }
    }

    /// Runs an experiment against the connected agents; ends with a report, or an error when
    /// it could not start.
    pub async fn run(
        &self,
        experiment: Experiment,
        opts: RunOptions,
        stops: mpsc::Receiver<StopRequest>,
    ) -> Result<Report, RunError> {
        let experiment = Arc::new(experiment);
        let id = token::random_id("EXP");
        let journal_path = opts
            .journal
            .clone()
            .or_else(|| experiment.journal_path.clone())
            .unwrap_or_else(|| PathBuf::from(format!(".faultline/journals/{id}.jsonl")));
        let journal = Arc::new(
            Journal::create(&journal_path, &id)
                .map_err(|e| failed(format!("cannot create the journal {}: {e}", journal_path.display())))?,
        );
        let live_cancel = CancellationToken::new();
        let live = opts
            .progress
            .then(|| tokio::spawn(crate::live::plain(journal.subscribe(), live_cancel.clone())));
        let forward = tokio::spawn(forward_fleet_events(
            self.fleet.events(),
            journal.clone(),
            live_cancel.clone(),
        ));
        let started_at = SystemTime::now();
        journal.record(Event::ExperimentState {
            state: State::Pending,
            reason: None,
        });

        let result = self
            .run_journaled(&id, experiment.clone(), &opts, journal.clone(), stops)
            .await;
        let (outcome, seed, targets) = match result {
            Ok(r) => r,
            Err(e) => {
                journal.record(Event::ExperimentState {
                    state: State::Failed,
                    reason: Some(e.message.clone()),
                });
                live_cancel.cancel();
                if let Some(l) = live {
                    let _ = l.await;
                }
                return Err(e);
            }
        };
        live_cancel.cancel();
        let _ = forward.await;
        if let Some(l) = live {
            let _ = l.await;
        }
        let exit_code = match (&outcome.state, &outcome.stop) {
            (State::Completed, _) => exit::COMPLETED,
            (State::Stopped, Some(StopRequest::Interrupted)) => exit::INTERRUPTED,
            (State::Stopped, _) => exit::STOPPED,
            _ => exit::FAILED,
        };
        Ok(Report {
            experiment_id: id,
            description: experiment.description.clone(),
            template: opts.template.clone(),
            tags: experiment.tags.clone(),
            state: outcome.state,
            reason: outcome.reason.clone(),
            exit_code,
            seed,
            started_at,
            ended_at: SystemTime::now(),
            targets,
            outcome,
            journal: journal_path,
        })
    }

    async fn run_journaled(
        &self,
        id: &str,
        experiment: Arc<Experiment>,
        opts: &RunOptions,
        journal: Arc<Journal>,
        stops: mpsc::Receiver<StopRequest>,
    ) -> Result<(RunOutcome, u64, std::collections::BTreeMap<String, Vec<String>>), RunError> {
        let hosts = self.fleet.hosts();
        let seed = opts.seed.unwrap_or_else(rand::random);
        let resolution = plan::resolve(&experiment, &hosts, seed).map_err(|e| failed(e.to_string()))?;
        let targets = resolution
            .targets
            .iter()
            .map(|(n, r)| (n.clone(), r.selected.clone()))
            .collect();
        let run = Run {
            id: id.to_string(),
            experiment,
            resolution,
            hosts,
            fleet: self.fleet.clone(),
            journal,
            settings: opts.settings,
        };
        run.preflight().map_err(failed)?;
        Ok((run.run(stops).await, seed, targets))
    }

    /// Stops serving agents (their connections close; their leases hold nothing).
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// How to run an experiment.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The template file, for the report.
    pub template: PathBuf,
    /// Seed of the target selection; random when `None`.
    pub seed: Option<u64>,
    /// Journal file; from the template, or under `.faultline/journals/`, when `None`.
    pub journal: Option<PathBuf>,
    /// Timeouts.
    pub settings: Settings,
    /// Print a line per notable event on stderr.
    pub progress: bool,
}

impl RunOptions {
    /// Options with defaults for a template file.
    pub fn new(template: &Path) -> Self {
        RunOptions {
            template: template.to_path_buf(),
            seed: None,
            journal: None,
            settings: Settings::default(),
            progress: true,
        }
    }
}

/// Hosts a template names by id, which the run must wait for.
pub fn named_hosts(experiment: &Experiment) -> BTreeSet<String> {
    experiment
        .targets
        .values()
        .filter(|t| t.resource_type == crate::template::ResourceType::Host)
        .filter_map(|t| t.resource_ids.clone())
        .flatten()
        .collect()
}

async fn forward_fleet_events(
    mut rx: tokio::sync::broadcast::Receiver<FleetEvent>,
    journal: Arc<Journal>,
    cancel: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            e = rx.recv() => match e {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            },
        };
        journal.record(match event {
            FleetEvent::Connected(h) => Event::AgentConnected {
                host: h.host_id,
                az: h.placement.availability_zone,
                address: h.address,
            },
            FleetEvent::Disconnected { host } => Event::AgentDisconnected { host },
            FleetEvent::FaultEnded { host, fault_id, reason } => Event::FaultEnded { host, fault_id, reason },
            FleetEvent::Refused { .. } => continue,
        });
    }
}
