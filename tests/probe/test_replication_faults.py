"""Replication under faults, on real processes: nothing acknowledged is lost, and the
cluster always finds its way back to n verified replicas.

The story. Every test gets a cluster of its own (``fresh_cluster``) and breaks it
the way production breaks: a storage node dies in the middle of an upload, a node
stays away past the repair delay, a machine joins and another is drained, disks
rot (a replica overwritten with garbage, another deleted), the Kafka broker goes
away while uploads keep coming, and the chunk service dies mid-upload. The
cluster's own replication manager and health monitor are stopped: the test plays
the health monitor (it writes node health to PostgreSQL as the monitor would) and
drives ``ReplicationManager.run_once()`` itself, so every pass is observed.

What must hold whatever happens, checked at the end of each test:

* nothing acknowledged is lost: the listing is exactly the uploads that were
  acknowledged, and each file downloads through the HTTP gateway with its SHA-256;
* the cluster converges within a bounded number of passes (at most 3 working
  passes, then a pass that finds nothing to do): every live chunk has exactly
  n ok replica rows, on the nodes ``plan_chunk`` names as its targets, each of
  which reads back with the chunk's SHA-256, and the repair queue is empty.

The hypothesis each test probes is in its docstring.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os

import aiohttp

from dfms.events.topics import CHUNKS_TOPIC
from dfms.replication.manager import ReplicationManager
from dfms.replication.scrubber import Scrubber
from dfms.storage import chunk_key
from tests.probe.conftest import ClusterFactory
from tests.support.gc import gc_pass
from tests.support.probe import (
    MIB,
    Probe,
    did_work,
    event_type,
    make_admin,
    read_topic,
    replication_config,
    start_extra_node,
    wait_until,
)

OLD_NODES = ("node-1", "node-2", "node-3")


async def chunk_rows(probe: Probe) -> int:
    return int(await probe.db.fetchval("SELECT count(*) FROM chunks"))


# --- 1. a node dies during an upload -------------------------------------------------------

async def test_a_node_killed_mid_upload_is_repaired_when_it_returns(
        fresh_cluster: ClusterFactory) -> None:
    """Hypothesis: with w=2 a 40 MiB upload survives losing one of three nodes half way;
    the chunks written without it are queued, and once it is back one pass gives every
    chunk its third replica, on that node, without touching the others."""
    cluster = await fresh_cluster(nodes=3)
    cfg = replication_config(cluster.config)
    manager = ReplicationManager(cfg)
    async with Probe.open(cluster, cfg) as probe:
        try:
            # A small file stored while all is well: it must come through untouched.
            await probe.upload("before.bin", os.urandom(3 * MIB))
            baseline = await chunk_rows(probe)

            # The big upload sends its first 20 MiB, then waits; once the chunk service
            # has stored a good part of that, node-2 dies and the rest of the body flows.
            data = os.urandom(40 * MIB)
            gate = asyncio.Event()
            upload = probe.upload_gated("big.bin", data, pause_at=20 * MIB, gate=gate)

            async def first_half_stored() -> bool:
                assert not upload.done(), upload
                return await chunk_rows(probe) >= baseline + 8
            await wait_until("the first half's chunks", first_half_stored)
            await cluster.control("kill", "node-2")
            await probe.set_health("node-2", "down")  # the monitor would, within seconds
            gate.set()
            status, body = await upload
            assert status == 201, body  # two of three replicas are a quorum

            # Chunks stored before the kill have 3 replicas, those after it 2 (queued).
            big = set(await probe.chunks_of("big.bin"))
            holders = {d: h for d, h in (await probe.ok_holders()).items() if d in big}
            short = {d for d, h in holders.items() if h == {"node-1", "node-3"}}
            full = {d for d, h in holders.items() if h == set(OLD_NODES)}
            assert short and full and short | full == set(holders), holders
            queued = await probe.db.fetch("SELECT DISTINCT chunk_sha256 FROM repair_queue")
            assert {bytes(r["chunk_sha256"]) for r in queued} == short
            await probe.check_downloads()  # readable while node-2 is away

            # node-2 comes back with what it had; the monitor would mark it healthy.
            await cluster.control("start", "node-2")
            await probe.set_health("node-2", "healthy")
            done = await probe.converge(manager, max_passes=3)
            # One pass wrote exactly the missing replicas, all of them on node-2.
            assert done["working_passes"] == 1, done
            assert done["replicas_copied"] == len(short), done
            assert done.get("replicas_removed", 0) == 0, done
            after = await probe.ok_holders()
            assert all(after[d] == set(OLD_NODES) for d in holders)
            assert await probe.stray_objects(list(OLD_NODES)) == {}
            await probe.check_downloads()
        finally:
            await manager.close()


# --- 2. a node stays away past the repair delay ---------------------------------------------

async def test_a_node_down_past_the_repair_delay_is_replaced_and_trimmed_on_return(
        fresh_cluster: ClusterFactory) -> None:
    """Hypothesis: a node down for less than ``repair_delay_s`` causes no copy at all (a
    brief outage is no repair storm); once it has been down longer, exactly the chunks
    it held get a replacement replica on the spare node, so every chunk has 3 verified
    replicas on up nodes; when it comes back with its data, the replacements are
    surplus and are deleted, and the placement is the original one again."""
    cluster = await fresh_cluster(nodes=4)
    delay_s = 60.0
    cfg = replication_config(cluster.config, repair_delay_s=delay_s)
    manager = ReplicationManager(cfg)
    victim, spare = "node-1", "node-4"  # one zone (zone-a): one stands in for the other
    async with Probe.open(cluster, cfg) as probe:
        try:
            for i in range(3):
                await probe.upload(f"f{i}.bin", os.urandom(4 * MIB))
            before = await probe.ok_holders()
            assert all(len(h) == 3 for h in before.values()), before
            on_victim = {d for d, h in before.items() if victim in h}
            assert on_victim, "no chunk on the victim: nothing to probe"

            # The victim dies; the monitor has had it down for half the delay.
            await cluster.control("kill", victim)
            await probe.set_health(victim, "down", ago_s=delay_s / 2)
            stats = await manager.run_once()
            assert stats.errors == 0, stats
            assert stats.counters.get("nodes_lost") == 0, stats
            assert not did_work(stats), stats  # the delay holds: nothing copied, no work
            assert await probe.ok_holders() == before
            await probe.check_downloads()  # reads fail over to the other replicas

            # Now it has been down for longer than the delay: it is lost.
            await probe.set_health(victim, "down", ago_s=delay_s + 30)
            lost = await probe.converge(manager, max_passes=3)
            assert lost["replicas_copied"] == len(on_victim), lost
            assert lost.get("replicas_removed", 0) == 0, lost  # a down node is left alone
            during = await probe.ok_holders()
            for digest, held in during.items():
                if digest in on_victim:  # the spare stands in; nothing else moved
                    assert held - {victim} == (before[digest] - {victim}) | {spare}
                else:
                    assert held == before[digest]
            await probe.check_downloads()

            # It comes back with everything it had: the stand-ins are surplus.
            await cluster.control("start", victim)
            await probe.set_health(victim, "healthy")
            back = await probe.converge(manager, max_passes=3)
            assert back.get("replicas_copied", 0) == 0, back
            assert back["replicas_removed"] == len(on_victim), back
            assert await probe.ok_holders() == before
            assert await probe.stray_objects(await probe.node_ids()) == {}
            await probe.check_downloads()
        finally:
            await manager.close()


# --- 3. a node joins, another drains ----------------------------------------------------------

async def test_a_joining_node_takes_a_quarter_and_a_drained_node_empties(
        fresh_cluster: ClusterFactory) -> None:
    """Hypothesis: adding a fourth node (the operator's way: its own `weed mini`, then
    ``POST /admin/nodes``) moves about a quarter of the replicas, all of them onto the
    new node, and deletes as many surplus ones; nothing moves between the old nodes.
    Draining a node then empties it completely (no replica row, no chunk object), and
    nothing is lost on the way."""
    cluster = await fresh_cluster(nodes=3)
    cfg = replication_config(cluster.config)
    manager = ReplicationManager(cfg)
    extra = None
    async with Probe.open(cluster, cfg) as probe:
        try:
            for i in range(3):
                await probe.upload(f"f{i}.bin", os.urandom(8 * MIB))
            before = await probe.ok_holders()
            assert all(h == set(OLD_NODES) for h in before.values()), before
            replicas = sum(len(h) for h in before.values())

            # A new machine: its S3 node first, then it is registered with the cluster.
            extra = await start_extra_node(cluster, "node-4")
            admin = await make_admin(cluster, probe.api)
            status, body, _ = await probe.api.request(
                "POST", "/admin/nodes", admin,
                json={"id": "node-4", "endpoint": extra.endpoint, "zone": "z4"})
            assert status == 201, body
            joined = await probe.converge(manager, max_passes=3)
            after = await probe.ok_holders()
            moved = {d for d, h in after.items() if "node-4" in h}
            assert joined["replicas_copied"] == len(moved), joined
            assert 0.15 <= joined["replicas_copied"] / replicas <= 0.35, (joined, replicas)
            assert joined["replicas_removed"] == joined["replicas_copied"], joined
            for digest, held in after.items():
                # Exactly 3, and the old nodes only lost replicas (to node-4).
                assert len(held) == 3 and held - {"node-4"} <= before[digest]
            assert await probe.stray_objects([*OLD_NODES, "node-4"]) == {}
            await probe.check_downloads()

            # node-1 is drained: every replica it holds moves to the remaining nodes.
            on_node_1 = {d for d, h in after.items() if "node-1" in h}
            status, body, _ = await probe.api.request("POST", "/admin/nodes/node-1/drain", admin)
            assert status == 200, body
            drained = await probe.converge(manager, max_passes=3)
            assert drained["replicas_copied"] == len(on_node_1), drained
            assert drained["replicas_removed"] == len(on_node_1), drained
            remaining = {"node-2", "node-3", "node-4"}
            assert all(h == remaining for h in (await probe.ok_holders()).values())
            rows = await probe.db.fetchval(
                "SELECT count(*) FROM chunk_replicas WHERE node_id = 'node-1'")
            assert rows == 0
            assert await probe.objects_on("node-1") == set()
            assert await probe.stray_objects(sorted(remaining)) == {}
            await probe.check_downloads()
        finally:
            await manager.close()
            if extra is not None:
                await extra.kill()


# --- 4. rot: a corrupt replica, missing ones --------------------------------------------------

async def test_the_scrubber_finds_rot_and_the_manager_repairs_it(
        fresh_cluster: ClusterFactory) -> None:
    """Hypothesis: a replica overwritten with garbage of the same size (only a hash can
    tell) and replicas deleted behind the cluster's back are all found by one full
    scrub, marked and queued; one manager pass rewrites them from a verified source
    (even when a chunk has a single good replica left), and a second scrub finds
    nothing wrong."""
    cluster = await fresh_cluster(nodes=3)
    cfg = replication_config(cluster.config)
    manager = ReplicationManager(cfg)
    scrubber = Scrubber(cfg)
    async with Probe.open(cluster, cfg) as probe:
        try:
            await probe.upload("a.bin", os.urandom(4 * MIB))
            await probe.upload("b.bin", os.urandom(3 * MIB))
            chunks = await probe.chunks_of("a.bin") + await probe.chunks_of("b.bin")
            assert len(set(chunks)) >= 3, chunks
            rotten, lost, last_one = chunks[0], chunks[1], chunks[2]
            replicas = 3 * len(await probe.replicas())

            async def corrupt(digest: bytes, node_id: str) -> None:
                client, key = await probe.node(node_id), chunk_key(digest.hex())
                garbage = os.urandom(await client.head(key))
                assert hashlib.sha256(garbage).digest() != digest
                await client.put(key, garbage)

            async def delete(digest: bytes, node_id: str) -> None:
                await (await probe.node(node_id)).delete(chunk_key(digest.hex()))

            await corrupt(rotten, "node-1")
            await delete(lost, "node-2")
            await corrupt(last_one, "node-2")  # only node-1 keeps a good copy of this one
            await delete(last_one, "node-3")

            found = await scrubber.full_pass()
            assert found.errors == 0, found
            assert found.counters.get("pass_completed") == 1, found
            assert found.counters.get("found_corrupt") == 2, found
            assert found.counters.get("found_missing") == 2, found
            assert found.counters.get("replicas_scrubbed") == replicas - 2, found
            states = await probe.replicas()
            assert states[rotten]["node-1"] == "corrupt"
            assert states[lost]["node-2"] == "missing"
            assert (states[last_one]["node-2"], states[last_one]["node-3"]) == (
                "corrupt", "missing")
            queued = await probe.db.fetch("SELECT DISTINCT chunk_sha256 FROM repair_queue")
            assert {bytes(r["chunk_sha256"]) for r in queued} == {rotten, lost, last_one}
            announced = await probe.db.fetchval(
                "SELECT count(*) FROM outbox WHERE type = 'chunk.replica_bad'")
            assert announced == 4
            await probe.check_downloads()  # readers skip the bad replicas

            done = await probe.converge(manager, max_passes=3)
            assert done["working_passes"] == 1, done
            assert done["replicas_copied"] == 4, done
            assert await probe.stray_objects(list(OLD_NODES)) == {}

            again = await scrubber.full_pass()
            assert again.errors == 0, again
            assert again.counters.get("pass_completed") == 1, again
            assert again.counters.get("replicas_scrubbed") == replicas, again
            assert not again.counters.get("found_corrupt"), again
            assert not again.counters.get("found_missing"), again
            await probe.check_downloads()
        finally:
            await scrubber.close()
            await manager.close()


# --- 5. Kafka away while a node is down --------------------------------------------------------

async def test_a_kafka_outage_with_a_node_down_loses_no_repair_work(
        fresh_cluster: ClusterFactory) -> None:
    """Hypothesis: uploads need neither the broker nor every node. With Kafka stopped
    and a node down they succeed under-replicated; their ``chunk.under_replicated``
    events wait in the outbox and are all published once the broker is back (stamped
    in the outbox, and readable on the topic); the repair work never depended on
    them: the manager brings every chunk to 3 replicas when the node returns."""
    cluster = await fresh_cluster(nodes=3)
    cfg = replication_config(cluster.config)
    manager = ReplicationManager(cfg)
    async with Probe.open(cluster, cfg) as probe:
        try:
            await cluster.control("kill", "node-3")
            await probe.set_health("node-3", "down")
            await cluster.control("stop", "kafka")
            for i in range(3):
                await probe.upload(f"f{i}.bin", os.urandom(3 * MIB))
            holders = await probe.ok_holders()
            assert all(h == {"node-1", "node-2"} for h in holders.values()), holders
            expected = {d.hex() for d in holders}
            rows = await probe.db.fetch("SELECT key, published_at FROM outbox "
                                        "WHERE type = 'chunk.under_replicated'")
            assert sorted(r["key"] for r in rows) == sorted(expected)
            assert all(r["published_at"] is None for r in rows)  # no broker: all waiting
            await probe.check_downloads()

            # The broker comes back with its topics (durable storage): nobody makes them.
            await cluster.control("start", "kafka")

            async def backlog_published() -> bool:
                unsent = await probe.db.fetchval(
                    "SELECT count(*) FROM outbox WHERE type = 'chunk.under_replicated' "
                    "AND published_at IS NULL")
                return bool(unsent == 0)
            await wait_until("the relay to publish the backlog", backlog_published,
                             timeout_s=60, every_s=0.5)

            # The node comes back: the repair work was never only in Kafka.
            await cluster.control("start", "node-3")
            await probe.set_health("node-3", "healthy")
            done = await probe.converge(manager, max_passes=3)
            assert done["replicas_copied"] == len(holders), done
            assert all(h == set(OLD_NODES) for h in (await probe.ok_holders()).values())
            assert await probe.stray_objects(list(OLD_NODES)) == {}
            await probe.check_downloads()

            # "Published" must mean a consumer can read them: every stamped event is on
            # the topic.
            published = {(r.key or b"").decode() for r in await read_topic(cfg, CHUNKS_TOPIC)
                         if event_type(r) == "chunk.under_replicated"}
            unreadable = expected - published
            assert not unreadable, (
                f"{len(unreadable)} of {len(expected)} chunk.under_replicated events are "
                "stamped published in the outbox but cannot be read from "
                f"{CHUNKS_TOPIC}")
        finally:
            await manager.close()


# --- 6. the chunk service dies mid-upload --------------------------------------------------------

UNREFERENCED = """
SELECT c.sha256 FROM chunks c
WHERE NOT EXISTS (SELECT 1 FROM manifest_entries e WHERE e.chunk_sha256 = c.sha256)
"""


async def test_a_chunk_service_killed_mid_upload_leaves_only_garbage_gc_reclaims(
        fresh_cluster: ClusterFactory) -> None:
    """Hypothesis: an upload whose chunk service dies half way fails (an error to the
    client) and commits nothing: no file is listed. The chunks it had stored are
    unreferenced garbage, and objects it wrote without recording them are orphans;
    once the service is back, one collector pass with no grace reclaims all of it,
    and the file stored before is untouched."""
    cluster = await fresh_cluster(nodes=3)
    cfg = replication_config(cluster.config)
    gc_cfg = dataclasses.replace(cfg, gc=dataclasses.replace(cfg.gc, grace_period_s=0.0))
    manager = ReplicationManager(cfg)
    async with Probe.open(cluster, cfg) as probe:
        try:
            await probe.upload("kept.bin", os.urandom(3 * MIB))
            baseline = await chunk_rows(probe)

            # The body stops after 16 MiB (the chunk service's pipeline holds several
            # MiB of it); once some chunks are stored, the chunk service is killed.
            data = os.urandom(24 * MIB)
            gate = asyncio.Event()
            upload = probe.upload_gated("doomed.bin", data, pause_at=16 * MIB, gate=gate)

            async def half_stored() -> bool:
                assert not upload.done(), upload
                return await chunk_rows(probe) >= baseline + 3
            await wait_until("the first half's chunks", half_stored)
            await cluster.control("kill", "chunk-service")
            gate.set()
            try:
                status, body = await upload
            except aiohttp.ClientError as exc:  # the gateway may drop the connection
                status, body = 0, repr(exc)
            assert status == 0 or status >= 500, (status, body)
            assert "doomed.bin" not in probe.files
            assert await probe.listed() == {"kept.bin": probe.files["kept.bin"]["sha256"]}
            assert await probe.db.fetchval(
                "SELECT count(*) FROM files WHERE name = 'doomed.bin'") == 0
            garbage = {bytes(r["sha256"]) for r in await probe.db.fetch(UNREFERENCED)}
            assert len(garbage) >= 3, garbage

            # A PUT the dead service had sent may still land on a node a moment later
            # (with no grace, the collector would race it): wait until the nodes are still.
            stored = await probe.wait_objects_settled(list(OLD_NODES))
            rows = {bytes(r["sha256"]) for r in await probe.db.fetch("SELECT sha256 FROM chunks")}
            unrecorded = sum(len(held - rows) for held in stored.values())

            await cluster.control("start", "chunk-service")
            collected = await gc_pass(gc_cfg)
            assert collected["chunks_swept"] == len(garbage), collected
            assert await probe.db.fetch(UNREFERENCED) == []
            known = {bytes(r["sha256"]) for r in await probe.db.fetch("SELECT sha256 FROM chunks")}
            orphans = {node_id: sorted(d.hex()[:12] for d in await probe.objects_on(node_id)
                                       - known) for node_id in OLD_NODES}
            assert not any(orphans.values()), (
                f"orphan objects left after a pass: {orphans} ({collected})")
            assert collected["orphan_objects_deleted"] == unrecorded, collected
            again = await gc_pass(gc_cfg)  # and nothing is left for a second pass
            assert (again["chunks_swept"], again["orphan_objects_deleted"]) == (0, 0), again

            await probe.converge(manager, max_passes=3)
            assert await probe.stray_objects(list(OLD_NODES)) == {}
            await probe.check_downloads()
            # The service is back for good: the same bytes upload again, from scratch.
            await probe.upload("doomed.bin", data)
            await probe.check_downloads()
        finally:
            await manager.close()
