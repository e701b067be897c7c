//! Network faults with real packets: two network namespaces joined by a veth pair, a
//! controller, an agent and the services in one ("srv"), the probes in the other ("cli").
//! The port blackhole and the packet loss are seen from the client's side; the latency's
//! sources through the agent's proxy on loopback (127.0.0.x are distinct peers).
//!
//! The nf_tables tests need root (CAP_NET_ADMIN) and iproute2's `ip`; without them they say
//! so and skip, except under CI=true, where they must run.

mod common;

use common::netns::*;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);
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
