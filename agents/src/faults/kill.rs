//! `faultline:process:kill`: signal every process with a given name.

use std::fs;

/// Maps a signal name of [`faultline_agent::protocol::SIGNALS`] to its number.
pub fn signal_number(name: &str) -> Option<i32> {
    Some(match name {
        "SIGKILL" => libc::SIGKILL,
        "SIGTERM" => libc::SIGTERM,
        "SIGINT" => libc::SIGINT,
        "SIGHUP" => libc::SIGHUP,
        "SIGQUIT" => libc::SIGQUIT,
        "SIGABRT" => libc::SIGABRT,
        "SIGSTOP" => libc::SIGSTOP,
        "SIGCONT" => libc::SIGCONT,
        "SIGUSR1" => libc::SIGUSR1,
        "SIGUSR2" => libc::SIGUSR2,
        "SIGSEGV" => libc::SIGSEGV,
        "SIGTSTP" => libc::SIGTSTP,
        _ => return None,
    })
}

/// Pids of live processes whose `comm` or argv[0] basename is `name`, this agent excluded.
pub fn find(name: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            // A zombie is already dead; signalling it would report a kill that did nothing.
            let live = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
                .unwrap_or(false);
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let argv0 = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv0 = argv0.split(|b| *b == 0).next().unwrap_or_default();
            let base = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
            live && (comm.trim_end_matches('\n') == name || base == name.as_bytes())
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Why no process was signalled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KillError {
    /// The signal name is not one of [`faultline_agent::protocol::SIGNALS`].
    #[error("unknown signal {0}")]
    UnknownSignal(String),
    /// Nothing by that name runs here.
    #[error("no process named `{0}` is running on this host")]
    NoProcess(String),
    /// Every match exited between the scan and the signal.
    #[error("every process named `{0}` exited before it could be signalled")]
    AllExited(String),
    /// kill(2) failed for every match; one `pid N: error` per process.
    #[error("could not signal `{name}`: {}", errors.join("; "))]
    Refused {
        /// The process name.
        name: String,
        /// What kill(2) said, per pid.
        errors: Vec<String>,
    },
}

/// Signals every process named `name`; the pids signalled, or why none was.
pub fn kill(name: &str, signal: &str) -> Result<Vec<u32>, KillError> {
    let sig = signal_number(signal).ok_or_else(|| KillError::UnknownSignal(signal.to_string()))?;
    let pids = find(name);
    if pids.is_empty() {
        return Err(KillError::NoProcess(name.to_string()));
    }
    let mut signalled = Vec::new();
    let mut errors = Vec::new();
    for pid in pids {
        // SAFETY: kill(2) with a pid read from /proc and a valid signal number.
        if unsafe { libc::kill(pid as i32, sig) } == 0 {
            signalled.push(pid);
        } else {
            let e = std::io::Error::last_os_error();
            // The process may have exited between the scan and the signal.
            if e.raw_os_error() != Some(libc::ESRCH) {
                errors.push(format!("pid {pid}: {e}"));
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn kills_by_argv0_and_reports_absence() {
        let name = format!("fl-kill-test-{}", std::process::id());
        let mut child = std::process::Command::new("sleep")
            .arg0(&name)
            .arg("30")
            .spawn()
            .unwrap();
        // Until its exec completes the child still carries this test's name; wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while find(&name).is_empty() && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(find(&name), vec![child.id()]);
        assert_eq!(kill(&name, "SIGKILL"), Ok(vec![child.id()]));
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert_eq!(kill(&name, "SIGKILL"), Err(KillError::NoProcess(name.clone())));
    }

    #[test]
    fn every_protocol_signal_maps() {
        for s in faultline_agent::protocol::SIGNALS {
            assert!(signal_number(s).is_some(), "{s}");
        }
    }
}
