"""The scrubber: re-reads and re-hashes every replica, slowly, forever.

SeaweedFS does not check the SHA-256 a PUT is signed with, and disks rot: the
only proof a replica is still good is reading it back. The scrubber walks the
ok replica rows in ``(chunk_sha256, node_id)`` order, a batch per
``run_once()``, paced to ``replication.scrub_bytes_per_s`` (0 turns it off).
A good replica gets ``verified_at``; a missing or corrupt one is marked so,
queued for repair and announced (``chunk.replica_bad``), all in one
transaction, and the replication manager copies a good replica over it.

Where the walk is, and how long the last full pass took, is kept in
``scrub_state`` (so a restart resumes the pass) and exported as metrics. One
scrubber works at a time (a PostgreSQL advisory lock); replicas on nodes that
are down are skipped for this pass.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import asyncpg
from prometheus_client import Counter, Gauge

from dfms.config import Config
from dfms.events import outbox
from dfms.events.topics import CHUNK_REPLICA_BAD, CHUNKS_TOPIC
from dfms.metadata.db import Connection
from dfms.metadata.states import ChunkState, ReplicaState
from dfms.replication.cluster import NodeClients, Throttle, load_view
from dfms.replication.repair import sha256_of
from dfms.runtime.pooled import PooledService
from dfms.runtime.service import PassStats
from dfms.storage import ObjectNotFound, StorageError, chunk_key

SCRUB_LOCK_KEY = 0x0DF5_0007
STATE_ID = "default"
# Replicas read at once within a batch: enough to keep a few nodes busy when the
# rate limit is high, few enough that a batch holds little memory (4 x max chunk).
SCRUB_CONCURRENCY = 4

SCRUBBED_BYTES = Counter("dfms_scrub_bytes_total", "Bytes re-read and re-hashed by the scrubber")
LAST_PASS_SECONDS = Gauge("dfms_scrub_last_pass_seconds",
                          "How long the scrubber's last full pass over every replica took")

_STATE = "SELECT * FROM scrub_state WHERE id = $1"
_INIT = "INSERT INTO scrub_state (id) VALUES ($1) ON CONFLICT DO NOTHING"
_BATCH = f"""
SELECT r.chunk_sha256, r.node_id, c.size FROM chunk_replicas r
JOIN chunks c ON c.sha256 = r.chunk_sha256
WHERE (r.chunk_sha256, r.node_id) > ($1, $2) AND r.state = '{ReplicaState.OK}'
  AND c.state <> '{ChunkState.SWEEPING}'
ORDER BY r.chunk_sha256, r.node_id LIMIT $3
"""
_ADVANCE = """
UPDATE scrub_state SET cursor_sha256 = $2, cursor_node_id = $3,
       pass_replicas = pass_replicas + $4, pass_bytes = pass_bytes + $5
WHERE id = $1
"""
_FINISH = """
UPDATE scrub_state SET cursor_sha256 = NULL, cursor_node_id = NULL,
       last_pass_seconds = extract(epoch FROM now() - pass_started_at),
       last_pass_replicas = pass_replicas + $2, last_pass_bytes = pass_bytes + $3,
       last_pass_done_at = now(), pass_started_at = now(), pass_replicas = 0, pass_bytes = 0
WHERE id = $1
RETURNING last_pass_seconds
"""
_VERIFIED = f"""
UPDATE chunk_replicas r SET verified_at = now()
FROM unnest($1::bytea[], $2::text[]) AS v(sha256, node_id)
WHERE r.chunk_sha256 = v.sha256 AND r.node_id = v.node_id AND r.state = '{ReplicaState.OK}'
"""
_MARK = f"""
UPDATE chunk_replicas SET state = $3
WHERE chunk_sha256 = $1 AND node_id = $2 AND state = '{ReplicaState.OK}'
RETURNING 1
"""
_ENQUEUE = """
INSERT INTO repair_queue (chunk_sha256, node_id, reason) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class _Replica:
    digest: bytes
    node_id: str
    size: int


class Scrubber(PooledService):
    name = "scrubber"

    def __init__(self, config: Config, pool: asyncpg.Pool | None = None) -> None:
        super().__init__(config, pool)
        self.interval_s = config.replication.scrub_interval_s
        self.batch_size = config.replication.batch_size
        self.throttle = Throttle(config.replication.scrub_bytes_per_s)
        self._clients = NodeClients(config.s3)
        self._pass_started: float | None = None  # monotonic, of the pass in progress/last
        self._between_passes = False
        self.last_pass_seconds: float | None = None  # of the last pass this one completed

    async def close_resources(self) -> None:
        await self._clients.close()

    async def scheduled_pass(self) -> PassStats:
        started = self._pass_started
        if (started is not None and self._between_passes and time.monotonic() - started
                < self.config.replication.scrub_min_pass_interval_s):
            return PassStats()  # the last pass was recent: idle until the next is due
        return await self.run_once()

    async def run_once(self) -> PassStats:
        """Scrub the next batch; ``pass_completed`` is 1 when it finished a full pass."""
        pool = await self.get_pool()
        stats = PassStats()
        async with pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", SCRUB_LOCK_KEY):
                stats.add("skipped_other_scrubber_running")
                return stats
            try:
                await self._batch(conn, stats)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", SCRUB_LOCK_KEY)
        return stats

    async def full_pass(self, max_batches: int = 1_000_000) -> PassStats:
        """Batches until a pass completes (tests, benchmarks); the summed counters."""
        total = PassStats()
        for _ in range(max_batches):
            stats = await self.run_once()
            for name, amount in stats.counters.items():
                total.add(name, amount)
            total.errors += stats.errors
            if stats.counters.get("pass_completed") or stats.counters.get(
                    "skipped_other_scrubber_running"):
                break
        return total

    async def _batch(self, conn: Connection, stats: PassStats) -> None:
        await conn.execute(_INIT, STATE_ID)
        state = await conn.fetchrow(_STATE, STATE_ID)
        assert state is not None  # _INIT made the row
        cursor = (bytes(state["cursor_sha256"] or b""), state["cursor_node_id"] or "")
        if self._between_passes or self._pass_started is None:
            self._pass_started = time.monotonic()
            self._between_passes = False
        rows = await conn.fetch(_BATCH, *cursor, self.batch_size)
        view = await load_view(conn, self.config.replication.repair_delay_s)
        await self._clients.sync(view.endpoints)
        replicas = [_Replica(bytes(r["chunk_sha256"]), str(r["node_id"]), int(r["size"]))
                    for r in rows]
        todo = [r for r in replicas if view.states.is_up(r.node_id) and r.node_id in self._clients]
        stats.add("replicas_skipped_node_down", len(replicas) - len(todo))
        good = await self._check_all(conn, todo, stats)
        if good:
            await conn.execute(_VERIFIED, [r.digest for r in good], [r.node_id for r in good])
        scrubbed, nbytes = len(todo), sum(r.size for r in todo)
        if len(rows) < self.batch_size:
            seconds = await conn.fetchval(_FINISH, STATE_ID, scrubbed, nbytes)
            self.last_pass_seconds = seconds
            LAST_PASS_SECONDS.set(seconds)
            stats.add("pass_completed")
            self._between_passes = True
            self.log.info("scrub pass completed", extra={"seconds": round(seconds, 3)})
        else:
            last = replicas[-1]
            await conn.execute(_ADVANCE, STATE_ID, last.digest, last.node_id, scrubbed, nbytes)

    async def _check_all(self, conn: Connection, todo: list[_Replica],
                         stats: PassStats) -> list[_Replica]:
        limit = asyncio.Semaphore(SCRUB_CONCURRENCY)
        db = asyncio.Lock()  # one connection: the checks share it for their marks

        async def one(replica: _Replica) -> _Replica | None:
            async with limit:
                try:
                    verdict = await self._check(replica, stats)
                except Exception:  # one bad replica never stops the scan
                    stats.errors += 1
                    self.log.exception("scrubbing a replica failed", extra={
                        "chunk": replica.digest.hex()[:16], "node": replica.node_id})
                    return None
            if verdict is None:
                return replica
            if verdict:
                async with db:
                    await self._record_bad(conn, replica, verdict, stats)
            return None

        results = await asyncio.gather(*(one(r) for r in todo))
        return [r for r in results if r is not None]

    async def _check(self, replica: _Replica, stats: PassStats) -> str | None:
        """None if good; "missing" or "corrupt"; "" when the node could not be read."""
        await self.throttle.take(replica.size)
        try:
            data = await self._clients[replica.node_id].get(chunk_key(replica.digest.hex()))
        except ObjectNotFound:
            return ReplicaState.MISSING
        except StorageError as exc:
            stats.add("replicas_unreadable")
            self.log.warning("scrub read failed", extra={
                "node": replica.node_id, "chunk": replica.digest.hex()[:16], "error": str(exc)})
            return ""
        stats.add("replicas_scrubbed")
        stats.add("bytes_scrubbed", len(data))
        SCRUBBED_BYTES.inc(len(data))
        return None if await sha256_of(data) == replica.digest else ReplicaState.CORRUPT

    async def _record_bad(self, conn: Connection, replica: _Replica, reason: str,
                          stats: PassStats) -> None:
        hex_digest = replica.digest.hex()
        async with conn.transaction():
            if await conn.fetchval(_MARK, replica.digest, replica.node_id, reason) is None:
                return  # rewritten or removed meanwhile
            await conn.execute(_ENQUEUE, replica.digest, replica.node_id, reason)
            await outbox.emit(conn, CHUNKS_TOPIC, hex_digest, CHUNK_REPLICA_BAD,
                              {"chunk": hex_digest, "node_id": replica.node_id,
                               "reason": reason, "found_by": "scrubber"})
        stats.add(f"found_{reason}")
        self.log.warning("bad replica found by the scrubber", extra={
            "chunk": hex_digest[:16], "node": replica.node_id, "reason": reason})
