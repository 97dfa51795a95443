"""The ring membership service (dfms.metadata.membership) on real PostgreSQL.

Each test works in a migrated scratch database of the session PostgreSQL, so the
shared ring is never touched; the endpoints probed are the cluster's real S3 nodes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from dfms.config import S3Config
from dfms.metadata import membership, migrate
from dfms.metadata.errors import (
    LastActiveNode,
    NodeExists,
    NodeHoldsOnlyCopy,
    NodeNotFound,
    NodeRemoved,
    NodeUnreachable,
    RingRefused,
)
from dfms.metadata.membership import NodeSpec
from dfms.metadata.nodes import load_nodes
from dfms.nodes import InvalidNode
from dfms.ring import DRAINING, InvalidRing, RingConflict, RingData
from dfms.ring import store as ring_store
from tests.support.cluster import ClusterHandle

pytestmark = pytest.mark.cluster


@pytest.fixture
async def scratch(cluster: ClusterHandle) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a migrated database of its own."""
    admin = await asyncpg.connect(cluster.postgres_dsn)
    name = f"dfms_members_{secrets.token_hex(4)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    pool = await asyncpg.create_pool(cluster.postgres_dsn.rsplit("/", 1)[0] + f"/{name}",
                                     min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            await migrate.migrate_up(conn)
        yield pool
    finally:
        await pool.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
def s3(cluster: ClusterHandle) -> S3Config:
    return cluster.config.s3


def spec(cluster: ClusterHandle, node_id: str, zone: str = "z", weight: float = 1.0,
         ) -> NodeSpec:
    return NodeSpec(node_id, cluster.s3_nodes[0]["endpoint"], zone, weight)


async def ring_changes(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT payload::text FROM outbox WHERE type = 'ring.changed' "
                            "ORDER BY id")
    return [json.loads(r["payload"]) for r in rows]


async def latest(pool: asyncpg.Pool) -> RingData:
    ring = await ring_store.load_latest(pool)
    assert ring is not None
    return ring


async def three_nodes(pool: asyncpg.Pool, cluster: ClusterHandle) -> None:
    nodes = [NodeSpec(n["id"], n["endpoint"], n["zone"]) for n in cluster.s3_nodes[:3]]
    assert await membership.register_nodes(pool, nodes, bucket="b") == 1


# --- dfms up ------------------------------------------------------------------------------

async def test_register_nodes_builds_the_ring_once(scratch: asyncpg.Pool,
                                                   cluster: ClusterHandle) -> None:
    nodes = [NodeSpec(f"n{i}", f"http://127.0.0.1:{9000 + i}", f"zone-{i}") for i in (1, 2)]
    assert await membership.register_nodes(scratch, nodes, bucket="b") == 1
    # Again, with n1 on another port and an operator's weight on n2: no new epoch, the
    # endpoint follows the process, the weight stays.
    await scratch.execute("UPDATE nodes SET weight = 2 WHERE id = 'n2'")
    moved = [NodeSpec("n1", "http://127.0.0.1:9100", "zone-1"), nodes[1]]
    assert await membership.register_nodes(scratch, moved, bucket="b") == 1
    rows = await scratch.fetch("SELECT id, endpoint, weight FROM nodes ORDER BY id")
    assert [tuple(r) for r in rows] == [("n1", "http://127.0.0.1:9100", 1.0),
                                        ("n2", "http://127.0.0.1:9002", 2.0)]
    # A third node joins with the weight its row holds.
    await scratch.execute("INSERT INTO nodes (id, endpoint, bucket, zone, weight) "
                          "VALUES ('n3', 'http://127.0.0.1:9003', 'b', 'zone-3', 0.5)")
    grown = [*moved, NodeSpec("n3", "http://127.0.0.1:9003", "zone-3")]
    assert await membership.register_nodes(scratch, grown, bucket="b") == 2
    ring = await latest(scratch)
    assert {(m.node_id, m.weight) for m in ring.members} == {("n1", 1.0), ("n2", 1.0),
                                                             ("n3", 0.5)}
    assert [(c["epoch"], c["added"]) for c in await ring_changes(scratch)] == [
        (1, ["n1", "n2"]), (2, ["n3"])]
    assert await membership.register_nodes(scratch, [], bucket="b") == 2


async def test_register_nodes_stores_where_each_node_keeps_its_data(scratch: asyncpg.Pool
                                                                    ) -> None:
    nodes = [NodeSpec("n1", "http://127.0.0.1:9001", "z", data_dir="/data/s3/n1"),
             NodeSpec("n2", "http://127.0.0.1:9002", "z")]
    await membership.register_nodes(scratch, nodes, bucket="b")
    assert {r.node_id: r.data_dir for r in await load_nodes(scratch)} == {
        "n1": "/data/s3/n1", "n2": None}
    # The directory follows the running process, like the endpoint.
    moved = [replace(nodes[0], data_dir="/elsewhere/n1"), nodes[1]]
    await membership.register_nodes(scratch, moved, bucket="b")
    assert {r.node_id: r.data_dir for r in await load_nodes(scratch)}["n1"] == "/elsewhere/n1"


# --- add ----------------------------------------------------------------------------------

async def test_add_node_makes_one_epoch_with_its_event(scratch: asyncpg.Pool, s3: S3Config,
                                                       cluster: ClusterHandle) -> None:
    done = await membership.add_node(scratch, spec(cluster, "store-1", "rack-1", 0.5), s3)
    assert done.epoch == 1 and done.ring is not None and done.ring.epoch == 1
    assert (done.node.id, done.node.zone, done.node.weight, done.node.admin_state,
            done.node.bucket) == ("store-1", "rack-1", 0.5, "active", s3.bucket)
    assert membership.member(done.ring, "store-1") is not None
    assert [(c["epoch"], c["added"]) for c in await ring_changes(scratch)] == [
        (1, ["store-1"])]
    with pytest.raises(NodeExists):
        await membership.add_node(scratch, spec(cluster, "store-1"), s3)
    assert (await latest(scratch)).epoch == 1


async def test_add_node_refusals_leave_no_trace(scratch: asyncpg.Pool, s3: S3Config,
                                                cluster: ClusterHandle) -> None:
    with pytest.raises(NodeUnreachable) as dead:
        await membership.add_node(scratch, NodeSpec("dead-1", "http://127.0.0.1:1", "z"), s3)
    assert str(dead.value).startswith("node dead-1: the S3 endpoint http://127.0.0.1:1 ")
    with pytest.raises(RingRefused) as huge:
        await membership.add_node(scratch, spec(cluster, "huge-1", weight=1e9), s3)
    assert isinstance(huge.value, InvalidRing)  # the HTTP edge answers 400 for it
    assert "the ring cannot take node 'huge-1'" in str(huge.value)
    assert await scratch.fetchval("SELECT count(*) FROM nodes") == 0
    assert await ring_store.load_latest(scratch) is None
    assert await ring_changes(scratch) == []


async def test_concurrent_adds_each_get_an_epoch(scratch: asyncpg.Pool, s3: S3Config,
                                                 cluster: ClusterHandle) -> None:
    results = await asyncio.gather(*(
        membership.add_node(scratch, spec(cluster, f"c-{i}"), s3) for i in range(4)))
    assert sorted(r.epoch for r in results if r.epoch is not None) == [1, 2, 3, 4]
    assert {m.node_id for m in (await latest(scratch)).members} == {f"c-{i}" for i in range(4)}


# --- the retry scheme ---------------------------------------------------------------------

def conflicting_save(monkeypatch: pytest.MonkeyPatch, conflicts: int) -> list[int]:
    """``ring_store.save`` raising ``RingConflict`` its first ``conflicts`` times (after
    it saved, as a lost race would look); returns the list of attempted epochs."""
    real, attempts = ring_store.save, []

    async def save(conn: Any, data: RingData) -> None:
        attempts.append(data.epoch)
        await real(conn, data)
        if len(attempts) <= conflicts:
            raise RingConflict(f"epoch {data.epoch} lost a race (injected)")

    monkeypatch.setattr(ring_store, "save", save)
    return attempts


async def test_a_ring_conflict_is_rolled_back_and_tried_once_more(
        scratch: asyncpg.Pool, s3: S3Config, cluster: ClusterHandle,
        monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = conflicting_save(monkeypatch, 1)
    done = await membership.add_node(scratch, spec(cluster, "retry-1"), s3)
    # The first attempt's node row, ring and event were all rolled back: the second
    # inserted the row again and saved the same epoch.
    assert attempts == [1, 1] and done.epoch == 1
    assert len(await ring_changes(scratch)) == 1


async def test_a_second_ring_conflict_propagates(
        scratch: asyncpg.Pool, cluster: ClusterHandle,
        monkeypatch: pytest.MonkeyPatch) -> None:
    await three_nodes(scratch, cluster)
    attempts = conflicting_save(monkeypatch, 2)
    with pytest.raises(RingConflict):
        await membership.drain_node(scratch, cluster.s3_nodes[0]["id"])
    assert attempts == [2, 2]
    assert (await latest(scratch)).epoch == 1
    assert await scratch.fetchval("SELECT admin_state FROM nodes WHERE id = $1",
                                  cluster.s3_nodes[0]["id"]) == "active"


# --- drain, remove ------------------------------------------------------------------------

async def test_drain_then_remove(scratch: asyncpg.Pool, cluster: ClusterHandle) -> None:
    await three_nodes(scratch, cluster)
    node_id = cluster.s3_nodes[2]["id"]
    drained = await membership.drain_node(scratch, node_id)
    assert drained.epoch == 2 and drained.node.admin_state == "draining"
    assert membership.member(drained.ring, node_id).state == DRAINING  # type: ignore[union-attr]
    again = await membership.drain_node(scratch, node_id)
    assert again.epoch is None and again.node.admin_state == "draining"

    removed = await membership.remove_node(scratch, node_id)
    assert removed.epoch == 3 and removed.node.admin_state == "removed"
    assert membership.member(removed.ring, node_id) is None
    repeat = await membership.remove_node(scratch, node_id)
    assert repeat.epoch is None and repeat.node.admin_state == "removed"
    with pytest.raises(NodeRemoved):
        await membership.drain_node(scratch, node_id)
    changes = await ring_changes(scratch)
    assert [(c["epoch"], c["draining"], c["removed"]) for c in changes[1:]] == [
        (2, [node_id], []), (3, [], [node_id])]


async def test_unknown_nodes_are_refused(scratch: asyncpg.Pool) -> None:
    for change in (membership.drain_node, membership.remove_node):
        with pytest.raises(NodeNotFound):
            await change(scratch, "no-such-node")
    with pytest.raises(NodeNotFound):
        await membership.set_weight(scratch, "no-such-node", 2.0)
    with pytest.raises(NodeNotFound):
        await membership.get_node(scratch, "no-such-node")


async def test_the_last_active_node_stays(scratch: asyncpg.Pool,
                                          cluster: ClusterHandle) -> None:
    await three_nodes(scratch, cluster)
    first, second, third = (n["id"] for n in cluster.s3_nodes[:3])
    await membership.drain_node(scratch, second)
    await membership.drain_node(scratch, third)
    with pytest.raises(LastActiveNode):
        await membership.drain_node(scratch, first)
    with pytest.raises(LastActiveNode):
        await membership.remove_node(scratch, first)
    assert (await latest(scratch)).epoch == 3


async def test_remove_refused_while_the_node_holds_the_only_copy(
        scratch: asyncpg.Pool, cluster: ClusterHandle) -> None:
    await three_nodes(scratch, cluster)
    node_id, other = cluster.s3_nodes[0]["id"], cluster.s3_nodes[1]["id"]
    sha = hashlib.sha256(uuid.uuid4().bytes).digest()
    await scratch.execute("INSERT INTO chunks (sha256, size, state) VALUES ($1, 10, 'live')",
                          sha)
    await scratch.execute("INSERT INTO chunk_replicas (chunk_sha256, node_id, state) "
                          "VALUES ($1, $2, 'ok')", sha, node_id)
    with pytest.raises(NodeHoldsOnlyCopy) as only:
        await membership.remove_node(scratch, node_id)
    assert only.value.chunks == 1 and "1 live chunk;" in str(only.value)
    await scratch.execute("INSERT INTO chunk_replicas (chunk_sha256, node_id, state) "
                          "VALUES ($1, $2, 'ok')", sha, other)
    assert (await membership.remove_node(scratch, node_id)).epoch == 2


# --- weight -------------------------------------------------------------------------------

async def test_set_weight_changes_row_and_ring(scratch: asyncpg.Pool,
                                               cluster: ClusterHandle) -> None:
    await three_nodes(scratch, cluster)
    node_id = cluster.s3_nodes[0]["id"]
    done = await membership.set_weight(scratch, node_id, 2.5)
    assert done.epoch == 2 and done.node.weight == 2.5
    assert membership.member(done.ring, node_id).weight == 2.5  # type: ignore[union-attr]
    assert (await membership.set_weight(scratch, node_id, 2.5)).epoch is None
    with pytest.raises(InvalidNode):
        await membership.set_weight(scratch, node_id, 0)
    with pytest.raises(RingRefused):
        await membership.set_weight(scratch, node_id, 1e9)
    assert (await membership.get_node(scratch, node_id))[0].weight == 2.5
    await membership.remove_node(scratch, node_id)
    with pytest.raises(NodeRemoved):
        await membership.set_weight(scratch, node_id, 1.0)
    changes = await ring_changes(scratch)
    assert [c["epoch"] for c in changes] == [1, 2, 3]


async def test_listing_reads_nodes_with_the_ring(scratch: asyncpg.Pool,
                                                 cluster: ClusterHandle) -> None:
    assert await membership.list_nodes(scratch) == ([], None)
    await three_nodes(scratch, cluster)
    nodes, ring = await membership.list_nodes(scratch)
    assert [n.id for n in nodes] == sorted(n["id"] for n in cluster.s3_nodes[:3])
    assert ring is not None and ring == await membership.ring_in_force(scratch)
