//! A host action: its fault dispatched to every host at once, each answer journaled as it
//! comes, held for the duration (or until the run stops), then removed.

use super::fanout::journaled;
use super::placement::Placement;
use super::removal::remove_all;
use super::{cancelled_within, fault_id, Finished, Run};
use crate::fleet::DispatchError;
use crate::journal::{Event, State};
use faultline_agent::protocol::{ControllerMessage, FaultSpec, Outcome};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A host action to its end: dispatched to every host, held for the duration (or until
/// `cancel`), removed; what it put in place is removed before it returns.
pub(super) async fn act(
    run: &Arc<Run>,
    name: &str,
    placements: &[Placement],
    cancel: CancellationToken,
    mut finished: Finished,
) -> Finished {
    let action = &run.experiment.actions[name];
    let state = |state: State, reason: Option<String>, duration_ms: Option<u64>| {
        run.action_state(name, state, reason, duration_ms)
    };
    let duration = action.spec.duration();
    // The fault may end before the action does (an SSM document's DurationSeconds).
    let fault_duration = action.spec.fault_duration();
    finished.hosts = placements.iter().map(|p| p.host.clone()).collect();
    let (applied, errors) = dispatch(run, name, placements, fault_duration).await;
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
    let mut stopped = cancelled_within(fault_duration, &cancel).await;
    if stopped {
        state(State::Stopping, None, None);
    }
    if !instant {
        remove_all(run, name, &applied, &mut finished).await;
    }
    if !stopped && duration > fault_duration {
        // As in FIS, the action waits out its span after the fault (still stoppable).
        stopped = cancelled_within(duration - fault_duration, &cancel).await;
        if stopped {
            state(State::Stopping, None, None);
        }
    }
    judge(run, &mut finished, stopped);
    run.action_ended(&finished, stopped);
    finished
}

/// Sends the fault to every host at once: every dispatch is journaled, in one write, before
/// the first apply goes out; each answer is journaled as it comes. Returns the faults that
/// are (or may be) in effect, by host and fault id, and what went wrong.
async fn dispatch(
    run: &Run,
    name: &str,
    placements: &[Placement],
    fault_duration: Duration,
) -> (Vec<(String, String)>, Vec<String>) {
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
    run.journal
        .record_all(planned.iter().map(|(host, spec)| Event::Dispatch {
            action: name.to_string(),
            host: host.clone(),
            fault_id: spec.fault_id.clone(),
            fault: spec.kind.clone(),
        }));
    let dispatches = planned.into_iter().map(|(host, spec)| async move {
        let fault_id = spec.fault_id.clone();
        let sent = Instant::now();
        let result = run
            .fleet
            .command(
                &host,
                ControllerMessage::Apply { fault: spec },
                run.settings.ack_timeout,
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
    let mut applied: Vec<(String, String)> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for (host, fault_id, result) in journaled(&run.journal, dispatches).await {
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
    (applied, errors)
}

/// The state of an action whose faults were held and removed: stopped, completed, or failed
/// when a removal was not confirmed or (`--strict`) a fault did not do what was asked.
fn judge(run: &Run, finished: &mut Finished, stopped: bool) {
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
}
