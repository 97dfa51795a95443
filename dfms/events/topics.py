"""The Kafka topics DFMS uses, and their idempotent creation."""

from __future__ import annotations

import contextlib

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
