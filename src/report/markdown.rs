//! The game-day report as Markdown, for a wiki: the same sections as the HTML report, with
//! tables instead of charts (and a sparkline of each series).

use super::experience::{self, Point};
use super::record::{clock, human, RunRecord};
use super::summary::summary;
use std::fmt::Write;

/// Text from the journal (a description, a stop reason) as Markdown prose: `&` and `<`
/// escaped so that it cannot carry HTML into a wiki page, on one line.
fn text(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace(['\n', '\r'], " ")
}

/// A table cell: as [`text`], with backslashes and pipes escaped.
fn cell(s: &str) -> String {
    text(&s.replace('\\', "\\\\").replace('|', "\\|"))
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(
        out,
        "| {} |",
        header.iter().map(|h| cell(h)).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(out, "|{}|", vec!["---"; header.len()].join("|"));
    for row in rows {
        let _ = writeln!(
            out,
            "| {} |",
            row.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")
        );
    }
    out.push('\n');
}

/// A state as text with a symbol.
fn state(s: &str) -> String {
    let symbol = match s {
        "completed" | "OK" => "✔",
        "failed" | "ALARM" => "✖",
        "stopped" | "stopping" => "■",
        "cancelled" | "skipped" => "⊘",
        _ => "…",
    };
    format!("{symbol} {s}")
}

/// Values as a one-line sparkline, `·` for a missing one.
pub fn sparkline(values: &[Option<f64>]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().flatten().copied().fold(0.0_f64, f64::max);
    values
        .iter()
        .map(|v| match v {
            None => '·',
            Some(_) if max <= 0.0 => BARS[0],
            Some(v) => BARS[((v / max) * 7.0).round().clamp(0.0, 7.0) as usize],
        })
        .collect()
}

/// The report of a run as Markdown.
pub fn render(r: &RunRecord) -> String {
    let mut out = String::new();
    let title = if r.description.is_empty() {
        format!("Game day {}", r.experiment_id)
    } else {
        r.description.clone()
    };
    let _ = writeln!(out, "# Game day report: {}\n", text(&title));
    let _ = writeln!(
        out,
        "**Outcome:** {} · **Experiment:** `{}` · **Ran:** {} → {} UTC ({}){}\n",
        state(r.state.as_str()),
        r.experiment_id,
        crate::journal::ts(&r.started_at),
        clock(r.ended_at),
        human(r.ended_at.duration_since(r.started_at).unwrap_or_default()),
        r.seed.map_or(String::new(), |s| format!(" · **Seed:** {s}"))
    );

    out.push_str("## Summary\n\n");
    for f in summary(r) {
        let text = match f.strong.and_then(|s| Some((s, f.text.strip_prefix(s)?))) {
            Some((strong, rest)) => format!("**{}**{}", text(strong), text(rest)),
            None => text(&f.text),
        };
        let _ = writeln!(out, "- **{}:** {text}", f.label);
    }
    out.push('\n');

    out.push_str("## What the users saw\n\n");
    let figures = r.user_experience();
    if figures.is_empty() {
        out.push_str("Not measured: the template has no `userExperience` endpoint, or it never answered.\n\n");
    } else {
        let rows: Vec<Vec<String>> = experience::rows(&figures).into_iter().map(Vec::from).collect();
        table(&mut out, &experience::HEADER, &rows);
        let points = experience::series(&r.samples);
        let spark = |f: fn(&Point) -> Option<f64>| sparkline(&points.iter().map(f).collect::<Vec<_>>());
        let _ = writeln!(
            out,
            "Over the run, one mark per scrape: requests/s `{}` · errors `{}` · p99 `{}`\n",
            spark(|p| p.request_rate),
            spark(|p| p.error_rate),
            spark(|p| p.p99_ms)
        );
    }

    out.push_str("## Action timeline\n\n");
    let rows: Vec<Vec<String>> = r
        .actions
        .iter()
        .map(|(name, a)| {
            vec![
                name.clone(),
                format!("`{}`", a.action_id),
                state(a.state.as_str()),
                if a.hosts.is_empty() {
                    "-".into()
                } else {
                    a.hosts.join(", ")
                },
                a.started.map_or("-".into(), clock),
                a.ended.map_or("-".into(), clock),
                a.parameters
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                a.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "action",
            "actionId",
            "state",
            "hosts",
            "start (UTC)",
            "end (UTC)",
            "parameters",
            "notes",
        ],
        &rows,
    );

    out.push_str("## What the faults did\n\n");
    let effects = r.effects();
    if effects.is_empty() {
        out.push_str("No fault reported a measured effect.\n\n");
    } else {
        let rows: Vec<Vec<String>> = effects
            .into_iter()
            .map(|e| {
                let verdict = if e.far { "⚠ far from asked" } else { "✔ ok" };
                vec![e.action, e.host, e.figure, e.asked, e.observed, verdict.into()]
            })
            .collect();
        table(
            &mut out,
            &["action", "host", "figure", "asked", "observed", "verdict"],
            &rows,
        );
    }

    out.push_str("## Stop conditions\n\n");
    if r.alarms.is_empty() {
        out.push_str("No stop condition: nothing watched the system during the run.\n\n");
    }
    let rows: Vec<Vec<String>> = r
        .alarms
        .iter()
        .map(|(name, a)| {
            let rule = a.rule.as_ref().map_or("-".into(), |rule| {
                format!(
                    "{} {} {} ({} of {} × {})",
                    rule.statistic,
                    rule.comparison,
                    rule.threshold,
                    rule.datapoints_to_alarm,
                    rule.evaluation_periods,
                    human(std::time::Duration::from_millis(rule.period_ms))
                )
            });
            let values: Vec<Option<f64>> = a.points.iter().map(|p| p.value).collect();
            let fired: Vec<String> = a
                .points
                .iter()
                .filter(|p| p.state == "ALARM")
                .map(|p| format!("{} ({})", clock(p.at), p.phase))
                .collect();
            vec![
                name.clone(),
                rule,
                state(a.points.last().map_or("INSUFFICIENT_DATA", |p| p.state.as_str())),
                format!("`{}`", sparkline(&values)),
                if fired.is_empty() {
                    "never".into()
                } else {
                    fired.join(", ")
                },
            ]
        })
        .collect();
    if !rows.is_empty() {
        table(
            &mut out,
            &["alarm", "rule", "last state", "datapoints", "in ALARM at"],
            &rows,
        );
    }

    out.push_str("## Resolved targets\n\n");
    let rows: Vec<Vec<String>> = r.targets.iter().map(|(t, s)| vec![t.clone(), s.join(", ")]).collect();
    if rows.is_empty() {
        out.push_str("No target was resolved.\n\n");
    } else {
        table(&mut out, &["target", "selected"], &rows);
    }

    out.push_str("## Template\n\n");
    match &r.template {
        Some(t) => {
            let _ = writeln!(
                out,
                "```json\n{}\n```\n",
                serde_json::to_string_pretty(t).unwrap_or_default()
            );
        }
        None => out.push_str("The journal does not hold the template.\n\n"),
    }

    out.push_str("## Team notes\n\n");
    for prompt in [
        "What we expected",
        "What happened",
        "What surprised us",
        "Follow-ups (owner, due date)",
    ] {
        let _ = writeln!(out, "### {prompt}\n\n_To be filled in by the team._\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::record::tests::record;

    #[test]
    fn tables_are_well_formed() {
        let md = render(&record());
        let mut table: Option<usize> = None;
        for line in md.lines() {
            if line.starts_with('|') {
                assert!(line.ends_with('|'), "{line}");
                // Escaped pipes are content, not columns.
                let columns = line.replace("\\|", "").matches('|').count();
                match table {
                    None => table = Some(columns),
                    Some(n) => assert_eq!(columns, n, "{line}"),
                }
            } else {
                table = None;
            }
        }
        assert!(md.contains("| during Slow |"), "{md}");
        assert!(md.contains("web-a1"));
        assert!(md.contains("stop condition Errors went into ALARM"));
        assert!(md.contains("## Team notes"));
    }

    #[test]
    fn what_the_faults_did_is_a_table_of_asked_versus_observed() {
        let md = render(&record());
        assert!(md.contains("## What the faults did"), "{md}");
        assert!(
            md.contains("| Slow | web-a1 | delay_added_ms | 300.0 ms | 120.0 ms | ⚠ far from asked |"),
            "{md}"
        );
        assert!(
            md.contains("| connections_delayed | - | 14.0 connections | ✔ ok |"),
            "{md}"
        );
    }

    #[test]
    fn text_from_the_journal_cannot_inject_html() {
        let mut r = record();
        r.reason = Some("stopped by <script>alert(1)</script> & co | done".into());
        let md = render(&r);
        assert!(md.contains("# Game day report: break &lt;web> &amp; see"), "{md}");
        assert!(
            md.contains("**Stop reason:** stopped by &lt;script>alert(1)&lt;/script> &amp; co | done"),
            "{md}"
        );
        // Only the template, in a fenced code block, keeps its text as written.
        let prose: String = md.split("```").step_by(2).collect();
        assert!(!prose.contains("<script>") && !prose.contains("<web>"), "{md}");
        assert_eq!(cell("a<b & c|d"), "a&lt;b &amp; c\\|d");
    }

    #[test]
    fn cells_keep_pipes_and_newlines_inside() {
        assert_eq!(cell("a|b\nc"), "a\\|b c");
        assert_eq!(sparkline(&[Some(0.0), None, Some(1.0)]), "▁·█");
    }
}
