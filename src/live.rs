//! Progress of a run while it happens, from the journal's broadcast.

use crate::journal::{Entry, Event, State};
use crate::template::Experiment;
use faultline_agent::protocol::EndReason;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// One line for an entry worth showing, or `None` for the detail the journal keeps.
pub fn line(e: &Entry) -> Option<String> {
    let time = e.ts.get(11..23).unwrap_or(&e.ts);
    let what = match &e.event {
        Event::ExperimentState { state, reason } => match reason {
            Some(r) => format!("experiment {}: {r}", state.as_str()),
            None => format!("experiment {}", state.as_str()),
        },
        Event::ActionState {
            action,
            state,
            reason,
            duration_ms,
        } => {
            let mut s = format!("action {action} {}", state.as_str());
            if let Some(ms) = duration_ms {
                s += &format!(" for {}", crate::duration::human(std::time::Duration::from_millis(*ms)));
            }
            if let Some(r) = reason {
                s += &format!(": {r}");
            }
            s
        }
        Event::TargetResolved {
            target,
            selected,
            matched,
        } => {
            format!(
                "target {target}: {} of {matched} selected ({})",
                selected.len(),
                selected.join(", ")
            )
        }
        Event::DispatchFailed { action, host, error } => format!("action {action}: {host}: {error}"),
        Event::Instance {
            action,
            host,
            operation,
            replacement,
            error,
            ..
        } => {
            let mut s = format!("action {action}: {host}: {operation:?}");
            match (error, replacement) {
                (Some(e), _) => s += &format!(" failed: {e}"),
                (None, Some(r)) => s += &format!(" done; replaced by {r}"),
                (None, None) => s += " done",
            }
            s
        }
        Event::InstanceRetry {
            action,
            host,
            operation,
            attempt,
            error,
            retry_in_ms,
        } => format!(
            "action {action}: {host}: {operation:?} failed (try {attempt}): {error}; trying again in {}",
            crate::duration::human(std::time::Duration::from_millis(*retry_in_ms))
        ),
        Event::Removal {
            action,
            host,
            confirmed: false,
            error,
            ..
        } => format!(
            "action {action}: {host}: removal not confirmed: {}",
            error.as_deref().unwrap_or("")
        ),
        Event::FaultEnded {
            host, fault_id, reason, ..
        } if *reason != EndReason::DurationElapsed => {
            format!("{host} ended {fault_id} on its own ({reason:?})")
        }
        Event::AgentConnected { host, az, address } => {
            format!("agent {host} connected ({az}, {address})")
        }
        Event::AgentDisconnected { host } => format!("agent {host} disconnected"),
        Event::AlarmEvaluation {
            alarm,
            state,
            value,
            phase,
            ..
        } if state != "OK" || phase != "experiment" => {
            format!(
                "alarm {alarm} {state} ({phase}, last value {})",
                value.map_or("missing".into(), |v| format!("{v:.4}"))
            )
        }
        _ => return None,
    };
    Some(format!("{time} {what}"))
}

/// Prints a timestamped line per notable event on stderr until `cancel`.
async fn plain(mut rx: broadcast::Receiver<Entry>, cancel: CancellationToken) {
    loop {
        let entry = tokio::select! {
            _ = cancel.cancelled() => break,
            e = rx.recv() => e,
        };
        match entry {
            Ok(e) => {
                if let Some(l) = line(&e) {
                    eprintln!("{l}");
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                eprintln!("({n} events not shown; see the journal)")
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    // Whatever was recorded before the cancel is still shown.
    while let Ok(e) = rx.try_recv() {
        if let Some(l) = line(&e) {
            eprintln!("{l}");
        }
    }
}

/// Shows the run: a live display on a terminal, timestamped lines otherwise.
pub async fn show(rx: broadcast::Receiver<Entry>, experiment: std::sync::Arc<Experiment>, cancel: CancellationToken) {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        tty(rx, &experiment, cancel).await;
    } else {
        plain(rx, cancel).await;
    }
}

/// An action's line: its bar, its state, and when it started running for how long.
type ActionLine = (ProgressBar, State, Option<(Instant, Duration)>);

/// The live display: the experiment, each action with its remaining time, each alarm with
/// its state and last value; notable events scroll above it.
async fn tty(mut rx: broadcast::Receiver<Entry>, experiment: &Experiment, cancel: CancellationToken) {
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{spinner:.cyan} {msg}").expect("static template");
    let line = |msg: String| {
        let b = multi.add(ProgressBar::new_spinner().with_style(style.clone()).with_message(msg));
        b.enable_steady_tick(Duration::from_millis(120));
        b
    };
    let started = Instant::now();
    let head = line(format!("experiment pending: {}", experiment.description));
    let mut actions: BTreeMap<String, ActionLine> = experiment
        .actions
        .iter()
        .map(|(name, a)| {
            (
                name.clone(),
                (
                    line(format!("{name:<24} pending  {}", a.spec.action_id())),
                    State::Pending,
                    None,
                ),
            )
        })
        .collect();
    let mut alarms: BTreeMap<String, ProgressBar> = experiment
        .alarms
        .keys()
        .map(|n| {
            (
                n.clone(),
                line(format!("alarm {n:<18} waiting for the first datapoint")),
            )
        })
        .collect();
    let mut experiment_state = State::Pending;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let entry = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => None,
            e = rx.recv() => match e {
                Ok(e) => Some(e),
                Err(broadcast::error::RecvError::Lagged(_)) => None,
                Err(broadcast::error::RecvError::Closed) => break,
            },
        };
        if let Some(e) = entry {
            match &e.event {
                Event::ExperimentState { state, .. } => experiment_state = *state,
                Event::ActionState {
                    action,
                    state,
                    duration_ms,
                    ..
                } => {
                    if let Some((_, s, timer)) = actions.get_mut(action) {
                        *s = *state;
                        if let Some(ms) = duration_ms {
                            *timer = Some((Instant::now(), Duration::from_millis(*ms)));
                        }
                    }
                }
                Event::AlarmEvaluation {
                    alarm,
                    state,
                    value,
                    phase,
                    ..
                } => {
                    if let Some(b) = alarms.get_mut(alarm) {
                        let a = &experiment.alarms[alarm];
                        let v = value.map_or("missing".into(), |v| format!("{v:.4}"));
                        b.set_message(format!(
                            "alarm {alarm:<18} {state:<17} last {v} ({} {} {}) [{phase}]",
                            a.statistic.as_str(),
                            a.comparison.symbol(),
                            a.threshold
                        ));
                    }
                }
                _ => {}
            }
            if let Some(l) = line_for_log(&e) {
                let _ = multi.println(l);
            }
        }
        head.set_message(format!(
            "experiment {} {} — {}",
            experiment_state.as_str(),
            crate::duration::human(started.elapsed()),
            experiment.description
        ));
        for (name, (bar, state, timer)) in &actions {
            let left = match (state, timer) {
                (State::Running, Some((at, d))) => {
                    format!("{} left", crate::duration::human(d.saturating_sub(at.elapsed())))
                }
                _ => String::new(),
            };
            bar.set_message(format!("{name:<24} {:<10} {left}", state.as_str()));
            if state.is_final() && !bar.is_finished() {
                bar.finish();
            }
        }
    }
    head.finish();
    for (_, (b, _, _)) in actions.iter_mut() {
        b.finish();
    }
    for b in alarms.values_mut() {
        b.finish();
    }
}

/// Events worth a line above the live display: failures and surprises, not the progress the
/// display already shows.
fn line_for_log(e: &Entry) -> Option<String> {
    match &e.event {
        Event::DispatchFailed { .. }
        | Event::Instance { .. }
        | Event::InstanceRetry { .. }
        | Event::Removal { confirmed: false, .. }
        | Event::FaultEnded { .. } => line(e),
        Event::ExperimentState { reason: Some(_), .. } => line(e),
        Event::ActionState {
            state: State::Failed, ..
        } => line(e),
        _ => None,
    }
}
