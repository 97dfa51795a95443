"""Gateway throughput and memory: HTTP upload/download next to the chunk service's own rate.

1. Upload and download a unique 1 GiB file through the HTTP gateway (n=3).
2. The same through the chunk service directly (gRPC), in the same run: the
   ratio is the gateway's overhead.
3. Stream a 2 GiB upload and sample the gateway process's resident memory
   every 50 ms: the peak must stay bounded (target < 200 MB) and not grow
   with the file size.

    python benchmarks/bench_gateway.py [--size-mib 1024] [--rss-mib 2048] [--data-dir D]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from harness import DATA_DIR_HELP, run_on_cluster

from dfms.chunkservice.client import ChunkClient
from dfms.localstack.handle import ClusterHandle

MIB = 1024 * 1024
PIECE = 1 * MIB


async def stream(size: int, seed: bytes) -> AsyncIterator[bytes]:
    """Unique bytes generated as they are sent: the client never holds the whole file."""
    counter = 0
    sent = 0
    while sent < size:
        block = hashlib.shake_256(seed + counter.to_bytes(8, "big")).digest(
            min(PIECE, size - sent))
        counter += 1
        sent += len(block)
        yield block


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def register(http: aiohttp.ClientSession, base: str) -> dict[str, str]:
    email = f"bench-{os.urandom(4).hex()}@example.com"
    async with http.post(f"{base}/api/v1/auth/register", json={
            "email": email, "password": "benchmark password 1", "display_name": "b"}) as resp:
        body = await resp.json()
        assert resp.status == 201, body
    return {"Authorization": f"Bearer {body['tokens']['access_token']}"}


async def http_upload(http: aiohttp.ClientSession, base: str, auth: dict[str, str],
                      name: str, size: int) -> dict[str, object]:
    headers = {**auth, "X-File-Name": name, "Content-Type": "application/octet-stream",
               "Content-Length": str(size)}
    async with http.post(f"{base}/api/v1/files/upload", headers=headers,
                         data=stream(size, name.encode())) as resp:
        body = await resp.json()
        assert resp.status == 201, body
        return dict(body)


async def http_download(http: aiohttp.ClientSession, base: str, auth: dict[str, str],
                        file_id: object) -> int:
    total = 0
    async with http.get(f"{base}/api/v1/files/{file_id}/download", headers=auth) as resp:
        assert resp.status == 200
        async for piece in resp.content.iter_chunked(PIECE):
            total += len(piece)
    return total


def rate(size: int, seconds: float) -> float:
    return size / MIB / seconds


async def bench(cluster: ClusterHandle, size: int, rss_size: int) -> None:
    base = cluster.gateway_url
    gw_pid = int(cluster.info["services"]["gateway"]["pid"])
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        auth = await register(http, base)
        start = time.perf_counter()
        up = await http_upload(http, base, auth, f"bench-{os.urandom(4).hex()}", size)
        http_up = rate(size, time.perf_counter() - start)
        start = time.perf_counter()
        assert await http_download(http, base, auth, up["id"]) == size
        http_down = rate(size, time.perf_counter() - start)

        async with ChunkClient(cluster.chunk_target) as grpc:
            start = time.perf_counter()
            summary = await grpc.upload(stream(size, os.urandom(8)))
            grpc_up = rate(size, time.perf_counter() - start)
            start = time.perf_counter()
            got = 0
            async for piece in grpc.download(chunks=summary.chunks):
                got += len(piece)
            grpc_down = rate(size, time.perf_counter() - start)
        assert got == size

        samples: list[float] = [rss_mib(gw_pid)]
        before = samples[0]

        async def sample() -> None:
            while True:
                samples.append(rss_mib(gw_pid))
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        start = time.perf_counter()
        await http_upload(http, base, auth, f"rss-{os.urandom(4).hex()}", rss_size)
        rss_rate = rate(rss_size, time.perf_counter() - start)
        sampler.cancel()
    print(f"{'path':<28}{'upload MiB/s':>14}{'download MiB/s':>16}")
    print(f"{'HTTP gateway (n=3)':<28}{http_up:14.1f}{http_down:16.1f}")
    print(f"{'chunk service gRPC (n=3)':<28}{grpc_up:14.1f}{grpc_down:16.1f}")
    print(f"{'gateway / chunk service':<28}{http_up / grpc_up:14.2f}{http_down / grpc_down:16.2f}")
    print(f"\ngateway RSS while streaming a {rss_size // MIB} MiB upload ({rss_rate:.1f} MiB/s): "
          f"before {before:.0f} MiB, peak {max(samples):.0f} MiB over {len(samples)} samples "
          "(target < 200 MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rss-mib", type=int, default=2048)
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    args = parser.parse_args()
    run_on_cluster(lambda cluster: bench(cluster, args.size_mib * MIB, args.rss_mib * MIB),
                   args.data_dir)


if __name__ == "__main__":
    main()
