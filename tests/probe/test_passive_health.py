"""Passive health marking on real processes (issue 11, item 8).

The story. A storage node dies while uploads keep coming. The health monitor is
stopped (``fresh_cluster``), so only the chunk service can notice: after
``healthmon.passive_suspect_after`` failed replica writes in a row it marks the node
suspect itself, through the monitor's code path (the row, and a ``node.health_changed``
event), logging the first failure and the transition once and the rest as a count.
Uploads go on at w=2 throughout. The replication manager, repairing onto the dead node,
does not flood the log either and leaves the suspect node alone. Then the monitor
(driven here with ``run_once()``) takes over as before: K failed probes mark the node
down, and once it is started again M good probes bring it back, after which the chunk
service writes to it again and logs that its streak is over.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
import uuid
from typing import Any

import pytest

from dfms.healthmon.service import HealthMonitor
from dfms.replication.manager import ReplicationManager
from tests.probe.conftest import ClusterFactory
from tests.support.cluster import ClusterHandle, chunk_service_puts
from tests.support.probe import (
    KIB,
    MIB,
    Probe,
    replication_config,
    wait_node_answers_probes,
    wait_until,
)

VICTIM = "node-3"
PASSIVE_LOGGER = "dfms.healthmon.passive"


async def health(probe: Probe) -> dict[str, str]:
    rows = await probe.db.fetch("SELECT id, health FROM nodes ORDER BY id")
    return {str(r["id"]): str(r["health"]) for r in rows}


async def node_events(probe: Probe, first_id: int) -> list[dict[str, Any]]:
    rows = await probe.db.fetch("SELECT key, payload FROM outbox WHERE id >= $1 AND topic = "
                                "'dfms.nodes' AND type = 'node.health_changed' ORDER BY id",
                                first_id)
    return [{"key": r["key"], **json.loads(r["payload"])} for r in rows]


def chunk_service_lines(cluster: ClusterHandle, pattern: str) -> list[str]:
    """Lines of the chunk service in the `dfms up` log that match ``pattern``."""
    return [line for line in cluster.log_text().splitlines()
            if line.startswith("chunk-service") and re.search(pattern, line)]


async def passes(monitor: HealthMonitor, count: int) -> None:
    for _ in range(count):
        stats = await monitor.run_once()
        assert stats.errors == 0, stats


async def uploads_while_the_victim_is_dead(probe: Probe, count: int) -> float:
    """Small one-chunk files, then a 12 MiB one; each must succeed at w=2. Returns how
    long it took."""
    start = time.monotonic()
    for i in range(count):
        await probe.upload(f"small-{i}.bin", os.urandom(64 * KIB))
    await probe.upload("big.bin", os.urandom(12 * MIB))
    return time.monotonic() - start


async def check_the_chunk_service_marked_it(cluster: ClusterHandle, probe: Probe,
                                            first_event: int, elapsed_s: float) -> None:
    threshold = cluster.config.healthmon.passive_suspect_after

    async def marked() -> bool:
        return (await health(probe))[VICTIM] == "suspect"
    await wait_until(f"{VICTIM} marked suspect", marked)
    assert await health(probe) == {"node-1": "healthy", "node-2": "healthy",
                                   VICTIM: "suspect"}
    (event,) = await node_events(probe, first_event)
    assert (event["key"], event["old"], event["new"]) == (VICTIM, "healthy", "suspect")
    assert event["reason"].startswith(f"{threshold} consecutive failed replica writes from "
                                      "chunk-service: "), event

    async def logged() -> bool:
        return bool(chunk_service_lines(cluster, f"{VICTIM} marked suspect"))
    await wait_until("the transition in the log", logged)
    # Once each: the first failure and the transition; the rest only as counts.
    assert len(chunk_service_lines(cluster, f"{VICTIM} marked suspect")) == 1
    assert len(chunk_service_lines(cluster, f"{VICTIM}: replica write failed")) == 1
    summaries = chunk_service_lines(cluster, f"{VICTIM}: \\d+ more failed")
    assert len(summaries) <= elapsed_s / 10 + 1, summaries
    warnings = chunk_service_lines(cluster, f"WARNING.*{VICTIM}")
    assert len(warnings) == 2 + len(summaries), warnings
    assert await chunk_service_puts(cluster, VICTIM, failed_only=True) >= 10 > len(warnings)
    assert "writing a replica failed" not in cluster.log_text()


async def repairs_leave_it_suspect(probe: Probe, manager: ReplicationManager,
                                   caplog: pytest.LogCaptureFixture, first_event: int) -> None:
    """The replication manager copies the missing replicas onto the victim (suspect
    nodes are up): every copy fails, and that is one line, not one per chunk; its own
    marking finds the node suspect already and leaves it so."""
    stats = await manager.run_once()
    assert stats.counters.get("copies_failed", 0) >= 3, stats
    assert "writing a replica failed" not in caplog.text
    first = [r for r in caplog.records if r.name == PASSIVE_LOGGER
             and r.getMessage().startswith(f"{VICTIM}: replica write failed")]
    assert len(first) == 1, caplog.text

    async def left_alone() -> bool:
        return f"{VICTIM}: " in caplog.text and "it is suspect already" in caplog.text
    await wait_until("the manager's marking to find it suspect", left_alone)
    assert (await health(probe))[VICTIM] == "suspect"
    assert len(await node_events(probe, first_event)) == 1


async def the_monitor_takes_over(cluster: ClusterHandle, probe: Probe,
                                 monitor: HealthMonitor, first_event: int) -> None:
    """K failed probes from the passive suspect to down, M good ones back to healthy."""
    k, m = cluster.config.healthmon.failures_to_down, cluster.config.healthmon.successes_to_healthy
    await passes(monitor, k - 1)
    assert (await health(probe))[VICTIM] == "suspect"
    await passes(monitor, 1)
    assert (await health(probe))[VICTIM] == "down"
    await probe.upload("while-down.bin", os.urandom(2 * MIB))

    await cluster.control("start", VICTIM)
    await wait_node_answers_probes(cluster, VICTIM)
    await passes(monitor, m - 1)
    assert (await health(probe))[VICTIM] == "down"
    await passes(monitor, 1)
    assert set((await health(probe)).values()) == {"healthy"}
    events = await node_events(probe, first_event)
    assert [(e["old"], e["new"]) for e in events] == [
        ("healthy", "suspect"), ("suspect", "down"), ("down", "healthy")]
    assert "consecutive failed probe" in events[1]["reason"]


async def the_chunk_service_writes_to_it_again(cluster: ClusterHandle, probe: Probe) -> None:
    """Once it has re-read the node's health, a write to the victim ends its streak."""
    deadline = time.monotonic() + cluster.config.chunk_service.node_refresh_interval_s * 3
    while not chunk_service_lines(cluster, f"{VICTIM}: replica write succeeded again"):
        assert time.monotonic() < deadline, "the chunk service never wrote to it again"
        await probe.upload(f"after-{uuid.uuid4().hex[:8]}.bin", os.urandom(64 * KIB))
        await asyncio.sleep(0.5)
    assert len(chunk_service_lines(cluster, f"{VICTIM}: replica write succeeded again")) == 1


async def test_a_dead_node_is_marked_suspect_by_the_chunk_service_then_the_monitor_decides(
        fresh_cluster: ClusterFactory, caplog: pytest.LogCaptureFixture) -> None:
    """Hypothesis: with the monitor stopped, a dead node turns suspect within a few
    uploads, with one transition line and one event; the monitor then moves it down
    after K probes and back after M, as it does from healthy."""
    caplog.set_level(logging.INFO, PASSIVE_LOGGER)
    cluster = await fresh_cluster(nodes=3)
    cfg = replication_config(cluster.config)
    monitor = HealthMonitor(cfg, instance_id=f"probe-{uuid.uuid4().hex[:8]}")
    manager = ReplicationManager(cfg)
    async with Probe.open(cluster, cfg) as probe:
        try:
            first_event = await probe.db.fetchval("SELECT coalesce(max(id), 0) + 1 FROM outbox")
            await cluster.control("kill", VICTIM)
            elapsed_s = await uploads_while_the_victim_is_dead(
                probe, cfg.healthmon.passive_suspect_after + 3)
            await check_the_chunk_service_marked_it(cluster, probe, first_event, elapsed_s)
            await repairs_leave_it_suspect(probe, manager, caplog, first_event)
            await the_monitor_takes_over(cluster, probe, monitor, first_event)
            await the_chunk_service_writes_to_it_again(cluster, probe)
            await probe.check_downloads()
        finally:
            await manager.close()
            await monitor.close()
