//! Holders: long work of a fault (CPU burn, memory, I/O, a pause's own end) runs in child
//! processes, the agent binary re-executed as `faultline-holder hold KIND --fault HASH ...`
//! (argv[0] and its process name are [`NAME`], so `ps` tells them apart and a kill or pause
//! refuses them), which runs that fault kind's `hold`. A holder ends on its own at its
//! deadline, and when the agent dies, by its [`Bond`]: at once (`PR_SET_PDEATHSIG`), or
//! once it has undone its work (a pipe). It is also what an OOM kill takes instead of the
//! agent. So a SIGKILLed agent that never comes back leaves nothing burning.
//!
//! A [`Bond::Pipe`] holder (a guardian: it undoes work when the agent is gone) runs in a
//! session of its own, so a kill of the agent's process group or session (a shell job, an
//! OOM group kill) does not take it along: it sees the agent gone and undoes its work. A
//! kill of the whole cgroup (systemd's `KillMode=control-group` on a SIGKILL) takes it too;
//! then the next start's recovery undoes the work, from the state dir
//! (`agents/faultline-agent.service` restarts the agent at once).
//!
//! PDEATHSIG fires when the *thread* that forked the child exits: holders are spawned only
//! from the agent's main thread (the one running its runtime), never from a helper thread.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

/// What a holder's stdout says once its work has fully taken effect (memory resident).
pub const READY: &str = "ready";

/// A holder's argv[0] and process name (`/proc/PID/comm`, which the kernel cuts to its first
/// 15 bytes, `faultline-holde`).
pub const NAME: &str = "faultline-holder";

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
    // CLOCK_MONOTONIC always exists on Linux; a failure would read as the boot.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map_or(0, |ts| (ts.tv_sec() as u64) * 1000 + (ts.tv_nsec() as u64) / 1_000_000)
}

/// How a holder learns that the agent is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Bond {
    /// `PR_SET_PDEATHSIG`: it dies with the agent at once (CPU and memory: nothing to tidy).
    Death,
    /// Its stdin, a pipe whose other end only the agent holds, reaches end of file: it first
    /// undoes what it did (resumes processes, closes its unnamed files), then exits.
    Pipe,
}

/// The work of a holder: the fault kind whose `hold` runs, and that kind's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Work {
    /// The capability name of the fault kind, e.g. `cpu`.
    pub kind: &'static str,
    /// Its parameters, as the kind's `hold` reads them (JSON on the command line).
    pub params: serde_json::Value,
    /// How it learns that the agent is gone.
    pub bond: Bond,
}

/// A running holder process; killed and reaped by [`Holder::stop`] or on drop.
#[derive(Debug)]
pub struct Holder {
    child: Child,
    /// The write end of a [`Bond::Pipe`] holder's stdin, kept open while the agent lives.
    alive: Option<std::process::ChildStdin>,
}

impl Holder {
    /// Starts a holder for the fault whose name hash is `fault` (as in its state record),
    /// ending on its own at `until`. Returns its stdout, where it writes [`READY`].
    pub fn spawn(fault: &str, work: &Work, until: Deadline) -> io::Result<(Holder, ChildStdout)> {
        let mut cmd = Command::new("/proc/self/exe");
        // A name to recognise holders and leftovers by: `faultline-holder hold cpu --fault HASH ...`.
        cmd.arg0(NAME)
            .args(["hold", work.kind])
            .args(["--params", &work.params.to_string()])
            .args(["--bond", if work.bond == Bond::Pipe { "pipe" } else { "death" }])
            .args(["--fault", fault])
            .args(["--parent", &std::process::id().to_string()])
            .args(["--until-ms", &until.monotonic_ms.to_string()])
            .stdin(if work.bond == Bond::Pipe {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if work.bond == Bond::Pipe {
            // SAFETY: setsid(2) is async-signal-safe, and nothing else runs in the child
            // between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("holder without stdout"))?;
        let alive = child.stdin.take();
        Ok((Holder { child, alive }, stdout))
    }

    /// The holder's pid, to measure what it does from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tells a [`Bond::Pipe`] holder one line of its work (a pause's guardian: a process
    /// about to be stopped). Once this returns the line is in the pipe: the holder reads it
    /// even if the agent dies at once.
    pub fn tell(&mut self, line: &str) -> io::Result<()> {
        use std::io::Write;
        let pipe = self
            .alive
            .as_mut()
            .ok_or_else(|| io::Error::other("only a holder bound by a pipe can be told its work"))?;
        pipe.write_all(format!("{line}\n").as_bytes())?;
        pipe.flush()
    }

    /// Asks a [`Bond::Pipe`] holder to undo its work and end, and waits for it; kills one
    /// that does not end within `patience`. Returns whether it ended by itself, successfully.
    pub fn finish(mut self, patience: Duration) -> bool {
        drop(self.alive.take());
        let start = std::time::Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if start.elapsed() < patience => std::thread::sleep(Duration::from_millis(10)),
                _ => return false,
            }
        }
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

/// In a [`Bond::Pipe`] holder: tells when the agent is gone (stdin reaches end of file), and
/// passes on the lines the agent tells it ([`Holder::tell`]).
#[derive(Debug)]
pub struct AgentGone(std::sync::mpsc::Receiver<String>);

/// What [`AgentGone::next`] heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// A line from the agent.
    Line(String),
    /// The agent is gone, or the deadline has passed.
    End,
    /// Nothing yet (the wait's step passed).
    Nothing,
}

impl AgentGone {
    /// Starts watching stdin.
    pub fn watch() -> AgentGone {
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            use std::io::BufRead;
            // A read returns nothing only at end of file (the agent is gone), or on an error.
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        AgentGone(rx)
    }

    /// Waits, at most `step`, for a line from the agent, its end, or `until`.
    pub fn next(&self, until: Deadline, step: Duration) -> Heard {
        let now = Deadline::after(Duration::ZERO);
        if now >= until {
            return Heard::End;
        }
        let left = Duration::from_millis(until.monotonic_ms - now.monotonic_ms).min(step);
        match self.0.recv_timeout(left) {
            Ok(line) => Heard::Line(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Heard::End,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if until.passed() => Heard::End,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Heard::Nothing,
        }
    }

    /// Waits until `until` or until the agent is gone, whichever comes first, at most
    /// `step`; whether either has happened. Lines told meanwhile are dropped.
    pub fn wait(&self, until: Deadline, step: Duration) -> bool {
        loop {
            match self.next(until, step) {
                Heard::Line(_) => continue,
                Heard::End => return true,
                Heard::Nothing => return false,
            }
        }
    }
}

/// What a holder process is given: its deadline, and for a [`Bond::Pipe`] one, its watch on
/// the agent.
#[derive(Debug)]
pub struct Holding {
    /// When it ends on its own.
    pub until: Deadline,
    /// Set for a [`Bond::Pipe`] holder.
    pub gone: Option<AgentGone>,
}

impl Holding {
    /// Says on stdout that the work has fully taken effect; nobody reading means the agent
    /// is gone, which the holder learns by its bond.
    pub fn ready(&self) {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{READY}");
    }

    /// Whether it should stop now: the deadline passed or the agent is gone. Waits up to
    /// `step` for either.
    pub fn should_stop(&self, step: Duration) -> bool {
        match &self.gone {
            Some(g) => g.wait(self.until, step),
            None => {
                let now = Deadline::after(Duration::ZERO);
                if now < self.until {
                    std::thread::sleep(Duration::from_millis(self.until.monotonic_ms - now.monotonic_ms).min(step));
                }
                self.until.passed()
            }
        }
    }

    /// Waits until it should stop.
    pub fn wait_end(&self) {
        while !self.should_stop(Duration::from_secs(3600)) {}
    }
}

/// A holder's whole-number parameter `name` (from [`Work::params`]); its absence is an error
/// that names it.
pub fn u64_param(params: &serde_json::Value, name: &str) -> io::Result<u64> {
    params[name]
        .as_u64()
        .ok_or_else(|| io::Error::other(format!("holder parameter {name} missing")))
}

/// A holder's path parameter `name`, as [`u64_param`].
pub fn path_param<'a>(params: &'a serde_json::Value, name: &str) -> io::Result<&'a std::path::Path> {
    params[name]
        .as_str()
        .map(std::path::Path::new)
        .ok_or_else(|| io::Error::other(format!("holder parameter {name} missing")))
}

/// In the holder, first thing: takes its name ([`NAME`]) as its process name too, which
/// re-execution through `/proc/self/exe` left as `exe`.
pub fn take_name() {
    let name = std::ffi::CString::new(NAME).expect("no NUL in the name");
    // Longer than the kernel keeps: it cuts the name, which is no error.
    let _ = nix::sys::prctl::set_name(&name);
}

/// In the holder, first thing: die with the agent, and make sure it is still there (it may
/// have died between the fork and the `prctl`). Done after exec, because exec of a binary
/// with file capabilities clears the death signal.
pub fn bind_to_parent(parent: u32) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    let ppid = nix::unistd::getppid();
    if u32::try_from(ppid.as_raw()).ok() != Some(parent) {
        return Err(io::Error::other(format!(
            "the agent (pid {parent}) is gone (parent is now {ppid})"
        )));
    }
    Ok(())
}
