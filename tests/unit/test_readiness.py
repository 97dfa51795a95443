"""Readiness that tells degraded from down: the ops /ready semantics, the write-path
rule shared by the chunk service and the gateway, and the gateway's /ready body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dfms.chunkservice.writepath import from_stat, write_path
from dfms.config import RateLimitConfig
from dfms.errors import DependencyUnavailable
from dfms.gateway import readiness
from dfms.gateway.context import CHUNKS_KEY, PG_KEY, REDIS_KEY
from dfms.gateway.ratelimit import GUARD_KEY, RateLimitGuard, Unavailable
from dfms.proto import chunk_pb2 as pb
from dfms.runtime.ops import Degraded, ReadyCheck, add_ops_routes


async def _ok() -> None:
    return None


async def _partial() -> None:
    raise Degraded("only reads", {"why": "no quorum"})


async def _down() -> None:
    raise ConnectionRefusedError("nobody home")


async def _get_ready(app: web.Application) -> tuple[int, dict[str, Any]]:
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/ready")
        return resp.status, await resp.json()


async def _ops_ready(checks: dict[str, ReadyCheck]) -> tuple[int, dict[str, Any]]:
    app = web.Application()
    add_ops_routes(app, "svc", checks)
    return await _get_ready(app)


async def test_a_degraded_dependency_leaves_the_service_ready_and_says_so() -> None:
    status, body = await _ops_ready({"db": _ok, "store": _partial})
    assert status == 200 and body["status"] == "degraded", body
    store = body["dependencies"]["store"]
    assert store["ok"] is True and store["degraded"] is True
    assert store["detail"] == "only reads" and store["why"] == "no quorum"
    assert "degraded" not in body["dependencies"]["db"]


async def test_a_dependency_that_does_not_answer_is_not_ready_degraded_or_not() -> None:
    status, body = await _ops_ready({"db": _down, "store": _partial})
    assert status == 503 and body["status"] == "not_ready", body
    assert body["dependencies"]["db"] == {
        "ok": False, "error": "ConnectionRefusedError: nobody home"}
    status, body = await _ops_ready({"db": _ok})
    assert status == 200 and body["status"] == "ready", body


# --- the write path ----------------------------------------------------------------------

def _stat(*nodes: tuple[str, str, str], w: int = 2) -> pb.StatResponse:
    return pb.StatResponse(replicas_n=3, write_quorum_w=w, nodes=[
        pb.NodeStat(node_id=i, health=health, admin_state=state)
        for i, health, state in nodes])


def test_the_write_path_needs_w_usable_placing_nodes() -> None:
    ok = from_stat(_stat(("node-1", "healthy", "active"), ("node-2", "suspect", "active"),
                         ("node-3", "down", "active")))
    assert ok.writable and ok.usable_nodes == ("node-1", "node-2")  # suspect still takes writes
    assert ok.down_nodes == ("node-3",)
    # A draining node takes no placements, a removed one is gone: neither counts.
    short = from_stat(_stat(("node-1", "healthy", "active"), ("node-2", "down", "active"),
                            ("node-3", "healthy", "draining"), ("node-4", "healthy", "removed")))
    assert not short.writable
    assert short.as_json() == {"writable": False, "usable_nodes": 1, "write_quorum": 2,
                               "down_nodes": ["node-2"],
                               "detail": "1 usable node(s), write quorum needs 2"}


def test_the_chunk_service_and_the_gateway_apply_one_rule() -> None:
    up = {"a": True, "b": False, "c": False}
    path = write_path(up, up.__getitem__, 2)
    assert path.detail == "1 usable node(s), write quorum needs 2" and not path.writable


# --- the gateway's /ready ------------------------------------------------------------------

class _Conn:
    async def fetchval(self, query: str) -> int:
        return 1


class _Pool:
    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[_Conn]:
        yield _Conn()


class _Redis:
    def __init__(self, up: bool = True) -> None:
        self.up = up

    async def ping(self) -> bool:
        if not self.up:
            raise ConnectionRefusedError("Redis is away")
        return True


class _Chunks:
    def __init__(self, stat: pb.StatResponse | None) -> None:
        self.answer = stat

    async def stat(self) -> pb.StatResponse:
        if self.answer is None:
            raise DependencyUnavailable("chunk service unreachable: connection refused")
        return self.answer


async def _gateway_ready(stat: pb.StatResponse | None, redis: _Redis | None = None,
                         guard: RateLimitGuard | None = None) -> tuple[int, dict[str, Any]]:
    app = web.Application()
    app[PG_KEY] = _Pool()  # type: ignore[assignment]
    app[REDIS_KEY] = redis or _Redis()  # type: ignore[assignment]
    app[CHUNKS_KEY] = _Chunks(stat)  # type: ignore[assignment]
    if guard is not None:
        app[GUARD_KEY] = guard
    readiness.setup_ops_routes(app)
    return await _get_ready(app)


@pytest.mark.parametrize(("nodes", "status", "state", "writable"), [
    (("healthy", "healthy", "healthy"), 200, "ready", True),
    (("healthy", "down", "healthy"), 200, "ready", True),
    (("healthy", "down", "down"), 200, "degraded", False),
])
async def test_the_gateway_ready_follows_the_write_path(
        nodes: tuple[str, ...], status: int, state: str, writable: bool) -> None:
    stat = _stat(*((f"node-{i}", h, "active") for i, h in enumerate(nodes, start=1)))
    got, body = await _gateway_ready(stat)
    assert (got, body["status"], body["writable"]) == (status, state, writable), body
    chunk_service = body["dependencies"]["chunk_service"]
    assert chunk_service["write_path"]["writable"] is writable
    if not writable:
        assert chunk_service["detail"] == ("uploads fail: 1 usable node(s), write quorum "
                                           "needs 2; downloads still work")


async def test_the_gateway_is_not_ready_without_its_chunk_service() -> None:
    status, body = await _gateway_ready(None)
    assert status == 503 and body["status"] == "not_ready" and body["writable"] is False
    assert body["dependencies"]["chunk_service"]["ok"] is False


def _guard(fail_open: bool) -> RateLimitGuard:
    return RateLimitGuard(RateLimitConfig(fail_open=fail_open), None,  # type: ignore[arg-type]
                          None, 1.0)  # type: ignore[arg-type]


async def test_redis_away_is_degraded_when_limits_fail_open_and_not_ready_when_closed() -> None:
    healthy = _stat(("node-1", "healthy", "active"), ("node-2", "healthy", "active"))
    status, body = await _gateway_ready(healthy, _Redis(up=False), _guard(fail_open=True))
    assert (status, body["status"]) == (200, "degraded"), body
    assert "rate limits are not enforced" in body["dependencies"]["redis"]["detail"]
    status, body = await _gateway_ready(healthy, _Redis(up=False), _guard(fail_open=False))
    assert (status, body["status"]) == (503, "not_ready"), body


async def test_redis_answering_the_ready_check_ends_the_limiters_back_off() -> None:
    guard = _guard(fail_open=False)
    guard._failed(ConnectionRefusedError("Redis is away"))
    with pytest.raises(Unavailable):  # in its back-off: no request even tries Redis
        await guard.check([])
    healthy = _stat(("node-1", "healthy", "active"), ("node-2", "healthy", "active"))
    status, _ = await _gateway_ready(healthy, _Redis(up=True), guard)
    assert status == 200
    assert guard._skip_until == 0.0 and not guard._failing
