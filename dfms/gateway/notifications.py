"""The pure parts of the live event stream (GET /api/v1/events): stream positions and
the ``id`` that encodes them, who may see which event, the SSE wire format, and the
bounded replay buffer each gateway keeps.

Positions. The stream reads several topics with several partitions each; offsets are
ordered within a partition only. A client's place in the stream is therefore a vector:
for every partition, the next offset it has not been given (or skipped as not its
own). That vector is the SSE ``id`` of every event, e.g. ``f0:12,f1:7,n0:3,c2:40``
(topic letter, partition, offset). Resuming from it replays, per partition, every
offset at or past it: nothing is missed and nothing repeats, whichever gateway the
client comes back to. An outbox sequence would not do: ids are taken at insert and
committed in another order, so "after id N" can skip a row that committed late.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dfms.errors import DfmsError
from dfms.events.envelope import Event, dump_json, format_time
from dfms.events.topics import (
    ADMIN_EVENTS,
    CHUNKS_TOPIC,
    FILES_TOPIC,
    NODES_TOPIC,
    USER_EVENTS,
)

TopicPartition = tuple[str, int]
Position = dict[TopicPartition, int]

TOPIC_CODES = {FILES_TOPIC: "f", NODES_TOPIC: "n", CHUNKS_TOPIC: "c"}
_TOPICS_BY_CODE = {code: topic for topic, code in TOPIC_CODES.items()}
_ENTRY = re.compile(r"([a-z])([0-9]{1,4}):([0-9]{1,19})")
MAX_CURSOR_CHARS = 8192

STREAM_RESET = "stream.reset"  # the stream's own event: what was missed cannot be replayed
# Payload fields that are bookkeeping, not news for the person.
_PRIVATE_FIELDS = frozenset({"owner_id", "manifest_id", "chunk_count"})


class InvalidCursor(DfmsError, ValueError):
    """A Last-Event-ID this server did not give out."""


def encode_cursor(position: Mapping[TopicPartition, int]) -> str:
    """The SSE id of a position: sorted, so equal positions have equal ids."""
    return ",".join(f"{TOPIC_CODES[topic]}{partition}:{offset}"
                    for (topic, partition), offset in sorted(position.items()))


def parse_cursor(text: str) -> Position:
    """The position an SSE id encodes; ``InvalidCursor`` for anything else."""
    if not text or len(text) > MAX_CURSOR_CHARS:
        raise InvalidCursor("Last-Event-ID is empty or too long")
    position: Position = {}
    for entry in text.split(","):
        match = _ENTRY.fullmatch(entry)
        if match is None or match[1] not in _TOPICS_BY_CODE:
            raise InvalidCursor(f"Last-Event-ID entry {entry[:40]!r} is not a stream position")
        tp = (_TOPICS_BY_CODE[match[1]], int(match[2]))
        if tp in position:
            raise InvalidCursor("Last-Event-ID names a partition twice")
        position[tp] = int(match[3])
    return position


def advance(position: Position, later: Mapping[TopicPartition, int]) -> None:
    """Move ``position`` forward to ``later`` where that is further (never back)."""
    for tp, offset in later.items():
        if offset > position.get(tp, -1):
            position[tp] = offset


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who a stream is for."""

    user_id: str
    is_admin: bool


def visible_to(event: Event, viewer: Viewer) -> bool:
    """A person sees the events about their own account; admins also the cluster's."""
    if event.type in USER_EVENTS:
        return str(event.payload.get("owner_id")) == viewer.user_id
    return viewer.is_admin and event.type in ADMIN_EVENTS


def event_data(event: Event) -> dict[str, Any]:
    """The JSON ``data`` of an event on the stream: common fields, then the payload's."""
    data: dict[str, Any] = {"event_id": str(event.event_id), "type": event.type,
                            "occurred_at": format_time(event.occurred_at),
                            "origin": event.payload.get("origin")}
    for key, value in event.payload.items():
        if key not in _PRIVATE_FIELDS and key not in data:
            data[key] = value
    return data


def sse_message(event: str, data: Mapping[str, Any], event_id: str | None = None) -> bytes:
    """One SSE message; ``data`` is one line of JSON (JSON escapes every newline)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {dump_json(data)}\n\n".encode()


def sse_comment(text: str, event_id: str | None = None) -> bytes:
    """A comment (a heartbeat). With an id it also moves the client's Last-Event-ID on
    without firing an event (an SSE message with no data only sets the id)."""
    tail = f"id: {event_id}\n" if event_id is not None else ""
    return f": {text}\n{tail}\n".encode()


def sse_fields(raw: bytes) -> Iterator[dict[str, str]]:
    """Parse SSE messages (tests and tools): each message's fields, comments dropped."""
    for block in raw.decode().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        if fields:
            yield fields


def decode_data(fields: Mapping[str, str]) -> dict[str, Any]:
    data = json.loads(fields["data"])
    assert isinstance(data, dict)
    return data


@dataclass(frozen=True, slots=True)
class Buffered:
    tp: TopicPartition
    offset: int
    event: Event


class ReplayBuffer:
    """The last ``capacity`` events a gateway consumed (everyone's), to replay a
    reconnecting stream without asking Kafka.

    It can replay a partition from offset ``o`` when it has held every offset of that
    partition from ``o`` on: ``o`` is at or past where this gateway started reading it,
    and past every event it has dropped since.
    """

    def __init__(self, capacity: int) -> None:
        self._events: deque[Buffered] = deque()
        self.capacity = capacity
        self._floor: Position = {}  # per partition: the first offset still complete here

    def start(self, tp: TopicPartition, offset: int) -> None:
        """This gateway reads ``tp`` from ``offset`` on (its start, or after a rebalance
        moved the partition away and back: the buffer is no longer complete before)."""
        self._floor[tp] = max(offset, self._floor.get(tp, offset))

    def add(self, tp: TopicPartition, offset: int, event: Event) -> None:
        self._events.append(Buffered(tp, offset, event))
        while len(self._events) > self.capacity:
            dropped = self._events.popleft()
            self._floor[dropped.tp] = max(self._floor.get(dropped.tp, 0), dropped.offset + 1)

    def __len__(self) -> int:
        return len(self._events)

    def covers(self, tp: TopicPartition, offset: int) -> bool:
        floor = self._floor.get(tp)
        return floor is not None and offset >= floor

    def between(self, start: Mapping[TopicPartition, int],
                end: Mapping[TopicPartition, int]) -> list[Buffered]:
        """Buffered events at or past ``start`` and before ``end`` in their partition, in
        the order they were consumed. A partition missing from ``start`` gives none."""
        return [b for b in self._events
                if start.get(b.tp, end.get(b.tp, 0)) <= b.offset < end.get(b.tp, 0)]
