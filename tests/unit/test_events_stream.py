"""The live event stream's pure logic: positions and their ids, who sees what, the SSE
wire format, the replay buffer, and a subscription that falls behind."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from dfms.config import Config
from dfms.events.envelope import Event, build_envelope, encode_envelope
from dfms.events.origin import parse_origin
from dfms.events.topics import (
    ADMIN_EVENTS,
    CHUNK_UNDER_REPLICATED,
    CHUNKS_TOPIC,
    FILE_UPLOADED,
    FILES_TOPIC,
    NODE_HEALTH_CHANGED,
    NODES_TOPIC,
    RING_CHANGED,
    USER_ACCESS_CHANGED,
    USER_EVENTS,
)
from dfms.gateway.event_hub import EventHub, Subscription
from dfms.gateway.notifications import (
    Buffered,
    InvalidCursor,
    ReplayBuffer,
    Viewer,
    advance,
    decode_data,
    encode_cursor,
    event_data,
    parse_cursor,
    sse_comment,
    sse_fields,
    sse_message,
    visible_to,
)

ALICE, BOB = str(uuid.uuid4()), str(uuid.uuid4())


def event(type: str = FILE_UPLOADED, **payload: Any) -> Event:
    return Event(uuid.uuid4(), type, datetime(2026, 12, 2, 12, 0, tzinfo=UTC), 1,
                 dict(payload))


# --- positions -------------------------------------------------------------------------

def test_a_position_round_trips_through_its_id_in_a_stable_order() -> None:
    position = {(NODES_TOPIC, 0): 3, (FILES_TOPIC, 1): 7, (FILES_TOPIC, 0): 12,
                (CHUNKS_TOPIC, 2): 40}
    text = encode_cursor(position)
    assert text == "c2:40,f0:12,f1:7,n0:3"
    assert parse_cursor(text) == position
    assert encode_cursor(dict(reversed(list(position.items())))) == text


@pytest.mark.parametrize("text", [
    "", "x0:1", "f0", "f0:-1", "f:1", "f0:1,f0:2", "f0:1;n0:2", "f0:1,", "F0:1",
    "f0:1 ", "f00000:1", "f0:" + "9" * 20, "f0:1," * 2000])
def test_anything_else_is_not_a_position(text: str) -> None:
    with pytest.raises(InvalidCursor):
        parse_cursor(text)


def test_advance_only_moves_forward_and_adds_new_partitions() -> None:
    position = {(FILES_TOPIC, 0): 10, (FILES_TOPIC, 1): 5}
    advance(position, {(FILES_TOPIC, 0): 8, (FILES_TOPIC, 1): 9, (NODES_TOPIC, 0): 2})
    assert position == {(FILES_TOPIC, 0): 10, (FILES_TOPIC, 1): 9, (NODES_TOPIC, 0): 2}


# --- who sees what ---------------------------------------------------------------------

def test_people_see_their_own_events_only() -> None:
    mine = event(owner_id=ALICE, file_id="f")
    assert visible_to(mine, Viewer(ALICE, False))
    assert not visible_to(mine, Viewer(BOB, False))
    assert not visible_to(mine, Viewer(BOB, True))  # admins see the cluster, not files
    assert not visible_to(event(file_id="f"), Viewer(ALICE, False))  # no owner: nobody


def test_cluster_events_reach_admins_only_and_internal_ones_nobody() -> None:
    down = event(NODE_HEALTH_CHANGED, node_id="node-2", old="suspect", new="down")
    at_risk = event(CHUNK_UNDER_REPLICATED, chunk="ab", replicas=1, wanted=3)
    for e in (down, at_risk):
        assert visible_to(e, Viewer(ALICE, True))
        assert not visible_to(e, Viewer(ALICE, False))
    # An admin's own id in an internal event's payload changes nothing.
    assert not visible_to(event(RING_CHANGED, owner_id=ALICE), Viewer(ALICE, True))
    assert not USER_EVENTS & ADMIN_EVENTS


def test_the_data_has_the_common_fields_and_not_the_bookkeeping() -> None:
    e = event(owner_id=ALICE, file_id="f1", version=2, manifest_id="m", chunk_count=3,
              origin="tab-1")
    data = event_data(e)
    assert data == {"event_id": str(e.event_id), "type": FILE_UPLOADED,
                    "occurred_at": "2026-12-02T12:00:00Z", "origin": "tab-1",
                    "file_id": "f1", "version": 2}
    assert event_data(event(NODE_HEALTH_CHANGED, node_id="n"))["origin"] is None


def test_a_payload_cannot_override_the_common_fields() -> None:
    forged = Event(uuid.uuid4(), FILE_UPLOADED, datetime(2026, 12, 2, tzinfo=UTC), 1,
                   {"owner_id": ALICE, "type": "forged", "event_id": "x"})
    data = event_data(forged)
    assert data["type"] == FILE_UPLOADED and data["event_id"] != "x"


# --- the wire --------------------------------------------------------------------------

def test_messages_and_heartbeats_parse_back() -> None:
    nasty = {"name": "two\nlines\r\n: not a comment\n\nid: 9", "n": 1}
    raw = (sse_message(FILE_UPLOADED, nasty, "f0:1") + sse_comment("hb", "f0:2")
           + sse_comment("hb") + sse_message("stream.reset", {"reason": "r"}))
    assert raw.count(b"\n\n") == 4  # JSON escapes every newline of the data
    messages = list(sse_fields(raw))
    assert messages[0]["id"] == "f0:1" and messages[0]["event"] == FILE_UPLOADED
    assert decode_data(messages[0]) == nasty
    assert messages[1] == {"id": "f0:2"}  # the heartbeat's id, no event
    assert messages[2]["event"] == "stream.reset" and "id" not in messages[2]


def test_only_a_plain_client_id_becomes_an_origin() -> None:
    assert parse_origin("tab-1.a_B") == "tab-1.a_B"
    for bad in (None, "", "a b", "x" * 65, "tab\n", "é"):
        assert parse_origin(bad) is None


# --- the replay buffer -----------------------------------------------------------------

F0, F1 = (FILES_TOPIC, 0), (FILES_TOPIC, 1)


def test_the_buffer_covers_from_where_it_started_until_it_drops_events() -> None:
    buffer = ReplayBuffer(capacity=3)
    assert not buffer.covers(F0, 100)  # never read: unknown
    buffer.start(F0, 10)
    buffer.start(F1, 0)
    assert not buffer.covers(F0, 9) and buffer.covers(F0, 10) and buffer.covers(F0, 50)
    for offset in (10, 11, 12):
        buffer.add(F0, offset, event(owner_id=ALICE))
    buffer.add(F1, 0, event(owner_id=BOB))  # drops F0@10
    assert len(buffer) == 3
    assert not buffer.covers(F0, 10) and buffer.covers(F0, 11)
    assert buffer.covers(F1, 0)


def test_between_replays_each_partition_from_its_own_offset_in_order() -> None:
    buffer = ReplayBuffer(capacity=100)
    buffer.start(F0, 0)
    buffer.start(F1, 0)
    for tp, offset in ((F0, 0), (F1, 0), (F0, 1), (F1, 1), (F0, 2), (F1, 2)):
        buffer.add(tp, offset, event(owner_id=ALICE))
    got = [(b.tp, b.offset) for b in buffer.between({F0: 1, F1: 2}, {F0: 3, F1: 3})]
    assert got == [(F0, 1), (F0, 2), (F1, 2)]
    # The end is exclusive: what the stream gets live is not replayed as well.
    got = [(b.tp, b.offset) for b in buffer.between({F0: 0, F1: 0}, {F0: 2, F1: 1})]
    assert got == [(F0, 0), (F1, 0), (F0, 1)]


def test_a_buffer_of_nothing_covers_only_what_comes_next() -> None:
    buffer = ReplayBuffer(capacity=0)
    buffer.start(F0, 5)
    buffer.add(F0, 5, event())
    assert len(buffer) == 0 and not buffer.covers(F0, 5) and buffer.covers(F0, 6)


# --- a subscription that falls behind ----------------------------------------------------

async def test_a_full_queue_ends_the_stream_instead_of_dropping_events_silently() -> None:
    sub = Subscription(Viewer(ALICE, False), asyncio.Queue(3))
    items = [(Buffered(F0, i, event(owner_id=ALICE)), {F0: i + 1}) for i in range(5)]
    for item in items:
        sub.offer(item)
    assert sub.ended
    drained = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
    assert drained[-1] is None  # the end marker: the client resumes from its last id
    assert all(d is None or d in items for d in drained)
    sub.offer(items[0])
    assert sub.queue.empty()  # nothing after the end


def record(type: str, offset: int, **payload: Any) -> ConsumerRecord[bytes, bytes]:
    value = encode_envelope(build_envelope(uuid.uuid4(), type, datetime.now(UTC), payload))
    return ConsumerRecord(FILES_TOPIC, 0, offset, 0, 0, ALICE.encode(), value, None,
                          len(value), 0, [])


async def test_an_access_change_ends_that_accounts_streams_only() -> None:
    hub = EventHub(Config())
    alice, _ = hub.subscribe(Viewer(ALICE, False), lambda: False)
    alice_admin, _ = hub.subscribe(Viewer(ALICE, True), lambda: False)
    bob, _ = hub.subscribe(Viewer(BOB, True), lambda: False)
    hub._dispatch((FILES_TOPIC, 0), record(USER_ACCESS_CHANGED, 0, user_id=ALICE,
                                           role="user", is_active=False))
    assert alice.ended and alice_admin.ended and not bob.ended
    assert alice.queue.get_nowait() is None and bob.queue.empty()  # shown to nobody
    assert hub.position[(FILES_TOPIC, 0)] == 1
    hub._dispatch((FILES_TOPIC, 0), record(FILE_UPLOADED, 1, owner_id=BOB, file_id="f"))
    assert not bob.ended and bob.queue.qsize() == 1
