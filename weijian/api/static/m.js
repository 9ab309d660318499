// The inspector's phone page: my tasks, a task with its alerts and history, and the steps
// 开始核查 → 结论 (违法 / 未发现违法 / 误报, 立案) → 结案 (→ 公开).
import { api, login, logout, onUnauthorized, openStream, session } from "./api.js";
import { applyI18n, el, fmt, lang, nameOf, ruleName, setLang, t } from "./i18n.js";

const $ = (id) => document.getElementById(id);
const OPEN = new Set(["assigned", "in_progress"]);
const state = { rules: {}, sites: new Map(), tasks: [], tab: "todo", stream: null };

function toast(text) {
  const box = $("toast");
  box.textContent = text;
  box.hidden = false;
  setTimeout(() => { box.hidden = true; }, 2500);
}

// ---- login ---------------------------------------------------------------------------------

function showLogin() {
  state.stream?.close();
  state.stream = null;
  $("app").hidden = true;
  $("login").hidden = false;
  applyI18n();
  document.title = `${t("my_tasks")} · ${t("brand")}`;
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

// ---- list ----------------------------------------------------------------------------------

function siteName(id) { return state.sites.get(id)?.name ?? id; }

function dueText(task) {
  const left = Date.parse(task.due_at) - Date.now();
  const relative = left < 0 ? t("overdue_by", fmt.duration(left)) : t("left", fmt.duration(left));
  return { text: `${t("due")} ${fmt.short(task.due_at)}${OPEN.has(task.status) ? ` · ${relative}` : ""}`, overdue: left < 0 && OPEN.has(task.status) };
}

async function showList() {
  $("task-view").hidden = true;
  $("list-view").hidden = false;
  $("back").hidden = true;
  $("bar-title").textContent = t("my_tasks");
  state.tasks = await api("/tasks", { params: { mine: true } });
  renderList();
}

function renderList() {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.tab === state.tab);
  const tasks = state.tasks
    .filter((task) => OPEN.has(task.status) === (state.tab === "todo"))
    .sort((a, b) => (state.tab === "todo" ? Date.parse(a.due_at) - Date.parse(b.due_at) : b.id - a.id));
  const cards = tasks.map((task) => {
    const due = dueText(task);
    return el(`li.card.task${due.overdue ? ".overdue" : ""}`, { onclick: () => { location.hash = `#/task/${task.id}`; } },
      el("div.task-top", {}, el("span.task-site", {}, siteName(task.site_id)),
        el(`span.pill.${task.status}`, {}, nameOf("task_status", task.status))),
      el("div.task-title", {}, task.title),
      el("div.task-due", {}, due.text));
  });
  $("task-list").replaceChildren(...(cards.length ? cards : [el("li.empty", {}, t("no_tasks"))]));
}

// ---- one task ------------------------------------------------------------------------------

async function showTask(id) {
  $("list-view").hidden = true;
  $("task-view").hidden = false;
  $("back").hidden = false;
  const task = await api(`/tasks/${id}`);
  $("bar-title").textContent = `#${task.id}`;
  const due = dueText(task);
  const facts = [
    [t("site"), siteName(task.site_id)],
    [t("due"), el(`span.due${due.overdue ? ".overdue" : ""}`, {}, due.text.replace(`${t("due")} `, ""))],
    [t("inspectors"), task.inspectors.map((u) => task.inspector_names[u] ?? u).join("、") || "—"],
  ];
  if (task.conclusion) {
    facts.push([t("conclusion"), `${nameOf("conclusion", task.conclusion)}${task.case_filed ? ` · ${t("case_filed")}` : ""}`]);
  }
  $("task-card").replaceChildren(
    el("div.task-top", {}, el(`span.sev.${task.severity}`, {}, nameOf("severity", task.severity)),
      el(`span.pill.${task.status}`, {}, nameOf("task_status", task.status))),
    el("h2", {}, task.title),
    el("dl.facts", {}, facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));
  renderActions(task);
  $("task-alerts").replaceChildren(...task.alerts.map((a) => el("li", {},
    el("div", {}, el(`span.sev.${a.severity}`, {}, nameOf("severity", a.severity)), " ", el("b", {}, ruleName(state.rules, a.rule))),
    el("div", {}, a.summary),
    el("div.muted", {}, `${fmt.short(a.started_at)} · ${a.device_id ?? ""} · ${nameOf("alert_status", a.status)}`),
    el("div.muted", {}, `${t("source")}：${a.source}`))));
  $("task-history").replaceChildren(...task.history.map((h) => el("li", {},
    el("b", {}, nameOf("action", h.action)),
    el("span.muted", {}, `${fmt.short(h.at)} · ${h.actor === "system" ? t("system") : task.inspector_names[h.actor] ?? h.actor}`),
    h.note ? el("span", {}, h.note) : null)));
}

async function act(task, step, body) {
  try {
    await api(`/tasks/${task.id}/${step}`, { method: "POST", body });
    toast(t("saved"));
  } catch (error) {
    toast(error.message);
  }
  await showTask(task.id);
}

function renderActions(task) {
  const box = $("task-actions");
  const me = session.user;
  const mayAct = me && (task.inspectors.includes(me.username) || ["admin", "supervisor"].includes(me.role));
  box.hidden = !mayAct || (task.status === "closed" && task.published_at);
  if (box.hidden) return;
  const note = el("textarea", { rows: 2, placeholder: t("note") });
  if (task.status === "assigned") {
    box.replaceChildren(note, el("button.primary", { type: "button", onclick: () => act(task, "start", { note: note.value || null }) }, t("start")));
  } else if (task.status === "in_progress") {
    const choices = ["violation", "no_violation", "false_alarm"].map((value) => el("label.choice", {},
      el("input", { type: "radio", name: "conclusion", value }), nameOf("conclusion", value)));
    const caseBox = el("input", { type: "checkbox", name: "case_filed", disabled: true });
    const submit = el("button.primary", { type: "submit", disabled: true }, t("conclude"));
    const form = el("form", {}, el("fieldset", {}, el("legend", {}, t("conclusion")), choices),
      el("label.choice", {}, caseBox, t("case_filed")), note, submit);
    form.addEventListener("change", () => {
      const chosen = form.querySelector("input[name=conclusion]:checked")?.value;
      caseBox.disabled = chosen !== "violation"; // a case is filed only for a violation
      if (caseBox.disabled) caseBox.checked = false;
      submit.disabled = !chosen;
    });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const conclusion = form.querySelector("input[name=conclusion]:checked").value;
      act(task, "conclude", { conclusion, case_filed: caseBox.checked, note: note.value || null });
    });
    box.replaceChildren(form);
  } else if (task.status === "concluded") {
    box.replaceChildren(note, el("button.primary", { type: "button", onclick: () => {
      if (window.confirm(t("confirm_close"))) act(task, "close", { note: note.value || null });
    } }, t("close_task")));
  } else {
    box.replaceChildren(el("button.secondary", { type: "button", onclick: () => act(task, "publish") }, t("publish")));
  }
}

// ---- start ---------------------------------------------------------------------------------

function route() {
  const match = location.hash.match(/^#\/task\/(\d+)$/);
  (match ? showTask(Number(match[1])) : showList()).catch((error) => toast(error.message));
}

async function start() {
  $("login").hidden = true;
  $("app").hidden = false;
  applyI18n();
  document.title = `${t("my_tasks")} · ${t("brand")}`;
  $("lang").textContent = t("lang_switch");
  const user = session.user;
  $("who").textContent = user ? `${user.name}（${user.username}）` : "";
  const [rules, sites] = await Promise.all([api("/rules"), api("/sites")]);
  state.rules = Object.fromEntries(rules.map((r) => [r.id, r]));
  state.sites = new Map(sites.map((s) => [s.id, s]));
  route();
  // A task step by a colleague refreshes the list; an open task (maybe a half-filled form) is left alone.
  state.stream ??= openStream({
    onEvent: (name) => { if (name !== "alert" && !$("list-view").hidden) showList().catch(console.warn); },
    onState: () => {},
  });
}

onUnauthorized(showLogin);
window.addEventListener("hashchange", route);
$("back").addEventListener("click", () => { location.hash = "#/"; });
$("logout").addEventListener("click", logout);
$("lang").addEventListener("click", () => { setLang(lang === "zh" ? "en" : "zh"); start(); });
for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => { state.tab = tab.dataset.tab; renderList(); });
}
setLang(lang);
if (session.token) start().catch((error) => toast(error.message)); else showLogin();
