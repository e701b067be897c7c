//! `faultline report`: the game-day report of a run, from a journal file or a server.

use super::client::{block_on, segment, Client};
use crate::cli::{DocumentFormat, ReportArgs};
use anyhow::anyhow;
use faultline::exit;
use faultline::report::{html, markdown, record};
use reqwest::Method;
use std::path::Path;

/// Reads the journal, renders it, writes it out.
pub(super) fn run(args: ReportArgs) -> anyhow::Result<u8> {
    let (text, origin) = match &args.server {
        Some(server) => {
            let client = Client::new(server, &args.api_token_file)?;
            let path = format!("/api/v1/experiments/{}", segment(&args.source));
            let text = block_on(async {
                let (_, text) = client.call(Method::GET, &format!("{path}/journal"), None).await?;
                if !text.trim().is_empty() {
                    return Ok(text);
                }
                // A run recorded without running (cancelled, failed to resolve) has no journal:
                // say what became of it.
                let (_, row) = client.call(Method::GET, &path, None).await?;
                let row: serde_json::Value = serde_json::from_str(&row).unwrap_or_default();
                let state = row["state"].as_str().unwrap_or("unknown");
                let reason = row["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default();
                let message = match state {
                    "pending" | "initiating" | "running" => format!("{} has no journal yet; try again", args.source),
                    _ => format!(
                        "{} has no report: it ended {state} without running{reason}",
                        args.source
                    ),
                };
                Err(super::fail(exit::INVALID, anyhow!(message)))
            })?;
            (text, format!("the journal of {} on {server}", args.source))
        }
        None => {
            let path = Path::new(&args.source);
            let text = std::fs::read_to_string(path).map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::NotFound && !args.source.contains(['/', '.']) {
                    "; to fetch an experiment's journal from a server, give --server URL"
                } else {
                    ""
                };
                super::fail(exit::INVALID, anyhow!("cannot read {}: {e}{hint}", path.display()))
            })?;
            (text, args.source.clone())
        }
    };
    let run = record::RunRecord::from_jsonl(&text).map_err(|e| super::fail(exit::INVALID, anyhow!("{origin}: {e}")))?;
    let document = match args.format {
        DocumentFormat::Html => html::render(&run),
        DocumentFormat::Md => markdown::render(&run),
    };
    match &args.output {
        Some(path) => std::fs::write(path, document)
            .map_err(|e| super::fail(exit::FAILED, anyhow!("cannot write {}: {e}", path.display())))?,
        None => print!("{document}"),
    }
    Ok(exit::COMPLETED)
}
