//! The run's journal: one JSON object per line, written the moment it happens, so a crash
//! loses nothing that was already shown. Every event is also broadcast to the live view.

use faultline_agent::protocol::{EndReason, FaultKind, Observed, Outcome};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;
use tokio::sync::broadcast;

/// An experiment or action state, as FIS names them (docs/architecture.md, "A run").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not started.
    Pending,
    /// Starting: targets resolving, faults being dispatched.
    Initiating,
    /// In effect.
    Running,
    /// Done as planned.
    Completed,
    /// Being stopped.
    Stopping,
    /// Stopped before its end.
    Stopped,
    /// Could not be done.
    Failed,
    /// Never started because the experiment stopped first.
    Cancelled,
    /// Never started because its target resolved to nothing.
    Skipped,
}

impl State {
    /// Whether nothing more happens after this state.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Completed | State::Stopped | State::Failed | State::Cancelled | State::Skipped
        )
    }

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Initiating => "initiating",
            State::Running => "running",
            State::Completed => "completed",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
            State::Skipped => "skipped",
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The run began: what it runs, so that its journal alone makes its report.
    RunStarted {
        /// The template's description.
        description: String,
        /// Seed of the target selection.
        seed: u64,
        /// The template as run.
        template: serde_json::Value,
        /// The rule of each alarm the stop conditions watch.
        #[serde(default)]
        alarms: BTreeMap<String, AlarmRule>,
    },
    /// What the users saw: one scrape of the `userExperience` endpoint, counters as read
    /// (cumulative; rates come from two samples).
    UserExperience {
        /// Sum of the request counters.
        #[serde(skip_serializing_if = "Option::is_none")]
        requests: Option<f64>,
        /// Sum of the error counters.
        #[serde(skip_serializing_if = "Option::is_none")]
        errors: Option<f64>,
        /// The latency histogram's finite buckets, `[upper bound in seconds, cumulative count]`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        buckets: Vec<(f64, f64)>,
        /// Its observation count (the `+Inf` bucket).
        #[serde(skip_serializing_if = "Option::is_none")]
        count: Option<f64>,
        /// Why the scrape gave nothing.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The experiment changed state.
    ExperimentState {
        /// New state.
        state: State,
        /// Why, when it is not the plain course of things.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// An action changed state.
    ActionState {
        action: String,
        /// New state.
        state: State,
        /// Why, for failures and stops.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Remaining run time, for `running`.
        #[serde(skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    },
    /// A target was resolved.
    TargetResolved {
        target: String,
        /// What it selected.
        selected: Vec<String>,
        /// How many resources matched before sampling.
        matched: usize,
    },
    /// A fault was sent to an agent.
    Dispatch {
        action: String,
        host: String,
        fault_id: String,
        fault: FaultKind,
    },
    /// An agent answered a dispatch.
    Ack {
        action: String,
        host: String,
        fault_id: String,
        /// Its answer.
        outcome: Outcome,
        /// Time from dispatch to answer.
        latency_ms: f64,
    },
    /// A dispatch got no usable answer.
    DispatchFailed {
        action: String,
        host: String,
        /// Why.
        error: String,
    },
    /// A fault was removed, or could not be confirmed removed.
    Removal {
        action: String,
        host: String,
        fault_id: String,
        /// `controller` when removed on request, or the agent's own reason.
        by: String,
        /// Whether the agent confirmed it.
        confirmed: bool,
        /// Time from the request to the confirmation.
        #[serde(skip_serializing_if = "Option::is_none")]
        latency_ms: Option<f64>,
        /// What went wrong, when unconfirmed.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The platform acted on a host for an instance action (stop, start, reboot, terminate).
    Instance {
        action: String,
        host: String,
        /// What the platform did.
        operation: crate::platform::Operation,
        /// Whether it did it.
        ok: bool,
        /// The host that replaced a terminated one.
        #[serde(skip_serializing_if = "Option::is_none")]
        replacement: Option<String>,
        /// What went wrong.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A platform call of an instance action failed and is tried again (a start that undoes
    /// a stop is tried until the host runs or is terminated).
    InstanceRetry {
        action: String,
        host: String,
        /// What the platform was asked.
        operation: crate::platform::Operation,
        /// Which try failed, from 1.
        attempt: u32,
        /// What went wrong.
        error: String,
        /// The wait before the next try.
        retry_in_ms: u64,
    },
    /// At the end of the run, a host it dispatched to was asked to remove whatever of the run
    /// it still held.
    RemoveAll {
        host: String,
        /// How many faults it removed then (more than 0: a fault had been lost track of).
        #[serde(skip_serializing_if = "Option::is_none")]
        removed: Option<u32>,
        /// Why it did not confirm.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// An agent could not remove a fault on its own (at its deadline or lease) and retries.
    AgentRemovalFailed {
        host: String,
        fault_id: String,
        /// What went wrong.
        error: String,
    },
    /// A registering agent held a fault no running action owned, and the controller removed it.
    OrphanRemoval {
        host: String,
        fault_id: String,
        /// The controller that had applied it.
        owner: String,
        /// Whether the agent confirmed the removal.
        confirmed: bool,
        /// Why it did not, when it did not.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A registering agent held a fault of another controller, left to that controller
    /// (and to its lease, should it be gone).
    ForeignFault {
        host: String,
        fault_id: String,
        /// The controller that applied it.
        owner: String,
    },
    /// An agent ended a fault on its own.
    FaultEnded {
        host: String,
        fault_id: String,
        /// Why.
        reason: EndReason,
        /// What the agent saw the fault do, as in [`Event::Observed`].
        #[serde(skip_serializing_if = "Option::is_none")]
        observed: Option<Observed>,
    },
    /// What an agent saw a fault do, measured while it held and at its removal: each figure
    /// with what was asked, when the fault asked for an amount.
    Observed {
        host: String,
        fault_id: String,
        /// The figures.
        observed: Observed,
        /// Each figure far from what was asked ([`crate::effect::far`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        far: Vec<String>,
    },
    AgentConnected {
        host: String,
        az: String,
        address: String,
    },
    AgentDisconnected {
        host: String,
    },
    /// An alarm was evaluated.
    AlarmEvaluation {
        alarm: String,
        /// `OK`, `ALARM` or `INSUFFICIENT_DATA`.
        state: String,
        /// The newest datapoint, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<f64>,
        /// The datapoints considered, oldest first (`null` = missing).
        datapoints: Vec<Option<f64>>,
        /// Phase of the run: `baseline`, `experiment` or `recovery`.
        phase: String,
    },
}

/// An alarm's rule, as the journal keeps it for the report's charts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlarmRule {
    /// The statistic, e.g. `errorRate`.
    pub statistic: String,
    /// The comparison's symbol, e.g. `>`.
    pub comparison: String,
    pub threshold: f64,
    /// One datapoint's window, ms.
    pub period_ms: u64,
    /// Datapoints in a window.
    pub evaluation_periods: u32,
    /// Breaching datapoints that make ALARM.
    pub datapoints_to_alarm: u32,
}

/// A journal line: the event with its time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// RFC 3339 UTC with milliseconds.
    pub ts: String,
    pub experiment: String,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// The journal of one run.
pub struct Journal {
    experiment: String,
    path: PathBuf,
    file: Mutex<File>,
    tx: broadcast::Sender<Entry>,
}

impl Journal {
    /// Creates the file (and its directory) for experiment `experiment`.
    pub fn create(path: &Path, experiment: &str) -> std::io::Result<Journal> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Journal {
            experiment: experiment.to_string(),
            path: path.to_path_buf(),
            file: Mutex::new(file),
            tx: broadcast::channel(4096).0,
        })
    }

    /// Where it is written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes an event now, and broadcasts it.
    pub fn record(&self, event: Event) {
        self.record_all(std::iter::once(event));
    }

    /// Records events that happen together (a fan-out's dispatches, the answers that came in
    /// at once) in one write: a system call per fan-out step, not one per host. Written
    /// before this returns, and before the live view sees them.
    pub fn record_all(&self, events: impl IntoIterator<Item = Event>) {
        let ts = ts(&SystemTime::now());
        let entries: Vec<Entry> = events
            .into_iter()
            .map(|event| Entry {
                ts: ts.clone(),
                experiment: self.experiment.clone(),
                event,
            })
            .collect();
        let mut lines = Vec::with_capacity(entries.len() * 256);
        for entry in &entries {
            serde_json::to_writer(&mut lines, entry).expect("journal entries serialize");
            lines.push(b'\n');
        }
        if lines.is_empty() {
            return;
        }
        // One write on an unbuffered file: a crash after it loses nothing.
        if let Err(e) = self
            .file
            .lock()
            .expect("journal lock is never poisoned")
            .write_all(&lines)
        {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the journal");
        }
        for entry in entries {
            let _ = self.tx.send(entry);
        }
    }

    /// Entries as they are recorded.
    pub fn subscribe(&self) -> broadcast::Receiver<Entry> {
        self.tx.subscribe()
    }
}

/// RFC 3339 with milliseconds, as the journal writes times.
pub fn ts(t: &SystemTime) -> String {
    humantime::format_rfc3339_millis(*t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_recorded_together_are_lines_in_their_order_and_broadcast() {
        let dir = std::env::temp_dir().join(format!("faultline-journal-{}", std::process::id()));
        let path = dir.join("run.jsonl");
        let journal = Journal::create(&path, "EXP1").unwrap();
        let mut live = journal.subscribe();
        journal.record(Event::AgentDisconnected { host: "a".into() });
        journal.record_all(["b", "c"].map(|h| Event::AgentDisconnected { host: h.into() }));
        journal.record_all([]);
        let lines: Vec<Entry> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let hosts: Vec<Event> = lines.iter().map(|e| e.event.clone()).collect();
        assert_eq!(
            hosts,
            ["a", "b", "c"].map(|h| Event::AgentDisconnected { host: h.into() })
        );
        assert!(lines.iter().all(|e| e.experiment == "EXP1"));
        for _ in 0..3 {
            assert!(live.try_recv().is_ok(), "every event reaches the live view");
        }
        assert!(live.try_recv().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
