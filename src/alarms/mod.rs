//! Alarms with CloudWatch semantics: a datapoint per period from a metric source, the last
//! `evaluationPeriods` of them compared with the threshold, `datapointsToAlarm` of them
//! breaching for ALARM, and missing datapoints treated as `treatMissingData` says.

pub mod experience;
pub mod sources;

use crate::template::{Alarm, TreatMissingData};
use serde::Serialize;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch as clock};
use tokio_util::sync::CancellationToken;

/// An alarm's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlarmState {
    /// Within the threshold.
    Ok,
    /// Breaching.
    Alarm,
    /// Not enough data to say.
    InsufficientData,
}

impl AlarmState {
    /// The CloudWatch name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmState::Ok => "OK",
            AlarmState::Alarm => "ALARM",
            AlarmState::InsufficientData => "INSUFFICIENT_DATA",
        }
    }
}

/// The state after a new datapoint, given the window (oldest first, at most
/// `evaluationPeriods` long, `None` = missing) and the state before.
///
/// `breaching` and `notBreaching` count a missing datapoint as breaching or not. `missing`
/// and `ignore` evaluate only the datapoints present, needing no more breaching ones than are
/// present; when all are missing, `missing` gives INSUFFICIENT_DATA and `ignore` keeps the
/// current state. An empty window (no period observed yet) is INSUFFICIENT_DATA.
pub fn evaluate(alarm: &Alarm, window: &[Option<f64>], current: AlarmState) -> AlarmState {
    if window.is_empty() {
        return AlarmState::InsufficientData;
    }
    let needed = alarm.datapoints_to_alarm as usize;
    let breaches = |v: f64| alarm.comparison.breaches(v, alarm.threshold);
    let (breaching, needed) = match alarm.treat_missing_data {
        TreatMissingData::Breaching => (window.iter().filter(|d| d.is_none_or(breaches)).count(), needed),
        TreatMissingData::NotBreaching => (window.iter().filter(|d| d.is_some_and(breaches)).count(), needed),
        TreatMissingData::Missing | TreatMissingData::Ignore => {
            let present: Vec<f64> = window.iter().flatten().copied().collect();
            if present.is_empty() {
                return match alarm.treat_missing_data {
                    TreatMissingData::Ignore => current,
                    _ => AlarmState::InsufficientData,
                };
            }
            (
                present.iter().filter(|v| breaches(**v)).count(),
                needed.min(present.len()),
            )
        }
    };
    if breaching >= needed {
        AlarmState::Alarm
    } else {
        AlarmState::Ok
    }
}

/// One evaluation of one alarm.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Evaluation {
    pub alarm: String,
    /// Its state now.
    pub state: AlarmState,
    /// The newest datapoint.
    pub value: Option<f64>,
    /// The window, oldest first.
    pub window: Vec<Option<f64>>,
    /// What the probe said when it produced no datapoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// When.
    #[serde(skip)]
    pub at: SystemTime,
    /// Which evaluation of this alarm this is (1 = first period).
    pub period: u32,
    /// The restarts of the period clock before its period began (see [`Monitor::periods`]):
    /// the phase it belongs to.
    pub restarts: u32,
}

/// What the watchers send.
#[derive(Debug, Clone, PartialEq)]
pub enum Watched {
    /// An alarm was evaluated at the end of a period.
    Evaluation(Evaluation),
    /// An alarm's watcher stopped before it was cancelled (it panicked): that alarm is no
    /// longer watched.
    Lost {
        alarm: String,
        /// What happened to its watcher.
        why: String,
    },
}

/// Starts one watcher per alarm; each sends a [`Watched::Evaluation`] at the end of every
/// period until `cancel`, or a [`Watched::Lost`] if it stops before. Each time `periods`
/// changes, every watcher abandons the period in progress and starts a fresh one at once.
pub fn watch(
    alarms: Vec<(String, Alarm)>,
    periods: clock::Receiver<u32>,
    cancel: CancellationToken,
) -> mpsc::Receiver<Watched> {
    let (tx, rx) = mpsc::channel(64);
    for (name, alarm) in alarms {
        let probe = Arc::new(sources::Probe::new(&alarm));
        let (period, statistic) = (alarm.period, alarm.statistic);
        let sample = move || {
            let probe = probe.clone();
            async move { probe.sample(period, statistic).await }
        };
        let watcher = tokio::spawn(watch_one(
            name.clone(),
            alarm,
            sample,
            tx.clone(),
            periods.clone(),
            cancel.clone(),
        ));
        tokio::spawn(supervise(name, watcher, tx.clone(), cancel.clone()));
    }
    rx
}

/// Waits for a watcher's end and reports it as [`Watched::Lost`] unless `cancel` ended it.
async fn supervise(
    alarm: String,
    watcher: tokio::task::JoinHandle<()>,
    tx: mpsc::Sender<Watched>,
    cancel: CancellationToken,
) {
    let why = match watcher.await {
        Ok(()) => "its watcher stopped".to_string(),
        Err(e) if e.is_panic() => {
            let panic = e.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            format!("its watcher panicked: {message}")
        }
        Err(e) => format!("its watcher ended: {e}"),
    };
    if !cancel.is_cancelled() {
        let _ = tx.send(Watched::Lost { alarm, why }).await;
    }
}

/// Samples one alarm every period and sends its evaluation, until `cancel` or until
/// nobody listens; a restart of `periods` abandons the period in progress (its partial
/// sample too) and starts the next at once. The window of datapoints carries over.
async fn watch_one<S, F>(
    name: String,
    alarm: Alarm,
    sample: S,
    tx: mpsc::Sender<Watched>,
    mut periods: clock::Receiver<u32>,
    cancel: CancellationToken,
) where
    S: Fn() -> F,
    F: Future<Output = sources::Sample>,
{
    let mut window: VecDeque<Option<f64>> = VecDeque::new();
    let mut state = AlarmState::InsufficientData;
    let mut restarts = *periods.borrow_and_update();
    let mut next = tokio::time::Instant::now();
    let mut period = 0u32;
    loop {
        next += alarm.period;
        let sources::Sample { value, note } = tokio::select! {
            _ = cancel.cancelled() => return,
            r = restarted(&mut periods) => {
                restarts = r;
                next = tokio::time::Instant::now();
                continue;
            }
            s = sample() => s,
        };
        period += 1;
        window.push_back(value);
        while window.len() > alarm.evaluation_periods as usize {
            window.pop_front();
        }
        let slice: Vec<Option<f64>> = window.iter().copied().collect();
        state = evaluate(&alarm, &slice, state);
        let eval = Evaluation {
            alarm: name.clone(),
            state,
            value,
            window: slice,
            note,
            at: SystemTime::now(),
            period,
            restarts,
        };
        if tx.send(Watched::Evaluation(eval)).await.is_err() {
            return;
        }
        // A probe that finished early waits for the period's end; a slow one
        // does not make the next period shorter than its probes need.
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = restarted(&mut periods) => {
                restarts = r;
                next = tokio::time::Instant::now();
                continue;
            }
            _ = tokio::time::sleep_until(next) => {}
        }
        next = next.max(tokio::time::Instant::now());
    }
}

/// The period clock's next restart count; never, once its owner is gone (the run is over).
async fn restarted(periods: &mut clock::Receiver<u32>) -> u32 {
    match periods.changed().await {
        Ok(()) => *periods.borrow_and_update(),
        Err(_) => std::future::pending().await,
    }
}

/// The longest window among alarms: how long the baseline and recovery phases last.
pub fn longest_window(alarms: &[(String, Alarm)]) -> Duration {
    alarms
        .iter()
        .map(|(_, a)| a.period * a.evaluation_periods)
        .max()
        .unwrap_or_default()
}

/// Where a run is, for the alarms: each phase is judged differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Before the first action: steady state must hold for a full window.
    Baseline,
    /// While actions run: ALARM stops the experiment.
    Experiment,
    /// After the last action: did the system come back?
    Recovery,
}

impl Phase {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Baseline => "baseline",
            Phase::Experiment => "experiment",
            Phase::Recovery => "recovery",
        }
    }

    /// Whether every alarm starts a fresh period when the run enters this phase. Recovery
    /// is judged on the periods that follow the last action, not on the rest of one that
    /// began while the actions ran. The experiment begins just after the baseline's last
    /// evaluation, so the baseline's clock serves it as well.
    fn starts_own_period(self) -> bool {
        self == Phase::Recovery
    }
}

/// What an alarm did during a run, for the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlarmReport {
    /// The alarm.
    pub name: String,
    pub statistic: crate::template::Statistic,
    pub comparison_operator: crate::template::Comparison,
    pub threshold: f64,
    /// State at the end of the run.
    pub state: AlarmState,
    /// State at the end of the baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_state: Option<AlarmState>,
    /// The newest datapoint.
    pub last_value: Option<f64>,
    /// The last window, oldest first.
    pub datapoints: Vec<Option<f64>>,
    /// When it first went into ALARM during the baseline or the experiment, and the window then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fired: Option<Fired>,
    /// Whether it was OK at the end of the recovery window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// From the start of recovery to its first OK evaluation, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered_after_ms: Option<f64>,
    /// What the probes said about the newest datapoint, e.g. failures behind an error rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_note: Option<String>,
}

/// An alarm going into ALARM.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fired {
    /// When.
    #[serde(serialize_with = "ser_ts")]
    pub at: SystemTime,
    /// In which phase.
    pub phase: Phase,
    /// The window that breached, oldest first.
    pub datapoints: Vec<Option<f64>>,
}

fn ser_ts<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string())
}

/// Every alarm of a run, phase by phase.
#[derive(Debug)]
pub struct Monitor {
    tracked: Vec<Tracked>,
    phase: Phase,
    phase_started: SystemTime,
    /// The watchers' period clock: how many times it restarted.
    periods: clock::Sender<u32>,
    /// The phase before the clock's last restart, which evaluations of a period begun
    /// before it belong to.
    before_restart: Phase,
}

#[derive(Debug)]
struct Tracked {
    name: String,
    alarm: Alarm,
    latest: Option<Evaluation>,
    in_phase: u32,
    baseline_state: Option<AlarmState>,
    fired: Option<Fired>,
    recovered_at: Option<SystemTime>,
    last_note: Option<String>,
}

impl Monitor {
    /// A monitor for these alarms, in the baseline phase.
    pub fn new(alarms: &[(String, Alarm)]) -> Monitor {
        Monitor {
            tracked: alarms
                .iter()
                .map(|(name, alarm)| Tracked {
                    name: name.clone(),
                    alarm: alarm.clone(),
                    latest: None,
                    in_phase: 0,
                    baseline_state: None,
                    fired: None,
                    recovered_at: None,
                    last_note: None,
                })
                .collect(),
            phase: Phase::Baseline,
            phase_started: SystemTime::now(),
            periods: clock::Sender::new(0),
            before_restart: Phase::Baseline,
        }
    }

    /// The period clock the run's watchers follow ([`watch`]); entering a phase that starts
    /// its own period restarts it.
    pub fn periods(&self) -> clock::Receiver<u32> {
        self.periods.subscribe()
    }

    /// The phase an evaluation belongs to: the one in which its period began.
    pub fn phase_of(&self, e: &Evaluation) -> Phase {
        if e.restarts < *self.periods.borrow() {
            self.before_restart
        } else {
            self.phase
        }
    }

    /// Moves to the next phase; each alarm's window starts counting again, from a fresh
    /// period when the phase starts its own.
    pub fn enter(&mut self, phase: Phase) {
        if self.phase == Phase::Baseline {
            for t in &mut self.tracked {
                t.baseline_state = t.latest.as_ref().map(|e| e.state);
            }
        }
        if phase.starts_own_period() {
            self.before_restart = self.phase;
            self.periods.send_modify(|r| *r += 1);
        }
        self.phase = phase;
        self.phase_started = SystemTime::now();
        self.tracked.iter_mut().for_each(|t| t.in_phase = 0);
    }

    /// Records an evaluation in the phase it belongs to ([`Monitor::phase_of`]); returns it
    /// when it is the alarm's first ALARM of the run read before recovery, i.e. when it must
    /// stop (or block) the experiment.
    pub fn record(&mut self, e: Evaluation) -> Option<Evaluation> {
        let phase = self.phase_of(&e);
        let current = phase == self.phase;
        let started = self.phase_started;
        let t = self.tracked.iter_mut().find(|t| t.name == e.alarm)?;
        // Only periods begun in this phase count towards its window.
        t.in_phase += u32::from(current);
        t.last_note = e.note.clone();
        // Once recovery has begun the actions are over: an ALARM read then, even of a period
        // begun during the experiment, has nothing left to stop, so it is no firing (the
        // run's outcome, its exit code and its report must agree).
        let fires = e.state == AlarmState::Alarm && self.phase != Phase::Recovery && t.fired.is_none();
        if fires {
            t.fired = Some(Fired {
                at: e.at,
                phase,
                datapoints: e.window.clone(),
            });
        }
        if phase == Phase::Recovery && e.state == AlarmState::Ok && t.recovered_at.is_none() {
            t.recovered_at = Some(e.at.max(started));
        }
        t.latest = Some(e.clone());
        fires.then_some(e)
    }

    /// Whether every alarm has been evaluated over a full window in this phase.
    pub fn window_complete(&self) -> bool {
        self.tracked.iter().all(|t| t.in_phase >= t.alarm.evaluation_periods)
    }

    /// Whether every alarm is OK now (recovery).
    pub fn all_ok(&self) -> bool {
        self.tracked
            .iter()
            .all(|t| t.latest.as_ref().is_some_and(|e| e.state == AlarmState::Ok))
    }

    /// From the start of recovery until every alarm had been OK once, if they all were.
    pub fn recovery_time(&self, recovery_started: SystemTime) -> Option<Duration> {
        self.tracked
            .iter()
            .map(|t| t.recovered_at.and_then(|at| at.duration_since(recovery_started).ok()))
            .collect::<Option<Vec<_>>>()
            .map(|v| v.into_iter().max().unwrap_or_default())
    }

    /// Per-alarm report; `recovery_started` when a recovery phase ran.
    pub fn report(&self, recovery_started: Option<SystemTime>) -> Vec<AlarmReport> {
        self.tracked
            .iter()
            .map(|t| {
                let latest = t.latest.as_ref();
                AlarmReport {
                    name: t.name.clone(),
                    statistic: t.alarm.statistic,
                    comparison_operator: t.alarm.comparison,
                    threshold: t.alarm.threshold,
                    state: latest.map_or(AlarmState::InsufficientData, |e| e.state),
                    baseline_state: t.baseline_state,
                    last_value: latest.and_then(|e| e.value),
                    datapoints: latest.map(|e| e.window.clone()).unwrap_or_default(),
                    fired: t.fired.clone(),
                    recovered: recovery_started.map(|_| latest.is_some_and(|e| e.state == AlarmState::Ok)),
                    recovered_after_ms: recovery_started
                        .zip(t.recovered_at)
                        .and_then(|(s, at)| at.duration_since(s).ok())
                        .map(|d| d.as_secs_f64() * 1000.0),
                    last_note: t.last_note.clone(),
                }
            })
            .collect()
    }
}

/// The steady-state hypothesis, checked before and after the actions.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SteadyState {
    /// `ok` when every alarm held for a full window before the first action, else `breaching`.
    pub baseline: String,
    /// Whether every alarm was OK at the end of a full window after the last action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// From the end of the last action until every alarm had been OK, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::{Comparison, MetricSource, Statistic};

    #[tokio::test]
    async fn a_watcher_that_panics_is_reported_lost() {
        let (tx, mut rx) = mpsc::channel(4);
        let watcher = tokio::spawn(async { panic!("probe exploded") });
        supervise("errors".into(), watcher, tx, CancellationToken::new()).await;
        match rx.recv().await {
            Some(Watched::Lost { alarm, why }) => {
                assert_eq!(alarm, "errors");
                assert!(why.contains("probe exploded"), "{why}");
            }
            other => panic!("expected a lost watcher, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_cancelled_watcher_is_not_lost() {
        let (tx, mut rx) = mpsc::channel(4);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let watcher = tokio::spawn(async {});
        supervise("errors".into(), watcher, tx, cancel).await;
        assert_eq!(rx.recv().await, None);
    }

    /// A watcher of a 100 ms alarm whose samples take no time; the instants (paused clock,
    /// from the start) at which each sample began.
    fn watched(
        periods: clock::Receiver<u32>,
    ) -> (
        mpsc::Receiver<Watched>,
        Arc<std::sync::Mutex<Vec<Duration>>>,
        CancellationToken,
    ) {
        let mut a = alarm(1, 1, TreatMissingData::Breaching);
        a.period = Duration::from_millis(100);
        let (tx, rx) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        let began = Arc::new(std::sync::Mutex::new(Vec::new()));
        let start = tokio::time::Instant::now();
        let log = began.clone();
        let sample = move || {
            log.lock().unwrap().push(start.elapsed());
            async {
                sources::Sample {
                    value: Some(1.0),
                    note: None,
                }
            }
        };
        tokio::spawn(watch_one("up".into(), a, sample, tx, periods, cancel.clone()));
        (rx, began, cancel)
    }

    async fn next(rx: &mut mpsc::Receiver<Watched>) -> Evaluation {
        match rx.recv().await {
            Some(Watched::Evaluation(e)) => e,
            other => panic!("expected an evaluation, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn recovery_starts_a_fresh_period_at_once() {
        let mut monitor = Monitor::new(&[("up".to_string(), alarm(1, 1, TreatMissingData::Breaching))]);
        let (mut rx, began, cancel) = watched(monitor.periods());
        let first = next(&mut rx).await;
        assert_eq!((first.period, first.restarts), (1, 0));
        monitor.enter(Phase::Experiment);
        // The actions end 30 ms into the alarm's second period.
        tokio::time::advance(Duration::from_millis(30)).await;
        monitor.enter(Phase::Recovery);
        let fresh = next(&mut rx).await;
        assert_eq!((fresh.period, fresh.restarts), (2, 1));
        assert_eq!(monitor.phase_of(&fresh), Phase::Recovery);
        // Then every period from there, not from the run's start.
        let after = next(&mut rx).await;
        assert_eq!(after.period, 3);
        let ms: Vec<u128> = began.lock().unwrap().iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 30, 130], "the recovery's period began when the actions ended");
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn the_baseline_samples_at_once() {
        let (_tx, periods) = clock::channel(0);
        let (mut rx, began, cancel) = watched(periods);
        next(&mut rx).await;
        assert_eq!(*began.lock().unwrap(), [Duration::ZERO]);
        cancel.cancel();
    }

    fn evaluation(state: AlarmState, period: u32, restarts: u32) -> Evaluation {
        Evaluation {
            alarm: "up".into(),
            state,
            value: Some(1.0),
            window: vec![Some(1.0)],
            note: None,
            at: SystemTime::now(),
            period,
            restarts,
        }
    }

    #[test]
    fn a_period_begun_before_recovery_belongs_to_the_experiment() {
        let mut monitor = Monitor::new(&[("up".to_string(), alarm(1, 1, TreatMissingData::Breaching))]);
        assert_eq!(monitor.record(evaluation(K, 1, 0)), None);
        assert!(monitor.window_complete());
        monitor.enter(Phase::Experiment);
        monitor.enter(Phase::Recovery);
        // Sent as the actions ended, read after: not a datapoint of the recovery window, and
        // no firing either: there is nothing left to stop.
        let late = evaluation(A, 2, 0);
        assert_eq!(monitor.phase_of(&late), Phase::Experiment);
        assert_eq!(monitor.record(late), None, "read after the actions ended");
        assert!(!monitor.window_complete());
        monitor.record(evaluation(K, 3, 1));
        assert!(monitor.window_complete());
        let report = &monitor.report(Some(SystemTime::UNIX_EPOCH))[0];
        assert!(report.fired.is_none(), "the report agrees with the run's outcome");
        assert_eq!(report.recovered, Some(true));
    }

    fn alarm(n: u32, m: u32, treat: TreatMissingData) -> Alarm {
        Alarm {
            source: MetricSource::Command {
                run: vec!["true".into()],
                timeout: Duration::from_secs(1),
            },
            statistic: Statistic::Value,
            threshold: 10.0,
            comparison: Comparison::GreaterThanThreshold,
            period: Duration::from_secs(1),
            evaluation_periods: m,
            datapoints_to_alarm: n,
            treat_missing_data: treat,
        }
    }

    const X: Option<f64> = Some(20.0); // breaching
    const O: Option<f64> = Some(1.0); // not breaching
    const M: Option<f64> = None; // missing

    use AlarmState::{Alarm as A, InsufficientData as I, Ok as K};

    #[test]
    fn n_out_of_m_with_every_treatment_of_missing_data() {
        // (window oldest first, state before) -> [missing, ignore, breaching, notBreaching]
        type Case<'a> = (&'a [Option<f64>], AlarmState, [AlarmState; 4]);
        let cases: [Case; 9] = [
            (&[O, X, X], K, [K, K, K, K]),
            (&[X, X, X], K, [A, A, A, A]),
            (&[O, X, M], K, [K, K, K, K]),
            (&[O, O, M], A, [K, K, K, K]),
            (&[X, X, M], K, [A, A, A, K]),
            (&[O, M, M], K, [K, K, K, K]),
            (&[X, M, M], K, [A, A, A, K]),
            (&[M, M, M], A, [I, A, A, K]),
            (&[M, M, M], K, [I, K, A, K]),
        ];
        let treatments = [
            TreatMissingData::Missing,
            TreatMissingData::Ignore,
            TreatMissingData::Breaching,
            TreatMissingData::NotBreaching,
        ];
        for (window, before, expected) in cases {
            for (treat, want) in treatments.iter().zip(expected) {
                let got = evaluate(&alarm(3, 3, *treat), window, before);
                assert_eq!(got, want, "3 of 3, {treat:?}, window {window:?}, before {before:?}");
            }
        }
    }

    #[test]
    fn m_out_of_n_needs_only_n_breaching() {
        let a = alarm(2, 3, TreatMissingData::NotBreaching);
        assert_eq!(evaluate(&a, &[X, O, X], K), A);
        assert_eq!(evaluate(&a, &[X, O, O], A), K);
    }

    #[test]
    fn a_young_window_is_not_missing_data() {
        let a = alarm(2, 3, TreatMissingData::Breaching);
        assert_eq!(evaluate(&a, &[], K), I);
        assert_eq!(evaluate(&a, &[O], I), K);
        assert_eq!(
            evaluate(&a, &[X], I),
            K,
            "one breaching period of a 2-of-3 alarm is not enough"
        );
        assert_eq!(evaluate(&a, &[X, M], K), A, "missing counts as breaching by default");
    }
}
