"""The ``nodes`` table as the node-client registry and its users read it: one query.

``load_nodes`` returns every node row (removed ones included, ordered by id) with
its states as the vocabulary's enums; each user filters on top (placement's
"usable", the health monitor's and the collector's "not removed", replication's
"up"/"lost"/"removed").
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from dfms.healthmon.state import Health
from dfms.metadata.db import Connection
from dfms.metadata.states import AdminState

_NODES = """
SELECT id, endpoint, zone, health, admin_state, data_dir,
       extract(epoch FROM now() - health_changed_at)::float8 AS in_state_s
FROM nodes
ORDER BY id
"""


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One row of ``nodes``; ``in_state_s`` is how long it has had its ``health``;
    ``data_dir`` is where the node keeps its data, if the health monitor's host sees it."""

    node_id: str
    endpoint: str
    zone: str
    health: Health
    admin_state: AdminState
    in_state_s: float = 0.0
    data_dir: str | None = None

    @property
    def removed(self) -> bool:
        return self.admin_state is AdminState.REMOVED


def not_removed(row: NodeRow) -> bool:
    """The nodes that hold data or may: every one an operator has not removed."""
    return not row.removed


async def load_nodes(conn: Connection | asyncpg.Pool) -> list[NodeRow]:
    """Every node row, ordered by id."""
    rows = await conn.fetch(_NODES)
    return [NodeRow(str(r["id"]), str(r["endpoint"]), str(r["zone"]), Health(r["health"]),
                    AdminState(r["admin_state"]), float(r["in_state_s"]), r["data_dir"])
            for r in rows]
