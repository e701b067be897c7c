//! `faultline serve`: the long-running controller.

use crate::cli::ServeArgs;
use faultline::exit;
use faultline::serve::{self, api::Tokens, Config};

/// Serves until SIGTERM or Ctrl-C.
pub fn run(args: ServeArgs) -> anyhow::Result<u8> {
    let token = super::run::token(&args.token_file)?;
    let tls = args
        .tls
        .load(&args.token_file)
        .map_err(|e| super::fail(exit::INVALID, e))?;
    let (api_tokens, created) = Tokens::load(&args.api_token_file).map_err(|e| super::fail(exit::INVALID, e))?;
    if created {
        tracing::info!(path = %args.api_token_file.display(), "created a new API token; clients send it as Authorization: Bearer");
    }
    let config = Config {
        listen: args.listen,
        agents_listen: args.agents_listen,
        database: args.database,
        token,
        tls,
        api_tokens,
        journals: args.journals,
        drain: args.drain,
    };
    super::runtime()?
        .block_on(serve::serve(config))
        .map_err(|e| super::fail(exit::FAILED, e))?;
    Ok(exit::COMPLETED)
}
