//! `faultline demo --serve` (or `serve --demo`): the demo world kept up behind a running server, its showcase
//! game day run through the server by the CLI, and nothing left once the server stops.

use crate::common;

use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn the_demo_world_stays_up_behind_a_server_and_goes_down_with_it() {
    let _one = one_demo_at_a_time();
    // The demo starts the binaries it finds next to faultline.
    workspace_bin("faultline-agent");
    let s = Scratch::new("serve-demo");
    let mut cmd = Command::new(FAULTLINE);
    // `faultline demo --serve` is the name the issue gives; `serve --demo` the same.
    cmd.args(["demo", "--serve", "--listen", "127.0.0.1:0"])
        .current_dir(&s.0);
    let mut srv = Proc::spawn("serve", cmd);
    let api = srv.listen_port("serving the API");
    let server = format!("http://127.0.0.1:{api}");
    srv.expect("demo world ready", Duration::from_secs(90));

    // The stored showcase game day, run by the CLI through the server against the six hosts.
    let run = Command::new(FAULTLINE)
        .args(["run", "--server", &server, "--format", "json", "--seed", "3"])
        .args(["--wait-agents", "6", "--agents-timeout", "PT60S", "gameday-az-outage"])
        .current_dir(&s.0)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let r = report(&stdout, &[stderr.to_string()]);
    assert_eq!(run.status.code(), Some(0), "{r}\n{stderr}");
    assert_eq!(r["state"], "completed");
    assert_eq!(
        r["actions"]["ZoneOutage"]["hosts"],
        serde_json::json!(["web-a1", "web-a2"])
    );

    srv.signal(libc::SIGTERM);
    let (status, _, lines) = srv.finish(Duration::from_secs(60));
    assert!(status.success(), "{}", lines.join("\n"));
    nothing_of_the_demo_is_left(&s);
}
