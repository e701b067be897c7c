//! Each fault, injected by a real agent for a real controller, observed from outside.

use crate::common;

use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

#[test]
fn kill_signals_every_process_with_the_name() {
    let s = Scratch::new("kill");
    let name = format!("fl-victim-{}", std::process::id());
    let mut victims: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new("sleep")
                .arg0(&name)
                .arg("300")
                .spawn()
                .unwrap()
        })
        .collect();
    let template = s.write_json(
        "t.json",
        &single_action("web-a1", "faultline:process:kill", json!({ "processName": name })),
    );
    let (status, out, lines) = run_with_one_agent(&s, &template, &[]);
    for v in &mut victims {
        assert_eq!(v.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
    assert_eq!(status.code(), Some(0));
    let r = report(&out, &lines);
    assert_eq!(r["state"], "completed");
    let acks: Vec<_> = journal(&s).into_iter().filter(|e| e["event"] == "ack").collect();
    assert_eq!(acks[0]["outcome"]["pids"].as_array().unwrap().len(), 2, "{acks:?}");
}

#[test]
fn kill_of_a_missing_process_fails_the_experiment() {
    let s = Scratch::new("kill-none");
    let template = s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:process:kill",
            json!({ "processName": "no-such-process-here" }),
        ),
    );
    let (status, out, lines) = run_with_one_agent(&s, &template, &[]);
    assert_eq!(status.code(), Some(3));
    let r = report(&out, &lines);
    assert_eq!(r["state"], "failed");
    assert!(
        r["actions"]["A"]["error"]
            .as_str()
            .unwrap()
            .contains("no process named `no-such-process-here`"),
        "{r}"
    );
}

#[test]
fn cpu_stress_holds_the_load_then_lets_go() {
    let s = Scratch::new("cpu");
    let template = s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:host:cpu-stress",
            json!({ "duration": "PT5S", "loadPercent": "60", "workers": "1" }),
        ),
    );
    // Favoured by the scheduler, the stress gets what it asks for even while other tests
    // (or builds) keep both CPUs busy: a figure of the tool, not of the machine's load.
    let Some(group) = CpuGroup::new("cpu-favoured", CpuShare::Favoured) else {
        return;
    };
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let a = group.agent(&s, port);
    ctl.expect("action A running", T);
    let busy = tree_cpu_load(a.pid(), Duration::from_secs(2));
    ctl.expect("action A completed", T);
    let after = tree_cpu_load(a.pid(), Duration::from_secs(1));
    let (status, _, _) = ctl.finish(T);
    assert_eq!(status.code(), Some(0));
    assert!(
        (0.35..0.9).contains(&busy),
        "60% of one worker measured as {busy:.2} CPU"
    );
    assert!(after < 0.1, "after the fault the agent used {after:.2} CPU");
    assert!(state_files(&s, "web-a1").is_empty());
}

#[test]
fn memory_stress_holds_resident_memory_then_frees_it() {
    let s = Scratch::new("mem");
    let template = s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:host:memory-stress",
            json!({ "duration": "PT4S", "sizeMiB": "256" }),
        ),
    );
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let a = agent(&s, port, "web-a1", "az-a", &[]);
    ctl.expect("experiment initiating", T);
    let before = tree_rss(a.pid());
    ctl.expect("action A running", T);
    let during = tree_rss(a.pid());
    ctl.expect("action A completed", T);
    let after = tree_rss(a.pid());
    let (status, _, _) = ctl.finish(T);
    assert_eq!(status.code(), Some(0));
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    assert!(
        during >= before + (250 << 20),
        "RSS {:.0} MiB -> {:.0} MiB",
        mib(before),
        mib(during)
    );
    assert!(
        after < before + (16 << 20),
        "RSS after {:.0} MiB (before {:.0} MiB)",
        mib(after),
        mib(before)
    );
}

#[test]
fn an_idle_agent_is_small_and_quiet() {
    let s = Scratch::new("idle");
    let template = s.write_json(
        "t.json",
        &json!({
            "description": "only wait",
            "actions": { "W": { "actionId": "aws:fis:wait", "parameters": { "duration": "PT2S" } } },
            "stopConditions": [{ "source": "none" }]
        }),
    );
    let (ctl, port) = controller(&s, &template, 1, &[]);
    let mut a = agent(&s, port, "web-a1", "az-a", &[]);
    a.expect("registered", T);
    let load = tree_cpu_load(a.pid(), Duration::from_secs(1));
    let resident = tree_rss(a.pid());
    assert_eq!(ctl.finish(T).0.code(), Some(0));
    assert!(load < 0.05, "an idle agent used {load:.3} CPU");
    assert!(resident < 16 << 20, "an idle agent holds {} KiB", resident >> 10);
}

#[test]
fn memory_stress_refuses_to_eat_the_safety_margin() {
    let s = Scratch::new("mem-refuse");
    let template = s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:host:memory-stress",
            json!({ "duration": "PT4S", "percent": "100" }),
        ),
    );
    let (status, out, lines) = run_with_one_agent(&s, &template, &[]);
    assert_eq!(status.code(), Some(3));
    let r = report(&out, &lines);
    assert!(
        r["actions"]["A"]["error"].as_str().unwrap().contains("safety margin"),
        "{r}"
    );
    assert!(state_files(&s, "web-a1").is_empty(), "a refused fault leaves no record");
}

/// Median round trip of a small message through `port`, on a fresh connection each time.
fn round_trip(port: u16) -> Duration {
    let mut times: Vec<Duration> = (0..5).map(|_| round_trip_from([127, 0, 0, 1].into(), port)).collect();
    times.sort();
    times[2]
}

#[test]
fn latency_delays_traffic_through_the_proxy_and_then_not() {
    let s = Scratch::new("latency");
    let upstream = echo_server();
    // A wait first: the round trip before the fault is measured while it runs.
    let mut t = single_action(
        "web-a1",
        "faultline:network:latency",
        json!({ "duration": "PT4S", "delayMilliseconds": "150", "jitterMilliseconds": "20" }),
    );
    t["actions"]["Before"] = json!({ "actionId": "aws:fis:wait", "parameters": { "duration": "PT2S" } });
    t["actions"]["A"]["startAfter"] = json!(["Before"]);
    let template = s.write_json("t.json", &t);
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let mut a = agent(
        &s,
        port,
        "web-a1",
        "az-a",
        &["--proxy", &format!("127.0.0.1:0=127.0.0.1:{upstream}")],
    );
    let proxy = a.listen_port("proxy ready");
    ctl.expect("action Before running", T);
    let before = round_trip(proxy);
    ctl.expect("action A running", T);
    let during = round_trip(proxy);
    ctl.expect("action A completed", T);
    let after = round_trip(proxy);
    let (status, out, err) = ctl.finish(T);
    assert_eq!(status.code(), Some(0));
    // The proxy measured what it added: the five connections of the round trip during the
    // fault, each chunk held 150 ± 20 ms.
    let r = report(&out, &err);
    let figures = &r["actions"]["A"]["observed"][0]["figures"];
    assert_eq!(figures[0]["name"], "connections_delayed", "{r}");
    assert_eq!(figures[0]["observed"], 5.0, "{r}");
    assert_eq!(figures[1]["name"], "delay_added_ms", "{r}");
    assert_eq!(figures[1]["asked"], 150.0, "{r}");
    let added = figures[1]["observed"].as_f64().unwrap();
    assert!((130.0..400.0).contains(&added), "{r}");
    assert!(before < Duration::from_millis(50), "before: {before:?}");
    // Both directions are delayed: 2 × (150 ± 20) ms.
    assert!(
        during >= Duration::from_millis(260) && during < Duration::from_millis(800),
        "during: {during:?}"
    );
    assert!(after < Duration::from_millis(50), "after: {after:?}");
}

#[test]
fn removing_latency_releases_data_held_on_an_open_connection() {
    let s = Scratch::new("latency-release");
    let upstream = echo_server();
    let template = s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:network:latency",
            json!({ "duration": "PT1S", "delayMilliseconds": "4000" }),
        ),
    );
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let mut a = agent(
        &s,
        port,
        "web-a1",
        "az-a",
        &["--proxy", &format!("127.0.0.1:0=127.0.0.1:{upstream}")],
    );
    let proxy = a.listen_port("proxy ready");
    let mut c = TcpStream::connect(("127.0.0.1", proxy)).unwrap();
    c.set_nodelay(true).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    ctl.expect("action A running", T);
    // Sent during the fault, so held for 4 s; the fault is removed after 1 s.
    let t = Instant::now();
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).unwrap();
    let took = t.elapsed();
    assert_eq!(&buf, b"ping");
    assert!(
        took < Duration::from_millis(1600),
        "data held for the 4 s delay came back after {took:?}, not when the 1 s fault was removed"
    );
    assert_eq!(ctl.finish(T).0.code(), Some(0));
}

#[test]
fn latency_loss_refuses_new_connections() {
    let s = Scratch::new("loss");
    let upstream = echo_server();
    let template = s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:network:latency",
            json!({ "duration": "PT3S", "lossPercent": "100" }),
        ),
    );
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let mut a = agent(
        &s,
        port,
        "web-a1",
        "az-a",
        &["--proxy", &format!("127.0.0.1:0=127.0.0.1:{upstream}")],
    );
    let proxy = a.listen_port("proxy ready");
    ctl.expect("action A running", T);
    let mut c = TcpStream::connect(("127.0.0.1", proxy)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = c.write_all(b"ping");
    let mut buf = [0u8; 4];
    assert!(c.read_exact(&mut buf).is_err(), "a connection got through 100% loss");
    ctl.expect("action A completed", T);
    let after = round_trip(proxy);
    assert!(after < Duration::from_millis(50), "after: {after:?}");
    assert_eq!(ctl.finish(T).0.code(), Some(0));
}

#[test]
fn an_agent_without_the_capability_fails_the_run_before_anything_starts() {
    let s = Scratch::new("caps");
    let template = s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:network:latency",
            json!({ "duration": "PT3S", "delayMilliseconds": "10" }),
        ),
    );
    let (status, _, stderr) = run_with_one_agent(&s, &template, &[]);
    assert_eq!(status.code(), Some(3));
    assert!(
        stderr.iter().any(|l| l.contains("web-a1 cannot inject `latency`")),
        "{stderr:?}"
    );
    assert!(
        !journal(&s).iter().any(|e| e["event"] == "dispatch"),
        "nothing may be dispatched"
    );
}

#[test]
fn the_allow_list_is_enforced_on_the_agent() {
    let s = Scratch::new("allow");
    let template = s.write_json(
        "t.json",
        &single_action("web-a1", "faultline:host:cpu-stress", json!({ "duration": "PT3S" })),
    );
    let (status, _, stderr) = run_with_one_agent(&s, &template, &["--allow", "kill,memory"]);
    assert_eq!(status.code(), Some(3));
    assert!(stderr.iter().any(|l| l.contains("cannot inject `cpu`")), "{stderr:?}");
}

/// What a test's CPU cgroup does to its processes.
#[derive(Clone, Copy)]
enum CpuShare {
    /// At most 10 % of one CPU.
    Capped,
    /// First in line for the CPUs (the highest weight), so that what a test measures is
    /// the tool, not the other work on the machine.
    Favoured,
}

/// A CPU cgroup of a test's own, removed when dropped (after its processes).
struct CpuGroup(std::path::PathBuf);

impl CpuGroup {
    /// `None` (the test skips, loudly) without root or a writable CPU cgroup; with CI=true
    /// both are required.
    fn new(what: &str, share: CpuShare) -> Option<CpuGroup> {
        let name = unique_name(what);
        let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let dir = if v2 {
            std::path::Path::new("/sys/fs/cgroup").join(&name)
        } else {
            std::path::Path::new("/sys/fs/cgroup/cpu").join(&name)
        };
        let settings: &[(&str, &str)] = match (v2, share) {
            (true, CpuShare::Capped) => &[("cpu.max", "10000 100000")],
            (false, CpuShare::Capped) => &[("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "10000")],
            (true, CpuShare::Favoured) => &[("cpu.weight", "10000")],
            (false, CpuShare::Favoured) => &[("cpu.shares", "262144")],
        };
        let made = is_root()
            && std::fs::create_dir(&dir).is_ok()
            && settings
                .iter()
                .all(|(file, value)| std::fs::write(dir.join(file), value).is_ok());
        if !made {
            let _ = std::fs::remove_dir(&dir);
            assert!(!required(), "CI=true: this test needs root and a writable CPU cgroup");
            eprintln!("SKIPPED: this test needs root and a writable CPU cgroup (for the agent's CPU)");
            return None;
        }
        Some(CpuGroup(dir))
    }

    /// An agent for web-a1 started inside the cgroup, so every worker it starts is capped.
    fn agent(&self, s: &Scratch, port: u16) -> Proc {
        use std::os::fd::AsRawFd;
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(self.0.join("cgroup.procs"))
            .unwrap();
        let fd = procs.as_raw_fd();
        let mut cmd = std::process::Command::new(agent_bin());
        cmd.args(["--controller", &format!("ws://127.0.0.1:{port}")])
            .arg("--token-file")
            .arg(s.path("token"))
            .args(["--host-id", "web-a1", "--az", "az-a", "--lease", "PT3S"])
            .arg("--state-dir")
            .arg(s.path("state-web-a1"));
        // SAFETY: write(2) on an open descriptor is async-signal-safe; "0" moves the writer.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let p = Proc::spawn("web-a1", cmd);
        drop(procs);
        p
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn capped_cpu_stress(s: &Scratch) -> std::path::PathBuf {
    s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:host:cpu-stress",
            json!({ "duration": "PT3S", "loadPercent": "80", "workers": "1" }),
        ),
    )
}

#[test]
fn a_cpu_stress_capped_by_its_cgroup_is_a_warning() {
    let Some(cap) = CpuGroup::new("cap-warn", CpuShare::Capped) else {
        return;
    };
    let s = Scratch::new("cpu-capped");
    let template = capped_cpu_stress(&s);
    let (ctl, port) = controller(&s, &template, 1, &[]);
    let _a = cap.agent(&s, port);
    let (status, out, err) = ctl.finish(T);
    let r = report(&out, &err);
    assert_eq!(status.code(), Some(0), "{r}");
    let host = &r["actions"]["A"]["observed"][0];
    assert_eq!(host["host"], "web-a1");
    let fig = &host["figures"][0];
    assert_eq!(fig["name"], "cpu_percent_per_worker");
    assert_eq!(fig["asked"], 80.0);
    let seen = fig["observed"].as_f64().unwrap();
    assert!(seen < 20.0, "a worker capped at 10 % held {seen:.1} %");
    assert!(
        host["warnings"][0].as_str().unwrap().contains("80.0 % was asked"),
        "{host}"
    );
    let far: Vec<_> = journal(&s)
        .into_iter()
        .filter(|e| e["event"] == "observed" && e["far"].as_array().is_some_and(|f| !f.is_empty()))
        .collect();
    assert_eq!(far.len(), 1, "the journal records the warning once");
}

#[test]
fn strict_fails_a_cpu_stress_capped_by_its_cgroup() {
    let Some(cap) = CpuGroup::new("cap-strict", CpuShare::Capped) else {
        return;
    };
    let s = Scratch::new("cpu-strict");
    let template = capped_cpu_stress(&s);
    let (ctl, port) = controller(&s, &template, 1, &["--strict"]);
    let _a = cap.agent(&s, port);
    let (status, out, err) = ctl.finish(T);
    let r = report(&out, &err);
    assert_eq!(status.code(), Some(3), "{r}");
    assert_eq!(r["state"], "failed");
    assert_eq!(r["actions"]["A"]["state"], "failed");
    let error = r["actions"]["A"]["error"].as_str().unwrap();
    assert!(
        error.contains("--strict") && error.contains("cpu_percent_per_worker"),
        "{error}"
    );
    assert!(state_files(&s, "web-a1").is_empty());
}
