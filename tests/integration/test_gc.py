"""Chunk garbage collection against the real cluster: mark, sweep, dedup onto condemned
chunks, writes racing a sweep, orphan objects, dry runs, the lock and the admin route.

The passes run in-process with a config of a short grace period. The cluster is
shared, and such a pass collects every unreferenced old chunk cluster-wide: that is
correct (other tests rely only on referenced data), so assertions look at the chunks
these tests made, never at global counts.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from dfms.config import Config, load_config
from dfms.gateway.commit import insert_manifest
from dfms.gateway.errors import ApiError
from dfms.gc.worker import GC_LOCK_KEY, SKIPPED, GcWorker
from dfms.runtime.service import PassStats
from dfms.storage import NodeClient, chunk_key
from tests.support.api import PASSWORD, Api, ApiUser
from tests.support.cluster import ClusterHandle
from tests.support.gc import gc_pass

GRACE_S = 1.0
KIB = 1024
MIB = 1024 * KIB


def gc_config(cluster: ClusterHandle, grace_s: float = GRACE_S) -> Config:
    return load_config(cluster.data_dir / "dfms.yaml", env={},
                       overrides={"gc": {"grace_period_s": grace_s}})


async def past_grace(grace_s: float = GRACE_S) -> None:
    await asyncio.sleep(grace_s + 0.3)


# --- fixtures -----------------------------------------------------------------------------

@pytest.fixture
async def nodes(cluster: ClusterHandle) -> AsyncIterator[list[NodeClient]]:
    s3 = cluster.config.s3
    clients = [NodeClient(n["id"], n["endpoint"], s3) for n in cluster.s3_nodes]
    yield clients
    for client in clients:
        await client.close()


@pytest.fixture(scope="module")
def admin_email(cluster: ClusterHandle) -> Iterator[str]:
    email = f"gc-admin-{uuid.uuid4().hex[:12]}@example.com"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFMS_")}
    proc = subprocess.run(
        [sys.executable, "-m", "dfms", "--data-dir", str(cluster.data_dir), "admin",
         "create-user", "--admin", "--email", email, "--password", PASSWORD],
        capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    yield email


@pytest.fixture
async def admin(api: Api, admin_email: str) -> ApiUser:
    status, body, _ = await api.request("POST", "/auth/login",
                                        json={"email": admin_email, "password": PASSWORD})
    assert status == 200, body
    tokens = body["tokens"]
    return ApiUser(body["user"]["id"], admin_email, PASSWORD, tokens["access_token"],
                   tokens["refresh_token"])


# --- helpers ------------------------------------------------------------------------------

async def upload(api: Api, user: ApiUser, name: str, data: bytes) -> dict[str, Any]:
    status, body = await api.upload(user, name, data)
    assert status == 201, body
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    return dict(body)


async def purge(api: Api, user: ApiUser, file_id: str) -> None:
    assert (await api.request("DELETE", f"/files/{file_id}", user))[0] == 204
    assert (await api.request("DELETE", f"/trash/{file_id}", user))[0] == 204


async def download_ok(api: Api, user: ApiUser, file: dict[str, Any]) -> None:
    status, body, headers = await api.request("GET", f"/files/{file['id']}/download", user)
    assert status == 200, body
    assert hashlib.sha256(body).hexdigest() == file["sha256"] == headers["X-Content-SHA256"]


async def chunks_of(db: asyncpg.Connection, file_id: str) -> list[bytes]:
    rows = await db.fetch(
        "SELECT e.chunk_sha256 FROM files f JOIN file_versions v ON v.file_id = f.id "
        "AND v.version = f.current_version JOIN manifest_entries e "
        "ON e.manifest_id = v.manifest_id WHERE f.id = $1 ORDER BY e.idx", uuid.UUID(file_id))
    return [bytes(r["chunk_sha256"]) for r in rows]


async def states(db: asyncpg.Connection, digests: list[bytes]) -> dict[bytes, str]:
    rows = await db.fetch("SELECT sha256, state FROM chunks WHERE sha256 = ANY($1::bytea[])",
                          digests)
    return {bytes(r["sha256"]): r["state"] for r in rows}


async def holders(nodes: list[NodeClient], digest: bytes) -> set[str]:
    """The nodes that have the chunk's object."""
    key = chunk_key(digest.hex())
    found = await asyncio.gather(*(n.exists(key) for n in nodes))
    return {n.node_id for n, there in zip(nodes, found, strict=True) if there}


def shared_prefix_files() -> tuple[bytes, bytes]:
    """Two files whose first megabytes are the same: they share whole chunks."""
    common = os.urandom(6 * MIB)
    return common + os.urandom(2 * MIB), common + os.urandom(2 * MIB)


# --- mark and sweep -----------------------------------------------------------------------

async def test_purged_chunks_are_condemned_then_swept_shared_ones_stay(
        api: Api, user: ApiUser, db: asyncpg.Connection, nodes: list[NodeClient],
        cluster: ClusterHandle) -> None:
    data_a, data_b = shared_prefix_files()
    a = await upload(api, user, "a.bin", data_a)
    b = await upload(api, user, "b.bin", data_b)
    chunks_a, chunks_b = await chunks_of(db, a["id"]), await chunks_of(db, b["id"])
    shared, only_a = set(chunks_a) & set(chunks_b), set(chunks_a) - set(chunks_b)
    assert shared and only_a, "the files should share some chunks but not all"
    await purge(api, user, a["id"])
    cfg = gc_config(cluster)

    await past_grace()
    counters = await gc_pass(cfg)  # the orphan manifest goes, its own chunks are condemned
    assert counters["manifests_deleted"] >= 1
    assert counters["chunks_condemned"] >= len(only_a)
    now = await states(db, list(only_a | shared))
    assert {now[d] for d in only_a} == {"condemned"}
    assert {now[d] for d in shared} == {"live"}
    for digest in only_a:  # condemned chunks keep their bytes
        assert await holders(nodes, digest)

    only_a_bytes = await db.fetchval("SELECT sum(size) FROM chunks "
                                     "WHERE sha256 = ANY($1::bytea[])", list(only_a))
    await past_grace()
    counters = await gc_pass(cfg)
    assert counters["chunks_swept"] >= len(only_a)
    assert counters["bytes_swept"] >= only_a_bytes
    assert await states(db, list(only_a)) == {}
    assert await db.fetchval("SELECT count(*) FROM chunk_replicas "
                             "WHERE chunk_sha256 = ANY($1::bytea[])", list(only_a)) == 0
    for digest in only_a:  # gone from every node, not only the recorded holders
        assert await holders(nodes, digest) == set()
    for digest in shared:
        assert len(await holders(nodes, digest)) >= cluster.config.replication.write_quorum_w
    assert set((await states(db, list(shared))).values()) == {"live"}
    await download_ok(api, user, b)


async def test_dedup_upload_resurrects_a_condemned_chunk(
        api: Api, user: ApiUser, db: asyncpg.Connection, nodes: list[NodeClient],
        cluster: ClusterHandle) -> None:
    data = os.urandom(100 * KIB)  # below the chunker's minimum: one chunk
    digest = hashlib.sha256(data).digest()
    first = await upload(api, user, "first.bin", data)
    await purge(api, user, first["id"])
    cfg = gc_config(cluster)
    await past_grace()
    await gc_pass(cfg)
    assert await states(db, [digest]) == {digest: "condemned"}
    written = await db.fetch("SELECT node_id, written_at FROM chunk_replicas "
                             "WHERE chunk_sha256 = $1 ORDER BY node_id", digest)

    again = await upload(api, user, "again.bin", data)
    assert (again["new_chunks"], again["dedup_chunks"]) == (0, 1)  # no bytes written
    row = await db.fetchrow("SELECT state, condemned_at FROM chunks WHERE sha256 = $1", digest)
    assert (row["state"], row["condemned_at"]) == ("live", None)
    assert await db.fetch("SELECT node_id, written_at FROM chunk_replicas "
                          "WHERE chunk_sha256 = $1 ORDER BY node_id", digest) == written

    await past_grace()
    await gc_pass(cfg)
    await past_grace()
    await gc_pass(cfg)  # referenced again: neither condemned nor swept
    assert await states(db, [digest]) == {digest: "live"}
    assert len(await holders(nodes, digest)) >= cluster.config.replication.write_quorum_w
    await download_ok(api, user, again)


async def test_a_chunk_being_swept_is_stored_again(
        api: Api, user: ApiUser, db: asyncpg.Connection, nodes: list[NodeClient],
        cluster: ClusterHandle) -> None:
    data = os.urandom(120 * KIB)
    digest = hashlib.sha256(data).digest()
    gone = await upload(api, user, "gone.bin", data)
    await purge(api, user, gone["id"])
    await past_grace()
    await gc_pass(gc_config(cluster))
    assert await states(db, [digest]) == {digest: "condemned"}

    # A sweeper claims the chunk (by hand here) while the same bytes are uploaded.
    await db.execute("UPDATE chunks SET state = 'sweeping' WHERE sha256 = $1", digest)
    upload_task = asyncio.create_task(api.upload(user, "back.bin", data))
    await asyncio.sleep(1.0)
    assert not upload_task.done(), "the write must wait while the chunk is being swept"
    # The sweeper finishes: objects deleted on every node, then the row.
    for node in nodes:
        await node.delete(chunk_key(digest.hex()))
    assert await db.execute("DELETE FROM chunks WHERE sha256 = $1 AND state = 'sweeping'",
                            digest) == "DELETE 1"

    status, back = await asyncio.wait_for(upload_task, 30)
    assert status == 201, back
    assert (back["new_chunks"], back["dedup_chunks"]) == (1, 0)  # stored as new
    assert await states(db, [digest]) == {digest: "live"}
    assert len(await holders(nodes, digest)) >= cluster.config.replication.write_quorum_w
    await download_ok(api, user, back)


async def test_a_sweeping_chunk_cannot_be_referenced(
        db: asyncpg.Connection) -> None:
    """The claim's other half (migration 0010): no manifest entry may point at a chunk
    being swept, so an upload slower than the grace period fails instead of committing
    a file whose bytes are being deleted."""
    digest = hashlib.sha256(uuid.uuid4().bytes).digest()
    await db.execute("INSERT INTO chunks (sha256, size, state) VALUES ($1, 1, 'sweeping')",
                     digest)
    try:
        async with db.transaction():
            manifest = await db.fetchval(
                "INSERT INTO manifests (size, sha256, chunk_count) VALUES (1, $1, 1) "
                "RETURNING id", digest)
            with pytest.raises(asyncpg.ForeignKeyViolationError, match="garbage collector"):
                await db.execute(
                    "INSERT INTO manifest_entries (manifest_id, idx, \"offset\", size, "
                    "chunk_sha256) VALUES ($1, 0, 0, 1, $2)", manifest, digest)
            raise _Rollback
    except _Rollback:
        pass
    finally:
        await db.execute("DELETE FROM chunks WHERE sha256 = $1", digest)


class _Rollback(Exception):
    pass


# --- orphan objects -----------------------------------------------------------------------

async def test_orphan_objects_past_the_grace_are_removed(
        db: asyncpg.Connection, nodes: list[NodeClient], cluster: ClusterHandle) -> None:
    grace = 3.0  # object times have one-second resolution on some nodes
    node = nodes[0]
    old_key = chunk_key(os.urandom(32).hex())
    recent_key = chunk_key(os.urandom(32).hex())
    probe_key = f"_probe/gc-test-{uuid.uuid4().hex}"
    odd_key = f"{old_key.rsplit('/', 1)[0]}/not-a-chunk-{uuid.uuid4().hex}"
    try:
        for key in (old_key, probe_key, odd_key):
            await node.put(key, b"x")
        await past_grace(grace)
        await node.put(recent_key, b"y")  # e.g. a write that has not recorded its row yet
        counters = await gc_pass(gc_config(cluster, grace))
        assert counters["orphan_objects_deleted"] >= 1
        assert not await node.exists(old_key)
        for key in (recent_key, probe_key, odd_key):
            assert await node.exists(key), key
        # The claim rows the pass used are gone again.
        assert await db.fetchval("SELECT count(*) FROM chunks WHERE state = 'sweeping' "
                                 "AND sha256 = $1", bytes.fromhex(old_key[-64:])) == 0
    finally:
        for key in (old_key, recent_key, probe_key, odd_key):
            await node.delete(key)


async def test_an_orphan_on_every_node_goes_from_every_node_in_one_pass(
        nodes: list[NodeClient], cluster: ClusterHandle) -> None:
    """A write that missed its quorum leaves the same unrecorded chunk on several nodes;
    one pass removes every copy (a claim held for one node's copy must not hide the
    other nodes' copies)."""
    grace = 3.0
    keys = [chunk_key(os.urandom(32).hex()) for _ in range(5)]
    try:
        for node in nodes:
            for key in keys:
                await node.put(key, b"orphan")
        await past_grace(grace)
        counters = await gc_pass(gc_config(cluster, grace))
        assert counters["orphan_objects_deleted"] >= len(keys) * len(nodes)
        for node in nodes:
            for key in keys:
                assert not await node.exists(key), (node.node_id, key)
    finally:
        for node in nodes:
            for key in keys:
                await node.delete(key)


async def test_an_orphan_rewritten_after_it_was_listed_is_kept(
        db: asyncpg.Connection, nodes: list[NodeClient], cluster: ClusterHandle) -> None:
    """The race the re-check closes: an orphan is listed as old, then a writer stores the
    same bytes again (a fresh object, its row not yet recorded) before the claim. The
    collector must see the fresh object and leave it."""
    from dfms.gc.collector import ChunkCollector
    from dfms.gc.nodes import NodeSet

    grace = 3.0
    digest = os.urandom(32)
    key = chunk_key(digest.hex())
    node = nodes[0]
    await node.put(key, b"old bytes")
    await past_grace(grace)
    cfg = gc_config(cluster, grace)
    try:
        _, listed_at = await node.stat(key)
        assert listed_at is not None
        cutoff = listed_at + timedelta(seconds=1)  # what the listing judged it by
        await node.put(key, b"new bytes")  # a writer, between the listing and the claim
        async with await NodeSet.load(db, cfg.s3) as node_set:
            stats = PassStats()
            collector = ChunkCollector(db, cfg.gc, node_set, stats)
            client = node_set.clients[node.node_id]
            await collector._orphan_batch(client, {digest: 9}, cutoff)
        assert await node.get(key) == b"new bytes"
        assert stats.counters.get("orphan_objects_rewritten") == 1
        assert await db.fetchval("SELECT count(*) FROM chunks WHERE sha256 = $1", digest) == 0
    finally:
        await node.delete(key)


# --- dry run ------------------------------------------------------------------------------

async def test_dry_run_reports_and_changes_nothing(
        api: Api, user: ApiUser, db: asyncpg.Connection, nodes: list[NodeClient],
        cluster: ClusterHandle) -> None:
    data = os.urandom(90 * KIB)
    digest = hashlib.sha256(data).digest()
    doomed = await upload(api, user, "doomed.bin", data)
    manifest = await db.fetchval("SELECT manifest_id FROM file_versions WHERE file_id = $1",
                                 uuid.UUID(doomed["id"]))
    await purge(api, user, doomed["id"])
    # A trashed file past its retention, for the lifecycle part.
    old = await upload(api, user, "old-trash.bin", os.urandom(10 * KIB))
    assert (await api.request("DELETE", f"/files/{old['id']}", user))[0] == 204
    days = cluster.config.lifecycle.trash_retention_days
    await db.execute("UPDATE files SET deleted_at = now() - $2::interval WHERE id = $1",
                     uuid.UUID(old["id"]), timedelta(days=days + 1))
    orphan_key = chunk_key(os.urandom(32).hex())
    await nodes[0].put(orphan_key, b"z")
    cfg = gc_config(cluster)
    await past_grace()

    try:
        dry = await gc_pass(cfg, dry_run=True)
        assert dry["trash_items_purged"] >= 1
        assert dry["manifests_deleted"] >= 1
        assert dry["chunks_condemned"] >= 1 and dry["bytes_condemned"] >= len(data)
        assert dry["orphan_objects_deleted"] >= 1 and dry["orphan_bytes_deleted"] >= 1
        assert await db.fetchval("SELECT count(*) FROM manifests WHERE id = $1", manifest) == 1
        assert await states(db, [digest]) == {digest: "live"}
        assert await db.fetchval("SELECT deleted_at IS NOT NULL FROM files WHERE id = $1",
                                 uuid.UUID(old["id"]))
        assert await nodes[0].exists(orphan_key)

        await gc_pass(cfg)  # for real: condemned now
        assert await states(db, [digest]) == {digest: "condemned"}
        assert await db.fetchval("SELECT count(*) FROM files WHERE id = $1",
                                 uuid.UUID(old["id"])) == 0
        assert not await nodes[0].exists(orphan_key)
        await past_grace()
        dry = await gc_pass(cfg, dry_run=True)
        assert dry["chunks_swept"] >= 1 and dry["bytes_swept"] >= len(data)
        assert await states(db, [digest]) == {digest: "condemned"}
        assert await holders(nodes, digest)
        await gc_pass(cfg)
        assert await states(db, [digest]) == {}
        assert await holders(nodes, digest) == set()
    finally:
        await nodes[0].delete(orphan_key)


# --- the lock -----------------------------------------------------------------------------

async def test_one_collector_at_a_time(cluster: ClusterHandle, db: asyncpg.Connection) -> None:
    cfg = gc_config(cluster)
    first, second = GcWorker(cfg), GcWorker(cfg)
    try:
        for _ in range(10):  # two passes at once: one of them runs, the other is skipped
            results: tuple[PassStats, PassStats] = await asyncio.gather(
                first.run_once(), second.run_once())
            skipped = [SKIPPED in r.counters for r in results]
            if skipped.count(True) == 1:
                ran = results[skipped.index(False)]
                assert ran.errors == 0 and "chunks_swept" in ran.counters
                assert results[skipped.index(True)].counters == {SKIPPED: 1}
                break
            # Both ran: they did not overlap. Both skipped: the cluster's gc-worker ran.
            assert skipped.count(True) != 1
        else:
            raise AssertionError("two concurrent passes never overlapped")
        # While another collector holds the lock a pass does nothing at all.
        assert await db.fetchval("SELECT pg_try_advisory_lock($1)", GC_LOCK_KEY)
        try:
            assert (await first.run_once()).counters == {SKIPPED: 1}
        finally:
            await db.execute("SELECT pg_advisory_unlock($1)", GC_LOCK_KEY)
    finally:
        await first.close()
        await second.close()


# --- the admin route ----------------------------------------------------------------------

async def test_admin_route_runs_a_pass(api: Api, admin: ApiUser, user: ApiUser,
                                       db: asyncpg.Connection) -> None:
    status, body, _ = await api.request("POST", "/admin/gc/run?dry_run=true", user)
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body, _ = await api.request("POST", "/admin/gc/run")
    assert status == 401
    status, body, _ = await api.request("POST", "/admin/gc/run?dry_run=maybe", admin)
    assert status == 400 and body["error"]["code"] == "validation_error"

    for dry_run in (True, False):
        for _ in range(100):  # the cluster's own gc-worker may be in a pass
            status, body, _ = await api.request(
                "POST", f"/admin/gc/run?dry_run={str(dry_run).lower()}", admin)
            if status != 409:
                break
            await asyncio.sleep(0.2)
        assert status == 200, body
        assert body["dry_run"] is dry_run and body["errors"] == 0
        assert isinstance(body["seconds"], float)
        counters = body["counters"]
        for name in ("trash_items_purged", "manifests_deleted", "chunks_condemned",
                     "chunks_swept", "bytes_swept", "orphan_objects_deleted"):
            assert isinstance(counters[name], int), name

    assert await db.fetchval("SELECT pg_try_advisory_lock($1)", GC_LOCK_KEY)
    try:
        status, body, _ = await api.request("POST", "/admin/gc/run", admin)
        assert status == 409 and body["error"]["code"] == "gc_running"
    finally:
        await db.execute("SELECT pg_advisory_unlock($1)", GC_LOCK_KEY)


async def test_a_manifest_naming_a_chunk_being_swept_is_a_retryable_503(
        db: asyncpg.Connection) -> None:
    """The commit of an upload whose chunk the collector claimed meanwhile fails as a
    503 the client can retry, and leaves no manifest behind."""
    digest = hashlib.sha256(os.urandom(32)).digest()
    manifests = await db.fetchval("SELECT count(*) FROM manifests")
    await db.execute("INSERT INTO chunks (sha256, size, state) VALUES ($1, 10, 'sweeping')",
                     digest)
    try:
        with pytest.raises(ApiError) as caught:
            async with db.transaction():
                await insert_manifest(db, 10, digest, [(digest, 0, 10)])
        assert (caught.value.status, caught.value.code) == (503, "storage_unavailable")
        assert await db.fetchval("SELECT count(*) FROM manifests") == manifests
    finally:
        await db.execute("DELETE FROM chunks WHERE sha256 = $1", digest)
