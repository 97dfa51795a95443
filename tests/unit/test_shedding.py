"""Load shedding (dfms.gateway.shedding): the gate's slots and wait queue, and the
middleware on a real aiohttp server whose handlers block on an event, so the limits
fill deterministically."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from prometheus_client import REGISTRY

from dfms.config import Config, GatewayConfig
from dfms.gateway import shedding
from dfms.gateway.context import CONFIG_KEY
from dfms.gateway.middleware import error_middleware, request_id_middleware
from dfms.gateway.shedding import (
    QUEUE_FULL,
    REQUESTS,
    SHEDDING_KEY,
    TRANSFERS,
    WAIT_TIMEOUT,
    Gate,
    route_class,
)
from dfms.runtime.ops import add_ops_routes

LIST = "/api/v1/files"
UPLOAD = "/api/v1/files/upload"
BOOM = "/api/v1/folders"


# --- classes --------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "expected"), [
    ("GET", "/health", None), ("GET", "/ready", None), ("GET", "/metrics", None),
    ("GET", "/.well-known/jwks.json", None), ("GET", "/api/v1/openapi.yaml", None),
    ("POST", UPLOAD, TRANSFERS), ("PUT", "/api/v1/files/upload/multipart/u/part/3", TRANSFERS),
    ("GET", "/api/v1/files/f/download", TRANSFERS), ("HEAD", "/s/tok", TRANSFERS),
    ("GET", LIST, REQUESTS), ("POST", "/api/v1/auth/login", REQUESTS),
    ("POST", "/api/v1/files/upload/multipart/init", REQUESTS), ("GET", "/", REQUESTS),
])
def test_route_class(method: str, path: str, expected: str | None) -> None:
    assert route_class(method, path) == expected


# --- the gate -------------------------------------------------------------------------

async def test_a_full_gate_without_a_queue_refuses_at_once() -> None:
    gate = Gate(limit=2, queue_size=0, max_wait_s=1.0)
    assert [await gate.enter(), await gate.enter()] == [None, None]
    assert await gate.enter() == QUEUE_FULL
    gate.leave()
    assert (await gate.enter(), gate.in_flight) == (None, 2)


async def test_waiters_get_freed_slots_first_come_first_served() -> None:
    gate = Gate(limit=1, queue_size=2, max_wait_s=5.0)
    assert await gate.enter() is None
    first, second = (asyncio.create_task(gate.enter()) for _ in range(2))
    await asyncio.sleep(0)
    assert (gate.waiting, await gate.enter()) == (2, QUEUE_FULL)  # the queue is full too
    gate.leave()
    assert await first is None and not second.done()
    assert (gate.in_flight, gate.waiting) == (1, 1)  # handed over, not given back
    gate.leave()
    assert await second is None
    gate.leave()
    assert (gate.in_flight, gate.waiting) == (0, 0)


async def test_a_waiter_gives_up_after_the_longest_wait() -> None:
    gate = Gate(limit=1, queue_size=4, max_wait_s=0.05)
    assert await gate.enter() is None
    assert await gate.enter() == WAIT_TIMEOUT
    assert (gate.in_flight, gate.waiting) == (1, 0)
    gate.leave()
    assert gate.in_flight == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_takes_no_slot() -> None:
    gate = Gate(limit=1, queue_size=4, max_wait_s=5.0)
    assert await gate.enter() is None
    waiter = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.waiting == 0
    gate.leave()
    assert gate.in_flight == 0


async def test_a_waiter_cancelled_after_the_hand_over_passes_the_slot_on() -> None:
    gate = Gate(limit=1, queue_size=4, max_wait_s=5.0)
    assert await gate.enter() is None
    first, second = (asyncio.create_task(gate.enter()) for _ in range(2))
    await asyncio.sleep(0)
    gate.leave()  # hands the slot to `first`, which has not run yet ...
    first.cancel()  # ... and is cancelled before it does
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second is None
    assert (gate.in_flight, gate.waiting) == (1, 0)


# --- the middleware -------------------------------------------------------------------

@dataclasses.dataclass
class Blocking:
    """Handlers that wait on ``release``; ``started`` counts those that began."""

    release: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    started: int = 0

    async def handler(self, request: web.Request) -> web.Response:
        self.started += 1
        await request.read()
        await self.release.wait()
        return web.json_response({"ok": True})


def _config(**gateway: object) -> Config:
    limits: dict[str, object] = {"max_in_flight_requests": 2, "max_in_flight_transfers": 1,
                                 "shed_queue_size": 0, "shed_retry_after_s": 7, **gateway}
    return dataclasses.replace(Config(), gateway=dataclasses.replace(GatewayConfig(), **limits))


def _app(config: Config, blocking: Blocking) -> web.Application:
    async def boom(_: web.Request) -> web.Response:
        raise RuntimeError("handler failed")

    app = web.Application(middlewares=[request_id_middleware, error_middleware,
                                       shedding.shedding_middleware])
    app[CONFIG_KEY] = config
    shedding.setup(app)
    app.router.add_get(LIST, blocking.handler)
    app.router.add_post(UPLOAD, blocking.handler)
    app.router.add_post(BOOM, boom)
    add_ops_routes(app, "gateway", {})
    return app


@pytest.fixture
def blocking() -> Blocking:
    return Blocking()


@pytest.fixture
async def client(blocking: Blocking) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(_app(_config(), blocking))) as c:
        yield c


def _gate(client: TestClient, cls: str) -> Gate:
    return client.server.app[SHEDDING_KEY].gates[cls]


async def _until(what: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not what():  # noqa: ASYNC110 - polling state the server changes
            await asyncio.sleep(0.005)


def _shed(cls: str, reason: str) -> float:
    value = REGISTRY.get_sample_value("dfms_http_requests_shed_total",
                                      {"class": cls, "reason": reason})
    return value or 0.0


def _in_flight(cls: str) -> float:
    return REGISTRY.get_sample_value("dfms_http_requests_in_flight", {"class": cls}) or 0.0


async def _fill(client: TestClient, blocking: Blocking, n: int,
                send: Callable[[], Awaitable[object]]) -> list[asyncio.Task[object]]:
    tasks = [asyncio.create_task(send()) for _ in range(n)]
    await _until(lambda: blocking.started >= n)
    return tasks


async def _status(client: TestClient, method: str, path: str) -> int:
    async with client.request(method, path) as resp:
        await resp.read()
        return resp.status


async def test_past_the_limit_a_request_gets_503_overloaded_with_retry_after(
        client: TestClient, blocking: Blocking) -> None:
    before = _shed(REQUESTS, QUEUE_FULL)
    held = await _fill(client, blocking, 2, lambda: _status(client, "GET", LIST))
    assert (_gate(client, REQUESTS).in_flight, _in_flight(REQUESTS)) == (2, 2)
    async with client.get(LIST, headers={"X-Request-Id": "shed-me"}) as resp:
        body = await resp.json()
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "7"
        assert body["error"]["code"] == "overloaded"
        assert body["error"]["request_id"] == "shed-me"
        assert "requests" in body["error"]["message"]
    assert blocking.started == 2  # the refused request never reached its handler
    assert _shed(REQUESTS, QUEUE_FULL) == before + 1
    blocking.release.set()
    assert await asyncio.gather(*held) == [200, 200]
    assert (_gate(client, REQUESTS).in_flight, _in_flight(REQUESTS)) == (0, 0)
    assert await _status(client, "GET", LIST) == 200


async def test_ops_routes_and_the_other_class_pass_while_a_class_is_full(
        client: TestClient, blocking: Blocking) -> None:
    held = await _fill(client, blocking, 2, lambda: _status(client, "GET", LIST))
    for path in ("/health", "/metrics"):
        assert await _status(client, "GET", path) == 200
    upload = asyncio.create_task(_status(client, "POST", UPLOAD))  # a transfer slot
    await _until(lambda: blocking.started == 3)
    assert await _status(client, "POST", UPLOAD) == 503  # transfers: limit 1
    blocking.release.set()
    assert await asyncio.gather(*held, upload) == [200, 200, 200]
    assert _gate(client, TRANSFERS).in_flight == 0


async def test_a_failing_handler_gives_its_slot_back(client: TestClient) -> None:
    for _ in range(3):  # more than the limit of 2: a slot that leaked would show
        async with client.post(BOOM) as resp:
            assert (resp.status, (await resp.json())["error"]["code"]) == (500, "internal_error")
    assert _gate(client, REQUESTS).in_flight == 0


async def test_a_client_that_goes_away_mid_body_gives_its_slot_back(
        client: TestClient, blocking: Blocking) -> None:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"POST {UPLOAD} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                 .encode() + b"x" * 100)
    await writer.drain()
    await _until(lambda: _gate(client, TRANSFERS).in_flight == 1)
    writer.close()  # the body breaks off: the handler's read fails
    await writer.wait_closed()
    await _until(lambda: _gate(client, TRANSFERS).in_flight == 0)
    assert not blocking.release.is_set()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # nothing was answered


async def test_a_cancelled_request_gives_its_slot_back(blocking: Blocking) -> None:
    app = _app(_config(), blocking)
    request = make_mocked_request("GET", LIST, app=app)
    task = asyncio.create_task(shedding.shedding_middleware(request, blocking.handler))
    await _until(lambda: blocking.started == 1)
    assert app[SHEDDING_KEY].gates[REQUESTS].in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert app[SHEDDING_KEY].gates[REQUESTS].in_flight == 0


async def test_a_short_wait_serves_a_request_a_slot_frees_up_for(blocking: Blocking) -> None:
    config = _config(shed_queue_size=1, shed_max_wait_s=5.0)
    async with TestClient(TestServer(_app(config, blocking))) as client:
        held = await _fill(client, blocking, 2, lambda: _status(client, "GET", LIST))
        waiting = asyncio.create_task(_status(client, "GET", LIST))
        await _until(lambda: _gate(client, REQUESTS).waiting == 1)
        assert await _status(client, "GET", LIST) == 503  # the queue holds one
        blocking.release.set()
        assert await asyncio.gather(*held, waiting) == [200, 200, 200]
        assert _gate(client, REQUESTS).in_flight == 0


async def test_a_limit_of_zero_sheds_nothing(blocking: Blocking) -> None:
    blocking.release.set()
    config = _config(max_in_flight_requests=0)
    async with TestClient(TestServer(_app(config, blocking))) as client:
        assert REQUESTS not in client.server.app[SHEDDING_KEY].gates
        assert await asyncio.gather(*(_status(client, "GET", LIST) for _ in range(5))) == (
            [200] * 5)
