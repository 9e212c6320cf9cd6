// The web dashboard, where an admin works from: GET / is one page, its script and style served
// beside it (/dashboard.js, /dashboard.css: no external assets, no build step, nothing to fetch
// in an air-gapped lab). The page holds no data; its script reads and acts only through the REST
// API (/api/v1), as the CLI does: the node list (state and its age, image, address, last boot),
// a node page (facts, live timeline over server-sent events, console, settings), images with their
// versions, and actions (deploy, reboot, power, settings).
//
// Auth is the API's: reads are open unless --api-auth all; actions (and the console) need the
// token, given once in the login form and then carried by a session cookie (src/session.ts).
// Everything shown is untrusted (node names, settings, event details, console text): the script
// inserts it with textContent only (no innerHTML anywhere), and the Content-Security-Policy allows
// no inline script, so injected markup could not run even if it got into the page.
import { Hono } from "hono";
import { progressText } from "../contract/report.ts";
import type { Context } from "./context.ts";
import { nodeText, nodeTextReady } from "./nodetext.ts";

const page = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>netroot</title>
<link rel="stylesheet" href="/dashboard.css">
<script src="/dashboard.js" defer></script>
</head>
<body>
<header>
  <h1><a href="#/">netroot</a></h1>
  <nav><a href="#/">nodes &amp; images</a></nav>
  <span id="who"></span>
  <button id="logout" type="button" hidden>log out</button>
</header>
<div id="status">loading…</div>
<form id="login" hidden>
  <label>API token (the file <span class="mono">token</span> in the server's data dir):
  <input id="login-token" name="token" type="password" size="40" autocomplete="off"></label>
  <button>log in</button> <span id="login-error" class="error"></span>
</form>
<main>
<section id="page-list" hidden>
  <h2>Nodes</h2>
  <div class="actions needs-write" hidden>selected nodes:
    <select id="bulk-image"></select> <button id="bulk-deploy" type="button">deploy &amp; reboot</button>
    <button id="bulk-reboot" type="button">reboot</button>
  </div>
  <div id="bulk-result" class="result"></div>
  <table id="nodes"><thead><tr><th class="needs-write" hidden></th><th>name</th><th>state</th>
  <th>image</th><th>address</th><th>last boot</th><th>last event</th></tr></thead>
  <tbody></tbody></table>
  <h2>Images</h2>
  <table id="images"><thead><tr><th>name</th><th>versions</th><th>bootable</th><th>kernel</th>
  <th>nodes</th></tr></thead><tbody></tbody></table>
</section>
<section id="page-node" hidden>
  <h2>Node <span id="node-name"></span> <span id="node-state"></span></h2>
  <table id="node-facts" class="facts"><tbody></tbody></table>
  <div class="actions needs-write" hidden>
    <select id="node-image"></select> <button id="act-deploy" type="button">deploy &amp; reboot</button>
    <button id="act-reboot" type="button">reboot</button>
    <button class="act-power" data-action="on" type="button">power on</button>
    <button class="act-power" data-action="off" type="button">power off</button>
    <button class="act-power" data-action="cycle" type="button">power cycle</button>
    <button class="act-power" data-action="status" type="button">power status</button>
  </div>
  <p class="needs-login muted" hidden>Log in with the API token to act on this node.</p>
  <div id="action-result" class="result"></div>
  <h3>Settings</h3>
  <table id="settings"><thead><tr><th>key</th><th>value</th><th class="needs-write" hidden></th>
  </tr></thead><tbody></tbody></table>
  <form id="setting-add" class="needs-write" hidden><input id="setting-key" placeholder="key"
  size="20"> = <input id="setting-value" placeholder="value" size="40"> <button>set</button></form>
  <h3>Timeline <span id="live" class="muted"></span></h3>
  <table id="timeline"><thead><tr><th>time</th><th>event</th><th>detail</th></tr></thead>
  <tbody></tbody></table>
  <h3>Console</h3>
  <pre id="console" class="console"></pre>
</section>
</main>
</body>
</html>
`;

const style = `
[hidden] { display: none !important; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5em 1.5em; color: #222; }
header { display: flex; gap: 1.2em; align-items: baseline; border-bottom: 1px solid #ddd;
  padding: .6em 0; margin-bottom: .4em; }
header #who { margin-left: auto; color: #555; }
h1 { font-size: 1.3em; margin: 0; } h1 a { color: inherit; text-decoration: none; }
h2 { font-size: 1.15em; margin: 1.2em 0 .4em; } h3 { font-size: 1em; margin: 1.2em 0 .3em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25em .7em .25em 0; border-bottom: 1px solid #e4e4e4;
  vertical-align: top; }
th { font-weight: 600; color: #555; }
table.facts { width: auto; } table.facts th { padding-right: 1.5em; }
.mono, td.detail { font-family: ui-monospace, monospace; font-size: 13px; }
td.detail { word-break: break-all; }
a { color: #0645ad; }
#status { color: #777; font-size: 12px; min-height: 1.4em; }
#status.error, .error { color: #b00; }
.result { min-height: 1.3em; font-size: 13px; color: #333; margin: .3em 0; }
.result.error { color: #b00; }
.actions { margin: .5em 0; display: flex; gap: .4em; flex-wrap: wrap; align-items: center; }
td.time { white-space: nowrap; }
.muted { color: #888; }
.state { padding: 0 .45em; border-radius: 3px; font-size: 12px; white-space: nowrap; }
.state-off { background: #eee; } .state-booting { background: #fff3c4; }
.state-booted { background: #d6f5d6; } .state-down { background: #ffe0b3; }
.state-failed { background: #ffc9c9; }
.auto-registered { padding: 0 .45em; border-radius: 3px; font-size: 12px; background: #ffe0b3;
  cursor: help; }
#live.on { color: #080; }
pre.console { background: #111; color: #ddd; padding: .6em; max-height: 28em; overflow: auto;
  white-space: pre-wrap; word-break: break-all; font-size: 12px; min-height: 3em; }
tr.new { background: #eef6ff; }
`;

// The page's script. Plain JavaScript (no template literals inside: this is one), run as is.
const script = String.raw`"use strict";
const api = "/api/v1";
// A copy's progress as one line: the function netroot node log uses (contract/report.ts).
const progressText = ${progressText};
// A node's console text as plain text (colours removed, every other control character shown as
// \xNN), and how much of a read it can take now: the CLI's functions (src/nodetext.ts).
const nodeText = ${nodeText};
const nodeTextReady = ${nodeTextReady};
const $ = (id) => document.getElementById(id);
let session = { loggedIn: false, apiAuth: "writes" };
let current = "";          // the MAC of the node page shown, "" on the list
let nodeInfo = null;       // that node, as the API answered
let images = [];
let stream = null;         // the EventSource of the page shown
let streamLast = 0;        // the id of the newest event shown
let refreshTimer, consoleTimer, pending;
let consoleOffset = 0;
let consoleWaiting = "";   // the end of the last read: an escape sequence or CR cut short
const maxTimelineRows = 1000, maxConsoleChars = 200000;

function canRead() { return session.apiAuth !== "all" || session.loggedIn; }
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
// A table body: one row per item, or one muted line saying there are none.
function fillTable(tbody, items, empty, columns, row) {
  if (!items.length) {
    const td = el("td", empty, "muted"); td.colSpan = columns;
    tbody.replaceChildren(el("tr")); tbody.rows[0].append(td);
    return;
  }
  tbody.replaceChildren(...items.map(row));
}
function when(ts) { return ts ? new Date(ts).toLocaleString() : "-"; }
function age(ts) {
  if (!ts) return "";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(ts)) / 1000));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return Math.floor(s / 3600) + " h";
  return Math.floor(s / 86400) + " d";
}
function size(n) {
  if (typeof n !== "number") return "-";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
function status(text, error) {
  const s = $("status");
  s.textContent = text;
  s.className = error ? "error" : "";
}
function result(box, text, error) {
  box.textContent = text;
  box.className = "result" + (error ? " error" : "");
}

async function call(method, path, body) {
  const init = { method, headers: { accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  let data = null;
  try { data = await res.json(); } catch (_) { /* not JSON */ }
  if (res.status === 401 && session.loggedIn) { session.loggedIn = false; showAuth(); }
  if (!res.ok) throw new Error((data && data.error) || method + " " + path + ": HTTP " + res.status);
  return data;
}
const get = (path) => call("GET", api + path);

// ---- session ----
async function loadSession() {
  try { session = await call("GET", "/session"); } catch (_) { /* keep the last one */ }
  showAuth();
}
function showAuth() {
  const write = session.loggedIn;
  for (const e of document.querySelectorAll(".needs-write")) e.hidden = !write;
  for (const e of document.querySelectorAll(".needs-login")) e.hidden = write;
  $("logout").hidden = !write;
  $("who").textContent = write ? "logged in" : (canRead() ? "read-only" : "");
  $("login").hidden = write;
}
$("login").onsubmit = async (ev) => {
  ev.preventDefault();
  const body = new URLSearchParams({ token: $("login-token").value.trim() });
  const res = await fetch("/login", { method: "POST", body, credentials: "same-origin" });
  let data = {};
  try { data = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) { $("login-error").textContent = data.error || "login failed"; return; }
  $("login-token").value = "";
  $("login-error").textContent = "";
  await loadSession();
  openPage(current);
};
$("logout").onclick = async () => {
  await fetch("/logout", { method: "POST", credentials: "same-origin" });
  await loadSession();
  openPage(current);
};

// ---- pages ----
function route() {
  const m = location.hash.match(/^#\/node\/([^/?]+)/) || location.hash.match(/^#node=([^&]+)/);
  let mac = "";
  try {
    mac = m ? decodeURIComponent(m[1]) : "";
  } catch { /* a malformed escape in a link: the overview (it left the page at "loading…") */ }
  if (mac !== current || !stream) openPage(mac);
  else refresh();
}
window.addEventListener("hashchange", route);

function openPage(mac) {
  current = mac;
  closeStream();
  clearTimeout(consoleTimer);
  $("page-list").hidden = !!mac;
  $("page-node").hidden = !mac;
  nodeInfo = null;
  streamLast = 0;
  consoleOffset = 0;
  consoleWaiting = "";
  $("timeline").tBodies[0].replaceChildren();
  $("console").textContent = "";
  result($("action-result"), "");
  if (mac) {
    refresh().then(() => { if (canRead()) { loadTimeline(); loadConsole(); } });
    return;
  }
  // The list follows every event from the newest one before it is read: nothing falls between.
  (canRead() ? get("/events?limit=1") : Promise.resolve([])).then((newest) => {
    streamLast = newest.length ? newest[newest.length - 1].id : 0;
  }, () => {}).then(refresh).then(() => { if (canRead() && !current) openStream(""); });
}

async function refresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, 10000); // ages move; the stream brings the rest
  if (!canRead()) {
    status("the API needs its token: log in", true);
    $("page-list").hidden = $("page-node").hidden = true;
    return;
  }
  try {
    // The node page reads its node only; the list reads them all.
    const one = current
      ? get("/nodes/" + encodeURIComponent(current)).catch((e) => ({ missing: e.message }))
      : null;
    const [nodes, imgs, node] = await Promise.all([current ? null : get("/nodes"), get("/images"), one]);
    images = Array.isArray(imgs) ? imgs : imgs.images || [];
    fillImageChoices();
    if (current) {
      nodeInfo = node && !node.missing ? node : null;
      renderNode(node && node.missing);
    } else {
      renderNodes(nodes);
      renderImages(nodes);
    }
    status((nodes ? nodes.length + " nodes, " : "") + images.length + " images — updated " +
      new Date().toLocaleTimeString());
  } catch (e) {
    status("cannot reach the API: " + e.message, true);
  }
}
// Coalesced: a busy lab's events bring one re-read a second on the list, faster on a node page.
function refreshSoon() {
  pending = pending || setTimeout(() => { pending = null; refresh(); }, current ? 300 : 1000);
}

function stateCell(n) {
  const s = el("span", (n.state || "off") + (n.stateSince ? " · " + age(n.stateSince) : ""),
    "state state-" + (n.state || "off"));
  s.title = (n.stateReason ? n.stateReason + " — " : "") + "since " + when(n.stateSince);
  return s;
}
function lastBootText(n) {
  if (!n.lastBoot) return "-";
  return when(n.lastBoot.startedAt) + (n.lastBoot.stage ? " (" + n.lastBoot.stage + ")" : "");
}

// A node the DHCP service registered on its own: its MAC is what a machine claimed, its name a
// guess from it (a look-alike MAC registered first takes the name the admin looks for).
const autoText = "registered by DHCP at its first request, not adopted by an admin: " +
  "check its MAC before deploying to it";
function autoMark() {
  const m = el("span", "auto", "auto-registered");
  m.title = autoText;
  return m;
}

function renderNodes(nodes) {
  const tbody = $("nodes").tBodies[0];
  const checked = new Set([...tbody.querySelectorAll("input:checked")].map((c) => c.value));
  fillTable(tbody, nodes, "no nodes", 7, (n) => {
    const tr = el("tr");
    tr.dataset.mac = n.mac;
    const pick = el("td", null, "needs-write"); pick.hidden = !session.loggedIn;
    const box = el("input"); box.type = "checkbox"; box.value = n.mac;
    box.checked = checked.has(n.mac); pick.append(box);
    const name = el("td"); const a = el("a", n.name, "node-name");
    a.href = "#/node/" + encodeURIComponent(n.mac); name.append(a);
    if (n.autoRegistered) name.append(" ", autoMark());
    const state = el("td"); state.append(stateCell(n));
    const last = n.lastEvent ? n.lastEvent.kind + " (" + age(n.lastEvent.ts) + " ago)" : "-";
    tr.append(pick, name, state, el("td", n.imageName || n.imageId || "-"),
      el("td", n.ip || "-", "mono"), el("td", lastBootText(n)), el("td", last));
    return tr;
  });
}

// An image's versions: today one per image (its content id); when the API lists versions
// (image.versions), each is shown the same way.
function versionsOf(i) {
  return Array.isArray(i.versions) && i.versions.length ? i.versions : [i];
}
function renderImages(nodes) {
  const tbody = $("images").tBodies[0];
  fillTable(tbody, images, "no images", 5, (i) => {
    const tr = el("tr");
    tr.dataset.image = i.name;
    const versions = el("td");
    for (const v of versionsOf(i)) {
      const line = el("div", null, "version");
      line.append(el("span", String(v.id || "").slice(0, 12), "mono"),
        document.createTextNode(" · " + when(v.createdAt) + " · " + size(v.size)));
      versions.append(line);
    }
    const boot = i.bootable ? "yes" : "no" + (i.reason ? " (" + i.reason + ")" : "");
    const users = nodes.filter((n) => n.imageId === i.id).length;
    tr.append(el("td", i.name), versions, el("td", boot), el("td", i.kernelVersion || "-"),
      el("td", users));
    return tr;
  });
}
function fillImageChoices() {
  for (const id of ["bulk-image", "node-image"]) {
    const sel = $(id); const was = sel.value;
    sel.replaceChildren(...images.map((i) => {
      const o = el("option", i.name + (i.bootable ? "" : " (not bootable)"));
      o.value = i.name;
      return o;
    }));
    if (was) sel.value = was;
  }
}

function renderNode(missing) {
  if (!nodeInfo) {
    $("node-name").textContent = current;
    $("node-state").replaceChildren(el("span", missing || "unknown node", "error"));
    return;
  }
  const n = nodeInfo;
  $("node-name").textContent = n.name;
  $("node-state").replaceChildren(stateCell(n));
  const facts = [
    ["mac", n.mac], ["address", n.ip || "-"], ["image", n.imageName || n.imageId || "-"],
    ["state", (n.state || "off") + " since " + when(n.stateSince) +
      (n.stateReason ? " — " + n.stateReason : "")],
    ["last boot", lastBootText(n)], ["last seen", when(n.lastSeen)], ["model", n.model],
    ["virtual", n.virtual ? "yes" : "no"],
    ["added by", n.autoRegistered ? "DHCP — " + autoText : "an admin"],
  ];
  $("node-facts").tBodies[0].replaceChildren(...facts.map(([k, v]) => {
    const tr = el("tr"); tr.append(el("th", k), el("td", v)); tr.dataset.fact = k; return tr;
  }));
  if (n.imageName && !$("node-image").dataset.touched) $("node-image").value = n.imageName;
  renderSettings(n.settings || {});
}

function renderSettings(settings) {
  const tbody = $("settings").tBodies[0];
  const focused = document.activeElement && tbody.contains(document.activeElement);
  if (focused) return; // do not pull an edit from under the admin's cursor
  const keys = Object.keys(settings).sort();
  fillTable(tbody, keys, "no settings (defaults apply)", 3, (k) => {
    const tr = el("tr"); tr.dataset.key = k;
    const secret = settings[k] === "***";
    const edit = el("td", null, "needs-write"); edit.hidden = !session.loggedIn;
    const input = el("input"); input.size = 30;
    if (secret) input.placeholder = "(secret: type to replace)"; else input.value = settings[k];
    const save = el("button", "save"); save.type = "button";
    save.onclick = () => {
      if (secret && !input.value) return result($("action-result"), "type the new value of " + k, true);
      configure({ [k]: input.value });
    };
    const remove = el("button", "remove"); remove.type = "button";
    remove.onclick = () => configure({ [k]: null });
    edit.append(input, " ", save, " ", remove);
    tr.append(el("td", k, "mono"), el("td", settings[k], "mono value"), edit);
    return tr;
  });
}
$("setting-add").onsubmit = (ev) => {
  ev.preventDefault();
  const k = $("setting-key").value.trim();
  if (k) configure({ [k]: $("setting-value").value });
};

// ---- actions: each is one API call; the answer (or its one-line error) is shown ----
async function act(box, what, fn) {
  result(box, what + "…");
  try {
    const text = await fn();
    result(box, what + ": " + text);
  } catch (e) {
    result(box, what + " failed: " + e.message, true);
  }
  refreshSoon();
}
function rebootText(r) {
  return (r.ok ? "done" : "failed") + (r.mechanism ? " (" + r.mechanism + ")" : "") +
    (r.message ? " — " + r.message : "");
}
function configure(changes) {
  act($("action-result"), "settings", async () => {
    await call("PATCH", api + "/nodes/" + encodeURIComponent(current) + "/config", changes);
    $("setting-key").value = $("setting-value").value = "";
    return "saved " + Object.keys(changes).join(", ");
  });
}
$("node-image").onchange = () => { $("node-image").dataset.touched = "1"; };
$("act-deploy").onclick = () => act($("action-result"), "deploy", async () => {
  const image = $("node-image").value;
  const r = await call("POST", api + "/deploy", { nodes: [current], image, reboot: true });
  return image + " deployed; reboot " + (r.reboots || []).map(rebootText).join(", ");
});
$("act-reboot").onclick = () => act($("action-result"), "reboot", async () =>
  rebootText(await call("POST", api + "/nodes/" + encodeURIComponent(current) + "/reboot",
    { cause: "dashboard" })));
for (const b of document.querySelectorAll(".act-power")) {
  b.onclick = () => act($("action-result"), "power " + b.dataset.action, async () => {
    const r = await call("POST", api + "/nodes/" + encodeURIComponent(current) + "/power",
      { action: b.dataset.action });
    return r.state + " (" + r.driver + ")";
  });
}
function selectedNodes() {
  return [...$("nodes").querySelectorAll("tbody input:checked")].map((c) => c.value);
}
$("bulk-deploy").onclick = () => act($("bulk-result"), "deploy", async () => {
  const nodes = selectedNodes();
  if (!nodes.length) throw new Error("select nodes first");
  const r = await call("POST", api + "/deploy", { nodes, image: $("bulk-image").value, reboot: true });
  return r.nodes.length + " nodes now boot " + $("bulk-image").value;
});
$("bulk-reboot").onclick = () => act($("bulk-result"), "reboot", async () => {
  const nodes = selectedNodes();
  if (!nodes.length) throw new Error("select nodes first");
  const all = await Promise.all(nodes.map((m) =>
    call("POST", api + "/nodes/" + encodeURIComponent(m) + "/reboot", { cause: "dashboard" })));
  return all.filter((r) => r.ok).length + " of " + all.length + " rebooted";
});

// ---- timeline: the last events, then live ones over server-sent events ----
function detailText(e) {
  const d = e.detail || {};
  const p = progressText(d);
  if (p !== undefined) return p;
  return Object.keys(d).length ? JSON.stringify(d) : "";
}
function eventRow(e) {
  const tr = el("tr");
  tr.dataset.id = e.id; tr.dataset.kind = e.kind;
  if (progressText(e.detail || {}) !== undefined) tr.dataset.progress = "1";
  tr.append(el("td", when(e.ts), "time"), el("td", e.kind, "kind"), el("td", detailText(e), "detail"));
  return tr;
}
function showEvent(e, live) {
  if (e.id <= streamLast) return;
  streamLast = e.id;
  const tbody = $("timeline").tBodies[0];
  const row = eventRow(e);
  if (live) row.classList.add("new");
  const top = tbody.rows[0];
  // A progress report replaces the previous one (the server keeps only the newest, too).
  if (top && top.dataset.progress && row.dataset.progress && top.dataset.kind === e.kind) top.remove();
  tbody.prepend(row);
  while (tbody.rows.length > maxTimelineRows) tbody.lastElementChild.remove();
}
async function loadTimeline() {
  const mac = current;
  try {
    const events = await get("/events?mac=" + encodeURIComponent(mac) + "&limit=500");
    if (mac !== current) return;
    for (const e of events) showEvent(e, false);
  } catch (e) {
    status("timeline: " + e.message, true);
  }
  openStream(mac);
}
function openStream(mac) {
  closeStream();
  let url = api + "/events?since=" + streamLast;
  if (mac) url += "&mac=" + encodeURIComponent(mac);
  stream = new EventSource(url);
  stream.onopen = () => { $("live").textContent = "live"; $("live").className = "on"; };
  const mine = stream;
  stream.onerror = () => {
    $("live").textContent = "reconnecting…";
    $("live").className = "muted";
    // EventSource retries by itself, except after a refusal (503: too many streams, 401).
    if (mine.readyState === EventSource.CLOSED) {
      setTimeout(() => { if (stream === mine && canRead()) openStream(mac); }, 10000);
    }
  };
  stream.onmessage = (m) => {
    let e;
    try { e = JSON.parse(m.data); } catch (_) { return; }
    if (mac) showEvent(e, true);
    else streamLast = Math.max(streamLast, e.id);
    // Whatever changes what the page shows brings a (coalesced) re-read of the nodes.
    if (!mac || /^(node\.|deploy|reboot|power\.|init\.|vnode\.|http\.script)/.test(e.kind)) refreshSoon();
  };
}
function closeStream() {
  if (stream) stream.close();
  stream = null;
  $("live").textContent = "";
}

// ---- console: read through the API from the last offset (the server keeps the log) ----
async function loadConsole() {
  clearTimeout(consoleTimer);
  const mac = current;
  if (!mac) return;
  const box = $("console");
  if (!session.loggedIn) {
    box.textContent = "(log in to see the console: it shows the kernel command line)";
    return;
  }
  let wait = 2000;
  try {
    const r = await get("/nodes/" + encodeURIComponent(mac) + "/console?offset=" + consoleOffset);
    if (mac !== current) return;
    if (r.offset < consoleOffset) { // the log was rotated
      box.textContent = "";
      consoleWaiting = "";
    }
    consoleOffset = r.offset;
    if (r.text) {
      const stick = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
      const got = consoleWaiting + r.text;
      const ready = nodeTextReady(got);
      consoleWaiting = got.slice(ready);
      let text = box.textContent + nodeText(got.slice(0, ready), "strip");
      if (text.length > maxConsoleChars) text = text.slice(-maxConsoleChars);
      box.textContent = text;
      if (stick) box.scrollTop = box.scrollHeight;
      // More is waiting: by bytes (a 1 MiB read of multi-byte characters is fewer characters,
      // and a read ends on a whole one; counted in characters, a log caught up 2 s per read)
      if (r.size - r.offset >= 4) wait = 0;
    }
  } catch (e) {
    if (mac !== current) return;
    box.textContent = "(" + e.message + ")";
    wait = 10000;
  }
  consoleTimer = setTimeout(loadConsole, wait);
}

// Older dashboards took the token from /?token=…: never use it, and drop it from the address bar.
if (new URLSearchParams(location.search).has("token")) {
  history.replaceState(null, "", location.pathname + location.hash);
}
loadSession().then(route);
`;

/** What the page may load and do: its own script, style and API, nothing inline, nothing else. */
const policy = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "form-action 'self'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
].join("; ");

/** GET /, /dashboard.js, /dashboard.css. */
export function dashboardRoutes(_ctx: Context): Hono {
  const app = new Hono();
  const serve = (body: string, type: string) => () =>
    new Response(body, {
      headers: {
        "content-type": type,
        "content-security-policy": policy,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cache-control": "no-cache",
      },
    });
  app.get("/", serve(page, "text/html; charset=utf-8"));
  app.get("/dashboard.js", serve(script, "text/javascript; charset=utf-8"));
  app.get("/dashboard.css", serve(style, "text/css; charset=utf-8"));
  return app;
}
