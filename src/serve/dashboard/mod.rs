//! The game-day dashboard at `/`: server-rendered pages (embedded, no CDN, no build step)
//! with one small script. The pages hold no data: the script asks for the API token, keeps
//! it in `sessionStorage` and sends it as a bearer token on every API call and on the live
//! stream (`GET /api/v1/events`, server-sent events read with `fetch`, which can send the
//! header that `EventSource` cannot). Nothing is shown without a valid token.

pub mod view;

use super::Service;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

const PAGE: &str = include_str!("assets/page.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

/// How often the live stream sends while nothing else happens (time left, new datapoints).
const TICK: Duration = Duration::from_secs(1);

/// The pages and their assets: open, as they hold no data.
pub fn pages() -> Router<Arc<Service>> {
    Router::new()
        .route("/", get(page))
        .route("/experiments/{id}", get(page))
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

/// The routes behind the API tokens.
pub fn api() -> Router<Arc<Service>> {
    Router::new()
        .route("/api/v1/events", get(events))
        .route("/api/v1/experiments/{id}/report", get(report))
}

async fn page() -> Response {
    let mut r = Html(PAGE).into_response();
    // The page runs only its own script and talks only to this server.
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    r
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    experiment: Option<String>,
}

/// The live stream: a `snapshot` event (the map, and the experiment asked for) at once, on
/// every change of the fleet, and every second, until the server shuts down.
async fn events(State(s): State<Arc<Service>>, Query(q): Query<EventsQuery>) -> Response {
    let changes = s.controller.fleet().changes();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = futures_util::stream::unfold(
        (s, q.experiment, changes, tick),
        |(s, id, mut changes, mut tick)| async move {
            // The stream ends when the server shuts down, or the shutdown would wait for
            // every open tab.
            tokio::select! {
                biased;
                _ = s.shutdown.cancelled() => return None,
                _ = tick.tick() => {}
                _ = changes.changed() => {}
            }
            let data = snapshot(&s, id.as_deref()).await;
            let event = Event::default().event("snapshot").data(data.to_string());
            Some((Ok::<_, Infallible>(event), (s, id, changes, tick)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// The map and, if asked, one experiment, as of now.
async fn snapshot(s: &Service, experiment: Option<&str>) -> serde_json::Value {
    let now = super::store::now_ms();
    let mut faults = Vec::new();
    for id in s.running_ids() {
        if let Ok(Some(row)) = s.store.experiment(&id).await {
            faults.extend(view::active_faults(&id, &row.template, &s.running_journal(&id)));
        }
    }
    let (connected, seen) = s.hosts().await;
    let mut snap = serde_json::json!({
        "map": view::map(&connected, &seen, &faults, now),
        "running": s.running_ids(),
        "lever": s.store.lever().await.ok().flatten(),
    });
    if let Some(id) = experiment {
        snap["experiment"] = match s.store.experiment(id).await {
            Ok(Some(row)) => {
                let lines = s.journal(&row).await.unwrap_or_default();
                view::experiment(&row, &lines, now)
            }
            _ => serde_json::Value::Null,
        };
    }
    snap
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportQuery {
    format: Option<String>,
}

/// `GET /api/v1/experiments/{id}/report?format=html|md|json`: the run's report: the
/// game-day report rendered from its journal (HTML, the default, or Markdown), or the JSON
/// report the run stored.
async fn report(State(s): State<Arc<Service>>, Path(id): Path<String>, Query(q): Query<ReportQuery>) -> Response {
    let fail = |status: StatusCode, message: String| {
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
    };
    if let Some(f) = q.format.as_deref().filter(|f| !matches!(*f, "html" | "md" | "json")) {
        return fail(StatusCode::BAD_REQUEST, format!("format {f:?}: use html, md or json"));
    }
    let format = q.format.as_deref().unwrap_or("html");
    match s.store.experiment(&id).await {
        Ok(Some(row)) if format != "json" => {
            let lines = match s.journal(&row).await {
                Ok(lines) if lines.is_empty() && row.ended_at.is_some() => {
                    return fail(StatusCode::NOT_FOUND, row.never_ran("report"))
                }
                Ok(lines) => lines,
                Err(e) => return fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            };
            let record = match crate::report::record::RunRecord::from_jsonl(&lines.join("\n")) {
                Ok(r) => r,
                Err(e) => return fail(StatusCode::INTERNAL_SERVER_ERROR, format!("{id}: {e}")),
            };
            if format == "md" {
                (
                    [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
                    crate::report::markdown::render(&record),
                )
                    .into_response()
            } else {
                (
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    crate::report::html::render(&record),
                )
                    .into_response()
            }
        }
        Ok(Some(row)) => match row.report {
            Some(r) => axum::Json(r).into_response(),
            None => fail(
                StatusCode::NOT_FOUND,
                format!(
                    "{id} has no report ({}{})",
                    row.state,
                    row.reason.map(|r| format!(": {r}")).unwrap_or_default()
                ),
            ),
        },
        Ok(None) => fail(StatusCode::NOT_FOUND, format!("no experiment {id}")),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
