"""GC racing uploads on real processes: nothing the API says exists is ever lost.

The story. Three small blobs, one chunk each, are all the content there is, so
every upload deduplicates onto a handful of chunks that keep being orphaned and
revived. A user keeps only the current version of a file (older ones are pruned
by the collector's lifecycle pass), files are deleted and purged at once, and
collector passes with a grace period of 0 run *concurrently* with the uploads
and purges of a round (``asyncio.gather``): a chunk can be condemned and swept
in the very pass that runs while an upload is deduplicating onto it.

With no grace the one assumption of the protocol (an upload commits within the
grace period) is deliberately broken, so an upload racing a pass may fail (its
chunk was swept before its manifest committed: a 5xx, and no version). What must
hold whatever happens, checked after every round:

* the files the API lists are exactly those of the model (the last successful
  upload to each name that was not purged since), and each downloads with its
  SHA-256;
* no chunk of the pool is left ``sweeping``, and a live one has its object on
  every node its replica rows name (so on at least one node).

Hypothesis draws the rounds (bounded, so the whole test stays around a minute).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfms.config import Config, load_config
from dfms.gc.worker import SKIPPED, GcWorker
from dfms.storage import NodeClient, chunk_key
from tests.support.api import Api, ApiUser
from tests.support.cluster import ClusterHandle

KIB = 1024
NAMES = ("a.bin", "b.bin", "c.bin")
# Below the chunker's minimum size: each blob is exactly one chunk, shared by every
# file that holds it. Made once, so later examples start with leftovers of earlier ones
# (condemned chunks, swept ones) from the same small pool.
BLOBS = [os.urandom(40 * KIB + i) for i in range(3)]
DIGESTS = [hashlib.sha256(b).digest() for b in BLOBS]
# An upload racing a grace-0 pass may lose its chunk before it commits: it fails
# (the commit is refused, or the write gave up waiting for a sweep) and adds nothing.
RACE_FAILURES = {500, 502, 503}


@dataclass(frozen=True)
class Upload:
    name: str
    blob: int


@dataclass(frozen=True)
class Purge:
    name: str


@dataclass(frozen=True)
class Round:
    actions: tuple[Upload | Purge, ...]
    gc: bool  # a grace-0 pass runs alongside the actions


def actions() -> st.SearchStrategy[tuple[Upload | Purge, ...]]:
    action = st.one_of(
        st.builds(Upload, st.sampled_from(NAMES), st.integers(0, len(BLOBS) - 1)),
        st.builds(Purge, st.sampled_from(NAMES)))
    # One action per name in a round: the outcome of a round is then well defined.
    return st.lists(action, min_size=1, max_size=3, unique_by=lambda a: a.name).map(tuple)


ROUNDS = st.lists(st.builds(Round, actions(), st.booleans()), min_size=2, max_size=5)


@dataclass
class World:
    api: Api
    user: ApiUser
    db: asyncpg.Connection
    nodes: list[NodeClient]
    cfg: Config
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> file json
    race_failures: int = 0

    async def upload(self, step: Upload, racing: bool) -> None:
        status, body = await self.api.upload(self.user, step.name, BLOBS[step.blob])
        if status in (200, 201):  # 200: the name's current content already (unchanged)
            self.files[step.name] = body
            return
        assert racing and status in RACE_FAILURES, (status, body)
        self.race_failures += 1

    async def purge(self, step: Purge) -> None:
        file = self.files.pop(step.name, None)
        if file is None:
            return
        status, body, _ = await self.api.request("DELETE", f"/files/{file['id']}", self.user)
        assert status == 204, body
        status, body, _ = await self.api.request("DELETE", f"/trash/{file['id']}", self.user)
        assert status == 204, body

    async def gc_pass(self) -> None:
        worker = GcWorker(self.cfg)
        try:
            for _ in range(100):  # the cluster's own gc-worker may hold the lock
                stats = await worker.run_once()
                if SKIPPED not in stats.counters:
                    assert stats.errors == 0, stats
                    return
                await asyncio.sleep(0.1)
        finally:
            await worker.close()
        raise AssertionError("the GC lock stayed taken")

    async def play(self, round_: Round) -> None:
        work = [self.upload(a, round_.gc) if isinstance(a, Upload) else self.purge(a)
                for a in round_.actions]
        if round_.gc:
            work.append(self.gc_pass())
        await asyncio.gather(*work)

    async def check(self) -> None:
        # What the API says exists is what the model says, and all of it downloads.
        status, page, _ = await self.api.request("GET", "/files?per_page=50", self.user)
        assert status == 200, page
        listed = {f["name"]: f["sha256"] for f in page["items"]}
        assert listed == {n: f["sha256"] for n, f in self.files.items()}
        for file in self.files.values():
            status, body, headers = await self.api.request(
                "GET", f"/files/{file['id']}/download", self.user)
            assert status == 200, body
            assert hashlib.sha256(body).hexdigest() == file["sha256"]
            assert headers["X-Content-SHA256"] == file["sha256"]
        # No chunk of the pool is stuck mid-sweep, and a live one has all its objects.
        rows = await self.db.fetch(
            "SELECT c.sha256, c.state, array_remove(array_agg(r.node_id), NULL) AS nodes "
            "FROM chunks c LEFT JOIN chunk_replicas r ON r.chunk_sha256 = c.sha256 "
            "AND r.state = 'ok' WHERE c.sha256 = ANY($1::bytea[]) GROUP BY c.sha256, c.state",
            DIGESTS)
        by_id = {n.node_id: n for n in self.nodes}
        for row in rows:
            assert row["state"] in ("live", "condemned"), row
            if row["state"] != "live":
                continue
            key = chunk_key(bytes(row["sha256"]).hex())
            assert row["nodes"], f"live chunk {key} has no ok replica"
            for node_id in row["nodes"]:
                assert await by_id[node_id].exists(key), f"{key} missing on {node_id}"


@settings(max_examples=15, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(rounds=ROUNDS)
async def test_gc_passes_racing_dedup_uploads_lose_nothing(cluster: ClusterHandle,
                                                           rounds: list[Round]) -> None:
    cfg = load_config(cluster.data_dir / "dfms.yaml", env={},
                      overrides={"gc": {"grace_period_s": 0}})
    db = await asyncpg.connect(cluster.postgres_dsn)
    nodes = [NodeClient(n["id"], n["endpoint"], cfg.s3) for n in cluster.s3_nodes]
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            api = Api(cluster.gateway_url, http)
            user = await api.register(f"gc-race-{uuid.uuid4().hex[:12]}@example.com")
            # Keep only the current version: a replaced one is garbage at the next pass.
            await db.execute("UPDATE users SET keep_versions = 1, keep_versions_days = 0 "
                             "WHERE id = $1", uuid.UUID(user.id))
            world = World(api, user, db, nodes, cfg)
            for round_ in rounds:
                await world.play(round_)
                await world.check()
            # Drop everything and collect: the pool's chunks go, nothing breaks.
            await asyncio.gather(*(world.purge(Purge(n)) for n in NAMES))
            await world.gc_pass()
            await world.check()
    finally:
        for node in nodes:
            await node.close()
        await db.close()
