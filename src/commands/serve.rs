//! `faultline serve`: the long-running controller.

use crate::cli::{ServeArgs, TlsArgs};
use faultline::exit;
use faultline::serve::config::Layer;
use faultline::serve::{self, api::Tokens, Config};

/// Serves until SIGTERM or Ctrl-C.
pub fn run(args: ServeArgs) -> anyhow::Result<u8> {
    let flags = Layer {
        listen: args.listen,
        agents_listen: args.agents_listen,
        database: args.database,
        token_file: args.token_file,
        api_token_file: args.api_token_file,
        journals: args.journals,
        drain: args.drain,
        tls_cert: args.tls.tls_cert,
        tls_key: args.tls.tls_key,
    };
    let file = match &args.config {
        Some(path) => Layer::load(path).map_err(|e| super::fail(exit::INVALID, e))?,
        None => Layer::default(),
    };
    let s = flags.over(file).resolve();
    if s.tls_cert.is_some() != s.tls_key.is_some() {
        return Err(super::fail(
            exit::INVALID,
            anyhow::anyhow!("tls-cert and tls-key go together: give both or neither"),
        ));
    }
    let token = super::run::token(&s.token_file)?;
    let tls = TlsArgs {
        tls_cert: s.tls_cert,
        tls_key: s.tls_key,
    }
    .load(&s.token_file)
    .map_err(|e| super::fail(exit::INVALID, e))?;
    let (api_tokens, created) = Tokens::load(&s.api_token_file).map_err(|e| super::fail(exit::INVALID, e))?;
    if created {
        tracing::info!(path = %s.api_token_file.display(), "created a new API token; clients send it as Authorization: Bearer");
    }
    let config = Config {
        listen: s.listen,
        agents_listen: s.agents_listen,
        database: s.database,
        token,
        tls,
        api_tokens,
        journals: s.journals,
        drain: s.drain,
    };
    super::runtime()?
        .block_on(serve::serve(config))
        .map_err(|e| super::fail(exit::FAILED, e))?;
    Ok(exit::COMPLETED)
}
