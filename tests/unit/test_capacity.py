"""benchmarks/capacity.py: how it reads k6's points, judges a rate step, and attributes
CPU to a phase (the pure parts; the runs themselves are docs/capacity.md's)."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Mapping
from typing import Any

import pytest

from tests.support.scripts import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
cap = importlib.import_module("capacity")


def point(metric: str, when: str, value: float, **tags: str) -> str:
    return json.dumps({"type": "Point", "metric": metric,
                       "data": {"time": when, "value": value, "tags": tags}})


def test_nanosecond_times_are_read_to_the_microsecond() -> None:
    assert cap.epoch("2026-12-02T16:00:01.123456789Z") == pytest.approx(
        cap.epoch("2026-12-02T16:00:01Z") + 0.123456, abs=1e-6)
    assert cap.epoch("2026-12-02T17:00:00.5+01:00") == cap.epoch("2026-12-02T16:00:00.5Z")


def test_setup_and_teardown_requests_are_left_out_of_the_phase() -> None:
    lines = [
        json.dumps({"type": "Metric", "metric": "http_req_duration", "data": {}}),
        point("http_req_duration", "2026-12-02T16:00:00Z", 900.0, group="::setup"),
        point("http_req_failed", "2026-12-02T16:00:00Z", 1, group="::setup"),
        point("http_req_duration", "2026-12-02T16:00:10Z", 10.0, group="", name="list"),
        point("http_req_failed", "2026-12-02T16:00:10Z", 0, group=""),
        point("http_req_duration", "2026-12-02T16:00:20Z", 30.0, group="", name="stat"),
        point("http_req_failed", "2026-12-02T16:00:20Z", 1, group=""),
        point("http_req_duration", "2026-12-02T16:00:40Z", 700.0, group="::teardown"),
        point("ingest_mib_s", "2026-12-02T16:00:20Z", 42.0, group="", mode="stream"),
    ]
    phase = cap.read_points(lines, keep=("ingest_mib_s",))
    assert phase.durations_ms == [10.0, 30.0]
    assert phase.durations_by_name == {"list": [10.0], "stat": [30.0]}
    assert (phase.failed, phase.wall_s) == (1, 10.0)
    ((_, value, tags),) = phase.values["ingest_mib_s"]
    assert (value, tags["mode"]) == (42.0, "stream")


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (cap.percentile(values, 50), cap.percentile(values, 95),
            cap.percentile(values, 99)) == (50.0, 95.0, 99.0)
    assert cap.percentile([7.0], 99) == 7.0
    assert cap.percentile([], 95) == 0.0


def run_of(durations: list[float], failed: int, summary: Mapping[str, Any]) -> Any:
    phase = cap.Phase(durations_ms=durations, failed=failed, start=0.0, end=60.0)
    return cap.Run(0, phase, {"metrics": summary}, {"gateway": 0.9, "postgres": 0.2}, "")


def counts(**values: float) -> dict[str, Any]:
    return {name: {"values": {"count": count}} for name, count in values.items()}


@pytest.mark.parametrize(("durations", "failed", "dropped", "held"), [
    ([100.0] * 1000, 0, 0, True),
    ([100.0] * 940 + [300.0] * 60, 0, 0, False),   # p95 over 250 ms
    ([100.0] * 1000, 2, 0, False),                 # 0.2% errors
    ([100.0] * 1000, 0, 40, False),                # 40 of 2600 iterations never started
    ([100.0] * 1000, 0, 20, True),
])
def test_a_step_holds_only_under_every_limit(durations: list[float], failed: int,
                                             dropped: int, held: bool) -> None:
    step = cap.mixed_step(40, run_of(durations, failed,
                                     counts(dropped_iterations=dropped, iterations=2600)), 65.0)
    assert step["held"] is held
    assert (step["req_per_s"], step["ops_per_s"], step["busiest"]) == (16.7, 40.0, "gateway")


def test_concurrent_uploads_are_timed_from_the_first_start_to_the_last_end() -> None:
    # Two 64 MiB uploads: one ends at t=10 after 4 s (16 MiB/s), one at t=12 after 8 s.
    points = [(10.0, 16.0, {}), (12.0, 8.0, {})]
    assert cap.upload_spans(points, 64.0) == (4.0, 12.0)


def test_cpu_counts_only_the_samples_inside_the_phase() -> None:
    samples = [cap.Sample(float(t), {"gateway": 0.5 * t, "redis": 0.1 * t}, {})
               for t in range(0, 11)]
    samples[10].cpu_s["gateway"] = 100.0  # after the phase: must not count
    cores = cap.cores_between(samples, 2.0, 9.0)
    assert cores == {"gateway": 0.5, "redis": 0.1}
    assert list(cores) == ["gateway", "redis"]
    assert cap.cores_between(samples, 2.0, 2.5) == {}


def test_durations_read_as_k6_writes_them() -> None:
    assert (cap.seconds("90s"), cap.seconds("30m"), cap.seconds("1h"), cap.seconds("5")) == (
        90.0, 1800.0, 3600.0, 5.0)


def test_every_run_gets_a_seed_of_its_own() -> None:
    labels = [f"small-{v}" for v in (4, 16)] + [
        f"ingest-{m}-{c}" for m in ("stream", "multipart") for c in (1, 4, 16)] + [
        f"mixed-{r}" for r in range(10, 500, 10)] + ["soak"]
    seeds = [cap.run_seed(label) for label in labels]
    assert len(set(seeds)) == len(labels) and all(s > 0 for s in seeds)
    assert cap.run_seed("soak") == cap.run_seed("soak")
