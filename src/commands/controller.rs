//! The embedded controller started from the command line's flags: its agents' token (made
//! on first use) and its certificate. `run`, `agents` and `demo` start one.

use crate::cli::ControllerArgs;
use faultline::controller::Controller;
use faultline::{exit, token};

/// Starts a controller from the flags.
pub(super) async fn start(args: &ControllerArgs) -> anyhow::Result<Controller> {
    let token = token(&args.token_file)?;
    let tls = args
        .tls
        .load(&args.token_file)
        .map_err(|e| super::fail(faultline::exit::INVALID, e))?;
    let endpoint = faultline::fleet::Endpoint {
        tls,
        advertise: args.advertise.clone(),
    };
    Controller::start(args.listen, token, endpoint)
        .await
        .map_err(|e| super::fail(e.code, e))
}

/// Reads or creates the token file, saying so when it is new.
pub(super) fn token(path: &std::path::Path) -> anyhow::Result<String> {
    let (t, created) = token::load_or_create(path)
        .map_err(|e| super::fail(exit::INVALID, anyhow::anyhow!("token file {}: {e}", path.display())))?;
    if created {
        tracing::info!(path = %path.display(), "created a new agent token; start agents with --token-file pointing at it");
    }
    Ok(t)
}
