//! JUnit XML for CI: one test case per action and one per alarm; failures carry the reason.

use super::Report;
use crate::alarms::AlarmState;
use crate::journal::State;
use std::fmt::Write;

/// Escapes text for XML attributes and content.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn points(p: &[Option<f64>]) -> String {
    let items: Vec<String> = p
        .iter()
        .map(|d| d.map_or("missing".into(), |v| format!("{v}")))
        .collect();
    format!("[{}]", items.join(", "))
}

/// What one test case says.
enum Verdict {
    Pass,
    Fail {
        kind: &'static str,
        message: String,
        detail: String,
    },
    Skip(String),
}

struct Case {
    class: &'static str,
    name: String,
    seconds: f64,
    verdict: Verdict,
}

/// The report as a JUnit XML document.
pub fn render(report: &Report) -> String {
    let mut cases = Vec::new();
    for (name, a) in &report.outcome.actions {
        let seconds = match (a.started_at, a.ended_at) {
            (Some(s), Some(e)) => e.duration_since(s).map_or(0.0, |d| d.as_secs_f64()),
            _ => 0.0,
        };
        let verdict = match a.state {
            State::Completed => Verdict::Pass,
            State::Failed => Verdict::Fail {
                kind: "ActionFailed",
                message: a.error.clone().unwrap_or_else(|| "the action failed".into()),
                detail: a.notes.join("\n"),
            },
            other => Verdict::Skip(format!(
                "{}{}",
                other.as_str(),
                report.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
            )),
        };
        cases.push(Case {
            class: "faultline.actions",
            name: format!("{name} ({})", a.action_id),
            seconds,
            verdict,
        });
    }
    for alarm in &report.alarms {
        let rule = format!(
            "{} {} {}",
            alarm.statistic.as_str(),
            alarm.comparison_operator.symbol(),
            alarm.threshold
        );
        let verdict = if let Some(f) = &alarm.fired {
            Verdict::Fail {
                kind: "StopCondition",
                message: format!(
                    "{} went into ALARM during the {} ({rule})",
                    alarm.name,
                    f.phase.as_str()
                ),
                detail: format!(
                    "datapoints {}; at {}",
                    points(&f.datapoints),
                    humantime::format_rfc3339_millis(f.at)
                ),
            }
        } else if alarm.recovered == Some(false) {
            Verdict::Fail {
                kind: "NotRecovered",
                message: format!("{} did not recover after the experiment ({rule})", alarm.name),
                detail: format!(
                    "last datapoints {}; state {}",
                    points(&alarm.datapoints),
                    alarm.state.as_str()
                ),
            }
        } else if alarm.state == AlarmState::InsufficientData {
            Verdict::Skip(format!("{} had no data", alarm.name))
        } else {
            Verdict::Pass
        };
        cases.push(Case {
            class: "faultline.alarms",
            name: alarm.name.clone(),
            seconds: 0.0,
            verdict,
        });
    }
    let failures = cases
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Fail { .. }))
        .count();
    let skipped = cases.iter().filter(|c| matches!(c.verdict, Verdict::Skip(_))).count();
    let suite = format!("{}: {}", report.experiment_id, report.description);
    let seconds = report.duration().as_secs_f64();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"faultline\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{seconds:.3}\">",
        cases.len()
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{seconds:.3}\" timestamp=\"{}\">",
        esc(&suite),
        cases.len(),
        humantime::format_rfc3339_seconds(report.started_at)
    );
    x += "    <properties>\n";
    for (k, v) in [
        ("state", report.state.as_str().to_string()),
        ("seed", report.seed.to_string()),
        ("journal", report.journal.display().to_string()),
        ("template", report.template.display().to_string()),
    ] {
        let _ = writeln!(x, "      <property name=\"{k}\" value=\"{}\"/>", esc(&v));
    }
    x += "    </properties>\n";
    for c in &cases {
        let _ = write!(
            x,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            c.class,
            esc(&c.name),
            c.seconds
        );
        match &c.verdict {
            Verdict::Pass => x += "/>\n",
            Verdict::Skip(why) => {
                let _ = writeln!(x, ">\n      <skipped message=\"{}\"/>\n    </testcase>", esc(why));
            }
            Verdict::Fail { kind, message, detail } => {
                let _ = writeln!(
                    x,
                    ">\n      <failure type=\"{kind}\" message=\"{}\">{}</failure>\n    </testcase>",
                    esc(message),
                    esc(detail)
                );
            }
        }
    }
    x += "  </testsuite>\n</testsuites>\n";
    x
}

/// A JUnit document for a run that could not happen at all.
pub fn render_error(template: &std::path::Path, message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"faultline\" tests=\"1\" failures=\"0\" errors=\"1\">\n  <testsuite name=\"{}\" tests=\"1\" failures=\"0\" errors=\"1\">\n    <testcase classname=\"faultline\" name=\"experiment\">\n      <error type=\"NotRun\" message=\"{}\"/>\n    </testcase>\n  </testsuite>\n</testsuites>\n",
        esc(&template.display().to_string()),
        esc(message)
    )
}
