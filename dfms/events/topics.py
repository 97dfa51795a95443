"""The Kafka topics DFMS uses and the event types published on them, the topics'
idempotent creation, and starting a producer."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from dfms.config import KafkaConfig
from dfms.errors import BrokerUnavailable

CHUNKS_TOPIC = "dfms.chunks"
FILES_TOPIC = "dfms.files"
NODES_TOPIC = "dfms.nodes"
DEAD_LETTER_TOPIC = "dfms.deadletter"
TOPICS = (CHUNKS_TOPIC, FILES_TOPIC, NODES_TOPIC, DEAD_LETTER_TOPIC)

# Event types (the envelope's ``type``), by the topic they are published on. The chunk
# events announce repair work: the replication manager wakes on them, and the repair_queue
# row written with each is what makes the work durable.
FILE_UPLOADED = "file.uploaded"  # FILES_TOPIC
FILE_DELETED = "file.deleted"  # FILES_TOPIC
FILE_MOVED = "file.moved"  # FILES_TOPIC: renamed and/or moved
FILE_RESTORED = "file.restored"  # FILES_TOPIC: back from the trash
FOLDER_RESTORED = "folder.restored"  # FILES_TOPIC: a folder back from the trash
FOLDER_CREATED = "folder.created"  # FILES_TOPIC
FOLDER_MOVED = "folder.moved"  # FILES_TOPIC: renamed and/or moved
FOLDER_DELETED = "folder.deleted"  # FILES_TOPIC: to the trash, with what it holds
FILE_VERSION_RESTORED = "file.version_restored"  # FILES_TOPIC: an old version made current
UPLOAD_FAILED = "upload.failed"  # FILES_TOPIC: multipart expired, quota exceeded
SHARE_USED = "share.used"  # FILES_TOPIC: a share link's download
QUOTA_WARNING = "quota.warning"  # FILES_TOPIC: usage crossed QUOTA_WARNING_RATIO
# FILES_TOPIC, internal: an admin changed an account's role or active flag. Every
# gateway ends that account's live streams, whose reconnect is authenticated anew.
USER_ACCESS_CHANGED = "user.access_changed"
CHUNK_UNDER_REPLICATED = "chunk.under_replicated"  # CHUNKS_TOPIC
CHUNK_REPLICA_BAD = "chunk.replica_bad"  # CHUNKS_TOPIC
NODE_HEALTH_CHANGED = "node.health_changed"  # NODES_TOPIC
RING_CHANGED = "ring.changed"  # NODES_TOPIC

# Who may see an event on the gateway's live stream (GET /api/v1/events). Events of
# USER_EVENTS carry the account they concern as ``payload["owner_id"]``; ADMIN_EVENTS go
# to administrators; any other type (ring.changed...) is internal.
USER_EVENTS = frozenset({FILE_UPLOADED, FILE_DELETED, FILE_MOVED, FILE_RESTORED,
                         FOLDER_RESTORED, FOLDER_CREATED, FOLDER_MOVED, FOLDER_DELETED,
                         FILE_VERSION_RESTORED, UPLOAD_FAILED, SHARE_USED, QUOTA_WARNING})
ADMIN_EVENTS = frozenset({NODE_HEALTH_CHANGED, CHUNK_UNDER_REPLICATED, CHUNK_REPLICA_BAD})
STREAM_TOPICS = (FILES_TOPIC, NODES_TOPIC, CHUNKS_TOPIC)  # what the live stream reads
# upload.failed's ``reason``
UPLOAD_EXPIRED = "multipart_expired"
UPLOAD_OVER_QUOTA = "quota_exceeded"
QUOTA_WARNING_RATIO = 0.9  # quota.warning when a commit takes usage across this share

RETRY_INTERVAL_S = 2.0  # between attempts of ensure_topics(wait_s=...)


async def ensure_topics(cfg: KafkaConfig, *, wait_s: float = 0.0) -> list[str]:
    """Create any missing DFMS topic (``kafka.topic_partitions`` partitions,
    ``kafka.topic_replication_factor`` replicas); returns the names this call created.

    An unreachable broker, or one that refuses a topic (e.g. fewer brokers than the
    replication factor), raises ``BrokerUnavailable`` naming why. With ``wait_s``
    the attempt is repeated until it succeeds or ``wait_s`` seconds have passed: the
    brokers of a new cluster come up one by one. Topics that exist are left as they
    are, whatever their replication.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await _create_missing(cfg)
        except BrokerUnavailable:
            if time.monotonic() + RETRY_INTERVAL_S > deadline:
                raise
        await asyncio.sleep(RETRY_INTERVAL_S)


async def _create_missing(cfg: KafkaConfig) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers,
                                request_timeout_ms=int(cfg.request_timeout_s * 1000))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [t for t in TOPICS if t not in existing]
        if not missing:
            return []
        response = await admin.create_topics([
            NewTopic(t, num_partitions=cfg.topic_partitions,
                     replication_factor=cfg.topic_replication_factor) for t in missing])
    except KafkaError as exc:
        raise BrokerUnavailable(f"Kafka unreachable: {exc}") from exc
    finally:
        await admin.close()
    return _created(response.topic_errors, cfg.topic_replication_factor)


def _created(topic_errors: Iterable[tuple[Any, ...]], replication_factor: int) -> list[str]:
    """The topics a CreateTopics answer created; raises when it refused any. One that
    another process created first counts as present, not as created."""
    created, refused = [], []
    for topic, code, *message in topic_errors:
        error = for_code(code)
        if code == 0:
            created.append(topic)
        elif error is not TopicAlreadyExistsError:
            detail = f": {message[0]}" if message and message[0] else ""
            refused.append(f"{topic} ({error.__name__}{detail})")
    if refused:
        raise BrokerUnavailable(
            f"Kafka refused to create topic(s) with replication factor {replication_factor}: "
            + "; ".join(refused))
    return created


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
