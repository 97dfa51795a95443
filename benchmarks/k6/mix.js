// The read-heavy file-sharing workload (80% reads) that mixed.js, soak.js and
// overload.js run: one operation per call of Workload.op(), chosen by weight, every
// answer checked against what this VU knows it wrote.
//
// Each VU owns one account and keeps a record of every file of it (id, name, the seed
// its bytes come from, its versions). Bytes are never kept: randomBytes(size, seed)
// gives them again, so a VU can check ranges of any file and, at the end of a soak or
// an overload run, that everything it wrote downloads intact.

import { check } from 'k6';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';
import {
  API, KIB, RUN_ID, SEED, Session, between, call, downloadVerified, envInt, fileUrl, json,
  mixSeed, randomBytes, rangeVerified, registerAccounts, rng, sha256, upload,
} from './lib.js';

// New files and new versions written during the run, and files found intact by the
// final verification (setup's files included).
export const filesWritten = new Counter('files_written');
export const versionsWritten = new Counter('versions_written');
export const filesVerified = new Counter('files_verified');

const MIN_SIZE = envInt('FILE_MIN_KIB', 4) * KIB;
const MAX_SIZE = envInt('FILE_MAX_KIB', 256) * KIB;
// Versions the GC keeps per file (lifecycle.keep_versions): older ones may be pruned by
// policy, so the final verification reads only the newest KEEP_VERSIONS of each file.
const KEEP_VERSIONS = envInt('KEEP_VERSIONS', 10);

// Operation weights, out of 100: reads 80, writes 20.
const OPS = [
  ['download', 30], ['download_range', 15], ['file_get', 10], ['list', 10], ['search', 5],
  ['versions', 10],
  ['upload_small', 12], ['upload_version', 6], ['share', 2],
];
const TOTAL = OPS.reduce((a, [, w]) => a + w, 0);

// Tags of the requests this workload makes, for per-tag thresholds.
export const TAGS = ['download', 'download_range', 'file_get', 'list', 'search', 'versions',
  'upload_small', 'upload_version', 'share_create', 'share_download'];

function fileName(vu, k) {
  return `mix-${RUN_ID}-${vu}-${k}.bin`;
}

// setup(): `users` accounts, each with `perUser` files to read from the first
// iteration on. Returns { accounts, files: [[record, ...] per account] }.
export function setupAccountsWithFiles(users, perUser) {
  const accounts = registerAccounts(users);
  const files = accounts.map((acct, i) => {
    const s = new Session(acct);
    const next = rng(mixSeed(SEED, i + 1, 0x5eed));
    const mine = [];
    for (let k = 0; k < perUser; k++) {
      const seed = next();
      const size = between(next, MIN_SIZE, MAX_SIZE);
      const up = upload(s, fileName(i + 1, `s${k}`), randomBytes(size, seed), 'setup_upload');
      if (up.file) {
        mine.push({ id: up.file.id, name: fileName(i + 1, `s${k}`), seed, size, sha: up.sha,
          version: up.file.version, history: [] });
      }
    }
    return mine;
  });
  return { accounts, files, runId: RUN_ID };
}

export class Workload {
  constructor(files) {
    this.vu = exec.vu.idInTest;
    this.files = (files || []).map((f) => Object.assign({}, f, { history: f.history.slice() }));
    this.next = rng(mixSeed(SEED, this.vu, 0x1234));
    this.written = 0;
  }

  pick() {
    return this.files[this.next() % this.files.length];
  }

  // One operation, chosen by weight (a write while the VU has no file yet).
  op(s) {
    let r = this.next() % TOTAL;
    let name = 'upload_small';
    if (this.files.length > 0) {
      for (const [op, w] of OPS) {
        if (r < w) { name = op; break; }
        r -= w;
      }
    }
    this[name](s);
  }

  download(s) {
    const f = this.pick();
    downloadVerified(s, fileUrl(f.id), f.sha, f.size, 'download');
  }

  download_range(s) {
    const f = this.pick();
    const bytes = randomBytes(f.size, f.seed);
    const a = between(this.next, 0, f.size - 1);
    rangeVerified(s, fileUrl(f.id), bytes, a, between(this.next, a, Math.min(f.size - 1, a + 64 * KIB)),
      'download_range');
  }

  file_get(s) {
    const f = this.pick();
    const res = call(s, 'GET', `/files/${f.id}`, null, 'file_get', 200);
    if (res.status === 200) {
      check(res, { 'file_get: current version as written': (x) => json(x, 'sha256') === f.sha
        && json(x, 'version') === f.version }, { name: 'file_get' });
    }
  }

  list(s) {
    const res = call(s, 'GET', '/files?sort=updated_at&order=desc&per_page=20', null, 'list', 200);
    if (res.status === 200) {
      check(res, { 'list: a page of files': (x) => Array.isArray(json(x, 'items')) }, { name: 'list' });
    }
  }

  search(s) {
    const f = this.pick();
    const stem = f.name.replace(/\.bin$/, '');
    const res = call(s, 'GET', `/search?q=${encodeURIComponent(stem)}`, null, 'search', 200);
    if (res.status === 200) {
      check(res, { 'search: finds the file by name': (x) => (json(x, 'items') || []).some((h) => h.id === f.id) },
        { name: 'search' });
    }
  }

  versions(s) {
    const f = this.pick();
    const res = call(s, 'GET', `/files/${f.id}/versions`, null, 'versions', 200);
    if (res.status === 200) {
      check(res, { 'versions: current is the last written': (x) => json(x, 'current_version') === f.version },
        { name: 'versions' });
    }
  }

  upload_small(s) {
    const seed = this.next();
    const size = between(this.next, MIN_SIZE, MAX_SIZE);
    const name = fileName(this.vu, `${exec.vu.iterationInInstance}-${this.written}`);
    const up = upload(s, name, randomBytes(size, seed), 'upload_small');
    if (up.file) {
      this.files.push({ id: up.file.id, name, seed, size, sha: up.sha, version: up.file.version, history: [] });
      this.written++;
      filesWritten.add(1);
    }
  }

  upload_version(s) {
    const f = this.pick();
    const seed = this.next();
    const size = between(this.next, MIN_SIZE, MAX_SIZE);
    const up = upload(s, f.name, randomBytes(size, seed), 'upload_version');
    if (up.file && up.file.id === f.id && up.file.version > f.version) {
      f.history.push({ version: f.version, seed: f.seed, size: f.size, sha: f.sha });
      Object.assign(f, { seed, size, sha: up.sha, version: up.file.version });
      versionsWritten.add(1);
    } else if (up.file) {
      check(up.res, { 'upload_version: a new version of the same file': () => false }, { name: 'upload_version' });
    }
  }

  share(s) {
    const f = this.pick();
    const res = call(s, 'POST', `/files/${f.id}/share`, { expires_in_s: 600, max_downloads: 1 },
      'share_create', 201);
    const url = json(res, 'url');
    if (res.status === 201 && url) {
      downloadVerified(s, url, f.sha, f.size, 'share_download', { anonymous: true });
    }
  }

  // Every file this VU knows of downloads intact: the current version, and each
  // older version the retention policy keeps. Returns how many downloads failed.
  verifyAll(s) {
    let bad = 0;
    for (const f of this.files) {
      const res = downloadVerified(s, fileUrl(f.id), f.sha, f.size, 'verify');
      const ok = res.status === 200 && sha256(res.body) === f.sha;
      const kept = f.history.slice(Math.max(0, f.history.length - (KEEP_VERSIONS - 1)));
      let allOk = ok;
      for (const h of kept) {
        const v = downloadVerified(s, `${API}/files/${f.id}/versions/${h.version}/download`, h.sha,
          h.size, 'verify');
        allOk = allOk && v.status === 200;
      }
      if (allOk) filesVerified.add(1);
      else bad++;
    }
    check(null, { 'verify: every file written downloads intact': () => bad === 0 }, { name: 'verify' });
    return bad;
  }
}

let mine = null;

// This VU's workload: the files setup() made for its account.
export function workload(data) {
  if (mine === null) mine = new Workload(data.files[exec.vu.idInTest - 1]);
  return mine;
}
