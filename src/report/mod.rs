//! The report of a run: a summary table for people, JSON for machines.

use crate::duration;
use crate::engine::{ts, ActionRecord, RunOutcome};
use crate::journal::State;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, Color, Table};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Everything known about a finished run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Experiment id.
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

impl Report {
    /// The experiment's duration.
    pub fn duration(&self) -> Duration {
        self.ended_at.duration_since(self.started_at).unwrap_or_default()
    }

    /// The summary as tables.
    pub fn render(&self) -> String {
        let mut actions = Table::new();
        actions.load_preset(UTF8_FULL_CONDENSED).set_header([
            "action",
            "actionId",
            "state",
            "hosts",
            "start",
            "end",
            "error / notes",
        ]);
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
        out += &format!("{actions}\nSeed {} · journal {}", self.seed, self.journal.display());
        out
    }
}
