// The web dashboard: GET / is one self-contained page (inline CSS and script, no external assets,
// no build step) that reads the JSON API and refreshes itself. Read-only: it needs the API token
// only when the server requires it for reads (--api-auth all); then it takes it once from
// `/?token=…` (and drops it from the address bar) or from a form, and keeps it in the browser.
// Data is inserted with textContent only: names and event details never become markup.
import { Hono } from "hono";
import { progressText } from "../contract/report.ts";
import type { Context } from "./context.ts";

const page = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>netroot</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
  h1 { font-size: 1.3em; margin: 0 0 .2em; }
  h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: .25em .7em .25em 0; border-bottom: 1px solid #ddd;
    vertical-align: top; }
  th { font-weight: 600; color: #555; }
  td.mono, .mono { font-family: ui-monospace, monospace; font-size: 13px; }
  a { color: #0645ad; cursor: pointer; }
  #status { color: #777; font-size: 12px; }
  #status.error { color: #b00; }
  tr.selected { background: #eef3ff; }
  td.time { white-space: nowrap; }
  .muted { color: #888; }
</style>
</head>
<body>
<h1>netroot</h1>
<div id="status">loading…</div>
<form id="login" hidden>The API needs its token (the file <span class="mono">token</span> in the
server's data dir): <input id="login-token" type="password" size="40" autocomplete="off">
<button>use</button></form>
<h2>Nodes</h2>
<table id="nodes"><thead><tr><th>name</th><th>mac</th><th>ip</th><th>image</th><th>state</th>
<th>virtual</th><th>last event</th></tr></thead><tbody></tbody></table>
<h2>Images</h2>
<table id="images"><thead><tr><th>name</th><th>id</th><th>size</th><th>bootable</th>
<th>created</th></tr></thead><tbody></tbody></table>
<section id="timeline" hidden>
<h2>Timeline of <span id="timeline-node"></span> <a id="timeline-close">(close)</a></h2>
<table><thead><tr><th>time</th><th>event</th><th>detail</th></tr></thead><tbody></tbody></table>
</section>
<script>
"use strict";
const api = "/api/v1";
let names = {};
let selected = decodeURIComponent((location.hash.match(/node=([^&]+)/) || [])[1] || "");
// A copy's progress as one line: the function netroot node log uses (contract/report.ts).
const progressText = ${progressText};
const tokenKey = "netroot-api-token";
const given = new URLSearchParams(location.search).get("token");
if (given) {
  localStorage.setItem(tokenKey, given);
  history.replaceState(null, "", location.pathname + location.hash);
}
document.getElementById("login").onsubmit = (ev) => {
  ev.preventDefault();
  localStorage.setItem(tokenKey, document.getElementById("login-token").value.trim());
  refresh();
};

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function fill(tbody, rows) { tbody.replaceChildren(...rows); }
function when(ts) { return ts ? new Date(ts).toLocaleString() : "-"; }
function size(n) {
  if (typeof n !== "number") return "-";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
async function get(path) {
  const token = localStorage.getItem(tokenKey);
  const headers = { accept: "application/json" };
  if (token) headers.authorization = "Bearer " + token;
  const res = await fetch(api + path, { headers });
  document.getElementById("login").hidden = res.status !== 401;
  if (res.status === 401) throw new Error("the API needs its token (form above)");
  if (!res.ok) throw new Error(path + ": HTTP " + res.status);
  return res.json();
}

function renderNodes(nodes) {
  names = Object.fromEntries(nodes.map((n) => [n.mac, n.name]));
  fill(document.querySelector("#nodes tbody"), nodes.length ? nodes.map((n) => {
    const tr = el("tr");
    tr.dataset.mac = n.mac;
    if (n.mac === selected) tr.className = "selected";
    const name = el("td"); const a = el("a", n.name); a.className = "node-name";
    a.onclick = () => select(n.mac); name.append(a);
    const last = n.lastEvent ? n.lastEvent.kind + " (" + when(n.lastEvent.ts) + ")" : "-";
    const state = el("td", (n.state || "off") + (n.stateSince ? " (" + when(n.stateSince) + ")" : ""));
    state.className = "state-" + (n.state || "off");
    if (n.stateReason) state.title = n.stateReason;
    tr.append(name, el("td", n.mac, "mono"), el("td", n.ip || "-", "mono"),
      el("td", n.imageName || n.imageId || "-"), state, el("td", n.virtual ? "yes" : "no"),
      el("td", last));
    return tr;
  }) : [Object.assign(el("tr"), { innerHTML: '<td colspan="7" class="muted">no nodes</td>' })]);
}

function renderImages(images) {
  fill(document.querySelector("#images tbody"), images.length ? images.map((i) => {
    const tr = el("tr");
    const boot = i.bootable ? "yes" : "no" + (i.reason ? " (" + i.reason + ")" : "");
    tr.append(el("td", i.name), el("td", String(i.id).slice(0, 12), "mono"), el("td", size(i.size)),
      el("td", boot), el("td", when(i.createdAt || i.created_at)));
    return tr;
  }) : [Object.assign(el("tr"), { innerHTML: '<td colspan="5" class="muted">no images</td>' })]);
}

async function renderTimeline() {
  const section = document.getElementById("timeline");
  if (!selected) { section.hidden = true; return; }
  const events = await get("/events?mac=" + encodeURIComponent(selected) + "&limit=500");
  document.getElementById("timeline-node").textContent =
    names[selected] ? names[selected] + " (" + selected + ")" : selected;
  fill(section.querySelector("tbody"), events.slice().reverse().map((e) => {
    const tr = el("tr");
    const d = e.detail || {};
    tr.append(el("td", when(e.ts), "time"), el("td", e.kind),
      el("td", progressText(d) ?? (Object.keys(d).length ? JSON.stringify(d) : ""), "mono"));
    return tr;
  }));
  section.hidden = false;
}

function select(mac) {
  selected = mac;
  history.replaceState(null, "", mac ? "#node=" + encodeURIComponent(mac) : "#");
  refresh();
}
document.getElementById("timeline-close").onclick = () => select("");

let timer;
async function refresh() {
  clearTimeout(timer);
  const status = document.getElementById("status");
  try {
    const [nodes, imgs] = await Promise.all([get("/nodes"), get("/images")]);
    const images = Array.isArray(imgs) ? imgs : imgs.images || [];
    renderNodes(nodes);
    renderImages(images);
    await renderTimeline();
    status.className = "";
    status.textContent = nodes.length + " nodes, " + images.length + " images — updated " +
      new Date().toLocaleTimeString();
  } catch (e) {
    status.className = "error";
    status.textContent = "cannot reach the API: " + e.message;
  }
  timer = setTimeout(refresh, 3000);
}
refresh();
</script>
</body>
</html>
`;

export function dashboardRoutes(_ctx: Context): Hono {
  const app = new Hono();
  app.get("/", (c) => c.html(page));
  return app;
}
