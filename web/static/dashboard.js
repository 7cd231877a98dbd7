// Dashboard page: reads /api/tenants/{tenant}/summary and /feature-series (one request for the
// CHART_FEATURES features with the most calls) with the API key kept in sessionStorage (this tab
// only, forgotten when it closes; never localStorage), draws one chart per metric (a line per
// feature) and a summary table of every feature (latency and, over the streamed calls, time to
// first token). Cost comes from /cost (per feature with the
// previous period, per model, per hour or day, per user) and /active-users; the feature and model
// filters apply to those. Amounts arrive as decimal strings and are shown by rounding the string
// (formatUsd), never through a float; only the chart's y-values use Number(). Everything it shows
// comes from those JSON routes; names and numbers are written with textContent only.
"use strict";

const STORAGE_KEY = "analytics.apiKey"; // sessionStorage
const STORAGE_TENANT = "analytics.tenant"; // sessionStorage
const STORAGE_RANGE = "analytics.range"; // localStorage: a preference, not a secret
const ALERT_HISTORY_ROWS = 20; // the recent state changes listed
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
  // Time to first token: over the feature's streamed calls only ("–" when none streamed).
  { field: "ttft_p50_ms", format: formatMs },
  { field: "ttft_p95_ms", format: formatMs },
];
const SUMMED = ["calls", "errors", "input_tokens", "output_tokens", "tokens_used"];
const COST_COLUMNS = ["cost_usd", "cost_per_call_usd", "cost_per_1k_tokens_usd"];
const TOP_USERS = 10; // users listed by cost
// Amounts: at least MIN_PLACES decimals, SIGNIFICANT digits past a fraction's leading zeros, at most MAX_PLACES
// (the API's ratios have 12); the exact string stays in the cell's data-value and title.
const MIN_PLACES = 4;
const SIGNIFICANT = 4;
const MAX_PLACES = 12;
const SHOWN_MIN_PLACES = 2; // trailing zeros trimmed down to cents
const UNPRICED_COLOR = "#b91c1c";
const AXIS_DIGITS = 3; // significant digits of the cost chart's axis labels (a scale, not an amount)

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

function decimal(text) {
  // A decimal string as an integer and its scale: exact, whatever its length.
  const match = /^(-?)(\d+)(?:\.(\d*))?$/.exec(text);
  if (!match) throw new Error(`not a decimal amount: ${text}`);
  const [, sign, whole, fraction = ""] = match;
  return { sign, whole, fraction, units: BigInt(`${sign}${whole}${fraction}`), scale: fraction.length };
}

function decimalText(units, scale) {
  const digits = (units < 0n ? -units : units).toString().padStart(scale + 1, "0");
  const point = digits.length - scale;
  return `${units < 0n ? "-" : ""}${digits.slice(0, point)}${scale ? "." + digits.slice(point) : ""}`;
}

function subtract(a, b) {
  // a - b of two decimal strings, exactly.
  const x = decimal(a);
  const y = decimal(b);
  const scale = Math.max(x.scale, y.scale);
  return decimalText(x.units * 10n ** BigInt(scale - x.scale) - y.units * 10n ** BigInt(scale - y.scale), scale);
}

function formatUsd(text, signed = false) {
  // "$1,234.5678" from a decimal string, rounded half up on the string itself.
  if (text == null) return "–";
  const { sign, whole, fraction } = decimal(text);
  const zeros = /^0*$/.test(whole) ? fraction.match(/^0*/)[0].length : 0;
  const places = Math.min(MAX_PLACES, Math.max(MIN_PLACES, zeros + SIGNIFICANT));
  let units = BigInt(whole + fraction.padEnd(places, "0").slice(0, places));
  if ((fraction[places] || "0") >= "5") units += 1n;
  const [intPart, fracPart = ""] = decimalText(units, places).split(".");
  const cents = fracPart.replace(/0+$/, "").padEnd(SHOWN_MIN_PLACES, "0");
  const grouped = intPart.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  const shownSign = sign && units !== 0n ? "-" : signed ? "+" : "";
  return `${shownSign}$${grouped}.${cents}`;
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

function query(params) {
  return new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v != null)).toString();
}

async function loadCost(base, range, granularity) {
  // The cost figures; null (and the reason in #cost-status) when the cost routes fail, so usage still shows.
  const feature = $("filter-feature").value;
  const model = $("filter-model").value;
  const filters = { ...range, feature, model };
  try {
    const [byFeature, byModel, byTime, byUser, active] = await Promise.all([
      api(`${base}/cost?${query({ ...filters, group_by: "feature", compare: "true" })}`),
      api(`${base}/cost?${query({ ...range, feature, group_by: "model" })}`), // every model: the filter's list
      api(`${base}/cost?${query({ ...filters, group_by: granularity })}`),
      api(`${base}/cost?${query({ ...filters, group_by: "user", top: TOP_USERS })}`),
      api(`${base}/active-users?${query({ ...range, feature })}`),
    ]);
    return { byFeature, byModel, byTime, byUser, active, feature, model };
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) throw error;
    $("cost-status").textContent = `Cost could not be loaded: ${error.message}`;
    $("cost-status").classList.add("error");
    return null;
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
  const range = { start: start.toISOString(), end: end.toISOString() };
  document.body.dataset.state = "loading";
  document.body.dataset.cost = "loading";
  setStatus(`Loading ${tenant}…`);
  $("cost-status").textContent = "";
  $("cost-status").classList.remove("error");
  const [summary, charted, cost] = await Promise.all([
    api(`${base}/summary?${query(range)}`),
    api(`${base}/feature-series?${query({ ...range, granularity, top: CHART_FEATURES })}`),
    loadCost(base, range, granularity),
  ]);
  if (seq !== loadSeq) return; // a newer load is under way
  loadAlerts(base, seq); // on its own: a failure there only shows in #alerts-status
  const features = charted.features.map((f) => f.feature_name);
  fillFilter($("filter-feature"), summary.features.map((f) => f.feature_name));
  renderTable(summary, cost && cost.byFeature);
  renderCost(cost, granularity);
  renderCharts(features, charted.features, Date.parse(summary.start), Date.parse(summary.end), granularity);
  const left = charted.features_with_calls - features.length;
  $("charts-top").textContent = left > 0 ? `Charts: the ${features.length} features with the most calls (${left} more in the table).` : "";
  sessionStorage.setItem(STORAGE_TENANT, tenant);
  const shown = `${utcLabel(Date.parse(summary.start), "hour")} – ${utcLabel(Date.parse(summary.end), "hour")} UTC`;
  $("summary-range").textContent = `${tenant}, ${shown}`;
  setStatus(`Updated ${new Date().toISOString().slice(11, 19)} UTC · ${summary.features.length} feature(s), per ${granularity}.`);
  document.body.dataset.state = "ready";
}

async function loadAlerts(base, seq) {
  // The tenant's alert rules and recent state changes; a failure is shown in the panel, never breaks the page.
  document.body.dataset.alerts = "loading";
  $("alerts-status").textContent = "";
  $("alerts-status").classList.remove("error");
  try {
    const [rules, changes] = await Promise.all([
      api(`${base}/alert-rules`),
      api(`${base}/alert-history?${query({ limit: ALERT_HISTORY_ROWS })}`),
    ]);
    if (seq !== loadSeq) return;
    renderAlerts(rules, changes);
    document.body.dataset.alerts = "ready";
  } catch (error) {
    if (seq !== loadSeq) return;
    renderAlerts([], []);
    $("alerts-empty").hidden = true;
    $("alerts-status").textContent = `Alerts could not be loaded: ${error.message}`;
    $("alerts-status").classList.add("error");
    document.body.dataset.alerts = "error";
  }
}

function stateCell(state) {
  const td = cell("td", state || "not evaluated", "state", state);
  td.className = `state state-${state || "none"}`;
  return td;
}

function renderAlerts(rules, changes) {
  const ruleRows = $("alert-rule-rows");
  const historyRows = $("alert-history-rows");
  ruleRows.replaceChildren();
  historyRows.replaceChildren();
  $("alerts-empty").hidden = rules.length > 0;
  for (const rule of rules) {
    const tr = document.createElement("tr");
    tr.dataset.rule = String(rule.id);
    const scope = [rule.feature, rule.model, rule.metric].filter(Boolean).join(" / ") || "all";
    tr.append(
      cell("td", rule.name, "name", rule.name),
      cell("td", rule.kind, "kind", rule.kind),
      cell("td", scope, "scope", scope),
      cell("td", rule.warning_threshold, "warning_threshold", rule.warning_threshold),
      cell("td", rule.critical_threshold, "critical_threshold", rule.critical_threshold),
      stateCell(rule.state),
      cell("td", rule.value == null ? "–" : rule.value, "value", rule.value),
    );
    ruleRows.append(tr);
  }
  if (!rules.length) emptyRow(ruleRows, 7, "No rules.");
  for (const change of changes) {
    const tr = document.createElement("tr");
    tr.dataset.change = String(change.id);
    tr.append(
      cell("td", change.at.slice(0, 19).replace("T", " "), "at", change.at),
      cell("td", change.rule_name, "rule_name", change.rule_name),
      cell("td", `${change.from_state} → ${change.to_state}`, "change", `${change.from_state}>${change.to_state}`),
      cell("td", change.value == null ? "–" : change.value, "value", change.value),
    );
    historyRows.append(tr);
  }
  if (!changes.length) emptyRow(historyRows, 4, "No state changes yet.");
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

function moneyCell(field, figures) {
  return showMoney(document.createElement("td"), field, figures);
}

function showMoney(element, field, figures) {
  // An amount of one row of /cost: the exact string in data-value and title, the rounded text, ≈ when
  // approximate, and "unpriced" (never $0) when none of the row's calls has a price.
  const value = figures ? figures[field] : null;
  element.dataset.field = field;
  element.dataset.value = value == null ? "" : value;
  element.title = value == null ? "" : `$${value} exactly`;
  element.className = "";
  if (!figures) {
    element.textContent = "";
    element.title = "no calls match the filters";
  } else if (value == null) {
    element.textContent = figures.unpriced_calls > 0 ? "unpriced" : "–";
    if (figures.unpriced_calls > 0) element.className = "unpriced";
  } else {
    element.textContent = formatUsd(value);
    if (figures.approximate) element.prepend(span("approx-mark", "≈", "approximate: a price changes within the hour or day this figure covers"));
    if (field === "cost_usd" && figures.unpriced_calls > 0) {
      element.append(span("unpriced", ` + ${formatInt(figures.unpriced_calls)} unpriced calls`));
    }
  }
  element.dataset.approximate = String(Boolean(figures && figures.approximate && value != null));
  return element;
}

function span(className, text, title = "") {
  const element = document.createElement("span");
  element.className = className;
  element.textContent = text;
  element.title = title;
  return element;
}

function emptyRow(tbody, columns, text) {
  const tr = document.createElement("tr");
  const td = cell("td", text);
  td.colSpan = columns;
  td.className = "empty";
  tr.append(td);
  tbody.append(tr);
}

function fillFilter(select, names) {
  // The choices of a filter: "all" first, then each name (the chosen one kept even if absent now).
  const chosen = select.value;
  const all = select.options[0];
  const choices = [...new Set([...names, ...(chosen ? [chosen] : [])])].sort();
  select.replaceChildren(all, ...choices.map((name) => new Option(name === "" ? "(no model)" : name, name)));
  select.value = chosen;
}

function renderTable(summary, costs) {
  const rows = $("summary-rows");
  const foot = $("summary-total");
  rows.replaceChildren();
  foot.replaceChildren();
  if (!summary.features.length) emptyRow(rows, COLUMNS.length + COST_COLUMNS.length + 1, "No events in this range.");
  const costOf = new Map((costs ? costs.rows : []).map((row) => [row.feature, row]));
  for (const feature of summary.features) {
    const tr = document.createElement("tr");
    tr.dataset.feature = feature.feature_name;
    tr.append(cell("th", feature.feature_name));
    for (const col of COLUMNS) tr.append(cell("td", col.format(feature[col.field]), col.field, feature[col.field]));
    for (const field of COST_COLUMNS) tr.append(moneyCell(field, costOf.get(feature.feature_name)));
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
  for (const field of COST_COLUMNS) tr.append(moneyCell(field, costs && costs.total));
  foot.append(tr);
}

function renderCost(cost, granularity) {
  for (const id of ["model-rows", "user-rows", "active-rows"]) $(id).replaceChildren();
  for (const id of ["cost-total", "cost-previous", "cost-change", "cost-filters", "users-range"]) $(id).textContent = "";
  $("unpriced").hidden = true;
  if (!cost) {
    document.body.dataset.cost = "error";
    return;
  }
  const { byFeature, byModel, byTime, byUser, active } = cost;
  const total = byFeature.total;
  fillFilter($("filter-model"), byModel.rows.map((row) => row.model).filter((name) => name !== ""));
  const filters = [cost.feature && `feature ${cost.feature}`, cost.model && `model ${cost.model}`].filter(Boolean);
  $("cost-filters").textContent = filters.length ? `(${filters.join(", ")})` : "";
  renderOverview(total, byFeature.previous);
  renderUnpriced(total, byModel.rows, byFeature.unpriced_advice);
  renderModels(byModel.rows.filter((row) => !cost.model || row.model === cost.model));
  renderUsers(byUser);
  renderActive(active);
  renderCostChart(byTime, granularity);
  document.body.dataset.cost = "ready";
}

function renderOverview(total, previous) {
  // Now against the period of the same length just before: no calls is $0; calls without any price have no cost.
  const before = previous.total;
  showMoney($("cost-total"), "cost_usd", total || { cost_usd: "0", unpriced_calls: 0 });
  showMoney($("cost-previous"), "cost_usd", before || { cost_usd: "0", unpriced_calls: 0 });
  $("cost-previous").title = `${previous.start} – ${previous.end}`;
  const change = $("cost-change");
  const now = total ? total.cost_usd : "0";
  const then = before ? before.cost_usd : "0";
  if (now == null || then == null) {
    change.textContent = "– (no priced calls to compare)";
    change.dataset.value = "";
    return;
  }
  const diff = subtract(now, then);
  change.dataset.value = diff;
  const percent = Number(then) ? ` (${formatSignedPercent((100 * Number(diff)) / Number(then))})` : "";
  change.textContent = `${formatUsd(diff, true)}${percent}`;
  if ([total, before].some((t) => t && t.unpriced_calls > 0)) change.append(span("unpriced", " (unpriced calls left out)"));
}

function formatSignedPercent(value) {
  return `${value > 0 ? "+" : ""}${value.toFixed(1)} %`;
}

function renderUnpriced(total, models, advice) {
  if (!total || !(total.unpriced_calls > 0)) return;
  $("unpriced-summary").textContent =
    ` ${formatInt(total.unpriced_calls)} call(s), ${formatInt(total.unpriced_tokens)} tokens, use models without a` +
    " price: they are not in the cost figures (not counted as $0).";
  const byName = new Map(models.map((row) => [row.model, row]));
  $("unpriced-models").replaceChildren(...total.unpriced_models.map((name) => {
    const li = document.createElement("li");
    const row = byName.get(name);
    li.dataset.model = name;
    li.textContent = row
      ? `${name || "(no model)"}: ${formatInt(row.unpriced_calls)} calls, ${formatInt(row.unpriced_tokens)} tokens`
      : name || "(no model)";
    return li;
  }));
  $("unpriced-advice").textContent = advice || "";
  $("unpriced").hidden = false;
}

function renderModels(rows) {
  const body = $("model-rows");
  if (!rows.length) emptyRow(body, 7, "No calls in this range.");
  for (const row of rows) {
    const tr = document.createElement("tr");
    tr.dataset.model = row.model;
    tr.append(cell("th", row.model === "" ? "(no model)" : row.model));
    tr.append(cell("td", formatInt(row.calls), "calls", row.calls));
    tr.append(cell("td", formatInt(row.tokens_used), "tokens_used", row.tokens_used));
    for (const field of COST_COLUMNS) tr.append(moneyCell(field, row));
    const flag = row.unpriced_calls === 0 ? "yes" : row.priced_calls === 0 ? "UNPRICED" : "partly";
    const td = cell("td", flag, "unpriced_calls", row.unpriced_calls);
    if (row.unpriced_calls) td.classList.add("unpriced");
    tr.append(td);
    body.append(tr);
  }
}

function renderUsers(answer) {
  const body = $("user-rows");
  const lastDay = new Date(Date.parse(answer.end) - DAY_MS).toISOString().slice(0, 10); // the end is exclusive
  $("users-range").textContent = `(whole UTC days ${answer.start.slice(0, 10)} – ${lastDay})`;
  if (!answer.rows.length) emptyRow(body, 5, "No calls in this range.");
  for (const row of answer.rows) {
    const tr = document.createElement("tr");
    tr.dataset.user = row.user == null ? "" : row.user;
    tr.append(cell("th", row.user == null || row.user === "" ? "(no user)" : row.user));
    tr.append(cell("td", formatInt(row.calls), "calls", row.calls));
    tr.append(cell("td", formatInt(row.tokens_used), "tokens_used", row.tokens_used));
    tr.append(moneyCell("cost_usd", row));
    tr.append(cell("td", formatInt(row.unpriced_calls), "unpriced_calls", row.unpriced_calls));
    body.append(tr);
  }
}

function renderActive(answer) {
  const body = $("active-rows");
  if (!answer.days.length) emptyRow(body, 3, "No users in this range.");
  for (const row of answer.days) {
    const tr = document.createElement("tr");
    tr.dataset.day = row.day.slice(0, 10);
    tr.dataset.feature = row.feature_name;
    tr.append(cell("th", row.day.slice(0, 10)));
    tr.append(cell("td", row.feature_name));
    tr.append(cell("td", formatInt(row.users), "users", row.users));
    body.append(tr);
  }
}

function renderCostChart(answer, granularity) {
  $("cost-granularity").textContent = granularity;
  $("cost-granularity-gap").textContent = granularity;
  if (typeof window.Chart === "undefined") return;
  const times = buckets(Date.parse(answer.start), Date.parse(answer.end), granularity);
  const byBucket = new Map(answer.rows.map((row) => [Date.parse(row[granularity]), row]));
  // No calls: $0. Calls with no price at all: a gap, never 0. Buckets with unpriced calls: red points.
  const data = times.map((t) => {
    const row = byBucket.get(t);
    return row ? (row.cost_usd == null ? null : Number(row.cost_usd)) : 0;
  });
  const flagged = times.map((t) => (byBucket.has(t) && byBucket.get(t).unpriced_calls > 0 ? UNPRICED_COLOR : PALETTE[0]));
  const dataset = {
    label: "Cost (USD), priced calls", data, borderColor: PALETTE[0], backgroundColor: flagged,
    pointBackgroundColor: flagged, pointBorderColor: flagged, borderWidth: 2, pointRadius: times.length > 60 ? 1 : 3,
    spanGaps: false, tension: 0,
  };
  const labels = times.map((t) => utcLabel(t, granularity));
  if (charts.cost) {
    charts.cost.data.labels = labels;
    charts.cost.data.datasets = [dataset];
    charts.cost.update();
    return;
  }
  charts.cost = new window.Chart($("chart-cost"), {
    type: "line",
    data: { labels, datasets: [dataset] },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
      scales: {
        x: { title: { display: true, text: "UTC" }, ticks: { maxTicksLimit: 12 } },
        y: { beginAtZero: true, ticks: { callback: (value) => `$${Number(value.toPrecision(AXIS_DIGITS))}` } },
      },
    },
  });
  document.body.dataset.charts = String(Object.keys(charts).length);
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
    $("cost-chart-box").hidden = true;
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
  for (const id of ["custom-start", "custom-end", "filter-feature", "filter-model"]) {
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
