"""Chunk-service throughput against raw S3 from the same process.

Uploads and downloads a unique stream (default 1 GiB) through the gRPC chunk
service, with n=3 (the cluster's service) and n=1 (a second chunk-service
process started with replicas_n=1, w=1), and next to each the raw rate of
putting/getting the same kind of bytes (same chunk sizes, same placement,
same parallelism) straight to the nodes. The ratio is the figure: the chunk
service's overhead, on this machine where every process shares two cores.

    python benchmarks/bench_chunk_service.py [--size-mib 1024] [--data-dir .dfms]

Without --data-dir it starts its own cluster in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import aiohttp
import asyncpg
from harness import DATA_DIR_HELP, run_on_cluster

from dfms.chunker import make_chunker_from
from dfms.chunkservice.client import ChunkClient
from dfms.config import Config, chunker_params
from dfms.localstack.handle import ClusterHandle, process_cpu_seconds
from dfms.localstack.ports import PortAllocator
from dfms.ring import Ring
from dfms.ring import store as ring_store
from dfms.storage import NodeClient, chunk_key

MIB = 1024 * 1024
FRAME = 1 * MIB


@dataclass
class Chunked:
    data: bytes
    chunks: list[tuple[str, bytes]]  # (sha256 hex, bytes)


def chunked(cfg: Config, size: int) -> Chunked:
    data = os.urandom(size)
    chunker = make_chunker_from(chunker_params(cfg.chunker))
    chunks = []
    for offset, length in chunker.cut(data):
        piece = data[offset:offset + length]
        chunks.append((hashlib.sha256(piece).hexdigest(), piece))
    return Chunked(data, chunks)


async def bounded(jobs: list[Callable[[], Awaitable[object]]], parallel: int) -> None:
    sem = asyncio.Semaphore(parallel)

    async def run(job: Callable[[], Awaitable[object]]) -> None:
        async with sem:
            await job()

    await asyncio.gather(*(run(j) for j in jobs))


async def raw_put(clients: dict[str, NodeClient], ring: Ring, work: Chunked, n: int,
                  parallel: int) -> None:
    def job(hex_digest: str, piece: bytes) -> Callable[[], Awaitable[object]]:
        nodes = ring.preference_list(hex_digest, n)
        return lambda: asyncio.gather(*(clients[node].put(chunk_key(hex_digest), piece,
                                                          hex_digest) for node in nodes))
    await bounded([job(h, p) for h, p in work.chunks], parallel)


async def raw_get(clients: dict[str, NodeClient], ring: Ring, work: Chunked,
                  parallel: int) -> None:
    def job(hex_digest: str) -> Callable[[], Awaitable[object]]:
        node = ring.preference_list(hex_digest, 1)[0]
        return lambda: clients[node].get(chunk_key(hex_digest))
    await bounded([job(h) for h, _ in work.chunks], parallel)


async def frames(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), FRAME):
        yield data[i:i + FRAME]


async def timed(label: str, size: int, coro: Awaitable[object],
                pids: dict[str, int]) -> tuple[float, dict[str, float]]:
    before = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
    before["bench"] = time.process_time()
    start = time.perf_counter()
    await coro
    seconds = time.perf_counter() - start
    cpu = {name: process_cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    cpu["bench"] = time.process_time() - before["bench"]
    rate = size / MIB / seconds
    print(f"  {label:<34} {rate:8.1f} MiB/s  ({seconds:5.1f} s)", flush=True)
    return rate, cpu


async def start_n1_service(cluster: ClusterHandle) -> tuple[asyncio.subprocess.Process, str]:
    ports = PortAllocator()
    grpc_port, ops_port = ports.get("grpc"), ports.get("ops")
    env = {**os.environ, "DFMS_CONFIG": str(cluster.data_dir / "dfms.yaml"),
           "DFMS_REPLICATION__REPLICAS_N": "1", "DFMS_REPLICATION__WRITE_QUORUM_W": "1",
           "DFMS_CHUNK_SERVICE__GRPC_PORT": str(grpc_port),
           "DFMS_CHUNK_SERVICE__OPS_PORT": str(ops_port), "DFMS_LOGGING__LEVEL": "WARNING"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "dfms", "chunk-service",
                                                env=env)
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(f"http://127.0.0.1:{ops_port}/ready") as resp:
                    if resp.status == 200:
                        return proc, f"127.0.0.1:{grpc_port}"
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    proc.kill()
    raise RuntimeError("the n=1 chunk service did not become ready")


async def measure(n: int, target: str, pids: dict[str, int], clients: dict[str, NodeClient],
                  ring: Ring, cfg: Config, size: int) -> tuple[float, float, float, float]:
    parallel = cfg.chunk_service.upload_parallel_chunks
    print(f"n={n}: {size // MIB} MiB unique, {parallel} chunks in flight", flush=True)
    raw = chunked(cfg, size)
    put, _ = await timed("raw S3 PUT (same process)", size,
                         raw_put(clients, ring, raw, n, parallel), pids)
    get, _ = await timed("raw S3 GET", size, raw_get(clients, ring, raw, parallel), pids)
    del raw
    data = os.urandom(size)
    async with ChunkClient(target) as client:
        up_task = asyncio.ensure_future(client.upload(frames(data)))
        up, cpu = await timed("chunk service Upload (gRPC)", size, up_task, pids)
        summary = up_task.result()

        async def download() -> None:
            digest = hashlib.sha256()
            async for piece in client.download(chunks=summary.chunks):
                digest.update(piece)
            assert digest.digest() == summary.sha256

        down, _ = await timed("chunk service Download (verified)", size, download(), pids)
    print("  CPU seconds during Upload: "
          + ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu.items())), flush=True)
    return put, up, get, down


async def bench(cluster: ClusterHandle, size: int) -> None:
    cfg = cluster.config
    conn = await asyncpg.connect(cluster.postgres_dsn)
    ring_data = await ring_store.load_latest(conn)
    await conn.close()
    assert ring_data is not None
    ring = Ring(ring_data)
    node_pids = {n["id"]: n["pid"] for n in cluster.s3_nodes}
    n1_proc, n1_target = await start_n1_service(cluster)
    rows = []
    try:
        async with AsyncExitStack() as stack:
            clients = {n["id"]: await stack.enter_async_context(
                NodeClient(n["id"], n["endpoint"], cfg.s3)) for n in cluster.s3_nodes}
            services = ((1, n1_target, n1_proc.pid),
                        (3, cluster.chunk_target, cluster.info["services"]["chunk-service"]["pid"]))
            for n, target, svc_pid in services:
                pids = {**node_pids, "chunk-service": svc_pid}
                rows.append((n, *await measure(n, target, pids, clients, ring, cfg, size)))
    finally:
        n1_proc.terminate()
        await n1_proc.wait()
    print("\n   n   raw PUT   Upload  ratio   raw GET  Download  ratio   (MiB/s)")
    for n, put, up, get, down in rows:
        print(f"  {n:2d}  {put:8.1f} {up:8.1f}  {up / put:5.2f}  {get:8.1f}  {down:8.1f}  "
              f"{down / get:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    args = parser.parse_args()
    run_on_cluster(lambda cluster: bench(cluster, args.size_mib * MIB), args.data_dir)


if __name__ == "__main__":
    main()
