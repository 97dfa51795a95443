"""The request path (issue 18): small authenticated API calls, gateway CPU per request.

Starts a cluster with the test suite's raised rate limits (tests/cluster.yaml), runs
benchmarks/k6/small_requests.js against it (list a page, stat a file) and reads the
CPU seconds of the gateway and of PostgreSQL from /proc around the measured run; with
``--profile`` it also samples the gateway with py-spy (raw collapsed stacks).

    flock /tmp/dfms-heavy.lock .venv/bin/python benchmarks/bench_requests.py \
        [--duration 30s] [--vus 10] [--profile out.txt] [--py-spy PATH]

Setup (accounts, files) runs before the first CPU reading is taken: k6's setup() is
over when the first request tagged list/stat appears, so the script waits for the
run to start and takes the readings around the measured phase (the summary's counts).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dfms.localstack.handle import ClusterHandle, make_data_dir  # noqa: E402

K6 = Path(sys.executable).parent / "k6"
SCRIPT = ROOT / "benchmarks" / "k6" / "small_requests.js"
TICKS = os.sysconf("SC_CLK_TCK")
# Where a profile sample goes: the first of these its stack names, from the innermost
# frame out. asyncio's own frames are skipped, so a send() syscall counts for whoever
# sent (asyncpg, redis-py, aiohttp's writer), not for the event loop.
BUDGET = (
    ("token verification (PyJWT, ES256)", r"\(jwt/|cryptography|verify_access|_verify \("),
    ("PostgreSQL client (asyncpg)", r"\(asyncpg/|metadata/namespace|metadata/db"),
    ("Redis client (rate limit)", r"\(redis/|ratelimit\.py"),
    ("metrics (prometheus_client)", r"prometheus_client"),
    ("logging", r"\(logging/|runtime/logs"),
    ("JSON rendering", r"\(json/|json_response|views\.py"),
    ("tracing (opentelemetry)", r"opentelemetry|gateway/tracing|telemetry"),
    ("middleware chain (request id, errors, shedding)", r"middleware\.py|shedding\.py"),
    ("handlers and listing code", r"routes_files|listing\.py|security\.py|folders\.py"),
    ("HTTP parsing and responses (aiohttp)", r"\(aiohttp/|multidict|yarl"),
)
_SKIPPED = re.compile(r"\(asyncio/|selectors|socket|<genexpr>")


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/pid/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def tree_cpu_s(pid: int) -> float:
    """A process and its children (PostgreSQL's backends are the postmaster's)."""
    total = 0.0
    for child in Path("/proc").iterdir():
        if not child.name.isdigit():
            continue
        try:
            stat = (child / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if int(child.name) == pid or ppid == pid:
                total += cpu_s(int(child.name))
        except (OSError, ValueError):
            continue
    return total


def budget_of(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        if _SKIPPED.search(frame):
            continue
        for name, pattern in BUDGET:
            if re.search(pattern, frame):
                return name
    return "event loop: epoll wait and scheduling" if "_run_once" in stack else "other"


def budget(profile: Path, cpu_ms_per_request: float) -> dict[str, float]:
    """CPU ms per request by part, from py-spy's raw collapsed stacks: each part's share
    of the samples times the measured CPU per request."""
    samples: collections.Counter[str] = collections.Counter()
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples[budget_of(stack)] += int(count)
    total = sum(samples.values()) or 1
    return {name: round(cpu_ms_per_request * n / total, 3) for name, n in samples.most_common()}


def wait_for_setup(k6: subprocess.Popen[str]) -> list[str]:
    """k6's output up to the end of setup(), which logs a marker line."""
    assert k6.stdout is not None
    lines = []
    for line in k6.stdout:
        lines.append(line)
        if "small_requests: setup done" in line:
            return lines
    raise RuntimeError("k6 ended before its setup did:\n" + "".join(lines)[-3000:])


def readings(gateway: int, postgres: int) -> tuple[float, float, float]:
    return time.monotonic(), cpu_s(gateway), tree_cpu_s(postgres)


def report(summary: Path, before: tuple[float, ...], after: tuple[float, ...]
           ) -> dict[str, object]:
    metrics = json.loads(summary.read_text())["metrics"]
    reqs = sum(metrics.get(f"http_reqs{{name:{t}}}", {}).get("values", {}).get("count", 0)
               for t in ("list", "stat"))
    wall, gw, pg = (a - b for a, b in zip(after, before, strict=True))
    out: dict[str, object] = {"requests": reqs, "wall_s": round(wall, 1),
                              "req_per_s": round(reqs / wall, 1),
                              "gateway_cpu_s": round(gw, 2), "postgres_cpu_s": round(pg, 2),
                              "gateway_cpu_ms_per_req": round(gw * 1000 / max(reqs, 1), 3),
                              "postgres_cpu_ms_per_req": round(pg * 1000 / max(reqs, 1), 3)}
    for tag in ("list", "stat"):
        values = metrics.get(f"http_req_duration{{name:{tag}}}", {}).get("values", {})
        out[f"{tag}_ms"] = {k: round(values[k], 1) for k in ("med", "p(95)", "p(99)")
                            if k in values}
    every = metrics["http_req_duration"]["values"]
    out["all_p95_ms"] = round(every["p(95)"], 1)
    return out


def run(args: argparse.Namespace, cluster: ClusterHandle, out: Path) -> dict[str, object]:
    gateway = int(cluster.info["services"]["gateway"]["pid"])
    postgres = int(cluster.info["postgres"]["pid"])
    summary = out / "summary.json"
    k6 = subprocess.Popen(
        [str(K6), "run", "--quiet", "--no-color", "--no-usage-report",
         "-e", f"BASE_URL={cluster.gateway_url}", "-e", f"DURATION={args.duration}",
         "-e", f"VUS={args.vus}", "-e", f"SUMMARY={summary}", str(SCRIPT)],
        cwd=out, env={"PATH": "/usr/bin:/bin", "HOME": str(out)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = wait_for_setup(k6)
    before = readings(gateway, postgres)
    spy = None
    if args.profile:
        spy = subprocess.Popen([args.py_spy, "record", "-p", str(gateway), "-r", "200",
                                "-f", "raw", "-o", str(args.profile), "--nonblocking",
                                "-d", str(int(args.duration.rstrip("s")))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert k6.stdout is not None
    rest = k6.stdout.read()
    k6.wait()
    after = readings(gateway, postgres)
    if spy is not None:
        spy.wait()
    result = {"k6_exit": k6.returncode, **report(summary, before, after)}
    if args.profile:
        result["budget_ms"] = budget(args.profile, float(result["gateway_cpu_ms_per_req"]))
    if k6.returncode:
        result["k6_tail"] = "".join([*lines, rest])[-1500:]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", default="30s")
    parser.add_argument("--vus", type=int, default=10)
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--py-spy", default="py-spy")
    parser.add_argument("--budget", nargs=2, metavar=("PROFILE", "CPU_MS"),
                        help="only the budget of a recorded profile at CPU_MS per request")
    args = parser.parse_args()
    if args.budget:
        print(json.dumps(budget(Path(args.budget[0]), float(args.budget[1])), indent=2))
        return
    data_dir = make_data_dir("dfms-bench-requests-")
    cluster = ClusterHandle(data_dir=data_dir / "cluster")
    cluster.data_dir.mkdir()
    try:
        cluster.start(config=ROOT / "tests" / "cluster.yaml")
        print(json.dumps(run(args, cluster, data_dir), indent=2))
    finally:
        if cluster.stop() == 0:  # else its logs stay, in data_dir
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
