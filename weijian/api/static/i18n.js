// Words of the wall and the phone page: Chinese first, English on request.

const LANG_KEY = "weijian.lang";
const TZ = "Asia/Shanghai"; // the bureau's time, whatever the screen's own setting

const WORDS = {
  zh: {
    title: "卫生健康监督在线监测大屏",
    brand: "卫监",
    username: "用户名", password: "密码", login: "登录", logout: "退出",
    online_rate: "设备在线率", alerts_today: "今日告警", tasks_open: "处置中任务",
    timeliness: "及时率", completion: "完成率", this_month: "本月",
    devices_of: (online, total) => `${online} / ${total} 台在线`,
    overdue_n: (n) => `其中超期 ${n} 件`,
    concluded_n: (n) => `已办结 ${n} 件`,
    due_n: (n) => `到期 ${n} 件`,
    sites: "监管单位", feed: "实时告警", tasks: "核查任务",
    live: "实时", offline: "连接中…",
    no_alerts: "暂无告警", no_tasks: "暂无处置中任务", no_data: "该时段暂无数据",
    evidence: "证据曲线", history: "处置记录", source: "依据", value: "测量值", limit: "限值",
    site: "单位", device: "设备", inspectors: "核查人员", due: "期限", close: "关闭",
    overdue_by: (d) => `已超期 ${d}`, left: (d) => `剩余 ${d}`,
    hours: (h) => `${h} 小时`, minutes: (m) => `${m} 分钟`, days: (d) => `${d} 天`,
    all_sites: "全部单位", filter_site: (name) => `仅显示：${name}`,
    kind_disinfection_plant: "餐具消毒", kind_medical_institution: "医疗废物",
    my_tasks: "我的任务", todo: "待办", done: "已办", back: "返回",
    start: "开始核查", conclude: "提交结论", close_task: "结案", publish: "公开结果",
    conclusion: "核查结论", case_filed: "立案", note: "备注", alerts: "关联告警",
    confirm_close: "确认结案？", saved: "已保存", published: "已公开",
    refresh: "刷新", lang_switch: "EN", system: "系统",
  },
  en: {
    title: "Health Supervision Online Monitoring",
    brand: "Weijian",
    username: "Username", password: "Password", login: "Log in", logout: "Log out",
    online_rate: "Devices online", alerts_today: "Alerts today", tasks_open: "Open tasks",
    timeliness: "On time", completion: "Completion", this_month: "this month",
    devices_of: (online, total) => `${online} of ${total} online`,
    overdue_n: (n) => `${n} overdue`,
    concluded_n: (n) => `${n} concluded`,
    due_n: (n) => `${n} due`,
    sites: "Supervised units", feed: "Live alerts", tasks: "Inspection tasks",
    live: "live", offline: "connecting…",
    no_alerts: "No alerts", no_tasks: "No open tasks", no_data: "No data in this period",
    evidence: "Evidence", history: "History", source: "Source", value: "Value", limit: "Limit",
    site: "Unit", device: "Device", inspectors: "Inspectors", due: "Due", close: "Close",
    overdue_by: (d) => `overdue by ${d}`, left: (d) => `${d} left`,
    hours: (h) => `${h} h`, minutes: (m) => `${m} min`, days: (d) => `${d} d`,
    all_sites: "All units", filter_site: (name) => `Only: ${name}`,
    kind_disinfection_plant: "Tableware", kind_medical_institution: "Medical waste",
    my_tasks: "My tasks", todo: "To do", done: "Done", back: "Back",
    start: "Start inspection", conclude: "Submit conclusion", close_task: "Close task",
    publish: "Publish result",
    conclusion: "Conclusion", case_filed: "Case filed", note: "Note", alerts: "Alerts",
    confirm_close: "Close this task?", saved: "Saved", published: "Published",
    refresh: "Refresh", lang_switch: "中文", system: "system",
  },
};

const NAMES = {
  severity: {
    zh: { critical: "严重", major: "重大", warning: "一般", info: "提示" },
    en: { critical: "critical", major: "major", warning: "warning", info: "info" },
  },
  alert_status: {
    zh: { firing: "告警中", acknowledged: "已确认", resolved: "已解除" },
    en: { firing: "firing", acknowledged: "acknowledged", resolved: "resolved" },
  },
  task_status: {
    zh: { assigned: "待核查", in_progress: "核查中", concluded: "已结论", closed: "已结案" },
    en: { assigned: "assigned", in_progress: "in progress", concluded: "concluded", closed: "closed" },
  },
  conclusion: {
    zh: { violation: "违法", no_violation: "未发现违法", false_alarm: "误报" },
    en: { violation: "violation", no_violation: "no violation", false_alarm: "false alarm" },
  },
  action: {
    zh: {
      fired: "触发", escalated: "升级", repeated: "再次发生", acknowledged: "确认", resolved: "解除",
      opened: "派发任务", alert_joined: "并入告警", start: "开始核查", conclude: "作出结论",
      close: "结案", published: "公开",
    },
    en: {},
  },
  metric: {
    zh: {
      temp_c: "温度", door_open: "柜门", wash_temp_c: "洗涤温度", rinse_temp_c: "消毒冲洗温度",
      conveyor_speed_m_min: "输送速度", running: "运行", chlorine_mg_l: "有效氯浓度",
      power_kw: "功率", water_l_min: "用水量", packed_total: "包装计数", humidity_pct: "湿度",
      uv_on: "紫外灯",
    },
    en: {},
  },
};

export let lang = localStorage.getItem(LANG_KEY) === "en" ? "en" : "zh";

export function setLang(value) {
  lang = value;
  localStorage.setItem(LANG_KEY, value);
  document.documentElement.lang = value === "zh" ? "zh-CN" : "en";
}

export function t(key, ...args) {
  const word = WORDS[lang][key] ?? WORDS.zh[key] ?? key;
  return typeof word === "function" ? word(...args) : word;
}

// A code from the API in the current language (falls back to the code itself).
export function nameOf(kind, code) {
  return NAMES[kind][lang]?.[code] ?? code?.replaceAll("_", " ") ?? "";
}

export function ruleName(rules, id) {
  const rule = rules[id];
  if (!rule) return id;
  return lang === "zh" ? rule.name_zh : rule.name_en;
}

// Fill every element carrying data-i18n with its word.
export function applyI18n(root = document) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  document.title = t("title");
}

const formats = {};
function format(options) {
  const key = lang + JSON.stringify(options);
  formats[key] ??= new Intl.DateTimeFormat(lang === "zh" ? "zh-CN" : "en-GB", { timeZone: TZ, hour12: false, ...options });
  return formats[key];
}

export const fmt = {
  time: (iso) => format({ hour: "2-digit", minute: "2-digit", second: "2-digit" }).format(new Date(iso)),
  short: (iso) => format({ month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit" }).format(new Date(iso)),
  clock: (date) => format({ year: "numeric", month: "2-digit", day: "2-digit", weekday: "short", hour: "2-digit", minute: "2-digit", second: "2-digit" }).format(date),
  percent: (ratio) => (ratio === null || ratio === undefined ? "—" : `${(ratio * 100).toFixed(1)}%`),
  duration(ms) {
    const minutes = Math.round(Math.abs(ms) / 60000);
    if (minutes < 60) return t("minutes", minutes);
    if (minutes < 48 * 60) return t("hours", Math.round(minutes / 60));
    return t("days", Math.round(minutes / 1440));
  },
};

// Midnight today and the first of this month in the bureau's time zone, as ISO strings.
export function bureauDayStart(now = new Date()) {
  return zonedMidnight(now, false);
}
export function bureauMonthStart(now = new Date()) {
  return zonedMidnight(now, true);
}
function zonedMidnight(now, monthStart) {
  const parts = Object.fromEntries(
    new Intl.DateTimeFormat("en-CA", { timeZone: TZ, year: "numeric", month: "2-digit", day: "2-digit" })
      .formatToParts(now).map((p) => [p.type, p.value]),
  );
  return `${parts.year}-${parts.month}-${monthStart ? "01" : parts.day}T00:00:00+08:00`;
}

// Small DOM helper: el("div.class", {attrs}, children...)
export function el(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const node = document.createElement(tag || "div");
  if (classes.length) node.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
