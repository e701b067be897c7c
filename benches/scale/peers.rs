//! faultline next to what it is compared with, measured the same way in the same run: the
//! agent's proxy against a direct connection, CPU stress against stress-ng, memory stress
//! against what it was asked, and an experiment against Chaos Toolkit.

use crate::stats::{self, Cgroup, Summary};
use crate::{Bench, Kill, MIB};
use serde_json::json;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Waits until something listens on `addr`.
fn listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An upstream that echoes (for round trips) or swallows (for throughput) everything.
fn upstream(echo: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("upstream");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut s = s;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) if echo => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    addr
}

/// MiB/s of one connection sending `bytes` through `to` (a sink, or a proxy in front of one).
fn throughput(to: SocketAddr, bytes: usize) -> f64 {
    let mut s = TcpStream::connect(to).expect("connect");
    let chunk = vec![7u8; 256 * 1024];
    let t = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        s.write_all(&chunk).expect("write");
        sent += chunk.len();
    }
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    // The sink closes once it has read everything.
    let _ = s.read(&mut [0u8; 1]);
    sent as f64 / MIB / t.elapsed().as_secs_f64()
}

/// Median round trip, µs, of one byte echoed through `to`.
fn round_trip(to: SocketAddr, n: usize) -> f64 {
    let mut s = TcpStream::connect(to).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut b = [0u8; 1];
    let mut v = Vec::with_capacity(n);
    for i in 0..n + 100 {
        let t = Instant::now();
        s.write_all(&[1]).expect("write");
        s.read_exact(&mut b).expect("read");
        if i >= 100 {
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Summary::of(&v).median
}

pub(crate) fn proxy(bench: &mut Bench) {
    eprintln!("proxy against a direct connection");
    let (sink, echo) = (upstream(false), upstream(true));
    let (p_sink, p_echo) = (free_port(), free_port());
    let _agent = Kill(vec![Command::new(bench.bins.join("faultline-agent"))
        .args(["--controller", "ws://127.0.0.1:1", "--host-id", "proxy", "--az", "az-a"])
        .arg("--token-file")
        .arg(&bench.token_file)
        .arg("--state-dir")
        .arg(bench.dir.join("state-proxy"))
        .args(["--proxy", &format!("127.0.0.1:{p_sink}={sink}")])
        .args(["--proxy", &format!("127.0.0.1:{p_echo}={echo}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent")]);
    let (p_sink, p_echo): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{p_sink}").parse().unwrap(),
        format!("127.0.0.1:{p_echo}").parse().unwrap(),
    );
    listening(p_sink);
    listening(p_echo);
    let bytes = if bench.quick { 256 << 20 } else { 1 << 30 };
    let (mut ratio, mut added, mut direct_t, mut proxy_t) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..bench.reps(3, 10) {
        // Alternating, so a busy moment of the machine hits both alike.
        let d = throughput(sink, bytes);
        let p = throughput(p_sink, bytes);
        direct_t.push(d);
        proxy_t.push(p);
        ratio.push(p / d);
        let rd = round_trip(echo, 2000);
        let rp = round_trip(p_echo, 2000);
        added.push(rp - rd);
    }
    let d = bench.row(
        "direct connection throughput",
        "MiB/s",
        &direct_t,
        "loopback, one connection",
    );
    bench.row(
        "proxy throughput, no fault",
        "MiB/s",
        &proxy_t,
        format!("direct median {:.0} MiB/s", d.median),
    );
    let r = bench.row("proxy / direct throughput", "ratio", &ratio, "same run, alternating");
    let a = bench.row(
        "proxy added round trip p50",
        "µs",
        &added,
        "1-byte echo, proxied minus direct",
    );
    bench.target(
        "proxy-throughput",
        r.median >= 0.8,
        format!("{:.2}x direct", r.median),
        ">= 0.8x",
    );
    bench.target(
        "proxy-latency",
        a.median < 100.0,
        format!("+{:.0} µs", a.median),
        "< 100 µs",
    );
}

fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// The load one command held, in % of the `cpus` its cgroup may use: the cgroup's CPU time
/// over a window. The command must still be running at the window's end (one that failed
/// at once would measure as an idle cgroup).
fn held_load(cmd: &mut Command, group: &Cgroup, cpus: usize, window: Duration) -> f64 {
    let child = group
        .spawn(cmd.stdout(Stdio::null()).stderr(Stdio::piped()))
        .expect("into the cgroup");
    let mut child = Kill(vec![child]);
    std::thread::sleep(Duration::from_millis(500));
    let (u0, t0) = (group.usage(), Instant::now());
    std::thread::sleep(window);
    let used = group.usage().saturating_sub(u0);
    let elapsed = t0.elapsed();
    still_running(&mut child.0[0], cmd);
    used.as_secs_f64() / (elapsed.as_secs_f64() * cpus as f64) * 100.0
}

/// Panics with the command's own error when it has exited.
fn still_running(child: &mut std::process::Child, cmd: &Command) {
    if let Some(status) = child.try_wait().expect("wait") {
        let mut why = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut why);
        }
        panic!("{cmd:?} exited ({status}) while measured: {why}");
    }
}

pub(crate) fn cpu(bench: &mut Bench) {
    eprintln!("CPU stress against stress-ng");
    let Some(stress_ng) = peer("stress-ng") else {
        bench.target("cpu-accuracy", false, "not measured: no stress-ng".into(), "measured");
        return;
    };
    let window = Duration::from_secs(bench.reps(3, 6) as u64);
    let mut worst: (f64, f64) = (0.0, 0.0);
    for limit in [None, Some(1.0)] {
        // The load is a share of the CPUs the cgroup may use. Without a limit both tools get
        // one worker per CPU. Inside the 1-CPU limit (on a machine with more) each picks its
        // own number of workers, as a fault with the default `workers` does in a container:
        // one that counts the machine's CPUs instead of the limit asks for more than the
        // limit lets it have.
        let allowed = limit.map_or(crate::cpus(), |c: f64| c as usize);
        let workers = if limit.is_some() { 0 } else { allowed };
        for load in [25u8, 50, 75] {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for rep in 0..bench.reps(1, 3) {
                let name = format!("faultline-scale-{}-{rep}", std::process::id());
                let group = match Cgroup::new(&name, limit) {
                    Ok(g) => g,
                    Err(e) => {
                        eprintln!("no cgroup ({e}): the CPU figures need root");
                        bench.target(
                            "cpu-accuracy",
                            false,
                            format!("not measured: no cgroup ({e})"),
                            "measured",
                        );
                        return;
                    }
                };
                let until = monotonic_ms() + window.as_millis() as u64 + 2000;
                let mut holder = Command::new(bench.bins.join("faultline-agent"));
                let params = json!({ "load_percent": load, "workers": workers });
                holder.args(["hold", "cpu", "--params", &params.to_string(), "--bond", "death"]);
                holder.args([
                    "--fault",
                    "bench",
                    "--parent",
                    &std::process::id().to_string(),
                    "--until-ms",
                    &until.to_string(),
                ]);
                ours.push(held_load(&mut holder, &group, allowed, window) - f64::from(load));
                let mut ng = Command::new(&stress_ng);
                ng.args([
                    "--cpu",
                    &workers.to_string(),
                    "--cpu-load",
                    &load.to_string(),
                    "--timeout",
                    "60",
                ]);
                theirs.push(held_load(&mut ng, &group, allowed, window) - f64::from(load));
            }
            let place = limit.map_or("no limit".to_string(), |c| {
                format!("cgroup limit {c} CPU, default workers")
            });
            let ng = Summary::of(&theirs);
            let s = bench.row(
                format!("CPU stress {load} %, {place}: error"),
                "points",
                &ours,
                format!("stress-ng --cpu-load {load}: median {:+.1}", ng.median),
            );
            worst.0 = worst.0.max(s.median.abs());
            worst.1 = worst.1.max(ng.median.abs());
        }
    }
    bench.target(
        "cpu-accuracy",
        worst.0 <= 3.0 && worst.0 <= worst.1.max(1.0),
        format!("worst median error {:.1} points, stress-ng {:.1}", worst.0, worst.1),
        "within 3 points and no worse than stress-ng",
    );
}

pub(crate) fn memory(bench: &mut Bench) {
    eprintln!("memory stress: resident against asked");
    let asked: u64 = 256 << 20;
    let mut ratio = Vec::new();
    for _ in 0..bench.reps(2, 5) {
        let until = monotonic_ms() + 30_000;
        let mut child = Command::new(bench.bins.join("faultline-agent"))
            .args(["hold", "memory", "--params"])
            .arg(json!({ "bytes": asked, "workers": 0 }).to_string())
            .args(["--bond", "death"])
            .args([
                "--fault",
                "bench",
                "--parent",
                &std::process::id().to_string(),
                "--until-ms",
                &until.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("memory holder");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready");
        if line.is_empty() {
            let mut why = String::new();
            let _ = child.stderr.take().expect("stderr").read_to_string(&mut why);
            panic!("the memory holder ended before it was ready: {why}");
        }
        ratio.push(stats::rss_bytes(&child.id().to_string()) as f64 / asked as f64);
        drop(Kill(vec![child]));
    }
    let r = bench.row(
        "memory stress resident / asked (256 MiB)",
        "ratio",
        &ratio,
        "VmRSS once the holder says ready",
    );
    bench.target(
        "memory-resident",
        r.min >= 0.98,
        format!("{:.3}x asked", r.min),
        ">= 0.98x",
    );
}

/// Installs the peers when missing (saying so) and returns the path of one.
fn peer(name: &str) -> Option<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench-peers.sh");
    let out = Command::new("bash")
        .arg(script)
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    let found = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_string))
        .filter(|path| !path.is_empty());
    if found.is_none() {
        eprintln!("{name} is not available (scripts/bench-peers.sh failed): its comparison is left out");
    }
    found
}

/// The same experiment, an HTTP probe and a local process kill, by faultline (a long-lived
/// agent, `faultline run` started per run) and by Chaos Toolkit (`chaos run`).
pub(crate) fn overhead(bench: &mut Bench) {
    eprintln!("experiment overhead against Chaos Toolkit");
    let Some(chaos) = peer("chaos") else {
        bench.target(
            "experiment-overhead",
            false,
            "not measured: no Chaos Toolkit".into(),
            "measured",
        );
        return;
    };
    let dir = bench.dir.join("overhead");
    std::fs::create_dir_all(&dir).expect("dir");
    // A victim with a name of its own, so the kill touches nothing else on the machine.
    let victim_name = format!("flv{}", std::process::id() % 100_000);
    let victim = dir.join(&victim_name);
    std::fs::copy("/bin/sleep", &victim).expect("copy sleep");
    let url = format!("http://{}/", http_service(Arc::new(AtomicBool::new(true))));
    let port = free_port();
    let _agent = Kill(vec![killing_agent(bench, port, &dir.join("state"), &victim_name)]);
    // The shortest period an alarm may have: Chaos Toolkit's hypothesis has none, it probes
    // once before the method and once after; faultline's baseline probes at once, and so
    // does its recovery, whose first period starts when the actions end.
    let template = json!({
        "description": "probe the service, kill one local process",
        "targets": { "Me": { "resourceType": "faultline:host", "resourceIds": ["local"], "selectionMode": "ALL" } },
        "actions": { "Kill": { "actionId": "faultline:process:kill", "parameters": { "processName": victim_name }, "targets": { "Hosts": "Me" } } },
        "stopConditions": [{ "source": "faultline:alarm", "value": "Up" }],
        "alarms": { "Up": {
            "metric": { "http": { "url": url, "timeout": "PT1S", "probesPerPeriod": 1 }, "statistic": "errorRate" },
            "threshold": 0.5, "comparisonOperator": "GreaterThanThreshold", "period": "PT0.1S", "evaluationPeriods": 1
        } }
    });
    std::fs::write(dir.join("faultline.json"), template.to_string()).expect("template");
    let ctk = json!({
        "version": "1.0.0",
        "title": "probe the service, kill one local process",
        "description": "the same experiment as faultline.json",
        "steady-state-hypothesis": { "title": "the service answers", "probes": [
            { "type": "probe", "name": "up", "tolerance": 200, "provider": { "type": "http", "url": url, "timeout": 1 } }
        ] },
        "method": [
            { "type": "action", "name": "kill", "provider": { "type": "process", "path": "pkill", "arguments": format!("-KILL -x {victim_name}") } }
        ]
    });
    std::fs::write(dir.join("chaostoolkit.json"), ctk.to_string()).expect("ctk template");
    // The same runs through a long-running controller, its agent connected before them.
    let (server, api_token, _serve) = serve(bench, &dir, &victim_name);
    let (mut ours, mut served, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..bench.reps(3, 10) {
        let run = |cmd: &mut Command| -> f64 {
            let mut v = Kill(vec![Command::new(&victim).arg("1000").spawn().expect("victim")]);
            std::thread::sleep(Duration::from_millis(100));
            let t = Instant::now();
            let status = cmd
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("run");
            let took = t.elapsed().as_secs_f64() * 1000.0;
            assert!(status.success(), "{cmd:?} failed: {status}");
            let gone = v.0[0].try_wait().expect("wait").is_some();
            assert!(gone, "{cmd:?} did not kill the victim");
            v.0.clear();
            took
        };
        // A pause between runs, as between two experiments: the agent is then redialing.
        // No --wait-agents: as a user would run it, the run waits for the host its target
        // names, and for nobody else.
        std::thread::sleep(Duration::from_millis(1500));
        ours.push(run(Command::new(bench.bins.join("faultline"))
            .args([
                "run",
                "faultline.json",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--format",
                "json",
            ])
            .arg("--token-file")
            .arg(&bench.token_file)));
        served.push(run(Command::new(bench.bins.join("faultline"))
            .args(["run", "--server", &server, "faultline.json", "--format", "json"])
            .arg("--api-token-file")
            .arg(&api_token)));
        theirs.push(run(Command::new(&chaos).args([
            "--no-log-file",
            "run",
            "--no-verify-tls",
            "chaostoolkit.json",
        ])));
    }
    // The work itself (one probe, one kill) takes milliseconds: what each tool adds around
    // it is nearly all of its wall time, so the overhead ratio is the wall time ratio.
    // A standalone run's includes the wait for the agent's redial; the recovery's period
    // starts when the actions end, so its probe comes at once.
    let f = bench.row(
        "experiment wall time, faultline run",
        "ms",
        &ours,
        "includes the agent's redial (125-250 ms apart)",
    );
    let s = bench.row(
        "experiment wall time, faultline run --server (agents connected)",
        "ms",
        &served,
        "faultline serve, agent connected before the runs",
    );
    let c = bench.row(
        "experiment wall time, Chaos Toolkit",
        "ms",
        &theirs,
        "chaos run: probe, kill, probe",
    );
    let ratio = f.median / c.median;
    bench.row(
        "faultline / Chaos Toolkit wall time",
        "ratio",
        &[ratio],
        "medians, same run",
    );
    bench.target(
        "experiment-overhead",
        ratio <= 0.2,
        format!("{ratio:.2}x Chaos Toolkit's ({:.0} ms vs {:.0} ms)", f.median, c.median),
        "<= 0.2x",
    );
    let served_ratio = s.median / c.median;
    bench.target(
        "experiment-overhead-serve",
        served_ratio <= 0.2,
        format!(
            "{served_ratio:.2}x Chaos Toolkit's ({:.0} ms vs {:.0} ms)",
            s.median, c.median
        ),
        "<= 0.2x",
    );
}

/// `faultline serve` on a free port with an agent `local` connected to it (allowed to kill
/// `victim_name`); its URL, its API token file and its processes.
fn serve(bench: &Bench, dir: &std::path::Path, victim_name: &str) -> (String, std::path::PathBuf, Kill) {
    let port = free_port();
    let served = dir.join("serve");
    let api_token = served.join("api-token");
    let server = Command::new(bench.bins.join("faultline"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--database")
        .arg(format!("sqlite:{}", served.join("faultline.db").display()))
        .arg("--token-file")
        .arg(&bench.token_file)
        .arg("--api-token-file")
        .arg(&api_token)
        .arg("--journals")
        .arg(served.join("journals"))
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("faultline serve");
    let mut procs = Kill(vec![server]);
    procs
        .0
        .push(killing_agent(bench, port, &served.join("state"), victim_name));
    let url = format!("http://127.0.0.1:{port}");
    listening(format!("127.0.0.1:{port}").parse().expect("addr"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let agents = Command::new(bench.bins.join("faultline"))
            .args(["agents", "--server", &url, "--format", "json"])
            .arg("--api-token-file")
            .arg(&api_token)
            .stderr(Stdio::null())
            .output()
            .expect("faultline agents");
        if String::from_utf8_lossy(&agents.stdout).contains("\"local\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not connect to faultline serve"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (url, api_token, procs)
}

/// The overhead experiment's agent, host `local`, dialing the controller on `port`; it may
/// kill only `victim`.
fn killing_agent(bench: &Bench, port: u16, state: &std::path::Path, victim: &str) -> std::process::Child {
    Command::new(bench.bins.join("faultline-agent"))
        .args(["--controller", &format!("ws://127.0.0.1:{port}")])
        .args(["--host-id", "local", "--az", "az-a"])
        .arg("--token-file")
        .arg(&bench.token_file)
        .arg("--state-dir")
        .arg(state)
        .args(["--allow", "kill", "--kill-allow", victim])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent")
}

/// A tiny HTTP service that answers 200 while `healthy`, 503 once it is not.
pub(crate) fn http_service(healthy: Arc<AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("http");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let healthy = healthy.clone();
            let healthy = healthy.clone();
            std::thread::spawn(move || {
                let mut r = std::io::BufReader::new(s);
                loop {
                    let mut line = String::new();
                    // Reads one request's head, then answers; keeps the connection open.
                    loop {
                        line.clear();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let s = r.get_mut();
                    let answer: &[u8] = if healthy.load(Ordering::Relaxed) {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    } else {
                        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\ndown"
                    };
                    if s.write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}
