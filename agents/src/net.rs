//! The accept loop every server here shares (controller, agent proxy, demo services).

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The next connection on `listener`, or `None` once `cancel` fires. A failed accept (a
/// peer that reset first, a descriptor limit) is logged and the listener keeps serving.
pub async fn accept(listener: &TcpListener, cancel: &CancellationToken) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            r = listener.accept() => match r {
                Ok(c) => return Some(c),
                Err(e) => tracing::warn!(listener = ?listener.local_addr().ok(), error = %e, "accept failed"),
            },
        }
    }
}
