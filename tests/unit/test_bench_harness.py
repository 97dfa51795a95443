"""benchmarks/harness.py: the cluster a benchmark runs on, and its cleanup."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from tests.support.scripts import load_script

harness = load_script("benchmarks/harness.py")


class FakeCluster:
    made: ClassVar[list[FakeCluster]] = []
    fail_start = False

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.started: tuple[str, ...] | None = None
        self.stopped = False
        FakeCluster.made.append(self)

    def start(self, *extra: str) -> None:
        if FakeCluster.fail_start:
            raise RuntimeError("dfms up exited with 1")
        self.started = extra

    def stop(self) -> int:
        self.stopped = True
        return 0


@pytest.fixture
def base(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    FakeCluster.made, FakeCluster.fail_start = [], False
    path = tmp_path / "bench"
    path.mkdir()
    monkeypatch.setattr(harness, "ClusterHandle", FakeCluster)
    monkeypatch.setattr(harness, "make_data_dir", lambda prefix: path)
    return path


def test_a_throwaway_cluster_is_started_stopped_and_deleted(base: Path) -> None:
    ran: list[object] = []

    async def bench(cluster: object) -> None:
        ran.append(cluster)

    harness.run_on_cluster(bench, None, up_args=("--nodes", "4"))
    [cluster] = FakeCluster.made
    assert ran == [cluster] and cluster.started == ("--nodes", "4") and cluster.stopped
    assert cluster.data_dir == base / "cluster" and not base.exists()


def test_a_cluster_that_fails_to_start_is_still_cleaned_up(base: Path) -> None:
    FakeCluster.fail_start = True

    async def bench(cluster: object) -> None:
        raise AssertionError("not run")

    with pytest.raises(RuntimeError, match="dfms up exited"):
        harness.run_on_cluster(bench)
    [cluster] = FakeCluster.made
    assert cluster.stopped and not base.exists()


def test_with_a_data_dir_it_attaches_and_starts_nothing(
        base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    attached = object()
    monkeypatch.setattr(harness, "attach", lambda spec: attached if spec == "D" else None)
    ran: list[object] = []

    async def bench(cluster: object) -> None:
        ran.append(cluster)

    harness.run_on_cluster(bench, "D")
    assert ran == [attached] and FakeCluster.made == [] and base.exists()
