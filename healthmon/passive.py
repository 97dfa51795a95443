"""Passive health: a process that talks to the storage nodes notices a dead one itself.

Why: the health monitor probes every ``healthmon.interval_s`` and needs K failed
probes to mark a node down, so for a while a dead node still looks healthy and
every request to it fails, each with a warning of its own (issue 11: 56 "writing a
replica failed" warnings in 13 s). The chunk service and the replication manager see
those failures first.

``PassiveHealth`` counts, per node and in memory, the consecutive requests that
failed because of the node; ``succeeded`` ends the streak (an answer that an object
is missing is a success here: the node works). Then:

* when a streak reaches ``healthmon.passive_suspect_after`` failures, the node is
  marked ``suspect``, once per streak, through the monitor's own code path
  (``dfms.healthmon.record``: row lock, ``nodes.health`` and a ``node.health_changed``
  event in one transaction), and only if its stored health is ``healthy``. It never
  marks a node down and never changes one that is already suspect or down: the
  monitor's probes still decide down (K failed probes) and healthy again (M good
  ones), see ``dfms.healthmon.state``. Suspect nodes still get writes, so the marking
  only tells the monitor's readers (operators, events, the admin view) sooner;
* the database write runs in a background task and only on that transition, so a
  request never waits for it; a database error is logged, never raised to the
  caller, and the marking is tried again at a later failure of the same streak;
* logging: the first failure of a streak and the marking are logged once, at
  WARNING; further failures are summarised at most every ``SUMMARY_INTERVAL_S`` as a
  count, and the end of the streak gets one line at INFO.

``FailureStreaks`` is the counting and logging alone (no I/O; the clock can be
injected), ``PassiveHealth`` adds the marking.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from dfms.healthmon.record import lock_node, record_change
from dfms.healthmon.state import Health
from dfms.metadata.states import AdminState
from dfms.runtime.logs import get_logger
from dfms.storage import ObjectNotFound, StorageError

# Further failures of a streak are summarised at most this often (per node).
SUMMARY_INTERVAL_S = 10.0

_log = get_logger("healthmon.passive")


def counts_against_node(exc: BaseException) -> bool:
    """Whether a failed request says the node is in trouble: a storage error other than
    "no such object" (then the node answered and works). Other exceptions are our bugs,
    not the node's health."""
    return isinstance(exc, StorageError) and not isinstance(exc, ObjectNotFound)


class _Mark(enum.Enum):
    NOT_YET = "not yet"  # below the threshold, or the last attempt hit a database error
    RUNNING = "running"
    FINISHED = "finished"  # marked, or found not healthy: not again in this streak


@dataclass(slots=True, eq=False)
class _Streak:
    started_at: float
    reported_at: float  # when the last line about this streak was logged
    last_error: str
    ops: set[str] = field(default_factory=set)
    failures: int = 1
    unreported: int = 0  # failures since that line
    mark: _Mark = _Mark.NOT_YET
    retry_at: float = 0.0  # a failed marking is not tried again before this


def _error_text(node: str, error: BaseException | str) -> str:
    text = str(error) or type(error).__name__
    # A StorageError's text already starts with the node id; the lines name it first.
    return text.removeprefix(f"{node}: ")


def _what(ops: set[str]) -> str:
    """``replica writes`` when every failure of the streak was one kind, else ``requests``."""
    return f"{next(iter(ops))}s" if len(ops) == 1 else "requests"


class FailureStreaks:
    """Consecutive failed requests per node, with rate-limited logging.

    ``failed()`` says when the node should be marked suspect; ``PassiveHealth`` does it.
    A ``suspect_after`` of 0 counts and logs but never asks for a marking.
    """

    def __init__(self, source: str, suspect_after: int, *,
                 clock: Callable[[], float] = time.monotonic,
                 log: logging.Logger | None = None,
                 summary_interval_s: float = SUMMARY_INTERVAL_S) -> None:
        if suspect_after < 0:
            raise ValueError("suspect_after must be 0 (never) or more")
        self.source = source  # who saw the failures, for the reason of a marking
        self.suspect_after = suspect_after
        self._clock = clock
        self._log = log or _log
        self._interval_s = summary_interval_s
        self._streaks: dict[str, _Streak] = {}

    def streak(self, node: str) -> int:
        """The node's current count of consecutive failures."""
        current = self._streaks.get(node)
        return current.failures if current is not None else 0

    def succeeded(self, node: str, op: str = "request") -> None:
        """A request to ``node`` worked: its streak, if any, ends (in memory only)."""
        streak = self._streaks.pop(node, None)
        if streak is None:
            return  # the usual case: one dictionary lookup, nothing else
        self._log.info("%s: %s succeeded again after %d consecutive failure(s) in %.0f s",
                       node, op, streak.failures, self._clock() - streak.started_at,
                       extra={"node": node})

    def failed(self, node: str, error: BaseException | str, op: str = "request") -> bool:
        """Count a failed request to ``node``; True when it should be marked suspect now."""
        return self._count(node, error, op) is not None

    def _count(self, node: str, error: BaseException | str, op: str) -> _Streak | None:
        """Count and log the failure; the streak when a marking is due (now RUNNING)."""
        now = self._clock()
        text = _error_text(node, error)
        streak = self._streaks.get(node)
        if streak is None:
            streak = self._streaks[node] = _Streak(now, now, text, {op})
            self._log.warning("%s: %s failed: %s (further failures are counted, and "
                              "summarised at most every %g s)", node, op, text,
                              self._interval_s, extra={"node": node})
        else:
            streak.failures += 1
            streak.unreported += 1
            streak.last_error = text
            streak.ops.add(op)
            if now - streak.reported_at >= self._interval_s:
                self._summarise(node, streak, now)
        due = (0 < self.suspect_after <= streak.failures and streak.mark is _Mark.NOT_YET
               and now >= streak.retry_at)
        if not due:
            return None
        streak.mark = _Mark.RUNNING
        return streak

    def _summarise(self, node: str, streak: _Streak, now: float) -> None:
        self._log.warning("%s: %d more failed %s in the last %.0f s; last error: %s",
                          node, streak.unreported, _what(streak.ops), now - streak.reported_at,
                          streak.last_error, extra={"node": node})
        streak.unreported = 0
        streak.reported_at = now

    def _reason(self, streak: _Streak) -> str:
        return (f"{streak.failures} consecutive failed {_what(streak.ops)} from "
                f"{self.source}: {streak.last_error}")

    def _mark_finished(self, streak: _Streak, *, retry: bool) -> None:
        """A marking attempt is over; ``retry`` after a database error (not before the
        summary interval). A streak that ended meanwhile is simply gone from the map."""
        streak.mark = _Mark.NOT_YET if retry else _Mark.FINISHED
        if retry:
            streak.retry_at = self._clock() + self._interval_s


class PassiveHealth(FailureStreaks):
    """``FailureStreaks`` that marks a healthy node suspect in PostgreSQL at the threshold."""

    def __init__(self, pool: asyncpg.Pool, source: str, suspect_after: int, *,
                 clock: Callable[[], float] = time.monotonic,
                 log: logging.Logger | None = None,
                 summary_interval_s: float = SUMMARY_INTERVAL_S) -> None:
        super().__init__(source, suspect_after, clock=clock, log=log,
                         summary_interval_s=summary_interval_s)
        self._pool = pool
        self._tasks: set[asyncio.Task[None]] = set()

    def failed(self, node: str, error: BaseException | str, op: str = "request") -> bool:
        streak = self._count(node, error, op)
        if streak is None:
            return False
        # In the background: the request that failed goes on without waiting for it.
        task = asyncio.create_task(self._mark(node, streak, self._reason(streak)),
                                   name=f"mark {node} suspect")
        self._tasks.add(task)  # a strong reference until it is done
        task.add_done_callback(self._tasks.discard)
        return True

    async def wait_idle(self) -> None:
        """Until the markings under way are done (for tests and shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def close(self) -> None:
        """Cancel the markings under way (the caller closes the pool next)."""
        tasks, self._tasks = set(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _mark(self, node: str, streak: _Streak, reason: str) -> None:
        try:
            found = await self._mark_suspect(node, reason)
        except Exception as exc:  # the database is away, say: log it, never fail a caller
            self._mark_finished(streak, retry=True)
            self._log.warning("%s: marking it suspect failed (the health monitor still "
                              "probes it): %s", node, f"{type(exc).__name__}: {exc}",
                              extra={"node": node})
            return
        self._mark_finished(streak, retry=False)
        if found is Health.HEALTHY:
            self._log.warning("%s marked suspect: %s", node, reason,
                              extra={"node": node, "source": self.source})
        elif found is None:
            self._log.info("%s: %s; not an active node, nothing marked", node, reason,
                           extra={"node": node})
        else:
            self._log.info("%s: %s; it is %s already, left to the health monitor", node,
                           reason, found.value, extra={"node": node})

    async def _mark_suspect(self, node: str, reason: str) -> Health | None:
        """Mark ``node`` suspect if its stored health is healthy. Returns the health it
        had (healthy: it was marked), None when it is removed or unknown."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await lock_node(conn, node)  # as the monitor does: one writer at a time
            if row is None or row["admin_state"] == AdminState.REMOVED:
                return None
            stored = Health(row["health"])
            if stored is Health.HEALTHY:
                await record_change(conn, node, stored, Health.SUSPECT, reason, None)
            return stored
