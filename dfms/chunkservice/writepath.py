"""Whether uploads can succeed: enough usable ring nodes for the write quorum.

A chunk is stored once W of its N replica writes succeed, and writes go only to
ring members that place chunks (not draining) and are not down. With fewer than
W of those, every upload fails while reads, which need one replica, still work.

One rule, in one place, for the chunk service's own readiness and for what the
gateway reports from the chunk service's ``Stat`` (``/ready``, the admin cluster
view), so that both say the same thing in the same words.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from dfms.healthmon.state import Health
from dfms.metadata.states import AdminState
from dfms.proto import chunk_pb2 as pb


@dataclass(frozen=True, slots=True)
class WritePath:
    usable_nodes: tuple[str, ...]  # placing members that are up
    down_nodes: tuple[str, ...]  # placing members that are down
    write_quorum: int

    @property
    def writable(self) -> bool:
        return len(self.usable_nodes) >= self.write_quorum

    @property
    def detail(self) -> str:
        return (f"{len(self.usable_nodes)} usable node(s), write quorum needs "
                f"{self.write_quorum}")

    def as_json(self) -> dict[str, object]:
        return {"writable": self.writable, "usable_nodes": len(self.usable_nodes),
                "write_quorum": self.write_quorum, "down_nodes": list(self.down_nodes),
                "detail": self.detail}


def write_path(placing: Iterable[str], is_up: Callable[[str], bool],
               write_quorum: int) -> WritePath:
    """``placing``: the ring members chunks are placed on (``Ring.active_node_ids``)."""
    nodes = sorted(placing)
    return WritePath(tuple(n for n in nodes if is_up(n)),
                     tuple(n for n in nodes if not is_up(n)), write_quorum)


def from_stat(stat: pb.StatResponse) -> WritePath:
    """The write path as the chunk service sees it, from its ``Stat`` answer.

    ``Stat`` lists every registered node with its admin state, not its ring state; the
    two move together (registering or adding a node puts it in the ring as an active
    member, drain and remove take it out of placements in the same transaction as
    they set its admin state: dfms/gateway/routes_admin.py), so the placing members
    are the nodes whose admin state is "active".
    """
    health = {n.node_id: n.health for n in stat.nodes if n.admin_state == AdminState.ACTIVE}
    return write_path(health, lambda node_id: health[node_id] != Health.DOWN,
                      stat.write_quorum_w)
