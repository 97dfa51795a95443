// overload: push the gateway past its capacity, then check that it recovers and lost
// nothing.
//
//   phase     length        who works
//   before    BEFORE_S 30   BASE_VUS with think time (writes to check at the end)
//   push      PUSH_S 60     every one of PUSH_VUS, no think time
//   settle    SETTLE_S 30   BASE_VUS again; latency may still be high (not judged)
//   recovered RECOVER_S 30  BASE_VUS; p95 must be back under P95_MS
//   verify    VERIFY_S 120  every VU downloads all it wrote and checks the bytes
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 benchmarks/k6/overload.js
//
// The only non-2xx answers allowed are the gateway's load shedding: 429 or 503, each
// with Retry-After (counted in shed_answers, checked for the header). Anything else,
// a 500 or 502 or a timeout, fails http_req_failed. One constant-VUs scenario rather
// than one per phase, so that the VU that wrote a file lives to verify it.
//
// Knobs: BASE_VUS (5), PUSH_VUS (60), BEFORE_S, PUSH_S, SETTLE_S, RECOVER_S, VERIFY_S,
// THINK_S (0.5), P95_MS (500), FILE_MIN_KIB/FILE_MAX_KIB, SEED, RUN_ID, SUMMARY.

import { sleep } from 'k6';
import exec from 'k6/execution';
import {
  TREND_STATS, allowShedding, envFloat, envInt, session, summaryHandler,
} from './lib.js';
import { setupAccountsWithFiles, workload } from './mix.js';

allowShedding();

const BASE_VUS = envInt('BASE_VUS', 5);
const PUSH_VUS = envInt('PUSH_VUS', 60);
const THINK_S = envFloat('THINK_S', 0.5);
const PHASES = [
  ['before', envInt('BEFORE_S', 30)],
  ['push', envInt('PUSH_S', 60)],
  ['settle', envInt('SETTLE_S', 30)],
  ['recovered', envInt('RECOVER_S', 30)],
  ['verify', envInt('VERIFY_S', 120)],
];
const TOTAL_S = PHASES.reduce((a, [, s]) => a + s, 0);

export const options = {
  scenarios: {
    overload: {
      executor: 'constant-vus',
      vus: PUSH_VUS,
      duration: `${TOTAL_S}s`,
      gracefulStop: '60s',
    },
  },
  setupTimeout: '10m',
  summaryTrendStats: TREND_STATS,
  thresholds: {
    // 429/503 are expected (allowShedding); everything else non-2xx is a failure.
    http_req_failed: ['rate==0'],
    checks: ['rate==1.0'],
    // Recovery: 30 s after the push ends, latency is back to normal.
    'http_req_duration{phase:recovered}': [`p(95)<${envInt('P95_MS', 500)}`],
    'http_reqs{phase:push}': ['count>0'],
    'http_reqs{phase:recovered}': ['count>0'],
    // Nothing written before or during the push is lost.
    'checks{name:verify}': ['rate==1.0'],
    'http_reqs{name:verify}': ['count>0'],
    // How much the gateway shed in each phase, for the summary.
    'shed_answers{phase:push}': ['count>=0'],
    'shed_answers{phase:recovered}': ['count>=0'],
  },
};

export function setup() {
  return setupAccountsWithFiles(PUSH_VUS, envInt('FILES_PER_USER', 3));
}

function phaseNow() {
  let t = (Date.now() - exec.scenario.startTime) / 1000;
  for (const [name, length] of PHASES) {
    if (t < length) return name;
    t -= length;
  }
  return 'done';
}

let verified = false;

export default function (data) {
  const phase = phaseNow();
  exec.vu.metrics.tags.phase = phase;
  const s = session(data);
  const w = workload(data);
  if (phase === 'push') {
    w.op(s);
  } else if (phase === 'verify' || phase === 'done') {
    if (!verified) {
      w.verifyAll(s);
      verified = true;
    } else {
      sleep(1);
    }
  } else if (exec.vu.idInTest <= BASE_VUS) {
    w.op(s);
    sleep(THINK_S);
  } else {
    sleep(0.5);
  }
}

export const handleSummary = summaryHandler('overload');
