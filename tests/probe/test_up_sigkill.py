"""A `dfms up` killed with SIGKILL leaves no process behind, and says so if one did.

Every child gets a parent-death signal; a service that receives it stops
gracefully but is ended by its watchdog if the stop hangs (the orphaned
replication manager of issue 11 hung in a stop that had swallowed its own
timeout). The next `dfms up` of the data dir refuses to start while a recorded
process of an earlier run still lives, and a cluster.json left saying "ready" by
a killed run reads as stale.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfms.localstack.cluster import STALE, read_cluster_file
from dfms.localstack.records import ProcessRecord, record_for
from tests.support.cluster import ClusterHandle, make_data_dir

KILLS = 10
# Orphans get their parent-death signal: the DFMS services and PostgreSQL stop
# gracefully; the S3 nodes and the broker get SIGKILL (on SIGTERM a `weed mini` took 2-5 s
# and the broker up to 5.3 s beside its stopping store). The limit: nothing left
# within 5 s.
GONE_WITHIN_S = 5.0


def processes_of(data_dir: Path) -> dict[int, str]:
    """Live processes that belong to the cluster of ``data_dir``: recorded by it, or
    naming the data dir on their command line or in their environment."""
    found = {r.pid: r.name for r in ProcessRecord(data_dir).read() if r.alive}
    needle = str(data_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (needle in cmdline or needle in environ):
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def wait_gone(data_dir: Path, timeout_s: float) -> dict[int, str]:
    deadline = time.monotonic() + timeout_s
    last: dict[int, str] = {}
    while (left := processes_of(data_dir)) and time.monotonic() < deadline:
        last = left
        time.sleep(0.1)
    # The process that went last sets the time measured (pytest -s shows it).
    print(f"  last to go: {sorted(last_names(last))}")
    return left


def last_names(procs: dict[int, str]) -> set[str]:
    """A recorded name as is; a command line by its program's name."""
    return {cmd.split(" ", 1)[0].rsplit("/", 1)[-1] for cmd in procs.values()}


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    base = make_data_dir("dfms-sigkill-")
    yield base / "cluster"
    for pid in processes_of(base / "cluster"):  # only if the test failed
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)


def test_sigkill_of_up_at_random_moments_leaves_nothing_behind(cluster_dir: Path) -> None:
    cluster_dir.mkdir()
    rng = random.Random(int.from_bytes(os.urandom(4)))
    for attempt in range(KILLS):
        handle = ClusterHandle(data_dir=cluster_dir)
        handle.start("--nodes", "2")
        assert handle.proc is not None
        children = set(handle.pids())
        time.sleep(rng.uniform(0.0, 4.0))
        killed_at = time.monotonic()
        handle.proc.send_signal(signal.SIGKILL)
        handle.proc.wait()
        assert read_cluster_file(cluster_dir)["state"] == STALE
        left = wait_gone(cluster_dir, GONE_WITHIN_S)
        print(f"kill {attempt + 1}: gone after {time.monotonic() - killed_at:.2f} s")
        assert left == {}, f"kill {attempt + 1}: still running after {GONE_WITHIN_S}s: {left}"
        assert children and not any(record_for("x", pid) for pid in children)


def test_up_refuses_to_start_while_a_process_of_an_earlier_run_lives(cluster_dir: Path
                                                                      ) -> None:
    cluster_dir.mkdir()
    orphan = subprocess.Popen(["sleep", "120"])
    try:
        record = ProcessRecord(cluster_dir)
        record.add("replication-manager", orphan.pid)
        result = subprocess.run(
            [sys.executable, "-m", "dfms", "up", "--data-dir", str(cluster_dir),
             "--gateway-port", "0"], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"replication-manager (pid {orphan.pid})" in result.stderr
        assert f"kill {orphan.pid}" in result.stderr
        assert not (cluster_dir / "postgres").exists()  # nothing was started
        assert ProcessRecord(cluster_dir).survivors()  # and the record is kept
    finally:
        orphan.kill()
        orphan.wait()
    # The pid is gone (or reused by another program): no longer a reason to refuse.
    assert ProcessRecord(cluster_dir).survivors() == []


def test_cluster_ps_names_a_stale_cluster(cluster_dir: Path) -> None:
    cluster_dir.mkdir()
    handle = ClusterHandle(data_dir=cluster_dir)
    handle.start("--nodes", "2")
    assert handle.proc is not None
    handle.proc.send_signal(signal.SIGKILL)
    handle.proc.wait()
    assert wait_gone(cluster_dir, GONE_WITHIN_S) == {}
    ps = subprocess.run([sys.executable, "-m", "dfms", "cluster", "ps", "--data-dir",
                         str(cluster_dir)], capture_output=True, text=True, timeout=60,
                        check=False)
    assert ps.returncode == 1
    assert "is no longer running: its cluster.json is stale" in ps.stderr
    assert "still running: none" in ps.stderr
