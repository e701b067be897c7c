//! `faultline-agent`: injects faults on one host for a faultline controller, and always
//! takes them away again: at the end of their duration, on request, when the controller
//! goes silent, on any signal that would end it (SIGTERM, SIGINT, SIGHUP, SIGQUIT, ...),
//! and at the next start after a crash; an agent that never comes back leaves no effect
//! for more than two leases (see docs/creating-faults.md).

mod agent;
mod lease;
mod session;

use clap::Parser;
use faultline_agent::logging::{self, LogFormat};
use faultline_agent::{duration, faults, holder, proxy, state};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The faultline agent: dials the controller, registers this host, injects the faults it is
/// sent and removes every one of them, whatever happens.
#[derive(Debug, Parser)]
#[command(name = "faultline-agent", version)]
struct Cli {
    /// Controller to dial, e.g. ws://10.42.0.1:7700.
    #[arg(long, env = "FAULTLINE_CONTROLLER")]
    controller: String,
    /// CA certificate (PEM) that signed the controller's certificate, for a wss:// controller.
    #[arg(long, env = "FAULTLINE_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// SHA-256 fingerprint of the controller's certificate (hex, colons allowed), for a
    /// wss:// controller: only that certificate is accepted.
    #[arg(long, env = "FAULTLINE_PIN_SHA256", value_name = "FINGERPRINT", value_parser = session::parse_pin)]
    pin_sha256: Option<[u8; 32]>,
    /// File holding the shared token (never sent: both sides prove it by challenge-response).
    #[arg(long, env = "FAULTLINE_TOKEN_FILE", value_name = "PATH")]
    token_file: PathBuf,
    /// This host's id, e.g. web-a1.
    #[arg(long, env = "FAULTLINE_HOST_ID")]
    host_id: String,
    /// This host's availability zone, e.g. az-a.
    #[arg(long, env = "FAULTLINE_AZ")]
    az: String,
    /// A tag, KEY=VALUE (repeat, or comma-separate in the variable).
    #[arg(long = "tag", env = "FAULTLINE_TAGS", value_delimiter = ',', value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// Address other hosts reach this one at [default: this end of the controller connection].
    #[arg(long, env = "FAULTLINE_ADDRESS")]
    address: Option<IpAddr>,
    /// Where faults are recorded before they take effect.
    #[arg(long, env = "FAULTLINE_STATE_DIR", default_value = "/var/lib/faultline-agent")]
    state_dir: PathBuf,
    /// Fault kinds this agent may inject.
    #[arg(long, env = "FAULTLINE_ALLOW", value_delimiter = ',', default_values_t = faults::CAPABILITIES.map(String::from), value_parser = clap::builder::PossibleValuesParser::new(faults::CAPABILITIES))]
    allow: Vec<String>,
    /// How network faults are enforced (blackout, blackhole-port and packet-loss; the name is
    /// historical): nf_tables, with the proxy too for blackouts (`nftables`), the proxy alone
    /// (`proxy`: use it when the agent shares its network with other things, as in
    /// `faultline demo`; blackhole-port and packet-loss then act on the proxy's own ports and
    /// connections only), or `auto`: nf_tables when this process may use it.
    #[arg(long, env = "FAULTLINE_BLACKOUT_BACKEND", value_enum, default_value_t = faults::blackout::Backend::Auto)]
    blackout_backend: faults::blackout::Backend,
    /// Proxy LISTEN=UPSTREAM in front of the host's service, e.g. 0.0.0.0:8080=127.0.0.1:8081 (repeat).
    #[arg(long = "proxy", env = "FAULTLINE_PROXY", value_delimiter = ',', value_parser = parse_proxy)]
    proxies: Vec<(String, String)>,
    /// Remove this controller's faults after it has been silent this long (ISO 8601).
    #[arg(long, env = "FAULTLINE_LEASE", default_value = "PT10S", value_parser = parse_lease)]
    lease: Duration,
    /// Refuse any fault longer than this (ISO 8601, at most PT12H).
    #[arg(long, env = "FAULTLINE_MAX_DURATION", default_value = "PT12H", value_parser = parse_max_duration)]
    max_duration: Duration,
    /// End a blackout that cuts this host off from its controller after this long, whatever
    /// its duration (ISO 8601).
    #[arg(long, env = "FAULTLINE_MAX_CUT", default_value = "PT5M", value_parser = parse_positive)]
    max_cut: Duration,
    /// The only process names a kill or pause may signal (comma-separated) [default: any].
    #[arg(long, env = "FAULTLINE_KILL_ALLOW", value_delimiter = ',', value_name = "NAME,...")]
    kill_allow: Option<Vec<String>>,
    /// Let a kill or pause signal processes of other users too [default: only processes
    /// whose real uid is this agent's]. PID 1, this agent and its ancestors never.
    #[arg(long, env = "FAULTLINE_KILL_OTHER_USERS")]
    kill_other_users: bool,
    /// Log line format on stderr.
    #[arg(long, env = "FAULTLINE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// More log output (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// `faultline-holder hold KIND ...`: a holder process the agent starts for a fault (see
/// `holder.rs`); not for people.
#[derive(Debug, Parser)]
#[command(name = "faultline-holder hold")]
struct Hold {
    /// The fault kind whose work this is, e.g. `cpu`.
    kind: String,
    /// The kind's parameters, JSON.
    #[arg(long)]
    params: String,
    /// How it learns that the agent is gone.
    #[arg(long, value_enum)]
    bond: holder::Bond,
    /// The fault's name hash, so a leftover holder can be told by its command line.
    #[arg(long)]
    fault: String,
    /// The agent's pid: the holder exits at once if it is no longer its parent.
    #[arg(long)]
    parent: u32,
    /// When the holder ends on its own, in ms on CLOCK_MONOTONIC.
    #[arg(long)]
    until_ms: u64,
}

fn hold(args: Hold) -> ExitCode {
    holder::take_name();
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("faultline-holder hold {} (fault {}): {e}", args.kind, args.fault);
        ExitCode::FAILURE
    };
    let Some(kind) = faults::kind(&args.kind) else {
        return fail(&"no such fault kind");
    };
    let params: serde_json::Value = match serde_json::from_str(&args.params) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    let gone = match args.bond {
        holder::Bond::Death => {
            if let Err(e) = holder::bind_to_parent(args.parent) {
                return fail(&e);
            }
            None
        }
        // No death signal: it must outlive the agent long enough to undo its work.
        holder::Bond::Pipe => Some(holder::AgentGone::watch()),
    };
    let holding = holder::Holding {
        until: holder::Deadline {
            monotonic_ms: args.until_ms,
        },
        gone,
    };
    match kind.hold(&params, &holding) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

fn parse_proxy(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((l, u)) if !l.is_empty() && !u.is_empty() => Ok((l.to_string(), u.to_string())),
        _ => Err(format!(
            "`{s}` is not LISTEN=UPSTREAM, e.g. 0.0.0.0:8080=127.0.0.1:8081"
        )),
    }
}

fn parse_lease(s: &str) -> Result<Duration, String> {
    match duration::parse(s) {
        Ok(d) if d >= Duration::from_secs(1) => Ok(d),
        Ok(_) => Err("the lease must be at least PT1S".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_positive(s: &str) -> Result<Duration, String> {
    match duration::parse(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("it must be longer than zero".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_max_duration(s: &str) -> Result<Duration, String> {
    match parse_positive(s)? {
        d if d > faultline_agent::limits::MAX_DURATION => Err("it must be at most PT12H".into()),
        d => Ok(d),
    }
}

fn main() -> ExitCode {
    // No flag of the agent is a bare word, so `hold` first is always a holder.
    if std::env::args_os().nth(1).is_some_and(|a| a == "hold") {
        return hold(Hold::parse_from(std::env::args_os().skip(1)));
    }
    let cli = Cli::parse();
    logging::init(cli.log_format, cli.verbose as i8, &["faultline_agent"]);
    faultline_agent::net::raise_fd_limit();
    // This thread runs the agent and is the one that spawns holders, which die with it;
    // the proxies have a thread of their own.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let token = std::fs::read_to_string(&cli.token_file)
        .map_err(|e| format!("cannot read the token file {}: {e}", cli.token_file.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        return Err(format!("the token file {} is empty", cli.token_file.display()));
    }
    let state = state::StateDir::open(&cli.state_dir).map_err(|e| e.to_string())?;
    let allow: BTreeSet<String> = cli.allow.iter().cloned().collect();
    let setup = faults::Setup {
        has_proxy: !cli.proxies.is_empty(),
        proxy_ports: cli
            .proxies
            .iter()
            .filter_map(|(listen, _)| listen.rsplit_once(':')?.1.parse().ok())
            .filter(|p| *p != 0)
            .collect(),
        blackout_backend: cli.blackout_backend,
    };
    let conditions = Arc::new(proxy::Conditions::default());
    let config = faults::Config {
        max_duration: cli.max_duration,
        max_cut: cli.max_cut,
        kill: faults::kill::Policy {
            names: cli.kill_allow.map(|n| n.into_iter().collect()),
            other_users: cli.kill_other_users,
        },
        lease: cli.lease,
    };
    let (mut faults, notes) = faults::Faults::new(&allow, &setup, state, conditions.clone(), config)?;
    for note in notes {
        tracing::info!("capability note: {note}");
    }
    // Undo what a previous life left before this one registers; what cannot be undone yet
    // is retried while the agent runs.
    let restarted = faults.recover().into_iter().map(|r| (r.owner, r.fault_id)).collect();

    let shutdown = CancellationToken::new();
    let proxies = start_proxies(cli.proxies, conditions, shutdown.clone())?;
    let mut tasks = tokio::task::JoinSet::new();
    let on_signal = shutdown.clone();
    tasks.spawn(async move {
        if let Some(name) = faultline_agent::signals::cancel_on_signal(on_signal).await {
            tracing::info!("{name}: removing every fault, then exiting");
        }
    });

    let identity = agent::Identity {
        host_id: cli.host_id,
        az: cli.az,
        tags: cli.tags.into_iter().collect::<BTreeMap<_, _>>(),
        address: cli.address,
    };
    let url = session::endpoint(&cli.controller);
    let tls = session::tls_for(&url, cli.ca.as_deref(), cli.pin_sha256).map_err(|e| e.to_string())?;
    let agent = agent::Agent::new(
        session::Dialer { url, token, tls },
        identity,
        faults,
        cli.lease,
        restarted,
    );
    agent.run(shutdown.clone()).await;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    if let Some(proxies) = proxies {
        // Every fault is removed by now; only the proxies' own exit is waited for.
        let _ = proxies.join();
    }
    Ok(())
}

/// Starts the proxies on a thread of their own, with its own runtime, so that /proc scans,
/// fsyncs, netlink calls and process spawns on the agent's thread never stall proxied
/// traffic. Returns once every proxy listens, or why one cannot.
fn start_proxies(
    proxies: Vec<(String, String)>,
    conditions: Arc<proxy::Conditions>,
    shutdown: CancellationToken,
) -> Result<Option<std::thread::JoinHandle<()>>, String> {
    if proxies.is_empty() {
        return Ok(None);
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let thread = std::thread::Builder::new()
        .name("proxy".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot start the proxy runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for (listen, upstream) in proxies {
                    let listener = match tokio::net::TcpListener::bind(&listen).await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("cannot listen on {listen} for the proxy: {e}")));
                            return;
                        }
                    };
                    tracing::info!(listen = %listener.local_addr().map_or(listen.clone(), |a| a.to_string()), %upstream, "proxy ready");
                    tasks.spawn(proxy::serve(listener, upstream, conditions.clone(), shutdown.clone()));
                }
                let _ = ready_tx.send(Ok(()));
                while tasks.join_next().await.is_some() {}
            });
        })
        .map_err(|e| format!("cannot start the proxy thread: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Some(thread)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the proxy thread ended before its proxies listened".into()),
    }
}
