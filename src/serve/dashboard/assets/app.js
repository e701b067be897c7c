// The faultline dashboard: plain DOM, no framework. The API token lives in sessionStorage
// (gone with the tab) and goes out only as a bearer header to this origin.
"use strict";
const KEY = "faultline-token";
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let stream = null;

function el(tag, attrs, ...kids) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k != null) e.append(k);
  return e;
}

// States are shown as words with an icon, never by colour alone.
const ICON = { running: "▶", stopping: "■", completed: "✔", stopped: "■", failed: "✖", cancelled: "⦸",
  pending: "…", skipped: "↷", disconnected: "⚠", terminated: "✖", "shutting-down": "✖" };
function stateLabel(state) {
  return el("span", { class: "state state-" + state, "data-state": state, text: (ICON[state] || "•") + " " + state });
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + sessionStorage.getItem(KEY) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (r.status === 401) { logout("The token was refused."); throw new Error("unauthorized"); }
  return r;
}

// Tells the user what the server refused (a 409 of Stop or the lever, a file not there).
async function refused(r, what) {
  let why = "HTTP " + r.status;
  try { why = (await r.json()).error || why; } catch (_) { /* not JSON */ }
  notify(what + ": " + why);
}

function notify(text) {
  const n = $("notice");
  n.textContent = text;
  n.hidden = !text;
}

function logout(why) {
  sessionStorage.removeItem(KEY);
  if (stream) stream.abort();
  for (const id of ["home", "experiment", "lever", "logout"]) $(id).hidden = true;
  $("login").hidden = false;
  $("live").textContent = "not connected";
  $("login-error").textContent = why || "";
  $("token").focus();
}

async function login(ev) {
  ev.preventDefault();
  sessionStorage.setItem(KEY, $("token").value.trim());
  $("token").value = "";
  try {
    const r = await api("GET", "/api/v1/lever");
    if (r.ok) start();
  } catch (_) { /* logout() said why */ }
}

function start() {
  $("login").hidden = true;
  $("logout").hidden = false;
  const m = location.pathname.match(/^\/experiments\/([^/]+)$/);
  let id = null;
  if (m) {
    try { id = decodeURIComponent(m[1]); } catch (_) { notify("The address does not name an experiment: " + m[1]); }
  }
  if (id) {
    $("experiment").hidden = false;
    $("exp-id").textContent = id;
    live(id);
  } else {
    $("home").hidden = false;
    loadRuns();
    loadSchedules();
    live(null);
  }
}

// Server-sent events read through fetch, so the token travels as a header, not in the URL.
async function live(experiment) {
  let running = "";
  for (;;) {
    stream = new AbortController();
    try {
      const r = await api("GET", "/api/v1/events" + (experiment ? "?experiment=" + encodeURIComponent(experiment) : ""));
      if (!r.ok) throw new Error("HTTP " + r.status);
      $("live").textContent = "live";
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
          if (!data || !block.includes("event: snapshot")) continue;
          const snap = JSON.parse(data);
          renderLever(snap.lever);
          if (experiment) renderExperiment(snap.experiment);
          else {
            renderMap(snap.map);
            const now = snap.running.join(",");
            if (now !== running) { running = now; loadRuns(); loadSchedules(); }
          }
        }
      }
    } catch (e) {
      if (!sessionStorage.getItem(KEY)) return;
    }
    $("live").textContent = "reconnecting…";
    await new Promise((ok) => setTimeout(ok, 2000));
  }
}

function human(ms) {
  if (ms == null) return "–";
  const s = Math.round(ms / 1000);
  return s >= 60 ? Math.floor(s / 60) + "m " + (s % 60) + "s" : s + "s";
}

function renderMap(map) {
  const root = $("map");
  root.replaceChildren(...map.azs.map((az) => el("section", { class: "az", "data-az": az.name, "aria-label": "Availability zone " + az.name },
    el("h2", { text: az.name }),
    ...az.hosts.map((h) => {
      const faults = h.faults.map((f) => {
        const params = Object.entries(f.parameters || {}).map(([k, v]) => k + "=" + (typeof v === "object" ? JSON.stringify(v) : v)).join(", ");
        const left = f.timeLeftMs == null ? "" : ", " + human(f.timeLeftMs) + " left";
        return el("li", { class: "fault", "data-kind": f.kind },
          el("strong", { text: "⚡ " + f.kind }), " " + params + left + " ",
          el("a", { href: "/experiments/" + encodeURIComponent(f.experiment), text: f.experiment + "/" + f.action }));
      });
      return el("article", { class: "host " + h.state + (h.faults.length ? " faulted" : ""), "data-host": h.hostId, tabindex: "0" },
        el("h3", { text: h.hostId }), stateLabel(h.state),
        faults.length ? el("ul", { "aria-label": "faults in effect" }, ...faults) : el("p", { text: "no fault" }));
    }))));
}

async function loadRuns() {
  const state = $("runs-filter").value;
  const r = await api("GET", "/api/v1/experiments" + (state ? "?state=" + state : ""));
  if (!r.ok) return;
  const { experiments } = await r.json();
  $("runs").tBodies[0].replaceChildren(...experiments.map((e) => {
    const id = e.id;
    const rec = e.recoveryMs;
    const files = el("span", {},
      fileLink("report", "/api/v1/experiments/" + encodeURIComponent(id) + "/report?format=html", id + ".html"), " ",
      fileLink("journal", "/api/v1/experiments/" + encodeURIComponent(id) + "/journal", id + ".jsonl"), " ",
      fileLink("JUnit", "/api/v1/experiments/" + encodeURIComponent(id) + "/junit", id + ".xml"));
    return el("tr", { "data-id": id },
      el("td", {}, el("a", { href: "/experiments/" + encodeURIComponent(id), text: id })),
      el("td", { text: e.templateName ? e.templateName + "@v" + e.templateVersion : "inline" }),
      el("td", {}, stateLabel(e.state), e.reason ? " " + e.reason : ""),
      el("td", { text: new Date(e.createdAt).toISOString().replace("T", " ").slice(0, 19) }),
      el("td", { text: e.endedAt ? human(e.endedAt - e.createdAt) : "–" }),
      el("td", { text: rec == null ? "–" : human(rec) }),
      el("td", {}, files));
  }));
}

// The files need the token too: fetched, then saved from a blob. Saved, not opened in a tab:
// a blob opened here inherits this page's CSP, which would strip the report's inline style.
function fileLink(label, path, name) {
  return el("button", { type: "button", class: "link", text: label, onclick: async () => {
    const r = await api("GET", path);
    if (!r.ok) return refused(r, label + " of " + name.replace(/\.[a-z]+$/, ""));
    const url = URL.createObjectURL(await r.blob());
    const a = el("a", { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } });
}

async function loadSchedules() {
  const r = await api("GET", "/api/v1/schedules");
  if (!r.ok) return;
  const { schedules } = await r.json();
  $("schedules").tBodies[0].replaceChildren(...schedules.map((s) => el("tr", {},
    el("td", { text: s.name }), el("td", { text: s.template }), el("td", { text: s.cron + " (" + s.timezone + ")" }),
    el("td", { text: s.paused ? "⏸ paused" : "▶ enabled" }),
    el("td", { text: (s.nextRuns || []).join(", ") || "–" }))));
}

function renderLever(lever) {
  const engaged = !!(lever && lever.engaged);
  const box = $("lever");
  box.hidden = false;
  box.replaceChildren(
    el("span", { "data-engaged": String(engaged), text: engaged ? "⛔ Safety lever ENGAGED: " + lever.reason : "Safety lever: off" }), " ",
    el("button", { type: "button", class: engaged ? "" : "danger", text: engaged ? "Disengage lever" : "Engage lever",
      onclick: () => confirmThen(engaged ? "Disengage the safety lever? New experiments may start again."
        : "Engage the safety lever? Every running experiment stops and new ones are refused.",
      async (reason) => {
        const r = await api("PUT", "/api/v1/lever", { engaged: !engaged, reason: reason || "from the dashboard" });
        if (!r.ok) refused(r, "The lever");
      }) }));
}

function confirmThen(text, action) {
  const d = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-reason").value = "";
  d.onclose = () => { if (d.returnValue === "yes") action($("confirm-reason").value.trim()); };
  d.showModal();
}

let shown = null;
function renderExperiment(e) {
  if (!e) { $("exp-summary").textContent = "No such experiment."; return; }
  shown = e;
  $("exp-summary").textContent = (e.description || "") + (e.template ? " — " + e.template : "") + " — started by " + e.createdBy;
  $("exp-state").replaceChildren(stateLabel(e.state));
  $("exp-reason").textContent = e.reason || "";
  $("stop").hidden = !["running", "pending"].includes(e.state);
  const links = $("exp-links");
  if (!links.childElementCount) links.append(
    fileLink("report", "/api/v1/experiments/" + e.id + "/report?format=html"), " ",
    fileLink("journal", "/api/v1/experiments/" + e.id + "/journal"), " ",
    fileLink("JUnit", "/api/v1/experiments/" + e.id + "/junit"));
  const end = e.end || e.now;
  const span = Math.max(end - e.start, 1000);
  const W = 900, rowH = 28, left = 170;
  // Room on the right for the last bar's state label.
  const x = (t) => left + ((t - e.start) / span) * (W - left - 120);
  const svg = el("svg:svg", { viewBox: "0 0 " + W + " " + (e.actions.length * rowH + 24), role: "img", "aria-label": "Action timeline", width: "100%" });
  e.actions.forEach((a, i) => {
    const y = i * rowH + 4;
    const s = a.start == null ? null : x(a.start);
    const f = a.start == null ? null : x(a.end == null ? end : a.end);
    const g = el("svg:g", { class: "action", "data-action": a.name, "data-state": a.state });
    g.append(el("svg:text", { x: 0, y: y + 16, text: a.name }));
    if (s != null) g.append(el("svg:rect", { class: "bar-" + a.state, x: s, y, width: Math.max(f - s, 2), height: rowH - 8 }));
    g.append(el("svg:text", { x: (s == null ? left : f) + 6, y: y + 16, text: (ICON[a.state] || "") + " " + a.state }));
    svg.append(g);
  });
  svg.append(el("svg:text", { x: left, y: e.actions.length * rowH + 20, text: "0s" }),
    el("svg:text", { x: W - 60, y: e.actions.length * rowH + 20, text: human(span) }));
  $("timeline").replaceChildren(svg);
  $("alarms").replaceChildren(...(e.alarms.length ? e.alarms.map((a) => alarmChart(a, e.start, span)) : [el("p", { text: "No alarm." })]));
}

function alarmChart(a, t0, span) {
  const W = 900, H = 160, pad = 30;
  const values = a.points.map((p) => p.value).filter((v) => v != null);
  const top = Math.max(a.threshold * 1.5, ...values, 1e-9);
  const x = (t) => pad + ((t - t0) / span) * (W - 2 * pad);
  const y = (v) => H - pad - (v / top) * (H - 2 * pad);
  const pts = a.points.filter((p) => p.value != null).map((p) => x(p.t).toFixed(1) + "," + y(p.value).toFixed(1)).join(" ");
  const last = a.points.length ? a.points[a.points.length - 1] : null;
  const svg = el("svg:svg", { viewBox: "0 0 " + W + " " + H, width: "100%", role: "img",
    "aria-label": a.name + ": " + a.points.length + " datapoints against threshold " + a.threshold });
  svg.append(el("svg:line", { class: "threshold", x1: pad, x2: W - pad, y1: y(a.threshold), y2: y(a.threshold) }),
    el("svg:text", { x: W - pad - 150, y: y(a.threshold) - 4, text: "threshold " + a.threshold }),
    el("svg:polyline", { class: "series", points: pts }));
  for (const p of a.points.filter((p) => p.value != null)) svg.append(el("svg:circle", { cx: x(p.t), cy: y(p.value), r: 3, class: "series" }));
  return el("figure", { class: "alarm", "data-alarm": a.name, "data-points": String(a.points.length) },
    el("figcaption", {}, el("strong", { text: a.name }), " (" + a.comparison + " " + a.threshold + ") — " +
      (last ? "last: " + (last.value == null ? "missing" : last.value) + ", " + last.state : "no datapoint yet")), svg);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout(""));
  $("runs-filter").addEventListener("change", loadRuns);
  $("stop").addEventListener("click", () => confirmThen("Stop experiment " + shown.id + "? Every fault it applied is removed.",
    async (reason) => {
      const r = await api("POST", "/api/v1/experiments/" + encodeURIComponent(shown.id) + "/stop", reason ? { reason } : {});
      if (!r.ok) refused(r, "Stop");
    }));
  if (sessionStorage.getItem(KEY)) start(); else logout("");
  document.body.dataset.ready = "true";
});
