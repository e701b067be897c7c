//! `faultline run`: an experiment against live agents.

use crate::cli::{ReportFormat, RunArgs as Args};
use faultline::controller::{agent_wait, AgentWait, RunOptions};
use faultline::report::junit;
use faultline::run::StopRequest;
use faultline::signals::{Ending, EndingSignals};
use faultline::{exit, plan, template};
use tokio::sync::mpsc;

/// Runs the experiment; the exit status follows the experiment's final state.
pub(super) fn run(args: Args) -> anyhow::Result<u8> {
    if let Some(server) = args.server.clone() {
        return super::client::run_remote(&server, &args);
    }
    let junit = args.junit.clone();
    let template = args.template.clone();
    let result = template::load(&args.template, args.alarms.as_deref())
        .map_err(|e| super::fail(exit::INVALID, anyhow::anyhow!(e.render())))
        .and_then(|experiment| {
            for w in &experiment.warnings {
                eprintln!("{} (warning)", w.render(&args.template.display().to_string()));
            }
            execute(args, experiment)
        });
    if let Some(path) = &junit {
        let xml = match &result {
            Ok((_, Some(report))) => junit::render(report),
            Ok((_, None)) => return result.map(|(code, _)| code),
            Err(e) => junit::render_error(&template, &format!("{e:#}")),
        };
        std::fs::write(path, xml)
            .map_err(|e| super::fail(exit::FAILED, anyhow::anyhow!("cannot write {}: {e}", path.display())))?;
    }
    result.map(|(code, _)| code)
}

/// Serves agents and runs; the exit status and the report (none for a dry run).
fn execute(args: Args, experiment: template::Experiment) -> anyhow::Result<(u8, Option<faultline::report::Report>)> {
    super::runtime()?.block_on(async move {
        let controller = super::controller::start(&args.controller).await?;
        let wait = match args.controller.wait_agents {
            Some(n) => AgentWait::Count(n),
            None => agent_wait(&experiment),
        };
        controller
            .wait_for_agents(&wait, args.controller.agents_timeout)
            .await
            .map_err(|e| super::fail(e.code, e))?;
        // actionsMode skip-all is FIS's preview: targets resolved, nothing injected.
        if args.dry_run || experiment.skip_all_actions {
            let hosts = controller.hosts().await;
            return dry_run(&experiment, &hosts, args.seed, args.format).map(|code| (code, None));
        }
        let (stop_tx, stop_rx) = mpsc::channel(4);
        interrupts(stop_tx, Second::ExitAtOnce);
        let mut opts = RunOptions::new(&args.template);
        opts.seed = args.seed;
        opts.journal = args.journal.clone();
        opts.settings.ack_timeout = args.ack_timeout;
        opts.settings.strict = args.strict;
        let report = controller
            .run(experiment, opts, stop_rx)
            .await
            .map_err(|e| super::fail(e.code, e))?;
        controller.shutdown();
        match args.format {
            ReportFormat::Table => println!("{}", report.render()),
            ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        }
        Ok((report.exit_code, Some(report)))
    })
}

pub(super) fn dry_run(
    experiment: &template::Experiment,
    hosts: &[faultline_agent::protocol::HostDescription],
    seed: Option<u64>,
    format: ReportFormat,
) -> anyhow::Result<u8> {
    let seed = seed.unwrap_or_else(rand::random);
    let resolution = plan::resolve(experiment, hosts, seed).map_err(|e| super::fail(exit::FAILED, e))?;
    let plan = plan::plan(experiment, &resolution);
    match format {
        ReportFormat::Table => println!("{}", plan::render_tables(experiment, &resolution, &plan, hosts)),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
    }
    Ok(exit::COMPLETED)
}

/// What a second SIGINT or SIGTERM does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Second {
    /// Exit at once with that signal's status; the agents' leases remove what is left.
    ExitAtOnce,
    /// Nothing: the first one's clean-up (which also stops child processes) goes on.
    Ignore,
}

/// From now on (the handlers are installed before this returns), the first SIGINT (Ctrl-C),
/// SIGTERM (CI cancellation, `timeout`, systemd), SIGHUP or SIGQUIT stops the experiment:
/// every fault removed, the report printed.
pub(super) fn interrupts(stop: mpsc::Sender<StopRequest>, second: Second) {
    let Ok(signals) = EndingSignals::install() else {
        tracing::error!("cannot install the signal handlers; a signal ends the run without clean-up");
        return;
    };
    tokio::spawn(forward(signals, stop, second));
}

/// The first signal becomes a stop request; a later one does what `second` says.
async fn forward(mut signals: EndingSignals, stop: mpsc::Sender<StopRequest>, second: Second) {
    let Some(first) = signals.next().await.map(request) else {
        return;
    };
    match second {
        Second::ExitAtOnce => eprintln!(
            "stopping ({first}): removing every fault (send the signal again to exit at once; agents' leases clean up)"
        ),
        Second::Ignore => eprintln!("stopping ({first}): removing every fault"),
    }
    let _ = stop.send(first).await;
    loop {
        let Some(again) = signals.next().await else {
            return;
        };
        if second == Second::ExitAtOnce {
            eprintln!("exiting now");
            std::process::exit(i32::from(match again {
                Ending::Terminate => exit::TERMINATED,
                Ending::Interrupt => exit::INTERRUPTED,
            }));
        }
    }
}

/// The stop a signal asks for.
fn request(ending: Ending) -> StopRequest {
    match ending {
        Ending::Interrupt => StopRequest::Interrupted,
        Ending::Terminate => StopRequest::Terminated,
    }
}
