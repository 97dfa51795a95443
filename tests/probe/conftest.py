"""Fixtures of the fault-injection probes: a fresh cluster per test.

The probes kill nodes, brokers and services and corrupt replicas, so none of them
may share a cluster with another test: ``fresh_cluster(nodes=3)`` starts its own
``dfms up`` in a new data dir and the fixture always stops it (logs are kept when
it does not stop cleanly, or when the test failed). The session-wide ``cluster``
fixture of ``tests/conftest.py`` is not used here.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.conftest import TEST_CLUSTER_CONFIG
from tests.support.cluster import ClusterHandle, dump_service_stacks, make_data_dir
from tests.support.probe import ON_TIMEOUT

ClusterFactory = Callable[..., Awaitable[ClusterHandle]]

# Background services the probes drive themselves: their passes would race the
# test's own (the health monitor would also overwrite the health the test sets).
DRIVEN_BY_TEST = ("replication-manager", "health-monitor")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> object:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
async def fresh_cluster(request: pytest.FixtureRequest) -> AsyncIterator[ClusterFactory]:
    """``await fresh_cluster(nodes=3)``: a new cluster, with the replication manager and
    the health monitor stopped (the test runs passes and sets node health itself)."""
    started: list[tuple[Path, ClusterHandle]] = []

    async def start(nodes: int = 3, *, quiet: bool = True) -> ClusterHandle:
        data_dir = make_data_dir("dfms-probe-")
        handle = ClusterHandle(data_dir=data_dir / "cluster")
        handle.data_dir.mkdir()
        started.append((data_dir, handle))
        await asyncio.to_thread(handle.start, "--nodes", str(nodes),
                                config=TEST_CLUSTER_CONFIG)
        ON_TIMEOUT.append(functools.partial(dump_service_stacks, handle))
        if quiet:
            for name in DRIVEN_BY_TEST:
                await handle.control("stop", name)
        return handle

    try:
        yield start
    finally:
        failed = request.node.stash.get(_FAILED, True)
        ON_TIMEOUT.clear()
        for data_dir, handle in started:
            code = await asyncio.to_thread(handle.stop)
            if code == 0 and not failed:
                shutil.rmtree(data_dir, ignore_errors=True)
            else:
                print(f"probe cluster (dfms up exit code {code}): logs kept in {data_dir}")
