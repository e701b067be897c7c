//! Shutdown on SIGTERM or SIGINT, shared by the agent and the demo services.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Cancels `token` on SIGTERM or SIGINT; returns the signal's name, or `None` when `token`
/// was cancelled some other way or the handlers could not be installed (logged).
pub async fn cancel_on_signal(token: CancellationToken) -> Option<&'static str> {
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return None;
    };
    let name = tokio::select! {
        _ = term.recv() => Some("SIGTERM"),
        _ = int.recv() => Some("SIGINT"),
        _ = token.cancelled() => None,
    };
    token.cancel();
    name
}
