"""Chunk GC rate and memory: mark, sweep and orphan collection on a scratch dataset.

The dataset: N unreferenced chunk rows (last referenced two days ago, one replica
row per node) whose objects (1 byte each: the collector never looks at sizes)
are on every node, plus some orphan objects (no row). ``--objects K`` writes the
objects of the first K chunks only, to save time filling slow nodes: the sweep
still sends one DELETE per chunk and node (a missing object is answered 204 like
any other, at about the same cost), so its rate still covers N x nodes requests.

Pass 1 condemns the N chunks (and removes the orphans, old enough by then); after
the grace period (1 s here) pass 2 sweeps them: deletes on every node, then the
rows. Datasets of two sizes run with ``tracemalloc`` (peak Python memory of a
pass above what was allocated before it): the peak must not grow with the number
of chunks. The large one runs once more untraced, for the rates (tracing slows
the collector's own CPU work). Whatever the passes leave is removed.

    python benchmarks/bench_gc.py [--chunks 100000] [--small 10000] [--orphans 5000]
                                  [--objects K] [--data-dir D]

``--data-dir`` attaches to a running ``dfms up`` instead of starting a cluster. The
scratch dataset is collected cluster-wide by a 1 s grace period, so only point it
at a cluster whose unreferenced chunks may go.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from harness import DATA_DIR_HELP, run_on_cluster

from dfms.config import Config, load_config
from dfms.gc.worker import SKIPPED, GcWorker
from dfms.localstack.handle import ClusterHandle
from dfms.storage import NodeClient, chunk_key

GRACE_S = 1.0
PUT_CONCURRENCY = 128


@dataclass
class PassResult:
    seconds: float
    counters: dict[str, int]
    errors: int
    peak_bytes: int | None  # tracemalloc peak above the start, when traced
    rss_mib: tuple[float, float]  # resident memory before the pass, and its peak
    dry_run_seconds: float
    phases: dict[str, float]  # seconds per phase of the pass


def rss_reset_peak() -> float:
    """Reset the process's peak RSS (VmHWM) to the current RSS; the current RSS in MiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def digests(count: int, seed: bytes) -> Iterator[bytes]:
    """Distinct pseudo-random digests, made on demand (the same for the same seed)."""
    for i in range(count):
        yield hashlib.sha256(seed + i.to_bytes(8, "big")).digest()


async def put_objects(nodes: list[NodeClient], keys: Iterator[str]) -> int:
    """PUT a 1-byte object under every key on every node; returns objects written."""
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=4 * PUT_CONCURRENCY)
    written = 0

    async def worker() -> None:
        nonlocal written
        while (key := await queue.get()) is not None:
            await asyncio.gather(*(n.put(key, b"\0") for n in nodes))
            written += len(nodes)

    workers = [asyncio.create_task(worker()) for _ in range(PUT_CONCURRENCY)]
    for key in keys:
        await queue.put(key)
    for _ in workers:
        await queue.put(None)
    await asyncio.gather(*workers)
    return written


async def populate(conn: asyncpg.Connection, nodes: list[NodeClient], count: int,
                   objects: int, orphans: int, seed: bytes) -> None:
    start = time.perf_counter()
    node_ids = [n.node_id for n in nodes]
    old = datetime.now(UTC) - timedelta(days=2)
    await conn.copy_records_to_table(
        "chunks", columns=["sha256", "size", "state", "created_at", "last_ref_at"],
        records=((d, 1, "live", old, old) for d in digests(count, seed)))
    await conn.copy_records_to_table(
        "chunk_replicas", columns=["chunk_sha256", "node_id"],
        records=((d, n) for d in digests(count, seed) for n in node_ids))
    await conn.execute("ANALYZE chunks")
    await conn.execute("ANALYZE chunk_replicas")
    rows_s = time.perf_counter() - start
    start = time.perf_counter()
    written = await put_objects(nodes, (chunk_key(d.hex()) for d in
                                        digests(min(objects, count), seed)))
    written += await put_objects(nodes[:1], (chunk_key(d.hex()) for d in
                                             digests(orphans, seed + b"orphan")))
    objects_s = time.perf_counter() - start
    print(f"  dataset: {count} rows ({3 * count} replica rows) in {rows_s:.1f} s, "
          f"{written} objects in {objects_s:.1f} s ({written / objects_s:.0f}/s)")


async def gc_pass(cfg: Config, *, traced: bool) -> PassResult:
    worker = GcWorker(cfg)
    try:
        start = time.perf_counter()
        await worker.run_once(dry_run=True)  # also warms up: pool, imports, clients
        dry_run_seconds = time.perf_counter() - start
        rss_before = rss_reset_peak()
        if traced:
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        for _ in range(300):
            stats = await worker.run_once()
            if SKIPPED not in stats.counters:
                break
            await asyncio.sleep(0.2)  # the cluster's own gc-worker is in a pass
        else:
            raise RuntimeError("the GC lock stayed taken")
        seconds = time.perf_counter() - start
        peak = None
        if traced:
            peak = tracemalloc.get_traced_memory()[1] - base
            tracemalloc.stop()
        return PassResult(seconds, stats.counters, stats.errors, peak,
                          (rss_before, _status_mib("VmHWM")), dry_run_seconds,
                          dict(worker.last_phase_seconds))
    finally:
        await worker.close()


async def run_dataset(cluster: ClusterHandle, count: int, objects: int, orphans: int, *,
                      traced: bool) -> tuple[PassResult, PassResult]:
    cfg = load_config(cluster.data_dir / "dfms.yaml", env={},
                      overrides={"gc": {"grace_period_s": GRACE_S}})
    seed = os.urandom(8)
    conn = await asyncpg.connect(cluster.postgres_dsn)
    nodes = [NodeClient(n["id"], n["endpoint"], cfg.s3) for n in cluster.s3_nodes]
    try:
        await populate(conn, nodes, count, objects, orphans, seed)
        await asyncio.sleep(GRACE_S + 0.5)  # the orphans' objects get old enough
        mark = await gc_pass(cfg, traced=traced)
        await asyncio.sleep(GRACE_S + 0.5)
        sweep = await gc_pass(cfg, traced=traced)
        left = await conn.fetchval("SELECT count(*) FROM chunks WHERE sha256 = ANY($1)",
                                   list(digests(count, seed)))
        if left:  # clean up whatever a failed pass left
            print(f"  WARNING: {left} scratch rows left; deleting them")
            await conn.execute("DELETE FROM chunks WHERE sha256 = ANY($1)",
                               list(digests(count, seed)))
        return mark, sweep
    finally:
        for node in nodes:
            await node.close()
        await conn.close()


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def report(label: str, count: int, mark: PassResult, sweep: PassResult) -> None:
    """Rates per phase. With a 1 s grace the first pass's sweep already takes what its
    mark condemned more than a second before, so counts and times add over both."""
    passes = (mark, sweep)
    condemned = sum(p.counters["chunks_condemned"] for p in passes)
    swept = sum(p.counters["chunks_swept"] for p in passes)
    orphans = sum(p.counters["orphan_objects_deleted"] for p in passes)
    marking = sum(p.phases["mark"] for p in passes)
    sweeping = sum(p.phases["sweep"] for p in passes)
    listing = sum(p.phases["orphan_objects"] for p in passes)
    print(f"  {label}: passes {mark.seconds:.1f} s + {sweep.seconds:.1f} s, errors "
          f"{mark.errors + sweep.errors}")
    print(f"    mark   {marking:7.2f} s  condemned {condemned:>7}  "
          f"{condemned / marking:8.0f} chunks/s")
    print(f"    sweep  {sweeping:7.2f} s  swept     {swept:>7}  {swept / sweeping:8.0f} chunks/s "
          f"({3 * swept / sweeping:.0f} object deletes/s)")
    print(f"    orphan {listing:7.2f} s  deleted   {orphans:>7}  (listing every node, twice)")
    for name, p in (("pass 1", mark), ("pass 2", sweep)):
        print(f"    {name}: tracemalloc peak {mib(p.peak_bytes)}, RSS {p.rss_mib[0]:.0f} -> "
              f"{p.rss_mib[1]:.0f} MiB; dry run before it {p.dry_run_seconds:.1f} s")
    assert condemned >= count and swept >= count, (mark.counters, sweep.counters)


async def bench(cluster: ClusterHandle, chunks: int, small: int, orphans: int,
                objects: int) -> None:
    print(f"peak memory (tracemalloc) at {small} and {chunks} chunks:")
    for count in (small, chunks):
        mark, sweep = await run_dataset(cluster, count, objects,
                                        orphans * count // chunks, traced=True)
        report(f"{count} chunks, traced", count, mark, sweep)
    print(f"rates at {chunks} chunks (untraced):")
    mark, sweep = await run_dataset(cluster, chunks, objects, orphans, traced=False)
    report(f"{chunks} chunks", chunks, mark, sweep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--orphans", type=int, default=5_000)
    parser.add_argument("--objects", type=int, default=None,
                        help="write objects for this many chunks of each dataset (default: all)")
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    args = parser.parse_args()
    objects = args.chunks if args.objects is None else args.objects
    run_on_cluster(lambda cluster: bench(cluster, args.chunks, args.small, args.orphans,
                                         objects), args.data_dir)


if __name__ == "__main__":
    main()
