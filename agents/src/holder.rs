//! Holders: CPU burn and memory stress run in child processes, the agent binary re-executed
//! as `faultline-agent hold cpu|memory --fault HASH ...`. A holder ends on its own at its
//! deadline, dies with the agent (`PR_SET_PDEATHSIG`), and is what an OOM kill takes
//! instead of the agent. So a SIGKILLed agent that never comes back leaves nothing burning.
//!
//! PDEATHSIG fires when the *thread* that forked the child exits: holders are spawned only
//! from the agent's main thread (the one running its runtime), never from a helper thread.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

/// What a holder's stdout says once its work has fully taken effect (memory resident).
pub const READY: &str = "ready";

/// A point on CLOCK_MONOTONIC, which the agent and its holders share (it counts from boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline {
    /// Milliseconds on CLOCK_MONOTONIC.
    pub monotonic_ms: u64,
}

impl Deadline {
    /// `left` from now.
    pub fn after(left: Duration) -> Deadline {
        Deadline {
            monotonic_ms: monotonic_ms().saturating_add(u64::try_from(left.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// Sleeps until the deadline has passed.
    pub fn sleep(self) {
        loop {
            let now = monotonic_ms();
            if now >= self.monotonic_ms {
                return;
            }
            std::thread::sleep(Duration::from_millis(self.monotonic_ms - now));
        }
    }

    /// Whether the deadline has passed.
    pub fn passed(self) -> bool {
        monotonic_ms() >= self.monotonic_ms
    }
}

fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// The work of a holder, as passed on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// Burn `load_percent` of `workers` CPUs (0 = every CPU).
    Cpu { load_percent: u8, workers: u32 },
    /// Keep `bytes` resident, touched by `workers` threads.
    Memory { bytes: u64, workers: u32 },
    /// Resume these stopped processes (pid, start time) at the deadline or as soon as the
    /// agent is gone: a pause's own end. This holder has no death signal; it learns of the
    /// agent's death from its stdin, a pipe whose other end only the agent holds.
    Resume { targets: Vec<(u32, u64)> },
}

/// A running holder process; killed and reaped by [`Holder::stop`] or on drop.
#[derive(Debug)]
pub struct Holder {
    child: Child,
    /// The write end of a [`Work::Resume`] holder's stdin, kept open while the agent lives.
    _alive: Option<std::process::ChildStdin>,
}

impl Holder {
    /// Starts a holder for the fault whose name hash is `fault` (as in its state record),
    /// ending on its own at `until`. Returns its stdout, where it writes [`READY`].
    pub fn spawn(fault: &str, work: &Work, until: Deadline) -> io::Result<(Holder, ChildStdout)> {
        let mut cmd = Command::new("/proc/self/exe");
        // A name to recognise leftovers by: `faultline-agent hold cpu --fault HASH ...`.
        cmd.arg0("faultline-agent").arg("hold");
        match work {
            Work::Cpu { load_percent, workers } => cmd
                .arg("cpu")
                .args(["--load-percent", &load_percent.to_string()])
                .args(["--workers", &workers.to_string()]),
            Work::Memory { bytes, workers } => cmd
                .arg("memory")
                .args(["--bytes", &bytes.to_string()])
                .args(["--workers", &workers.to_string()]),
            Work::Resume { targets } => cmd.arg("resume").args(
                targets
                    .iter()
                    .flat_map(|(pid, start)| ["--target".to_string(), format!("{pid}:{start}")]),
            ),
        };
        let resume = matches!(work, Work::Resume { .. });
        cmd.args(["--fault", fault])
            .args(["--parent", &std::process::id().to_string()])
            .args(["--until-ms", &until.monotonic_ms.to_string()])
            .stdin(if resume { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("holder without stdout"))?;
        let alive = child.stdin.take();
        Ok((Holder { child, _alive: alive }, stdout))
    }

    /// Kills the holder and reaps it; its memory is back once this returns.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // Fails only when it is already reaped; a holder that ended at its deadline is a
        // zombie until the wait below, so the pid cannot have been reused.
        let _ = self.child.kill();
        if let Err(e) = self.child.wait() {
            tracing::error!(pid = self.child.id(), error = %e, "cannot reap a holder process");
        }
    }
}

/// In the holder, first thing: die with the agent, and make sure it is still there (it may
/// have died between the fork and the `prctl`). Done after exec, because exec of a binary
/// with file capabilities clears the death signal.
pub fn bind_to_parent(parent: u32) -> io::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number; no pointers.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() };
    if u32::try_from(ppid).ok() != Some(parent) {
        return Err(io::Error::other(format!(
            "the agent (pid {parent}) is gone (parent is now {ppid})"
        )));
    }
    Ok(())
}
