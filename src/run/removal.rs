//! Taking faults away: each removal confirmed by its agent or waited out for a grace period
//! (the lease is the backstop), and at the end of a run a sweep of whatever the run may
//! still hold on every host it dispatched to.

use super::fanout::journaled;
use super::{Finished, Run};
use crate::effect::HostEffect;
use crate::fleet::DispatchError;
use crate::journal::Event;
use faultline_agent::protocol::{ControllerMessage, EndReason, Outcome};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Removes an action's faults from every host at once, recording what was confirmed.
pub(super) async fn remove_all(run: &Arc<Run>, action: &str, applied: &[(String, String)], finished: &mut Finished) {
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
        host: String,
        fault_id: String,
        /// The agent's reason.
        message: String,
    },
    /// The agent refused the command.
    #[error("{host}: refused the removal of {fault_id}: {message}")]
    Refused {
        host: String,
        fault_id: String,
        /// The agent's reason.
        message: String,
    },
    /// The agent answered with something other than a removal.
    #[error("{host}: unexpected answer to a removal: {answer}")]
    Unexpected {
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
        host: String,
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

/// Asks every host the run dispatched to for the removal of whatever of the run it still
/// holds: the backstop for a fault whose apply or removal was lost. Waits at most the ack
/// timeout, all hosts at once.
pub(super) async fn sweep(run: &Run, hosts: &BTreeSet<String>) {
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
