"""The health monitor: probes every storage node each pass and keeps ``nodes.health``.

Each pass probes all nodes that are not ``removed`` (draining nodes still hold data
that readers need, so they are probed too) concurrently, then records each node in
its own transaction: ``last_probe_at`` and ``last_probe_latency_ms`` always, and
``health``/``health_changed_at`` plus a ``node.health_changed`` event only when the
state machine (``dfms.healthmon.state``) moves the node. The chunk service re-reads
``nodes.health`` and stops writing to down nodes.

Alongside the probes, each pass reports the free and total bytes of the disk of every
node registered with a data directory the monitor's host can read
(``dfms.healthmon.capacity``).

Several monitors may run at once. The node row is locked (``FOR UPDATE``) while a
monitor applies a probe outcome to the stored state, so a change is written, and
its event emitted, once (``dfms.healthmon.record``: the passive marking of the chunk
service and the replication manager, ``dfms.healthmon.passive``, changes health
through the same code, and only ever healthy → suspect). Streak counting
(K failures, M successes) is per monitor; see ``dfms.healthmon.state``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping

import asyncpg
from prometheus_client import Counter, Gauge, Histogram

from dfms.config import Config
from dfms.healthmon.capacity import DiskGauges
from dfms.healthmon.cluster_gauges import ClusterGauges
from dfms.healthmon.probe import ProbeResult, probe_key, probe_node, probe_s3_config
from dfms.healthmon.record import lock_node, record_change
from dfms.healthmon.state import Health, NodeTrack, Thresholds, seed, step
from dfms.metadata.db import Connection
from dfms.metadata.nodes import NodeRow, load_nodes, not_removed
from dfms.metadata.states import AdminState
from dfms.runtime.pooled import PooledService
from dfms.runtime.service import PassStats, main_for
from dfms.storage.registry import NodeRegistry

NODE_HEALTH = Gauge("dfms_node_health", "1 for the node's current health state, else 0",
                    ["node", "state"])
PROBE_SECONDS = Histogram("dfms_node_probe_seconds",
                          "Round trip of a node probe (write, read back, delete)", ["node"],
                          buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2, 5, 10))
PROBE_FAILURES = Counter("dfms_node_probe_failures_total", "Failed node probes", ["node"])

# Enough to probe a large cluster within one interval without opening hundreds of sockets.
MAX_CONCURRENT_PROBES = 16
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

_PROBED = "UPDATE nodes SET last_probe_at = now(), last_probe_latency_ms = $2 WHERE id = $1"


def _reason(track: NodeTrack, result: ProbeResult) -> str:
    if track.health is Health.HEALTHY:
        return f"{track.successes} consecutive good probe(s)"
    if track.health is Health.DOWN:
        return f"{track.failures} consecutive failed probe(s); last: {result.error}"
    return f"probe failed: {result.error}"


def _forget_metrics(node_id: str) -> None:
    """A removed node has no health to report any more."""
    for metric, labels in ((PROBE_FAILURES, ()), (PROBE_SECONDS, ()),
                           *((NODE_HEALTH, (state.value,)) for state in Health)):
        with contextlib.suppress(KeyError):
            metric.remove(node_id, *labels)


class HealthMonitor(PooledService):
    name = "health_monitor"

    def __init__(self, config: Config, pool: asyncpg.Pool | None = None, *,
                 instance_id: str | None = None) -> None:
        super().__init__(config, pool)
        self.interval_s = config.healthmon.interval_s
        self.limits = Thresholds(config.healthmon.failures_to_down,
                                 config.healthmon.successes_to_healthy)
        # Names this monitor's probe objects, so concurrent monitors never collide.
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        self._s3 = probe_s3_config(config.s3, config.healthmon.probe_timeout_s)
        self._nodes = NodeRegistry(self._s3, select=not_removed, name="healthmon-nodes")
        self._tracks: dict[str, NodeTrack] = {}
        self._gauges = ClusterGauges(config.replication.replicas_n,
                                     config.healthmon.cluster_gauges_interval_s)
        self._disks = DiskGauges()

    @property
    def ops_port(self) -> int:
        return self.config.healthmon.ops_port

    @property
    def tracks(self) -> Mapping[str, NodeTrack]:
        """What this monitor last recorded per node (for tests and debugging)."""
        return dict(self._tracks)

    async def close_resources(self) -> None:
        await self._nodes.stop()

    # -- one pass ---------------------------------------------------------------------

    async def run_once(self) -> PassStats:
        pool = await self.get_pool()
        stats = PassStats()
        try:
            rows = await load_nodes(pool)
        except DB_ERRORS:
            self._db_error(stats, "reading the nodes failed")
            return stats
        await self._sync_nodes(rows)
        nodes = self._nodes.endpoints
        results, _ = await asyncio.gather(
            self._probe_all(nodes),
            self._disks.update({r.node_id: r.data_dir for r in rows
                                if not_removed(r) and r.data_dir}))
        for node_id, result in results.items():
            self._count_probe(node_id, result, stats)
        try:
            async with pool.acquire() as conn:
                for node_id, result in results.items():
                    await self._record_safely(conn, node_id, result, stats)
        except DB_ERRORS:  # acquiring a connection failed: nothing of this pass is stored
            self._db_error(stats, "no database connection to record the probes")
        await self._refresh_gauges(pool, stats)
        return stats

    async def _refresh_gauges(self, pool: asyncpg.Pool, stats: PassStats) -> None:
        """After the probes were recorded, so "at risk" sees this pass's down nodes."""
        if not self._gauges.due():
            return
        try:
            async with pool.acquire() as conn:
                await self._gauges.refresh(conn)
        except DB_ERRORS:  # stale gauges are better than a failed probe pass
            self._db_error(stats, "computing the cluster gauges failed")

    async def _sync_nodes(self, rows: list[NodeRow]) -> None:
        """Drop clients whose endpoint moved; forget nodes that were removed or deleted."""
        nodes = [r.node_id for r in rows if not_removed(r)]
        for node_id in nodes:
            PROBE_FAILURES.labels(node_id)  # a 0 series, so rate() works from the start
        for gone in (set(self._nodes.endpoints) | set(self._tracks)) - set(nodes):
            self._tracks.pop(gone, None)
            _forget_metrics(gone)
        await self._nodes.update(rows)

    async def _probe_all(self, nodes: Mapping[str, str]) -> dict[str, ProbeResult]:
        limit = asyncio.Semaphore(MAX_CONCURRENT_PROBES)

        async def one(node_id: str) -> tuple[str, ProbeResult]:
            async with limit:
                return node_id, await self._probe(node_id)

        return dict(await asyncio.gather(*(one(n) for n in nodes)))

    async def _probe(self, node_id: str) -> ProbeResult:
        hm = self.config.healthmon
        try:
            return await probe_node(self._nodes.client(node_id),
                                    probe_key(self.instance_id, node_id),
                                    timeout_s=hm.probe_timeout_s,
                                    latency_limit_ms=hm.latency_limit_ms)
        except Exception as exc:  # a bad endpoint or an untranslated library error fails
            # this node's probe, never the pass
            self.log.exception("probe crashed", extra={"node": node_id})
            return ProbeResult(False, None, f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _count_probe(node_id: str, result: ProbeResult, stats: PassStats) -> None:
        if result.latency_ms is not None:
            PROBE_SECONDS.labels(node_id).observe(result.latency_ms / 1000.0)
        if result.ok:
            stats.add("probes_ok")
        else:
            stats.add("probes_failed")
            PROBE_FAILURES.labels(node_id).inc()

    async def _record_safely(self, conn: Connection, node_id: str,
                             result: ProbeResult, stats: PassStats) -> None:
        try:
            await self._record(conn, node_id, result, stats)
        except DB_ERRORS:  # one node's database trouble never stops the pass
            self._db_error(stats, "recording a probe failed", node_id)

    async def _record(self, conn: Connection, node_id: str, result: ProbeResult,
                      stats: PassStats) -> None:
        async with conn.transaction():
            row = await lock_node(conn, node_id)
            if row is None or row["admin_state"] == AdminState.REMOVED:
                return  # removed while it was being probed
            stored = Health(row["health"])
            track = self._tracks.get(node_id)
            if track is None or track.health is not stored:
                # First sight, or another monitor/an operator changed it: count afresh.
                track = seed(stored, self.limits)
            new = step(track, result.ok, self.limits)
            await conn.execute(_PROBED, node_id, result.latency_ms)
            reason = _reason(new, result)
            if new.health is not stored:
                await record_change(conn, node_id, stored, new.health, reason,
                                    result.latency_ms)
        # Only after the commit: a rolled-back pass must not advance the streak.
        self._tracks[node_id] = new
        for state in Health:
            NODE_HEALTH.labels(node_id, state.value).set(1 if state is new.health else 0)
        if new.health is not stored:
            stats.add(f"became_{new.health.value}")
            level = self.log.info if new.health is Health.HEALTHY else self.log.warning
            level("node health changed", extra={"node": node_id, "old": stored.value,
                                                "new": new.health.value, "reason": reason})

    def _db_error(self, stats: PassStats, message: str, node_id: str | None = None) -> None:
        stats.errors += 1
        stats.add("db_errors")
        self.log.exception(message, extra={"node": node_id} if node_id else None)


def main(config: Config) -> int:
    """Run the monitor as a process until SIGINT/SIGTERM (for ``dfms health-monitor``)."""
    return main_for(HealthMonitor(config), config)
