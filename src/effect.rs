//! Asked versus observed: whether a fault did what it was asked, figure by figure. A figure
//! far from what was asked is a warning in the report and the journal, and fails its action
//! under `run --strict`. The tolerances are documented in docs/wire.md ("Observed effects").

use faultline_agent::protocol::{Figure, Observed};
use serde::{Deserialize, Serialize};

/// How far a figure may be from what was asked before it counts as far.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tolerance {
    /// Within this many points (percentages) or this fraction of what was asked: a load
    /// meter is coarse, so either closeness will do.
    PointsOrRelative(f64, f64),
    /// Within this many points either way.
    Points(f64),
    /// At least this fraction of what was asked (an amount held or written).
    AtLeast(f64),
}

/// The tolerance of a figure by name; a figure this build does not know must reach 90 % of
/// what was asked.
fn tolerance(name: &str) -> Tolerance {
    match name {
        "cpu_percent_per_worker" => Tolerance::PointsOrRelative(20.0, 0.5),
        "loss_percent" => Tolerance::Points(5.0),
        "filesystem_used_percent" => Tolerance::Points(5.0),
        "processes_stopped" => Tolerance::AtLeast(1.0),
        _ => Tolerance::AtLeast(0.9),
    }
}

/// Why a figure is far from what was asked, or `None` when it is close enough (or nothing
/// was asked).
pub fn far(figure: &Figure) -> Option<String> {
    let asked = figure.asked?;
    let seen = figure.observed;
    let diff = (seen - asked).abs();
    let (close, allowed) = match tolerance(&figure.name) {
        Tolerance::PointsOrRelative(points, rel) => (
            diff <= points || diff <= rel * asked.abs(),
            format!("within {points} points or {:.0} %", rel * 100.0),
        ),
        Tolerance::Points(points) => (diff <= points, format!("within {points} points")),
        Tolerance::AtLeast(frac) if frac >= 1.0 => (seen >= asked, "all of it".into()),
        Tolerance::AtLeast(frac) => (seen >= frac * asked, format!("at least {:.0} %", frac * 100.0)),
    };
    (!close).then(|| {
        format!(
            "{} observed {} but {} was asked (expected {allowed})",
            figure.name,
            amount(seen, &figure.unit),
            amount(asked, &figure.unit)
        )
    })
}

/// A quantity for people: bytes in binary units, the rest with one decimal.
pub fn amount(v: f64, unit: &str) -> String {
    if unit == "bytes" {
        let mib = v / (1024.0 * 1024.0);
        if mib >= 1024.0 {
            return format!("{:.2} GiB", mib / 1024.0);
        }
        return format!("{mib:.1} MiB");
    }
    if unit == "%" {
        return format!("{v:.1} %");
    }
    format!("{v:.1} {unit}")
}

/// What one fault did on one host, with a warning per figure far from what was asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostEffect {
    pub host: String,
    /// The figures the agent measured.
    pub figures: Vec<Figure>,
    /// Every figure far from what was asked, for people.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl HostEffect {
    /// Judges what the agent on `host` measured.
    pub fn judge(host: &str, observed: &Observed) -> HostEffect {
        HostEffect {
            host: host.into(),
            figures: observed.figures.clone(),
            warnings: observed.figures.iter().filter_map(far).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(name: &str, unit: &str, asked: f64, observed: f64) -> Figure {
        Figure {
            name: name.into(),
            unit: unit.into(),
            asked: Some(asked),
            observed,
        }
    }

    #[test]
    fn cpu_is_close_within_twenty_points_or_half_of_the_ask() {
        assert_eq!(far(&fig("cpu_percent_per_worker", "%", 80.0, 61.0)), None);
        assert_eq!(far(&fig("cpu_percent_per_worker", "%", 80.0, 99.0)), None);
        // 5 % asked, 1 % seen: 4 points off, close enough for a coarse meter.
        assert_eq!(far(&fig("cpu_percent_per_worker", "%", 5.0, 1.0)), None);
        let w = far(&fig("cpu_percent_per_worker", "%", 80.0, 10.0)).unwrap();
        assert!(w.contains("10.0 %") && w.contains("80.0 %"), "{w}");
        // 100 asked, 45 seen: 55 points and 55 % off.
        assert!(far(&fig("cpu_percent_per_worker", "%", 100.0, 45.0)).is_some());
    }

    #[test]
    fn amounts_must_reach_ninety_percent() {
        let gib = 1024.0 * 1024.0 * 1024.0;
        assert_eq!(far(&fig("resident_bytes", "bytes", gib, 0.9 * gib)), None);
        assert_eq!(far(&fig("resident_bytes", "bytes", gib, 1.1 * gib)), None);
        let w = far(&fig("resident_bytes", "bytes", gib, 0.5 * gib)).unwrap();
        assert!(w.contains("512.0 MiB") && w.contains("1.00 GiB"), "{w}");
    }

    #[test]
    fn percentages_of_loss_and_fill_are_within_five_points() {
        assert_eq!(far(&fig("loss_percent", "%", 30.0, 34.9)), None);
        assert!(far(&fig("loss_percent", "%", 30.0, 24.0)).is_some());
        assert!(far(&fig("loss_percent", "%", 30.0, 0.0)).is_some());
        assert_eq!(far(&fig("filesystem_used_percent", "%", 90.0, 88.0)), None);
        assert!(far(&fig("filesystem_used_percent", "%", 90.0, 70.0)).is_some());
    }

    #[test]
    fn every_process_asked_must_be_stopped() {
        assert_eq!(far(&fig("processes_stopped", "processes", 3.0, 3.0)), None);
        assert!(far(&fig("processes_stopped", "processes", 3.0, 2.0)).is_some());
    }

    #[test]
    fn a_figure_without_an_ask_is_never_far() {
        let f = Figure {
            name: "packets_dropped".into(),
            unit: "packets".into(),
            asked: None,
            observed: 0.0,
        };
        assert_eq!(far(&f), None);
        let e = HostEffect::judge("h", &Observed { figures: vec![f] });
        assert!(e.warnings.is_empty());
    }
}
