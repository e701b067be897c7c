//! `faultline topology up|down|status`.

use crate::cli::{TopologyAction, TopologyArgs};
use faultline::controller::{AgentWait, Controller};
use faultline::plan::inventory;
use faultline::world::topology::{Topology, CONTROLLER_PORT};
use faultline::{exit, token};
use std::collections::BTreeSet;
use std::time::Duration;

fn topology(args: &TopologyArgs) -> anyhow::Result<(Topology, String)> {
    let t = Topology::new(&args.source, &args.token_file, args.lb_port).map_err(|e| super::fail(exit::INVALID, e))?;
    let (token, created) = token::load_or_create(&t.token_file).map_err(|e| super::fail(exit::FAILED, e))?;
    if created {
        tracing::info!(path = %t.token_file.display(), "created the agent token");
    }
    Ok((t, token))
}

/// The hosts of the default topology, from the shipped inventory.
fn hosts(t: &Topology) -> anyhow::Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(t.source.join("experiments/inventory.json"))
        .map_err(|e| super::fail(exit::FAILED, e))?;
    let hosts = inventory::parse(&text).map_err(|d| super::fail(exit::FAILED, anyhow::anyhow!("{d:?}")))?;
    Ok(hosts.into_iter().map(|h| h.host_id).collect())
}

/// Runs a topology action.
pub(super) fn run(action: TopologyAction) -> anyhow::Result<u8> {
    match action {
        TopologyAction::Up {
            topology: args,
            no_build,
            timeout,
        } => {
            let (t, token) = topology(&args)?;
            if !no_build {
                t.build().map_err(|e| super::fail(exit::FAILED, e))?;
            }
            // Before the containers start: compose mounts the CA file, and Docker would make a
            // directory of a path that does not exist yet.
            t.tls().map_err(|e| super::fail(exit::FAILED, e))?;
            t.start().map_err(|e| super::fail(exit::FAILED, e))?;
            let names = hosts(&t)?;
            eprintln!("waiting for {} agents and a healthy load balancer...", names.len());
            super::runtime()?
                .block_on(t.wait_ready(&names, token, timeout))
                .map_err(|e| super::fail(exit::FAILED, anyhow::anyhow!("{e}; see `docker logs faultline-web-a1`")))?;
            print_status(&t)?;
            println!(
                "ready. Run a game day with:\n  faultline run --token-file {} experiments/gameday-az-outage.json",
                args.token_file.display()
            );
            Ok(exit::COMPLETED)
        }
        TopologyAction::Down { topology: args } => {
            let (t, _) = topology(&args)?;
            t.down().map_err(|e| super::fail(exit::FAILED, e))?;
            Ok(exit::COMPLETED)
        }
        TopologyAction::Status { topology: args } => {
            let (t, token) = topology(&args)?;
            print_status(&t)?;
            let lb = format!("http://127.0.0.1:{}/lb/healthz", t.lb_port);
            let listed = super::runtime()?.block_on(async {
                let health = reqwest::Client::new()
                    .get(&lb)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                match health {
                    Ok(r) => println!("load balancer: {}", r.text().await.unwrap_or_default().trim()),
                    Err(e) => println!("load balancer: {lb} does not answer ({e})"),
                }
                let endpoint = faultline::fleet::Endpoint {
                    tls: t.tls().ok().map(|(_, config)| config),
                    ..Default::default()
                };
                let c = Controller::start(([0, 0, 0, 0], CONTROLLER_PORT).into(), token, endpoint)
                    .await
                    .ok()?;
                let hosts = c
                    .wait_for_agents(&AgentWait::Settle(Default::default()), Duration::from_secs(5))
                    .await
                    .ok();
                c.shutdown();
                hosts
            });
            match listed {
                Some(h) => println!(
                    "{} agents connect: {}",
                    h.len(),
                    h.iter().map(|h| h.host_id.as_str()).collect::<Vec<_>>().join(", ")
                ),
                None => {
                    println!("agents: none connected within 5s, or a controller already holds port {CONTROLLER_PORT}")
                }
            }
            Ok(exit::COMPLETED)
        }
    }
}

fn print_status(t: &Topology) -> anyhow::Result<()> {
    let rows = t.containers().map_err(|e| super::fail(exit::FAILED, e))?;
    if rows.is_empty() {
        println!("the topology is down (no container of project faultline)");
        return Ok(());
    }
    let mut table = faultline::report::table(["container", "state", "networks"]);
    for (name, state, nets) in rows {
        table.add_row(vec![name, state, nets]);
    }
    println!("{table}");
    Ok(())
}
