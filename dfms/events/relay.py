"""The outbox relay: publishes outbox rows to Kafka, in id order, at least once.

One pass (``run_once``) takes batches of unsent rows with ``FOR UPDATE SKIP
LOCKED`` (so several relays can run side by side), publishes them, and stamps
``published_at`` only after the broker acknowledged them (``acks=all``). A
failed row keeps ``published_at`` NULL, gets ``attempts + 1`` and its
``last_error``, and is retried by the next pass: a Kafka outage loses nothing
and never blocks the writers, who only insert rows.

Ordering: the message key is the row's key, so one key's events share a
partition; the producer keeps one request in flight per partition, and rows
are sent in id order. Across relays, a row is only taken when no earlier
unsent row of the same topic and key is held by another relay (it is locked
but "held back" until that one is done). If the broker fails part of a batch,
an acknowledged later row of a key whose earlier row failed stays published;
consumers dedupe by event id, and that narrow reorder needs a broker failure
in the middle of one batch.

Tracing: each send is a PRODUCER span (``<topic> publish``, OpenTelemetry's messaging
conventions) whose parent is the trace context stored with the row, so the publish
shows in the trace of the change that emitted the event; the headers carry that span's
context, and the consumer's span links to it. It ends when the broker acknowledges.

Wake-up: ``run_forever`` LISTENs on ``dfms_outbox`` (the outbox insert trigger
NOTIFYs at commit) and also polls every ``events.relay_interval_s``; after a
failed pass it backs off (doubling, at most ``MAX_BACKOFF_S``) instead of
retrying on every notification. Published rows older than a day are deleted
in bounded batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Gauge

from dfms.config import Config
from dfms.events.envelope import (
    TRACE_HEADERS,
    Headers,
    build_envelope,
    build_headers,
    encode_envelope,
)
from dfms.events.outbox import NOTIFY_CHANNEL
from dfms.events.topics import ensure_topics, start_producer
from dfms.metadata.db import Connection, connect
from dfms.runtime.ops import ReadyCheck
from dfms.runtime.pooled import PooledService
from dfms.runtime.service import PassStats
from dfms.runtime.tasks import cancel_and_wait

PUBLISHED = Counter("dfms_outbox_published_total", "Outbox events published to Kafka",
                    ["topic"])
BACKLOG = Gauge("dfms_outbox_backlog", "Outbox events not yet published")
OLDEST_UNSENT = Gauge("dfms_outbox_oldest_unsent_age_seconds",
                      "Age of the oldest outbox event not yet published (0 when none)")
# The age is the head of the relay's work list (lowest id), one row of the partial
# index: a min(occurred_at) would read every unsent row's heap tuple.
_UNSENT = """
SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL) AS n,
       (SELECT extract(epoch FROM now() - occurred_at) FROM outbox
        WHERE published_at IS NULL ORDER BY id LIMIT 1) AS age
"""
PUBLISH_ERRORS = Counter("dfms_outbox_publish_errors_total",
                         "Outbox events whose publish attempt failed")

RETENTION = timedelta(days=1)     # published rows are kept this long
CLEANUP_BATCH = 5000              # rows one cleanup DELETE removes at most
CLEANUP_EVERY_S = 60.0
MAX_BATCHES_PER_PASS = 20         # then the next pass starts at once
MAX_BACKOFF_S = 10.0
LISTEN_RECHECK_S = 30.0

# The oldest unsent rows not locked by another relay; "held" marks a row whose
# key has an earlier unsent row outside this batch (another relay holds it).
_CLAIM = """
WITH batch AS (
    SELECT id FROM outbox WHERE published_at IS NULL
    ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
)
SELECT o.id, o.event_id, o.topic, o.key, o.type, o.payload::text AS payload,
       o.schema_version, o.occurred_at, o.trace_context::text AS trace_context,
       EXISTS (SELECT 1 FROM outbox e
               WHERE e.published_at IS NULL AND e.topic = o.topic AND e.key = o.key
                 AND e.id < o.id AND e.id NOT IN (SELECT id FROM batch)) AS held
FROM outbox o JOIN batch USING (id)
ORDER BY o.id
"""

_MARK_PUBLISHED = """
UPDATE outbox SET published_at = now(), attempts = attempts + 1, last_error = NULL
WHERE id = ANY($1::bigint[])
"""

_MARK_FAILED = """
UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1::bigint[])
"""

_CLEANUP = """
DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox WHERE published_at < now() - $1::interval
    ORDER BY published_at LIMIT $2)
"""


KEY_BLOCKED = "an earlier event with the same key could not be sent"

_TRACER = trace.get_tracer("dfms.events.relay")


@dataclass(frozen=True, slots=True)
class _Batch:
    taken: int            # rows claimed (held-back ones included)
    published: int = 0
    failed: int = 0
    broken: bool = False  # the producer failed, not just one message


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text[:2000]


def start_publish_span(row: asyncpg.Record, tracer: trace.Tracer = _TRACER) -> trace.Span:
    """The PRODUCER span of one row's send: a child of the change that emitted it (the
    stored context), else of the current span (the relay's pass)."""
    stored = json.loads(row["trace_context"]) if row["trace_context"] else None
    parent = propagate.extract(stored) if stored else None
    return tracer.start_span(
        f"{row['topic']} publish", context=parent, kind=SpanKind.PRODUCER,
        attributes={"messaging.system": "kafka", "messaging.operation": "publish",
                    "messaging.destination.name": row["topic"],
                    "messaging.message.id": str(row["event_id"]),
                    "dfms.event.type": row["type"]})


def publish_headers(row: asyncpg.Record, span: trace.Span) -> Headers:
    """The event's headers with the publish span's context as ``traceparent``. Without
    tracing in this process that is the stored context itself (the no-op span carries
    its parent's), so what the emitter recorded still reaches the consumer."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    context = {k: carrier[k] for k in TRACE_HEADERS if carrier.get(k)}
    return build_headers(row["event_id"], row["type"], context or None)


def end_publish_span(span: trace.Span, outcome: asyncio.Future[Any] | BaseException) -> None:
    """End the span when the broker answered (the future) or the send itself failed."""
    error: BaseException | None
    if isinstance(outcome, BaseException):
        error = outcome
    elif outcome.cancelled():
        error = asyncio.CancelledError()
    else:
        error = outcome.exception()
        if error is None:  # acknowledged: where the message landed
            meta = outcome.result()
            span.set_attributes({"messaging.kafka.destination.partition": meta.partition,
                                 "messaging.kafka.message.offset": meta.offset})
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, _error_text(error)))
    span.end()


class OutboxRelay(PooledService):
    name = "event_relay"

    def __init__(self, config: Config, pool: asyncpg.Pool | None = None) -> None:
        super().__init__(config, pool)
        self.interval_s = config.events.relay_interval_s
        self.batch_size = config.events.relay_batch_size
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        self._more = False          # the last pass stopped with rows still waiting
        self._pass_failed = False
        self._next_cleanup = 0.0

    # --- lifecycle -----------------------------------------------------------

    @property
    def ops_port(self) -> int:
        return self.config.events.ops_port

    async def close_resources(self) -> None:
        await self._reset_producer()

    def ready_checks(self) -> dict[str, ReadyCheck]:
        async def kafka() -> None:
            producer = await self._get_producer()
            await producer.client.fetch_all_metadata()

        return {**super().ready_checks(), "kafka": kafka}

    async def _get_producer(self) -> AIOKafkaProducer:
        """The producer, started on first use (and again after it was reset)."""
        async with self._producer_lock:
            if self._producer is not None:
                return self._producer
            self._producer = await start_producer(self.config.kafka, f"dfms-{self.name}",
                                                  max_batch_size=256 * 1024, linger_ms=2)
            return self._producer

    async def _check_topics(self, producer: AIOKafkaProducer, topics: set[str]) -> None:
        """Create any topic of ``topics`` the broker lacks before sending to it.

        A broker that lost its topics (a memory-only broker after a restart; the
        local one is durable since it stores on S3) may acknowledge writes to a topic
        that does not exist and then serve nothing of them: those events would be
        marked published and never delivered. One metadata request per batch rules
        that out.
        """
        metadata = await producer.client.fetch_all_metadata()
        missing = topics - metadata.topics()
        if missing:
            created = await ensure_topics(self.config.kafka)
            self.log.warning("the broker lacked topics; created them before publishing",
                             extra={"missing": sorted(missing), "created": created})

    async def _reset_producer(self) -> None:
        """Drop the producer (after a failure); the next publish starts a fresh one."""
        async with self._producer_lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.config.kafka.request_timeout_s):
                    await producer.stop()

    # --- the pass ------------------------------------------------------------

    async def run_once(self) -> PassStats:
        pool = await self.get_pool()
        stats = PassStats()
        self._more = False
        for _ in range(MAX_BATCHES_PER_PASS):
            batch = await self._publish_batch(pool, stats)
            if batch.broken or batch.taken < self.batch_size or batch.published == 0:
                break
        else:
            self._more = True
        await self._cleanup(pool, stats)
        unsent = await pool.fetchrow(_UNSENT)
        assert unsent is not None  # an aggregate query gives one row
        BACKLOG.set(unsent["n"])
        OLDEST_UNSENT.set(float(unsent["age"] or 0.0))
        # Back off only when nothing gets through: one bad row must not slow the rest.
        self._pass_failed = stats.errors > 0 and not stats.counters.get("published")
        return stats

    async def _publish_batch(self, pool: asyncpg.Pool, stats: PassStats) -> _Batch:
        """Claim, publish and mark one batch of rows."""
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_CLAIM, self.batch_size)
            ready = [r for r in rows if not r["held"]]
            if len(ready) < len(rows):
                stats.add("held_back", len(rows) - len(ready))
            if not ready:
                return _Batch(len(rows))
            published, failures, broken = await self._publish(ready)
            if published:
                await conn.execute(_MARK_PUBLISHED, [r["id"] for r in published])
                by_topic: dict[str, int] = defaultdict(int)
                for r in published:
                    by_topic[r["topic"]] += 1
                for topic, n in by_topic.items():
                    PUBLISHED.labels(topic).inc(n)
                stats.add("published", len(published))
            failed = 0
            for error, ids in failures.items():
                await conn.execute(_MARK_FAILED, ids, error)
                failed += len(ids)
        if failed:
            PUBLISH_ERRORS.inc(failed)
            stats.add("failed", failed)
            stats.errors += failed
            self.log.warning("publishing outbox events failed; they stay queued",
                             extra={"failed": failed, "error": next(iter(failures))})
        if broken:
            await self._reset_producer()
        return _Batch(len(rows), len(published), failed, broken)

    async def _publish(self, rows: list[asyncpg.Record]
                       ) -> tuple[list[asyncpg.Record], dict[str, list[int]], bool]:
        """Send ``rows`` in order.

        Returns the acknowledged rows, the failed ids by error, and whether the
        producer failed (rather than single messages) and should be replaced.
        """
        failures: dict[str, list[int]] = defaultdict(list)
        try:
            producer = await self._get_producer()
        except Exception as exc:
            failures[_error_text(exc)] = [r["id"] for r in rows]
            return [], failures, True
        try:
            await self._check_topics(producer, {r["topic"] for r in rows})
        except Exception as exc:
            failures[_error_text(exc)] = [r["id"] for r in rows]
            return [], failures, True
        sent: list[tuple[asyncpg.Record, asyncio.Future[Any]]] = []
        blocked: set[tuple[str, str]] = set()  # keys with a refused row earlier in the batch
        broken = False
        for i, row in enumerate(rows):
            entity = (row["topic"], row["key"])
            if entity in blocked:  # later rows of that key wait: order before progress
                failures[KEY_BLOCKED].append(row["id"])
                continue
            try:
                future = await self._send(producer, row)
            except MessageSizeTooLargeError as exc:  # this message only: the rest go on
                failures[_error_text(exc)].append(row["id"])
                blocked.add(entity)
                continue
            except Exception as exc:  # no metadata, buffer full: stop here, keep the order
                failures[_error_text(exc)].extend(r["id"] for r in rows[i:])
                broken = True
                break
            sent.append((row, future))
        results = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        published = []
        for (row, _), result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                failures[_error_text(result)].append(row["id"])
                broken = True
            else:
                published.append(row)
        return published, failures, broken

    async def _send(self, producer: AIOKafkaProducer, row: asyncpg.Record
                    ) -> asyncio.Future[Any]:
        """Queue one row's message inside its publish span, which ends at the broker's
        answer (or here, if the producer refuses the message)."""
        span = start_publish_span(row)
        try:
            future: asyncio.Future[Any] = await producer.send(
                row["topic"], value=self._value(row), key=row["key"].encode(),
                headers=publish_headers(row, span))
        except BaseException as exc:
            end_publish_span(span, exc)
            raise
        future.add_done_callback(lambda done: end_publish_span(span, done))
        return future

    @staticmethod
    def _value(row: asyncpg.Record) -> bytes:
        return encode_envelope(build_envelope(row["event_id"], row["type"], row["occurred_at"],
                                              json.loads(row["payload"]),
                                              row["schema_version"]))

    async def _cleanup(self, pool: asyncpg.Pool, stats: PassStats) -> None:
        now = time.monotonic()
        if now < self._next_cleanup:
            return
        status = await pool.execute(_CLEANUP, RETENTION, CLEANUP_BATCH)
        deleted = int(status.split()[-1])
        if deleted:
            stats.add("cleaned_up", deleted)
        # A full batch means more are due: clean again next pass.
        self._next_cleanup = now if deleted >= CLEANUP_BATCH else now + CLEANUP_EVERY_S

    # --- the loop ------------------------------------------------------------

    async def run_forever(self, interval_s: float) -> None:
        listener = asyncio.create_task(self._listen(), name=f"{self.name}-listen")
        failures = 0
        try:
            while True:
                self._wake.clear()  # a NOTIFY during the pass makes the next one start at once
                self._pass_failed = True  # unless run_once finishes cleanly
                await self._timed_pass()
                if self._pass_failed:
                    failures += 1
                    await asyncio.sleep(min(interval_s * 2 ** (failures - 1), MAX_BACKOFF_S))
                    continue
                failures = 0
                if self._more:
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval_s):
                        await self._wake.wait()
        finally:
            await cancel_and_wait(listener)

    def _on_notify(self, *_: object) -> None:
        self.trigger()

    async def _listen(self) -> None:
        """Keep a LISTEN connection open; reconnect (and run a pass) after it drops."""
        backoff = 0.5
        while True:
            conn: Connection | None = None
            try:
                conn = await connect(self.config.postgres)
                closed = asyncio.Event()
                conn.add_termination_listener(lambda _c, done=closed: done.set())
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                self.trigger()  # whatever committed while nobody listened
                backoff = 0.5
                while not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(LISTEN_RECHECK_S):
                            await closed.wait()
                    if not conn.is_closed():
                        await conn.execute("SELECT 1")  # a silently dead link raises here
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.warning("LISTEN connection failed; polling until it is back",
                                 exc_info=True)
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, LISTEN_RECHECK_S)
