"""The storage nodes one collection pass deletes from: every node not removed.

A chunk's objects are deleted on every such node, not only those its replica
rows name: a copy may exist unrecorded (a write that missed its quorum, a
repair cut short). The pass pings every node first; a node that does not
answer, or stops answering during the pass, is skipped for the rest of it (a
circuit breaker), so one dead node costs one timeout, not one per object. What
is left on it has no chunk row afterwards: the orphan-object phase of a later
pass removes it once the node is back.
"""

from __future__ import annotations

import asyncio
import dataclasses
from types import TracebackType
from typing import Self

from dfms.config import S3Config
from dfms.metadata.db import Connection
from dfms.metadata.nodes import load_nodes, not_removed
from dfms.runtime.logs import get_logger
from dfms.storage import NodeClient, NodeUnavailable, ObjectNotFound, StorageError
from dfms.storage.registry import NodeRegistry

log = get_logger("gc_worker.nodes")

# Deletes are idempotent and a failed one only leaves an orphan behind: the collector
# gives a node less time than the data path does before it moves on.
GC_REQUEST_TIMEOUT_S = 10.0
GC_MAX_RETRIES = 1


class NodeSet:
    """One client per non-removed node, for one pass. Use as an async context manager."""

    def __init__(self, registry: NodeRegistry) -> None:
        self._registry = registry
        self.clients = {node_id: registry.client(node_id) for node_id in registry.endpoints}
        self.unreachable: dict[str, str] = {}  # node id -> why, for the rest of the pass

    @classmethod
    async def load(cls, conn: Connection, s3: S3Config) -> NodeSet:
        cfg = dataclasses.replace(
            s3, request_timeout_s=min(s3.request_timeout_s, GC_REQUEST_TIMEOUT_S),
            max_retries=min(s3.max_retries, GC_MAX_RETRIES))
        registry = NodeRegistry(cfg, select=not_removed, name="gc-nodes")
        try:
            await registry.update(await load_nodes(conn))
            return cls(registry)
        except BaseException:
            await registry.close()
            raise

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        self.clients = {}
        await self._registry.close()

    async def check(self) -> None:
        """Ping every node; those that do not answer are skipped for this pass."""
        async def ping(client: NodeClient) -> None:
            try:
                await client.ping()
            except StorageError as exc:
                self._trip(client.node_id, str(exc))

        await asyncio.gather(*(ping(c) for c in self.clients.values()))

    def reachable(self) -> list[NodeClient]:
        return [c for n, c in self.clients.items() if n not in self.unreachable]

    def _trip(self, node_id: str, why: str) -> None:
        if node_id not in self.unreachable:
            self.unreachable[node_id] = why
            log.warning("storage node unreachable; skipped for the rest of the pass",
                        extra={"node": node_id, "error": why})

    async def delete(self, client: NodeClient, key: str) -> bool:
        """Delete ``key`` on one node; True when it is gone (or was never there)."""
        if client.node_id in self.unreachable:
            return False
        try:
            await client.delete(key)
        except ObjectNotFound:
            return True
        except NodeUnavailable as exc:
            self._trip(client.node_id, str(exc))
            return False
        except StorageError as exc:
            log.warning("delete refused", extra={"node": client.node_id, "key": key,
                                                 "error": str(exc)})
            return False
        return True

    async def delete_everywhere(self, key: str) -> int:
        """Delete ``key`` on every node; the number of nodes where it may remain."""
        results = await asyncio.gather(*(self.delete(c, key) for c in self.clients.values()))
        return results.count(False)
