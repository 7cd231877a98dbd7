// Dashboard page: reads /api/tenants/{tenant}/summary and /feature-series (one request for the
// CHART_FEATURES features with the most calls) with the API key kept in sessionStorage (this tab
// only, forgotten when it closes; never localStorage), draws one chart per metric (a line per
// feature) and a summary table of every feature. Everything it shows comes from those JSON
// routes; numbers are written with textContent only.
"use strict";

const STORAGE_KEY = "analytics.apiKey"; // sessionStorage
const STORAGE_TENANT = "analytics.tenant"; // sessionStorage
const STORAGE_RANGE = "analytics.range"; // localStorage: a preference, not a secret
const CHART_FEATURES = 10; // the server's /feature-series default and the page's promise (dashboard.html)
const HOUR_MS = 3600 * 1000;
const DAY_MS = 24 * HOUR_MS;
const PRESET_MS = { "24h": DAY_MS, "7d": 7 * DAY_MS, "30d": 30 * DAY_MS };
const MAX_HOURLY_RANGE_MS = 7 * DAY_MS; // longer ranges are charted per UTC day
const PALETTE = [
  "#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed",
  "#0891b2", "#db2777", "#65a30d", "#475569", "#ea580c",
];
const METRICS = [
  { id: "calls", value: (p) => p.calls, empty: 0, integer: true },
  { id: "tokens", value: (p) => p.tokens_used, empty: 0, integer: true },
  { id: "p95", value: (p) => p.latency_p95_ms, empty: null },
  { id: "error-rate", value: (p) => (p.calls ? 100 * p.error_rate : null), empty: null },
];
const COLUMNS = [
  { field: "calls", format: formatInt },
  { field: "errors", format: formatInt },
  { field: "error_rate", format: formatPercent },
  { field: "input_tokens", format: formatInt },
  { field: "output_tokens", format: formatInt },
  { field: "tokens_used", format: formatInt },
  { field: "latency_avg_ms", format: formatMs },
  { field: "latency_p50_ms", format: formatMs },
  { field: "latency_p95_ms", format: formatMs },
  { field: "latency_p99_ms", format: formatMs },
];
const SUMMED = ["calls", "errors", "input_tokens", "output_tokens", "tokens_used"];

const $ = (id) => document.getElementById(id);
const charts = {};
let keyScope = null; // "tenant" | "admin" once the key was checked
let loadSeq = 0; // a newer load makes older answers stale

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function formatInt(value) {
  return value == null ? "–" : Math.round(value).toLocaleString("en-US");
}
function formatPercent(value) {
  return value == null ? "–" : `${(100 * value).toFixed(1)} %`;
}
function formatMs(value) {
  return value == null ? "–" : `${value.toFixed(value < 10 ? 1 : 0)} ms`;
}

async function api(path) {
  const key = $("api-key").value.trim();
  const response = await fetch(path, { headers: { Authorization: `Bearer ${key}`, Accept: "application/json" } });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) {
      // not JSON: keep the status text
    }
    throw new ApiError(response.status, detail);
  }
  return response.json();
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function selectedRange() {
  const choice = $("range").value;
  if (choice === "custom") {
    const start = Date.parse(`${$("custom-start").value}Z`);
    const end = Date.parse(`${$("custom-end").value}Z`);
    if (Number.isNaN(start) || Number.isNaN(end) || start >= end) {
      throw new Error("choose a custom range with From before To");
    }
    return { start: new Date(start), end: new Date(end) };
  }
  const end = new Date();
  return { start: new Date(end.getTime() - PRESET_MS[choice]), end };
}

function utcLabel(ms, granularity) {
  const iso = new Date(ms).toISOString();
  return granularity === "day" ? iso.slice(0, 10) : `${iso.slice(5, 10)} ${iso.slice(11, 16)}`;
}

function buckets(start, end, granularity) {
  const step = granularity === "day" ? DAY_MS : HOUR_MS;
  const out = [];
  for (let t = Math.floor(start / step) * step; t < end; t += step) out.push(t);
  return out;
}

async function checkKey() {
  const me = await api("/api/me");
  keyScope = me.scope;
  const tenant = $("tenant");
  if (me.tenant_id) {
    tenant.value = me.tenant_id;
    tenant.readOnly = true;
  } else {
    tenant.readOnly = false;
    tenant.placeholder = "any tenant (admin key)";
  }
}

async function load() {
  const seq = ++loadSeq;
  const tenant = $("tenant").value.trim();
  if (!tenant) {
    setStatus("An admin key reads any tenant: enter one.", true);
    return;
  }
  const { start, end } = selectedRange();
  const granularity = end - start > MAX_HOURLY_RANGE_MS ? "day" : "hour";
  const base = `/api/tenants/${encodeURIComponent(tenant)}`;
  const range = `start=${encodeURIComponent(start.toISOString())}&end=${encodeURIComponent(end.toISOString())}`;
  document.body.dataset.state = "loading";
  setStatus(`Loading ${tenant}…`);
  const summary = await api(`${base}/summary?${range}`);
  const charted = await api(`${base}/feature-series?${range}&granularity=${granularity}&top=${CHART_FEATURES}`);
  if (seq !== loadSeq) return; // a newer load is under way
  const features = charted.features.map((f) => f.feature_name);
  renderTable(summary);
  renderCharts(features, charted.features, Date.parse(summary.start), Date.parse(summary.end), granularity);
  const left = charted.features_with_calls - features.length;
  $("charts-top").textContent = left > 0 ? `Charts: the ${features.length} features with the most calls (${left} more in the table).` : "";
  sessionStorage.setItem(STORAGE_TENANT, tenant);
  const shown = `${utcLabel(Date.parse(summary.start), "hour")} – ${utcLabel(Date.parse(summary.end), "hour")} UTC`;
  $("summary-range").textContent = `${tenant}, ${shown}`;
  setStatus(`Updated ${new Date().toISOString().slice(11, 19)} UTC · ${summary.features.length} feature(s), per ${granularity}.`);
  document.body.dataset.state = "ready";
}

function cell(tag, text, field, value) {
  const td = document.createElement(tag);
  td.textContent = text;
  if (field) {
    td.dataset.field = field;
    td.dataset.value = value == null ? "" : String(value);
  }
  return td;
}

function renderTable(summary) {
  const rows = $("summary-rows");
  const foot = $("summary-total");
  rows.replaceChildren();
  foot.replaceChildren();
  if (!summary.features.length) {
    const tr = document.createElement("tr");
    const td = cell("td", "No events in this range.");
    td.colSpan = COLUMNS.length + 1;
    td.className = "empty";
    tr.append(td);
    rows.append(tr);
  }
  for (const feature of summary.features) {
    const tr = document.createElement("tr");
    tr.dataset.feature = feature.feature_name;
    tr.append(cell("th", feature.feature_name));
    for (const col of COLUMNS) tr.append(cell("td", col.format(feature[col.field]), col.field, feature[col.field]));
    rows.append(tr);
  }
  const total = Object.fromEntries(SUMMED.map((f) => [f, summary.features.reduce((s, r) => s + r[f], 0)]));
  total.error_rate = total.calls ? total.errors / total.calls : null;
  const tr = document.createElement("tr");
  tr.id = "total-row";
  tr.append(cell("td", "Total"));
  for (const col of COLUMNS) {
    const value = col.field in total ? total[col.field] : null;
    tr.append(cell("td", value == null && !(col.field in total) ? "" : col.format(value), col.field, value));
  }
  foot.append(tr);
}

function renderCharts(features, series, start, end, granularity) {
  if (typeof window.Chart === "undefined") return;
  const times = buckets(start, end, granularity);
  const labels = times.map((t) => utcLabel(t, granularity));
  for (const metric of METRICS) {
    const datasets = features.map((feature, i) => {
      const byBucket = new Map(series[i].points.map((p) => [Date.parse(p.bucket), p]));
      const color = PALETTE[i % PALETTE.length];
      return {
        label: feature,
        data: times.map((t) => (byBucket.has(t) ? metric.value(byBucket.get(t)) : metric.empty)),
        borderColor: color,
        backgroundColor: color,
        borderWidth: 2,
        pointRadius: times.length > 60 ? 0 : 2,
        spanGaps: false,
        tension: 0, // straight segments: the points are counts, not a curve
      };
    });
    const existing = charts[metric.id];
    if (existing) {
      existing.data.labels = labels;
      existing.data.datasets = datasets;
      existing.update();
      continue;
    }
    charts[metric.id] = new window.Chart($(`chart-${metric.id}`), {
      type: "line",
      data: { labels, datasets },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
        scales: {
          x: { title: { display: true, text: "UTC" }, ticks: { maxTicksLimit: 12 } },
          y: { beginAtZero: true, ticks: metric.integer ? { precision: 0 } : {} },
        },
      },
    });
  }
  document.body.dataset.charts = String(Object.keys(charts).length);
}

async function submit(event) {
  if (event) event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) {
    setStatus("Paste an API key first.", true);
    return;
  }
  try {
    if (keyScope === null) await checkKey();
    sessionStorage.setItem(STORAGE_KEY, key);
    await load();
  } catch (error) {
    document.body.dataset.state = "error";
    if (error instanceof ApiError && error.status === 401) {
      keyScope = null;
      setStatus(`The key was refused: ${error.message}`, true);
    } else if (error instanceof ApiError && error.status === 403) {
      setStatus(`This key cannot read that tenant: ${error.message}`, true);
    } else {
      setStatus(`Could not load the dashboard: ${error.message}`, true);
    }
  }
}

function init() {
  $("chart-features").textContent = String(CHART_FEATURES);
  if (typeof window.Chart === "undefined") {
    $("charts").hidden = true;
    $("charts-note").hidden = true;
    $("charts-unavailable").hidden = false;
    document.body.dataset.charts = "unavailable";
  }
  const now = Date.now();
  $("custom-end").value = new Date(Math.ceil(now / HOUR_MS) * HOUR_MS).toISOString().slice(0, 16);
  $("custom-start").value = new Date(Math.ceil(now / HOUR_MS) * HOUR_MS - DAY_MS).toISOString().slice(0, 16);
  $("range").value = localStorage.getItem(STORAGE_RANGE) || "24h";
  $("custom-range").hidden = $("range").value !== "custom";
  $("api-key").addEventListener("input", () => {
    keyScope = null; // a different key may have a different tenant
    $("tenant").readOnly = false;
  });
  $("range").addEventListener("change", () => {
    localStorage.setItem(STORAGE_RANGE, $("range").value);
    $("custom-range").hidden = $("range").value !== "custom";
    if ($("api-key").value) submit();
  });
  for (const id of ["custom-start", "custom-end"]) {
    $(id).addEventListener("change", () => $("api-key").value && submit());
  }
  $("key-form").addEventListener("submit", submit);
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(STORAGE_KEY);
    sessionStorage.removeItem(STORAGE_TENANT);
    $("api-key").value = "";
    $("tenant").value = "";
    $("tenant").readOnly = false;
    keyScope = null;
    setStatus("Key forgotten.");
  });
  // Keys kept by an older version of this page, which used localStorage: removed, not read.
  localStorage.removeItem(STORAGE_KEY);
  localStorage.removeItem(STORAGE_TENANT);
  const saved = sessionStorage.getItem(STORAGE_KEY);
  if (saved) {
    $("api-key").value = saved;
    $("tenant").value = sessionStorage.getItem(STORAGE_TENANT) || "";
    submit();
  }
}

init();
