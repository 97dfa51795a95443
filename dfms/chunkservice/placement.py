"""Where chunks go: the ring, the nodes' states and one client per node.

All of it is re-read from PostgreSQL every ``node_refresh_interval_s`` so a
ring change or a node marked down by the health monitor reaches every
chunk-service instance without a restart. The nodes and their clients are a
``dfms.storage.registry.NodeRegistry``; "usable" is placement's own filter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg

from dfms.chunkservice.errors import NoRing
from dfms.config import S3Config
from dfms.healthmon.state import Health
from dfms.metadata.nodes import NodeRow, load_nodes
from dfms.metadata.states import AdminState
from dfms.ring import Ring
from dfms.ring.store import RingWatcher
from dfms.runtime.logs import get_logger
from dfms.runtime.tasks import cancel_and_wait
from dfms.storage import NodeClient
from dfms.storage.registry import NodeRegistry

log = get_logger("chunk_service.placement")


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: str
    endpoint: str
    zone: str
    health: str
    admin_state: str

    @classmethod
    def of(cls, row: NodeRow) -> NodeInfo:
        return cls(row.node_id, row.endpoint, row.zone, row.health.value,
                   row.admin_state.value)

    @property
    def usable(self) -> bool:
        return self.health != Health.DOWN and self.admin_state != AdminState.REMOVED


class Placement:
    def __init__(self, pool: asyncpg.Pool, s3: S3Config, refresh_interval_s: float) -> None:
        self._pool = pool
        self._s3 = s3
        self._interval_s = refresh_interval_s
        self._watcher = RingWatcher(pool, poll_interval_s=refresh_interval_s)
        # Clients for every node, removed ones too: a recorded holder may still be read.
        self._registry = NodeRegistry(s3, lambda: load_nodes(pool), name="placement-nodes")
        self.nodes: dict[str, NodeInfo] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is not None:
            return
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="placement-refresh")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self._registry.stop()

    @property
    def _clients(self) -> dict[str, NodeClient]:
        """The node clients opened so far."""
        return self._registry.open_clients

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.refresh()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("refresh failed; keeping the last view", extra={"error": str(exc)})

    async def refresh(self) -> None:
        await self._watcher.refresh()
        await self._registry.refresh()
        self.nodes = {n: NodeInfo.of(row) for n, row in self._registry.nodes.items()}

    @property
    def ring(self) -> Ring:
        ring = self._watcher.ring
        if ring is None:
            raise NoRing("no ring is stored yet; register nodes first (`dfms up` does)")
        return ring

    def is_up(self, node_id: str) -> bool:
        info = self.nodes.get(node_id)
        return info is not None and info.usable

    def client(self, node_id: str) -> NodeClient:
        return self._registry.client(node_id)

    def write_targets(self, sha256_hex: str, n: int) -> list[str]:
        """n up nodes: primaries, with handoff nodes standing in for down ones."""
        return self.ring.nodes_for(sha256_hex, n, self.is_up)

    def read_order(self, sha256_hex: str, holders: Iterable[str]) -> list[str]:
        """Nodes to read from: recorded holders in ring order, up nodes first,
        then the rest of the ring as a last resort (a copy may exist unrecorded)."""
        ring = self.ring
        walk = ring.preference_list(sha256_hex, len(ring.active_node_ids))
        walk += [n for n in ring.handoff_nodes(sha256_hex, len(walk)) if n not in walk]
        rank = {node_id: i for i, node_id in enumerate(walk)}
        held = sorted((h for h in set(holders) if h in self.nodes),
                      key=lambda h: (not self.is_up(h), rank.get(h, len(rank))))
        rest = [n for n in walk if n not in held and self.is_up(n)]
        return held + rest
