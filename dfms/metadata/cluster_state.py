"""Storage-node registration and the ring that places chunks on them.

The rules a node must follow (id, endpoint, zone, weight) are in ``dfms.nodes``.
"""

from __future__ import annotations

from dfms.errors import DfmsError
from dfms.metadata.admin import lock_ring
from dfms.metadata.db import Connection
from dfms.nodes import NodeSpec
from dfms.ring import InvalidRing
from dfms.ring import store as ring_store
from dfms.ring.builder import RingBuilder

__all__ = ["NodeSpec", "RingRefused", "register_new_node", "register_nodes"]


class RingRefused(DfmsError):
    """The ring cannot take a node (e.g. its weight needs too many virtual nodes)."""


_UPSERT = """
INSERT INTO nodes (id, endpoint, bucket, zone, weight)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (id) DO UPDATE
SET endpoint = EXCLUDED.endpoint, bucket = EXCLUDED.bucket, updated_at = now()
"""


async def register_nodes(conn: Connection, nodes: list[NodeSpec], *,
                         bucket: str) -> int:
    """Upsert ``nodes`` and add any that the ring lacks; returns the ring epoch in force.

    An existing node keeps its zone and weight (an operator may have changed
    them); only its endpoint follows the running process.
    """
    async with conn.transaction():
        for node in nodes:
            await conn.execute(_UPSERT, node.node_id, node.endpoint, bucket, node.zone,
                               node.weight)
        current = await ring_store.load_latest(conn)
        known = {m.node_id for m in current.members} if current else set()
        missing = [n for n in nodes if n.node_id not in known]
        if not missing:
            assert current is not None or not nodes
            return current.epoch if current else 0
        builder = RingBuilder(current)
        for node in missing:
            row = await conn.fetchrow("SELECT zone, weight FROM nodes WHERE id = $1",
                                      node.node_id)
            assert row is not None  # the node was registered above
            builder.add_node(node.node_id, row["zone"], row["weight"])
        data = builder.build()
    # save() takes its own transaction and lock; the ring change is idempotent on
    # retry because a second run finds every node already in the ring.
    await ring_store.save(conn, data)
    return data.epoch


_INSERT_NEW = """
INSERT INTO nodes (id, endpoint, bucket, zone, weight) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (id) DO NOTHING
"""


async def register_new_node(conn: Connection, node: NodeSpec, *,
                            bucket: str) -> int | None:
    """Add ``node`` to the nodes and the ring if its id was never registered.

    Returns the ring epoch that added it, or None when the id is known, whatever
    became of that node since (drained, removed: ids are never reused, and once
    registered a node belongs to the admin API, so running this again changes
    nothing). Holds the ring writers' lock from the check to the save, so
    concurrent registrations each get their own epoch. A ring that cannot take
    the node raises ``RingRefused`` and leaves no trace.
    """
    async with conn.transaction():
        await lock_ring(conn)
        inserted = await conn.execute(_INSERT_NEW, node.node_id, node.endpoint, bucket,
                                      node.zone, node.weight)
        if inserted.split()[-1] != "1":
            return None
        builder = RingBuilder(await ring_store.load_latest(conn))
        try:
            builder.add_node(node.node_id, node.zone, node.weight)
            data = builder.build()
        except InvalidRing as exc:
            raise RingRefused(f"the ring cannot take node {node.node_id!r}: {exc}") from None
        await ring_store.save(conn, data)
    return data.epoch
