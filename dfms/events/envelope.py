"""The event envelope DFMS puts on Kafka, its headers, and W3C trace context.

Every message value is one JSON object::

    {"event_id": "<uuid>", "type": "file.uploaded", "occurred_at": "<ISO 8601, UTC>",
     "schema_version": 1, "payload": {...}}

The message key is the entity the event is about (a file id, a node id...), so
Kafka's key partitioner keeps one entity's events on one partition, in order.
Headers: ``event_type`` and ``event_id`` always, ``traceparent``/``tracestate``
when the change that emitted the event ran inside an OpenTelemetry span.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from opentelemetry import propagate

from dfms.errors import DfmsError

TRACE_HEADERS = ("traceparent", "tracestate")

Headers = list[tuple[str, bytes]]


class MalformedEvent(DfmsError, ValueError):
    """A message value that is not a DFMS event envelope."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event as a consumer sees it: the envelope plus where it came from."""

    event_id: uuid.UUID
    type: str
    occurred_at: datetime
    schema_version: int
    payload: dict[str, Any]
    topic: str = ""
    partition: int = -1
    offset: int = -1
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def traceparent(self) -> str | None:
        return self.headers.get("traceparent")


def _json_default(value: object) -> object:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"event payloads hold JSON values, UUIDs and datetimes; "
                    f"not {type(value).__name__}")


def dump_json(value: object) -> str:
    """Compact JSON; UUIDs and datetimes become strings, anything else unknown is an error."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def format_time(value: datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` (naive datetimes are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def build_envelope(event_id: uuid.UUID, type: str, occurred_at: datetime,
                   payload: Mapping[str, Any], schema_version: int = 1) -> dict[str, Any]:
    return {"event_id": str(event_id), "type": type, "occurred_at": format_time(occurred_at),
            "schema_version": schema_version, "payload": dict(payload)}


def encode_envelope(envelope: Mapping[str, Any]) -> bytes:
    return dump_json(envelope).encode()


def build_headers(event_id: uuid.UUID, type: str,
                  trace_context: Mapping[str, str] | None) -> Headers:
    """Kafka headers of one event: its type and id, then the W3C trace context if any."""
    headers: Headers = [("event_type", type.encode()), ("event_id", str(event_id).encode())]
    for name in TRACE_HEADERS:
        value = (trace_context or {}).get(name)
        if value:
            headers.append((name, value.encode()))
    return headers


def decode_headers(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: v.decode(errors="replace") for k, v in headers or () if v is not None}


def current_trace_context() -> dict[str, str] | None:
    """The W3C ``traceparent`` (and ``tracestate``) of the current span; None outside one."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    context = {k: carrier[k] for k in TRACE_HEADERS if carrier.get(k)}
    return context if "traceparent" in context else None


def decode_event(value: bytes | None, *, topic: str = "", partition: int = -1,
                 offset: int = -1, key: bytes | None = None,
                 headers: Sequence[tuple[str, bytes]] | None = None) -> Event:
    """Parse a message value into an ``Event``; ``MalformedEvent`` if it is not one."""
    try:
        doc = json.loads(value or b"")
        if not isinstance(doc, dict):
            raise MalformedEvent("the value is not a JSON object")
        payload = doc.get("payload")
        if not isinstance(payload, dict):
            raise MalformedEvent("payload is not a JSON object")
        occurred = datetime.fromisoformat(str(doc["occurred_at"]).replace("Z", "+00:00"))
        return Event(event_id=uuid.UUID(str(doc["event_id"])), type=str(doc["type"]),
                     occurred_at=occurred, schema_version=int(doc.get("schema_version", 1)),
                     payload=payload, topic=topic, partition=partition, offset=offset,
                     key=None if key is None else key.decode(errors="replace"),
                     headers=decode_headers(headers))
    except MalformedEvent:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise MalformedEvent(f"not a DFMS event envelope: {type(exc).__name__}: {exc}") from exc
