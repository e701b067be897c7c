//! Two network namespaces joined by a veth pair, for faults seen with real packets: a
//! controller, an agent and the services in one ("srv"), the probes in the other ("cli").
//! Needs root (CAP_NET_ADMIN) and iproute2's `ip`.

use super::*;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;

/// The port of the service in "srv".
pub(crate) const PORT: u16 = 9100;

pub(crate) fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip from iproute2");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn privileged() -> bool {
    privileged_for("network fault tests")
}

/// Whether `what` can run (root and `ip`); says so when not, and fails under CI=true.
pub(crate) fn privileged_for(what: &str) -> bool {
    let ok = is_root() && Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(!required(), "CI=true: {what} need root and iproute2");
        eprintln!("SKIPPED: {what} need root (CAP_NET_ADMIN) and iproute2's `ip`");
    }
    ok
}

/// Runs `f` on a thread inside the network namespace `ns`; sockets it creates live there.
pub(crate) fn in_netns<R: Send + 'static>(ns: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).unwrap();
        // SAFETY: setns on this thread only, with a namespace descriptor we own.
        assert_eq!(
            unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) },
            0,
            "setns {path}"
        );
        f()
    })
    .join()
    .unwrap()
}

/// Two namespaces on a veth pair, deleted when dropped.
pub(crate) struct Pair {
    prefix: String,
    subnet: u8,
}

impl Pair {
    pub(crate) fn new() -> Pair {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pair = Pair {
            prefix: format!("fln{}x{n}", std::process::id() % 100_000),
            subnet: 20 + ((std::process::id() * 7 + n * 31) % 200) as u8,
        };
        let (srv, cli) = (pair.ns("srv"), pair.ns("cli"));
        for (ns, last) in [(&srv, 1), (&cli, 2)] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            let _ = last;
        }
        ip(&[
            "-n", &srv, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &cli,
        ]);
        for (ns, last) in [(&srv, 1), (&cli, 2)] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", pair.addr(last)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        pair
    }

    pub(crate) fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub(crate) fn addr(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 214, self.subnet, last)
    }

    pub(crate) fn srv(&self) -> Ipv4Addr {
        self.addr(1)
    }

    pub(crate) fn cli(&self) -> Ipv4Addr {
        self.addr(2)
    }

    /// Runs `f` on a thread inside namespace `name`; sockets it creates live there.
    pub(crate) fn inside<R: Send + 'static>(&self, name: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
        in_netns(&self.ns(name), f)
    }

    /// A TCP service in "srv" answering every connection with one byte.
    pub(crate) fn serve(&self) {
        let l: TcpListener = self.inside("srv", || TcpListener::bind(("0.0.0.0", PORT)).unwrap());
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let _ = c.write_all(b"k");
            }
        });
    }

    /// Whether the client gets the service's byte.
    pub(crate) fn answers(&self) -> bool {
        let to = SocketAddr::from((self.srv(), PORT));
        self.inside("cli", move || {
            let Ok(mut c) = TcpStream::connect_timeout(&to, Duration::from_millis(700)) else {
                return false;
            };
            c.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
            c.read_exact(&mut [0u8; 1]).is_ok()
        })
    }

    /// The nf_tables tables of "srv", as the nft tool lists them.
    pub(crate) fn tables(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns("srv"), "nft", "list", "tables"])
            .output()
            .expect("ip netns exec ... nft");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `faultline run` in "srv" on loopback; the port agents dial.
    pub(crate) fn controller(&self, s: &Scratch, template: &std::path::Path) -> (Proc, u16) {
        agent_bin();
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.ns("srv"),
            FAULTLINE,
            "run",
            "--format",
            "json",
            "--seed",
            "1",
        ])
        .args(["--listen", "127.0.0.1:0", "--wait-agents", "1"])
        .arg("--token-file")
        .arg(s.path("token"))
        .arg("--journal")
        .arg(s.path("journal.jsonl"))
        .arg(template);
        let mut p = Proc::spawn("controller", cmd);
        let port = p.controller_port();
        (p, port)
    }

    /// The agent of "srv", host web-a1, its state dir in the scratch dir; `extra` flags.
    pub(crate) fn agent(&self, s: &Scratch, port: u16, extra: &[&str]) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns("srv")])
            .arg(agent_bin())
            .args(["--controller", &format!("ws://127.0.0.1:{port}")])
            .arg("--token-file")
            .arg(s.path("token"))
            .args([
                "--host-id",
                "web-a1",
                "--az",
                "az-a",
                "--tag",
                "tier=web",
                "--lease",
                "PT3S",
            ])
            .args(["--address", &self.srv().to_string()])
            .arg("--state-dir")
            .arg(s.path("state-web-a1"))
            .args(extra);
        Proc::spawn("web-a1", cmd)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for n in ["srv", "cli"] {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(n)]).status();
        }
    }
}

/// Sends `n` UDP datagrams from "cli" to a counter in "srv"; how many arrived.
pub(crate) fn udp_delivered(pair: &Pair, n: u32) -> u32 {
    udp_delivered_from(pair, pair.cli(), n)
}

/// Sends `n` UDP datagrams from `from` (an address of "cli") to a counter in "srv"; how
/// many arrived.
pub(crate) fn udp_delivered_from(pair: &Pair, from: Ipv4Addr, n: u32) -> u32 {
    let rx: UdpSocket = pair.inside("srv", || UdpSocket::bind(("0.0.0.0", 0)).unwrap());
    let to = SocketAddr::from((pair.srv(), rx.local_addr().unwrap().port()));
    rx.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let counter = std::thread::spawn(move || {
        let mut got = 0u32;
        let mut buf = [0u8; 64];
        while rx.recv(&mut buf).is_ok() {
            got += 1;
        }
        got
    });
    pair.inside("cli", move || {
        let tx = UdpSocket::bind((from, 0)).unwrap();
        for i in 0..n {
            tx.send_to(&i.to_be_bytes(), to).unwrap();
            // Paced so that no socket buffer overflows: only the fault may drop a packet.
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    counter.join().unwrap()
}
