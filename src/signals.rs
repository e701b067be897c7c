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
        Some(ending)
    }

    /// The name of the signal [`EndingSignals::next`] last returned, e.g. `SIGHUP`.
    pub fn last(&self) -> &'static str {
        self.last
    }
}
