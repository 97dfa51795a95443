"""The operator metrics' pure logic: dedup and progress figures, consumer lag, the GC's
reclaimed bytes and success time, bounded HTTP labels, which nodes count as up, the
cluster gauges' node series; and a static check that no metric has a label whose
values grow with files or users."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import TopicPartition
from prometheus_client import REGISTRY

from dfms.config import load_config
from dfms.errors import ConfigError
from dfms.events.lag import LagMeter, topic_lag
from dfms.gateway.middleware import OTHER_METHOD, method_label
from dfms.gc.worker import record_pass
from dfms.healthmon import capacity
from dfms.healthmon import cluster_gauges as cg
from dfms.healthmon.service import HealthMonitor
from dfms.metadata.admin import GaugeNumbers, NodeRow, gone_and_not_up
from dfms.runtime.service import PassStats
from tests.unit.test_deploy import exported_metrics

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def node(node_id: str, *, admin_state: str = "active", health: str = "healthy",
         replicas: int = 0, nbytes: int = 0) -> NodeRow:
    return NodeRow(node_id, "http://x", "b", "z", 1.0, admin_state, health, NOW, None, None,
                   NOW, NOW, replicas, nbytes)


# --- figures ---------------------------------------------------------------------------

@pytest.mark.parametrize(("logical", "stored", "expected"), [
    (0, 0, (1.0, 0)), (100, 0, (1.0, 0)), (300, 100, (3.0, 200)), (100, 100, (1.0, 0)),
    (50, 100, (0.5, 0)),  # chunks no version references yet (a multipart in progress)
])
def test_dedup_figures(logical: int, stored: int, expected: tuple[float, int]) -> None:
    assert cg.dedup_figures(logical, stored) == expected


@pytest.mark.parametrize(("done", "total", "expected"), [
    (0, 0, 0.0), (5, 0, 1.0), (0, 10, 0.0), (5, 10, 0.5), (12, 10, 1.0)])
def test_progress_stays_a_share(done: int, total: int, expected: float) -> None:
    assert cg.progress(done, total) == expected


def test_due_first_time_and_after_the_interval() -> None:
    assert cg.due(None, 5.0, 30.0)
    assert not cg.due(0.0, 29.9, 30.0)
    assert cg.due(0.0, 30.0, 30.0)


# --- which nodes hold readable replicas -----------------------------------------------

def test_down_and_removed_nodes_are_not_up_suspect_and_draining_are() -> None:
    nodes = [node("a"), node("b", health="down"), node("c", health="suspect"),
             node("d", admin_state="removed"), node("e", admin_state="draining"),
             node("f", admin_state="removed", health="down")]
    removed, not_up = gone_and_not_up(nodes)
    assert removed == ["d", "f"]
    assert sorted(not_up) == ["b", "d", "f"]


# --- consumer lag ----------------------------------------------------------------------

class FakeConsumer:
    def __init__(self, ends: dict[TopicPartition, int | None]) -> None:
        self.ends = ends

    def assignment(self) -> set[TopicPartition]:
        return set(self.ends)

    def highwater(self, partition: TopicPartition) -> int | None:
        return self.ends[partition]


def test_topic_lag_sums_partitions_and_skips_unknown_ends() -> None:
    a0, a1, b0 = TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)
    assert topic_lag({a0: 10, a1: 5, b0: None}, {a0: 4, a1: 5, b0: 1}) == {"a": 6}
    assert topic_lag({a0: 10}, {}) == {"a": 0}  # nothing handled yet: caught up
    assert topic_lag({a0: 3}, {a0: 7}) == {"a": 0}  # never negative


def test_lag_meter_sets_a_series_per_topic_and_forgets_revoked_partitions() -> None:
    group = "test.lag-meter"
    t0, t1 = TopicPartition("dfms.chunks", 0), TopicPartition("dfms.chunks", 1)
    meter = LagMeter(group, ["dfms.chunks", "dfms.nodes"])
    assert value("dfms_consumer_lag_messages", group=group, topic="dfms.nodes") == 0
    meter.handled(t0, 3)
    meter.handled(t1, 8)
    meter.update(FakeConsumer({t0: 10, t1: 10}))
    assert value("dfms_consumer_lag_messages", group=group, topic="dfms.chunks") == 9
    meter.update(FakeConsumer({t1: 10}))  # t0 went to another member
    meter.handled(t1, 10)
    meter.update(FakeConsumer({t0: 20, t1: 10}))  # t0 back: its old offset is stale
    assert value("dfms_consumer_lag_messages", group=group, topic="dfms.chunks") == 0


# --- GC --------------------------------------------------------------------------------

def test_gc_pass_adds_reclaimed_bytes_and_marks_success_only_without_errors() -> None:
    before = {k: value("dfms_gc_reclaimed_bytes_total", kind=k) or 0.0
              for k in ("chunks", "orphans")}
    stats = PassStats({"bytes_swept": 1000, "orphan_bytes_deleted": 24, "chunks_swept": 3})
    record_pass(stats, now=1234.0)
    assert value("dfms_gc_reclaimed_bytes_total", kind="chunks") == before["chunks"] + 1000
    assert value("dfms_gc_reclaimed_bytes_total", kind="orphans") == before["orphans"] + 24
    assert value("dfms_gc_last_success_timestamp_seconds") == 1234.0
    record_pass(PassStats({"bytes_swept": 1}, errors=1), now=9999.0)
    assert value("dfms_gc_last_success_timestamp_seconds") == 1234.0


# --- HTTP labels -----------------------------------------------------------------------

@pytest.mark.parametrize(("method", "label"), [
    ("GET", "GET"), ("DELETE", "DELETE"), ("OPTIONS", "OPTIONS"), ("PROPFIND", OTHER_METHOD),
    ("X" * 40, OTHER_METHOD), ("get", OTHER_METHOD)])
def test_http_method_label_is_bounded(method: str, label: str) -> None:
    assert method_label(method) == label


# --- cluster gauges --------------------------------------------------------------------

@pytest.fixture
def gauges() -> Iterator[cg.ClusterGauges]:
    yield cg.ClusterGauges(replicas_n=3, interval_s=30.0)


def test_gauges_interval_is_the_config_key() -> None:
    cfg = load_config(env={"DFMS_HEALTHMON__CLUSTER_GAUGES_INTERVAL_S": "7.5"})
    assert cfg.healthmon.cluster_gauges_interval_s == 7.5
    assert HealthMonitor(cfg)._gauges.interval_s == 7.5
    assert HealthMonitor(load_config(env={}))._gauges.interval_s == 30.0
    with pytest.raises(ConfigError, match="cluster_gauges_interval_s"):
        load_config(env={"DFMS_HEALTHMON__CLUSTER_GAUGES_INTERVAL_S": "0"})


def test_node_series_follow_the_nodes(gauges: cg.ClusterGauges) -> None:
    gauges._set_nodes([node("gauge-a", replicas=4, nbytes=400), node("gauge-b", replicas=1)])
    assert value("dfms_node_replicas", node="gauge-a") == 4
    assert value("dfms_node_stored_bytes", node="gauge-a") == 400
    gauges._set_nodes([node("gauge-a", replicas=5, nbytes=500)])
    assert value("dfms_node_replicas", node="gauge-a") == 5
    assert value("dfms_node_replicas", node="gauge-b") is None
    assert value("dfms_node_stored_bytes", node="gauge-b") is None


def test_scrub_gauges(gauges: cg.ClusterGauges) -> None:
    row: dict[str, Any] = {"pass_replicas": 25, "last_pass_done_at": NOW}
    gauges._set_scrub(GaugeNumbers({}, 0.0, row), replicas=100)  # type: ignore[arg-type]
    assert value("dfms_scrub_pass_progress_ratio") == 0.25
    assert value("dfms_scrub_last_full_pass_timestamp_seconds") == NOW.timestamp()
    gauges._set_scrub(GaugeNumbers({}, 0.0, None), replicas=100)
    assert value("dfms_scrub_last_full_pass_timestamp_seconds") == 0


def test_chunk_gauges_cover_every_state(gauges: cg.ClusterGauges) -> None:
    from dfms.metadata.admin import ClusterNumbers

    numbers = ClusterNumbers(nodes=[], chunk_count=2, stored_bytes=100, condemned_chunks=1,
                             replicated_bytes=300, logical_bytes=250,
                             under_replicated_chunks=1, repair_queue_length=0, ring_epoch=1)
    numbers = replace(numbers, chunks_at_risk=2, chunks_unrecoverable=0)
    gauges._set_chunks(numbers, GaugeNumbers({"live": (2, 100), "condemned": (1, 7)}, 12.5,
                                             None))
    assert value("dfms_stored_chunks", state="live") == 2
    assert value("dfms_stored_chunk_bytes", state="condemned") == 7
    assert value("dfms_stored_chunks", state="sweeping") == 0
    assert value("dfms_dedup_ratio") == 2.5
    assert value("dfms_dedup_saved_bytes") == 150
    assert value("dfms_chunks_at_risk") == 2
    assert value("dfms_under_replicated_chunks") == 1
    assert value("dfms_repair_queue_oldest_age_seconds") == 12.5


# --- node disk space --------------------------------------------------------------------

async def test_disk_gauges_report_readable_data_dirs(tmp_path: Path) -> None:
    disks = capacity.DiskGauges()
    await disks.update({"disk-a": str(tmp_path), "disk-b": str(tmp_path / "missing")})
    usage = shutil.disk_usage(tmp_path)
    assert value("dfms_node_disk_total_bytes", node="disk-a") == usage.total
    free = value("dfms_node_disk_free_bytes", node="disk-a")
    assert free is not None and abs(free - usage.free) < 64 * 2**20  # other writers
    assert value("dfms_node_disk_free_bytes", node="disk-b") is None
    await disks.update({"disk-b": str(tmp_path)})  # disk-a removed or its dir forgotten
    assert value("dfms_node_disk_free_bytes", node="disk-a") is None
    assert value("dfms_node_disk_total_bytes", node="disk-a") is None
    assert value("dfms_node_disk_total_bytes", node="disk-b") == usage.total


async def test_a_hanging_statvfs_does_not_hold_the_pass(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.setattr(capacity, "disk_space", lambda path: time.sleep(0.5))
    started = time.monotonic()
    assert await capacity.read_disk_space("/", timeout_s=0.05) is None
    assert time.monotonic() - started < 0.4


# --- cardinality -----------------------------------------------------------------------

# Label names whose values come from a fixed set (routes are templates, nodes and
# services are configured, the rest are code constants). A label named after anything
# a user creates would grow with use.
BOUNDED_LABELS = {"route", "method", "status", "outcome", "node", "op", "direction",
                  "service", "counter", "state", "rpc", "code", "class", "event", "reason",
                  "consumer", "topic", "group", "kind", "le", "job", "instance",
                  # the live event streams: a bool, where a replay came from, which cap
                  "replayed", "source", "cap"}


def test_every_metric_label_is_a_bounded_one() -> None:
    unknown = {name: sorted(labels - BOUNDED_LABELS)
               for name, labels in exported_metrics().items() if labels - BOUNDED_LABELS}
    assert unknown == {}
