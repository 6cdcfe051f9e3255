// flpg dashboard: renders the JSON of /api/* and fetches a part again only when the
// server's event stream (/events, driven by LISTEN/NOTIFY) says it changed.
// Every value is inserted as text, never as HTML.
"use strict";

const $ = (sel) => document.querySelector(sel);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function fmtTime(epoch) {
  return epoch ? new Date(epoch * 1000).toLocaleString() : "";
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return "";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function banner(message) {
  const box = $("#banner");
  box.textContent = message || "";
  box.hidden = !message;
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) {
    banner(body.error || `${response.status} ${response.statusText}`);
    throw new Error(body.error || response.statusText);
  }
  banner("");
  return body;
}

// One call at a time per part; a change announced meanwhile runs it once more after.
function refresher(fn) {
  let running = false;
  let again = false;
  const go = async () => {
    if (running) { again = true; return; }
    running = true;
    try { await fn(); } catch (err) { console.warn(err); }
    running = false;
    if (again) { again = false; go(); }
  };
  return go;
}

// The server's events: {name: handler(data)}; after a reconnect every handler runs.
function live(handlers) {
  const badge = $("#live");
  const source = new EventSource("/events");
  let lost = false;
  source.addEventListener("hello", () => {
    badge.textContent = "live";
    badge.className = "live on";
    if (lost) Object.values(handlers).forEach((h) => h(""));
    lost = false;
  });
  source.onerror = () => {
    lost = true;
    badge.textContent = "reconnecting";
    badge.className = "live off";
  };
  for (const [name, handler] of Object.entries(handlers)) {
    source.addEventListener(name, (event) => handler(event.data));
  }
  window.flpgEvents = source;
}

function statusBadge(status) {
  return el("span", status, `status ${status}`);
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell ?? "";
    tr.appendChild(td);
  }
  return tr;
}

function fillTable(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function rounds(run) {
  return `${run.rounds_done ?? 0}/${run.rounds_total ?? "?"}`;
}

// Durations of runs that have not ended keep counting between updates, in the browser.
function ticking(cell, seconds, running, suffix = "") {
  cell.dataset.base = seconds ?? "";
  cell.dataset.since = String(Date.now() / 1000);
  cell.dataset.running = running ? "1" : "";
  cell.dataset.suffix = suffix;
  cell.textContent = seconds === null || seconds === undefined ? "" : fmtSeconds(seconds) + suffix;
  cell.classList.add("ticking");
  return cell;
}

setInterval(() => {
  for (const cell of document.querySelectorAll(".ticking")) {
    if (!cell.dataset.running || cell.dataset.base === "") continue;
    const elapsed = Date.now() / 1000 - Number(cell.dataset.since);
    cell.textContent = fmtSeconds(Number(cell.dataset.base) + elapsed) + cell.dataset.suffix;
  }
}, 1000);

// ---------------------------------------------------------------- runs page

function runsPage() {
  const form = $("#filters");
  const params = new URLSearchParams(location.search);
  for (const name of ["q", "status", "user", "app"]) {
    if (params.get(name)) form.elements[name].value = params.get(name);
  }
  const setOptions = (select, values) => {
    const current = select.value || params.get(select.name) || "";
    const first = select.options[0];
    const all = new Set(values);
    if (current) all.add(current);
    select.replaceChildren(first, ...[...all].sort().map((v) => el("option", v)));
    select.value = current;
  };
  const load = refresher(async () => {
    const query = new URLSearchParams();
    for (const name of ["q", "status", "user", "app"]) {
      if (form.elements[name].value) query.set(name, form.elements[name].value);
    }
    history.replaceState(null, "", query.toString() ? `?${query}` : location.pathname);
    const data = await getJSON(`/api/runs?${query}`);
    setOptions(form.elements.user, data.users);
    setOptions(form.elements.app, data.apps);
    fillTable($("#runs tbody"), data.runs.map((r) => {
      const link = el("a", r.run_id);
      link.href = `/runs/${r.run_id}`;
      const running = ["pending", "starting", "running"].includes(r.status);
      const tr = row([link, statusBadge(r.status), r.user, r.app_name, r.num_nodes, rounds(r),
        ticking(el("span"), r.duration_s, running && r.started_at), r.reason]);
      tr.dataset.run = r.run_id;
      tr.dataset.status = r.status;
      return tr;
    }));
    $("#empty").hidden = data.runs.length > 0;
  });
  form.addEventListener("input", load);
  form.addEventListener("submit", (event) => { event.preventDefault(); load(); });
  load();
  live({ runs: load });
}

// ---------------------------------------------------------------- run page

const PHASES = [
  ["train", "train (client-side, aggregated)"],
  ["evaluate", "evaluate (client-side, aggregated)"],
  ["server_evaluate", "evaluate (server-side)"],
];
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04",
  "#db2777"];

function metricValue(value) {
  if (typeof value === "number") return value;
  if (typeof value === "string") {
    const parsed = Number(value);
    return Number.isFinite(parsed) ? parsed : null;
  }
  return null;  // lists and other values are not plotted
}

function chartData(records, phase) {
  const mine = records.filter((r) => r.phase === phase);
  const keys = [...new Set(mine.flatMap((r) => Object.keys(r.metrics)
    .filter((k) => metricValue(r.metrics[k]) !== null)))].sort();
  const xs = mine.map((r) => r.round);
  const series = keys.map((k) => mine.map((r) => metricValue(r.metrics[k])));
  return { keys, xs, data: [xs, ...series] };
}

const charts = {};
const ROUND_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];

function drawChart(box, phase, title, records) {
  const { keys, xs, data } = chartData(records, phase);
  let holder = box.querySelector(`[data-phase="${phase}"]`);
  if (!keys.length) { if (holder) holder.remove(); delete charts[phase]; return; }
  if (!holder) {
    holder = el("figure", null, "chart");
    holder.dataset.phase = phase;
    holder.appendChild(el("figcaption", title));
    const order = PHASES.map(([p]) => p);
    const later = [...box.children].find(
      (c) => order.indexOf(c.dataset.phase) > order.indexOf(phase));
    box.insertBefore(holder, later || null);
  }
  holder.dataset.points = String(xs.length);
  holder.dataset.metrics = keys.join(",");
  const existing = charts[phase];
  if (existing && existing.keys === keys.join(",")) { existing.plot.setData(data); return; }
  if (existing) existing.plot.destroy();
  const options = {
    width: Math.max(320, Math.min(box.clientWidth - 16, 560)),
    height: 220,
    scales: { x: { time: false } },
    axes: [{ label: "round", incrs: ROUND_STEPS }, {}],
    series: [{ label: "round" }, ...keys.map((k, i) => ({
      label: k, stroke: COLORS[i % COLORS.length], width: 2, points: { show: true, size: 6 },
    }))],
  };
  charts[phase] = { keys: keys.join(","), plot: new uPlot(options, data, holder) };
}

function summaryItems(dl, items) {
  dl.replaceChildren(...items.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
}

function runSummary(run) {
  $("#status").replaceChildren(statusBadge(run.status));
  document.body.dataset.status = run.status;
  const checkpoint = run.checkpoint_round === null ? "none"
    : `round ${run.checkpoint_round} (attempt ${run.checkpoint_attempt}, ` +
      `${run.checkpoint_arrays} arrays, ${fmtBytes(run.checkpoint_bytes)}, ` +
      `saved ${fmtTime(run.checkpoint_saved_at)})`;
  summaryItems($("#summary"), [
    ["app", `${run.app_name} (${run.app_hash.slice(0, 12)})`], ["user", run.role === run.user ? run.user : `${run.user} (role ${run.role})`],
    ["rounds", rounds(run)], ["nodes", run.num_nodes],
    ["attempt", `${run.attempt} of at most ${run.max_restarts + 1}`],
    ["submitted", fmtTime(run.submitted_at)], ["started", fmtTime(run.started_at)],
    ["finished", fmtTime(run.finished_at)], ["duration", fmtSeconds(run.duration_s)],
    ["reason", run.reason || ""], ["checkpoint", checkpoint],
    ["run config", JSON.stringify(run.run_config)],
  ]);
  showAccounting(run.accounting);
}

// Accounting views (run_accounting, node_accounting) are shown as they come, if present:
// the columns named here first, then any other.
const ACCOUNTING = ["node_id", "node_name", "instructions", "replies", "messages", "bytes_sent",
  "bytes_received", "clientapp_seconds", "serverapp_seconds", "wait_seconds", "queue_seconds",
  "launches"];
const HIDDEN = new Set(["run_id", "submitted_by", "status"]);

function accountingKeys(object) {
  const keys = Object.keys(object || {}).filter((k) => !HIDDEN.has(k));
  const rank = (k) => (ACCOUNTING.includes(k) ? ACCOUNTING.indexOf(k) : ACCOUNTING.length);
  return keys.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
}

function accountingValue(key, value) {
  if (typeof value !== "number") return value;
  if (/bytes/.test(key)) return fmtBytes(value);
  return /seconds$/.test(key) ? fmtSeconds(value) : value;
}

function showAccounting(acc) {
  $("#accounting-box").hidden = !acc;
  if (!acc) return;
  const own = accountingKeys(acc.run);
  summaryItems($("#accounting"), own.map((k) => [k.replaceAll("_", " "),
    accountingValue(k, acc.run[k])]));
  const cols = acc.nodes.length ? accountingKeys(acc.nodes[0]) : [];
  $("#node-accounting thead").replaceChildren(row(cols.map((c) => el("b", c.replaceAll("_", " ")))));
  fillTable($("#node-accounting tbody"),
    acc.nodes.map((n) => row(cols.map((c) => accountingValue(c, n[c])))));
}

function runPage() {
  const runId = $("#run").dataset.run;
  const base = `/api/runs/${runId}`;
  let lastLog = 0;
  const loadRun = refresher(async () => runSummary(await getJSON(base)));
  const loadRounds = refresher(async () => {
    const records = await getJSON(`${base}/rounds`);
    $("#no-rounds").hidden = records.length > 0;
    for (const [phase, title] of PHASES) drawChart($("#charts"), phase, title, records);
  });
  const loadSelection = refresher(async () => {
    const data = await getJSON(`${base}/selection`);
    fillTable($("#selection tbody"), data.nodes.map((n) => row([
      `${n.node_id}: ${n.name}`, statusBadge(n.status), n.instructions, n.queued, n.claimed,
      n.replies_ok, n.replies_error, fmtSeconds(n.mean_queue_wait_s),
      fmtSeconds(n.mean_handle_s), fmtSeconds(n.mean_round_trip_s),
      fmtSeconds(n.max_round_trip_s)])));
    fillTable($("#messages tbody"), data.messages.map((m) => row([
      m.message_id, m.node_id, m.group_id, m.message_type, m.state, m.attempts,
      fmtSeconds(m.queue_wait_s), fmtSeconds(m.handle_s), fmtSeconds(m.round_trip_s),
      m.error_code === null ? "" : `${m.error_code}: ${m.error_reason}`])));
  });
  const loadLog = refresher(async () => {
    const pre = $("#log");
    for (;;) {
      const data = await getJSON(`${base}/log?after=${lastLog}`);
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      for (const line of data.lines) {
        const text = line.stream === "stdout" ? line.line : `[${line.stream}] ${line.line}`;
        pre.appendChild(el("span", `${text}\n`, `log-${line.stream}`));
        lastLog = line.id;
      }
      pre.dataset.lines = String(pre.childElementCount);
      if (atEnd) pre.scrollTop = pre.scrollHeight;
      if (!data.more) break;
    }
  });
  const loadAll = () => { loadRun(); loadRounds(); loadSelection(); };
  loadAll();
  loadLog();
  const mine = (handler) => (data) => { if (data === "" || data === runId) handler(); };
  live({ run: mine(loadAll), log: mine(() => { loadLog(); loadRun(); loadRounds(); }) });
}

// ---------------------------------------------------------------- nodes page

function nodesPage() {
  const load = refresher(async () => {
    const found = await getJSON("/api/nodes");
    fillTable($("#nodes tbody"), found.map((n) => {
      const serving = el("span");
      for (const id of n.serving_runs) {
        const link = el("a", id);
        link.href = `/runs/${id}`;
        serving.append(link, " ");
      }
      const seen = ticking(el("span"), n.last_seen_age_s, true, " ago");
      seen.title = fmtTime(n.last_seen_at);
      const tr = row([n.node_id, n.name, statusBadge(n.status), JSON.stringify(n.labels),
        JSON.stringify(n.node_config), seen, serving, n.claimed_messages]);
      tr.dataset.node = n.node_id;
      tr.dataset.status = n.status;
      return tr;
    }));
    $("#empty").hidden = found.length > 0;
  });
  load();
  live({ nodes: load });
}

const PAGES = { runs: runsPage, run: runPage, nodes: nodesPage };
window.flpgLoadedAt = Date.now();
PAGES[document.body.dataset.page]?.();
