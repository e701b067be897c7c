//! `faultline run` stops on SIGTERM (and on SIGHUP and SIGQUIT, handled as SIGTERM) exactly
//! as on the first Ctrl-C: every fault removed, the report printed, the journal closed, exit
//! status 143; a second signal exits at once.

use crate::common;

use common::fake_agent::FakeAgent;
use common::*;
use faultline_agent::protocol::{ControllerMessage, Outcome};
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn long_cpu_fault(s: &Scratch) -> std::path::PathBuf {
    s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:host:cpu-stress",
            json!({ "duration": "PT5M", "loadPercent": "100", "workers": "1" }),
        ),
    )
}

#[test]
fn sigterm_removes_every_fault_reports_and_exits_143() {
    ends_cleanly_on(libc::SIGTERM);
}

#[test]
fn sighup_and_sigquit_end_the_run_as_sigterm_does() {
    ends_cleanly_on(libc::SIGHUP);
    ends_cleanly_on(libc::SIGQUIT);
}

fn ends_cleanly_on(signal: i32) {
    let s = Scratch::new("sigterm");
    let (mut ctl, port) = controller(&s, &long_cpu_fault(&s), 1, &[]);
    let mut a = agent(&s, port, "web-a1", "az-a", &[]);
    ctl.expect("action A running", T);
    let busy = tree_cpu_load(a.pid(), Duration::from_secs(1));
    // A low bar: the machine may be busy with other work; idle is below 0.1.
    assert!(busy > 0.2, "the fault is in effect: the agent used {busy:.2} CPU");

    ctl.signal(signal);
    let (status, out, lines) = ctl.finish(T);
    assert_eq!(status.code(), Some(143), "signal {signal}: {}", lines.join("\n"));
    let r = report(&out, &lines);
    assert_eq!(r["state"], "stopped");
    assert!(r["reason"].as_str().unwrap().contains("SIGTERM"), "{r}");
    assert_eq!(r["actions"]["A"]["state"], "stopped");

    // Removed by the controller, seen from outside: the agent says so, its CPU is idle
    // and its state dir holds nothing.
    a.expect("removed on request", T);
    let after = tree_cpu_load(a.pid(), Duration::from_secs(1));
    assert!(after < 0.1, "after SIGTERM the agent used {after:.2} CPU");
    assert!(s.path("state-web-a1/faults").is_dir());
    assert!(state_files(&s, "web-a1").is_empty());
    let journal = journal(&s);
    assert!(
        journal
            .iter()
            .any(|e| e["event"] == "removal" && e["confirmed"] == true && e["by"] == "controller"),
        "{journal:?}"
    );
    // The journal is closed with the final state.
    let last = journal.last().unwrap();
    assert_eq!(last["event"], "experiment_state");
    assert_eq!(last["state"], "stopped");
}

#[test]
fn a_second_signal_exits_at_once() {
    let s = Scratch::new("sigterm-twice");
    let (mut ctl, port) = controller(&s, &long_cpu_fault(&s), 1, &[]);
    let mut fake = FakeAgent::connect(port, &s.path("token"), "web-a1", "az-a", &["cpu"]);
    let (id, msg) = fake.next_command(T);
    assert!(matches!(msg, ControllerMessage::Apply { .. }), "{msg:?}");
    fake.ack(
        id,
        Outcome::Applied {
            detail: "fake".into(),
            pids: Vec::new(),
        },
    );
    ctl.expect("action A running", T);

    ctl.signal(libc::SIGTERM);
    // The removal is asked for and never answered: the controller would wait its ack timeout.
    let (_, msg) = fake.next_command(T);
    assert!(matches!(msg, ControllerMessage::Remove { .. }), "{msg:?}");
    ctl.signal(libc::SIGTERM);
    let (status, out, lines) = ctl.finish(Duration::from_secs(5));
    assert_eq!(status.code(), Some(143), "{}", lines.join("\n"));
    assert!(out.is_empty(), "no report after a second signal: {out}");
}

#[test]
fn sigterm_during_the_steady_state_check_stops_before_anything_is_injected() {
    let s = Scratch::new("sigterm-baseline");
    let (_svc, svc_port) = web_service(&unique_name("svc"));
    // A baseline of a minute: the signal comes long before it ends.
    let template = s.write_json(
        "t.json",
        &json!({
            "description": "a long steady-state check",
            "targets": { "T": { "resourceType": "faultline:host", "resourceIds": ["web-a1"], "selectionMode": "ALL" } },
            "actions": {
                "A": { "actionId": "faultline:host:cpu-stress", "parameters": { "duration": "PT30S", "loadPercent": "60", "workers": "1" }, "targets": { "Hosts": "T" } }
            },
            "stopConditions": [{ "source": "faultline:alarm", "value": "ServiceDown" }],
            "alarms": { "ServiceDown": {
                "metric": { "http": { "url": format!("http://127.0.0.1:{svc_port}/"), "timeout": "PT0.3S", "probesPerPeriod": 1 }, "statistic": "errorRate" },
                "threshold": 0.5,
                "comparisonOperator": "GreaterThanThreshold",
                "period": "PT1S",
                "evaluationPeriods": 60,
                "datapointsToAlarm": 60
            } }
        }),
    );
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let _fake = FakeAgent::connect(port, &s.path("token"), "web-a1", "az-a", &["cpu"]);
    ctl.expect("checking steady state", T);

    ctl.signal(libc::SIGTERM);
    let (status, out, lines) = ctl.finish(T);
    assert_eq!(status.code(), Some(143), "{}", lines.join("\n"));
    let r = report(&out, &lines);
    assert_eq!(r["state"], "stopped");
    assert_eq!(r["actions"]["A"]["state"], "cancelled");
    assert!(!journal(&s).iter().any(|e| e["event"] == "dispatch"));
}
