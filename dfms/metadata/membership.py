"""Ring membership: the one writer of storage nodes and the ring they form.

Every change (registration at start-up, add, drain, remove, weight) runs the same
way: in one transaction holding the ring writers' advisory lock (``admin.lock_ring``)
the node row changes, the next ``RingData`` is built from the latest stored one and
saved by ``dfms.ring.save``, which checks that its epoch follows the latest and
announces it (``ring.changed``) in the outbox in the same transaction. So the node
rows, the ring and the event change together or not at all, and concurrent changes
each get their own epoch.

A ``RingConflict`` (an epoch saved in between by a writer that skipped the lock)
rolls all of it back; the change is tried once more, then the conflict propagates
(the HTTP edge answers 409 ``ring_conflict``). Refusals are the ``MembershipError``s
of ``dfms.metadata.errors``; the rules a node must follow are in ``dfms.nodes``.
Used by the admin API, ``dfms nodes register`` and ``dfms up``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from dfms.config import S3Config
from dfms.metadata import admin as adm
from dfms.metadata.admin import NodeRow
from dfms.metadata.db import Connection
from dfms.metadata.errors import (
    LastActiveNode,
    NodeExists,
    NodeHoldsOnlyCopy,
    NodeNotFound,
    NodeRemoved,
    NodeUnreachable,
    RingRefused,
)
from dfms.metadata.states import AdminState
from dfms.nodes import NodeSpec, check_weight
from dfms.ring import DRAINING, InvalidRing, RingBuilder, RingConflict, RingData, RingMember
from dfms.ring import store as ring_store
from dfms.runtime.logs import get_logger
from dfms.storage import NodeClient, StorageError

__all__ = ["Db", "NodeSpec", "Outcome", "add_node", "check_reachable", "drain_node",
           "get_node", "list_nodes", "member", "register_nodes", "remove_node",
           "ring_in_force", "set_weight"]

log = get_logger("metadata.membership")

T = TypeVar("T")
Db = Connection | asyncpg.Pool

# One retry: under the advisory lock a conflict needs a writer that skipped it, so a
# second one in a row is not a race to wait out but a bug to report.
ATTEMPTS = 2


@dataclass(frozen=True, slots=True)
class Outcome:
    """A node after a change, the ring in force then, and the epoch the change saved
    (``None`` when the ring did not change: an idempotent repeat, a node outside it)."""

    node: NodeRow
    ring: RingData | None
    epoch: int | None


@contextlib.asynccontextmanager
async def _connection(db: Db) -> AsyncIterator[Connection]:
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


async def _ring_change(db: Db,
                       change: Callable[[Connection, RingData | None], Awaitable[T]]) -> T:
    """Run ``change(conn, latest_ring)`` in a transaction holding the ring lock, once
    more on ``RingConflict``."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            async with _connection(db) as conn, conn.transaction():
                await adm.lock_ring(conn)
                return await change(conn, await ring_store.load_latest(conn))
        except RingConflict as exc:
            log.warning("ring conflict", extra={"attempt": attempt, "error": str(exc)})
            if attempt == ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # the loop returns or raises


async def _save(conn: Connection, builder: RingBuilder, node_id: str) -> RingData:
    try:
        data = builder.build()
    except InvalidRing as exc:
        raise RingRefused(node_id, str(exc)) from None
    await ring_store.save(conn, data)
    return data


async def _outcome(conn: Connection, node_id: str, ring: RingData | None,
                   epoch: int | None) -> Outcome:
    node = await adm.get_node(conn, node_id)
    assert node is not None  # its row was locked or written in this transaction
    return Outcome(node, ring, epoch)


def member(ring: RingData | None, node_id: str) -> RingMember | None:
    """The node's ring member, or ``None`` when it is not in the ring."""
    return next((m for m in ring.members if m.node_id == node_id), None) if ring else None


def _refuse_last_active(ring: RingData, node_id: str) -> None:
    if [m.node_id for m in ring.active_members] == [node_id]:
        raise LastActiveNode(node_id)


# --- add -------------------------------------------------------------------------------

def _ring_with(ring: RingData | None, spec: NodeSpec) -> RingBuilder:
    """A builder of the next ring: ``ring`` plus ``spec`` as an active member."""
    if member(ring, spec.node_id) is not None:
        raise NodeExists(spec.node_id)
    builder = RingBuilder(ring)
    try:
        builder.add_node(spec.node_id, spec.zone, spec.weight)
        builder.build()  # refused here (too many virtual nodes...), before any write
    except InvalidRing as exc:
        raise RingRefused(spec.node_id, str(exc)) from None
    return builder


async def check_reachable(spec: NodeSpec, s3: S3Config) -> None:
    """The node answers with the configured S3 credentials and has the chunk bucket."""
    try:
        async with NodeClient(spec.node_id, spec.endpoint, s3) as client:
            await client.ping()
    except StorageError as exc:
        raise NodeUnreachable(spec.node_id, spec.endpoint, str(exc)) from None


async def add_node(db: Db, spec: NodeSpec, s3: S3Config) -> Outcome:
    """Register a new node and make it an active ring member, in one new epoch.

    Raises ``NodeExists`` when the id was ever registered (ids are never reused),
    ``RingRefused`` when the ring cannot take the node, ``NodeUnreachable`` when its
    endpoint does not answer. The first two are checked before the endpoint is
    probed, and the probe runs outside any transaction: a slow or dead endpoint must
    not hold the ring lock.
    """
    if await adm.get_node(db, spec.node_id) is not None:
        raise NodeExists(spec.node_id)
    _ring_with(await ring_store.load_latest(db), spec)
    await check_reachable(spec, s3)

    async def change(conn: Connection, ring: RingData | None) -> Outcome:
        if not await adm.insert_node(conn, spec.node_id, spec.endpoint, s3.bucket,
                                     spec.zone, spec.weight, spec.data_dir):
            raise NodeExists(spec.node_id)  # a concurrent add of the same id won
        data = await _save(conn, _ring_with(ring, spec), spec.node_id)
        return await _outcome(conn, spec.node_id, data, data.epoch)

    return await _ring_change(db, change)


# --- drain, remove, weight ---------------------------------------------------------------

async def _locked_node(conn: Connection, node_id: str) -> NodeRow:
    node = await adm.get_node(conn, node_id, for_update=True)
    if node is None:
        raise NodeNotFound(node_id)
    return node


async def drain_node(db: Db, node_id: str) -> Outcome:
    """Mark the node draining, in its row and in the ring (the replication manager then
    moves its replicas away). Idempotent: draining a draining node changes nothing.

    Raises ``NodeNotFound``, ``NodeRemoved``, ``LastActiveNode``.
    """
    async def change(conn: Connection, ring: RingData | None) -> Outcome:
        node = await _locked_node(conn, node_id)
        if node.admin_state == AdminState.REMOVED:
            raise NodeRemoved(node_id, "drain")
        current, epoch = member(ring, node_id), None
        if ring is not None and current is not None and current.state != DRAINING:
            _refuse_last_active(ring, node_id)
            builder = RingBuilder(ring)
            builder.set_state(node_id, DRAINING)
            ring = await _save(conn, builder, node_id)
            epoch = ring.epoch
        if node.admin_state != AdminState.DRAINING:
            await adm.set_admin_state(conn, node_id, AdminState.DRAINING)
        return await _outcome(conn, node_id, ring, epoch)

    return await _ring_change(db, change)


async def remove_node(db: Db, node_id: str) -> Outcome:
    """Take the node out of the ring and mark it removed. Idempotent: a removed node
    outside the ring is left as it is.

    Raises ``NodeNotFound``, ``NodeHoldsOnlyCopy`` (while it holds the only ok replica
    of a live chunk), ``LastActiveNode``.
    """
    async def change(conn: Connection, ring: RingData | None) -> Outcome:
        node = await _locked_node(conn, node_id)
        current, epoch = member(ring, node_id), None
        if node.admin_state == AdminState.REMOVED and current is None:
            return Outcome(node, ring, None)
        only = await adm.only_copy_count(conn, node_id)
        if only:
            raise NodeHoldsOnlyCopy(node_id, only)
        if ring is not None and current is not None:
            _refuse_last_active(ring, node_id)
            builder = RingBuilder(ring)
            builder.remove_node(node_id)
            ring = await _save(conn, builder, node_id)
            epoch = ring.epoch
        await adm.set_admin_state(conn, node_id, AdminState.REMOVED)
        return await _outcome(conn, node_id, ring, epoch)

    return await _ring_change(db, change)


_SET_WEIGHT = "UPDATE nodes SET weight = $2, updated_at = now() WHERE id = $1"


async def set_weight(db: Db, node_id: str, weight: float) -> Outcome:
    """Give the node a new weight, in its row and in the ring (its share of the chunks
    follows). Idempotent: the weight it already has changes nothing.

    Raises ``InvalidNode`` (not a finite number > 0), ``NodeNotFound``,
    ``NodeRemoved``, ``RingRefused`` (the ring cannot take that weight).
    """
    weight = check_weight(weight)

    async def change(conn: Connection, ring: RingData | None) -> Outcome:
        node = await _locked_node(conn, node_id)
        if node.admin_state == AdminState.REMOVED:
            raise NodeRemoved(node_id, "change its weight")
        current, epoch = member(ring, node_id), None
        if ring is not None and current is not None and current.weight != weight:
            builder = RingBuilder(ring)
            try:
                builder.set_weight(node_id, weight)
            except InvalidRing as exc:
                raise RingRefused(node_id, str(exc)) from None
            ring = await _save(conn, builder, node_id)
            epoch = ring.epoch
        if node.weight != weight:
            await conn.execute(_SET_WEIGHT, node_id, weight)
        return await _outcome(conn, node_id, ring, epoch)

    return await _ring_change(db, change)


# --- dfms up ------------------------------------------------------------------------------

_UPSERT = """
INSERT INTO nodes (id, endpoint, bucket, zone, weight, data_dir)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (id) DO UPDATE
SET endpoint = EXCLUDED.endpoint, bucket = EXCLUDED.bucket, data_dir = EXCLUDED.data_dir,
    updated_at = now()
"""
_ZONE_WEIGHT = "SELECT zone, weight FROM nodes WHERE id = $1"


async def register_nodes(db: Db, specs: list[NodeSpec], *, bucket: str) -> int:
    """Upsert the nodes a local cluster runs and add any that the ring lacks; returns
    the ring epoch in force.

    An existing node keeps its zone and weight (an operator may have changed them);
    only its endpoint and data directory follow the running process. Running it again
    changes nothing.
    """
    async def change(conn: Connection, ring: RingData | None) -> int:
        for spec in specs:
            await conn.execute(_UPSERT, spec.node_id, spec.endpoint, bucket, spec.zone,
                               spec.weight, spec.data_dir)
        missing = [s for s in specs if member(ring, s.node_id) is None]
        if not missing:
            return ring.epoch if ring is not None else 0
        builder = RingBuilder(ring)
        for spec in missing:
            row = await conn.fetchrow(_ZONE_WEIGHT, spec.node_id)
            assert row is not None  # upserted above
            builder.add_node(spec.node_id, row["zone"], row["weight"])
        return (await _save(conn, builder, missing[0].node_id)).epoch

    return await _ring_change(db, change)


# --- reading -----------------------------------------------------------------------------

async def ring_in_force(db: Db) -> RingData | None:
    """The latest stored ring, or ``None`` before the first one."""
    return await ring_store.load_latest(db)


async def list_nodes(db: Db) -> tuple[list[NodeRow], RingData | None]:
    """Every node (removed ones too) and the ring in force, read on one connection."""
    async with _connection(db) as conn:
        return await adm.list_nodes(conn), await ring_store.load_latest(conn)


async def get_node(db: Db, node_id: str) -> tuple[NodeRow, RingData | None]:
    """One node and the ring in force; raises ``NodeNotFound``."""
    async with _connection(db) as conn:
        node = await adm.get_node(conn, node_id)
        if node is None:
            raise NodeNotFound(node_id)
        return node, await ring_store.load_latest(conn)
