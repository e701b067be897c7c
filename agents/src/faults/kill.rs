//! `faultline:process:kill`: signal every process with a given name, and the guard shared
//! with `faultline:process:pause` that decides which processes may be signalled at all: never
//! PID 1, the agent, its ancestors (its supervisor), its descendants, nor any faultline
//! holder (`faultline-holder`, an agent's helper), whatever the policy.

use super::{Answer, Apply, Env, FaultError, FaultKind, Gone, Kind, Started, WireParams};
use crate::limits::{self, OutOfRange};
use nix::errno::Errno;
pub use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The wire parameters: `{"kind":"kill","process_name":"web","signal":"SIGKILL"}`; a kill
/// has no duration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Matched against `/proc/PID/comm` and the basename of argv[0]
    /// ([`limits::PROCESS_NAME_BYTES`] long).
    pub process_name: String,
    /// Signal name, one of [`SIGNALS`], e.g. `SIGKILL`.
    pub signal: String,
}

/// Signal names a kill may send, as the agent maps them to numbers. SIGSTOP and SIGTSTP
/// are not among them: nothing would ever resume the process; `faultline:process:pause`
/// stops processes and resumes them.
pub const SIGNALS: [&str; 10] = [
    "SIGKILL", "SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGABRT", "SIGCONT", "SIGUSR1", "SIGUSR2", "SIGSEGV",
];

/// Signals a kill refuses by name: a stopped process is never resumed by a kill, so
/// stopping is the job of `faultline:process:pause`, which resumes what it stops.
pub const STOP_SIGNALS: [&str; 2] = ["SIGSTOP", "SIGTSTP"];

impl WireParams for Params {
    const CAPABILITY: &'static str = "kill";
    const INSTANT: bool = true;

    fn check(&self) -> Result<(), OutOfRange> {
        limits::process_name_ok(&self.process_name)?;
        if STOP_SIGNALS.contains(&self.signal.as_str()) {
            return Err(OutOfRange {
                field: "signal",
                value: self.signal.clone(),
                limit: "a kill never stops a process; use faultline:process:pause, which resumes it".into(),
            });
        }
        if !SIGNALS.contains(&self.signal.as_str()) {
            return Err(OutOfRange {
                field: "signal",
                value: self.signal.clone(),
                limit: format!("it must be one of {}", SIGNALS.join(", ")),
            });
        }
        Ok(())
    }
}

/// The kind: signals once, holds nothing.
#[derive(Debug, Default)]
pub struct Kill;

impl Kind for Kill {
    fn apply(&self, a: &Apply<'_>, _undo: &serde_json::Value, env: &Env<'_>) -> Result<Started, FaultError> {
        let FaultKind::Kill(Params { process_name, signal }) = &a.spec.kind else {
            return Err(super::mismatch(a.spec));
        };
        let pids = kill(process_name, signal, &env.config.kill).map_err(FaultError::refused)?;
        let detail = format!(
            "sent {signal} to {} process{} named {process_name}",
            pids.len(),
            if pids.len() == 1 { "" } else { "es" }
        );
        Ok(Started {
            fault: Box::new(Gone),
            answer: Answer::Now(detail, pids),
        })
    }
}

/// Maps a signal name of [`SIGNALS`] to its signal.
pub fn signal_number(name: &str) -> Option<Signal> {
    SIGNALS
        .contains(&name)
        .then(|| name.parse().ok())
        .flatten()
}

/// Which processes a kill or a pause may signal, beyond the fixed rule that PID 1, the
/// agent, its ancestors, its descendants and faultline's holders are never signalled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// The only process names that may be signalled (`--kill-allow`); any name when `None`.
    pub names: Option<BTreeSet<String>>,
    /// Whether processes of other users may be signalled (`--kill-other-users`); by
    /// default only those whose real uid is the agent's.
    pub other_users: bool,
}

/// A process, named by its pid and its start time (field 22 of /proc/PID/stat, in clock
/// ticks since boot), so that a pid reused by another process is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub pid: u32,
    pub start_time: u64,
}

/// The fields of /proc/PID/stat a guard needs.
struct Stat {
    state: char,
    ppid: u32,
    start_time: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the
    // last ')'. Field 3 is the state, 4 the ppid, 22 the start time.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The start time of `pid`, or `None` when no such process exists.
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.start_time)
}

/// The state letter of `pid` (`R`, `S`, `T` for stopped, ...).
pub fn state(pid: u32) -> Option<char> {
    stat(pid).map(|s| s.state)
}

/// Whether `pid` is stopped (state `T`).
#[cfg(test)]
pub fn is_stopped(pid: u32) -> bool {
    state(pid) == Some('T')
}

fn real_uid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// This process's ancestors, from its parent up to PID 1.
fn ancestors() -> BTreeSet<u32> {
    let mut seen = BTreeSet::new();
    let mut pid = std::process::id();
    while let Some(s) = stat(pid) {
        // The ppid of PID 1 is 0; `insert` failing means a loop, which /proc cannot have.
        if s.ppid == 0 || !seen.insert(s.ppid) {
            break;
        }
        pid = s.ppid;
    }
    seen
}

/// This process's descendants: its children, theirs, and so on (holders among them, also
/// those in a session of their own).
fn descendants() -> BTreeSet<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    let parents: Vec<(u32, u32)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?.ppid)))
        .collect();
    let mut found = BTreeSet::new();
    let mut frontier = vec![std::process::id()];
    while let Some(parent) = frontier.pop() {
        for (pid, _) in parents.iter().filter(|(_, ppid)| *ppid == parent) {
            if found.insert(*pid) {
                frontier.push(*pid);
            }
        }
    }
    found
}

/// The `comm` and argv[0] basename of `pid` (empty when unreadable).
fn names(pid: u32) -> (String, Vec<u8>) {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let argv = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = argv.split(|b| *b == 0).next().unwrap_or_default();
    let base = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
    (comm.trim_end_matches('\n').to_string(), base.to_vec())
}

/// Whether `pid` is a faultline holder, of this agent or of another one (by its name).
fn is_holder(pid: u32) -> bool {
    let name = crate::holder::NAME;
    let (comm, argv0) = names(pid);
    // The kernel keeps 15 bytes of a process name.
    argv0 == name.as_bytes() || comm == name[..name.len().min(15)]
}

/// Pids of live processes whose `comm` or argv[0] basename is `name`.
pub fn find(name: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // A zombie is already dead; signalling it would report a kill that did nothing.
            let live = stat(*pid).is_some_and(|s| s.state != 'Z');
            let (comm, base) = names(*pid);
            live && (comm == name || base == name.as_bytes())
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Why no process was signalled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KillError {
    /// The signal name is not one of [`SIGNALS`].
    #[error("unknown signal {0}")]
    UnknownSignal(String),
    /// SIGSTOP or SIGTSTP: nothing would resume the process.
    #[error("a kill does not send {0}: nothing would resume the process; use faultline:process:pause")]
    StopSignal(String),
    /// `--kill-allow` does not list the name.
    #[error("`{name}` is not among the process names this agent may signal (--kill-allow {allowed})")]
    NameNotAllowed {
        /// The process name.
        name: String,
        /// The allowed names, comma-separated.
        allowed: String,
    },
    /// Nothing by that name runs here.
    #[error("no process named `{0}` is running on this host")]
    NoProcess(String),
    /// Every match exited between the scan and the signal.
    #[error("every process named `{0}` exited before it could be signalled")]
    AllExited(String),
    /// Some matches may not be signalled, so none was: one `pid N (comm): why` per refusal.
    #[error("refused: no process named `{name}` was signalled, because {}", refused.join("; "))]
    Guarded {
        /// The process name.
        name: String,
        /// Each refused process and why.
        refused: Vec<String>,
    },
    /// kill(2) failed for every match; one `pid N: error` per process.
    #[error("could not signal `{name}`: {}", errors.join("; "))]
    Refused {
        /// The process name.
        name: String,
        /// What kill(2) said, per pid.
        errors: Vec<String>,
    },
}

/// The processes named `name` that `policy` lets this agent signal. All or nothing: when
/// any match is refused, the answer is an error naming each refused pid and why, so that
/// a fault never takes effect on part of what it named.
pub fn targets(name: &str, policy: &Policy) -> Result<Vec<Target>, KillError> {
    if let Some(names) = &policy.names {
        if !names.contains(name) {
            return Err(KillError::NameNotAllowed {
                name: name.to_string(),
                allowed: names.iter().cloned().collect::<Vec<_>>().join(","),
            });
        }
    }
    let pids = find(name);
    if pids.is_empty() {
        return Err(KillError::NoProcess(name.to_string()));
    }
    let me = std::process::id();
    let ancestors = ancestors();
    let descendants = descendants();
    let uid = nix::unistd::getuid().as_raw();
    let mut refused = Vec::new();
    let mut targets = Vec::new();
    for pid in pids {
        let why = if pid == 1 {
            Some("it is PID 1 (init)".to_string())
        } else if pid == me {
            Some("it is this agent".to_string())
        } else if ancestors.contains(&pid) {
            Some("it is an ancestor of this agent (its supervisor)".to_string())
        } else if descendants.contains(&pid) {
            Some("it is a descendant of this agent (one of its holders)".to_string())
        } else if is_holder(pid) {
            Some("it is a faultline holder, the helper of an agent".to_string())
        } else if !policy.other_users && real_uid(pid) != Some(uid) {
            // A process whose owner cannot be read is refused: the guard fails closed.
            Some(match real_uid(pid) {
                Some(u) => format!("it runs as uid {u}, not as this agent's uid {uid} (see --kill-other-users)"),
                None => "its owner cannot be read from /proc".to_string(),
            })
        } else {
            None
        };
        match (why, start_time(pid)) {
            (Some(why), _) => {
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                refused.push(format!("pid {pid} ({}): {why}", comm.trim_end()));
            }
            (None, Some(start_time)) => targets.push(Target { pid, start_time }),
            // Exited since the scan.
            (None, None) => {}
        }
    }
    if !refused.is_empty() {
        return Err(KillError::Guarded {
            name: name.to_string(),
            refused,
        });
    }
    Ok(targets)
}

/// Sends `sig` to `target` unless its pid now names another process. `Ok(false)` when it is
/// gone.
pub fn signal(target: Target, sig: Signal) -> io::Result<bool> {
    // A pidfd pins the process: once the start time matches, the signal cannot reach a
    // process that took over the pid in between. nix has no pidfd calls: these two system
    // calls are the only raw ones here.
    // SAFETY: pidfd_open takes a pid and flags, no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, target.pid as libc::c_int, 0) };
    if fd < 0 {
        return match Errno::last() {
            Errno::ESRCH => Ok(false),
            e => Err(e.into()),
        };
    }
    // SAFETY: the kernel just returned this descriptor, which nothing else owns; the
    // OwnedFd closes it once.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    if start_time(target.pid) != Some(target.start_time) {
        return Ok(false);
    }
    // SAFETY: pidfd_send_signal on the descriptor above, a valid signal, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig as libc::c_int,
            std::ptr::null::<u8>(),
            0,
        )
    };
    match (r, Errno::last()) {
        (0, _) => Ok(true),
        (_, Errno::ESRCH) => Ok(false),
        (_, e) => Err(e.into()),
    }
}

/// Signals every process named `name` that `policy` allows; the pids signalled, or why
/// none was.
pub fn kill(name: &str, signal_name: &str, policy: &Policy) -> Result<Vec<u32>, KillError> {
    if STOP_SIGNALS.contains(&signal_name) {
        return Err(KillError::StopSignal(signal_name.to_string()));
    }
    let sig = signal_number(signal_name).ok_or_else(|| KillError::UnknownSignal(signal_name.to_string()))?;
    let mut signalled = Vec::new();
    let mut errors = Vec::new();
    for t in targets(name, policy)? {
        match signal(t, sig) {
            Ok(true) => signalled.push(t.pid),
            Ok(false) => {}
            Err(e) => errors.push(format!("pid {}: {e}", t.pid)),
        }
    }
    match (signalled.is_empty(), errors.is_empty()) {
        (false, _) => Ok(signalled),
        (true, true) => Err(KillError::AllExited(name.to_string())),
        (true, false) => Err(KillError::Refused {
            name: name.to_string(),
            errors,
        }),
    }
}

/// Test helpers the pause's tests share.
#[cfg(test)]
pub mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// A `sleep` this test started that is not its descendant (the agent here is the test
    /// process, whose descendants the guard refuses): forked twice, so it is reparented at
    /// once. Killed when dropped.
    pub struct Orphan(u32);

    impl Orphan {
        /// Its pid.
        pub fn id(&self) -> u32 {
            self.0
        }
    }

    impl Drop for Orphan {
        fn drop(&mut self) {
            // SAFETY: kill(2) on the process this test started.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }

    /// A `sleep` whose argv[0] is `name`, once its exec has completed: an [`Orphan`].
    pub fn named_sleep(name: &str) -> Orphan {
        let (read, write) = nix::unistd::pipe().unwrap();
        let write_fd = write.as_raw_fd();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg0(name).arg("30");
        // SAFETY: fork, write and _exit are async-signal-safe; the intermediate child writes
        // the grandchild's pid and exits, the grandchild goes on to exec.
        unsafe {
            cmd.pre_exec(move || match libc::fork() {
                -1 => Err(io::Error::last_os_error()),
                0 => Ok(()),
                pid => {
                    libc::write(write_fd, (&pid as *const libc::pid_t).cast(), 4);
                    libc::_exit(0)
                }
            });
        }
        cmd.spawn().unwrap().wait().unwrap();
        drop(write);
        let mut buf = [0u8; 4];
        io::Read::read_exact(&mut fs::File::from(read), &mut buf).unwrap();
        let pid = i32::from_ne_bytes(buf) as u32;
        // Until its exec completes it still carries this test's name; wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while names(pid).1 != name.as_bytes() {
            assert!(std::time::Instant::now() < deadline, "{name} did not start");
            std::thread::yield_now();
        }
        Orphan(pid)
    }

    /// Whether no live process is named `name` within five seconds.
    pub fn gone(name: &str) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !find(name).is_empty() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::yield_now();
        }
        true
    }

    #[test]
    fn kills_by_argv0_and_reports_absence() {
        let name = format!("fl-kill-test-{}", std::process::id());
        let child = named_sleep(&name);
        let policy = Policy::default();
        assert_eq!(find(&name), vec![child.id()]);
        assert_eq!(kill(&name, "SIGKILL", &policy), Ok(vec![child.id()]));
        assert!(gone(&name), "SIGKILL ends it");
        assert_eq!(kill(&name, "SIGKILL", &policy), Err(KillError::NoProcess(name.clone())));
    }

    #[test]
    fn the_agents_descendants_and_faultline_holders_are_refused() {
        let policy = Policy::default();
        // A direct child of this process (the agent, here): refused, and still running.
        let name = format!("fl-child-test-{}", std::process::id());
        let mut child = std::process::Command::new("sleep").arg0(&name).arg("30").spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while find(&name).is_empty() && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        match kill(&name, "SIGKILL", &policy) {
            Err(KillError::Guarded { refused, .. }) => {
                assert!(refused.iter().any(|r| r.contains("a descendant of this agent")), "{refused:?}")
            }
            other => panic!("a descendant was not refused: {other:?}"),
        }
        assert!(child.try_wait().unwrap().is_none(), "the descendant was signalled");
        child.kill().unwrap();
        child.wait().unwrap();
        // A holder by its name, whoever's it is: an orphan named like one is refused too.
        let holder = named_sleep(crate::holder::NAME);
        match targets(crate::holder::NAME, &policy) {
            Err(KillError::Guarded { refused, .. }) => {
                assert!(refused.iter().any(|r| r.contains(&format!("pid {} ", holder.id())) && r.contains("faultline holder")), "{refused:?}")
            }
            other => panic!("a holder was not refused: {other:?}"),
        }
    }

    #[test]
    fn the_agent_its_ancestors_and_stop_signals_are_refused() {
        let policy = Policy::default();
        let me = fs::read_to_string("/proc/self/comm").unwrap();
        match kill(me.trim_end(), "SIGKILL", &policy) {
            Err(KillError::Guarded { refused, .. }) => {
                assert!(refused.iter().any(|r| r.contains("it is this agent")), "{refused:?}")
            }
            other => panic!("{other:?}"),
        }
        let parent = stat(std::process::id()).unwrap().ppid;
        assert!(ancestors().contains(&parent));
        assert!(matches!(
            kill("whatever", "SIGSTOP", &policy),
            Err(KillError::StopSignal(_))
        ));
        let only = Policy {
            names: Some(["web".to_string()].into()),
            other_users: false,
        };
        assert!(kill("db", "SIGKILL", &only)
            .unwrap_err()
            .to_string()
            .contains("--kill-allow web"));
    }

    #[test]
    fn a_reused_pid_is_not_signalled() {
        let name = format!("fl-reuse-test-{}", std::process::id());
        let child = named_sleep(&name);
        let real = Target {
            pid: child.id(),
            start_time: start_time(child.id()).unwrap(),
        };
        let other = Target {
            start_time: real.start_time + 1,
            ..real
        };
        assert!(!signal(other, Signal::SIGKILL).unwrap());
        assert!(signal(real, Signal::SIGKILL).unwrap());
        assert!(gone(&name));
    }

    #[test]
    fn every_protocol_signal_maps() {
        for s in SIGNALS {
            assert!(signal_number(s).is_some(), "{s}");
        }
    }

    #[test]
    fn a_stop_signal_or_a_long_name_is_out_of_range() {
        let params = |process_name: &str, signal: &str| Params {
            process_name: process_name.into(),
            signal: signal.into(),
        };
        let e = params("x", "SIGSTOP").check().unwrap_err().to_string();
        assert!(e.contains("faultline:process:pause"), "{e}");
        let e = params("x", "SIGWHAT").check().unwrap_err().to_string();
        assert!(e.contains("it must be one of SIGKILL"), "{e}");
        let e = params(&"x".repeat(256), "SIGKILL").check().unwrap_err().to_string();
        assert!(e.contains("it must be 1-255 bytes long"), "{e}");
        assert!(params("web", "SIGTERM").check().is_ok());
    }
}
