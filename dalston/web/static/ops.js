// The operations page: one server-sent `snapshot` event per second from /v1/ops/events, drawn into plain
// tables, bar histograms and nested lists. No framework, no build step; every value is set as text.
"use strict";

const apiKey = new URLSearchParams(location.search).get("api_key");
const withKey = (path) => (apiKey ? `${path}?api_key=${encodeURIComponent(apiKey)}` : path);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

const cell = (value, cls) => el("td", cls ? { class: cls } : {}, value ?? "–");
const seconds = (s) => (s === null || s === undefined ? "–" : `${Number(s).toFixed(1)} s`);

function duration(s) {
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m}m${String(Math.floor(s % 60)).padStart(2, "0")}s` : `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

function fillTable(id, rows) {
  document.querySelector(`#${id} tbody`).replaceChildren(...rows);
}

function drawWorkers(workers) {
  fillTable("workers", workers.map((w) => el("tr", { "data-worker-id": w.worker_id },
    cell(w.worker_id),
    cell(w.status, `status-${w.status}`),
    cell(w.alive ? "yes" : "no", w.alive ? "status-ready" : "status-dead"),
    cell(`${w.active_sessions}/${w.capacity}`, "num"),
    cell(w.models.join(", ")),
    cell(`${w.heartbeat_age_s.toFixed(1)} s ago`, "num"),
    cell(w.endpoint),
  )));
}

function drawSessions(sessions) {
  document.getElementById("session-count").textContent = String(sessions.length);
  fillTable("sessions", sessions.map((s) => el("tr", { "data-session-id": s.session_id },
    cell(s.session_id),
    cell(s.worker_id),
    cell(s.model),
    cell(duration(s.age_s), "num"),
    cell(seconds(s.audio_s), "num"),
    cell(s.finals_pending, "num"),
    cell(s.in_speech ? "speaking" : "–"),
    cell(s.mailbox_depth, "num"),
  )));
}

function drawModels(models) {
  fillTable("models", models.map((m) => el("tr", { "data-model-actor": `${m.worker_id}/${m.actor}` },
    cell(m.worker_id),
    cell(m.model),
    cell(m.status, `status-${m.status}`),
    cell(m.restarts, "num restarts"),
    cell(m.mailbox_depth, "num"),
    cell(m.running, "num"),
    cell(m.finals_queued, "num"),
    cell(m.partials_queued, "num"),
    cell(Object.entries(m.decodes).map(([kind, n]) => `${n} ${kind}`).join(", ") || "0"),
    cell(m.mean_decode_s === null ? "–" : `${(1000 * m.mean_decode_s).toFixed(0)} ms`, "num"),
  )));
}

function histogram(title, data) {
  const most = Math.max(1, ...data.counts);
  const rows = data.counts.map((count, i) => {
    const bound = data.bounds_s[i];
    const label = bound === "+Inf" ? `> ${data.bounds_s[i - 1]} s` : `≤ ${bound} s`;
    return el("div", { class: "row" },
      el("span", { class: "label" }, label),
      el("div", { class: "bar", style: `width: ${(100 * count) / most}%` }),
      el("span", { class: "count" }, count));
  });
  return [el("h3", {}, `${title} (${data.total})`), ...rows];
}

function drawHistograms(snapshot) {
  document.getElementById("final-latency").replaceChildren(...histogram("finals", snapshot.final_latency));
  const decode = Object.entries(snapshot.decode_time).flatMap(([kind, data]) => histogram(kind, data));
  document.getElementById("decode-time").replaceChildren(
    ...(decode.length ? decode : [el("p", { class: "muted" }, "no decodes seen yet")]));
}

function actorItem(node) {
  const bound = node.mailbox_bound ? `/${node.mailbox_bound}` : "";
  const item = el("li", { "data-actor-id": node.id, "data-status": node.status },
    el("span", { class: "id" }, node.id), " ",
    el("span", { class: "kind" }, `[${node.kind} ${node.actor}]`), " ",
    el("span", { class: `status-${node.status}` }, node.status), " ",
    el("span", { class: "restarts", "data-count": node.restarts }, `restarts=${node.restarts}`), " ",
    el("span", { class: "mailbox" }, `mailbox=${node.mailbox_depth}${bound}`), " ",
    el("span", { class: "muted" }, `up ${duration(node.uptime_s || 0)}`));
  if (node.children && node.children.length) item.append(el("ul", {}, ...node.children.map(actorItem)));
  return item;
}

function drawTrees(trees) {
  const blocks = trees.map((t) => {
    const worker = t.worker || {};
    const title = el("div", { class: "worker-title" }, `${worker.worker_id || t.url} (${t.url})`);
    if (t.error) return el("div", { class: "tree", "data-worker": worker.worker_id || t.url }, title, el("p", { class: "error" }, t.error));
    const body = t.tree ? el("ul", {}, actorItem(t.tree)) : el("p", { class: "muted" }, "not running");
    return el("div", { class: "tree", "data-worker": worker.worker_id || t.url }, title, body);
  });
  document.getElementById("trees").replaceChildren(...(blocks.length ? blocks : [el("p", { class: "muted" }, "no live workers")]));
}

function showError(message) {
  const box = document.getElementById("error");
  box.hidden = !message;
  box.textContent = message || "";
}

function draw(snapshot) {
  if (snapshot.error) {
    showError(`${snapshot.error}: ${snapshot.message}`);
    return;
  }
  showError("");
  drawWorkers(snapshot.workers);
  drawSessions(snapshot.sessions);
  drawModels(snapshot.models);
  drawHistograms(snapshot);
  drawTrees(snapshot.trees);
  document.getElementById("updated").textContent = `updated ${new Date(snapshot.at * 1000).toLocaleTimeString()}`;
}

function setFeed(state, text) {
  const feed = document.getElementById("feed");
  feed.dataset.state = state;
  feed.textContent = text;
}

async function explainFailure() {
  // EventSource hides the HTTP status; ask once more with a plain request to say why.
  try {
    const response = await fetch(withKey("/v1/ops/snapshot"));
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      showError(body.message ? `${response.status}: ${body.message}` : `HTTP ${response.status}`);
    }
  } catch (error) {
    showError(`the gateway cannot be reached (${error.message})`);
  }
}

function connect() {
  const source = new EventSource(withKey("/v1/ops/events"));
  source.addEventListener("open", () => setFeed("live", "live"));
  source.addEventListener("snapshot", (event) => draw(JSON.parse(event.data)));
  source.addEventListener("error", () => {
    setFeed("down", "reconnecting…");
    explainFailure();
  });
}

connect();
