"""Queries behind the admin API: accounts with their usage, the cluster's numbers, nodes.

Every figure is a SQL aggregate (no per-chunk loop in Python). Functions take
the caller's connection; the ones that change the ring expect to run inside
the caller's transaction, which holds the ring's advisory lock (see
``lock_ring``) so the node rows and the ring change together or not at all.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from dfms.healthmon.state import Health
from dfms.metadata.db import Connection
from dfms.metadata.records import from_record
from dfms.metadata.states import AdminState, ChunkState, ReplicaState
from dfms.ring import store as ring_store

Executor = Connection | asyncpg.Pool

# --- users ------------------------------------------------------------------------------

# Usage of a set of users (the CTE ``page``, defined by the caller): every version of
# every file they own counts, trashed ones too. Live and trashed files are read
# separately so each side can use its partial index on owner_id.
_WITH_USAGE = """
WITH page AS ({page}),
owned AS (
    SELECT f.id, f.owner_id, true AS live FROM files f
    WHERE f.owner_id IN (SELECT id FROM page) AND f.deleted_at IS NULL
    UNION ALL
    SELECT f.id, f.owner_id, false FROM files f
    WHERE f.owner_id IN (SELECT id FROM page) AND f.deleted_at IS NOT NULL
),
counts AS (
    SELECT owner_id, count(*) FILTER (WHERE live) AS live,
           count(*) FILTER (WHERE NOT live) AS trashed
    FROM owned GROUP BY owner_id
),
used AS (
    SELECT o.owner_id, sum(m.size)::bigint AS bytes FROM owned o
    JOIN file_versions v ON v.file_id = o.id
    JOIN manifests m ON m.id = v.manifest_id
    GROUP BY o.owner_id
)
SELECT p.id, p.email, p.display_name, p.role, p.is_active, p.quota_bytes,
       p.keep_versions, p.keep_versions_days, p.created_at,
       p.updated_at, coalesce(u.bytes, 0) AS used_bytes, coalesce(c.live, 0) AS file_count,
       coalesce(c.trashed, 0) AS trashed_file_count
FROM page p LEFT JOIN counts c ON c.owner_id = p.id LEFT JOIN used u ON u.owner_id = p.id
ORDER BY p.created_at, p.id
"""
_PAGE_COLUMNS = ("id, email, display_name, role, is_active, quota_bytes, keep_versions, "
                 "keep_versions_days, created_at, updated_at")
_EMAIL_FILTER = "WHERE ($1::text IS NULL OR email ILIKE $1 ESCAPE '\\')"
_USAGE_COUNTS = ("used_bytes", "file_count", "trashed_file_count")


@dataclass(frozen=True, slots=True)
class UserUsage:
    id: uuid.UUID
    email: str
    display_name: str
    role: str
    is_active: bool
    quota_bytes: int | None  # as stored: None means "the configured default"
    keep_versions: int | None  # retention overrides; None means the configured default
    keep_versions_days: int | None
    created_at: datetime
    updated_at: datetime
    used_bytes: int
    file_count: int
    trashed_file_count: int

    @classmethod
    def of(cls, row: asyncpg.Record) -> UserUsage:
        return from_record(cls, row, **{name: int(row[name]) for name in _USAGE_COUNTS})


def like_pattern(text: str) -> str:
    """A LIKE pattern (``ESCAPE '\\'``) matching ``text`` anywhere, wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_users(db: Executor, *, email_contains: str | None, limit: int,
                     offset: int) -> tuple[list[UserUsage], int]:
    """A page of users (oldest first) and the total that match the filter.

    Usage is computed for the page's users only, so the cost follows the page size.
    """
    pattern = like_pattern(email_contains) if email_contains else None
    total = await db.fetchval(f"SELECT count(*) FROM users {_EMAIL_FILTER}", pattern)
    page = (f"SELECT {_PAGE_COLUMNS} FROM users {_EMAIL_FILTER} "
            "ORDER BY created_at, id LIMIT $2 OFFSET $3")
    rows = await db.fetch(_WITH_USAGE.format(page=page), pattern, limit, offset)
    return [UserUsage.of(r) for r in rows], int(total)


async def get_user(db: Executor, user_id: uuid.UUID) -> UserUsage | None:
    page = f"SELECT {_PAGE_COLUMNS} FROM users WHERE id = $1"
    row = await db.fetchrow(_WITH_USAGE.format(page=page), user_id)
    return UserUsage.of(row) if row is not None else None


async def lock_users(conn: Connection,
                     ids: list[uuid.UUID]) -> dict[uuid.UUID, asyncpg.Record]:
    """Row-lock these users (in id order, so two admins editing each other cannot
    deadlock) and return their current role and state."""
    rows = await conn.fetch(
        "SELECT id, role, is_active FROM users WHERE id = ANY($1::uuid[]) "
        "ORDER BY id FOR UPDATE", sorted(set(ids)))
    return {r["id"]: r for r in rows}


async def update_user(conn: Connection, user_id: uuid.UUID,
                      changes: dict[str, Any]) -> None:
    """Set the given columns (role, quota, active, retention overrides) of one user."""
    allowed = ("role", "quota_bytes", "is_active", "keep_versions", "keep_versions_days")
    cols = [c for c in allowed if c in changes]
    if not cols:
        return
    sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(cols, start=2))
    await conn.execute(f"UPDATE users SET {sets}, updated_at = now() WHERE id = $1",
                       user_id, *(changes[c] for c in cols))


# --- nodes ------------------------------------------------------------------------------

_NODE_COLUMNS = """
    n.id, n.endpoint, n.bucket, n.zone, n.weight, n.admin_state, n.health,
    n.health_changed_at, n.last_probe_at, n.last_probe_latency_ms, n.created_at, n.updated_at
"""

# Replicas and bytes held per node: one pass over the ok replicas, joined to chunk
# sizes. Bytes count every ok replica (a condemned chunk still takes disk space).
_PER_NODE = f"""
SELECT r.node_id, count(*) AS replicas, coalesce(sum(c.size), 0)::bigint AS bytes
FROM chunk_replicas r JOIN chunks c ON c.sha256 = r.chunk_sha256
WHERE r.state = '{ReplicaState.OK}' {{filter}}
GROUP BY r.node_id
"""


@dataclass(frozen=True, slots=True)
class NodeRow:
    id: str
    endpoint: str
    bucket: str
    zone: str
    weight: float
    admin_state: str
    health: str
    health_changed_at: datetime
    last_probe_at: datetime | None
    last_probe_latency_ms: float | None
    created_at: datetime
    updated_at: datetime
    replicas: int = 0
    bytes: int = 0

    @classmethod
    def of(cls, row: asyncpg.Record, replicas: int = 0, nbytes: int = 0) -> NodeRow:
        return from_record(cls, row, replicas=replicas, bytes=nbytes)


async def list_nodes(db: Executor) -> list[NodeRow]:
    rows = await db.fetch(f"SELECT {_NODE_COLUMNS} FROM nodes n ORDER BY n.id")
    usage = {r["node_id"]: r for r in await db.fetch(_PER_NODE.format(filter=""))}
    return [NodeRow.of(r, *_usage(usage.get(r["id"]))) for r in rows]


async def get_node(db: Executor, node_id: str, *, for_update: bool = False) -> NodeRow | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await db.fetchrow(f"SELECT {_NODE_COLUMNS} FROM nodes n WHERE n.id = $1{lock}",
                            node_id)
    if row is None:
        return None
    usage = await db.fetchrow(_PER_NODE.format(filter="AND r.node_id = $1"), node_id)
    return NodeRow.of(row, *_usage(usage))


def _usage(row: asyncpg.Record | None) -> tuple[int, int]:
    return (int(row["replicas"]), int(row["bytes"])) if row is not None else (0, 0)


async def lock_ring(conn: Connection) -> None:
    """Take the ring writers' advisory lock for the rest of the transaction.

    ``dfms.ring.store.save`` takes the same (re-entrant) lock; taking it first
    makes reading the nodes, checking them and saving the next ring one
    serialized step, so two admin actions cannot interleave.
    """
    await conn.execute("SELECT pg_advisory_xact_lock($1)", ring_store.ADVISORY_LOCK_KEY)


async def insert_node(conn: Connection, node_id: str, endpoint: str, bucket: str,
                      zone: str, weight: float, data_dir: str | None = None) -> bool:
    """Insert a node row; False when the id is taken (by any node, removed ones too)."""
    status = await conn.execute(
        "INSERT INTO nodes (id, endpoint, bucket, zone, weight, data_dir) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
        node_id, endpoint, bucket, zone, weight, data_dir)
    return status.split()[-1] == "1"


async def set_admin_state(conn: Connection, node_id: str, state: str) -> None:
    await conn.execute("UPDATE nodes SET admin_state = $2, updated_at = now() WHERE id = $1",
                       node_id, state)


_ONLY_COPY = f"""
SELECT count(*) FROM chunk_replicas r
JOIN chunks c ON c.sha256 = r.chunk_sha256
WHERE r.node_id = $1 AND r.state = '{ReplicaState.OK}' AND c.state = '{ChunkState.LIVE}'
  AND NOT EXISTS (
      SELECT 1 FROM chunk_replicas o JOIN nodes n ON n.id = o.node_id
      WHERE o.chunk_sha256 = r.chunk_sha256 AND o.node_id <> $1
        AND o.state = '{ReplicaState.OK}' AND n.admin_state <> '{AdminState.REMOVED}')
"""


async def only_copy_count(conn: Connection, node_id: str) -> int:
    """Live chunks whose only ok replica is on ``node_id``.

    A replica elsewhere counts only on a node that is not removed (its disk may
    be gone). Walks the node's replicas through the node index and probes the
    other replicas by primary key: proportional to what the node holds.
    """
    return int(await conn.fetchval(_ONLY_COPY, node_id))


# --- cluster ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ClusterNumbers:
    nodes: list[NodeRow]
    chunk_count: int
    stored_bytes: int
    condemned_chunks: int
    replicated_bytes: int
    logical_bytes: int
    under_replicated_chunks: int
    repair_queue_length: int
    ring_epoch: int
    # Fewer than n ok replicas on nodes that are up now (not down, not removed):
    # unlike under_replicated_chunks, a node outage shows here at once.
    chunks_at_risk: int = 0
    # No ok replica on any node that is not removed: the bytes are gone.
    chunks_unrecoverable: int = 0

    @property
    def dedup_ratio(self) -> float | None:
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else None


_CHUNK_TOTALS = f"""
SELECT count(*) FILTER (WHERE state = '{ChunkState.LIVE}') AS live,
       coalesce(sum(size) FILTER (WHERE state = '{ChunkState.LIVE}'), 0)::bigint AS live_bytes,
       count(*) FILTER (WHERE state <> '{ChunkState.LIVE}') AS condemned
FROM chunks
"""

# Live chunks by their ok replicas, counted per chunk in one hashed pass and joined
# to the chunks: on nodes that are not removed ($2) for under-replicated (fewer than
# $1) and unrecoverable (none), on nodes that are also not down now ($3) for at risk.
_REPLICA_RISK = f"""
SELECT count(*) FILTER (WHERE coalesce(k.ok, 0) < $1) AS under,
       count(*) FILTER (WHERE coalesce(k.up_ok, 0) < $1) AS at_risk,
       count(*) FILTER (WHERE coalesce(k.ok, 0) = 0) AS unrecoverable
FROM chunks c
LEFT JOIN (
    SELECT r.chunk_sha256, count(*) FILTER (WHERE r.node_id <> ALL($2::text[])) AS ok,
           count(*) FILTER (WHERE r.node_id <> ALL($3::text[])) AS up_ok
    FROM chunk_replicas r WHERE r.state = '{ReplicaState.OK}'
    GROUP BY r.chunk_sha256
) k ON k.chunk_sha256 = c.sha256
WHERE c.state = '{ChunkState.LIVE}'
"""


@dataclass(frozen=True, slots=True)
class ReplicaRisk:
    under_replicated: int
    at_risk: int
    unrecoverable: int


def gone_and_not_up(nodes: list[NodeRow]) -> tuple[list[str], list[str]]:
    """Ids of removed nodes, and of nodes whose replicas cannot be read now (removed or
    down; a suspect node still answers most reads, so it counts as up)."""
    removed = [n.id for n in nodes if n.admin_state == AdminState.REMOVED]
    not_up = removed + [n.id for n in nodes
                        if n.admin_state != AdminState.REMOVED and n.health == Health.DOWN]
    return removed, not_up


async def replica_risk(conn: Connection, replicas_n: int,
                       nodes: list[NodeRow]) -> ReplicaRisk:
    removed, not_up = gone_and_not_up(nodes)
    row = await conn.fetchrow(_REPLICA_RISK, replicas_n, removed, not_up)
    assert row is not None  # an aggregate query gives one row
    return ReplicaRisk(int(row["under"]), int(row["at_risk"]), int(row["unrecoverable"]))


# Enough memory for the per-chunk aggregate to stay one in-memory hash: with the
# default 4 MB the planner walks both primary keys instead, about twice as slow
# at 100k chunks. Only for the read-only snapshot transaction below.
_AGGREGATE_WORK_MEM = "64MB"

_LOGICAL_BYTES = """
SELECT coalesce(sum(m.size), 0)::bigint
FROM file_versions v JOIN manifests m ON m.id = v.manifest_id
"""


async def cluster_numbers(conn: Connection, replicas_n: int) -> ClusterNumbers:
    """Every figure of the cluster view, read from one snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute(f"SET LOCAL work_mem = '{_AGGREGATE_WORK_MEM}'")
        nodes = await list_nodes(conn)
        chunks = await conn.fetchrow(_CHUNK_TOTALS)
        risk = await replica_risk(conn, replicas_n, nodes)
        logical = await conn.fetchval(_LOGICAL_BYTES)
        queue = await conn.fetchval("SELECT count(*) FROM repair_queue")
        epoch = await conn.fetchval("SELECT coalesce(max(epoch), 0) FROM ring_state")
    assert chunks is not None  # an aggregate query gives one row
    return ClusterNumbers(
        nodes=nodes, chunk_count=int(chunks["live"]), stored_bytes=int(chunks["live_bytes"]),
        condemned_chunks=int(chunks["condemned"]),
        replicated_bytes=sum(n.bytes for n in nodes), logical_bytes=int(logical),
        under_replicated_chunks=risk.under_replicated, repair_queue_length=int(queue),
        ring_epoch=int(epoch), chunks_at_risk=risk.at_risk,
        chunks_unrecoverable=risk.unrecoverable)


async def scrub_state(db: Executor) -> asyncpg.Record | None:
    """The scrubber's progress (its ``scrub_state`` row), or ``None`` before its first pass."""
    return await db.fetchrow("SELECT * FROM scrub_state WHERE id = 'default'")


# --- gauges -----------------------------------------------------------------------------

_CHUNK_STATES = """
SELECT state, count(*) AS n, coalesce(sum(size), 0)::bigint AS bytes
FROM chunks GROUP BY state
"""
_QUEUE_AGE = "SELECT extract(epoch FROM now() - min(detected_at)) FROM repair_queue"


@dataclass(frozen=True, slots=True)
class GaugeNumbers:
    """What the cluster gauges add to the cluster view's numbers."""

    chunks_by_state: dict[str, tuple[int, int]]  # state -> (chunks, bytes)
    repair_queue_oldest_s: float  # 0 when the queue is empty
    scrub: asyncpg.Record | None


async def gauge_numbers(conn: Connection) -> GaugeNumbers:
    states = {str(r["state"]): (int(r["n"]), int(r["bytes"]))
              for r in await conn.fetch(_CHUNK_STATES)}
    oldest = await conn.fetchval(_QUEUE_AGE)
    return GaugeNumbers(states, float(oldest or 0.0), await scrub_state(conn))
