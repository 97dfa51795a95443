"""Chunk writes with dedup and quorum replication; verified reads with failover.

A chunk is identified by the SHA-256 of its bytes. A write is a dedup hit
when the chunk's row is live or condemned in PostgreSQL: the hit makes it live
and refreshes ``last_ref_at``, so a collector's grace period starts over (a
condemned chunk still has its bytes; flipping it back first means no sweeper
can claim it afterwards). Otherwise the bytes go to n up nodes of its
preference list in parallel; the write counts at w acknowledgements, the others
get ``straggler_timeout_s`` to finish. What was written is recorded; a chunk
left with fewer than n replicas goes on the repair queue.

A row in state ``sweeping`` means the garbage collector is deleting the chunk's
objects right now (see ``dfms.gc``): the write waits until the row is gone and
then stores the bytes as new. Recording never turns a sweeping row live; if the
collector claimed the chunk between our check and our record, the bytes just
written may be deleted, so the write waits and goes round again. Waiting is
bounded (``SWEEP_WAIT_MAX_S``); past it the write fails with the retryable
``ChunkBeingSwept``.

Every replica request's outcome goes to ``node_failures`` (``dfms.healthmon.passive``):
in memory, it counts each node's consecutive failures, logs them rate-limited, and
marks a healthy node suspect after ``healthmon.passive_suspect_after`` of them, in the
background, without ever delaying or failing the request.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

import asyncpg
from opentelemetry import trace
from prometheus_client import Counter

from dfms.chunkservice.errors import ChunkBeingSwept, ChunkUnavailable, QuorumNotReached
from dfms.chunkservice.placement import Placement
from dfms.events import outbox
from dfms.events.topics import CHUNK_REPLICA_BAD, CHUNK_UNDER_REPLICATED, CHUNKS_TOPIC
from dfms.healthmon.passive import PassiveHealth
from dfms.metadata.states import ChunkState, ReplicaState
from dfms.runtime.logs import get_logger
from dfms.runtime.telemetry import sampled_span
from dfms.storage import NodeUnavailable, ObjectNotFound, StorageError, chunk_key

log = get_logger("chunk_service.store")
_TRACER = trace.get_tracer("dfms.chunkservice")

CHUNK_WRITES = Counter("dfms_chunk_writes_total", "Chunk writes by outcome", ["outcome"])
CHUNK_WRITE_BYTES = Counter("dfms_chunk_write_bytes_total", "Bytes of chunk writes by outcome",
                            ["outcome"])
REPLICA_FAULTS = Counter("dfms_replica_faults_total", "Replicas found bad on read", ["reason"])
READ_FAILOVERS = Counter("dfms_chunk_read_failovers_total", "Reads that moved to another node")
SWEEP_WAITS = Counter("dfms_chunk_sweep_waits_total",
                      "Chunk writes that found the chunk being swept by GC and waited")

# Hashing a few KiB on the event loop is cheaper than a thread hop.
_INLINE_HASH_BYTES = 64 * 1024
# Another replica is a better retry than the same node again: a replica write
# retries once (the quorum covers a dead node), a read moves on at once and
# only comes back with retries when every replica failed.
WRITE_RETRIES = 1
# A write of a chunk the collector is sweeping polls until the row is gone.
SWEEP_WAIT_POLL_S = 0.05
SWEEP_WAIT_MAX_S = 60.0
# What the passive health tracking calls our requests to the nodes (in its log lines).
REPLICA_WRITE = "replica write"
REPLICA_READ = "replica read"

# The dedup check in one round trip: a live or condemned chunk still has its bytes
# and is touched (made live, its grace period restarted). The row's state is read
# from the statement's snapshot, before the touch: live or condemned is a hit,
# sweeping means wait, none means new.
_TOUCH = f"""
WITH touched AS (
    UPDATE chunks SET state = '{ChunkState.LIVE}', condemned_at = NULL, last_ref_at = now()
    WHERE sha256 = $1 AND state IN ('{ChunkState.LIVE}', '{ChunkState.CONDEMNED}')
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM touched) AS hit, (SELECT state FROM chunks WHERE sha256 = $1)
"""
# The chunk and its replicas recorded in one statement (one round trip, atomic). Never
# turns a sweeping row live: then no replica is recorded, the count is 0 and the
# write waits.
_RECORD = f"""
WITH chunk AS (
    INSERT INTO chunks (sha256, size) VALUES ($1, $2)
    ON CONFLICT (sha256) DO UPDATE
    SET state = '{ChunkState.LIVE}', condemned_at = NULL, last_ref_at = now()
    WHERE chunks.state <> '{ChunkState.SWEEPING}'
    RETURNING sha256
), replicas AS (
    INSERT INTO chunk_replicas (chunk_sha256, node_id)
    SELECT chunk.sha256, node FROM chunk, unnest($3::text[]) AS node
    ON CONFLICT (chunk_sha256, node_id) DO UPDATE
    SET state = '{ReplicaState.OK}', written_at = now()
)
SELECT count(*) FROM chunk
"""
_ENQUEUE_REPAIR = """
INSERT INTO repair_queue (chunk_sha256, node_id, reason) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING
"""
_HOLDERS = ("SELECT node_id FROM chunk_replicas "
            f"WHERE chunk_sha256 = $1 AND state = '{ReplicaState.OK}'")
_MARK_REPLICA = """
UPDATE chunk_replicas SET state = $3 WHERE chunk_sha256 = $1 AND node_id = $2
"""
_LIVE_OF = ("SELECT sha256 FROM chunks "
            f"WHERE sha256 = ANY($1::bytea[]) AND state = '{ChunkState.LIVE}'")


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    new: bool
    replicas: int  # acknowledged writes; 0 for a dedup hit


async def sha256_of(data: bytes) -> bytes:
    if len(data) <= _INLINE_HASH_BYTES:
        return hashlib.sha256(data).digest()
    return await asyncio.to_thread(lambda: hashlib.sha256(data).digest())


class _SweepWait:
    """Bounded polling while the garbage collector sweeps a chunk we want to write."""

    def __init__(self, digest: bytes) -> None:
        self._digest = digest
        self._deadline: float | None = None

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        if self._deadline is None:
            SWEEP_WAITS.inc()
            self._deadline = loop.time() + SWEEP_WAIT_MAX_S
        elif loop.time() >= self._deadline:
            CHUNK_WRITES.labels("sweep_timeout").inc()
            raise ChunkBeingSwept(f"chunk {self._digest.hex()[:16]} is still being deleted "
                                  f"by the garbage collector after {SWEEP_WAIT_MAX_S:.0f} s; "
                                  "retry the write")
        await asyncio.sleep(SWEEP_WAIT_POLL_S)


def _read_done(data: bytes, node: str, failures: list[str]) -> bytes:
    """Note on the read's span which replica answered and how many failed before it."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({"dfms.chunk.bytes": len(data), "dfms.chunk.read_from": node,
                             "dfms.chunk.failovers": len(failures)})
    return data


class ChunkStore:
    def __init__(self, pool: asyncpg.Pool, placement: Placement, *, replicas_n: int,
                 write_quorum_w: int, straggler_timeout_s: float,
                 suspect_after: int = 0, source: str = "chunk-service") -> None:
        self._pool = pool
        self._placement = placement
        self.n = replicas_n
        self.w = write_quorum_w
        self._straggler_s = straggler_timeout_s
        # Counts failed replica requests per node (in memory), logs them rate-limited and
        # marks a healthy node suspect after ``suspect_after`` in a row (0 = never).
        # ``source``: the process these requests come from, as node-health records name it.
        self.node_failures = PassiveHealth(pool, source, suspect_after)

    # -- write -------------------------------------------------------------------

    async def put(self, digest: bytes, data: bytes) -> StoreOutcome:
        with sampled_span(_TRACER, "chunk write") as span:
            outcome = await self._put(digest, data)
            if span.is_recording():
                span.set_attributes({
                    "dfms.chunk.sha256": digest.hex(), "dfms.chunk.bytes": len(data),
                    "dfms.chunk.dedup_hit": not outcome.new,
                    "dfms.chunk.replicas_written": outcome.replicas})
            return outcome

    async def _put(self, digest: bytes, data: bytes) -> StoreOutcome:
        sweep = _SweepWait(digest)
        while True:
            hit, state = await self._dedup_check(digest)
            if hit:
                CHUNK_WRITES.labels("dedup").inc()
                CHUNK_WRITE_BYTES.labels("dedup").inc(len(data))
                return StoreOutcome(new=False, replicas=0)
            if state == ChunkState.SWEEPING:
                await sweep.wait()  # its bytes are being deleted: store them once it is gone
                continue
            acks = await self._store_new(digest, data)
            if await self._record(digest, len(data), acks):
                CHUNK_WRITES.labels("new").inc()
                CHUNK_WRITE_BYTES.labels("new").inc(len(data))
                return StoreOutcome(new=True, replicas=len(acks))
            # Claimed by a sweeper since the check: what we wrote may be deleted too.
            await sweep.wait()

    async def _dedup_check(self, digest: bytes) -> tuple[bool, str | None]:
        """(a dedup hit, the row's state before the check; None: no row)."""
        row = await self._pool.fetchrow(_TOUCH, digest)
        assert row is not None  # a SELECT without FROM gives one row
        return bool(row["hit"]), row["state"]

    async def _store_new(self, digest: bytes, data: bytes) -> list[str]:
        """Write the replicas; the nodes that acknowledged (at least w)."""
        hex_digest = digest.hex()
        targets = self._placement.write_targets(hex_digest, self.n)
        acks, errors = await self._write_replicas(targets, chunk_key(hex_digest), data,
                                                  hex_digest)
        if len(acks) < self.w:
            CHUNK_WRITES.labels("quorum_failed").inc()
            if len(targets) < self.w:
                errors.append(f"only {len(targets)} usable node(s) for this chunk")
            # Partial copies stay as unrecorded objects; GC removes orphans.
            raise QuorumNotReached.for_chunk(hex_digest, len(acks), self.w, errors)
        return acks

    async def _write_replicas(self, targets: list[str], key: str, data: bytes,
                              hex_digest: str) -> tuple[list[str], list[str]]:
        tasks = {asyncio.create_task(self._placement.client(node).put(
            key, data, hex_digest, retries=WRITE_RETRIES)): node for node in targets}
        acks: list[str] = []
        errors: list[str] = []
        pending = set(tasks)
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        try:
            while pending:
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                done, pending = await asyncio.wait(pending, timeout=timeout,
                                                   return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    break  # stragglers ran out of time
                for task in done:
                    self._collect(task, tasks[task], acks, errors)
                if deadline is None and len(acks) >= self.w:
                    deadline = loop.time() + self._straggler_s
        finally:
            for task in pending:
                task.cancel()
                errors.append(f"{tasks[task]}: still writing when the quorum was met")
            await asyncio.gather(*pending, return_exceptions=True)
        return acks, errors

    def _collect(self, task: asyncio.Task[None], node: str, acks: list[str],
                 errors: list[str]) -> None:
        exc = task.exception()
        if exc is None:
            self.node_failures.succeeded(node, REPLICA_WRITE)
            acks.append(node)
        elif isinstance(exc, StorageError):
            # A straggler cancelled at the quorum is not counted: slowness is the
            # monitor's call (its probes have a latency limit).
            self.node_failures.failed(node, exc, REPLICA_WRITE)
            errors.append(str(exc))
        else:
            log.error("unexpected error writing a replica", exc_info=exc,
                      extra={"node": node})
            errors.append(f"{node}: {type(exc).__name__}")

    async def _record(self, digest: bytes, size: int, nodes: list[str]) -> bool:
        """Record the chunk live with its replicas; False if a sweeper holds its row."""
        if len(nodes) >= self.n:  # the common case: one statement, no transaction
            return bool(await self._pool.fetchval(_RECORD, digest, size, nodes))
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(_RECORD, digest, size, nodes):
                return False
            await conn.execute(_ENQUEUE_REPAIR, digest, None, "under_replicated")
            await outbox.emit(conn, CHUNKS_TOPIC, digest.hex(), CHUNK_UNDER_REPLICATED, {
                "chunk": digest.hex(), "replicas": len(nodes), "wanted": self.n,
                "nodes": nodes})
        return True

    # -- read ---------------------------------------------------------------------

    async def get(self, digest: bytes) -> bytes:
        """The chunk's bytes, verified against its SHA-256, from the first good replica."""
        with sampled_span(_TRACER, "chunk read") as span:
            if span.is_recording():
                span.set_attribute("dfms.chunk.sha256", digest.hex())
            return await self._get(digest)

    async def _get(self, digest: bytes) -> bytes:
        hex_digest = digest.hex()
        holders = {r["node_id"] for r in await self._pool.fetch(_HOLDERS, digest)}
        failures: list[str] = []
        unreachable: list[str] = []
        for node in self._placement.read_order(hex_digest, holders):
            data = await self._read_replica(digest, node, node in holders, 0, failures,
                                            unreachable)
            if data is not None:
                return _read_done(data, node, failures)
        for node in unreachable:  # every replica failed: now retry the unreachable ones
            data = await self._read_replica(digest, node, node in holders, None, failures, [])
            if data is not None:
                return _read_done(data, node, failures)
        raise ChunkUnavailable(f"chunk {hex_digest[:16]}: no replica could be read and "
                               f"verified ({'; '.join(failures) or 'no replica recorded'})")

    async def _read_replica(self, digest: bytes, node: str, recorded: bool,
                            retries: int | None, failures: list[str],
                            unreachable: list[str]) -> bytes | None:
        if failures:
            READ_FAILOVERS.inc()
        try:
            data = await self._placement.client(node).get(chunk_key(digest.hex()),
                                                          retries=retries)
        except ObjectNotFound:
            self.node_failures.succeeded(node, REPLICA_READ)  # it answered: the node works
            failures.append(f"{node}: missing")
            if recorded:
                await self._mark_bad(digest, node, ReplicaState.MISSING)
            return None
        except NodeUnavailable as exc:
            self.node_failures.failed(node, exc, REPLICA_READ)
            failures.append(str(exc))
            unreachable.append(node)
            return None
        except StorageError as exc:
            self.node_failures.failed(node, exc, REPLICA_READ)
            failures.append(str(exc))
            return None
        # A corrupt replica is the object's fault, not the node's: the node answered.
        self.node_failures.succeeded(node, REPLICA_READ)
        if await sha256_of(data) == digest:
            return data
        failures.append(f"{node}: corrupt")
        await self._mark_bad(digest, node, ReplicaState.CORRUPT)
        return None

    async def _mark_bad(self, digest: bytes, node: str, reason: str) -> None:
        REPLICA_FAULTS.labels(reason).inc()
        log.warning("bad replica", extra={"chunk": digest.hex()[:16], "node": node,
                                          "reason": reason})
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_MARK_REPLICA, digest, node, reason)
            await conn.execute(_ENQUEUE_REPAIR, digest, node, reason)
            await outbox.emit(conn, CHUNKS_TOPIC, digest.hex(), CHUNK_REPLICA_BAD, {
                "chunk": digest.hex(), "node_id": node, "reason": reason,
                "found_by": "read"})

    # -- queries ------------------------------------------------------------------------

    async def live(self, digests: list[bytes]) -> list[bool]:
        rows = await self._pool.fetch(_LIVE_OF, digests)
        present = {bytes(r["sha256"]) for r in rows}
        return [d in present for d in digests]
