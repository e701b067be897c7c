//! FIS templates as users bring them: every file of experiments/fis/ validated and planned
//! (or refused, naming what this build lacks), the FIS template language, and the
//! AWSFIS-Run-* documents run by real agents with their effect seen from outside.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);
/// The tags the FIS documentation's examples select by; the demo hosts carry them.
const FIS_TAGS: [&str; 4] = ["--tag", "Environment=Production", "--tag", "Tier=Web"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fis_alarms() -> PathBuf {
    root().join("experiments/fis/alarms.json")
}

/// The templates of experiments/fis/ (everything but its alarms file).
fn fis_templates() -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(root().join("experiments/fis"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json") && p.file_name() != Some("alarms.json".as_ref()))
        .collect();
    files.sort();
    files
}

fn faultline(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(FAULTLINE).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_fis_example_validates_and_plans_or_names_what_this_build_lacks() {
    let alarms = fis_alarms();
    let inventory = root().join("experiments/inventory.json");
    let mut valid = 0;
    for f in fis_templates() {
        let file = f.to_str().unwrap();
        let (code, out, err) = faultline(&["validate", "--alarms", alarms.to_str().unwrap(), file]);
        match code {
            Some(0) => {
                valid += 1;
                let (code, out, err) = faultline(&[
                    "plan",
                    "--alarms",
                    alarms.to_str().unwrap(),
                    "--inventory",
                    inventory.to_str().unwrap(),
                    "--seed",
                    "1",
                    file,
                ]);
                assert_eq!(code, Some(0), "plan {file}: {out}{err}");
            }
            Some(2) => assert!(
                out.contains("which this build lacks")
                    || out.contains("which this build's")
                    || out.contains("unknown actionId `aws:ec2:"),
                "{file} is refused for another reason than a missing action:\n{out}{err}"
            ),
            other => panic!("validate {file}: exit {other:?}\n{out}{err}"),
        }
    }
    assert!(valid >= 5, "only {valid} FIS examples are valid");
}

#[test]
fn cloudformation_spelling_is_accepted_and_its_mistakes_point_at_the_users_keys() {
    let s = Scratch::new("fis-cfn");
    let mut t: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("experiments/fis/docs-cloudformation-cpu-stress.json")).unwrap(),
    )
    .unwrap();
    t["Targets"]["WebInstances"]["SelectionMode"] = json!("SOME");
    t["Actions"]["CpuStress"]["Targets"] = json!({ "Instances": "Nowhere" });
    let file = s.write_json("t.json", &t);
    let (code, out, _) = faultline(&[
        "validate",
        "--alarms",
        fis_alarms().to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("/Targets/WebInstances/SelectionMode:"), "{out}");
    assert!(
        out.contains("/Actions/CpuStress/Targets/Instances: `Nowhere` is not a target"),
        "{out}"
    );
}

#[test]
fn what_has_no_local_meaning_is_refused_by_name() {
    let s = Scratch::new("fis-refused");
    let mut t = single_action("web-a1", "aws:fis:wait", json!({ "duration": "PT1M" }));
    t["experimentOptions"] = json!({ "accountTargeting": "multi-account" });
    let multi = s.write_json("multi.json", &t);
    let (code, out, _) = faultline(&["validate", multi.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("/experimentOptions/accountTargeting: multi-account targeting"),
        "{out}"
    );

    let mut t = single_action("web-a1", "faultline:process:kill", json!({ "processName": "x" }));
    t["targets"]["T"]["resourceType"] = json!("aws:rds:cluster");
    let rds = s.write_json("rds.json", &t);
    let (code, out, _) = faultline(&["validate", rds.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("aws:rds:cluster"), "{out}");

    let t = single_action("web-a1", "aws:ecs:drain-container-instances", json!({}));
    let ecs = s.write_json("ecs.json", &t);
    let (code, out, _) = faultline(&["validate", ecs.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("unknown actionId `aws:ecs:drain-container-instances`"),
        "{out}"
    );
}

#[test]
fn targets_named_by_arn_are_never_skipped() {
    let s = Scratch::new("fis-arn");
    let inventory = root().join("experiments/inventory.json");
    let mut t = single_action("web-a1", "aws:fis:wait", json!({ "duration": "PT1M" }));
    t["actions"]["A"] = json!({
        "actionId": "aws:ssm:send-command",
        "parameters": {
            "documentArn": "arn:aws:ssm:eu-west-1::document/AWSFIS-Run-CPU-Stress",
            "documentParameters": "{\"DurationSeconds\": \"60\"}"
        },
        "targets": { "Instances": "T" }
    });
    t["experimentOptions"] = json!({ "emptyTargetResolutionMode": "skip" });
    t["targets"]["T"] = json!({
        "resourceType": "aws:ec2:instance",
        "resourceArns": ["arn:aws:ec2:eu-west-1:123456789012:instance/i-0gone"],
        "selectionMode": "ALL"
    });
    let by_arn = s.write_json("arn.json", &t);
    let (code, out, err) = faultline(&[
        "plan",
        "--inventory",
        inventory.to_str().unwrap(),
        by_arn.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(err.contains("i-0gone") && err.contains("never skipped"), "{err}");

    t["targets"]["T"] = json!({
        "resourceType": "aws:ec2:instance",
        "resourceTags": { "Environment": "Staging" },
        "selectionMode": "ALL"
    });
    let by_tag = s.write_json("tag.json", &t);
    let (code, out, err) = faultline(&[
        "plan",
        "--inventory",
        inventory.to_str().unwrap(),
        by_tag.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "tags resolving to nothing are skipped: {out}{err}");
}

/// An example of experiments/fis/ with its durations and documentParameters changed.
fn example(name: &str, document: Value, duration: Option<&str>) -> Value {
    let mut t: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("experiments/fis").join(name)).unwrap()).unwrap();
    let params = &mut t["actions"]["RunDocument"]["parameters"];
    params["documentParameters"] = json!(document.to_string());
    match duration {
        Some(d) => params["duration"] = json!(d),
        None => {
            params.as_object_mut().unwrap().remove("duration");
        }
    }
    t
}

/// An alarms file defining the examples' stop condition as one that never fires.
fn quiet_alarms(s: &Scratch) -> PathBuf {
    s.write_json(
        "alarms.json",
        &json!({
            "$schema": "alarms.schema.json",
            "WebErrorRateHigh": {
                "metric": { "command": { "run": ["true"] }, "statistic": "exitStatus" },
                "threshold": 0,
                "comparisonOperator": "GreaterThanThreshold",
                "period": "PT1S",
                "evaluationPeriods": 1
            }
        }),
    )
}

#[test]
fn cpu_stress_document_burns_for_duration_seconds_within_the_actions_span() {
    let s = Scratch::new("fis-ssm-cpu");
    let template = s.write_json(
        "t.json",
        &example(
            "ssm-cpu-stress.json",
            json!({ "DurationSeconds": "4", "CPU": "1", "LoadPercent": "100", "InstallDependencies": "True" }),
            Some("PT9S"),
        ),
    );
    let alarms = quiet_alarms(&s);
    let (mut ctl, port) = controller(&s, &template, 1, &["--alarms", alarms.to_str().unwrap()]);
    let a = agent(&s, port, "web-a1", "az-a", &FIS_TAGS);
    ctl.expect("action RunDocument running", T);
    let started = Instant::now();
    let busy = tree_cpu_load(a.pid(), Duration::from_secs(2));
    // One worker at 100 %, on a machine other tests load too.
    assert!(busy > 0.15, "CPU load during the document: {busy:.2}");
    // DurationSeconds ends the fault; the action's duration goes on.
    eventually("the holder to end after DurationSeconds", T, || {
        holders(a.pid()).is_empty()
    });
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the fault outlived DurationSeconds"
    );
    let idle = tree_cpu_load(a.pid(), Duration::from_secs(1));
    assert!(idle < 0.1, "CPU load after DurationSeconds: {idle:.2}");
    ctl.expect("action RunDocument completed", T);
    assert!(
        started.elapsed() >= Duration::from_secs(8),
        "the action ended before its duration"
    );
    let (status, out, lines) = ctl.finish(T);
    assert_eq!(status.code(), Some(0), "{}", lines.join("\n"));
    assert_eq!(report(&out, &lines)["state"], "completed");
}

#[test]
fn kill_process_document_signals_the_named_processes() {
    let s = Scratch::new("fis-ssm-kill");
    let name = unique_name("ssm-victim");
    let mut victim = Command::new("sleep").arg0(&name).arg("300").spawn().unwrap();
    let template = s.write_json(
        "t.json",
        &example(
            "ssm-kill-process.json",
            json!({ "ProcessName": name, "Signal": "SIGKILL" }),
            None,
        ),
    );
    let alarms = quiet_alarms(&s);
    let (ctl, port) = controller(&s, &template, 1, &["--alarms", alarms.to_str().unwrap()]);
    let _a = agent(&s, port, "web-a1", "az-a", &FIS_TAGS);
    let (status, out, lines) = ctl.finish(T);
    assert_eq!(victim.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert_eq!(status.code(), Some(0), "{}", lines.join("\n"));
    assert_eq!(report(&out, &lines)["state"], "completed");
}

/// An echo server on loopback.
fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

fn round_trip(port: u16) -> Duration {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_nodelay(true).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).unwrap();
    t.elapsed()
}

#[test]
fn network_latency_document_delays_by_its_default_200_ms() {
    let s = Scratch::new("fis-ssm-latency");
    let upstream = echo_server();
    // DelayMilliseconds is left out: the document's default (200 ms) applies.
    let mut t = example(
        "ssm-network-latency.json",
        json!({ "DurationSeconds": "4", "Interface": "eth0" }),
        Some("PT4S"),
    );
    t["targets"]["WebInstances"]["selectionMode"] = json!("ALL");
    let template = s.write_json("t.json", &t);
    let alarms = quiet_alarms(&s);
    let (mut ctl, port) = controller(&s, &template, 1, &["--alarms", alarms.to_str().unwrap()]);
    let mut extra = FIS_TAGS.to_vec();
    let proxy_arg = format!("127.0.0.1:0=127.0.0.1:{upstream}");
    extra.extend(["--proxy", &proxy_arg]);
    let mut a = agent(&s, port, "web-a1", "az-a", &extra);
    let proxy = a.listen_port("proxy ready");
    ctl.expect("action RunDocument running", T);
    let during = round_trip(proxy);
    ctl.expect("action RunDocument completed", T);
    let after = round_trip(proxy);
    let (status, _, lines) = ctl.finish(T);
    assert_eq!(status.code(), Some(0), "{}", lines.join("\n"));
    // Both directions are delayed by 200 ms.
    assert!(during >= Duration::from_millis(380), "during: {during:?}");
    assert!(after < Duration::from_millis(100), "after: {after:?}");
}

#[test]
fn the_demo_runs_a_cloudformation_template_with_alarms_named_by_arn() {
    workspace_bin("faultline-agent");
    let _demo = one_demo_at_a_time();
    let s = Scratch::new("fis-demo");
    let mut cmd = Command::new(FAULTLINE);
    cmd.args(["demo", "--format", "json", "--seed", "5", "--template"])
        .arg(root().join("experiments/fis/docs-cloudformation-cpu-stress.json"))
        .arg("--alarms")
        .arg(fis_alarms())
        .current_dir(&s.0);
    let mut demo = Proc::spawn("demo", cmd);
    demo.expect("demo world ready", Duration::from_secs(90));
    let (status, out, lines) = demo.finish(Duration::from_secs(180));
    let r = report(&out, &lines);
    assert_eq!(status.code(), Some(0), "{r}\n{}", lines.join("\n"));
    assert_eq!(r["state"], "completed");
    // PERCENT(50) of the four Production/Web hosts of az-a and az-b.
    let hosts = r["actions"]["CpuStress"]["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2, "{r}");
    assert!(hosts.iter().all(|h| !h.as_str().unwrap().starts_with("web-c")), "{r}");
}

/// The load balancer's `lb_backend_healthy` gauge, by backend.
fn lb_health(port: u16) -> std::collections::BTreeMap<String, bool> {
    let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
        return Default::default();
    };
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = c.write_all(b"GET /metrics HTTP/1.0\r\nHost: lb\r\n\r\n");
    let mut text = String::new();
    let _ = c.read_to_string(&mut text);
    text.lines()
        .filter_map(|l| l.strip_prefix("lb_backend_healthy{backend=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(b, v)| (b.to_string(), v.trim() == "1"))
        .collect()
}

#[test]
fn the_demo_cuts_a_subnet_off_and_lets_it_back() {
    workspace_bin("faultline-agent");
    let _demo = one_demo_at_a_time();
    let s = Scratch::new("fis-subnet");
    let lb_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = Command::new(FAULTLINE);
    cmd.args([
        "demo",
        "--format",
        "json",
        "--seed",
        "5",
        "--lb-port",
        &lb_port.to_string(),
    ])
    .arg("--template")
    .arg(root().join("experiments/fis/subnet-disrupt-all.json"))
    .arg("--alarms")
    .arg(fis_alarms())
    .current_dir(&s.0);
    let mut demo = Proc::spawn("demo", cmd);
    demo.expect("demo world ready", Duration::from_secs(90));
    demo.expect("action DisruptSubnet running", T);
    // Seen from the load balancer, outside the subnet: az-a's hosts stop answering, the
    // others do not.
    eventually("the load balancer to lose az-a", Duration::from_secs(20), || {
        let h = lb_health(lb_port);
        h.get("web-a1") == Some(&false) && h.get("web-a2") == Some(&false)
    });
    let h = lb_health(lb_port);
    assert_eq!((h.get("web-b1"), h.get("web-c1")), (Some(&true), Some(&true)), "{h:?}");
    demo.expect("action DisruptSubnet completed", Duration::from_secs(40));
    let (status, out, lines) = demo.finish(Duration::from_secs(120));
    let r = report(&out, &lines);
    assert_eq!(status.code(), Some(0), "{r}\n{}", lines.join("\n"));
    assert_eq!(r["actions"]["DisruptSubnet"]["hosts"], json!(["web-a1", "web-a2"]));
}

/// Whether a request from `from` to the demo host at `to` (its proxy, port 8080) is answered.
fn answered(from: [u8; 4], to: [u8; 4]) -> bool {
    let Ok(mut c) = connect_from(from.into(), std::net::SocketAddrV4::new(to.into(), 8080)) else {
        return false;
    };
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = c.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n");
    let mut b = [0u8; 1];
    c.read_exact(&mut b).is_ok()
}

#[test]
fn the_demo_cuts_a_subnet_off_from_the_other_azs_only() {
    workspace_bin("faultline-agent");
    let _demo = one_demo_at_a_time();
    let s = Scratch::new("fis-subnet-az");
    let lb_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = Command::new(FAULTLINE);
    cmd.args([
        "demo",
        "--format",
        "json",
        "--seed",
        "5",
        "--lb-port",
        &lb_port.to_string(),
    ])
    .arg("--template")
    .arg(root().join("experiments/fis/subnet-disrupt-availability-zone.json"))
    .arg("--alarms")
    .arg(fis_alarms())
    .current_dir(&s.0);
    let mut demo = Proc::spawn("demo", cmd);
    demo.expect("demo world ready", Duration::from_secs(90));
    // The demo's addresses: 127.0.AZ.N, az-a counting 1; 127.0.9.9 is no host's.
    let (web_a1, web_b1, web_c1, outside) = ([127, 0, 1, 11], [127, 0, 2, 11], [127, 0, 3, 11], [127, 0, 9, 9]);
    assert!(answered(web_b1, web_a1), "az-b reaches az-a before the fault");
    demo.expect("action DisruptSubnet running", T);
    eventually("az-a to refuse the other AZs", Duration::from_secs(10), || {
        !answered(web_b1, web_a1) && !answered(web_c1, web_a1)
    });
    assert!(
        answered(outside, web_a1),
        "a peer outside every subnet still reaches az-a"
    );
    assert!(answered(web_c1, web_b1), "the other AZs still reach each other");
    let h = lb_health(lb_port);
    assert_eq!(
        (h.get("web-a1"), h.get("web-a2")),
        (Some(&true), Some(&true)),
        "the load balancer still reaches az-a: {h:?}"
    );
    demo.expect("action DisruptSubnet completed", Duration::from_secs(40));
    assert!(answered(web_b1, web_a1), "az-b reaches az-a again after the fault");
    let (status, out, lines) = demo.finish(Duration::from_secs(120));
    let r = report(&out, &lines);
    assert_eq!(status.code(), Some(0), "{r}\n{}", lines.join("\n"));
    assert_eq!(r["actions"]["DisruptSubnet"]["hosts"], json!(["web-a1", "web-a2"]));
}

#[test]
fn actions_mode_skip_all_resolves_targets_and_injects_nothing() {
    let s = Scratch::new("fis-skip-all");
    let mut t = example("ssm-cpu-stress.json", json!({ "DurationSeconds": "30" }), Some("PT30S"));
    t["experimentOptions"]["actionsMode"] = json!("skip-all");
    let template = s.write_json("t.json", &t);
    let alarms = quiet_alarms(&s);
    let (ctl, port) = controller(&s, &template, 1, &["--alarms", alarms.to_str().unwrap()]);
    let a = agent(&s, port, "web-a1", "az-a", &FIS_TAGS);
    let (status, out, lines) = ctl.finish(T);
    assert_eq!(status.code(), Some(0), "{}", lines.join("\n"));
    assert!(out.contains("\"host\": \"web-a1\"") || out.contains("web-a1"), "{out}");
    assert!(holders(a.pid()).is_empty(), "skip-all started a holder");
    assert!(!s.path("journal.jsonl").exists(), "skip-all ran the experiment");
}

#[test]
fn parameters_with_no_local_meaning_are_reported_as_ignored() {
    let file = root().join("experiments/fis/ssm-network-latency.json");
    let (code, out, _) = faultline(&[
        "validate",
        "--alarms",
        fis_alarms().to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{out}");
    for ignored in ["Interface is ignored", "InstallDependencies is ignored"] {
        assert!(
            out.lines().any(|l| l.contains(ignored) && l.ends_with("(warning)")),
            "{ignored}: {out}"
        );
    }
}
