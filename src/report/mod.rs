//! The report of a run: a summary table for people, JSON for machines, JUnit XML for CI.

pub mod experience;
pub mod html;
pub mod junit;
pub mod markdown;
pub mod record;
pub mod summary;

use crate::alarms::AlarmReport;
use crate::alarms::SteadyState;
use crate::duration;
use crate::journal::ts;
use crate::journal::State;
use crate::run::{ActionRecord, RunOutcome};
use comfy_table::{Cell, Color};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Everything known about a finished run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub experiment_id: String,
    /// The template's description.
    pub description: String,
    /// The template file.
    pub template: PathBuf,
    /// The template's tags.
    pub tags: BTreeMap<String, String>,
    /// Final state.
    pub state: State,
    /// Why it did not complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The exit status faultline ends with.
    pub exit_code: u8,
    /// Seed of the target selection.
    pub seed: u64,
    /// Start time.
    #[serde(serialize_with = "ser_ts")]
    pub started_at: SystemTime,
    /// End time.
    #[serde(serialize_with = "ser_ts")]
    pub ended_at: SystemTime,
    /// Hosts (or AZs) selected per target.
    pub targets: BTreeMap<String, Vec<String>>,
    /// How the run went.
    #[serde(flatten)]
    pub outcome: RunOutcome,
    /// What each stop condition's alarm did.
    pub alarms: Vec<AlarmReport>,
    /// Steady state before and after the actions, when there are stop conditions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steady_state: Option<SteadyState>,
    /// What the users saw, phase by phase, when the template has `userExperience`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub user_experience: Vec<experience::PhaseFigures>,
    /// The journal file.
    pub journal: PathBuf,
}

fn ser_ts<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&ts(t))
}

fn state_cell(state: State) -> Cell {
    let color = match state {
        State::Completed => Color::Green,
        State::Failed => Color::Red,
        State::Stopped | State::Cancelled | State::Stopping => Color::Yellow,
        _ => Color::Reset,
    };
    Cell::new(state.as_str()).fg(color)
}

fn span(a: &ActionRecord) -> (String, String) {
    let start = a.started_at.map(|t| clock(&t)).unwrap_or_else(|| "-".into());
    let end = a.ended_at.map(|t| clock(&t)).unwrap_or_else(|| "-".into());
    (start, end)
}

/// The time of day of a timestamp, UTC, with milliseconds.
fn clock(t: &SystemTime) -> String {
    let full = ts(t);
    full.get(11..23).unwrap_or(&full).to_string()
}

pub use crate::table::table;

/// One figure of one fault as a report row: asked versus observed, for people.
#[derive(Debug, Clone, PartialEq)]
pub struct EffectRow {
    pub action: String,
    pub host: String,
    /// What was measured.
    pub figure: String,
    /// What was asked, or `-`.
    pub asked: String,
    /// What was seen.
    pub observed: String,
    /// Whether it is far from what was asked.
    pub far: bool,
}

/// The rows of the faults of `actions` (name, host effects), figure by figure.
pub fn effect_rows<'a>(
    actions: impl IntoIterator<Item = (&'a str, &'a [crate::effect::HostEffect])>,
) -> Vec<EffectRow> {
    let mut rows = Vec::new();
    for (action, effects) in actions {
        for e in effects {
            for f in &e.figures {
                rows.push(EffectRow {
                    action: action.into(),
                    host: e.host.clone(),
                    figure: f.name.clone(),
                    asked: f.asked.map_or("-".into(), |a| crate::effect::amount(a, &f.unit)),
                    observed: crate::effect::amount(f.observed, &f.unit),
                    far: crate::effect::far(f).is_some(),
                });
            }
        }
    }
    rows
}

impl Report {
    /// What each fault did, figure by figure.
    pub fn effects(&self) -> Vec<EffectRow> {
        effect_rows(
            self.outcome
                .actions
                .iter()
                .map(|(n, a)| (n.as_str(), a.observed.as_slice())),
        )
    }

    /// The experiment's duration.
    pub fn duration(&self) -> Duration {
        self.ended_at.duration_since(self.started_at).unwrap_or_default()
    }

    /// The summary as tables.
    pub fn render(&self) -> String {
        let mut actions = table(["action", "actionId", "state", "hosts", "start", "end", "error / notes"]);
        for (name, a) in &self.outcome.actions {
            let (start, end) = span(a);
            let hosts = if a.hosts.is_empty() && !a.resources.is_empty() {
                a.resources.join(", ")
            } else {
                a.hosts.join(", ")
            };
            let mut text: Vec<String> = a.error.iter().cloned().collect();
            text.extend(a.notes.iter().cloned());
            actions.add_row(vec![
                Cell::new(name),
                Cell::new(&a.action_id),
                state_cell(a.state),
                Cell::new(if hosts.is_empty() { "-".into() } else { hosts }),
                Cell::new(start),
                Cell::new(end),
                Cell::new(text.join("\n")),
            ]);
        }
        let mut out = format!(
            "Experiment {} {} in {} — {}\n",
            self.experiment_id,
            self.state.as_str(),
            duration::human(self.duration()),
            self.description
        );
        if let Some(reason) = &self.reason {
            out += &format!("Reason: {reason}\n");
        }
        if let Some(r) = self.outcome.rollback {
            out += &format!("Rollback: every fault removed {} after the stop\n", duration::human(r));
        }
        if self.outcome.unconfirmed_removals > 0 {
            out += &format!(
                "Warning: {} fault(s) were not confirmed removed; their agents' leases remove them\n",
                self.outcome.unconfirmed_removals
            );
        }
        out += &format!("{actions}\n");
        if !self.alarms.is_empty() {
            let mut alarms = table(["alarm", "rule", "state", "last datapoints", "fired", "recovered"]);
            for a in &self.alarms {
                let points: Vec<String> = a
                    .datapoints
                    .iter()
                    .map(|d| d.map_or("missing".into(), |v| format!("{v:.4}")))
                    .collect();
                let fired = a
                    .fired
                    .as_ref()
                    .map_or("-".into(), |f| format!("{} at {}", f.phase.as_str(), clock(&f.at)));
                let recovered = match (a.recovered, a.recovered_after_ms) {
                    (Some(true), Some(ms)) => {
                        format!("yes, after {}", duration::human(Duration::from_millis(ms as u64)))
                    }
                    (Some(true), None) => "yes".into(),
                    (Some(false), _) => "no".into(),
                    (None, _) => "-".into(),
                };
                let color = match a.state {
                    crate::alarms::AlarmState::Ok => Color::Green,
                    crate::alarms::AlarmState::Alarm => Color::Red,
                    crate::alarms::AlarmState::InsufficientData => Color::Yellow,
                };
                let mut last = points.join(", ");
                if let Some(note) = &a.last_note {
                    last += &format!("\n{note}");
                }
                alarms.add_row(vec![
                    Cell::new(&a.name),
                    Cell::new(format!(
                        "{} {} {}",
                        a.statistic.as_str(),
                        a.comparison_operator.symbol(),
                        a.threshold
                    )),
                    Cell::new(a.state.as_str()).fg(color),
                    Cell::new(last),
                    Cell::new(fired),
                    Cell::new(recovered),
                ]);
            }
            out += &format!("{alarms}\n");
        }
        if let Some(ss) = &self.steady_state {
            out += &match (ss.baseline.as_str(), ss.recovered, ss.recovery_ms) {
                ("breaching", _, _) => {
                    "Steady state: did not hold before the first action, so nothing was injected\n".into()
                }
                (_, Some(true), Some(ms)) => format!(
                    "Steady state: held before the run; recovered {} after the last action\n",
                    duration::human(Duration::from_millis(ms as u64))
                ),
                (_, Some(false), _) => {
                    "Steady state: held before the run; NOT recovered after the last action\n".into()
                }
                _ => "Steady state: held before the run\n".into(),
            };
        }
        let effects = self.effects();
        if !effects.is_empty() {
            let mut t = table(["action", "host", "figure", "asked", "observed", "verdict"]);
            for e in &effects {
                let color = if e.far { Color::Yellow } else { Color::Reset };
                t.add_row(vec![
                    Cell::new(&e.action),
                    Cell::new(&e.host),
                    Cell::new(&e.figure),
                    Cell::new(&e.asked),
                    Cell::new(&e.observed),
                    Cell::new(if e.far { "FAR" } else { "ok" }).fg(color),
                ]);
            }
            out += &format!("What the faults did:\n{t}\n");
            for (action, a) in &self.outcome.actions {
                for w in a
                    .observed
                    .iter()
                    .flat_map(|h| h.warnings.iter().map(move |w| (&h.host, w)))
                {
                    out += &format!("Warning: action {action} on {}: {}\n", w.0, w.1);
                }
            }
        }
        if !self.user_experience.is_empty() {
            out += &format!("What the users saw:\n{}\n", experience::table(&self.user_experience));
        }
        out += &format!("Seed {} · journal {}", self.seed, self.journal.display());
        out
    }
}
