"""Storage-node registration and the ring that places chunks on them."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from dfms.ring import store as ring_store
from dfms.ring.builder import RingBuilder


@dataclass(frozen=True, slots=True)
class NodeSpec:
    node_id: str
    endpoint: str
    zone: str
    weight: float = 1.0


_UPSERT = """
INSERT INTO nodes (id, endpoint, bucket, zone, weight)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (id) DO UPDATE
SET endpoint = EXCLUDED.endpoint, bucket = EXCLUDED.bucket, updated_at = now()
"""


async def register_nodes(conn: asyncpg.Connection, nodes: list[NodeSpec], *,
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
            builder.add_node(node.node_id, row["zone"], row["weight"])
        data = builder.build()
    # save() takes its own transaction and lock; the ring change is idempotent on
    # retry because a second run finds every node already in the ring.
    await ring_store.save(conn, data)
    return data.epoch
