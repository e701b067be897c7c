//! The game-day report as one self-contained HTML file: inline CSS, inline SVG charts, no
//! script and no external resource, readable offline and printable. Every state is written
//! as text (with a symbol), never shown by colour alone.

use super::experience::{self, PhaseKind};
use super::record::{clock, human, RunRecord};
use super::summary::summary;
use crate::journal::State;
use std::fmt::Write;
use std::time::SystemTime;

const STYLE: &str = "
:root { color-scheme: light; --ink: #1b1f24; --muted: #4a5260; --line: #c9ced6; --ok: #17653a; --bad: #a4161a;
  --warn: #7a4b00; --band: #eef2f7; --accent: #1f4e9a; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, 'Segoe UI', sans-serif; color: var(--ink); margin: 0; background: #fff; }
main { max-width: 980px; margin: 0 auto; padding: 24px; }
h1 { font-size: 1.6em; margin: 0 0 4px; } h2 { border-bottom: 2px solid var(--line); padding-bottom: 4px; margin-top: 32px; }
h3 { margin-bottom: 4px; }
.state { display: inline-block; font-weight: 700; padding: 2px 10px; border-radius: 4px; border: 2px solid currentColor; }
.s-completed, .s-ok { color: var(--ok); } .s-stopped, .s-cancelled, .s-skipped, .s-insufficient_data { color: var(--warn); }
.s-failed, .s-alarm { color: var(--bad); } .s-pending, .s-running, .s-initiating, .s-stopping { color: var(--accent); }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; }
dl.facts dt { font-weight: 600; color: var(--muted); } dl.facts dd { margin: 0; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 16px; font-size: 0.95em; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; overflow-wrap: anywhere; }
th { background: #f4f6f9; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 12px 0 20px; } figcaption { color: var(--muted); font-size: 0.9em; }
svg { max-width: 100%; height: auto; font: 11px system-ui, sans-serif; }
svg .axis { stroke: #6b7280; } svg .grid { stroke: #e5e7eb; } svg .band { fill: var(--band); }
svg .threshold { stroke: var(--bad); stroke-dasharray: 6 4; } svg text { fill: var(--ink); }
pre { background: #f6f8fa; border: 1px solid var(--line); padding: 12px; overflow: auto; font-size: 0.85em; }
.notes h3 { font-size: 1em; } .notes .fill { border: 1px dashed var(--line); min-height: 3.5em; padding: 6px; color: var(--muted); }
.muted { color: var(--muted); }
@media print { main { max-width: none; } details { display: block; } }
";

/// Colours of chart series, each also told apart by its dash pattern and legend text.
const SERIES: [(&str, &str); 3] = [("#1f4e9a", ""), ("#a4161a", "5 3"), ("#7a4b00", "2 3")];

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A state as text with a symbol, coloured as a second cue.
fn state_badge(state: &str) -> String {
    let symbol = match state {
        "completed" | "OK" => "✔",
        "failed" | "ALARM" => "✖",
        "stopped" | "stopping" => "■",
        "cancelled" | "skipped" => "⊘",
        "running" | "initiating" => "▶",
        _ => "…",
    };
    format!(
        "<span class=\"state s-{}\">{symbol} {}</span>",
        esc(&state.to_lowercase()),
        esc(state)
    )
}

/// One line of a chart: its name and its points.
struct Series<'a> {
    name: &'a str,
    points: Vec<(SystemTime, Option<f64>)>,
}

/// A shaded stretch of a chart (an action while it ran).
struct Band<'a> {
    name: &'a str,
    from: SystemTime,
    to: SystemTime,
}

/// A line chart over `(from, to)` as inline SVG, with action bands and an optional
/// threshold; missing points break the line.
fn chart(
    title: &str,
    unit: &str,
    (from, to): (SystemTime, SystemTime),
    series: &[Series],
    bands: &[Band],
    threshold: Option<f64>,
) -> String {
    let (w, h, left, right, top, bottom) = (760.0, 240.0, 60.0, 12.0, 30.0, 48.0);
    let span = to.duration_since(from).unwrap_or_default().as_secs_f64().max(0.001);
    let x = |t: SystemTime| {
        let s = t.duration_since(from).map_or(0.0, |d| d.as_secs_f64());
        left + (w - left - right) * (s / span).clamp(0.0, 1.0)
    };
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().filter_map(|p| p.1))
        .chain(threshold)
        .fold(0.0_f64, f64::max);
    let top_value = if max > 0.0 { max * 1.15 } else { 1.0 };
    let y = |v: f64| top + (h - top - bottom) * (1.0 - (v / top_value).clamp(0.0, 1.0));
    let label = |v: f64| {
        if unit == "%" {
            format!("{:.0}%", v * 100.0)
        } else if top_value < 10.0 {
            format!("{v:.2}")
        } else {
            format!("{v:.0}")
        }
    };
    let mut svg = String::new();
    let desc = series
        .iter()
        .map(|s| {
            let values: Vec<f64> = s.points.iter().filter_map(|p| p.1).collect();
            let peak = values.iter().copied().fold(f64::NAN, f64::max);
            format!(
                "{}: {} points, highest {}",
                s.name,
                values.len(),
                if peak.is_nan() { "none".into() } else { label(peak) }
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let _ = write!(
        svg,
        "<svg viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{}\"><title>{}</title><desc>{}{}</desc>",
        esc(title),
        esc(title),
        esc(&desc),
        threshold.map_or(String::new(), |t| format!("; threshold {}", label(t)))
    );
    for (i, b) in bands.iter().enumerate() {
        let (x0, x1) = (x(b.from), x(b.to));
        // Alternate label rows so that actions starting together stay readable.
        let label_y = top - 6.0 - 12.0 * (i % 2) as f64;
        let _ = write!(
            svg,
            "<rect class=\"band\" x=\"{x0:.1}\" y=\"{top}\" width=\"{:.1}\" height=\"{:.1}\"><title>{}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            (x1 - x0).max(1.0),
            h - top - bottom,
            esc(b.name),
            x0 + 3.0,
            label_y,
            esc(b.name)
        );
    }
    for i in 0..=2 {
        let v = top_value * i as f64 / 2.0;
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{left}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            w - right,
            left - 6.0,
            y(v) + 4.0,
            label(v),
            y = y(v)
        );
    }
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"{left}\" x2=\"{left}\" y1=\"{top}\" y2=\"{:.1}\"/>\
         <line class=\"axis\" x1=\"{left}\" x2=\"{:.1}\" y1=\"{b:.1}\" y2=\"{b:.1}\"/>\
         <text x=\"{left}\" y=\"{:.1}\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{} (+{})</text>",
        h - bottom,
        w - right,
        h - bottom + 14.0,
        clock(from),
        w - right,
        h - bottom + 14.0,
        clock(to),
        human(to.duration_since(from).unwrap_or_default()),
        b = h - bottom
    );
    if let Some(t) = threshold {
        let _ = write!(
            svg,
            "<line class=\"threshold\" x1=\"{left}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">threshold {}</text>",
            w - right,
            w - right - 4.0,
            y(t) - 4.0,
            label(t),
            y = y(t)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let (colour, dash) = SERIES[i % SERIES.len()];
        let mut d = String::new();
        let mut pen_down = false;
        for (t, v) in &s.points {
            match v {
                Some(v) => {
                    let _ = write!(d, "{}{:.1},{:.1} ", if pen_down { "L" } else { "M" }, x(*t), y(*v));
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        let _ = write!(
            svg,
            "<path d=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" stroke-dasharray=\"{dash}\"/>",
            d.trim_end()
        );
        for (t, v) in s.points.iter().filter(|p| p.0 >= from && p.0 <= to) {
            if let Some(v) = v {
                let _ = write!(
                    svg,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{colour}\"/>",
                    x(*t),
                    y(*v)
                );
            }
        }
        let _ = write!(
            svg,
            "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-width=\"2\" stroke-dasharray=\"{dash}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            left + 8.0 + 150.0 * i as f64,
            left + 30.0 + 150.0 * i as f64,
            h - 10.0,
            h - 10.0,
            left + 34.0 + 150.0 * i as f64,
            h - 6.0,
            esc(s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn facts(out: &mut String, rows: &[(&str, String)]) {
    out.push_str("<dl class=\"facts\">");
    for (k, v) in rows {
        let _ = write!(out, "<dt>{}</dt><dd>{v}</dd>", esc(k));
    }
    out.push_str("</dl>");
}

fn table(out: &mut String, caption: &str, header: &[&str], rows: &[Vec<String>], numeric_from: usize) {
    let _ = write!(
        out,
        "<table><caption class=\"muted\">{}</caption><thead><tr>",
        esc(caption)
    );
    for h in header {
        let _ = write!(out, "<th scope=\"col\">{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            match i {
                0 => {
                    let _ = write!(out, "<th scope=\"row\">{cell}</th>");
                }
                i if i >= numeric_from => {
                    let _ = write!(out, "<td class=\"num\">{cell}</td>");
                }
                _ => {
                    let _ = write!(out, "<td>{cell}</td>");
                }
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
}

/// The report of a run as a standalone HTML document.
pub fn render(r: &RunRecord) -> String {
    let mut out = String::new();
    let title = if r.description.is_empty() {
        format!("Game day {}", r.experiment_id)
    } else {
        r.description.clone()
    };
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Game day report: {}</title><style>{STYLE}</style></head><body><main>",
        esc(&title)
    );
    let _ = write!(
        out,
        "<header><p class=\"muted\">Game day report · experiment {}</p><h1>{}</h1><p>Outcome: {}</p>",
        esc(&r.experiment_id),
        esc(&title),
        state_badge(r.state.as_str())
    );
    let mut rows = vec![
        ("Experiment", esc(&r.experiment_id)),
        (
            "Ran",
            format!(
                "{} → {} UTC ({})",
                esc(&crate::journal::ts(&r.started_at)),
                clock(r.ended_at),
                human(r.ended_at.duration_since(r.started_at).unwrap_or_default())
            ),
        ),
    ];
    if let Some(seed) = r.seed {
        rows.push((
            "Seed",
            format!("{seed} (repeat the target selection with <code>--seed {seed}</code>)"),
        ));
    }
    facts(&mut out, &rows);
    out.push_str("</header>");

    // Summary: why it ended, how fast faultline reacted, how fast the system came back.
    out.push_str("<section id=\"summary\"><h2>Summary</h2>");
    let rows: Vec<(&str, String)> = summary(r)
        .into_iter()
        .map(|f| {
            let text = match f.strong.and_then(|s| Some((s, f.text.strip_prefix(s)?))) {
                Some((strong, rest)) => format!("<strong>{}</strong>{}", esc(strong), esc(rest)),
                None => esc(&f.text),
            };
            (f.label, text)
        })
        .collect();
    facts(&mut out, &rows);
    out.push_str("</section>");

    let window = r.chart_window();
    let bands: Vec<Band> = r
        .actions
        .iter()
        .filter_map(|(name, a)| {
            Some(Band {
                name,
                from: a.running.or(a.started)?,
                to: a.ended.unwrap_or(r.ended_at),
            })
        })
        .collect();

    // What the users saw.
    out.push_str("<section id=\"users\"><h2>What the users saw</h2>");
    let figures = r.user_experience();
    if figures.is_empty() {
        out.push_str(
            "<p class=\"muted\">Not measured: the template has no <code>userExperience</code> endpoint, \
             or it never answered.</p>",
        );
    } else {
        let rows: Vec<Vec<String>> = experience::rows(&figures)
            .into_iter()
            .map(|row| row.into_iter().map(|c| esc(&c)).collect())
            .collect();
        table(
            &mut out,
            "Request rate, error rate and latency at the load balancer, phase by phase",
            &experience::HEADER,
            &rows,
            1,
        );
        let baseline = figures.iter().find(|f| f.kind == PhaseKind::Baseline);
        let worst = figures
            .iter()
            .filter(|f| f.kind == PhaseKind::Action)
            .filter_map(|f| f.error_rate.map(|e| (f, e)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let (Some(b), Some((w, e))) = (baseline.and_then(|b| b.error_rate), worst) {
            let _ = write!(
                out,
                "<p>Errors went from {} in the baseline to {} at worst ({}).</p>",
                experience::show(Some(b), "%"),
                experience::show(Some(e), "%"),
                esc(&experience::phase_label(w))
            );
        }
        let points = experience::series(&r.samples);
        let line = |name, f: fn(&experience::Point) -> Option<f64>| Series {
            name,
            points: points.iter().map(|p| (p.at, f(p))).collect(),
        };
        let charts = [
            (
                "Requests per second",
                "/s",
                vec![line("requests/s", |p| p.request_rate)],
            ),
            ("Error rate", "%", vec![line("errors", |p| p.error_rate)]),
            (
                "Latency (ms)",
                "ms",
                vec![line("p50", |p| p.p50_ms), line("p99", |p| p.p99_ms)],
            ),
        ];
        for (title, unit, series) in charts {
            let _ = write!(
                out,
                "<figure>{}<figcaption>{} before, during (shaded: each action while it ran) and after the actions.</figcaption></figure>",
                chart(title, unit, window, &series, &bands, None),
                esc(title)
            );
        }
    }
    if r.failed_scrapes.0 > 0 {
        let _ = write!(
            out,
            "<p class=\"muted\">{} scrape(s) gave nothing{}.</p>",
            r.failed_scrapes.0,
            r.failed_scrapes
                .1
                .as_deref()
                .map_or(String::new(), |e| format!(": {}", esc(e)))
        );
    }
    out.push_str("</section>");

    // The timeline.
    out.push_str("<section id=\"timeline\"><h2>Action timeline</h2>");
    out.push_str(&timeline(r, window));
    let rows: Vec<Vec<String>> = r
        .actions
        .iter()
        .map(|(name, a)| {
            vec![
                esc(name),
                format!("<code>{}</code>", esc(&a.action_id)),
                state_badge(a.state.as_str()),
                esc(&if a.hosts.is_empty() {
                    "-".into()
                } else {
                    a.hosts.join(", ")
                }),
                a.started.map_or("-".into(), clock),
                a.ended.map_or("-".into(), clock),
                esc(&a
                    .parameters
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")),
                esc(a.reason.as_deref().unwrap_or("")),
            ]
        })
        .collect();
    table(
        &mut out,
        "Each action, its hosts and times (UTC)",
        &[
            "action",
            "actionId",
            "state",
            "hosts",
            "start",
            "end",
            "parameters",
            "notes",
        ],
        &rows,
        99,
    );
    out.push_str("</section>");

    out.push_str("<section id=\"effects\"><h2>What the faults did</h2>");
    let effects = r.effects();
    if effects.is_empty() {
        out.push_str("<p class=\"muted\">No fault reported a measured effect.</p>");
    } else {
        let rows: Vec<Vec<String>> = effects
            .into_iter()
            .map(|e| {
                let verdict = if e.far {
                    "<span class=\"state s-stopped\">⚠ far from asked</span>"
                } else {
                    "<span class=\"state s-completed\">✔ ok</span>"
                };
                vec![
                    esc(&e.action),
                    esc(&e.host),
                    esc(&e.figure),
                    esc(&e.asked),
                    esc(&e.observed),
                    verdict.into(),
                ]
            })
            .collect();
        table(
            &mut out,
            "Asked versus observed, per host: each fault's own measurement of its effect.",
            &["action", "host", "figure", "asked", "observed", "verdict"],
            &rows,
            3,
        );
    }
    out.push_str("</section>");

    // Alarms.
    out.push_str("<section id=\"alarms\"><h2>Stop conditions</h2>");
    if r.alarms.is_empty() {
        out.push_str("<p class=\"muted\">No stop condition: nothing watched the system during the run.</p>");
    }
    for (name, a) in &r.alarms {
        let rule = a.rule.as_ref();
        let last = a.points.last().map_or("INSUFFICIENT_DATA", |p| p.state.as_str());
        let _ = write!(out, "<h3>{} {}</h3>", esc(name), state_badge(last));
        if let Some(rule) = rule {
            let _ = write!(
                out,
                "<p>ALARM when {} of the last {} datapoints (one per {}) are {} {} {}.</p>",
                rule.datapoints_to_alarm,
                rule.evaluation_periods,
                human(std::time::Duration::from_millis(rule.period_ms)),
                esc(&rule.statistic),
                esc(&rule.comparison),
                rule.threshold
            );
        }
        let series = [Series {
            name: "datapoint",
            points: a.points.iter().map(|p| (p.at, p.value)).collect(),
        }];
        let _ = write!(
            out,
            "<figure>{}<figcaption>Datapoints of {} against its threshold (dashed).</figcaption></figure>",
            chart(
                &format!("{name}: datapoints"),
                "",
                window,
                &series,
                &bands,
                rule.map(|r| r.threshold)
            ),
            esc(name)
        );
        let fired: Vec<String> = a
            .points
            .iter()
            .filter(|p| p.state == "ALARM")
            .map(|p| format!("{} ({})", clock(p.at), p.phase))
            .collect();
        if !fired.is_empty() {
            let _ = write!(out, "<p>In ALARM at: {}.</p>", esc(&fired.join(", ")));
        }
        out.push_str("<details><summary>Every evaluation</summary>");
        let rows: Vec<Vec<String>> = a
            .points
            .iter()
            .map(|p| {
                vec![
                    clock(p.at),
                    esc(&p.phase),
                    p.value.map_or("missing".into(), |v| format!("{v:.4}")),
                    state_badge(&p.state),
                ]
            })
            .collect();
        table(&mut out, name, &["time (UTC)", "phase", "value", "state"], &rows, 2);
        out.push_str("</details>");
    }
    out.push_str("</section>");

    // Targets and the template.
    out.push_str("<section id=\"targets\"><h2>Resolved targets</h2>");
    let rows: Vec<Vec<String>> = r
        .targets
        .iter()
        .map(|(t, selected)| vec![esc(t), esc(&selected.join(", "))])
        .collect();
    if rows.is_empty() {
        out.push_str("<p class=\"muted\">No target was resolved.</p>");
    } else {
        table(
            &mut out,
            "What each target selected",
            &["target", "selected"],
            &rows,
            99,
        );
    }
    out.push_str("</section><section id=\"template\"><h2>Template</h2>");
    match &r.template {
        Some(t) => {
            let _ = write!(
                out,
                "<pre>{}</pre>",
                esc(&serde_json::to_string_pretty(t).unwrap_or_default())
            );
        }
        None => out.push_str("<p class=\"muted\">The journal does not hold the template.</p>"),
    }
    out.push_str("</section>");

    out.push_str("<section id=\"notes\" class=\"notes\"><h2>Team notes</h2>");
    for prompt in [
        "What we expected",
        "What happened",
        "What surprised us",
        "Follow-ups (owner, due date)",
    ] {
        let _ = write!(
            out,
            "<h3>{prompt}</h3><div class=\"fill\">To be filled in by the team.</div>"
        );
    }
    let _ = writeln!(
        out,
        "</section><footer><p class=\"muted\">Made by faultline {} from the journal of {}.</p></footer></main></body></html>",
        env!("CARGO_PKG_VERSION"),
        esc(&r.experiment_id)
    );
    out
}

/// The actions as bars over time, each labelled with its name and final state.
fn timeline(r: &RunRecord, (from, to): (SystemTime, SystemTime)) -> String {
    let (w, left, row) = (760.0, 170.0, 26.0);
    let h = 30.0 + row * r.actions.len() as f64;
    let span = to.duration_since(from).unwrap_or_default().as_secs_f64().max(0.001);
    let x = |t: SystemTime| {
        let s = t.duration_since(from).map_or(0.0, |d| d.as_secs_f64());
        left + (w - left - 10.0) * (s / span).clamp(0.0, 1.0)
    };
    let mut svg = format!(
        "<figure><svg viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"Action timeline\"><title>Action timeline</title>"
    );
    for (i, (name, a)) in r.actions.iter().enumerate() {
        let y = 8.0 + row * i as f64;
        let (fill, pattern) = match a.state {
            State::Completed => ("#17653a", ""),
            State::Failed => ("#a4161a", "stroke-dasharray=\"3 2\""),
            State::Stopped | State::Stopping => ("#7a4b00", "stroke-dasharray=\"6 2\""),
            _ => ("#1f4e9a", ""),
        };
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left - 8.0,
            y + 15.0,
            esc(name)
        );
        if let Some(start) = a.started {
            let end = a.ended.unwrap_or(r.ended_at);
            let (x0, x1) = (x(start), x(end).max(x(start) + 2.0));
            let _ = write!(
                svg,
                "<rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"20\" fill=\"{fill}\" fill-opacity=\"0.25\" \
                 stroke=\"{fill}\" stroke-width=\"2\" {pattern}><title>{name}: {state}, {} to {}</title></rect>\
                 <text x=\"{:.1}\" y=\"{:.1}\">{state} ({})</text>",
                x1 - x0,
                clock(start),
                clock(end),
                x0 + 4.0,
                y + 15.0,
                human(end.duration_since(start).unwrap_or_default()),
                name = esc(name),
                state = a.state.as_str()
            );
        } else {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" class=\"muted\">{} (never started)</text>",
                left + 4.0,
                y + 15.0,
                a.state.as_str()
            );
        }
    }
    let _ = write!(
        svg,
        "<text x=\"{left}\" y=\"{:.1}\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text></svg>\
         <figcaption>Each action from its start to its end (UTC); the label says how it ended.</figcaption></figure>",
        h - 4.0,
        clock(from),
        w - 10.0,
        h - 4.0,
        clock(to)
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::record::tests::record;

    #[test]
    fn the_report_tells_hosts_actions_stop_and_what_users_saw() {
        let html = render(&record());
        for needle in [
            "web-a1",
            "Slow",
            "faultline:network:latency",
            "stop condition Errors went into ALARM",
            "Reaction time",
            "Time to recover",
            "What the users saw",
            "during Slow",
            "80.0 %",
            "Team notes",
            "■ stopped",
        ] {
            assert!(html.contains(needle), "missing {needle}");
        }
        // Text from the template is escaped, never markup.
        assert!(html.contains("break &lt;web&gt; &amp; see"));
        assert!(!html.contains("break <web>"));
    }

    #[test]
    fn the_report_loads_nothing_from_elsewhere() {
        let html = render(&record());
        for resource in ["src=", "<link", "<script", "@import", "url(", "href=\"http"] {
            assert!(!html.contains(resource), "{resource} in the report");
        }
        assert_eq!(html.matches("<svg").count(), html.matches("</svg>").count());
        assert!(
            html.matches("<svg").count() >= 5,
            "user charts, the timeline and an alarm chart"
        );
    }
}
