//! The game-day report end to end: a real run through a real load balancer (demo-lb in front
//! of an agent's proxy in front of demo-web), whose `userExperience` scrapes the balancer's
//! /metrics; the per-phase figures must show the latency the action injected and only
//! then; `faultline report` turns the run's journal into HTML and Markdown.

use crate::common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// The status of `GET path` on 127.0.0.1:port, if it answers.
fn status(port: u16, path: &str) -> Option<u16> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(c, "GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n").ok()?;
    let mut answer = String::new();
    c.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn phase<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["userExperience"]
        .as_array()
        .and_then(|p| p.iter().find(|f| f["phase"] == name))
        .unwrap_or_else(|| panic!("no phase {name} in {}", report["userExperience"]))
}

fn figure(phase: &Value, key: &str) -> f64 {
    phase[key].as_f64().unwrap_or_else(|| panic!("no {key} in {phase}"))
}

#[test]
fn a_run_measures_what_the_users_saw_and_its_journal_becomes_a_report() {
    let s = Scratch::new("report");
    let (_web, web) = web_service("report-web");
    // The proxy's port is chosen first: the balancer and the template need it before the
    // agent (which needs the controller) exists.
    let proxy = free_port();
    let mut lb_cmd = Command::new(workspace_bin("demo-lb"));
    lb_cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--backend",
        &format!("web-a1=127.0.0.1:{proxy}"),
    ]);
    let mut lb = Proc::spawn("lb", lb_cmd);
    let lb_port = lb.listen_port("load balancing");

    let template = json!({
        "description": "slow web-a1 | see it at the balancer",
        "targets": { "Web": { "resourceType": "faultline:host", "resourceIds": ["web-a1"], "selectionMode": "ALL" } },
        "actions": { "Slow": {
            "actionId": "faultline:network:latency",
            "parameters": { "duration": "PT4S", "delayMilliseconds": "100" },
            "targets": { "Hosts": "Web" }
        } },
        "stopConditions": [{ "source": "faultline:alarm", "value": "Errors" }],
        "alarms": { "Errors": {
            "metric": { "http": { "url": format!("http://127.0.0.1:{lb_port}/"), "timeout": "PT2S", "probesPerPeriod": 10 }, "statistic": "errorRate" },
            "threshold": 0.5,
            "comparisonOperator": "GreaterThanThreshold",
            "period": "PT1S",
            "evaluationPeriods": 2,
            "datapointsToAlarm": 2
        } },
        "userExperience": {
            "scrape": format!("http://127.0.0.1:{lb_port}/metrics"),
            "requests": ["lb_requests_total", "lb_backend_errors_total", "lb_no_backend_total"],
            "errors": ["lb_backend_errors_total", "lb_no_backend_total"],
            "latency": "lb_request_duration_seconds",
            "period": "PT0.5S"
        }
    });
    let file = s.write_json("t.json", &template);
    // Two agents: the second one connects once the balancer finds web-a1 healthy, so the
    // baseline starts with a working service.
    let (ctl, port) = controller(&s, &file, 2, &[]);
    let _a1 = agent(
        &s,
        port,
        "web-a1",
        "az-a",
        &["--proxy", &format!("127.0.0.1:{proxy}=127.0.0.1:{web}")],
    );
    eventually("the balancer finds web-a1 healthy", T, || {
        status(lb_port, "/lb/healthz") == Some(200)
    });
    let _b1 = agent(&s, port, "web-b1", "az-b", &[]);
    let (status, stdout, stderr) = ctl.finish(T);
    let report = report(&stdout, &stderr);
    assert_eq!(status.code(), Some(0), "{}", stderr.join("\n"));

    // What the users saw, from real scrapes: fast before, slow while the latency held
    // (100 ms each way through the proxy: under the balancer's health-check timeout, so no
    // errors), fast again after.
    let (baseline, slow, recovery) = (
        phase(&report, "baseline"),
        phase(&report, "Slow"),
        phase(&report, "recovery"),
    );
    for p in [baseline, slow, recovery] {
        assert!(figure(p, "requestRate") > 0.5, "no traffic measured: {p}");
        assert_eq!(figure(p, "errorRate"), 0.0, "{p}");
    }
    // Each request then takes over 200 ms: the histogram's (100 ms, 250 ms] bucket.
    assert!(figure(baseline, "p50Ms") < 50.0, "{baseline}");
    assert!(figure(slow, "p50Ms") > 100.0, "{slow}");
    assert!(figure(recovery, "p50Ms") < 50.0, "{recovery}");
    let journal = journal(&s);
    let scrapes = journal.iter().filter(|e| e["event"] == "user_experience").count();
    assert!(scrapes >= 10, "{scrapes} scrapes journaled");
    assert!(journal.iter().any(|e| e["event"] == "run_started" && e["seed"] == 1));

    // The journal alone makes the report, in both formats.
    let html_file = s.path("report.html");
    let out = Command::new(FAULTLINE)
        .arg("report")
        .arg(s.path("journal.jsonl"))
        .args(["--format", "html", "--output"])
        .arg(&html_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let html = std::fs::read_to_string(&html_file).unwrap();
    for needle in [
        "web-a1",
        "during Slow",
        "✔ completed",
        "Time to recover",
        "Team notes",
        "<svg",
    ] {
        assert!(html.contains(needle), "the HTML report lacks {needle}");
    }
    assert!(
        !html.contains("src=") && !html.contains("<link"),
        "the report loads resources"
    );

    let out = Command::new(FAULTLINE)
        .arg("report")
        .arg(s.path("journal.jsonl"))
        .args(["--format", "md"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let md = String::from_utf8(out.stdout).unwrap();
    // The Markdown row of the action carries the same measured p50 as the run's report.
    let row = md
        .lines()
        .find(|l| l.starts_with("| during Slow |"))
        .unwrap_or_else(|| panic!("no row for Slow in\n{md}"));
    let p50: f64 = row
        .split('|')
        .nth(5)
        .unwrap()
        .trim()
        .trim_end_matches(" ms")
        .parse()
        .unwrap();
    assert!((p50 - figure(slow, "p50Ms")).abs() < 0.11, "{row} vs {slow}");
    assert!(md.contains("# Game day report: slow web-a1"), "{md}");

    lb.signal(libc::SIGTERM);
}

#[test]
fn a_journal_that_cannot_be_read_is_a_usage_error_that_says_where() {
    let s = Scratch::new("report-bad");
    let missing = Command::new(FAULTLINE)
        .args(["report", "EXPnothere"])
        .current_dir(&s.0)
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("give --server URL"));

    let good = r#"{"ts":"2026-11-30T10:00:00.000Z","experiment":"EXP1","event":"experiment_state","state":"pending"}"#;
    let file = s.path("j.jsonl");
    std::fs::write(&file, format!("{good}\n{good}\n{{\"ts\": 3\n")).unwrap();
    let broken = Command::new(FAULTLINE).arg("report").arg(&file).output().unwrap();
    assert_eq!(broken.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&broken.stderr).contains("line 3 is unreadable"),
        "{}",
        String::from_utf8_lossy(&broken.stderr)
    );

    std::fs::write(&file, "just text\n").unwrap();
    let foreign = Command::new(FAULTLINE).arg("report").arg(&file).output().unwrap();
    assert_eq!(foreign.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&foreign.stderr).contains("not a faultline journal"));
}
