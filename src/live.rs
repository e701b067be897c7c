//! Progress of a run while it happens, from the journal's broadcast.

use crate::journal::{Entry, Event};
use faultline_agent::protocol::EndReason;
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
        Event::FaultEnded { host, fault_id, reason } if *reason != EndReason::DurationElapsed => {
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
pub async fn plain(mut rx: broadcast::Receiver<Entry>, cancel: CancellationToken) {
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
