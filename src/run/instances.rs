//! An instance action (stop, start, reboot, terminate) done through the platform that runs
//! each host; a stop with a duration is undone at its end or when the run stops.

use super::{cancelled_within, Finished, Run};
use crate::journal::{Event, State};
use crate::platform::{Operation, PlatformError};
use faultline_agent::protocol::HostDescription;
use futures_util::future::join_all;
use std::sync::Arc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// An instance action: the platform acts on every host at once; a stop with a duration is
/// held, then (or at once when the experiment stops) the hosts are started again.
pub(super) async fn act_instances(
    run: &Arc<Run>,
    name: &str,
    operation: Operation,
    complete_if_terminated: bool,
    cancel: CancellationToken,
    mut finished: Finished,
) -> Finished {
    let action = &run.experiment.actions[name];
    let state = |state: State, reason: Option<String>, duration_ms: Option<u64>| {
        run.action_state(name, state, reason, duration_ms)
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
        stopped = cancelled_within(duration, &cancel).await;
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
    run.action_ended(&finished, stopped);
    finished
}

/// Has the platform do `operation` to one host, journaled; a stop with `until` is one the
/// action undoes then.
pub(super) async fn instance(
    run: &Run,
    action: &str,
    host: &HostDescription,
    operation: Operation,
    until: Option<std::time::SystemTime>,
) -> Result<Option<crate::platform::Replacement>, PlatformError> {
    let result = match (operation, until) {
        (Operation::Stop, Some(until)) => run.platforms.stop_until(host, until).await.map(|()| None),
        // A start undoes a stop: tried again until the host runs (or is terminated), each
        // failed try journaled.
        (Operation::Start, _) => run
            .platforms
            .start_until_running(host, |f| {
                tracing::warn!(host = %host.host_id, attempt = f.attempt, error = %f.error, retry_in = ?f.retry_in, "cannot start the host yet; trying again");
                run.journal.record(Event::InstanceRetry {
                    action: action.into(),
                    host: host.host_id.clone(),
                    operation,
                    attempt: f.attempt,
                    error: f.error.to_string(),
                    retry_in_ms: f.retry_in.as_millis() as u64,
                });
            })
            .await
            .map(|()| None),
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
