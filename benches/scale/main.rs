//! Scale and speed, each figure next to the best alternative measured in the same run:
//!
//!     cargo bench --bench scale                         # minutes
//!     FAULTLINE_SCALE_QUICK=1 cargo bench --bench scale # fewer repetitions, while developing
//!     FAULTLINE_SCALE_ONLY=proxy,cpu cargo bench --bench scale # some parts only
//!
//! Prints one table (min / median / p99 over repeated runs) and one `target NAME: pass|fail`
//! line per goal of docs/benchmarks.md. Installs stress-ng and Chaos Toolkit through
//! scripts/bench-peers.sh when they are missing. Run as root: the CPU figures use cgroups.

mod fleet;
mod floor;
mod mixed;
mod peers;
mod stats;

use comfy_table::{presets::UTF8_FULL, Cell, CellAlignment, Table};
use faultline::controller::{AgentWait, Controller, RunOptions};
use faultline::run::StopRequest;
use faultline::template;
use serde_json::{json, Value};
use stats::Summary;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// One line of the table.
pub struct Row {
    pub figure: String,
    pub unit: &'static str,
    pub summary: Summary,
    /// The alternative measured in the same run, or what bounds the figure.
    pub against: String,
}

/// One goal and how this run did.
pub struct Target {
    pub name: &'static str,
    pub pass: bool,
    pub figure: String,
    pub goal: String,
}

/// What every part of the bench shares.
pub struct Bench {
    pub quick: bool,
    pub dir: PathBuf,
    pub bins: PathBuf,
    pub token_file: PathBuf,
    pub rows: Vec<Row>,
    pub targets: Vec<Target>,
}

impl Bench {
    pub fn row(
        &mut self,
        figure: impl Into<String>,
        unit: &'static str,
        samples: &[f64],
        against: impl Into<String>,
    ) -> Summary {
        let summary = Summary::of(samples);
        self.rows.push(Row {
            figure: figure.into(),
            unit,
            summary,
            against: against.into(),
        });
        summary
    }

    pub fn target(&mut self, name: &'static str, pass: bool, figure: String, goal: impl Into<String>) {
        self.targets.push(Target {
            name,
            pass,
            figure,
            goal: goal.into(),
        });
    }

    pub fn reps(&self, quick: usize, full: usize) -> usize {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// Kills and reaps its processes when dropped.
pub struct Kill(pub Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// Builds the release binaries the bench starts and returns their folder.
fn bins() -> PathBuf {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "--release", "--bins"])
        .args(["-p", "faultline", "-p", "faultline-agent", "-p", "faultline-demo"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo");
    assert!(status.success(), "the release build failed");
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("fleet") {
        return fleet::main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("floor") {
        return floor::main(&args[1..]);
    }
    if args.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` lists; nothing to list here
    }
    let quick = args.iter().any(|a| a == "--quick") || std::env::var("FAULTLINE_SCALE_QUICK").is_ok_and(|v| v == "1");
    stats::raise_nofile();
    let dir = std::env::temp_dir().join(format!("faultline-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "scale-bench-token").expect("token");
    let mut bench = Bench {
        quick,
        dir: dir.clone(),
        bins: bins(),
        token_file,
        rows: Vec::new(),
        targets: Vec::new(),
    };
    let t = Instant::now();
    eprintln!(
        "scale bench ({}), {} CPUs",
        if quick { "quick" } else { "full" },
        cpus()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // FAULTLINE_SCALE_ONLY=sim,real,proxy,cpu,memory,overhead runs only those parts.
    let only = std::env::var("FAULTLINE_SCALE_ONLY").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only.split(',').any(|p| p.trim() == name);
    rt.block_on(async {
        if part("sim") {
            simulated(&mut bench, 1_000).await;
            simulated(&mut bench, 10_000).await;
            // After the fleets: the floor's own 10,000 connections would stay in this
            // process's heap and count in the controller's RSS.
            floor::run(&mut bench).await;
            floor::compare(&mut bench);
        }
        if part("real") {
            real(&mut bench).await;
        }
    });
    drop(rt);
    if part("proxy") {
        peers::proxy(&mut bench);
    }
    if part("cpu") {
        peers::cpu(&mut bench);
    }
    if part("memory") {
        peers::memory(&mut bench);
    }
    if part("overhead") {
        peers::overhead(&mut bench);
    }

    print(&bench);
    eprintln!("scale bench took {:.0} s", t.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&dir);
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn print(bench: &Bench) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL);
    table.set_header(["figure", "unit", "min", "median", "p99", "measured against / bound"]);
    for r in &bench.rows {
        let num = |v: f64| Cell::new(format_num(v)).set_alignment(CellAlignment::Right);
        table.add_row(vec![
            Cell::new(&r.figure),
            Cell::new(r.unit),
            num(r.summary.min),
            num(r.summary.median),
            num(r.summary.p99),
            Cell::new(&r.against),
        ]);
    }
    println!("{table}");
    for t in &bench.targets {
        println!(
            "target {}: {} ({} vs {})",
            t.name,
            if t.pass { "pass" } else { "fail" },
            t.figure,
            t.goal
        );
    }
}

pub fn format_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// A template that holds a fault on every `tier=web` host until stopped.
fn holding(action: &str, parameters: Value) -> Value {
    json!({
        "description": "scale bench",
        "targets": { "All": { "resourceType": "faultline:host", "resourceTags": { "tier": "web" }, "selectionMode": "ALL" } },
        "actions": { "Hold": { "actionId": action, "parameters": parameters, "targets": { "Hosts": "All" } } },
        "stopConditions": [{ "source": "none" }]
    })
}

fn events(journal: &Path) -> Vec<Value> {
    std::fs::read_to_string(journal)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A file's bytes from `offset` on.
fn read_from(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn ts(v: &Value) -> SystemTime {
    humantime::parse_rfc3339(v["ts"].as_str().expect("ts")).expect("rfc3339")
}

/// What one fan-out and stop measured.
struct Round {
    /// First dispatch to last ack, ms.
    fan_out: f64,
    /// Stop request to last confirmed removal, ms.
    stop: f64,
    /// Each ack's latency, ms.
    latencies: Vec<f64>,
    /// CPU time of this process (the controller, and the bench's own watching) over the
    /// round, ms.
    controller_cpu: f64,
}

/// One fan-out and stop: the template is sent to every agent; once every agent has acknowledged,
/// an alarm stop request arrives, as the alarm watcher sends it.
async fn fan_out_and_stop(controller: &Controller, template: &Value, agents: usize, journal: PathBuf) -> Round {
    let experiment = template::validate(template, None).expect("valid template");
    let opts = quiet_run(&journal);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let stopper = async {
        acknowledged(&journal, agents).await;
        let _ = tx
            .send(StopRequest::Alarm {
                alarm: "Bench".into(),
                detail: "the bench's alarm fired".into(),
            })
            .await;
    };
    let cpu = stats::cpu_time("self");
    let (report, ()) = tokio::join!(controller.run(experiment, opts, rx), stopper);
    let controller_cpu = stats::cpu_time("self").saturating_sub(cpu).as_secs_f64() * 1000.0;
    let report = report.expect("the run");
    let ev = events(&journal);
    let (fan_out, latencies) = fan_out(&ev, agents, &journal);
    assert_eq!(report.outcome.unconfirmed_removals, 0, "every removal confirmed");
    let stop = report.outcome.rollback.expect("a rollback").as_secs_f64() * 1000.0;
    let _ = std::fs::remove_file(&journal);
    Round {
        fan_out,
        stop,
        latencies,
        controller_cpu,
    }
}

/// A bench run's options: its journal at `journal`, no progress display.
fn quiet_run(journal: &Path) -> RunOptions {
    let mut opts = RunOptions::new(Path::new("scale"));
    opts.journal = Some(journal.to_path_buf());
    opts.progress = false;
    opts
}

/// Waits until a run's journal holds `agents` acknowledgements, or a failed dispatch.
async fn acknowledged(journal: &Path, agents: usize) {
    // Reads only what the journal gained since the last look: rereading all of it (some
    // megabytes with 10,000 agents) every 50 ms took CPU from the controller it measures.
    let (mut seen, mut acks) = (0u64, 0usize);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let bytes = read_from(journal, seen).unwrap_or_default();
        let Some(end) = bytes.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes[..end]);
        seen += end as u64 + 1;
        acks += text.matches("\"event\":\"ack\"").count();
        if acks >= agents || text.contains("\"event\":\"dispatch_failed\"") {
            return;
        }
    }
}

/// From a run's journal: first dispatch to last acknowledgement (ms), and each ack's latency
/// (ms); every agent must have acknowledged.
fn fan_out(ev: &[Value], agents: usize, journal: &Path) -> (f64, Vec<f64>) {
    let first_dispatch = ev
        .iter()
        .filter(|e| e["event"] == "dispatch")
        .map(ts)
        .min()
        .expect("a dispatch");
    let acks: Vec<&Value> = ev.iter().filter(|e| e["event"] == "ack").collect();
    assert_eq!(
        acks.len(),
        agents,
        "every agent acknowledged (journal {})",
        journal.display()
    );
    let last_ack = acks.iter().map(|e| ts(e)).max().expect("an ack");
    let ms = last_ack
        .duration_since(first_dispatch)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0;
    (ms, acks.iter().filter_map(|e| e["latency_ms"].as_f64()).collect())
}

/// Waits until the controller has no agent left (after a fleet was stopped).
async fn drained(controller: &Controller) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !controller.fleet().hosts().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `n` simulated agents in one child process (this bench binary, `fleet` mode).
fn spawn_fleet(bench: &Bench, addr: std::net::SocketAddr, n: usize, prefix: &str) -> Kill {
    let child = Command::new(std::env::current_exe().expect("own path"))
        .arg("fleet")
        .arg(addr.to_string())
        .arg(&bench.token_file)
        .arg(n.to_string())
        .arg(prefix)
        .stdout(Stdio::null())
        .spawn()
        .expect("the fleet simulator");
    Kill(vec![child])
}

async fn simulated(bench: &mut Bench, n: usize) {
    eprintln!("simulated agents: {n}");
    let token = std::fs::read_to_string(&bench.token_file).expect("token");
    let controller = Controller::start("127.0.0.1:0".parse().expect("addr"), token, Default::default())
        .await
        .expect("controller");
    let addr = controller.addr();
    let rss_before = stats::rss_bytes("self") as f64;
    let (mut connects, mut fan_outs, mut stops) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rss, mut cpu) = (Vec::new(), Vec::new());
    let (mut controller_cpu, mut fleet_cpu) = (Vec::new(), Vec::new());
    let connect_reps = bench.reps(1, 3);
    let rounds = bench.reps(5, 20);
    for rep in 0..connect_reps {
        let t = Instant::now();
        let fleet = spawn_fleet(bench, addr, n, &format!("s{rep}-"));
        controller
            .wait_for_agents(&AgentWait::Count(n), Duration::from_secs(300))
            .await
            .expect("every simulated agent connects");
        connects.push(t.elapsed().as_secs_f64() * 1000.0);
        // Idle: heartbeats only.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let window = Duration::from_secs(bench.reps(3, 5) as u64);
        let (c0, t0) = (stats::cpu_time("self"), Instant::now());
        tokio::time::sleep(window).await;
        cpu.push(stats::cpu_time("self").saturating_sub(c0).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0);
        rss.push(stats::rss_bytes("self") as f64);
        if rep == 0 {
            let template = holding(
                "faultline:host:cpu-stress",
                json!({ "duration": "PT5M", "loadPercent": "1", "workers": "1" }),
            );
            for round in 0..rounds {
                let journal = bench.dir.join(format!("sim-{n}-{round}.jsonl"));
                let pid = fleet.0[0].id().to_string();
                let before = stats::cpu_time(&pid);
                let r = fan_out_and_stop(&controller, &template, n, journal).await;
                fleet_cpu.push(stats::cpu_time(&pid).saturating_sub(before).as_secs_f64() * 1000.0);
                fan_outs.push(r.fan_out);
                stops.push(r.stop);
                controller_cpu.push(r.controller_cpu);
            }
        }
        drop(fleet);
        drained(&controller).await;
    }
    controller.shutdown();
    let per_k = n as f64 / 1000.0;
    bench.row(
        format!("connect-all, {n} simulated agents"),
        "ms",
        &connects,
        "from the fleet's start",
    );
    let fan = bench.row(
        format!("fan-out, {n} simulated agents"),
        "ms",
        &fan_outs,
        "first dispatch -> last ack",
    );
    let stop = bench.row(
        format!("stop reaction, {n} simulated agents"),
        "ms",
        &stops,
        "alarm stop -> last removal acked",
    );
    // CPU time, unlike wall time, does not depend on what else the machine runs: what each
    // side spends per round (fan-out, stop and the end-of-run sweep) with this many agents.
    bench.row(
        format!("controller CPU per round, {n} simulated agents"),
        "ms",
        &controller_cpu,
        "apply, remove, remove-all to each; with the bench's journal watching",
    );
    bench.row(
        format!("simulator CPU per round, {n} simulated agents"),
        "ms",
        &fleet_cpu,
        "the fleet process: decode, answer, heartbeats",
    );
    let rss_total = Summary::of(&rss);
    let rss_k: Vec<f64> = rss.iter().map(|r| (r - rss_before) / MIB / per_k).collect();
    bench.row(
        format!("controller RSS per 1,000 idle agents (at {n})"),
        "MiB",
        &rss_k,
        format!("whole controller {:.0} MiB", rss_total.median / MIB),
    );
    let cpu_k: Vec<f64> = cpu.iter().map(|c| c / per_k).collect();
    bench.row(
        format!("controller CPU per 1,000 idle agents (at {n})"),
        "% of a CPU",
        &cpu_k,
        "heartbeats every lease/4",
    );
    match n {
        1_000 => {
            bench.target(
                "fanout-1000-sim",
                fan.p99 < 50.0,
                format!("p99 {:.1} ms", fan.p99),
                "< 50 ms",
            );
            bench.target(
                "stop-1000-sim",
                stop.p99 < 100.0,
                format!("p99 {:.1} ms", stop.p99),
                "< 100 ms",
            );
        }
        10_000 => {
            bench.target(
                "fanout-10000-sim",
                fan.p99 < 250.0,
                format!("p99 {:.1} ms", fan.p99),
                "< 250 ms",
            );
            let worst = rss.iter().copied().fold(0.0, f64::max) / MIB;
            bench.target(
                "controller-rss-10000",
                worst < 300.0,
                format!("{worst:.0} MiB"),
                "< 300 MiB",
            );
        }
        _ => {}
    }
}

/// Real agent processes: one agent's apply cost, then fleets of 100 and 1,000.
async fn real(bench: &mut Bench) {
    let token = std::fs::read_to_string(&bench.token_file).expect("token");
    let controller = Controller::start("127.0.0.1:0".parse().expect("addr"), token, Default::default())
        .await
        .expect("controller");
    let template = holding(
        "faultline:host:memory-stress",
        json!({ "duration": "PT5M", "sizeMiB": "1" }),
    );
    // One agent alone: what one apply costs (decode, two fsyncs, the holder, the answer).
    let cost = {
        let _one = spawn_agents(bench, &controller, 1, "one");
        controller
            .wait_for_agents(&AgentWait::Count(1), Duration::from_secs(60))
            .await
            .expect("one agent");
        let mut lat = Vec::new();
        for round in 0..bench.reps(5, 20) {
            let r = fan_out_and_stop(&controller, &template, 1, bench.dir.join(format!("one-{round}.jsonl"))).await;
            lat.extend(r.latencies);
        }
        drop(_one);
        drained(&controller).await;
        bench.row(
            "one real agent's apply (memory-stress 1 MiB)",
            "ms",
            &lat,
            "dispatch -> ack, alone on the machine",
        )
    };
    for n in [100, 1_000] {
        eprintln!("real agents: {n}");
        let (mut connects, mut fan_outs, mut stops) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..bench.reps(1, 2) {
            let t = Instant::now();
            let agents = spawn_agents(bench, &controller, n, &format!("r{rep}-"));
            controller
                .wait_for_agents(&AgentWait::Count(n), Duration::from_secs(300))
                .await
                .expect("every agent connects");
            connects.push(t.elapsed().as_secs_f64() * 1000.0);
            if rep == 0 && n == 100 {
                idle_agents(bench, &agents).await;
            }
            if rep == 0 {
                for round in 0..bench.reps(3, 10) {
                    let journal = bench.dir.join(format!("real-{n}-{round}.jsonl"));
                    let r = fan_out_and_stop(&controller, &template, n, journal).await;
                    fan_outs.push(r.fan_out);
                    stops.push(r.stop);
                }
                if n == 1_000 {
                    mixed::rounds(bench, &controller, n, 10_000).await;
                }
            }
            drop(agents);
            drained(&controller).await;
        }
        let bound = n as f64 * cost.median / cpus() as f64;
        bench.row(
            format!("connect-all, {n} real agents"),
            "ms",
            &connects,
            "from the processes' start",
        );
        let fan = bench.row(
            format!("fan-out, {n} real agents"),
            "ms",
            &fan_outs,
            format!("machine bound {bound:.0} ms (N x apply / {} CPUs)", cpus()),
        );
        bench.row(
            format!("stop reaction, {n} real agents"),
            "ms",
            &stops,
            "alarm stop -> last removal acked",
        );
        if n == 1_000 {
            bench.target(
                "fanout-1000-real",
                fan.median <= 2.0 * bound,
                format!(
                    "median {:.0} ms, {:.2}x the machine bound {bound:.0} ms",
                    fan.median,
                    fan.median / bound
                ),
                "<= 2x",
            );
        }
    }
    controller.shutdown();
}

fn spawn_agents(bench: &Bench, controller: &Controller, n: usize, prefix: &str) -> Kill {
    let agent = bench.bins.join("faultline-agent");
    let url = format!("ws://{}", controller.addr());
    // Each agent is owned by the `Kill` as soon as it runs: a failed spawn further on then
    // kills those already started instead of leaving them redialing.
    let mut agents = Kill(Vec::with_capacity(n));
    for i in 0..n {
        let child = Command::new(&agent)
            .args(["--controller", &url])
            .arg("--token-file")
            .arg(&bench.token_file)
            .args([
                "--host-id",
                &format!("{prefix}{i:04}"),
                "--az",
                ["az-a", "az-b", "az-c"][i % 3],
            ])
            .args(["--tag", "tier=web", "--allow", "memory,cpu"])
            .arg("--state-dir")
            .arg(bench.dir.join(format!("state-{prefix}{i}")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("an agent");
        agents.0.push(child);
    }
    agents
}

/// Idle agents: resident memory and CPU over a window, and the binary's size.
async fn idle_agents(bench: &mut Bench, agents: &Kill) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pids: Vec<String> = agents.0.iter().map(|c| c.id().to_string()).collect();
    let window = Duration::from_secs(bench.reps(3, 10) as u64);
    let before: Vec<Duration> = pids.iter().map(|p| stats::cpu_time(p)).collect();
    tokio::time::sleep(window).await;
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&before)
        .map(|(p, b)| (stats::cpu_time(p).saturating_sub(*b)).as_secs_f64() / window.as_secs_f64() * 100.0)
        .collect();
    let rss: Vec<f64> = pids.iter().map(|p| stats::rss_bytes(p) as f64 / MIB).collect();
    let size = std::fs::metadata(bench.bins.join("faultline-agent")).map_or(0, |m| m.len()) as f64 / MIB;
    let rss = bench.row("agent idle RSS (100 connected)", "MiB", &rss, "per process");
    let cpu = bench.row(
        "agent idle CPU (100 connected)",
        "% of a CPU",
        &cpu,
        format!("over {} s", window.as_secs()),
    );
    bench.row("agent binary size", "MiB", &[size], "stripped (release)");
    bench.target(
        "agent-idle-rss",
        rss.p99 < 8.0,
        format!("p99 {:.1} MiB", rss.p99),
        "< 8 MiB",
    );
    bench.target(
        "agent-idle-cpu",
        cpu.median < 0.5,
        format!("median {:.2} %", cpu.median),
        "~0 % (< 0.5 %)",
    );
}
