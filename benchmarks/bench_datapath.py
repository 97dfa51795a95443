"""The data path's cost per byte: DFMS's own CPU per GiB against the hashing floor, and
HTTP transfers against raw S3 on the same nodes, in one run (issue 15's table).

1. The floor, in this process: one SHA-256 pass and one pass of the configured chunker
   over the same bytes (what no design can avoid on upload; a download only re-hashes).
2. Raw S3 on the cluster's nodes, from this process: the same bytes cut into chunks as
   the chunker cuts them, PUT to the n nodes of each chunk's preference list, then GET
   from one, with the chunk service's parallelism (``upload_parallel_chunks``).
3. HTTP through the gateway with a real external client (curl): a unique file streamed
   up (``-T``, nothing buffered) and downloaded to /dev/null. CPU seconds of every
   process from /proc/<pid>/stat, RSS peaks of the gateway and chunk service sampled
   every 50 ms.
4. A multipart upload: parts sent, then ``complete`` timed alone (the goal is O(parts),
   no read-back).

The table's ratios, with the issue's goals:

    upload CPU (gateway + chunk service) per GiB / floor (SHA-256 + chunker)   <= 4
    download CPU (gateway + chunk service) per GiB / SHA-256 pass              <= 3
    HTTP download / raw GET                                                    >= 0.8
    HTTP upload / raw PUT to n nodes                                           >= 0.9

    python benchmarks/bench_datapath.py [--size-mib 512] [--multipart-mib 1024]
                                        [--data-dir D]

Run it alone: every process shares the machine's two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
from bench_chunk_service import Chunked, raw_get, raw_put
from bench_gateway import register, rss_mib
from harness import DATA_DIR_HELP, run_on_cluster

from dfms.chunker import make_chunker_from
from dfms.config import Config, chunker_params
from dfms.localstack.handle import ClusterHandle, process_cpu_seconds
from dfms.ring import Ring
from dfms.ring import store as ring_store
from dfms.storage import NodeClient

MIB = 1024 * 1024
GIB = 1024 * MIB
FLOOR_BYTES = 256 * MIB  # enough for a steady rate, small enough to hold in memory
PART_BYTES = 64 * MIB  # multipart part size: 16 parts per GiB
# Processes whose CPU the table charges to DFMS's data path.
DFMS_PATH = ("gateway", "chunk-service")
GOALS = {"upload CPU / floor": ("<=", 4.0), "download CPU / SHA-256": ("<=", 3.0),
         "HTTP download / raw GET": (">=", 0.8), "HTTP upload / raw PUT": (">=", 0.9)}


@dataclass
class Measured:
    seconds: float
    cpu: dict[str, float]  # process name -> CPU seconds during the run
    rss_peak_mib: dict[str, float] = field(default_factory=dict)

    def rate(self, size: int) -> float:
        return size / MIB / self.seconds

    def per_gib(self, names: tuple[str, ...], size: int) -> float:
        return sum(self.cpu.get(n, 0.0) for n in names) / (size / GIB)


# --- the floor ----------------------------------------------------------------------------

def floor_seconds_per_gib(cfg: Config) -> tuple[float, float]:
    """(SHA-256, chunker) seconds per GiB, in this process, on unique bytes."""
    data = os.urandom(FLOOR_BYTES)
    start = time.process_time()
    hashlib.sha256(data).digest()
    sha = time.process_time() - start
    chunker = make_chunker_from(chunker_params(cfg.chunker))
    start = time.process_time()
    for _ in chunker.cut(data):
        pass
    cut = time.process_time() - start
    scale = GIB / FLOOR_BYTES
    return sha * scale, cut * scale


# --- measuring a run ----------------------------------------------------------------------

def cluster_pids(cluster: ClusterHandle) -> dict[str, int]:
    pids = {name: int(s["pid"]) for name, s in cluster.info["services"].items()}
    pids.update({n["id"]: int(n["pid"]) for n in cluster.s3_nodes})
    for name in ("postgres", "redis", "kafka"):
        pid = cluster.info.get(name, {}).get("pid")
        if pid:
            pids[name] = int(pid)
    return pids


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its live children: PostgreSQL's work is in its backends."""
    total = process_cpu_seconds(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                total += process_cpu_seconds(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue  # a process that ended while being read
    return total


async def measured(run: Awaitable[object], pids: dict[str, int],
                   watch_rss: tuple[str, ...] = DFMS_PATH) -> Measured:
    """Wall time, CPU seconds of each process and of this one, and the RSS peaks."""
    before = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
    bench_before = time.process_time()
    peaks = {name: rss_mib(pids[name]) for name in watch_rss}

    async def sample() -> None:
        while True:
            for name in watch_rss:
                peaks[name] = max(peaks[name], rss_mib(pids[name]))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    start = time.perf_counter()
    try:
        await run
    finally:
        seconds = time.perf_counter() - start
        sampler.cancel()
    cpu = {name: tree_cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    cpu["bench"] = time.process_time() - bench_before
    return Measured(seconds, cpu, peaks)


# --- raw S3 -------------------------------------------------------------------------------

def cut(cfg: Config, data: bytes) -> list[tuple[str, bytes]]:
    chunker = make_chunker_from(chunker_params(cfg.chunker))
    pieces = (data[offset:offset + length] for offset, length in chunker.cut(data))
    return [(hashlib.sha256(p).hexdigest(), p) for p in pieces]


async def raw_s3(cluster: ClusterHandle, size: int, pids: dict[str, int]
                 ) -> tuple[Measured, Measured]:
    cfg = cluster.config
    conn = await asyncpg.connect(cluster.postgres_dsn)
    try:
        ring_data = await ring_store.load_latest(conn)
    finally:
        await conn.close()
    assert ring_data is not None
    ring = Ring(ring_data)
    n = cfg.replication.replicas_n
    parallel = cfg.chunk_service.upload_parallel_chunks
    work = Chunked(b"", cut(cfg, os.urandom(size)))
    async with AsyncExitStack() as stack:
        clients = {node["id"]: await stack.enter_async_context(
            NodeClient(node["id"], node["endpoint"], cfg.s3)) for node in cluster.s3_nodes}
        put_run = await measured(raw_put(clients, ring, work, n, parallel), pids)
        get_run = await measured(raw_get(clients, ring, work, parallel), pids)
    return put_run, get_run


# --- HTTP with curl -----------------------------------------------------------------------

@contextmanager
def unique_file(size: int) -> Iterator[Path]:
    """A file of ``size`` unique bytes on disk, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="dfms-datapath-"))
    path = folder / "data.bin"
    with path.open("wb") as out:
        left = size
        while left:
            block = os.urandom(min(16 * MIB, left))
            out.write(block)
            left -= len(block)
    try:
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def curl(*args: str) -> bytes:
    """Run curl; its stdout (the response body, or what -w prints)."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--show-error", "--fail-with-body", "--noproxy", "*", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"curl failed ({proc.returncode}): {err.decode()} {out[:300]!r}")
    return out


def auth_args(auth: dict[str, str]) -> list[str]:
    return [a for k, v in auth.items() for a in ("-H", f"{k}: {v}")]


async def http_upload(base: str, auth: dict[str, str], path: Path, name: str) -> str:
    out = await curl("-X", "POST", "-T", str(path), *auth_args(auth),
                     "-H", f"X-File-Name: {name}", "-H", "Content-Type: application/octet-stream",
                     f"{base}/api/v1/files/upload")
    return str(json.loads(out)["id"])


async def http_download(base: str, auth: dict[str, str], file_id: str) -> int:
    out = await curl("-o", "/dev/null", "-w", "%{size_download}", *auth_args(auth),
                     f"{base}/api/v1/files/{file_id}/download")
    return int(out)


# --- multipart ----------------------------------------------------------------------------

async def multipart_parts(http: aiohttp.ClientSession, base: str, auth: dict[str, str],
                          size: int) -> tuple[str, list[dict[str, object]]]:
    """Send a unique multipart upload of ``size`` bytes; (its upload id, the parts list
    for complete)."""
    api = f"{base}/api/v1/files/upload/multipart"
    async with http.post(f"{api}/init", headers=auth, json={
            "file_name": f"mp-{os.urandom(4).hex()}.bin", "file_size": size}) as resp:
        up = await resp.json()
        assert resp.status in (200, 201), up
    parts = []
    for number, offset in enumerate(range(0, size, PART_BYTES), 1):
        data = os.urandom(min(PART_BYTES, size - offset))
        digest = hashlib.sha256(data).hexdigest()
        async with http.put(f"{api}/{up['upload_id']}/part/{number}", data=data,
                            headers={**auth, "X-Content-SHA256": digest}) as resp:
            assert resp.status in (200, 201), await resp.text()
        parts.append({"part_number": number, "sha256": digest})
    return str(up["upload_id"]), parts


async def multipart_complete(http: aiohttp.ClientSession, base: str, auth: dict[str, str],
                             upload_id: str, parts: list[dict[str, object]]) -> None:
    async with http.post(f"{base}/api/v1/files/upload/multipart/{upload_id}/complete",
                         headers=auth, json={"parts": parts}) as resp:
        assert resp.status in (200, 201), await resp.text()


# --- the run ------------------------------------------------------------------------------

@dataclass
class Results:
    size: int
    sha_s: float
    cut_s: float
    raw_put: Measured
    raw_get: Measured
    up: Measured
    down: Measured
    complete_s: float = 0.0
    multipart_size: int = 0

    def ratios(self) -> dict[str, float]:
        return {
            "upload CPU / floor": self.up.per_gib(DFMS_PATH, self.size) / (self.sha_s + self.cut_s),
            "download CPU / SHA-256": self.down.per_gib(DFMS_PATH, self.size) / self.sha_s,
            "HTTP download / raw GET": self.down.rate(self.size) / self.raw_get.rate(self.size),
            "HTTP upload / raw PUT": self.up.rate(self.size) / self.raw_put.rate(self.size),
        }


async def http_runs(cluster: ClusterHandle, size: int, pids: dict[str, int]
                    ) -> tuple[Measured, Measured]:
    base = cluster.gateway_url
    async with aiohttp.ClientSession() as http:
        auth = await register(http, base)
    with unique_file(size) as path:
        holder: list[str] = []

        async def upload() -> None:
            holder.append(await http_upload(base, auth, path, f"dp-{os.urandom(4).hex()}"))

        up = await measured(upload(), pids)

    async def download() -> None:
        assert await http_download(base, auth, holder[0]) == size

    down = await measured(download(), pids)
    return up, down


async def multipart_run(cluster: ClusterHandle, size: int) -> float:
    base = cluster.gateway_url
    timeout = aiohttp.ClientTimeout(total=None, sock_read=3600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        auth = await register(http, base)
        upload_id, parts = await multipart_parts(http, base, auth, size)
        start = time.perf_counter()
        await multipart_complete(http, base, auth, upload_id, parts)
        return time.perf_counter() - start


async def bench(cluster: ClusterHandle, size: int, multipart_size: int) -> None:
    sha_s, cut_s = floor_seconds_per_gib(cluster.config)
    print(f"floor: SHA-256 {sha_s:.2f} s/GiB, chunker {cut_s:.2f} s/GiB", flush=True)
    pids = cluster_pids(cluster)
    raw_put, raw_get = await raw_s3(cluster, size, pids)
    print(f"raw S3: PUT x{cluster.config.replication.replicas_n} {raw_put.rate(size):.1f} MiB/s, "
          f"GET {raw_get.rate(size):.1f} MiB/s", flush=True)
    up, down = await http_runs(cluster, size, pids)
    results = Results(size, sha_s, cut_s, raw_put, raw_get, up, down)
    if multipart_size:
        results.complete_s = await multipart_run(cluster, multipart_size)
        results.multipart_size = multipart_size
    report(results)


def report(r: Results) -> None:
    size_gib = r.size / GIB
    print(f"\n{r.size // MIB} MiB unique, curl through the gateway")
    print(f"{'':<26}{'MiB/s':>8}{'gateway':>9}{'chunk-svc':>10}{'nodes':>8}{'postgres':>9}"
          "   (CPU s per GiB)")
    for label, run in (("raw S3 PUT (n nodes)", r.raw_put), ("raw S3 GET (one node)", r.raw_get),
                       ("HTTP upload", r.up), ("HTTP download", r.down)):
        nodes = sum(v for k, v in run.cpu.items() if k.startswith("node-"))
        print(f"{label:<26}{run.rate(r.size):8.1f}{run.cpu.get('gateway', 0) / size_gib:9.2f}"
              f"{run.cpu.get('chunk-service', 0) / size_gib:10.2f}{nodes / size_gib:8.2f}"
              f"{run.cpu.get('postgres', 0) / size_gib:9.2f}")
    for label, run in (("HTTP upload", r.up), ("HTTP download", r.down)):
        print(f"RSS peak during {label}: " + ", ".join(
            f"{k} {v:.0f} MiB" for k, v in run.rss_peak_mib.items()))
    if r.multipart_size:
        print(f"multipart complete of {r.multipart_size // MIB} MiB "
              f"({-(-r.multipart_size // PART_BYTES)} parts): {r.complete_s:.2f} s")
    print(f"\n{'ratio':<28}{'measured':>9}  goal")
    for name, value in r.ratios().items():
        sign, goal = GOALS[name]
        met = value <= goal if sign == "<=" else value >= goal
        print(f"{name:<28}{value:9.2f}  {sign} {goal}  {'met' if met else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--multipart-mib", type=int, default=1024,
                        help="multipart upload whose complete is timed (0: skip)")
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    args = parser.parse_args()
    run_on_cluster(lambda c: bench(c, args.size_mib * MIB, args.multipart_mib * MIB),
                   args.data_dir, prefix="dfms-datapath-", up_args=("--nodes", "3"))


if __name__ == "__main__":
    main()
