//! Stop conditions with real services: an experiment that breaks what its alarm watches
//! stops by itself and removes every fault; one that does not completes and recovers; an
//! alarm already firing blocks the start; a Prometheus source; the JUnit file.

use crate::common;

use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(40);

fn http_alarm(port: u16) -> Value {
    json!({
        "metric": { "http": { "url": format!("http://127.0.0.1:{port}/"), "timeout": "PT0.3S", "probesPerPeriod": 2 }, "statistic": "errorRate" },
        "threshold": 0.5,
        "comparisonOperator": "GreaterThanThreshold",
        "period": "PT0.5S",
        "evaluationPeriods": 2,
        "datapointsToAlarm": 2
    })
}

fn junit(path: &std::path::Path) -> (usize, Vec<(String, Option<String>)>) {
    let text = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("JUnit is not XML ({e}):\n{text}"));
    let suite = doc.descendants().find(|n| n.has_tag_name("testsuite")).unwrap();
    let tests: usize = suite.attribute("tests").unwrap().parse().unwrap();
    let cases = suite
        .children()
        .filter(|n| n.has_tag_name("testcase"))
        .map(|c| {
            let failure = c
                .children()
                .find(|n| n.has_tag_name("failure"))
                .map(|f| f.attribute("message").unwrap().to_string());
            (c.attribute("name").unwrap().to_string(), failure)
        })
        .collect();
    (tests, cases)
}

#[test]
fn breaking_the_watched_service_stops_the_run_and_removes_every_fault() {
    let s = Scratch::new("alarm-stop");
    let name = unique_name("svc");
    let (svc, port) = web_service(&name);
    let template = s.write_json(
        "t.json",
        &json!({
            "description": "kill the service the alarm watches",
            "targets": { "T": { "resourceType": "faultline:host", "resourceIds": ["web-a1"], "selectionMode": "ALL" } },
            "actions": {
                "Burn": { "actionId": "faultline:host:cpu-stress", "parameters": { "duration": "PT30S", "loadPercent": "60", "workers": "1" }, "targets": { "Hosts": "T" } },
                "Pause": { "actionId": "aws:fis:wait", "parameters": { "duration": "PT1S" } },
                "Kill": { "actionId": "faultline:process:kill", "parameters": { "processName": name }, "targets": { "Hosts": "T" }, "startAfter": ["Pause"] }
            },
            "stopConditions": [{ "source": "faultline:alarm", "value": "ServiceDown" }],
            "alarms": { "ServiceDown": http_alarm(port) }
        }),
    );
    let junit_path = s.path("junit.xml");
    let (mut ctl, port_ctl) = controller(&s, &template, 1, &["--junit", junit_path.to_str().unwrap()]);
    let a = agent(&s, port_ctl, "web-a1", "az-a", &[]);
    ctl.expect("action Burn running", T);
    let (status, out, lines) = ctl.finish(T);
    let (svc_status, _, _) = svc.finish(T);
    assert_eq!(
        svc_status.signal(),
        Some(libc::SIGKILL),
        "the experiment killed the service"
    );

    let r = report(&out, &lines);
    assert_eq!(status.code(), Some(1), "{r}");
    assert_eq!(r["state"], "stopped");
    assert_eq!(r["stop"]["alarm"], "ServiceDown");
    assert_eq!(r["actions"]["Burn"]["state"], "stopped");
    assert_eq!(r["actions"]["Kill"]["state"], "completed");
    let rollback = r["rollback"].as_f64().expect("the report gives the reaction time");
    assert!(rollback < 2000.0, "rollback took {rollback} ms");
    assert_eq!(r["alarms"][0]["fired"]["phase"], "experiment");
    assert_eq!(r["alarms"][0]["fired"]["datapoints"], json!([1.0, 1.0]));

    assert!(
        tree_cpu_load(a.pid(), Duration::from_secs(1)) < 0.1,
        "the CPU stress must be gone"
    );
    assert!(state_files(&s, "web-a1").is_empty());
    let events = journal(&s);
    assert!(events
        .iter()
        .any(|e| e["event"] == "alarm_evaluation" && e["state"] == "ALARM"));
    assert!(events.iter().any(|e| e["event"] == "removal" && e["confirmed"] == true));

    let (tests, cases) = junit(&junit_path);
    assert_eq!(tests, 4, "three actions and one alarm: {cases:?}");
    let alarm_case = cases.iter().find(|(n, _)| n == "ServiceDown").unwrap();
    assert!(
        alarm_case
            .1
            .as_deref()
            .unwrap()
            .contains("went into ALARM during the experiment"),
        "{cases:?}"
    );
}

#[test]
fn a_healthy_run_completes_and_recovers() {
    let s = Scratch::new("alarm-ok");
    let (_svc, port) = web_service(&unique_name("svc"));
    let template = s.write_json(
        "t.json",
        &json!({
            "description": "stress without hurting the service",
            "targets": { "T": { "resourceType": "faultline:host", "resourceIds": ["web-a1"], "selectionMode": "ALL" } },
            "actions": { "Burn": { "actionId": "faultline:host:cpu-stress", "parameters": { "duration": "PT2S", "workers": "1" }, "targets": { "Hosts": "T" } } },
            "stopConditions": [{ "source": "faultline:alarm", "value": "ServiceDown" }],
            "alarms": { "ServiceDown": http_alarm(port) }
        }),
    );
    let junit_path = s.path("junit.xml");
    let (ctl, port_ctl) = controller(&s, &template, 1, &["--junit", junit_path.to_str().unwrap()]);
    let _a = agent(&s, port_ctl, "web-a1", "az-a", &[]);
    let (status, out, lines) = ctl.finish(T);
    let r = report(&out, &lines);
    assert_eq!(status.code(), Some(0), "{r}");
    assert_eq!(r["steadyState"]["baseline"], "ok");
    assert_eq!(r["steadyState"]["recovered"], true);
    assert!(r["steadyState"]["recoveryMs"].as_f64().is_some(), "{r}");
    assert_eq!(r["alarms"][0]["state"], "OK");
    let phases: Vec<String> = journal(&s)
        .iter()
        .filter(|e| e["event"] == "alarm_evaluation")
        .map(|e| e["phase"].as_str().unwrap().to_string())
        .collect();
    for phase in ["baseline", "experiment", "recovery"] {
        assert!(phases.iter().any(|p| p == phase), "no {phase} evaluation: {phases:?}");
    }
    let (tests, cases) = junit(&junit_path);
    assert_eq!(tests, 2);
    assert!(cases.iter().all(|(_, f)| f.is_none()), "{cases:?}");
}

#[test]
fn an_alarm_already_firing_blocks_the_start() {
    let s = Scratch::new("alarm-blocked");
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let template = s.write_json(
        "t.json",
        &json!({
            "description": "nothing may start",
            "targets": { "T": { "resourceType": "faultline:host", "resourceIds": ["web-a1"], "selectionMode": "ALL" } },
            "actions": { "Burn": { "actionId": "faultline:host:cpu-stress", "parameters": { "duration": "PT5S" }, "targets": { "Hosts": "T" } } },
            "stopConditions": [{ "source": "faultline:alarm", "value": "ServiceDown" }],
            "alarms": { "ServiceDown": http_alarm(closed) }
        }),
    );
    let (ctl, port_ctl) = controller(&s, &template, 1, &[]);
    let _a = agent(&s, port_ctl, "web-a1", "az-a", &[]);
    let (status, out, lines) = ctl.finish(T);
    let r = report(&out, &lines);
    assert_eq!(status.code(), Some(1), "{r}");
    assert_eq!(r["state"], "stopped");
    assert_eq!(r["actions"]["Burn"]["state"], "cancelled");
    assert!(r["reason"].as_str().unwrap().contains("ServiceDown"), "{r}");
    assert_eq!(r["alarms"][0]["fired"]["phase"], "baseline");
    assert!(r["alarms"][0]["lastNote"].as_str().unwrap().contains("refused"), "{r}");
    assert!(
        !journal(&s).iter().any(|e| e["event"] == "dispatch"),
        "nothing may be dispatched"
    );
}

/// A fake Prometheus server: answers instant queries with `value`, records the queries.
fn fake_prometheus(value: Arc<AtomicU64>, queries: Arc<Mutex<Vec<String>>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in l.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                header.clear();
            }
            let target = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
            queries.lock().unwrap().push(target);
            let v = f64::from_bits(value.load(Ordering::SeqCst));
            let body = json!({
                "status": "success",
                "data": { "resultType": "vector", "result": [{ "metric": { "job": "demo" }, "value": [1_700_000_000.123, v.to_string()] }] }
            })
            .to_string();
            let mut out = stream;
            let _ = write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    port
}

#[test]
fn a_prometheus_alarm_stops_the_run() {
    let s = Scratch::new("alarm-prom");
    let value = Arc::new(AtomicU64::new(0f64.to_bits()));
    let queries = Arc::new(Mutex::new(Vec::new()));
    let port = fake_prometheus(value.clone(), queries.clone());
    let template = s.write_json(
        "t.json",
        &json!({
            "description": "watch a Prometheus query",
            "actions": { "W": { "actionId": "aws:fis:wait", "parameters": { "duration": "PT30S" } } },
            "stopConditions": [{ "source": "faultline:alarm", "value": "Errors" }],
            "alarms": { "Errors": {
                "metric": { "prometheus": { "url": format!("http://127.0.0.1:{port}"), "query": "sum(rate(lb_backend_errors_total[30s]))" }, "statistic": "value" },
                "threshold": 1, "comparisonOperator": "GreaterThanThreshold",
                "period": "PT0.5S", "evaluationPeriods": 2, "datapointsToAlarm": 2, "treatMissingData": "notBreaching"
            } }
        }),
    );
    let (mut ctl, _) = controller(&s, &template, 0, &[]);
    ctl.expect("action W running", T);
    value.store(5f64.to_bits(), Ordering::SeqCst);
    let (status, out, lines) = ctl.finish(T);
    let r = report(&out, &lines);
    assert_eq!(status.code(), Some(1), "{r}");
    assert_eq!(r["stop"]["alarm"], "Errors");
    assert_eq!(r["alarms"][0]["lastValue"], 5.0);
    let q = queries.lock().unwrap();
    assert!(
        q[0].starts_with("/api/v1/query?query=sum%28rate%28lb_backend_errors_total%5B30s%5D%29%29"),
        "{q:?}"
    );
}
