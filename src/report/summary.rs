//! The game-day report's verdicts, worked out once from the journal's record: why the run
//! ended, how fast faultline reacted and rolled back, whether and how fast the system
//! recovered. The HTML and Markdown writers only render them.

use super::record::{clock, human, RunRecord};
use crate::journal::State;

/// One line of the summary: a label and what it says, plain text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    /// What the line is about ("Stop reason", "Rollback", ...).
    pub label: &'static str,
    /// What it says.
    pub text: String,
    /// The opening words of `text` that are bad news the reader must not miss, rendered
    /// emphasised ("NOT recovered").
    pub strong: Option<&'static str>,
}

impl Fact {
    fn new(label: &'static str, text: impl Into<String>) -> Fact {
        Fact {
            label,
            text: text.into(),
            strong: None,
        }
    }
}

/// The summary of a run, in the order the reports show it.
pub fn summary(r: &RunRecord) -> Vec<Fact> {
    let mut facts = vec![Fact::new(
        "Stop reason",
        match (&r.reason, r.state) {
            (Some(reason), _) => reason.clone(),
            (None, State::Completed) => "none: every action ran to its end".into(),
            (None, _) => "not recorded".into(),
        },
    )];
    if let Some(stop) = &r.stop {
        if let (Some((alarm, at)), Some(reaction)) = (&stop.fired, stop.reaction()) {
            facts.push(Fact::new(
                "Reaction time",
                format!(
                    "{} from alarm {alarm} going into ALARM ({} UTC) to the stop",
                    human(reaction),
                    clock(*at)
                ),
            ));
        }
        facts.push(Fact::new(
            "Rollback",
            match stop.rollback() {
                Some(d) => format!("every fault removed {} after the stop", human(d)),
                None => "no fault was in effect when it stopped".into(),
            },
        ));
    }
    facts.push(match r.recovery() {
        Some((_, Some(d))) => Fact::new(
            "Time to recover",
            format!("{} after the last action ended, every alarm was OK again", human(d)),
        ),
        Some((_, None)) => Fact {
            strong: Some("NOT recovered"),
            ..Fact::new("Time to recover", "NOT recovered within the recovery window")
        },
        None => Fact::new(
            "Time to recover",
            "not watched (no stop condition, or the run was interrupted)",
        ),
    });
    if r.unconfirmed_removals > 0 {
        facts.push(Fact::new(
            "Warning",
            format!(
                "{} removal(s) not confirmed by an agent; their leases remove them",
                r.unconfirmed_removals
            ),
        ));
    }
    facts
}
