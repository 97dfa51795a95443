// overload: push the gateway past its capacity, then check that it recovers and lost
// nothing.
//
//   phase      length        arrival rate
//   before     BEFORE_S 30   BASE_RATE 10/s
//   push       PUSH_S 60     PUSH_RATE 300/s, up to PUSH_MAX_VUS 200 requests in flight
//   settle     SETTLE_S 30   BASE_RATE; latency may still be high (not judged)
//   recovered  RECOVER_S 30  BASE_RATE; p95 must be back under P95_MS
//   teardown                 every file written in any phase downloads intact
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 benchmarks/k6/overload.js
//
// An open model (arrival rate): demand does not drop because the gateway is slow, so
// the push really is past capacity; k6 counts what it could not even start in
// dropped_iterations. Each iteration is one operation: 80% reads (whole or ranged
// downloads of known files, content checked), 20% new small files.
//
// The only non-2xx answers allowed are the gateway's load shedding: 429 or 503, each
// with Retry-After (counted in shed_answers, checked for the header). Anything else,
// a 500, a 502, a timeout (REQUEST_TIMEOUT 120s), fails http_req_failed.
//
// Nothing lost: every file name carries the seed and size of its bytes, and every
// acknowledged upload adds 1 to unverified_writes (setup's files too). Teardown lists
// every account's files, downloads each one of this run, checks its SHA-256 against
// the bytes the name says, and takes 1 off for each intact file: a file acknowledged
// but missing or damaged leaves the count above 0.
//
// Knobs: BASE_RATE, PUSH_RATE, PUSH_MAX_VUS, BEFORE_S, PUSH_S, SETTLE_S, RECOVER_S,
// P95_MS (500), USERS (20: accounts shared by the VUs), FILES_PER_USER (3),
// FILE_MIN_KIB/FILE_MAX_KIB (4/256), REQUEST_TIMEOUT, SEED, RUN_ID, SUMMARY.

import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';
import {
  API, KIB, RUN_ID, SEED, Session, TREND_STATS, allowShedding, between, downloadVerified,
  envInt, envStr, fileUrl, freshSession, json, mixSeed, randomBytes, rangeVerified,
  registerAccounts, rng, sha256, sharedSession, summaryHandler, upload,
} from './lib.js';

allowShedding();

const BASE_RATE = envInt('BASE_RATE', 10);
const PHASES = [
  ['before', envInt('BEFORE_S', 30), BASE_RATE],
  ['push', envInt('PUSH_S', 60), envInt('PUSH_RATE', 300)],
  ['settle', envInt('SETTLE_S', 30), BASE_RATE],
  ['recovered', envInt('RECOVER_S', 30), BASE_RATE],
];
const USERS = envInt('USERS', 20);
const MIN_SIZE = envInt('FILE_MIN_KIB', 4) * KIB;
const MAX_SIZE = envInt('FILE_MAX_KIB', 256) * KIB;
const TIMEOUT = envStr('REQUEST_TIMEOUT', '120s');

const unverified = new Counter('unverified_writes');
const filesVerified = new Counter('files_verified');

function scenarios() {
  const out = {};
  let start = 0;
  for (const [phase, seconds, rate] of PHASES) {
    out[phase] = {
      executor: 'constant-arrival-rate',
      rate, timeUnit: '1s', duration: `${seconds}s`, startTime: `${start}s`,
      preAllocatedVUs: phase === 'push' ? 50 : 10,
      maxVUs: phase === 'push' ? envInt('PUSH_MAX_VUS', 200) : 30,
      tags: { phase },
      gracefulStop: '120s',
    };
    start += seconds;
  }
  return out;
}

export const options = {
  scenarios: scenarios(),
  setupTimeout: '10m',
  teardownTimeout: '20m',
  summaryTrendStats: TREND_STATS,
  thresholds: {
    // 429/503 are expected (allowShedding); everything else non-2xx is a failure.
    http_req_failed: ['rate==0'],
    checks: ['rate==1.0'],
    // Recovery: once the push has been over for SETTLE_S, latency is back to normal.
    'http_req_duration{phase:recovered}': [`p(95)<${envInt('P95_MS', 500)}`],
    'http_reqs{phase:push}': ['count>0'],
    'http_reqs{phase:recovered}': ['count>0'],
    // Nothing acknowledged is lost.
    unverified_writes: ['count<=0'],
    files_verified: ['count>0'],
    // For the summary: load shed and work not even started, per phase.
    'shed_answers{phase:push}': ['count>=0'],
    'shed_answers{phase:recovered}': ['count>=0'],
    'dropped_iterations{scenario:push}': ['count>=0'],
    'http_req_duration{phase:push}': ['p(95)>=0'],
    // ... split into what was served (whole downloads, 200) and what was shed (503).
    'http_req_duration{phase:push,status:200}': ['p(95)>=0'],
    'http_req_duration{phase:push,status:503}': ['p(95)>=0'],
  },
};

// `ov-<run>-<account>-s<seed>-z<size>.bin`: the bytes of a file follow from its name.
// `runId` is setup's (RUN_ID differs between VUs unless set).
function nameOf(runId, account, seed, size) {
  return `ov-${runId}-${account}-s${seed}-z${size}.bin`;
}

export function setup() {
  const accounts = registerAccounts(USERS);
  const files = accounts.map((acct, i) => {
    const s = new Session(acct);
    const next = rng(mixSeed(SEED, i, 0x0e1));
    const mine = [];
    for (let k = 0; k < envInt('FILES_PER_USER', 3); k++) {
      const seed = next();
      const size = between(next, MIN_SIZE, MAX_SIZE);
      const up = upload(s, nameOf(RUN_ID, i, seed, size), randomBytes(size, seed), 'setup_upload');
      if (up.file) {
        unverified.add(1);
        mine.push({ id: up.file.id, seed, size, sha: up.sha });
      }
    }
    return mine;
  });
  return { accounts, files, runId: RUN_ID };
}

let known = null; // files of this VU's account it can read: setup's and its own
let next = null;

export default function (data) {
  const s = sharedSession(data);
  if (known === null) {
    known = data.files[s.index].slice();
    next = rng(mixSeed(SEED, exec.vu.idInTest, 0x0e2));
  }
  const r = next() % 100;
  if (r < 20 || known.length === 0) {
    const seed = next();
    const size = between(next, MIN_SIZE, MAX_SIZE);
    const up = upload(s, nameOf(data.runId, s.index, seed, size), randomBytes(size, seed), 'upload_small',
      { timeout: TIMEOUT });
    if (up.file) {
      unverified.add(1);
      known.push({ id: up.file.id, seed, size, sha: up.sha });
    }
    return;
  }
  const f = known[next() % known.length];
  if (r < 65) {
    downloadVerified(s, fileUrl(f.id), f.sha, f.size, 'download', { timeout: TIMEOUT });
  } else {
    const bytes = randomBytes(f.size, f.seed);
    const a = between(next, 0, f.size - 1);
    rangeVerified(s, fileUrl(f.id), bytes, a, Math.min(f.size - 1, a + 64 * KIB), 'download_range');
  }
}

// Every file of the run, found by listing each account's files, downloads as the
// bytes its name says.
export function teardown(data) {
  const NAME = new RegExp(`^ov-${data.runId}-\\d+-s(\\d+)-z(\\d+)\\.bin$`);
  for (const acct of data.accounts) {
    const s = freshSession(acct);
    let cursor = null;
    do {
      const page = http.get(`${API}/files?sort=name&per_page=500${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
        { headers: s.headers(), tags: { name: 'verify_list' } });
      if (!check(page, { 'verify: listing 200': (r) => r.status === 200 }, { name: 'verify' })) break;
      for (const f of json(page, 'items') || []) {
        const m = NAME.exec(f.name);
        if (!m) continue;
        const want = sha256(randomBytes(parseInt(m[2], 10), parseInt(m[1], 10)));
        const res = downloadVerified(s, fileUrl(f.id), want, parseInt(m[2], 10), 'verify');
        if (res.status === 200 && sha256(res.body) === want) {
          unverified.add(-1);
          filesVerified.add(1);
        }
      }
      cursor = json(page, 'next_cursor');
    } while (cursor);
  }
}

export const handleSummary = summaryHandler('overload');
