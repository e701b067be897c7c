//! `tracing` set-up shared by the controller and the agent: human or JSON lines on stderr.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber for the crates named `ours` (e.g. `faultline`).
/// `verbosity` is -1 for quiet, 0 default, 1+ for more; `RUST_LOG` overrides it when set.
pub fn init(format: LogFormat, verbosity: i8, ours: &[&str]) {
    let (others, mine) = match verbosity {
        i8::MIN..=-1 => ("error", "error"),
        0 => ("warn", "info"),
        1 => ("info", "debug"),
        _ => ("debug", "trace"),
    };
    let level: String = std::iter::once(others.to_string())
        .chain(ours.iter().map(|c| format!("{c}={mine}")))
        .collect::<Vec<_>>()
        .join(",");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        // A log line that cannot be written (a terminal that hung up) is dropped: reporting
        // it on stderr would panic there, in the middle of removing faults.
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
