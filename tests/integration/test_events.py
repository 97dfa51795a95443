"""The event pipeline against the real cluster: outbox rows, the relay, Kafka, consumers.

The relay runs in-process (``run_once``); topics are read back without a
consumer group (assign + seek), which is instant, and only the consumer test
pays for one group join. The Kafka outage test stops the broker (memory
storage: it comes back empty) and always leaves it running with its topics.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import REGISTRY

from dfms.config import Config, load_config
from dfms.events.consumer import EventConsumer
from dfms.events.envelope import Event, build_envelope, build_headers, encode_envelope
from dfms.events.outbox import emit
from dfms.events.relay import OutboxRelay
from dfms.events.topics import DEAD_LETTER_TOPIC, FILES_TOPIC, NODES_TOPIC, ensure_topics
from tests.support.api import Api, ApiUser
from tests.support.cluster import ClusterHandle

Record = ConsumerRecord[bytes, bytes]


def events_config(cluster: ClusterHandle, **events: object) -> Config:
    """The cluster's config with quick retries and a short Kafka timeout (outages fail fast)."""
    overrides: dict[str, dict[str, object]] = {
        "events": {"consumer_max_attempts": 3, "consumer_retry_base_s": 0.05, **events},
        "kafka": {"request_timeout_s": 3.0}}
    return load_config(Path(cluster.data_dir) / "dfms.yaml", env={}, overrides=overrides)


async def relay_until_sent(relay: OutboxRelay, db: asyncpg.Connection, event_ids: list[uuid.UUID],
                           passes: int = 10) -> None:
    """Run passes until these rows are published (another relay may take some of them)."""
    for _ in range(passes):
        await relay.run_once()
        unsent = await db.fetchval("SELECT count(*) FROM outbox WHERE event_id = ANY($1::uuid[]) "
                                   "AND published_at IS NULL", event_ids)
        if unsent == 0:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{unsent} of {len(event_ids)} events still unsent")


async def read_topic(cfg: Config, topic: str,
                     keep: Callable[[Record], bool] = lambda _: True) -> list[Record]:
    """Everything in ``topic`` now (no group: assign every partition, read to the end)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        metadata = await consumer._client.fetch_all_metadata()
        parts = [TopicPartition(topic, p) for p in sorted(metadata.partitions_for_topic(topic))]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        records: list[Record] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in parts])

        async with asyncio.timeout(30):
            while await behind():
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records += [r for r in batch if keep(r)]
        return records
    finally:
        await consumer.stop()


def envelope(record: Record) -> dict[str, Any]:
    return dict(json.loads(record.value or b""))


def headers(record: Record) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}


# --- the outbox ------------------------------------------------------------------------------

async def test_an_upload_writes_one_event_in_its_transaction(
        api: Api, user: ApiUser, db: asyncpg.Connection, cluster: ClusterHandle) -> None:
    # The cluster's own relay would publish the row at once (changing its xmin);
    # this test is about the write, so that relay is paused while it looks.
    await cluster.control("stop", "event-relay")
    try:
        await _upload_writes_one_event(api, user, db)
    finally:
        await cluster.control("start", "event-relay")


async def _upload_writes_one_event(api: Api, user: ApiUser, db: asyncpg.Connection) -> None:
    data = os.urandom(1000)
    status, body = await api.upload(user, "report.bin", data)
    assert status == 201, body
    rows = await db.fetch("SELECT *, xmin::text AS tx FROM outbox WHERE key = $1", body["id"])
    assert len(rows) == 1
    row = rows[0]
    assert (row["topic"], row["type"], row["published_at"]) == (FILES_TOPIC, "file.uploaded", None)
    payload = json.loads(row["payload"])
    assert payload["file_id"] == body["id"] and payload["owner_id"] == user.id
    assert payload["version"] == 1 and payload["size"] == 1000
    assert payload["sha256"] == hashlib.sha256(data).hexdigest() == body["sha256"]
    # Written by the transaction that created the manifest: the same transaction id.
    manifest_tx = await db.fetchval("SELECT xmin::text FROM manifests WHERE id = $1",
                                    uuid.UUID(payload["manifest_id"]))
    assert manifest_tx == row["tx"]

    async def events_of_user() -> list[str]:  # of files (creating a folder is one too)
        return [r["type"] for r in await db.fetch(
            "SELECT type FROM outbox WHERE payload->>'owner_id' = $1 AND type LIKE 'file.%' "
            "ORDER BY id", user.id)]

    # Refused uploads write nothing: If-Match mismatch (412), a folder's name (409).
    status, _ = await api.upload(user, "report.bin", b"other", **{"If-Match": '"00"'})
    assert status == 412
    status, _, _ = await api.request("POST", "/folders", user, json={"name": "taken"})
    assert status == 201
    status, _ = await api.upload(user, "taken", b"x")
    assert status == 409
    assert await events_of_user() == ["file.uploaded"]
    # A new version and a delete are events too, in order, for the same key.
    status, second = await api.upload(user, "report.bin", b"second version")
    assert status == 201 and second["version"] == 2
    status, _, _ = await api.request("DELETE", f"/files/{body['id']}", user)
    assert status == 204
    assert await events_of_user() == ["file.uploaded", "file.uploaded", "file.deleted"]
    rows = await db.fetch("SELECT payload FROM outbox WHERE key = $1 ORDER BY id", body["id"])
    assert [json.loads(r["payload"]).get("version") for r in rows] == [1, 2, None]


async def test_emit_rolls_back_with_its_transaction(db: asyncpg.Connection) -> None:
    key = str(uuid.uuid4())
    with pytest.raises(RuntimeError):
        async with db.transaction():
            await emit(db, NODES_TOPIC, key, "test.rolled_back", {"n": 1})
            raise RuntimeError("the change fails")
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE key = $1", key) == 0


# --- the relay ---------------------------------------------------------------------------------

async def test_relay_keeps_per_key_order_and_trace_context(
        cluster: ClusterHandle, db: asyncpg.Connection) -> None:
    cfg = events_config(cluster)
    key = str(uuid.uuid4())
    tracer = TracerProvider().get_tracer("test_events")
    with tracer.start_as_current_span("change") as span:
        async with db.transaction():
            ids = [await emit(db, NODES_TOPIC, key, "test.ordered", {"i": i}) for i in range(20)]
    trace_id = format(span.get_span_context().trace_id, "032x")
    relay = OutboxRelay(cfg)
    try:
        await relay_until_sent(relay, db, ids)
    finally:
        await relay.close()
    rows = await db.fetch("SELECT attempts, last_error FROM outbox WHERE event_id = ANY($1)", ids)
    assert all(r["attempts"] >= 1 and r["last_error"] is None for r in rows)
    records = await read_topic(cfg, NODES_TOPIC, lambda r: r.key == key.encode())
    assert [envelope(r)["payload"]["i"] for r in records] == list(range(20))
    assert [uuid.UUID(envelope(r)["event_id"]) for r in records] == ids
    assert len({r.partition for r in records}) == 1
    first = records[0]
    assert set(envelope(first)) == {"event_id", "type", "occurred_at", "schema_version",
                                    "payload"}
    assert headers(first)["event_type"] == "test.ordered"
    assert headers(first)["event_id"] == envelope(first)["event_id"]
    assert headers(first)["traceparent"].split("-")[1] == trace_id


async def test_concurrent_relays_publish_each_event_once_in_key_order(
        cluster: ClusterHandle, db: asyncpg.Connection) -> None:
    cfg = events_config(cluster, relay_batch_size=7)
    keys = [f"k{i}-{uuid.uuid4()}" for i in range(4)]
    ids: list[uuid.UUID] = []
    for i in range(30):  # interleaved keys, one transaction each
        ids.append(await emit(db, NODES_TOPIC, keys[i % 4], "test.concurrent", {"i": i}))
    relays = [OutboxRelay(cfg) for _ in range(3)]
    try:
        for _ in range(10):
            await asyncio.gather(*(r.run_once() for r in relays))
            if not await db.fetchval("SELECT count(*) FROM outbox WHERE event_id = ANY($1) "
                                     "AND published_at IS NULL", ids):
                break
    finally:
        for r in relays:
            await r.close()
    wanted = {k.encode() for k in keys}
    records = await read_topic(cfg, NODES_TOPIC, lambda r: r.key in wanted)
    seen = [uuid.UUID(envelope(r)["event_id"]) for r in records]
    assert sorted(seen) == sorted(ids)  # all of them, each once
    for key in keys:
        mine = [envelope(r)["payload"]["i"] for r in records if r.key == key.encode()]
        assert mine == sorted(mine) and len(mine) > 0


async def test_an_unsendable_event_holds_back_its_key_only(
        cluster: ClusterHandle, db: asyncpg.Connection) -> None:
    cfg = events_config(cluster)
    stuck, free = str(uuid.uuid4()), str(uuid.uuid4())
    async with db.transaction():
        too_big = await emit(db, NODES_TOPIC, stuck, "test.too_big", {"blob": "x" * 1_100_000})
        after = await emit(db, NODES_TOPIC, stuck, "test.after_too_big", {})
        other = await emit(db, NODES_TOPIC, free, "test.other_key", {})
    relay = OutboxRelay(cfg)
    try:
        await relay_until_sent(relay, db, [other])  # the other key is not held up
        rows = {r["event_id"]: r for r in await db.fetch(
            "SELECT event_id, published_at, attempts, last_error FROM outbox "
            "WHERE event_id = ANY($1)", [too_big, after])}
        assert rows[too_big]["published_at"] is None and rows[after]["published_at"] is None
        assert "MessageSizeTooLarge" in rows[too_big]["last_error"]
        assert "earlier event with the same key" in rows[after]["last_error"]
    finally:
        await relay.close()
        await db.execute("DELETE FROM outbox WHERE event_id = ANY($1)", [too_big, after])


async def test_a_running_relay_wakes_on_notify(
        cluster: ClusterHandle, db: asyncpg.Connection) -> None:
    relay = OutboxRelay(events_config(cluster, relay_interval_s=60.0))  # polling is no help
    async with relay:
        await asyncio.sleep(0.5)  # the LISTEN connection is up, the first pass done
        event_id = await emit(db, NODES_TOPIC, str(uuid.uuid4()), "test.notify", {})
        published = None
        for _ in range(50):
            published = await db.fetchval("SELECT published_at FROM outbox WHERE event_id = $1",
                                          event_id)
            if published is not None:
                break
            await asyncio.sleep(0.1)
        assert published is not None, "not published within 5 s of its commit"
    assert relay._pool is None  # stop() released what it opened


# --- the consumer ------------------------------------------------------------------------------

async def test_consumer_handles_skips_duplicates_and_dead_letters(
        cluster: ClusterHandle, api: Api, user: ApiUser, db: asyncpg.Connection) -> None:
    cfg = events_config(cluster)
    status, uploaded = await api.upload(user, "consumed.txt", b"consume me")
    assert status == 201
    relay = OutboxRelay(cfg)
    try:
        await relay_until_sent(relay, db, [row["event_id"] for row in await db.fetch(
            "SELECT event_id FROM outbox WHERE key = $1", uploaded["id"])])
    finally:
        await relay.close()

    name = f"test-{uuid.uuid4().hex[:12]}"
    handled: list[Event] = []
    attempts: dict[uuid.UUID, int] = {}
    after_seen = asyncio.Event()
    upload_seen = asyncio.Event()  # on another partition (keyed by file id): no order with ours
    test_key = str(uuid.uuid4())

    async def handler(conn: asyncpg.Connection, event: Event) -> None:
        attempts[event.event_id] = attempts.get(event.event_id, 0) + 1
        assert await conn.fetchval("SELECT 1") == 1  # a usable connection, in a transaction
        if event.key == test_key and event.type == "test.poison":
            raise ValueError("this event can never be handled")
        if event.payload.get("owner_id") == user.id or event.key == test_key:
            handled.append(event)
        if event.payload.get("owner_id") == user.id:
            upload_seen.set()
        if event.key == test_key and event.type == "test.after":
            after_seen.set()

    # Raw publishes on the test key (one partition, in order): an event, the same
    # event again (a duplicate delivery), a poison event, then an ordinary one.
    def raw(type: str) -> tuple[uuid.UUID, bytes, list[tuple[str, bytes]]]:
        eid = uuid.uuid4()
        value = encode_envelope(build_envelope(eid, type, datetime.now(UTC), {"n": 1}))
        return eid, value, build_headers(eid, type, None)

    dup_id, dup_value, dup_headers = raw("test.dup")
    poison_id, poison_value, poison_headers = raw("test.poison")
    after_id, after_value, after_headers = raw("test.after")
    producer = AIOKafkaProducer(bootstrap_servers=cfg.kafka.bootstrap_servers, acks="all",
                                enable_idempotence=False)
    await producer.start()
    try:
        metas = [await producer.send_and_wait(FILES_TOPIC, value, key=test_key.encode(),
                                              headers=hdrs)
                 for value, hdrs in ((dup_value, dup_headers), (dup_value, dup_headers),
                                     (poison_value, poison_headers),
                                     (after_value, after_headers))]
    finally:
        await producer.stop()
    poison_meta, after_meta = metas[2], metas[3]
    tp = TopicPartition(FILES_TOPIC, after_meta.partition)

    consumer = EventConsumer(cfg, name, [FILES_TOPIC], handler, group_id=f"{name}-group")
    async with consumer:
        await consumer.start()  # idempotent
        async with asyncio.timeout(90):
            await after_seen.wait()
            await upload_seen.wait()  # its partition is read in its own time
        for _ in range(50):  # committed after the handler's batch is done
            committed = (await consumer.committed()).get(tp)
            if committed is not None and committed > after_meta.offset:
                break
            await asyncio.sleep(0.2)
        assert committed is not None and committed > after_meta.offset  # past poison, "after"
    await consumer.stop()  # idempotent

    upload_events = [e for e in handled if e.payload.get("owner_id") == user.id]
    assert [e.type for e in upload_events] == ["file.uploaded"]
    event = upload_events[0]
    assert event.key == uploaded["id"] and event.topic == FILES_TOPIC
    assert event.payload["file_id"] == uploaded["id"] and event.payload["version"] == 1
    assert event.payload["sha256"] == uploaded["sha256"] and event.schema_version == 1
    assert event.headers["event_type"] == "file.uploaded"
    assert event.headers["event_id"] == str(event.event_id)
    # The duplicate ran once; the poison one ran max_attempts times, then moved on.
    assert [e.type for e in handled if e.key == test_key] == ["test.dup", "test.after"]
    assert attempts[dup_id] == 1 and attempts[poison_id] == 3 and attempts[after_id] == 1
    assert (REGISTRY.get_sample_value("dfms_events_consumed_total",
                                      {"consumer": name, "outcome": "duplicate"}) or 0) >= 1
    processed = await db.fetch("SELECT event_id FROM processed_events WHERE consumer = $1 "
                               "AND event_id = ANY($2)", name, [dup_id, poison_id, after_id])
    assert {r["event_id"] for r in processed} == {dup_id, after_id}

    letters = [envelope(r) for r in await read_topic(cfg, DEAD_LETTER_TOPIC,
                                                     lambda r: r.key == test_key.encode())]
    assert len(letters) == 1
    letter = letters[0]
    assert letter["event_id"] == str(poison_id) and letter["attempts"] == 3
    assert "this event can never be handled" in letter["error"]
    assert (letter["topic"], letter["partition"], letter["offset"]) == (
        FILES_TOPIC, poison_meta.partition, poison_meta.offset)
    assert letter["event"]["event_id"] == str(poison_id) and letter["consumer"] == name


# --- a Kafka outage ----------------------------------------------------------------------------

async def test_kafka_outage_loses_no_event_and_blocks_no_upload(
        cluster: ClusterHandle, api: Api, user: ApiUser, db: asyncpg.Connection) -> None:
    cfg = events_config(cluster)
    relay = OutboxRelay(cfg)
    try:
        checks = relay.ready_checks()
        await checks["postgres"]()
        await checks["kafka"]()  # starts the producer: it is up when the broker goes away
        await cluster.control("stop", "kafka")
        try:
            file_ids = []
            for i in range(3):
                status, body = await api.upload(user, f"during-outage-{i}.bin", os.urandom(100))
                assert status == 201, body
                file_ids.append(body["id"])
            rows = await db.fetch("SELECT event_id FROM outbox WHERE key = ANY($1::text[])",
                                  file_ids)
            ids = [r["event_id"] for r in rows]
            assert len(ids) == 3
            # A started producer times out, then a new one cannot connect. (Another
            # relay, e.g. one `dfms up` runs, may hold the rows for a while: wait for it.)
            for _ in range(60):
                await relay.run_once()
                rows = await db.fetch("SELECT published_at, attempts, last_error FROM outbox "
                                      "WHERE event_id = ANY($1)", ids)
                assert all(r["published_at"] is None for r in rows)
                if all(r["attempts"] >= 2 and r["last_error"] for r in rows):
                    break
                await asyncio.sleep(0.5)
            assert all(r["attempts"] >= 2 and r["last_error"] for r in rows)
            with pytest.raises(Exception):  # noqa: B017 - whatever the client raises
                await checks["kafka"]()
        finally:
            await cluster.control("start", "kafka")
            await ensure_topics(cluster.config.kafka)
        await relay_until_sent(relay, db, ids)
    finally:
        await relay.close()
    wanted = {f.encode() for f in file_ids}
    records = await read_topic(cfg, FILES_TOPIC, lambda r: r.key in wanted)
    assert sorted(uuid.UUID(envelope(r)["event_id"]) for r in records) == sorted(ids)
