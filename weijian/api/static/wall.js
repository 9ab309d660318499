// The monitoring wall (大屏): KPI tiles, sites by district, the live alert feed, open tasks.
import { api, login, logout, onUnauthorized, openStream, session } from "./api.js";
import { drawSeries } from "./chart.js";
import { applyI18n, bureauDayStart, bureauMonthStart, el, fmt, lang, nameOf, ruleName, setLang, t } from "./i18n.js";

const FEED_SIZE = 80;
const FRESH_MS = 15000;
const UNITS = { _c: "°C", _mg_l: "mg/L", _pct: "%", _kw: "kW", _l_min: "L/min", _m_min: "m/min" };
const $ = (id) => document.getElementById(id);

const state = {
  rules: {}, sites: new Map(), devices: new Map(), people: new Map(),
  alerts: new Map(), order: [], fresh: new Map(), tasks: [], overview: null, kpis: null,
  siteFilter: null, stream: null, live: false, timers: [],
};

// ---- login ---------------------------------------------------------------------------------

function showLogin() {
  state.stream?.close();
  state.timers.forEach(clearInterval);
  state.timers = [];
  $("wall").hidden = true;
  $("login").hidden = false;
  applyI18n();
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  try {
    await login(form.get("username"), form.get("password"));
    $("login-error").textContent = "";
    start();
  } catch (error) {
    $("login-error").textContent = error.message;
  }
});

// ---- loading -------------------------------------------------------------------------------

async function quietly(promise, fallback) {
  try { return await promise; } catch (error) {
    if (error.status !== 403) console.warn(error);
    return fallback;
  }
}

async function loadRegistry() {
  const [rules, sites, devices, people] = await Promise.all([
    api("/rules"), api("/sites"), api("/devices"), quietly(api("/users"), []),
  ]);
  state.rules = Object.fromEntries(rules.map((r) => [r.id, r]));
  state.sites = new Map(sites.map((s) => [s.id, s]));
  state.devices = new Map(devices.map((d) => [d.id, d]));
  state.people = new Map(people.map((p) => [p.username, p.name]));
}

async function loadNumbers() {
  const [overview, kpis] = await Promise.all([
    api("/overview", { params: { since: bureauDayStart() } }),
    quietly(api("/kpis", { params: { from: bureauMonthStart(), to: new Date().toISOString() } }), null),
  ]);
  state.overview = overview;
  state.kpis = kpis;
  renderKpis();
  renderSites();
}

async function loadAlerts() {
  const alerts = await api("/alerts", { params: { limit: FEED_SIZE } });
  state.alerts = new Map(alerts.map((a) => [a.id, a]));
  state.order = alerts.map((a) => a.id); // newest detection first, as the API lists them
  renderFeed();
}

async function loadTasks() {
  state.tasks = await quietly(api("/tasks", { params: { status: ["assigned", "in_progress"] } }), []);
  renderTasks();
}

async function loadDevices() {
  const devices = await api("/devices");
  state.devices = new Map(devices.map((d) => [d.id, d]));
  renderSites();
}

async function reloadAll() {
  await loadRegistry();
  await Promise.all([loadNumbers(), loadAlerts(), loadTasks()]);
}

function debounce(fn, ms) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
}
const refreshNumbers = debounce(() => loadNumbers().catch(console.warn), 400);
const refreshTasks = debounce(() => loadTasks().catch(console.warn), 400);

// ---- live ----------------------------------------------------------------------------------

async function onEvent(name, data) {
  if (name === "alert") {
    const alert = await api(`/alerts/${data.alert_id}`);
    const isNew = !state.alerts.has(alert.id) || data.kind === "escalated";
    state.alerts.set(alert.id, alert);
    if (isNew) {
      state.fresh.set(alert.id, Date.now());
      state.order = [alert.id, ...state.order.filter((id) => id !== alert.id)].slice(0, FEED_SIZE * 2);
    }
    renderFeed();
    if ($("detail").dataset.alert === String(alert.id)) openDetail(alert.id);
    refreshNumbers();
  } else if (name === "task") {
    refreshTasks();
    refreshNumbers();
  } else {
    // resync / dropped: events may have been missed; start from the database again.
    reloadAll().catch(console.warn);
  }
}

function setLive(live) {
  state.live = live;
  const badge = $("live");
  badge.textContent = live ? t("live") : t("offline");
  badge.classList.toggle("on", live);
}

// ---- rendering -----------------------------------------------------------------------------

function siteName(id) { return state.sites.get(id)?.name ?? id; }
function deviceName(id) {
  if (!id) return "—";
  const device = state.devices.get(id);
  return device?.name ? `${device.name} (${id})` : id;
}
function personName(username) {
  return username === "system" ? t("system") : state.people.get(username) ?? username;
}

function renderKpis() {
  const o = state.overview;
  const k = state.kpis;
  if (!o) return;
  $("kpi-online").textContent = fmt.percent(o.online_rate);
  $("kpi-online-sub").textContent = t("devices_of", o.devices_online, o.devices_registered);
  $("kpi-alerts").textContent = o.alerts_today;
  $("kpi-alerts-sub").replaceChildren(...["critical", "major", "warning", "info"]
    .filter((s) => o.alerts_today_by_severity[s])
    .map((s) => el(`span.sev-text.sev-${s}`, {}, `${nameOf("severity", s)} ${o.alerts_today_by_severity[s]}`)));
  $("kpi-tasks").textContent = o.tasks_open;
  $("kpi-tasks-sub").textContent = t("overdue_n", o.tasks_overdue);
  $("kpi-tasks-sub").classList.toggle("bad", o.tasks_overdue > 0);
  $("kpi-timely").textContent = k ? fmt.percent(k.timeliness_rate) : "—";
  $("kpi-timely-sub").textContent = k ? t("concluded_n", k.concluded) : "";
  $("kpi-complete").textContent = k ? fmt.percent(k.completion_rate) : "—";
  $("kpi-complete-sub").textContent = k ? t("due_n", k.due) : "";
}

function renderSites() {
  const status = new Map((state.overview?.sites ?? []).map((s) => [s.site_id, s]));
  const online = new Map();
  for (const d of state.devices.values()) {
    const [up, all] = online.get(d.site_id) ?? [0, 0];
    online.set(d.site_id, [up + (d.online ? 1 : 0), all + 1]);
  }
  const districts = new Map();
  for (const site of state.sites.values()) {
    if (!districts.has(site.district)) districts.set(site.district, []);
    districts.get(site.district).push(site);
  }
  const rank = { alarm: 0, warning: 1, ok: 2 };
  const groups = [...districts.entries()].sort(([a], [b]) => a.localeCompare(b, "zh-CN")).map(([district, sites]) => {
    sites.sort((a, b) => rank[status.get(a.id)?.state ?? "ok"] - rank[status.get(b.id)?.state ?? "ok"]
      || a.name.localeCompare(b.name, "zh-CN"));
    return el("section.district", {},
      el("h3", {}, district, el("small", {}, ` ${sites.length}`)),
      el("div.site-grid", {}, sites.map((site) => {
        const s = status.get(site.id);
        const [up, all] = online.get(site.id) ?? [0, 0];
        const active = s ? s.firing + s.acknowledged : 0;
        return el(`button.site.state-${s?.state ?? "ok"}${state.siteFilter === site.id ? ".selected" : ""}`, {
          type: "button", title: site.address ?? site.name,
          onclick: () => { state.siteFilter = state.siteFilter === site.id ? null : site.id; renderSites(); renderFeed(); },
        },
        el("span.site-name", {}, site.name),
        el("span.site-meta", {}, t(`kind_${site.kind}`), ` · ${up}/${all}`),
        active ? el("span.site-count", {}, active) : null);
      })));
  });
  $("sites").replaceChildren(...groups);
  const filter = $("site-filter");
  filter.hidden = !state.siteFilter;
  filter.textContent = state.siteFilter ? `${t("filter_site", siteName(state.siteFilter))} ✕` : "";
}

function renderFeed() {
  const now = Date.now();
  const alerts = state.order.map((id) => state.alerts.get(id))
    .filter((a) => a && (!state.siteFilter || a.site_id === state.siteFilter))
    .slice(0, FEED_SIZE);
  const rows = alerts.map((a) => el(`li.alert.sev-${a.severity}.status-${a.status}${now - (state.fresh.get(a.id) ?? 0) < FRESH_MS ? ".fresh" : ""}`,
    { onclick: () => openDetail(a.id), tabindex: 0 },
    el("time", {}, fmt.short(a.started_at)),
    el(`span.badge.sev-${a.severity}`, {}, nameOf("severity", a.severity)),
    el("span.rule", {}, ruleName(state.rules, a.rule)),
    el("span.status", {}, nameOf("alert_status", a.status)),
    el("span.where", {}, siteName(a.site_id), " · ", deviceName(a.device_id)),
    el("span.summary", {}, a.summary)));
  $("alerts").replaceChildren(...(rows.length ? rows : [el("li.empty", {}, t("no_alerts"))]));
}

function renderTasks() {
  const now = Date.now();
  const tasks = [...state.tasks].sort((a, b) => Date.parse(a.due_at) - Date.parse(b.due_at));
  const rows = tasks.map((task) => {
    const left = Date.parse(task.due_at) - now;
    return el(`li.task${left < 0 ? ".overdue" : ""}`, {},
      el("div.task-head", {},
        el(`span.badge.sev-${task.severity}`, {}, nameOf("severity", task.severity)),
        el("span.task-site", {}, siteName(task.site_id)),
        el("span.task-status", {}, nameOf("task_status", task.status))),
      el("div.task-title", {}, task.title),
      el("div.task-foot", {},
        el("span", {}, `${t("inspectors")}：${task.inspectors.map(personName).join("、") || "—"}`),
        el("span.due", {}, `${t("due")} ${fmt.short(task.due_at)} · ${left < 0 ? t("overdue_by", fmt.duration(left)) : t("left", fmt.duration(left))}`)));
  });
  $("tasks").replaceChildren(...(rows.length ? rows : [el("li.empty", {}, t("no_tasks"))]));
}

function unitOf(metric) {
  const suffix = Object.keys(UNITS).find((s) => metric?.endsWith(s));
  return suffix ? UNITS[suffix] : null;
}

async function openDetail(alertId) {
  const alert = await api(`/alerts/${alertId}`);
  const box = $("detail");
  box.dataset.alert = String(alert.id);
  box.hidden = false;
  $("detail-title").replaceChildren(
    el(`span.badge.sev-${alert.severity}`, {}, nameOf("severity", alert.severity)), " ",
    ruleName(state.rules, alert.rule), " ",
    el("span.status-text", {}, nameOf("alert_status", alert.status)));
  const facts = [
    [t("site"), siteName(alert.site_id)],
    [t("device"), deviceName(alert.device_id)],
    [t("value"), alert.value === null ? "—" : `${alert.value} ${alert.unit ?? ""}`],
    [t("limit"), alert.limit_value === null ? "—" : `${alert.limit_value} ${alert.unit ?? ""}`],
    [t("source"), alert.source],
    ["", alert.summary],
  ];
  $("detail-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  $("detail-history").replaceChildren(...alert.history.map((h) => el("li", {},
    el("time", {}, fmt.short(h.at)), el("b", {}, nameOf("action", h.action)),
    el("span", {}, personName(h.actor)), h.note ? el("span.note", {}, h.note) : null)));
  await drawEvidence(alert);
}

async function drawEvidence(alert) {
  const chart = $("detail-chart");
  const metric = alert.evidence_metric;
  if (!metric || !alert.device_id) {
    chart.replaceChildren(el("p.empty", {}, t("no_data")));
    return;
  }
  const from = Date.parse(alert.evidence_from ?? alert.started_at);
  const to = Date.parse(alert.evidence_to ?? alert.last_seen_at);
  const pad = Math.max((to - from) * 0.25, 10 * 60000);
  const series = await api("/readings", { params: {
    device_id: alert.device_id, metric,
    from: new Date(from - pad).toISOString(), to: new Date(to + pad).toISOString(),
  } });
  const unit = unitOf(metric);
  drawSeries(chart, series, {
    limit: alert.unit && alert.unit === unit ? alert.limit_value : null,
    unit, windowFrom: alert.evidence_from, windowTo: alert.evidence_to,
    formatTime: (iso) => fmt.short(iso).split(" ").pop(),
    emptyText: t("no_data"), limitText: t("limit"),
  });
  chart.prepend(el("p.chart-caption", {}, `${nameOf("metric", metric)} (${metric})`));
}

function closeDetail() {
  $("detail").hidden = true;
  delete $("detail").dataset.alert;
}

function renderAll() {
  applyI18n();
  $("lang").textContent = t("lang_switch");
  const user = session.user;
  $("who").textContent = user ? `${user.name}` : "";
  setLive(state.live);
  renderKpis();
  renderSites();
  renderFeed();
  renderTasks();
}

// ---- start ---------------------------------------------------------------------------------

async function start() {
  $("login").hidden = true;
  $("wall").hidden = false;
  renderAll();
  try {
    await reloadAll();
  } catch (error) {
    console.warn(error);
    if (!session.token) return;
  }
  let connectedBefore = false;
  state.stream = openStream({
    onEvent: (n, d) => onEvent(n, d).catch(console.warn),
    onState: (live) => {
      setLive(live);
      // Events sent while the stream was down are not replayed: reload after a reconnect.
      if (live && connectedBefore) reloadAll().catch(console.warn);
      connectedBefore ||= live;
    },
  });
  const every = (ms, fn) => state.timers.push(setInterval(() => fn().catch(console.warn), ms));
  every(30000, loadNumbers);
  every(60000, loadTasks);
  every(60000, loadDevices);
  every(30000, async () => { renderTasks(); renderFeed(); });
}

function tick() { $("clock").textContent = fmt.clock(new Date()); }

onUnauthorized(showLogin);
$("logout").addEventListener("click", logout);
$("lang").addEventListener("click", () => { setLang(lang === "zh" ? "en" : "zh"); renderAll(); });
$("detail-close").addEventListener("click", closeDetail);
$("detail").addEventListener("click", (e) => { if (e.target.id === "detail") closeDetail(); });
$("site-filter").addEventListener("click", () => { state.siteFilter = null; renderSites(); renderFeed(); });
document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeDetail(); });
setLang(lang);
tick();
setInterval(tick, 1000);
if (session.token) start(); else showLogin();
