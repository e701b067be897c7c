//! What the users saw, phase by phase: the request rate, error rate and p50/p99 latency of
//! the baseline, each action and the recovery, taken from the increase of the counters that
//! [`crate::alarms::experience`] scraped over the phase.

pub use crate::alarms::experience::{Exposition, Sample};
use comfy_table::Cell;
use serde::Serialize;
use std::time::SystemTime;

/// Which part of the run a phase is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PhaseKind {
    /// Before the first action.
    Baseline,
    /// While an action ran.
    Action,
    /// After the last action.
    Recovery,
}

/// A stretch of the run to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// `baseline`, the action's name, or `recovery`.
    pub name: String,
    /// Which part it is.
    pub kind: PhaseKind,
    /// Start.
    pub from: SystemTime,
    /// End.
    pub to: SystemTime,
}

/// The windows of a run: the baseline up to the first action's start, each action from its
/// start to its end, and the recovery from the last action's end to the last sample.
/// `actions` are `(name, start, end)`; actions that never started are left out.
pub fn windows(actions: &[(String, SystemTime, Option<SystemTime>)], samples: &[Sample]) -> Vec<Window> {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let start = actions.iter().map(|a| a.1).min();
    out.push(Window {
        name: "baseline".into(),
        kind: PhaseKind::Baseline,
        from: first.at,
        to: start.unwrap_or(last.at),
    });
    let mut sorted: Vec<&(String, SystemTime, Option<SystemTime>)> = actions.iter().collect();
    sorted.sort_by_key(|a| a.1);
    for (name, from, to) in sorted {
        out.push(Window {
            name: name.clone(),
            kind: PhaseKind::Action,
            from: *from,
            to: to.unwrap_or(last.at),
        });
    }
    if let Some(end) = actions.iter().map(|a| a.2.unwrap_or(last.at)).max() {
        out.push(Window {
            name: "recovery".into(),
            kind: PhaseKind::Recovery,
            from: end,
            to: last.at,
        });
    }
    out
}

/// What the users saw during one phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseFigures {
    /// `baseline`, the action's name, or `recovery`.
    pub phase: String,
    /// Which part of the run it is.
    pub kind: PhaseKind,
    /// Seconds the figures cover (between the phase's first and last sample).
    pub seconds: f64,
    /// Requests in that time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<f64>,
    /// Requests per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_rate: Option<f64>,
    /// Failed requests over requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// Median latency, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

/// The figures between two samples: rates from the counters' increase, quantiles from the
/// histogram's. A counter that went down (the endpoint restarted) gives no figure.
pub fn between(a: &Sample, b: &Sample) -> (f64, Option<f64>, Option<f64>, Option<f64>, Option<f64>) {
    let seconds = b.at.duration_since(a.at).unwrap_or_default().as_secs_f64();
    let delta = |x: Option<f64>, y: Option<f64>| x.zip(y).map(|(x, y)| y - x).filter(|d| *d >= 0.0);
    let requests = delta(a.requests, b.requests);
    let errors = delta(a.errors, b.errors);
    let error_rate = requests
        .zip(errors)
        .and_then(|(r, e)| (r > 0.0).then(|| (e / r).min(1.0)));
    let buckets: Option<Vec<(f64, f64)>> = (a.buckets.len() == b.buckets.len() && !b.buckets.is_empty())
        .then(|| {
            a.buckets
                .iter()
                .zip(&b.buckets)
                .map(|((la, ca), (lb, cb))| (*la == *lb && cb >= ca).then_some((*lb, cb - ca)))
                .collect()
        })
        .flatten();
    let count = delta(a.count, b.count);
    let q = |p: f64| {
        buckets
            .as_deref()
            .and_then(|bs| quantile(p, bs, count))
            .map(|s| s * 1000.0)
    };
    (seconds, requests, error_rate, q(0.5), q(0.99))
}

/// The `p` quantile of a histogram's increase, interpolated inside its bucket as
/// Prometheus' `histogram_quantile` does; observations above the last bound give that bound.
pub fn quantile(p: f64, buckets: &[(f64, f64)], count: Option<f64>) -> Option<f64> {
    let total = count.or_else(|| buckets.last().map(|b| b.1))?;
    if total <= 0.0 {
        return None;
    }
    let rank = p * total;
    let mut lower = (0.0, 0.0);
    for &(bound, cumulative) in buckets {
        if cumulative >= rank {
            let inside = cumulative - lower.1;
            let share = if inside > 0.0 { (rank - lower.1) / inside } else { 1.0 };
            return Some(lower.0 + (bound - lower.0) * share);
        }
        lower = (bound, cumulative);
    }
    buckets.last().map(|b| b.0)
}

/// Each window's figures, from its first to its last sample (a sample at most one period
/// before the window opens stands in for its start, so short actions are measured too).
pub fn figures(samples: &[Sample], windows: &[Window]) -> Vec<PhaseFigures> {
    let usable: Vec<&Sample> = samples.iter().filter(|s| s.requests.is_some()).collect();
    windows
        .iter()
        .map(|w| {
            let inside: Vec<&&Sample> = usable.iter().filter(|s| s.at >= w.from && s.at <= w.to).collect();
            let start = usable.iter().rev().find(|s| s.at <= w.from).or(inside.first().copied());
            let end = inside.last().copied();
            let empty = PhaseFigures {
                phase: w.name.clone(),
                kind: w.kind,
                seconds: 0.0,
                requests: None,
                request_rate: None,
                error_rate: None,
                p50_ms: None,
                p99_ms: None,
            };
            match (start, end) {
                (Some(a), Some(b)) if b.at > a.at => {
                    let (seconds, requests, error_rate, p50_ms, p99_ms) = between(a, b);
                    PhaseFigures {
                        seconds,
                        requests,
                        request_rate: requests.map(|r| r / seconds),
                        error_rate,
                        p50_ms,
                        p99_ms,
                        ..empty
                    }
                }
                _ => empty,
            }
        })
        .collect()
}

/// One point per interval between consecutive samples, for charts.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// End of the interval.
    pub at: SystemTime,
    /// Requests per second.
    pub request_rate: Option<f64>,
    /// Failed over all.
    pub error_rate: Option<f64>,
    /// Median latency, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, ms.
    pub p99_ms: Option<f64>,
}

/// The series of a run's samples.
pub fn series(samples: &[Sample]) -> Vec<Point> {
    let usable: Vec<&Sample> = samples.iter().filter(|s| s.requests.is_some()).collect();
    usable
        .windows(2)
        .filter(|w| w[1].at > w[0].at)
        .map(|w| {
            let (seconds, requests, error_rate, p50_ms, p99_ms) = between(w[0], w[1]);
            Point {
                at: w[1].at,
                request_rate: requests.map(|r| r / seconds),
                error_rate,
                p50_ms,
                p99_ms,
            }
        })
        .collect()
}

/// A figure for people: `-` when there is none.
pub fn show(v: Option<f64>, unit: &str) -> String {
    match (v, unit) {
        (None, _) => "-".into(),
        (Some(v), "%") => format!("{:.1} %", v * 100.0),
        (Some(v), "ms") => format!("{v:.1} ms"),
        (Some(v), u) => format!("{v:.1}{u}"),
    }
}

/// The phase a figure row is about, for people.
pub fn phase_label(f: &PhaseFigures) -> String {
    match f.kind {
        PhaseKind::Action => format!("during {}", f.phase),
        _ => f.phase.clone(),
    }
}

/// The rows of the per-phase table: phase, seconds, req/s, errors, p50, p99.
pub fn rows(figures: &[PhaseFigures]) -> Vec<[String; 6]> {
    figures
        .iter()
        .map(|f| {
            [
                phase_label(f),
                if f.seconds > 0.0 {
                    format!("{:.1} s", f.seconds)
                } else {
                    "no samples".into()
                },
                show(f.request_rate, " /s"),
                show(f.error_rate, "%"),
                show(f.p50_ms, "ms"),
                show(f.p99_ms, "ms"),
            ]
        })
        .collect()
}

/// The header of the per-phase table.
pub const HEADER: [&str; 6] = ["phase", "measured", "requests", "errors", "p50", "p99"];

/// The per-phase table for the terminal.
pub fn table(figures: &[PhaseFigures]) -> comfy_table::Table {
    let mut t = super::table(HEADER);
    for row in rows(figures) {
        t.add_row(row.into_iter().map(Cell::new).collect::<Vec<_>>());
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LB: &str = "# HELP lb_requests_total Requests.\n# TYPE lb_requests_total counter\n\
        lb_requests_total{backend=\"web-a1\"} 10\nlb_requests_total{backend=\"web-b1\"} 5\n\
        lb_backend_errors_total{backend=\"web-a1\"} 2\nlb_no_backend_total 1\n\
        lb_request_duration_seconds_bucket{le=\"0.005\"} 8\nlb_request_duration_seconds_bucket{le=\"0.5\"} 12\n\
        lb_request_duration_seconds_bucket{le=\"+Inf\"} 12\nlb_request_duration_seconds_sum 1.2\n\
        lb_request_duration_seconds_count 12\n";

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sums_series_by_name_and_reads_histograms() {
        let e = Exposition::parse(LB);
        assert_eq!(e.sum(&names(&["lb_requests_total"])), Some(15.0));
        assert_eq!(
            e.sum(&names(&["lb_backend_errors_total", "lb_no_backend_total"])),
            Some(3.0)
        );
        assert_eq!(e.sum(&names(&["nope_total"])), None);
        let (buckets, count) = e.histogram("lb_request_duration_seconds");
        assert_eq!(buckets, vec![(0.005, 8.0), (0.5, 12.0)]);
        assert_eq!(count, Some(12.0));
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let b = [(0.1, 50.0), (0.2, 100.0)];
        assert_eq!(quantile(0.5, &b, Some(100.0)), Some(0.1));
        assert!((quantile(0.75, &b, Some(100.0)).unwrap() - 0.15).abs() < 1e-9);
        // Above the last bound: the last bound, as histogram_quantile says.
        assert_eq!(quantile(0.99, &b, Some(200.0)), Some(0.2));
        assert_eq!(quantile(0.5, &b, Some(0.0)), None);
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 + s)
    }

    fn sample(s: u64, requests: f64, errors: f64, fast: f64, slow: f64) -> Sample {
        Sample {
            at: at(s),
            requests: Some(requests),
            errors: Some(errors),
            buckets: vec![(0.01, fast), (1.0, fast + slow)],
            count: Some(fast + slow),
        }
    }

    #[test]
    fn each_phase_is_measured_from_its_own_increase() {
        // 10 req/s throughout; during the action half of them fail and all are slow.
        let samples = vec![
            sample(0, 0.0, 0.0, 0.0, 0.0),
            sample(2, 20.0, 0.0, 20.0, 0.0),
            sample(4, 40.0, 10.0, 20.0, 20.0),
            sample(6, 60.0, 10.0, 40.0, 20.0),
        ];
        let w = windows(&[("Break".into(), at(2), Some(at(4)))], &samples);
        let names: Vec<&str> = w.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["baseline", "Break", "recovery"]);
        let f = figures(&samples, &w);
        assert_eq!(f[0].request_rate, Some(10.0));
        assert_eq!(f[0].error_rate, Some(0.0));
        assert!(f[0].p50_ms.unwrap() <= 10.0);
        assert_eq!(f[1].error_rate, Some(0.5));
        assert!(f[1].p50_ms.unwrap() > 10.0, "{:?}", f[1]);
        assert_eq!(f[2].error_rate, Some(0.0));
        assert!(f[2].p99_ms.unwrap() <= 10.0);
        let s = series(&samples);
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].error_rate, Some(0.5));
    }

    #[test]
    fn a_counter_reset_or_a_failed_scrape_gives_no_figure() {
        let mut samples = vec![sample(0, 100.0, 0.0, 0.0, 0.0), sample(2, 5.0, 0.0, 5.0, 0.0)];
        let w = windows(&[], &samples);
        assert_eq!(figures(&samples, &w)[0].request_rate, None);
        samples[1].requests = None;
        assert_eq!(figures(&samples, &w)[0].seconds, 0.0);
        assert_eq!(rows(&figures(&samples, &w))[0][1], "no samples");
    }
}
