"""The replication manager: drives every chunk toward n verified replicas.

Work comes from three places, so a lost message only ever delays a repair:

* the ``repair_queue`` (chunks written below n replicas, replicas found missing
  or corrupt by readers and the scrubber), worked through on every pass;
* events on ``dfms.chunks`` and ``dfms.nodes``: a chunk event wakes the
  manager at once; a node coming back, a node added, drained or removed, or
  any ring change asks for a full pass now; a node going down asks for one
  when the repair delay has run out (not before: brief outages cause no
  repair storm);
* a full reconciliation pass every ``replication.reconcile_interval_s``: every
  chunk is planned against the ring and the nodes' states, and whatever is
  off is repaired, rebalanced or trimmed.

``run_once()`` does the queue and a full pass (what tests drive); the
service's own loop runs the full pass only when it is due. Several managers
can run: events are split between them by their consumer group, a full pass
runs in one of them at a time (an advisory lock; the others skip it) and each
chunk is worked on by one at a time (``dfms.replication.repair``).

The scrubber (``dfms.replication.scrubber``) runs in the same process.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import asyncpg
from prometheus_client import Gauge

from dfms.config import Config
from dfms.errors import DependencyUnavailable
from dfms.events.consumer import EventConsumer
from dfms.events.envelope import Event
from dfms.events.topics import CHUNKS_TOPIC, NODE_HEALTH_CHANGED, NODES_TOPIC
from dfms.healthmon.passive import PassiveHealth
from dfms.healthmon.state import Health
from dfms.metadata.db import Connection
from dfms.metadata.states import ChunkState
from dfms.replication.cluster import NodeClients, Throttle, load_view
from dfms.replication.repair import ChunkRepairer
from dfms.replication.scrubber import Scrubber
from dfms.runtime.pooled import PooledService
from dfms.runtime.service import PassStats, main_for
from dfms.runtime.tasks import cancel_and_wait

RECONCILE_LOCK_KEY = 0x0DF5_0008
CONSUMER_NAME = "replication-manager"
CONSUMER_RETRY_S = 5.0
SKIPPED_FULL = "full_pass_skipped_other_instance"

QUEUE_LENGTH = Gauge("dfms_replication_queue_length", "Entries in the repair queue")
FULL_PASS_SECONDS = Gauge("dfms_replication_full_pass_seconds",
                          "Duration of the last full reconciliation pass")

_QUEUE_PAGE = "SELECT id, chunk_sha256 FROM repair_queue WHERE id > $1 ORDER BY id LIMIT $2"
# Chunks (those ``{where}`` selects, never ones being swept) with their replica rows.
_WITH_REPLICAS = """
SELECT c.sha256,
       coalesce(array_agg(r.node_id) FILTER (WHERE r.node_id IS NOT NULL), '{{}}') AS nodes,
       coalesce(array_agg(r.state) FILTER (WHERE r.node_id IS NOT NULL), '{{}}') AS states
FROM (SELECT sha256 FROM chunks WHERE {where} AND state <> '{sweeping}' {then}) c
LEFT JOIN chunk_replicas r ON r.chunk_sha256 = c.sha256
GROUP BY c.sha256 ORDER BY c.sha256
"""
_CHUNKS_NAMED = _WITH_REPLICAS.format(where="sha256 = ANY($1::bytea[])", then="",
                                      sweeping=ChunkState.SWEEPING)
_CHUNK_PAGE = _WITH_REPLICAS.format(where="sha256 > $1", then="ORDER BY sha256 LIMIT $2",
                                    sweeping=ChunkState.SWEEPING)


class ReplicationManager(PooledService):
    name = "replication_manager"

    def __init__(self, config: Config, pool: asyncpg.Pool | None = None) -> None:
        super().__init__(config, pool)
        cfg = config.replication
        self.interval_s = cfg.interval_s
        self._clients = NodeClients(config.s3)
        self.throttle = Throttle(cfg.copy_bytes_per_s)
        self.scrubber: Scrubber | None = None
        self._consumer: EventConsumer | None = None
        self._consumer_task: asyncio.Task[None] | None = None
        self._full_requested = True  # the first scheduled pass is a full one
        self._last_full = float("-inf")
        self._timers: set[asyncio.TimerHandle] = set()
        # Failed node requests of the repairs, counted across passes (made with the pool).
        self._node_failures: PassiveHealth | None = None

    @property
    def ops_port(self) -> int:
        return self.config.replication.ops_port

    # -- lifecycle --------------------------------------------------------------------

    async def _start(self) -> None:
        pool = await self.get_pool()
        if self.config.replication.scrub_bytes_per_s > 0:
            self.scrubber = Scrubber(self.config, pool)
            await self.scrubber.start()
        self._consumer_task = asyncio.create_task(self._keep_consuming(),
                                                  name="replication-events")
        await super()._start()

    async def _stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        task, self._consumer_task = self._consumer_task, None
        await cancel_and_wait(task)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
        scrubber, self.scrubber = self.scrubber, None
        if scrubber is not None:  # before the pool it shares goes
            await scrubber.stop()
        await super()._stop()

    async def close_resources(self) -> None:
        failures, self._node_failures = self._node_failures, None
        if failures is not None:  # before the pool its markings use goes
            await failures.close()
        await self._clients.close()

    # -- events -----------------------------------------------------------------------

    async def _keep_consuming(self) -> None:
        """Join the consumer group, and rejoin whenever Kafka was away or the loop died."""
        while True:
            if self._consumer is None or not self._consumer.running:
                if self._consumer is not None:
                    await self._consumer.stop()
                self._consumer = EventConsumer(self.config, CONSUMER_NAME,
                                               [CHUNKS_TOPIC, NODES_TOPIC], self.on_event,
                                               pool=self._pool)
                try:
                    await self._consumer.start()
                except DependencyUnavailable as exc:
                    self._consumer = None
                    self.log.warning("no event consumer yet; passes still run on their "
                                     "interval", extra={"error": str(exc)})
            await asyncio.sleep(CONSUMER_RETRY_S)

    async def on_event(self, conn: Connection, event: Event) -> None:
        """Wake the right pass for ``event`` (the consumer calls this in a transaction)."""
        if event.topic == CHUNKS_TOPIC or event.type.startswith("chunk."):
            self.trigger()
            return
        if event.type == NODE_HEALTH_CHANGED and event.payload.get("new") == Health.DOWN:
            age_s = (datetime.now(UTC) - event.occurred_at).total_seconds()
            self._request_full(after_s=max(0.0, self.config.replication.repair_delay_s
                                           - age_s) + 1.0)
            return
        self._request_full()  # back up, added, draining, removed, ring changed

    def _request_full(self, after_s: float = 0.0) -> None:
        if after_s <= 0:
            self._full_requested = True
            self.trigger()
            return
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            self._request_full()

        handle = loop.call_later(after_s, fire)
        self._timers.add(handle)

    # -- passes -----------------------------------------------------------------------

    async def scheduled_pass(self) -> PassStats:
        due = time.monotonic() - self._last_full >= self.config.replication.reconcile_interval_s
        return await self.run_once(full=due or self._full_requested)

    async def run_once(self, full: bool = True) -> PassStats:
        """Work through the repair queue, then (``full``) reconcile every chunk."""
        pool = await self.get_pool()
        stats = PassStats()
        view = await load_view(pool, self.config.replication.repair_delay_s)
        if view.ring is None:
            stats.add("no_ring")
            return stats
        await self._clients.sync(view.endpoints)
        if self._node_failures is None:
            self._node_failures = PassiveHealth(pool, "replication-manager",
                                                self.config.healthmon.passive_suspect_after)
        repairer = ChunkRepairer(pool, self._clients, view,
                                 replicas_n=self.config.replication.replicas_n,
                                 throttle=self.throttle, stats=stats,
                                 node_failures=self._node_failures)
        stats.add("nodes_lost", len(view.states.lost))
        await self._drain_queue(pool, repairer, stats)
        if full:
            self._full_requested = False
            start = time.monotonic()
            if await self._reconcile_all(pool, repairer, stats):
                self._last_full = time.monotonic()
                FULL_PASS_SECONDS.set(self._last_full - start)
        QUEUE_LENGTH.set(await pool.fetchval("SELECT count(*) FROM repair_queue"))
        return stats

    async def _drain_queue(self, pool: asyncpg.Pool, repairer: ChunkRepairer,
                           stats: PassStats) -> None:
        """Every queued chunk once; converged ones leave the queue (the repairer
        deletes their entries), waiting ones stay for the next pass."""
        seen: set[bytes] = set()
        after = 0
        while True:
            rows = await pool.fetch(_QUEUE_PAGE, after, self.config.replication.batch_size)
            if not rows:
                return
            after = rows[-1]["id"]
            digests = [d for d in dict.fromkeys(bytes(r["chunk_sha256"]) for r in rows)
                       if d not in seen]
            seen.update(digests)
            stats.add("queue_entries", len(rows))
            chunks = await pool.fetch(_CHUNKS_NAMED, digests)
            await self._repair_all(repairer, self._needing_work(repairer, chunks, stats,
                                                                dequeue=True), stats)

    async def _reconcile_all(self, pool: asyncpg.Pool, repairer: ChunkRepairer,
                             stats: PassStats) -> bool:
        """Plan every chunk and repair those that need it; False if another instance
        holds the full pass."""
        async with pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RECONCILE_LOCK_KEY):
                stats.add(SKIPPED_FULL)
                return False
            try:
                after = b""
                while True:
                    rows = await conn.fetch(_CHUNK_PAGE, after,
                                            self.config.replication.batch_size)
                    if not rows:
                        break
                    after = bytes(rows[-1]["sha256"])
                    await self._repair_all(repairer, self._needing_work(repairer, rows, stats),
                                           stats)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", RECONCILE_LOCK_KEY)
        stats.add("full_passes")
        return True

    @staticmethod
    def _needing_work(repairer: ChunkRepairer, rows: list[asyncpg.Record],
                      stats: PassStats, *, dequeue: bool = False) -> list[bytes]:
        """The chunks of ``rows`` the repairer has something to do for, planned without
        a lock: it plans them again under one. A chunk only waiting for a down target
        is left (no transaction for it); a converged one only goes to the repairer to
        leave the queue (``dequeue``)."""
        work: list[bytes] = []
        for row in rows:
            digest = bytes(row["sha256"])
            plan = repairer.plan(digest, dict(zip(row["nodes"], row["states"], strict=True)))
            stats.add("chunks_checked")
            if plan.converged:
                if dequeue:
                    work.append(digest)
            elif plan.actionable:
                work.append(digest)
            else:
                stats.add("chunks_waiting")
        return work

    async def _repair_all(self, repairer: ChunkRepairer, digests: list[bytes],
                          stats: PassStats) -> None:
        limit = asyncio.Semaphore(self.config.replication.max_concurrent_copies)

        async def one(digest: bytes) -> None:
            async with limit:
                await self._repair_one(repairer, digest, stats)

        await asyncio.gather(*(one(d) for d in digests))

    async def _repair_one(self, repairer: ChunkRepairer, digest: bytes,
                          stats: PassStats) -> None:
        try:  # one bad chunk never stops a pass
            outcome = await repairer.repair(digest)
        except (asyncpg.PostgresError, OSError) as exc:
            stats.errors += 1
            self.log.warning("repairing a chunk failed", extra={"chunk": digest.hex()[:16],
                                                                "error": str(exc)})
            return
        except Exception:
            stats.errors += 1
            self.log.exception("repairing a chunk failed", extra={"chunk": digest.hex()[:16]})
            return
        stats.add(f"chunks_{outcome.value}")


def main(config: Config) -> int:
    """Run the manager as a process until SIGINT/SIGTERM (``dfms replication-manager``)."""
    return main_for(ReplicationManager(config), config)
