//! The CLI as a client of `faultline serve`: `run --server`, `experiments`, `schedules`, `lever`.

use crate::cli::{ClientArgs, ExperimentsAction, LeverAction, ReportFormat, RunArgs, SchedulesAction};
use anyhow::anyhow;
use faultline::exit;
use faultline::report::table;
use faultline::signals::{Ending, EndingSignals};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// How often `run --server` asks for new journal lines (it hears of the end at once).
const FOLLOW_EVERY: Duration = Duration::from_millis(300);

pub(super) struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// The first token of an API token file (`TOKEN` or `NAME TOKEN` lines), or `FAULTLINE_API_TOKEN`.
fn api_token(path: &Path) -> anyhow::Result<String> {
    if let Ok(t) = std::env::var("FAULTLINE_API_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        super::fail(
            exit::INVALID,
            anyhow!(
                "API token file {}: {e}; give --api-token-file or FAULTLINE_API_TOKEN",
                path.display()
            ),
        )
    })?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().last().unwrap_or(l).to_string())
        .ok_or_else(|| {
            super::fail(
                exit::INVALID,
                anyhow!("API token file {} holds no token", path.display()),
            )
        })
}

impl Client {
    pub(super) fn new(server: &str, token_file: &Path) -> anyhow::Result<Client> {
        Ok(Client {
            base: server.trim_end_matches('/').to_string(),
            token: api_token(token_file)?,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| super::fail(exit::FAILED, e))?,
        })
    }

    /// Sends a request; the body of a 2xx answer, else an error with the server's message.
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, String)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| super::fail(exit::FAILED, anyhow!("cannot reach the server at {}: {e}", self.base)))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| super::fail(exit::FAILED, e))?;
        if status.is_success() {
            return Ok((status, text));
        }
        let v: Value = serde_json::from_str(&text).unwrap_or(json!({ "error": text }));
        let mut message = format!("{} ({status})", v["error"].as_str().unwrap_or("the server refused"));
        for d in v["diagnostics"].as_array().into_iter().flatten() {
            message.push_str(&format!(
                "\n  {}: {}",
                d["pointer"].as_str().unwrap_or(""),
                d["message"].as_str().unwrap_or("")
            ));
        }
        let code = if status.is_client_error() && status != StatusCode::NOT_FOUND && status != StatusCode::CONFLICT {
            exit::INVALID
        } else {
            exit::FAILED
        };
        Err(super::fail(code, anyhow!(message)))
    }

    async fn json(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (_, text) = self.call(method, path, body).await?;
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .map_err(|e| super::fail(exit::FAILED, anyhow!("the server's answer is not JSON: {e}")))
    }
}

pub(super) fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| super::fail(exit::FAILED, e))?
        .block_on(f)
}

fn ms(v: &Value) -> String {
    v.as_i64().map(faultline::serve::scheduler::rfc3339).unwrap_or_default()
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `faultline experiments …`.
pub(super) fn experiments(c: &ClientArgs, action: ExperimentsAction) -> anyhow::Result<u8> {
    let client = Client::new(&c.server, &c.api_token_file)?;
    block_on(async {
        match action {
            ExperimentsAction::List { state, limit } => {
                let mut path = format!("/api/v1/experiments?limit={limit}");
                if let Some(st) = state {
                    path.push_str(&format!("&state={st}"));
                }
                let v = client.json(Method::GET, &path, None).await?;
                if c.format == ReportFormat::Json {
                    return print_json(&v["experiments"]);
                }
                let mut t = table([
                    "ID", "STATE", "TEMPLATE", "SCHEDULE", "BY", "CREATED", "ENDED", "REASON",
                ]);
                for e in v["experiments"].as_array().into_iter().flatten() {
                    let template = match (&e["templateName"], &e["templateVersion"]) {
                        (Value::String(n), v) => format!("{n}@v{}", s(v)),
                        _ => "inline".into(),
                    };
                    t.add_row([
                        s(&e["id"]),
                        s(&e["state"]),
                        template,
                        s(&e["schedule"]),
                        s(&e["createdBy"]),
                        ms(&e["createdAt"]),
                        ms(&e["endedAt"]),
                        s(&e["reason"]),
                    ]);
                }
                println!("{t}");
            }
            ExperimentsAction::Show { id } => {
                let v = client
                    .json(Method::GET, &format!("/api/v1/experiments/{id}"), None)
                    .await?;
                if c.format == ReportFormat::Json {
                    return print_json(&v);
                }
                show(&v);
            }
            ExperimentsAction::Stop { id, reason } => {
                let body = json!({ "reason": reason });
                let v = client
                    .json(Method::POST, &format!("/api/v1/experiments/{id}/stop"), Some(&body))
                    .await?;
                if c.format == ReportFormat::Json {
                    return print_json(&v);
                }
                println!("{id}: stopping (every fault is being removed)");
            }
        }
        Ok(())
    })?;
    Ok(exit::COMPLETED)
}

/// An experiment as tables: its record, then its actions.
fn show(v: &Value) {
    let mut t = table(["FIELD", "VALUE"]);
    for (k, label) in [
        ("id", "id"),
        ("state", "state"),
        ("reason", "reason"),
        ("templateName", "template"),
        ("templateVersion", "version"),
        ("schedule", "schedule"),
        ("seed", "seed"),
        ("createdBy", "by"),
    ] {
        t.add_row([label.to_string(), s(&v[k])]);
    }
    t.add_row([
        "hosts".to_string(),
        v["hosts"]
            .as_array()
            .map(|h| h.iter().map(s).collect::<Vec<_>>().join(", "))
            .unwrap_or_default(),
    ]);
    t.add_row(["created".to_string(), ms(&v["createdAt"])]);
    t.add_row(["ended".to_string(), ms(&v["endedAt"])]);
    println!("{t}");
    if let Some(actions) = v["report"]["actions"].as_object() {
        let mut a = table(["ACTION", "STATE", "HOSTS", "ERROR"]);
        for (name, r) in actions {
            a.add_row([
                name.clone(),
                s(&r["state"]),
                r["hosts"]
                    .as_array()
                    .map(|h| h.iter().map(s).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default(),
                s(&r["error"]),
            ]);
        }
        println!("{a}");
    }
}

/// `faultline schedules …`.
pub(super) fn schedules(c: &ClientArgs, action: SchedulesAction) -> anyhow::Result<u8> {
    let client = Client::new(&c.server, &c.api_token_file)?;
    block_on(async {
        let v = match action {
            SchedulesAction::List => {
                let v = client.json(Method::GET, "/api/v1/schedules", None).await?;
                if c.format == ReportFormat::Json {
                    return print_json(&v["schedules"]);
                }
                let mut t = table(["NAME", "TEMPLATE", "CRON", "TIMEZONE", "WINDOWS", "PAUSED", "NEXT RUN"]);
                for sc in v["schedules"].as_array().into_iter().flatten() {
                    let windows: Vec<String> = sc["windows"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|w| {
                            let days: Vec<String> = w["days"].as_array().into_iter().flatten().map(s).collect();
                            format!("{}/{}-{}", days.join(","), s(&w["start"]), s(&w["end"]))
                        })
                        .collect();
                    t.add_row([
                        s(&sc["name"]),
                        s(&sc["template"]),
                        s(&sc["cron"]),
                        s(&sc["timezone"]),
                        windows.join(" "),
                        s(&sc["paused"]),
                        s(&sc["nextRuns"][0]),
                    ]);
                }
                println!("{t}");
                return Ok(());
            }
            SchedulesAction::Add {
                name,
                template,
                cron,
                timezone,
                windows,
                min_interval,
                blackouts,
            } => {
                let windows = windows.iter().map(|w| window(w)).collect::<anyhow::Result<Vec<_>>>()?;
                let mut body = json!({ "name": name, "template": template, "cron": cron, "timezone": timezone, "windows": windows, "blackoutDates": blackouts });
                if let Some(m) = min_interval {
                    body["minInterval"] = json!(m);
                }
                client.json(Method::POST, "/api/v1/schedules", Some(&body)).await?
            }
            SchedulesAction::Pause { name } => {
                client
                    .json(Method::POST, &format!("/api/v1/schedules/{name}/pause"), None)
                    .await?
            }
            SchedulesAction::Resume { name } => {
                client
                    .json(Method::POST, &format!("/api/v1/schedules/{name}/resume"), None)
                    .await?
            }
            SchedulesAction::Remove { name } => {
                client
                    .call(Method::DELETE, &format!("/api/v1/schedules/{name}"), None)
                    .await?;
                println!("removed {name}");
                return Ok(());
            }
        };
        if c.format == ReportFormat::Json {
            return print_json(&v);
        }
        println!(
            "{}: {}; next runs: {}",
            s(&v["name"]),
            if v["paused"] == json!(true) { "paused" } else { "active" },
            v["nextRuns"]
                .as_array()
                .map(|n| n.iter().map(s).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        );
        Ok(())
    })?;
    Ok(exit::COMPLETED)
}

/// `Mon,Tue/09:00-17:00` as the API's window object.
fn window(w: &str) -> anyhow::Result<Value> {
    let bad = || {
        super::fail(
            exit::INVALID,
            anyhow!("--window {w:?}: expected DAYS/HH:MM-HH:MM, e.g. Mon,Fri/09:00-17:00"),
        )
    };
    let (days, hours) = w.split_once('/').ok_or_else(bad)?;
    let (start, end) = hours.split_once('-').ok_or_else(bad)?;
    Ok(json!({ "days": days.split(',').map(str::trim).collect::<Vec<_>>(), "start": start, "end": end }))
}

/// `faultline lever …`.
pub(super) fn lever(c: &ClientArgs, action: LeverAction) -> anyhow::Result<u8> {
    let client = Client::new(&c.server, &c.api_token_file)?;
    block_on(async {
        let v = match action {
            LeverAction::Engage { reason } => {
                let body = json!({ "engaged": true, "reason": reason });
                client.json(Method::PUT, "/api/v1/lever", Some(&body)).await?
            }
            LeverAction::Disengage { reason } => {
                let body = json!({ "engaged": false, "reason": reason });
                client.json(Method::PUT, "/api/v1/lever", Some(&body)).await?
            }
            LeverAction::Status => {
                let now = client.json(Method::GET, "/api/v1/lever", None).await?;
                let history = client.json(Method::GET, "/api/v1/lever/history", None).await?;
                if c.format == ReportFormat::Json {
                    return print_json(&json!({ "lever": now, "history": history["history"] }));
                }
                println!(
                    "lever: {}",
                    if now["engaged"] == json!(true) {
                        "ENGAGED"
                    } else {
                        "disengaged"
                    }
                );
                let mut t = table(["WHEN", "ENGAGED", "BY", "REASON"]);
                for h in history["history"].as_array().into_iter().flatten() {
                    t.add_row([
                        ms(&h["changedAt"]),
                        s(&h["engaged"]),
                        s(&h["changedBy"]),
                        s(&h["reason"]),
                    ]);
                }
                println!("{t}");
                return Ok(());
            }
        };
        if c.format == ReportFormat::Json {
            return print_json(&v);
        }
        println!(
            "lever: {} (by {}: {})",
            if v["engaged"] == json!(true) {
                "ENGAGED"
            } else {
                "disengaged"
            },
            s(&v["changedBy"]),
            s(&v["reason"])
        );
        Ok(())
    })?;
    Ok(exit::COMPLETED)
}

/// `faultline history`.
pub(super) fn history(c: &ClientArgs, limit: u32) -> anyhow::Result<u8> {
    let client = Client::new(&c.server, &c.api_token_file)?;
    block_on(async {
        let v = client
            .json(Method::GET, &format!("/api/v1/history?limit={limit}"), None)
            .await?;
        if c.format == ReportFormat::Json {
            return print_json(&v["history"]);
        }
        let mut t = table(["WHEN", "KIND", "WHAT", "STATE", "ID", "BY", "REASON"]);
        for h in v["history"].as_array().into_iter().flatten() {
            t.add_row([
                ms(&h["at"]),
                s(&h["kind"]),
                s(&h["what"]),
                s(&h["state"]),
                s(&h["id"]),
                s(&h["by"]),
                s(&h["reason"]),
            ]);
        }
        println!("{t}");
        Ok(())
    })?;
    Ok(exit::COMPLETED)
}

/// `faultline agents --server`: the server's hosts, as `faultline agents` shows its own.
pub(super) fn agents(server: &str, token_file: &Path, format: ReportFormat) -> anyhow::Result<u8> {
    let client = Client::new(server, token_file)?;
    let hosts = block_on(async {
        let v = client.json(Method::GET, "/api/v1/agents", None).await?;
        v["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                let host = json!({
                    "HostId": a["hostId"], "Placement": { "AvailabilityZone": a["availabilityZone"] },
                    "State": a["state"], "Tags": a["tags"], "Address": a["address"], "Agent": a["agent"],
                });
                serde_json::from_value(host)
                    .map_err(|e| anyhow!("{server} answered a host this client cannot read: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    super::agents::print(&hosts, format)?;
    Ok(exit::COMPLETED)
}

/// One journal line for people: time, event, then its plain fields.
fn event_line(line: &str) -> String {
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(line) else {
        return line.to_string();
    };
    let mut out = format!("{} {}", s(&m["ts"]), s(&m["event"]));
    for (k, v) in &m {
        if matches!(k.as_str(), "ts" | "event" | "experiment" | "datapoints") {
            continue;
        }
        match v {
            Value::Object(_) | Value::Array(_) | Value::Null => {}
            v => out.push_str(&format!(" {k}={}", s(v))),
        }
    }
    out
}

/// Waits until the server has `n` agents connected, up to `timeout`.
async fn wait_agents(client: &Client, n: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let v = client.json(Method::GET, "/api/v1/agents", None).await?;
        let connected = v["agents"].as_array().map_or(0, Vec::len);
        if connected >= n {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(super::fail(
                exit::FAILED,
                anyhow!(
                    "only {connected} of the {n} agents asked for are connected to {} after {}",
                    client.base,
                    faultline::duration::human(timeout)
                ),
            ));
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

/// Prints the journal lines of the experiment at `path` after the `seen` first.
async fn follow(client: &Client, path: &str, seen: &mut usize) -> anyhow::Result<()> {
    let (_, text) = client
        .call(Method::GET, &format!("{path}/journal?after={seen}"), None)
        .await?;
    for line in text.lines().filter(|l| !l.is_empty()) {
        // Scrapes of what the users saw come every period; the report sums them up.
        if !line.contains("\"event\":\"user_experience\"") {
            eprintln!("{}", event_line(line));
        }
        *seen += 1;
    }
    Ok(())
}

/// `s` percent-encoded as one path segment of a URL.
pub(super) fn segment(s: &str) -> String {
    let mut url = reqwest::Url::parse("http://segment/").expect("a valid URL");
    url.path_segments_mut().expect("a base URL").push(s);
    url.path()[1..].to_string()
}

/// `faultline run --server URL TEMPLATE`: submits, follows the journal, prints the report,
/// and exits as a local run would.
pub(super) fn run_remote(server: &str, args: &RunArgs) -> anyhow::Result<u8> {
    let client = Client::new(server, &args.api_token_file)?;
    let template = if args.template.is_file() {
        let text = std::fs::read_to_string(&args.template)
            .map_err(|e| super::fail(exit::INVALID, anyhow!("{}: {e}", args.template.display())))?;
        serde_json::from_str::<Value>(&text)
            .map_err(|e| super::fail(exit::INVALID, anyhow!("{}: not JSON: {e}", args.template.display())))?
    } else {
        json!(args.template.to_string_lossy())
    };
    block_on(async {
        if let Some(n) = args.controller.wait_agents {
            wait_agents(&client, n, args.controller.agents_timeout).await?;
        }
        let mut body = json!({ "template": template });
        if let Some(seed) = args.seed {
            body["seed"] = json!(seed);
        }
        // Ctrl-C, SIGTERM, SIGHUP or SIGQUIT stops the remote run as it would stop a local one.
        let mut signals = EndingSignals::install()
            .map_err(|e| super::fail(exit::FAILED, anyhow!("cannot watch for signals: {e}")))?;
        let started = client.json(Method::POST, "/api/v1/experiments", Some(&body)).await?;
        let id = s(&started["id"]);
        let exp = format!("/api/v1/experiments/{}", segment(&id));
        eprintln!("experiment {id} on {server}: {}", s(&started["state"]));
        let mut seen = 0usize;
        let mut interrupted = None;
        let until_end = format!("{exp}?wait={}", faultline::duration::format(FOLLOW_EVERY));
        let going = |row: &Value| {
            matches!(
                row["state"].as_str(),
                Some("pending" | "initiating" | "running" | "stopping")
            )
        };
        let row = loop {
            follow(&client, &exp, &mut seen).await?;
            // The server answers at the run's end, or after FOLLOW_EVERY: the journal is
            // printed that often and the end seen at once. A server that does not wait is
            // asked again no sooner.
            let asked = tokio::time::Instant::now();
            let polled = async {
                let row = client.json(Method::GET, &until_end, None).await?;
                if going(&row) {
                    tokio::time::sleep_until(asked + FOLLOW_EVERY).await;
                }
                anyhow::Ok(row)
            };
            let code = tokio::select! {
                row = polled => match row? {
                    row if going(&row) => continue,
                    row => break row,
                },
                Some(ending) = signals.next() => match ending {
                    Ending::Interrupt => exit::INTERRUPTED,
                    Ending::Terminate => exit::TERMINATED,
                },
            };
            if interrupted.replace(code).is_none() {
                eprintln!("stopping {id} on {server}; its faults are removed there");
                let reason = json!({ "reason": "interrupted from the CLI" });
                if let Err(e) = client.call(Method::POST, &format!("{exp}/stop"), Some(&reason)).await {
                    eprintln!("{e:#}");
                }
            }
        };
        // Lines written between the last read and the end.
        follow(&client, &exp, &mut seen).await?;
        if let Some(path) = &args.junit {
            let (_, xml) = client.call(Method::GET, &format!("{exp}/junit"), None).await?;
            std::fs::write(path, xml)
                .map_err(|e| super::fail(exit::FAILED, anyhow!("cannot write {}: {e}", path.display())))?;
        }
        match args.format {
            ReportFormat::Json => print_json(if row["report"].is_null() { &row } else { &row["report"] })?,
            ReportFormat::Table => show(&row),
        }
        if let (Some(code), Some("stopped")) = (interrupted, row["state"].as_str()) {
            return Ok(code);
        }
        let code = row["report"]["exitCode"]
            .as_u64()
            .map(|c| c as u8)
            .unwrap_or(match row["state"].as_str() {
                Some("completed") => exit::COMPLETED,
                Some("stopped") => exit::STOPPED,
                _ => exit::FAILED,
            });
        Ok(code)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_id_is_one_path_segment() {
        assert_eq!(super::segment("EXP123"), "EXP123");
        assert_eq!(super::segment("a/b c?#"), "a%2Fb%20c%3F%23");
    }
}
