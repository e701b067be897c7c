//! Command-line definitions (clap).

use clap::{Parser, Subcommand, ValueEnum};
use faultline::logging::LogFormat;
use std::path::PathBuf;

/// Chaos experiments from FIS-style templates, run by agents that always clean up.
#[derive(Debug, Parser)]
#[command(name = "faultline", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "FAULTLINE_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors in the log.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Output format of `validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ValidateFormat {
    /// One line per error.
    Human,
    /// A JSON array, one object per file.
    Json,
}

/// Output format of reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Tables.
    Table,
    /// JSON.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check templates against the schema and the semantic rules; exit 2 if any is invalid.
    Validate {
        /// Alarms file that stop conditions may name (same shape as a template's `alarms`).
        #[arg(long, value_name = "FILE")]
        alarms: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ValidateFormat::Human)]
        format: ValidateFormat,
        /// Template files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Dry run: resolve targets against an inventory and show the action timeline.
    Plan {
        /// JSON array of host descriptions (see experiments/inventory.json).
        #[arg(long, value_name = "FILE")]
        inventory: PathBuf,
        /// Seed for random selection (COUNT, PERCENT); printed when not given.
        #[arg(long)]
        seed: Option<u64>,
        /// Alarms file that stop conditions may name.
        #[arg(long, value_name = "FILE")]
        alarms: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
        /// Template file.
        #[arg(value_name = "TEMPLATE")]
        template: PathBuf,
    },
}
