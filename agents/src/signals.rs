//! Shutdown on any signal that would end the process, shared by the agent and the demo
//! services: each is handled as SIGTERM, so the agent removes its faults before it exits.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Every signal whose default action ends the process and that a process may catch (SIGKILL
/// cannot be; SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGABRT mean the process itself is broken;
/// SIGPIPE is ignored by the Rust runtime), with its name.
pub const ENDING: [(libc::c_int, &str); 13] = [
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGINT, "SIGINT"),
    (libc::SIGHUP, "SIGHUP"),
    (libc::SIGQUIT, "SIGQUIT"),
    (libc::SIGUSR1, "SIGUSR1"),
    (libc::SIGUSR2, "SIGUSR2"),
    (libc::SIGALRM, "SIGALRM"),
    (libc::SIGVTALRM, "SIGVTALRM"),
    (libc::SIGPROF, "SIGPROF"),
    (libc::SIGXCPU, "SIGXCPU"),
    (libc::SIGXFSZ, "SIGXFSZ"),
    (libc::SIGIO, "SIGIO"),
    (libc::SIGPWR, "SIGPWR"),
];

/// Cancels `token` on any signal of [`ENDING`]; returns the signal's name, or `None` when
/// `token` was cancelled some other way or a handler could not be installed (logged; the
/// token is then cancelled at once, as a process that cannot clean up on a signal must not
/// start holding faults).
pub async fn cancel_on_signal(token: CancellationToken) -> Option<&'static str> {
    let mut streams = Vec::with_capacity(ENDING.len());
    for (number, name) in ENDING {
        match signal(SignalKind::from_raw(number)) {
            Ok(s) => streams.push((s, name)),
            Err(e) => {
                tracing::error!(signal = name, error = %e, "cannot install a signal handler");
                token.cancel();
                return None;
            }
        }
    }
    let any = futures_util::future::select_all(streams.iter_mut().map(|(s, name)| {
        let name = *name;
        Box::pin(async move {
            s.recv().await;
            name
        })
    }));
    let name = tokio::select! {
        (name, _, _) = any => Some(name),
        _ = token.cancelled() => None,
    };
    token.cancel();
    name
}
