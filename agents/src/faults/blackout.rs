//! `faultline:az:blackout`: cut the host off from everything but the other hosts of its AZ
//! (and, unless asked otherwise, the controller); with a deny-list, from those networks only
//! (`aws:network:disrupt-connectivity` scope `availability-zone`). nf_tables (`nft.rs`) when the agent may
//! use it, whose table ends on its own in the kernel within two leases of the agent's death
//! (its dead-man switch, renewed by the living agent) and never after the deadline; the
//! proxy always.
//!
//! The control plane is cut only once the apply's answer is on the wire, and for at most
//! `--max-cut`; leases pause while it is cut, and the living agent keeps renewing the table,
//! so a cut whose agent dies ends within two leases too.

use super::nft;
use super::{Answer, Apply, Detection, Env, Fault, FaultError, FaultKind, Kind, Leftover, Setup, Started, WireParams};
use crate::limits::{self, OutOfRange};
use crate::proxy::Condition;
use crate::state::{self, Record};
use crate::protocol::Observed;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How network faults are enforced (`--blackout-backend`, a name kept as it is a contract):
/// blackouts, and the blackhole-port and packet-loss faults, which fall back to the proxy
/// when nf_tables is not chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// nf_tables when this process may use it, else the proxy alone.
    Auto,
    /// nf_tables (and the proxy); refuse to start without it.
    Nftables,
    /// The proxy alone: the rest of the host's network is never touched.
    Proxy,
}

/// The wire parameters:
/// `{"kind":"blackout","allow":["10.0.1.2"],"keep_control_plane":true,"deny":["10.0.2.0/24"]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Peers that stay reachable: the other hosts of the AZ ([`ALLOW`] addresses).
    pub allow: Vec<IpAddr>,
    /// Keep the controller reachable.
    pub keep_control_plane: bool,
    /// Only these networks are cut off (never `allow`, nor a kept controller); empty:
    /// everything but `allow` is ([`limits::SOURCES`] entries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<IpNet>,
}

/// Addresses a blackout may keep reachable (`allow`): far more than the hosts of an AZ.
pub const ALLOW: (u64, u64) = (1, 4096);

impl WireParams for Params {
    const CAPABILITY: &'static str = "blackout";

    fn check(&self) -> Result<(), OutOfRange> {
        limits::int("deny", self.deny.len() as u64, limits::SOURCES)?;
        limits::int("allow", self.allow.len() as u64, ALLOW).map_err(|e| OutOfRange {
            value: format!("a list of {} addresses", self.allow.len()),
            limit: format!(
                "it must list {}-{} addresses (the other hosts of the AZ)",
                ALLOW.0, ALLOW.1
            ),
            ..e
        })
    }
}

/// The kind; `nft` once detection found nf_tables usable and wanted.
#[derive(Debug, Default)]
pub struct Blackout {
    nft: bool,
}

impl Kind for Blackout {
    fn detect(&mut self, setup: &Setup) -> Detection {
        let wanted = setup.blackout_backend != Backend::Proxy;
        self.nft = wanted && nft::available();
        if wanted && !self.nft && setup.blackout_backend == Backend::Nftables {
            return Detection::Fatal(
                "--blackout-backend nftables, but nf_tables cannot be used here (is CAP_NET_ADMIN granted?)".into(),
            );
        }
        match (self.nft, setup.has_proxy) {
            (true, _) => Detection::Ready,
            (false, true) => Detection::Limited("only the proxy enforces it (no nf_tables)".into()),
            (false, false) => {
                Detection::Unavailable("blackout needs CAP_NET_ADMIN (nf_tables) or a proxy (--proxy)".into())
            }
        }
    }

    fn prepare(&self, a: &Apply<'_>, _env: &Env<'_>) -> Result<serde_json::Value, FaultError> {
        if !self.nft {
            return Ok(serde_json::Value::Null);
        }
        if let Some(ip) = a.controller.filter(|ip| is_local(*ip)) {
            return Err(FaultError::Refused(format!(
                "refused: the controller ({ip}) runs on this host, and an nf_tables blackout would cut off everything \
                 else on it; run this agent with --blackout-backend proxy, or the controller on another host"
            )));
        }
        Ok(serde_json::json!({ "table": nft::table_for(&a.hash) }))
    }

    fn apply(&self, a: &Apply<'_>, undo: &serde_json::Value, env: &Env<'_>) -> Result<Started, FaultError> {
        let FaultKind::Blackout(Params {
            allow,
            keep_control_plane,
            deny,
        }) = &a.spec.kind
        else {
            return Err(super::mismatch(a.spec));
        };
        // Until the answer is out, the controller stays reachable either way.
        let strict = allow.clone();
        let mut allow = allow.clone();
        allow.extend(a.controller);
        let table = table_of(undo);
        if let Some(t) = &table {
            nft::install(t, &allow, deny, a.kernel_life)
                .map_err(FaultError::io("cannot install the nf_tables blackout"))?;
        }
        env.conditions.set(
            &a.spec.fault_id,
            Condition::Blackout {
                allow,
                deny: deny.clone(),
            },
        );
        let detail = format!("blackout in effect for {} ms", a.duration.as_millis());
        let cut = (!keep_control_plane).then(|| (strict, deny.clone()));
        let answer = if cut.is_some() {
            Answer::ThenAct(detail)
        } else {
            Answer::Now(detail, vec![])
        };
        Ok(Started {
            fault: Box::new(Cut {
                fault_id: a.spec.fault_id.clone(),
                table,
                cut,
                is_cut: false,
                dropped: 0,
                dropped_before: 0,
            }),
            answer,
        })
    }

    fn restore(&self, _fault_id: &str, undo: serde_json::Value, _env: &Env<'_>) -> Box<dyn Fault> {
        match table_of(&undo) {
            Some(t) => Box::new(nft::Table(t)),
            None => Box::new(super::Gone),
        }
    }

    /// The tables of unreadable records (named by the hash that ends the file name), and
    /// every `fl_*` table of this network namespace that no record names: whatever this
    /// life's backend, a previous one may have used nf_tables.
    fn sweep(&self, records: &[Record], unreadable: &[PathBuf], _env: &Env<'_>) -> Vec<Leftover> {
        if !self.nft && !nft::has_net_admin() {
            return Vec::new();
        }
        let mut found = Vec::new();
        let mut known: BTreeSet<String> = records.iter().filter_map(|r| table_of(&r.undo)).collect();
        for path in unreadable {
            if let Some(hash) = state::hash_of_file(path) {
                let table = nft::table_for(&hash);
                tracing::warn!(path = %path.display(), %table, "an unreadable state file; removing the table it names");
                known.insert(table.clone());
                found.push(Leftover {
                    id: format!("unreadable:{}", path.display()),
                    fault: Box::new(nft::Table(table)),
                    file: Some(path.clone()),
                });
            }
        }
        match nft::tables() {
            Ok(tables) => {
                for table in tables
                    .into_iter()
                    .filter(|t| t.starts_with(nft::TABLE_PREFIX) && !known.contains(t))
                {
                    tracing::warn!(%table, "an nf_tables table of faultline that no record names; removing it");
                    found.push(Leftover {
                        id: format!("table:{table}"),
                        fault: Box::new(nft::Table(table)),
                        file: None,
                    });
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot list the nf_tables tables to sweep them"),
        }
        found
    }
}

/// The table a blackout's undo data names.
fn table_of(undo: &serde_json::Value) -> Option<String> {
    undo.get("table")?.as_str().map(str::to_string)
}

/// A blackout in effect. `cut` holds the allow-list without the controller (and the
/// deny-list) until [`Fault::after_answer`] applies it.
#[derive(Debug)]
struct Cut {
    fault_id: String,
    table: Option<String>,
    cut: Option<(Vec<IpAddr>, Vec<ipnet::IpNet>)>,
    is_cut: bool,
    /// Packets its table's rules dropped, at the last reading.
    dropped: u64,
    /// Packets dropped by the table's rules before the cut replaced them (and their
    /// counters).
    dropped_before: u64,
}

impl Cut {
    /// Reads the table's drop counters, keeping the last reading when they cannot be read.
    fn count_dropped(&mut self) -> u64 {
        if let Some(t) = &self.table {
            match nft::counted(t) {
                Ok(rules) => self.dropped = rules.iter().flatten().sum(),
                Err(e) => tracing::warn!(table = %t, error = %e, "cannot read the blackout's counters"),
            }
        }
        self.dropped_before + self.dropped
    }
}

impl Fault for Cut {
    fn remove(&mut self, env: &Env<'_>) -> Result<(), FaultError> {
        env.conditions.clear(&self.fault_id);
        if let Some(t) = &self.table {
            nft::remove(t).map_err(FaultError::io(format!("cannot remove nf_tables table {t}")))?;
        }
        self.is_cut = false;
        Ok(())
    }

    /// Cuts the control plane; it then ends by `--max-cut` at the latest.
    fn after_answer(&mut self, env: &Env<'_>, left: Duration) -> Result<Option<Duration>, FaultError> {
        let Some((strict, deny)) = self.cut.take() else {
            return Ok(None);
        };
        let mut sooner = None;
        // Only nf_tables cuts the control connection; the proxy never carries it, so a
        // proxy-only blackout leaves the leases running.
        if self.table.is_some() {
            self.dropped_before = self.count_dropped();
            self.dropped = 0;
        }
        if let Some(t) = &self.table {
            let max_cut = env.config.max_cut;
            let until = left.min(max_cut);
            // The kernel ends the cut at --max-cut too, and within the dead-man switch's life
            // should this agent die.
            nft::replace(t, &strict, &deny, until.min(env.config.dead_man()))
                .map_err(FaultError::io("cannot cut the control plane"))?;
            self.is_cut = true;
            if until < left {
                tracing::warn!(fault = %self.fault_id, ?max_cut, "the control plane is cut; the blackout ends at --max-cut");
                sooner = Some(until);
            }
        }
        env.conditions
            .set(&self.fault_id, Condition::Blackout { allow: strict, deny });
        Ok(sooner)
    }

    fn cuts_control_plane(&self) -> bool {
        self.is_cut
    }

    fn dead_man(&self) -> Option<&str> {
        self.table.as_deref()
    }

    /// With nf_tables, the packets its rules dropped; the proxy's refusals are not counted.
    fn observed(&mut self) -> Observed {
        if self.table.is_none() {
            return Observed::default();
        }
        let dropped = self.count_dropped();
        Observed::default().with("packets_dropped", "packets", None, dropped as f64)
    }
}

/// Whether `ip` is an address of this host (loopback, or one it can bind).
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}
