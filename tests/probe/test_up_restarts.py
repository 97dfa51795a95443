"""`dfms up` restarts the servers it runs, not only the DFMS services (issue 19).

PostgreSQL, Redis, the broker, the broker's store and an S3 node are each killed
with SIGKILL behind `dfms up`'s back (os.kill, not `dfms cluster`): each comes back
with a new pid in cluster.json, processes.json and `cluster ps`, the restart is
logged, the gateway is ready again within 30 s and an upload and its download work.
A node killed through `dfms cluster kill` for a drill stays down until `dfms cluster
start`.

Its own cluster: the probe kills servers (``fresh_cluster``, tests/probe/conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from typing import Any

import aiohttp

from dfms.localstack.records import ProcessRecord
from tests.probe.conftest import ClusterFactory
from tests.support.api import Api, ApiUser
from tests.support.cluster import ClusterHandle, pid_alive
from tests.support.probe import sha256_hex, wait_until

KILLED = ("postgres", "redis", "kafka", "kafka-store", "node-1")
READY_AGAIN_WITHIN_S = 30.0
DRILL_DOWN_S = 5.0
FILE_BYTES = 256 * 1024


def recorded_pid(info: dict[str, Any], name: str) -> int | None:
    """The pid cluster.json has for ``name``."""
    if name in ("postgres", "redis", "kafka"):
        return info[name].get("pid")
    if name == "kafka-store":
        return info["kafka"].get("store_pid")
    nodes = {n["id"]: n for n in info["s3_nodes"]}
    return (nodes.get(name) or info["services"][name]).get("pid")


async def processes(cluster: ClusterHandle) -> dict[str, Any]:
    """What `dfms cluster ps` shows."""
    ctl = cluster.info["control"]
    async with aiohttp.ClientSession(headers={"X-DFMS-Control-Token": ctl["token"]}) as s, \
            s.get(f"{ctl['url']}/processes") as resp:
        assert resp.status == 200
        return dict(await resp.json())


async def gateway_ready(api: Api) -> bool:
    try:
        async with api.session.get(f"{api.base}/ready") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def round_trip(api: Api, user: ApiUser, name: str) -> None:
    data = os.urandom(FILE_BYTES)
    status, body = await api.upload(user, name, data, **{"X-Content-SHA256": sha256_hex(data)})
    assert status == 201, body
    status, got, _ = await api.request("GET", f"/files/{body['id']}/download", user)
    assert status == 200 and got == data, status


async def kill_and_recover(cluster: ClusterHandle, api: Api, user: ApiUser, name: str
                           ) -> float:
    """SIGKILL ``name``; the seconds until it runs again with its new pid recorded and
    the gateway is ready."""
    old = recorded_pid(cluster.read_info(), name)
    assert old is not None and pid_alive(old), name
    killed_at = time.monotonic()
    os.kill(old, signal.SIGKILL)

    async def restarted() -> bool:
        new = recorded_pid(cluster.read_info(), name)
        return new is not None and new != old and pid_alive(new)
    await wait_until(f"{name} to be restarted", restarted, READY_AGAIN_WITHIN_S, 0.2)
    left = READY_AGAIN_WITHIN_S - (time.monotonic() - killed_at)
    await wait_until(f"the gateway to be ready after {name}", lambda: gateway_ready(api),
                     left, 0.2)
    took = time.monotonic() - killed_at
    await round_trip(api, user, f"after-{name}.bin")
    return took


def assert_records_current(cluster: ClusterHandle, name: str, listing: dict[str, Any]) -> None:
    pid = recorded_pid(cluster.read_info(), name)
    assert listing[name]["pid"] == pid and listing[name]["state"] == "running", listing[name]
    recorded = {r.name: r for r in ProcessRecord(cluster.data_dir).read()}
    assert recorded[name].pid == pid and recorded[name].alive


async def test_killed_servers_are_restarted_and_the_cluster_recovers(
        fresh_cluster: ClusterFactory) -> None:
    cluster = await fresh_cluster(nodes=3)
    took: dict[str, float] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        api = Api(cluster.gateway_url, http)
        user = await api.register()
        await round_trip(api, user, "before.bin")
        for name in KILLED:
            took[name] = await kill_and_recover(cluster, api, user, name)
    listing = await processes(cluster)
    log = cluster.log_text()
    for name in KILLED:
        assert listing[name]["restarts"] == 1, listing[name]
        assert_records_current(cluster, name, listing)
        line = rf"^!! restarting {re.escape(name)} in \d+\.\ds \(attempt 1\)$"
        assert re.search(line, log, re.MULTILINE), name
    print("ready again after SIGKILL:", ", ".join(f"{n} {s:.1f}s" for n, s in took.items()))


async def test_a_node_killed_for_a_drill_stays_down_until_started(
        fresh_cluster: ClusterFactory) -> None:
    cluster = await fresh_cluster(nodes=3)
    old = recorded_pid(cluster.info, "node-2")
    await cluster.control("kill", "node-2")
    await asyncio.sleep(DRILL_DOWN_S)
    row = (await processes(cluster))["node-2"]
    assert row["state"] == "stopped" and not row["running"] and row["restarts"] == 0, row
    assert old is not None and not pid_alive(old)
    assert "restarting node-2" not in cluster.log_text()

    started = await cluster.control("start", "node-2")
    assert started["pid"] != old and pid_alive(started["pid"])
    listing = await processes(cluster)
    assert recorded_pid(cluster.read_info(), "node-2") == started["pid"]
    assert_records_current(cluster, "node-2", listing)
    assert listing["node-2"]["restarts"] == 0  # started by hand, not by the supervisor
