//! Dialing the controller: the websocket upgrade carries the token; failures back off
//! exponentially with jitter, capped so a controller that starts finds every agent within
//! seconds.

use faultline_agent::protocol::{bearer, AGENT_PATH, MAX_FRAME_BYTES, TOKEN_HEADER};
use rand::{Rng, SeedableRng};
use std::net::IpAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// The websocket to the controller.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Cap of the backoff: a restarted controller sees every agent within about this long.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// An open connection and the addresses at both ends.
pub struct Connected {
    /// The websocket.
    pub ws: Ws,
    /// The controller's address, kept reachable by blackouts that keep the control plane.
    pub controller_ip: IpAddr,
    /// This end's address, registered when `--address` is not given.
    pub local_ip: IpAddr,
}

/// The endpoint URL: the controller address with the agent path when none is given.
pub fn endpoint(controller: &str) -> String {
    let has_path = controller
        .split_once("://")
        .is_some_and(|(_, rest)| rest.trim_end_matches('/').contains('/'));
    if has_path {
        controller.to_string()
    } else {
        format!("{}{AGENT_PATH}", controller.trim_end_matches('/'))
    }
}

/// Backoff before attempt `n` (0-based): exponential, capped, with the upper half jittered.
pub fn backoff(attempt: u32, rng: &mut impl Rng) -> Duration {
    let base = FIRST_BACKOFF.saturating_mul(1u32 << attempt.min(16)).min(MAX_BACKOFF);
    base / 2 + base.mul_f64(rng.random_range(0.0..0.5))
}

/// Dials until connected or cancelled.
pub async fn connect(url: &str, token: &str, cancel: &CancellationToken) -> Option<Connected> {
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    let mut attempt = 0u32;
    loop {
        match dial(url, token).await {
            Ok(c) => {
                tracing::info!(controller = %url, "connected");
                return Some(c);
            }
            Err(e) => {
                let unauthorized = matches!(&e, DialError::Refused(401));
                if unauthorized {
                    tracing::error!(controller = %url, "the controller refused this agent's token; check --token-file");
                } else if attempt == 0 {
                    tracing::warn!(controller = %url, error = %e, "cannot reach the controller; retrying");
                } else {
                    tracing::debug!(controller = %url, error = %e, attempt, "retrying");
                }
            }
        }
        let wait = backoff(attempt, &mut rng);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("bad controller URL: {0}")]
    Url(String),
    #[error("the controller answered HTTP {0}")]
    Refused(u16),
    #[error("{0}")]
    Other(String),
}

async fn dial(url: &str, token: &str) -> Result<Connected, DialError> {
    let mut request = url.into_client_request().map_err(|e| DialError::Url(e.to_string()))?;
    let value = HeaderValue::from_str(&bearer(token))
        .map_err(|_| DialError::Url("the token must be printable ASCII".into()))?;
    request.headers_mut().insert(TOKEN_HEADER, value);
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    let (ws, _) = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| DialError::Other("timed out".into()))?
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(r) => DialError::Refused(r.status().as_u16()),
            other => DialError::Other(other.to_string()),
        })?;
    let tcp = match ws.get_ref() {
        MaybeTlsStream::Plain(s) => s,
        _ => return Err(DialError::Other("unexpected stream type".into())),
    };
    // Acks go out at once: small frames must not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    let controller_ip = tcp.peer_addr().map_err(|e| DialError::Other(e.to_string()))?.ip();
    let local_ip = tcp.local_addr().map_err(|e| DialError::Other(e.to_string()))?.ip();
    Ok(Connected {
        ws,
        controller_ip,
        local_ip,
    })
}

/// Waits (up to 200 ms) until the kernel has sent everything written to the connection,
/// so a blackout installed next cannot swallow it.
pub async fn wait_sent(ws: &Ws) {
    use std::os::fd::AsRawFd;
    const SIOCOUTQNSD: libc::c_ulong = 0x894B;
    let MaybeTlsStream::Plain(tcp) = ws.get_ref() else {
        return;
    };
    let fd = tcp.as_raw_fd();
    for _ in 0..200 {
        let mut unsent: libc::c_int = 0;
        // SAFETY: SIOCOUTQNSD writes one int for a TCP socket we own.
        if unsafe { libc::ioctl(fd, SIOCOUTQNSD, &mut unsent) } != 0 || unsent == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        let first = backoff(0, &mut rng);
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for n in 5..40 {
            let b = backoff(n, &mut rng);
            assert!(b >= MAX_BACKOFF / 2 && b <= MAX_BACKOFF, "{b:?}");
        }
        let spread: std::collections::BTreeSet<_> = (0..20).map(|_| backoff(10, &mut rng)).collect();
        assert!(spread.len() > 10, "jitter spreads reconnects");
    }

    #[test]
    fn endpoint_adds_the_agent_path() {
        assert_eq!(endpoint("ws://10.0.0.1:7700"), "ws://10.0.0.1:7700/v1/agents");
        assert_eq!(endpoint("ws://10.0.0.1:7700/"), "ws://10.0.0.1:7700/v1/agents");
        assert_eq!(endpoint("ws://h:1/custom"), "ws://h:1/custom");
    }
}
