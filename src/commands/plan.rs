//! `faultline plan`: the dry run against an inventory file.

use crate::cli::ReportFormat;
use faultline::exit;
use faultline::plan;
use faultline::template;
use std::path::Path;

/// Resolves and prints the plan; exit 2 on invalid input, 3 when a target resolves to nothing.
pub(super) fn run(
    template_path: &Path,
    alarms: Option<&Path>,
    inventory: &Path,
    seed: Option<u64>,
    format: ReportFormat,
) -> anyhow::Result<u8> {
    let experiment =
        template::load(template_path, alarms).map_err(|e| super::fail(exit::INVALID, anyhow::anyhow!(e.render())))?;
    for w in &experiment.warnings {
        eprintln!("{} (warning)", w.render(&template_path.display().to_string()));
    }
    let text = std::fs::read_to_string(inventory).map_err(|e| {
        super::fail(
            exit::INVALID,
            anyhow::anyhow!("cannot read inventory {}: {e}", inventory.display()),
        )
    })?;
    let hosts = plan::inventory::parse(&text).map_err(|diags| {
        let rendered: Vec<String> = diags
            .iter()
            .map(|d| d.render(&inventory.display().to_string()))
            .collect();
        super::fail(exit::INVALID, anyhow::anyhow!(rendered.join("\n")))
    })?;
    let seed = seed.unwrap_or_else(rand::random);
    let resolution = plan::resolve(&experiment, &hosts, seed).map_err(|e| super::fail(exit::FAILED, e))?;
    plan::check_platforms(&experiment, &resolution, &hosts).map_err(|e| super::fail(exit::INVALID, e))?;
    let plan = plan::plan(&experiment, &resolution);
    match format {
        ReportFormat::Table => println!("{}", plan::render_tables(&experiment, &resolution, &plan, &hosts)),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
    }
    Ok(exit::COMPLETED)
}
