"""Lookup: where a chunk's replicas go, derived from ``RingData``.

Each active member owns ``round(vnodes_per_weight * weight)`` (at least one)
points on a 64-bit circle, placed by xxh3_64 of ``"{node_id}#{i}"``. A chunk's
point is xxh3_64 of its id; its nodes are found by walking clockwise from
there. The hashes are stable across processes and machines, which Python's
``hash()`` is not.

Draining members own no points at all, so taking a node out of service moves
exactly the keys it owned, the same as removing it.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from itertools import chain

import xxhash

from dfms.ring.model import (
    DEFAULT_VNODES_PER_WEIGHT,
    RingData,
    RingMember,
    validate,
    vnode_count,
)

__all__ = ["DEFAULT_VNODES_PER_WEIGHT", "Ring", "key_position", "vnode_position"]

_CHUNK_ID = re.compile(r"[0-9a-f]{64}")


def vnode_position(node_id: str, index: int) -> int:
    return xxhash.xxh3_64_intdigest(f"{node_id}#{index}".encode())


def key_position(chunk_id: str) -> int:
    # Placement is by exact string, so an upper-case id would silently land
    # elsewhere: refuse anything that is not a lowercase hex SHA-256.
    if _CHUNK_ID.fullmatch(chunk_id) is None:
        raise ValueError(f"chunk_id must be 64 lowercase hex characters, got {chunk_id!r}")
    return xxhash.xxh3_64_intdigest(chunk_id.encode("ascii"))


class Ring:
    """Immutable lookup structure for one ``RingData``; safe to share.

    Every method that takes ``n`` returns all active nodes when ``n`` exceeds
    their number: whether that meets a quorum is the caller's decision.
    """

    def __init__(self, data: RingData) -> None:
        validate(data)
        self._data = data
        active = data.active_members
        self._zone_of = {m.node_id: m.zone for m in active}
        self._zone_count = len(set(self._zone_of.values()))
        points = sorted(
            (vnode_position(m.node_id, i), m.node_id)
            for m in active
            for i in range(vnode_count(m, data.vnodes_per_weight))
        )
        self._positions = [position for position, _ in points]
        self._owners = [node_id for _, node_id in points]

    @property
    def data(self) -> RingData:
        return self._data

    @property
    def epoch(self) -> int:
        return self._data.epoch

    @property
    def members(self) -> tuple[RingMember, ...]:
        """All members, draining ones included."""
        return self._data.members

    @property
    def node_ids(self) -> tuple[str, ...]:
        """Ids of all members, draining ones included, sorted."""
        return tuple(sorted(m.node_id for m in self._data.members))

    @property
    def active_node_ids(self) -> tuple[str, ...]:
        """Ids of the members that receive placements, sorted."""
        return tuple(sorted(self._zone_of))

    def zone_of(self, node_id: str) -> str:
        """Zone of an active member (``KeyError`` for others)."""
        return self._zone_of[node_id]

    @property
    def total_vnodes(self) -> int:
        return len(self._positions)

    def preference_list(self, chunk_id: str, n: int) -> list[str]:
        """The ``n`` primary nodes for a chunk, first replica first.

        Walking clockwise, nodes in zones not yet used are taken first; when
        there are fewer than ``n`` zones the list is topped up with the other
        nodes met, in walk order. So the list spans ``min(n, zones)`` zones.
        """
        _check_n(n)
        return self._pick(self._walk(chunk_id), n)

    def handoff_nodes(self, chunk_id: str, n: int) -> list[str]:
        """The active nodes outside ``preference_list(chunk_id, n)``, in walk order.

        The clockwise walk that chose the primaries, continued (nodes it passed
        over for zone diversity come first, where it met them). A writer that
        finds a primary down takes the first handoff nodes that are up; see
        ``nodes_for``, which also keeps zones diverse.
        """
        _check_n(n)
        return list(self._split(chunk_id, n)[1])

    def nodes_for(self, chunk_id: str, n: int, is_up: Callable[[str], bool]) -> list[str]:
        """``n`` nodes that are up: the primaries that are up, then handoffs.

        Up primaries come first, in preference-list order. Substitutes for the
        down ones are the up handoffs, chosen by the same zone rule as
        primaries: a handoff in a zone the chosen nodes lack goes first, then
        handoff order decides. Fewer than ``n`` nodes come back when fewer are
        up. The walk stops as soon as the answer is known.
        """
        _check_n(n)
        primaries, handoffs = self._split(chunk_id, n)
        chosen = [x for x in primaries if is_up(x)]
        used_zones = {self._zone_of[x] for x in chosen}
        spare = (x for x in handoffs if is_up(x))
        return chosen + self._pick(spare, n - len(chosen), used_zones)

    def _split(self, chunk_id: str, n: int) -> tuple[list[str], Iterator[str]]:
        """The preference list, and the handoffs as a lazy continuation of its walk."""
        walk = self._walk(chunk_id)
        met: list[str] = []

        def recorded() -> Iterator[str]:
            for node_id in walk:
                met.append(node_id)
                yield node_id

        primaries = self._pick(recorded(), n)
        taken = set(primaries)
        handoffs = (x for x in chain(met, walk) if x not in taken)
        return primaries, handoffs

    def _walk(self, chunk_id: str) -> Iterator[str]:
        """Distinct active nodes in clockwise order from the chunk's point."""
        owners = self._owners
        total = len(owners)
        start = bisect_left(self._positions, key_position(chunk_id))
        wanted = len(self._zone_of)
        seen: set[str] = set()
        for i in range(start, start + total):
            node_id = owners[i % total]
            if node_id not in seen:
                seen.add(node_id)
                yield node_id
                if len(seen) == wanted:
                    return

    def _pick(
        self, candidates: Iterable[str], n: int, used_zones: set[str] | None = None
    ) -> list[str]:
        """First ``n`` candidates, new zones first, then topped up in order.

        ``used_zones`` are zones already taken by nodes chosen elsewhere.
        """
        chosen: list[str] = []
        if n == 0:
            return chosen
        used_zones = set() if used_zones is None else set(used_zones)
        deferred: list[str] = []
        rest = iter(candidates)
        if len(used_zones) < self._zone_count:
            for node_id in rest:
                zone = self._zone_of[node_id]
                if zone in used_zones:
                    deferred.append(node_id)
                    continue
                chosen.append(node_id)
                used_zones.add(zone)
                if len(chosen) == n:
                    return chosen
                if len(used_zones) == self._zone_count:
                    break  # no new zone is left to find: the rest go in order
        for node_id in chain(deferred, rest):
            chosen.append(node_id)
            if len(chosen) == n:
                break
        return chosen

    def __repr__(self) -> str:
        return (
            f"Ring(epoch={self.epoch}, members={len(self.members)}, "
            f"active={len(self._zone_of)}, vnodes={len(self._positions)})"
        )


def _check_n(n: int) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
