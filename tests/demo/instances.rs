//! Instance actions (`aws:ec2:stop-instances`, `terminate-instances`, `reboot-instances`) on
//! the local platform: the examples of `experiments/fis/` run by `faultline demo`, each
//! effect seen from outside the hosts (the load balancer, each host's own address, the
//! hosts' processes); and a bare agent, on no platform, refused before anything starts.
//! The container platform is covered by tests/topology.rs.

use crate::common;

use common::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("experiments/fis")
        .join(name)
        .display()
        .to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The body of `GET /` at `addr`, or `None` when nothing answers.
fn get(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200")
        .then(|| out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// The demo's loopback address of a host of the default topology (`web-b2` → 127.0.2.12).
fn address(host: &str) -> String {
    let (az, n) = host.strip_prefix("web-").unwrap().split_at(1);
    let az = az.as_bytes()[0] - b'a' + 1;
    format!("127.0.{az}.{}:8080", 10 + n.parse::<u8>().unwrap())
}

/// The host a target selected, from the run's `target NAME: 1 of N selected (HOST)` line.
fn selected(demo: &mut Proc, target: &str) -> String {
    let line = demo.expect(&format!("target {target}:"), Duration::from_secs(90));
    line.rsplit('(').next().unwrap().trim_end_matches(')').to_string()
}

/// The demo-web processes of this demo (its working directory is `dir`), by host name.
fn web_pids(dir: &Path) -> BTreeMap<String, u32> {
    let here = std::fs::canonicalize(dir).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == here))
        .filter_map(|pid| {
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<&str> = cmdline.split('\0').collect();
            if !args[0].ends_with("demo-web") {
                return None;
            }
            let name = args.iter().skip_while(|a| **a != "--name").nth(1)?;
            Some((name.to_string(), pid))
        })
        .collect()
}

fn demo(s: &Scratch, template: &str, lb_port: u16) -> Proc {
    workspace_bin("faultline-agent");
    let mut cmd = Command::new(FAULTLINE);
    cmd.args(["demo", "--format", "json", "--template", template])
        .args(["--lb-port", &lb_port.to_string()])
        .current_dir(&s.0);
    Proc::spawn("demo", cmd)
}

#[test]
fn a_terminated_host_is_replaced_by_a_new_id_in_its_az_which_serves() {
    let _one = one_demo_at_a_time();
    let s = Scratch::new("instances-terminate");
    let lb = format!("127.0.0.1:{}", free_port());
    let lb_port: u16 = lb.rsplit(':').next().unwrap().parse().unwrap();
    let mut demo = demo(&s, &example("ec2-terminate.json"), lb_port);
    let victim = selected(&mut demo, "OneWebInstanceInB");
    assert!(victim.starts_with("web-b"), "{victim}");
    demo.expect("action WatchReplacement running", Duration::from_secs(30));
    // The replacement registers with the controller in az-b, and serves behind the LB.
    demo.expect("agent web-b3 connected (az-b", Duration::from_secs(15));
    eventually("the replacement serving behind the LB", Duration::from_secs(15), || {
        get(&lb).is_some_and(|b| b.contains("hello from web-b3"))
    });
    let answers: Vec<String> = (0..12).filter_map(|_| get(&lb)).collect();
    assert!(
        answers.iter().all(|b| !b.contains(&format!("hello from {victim}"))),
        "the terminated {victim} still answers: {answers:?}"
    );
    let (status, out, lines) = demo.finish(Duration::from_secs(60));
    let r = report(&out, &lines);
    assert_eq!(status.code(), Some(0), "{r}");
    assert_eq!(r["actions"]["TerminateInstances"]["state"], "completed");
    assert_eq!(
        r["actions"]["TerminateInstances"]["notes"],
        serde_json::json!([format!("{victim}: terminated; replaced by web-b3 in az-b")])
    );
}

#[test]
fn a_stopped_host_is_down_for_its_duration_then_answers_again() {
    let _one = one_demo_at_a_time();
    let s = Scratch::new("instances-stop");
    let lb_port = free_port();
    let mut demo = demo(&s, &example("ec2-stop.json"), lb_port);
    let victim = selected(&mut demo, "OneWebInstanceInA");
    let at = address(&victim);
    demo.expect("action StopInstances running", Duration::from_secs(30));
    // Stopped: its own address refuses, its service and agent are gone, the LB serves from
    // the others.
    assert_eq!(get(&at), None, "{victim} answers while stopped");
    assert!(
        !web_pids(&s.0).contains_key(&victim),
        "{victim}'s service runs while stopped"
    );
    let lb = format!("127.0.0.1:{lb_port}");
    eventually(
        "the LB serving without the stopped host",
        Duration::from_secs(10),
        || get(&lb).is_some_and(|b| !b.contains(&victim)),
    );
    // After startInstancesAfterDuration (PT1M) it is started again and answers.
    demo.expect("action WatchRecovery running", Duration::from_secs(90));
    eventually("the stopped host answering again", Duration::from_secs(15), || {
        get(&at).is_some_and(|b| b.contains(&format!("hello from {victim}")))
    });
    let (status, out, lines) = demo.finish(Duration::from_secs(60));
    let r = report(&out, &lines);
    assert_eq!(status.code(), Some(0), "{r}");
    assert_eq!(r["actions"]["StopInstances"]["state"], "completed");
}

#[test]
fn a_stopped_host_is_started_at_once_when_the_experiment_stops() {
    let _one = one_demo_at_a_time();
    let s = Scratch::new("instances-stop-early");
    let mut demo = demo(&s, &example("ec2-stop.json"), free_port());
    let victim = selected(&mut demo, "OneWebInstanceInA");
    demo.expect("action StopInstances running", Duration::from_secs(30));
    assert_eq!(get(&address(&victim)), None, "{victim} answers while stopped");
    demo.signal(libc::SIGTERM);
    // The start comes before the world goes down: the demo-web of the stopped host runs
    // again while the demo is still stopping.
    demo.expect(&format!("{victim}: Start done"), Duration::from_secs(15));
    let (status, out, lines) = demo.finish(Duration::from_secs(60));
    let r = report(&out, &lines);
    assert_eq!(status.code(), Some(143), "{r}");
    assert_eq!(r["actions"]["StopInstances"]["state"], "stopped");
    assert_eq!(r["actions"]["WatchRecovery"]["state"], "cancelled");
}

#[test]
fn a_rebooted_host_restarts_its_programs_and_answers_again() {
    let _one = one_demo_at_a_time();
    let s = Scratch::new("instances-reboot");
    let mut demo = demo(&s, &example("ec2-reboot.json"), free_port());
    demo.expect("demo world ready", Duration::from_secs(90));
    let before = web_pids(&s.0);
    assert_eq!(before.len(), 6, "{before:?}");
    let victim = selected(&mut demo, "OneWebInstanceInC");
    demo.expect("action WatchRecovery running", Duration::from_secs(30));
    eventually("the rebooted host answering again", Duration::from_secs(15), || {
        get(&address(&victim)).is_some_and(|b| b.contains(&format!("hello from {victim}")))
    });
    let after = web_pids(&s.0);
    for (host, pid) in &before {
        if *host == victim {
            assert_ne!(after.get(host), Some(pid), "{host}'s service survived its reboot");
            assert!(after.contains_key(host), "{host}'s service did not come back");
        } else {
            assert_eq!(after.get(host), Some(pid), "{host} was not to be rebooted");
        }
    }
    let (status, out, lines) = demo.finish(Duration::from_secs(60));
    let r = report(&out, &lines);
    assert_eq!(status.code(), Some(0), "{r}");
    assert_eq!(r["actions"]["RebootInstances"]["state"], "completed");
}

#[test]
fn a_bare_agent_is_refused_instance_actions_before_anything_starts() {
    let s = Scratch::new("instances-bare");
    for id in [
        "aws:ec2:stop-instances",
        "aws:ec2:terminate-instances",
        "aws:ec2:reboot-instances",
    ] {
        let template = s.write_json("t.json", &single_action("web-a1", id, serde_json::json!({})));
        let (status, _, lines) = run_with_one_agent(&s, &template, &[]);
        let said = lines.join("\n");
        assert_eq!(status.code(), Some(3), "{said}");
        assert!(said.contains("web-a1 is on no platform (a bare agent)"), "{id}: {said}");
        assert!(!said.contains("initiating"), "{id}: something started: {said}");
    }
}

#[test]
fn validate_and_plan_refuse_instance_actions_on_hosts_without_a_platform() {
    let s = Scratch::new("instances-inventory");
    let bare = s.write_json(
        "bare.json",
        &serde_json::json!([{ "HostId": "web-a1", "Placement": { "AvailabilityZone": "az-a" }, "Tags": { "tier": "web" } }]),
    );
    let topology = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/inventory.json");
    let cli = |args: &[&str], inventory: &Path| {
        let out = Command::new(FAULTLINE)
            .args(args)
            .arg("--inventory")
            .arg(inventory)
            .arg(example("ec2-stop.json"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    for args in [&["validate"][..], &["plan", "--seed", "1"][..]] {
        let (code, said) = cli(args, &bare);
        assert_eq!(code, Some(2), "{args:?}: {said}");
        assert!(
            said.contains("action StopInstances (faultline:host:stop): web-a1 is on no platform"),
            "{args:?}: {said}"
        );
        let (code, said) = cli(args, &topology);
        assert_eq!(code, Some(0), "{args:?}: {said}");
    }
}

/// `faultline agents --server URL --format json`: host id → `State.Name`.
fn agent_states(dir: &Path, server: &str) -> BTreeMap<String, String> {
    let out = Command::new(FAULTLINE)
        .args(["agents", "--server", server, "--format", "json"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hosts: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    hosts
        .iter()
        .map(|h| {
            let state = h["State"]["Name"].as_str().unwrap().to_string();
            (h["HostId"].as_str().unwrap().to_string(), state)
        })
        .collect()
}

#[test]
fn a_stopped_host_is_listed_stopped_while_its_agent_is_gone_and_running_after() {
    let _one = one_demo_at_a_time();
    workspace_bin("faultline-agent");
    let s = Scratch::new("instances-state");
    let mut cmd = Command::new(FAULTLINE);
    cmd.args(["demo", "--serve", "--listen", "127.0.0.1:0"])
        .current_dir(&s.0);
    let mut srv = Proc::spawn("serve", cmd);
    let server = format!("http://127.0.0.1:{}", srv.listen_port("serving the API"));
    srv.expect("demo world ready", Duration::from_secs(90));
    let all_running = agent_states(&s.0, &server);
    assert_eq!(all_running.len(), 6, "{all_running:?}");
    assert!(all_running.values().all(|st| st == "running"), "{all_running:?}");

    // The server's demo world acts on its own processes, as `faultline demo` does.
    let mut run = Command::new(FAULTLINE);
    run.args(["run", "--server", &server, "--format", "json", "--seed", "1"])
        .arg(example("ec2-stop.json"))
        .current_dir(&s.0);
    let run = Proc::spawn("run", run);
    let mut during = BTreeMap::new();
    eventually("a host listed stopped", Duration::from_secs(30), || {
        during = agent_states(&s.0, &server);
        during.values().any(|st| st == "stopped")
    });
    // Its agent is gone, yet it is listed, with the others running.
    let stopped: Vec<&String> = during
        .iter()
        .filter(|(_, st)| *st == "stopped")
        .map(|(h, _)| h)
        .collect();
    assert_eq!(stopped.len(), 1, "{during:?}");
    let victim = stopped[0].clone();
    assert!(victim.starts_with("web-a"), "{during:?}");
    assert_eq!(during.len(), 6, "{during:?}");
    assert_eq!(get(&address(&victim)), None, "{victim} answers while listed stopped");

    let (status, out, lines) = run.finish(Duration::from_secs(120));
    let r = report(&out, &lines);
    assert_eq!(status.code(), Some(0), "{r}");
    eventually("the restarted host listed running", Duration::from_secs(15), || {
        agent_states(&s.0, &server)
            .get(&victim)
            .is_some_and(|st| st == "running")
    });
    srv.signal(libc::SIGTERM);
    let (status, _, lines) = srv.finish(Duration::from_secs(60));
    assert!(status.success(), "{}", lines.join("\n"));
}

#[test]
fn a_start_that_fails_is_tried_again_until_the_host_runs() {
    let _one = one_demo_at_a_time();
    let s = Scratch::new("instances-start-retry");
    // The demo launches hosts from the directory of its own binary: one of this test's, whose
    // demo-init can be taken away (a launch that fails, as a platform's hiccup) and put back.
    let bin = s.path("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::hard_link(FAULTLINE, bin.join("faultline"))
        .or_else(|_| std::fs::copy(FAULTLINE, bin.join("faultline")).map(|_| ()))
        .unwrap();
    for b in ["faultline-agent", "demo-web", "demo-lb", "demo-init"] {
        std::os::unix::fs::symlink(workspace_bin(b), bin.join(b)).unwrap();
    }
    let mut cmd = Command::new(bin.join("faultline"));
    cmd.args(["demo", "--format", "json", "--template", &example("ec2-stop.json")])
        .args(["--lb-port", &free_port().to_string()])
        .current_dir(&s.0);
    let mut demo = Proc::spawn("demo", cmd);
    let victim = selected(&mut demo, "OneWebInstanceInA");
    demo.expect("action StopInstances running", Duration::from_secs(30));
    std::fs::rename(bin.join("demo-init"), bin.join("demo-init.away")).unwrap();
    // The experiment stops: the host is started at once, and that start fails.
    demo.signal(libc::SIGTERM);
    demo.expect(&format!("{victim}: Start failed"), Duration::from_secs(15));
    assert_eq!(
        get(&address(&victim)),
        None,
        "{victim} answers although its start failed"
    );
    std::fs::rename(bin.join("demo-init.away"), bin.join("demo-init")).unwrap();
    demo.expect(&format!("{victim}: Start done"), Duration::from_secs(30));
    let (status, out, lines) = demo.finish(Duration::from_secs(60));
    let r = report(&out, &lines);
    assert_eq!(status.code(), Some(143), "{r}");
    assert_eq!(r["actions"]["StopInstances"]["state"], "stopped", "{r}");
    let journals: Vec<_> = std::fs::read_dir(s.path(".faultline/journals"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(journals.len(), 1, "{journals:?}");
    let retries: Vec<serde_json::Value> = std::fs::read_to_string(&journals[0])
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| e["event"] == "instance_retry")
        .collect();
    assert!(!retries.is_empty(), "no failed try journaled");
    assert_eq!(retries[0]["host"], victim.as_str());
    assert_eq!(retries[0]["operation"], "start");
    assert_eq!(retries[0]["attempt"], 1);
    assert!(
        retries[0]["error"].as_str().unwrap().contains("No such file"),
        "{}",
        retries[0]
    );
}
