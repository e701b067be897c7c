//! The command line itself: help everywhere, the dry run against live agents, the agent list.

use crate::common;

use common::*;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["--version"],
        vec!["validate", "--help"],
        vec!["plan", "--help"],
        vec!["run", "--help"],
        vec!["agents", "--help"],
        vec!["demo", "--help"],
        vec!["topology", "--help"],
        vec!["topology", "up", "--help"],
        vec!["topology", "down", "--help"],
        vec!["topology", "status", "--help"],
        vec!["topology", "render", "--help"],
        vec!["serve", "--help"],
        vec!["experiments", "list", "--help"],
        vec!["schedules", "add", "--help"],
        vec!["lever", "engage", "--help"],
        vec!["history", "--help"],
        vec!["report", "--help"],
    ] {
        let out = Command::new(FAULTLINE).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty(), "{args:?} printed nothing");
    }
    for args in [vec!["--help"], vec!["--version"]] {
        let out = Command::new(agent_bin()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "agent {args:?}");
    }
    let out = Command::new(FAULTLINE)
        .args(["run", "--no-such-flag", "x.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn dry_run_resolves_against_live_agents_and_injects_nothing() {
    let s = Scratch::new("dry-run");
    let template = s.write_json(
        "t.json",
        &json!({
            "description": "dry",
            "targets": { "T": { "resourceType": "faultline:host", "resourceTags": { "tier": "web" }, "selectionMode": "COUNT(1)" } },
            "actions": { "A": { "actionId": "faultline:host:cpu-stress", "parameters": { "duration": "PT30S" }, "targets": { "Hosts": "T" } } },
            "stopConditions": [{ "source": "none" }]
        }),
    );
    let (ctl, port) = controller(&s, &template, 2, &["--dry-run"]);
    let a1 = agent(&s, port, "web-a1", "az-a", &[]);
    let _b1 = agent(&s, port, "web-b1", "az-b", &[]);
    let (status, out, _) = ctl.finish(T);
    assert_eq!(status.code(), Some(0), "{out}");
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["targets"]["T"].as_array().unwrap().len(), 1);
    assert!(tree_cpu_load(a1.pid(), Duration::from_millis(500)) < 0.1);
    assert!(!s.path("journal.jsonl").exists(), "a dry run writes no journal");
}

#[test]
fn agents_lists_who_connects() {
    let s = Scratch::new("agents");
    agent_bin();
    let mut cmd = Command::new(FAULTLINE);
    cmd.args(["agents", "--listen", "127.0.0.1:0", "--wait-agents", "2"])
        .arg("--token-file")
        .arg(s.path("token"));
    let mut ctl = Proc::spawn("agents", cmd);
    let port = ctl.controller_port();
    let _a = agent(&s, port, "web-a1", "az-a", &["--tag", "team=sre"]);
    let _b = agent(&s, port, "web-b1", "az-b", &["--allow", "kill"]);
    let (status, out, _) = ctl.finish(T);
    assert_eq!(status.code(), Some(0));
    for text in ["web-a1", "az-a", "team=sre", "web-b1", "127.0.0.1"] {
        assert!(out.contains(text), "{text} missing from:\n{out}");
    }
    let b_row = out.lines().find(|l| l.contains("web-b1")).unwrap();
    assert!(b_row.contains("kill") && !b_row.contains("cpu"), "{b_row}");
}

/// The hidden watchdog of a stopped container: a `done` from its controller ends it at once,
/// without asking Docker anything (the container does not exist).
#[test]
fn the_stop_watchdog_released_by_its_controller_exits_at_once() {
    use std::io::Write;
    let until = std::time::SystemTime::now() + Duration::from_secs(3600);
    let until_ms = until
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let mut child = Command::new(FAULTLINE)
        .args([
            "hold-start",
            "--container",
            "faultline-no-such-host",
            "--until-unix-ms",
            &until_ms,
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    child.stdin.take().unwrap().write_all(b"done\n").unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}
