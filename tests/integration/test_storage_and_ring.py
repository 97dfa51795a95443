"""The S3 node client and the PostgreSQL ring store against the real cluster."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator

import asyncpg
import pytest

from dfms.chunkservice.client import ChunkClient
from dfms.config import S3Config
from dfms.localstack.ports import PortAllocator
from dfms.metadata import migrate
from dfms.ring import InvalidRing, Ring, RingBuilder, RingConflict
from dfms.ring import store as ring_store
from dfms.ring.store import RingWatcher
from dfms.storage import NodeClient, NodeUnavailable, ObjectNotFound, StorageRejected, chunk_key
from tests.support.cluster import ClusterHandle


async def test_node_client_put_get_range_head_list_delete(cluster: ClusterHandle) -> None:
    node = cluster.s3_nodes[0]
    data = os.urandom(100_000)
    digest = hashlib.sha256(data).hexdigest()
    key = chunk_key(digest)
    assert key == f"{digest[:2]}/{digest[2:4]}/{digest}"
    async with NodeClient(node["id"], node["endpoint"], cluster.config.s3) as client:
        await client.put(key, data, digest)
        assert await client.get(key) == data
        assert await client.get(key, offset=1000, length=10) == data[1000:1010]
        assert await client.head(key) == len(data)
        assert await client.exists(key)
        listed = [item async for item in client.list(key.rsplit("/", 1)[0] + "/")]
        assert (key, len(data)) in listed
        await client.delete(key)
        assert not await client.exists(key)
        with pytest.raises(ObjectNotFound):
            await client.get(key)
        await client.delete(key)  # deleting what is gone is not an error (idempotent)


async def test_node_client_maps_failures_to_its_own_errors(cluster: ClusterHandle) -> None:
    cfg = cluster.config.s3
    free_port = PortAllocator().get("nothing-listens")
    fast = S3Config(access_key=cfg.access_key, secret_key=cfg.secret_key, max_retries=1,
                    request_timeout_s=2)
    async with NodeClient("ghost", f"http://127.0.0.1:{free_port}", fast) as client:
        with pytest.raises(NodeUnavailable, match="ghost"):
            await client.get("ab/cd/ef")
    wrong = S3Config(access_key=cfg.access_key, secret_key="not-the-secret")
    node = cluster.s3_nodes[0]
    async with NodeClient(node["id"], node["endpoint"], wrong) as client:
        with pytest.raises(StorageRejected):
            await client.put("ab/cd/ef", b"x")


@pytest.fixture
async def scratch_db(cluster: ClusterHandle) -> AsyncIterator[asyncpg.Connection]:
    """A migrated database of its own, so the shared ring is untouched."""
    admin = await asyncpg.connect(cluster.postgres_dsn)
    name = f"dfms_ring_{secrets.token_hex(4)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(cluster.postgres_dsn.rsplit("/", 1)[0] + f"/{name}")
    await migrate.migrate_up(conn)
    try:
        yield conn
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE "{name}"')
        await admin.close()


async def test_ring_epochs_reload_and_a_bad_ring_is_refused(
        scratch_db: asyncpg.Connection) -> None:
    builder = RingBuilder()
    for i, zone in enumerate(("a", "b", "c"), 1):
        builder.add_node(f"n{i}", zone)
    first = builder.build()
    await ring_store.save(scratch_db, first)
    watcher = RingWatcher(scratch_db)
    assert await watcher.refresh() is True
    assert watcher.epoch == 1
    assert await watcher.refresh() is False  # nothing new

    grown = RingBuilder(first)
    grown.add_node("n4", "a")
    await ring_store.save(scratch_db, grown.build())
    with pytest.raises(RingConflict):
        await ring_store.save(scratch_db, grown.build())  # the same epoch twice
    assert await watcher.refresh() is True
    assert watcher.ring is not None and "n4" in watcher.ring.node_ids

    # A hand-written row that breaks the rules (its checksum does not match).
    await scratch_db.execute(
        "INSERT INTO ring_state (epoch, vnodes_per_weight, members, checksum) "
        "VALUES (3, 150, $1::jsonb, 'bogus')",
        json.dumps([{"node_id": "n1", "zone": "a", "weight": 1.0, "state": "active"}]))
    with pytest.raises(InvalidRing):
        await ring_store.load_latest(scratch_db)
    assert await watcher.refresh() is False
    assert watcher.epoch == 2 and watcher.invalid_count == 1  # last good ring kept
    assert isinstance(watcher.ring, Ring)


async def test_two_chunk_services_serve_the_same_data(cluster: ClusterHandle) -> None:
    """The service keeps no state of its own: a second instance reads what the first wrote."""
    ports = PortAllocator()
    grpc_port, ops_port = ports.get("grpc"), ports.get("ops")
    env = {**os.environ, "DFMS_CONFIG": str(cluster.data_dir / "dfms.yaml"),
           "DFMS_CHUNK_SERVICE__GRPC_PORT": str(grpc_port),
           "DFMS_CHUNK_SERVICE__OPS_PORT": str(ops_port)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "dfms", "chunk-service",
                                                env=env, stderr=asyncio.subprocess.DEVNULL)
    try:
        data = os.urandom(3 * 1024 * 1024)

        async def one() -> AsyncIterator[bytes]:
            yield data

        async with ChunkClient(cluster.chunk_target) as first, \
                ChunkClient(f"127.0.0.1:{grpc_port}") as second:
            summary = await first.upload(one())
            async with asyncio.timeout(60):
                await second.wait_ready()
                got = b"".join([p async for p in second.download(chunks=summary.chunks)])
            assert got == data
            again = await second.upload(one())
            assert again.new_chunks == 0 and again.chunks == summary.chunks
    finally:
        proc.terminate()
        assert await proc.wait() == 0  # a clean, graceful stop
