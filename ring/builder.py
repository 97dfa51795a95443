"""Editing a ring: a mutable builder that produces the next ``RingData``."""

from __future__ import annotations

from dataclasses import replace

from dfms.ring.errors import InvalidRing
from dfms.ring.model import (
    ACTIVE,
    DEFAULT_VNODES_PER_WEIGHT,
    RingData,
    RingMember,
    validate,
    validate_member,
)


class RingBuilder:
    """Collects changes to a ring; ``build()`` returns the next epoch's data.

    ``build()`` does not change the builder: its ``epoch`` stays that of the
    ring it started from, so two builds give the same epoch and only one of them
    can be saved (the store refuses the other with ``RingConflict``). Start a
    new builder from the saved data for the next change.
    """

    def __init__(
        self, data: RingData | None = None, *, vnodes_per_weight: int | None = None
    ) -> None:
        self.epoch = data.epoch if data is not None else 0
        if vnodes_per_weight is not None:
            self.vnodes_per_weight = vnodes_per_weight
        elif data is not None:
            self.vnodes_per_weight = data.vnodes_per_weight
        else:
            self.vnodes_per_weight = DEFAULT_VNODES_PER_WEIGHT
        self._members: dict[str, RingMember] = {}
        for member in data.members if data is not None else ():
            self._members[member.node_id] = member

    @property
    def members(self) -> tuple[RingMember, ...]:
        return tuple(self._members[node_id] for node_id in sorted(self._members))

    def add_node(self, node_id: str, zone: str, weight: float = 1.0) -> None:
        if node_id in self._members:
            raise InvalidRing(f"duplicate node_id {node_id!r}")
        self._put(RingMember(node_id=node_id, zone=zone, weight=weight, state=ACTIVE))

    def remove_node(self, node_id: str) -> None:
        self._get(node_id)
        del self._members[node_id]

    def set_weight(self, node_id: str, weight: float) -> None:
        self._put(replace(self._get(node_id), weight=weight))

    def set_state(self, node_id: str, state: str) -> None:
        self._put(replace(self._get(node_id), state=state))

    def build(self) -> RingData:
        data = RingData(
            epoch=self.epoch + 1,
            vnodes_per_weight=self.vnodes_per_weight,
            members=self.members,
        )
        validate(data)
        return data

    def _get(self, node_id: str) -> RingMember:
        try:
            return self._members[node_id]
        except KeyError:
            raise InvalidRing(f"no member with node_id {node_id!r}") from None

    def _put(self, member: RingMember) -> None:
        # Checked on every change so the error points at the call that caused it.
        if isinstance(member.weight, int) and not isinstance(member.weight, bool):
            member = replace(member, weight=float(member.weight))
        validate_member(member)
        self._members[member.node_id] = member
