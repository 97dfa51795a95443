"""The capacity report of this machine (issue 14, docs/capacity.md): k6 scenarios run
against a local cluster at n=3, with every process's CPU and memory sampled.

    flock /tmp/dfms-heavy.lock .venv/bin/python benchmarks/capacity.py \
        [--parts mixed,ingest,small,soak] [--soak 30m] [--out DIR] [--data-dir D]

Without ``--data-dir`` it starts `dfms up` with benchmarks/capacity.yaml (the rate
limits raised: every VU comes from one address) in a temporary directory, and stops
and deletes it afterwards. Parts:

- ``mixed``: mixed.js at constant arrival rates, one k6 run per rate (``--rates``), each
  ``--step`` long, until a step breaks the capacity criterion: p95 of every request
  < 250 ms, errors < 0.1%, and (the open model's tell) under 1% of the iterations
  dropped because no VU was free. The sustained rate is the last step that held.
- ``ingest``: ingest.js streamed and multipart, 1, 4 and 16 concurrent uploads;
  MiB/s of all uploads together (bytes over the span from the first upload's start to
  the last one's end) and per upload.
- ``small``: small_uploads.js, 4 KiB files, at 4 and 16 VUs: uploads per second.
- ``soak``: soak.js for ``--soak``: error rate, p99 of the first and of the last five
  minutes of load, the RSS of the gateway and the chunk service at start and end, and
  the final verification of every file written.

Each run's samples come from k6's JSON output (``--out json``), setup and teardown
left out, so the figures cover the measured phase only; CPU is sampled from /proc once
a second for every process of the cluster and for k6 itself (it shares the machine),
and each figure's CPU is the part that falls inside its phase. Everything goes to
``OUT/capacity.json``; a summary is printed. Run it alone.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dfms.localstack.handle import ClusterHandle, attach, make_data_dir  # noqa: E402

K6 = Path(sys.executable).parent / "k6"
SCRIPTS = ROOT / "benchmarks" / "k6"
CONFIG = ROOT / "benchmarks" / "capacity.yaml"
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024

P95_LIMIT_MS = 250.0
MAX_ERROR_RATE = 0.001
MAX_DROPPED = 0.01
SAMPLE_EVERY_S = 1.0
OUTSIDE = ("::setup", "::teardown")
SOAK_WINDOW_S = 300.0  # "the first and the last five minutes"
RSS_WATCHED = ("gateway", "chunk-service", "replication-manager", "gc-worker", "postgres")


# -- what k6 measured ------------------------------------------------------------------


@dataclass
class Phase:
    """The measured phase of one k6 run, from its JSON points."""

    durations_ms: list[float] = field(default_factory=list)
    durations_by_name: dict[str, list[float]] = field(default_factory=dict)
    failed: int = 0
    start: float = math.inf
    end: float = -math.inf
    values: dict[str, list[tuple[float, float, Mapping[str, str]]]] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return len(self.durations_ms)

    @property
    def wall_s(self) -> float:
        return max(self.end - self.start, 1e-9)


def epoch(stamp: str) -> float:
    """k6's RFC 3339 time with nanoseconds, which fromisoformat takes to microseconds."""
    head, _, rest = stamp.partition(".")
    if not rest:
        return datetime.fromisoformat(stamp).timestamp()
    digits = rest[:len(rest) - len(rest.lstrip("0123456789"))]
    zone = rest[len(digits):]
    return datetime.fromisoformat(f"{head}.{digits[:6]:0<6}{zone}").timestamp()


def read_points(lines: Iterable[str], keep: Iterable[str] = ()) -> Phase:
    """http_req_duration and http_req_failed of the measured phase, and the points of
    the metrics named in ``keep`` (time, value, tags)."""
    phase, wanted = Phase(), set(keep)
    for line in lines:
        point = json.loads(line)
        if point.get("type") != "Point":
            continue
        data, metric = point["data"], point["metric"]
        tags = data.get("tags") or {}
        if tags.get("group") in OUTSIDE:
            continue
        at = epoch(data["time"])
        if metric == "http_req_duration":
            value = float(data["value"])
            phase.durations_ms.append(value)
            phase.durations_by_name.setdefault(tags.get("name", ""), []).append(value)
            phase.start, phase.end = min(phase.start, at), max(phase.end, at)
        elif metric == "http_req_failed":
            phase.failed += int(data["value"])
        if metric in wanted:
            phase.values.setdefault(metric, []).append((at, float(data["value"]), tags))
    return phase


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(pct / 100 * len(ordered)) - 1))]


def latency(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(values, 50), 1), "p95_ms": round(percentile(values, 95), 1),
            "p99_ms": round(percentile(values, 99), 1)}


# -- what the processes spent ----------------------------------------------------------


def process_names(info: Mapping[str, Any]) -> dict[str, int]:
    """Every long-running process of the cluster by name, from cluster.json."""
    pids = {name: int(s["pid"]) for name, s in info["services"].items()}
    pids.update({str(n["id"]): int(n["pid"]) for n in info["s3_nodes"]})
    pids["postgres"] = int(info["postgres"]["pid"])
    pids["redis"] = int(info["redis"]["pid"])
    pids["kafka"] = int(info["kafka"]["pid"])
    if info["kafka"].get("store_pid"):
        pids["kafka-store"] = int(info["kafka"]["store_pid"])
    return pids


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree_usage(pid: int, parents: Mapping[int, int]) -> tuple[float, int]:
    """CPU seconds and RSS bytes of a process and its children (PostgreSQL's backends
    are the postmaster's); ``parents`` maps each pid to its parent."""
    cpu, rss = 0.0, 0
    for child, parent in parents.items():
        if child != pid and parent != pid:
            continue
        try:
            fields = _stat(child)
        except OSError:
            continue
        cpu += (int(fields[11]) + int(fields[12])) / TICKS
        rss += int(fields[21]) * PAGE
    return cpu, rss


def parent_map() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat(int(entry.name))[1])
            except (OSError, ValueError, IndexError):
                continue
    return parents


@dataclass
class Sample:
    at: float
    cpu_s: dict[str, float]
    rss: dict[str, int]


class Sampler:
    """Samples the named processes' CPU and RSS once a second in a thread."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def take(self) -> Sample:
        parents = parent_map()
        # A copy: run_k6 adds and removes k6's pid while this thread samples.
        usage = {name: tree_usage(pid, parents) for name, pid in dict(self.pids).items()}
        return Sample(time.time(), {n: u[0] for n, u in usage.items()},
                      {n: u[1] for n, u in usage.items()})

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.take())
            except Exception as exc:  # one bad reading must not end the sampling
                print(f"sampler: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            self._stop.wait(SAMPLE_EVERY_S)


def cores_between(samples: list[Sample], start: float, end: float) -> dict[str, float]:
    """Cores each process used from ``start`` to ``end`` (the samples nearest inside)."""
    inside = [s for s in samples if start <= s.at <= end]
    if len(inside) < 2:
        return {}
    first, last = inside[0], inside[-1]
    span = last.at - first.at
    used = {n: (last.cpu_s[n] - first.cpu_s.get(n, 0.0)) / span for n in last.cpu_s}
    return {n: round(c, 2) for n, c in sorted(used.items(), key=lambda kv: -kv[1])}


def busiest(cores: Mapping[str, float]) -> str:
    return next(iter(cores), "")


# -- running k6 ------------------------------------------------------------------------


@dataclass
class Run:
    exit_code: int
    phase: Phase
    summary: dict[str, Any]
    cores: dict[str, float]
    tail: str


def run_seed(label: str) -> int:
    """A seed of its own per run: the scenarios' data follows the seed, and a run that
    repeated an earlier run's bytes would measure dedup hits, not ingest."""
    return zlib.crc32(label.encode()) % 1_000_000_000 + 1


def run_k6(script: str, env: Mapping[str, str], out: Path, label: str,
           sampler: Sampler, keep: Iterable[str] = ()) -> Run:
    points, summary = out / f"{label}.json.gz", out / f"{label}-summary.json"
    env = {**env, "SEED": str(run_seed(label))}
    args = [str(K6), "run", "--quiet", "--no-color", "--no-usage-report",
            "--out", f"json={points}", "-e", f"SUMMARY={summary}"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    print(f"-- {label}: k6 {script} {' '.join(f'{k}={v}' for k, v in env.items())}", flush=True)
    k6 = subprocess.Popen([*args, str(SCRIPTS / script)], cwd=out, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(out)})
    sampler.pids["k6"] = k6.pid
    output, _ = k6.communicate()
    sampler.pids.pop("k6", None)
    with gzip.open(points, "rt") as lines:
        phase = read_points(lines, keep)
    points.unlink()
    cores = cores_between(sampler.samples, phase.start, phase.end)
    return Run(k6.returncode, phase, json.loads(summary.read_text()), cores, output[-3000:])


def counter(summary: Mapping[str, Any], name: str) -> float:
    return float(summary["metrics"].get(name, {}).get("values", {}).get("count", 0))


# -- the parts -------------------------------------------------------------------------


def mixed_step(rate: int, run: Run, step_s: float) -> dict[str, Any]:
    phase = run.phase
    dropped = counter(run.summary, "dropped_iterations")
    errors = phase.failed / max(phase.requests, 1)
    lat = latency(phase.durations_ms)
    figures: dict[str, Any] = {"target_per_s": rate, "requests": phase.requests,
               "req_per_s": round(phase.requests / phase.wall_s, 1),
               "ops_per_s": round(counter(run.summary, "iterations") / step_s, 1),
               "dropped": int(dropped), "error_rate": round(errors, 5),
               **lat, "cores": run.cores, "busiest": busiest(run.cores),
               "k6_exit": run.exit_code}
    figures["held"] = (lat["p95_ms"] < P95_LIMIT_MS and errors < MAX_ERROR_RATE
                       and dropped <= MAX_DROPPED * rate * step_s)
    return figures


def mixed(args: argparse.Namespace, base: Mapping[str, str], out: Path,
          sampler: Sampler) -> dict[str, Any]:
    steps = []
    for rate in args.rates:
        # VUs for twice the rate, all made before the step: an iteration that waits a
        # second on a slow answer holds its VU, and too few VUs, or VUs still being
        # initialised mid-step, drop iterations for want of a client (k6's
        # dropped_iterations), not of a server.
        vus = max(30, 2 * rate)
        env = {**base, "STAGES": f"{rate}:5s,{rate}:{args.step}", "START_RATE": str(rate),
               "PRE_VUS": str(vus), "MAX_VUS": str(vus), "FILES_PER_USER": "3"}
        step = mixed_step(rate, run_k6("mixed.js", env, out, f"mixed-{rate}", sampler),
                          seconds(args.step) + 5)
        steps.append(step)
        print(f"   {rate}/s: {json.dumps({k: v for k, v in step.items() if k != 'cores'})}"
              f" cores {step['cores']}", flush=True)
        if not step["held"]:
            break
    held = [s["target_per_s"] for s in steps if s["held"]]
    return {"steps": steps, "sustained_per_s": max(held, default=0)}


def upload_spans(points: list[tuple[float, float, Mapping[str, str]]], size_mib: float
                 ) -> tuple[float, float]:
    """(first start, last end) of the uploads whose ingest_mib_s points are given: each
    point is stamped at an upload's end and its value says how long it took."""
    starts = [at - size_mib / mibs for at, mibs, _ in points if mibs > 0]
    return min(starts), max(at for at, _, _ in points)


def ingest(args: argparse.Namespace, base: Mapping[str, str], out: Path,
           sampler: Sampler) -> list[dict[str, Any]]:
    rows = []
    for mode in ("stream", "multipart"):
        for concurrency in (1, 4, 16):
            size = 64 if concurrency == 16 else 256
            uploads = 2 if concurrency == 1 else 1
            env = {**base, "MODE": mode, "CONCURRENCY": str(concurrency),
                   "UPLOADS": str(uploads), "SIZE_MIB": str(size)}
            run = run_k6("ingest.js", env, out, f"ingest-{mode}-{concurrency}", sampler,
                         keep=("ingest_mib_s",))
            points = run.phase.values.get("ingest_mib_s", [])
            first, last = upload_spans(points, size) if points else (0.0, 1.0)
            rows.append({"mode": mode, "concurrency": concurrency, "size_mib": size,
                         "uploads": len(points),
                         "total_mib_s": round(size * len(points) / (last - first), 1),
                         "per_upload_mib_s": round(sum(p[1] for p in points)
                                                   / max(len(points), 1), 1),
                         "cores": cores_between(sampler.samples, first, last),
                         "k6_exit": run.exit_code})
            print(f"   {json.dumps(rows[-1])}", flush=True)
    return rows


def small(args: argparse.Namespace, base: Mapping[str, str], out: Path,
          sampler: Sampler) -> list[dict[str, Any]]:
    rows = []
    for vus in (4, 16):
        env = {**base, "VUS": str(vus), "DURATION": args.step}
        run = run_k6("small_uploads.js", env, out, f"small-{vus}", sampler)
        uploads = run.phase.durations_by_name.get("upload_small", [])
        rows.append({"vus": vus, "uploads": len(uploads),
                     "uploads_per_s": round(len(uploads) / run.phase.wall_s, 1),
                     "error_rate": round(run.phase.failed / max(run.phase.requests, 1), 5),
                     **latency(uploads), "cores": run.cores, "busiest": busiest(run.cores),
                     "k6_exit": run.exit_code})
        print(f"   {json.dumps(rows[-1])}", flush=True)
    return rows


def window(points: list[tuple[float, float, Mapping[str, str]]], start: float, end: float
           ) -> list[float]:
    return [v for at, v, tags in points if start <= at < end and tags.get("phase") == "load"]


def rss_mib(sample: Sample, name: str) -> float:
    return round(sample.rss.get(name, 0) / MIB, 1)


def soak(args: argparse.Namespace, base: Mapping[str, str], out: Path,
         sampler: Sampler) -> dict[str, Any]:
    env = {**base, "DURATION": args.soak}
    run = run_k6("soak.js", env, out, "soak", sampler, keep=("http_req_duration",))
    load = [p for p in run.phase.values.get("http_req_duration", [])
            if p[2].get("phase") == "load"]
    start, end = min(p[0] for p in load), max(p[0] for p in load)
    inside = [s for s in sampler.samples if start <= s.at <= end]
    # Five minutes in rather than at the start: the parts before leave memory behind
    # (the chunk service at 1.1 GiB after 16 concurrent uploads) that is then returned.
    first = next((s for s in inside if s.at >= start + SOAK_WINDOW_S), inside[0])
    last = inside[-1]
    verify = run.summary["metrics"].get("checks{name:verify}", {}).get("values", {})
    return {"duration": args.soak, "requests": run.phase.requests,
            "error_rate": round(run.phase.failed / max(run.phase.requests, 1), 5),
            "first_5min": latency(window(load, start, start + SOAK_WINDOW_S)),
            "last_5min": latency(window(load, end - SOAK_WINDOW_S, end + 1)),
            "rss_mib_5min_and_end": {n: [rss_mib(first, n), rss_mib(last, n)]
                                     for n in RSS_WATCHED},
            "rss_mib_each_5min": {n: [rss_mib(s, n) for s in inside[::300]]
                                  for n in RSS_WATCHED},
            "files_verified": counter(run.summary, "files_verified"),
            "verify_checks": {"passes": verify.get("passes", 0), "fails": verify.get("fails", 0)},
            "cores": cores_between(sampler.samples, start, end), "k6_exit": run.exit_code,
            "k6_tail": run.tail if run.exit_code else ""}


PARTS = {"mixed": mixed, "ingest": ingest, "small": small, "soak": soak}


def seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def measure(args: argparse.Namespace, cluster: ClusterHandle, out: Path) -> dict[str, Any]:
    base = {"BASE_URL": cluster.gateway_url}
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "cpus": os.cpu_count(), "config": str(CONFIG)}
    with Sampler(process_names(cluster.info)) as sampler:
        for part in args.parts:
            results[part] = PARTS[part](args, {**base, "RUN_ID": f"cap{int(time.time())}"},
                                        out, sampler)
            (out / "capacity.json").write_text(json.dumps(results, indent=2))
    return results


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="mixed,ingest,small,soak",
                        type=lambda s: [p for p in s.split(",") if p])
    parser.add_argument("--rates", default="20,40,60,80,100,120,150,200,250",
                        type=lambda s: [int(r) for r in s.split(",")])
    parser.add_argument("--step", default="60s", help="length of each rate step (and small run)")
    parser.add_argument("--soak", default="30m")
    parser.add_argument("--out", type=Path, help="where capacity.json goes (default: a temp dir)")
    parser.add_argument("--data-dir", help="measure the cluster `dfms up` runs there")
    args = parser.parse_args()
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {sorted(PARTS)}")
    return args


def main() -> None:
    args = parse()
    base = make_data_dir("dfms-capacity-")
    out = args.out or base / "out"
    out.mkdir(parents=True, exist_ok=True)
    if args.data_dir:
        cluster = attach(args.data_dir)
        print(json.dumps(measure(args, cluster, out), indent=2))
        return
    cluster = ClusterHandle(data_dir=base / "cluster")
    cluster.data_dir.mkdir()
    try:
        cluster.start(config=CONFIG)
        print(json.dumps(measure(args, cluster, out), indent=2))
        print(f"results: {out / 'capacity.json'}")
    finally:
        if cluster.stop() == 0 and args.out:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
