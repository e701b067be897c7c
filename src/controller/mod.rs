//! The embedded controller: serves agents, waits for them, and runs an experiment end to
//! end (resolve, preflight, engine, report). `faultline run` and `faultline demo` use it.

mod phases;

use crate::alarms::{self, AlarmReport, SteadyState};
use crate::exit;
use crate::fleet::{Endpoint, Fleet, FleetEvent};
use crate::journal::{Event, Journal, State};
use crate::plan;
use crate::platform::Platforms;
use crate::report::Report;
use crate::run::{Run, RunOutcome, Settings, StopRequest};
use crate::template::{Alarm, Experiment};
use crate::token;
use faultline_agent::protocol::HostDescription;
use phases::Watch;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{broadcast, mpsc};
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
    /// These hosts, and no more: the targets name every host they may select.
    Named(BTreeSet<String>),
}

/// A controller serving agents.
pub struct Controller {
    fleet: Fleet,
    addr: SocketAddr,
    cancel: CancellationToken,
    /// Fleet events since the start, until a run journals them: faults removed from agents
    /// that registered before the run (left by a controller that died) are journaled too.
    early: std::sync::Mutex<Option<broadcast::Receiver<FleetEvent>>>,
    /// What instance actions act through.
    platforms: Platforms,
}

impl Controller {
    /// Binds `listen` and starts serving agents that prove `token`; with a certificate in
    /// `endpoint`, over `wss://` too (and `ws://` on the same port).
    pub async fn start(listen: SocketAddr, token: String, endpoint: Endpoint) -> Result<Controller, RunError> {
        let cancel = CancellationToken::new();
        let secure = endpoint.tls.is_some();
        let (fleet, addr) = Fleet::start(listen, token, token::random_id("ctl-"), endpoint, cancel.clone())
            .await
            .map_err(|e| failed(format!("cannot listen on {listen}: {e}")))?;
        let path = faultline_agent::protocol::AGENT_PATH;
        if secure {
            tracing::info!("controller listening on ws://{addr}{path} and wss://{addr}{path}");
        } else {
            tracing::info!("controller listening on ws://{addr}{path}");
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    "agents connect over plain ws:// to {addr}: the token never travels, but commands are not \
                     encrypted; give --tls-cert and --tls-key for wss://"
                );
            }
        }
        let early = std::sync::Mutex::new(Some(fleet.events()));
        Ok(Controller {
            fleet,
            addr,
            cancel,
            early,
            platforms: Platforms::default(),
        })
    }

    /// Acts on hosts through these platforms (the demo adds its own process world).
    pub fn set_platforms(&mut self, platforms: Platforms) {
        self.platforms = platforms;
    }

    /// A controller whose agents arrive on a port another server owns and hands over
    /// ([`Fleet::upgraded`]); `addr` is that port's address.
    pub fn attached(addr: SocketAddr, token: String, endpoint: Endpoint) -> Controller {
        let cancel = CancellationToken::new();
        let fleet = Fleet::new(token, token::random_id("ctl-"), endpoint, cancel.clone());
        let early = std::sync::Mutex::new(Some(fleet.events()));
        Controller {
            fleet,
            addr,
            cancel,
            early,
            platforms: Platforms::default(),
        }
    }

    /// The address agents dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The connected agents.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// The hosts as targets and `faultline agents` see them: the connected agents, and the
    /// hosts their platform stopped or terminated, with their `State.Name`.
    pub async fn hosts(&self) -> Vec<HostDescription> {
        self.platforms.hosts(self.fleet.hosts()).await
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
                AgentWait::Named(named) => (named.iter().all(|n| connected.contains(n.as_str())), deadline),
            };
            if done {
                return Ok(hosts);
            }
            if now >= deadline {
                let missing: Vec<&String> = match wait {
                    AgentWait::Settle(named) | AgentWait::Named(named) => {
                        named.iter().filter(|n| !connected.contains(n.as_str())).collect()
                    }
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
                    (AgentWait::Settle(_) | AgentWait::Named(_), _) if !missing.is_empty() => Err(failed(format!(
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
    /// it could not start. `interrupts` carries the operator's Ctrl-C.
    pub async fn run(
        &self,
        experiment: Experiment,
        opts: RunOptions,
        interrupts: mpsc::Receiver<StopRequest>,
    ) -> Result<Report, RunError> {
        let mut fleet_events = self
            .early
            .lock()
            .expect("never poisoned")
            .take()
            .unwrap_or_else(|| self.fleet.events());
        // Of what happened before the run, only the removal of orphaned faults is journaled.
        let mut orphans = Vec::new();
        loop {
            match fleet_events.try_recv() {
                Ok(e @ (FleetEvent::OrphanRemoved { .. } | FleetEvent::ForeignHeld { .. })) => {
                    orphans.extend(journal_event(e))
                }
                Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
        let experiment = Arc::new(experiment);
        let id = opts.id.clone().unwrap_or_else(|| token::random_id("EXP"));
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
        let live = opts.progress.then(|| {
            tokio::spawn(crate::live::show(
                journal.subscribe(),
                experiment.clone(),
                live_cancel.clone(),
            ))
        });
        let started_at = SystemTime::now();
        journal.record(Event::ExperimentState {
            state: State::Pending,
            reason: None,
        });
        for e in orphans {
            journal.record(e);
        }
        let forward = tokio::spawn(forward_fleet_events(fleet_events, journal.clone(), live_cancel.clone()));
        let ux_cancel = CancellationToken::new();
        let ux = experiment
            .user_experience
            .clone()
            .map(|ux| tokio::spawn(crate::alarms::experience::watch(ux, journal.clone(), ux_cancel.clone())));

        let result = self
            .run_phases(&id, experiment.clone(), &opts, journal.clone(), interrupts)
            .await;
        if let Err(e) = &result {
            journal.record(Event::ExperimentState {
                state: State::Failed,
                reason: Some(e.message.clone()),
            });
        }
        ux_cancel.cancel();
        let samples = match ux {
            Some(task) => task.await.unwrap_or_default(),
            None => Vec::new(),
        };
        live_cancel.cancel();
        let _ = forward.await;
        if let Some(l) = live {
            let _ = l.await;
        }
        let ran = result?;
        let exit_code = ran.outcome.exit_code();
        let started: Vec<_> = ran
            .outcome
            .actions
            .iter()
            .filter_map(|(name, a)| Some((name.clone(), a.started_at?, a.ended_at)))
            .collect();
        let user_experience =
            crate::report::experience::figures(&samples, &crate::report::experience::windows(&started, &samples));
        Ok(Report {
            experiment_id: id,
            description: experiment.description.clone(),
            template: opts.template.clone(),
            tags: experiment.tags.clone(),
            state: ran.outcome.state,
            reason: ran.outcome.reason.clone(),
            exit_code,
            seed: ran.seed,
            started_at,
            ended_at: SystemTime::now(),
            targets: ran.targets,
            outcome: ran.outcome,
            alarms: ran.alarms,
            steady_state: ran.steady_state,
            user_experience,
            journal: journal_path,
        })
    }

    /// Resolve and preflight, then the baseline, the actions and the recovery.
    async fn run_phases(
        &self,
        id: &str,
        experiment: Arc<Experiment>,
        opts: &RunOptions,
        journal: Arc<Journal>,
        mut interrupts: mpsc::Receiver<StopRequest>,
    ) -> Result<Ran, RunError> {
        let hosts = self.hosts().await;
        let seed = opts.seed.unwrap_or_else(rand::random);
        journal.record(Event::RunStarted {
            description: experiment.description.clone(),
            seed,
            template: experiment.source.clone(),
            alarms: experiment
                .alarms
                .iter()
                .map(|(name, a)| (name.clone(), alarm_rule(a)))
                .collect(),
        });
        let resolution = plan::resolve(&experiment, &hosts, seed).map_err(|e| failed(e.to_string()))?;
        let targets = resolution
            .targets
            .iter()
            .map(|(n, r)| (n.clone(), r.selected.clone()))
            .collect();
        let alarms: Vec<(String, Alarm)> = experiment.alarms.iter().map(|(n, a)| (n.clone(), a.clone())).collect();
        let run = Run {
            id: id.to_string(),
            experiment,
            resolution,
            hosts,
            fleet: self.fleet.clone(),
            journal: journal.clone(),
            settings: opts.settings,
            platforms: self.platforms.clone(),
        };
        let placements = run.preflight().await.map_err(|e| failed(e.to_string()))?;
        let watch_cancel = CancellationToken::new();
        let _stop_watching = watch_cancel.clone().drop_guard();
        let mut watch = Watch::new(&alarms, &journal, &mut interrupts, watch_cancel);
        let (stop_tx, stop_rx) = mpsc::channel(4);
        if alarms.is_empty() {
            let (outcome, _) = watch.experiment(run.run(placements, stop_rx), &stop_tx).await;
            return Ok(Ran {
                outcome,
                seed,
                targets,
                alarms: Vec::new(),
                steady_state: None,
            });
        }

        // Steady state first: a full window of every alarm before anything is injected.
        tracing::info!(
            window = %crate::duration::human(alarms::longest_window(&alarms)),
            "checking steady state before the first action"
        );
        if let Some(stop) = watch.baseline().await {
            let outcome = run.never_started(stop);
            return Ok(Ran {
                outcome,
                seed,
                targets,
                alarms: watch.monitor.report(None),
                steady_state: Some(SteadyState {
                    baseline: "breaching".into(),
                    recovered: None,
                    recovery_ms: None,
                }),
            });
        }
        let (outcome, interrupted) = watch.experiment(run.run(placements, stop_rx), &stop_tx).await;

        // Did the system come back? One more full window, unless the operator wants out or
        // the alarms cannot be watched.
        let mut recovery = None;
        if !interrupted && watch.watching() {
            let started = SystemTime::now();
            tracing::info!("checking that the system recovers");
            recovery = watch.recovery().await.then_some(started);
        }
        let monitor = &watch.monitor;
        let steady_state = Some(SteadyState {
            baseline: "ok".into(),
            recovered: recovery.map(|_| monitor.all_ok()),
            recovery_ms: recovery
                .and_then(|s| monitor.recovery_time(s))
                .map(|d| d.as_secs_f64() * 1000.0),
        });
        Ok(Ran {
            outcome,
            seed,
            targets,
            alarms: monitor.report(recovery),
            steady_state,
        })
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

/// What the phases of a run produced.
struct Ran {
    outcome: RunOutcome,
    seed: u64,
    targets: BTreeMap<String, Vec<String>>,
    alarms: Vec<AlarmReport>,
    steady_state: Option<SteadyState>,
}

/// An alarm's rule, for the journal.
fn alarm_rule(a: &Alarm) -> crate::journal::AlarmRule {
    crate::journal::AlarmRule {
        statistic: a.statistic.as_str().into(),
        comparison: a.comparison.symbol().into(),
        threshold: a.threshold,
        period_ms: a.period.as_millis() as u64,
        evaluation_periods: a.evaluation_periods,
        datapoints_to_alarm: a.datapoints_to_alarm,
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
    /// The experiment's id; a new random one when `None` (a server picks it to store the run).
    pub id: Option<String>,
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
            id: None,
        }
    }
}

/// What a run waits for when not told how many agents: the hosts its targets name; and when
/// a target selects by tags or zone, also no newcomer for [`SETTLE`], since one may match it.
/// Targets that name every host they select need nobody else: a 2 s wait bought nothing.
pub fn agent_wait(experiment: &Experiment) -> AgentWait {
    let named = named_hosts(experiment);
    let only_named = !experiment.targets.is_empty()
        && experiment
            .targets
            .values()
            .all(|t| t.resource_type == crate::template::ResourceType::Host && t.resource_ids.is_some());
    if only_named {
        AgentWait::Named(named)
    } else {
        AgentWait::Settle(named)
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
    mut rx: broadcast::Receiver<FleetEvent>,
    journal: Arc<Journal>,
    cancel: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            e = rx.recv() => match e {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            },
        };
        if let Some(e) = journal_event(event) {
            journal.record(e);
        }
    }
}

/// The journal's record of a fleet event; refusals are only logged.
fn journal_event(event: FleetEvent) -> Option<Event> {
    Some(match event {
        FleetEvent::Connected(h) => Event::AgentConnected {
            host: h.host_id,
            az: h.placement.availability_zone,
            address: h.address,
        },
        FleetEvent::Disconnected { host } => Event::AgentDisconnected { host },
        FleetEvent::FaultEnded {
            host,
            fault_id,
            reason,
            observed,
        } => Event::FaultEnded {
            host,
            fault_id,
            reason,
            observed,
        },
        FleetEvent::OrphanRemoved {
            host,
            fault_id,
            owner,
            error,
        } => Event::OrphanRemoval {
            host,
            fault_id,
            owner,
            confirmed: error.is_none(),
            error,
        },
        FleetEvent::ForeignHeld { host, fault_id, owner } => Event::ForeignFault { host, fault_id, owner },
        FleetEvent::RemovalFailed {
            host,
            fault_id,
            message,
        } => Event::AgentRemovalFailed {
            host,
            fault_id,
            error: message,
        },
        FleetEvent::Refused { .. } => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment(targets: serde_json::Value) -> Experiment {
        let template = serde_json::json!({
            "description": "wait",
            "targets": targets,
            "actions": { "Kill": { "actionId": "faultline:process:kill", "parameters": { "processName": "x" }, "targets": { "Hosts": "T" } } },
            "stopConditions": [{ "source": "none" }]
        });
        crate::template::validate(&template, None).expect("a valid template")
    }

    #[test]
    fn a_run_waits_for_newcomers_only_when_a_target_may_select_one() {
        let named = experiment(serde_json::json!({
            "T": { "resourceType": "faultline:host", "resourceIds": ["a", "b"], "selectionMode": "ALL" }
        }));
        let hosts: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        assert_eq!(agent_wait(&named), AgentWait::Named(hosts));
        let tagged = experiment(serde_json::json!({
            "T": { "resourceType": "faultline:host", "resourceTags": { "tier": "web" }, "selectionMode": "ALL" }
        }));
        assert_eq!(agent_wait(&tagged), AgentWait::Settle(BTreeSet::new()));
    }
}
