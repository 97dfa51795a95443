"""A reusable Kafka consumer for the services that react to DFMS events.

``EventConsumer`` joins a consumer group, decodes each message into an
``Event`` and calls ``handler(conn, event)`` inside a PostgreSQL transaction
that also records ``(consumer, event_id)`` in ``processed_events``: the
handler's effects and the "done" mark commit together, and a redelivered
event (after a rebalance, a crash before the offset commit, or a duplicate
publish by the relay) is skipped. Offsets are committed only after the
messages before them were handled (auto-commit is off), so delivery is at
least once and handling is effectively once.

A failing handler is retried with exponential backoff
(``events.consumer_retry_base_s``, doubling) up to
``events.consumer_max_attempts`` attempts; then the event goes to the
dead-letter topic with its origin (topic, partition, offset), the error and
the attempt count, and the consumer moves on. A message that is not an event
envelope goes there at once. Losing PostgreSQL (no connection, or the
connection breaking) is not the event's fault: it is retried every
``INFRA_RETRY_MAX_S`` without counting attempts. The dead-letter publish
itself is retried until it works, so a Kafka outage never drops an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import KafkaError
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind
from prometheus_client import Counter

from dfms.config import Config
from dfms.errors import BrokerUnavailable
from dfms.events.envelope import Event, MalformedEvent, decode_event, dump_json
from dfms.events.lag import LagMeter
from dfms.events.topics import DEAD_LETTER_TOPIC, start_producer
from dfms.metadata.db import Connection, create_pool
from dfms.runtime.logs import get_logger
from dfms.runtime.service import Service

Handler = Callable[[Connection, Event], Awaitable[None]]

_TRACER = trace.get_tracer("dfms.events")

CONSUMED = Counter("dfms_events_consumed_total", "Events a consumer finished with",
                   ["consumer", "outcome"])  # handled, duplicate, dead_lettered
HANDLER_ERRORS = Counter("dfms_events_handler_errors_total", "Failed handler attempts",
                         ["consumer"])

POLL_TIMEOUT_MS = 500
MAX_RECORDS = 100
INFRA_RETRY_MAX_S = 10.0
# A JoinGroup request waits broker-side for the whole rebalance (5-20 s on the
# local broker), so the consumer's request timeout never goes below aiokafka's
# default even when kafka.request_timeout_s is set shorter.
MIN_CONSUMER_REQUEST_TIMEOUT_MS = 40_000

# PostgreSQL is unreachable (or restarting): no attempt is counted against the event.
_DB_DOWN = (OSError, TimeoutError, asyncpg.PostgresConnectionError,
            asyncpg.CannotConnectNowError)

_RECORD = """
INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2)
ON CONFLICT DO NOTHING RETURNING true
"""


def producer_links(event: Event) -> list[Link]:
    """A link to the span that emitted ``event``; none when it carried no trace context."""
    if not event.traceparent:
        return []
    context = trace.get_current_span(propagate.extract(event.headers)).get_span_context()
    return [Link(context)] if context.is_valid else []


class _Stopping(Exception):
    """Raised inside the loop when stop() interrupts a retry or backoff."""


class _InfraError(Exception):
    """No connection to PostgreSQL: retried without counting against the event."""


class _Assignments(ConsumerRebalanceListener):
    def __init__(self, assigned: asyncio.Event) -> None:
        self.assigned = assigned

    def on_partitions_revoked(self, revoked: object) -> None:
        self.assigned.clear()

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if assigned:
            self.assigned.set()


class EventConsumer(Service):
    """Consume ``topics`` in group ``group_id`` and hand every event to ``handler``.

    ``name`` identifies the consumer in ``processed_events`` and in metrics; two
    consumers with the same name share their "already handled" set.

    A ``Service``: ``start()``/``stop()`` are idempotent, a failed start closes what
    it opened (the Kafka consumer, the pool it made), and ``stop()`` after it is a
    no-op. It runs inside another service, so it sets no ``dfms_service_up``.
    """

    reports_up = False

    def __init__(self, config: Config, name: str, topics: Sequence[str], handler: Handler, *,
                 group_id: str | None = None, pool: asyncpg.Pool | None = None,
                 auto_offset_reset: str = "earliest") -> None:
        if not topics:
            raise ValueError("an EventConsumer needs at least one topic")
        self.name = name
        super().__init__()
        self.config = config
        self.topics = list(topics)
        self.handler = handler
        self.group_id = group_id or f"dfms.{name}"
        self.auto_offset_reset = auto_offset_reset
        self.max_attempts = config.events.consumer_max_attempts
        self.retry_base_s = config.events.consumer_retry_base_s
        self.log = get_logger(f"events.{name}")
        self._pool = pool
        self._own_pool = pool is None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._assigned = asyncio.Event()
        self._lag = LagMeter(self.group_id, self.topics)

    # --- lifecycle -----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _start(self) -> None:
        if self._pool is None:
            self._pool = await create_pool(self.config.postgres)
        kafka = self.config.kafka
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers,
            group_id=self.group_id, client_id=f"dfms-{self.name}",
            enable_auto_commit=False, auto_offset_reset=self.auto_offset_reset,
            request_timeout_ms=max(int(kafka.request_timeout_s * 1000),
                                   MIN_CONSUMER_REQUEST_TIMEOUT_MS),
            max_poll_records=MAX_RECORDS)
        self._consumer = consumer  # from here on, a failed start's _stop() closes it
        self._assigned.clear()
        consumer.subscribe(self.topics, listener=_Assignments(self._assigned))
        try:
            await consumer.start()
        except KafkaError as exc:
            raise BrokerUnavailable(f"Kafka unreachable: {exc}") from exc
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"consumer-{self.name}")

    async def _stop(self) -> None:
        """Finish the event in hand (no new retries), commit, leave the group, close."""
        task, self._task = self._task, None
        self._stopping.set()
        try:
            if task is not None:
                await task
        except Exception:
            self.log.exception("the consume loop had failed")
        finally:
            consumer, self._consumer = self._consumer, None
            if consumer is not None:
                with contextlib.suppress(Exception):
                    await consumer.stop()
            await self._close_producer()
            await self._close_pool()

    async def _close_pool(self) -> None:
        if self._own_pool and self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.config.kafka.request_timeout_s):
                    await producer.stop()

    async def wait_assigned(self, timeout_s: float = 60.0) -> set[TopicPartition]:
        """Wait until the group gave this consumer partitions (tests, start-up probes)."""
        assert self._consumer is not None, "start() first"
        async with asyncio.timeout(timeout_s):
            await self._assigned.wait()
        return set(self._consumer.assignment())

    async def committed(self) -> dict[TopicPartition, int | None]:
        """The group's committed offsets of the partitions this consumer holds now."""
        assert self._consumer is not None, "start() first"
        return {tp: await self._consumer.committed(tp) for tp in self._consumer.assignment()}

    # --- the loop ------------------------------------------------------------

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            while not self._stopping.is_set():
                batches = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS)
                for tp, records in batches.items():
                    done: ConsumerRecord[bytes, bytes] | None = None
                    try:
                        for record in records:
                            if self._stopping.is_set():
                                break
                            await self._process(record)
                            done = record
                    except _Stopping:
                        pass
                    finally:
                        if done is not None:
                            await self._commit(consumer, tp, done.offset + 1)
                            self._lag.handled(tp, done.offset + 1)
                    if self._stopping.is_set():
                        # What was fetched but not handled is redelivered to the next owner.
                        return
                self._lag.update(consumer)
        except Exception:
            self.log.exception("the consume loop failed; the consumer stopped")
            raise

    async def _commit(self, consumer: AIOKafkaConsumer, tp: TopicPartition,
                      offset: int) -> None:
        try:
            await consumer.commit({tp: offset})
        except KafkaError as exc:
            # A rebalance took the partition: its next owner redelivers, and the
            # processed_events table turns that into skips.
            self.log.warning("offset commit failed", extra={"topic": tp.topic,
                             "partition": tp.partition, "error": str(exc)})

    async def _process(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            event = decode_event(record.value, topic=record.topic, partition=record.partition,
                                 offset=record.offset, key=record.key,
                                 headers=record.headers)
        except MalformedEvent as exc:
            await self._dead_letter(record, None, str(exc), 0)
            return
        # A root span linked to the change that emitted the event (its trace context rode
        # in the outbox row and the Kafka headers): the consumer's work is its own trace,
        # often much later, yet one click away from the request that caused it.
        with _TRACER.start_as_current_span(
                f"{event.topic} process", context=Context(), kind=SpanKind.CONSUMER,
                links=producer_links(event), attributes=self._span_attributes(event)):
            await self._handle_with_retries(record, event)

    def _span_attributes(self, event: Event) -> dict[str, str | int]:
        return {"messaging.system": "kafka", "messaging.operation": "process",
                "messaging.destination.name": event.topic,
                "messaging.kafka.consumer.group": self.name,
                "messaging.kafka.destination.partition": event.partition,
                "messaging.kafka.message.offset": event.offset,
                "messaging.message.id": str(event.event_id), "dfms.event.type": event.type}

    async def _handle_with_retries(self, record: ConsumerRecord[bytes, bytes],
                                   event: Event) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                outcome = await self._handle_once(event)
            except _InfraError as exc:  # not the event's fault: retry without a limit
                attempt -= 1
                self.log.warning("cannot reach PostgreSQL; retrying", extra={"error": str(exc)})
                await self._pause(INFRA_RETRY_MAX_S)
                continue
            except Exception as exc:
                HANDLER_ERRORS.labels(self.name).inc()
                error = f"{type(exc).__name__}: {exc}"
                if attempt >= self.max_attempts:
                    self.log.error("giving up on an event: dead-lettered",
                                   extra={"event_id": str(event.event_id), "type": event.type,
                                          "attempts": attempt, "error": error})
                    await self._dead_letter(record, event, error, attempt)
                    return
                self.log.warning("event handler failed; retrying",
                                 extra={"event_id": str(event.event_id), "attempt": attempt,
                                        "error": error})
                await self._pause(self.retry_base_s * 2 ** (attempt - 1))
                continue
            CONSUMED.labels(self.name, outcome).inc()
            return

    async def _handle_once(self, event: Event) -> str:
        """One attempt: handler and processed-id record in one transaction."""
        assert self._pool is not None
        try:
            conn = await self._pool.acquire()
        except _DB_DOWN as exc:
            raise _InfraError(str(exc)) from exc
        try:
            async with conn.transaction():
                if not await conn.fetchval(_RECORD, self.name, event.event_id):
                    return "duplicate"
                await self.handler(conn, event)
            return "handled"
        except (asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError) as exc:
            raise _InfraError(str(exc)) from exc  # the connection broke, not the event
        finally:
            await self._pool.release(conn)

    async def _pause(self, seconds: float) -> None:
        """Sleep, unless stop() is asked for: then give the event up to the next owner."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        if self._stopping.is_set():
            raise _Stopping

    # --- dead letters --------------------------------------------------------

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], event: Event | None,
                           error: str, attempts: int) -> None:
        """Publish to the dead-letter topic; retried until it works (or stop)."""
        original: Any
        try:
            original = json.loads(record.value or b"")
        except ValueError:
            original = (record.value or b"").decode(errors="replace")
        letter = {
            "consumer": self.name, "group_id": self.group_id,
            "topic": record.topic, "partition": record.partition, "offset": record.offset,
            "key": None if record.key is None else record.key.decode(errors="replace"),
            "event_id": None if event is None else str(event.event_id),
            "event_type": None if event is None else event.type,
            "error": error[:4000], "attempts": attempts,
            "dead_lettered_at": datetime.now(UTC), "event": original,
        }
        headers = [(k, v) for k, v in record.headers or () if v is not None]
        headers += [("dlq_consumer", self.name.encode()),
                    ("dlq_origin", f"{record.topic}/{record.partition}/{record.offset}".encode())]
        delay = self.retry_base_s
        while True:
            try:
                producer = await self._get_producer()
                await producer.send_and_wait(DEAD_LETTER_TOPIC, dump_json(letter).encode(),
                                             key=record.key, headers=headers)
                CONSUMED.labels(self.name, "dead_lettered").inc()
                return
            except KafkaError as exc:
                self.log.warning("dead-letter publish failed; retrying",
                                 extra={"error": str(exc)})
                await self._close_producer()
                await self._pause(delay)
                delay = min(delay * 2, INFRA_RETRY_MAX_S)

    async def _get_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            self._producer = await start_producer(self.config.kafka, f"dfms-{self.name}-dlq")
        return self._producer
