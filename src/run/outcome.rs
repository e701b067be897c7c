//! What became of a run and of each of its actions, and why a run is asked to stop: what
//! the reports, the journal's readers and the exit status are made from.

use crate::effect::HostEffect;
use crate::journal::{ts, State};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// Why a run is asked to stop before its end.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StopRequest {
    /// A stop condition's alarm went into ALARM.
    Alarm {
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
    pub(super) fn unstarted(action_id: &str, state: State) -> Self {
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

impl RunOutcome {
    /// The exit status this run ends `faultline run` with.
    pub fn exit_code(&self) -> u8 {
        exit_code(self.state, self.stop.as_ref())
    }
}

/// The exit status of a run that ended in `state`, stopped by `stop`.
pub fn exit_code(state: State, stop: Option<&StopRequest>) -> u8 {
    match (state, stop) {
        (State::Completed, _) => crate::exit::COMPLETED,
        (State::Stopped, Some(StopRequest::Interrupted)) => crate::exit::INTERRUPTED,
        (State::Stopped, Some(StopRequest::Terminated)) => crate::exit::TERMINATED,
        // Not a stop condition: the run could not be watched, so it did not do its job.
        (State::Stopped, Some(StopRequest::Unwatched { .. })) => crate::exit::FAILED,
        (State::Stopped, _) => crate::exit::STOPPED,
        _ => crate::exit::FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit;

    #[test]
    fn each_signal_has_its_exit_status() {
        assert_eq!(exit_code(State::Stopped, Some(&StopRequest::Terminated)), 143);
        assert_eq!(exit_code(State::Stopped, Some(&StopRequest::Interrupted)), 130);
        let asked = StopRequest::Requested {
            why: "stopped by ops: a customer call".into(),
        };
        assert_eq!(
            exit_code(State::Stopped, Some(&asked)),
            1,
            "a stop through a server is a stop"
        );
        let alarm = StopRequest::Alarm {
            alarm: "a".into(),
            detail: "d".into(),
        };
        assert_eq!(exit_code(State::Stopped, Some(&alarm)), exit::STOPPED);
    }
}
