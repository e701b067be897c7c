//! `faultline hold-start` (hidden): the watchdog of a container stopped for a duration.

use super::fail;
use faultline::platform::watch;
use std::os::fd::AsFd;
use std::time::{Duration, UNIX_EPOCH};

/// Watches stdin (the controller's pipe) and starts `container` at `until_unix_ms` if the
/// controller goes away first (or soon after, should it live without starting it); ends once
/// released or once the container runs.
pub(super) fn run(container: &str, until_unix_ms: u64) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(faultline::exit::FAILED, e))?;
    // The controller's pipe, read through the reactor so that the deadline can interrupt it.
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| fail(faultline::exit::FAILED, e))?;
    let until = UNIX_EPOCH + Duration::from_millis(until_unix_ms);
    // The watchdog logs what it started itself; a release needs no word.
    runtime
        .block_on(async {
            let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(stdin)
                .map_err(|e| anyhow::anyhow!("stdin is not the controller's pipe: {e}"))?;
            anyhow::Ok(
                watch::hold_start(pipe, container, until, || {
                    faultline::platform::docker::start_container(container)
                })
                .await,
            )
        })
        .map_err(|e| fail(faultline::exit::FAILED, e))?;
    Ok(0)
}
