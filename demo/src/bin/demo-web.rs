//! `demo-web`: the service a demo host runs; it answers who it is.

use clap::Parser;
use faultline_agent::logging::{self, LogFormat};
use faultline_demo::{bind, on_signals, runtime, serve, text};
use hyper::StatusCode;
use std::net::SocketAddr;
use std::sync::Arc;

/// A tiny HTTP service: `/` answers with the host's name, `/healthz` with ok.
#[derive(Debug, Parser)]
#[command(name = "demo-web", version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "DEMO_WEB_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Name it answers with, e.g. the host id.
    #[arg(long, env = "DEMO_WEB_NAME", default_value = "demo-web")]
    name: String,
    /// Log line format.
    #[arg(long, env = "DEMO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, 0, &["demo_web"]);
    runtime().block_on(async move {
        let Some((listener, bound)) = bind(cli.listen).await else {
            return std::process::ExitCode::FAILURE;
        };
        tracing::info!(listen = %bound, name = %cli.name, "serving");
        let greeting: Arc<str> = format!("hello from {}\n", cli.name).into();
        let handler = Arc::new(move |req: hyper::Request<hyper::body::Incoming>| {
            let greeting = greeting.clone();
            async move {
                match req.uri().path() {
                    "/healthz" => text(StatusCode::OK, "ok\n"),
                    _ => text(StatusCode::OK, greeting.to_string()),
                }
            }
        });
        serve(listener, handler, on_signals()).await;
        std::process::ExitCode::SUCCESS
    })
}
