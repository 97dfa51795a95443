"""What one chunk needs: the goal placement against the recorded replicas.

Pure logic, no I/O, so every rule below is unit-tested on its own.

The goal is ``n`` replicas on the chunk's *targets*: ``ring.nodes_for(chunk, n)``
with every node counted as usable except those *lost* (down for longer than
``replication.repair_delay_s``). So:

* a node that is down but not yet lost stays a target: nothing is copied for
  it (a brief outage causes no repair storm), and the copies written to handoff
  nodes meanwhile are kept until it is back;
* once lost, its place in the targets goes to the next handoff node, which
  receives a copy;
* draining and removed nodes own no ring points, so they are never targets:
  their replicas are surplus and the node empties.

A replica counts when its row is ``ok`` and its node is not removed. Surplus
replicas are deleted only when every target holds one (``complete``): the
executor then confirms the targets it did not write itself before deleting.
Replicas on down nodes cannot be deleted and are left alone; replica rows on
removed nodes are dropped (their disks are gone or going).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dfms.metadata.states import ReplicaState
from dfms.ring import Ring


@dataclass(frozen=True, slots=True)
class NodeStates:
    """The cluster's nodes as the manager sees them at the start of a pass."""

    up: frozenset[str]  # answering (healthy or suspect) and not removed
    lost: frozenset[str]  # down for longer than the repair delay
    removed: frozenset[str]

    def is_up(self, node_id: str) -> bool:
        return node_id in self.up


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    targets: tuple[str, ...]
    held: frozenset[str]  # targets that already hold an ok replica
    copy_to: tuple[str, ...]  # targets to write now (up, without an ok replica)
    waiting: tuple[str, ...]  # targets without a replica that are down (not yet lost)
    surplus: tuple[str, ...]  # up non-targets holding a replica row: delete object + row
    drop_rows: tuple[str, ...] = field(default=())  # rows on removed nodes: delete the row

    @property
    def complete(self) -> bool:
        """Every target holds (or is about to receive) a replica."""
        return not self.waiting

    @property
    def actionable(self) -> bool:
        """Something can be done now: a copy, or (every target held) a trim."""
        return bool(self.copy_to) or (self.complete and bool(self.surplus or self.drop_rows))

    @property
    def converged(self) -> bool:
        """Nothing left to do: all targets hold a replica and no extra rows remain."""
        return not (self.copy_to or self.waiting or self.surplus or self.drop_rows)


def plan_chunk(chunk_hex: str, replicas: Mapping[str, str], ring: Ring, nodes: NodeStates,
               n: int) -> ChunkPlan:
    """The work ``chunk_hex`` needs, given its replica rows (node id -> state)."""
    targets = tuple(ring.nodes_for(chunk_hex, n, lambda node: node not in nodes.lost))
    ok = {node for node, state in replicas.items()
          if state == ReplicaState.OK and node not in nodes.removed}
    held = frozenset(t for t in targets if t in ok)
    copy_to = tuple(t for t in targets if t not in ok and nodes.is_up(t))
    waiting = tuple(t for t in targets if t not in ok and not nodes.is_up(t))
    target_set = set(targets)
    surplus = tuple(sorted(node for node in replicas
                           if node not in target_set and nodes.is_up(node)))
    drop_rows = tuple(sorted(node for node in replicas if node in nodes.removed))
    # A bad row on a target is rewritten by the copy; a bad row elsewhere is surplus.
    return ChunkPlan(targets, held, copy_to, waiting, surplus, drop_rows)
