//! The accept loop every server here shares (controller, agent proxy, demo services), a
//! throttle for log lines a peer can provoke, and the descriptor budget they serve from.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Raises the soft limit on open descriptors to the hard limit, at the start of a binary:
/// every connection takes one (a proxied one two, and two more per spliced direction for
/// its pipe), and the usual soft 1024 would run out long before the proxy's 4096
/// connections or a controller's agents. Logged at debug; a failure is only logged, the
/// process then serves what the old limit allows (an accept at the limit backs off).
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-descriptor limit"),
            Err(e) => tracing::debug!(soft, hard, error = %e, "cannot raise the open-descriptor limit"),
        },
        Ok((soft, _)) => tracing::debug!(limit = soft, "open-descriptor limit already at its hard limit"),
        Err(e) => tracing::debug!(error = %e, "cannot read the open-descriptor limit"),
    }
}

/// First pause after a failed accept; doubled while accepts keep failing.
const FIRST_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause between failing accepts (a descriptor limit lasts until something closes).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The next connection on `listener`, or `None` once `cancel` fires. A failed accept (a
/// peer that reset first, a descriptor limit such as EMFILE) is logged at a bounded rate and
/// retried after a growing pause, so a full descriptor table never turns into a hot loop.
pub async fn accept(listener: &TcpListener, cancel: &CancellationToken) -> Option<(TcpStream, SocketAddr)> {
    let mut backoff = FIRST_ACCEPT_BACKOFF;
    let mut log = Throttle::new(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            r = listener.accept() => match r {
                Ok(c) => return Some(c),
                Err(e) => {
                    if let Some(suppressed) = log.allow(Instant::now()) {
                        tracing::warn!(listener = ?listener.local_addr().ok(), error = %e, suppressed, "accept failed; backing off");
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return None,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
            },
        }
    }
}

/// Lets one event through per interval and counts the rest, for log lines that peers can
/// cause at any rate (refused connections, failed accepts).
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// At most one event per `every`.
    pub fn new(every: Duration) -> Self {
        Throttle {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when the event at `now` may be logged, `n` being how many were held back
    /// since the last one; `None` when it is held back.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_through_per_interval_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Duration::from_secs(1));
        assert_eq!(t.allow(t0), Some(0));
        assert_eq!(t.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(t.allow(t0 + Duration::from_millis(900)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(1)), Some(2));
        assert_eq!(t.allow(t0 + Duration::from_millis(1500)), None);
    }
}
