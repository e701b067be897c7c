//! The signals that end a controller (`run`, `run --server`, `serve`): SIGINT (Ctrl-C) and
//! SIGTERM, and SIGHUP (a closed terminal or SSH session) and SIGQUIT, which are handled as
//! SIGTERM, so that no signal that ends the process skips the removal of its faults.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// How a signal asks the controller to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// SIGINT: the operator (exit 130).
    Interrupt,
    /// SIGTERM, SIGHUP or SIGQUIT: the process is being ended (exit 143).
    Terminate,
}

/// The handlers of every signal that ends a controller, installed together.
pub struct EndingSignals {
    int: Signal,
    term: Signal,
    hup: Signal,
    quit: Signal,
    /// The name of the last signal received.
    last: &'static str,
}

impl EndingSignals {
    /// Installs the handlers: from now on none of these signals ends the process by itself.
    pub fn install() -> std::io::Result<EndingSignals> {
        Ok(EndingSignals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
            last: "",
        })
    }

    /// The next ending signal; `None` once signals can no longer be received.
    pub async fn next(&mut self) -> Option<Ending> {
        let (got, name, ending) = tokio::select! {
            s = self.int.recv() => (s, "SIGINT", Ending::Interrupt),
            s = self.term.recv() => (s, "SIGTERM", Ending::Terminate),
            s = self.hup.recv() => (s, "SIGHUP", Ending::Terminate),
            s = self.quit.recv() => (s, "SIGQUIT", Ending::Terminate),
        };
        got?;
        self.last = name;
        if name == "SIGHUP" {
            quiet_hung_up_terminal();
        }
        Some(ending)
    }

    /// The name of the signal [`EndingSignals::next`] last returned, e.g. `SIGHUP`.
    pub fn last(&self) -> &'static str {
        self.last
    }
}

/// After a hang-up, a terminal on stdout or stderr answers every write with EIO, and a
/// failed print panics: the run would end mid-way, its faults left to the agents' leases.
/// Such an output is pointed at /dev/null; a file or a pipe keeps what is written to it.
fn quiet_hung_up_terminal() {
    use std::os::fd::AsRawFd;
    let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
        return;
    };
    for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: fstat and dup2 on the process's own standard descriptors; `null` outlives
        // the calls, and dup2 replaces the descriptor atomically.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFCHR && libc::isatty(fd) == 0 {
                libc::dup2(null.as_raw_fd(), fd);
            }
        }
    }
}
