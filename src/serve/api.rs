//! The HTTP API (docs/api.md): JSON in and out, bearer tokens on everything but `/healthz`.
//! Each token has a role: `read` sees everything, `run` also changes what runs, `admin` also
//! changes what runs unattended (schedules) and releases the safety lever.

use super::scheduler::{self, Compiled, Spec};
use super::store::StoreError;
use super::{metrics, Service, ServiceError, Started, TemplateRef};
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What a token may do; each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Every `GET`, and validating a template.
    Read,
    /// Also: store templates, start and stop experiments, engage the lever, pause a schedule.
    Run,
    /// Also: add, change, remove and resume schedules, disengage the lever.
    Admin,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Run => "run",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        [Role::Read, Role::Run, Role::Admin].into_iter().find(|r| r.name() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One line of the token file.
#[derive(Clone)]
struct Holder {
    name: String,
    role: Role,
    token: String,
}

/// API tokens: who holds each, with which role. (No `Debug`: the tokens stay out of logs.)
#[derive(Clone)]
pub struct Tokens(Vec<Holder>);

/// Why the API token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// It could not be read or created.
    #[error("API token file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It holds no token.
    #[error("API token file {0} holds no token")]
    Empty(String),
    /// A line names a role that does not exist.
    #[error(
        "API token file {path}, line {line}: unknown role {role:?}; write NAME ROLE TOKEN with ROLE read, run or admin"
    )]
    Role {
        /// The file.
        path: String,
        /// The line, from 1.
        line: usize,
        /// What it says.
        role: String,
    },
    /// A line has more than three words.
    #[error("API token file {path}, line {line}: expected TOKEN, NAME TOKEN or NAME ROLE TOKEN")]
    Malformed {
        /// The file.
        path: String,
        /// The line, from 1.
        line: usize,
    },
}

impl Tokens {
    /// Reads the token file (created with one random token when missing): one token a line,
    /// `TOKEN`, `NAME TOKEN` or `NAME ROLE TOKEN` (ROLE `read`, `run` or `admin`); `#`
    /// starts a comment. A token without a role is `admin`, what every token was before
    /// roles. Returns the tokens and whether the file was created.
    pub fn load(path: &std::path::Path) -> Result<(Tokens, bool), TokensError> {
        let io = |source| TokensError::Io {
            path: path.display().to_string(),
            source,
        };
        let (_, created) = crate::token::load_or_create(path).map_err(io)?;
        let text = std::fs::read_to_string(path).map_err(io)?;
        let tokens = Tokens::parse(&text, &path.display().to_string())?;
        Ok((tokens, created))
    }

    fn parse(text: &str, path: &str) -> Result<Tokens, TokensError> {
        let mut tokens = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let (name, role, token) = match words[..] {
                [token] => (format!("token-{}", tokens.len() + 1), Role::Admin, token),
                [name, token] => (name.to_string(), Role::Admin, token),
                [name, role, token] => (
                    name.to_string(),
                    Role::parse(role).ok_or_else(|| TokensError::Role {
                        path: path.to_string(),
                        line: i + 1,
                        role: role.to_string(),
                    })?,
                    token,
                ),
                _ => {
                    return Err(TokensError::Malformed {
                        path: path.to_string(),
                        line: i + 1,
                    })
                }
            };
            tokens.push(Holder {
                name,
                role,
                token: token.to_string(),
            });
        }
        if tokens.is_empty() {
            return Err(TokensError::Empty(path.to_string()));
        }
        Ok(Tokens(tokens))
    }

    /// Who holds `presented`, compared in constant time against every token.
    fn holder(&self, presented: &str) -> Option<Caller> {
        let mut found = None;
        for h in &self.0 {
            if bool::from(h.token.as_bytes().ct_eq(presented.as_bytes())) {
                found = Some(Caller {
                    name: h.name.clone(),
                    role: h.role,
                });
            }
        }
        found
    }
}

/// Who made the request, with the role of their token.
#[derive(Debug, Clone)]
struct Caller {
    name: String,
    role: Role,
}

impl Caller {
    /// Refuses, naming the role that would allow it, what this caller's role does not.
    fn needs(&self, role: Role, what: &str) -> Result<(), ApiError> {
        if self.role >= role {
            return Ok(());
        }
        let needed = match role {
            Role::Admin => "admin",
            _ => "run or admin",
        };
        Err(error(
            StatusCode::FORBIDDEN,
            format!(
                "{what} needs a token with role {needed}; {}'s token has role {} (the role is the middle word of NAME ROLE TOKEN in --api-token-file)",
                self.name, self.role
            ),
        ))
    }
}

/// The least role a route needs; some handlers ask more of some bodies (disengaging the lever).
fn required(method: &Method, path: &str) -> (Role, &'static str) {
    if method == Method::GET || method == Method::HEAD {
        return (Role::Read, "reading");
    }
    if path == "/api/v1/templates/validate" {
        return (Role::Read, "validating a template");
    }
    if let Some(rest) = path.strip_prefix("/api/v1/schedules") {
        if !rest.ends_with("/pause") {
            return (Role::Admin, "changing a schedule");
        }
    }
    (Role::Run, "this change")
}

/// An API error: a status and a JSON body with a message (and the validator's pointers).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> ApiError {
    ApiError {
        status,
        body: json!({ "error": message.to_string() }),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "storage failed");
        error(StatusCode::INTERNAL_SERVER_ERROR, e)
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Store(e) => e.into(),
            ServiceError::NotFound(m) => error(StatusCode::NOT_FOUND, m),
            ServiceError::Refused(reasons) => ApiError {
                status: StatusCode::FORBIDDEN,
                body: json!({
                    "error": format!("the server does not run this template: {}", reasons.join("; ")),
                    "refusals": reasons,
                }),
            },
            ServiceError::Invalid(diagnostics) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                body: json!({
                    "error": "the template is not valid",
                    "diagnostics": diagnostics.iter().map(|d| json!({
                        "pointer": d.pointer(),
                        "message": d.message,
                        "hint": d.hint,
                    })).collect::<Vec<_>>(),
                }),
            },
        }
    }
}

type ApiResult = Result<Response, ApiError>;

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("the body is not the JSON expected: {e}"),
        )
    })
}

/// The router: `/healthz` open, everything else behind the bearer tokens.
pub fn router(service: Arc<Service>, tokens: Tokens) -> Router {
    let api = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/templates", get(templates))
        .route("/api/v1/templates/validate", post(validate))
        .route("/api/v1/templates/{name}", put(put_template).get(get_template))
        .route("/api/v1/templates/{name}/versions/{version}", get(get_template_version))
        .route("/api/v1/experiments", post(start).get(experiments))
        .route("/api/v1/experiments/{id}", get(experiment))
        .route("/api/v1/experiments/{id}/stop", post(stop))
        .route("/api/v1/experiments/{id}/journal", get(journal))
        .route("/api/v1/experiments/{id}/junit", get(junit))
        .route("/api/v1/schedules", post(add_schedule).get(schedules))
        .route(
            "/api/v1/schedules/{name}",
            get(schedule).put(update_schedule).delete(delete_schedule),
        )
        .route("/api/v1/schedules/{name}/pause", post(pause))
        .route("/api/v1/schedules/{name}/resume", post(resume))
        .route("/api/v1/schedules/{name}/runs", get(schedule_runs))
        .route("/api/v1/lever", put(set_lever).get(lever))
        .route("/api/v1/lever/history", get(lever_history))
        .route("/api/v1/history", get(history))
        .merge(super::dashboard::api())
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint; see docs/api.md") })
        .layer(middleware::from_fn_with_state(Arc::new(tokens), auth));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route(faultline_agent::protocol::AGENT_PATH, get(super::port::agents))
        .merge(super::dashboard::pages())
        .merge(api)
        .layer(middleware::map_response(json_errors))
        .with_state(service)
}

/// The framework's own refusals (a malformed path or query, a method not allowed) come as
/// plain text or nothing; every error of this API is JSON.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_string();
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        message
    };
    let mut json = error(status, message).into_response();
    if let Some(v) = parts.headers.get(header::WWW_AUTHENTICATE) {
        json.headers_mut().insert(header::WWW_AUTHENTICATE, v.clone());
    }
    if let Some(v) = parts.headers.get(header::ALLOW) {
        json.headers_mut().insert(header::ALLOW, v.clone());
    }
    json
}

/// The credentials of an `Authorization: Bearer` header; the scheme is case-insensitive
/// (RFC 9110 §11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credentials.trim())
}

async fn auth(State(tokens): State<Arc<Tokens>>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    match presented.and_then(|p| tokens.holder(p)) {
        Some(who) => {
            let (role, what) = required(req.method(), req.uri().path());
            if let Err(e) = who.needs(role, what) {
                return e.into_response();
            }
            req.extensions_mut().insert(who);
            next.run(req).await
        }
        None => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required: Authorization: Bearer <token from --api-token-file>",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("a valid header"));
            r
        }
    }
}

async fn metrics_text(State(s): State<Arc<Service>>) -> ApiResult {
    let by_state = s.store.count_by_state().await?;
    let faults = s.active_faults().await;
    let mut agents_by_az: BTreeMap<String, usize> = BTreeMap::new();
    for h in s.controller.fleet().hosts() {
        *agents_by_az.entry(h.placement.availability_zone).or_insert(0) += 1;
    }
    let lever_engaged = s.store.lever().await?.is_some_and(|l| l.engaged);
    let text = metrics::render(
        &s.metrics,
        &metrics::Snapshot {
            by_state: &by_state,
            faults: &faults,
            agents_by_az: &agents_by_az,
            lever_engaged,
        },
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

async fn agents(State(s): State<Arc<Service>>) -> ApiResult {
    let faults = s.active_faults().await;
    let hosts: Vec<Value> = s
        .controller
        .hosts()
        .await
        .into_iter()
        .map(|h| {
            json!({
                "hostId": h.host_id,
                "availabilityZone": h.placement.availability_zone,
                "tags": h.tags,
                "address": h.address,
                "state": h.state,
                "agent": h.agent,
                "activeFaults": faults.get(&h.host_id).copied().unwrap_or(0),
            })
        })
        .collect();
    Ok(Json(json!({ "agents": hosts })).into_response())
}

async fn templates(State(s): State<Arc<Service>>) -> ApiResult {
    Ok(Json(json!({ "templates": s.store.templates().await? })).into_response())
}

async fn validate(State(s): State<Arc<Service>>, body: Bytes) -> ApiResult {
    let template: Value = parse(&body)?;
    s.admissible(&template).await?;
    Ok(Json(json!({ "valid": true })).into_response())
}

async fn put_template(
    State(s): State<Arc<Service>>,
    Extension(Caller { name: who, .. }): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let template: Value = parse(&body)?;
    s.admissible(&template).await?;
    let version = s.store.put_template(&name, &template, &who).await?;
    tracing::info!(template = %name, version, by = %who, "template stored");
    Ok((StatusCode::CREATED, Json(json!({ "name": name, "version": version }))).into_response())
}

async fn get_template(State(s): State<Arc<Service>>, Path(name): Path<String>) -> ApiResult {
    let versions = s.store.template_versions(&name).await?;
    let Some(latest) = versions.last() else {
        return Err(error(StatusCode::NOT_FOUND, format!("no template named {name:?}")));
    };
    Ok(Json(json!({
        "name": name,
        "version": latest.version,
        "body": latest.body,
        "versions": versions.iter().map(|v| json!({"version": v.version, "createdAt": v.created_at, "createdBy": v.created_by})).collect::<Vec<_>>(),
    }))
    .into_response())
}

async fn get_template_version(State(s): State<Arc<Service>>, Path((name, version)): Path<(String, i64)>) -> ApiResult {
    match s.store.template(&name, Some(version)).await? {
        Some(t) => Ok(Json(t).into_response()),
        None => Err(error(
            StatusCode::NOT_FOUND,
            format!("no version {version} of template {name:?}"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    template: Value,
    #[serde(default)]
    version: Option<i64>,
    #[serde(default)]
    seed: Option<u64>,
}

async fn start(
    State(s): State<Arc<Service>>,
    Extension(Caller { name: who, .. }): Extension<Caller>,
    body: Bytes,
) -> ApiResult {
    let b: StartBody = parse(&body)?;
    let template = match b.template {
        Value::String(name) => TemplateRef::Stored {
            name,
            version: b.version,
        },
        v @ Value::Object(_) => TemplateRef::Inline(v),
        _ => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "\"template\" is a stored template's name or a template object",
            ))
        }
    };
    let (id, state, reason) = match s.start(template, &who, None, b.seed).await? {
        Started::Running { id } => (id, "running", None),
        Started::Refused { id, state, reason } => (id, state, Some(reason)),
        Started::Overlaps { reason } => return Err(error(StatusCode::CONFLICT, reason)),
    };
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id, "state": state, "reason": reason })),
    )
        .into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<i64>,
}

/// The states an experiment can be in (FIS's names).
const STATES: [&str; 8] = [
    "pending",
    "initiating",
    "running",
    "completed",
    "stopping",
    "stopped",
    "failed",
    "cancelled",
];

async fn experiments(State(s): State<Arc<Service>>, Query(q): Query<ListQuery>) -> ApiResult {
    if let Some(st) = q.state.as_deref().filter(|st| !STATES.contains(st)) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("unknown state {st:?}; one of {}", STATES.join(", ")),
        ));
    }
    let rows = s
        .store
        .experiments(q.state.as_deref(), q.limit.unwrap_or(100).clamp(1, 1000))
        .await?;
    // The list is a summary: of the report only the outcome and the time to recover.
    let list: Vec<Value> = rows
        .into_iter()
        .map(|mut r| {
            let report = r.report.take().unwrap_or(Value::Null);
            let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
            v["outcome"] = report["outcome"].clone();
            v["recoveryMs"] = report["steadyState"]["recoveryMs"].clone();
            v
        })
        .collect();
    Ok(Json(json!({ "experiments": list })).into_response())
}

async fn experiment_row(s: &Service, id: &str) -> Result<super::store::ExperimentRow, ApiError> {
    s.store
        .experiment(id)
        .await?
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no experiment {id}")))
}

/// The longest an experiment's reader may wait for its end in one request.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Deserialize)]
struct ExperimentQuery {
    /// An ISO 8601 duration: answer at the run's end, or once this has passed.
    wait: Option<String>,
}

async fn experiment(
    State(s): State<Arc<Service>>,
    Path(id): Path<String>,
    Query(q): Query<ExperimentQuery>,
) -> ApiResult {
    let wait = q
        .wait
        .as_deref()
        .map(crate::duration::parse)
        .transpose()
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("wait: {e}")))?;
    let mut row = experiment_row(&s, &id).await?;
    if let Some(wait) = wait.filter(|_| row.ended_at.is_none()) {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        // Not running here: ended just now, or a run of another replica, whose end this one
        // does not hear of.
        if !s.until_ended(&id, deadline).await && experiment_row(&s, &id).await?.ended_at.is_none() {
            tokio::time::sleep_until(deadline).await;
        }
        row = experiment_row(&s, &id).await?;
    }
    let mut v = serde_json::to_value(&row).map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    v["template"] = row.template;
    Ok(Json(v).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StopBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn stop(
    State(s): State<Arc<Service>>,
    Extension(Caller { name: who, .. }): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let b: StopBody = if body.is_empty() {
        StopBody::default()
    } else {
        parse(&body)?
    };
    let row = experiment_row(&s, &id).await?;
    let why = match b.reason {
        Some(r) => format!("stopped by {who}: {r}"),
        None => format!("stopped by {who}"),
    };
    if s.stop(&id, why).await {
        return Ok((StatusCode::ACCEPTED, Json(json!({ "id": id, "state": "stopping" }))).into_response());
    }
    if row.replica != s.replica && matches!(row.state.as_str(), "running" | "pending") {
        return Err(error(
            StatusCode::CONFLICT,
            format!("{id} runs on another replica ({}); stop it there", row.replica),
        ));
    }
    Err(error(
        StatusCode::CONFLICT,
        format!("{id} is not running (state {})", row.state),
    ))
}

#[derive(Deserialize)]
struct JournalQuery {
    after: Option<usize>,
}

async fn journal(State(s): State<Arc<Service>>, Path(id): Path<String>, Query(q): Query<JournalQuery>) -> ApiResult {
    let row = experiment_row(&s, &id).await?;
    let lines = s.journal(&row).await?;
    let mut text = String::new();
    for l in lines.iter().skip(q.after.unwrap_or(0)) {
        text.push_str(l);
        text.push('\n');
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        "application/x-ndjson".parse().expect("a valid header"),
    );
    headers.insert(
        "x-faultline-state",
        row.state
            .parse()
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?,
    );
    Ok((headers, text).into_response())
}

async fn junit(State(s): State<Arc<Service>>, Path(id): Path<String>) -> ApiResult {
    let row = experiment_row(&s, &id).await?;
    match s.store.junit(&id).await? {
        Some(xml) => Ok(([(header::CONTENT_TYPE, "application/xml")], xml).into_response()),
        None if row.ended_at.is_some() => Err(error(StatusCode::NOT_FOUND, row.never_ran("JUnit"))),
        None => Err(error(StatusCode::CONFLICT, format!("{id} has not ended yet"))),
    }
}

fn schedule_json(s: &Service, row: &super::store::ScheduleRow) -> Value {
    with_next_runs(s.up_since, row)
}

/// A schedule with its next run times: up to [`scheduler::NEXT_RUNS_HORIZON_MS`] of cron
/// ticks are scanned, so a list of them is computed off the async workers.
fn with_next_runs(up_since: i64, row: &super::store::ScheduleRow) -> Value {
    let next: Vec<String> = serde_json::from_value::<Spec>(row.spec.clone())
        .ok()
        .and_then(|spec| Compiled::new(&spec).ok())
        .filter(|_| !row.paused)
        .map(|c| {
            c.next_runs(super::store::now_ms().max(up_since), 5)
                .into_iter()
                .map(scheduler::rfc3339)
                .collect()
        })
        .unwrap_or_default();
    let mut v = row.spec.clone();
    v["paused"] = json!(row.paused);
    v["nextRuns"] = json!(next);
    v
}

/// A posted schedule, checked: valid, and its template stored.
async fn checked_schedule(s: &Service, body: &Bytes) -> Result<(Spec, Value), ApiError> {
    let spec: Spec = parse(body)?;
    let invalid = |pointer: &str, message: String| ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        body: json!({ "error": "the schedule is not valid", "diagnostics": [{ "pointer": pointer, "message": message }] }),
    };
    if let Err(e) = Compiled::new(&spec) {
        return Err(invalid(&e.pointer, e.message));
    }
    if s.store.template(&spec.template, None).await?.is_none() {
        return Err(invalid(
            "/template",
            format!(
                "no stored template named {:?}; PUT /api/v1/templates/{{name}} first",
                spec.template
            ),
        ));
    }
    let stored = serde_json::to_value(&spec).map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok((spec, stored))
}

async fn add_schedule(
    State(s): State<Arc<Service>>,
    Extension(Caller { name: who, .. }): Extension<Caller>,
    body: Bytes,
) -> ApiResult {
    let (spec, stored) = checked_schedule(&s, &body).await?;
    if !s.store.insert_schedule(&spec.name, &stored, &who).await? {
        return Err(error(
            StatusCode::CONFLICT,
            format!(
                "a schedule named {:?} exists; PUT /api/v1/schedules/{{name}} to change it",
                spec.name
            ),
        ));
    }
    tracing::info!(schedule = %spec.name, by = %who, "schedule added");
    let row = find_schedule(&s, &spec.name).await?;
    Ok((StatusCode::CREATED, Json(schedule_json(&s, &row))).into_response())
}

async fn update_schedule(
    State(s): State<Arc<Service>>,
    Extension(Caller { name: who, .. }): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    let (spec, stored) = checked_schedule(&s, &body).await?;
    if spec.name != name {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("the body names {:?}, the path {name:?}", spec.name),
        ));
    }
    if !s.store.update_schedule(&name, &stored).await? {
        return Err(error(StatusCode::NOT_FOUND, format!("no schedule named {name:?}")));
    }
    tracing::info!(schedule = %name, by = %who, "schedule changed");
    let row = find_schedule(&s, &name).await?;
    Ok(Json(schedule_json(&s, &row)).into_response())
}

async fn find_schedule(s: &Service, name: &str) -> Result<super::store::ScheduleRow, ApiError> {
    s.store
        .schedules()
        .await?
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no schedule named {name:?}")))
}

async fn schedules(State(s): State<Arc<Service>>) -> ApiResult {
    let rows = s.store.schedules().await?;
    let up_since = s.up_since;
    let list: Vec<Value> =
        tokio::task::spawn_blocking(move || rows.iter().map(|r| with_next_runs(up_since, r)).collect())
            .await
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(Json(json!({ "schedules": list })).into_response())
}

async fn schedule(State(s): State<Arc<Service>>, Path(name): Path<String>) -> ApiResult {
    let row = find_schedule(&s, &name).await?;
    Ok(Json(schedule_json(&s, &row)).into_response())
}

async fn delete_schedule(State(s): State<Arc<Service>>, Path(name): Path<String>) -> ApiResult {
    if !s.store.delete_schedule(&name).await? {
        return Err(error(StatusCode::NOT_FOUND, format!("no schedule named {name:?}")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn set_paused(s: &Service, name: &str, paused: bool) -> ApiResult {
    if !s.store.set_paused(name, paused).await? {
        return Err(error(StatusCode::NOT_FOUND, format!("no schedule named {name:?}")));
    }
    let row = find_schedule(s, name).await?;
    Ok(Json(schedule_json(s, &row)).into_response())
}

async fn pause(State(s): State<Arc<Service>>, Path(name): Path<String>) -> ApiResult {
    set_paused(&s, &name, true).await
}

async fn resume(State(s): State<Arc<Service>>, Path(name): Path<String>) -> ApiResult {
    set_paused(&s, &name, false).await
}

async fn schedule_runs(State(s): State<Arc<Service>>, Path(name): Path<String>) -> ApiResult {
    let runs = s.store.schedule_runs(Some(&name), 100).await?;
    Ok(Json(json!({ "runs": runs })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeverBody {
    engaged: bool,
    reason: String,
}

async fn lever_json(s: &Service) -> Result<Value, ApiError> {
    Ok(match s.store.lever().await? {
        Some(l) => serde_json::to_value(l).map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))?,
        None => json!({ "engaged": false }),
    })
}

async fn set_lever(State(s): State<Arc<Service>>, Extension(caller): Extension<Caller>, body: Bytes) -> ApiResult {
    let b: LeverBody = parse(&body)?;
    // Anyone who may start a run may stop them all; lifting that stop is the admin's.
    if !b.engaged {
        caller.needs(Role::Admin, "disengaging the safety lever")?;
    }
    let who = caller.name;
    if b.reason.trim().is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "a reason is required: it goes into the lever's history",
        ));
    }
    s.set_lever(b.engaged, b.reason.trim(), &who).await?;
    Ok(Json(lever_json(&s).await?).into_response())
}

async fn lever(State(s): State<Arc<Service>>) -> ApiResult {
    Ok(Json(lever_json(&s).await?).into_response())
}

async fn lever_history(State(s): State<Arc<Service>>) -> ApiResult {
    Ok(Json(json!({ "history": s.store.lever_history(1000).await? })).into_response())
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<i64>,
}

/// Experiments, schedule fire times that did not start one, and lever changes, newest first.
async fn history(State(s): State<Arc<Service>>, Query(q): Query<HistoryQuery>) -> ApiResult {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let mut items: Vec<(i64, Value)> = Vec::new();
    for e in s.store.experiments(None, limit).await? {
        let what = match (&e.template_name, &e.schedule) {
            (Some(n), Some(sc)) => format!("{n}@v{} (schedule {sc})", e.template_version.unwrap_or_default()),
            (Some(n), None) => format!("{n}@v{}", e.template_version.unwrap_or_default()),
            (None, _) => "inline template".into(),
        };
        items.push((
            e.created_at,
            json!({ "at": e.created_at, "kind": "experiment", "id": e.id, "what": what, "state": e.state, "by": e.created_by, "reason": e.reason }),
        ));
    }
    for r in s.store.schedule_runs(None, limit).await? {
        if r.outcome == "started" {
            continue; // its experiment is listed
        }
        items.push((
            r.fire_at,
            json!({ "at": r.fire_at, "kind": "schedule", "what": r.schedule, "state": r.outcome, "id": r.experiment_id, "reason": r.reason }),
        ));
    }
    for l in s.store.lever_history(limit).await? {
        items.push((
            l.changed_at,
            json!({ "at": l.changed_at, "kind": "lever", "what": "safety lever", "state": if l.engaged { "engaged" } else { "disengaged" }, "by": l.changed_by, "reason": l.reason }),
        ));
    }
    items.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    items.truncate(limit as usize);
    Ok(Json(json!({ "history": items.into_iter().map(|(_, v)| v).collect::<Vec<_>>() })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_holders() {
        let dir = std::env::temp_dir().join(format!("fl-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api-tokens");
        std::fs::write(&path, "# on call\nalice s3cret\nplain-token\nbob read r3ad\n").unwrap();
        let (t, created) = Tokens::load(&path).unwrap();
        assert!(!created);
        let holder = |p: &str| t.holder(p).map(|c| (c.name, c.role));
        assert_eq!(holder("s3cret"), Some(("alice".into(), Role::Admin)));
        assert_eq!(holder("plain-token"), Some(("token-2".into(), Role::Admin)));
        assert_eq!(holder("r3ad"), Some(("bob".into(), Role::Read)));
        assert_eq!(holder("s3cre"), None);
        assert_eq!(holder(""), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_token_line_names_a_known_role() {
        let e = Tokens::parse("carol root t0k\n", "f").err().unwrap().to_string();
        assert!(e.contains("line 1") && e.contains("read, run or admin"), "{e}");
        assert!(Tokens::parse("a b c d\n", "f").is_err());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn writes_need_more_than_read() {
        assert_eq!(required(&Method::GET, "/api/v1/schedules").0, Role::Read);
        assert_eq!(required(&Method::POST, "/api/v1/templates/validate").0, Role::Read);
        assert_eq!(required(&Method::POST, "/api/v1/experiments").0, Role::Run);
        assert_eq!(required(&Method::POST, "/api/v1/schedules/x/pause").0, Role::Run);
        assert_eq!(required(&Method::POST, "/api/v1/schedules/x/resume").0, Role::Admin);
        assert_eq!(required(&Method::DELETE, "/api/v1/schedules/x").0, Role::Admin);
        assert_eq!(required(&Method::PUT, "/api/v1/lever").0, Role::Run);
    }
}
