"""PostgreSQL round trips of small authenticated requests (issue 18): a stat is one, a
listing page two. Counted with asyncpg's query log on a gateway app built in this test
against the session cluster (its PostgreSQL, Redis and chunk service); the account and
its files are made through the cluster's own gateway, which signs with the same keys."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from dfms.gateway import app as gateway_app
from dfms.localstack.handle import ClusterHandle
from tests.support.api import Api, ApiUser

pytestmark = pytest.mark.cluster

# Statements of the gateway's background work (the chunk reader's node and ring
# refreshes), which may run while a request is counted.
BACKGROUND = re.compile(r"\b(nodes|ring\w*)\b", re.IGNORECASE)


class QueryLog:
    def __init__(self) -> None:
        self.queries: list[str] = []

    def __call__(self, record: Any) -> None:
        if not BACKGROUND.search(record.query):
            self.queries.append(record.query)


@pytest.fixture
async def counted(cluster: ClusterHandle, monkeypatch: pytest.MonkeyPatch
                  ) -> AsyncIterator[tuple[TestClient[Any, Any], QueryLog]]:
    log = QueryLog()

    async def init(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(log)

    # The gateway's own pool (its size, its reset), each connection with the query log;
    # a reset statement on release would be counted too, as the round trip it is.
    real = asyncpg.create_pool

    def logged_pool(*args: Any, **kw: Any) -> asyncpg.Pool:
        return real(*args, init=init, **kw)

    monkeypatch.setattr(asyncpg, "create_pool", logged_pool)
    client = TestClient(TestServer(gateway_app.build_app(cluster.config)))
    await client.start_server()
    try:
        yield client, log
    finally:
        await client.close()


async def round_trips(client: TestClient[Any, Any], log: QueryLog, user: ApiUser,
                      path: str) -> int:
    """Statements one request sends, once its statements are prepared (asyncpg caches
    them per connection, so the first use of one costs an extra Parse round trip)."""
    for _ in range(3):  # every pooled connection the warm-up may pick
        async with client.get(path, headers=user.headers) as resp:
            assert resp.status == 200, await resp.text()
    log.queries.clear()
    async with client.get(path, headers=user.headers) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()
    return len(log.queries)


async def test_a_stat_is_one_round_trip_and_a_page_two(
        api: Api, user: ApiUser,
        counted: tuple[TestClient[Any, Any], QueryLog]) -> None:
    client, log = counted
    ids = []
    for i in range(3):
        status, body = await api.upload(user, f"rt-{i}.bin", os.urandom(100))
        assert status == 201, body
        ids.append(body["id"])
    assert await round_trips(client, log, user, f"/api/v1/files/{ids[0]}") <= 1, log.queries
    assert await round_trips(client, log, user, "/api/v1/files?per_page=2") <= 2, log.queries
    async with client.get("/api/v1/files?per_page=2", headers=user.headers) as resp:
        page = await resp.json()
    assert page["total"] == 3 and len(page["items"]) == 2 and page["next_cursor"]


async def test_the_combined_queries_answer_as_before(
        api: Api, user: ApiUser, pg: asyncpg.Connection,
        counted: tuple[TestClient[Any, Any], QueryLog]) -> None:
    """Past the last page, an empty folder, a cursor page, another user's file, a
    deactivated account: the one-statement forms keep every answer."""
    client, _ = counted
    status, body = await api.upload(user, "only.bin", b"x")
    assert status == 201, body
    other = await api.register()
    cases = [("/api/v1/files?page=9", user, 200, {"total": 1, "n": 0}),
             ("/api/v1/files?per_page=1", other, 200, {"total": 0, "n": 0}),
             (f"/api/v1/files/{body['id']}", other, 404, None),
             (f"/api/v1/files/{body['id']}/download", user, 200, None)]
    for path, who, want, page in cases:
        async with client.get(path, headers=who.headers) as resp:
            assert resp.status == want, (path, await resp.text())
            if page is not None:
                doc = await resp.json()
                assert (doc["total"], len(doc["items"])) == (page["total"], page["n"]), doc
    await pg.execute("UPDATE users SET is_active = false WHERE id = $1::uuid", user.id)
    for path in (f"/api/v1/files/{body['id']}", "/api/v1/files", "/api/v1/files/not-a-uuid"):
        async with client.get(path, headers=user.headers) as resp:
            assert resp.status == 401, (path, await resp.text())
