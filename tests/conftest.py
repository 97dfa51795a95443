"""Session-wide fixtures: one real local cluster for every integration test.

Set ``DFMS_TEST_CLUSTER`` to the data dir (or cluster.json) of a cluster that
`dfms up` is already running to reuse it instead of starting one.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.support.api import Api, ApiUser
from tests.support.cluster import ClusterHandle, attach, make_data_dir

# Generous rate limits (the suite registers many users from one address) and a
# cheaper Argon2 cost; rate limiting itself is tested on a gateway with tight limits.
TEST_CLUSTER_CONFIG = Path(__file__).parent / "cluster.yaml"


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterHandle]:
    external = os.environ.get("DFMS_TEST_CLUSTER")
    if external:
        yield attach(external)
        return
    data_dir = make_data_dir("dfms-test-")
    handle = ClusterHandle(data_dir=data_dir / "cluster")
    handle.data_dir.mkdir()
    handle.start(config=TEST_CLUSTER_CONFIG)
    try:
        # Tests that exercise the replication manager start it (or drive its passes)
        # themselves; running on its own it would act on other tests' hand-made rows.
        asyncio.run(handle.control("stop", "replication-manager"))
        yield handle
    finally:
        code = handle.stop()
        if code == 0:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            print(f"dfms up exited with {code}; logs kept in {data_dir}")


@pytest.fixture
async def api(cluster: ClusterHandle) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        yield Api(cluster.gateway_url, session)


@pytest.fixture
async def user(api: Api) -> ApiUser:
    """A freshly registered account."""
    return await api.register()


@pytest.fixture
async def db(cluster: ClusterHandle) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the cluster's PostgreSQL (``pg`` is the same, by another name)."""
    conn = await asyncpg.connect(cluster.postgres_dsn)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def pg(db: asyncpg.Connection) -> asyncpg.Connection:
    return db
