"""Cluster-wide gauges read from PostgreSQL: capacity, dedup, at-risk chunks, queues.

They need aggregate queries over every chunk and replica, so one process computes
them on an interval and every other process leaves them alone (a scrape never runs
a query). The health monitor is that process: it decides which nodes are down,
which is what "at risk" depends on; its passes are short and regular (unlike the
replication manager's, which can take minutes during the outage these gauges are
for); and it is the one service every deployment runs exactly once per cluster.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import Gauge

from dfms.metadata import admin as adm
from dfms.metadata.db import Connection
from dfms.metadata.states import AdminState, ChunkState

CHUNKS = Gauge("dfms_stored_chunks", "Chunks in the metadata by state", ["state"])
CHUNK_BYTES = Gauge("dfms_stored_chunk_bytes", "Bytes of chunks (one copy) by state",
                    ["state"])
LOGICAL_BYTES = Gauge("dfms_logical_bytes", "Bytes of every file version, before dedup")
DEDUP_RATIO = Gauge("dfms_dedup_ratio", "Logical bytes over live chunk bytes (1 = no dedup)")
DEDUP_SAVED = Gauge("dfms_dedup_saved_bytes", "Logical bytes not stored thanks to dedup")
NODE_REPLICAS = Gauge("dfms_node_replicas", "Ok replicas held by a node", ["node"])
NODE_BYTES = Gauge("dfms_node_stored_bytes", "Bytes of ok replicas held by a node", ["node"])
AT_RISK = Gauge("dfms_chunks_at_risk",
                "Live chunks with fewer than n ok replicas on nodes that are up now")
UNDER_REPLICATED = Gauge("dfms_under_replicated_chunks",
                         "Live chunks with fewer than n ok replicas on nodes not removed "
                         "(replicas on down nodes count)")
UNRECOVERABLE = Gauge("dfms_chunks_unrecoverable",
                      "Live chunks with no ok replica on any node that is not removed")
QUEUE_AGE = Gauge("dfms_repair_queue_oldest_age_seconds",
                  "Age of the oldest repair-queue entry (0 when empty)")
SCRUB_PROGRESS = Gauge("dfms_scrub_pass_progress_ratio",
                       "Share of the ok replicas the current scrub pass has checked")
SCRUB_LAST_FULL = Gauge("dfms_scrub_last_full_pass_timestamp_seconds",
                        "Unix time the last full scrub pass finished (0: none yet)")
REFRESHED = Gauge("dfms_cluster_gauges_refresh_timestamp_seconds",
                  "Unix time the cluster gauges were last computed")


def dedup_figures(logical: int, stored: int) -> tuple[float, int]:
    """(ratio, bytes saved); an empty store has ratio 1, nothing saved."""
    if stored <= 0:
        return 1.0, 0
    return logical / stored, max(logical - stored, 0)


def progress(done: int, total: int) -> float:
    """A share in [0, 1]: replicas added since the pass began can push done past total."""
    if total <= 0:
        return 1.0 if done else 0.0
    return min(done / total, 1.0)


def due(last: float | None, now: float, interval_s: float) -> bool:
    return last is None or now - last >= interval_s


class ClusterGauges:
    """Sets the gauges above from one snapshot, at most once per ``interval_s``
    (``healthmon.cluster_gauges_interval_s``: long enough that the aggregates, a hashed
    pass over every replica, cost little; short enough that an outage shows up on a
    dashboard within a scrape or two)."""

    def __init__(self, replicas_n: int, interval_s: float) -> None:
        self.replicas_n = replicas_n
        self.interval_s = interval_s
        self._last: float | None = None
        self._nodes: set[str] = set()

    def due(self) -> bool:
        return due(self._last, time.monotonic(), self.interval_s)

    async def refresh(self, conn: Connection) -> None:
        numbers = await adm.cluster_numbers(conn, self.replicas_n)
        extra = await adm.gauge_numbers(conn)
        self._last = time.monotonic()
        self._set_chunks(numbers, extra)
        self._set_nodes(n for n in numbers.nodes if n.admin_state != AdminState.REMOVED)
        self._set_scrub(extra, sum(n.replicas for n in numbers.nodes))
        REFRESHED.set(time.time())

    @staticmethod
    def _set_chunks(numbers: adm.ClusterNumbers, extra: adm.GaugeNumbers) -> None:
        for state in ChunkState:  # every state, so a state that empties reads 0
            count, nbytes = extra.chunks_by_state.get(state.value, (0, 0))
            CHUNKS.labels(state.value).set(count)
            CHUNK_BYTES.labels(state.value).set(nbytes)
        ratio, saved = dedup_figures(numbers.logical_bytes, numbers.stored_bytes)
        LOGICAL_BYTES.set(numbers.logical_bytes)
        DEDUP_RATIO.set(ratio)
        DEDUP_SAVED.set(saved)
        AT_RISK.set(numbers.chunks_at_risk)
        UNDER_REPLICATED.set(numbers.under_replicated_chunks)
        UNRECOVERABLE.set(numbers.chunks_unrecoverable)
        QUEUE_AGE.set(extra.repair_queue_oldest_s)

    def _set_nodes(self, nodes: Iterable[adm.NodeRow]) -> None:
        current = set()
        for node in nodes:
            current.add(node.id)
            NODE_REPLICAS.labels(node.id).set(node.replicas)
            NODE_BYTES.labels(node.id).set(node.bytes)
        for gone in self._nodes - current:  # a removed node's series end with it
            NODE_REPLICAS.remove(gone)
            NODE_BYTES.remove(gone)
        self._nodes = current

    @staticmethod
    def _set_scrub(extra: adm.GaugeNumbers, replicas: int) -> None:
        row = extra.scrub
        if row is None:
            SCRUB_PROGRESS.set(0)
            SCRUB_LAST_FULL.set(0)
            return
        SCRUB_PROGRESS.set(progress(int(row["pass_replicas"]), replicas))
        done = row["last_pass_done_at"]
        SCRUB_LAST_FULL.set(done.timestamp() if done is not None else 0)
