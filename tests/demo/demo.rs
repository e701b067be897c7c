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
    // Every process of the demo world is gone, and so is its work directory.
    let here = std::fs::canonicalize(&s.0).unwrap();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == here))
        .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default())
        .collect();
    assert!(left.is_empty(), "processes of the demo are still running: {left:?}");
    let dirs: Vec<_> = std::fs::read_dir(s.path(".faultline"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("demo-"))
        .collect();
    assert!(dirs.is_empty(), "{dirs:?}");
}
