//! `faultline:network:blackhole-port`: drop every packet of one protocol to one port, arriving
//! (ingress) or sent (egress), as FIS's AWSFIS-Run-Network-Blackhole-Port. nf_tables only
//! (`nft.rs`): the table holds its own end, a set element the kernel expires at the
//! deadline, so the port answers again on time even if the agent never comes back. Its
//! table is recorded and swept like a blackout's (`blackout.rs` sweeps every `fl_*` table
//! no record names).

use super::nft::{self, Expr, Hook};
use super::{Answer, Apply, Detection, Env, Fault, FaultError, FaultKind, Kind, Setup, Started, WireParams};
use crate::limits::{self, OutOfRange};
use crate::protocol::Observed;
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
    /// TCP.
    Tcp,
    /// UDP.
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

/// The kind (nf_tables only).
#[derive(Debug, Default)]
pub struct BlackholePort;

impl Kind for BlackholePort {
    fn detect(&mut self, setup: &Setup) -> Detection {
        nft::detect_only(setup, "blackhole-port")
    }

    fn prepare(&self, a: &Apply<'_>, _env: &Env<'_>) -> Result<serde_json::Value, FaultError> {
        Ok(nft::table_undo(&a.hash))
    }

    fn apply(&self, a: &Apply<'_>, undo: &serde_json::Value, _env: &Env<'_>) -> Result<Started, FaultError> {
        let FaultKind::BlackholePort(Params {
            protocol,
            port,
            traffic,
        }) = a.spec.kind
        else {
            return Err(super::mismatch(a.spec));
        };
        let table = nft::table_in(undo, "blackhole-port")?;
        nft::install_rules(&table, a.duration, &[rules(protocol, port, traffic)])
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

/// The chain of a blackhole: every packet of `protocol` to `port`, counted and dropped.
fn rules(protocol: Transport, port: u16, traffic: Direction) -> (Hook, Vec<Vec<Expr>>) {
    let proto = match protocol {
        Transport::Tcp => libc::IPPROTO_TCP as u8,
        Transport::Udp => libc::IPPROTO_UDP as u8,
    };
    let hook = match traffic {
        Direction::Ingress => Hook::Input,
        Direction::Egress => Hook::Output,
    };
    (
        hook,
        vec![vec![
            Expr::L4Proto(proto),
            Expr::DstPort(port),
            Expr::Counter,
            Expr::Drop,
        ]],
    )
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
        assert_eq!(
            rules,
            vec![vec![Expr::L4Proto(17), Expr::DstPort(53), Expr::Counter, Expr::Drop]]
        );
        assert_eq!(rules_hook(Direction::Egress), Hook::Output);
    }

    fn rules_hook(d: Direction) -> Hook {
        rules(Transport::Tcp, 1, d).0
    }
}
