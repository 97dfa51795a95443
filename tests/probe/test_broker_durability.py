"""The local Kafka broker is durable: a restart loses no message and no committed offset.

`dfms up` runs Tansu on its own S3 store (`kafka-store`, not a ring node). The
probe publishes, lets a consumer group commit, publishes more, restarts the
broker through `dfms cluster`, and then reads: the group resumes exactly after
its committed offsets, a new group reads everything from the start, and the DFMS
topics (with the events the relay published before the restart) are still there
without anyone creating them again. A ring node going down does not touch it.
"""

from __future__ import annotations

import uuid

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from dfms.config import Config
from dfms.events.topics import FILES_TOPIC, TOPICS, start_producer
from tests.probe.conftest import ClusterFactory
from tests.support.api import Api
from tests.support.probe import event_type, read_topic, wait_until

TOPIC = "dfms.test.durability"


async def produce(cfg: Config, values: list[bytes]) -> None:
    producer = await start_producer(cfg.kafka, "durability-probe")
    try:
        for i, value in enumerate(values):
            await producer.send_and_wait(TOPIC, value=value, key=str(i % 5).encode())
    finally:
        await producer.stop()


async def consume(cfg: Config, group: str, *, commit: bool) -> list[bytes]:
    """Everything the group has not consumed yet (stops after 3 s of silence)."""
    consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=cfg.kafka.bootstrap_servers,
                                group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    got: list[bytes] = []
    try:
        while batch := await consumer.getmany(timeout_ms=3000):
            got += [r.value or b"" for records in batch.values() for r in records]
        if commit:
            await consumer.commit()
    finally:
        await consumer.stop()
    return got


# "kill": SIGKILL, as a crash or a killed `dfms up` (which sends the broker SIGKILL) does.
@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_broker_restart_keeps_messages_and_offsets(fresh_cluster: ClusterFactory,
                                                         how: str) -> None:
    cluster = await fresh_cluster(nodes=3)
    cfg = cluster.config
    assert cluster.info["kafka"]["storage"].startswith("s3://")
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()

    async with aiohttp.ClientSession() as http:
        api = Api(cluster.gateway_url, http)
        owner = await api.register()
        status, uploaded = await api.upload(owner, "before-restart.txt", b"durable events")
    assert status == 201, uploaded
    file_id = str(uploaded["id"])

    async def upload_event_published() -> bool:
        return any(event_type(r) == "file.uploaded" and file_id in (r.value or b"").decode()
                   for r in await read_topic(cfg, FILES_TOPIC, stall_s=1.0))
    await wait_until("the upload event on dfms.files", upload_event_published, timeout_s=30)

    first = [f"first-{i}".encode() for i in range(40)]
    second = [f"second-{i}".encode() for i in range(25)]
    await produce(cfg, first)
    assert sorted(await consume(cfg, "probe-old", commit=True)) == sorted(first)
    await produce(cfg, second)

    # A ring node going down leaves the broker alone: its store is not on the ring.
    await cluster.control("kill", "node-2")
    await cluster.control(how, "kafka")
    await cluster.control("start", "kafka")

    assert sorted(await consume(cfg, "probe-old", commit=True)) == sorted(second)
    assert sorted(await consume(cfg, f"probe-new-{uuid.uuid4()}", commit=False)) == \
        sorted(first + second)
    records = await read_topic(cfg, FILES_TOPIC)
    assert any(event_type(r) == "file.uploaded" and file_id in (r.value or b"").decode()
               for r in records)
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.kafka.bootstrap_servers)
    await admin.start()
    try:
        assert set(TOPICS) <= set(await admin.list_topics())
    finally:
        await admin.close()
