//! AZ blackout with real packets: network namespaces the test builds (a hub with a bridge,
//! one namespace per host), real agents inside them, connections probed from each side.
//!
//! Needs root (CAP_NET_ADMIN) and `ip` from iproute2 to build the namespaces; without them
//! the tests say so and skip, except under CI=true, where they must run.

use crate::common;

use common::netns::{in_netns, ip, privileged_for};
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const PROBE_PORT: u16 = 9000;

/// Namespaces and links of one test; deleted when dropped.
struct Topology {
    prefix: String,
    subnet: u8,
    hosts: Vec<(String, String, u8)>,
}

impl Topology {
    /// A hub namespace with a bridge at .254 and one namespace per host, all on one subnet.
    fn new(hosts: &[(&str, &str)]) -> Topology {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("fl{}x{n}", std::process::id() % 100_000);
        let subnet = 20 + ((std::process::id() * 7 + n * 31) % 200) as u8;
        let topo = Topology {
            prefix: prefix.clone(),
            subnet,
            hosts: hosts
                .iter()
                .enumerate()
                .map(|(i, (h, az))| (h.to_string(), az.to_string(), i as u8 + 1))
                .collect(),
        };
        let hub = topo.ns("hub");
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &hub,
            "addr",
            "add",
            &format!("{}/24", topo.hub_ip()),
            "dev",
            "br0",
        ]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        for (h, _, last) in &topo.hosts {
            let ns = topo.ns(h);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            let port = format!("v{last}");
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", topo.host_ip(*last)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        topo
    }

    /// How many hosts run an agent: a host of no AZ ("") is a peer outside every subnet.
    fn agents(&self) -> usize {
        self.hosts.iter().filter(|(_, az, _)| !az.is_empty()).count()
    }

    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn hub_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 254)
    }

    fn host_ip(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, last)
    }

    fn ip_of(&self, host: &str) -> Ipv4Addr {
        let last = self.hosts.iter().find(|(h, _, _)| h == host).unwrap().2;
        self.host_ip(last)
    }

    /// Runs `f` on a thread inside namespace `name`; sockets it creates live there.
    fn inside<R: Send + 'static>(&self, name: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
        in_netns(&self.ns(name), f)
    }

    /// A listener in each host that answers every connection with one byte.
    fn serve_probes(&self) {
        for (h, _, _) in &self.hosts {
            let l: TcpListener = self.inside(h, || TcpListener::bind(("0.0.0.0", PROBE_PORT)).unwrap());
            std::thread::spawn(move || {
                for c in l.incoming().flatten() {
                    let mut c = c;
                    let _ = c.write_all(b"k");
                }
            });
        }
    }

    /// Whether a TCP connection from namespace `from` to `to` gets its byte.
    fn reaches(&self, from: &str, to: Ipv4Addr) -> bool {
        self.inside(from, move || {
            let addr = SocketAddr::from((to, PROBE_PORT));
            let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_millis(700)) else {
                return false;
            };
            c.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
            let mut b = [0u8; 1];
            c.read_exact(&mut b).is_ok()
        })
    }

    /// nf_tables tables in a namespace, listed by the nft tool from outside the agent.
    fn tables(&self, name: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(name), "nft", "list", "tables"])
            .output()
            .expect("ip netns exec ... nft");
        assert!(
            out.status.success(),
            "nft list tables in {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn controller(&self, s: &Scratch, template: &std::path::Path) -> (Proc, u16) {
        self.controller_in(s, template, "hub", self.hub_ip())
    }

    /// `faultline run` in namespace `name`, listening on `ip`, waiting for every host.
    fn controller_in(&self, s: &Scratch, template: &std::path::Path, name: &str, ip: Ipv4Addr) -> (Proc, u16) {
        agent_bin();
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.ns(name),
            FAULTLINE,
            "run",
            "--format",
            "json",
            "--seed",
            "1",
        ])
        .args(["--listen", &format!("{ip}:0")])
        .arg("--token-file")
        .arg(s.path("token"))
        .arg("--journal")
        .arg(s.path("journal.jsonl"))
        .args(["--wait-agents", &self.agents().to_string()])
        .arg(template);
        let mut p = Proc::spawn("controller", cmd);
        let port = p.controller_port();
        (p, port)
    }

    fn agent(&self, s: &Scratch, port: u16, host: &str) -> Proc {
        self.agent_with(s, &format!("ws://{}:{port}", self.hub_ip()), host, &[])
    }

    /// An agent in `host`'s namespace dialing `controller`, with more flags.
    fn agent_with(&self, s: &Scratch, controller: &str, host: &str, extra: &[&str]) -> Proc {
        let (_, az, last) = self.hosts.iter().find(|(h, _, _)| h == host).unwrap().clone();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(host)])
            .arg(agent_bin())
            .args(["--controller", controller])
            .arg("--token-file")
            .arg(s.path("token"))
            .args([
                "--host-id",
                host,
                "--az",
                &az,
                "--address",
                &self.host_ip(last).to_string(),
                "--lease",
                "PT3S",
            ])
            .arg("--state-dir")
            .arg(s.path(&format!("state-{host}")))
            .args(extra);
        Proc::spawn(host, cmd)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for (h, _, _) in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(h)]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns("hub")]).status();
    }
}

fn blackout_template(s: &Scratch, seconds: u32, keep_control_plane: bool) -> std::path::PathBuf {
    s.write_json(
        "t.json",
        &json!({
            "description": "black out az-a",
            "targets": { "Z": { "resourceType": "faultline:az", "resourceIds": ["az-a"], "selectionMode": "ALL" } },
            "actions": { "A": {
                "actionId": "faultline:az:blackout",
                "parameters": { "duration": format!("PT{seconds}S"), "keepControlPlane": keep_control_plane.to_string() },
                "targets": { "AvailabilityZones": "Z" }
            } },
            "stopConditions": [{ "source": "none" }]
        }),
    )
}

const HOSTS: [(&str, &str); 3] = [("a1", "az-a"), ("a2", "az-a"), ("b1", "az-b")];

#[test]
fn blackout_cuts_the_az_off_and_keeps_the_control_plane() {
    if !privileged_for("blackout tests") {
        return;
    }
    let s = Scratch::new("blackout");
    let topo = Topology::new(&HOSTS);
    topo.serve_probes();
    let (a1, b1) = (topo.ip_of("a1"), topo.ip_of("b1"));
    // New links take a moment to pass traffic; wait for them rather than race them.
    eventually(
        "the topology connecting before the fault",
        Duration::from_secs(10),
        || topo.reaches("b1", a1) && topo.reaches("a1", b1),
    );

    let template = blackout_template(&s, 6, true);
    let (mut ctl, port) = topo.controller(&s, &template);
    let _agents: Vec<Proc> = HOSTS.iter().map(|(h, _)| topo.agent(&s, port, h)).collect();
    ctl.expect("action A running", T);
    assert!(!topo.reaches("b1", a1), "az-b reached az-a during the blackout");
    assert!(!topo.reaches("a1", b1), "az-a reached az-b during the blackout");
    assert!(
        topo.reaches("a2", a1),
        "hosts inside the AZ must still reach each other"
    );
    assert!(topo.reaches("hub", a1), "the control plane must stay reachable");
    assert!(
        topo.tables("a1").contains("inet fl_"),
        "no blackout table: {}",
        topo.tables("a1")
    );
    assert!(!topo.tables("b1").contains("fl_"));

    let (status, out, lines) = ctl.finish(T);
    let r = report(&out, &lines);
    assert_eq!(status.code(), Some(0), "{r}");
    assert_eq!(r["actions"]["A"]["hosts"], json!(["a1", "a2"]));
    assert!(
        topo.reaches("b1", a1),
        "az-a must be reachable again after the blackout"
    );
    assert!(!topo.tables("a1").contains("fl_"));
    let journal = journal(&s);
    assert!(
        !journal.iter().any(|e| e["event"] == "agent_disconnected"),
        "agents must stay connected"
    );
    // The probes from az-b that went unanswered were dropped, and counted, by the tables.
    let dropped: f64 = journal
        .iter()
        .filter_map(|e| e["observed"]["figures"].as_array())
        .flatten()
        .filter(|f| f["name"] == "packets_dropped")
        .filter_map(|f| f["observed"].as_f64())
        .sum();
    assert!(dropped > 0.0, "no dropped packet observed: {journal:?}");
}

#[test]
fn blackout_without_the_control_plane_ends_on_the_agents_own_clock() {
    if !privileged_for("blackout tests") {
        return;
    }
    let s = Scratch::new("blackout-cut");
    let topo = Topology::new(&HOSTS);
    topo.serve_probes();
    let a1 = topo.ip_of("a1");
    let template = blackout_template(&s, 5, false);
    let (mut ctl, port) = topo.controller(&s, &template);
    let _agents: Vec<Proc> = HOSTS.iter().map(|(h, _)| topo.agent(&s, port, h)).collect();
    ctl.expect("action A running", T);
    // The cut follows the acknowledgement, so that the acknowledgement gets out.
    eventually("the control plane cut", Duration::from_secs(3), || {
        !topo.reaches("hub", a1)
    });
    let (status, out, lines) = ctl.finish(T);
    let r = report(&out, &lines);
    assert_eq!(status.code(), Some(0), "{r}");
    assert!(topo.reaches("hub", a1) && topo.reaches("b1", a1));
    let removals: Vec<_> = journal(&s).into_iter().filter(|e| e["event"] == "removal").collect();
    assert_eq!(removals.len(), 2);
    assert!(removals.iter().all(|e| e["confirmed"] == true), "{removals:?}");
}

#[test]
fn a_blackout_survives_no_agent_crash() {
    if !privileged_for("blackout tests") {
        return;
    }
    let s = Scratch::new("blackout-crash");
    let topo = Topology::new(&HOSTS);
    topo.serve_probes();
    let (a1, b1) = (topo.ip_of("a1"), topo.ip_of("b1"));
    let template = blackout_template(&s, 60, true);
    let (mut ctl, port) = topo.controller(&s, &template);
    let mut agents: Vec<Proc> = HOSTS.iter().map(|(h, _)| topo.agent(&s, port, h)).collect();
    ctl.expect("action A running", T);

    // kill -9: the table outlives the process; the next start removes it before registering.
    agents[0].signal(libc::SIGKILL);
    assert!(
        topo.tables("a1").contains("fl_"),
        "the kernel keeps the table of a killed agent"
    );
    assert!(!topo.reaches("b1", a1));
    let mut again = topo.agent(&s, port, "a1");
    again.expect("removed a fault left by the previous run", T);
    assert!(!topo.tables("a1").contains("fl_"));
    assert!(topo.reaches("b1", a1));
    assert!(state_files(&s, "a1").is_empty());

    // SIGTERM: the agent removes its table before it exits.
    agents[1].signal(libc::SIGTERM);
    let a2 = agents.remove(1);
    assert_eq!(a2.finish(T).0.code(), Some(0));
    assert!(!topo.tables("a2").contains("fl_"));
    assert!(topo.reaches("b1", topo.ip_of("a2")) && topo.reaches("a1", b1));
    ctl.signal(libc::SIGINT);
    assert_eq!(ctl.finish(T).0.code(), Some(130));
}

#[test]
fn a_restart_removes_the_table_of_a_corrupt_record_and_any_stray_faultline_table() {
    if !privileged_for("blackout tests") {
        return;
    }
    let s = Scratch::new("blackout-corrupt");
    let topo = Topology::new(&HOSTS);
    topo.serve_probes();
    let a1 = topo.ip_of("a1");
    let template = blackout_template(&s, 60, true);
    let (mut ctl, port) = topo.controller(&s, &template);
    let mut agents: Vec<Proc> = HOSTS.iter().map(|(h, _)| topo.agent(&s, port, h)).collect();
    ctl.expect("action A running", T);

    let killed = agents.remove(0);
    killed.signal(libc::SIGKILL);
    assert_eq!(killed.finish(T).0.code(), None, "killed by SIGKILL");
    // A record cut short (a torn write, a full disk): only its file name is left to go by.
    let records = state_files(&s, "a1");
    assert_eq!(records.len(), 1, "{records:?}");
    std::fs::write(&records[0], b"{\"fault_id\": \"bla").unwrap();
    // And a table of faultline's that no record names at all (an empty one: harmless).
    let stray = Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.ns("a1"),
            "nft",
            "add",
            "table",
            "inet",
            "fl_00000000000000ab",
        ])
        .status()
        .unwrap();
    assert!(stray.success());
    let before = topo.tables("a1");
    assert_eq!(before.matches("inet fl_").count(), 2, "{before}");
    assert!(!topo.reaches("b1", a1), "the killed agent's blackout holds");

    let mut again = topo.agent(&s, port, "a1");
    again.expect("registered", T);
    let after = topo.tables("a1");
    assert!(!after.contains("fl_"), "the restart left {after}");
    assert!(topo.reaches("b1", a1), "a1 must be reachable after the restart");
    assert!(state_files(&s, "a1").is_empty());
    ctl.signal(libc::SIGINT);
    assert_eq!(ctl.finish(T).0.code(), Some(130));
}

/// A blackout of an hour that cuts a1's control plane, on an agent with `--max-cut PT3S`;
/// returns once the cut is in place (the controller and the agent).
fn an_hour_long_cut_with_a_max_cut_of_3s(s: &Scratch, topo: &Topology) -> (Proc, Proc) {
    topo.serve_probes();
    let template = blackout_template(s, 3600, false);
    let (mut ctl, port) = topo.controller(s, &template);
    let url = format!("ws://{}:{port}", topo.hub_ip());
    let mut agent = topo.agent_with(s, &url, "a1", &["--max-cut", "PT3S"]);
    ctl.expect("action A running", T);
    agent.expect("the blackout ends at --max-cut", T);
    assert!(!topo.reaches("hub", topo.ip_of("a1")), "the control plane is cut");
    (ctl, agent)
}

#[test]
fn a_cut_control_plane_ends_at_max_cut_whatever_the_duration() {
    if !privileged_for("blackout tests") {
        return;
    }
    let s = Scratch::new("blackout-max-cut");
    let topo = Topology::new(&HOSTS[..1]);
    let (ctl, mut agent) = an_hour_long_cut_with_a_max_cut_of_3s(&s, &topo);
    let a1 = topo.ip_of("a1");
    agent.expect("fault ended", Duration::from_secs(6));
    assert!(topo.reaches("hub", a1), "--max-cut must end the blackout");
    assert!(!topo.tables("a1").contains("fl_"));
    ctl.signal(libc::SIGINT);
    ctl.finish(T);
}

#[test]
fn a_cut_control_plane_ends_at_max_cut_even_with_no_agent_left() {
    if !privileged_for("blackout tests") {
        return;
    }
    let s = Scratch::new("blackout-max-cut-orphan");
    let topo = Topology::new(&HOSTS[..1]);
    let (ctl, agent) = an_hour_long_cut_with_a_max_cut_of_3s(&s, &topo);
    let cut_at = std::time::Instant::now();
    let a1 = topo.ip_of("a1");
    // Nobody is left to remove the cut: the kernel must end it at --max-cut, not in an hour.
    agent.signal(libc::SIGKILL);
    eventually("the kernel ending the cut at --max-cut", Duration::from_secs(6), || {
        topo.reaches("hub", a1)
    });
    assert!(
        cut_at.elapsed() >= Duration::from_secs(2),
        "the cut held until --max-cut"
    );
    ctl.signal(libc::SIGINT);
    ctl.finish(T);
}

#[test]
fn an_nftables_blackout_is_refused_when_the_controller_is_on_the_same_host() {
    if !privileged_for("blackout tests") {
        return;
    }
    let s = Scratch::new("blackout-local");
    let topo = Topology::new(&HOSTS[..1]);
    let template = blackout_template(&s, 5, true);
    // The controller runs in a1's own namespace, on a1's address.
    let (ctl, port) = topo.controller_in(&s, &template, "a1", topo.ip_of("a1"));
    let url = format!("ws://{}:{port}", topo.ip_of("a1"));
    let _agent = topo.agent_with(&s, &url, "a1", &[]);
    let (status, out, lines) = ctl.finish(T);
    let r = report(&out, &lines);
    assert_eq!(status.code(), Some(3), "{r}");
    let error = r["actions"]["A"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("--blackout-backend proxy"), "{r}");
    assert!(!topo.tables("a1").contains("fl_"));
}

#[test]
fn starting_an_agent_installs_no_rule_to_probe_nf_tables() {
    if !privileged_for("blackout tests") {
        return;
    }
    use std::io::BufRead;
    let s = Scratch::new("blackout-probe");
    let topo = Topology::new(&HOSTS[..1]);
    let ns = topo.ns("a1");
    let mut monitor = Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "monitor"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = monitor.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let nft = |args: &[&str]| {
        let ok = Command::new("ip")
            .args(["netns", "exec", &ns, "nft"])
            .args(args)
            .status()
            .unwrap();
        assert!(ok.success(), "nft {args:?}");
    };
    let mut seen = Vec::new();
    // The monitor listens once it reports a table made after it started.
    let deadline = std::time::Instant::now() + T;
    while !seen.iter().any(|l: &String| l.contains("monitor_ready")) {
        assert!(
            std::time::Instant::now() < deadline,
            "nft monitor never reported: {seen:?}"
        );
        nft(&["add", "table", "inet", "monitor_ready"]);
        nft(&["delete", "table", "inet", "monitor_ready"]);
        seen.extend(rx.recv_timeout(Duration::from_millis(500)));
        seen.extend(rx.try_iter());
    }

    let template = blackout_template(&s, 5, true);
    let (ctl, port) = topo.controller(&s, &template);
    let mut agent = topo.agent(&s, port, "a1");
    agent.expect("registered", T);
    while !seen.iter().any(|l| l.contains("delete table inet faultline_probe")) {
        match rx.recv_timeout(T) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("the agent's probe never showed: {seen:?}"),
        }
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    let probe: Vec<&String> = seen.iter().filter(|l| !l.contains("monitor_ready")).collect();
    assert!(
        probe
            .iter()
            .all(|l| !l.contains("chain") && !l.contains("rule") && !l.contains("drop")),
        "the probe touched more than an empty table: {probe:?}"
    );
    drop(ctl);
}

#[test]
fn a_blackout_ends_at_its_deadline_with_no_agent_left() {
    if !privileged_for("blackout tests") {
        return;
    }
    let s = Scratch::new("blackout-orphan");
    let hosts = [("a1", "az-a"), ("b1", "az-b")];
    let topo = Topology::new(&hosts);
    topo.serve_probes();
    let a1 = topo.ip_of("a1");
    let template = blackout_template(&s, 5, true);
    let (mut ctl, port) = topo.controller(&s, &template);
    let agents: Vec<Proc> = hosts.iter().map(|(h, _)| topo.agent(&s, port, h)).collect();
    ctl.expect("action A running", T);
    // The apply landed before the controller said "running": the deadline is at most 5 s away.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);

    // kill -9, and no restart: nobody is left to delete the table.
    agents[0].signal(libc::SIGKILL);
    assert!(!topo.reaches("b1", a1), "the blackout holds while its time runs");
    // The property under test is the clock: a probe right after the deadline must pass.
    std::thread::sleep(deadline.saturating_duration_since(std::time::Instant::now()) + Duration::from_millis(300));
    assert!(
        topo.reaches("b1", a1),
        "az-a is still cut off 0.3 s after the blackout's deadline, with no agent left:\n{}",
        topo.tables("a1")
    );
    assert!(
        topo.tables("a1").contains("fl_"),
        "the table is still there (no agent removed it), yet it lets everything through"
    );
    drop(agents);
    ctl.signal(libc::SIGINT);
    let _ = ctl.finish(T);
}

/// `aws:network:disrupt-connectivity` scope `availability-zone` on az-a's subnet, for `seconds`.
fn subnet_template(s: &Scratch, seconds: u32) -> std::path::PathBuf {
    s.write_json(
        "subnet.json",
        &json!({
            "description": "cut az-a's subnet off from the other AZs",
            "targets": { "S": {
                "resourceType": "aws:ec2:subnet",
                "parameters": { "availabilityZoneIdentifier": "az-a" },
                "selectionMode": "ALL"
            } },
            "actions": { "A": {
                "actionId": "aws:network:disrupt-connectivity",
                "parameters": { "duration": format!("PT{seconds}S"), "scope": "availability-zone" },
                "targets": { "Subnets": "S" }
            } },
            "stopConditions": [{ "source": "none" }]
        }),
    )
}

const THREE_AZS: [(&str, &str); 4] = [("a1", "az-a"), ("a2", "az-a"), ("b1", "az-b"), ("c1", "az-c")];
/// The hosts of three AZs and a peer outside them all (no agent), as a load balancer is.
const THREE_AZS_AND_LB: [(&str, &str); 5] = [
    ("a1", "az-a"),
    ("a2", "az-a"),
    ("b1", "az-b"),
    ("c1", "az-c"),
    ("lb", ""),
];

#[test]
fn an_availability_zone_scope_cuts_only_the_other_azs() {
    if !privileged_for("blackout tests") {
        return;
    }
    let s = Scratch::new("subnet-az");
    let topo = Topology::new(&THREE_AZS_AND_LB);
    topo.serve_probes();
    let (a1, a2, b1, c1) = (topo.ip_of("a1"), topo.ip_of("a2"), topo.ip_of("b1"), topo.ip_of("c1"));
    eventually(
        "the topology connecting before the fault",
        Duration::from_secs(10),
        || topo.reaches("b1", a1) && topo.reaches("a1", c1),
    );

    let template = subnet_template(&s, 6);
    let (mut ctl, port) = topo.controller(&s, &template);
    let _agents: Vec<Proc> = THREE_AZS.iter().map(|(h, _)| topo.agent(&s, port, h)).collect();
    ctl.expect("action A running", T);
    for (from, to, what) in [
        ("b1", a1, "az-b reached az-a"),
        ("a1", b1, "az-a reached az-b"),
        ("c1", a2, "az-c reached az-a"),
        ("a2", c1, "az-a reached az-c"),
    ] {
        assert!(!topo.reaches(from, to), "{what} during the disruption");
    }
    assert!(
        topo.reaches("a2", a1),
        "hosts inside the AZ must still reach each other"
    );
    assert!(topo.reaches("hub", a1), "the controller must still reach az-a");
    assert!(
        topo.reaches("lb", a1) && topo.reaches("a2", topo.ip_of("lb")),
        "a peer outside every subnet must still reach az-a both ways"
    );
    assert!(topo.reaches("b1", c1), "the other AZs still reach each other");
    assert!(topo.tables("a2").contains("inet fl_"), "{}", topo.tables("a2"));
    assert!(!topo.tables("b1").contains("fl_"));

    let (status, out, lines) = ctl.finish(T);
    let r = report(&out, &lines);
    assert_eq!(status.code(), Some(0), "{r}");
    assert_eq!(r["actions"]["A"]["hosts"], json!(["a1", "a2"]));
    assert!(
        topo.reaches("b1", a1) && topo.reaches("a2", c1),
        "az-a must be reachable again"
    );
    assert!(!topo.tables("a1").contains("fl_") && !topo.tables("a2").contains("fl_"));
    assert!(
        !journal(&s).iter().any(|e| e["event"] == "agent_disconnected"),
        "agents must stay connected"
    );
}

#[test]
fn an_availability_zone_scope_is_removed_by_the_restart_after_a_kill() {
    if !privileged_for("blackout tests") {
        return;
    }
    let s = Scratch::new("subnet-az-crash");
    let topo = Topology::new(&THREE_AZS);
    topo.serve_probes();
    let (a1, b1) = (topo.ip_of("a1"), topo.ip_of("b1"));
    let template = subnet_template(&s, 60);
    let (mut ctl, port) = topo.controller(&s, &template);
    let mut agents: Vec<Proc> = THREE_AZS.iter().map(|(h, _)| topo.agent(&s, port, h)).collect();
    ctl.expect("action A running", T);

    agents.remove(0).signal(libc::SIGKILL);
    assert!(
        topo.tables("a1").contains("fl_"),
        "the kernel keeps the table of a killed agent"
    );
    assert!(!topo.reaches("b1", a1) && topo.reaches("hub", a1));
    let mut again = topo.agent(&s, port, "a1");
    again.expect("removed a fault left by the previous run", T);
    assert!(!topo.tables("a1").contains("fl_"), "{}", topo.tables("a1"));
    assert!(topo.reaches("b1", a1) && topo.reaches("a1", b1));
    assert!(state_files(&s, "a1").is_empty());
    ctl.signal(libc::SIGINT);
    assert_eq!(ctl.finish(T).0.code(), Some(130));
    assert!(
        !topo.tables("a2").contains("fl_"),
        "a stopped experiment removes the rest"
    );
}
