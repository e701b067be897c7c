//! A torture run of faultline itself: seeded trials, each a fault and a failure at a random
//! moment, and the host inspected from outside afterwards. Prints its figures.
//!
//!     cargo bench --bench torture                       # 200 trials, seed 1 (needs root)
//!     FAULTLINE_TORTURE_TRIALS=20 FAULTLINE_TORTURE_SEED=7 cargo bench --bench torture
//!
//! The agent runs in a network namespace the harness makes, in front of a demo service and
//! beside a process it may pause; it dials the controller through a TCP relay in the harness,
//! which can cut the control connection and restore it. Each trial picks a fault (CPU, memory,
//! latency, pause, and through nf_tables a blackout, a port blackhole and a packet loss) and a
//! failure at a random moment of the fault's life, then waits until the host is clean: no
//! `fl_*` table in the namespace, no stopped process, no holder process and the agent's CPU
//! idle, its memory back, the proxy answering without delay and reachable, the state dir
//! empty. A trial not clean within its budget is a leak, printed with what was left.
//!
//! Every fault lasts two minutes, far longer than the agent's one-second lease, so that only
//! the path under test can have removed it within the budget. The failures: controller kill
//! -9 (the lease must end the fault), agent kill -9 then restart (recovery), agent SIGTERM
//! or SIGHUP then restart (shutdown), the control connection cut for longer than the lease
//! (the lease again); and, with no agent left at all, agent kill -9 and a kill -9 of the
//! agent's whole process group, never restarted until the host has been inspected from
//! outside at two leases: the service answers (directly and through twenty connections in a
//! row, none waiting for a retransmitted SYN: no packet dropped), no process is stopped, no
//! holder burns CPU or holds memory. The agent then starts again to clear what is inert (a
//! lapsed table, a record). It prints `trials: N, clean: N, leaked: N` and the slowest
//! clean-up, also in leases.

use rand::{Rng, SeedableRng};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a trial may take to come clean after its failure before it counts as a leak:
/// well within the two-minute faults, well beyond the one-second lease.
const CLEAN_BUDGET: Duration = Duration::from_secs(10);
/// The fault's duration: something else than its end must remove it.
const LONG_FAULT: Duration = Duration::from_secs(120);
/// The agent's lease (`--lease PT1S`): an effect outlives a dead agent by two at most.
const LEASE: Duration = Duration::from_secs(1);
/// When the failure strikes: within this long after the fault is in effect.
const STRIKE_WITHIN: Duration = Duration::from_millis(2500);
const PROXY_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 8081;
const DELAY_MS: u64 = 400;

fn bins() -> PathBuf {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "--release", "--bins"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "cannot build the binaries");
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release")
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip from iproute2");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The agent's host: a namespace joined to this one by a veth pair.
struct Host {
    ns: String,
    outside: Ipv4Addr,
    inside: Ipv4Addr,
}

impl Host {
    fn new() -> Host {
        let id = std::process::id() % 100_000;
        let subnet = 20 + (id % 200) as u8;
        let host = Host {
            ns: format!("fltort{id}"),
            outside: Ipv4Addr::new(10, 214, subnet, 254),
            inside: Ipv4Addr::new(10, 214, subnet, 1),
        };
        let veth = format!("fltv{id}");
        ip(&["netns", "add", &host.ns]);
        ip(&["-n", &host.ns, "link", "set", "lo", "up"]);
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &host.ns,
        ]);
        ip(&["addr", "add", &format!("{}/24", host.outside), "dev", &veth]);
        ip(&["link", "set", &veth, "up"]);
        ip(&[
            "-n",
            &host.ns,
            "addr",
            "add",
            &format!("{}/24", host.inside),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &host.ns, "link", "set", "eth0", "up"]);
        host
    }

    fn exec(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// The `fl_*` tables in the namespace; an error when `nft` cannot tell.
    fn tables(&self) -> Result<Vec<String>, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "nft", "list", "tables"])
            .output()
            .map_err(|e| format!("nft: {e}"))?;
        if !out.status.success() {
            return Err(format!("nft list tables: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(" fl_"))
            .map(str::to_string)
            .collect())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// The control connection's relay: forwards to the current controller, and can be cut.
struct Relay {
    addr: SocketAddr,
    upstream: Arc<AtomicU16>,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(on: Ipv4Addr) -> Relay {
        let listener = TcpListener::bind((on, 0)).unwrap();
        let relay = Relay {
            addr: listener.local_addr().unwrap(),
            upstream: Arc::new(AtomicU16::new(0)),
            cut: Arc::new(AtomicBool::new(false)),
            open: Arc::default(),
        };
        let (upstream, cut, open) = (relay.upstream.clone(), relay.cut.clone(), relay.open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let port = upstream.load(Ordering::SeqCst);
                if cut.load(Ordering::SeqCst) || port == 0 {
                    continue; // dropped: the agent sees the connection fail
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                let mut open = open.lock().unwrap();
                open.push(client.try_clone().unwrap());
                open.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        relay
    }

    fn point_at(&self, port: u16) {
        self.upstream.store(port, Ordering::SeqCst);
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// A child process killed when dropped.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child this harness started.
        unsafe { libc::kill(self.0.id() as i32, sig) };
    }

    fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.0.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn quiet(mut c: Command) -> Proc {
    Proc(
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Cpu,
    Memory,
    Latency,
    Blackout,
    BlackholePort,
    PacketLoss,
    Pause,
}

impl Kind {
    /// Whether nf_tables enforces it (its end without an agent is its dead-man switch).
    fn nftables(self) -> bool {
        matches!(self, Kind::Blackout | Kind::BlackholePort | Kind::PacketLoss)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    ControllerKill,
    AgentKillRestart,
    AgentTerm,
    AgentHup,
    ConnectionCut,
    AgentKillForGood,
    GroupKillForGood,
}

const KINDS: [Kind; 7] = [
    Kind::Cpu,
    Kind::Memory,
    Kind::Latency,
    Kind::Blackout,
    Kind::BlackholePort,
    Kind::PacketLoss,
    Kind::Pause,
];
const FAILURES: [Failure; 7] = [
    Failure::ControllerKill,
    Failure::AgentKillRestart,
    Failure::AgentTerm,
    Failure::AgentHup,
    Failure::ConnectionCut,
    Failure::AgentKillForGood,
    Failure::GroupKillForGood,
];

fn template(kind: Kind, fault: Duration, pause_target: &str) -> serde_json::Value {
    let duration = format!("PT{}S", fault.as_secs());
    let host_action = |id: &str, params: serde_json::Value| {
        json!({
            "description": format!("torture {id}"),
            "targets": { "H": { "resourceType": "faultline:host", "resourceIds": ["web-a1"], "selectionMode": "ALL" } },
            "actions": { "A": { "actionId": id, "parameters": params, "targets": { "Hosts": "H" } } },
            "stopConditions": [{ "source": "none" }]
        })
    };
    match kind {
        Kind::Cpu => host_action(
            "faultline:host:cpu-stress",
            json!({ "duration": duration, "loadPercent": "60", "workers": "1" }),
        ),
        Kind::Memory => host_action(
            "faultline:host:memory-stress",
            json!({ "duration": duration, "sizeMiB": "96" }),
        ),
        Kind::Latency => host_action(
            "faultline:network:latency",
            json!({ "duration": duration, "delayMilliseconds": DELAY_MS.to_string() }),
        ),
        Kind::BlackholePort => host_action(
            "faultline:network:blackhole-port",
            json!({ "duration": duration, "protocol": "tcp", "port": SERVICE_PORT.to_string(), "trafficType": "ingress" }),
        ),
        Kind::PacketLoss => host_action(
            "faultline:network:packet-loss",
            json!({ "duration": duration, "lossPercent": "100" }),
        ),
        Kind::Pause => host_action(
            "faultline:process:pause",
            json!({ "duration": duration, "processName": pause_target }),
        ),
        Kind::Blackout => json!({
            "description": "torture blackout",
            "targets": { "Z": { "resourceType": "faultline:az", "resourceIds": ["az-a"], "selectionMode": "ALL" } },
            "actions": { "A": {
                "actionId": "faultline:az:blackout",
                "parameters": { "duration": duration, "keepControlPlane": "true" },
                "targets": { "AvailabilityZones": "Z" }
            } },
            "stopConditions": [{ "source": "none" }]
        }),
    }
}

/// CPU seconds of a process (user + system).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields[11].parse::<f64>().ok()? + fields[12].parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    Some(ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
}

fn rss_mib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kb| kb / 1024)
}

fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Pids of holder processes run from `agent_bin` (`faultline-holder hold …`), wherever they are.
fn holders(agent_bin: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            exe.as_deref() == Some(agent_bin) && argv.split(|b| *b == 0).nth(1) == Some(b"hold".as_slice())
        })
        .collect()
}

/// One round trip through the agent's proxy from outside the namespace.
fn proxy_round_trip(host: &Host) -> Result<Duration, String> {
    let start = Instant::now();
    let mut c = TcpStream::connect_timeout(&SocketAddr::from((host.inside, PROXY_PORT)), Duration::from_secs(2))
        .map_err(|e| format!("proxy unreachable: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).map_err(|e| format!("proxy read: {e}"))?;
    if !buf.starts_with(b"HTTP/1.") {
        return Err("no HTTP answer through the proxy".into());
    }
    Ok(start.elapsed())
}

/// Whether the demo service answers from outside the namespace, not through the proxy, with
/// no packet dropped: twenty connections in a row, each within 500 ms (a dropped SYN is sent
/// again only after a second). An nf_tables fault whose agent is gone must not stop that.
fn service_reachable(host: &Host) -> bool {
    (0..20).all(|_| {
        TcpStream::connect_timeout(
            &SocketAddr::from((host.inside, SERVICE_PORT)),
            Duration::from_millis(500),
        )
        .is_ok()
    })
}

/// The effects left once the agent is gone for good; empty when they all ended on their own.
fn effects_left(host: &Host, agent_bin: &Path, pause_target: &Proc) -> Vec<String> {
    let mut left = Vec::new();
    if process_state(pause_target.pid()) != Some('S') {
        left.push(format!("pause target in state {:?}", process_state(pause_target.pid())));
    }
    let h = holders(agent_bin);
    if !h.is_empty() {
        let cpu: f64 = h.iter().filter_map(|p| cpu_seconds(*p)).sum();
        let mib: u64 = h.iter().filter_map(|p| rss_mib(*p)).sum();
        left.push(format!("holder processes {h:?} ({cpu:.1} CPU s, {mib} MiB resident)"));
    }
    if !service_reachable(host) {
        left.push("the service does not answer every connection (an nf_tables fault outlived its agent)".into());
    }
    left
}

/// Waits, with no agent left, until the effects are gone or two leases have passed since
/// `died`: how long they took, or what was left at two leases.
fn ends_within_two_leases(
    host: &Host,
    agent_bin: &Path,
    pause_target: &Proc,
    died: Instant,
) -> Result<Duration, Vec<String>> {
    loop {
        // A probe that succeeds saw the host clean when it started.
        let at = died.elapsed();
        let left = effects_left(host, agent_bin, pause_target);
        if left.is_empty() {
            return Ok(at);
        }
        if died.elapsed() >= 2 * LEASE {
            return Err(left);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What is left on the host; empty when it is clean.
fn leftovers(host: &Host, agent: &Proc, agent_bin: &Path, state: &Path, pause_target: &Proc) -> Vec<String> {
    let mut left = Vec::new();
    match host.tables() {
        Ok(t) if t.is_empty() => {}
        Ok(t) => left.push(format!("nf_tables: {}", t.join(", "))),
        Err(e) => left.push(e),
    }
    if process_state(pause_target.pid()) != Some('S') {
        left.push(format!("pause target in state {:?}", process_state(pause_target.pid())));
    }
    let h = holders(agent_bin);
    if !h.is_empty() {
        left.push(format!("holder processes {h:?}"));
    }
    match std::fs::read_dir(state.join("faults")) {
        Ok(d) => {
            let files: Vec<String> = d
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if !files.is_empty() {
                left.push(format!("state files {files:?}"));
            }
        }
        Err(e) => left.push(format!("state dir {}: {e}", state.display())),
    }
    match rss_mib(agent.pid()) {
        Some(m) if m > 48 => left.push(format!("agent RSS {m} MiB")),
        Some(_) => {}
        None => left.push("the agent is not running".into()),
    }
    match proxy_round_trip(host) {
        Ok(d) if d >= Duration::from_millis(DELAY_MS / 2) => left.push(format!("proxy round trip {d:?}")),
        Ok(_) => {}
        Err(e) => left.push(e),
    }
    left
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists; nothing to list here
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: the torture run needs root (network namespaces, nf_tables)");
        return;
    }
    let trials: usize = std::env::var("FAULTLINE_TORTURE_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("FAULTLINE_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let bin_dir = bins();
    let (faultline, agent_bin, web_bin) = (
        bin_dir.join("faultline"),
        bin_dir.join("faultline-agent"),
        bin_dir.join("demo-web"),
    );
    let dir = std::env::temp_dir().join(format!("faultline-torture-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), "torture-token\n").unwrap();
    let state = dir.join("state");

    let host = Host::new();
    let relay = Relay::start(host.outside);
    let mut web = host.exec(&web_bin);
    web.args(["--listen", &format!("0.0.0.0:{SERVICE_PORT}"), "--name", "web-a1"]);
    let _web = quiet(web);
    let pause_name = format!("fl-torture-{}", std::process::id());
    let mut target = Command::new("sleep");
    std::os::unix::process::CommandExt::arg0(&mut target, &pause_name);
    target.arg("100000");
    let pause_target = quiet(target);

    let start_agent = || {
        let mut c = host.exec(&agent_bin);
        // A process group of its own (`ip netns exec` execs the agent): what a group kill
        // takes is the agent and what it started, never this harness.
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        c.args(["--controller", &format!("ws://{}", relay.addr)])
            .arg("--token-file")
            .arg(dir.join("token"))
            .args(["--host-id", "web-a1", "--az", "az-a", "--lease", "PT1S"])
            .args(["--address", &host.inside.to_string()])
            .args(["--proxy", &format!("0.0.0.0:{PROXY_PORT}=127.0.0.1:{SERVICE_PORT}")])
            .args(["--blackout-backend", "nftables"])
            .arg("--state-dir")
            .arg(&state);
        quiet(c)
    };
    let mut agent = start_agent();

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut clean, mut leaked) = (0usize, 0usize);
    let mut slowest: Option<(Duration, usize, Kind, Failure)> = None;
    // The slowest end of an effect with no agent left, in leases.
    let mut slowest_alone: Option<(Duration, usize, Kind, Failure)> = None;
    // Trials inspected with no agent left: all of them, and those of an nf_tables fault.
    let (mut alone, mut alone_nft) = (0usize, 0usize);
    let mut total = Duration::ZERO;
    println!("torture: {trials} trials, seed {seed}, faults of {LONG_FAULT:?}, agent lease {LEASE:?}");
    for trial in 1..=trials {
        let kind = KINDS[rng.random_range(0..KINDS.len())];
        let failure = FAILURES[rng.random_range(0..FAILURES.len())];
        let at = Duration::from_millis(rng.random_range(100..STRIKE_WITHIN.as_millis() as u64));
        let fault = LONG_FAULT;
        let t_path = dir.join("t.json");
        std::fs::write(&t_path, template(kind, fault, &pause_name).to_string()).unwrap();

        let mut c = Command::new(&faultline);
        c.args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--wait-agents",
            "1",
            "--agents-timeout",
            "PT15S",
        ])
        .args(["--format", "json", "--seed", &trial.to_string()])
        // The agent dials the relay, which forwards to the controller: the handshake refuses
        // that unless the controller knows the relay's address for its own.
        .args(["--advertise", &relay.addr.to_string()])
        .arg("--token-file")
        .arg(dir.join("token"))
        .arg("--journal")
        .arg(dir.join(format!("journal-{trial}.jsonl")))
        .arg(&t_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut ctl = Proc(c.spawn().unwrap());
        let mut lines = std::io::BufReader::new(ctl.0.stderr.take().unwrap());
        let mut running = false;
        let mut line = String::new();
        let mut said = Vec::new();
        while std::io::BufRead::read_line(&mut lines, &mut line).unwrap_or(0) > 0 {
            said.push(line.trim_end().to_string());
            if let Some(port) = line
                .split("listening on ws://")
                .nth(1)
                .and_then(|r| r.split('/').next())
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.trim().parse::<u16>().ok())
            {
                relay.point_at(port);
            }
            if line.contains("action A running") {
                running = true;
                break;
            }
            line.clear();
        }
        std::thread::spawn(move || {
            let mut sink = String::new();
            while std::io::BufRead::read_line(&mut lines, &mut sink).unwrap_or(0) > 0 {
                sink.clear();
            }
        });
        if !running {
            println!(
                "trial {trial}: {kind:?}: the action never ran; the controller said:\n{}",
                said.join("\n")
            );
            leaked += 1;
            continue;
        }
        std::thread::sleep(at);
        let failed_at = Instant::now();
        let mut left_without_agent = Vec::new();
        match failure {
            Failure::ControllerKill => ctl.signal(libc::SIGKILL),
            Failure::AgentKillRestart => {
                agent.signal(libc::SIGKILL);
                agent.wait_exit(Duration::from_secs(5));
                std::thread::sleep(Duration::from_millis(rng.random_range(0..1000)));
                agent = start_agent();
            }
            Failure::AgentTerm | Failure::AgentHup => {
                let (sig, name) = if failure == Failure::AgentTerm {
                    (libc::SIGTERM, "SIGTERM")
                } else {
                    (libc::SIGHUP, "SIGHUP")
                };
                agent.signal(sig);
                if !agent.wait_exit(Duration::from_secs(10)) {
                    println!("trial {trial}: the agent did not exit within 10 s of {name}");
                }
                // It removed its faults before it exited: nothing may be left now.
                let left = effects_left(&host, &agent_bin, &pause_target);
                if !left.is_empty() {
                    left_without_agent = left;
                }
                agent = start_agent();
            }
            Failure::ConnectionCut => {
                // Longer than the lease: the agent must end the fault on its own.
                relay.cut();
                std::thread::sleep(Duration::from_millis(rng.random_range(1500..3000)));
                relay.restore();
            }
            Failure::AgentKillForGood | Failure::GroupKillForGood => {
                if failure == Failure::AgentKillForGood {
                    agent.signal(libc::SIGKILL);
                } else {
                    // SAFETY: kill(2) of the process group the harness made for its agent.
                    unsafe { libc::kill(-(agent.pid() as i32), libc::SIGKILL) };
                }
                let died = Instant::now();
                agent.wait_exit(Duration::from_secs(5));
                alone += 1;
                alone_nft += usize::from(kind.nftables());
                // No agent, a fault of two minutes: only the effect's own end, within two
                // leases (holders at once, nf_tables by its dead-man switch).
                match ends_within_two_leases(&host, &agent_bin, &pause_target, died) {
                    Ok(took) => {
                        if slowest_alone.is_none_or(|(s, ..)| took > s) {
                            slowest_alone = Some((took, trial, kind, failure));
                        }
                    }
                    Err(left) => left_without_agent = left,
                }
                agent = start_agent();
            }
        }
        let deadline = failed_at + CLEAN_BUDGET;
        let took = loop {
            let left = leftovers(&host, &agent, &agent_bin, &state, &pause_target);
            let busy = cpu_seconds(agent.pid()).and_then(|c0| {
                std::thread::sleep(Duration::from_millis(200));
                cpu_seconds(agent.pid()).map(|c1| (c1 - c0) / 0.2)
            });
            let idle = busy.is_some_and(|b| b < 0.15);
            if left.is_empty() && idle {
                break Ok(failed_at.elapsed());
            }
            if Instant::now() >= deadline {
                let mut what = left;
                if !idle {
                    what.push(format!("agent CPU {busy:?}"));
                }
                break Err(what);
            }
        };
        let took = match took {
            Ok(_) if !left_without_agent.is_empty() => Err(vec![format!(
                "without its agent, {} after its end: {}",
                if kind.nftables() {
                    "two leases"
                } else {
                    "at once or two leases"
                },
                left_without_agent.join("; ")
            )]),
            other => other,
        };
        match took {
            Ok(d) => {
                clean += 1;
                total += d;
                if slowest.is_none_or(|(s, ..)| d > s) {
                    slowest = Some((d, trial, kind, failure));
                }
            }
            Err(what) => {
                leaked += 1;
                println!(
                    "trial {trial}: {kind:?} + {failure:?} at {at:?}: LEAKED {}",
                    what.join("; ")
                );
            }
        }
        ctl.signal(libc::SIGTERM);
        ctl.wait_exit(Duration::from_secs(20));
        if trial % 20 == 0 {
            println!("  {trial} trials: {clean} clean, {leaked} leaked");
        }
    }
    println!("trials: {trials}, clean: {clean}, leaked: {leaked}");
    if let Some((d, trial, kind, failure)) = slowest {
        println!(
            "slowest clean-up: {:.0} ms = {:.2} leases (trial {trial}: {kind:?} + {failure:?}); mean {:.0} ms",
            d.as_secs_f64() * 1000.0,
            d.as_secs_f64() / LEASE.as_secs_f64(),
            total.as_secs_f64() * 1000.0 / clean.max(1) as f64
        );
    }
    if let Some((d, trial, kind, failure)) = slowest_alone {
        println!(
            "with no agent left ({alone} trials, {alone_nft} of them nf_tables faults): slowest end of an effect \
             {:.2} leases (trial {trial}: {kind:?} + {failure:?}); bound 2 leases",
            d.as_secs_f64() / LEASE.as_secs_f64()
        );
    }
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(leaked, 0, "faults were left behind");
}
