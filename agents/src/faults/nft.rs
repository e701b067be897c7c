//! nf_tables over netlink, from Rust: just enough to install, refresh and delete a fault's
//! table.
//!
//! The table (family `inet`) has an input and an output chain. A blackout's accept loopback
//! and the allowed addresses and drop everything else. The table carries its own end, a
//! dead-man switch: a set with one element that the kernel expires, and a first rule in each
//! chain that accepts everything once that element is gone. The element lives a few leases
//! at most ([`super::Config::dead_man`]), never past the fault's deadline, and the living
//! agent [`refresh`]es it while the fault's owner holds its lease; so an agent that dies and
//! never comes back leaves the effect for at most that long, with no one left to delete the
//! table. Dropping is final across all base chains of a hook, so other firewalls on the host
//! cannot re-open what the blackout closes. No `nft` binary and no libnftnl: the messages
//! are encoded here.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_LOOKUP_F_INV: u32 = 1;
/// nft's `mark` type: a 4-byte integer that `nft list` can print.
const NFT_TYPE_MARK: u32 = 19;
/// The set whose one element is the blackout's life, and that element.
const LIVE_SET: &str = "live";
const LIVE_SET_ID: u32 = 1;
const LIVE_KEY: [u8; 4] = 1u32.to_be_bytes();
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const CAP_NET_ADMIN: u32 = 12;
const NLA_F_NESTED: u16 = 1 << 15;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_META_MARK: u32 = 3;
const NFT_META_IIFNAME: u32 = 6;
const NFT_SOCKET_MARK: u32 = 1;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_NFPROTO: u32 = 15;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CMP_LT: u32 = 2;
const NFT_NG_RANDOM: u32 = 1;
const NFT_BYTEORDER_HTON: u32 = 1;
const NFT_MSG_GETRULE: u16 = 7;
/// [`Expr::Chance`] draws from 0..CHANCE_SCALE: a hundredth of a percent.
pub const CHANCE_SCALE: u32 = 10_000;
const NFT_CMP_EQ: u32 = 0;
/// Runs before the usual filter priority (0) so the blackout sees packets first.
const PRIORITY: i32 = -200;

/// A base chain of the table: its hook, the interface key loopback is matched on, and where
/// the peer's address sits in the IPv4 and IPv6 headers (source in, destination out).
struct Chain {
    name: &'static str,
    hook: u32,
    iface_key: u32,
    v4_offset: u32,
    v6_offset: u32,
}

const CHAINS: [Chain; 2] = [
    Chain {
        name: "input",
        hook: NF_INET_LOCAL_IN,
        iface_key: NFT_META_IIFNAME,
        v4_offset: 12,
        v6_offset: 8,
    },
    Chain {
        name: "output",
        hook: NF_INET_LOCAL_OUT,
        iface_key: NFT_META_OIFNAME,
        v4_offset: 16,
        v6_offset: 24,
    },
];

/// Installs a blackout table named `table` for `left`: loopback and `allow` stay reachable
/// until then, and either nothing else (`deny` empty) or all but the networks of `deny`.
pub fn install(table: &str, allow: &[IpAddr], deny: &[ipnet::IpNet], left: Duration) -> io::Result<()> {
    let mut batch = Batch::new();
    add_table(&mut batch, table, allow, deny, left);
    batch.send()
}

/// Replaces the table's rules with a new allow-list, for `left`, in one transaction: there is
/// no moment without a blackout, nor one with both lists.
pub fn replace(table: &str, allow: &[IpAddr], deny: &[ipnet::IpNet], left: Duration) -> io::Result<()> {
    let mut batch = Batch::new();
    batch.message(NFT_MSG_DELTABLE, 0, |m| m.str_attr(1, table));
    add_table(&mut batch, table, allow, deny, left);
    batch.send()
}

fn add_table(batch: &mut Batch, table: &str, allow: &[IpAddr], deny: &[ipnet::IpNet], left: Duration) {
    add_guarded_table(batch, table, left);
    for c in &CHAINS {
        let chain = c.name;
        add_chain(batch, table, chain, c.hook);
        let mut lo = [0u8; 16];
        lo[..2].copy_from_slice(b"lo");
        batch.rule(table, chain, |r| {
            r.meta(c.iface_key);
            r.cmp(&lo);
            r.verdict(NF_ACCEPT);
        });
        for addr in allow {
            let (proto, offset, bytes) = match addr {
                IpAddr::V4(a) => (NFPROTO_IPV4, c.v4_offset, a.octets().to_vec()),
                IpAddr::V6(a) => (NFPROTO_IPV6, c.v6_offset, a.octets().to_vec()),
            };
            batch.rule(table, chain, |r| {
                r.meta(NFT_META_NFPROTO);
                r.cmp(&[proto]);
                r.payload(offset, bytes.len() as u32);
                r.cmp(&bytes);
                r.verdict(NF_ACCEPT);
            });
        }
        // Each drop counts what it drops: the blackout's observed effect ([`counted`]).
        for net in deny {
            batch.rule(table, chain, |r| {
                r.encode(c, &Expr::Peer(*net));
                r.encode(c, &Expr::Counter);
                r.verdict(NF_DROP);
            });
        }
        // With networks to deny, the rest passes by the chain's policy.
        if deny.is_empty() {
            batch.rule(table, chain, |r| {
                r.encode(c, &Expr::Counter);
                r.verdict(NF_DROP);
            });
        }
    }
}

/// The mark the agent puts on its own control connection's socket (`SO_MARK`, which only a
/// process with CAP_NET_ADMIN can set), so a fault's rules can let exactly that connection
/// pass ([`Expr::ControlConnection`]) and nothing else of the controller's address. Its bits
/// stay clear of those that kube-proxy (0xc000), Cilium (0x0f00) and Calico (0xffff0000) use.
pub const CONTROL_MARK: u32 = 0x30f1;

/// The table and its life: a set whose one element the kernel expires after `left`.
fn add_guarded_table(batch: &mut Batch, table: &str, left: Duration) {
    batch.message(NFT_MSG_NEWTABLE, NLM_F_CREATE, |m| {
        m.str_attr(1, table); // NFTA_TABLE_NAME
        m.u32_attr(2, 0); // NFTA_TABLE_FLAGS
    });
    batch.message(NFT_MSG_NEWSET, NLM_F_CREATE, |m| {
        m.str_attr(1, table); // NFTA_SET_TABLE
        m.str_attr(2, LIVE_SET); // NFTA_SET_NAME
        m.u32_attr(3, NFT_SET_TIMEOUT); // NFTA_SET_FLAGS
        m.u32_attr(4, NFT_TYPE_MARK); // NFTA_SET_KEY_TYPE
        m.u32_attr(5, LIVE_KEY.len() as u32); // NFTA_SET_KEY_LEN
        m.u32_attr(10, LIVE_SET_ID); // NFTA_SET_ID
    });
    add_life(batch, table, left, Some(LIVE_SET_ID));
}

/// The set's one element, living `left`; `set_id` names a set made in the same batch.
fn add_life(batch: &mut Batch, table: &str, left: Duration, set_id: Option<u32>) {
    // A zero timeout would mean "never expires": the shortest life is 1 ms.
    let timeout_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1);
    batch.message(NFT_MSG_NEWSETELEM, NLM_F_CREATE, |m| {
        m.str_attr(1, table); // NFTA_SET_ELEM_LIST_TABLE
        m.str_attr(2, LIVE_SET); // NFTA_SET_ELEM_LIST_SET
        m.nested(3, |elems| {
            // NFTA_SET_ELEM_LIST_ELEMENTS
            elems.nested(1, |e| {
                // NFTA_LIST_ELEM
                e.nested(1, |k| k.attr(1, &LIVE_KEY)); // NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE }
                e.u64_attr(4, timeout_ms); // NFTA_SET_ELEM_TIMEOUT
            });
        });
        if let Some(id) = set_id {
            m.u32_attr(4, id); // NFTA_SET_ELEM_LIST_SET_ID
        }
    });
}

/// The dead-man switch: gives the table's life element `left` from now, in one transaction
/// (the set is flushed and the element added again, so there is no moment without it, and
/// one that has already expired comes back: its owner is alive). A table that is gone stays
/// gone (`ENOENT`).
pub fn refresh(table: &str, left: Duration) -> io::Result<()> {
    let mut batch = Batch::new();
    // DELSETELEM without elements flushes the set.
    batch.message(NFT_MSG_DELSETELEM, 0, |m| {
        m.str_attr(1, table); // NFTA_SET_ELEM_LIST_TABLE
        m.str_attr(2, LIVE_SET); // NFTA_SET_ELEM_LIST_SET
    });
    add_life(&mut batch, table, left, None);
    batch.send()
}

/// A base chain that accepts by default, whose first rule accepts everything once the
/// table's life has expired.
fn add_chain(batch: &mut Batch, table: &str, chain: &str, hook: u32) {
    batch.message(NFT_MSG_NEWCHAIN, NLM_F_CREATE, |m| {
        m.str_attr(1, table); // NFTA_CHAIN_TABLE
        m.str_attr(3, chain); // NFTA_CHAIN_NAME
        m.nested(4, |h| {
            // NFTA_CHAIN_HOOK
            h.u32_attr(1, hook); // NFTA_HOOK_HOOKNUM
            h.u32_attr(2, PRIORITY as u32); // NFTA_HOOK_PRIORITY
        });
        m.u32_attr(5, NF_ACCEPT); // NFTA_CHAIN_POLICY
        m.str_attr(7, "filter"); // NFTA_CHAIN_TYPE
    });
    // Once the element has expired, everything passes: the fault is over.
    batch.rule(table, chain, |r| {
        r.load(&LIVE_KEY);
        r.lookup_missing(LIVE_SET, LIVE_SET_ID);
        r.verdict(NF_ACCEPT);
    });
}

/// Where a fault's chain hooks in: packets to this host, or from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Packets arriving for a local socket.
    Input,
    /// Packets a local socket sends.
    Output,
}

/// One match or action of a fault's rule; a rule's matches must all hold for its action.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// The packet's interface (in on input, out on output) is loopback.
    Loopback,
    /// The transport protocol (6 TCP, 17 UDP).
    L4Proto(u8),
    /// The transport destination port.
    DstPort(u16),
    /// The peer's address (source on input, destination on output) is in this network.
    Peer(ipnet::IpNet),
    /// A random draw below `n` in 10,000: drops n/100 percent of the packets matched so far.
    Chance(u32),
    /// The packet is of a socket marked [`CONTROL_MARK`] (the agent's control connection):
    /// its socket's mark on input, the packet's own (copied from its socket) on output.
    ControlConnection,
    /// Counts the packets that reach it (read back by [`counted`]).
    Counter,
    /// Accept the packet (no later rule of this table sees it).
    Accept,
    /// Drop the packet.
    Drop,
}

/// Installs a fault's table: for each hook, a chain with the life guard first, then `rules`
/// in order. The whole table is one transaction.
pub fn install_rules(table: &str, left: Duration, chains: &[(Hook, Vec<Vec<Expr>>)]) -> io::Result<()> {
    let mut batch = Batch::new();
    add_guarded_table(&mut batch, table, left);
    for (hook, rules) in chains {
        let c = match hook {
            Hook::Input => &CHAINS[0],
            Hook::Output => &CHAINS[1],
        };
        add_chain(&mut batch, table, c.name, c.hook);
        for rule in rules {
            batch.rule(table, c.name, |r| {
                for e in rule {
                    r.encode(c, e);
                }
            });
        }
    }
    batch.send()
}

/// Deletes the table; a table that is already gone is not an error.
pub fn remove(table: &str) -> io::Result<()> {
    let mut batch = Batch::new();
    batch.message(NFT_MSG_DELTABLE, 0, |m| m.str_attr(1, table));
    match batch.send() {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// The prefix of every table a fault installs: a sweep at start removes those no record names.
pub const TABLE_PREFIX: &str = "fl_";

/// The table a fault whose id hashes to `hash` (see `state::fault_hash`) installs.
pub fn table_for(hash: &str) -> String {
    format!("{TABLE_PREFIX}{hash}")
}

/// A table in effect, or left by a previous life of the agent: removing it deletes it.
#[derive(Debug)]
pub struct Table(pub String);

impl super::Fault for Table {
    fn remove(&mut self, _env: &super::Env<'_>) -> Result<(), super::FaultError> {
        remove(&self.0).map_err(super::FaultError::io(format!(
            "cannot remove nf_tables table {}",
            self.0
        )))
    }
}

/// Detection of a fault only nf_tables can inject: unavailable without CAP_NET_ADMIN or
/// under the proxy backend.
pub fn detect_only(setup: &super::Setup, fault: &str) -> super::Detection {
    if setup.blackout_backend == super::blackout::Backend::Proxy {
        return super::Detection::Unavailable(
            "--blackout-backend proxy: this agent never touches the host's network".into(),
        );
    }
    if available() {
        super::Detection::Ready
    } else {
        super::Detection::Unavailable(format!("{fault} needs CAP_NET_ADMIN (nf_tables)"))
    }
}

/// Detection of a fault nf_tables injects and the proxy can stand in for, on its own ports
/// only (blackhole-port, packet-loss): nf_tables when the agent may use it (and the backend
/// is not `proxy`), else the proxy if there is one, with a note of what it covers (`note`
/// is given the proxy's ports). The ports are returned when the proxy was chosen.
pub fn detect_or_proxy(
    setup: &super::Setup,
    fault: &str,
    note: impl FnOnce(&str) -> String,
) -> (super::Detection, Option<Vec<u16>>) {
    match detect_only(setup, fault) {
        super::Detection::Unavailable(why)
            if setup.blackout_backend != super::blackout::Backend::Nftables && !setup.proxy_ports.is_empty() =>
        {
            let ports = &setup.proxy_ports;
            (
                super::Detection::Limited(format!("{why}; {}", note(&port_list(ports)))),
                Some(ports.clone()),
            )
        }
        other => (other, None),
    }
}

/// "port 8080", "ports 8080, 9090".
pub fn port_list(ports: &[u16]) -> String {
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    match list.len() {
        1 => format!("port {}", list[0]),
        _ => format!("ports {}", list.join(", ")),
    }
}

/// The undo data of a fault that is one table: its name, recorded before it exists.
pub fn table_undo(hash: &str) -> serde_json::Value {
    serde_json::json!({ "table": table_for(hash) })
}

/// The table an undo record of [`table_undo`] names.
pub fn table_in(undo: &serde_json::Value, fault: &str) -> Result<String, super::FaultError> {
    undo.get("table")
        .and_then(|t| t.as_str())
        .map(str::to_string)
        .ok_or_else(|| super::FaultError::Refused(format!("internal error: a {fault} without its table")))
}

/// What a restart makes of a record of [`table_undo`]: the table to delete, if it names one.
pub fn restore_table(undo: &serde_json::Value) -> Box<dyn super::Fault> {
    match table_in(undo, "table fault") {
        Ok(t) => Box::new(Table(t)),
        Err(_) => Box::new(super::Gone),
    }
}

/// Whether this process may change nf_tables here. Never installs a rule: it needs
/// CAP_NET_ADMIN in its effective set, and then sends one transaction that creates an empty
/// table (no chain, so no hook sees a packet) and deletes it again, which the kernel
/// applies all or nothing.
pub fn available() -> bool {
    if !has_net_admin() {
        return false;
    }
    let probe = format!("faultline_probe_{}", std::process::id());
    let mut batch = Batch::new();
    batch.message(NFT_MSG_NEWTABLE, NLM_F_CREATE, |m| m.str_attr(1, &probe));
    batch.message(NFT_MSG_DELTABLE, 0, |m| m.str_attr(1, &probe));
    batch.send().is_ok()
}

/// Whether CAP_NET_ADMIN is in this process's effective capabilities.
pub fn has_net_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim().to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// The names of every `inet` table in this network namespace (a GETTABLE dump).
pub fn tables() -> io::Result<Vec<String>> {
    Ok(dump(NFT_MSG_GETTABLE, |_| {})?
        .iter()
        .filter_map(|attrs| string_attr(attrs, 1)) // NFTA_TABLE_NAME
        .collect())
}

/// What the counters of `table` have counted, in packets: per rule, in chain order, its
/// counters in rule order.
pub fn counted(table: &str) -> io::Result<Vec<Vec<u64>>> {
    let rules = dump(NFT_MSG_GETRULE, |m| m.str_attr(1, table))?; // NFTA_RULE_TABLE
    let mut found = Vec::new();
    for rule in &rules {
        // Another table's rules, should the kernel not filter the dump.
        if string_attr(rule, 1).as_deref() != Some(table) {
            continue;
        }
        let Some((_, exprs)) = Attrs(rule).find(|(k, _)| *k == 4) else {
            continue;
        }; // NFTA_RULE_EXPRESSIONS
        let counters: Vec<u64> = Attrs(exprs)
            .filter(|(_, elem)| string_attr(elem, 1).as_deref() == Some("counter")) // NFTA_EXPR_NAME
            .map(|(_, elem)| {
                Attrs(elem)
                    .find(|(k, _)| *k == 2) // NFTA_EXPR_DATA
                    .and_then(|(_, d)| Attrs(d).find(|(k, _)| *k == 2)) // NFTA_COUNTER_PACKETS
                    .and_then(|(_, v)| v.get(..8)?.try_into().ok())
                    .map_or(0, u64::from_be_bytes)
            })
            .collect();
        if !counters.is_empty() {
            found.push(counters);
        }
    }
    Ok(found)
}

/// The attributes of each object a dump request of `msg` (family `inet`) returns.
fn dump(msg: u16, fill: impl FnOnce(&mut Msg<'_>)) -> io::Result<Vec<Vec<u8>>> {
    let mut req = Vec::new();
    req.extend_from_slice(&0u32.to_ne_bytes()); // length, patched below
    req.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg).to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[NFPROTO_INET, 0, 0, 0]);
    fill(&mut Msg { buf: &mut req });
    let len = req.len() as u32;
    req[..4].copy_from_slice(&len.to_ne_bytes());
    let reply = (NFNL_SUBSYS_NFTABLES << 8) | (msg - 1); // GETx answers with NEWx
    let socket = Socket::open()?;
    socket.send(&req)?;
    let mut found = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = socket.recv(&mut buf)?;
        let mut at = 0;
        while at + 16 <= n {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().expect("2 bytes"));
            if len < 16 || at + len > n {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated netlink reply"));
            }
            match kind {
                NLMSG_DONE => return Ok(found),
                NLMSG_ERROR if len >= 20 => {
                    let code = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().expect("4 bytes"));
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                }
                // Attributes follow the header (16) and the nfgenmsg (4).
                k if k == reply && len >= 20 => found.push(buf[at + 20..at + len].to_vec()),
                _ => {}
            }
            at += (len + 3) & !3;
        }
    }
}

/// The attributes of a netlink attribute stream, as (type without flags, payload); stops at
/// the first malformed one.
struct Attrs<'a>(&'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let attrs = self.0;
        if attrs.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let k = u16::from_ne_bytes([attrs[2], attrs[3]]) & !NLA_F_NESTED;
        if len < 4 || len > attrs.len() {
            self.0 = &[];
            return None;
        }
        self.0 = &attrs[((len + 3) & !3).min(attrs.len())..];
        Some((k, &attrs[4..len]))
    }
}

/// The string value of the first attribute of type `kind` in `attrs`.
fn string_attr(attrs: &[u8], kind: u16) -> Option<String> {
    let (_, value) = Attrs(attrs).find(|(k, _)| *k == kind)?;
    let value = value.split(|b| *b == 0).next().unwrap_or_default();
    Some(String::from_utf8_lossy(value).into_owned())
}

/// One netlink message under construction; attributes are appended to `buf`.
struct Msg<'a> {
    buf: &'a mut Vec<u8>,
}

impl Msg<'_> {
    fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        pad(self.buf);
    }

    fn str_attr(&mut self, kind: u16, s: &str) {
        let mut bytes = s.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes);
    }

    /// Netfilter attributes carry integers in network byte order.
    fn u32_attr(&mut self, kind: u16, v: u32) {
        self.attr(kind, &v.to_be_bytes());
    }

    fn u64_attr(&mut self, kind: u16, v: u64) {
        self.attr(kind, &v.to_be_bytes());
    }

    fn nested(&mut self, kind: u16, fill: impl FnOnce(&mut Msg<'_>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        fill(&mut Msg { buf: self.buf });
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn expr(&mut self, name: &str, fill: impl FnOnce(&mut Msg<'_>)) {
        self.nested(1, |e| {
            // NFTA_LIST_ELEM
            e.str_attr(1, name); // NFTA_EXPR_NAME
            e.nested(2, fill); // NFTA_EXPR_DATA
        });
    }

    fn meta(&mut self, key: u32) {
        self.expr("meta", |d| {
            d.u32_attr(1, NFT_REG_1); // NFTA_META_DREG
            d.u32_attr(2, key); // NFTA_META_KEY
        });
    }

    fn payload(&mut self, offset: u32, len: u32) {
        self.expr("payload", |d| {
            d.u32_attr(1, NFT_REG_1); // NFTA_PAYLOAD_DREG
            d.u32_attr(2, NFT_PAYLOAD_NETWORK_HEADER); // NFTA_PAYLOAD_BASE
            d.u32_attr(3, offset); // NFTA_PAYLOAD_OFFSET
            d.u32_attr(4, len); // NFTA_PAYLOAD_LEN
        });
    }

    /// Loads a constant into register 1.
    fn load(&mut self, data: &[u8]) {
        self.expr("immediate", |d| {
            d.u32_attr(1, NFT_REG_1); // NFTA_IMMEDIATE_DREG
            d.nested(2, |v| v.attr(1, data)); // NFTA_IMMEDIATE_DATA { NFTA_DATA_VALUE }
        });
    }

    /// Matches when register 1 is not in the set.
    fn lookup_missing(&mut self, set: &str, set_id: u32) {
        self.expr("lookup", |d| {
            d.str_attr(1, set); // NFTA_LOOKUP_SET
            d.u32_attr(2, NFT_REG_1); // NFTA_LOOKUP_SREG
            d.u32_attr(4, set_id); // NFTA_LOOKUP_SET_ID
            d.u32_attr(5, NFT_LOOKUP_F_INV); // NFTA_LOOKUP_FLAGS
        });
    }

    fn cmp(&mut self, data: &[u8]) {
        self.expr("cmp", |d| {
            d.u32_attr(1, NFT_REG_1); // NFTA_CMP_SREG
            d.u32_attr(2, NFT_CMP_EQ); // NFTA_CMP_OP
            d.nested(3, |v| v.attr(1, data)); // NFTA_CMP_DATA { NFTA_DATA_VALUE }
        });
    }

    /// One [`Expr`] of a rule in chain `c`.
    fn encode(&mut self, c: &Chain, e: &Expr) {
        match e {
            Expr::Loopback => {
                let mut lo = [0u8; 16];
                lo[..2].copy_from_slice(b"lo");
                self.meta(c.iface_key);
                self.cmp(&lo);
            }
            Expr::L4Proto(p) => {
                self.meta(NFT_META_L4PROTO);
                self.cmp(&[*p]);
            }
            Expr::DstPort(port) => {
                self.expr("payload", |d| {
                    d.u32_attr(1, NFT_REG_1); // NFTA_PAYLOAD_DREG
                    d.u32_attr(2, NFT_PAYLOAD_TRANSPORT_HEADER); // NFTA_PAYLOAD_BASE
                    d.u32_attr(3, 2); // NFTA_PAYLOAD_OFFSET: the destination port
                    d.u32_attr(4, 2); // NFTA_PAYLOAD_LEN
                });
                self.cmp(&port.to_be_bytes());
            }
            Expr::Peer(net) => {
                let (proto, offset, addr, mask) = match net {
                    ipnet::IpNet::V4(n) => (
                        NFPROTO_IPV4,
                        c.v4_offset,
                        n.network().octets().to_vec(),
                        n.netmask().octets().to_vec(),
                    ),
                    ipnet::IpNet::V6(n) => (
                        NFPROTO_IPV6,
                        c.v6_offset,
                        n.network().octets().to_vec(),
                        n.netmask().octets().to_vec(),
                    ),
                };
                self.meta(NFT_META_NFPROTO);
                self.cmp(&[proto]);
                self.payload(offset, addr.len() as u32);
                self.expr("bitwise", |d| {
                    d.u32_attr(1, NFT_REG_1); // NFTA_BITWISE_SREG
                    d.u32_attr(2, NFT_REG_1); // NFTA_BITWISE_DREG
                    d.u32_attr(3, mask.len() as u32); // NFTA_BITWISE_LEN
                    d.nested(4, |v| v.attr(1, &mask)); // NFTA_BITWISE_MASK
                    d.nested(5, |v| v.attr(1, &vec![0u8; mask.len()])); // NFTA_BITWISE_XOR
                });
                self.cmp(&addr);
            }
            Expr::Chance(n) => {
                self.expr("numgen", |d| {
                    d.u32_attr(1, NFT_REG_1); // NFTA_NG_DREG
                    d.u32_attr(2, CHANCE_SCALE); // NFTA_NG_MODULUS
                    d.u32_attr(3, NFT_NG_RANDOM); // NFTA_NG_TYPE
                });
                // numgen writes a host-order u32, and `cmp` orders bytes as memcmp does: turn it
                // into network order first, as nft itself does.
                self.expr("byteorder", |d| {
                    d.u32_attr(1, NFT_REG_1); // NFTA_BYTEORDER_SREG
                    d.u32_attr(2, NFT_REG_1); // NFTA_BYTEORDER_DREG
                    d.u32_attr(3, NFT_BYTEORDER_HTON); // NFTA_BYTEORDER_OP
                    d.u32_attr(4, 4); // NFTA_BYTEORDER_LEN
                    d.u32_attr(5, 4); // NFTA_BYTEORDER_SIZE
                });
                self.expr("cmp", |d| {
                    d.u32_attr(1, NFT_REG_1); // NFTA_CMP_SREG
                    d.u32_attr(2, NFT_CMP_LT); // NFTA_CMP_OP
                    d.nested(3, |v| v.attr(1, &n.to_be_bytes())); // NFTA_CMP_DATA
                });
            }
            Expr::ControlConnection => {
                if c.hook == NF_INET_LOCAL_IN {
                    self.expr("socket", |d| {
                        d.u32_attr(1, NFT_SOCKET_MARK); // NFTA_SOCKET_KEY
                        d.u32_attr(2, NFT_REG_1); // NFTA_SOCKET_DREG
                    });
                } else {
                    self.meta(NFT_META_MARK);
                }
                // A mark sits in the register in host byte order.
                self.cmp(&CONTROL_MARK.to_ne_bytes());
            }
            Expr::Counter => self.expr("counter", |d| {
                d.u64_attr(1, 0); // NFTA_COUNTER_BYTES
                d.u64_attr(2, 0); // NFTA_COUNTER_PACKETS
            }),
            Expr::Accept => self.verdict(NF_ACCEPT),
            Expr::Drop => self.verdict(NF_DROP),
        }
    }

    fn verdict(&mut self, code: u32) {
        self.expr("immediate", |d| {
            d.u32_attr(1, NFT_REG_VERDICT); // NFTA_IMMEDIATE_DREG
            d.nested(2, |data| {
                // NFTA_IMMEDIATE_DATA { NFTA_DATA_VERDICT { NFTA_VERDICT_CODE } }
                data.nested(2, |v| v.u32_attr(1, code));
            });
        });
    }
}

fn pad(buf: &mut Vec<u8>) {
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
}

/// A netfilter transaction: begin, messages, end; applied by the kernel all or nothing.
struct Batch {
    buf: Vec<u8>,
    seq: u32,
    acked: Vec<u32>,
}

impl Batch {
    fn new() -> Self {
        let mut b = Batch {
            buf: Vec::new(),
            seq: 0,
            acked: Vec::new(),
        };
        b.header(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, |_| {});
        b
    }

    fn header(&mut self, kind: u16, flags: u16, family: u8, fill: impl FnOnce(&mut Msg<'_>)) {
        self.seq += 1;
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]); // length, patched below
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        // Port id 0: the kernel.
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version, resource id (the subsystem, for batch messages).
        self.buf.push(family);
        self.buf.push(0);
        self.buf.extend_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
        fill(&mut Msg { buf: &mut self.buf });
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn message(&mut self, msg: u16, flags: u16, fill: impl FnOnce(&mut Msg<'_>)) {
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | msg;
        self.header(kind, NLM_F_REQUEST | NLM_F_ACK | flags, NFPROTO_INET, fill);
        self.acked.push(self.seq);
    }

    fn rule(&mut self, table: &str, chain: &str, exprs: impl FnOnce(&mut Msg<'_>)) {
        self.message(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, |m| {
            m.str_attr(1, table); // NFTA_RULE_TABLE
            m.str_attr(2, chain); // NFTA_RULE_CHAIN
            m.nested(4, exprs); // NFTA_RULE_EXPRESSIONS
        });
    }

    /// Sends the batch and waits for every acknowledgement; the first error wins.
    fn send(mut self) -> io::Result<()> {
        self.header(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, |_| {});
        let socket = Socket::open()?;
        socket.send(&self.buf)?;
        let mut pending = self.acked;
        let mut buf = vec![0u8; 1 << 16];
        while !pending.is_empty() {
            let n = socket.recv(&mut buf)?;
            let mut at = 0;
            while at + 16 <= n {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().expect("2 bytes"));
                let seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().expect("4 bytes"));
                if len < 16 || at + len > n {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated netlink reply"));
                }
                if kind == NLMSG_ERROR && len >= 20 {
                    let code = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().expect("4 bytes"));
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    pending.retain(|s| *s != seq);
                }
                at += (len + 3) & !3;
            }
        }
        Ok(())
    }
}

/// Socket buffers of a batch, each way: room for the longest blackout the limits accept.
const BATCH_BUFFER_BYTES: libc::c_int = 8 << 20;

/// A netfilter netlink socket, closed on drop.
struct Socket(i32);

impl Socket {
    fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2) call; the descriptor is owned by the returned value.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_NETFILTER) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let socket = Socket(fd);
        let timeout = libc::timeval { tv_sec: 2, tv_usec: 0 };
        // SAFETY: fd is valid; the option value is a timeval of the size given.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        // A batch goes out in one message, and every part of it is acknowledged: a blackout
        // with thousands of allowed addresses outgrows the default buffers both ways. The
        // FORCE options need CAP_NET_ADMIN, which changing nf_tables needs anyway.
        let size: libc::c_int = BATCH_BUFFER_BYTES;
        for option in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
            // SAFETY: fd is valid; the option value is a c_int of the size given.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    option,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                );
            }
        }
        Ok(socket)
    }

    fn send(&self, buf: &[u8]) -> io::Result<()> {
        // SAFETY: zeroed sockaddr_nl is the kernel's address (pid 0, no groups).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: buf and addr are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.0,
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned by this value and closed once.
        unsafe { libc::close(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested_lengths_patched() {
        let mut buf = Vec::new();
        let mut m = Msg { buf: &mut buf };
        m.nested(4, |n| n.str_attr(1, "abc"));
        // nested header (4) + attr header (4) + "abc\0" (4)
        assert_eq!(buf.len(), 12);
        assert_eq!(u16::from_ne_bytes([buf[0], buf[1]]), 12);
        assert_eq!(u16::from_ne_bytes([buf[2], buf[3]]), 4 | NLA_F_NESTED);
        assert_eq!(&buf[8..12], b"abc\0");
    }

    /// Runs `f` on a thread in a network namespace of its own (as root), so nothing it
    /// installs can touch the host; `None` when not root.
    fn in_private_netns<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: nf_tables tests need root");
            return None;
        }
        std::thread::spawn(move || {
            // SAFETY: unshare of the network namespace affects this thread only.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET)");
            f()
        })
        .join()
        // A failed assertion in `f` fails the test; it is not a skip.
        .map_or_else(|panic| std::panic::resume_unwind(panic), Some)
    }

    #[test]
    fn a_blackout_takes_the_longest_allow_list_the_limits_accept() {
        let (_, most) = crate::faults::blackout::ALLOW;
        let allow: Vec<IpAddr> = (0..most)
            .map(|i| IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]))
            .collect();
        let Some(result) = in_private_netns(move || {
            let installed = install("fl_00000000000000bb", &allow, &[], Duration::from_secs(60));
            let _ = remove("fl_00000000000000bb");
            installed.map_err(|e| e.to_string())
        }) else {
            return;
        };
        result.unwrap();
    }

    #[test]
    fn the_probe_leaves_nothing_and_the_sweep_lists_tables() {
        let Some((available, before, during, after)) = in_private_netns(|| {
            let available = available();
            let before = tables().unwrap();
            install("fl_00000000000000aa", &[], &[], Duration::from_secs(60)).unwrap();
            let during = tables().unwrap();
            remove("fl_00000000000000aa").unwrap();
            (available, before, during, tables().unwrap())
        }) else {
            return;
        };
        assert!(available);
        assert!(before.is_empty(), "the probe left {before:?}");
        assert_eq!(during, vec!["fl_00000000000000aa".to_string()]);
        assert!(after.is_empty());
    }

    #[test]
    fn a_table_name_is_read_from_its_attributes() {
        let mut buf = Vec::new();
        let mut m = Msg { buf: &mut buf };
        m.u32_attr(2, 0);
        m.str_attr(1, "fl_0123456789abcdef");
        assert_eq!(string_attr(&buf, 1).as_deref(), Some("fl_0123456789abcdef"));
        assert_eq!(string_attr(&buf, 3), None);
        assert_eq!(string_attr(&[200, 0, 1, 0], 1), None, "a length past the end");
    }

    #[test]
    fn batch_messages_are_framed_and_acked() {
        let mut b = Batch::new();
        b.message(NFT_MSG_NEWTABLE, NLM_F_CREATE, |m| m.str_attr(1, "t"));
        let first_len = u32::from_ne_bytes(b.buf[0..4].try_into().unwrap()) as usize;
        assert_eq!(first_len, 20, "batch begin is a bare header with nfgenmsg");
        let kind = u16::from_ne_bytes(b.buf[first_len + 4..first_len + 6].try_into().unwrap());
        assert_eq!(kind, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE);
        assert_eq!(b.acked, vec![2]);
        assert_eq!(b.buf.len() % 4, 0);
    }

    /// The table as `nft` lists it, in the network namespace of thread `tid` of this process.
    fn listed(tid: i32, table: &str) -> String {
        let ns = format!("--net=/proc/{}/task/{tid}/ns/net", std::process::id());
        let out = std::process::Command::new("nsenter")
            .args([ns.as_str(), "nft", "list", "table", "inet", table])
            .output()
            .expect("nsenter and nft are installed");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn the_kernel_expires_the_blackout() {
        // A network namespace of this thread alone, so the host is never cut off.
        in_private_netns(|| {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            // The longest fault the validator allows.
            install("fl_long", &[], &[], Duration::from_secs(12 * 3600)).unwrap();
            assert!(listed(tid, "fl_long").contains("timeout 12h"));
            install("fl_test", &["10.1.2.3".parse().unwrap()], &[], Duration::from_secs(60)).unwrap();
            let t = listed(tid, "fl_test");
            assert!(t.contains("flags timeout") && t.contains("timeout 1m"), "{t}");
            assert_eq!(t.matches("!= @live accept").count(), 2, "{t}");
            replace("fl_test", &[], &[], Duration::from_millis(300)).unwrap();
            let t = listed(tid, "fl_test");
            assert!(t.contains("timeout 300ms") && !t.contains("10.1.2.3"), "{t}");
            std::thread::sleep(Duration::from_millis(400));
            let t = listed(tid, "fl_test");
            assert!(!t.contains("elements"), "the element should have expired:\n{t}");
        });
    }

    #[test]
    fn the_living_agent_refreshes_the_dead_man_switch() {
        in_private_netns(|| {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            install_rules(
                "fl_dead",
                Duration::from_millis(300),
                &[(Hook::Input, vec![vec![Expr::Drop]])],
            )
            .unwrap();
            // Refreshed before it lapses: it lives on, for the new life.
            refresh("fl_dead", Duration::from_secs(7)).unwrap();
            let t = listed(tid, "fl_dead");
            assert!(t.contains("timeout 7s"), "{t}");
            refresh("fl_dead", Duration::from_millis(200)).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            let t = listed(tid, "fl_dead");
            assert!(!t.contains("elements"), "not refreshed, the element lapses:\n{t}");
            // An element that lapsed comes back while its owner lives.
            refresh("fl_dead", Duration::from_secs(5)).unwrap();
            assert!(listed(tid, "fl_dead").contains("timeout 5s"));
            remove("fl_dead").unwrap();
            let gone = refresh("fl_dead", Duration::from_secs(5)).unwrap_err();
            assert_eq!(
                gone.raw_os_error(),
                Some(libc::ENOENT),
                "a table that is gone stays gone"
            );
        });
    }

    #[test]
    fn a_deny_list_drops_only_its_networks_after_the_allowed_peers() {
        in_private_netns(|| {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            let deny: Vec<ipnet::IpNet> = vec!["10.2.0.7/32".parse().unwrap(), "10.3.0.0/16".parse().unwrap()];
            install(
                "fl_deny",
                &["10.1.0.1".parse().unwrap()],
                &deny,
                Duration::from_secs(60),
            )
            .unwrap();
            let t = listed(tid, "fl_deny");
            let allowed = t.find("ip saddr 10.1.0.1 accept").expect(&t);
            let denied = t.find("ip saddr 10.2.0.7 counter packets 0 bytes 0 drop").expect(&t);
            assert!(allowed < denied, "allowed peers come first:\n{t}");
            assert!(t.contains("ip daddr 10.3.0.0/16 counter packets 0 bytes 0 drop"), "{t}");
            assert!(
                !t.lines().any(|l| l.trim().starts_with("counter")),
                "nothing but the denied networks is dropped:\n{t}"
            );
            let counters = counted("fl_deny").unwrap();
            assert_eq!(counters.len(), t.matches(" drop").count(), "one counter per drop:\n{t}");
            remove("fl_deny").unwrap();
        });
    }

    #[test]
    fn fault_rules_are_what_nft_lists_and_their_counters_read_back() {
        in_private_netns(|| {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            let net: ipnet::IpNet = "10.9.0.0/16".parse().unwrap();
            install_rules(
                "fl_rules",
                Duration::from_secs(60),
                &[
                    (
                        Hook::Input,
                        vec![
                            vec![Expr::Loopback, Expr::Accept],
                            vec![Expr::ControlConnection, Expr::Accept],
                            vec![
                                Expr::Peer(net),
                                Expr::Counter,
                                Expr::Chance(700),
                                Expr::Counter,
                                Expr::Drop,
                            ],
                        ],
                    ),
                    (
                        Hook::Output,
                        vec![
                            vec![Expr::ControlConnection, Expr::Accept],
                            vec![Expr::L4Proto(17), Expr::DstPort(5353), Expr::Counter, Expr::Drop],
                        ],
                    ),
                ],
            )
            .unwrap();
            let t = listed(tid, "fl_rules");
            assert!(t.contains("iifname \"lo\" accept"), "{t}");
            // The control connection passes before the draw (input: its socket's mark) and
            // before the drop (output: the packet's mark, from its socket).
            let (pass_in, lossy) = (
                t.find("socket mark 0x000030f1 accept").expect(&t),
                t.find("numgen").expect(&t),
            );
            assert!(pass_in < lossy, "{t}");
            let (pass_out, drop) = (
                t.find("meta mark 0x000030f1 accept").expect(&t),
                t.find("udp dport").expect(&t),
            );
            assert!(pass_out < drop, "{t}");
            assert!(t.contains("ip saddr 10.9.0.0/16 counter packets 0 bytes 0 numgen random mod 10000 < 700 counter packets 0 bytes 0 drop"), "{t}");
            assert!(t.contains("udp dport 5353 counter packets 0 bytes 0 drop"), "{t}");
            assert_eq!(t.matches("!= @live accept").count(), 2, "{t}");
            // Per rule with counters, in chain order; packets counted are seen end to end in
            // tests/netfaults.rs.
            assert_eq!(counted("fl_rules").unwrap(), vec![vec![0, 0], vec![0]]);
            remove("fl_rules").unwrap();
        });
    }
}
