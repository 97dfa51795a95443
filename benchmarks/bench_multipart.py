"""Multipart upload (parts in parallel) next to a single-stream upload of the same bytes.

Uploads a file (default 4 GiB) through the HTTP gateway twice, in the same run:
once as one stream, once as 64 MiB parts with 4 in flight followed by complete
(which reads the content back once to compute the whole file's SHA-256). The
bytes are generated on the fly (SHAKE-256 of a seed and a counter), so the
client never holds the file. By default the two uploads get different seeds (the
same size and generator, no dedup between them); --same-bytes sends identical
bytes, so the multipart upload is mostly deduplicated against the first.

    python benchmarks/bench_multipart.py [--size-mib 4096] [--part-mib 64] [--parallel 4]
                                         [--data-dir D]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator

import aiohttp
from harness import DATA_DIR_HELP, run_on_cluster

from dfms.localstack.handle import ClusterHandle

MIB = 1024 * 1024
BLOCK = MIB


def block(seed: bytes, index: int, size: int) -> bytes:
    return hashlib.shake_256(seed + index.to_bytes(8, "big")).digest(size)


async def byte_range(seed: bytes, start: int, length: int) -> AsyncIterator[bytes]:
    """Bytes [start, start+length) of the seeded stream, 1 MiB-aligned blocks."""
    assert start % BLOCK == 0
    index, left = start // BLOCK, length
    while left > 0:
        piece = block(seed, index, min(BLOCK, left))
        index += 1
        left -= len(piece)
        yield piece


async def register(http: aiohttp.ClientSession, base: str) -> dict[str, str]:
    async with http.post(f"{base}/api/v1/auth/register", json={
            "email": f"mp-{os.urandom(4).hex()}@example.com", "password": "benchmark pass 1",
            "display_name": "bench"}) as resp:
        body = await resp.json()
        assert resp.status == 201, body
    return {"Authorization": f"Bearer {body['tokens']['access_token']}"}


async def single(http: aiohttp.ClientSession, base: str, auth: dict[str, str], seed: bytes,
                 size: int) -> float:
    headers = {**auth, "X-File-Name": f"single-{seed.hex()}",
               "Content-Type": "application/octet-stream", "Content-Length": str(size)}
    start = time.perf_counter()
    async with http.post(f"{base}/api/v1/files/upload", headers=headers,
                         data=byte_range(seed, 0, size)) as resp:
        assert resp.status == 201, await resp.text()
    return time.perf_counter() - start


async def multipart(http: aiohttp.ClientSession, base: str, auth: dict[str, str],
                    seed: bytes, size: int, part: int, parallel: int) -> tuple[float, float]:
    start = time.perf_counter()
    async with http.post(f"{base}/api/v1/files/upload/multipart/init", headers=auth,
                         json={"file_name": f"multi-{seed.hex()}", "file_size": size}) as resp:
        up = await resp.json()
        assert resp.status == 201, up
    uid = up["upload_id"]
    sem = asyncio.Semaphore(parallel)

    async def send(n: int) -> None:
        offset = (n - 1) * part
        length = min(part, size - offset)
        headers = {**auth, "Content-Length": str(length)}
        async with sem, http.put(f"{base}/api/v1/files/upload/multipart/{uid}/part/{n}",
                                 headers=headers, data=byte_range(seed, offset, length)) as r:
            assert r.status == 200, await r.text()

    count = -(-size // part)
    await asyncio.gather(*(send(n) for n in range(1, count + 1)))
    parts_done = time.perf_counter() - start
    async with http.post(f"{base}/api/v1/files/upload/multipart/{uid}/complete",
                         headers=auth) as resp:
        assert resp.status == 201, await resp.text()
    return parts_done, time.perf_counter() - start


async def bench(cluster: ClusterHandle, size: int, part: int, parallel: int,
                fresh: bool) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=1800)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        base = cluster.gateway_url
        auth = await register(http, base)
        seed = os.urandom(8)
        single_s = await single(http, base, auth, seed, size)
        parts_s, total_s = await multipart(http, base, auth,
                                           os.urandom(8) if fresh else seed, size, part,
                                           parallel)
    mib = size / MIB
    print(f"{mib:.0f} MiB, parts of {part // MIB} MiB, {parallel} in flight "
          f"({'unique bytes' if fresh else 'same bytes: deduplicated'})")
    print(f"  single stream upload            {mib / single_s:8.1f} MiB/s  ({single_s:6.1f} s)")
    print(f"  multipart parts only            {mib / parts_s:8.1f} MiB/s  ({parts_s:6.1f} s)")
    print(f"  multipart incl. complete        {mib / total_s:8.1f} MiB/s  ({total_s:6.1f} s)")
    print(f"  ratio multipart / single        {single_s / total_s:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=4096)
    parser.add_argument("--part-mib", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--same-bytes", action="store_true",
                        help="send the single stream's bytes again (dedup)")
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    args = parser.parse_args()
    size, part = args.size_mib * MIB, args.part_mib * MIB
    run_on_cluster(lambda cluster: bench(cluster, size, part, args.parallel,
                                         not args.same_bytes), args.data_dir)


if __name__ == "__main__":
    main()
