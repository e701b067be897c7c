//! The first invariant: no fault is left behind when the controller dies, when the agent is
//! killed and restarted, when its whole process group is killed, on Ctrl-C and on any signal
//! that ends the agent.

use crate::common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);
/// The agents in these tests run with `--lease PT3S`.
const LEASE: Duration = Duration::from_secs(3);

fn cpu_template(s: &Scratch, seconds: u32) -> std::path::PathBuf {
    s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:host:cpu-stress",
            json!({ "duration": format!("PT{seconds}S"), "loadPercent": "80", "workers": "1" }),
        ),
    )
}

/// Samples the agent's CPU in half-second windows until it is idle or `limit` passes;
/// returns how long that took.
fn time_to_idle(pid: u32, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if tree_cpu_load(pid, Duration::from_millis(500)) < 0.1 {
            return Some(start.elapsed());
        }
    }
    None
}

#[test]
fn killing_the_controller_ends_the_fault_within_the_lease() {
    let s = Scratch::new("kill-controller");
    let template = cpu_template(&s, 60);
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let mut a = agent(&s, port, "web-a1", "az-a", &[]);
    ctl.expect("action A running", T);
    assert!(
        tree_cpu_load(a.pid(), Duration::from_secs(1)) > 0.4,
        "the fault should be in effect"
    );
    ctl.signal(libc::SIGKILL);
    let idle = time_to_idle(a.pid(), LEASE + Duration::from_secs(2));
    assert!(
        idle.is_some(),
        "the agent still burns CPU {:?} after the controller died",
        LEASE + Duration::from_secs(2)
    );
    a.expect("silent for the lease", T);
    assert!(state_files(&s, "web-a1").is_empty(), "the state dir must be clean");
}

/// Whether process `pid` is stopped (state T), polled for up to two seconds until it is
/// as `stopped` says: a signal is delivered asynchronously.
fn becomes_stopped(pid: u32, stopped: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state_t = stat.rsplit_once(')').unwrap().1.trim_start().starts_with('T');
        if state_t == stopped {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn killing_the_agent_mid_fault_and_restarting_it_leaves_nothing() {
    // The agent and the holder that would resume the paused process both die (a kill of the
    // whole group, the OOM killer): the process stays stopped, and only the restart's
    // recovery, from the markers on disk, can resume it.
    use std::os::unix::process::CommandExt;
    let s = Scratch::new("kill-agent");
    let name = unique_name("frozen");
    let victim = KillOnDrop(
        std::process::Command::new("sleep")
            .arg0(&name)
            .arg("600")
            .spawn()
            .unwrap(),
    );
    let template = s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:process:pause",
            json!({ "duration": "PT8S", "processName": name }),
        ),
    );
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let a = agent(&s, port, "web-a1", "az-a", &[]);
    ctl.expect("action A running", T);
    assert!(becomes_stopped(victim.0.id(), true), "the fault should be in effect");
    assert_eq!(
        state_files(&s, "web-a1").len(),
        1,
        "the fault is recorded while in effect"
    );
    let guards = holders(a.pid());
    assert_eq!(guards.len(), 1, "a holder stands ready to resume the process");
    // SAFETY: kill(2) on the holder process of an agent this test started.
    unsafe { libc::kill(guards[0] as i32, libc::SIGKILL) };
    a.signal(libc::SIGKILL);
    assert_eq!(a.finish(T).0.code(), None, "killed by SIGKILL");
    assert!(
        becomes_stopped(victim.0.id(), true),
        "the process stays stopped after the agent and its holder died"
    );
    let mut again = agent(&s, port, "web-a1", "az-a", &[]);
    again.expect("removed a fault left by the previous run", T);
    again.expect("registered", T);
    assert!(
        becomes_stopped(victim.0.id(), false),
        "the restart must resume the paused process"
    );
    assert!(
        state_files(&s, "web-a1").is_empty(),
        "the restart must clean the state dir"
    );
    let (status, out, lines) = ctl.finish(T);
    let r = report(&out, &lines);
    assert_eq!(status.code(), Some(0), "{r}");
    let notes = r["actions"]["A"]["notes"].to_string();
    assert!(notes.contains("ended early (agent: restarted)"), "{r}");
}

#[test]
fn a_paused_process_resumes_when_its_agent_is_killed_and_never_comes_back() {
    use std::os::unix::process::CommandExt;
    let s = Scratch::new("kill-agent-pause");
    let name = unique_name("frozen-alone");
    let victim = KillOnDrop(
        std::process::Command::new("sleep")
            .arg0(&name)
            .arg("600")
            .spawn()
            .unwrap(),
    );
    let template = s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:process:pause",
            json!({ "duration": "PT10M", "processName": name }),
        ),
    );
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let a = agent(&s, port, "web-a1", "az-a", &[]);
    ctl.expect("action A running", T);
    assert!(becomes_stopped(victim.0.id(), true), "the fault should be in effect");
    a.signal(libc::SIGKILL);
    assert_eq!(a.finish(T).0.code(), None, "killed by SIGKILL");
    // No restart, no lease, ten minutes left: the pause's own holder resumes it at once.
    assert!(
        becomes_stopped(victim.0.id(), false),
        "the process is still stopped after its agent died"
    );
    ctl.signal(libc::SIGINT);
    let _ = ctl.finish(T);
}

/// A child killed (even when stopped) and reaped when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ctrl_c_stops_the_experiment_and_removes_every_fault() {
    let s = Scratch::new("ctrl-c");
    let template = cpu_template(&s, 60);
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let a = agent(&s, port, "web-a1", "az-a", &[]);
    ctl.expect("action A running", T);
    ctl.signal(libc::SIGINT);
    let (status, out, lines) = ctl.finish(T);
    assert_eq!(status.code(), Some(130));
    let r = report(&out, &lines);
    assert_eq!(r["state"], "stopped");
    assert_eq!(r["actions"]["A"]["state"], "stopped");
    assert!(r["rollback"].as_f64().unwrap() < 1000.0, "{r}");
    assert!(tree_cpu_load(a.pid(), Duration::from_secs(1)) < 0.1);
    assert!(state_files(&s, "web-a1").is_empty());
    let removal = journal(&s).into_iter().find(|e| e["event"] == "removal").unwrap();
    assert_eq!(removal["by"], "controller");
    assert_eq!(removal["confirmed"], true);
}

#[test]
fn sigterm_makes_the_agent_remove_its_faults_before_it_exits() {
    let s = Scratch::new("sigterm");
    let template = cpu_template(&s, 60);
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let a = agent(&s, port, "web-a1", "az-a", &[]);
    ctl.expect("action A running", T);
    a.signal(libc::SIGTERM);
    let (status, _, lines) = a.finish(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("every fault removed") && l.contains("count=1")),
        "{lines:?}"
    );
    assert!(state_files(&s, "web-a1").is_empty());
    ctl.expect("ended EXP", T);
}

#[test]
fn every_signal_that_ends_the_agent_makes_it_remove_its_faults_first() {
    for (sig, name) in [
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGUSR1, "SIGUSR1"),
    ] {
        let s = Scratch::new(&format!("signal-{name}"));
        let template = cpu_template(&s, 60);
        let (mut ctl, port) = controller(&s, &template, 1, &[]);
        let a = agent(&s, port, "web-a1", "az-a", &[]);
        ctl.expect("action A running", T);
        assert_eq!(state_files(&s, "web-a1").len(), 1, "{name}: the fault is on record");
        a.signal(sig);
        let (status, _, lines) = a.finish(Duration::from_secs(5));
        assert_eq!(
            status.code(),
            Some(0),
            "{name} ended the agent without its clean-up: {lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains(name) && l.contains("removing every fault")),
            "{name}: {lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("every fault removed") && l.contains("count=1")),
            "{name}: {lines:?}"
        );
        assert!(state_files(&s, "web-a1").is_empty(), "{name} left the state record");
        ctl.signal(libc::SIGINT);
        let _ = ctl.finish(T);
    }
}

/// A kill of the agent's whole process group (a shell job's `kill -9 -- -PGID`, an OOM
/// group kill) during a pause far longer than the lease, the agent never restarted: the
/// pause's guardian, in a session of its own, resumes the process as soon as the agent is
/// gone.
#[test]
fn a_kill_of_the_agents_whole_process_group_still_resumes_a_paused_process() {
    use std::os::unix::process::CommandExt;
    let s = Scratch::new("kill-group-pause");
    let name = unique_name("frozen-group");
    let victim = KillOnDrop(
        std::process::Command::new("sleep")
            .arg0(&name)
            .arg("600")
            .spawn()
            .unwrap(),
    );
    let template = s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:process:pause",
            json!({ "duration": "PT10M", "processName": name }),
        ),
    );
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let mut cmd = std::process::Command::new(agent_bin());
    cmd.args(["--controller", &format!("ws://127.0.0.1:{port}")])
        .arg("--token-file")
        .arg(s.path("token"))
        .args(["--host-id", "web-a1", "--az", "az-a", "--lease", "PT3S"])
        .arg("--state-dir")
        .arg(s.path("state-web-a1"))
        // A group of its own, as a shell job is: the group below is the agent's alone.
        .process_group(0);
    let a = Proc::spawn("web-a1", cmd);
    ctl.expect("action A running", T);
    assert!(becomes_stopped(victim.0.id(), true), "the fault should be in effect");
    // SAFETY: kill(2) of the process group this test made for the agent it started.
    assert_eq!(unsafe { libc::kill(-(a.pid() as i32), libc::SIGKILL) }, 0);
    let killed = Instant::now();
    assert_eq!(a.finish(T).0.code(), None, "killed by SIGKILL");
    eventually("the paused process resumed with no agent left", 2 * LEASE, || {
        becomes_stopped(victim.0.id(), false)
    });
    eprintln!("resumed {:?} after the group kill", killed.elapsed());
    ctl.signal(libc::SIGINT);
    let _ = ctl.finish(T);
}
