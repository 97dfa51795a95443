"""The health monitor against the real cluster: a killed node goes suspect, then down,
and comes back healthy; the chunk service follows the stored state.

The test always leaves the cluster as it found it: node-2 running, every node healthy
(and the chunk service has seen that), the crafted removed node deleted, and a health
monitor that `dfms up` runs (paused here so its passes cannot interleave with ours)
running again.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from prometheus_client import REGISTRY

from dfms.healthmon.probe import PROBE_PREFIX, probe_key, probe_node, probe_s3_config
from dfms.healthmon.service import HealthMonitor
from dfms.runtime.service import PassStats
from dfms.storage import NodeClient
from tests.support.api import Api, ApiUser
from tests.support.cluster import ClusterHandle, chunk_service_puts
from tests.support.probe import make_admin, wait_node_answers_probes

VICTIM = "node-2"
# Process names under which `dfms up` may run a health monitor of its own.
MONITOR_PROCESSES = ("health-monitor", "healthmon", "health_monitor")


async def node_rows(pg: asyncpg.Connection) -> dict[str, asyncpg.Record]:
    rows = await pg.fetch("SELECT id, health, health_changed_at, last_probe_at, "
                          "last_probe_latency_ms, admin_state FROM nodes")
    return {r["id"]: r for r in rows}


async def health_of(pg: asyncpg.Connection) -> dict[str, str]:
    rows = await pg.fetch("SELECT id, health FROM nodes WHERE admin_state <> 'removed'")
    return {r["id"]: r["health"] for r in rows}


async def node_events(pg: asyncpg.Connection, first_id: int) -> list[dict[str, Any]]:
    rows = await pg.fetch("SELECT key, payload FROM outbox WHERE id >= $1 AND topic = "
                          "'dfms.nodes' AND type = 'node.health_changed' ORDER BY id",
                          first_id)
    events = []
    for row in rows:
        payload = json.loads(row["payload"])
        assert payload["node_id"] == row["key"]
        events.append({"key": row["key"], **payload})
    return events


async def control_processes(cluster: ClusterHandle) -> dict[str, Any]:
    ctl = cluster.info["control"]
    async with aiohttp.ClientSession(headers={"X-DFMS-Control-Token": ctl["token"]}) as s, \
            s.get(f"{ctl['url']}/processes") as resp:
        assert resp.status == 200
        return dict(await resp.json())


async def wait_for_chunk_service(cluster: ClusterHandle, api: Api, user: ApiUser, *,
                                 writes_victim: bool) -> None:
    """Upload until the chunk service writes to the victim (or stops trying): the proof
    that it re-read the node's health. Every upload must succeed either way."""
    deadline = time.monotonic() + cluster.config.chunk_service.node_refresh_interval_s * 3
    while True:
        before = await chunk_service_puts(cluster, VICTIM)
        status, body = await api.upload(user, f"hm-{uuid.uuid4().hex[:8]}.bin",
                                        os.urandom(4096))
        assert status == 201, body
        tried = await chunk_service_puts(cluster, VICTIM) > before
        if tried == writes_victim:
            return
        assert time.monotonic() < deadline, f"chunk service never saw {VICTIM} change"
        await asyncio.sleep(0.5)


async def probe_leftovers(cluster: ClusterHandle) -> dict[str, list[str]]:
    s3 = cluster.config.s3
    left: dict[str, list[str]] = {}
    for node in cluster.s3_nodes:
        async with NodeClient(node["id"], node["endpoint"], s3) as client:
            left[node["id"]] = [key async for key, _ in client.list(PROBE_PREFIX)]
    return left


async def wait_all_healthy(cluster: ClusterHandle, pg: asyncpg.Connection) -> None:
    """An earlier test that killed a node may have left it suspect: the chunk service
    marks a node suspect itself after failed writes (dfms.healthmon.passive), and only
    the running monitor's M good probes clear that. Wait for them."""
    hm = cluster.config.healthmon
    deadline = time.monotonic() + (hm.successes_to_healthy + 2) * hm.interval_s
    while set((await health_of(pg)).values()) != {"healthy"}:
        assert time.monotonic() < deadline, f"nodes not healthy: {await health_of(pg)}"
        await asyncio.sleep(0.5)


async def passes(monitor: HealthMonitor, count: int) -> PassStats:
    """``count`` passes; the counters of the last one."""
    stats = PassStats()
    for _ in range(count):
        stats = await monitor.run_once()
        assert stats.errors == 0, stats
    return stats


async def test_killed_node_goes_suspect_down_and_back(cluster: ClusterHandle, api: Api,
                                                      pg: asyncpg.Connection) -> None:
    cfg = cluster.config
    k, m = cfg.healthmon.failures_to_down, cfg.healthmon.successes_to_healthy
    assert k >= 2 and m >= 2, "the story below needs suspect to last more than one pass"
    monitor = HealthMonitor(cfg, instance_id=f"test-{uuid.uuid4().hex[:8]}")
    await wait_all_healthy(cluster, pg)
    running = await control_processes(cluster)
    paused = [name for name in MONITOR_PROCESSES if running.get(name, {}).get("running")]
    for name in paused:
        await cluster.control("stop", name)
    removed = f"test-hm-{uuid.uuid4().hex[:8]}"
    await pg.execute("INSERT INTO nodes (id, endpoint, zone, admin_state) "
                     "VALUES ($1, 'http://127.0.0.1:9', 'zone-test', 'removed')", removed)
    chunk_service_current = False
    first_event = await pg.fetchval("SELECT coalesce(max(id), 0) + 1 FROM outbox")
    try:
        user = await api.register()
        # All healthy: every active node is probed, with a latency; the removed one is not.
        stats = await passes(monitor, 1)
        nodes = await node_rows(pg)
        active = {n for n, r in nodes.items() if r["admin_state"] != "removed"}
        assert stats.counters == {"probes_ok": len(active)}
        for node_id in active:
            row = nodes[node_id]
            assert row["health"] == "healthy"
            assert row["last_probe_at"] is not None and row["last_probe_latency_ms"] > 0
        assert nodes[removed]["last_probe_at"] is None
        assert removed not in monitor.tracks

        await cluster.control("kill", VICTIM)
        stats = await passes(monitor, 1)
        assert stats.counters["became_suspect"] == 1 and stats.counters["probes_failed"] == 1
        after_kill = await node_rows(pg)
        assert after_kill[VICTIM]["health"] == "suspect"
        assert after_kill[VICTIM]["last_probe_latency_ms"] is None  # no round trip
        assert after_kill[VICTIM]["health_changed_at"] > nodes[VICTIM]["health_changed_at"]
        assert {n: h for n, h in (await health_of(pg)).items() if n != VICTIM} == \
            dict.fromkeys(active - {VICTIM}, "healthy")

        stats = await passes(monitor, k - 2)
        assert (await health_of(pg))[VICTIM] == "suspect"
        stats = await passes(monitor, 1)
        assert stats.counters.get("became_down") == 1
        assert (await health_of(pg))[VICTIM] == "down"
        # The chunk service stops writing to the down node; uploads still succeed.
        await wait_for_chunk_service(cluster, api, user, writes_victim=False)

        await cluster.control("start", VICTIM)
        await wait_node_answers_probes(cluster, VICTIM)
        await passes(monitor, m - 1)
        assert (await health_of(pg))[VICTIM] == "down"
        stats = await passes(monitor, 1)
        assert stats.counters.get("became_healthy") == 1
        assert set((await health_of(pg)).values()) == {"healthy"}
        await wait_for_chunk_service(cluster, api, user, writes_victim=True)
        chunk_service_current = True

        assert await probe_leftovers(cluster) == {n["id"]: [] for n in cluster.s3_nodes}
        # Each change is announced once, with the node's id as the key.
        events = await node_events(pg, first_event)
        assert [(e["key"], e["old"], e["new"]) for e in events] == [
            (VICTIM, "healthy", "suspect"), (VICTIM, "suspect", "down"),
            (VICTIM, "down", "healthy")]
        assert "consecutive failed" in events[1]["reason"] and events[2]["latency_ms"] > 0
        assert (await node_rows(pg))[removed]["last_probe_at"] is None

        # The admin view shows what the monitor wrote.
        admin = await make_admin(cluster, api)
        status, body, _ = await api.request("GET", "/admin/cluster", admin)
        assert status == 200, body
        shown = {n["id"]: n for n in body["nodes"]}
        assert shown[VICTIM]["health"] == "healthy"
        assert shown[VICTIM]["last_probe_at"] is not None
        assert shown[VICTIM]["last_probe_latency_ms"] > 0
    finally:
        await monitor.close()
        await cluster.control("start", VICTIM)
        await pg.execute("UPDATE nodes SET health = 'healthy', health_changed_at = now() "
                         "WHERE health <> 'healthy'")
        await pg.execute("DELETE FROM nodes WHERE id = $1", removed)
        for name in paused:
            await cluster.control("start", name)
        if not chunk_service_current:  # let the chunk service re-read the healthy states
            await asyncio.sleep(cfg.chunk_service.node_refresh_interval_s + 1)


async def test_a_slow_probe_fails_but_keeps_its_latency(cluster: ClusterHandle) -> None:
    node = cluster.s3_nodes[0]
    key = probe_key(f"test-{uuid.uuid4().hex[:8]}", node["id"])
    s3 = probe_s3_config(cluster.config.s3, timeout_s=5.0)
    async with NodeClient(node["id"], node["endpoint"], s3) as client:
        fast = await probe_node(client, key, timeout_s=5.0, latency_limit_ms=5000.0)
        slow = await probe_node(client, key, timeout_s=5.0, latency_limit_ms=0.001)
        assert not await client.exists(key)
    assert fast.ok and fast.error is None and fast.latency_ms is not None
    assert not slow.ok and slow.latency_ms is not None and slow.latency_ms > 0.001
    assert slow.error is not None and "too slow" in slow.error


async def test_a_node_with_a_data_dir_reports_its_disk(cluster: ClusterHandle,
                                                       pg: asyncpg.Connection,
                                                       tmp_path: Path) -> None:
    node = cluster.s3_nodes[0]["id"]
    before = await pg.fetchval("SELECT data_dir FROM nodes WHERE id = $1", node)
    monitor = HealthMonitor(cluster.config, instance_id=f"test-{uuid.uuid4().hex[:8]}")

    def disk(name: str) -> float | None:
        return REGISTRY.get_sample_value(f"dfms_node_disk_{name}_bytes", {"node": node})

    try:
        await pg.execute("UPDATE nodes SET data_dir = $2 WHERE id = $1", node, str(tmp_path))
        await monitor.run_once()
        usage = shutil.disk_usage(tmp_path)
        assert disk("total") == usage.total
        free = disk("free")
        assert free is not None and 0 < free <= usage.total
        # Without a readable directory there is no series (never a stale number).
        await pg.execute("UPDATE nodes SET data_dir = $2 WHERE id = $1", node,
                         str(tmp_path / "missing"))
        await monitor.run_once()
        assert disk("total") is None and disk("free") is None
    finally:
        await pg.execute("UPDATE nodes SET data_dir = $2 WHERE id = $1", node, before)
        await monitor.close()

