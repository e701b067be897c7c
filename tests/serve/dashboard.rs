//! The dashboard in a real browser: `faultline serve` with loopback agents, a finished run
//! and a running one; headless Chromium (Debian's `chromium`, installed by
//! scripts/chromium.sh) driven over the DevTools protocol logs in, reads the map and the
//! experiment, and stops the run. Screenshots are kept in target/dashboard-screenshots/.

use crate::common;

use base64::Engine;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(30);

fn chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FAULTLINE_CHROMIUM") {
        return Some(p.into());
    }
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH")
            .and_then(|path| std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file()))
    })
}

/// One HTTP/1.1 exchange with the server: status and body.
fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(T)).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::String(body.into())))
}

/// Polls `get` until `done` holds, or panics saying `what`.
fn until(what: &str, mut get: impl FnMut() -> Value, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let v = get();
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: still {v}");
        // The server's state is what is waited on; this only paces the polling.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A DevTools protocol session with one page.
struct Cdp {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next: u64,
    session: Option<String>,
}

impl Cdp {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let mut msg = json!({ "id": self.next, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let frame = tokio::time::timeout(T, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer"))
                .expect("the browser closed the connection")
                .unwrap();
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["id"] == self.next {
                assert!(v["error"].is_null(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page (awaiting a promise), by value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        assert!(r["exceptionDetails"].is_null(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Waits until `expr` is truthy in the page.
    async fn wait(&mut self, what: &str, expr: &str) {
        let deadline = Instant::now() + T;
        loop {
            // Before the page has loaded, the elements are not there yet.
            let v = self
                .eval(&format!(
                    "(() => {{ try {{ return !!({expr}); }} catch (_) {{ return false; }} }})()"
                ))
                .await;
            if v == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let body = self.eval("document.body.innerText").await;
                panic!("{what}: `{expr}` never held; the page shows:\n{body}");
            }
            // The page updates itself from the live stream; this only paces the checks.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&mut self, name: &str) {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
    }
}

fn cpu_with_alarm(host: &str, seconds: u32, port: u16) -> Value {
    let mut t = single_action(
        host,
        "faultline:host:cpu-stress",
        json!({ "duration": format!("PT{seconds}S"), "loadPercent": "20", "workers": "1" }),
    );
    t["description"] = json!("dashboard drill");
    t["stopConditions"] = json!([{ "source": "faultline:alarm", "value": "Health" }]);
    t["alarms"] = json!({ "Health": {
        "metric": { "http": { "url": format!("http://127.0.0.1:{port}/healthz"), "timeout": "PT1S", "probesPerPeriod": 2 },
                    "statistic": "errorRate" },
        "threshold": 0.5, "comparisonOperator": "GreaterThanThreshold",
        "period": "PT1S", "evaluationPeriods": 3, "datapointsToAlarm": 2, "treatMissingData": "notBreaching"
    }});
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_map_and_an_experiment_and_stops_it() {
    let Some(browser) = chromium() else {
        assert!(
            !required(),
            "CI=true: chromium is required (scripts/chromium.sh installs it)"
        );
        eprintln!("SKIPPED: the dashboard test needs Chromium; run scripts/chromium.sh");
        return;
    };
    agent_bin();
    let s = Scratch::new("dashboard");
    let mut cmd = Command::new(FAULTLINE);
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--database")
        .arg(format!("sqlite:{}", s.path("faultline.db").display()))
        .arg("--token-file")
        .arg(s.path("token"))
        .arg("--api-token-file")
        .arg(s.path("api-token"))
        .arg("--journals")
        .arg(s.path("journals"))
        .current_dir(&s.0);
    let mut srv = Proc::spawn("serve", cmd);
    let port = srv.listen_port("serving the API");
    let token = std::fs::read_to_string(s.path("api-token")).unwrap().trim().to_string();
    let call = |method: &str, path: &str, body: Option<Value>| http(port, method, path, Some(&token), body.as_ref());
    let _a = agent(&s, port, "web-a1", "az-a", &[]);
    let _b = agent(&s, port, "web-b1", "az-b", &[]);
    until(
        "two agents",
        || call("GET", "/api/v1/agents", None).1,
        |v| v["agents"].as_array().is_some_and(|a| a.len() == 2),
    );
    assert_eq!(
        http(port, "GET", "/api/v1/events", None, None).0,
        401,
        "no live stream without a token"
    );

    // History: a short run that completed.
    call(
        "PUT",
        "/api/v1/templates/quick",
        Some(cpu_with_alarm("web-b1", 1, port)),
    );
    let (_, v) = call("POST", "/api/v1/experiments", Some(json!({ "template": "quick" })));
    let done = v["id"].as_str().unwrap().to_string();
    until(
        "the short run's end",
        || call("GET", &format!("/api/v1/experiments/{done}"), None).1,
        |v| v["state"] == "completed",
    );
    // The running game day.
    call(
        "PUT",
        "/api/v1/templates/drill",
        Some(cpu_with_alarm("web-a1", 120, port)),
    );
    let (_, v) = call("POST", "/api/v1/experiments", Some(json!({ "template": "drill" })));
    let id = v["id"].as_str().unwrap().to_string();
    until(
        "the fault on web-a1",
        || json!(state_files(&s, "web-a1").len()),
        |n| n != &json!(0),
    );

    let profile = s.path("chromium");
    let mut chrome = Command::new(&browser);
    chrome
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-port=0",
        ])
        .args(["--window-size=1280,800", "--disable-dev-shm-usage"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank");
    let mut chrome = Proc::spawn("chromium", chrome);
    let line = chrome.expect("DevTools listening on", T);
    let url = line.split("listening on ").nth(1).unwrap().trim().to_string();
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    let mut cdp = Cdp {
        ws,
        next: 0,
        session: None,
    };
    let target = cdp.call("Target.createTarget", json!({ "url": "about:blank" })).await;
    let attached = cdp
        .call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        )
        .await;
    cdp.session = attached["sessionId"].as_str().map(str::to_string);
    cdp.call("Page.enable", json!({})).await;
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false }),
    )
    .await;
    let base = format!("http://127.0.0.1:{port}");

    // Nothing shows without a token; a wrong one is refused.
    cdp.goto(&format!("{base}/")).await;
    cdp.wait(
        "the login form",
        "document.body.dataset.ready && !document.getElementById('login').hidden && document.getElementById('home').hidden",
    )
        .await;
    cdp.eval("document.getElementById('token').value = 'wrong'; document.getElementById('login').requestSubmit()")
        .await;
    cdp.wait(
        "the refusal",
        "document.getElementById('login-error').textContent.includes('refused')",
    )
    .await;
    cdp.screenshot("login").await;
    cdp.eval(&format!(
        "document.getElementById('token').value = {}; document.getElementById('login').requestSubmit()",
        json!(token)
    ))
    .await;

    // The map: AZs as columns, hosts with their state, the fault in effect on web-a1.
    cdp.wait(
        "the map",
        "document.querySelector('[data-az=\"az-a\"] [data-host=\"web-a1\"] .fault[data-kind=\"cpu\"]') \
         && document.querySelector('[data-az=\"az-b\"] [data-host=\"web-b1\"] [data-state=\"running\"]')",
    )
    .await;
    let map = cdp
        .eval("[...document.querySelectorAll('[data-az]')].map(az => [az.dataset.az, [...az.querySelectorAll('[data-host]')].map(h => h.dataset.host + ':' + h.querySelector('[data-state]').dataset.state + ':' + h.querySelectorAll('.fault').length)])")
        .await;
    assert_eq!(
        map,
        json!([["az-a", ["web-a1:running:1"]], ["az-b", ["web-b1:running:0"]]])
    );
    let fault = cdp
        .eval("document.querySelector('[data-host=\"web-a1\"] .fault').innerText")
        .await;
    let fault = fault.as_str().unwrap();
    assert!(
        fault.contains("load_percent=20") && fault.contains("left") && fault.contains(&id),
        "{fault}"
    );
    // History: the finished run with its outcome, the running one.
    cdp.wait(
        "the runs",
        &format!(
            "document.querySelector('#runs tr[data-id=\"{done}\"] [data-state=\"completed\"]') \
             && document.querySelector('#runs tr[data-id=\"{id}\"] [data-state=\"running\"]')"
        ),
    )
    .await;
    // The finished run shows its time to recover (its alarm was watched after the action).
    let recovery = cdp
        .eval(&format!(
            "document.querySelector('#runs tr[data-id=\"{done}\"]').cells[5].textContent"
        ))
        .await;
    assert!(
        recovery
            .as_str()
            .is_some_and(|r| r != "–" && r.chars().any(|c| c.is_ascii_digit())),
        "the Recovery column of the finished run: {recovery}"
    );
    assert_eq!(
        cdp.eval("getComputedStyle(document.getElementById('login')).display")
            .await,
        json!("none"),
        "signed in, the form is gone"
    );
    // Keyboard: the cards take the focus in turn.
    cdp.eval("document.querySelector('[data-host=\"web-a1\"]').focus()")
        .await;
    assert_eq!(cdp.eval("document.activeElement.dataset.host").await, json!("web-a1"));
    cdp.screenshot("map").await;

    // The experiment: its action running as a bar, its alarm's datapoints, then Stop.
    cdp.goto(&format!("{base}/experiments/{id}")).await;
    cdp.wait(
        "the experiment",
        "document.querySelector('#timeline [data-action=\"A\"][data-state=\"running\"] rect') \
         && Number(document.querySelector('figure[data-alarm=\"Health\"]')?.dataset.points) >= 2 \
         && document.querySelector('#exp-state [data-state=\"running\"]')",
    )
    .await;
    cdp.screenshot("experiment").await;
    cdp.eval("document.getElementById('stop').click()").await;
    cdp.wait("the confirmation", "document.getElementById('confirm').open")
        .await;
    cdp.screenshot("confirm").await;
    cdp.eval("document.getElementById('confirm-reason').value = 'dashboard test'; document.getElementById('confirm-yes').click()")
        .await;
    cdp.wait(
        "the run stopped",
        "document.querySelector('#exp-state [data-state=\"stopped\"]') \
         && document.querySelector('#timeline [data-action=\"A\"][data-state=\"stopped\"]')",
    )
    .await;
    cdp.screenshot("stopped").await;
    let (_, e) = call("GET", &format!("/api/v1/experiments/{id}"), None);
    assert_eq!(e["state"], "stopped", "{e}");
    assert_eq!(e["reason"], "stopped by token-1: dashboard test", "{e}");
    assert!(state_files(&s, "web-a1").is_empty(), "the fault is removed");
    let reason = cdp.eval("document.getElementById('exp-reason').textContent").await;
    assert_eq!(reason, json!("stopped by token-1: dashboard test"));

    let (status, report) = call("GET", &format!("/api/v1/experiments/{id}/report?format=json"), None);
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["state"], "stopped", "{report}");
    let (status, html) = call("GET", &format!("/api/v1/experiments/{id}/report?format=html"), None);
    let html = html.as_str().unwrap_or_default().to_string();
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains(&id) && html.contains("dashboard test"),
        "the game-day report names the run and why it stopped: {html}"
    );
    drop(chrome);
    srv.signal(libc::SIGTERM);
    let (status, _, lines) = srv.finish(T);
    assert!(status.success(), "{}", lines.join("\n"));
}
