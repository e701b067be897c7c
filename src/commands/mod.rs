//! One function per command; each returns the exit status.

mod agents;
mod client;
mod controller;
mod demo;
mod hold_start;
mod plan;
mod report;
mod run;
mod serve;
mod topology;
mod validate;

use crate::cli::Command;
use std::fmt;

/// An error that carries the exit status it ends the process with.
#[derive(Debug)]
pub(crate) struct Coded {
    /// Exit status.
    pub code: u8,
    /// What went wrong.
    pub error: anyhow::Error,
}

impl fmt::Display for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Coded {}

/// Wraps an error with the exit status it must end the process with.
pub(crate) fn fail(code: u8, error: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::Error::new(Coded {
        code,
        error: error.into(),
    })
}

/// A multi-threaded runtime for the commands that serve agents.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail(faultline::exit::FAILED, e))
}

/// Runs one command.
pub(crate) fn dispatch(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Validate {
            alarms,
            inventory,
            format,
            files,
        } => validate::run(&files, alarms.as_deref(), inventory.as_deref(), format),
        Command::Plan {
            inventory,
            seed,
            alarms,
            format,
            template,
        } => plan::run(&template, alarms.as_deref(), &inventory, seed, format),
        Command::Run(args) => run::run(args),
        Command::Agents {
            controller: _,
            format,
            server: Some(server),
            api_token_file,
        } => client::agents(&server, &api_token_file, format),
        Command::Agents { controller, format, .. } => agents::run(controller, format),
        Command::Demo {
            serve: true, server, ..
        } => serve::run(server, true),
        Command::Demo {
            template,
            alarms,
            lb_port,
            seed,
            format,
            junit,
            strict,
            serve: false,
            ..
        } => demo::run(
            template.as_deref(),
            alarms.as_deref(),
            lb_port,
            seed,
            format,
            junit.as_deref(),
            strict,
        ),
        Command::Topology { action } => topology::run(action),
        Command::HoldStart {
            container,
            until_unix_ms,
        } => hold_start::run(&container, until_unix_ms),
        Command::Serve { args, demo } => serve::run(args, demo),
        Command::Experiments { client, action } => client::experiments(&client, action),
        Command::Schedules { client, action } => client::schedules(&client, action),
        Command::Lever { client, action } => client::lever(&client, action),
        Command::History { client, limit } => client::history(&client, limit),
        Command::Report(args) => report::run(args),
        Command::Schema => {
            print!("{}", faultline::actions::schema::text());
            Ok(faultline::exit::COMPLETED)
        }
    }
}
