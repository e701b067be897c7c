//! `faultline:process:pause`: stop every process with a given name (SIGSTOP) and resume
//! it (SIGCONT) when the fault is removed, whatever removes it.
//!
//! Each stopped process is marked in the state dir by pid and start time before it is
//! stopped (a marker of the set [`MARKERS`], `<fault file stem>.<pid>-<start time>`, written
//! and synced before the SIGSTOP), so a restart after a crash resumes it whatever became of
//! the record, and a pid reused since is left alone.
//!
//! Before the first SIGSTOP a guardian starts: a holder in a session of its own that is told
//! each process before it is stopped, and resumes them all at the deadline or as soon as the
//! agent is gone, however it ends (SIGKILL, a kill of its process group or session). Only a
//! kill of the whole cgroup takes the guardian too; the markers then let the next start
//! resume them.

use super::kill::{self, Policy, Target};
use super::{Answer, Apply, Env, Fault, FaultError, FaultKind, Kind, Leftover, Started, WireParams};
use crate::holder::{Bond, Heard, Holder, Holding, Work};
use crate::limits::{self, OutOfRange};
use crate::protocol::Observed;
use crate::state::{Record, StateDir};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// The wire parameters: `{"kind":"pause","process_name":"web"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Matched as a kill's: `/proc/PID/comm` or the basename of argv[0]
    /// ([`limits::PROCESS_NAME_BYTES`] long).
    pub process_name: String,
}

impl WireParams for Params {
    const CAPABILITY: &'static str = "pause";

    fn check(&self) -> Result<(), OutOfRange> {
        limits::process_name_ok(&self.process_name)
    }
}

/// The state dir's marker set of stopped processes.
pub const MARKERS: &str = "paused";

fn tag(t: Target) -> String {
    format!("{}-{}", t.pid, t.start_time)
}

fn mark(state: &StateDir, fault_id: &str, t: Target) -> io::Result<()> {
    state.mark(MARKERS, fault_id, &tag(t))
}

fn unmark(state: &StateDir, fault_id: &str, t: Target) -> io::Result<()> {
    state.discard(&state.marker(MARKERS, fault_id, &tag(t)))
}

/// Every stopped process on record: its marker, and the process when the marker's name
/// could be read.
pub fn marked(state: &StateDir) -> io::Result<Vec<(PathBuf, Option<Target>)>> {
    Ok(state
        .markers(MARKERS)?
        .into_iter()
        .map(|(path, tag)| {
            let target = tag
                .as_deref()
                .and_then(|t| t.split_once('-'))
                .and_then(|(pid, start)| {
                    Some(Target {
                        pid: pid.parse().ok()?,
                        start_time: start.parse().ok()?,
                    })
                });
            (path, target)
        })
        .collect())
}

/// Whether a fault other than `fault_id` also keeps `t` stopped.
fn paused_by_another(state: &StateDir, fault_id: &str, t: Target) -> io::Result<bool> {
    let mine = state.marker(MARKERS, fault_id, &tag(t));
    Ok(marked(state)?.iter().any(|(path, m)| *m == Some(t) && *path != mine))
}

/// The kind. Its undo data are the markers of the state dir, one per stopped process, not
/// its record: a marker is written before each SIGSTOP.
#[derive(Debug, Default)]
pub struct Pause;

impl Kind for Pause {
    fn apply(&self, a: &Apply<'_>, _undo: &serde_json::Value, env: &Env<'_>) -> Result<Started, FaultError> {
        let FaultKind::Pause(Params { process_name }) = &a.spec.kind else {
            return Err(super::mismatch(a.spec));
        };
        let fault_id = &a.spec.fault_id;
        // The pause's own end, before anything is stopped: a guardian that resumes them when
        // this agent dies.
        let work = Work {
            kind: Params::CAPABILITY,
            params: serde_json::json!({}),
            bond: Bond::Pipe,
        };
        let (mut guard, _) = Holder::spawn(&a.hash, &work, a.until)
            .map_err(FaultError::io("cannot start the process that resumes a pause"))?;
        let mut tell = |t: Target| guard.tell(&format!("{} {}", t.pid, t.start_time));
        let targets =
            pause(fault_id, process_name, &env.config.kill, env.state, &mut tell).map_err(FaultError::refused)?;
        let pids = targets.iter().map(|t| t.pid).collect();
        let detail = format!("pause in effect for {} ms", a.duration.as_millis());
        Ok(Started {
            fault: Box::new(Paused {
                fault_id: fault_id.clone(),
                targets,
                guard: Some(guard),
            }),
            answer: Answer::Now(detail, pids),
        })
    }

    fn sweep(&self, _records: &[Record], _unreadable: &[PathBuf], env: &Env<'_>) -> Vec<Leftover> {
        let paused = marked(env.state).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot list the processes a previous run paused");
            Vec::new()
        });
        // Each paused process is its own removal, so one that fails is retried on its own.
        paused
            .into_iter()
            .map(|(marker, target)| Leftover {
                id: format!("paused:{}", marker.display()),
                fault: Box::new(Stopped { marker, target }),
                file: None,
            })
            .collect()
    }

    fn hold(&self, _params: &serde_json::Value, holding: &Holding) -> io::Result<()> {
        resume_when_left(holding)
    }
}

/// Processes this life of the agent stopped, and the holder that resumes them should it die.
#[derive(Debug)]
struct Paused {
    fault_id: String,
    targets: Vec<Target>,
    guard: Option<Holder>,
}

impl Fault for Paused {
    fn remove(&mut self, env: &Env<'_>) -> Result<(), FaultError> {
        resume(&self.fault_id, &self.targets, env.state)
            .map_err(FaultError::io("cannot resume the paused processes"))?;
        if let Some(guard) = self.guard.take() {
            guard.stop();
        }
        Ok(())
    }

    fn observed(&mut self) -> Observed {
        let stopped = self.targets.iter().filter(|t| is_stopped(**t)).count();
        Observed::default().with(
            "processes_stopped",
            "processes",
            Some(self.targets.len() as f64),
            stopped as f64,
        )
    }
}

/// Whether `target` is still the process it was, and stopped (state `T`).
fn is_stopped(target: Target) -> bool {
    kill::start_time(target.pid) == Some(target.start_time) && kill::state(target.pid) == Some('T')
}

/// A process a previous life of this agent paused, known by its marker file (whose name
/// holds the pid and start time, when it could be read).
#[derive(Debug)]
struct Stopped {
    marker: PathBuf,
    target: Option<Target>,
}

impl Fault for Stopped {
    fn remove(&mut self, env: &Env<'_>) -> Result<(), FaultError> {
        resume_leftover(&self.marker, self.target, env.state)
            .map_err(FaultError::io("cannot resume a process the previous run paused"))
    }
}

/// Why a pause could not take effect; nothing it stopped stays stopped.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// No process may be or could be stopped.
    #[error(transparent)]
    Target(#[from] kill::KillError),
    /// A marker could not be written, the guardian could not be told, or SIGSTOP failed.
    #[error("cannot pause pid {pid}: {source}")]
    Io {
        /// The process.
        pid: u32,
        /// The error.
        source: io::Error,
    },
}

/// Stops every process named `name` that `policy` allows, for `fault_id`; the processes
/// stopped. Each is marked on disk and told to its guardian (`tell`) before it is stopped.
pub fn pause(
    fault_id: &str,
    name: &str,
    policy: &Policy,
    state: &StateDir,
    tell: &mut dyn FnMut(Target) -> io::Result<()>,
) -> Result<Vec<Target>, PauseError> {
    let targets = kill::targets(name, policy)?;
    let mut stopped = Vec::new();
    for t in &targets {
        let result = mark(state, fault_id, *t)
            .and_then(|()| tell(*t))
            .and_then(|()| kill::signal(*t, kill::Signal::SIGSTOP));
        match result {
            Ok(true) => stopped.push(*t),
            Ok(false) => {
                let _ = unmark(state, fault_id, *t);
            }
            Err(source) => {
                let _ = unmark(state, fault_id, *t);
                if let Err(e) = resume(fault_id, &stopped, state) {
                    tracing::error!(error = %e, "cannot resume what a failed pause stopped");
                }
                return Err(PauseError::Io { pid: t.pid, source });
            }
        }
    }
    if stopped.is_empty() {
        return Err(kill::KillError::AllExited(name.to_string()).into());
    }
    Ok(stopped)
}

/// Resumes the processes `fault_id` stopped, except those another pause still holds, and
/// forgets them. Stops at the first error, leaving the rest marked for a retry.
pub fn resume(fault_id: &str, targets: &[Target], state: &StateDir) -> io::Result<()> {
    for t in targets {
        if !paused_by_another(state, fault_id, *t)? {
            kill::signal(*t, kill::Signal::SIGCONT)?;
        }
        unmark(state, fault_id, *t)?;
    }
    Ok(())
}

/// The end of a pause of its own, run in its guardian: learns each process (`PID START`
/// lines) before the agent stops it, and once its deadline passes or the agent is gone,
/// resumes every one that is still the process it was (same start time).
pub fn resume_when_left(holding: &Holding) -> io::Result<()> {
    let gone = holding
        .gone
        .as_ref()
        .ok_or_else(|| io::Error::other("a pause's guardian is bound by a pipe"))?;
    let mut targets = Vec::new();
    loop {
        match gone.next(holding.until, Duration::from_secs(3600)) {
            Heard::Line(line) => match line.split_once(' ').and_then(|(p, s)| Some((p.parse().ok()?, s.parse().ok()?))) {
                Some((pid, start_time)) => targets.push(Target { pid, start_time }),
                None => eprintln!("a pause's guardian cannot read `{line}`; expected PID START"),
            },
            Heard::End => break,
            Heard::Nothing => {}
        }
    }
    let mut first_error = None;
    for target in targets {
        let pid = target.pid;
        // Every target gets its chance, whatever happened to the one before.
        if let Err(e) = kill::signal(target, kill::Signal::SIGCONT) {
            eprintln!("cannot resume pid {pid}: {e}");
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Resumes a process a previous life of this agent left stopped, by its marker (`target`
/// is `None` when the marker's name could not be read: it is only discarded), then forgets it.
pub fn resume_leftover(marker: &std::path::Path, target: Option<Target>, state: &StateDir) -> io::Result<()> {
    if let Some(t) = target {
        if kill::signal(t, kill::Signal::SIGCONT)? {
            tracing::warn!(pid = t.pid, "resumed a process the previous run of this agent paused");
        }
    }
    state.discard(marker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_name_pid_and_start_time_and_each_pause_its_own() {
        let dir = std::env::temp_dir().join(format!("fl-pause-markers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = StateDir::open(&dir).unwrap();
        let t = Target {
            pid: 42,
            start_time: 777,
        };
        mark(&state, "e/a/h1", t).unwrap();
        mark(&state, "e/b/h1", t).unwrap();
        let found: Vec<_> = marked(&state).unwrap().into_iter().map(|(_, t)| t).collect();
        assert_eq!(found, vec![Some(t), Some(t)]);
        assert!(paused_by_another(&state, "e/a/h1", t).unwrap());
        unmark(&state, "e/b/h1", t).unwrap();
        assert!(!paused_by_another(&state, "e/a/h1", t).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Whether `pid` reaches the stopped state `stopped` within five seconds (a signal is
    /// delivered asynchronously).
    fn becomes(pid: u32, stopped: bool) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while kill::is_stopped(pid) != stopped {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::yield_now();
        }
        true
    }

    #[test]
    fn stops_resumes_and_a_restart_resumes_what_a_crash_left() {
        let dir = std::env::temp_dir().join(format!("fl-pause-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = StateDir::open(&dir).unwrap();
        let name = format!("fl-pause-test-{}", std::process::id());
        let child = kill::tests::named_sleep(&name);
        let policy = Policy::default();

        let mut told = Vec::new();
        let targets = pause("e/a/h", &name, &policy, &state, &mut |t| {
            // Told before it is stopped.
            assert!(!kill::is_stopped(t.pid));
            told.push(t);
            Ok(())
        })
        .unwrap();
        assert_eq!(told, targets, "the guardian knows every process stopped");
        assert_eq!(targets.iter().map(|t| t.pid).collect::<Vec<_>>(), vec![child.id()]);
        assert!(becomes(child.id(), true));
        assert_eq!(marked(&state).unwrap().len(), 1, "marked before it was stopped");
        resume("e/a/h", &targets, &state).unwrap();
        assert!(becomes(child.id(), false));
        assert!(marked(&state).unwrap().is_empty());

        // A crash between pause and resume: the marker alone brings the process back.
        pause("e/b/h", &name, &policy, &state, &mut |_| Ok(())).unwrap();
        assert!(becomes(child.id(), true));
        let left = marked(&state).unwrap();
        assert_eq!(left.len(), 1);
        for (marker, target) in left {
            resume_leftover(&marker, target, &state).unwrap();
        }
        assert!(becomes(child.id(), false));
        assert!(marked(&state).unwrap().is_empty());

        drop(child);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
