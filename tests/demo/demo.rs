//! `faultline demo`, as the README runs it: the default topology as local processes and the
//! showcase game day, with nothing left behind.

use crate::common;

use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn the_demo_runs_the_showcase_game_day_and_cleans_up() {
    let _one = one_demo_at_a_time();
    // The demo starts the binaries it finds next to faultline.
    workspace_bin("faultline-agent");
    let s = Scratch::new("demo");
    let junit = s.path("junit.xml");
    let mut cmd = Command::new(FAULTLINE);
    cmd.args(["demo", "--format", "json", "--seed", "3", "--junit"])
        .arg(&junit)
        .current_dir(&s.0);
    let mut demo = Proc::spawn("demo", cmd);
    demo.expect("demo world ready", Duration::from_secs(90));
    let (status, out, lines) = demo.finish(Duration::from_secs(240));
    let r = report(&out, &lines);
    assert_eq!(status.code(), Some(0), "{r}\n{}", lines.join("\n"));
    assert_eq!(r["state"], "completed");
    assert_eq!(
        r["actions"]["ZoneOutage"]["hosts"],
        serde_json::json!(["web-a1", "web-a2"])
    );
    assert_eq!(r["steadyState"]["recovered"], true);
    // What the users saw, at the load balancer, in every phase.
    let phases: Vec<&str> = r["userExperience"]
        .as_array()
        .unwrap_or_else(|| panic!("no userExperience in {r}"))
        .iter()
        .map(|p| {
            assert!(p["requestRate"].as_f64().is_some_and(|r| r > 0.0), "{p}");
            p["phase"].as_str().unwrap()
        })
        .collect();
    assert_eq!(phases.first(), Some(&"baseline"));
    assert!(phases.contains(&"ZoneOutage"), "{phases:?}");
    assert_eq!(phases.last(), Some(&"recovery"));
    assert!(junit.exists());
    nothing_of_the_demo_is_left(&s);
}
