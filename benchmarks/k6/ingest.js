// ingest: large uploads, streamed as one raw body and as multipart uploads whose
// parts go up in parallel (http.batch); reports MiB/s per mode.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 benchmarks/k6/ingest.js
//   k6 run -e SIZE_MIB=512 -e CONCURRENCY=4 -e MODE=multipart ... benchmarks/k6/ingest.js
//
// k6 holds request bodies in memory: each VU generates its body once (seeded, see
// lib.js) and rewrites a word every 64 KiB before each upload so that no chunk
// dedups against the previous one. Count on about 2 x SIZE_MIB of memory per VU
// (3 x for multipart, whose parts are slices).
//
// Knobs: MODE (both | stream | multipart), SIZE_MIB (64; 64 to 512 is the intended
// range), CONCURRENCY (1: concurrent uploads, one per VU), UPLOADS (2: per VU and
// mode), PART_MIB (16), PARALLEL_PARTS (4), VERIFY_FULL (download every file whole;
// by default a random 1 MiB range of each is checked), MIN_MIBS (1: the lowest
// acceptable average MiB/s), SEED, RUN_ID, SUMMARY.

import exec from 'k6/execution';
import { Counter, Trend } from 'k6/metrics';
import {
  MIB, RUN_ID, SEED, TREND_STATS, between, downloadVerified, envFloat, envInt, envStr, fileUrl,
  mixSeed, multipartUpload, randomBytes, rangeVerified, registerAccounts, restamp, rng,
  session, summaryHandler, upload,
} from './lib.js';

const MODE = envStr('MODE', 'both');
const SIZE = envInt('SIZE_MIB', 64) * MIB;
const CONCURRENCY = envInt('CONCURRENCY', 1);
const UPLOADS = envInt('UPLOADS', 2);
const PART = envInt('PART_MIB', 16) * MIB;
const PARALLEL = envInt('PARALLEL_PARTS', 4);
const VERIFY_FULL = envStr('VERIFY_FULL', '') !== '';

const mibPerS = new Trend('ingest_mib_s');
const ingested = new Counter('ingest_bytes');

const MODES = MODE === 'both' ? ['stream', 'multipart'] : [MODE];

export const options = {
  scenarios: {
    // Each VU does its uploads one after the other, a streamed one then a multipart
    // one with MODE=both, so the two modes never share the machine within a VU.
    ingest: {
      executor: 'per-vu-iterations', vus: CONCURRENCY, iterations: UPLOADS, maxDuration: '2h',
    },
  },
  setupTimeout: '5m',
  summaryTrendStats: TREND_STATS,
  thresholds: {
    http_req_failed: ['rate==0'],
    checks: ['rate==1.0'],
    ...Object.fromEntries(MODES.map((m) => [
      `ingest_mib_s{mode:${m}}`, [`avg>${envFloat('MIN_MIBS', 1)}`]])),
  },
};

export function setup() {
  if (!MODES.every((m) => m === 'stream' || m === 'multipart')) {
    throw new Error(`MODE=${MODE}: expected both, stream or multipart`);
  }
  return { accounts: registerAccounts(CONCURRENCY), runId: RUN_ID };
}

let body = null;
let uploads = 0;

// This VU's body, fresh content each time.
function nextBody() {
  const seed = mixSeed(SEED, exec.vu.idInTest, uploads++);
  if (body === null) body = randomBytes(SIZE, seed);
  else restamp(body, seed);
  return body;
}

function verify(s, file, buf, next) {
  if (VERIFY_FULL) {
    downloadVerified(s, fileUrl(file.id), file.sha256, buf.byteLength, 'download', { timeout: '30m' });
  } else {
    const a = between(next, 0, buf.byteLength - MIB);
    rangeVerified(s, fileUrl(file.id), buf, a, a + MIB - 1, 'download_range');
  }
}

function record(mode, bytes, ms) {
  mibPerS.add(bytes / MIB / (ms / 1000), { mode });
  ingested.add(bytes, { mode });
}

function stream(s) {
  const buf = nextBody();
  const next = rng(mixSeed(SEED, exec.vu.idInTest, uploads, 7));
  const t0 = Date.now();
  const up = upload(s, `ingest-${exec.vu.idInTest}-${uploads}.bin`, buf, 'upload_stream',
    { timeout: '30m' });
  if (!up.file) return;
  record('stream', buf.byteLength, Date.now() - t0);
  verify(s, up.file, buf, next);
}

function multipart(s) {
  const buf = nextBody();
  const next = rng(mixSeed(SEED, exec.vu.idInTest, uploads, 9));
  const t0 = Date.now();
  const file = multipartUpload(s, `ingest-mp-${exec.vu.idInTest}-${uploads}.bin`, buf, PART,
    PARALLEL);
  if (!file) return;
  record('multipart', buf.byteLength, Date.now() - t0);
  verify(s, file, buf, next);
}

export default function (data) {
  const s = session(data);
  if (MODES.includes('stream')) stream(s);
  if (MODES.includes('multipart')) multipart(s);
}

export const handleSummary = summaryHandler('ingest');
