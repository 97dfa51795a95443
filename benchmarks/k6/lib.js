// Shared helpers of the k6 load scenarios (docs/load.md): accounts and tokens through
// the HTTP API, reproducible data, content-verifying checks, summaries.
//
// Every scenario imports this module; k6 gives each VU its own copy of the
// module-level state below (its session, its data pool), so nothing here is shared
// between VUs except what setup() returns.

import http from 'k6/http';
import crypto from 'k6/crypto';
import exec from 'k6/execution';
import { check, sleep } from 'k6';
import { Counter } from 'k6/metrics';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
export const API = `${BASE_URL}/api/v1`;
export const SEED = parseInt(__ENV.SEED || '1', 10);
// Names (emails, file names) carry the run id so that runs never collide on a cluster
// that keeps its data; set RUN_ID to make a run's names predictable. Unset, it is made
// from the clock when each VU's copy of this module loads, so it differs between VUs:
// setup() returns its own as `runId` for whatever must agree across VUs.
export const RUN_ID = __ENV.RUN_ID || `${Date.now().toString(36)}${(SEED >>> 0).toString(36)}`;
export const KIB = 1024;
export const MIB = 1024 * 1024;

// 429s are answers the gateway is allowed to give under load (with Retry-After): each
// scenario decides whether they fail it; this counts them wherever they happen.
export const rateLimited = new Counter('rate_limited');
// Access tokens renewed because they were about to expire (Session.ensureFresh).
export const tokenRenewals = new Counter('token_renewals');

// ---------------------------------------------------------------------------------
// Environment knobs

export function envInt(name, fallback) {
  const v = __ENV[name];
  return v === undefined || v === '' ? fallback : parseInt(v, 10);
}

export function envFloat(name, fallback) {
  const v = __ENV[name];
  return v === undefined || v === '' ? fallback : parseFloat(v);
}

export function envStr(name, fallback) {
  const v = __ENV[name];
  return v === undefined || v === '' ? fallback : v;
}

// '90s', '30m', '1h30m', '500ms' (k6's duration syntax) in milliseconds.
export function durationMs(text) {
  const units = { ms: 1, s: 1000, m: 60000, h: 3600000 };
  let total = 0;
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/g;
  let m;
  while ((m = re.exec(text)) !== null) total += parseFloat(m[1]) * units[m[2]];
  if (total === 0 && !/^0/.test(text)) throw new Error(`not a duration: ${text}`);
  return total;
}

// ---------------------------------------------------------------------------------
// Reproducible data. k6 has no seeded Math.random, and a byte-at-a-time PRNG in
// k6's JavaScript engine makes well under 1 MiB/s, far too slow for 512 MiB bodies.
// So a small pool of seeded 4 KiB blocks is generated once per VU, and a body is a
// seeded sequence of pool blocks (copied natively), each block stamped with a seeded
// 32-bit word. Every 4 KiB of a body is then distinct from every other with
// overwhelming probability, so content-defined chunks never dedup by accident, and the
// same (seed, size) always gives the same bytes.

// mulberry32: small, fast, good enough for choosing blocks; not for cryptography.
export function rng(seed) {
  let a = seed >>> 0;
  return function next() {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

// A seed derived from several numbers (the run seed, the VU, an iteration...), so that
// nearby inputs give unrelated streams.
export function mixSeed(...parts) {
  let h = 0x811c9dc5;
  for (const p of parts) {
    let x = p >>> 0;
    for (let i = 0; i < 4; i++) {
      h ^= x & 0xff;
      h = Math.imul(h, 0x01000193) >>> 0;
      x >>>= 8;
    }
  }
  return h >>> 0;
}

const BLOCK = 4 * KIB;
// 16 blocks: building the pool costs each VU about 50 ms of k6's JavaScript engine,
// which adds up when an arrival-rate scenario starts a hundred VUs mid-run.
const POOL_BLOCKS = 16;
let pool = null; // Uint8Array of POOL_BLOCKS blocks, built on first use (per VU)

function blockPool() {
  if (pool === null) {
    const next = rng(mixSeed(SEED, 0x900d));
    const words = new Uint32Array((POOL_BLOCKS * BLOCK) / 4);
    for (let i = 0; i < words.length; i++) words[i] = next();
    pool = new Uint8Array(words.buffer);
  }
  return pool;
}

// `size` bytes reproducible from `seed`, as an ArrayBuffer (what http.post sends as is).
export function randomBytes(size, seed) {
  const next = rng(seed);
  const src = blockPool();
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  for (let off = 0; off < size; off += BLOCK) {
    const k = next() % POOL_BLOCKS;
    const n = Math.min(BLOCK, size - off);
    out.set(src.subarray(k * BLOCK, k * BLOCK + n), off);
    if (n >= 4) view.setUint32(off, next());
  }
  return out.buffer;
}

// Make a buffer's content new (for reuse across uploads without regenerating it):
// rewrite one word every `stride` bytes. The stride is below the smallest chunk
// (256 KiB by default), so no chunk of the old content survives.
export function restamp(buf, seed, stride = 64 * KIB) {
  const next = rng(seed);
  const view = new DataView(buf);
  for (let off = 0; off + 4 <= buf.byteLength; off += stride) view.setUint32(off, next());
}

export function sha256(buf) {
  return crypto.sha256(buf, 'hex');
}

// An integer in [lo, hi] from a generator made by rng().
export function between(next, lo, hi) {
  return lo + (next() % (hi - lo + 1));
}

// ---------------------------------------------------------------------------------
// Accounts and tokens

const JSON_HEADERS = { 'Content-Type': 'application/json' };

export function retryAfterSeconds(res) {
  const v = parseFloat(res.headers['Retry-After'] || '');
  return Number.isFinite(v) && v >= 0 ? v : 1;
}

// POST an auth request; 429s (the auth limit is 30 per minute per address by default)
// wait out Retry-After, up to `attempts` times. Only setup() and lazily registering
// VUs use this: a scenario's own auth traffic goes through Session, which measures it.
function authPost(path, body, name, attempts = 20) {
  let res;
  for (let i = 0; i < attempts; i++) {
    res = http.post(`${API}${path}`, JSON.stringify(body), {
      headers: JSON_HEADERS,
      tags: { name },
      responseCallback: http.expectedStatuses({ min: 200, max: 299 }, 409, 429),
    });
    if (res.status !== 429) return res;
    rateLimited.add(1, { name });
    sleep(retryAfterSeconds(res));
  }
  return res;
}

function tokensOf(body) {
  const t = body.tokens || body;
  return {
    access: t.access_token,
    refresh: t.refresh_token,
    // Wall-clock instants: the session may travel from setup() to the VUs.
    expiresAt: Date.now() + t.expires_in * 1000,
    lifetimeMs: t.expires_in * 1000,
  };
}

export function accountFor(i) {
  return {
    email: `k6-${RUN_ID}-${i}@load.example.com`,
    password: `k6 load passphrase ${RUN_ID}`,
  };
}

// Create (or, if it exists, sign in to) account `i` of this run. Returns a plain
// object (setup() data must be JSON).
export function registerAccount(i) {
  const acct = accountFor(i);
  let res = authPost('/auth/register',
    { email: acct.email, password: acct.password, display_name: `k6 ${RUN_ID} ${i}` },
    'setup_register');
  if (res.status === 409) {
    res = authPost('/auth/login', acct, 'setup_login');
  }
  if (res.status !== 201 && res.status !== 200) {
    throw new Error(`registering ${acct.email}: ${res.status} ${res.body}`);
  }
  return Object.assign({}, acct, tokensOf(res.json()));
}

// How many VUs the options can run at once: one account per VU, because a refresh
// token is single use and two VUs rotating the same one would revoke its family.
export function maxVUs(options) {
  if (!options.scenarios) return options.vus || 1;
  let n = 0;
  for (const s of Object.values(options.scenarios)) {
    n += s.maxVUs || s.preAllocatedVUs || s.vus || s.startVUs || 1;
    if (s.stages && s.executor === 'ramping-vus') {
      n = Math.max(n, ...s.stages.map((st) => st.target));
    }
  }
  return n;
}

// setup(): one account per VU, registered through the API.
export function registerAccounts(count) {
  const accounts = [];
  for (let i = 1; i <= count; i++) accounts.push(registerAccount(i));
  return accounts;
}

// A VU's signed-in user. Refreshes the access token before it expires (a margin of a
// fifth of its lifetime, at most a minute), and signs in again if the refresh token
// was refused.
export class Session {
  constructor(account) {
    this.email = account.email;
    this.password = account.password;
    this.access = account.access;
    this.refreshToken = account.refresh;
    this.expiresAt = account.expiresAt;
    this.lifetimeMs = account.lifetimeMs;
    this.shared = false;
  }

  adopt(body) {
    const t = tokensOf(body);
    this.access = t.access;
    this.refreshToken = t.refresh;
    this.expiresAt = t.expiresAt;
    this.lifetimeMs = t.lifetimeMs;
  }

  due() {
    const margin = Math.min(60000, this.lifetimeMs / 5);
    return Date.now() >= this.expiresAt - margin;
  }

  // Measured auth requests (tags auth_login, auth_refresh).
  login() {
    const res = http.post(`${API}/auth/login`,
      JSON.stringify({ email: this.email, password: this.password }),
      { headers: JSON_HEADERS, tags: { name: 'auth_login' } });
    if (shed(res, 'auth_login')) return res;
    const ok = check(res, {
      'login: 200 with a token pair': (r) => r.status === 200 && !!r.json('tokens.access_token'),
    }, { name: 'auth_login' });
    if (ok) this.adopt(res.json());
    return res;
  }

  refresh() {
    const res = http.post(`${API}/auth/refresh`,
      JSON.stringify({ refresh_token: this.refreshToken }),
      { headers: JSON_HEADERS, tags: { name: 'auth_refresh' } });
    if (shed(res, 'auth_refresh')) return res;
    const ok = check(res, {
      'refresh: 200 with a new refresh token': (r) => r.status === 200
        && r.json('tokens.refresh_token') !== this.refreshToken,
    }, { name: 'auth_refresh' });
    if (ok) this.adopt(res.json());
    return res;
  }

  ensureFresh() {
    if (!this.due()) return;
    tokenRenewals.add(1);
    // A shared account's refresh token is another VU's too: rotating it would revoke
    // the family for both, so such a session signs in anew instead.
    const res = this.shared ? this.login() : this.refresh();
    if (res.status === 401) this.login();
  }

  headers(extra) {
    this.ensureFresh();
    return Object.assign({ Authorization: `Bearer ${this.access}` }, extra || {});
  }
}

// A session usable now for `account` ({email, password}, maybe tokens): its own
// tokens while they are valid, else a new sign-in (waiting out 429s). For setup() and
// teardown(), whose requests are not the scenario's measured auth traffic.
export function freshSession(account) {
  if (account.access && Date.now() < account.expiresAt - 60000) return new Session(account);
  const res = authPost('/auth/login', { email: account.email, password: account.password },
    'setup_login');
  if (res.status !== 200) throw new Error(`signing in ${account.email}: ${res.status} ${res.body}`);
  return new Session(Object.assign({}, account, tokensOf(res.json())));
}

let mySession = null;

// This VU's session: the account setup() made for it, or, when the VU has none (more
// VUs than setup() foresaw), one it registers itself.
export function session(data) {
  if (mySession === null) {
    const i = exec.vu.idInTest;
    const account = data && data.accounts && data.accounts[i - 1]
      ? data.accounts[i - 1]
      : registerAccount(10000 + i);
    mySession = new Session(account);
  }
  return mySession;
}

// This VU's session on one of a pool of accounts shared between VUs (for scenarios
// with more VUs than it is worth registering accounts for): account
// (VU - 1) mod pool size, and `index` says which.
export function sharedSession(data) {
  if (mySession === null) {
    const index = (exec.vu.idInTest - 1) % data.accounts.length;
    mySession = new Session(data.accounts[index]);
    mySession.shared = true;
    mySession.index = index;
  }
  return mySession;
}

// ---------------------------------------------------------------------------------
// Load shedding. Scenarios that push the gateway hard (overload, auth_storm) accept
// 429 and 503 as long as they carry Retry-After; they call allowShedding() in their
// init code. Elsewhere a 429/503 is a failure like any other.

export const shedAnswers = new Counter('shed_answers');
let sheddingAllowed = false;

export function allowShedding() {
  sheddingAllowed = true;
  http.setResponseCallback(http.expectedStatuses({ min: 200, max: 399 }, 429, 503));
}

// Whether `res` is a load-shedding answer the scenario accepts (counted, and checked
// to carry Retry-After); the caller then skips its content checks.
export function shed(res, tag) {
  if (res.status === 429) rateLimited.add(1, { name: tag });
  if (!sheddingAllowed || (res.status !== 429 && res.status !== 503)) return false;
  shedAnswers.add(1, { name: tag, status: String(res.status) });
  check(res, {
    'shed: 429/503 carries Retry-After': (r) => !!r.headers['Retry-After'],
  }, { name: tag });
  return true;
}

// ---------------------------------------------------------------------------------
// API calls with content checks. Each takes the request's `name` tag, which the
// scenarios' per-request-type thresholds select on.

function binaryHeaders(s, name, sha, extra) {
  return s.headers(Object.assign({
    'Content-Type': 'application/octet-stream',
    'X-File-Name': encodeURIComponent(name),
    'X-Content-SHA256': sha,
  }, extra || {}));
}

// Upload `buf` (an ArrayBuffer) as `name`, streamed as the raw body with its SHA-256,
// and check the answer describes exactly those bytes. Returns { file (null when a
// check failed), res, sha }.
export function upload(s, name, buf, tag, opts = {}) {
  const sha = sha256(buf);
  const q = opts.force ? '?force_version=true' : '';
  const res = http.post(`${API}/files/upload${q}`, buf, {
    headers: binaryHeaders(s, name, sha, opts.folderId ? { 'X-Folder-Id': opts.folderId } : null),
    tags: { name: tag },
    timeout: opts.timeout || '600s',
  });
  if (shed(res, tag)) return { file: null, res, sha, shed: true };
  const ok = check(res, {
    [`${tag}: 201 or 200 unchanged`]: (r) => r.status === 201 || (r.status === 200 && r.json('unchanged') === true),
    [`${tag}: stored bytes hash to what was sent`]: (r) => r.status < 300 && r.json('sha256') === sha
      && r.json('size') === buf.byteLength,
  }, { name: tag });
  return { file: ok ? res.json() : null, res, sha };
}

// Download a file (or a version, or a share link with `anonymous`) and check its
// SHA-256. Returns the response.
export function downloadVerified(s, url, sha, size, tag, opts = {}) {
  const params = {
    headers: opts.anonymous ? {} : s.headers(),
    responseType: 'binary',
    tags: { name: tag },
    timeout: opts.timeout || '600s',
  };
  const res = http.get(url, params);
  if (shed(res, tag)) return res;
  check(res, {
    [`${tag}: 200`]: (r) => r.status === 200,
    [`${tag}: SHA-256 equals the upload's`]: (r) => r.status === 200 && r.body !== null
      && r.body.byteLength === size && sha256(r.body) === sha,
  }, { name: tag });
  return res;
}

// Ask for bytes [start, end] (inclusive) and check they are exactly those of `buf`.
export function rangeVerified(s, url, buf, start, end, tag) {
  const res = http.get(url, {
    headers: s.headers({ Range: `bytes=${start}-${end}` }),
    responseType: 'binary',
    tags: { name: tag },
  });
  if (shed(res, tag)) return res;
  const want = sha256(buf.slice(start, end + 1));
  check(res, {
    [`${tag}: 206 with the range asked`]: (r) => r.status === 206
      && r.headers['Content-Range'] === `bytes ${start}-${end}/${buf.byteLength}`,
    [`${tag}: bytes equal the upload's`]: (r) => r.status === 206 && r.body !== null
      && r.body.byteLength === end - start + 1 && sha256(r.body) === want,
  }, { name: tag });
  return res;
}

export function fileUrl(id) {
  return `${API}/files/${id}/download`;
}

// JSON request with the session's token; `expect` is the status the check wants.
export function call(s, method, path, body, tag, expect) {
  const params = {
    headers: s.headers(body === undefined || body === null ? {} : JSON_HEADERS),
    tags: { name: tag },
  };
  const payload = body === undefined || body === null ? null : JSON.stringify(body);
  const res = http.request(method, `${API}${path}`, payload, params);
  if (shed(res, tag)) return res;
  check(res, { [`${tag}: ${expect}`]: (r) => r.status === expect }, { name: tag });
  return res;
}

export function json(res, path) {
  try {
    return path === undefined ? res.json() : res.json(path);
  } catch (e) {
    return undefined;
  }
}

// Multipart upload of `buf`: init, the parts `parallel` at a time with http.batch,
// complete; checks the assembled file hashes to the whole buffer. Returns the file.
export function multipartUpload(s, name, buf, partSize, parallel, tags = {}) {
  const t = Object.assign({ init: 'mp_init', part: 'mp_part', complete: 'mp_complete' }, tags);
  const sha = sha256(buf);
  const init = call(s, 'POST', '/files/upload/multipart/init',
    { file_name: name, file_size: buf.byteLength }, t.init, 201);
  const uploadId = json(init, 'upload_id');
  if (!uploadId) return null;
  const size = Math.max(partSize, json(init, 'part_size_min') || 0);
  const parts = [];
  for (let off = 0, n = 1; off < buf.byteLength || n === 1; off += size, n++) {
    parts.push({ n, data: buf.slice(off, Math.min(off + size, buf.byteLength)) });
  }
  for (let i = 0; i < parts.length; i += parallel) {
    const batch = parts.slice(i, i + parallel);
    const responses = http.batch(batch.map((p) => ({
      method: 'PUT',
      url: `${API}/files/upload/multipart/${uploadId}/part/${p.n}`,
      body: p.data,
      params: {
        headers: s.headers({ 'Content-Type': 'application/octet-stream',
          'X-Content-SHA256': sha256(p.data) }),
        tags: { name: t.part },
        timeout: '600s',
      },
    })));
    responses.forEach((r, k) => {
      if (shed(r, t.part)) return;
      check(r, {
        [`${t.part}: 200, part stored as sent`]: (x) => x.status === 200
          && json(x, 'size') === batch[k].data.byteLength,
      }, { name: t.part });
    });
  }
  const done = http.post(`${API}/files/upload/multipart/${uploadId}/complete`, null, {
    headers: s.headers(),
    tags: { name: t.complete },
    timeout: '600s',
  });
  if (shed(done, t.complete)) return null;
  const ok = check(done, {
    [`${t.complete}: 201`]: (r) => r.status === 201 || (r.status === 200 && json(r, 'unchanged') === true),
    [`${t.complete}: file hashes to the parts sent`]: (r) => json(r, 'sha256') === sha
      && json(r, 'size') === buf.byteLength,
  }, { name: t.complete });
  return ok ? done.json() : null;
}

// ---------------------------------------------------------------------------------
// Thresholds and summaries

// Latency thresholds per request type: { tag: [p95 ms, p99 ms] }. Also requires
// every listed request type to have run at least once (`http_reqs{name:..}` count),
// so a scenario that silently skipped an endpoint fails.
export function perTag(limits, { requireAll = true } = {}) {
  const th = {};
  for (const [tag, [p95, p99]] of Object.entries(limits)) {
    th[`http_req_duration{name:${tag}}`] = [`p(95)<${p95}`, `p(99)<${p99}`];
    if (requireAll) th[`http_reqs{name:${tag}}`] = ['count>0'];
  }
  return th;
}

export const TREND_STATS = ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)', 'count'];

function fmt(metric, values) {
  if (metric.type === 'trend') {
    const unit = metric.contains === 'time' ? 'ms' : '';
    return ['avg', 'med', 'p(95)', 'p(99)', 'max']
      .filter((k) => values[k] !== undefined)
      .map((k) => `${k}=${values[k].toFixed(2)}${unit}`).join(' ');
  }
  if (metric.type === 'rate') {
    return `${(values.rate * 100).toFixed(2)}% (${values.passes} of ${values.passes + values.fails})`;
  }
  if (metric.type === 'counter') return `${values.count} (${values.rate.toFixed(2)}/s)`;
  return Object.entries(values).map(([k, v]) => `${k}=${v}`).join(' ');
}

function allChecks(group, out = []) {
  for (const c of group.checks || []) out.push(c);
  for (const g of group.groups || []) allChecks(g, out);
  return out;
}

// A plain-text summary (k6's own is replaced once handleSummary exists, and its
// jslib helper would need the network): thresholds first, then checks that failed,
// then every metric.
export function textSummary(data, title) {
  const lines = [`\n== ${title} ==`];
  const names = Object.keys(data.metrics).sort();
  let breached = 0;
  for (const name of names) {
    const m = data.metrics[name];
    for (const [expr, r] of Object.entries(m.thresholds || {})) {
      if (!r.ok) breached++;
      lines.push(`  ${r.ok ? 'ok  ' : 'FAIL'} ${name}: ${expr}`);
    }
  }
  const checks = allChecks(data.root_group);
  const failed = checks.filter((c) => c.fails > 0);
  lines.push(`checks: ${checks.reduce((a, c) => a + c.passes, 0)} passed, `
    + `${checks.reduce((a, c) => a + c.fails, 0)} failed`);
  for (const c of failed) lines.push(`  FAIL ${c.name}: ${c.fails} of ${c.passes + c.fails}`);
  lines.push('metrics:');
  for (const name of names) lines.push(`  ${name}: ${fmt(data.metrics[name], data.metrics[name].values)}`);
  lines.push(breached ? `${breached} threshold(s) breached` : 'all thresholds met');
  return lines.join('\n') + '\n';
}

// handleSummary for a scenario: the JSON summary to SUMMARY (default
// k6-summary-<scenario>.json), the text summary to stdout.
export function summaryHandler(scenario) {
  return function handleSummary(data) {
    const path = __ENV.SUMMARY || `k6-summary-${scenario}.json`;
    return {
      [path]: JSON.stringify(data, null, 2),
      stdout: textSummary(data, `${scenario} (${BASE_URL}, run ${(data.setup_data && data.setup_data.runId) || RUN_ID}, seed ${SEED})`),
    };
  };
}
