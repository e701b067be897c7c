//! Faults that end on their own: CPU and memory stress run in holder processes that die
//! with the agent and end at the fault's deadline, whether or not the agent ever comes back.

use crate::common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// Polls `done` every 50 ms until it holds or `limit` has passed; whether it held.
fn within(limit: Duration, done: impl Fn() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_agent_leaves_no_cpu_burning() {
    let s = Scratch::new("holder-cpu-kill");
    let template = s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:host:cpu-stress",
            json!({ "duration": "PT60S", "loadPercent": "80", "workers": "1" }),
        ),
    );
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let a = agent(&s, port, "web-a1", "az-a", &[]);
    ctl.expect("action A running", T);
    // The acknowledgement follows the fork; the holder shows its name once its exec is done.
    assert!(
        within(Duration::from_secs(2), || holders(a.pid()).len() == 1),
        "one holder process burns the CPU"
    );
    let held = holders(a.pid());
    let burning = tree_cpu_load(held[0], Duration::from_millis(500));
    assert!(burning > 0.15, "the holder burns {burning:.2} CPU");

    a.signal(libc::SIGKILL);
    let agent_pid = a.pid();
    drop(a);
    // Long before the fault's own deadline: the holder dies with the agent.
    assert!(
        within(Duration::from_secs(2), || !alive(held[0])),
        "holder {} still runs 2 s after the agent was killed (fault deadline: 60 s)",
        held[0]
    );
    assert!(holders(agent_pid).is_empty());
    ctl.signal(libc::SIGINT);
    let _ = ctl.finish(T);
}

#[test]
fn a_killed_agent_leaves_no_memory_held() {
    let s = Scratch::new("holder-mem-kill");
    let template = s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:host:memory-stress",
            json!({ "duration": "PT60S", "sizeMiB": "128" }),
        ),
    );
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let a = agent(&s, port, "web-a1", "az-a", &[]);
    ctl.expect("action A running", T);
    let held = holders(a.pid());
    assert_eq!(held.len(), 1, "one holder process holds the memory");
    assert!(
        tree_rss(held[0]) > 120 << 20,
        "the holder is resident when the action runs"
    );
    assert!(rss(a.pid()) < 32 << 20, "the agent itself holds none of it");
    let oom = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", held[0])).unwrap();
    assert_eq!(oom.trim(), "1000", "the OOM killer takes the holder first");

    a.signal(libc::SIGKILL);
    drop(a);
    assert!(
        within(Duration::from_secs(2), || tree_rss(held[0]) == 0),
        "the memory is still held 2 s after the agent was killed (fault deadline: 60 s)"
    );
    ctl.signal(libc::SIGINT);
    let _ = ctl.finish(T);
}

#[test]
fn a_holder_ends_at_its_deadline_while_the_agent_is_frozen() {
    let s = Scratch::new("holder-deadline");
    let template = s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:host:cpu-stress",
            json!({ "duration": "PT3S", "loadPercent": "80", "workers": "1" }),
        ),
    );
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let a = agent(&s, port, "web-a1", "az-a", &[]);
    ctl.expect("action A running", T);
    let running = Instant::now();
    // The acknowledgement follows the fork; the holder shows its name once its exec is done.
    assert!(within(Duration::from_secs(2), || holders(a.pid()).len() == 1));
    let held = holders(a.pid());
    // A frozen agent neither removes the fault nor dies, so only the holder's own clock acts.
    a.signal(libc::SIGSTOP);
    let ended = within(Duration::from_secs(3) + Duration::from_millis(500), || !alive(held[0]));
    let at = running.elapsed();
    a.signal(libc::SIGCONT);
    assert!(ended, "the holder still runs {at:?} into a 3 s fault");
    assert!(at > Duration::from_secs(2), "the holder ended {at:?} into a 3 s fault");
    ctl.signal(libc::SIGINT);
    let _ = ctl.finish(T);
}
