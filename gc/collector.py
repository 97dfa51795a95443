"""Chunk collection: orphan manifests, mark, sweep and orphan objects, in one pass.

The worker (``dfms.gc.worker``) runs these phases after the lifecycle pass, on
the connection that holds the collector's advisory lock, so one collector runs
at a time. Every phase works in batches of ``gc.batch_size`` with keyset
pagination: memory is constant per batch, never proportional to the number of
chunks, manifests or objects.

1. **Orphan manifests.** Manifests that no file version and no multipart part
   references, older than the grace period, are deleted (their entries
   cascade). Plain uploads commit a manifest together with its version; a
   purged file, a pruned version or a replaced part leaves its manifest here.

2. **Mark.** A live chunk with ``last_ref_at`` older than the grace period that
   no manifest entry and no upload session references becomes ``condemned``
   (``condemned_at = now()``). Its bytes stay: a write of the same content is a
   dedup hit that flips it back to live (``ChunkStore.put``).

3. **Sweep.** A chunk condemned for longer than the grace period and still
   referenced by nothing is claimed in a short transaction: locked with
   ``FOR UPDATE SKIP LOCKED``, then ``state = 'sweeping'`` if no entry references
   it (one that is referenced again goes back to live). Then its object is
   deleted on every non-removed node (``dfms.gc.nodes``; a missing object is
   fine, an unreachable node leaves an orphan object behind), then its row
   (replica rows and repair-queue entries cascade). A row already ``sweeping``
   when the phase starts was claimed by a pass that stopped half way: it is
   finished first. A chunk whose deletion fails stays ``sweeping`` for the next
   pass; it never stops the pass.

4. **Orphan objects.** Each reachable node's chunk keys (``hh/hh/<64 hex>``;
   nothing else, e.g. the health monitor's ``_probe/`` objects, is touched) are
   listed, streamed, and checked against PostgreSQL ``batch_size`` keys at a
   time. An object with no chunk row whose last-modified time is older than the
   grace period is deleted, under the same claim as a sweep: a ``sweeping`` row
   is inserted for it first (only if there is no row), so a writer storing the
   same bytes right now waits instead of having its fresh copy deleted.

Why this is safe
----------------
Every chunk write and every dedup hit sets ``last_ref_at = now()``, and an
upload commits its manifest within seconds of storing (or touching) its
chunks, so an in-flight upload's chunks are never old enough to be marked.
**The assumption:** an upload that takes longer than the grace period (24 h by
default, ``gc.grace_period_s``) between storing a chunk and committing its
manifest can lose that chunk. It then fails cleanly rather than committing a
file with missing bytes: the claim locks the chunk row ``FOR UPDATE`` before it
looks for references, and migration 0010 makes every new manifest entry take
``FOR KEY SHARE`` on its chunk and refuse one that is ``sweeping`` (the same
error as a foreign-key violation), so a claim and a new reference can never
both succeed.

A writer never resurrects bytes that are being deleted: it dedups only onto
``live`` or ``condemned`` rows (flipping them live first, so no claim can follow),
waits while a row is ``sweeping``, and its final upsert never turns a
``sweeping`` row live (it waits and writes again instead).

Dry run
-------
With ``dry_run`` nothing changes: the database phases run in a transaction that
is rolled back (orphan manifests are really deleted there, so the mark sees the
chunks they alone referenced), the mark and sweep only count, and the orphan
objects are only listed. The counters say what a real pass would do now.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg

from dfms.config import GcConfig
from dfms.gc.nodes import NodeSet
from dfms.metadata.db import Connection
from dfms.metadata.states import ChunkState
from dfms.runtime.logs import get_logger
from dfms.runtime.service import PassStats
from dfms.storage import NodeClient, ObjectNotFound, StorageError, chunk_key

log = get_logger("gc_worker.chunks")

# Chunks whose objects are deleted at the same time (each on every node).
DELETE_CONCURRENCY = 32
# Swept rows are deleted in groups of this many, as their objects' deletes finish.
ROW_FLUSH = 32
_KEY_RE = re.compile(r"^([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})$")
_INT32_MAX = 2**31 - 1
# The counters a pass reports (see the phases above); bytes are chunk sizes.
CHUNK_COUNTERS = ("manifests_deleted", "chunks_condemned", "bytes_condemned",
                  "chunks_rescued", "sweeps_resumed", "chunks_swept", "bytes_swept",
                  "objects_left_behind", "orphan_objects_deleted", "orphan_bytes_deleted",
                  "nodes_unreachable")

_CUTOFF = "SELECT now() - make_interval(secs => $1)"
# Batches name their rows with "= ANY (ARRAY(SELECT ...))" rather than a join: a join
# with a CTE of batch_size rows is planned as a hash join over a sequential scan of the
# whole table, once per batch; the array is always looked up in the primary key.

# -- orphan manifests ----------------------------------------------------------------------

_ORPHAN_MANIFEST = """
    m.created_at < $1
    AND NOT EXISTS (SELECT 1 FROM file_versions v WHERE v.manifest_id = m.id)
    AND NOT EXISTS (SELECT 1 FROM multipart_parts p WHERE p.manifest_id = m.id)
"""
_DELETE_ORPHAN_MANIFESTS = f"""
WITH doomed AS (
    SELECT m.id FROM manifests m
    WHERE m.id > $2 AND {_ORPHAN_MANIFEST}
    ORDER BY m.id LIMIT $3
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM manifests m WHERE m.id = ANY (ARRAY(SELECT id FROM doomed)) RETURNING m.id
)
SELECT (SELECT count(*) FROM gone) AS n, (SELECT id FROM doomed ORDER BY id DESC LIMIT 1) AS last
"""

# -- mark --------------------------------------------------------------------------------

# A reference is a manifest entry (a file version, a multipart part) or the chunk's
# row in an upload session (chunk-level uploads; the lifecycle pass deletes expired
# sessions first). Parenthesised: _RESCUE negates it.
_UNREFERENCED = ("(NOT EXISTS (SELECT 1 FROM manifest_entries e WHERE e.chunk_sha256 = c.sha256)"
                 " AND NOT EXISTS (SELECT 1 FROM upload_session_chunks s"
                 " WHERE s.chunk_sha256 = c.sha256))")
_MARK = f"""
WITH candidates AS (
    SELECT c.sha256 FROM chunks c
    WHERE c.sha256 > $2 AND c.state = '{ChunkState.LIVE}' AND c.last_ref_at < $1 AND {_UNREFERENCED}
    ORDER BY c.sha256 LIMIT $3
    FOR UPDATE SKIP LOCKED
), marked AS (
    UPDATE chunks c SET state = '{ChunkState.CONDEMNED}', condemned_at = now()
    WHERE c.sha256 = ANY (ARRAY(SELECT sha256 FROM candidates))
    RETURNING c.sha256, c.size
)
SELECT count(*) AS n, coalesce(sum(size), 0)::bigint AS bytes, max(sha256) AS last
FROM marked
"""
_COUNT_MARK = f"""
SELECT count(*) AS n, coalesce(sum(size), 0)::bigint AS bytes FROM chunks c
WHERE c.state = '{ChunkState.LIVE}' AND c.last_ref_at < $1 AND {_UNREFERENCED}
"""

# -- sweep -------------------------------------------------------------------------------

_LEFTOVERS = f"""
SELECT sha256, size FROM chunks WHERE state = '{ChunkState.SWEEPING}' AND sha256 > $1
ORDER BY sha256 LIMIT $2
"""
_LOCK_CONDEMNED = f"""
SELECT sha256 FROM chunks
WHERE state = '{ChunkState.CONDEMNED}' AND condemned_at < $1 AND sha256 > $2
ORDER BY sha256 LIMIT $3
FOR UPDATE SKIP LOCKED
"""
# Both run after the lock above, in its transaction: a new statement sees every
# reference committed before the lock was granted, and none can be added after it.
_RESCUE = f"""
WITH rescued AS (
    UPDATE chunks c SET state = '{ChunkState.LIVE}', condemned_at = NULL, last_ref_at = now()
    WHERE c.sha256 = ANY($1::bytea[]) AND c.state = '{ChunkState.CONDEMNED}' AND NOT {_UNREFERENCED}
    RETURNING 1
)
SELECT count(*) FROM rescued
"""
_CLAIM = f"""
UPDATE chunks c SET state = '{ChunkState.SWEEPING}'
WHERE c.sha256 = ANY($1::bytea[]) AND c.state = '{ChunkState.CONDEMNED}' AND {_UNREFERENCED}
RETURNING c.sha256, c.size
"""
_DELETE_SWEPT = f"""
WITH gone AS (
    DELETE FROM chunks WHERE sha256 = ANY($1::bytea[]) AND state = '{ChunkState.SWEEPING}'
    RETURNING size
)
SELECT count(*) AS n, coalesce(sum(size), 0)::bigint AS bytes FROM gone
"""
_COUNT_SWEEP = f"""
SELECT count(*) AS n, coalesce(sum(size), 0)::bigint AS bytes FROM chunks c
WHERE (c.state = '{ChunkState.SWEEPING}'
       OR (c.state = '{ChunkState.CONDEMNED}' AND c.condemned_at < $1 AND {_UNREFERENCED})
       OR ($2 AND c.state = '{ChunkState.LIVE}' AND c.last_ref_at < $1 AND {_UNREFERENCED}))
"""

# -- orphan objects ----------------------------------------------------------------------

_EXISTING = "SELECT sha256 FROM chunks WHERE sha256 = ANY($1::bytea[])"
_CLAIM_ORPHANS = f"""
INSERT INTO chunks (sha256, size, state, condemned_at)
SELECT d, s, '{ChunkState.SWEEPING}', now() FROM unnest($1::bytea[], $2::integer[]) AS t(d, s)
ON CONFLICT (sha256) DO NOTHING
RETURNING sha256
"""
_RELEASE_ORPHANS = ("DELETE FROM chunks "
                    f"WHERE sha256 = ANY($1::bytea[]) AND state = '{ChunkState.SWEEPING}'")


def digest_of_key(key: str) -> bytes | None:
    """The chunk SHA-256 a key ``hh/hh/<hex>`` names; None for any other key."""
    match = _KEY_RE.match(key)
    if match is None:
        return None
    hex_digest = match.group(3)
    if hex_digest[0:4] != match.group(1) + match.group(2):
        return None
    return bytes.fromhex(hex_digest)


async def _bounded(items: Sequence[bytes], run: Callable[[bytes], Awaitable[bool]],
                   finished: Callable[[bytes], Awaitable[None]] | None = None) -> list[bytes]:
    """Run ``run`` on every item, DELETE_CONCURRENCY at a time (a sliding window, so a
    slow request holds up no others); the items it finished, each also passed to
    ``finished`` as soon as it is."""
    window = asyncio.Semaphore(DELETE_CONCURRENCY)
    done: list[bytes] = []

    async def one(item: bytes) -> None:
        async with window:
            ok = await run(item)
        if ok:
            done.append(item)
            if finished is not None:
                await finished(item)

    await asyncio.gather(*(one(item) for item in items))
    return done


class ChunkCollector:
    """The chunk phases of one pass, on the connection that holds the GC lock."""

    def __init__(self, conn: Connection, cfg: GcConfig, nodes: NodeSet,
                 stats: PassStats, *, dry_run: bool = False) -> None:
        self.conn = conn
        self.cfg = cfg
        self.nodes = nodes
        self.stats = stats
        self.dry_run = dry_run
        self.batch = cfg.batch_size

    async def _cutoff(self) -> datetime:
        """now() minus the grace period, on PostgreSQL's clock."""
        cutoff: datetime = await self.conn.fetchval(_CUTOFF, float(self.cfg.grace_period_s))
        return cutoff

    def _failed(self, what: str, **extra: object) -> None:
        self.stats.errors += 1
        log.exception(what, extra=extra)

    # -- 1. orphan manifests ----------------------------------------------------------------

    async def delete_orphan_manifests(self) -> None:
        cutoff = await self._cutoff()
        last = "00000000-0000-0000-0000-000000000000"
        while True:
            try:
                async with self.conn.transaction():
                    row = await self.conn.fetchrow(_DELETE_ORPHAN_MANIFESTS, cutoff, last,
                                                   self.batch)
            except asyncpg.PostgresError:
                self._failed("deleting orphan manifests failed", after=str(last))
                return  # the next pass tries again
            assert row is not None
            self.stats.add("manifests_deleted", row["n"])
            if row["last"] is None:
                return
            last = row["last"]

    # -- 2. mark ---------------------------------------------------------------------------

    async def mark(self) -> None:
        cutoff = await self._cutoff()
        if self.dry_run:
            row = await self.conn.fetchrow(_COUNT_MARK, cutoff)
            assert row is not None
            self._count_condemned(row["n"], row["bytes"])
            return
        last = b""
        while True:
            try:
                async with self.conn.transaction():
                    row = await self.conn.fetchrow(_MARK, cutoff, last, self.batch)
            except asyncpg.PostgresError:
                self._failed("marking chunks failed", after=last.hex())
                return
            assert row is not None
            self._count_condemned(row["n"], row["bytes"])
            if row["n"] < self.batch:
                return
            last = bytes(row["last"])

    def _count_condemned(self, n: int, size: int) -> None:
        self.stats.add("chunks_condemned", n)
        self.stats.add("bytes_condemned", size)

    # -- 3. sweep --------------------------------------------------------------------------

    async def sweep(self) -> None:
        cutoff = await self._cutoff()
        if self.dry_run:
            row = await self.conn.fetchrow(_COUNT_SWEEP, cutoff, self.cfg.grace_period_s <= 0)
            assert row is not None
            self._count_swept(row["n"], row["bytes"])
            return
        await self._finish_leftovers()
        last = b""
        while True:
            try:
                locked, claimed, rescued = await self._claim(cutoff, last)
            except asyncpg.PostgresError:
                self._failed("claiming condemned chunks failed", after=last.hex())
                return
            if not locked:
                return
            self.stats.add("chunks_rescued", rescued)
            await self._sweep_claimed(claimed)
            if len(locked) < self.batch:
                return
            last = locked[-1]

    async def _finish_leftovers(self) -> None:
        """Rows an interrupted pass left 'sweeping' (we hold the lock: nobody else does)."""
        last = b""
        while True:
            try:
                rows = await self.conn.fetch(_LEFTOVERS, last, self.batch)
            except asyncpg.PostgresError:
                self._failed("finding interrupted sweeps failed")
                return
            if not rows:
                return
            self.stats.add("sweeps_resumed", len(rows))
            await self._sweep_claimed([(bytes(r["sha256"]), r["size"]) for r in rows])
            if len(rows) < self.batch:
                return
            last = bytes(rows[-1]["sha256"])

    async def _claim(self, cutoff: datetime, after: bytes
                     ) -> tuple[list[bytes], list[tuple[bytes, int]], int]:
        """Lock a batch of condemned chunks past the grace; claim the unreferenced ones."""
        async with self.conn.transaction():
            locked = [bytes(r["sha256"]) for r in
                      await self.conn.fetch(_LOCK_CONDEMNED, cutoff, after, self.batch)]
            if not locked:
                return [], [], 0
            rescued = await self.conn.fetchval(_RESCUE, locked)
            claimed = [(bytes(r["sha256"]), r["size"])
                       for r in await self.conn.fetch(_CLAIM, locked)]
        return locked, claimed, rescued

    async def _sweep_claimed(self, claimed: list[tuple[bytes, int]]) -> None:
        """Delete the claimed chunks' objects on every node, then their rows (a few at a
        time, as their deletes finish: a writer waiting on one does not wait for all)."""
        pending: list[bytes] = []
        flushing = asyncio.Lock()

        async def flush() -> None:
            async with flushing:
                rows = pending[:]
                del pending[:]
                if rows:
                    await self._delete_swept_rows(rows)

        async def finished(digest: bytes) -> None:
            pending.append(digest)
            if len(pending) >= ROW_FLUSH:
                await flush()

        await _bounded([digest for digest, _ in claimed], self._delete_chunk_objects,
                       finished)
        await flush()

    async def _delete_swept_rows(self, digests: list[bytes]) -> None:
        try:
            row = await self.conn.fetchrow(_DELETE_SWEPT, digests)
        except asyncpg.PostgresError:
            self._failed("deleting swept chunk rows failed", chunks=len(digests))
            return  # they stay 'sweeping': the next pass finishes them
        assert row is not None
        self._count_swept(row["n"], row["bytes"])

    async def _delete_chunk_objects(self, digest: bytes) -> bool:
        try:
            left = await self.nodes.delete_everywhere(chunk_key(digest.hex()))
        except Exception:  # one chunk's failure never stops the pass
            self._failed("deleting a chunk's objects failed", chunk=digest.hex())
            return False
        self.stats.add("objects_left_behind", left)
        return True

    def _count_swept(self, n: int, size: int) -> None:
        self.stats.add("chunks_swept", n)
        self.stats.add("bytes_swept", size)

    # -- 4. orphan objects -----------------------------------------------------------------

    async def delete_orphan_objects(self) -> None:
        # Object times are the nodes' clocks; the grace period dwarfs any sane skew.
        cutoff = datetime.now(UTC) - timedelta(seconds=self.cfg.grace_period_s)
        for node_id, why in self.nodes.unreachable.items():
            log.warning("orphan objects not collected on an unreachable node",
                        extra={"node": node_id, "error": why})

        # One node after the other: a claim is per chunk, so while one node's batch holds
        # it, another node's copy of the same orphan would look known and be skipped.
        for client in self.nodes.reachable():
            try:
                await self._orphans_on(client, cutoff)
            except StorageError as exc:
                self.stats.errors += 1
                log.warning("listing a node failed; its orphans wait for the next pass",
                            extra={"node": client.node_id, "error": str(exc)})

    async def _orphans_on(self, client: NodeClient, cutoff: datetime) -> None:
        batch: dict[bytes, int] = {}
        async for key, size, modified in client.list_with_times():
            digest = digest_of_key(key)
            if digest is None or modified is None or modified >= cutoff:
                continue  # not a chunk object, or too young to judge
            batch[digest] = min(size, _INT32_MAX)
            if len(batch) >= self.batch:
                await self._orphan_batch(client, batch, cutoff)
                batch = {}
        if batch:
            await self._orphan_batch(client, batch, cutoff)

    async def _orphan_batch(self, client: NodeClient, batch: dict[bytes, int],
                            cutoff: datetime) -> None:
        digests = list(batch)
        try:
            if self.dry_run:
                known = {bytes(r["sha256"]) for r in await self.conn.fetch(_EXISTING, digests)}
                orphans = [d for d in digests if d not in known]
            else:
                orphans = [bytes(r["sha256"]) for r in await self.conn.fetch(
                    _CLAIM_ORPHANS, digests, [batch[d] for d in digests])]
        except asyncpg.PostgresError:
            self._failed("checking orphan objects failed", node=client.node_id)
            return
        if not orphans:
            return
        if self.dry_run:
            deleted = orphans
        else:
            async def delete(digest: bytes) -> bool:
                try:
                    return await self._delete_orphan(client, digest, cutoff)
                except Exception:  # one object's failure never stops the pass
                    self._failed("deleting an orphan object failed", chunk=digest.hex())
                    return False
            deleted = await _bounded(orphans, delete)
            try:  # the claims go either way: a failed delete is retried next pass
                await self.conn.execute(_RELEASE_ORPHANS, orphans)
            except asyncpg.PostgresError:  # left 'sweeping': the next pass finishes them
                self._failed("releasing orphan claims failed", node=client.node_id)
        self.stats.add("orphan_objects_deleted", len(deleted))
        self.stats.add("orphan_bytes_deleted", sum(batch[d] for d in deleted))

    async def _delete_orphan(self, client: NodeClient, digest: bytes,
                             cutoff: datetime) -> bool:
        """Delete a claimed orphan unless it was rewritten since it was listed.

        A writer that stored these bytes just before the claim has not recorded them
        yet, and may record them after the claim is released: its object is young, so
        it is checked again now that the claim is held (a writer storing after this
        point finds the claim at record time and stores again once it is released).
        """
        key = chunk_key(digest.hex())
        try:
            _, modified = await client.stat(key)
        except ObjectNotFound:
            return True
        except StorageError:
            return False
        if modified is None or modified >= cutoff:
            self.stats.add("orphan_objects_rewritten")
            return False
        return await self.nodes.delete(client, key)
