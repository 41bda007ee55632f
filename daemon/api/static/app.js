// hookdrop live status page: polls the JSON API once a second (no build step, no CDN).
"use strict";

const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);

function fmt(n) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString("en-US");
}

function fmtRate(r) {
  if (r === null || r === undefined) return "–";
  return r >= 100 ? Math.round(r).toLocaleString("en-US") : Number(r).toFixed(1);
}

function fmtEta(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return "0 s";
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

async function getJSON(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) throw new Error("unauthorized: open this page as /?token=<HOOKDROP_API_TOKEN>");
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

function renderOverview(o) {
  $("rate-now").textContent = fmtRate(o.delivered_per_second);
  const limit = o.rate_limit.current || o.rate_limit.configured;
  $("rate-limit").textContent = limit ? fmtRate(limit) + "/s" : "none";
  const bp = $("backpressure");
  bp.textContent = o.backpressure.active ? "active" : "off";
  bp.className = "value " + (o.backpressure.active ? "active" : "off");
  $("backpressure-left").textContent = o.backpressure.active
    ? o.backpressure.seconds_left.toFixed(1) + " s left" : "receiver keeping up";
  $("dlq").textContent = fmt(o.dlq);
  $("dead").textContent = fmt(o.dead);
  $("files-active").textContent = fmt(o.files.active);
  $("files-done").textContent = fmt(o.files.done);
  $("files-failed").textContent = fmt(o.files.failed);
  $("delivered-total").textContent = fmt(o.files.delivered);
  $("alerts-total").textContent = fmt(o.files.alerts);
  $("queue-notifier").textContent = fmt(o.queues.notifier);
  $("queue-batcher").textContent = fmt(o.queues.batcher);
  $("workers").textContent = fmt(o.workers.batcher) + " batcher, " + fmt(o.workers.notifier) + " notifier";
}

function renderChart(t) {
  const series = t.series;
  const width = 600, height = 140, pad = 6;
  const max = Math.max(1, ...series.map((p) => Math.max(p.ok, p.throttled)));
  const x = (i) => (series.length <= 1 ? 0 : (i / (series.length - 1)) * width);
  const y = (v) => height - pad - (v / max) * (height - 2 * pad);
  const path = (key) => series.map((p, i) => (i ? "L" : "M") + x(i).toFixed(1) + " " + y(p[key]).toFixed(1)).join(" ");
  $("chart-ok").setAttribute("d", path("ok"));
  $("chart-throttled").setAttribute("d", path("throttled"));
  const grid = $("chart-grid");
  grid.replaceChildren();
  for (const f of [0.25, 0.5, 0.75]) {
    const line = document.createElementNS("http://www.w3.org/2000/svg", "line");
    line.setAttribute("x1", 0); line.setAttribute("x2", width);
    line.setAttribute("y1", y(max * f)); line.setAttribute("y2", y(max * f));
    grid.appendChild(line);
  }
  $("chart-max").textContent = "peak " + fmt(max) + "/s";
}

function cell(text, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.textContent = text;
  return td;
}

function segment(cls, part, total, title) {
  const span = document.createElement("span");
  span.className = cls;
  span.style.width = (total > 0 ? (100 * part) / total : 0) + "%";
  span.title = title + ": " + fmt(part);
  return span;
}

function fileRow(f) {
  const c = f.counts;
  const tr = document.createElement("tr");
  tr.dataset.fileId = f.id;
  tr.dataset.status = f.status;
  tr.dataset.percent = f.percent;
  tr.appendChild(cell(f.id, "num"));
  const name = cell(f.name, "name");
  name.title = f.error ? f.name + " — " + f.error : f.name;
  tr.appendChild(name);
  tr.appendChild(cell(f.endpoint));
  const st = document.createElement("td");
  const badge = document.createElement("span");
  badge.className = "status " + (f.paused ? "paused" : f.status);
  badge.textContent = f.paused ? "paused" : f.status;
  st.appendChild(badge);
  tr.appendChild(st);

  const progress = document.createElement("td");
  const wrap = document.createElement("div");
  wrap.className = "progress";
  const bar = document.createElement("div");
  bar.className = "bar";
  const total = f.finished && c.alerts === 0 ? 0 : c.alerts;
  bar.append(
    segment("delivered", c.delivered, total, "delivered"),
    segment("failed", c.rejected + c.dead, total, "rejected or dead"),
    segment("dlq", c.dlq, total, "in DLQ"),
    segment("cancelled", c.cancelled, total, "cancelled"),
  );
  if (f.finished && c.alerts === 0) bar.firstChild.style.width = "100%";
  const pct = document.createElement("span");
  pct.className = "percent";
  pct.textContent = f.percent + "%";
  wrap.append(bar, pct);
  progress.appendChild(wrap);
  tr.appendChild(progress);

  tr.appendChild(cell(fmt(c.delivered) + " / " + fmt(c.alerts), "num"));
  tr.appendChild(cell(fmt(c.invalid), "num"));
  tr.appendChild(cell(fmt(c.dlq), "num"));
  tr.appendChild(cell(fmt(c.dead), "num"));
  tr.appendChild(cell(fmt(c.rejected), "num"));
  tr.appendChild(cell(f.finished ? "–" : fmtRate(f.rate) + "/s", "num"));
  tr.appendChild(cell(f.finished ? "done" : fmtEta(f.eta_seconds), "num"));
  return tr;
}

function endpointRow(e) {
  const tr = document.createElement("tr");
  const c = e.counts;
  const bp = e.backpressure;
  const br = e.breaker;
  let breaker = br.state;
  if (br.state !== "closed" && br.probe_in !== null) {
    breaker += " (probe in " + Math.max(0, br.probe_in).toFixed(0) + " s)";
  }
  tr.append(
    cell(e.name),
    cell(e.url || "(not configured)"),
    cell(e.rate_limit.configured === null ? "–" : fmtRate(e.rate_limit.configured) + "/s", "num"),
    cell(e.rate_limit.current === null ? "–" : fmtRate(e.rate_limit.current) + "/s", "num"),
    cell(bp.active ? bp.seconds_left.toFixed(1) + " s left" : "off"),
    cell(breaker),
    cell(fmt(c.delivered), "num"),
    cell(fmt(c.deferred || 0), "num"),
    cell(fmt(c.dlq || 0), "num"),
    cell(fmt(c.dead), "num"),
  );
  tr.children[5].className = "breaker " + br.state;
  return tr;
}

function renderEndpoints(list) {
  const body = document.querySelector("#endpoints tbody");
  if (!list.endpoints.length) return;
  body.replaceChildren(...list.endpoints.map(endpointRow));
}

function renderFiles(list) {
  const body = document.querySelector("#files tbody");
  if (!list.files.length) return;
  body.replaceChildren(...list.files.map(fileRow));
}

function showError(message) {
  let banner = document.querySelector(".error-banner");
  if (!message) { if (banner) banner.remove(); return; }
  if (!banner) {
    banner = document.createElement("div");
    banner.className = "error-banner";
    document.querySelector("main").prepend(banner);
  }
  banner.textContent = message;
}

async function refresh() {
  const conn = $("connection");
  try {
    const [overview, files, throughput, endpoints] = await Promise.all([
      getJSON("/overview"), getJSON("/files?limit=50"), getJSON("/throughput"),
      getJSON("/endpoints"),
    ]);
    renderOverview(overview);
    renderEndpoints(endpoints);
    renderFiles(files);
    renderChart(throughput);
    conn.textContent = "live";
    conn.className = "pill live";
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    showError(null);
  } catch (err) {
    conn.textContent = "disconnected";
    conn.className = "pill down";
    showError(String(err.message || err));
  } finally {
    setTimeout(refresh, POLL_MS);
  }
}

refresh();
