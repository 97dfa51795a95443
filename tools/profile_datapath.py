"""Where the data path's CPU goes: py-spy profiles of the gateway and the chunk service
during one curl upload and one curl download, summed into stages.

    python tools/profile_datapath.py [--size-mib 512] [--py-spy PATH] [--out DIR]

Starts a throwaway cluster (3 nodes), samples each process at 200 Hz while it works,
writes the raw collapsed stacks to DIR (flamegraph.pl or speedscope read them) and
prints, per process and direction, the share of busy samples in each stage of
``STAGES`` (the innermost frame that names a stage decides). Samples of
threads waiting (an idle executor worker, the selector) are left out. py-spy is not
a dependency of DFMS: install it anywhere (``pip install py-spy`` in a scratch venv)
and pass its path. Run it alone: the machine's two cores are shared by every process.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bench_datapath import http_download, http_upload, unique_file
from bench_gateway import register

from dfms.localstack.handle import ClusterHandle, make_data_dir

MIB = 1024 * 1024
RATE_HZ = 200
IDLE_LEAVES = ("_worker (concurrent/futures/thread.py", "Thread.run (threading.py",
               "EpollSelector.select (selectors.py", "wait (threading.py")
# (stage, markers): a sample belongs to the stage of its innermost frame with a marker.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("chunking", ("chunker/stream.py", "chunker/fastcdc.py", "chunker/base.py")),
    ("hashing", ("sha256", "hashlib", "_StreamHash")),
    ("S3 requests (signing, aiohttp client, sockets)", (
        "miniopy_async", "dfms/storage/client.py", "aiohttp/client")),
    ("PostgreSQL", ("asyncpg",)),
    ("gRPC send/receive", ("grpc/", "chunkservice/client.py", "data_frames", "read_ahead")),
    ("HTTP server (aiohttp web, body and response streaming)", (
        "aiohttp/web_", "gateway/bodies", "gateway/serve")),
    ("aiohttp parsers and writers (either side)", ("aiohttp/",)),
    ("event loop callbacks (grpc aio's among them), tasks, the rest", ("",)),
)


def spy(py_spy: str, pid: int, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([py_spy, "record", "-p", str(pid), "-r", str(RATE_HZ), "-f", "raw",
                             "-o", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def stop(spies: list[subprocess.Popen[bytes]]) -> None:
    for proc in spies:
        proc.send_signal(signal.SIGINT)
    for proc in spies:
        proc.wait(timeout=60)


def stage_of(frames: list[str]) -> str:
    """The stage of the innermost frame that names one: a body read that the gRPC
    upload pulls is HTTP receiving, not gRPC."""
    for frame in reversed(frames):
        for name, marks in STAGES[:-1]:
            if any(m in frame for m in marks):
                return name
    return STAGES[-1][0]


def stages(raw: Path) -> tuple[int, collections.Counter[str]]:
    """Busy samples and their count per stage."""
    counts: collections.Counter[str] = collections.Counter()
    busy = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if frames[-1].startswith(IDLE_LEAVES):
            continue
        busy += int(n)
        counts[stage_of(frames)] += int(n)
    return busy, counts


async def profile(cluster: ClusterHandle, size: int, py_spy: str, out: Path) -> None:
    base = cluster.gateway_url
    pids = {name: int(cluster.info["services"][name]["pid"])
            for name in ("gateway", "chunk-service")}
    async with aiohttp.ClientSession() as http:
        auth = await register(http, base)
    file_id = ""
    for direction in ("upload", "download"):
        spies = [spy(py_spy, pid, out / f"{direction}-{name}.txt") for name, pid in pids.items()]
        await asyncio.sleep(1)  # py-spy attaches
        if direction == "upload":
            with unique_file(size) as path:
                file_id = await http_upload(base, auth, path, "profiled.bin")
        else:
            assert await http_download(base, auth, file_id) == size
        stop(spies)
    report(out, pids)


def report(out: Path, pids: dict[str, int]) -> None:
    for direction in ("upload", "download"):
        for name in pids:
            busy, counts = stages(out / f"{direction}-{name}.txt")
            print(f"\n{direction}, {name}: {busy / RATE_HZ:.1f} busy seconds sampled")
            for stage, _ in STAGES:
                if counts[stage]:
                    print(f"  {100 * counts[stage] / busy:5.1f}%  {stage}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--out", type=Path, default=None, help="where the raw stacks go")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="dfms-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    base = make_data_dir("dfms-profile-")
    cluster = ClusterHandle(data_dir=base / "cluster")
    cluster.data_dir.mkdir()
    try:
        cluster.start("--nodes", "3")
        asyncio.run(profile(cluster, args.size_mib * MIB, args.py_spy, out))
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nraw stacks in {out}")


if __name__ == "__main__":
    main()
