//! `faultline:process:pause`: stop every process with a given name (SIGSTOP) and resume
//! it (SIGCONT) when the fault is removed, whatever removes it.
//!
//! Each stopped process is marked in the state dir by pid and start time before it is
//! stopped, so a restart after a crash resumes it, and a pid reused since is left alone.

use super::kill::{self, Policy, Target};
use crate::state::StateDir;
use std::io;

/// Why a pause could not take effect; nothing it stopped stays stopped.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// No process may be or could be stopped.
    #[error(transparent)]
    Target(#[from] kill::KillError),
    /// A marker could not be written, or SIGSTOP failed.
    #[error("cannot pause pid {pid}: {source}")]
    Io {
        /// The process.
        pid: u32,
        /// The error.
        source: io::Error,
    },
}

/// Stops every process named `name` that `policy` allows, for `fault_id`; the processes
/// stopped.
pub fn pause(fault_id: &str, name: &str, policy: &Policy, state: &StateDir) -> Result<Vec<Target>, PauseError> {
    let targets = kill::targets(name, policy)?;
    let mut stopped = Vec::new();
    for t in &targets {
        let result = state
            .mark_paused(fault_id, t.pid, t.start_time)
            .and_then(|()| kill::signal(*t, libc::SIGSTOP));
        match result {
            Ok(true) => stopped.push(*t),
            Ok(false) => {
                let _ = state.unmark_paused(fault_id, t.pid, t.start_time);
            }
            Err(source) => {
                let _ = state.unmark_paused(fault_id, t.pid, t.start_time);
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
        if !state.paused_by_another(fault_id, t.pid, t.start_time)? {
            kill::signal(*t, libc::SIGCONT)?;
        }
        state.unmark_paused(fault_id, t.pid, t.start_time)?;
    }
    Ok(())
}

/// The end of a pause of its own, run in a holder process: waits until `until` or until the
/// agent is gone (its stdin, a pipe only the agent writes to, reaches end of file), then
/// resumes every target that is still the process it was (same start time).
pub fn resume_when_left(targets: &[(u32, u64)], until: crate::holder::Deadline) -> io::Result<()> {
    let (gone_tx, gone_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut sink = [0u8; 64];
        // Nothing is ever written: a read returns only at end of file, or on an error.
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        let _ = gone_tx.send(());
    });
    loop {
        let now = crate::holder::Deadline::after(std::time::Duration::ZERO);
        if now >= until {
            break;
        }
        let left = std::time::Duration::from_millis(until.monotonic_ms - now.monotonic_ms);
        match gone_rx.recv_timeout(left) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    let mut first_error = None;
    for (pid, start_time) in targets {
        let target = Target {
            pid: *pid,
            start_time: *start_time,
        };
        // Every target gets its chance, whatever happened to the one before.
        if let Err(e) = kill::signal(target, libc::SIGCONT) {
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
        if kill::signal(t, libc::SIGCONT)? {
            tracing::warn!(pid = t.pid, "resumed a process the previous run of this agent paused");
        }
    }
    state.discard(marker)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut child = kill::tests::named_sleep(&name);
        let policy = Policy::default();

        let targets = pause("e/a/h", &name, &policy, &state).unwrap();
        assert_eq!(targets.iter().map(|t| t.pid).collect::<Vec<_>>(), vec![child.id()]);
        assert!(becomes(child.id(), true));
        assert_eq!(state.paused().unwrap().len(), 1, "marked before it was stopped");
        resume("e/a/h", &targets, &state).unwrap();
        assert!(becomes(child.id(), false));
        assert!(state.paused().unwrap().is_empty());

        // A crash between pause and resume: the marker alone brings the process back.
        pause("e/b/h", &name, &policy, &state).unwrap();
        assert!(becomes(child.id(), true));
        let left = state.paused().unwrap();
        assert_eq!(left.len(), 1);
        for (marker, target) in left {
            let target = target.map(|(pid, start_time)| Target { pid, start_time });
            resume_leftover(&marker, target, &state).unwrap();
        }
        assert!(becomes(child.id(), false));
        assert!(state.paused().unwrap().is_empty());

        child.kill().unwrap();
        child.wait().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
