"""The gateway's feed of live events: one Kafka consumer per gateway process, fanned
out to the open streams of GET /api/v1/events.

Each gateway process is a consumer group of its own (``dfms.gateway-events.<host>.
<pid>.<random>``): any gateway may hold any person's stream, so every gateway must see
every partition, which one shared group would split between them. The group commits
no offsets: where a stream resumes is the client's ``Last-Event-ID`` (a position per
partition, see ``dfms.gateway.notifications``), answered from the bounded replay
buffer when it reaches back that far, else by reading the topic again from that
position with a group-less consumer.

After a broken connection to Kafka the consumer is built again and seeks to where
dispatch stopped, so the live streams see no gap either.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord
from aiokafka import TopicPartition as KafkaTP
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from dfms.config import Config
from dfms.errors import DependencyUnavailable
from dfms.events.envelope import MalformedEvent, decode_event
from dfms.events.topics import STREAM_TOPICS, USER_ACCESS_CHANGED
from dfms.gateway.notifications import (
    Buffered,
    Position,
    ReplayBuffer,
    TopicPartition,
    Viewer,
    visible_to,
)
from dfms.runtime.logs import get_logger
from dfms.runtime.tasks import cancel_and_wait

log = get_logger("gateway.events")

STREAMS_OPEN = Gauge("dfms_events_streams_open", "Live event streams (GET /api/v1/events) "
                     "this gateway holds open")
CONSUMED = Counter("dfms_events_stream_consumed_total",
                   "Events the gateway's live-stream consumer read from Kafka")
REPLAYS = Counter("dfms_events_stream_replays_total",
                  "Streams resumed from a Last-Event-ID, by where the missed events came from",
                  ["source"])  # buffer, kafka, lost
for _source in ("buffer", "kafka", "lost"):
    REPLAYS.labels(_source)

FETCH_MAX_WAIT_MS = 100  # bounds the delivery delay when the broker holds a fetch
RECONNECT_MAX_S = 10.0
HISTORY_TIMEOUT_S = 30.0
SWEEP_INTERVAL_S = 1.0
STOP_TIMEOUT_S = 0.5


class EventsUnavailable(DependencyUnavailable):
    """The live stream cannot be served now (Kafka away, or not read yet)."""


Item = tuple[Buffered, Position] | None  # None: the stream must end


@dataclass(eq=False)
class Subscription:
    viewer: Viewer
    queue: asyncio.Queue[Item]
    gone: Callable[[], bool] = lambda: False  # the client closed the connection
    ended: bool = False  # overflowed or the hub closed: the stream ends, the client resumes

    def offer(self, item: Item) -> None:
        if self.ended:
            return
        if item is None or self.queue.full():
            self.ended = True
            # Make room for the end marker: the client resumes from its last id.
            while self.queue.full():
                self.queue.get_nowait()
            self.queue.put_nowait(None)
            return
        self.queue.put_nowait(item)


@dataclass
class History:
    events: list[Buffered] = field(default_factory=list)
    lost: bool = False  # part of the range is no longer on the topic (or too much of it)


class _Seek(ConsumerRebalanceListener):
    """On (re)assignment, continue each partition where dispatch stopped; a partition
    never read starts at its end (the live stream shows what happens from now on)."""

    def __init__(self, hub: EventHub, consumer: AIOKafkaConsumer) -> None:
        self.hub, self.consumer = hub, consumer

    def on_partitions_revoked(self, revoked: object) -> None:
        pass

    async def on_partitions_assigned(self, assigned: set[KafkaTP]) -> None:
        for ktp in assigned:
            tp = (ktp.topic, ktp.partition)
            if tp in self.hub.position:
                self.consumer.seek(ktp, self.hub.position[tp])
            else:
                self.hub.position[tp] = await self.consumer.position(ktp)
                self.hub.buffer.start(tp, self.hub.position[tp])
        if assigned:
            self.hub.ready.set()


class EventHub:
    def __init__(self, config: Config) -> None:
        self.config = config
        cfg = config.events
        self.buffer = ReplayBuffer(cfg.stream_buffer_events)
        self.position: Position = {}  # per partition: the next offset to dispatch
        self.ready = asyncio.Event()
        self.group_id = (f"dfms.gateway-events.{socket.gethostname()}.{os.getpid()}."
                         f"{uuid.uuid4().hex[:8]}")
        self._subs: set[Subscription] = set()
        self._per_user: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-events")
        self._sweeper = asyncio.create_task(self._sweep(), name="gateway-events-sweep")

    async def close(self) -> None:
        self.end_streams()
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await cancel_and_wait(self._sweeper)

    async def _sweep(self) -> None:
        """End the streams whose client went away. A stream notices a closed
        connection only when it next writes (a heartbeat away), and until then it
        would hold one of its account's slots: a reloaded page could not reconnect.
        One pass a second for all streams, not a timer per stream."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            for sub in list(self._subs):
                if sub.gone():
                    sub.offer(None)

    def end_streams(self) -> None:
        """End every open stream (shutdown): their clients resume elsewhere."""
        for sub in list(self._subs):
            sub.offer(None)

    def end_streams_of(self, user_id: str) -> None:
        """End one account's streams (its role or active flag changed): a client that
        reconnects is authenticated again, so a deactivated account's stream does not
        outlive the change, and a demoted admin's no longer carries cluster events."""
        for sub in list(self._subs):
            if sub.viewer.user_id == user_id:
                sub.offer(None)

    def _consumer(self, group_id: str | None) -> AIOKafkaConsumer:
        kafka = self.config.kafka
        return AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers, group_id=group_id,
            client_id="dfms-gateway-events", enable_auto_commit=False,
            auto_offset_reset="latest" if group_id else "earliest",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            request_timeout_ms=max(int(kafka.request_timeout_s * 1000), 40_000))

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            consumer = self._consumer(self.group_id)
            try:
                consumer.subscribe(list(STREAM_TOPICS), listener=_Seek(self, consumer))
                await consumer.start()
                backoff = 0.5
                await self._consume(consumer)
            except (KafkaError, OSError) as exc:
                log.warning("live-event consumer failed; reconnecting",
                            extra={"error": f"{type(exc).__name__}: {exc}"})
            except Exception:  # a bug must not end live events for good: log, go again
                log.exception("live-event consumer failed unexpectedly; reconnecting")
            finally:
                self.ready.clear()
                await _stop(consumer)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_MAX_S)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            for ktp, records in batches.items():
                for record in records:
                    self._dispatch((ktp.topic, ktp.partition), record)

    def _dispatch(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        CONSUMED.inc()
        self.position[tp] = record.offset + 1
        try:
            event = decode_event(record.value, topic=record.topic, partition=record.partition,
                                 offset=record.offset, key=record.key, headers=record.headers)
        except MalformedEvent:
            return  # not an event: nothing to show (the other consumers dead-letter it)
        item = Buffered(tp, record.offset, event)
        self.buffer.add(tp, record.offset, event)
        snapshot: Position | None = None
        for sub in self._subs:
            if visible_to(event, sub.viewer):
                snapshot = snapshot or dict(self.position)
                sub.offer((item, snapshot))
        if event.type == USER_ACCESS_CHANGED:
            self.end_streams_of(str(event.payload.get("user_id")))

    # --- streams ---------------------------------------------------------------

    def admit(self, user_id: str) -> str | None:
        """Take a stream slot for ``user_id``; the reason it is refused, if it is."""
        cfg = self.config.events
        if len(self._subs) >= cfg.stream_max_total:
            return "total"
        if self._per_user.get(user_id, 0) >= cfg.stream_max_per_user:
            return "per_user"
        return None

    def subscribe(self, viewer: Viewer, gone: Callable[[], bool]
                  ) -> tuple[Subscription, Position]:
        """A new subscription and the position from which it gets live events."""
        sub = Subscription(viewer, asyncio.Queue(self.config.events.stream_queue_events), gone)
        self._subs.add(sub)
        self._per_user[viewer.user_id] = self._per_user.get(viewer.user_id, 0) + 1
        STREAMS_OPEN.set(len(self._subs))
        return sub, dict(self.position)

    def unsubscribe(self, sub: Subscription) -> None:
        if sub not in self._subs:
            return
        self._subs.discard(sub)
        left = self._per_user.get(sub.viewer.user_id, 1) - 1
        if left > 0:
            self._per_user[sub.viewer.user_id] = left
        else:
            self._per_user.pop(sub.viewer.user_id, None)
        STREAMS_OPEN.set(len(self._subs))

    def streams_of(self, user_id: str) -> int:
        return self._per_user.get(user_id, 0)

    # --- missed events -----------------------------------------------------------

    async def missed(self, start: Position, end: Position, viewer: Viewer) -> History:
        """``viewer``'s events at or past ``start`` and before ``end``: from the buffer
        when it holds the whole range, else read again from Kafka."""
        wanted = {tp: start[tp] for tp in end if tp in start and start[tp] < end[tp]}
        if all(self.buffer.covers(tp, offset) for tp, offset in wanted.items()):
            REPLAYS.labels("buffer").inc()
            return History([b for b in self.buffer.between(wanted, end)
                            if visible_to(b.event, viewer)])
        try:
            async with asyncio.timeout(HISTORY_TIMEOUT_S):
                history = await self._read_again(wanted, end, viewer)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise EventsUnavailable(f"cannot read the missed events from Kafka: {exc}") \
                from exc
        REPLAYS.labels("lost" if history.lost else "kafka").inc()
        return history

    async def _read_again(self, wanted: Position, end: Position, viewer: Viewer) -> History:
        consumer = self._consumer(None)
        await consumer.start()
        try:
            ktps = [KafkaTP(*tp) for tp in wanted]
            consumer.assign(ktps)
            history = History()
            begins = await consumer.beginning_offsets(ktps)
            for ktp in ktps:
                tp = (ktp.topic, ktp.partition)
                if begins[ktp] > wanted[tp]:
                    history.lost = True  # retention removed part of it
                consumer.seek(ktp, max(wanted[tp], begins[ktp]))
            await self._read_until(consumer, end, history, viewer)
            return history
        finally:
            await _stop(consumer)

    async def _read_until(self, consumer: AIOKafkaConsumer, end: Position, history: History,
                          viewer: Viewer) -> None:
        limit = self.config.events.stream_replay_max_events
        pending = {ktp for ktp in consumer.assignment()
                   if await consumer.position(ktp) < end[(ktp.topic, ktp.partition)]}
        read = 0
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=500)
            for ktp, records in batches.items():
                stop = end[(ktp.topic, ktp.partition)]
                read += _keep(records, stop, history, viewer, (ktp.topic, ktp.partition))
            if read > limit:  # too far back to replay: the client reloads instead
                history.lost, history.events = True, []
                return
            pending = {ktp for ktp in pending
                       if await consumer.position(ktp) < end[(ktp.topic, ktp.partition)]}


async def _stop(consumer: AIOKafkaConsumer) -> None:
    """Stop a consumer, but not for long: one still joining its group waits for the
    broker's whole rebalance (seconds on the local broker), and the gateway's shutdown
    must not wait for it; nothing is committed, so nothing is lost by leaving early."""
    try:
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await consumer.stop()
        return
    except Exception:  # a timeout or a broker error: close below
        pass
    # Cut short, stop() has not closed the broker connections yet: close them here, or
    # they are left to the garbage collector (ResourceWarnings at interpreter exit).
    with contextlib.suppress(Exception):
        await consumer._client.close()


def _keep(records: list[ConsumerRecord[bytes, bytes]], stop: int, history: History,
          viewer: Viewer, tp: TopicPartition) -> int:
    """Add the viewer's events among ``records`` before offset ``stop``; how many read."""
    for record in records:
        if record.offset >= stop:
            break
        with contextlib.suppress(MalformedEvent):
            event = decode_event(record.value, topic=record.topic,
                                 partition=record.partition, offset=record.offset,
                                 key=record.key, headers=record.headers)
            if visible_to(event, viewer):
                history.events.append(Buffered(tp, record.offset, event))
    return len(records)


def monotonic_deadline(seconds: float) -> Callable[[], float]:
    """Seconds left until ``seconds`` from now (never negative)."""
    end = time.monotonic() + seconds
    return lambda: max(0.0, end - time.monotonic())
