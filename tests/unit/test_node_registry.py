"""The node-client registry's sync logic, on a fake row source and fake clients."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import asyncpg
import pytest

from dfms.config import S3Config
from dfms.healthmon.state import Health
from dfms.metadata.nodes import NodeRow, not_removed
from dfms.metadata.states import AdminState
from dfms.storage import NodeClient
from dfms.storage.registry import NodeRegistry


class FakeClient:
    def __init__(self, node_id: str, endpoint: str, cfg: S3Config) -> None:
        self.node_id, self.endpoint, self.cfg = node_id, endpoint, cfg
        self.closed = False

    async def close(self) -> None:
        assert not self.closed, "closed twice"
        self.closed = True


class Rows:
    """A row source whose answer the test changes; counts calls, can fail."""

    def __init__(self, *rows: NodeRow) -> None:
        self.rows = list(rows)
        self.calls = 0
        self.fail: BaseException | None = None

    async def __call__(self) -> Iterable[NodeRow]:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return list(self.rows)


def row(node_id: str, endpoint: str | None = None, *, health: Health = Health.HEALTHY,
        admin: AdminState = AdminState.ACTIVE) -> NodeRow:
    return NodeRow(node_id, endpoint or f"http://{node_id}:8333", "z1", health, admin)


def fake(node_id: str, endpoint: str, cfg: S3Config) -> NodeClient:
    return FakeClient(node_id, endpoint, cfg)  # type: ignore[return-value]


def registry(source: Rows | None = None, **kw: object) -> NodeRegistry:
    return NodeRegistry(S3Config(), source, client_factory=fake, **kw)  # type: ignore[arg-type]


async def test_one_client_per_node_opened_on_first_use_and_kept() -> None:
    source = Rows(row("n1"), row("n2"))
    reg = registry(source)
    await reg.refresh()
    assert list(reg.nodes) == ["n1", "n2"] and reg.endpoints == {
        "n1": "http://n1:8333", "n2": "http://n2:8333"}
    assert reg.open_clients == {}
    first = reg.client("n1")
    assert reg["n1"] is first and first.endpoint == "http://n1:8333"
    await reg.refresh()
    assert reg.client("n1") is first and not first.closed  # type: ignore[attr-defined]
    assert "n2" in reg and "n3" not in reg
    with pytest.raises(KeyError):
        reg.client("n3")


async def test_moved_endpoint_closes_the_old_client_and_opens_a_new_one() -> None:
    source = Rows(row("n1"))
    reg = registry(source)
    await reg.refresh()
    old = reg.client("n1")
    source.rows = [row("n1", "http://elsewhere:8333")]
    await reg.refresh()
    assert old.closed  # type: ignore[attr-defined]
    new = reg.client("n1")
    assert new is not old and new.endpoint == "http://elsewhere:8333"


async def test_removed_and_deleted_nodes_lose_their_clients() -> None:
    source = Rows(row("n1"), row("n2"), row("n3"))
    reg = registry(source, select=not_removed)
    await reg.refresh()
    clients = {n: reg.client(n) for n in ("n1", "n2", "n3")}
    source.rows = [row("n1"), row("n2", admin=AdminState.REMOVED)]  # n3 deleted
    await reg.refresh()
    assert [c.closed for c in clients.values()] == [False, True, True]  # type: ignore[attr-defined]
    assert reg.endpoints == {"n1": "http://n1:8333"}
    assert set(reg.nodes) == {"n1", "n2"}  # every row is kept; select picks the clients
    assert reg.nodes["n2"].removed and reg.nodes["n2"].admin_state is AdminState.REMOVED
    assert "n2" not in reg and set(reg.open_clients) == {"n1"}


async def test_sync_takes_endpoints_directly() -> None:
    reg = registry()
    await reg.sync({"a": "http://a", "b": "http://b"})
    a, b = reg.client("a"), reg.client("b")
    await reg.sync({"a": "http://a"})
    assert not a.closed and b.closed  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="no row source"):
        await reg.refresh()


async def test_close_closes_every_client_and_the_registry_stays_usable() -> None:
    reg = registry(Rows(row("n1"), row("n2")))
    await reg.refresh()
    clients = [reg.client("n1"), reg.client("n2")]
    await reg.close()
    assert all(c.closed for c in clients) and reg.open_clients == {}  # type: ignore[attr-defined]
    assert reg.client("n1") is not clients[0]  # reopened on use
    await reg.close()


async def test_start_refreshes_on_an_interval_and_stop_cancels_and_closes() -> None:
    source = Rows(row("n1"))
    reg = registry(source, refresh_interval_s=0.01)
    await reg.start()
    await reg.start()  # a second start is a no-op
    client = reg.client("n1")
    source.fail = OSError("database away")  # a failed refresh keeps the last view
    await asyncio.sleep(0.05)
    assert reg.endpoints == {"n1": "http://n1:8333"} and reg.client("n1") is client
    source.fail = asyncpg.PostgresError("still away")
    await asyncio.sleep(0.03)
    source.fail = None
    source.rows = [row("n2")]
    for _ in range(100):
        if "n2" in reg:
            break
        await asyncio.sleep(0.01)
    assert reg.endpoints == {"n2": "http://n2:8333"} and client.closed  # type: ignore[attr-defined]
    late = reg.client("n2")
    calls = source.calls
    await reg.stop()
    assert late.closed and reg.open_clients == {}  # type: ignore[attr-defined]
    await asyncio.sleep(0.03)
    assert source.calls == calls  # no refresh after stop
    await reg.stop()  # idempotent


async def test_without_an_interval_start_loads_once() -> None:
    source = Rows(row("n1"))
    reg = registry(source)
    await reg.start()
    await asyncio.sleep(0.02)
    assert source.calls == 1 and "n1" in reg
    await reg.stop()


async def test_row_vocabulary() -> None:
    r = row("n1", health=Health.DOWN, admin=AdminState.DRAINING)
    assert r.health == "down" and r.admin_state == "draining" and not_removed(r)
    assert not not_removed(row("n2", admin=AdminState.REMOVED))
