//! `faultline validate`: both passes on every file, every error reported.
//!
//! A file is checked as what it is: a JSON array is an inventory, an object whose `$schema`
//! names the alarms schema is an alarms file, anything else is a template.

use crate::cli::ValidateFormat;
use faultline::exit;
use faultline::plan::inventory;
use faultline::template::{self, Diagnostic, Origin};
use faultline_agent::protocol::HostDescription;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Validates each file; exit 0 when all are valid, 2 when any is not.
pub(super) fn run(
    files: &[PathBuf],
    alarms: Option<&Path>,
    inventory: Option<&Path>,
    format: ValidateFormat,
) -> anyhow::Result<u8> {
    let hosts = match inventory {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                super::fail(
                    exit::INVALID,
                    anyhow::anyhow!("cannot read inventory {}: {e}", path.display()),
                )
            })?;
            Some(inventory::parse(&text).map_err(|diags| {
                let rendered: Vec<String> = diags.iter().map(|d| d.render(&path.display().to_string())).collect();
                super::fail(exit::INVALID, anyhow::anyhow!(rendered.join("\n")))
            })?)
        }
    };
    let alarms_doc = match alarms {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                super::fail(
                    exit::INVALID,
                    anyhow::anyhow!("cannot read alarms file {}: {e}", path.display()),
                )
            })?;
            Some(
                template::parse_json(&text, Origin::Alarms)
                    .map_err(|d| super::fail(exit::INVALID, anyhow::anyhow!(d.render(&path.display().to_string()))))?,
            )
        }
    };
    let mut reports = Vec::new();
    let mut all_valid = true;
    for file in files {
        let result = check(file, alarms_doc.as_ref(), hosts.as_deref());
        all_valid &= result.is_ok();
        match format {
            ValidateFormat::Human => match &result {
                Ok((summary, warnings)) => {
                    for w in warnings {
                        println!("{} (warning)", w.render(&file.display().to_string()));
                    }
                    println!("{}: valid {summary}", file.display())
                }
                Err(diags) => {
                    println!("{}", template::render_all(diags, file, alarms));
                    println!(
                        "{}: invalid ({} error{})",
                        file.display(),
                        diags.len(),
                        plural(diags.len())
                    );
                }
            },
            ValidateFormat::Json => reports.push(json!({
                "file": file,
                "valid": result.is_ok(),
                "warnings": result.as_ref().map(|(_, w)| w.clone()).unwrap_or_default(),
                "errors": result.as_ref().err().map(|diags| diags.iter().map(|d| {
                    let mut v = serde_json::to_value(d).expect("diagnostics serialize");
                    v["file"] = json!(match (d.origin, alarms) { (Origin::Alarms, Some(a)) => a, _ => file.as_path() });
                    v
                }).collect::<Vec<_>>()).unwrap_or_default(),
            })),
        }
    }
    if format == ValidateFormat::Json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(if all_valid { exit::COMPLETED } else { exit::INVALID })
}

/// Checks one file as the kind of document it is; `Ok` carries a one-line summary and the
/// warnings (what is accepted but has no effect here).
fn check(
    file: &Path,
    alarms: Option<&Value>,
    hosts: Option<&[HostDescription]>,
) -> Result<(String, Vec<Diagnostic>), Vec<Diagnostic>> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        vec![Diagnostic::at(
            Origin::Template,
            "",
            format!("cannot read the file: {e}"),
        )]
    })?;
    let doc = template::parse_json(&text, Origin::Template).map_err(|d| vec![d])?;
    let names_alarms_schema = doc
        .get("$schema")
        .and_then(Value::as_str)
        .is_some_and(|s| s.ends_with("alarms.schema.json"));
    if doc.is_array() {
        let hosts = inventory::from_value(&doc)?;
        Ok((
            format!("inventory ({} host{})", hosts.len(), plural(hosts.len())),
            Vec::new(),
        ))
    } else if names_alarms_schema {
        let found = template::validate_alarms(&doc)?;
        Ok((
            format!("alarms file ({} alarm{})", found.len(), plural(found.len())),
            Vec::new(),
        ))
    } else {
        let e = template::validate(&doc, alarms)?;
        if let Some(hosts) = hosts {
            let diags: Vec<Diagnostic> = faultline::plan::could_select_without_platform(&e, hosts)
                .into_iter()
                .map(|(action, message)| {
                    Diagnostic::at(Origin::Template, format!("/actions/{action}/targets"), message)
                })
                .collect();
            if !diags.is_empty() {
                return Err(diags);
            }
        }
        let summary = format!(
            "template ({} target{}, {} action{}, {} stop condition{})",
            e.targets.len(),
            plural(e.targets.len()),
            e.actions.len(),
            plural(e.actions.len()),
            e.stop_conditions.len(),
            plural(e.stop_conditions.len()),
        );
        Ok((summary, e.warnings))
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
