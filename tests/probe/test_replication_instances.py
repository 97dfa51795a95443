"""Two replication managers at once: the work is shared, never done twice.

The story. A deployment runs several manager processes for availability. A node
is lost, and both managers wake to the same work at the same moment: the same
chunks on the repair queue, and a full reconciliation pass each. Per-chunk
advisory locks must hand every chunk to one of them, and the full pass must run
in one of them only; so each lost replica is copied exactly once, and afterwards
neither finds anything left to do. Nothing acknowledged is lost on the way.
"""

from __future__ import annotations

import asyncio
import os

from dfms.replication.manager import SKIPPED_FULL, ReplicationManager
from tests.probe.conftest import ClusterFactory
from tests.support.probe import MIB, Probe, did_work, replication_config, total


async def test_two_managers_share_the_repairs_of_a_lost_node(
        fresh_cluster: ClusterFactory) -> None:
    cluster = await fresh_cluster(nodes=4)
    cfg = replication_config(cluster.config, repair_delay_s=0.0)
    first, second = ReplicationManager(cfg), ReplicationManager(cfg)
    victim = "node-2"
    async with Probe.open(cluster, cfg) as probe:
        try:
            for i in range(4):
                await probe.upload(f"f{i}.bin", os.urandom(3 * MIB))
            before = await probe.ok_holders()
            on_victim = sorted(d for d, held in before.items() if victim in held)
            assert on_victim, "no chunk on the victim: nothing to probe"

            await cluster.control("kill", victim)
            await probe.set_health(victim, "down", ago_s=60)
            # The same chunks queued for both (as readers that failed over would).
            await probe.db.executemany(
                "INSERT INTO repair_queue (chunk_sha256, node_id, reason) "
                "VALUES ($1, $2, 'missing') ON CONFLICT DO NOTHING",
                [(d, victim) for d in on_victim])

            results = await asyncio.gather(first.run_once(), second.run_once())
            assert all(r.errors == 0 for r in results), results
            both = total(list(results))
            assert both["replicas_copied"] == len(on_victim), results  # once each
            full = [r.counters.get("full_passes", 0) for r in results]
            skipped = [r.counters.get(SKIPPED_FULL, 0) for r in results]
            # One full pass ran; the other manager skipped it, unless it only got
            # there after the first had finished (then it found nothing to do).
            assert sum(full) >= 1 and sum(full) + sum(skipped) == 2, results

            for manager in (first, second):
                again = await manager.run_once()
                assert not did_work(again), again
            assert await probe.placement_problems() == []
            assert await probe.queue_length() == 0
            await probe.check_downloads()
        finally:
            await first.close()
            await second.close()
