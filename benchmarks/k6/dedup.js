// dedup: many users upload versions of the same base files (the content repeats across
// users and across versions), and stored bytes must grow far less than logical bytes.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e METRICS_URL=http://127.0.0.1:9194 benchmarks/k6/dedup.js
//
// Every user uploads BASE_FILES files of FILE_MIB, the same bytes for everyone, then
// VERSIONS-1 new versions of each: the base with one EDIT_KIB region rewritten, one
// of VARIANTS edits (so users also repeat each other's versions). Measured three ways:
//   - per upload, from its answer: new_bytes over size (Trend new_fraction);
//   - per user, GET /storage/usage: dedup_saved_bytes over used_bytes (teardown);
//   - whole cluster, when it can be read: growth of stored (live chunk) bytes over
//     growth of logical bytes between setup and teardown, from the admin cluster view
//     (ADMIN_EMAIL and ADMIN_PASSWORD of an admin account) or else from the health
//     monitor's dfms_stored_chunk_bytes / dfms_logical_bytes (METRICS_URL, its ops
//     URL; `make load` passes it). Those gauges refresh every 30 s or so: setup and
//     teardown wait for a snapshot newer than their start. Either way the figures are
//     the whole cluster's: run it on a cluster nothing else writes to meanwhile.
//
// Knobs: USERS (10), BASE_FILES (3), FILE_MIB (8), VERSIONS (4), EDIT_KIB (64),
// VARIANTS (3), MAX_NEW_FRACTION (0.5: per-upload average), MAX_STORED_FRACTION
// (0.25: cluster-wide growth ratio), ADMIN_EMAIL/ADMIN_PASSWORD, METRICS_URL, SEED,
// RUN_ID, SUMMARY.

import http from 'k6/http';
import { check, sleep } from 'k6';
import exec from 'k6/execution';
import { Counter, Trend } from 'k6/metrics';
import {
  API, KIB, MIB, RUN_ID, SEED, TREND_STATS, envFloat, envInt, envStr, freshSession, mixSeed, perTag,
  randomBytes, registerAccounts, session, summaryHandler, upload,
} from './lib.js';

const USERS = envInt('USERS', 10);
const BASE_FILES = envInt('BASE_FILES', 3);
const FILE = envInt('FILE_MIB', 8) * MIB;
const VERSIONS = envInt('VERSIONS', 4);
const EDIT = envInt('EDIT_KIB', 64) * KIB;
const VARIANTS = Math.max(2, envInt('VARIANTS', 3));
const MAX_STORED_FRACTION = envFloat('MAX_STORED_FRACTION', 0.25);
const METRICS_URL = envStr('METRICS_URL', '').replace(/\/+$/, '');

const logical = new Counter('dedup_logical_bytes');
const fresh = new Counter('dedup_new_bytes');
const newFraction = new Trend('new_fraction');
const storedOverLogical = new Trend('stored_over_logical');
const userSaved = new Trend('user_saved_fraction');

export const options = {
  scenarios: {
    dedup: {
      executor: 'per-vu-iterations', vus: USERS, iterations: BASE_FILES * VERSIONS,
      maxDuration: '1h',
    },
  },
  setupTimeout: '10m',
  teardownTimeout: '5m',
  summaryTrendStats: TREND_STATS,
  thresholds: Object.assign({
    http_req_failed: ['rate==0'],
    checks: ['rate==1.0'],
    new_fraction: [`avg<${envFloat('MAX_NEW_FRACTION', 0.5)}`],
    // Each user's versions share all but the edited chunks.
    user_saved_fraction: [`avg>${(0.5 * (VERSIONS - 1)) / VERSIONS}`],
  }, perTag({ upload_version: [10000, 20000] })),
};

// Cluster-wide (stored, logical) bytes, or null when neither source is configured.
function clusterBytes(admin) {
  if (admin) {
    const res = http.get(`${API}/admin/cluster`, { headers: admin.headers(), tags: { name: 'admin_cluster' } });
    check(res, { 'admin cluster view: 200': (r) => r.status === 200 }, { name: 'admin_cluster' });
    return res.status === 200 ? { stored: res.json('stored_bytes'), logical: res.json('logical_bytes') } : null;
  }
  if (METRICS_URL) {
    const res = http.get(`${METRICS_URL}/metrics`, { tags: { name: 'metrics' } });
    check(res, { 'health monitor /metrics: 200': (r) => r.status === 200 }, { name: 'metrics' });
    if (res.status !== 200) return null;
    const value = (re) => {
      const m = res.body.match(re);
      return m ? parseFloat(m[1]) : NaN;
    };
    return {
      stored: value(/^dfms_stored_chunk_bytes\{[^}]*state="live"[^}]*\} (\S+)$/m),
      logical: value(/^dfms_logical_bytes(?:\{[^}]*\})? (\S+)$/m),
      at: value(/^dfms_cluster_gauges_refresh_timestamp_seconds(?:\{[^}]*\})? (\S+)$/m) * 1000,
    };
  }
  return null;
}

// clusterBytes() as of a snapshot taken after now: the health monitor computes its
// gauges every 30 s or so, so a reading may be older than the uploads just made.
function clusterBytesNow(admin) {
  const since = Date.now();
  let got = clusterBytes(admin);
  for (let i = 0; got && !admin && !(got.at >= since) && i < 60; i++) {
    sleep(2);
    got = clusterBytes(admin);
  }
  check(got, { 'cluster figures: a snapshot newer than the uploads': (g) => g === null || !!admin || g.at >= since },
    { name: 'cluster' });
  return got;
}

function adminSession() {
  const email = envStr('ADMIN_EMAIL', '');
  if (!email) return null;
  return freshSession({ email, password: envStr('ADMIN_PASSWORD', '') });
}

export function setup() {
  const accounts = registerAccounts(USERS);
  return { accounts, runId: RUN_ID, before: clusterBytesNow(adminSession()) };
}

// The bytes of version `v` (0-based) of base file `b` as user `u` uploads it.
function content(b, v, u) {
  const buf = randomBytes(FILE, mixSeed(SEED, 0xba5e, b));
  if (v > 0) {
    // Consecutive versions of one user always differ (an identical upload would be
    // "unchanged" and add no version); users share the VARIANTS edits.
    const variant = (u + v) % VARIANTS;
    const at = (mixSeed(SEED, b, variant) % Math.floor((FILE - EDIT) / KIB)) * KIB;
    new Uint8Array(buf).set(new Uint8Array(randomBytes(EDIT, mixSeed(SEED, b, variant, 0xed))), at);
  }
  return buf;
}

export default function (data) {
  const s = session(data);
  const k = exec.vu.iterationInInstance;
  const b = k % BASE_FILES;
  const v = Math.floor(k / BASE_FILES);
  const buf = content(b, v, exec.vu.idInTest);
  const up = upload(s, `dedup-base-${b}.bin`, buf, v === 0 ? 'upload_base' : 'upload_version');
  if (!up.file) return;
  check(up.res, { 'dedup upload: version as expected': (r) => r.json('version') === v + 1 },
    { name: 'upload_version' });
  logical.add(buf.byteLength);
  fresh.add(up.file.new_bytes);
  newFraction.add(up.file.new_bytes / buf.byteLength);
}

export function teardown(data) {
  for (const acct of data.accounts) {
    const s = freshSession(acct);
    const res = http.get(`${API}/storage/usage`, { headers: s.headers(), tags: { name: 'usage' } });
    if (check(res, { 'usage: 200': (r) => r.status === 200 }, { name: 'usage' })) {
      const used = res.json('used_bytes');
      if (used > 0) userSaved.add(res.json('dedup_saved_bytes') / used);
    }
  }
  if (!data.before) return;
  const after = clusterBytesNow(adminSession());
  const expected = USERS * BASE_FILES * VERSIONS * FILE; // if every upload made its version
  const grewLogical = after ? after.logical - data.before.logical : 0;
  const grewStored = after ? after.stored - data.before.stored : NaN;
  const ratio = grewStored / grewLogical;
  storedOverLogical.add(ratio);
  console.log(`dedup: logical +${(grewLogical / MIB).toFixed(1)} MiB, stored +${(grewStored / MIB).toFixed(1)} MiB (ratio ${ratio.toFixed(3)})`);
  check(null, {
    'cluster: logical bytes grew by what was uploaded': () => grewLogical >= 0.9 * expected,
    [`cluster: stored bytes grew less than ${MAX_STORED_FRACTION} x logical`]: () => ratio < MAX_STORED_FRACTION,
  }, { name: 'cluster' });
}

export const handleSummary = summaryHandler('dedup');
