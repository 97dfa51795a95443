"""The cluster as one replication pass sees it: nodes, their states, the ring.

Read from PostgreSQL at the start of every pass (and every scrub batch), so a
node marked down by the health monitor or a ring change by an operator is
acted on at the next pass without a restart. Clients to the nodes are kept
between passes and replaced when a node's endpoint moves.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass

import asyncpg

from dfms.config import S3Config
from dfms.healthmon.state import Health
from dfms.metadata.db import Connection
from dfms.metadata.nodes import load_nodes
from dfms.replication.plan import NodeStates
from dfms.ring import Ring
from dfms.ring import store as ring_store
from dfms.storage.registry import NodeRegistry

# Repairs read from and write to one node at a time per chunk: a dead node should
# cost one short timeout, and another source or the next pass does the rest.
REPAIR_REQUEST_TIMEOUT_S = 30.0
REPAIR_MAX_RETRIES = 1


@dataclass(frozen=True, slots=True)
class ClusterView:
    states: NodeStates
    endpoints: dict[str, str]  # every node that is not removed
    ring: Ring | None

    @property
    def node_ids(self) -> list[str]:
        return sorted(self.endpoints)


async def load_view(conn: Connection | asyncpg.Pool, repair_delay_s: float
                    ) -> ClusterView:
    up, lost, removed = set(), set(), set()
    endpoints: dict[str, str] = {}
    for r in await load_nodes(conn):
        if r.removed:
            removed.add(r.node_id)
            continue
        endpoints[r.node_id] = r.endpoint
        if r.health is not Health.DOWN:
            up.add(r.node_id)
        elif r.in_state_s >= repair_delay_s:
            lost.add(r.node_id)
    data = await ring_store.load_latest(conn)
    states = NodeStates(frozenset(up), frozenset(lost), frozenset(removed))
    return ClusterView(states, endpoints, Ring(data) if data is not None else None)


class NodeClients(NodeRegistry):
    """One ``NodeClient`` per node not removed, kept across passes (``sync`` takes a
    view's ``endpoints``), with the repairs' shorter timeouts and fewer retries."""

    def __init__(self, s3: S3Config) -> None:
        super().__init__(dataclasses.replace(
            s3, request_timeout_s=min(s3.request_timeout_s, REPAIR_REQUEST_TIMEOUT_S),
            max_retries=min(s3.max_retries, REPAIR_MAX_RETRIES)), name="replication-nodes")


class Throttle:
    """Paces byte transfers to ``bytes_per_s`` across every task sharing it.

    Each ``take(n)`` reserves the next ``n / rate`` seconds of the schedule and
    sleeps until its slot starts, so the long-run rate never exceeds the limit
    and idle time is not saved up into a burst. A rate of 0 means no limit.
    """

    def __init__(self, bytes_per_s: int) -> None:
        self.bytes_per_s = bytes_per_s
        self._next = 0.0

    async def take(self, nbytes: int) -> None:
        if self.bytes_per_s <= 0 or nbytes <= 0:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._next)
        self._next = start + nbytes / self.bytes_per_s
        if start > now:
            await asyncio.sleep(start - now)
