"""Ring persistence in PostgreSQL (table ``ring_state``, one row per epoch).

Connections and pools are always passed in; this module opens none. Members
are sent and read as text and cast in SQL, so the result does not depend on
whether the caller's pool registered a JSON codec for jsonb.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Protocol, Self

import asyncpg

from dfms.events import outbox
from dfms.events.topics import NODES_TOPIC, RING_CHANGED
from dfms.metadata.db import Connection
from dfms.ring.errors import InvalidRing, RingConflict
from dfms.ring.model import DRAINING, RingData, RingMember, validate
from dfms.ring.ring import Ring
from dfms.ring.serialize import checksum, members_from_doc, members_from_json, members_to_json

logger = logging.getLogger("dfms.ring")

# Serializes ring writers across the whole database. The value is "dfmsring"
# in ASCII, so it is recognisable in pg_locks.
ADVISORY_LOCK_KEY = 0x64666D7372696E67

_SELECT = "SELECT epoch, vnodes_per_weight, members::text AS members, checksum FROM ring_state"
_LATEST = _SELECT + " ORDER BY epoch DESC LIMIT 1"
# Returns the latest row only when its epoch differs from $1, so an unchanged
# ring costs one round trip and no payload.
_LATEST_IF_CHANGED = (
    _SELECT + " WHERE epoch = (SELECT max(epoch) FROM ring_state)"
    " AND epoch IS DISTINCT FROM $1::bigint"
)
_MEMBERS_OF = "SELECT members::text FROM ring_state WHERE epoch = $1"
# Every saved ring is announced in the saving transaction (the transactional outbox),
# so the replication manager rebalances after any change, whoever made it.
RING_EVENT_KEY = "ring"
_INSERT = (
    "INSERT INTO ring_state (epoch, vnodes_per_weight, members, checksum)"
    " VALUES ($1, $2, $3::text::jsonb, $4)"
)


class Fetcher(Protocol):
    """What reading needs: an asyncpg ``Connection`` or ``Pool`` (or a fake)."""

    async def fetchrow(self, query: str, *args: Any) -> Any: ...


async def load_latest(conn: Fetcher) -> RingData | None:
    """The highest-epoch ring, or ``None`` if none was saved.

    Raises ``InvalidRing`` when the stored row breaks a rule or its checksum
    does not match its content.
    """
    row = await conn.fetchrow(_LATEST)
    return None if row is None else data_from_row(row)


def data_from_row(row: Any) -> RingData:
    """Validated ``RingData`` from a ``ring_state`` row (mapping-like)."""
    data = RingData(
        epoch=row["epoch"],
        vnodes_per_weight=row["vnodes_per_weight"],
        members=_members(row["members"]),
    )
    validate(data)
    stored = row["checksum"]
    if stored != checksum(data):
        raise InvalidRing(f"ring epoch {data.epoch}: checksum mismatch (stored {stored!r})")
    return data


async def save(conn: Connection | asyncpg.Pool, data: RingData) -> None:
    """Insert ``data``; its epoch must be exactly the latest stored epoch + 1.

    The first ring must have epoch 1. Raises ``RingConflict`` otherwise,
    including when a concurrent writer won the race.
    """
    validate(data)
    async with _connection(conn) as c, c.transaction():
        await c.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
        latest = await c.fetchval("SELECT max(epoch) FROM ring_state")
        expected = (latest or 0) + 1
        if data.epoch != expected:
            raise RingConflict(
                f"cannot save ring epoch {data.epoch}: latest stored epoch is {latest or 0}"
            )
        previous = await c.fetchval(_MEMBERS_OF, latest) if latest else None
        try:
            await c.execute(
                _INSERT,
                data.epoch,
                data.vnodes_per_weight,
                members_to_json(data.members),
                checksum(data),
            )
        except asyncpg.UniqueViolationError as exc:
            # Only reachable if a writer skipped the advisory lock.
            raise RingConflict(f"ring epoch {data.epoch} was saved concurrently") from exc
        await outbox.emit(c, NODES_TOPIC, RING_EVENT_KEY, RING_CHANGED, ring_change(
            _members(previous) if isinstance(previous, str) else (), data))


def ring_change(before: tuple[RingMember, ...], after: RingData) -> dict[str, Any]:
    """The ``ring.changed`` payload: the new epoch and which members moved how."""
    old = {m.node_id: m.state for m in before}
    new = {m.node_id: m.state for m in after.members}
    return {
        "epoch": after.epoch,
        "added": sorted(set(new) - set(old)),
        "removed": sorted(set(old) - set(new)),
        "draining": sorted(n for n, st in new.items() if st == DRAINING and old.get(n) != st),
        "active": sorted(n for n, st in new.items() if st != DRAINING),
    }


def _members(value: Any) -> tuple[RingMember, ...]:
    # Our queries read members as text; a caller's own row may hold parsed JSON.
    if isinstance(value, str | bytes):
        return members_from_json(value)
    return members_from_doc(value)


@contextlib.asynccontextmanager
async def _connection(
    conn: Connection | asyncpg.Pool,
) -> AsyncIterator[Connection]:
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as acquired:
            yield acquired
    else:
        yield conn


class RingWatcher:
    """Holds the current ``Ring`` and follows the stored one.

    A stored ring that fails validation is refused: the last good ring is
    kept, a warning is logged on logger ``dfms.ring`` once per bad row, and
    ``invalid_count`` goes up by one.
    """

    def __init__(
        self,
        source: Fetcher,
        *,
        poll_interval_s: float = 5.0,
        initial: Ring | None = None,
    ) -> None:
        if poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s}")
        self._source = source
        self.poll_interval_s = poll_interval_s
        self._ring = initial
        self.invalid_count = 0
        self._rejected: tuple[Any, Any] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def ring(self) -> Ring | None:
        """The last good ring; ``None`` until one has been loaded."""
        return self._ring

    @property
    def epoch(self) -> int | None:
        return None if self._ring is None else self._ring.epoch

    async def refresh(self, conn_or_pool: Fetcher | None = None) -> bool:
        """Reload if the stored epoch differs from ours; True if the ring changed.

        Database errors propagate; a stored ring that fails validation does not.
        """
        conn = self._source if conn_or_pool is None else conn_or_pool
        row = await conn.fetchrow(_LATEST_IF_CHANGED, self.epoch)
        if row is None or row["epoch"] == self.epoch:
            return False
        try:
            ring = Ring(data_from_row(row))
        except InvalidRing as exc:
            self._reject(row, exc)
            return False
        self._ring = ring
        self._rejected = None
        logger.info("ring epoch %d loaded (%d members)", ring.epoch, len(ring.members))
        return True

    def _reject(self, row: Any, exc: InvalidRing) -> None:
        key = (row["epoch"], row["checksum"])
        if key == self._rejected:
            return
        self._rejected = key
        self.invalid_count += 1
        logger.warning(
            "refusing stored ring epoch %s, keeping epoch %s: %s", key[0], self.epoch, exc
        )

    async def start(self) -> None:
        """Load once (errors propagate), then poll in the background. Idempotent."""
        if self._task is not None:
            return
        await self.refresh()
        if self._task is None:  # a concurrent start() may have won meanwhile
            self._task = asyncio.create_task(self._poll(), name="dfms.ring.watcher")

    async def stop(self) -> None:
        """Stop polling and wait for the poller to finish. Idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # asyncio.wait, unlike awaiting the task, never swallows a cancellation
        # aimed at our caller.
        await asyncio.wait({task})

    async def _poll(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await self.refresh()
            except Exception:
                # A database outage would otherwise log a traceback every poll.
                level = logging.DEBUG if failing else logging.WARNING
                logger.log(
                    level, "ring refresh failed; keeping epoch %s", self.epoch, exc_info=True
                )
                failing = True
            else:
                failing = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
