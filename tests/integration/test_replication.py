"""The replication manager on the suite's cluster: events wake it, GC's chunks are
off limits, and the CLI runs one pass. The fault drills (nodes lost, added,
drained, rotting replicas) are in tests/probe, each on a cluster of its own."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from dfms.chunkservice.client import ChunkClient
from dfms.replication.cluster import NodeClients, Throttle, load_view
from dfms.replication.repair import ChunkRepairer, Outcome
from dfms.ring import Ring
from dfms.ring import store as ring_store
from dfms.runtime.service import PassStats
from dfms.storage import NodeClient, chunk_key
from tests.support.api import Api
from tests.support.cluster import ClusterHandle
from tests.support.probe import make_admin

MANAGER = "replication-manager"


async def frames(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def metric(cluster: ClusterHandle, name: str, **labels: str) -> float:
    url = cluster.info["services"][MANAGER]["ops_url"]
    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v
                                              for k, v in labels.items()))


async def replica_bytes(cluster: ClusterHandle, node_id: str, digest: bytes) -> bytes:
    node = next(n for n in cluster.s3_nodes if n["id"] == node_id)
    async with NodeClient(node_id, node["endpoint"], cluster.config.s3) as raw:
        return await raw.get(chunk_key(digest.hex()))


async def test_a_bad_replica_found_by_a_reader_is_repaired_on_the_event(
        cluster: ClusterHandle) -> None:
    """The running manager's timed passes are an hour apart (tests/cluster.yaml), so
    only the ``chunk.replica_bad`` event, relayed through Kafka, can wake it in time."""
    data = os.urandom(300 * 1024)  # one chunk
    digest = hashlib.sha256(data).digest()
    async with ChunkClient(cluster.chunk_target) as client:
        summary = await client.upload(frames(data))
        db = await asyncpg.connect(cluster.postgres_dsn)
        await cluster.control("start", MANAGER)
        try:
            # Its start-up pass (a full one) is over before the replica goes bad.
            deadline = time.monotonic() + 60
            while await metric(cluster, "dfms_service_passes_total",
                               service="replication_manager") < 1:
                assert time.monotonic() < deadline, "the manager never finished a pass"
                await asyncio.sleep(0.5)
            ring_data = await ring_store.load_latest(db)
            assert ring_data is not None
            first = Ring(ring_data).preference_list(digest.hex(), 3)[0]  # read first
            node = next(n for n in cluster.s3_nodes if n["id"] == first)
            async with NodeClient(first, node["endpoint"], cluster.config.s3) as raw:
                await raw.put(chunk_key(digest.hex()), b"rot" * 1000)

            read = b"".join([piece async for piece in client.download(chunks=summary.chunks)])
            assert read == data  # served from a good replica; the bad one was reported
            deadline = time.monotonic() + 120
            while True:
                state = await db.fetchval("SELECT state FROM chunk_replicas WHERE "
                                          "chunk_sha256 = $1 AND node_id = $2", digest, first)
                queued = await db.fetchval("SELECT count(*) FROM repair_queue "
                                           "WHERE chunk_sha256 = $1", digest)
                if state == "ok" and queued == 0:
                    break
                assert time.monotonic() < deadline, (state, queued)
                await asyncio.sleep(0.5)
            assert await replica_bytes(cluster, first, digest) == data
            assert await metric(cluster, "dfms_events_consumed_total",
                                consumer=MANAGER, outcome="handled") >= 1
        finally:
            await cluster.control("stop", MANAGER)
            await db.close()


async def test_chunks_being_swept_are_never_copied(cluster: ClusterHandle) -> None:
    """A chunk the garbage collector has claimed ('sweeping') is having its objects
    deleted: a repair must not write them back."""
    data = os.urandom(4096)
    digest = hashlib.sha256(data).digest()
    pool = await asyncpg.create_pool(cluster.postgres_dsn, min_size=1, max_size=2)
    cfg = cluster.config
    clients = NodeClients(cfg.s3)
    try:
        await pool.execute("INSERT INTO chunks (sha256, size, state) "
                           "VALUES ($1, $2, 'sweeping')", digest, len(data))
        await pool.execute("INSERT INTO chunk_replicas (chunk_sha256, node_id) "
                           "VALUES ($1, 'node-1')", digest)
        await replica_bytes_put(cluster, "node-1", digest, data)
        view = await load_view(pool, cfg.replication.repair_delay_s)
        await clients.sync(view.endpoints)
        stats = PassStats()
        repairer = ChunkRepairer(pool, clients, view, replicas_n=3, throttle=Throttle(0),
                                 stats=stats)
        assert await repairer.repair(digest) is Outcome.GONE
        assert "replicas_copied" not in stats.counters
        for node in cluster.s3_nodes:
            if node["id"] != "node-1":
                async with NodeClient(node["id"], node["endpoint"], cfg.s3) as raw:
                    assert not await raw.exists(chunk_key(digest.hex()))
    finally:
        await pool.execute("DELETE FROM chunks WHERE sha256 = $1", digest)
        await clients.close()
        await pool.close()
        node = next(n for n in cluster.s3_nodes if n["id"] == "node-1")
        async with NodeClient("node-1", node["endpoint"], cfg.s3) as raw:
            await raw.delete(chunk_key(digest.hex()))


async def replica_bytes_put(cluster: ClusterHandle, node_id: str, digest: bytes,
                            data: bytes) -> None:
    node = next(n for n in cluster.s3_nodes if n["id"] == node_id)
    async with NodeClient(node_id, node["endpoint"], cluster.config.s3) as raw:
        await raw.put(chunk_key(digest.hex()), data)


async def run_cli(cluster: ClusterHandle, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFMS_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dfms", "--data-dir", str(cluster.data_dir), *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


def counters(output: str) -> dict[str, int]:
    found = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            found[parts[0]] = int(parts[1])
    return found


async def test_the_cli_runs_one_pass_and_one_scrub(cluster: ClusterHandle, api: Api) -> None:
    """What an operator runs by hand: one reconciliation pass, one full scrub."""
    # Something to scrub for sure: a fresh chunk with all its replicas.
    async with ChunkClient(cluster.chunk_target) as client:
        await client.upload(frames(os.urandom(2048) + uuid.uuid4().bytes))
    code, out = await run_cli(cluster, "replication-manager", "--once")
    assert code == 0, out
    found = counters(out)
    assert found["full_passes"] == 1 and found["errors"] == 0, out
    assert found["chunks_checked"] >= 1, out
    code, out = await run_cli(cluster, "replication-manager", "--scrub")
    assert code == 0, out
    found = counters(out)
    assert found["pass_completed"] == 1 and found["replicas_scrubbed"] >= 3, out
    assert "pass_seconds" in out, out  # the full-pass time an operator sizes the rate by
    code, out = await run_cli(cluster, "replication-manager", "--once", "--scrub")
    assert code == 2 and "not allowed with" in out, out

    # The pass it just finished is what GET /admin/cluster reports.
    admin = await make_admin(cluster, api)
    status, view, _ = await api.request("GET", "/admin/cluster", admin)
    assert status == 200, view
    scrub = view["scrub"]
    assert scrub["last_pass_seconds"] is not None and scrub["last_pass_seconds"] >= 0
    assert scrub["last_pass_replicas"] >= found["replicas_scrubbed"]
    assert scrub["pass_replicas"] == 0  # a new pass has not started since
