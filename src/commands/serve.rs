//! `faultline serve`: the long-running controller.

use crate::cli::{ServeArgs, TlsArgs};
use faultline::exit;
use faultline::serve::config::Layer;
use faultline::serve::store::Store;
use faultline::serve::{self, api::Tokens, policy::Policy, port::Limits, Config};
use faultline::world::demo::{self, World};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Serves until SIGTERM or Ctrl-C.
pub(super) fn run(args: ServeArgs, demo: bool) -> anyhow::Result<u8> {
    let flags = Layer {
        listen: args.listen,
        agents_listen: args.agents_listen,
        database: args.database,
        token_file: args.token_file,
        api_token_file: args.api_token_file,
        journals: args.journals,
        drain: args.drain,
        tls_cert: args.tls.tls_cert,
        tls_key: args.tls.tls_key,
        allow_command_alarms: args.allow_command_alarms.then_some(true),
        probe_allow: (!args.probe_allow.is_empty()).then_some(args.probe_allow),
        allow_plaintext_agents: args.allow_plaintext_agents,
        max_connections: args.max_connections.map(|n| n as usize),
        max_connections_per_address: args.max_connections_per_address.map(|n| n as usize),
        header_timeout: args.header_timeout,
    };
    let file = match &args.config {
        Some(path) => Layer::load(path).map_err(|e| super::fail(exit::INVALID, e))?,
        None => Layer::default(),
    };
    let s = flags.over(file).resolve();
    if s.tls_cert.is_some() != s.tls_key.is_some() {
        return Err(super::fail(
            exit::INVALID,
            anyhow::anyhow!("tls-cert and tls-key go together: give both or neither"),
        ));
    }
    if s.max_connections == 0 || s.max_connections_per_address == 0 {
        return Err(super::fail(
            exit::INVALID,
            anyhow::anyhow!("max-connections and max-connections-per-address must be at least 1"),
        ));
    }
    let token = super::controller::token(&s.token_file)?;
    let tls = TlsArgs {
        tls_cert: s.tls_cert,
        tls_key: s.tls_key,
    }
    .load(&s.token_file)
    .map_err(|e| super::fail(exit::INVALID, e))?;
    let (api_tokens, created) = Tokens::load(&s.api_token_file).map_err(|e| super::fail(exit::INVALID, e))?;
    if created {
        tracing::info!(path = %s.api_token_file.display(), "created a new API token; clients send it as Authorization: Bearer");
    }
    if s.allow_plaintext_agents.is_some() && tls.is_none() {
        return Err(super::fail(
            exit::INVALID,
            anyhow::anyhow!(
                "allow-plaintext-agents relaxes TLS: without a certificate (tls-cert) every agent dials plain ws:// already"
            ),
        ));
    }
    let policy = Policy::new(s.allow_command_alarms, &s.probe_allow).map_err(|e| super::fail(exit::INVALID, e))?;
    if policy.allow_commands {
        tracing::warn!("--allow-command-alarms: any token of role run may make this server run a program as its user");
    }
    let limits = Limits {
        connections: s.max_connections,
        per_address: s.max_connections_per_address,
        header_timeout: s.header_timeout,
    };
    let mut config = Config {
        listen: s.listen,
        agents_listen: s.agents_listen,
        database: s.database,
        token,
        tls,
        plaintext_agents: s.allow_plaintext_agents,
        policy,
        limits,
        api_tokens,
        journals: s.journals,
        drain: s.drain,
        platforms: Default::default(),
    };
    let runtime = super::runtime()?;
    let world = if demo {
        Some(runtime.block_on(demo_world(&mut config, &s.token_file))?)
    } else {
        None
    };
    let served = runtime.block_on(serve::serve(config));
    if let Some((world, work)) = world {
        // The demo world goes down with the server.
        drop(world);
        let _ = std::fs::remove_dir_all(work);
    }
    served.map_err(|e| super::fail(exit::FAILED, e))?;
    Ok(exit::COMPLETED)
}

/// The name the showcase game day is stored under with `--demo`.
const DEMO_TEMPLATE: &str = "gameday-az-outage";
/// How long the demo world has to come up.
const DEMO_READY: std::time::Duration = std::time::Duration::from_secs(60);

/// Starts the demo world, its agents dialing this server (they retry until it is up), and
/// stores the showcase game day with its alarms pointed at the world's load balancer.
async fn demo_world(config: &mut Config, token_file: &Path) -> anyhow::Result<(World, PathBuf)> {
    let failed = |e: &dyn std::fmt::Display| super::fail(exit::FAILED, anyhow::anyhow!("demo world: {e}"));
    if config.listen.port() == 0 {
        // The agents are told where to dial before the server binds.
        config.listen.set_port(demo::free_port().map_err(|e| failed(&e))?);
    }
    let lb_port = demo::free_port().map_err(|e| failed(&e))?;
    let lb_url = format!("http://127.0.0.1:{lb_port}/");
    let mut doc: serde_json::Value = serde_json::from_str(demo::GAME_DAY).map_err(|e| failed(&e))?;
    demo::retarget_alarms(&mut doc, &lb_url);
    demo::retarget_user_experience(&mut doc, &lb_url);
    let store = Store::open(&config.database).await.map_err(|e| failed(&e))?;
    if store
        .template(DEMO_TEMPLATE, None)
        .await
        .map_err(|e| failed(&e))?
        .map(|t| t.body)
        != Some(doc.clone())
    {
        store
            .put_template(DEMO_TEMPLATE, &doc, "demo")
            .await
            .map_err(|e| failed(&e))?;
    }
    let work = demo::work_dir();
    std::fs::create_dir_all(&work).map_err(|e| failed(&e))?;
    let token_file = std::fs::canonicalize(token_file).map_err(|e| failed(&e))?;
    let bin_dir = std::env::current_exe()
        .map_err(|e| failed(&e))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let dial = SocketAddr::from(([127, 0, 0, 1], config.listen.port()));
    let world = World::start(&bin_dir, &work, dial, &token_file, lb_port).map_err(|e| failed(&e))?;
    // Instance actions act on the world's processes, as `faultline demo` does.
    config.platforms = world.platforms();
    let health = format!("{lb_url}lb/healthz");
    tokio::spawn(async move {
        if faultline::world::topology::wait_lb_healthy(&health, DEMO_READY).await {
            tracing::info!("demo world ready: the load balancer sees every host healthy");
        } else {
            tracing::warn!(%health, "the load balancer did not see every host healthy in time");
        }
    });
    tracing::info!(
        lb = %lb_url,
        template = DEMO_TEMPLATE,
        logs = %work.display(),
        "demo world starting: 6 hosts in az-a, az-b, az-c behind a load balancer"
    );
    Ok((world, work))
}
