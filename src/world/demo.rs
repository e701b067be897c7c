//! `faultline demo`: the default topology as local processes on loopback (no Docker, no
//! root) and a showcase game day against it.
//!
//! Each host gets its own loopback address (127.0.1.11 for web-a1, 127.0.2.11 for web-b1,
//! ...), runs demo-web behind its agent's proxy, and is kept running by demo-init. The load
//! balancer connects from 127.0.0.2, so a blackout of an AZ, enforced by the agents' proxies
//! (never nf_tables: these agents share the machine's network), shuts it out.

use crate::controller::{AgentWait, Controller};
use crate::platform::{self, local::Local, Platforms};
use faultline_agent::protocol::HostDescription;
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// The showcase game day, as shipped in `experiments/`.
pub const GAME_DAY: &str = include_str!("../../experiments/gameday-az-outage.json");
/// The default topology, as shipped in `experiments/`.
pub const INVENTORY: &str = include_str!("../../experiments/inventory.json");
/// Binaries the demo starts, found next to `faultline`.
pub const BINARIES: [&str; 4] = ["faultline-agent", "demo-web", "demo-lb", "demo-init"];
/// Tags the FIS documentation's examples select instances by, on every demo host.
pub const FIS_TAGS: &str = "Environment=Production,Tier=Web";
/// The tags of each AZ's subnet (`subnet-<AZ>`), carried by its hosts: its `Name`, and the
/// tag the FIS documentation's AZ power-interruption scenario selects subnets by.
pub fn subnet_tags(az: &str) -> String {
    let p = crate::plan::SUBNET_TAG;
    format!("{p}Name=faultline-{az},{p}AzImpairmentPower=DisruptSubnet")
}
/// Source address of the load balancer's connections.
pub const LB_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// The loopback address standing in for a host: 127.0.AZ.N, where AZ counts az-a as 1.
pub fn loopback(host: &HostDescription, hosts: &[HostDescription]) -> Ipv4Addr {
    let zones: std::collections::BTreeSet<&str> =
        hosts.iter().map(|h| h.placement.availability_zone.as_str()).collect();
    let az = zones
        .iter()
        .position(|z| *z == host.placement.availability_zone)
        .unwrap_or(0) as u8
        + 1;
    let n = hosts
        .iter()
        .filter(|h| h.placement.availability_zone == host.placement.availability_zone)
        .position(|h| h.host_id == host.host_id)
        .unwrap_or(0) as u8
        + 11;
    Ipv4Addr::new(127, 0, az, n)
}

/// Points every HTTP alarm of a template at `url`.
pub fn retarget_alarms(template: &mut Value, url: &str) {
    if let Some(alarms) = template.get_mut("alarms") {
        retarget_alarm_map(alarms, url);
    }
}

/// Points every HTTP alarm of an alarms object (a template's or an `--alarms` file) at `url`.
pub fn retarget_alarm_map(alarms: &mut Value, url: &str) {
    if let Some(alarms) = alarms.as_object_mut() {
        for alarm in alarms.values_mut() {
            if let Some(http) = alarm.pointer_mut("/metric/http").and_then(Value::as_object_mut) {
                http.insert("url".into(), Value::from(url));
            }
        }
    }
}

/// Points a template's `userExperience` at the metrics of the load balancer at `lb_url`.
pub fn retarget_user_experience(template: &mut Value, lb_url: &str) {
    if let Some(ux) = template.get_mut("userExperience").and_then(Value::as_object_mut) {
        ux.insert(
            "scrape".into(),
            Value::from(format!("{}/metrics", lb_url.trim_end_matches('/'))),
        );
    }
}

/// The demo world: its processes, stopped (SIGTERM, then waited for) when dropped.
pub struct World {
    /// The load balancer.
    children: Vec<Child>,
    /// The hosts.
    local: Option<Local>,
    /// The load balancer's URL.
    pub lb_url: String,
    /// The hosts, with their loopback addresses as addresses.
    pub hosts: Vec<HostDescription>,
}

/// Why the demo world could not come up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DemoError(pub String);

impl World {
    /// Starts the hosts and the load balancer; agents dial `controller`.
    pub fn start(
        bin_dir: &Path,
        work: &Path,
        controller: SocketAddr,
        token_file: &Path,
        lb_port: u16,
    ) -> Result<World, DemoError> {
        for b in BINARIES {
            if !bin_dir.join(b).exists() {
                return Err(DemoError(format!(
                    "{} is missing next to faultline; build every binary with `cargo build --release` (or without --release for debug builds)",
                    bin_dir.join(b).display()
                )));
            }
        }
        let mut hosts: Vec<HostDescription> = serde_json::from_str(INVENTORY).expect("the shipped inventory is valid");
        let addresses: Vec<Ipv4Addr> = hosts.iter().map(|h| loopback(h, &hosts)).collect();
        let path = std::env::join_paths(
            std::iter::once(bin_dir.to_path_buf())
                .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
        )
        .map_err(|e| DemoError(e.to_string()))?;
        let mut world = World {
            children: Vec::new(),
            local: None,
            lb_url: format!("http://127.0.0.1:{lb_port}/"),
            hosts: Vec::new(),
        };
        let init = {
            let (bin_dir, work, path) = (bin_dir.to_path_buf(), work.to_path_buf(), path.clone());
            move |name: &str| {
                let mut c = Command::new(bin_dir.join("demo-init"));
                c.env("PATH", &path)
                    .env("DEMO_INIT_WITH_PARENT", "true")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(work.join(format!("{name}.log"))).map_or(Stdio::null(), Stdio::from));
                c
            }
        };
        for (host, ip) in hosts.iter_mut().zip(&addresses) {
            host.address = ip.to_string();
        }
        // The platform hook: each host's process tree is started (and stopped, rebooted,
        // replaced by instance actions) by the local platform, through this.
        let spawn = {
            let (init, work, token_file) = (init.clone(), work.to_path_buf(), token_file.to_path_buf());
            move |host: &HostDescription| {
                let (id, ip, az) = (&host.host_id, &host.address, &host.placement.availability_zone);
                let mut c = init(id);
                c.env("FAULTLINE_CONTROLLER", format!("ws://{controller}"))
                    .env("FAULTLINE_TOKEN_FILE", &token_file)
                    .env("FAULTLINE_HOST_ID", id)
                    .env("FAULTLINE_AZ", az)
                    .env(
                        "FAULTLINE_TAGS",
                        format!(
                            "tier=web,az={az},{FIS_TAGS},{},{}=local",
                            subnet_tags(az),
                            platform::TAG
                        ),
                    )
                    .env("FAULTLINE_ADDRESS", ip)
                    .env("FAULTLINE_STATE_DIR", work.join(format!("state-{id}")))
                    .env("FAULTLINE_PROXY", format!("{ip}:8080={ip}:8081"))
                    .env("FAULTLINE_BLACKOUT_BACKEND", "proxy")
                    .env("FAULTLINE_LEASE", "PT5S")
                    .args(["--run", &format!("demo-web --listen {ip}:8081 --name {id}")])
                    .args(["--run", "faultline-agent"]);
                c.spawn()
            }
        };
        world.local =
            Some(Local::start(&hosts, Arc::new(spawn)).map_err(|e| DemoError(format!("cannot start the hosts: {e}")))?);
        let backends: Vec<String> = hosts
            .iter()
            .map(|h| format!("{}={}:8080", h.host_id, h.address))
            .collect();
        let mut lb = init("lb");
        lb.env("DEMO_LB_BACKENDS", backends.join(",")).args([
            "--run",
            &format!("demo-lb --listen 127.0.0.1:{lb_port} --source-ip {LB_SOURCE}"),
        ]);
        world.children.push(
            lb.spawn()
                .map_err(|e| DemoError(format!("cannot start the load balancer: {e}")))?,
        );
        world.hosts = hosts;
        Ok(world)
    }

    /// Waits until every agent is connected to `controller` and the load balancer finds every
    /// backend healthy.
    pub async fn wait_ready(&self, controller: &Controller, timeout: Duration) -> Result<(), DemoError> {
        controller
            .wait_for_agents(&AgentWait::Count(self.hosts.len()), timeout)
            .await
            .map_err(|e| DemoError(e.message))?;
        let health = format!("{}lb/healthz", self.lb_url);
        if crate::world::topology::wait_lb_healthy(&health, timeout).await {
            Ok(())
        } else {
            Err(DemoError(format!(
                "the load balancer ({health}) did not see every host healthy in time"
            )))
        }
    }
}

impl World {
    /// The platform that runs the hosts, for instance actions.
    pub fn platforms(&self) -> Platforms {
        self.local.clone().map(Platforms::with_local).unwrap_or_default()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(local) = &self.local {
            local.shutdown();
        }
        for c in &self.children {
            // SAFETY: kill(2) on our own child; demo-init passes SIGTERM on and waits.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

/// A free loopback port for the load balancer, when none is asked for.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where the demo keeps its token, state dirs and logs.
pub fn work_dir() -> PathBuf {
    PathBuf::from(format!(".faultline/demo-{}", std::process::id()))
}
