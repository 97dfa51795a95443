"""Canonical bytes for ring data: equal rings serialize to equal bytes.

Keys are sorted, members are sorted by node_id, separators carry no
whitespace, weights are always floats (``1.0``, never ``1``) rendered by
Python's shortest round-trip ``repr``, and non-ASCII text is escaped. So
``checksum`` identifies a ring's content whatever order it was built in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

from dfms.ring.errors import InvalidRing
from dfms.ring.model import RingData, RingMember, validate, validate_member

FORMAT = 1

_TOP_KEYS = frozenset({"format", "epoch", "vnodes_per_weight", "members"})
_MEMBER_KEYS = frozenset({"node_id", "zone", "weight", "state"})


def dumps(data: RingData) -> bytes:
    validate(data)
    doc = {
        "format": FORMAT,
        "epoch": data.epoch,
        "vnodes_per_weight": data.vnodes_per_weight,
        "members": _members_doc(data.members),
    }
    return _canonical(doc).encode("ascii")


def loads(raw: bytes | bytearray | str) -> RingData:
    """Parse and validate; anything wrong raises ``InvalidRing``."""
    doc = _parse(raw)
    if not isinstance(doc, dict):
        raise InvalidRing("ring document must be a JSON object")
    _check_keys(doc, _TOP_KEYS, "ring document")
    if type(doc["format"]) is not int or doc["format"] != FORMAT:
        raise InvalidRing(f"unsupported ring format {doc['format']!r} (expected {FORMAT})")
    data = RingData(
        epoch=doc["epoch"],
        vnodes_per_weight=doc["vnodes_per_weight"],
        members=members_from_doc(doc["members"]),
    )
    validate(data)
    return data


def checksum(data: RingData) -> str:
    """SHA-256 hex of ``dumps(data)``."""
    return hashlib.sha256(dumps(data)).hexdigest()


def members_to_json(members: tuple[RingMember, ...]) -> str:
    """The members alone, canonical, as stored in ``ring_state.members``."""
    return _canonical(_members_doc(members))


def members_from_json(text: str | bytes) -> tuple[RingMember, ...]:
    return members_from_doc(_parse(text))


def members_from_doc(doc: object) -> tuple[RingMember, ...]:
    """Members from parsed JSON, sorted by node_id; each member is validated."""
    if not isinstance(doc, list):
        raise InvalidRing("members must be a JSON list")
    members = tuple(_member_from_doc(item) for item in doc)
    return tuple(sorted(members, key=lambda m: m.node_id))


def _members_doc(members: tuple[RingMember, ...]) -> list[dict[str, Any]]:
    ordered = sorted(members, key=lambda m: m.node_id)
    return [
        {"node_id": m.node_id, "zone": m.zone, "weight": float(m.weight), "state": m.state}
        for m in ordered
    ]


def _member_from_doc(item: object) -> RingMember:
    if not isinstance(item, dict):
        raise InvalidRing(f"member must be a JSON object, got {item!r}")
    _check_keys(item, _MEMBER_KEYS, "member")
    member = RingMember(
        node_id=item["node_id"], zone=item["zone"], weight=item["weight"], state=item["state"]
    )
    validate_member(member)
    return replace(member, weight=float(member.weight))


def _check_keys(doc: dict[str, Any], expected: frozenset[str], what: str) -> None:
    if doc.keys() != expected:
        missing = sorted(expected - doc.keys())
        extra = sorted(doc.keys() - expected)
        raise InvalidRing(f"{what}: missing keys {missing}, unexpected keys {extra}")


def _canonical(doc: object) -> str:
    return json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def _parse(raw: bytes | bytearray | str) -> object:
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except InvalidRing:
        raise
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidRing(f"ring document is not valid JSON: {exc}") from exc


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise InvalidRing("ring document has duplicate keys")
    return doc


def _no_constants(name: str) -> Any:
    raise InvalidRing(f"ring document contains {name}, which is not JSON")
