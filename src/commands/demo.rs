//! `faultline demo`: the default topology as local processes, and a game day against it.

use crate::cli::ReportFormat;
use faultline::controller::{AgentWait, Controller, RunOptions};
use faultline::report::junit;
use faultline::run::StopRequest;
use faultline::world::demo::{self, World};
use faultline::{exit, template, token};
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;

/// Brings the world up, runs the game day, reports, brings the world down.
pub(super) fn run(
    template_file: Option<&Path>,
    alarms_file: Option<&Path>,
    lb_port: Option<u16>,
    seed: Option<u64>,
    format: ReportFormat,
    junit_file: Option<&Path>,
    strict: bool,
) -> anyhow::Result<u8> {
    let lb_port = match lb_port {
        Some(p) => p,
        None => demo::free_port().map_err(|e| super::fail(exit::FAILED, e))?,
    };
    let lb_url = format!("http://127.0.0.1:{lb_port}/");
    let (text, label) = match template_file {
        Some(p) => (
            std::fs::read_to_string(p)
                .map_err(|e| super::fail(exit::INVALID, anyhow::anyhow!("cannot read {}: {e}", p.display())))?,
            p.to_path_buf(),
        ),
        None => (demo::GAME_DAY.to_string(), "experiments/gameday-az-outage.json".into()),
    };
    let mut doc = template::parse_json(&text, template::Origin::Template)
        .map_err(|d| super::fail(exit::INVALID, anyhow::anyhow!(d.render(&label.display().to_string()))))?;
    demo::retarget_alarms(&mut doc, &lb_url);
    demo::retarget_user_experience(&mut doc, &lb_url);
    let alarms = match alarms_file {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| super::fail(exit::INVALID, anyhow::anyhow!("cannot read {}: {e}", p.display())))?;
            let mut alarms = template::parse_json(&text, template::Origin::Alarms)
                .map_err(|d| super::fail(exit::INVALID, anyhow::anyhow!(d.render(&p.display().to_string()))))?;
            demo::retarget_alarm_map(&mut alarms, &lb_url);
            Some(alarms)
        }
    };
    let experiment = template::validate(&doc, alarms.as_ref()).map_err(|diags| {
        super::fail(
            exit::INVALID,
            anyhow::anyhow!(template::render_all(&diags, &label, alarms_file)),
        )
    })?;
    for w in &experiment.warnings {
        eprintln!("{} (warning)", w.render(&label.display().to_string()));
    }

    let work = demo::work_dir();
    std::fs::create_dir_all(&work).map_err(|e| super::fail(exit::FAILED, e))?;
    let token_file = std::fs::canonicalize(&work)
        .map_err(|e| super::fail(exit::FAILED, e))?
        .join("token");
    let (token, _) = token::load_or_create(&token_file).map_err(|e| super::fail(exit::FAILED, e))?;
    let bin_dir = std::env::current_exe()
        .map_err(|e| super::fail(exit::FAILED, e))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();

    let result = super::runtime()?.block_on(async {
        let mut controller = Controller::start(([127, 0, 0, 1], 0).into(), token, Default::default())
            .await
            .map_err(|e| super::fail(e.code, e))?;
        let world = World::start(&bin_dir, &work, controller.addr(), &token_file, lb_port)
            .map_err(|e| super::fail(exit::FAILED, e))?;
        controller.set_platforms(world.platforms());
        eprintln!("starting the demo world: 6 hosts in az-a, az-b, az-c and a load balancer at {lb_url}");
        world
            .wait_ready(&controller, Duration::from_secs(60))
            .await
            .map_err(|e| super::fail(exit::FAILED, anyhow::anyhow!("{e}; logs are in {}", work.display())))?;
        if experiment.skip_all_actions {
            eprintln!(
                "demo world ready; {} has actionsMode skip-all: the plan only",
                label.display()
            );
            let hosts = controller
                .wait_for_agents(&AgentWait::Count(world.hosts.len()), Duration::from_secs(10))
                .await
                .map_err(|e| super::fail(e.code, e))?;
            let code = super::run::dry_run(&experiment, &hosts, seed, format);
            controller.shutdown();
            drop(world);
            return code.map(Err);
        }
        eprintln!("demo world ready; running {}", label.display());
        let (stop_tx, stop_rx) = mpsc::channel::<StopRequest>(4);
        // The demo's own processes stop with the world: a second signal must not skip that.
        super::run::interrupts(stop_tx, super::run::Second::Ignore);
        let mut opts = RunOptions::new(&label);
        opts.seed = seed;
        opts.settings.strict = strict;
        let report = controller
            .run(experiment, opts, stop_rx)
            .await
            .map_err(|e| super::fail(e.code, e))?;
        controller.shutdown();
        drop(world);
        Ok::<_, anyhow::Error>(Ok(report))
    });
    let report = match result {
        Ok(Ok(r)) => r,
        Ok(Err(code)) => {
            let _ = std::fs::remove_dir_all(&work);
            return Ok(code);
        }
        Err(e) => {
            eprintln!("(the demo's logs are in {})", work.display());
            return Err(e);
        }
    };
    let _ = std::fs::remove_dir_all(&work);
    match format {
        ReportFormat::Table => println!("{}", report.render()),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    if let Some(path) = junit_file {
        std::fs::write(path, junit::render(&report)).map_err(|e| super::fail(exit::FAILED, e))?;
    }
    Ok(report.exit_code)
}
