//! Two `faultline serve` replicas on one PostgreSQL (started from the distribution's package by
//! scripts/postgres.sh): each scheduled fire time runs once, and a dead replica's run is
//! marked failed by the survivor.

use crate::common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// A PostgreSQL cluster, stopped when dropped.
struct Postgres {
    dir: PathBuf,
    url: String,
}

impl Postgres {
    fn start(dir: PathBuf) -> Postgres {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh"))
            .arg("start")
            .arg(&dir)
            .arg(port.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot start PostgreSQL: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Postgres { dir, url }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh"))
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

struct Replica {
    proc: Proc,
    api: u16,
}

fn replica(s: &Scratch, name: &str, url: &str) -> Replica {
    let mut cmd = Command::new(FAULTLINE);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--database", url])
        .arg("--token-file")
        .arg(s.path("token"))
        .arg("--api-token-file")
        .arg(s.path("api-token"))
        .arg("--journals")
        .arg(s.path(&format!("journals-{name}")))
        .current_dir(&s.0);
    let mut proc = Proc::spawn(name, cmd);
    let api = proc.listen_port("serving the API");
    Replica { proc, api }
}

fn call(s: &Scratch, port: u16, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let token = std::fs::read_to_string(s.path("api-token")).unwrap().trim().to_string();
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(T)).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn until(s: &Scratch, port: u16, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let (status, v) = call(s, port, "GET", path, None);
        assert_eq!(status, 200, "{v}");
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: GET {path} still {v}");
        // Paces the polling of the server's state.
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_template(seconds: u32) -> Value {
    json!({
        "description": "only wait",
        "actions": { "W": { "actionId": "aws:fis:wait", "parameters": { "duration": format!("PT{seconds}S") } } },
        "stopConditions": [{ "source": "none" }]
    })
}

#[test]
fn two_replicas_run_each_fire_time_once_and_reap_a_dead_ones_run() {
    if !is_root() && !required() {
        eprintln!("SKIPPED: scripts/postgres.sh runs PostgreSQL as its own user, which needs root");
        return;
    }
    let s = Scratch::new("serve-pg");
    let pg = Postgres::start(s.path("pg"));
    let a = replica(&s, "replica-a", &pg.url);
    let b = replica(&s, "replica-b", &pg.url);

    let (status, v) = call(&s, a.api, "PUT", "/api/v1/templates/wait", Some(wait_template(1)));
    assert_eq!(status, 201, "{v}");
    let (status, v) = call(&s, b.api, "PUT", "/api/v1/templates/long", Some(wait_template(120)));
    assert_eq!(status, 201, "{v}");

    // The lever engaged through replica A stops the run on replica B.
    let (status, v) = call(
        &s,
        b.api,
        "POST",
        "/api/v1/experiments",
        Some(json!({ "template": "long" })),
    );
    assert_eq!(status, 201, "{v}");
    let on_b = v["id"].as_str().unwrap().to_string();
    let engage = json!({ "engaged": true, "reason": "incident on a" });
    let (status, v) = call(&s, a.api, "PUT", "/api/v1/lever", Some(engage));
    assert_eq!(status, 200, "{v}");
    let e = until(
        &s,
        b.api,
        &format!("/api/v1/experiments/{on_b}"),
        "B's run stopped by the lever engaged on A",
        |v| v["state"] == "stopped",
    );
    assert!(e["reason"].as_str().unwrap().contains("incident on a"), "{e}");
    let disengage = json!({ "engaged": false, "reason": "over" });
    let (status, v) = call(&s, a.api, "PUT", "/api/v1/lever", Some(disengage));
    assert_eq!(status, 200, "{v}");

    let (status, v) = call(
        &s,
        b.api,
        "POST",
        "/api/v1/schedules",
        Some(json!({ "name": "tick", "template": "wait", "cron": "* * * * * *", "timezone": "UTC" })),
    );
    assert_eq!(status, 201, "{v}");

    // A run on replica A, which then dies.
    let (status, v) = call(
        &s,
        a.api,
        "POST",
        "/api/v1/experiments",
        Some(json!({ "template": "long" })),
    );
    assert_eq!(status, 201, "{v}");
    let long = v["id"].as_str().unwrap().to_string();

    until(&s, b.api, "/api/v1/schedules/tick/runs", "five started runs", |v| {
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["outcome"] == "started")
            .count()
            >= 5
    });
    a.proc.signal(libc::SIGKILL);
    let (_, _, a_lines) = a.proc.finish(T);

    let e = until(
        &s,
        b.api,
        &format!("/api/v1/experiments/{long}"),
        "the dead replica's run marked failed",
        |v| v["state"] == "failed",
    );
    assert!(e["reason"].as_str().unwrap().contains("controller lost"), "{e}");

    call(&s, b.api, "DELETE", "/api/v1/schedules/tick", None);
    b.proc.signal(libc::SIGTERM);
    let (status, _, b_lines) = b.proc.finish(T);
    assert!(status.success());

    // Every fire time both replicas decided was started by one of them only.
    let mut started: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (who, lines) in [("a", &a_lines), ("b", &b_lines)] {
        for l in lines
            .iter()
            .filter(|l| l.contains("scheduled run") && l.contains("outcome=\"started\""))
        {
            let fire = l
                .split("fire_at=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
            started.entry(fire).or_default().push(who);
        }
    }
    assert!(started.len() >= 5, "{started:?}");
    let twice: Vec<_> = started.iter().filter(|(_, w)| w.len() > 1).collect();
    assert!(twice.is_empty(), "fire times started twice: {twice:?}");
}
