//! A team's own compose file in the multi-AZ topology: reading its `x-faultline` blocks,
//! refusing what cannot be placed (every problem at once, each with its key and a hint), and
//! the typed placement the rendering ([`render`]) and `topology up --compose` work from.
//!
//! The user's file is only read. A service with a block becomes hosts: replicas
//! `<service>-<az><n>` spread over its zones, each with a fixed address on its AZ network and
//! on the control network, or, with one zone and no `replicasPerZone`, a single host that
//! keeps the service's name. A service without a block runs as written, on every network.

pub mod render;

use crate::diagnostic::did_you_mean;
use serde_norway::{Mapping, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The topology's availability zones, each with its network `10.42.<n>.0/24` (n = 1, 2, 3).
pub const ZONES: [&str; 3] = ["az-a", "az-b", "az-c"];
/// The network on which agents reach the controller (at its gateway, 10.42.0.1).
pub const CONTROL_NETWORK: &str = "control";
/// The keys of an `x-faultline` block.
pub const BLOCK_KEYS: [&str; 5] = ["zones", "replicasPerZone", "tags", "proxy", "loadBalancer"];
const PROXY_KEYS: [&str; 2] = ["listen", "upstream"];
const LB_KEYS: [&str; 2] = ["port", "health"];
/// Tag keys faultline sets on every host; a block may not set them.
const RESERVED_TAGS: [&str; 4] = [
    "aws:autoscaling:groupName",
    "faultline:platform",
    "faultline:subnet:Name",
    "faultline:subnet:AzImpairmentPower",
];
/// Host addresses on a network are `.11` to `.127`; `.128/25` is left to Docker for the
/// services that run as written, so that no dynamic address takes a fixed one.
const FIRST_HOST: u8 = 11;
const LAST_FIXED: u8 = 127;
/// Load balancers take `.2` to `.10` (the demo's is at `.2`).
const FIRST_LB: u8 = 2;
const LAST_LB: u8 = 10;

/// The subnet of a network of the topology: control is 10.42.0.0/24, az-a 10.42.1.0/24, ...
pub fn network_index(network: &str) -> u8 {
    ZONES.iter().position(|z| *z == network).map_or(0, |i| i as u8 + 1)
}

/// An address on a network of the topology.
pub fn address(network: &str, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 42, network_index(network), host)
}

/// One thing wrong with a compose file: where (`services.api.x-faultline.zones[1]`), what,
/// and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key, as a dotted path with list indices.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}\n    hint: {}", self.path, self.message, self.hint)
    }
}

/// Why a compose file cannot be placed.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// The file cannot be read.
    #[error("cannot read the compose file {}: {why}", .file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// What the system said.
        why: String,
    },
    /// The file is not YAML.
    #[error("{}: not YAML: {why}", .file.display())]
    Yaml {
        /// The file.
        file: PathBuf,
        /// What the parser said, with the line.
        why: String,
    },
    /// The file parses but cannot be placed in the topology.
    #[error("{} cannot be placed in the topology ({} problem{}):\n{}", .file.display(), .problems.len(),
        if .problems.len() == 1 { "" } else { "s" },
        .problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

/// The agent's proxy in front of a replica's service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proxy {
    /// Port the proxy serves on (what others and the balancer reach).
    pub listen: u16,
    /// Port of the service behind it, on the replica's loopback.
    pub upstream: u16,
}

/// faultline's balancer in front of a service's hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancer {
    /// Its compose service, `<service>-lb`; it answers to the service's own name.
    pub name: String,
    /// The hosts' port it sends to, which it also listens on and publishes on 127.0.0.1.
    pub port: u16,
    /// The hosts' health check path.
    pub health: String,
    /// Its address on the control network and on each AZ network, in that order.
    pub addresses: Vec<(&'static str, Ipv4Addr)>,
}

/// One host the topology makes of a service: its agent runs beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Host id, `api-a1` (or the service's name for a single host).
    pub id: String,
    /// Its AZ.
    pub az: &'static str,
    /// Its address on its AZ's network (the agent's `FAULTLINE_ADDRESS`).
    pub address: Ipv4Addr,
    /// Its address on the control network.
    pub control_address: Ipv4Addr,
    /// Its tags, in order: the block's, then those faultline sets.
    pub tags: Vec<(String, String)>,
}

/// A service with an `x-faultline` block: the hosts made of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Its hosts, zone by zone.
    pub hosts: Vec<Host>,
    /// Whether it is replicated (host ids `<service>-<az><n>`) rather than one host named
    /// after the service.
    pub replicated: bool,
    /// The agent's proxy, when the block has one.
    pub proxy: Option<Proxy>,
    /// The balancer, when the block has one.
    pub load_balancer: Option<LoadBalancer>,
}

/// One service of the user's file.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Its name in the file.
    pub name: String,
    /// Its definition as written (merge keys applied), without the `x-faultline` block.
    pub definition: Mapping,
    /// Its hosts, when it joins the topology; `None`: it runs as written.
    pub group: Option<Group>,
}

/// A compose file placed in the topology.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The document's top level as written (merge keys applied).
    pub document: Mapping,
    /// Its services, in file order.
    pub services: Vec<Service>,
}

impl Placement {
    /// Every host of the topology, in file order.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.services
            .iter()
            .filter_map(|s| s.group.as_ref())
            .flat_map(|g| &g.hosts)
    }

    /// Reads and places a compose file.
    pub fn load(file: &Path) -> Result<Placement, ComposeError> {
        let text = std::fs::read_to_string(file).map_err(|e| ComposeError::Read {
            file: file.to_path_buf(),
            why: e.to_string(),
        })?;
        Placement::parse(&text).map_err(|e| match e {
            Parsed::Yaml(why) => ComposeError::Yaml {
                file: file.to_path_buf(),
                why,
            },
            Parsed::Invalid(problems) => ComposeError::Invalid {
                file: file.to_path_buf(),
                problems,
            },
        })
    }

    /// Places the text of a compose file.
    pub fn parse(text: &str) -> Result<Placement, Parsed> {
        let mut value: Value = serde_norway::from_str(text).map_err(|e| Parsed::Yaml(e.to_string()))?;
        value.apply_merge().map_err(|e| Parsed::Yaml(e.to_string()))?;
        let mut p = Problems::default();
        let Value::Mapping(document) = value else {
            p.add(
                "(document)",
                "is not a mapping of compose keys",
                "a compose file starts with `services:`",
            );
            return Err(Parsed::Invalid(p.0));
        };
        let services = match document.get("services") {
            Some(Value::Mapping(s)) if !s.is_empty() => s.clone(),
            _ => {
                p.add(
                    "services",
                    "no services",
                    "a compose file lists its services under `services:`",
                );
                return Err(Parsed::Invalid(p.0));
            }
        };
        check_networks(&document, &mut p);
        let mut alloc = Allocator::default();
        let mut placed = Vec::new();
        for (name, def) in &services {
            let Some(name) = name.as_str() else {
                p.add(
                    "services",
                    format!("the service name {name:?} is not a string"),
                    "name services with strings",
                );
                continue;
            };
            let at = format!("services.{name}");
            let Value::Mapping(def) = def else {
                p.add(
                    &at,
                    "is not a mapping",
                    "a service is a mapping of keys: image, command, ...",
                );
                continue;
            };
            let mut definition = def.clone();
            let group = match definition.remove("x-faultline") {
                Some(block) => read_block(name, &definition, &block, &mut alloc, &mut p),
                None => {
                    check_as_written(name, &definition, &mut p);
                    None
                }
            };
            placed.push(Service {
                name: name.to_string(),
                definition,
                group,
            });
        }
        check_depends_on(&placed, &mut p);
        check_generated_names(&placed, &mut p);
        check_published(&placed, &mut p);
        if p.0.is_empty() {
            Ok(Placement {
                document,
                services: placed,
            })
        } else {
            Err(Parsed::Invalid(p.0))
        }
    }
}

/// Why a text could not be placed: not YAML, or the problems found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The parser's message.
    Yaml(String),
    /// Every problem found.
    Invalid(Vec<Problem>),
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>, hint: &str) {
        self.add_hint(path, message, hint.to_string());
    }

    fn add_hint(&mut self, path: impl Into<String>, message: impl Into<String>, hint: String) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
            hint,
        });
    }
}

/// Hands out the fixed addresses in file order.
#[derive(Default)]
struct Allocator {
    /// Next host number per network (index 0: control).
    next: [u8; 4],
    lbs: u8,
}

impl Allocator {
    fn host(&mut self, network: &str) -> Option<Ipv4Addr> {
        let n = &mut self.next[network_index(network) as usize];
        let host = FIRST_HOST + *n;
        (host <= LAST_FIXED).then(|| {
            *n += 1;
            address(network, host)
        })
    }

    fn lb(&mut self) -> Option<u8> {
        let host = FIRST_LB + self.lbs;
        (host <= LAST_LB).then(|| {
            self.lbs += 1;
            host
        })
    }
}

fn zones_list() -> String {
    ZONES.join(", ")
}

/// Top-level networks may not take the topology's names.
fn check_networks(document: &Mapping, p: &mut Problems) {
    if let Some(Value::Mapping(nets)) = document.get("networks") {
        for name in nets.keys().filter_map(Value::as_str) {
            if name == CONTROL_NETWORK || ZONES.contains(&name) {
                p.add(
                    format!("networks.{name}"),
                    format!(
                        "the topology has a network of this name ({CONTROL_NETWORK}, {})",
                        zones_list()
                    ),
                    "rename your network; faultline makes the control and AZ networks itself",
                );
            }
        }
    }
}

/// What holds for any service, placed or not.
fn check_common(name: &str, def: &Mapping, p: &mut Problems) {
    if def.get("network_mode").and_then(Value::as_str) == Some("host") {
        p.add(
            format!("services.{name}.network_mode"),
            "network_mode: host cannot be placed: the service would share the machine's network, outside every zone",
            "remove network_mode; faultline puts the service on the topology's networks",
        );
    }
}

fn check_as_written(name: &str, def: &Mapping, p: &mut Problems) {
    check_common(name, def, p);
    if def.get("image").is_none() && def.get("build").is_none() {
        p.add(
            format!("services.{name}"),
            "has neither `image` nor `build`",
            "name the image the service runs: `image: NAME:TAG`",
        );
    }
}

/// Reads an `x-faultline` block and checks the service it is on.
fn read_block(name: &str, def: &Mapping, block: &Value, alloc: &mut Allocator, p: &mut Problems) -> Option<Group> {
    let at = format!("services.{name}.x-faultline");
    check_common(name, def, p);
    let Value::Mapping(block) = block else {
        p.add(
            &at,
            "is not a mapping",
            "x-faultline: {zones: [az-a, az-b, az-c], replicasPerZone: 2}",
        );
        return None;
    };
    let before = p.0.len();
    unknown_keys(&at, block, &BLOCK_KEYS, p);
    let zones = read_zones(&at, block.get("zones"), p);
    let replicas = match block.get("replicasPerZone") {
        None => None,
        Some(v) => match v.as_i64() {
            Some(n) if (1..=100).contains(&n) => Some(n as u8),
            Some(n) if n < 1 => {
                p.add(
                    format!("{at}.replicasPerZone"),
                    format!("is {n}; a zone needs at least one replica"),
                    "set replicasPerZone to 1 or more, or remove the service from zones it should not be in",
                );
                None
            }
            _ => {
                p.add(
                    format!("{at}.replicasPerZone"),
                    format!("{} is not a whole number from 1 to 100", show(v)),
                    "replicasPerZone: 2",
                );
                None
            }
        },
    };
    let tags = read_tags(&at, block.get("tags"), p);
    let proxy = block.get("proxy").and_then(|v| read_proxy(&at, v, p));
    let load_balancer = block.get("loadBalancer").and_then(|v| read_lb(&at, v, p));
    let replicated = zones.len() > 1 || replicas.is_some();
    let count = zones.len() * replicas.unwrap_or(1) as usize;
    if replicated && count > 1 {
        if def.contains_key("container_name") {
            p.add(
                format!("services.{name}.container_name"),
                "a fixed container_name cannot be given to every replica",
                "remove container_name; faultline names each replica's container faultline-<service>-<az><n>",
            );
        }
        if let Some(Value::Sequence(ports)) = def.get("ports") {
            for (i, port) in ports.iter().enumerate() {
                if let Some(host) = published(port) {
                    p.add_hint(
                        format!("services.{name}.ports[{i}]"),
                        format!("host port {} would be published by each of the {count} replicas", host.port),
                        "publish only the container port (\"8080\"), or give the block a loadBalancer, which is published once on 127.0.0.1".into(),
                    );
                }
            }
        }
    }
    let deploy_replicas = def.get("deploy").and_then(|d| d.get("replicas")).is_some();
    if def.contains_key("scale") || deploy_replicas {
        let key = if deploy_replicas { "deploy.replicas" } else { "scale" };
        p.add(
            format!("services.{name}.{key}"),
            "compose would start copies of each host that faultline cannot name or reach",
            "remove it; x-faultline.replicasPerZone sets the number of replicas",
        );
    }
    if def.contains_key("networks") {
        p.add(
            format!("services.{name}.networks"),
            "a service in the topology is on its AZ's network and the control network only",
            "remove networks; other services reach it by its name on those networks",
        );
    }
    if let Some(mode) = def.get("network_mode").and_then(Value::as_str).filter(|m| *m != "host") {
        p.add(
            format!("services.{name}.network_mode"),
            format!("network_mode: {mode} cannot be placed: faultline gives the host its own network in its zone"),
            "remove network_mode",
        );
    }
    match (def.get("image"), def.get("build")) {
        (Some(Value::String(_)), _) => {}
        (Some(v), _) => p.add(
            format!("services.{name}.image"),
            format!("{} is not an image name", show(v)),
            "image: NAME:TAG",
        ),
        (None, Some(_)) => p.add(
            format!("services.{name}.build"),
            "a build with no image name: every replica must run the one image it makes",
            "add `image: NAME:TAG` beside build",
        ),
        (None, None) => p.add(
            format!("services.{name}.image"),
            "missing: faultline runs the service's image unchanged and needs its name",
            "add `image: NAME:TAG`",
        ),
    }
    if p.0.len() > before {
        return None;
    }
    let mut hosts = Vec::new();
    for az in &zones {
        let letter = &az[3..];
        for n in 1..=replicas.unwrap_or(1) {
            let id = if replicated {
                format!("{name}-{letter}{n}")
            } else {
                name.to_string()
            };
            let (Some(address), Some(control_address)) = (alloc.host(az), alloc.host(CONTROL_NETWORK)) else {
                p.add(
                    &at,
                    format!(
                        "too many hosts: a network of the topology holds {} fixed addresses",
                        LAST_FIXED - FIRST_HOST + 1
                    ),
                    "lower replicasPerZone",
                );
                return None;
            };
            let mut t = tags.clone();
            if replicated {
                t.push(("aws:autoscaling:groupName".into(), name.into()));
            }
            // The subnet tags as the demo topology sets them: subnet targets find the host's subnet by them.
            t.push(("faultline:subnet:Name".into(), format!("faultline-{az}")));
            t.push(("faultline:subnet:AzImpairmentPower".into(), "DisruptSubnet".into()));
            t.push(("faultline:platform".into(), "docker".into()));
            hosts.push(Host {
                id,
                az,
                address,
                control_address,
                tags: t,
            });
        }
    }
    let load_balancer = match load_balancer {
        Some((port, health)) => {
            let Some(host) = alloc.lb() else {
                p.add(
                    format!("{at}.loadBalancer"),
                    format!(
                        "too many load balancers: the topology has room for {}",
                        LAST_LB - FIRST_LB + 1
                    ),
                    "put a balancer in front of fewer services",
                );
                return None;
            };
            let addresses = std::iter::once(CONTROL_NETWORK)
                .chain(ZONES)
                .map(|n| (n, address(n, host)))
                .collect();
            Some(LoadBalancer {
                name: format!("{name}-lb"),
                port,
                health,
                addresses,
            })
        }
        None => None,
    };
    Some(Group {
        hosts,
        replicated,
        proxy,
        load_balancer,
    })
}

fn show(v: &Value) -> String {
    serde_norway::to_string(v).map_or_else(|_| format!("{v:?}"), |s| s.trim_end().to_string())
}

fn read_zones(at: &str, v: Option<&Value>, p: &mut Problems) -> Vec<&'static str> {
    let Some(v) = v else {
        p.add_hint(
            at,
            "no zones",
            format!("say where the service runs: `zones: [{}]`", zones_list()),
        );
        return Vec::new();
    };
    let Value::Sequence(list) = v else {
        p.add_hint(
            format!("{at}.zones"),
            "is not a list",
            format!("zones: [{}]", zones_list()),
        );
        return Vec::new();
    };
    if list.is_empty() {
        p.add_hint(
            format!("{at}.zones"),
            "is empty",
            format!("name one or more of {}", zones_list()),
        );
    }
    let mut zones = Vec::new();
    for (i, z) in list.iter().enumerate() {
        let path = format!("{at}.zones[{i}]");
        match z.as_str() {
            Some(name) => match ZONES.iter().find(|k| **k == name) {
                Some(k) if zones.contains(k) => p.add(
                    path,
                    format!("{name} is listed twice"),
                    "use replicasPerZone for more replicas in a zone",
                ),
                Some(k) => zones.push(*k),
                None => p.add(
                    path,
                    format!("unknown zone {name}; the topology has {}", zones_list()),
                    "spread the service over the topology's zones, or fewer of them",
                ),
            },
            None => p.add(
                path,
                format!("{} is not a zone name", show(z)),
                "a zone is az-a, az-b or az-c",
            ),
        }
    }
    zones
}

fn read_tags(at: &str, v: Option<&Value>, p: &mut Problems) -> Vec<(String, String)> {
    let Some(v) = v else { return Vec::new() };
    let Value::Mapping(map) = v else {
        p.add(
            format!("{at}.tags"),
            "is not a mapping",
            "tags: {Tier: Web, Environment: Production}",
        );
        return Vec::new();
    };
    let mut tags = Vec::new();
    for (k, v) in map {
        let key = scalar(k);
        let path = format!("{at}.tags.{}", key.as_deref().unwrap_or("?"));
        let (Some(key), Some(value)) = (key, scalar(v)) else {
            p.add(path, "a tag's key and value are strings", "Tier: Web");
            continue;
        };
        if RESERVED_TAGS.contains(&key.as_str()) {
            p.add(path, "faultline sets this tag itself", "remove it from the block");
        } else if key.is_empty() || key.contains([',', '=']) || value.contains(',') {
            p.add(
                path,
                "a tag's key must be non-empty without `,` or `=`, and its value without `,`",
                "the agent reads its tags as KEY=VALUE,KEY=VALUE",
            );
        } else {
            tags.push((key, value));
        }
    }
    tags
}

/// A YAML scalar as text (`Tier: 1` is the tag `Tier=1`).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn read_port(path: String, v: Option<&Value>, p: &mut Problems) -> Option<u16> {
    match v {
        None => {
            p.add(path, "missing", "a port from 1 to 65535");
            None
        }
        Some(v) => match v.as_u64().and_then(|n| u16::try_from(n).ok()).filter(|n| *n > 0) {
            Some(n) => Some(n),
            None => {
                p.add(
                    path,
                    format!("{} is not a port from 1 to 65535", show(v)),
                    "a port from 1 to 65535",
                );
                None
            }
        },
    }
}

fn unknown_keys(at: &str, map: &Mapping, known: &[&str], p: &mut Problems) {
    for key in map.keys() {
        let key = key.as_str().unwrap_or("?");
        if !known.contains(&key) {
            let hint = match did_you_mean(key, known.iter().copied()) {
                Some(k) => format!("did you mean `{k}`?"),
                None => format!("the keys are {}", known.join(", ")),
            };
            p.add_hint(format!("{at}.{key}"), "unknown key", hint);
        }
    }
}

fn read_proxy(at: &str, v: &Value, p: &mut Problems) -> Option<Proxy> {
    let at = format!("{at}.proxy");
    let Value::Mapping(map) = v else {
        p.add(at, "is not a mapping", "proxy: {listen: 8080, upstream: 8081}");
        return None;
    };
    unknown_keys(&at, map, &PROXY_KEYS, p);
    let listen = read_port(format!("{at}.listen"), map.get("listen"), p);
    let upstream = read_port(format!("{at}.upstream"), map.get("upstream"), p);
    let (listen, upstream) = (listen?, upstream?);
    if listen == upstream {
        p.add(
            format!("{at}.upstream"),
            "is the port the proxy listens on",
            "the service listens on upstream (e.g. 8081), the agent's proxy on listen (e.g. 8080)",
        );
        return None;
    }
    Some(Proxy { listen, upstream })
}

fn read_lb(at: &str, v: &Value, p: &mut Problems) -> Option<(u16, String)> {
    let at = format!("{at}.loadBalancer");
    let Value::Mapping(map) = v else {
        p.add(at, "is not a mapping", "loadBalancer: {port: 8080, health: /healthz}");
        return None;
    };
    unknown_keys(&at, map, &LB_KEYS, p);
    let port = read_port(format!("{at}.port"), map.get("port"), p);
    let health = match map.get("health") {
        None => Some("/healthz".to_string()),
        Some(Value::String(s)) if s.starts_with('/') => Some(s.clone()),
        Some(v) => {
            p.add(
                format!("{at}.health"),
                format!("{} is not a path", show(v)),
                "a path such as /healthz",
            );
            None
        }
    };
    Some((port?, health?))
}

/// A host port a `ports` entry publishes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct HostPort {
    ip: String,
    port: String,
    protocol: String,
}

/// The host port of a `ports` entry, short (`"127.0.0.1:8080:80/tcp"`) or long
/// (`{target: 80, published: 8080}`); `None` when it publishes only the container port.
fn published(entry: &Value) -> Option<HostPort> {
    match entry {
        Value::String(s) => {
            let (spec, protocol) = s.split_once('/').unwrap_or((s, "tcp"));
            let mut parts: Vec<&str> = spec.rsplitn(3, ':').collect();
            parts.reverse();
            match parts.as_slice() {
                [ip, host, _] if !host.is_empty() => Some(HostPort {
                    ip: ip.trim_matches(['[', ']']).to_string(),
                    port: host.to_string(),
                    protocol: protocol.into(),
                }),
                [host, _] if !host.is_empty() => Some(HostPort {
                    ip: String::new(),
                    port: host.to_string(),
                    protocol: protocol.into(),
                }),
                _ => None,
            }
        }
        Value::Mapping(m) => m
            .get("published")
            .and_then(scalar)
            .filter(|p| !p.is_empty())
            .map(|port| HostPort {
                ip: m.get("host_ip").and_then(scalar).unwrap_or_default(),
                port,
                protocol: m.get("protocol").and_then(scalar).unwrap_or_else(|| "tcp".into()),
            }),
        _ => None,
    }
}

/// The services faultline adds (hosts, their agents, balancers) must not take a name the
/// file already has.
fn check_generated_names(services: &[Service], p: &mut Problems) {
    let written: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    for s in services {
        let Some(g) = &s.group else { continue };
        let agents = g.hosts.iter().map(|h| format!("{}-agent", h.id));
        let replicas = g.hosts.iter().filter(|_| g.replicated).map(|h| h.id.clone());
        for name in replicas
            .chain(agents)
            .chain(g.load_balancer.iter().map(|lb| lb.name.clone()))
        {
            if written.contains(&name.as_str()) {
                p.add_hint(
                    format!("services.{name}"),
                    format!("faultline names a service of {} so", s.name),
                    format!("rename {name}"),
                );
            }
        }
    }
}

/// A `depends_on` must name a service of the file.
fn check_depends_on(services: &[Service], p: &mut Problems) {
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    for s in services {
        for (i, dep) in depends_on(&s.definition).into_iter().enumerate() {
            if !names.contains(&dep.as_str()) {
                let hint = match did_you_mean(&dep, names.iter().copied()) {
                    Some(k) => format!("did you mean {k}?"),
                    None => format!("the services are {}", names.join(", ")),
                };
                p.add_hint(
                    format!("services.{}.depends_on[{i}]", s.name),
                    format!("no service {dep} in the file"),
                    hint,
                );
            }
        }
    }
}

/// The services a definition depends on, in either form.
fn depends_on(def: &Mapping) -> Vec<String> {
    match def.get("depends_on") {
        Some(Value::Sequence(l)) => l.iter().filter_map(scalar).collect(),
        Some(Value::Mapping(m)) => m.keys().filter_map(scalar).collect(),
        _ => Vec::new(),
    }
}

/// No two services publish one host port, the balancers' included.
fn check_published(services: &[Service], p: &mut Problems) {
    let mut seen: BTreeMap<HostPort, String> = BTreeMap::new();
    let mut claim = |port: HostPort, path: String, p: &mut Problems| {
        // An address of "" (every address) clashes with any address on the same port.
        let clash = seen
            .iter()
            .find(|(k, _)| {
                k.port == port.port
                    && k.protocol == port.protocol
                    && (k.ip == port.ip || k.ip.is_empty() || port.ip.is_empty())
            })
            .map(|(_, v)| v.clone());
        match clash {
            Some(first) => p.add_hint(
                &path,
                format!("host port {} is already published by {first}", port.port),
                "publish it once, or choose another host port".into(),
            ),
            None => {
                seen.insert(port, path);
            }
        }
    };
    for s in services {
        if let Some(Value::Sequence(ports)) = s.definition.get("ports") {
            for (i, entry) in ports.iter().enumerate() {
                if let Some(hp) = published(entry) {
                    claim(hp, format!("services.{}.ports[{i}]", s.name), p);
                }
            }
        }
        if let Some(lb) = s.group.as_ref().and_then(|g| g.load_balancer.as_ref()) {
            let hp = HostPort {
                ip: "127.0.0.1".into(),
                port: lb.port.to_string(),
                protocol: "tcp".into(),
            };
            claim(hp, format!("services.{}.x-faultline.loadBalancer.port", s.name), p);
        }
    }
}

#[cfg(test)]
mod tests;
