"""One ``NodeClient`` per storage node, kept in step with the ``nodes`` table.

A ``NodeRegistry`` holds the node rows it last loaded (``nodes``, every row) and the
endpoints of the rows its ``select`` keeps. A client is opened on first use of a
node (``client``) and kept until the node leaves the selection or its endpoint
moves, when it is closed; ``close``/``stop`` closes them all. ``refresh`` reloads the
rows from the row source (``dfms.metadata.nodes.load_nodes`` on a pool, usually);
``start`` does that once and then every ``refresh_interval_s`` in a background task.

Opening clients lazily means a node whose endpoint the client library refuses fails
only the calls to that node, not a whole refresh.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping

import asyncpg

from dfms.config import S3Config
from dfms.metadata.nodes import NodeRow
from dfms.runtime.logs import get_logger
from dfms.runtime.tasks import cancel_and_wait
from dfms.storage.client import NodeClient

log = get_logger("storage.registry")

RowSource = Callable[[], Awaitable[Iterable[NodeRow]]]
ClientFactory = Callable[[str, str, S3Config], NodeClient]
REFRESH_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _every(row: NodeRow) -> bool:
    return True


class NodeRegistry:
    """One client per selected node; see the module docstring."""

    def __init__(self, s3: S3Config, source: RowSource | None = None, *,
                 select: Callable[[NodeRow], bool] = _every,
                 refresh_interval_s: float = 0.0,
                 client_factory: ClientFactory = NodeClient,
                 name: str = "node-registry") -> None:
        self.s3 = s3
        self._source = source
        self._select = select
        self._interval_s = refresh_interval_s
        self._factory = client_factory
        self._name = name
        self.nodes: dict[str, NodeRow] = {}
        self._endpoints: dict[str, str] = {}
        self._clients: dict[str, NodeClient] = {}
        self._task: asyncio.Task[None] | None = None

    # -- keeping in step ----------------------------------------------------------

    async def refresh(self) -> None:
        """Reload the rows from the row source and sync the clients to them."""
        if self._source is None:
            raise RuntimeError(f"{self._name} has no row source; call update() or sync()")
        await self.update(await self._source())

    async def update(self, rows: Iterable[NodeRow]) -> None:
        """Take ``rows`` as the whole ``nodes`` table; keep clients for the selected."""
        nodes = {row.node_id: row for row in rows}
        await self.sync({n: row.endpoint for n, row in nodes.items() if self._select(row)})
        self.nodes = nodes

    async def sync(self, endpoints: Mapping[str, str]) -> None:
        """Make ``endpoints`` (node id -> endpoint) the nodes clients are kept for:
        close the clients of nodes that left or whose endpoint moved."""
        wanted = dict(endpoints)
        for node_id, client in list(self._clients.items()):
            if wanted.get(node_id) != client.endpoint:
                del self._clients[node_id]
                await client.close()
        self._endpoints = wanted

    # -- using ----------------------------------------------------------------------

    @property
    def endpoints(self) -> dict[str, str]:
        """Node id -> endpoint of every node clients are kept for."""
        return dict(self._endpoints)

    @property
    def open_clients(self) -> dict[str, NodeClient]:
        """The clients opened so far (for tests and debugging)."""
        return dict(self._clients)

    def client(self, node_id: str) -> NodeClient:
        """The node's client, opened on first use; ``KeyError`` for an unknown node."""
        client = self._clients.get(node_id)
        if client is None:
            endpoint = self._endpoints[node_id]
            client = self._clients[node_id] = self._factory(node_id, endpoint, self.s3)
        return client

    def __getitem__(self, node_id: str) -> NodeClient:
        return self.client(node_id)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._endpoints

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Load the rows, then refresh every ``refresh_interval_s`` (when > 0)."""
        if self._task is not None:
            return
        await self.refresh()
        if self._interval_s > 0:
            self._task = asyncio.create_task(self._loop(), name=self._name)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.refresh()
            except REFRESH_ERRORS as exc:
                log.warning("refresh failed; keeping the last view",
                            extra={"registry": self._name, "error": str(exc)})

    async def stop(self) -> None:
        """Stop refreshing and close every client."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self.close()

    async def close(self) -> None:
        """Close every client; the registry stays usable (clients reopen on use)."""
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()
