"""A node client under a burst: calls that wait for a free pooled connection wait, they
do not fail as if the node had refused them (the capacity run's 16 concurrent multipart
uploads marked three healthy nodes suspect that way)."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from dfms.config import load_config
from dfms.storage import NodeClient
from dfms.storage import client as storage_client
from tests.support.loopback import fake_gateway

ANSWER_AFTER_S = 0.4  # each PUT takes this long, well under the read timeout


def slow_s3(seen: list[float]) -> web.RouteTableDef:
    routes = web.RouteTableDef()

    @routes.put("/{bucket}/{key:.+}")
    async def put(request: web.Request) -> web.Response:
        await request.read()
        seen.append(time.monotonic())
        await asyncio.sleep(ANSWER_AFTER_S)
        return web.Response(headers={"ETag": '"0"'})

    return routes


async def test_calls_queued_behind_a_full_pool_wait_their_turn(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # One connection and a connect timeout of 0.3 s: the old client counted the wait
    # for the pool as connecting and gave up on the third call ("Connection timeout"),
    # though the node was fine.
    monkeypatch.setattr(storage_client, "POOL_CONNECTIONS_PER_NODE", 1)
    monkeypatch.setattr(storage_client, "CONNECT_TIMEOUT_S", 0.3)
    cfg = load_config(env={"DFMS_S3__SECRET_KEY": "x", "DFMS_S3__REQUEST_TIMEOUT_S": "5",
                           "DFMS_S3__MAX_RETRIES": "0"}).s3
    seen: list[float] = []
    runner, url = await fake_gateway(slow_s3(seen))
    try:
        async with NodeClient("node-q", url, cfg) as client:
            started = time.monotonic()
            await asyncio.gather(*(client.put(f"k{i}", b"x" * 1024, retries=0)
                                   for i in range(3)))
        assert len(seen) == 3
        # One at a time through the single connection: the queue was really waited out.
        assert time.monotonic() - started >= 3 * ANSWER_AFTER_S
    finally:
        await runner.cleanup()


async def test_a_node_that_refuses_connections_still_fails_fast() -> None:
    cfg = load_config(env={"DFMS_S3__SECRET_KEY": "x", "DFMS_S3__REQUEST_TIMEOUT_S": "30",
                           "DFMS_S3__MAX_RETRIES": "0"}).s3
    async with NodeClient("node-r", "http://127.0.0.1:9", cfg) as client:
        started = time.monotonic()
        with pytest.raises(storage_client.NodeUnavailable):
            await client.put("k", b"x", retries=0)
        assert time.monotonic() - started < 5
