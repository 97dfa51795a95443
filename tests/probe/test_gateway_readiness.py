"""The gateway's readiness follows the write path: with two of three nodes down (W=2)
no upload can succeed, and the gateway says so — degraded, reads only — while it keeps
serving reads; when the nodes return it is fully ready again.

Its own cluster: the probe kills storage nodes (``fresh_cluster``, tests/probe/conftest.py).
"""

from __future__ import annotations

import os
from typing import Any

from tests.probe.conftest import ClusterFactory
from tests.support.probe import MIB, Probe, make_admin, sha256_hex, wait_until

DOWN = ("node-2", "node-3")


async def _ready(probe: Probe) -> tuple[int, dict[str, Any]]:
    async with probe.api.session.get(f"{probe.cluster.gateway_url}/ready") as resp:
        return resp.status, await resp.json()


async def _wait_writable(probe: Probe, writable: bool) -> dict[str, Any]:
    """The /ready body once ``writable`` is what is expected (the chunk service re-reads
    node health every few seconds)."""
    seen: dict[str, Any] = {}

    async def settled() -> bool:
        nonlocal seen
        _, seen = await _ready(probe)
        return seen.get("writable") is writable
    await wait_until(f"/ready to say writable={writable}", settled, timeout_s=30,
                     every_s=0.5)
    return seen


async def test_gateway_reports_degraded_without_a_write_quorum_and_recovers(
        fresh_cluster: ClusterFactory) -> None:
    cluster = await fresh_cluster(nodes=3)
    async with Probe.open(cluster, cluster.config) as probe:
        admin = await make_admin(cluster, probe.api)
        stored = await probe.upload("before.bin", os.urandom(2 * MIB))
        status, body = await _ready(probe)
        assert status == 200 and body["status"] == "ready" and body["writable"] is True, body

        for node in DOWN:
            await cluster.control("kill", node)
            await probe.set_health(node, "down")  # what the health monitor would store
        await _wait_writable(probe, False)
        status, body = await _ready(probe)
        # Still in the load balancer (reads work), but not writable, and why.
        assert status == 200 and body["status"] == "degraded", body
        chunk_service = body["dependencies"]["chunk_service"]
        assert chunk_service["ok"] is True and chunk_service["degraded"] is True
        assert "1 usable node(s), write quorum needs 2" in chunk_service["detail"]
        expected_path = {"writable": False, "usable_nodes": 1, "write_quorum": 2,
                         "down_nodes": list(DOWN),
                         "detail": "1 usable node(s), write quorum needs 2"}
        assert chunk_service["write_path"] == expected_path
        status, view, _ = await probe.api.request("GET", "/admin/cluster", admin)
        assert status == 200 and view["write_path"] == expected_path, view

        # What it says is true: uploads fail, reads of what is stored still work.
        status, failed = await probe.api.upload(probe.user, "during.bin", b"x" * 1000)
        assert status == 503 and failed["error"]["code"] == "storage_unavailable", failed
        status, data, _ = await probe.api.request(
            "GET", f"/files/{stored['id']}/download", probe.user)
        assert status == 200 and sha256_hex(data) == stored["sha256"]

        for node in DOWN:
            await cluster.control("start", node)
            await probe.set_health(node, "healthy")
        body = await _wait_writable(probe, True)
        assert body["status"] == "ready" and body["dependencies"]["chunk_service"][
            "write_path"]["usable_nodes"] == 3, body
        status, view, _ = await probe.api.request("GET", "/admin/cluster", admin)
        assert view["write_path"]["writable"] is True and view["write_path"]["down_nodes"] == []
        await probe.upload("after.bin", os.urandom(MIB))
