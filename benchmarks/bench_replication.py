"""Re-replication after a node loss, and the scrub rate, against raw copies.

A 4-node cluster (n=3) holds a unique stream (default 1 GiB) uploaded through
the chunk service. One node is killed and marked down for longer than the
repair delay; one replication-manager pass (``run_once()``, no bandwidth limit,
``max_concurrent_copies`` as configured) copies every replica it held to the
next node of each chunk's ring walk. Next to it, the limit: the same copies
done raw (GET from the same source, SHA-256, PUT to the same destination under
a scratch key, same parallelism, no database), in the same run.

Then the scrubber: one full pass over every replica with no rate limit, next to
raw GET + SHA-256 of the same replicas at the same parallelism; and a paced
pass slice at ``--scrub-limit-mib`` MiB/s, to show the limit holds.

    python benchmarks/bench_replication.py [--size-mib 1024] [--scrub-limit-mib 20]

The cluster is started in a temporary directory and removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
from harness import run_on_cluster

from dfms.chunkservice.client import ChunkClient
from dfms.config import Config
from dfms.localstack.handle import ClusterHandle
from dfms.replication.cluster import load_view
from dfms.replication.manager import ReplicationManager
from dfms.replication.plan import plan_chunk
from dfms.replication.scrubber import Scrubber
from dfms.storage import NodeClient, chunk_key

MIB = 1024 * 1024
FRAME = 1 * MIB
VICTIM = "node-2"


async def frames(size: int) -> AsyncIterator[bytes]:
    for _ in range(0, size, FRAME):
        yield os.urandom(FRAME)


async def bounded(jobs: list[Callable[[], Awaitable[int]]], parallel: int) -> int:
    limit = asyncio.Semaphore(parallel)

    async def run(job: Callable[[], Awaitable[int]]) -> int:
        async with limit:
            return await job()

    return sum(await asyncio.gather(*(run(j) for j in jobs)))


def fast(cfg: Config, **changes: object) -> Config:
    unlimited: dict[str, object] = {"repair_delay_s": 0.0, "copy_bytes_per_s": 0,
                                    "scrub_bytes_per_s": 0}
    return dataclasses.replace(cfg, replication=dataclasses.replace(
        cfg.replication, **{**unlimited, **changes}))


async def copy_plan(cfg: Config, pg: asyncpg.Connection) -> list[tuple[bytes, str, str]]:
    """(chunk, source node, destination node) for every copy the node loss calls for."""
    view = await load_view(pg, 0.0)
    assert view.ring is not None
    rows = await pg.fetch("SELECT chunk_sha256, array_agg(node_id) AS nodes "
                          "FROM chunk_replicas GROUP BY chunk_sha256")
    copies = []
    for row in rows:
        digest = bytes(row["chunk_sha256"])
        replicas = dict.fromkeys(row["nodes"], "ok")
        plan = plan_chunk(digest.hex(), replicas, view.ring, view.states,
                          cfg.replication.replicas_n)
        source = next(n for n in plan.targets if n in replicas and n in view.states.up)
        copies += [(digest, source, dest) for dest in plan.copy_to]
    return copies


async def raw_copies(clients: dict[str, NodeClient], copies: list[tuple[bytes, str, str]],
                     parallel: int) -> int:
    def job(digest: bytes, source: str, dest: str) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            data = await clients[source].get(chunk_key(digest.hex()))
            assert await asyncio.to_thread(lambda: hashlib.sha256(data).digest()) == digest
            await clients[dest].put(f"bench/{digest.hex()}", data, digest.hex())
            return len(data)
        return run

    return await bounded([job(*c) for c in copies], parallel)


async def raw_scrub(clients: dict[str, NodeClient], pg: asyncpg.Connection,
                    parallel: int) -> int:
    rows = await pg.fetch("SELECT chunk_sha256, node_id FROM chunk_replicas "
                          "WHERE state = 'ok' AND node_id <> $1", VICTIM)  # the scrubber skips

    def job(digest: bytes, node: str) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            data = await clients[node].get(chunk_key(digest.hex()))
            assert await asyncio.to_thread(lambda: hashlib.sha256(data).digest()) == digest
            return len(data)
        return run

    return await bounded([job(bytes(r["chunk_sha256"]), r["node_id"]) for r in rows], parallel)


def rate(nbytes: int, seconds: float) -> float:
    return nbytes / MIB / seconds


async def bench(cluster: ClusterHandle, size: int, scrub_limit: int) -> None:
    cfg = cluster.config
    for service in ("replication-manager", "health-monitor"):
        await cluster.control("stop", service)
    parallel = cfg.replication.max_concurrent_copies
    pg = await asyncpg.connect(cluster.postgres_dsn)
    clients = {n["id"]: NodeClient(n["id"], n["endpoint"], cfg.s3) for n in cluster.s3_nodes}
    try:
        start = time.perf_counter()
        async with ChunkClient(cluster.chunk_target) as client:
            await client.upload(frames(size))
        print(f"uploaded {size / MIB:.0f} MiB (n=3) in {time.perf_counter() - start:.1f} s")

        await cluster.control("kill", VICTIM)
        await pg.execute("UPDATE nodes SET health = 'down', health_changed_at = now() "
                         "- interval '1 hour' WHERE id = $1", VICTIM)
        copies = await copy_plan(cfg, pg)
        start = time.perf_counter()
        raw_bytes = await raw_copies(clients, copies, parallel)
        raw_s = time.perf_counter() - start
        for digest, _, dest in copies:
            await clients[dest].delete(f"bench/{digest.hex()}")

        manager = ReplicationManager(fast(cfg))
        try:
            start = time.perf_counter()
            stats = await manager.run_once()
            repair_s = time.perf_counter() - start
            again = await manager.run_once()
        finally:
            await manager.close()
        copied = stats.counters.get("bytes_copied", 0)
        assert stats.errors == 0 and copied == raw_bytes, (stats, raw_bytes)
        assert again.counters.get("replicas_copied", 0) == 0, again
        print(f"\nnode loss: {len(copies)} replicas, {copied / MIB:.0f} MiB to re-replicate "
              f"(parallel {parallel})")
        print(f"  raw GET+SHA-256+PUT {raw_s:7.1f} s  {rate(raw_bytes, raw_s):7.1f} MiB/s")
        print(f"  replication manager {repair_s:7.1f} s  {rate(copied, repair_s):7.1f} MiB/s"
              f"  ratio {raw_s / repair_s:.2f}")
        print(f"  time to re-replicate 1 GiB: {repair_s * 1024 * MIB / copied:.1f} s")

        start = time.perf_counter()
        raw_scrubbed = await raw_scrub(clients, pg, 4)
        raw_scrub_s = time.perf_counter() - start
        scrubber = Scrubber(fast(cfg))
        try:
            start = time.perf_counter()
            scrub = await scrubber.full_pass()
            scrub_s = time.perf_counter() - start
            scrubbed = scrub.counters.get("bytes_scrubbed", 0)
            print(f"\nscrub: {scrubbed / MIB:.0f} MiB of replicas (nodes up)")
            print(f"  raw GET+SHA-256     {raw_scrub_s:7.1f} s  "
                  f"{rate(raw_scrubbed, raw_scrub_s):7.1f} MiB/s")
            print(f"  scrubber, no limit  {scrub_s:7.1f} s  {rate(scrubbed, scrub_s):7.1f} MiB/s"
                  f"  ratio {raw_scrub_s / scrub_s * scrubbed / raw_scrubbed:.2f}")
        finally:
            await scrubber.close()
        paced = Scrubber(fast(cfg, scrub_bytes_per_s=scrub_limit, batch_size=20))
        try:
            start = time.perf_counter()
            nbytes = 0
            while time.perf_counter() - start < 10.0:
                nbytes += (await paced.run_once()).counters.get("bytes_scrubbed", 0)
            paced_s = time.perf_counter() - start
            print(f"  scrubber at {scrub_limit / MIB:.0f} MiB/s limit: "
                  f"{rate(nbytes, paced_s):.1f} MiB/s over {paced_s:.1f} s")
        finally:
            await paced.close()
    finally:
        for c in clients.values():
            await c.close()
        await pg.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--scrub-limit-mib", type=int, default=20)
    args = parser.parse_args()
    # Always a cluster of its own: it needs four nodes and kills one of them.
    run_on_cluster(lambda cluster: bench(cluster, args.size_mib * MIB,
                                         args.scrub_limit_mib * MIB),
                   prefix="dfms-bench-repl-", up_args=("--nodes", "4"))


if __name__ == "__main__":
    main()
