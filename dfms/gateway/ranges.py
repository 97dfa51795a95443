"""HTTP byte ranges (RFC 9110 §14): parsing ``Range`` and checking ``If-Range``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

MAX_RANGES = 32  # more than this is served whole (RFC 9110 lets a server ignore Range)

_SPEC_RE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


class Unsatisfiable(Exception):
    """No requested range overlaps the representation: answer 416."""


def parse_range(header: str | None, size: int) -> list[ByteRange] | None:
    """The satisfiable ranges of ``header``; None means serve the whole body.

    Malformed headers, other units and too many ranges are ignored (None), as
    RFC 9110 allows; a well-formed header with no satisfiable range raises
    ``Unsatisfiable``.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip():
        return None
    parts = spec.split(",")
    if len(parts) > MAX_RANGES:
        return None
    ranges: list[ByteRange] = []
    for part in parts:
        match = _SPEC_RE.match(part)
        if match is None:
            return None
        first, last = match.groups()
        if not first and not last:
            return None
        resolved = _resolve(first, last, size)
        if resolved is False:
            return None
        if resolved is not None:
            ranges.append(resolved)
    if not ranges:
        raise Unsatisfiable
    return ranges


def _resolve(first: str, last: str, size: int) -> ByteRange | Literal[False] | None:
    if not first:  # suffix range: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            return None
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return False  # syntactically invalid: the whole header is ignored
    if start >= size:
        return None
    return ByteRange(start, min(end, size - 1))


def if_range_allows(header: str | None, etag: str, last_modified: str) -> bool:
    """True when the Range header may be honoured (no If-Range, or it still matches)."""
    if header is None:
        return True
    value = header.strip()
    if value.startswith(("W/", '"')):
        return value == etag  # strong comparison; weak validators never match
    return value == last_modified


def etag_matches(header: str | None, etag: str) -> bool:
    """If-None-Match: weak comparison over a list, or '*'."""
    if not header:
        return False
    if header.strip() == "*":
        return True
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return etag in tags
