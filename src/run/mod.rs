//! One run of an experiment against the fleet: its actions start in `startAfter` order, each
//! runs to its end in a task of its own, and a stop (an alarm, a failed action, a signal)
//! removes every fault before the run ends. Where each action acts is worked out before
//! anything starts ([`placement`]); host faults are dispatched and held ([`host_faults`])
//! and removed ([`removal`]); instance actions go through the platforms ([`instances`]).

mod fanout;
mod host_faults;
mod instances;
mod outcome;
mod placement;
mod removal;

pub use outcome::{exit_code, ActionRecord, RunOutcome, StopRequest};
pub use placement::{PlacementError, Placements, PreflightError};
pub use removal::RemovalError;

use crate::effect::HostEffect;
use crate::fleet::Fleet;
use crate::journal::{Event, Journal, State};
use crate::plan::Resolution;
use crate::platform::Platforms;
use crate::template::{Effect, Experiment};
use faultline_agent::protocol::HostDescription;
use host_faults::act;
use instances::act_instances;
use placement::Placement;
use removal::sweep;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
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

/// Everything a run needs.
pub struct Run {
    /// The experiment id, e.g. `EXP1a2b3c4d5e6f`; fault ids start with it.
    pub id: String,
    pub experiment: Arc<Experiment>,
    /// Its targets, resolved at the start.
    pub resolution: Resolution,
    /// The hosts known when it was resolved.
    pub hosts: Vec<HostDescription>,
    /// The agents.
    pub fleet: Fleet,
    pub journal: Arc<Journal>,
    /// Timeouts.
    pub settings: Settings,
    /// The platforms instance actions act through.
    pub platforms: Platforms,
}

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

impl Run {
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

impl Run {
    /// Journals how an action ended: its state, and its error or why it stopped.
    fn action_ended(&self, finished: &Finished, stopped: bool) {
        self.action_state(
            &finished.name,
            finished.state,
            finished
                .error
                .clone()
                .or_else(|| stopped.then(|| "the experiment is stopping".into())),
            None,
        );
    }

    /// Journals that action `name` went into `state`.
    fn action_state(&self, name: &str, state: State, reason: Option<String>, duration_ms: Option<u64>) {
        self.journal.record(Event::ActionState {
            action: name.to_string(),
            state,
            reason,
            duration_ms,
        })
    }
}

/// Waits `d`; true when `cancel` came first.
async fn cancelled_within(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = cancel.cancelled() => true,
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

/// The id of the fault an action puts on a host; the agent removes a run's faults by its
/// `run id/` prefix.
fn fault_id(run: &str, action: &str, host: &str) -> String {
    format!("{run}/{action}/{host}")
}

/// Runs one action to its end, removing what it put in place before returning; from then
/// on, no running action owns its faults.
async fn run_action(run: Arc<Run>, name: String, placements: Vec<Placement>, cancel: CancellationToken) -> Finished {
    run.action_state(&name, State::Initiating, None, None);
    let finished = Finished {
        name: name.clone(),
        state: State::Completed,
        error: None,
        notes: Vec::new(),
        hosts: Vec::new(),
        last_removal: None,
        unconfirmed: 0,
        observed: Vec::new(),
    };
    let finished = match run.experiment.actions[&name].spec.effect {
        Effect::Instances {
            operation,
            complete_if_terminated,
        } => act_instances(&run, &name, operation, complete_if_terminated, cancel, finished).await,
        _ => act(&run, &name, &placements, cancel, finished).await,
    };
    for p in &placements {
        run.fleet.release(&fault_id(&run.id, &name, &p.host));
    }
    finished
}
