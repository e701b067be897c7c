//! `faultline:network:packet-loss`: drop a random share of the packets arriving from some
//! peers (every peer but loopback by default), as FIS's AWSFIS-Run-Network-Packet-Loss(-Sources).
//! With nf_tables (`nft.rs`) when the agent may use it: each packet draws a random number in
//! the kernel (`numgen`), and the table holds its own end, a set element the kernel expires
//! unless the living agent renews it (its dead-man switch: the loss ends within two leases
//! of the agent's death, and never after the deadline). Only the agent's own control
//! connection is spared (by its socket's mark), not the controller's whole address. Its
//! table is recorded and swept like a blackout's (`blackout.rs` sweeps every `fl_*` table no
//! record names).
//!
//! Only arriving packets are dropped, so a request and its answer are not both at risk:
//! the loss a peer measures is the one asked. Loopback is never touched, so the agent's own
//! local traffic (and a local controller) keeps working.
//!
//! Else (no CAP_NET_ADMIN, or `--blackout-backend proxy`) it falls back to connection-level
//! loss in the agent's proxy, with these limits:
//! - only connections to the proxy's own ports (`--proxy`) are touched, nothing else;
//! - the loss is counted per connection attempt, not per packet: a connection that draws a
//!   loss is held unanswered for one retransmission interval (1 s, then 2 s, 4 s ... as TCP
//!   backs off a lost SYN) and draws again, until a draw passes or the fault ends; the
//!   client's connect itself succeeds (the kernel completes the handshake before the proxy
//!   sees the connection), what it waits for is the answer;
//! - loopback is included when no sources are given (the proxy carries only the service's
//!   traffic).
//!
//! Draws are seeded from the fault id. The observed loss is lost attempts over attempts. The
//! condition lives in the agent's process, so it ends with it and a restart has nothing to
//! undo.
//!
//! Example: `experiments/packet-loss.json`; with the proxy alone it loses that share of the
//! connection attempts from az-b and 10.9.0.0/16 to the proxied service, not of their packets.

use super::nft::{self, Expr, Hook};
use super::{Answer, Apply, Detection, Env, Fault, FaultError, FaultKind, Kind, Setup, Started, WireParams};
use crate::limits::{self, OutOfRange};
use crate::protocol::Observed;
use crate::proxy::{Condition, Enforced};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The wire parameters: `{"kind":"packet_loss","loss_percent":7.0,"sources":["10.0.0.0/8"]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Share of packets dropped, percent ([`LOSS_PERCENT`]).
    pub loss_percent: f64,
    /// Only packets from these peers; empty: every peer but loopback
    /// ([`limits::SOURCES`] entries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<IpNet>,
}

/// `loss_percent` (`lossPercent` in a template; FIS's default is 7).
pub const LOSS_PERCENT: (f64, f64) = (0.0, 100.0);

impl WireParams for Params {
    const CAPABILITY: &'static str = "packet_loss";

    fn check(&self) -> Result<(), OutOfRange> {
        limits::number("loss_percent", self.loss_percent, LOSS_PERCENT)?;
        limits::int("sources", self.sources.len() as u64, limits::SOURCES)
    }
}

/// The kind; `via_proxy` once detection chose the proxy (no nf_tables).
#[derive(Debug, Default)]
pub struct PacketLoss {
    via_proxy: bool,
}

impl Kind for PacketLoss {
    fn detect(&mut self, setup: &Setup) -> Detection {
        let (detection, ports) = nft::detect_or_proxy(setup, "packet-loss", |ports| {
            format!("proxy only: connection-level loss of connection attempts to {ports} (a lost one waits a retransmission interval), not packets")
        });
        self.via_proxy = ports.is_some();
        detection
    }

    fn prepare(&self, a: &Apply<'_>, _env: &Env<'_>) -> Result<serde_json::Value, FaultError> {
        // The proxy's condition dies with the agent: nothing to record for a restart.
        Ok(if self.via_proxy {
            serde_json::Value::Null
        } else {
            nft::table_undo(&a.hash)
        })
    }

    fn apply(&self, a: &Apply<'_>, undo: &serde_json::Value, env: &Env<'_>) -> Result<Started, FaultError> {
        let FaultKind::PacketLoss(Params {
            loss_percent,
            ref sources,
        }) = a.spec.kind
        else {
            return Err(super::mismatch(a.spec));
        };
        let from = if sources.is_empty() {
            "every peer".to_string()
        } else {
            format!("{} source(s)", sources.len())
        };
        if self.via_proxy {
            let condition = Condition::Loss {
                percent: loss_percent,
                sources: sources.clone(),
            };
            return Ok(Started {
                fault: Box::new(ProxyLosing {
                    enforced: Enforced::set(env.conditions, &a.spec.fault_id, condition),
                    loss_percent,
                }),
                answer: Answer::Now(
                    format!(
                        "{loss_percent}% of connection attempts from {from} dropped via the proxy for {} ms",
                        a.duration.as_millis()
                    ),
                    vec![],
                ),
            });
        }
        let table = nft::table_in(undo, "packet-loss")?;
        nft::install_rules(&table, a.kernel_life, &[(Hook::Input, rules(loss_percent, sources))])
            .map_err(FaultError::io("cannot install the nf_tables packet loss"))?;
        Ok(Started {
            fault: Box::new(Losing { table, loss_percent }),
            answer: Answer::Now(
                format!(
                    "{loss_percent}% of packets from {from} dropped for {} ms",
                    a.duration.as_millis()
                ),
                vec![],
            ),
        })
    }

    fn restore(&self, _fault_id: &str, undo: serde_json::Value, _env: &Env<'_>) -> Box<dyn Fault> {
        nft::restore_table(&undo)
    }
}

/// The input chain's rules: loopback passes, and so does the agent's control connection (a
/// lossy link to its controller would delay the fault's own removal and the agent's leases);
/// then, for each source (or for every packet), one rule counts what it matches, draws,
/// counts what it drops and drops it.
fn rules(loss_percent: f64, sources: &[IpNet]) -> Vec<Vec<Expr>> {
    let chance = (loss_percent / 100.0 * f64::from(nft::CHANCE_SCALE)).round() as u32;
    let lossy = |peer: Option<IpNet>| {
        let mut rule: Vec<Expr> = peer.map(Expr::Peer).into_iter().collect();
        rule.extend([Expr::Counter, Expr::Chance(chance), Expr::Counter, Expr::Drop]);
        rule
    };
    let mut rules = vec![
        vec![Expr::Loopback, Expr::Accept],
        vec![Expr::ControlConnection, Expr::Accept],
    ];
    if sources.is_empty() {
        rules.push(lossy(None));
    } else {
        rules.extend(sources.iter().map(|s| lossy(Some(*s))));
    }
    rules
}

/// A packet loss in effect: its table, and the share asked.
#[derive(Debug)]
struct Losing {
    table: String,
    loss_percent: f64,
}

impl Fault for Losing {
    fn remove(&mut self, env: &Env<'_>) -> Result<(), FaultError> {
        nft::Table(self.table.clone()).remove(env)
    }

    fn dead_man(&self) -> Option<&str> {
        Some(&self.table)
    }

    /// Packets seen and dropped, from the rules' counters in the kernel: the first counter of
    /// a rule sees every packet it matched, the second those it dropped.
    fn observed(&mut self) -> Observed {
        let rules = match nft::counted(&self.table) {
            Ok(rules) => rules,
            Err(e) => {
                tracing::warn!(table = %self.table, error = %e, "cannot read the packet loss's counters");
                return Observed::default();
            }
        };
        let seen: u64 = rules.iter().filter_map(|r| r.first()).sum();
        let dropped: u64 = rules.iter().filter_map(|r| r.get(1)).sum();
        let mut observed = Observed::default().with("packets_dropped", "packets", None, dropped as f64);
        if seen > 0 {
            observed = observed.with(
                "loss_percent",
                "%",
                Some(self.loss_percent),
                dropped as f64 * 100.0 / seen as f64,
            );
        }
        observed
    }
}

/// A loss the proxy enforces, per connection attempt.
#[derive(Debug)]
struct ProxyLosing {
    enforced: Enforced,
    loss_percent: f64,
}

impl Fault for ProxyLosing {
    fn remove(&mut self, _env: &Env<'_>) -> Result<(), FaultError> {
        self.enforced.clear();
        Ok(())
    }

    /// New connections seen, their attempts dropped (each held one retransmission interval),
    /// and the share of attempts dropped.
    fn observed(&mut self) -> Observed {
        let n = self.enforced.counts();
        let mut observed = Observed::default()
            .with("connections_seen", "connections", None, n.seen as f64)
            .with("attempts_dropped", "attempts", None, n.lost as f64);
        if n.draws > 0 {
            observed = observed.with(
                "loss_percent",
                "%",
                Some(self.loss_percent),
                n.lost as f64 * 100.0 / n.draws as f64,
            );
        }
        observed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_draws_on_its_own_and_loopback_passes() {
        let r = rules(7.0, &["10.0.0.0/8".parse().unwrap(), "127.0.0.2/32".parse().unwrap()]);
        assert_eq!(r[0], vec![Expr::Loopback, Expr::Accept]);
        assert_eq!(r.len(), 4);
        assert_eq!(r[2][0], Expr::Peer("10.0.0.0/8".parse().unwrap()));
        assert!(r[2].contains(&Expr::Chance(700)));
        assert_eq!(
            rules(33.33, &[])[2],
            vec![Expr::Counter, Expr::Chance(3333), Expr::Counter, Expr::Drop]
        );
    }

    #[test]
    fn only_the_control_connection_passes_before_any_draw() {
        let every = rules(50.0, &[]);
        assert_eq!(
            every,
            vec![
                vec![Expr::Loopback, Expr::Accept],
                vec![Expr::ControlConnection, Expr::Accept],
                vec![Expr::Counter, Expr::Chance(5000), Expr::Counter, Expr::Drop],
            ]
        );
    }
}
