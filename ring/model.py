"""Ring data: plain frozen values, plus the rules a valid ring obeys.

The data is kept apart from the lookup structure (``Ring``) and from the
editing tool (``RingBuilder``), as in OpenStack Swift: the data is what gets
stored, compared and shipped; everything else is derived from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dfms.metadata.states import AdminState
from dfms.ring.errors import InvalidRing

# A member's state is its node's admin state (a removed node is no member), as plain str.
ACTIVE: str = AdminState.ACTIVE.value
DRAINING: str = AdminState.DRAINING.value
MEMBER_STATES = frozenset({ACTIVE, DRAINING})

DEFAULT_VNODES_PER_WEIGHT = 150

# A ring with more virtual nodes than this costs seconds to build and tens of
# megabytes to hold; it is almost certainly a weight given in the wrong unit.
MAX_TOTAL_VNODES = 1_000_000


@dataclass(frozen=True, slots=True)
class RingMember:
    """One storage node.

    A ``draining`` member receives no placements, but stays listed so that the
    replication manager knows to move its chunks off it.
    """

    node_id: str
    zone: str
    weight: float
    state: str = ACTIVE

    @property
    def is_active(self) -> bool:
        return self.state == ACTIVE


@dataclass(frozen=True, slots=True)
class RingData:
    """Everything that defines a ring; ``epoch`` orders successive versions."""

    epoch: int
    vnodes_per_weight: int
    members: tuple[RingMember, ...]

    @property
    def active_members(self) -> tuple[RingMember, ...]:
        return tuple(m for m in self.members if m.is_active)


def vnode_count(member: RingMember, vnodes_per_weight: int) -> int:
    """Virtual nodes a member gets: proportional to its weight, at least one."""
    exact = vnodes_per_weight * member.weight
    if not math.isfinite(exact) or exact > MAX_TOTAL_VNODES:
        # Over the limit anyway: say so without overflowing round(), so validation
        # refuses the ring instead of crashing on an absurd weight like 1e308.
        return MAX_TOTAL_VNODES + 1
    return max(1, round(exact))


def _is_int(value: object) -> bool:
    # bool is an int subclass, but True is no epoch.
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int too large for a float
        return False


def validate_member(member: RingMember) -> None:
    """Raise ``InvalidRing`` naming the first broken rule of one member."""
    node_id = member.node_id
    if not isinstance(node_id, str) or not node_id:
        raise InvalidRing(f"node_id must be a non-empty string, got {node_id!r}")
    if not isinstance(member.zone, str) or not member.zone:
        raise InvalidRing(f"member {node_id!r}: zone must be a non-empty string")
    weight = member.weight
    if not isinstance(weight, int | float) or isinstance(weight, bool):
        raise InvalidRing(f"member {node_id!r}: weight must be a number, got {weight!r}")
    if not _finite(weight) or weight <= 0:
        raise InvalidRing(f"member {node_id!r}: weight must be > 0 and finite, got {weight!r}")
    if member.state not in MEMBER_STATES:
        raise InvalidRing(
            f"member {node_id!r}: state must be one of {sorted(MEMBER_STATES)}, "
            f"got {member.state!r}"
        )


def validate(data: RingData) -> None:
    """Raise ``InvalidRing`` naming the first rule ``data`` breaks."""
    if not _is_int(data.epoch) or data.epoch < 0:
        raise InvalidRing(f"epoch must be an integer >= 0, got {data.epoch!r}")
    if not _is_int(data.vnodes_per_weight) or data.vnodes_per_weight < 1:
        raise InvalidRing(
            f"vnodes_per_weight must be an integer >= 1, got {data.vnodes_per_weight!r}"
        )
    if not isinstance(data.members, tuple):
        raise InvalidRing("members must be a tuple of RingMember")
    seen: set[str] = set()
    for member in data.members:
        if not isinstance(member, RingMember):
            raise InvalidRing(f"members must be RingMember instances, got {member!r}")
        validate_member(member)
        if member.node_id in seen:
            raise InvalidRing(f"duplicate node_id {member.node_id!r}")
        seen.add(member.node_id)
    if not data.active_members:
        raise InvalidRing("ring needs at least one active member")
    total = sum(vnode_count(m, data.vnodes_per_weight) for m in data.active_members)
    if total > MAX_TOTAL_VNODES:
        raise InvalidRing(
            f"ring would have {total} virtual nodes (limit {MAX_TOTAL_VNODES}): "
            "lower vnodes_per_weight or rescale the weights"
        )
