//! `faultline:process:pause` and the guard on what a kill or pause may signal, with real
//! binaries: a stopped process is resumed on every removal path, and PID 1, the agent and
//! its supervisor are never signalled.

use crate::common;

use common::*;
use serde_json::json;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// A `sleep` under a name of its own, the process the tests pause; killed when dropped.
struct Victim {
    name: String,
    child: Child,
}

impl Victim {
    fn new() -> Victim {
        let name = unique_name("paused");
        let child = Command::new("sleep").arg0(&name).arg("600").spawn().unwrap();
        let v = Victim { name, child };
        // Until its exec completes the child carries this test's name.
        assert!(
            wait_for(Duration::from_secs(5), || std::fs::read(format!(
                "/proc/{}/cmdline",
                v.pid()
            ))
            .is_ok_and(|c| c.split(|b| *b == 0).next() == Some(v.name.as_bytes()))),
            "the victim never started"
        );
        v
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is stopped (state T in /proc/PID/stat).
    fn stopped(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let (_, rest) = stat.rsplit_once(')').unwrap();
        rest.trim_start().starts_with('T')
    }

    /// Waits (up to `limit`) until the process is stopped or running, as `stopped` says.
    fn becomes(&self, stopped: bool, limit: Duration) -> bool {
        wait_for(limit, || self.stopped() == stopped)
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` until it holds or `limit` passes.
fn wait_for(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pause_template(s: &Scratch, v: &Victim, duration: &str) -> std::path::PathBuf {
    s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:process:pause",
            json!({ "processName": v.name, "duration": duration }),
        ),
    )
}

fn paused_markers(s: &Scratch, host: &str) -> usize {
    std::fs::read_dir(s.path(&format!("state-{host}/paused")))
        .expect("the agent's paused dir")
        .count()
}

#[test]
fn a_pause_stops_the_process_for_its_duration_then_resumes_it() {
    let s = Scratch::new("pause-duration");
    let v = Victim::new();
    let template = pause_template(&s, &v, "PT2S");
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let _a = agent(&s, port, "web-a1", "az-a", &[]);
    ctl.expect("action A running", T);
    assert!(v.becomes(true, Duration::from_secs(2)), "the process is not stopped");
    assert_eq!(paused_markers(&s, "web-a1"), 1, "the stopped pid is on record");
    let (status, out, lines) = ctl.finish(T);
    let r = report(&out, &lines);
    assert_eq!(status.code(), Some(0), "{r}");
    assert!(
        v.becomes(false, Duration::from_secs(2)),
        "the process was never resumed"
    );
    assert_eq!(paused_markers(&s, "web-a1"), 0);
    assert!(state_files(&s, "web-a1").is_empty());
}

#[test]
fn stopping_the_experiment_resumes_the_process() {
    let s = Scratch::new("pause-stop");
    let v = Victim::new();
    let template = pause_template(&s, &v, "PT60S");
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let _a = agent(&s, port, "web-a1", "az-a", &[]);
    ctl.expect("action A running", T);
    assert!(v.becomes(true, Duration::from_secs(2)));
    ctl.signal(libc::SIGINT);
    assert_eq!(ctl.finish(T).0.code(), Some(130));
    assert!(
        v.becomes(false, Duration::from_secs(2)),
        "Ctrl-C left the process stopped"
    );
    assert_eq!(paused_markers(&s, "web-a1"), 0);
}

#[test]
fn a_lapsed_lease_resumes_the_process() {
    let s = Scratch::new("pause-lease");
    let v = Victim::new();
    let template = pause_template(&s, &v, "PT60S");
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let mut a = agent(&s, port, "web-a1", "az-a", &[]);
    ctl.expect("action A running", T);
    assert!(v.becomes(true, Duration::from_secs(2)));
    ctl.signal(libc::SIGKILL);
    a.expect("silent for the lease", T);
    // The agents run with --lease PT3S; the expect above waited for it.
    assert!(
        v.becomes(false, Duration::from_secs(2)),
        "the lease ran out, the process is still stopped"
    );
    // The markers go once the resume is done, a moment after the process runs again.
    eventually("the paused pids off record", Duration::from_secs(2), || {
        paused_markers(&s, "web-a1") == 0
    });
    drop(ctl);
}

#[test]
fn sigterm_to_the_agent_resumes_the_process() {
    let s = Scratch::new("pause-sigterm");
    let v = Victim::new();
    let template = pause_template(&s, &v, "PT60S");
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let a = agent(&s, port, "web-a1", "az-a", &[]);
    ctl.expect("action A running", T);
    assert!(v.becomes(true, Duration::from_secs(2)));
    a.signal(libc::SIGTERM);
    assert_eq!(a.finish(T).0.code(), Some(0));
    assert!(
        v.becomes(false, Duration::from_secs(2)),
        "the agent exited and left the process stopped"
    );
    assert_eq!(paused_markers(&s, "web-a1"), 0);
    ctl.signal(libc::SIGINT);
    ctl.finish(T);
}

#[test]
fn a_kill_with_sigstop_is_refused_by_the_validator() {
    // The agent refuses it too (the unit tests of faultline_agent::limits and of the kill).
    let s = Scratch::new("kill-sigstop");
    let v = Victim::new();
    let template = s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:process:kill",
            json!({ "processName": v.name, "signal": "SIGSTOP" }),
        ),
    );
    let out = Command::new(FAULTLINE).arg("validate").arg(&template).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("faultline:process:pause"), "{text}");
    assert!(!v.stopped());
}

/// Kills aimed at PID 1, at the agent itself and at its supervisor, inside a PID namespace
/// where PID 1 is `sh`, the agent's parent is `fl-supervisor` (a shell under another name)
/// and the agent is `faultline-agent`: each is refused with the pid, its name and why.
#[test]
fn kills_of_pid_1_the_agent_and_its_supervisor_are_refused() {
    if !is_root() {
        assert!(!required(), "CI=true: the PID namespace test needs root");
        eprintln!("SKIPPED: the PID namespace test needs root");
        return;
    }
    let s = Scratch::new("kill-guard");
    let supervisor = s.path("fl-supervisor");
    std::os::unix::fs::symlink("/bin/sh", &supervisor).unwrap();
    let cases = [
        ("sh", "it is PID 1 (init)"),
        ("fl-supervisor", "it is an ancestor of this agent (its supervisor)"),
        ("faultline-agent", "it is this agent"),
    ];
    for (i, (name, why)) in cases.into_iter().enumerate() {
        let template = s.write_json(
            &format!("t{i}.json"),
            &single_action("web-a1", "faultline:process:kill", json!({ "processName": name })),
        );
        let (ctl, port) = controller(&s, &template, 1, &[]);
        let agent_cmd = format!(
            "{} --controller ws://127.0.0.1:{port} --token-file {} --host-id web-a1 --az az-a --state-dir {}; exit $?",
            agent_bin().display(),
            s.path("token").display(),
            s.path(&format!("state-{i}")).display()
        );
        let mut cmd = Command::new("unshare");
        // --kill-child: when the test drops `unshare`, PID 1 dies and the namespace with it.
        cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c"])
            .arg(format!("{} -c '{agent_cmd}'; exit $?", supervisor.display()));
        let _agent = Proc::spawn("web-a1", cmd);
        let (status, out, lines) = ctl.finish(T);
        let r = report(&out, &lines);
        assert_eq!(status.code(), Some(3), "{r}");
        let error = r["actions"]["A"]["error"].as_str().unwrap_or_default().to_string();
        assert!(
            error.contains("refused") && error.contains(why) && error.contains(&format!("({name})")),
            "kill of {name}: {error}"
        );
    }
}
