//! `demo-lb`: a round-robin HTTP load balancer with active health checks and Prometheus
//! metrics, in front of the demo hosts.
//!
//! Unhealthy backends are taken out after `--unhealthy-threshold` failed checks and put back
//! after `--healthy-threshold` good ones. A request that fails on its backend is not retried:
//! the errors a fault causes stay visible to the alarms that watch the load balancer.

use bytes::Bytes;
use clap::Parser;
use faultline_agent::logging::{self, LogFormat};
use faultline_demo::{bind, on_signals, runtime, serve, text, Body};
use futures_util::future::join_all;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Round-robin load balancer with active health checks and /metrics.
#[derive(Debug, Parser)]
#[command(name = "demo-lb", version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "DEMO_LB_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// A backend, NAME=HOST:PORT (repeat, or comma-separate in the variable).
    #[arg(long = "backend", env = "DEMO_LB_BACKENDS", value_delimiter = ',', value_parser = parse_backend, required = true)]
    backends: Vec<(String, SocketAddr)>,
    /// Source address of connections to backends (distinct loopback addresses tell hosts apart).
    #[arg(long, env = "DEMO_LB_SOURCE_IP")]
    source_ip: Option<IpAddr>,
    /// Path of the backends' health check.
    #[arg(long, default_value = "/healthz")]
    health_path: String,
    /// Time between health checks (ISO 8601).
    #[arg(long, default_value = "PT0.5S", value_parser = faultline_agent::duration::parse)]
    health_interval: Duration,
    /// Failed checks before a backend is taken out.
    #[arg(long, default_value_t = 2)]
    unhealthy_threshold: u32,
    /// Good checks before a backend is put back.
    #[arg(long, default_value_t = 2)]
    healthy_threshold: u32,
    /// Time to connect to a backend (ISO 8601).
    #[arg(long, default_value = "PT0.5S", value_parser = faultline_agent::duration::parse)]
    connect_timeout: Duration,
    /// Time a proxied request may take (ISO 8601).
    #[arg(long, default_value = "PT2S", value_parser = faultline_agent::duration::parse)]
    request_timeout: Duration,
    /// Log line format.
    #[arg(long, env = "DEMO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

fn parse_backend(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=HOST:PORT"))?;
    Ok((name.to_string(), addr.parse().map_err(|e| format!("`{addr}`: {e}"))?))
}

/// Upper bounds of the latency histogram, seconds.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

struct Backend {
    name: String,
    addr: SocketAddr,
    healthy: AtomicBool,
    streak: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

struct Lb {
    backends: Vec<Backend>,
    next: AtomicUsize,
    client: Client<HttpConnector, Full<Bytes>>,
    request_timeout: Duration,
    no_backend: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Lb {
    fn pick(&self) -> Option<&Backend> {
        let n = self.backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.backends[(start + i) % n])
            .find(|b| b.healthy.load(Ordering::Relaxed))
    }

    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if s <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    async fn proxy(&self, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let Some(backend) = self.pick() else {
            self.no_backend.fetch_add(1, Ordering::Relaxed);
            return text(StatusCode::SERVICE_UNAVAILABLE, "no healthy backend\n");
        };
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("cannot read the request: {e}\n")),
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut out = Request::builder()
            .method(parts.method)
            .uri(format!("http://{}{path}", backend.addr));
        for (k, v) in parts.headers.iter().filter(|(k, _)| *k != "host" && *k != "connection") {
            out = out.header(k, v);
        }
        let Ok(out) = out.body(Full::new(body)) else {
            return text(StatusCode::BAD_REQUEST, "bad request\n");
        };
        let response = match tokio::time::timeout(self.request_timeout, self.client.request(out)).await {
            Ok(Ok(r)) => {
                let (parts, body) = r.into_parts();
                match tokio::time::timeout(self.request_timeout, body.collect()).await {
                    Ok(Ok(b)) => Ok(Response::from_parts(parts, Full::new(b.to_bytes()))),
                    _ => Err((StatusCode::BAD_GATEWAY, "backend closed mid-response")),
                }
            }
            Ok(Err(_)) => Err((StatusCode::BAD_GATEWAY, "backend unreachable")),
            Err(_) => Err((StatusCode::GATEWAY_TIMEOUT, "backend timed out")),
        };
        self.observe(started.elapsed());
        match response {
            Ok(mut r) => {
                backend.ok.fetch_add(1, Ordering::Relaxed);
                r.headers_mut()
                    .insert("x-backend", backend.name.parse().expect("host ids are header-safe"));
                r
            }
            Err((status, why)) => {
                backend.failed.fetch_add(1, Ordering::Relaxed);
                text(status, format!("{why}: {}\n", backend.name))
            }
        }
    }

    fn metrics(&self) -> String {
        let mut m = String::new();
        m += "# HELP lb_requests_total Requests answered by a backend.\n# TYPE lb_requests_total counter\n";
        for b in &self.backends {
            let _ = writeln!(
                m,
                "lb_requests_total{{backend=\"{}\"}} {}",
                b.name,
                b.ok.load(Ordering::Relaxed)
            );
        }
        m += "# HELP lb_backend_errors_total Requests a backend failed (502, 504).\n# TYPE lb_backend_errors_total counter\n";
        for b in &self.backends {
            let _ = writeln!(
                m,
                "lb_backend_errors_total{{backend=\"{}\"}} {}",
                b.name,
                b.failed.load(Ordering::Relaxed)
            );
        }
        m += "# HELP lb_no_backend_total Requests refused with 503: no healthy backend.\n# TYPE lb_no_backend_total counter\n";
        let _ = writeln!(m, "lb_no_backend_total {}", self.no_backend.load(Ordering::Relaxed));
        m += "# HELP lb_backend_healthy Whether a backend passes its health checks.\n# TYPE lb_backend_healthy gauge\n";
        for b in &self.backends {
            let _ = writeln!(
                m,
                "lb_backend_healthy{{backend=\"{}\"}} {}",
                b.name,
                u8::from(b.healthy.load(Ordering::Relaxed))
            );
        }
        m += "# HELP lb_request_duration_seconds Time to answer proxied requests.\n# TYPE lb_request_duration_seconds histogram\n";
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                m,
                "lb_request_duration_seconds_bucket{{le=\"{le}\"}} {}",
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(m, "lb_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            m,
            "lb_request_duration_seconds_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(m, "lb_request_duration_seconds_count {count}");
        m
    }
}

/// Checks every backend each interval and moves it in or out of rotation.
async fn health_checks(
    lb: Arc<Lb>,
    path: String,
    every: Duration,
    out_after: u32,
    in_after: u32,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let checks = lb.backends.iter().map(|b| {
            let uri = format!("http://{}{path}", b.addr);
            let req = Request::get(uri).body(Full::new(Bytes::new())).expect("valid request");
            let lb = lb.clone();
            async move {
                let ok = matches!(
                    tokio::time::timeout(every.max(Duration::from_millis(300)), lb.client.request(req)).await,
                    Ok(Ok(r)) if r.status().is_success()
                );
                (ok, b)
            }
        });
        for (ok, b) in join_all(checks).await {
            let healthy = b.healthy.load(Ordering::Relaxed);
            // The streak counts consecutive checks that disagree with the current state.
            let streak = if ok != healthy {
                b.streak.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                b.streak.store(0, Ordering::Relaxed);
                0
            };
            if !healthy && ok && streak >= u64::from(in_after) {
                b.healthy.store(true, Ordering::Relaxed);
                b.streak.store(0, Ordering::Relaxed);
                tracing::info!(backend = %b.name, "healthy: back in rotation");
            } else if healthy && !ok && streak >= u64::from(out_after) {
                b.healthy.store(false, Ordering::Relaxed);
                b.streak.store(0, Ordering::Relaxed);
                tracing::warn!(backend = %b.name, "unhealthy: taken out of rotation");
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, 0, &["demo_lb"]);
    runtime().block_on(async move {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cli.connect_timeout));
        connector.set_nodelay(true);
        connector.set_local_address(cli.source_ip);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .build(connector);
        let lb = Arc::new(Lb {
            backends: cli
                .backends
                .iter()
                .map(|(name, addr)| Backend {
                    name: name.clone(),
                    addr: *addr,
                    healthy: AtomicBool::new(false),
                    streak: AtomicU64::new(0),
                    ok: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                })
                .collect(),
            next: AtomicUsize::new(0),
            client,
            request_timeout: cli.request_timeout,
            no_backend: AtomicU64::new(0),
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        });
        let Some((listener, bound)) = bind(cli.listen).await else {
            return std::process::ExitCode::FAILURE;
        };
        tracing::info!(listen = %bound, backends = lb.backends.len(), "load balancing");
        let cancel = on_signals();
        tokio::spawn(health_checks(
            lb.clone(),
            cli.health_path.clone(),
            cli.health_interval,
            cli.unhealthy_threshold,
            cli.healthy_threshold,
            cancel.clone(),
        ));
        let handler = Arc::new(move |req: Request<Incoming>| {
            let lb = lb.clone();
            async move {
                match req.uri().path() {
                    "/metrics" => text(StatusCode::OK, lb.metrics()),
                    "/lb/healthz" => {
                        let up = lb.backends.iter().filter(|b| b.healthy.load(Ordering::Relaxed)).count();
                        let status = if up == lb.backends.len() {
                            StatusCode::OK
                        } else {
                            StatusCode::SERVICE_UNAVAILABLE
                        };
                        text(status, format!("{up}/{} backends healthy\n", lb.backends.len()))
                    }
                    _ => lb.proxy(req).await,
                }
            }
        });
        serve(listener, handler, cancel).await;
        std::process::ExitCode::SUCCESS
    })
}
