"""Passive health (dfms.healthmon.passive): streak counting, rate-limited logging and
when a node is marked suspect, on a fake clock; the marking itself against a fake pool
(the real one is covered by tests/probe/test_passive_health.py)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dfms.healthmon.passive import (
    FailureStreaks,
    PassiveHealth,
    counts_against_node,
)
from dfms.storage import NodeUnavailable, ObjectNotFound, StorageError, StorageRejected

LOGGER = "dfms.healthmon.passive"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def down(node: str = "node-2") -> NodeUnavailable:
    return NodeUnavailable(node, "ClientConnectorError: connection refused")


def lines(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


def test_a_dead_node_is_logged_once_then_summarised(caplog: pytest.LogCaptureFixture) -> None:
    """The issue's case: 56 failures in 13 s are one line, then one summary, not 56."""
    caplog.set_level(logging.INFO, LOGGER)
    clock = Clock()
    streaks = FailureStreaks("chunk-service", 0, clock=clock)
    for i in range(56):
        clock.now = 1000.0 + i * 13.0 / 55
        streaks.failed("node-2", down(), "replica write")
    assert streaks.streak("node-2") == 56
    warned = lines(caplog)
    assert warned[0].startswith("node-2: replica write failed: ClientConnectorError")
    assert "node-2: node-2" not in warned[0]  # the node id is not repeated
    # One summary once 10 s had passed (at the first failure at or after 10 s), counting
    # every failure since the first line; the rest waits for the next line.
    at_10s = next(i for i in range(56) if i * 13.0 / 55 >= 10.0)
    assert warned[1:] == [f"node-2: {at_10s} more failed replica writes in the last "
                          f"{at_10s * 13.0 / 55:.0f} s; last error: ClientConnectorError: "
                          "connection refused"]
    clock.now = 1020.0
    streaks.succeeded("node-2", "replica write")
    assert lines(caplog, logging.INFO) == [
        "node-2: replica write succeeded again after 56 consecutive failure(s) in 20 s"]
    assert streaks.streak("node-2") == 0


def test_summaries_come_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    streaks = FailureStreaks("chunk-service", 0, clock=clock, summary_interval_s=10.0)
    for second in range(61):  # one failure a second for a minute
        clock.now = 1000.0 + second
        streaks.failed("node-2", down(), "replica write")
    warned = lines(caplog)
    assert len(warned) == 1 + 6  # the first failure, then one summary per 10 s
    assert all(line.startswith("node-2: 10 more failed replica writes in the last 10 s")
               for line in warned[1:])


def test_nodes_are_counted_apart_and_a_success_ends_only_its_own_streak() -> None:
    streaks = FailureStreaks("chunk-service", 3, clock=Clock())
    assert not streaks.failed("node-1", down("node-1"))
    assert not streaks.failed("node-2", down())
    streaks.succeeded("node-1")
    streaks.succeeded("node-3")  # no streak: nothing to do
    assert (streaks.streak("node-1"), streaks.streak("node-2")) == (0, 1)


def test_marking_is_due_once_per_streak_at_the_threshold() -> None:
    streaks = FailureStreaks("chunk-service", 3, clock=Clock())
    due = [streaks.failed("node-2", down()) for _ in range(10)]
    assert due == [False, False, True] + [False] * 7
    streaks.succeeded("node-2")
    due = [streaks.failed("node-2", down()) for _ in range(4)]
    assert due == [False, False, True, False]  # a new streak may mark it again


def test_zero_never_marks_and_one_marks_on_the_first_failure() -> None:
    never = FailureStreaks("chunk-service", 0, clock=Clock())
    assert not any(never.failed("node-2", down()) for _ in range(100))
    at_once = FailureStreaks("chunk-service", 1, clock=Clock())
    assert at_once.failed("node-2", down())
    with pytest.raises(ValueError):
        FailureStreaks("chunk-service", -1)


def test_only_node_trouble_counts() -> None:
    assert counts_against_node(down())
    assert counts_against_node(StorageRejected("node-2", "AccessDenied: no"))
    assert counts_against_node(StorageError("node-2", "RuntimeError: odd"))
    assert not counts_against_node(ObjectNotFound("node-2", "NoSuchKey: gone"))
    assert not counts_against_node(RuntimeError("a bug of ours"))


def test_mixed_operations_are_summarised_as_requests(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    streaks = FailureStreaks("replication-manager", 0, clock=clock)
    streaks.failed("node-2", down(), "replica write")
    streaks.failed("node-2", "timed out", "replica delete")
    clock.now += 10.0
    streaks.failed("node-2", down(), "replica write")
    assert lines(caplog)[-1].startswith("node-2: 2 more failed requests in the last 10 s")


# --- the marking, against a fake pool -------------------------------------------------------

class FakeConn:
    def __init__(self, health: str | None) -> None:
        self.health = health
        self.executed: list[tuple[str, tuple[Any, ...]]] = []

    async def fetchrow(self, query: str, *args: Any) -> dict[str, str] | None:
        assert "FOR UPDATE" in query  # the row is locked, as the monitor does
        if self.health is None:
            return None
        return {"health": self.health, "admin_state": "active"}

    async def execute(self, query: str, *args: Any) -> str:
        self.executed.append((query, args))
        return "OK"

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield


class FakePool:
    def __init__(self, conn: FakeConn | None) -> None:
        self.conn = conn  # None: the database is away
        self.acquired = 0

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[FakeConn]:
        self.acquired += 1
        if self.conn is None:
            raise OSError("connection refused")
        yield self.conn


def tracker(pool: FakePool, clock: Clock) -> PassiveHealth:
    return PassiveHealth(pool, "chunk-service", 3, clock=clock)  # type: ignore[arg-type]


async def test_a_healthy_node_is_marked_suspect_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    conn = FakeConn("healthy")
    pool = FakePool(conn)
    passive = tracker(pool, Clock())
    passive.succeeded("node-2")  # successes never touch the database
    for _ in range(2):
        assert not passive.failed("node-2", down(), "replica write")
    assert pool.acquired == 0
    for _ in range(18):
        passive.failed("node-2", down(), "replica write")
    await passive.wait_idle()
    assert pool.acquired == 1
    update, event = conn.executed
    assert "UPDATE nodes SET health" in update[0] and update[1] == ("node-2", "suspect")
    assert "INSERT INTO outbox" in event[0] and event[1][3] == "node.health_changed"
    reason = ("3 consecutive failed replica writes from chunk-service: "
              "ClientConnectorError: connection refused")
    assert json.loads(event[1][4]) == {"node_id": "node-2", "old": "healthy",
                                       "new": "suspect", "reason": reason,
                                       "latency_ms": None}
    assert lines(caplog) == ["node-2: replica write failed: ClientConnectorError: connection "
                             "refused (further failures are counted, and summarised at most "
                             "every 10 s)", f"node-2 marked suspect: {reason}"]


@pytest.mark.parametrize("stored", ["suspect", "down", None])
async def test_a_node_not_healthy_is_left_alone(stored: str | None,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    conn = FakeConn(stored)
    passive = tracker(FakePool(conn), Clock())
    for _ in range(10):
        passive.failed("node-2", down(), "replica write")
    await passive.wait_idle()
    assert conn.executed == []  # never down, never over the monitor's state
    assert len(lines(caplog)) == 1  # the first failure only
    (info,) = lines(caplog, logging.INFO)
    assert (f"it is {stored} already" if stored else "not an active node") in info


async def test_a_database_error_is_logged_and_retried_later(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    pool = FakePool(None)
    passive = tracker(pool, clock)
    for i in range(3):
        assert passive.failed("node-2", down()) is (i == 2)  # the caller is not failed
    await passive.wait_idle()
    assert pool.acquired == 1
    assert "marking it suspect failed (the health monitor still probes it): OSError" in \
        lines(caplog)[-1]
    pool.conn = FakeConn("healthy")
    assert not passive.failed("node-2", down())  # not again within the interval
    clock.now += 10.0
    assert passive.failed("node-2", down())
    await passive.wait_idle()
    assert pool.acquired == 2 and len(pool.conn.executed) == 2
    assert not passive.failed("node-2", down())  # marked: not again in this streak
    await passive.close()
