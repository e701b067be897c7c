//! Real and simulated agents on one controller: the real agent processes of the last
//! real-agent rounds, still connected, and a simulated fleet beside them; one experiment
//! holds a fault on all of them and a real alarm stops it: an HTTP probe (one per 100 ms
//! period) of a service the bench turns unhealthy once every agent has acknowledged.

use crate::{acknowledged, events, fan_out, holding, peers, quiet_run, spawn_fleet, ts, Bench};
use faultline::controller::{AgentWait, Controller};
use faultline::journal::State;
use faultline::template;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// `real` agents are connected to `controller` already; `simulated` more join them.
pub(crate) async fn rounds(bench: &mut Bench, controller: &Controller, real: usize, simulated: usize) {
    eprintln!("real and simulated agents on one controller: {real} + {simulated}, stopped by an alarm");
    let all = real + simulated;
    let _fleet = spawn_fleet(bench, controller.addr(), simulated, "m-");
    controller
        .wait_for_agents(&AgentWait::Count(all), Duration::from_secs(300))
        .await
        .expect("every agent connects");
    let healthy = Arc::new(AtomicBool::new(true));
    let url = format!("http://{}/", peers::http_service(healthy.clone()));
    let mut template = holding(
        "faultline:host:memory-stress",
        json!({ "duration": "PT5M", "sizeMiB": "1" }),
    );
    template["stopConditions"] = json!([{ "source": "faultline:alarm", "value": "Healthy" }]);
    template["alarms"] = json!({ "Healthy": {
        "metric": { "http": { "url": url, "timeout": "PT5S", "probesPerPeriod": 1 }, "statistic": "errorRate" },
        "threshold": 0.5, "comparisonOperator": "GreaterThanThreshold", "period": "PT0.1S", "evaluationPeriods": 1
    } });
    // A 5 s probe timeout: with 1,000 agent processes starting their holders at once the
    // machine's load passes 100, a probe took 1.4 s, and with a 1 s timeout the alarm fired
    // on that missing datapoint during the fan-out, before the service was made unhealthy.
    let (mut fan_outs, mut detections, mut stops) = (Vec::new(), Vec::new(), Vec::new());
    let rounds = bench.reps(1, 3);
    for round in 0..rounds {
        healthy.store(true, Ordering::Relaxed);
        let journal = bench.dir.join(format!("mixed-{round}.jsonl"));
        let experiment = template::validate(&template, None).expect("valid template");
        // Nobody interrupts: only the alarm stops this run.
        let (_operator, interrupts) = tokio::sync::mpsc::channel(1);
        let breaker = async {
            acknowledged(&journal, all).await;
            healthy.store(false, Ordering::Relaxed);
            SystemTime::now()
        };
        let (report, broken_at) = tokio::join!(controller.run(experiment, quiet_run(&journal), interrupts), breaker);
        let report = report.expect("the run");
        let ev = events(&journal);
        fan_outs.push(fan_out(&ev, all, &journal).0);
        assert_eq!(report.outcome.unconfirmed_removals, 0, "every removal confirmed");
        assert_eq!(
            report.outcome.state,
            State::Stopped,
            "the alarm stopped the run: {:?}",
            report.outcome.reason
        );
        assert!(
            report.outcome.reason.as_deref().is_some_and(|r| r.contains("Healthy")),
            "stopped by the alarm Healthy: {:?}",
            report.outcome.reason
        );
        let fired = ev
            .iter()
            .filter(|e| e["event"] == "alarm_evaluation" && e["state"] == "ALARM" && e["phase"] == "experiment")
            .map(ts)
            .min()
            .expect("the alarm fired");
        match fired.duration_since(broken_at) {
            Ok(d) => detections.push(d.as_secs_f64() * 1000.0),
            Err(e) => {
                // Kept outside the bench's folder, which goes at the end.
                let kept =
                    std::env::temp_dir().join(format!("faultline-scale-mixed-{}-{round}.jsonl", std::process::id()));
                let _ = std::fs::rename(&journal, &kept).or_else(|_| std::fs::copy(&journal, &kept).map(drop));
                eprintln!(
                    "mixed: the alarm fired {:?} before the service was made unhealthy; journal kept: {}",
                    e.duration(),
                    kept.display()
                );
                continue;
            }
        }
        stops.push(report.outcome.rollback.expect("a rollback").as_secs_f64() * 1000.0);
        let _ = std::fs::remove_file(&journal);
    }
    // The check: every round stopped by the alarm the bench set off, not earlier.
    let early = rounds - stops.len();
    bench.target(
        "mixed-alarm-stop",
        early == 0,
        format!(
            "{} of {rounds} rounds stopped by the alarm, {early} fired early",
            stops.len()
        ),
        "every round",
    );
    if stops.is_empty() {
        return;
    }
    bench.row(
        format!("fan-out, {real} real + {simulated} simulated agents"),
        "ms",
        &fan_outs,
        "one controller; first dispatch -> last ack",
    );
    bench.row(
        format!("alarm detection, {real} real + {simulated} simulated agents"),
        "ms",
        &detections,
        "service unhealthy -> alarm in ALARM (100 ms period)",
    );
    bench.row(
        format!("stop reaction, {real} real + {simulated} simulated agents"),
        "ms",
        &stops,
        "alarm -> last removal acked",
    );
}
