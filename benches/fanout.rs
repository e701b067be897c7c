//! Fan-out and rollback with real agent processes on loopback; prints its figures.
//!
//!     cargo bench --bench fanout                    # 50 agents, 5 rounds
//!     FAULTLINE_BENCH_AGENTS=100 cargo bench --bench fanout
//!
//! - fan-out: from the first dispatch to the last acknowledgement of a CPU stress on every agent;
//! - rollback: from the stop request to the last confirmed removal;
//! - alarm reaction: from the watched service's death to the last confirmed removal, with an
//!   HTTP alarm of one 200 ms period.

use faultline::controller::{AgentWait, Controller, RunOptions};
use faultline::run::StopRequest;
use faultline::template;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// Builds the agent and demo binaries (release), as the tests do, and returns their folder.
fn bins() -> PathBuf {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--quiet",
            "--release",
            "--bins",
            "-p",
            "faultline-agent",
            "-p",
            "faultline-demo",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success());
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release")
}

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

fn ts(v: &Value) -> SystemTime {
    humantime::parse_rfc3339(v["ts"].as_str().unwrap()).unwrap()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists; nothing to list here
    }
    let agents: usize = std::env::var("FAULTLINE_BENCH_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let rounds = 5;
    let dir_bins = bins();
    let (agent_bin, web_bin) = (dir_bins.join("faultline-agent"), dir_bins.join("demo-web"));
    let dir = std::env::temp_dir().join(format!("faultline-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = "bench-token";
    std::fs::write(dir.join("token"), token).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let controller = Controller::start("127.0.0.1:0".parse().unwrap(), token.into(), Default::default()).await.unwrap();
        let port = controller.addr().port();
        let _agents = Kill(
            (0..agents)
                .map(|i| {
                    Command::new(&agent_bin)
                        .args(["--controller", &format!("ws://127.0.0.1:{port}")])
                        .arg("--token-file")
                        .arg(dir.join("token"))
                        .args(["--host-id", &format!("h{i:03}"), "--az", ["az-a", "az-b", "az-c"][i % 3], "--tag", "tier=web"])
                        .arg("--state-dir")
                        .arg(dir.join(format!("state-{i}")))
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap()
                })
                .collect(),
        );
        let t = Instant::now();
        controller.wait_for_agents(&AgentWait::Count(agents), Duration::from_secs(60)).await.unwrap();
        println!("{agents} agents connected in {:.0} ms", t.elapsed().as_secs_f64() * 1000.0);

        let stress = json!({
            "description": "bench",
            "targets": { "All": { "resourceType": "faultline:host", "resourceTags": { "tier": "web" }, "selectionMode": "ALL" } },
            "actions": { "Stress": { "actionId": "faultline:host:cpu-stress", "parameters": { "duration": "PT1M", "loadPercent": "1", "workers": "1" }, "targets": { "Hosts": "All" } } },
            "stopConditions": [{ "source": "none" }]
        });
        let (mut fanouts, mut acks, mut rollbacks) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let experiment = template::validate(&stress, None).unwrap();
            let journal = dir.join(format!("fanout-{round}.jsonl"));
            let mut opts = RunOptions::new(Path::new("bench"));
            opts.journal = Some(journal.clone());
            opts.progress = false;
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let stopper = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let _ = tx.send(StopRequest::Interrupted).await;
            });
            let report = controller.run(experiment, opts, rx).await.unwrap();
            stopper.await.unwrap();
            let events: Vec<Value> = std::fs::read_to_string(&journal)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let first_dispatch = events.iter().filter(|e| e["event"] == "dispatch").map(ts).min().unwrap();
            let last_ack = events.iter().filter(|e| e["event"] == "ack").map(ts).max().unwrap();
            fanouts.push(last_ack.duration_since(first_dispatch).unwrap().as_secs_f64() * 1000.0);
            acks.extend(events.iter().filter(|e| e["event"] == "ack").map(|e| e["latency_ms"].as_f64().unwrap()));
            rollbacks.push(report.outcome.rollback.unwrap().as_secs_f64() * 1000.0);
            assert_eq!(report.outcome.unconfirmed_removals, 0);
        }
        println!("fan-out to {agents} agents (first dispatch -> last ack): p50 {:.1} ms, max {:.1} ms over {rounds} rounds",
            percentile(&mut fanouts.clone(), 0.5), percentile(&mut fanouts, 1.0));
        println!("  per-agent ack latency: p50 {:.1} ms, p99 {:.1} ms", percentile(&mut acks.clone(), 0.5), percentile(&mut acks, 0.99));
        println!("rollback of {agents} faults (stop -> last confirmed removal): p50 {:.1} ms, max {:.1} ms",
            percentile(&mut rollbacks.clone(), 0.5), percentile(&mut rollbacks, 1.0));

        let mut reactions = Vec::new();
        for round in 0..rounds {
            let mut web = Command::new(&web_bin)
                .args(["--listen", "127.0.0.1:0"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(web.stderr.take().unwrap()), &mut line).unwrap();
            let web_port = line.split("listen=127.0.0.1:").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
            let mut guarded = stress.clone();
            guarded["stopConditions"] = json!([{ "source": "faultline:alarm", "value": "Down" }]);
            guarded["alarms"] = json!({ "Down": {
                "metric": { "http": { "url": format!("http://127.0.0.1:{web_port}/"), "timeout": "PT0.1S", "probesPerPeriod": 1 }, "statistic": "errorRate" },
                "threshold": 0.5, "comparisonOperator": "GreaterThanThreshold", "period": "PT0.2S", "evaluationPeriods": 1
            } });
            let experiment = template::validate(&guarded, None).unwrap();
            let journal = dir.join(format!("alarm-{round}.jsonl"));
            let mut opts = RunOptions::new(Path::new("bench"));
            opts.journal = Some(journal.clone());
            opts.progress = false;
            let (_tx, rx) = tokio::sync::mpsc::channel(1);
            let run = controller.run(experiment, opts, rx);
            tokio::pin!(run);
            let killed_at = loop {
                tokio::select! {
                    r = &mut run => panic!("ended before the service died: {:?}", r.map(|r| r.state)),
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {
                        let running = std::fs::read_to_string(&journal).unwrap_or_default().contains("\"state\":\"running\",\"duration_ms\"");
                        if running {
                            web.kill().unwrap();
                            break SystemTime::now();
                        }
                    }
                }
            };
            let _ = web.wait();
            let report = run.await.unwrap();
            let last_removal = std::fs::read_to_string(&journal)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .filter(|e| e["event"] == "removal")
                .map(|e| ts(&e))
                .max()
                .unwrap();
            assert_eq!(report.exit_code, 1);
            reactions.push(last_removal.duration_since(killed_at).unwrap().as_secs_f64() * 1000.0);
        }
        println!("alarm reaction (service killed -> {agents} faults removed, 200 ms period): p50 {:.0} ms, max {:.0} ms",
            percentile(&mut reactions.clone(), 0.5), percentile(&mut reactions, 1.0));
        controller.shutdown();
    });
    let _ = std::fs::remove_dir_all(&dir);
}
