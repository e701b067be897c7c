//! The watchdog that starts a stopped container again when its controller dies.
//!
//! A stop with a duration is undone by the controller on every path it controls; a
//! controller killed -9 controls none. So before the docker platform stops a container for
//! a duration, it starts this watchdog: the `faultline` binary again, as the hidden command
//! `faultline hold-start --container NAME --until-unix-ms T`, in a process group of its own
//! (a Ctrl-C to the controller's group does not reach it: the controller's own Ctrl-C path
//! starts the host itself), its stdin a pipe only the controller holds. As the agent's
//! pipe-bonded holders:
//!
//! - a line `done` (the controller started the host itself, or the stop failed): it exits at
//!   once, without touching Docker;
//! - end of file without `done` (the controller is gone): it waits for the deadline, then
//!   starts the container (running already, or gone, is success), retrying for
//!   [`START_WINDOW`];
//! - the pipe still open [`START_WINDOW`] after the deadline: the controller lives and is late
//!   with its own start, which is its to do; the watchdog ends.
//!
//! It never outlives the deadline by more than twice [`START_WINDOW`].

use super::docker::Docker;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The hidden command's name.
pub const COMMAND: &str = "hold-start";

/// How long the watchdog tries to start the container, and how long past the deadline it
/// waits for a living controller.
pub const START_WINDOW: Duration = Duration::from_secs(30);

/// The line the controller writes when the watchdog is not needed.
const DONE: &str = "done";

/// The controller's end of a watchdog: its stdin.
#[derive(Debug)]
pub struct Watch {
    stdin: tokio::process::ChildStdin,
}

impl Watch {
    /// Starts the watchdog of `container`, which starts it at `until` if the controller is
    /// gone by then.
    pub fn spawn(container: &str, until: SystemTime) -> std::io::Result<Watch> {
        let until_ms = until.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        // This very binary, even if its file was replaced since it started.
        let mut child = tokio::process::Command::new("/proc/self/exe")
            .arg0("faultline")
            .args([COMMAND, "--container", container])
            .args(["--until-unix-ms", &until_ms.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("watchdog without stdin"))?;
        // Dropped, the child is reaped by tokio in the background when it exits.
        drop(child);
        Ok(Watch { stdin })
    }

    /// Tells the watchdog it is not needed; it exits at once.
    pub async fn release(mut self) {
        // A watchdog already gone (past its deadline) needs no telling.
        let _ = self.stdin.write_all(format!("{DONE}\n").as_bytes()).await;
        let _ = self.stdin.flush().await;
    }
}

/// What the watchdog did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The controller said `done`.
    Released,
    /// The controller died; the container was started (or was running, or is gone).
    Started,
    /// The controller lived past the deadline and the window without a word.
    ControllerLate,
}

/// Why the watchdog could not start the container.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// Docker refused or could not be reached for the whole window.
    #[error("cannot start {container} within {window:?} after its deadline: {message}")]
    Start {
        /// The container.
        container: String,
        /// How long it tried.
        window: Duration,
        /// Docker's last word.
        message: String,
    },
}

/// The watchdog's body: reads `input` (its stdin) and starts `container` at `until` if the
/// controller goes away without `done`.
pub async fn hold_start<R: tokio::io::AsyncRead + Unpin>(
    input: R,
    container: &str,
    until: SystemTime,
) -> Result<Outcome, WatchError> {
    let deadline = tokio::time::Instant::now() + until.duration_since(SystemTime::now()).unwrap_or_default();
    let mut lines = BufReader::new(input).lines();
    let said = tokio::select! {
        line = lines.next_line() => line,
        _ = tokio::time::sleep_until(deadline + START_WINDOW) => {
            tracing::warn!(container, "the controller lives past the deadline without starting it; leaving it to the controller");
            return Ok(Outcome::ControllerLate);
        }
    };
    if let Ok(Some(line)) = &said {
        if line.trim() == DONE {
            return Ok(Outcome::Released);
        }
    }
    // End of file, a read error or a stray line: the controller cannot be trusted to start it.
    tracing::warn!(
        container,
        "the controller is gone while the container is stopped; starting it at the deadline"
    );
    tokio::time::sleep_until(deadline).await;
    let give_up = tokio::time::Instant::now() + START_WINDOW;
    loop {
        let tried = match Docker::connect().await {
            Ok(d) => d.start(container).await,
            Err(e) => Err(e),
        };
        match tried {
            Ok(()) => {
                tracing::info!(
                    container,
                    "started the container its dead controller had stopped (or found it running or gone)"
                );
                return Ok(Outcome::Started);
            }
            Err(e) if tokio::time::Instant::now() >= give_up => {
                return Err(WatchError::Start {
                    container: container.to_string(),
                    window: START_WINDOW,
                    message: e.to_string(),
                })
            }
            Err(e) => {
                tracing::warn!(container, error = %e, "cannot start the container yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn done_releases_at_once_without_docker() {
        let until = SystemTime::now() + Duration::from_secs(3600);
        let started = std::time::Instant::now();
        let outcome = hold_start(&b"done\n"[..], "faultline-no-such-host", until).await;
        assert_eq!(outcome.unwrap(), Outcome::Released);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
