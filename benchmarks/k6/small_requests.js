// small_requests: the request path of issue 18 — authenticated small API calls only,
// no file bytes. Each VU lists a page of its root folder (GET /files?per_page=20) and
// stats one of its files (GET /files/{id}), alternately, as fast as answers come
// (closed model, VUS users). What it measures is the gateway's cost per request
// (docs/performance-requests.md reads the gateway's CPU from /proc around a run).
//
//   k6 run --no-usage-report -e BASE_URL=http://127.0.0.1:8080 benchmarks/k6/small_requests.js
//
// Knobs: VUS (10), DURATION (30s), FILES_PER_USER (25: more than a page), P95_MS (50),
// MAX_ERROR_RATE (0), SEED, RUN_ID, SUMMARY. Run against a cluster whose rate limits
// are raised (tests/cluster.yaml): 10 VUs exceed a default cluster's per-user limit.

import { check } from 'k6';
import exec from 'k6/execution';
import http from 'k6/http';
import {
  API, KIB, RUN_ID, TREND_STATS, envFloat, envInt, envStr, freshSession, maxVUs,
  json, perTag, randomBytes, registerAccounts, session, summaryHandler, upload,
} from './lib.js';

const P95 = envInt('P95_MS', 50);

export const options = {
  scenarios: {
    small: {
      executor: 'constant-vus',
      vus: envInt('VUS', 10),
      duration: envStr('DURATION', '30s'),
    },
  },
  setupTimeout: '10m',
  summaryTrendStats: TREND_STATS,
  thresholds: Object.assign({
    http_req_failed: [`rate<=${envFloat('MAX_ERROR_RATE', 0)}`],
    checks: [`rate>=${1 - envFloat('MAX_ERROR_RATE', 0)}`],
  }, perTag({ list: [P95, P95 * 4], stat: [P95, P95 * 4] })),
};

// FILES_PER_USER files of 1 KiB in the root folder of `s`'s account; their ids.
function uploadFiles(s, i) {
  const ids = [];
  for (let f = 0; f < envInt('FILES_PER_USER', 25); f++) {
    const up = upload(s, `small-${RUN_ID}-${i}-${f}.bin`, randomBytes(KIB, i * 1000 + f),
      'setup_upload');
    if (up.file) ids.push(up.file.id);
  }
  if (ids.length === 0) throw new Error(`no files for ${s.email}`);
  return ids;
}

// One account per VU, each with FILES_PER_USER small files in its root folder.
export function setup() {
  const accounts = registerAccounts(maxVUs(options));
  for (let i = 0; i < accounts.length; i++) {
    uploadFiles(freshSession(accounts[i]), i);
  }
  // The driver (benchmarks/bench_requests.py) starts its CPU readings here.
  console.log('small_requests: setup done');
  return { accounts, runId: RUN_ID };
}

let turn = 0;
let myFiles = null;

// This VU's file ids, from one listing of its root folder on its first iteration (not
// from setup()'s data, so the checks below rest on what the gateway itself answered).
function filesOf(s) {
  if (myFiles === null) {
    const res = http.get(`${API}/files?per_page=500`, { headers: s.headers(), tags: { name: 'vu_files' } });
    myFiles = (json(res, 'items') || []).map((f) => f.id);
    if (myFiles.length === 0) {
      // An account setup() did not make (more VUs than it foresaw): give it files now.
      console.warn(`small_requests: VU ${exec.vu.idInTest} has no files; uploading`);
      myFiles = uploadFiles(s, exec.vu.idInTest);
    }
  }
  return myFiles;
}

export default function (data) {
  const s = session(data);
  const files = filesOf(s);
  turn += 1;
  if (turn % 2 === 1) {
    const res = http.get(`${API}/files?per_page=20`, { headers: s.headers(), tags: { name: 'list' } });
    check(res, {
      'list: 200 with a page of the files': (r) => r.status === 200
        && (json(r, 'items') || []).length === Math.min(20, files.length)
        && json(r, 'total') === files.length,
    }, { name: 'list' });
    return;
  }
  const id = files[turn % files.length];
  const res = http.get(`${API}/files/${id}`, { headers: s.headers(), tags: { name: 'stat' } });
  check(res, {
    'stat: 200 with the file asked': (r) => r.status === 200 && json(r, 'id') === id,
  }, { name: 'stat' });
}

export const handleSummary = summaryHandler('small_requests');
