"""The event envelope, its Kafka headers and W3C trace context (no broker, no database)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NoOpTracerProvider

from dfms.events.envelope import (
    MalformedEvent,
    build_envelope,
    build_headers,
    current_trace_context,
    decode_event,
    dump_json,
    encode_envelope,
    format_time,
)
from dfms.events.relay import OutboxRelay, publish_headers, start_publish_span

EVENT_ID = uuid.UUID("6f1c2a0e-8f4b-4b7e-9d55-0c1f3e2a9b10")
WHEN = datetime(2025, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)


def test_envelope_has_exactly_the_five_fields() -> None:
    env = build_envelope(EVENT_ID, "file.uploaded", WHEN, {"size": 3}, schema_version=2)
    assert env == {"event_id": str(EVENT_ID), "type": "file.uploaded",
                   "occurred_at": "2025-03-04T05:06:07.890000Z", "schema_version": 2,
                   "payload": {"size": 3}}
    assert build_envelope(EVENT_ID, "t", WHEN, {})["schema_version"] == 1


def test_times_are_utc_with_z() -> None:
    plus2 = timezone(timedelta(hours=2))
    assert format_time(datetime(2025, 1, 1, 2, 0, tzinfo=plus2)) == "2025-01-01T00:00:00Z"
    assert format_time(datetime(2025, 1, 1)) == "2025-01-01T00:00:00Z"  # naive is UTC


def test_encode_then_decode_round_trips_with_kafka_metadata() -> None:
    payload = {"file_id": str(uuid.uuid4()), "name": "résumé.pdf", "nested": {"a": [1, 2]}}
    value = encode_envelope(build_envelope(EVENT_ID, "file.uploaded", WHEN, payload))
    assert b" " not in value.replace("résumé".encode(), b"")  # compact JSON, UTF-8
    event = decode_event(value, topic="dfms.files", partition=2, offset=41, key=b"k1",
                         headers=[("event_type", b"file.uploaded"), ("traceparent", b"00-x")])
    assert (event.event_id, event.type, event.occurred_at, event.schema_version) == (
        EVENT_ID, "file.uploaded", WHEN, 1)
    assert event.payload == payload
    assert (event.topic, event.partition, event.offset, event.key) == ("dfms.files", 2, 41, "k1")
    assert event.headers == {"event_type": "file.uploaded", "traceparent": "00-x"}
    assert event.traceparent == "00-x"


def test_payload_json_takes_uuids_and_datetimes_and_refuses_the_rest() -> None:
    doc = json.loads(dump_json({"id": EVENT_ID, "at": WHEN, "n": None}))
    assert doc == {"id": str(EVENT_ID), "at": "2025-03-04T05:06:07.890000Z", "n": None}
    for bad in ({1, 2}, b"bytes", object()):
        with pytest.raises(TypeError):
            dump_json({"x": bad})


@pytest.mark.parametrize("value", [
    None, b"", b"not json", b"[1, 2]", b'{"type": "t"}',
    b'{"event_id": "nope", "type": "t", "occurred_at": "2025-01-01T00:00:00Z", "payload": {}}',
    b'{"event_id": "6f1c2a0e-8f4b-4b7e-9d55-0c1f3e2a9b10", "type": "t", '
    b'"occurred_at": "2025-01-01T00:00:00Z", "payload": [1]}',
    b'{"event_id": "6f1c2a0e-8f4b-4b7e-9d55-0c1f3e2a9b10", "type": "t", '
    b'"occurred_at": "yesterday", "payload": {}}',
])
def test_malformed_values_are_refused(value: bytes | None) -> None:
    with pytest.raises(MalformedEvent):
        decode_event(value)


def test_headers_carry_type_and_id_and_trace_context_when_present() -> None:
    assert build_headers(EVENT_ID, "file.deleted", None) == [
        ("event_type", b"file.deleted"), ("event_id", str(EVENT_ID).encode())]
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert build_headers(EVENT_ID, "t", {"traceparent": parent, "tracestate": "a=1"})[2:] == [
        ("traceparent", parent.encode()), ("tracestate", b"a=1")]
    # An empty tracestate is not sent.
    assert build_headers(EVENT_ID, "t", {"traceparent": parent, "tracestate": ""})[2:] == [
        ("traceparent", parent.encode())]


def test_trace_context_comes_from_the_current_span() -> None:
    assert current_trace_context() is None
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("upload") as span:
        context = current_trace_context()
    assert context is not None
    ctx = span.get_span_context()
    assert context["traceparent"].startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")
    assert current_trace_context() is None


def test_relay_builds_messages_from_outbox_rows() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    row = {"event_id": EVENT_ID, "topic": "dfms.files", "type": "file.uploaded",
           "occurred_at": WHEN, "payload": '{"size": 3}', "schema_version": 1,
           "trace_context": json.dumps({"traceparent": parent})}
    event = decode_event(OutboxRelay._value(row))  # type: ignore[arg-type]
    assert (event.event_id, event.type, event.payload) == (EVENT_ID, "file.uploaded", {"size": 3})
    # A relay without tracing passes the stored context on as it is.
    untraced = NoOpTracerProvider().get_tracer("test")
    span = start_publish_span(row, untraced)  # type: ignore[arg-type]
    assert dict(publish_headers(row, span)) == {  # type: ignore[arg-type]
        "event_type": b"file.uploaded", "event_id": str(EVENT_ID).encode(),
        "traceparent": parent.encode()}
    no_trace = {**row, "trace_context": None}
    span = start_publish_span(no_trace, untraced)  # type: ignore[arg-type]
    assert [k for k, _ in publish_headers(no_trace, span)] == [  # type: ignore[arg-type]
        "event_type", "event_id"]
