// small_uploads: 4 KiB files, as fast as the gateway stores them. Each VU uploads new
// files (unique bytes, so none dedups) one after the other into its own account
// (closed model, VUS users); the figure is uploads per second, the capacity report's
// small-file figure (docs/capacity.md).
//
//   k6 run --no-usage-report -e BASE_URL=http://127.0.0.1:8080 benchmarks/k6/small_uploads.js
//
// Knobs: VUS (4), DURATION (60s), SIZE_KIB (4), P95_MS (250), MAX_ERROR_RATE (0.001),
// SEED, RUN_ID, SUMMARY. A default cluster's per-user upload limit stops a VU long
// before the gateway does: run it against one whose rate limits are raised
// (benchmarks/capacity.yaml, tests/cluster.yaml).

import exec from 'k6/execution';
import { Counter } from 'k6/metrics';
import {
  KIB, RUN_ID, SEED, TREND_STATS, envFloat, envInt, envStr, maxVUs, mixSeed, perTag, randomBytes,
  registerAccounts, session, summaryHandler, upload,
} from './lib.js';

const SIZE = envInt('SIZE_KIB', 4) * KIB;
const P95 = envInt('P95_MS', 250);
const MAX_ERRORS = envFloat('MAX_ERROR_RATE', 0.001);

const stored = new Counter('small_uploads');

export const options = {
  scenarios: {
    small_uploads: {
      executor: 'constant-vus',
      vus: envInt('VUS', 4),
      duration: envStr('DURATION', '60s'),
    },
  },
  setupTimeout: '10m',
  summaryTrendStats: TREND_STATS,
  thresholds: Object.assign({
    http_req_failed: [`rate<${MAX_ERRORS}`],
    checks: [`rate>${1 - MAX_ERRORS}`],
    small_uploads: ['count>0'],
  }, perTag({ upload_small: [P95, P95 * 4] })),
};

export function setup() {
  return { accounts: registerAccounts(maxVUs(options)), runId: RUN_ID };
}

let sent = 0;

export default function (data) {
  const s = session(data);
  const vu = exec.vu.idInTest;
  sent += 1;
  const buf = randomBytes(SIZE, mixSeed(SEED, vu, sent));
  if (upload(s, `small-${RUN_ID}-${vu}-${sent}.bin`, buf, 'upload_small').file) {
    stored.add(1);
  }
}

export const handleSummary = summaryHandler('small_uploads');
