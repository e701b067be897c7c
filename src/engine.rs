//! The run: actions in startAfter order, each fault dispatched to its hosts and acknowledged,
//! held for its duration and removed; a stop request or a failed action stops everything,
//! and stopping removes every fault before the run ends.

use crate::effect::HostEffect;
use crate::journal::{Event, Journal, State};
use crate::plan::Resolution;
use crate::platform::{Operation, PlatformError, Platforms};
use crate::server::{DispatchError, Fleet};
use crate::template::{Action, Effect, Experiment, ResourceType};
use faultline_agent::protocol::{ControllerMessage, EndReason, FaultKind, FaultSpec, HostDescription, Outcome};
use futures_util::future::join_all;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Timeouts of a run.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long an agent has to acknowledge a command.
    pub ack_timeout: Duration,
    /// How long to wait for a removal to be confirmed by an agent that is unreachable
    /// (cut off by a blackout, restarting) before relying on its lease.
    pub removal_grace: Duration,
    /// Whether a fault whose observed effect is far from what was asked fails its action
    /// (`run --strict`); otherwise it is a warning.
    pub strict: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ack_timeout: Duration::from_secs(10),
            removal_grace: Duration::from_secs(15),
            strict: false,
        }
    }
}

/// Why a run is asked to stop before its end.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StopRequest {
    /// A stop condition's alarm went into ALARM.
    Alarm {
        /// The alarm.
        alarm: String,
        /// What it saw.
        detail: String,
    },
    /// The operator pressed Ctrl-C (SIGINT).
    Interrupted,
    /// The controller was asked to terminate (SIGTERM: CI cancellation, `timeout`, systemd).
    Terminated,
    /// Someone asked a server to stop the run (the API, the safety lever, the server's own
    /// shutdown): the reason says who and why. The run ends `stopped`, as for a stop condition.
    Requested {
        /// Who asked, and why.
        why: String,
    },
    /// An alarm could no longer be watched; the run stops rather than go on unwatched.
    Unwatched {
        /// The alarm, or `None` when every watcher is gone.
        alarm: Option<String>,
        /// What happened to its watcher.
        why: String,
    },
}

impl std::fmt::Display for StopRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopRequest::Alarm { alarm, detail } => {
                write!(f, "stop condition {alarm} went into ALARM ({detail})")
            }
            StopRequest::Interrupted => write!(f, "interrupted by the operator"),
            StopRequest::Terminated => write!(f, "terminated (SIGTERM)"),
            StopRequest::Requested { why } => write!(f, "{why}"),
            StopRequest::Unwatched { alarm, why } => {
                match alarm {
                    Some(a) => write!(f, "alarm {a} can no longer be watched")?,
                    None => write!(f, "the alarms can no longer be watched")?,
                }
                write!(f, " ({why}); stopping rather than running unwatched")
            }
        }
    }
}

/// What became of one action.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionRecord {
    /// Its actionId.
    pub action_id: String,
    /// Final state.
    pub state: State,
    /// Resources it acted on (hosts, or AZs for a blackout).
    pub resources: Vec<String>,
    /// Hosts that received a fault.
    pub hosts: Vec<String>,
    /// When it started.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ts_opt")]
    pub started_at: Option<SystemTime>,
    /// When it ended.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ts_opt")]
    pub ended_at: Option<SystemTime>,
    /// Why it failed or stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What else is worth knowing (e.g. a fault an agent ended early).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// What each host's fault did, asked versus observed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub observed: Vec<HostEffect>,
}

impl ActionRecord {
    /// An action that has not started: no resources, hosts, times, error or notes yet.
    fn unstarted(action_id: &str, state: State) -> Self {
        ActionRecord {
            action_id: action_id.into(),
            state,
            resources: Vec::new(),
            hosts: Vec::new(),
            started_at: None,
            ended_at: None,
            error: None,
            notes: Vec::new(),
            observed: Vec::new(),
        }
    }
}

/// RFC 3339 with milliseconds, as the journal writes times.
pub fn ts(t: &SystemTime) -> String {
    humantime::format_rfc3339_millis(*t).to_string()
}

fn ts_opt<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&ts(t)),
        None => s.serialize_none(),
    }
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunOutcome {
    /// Final experiment state: completed, stopped or failed.
    pub state: State,
    /// Why it did not complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The stop request that stopped it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopRequest>,
    /// Every action, by name.
    pub actions: BTreeMap<String, ActionRecord>,
    /// From the stop request (or the failure) to the last confirmed removal.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ms_opt")]
    pub rollback: Option<Duration>,
    /// Faults no agent confirmed removed (their leases remove them).
    pub unconfirmed_removals: usize,
}

fn ms_opt<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64() * 1000.0),
        None => s.serialize_none(),
    }
}

/// Everything a run needs.
pub struct Run {
    /// The experiment id, e.g. `EXP1a2b3c4d5e6f`; fault ids start with it.
    pub id: String,
    /// The experiment.
    pub experiment: Arc<Experiment>,
    /// Its targets, resolved at the start.
    pub resolution: Resolution,
    /// The hosts known when it was resolved.
    pub hosts: Vec<HostDescription>,
    /// The agents.
    pub fleet: Fleet,
    /// The journal.
    pub journal: Arc<Journal>,
    /// Timeouts.
    pub settings: Settings,
    /// The platforms instance actions act through.
    pub platforms: Platforms,
}

/// The faults one action puts on one host.
#[derive(Debug, Clone)]
struct Placement {
    host: String,
    fault: FaultKind,
}

/// Where each action acts, worked out once by [`Run::preflight`]: its resources (hosts, or
/// AZs for a blackout) and the fault each host receives.
#[derive(Debug)]
pub struct Placements(BTreeMap<String, (Vec<String>, Vec<Placement>)>);

/// What an action runner reports back.
struct Finished {
    name: String,
    state: State,
    error: Option<String>,
    notes: Vec<String>,
    hosts: Vec<String>,
    last_removal: Option<Instant>,
    unconfirmed: usize,
    observed: Vec<HostEffect>,
}

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
    fn placements(&self, action: &Action) -> Result<(Vec<String>, Vec<Placement>), PlacementError> {
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
    async fn instance_hosts(&self, ids: &[String]) -> Result<Vec<HostDescription>, PlacementError> {
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

    /// Ends a run that never started because `stop` came first (an alarm already firing,
    /// Ctrl-C during the baseline): every action is cancelled, nothing was injected.
    pub fn never_started(self, stop: StopRequest) -> RunOutcome {
        let reason = format!("{stop}; no action was started");
        let actions = self
            .experiment
            .actions
            .iter()
            .map(|(name, a)| {
                self.journal.record(Event::ActionState {
                    action: name.clone(),
                    state: State::Cancelled,
                    reason: Some("the experiment did not start".into()),
                    duration_ms: None,
                });
                (
                    name.clone(),
                    ActionRecord::unstarted(a.spec.action_id(), State::Cancelled),
                )
            })
            .collect();
        self.journal.record(Event::ExperimentState {
            state: State::Stopped,
            reason: Some(reason.clone()),
        });
        RunOutcome {
            state: State::Stopped,
            reason: Some(reason),
            stop: Some(stop),
            actions,
            rollback: None,
            unconfirmed_removals: 0,
        }
    }

    /// Runs the experiment until it completes, fails or is stopped through `stops`.
    pub async fn run(self, placements: Placements, mut stops: mpsc::Receiver<StopRequest>) -> RunOutcome {
        let run = Arc::new(self);
        let mut placements = placements.0;
        let journal = run.journal.clone();
        journal.record(Event::ExperimentState {
            state: State::Initiating,
            reason: None,
        });
        for (name, r) in &run.resolution.targets {
            journal.record(Event::TargetResolved {
                target: name.clone(),
                selected: r.selected.clone(),
                matched: r.matched,
            });
        }
        let mut records: BTreeMap<String, ActionRecord> = BTreeMap::new();
        for (name, a) in &run.experiment.actions {
            let skipped = a.target.as_ref().is_some_and(|t| run.resolution.empty.contains(t));
            let (resources, placed) = placements.get(name).cloned().unwrap_or_default();
            records.insert(
                name.clone(),
                ActionRecord {
                    resources,
                    hosts: placed.into_iter().map(|p| p.host).collect(),
                    ..ActionRecord::unstarted(
                        a.spec.action_id(),
                        if skipped { State::Skipped } else { State::Pending },
                    )
                },
            );
            if skipped {
                journal.record(Event::ActionState {
                    action: name.clone(),
                    state: State::Skipped,
                    reason: Some("its target resolved to nothing".into()),
                    duration_ms: None,
                });
            }
        }
        journal.record(Event::ExperimentState {
            state: State::Running,
            reason: None,
        });

        let cancel = CancellationToken::new();
        let mut tasks: JoinSet<Finished> = JoinSet::new();
        let mut stop: Option<StopRequest> = None;
        let mut failure: Option<String> = None;
        let mut stopping_since: Option<Instant> = None;
        let mut last_removal: Option<Instant> = None;
        let mut unconfirmed = 0;
        let mut dispatched: BTreeSet<String> = BTreeSet::new();
        let mut stops_open = true;
        // Which action each runner task runs, to account for one that panics.
        let mut runners: BTreeMap<tokio::task::Id, String> = BTreeMap::new();
        start_ready(&run, &mut placements, &mut records, &mut tasks, &mut runners, &cancel);
        loop {
            tokio::select! {
                joined = tasks.join_next_with_id() => {
                    let f = match joined {
                        None => break,
                        Some(Ok((_, f))) => f,
                        Some(Err(e)) => {
                            let name = runners.get(&e.id()).cloned().unwrap_or_default();
                            lost_runner(&run, name, &records, e)
                        }
                    };
                    dispatched.extend(f.hosts.iter().cloned());
                    let rec = records.get_mut(&f.name).expect("runner of a known action");
                    rec.state = f.state;
                    rec.error = f.error.clone();
                    rec.notes = f.notes;
                    rec.observed = f.observed;
                    rec.hosts = f.hosts;
                    rec.ended_at = Some(SystemTime::now());
                    unconfirmed += f.unconfirmed;
                    last_removal = last_removal.max(f.last_removal);
                    if f.state == State::Failed && failure.is_none() && stop.is_none() {
                        let reason = format!("action {} failed: {}", f.name, f.error.unwrap_or_default());
                        journal.record(Event::ExperimentState { state: State::Stopping, reason: Some(reason.clone()) });
                        failure = Some(reason);
                        stopping_since = Some(Instant::now());
                        cancel.cancel();
                    }
                    if failure.is_none() && stop.is_none() {
                        start_ready(&run, &mut placements, &mut records, &mut tasks, &mut runners, &cancel);
                    }
                }
                req = stops.recv(), if stops_open && stop.is_none() && failure.is_none() => {
                    // Nobody can ask for a stop any more; the actions run to their end.
                    let Some(req) = req else {
                        stops_open = false;
                        continue;
                    };
                    journal.record(Event::ExperimentState { state: State::Stopping, reason: Some(req.to_string()) });
                    stopping_since = Some(Instant::now());
                    stop = Some(req);
                    cancel.cancel();
                }
            }
        }
        for (name, rec) in records.iter_mut().filter(|(_, r)| r.state == State::Pending) {
            rec.state = State::Cancelled;
            journal.record(Event::ActionState {
                action: name.clone(),
                state: State::Cancelled,
                reason: Some("the experiment stopped before it started".into()),
                duration_ms: None,
            });
        }
        sweep(&run, &dispatched).await;
        let (state, reason) = match (&failure, &stop) {
            (Some(f), _) => (State::Failed, Some(f.clone())),
            (None, Some(s)) => (State::Stopped, Some(s.to_string())),
            (None, None) => (State::Completed, None),
        };
        journal.record(Event::ExperimentState {
            state,
            reason: reason.clone(),
        });
        RunOutcome {
            state,
            reason,
            stop,
            actions: records,
            rollback: stopping_since.map(|s| last_removal.map_or(Duration::ZERO, |l| l.saturating_duration_since(s))),
            unconfirmed_removals: unconfirmed,
        }
    }
}

/// Starts every pending action whose startAfter actions are all done.
fn start_ready(
    run: &Arc<Run>,
    placements: &mut BTreeMap<String, (Vec<String>, Vec<Placement>)>,
    records: &mut BTreeMap<String, ActionRecord>,
    tasks: &mut JoinSet<Finished>,
    runners: &mut BTreeMap<tokio::task::Id, String>,
    cancel: &CancellationToken,
) {
    let done = |r: &ActionRecord| matches!(r.state, State::Completed | State::Skipped);
    let ready: Vec<String> = run
        .experiment
        .actions
        .iter()
        .filter(|(name, a)| records[*name].state == State::Pending && a.start_after.iter().all(|d| done(&records[d])))
        .map(|(name, _)| name.clone())
        .collect();
    for name in ready {
        let rec = records.get_mut(&name).expect("known action");
        rec.state = State::Initiating;
        rec.started_at = Some(SystemTime::now());
        let (_, placed) = placements.remove(&name).unwrap_or_default();
        let runner = tasks.spawn(run_action(run.clone(), name.clone(), placed, cancel.child_token()));
        runners.insert(runner.id(), name);
    }
}

/// Accounts for an action whose runner panicked: the action failed (which stops the run),
/// and no running action owns its faults any more, so the run's end removes them.
fn lost_runner(
    run: &Run,
    name: String,
    records: &BTreeMap<String, ActionRecord>,
    error: tokio::task::JoinError,
) -> Finished {
    let hosts = records.get(&name).map(|r| r.hosts.clone()).unwrap_or_default();
    for host in &hosts {
        run.fleet.release(&fault_id(&run.id, &name, host));
    }
    let error = format!("its runner ended unexpectedly ({error}); the end of the run removes its faults");
    tracing::error!(action = %name, %error, "an action's runner panicked");
    run.journal.record(Event::ActionState {
        action: name.clone(),
        state: State::Failed,
        reason: Some(error.clone()),
        duration_ms: None,
    });
    Finished {
        name,
        state: State::Failed,
        error: Some(error),
        notes: Vec::new(),
        hosts,
        last_removal: None,
        unconfirmed: 0,
        observed: Vec::new(),
    }
}

/// Asks every host the run dispatched to for the removal of whatever of the run it still
/// holds: the backstop for a fault whose apply or removal was lost. Waits at most the ack
/// timeout, all hosts at once.
async fn sweep(run: &Run, hosts: &BTreeSet<String>) {
    let sweeps = hosts.iter().map(|host| async move {
        let remove = ControllerMessage::RemoveAll {
            experiment: Some(run.id.clone()),
        };
        let (removed, error) = match run.fleet.command(host, remove, run.settings.ack_timeout).await {
            Ok(Outcome::Removed { count, .. }) => (Some(count), None),
            Ok(other) => (None, Some(format!("unexpected answer {other:?}"))),
            Err(e) => (None, Some(e.to_string())),
        };
        match (removed, &error) {
            (Some(n), _) if n > 0 => {
                tracing::warn!(%host, count = n, "the end of the run removed faults its actions had lost track of")
            }
            (_, Some(e)) => tracing::warn!(%host, error = %e, "could not ask for the removal of the run's faults"),
            _ => {}
        }
        (
            (),
            vec![Event::RemoveAll {
                host: host.clone(),
                removed,
                error,
            }],
        )
    });
    journaled(&run.journal, sweeps).await;
}

/// Answers that came in together are journaled in one write; a larger batch waits for the next.
const JOURNAL_BATCH: usize = 256;

/// Runs `futures` at once and journals the events each returns as it finishes, those that
/// finished together in one write (a write per host cost a system call per host, twice per
/// fan-out); returns their results in the order of `futures`.
async fn journaled<T, F>(journal: &Journal, futures: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: Future<Output = (T, Vec<Event>)>,
{
    let running: FuturesUnordered<_> = futures
        .into_iter()
        .enumerate()
        .map(|(i, f)| async move { (i, f.await) })
        .collect();
    let mut results: Vec<Option<T>> = std::iter::repeat_with(|| None).take(running.len()).collect();
    let mut finished = running.ready_chunks(JOURNAL_BATCH);
    while let Some(batch) = finished.next().await {
        let mut events = Vec::with_capacity(batch.len());
        for (i, (result, e)) in batch {
            results[i] = Some(result);
            events.extend(e);
        }
        journal.record_all(events);
    }
    results.into_iter().map(|r| r.expect("every future finished")).collect()
}

/// The id of the fault an action puts on a host; the agent removes a run's faults by its
/// `run id/` prefix.
fn fault_id(run: &str, action: &str, host: &str) -> String {
    format!("{run}/{action}/{host}")
}

/// Runs one action to its end, removing what it put in place before returning; from then
/// on, no running action owns its faults.
async fn run_action(run: Arc<Run>, name: String, placements: Vec<Placement>, cancel: CancellationToken) -> Finished {
    let finished = act(&run, &name, &placements, cancel).await;
    for p in &placements {
        run.fleet.release(&fault_id(&run.id, &name, &p.host));
    }
    finished
}

/// The action itself: dispatch to every host, hold for the duration (or until `cancel`),
/// remove.
async fn act(run: &Arc<Run>, name: &str, placements: &[Placement], cancel: CancellationToken) -> Finished {
    let journal = &run.journal;
    let action = &run.experiment.actions[name];
    let state = |state: State, reason: Option<String>, duration_ms: Option<u64>| {
        journal.record(Event::ActionState {
            action: name.to_string(),
            state,
            reason,
            duration_ms,
        })
    };
    state(State::Initiating, None, None);
    let mut finished = Finished {
        name: name.to_string(),
        state: State::Completed,
        error: None,
        notes: Vec::new(),
        hosts: Vec::new(),
        last_removal: None,
        unconfirmed: 0,
        observed: Vec::new(),
    };
    let duration = action.spec.duration();
    // The fault may end before the action does (an SSM document's DurationSeconds).
    let fault_duration = action.spec.fault_duration();
    if let Effect::Instances {
        operation,
        complete_if_terminated,
    } = action.spec.effect
    {
        return act_instances(run, name, operation, complete_if_terminated, cancel, finished).await;
    }
    finished.hosts = placements.iter().map(|p| p.host.clone()).collect();

    // Dispatch to every host at once: every dispatch is journaled, in one write, before the
    // first apply goes out; each answer is journaled as it comes.
    let duration_ms = (!fault_duration.is_zero()).then_some(fault_duration.as_millis() as u64);
    let planned: Vec<(String, FaultSpec)> = placements
        .iter()
        .map(|p| {
            let spec = FaultSpec {
                fault_id: fault_id(&run.id, name, &p.host),
                duration_ms,
                kind: p.fault.clone(),
            };
            (p.host.clone(), spec)
        })
        .collect();
    for (host, spec) in &planned {
        run.fleet.claim(host, &spec.fault_id);
    }
    journal.record_all(planned.iter().map(|(host, spec)| Event::Dispatch {
        action: name.to_string(),
        host: host.clone(),
        fault_id: spec.fault_id.clone(),
        fault: spec.kind.clone(),
    }));
    let run_ref: &Run = run;
    let dispatches = planned.into_iter().map(|(host, spec)| async move {
        let fault_id = spec.fault_id.clone();
        let sent = Instant::now();
        let result = run_ref
            .fleet
            .command(
                &host,
                ControllerMessage::Apply { fault: spec },
                run_ref.settings.ack_timeout,
            )
            .await;
        let event = match &result {
            Ok(outcome) => Event::Ack {
                action: name.to_string(),
                host: host.clone(),
                fault_id: fault_id.clone(),
                outcome: outcome.clone(),
                latency_ms: sent.elapsed().as_secs_f64() * 1000.0,
            },
            Err(e) => Event::DispatchFailed {
                action: name.to_string(),
                host: host.clone(),
                error: e.to_string(),
            },
        };
        ((host, fault_id, result), vec![event])
    });
    let results = journaled(journal, dispatches).await;
    let mut applied: Vec<(String, String)> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for (host, fault_id, result) in results {
        match result {
            Ok(Outcome::Applied { .. }) => applied.push((host, fault_id)),
            Ok(Outcome::Failed { message }) => errors.push(format!("{host}: {message}")),
            Ok(other) => errors.push(format!("{host}: unexpected answer {other:?}")),
            Err(e) => {
                // A fault that may have landed without an answer must still be taken away:
                // the apply was sent, and the answer did not come back.
                if matches!(e, DispatchError::Timeout { .. } | DispatchError::Disconnected(_)) {
                    applied.push((host, fault_id));
                }
                errors.push(e.to_string());
            }
        }
    }
    let instant = action.spec.is_instant();
    if !errors.is_empty() {
        if !instant {
            remove_all(run, name, &applied, &mut finished).await;
        }
        let error = errors.join("; ");
        state(State::Failed, Some(error.clone()), None);
        finished.state = State::Failed;
        finished.error = Some(error);
        return finished;
    }
    if instant && duration.is_zero() {
        state(State::Completed, None, None);
        return finished;
    }

    state(State::Running, None, Some(duration.as_millis() as u64));
    let mut stopped = tokio::select! {
        _ = tokio::time::sleep(fault_duration) => false,
        _ = cancel.cancelled() => true,
    };
    if stopped {
        state(State::Stopping, None, None);
    }
    if !instant {
        remove_all(run, name, &applied, &mut finished).await;
    }
    if !stopped && duration > fault_duration {
        // As in FIS, the action waits out its span after the fault (still stoppable).
        stopped = tokio::select! {
            _ = tokio::time::sleep(duration - fault_duration) => false,
            _ = cancel.cancelled() => true,
        };
        if stopped {
            state(State::Stopping, None, None);
        }
    }
    let far: Vec<String> = finished
        .observed
        .iter()
        .flat_map(|e| e.warnings.iter().map(move |w| format!("{}: {w}", e.host)))
        .collect();
    let strict_failure = run.settings.strict && !far.is_empty();
    finished.state = match (stopped, finished.unconfirmed, strict_failure) {
        (true, _, _) => State::Stopped,
        (false, 0, false) => State::Completed,
        (false, _, _) => State::Failed,
    };
    if finished.unconfirmed > 0 && !stopped {
        finished.error = Some(format!(
            "{} fault(s) not confirmed removed; the agents' leases remove them",
            finished.unconfirmed
        ));
    } else if strict_failure && !stopped {
        finished.error = Some(format!(
            "--strict: the fault did not do what was asked: {}",
            far.join("; ")
        ));
    }

    state(
        finished.state,
        finished
            .error
            .clone()
            .or_else(|| stopped.then(|| "the experiment is stopping".into())),
        None,
    );
    finished
}

/// An instance action: the platform acts on every host at once; a stop with a duration is
/// held, then (or at once when the experiment stops) the hosts are started again.
async fn act_instances(
    run: &Arc<Run>,
    name: &str,
    operation: Operation,
    complete_if_terminated: bool,
    cancel: CancellationToken,
    mut finished: Finished,
) -> Finished {
    let action = &run.experiment.actions[name];
    let state = |state: State, reason: Option<String>, duration_ms: Option<u64>| {
        run.journal.record(Event::ActionState {
            action: name.to_string(),
            state,
            reason,
            duration_ms,
        })
    };
    let ids = action
        .target
        .as_ref()
        .and_then(|t| run.resolution.targets.get(t))
        .map(|r| r.selected.clone())
        .unwrap_or_default();
    let hosts = match run.instance_hosts(&ids).await {
        Ok(h) => h,
        Err(e) => {
            state(State::Failed, Some(e.to_string()), None);
            finished.state = State::Failed;
            finished.error = Some(e.to_string());
            return finished;
        }
    };
    let duration = action.spec.duration();
    let restart = operation == Operation::Stop && !duration.is_zero();
    // The end of the stop, for a platform to start the hosts then should this controller die.
    let until = restart.then(|| std::time::SystemTime::now() + duration);
    let results = join_all(hosts.iter().map(|h| instance(run, name, h, operation, until))).await;
    let mut done = Vec::new();
    let mut errors = Vec::new();
    for (host, result) in hosts.iter().zip(results) {
        match result {
            Ok(replacement) => {
                if let Some(r) = replacement {
                    finished.notes.push(format!(
                        "{}: terminated; replaced by {} in {}",
                        host.host_id, r.host_id, r.availability_zone
                    ));
                }
                done.push(host);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let mut stopped = false;
    if errors.is_empty() && restart {
        state(State::Running, None, Some(duration.as_millis() as u64));
        stopped = tokio::select! {
            _ = tokio::time::sleep(duration) => false,
            _ = cancel.cancelled() => true,
        };
        if stopped {
            state(State::Stopping, None, None);
        }
    }
    if restart {
        // The hosts this action stopped are started again on every path: its end, a stop of
        // the experiment, a failure to stop another host.
        let starts = join_all(done.iter().map(|h| instance(run, name, h, Operation::Start, None))).await;
        for (host, result) in done.iter().zip(starts) {
            match result {
                Ok(_) => finished.last_removal = Some(Instant::now()),
                Err(PlatformError::Terminated(_)) if complete_if_terminated => finished
                    .notes
                    .push(format!("{}: terminated while stopped; not started", host.host_id)),
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    finished.state = match (errors.is_empty(), stopped) {
        (false, _) => State::Failed,
        (true, true) => State::Stopped,
        (true, false) => State::Completed,
    };
    if !errors.is_empty() {
        finished.error = Some(errors.join("; "));
    }
    state(
        finished.state,
        finished
            .error
            .clone()
            .or_else(|| stopped.then(|| "the experiment is stopping".into())),
        None,
    );
    finished
}

/// Has the platform do `operation` to one host, journaled; a stop with `until` is one the
/// action undoes then.
async fn instance(
    run: &Run,
    action: &str,
    host: &HostDescription,
    operation: Operation,
    until: Option<std::time::SystemTime>,
) -> Result<Option<crate::platform::Replacement>, PlatformError> {
    let result = match (operation, until) {
        (Operation::Stop, Some(until)) => run.platforms.stop_until(host, until).await.map(|()| None),
        _ => run.platforms.act(host, operation).await,
    };
    match &result {
        Ok(r) => {
            tracing::info!(host = %host.host_id, ?operation, replacement = ?r.as_ref().map(|r| &r.host_id), "instance action done")
        }
        Err(e) => tracing::warn!(host = %host.host_id, ?operation, error = %e, "instance action failed"),
    }
    run.journal.record(Event::Instance {
        action: action.into(),
        host: host.host_id.clone(),
        operation,
        ok: result.is_ok(),
        replacement: result.as_ref().ok().and_then(|r| r.as_ref().map(|r| r.host_id.clone())),
        error: result.as_ref().err().map(ToString::to_string),
    });
    result
}

/// Removes an action's faults from every host at once, recording what was confirmed.
async fn remove_all(run: &Arc<Run>, action: &str, applied: &[(String, String)], finished: &mut Finished) {
    let removals = applied.iter().map(|(host, fault_id)| async move {
        // remove_one returns as soon as it has pushed an event, so `journaled` writes a
        // host's lines as its answer comes in, not when the slowest host's grace ends.
        let events = Mutex::new(Vec::new());
        let result = remove_one(run, action, host, fault_id, &events).await;
        (result, events.into_inner().expect("never poisoned"))
    });
    for result in journaled(&run.journal, removals).await {
        match result {
            Ok((at, note, effect)) => {
                finished.last_removal = finished.last_removal.max(Some(at));
                finished.notes.extend(note);
                finished.observed.extend(effect);
            }
            Err(e) => {
                finished.unconfirmed += 1;
                finished.notes.push(e.to_string());
            }
        }
    }
}

/// Why the removal of a fault was not confirmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemovalError {
    /// The agent tried and failed; the fault stays recorded there for its lease or restart.
    #[error("{host}: could not remove {fault_id}: {message}")]
    Failed {
        /// The host.
        host: String,
        /// The fault.
        fault_id: String,
        /// The agent's reason.
        message: String,
    },
    /// The agent refused the command.
    #[error("{host}: refused the removal of {fault_id}: {message}")]
    Refused {
        /// The host.
        host: String,
        /// The fault.
        fault_id: String,
        /// The agent's reason.
        message: String,
    },
    /// The agent answered with something other than a removal.
    #[error("{host}: unexpected answer to a removal: {answer}")]
    Unexpected {
        /// The host.
        host: String,
        /// The answer, debug-printed.
        answer: String,
    },
    /// No confirmation within the grace period; the agent's lease is the backstop.
    #[error(
        "{host} did not confirm the removal of {fault_id} within {}; its lease removes the fault",
        faultline_agent::duration::human(*.grace)
    )]
    Unconfirmed {
        /// The host.
        host: String,
        /// The fault.
        fault_id: String,
        /// How long the controller waited.
        grace: Duration,
    },
}

/// Removes one fault, waiting out a disconnected agent for the grace period; returns when
/// the removal was confirmed, a note when the agent had ended it early, and what the fault
/// did (with each figure far from what was asked). What it found is put in `events`, for
/// the journal, as it returns.
async fn remove_one(
    run: &Run,
    action: &str,
    host: &str,
    fault_id: &str,
    events: &Mutex<Vec<Event>>,
) -> Result<(Instant, Option<String>, Option<HostEffect>), RemovalError> {
    let started = Instant::now();
    let deadline = started + run.settings.removal_grace;
    let mut changes = run.fleet.changes();
    let record = |by: String, confirmed: bool, error: Option<String>| {
        events.lock().expect("never poisoned").push(Event::Removal {
            action: action.into(),
            host: host.into(),
            fault_id: fault_id.into(),
            by,
            confirmed,
            latency_ms: confirmed.then(|| started.elapsed().as_secs_f64() * 1000.0),
            error,
        })
    };
    let judge = |observed: Option<faultline_agent::protocol::Observed>| {
        observed.map(|observed| {
            let effect = HostEffect::judge(host, &observed);
            events.lock().expect("never poisoned").push(Event::Observed {
                host: host.into(),
                fault_id: fault_id.into(),
                observed,
                far: effect.warnings.clone(),
            });
            effect
        })
    };
    loop {
        changes.borrow_and_update();
        if let Some((reason, observed)) = run.fleet.ended(host, fault_id) {
            record(end_reason(reason).into(), true, None);
            let note = matches!(reason, EndReason::AgentRestarted | EndReason::LeaseExpired)
                .then(|| format!("{host}: the fault ended early ({})", end_reason(reason)));
            return Ok((Instant::now(), note, judge(observed)));
        }
        if run.fleet.is_connected(host) {
            let wait = run
                .settings
                .ack_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            match run
                .fleet
                .command(
                    host,
                    ControllerMessage::Remove {
                        fault_id: fault_id.into(),
                    },
                    wait,
                )
                .await
            {
                Ok(Outcome::Removed { observed, .. }) => {
                    record("controller".into(), true, None);
                    // A fault that ended at its duration as the removal went out was
                    // measured in the agent's end notice, which came first.
                    let observed = observed.or_else(|| run.fleet.ended(host, fault_id).and_then(|(_, o)| o));
                    let effect = judge(observed);
                    run.fleet.release(fault_id);
                    return Ok((Instant::now(), None, effect));
                }
                Ok(Outcome::Failed { message }) => {
                    record("controller".into(), false, Some(message.clone()));
                    return Err(RemovalError::Failed {
                        host: host.into(),
                        fault_id: fault_id.into(),
                        message,
                    });
                }
                Ok(other) => {
                    return Err(RemovalError::Unexpected {
                        host: host.into(),
                        answer: format!("{other:?}"),
                    })
                }
                Err(DispatchError::Refused { message, .. }) => {
                    record("controller".into(), false, Some(message.clone()));
                    return Err(RemovalError::Refused {
                        host: host.into(),
                        fault_id: fault_id.into(),
                        message,
                    });
                }
                Err(_) => {}
            }
        }
        if Instant::now() >= deadline {
            let error = RemovalError::Unconfirmed {
                host: host.into(),
                fault_id: fault_id.into(),
                grace: run.settings.removal_grace,
            };
            record("controller".into(), false, Some(error.to_string()));
            return Err(error);
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

fn end_reason(r: EndReason) -> &'static str {
    match r {
        EndReason::DurationElapsed => "agent: duration elapsed",
        EndReason::LeaseExpired => "agent: lease expired",
        EndReason::Shutdown => "agent: shutdown",
        EndReason::AgentRestarted => "agent: restarted",
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

    /// A removal that waits out its grace must not hold back the lines of those answered
    /// before it: the quick answer's line is in the file while the slow one still waits.
    #[tokio::test]
    async fn each_answer_is_journaled_as_it_comes_not_with_the_last() {
        let dir = std::env::temp_dir().join(format!("faultline-journaled-{}", std::process::id()));
        let path = dir.join("run.jsonl");
        let journal = Journal::create(&path, "EXP1").unwrap();
        let (open, gate) = tokio::sync::oneshot::channel::<()>();
        let hosts = [("quick", None), ("slow", Some(gate))];
        let answers = hosts.into_iter().map(|(host, gate)| async move {
            if let Some(gate) = gate {
                gate.await.expect("the watcher opens the gate");
            }
            (host, vec![Event::AgentDisconnected { host: host.into() }])
        });
        let lines = || -> Vec<Event> {
            std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<crate::journal::Entry>(l).unwrap().event)
                .collect()
        };
        let watcher = async {
            tokio::time::timeout(Duration::from_secs(5), async {
                while lines().is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("the quick answer is journaled while the slow one waits");
            assert_eq!(lines(), vec![Event::AgentDisconnected { host: "quick".into() }]);
            open.send(()).unwrap();
        };
        let (results, ()) = tokio::join!(journaled(&journal, answers), watcher);
        assert_eq!(results, vec!["quick", "slow"], "results keep the order of the futures");
        assert_eq!(
            lines(),
            ["quick", "slow"].map(|h| Event::AgentDisconnected { host: h.into() })
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
