// Talking to the Weijian API: the token in localStorage, JSON requests, the live stream.

const TOKEN_KEY = "weijian.token";
const USER_KEY = "weijian.user";

export const session = {
  get token() { return localStorage.getItem(TOKEN_KEY); },
  get user() {
    try { return JSON.parse(localStorage.getItem(USER_KEY) || "null"); } catch { return null; }
  },
  save(body) {
    localStorage.setItem(TOKEN_KEY, body.access_token);
    localStorage.setItem(USER_KEY, JSON.stringify({ username: body.username, name: body.name, role: body.role }));
  },
  clear() {
    localStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(USER_KEY);
  },
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
  }
}

// Called when the token is refused (expired, revoked): the page shows its login form.
let unauthorizedHandler = () => {};
export function onUnauthorized(handler) { unauthorizedHandler = handler; }

export async function api(path, { method = "GET", params, body } = {}) {
  const url = new URL(`/api/v1${path}`, location.origin);
  for (const [key, value] of Object.entries(params || {})) {
    if (value === undefined || value === null) continue;
    for (const v of Array.isArray(value) ? value : [value]) url.searchParams.append(key, v);
  }
  const headers = { Accept: "application/json" };
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401) {
    session.clear();
    unauthorizedHandler();
  }
  const data = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) throw new ApiError(response.status, data?.detail ?? response.statusText);
  return data;
}

export async function login(username, password) {
  const form = new URLSearchParams({ username, password });
  const response = await fetch("/api/v1/auth/token", { method: "POST", body: form });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, data.detail ?? response.statusText);
  session.save(data);
  return data;
}

export function logout() {
  session.clear();
  unauthorizedHandler();
}

// The live stream (Server-Sent Events). EventSource cannot send headers, so the token goes in the
// query. On a broken stream the browser reconnects by itself; if the server refused us (401) the
// stream closes and we check the session before trying again.
export function openStream({ onEvent, onState }) {
  let source = null;
  let stopped = false;

  function connect() {
    if (stopped || !session.token) return;
    source = new EventSource(`/api/v1/stream?token=${encodeURIComponent(session.token)}`);
    source.onopen = () => onState(true);
    for (const name of ["alert", "task", "resync", "dropped"]) {
      source.addEventListener(name, (e) => onEvent(name, JSON.parse(e.data)));
    }
    source.onerror = async () => {
      onState(false);
      if (source.readyState === EventSource.CLOSED) {
        source = null;
        try { await api("/me"); } catch { /* 401 is handled by api() */ }
        setTimeout(connect, 5000);
      }
    };
  }

  connect();
  return { close() { stopped = true; source?.close(); } };
}
