//! The watchdog that starts a stopped container again when its controller cannot.
//!
//! A stop with a duration is undone by the controller on every path it controls; a
//! controller killed -9 controls none. So before the docker platform stops a container for
//! a duration, it starts this watchdog: the `faultline` binary again, as the hidden command
//! `faultline hold-start --container NAME --until-unix-ms T`, in a process group of its own
//! (a Ctrl-C to the controller's group does not reach it: the controller's own Ctrl-C path
//! starts the host itself), its stdin a pipe only the controller holds. As the agent's
//! pipe-bonded holders:
//!
//! - a line `done` (the controller started the host itself, or the stop failed and was
//!   undone): it exits at once, without touching Docker;
//! - end of file without `done` (the controller is gone): it waits for the deadline, then
//!   starts the container;
//! - the pipe still open [`CONTROLLER_GRACE`] after the deadline: the controller lives but
//!   has not started it (its own start keeps failing, or it hangs): the watchdog starts it
//!   too, still listening for `done`.
//!
//! It tries until the container runs (running already, or removed, is success), with the
//! platform's capped backoff: it never gives up on a stopped container, so no host stays
//! stopped past its duration while a faultline process that stopped it is alive.

use super::Backoff;
use std::future::Future;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The hidden command's name.
pub const COMMAND: &str = "hold-start";

/// How long past the deadline a living controller has to start the container (its stop
/// took up to the stop grace, its first start may fail) before the watchdog starts it too.
pub const CONTROLLER_GRACE: Duration = Duration::from_secs(30);

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
        // A watchdog already gone (it started the container) needs no telling.
        let _ = self.stdin.write_all(format!("{DONE}\n").as_bytes()).await;
        let _ = self.stdin.flush().await;
    }
}

/// What the watchdog did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The controller said `done`.
    Released,
    /// The container was started (or was running, or is gone): the controller died, or
    /// lived past the deadline and the grace without starting it.
    Started,
}

/// The watchdog's body: reads `input` (its stdin) and, unless the controller says `done`,
/// has `start` start `container` once the controller is gone and the deadline `until` has
/// passed, or [`CONTROLLER_GRACE`] after it while the controller lives; tries until a start
/// succeeds.
pub async fn hold_start<R, S, F>(input: R, container: &str, until: SystemTime, mut start: S) -> Outcome
where
    R: tokio::io::AsyncRead + Unpin,
    S: FnMut() -> F,
    F: Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + until.duration_since(SystemTime::now()).unwrap_or_default();
    let mut lines = BufReader::new(input).lines();
    // Whether the controller (its pipe) is still there to say `done`.
    let mut listening = tokio::select! {
        line = lines.next_line() => match line {
            Ok(Some(line)) if line.trim() == DONE => return Outcome::Released,
            // End of file, a read error or a stray line: the controller cannot be trusted
            // to start it.
            _ => false,
        },
        _ = tokio::time::sleep_until(deadline + CONTROLLER_GRACE) => true,
    };
    if listening {
        tracing::warn!(
            container,
            "the controller lives past the deadline without having started the container; starting it too"
        );
    } else {
        tracing::warn!(
            container,
            "the controller is gone while the container is stopped; starting it at the deadline"
        );
        tokio::time::sleep_until(deadline).await;
    }
    let tries = async {
        let mut backoff = Backoff::new();
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            match start().await {
                Ok(()) => return attempt,
                Err(error) => {
                    let retry_in = backoff.next_wait();
                    tracing::warn!(container, attempt, %error, ?retry_in, "cannot start the container yet; trying again");
                    tokio::time::sleep(retry_in).await;
                }
            }
        }
    };
    tokio::pin!(tries);
    loop {
        tokio::select! {
            attempts = &mut tries => {
                tracing::info!(container, attempts, "started the container (or found it running or gone)");
                return Outcome::Started;
            }
            // `next_line` is cancel-safe: a line half read waits for the next turn.
            line = lines.next_line(), if listening => match line {
                Ok(Some(line)) if line.trim() == DONE => return Outcome::Released,
                _ => listening = false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    /// When each try of a start came.
    type Tries = Arc<Mutex<Vec<Instant>>>;

    /// A start that fails its first `failures` tries and records when each try came.
    fn flaky(failures: usize) -> (impl FnMut() -> std::future::Ready<Result<(), String>>, Tries) {
        let tries = Tries::default();
        let seen = tries.clone();
        let start = move || {
            let mut tries = seen.lock().unwrap();
            tries.push(Instant::now());
            std::future::ready(if tries.len() > failures {
                Ok(())
            } else {
                Err(format!("Docker hiccup {}", tries.len()))
            })
        };
        (start, tries)
    }

    const DEADLINE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn done_releases_at_once_without_starting() {
        let (start, tries) = flaky(0);
        let t0 = Instant::now();
        let outcome = hold_start(&b"done\n"[..], "faultline-web-a1", SystemTime::now() + DEADLINE, start).await;
        assert_eq!(outcome, Outcome::Released);
        assert!(tries.lock().unwrap().is_empty());
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_controller_s_container_is_started_at_the_deadline_however_long_docker_fails() {
        // Twelve failed tries span more than the 30 s after which the watchdog used to give up.
        let (start, tries) = flaky(12);
        let t0 = Instant::now();
        // An empty pipe: the controller is gone.
        let outcome = hold_start(&b""[..], "faultline-web-a1", SystemTime::now() + DEADLINE, start).await;
        assert_eq!(outcome, Outcome::Started);
        let tries = tries.lock().unwrap();
        assert_eq!(tries.len(), 13);
        let first = tries[0] - t0;
        assert!(
            first >= DEADLINE - Duration::from_millis(5) && first < DEADLINE + Duration::from_secs(1),
            "first try at {first:?}"
        );
        assert!(tries[12] - tries[0] > Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_living_controller_that_has_not_started_it_gets_it_started_after_the_grace() {
        let (start, tries) = flaky(12);
        // The controller holds its end open and says nothing (its own starts keep failing).
        let (_controller, pipe) = tokio::io::duplex(64);
        let t0 = Instant::now();
        let outcome = hold_start(pipe, "faultline-web-a1", SystemTime::now() + DEADLINE, start).await;
        assert_eq!(outcome, Outcome::Started);
        let tries = tries.lock().unwrap();
        assert_eq!(tries.len(), 13);
        let first = tries[0] - t0;
        assert!(
            first >= DEADLINE + CONTROLLER_GRACE - Duration::from_millis(5),
            "first try at {first:?}"
        );
        assert!(
            first < DEADLINE + CONTROLLER_GRACE + Duration::from_secs(1),
            "first try at {first:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_controller_that_starts_it_meanwhile_releases_the_trying_watchdog() {
        let (tried, mut told) = tokio::sync::mpsc::unbounded_channel();
        let start = move || {
            let _ = tried.send(());
            std::future::ready(Err::<(), _>("Docker hiccup".to_string()))
        };
        let (mut controller, pipe) = tokio::io::duplex(64);
        let watchdog = hold_start(pipe, "faultline-web-a1", SystemTime::now() + DEADLINE, start);
        let controller = async move {
            for _ in 0..3 {
                told.recv().await.unwrap();
            }
            controller.write_all(b"done\n").await.unwrap();
            controller
        };
        let (outcome, _still_open) = tokio::join!(watchdog, controller);
        assert_eq!(outcome, Outcome::Released);
    }
}
