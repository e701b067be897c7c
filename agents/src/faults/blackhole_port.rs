//! `faultline:network:blackhole-port`: drop every packet of one protocol to one port, arriving
//! (ingress) or sent (egress), as FIS's AWSFIS-Run-Network-Blackhole-Port. With nf_tables
//! (`nft.rs`) when the agent may use it: the table holds its own end, a set element the
//! kernel expires unless the living agent renews it (its dead-man switch), so the port
//! answers again within two leases of the agent's death, and never after the deadline. Only
//! the agent's own control connection passes (by its socket's mark): any other client, also
//! one on the controller's address, is blackholed. Its table is recorded and swept like a
//! blackout's (`blackout.rs` sweeps every `fl_*` table no record names).
//!
//! Else (no CAP_NET_ADMIN, or `--blackout-backend proxy`) the agent's proxy stands in for
//! its own ports: TCP arriving at a port it listens on. It then answers nothing there, new
//! connections are held and existing ones stall (`proxy.rs`); the condition lives in the
//! agent's process, so it ends with it and a restart has nothing to undo. Its limits:
//! - a TCP connect to the blackholed port succeeds (the kernel completes the handshake
//!   before the proxy can hold the connection); what never comes is an answer;
//! - only the proxy's own ports: UDP, egress and other ports are refused, as the proxy
//!   never sees them;
//! - loopback is included (the proxy cannot tell the agent's own traffic from a peer's).
//!
//! Example: `experiments/blackhole-port.json` (nf_tables); with the proxy alone, name the
//! port the agent's `--proxy` listens on.

use super::nft::{self, Expr, Hook};
use super::{Answer, Apply, Detection, Env, Fault, FaultError, FaultKind, Kind, Setup, Started, WireParams};
use crate::limits::{self, OutOfRange};
use crate::protocol::Observed;
use crate::proxy::{Condition, Enforced};
use serde::{Deserialize, Serialize};

/// The wire parameters: `{"kind":"blackhole_port","protocol":"tcp","port":5432,"traffic":"ingress"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// TCP or UDP.
    pub protocol: Transport,
    /// The destination port ([`PORT`]).
    pub port: u16,
    /// Packets arriving for the port, or sent to it.
    pub traffic: Direction,
}

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Tcp,
    Udp,
}

/// Which way traffic flows, seen from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Packets arriving at the host.
    Ingress,
    /// Packets the host sends.
    Egress,
}

/// `port`.
pub const PORT: (u64, u64) = (1, 65535);

impl WireParams for Params {
    const CAPABILITY: &'static str = "blackhole_port";

    fn check(&self) -> Result<(), OutOfRange> {
        limits::int("port", u64::from(self.port), PORT)
    }
}

/// The kind; `proxy_ports` once detection chose the proxy (the ports it listens on).
#[derive(Debug, Default)]
pub struct BlackholePort {
    proxy_ports: Option<Vec<u16>>,
}

impl Kind for BlackholePort {
    fn detect(&mut self, setup: &Setup) -> Detection {
        let (detection, ports) = nft::detect_or_proxy(setup, "blackhole-port", |ports| {
            format!("proxy only: tcp ingress on {ports}")
        });
        self.proxy_ports = ports;
        detection
    }

    fn prepare(&self, a: &Apply<'_>, _env: &Env<'_>) -> Result<serde_json::Value, FaultError> {
        // The proxy's condition dies with the agent: nothing to record for a restart.
        Ok(match self.proxy_ports {
            Some(_) => serde_json::Value::Null,
            None => nft::table_undo(&a.hash),
        })
    }

    fn apply(&self, a: &Apply<'_>, undo: &serde_json::Value, env: &Env<'_>) -> Result<Started, FaultError> {
        let FaultKind::BlackholePort(Params {
            protocol,
            port,
            traffic,
        }) = a.spec.kind
        else {
            return Err(super::mismatch(a.spec));
        };
        if let Some(ports) = &self.proxy_ports {
            return via_proxy(a, env, ports, (protocol, port, traffic));
        }
        let table = nft::table_in(undo, "blackhole-port")?;
        nft::install_rules(&table, a.kernel_life, &[rules(protocol, port, traffic)])
            .map_err(FaultError::io("cannot install the nf_tables port blackhole"))?;
        Ok(Started {
            fault: Box::new(Blackholed { table }),
            answer: Answer::Now(
                format!(
                    "{protocol:?} port {port} ({traffic:?}) blackholed for {} ms",
                    a.duration.as_millis()
                )
                .to_lowercase(),
                vec![],
            ),
        })
    }

    fn restore(&self, _fault_id: &str, undo: serde_json::Value, _env: &Env<'_>) -> Box<dyn Fault> {
        nft::restore_table(&undo)
    }
}

/// The blackhole as the proxy's condition, if it can honour it: TCP arriving at one of its
/// own ports.
fn via_proxy(
    a: &Apply<'_>,
    env: &Env<'_>,
    ports: &[u16],
    (protocol, port, traffic): (Transport, u16, Direction),
) -> Result<Started, FaultError> {
    let why_not = match (protocol, traffic) {
        (Transport::Udp, _) => Some("the proxy carries TCP only".to_string()),
        (_, Direction::Egress) => Some("the proxy sees only connections arriving at it (ingress)".to_string()),
        _ if !ports.contains(&port) => Some(format!("the proxy listens on {}, not {port}", nft::port_list(ports))),
        _ => None,
    };
    if let Some(why) = why_not {
        return Err(FaultError::Refused(format!(
            "refused: without nf_tables only the proxy can blackhole a port, and {why}"
        )));
    }
    let enforced = Enforced::set(env.conditions, &a.spec.fault_id, Condition::Blackhole { port });
    Ok(Started {
        fault: Box::new(ProxyBlackholed(enforced)),
        answer: Answer::Now(
            format!(
                "tcp port {port} (ingress) blackholed via the proxy for {} ms",
                a.duration.as_millis()
            ),
            vec![],
        ),
    })
}

/// A blackhole the proxy holds.
#[derive(Debug)]
struct ProxyBlackholed(Enforced);

impl Fault for ProxyBlackholed {
    fn remove(&mut self, _env: &Env<'_>) -> Result<(), FaultError> {
        self.0.clear();
        Ok(())
    }

    /// The new connections the proxy left unanswered.
    fn observed(&mut self) -> Observed {
        Observed::default().with("connections_blackholed", "connections", None, self.0.counts().held as f64)
    }
}

/// The chain of a blackhole: the agent's control connection passes (blackholing the
/// controller's port, egress, would otherwise cut the agent's own link and so the fault's
/// removal); every other packet of `protocol` to `port` is counted and dropped.
fn rules(protocol: Transport, port: u16, traffic: Direction) -> (Hook, Vec<Vec<Expr>>) {
    let proto = match protocol {
        Transport::Tcp => libc::IPPROTO_TCP as u8,
        Transport::Udp => libc::IPPROTO_UDP as u8,
    };
    let hook = match traffic {
        Direction::Ingress => Hook::Input,
        Direction::Egress => Hook::Output,
    };
    let rules = vec![
        vec![Expr::ControlConnection, Expr::Accept],
        vec![Expr::L4Proto(proto), Expr::DstPort(port), Expr::Counter, Expr::Drop],
    ];
    (hook, rules)
}

/// A port blackhole in effect: its table.
#[derive(Debug)]
struct Blackholed {
    table: String,
}

impl Fault for Blackholed {
    fn remove(&mut self, env: &Env<'_>) -> Result<(), FaultError> {
        nft::Table(self.table.clone()).remove(env)
    }

    fn dead_man(&self) -> Option<&str> {
        Some(&self.table)
    }

    /// The packets dropped, from the rule's counter in the kernel.
    fn observed(&mut self) -> Observed {
        match nft::counted(&self.table) {
            Ok(rules) => Observed::default().with(
                "packets_dropped",
                "packets",
                None,
                rules.iter().flatten().sum::<u64>() as f64,
            ),
            Err(e) => {
                tracing::warn!(table = %self.table, error = %e, "cannot read the blackhole's counter");
                Observed::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingress_matches_the_destination_port_on_input() {
        let (hook, rules) = rules(Transport::Udp, 53, Direction::Ingress);
        assert_eq!(hook, Hook::Input);
        assert_eq!(rules[1], vec![Expr::L4Proto(17), Expr::DstPort(53), Expr::Counter, Expr::Drop]);
        assert_eq!(rules_hook(Direction::Egress), Hook::Output);
    }

    fn rules_hook(d: Direction) -> Hook {
        rules(Transport::Tcp, 1, d).0
    }

    #[test]
    fn only_the_control_connection_passes_before_the_drop() {
        let (hook, rules) = rules(Transport::Tcp, 7000, Direction::Egress);
        assert_eq!(hook, Hook::Output);
        assert_eq!(
            rules,
            vec![
                vec![Expr::ControlConnection, Expr::Accept],
                vec![Expr::L4Proto(6), Expr::DstPort(7000), Expr::Counter, Expr::Drop],
            ]
        );
        assert!(
            !rules.iter().flatten().any(|e| matches!(e, Expr::Peer(_))),
            "no address passes whole: {rules:?}"
        );
    }
}
