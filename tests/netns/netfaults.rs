//! Network faults with real packets: two network namespaces joined by a veth pair, a
//! controller, an agent and the services in one ("srv"), the probes in the other ("cli").
//! The port blackhole and the packet loss are seen from the client's side; the latency's
//! sources through the agent's proxy on loopback (127.0.0.x are distinct peers).
//!
//! The nf_tables tests need root (CAP_NET_ADMIN) and iproute2's `ip`; without them they say
//! so and skip, except under CI=true, where they must run.
//!
//! The agents here run with `--lease PT3S`: an nf_tables fault whose agent is SIGKILLed and
//! never restarted must end within two leases (its dead-man switch), however long it was
//! asked to last.

use crate::common;

use common::netns::*;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);
/// The lease of the agents `Pair::agent` starts.
const LEASE: Duration = Duration::from_secs(3);

fn blackhole(s: &Scratch, seconds: u32) -> std::path::PathBuf {
    s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:network:blackhole-port",
            json!({ "duration": format!("PT{seconds}S"), "protocol": "tcp", "port": PORT.to_string(), "trafficType": "ingress" }),
        ),
    )
}

#[test]
fn a_blackholed_port_stops_answering_and_answers_again_after() {
    if !privileged() {
        return;
    }
    let s = Scratch::new("blackhole");
    let pair = Pair::new();
    pair.serve();
    eventually("the port answering before the fault", Duration::from_secs(10), || {
        pair.answers()
    });
    let (mut ctl, port) = pair.controller(&s, &blackhole(&s, 5));
    let mut agent = pair.agent(&s, port, &[]);
    ctl.expect("action A running", T);
    assert!(!pair.answers(), "the port answered during the blackhole");
    assert!(pair.tables().contains("inet fl_"), "{}", pair.tables());
    let (status, out, lines) = ctl.finish(T);
    assert_eq!(status.code(), Some(0), "{}", report(&out, &lines));
    assert!(pair.answers(), "the port must answer again after the blackhole");
    assert!(!pair.tables().contains("fl_"), "{}", pair.tables());
    // The agent read the kernel's counter: the probe's SYNs were dropped.
    let seen = agent.expect("observed effect", T);
    assert!(
        seen.contains("packets_dropped") && !seen.contains("packets_dropped 0.0"),
        "{seen}"
    );
}

#[test]
fn a_blackhole_ends_in_the_kernel_without_its_agent_and_a_restart_removes_its_table() {
    if !privileged() {
        return;
    }
    let s = Scratch::new("blackhole-kill");
    let pair = Pair::new();
    pair.serve();
    eventually("the port answering before the fault", Duration::from_secs(10), || {
        pair.answers()
    });
    let (mut ctl, port) = pair.controller(&s, &blackhole(&s, 4));
    let agent = pair.agent(&s, port, &[]);
    ctl.expect("action A running", T);
    assert!(!pair.answers());
    // kill -9 (of `ip netns exec`, which execs the agent: the same process).
    agent.signal(libc::SIGKILL);
    let killed = Instant::now();
    eventually("the kernel ending the blackhole on its own", T, || pair.answers());
    assert!(killed.elapsed() < Duration::from_secs(10), "{:?}", killed.elapsed());
    assert!(
        pair.tables().contains("fl_"),
        "the inert table stays until an agent removes it"
    );
    // A restart finds the record and deletes the table.
    let _again = pair.agent(&s, port, &[]);
    eventually("the restarted agent removing the table", T, || {
        !pair.tables().contains("fl_")
    });
    eventually("the state record removed", T, || state_files(&s, "web-a1").is_empty());
    drop(ctl);
}

#[test]
fn a_restart_with_a_corrupt_record_removes_a_blackhole_in_effect() {
    if !privileged() {
        return;
    }
    let s = Scratch::new("blackhole-corrupt");
    let pair = Pair::new();
    pair.serve();
    eventually("the port answering before the fault", Duration::from_secs(10), || {
        pair.answers()
    });
    let (mut ctl, port) = pair.controller(&s, &blackhole(&s, 120));
    let agent = pair.agent(&s, port, &[]);
    ctl.expect("action A running", T);
    agent.signal(libc::SIGKILL);
    let files = state_files(&s, "web-a1");
    assert_eq!(files.len(), 1, "{files:?}");
    std::fs::write(&files[0], b"{ not json").unwrap();
    assert!(!pair.answers(), "still blackholed while no agent runs");
    let _again = pair.agent(&s, port, &[]);
    eventually("the port answering after the restart", T, || pair.answers());
    assert!(!pair.tables().contains("fl_"), "{}", pair.tables());
    drop(ctl);
}

#[test]
fn packet_loss_drops_the_asked_share_of_a_thousand_packets_from_its_source() {
    if !privileged() {
        return;
    }
    let s = Scratch::new("loss");
    let pair = Pair::new();
    pair.serve();
    eventually("the link passing traffic", Duration::from_secs(10), || pair.answers());
    assert_eq!(udp_delivered(&pair, 200), 200, "no loss before the fault");
    let template = s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:network:packet-loss",
            json!({ "duration": "PT20S", "lossPercent": "30", "sources": format!("{}, 10.99.0.0/16", pair.cli()) }),
        ),
    );
    let (mut ctl, port) = pair.controller(&s, &template);
    let mut agent = pair.agent(&s, port, &[]);
    ctl.expect("action A running", T);
    let got = udp_delivered(&pair, 1000);
    let loss = 100.0 - f64::from(got) / 10.0;
    eprintln!("packet loss: asked 30%, measured {loss:.1}% over 1000 datagrams");
    assert!((25.0..=35.0).contains(&loss), "asked 30% loss, measured {loss}%");
    // Stop it: SIGINT to the controller removes the fault at once.
    ctl.signal(libc::SIGINT);
    let (_, out, lines) = ctl.finish(T);
    let r: Value = report(&out, &lines);
    assert_eq!(r["state"], "stopped", "{r}");
    let seen = agent.expect("observed effect", T);
    assert!(seen.contains("loss_percent") && seen.contains("asked 30.0"), "{seen}");
    assert!(!pair.tables().contains("fl_"), "{}", pair.tables());
    assert_eq!(udp_delivered(&pair, 200), 200, "no loss after the fault");
}

/// A connection from `from` (a 127.0.0.x address) through the proxy: how long until the
/// service's answer.
fn round_trip(from: Ipv4Addr, proxy: u16) -> Duration {
    let sock = socket2_bind(from);
    let start = Instant::now();
    let mut c = sock(SocketAddr::from(([127, 0, 0, 1], proxy)));
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).unwrap();
    start.elapsed()
}

/// A connector whose connections come from `from`.
fn socket2_bind(from: Ipv4Addr) -> impl Fn(SocketAddr) -> TcpStream {
    move |to| {
        // SAFETY: plain socket calls on a descriptor owned by the returned stream.
        unsafe {
            use std::os::fd::FromRawFd;
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            let stream = TcpStream::from_raw_fd(fd);
            let bind = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from(from).to_be(),
                },
                sin_zero: [0; 8],
            };
            assert_eq!(
                libc::bind(fd, (&bind as *const libc::sockaddr_in).cast(), 16),
                0,
                "bind {from}"
            );
            let SocketAddr::V4(to) = to else { unreachable!() };
            let dst = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: to.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*to.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            assert_eq!(
                libc::connect(fd, (&dst as *const libc::sockaddr_in).cast(), 16),
                0,
                "connect"
            );
            stream
        }
    }
}

#[test]
fn latency_with_sources_delays_only_the_named_peers() {
    let s = Scratch::new("latency-sources");
    let (_web, web_port) = web_service("latency-sources");
    let proxy_port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let template = s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:network:latency",
            json!({ "duration": "PT20S", "delayMilliseconds": "400", "sources": "127.0.0.2" }),
        ),
    );
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let proxy = format!("127.0.0.1:{proxy_port}=127.0.0.1:{web_port}");
    let _agent = agent(&s, port, "web-a1", "az-a", &["--proxy", &proxy]);
    ctl.expect("action A running", T);
    let named = round_trip(Ipv4Addr::new(127, 0, 0, 2), proxy_port);
    let other = round_trip(Ipv4Addr::new(127, 0, 0, 3), proxy_port);
    assert!(named >= Duration::from_millis(800), "127.0.0.2 is a source: {named:?}");
    assert!(
        other < Duration::from_millis(400),
        "127.0.0.3 is not a source: {other:?}"
    );
    ctl.signal(libc::SIGINT);
    let _ = ctl.finish(T);
    let after = round_trip(Ipv4Addr::new(127, 0, 0, 2), proxy_port);
    assert!(after < Duration::from_millis(400), "after the fault: {after:?}");
}

/// A free loopback port for an agent's proxy.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Runs `template` against an agent whose proxy, on `proxy_port`, fronts a web service, with
/// the proxy alone enforcing network faults (as without CAP_NET_ADMIN): the controller, the
/// agent and the service.
fn proxy_only_run(s: &Scratch, template: &Value, proxy_port: u16) -> (Proc, Proc, Proc) {
    let (web, web_port) = web_service(&format!("web-{}", s.0.file_name().unwrap().to_string_lossy()));
    let template = s.write_json("t.json", template);
    let (ctl, port) = controller(s, &template, 1, &[]);
    let proxy = format!("127.0.0.1:{proxy_port}=127.0.0.1:{web_port}");
    let agent = agent(
        s,
        port,
        "web-a1",
        "az-a",
        &["--proxy", &proxy, "--blackout-backend", "proxy"],
    );
    (ctl, agent, web)
}

/// A request sent through the proxy from `from`, not yet answered.
fn ask(from: Ipv4Addr, proxy: u16) -> TcpStream {
    let mut c = connect_from(from, std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, proxy)).expect("connect");
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    c.set_nonblocking(true).unwrap();
    c
}

/// Whether a request has its answer by now: one held by a blackhole has nothing yet, and
/// was neither reset nor closed (a blackhole drops, it does not refuse).
fn answered(c: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    match c.read(&mut b) {
        Ok(0) => panic!("closed without an answer"),
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("the connection failed instead of hanging: {e}"),
    }
}

#[test]
fn blackhole_port_without_nf_tables_is_held_by_the_proxy() {
    let s = Scratch::new("blackhole-proxy");
    let proxy_port = free_port();
    let template = single_action(
        "web-a1",
        "faultline:network:blackhole-port",
        json!({ "duration": "PT4S", "protocol": "tcp", "port": proxy_port.to_string(), "trafficType": "ingress" }),
    );
    let (ctl, mut agent, _web) = proxy_only_run(&s, &template, proxy_port);
    let limited = agent.expect("proxy only: tcp ingress on port", T);
    assert!(limited.contains(&format!("port {proxy_port}")), "{limited}");
    let mut ctl = ctl;
    ctl.expect("action A running", T);
    agent.expect("via the proxy", T);
    let mut during = ask(Ipv4Addr::LOCALHOST, proxy_port);
    std::thread::sleep(Duration::from_secs(1));
    assert!(!answered(&mut during), "the blackholed port answered");
    let (status, out, lines) = ctl.finish(T);
    let r = report(&out, &lines);
    assert!(status.success() && r["state"] == "completed", "{r}");
    let seen = agent.expect("observed effect", T);
    assert!(seen.contains("connections_blackholed"), "{seen}");
    // It answers again: a new connection at once, the held one as a retransmission would.
    let mut after = ask(Ipv4Addr::LOCALHOST, proxy_port);
    eventually("an answer after the blackhole", Duration::from_secs(5), || {
        answered(&mut after) && answered(&mut during)
    });
}

#[test]
fn blackhole_port_without_nf_tables_refuses_what_the_proxy_never_sees() {
    let s = Scratch::new("blackhole-proxy-udp");
    let proxy_port = free_port();
    let template = single_action(
        "web-a1",
        "faultline:network:blackhole-port",
        json!({ "duration": "PT4S", "protocol": "udp", "port": proxy_port.to_string(), "trafficType": "ingress" }),
    );
    let (ctl, _agent, _web) = proxy_only_run(&s, &template, proxy_port);
    let (_, out, lines) = ctl.finish(T);
    let r = report(&out, &lines);
    assert_eq!(r["state"], "failed", "{r}");
    assert!(r.to_string().contains("the proxy carries TCP only"), "{r}");
}

#[test]
fn packet_loss_without_nf_tables_drops_a_share_of_connections_in_the_proxy() {
    let s = Scratch::new("loss-proxy");
    let proxy_port = free_port();
    let template = single_action(
        "web-a1",
        "faultline:network:packet-loss",
        json!({ "duration": "PT60S", "lossPercent": "30", "sources": "127.0.0.2" }),
    );
    let (mut ctl, mut agent, _web) = proxy_only_run(&s, &template, proxy_port);
    agent.expect("connection-level", T);
    ctl.expect("action A running", T);
    // N = 1000 connections, each drawing at least once: ±5 points is then over 3 standard
    // deviations of the share of attempts lost.
    const N: usize = 1000;
    let mut asked: Vec<TcpStream> = (0..N).map(|_| ask(Ipv4Addr::new(127, 0, 0, 2), proxy_port)).collect();
    let mut other = ask(Ipv4Addr::new(127, 0, 0, 3), proxy_port);
    std::thread::sleep(Duration::from_millis(500));
    let mut held: Vec<TcpStream> = Vec::new();
    for mut c in asked.drain(..) {
        if !answered(&mut c) {
            held.push(c);
        }
    }
    let first = held.len();
    eprintln!("connection-level loss: {first} of {N} connections unanswered at first");
    assert!(first > 0, "no connection was held");
    assert!(answered(&mut other), "127.0.0.3 is not a source");
    // A lost attempt costs a retransmission interval (1 s, then 2 s ...), not the fault:
    // while the loss lasts, most held connections get through on a later draw.
    eventually(
        "most held connections through on a retransmission",
        Duration::from_secs(10),
        || {
            held.retain_mut(|c| !answered(c));
            held.len() * 4 < first
        },
    );
    ctl.signal(libc::SIGINT);
    let (_, out, lines) = ctl.finish(T);
    let r = report(&out, &lines);
    assert_eq!(r["state"], "stopped", "{r}");
    let seen = agent.expect("observed effect", T);
    let figure = |name: &str| -> f64 {
        let at = seen
            .find(&format!("{name} "))
            .unwrap_or_else(|| panic!("no {name}: {seen}"))
            + name.len()
            + 1;
        let rest = &seen[at..];
        rest[..rest.find(' ').unwrap_or(rest.len())]
            .parse()
            .unwrap_or_else(|e| panic!("{name}: {e}: {seen}"))
    };
    assert_eq!(figure("connections_seen"), N as f64, "{seen}");
    let dropped = figure("attempts_dropped");
    assert!(
        dropped >= first as f64,
        "{first} connections held, {dropped} attempts dropped: {seen}"
    );
    // Lost attempts over attempts: every connection draws once, a lost one again.
    let loss = figure("loss_percent");
    eprintln!("connection-level loss: asked 30%, measured {loss:.1}% of attempts");
    assert!(
        (25.0..=35.0).contains(&loss),
        "asked 30% loss, measured {loss}%: {seen}"
    );
    assert!(seen.contains("asked 30.0"), "{seen}");
    // Removed: the held connections get through, and new ones are never dropped.
    let mut fresh: Vec<TcpStream> = (0..100).map(|_| ask(Ipv4Addr::new(127, 0, 0, 2), proxy_port)).collect();
    eventually(
        "every connection answered after the loss",
        Duration::from_secs(5),
        || {
            held.retain_mut(|c| !answered(c));
            fresh.retain_mut(|c| !answered(c));
            held.is_empty() && fresh.is_empty()
        },
    );
}

/// The life left on the dead-man switch of the one `fl_*` table of "srv", in ms, as nft
/// lists it (`expires 4s312ms`); `None` when there is no such element.
fn expires_ms(pair: &Pair) -> Option<u64> {
    let table = pair
        .tables()
        .lines()
        .find_map(|l| l.split_whitespace().find(|w| w.starts_with("fl_")).map(str::to_string))?;
    let out = Command::new("ip")
        .args(["netns", "exec", &pair.ns("srv"), "nft", "list", "table", "inet", &table])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    let after = listed.split("expires ").nth(1)?;
    let spec = after.split([' ', '}', ',']).next()?;
    let mut ms = 0u64;
    let mut number = String::new();
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            1
        } else {
            match c {
                'd' => 86_400_000,
                'h' => 3_600_000,
                'm' => 60_000,
                's' => 1000,
                _ => return None,
            }
        };
        ms += number.parse::<u64>().ok()? * unit;
        number.clear();
    }
    Some(ms)
}

/// An nf_tables fault of ten minutes whose agent is SIGKILLed and never restarted, its
/// controller stopped and gone too: while the agent lives, the kernel's timer is a few leases
/// and kept fresh past its first life; once the agent is dead, the effect ends within two
/// leases, seen from outside. `faulted` says whether the effect is in place now.
fn ends_within_two_leases_of_a_dead_agent(name: &str, action: &str, params: Value, faulted: impl Fn(&Pair) -> bool) {
    let s = Scratch::new(name);
    let pair = Pair::new();
    pair.serve();
    eventually("the link passing traffic", Duration::from_secs(10), || pair.answers());
    assert!(!faulted(&pair), "faulted before the fault");
    let template = s.write_json("t.json", &single_action("web-a1", action, params));
    let (mut ctl, port) = pair.controller(&s, &template);
    let agent = pair.agent(&s, port, &[]);
    ctl.expect("action A running", T);
    let applied = Instant::now();
    assert!(faulted(&pair), "the fault is not in effect");
    let life = expires_ms(&pair).expect("a life element");
    assert!(
        life <= 2 * LEASE.as_millis() as u64,
        "the kernel keeps the fault {life} ms without its agent: more than two leases"
    );
    // Past its first life (1.5 leases) the living agent has renewed it.
    while applied.elapsed() < 2 * LEASE {
        assert!(faulted(&pair), "the fault lapsed while its agent and controller live");
    }
    agent.signal(libc::SIGKILL);
    let killed = Instant::now();
    drop(agent);
    ctl.signal(libc::SIGKILL);
    let _ = ctl.finish(T);
    eventually("the effect ended without its agent", 2 * LEASE, || !faulted(&pair));
    eprintln!(
        "{name}: ended {:.2} leases after its agent was killed",
        killed.elapsed().as_secs_f64() / LEASE.as_secs_f64()
    );
    assert!(
        pair.tables().contains("fl_"),
        "only the next agent deletes the inert table"
    );
}

#[test]
fn a_blackhole_ends_within_two_leases_of_its_agents_death() {
    if !privileged() {
        return;
    }
    ends_within_two_leases_of_a_dead_agent(
        "deadman-blackhole",
        "faultline:network:blackhole-port",
        json!({ "duration": "PT10M", "protocol": "tcp", "port": PORT.to_string(), "trafficType": "ingress" }),
        |pair| !pair.answers(),
    );
}

#[test]
fn a_packet_loss_ends_within_two_leases_of_its_agents_death() {
    if !privileged() {
        return;
    }
    ends_within_two_leases_of_a_dead_agent(
        "deadman-loss",
        "faultline:network:packet-loss",
        json!({ "duration": "PT10M", "lossPercent": "100" }),
        |pair| udp_delivered(pair, 50) == 0,
    );
}

/// `faultline run` in "cli", on the client's own address: the controller's machine is the
/// client's. The port agents dial.
fn controller_on_the_clients_address(pair: &Pair, s: &Scratch, template: &std::path::Path) -> (Proc, u16) {
    agent_bin();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &pair.ns("cli"), FAULTLINE, "run", "--format", "json"])
        .args(["--seed", "1", "--wait-agents", "1"])
        .args(["--listen", &format!("{}:0", pair.cli())])
        .arg("--token-file")
        .arg(s.path("token"))
        .arg("--journal")
        .arg(s.path("journal.jsonl"))
        .arg(template);
    let mut p = Proc::spawn("controller", cmd);
    let port = p.controller_port();
    (p, port)
}

/// The agent of "srv", dialing a controller in "cli".
fn agent_of_a_controller_in_cli(pair: &Pair, s: &Scratch, port: u16) -> Proc {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &pair.ns("srv")])
        .arg(agent_bin())
        .args(["--controller", &format!("ws://{}:{port}", pair.cli())])
        .arg("--token-file")
        .arg(s.path("token"))
        .args(["--host-id", "web-a1", "--az", "az-a", "--lease", "PT3S"])
        .args(["--address", &pair.srv().to_string()])
        .arg("--state-dir")
        .arg(s.path("state-web-a1"));
    Proc::spawn("web-a1", cmd)
}

/// The control plane's exemption is exact: with the controller on the client's own address,
/// its connection to the agent passes (the run is stopped, and the removal confirmed, through
/// the fault), and any other client on that address is faulted like everyone else.
fn only_the_control_connection_passes(name: &str, action: &str, params: Value, faulted: impl Fn(&Pair) -> bool) {
    let s = Scratch::new(name);
    let pair = Pair::new();
    pair.serve();
    eventually("the link passing traffic", Duration::from_secs(10), || pair.answers());
    let template = s.write_json("t.json", &single_action("web-a1", action, params));
    let (mut ctl, port) = controller_on_the_clients_address(&pair, &s, &template);
    let _agent = agent_of_a_controller_in_cli(&pair, &s, port);
    ctl.expect("action A running", T);
    assert!(
        faulted(&pair),
        "a client on the controller's address ({}) was spared by the fault",
        pair.cli()
    );
    // Pings and answers cross the fault for longer than the lease: the agent keeps its link.
    let until = Instant::now() + 2 * LEASE;
    while Instant::now() < until {
        assert!(faulted(&pair), "the fault ended while its controller lives");
    }
    ctl.signal(libc::SIGINT);
    let (_, out, lines) = ctl.finish(T);
    let r = report(&out, &lines);
    assert_eq!(r["state"], "stopped", "{r}");
    let removal = journal(&s)
        .into_iter()
        .find(|e| e["event"] == "removal")
        .expect("a removal");
    assert_eq!(removal["by"], "controller", "{removal}");
    assert_eq!(removal["confirmed"], true, "the stop crossed the fault: {removal}");
    assert!(!faulted(&pair), "still faulted after the removal");
}

#[test]
fn a_blackhole_spares_the_control_connection_but_not_the_controllers_address() {
    if !privileged() {
        return;
    }
    only_the_control_connection_passes(
        "exact-blackhole",
        "faultline:network:blackhole-port",
        json!({ "duration": "PT60S", "protocol": "tcp", "port": PORT.to_string(), "trafficType": "ingress" }),
        |pair| !pair.answers(),
    );
}

#[test]
fn a_packet_loss_spares_the_control_connection_but_not_the_controllers_address() {
    if !privileged() {
        return;
    }
    // Every packet from every peer: only the agent's own control connection gets through.
    only_the_control_connection_passes(
        "exact-loss",
        "faultline:network:packet-loss",
        json!({ "duration": "PT60S", "lossPercent": "100" }),
        |pair| udp_delivered(pair, 50) == 0,
    );
}
