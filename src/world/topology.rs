//! The default multi-AZ topology of containers (`agents/compose.yaml`): building its image
//! from this checkout, bringing it up, down, and telling how it is.
//!
//! No image is pulled: the image is `FROM scratch` with the project's own static binaries.

use crate::controller::{AgentWait, Controller};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub use crate::platform::docker::PROJECT;
/// Image the compose file runs.
pub const IMAGE: &str = "faultline-demo:latest";
/// Port the controller listens on for the topology's agents (their `FAULTLINE_CONTROLLER`).
pub const CONTROLLER_PORT: u16 = 7700;
/// The controller's address as the hosts see it: the control network's gateway.
pub const CONTROL_GATEWAY: [u8; 4] = [10, 42, 0, 1];
/// Binaries the image holds.
pub const BINARIES: [&str; 4] = ["faultline-agent", "demo-web", "demo-lb", "demo-init"];

/// Why the topology could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// A program the topology needs is missing.
    #[error("`{program}` is needed: {why}")]
    Missing {
        program: String,
        /// Why it could not be run.
        why: String,
    },
    /// A step failed.
    #[error("{step} failed{}", .detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Step {
        step: String,
        /// What it said.
        detail: Option<String>,
    },
    /// The checkout is not where it should be.
    #[error("{0} is not a faultline checkout (no agents/compose.yaml); pass --source")]
    NoSource(PathBuf),
    /// The temporary controller that waits for the agents could not listen.
    #[error("{0} (is a controller already running?)")]
    NoController(String),
    /// Not every agent connected in time.
    #[error("{0}")]
    AgentsMissing(String),
    /// The load balancer did not report every backend healthy in time.
    #[error("the load balancer at {0} did not find every backend healthy in time")]
    LbUnhealthy(String),
    /// The topology's certificates cannot be made or loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Where the topology's files are.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The checkout.
    pub source: PathBuf,
    /// The token file agents mount.
    pub token_file: PathBuf,
    /// Host port of the load balancer.
    pub lb_port: u16,
}

fn run(step: &str, cmd: &mut Command) -> Result<String, TopologyError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| TopologyError::Missing {
            program: program.clone(),
            why: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(TopologyError::Step {
            step: step.into(),
            detail: Some(format!("{program} exited with {}", out.status)),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command with its output shown, for long steps (builds).
fn run_visible(step: &str, cmd: &mut Command) -> Result<(), TopologyError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let status = cmd.stdin(Stdio::null()).status().map_err(|e| TopologyError::Missing {
        program: program.clone(),
        why: e.to_string(),
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(TopologyError::Step {
            step: step.into(),
            detail: Some(format!("{program} exited with {status}")),
        })
    }
}

/// The compose command of this machine: `docker compose` when the plugin is there, else
/// `docker-compose`.
fn compose_command() -> Command {
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if plugin {
        let mut c = Command::new("docker");
        c.arg("compose");
        c
    } else {
        Command::new("docker-compose")
    }
}

impl Topology {
    /// The topology of a checkout; the token file is created if missing.
    pub fn new(source: &Path, token_file: &Path, lb_port: u16) -> Result<Topology, TopologyError> {
        if !source.join("agents/compose.yaml").exists() {
            return Err(TopologyError::NoSource(source.to_path_buf()));
        }
        let token_file = if token_file.is_absolute() {
            token_file.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(token_file)
        };
        Ok(Topology {
            source: source.to_path_buf(),
            token_file,
            lb_port,
        })
    }

    /// The CA and controller certificate of the topology, made beside the token file on first
    /// use (agents dial wss://10.42.0.1:7700 and trust that CA), and the server configuration.
    pub fn tls(&self) -> Result<(crate::tls::Generated, Arc<rustls::ServerConfig>), TopologyError> {
        let files = crate::tls::generate(
            &crate::tls::dir_beside(&self.token_file),
            &[IpAddr::from(CONTROL_GATEWAY), IpAddr::from([127, 0, 0, 1])],
            &["localhost"],
        )?;
        let config = crate::tls::server_config(&files.cert, &files.key)?;
        Ok((files, config))
    }

    fn compose(&self) -> Command {
        let mut c = compose_command();
        c.current_dir(self.source.join("agents"))
            .env("FAULTLINE_TOKEN_FILE", &self.token_file)
            .env(
                "FAULTLINE_CA_FILE",
                crate::tls::Generated::in_dir(&crate::tls::dir_beside(&self.token_file)).ca,
            )
            .env("FAULTLINE_LB_PORT", self.lb_port.to_string())
            .args(["-p", PROJECT, "-f", "compose.yaml"]);
        c
    }

    /// Builds the static binaries and the image from this checkout.
    pub fn build(&self) -> Result<(), TopologyError> {
        let triple = run("rustc -vV", Command::new("rustc").arg("-vV"))?
            .lines()
            .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
            .ok_or_else(|| TopologyError::Step {
                step: "reading the host target of rustc".into(),
                detail: None,
            })?;
        let target_dir = self.source.join("target/static");
        tracing::info!(target = %triple, "building static binaries (the first build takes a few minutes)");
        run_visible(
            "the static build",
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(&self.source)
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                .env("CARGO_TARGET_DIR", &target_dir)
                .args(["build", "--release", "--locked", "--target", &triple])
                .args(["-p", "faultline-agent", "-p", "faultline-demo"]),
        )?;
        let context = self.source.join("target/image");
        std::fs::create_dir_all(&context).map_err(|e| TopologyError::Step {
            step: format!("creating {}", context.display()),
            detail: Some(e.to_string()),
        })?;
        let copy = |from: PathBuf, to: PathBuf| {
            std::fs::copy(&from, &to).map_err(|e| TopologyError::Step {
                step: format!("copying {}", from.display()),
                detail: Some(e.to_string()),
            })
        };
        copy(self.source.join("agents/Dockerfile"), context.join("Dockerfile"))?;
        for bin in BINARIES {
            copy(target_dir.join(&triple).join("release").join(bin), context.join(bin))?;
        }
        tracing::info!(image = IMAGE, "building the image");
        run(
            "docker build",
            Command::new("docker").args(["build", "-q", "-t", IMAGE]).arg(&context),
        )?;
        Ok(())
    }

    /// Starts the containers (recreating those whose image changed).
    pub fn start(&self) -> Result<(), TopologyError> {
        run_visible("compose up", self.compose().args(["up", "-d", "--remove-orphans"]))
    }

    /// Stops and removes the containers and networks; agents remove their faults on SIGTERM.
    pub fn down(&self) -> Result<(), TopologyError> {
        run_visible(
            "compose down",
            self.compose().args(["down", "--remove-orphans", "--timeout", "15"]),
        )
    }

    /// Container name, state and addresses, as `docker inspect` sees them.
    pub fn containers(&self) -> Result<Vec<(String, String, String)>, TopologyError> {
        let ids = run("compose ps", self.compose().args(["ps", "-q"]))?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let out = run(
            "docker inspect",
            Command::new("docker")
                .args(["inspect", "-f", "{{.Name}}|{{.State.Status}}|{{range $n, $c := .NetworkSettings.Networks}}{{$n}}={{$c.IPAddress}} {{end}}"])
                .args(&ids),
        )?;
        let mut rows: Vec<(String, String, String)> = out
            .lines()
            .filter_map(|l| {
                let mut p = l.splitn(3, '|');
                Some((
                    p.next()?.trim_start_matches('/').to_string(),
                    p.next()?.to_string(),
                    p.next()?.trim().replace(&format!("{PROJECT}_"), ""),
                ))
            })
            .collect();
        rows.sort();
        Ok(rows)
    }

    /// Waits until every host's agent has connected to a temporary controller and the load
    /// balancer finds every backend healthy.
    pub async fn wait_ready(
        &self,
        hosts: &BTreeSet<String>,
        token: String,
        timeout: Duration,
    ) -> Result<(), TopologyError> {
        let (_, tls) = self.tls()?;
        let controller = Controller::start(
            ([0, 0, 0, 0], CONTROLLER_PORT).into(),
            token,
            crate::fleet::Endpoint {
                tls: Some(tls),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| TopologyError::NoController(e.message))?;
        controller
            .wait_for_agents(&AgentWait::Count(hosts.len()), timeout)
            .await
            .map_err(|e| TopologyError::AgentsMissing(e.message))?;
        controller.shutdown();
        let url = format!("http://127.0.0.1:{}/lb/healthz", self.lb_port);
        if wait_lb_healthy(&url, timeout).await {
            Ok(())
        } else {
            Err(TopologyError::LbUnhealthy(url))
        }
    }
}

/// Polls a load balancer's `/lb/healthz` until it answers 200 (every backend healthy), up
/// to `timeout`; whether it did.
pub async fn wait_lb_healthy(url: &str, timeout: Duration) -> bool {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut ticks = tokio::time::interval(Duration::from_millis(200));
    loop {
        ticks.tick().await;
        if matches!(client.get(url).timeout(Duration::from_secs(1)).send().await, Ok(r) if r.status().is_success()) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
    }
}
