// soak: the mixed workload (mix.js) for DURATION (30 minutes by default) while the
// cluster's background services (GC, scrubber, replication) run, then every VU
// downloads everything it wrote and checks it byte for byte (its SHA-256 against the
// seed it was generated from).
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 benchmarks/k6/soak.js
//   k6 run -e DURATION=2m -e VERIFY_S=60 ... benchmarks/k6/soak.js      (a brief try)
//
// A closed model (constant VUs with think time), not an arrival rate: each VU must
// live to the end to verify what it wrote, and the VU that wrote a file is the one
// that knows its seed.
//
// Knobs: VUS (10), THINK_S (0.5), DURATION (30m), VERIFY_S (300: time allowed for
// the final verification), FILES_PER_USER, FILE_MIN_KIB/FILE_MAX_KIB, P95_MS/P99_MS,
// SEED, RUN_ID, SUMMARY. See docs/load.md.

import { sleep } from 'k6';
import exec from 'k6/execution';
import {
  TREND_STATS, durationMs, envFloat, envInt, envStr, perTag, session, summaryHandler,
} from './lib.js';
import { TAGS, setupAccountsWithFiles, workload } from './mix.js';

const VUS = envInt('VUS', 10);
const THINK_S = envFloat('THINK_S', 0.5);
const LOAD_MS = durationMs(envStr('DURATION', '30m'));
const VERIFY_S = envInt('VERIFY_S', 300);
const LIMITS = [envInt('P95_MS', 500), envInt('P99_MS', 2000)];

export const options = {
  scenarios: {
    soak: {
      executor: 'constant-vus',
      vus: VUS,
      duration: `${Math.round(LOAD_MS / 1000) + VERIFY_S}s`,
      gracefulStop: '60s',
    },
  },
  setupTimeout: '10m',
  summaryTrendStats: TREND_STATS,
  thresholds: Object.assign({
    http_req_failed: ['rate<0.001'],
    checks: ['rate>0.999'],
    // Every VU's final verification must have run and passed.
    'checks{name:verify}': ['rate==1.0'],
    'http_reqs{name:verify}': ['count>0'],
  }, perTag(Object.fromEntries(TAGS.map((t) => [t, LIMITS])), { requireAll: false })),
};

export function setup() {
  return setupAccountsWithFiles(VUS, envInt('FILES_PER_USER', 5));
}

let verified = false;

export default function (data) {
  const s = session(data);
  const w = workload(data);
  const elapsed = Date.now() - exec.scenario.startTime;
  if (elapsed < LOAD_MS) {
    exec.vu.metrics.tags.phase = 'load';
    w.op(s);
    sleep(THINK_S);
  } else if (!verified) {
    exec.vu.metrics.tags.phase = 'verify';
    w.verifyAll(s);
    verified = true;
  } else {
    sleep(1);
  }
}

export const handleSummary = summaryHandler('soak');
