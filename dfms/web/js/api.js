// The gateway's JSON API with the session's tokens.
//
// The session (access token, refresh token, user) is kept in localStorage so that a
// reload or another tab stays signed in. The access token is refreshed quietly before
// it expires and once on a 401. Refresh tokens are single use, so refreshes are
// serialised across tabs with a Web Lock, and a tab that finds a newer session stored
// by another adopts it instead of spending its own (already retired) refresh token.
// When a refresh is refused, ``reauthenticate`` (set by the app) asks the user to sign
// in again over the page as it is, and the request is then sent again.

export const API = "/api/v1";
const STORE = "dfms.session";
const EARLY_MS = 30_000; // refresh this long before the access token expires
// Sent on every call: live events name it as their origin, so a tab knows its own changes.
export const CLIENT_ID = `web-${crypto.getRandomValues(new Uint32Array(2)).join("-")}`;

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

let session = readStore();
let refreshing = null;
let reauthHandler = null;
const listeners = new Set();

function readStore() {
  try {
    return JSON.parse(localStorage.getItem(STORE) || "null");
  } catch {
    return null;
  }
}

function save(next) {
  session = next;
  if (next) localStorage.setItem(STORE, JSON.stringify(next));
  else localStorage.removeItem(STORE);
  for (const fn of listeners) fn(next);
}

// Another tab signed in, out, or refreshed.
window.addEventListener("storage", (event) => {
  if (event.key !== STORE) return;
  const had = session?.user?.id;
  session = readStore();
  if (session?.user?.id !== had) for (const fn of listeners) fn(session);
});

export const currentUser = () => session?.user ?? null;
export const onSessionChange = (fn) => listeners.add(fn);
export const setReauthHandler = (fn) => { reauthHandler = fn; };

function fromBody(body) {
  const tokens = body.tokens ?? body;
  return {
    access: tokens.access_token,
    refresh: tokens.refresh_token,
    accessExp: Date.now() + tokens.expires_in * 1000,
    user: body.user ?? session?.user ?? null,
  };
}

export async function errorOf(resp) {
  let code = `http_${resp.status}`;
  let message = `${resp.status} ${resp.statusText}`;
  try {
    const body = await resp.json();
    code = body.error.code;
    message = body.error.message;
  } catch { /* not the envelope (HEAD, a proxy's page) */ }
  const retry = Number(resp.headers.get("Retry-After"));
  return new ApiError(resp.status, code, message, Number.isFinite(retry) ? retry : null);
}

async function post(path, json, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const resp = await fetch(API + path, { method: "POST", headers, body: JSON.stringify(json) });
  if (!resp.ok) throw await errorOf(resp);
  return resp.status === 204 ? null : resp.json();
}

export async function signIn(email, password) {
  save(fromBody(await post("/auth/login", { email, password })));
}

export async function signUp(email, password, displayName) {
  save(fromBody(await post("/auth/register",
    { email, password, display_name: displayName || email.split("@")[0] })));
}

export async function signOut() {
  const current = session;
  save(null);
  if (!current) return;
  try {
    await post("/auth/logout", { refresh_token: current.refresh }, current.access);
  } catch { /* signed out here anyway; the access token expires on its own */ }
}

async function refreshNow() {
  const stored = readStore();
  if (!stored) throw new ApiError(401, "signed_out", "signed out");
  if (stored.access !== session?.access && stored.accessExp - Date.now() > EARLY_MS) {
    session = stored; // another tab refreshed already
    return;
  }
  save(fromBody(await post("/auth/refresh", { refresh_token: stored.refresh })));
}

function refresh() {
  if (!refreshing) {
    const run = navigator.locks
      ? navigator.locks.request("dfms-refresh", refreshNow) : refreshNow();
    refreshing = run.finally(() => { refreshing = null; });
  }
  return refreshing;
}

async function reauthenticate() {
  if (!reauthHandler) throw new ApiError(401, "signed_out", "Please sign in again.");
  await reauthHandler();
}

// A valid access token: refreshed when near expiry; sign in again when that fails.
export async function bearer(force = false) {
  if (!session) await reauthenticate();
  if (force || session.accessExp - Date.now() < EARLY_MS) {
    try {
      await refresh();
    } catch (err) {
      if (err.status !== 400 && err.status !== 401) throw err;
      await reauthenticate();
    }
  }
  return session.access;
}

function buildUrl(path, query) {
  const url = new URL(path.startsWith("/s/") ? path : API + path, location.origin);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  return url;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// One API call. ``json`` is sent as the body; ``raw`` answers the Response itself.
// 401 invalid_token: refresh once and retry; 429/503 with Retry-After: wait and retry
// (the gateway refuses those before doing any work, so a retry is safe).
export async function api(method, path, opts = {}) {
  const { json, query, headers = {}, raw = false, auth = true, signal } = opts;
  let body = opts.body;
  for (let attempt = 0; ; attempt += 1) {
    const h = new Headers(headers);
    h.set("X-DFMS-Client-Id", CLIENT_ID);
    if (json !== undefined) {
      h.set("Content-Type", "application/json");
      body = JSON.stringify(json);
    }
    if (auth) h.set("Authorization", `Bearer ${await bearer(attempt > 0 && opts.refreshed)}`);
    const resp = await fetch(buildUrl(path, query), { method, headers: h, body, signal });
    if (resp.ok || resp.status === 304) {
      if (raw) return resp;
      return resp.status === 204 ? null : resp.json();
    }
    const err = await errorOf(resp);
    if (auth && resp.status === 401 && attempt === 0) {
      opts.refreshed = true;
      continue;
    }
    if ((resp.status === 429 || resp.status === 503) && err.retryAfter !== null && attempt < 3) {
      await sleep(Math.min(err.retryAfter, 10) * 1000);
      continue;
    }
    throw err;
  }
}

// The file's bytes (the access token goes in a header, so no plain link can fetch them).
export async function fetchBlob(path) {
  const resp = await api("GET", path, { raw: true });
  return resp.blob();
}
