"""Storing a node's health change: the one code path for every writer of ``nodes.health``.

The health monitor (``dfms.healthmon.service``) and the passive marking of processes
that talk to the nodes (``dfms.healthmon.passive``) both lock the node row with
``lock_node`` and then call ``record_change`` in the same transaction, so a change is
written, and its ``node.health_changed`` event emitted, exactly once however many
writers see the node at the same moment.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from dfms.events import outbox
from dfms.events.topics import NODE_HEALTH_CHANGED, NODES_TOPIC
from dfms.healthmon.state import Health
from dfms.metadata.db import Connection

EmitFn = Callable[[Connection, str, str, str, dict[str, Any]], Awaitable[object]]

# The event hook: ``record_change`` calls it inside the transaction that changes the
# node row, as ``await EMIT(conn, topic, key, type, payload)``, so the event exists iff
# the change commits. None would store state changes without announcing them.
EMIT: EmitFn | None = outbox.emit

_LOCK_NODE = "SELECT health, admin_state FROM nodes WHERE id = $1 FOR UPDATE"
_CHANGE = "UPDATE nodes SET health = $2, health_changed_at = now() WHERE id = $1"


async def lock_node(conn: Connection, node_id: str) -> asyncpg.Record | None:
    """The node's ``health`` and ``admin_state``, locked until the caller's transaction
    ends (None if there is no such node)."""
    row: asyncpg.Record | None = await conn.fetchrow(_LOCK_NODE, node_id)
    return row


async def record_change(conn: Connection, node_id: str, old: Health, new: Health,
                        reason: str, latency_ms: float | None) -> None:
    """Store a health change and announce it, in the caller's transaction (which holds
    the row lock of ``lock_node``)."""
    await conn.execute(_CHANGE, node_id, new.value)
    if EMIT is not None:  # the single event call site
        await EMIT(conn, NODES_TOPIC, node_id, NODE_HEALTH_CHANGED,
                   {"node_id": node_id, "old": old.value, "new": new.value,
                    "reason": reason, "latency_ms": latency_ms})
