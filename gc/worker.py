"""The GC worker: one collector at a time, passes driven by ``run_once()``.

A pass, under the PostgreSQL advisory lock ``GC_LOCK_KEY`` (a second collector
finds it taken and skips its pass):

1. the file lifecycle: stale multipart uploads and upload sessions expire, trash
   past its retention is purged, versions past retention are pruned. What those
   rows referenced (manifests, then chunks) becomes unreferenced;
2. the chunk collection (``dfms.gc.collector``, where the protocol and its one
   assumption are written down): orphan manifests are deleted, unreferenced
   chunks condemned, chunks condemned for a grace period swept from every node,
   and objects no chunk row accounts for removed.

``GcWorker(config, dry_run=True)`` (or ``run_once(dry_run=True)``) reports what a
pass would do, with the same counters, and changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import asyncpg
from prometheus_client import Counter, Gauge

from dfms.config import Config
from dfms.gc.collector import CHUNK_COUNTERS, ChunkCollector
from dfms.gc.nodes import NodeSet
from dfms.metadata import lifecycle as lc
from dfms.metadata import multipart as mp
from dfms.metadata import trash, upload_sessions
from dfms.metadata.db import Connection
from dfms.runtime.pooled import PooledService
from dfms.runtime.service import PassStats

# The advisory-lock key every collector takes: only one runs a pass at a time.
GC_LOCK_KEY = 0x0DF5_0006
SKIPPED = "skipped_other_collector_running"
RECLAIMED_BYTES = Counter("dfms_gc_reclaimed_bytes_total",
                          "Bytes deleted from nodes by GC (one copy of each chunk swept, "
                          "plus orphan objects)", ["kind"])
LAST_SUCCESS = Gauge("dfms_gc_last_success_timestamp_seconds",
                     "Unix time the last GC pass finished without errors (0: none yet)")
# The pass counters that are reclaimed bytes, by the label they get.
RECLAIMED_COUNTERS = {"chunks": "bytes_swept", "orphans": "orphan_bytes_deleted"}
# Every pass reports all of these (0 when there was nothing to do).
LIFECYCLE_COUNTERS = ("multipart_expired", "upload_sessions_expired", "trash_items_purged",
                      "trash_files_purged", "versions_pruned")


def record_pass(stats: PassStats, now: float | None = None) -> None:
    """Reclaimed bytes always; the success time only for a pass without errors (a pass
    that raised never gets here, so an alert on this gauge's age catches both)."""
    for kind, counter in RECLAIMED_COUNTERS.items():
        RECLAIMED_BYTES.labels(kind).inc(stats.counters.get(counter, 0))
    if stats.errors == 0:
        LAST_SUCCESS.set(time.time() if now is None else now)


class _DryRunDone(Exception):
    """Raised to roll back a dry run's transaction."""


class GcWorker(PooledService):
    name = "gc_worker"

    def __init__(self, config: Config, pool: asyncpg.Pool | None = None, *,
                 dry_run: bool = False) -> None:
        super().__init__(config, pool)
        self.dry_run = dry_run
        self.interval_s = config.gc.interval_s
        # Seconds each phase of the last pass took ("lifecycle", "orphan_manifests",
        # "mark", "sweep", "orphan_objects"); logged with the pass.
        self.last_phase_seconds: dict[str, float] = {}

    @property
    def ops_port(self) -> int:
        return self.config.gc.ops_port

    async def run_once(self, dry_run: bool | None = None) -> PassStats:
        """One pass; ``dry_run`` (default: the worker's) only counts what would go.

        When another collector holds the lock, nothing is done and the counters are
        just ``{SKIPPED: 1}``.
        """
        dry = self.dry_run if dry_run is None else dry_run
        pool = await self.get_pool()
        stats = PassStats()
        async with pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", GC_LOCK_KEY):
                stats.add(SKIPPED)
                return stats
            try:
                await self._pass(conn, stats, dry_run=dry)
            finally:
                # (Should this fail, releasing the connection to the pool resets it,
                # which unlocks it too: asyncpg runs pg_advisory_unlock_all().)
                await conn.execute("SELECT pg_advisory_unlock($1)", GC_LOCK_KEY)
        if not dry:
            record_pass(stats)
        return stats

    async def _pass(self, conn: Connection, stats: PassStats, *,
                    dry_run: bool) -> None:
        self.last_phase_seconds = {}
        for name in (*LIFECYCLE_COUNTERS, *CHUNK_COUNTERS):
            stats.add(name, 0)
        async with await NodeSet.load(conn, self.config.s3) as nodes:
            await nodes.check()
            chunks = ChunkCollector(conn, self.config.gc, nodes, stats, dry_run=dry_run)
            if not dry_run:
                await self._database_phases(conn, chunks, stats)
            else:  # in a transaction that is rolled back: the counters are what remains
                try:
                    async with conn.transaction():
                        await self._database_phases(conn, chunks, stats)
                        raise _DryRunDone
                except _DryRunDone:
                    pass
            await self._phase("orphan_objects", chunks.delete_orphan_objects)
            # A node down only defers work (orphans it keeps are removed once it is
            # back), so it is a counter to watch, not a failed pass.
            stats.add("nodes_unreachable", len(nodes.unreachable))
        self.log.info("pass phases", extra={"dry_run": dry_run, **{
            f"{name}_s": round(s, 3) for name, s in self.last_phase_seconds.items()}})

    async def _database_phases(self, conn: Connection, chunks: ChunkCollector,
                               stats: PassStats) -> None:
        """Lifecycle, then orphan manifests, mark and sweep (the sweep's deletes too)."""
        await self._phase("lifecycle", lambda: self._lifecycle_pass(conn, stats))
        await self._phase("orphan_manifests", chunks.delete_orphan_manifests)
        await self._phase("mark", chunks.mark)
        await self._phase("sweep", chunks.sweep)

    async def _phase(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        start = time.perf_counter()
        try:
            await run()
        finally:
            self.last_phase_seconds[name] = time.perf_counter() - start

    async def _lifecycle_pass(self, conn: Connection, stats: PassStats) -> None:
        cfg = self.config.lifecycle
        async with conn.transaction():
            stats.add("multipart_expired", await mp.expire_stale(conn))
            stats.add("upload_sessions_expired", await upload_sessions.expire_stale(conn))
        await self._purge_trash(conn, stats)
        async with conn.transaction():
            stats.add("versions_pruned", await lc.prune_versions(conn, cfg))

    async def _purge_trash(self, conn: Connection, stats: PassStats) -> None:
        days = self.config.lifecycle.trash_retention_days
        while True:
            roots = await trash.expired_roots(conn, days, self.config.gc.batch_size)
            if not roots:
                return
            purged = 0
            for _, item in roots:
                try:  # one bad item never stops the pass
                    async with conn.transaction():
                        stats.add("trash_files_purged", await trash.purge(conn, item))
                    purged += 1
                except asyncpg.PostgresError:
                    stats.errors += 1
                    self.log.exception("purging a trash item failed",
                                       extra={"item": str(item.id)})
            stats.add("trash_items_purged", purged)
            if purged == 0:
                return  # every remaining root fails: stop instead of spinning
