"""dfms.ring.store against fakes: row validation, save's epoch rule, RingWatcher.

The real PostgreSQL behaviour (advisory lock, jsonb, concurrency) belongs to
the integration tests; these cover the logic around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from dfms.ring import (
    InvalidRing,
    Ring,
    RingBuilder,
    RingConflict,
    RingData,
    RingMember,
    RingWatcher,
    checksum,
    load_latest,
    save,
)
from dfms.ring.serialize import members_to_json
from dfms.ring.store import ADVISORY_LOCK_KEY, ring_change


def ring_data(epoch: int, count: int = 3) -> RingData:
    b = RingBuilder()
    for i in range(count):
        b.add_node(f"node-{i}", f"zone-{i}")
    b.epoch = epoch - 1
    return b.build()


def row_for(data: RingData) -> dict[str, Any]:
    return {
        "epoch": data.epoch,
        "vnodes_per_weight": data.vnodes_per_weight,
        "members": members_to_json(data.members),
        "checksum": checksum(data),
    }


def bad_row(epoch: int) -> dict[str, Any]:
    """A row that parses but breaks a rule (negative weight)."""
    members = '[{"node_id":"a","state":"active","weight":-1.0,"zone":"z"}]'
    return {"epoch": epoch, "vnodes_per_weight": 150, "members": members, "checksum": "x"}


class FakeSource:
    """Stands in for an asyncpg Connection or Pool: only ``fetchrow``."""

    def __init__(self, row: dict[str, Any] | Exception | None = None) -> None:
        self.row = row
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def fetchrow(self, query: str, *args: Any) -> dict[str, Any] | None:
        self.calls.append((query, args))
        if isinstance(self.row, Exception):
            raise self.row
        return self.row


class FakeConnection:
    """Enough of an asyncpg Connection for ``save``."""

    def __init__(self, latest: int | None, insert_error: Exception | None = None) -> None:
        self.latest = latest
        self.insert_error = insert_error
        self.log: list[tuple[str, tuple[Any, ...]]] = []

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        self.log.append(("BEGIN", ()))
        yield
        self.log.append(("COMMIT", ()))

    async def execute(self, query: str, *args: Any) -> str:
        self.log.append((query, args))
        if query.startswith("INSERT") and self.insert_error is not None:
            raise self.insert_error
        return "OK"

    async def fetchval(self, query: str, *args: Any) -> Any:
        self.log.append((query, args))
        return self.latest if "max(epoch)" in query else None


async def eventually(condition: Callable[[], bool]) -> None:
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met within 2 s")


# --- load_latest ---------------------------------------------------------


async def test_load_latest_returns_none_for_an_empty_table() -> None:
    assert await load_latest(FakeSource(None)) is None


async def test_load_latest_returns_validated_data() -> None:
    data = ring_data(4)
    assert await load_latest(FakeSource(row_for(data))) == data


async def test_load_latest_accepts_members_already_decoded() -> None:
    data = ring_data(4)
    row = row_for(data)
    row["members"] = [
        {"node_id": m.node_id, "zone": m.zone, "weight": m.weight, "state": m.state}
        for m in data.members
    ]
    assert await load_latest(FakeSource(row)) == data


async def test_load_latest_rejects_invalid_rows() -> None:
    with pytest.raises(InvalidRing, match="weight must be > 0"):
        await load_latest(FakeSource(bad_row(2)))
    with pytest.raises(InvalidRing, match="checksum mismatch"):
        await load_latest(FakeSource({**row_for(ring_data(2)), "checksum": "0" * 64}))
    with pytest.raises(InvalidRing, match="not valid JSON"):
        await load_latest(FakeSource({**row_for(ring_data(2)), "members": "{"}))


# --- save ----------------------------------------------------------------


async def test_save_inserts_the_next_epoch_under_the_lock() -> None:
    data = ring_data(3)
    conn = FakeConnection(latest=2)
    await save(conn, data)  # type: ignore[arg-type]
    queries = [q for q, _ in conn.log]
    assert queries[0] == "BEGIN"
    assert "pg_advisory_xact_lock" in queries[1]
    assert conn.log[1][1] == (ADVISORY_LOCK_KEY,)
    assert "max(epoch)" in queries[2]
    assert "members" in queries[3] and conn.log[3][1] == (2,)  # the previous ring, for the event
    assert queries[4].startswith("INSERT")
    assert conn.log[4][1] == (3, 150, members_to_json(data.members), checksum(data))
    assert "INSERT INTO outbox" in queries[5]  # ring.changed, in the same transaction
    assert queries[6] == "COMMIT"


def test_ring_change_payload_names_what_moved() -> None:
    before = ring_data(1, count=3)
    b = RingBuilder(before)
    b.add_node("node-9", "zone-9")
    b.set_state("node-1", "draining")
    b.remove_node("node-2")
    after = b.build()
    assert ring_change(before.members, after) == {
        "epoch": 2, "added": ["node-9"], "removed": ["node-2"], "draining": ["node-1"],
        "active": ["node-0", "node-9"]}


async def test_save_requires_epoch_one_on_an_empty_table() -> None:
    await save(FakeConnection(latest=None), ring_data(1))  # type: ignore[arg-type]
    with pytest.raises(RingConflict, match="latest stored epoch is 0"):
        await save(FakeConnection(latest=None), ring_data(2))  # type: ignore[arg-type]


@pytest.mark.parametrize("latest", [1, 3, 7])
async def test_save_refuses_a_stale_or_skipped_epoch(latest: int) -> None:
    conn = FakeConnection(latest=latest)
    with pytest.raises(RingConflict, match=f"latest stored epoch is {latest}"):
        await save(conn, ring_data(3))  # type: ignore[arg-type]
    assert not any(q.startswith("INSERT") for q, _ in conn.log)


async def test_save_translates_a_unique_violation() -> None:
    error = asyncpg.UniqueViolationError("duplicate key value")
    with pytest.raises(RingConflict) as info:
        await save(FakeConnection(latest=2, insert_error=error), ring_data(3))  # type: ignore[arg-type]
    assert info.value.__cause__ is error


async def test_save_refuses_invalid_data_before_any_query() -> None:
    conn = FakeConnection(latest=0)
    with pytest.raises(InvalidRing):
        await save(conn, RingData(1, 150, (RingMember("a", "z", 0.0),)))  # type: ignore[arg-type]
    assert conn.log == []


# --- RingWatcher ---------------------------------------------------------


async def test_refresh_loads_only_when_the_epoch_changes() -> None:
    source = FakeSource(row_for(ring_data(1)))
    watcher = RingWatcher(source)
    assert watcher.ring is None
    assert await watcher.refresh() is True
    assert watcher.epoch == 1
    assert source.calls[0][1] == (None,)
    first = watcher.ring

    assert await watcher.refresh() is False
    assert watcher.ring is first
    assert source.calls[1][1] == (1,)  # the query filters on the held epoch

    source.row = None  # what the query returns when nothing changed
    assert await watcher.refresh() is False
    source.row = row_for(ring_data(2, count=4))
    assert await watcher.refresh() is True
    assert watcher.ring is not None
    assert len(watcher.ring.members) == 4


async def test_refresh_uses_the_connection_it_is_given() -> None:
    watcher = RingWatcher(FakeSource(None))
    other = FakeSource(row_for(ring_data(5)))
    assert await watcher.refresh(other) is True
    assert watcher.epoch == 5


async def test_refresh_keeps_the_last_good_ring(caplog: pytest.LogCaptureFixture) -> None:
    source = FakeSource(row_for(ring_data(1)))
    watcher = RingWatcher(source)
    await watcher.refresh()
    good = watcher.ring

    source.row = bad_row(2)
    with caplog.at_level(logging.WARNING, logger="dfms.ring"):
        assert await watcher.refresh() is False
        assert await watcher.refresh() is False  # same bad row: counted and logged once
    assert watcher.ring is good
    assert watcher.invalid_count == 1
    warnings = [r for r in caplog.records if r.name == "dfms.ring"]
    assert len(warnings) == 1
    assert "epoch 2" in warnings[0].getMessage()
    assert "weight must be > 0" in warnings[0].getMessage()

    source.row = {**row_for(ring_data(3)), "checksum": "f" * 64}
    assert await watcher.refresh() is False
    assert watcher.invalid_count == 2
    assert watcher.ring is good

    source.row = row_for(ring_data(3))
    assert await watcher.refresh() is True
    assert watcher.epoch == 3
    assert watcher.invalid_count == 2


async def test_refresh_lets_database_errors_through() -> None:
    watcher = RingWatcher(FakeSource(ConnectionError("db down")))
    with pytest.raises(ConnectionError):
        await watcher.refresh()


async def test_start_stop_are_idempotent_and_poll_in_the_background() -> None:
    source = FakeSource(row_for(ring_data(1)))
    watcher = RingWatcher(source, poll_interval_s=0.01)
    await watcher.start()
    await watcher.start()
    assert watcher.epoch == 1  # start() loads before returning
    tasks = [t for t in asyncio.all_tasks() if t.get_name() == "dfms.ring.watcher"]
    assert len(tasks) == 1

    source.row = row_for(ring_data(2))
    await eventually(lambda: watcher.epoch == 2)

    await watcher.stop()
    await watcher.stop()
    assert tasks[0].done()


async def test_poller_survives_database_errors(caplog: pytest.LogCaptureFixture) -> None:
    source = FakeSource(row_for(ring_data(1)))
    async with RingWatcher(source, poll_interval_s=0.01) as watcher:
        with caplog.at_level(logging.WARNING, logger="dfms.ring"):
            source.row = ConnectionError("db down")
            await eventually(lambda: len(source.calls) >= 4)
        source.row = row_for(ring_data(2))
        await eventually(lambda: watcher.epoch == 2)
    failures = [r for r in caplog.records if "refresh failed" in r.getMessage()]
    assert len(failures) == 1  # a long outage logs once, not once per poll


async def test_context_manager_stops_the_poller() -> None:
    async with RingWatcher(FakeSource(row_for(ring_data(1))), poll_interval_s=0.01) as watcher:
        assert isinstance(watcher.ring, Ring)
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "dfms.ring.watcher"]


async def test_start_propagates_a_failed_first_load() -> None:
    watcher = RingWatcher(FakeSource(ConnectionError("db down")), poll_interval_s=0.01)
    with pytest.raises(ConnectionError):
        await watcher.start()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "dfms.ring.watcher"]
    await watcher.stop()


def test_poll_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="poll_interval_s"):
        RingWatcher(FakeSource(), poll_interval_s=0)
