//! The `faultline` command line: the binary edge, where errors become messages and exit codes.

mod cli;
mod commands;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    faultline::logging::init(
        cli.log_format,
        cli.verbose as i8 - cli.quiet as i8,
        &["faultline", "faultline_agent"],
    );
    faultline_agent::net::raise_fd_limit();
    match commands::dispatch(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(
                e.downcast_ref::<commands::Coded>()
                    .map_or(faultline::exit::FAILED, |c| c.code),
            )
        }
    }
}
