"""Bringing one chunk to its goal placement: copy, record, then trim.

``ChunkRepairer.repair(digest)`` runs in one PostgreSQL transaction per round:

1. ``pg_try_advisory_xact_lock`` on the chunk: another manager instance working
   on it makes this one skip it (several instances can run);
2. the chunk row under ``FOR KEY SHARE``: the garbage collector claims chunks
   with ``FOR UPDATE SKIP LOCKED``, so it cannot start sweeping a chunk while
   it is being copied (uploads deduplicating onto it are not blocked);
3. plan (``dfms.replication.plan``), then copy: the bytes are read from a
   replica and verified against the SHA-256 before anything is written, and
   the new replica is recorded as verified;
4. only when every target holds a replica (those this round did not write are
   confirmed by a HEAD with the right size) are surplus replicas deleted:
   object first, then row, so a failed delete is simply retried later.

A source found missing or corrupt is marked so in the same transaction and
the chunk is planned again; after ``MAX_ROUNDS`` the chunk waits for the next
pass. A chunk no replica of which can be read and verified is reported as
unrecoverable (it stays queued: a node coming back may still have it).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib

import asyncpg
from prometheus_client import Counter

from dfms.healthmon.passive import FailureStreaks
from dfms.metadata.db import Connection
from dfms.metadata.states import ChunkState, ReplicaState
from dfms.replication.cluster import ClusterView, NodeClients, Throttle
from dfms.replication.plan import ChunkPlan, plan_chunk
from dfms.runtime.logs import get_logger
from dfms.runtime.service import PassStats
from dfms.storage import ObjectNotFound, StorageError, chunk_key

log = get_logger("replication_manager.repair")

COPIED_BYTES = Counter("dfms_replication_copied_bytes_total",
                       "Bytes written by replica repairs and rebalancing")

# The advisory-lock class of per-chunk locks (two-int form: it never collides with
# the one-bigint keys of the GC and ring locks). The object id is the chunk's first
# 4 bytes: two chunks sharing them only make one wait for the next pass.
CHUNK_LOCK_CLASS = 0x0DF5
MAX_ROUNDS = 3
# Hashing a few KiB on the event loop is cheaper than a thread hop.
_INLINE_HASH_BYTES = 64 * 1024
# What the passive health tracking calls our requests to the nodes (in its log lines).
REPLICA_READ = "replica read"
REPLICA_WRITE = "replica write"
REPLICA_CHECK = "replica check"
REPLICA_DELETE = "replica delete"

_TRY_LOCK = "SELECT pg_try_advisory_xact_lock($1, $2)"
_CHUNK = "SELECT size, state FROM chunks WHERE sha256 = $1 FOR KEY SHARE"
_REPLICAS = "SELECT node_id, state FROM chunk_replicas WHERE chunk_sha256 = $1"
_RECORD = f"""
INSERT INTO chunk_replicas (chunk_sha256, node_id, state, written_at, verified_at)
SELECT $1, node, '{ReplicaState.OK}', now(), now() FROM unnest($2::text[]) AS node
ON CONFLICT (chunk_sha256, node_id)
DO UPDATE SET state = '{ReplicaState.OK}', written_at = now(), verified_at = now()
"""
_VERIFIED = """
UPDATE chunk_replicas SET verified_at = now() WHERE chunk_sha256 = $1 AND node_id = $2
"""
_MARK = "UPDATE chunk_replicas SET state = $3 WHERE chunk_sha256 = $1 AND node_id = $2"
_DROP = "DELETE FROM chunk_replicas WHERE chunk_sha256 = $1 AND node_id = ANY($2::text[])"
_DEQUEUE = "DELETE FROM repair_queue WHERE chunk_sha256 = $1"


class Outcome(enum.Enum):
    CONVERGED = "converged"  # n replicas on the targets, nothing extra
    WAITING = "waiting"  # a target is down (not yet lost) or a step failed: later
    SKIPPED = "skipped"  # another instance holds the chunk
    GONE = "gone"  # deleted, or being swept by the garbage collector
    UNRECOVERABLE = "unrecoverable"  # no replica could be read and verified


class _Again(Exception):
    """A source turned out bad and was marked: plan the chunk again."""


def lock_id(digest: bytes) -> int:
    return int.from_bytes(digest[:4], "big", signed=True)


async def sha256_of(data: bytes) -> bytes:
    if len(data) <= _INLINE_HASH_BYTES:
        return hashlib.sha256(data).digest()
    return await asyncio.to_thread(lambda: hashlib.sha256(data).digest())


class ChunkRepairer:
    """Repairs chunks against one ``ClusterView``; counters go to ``stats``.

    Every node request's outcome goes to ``node_failures`` (the manager's
    ``PassiveHealth``, kept across passes): a failing node is logged once and then
    rate-limited, not once per chunk, and marked suspect after a streak. Without one
    (tests), failures are only counted and logged.
    """

    def __init__(self, pool: asyncpg.Pool, clients: NodeClients, view: ClusterView, *,
                 replicas_n: int, throttle: Throttle, stats: PassStats,
                 node_failures: FailureStreaks | None = None) -> None:
        if view.ring is None:
            raise ValueError("no ring is stored yet")
        self._pool = pool
        self._clients = clients
        self._view = view
        self._ring = view.ring
        self._n = replicas_n
        self._throttle = throttle
        self.stats = stats
        self._failures = node_failures or FailureStreaks("replication-manager", 0)

    def plan(self, digest: bytes, replicas: dict[str, str]) -> ChunkPlan:
        return plan_chunk(digest.hex(), replicas, self._ring, self._view.states, self._n)

    async def repair(self, digest: bytes) -> Outcome:
        for _ in range(MAX_ROUNDS):
            async with self._pool.acquire() as conn, conn.transaction():
                try:
                    return await self._round(conn, digest)
                except _Again:
                    pass  # the transaction commits: what was marked or recorded stands
        return Outcome.WAITING

    async def _round(self, conn: Connection, digest: bytes) -> Outcome:
        if not await conn.fetchval(_TRY_LOCK, CHUNK_LOCK_CLASS, lock_id(digest)):
            return Outcome.SKIPPED
        row = await conn.fetchrow(_CHUNK, digest)
        if row is None or row["state"] == ChunkState.SWEEPING:
            return Outcome.GONE
        replicas = {str(r["node_id"]): str(r["state"])
                    for r in await conn.fetch(_REPLICAS, digest)}
        plan = self.plan(digest, replicas)
        if plan.converged:
            await conn.execute(_DEQUEUE, digest)
            return Outcome.CONVERGED
        outcome = await self._apply(conn, digest, int(row["size"]), plan, replicas)
        if outcome is Outcome.CONVERGED:
            await conn.execute(_DEQUEUE, digest)
        return outcome

    async def _apply(self, conn: Connection, digest: bytes, size: int,
                     plan: ChunkPlan, replicas: dict[str, str]) -> Outcome:
        written: list[str] = []
        if plan.copy_to:
            data = await self._read_source(conn, digest, plan, replicas)
            if data is None:
                log.error("no replica of the chunk can be read and verified",
                          extra={"chunk": digest.hex(), "replicas": replicas})
                return Outcome.UNRECOVERABLE
            written = await self._copy(digest, data, plan.copy_to)
            if written:
                await conn.execute(_RECORD, digest, written)
        if not plan.complete or len(written) < len(plan.copy_to):
            return Outcome.WAITING
        if plan.surplus or plan.drop_rows:
            if not await self._confirm(conn, digest, size, plan, set(written)):
                return Outcome.WAITING
            if not await self._trim(conn, digest, plan):
                return Outcome.WAITING
        return Outcome.CONVERGED

    # -- copy ---------------------------------------------------------------------

    def _source_order(self, plan: ChunkPlan, replicas: dict[str, str]) -> list[str]:
        """Recorded ok replicas on up nodes (targets first), then every other up node:
        a copy may exist unrecorded (a write that missed its quorum, a lost row)."""
        states = self._view.states
        recorded = [node for node in (*plan.targets, *sorted(replicas))
                    if replicas.get(node) == ReplicaState.OK and states.is_up(node)]
        recorded = list(dict.fromkeys(recorded))
        others = [node for node in self._view.node_ids
                  if node not in replicas and states.is_up(node)]
        return recorded + others

    async def _read_source(self, conn: Connection, digest: bytes, plan: ChunkPlan,
                           replicas: dict[str, str]) -> bytes | None:
        key = chunk_key(digest.hex())
        marked = False
        for node in self._source_order(plan, replicas):
            if node not in self._clients:
                continue
            recorded = replicas.get(node) == ReplicaState.OK
            try:
                data = await self._clients[node].get(key)
            except ObjectNotFound:
                self._failures.succeeded(node, REPLICA_READ)  # it answered: the node works
                if recorded:
                    await self._mark(conn, digest, node, ReplicaState.MISSING)
                    marked = True
                continue
            except StorageError as exc:
                self._failures.failed(node, exc, REPLICA_READ)
                continue
            self._failures.succeeded(node, REPLICA_READ)
            if await sha256_of(data) != digest:
                if recorded:
                    await self._mark(conn, digest, node, ReplicaState.CORRUPT)
                    marked = True
                continue
            self.stats.add("source_reads")
            if recorded:
                await conn.execute(_VERIFIED, digest, node)
            elif node in plan.targets:  # a verified unrecorded copy where it belongs
                await conn.execute(_RECORD, digest, [node])
                self.stats.add("replicas_found")
                raise _Again  # plan again: that target needs no copy
            return data
        if marked:
            raise _Again
        return None

    async def _mark(self, conn: Connection, digest: bytes, node: str,
                    state: str) -> None:
        self.stats.add(f"replicas_found_{state}")
        log.warning("bad replica found while repairing",
                    extra={"chunk": digest.hex()[:16], "node": node, "reason": state})
        await conn.execute(_MARK, digest, node, state)

    async def _copy(self, digest: bytes, data: bytes, targets: tuple[str, ...]) -> list[str]:
        hex_digest = digest.hex()
        key = chunk_key(hex_digest)
        written: list[str] = []
        for node in targets:
            await self._throttle.take(len(data))
            try:
                await self._clients[node].put(key, data, hex_digest)
            except StorageError as exc:
                self.stats.add("copies_failed")
                # Not one warning per chunk: a dead node fails every copy to it.
                self._failures.failed(node, exc, REPLICA_WRITE)
                continue
            self._failures.succeeded(node, REPLICA_WRITE)
            written.append(node)
            self.stats.add("replicas_copied")
            self.stats.add("bytes_copied", len(data))
            COPIED_BYTES.inc(len(data))
        return written

    # -- trim -----------------------------------------------------------------------

    async def _confirm(self, conn: Connection, digest: bytes, size: int,
                       plan: ChunkPlan, written: set[str]) -> bool:
        """Every target holds the chunk: those not written now answer a HEAD with its size.

        A target that is unreachable defers the trim; one that lacks the object (or
        holds the wrong size) is marked and the chunk is planned again.
        """
        key = chunk_key(digest.hex())
        for node in plan.targets:
            if node in written:
                continue
            try:
                found = await self._clients[node].head(key)
            except ObjectNotFound:
                self._failures.succeeded(node, REPLICA_CHECK)
                await self._mark(conn, digest, node, ReplicaState.MISSING)
                raise _Again from None
            except StorageError as exc:
                self._failures.failed(node, exc, REPLICA_CHECK)
                return False
            self._failures.succeeded(node, REPLICA_CHECK)
            if found != size:
                await self._mark(conn, digest, node, ReplicaState.CORRUPT)
                raise _Again
        return True

    async def _trim(self, conn: Connection, digest: bytes, plan: ChunkPlan) -> bool:
        key = chunk_key(digest.hex())
        gone: list[str] = list(plan.drop_rows)
        for node in plan.surplus:
            try:
                await self._clients[node].delete(key)
            except ObjectNotFound:
                pass  # gone already: the node answered
            except StorageError as exc:
                self.stats.add("deletes_failed")
                self._failures.failed(node, exc, REPLICA_DELETE)
                continue
            self._failures.succeeded(node, REPLICA_DELETE)
            gone.append(node)
        if gone:
            await conn.execute(_DROP, digest, gone)
            self.stats.add("replicas_removed", len(gone))
        return len(gone) == len(plan.surplus) + len(plan.drop_rows)
