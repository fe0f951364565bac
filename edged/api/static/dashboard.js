// edged dashboard: polls /api/v1/status (1 s) and /api/v1/outbox (5 s); no build step.
"use strict";

const POLL_MS = 1000;
const OUTBOX_MS = 5000;
const HISTORY = 120; // points kept for the gate chart

const $ = (id) => document.getElementById(id);
const gateHistory = []; // {sent, skipped} frames/s per poll interval
let previous = null; // {t, gated, skipped} of the last poll
let cameraNames = [];
const drawn = []; // corners of the object mask being drawn: [x, y], shares of the frame

function fmt(value, digits = 1) {
  if (value === null || value === undefined) return "–";
  return typeof value === "number" ? value.toFixed(digits) : String(value);
}

function uptime(seconds) {
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return `up ${h ? h + "h " : ""}${m}m ${s % 60}s`;
}

function fillRows(tableId, rows) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      td.textContent = cell;
      tr.append(td);
    }
    return tr;
  }));
}

function streamUrl() {
  const params = new URLSearchParams();
  if ($("camera").value) params.set("camera", $("camera").value);
  if ($("mask").checked) params.set("mask", "1");
  return "/api/v1/preview.mjpg?" + params.toString();
}

function setCameras(names) {
  if (names.join() === cameraNames.join()) return;
  cameraNames = names;
  $("camera").replaceChildren(...names.map((n) => new Option(n, n)));
  $("stream").src = streamUrl();
}

// a share of the frame, to 3 decimals (a pixel of a 1000-pixel-wide frame)
function share(offset, size) {
  return Math.min(1, Math.max(0, Math.round((1000 * offset) / size) / 1000));
}

// the mask being drawn: its polygon over the preview and the config line for it
function renderDrawing() {
  const on = $("draw").checked;
  $("draw-layer").hidden = $("draw-box").hidden = !on;
  $("draw-shape").setAttribute("points", drawn.map(([x, y]) => `${x},${y}`).join(" "));
  $("draw-yaml").textContent = drawn.length >= 3
    ? "- [" + drawn.map(([x, y]) => `[${x}, ${y}]`).join(", ") + "]"
    : `${drawn.length} corner${drawn.length === 1 ? "" : "s"} (a mask needs at least 3)`;
}

function addCorner(ev) {
  const box = $("draw-layer").getBoundingClientRect();
  drawn.push([share(ev.clientX - box.left, box.width), share(ev.clientY - box.top, box.height)]);
  renderDrawing();
}

function recordGate(cameras, uptimeS) {
  const now = performance.now() / 1000;
  const gated = cameras.reduce((a, c) => a + c.gated, 0);
  const skipped = cameras.reduce((a, c) => a + c.skipped_static, 0);
  if (!previous && uptimeS > 0) {
    // first poll: the daemon's average so far, so the chart shows data from the first second
    gateHistory.push({ sent: gated / uptimeS, skipped: skipped / uptimeS });
  } else if (previous && now > previous.t) {
    const dt = now - previous.t;
    gateHistory.push({
      sent: Math.max(0, gated - previous.gated) / dt,
      skipped: Math.max(0, skipped - previous.skipped) / dt,
    });
    if (gateHistory.length > HISTORY) gateHistory.shift();
  }
  previous = { t: now, gated, skipped };
  const total = gated + skipped;
  $("saving").textContent = total ? (100 * skipped / total).toFixed(1) + "%" : "–";
  $("gain").textContent = gated ? (total / gated).toFixed(2) + "×" : "–";
}

function drawChart() {
  const canvas = $("gate-chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const top = Math.max(1, ...gateHistory.map((p) => p.sent + p.skipped));
  const bar = w / HISTORY;
  const style = getComputedStyle(document.documentElement);
  gateHistory.forEach((p, i) => {
    const x = w - (gateHistory.length - i) * bar;
    const hs = (p.sent / top) * (h - 14), hk = (p.skipped / top) * (h - 14);
    ctx.fillStyle = style.getPropertyValue("--sent");
    ctx.fillRect(x, h - hs, bar - 1, hs);
    ctx.fillStyle = style.getPropertyValue("--skip");
    ctx.fillRect(x, h - hs - hk, bar - 1, hk);
  });
  ctx.fillStyle = style.getPropertyValue("--muted");
  ctx.font = "11px sans-serif";
  ctx.fillText(`max ${top.toFixed(1)}/s   blue: to models   amber: skipped`, 4, 11);
}

// "3: person 0.91, car 0.55": how many results and the first labels with their scores
function summarise(results) {
  if (!Array.isArray(results)) return "–";
  const labels = results.slice(0, 3).map((r) => {
    const top = Array.isArray(r.top) && r.top.length ? r.top[0] : null;
    const label = r.label ?? r.text ?? (top ? top[0] : r.type);
    const score = r.score ?? (top ? top[1] : null);
    return typeof score === "number" ? `${label} ${score.toFixed(2)}` : String(label);
  });
  return `${results.length}${labels.length ? ": " + labels.join(", ") : ""}`;
}

function renderOffload(off) {
  $("offload-results").hidden = !off.available;
  $("offload-counts").textContent = off.available
    ? Object.entries(off.counts).map(([k, n]) => `${k} ${n}`).join(" · ") || "none yet"
    : "not configured";
  fillRows("offload-results", off.recent.map((r) => [
    r.job_id.slice(0, 8), r.camera ?? "–", r.frame ?? "–", r.model, r.status,
    r.served_by ?? "–", summarise(r.result), summarise(r.local_result),
  ]));
}

function renderTwin(twin) {
  const ways = Object.entries(twin || {});
  $("twin-box").hidden = !ways.length;
  const refused = ways.flatMap(([way, t]) =>
    Object.entries(t.rejections || {}).map(([name, r]) => [way, name, r.value, r.reason]));
  const errors = ways.filter(([, t]) => t.last_error).map(([way, t]) => `${way}: ${t.last_error}`);
  $("twin-state").textContent = [
    ways.map(([way, t]) => (t.registered === undefined ? way
      : `${way} (${t.registered ? "registered" : "not registered"})`)).join(", "),
    refused.length ? `${refused.length} refused` : "every desired value applied",
    ...errors,
  ].join(" · ");
  $("twin").hidden = !refused.length;
  fillRows("twin", refused);
}

function renderFederation(fed) {
  $("federation-box").hidden = !fed || !fed.enabled;
  if ($("federation-box").hidden) return;
  $("federation-state").textContent =
    (fed.training_allowed ? "training allowed" : "training forbidden (federated_training off)") +
    ` · ${fed.offers_sent} offers sent`;
  fillRows("federation", Object.entries(fed.models).map(([name, m]) => [
    name, m.version ?? "none yet", m.samples, m.rounds_trained,
    `${m.updates_accepted} / ${m.updates_rejected}`,
    `${m.versions_adopted} / ${m.versions_refused}`, m.last_reason || "–",
  ]));
}

function render(st) {
  $("device").textContent = st.device_id;
  $("uptime").textContent = uptime(st.uptime_s);
  $("frames").textContent = st.frames_completed;
  $("fps").textContent = fmt(st.pipeline_fps);
  setCameras(st.cameras.map((c) => c.name));
  recordGate(st.cameras, st.uptime_s);
  drawChart();
  fillRows("models", st.models.map((m) => [
    m.name + (m.loaded ? (m.enabled ? "" : " (off)") : " (not loaded)"),
    m.driver ?? "–", m.device ?? "–", fmt(m.p50_ms), fmt(m.p99_ms),
    m.inferences, m.errors, m.dropped,
  ]));
  fillRows("cameras", st.cameras.map((c) => [
    c.name, c.state, fmt(c.capture_fps), fmt(c.processed_fps), c.gated, c.skipped_static,
    c.skipped_rate, c.skipped_failed, (100 * c.motion_ratio).toFixed(2) + "%",
  ]));
  fillRows("objects", st.cameras.flatMap((c) => (c.objects || [])
    .filter((o) => o.confirmed)
    .map((o) => [c.name, "#" + o.track_id, fmt(o.score, 2), fmt(o.duration_s), o.trail.length])));
  fillRows("object-events", (st.object_events || []).slice(-10).reverse().map((e) => [
    new Date(e.timestamp).toLocaleTimeString(), e.camera, "#" + e.track_id, e.type,
    fmt(e.duration_s),
  ]));
  const box = st.outbox;
  $("outbox-state").textContent = box.available ? `${box.depth} open` : "not configured";
  $("outbox").hidden = $("jobs").hidden = !box.available;
  fillRows("outbox", Object.entries(box.counts).filter(([, n]) => n > 0));
  renderOffload(st.offload_results);
  renderTwin(st.twin);
  renderFederation(st.federation);
  $("links").replaceChildren(...(st.links.length ? st.links : [{ name: "none configured" }])
    .map((l) => {
      const li = document.createElement("li");
      li.textContent = l.connected === undefined ? l.name : `${l.name}: ${l.connected ? "up" : "DOWN"}`;
      return li;
    }));
  $("versions").textContent = Object.entries(st.versions).map(([k, v]) => `${k} ${v}`).join(" · ");
}

async function getJson(path) {
  const resp = await fetch(path, { cache: "no-store" });
  if (!resp.ok && resp.status !== 503) throw new Error(`${path}: HTTP ${resp.status}`);
  return resp.json();
}

async function pollStatus() {
  try {
    render(await getJson("/api/v1/status"));
    const ready = await getJson("/readyz");
    $("ready").textContent = ready.ready ? "ready" : "not ready";
    $("ready").className = "badge " + (ready.ready ? "ok" : "bad");
    $("error").hidden = true;
  } catch (err) {
    $("error").textContent = String(err.message || err);
    $("error").hidden = false;
  }
}

async function pollOutbox() {
  try {
    const page = await getJson("/api/v1/outbox?limit=10");
    fillRows("jobs", page.jobs.map((j) => [j.id.slice(0, 8), j.model, j.status, j.iteration, j.reason]));
  } catch (err) {
    $("error").textContent = String(err.message || err);
    $("error").hidden = false;
  }
}

$("mask").addEventListener("change", () => { $("stream").src = streamUrl(); });
$("camera").addEventListener("change", () => {
  $("stream").src = streamUrl();
  drawn.length = 0; // a mask is one camera's
  renderDrawing();
});
$("draw").addEventListener("change", renderDrawing);
$("draw-layer").addEventListener("click", addCorner);
$("draw-undo").addEventListener("click", () => { drawn.pop(); renderDrawing(); });
$("draw-clear").addEventListener("click", () => { drawn.length = 0; renderDrawing(); });
pollStatus();
pollOutbox();
setInterval(pollStatus, POLL_MS);
setInterval(pollOutbox, OUTBOX_MS);
