//! The three phases of a run watched as one: the baseline (a full window of every alarm
//! before anything is injected), the experiment (the engine, stopped by an alarm, a lost
//! watcher or the operator) and the recovery (one more full window). One `select!` serves
//! all three; each phase says only what ends it.

use crate::alarms::{self, Evaluation, Monitor, Phase, Watched};
use crate::journal::{Event, Journal};
use crate::run::StopRequest;
use crate::template::Alarm;
use std::future::Future;
use tokio::sync::mpsc;

/// What the watch saw next.
pub(super) enum Seen<T> {
    /// The phase's work ended (the engine's outcome; the baseline and recovery have none).
    Done(T),
    /// An evaluation was journaled; `fired` when it put a stop condition into ALARM.
    Evaluated { fired: Option<StopRequest> },
    /// The alarms can no longer be watched: the run must not go on unwatched.
    Lost(StopRequest),
    /// The operator (or a server) asked to stop.
    Interrupted(StopRequest),
}

/// The stop conditions and the operator, watched from the baseline to the recovery.
pub(super) struct Watch<'a> {
    pub(super) monitor: Monitor,
    evaluations: mpsc::Receiver<Watched>,
    /// Whether evaluations still come (no alarms, or a lost watcher: they do not).
    watching: bool,
    interrupts: &'a mut mpsc::Receiver<StopRequest>,
    interrupts_open: bool,
    journal: &'a Journal,
    alarms: &'a [(String, Alarm)],
}

impl<'a> Watch<'a> {
    /// Watches `alarms` (none: only the operator) until the returned watch is dropped.
    pub(super) fn new(
        alarms: &'a [(String, Alarm)],
        journal: &'a Journal,
        interrupts: &'a mut mpsc::Receiver<StopRequest>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Watch<'a> {
        let monitor = Monitor::new(alarms);
        let evaluations = if alarms.is_empty() {
            mpsc::channel(1).1
        } else {
            alarms::watch(alarms.to_vec(), monitor.periods(), cancel)
        };
        Watch {
            monitor,
            evaluations,
            watching: !alarms.is_empty(),
            interrupts,
            interrupts_open: true,
            journal,
            alarms,
        }
    }

    /// Whether the alarms are still watched.
    pub(super) fn watching(&self) -> bool {
        self.watching
    }

    /// The next thing that happens: `work` ending, an evaluation, a lost watcher or an
    /// interrupt.
    pub(super) async fn next<T>(&mut self, work: &mut (impl Future<Output = T> + Unpin)) -> Seen<T> {
        loop {
            tokio::select! {
                o = &mut *work => return Seen::Done(o),
                w = self.evaluations.recv(), if self.watching => return match evaluation(w) {
                    Ok(e) => Seen::Evaluated { fired: self.record(e) },
                    Err(lost) => {
                        self.watching = false;
                        Seen::Lost(lost)
                    }
                },
                i = self.interrupts.recv(), if self.interrupts_open => match i {
                    Some(i) => return Seen::Interrupted(i),
                    None => self.interrupts_open = false,
                },
            }
        }
    }

    /// The baseline: a full window of every alarm, or the stop that came first.
    pub(super) async fn baseline(&mut self) -> Option<StopRequest> {
        let mut never = std::future::pending::<()>();
        loop {
            match self.next(&mut never).await {
                Seen::Evaluated { fired: Some(stop) } | Seen::Lost(stop) | Seen::Interrupted(stop) => {
                    return Some(stop)
                }
                Seen::Evaluated { fired: None } if self.monitor.window_complete() => return None,
                Seen::Evaluated { fired: None } | Seen::Done(()) => {}
            }
        }
    }

    /// The experiment: `engine` runs to its end; every stop goes to it through `stops`,
    /// never waiting on it (a full channel means a stop is already under way). Returns the
    /// outcome and whether the operator interrupted it.
    pub(super) async fn experiment<T>(
        &mut self,
        engine: impl Future<Output = T>,
        stops: &mpsc::Sender<StopRequest>,
    ) -> (T, bool) {
        self.monitor.enter(Phase::Experiment);
        let mut engine = std::pin::pin!(engine);
        let mut interrupted = false;
        loop {
            match self.next(&mut engine).await {
                Seen::Done(outcome) => return (outcome, interrupted),
                Seen::Evaluated { fired: None } => {}
                Seen::Evaluated { fired: Some(stop) } | Seen::Lost(stop) => {
                    let _ = stops.try_send(stop);
                }
                Seen::Interrupted(stop) => {
                    interrupted = true;
                    let _ = stops.try_send(stop);
                }
            }
        }
    }

    /// The recovery: one more full window; false when the alarms could not be watched to
    /// its end. An interrupt ends it early, as watched.
    pub(super) async fn recovery(&mut self) -> bool {
        self.monitor.enter(Phase::Recovery);
        let mut never = std::future::pending::<()>();
        loop {
            match self.next(&mut never).await {
                Seen::Evaluated { .. } if self.monitor.window_complete() => return true,
                Seen::Evaluated { .. } | Seen::Done(()) => {}
                Seen::Lost(lost) => {
                    tracing::warn!(reason = %lost, "the recovery could not be watched to its end");
                    return false;
                }
                Seen::Interrupted(_) => return true,
            }
        }
    }

    /// Journals an evaluation; the stop it calls for when its alarm fired.
    fn record(&mut self, e: Evaluation) -> Option<StopRequest> {
        self.journal.record(Event::AlarmEvaluation {
            alarm: e.alarm.clone(),
            state: e.state.as_str().into(),
            value: e.value,
            datapoints: e.window.clone(),
            phase: self.monitor.phase_of(&e).as_str().into(),
        });
        self.monitor.record(e).map(|fired| StopRequest::Alarm {
            alarm: fired.alarm.clone(),
            detail: alarm_detail(&fired, self.alarms),
        })
    }
}

/// The evaluation a watcher sent, or the stop its loss calls for (a closed channel means
/// every watcher is gone).
pub(super) fn evaluation(watched: Option<Watched>) -> Result<Evaluation, StopRequest> {
    match watched {
        Some(Watched::Evaluation(e)) => Ok(e),
        Some(Watched::Lost { alarm, why }) => Err(StopRequest::Unwatched {
            alarm: Some(alarm),
            why,
        }),
        None => Err(StopRequest::Unwatched {
            alarm: None,
            why: "every watcher stopped".into(),
        }),
    }
}

/// What an alarm saw when it fired, for people.
fn alarm_detail(e: &Evaluation, alarms: &[(String, Alarm)]) -> String {
    let a = alarms.iter().find(|(n, _)| *n == e.alarm).map(|(_, a)| a);
    let points: Vec<String> = e
        .window
        .iter()
        .map(|d| d.map_or("missing".into(), |v| format!("{v:.4}")))
        .collect();
    match a {
        Some(a) => format!(
            "{} of the last {} datapoints [{}] {} {} {}",
            a.datapoints_to_alarm,
            a.evaluation_periods,
            points.join(", "),
            a.statistic.as_str(),
            a.comparison.symbol(),
            a.threshold
        ),
        None => points.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::State;

    #[test]
    fn a_lost_or_silent_watcher_is_a_stop_that_fails_the_run() {
        let lost = evaluation(Some(Watched::Lost {
            alarm: "errors".into(),
            why: "its watcher panicked: boom".into(),
        }))
        .unwrap_err();
        assert_eq!(
            lost.to_string(),
            "alarm errors can no longer be watched (its watcher panicked: boom); stopping rather than running unwatched"
        );
        let closed = evaluation(None).unwrap_err();
        assert!(
            matches!(closed, StopRequest::Unwatched { alarm: None, .. }),
            "{closed:?}"
        );
        assert_eq!(crate::run::exit_code(State::Stopped, Some(&lost)), crate::exit::FAILED);
        assert_eq!(
            crate::run::exit_code(State::Stopped, Some(&closed)),
            crate::exit::FAILED
        );
    }
}
