// auth_storm: login and refresh churn, to exercise the auth rate limits and the
// refresh-token rotation under concurrency.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 benchmarks/k6/auth_storm.js
//
// Each iteration: a login (a new session), REFRESHES rotations of its refresh token,
// and every REUSE_EVERY-th iteration a replay of a retired refresh token, which must
// answer 401 refresh_token_reused and revoke that session (the next refresh of it
// must fail too). Against a default cluster (30 auth requests per minute per client
// address) most requests answer 429: those carry Retry-After, are counted in
// rate_limited/shed_answers and are not failures. Set RESPECT_RETRY_AFTER=1 to have
// VUs wait as told instead of hammering.
//
// Knobs: VUS (10), DURATION (30s), THINK_S (0.1: pause after each iteration; 0 turns
// a rate-limited run into thousands of 429s a second), REFRESHES (3), REUSE_EVERY (5),
// RESPECT_RETRY_AFTER, P95_MS/P99_MS, SEED, RUN_ID, SUMMARY.

import http from 'k6/http';
import { check, sleep } from 'k6';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';
import {
  API, RUN_ID, TREND_STATS, allowShedding, envFloat, envInt, envStr, perTag, retryAfterSeconds,
  registerAccounts, session, shed, summaryHandler,
} from './lib.js';

allowShedding();

const VUS = envInt('VUS', 10);
const REFRESHES = envInt('REFRESHES', 3);
const REUSE_EVERY = envInt('REUSE_EVERY', 5);
const RESPECT = envStr('RESPECT_RETRY_AFTER', '') !== '';
const THINK_S = envFloat('THINK_S', 0.1);
const LIMITS = [envInt('P95_MS', 2000), envInt('P99_MS', 5000)];

const sessionsStarted = new Counter('auth_sessions');
const rotations = new Counter('auth_rotations');

export const options = {
  scenarios: {
    storm: { executor: 'constant-vus', vus: VUS, duration: envStr('DURATION', '30s') },
  },
  setupTimeout: '10m',
  summaryTrendStats: TREND_STATS,
  thresholds: Object.assign({
    http_req_failed: ['rate==0'],
    checks: ['rate==1.0'],
  }, perTag({ auth_login: LIMITS, auth_refresh: LIMITS }, { requireAll: true })),
};

export function setup() {
  return { accounts: registerAccounts(VUS), runId: RUN_ID };
}

function backOff(res) {
  if (RESPECT && (res.status === 429 || res.status === 503)) sleep(retryAfterSeconds(res));
}

export default function (data) {
  storm(session(data));
  sleep(THINK_S);
}

function storm(s) {
  const login = s.login();
  backOff(login);
  if (login.status !== 200) return;
  sessionsStarted.add(1);
  const retired = [];
  for (let i = 0; i < REFRESHES; i++) {
    const before = s.refreshToken;
    const res = s.refresh();
    backOff(res);
    if (res.status !== 200) return;
    retired.push(before);
    rotations.add(1);
  }
  if (REUSE_EVERY > 0 && retired.length > 0 && exec.vu.iterationInInstance % REUSE_EVERY === 0) {
    // A retired token presented again revokes its whole family: the current one too.
    const replay = http.post(`${API}/auth/refresh`, JSON.stringify({ refresh_token: retired[0] }), {
      headers: { 'Content-Type': 'application/json' },
      tags: { name: 'auth_reuse' },
      responseCallback: http.expectedStatuses(401, 429, 503),
    });
    if (shed(replay, 'auth_reuse')) return;
    check(replay, {
      'reuse: 401 refresh_token_reused': (r) => r.status === 401
        && r.json('error.code') === 'refresh_token_reused',
    }, { name: 'auth_reuse' });
    const after = http.post(`${API}/auth/refresh`, JSON.stringify({ refresh_token: s.refreshToken }), {
      headers: { 'Content-Type': 'application/json' },
      tags: { name: 'auth_reuse' },
      responseCallback: http.expectedStatuses(401, 429, 503),
    });
    if (shed(after, 'auth_reuse')) return;
    check(after, {
      'reuse: the family is revoked': (r) => r.status === 401,
    }, { name: 'auth_reuse' });
  }
}

export const handleSummary = summaryHandler('auth_storm');
