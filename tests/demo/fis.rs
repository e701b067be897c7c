//! FIS templates as users bring them: every file of experiments/fis/ validated and planned
//! (or refused, naming what this build lacks), the FIS template language, and the
//! AWSFIS-Run-* documents run by real agents with their effect seen from outside. Their
//! set-ups (the examples, the runs, the agents, the demo) are in tests/common/fis.rs.

use crate::common;

use common::fis::*;
use common::netns::*;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn every_fis_example_validates_and_plans_or_names_what_this_build_lacks() {
    let mut valid = 0;
    for f in fis_templates() {
        let file = f.to_str().unwrap();
        let (code, out, err) = fis_validate(&f);
        match code {
            Some(0) => {
                valid += 1;
                let (code, out, err) = fis_plan(&f, &["--seed", "1"]);
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
    let mut t = fis_example("docs-cloudformation-cpu-stress.json");
    t["Targets"]["WebInstances"]["SelectionMode"] = json!("SOME");
    t["Actions"]["CpuStress"]["Targets"] = json!({ "Instances": "Nowhere" });
    let file = s.write_json("t.json", &t);
    let (code, out, _) = fis_validate(&file);
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
    let (code, out, err) = plan(&by_arn, &[]);
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(err.contains("i-0gone") && err.contains("never skipped"), "{err}");

    t["targets"]["T"] = json!({
        "resourceType": "aws:ec2:instance",
        "resourceTags": { "Environment": "Staging" },
        "selectionMode": "ALL"
    });
    let by_tag = s.write_json("tag.json", &t);
    let (code, out, err) = plan(&by_tag, &[]);
    assert_eq!(code, Some(0), "tags resolving to nothing are skipped: {out}{err}");
}

#[test]
fn subnets_are_chosen_by_their_tags_and_an_unmatched_tag_is_an_empty_target() {
    let s = Scratch::new("fis-subnet-tags");
    let example = root().join("experiments/fis/subnet-disrupt-by-tag.json");
    let plan = |file: &Path| fis_plan(file, &["--format", "json"]);
    let selected = |out: &str| {
        let v: Value = serde_json::from_str(out).unwrap();
        v["targets"]["TaggedSubnetsInB"].clone()
    };
    let (code, out, err) = plan(&example);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(selected(&out), json!(["subnet-az-b"]), "{out}");

    // Every subnet of the topology has the tag: without the AZ, all three; with its Name, one.
    let mut t = fis_example("subnet-disrupt-by-tag.json");
    let target = &mut t["targets"]["TaggedSubnetsInB"];
    target.as_object_mut().unwrap().remove("parameters");
    let file = s.write_json("all.json", &t);
    let (code, out, err) = plan(&file);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        selected(&out),
        json!(["subnet-az-a", "subnet-az-b", "subnet-az-c"]),
        "{out}"
    );
    t["targets"]["TaggedSubnetsInB"]["resourceTags"] = json!({ "Name": "faultline-az-c" });
    let file = s.write_json("name.json", &t);
    let (code, out, err) = plan(&file);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(selected(&out), json!(["subnet-az-c"]), "{out}");

    // A tag no subnet carries: the usual empty target, failed or skipped.
    t["targets"]["TaggedSubnetsInB"]["resourceTags"] = json!({ "AzImpairmentPower": "Nothing" });
    let file = s.write_json("none.json", &t);
    let (code, out, err) = plan(&file);
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(
        err.contains("target `TaggedSubnetsInB` resolved to no subnets"),
        "{err}"
    );
    t["experimentOptions"] = json!({ "emptyTargetResolutionMode": "skip" });
    let file = s.write_json("skip.json", &t);
    let (code, out, err) = plan(&file);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(selected(&out), json!([]), "{out}");
}

#[test]
fn cpu_stress_document_burns_for_duration_seconds_within_the_actions_span() {
    let s = Scratch::new("fis-ssm-cpu");
    let (mut ctl, port) = run_quietly(
        &s,
        &example(
            "ssm-cpu-stress.json",
            json!({ "DurationSeconds": "4", "CPU": "1", "LoadPercent": "100", "InstallDependencies": "True" }),
            Some("PT9S"),
        ),
    );
    let a = fis_agent(&s, port);
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
    let (out, lines) = finish_ok(ctl);
    assert_eq!(report(&out, &lines)["state"], "completed");
}

#[test]
fn kill_process_document_signals_the_named_processes() {
    let s = Scratch::new("fis-ssm-kill");
    let name = unique_name("ssm-victim");
    let mut victim = Command::new("sleep").arg0(&name).arg("300").spawn().unwrap();
    let (ctl, port) = run_quietly(
        &s,
        &example(
            "ssm-kill-process.json",
            json!({ "ProcessName": name, "Signal": "SIGKILL" }),
            None,
        ),
    );
    let _a = fis_agent(&s, port);
    let (status, out, lines) = ctl.finish(T);
    assert_eq!(victim.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert_eq!(status.code(), Some(0), "{}", lines.join("\n"));
    assert_eq!(report(&out, &lines)["state"], "completed");
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
    let (mut ctl, port) = run_quietly(&s, &t);
    let (_a, proxy) = proxied_agent(&s, port, upstream);
    ctl.expect("action RunDocument running", T);
    let during = round_trip_from([127, 0, 0, 1].into(), proxy);
    ctl.expect("action RunDocument completed", T);
    let after = round_trip_from([127, 0, 0, 1].into(), proxy);
    finish_ok(ctl);
    // Both directions are delayed by 200 ms.
    assert!(during >= Duration::from_millis(380), "during: {during:?}");
    assert!(after < Duration::from_millis(100), "after: {after:?}");
}

/// The memory the agent `pid` counts a percent of: the host's, or its cgroup's limit when
/// lower (as the agent reads them).
fn memory_total(pid: u32) -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let limit = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .and_then(|path| std::fs::read_to_string(format!("/sys/fs/cgroup{path}/memory.max")).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    limit.map_or(kb * 1024, |l| l.min(kb * 1024))
}

#[test]
fn memory_stress_document_holds_its_percent_of_memory() {
    let s = Scratch::new("fis-ssm-memory");
    let (mut ctl, port) = run_without_alarms(
        &s,
        example(
            "ssm-memory-stress.json",
            json!({ "DurationSeconds": "5", "Percent": "2", "Workers": "1" }),
            Some("PT5S"),
        ),
    );
    let a = fis_agent(&s, port);
    ctl.expect("experiment initiating", T);
    let before = tree_rss(a.pid());
    let asked = memory_total(a.pid()) / 100 * 2;
    ctl.expect("action RunDocument running", T);
    let mut during = 0;
    eventually("the holder resident with 2 % of memory", Duration::from_secs(4), || {
        during = tree_rss(a.pid());
        during >= before + asked * 9 / 10
    });
    let mib = |b: u64| b >> 20;
    assert!(
        during <= before + asked * 11 / 10 + (32 << 20),
        "asked {} MiB, RSS {} -> {} MiB",
        mib(asked),
        mib(before),
        mib(during)
    );
    ctl.expect("action RunDocument completed", T);
    eventually("the memory freed", Duration::from_secs(5), || {
        tree_rss(a.pid()) < before + (16 << 20)
    });
    finish_ok(ctl);
}

/// Percent of a filesystem in use, from statvfs.
fn used_percent(dir: &Path) -> f64 {
    let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: a zeroed statvfs is a valid buffer for statvfs to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a buffer owned by this frame.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "{}", dir.display());
    (st.f_blocks - st.f_bfree) as f64 * 100.0 / st.f_blocks as f64
}

#[test]
fn io_stress_document_writes_under_its_path_and_leaves_nothing() {
    let s = Scratch::new("fis-ssm-io");
    let (mut ctl, port) = run_without_alarms(
        &s,
        example(
            "ssm-io-stress.json",
            json!({ "DurationSeconds": "4", "Workers": "1", "Percent": "25" }),
            Some("PT4S"),
        ),
    );
    let Some(a) = agent_on_tmpfs(&s, port) else { return };
    let tmp = agent_tmp(&a);
    ctl.expect("experiment initiating", T);
    let idle = used_percent(&tmp);
    ctl.expect("action RunDocument running", T);
    let mut held = Vec::new();
    eventually("the I/O holder", Duration::from_secs(5), || {
        held = holders(a.pid());
        !held.is_empty()
    });
    let before = written(held[0]);
    // Its files take Percent (25) of the free space: the peak over a second and a half.
    let mut peak: f64 = 0.0;
    for _ in 0..15 {
        peak = peak.max(used_percent(&tmp));
        std::thread::sleep(Duration::from_millis(100));
    }
    let rate = written(held[0]) - before;
    assert!(rate > 16 << 20, "the holder wrote only {rate} bytes in 1.5 s");
    assert!(
        (15.0..=35.0).contains(&peak),
        "its files took up to {peak:.1} %, asked 25 % of the free space"
    );
    finish_ok(ctl);
    // The files have no name: only statvfs sees that their space is given back.
    let left = used_percent(&tmp);
    assert!(
        left < idle + 1.0,
        "{left:.1} % used after the document, {idle:.1} % before"
    );
}

#[test]
fn disk_fill_document_fills_its_filesystem_to_the_percent_then_empties_it() {
    let s = Scratch::new("fis-ssm-disk");
    let (mut ctl, port) = run_without_alarms(
        &s,
        example(
            "ssm-disk-fill.json",
            json!({ "DurationSeconds": "5", "Percent": "60" }),
            Some("PT5S"),
        ),
    );
    let Some(a) = agent_on_tmpfs(&s, port) else { return };
    let tmp = agent_tmp(&a);
    ctl.expect("action RunDocument running", T);
    eventually("the filesystem 60 % full", Duration::from_secs(4), || {
        (57.0..=63.0).contains(&used_percent(&tmp))
    });
    finish_ok(ctl);
    assert!(used_percent(&tmp) < 10.0, "still {:.1} % used", used_percent(&tmp));
}

#[test]
fn network_latency_sources_document_delays_only_the_named_source() {
    let s = Scratch::new("fis-ssm-latency-sources");
    let upstream = echo_server();
    let (mut ctl, port) = run_without_alarms(
        &s,
        example(
            "ssm-network-latency-sources.json",
            json!({ "DurationSeconds": "6", "Sources": "127.0.0.2", "DelayMilliseconds": "300", "JitterMilliseconds": "0" }),
            Some("PT6S"),
        ),
    );
    let (_a, proxy) = proxied_agent(&s, port, upstream);
    ctl.expect("action RunDocument running", T);
    let named = round_trip_from([127, 0, 0, 2].into(), proxy);
    let other = round_trip_from([127, 0, 0, 3].into(), proxy);
    ctl.expect("action RunDocument completed", T);
    let after = round_trip_from([127, 0, 0, 2].into(), proxy);
    finish_ok(ctl);
    // Both directions of the named source's connection are delayed by 300 ms.
    assert!(named >= Duration::from_millis(580), "the source: {named:?}");
    assert!(other < Duration::from_millis(150), "not a source: {other:?}");
    assert!(after < Duration::from_millis(150), "after: {after:?}");
}

/// The loss measured over `n` datagrams from `from`, in percent.
fn loss_from(pair: &Pair, from: std::net::Ipv4Addr, n: u32) -> f64 {
    100.0 - f64::from(udp_delivered_from(pair, from, n)) * 100.0 / f64::from(n)
}

#[test]
fn network_packet_loss_document_drops_its_share() {
    let Some((s, pair)) = pair_world("fis-ssm-loss") else {
        return;
    };
    start_service(&pair);
    let (ctl, _agent) = run_in_pair(
        &pair,
        &s,
        example(
            "ssm-network-packet-loss.json",
            json!({ "DurationSeconds": "6", "LossPercent": "30", "Interface": "eth0" }),
            Some("PT6S"),
        ),
    );
    let loss = loss_from(&pair, pair.cli(), 1000);
    eprintln!("AWSFIS-Run-Network-Packet-Loss: asked 30%, measured {loss:.1}% over 1000 datagrams");
    assert!((25.0..=35.0).contains(&loss), "asked 30% loss, measured {loss}%");
    finish_ok(ctl);
    assert_eq!(loss_from(&pair, pair.cli(), 400), 0.0, "loss after the document");
}

#[test]
fn network_packet_loss_sources_document_drops_only_the_named_sources_share() {
    let Some((s, pair)) = pair_world("fis-ssm-loss-sources") else {
        return;
    };
    let other = pair.addr(3);
    ip(&[
        "-n",
        &pair.ns("cli"),
        "addr",
        "add",
        &format!("{other}/24"),
        "dev",
        "eth0",
    ]);
    start_service(&pair);
    let (ctl, _agent) = run_in_pair(
        &pair,
        &s,
        example(
            "ssm-network-packet-loss-sources.json",
            json!({ "DurationSeconds": "6", "Sources": pair.cli().to_string(), "LossPercent": "30" }),
            Some("PT6S"),
        ),
    );
    let named = loss_from(&pair, pair.cli(), 1000);
    let unnamed = loss_from(&pair, other, 400);
    eprintln!("AWSFIS-Run-Network-Packet-Loss-Sources: asked 30%, measured {named:.1}% from the source, {unnamed:.1}% from another");
    assert!((25.0..=35.0).contains(&named), "asked 30% loss, measured {named}%");
    assert_eq!(unnamed, 0.0, "{other} is not a source");
    finish_ok(ctl);
}

#[test]
fn network_blackhole_port_document_silences_the_port_then_lets_it_answer() {
    let Some((s, pair)) = pair_world("fis-ssm-blackhole") else {
        return;
    };
    start_service(&pair);
    let (ctl, _agent) = run_in_pair(
        &pair,
        &s,
        example(
            "ssm-network-blackhole-port.json",
            json!({ "DurationSeconds": "5", "Protocol": "tcp", "Port": PORT.to_string() }),
            Some("PT5S"),
        ),
    );
    assert!(!pair.answers(), "port {PORT} answered during the blackhole");
    finish_ok(ctl);
    assert!(pair.answers(), "port {PORT} must answer again after the document");
}

#[test]
fn the_demo_runs_a_cloudformation_template_with_alarms_named_by_arn() {
    let demo = FisDemo::start("fis-demo", "docs-cloudformation-cpu-stress.json");
    let r = demo.finish(Duration::from_secs(180));
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
    let mut demo = FisDemo::start_with_lb_port("fis-subnet", "subnet-disrupt-all.json");
    let lb_port = demo.lb_port();
    demo.world.expect("action DisruptSubnet running", T);
    // Seen from the load balancer, outside the subnet: az-a's hosts stop answering, the
    // others do not.
    eventually("the load balancer to lose az-a", Duration::from_secs(20), || {
        let h = lb_health(lb_port);
        h.get("web-a1") == Some(&false) && h.get("web-a2") == Some(&false)
    });
    let h = lb_health(lb_port);
    assert_eq!((h.get("web-b1"), h.get("web-c1")), (Some(&true), Some(&true)), "{h:?}");
    demo.world
        .expect("action DisruptSubnet completed", Duration::from_secs(40));
    let r = demo.finish(Duration::from_secs(120));
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
    let mut demo = FisDemo::start_with_lb_port("fis-subnet-az", "subnet-disrupt-availability-zone.json");
    let lb_port = demo.lb_port();
    // The demo's addresses: 127.0.AZ.N, az-a counting 1; 127.0.9.9 is no host's.
    let (web_a1, web_b1, web_c1, outside) = ([127, 0, 1, 11], [127, 0, 2, 11], [127, 0, 3, 11], [127, 0, 9, 9]);
    assert!(answered(web_b1, web_a1), "az-b reaches az-a before the fault");
    demo.world.expect("action DisruptSubnet running", T);
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
    demo.world
        .expect("action DisruptSubnet completed", Duration::from_secs(40));
    assert!(answered(web_b1, web_a1), "az-b reaches az-a again after the fault");
    let r = demo.finish(Duration::from_secs(120));
    assert_eq!(r["actions"]["DisruptSubnet"]["hosts"], json!(["web-a1", "web-a2"]));
}

#[test]
fn actions_mode_skip_all_resolves_targets_and_injects_nothing() {
    let s = Scratch::new("fis-skip-all");
    let mut t = example("ssm-cpu-stress.json", json!({ "DurationSeconds": "30" }), Some("PT30S"));
    t["experimentOptions"]["actionsMode"] = json!("skip-all");
    let (ctl, port) = run_quietly(&s, &t);
    let a = fis_agent(&s, port);
    let (out, _) = finish_ok(ctl);
    assert!(out.contains("\"host\": \"web-a1\"") || out.contains("web-a1"), "{out}");
    assert!(holders(a.pid()).is_empty(), "skip-all started a holder");
    assert!(!s.path("journal.jsonl").exists(), "skip-all ran the experiment");
}

#[test]
fn parameters_with_no_local_meaning_are_reported_as_ignored() {
    let file = root().join("experiments/fis/ssm-network-latency.json");
    let (code, out, _) = fis_validate(&file);
    assert_eq!(code, Some(0), "{out}");
    for ignored in ["Interface is ignored", "InstallDependencies is ignored"] {
        assert!(
            out.lines().any(|l| l.contains(ignored) && l.ends_with("(warning)")),
            "{ignored}: {out}"
        );
    }
}
