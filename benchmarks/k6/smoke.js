// smoke: every endpoint family, with its content verified, for a short while and a few
// users. It is the CI run (tests/integration/test_k6_smoke.py): it must pass with no
// failed request and no failed check.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 benchmarks/k6/smoke.js
//
// Knobs: VUS (3), DURATION (30s), BIG_MIB (8, the streamed upload), AUTH_EVERY_S (15),
// SEED, RUN_ID, SUMMARY. See docs/load.md.

import { check, sleep } from 'k6';
import exec from 'k6/execution';
import {
  API, KIB, RUN_ID, MIB, SEED, TREND_STATS, between, call, downloadVerified, envInt,
  envStr, fileUrl, json, mixSeed, multipartUpload, perTag, randomBytes, rangeVerified,
  registerAccounts, rng, session, summaryHandler, upload,
} from './lib.js';

const VUS = envInt('VUS', 3);
const BIG = envInt('BIG_MIB', 8) * MIB;
// Login and refresh count against the auth limit (30 per minute per client address by
// default, and every VU shares the address): each VU exercises them on its first
// iteration and then at most every AUTH_EVERY_S, so that a smoke run against a
// default `make up` cluster stays under it.
const AUTH_EVERY_MS = envInt('AUTH_EVERY_S', 15) * 1000;

export const options = {
  scenarios: {
    smoke: { executor: 'constant-vus', vus: VUS, duration: envStr('DURATION', '30s') },
  },
  setupTimeout: '5m',
  summaryTrendStats: TREND_STATS,
  thresholds: Object.assign({
    http_req_failed: ['rate==0'],
    checks: ['rate==1.0'],
  }, perTag({
    // [p95, p99] in ms: generous, this is a correctness run on a small machine
    // sharing its cores with the cluster.
    auth_login: [2000, 4000],
    auth_refresh: [1000, 3000],
    upload_small: [2000, 5000],
    upload_big: [15000, 30000],
    upload_version: [2000, 5000],
    download: [2000, 5000],
    download_range: [2000, 5000],
    list: [1000, 3000],
    search: [1000, 3000],
    versions: [1000, 3000],
    version_download: [2000, 5000],
    trash: [1000, 3000],
    trash_restore: [1000, 3000],
    share_create: [1000, 3000],
    share_download: [2000, 5000],
    mp_init: [1000, 3000],
    mp_part: [10000, 20000],
    mp_complete: [10000, 20000],
  })),
};

export function setup() {
  return { accounts: registerAccounts(VUS), runId: RUN_ID };
}

let lastAuth = 0;

export default function (data) {
  const s = session(data);
  const it = exec.vu.iterationInScenario;
  const next = rng(mixSeed(SEED, exec.vu.idInTest, it));
  const stem = `smoke-${exec.vu.idInTest}-${it}-${next().toString(36)}`;

  // auth: a fresh sign-in, then a refresh of it (paced, see AUTH_EVERY_MS).
  if (Date.now() - lastAuth >= AUTH_EVERY_MS) {
    lastAuth = Date.now();
    s.login();
    s.refresh();
  }

  // upload small, download whole and by range.
  const small = randomBytes(between(next, 1 * KIB, 64 * KIB), next());
  const up = upload(s, `${stem} notes.bin`, small, 'upload_small');
  if (!up.file) return;
  const id = up.file.id;
  downloadVerified(s, fileUrl(id), up.sha, small.byteLength, 'download');
  const a = between(next, 0, small.byteLength - 2);
  rangeVerified(s, fileUrl(id), small, a, between(next, a, small.byteLength - 1), 'download_range');

  // upload 8 MiB streamed (raw body); a range across chunk boundaries of it.
  const big = randomBytes(BIG, next());
  const bigUp = upload(s, `${stem} big.bin`, big, 'upload_big');
  if (bigUp.file) {
    const start = between(next, 0, BIG / 2);
    rangeVerified(s, fileUrl(bigUp.file.id), big, start, start + BIG / 4, 'download_range');
  }

  // versions: other bytes under the same name are version 2; version 1 stays readable.
  const v2 = randomBytes(small.byteLength + 17, next());
  const ver = upload(s, `${stem} notes.bin`, v2, 'upload_version');
  check(ver.res, { 'upload_version: same file, version 2': (r) => json(r, 'id') === id && json(r, 'version') === 2 },
    { name: 'upload_version' });
  const versions = call(s, 'GET', `/files/${id}/versions`, null, 'versions', 200);
  check(versions, { 'versions: 2, newest first': (r) => (json(r, 'items') || []).map((v) => v.version).join() === '2,1' },
    { name: 'versions' });
  downloadVerified(s, `${API}/files/${id}/versions/1/download`, up.sha, small.byteLength, 'version_download');

  // list and search.
  const list = call(s, 'GET', '/files?sort=updated_at&order=desc&per_page=50', null, 'list', 200);
  check(list, { 'list: holds the new file': (r) => (json(r, 'items') || []).some((f) => f.id === id) },
    { name: 'list' });
  const found = call(s, 'GET', `/search?q=${encodeURIComponent(stem)}`, null, 'search', 200);
  check(found, { 'search: finds the file by name': (r) => (json(r, 'items') || []).some((f) => f.id === id) },
    { name: 'search' });

  // trash and restore: the restored file still has version 2's bytes.
  call(s, 'DELETE', `/files/${id}`, null, 'trash', 204);
  const back = call(s, 'POST', `/trash/${id}/restore?rename=true`, null, 'trash_restore', 200);
  check(back, { 'trash_restore: same file back': (r) => json(r, 'id') === id && json(r, 'sha256') === ver.sha },
    { name: 'trash_restore' });

  // share link, downloaded without any account.
  const share = call(s, 'POST', `/files/${id}/share`, { expires_in_s: 600, max_downloads: 3 },
    'share_create', 201);
  const url = json(share, 'url');
  if (url) downloadVerified(s, url, ver.sha, v2.byteLength, 'share_download', { anonymous: true });

  // multipart: two parts sent in parallel (the first at the minimum part size).
  const mp = randomBytes(5 * MIB + between(next, 1, 1 * MIB), next());
  multipartUpload(s, `${stem} parts.bin`, mp, 5 * MIB, 2);

  sleep(0.5);
}

export const handleSummary = summaryHandler('smoke');
