// The zuulpush dashboard: renders the snapshots the API streams on GET /dashboard/events
// (one a second; rates are computed by the server from counter deltas), draws small charts on
// canvases, and sends the push form and drain buttons. No libraries, no build step.
// Authentication is the HttpOnly session cookie set at login; every state-changing request
// carries the X-Zuulpush-Dashboard header the API demands against CSRF.

const HISTORY = 120; // points kept per chart: two minutes at one snapshot a second
const CSRF = {"X-Zuulpush-Dashboard": "1"};
const history = {connections: [], delivered: [], expired: [], deduped: [], shed: []};
const $ = (id) => document.getElementById(id);

function remember(name, value) {
  const points = history[name];
  points.push(value);
  if (points.length > HISTORY) points.shift();
}

function drawChart(canvas, points, color) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width, height = canvas.clientHeight || canvas.height;
  canvas.width = width * ratio; canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  ctx.strokeStyle = "#dde2e8"; ctx.beginPath(); ctx.moveTo(0, height - 0.5);
  ctx.lineTo(width, height - 0.5); ctx.stroke();
  if (points.length < 2) return;
  const max = Math.max(1, ...points);
  const step = width / Math.max(points.length - 1, 20); // a short history fills the width too
  const x0 = width - (points.length - 1) * step;
  const y = (v) => height - 2 - (v / max) * (height - 6);
  ctx.beginPath();
  points.forEach((v, i) => (i ? ctx.lineTo(x0 + i * step, y(v)) : ctx.moveTo(x0, y(v))));
  ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.stroke();
  ctx.lineTo(width, height); ctx.lineTo(x0, height); ctx.closePath();
  ctx.globalAlpha = 0.12; ctx.fillStyle = color; ctx.fill(); ctx.globalAlpha = 1;
  ctx.fillStyle = "#6b7785"; ctx.font = "10px system-ui"; ctx.fillText(`max ${Math.round(max * 10) / 10}`, 4, 11);
}

const pairs = (obj) => Object.entries(obj).map(([k, v]) => `${k} ${v}`).join(" · ") || "none";

function scopeLabel(counter, mode) {
  if (!counter) return "not available here (each router's /metrics)";
  if (mode === "serve") return `total ${counter.total}`;
  return `total ${counter.total} (${counter.scope === "fleet" ? "fleet" : "this API process"})`;
}

function renderCounter(name, counter, mode, color) {
  $(`${name}-rate`).textContent = counter ? counter.per_s.toFixed(1) : "n/a";
  $(`${name}-total`).textContent = scopeLabel(counter, mode);
  remember(name, counter ? counter.per_s : 0);
  drawChart($(`chart-${name}`), history[name], color);
}

function renderNodes(nodes) {
  const body = $("nodes").tBodies[0];
  body.replaceChildren(...nodes.map((node) => {
    const row = document.createElement("tr");
    row.dataset.node = node.node_id;
    const cells = [node.node_id, node.region || "–", node.address, node.state, node.connections,
      `${node.by_transport.ws || 0} / ${node.by_transport.sse || 0}`,
      pairs(node.by_device_type), node.totals.delivered ?? "–"];
    for (const [i, text] of cells.entries()) {
      const cell = document.createElement("td");
      cell.textContent = String(text);
      if (i === 3) cell.className = `state ${node.state}`;
      if (i === 4) cell.className = "connections";
      row.append(cell);
    }
    const action = document.createElement("td");
    const button = document.createElement("button");
    button.className = "drain"; button.type = "button"; button.textContent = "Drain";
    button.disabled = node.state !== "active";
    button.addEventListener("click", () => drain(node.node_id));
    action.append(button);
    row.append(action);
    return row;
  }));
}

function render(snap) {
  $("mode").textContent = snap.mode === "serve"
    ? "zuulpush serve: one process, every number is the whole deployment's"
    : `fleet: ${snap.nodes.length} node(s), ${snap.connections.active_nodes} active`;
  $("connections").textContent = snap.connections.total;
  $("by-transport").textContent = `transport: ${pairs(snap.connections.by_transport)}`;
  $("by-device-type").textContent = `device type: ${pairs(snap.connections.by_device_type)}`;
  remember("connections", snap.connections.total);
  drawChart($("chart-connections"), history.connections, "#2563eb");
  const c = snap.counters;
  renderCounter("delivered", c.delivered, snap.mode, "#15803d");
  renderCounter("expired", c.expired, snap.mode, "#b91c1c");
  renderCounter("deduped", c.deduped, snap.mode, "#7c3aed");
  renderCounter("shed", c.shed, snap.mode, "#b45309");
  renderNodes(snap.nodes);
  $("scope-note").textContent = snap.mode === "serve" ? "" :
    "Nodes, connections, delivered and shed: fleet-wide, from each edge node's heartbeat " +
    "(every few seconds). Expired and deduped: summed over this region's routers and API " +
    "processes, from the counters each publishes every few seconds.";
}

async function post(url, body) {
  const response = await fetch(url, {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", ...CSRF},
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (response.status === 401) location.reload(); // the session ended: back to the login form
  return {ok: response.ok, status: response.status, answer};
}

function errorText(result) {
  const error = result.answer.error || {};
  return `${result.status} ${error.code || "error"}: ${error.message || ""}` +
    (error.field ? ` (field ${error.field})` : "");
}

async function drain(nodeId) {
  if (!confirm(`Drain node ${nodeId}? It closes its connections with reconnect hints and exits ` +
               "when empty (under zuulpush serve, the whole process).")) return;
  const result = await post(`/dashboard/nodes/${encodeURIComponent(nodeId)}/drain`);
  $("drain-result").textContent = result.ok
    ? `drain requested: ${nodeId} (${result.answer.via})` : errorText(result);
}

function commaList(id) {
  return $(id).value.split(",").map((s) => s.trim()).filter(Boolean);
}

function pushBody() {
  // As POST /v1/push and `zuulpush send`: device types narrow the clients, users or broadcast
  // named; alone they name nobody, and the API's 400 says to choose "everyone (broadcast)".
  const kind = $("push-kind").value;
  const to = kind === "broadcast" ? {broadcast: true} : {[kind]: commaList("push-target")};
  const types = commaList("push-device-types");
  if (types.length) to.device_types = types;
  const text = $("push-data").value;
  let data;
  try { data = JSON.parse(text); } catch { data = text; }
  const body = {to, topic: $("push-topic").value || "default", data,
                priority: $("push-priority").value};
  const ttl = $("push-ttl").value;
  if (ttl) body.ttl = Number(ttl);
  return body;
}

$("push-kind").addEventListener("change", () => {
  const everyone = $("push-kind").value === "broadcast";
  $("push-target").disabled = everyone;
  $("push-target-label").classList.toggle("muted", everyone);
});

$("push").addEventListener("submit", async (event) => {
  event.preventDefault();
  const out = $("push-result");
  out.className = "small";
  out.textContent = "sending…";
  const result = await post("/dashboard/push", pushBody());
  out.className = result.ok ? "small ok" : "small error";
  out.textContent = result.ok
    ? `accepted: id ${result.answer.id}, ${result.answer.targets} target(s)` +
      (result.answer.duplicate ? " (duplicate)" : "")
    : errorText(result);
});

$("logout").addEventListener("click", async () => {
  await post("/dashboard/logout");
  location.reload();
});

function connect() {
  const source = new EventSource("/dashboard/events");
  source.addEventListener("snapshot", (event) => {
    $("live").textContent = "live"; $("live").className = "badge on";
    render(JSON.parse(event.data));
  });
  source.onerror = () => {
    $("live").textContent = "reconnecting…"; $("live").className = "badge off";
    // EventSource retries by itself; a logged-out session (401) ends the stream for good.
    if (source.readyState === EventSource.CLOSED) {
      setTimeout(() => fetch("/dashboard/snapshot", {credentials: "same-origin"}).then((r) => {
        if (r.status === 401 || r.status === 403) location.reload(); else connect();
      }, () => setTimeout(connect, 2000)), 2000);
    }
  };
}

connect();
