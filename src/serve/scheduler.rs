//! Schedules: a cron expression (seconds allowed) in an IANA time zone, allowed windows,
//! a minimum gap between runs, blackout dates, paused or not. What is due is decided by
//! pure functions of explicit times ([`decide`]), so that the rules are tested without a
//! clock; the loop ([`run`]) feeds them the wall clock once a second or at the next fire time.

use super::store::{now_ms, StoreError};
use super::{Service, Started};
use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, TimeZone, Timelike, Utc, Weekday};
use chrono_tz::Tz;
use croner::Cron;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How many fire times one decision looks at: a server down for long records this many
/// missed runs at most, the latest ones.
const MAX_FIRES: usize = 1000;
/// How far ahead `next runs` looks for an allowed fire time.
const MAX_LOOKAHEAD: usize = 100_000;
/// How far ahead the next runs are looked for: a schedule whose windows admit none within
/// it shows none, rather than scanning years of ticks.
pub const NEXT_RUNS_HORIZON_MS: i64 = 30 * 24 * 3600 * 1000;

/// A schedule as posted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    /// The stored template it runs (latest version at each run).
    pub template: String,
    /// Cron expression: 5 fields, or 6 with seconds first.
    pub cron: String,
    /// IANA time zone of the expression, the windows and the blackout dates.
    #[serde(default = "utc")]
    pub timezone: String,
    /// When runs may start; none = any time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowSpec>,
    /// Minimum time between two runs' starts (ISO 8601).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_interval: Option<String>,
    /// Local dates on which nothing runs (YYYY-MM-DD).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blackout_dates: Vec<String>,
}

fn utc() -> String {
    "UTC".into()
}

/// An allowed window as posted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WindowSpec {
    /// Days it applies to: `Mon` … `Sun`.
    pub days: Vec<String>,
    /// Local start, `HH:MM` (inclusive).
    pub start: String,
    /// Local end, `HH:MM` (exclusive); `24:00` is the end of the day.
    pub end: String,
}

/// Why a schedule is not valid; `pointer` says where in the posted JSON.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{pointer}: {message}")]
pub struct SpecError {
    /// JSON pointer into the schedule.
    pub pointer: String,
    /// What is wrong.
    pub message: String,
}

fn err(pointer: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        pointer: pointer.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone)]
struct Window {
    /// Bit `n` set: the window applies on the n-th day from Monday.
    days: u8,
    start: NaiveTime,
    /// `None`: the end of the day.
    end: Option<NaiveTime>,
}

/// A schedule ready to answer when it fires.
#[derive(Debug, Clone)]
pub struct Compiled {
    cron: Cron,
    tz: Tz,
    windows: Vec<Window>,
    min_interval: Option<i64>,
    blackouts: BTreeSet<NaiveDate>,
}

fn hhmm(s: &str, pointer: &str) -> Result<Option<NaiveTime>, SpecError> {
    if s == "24:00" {
        return Ok(None);
    }
    NaiveTime::parse_from_str(s, "%H:%M")
        .map(Some)
        .map_err(|_| err(pointer, format!("{s:?} is not a time of day HH:MM")))
}

impl Compiled {
    /// Checks a spec and prepares it.
    pub fn new(spec: &Spec) -> Result<Compiled, SpecError> {
        if spec.name.is_empty() || spec.name.contains('/') {
            return Err(err("/name", "a name is required, without '/'"));
        }
        let cron = Cron::new(&spec.cron)
            .with_seconds_optional()
            .parse()
            .map_err(|e| err("/cron", format!("{:?} is not a cron expression: {e}", spec.cron)))?;
        let tz: Tz = spec.timezone.parse().map_err(|_| {
            err(
                "/timezone",
                format!("{:?} is not an IANA time zone (e.g. Europe/Paris)", spec.timezone),
            )
        })?;
        let mut windows = Vec::new();
        for (i, w) in spec.windows.iter().enumerate() {
            let at = format!("/windows/{i}");
            let mut days = 0u8;
            for (j, d) in w.days.iter().enumerate() {
                let day: Weekday = d
                    .parse()
                    .map_err(|_| err(format!("{at}/days/{j}"), format!("{d:?} is not a day (Mon … Sun)")))?;
                days |= 1 << day.num_days_from_monday();
            }
            if days == 0 {
                return Err(err(format!("{at}/days"), "a window needs at least one day"));
            }
            let start = hhmm(&w.start, &format!("{at}/start"))?
                .ok_or_else(|| err(format!("{at}/start"), "a window starts before 24:00"))?;
            let end = hhmm(&w.end, &format!("{at}/end"))?;
            if end.is_some_and(|e| e <= start) {
                return Err(err(
                    format!("{at}/end"),
                    "the end must be after the start on the same day (use two windows across midnight)",
                ));
            }
            windows.push(Window { days, start, end });
        }
        let min_interval = spec
            .min_interval
            .as_deref()
            .map(|m| {
                crate::duration::parse(m)
                    .map(|d| d.as_millis() as i64)
                    .map_err(|e| err("/minInterval", e.to_string()))
            })
            .transpose()?;
        let blackouts = spec
            .blackout_dates
            .iter()
            .enumerate()
            .map(|(i, d)| {
                NaiveDate::parse_from_str(d, "%Y-%m-%d")
                    .map_err(|_| err(format!("/blackoutDates/{i}"), format!("{d:?} is not a date YYYY-MM-DD")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Compiled {
            cron,
            tz,
            windows,
            min_interval,
            blackouts,
        })
    }

    fn local(&self, ms: i64) -> DateTime<Tz> {
        self.tz.timestamp_millis_opt(ms).single().unwrap_or_else(|| {
            // Out of chrono's range: only reachable with absurd input; the epoch is harmless.
            self.tz
                .timestamp_millis_opt(0)
                .single()
                .expect("the epoch exists in every zone")
        })
    }

    /// Fire times in (`after`, `until`], ms; the latest [`MAX_FIRES`] of them.
    pub fn fire_times(&self, after: i64, until: i64) -> Vec<i64> {
        let mut fires = Vec::new();
        // Whole seconds: the cron expression has no finer unit.
        let start = self.local(after.div_euclid(1000) * 1000);
        for t in self.cron.iter_after(start) {
            let ms = t.timestamp_millis();
            if ms > until {
                break;
            }
            if ms > after {
                fires.push(ms);
                if fires.len() > MAX_FIRES {
                    fires.remove(0);
                }
            }
        }
        fires
    }

    /// Whether a run may start at `ms`: in a window (when there are any), not on a blackout date.
    pub fn allowed(&self, ms: i64) -> bool {
        let t = self.local(ms);
        if self.blackouts.contains(&t.date_naive()) {
            return false;
        }
        let time = NaiveTime::from_hms_opt(t.hour(), t.minute(), t.second()).expect("a valid time of day");
        self.windows.is_empty()
            || self.windows.iter().any(|w| {
                w.days & (1 << t.weekday().num_days_from_monday()) != 0
                    && time >= w.start
                    && w.end.is_none_or(|e| time < e)
            })
    }

    /// The next `n` fire times after `from`, within [`NEXT_RUNS_HORIZON_MS`], at which a run
    /// may start.
    pub fn next_runs(&self, from: i64, n: usize) -> Vec<i64> {
        let horizon = from.saturating_add(NEXT_RUNS_HORIZON_MS);
        self.cron
            .iter_after(self.local(from.div_euclid(1000) * 1000))
            .take(MAX_LOOKAHEAD)
            .map(|t| t.timestamp_millis())
            .take_while(|&ms| ms <= horizon)
            .filter(|&ms| self.allowed(ms))
            .take(n)
            .collect()
    }
}

/// What to do at one fire time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Start a run.
    Run,
    /// It passed while the server was down: record it, do not replay it.
    Missed,
    /// Too soon after the previous run (`minInterval`): record it as skipped.
    TooSoon,
}

/// The fire times in (`after`, `until`] that matter and what to do at each: those outside
/// the windows or on blackout dates are not runs at all; those before `up_since` (the
/// server's start) were missed; those within `minInterval` of the last started run
/// (`last_started`) are too soon.
pub fn decide(c: &Compiled, after: i64, until: i64, up_since: i64, mut last_started: Option<i64>) -> Vec<(i64, Due)> {
    c.fire_times(after, until)
        .into_iter()
        .filter(|&t| c.allowed(t))
        .map(|t| {
            let due = if t < up_since {
                Due::Missed
            } else if let (Some(gap), Some(last)) = (c.min_interval, last_started) {
                if t - last < gap {
                    Due::TooSoon
                } else {
                    Due::Run
                }
            } else {
                Due::Run
            };
            if due == Due::Run {
                last_started = Some(t);
            }
            (t, due)
        })
        .collect()
}

/// A wall-clock instant as RFC 3339 (UTC, ms), for messages and the API.
pub fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms).single().map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// Decides and starts what is due on every schedule up to `now` (ms).
pub async fn tick(service: &Arc<Service>, now: i64) -> Result<(), StoreError> {
    let store = &service.store;
    for row in store.schedules().await? {
        let spec: Spec = match serde_json::from_value(row.spec.clone()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(schedule = %row.name, error = %e, "stored schedule does not parse; skipped");
                continue;
            }
        };
        let compiled = match Compiled::new(&spec) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(schedule = %row.name, error = %e, "stored schedule is invalid; skipped");
                continue;
            }
        };
        if row.paused {
            // Fire times while paused are not runs: nothing to record, nothing to catch up.
            store.checked(&row.name, now).await?;
            continue;
        }
        let last = store.last_started(&row.name).await?;
        for (t, due) in decide(&compiled, row.checked_until, now, service.up_since, last) {
            match due {
                Due::Missed => {
                    store
                        .claim_run(
                            &row.name,
                            t,
                            "missed",
                            Some("the server was not running"),
                            &service.replica,
                        )
                        .await?;
                }
                Due::TooSoon => {
                    let reason = format!(
                        "less than minInterval {} after the run at {}",
                        spec.min_interval.as_deref().unwrap_or_default(),
                        last.map_or_else(String::new, rfc3339)
                    );
                    store
                        .claim_run(&row.name, t, "skipped", Some(&reason), &service.replica)
                        .await?;
                }
                Due::Run => {
                    if !store
                        .claim_run(&row.name, t, "starting", None, &service.replica)
                        .await?
                    {
                        continue; // another replica has it
                    }
                    let (outcome, id, reason) = match service.start_scheduled(&spec).await {
                        Ok(Started::Running { id }) => ("started", Some(id), None),
                        Ok(Started::Refused { id, state, reason }) => (
                            if state == "cancelled" { "cancelled" } else { "failed" },
                            Some(id),
                            Some(reason),
                        ),
                        Ok(Started::Overlaps { reason }) => ("skipped", None, Some(reason)),
                        Err(e) => ("failed", None, Some(e.to_string())),
                    };
                    tracing::info!(schedule = %row.name, fire_at = %rfc3339(t), outcome, experiment = id.as_deref().unwrap_or("-"), "scheduled run");
                    store
                        .settle_run(&row.name, t, outcome, id.as_deref(), reason.as_deref())
                        .await?;
                }
            }
        }
        store.checked(&row.name, now).await?;
    }
    Ok(())
}

/// Runs the schedules until `cancel`.
pub async fn run(service: Arc<Service>, cancel: CancellationToken) {
    loop {
        let now = now_ms();
        if let Err(e) = tick(&service, now).await {
            tracing::warn!(error = %e, "scheduler tick failed; retrying");
        }
        // Wake at the next whole second: fire times are whole seconds, and new schedules are
        // picked up within one.
        let wait = 1000 - now_ms().rem_euclid(1000) + 5;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(cron: &str) -> Spec {
        Spec {
            name: "s".into(),
            template: "t".into(),
            cron: cron.into(),
            timezone: "Europe/Paris".into(),
            windows: Vec::new(),
            min_interval: None,
            blackout_dates: Vec::new(),
        }
    }

    /// Milliseconds of a Paris local time (CET in November: UTC+1).
    fn paris(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        chrono_tz::Europe::Paris
            .with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn fire_times_follow_the_expression_in_its_zone() {
        let c = Compiled::new(&spec("0 0 9 * * *")).unwrap();
        let from = paris(2026, 11, 30, 8, 0, 0);
        let fires = c.fire_times(from, from + 2 * 86_400_000);
        assert_eq!(fires, vec![paris(2026, 11, 30, 9, 0, 0), paris(2026, 12, 1, 9, 0, 0)]);
        assert_eq!(rfc3339(fires[0]), "2026-11-30T08:00:00.000Z");
    }

    #[test]
    fn windows_and_blackouts_gate_runs() {
        let mut s = spec("0 0 * * * *");
        s.windows = vec![WindowSpec {
            days: vec!["Mon".into(), "Tue".into()],
            start: "09:00".into(),
            end: "17:00".into(),
        }];
        s.blackout_dates = vec!["2026-12-01".into()];
        let c = Compiled::new(&s).unwrap();
        // Monday 30 November 2026.
        assert!(!c.allowed(paris(2026, 11, 30, 8, 59, 59)));
        assert!(c.allowed(paris(2026, 11, 30, 9, 0, 0)));
        assert!(c.allowed(paris(2026, 11, 30, 16, 59, 59)));
        assert!(!c.allowed(paris(2026, 11, 30, 17, 0, 0)));
        // Tuesday is a blackout date, Wednesday not in a window.
        assert!(!c.allowed(paris(2026, 12, 1, 10, 0, 0)));
        assert!(!c.allowed(paris(2026, 12, 2, 10, 0, 0)));
        // The next allowed runs skip both, to the next Monday.
        let next = c.next_runs(paris(2026, 11, 30, 16, 30, 0), 2);
        assert_eq!(next, vec![paris(2026, 12, 7, 9, 0, 0), paris(2026, 12, 7, 10, 0, 0)]);
    }

    #[test]
    fn next_runs_look_thirty_days_ahead_at_most() {
        // Every 29 February: the next one is more than a year away.
        let c = Compiled::new(&spec("0 0 9 29 2 *")).unwrap();
        assert!(c.next_runs(paris(2026, 11, 30, 16, 30, 0), 5).is_empty());
        let c = Compiled::new(&spec("0 0 9 1 * *")).unwrap();
        let next = c.next_runs(paris(2026, 11, 30, 16, 30, 0), 5);
        assert_eq!(next, vec![paris(2026, 12, 1, 9, 0, 0)]);
    }

    #[test]
    fn missed_runs_are_those_before_the_start_and_min_interval_skips() {
        let mut s = spec("*/10 * * * * *");
        s.min_interval = Some("PT25S".into());
        let c = Compiled::new(&s).unwrap();
        let t0 = paris(2026, 11, 30, 10, 0, 0);
        // Down from t0 until t0+30s; decided at t0+60s; last run at t0-10s.
        let d = decide(&c, t0, t0 + 60_000, t0 + 30_000, Some(t0 - 10_000));
        let dues: Vec<(i64, Due)> = d.into_iter().map(|(t, due)| ((t - t0) / 1000, due)).collect();
        assert_eq!(
            dues,
            vec![
                (10, Due::Missed),
                (20, Due::Missed),
                (30, Due::Run),
                (40, Due::TooSoon),
                (50, Due::TooSoon),
                (60, Due::Run),
            ]
        );
    }

    #[test]
    fn a_run_outside_every_window_never_comes() {
        let mut s = spec("* * * * * *");
        s.timezone = "UTC".into();
        s.windows = vec![WindowSpec {
            days: vec!["Sat".into()],
            start: "00:00".into(),
            end: "00:01".into(),
        }];
        let c = Compiled::new(&s).unwrap();
        // Monday, a whole hour of every-second fire times.
        let t0 = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap().timestamp_millis();
        assert!(decide(&c, t0, t0 + 3_600_000, t0, None).is_empty());
    }

    #[test]
    fn day_names_and_ranges_are_understood() {
        let c = Compiled::new(&spec("0 0 10 * * Mon-Fri")).unwrap();
        let fires = c.fire_times(paris(2026, 12, 4, 11, 0, 0), paris(2026, 12, 8, 11, 0, 0));
        // Friday 4 December at 10:00 is before the start; then Monday and Tuesday.
        assert_eq!(fires, vec![paris(2026, 12, 7, 10, 0, 0), paris(2026, 12, 8, 10, 0, 0)]);
    }

    /// A service on an in-memory database whose agents' endpoint nobody dials.
    async fn service() -> Arc<Service> {
        let store = crate::serve::store::Store::open("sqlite::memory:").await.unwrap();
        let controller =
            crate::controller::Controller::start("127.0.0.1:0".parse().unwrap(), "t".into(), Default::default())
                .await
                .unwrap();
        Service::new(
            store,
            Arc::new(controller),
            std::env::temp_dir().join("faultline-unit-journals"),
            crate::serve::policy::Policy::default(),
        )
    }

    #[tokio::test]
    async fn ticks_decide_each_fire_time_once_and_the_lever_cancels_them() {
        let svc = service().await;
        let template = serde_json::json!({
            "description": "only wait",
            "actions": { "W": { "actionId": "aws:fis:wait", "parameters": { "duration": "PT1S" } } },
            "stopConditions": [{ "source": "none" }]
        });
        svc.store.put_template("wait", &template, "test").await.unwrap();
        let every_second = serde_json::to_value(Spec {
            template: "wait".into(),
            timezone: "UTC".into(),
            ..spec("* * * * * *")
        })
        .unwrap();
        svc.store.insert_schedule("s", &every_second, "test").await.unwrap();
        svc.set_lever(true, "drill", "test").await.unwrap();

        let now = svc.store.schedules().await.unwrap()[0].checked_until;
        tick(&svc, now + 3_000).await.unwrap();
        // Deciding the same instant again adds nothing.
        tick(&svc, now + 3_000).await.unwrap();
        let runs = svc.store.schedule_runs(Some("s"), 100).await.unwrap();
        assert_eq!(runs.len(), 3, "{runs:?}");
        for r in &runs {
            assert_eq!(r.outcome, "cancelled", "{r:?}");
            let e = svc
                .store
                .experiment(r.experiment_id.as_deref().unwrap())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(e.state, "cancelled");
            assert!(e.reason.unwrap().contains("drill"));
        }

        // Paused, fire times pass without a trace, and are not caught up once resumed.
        svc.store.set_paused("s", true).await.unwrap();
        tick(&svc, now + 6_000).await.unwrap();
        svc.store.set_paused("s", false).await.unwrap();
        tick(&svc, now + 6_000).await.unwrap();
        assert_eq!(svc.store.schedule_runs(Some("s"), 100).await.unwrap().len(), 3);
    }

    #[test]
    fn bad_specs_point_at_the_field() {
        let mut s = spec("not cron");
        assert_eq!(Compiled::new(&s).unwrap_err().pointer, "/cron");
        s = spec("* * * * *");
        s.timezone = "Mars/Olympus".into();
        assert_eq!(Compiled::new(&s).unwrap_err().pointer, "/timezone");
        s = spec("* * * * *");
        s.windows = vec![WindowSpec {
            days: vec!["Funday".into()],
            start: "09:00".into(),
            end: "17:00".into(),
        }];
        assert_eq!(Compiled::new(&s).unwrap_err().pointer, "/windows/0/days/0");
        s.windows[0].days = vec!["Fri".into()];
        s.windows[0].end = "08:00".into();
        assert_eq!(Compiled::new(&s).unwrap_err().pointer, "/windows/0/end");
        s.windows.clear();
        s.min_interval = Some("an hour".into());
        assert_eq!(Compiled::new(&s).unwrap_err().pointer, "/minInterval");
    }
}
