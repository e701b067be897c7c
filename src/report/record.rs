//! A run as its journal tells it: the input of the game-day report ([`super::html`],
//! [`super::markdown`]). Built from journal lines alone, so a CI run's `--journal` file, a
//! server's stored journal and a live run all make the same report.

use super::experience::{self, PhaseFigures, Sample};
use crate::effect::HostEffect;
use crate::journal::{AlarmRule, Event, State};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Why a journal cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// Nothing in it.
    #[error("the journal is empty")]
    Empty,
    /// The first line is not a journal entry.
    #[error("not a faultline journal: line 1 is not a JSON object with `ts`, `experiment` and `event` ({0})")]
    NotAJournal(String),
    /// A line cannot be read.
    #[error("line {line} is unreadable: {cause}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// Why.
        cause: String,
    },
}

/// One journal line: its time and its event, when this build knows the event.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// When it happened.
    pub at: SystemTime,
    pub experiment: String,
    /// What happened; `None` for events this build does not know.
    pub event: Option<Event>,
    /// The line as written.
    pub raw: Value,
}

/// Parses JSON Lines text into journal lines.
pub fn parse(text: &str) -> Result<Vec<Line>, JournalError> {
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let n = i + 1;
        let unreadable = |cause: String| {
            if lines.is_empty() {
                JournalError::NotAJournal(cause)
            } else {
                JournalError::Line { line: n, cause }
            }
        };
        let v: Value = serde_json::from_str(raw).map_err(|e| unreadable(e.to_string()))?;
        let (Some(ts), Some(experiment), Some(_)) = (v["ts"].as_str(), v["experiment"].as_str(), v["event"].as_str())
        else {
            return Err(unreadable("`ts`, `experiment` or `event` is missing".into()));
        };
        let at = humantime::parse_rfc3339(ts).map_err(|e| unreadable(format!("`ts` {ts}: {e}")))?;
        lines.push(Line {
            at,
            experiment: experiment.to_string(),
            // Events of a newer faultline are skipped, not fatal.
            event: serde_json::from_value::<Event>(v.clone()).ok(),
            raw: v,
        });
    }
    if lines.is_empty() {
        return Err(JournalError::Empty);
    }
    Ok(lines)
}

/// Reads and parses a journal file.
pub fn read(path: &Path) -> Result<RunRecord, JournalError> {
    let text = std::fs::read_to_string(path).map_err(|source| JournalError::Read {
        path: path.display().to_string(),
        source,
    })?;
    RunRecord::from_jsonl(&text)
}

/// What became of one action.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionLine {
    /// Its actionId, from the template.
    pub action_id: String,
    /// Its description, from the template.
    pub description: Option<String>,
    /// Its parameters, from the template.
    pub parameters: BTreeMap<String, String>,
    /// The actions it started after.
    pub start_after: Vec<String>,
    /// The target it acted on.
    pub target: Option<String>,
    /// Its last state.
    pub state: State,
    /// Hosts a fault was sent to.
    pub hosts: Vec<String>,
    /// Hosts that applied it.
    pub applied: Vec<String>,
    /// When it began (initiating).
    pub started: Option<SystemTime>,
    /// When its faults were in effect (running).
    pub running: Option<SystemTime>,
    /// When it ended.
    pub ended: Option<SystemTime>,
    /// Why it failed or stopped.
    pub reason: Option<String>,
    /// What its fault did on each host, asked versus observed.
    pub observed: Vec<HostEffect>,
}

/// One evaluation of an alarm.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmPoint {
    /// When.
    pub at: SystemTime,
    /// The datapoint; `None` is missing.
    pub value: Option<f64>,
    /// `OK`, `ALARM` or `INSUFFICIENT_DATA`.
    pub state: String,
    /// `baseline`, `experiment` or `recovery`.
    pub phase: String,
}

/// An alarm and everything it saw.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AlarmLine {
    /// Its rule, when the journal has it.
    pub rule: Option<AlarmRule>,
    /// Its evaluations, in order.
    pub points: Vec<AlarmPoint>,
}

/// The stop of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Stop {
    /// When the run began stopping.
    pub at: SystemTime,
    /// Why.
    pub reason: String,
    /// The alarm evaluation that asked for it, when an alarm did: (alarm, when).
    pub fired: Option<(String, SystemTime)>,
    /// The last confirmed removal after it.
    pub last_removal: Option<SystemTime>,
}

impl Stop {
    /// From the alarm going into ALARM to the run stopping.
    pub fn reaction(&self) -> Option<Duration> {
        self.fired.as_ref().and_then(|(_, t)| self.at.duration_since(*t).ok())
    }

    /// From the stop to the last fault removed.
    pub fn rollback(&self) -> Option<Duration> {
        self.last_removal.and_then(|t| t.duration_since(self.at).ok())
    }
}

/// A run, from its journal.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub experiment_id: String,
    /// The template's description.
    pub description: String,
    /// The template as run, when the journal has it.
    pub template: Option<Value>,
    /// Seed of the target selection.
    pub seed: Option<u64>,
    /// First line's time.
    pub started_at: SystemTime,
    /// Last line's time.
    pub ended_at: SystemTime,
    /// The last experiment state.
    pub state: State,
    /// Why it did not complete.
    pub reason: Option<String>,
    /// Resources selected per target.
    pub targets: BTreeMap<String, Vec<String>>,
    /// Every action, by name.
    pub actions: BTreeMap<String, ActionLine>,
    /// Every alarm, by name.
    pub alarms: BTreeMap<String, AlarmLine>,
    /// What the users saw: every usable scrape.
    pub samples: Vec<Sample>,
    /// Scrapes that gave nothing, with the last reason.
    pub failed_scrapes: (usize, Option<String>),
    /// The stop, when the run was stopped or failed.
    pub stop: Option<Stop>,
    /// Removals no agent confirmed.
    pub unconfirmed_removals: usize,
}

impl RunRecord {
    /// What each fault did, figure by figure.
    pub fn effects(&self) -> Vec<super::EffectRow> {
        super::effect_rows(self.actions.iter().map(|(n, a)| (n.as_str(), a.observed.as_slice())))
    }

    /// The record of a run from its journal's text (JSON Lines), e.g. as a server keeps it.
    pub fn from_jsonl(text: &str) -> Result<RunRecord, JournalError> {
        Ok(RunRecord::from_lines(&parse(text)?))
    }

    /// The record of a run from its journal lines.
    pub fn from_lines(lines: &[Line]) -> RunRecord {
        let first = lines.first().map_or(SystemTime::UNIX_EPOCH, |l| l.at);
        let mut r = RunRecord {
            experiment_id: lines.first().map(|l| l.experiment.clone()).unwrap_or_default(),
            description: String::new(),
            template: None,
            seed: None,
            started_at: first,
            ended_at: lines.last().map_or(first, |l| l.at),
            state: State::Pending,
            reason: None,
            targets: BTreeMap::new(),
            actions: BTreeMap::new(),
            alarms: BTreeMap::new(),
            samples: Vec::new(),
            failed_scrapes: (0, None),
            stop: None,
            unconfirmed_removals: 0,
        };
        let mut fired: Option<(String, SystemTime)> = None;
        // Which action dispatched each fault: an `observed` line names only the fault.
        let mut fault_actions: BTreeMap<String, String> = BTreeMap::new();
        for line in lines {
            let at = line.at;
            // Read from the line itself: a newer fault's parameters must not hide its hosts.
            let (action, host) = (line.raw["action"].as_str(), line.raw["host"].as_str());
            match (line.raw["event"].as_str(), action, host) {
                (Some("dispatch"), Some(action), Some(host)) => {
                    if let Some(fault_id) = line.raw["fault_id"].as_str() {
                        fault_actions.insert(fault_id.into(), action.into());
                    }
                    let a = r.actions.entry(action.into()).or_insert_with(unknown_action);
                    if !a.hosts.iter().any(|h| h == host) {
                        a.hosts.push(host.into());
                    }
                }
                (Some("ack"), Some(action), Some(host)) if line.raw["outcome"]["status"] == "applied" => {
                    r.actions
                        .entry(action.into())
                        .or_insert_with(unknown_action)
                        .applied
                        .push(host.into());
                }
                _ => {}
            }
            let Some(event) = &line.event else { continue };
            match event {
                Event::RunStarted {
                    description,
                    seed,
                    template,
                    alarms,
                } => {
                    r.description = description.clone();
                    r.seed = Some(*seed);
                    r.template = Some(template.clone());
                    r.actions = actions_of(template);
                    for (name, rule) in alarms {
                        r.alarms.entry(name.clone()).or_default().rule = Some(rule.clone());
                    }
                }
                Event::ExperimentState { state, reason } => {
                    r.state = *state;
                    if state.is_final() {
                        r.reason = reason.clone();
                    }
                    if *state == State::Stopping && r.stop.is_none() {
                        r.stop = Some(Stop {
                            at,
                            reason: reason.clone().unwrap_or_default(),
                            fired: fired.clone(),
                            last_removal: None,
                        });
                    }
                }
                Event::TargetResolved { target, selected, .. } => {
                    r.targets.insert(target.clone(), selected.clone());
                }
                Event::ActionState {
                    action, state, reason, ..
                } => {
                    let a = r.actions.entry(action.clone()).or_insert_with(unknown_action);
                    a.state = *state;
                    match state {
                        State::Initiating => a.started = a.started.or(Some(at)),
                        State::Running => a.running = a.running.or(Some(at)),
                        s if s.is_final() && a.started.is_some() => a.ended = Some(at),
                        _ => {}
                    }
                    if reason.is_some() && *state != State::Running {
                        a.reason = reason.clone();
                    }
                }
                Event::Observed {
                    host,
                    fault_id,
                    observed,
                    ..
                } => {
                    if let Some(a) = fault_actions.get(fault_id).and_then(|a| r.actions.get_mut(a)) {
                        a.observed.retain(|e| &e.host != host);
                        a.observed.push(HostEffect::judge(host, observed));
                    }
                }
                Event::Removal { confirmed, .. } => {
                    if *confirmed {
                        if let Some(stop) = &mut r.stop {
                            stop.last_removal = Some(at);
                        }
                    } else {
                        r.unconfirmed_removals += 1;
                    }
                }
                Event::AlarmEvaluation {
                    alarm,
                    state,
                    value,
                    phase,
                    ..
                } => {
                    if state == "ALARM" && phase != "recovery" && fired.is_none() {
                        fired = Some((alarm.clone(), at));
                    }
                    r.alarms.entry(alarm.clone()).or_default().points.push(AlarmPoint {
                        at,
                        value: *value,
                        state: state.clone(),
                        phase: phase.clone(),
                    });
                }
                e @ Event::UserExperience { error, .. } => match Sample::from_event(at, e) {
                    Some(s) if s.requests.is_some() => r.samples.push(s),
                    _ => {
                        r.failed_scrapes.0 += 1;
                        r.failed_scrapes.1 = error.clone().or(r.failed_scrapes.1.take());
                    }
                },
                _ => {}
            }
        }
        r
    }

    /// When the first action began and the last one ended.
    pub fn action_span(&self) -> Option<(SystemTime, SystemTime)> {
        let start = self.actions.values().filter_map(|a| a.started).min()?;
        let end = self
            .actions
            .values()
            .filter_map(|a| a.ended.or(a.started))
            .max()
            .unwrap_or(start);
        Some((start, end))
    }

    /// The longest alarm window (period × evaluationPeriods).
    pub fn alarm_window(&self) -> Option<Duration> {
        self.alarms
            .values()
            .filter_map(|a| a.rule.as_ref())
            .map(|r| Duration::from_millis(r.period_ms) * r.evaluation_periods)
            .max()
    }

    /// The time the charts show: from `preExperimentDuration` before the first action to
    /// `postExperimentDuration` after the last (`experimentReportConfiguration`, as FIS),
    /// each defaulting to the alarm window, within what the journal holds.
    pub fn chart_window(&self) -> (SystemTime, SystemTime) {
        let Some((start, end)) = self.action_span() else {
            return (self.started_at, self.ended_at);
        };
        let config = |key: &str| {
            self.template
                .as_ref()
                .and_then(|t| t.pointer(&format!("/experimentReportConfiguration/{key}")))
                .and_then(Value::as_str)
                .and_then(|d| crate::duration::parse(d).ok())
        };
        let window = self.alarm_window();
        let pre = config("preExperimentDuration").or(window);
        let post = config("postExperimentDuration").or(window);
        let from = pre.and_then(|p| start.checked_sub(p)).unwrap_or(self.started_at);
        let to = post.map_or(self.ended_at, |p| end + p);
        (from.max(self.started_at), to.min(self.ended_at))
    }

    /// When every alarm had been OK again after the last action, and how long that took:
    /// `(recovery start, Some(time to recover))`, or `None` when no recovery was watched.
    pub fn recovery(&self) -> Option<(SystemTime, Option<Duration>)> {
        let points: Vec<&AlarmPoint> = self
            .alarms
            .values()
            .flat_map(|a| a.points.iter())
            .filter(|p| p.phase == "recovery")
            .collect();
        if points.is_empty() {
            return None;
        }
        let (_, end) = self.action_span()?;
        let recovered: Option<Vec<SystemTime>> = self
            .alarms
            .values()
            .map(|a| {
                // The first OK after which the alarm stayed OK.
                let recovery: Vec<&AlarmPoint> = a.points.iter().filter(|p| p.phase == "recovery").collect();
                let last_bad = recovery.iter().rposition(|p| p.state != "OK");
                match last_bad {
                    None => recovery.first().map(|p| p.at),
                    Some(i) => recovery.get(i + 1).map(|p| p.at),
                }
            })
            .collect();
        Some((
            end,
            recovered
                .and_then(|ts| ts.into_iter().max())
                .map(|t| t.duration_since(end).unwrap_or_default()),
        ))
    }

    /// What the users saw in each phase.
    pub fn user_experience(&self) -> Vec<PhaseFigures> {
        let started: Vec<(String, SystemTime, Option<SystemTime>)> = self
            .actions
            .iter()
            .filter_map(|(n, a)| Some((n.clone(), a.started?, a.ended)))
            .collect();
        experience::figures(&self.samples, &experience::windows(&started, &self.samples))
    }
}

fn unknown_action() -> ActionLine {
    ActionLine {
        action_id: "?".into(),
        description: None,
        parameters: BTreeMap::new(),
        start_after: Vec::new(),
        target: None,
        state: State::Pending,
        hosts: Vec::new(),
        applied: Vec::new(),
        started: None,
        running: None,
        ended: None,
        reason: None,
        observed: Vec::new(),
    }
}

/// The template's actions, none started yet.
fn actions_of(template: &Value) -> BTreeMap<String, ActionLine> {
    let Some(actions) = template.get("actions").and_then(Value::as_object) else {
        return BTreeMap::new();
    };
    actions
        .iter()
        .map(|(name, a)| {
            let strings = |v: &Value| -> Vec<String> {
                v.as_array()
                    .map(|l| l.iter().filter_map(Value::as_str).map(String::from).collect())
                    .unwrap_or_default()
            };
            let line = ActionLine {
                action_id: a["actionId"].as_str().unwrap_or("?").into(),
                description: a["description"].as_str().map(String::from),
                parameters: a["parameters"]
                    .as_object()
                    .map(|p| {
                        p.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), String::from)))
                            .collect()
                    })
                    .unwrap_or_default(),
                start_after: strings(&a["startAfter"]),
                target: a["targets"]
                    .as_object()
                    .and_then(|t| t.values().next())
                    .and_then(Value::as_str)
                    .map(String::from),
                ..unknown_action()
            };
            (name.clone(), line)
        })
        .collect()
}

/// The time of day of a timestamp, UTC, with milliseconds.
pub fn clock(t: SystemTime) -> String {
    let full = crate::journal::ts(&t);
    full.get(11..23).unwrap_or(&full).to_string()
}

/// A duration for people.
pub fn human(d: Duration) -> String {
    crate::duration::human(d)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small journal: a run stopped by an alarm, with what the users saw.
    pub(crate) fn journal() -> String {
        let lines = [
            r#"{"ts":"2026-11-30T10:00:00.000Z","experiment":"EXPtest","event":"experiment_state","state":"pending"}"#,
            r#"{"ts":"2026-11-30T10:00:00.010Z","experiment":"EXPtest","event":"run_started","description":"break <web> & see","seed":7,"template":{"description":"break <web> & see","actions":{"Slow":{"actionId":"faultline:network:latency","description":"slow it","parameters":{"duration":"PT4S","delayMilliseconds":"300"},"targets":{"Hosts":"Web"}}},"targets":{"Web":{"resourceType":"faultline:host","resourceIds":["web-a1"],"selectionMode":"ALL"}},"stopConditions":[{"source":"faultline:alarm","value":"Errors"}]},"alarms":{"Errors":{"statistic":"errorRate","comparison":">","threshold":0.5,"periodMs":1000,"evaluationPeriods":2,"datapointsToAlarm":2}}}"#,
            r#"{"ts":"2026-11-30T10:00:00.000Z","experiment":"EXPtest","event":"user_experience","requests":100.0,"errors":0.0,"buckets":[[0.01,100.0],[1.0,100.0]],"count":100.0}"#,
            r#"{"ts":"2026-11-30T10:00:01.000Z","experiment":"EXPtest","event":"alarm_evaluation","alarm":"Errors","state":"OK","value":0.0,"datapoints":[0.0],"phase":"baseline"}"#,
            r#"{"ts":"2026-11-30T10:00:02.000Z","experiment":"EXPtest","event":"alarm_evaluation","alarm":"Errors","state":"OK","value":0.0,"datapoints":[0.0,0.0],"phase":"baseline"}"#,
            r#"{"ts":"2026-11-30T10:00:02.000Z","experiment":"EXPtest","event":"user_experience","requests":120.0,"errors":0.0,"buckets":[[0.01,120.0],[1.0,120.0]],"count":120.0}"#,
            r#"{"ts":"2026-11-30T10:00:02.010Z","experiment":"EXPtest","event":"experiment_state","state":"initiating"}"#,
            r#"{"ts":"2026-11-30T10:00:02.011Z","experiment":"EXPtest","event":"target_resolved","target":"Web","selected":["web-a1"],"matched":1}"#,
            r#"{"ts":"2026-11-30T10:00:02.012Z","experiment":"EXPtest","event":"experiment_state","state":"running"}"#,
            r#"{"ts":"2026-11-30T10:00:02.013Z","experiment":"EXPtest","event":"action_state","action":"Slow","state":"initiating"}"#,
            r#"{"ts":"2026-11-30T10:00:02.014Z","experiment":"EXPtest","event":"dispatch","action":"Slow","host":"web-a1","fault_id":"EXPtest/Slow/web-a1","fault":{"kind":"latency","delay_ms":300,"jitter_ms":0,"loss_percent":0}}"#,
            r#"{"ts":"2026-11-30T10:00:02.020Z","experiment":"EXPtest","event":"action_state","action":"Slow","state":"running","duration_ms":4000}"#,
            r#"{"ts":"2026-11-30T10:00:03.000Z","experiment":"EXPtest","event":"alarm_evaluation","alarm":"Errors","state":"OK","value":1.0,"datapoints":[1.0],"phase":"experiment"}"#,
            r#"{"ts":"2026-11-30T10:00:04.000Z","experiment":"EXPtest","event":"user_experience","requests":130.0,"errors":8.0,"buckets":[[0.01,120.0],[1.0,130.0]],"count":130.0}"#,
            r#"{"ts":"2026-11-30T10:00:04.000Z","experiment":"EXPtest","event":"alarm_evaluation","alarm":"Errors","state":"ALARM","value":1.0,"datapoints":[1.0,1.0],"phase":"experiment"}"#,
            r#"{"ts":"2026-11-30T10:00:04.002Z","experiment":"EXPtest","event":"experiment_state","state":"stopping","reason":"stop condition Errors went into ALARM (2 of the last 2 datapoints [1.0000, 1.0000] errorRate > 0.5)"}"#,
            r#"{"ts":"2026-11-30T10:00:04.003Z","experiment":"EXPtest","event":"action_state","action":"Slow","state":"stopping"}"#,
            r#"{"ts":"2026-11-30T10:00:04.010Z","experiment":"EXPtest","event":"removal","action":"Slow","host":"web-a1","fault_id":"EXPtest/Slow/web-a1","by":"controller","confirmed":true,"latency_ms":7.0}"#,
            r#"{"ts":"2026-11-30T10:00:04.010Z","experiment":"EXPtest","event":"observed","host":"web-a1","fault_id":"EXPtest/Slow/web-a1","observed":{"figures":[{"name":"delay_added_ms","unit":"ms","asked":300.0,"observed":120.0},{"name":"connections_delayed","unit":"connections","observed":14.0}]},"far":["delay_added_ms observed 120.0 ms but 300.0 ms was asked (expected at least 90 %)"]}"#,
            r#"{"ts":"2026-11-30T10:00:04.011Z","experiment":"EXPtest","event":"action_state","action":"Slow","state":"stopped","reason":"the experiment is stopping"}"#,
            r#"{"ts":"2026-11-30T10:00:04.012Z","experiment":"EXPtest","event":"experiment_state","state":"stopped","reason":"stop condition Errors went into ALARM (2 of the last 2 datapoints [1.0000, 1.0000] errorRate > 0.5)"}"#,
            r#"{"ts":"2026-11-30T10:00:05.000Z","experiment":"EXPtest","event":"alarm_evaluation","alarm":"Errors","state":"ALARM","value":1.0,"datapoints":[1.0,1.0],"phase":"recovery"}"#,
            r#"{"ts":"2026-11-30T10:00:06.000Z","experiment":"EXPtest","event":"user_experience","requests":150.0,"errors":8.0,"buckets":[[0.01,150.0],[1.0,160.0]],"count":150.0}"#,
            r#"{"ts":"2026-11-30T10:00:06.000Z","experiment":"EXPtest","event":"alarm_evaluation","alarm":"Errors","state":"OK","value":0.0,"datapoints":[1.0,0.0],"phase":"recovery"}"#,
            r#"{"ts":"2026-11-30T10:00:06.100Z","experiment":"EXPtest","event":"some_future_event","x":1}"#,
        ];
        lines.join("\n") + "\n"
    }

    pub(crate) fn record() -> RunRecord {
        RunRecord::from_lines(&parse(&journal()).unwrap())
    }

    #[test]
    fn a_journal_tells_the_run() {
        let r = record();
        assert_eq!(r.experiment_id, "EXPtest");
        assert_eq!(r.state, State::Stopped);
        assert_eq!(r.seed, Some(7));
        assert_eq!(r.targets["Web"], ["web-a1"]);
        let slow = &r.actions["Slow"];
        assert_eq!(slow.action_id, "faultline:network:latency");
        assert_eq!(slow.state, State::Stopped);
        assert_eq!(slow.hosts, ["web-a1"]);
        assert_eq!(slow.observed.len(), 1);
        assert_eq!(slow.observed[0].host, "web-a1");
        assert_eq!(slow.observed[0].warnings.len(), 1, "judged again from the figures");
        let effects = r.effects();
        assert_eq!(effects.len(), 2);
        assert!(effects[0].far && !effects[1].far);
        assert_eq!(effects[1].asked, "-");
        let stop = r.stop.as_ref().unwrap();
        assert_eq!(stop.fired.as_ref().unwrap().0, "Errors");
        assert_eq!(stop.reaction(), Some(Duration::from_millis(2)));
        assert_eq!(stop.rollback(), Some(Duration::from_millis(8)));
        let (_, took) = r.recovery().unwrap();
        assert_eq!(took, Some(Duration::from_millis(1989)));
        let ux = r.user_experience();
        let phases: Vec<&str> = ux.iter().map(|f| f.phase.as_str()).collect();
        assert_eq!(phases, ["baseline", "Slow", "recovery"]);
        assert_eq!(ux[0].request_rate, Some(10.0));
        assert_eq!(ux[1].error_rate, Some(0.8));
    }

    #[test]
    fn charts_cover_the_alarm_window_or_the_report_configuration() {
        let mut r = record();
        let (from, to) = r.chart_window();
        // The alarm window is 2 s, before the action and after it.
        assert_eq!((clock(from), clock(to)), ("10:00:00.013".into(), "10:00:06.011".into()));
        r.template.as_mut().unwrap()["experimentReportConfiguration"] =
            serde_json::json!({ "preExperimentDuration": "PT1S", "postExperimentDuration": "PT1S" });
        let (from, to) = r.chart_window();
        assert_eq!((clock(from), clock(to)), ("10:00:01.013".into(), "10:00:05.011".into()));
    }

    #[test]
    fn unreadable_journals_say_where() {
        assert!(matches!(parse(""), Err(JournalError::Empty)));
        let e = parse("hello\n").unwrap_err();
        assert!(e.to_string().starts_with("not a faultline journal"), "{e}");
        let e = parse("{\"a\": 1}\n").unwrap_err();
        assert!(matches!(e, JournalError::NotAJournal(_)), "{e}");
        let text = journal().replacen("{\"ts\":\"2026-11-30T10:00:01.000Z\"", "{\"ts\":", 1);
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().starts_with("line 4 is unreadable"), "{e}");
    }
}
