"""The Kafka topics DFMS uses, their idempotent creation, and starting a producer."""

from __future__ import annotations

import contextlib
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from dfms.config import KafkaConfig
from dfms.errors import DependencyUnavailable

CHUNKS_TOPIC = "dfms.chunks"
FILES_TOPIC = "dfms.files"
NODES_TOPIC = "dfms.nodes"
DEAD_LETTER_TOPIC = "dfms.deadletter"
TOPICS = (CHUNKS_TOPIC, FILES_TOPIC, NODES_TOPIC, DEAD_LETTER_TOPIC)


async def ensure_topics(cfg: KafkaConfig) -> list[str]:
    """Create any missing DFMS topic; returns the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers,
                                request_timeout_ms=int(cfg.request_timeout_s * 1000))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [t for t in TOPICS if t not in existing]
        if missing:
            new = [NewTopic(t, num_partitions=cfg.topic_partitions, replication_factor=1)
                   for t in missing]
            # Another process may have created them first; that is success too.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
        return missing
    except KafkaError as exc:
        raise DependencyUnavailable(f"Kafka unreachable: {exc}") from exc
    finally:
        await admin.close()


async def start_producer(cfg: KafkaConfig, client_id: str, **options: Any) -> AIOKafkaProducer:
    """A started producer with the settings every DFMS producer shares (``options`` add
    to them); a producer that fails to start is closed again before the error goes up."""
    producer = AIOKafkaProducer(
        bootstrap_servers=cfg.bootstrap_servers, client_id=client_id,
        acks="all", enable_idempotence=False,  # the local broker has no idempotent producer
        request_timeout_ms=int(cfg.request_timeout_s * 1000), **options)
    try:
        await producer.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await producer.stop()
        raise
    return producer
