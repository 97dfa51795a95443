"""Helpers of the fault-injection probes (tests/probe): one test's handles on its own
cluster, what it was told was stored, and the checks every probe ends with.

* ``Probe.open(cluster, cfg)`` registers a user and opens the gateway session, a
  database connection and clients to the storage nodes;
* ``Probe.upload`` / ``Probe.upload_gated`` remember every acknowledged file, and
  ``Probe.check_downloads`` proves none is lost (each downloads through the gateway
  with its SHA-256);
* ``Probe.converge`` drives ``ReplicationManager.run_once()`` until a pass finds
  nothing to do, within a bound, and ``Probe.placement_problems`` checks the result
  independently: every live chunk has exactly n ok replicas, on its targets, and
  each target's object reads back with the chunk's SHA-256.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import hashlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from miniopy_async import Minio

from dfms.config import Config
from dfms.gc.collector import digest_of_key
from dfms.healthmon.probe import probe_key, probe_node, probe_s3_config
from dfms.localstack.ports import LOOPBACK, PortAllocator, port_is_free
from dfms.localstack.servers import S3_NODE_PORTS, S3NodePorts, s3_node_spec
from dfms.replication.cluster import load_view
from dfms.replication.manager import ReplicationManager
from dfms.replication.plan import plan_chunk
from dfms.runtime.service import PassStats
from dfms.storage import NodeClient, chunk_key
from tests.support.api import PASSWORD, Api, ApiUser
from tests.support.cluster import ClusterHandle

KIB = 1024
MIB = 1024 * KIB
PIECE = 1 * MIB  # the size of the pieces a gated upload body is sent in

# Counters a replication pass reports even when it has nothing to do.
IDLE_COUNTERS = frozenset({"chunks_checked", "full_passes", "nodes_lost"})

_REPLICAS = """
SELECT c.sha256, c.size,
       coalesce(array_agg(r.node_id) FILTER (WHERE r.node_id IS NOT NULL), '{}') AS nodes,
       coalesce(array_agg(r.state) FILTER (WHERE r.node_id IS NOT NULL), '{}') AS states
FROM chunks c LEFT JOIN chunk_replicas r ON r.chunk_sha256 = c.sha256
WHERE c.state = 'live'
GROUP BY c.sha256, c.size ORDER BY c.sha256
"""


def replication_config(cfg: Config, **replication: Any) -> Config:
    """``cfg`` with unthrottled copies and scrubs and no repair delay, unless overridden."""
    settings: dict[str, Any] = {"repair_delay_s": 0.0, "scrub_bytes_per_s": 0,
                                "copy_bytes_per_s": 0, **replication}
    return dataclasses.replace(cfg, replication=dataclasses.replace(cfg.replication,
                                                                     **settings))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def total(passes: list[PassStats]) -> dict[str, int]:
    """The counters of several passes, summed."""
    summed: dict[str, int] = {}
    for stats in passes:
        for name, amount in stats.counters.items():
            summed[name] = summed.get(name, 0) + amount
    return summed


def did_work(stats: PassStats) -> bool:
    return bool(stats.errors) or any(amount for name, amount in stats.counters.items()
                                     if name not in IDLE_COUNTERS)


# Run when a wait times out, before it fails: the probes' fixture registers one per
# cluster, which has every DFMS service write its stacks to the log that is kept, so
# a hang is seen where it happened rather than guessed at afterwards.
ON_TIMEOUT: list[Callable[[], None]] = []


async def wait_until(what: str, check: Callable[[], Awaitable[bool]], timeout_s: float = 30.0,
                     every_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            for hook in ON_TIMEOUT:
                await asyncio.to_thread(hook)
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        await asyncio.sleep(every_s)


async def gated_body(data: bytes, pause_at: int, gate: asyncio.Event) -> AsyncIterator[bytes]:
    """``data`` in PIECE-sized pieces; after ``pause_at`` bytes it waits for ``gate``."""
    for offset in range(0, len(data), PIECE):
        if offset >= pause_at and not gate.is_set():
            await gate.wait()
        yield data[offset:offset + PIECE]


@dataclass
class Probe:
    cluster: ClusterHandle
    cfg: Config
    api: Api
    user: ApiUser
    db: asyncpg.Connection
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> file json
    _clients: dict[str, NodeClient] = field(default_factory=dict)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, cluster: ClusterHandle, cfg: Config) -> AsyncIterator[Probe]:
        db = await asyncpg.connect(cluster.postgres_dsn)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
                api = Api(cluster.gateway_url, http)
                user = await api.register(f"probe-{uuid.uuid4().hex[:12]}@example.com")
                probe = cls(cluster, cfg, api, user, db)
                try:
                    yield probe
                finally:
                    for client in probe._clients.values():
                        await client.close()
        finally:
            await db.close()

    # -- storage nodes ----------------------------------------------------------------

    async def node(self, node_id: str) -> NodeClient:
        """A client to ``node_id`` at the endpoint the database has for it."""
        client = self._clients.get(node_id)
        if client is None:
            endpoint = await self.db.fetchval("SELECT endpoint FROM nodes WHERE id = $1",
                                              node_id)
            assert endpoint, f"no node {node_id!r}"
            client = self._clients[node_id] = NodeClient(node_id, endpoint, self.cfg.s3)
        return client

    async def node_ids(self) -> list[str]:
        rows = await self.db.fetch("SELECT id FROM nodes WHERE admin_state <> 'removed' "
                                   "ORDER BY id")
        return [str(r["id"]) for r in rows]

    async def objects_on(self, node_id: str) -> set[bytes]:
        """The chunks whose objects ``node_id`` holds (other keys, e.g. probes, ignored)."""
        client = await self.node(node_id)
        found = {digest_of_key(key) async for key, _ in client.list("")}
        return {d for d in found if d is not None}

    async def wait_objects_settled(self, node_ids: list[str], quiet_s: float = 1.0,
                                   timeout_s: float = 30.0) -> dict[str, set[bytes]]:
        """Wait until the nodes' chunk objects stop changing for ``quiet_s`` (a PUT a
        killed writer had sent can still land a moment later); returns them."""
        deadline = time.monotonic() + timeout_s
        last: dict[str, set[bytes]] | None = None
        while True:
            now = {node_id: await self.objects_on(node_id) for node_id in node_ids}
            if now == last:
                return now
            assert time.monotonic() < deadline, "the nodes' objects kept changing"
            last = now
            await asyncio.sleep(quiet_s)

    async def set_health(self, node_id: str, health: str, ago_s: float = 0.0) -> None:
        """What the health monitor would store (it is stopped in the probes)."""
        done = await self.db.execute(
            "UPDATE nodes SET health = $2, health_changed_at = now() - make_interval("
            "secs => $3) WHERE id = $1", node_id, health, float(ago_s))
        assert done == "UPDATE 1", done

    # -- files --------------------------------------------------------------------------

    async def upload(self, name: str, data: bytes) -> dict[str, Any]:
        status, body = await self.api.upload(self.user, name, data,
                                             **{"X-Content-SHA256": sha256_hex(data)})
        assert status == 201, body
        assert body["sha256"] == sha256_hex(data)
        self.files[name] = dict(body)
        return dict(body)

    def upload_gated(self, name: str, data: bytes, pause_at: int, gate: asyncio.Event
                     ) -> asyncio.Task[tuple[int, Any]]:
        """Start an upload whose body stops after ``pause_at`` bytes until ``gate`` is
        set (so a fault lands mid-upload for sure); the task gives (status, body), or
        raises the client error if the gateway dropped the connection."""
        headers = {"X-File-Name": name, "Content-Type": "application/octet-stream",
                   "X-Content-SHA256": sha256_hex(data)}

        async def run() -> tuple[int, Any]:
            status, body, _ = await self.api.request(
                "POST", "/files/upload", self.user, headers=headers,
                data=gated_body(data, pause_at, gate))
            if status == 201:
                assert body["sha256"] == sha256_hex(data)
                self.files[name] = dict(body)
            return status, body

        return asyncio.create_task(run(), name=f"upload {name}")

    async def listed(self) -> dict[str, str]:
        status, page, _ = await self.api.request("GET", "/files?per_page=100", self.user)
        assert status == 200, page
        return {f["name"]: f["sha256"] for f in page["items"]}

    async def check_downloads(self) -> None:
        """Nothing acknowledged is lost: the listing is what was acknowledged, and every
        file downloads through the gateway with its SHA-256."""
        assert await self.listed() == {n: f["sha256"] for n, f in self.files.items()}
        for name, file in self.files.items():
            status, body, headers = await self.api.request(
                "GET", f"/files/{file['id']}/download", self.user)
            assert status == 200, (name, body)
            assert sha256_hex(body) == file["sha256"] == headers["X-Content-SHA256"], name

    async def chunks_of(self, name: str) -> list[bytes]:
        rows = await self.db.fetch(
            "SELECT e.chunk_sha256 FROM files f JOIN file_versions v ON v.file_id = f.id "
            "AND v.version = f.current_version JOIN manifest_entries e "
            "ON e.manifest_id = v.manifest_id WHERE f.id = $1 ORDER BY e.idx",
            uuid.UUID(self.files[name]["id"]))
        return [bytes(r["chunk_sha256"]) for r in rows]

    # -- replicas -----------------------------------------------------------------------

    async def replicas(self) -> dict[bytes, dict[str, str]]:
        """Every live chunk -> {node id: replica state}."""
        return {bytes(r["sha256"]): dict(zip(r["nodes"], r["states"], strict=True))
                for r in await self.db.fetch(_REPLICAS)}

    async def ok_holders(self) -> dict[bytes, set[str]]:
        return {d: {n for n, s in reps.items() if s == "ok"}
                for d, reps in (await self.replicas()).items()}

    async def queue_length(self) -> int:
        return int(await self.db.fetchval("SELECT count(*) FROM repair_queue"))

    async def placement_problems(self, *, verify: bool = True) -> list[str]:
        """What keeps the cluster from its goal; empty when every live chunk has exactly
        n ok replicas, on its targets (up nodes), no bad row outside lost nodes, and
        (``verify``) every target's object has the chunk's SHA-256."""
        view = await load_view(self.db, self.cfg.replication.repair_delay_s)
        assert view.ring is not None
        n = self.cfg.replication.replicas_n
        problems: list[str] = []
        for row in await self.db.fetch(_REPLICAS):
            digest = bytes(row["sha256"])
            name = digest.hex()[:12]
            replicas = dict(zip(row["nodes"], row["states"], strict=True))
            targets = set(plan_chunk(digest.hex(), replicas, view.ring, view.states,
                                     n).targets)
            ok = {node for node, state in replicas.items()
                  if state == "ok" and node not in view.states.lost}
            bad = {node: state for node, state in replicas.items()
                   if state != "ok" and node not in view.states.lost}
            if len(targets) != n or not targets <= view.states.up:
                problems.append(f"{name}: targets {sorted(targets)} are not {n} up nodes")
            if ok != targets:
                problems.append(f"{name}: ok replicas {sorted(ok)} != targets "
                                f"{sorted(targets)}")
            if bad:
                problems.append(f"{name}: bad replica rows {bad}")
            if not verify:
                continue
            for node_id in sorted(targets & ok):
                client = await self.node(node_id)
                try:
                    data = await client.get(chunk_key(digest.hex()))
                except Exception as exc:
                    problems.append(f"{name}: reading it on {node_id} failed: {exc!r}")
                    continue
                if hashlib.sha256(data).digest() != digest or len(data) != row["size"]:
                    problems.append(f"{name}: the object on {node_id} is corrupt")
        return problems

    async def stray_objects(self, node_ids: list[str]) -> dict[str, set[str]]:
        """Per node: chunk objects it holds without an ok replica row, and ok replica
        rows it has no object for (both empty when storage and records agree)."""
        rows = await self.db.fetch("SELECT node_id, chunk_sha256 FROM chunk_replicas "
                                   "WHERE state = 'ok'")
        recorded: dict[str, set[bytes]] = {n: set() for n in node_ids}
        for r in rows:
            recorded.setdefault(str(r["node_id"]), set()).add(bytes(r["chunk_sha256"]))
        odd: dict[str, set[str]] = {}
        for node_id in node_ids:
            held = await self.objects_on(node_id)
            diff = {f"unrecorded {d.hex()[:12]}" for d in held - recorded[node_id]}
            diff |= {f"missing {d.hex()[:12]}" for d in recorded[node_id] - held}
            if diff:
                odd[node_id] = diff
        return odd

    async def converge(self, manager: ReplicationManager, max_passes: int = 3
                       ) -> dict[str, int]:
        """Run passes until one finds nothing to do; at most ``max_passes`` may work.
        Then the placement must check out independently. Returns the working passes'
        counters, summed, and how many there were (``working_passes``)."""
        working: list[PassStats] = []
        while True:
            stats = await manager.run_once()
            assert stats.errors == 0, stats
            assert "full_passes" in stats.counters, stats  # no other instance held it
            if not did_work(stats):
                break
            working.append(stats)
            assert len(working) <= max_passes, (
                f"still working after {max_passes} passes: {[s.counters for s in working]}")
        problems = await self.placement_problems()
        assert not problems, problems[:20]
        assert await self.queue_length() == 0
        return {**total(working), "working_passes": len(working)}


# --- an admin, the operator's way ------------------------------------------------------------

async def make_admin(cluster: ClusterHandle, api: Api) -> ApiUser:
    """An admin account made with the CLI against the cluster database, logged in."""
    email = f"probe-admin-{uuid.uuid4().hex[:10]}@example.com"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFMS_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dfms", "--data-dir", str(cluster.data_dir), "admin",
        "create-user", "--admin", "--email", email, "--password", PASSWORD,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    status, body, _ = await api.request("POST", "/auth/login",
                                        json={"email": email, "password": PASSWORD})
    assert status == 200, body
    tokens = body["tokens"]
    return ApiUser(out.decode().strip(), email, PASSWORD, tokens["access_token"],
                   tokens["refresh_token"])


# --- an S3 node outside `dfms up` ------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class ExtraNode:
    """A `weed mini` the test started itself (a new machine joining the cluster)."""

    node_id: str
    endpoint: str
    proc: asyncio.subprocess.Process
    log_path: Path

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


def _node_ports(node_id: str, in_use: set[int]) -> S3NodePorts:
    """Free ports for a node, each with its gRPC twin (+10000) free as well, and none
    of them one of ``in_use`` (the cluster's ports) or their twins."""
    alloc = PortAllocator()
    taken = in_use | {p + 10000 for p in in_use}
    ports: dict[str, int] = {}
    for name in S3_NODE_PORTS:
        while True:
            port = alloc.get(f"{node_id}.{name}-{len(alloc.assigned)}")
            if {port, port + 10000}.isdisjoint(taken) and port_is_free(port + 10000):
                ports[name] = port
                taken |= {port, port + 10000}
                break
    return S3NodePorts(**ports)


async def start_extra_node(cluster: ClusterHandle, node_id: str,
                           timeout_s: float = 60.0) -> ExtraNode:
    """Start a storage node like `dfms up` does and wait until it serves the bucket."""
    s3 = cluster.config.s3
    ports = _node_ports(node_id, {int(p) for p in cluster.info.get("ports", {}).values()})
    node_dir = cluster.data_dir / "extra-nodes" / node_id
    spec = s3_node_spec(node_id, node_dir, ports, s3.access_key, s3.secret_key, s3.bucket)
    log_path = node_dir.parent / f"{node_id}.log"
    with log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            *spec.argv, cwd=spec.cwd, env={**os.environ, **spec.env}, stdout=log,
            stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent)
    node = ExtraNode(node_id, f"http://{LOOPBACK}:{ports.s3}", proc, log_path)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert proc.returncode is None, f"{node_id} exited:\n{log_path.read_text()[-3000:]}"
            try:
                client = Minio(f"{LOOPBACK}:{ports.s3}", access_key=s3.access_key,
                               secret_key=s3.secret_key, secure=False)
                try:
                    if not await client.bucket_exists(s3.bucket):
                        await client.make_bucket(s3.bucket)
                finally:
                    await client.close_session()
                return node
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)
    except BaseException:
        await node.kill()
        raise


# --- Kafka -----------------------------------------------------------------------------------

async def read_topic(cfg: Config, topic: str, stall_s: float = 5.0
                     ) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` a consumer can read now (no consumer group: every
    partition from its start). Stops at the end offsets, or when nothing more arrives
    for ``stall_s`` (records the broker counts but cannot serve are not waited for)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        metadata = await consumer._client.fetch_all_metadata()
        parts = [TopicPartition(topic, p) for p in sorted(metadata.partitions_for_topic(topic)
                                                          or ())]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        records: list[ConsumerRecord[bytes, bytes]] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in parts])

        last_progress = time.monotonic()
        while await behind() and time.monotonic() - last_progress < stall_s:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records += batch
                last_progress = time.monotonic()
        return records
    finally:
        await consumer.stop()


def event_type(record: ConsumerRecord[bytes, bytes]) -> str:
    return str(json.loads(record.value or b"{}").get("type", ""))


async def wait_node_answers_probes(cluster: ClusterHandle, node_id: str,
                                   timeout_s: float = 30.0) -> None:
    """Once a stopped node is started again: until it answers a whole health probe
    (put, get, delete) within the monitor's limits. Its first requests after a restart
    can be slow or refused while it warms up, and each such probe rightly restarts the
    monitor's count of good ones; a test that counts the passes that bring the node back
    starts counting after this."""
    cfg = cluster.config
    s3 = probe_s3_config(cfg.s3, cfg.healthmon.probe_timeout_s)
    endpoint = next(str(n["endpoint"]) for n in cluster.s3_nodes if n["id"] == node_id)
    # One key for every try: the try that succeeds deletes what a failed one left.
    key = probe_key(f"warmup-{uuid.uuid4().hex[:8]}", node_id)
    async with NodeClient(node_id, endpoint, s3) as client:
        async def answers() -> bool:
            result = await probe_node(client, key, timeout_s=cfg.healthmon.probe_timeout_s,
                                      latency_limit_ms=cfg.healthmon.latency_limit_ms)
            return result.ok
        await wait_until(f"{node_id} to answer a probe", answers, timeout_s)
