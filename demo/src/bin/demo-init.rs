//! `demo-init`: the init of a demo host. It starts the host's programs, restarts any that
//! exits (as an auto-scaling group replaces a dead instance), reaps orphans when it is PID 1,
//! and on SIGTERM/SIGINT passes the signal on and waits, so the agent removes its faults
//! before the host goes away.

use clap::Parser;
use faultline_agent::logging::{self, LogFormat};
use faultline_demo::runtime;
use std::process::{Child, Command};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

/// Runs programs and keeps them running.
#[derive(Debug, Parser)]
#[command(name = "demo-init", version)]
struct Cli {
    /// A program and its arguments, separated by spaces (no shell, no quoting); repeat.
    #[arg(long = "run", env = "DEMO_INIT_RUN", value_delimiter = ';', required = true)]
    run: Vec<String>,
    /// Wait before restarting a program that exited (ISO 8601).
    #[arg(long, default_value = "PT1S", value_parser = faultline_agent::duration::parse)]
    restart_delay: Duration,
    /// How long programs get to exit after SIGTERM before SIGKILL (ISO 8601).
    #[arg(long, default_value = "PT10S", value_parser = faultline_agent::duration::parse)]
    stop_timeout: Duration,
    /// Stop (as on SIGTERM) when the process that started this one dies; for inits that a
    /// supervisor runs outside a container, such as `faultline demo`.
    #[arg(long, env = "DEMO_INIT_WITH_PARENT")]
    with_parent: bool,
    /// Log line format.
    #[arg(long, env = "DEMO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

struct Program {
    argv: Vec<String>,
    child: Option<Child>,
    restart_at: Option<Instant>,
}

impl Program {
    fn start(&mut self) {
        match Command::new(&self.argv[0]).args(&self.argv[1..]).spawn() {
            Ok(c) => {
                tracing::info!(program = %self.argv[0], pid = c.id(), "started");
                self.child = Some(c);
            }
            Err(e) => tracing::error!(program = %self.argv[0], error = %e, "cannot start"),
        }
        self.restart_at = None;
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }
}

/// Reaps every exited child (ours and orphans); returns the pids and their wait statuses.
fn reap() -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG on any child; `status` is a valid out pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return out;
        }
        out.push((pid, status));
    }
}

fn describe(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("exit status {}", libc::WEXITSTATUS(status))
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, 0, &["demo_init"]);
    if cli.with_parent {
        // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a signal for this process.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
    }
    let mut programs: Vec<Program> = cli
        .run
        .iter()
        .map(|line| Program {
            argv: line.split_whitespace().map(String::from).collect(),
            child: None,
            restart_at: None,
        })
        .filter(|p| !p.argv.is_empty())
        .collect();
    runtime().block_on(async move {
        let (Ok(mut chld), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::child()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return std::process::ExitCode::FAILURE;
        };
        programs.iter_mut().for_each(Program::start);
        loop {
            let next = programs.iter().filter_map(|p| p.restart_at).min();
            tokio::select! {
                _ = chld.recv() => {
                    for (pid, status) in reap() {
                        if let Some(p) = programs.iter_mut().find(|p| p.pid() == Some(pid)) {
                            tracing::warn!(program = %p.argv[0], pid, "{}; restarting in {:?}", describe(status), cli.restart_delay);
                            p.child = None;
                            p.restart_at = Some(Instant::now() + cli.restart_delay);
                        }
                    }
                }
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    let now = Instant::now();
                    programs.iter_mut().filter(|p| p.restart_at.is_some_and(|t| t <= now)).for_each(Program::start);
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        tracing::info!("stopping: SIGTERM to every program");
        for pid in programs.iter().filter_map(Program::pid) {
            // SAFETY: kill(2) on a child we started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + cli.stop_timeout;
        while programs.iter().any(|p| p.child.is_some()) {
            tokio::select! {
                _ = chld.recv() => {
                    for (pid, status) in reap() {
                        if let Some(p) = programs.iter_mut().find(|p| p.pid() == Some(pid)) {
                            tracing::info!(program = %p.argv[0], "{}", describe(status));
                            p.child = None;
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    for pid in programs.iter().filter_map(Program::pid) {
                        tracing::warn!(pid, "did not stop in time; SIGKILL");
                        // SAFETY: kill(2) on a child we started.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    break;
                }
            }
        }
        std::process::ExitCode::SUCCESS
    })
}
