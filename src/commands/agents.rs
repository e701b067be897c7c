//! `faultline agents`: who is connected.

use crate::cli::{ControllerArgs, ReportFormat};
use faultline::controller::AgentWait;
use faultline::exit;
use faultline_agent::protocol::HostDescription;

/// Lists the agents that connect before the wait ends.
pub(super) fn run(args: ControllerArgs, format: ReportFormat) -> anyhow::Result<u8> {
    super::runtime()?.block_on(async move {
        let controller = super::controller::start(&args).await?;
        let wait = match args.wait_agents {
            Some(n) => AgentWait::Count(n),
            None => AgentWait::Settle(Default::default()),
        };
        controller
            .wait_for_agents(&wait, args.agents_timeout)
            .await
            .map_err(|e| super::fail(e.code, e))?;
        // With the hosts their platform stopped or terminated, whose agents are gone.
        let hosts = controller.hosts().await;
        print(&hosts, format)?;
        Ok(exit::COMPLETED)
    })
}

/// Prints hosts as `faultline agents` shows them.
pub(super) fn print(hosts: &[HostDescription], format: ReportFormat) -> anyhow::Result<()> {
    match format {
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&hosts)?),
        ReportFormat::Table => {
            let mut t = faultline::report::table(["host", "az", "state", "tags", "address", "capabilities", "version"]);
            for h in hosts {
                let tags: Vec<String> = h.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                t.add_row(vec![
                    h.host_id.clone(),
                    h.placement.availability_zone.clone(),
                    h.state.name.clone(),
                    tags.join(", "),
                    h.address.clone(),
                    h.agent.capabilities.join(", "),
                    h.agent.version.clone(),
                ]);
            }
            println!("{t}");
        }
    }
    Ok(())
}
