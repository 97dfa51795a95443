"""`dfms cluster stop|kill|start` as an operator reads it: a sentence and an exit code,
never a Python dict or "exit code None", and a `-- ` line on the `dfms up` terminal.

Against the session cluster's gc-worker: it holds no state a test relies on, and the
test leaves it running as it found it.
"""

from __future__ import annotations

import subprocess
import sys

from tests.support.cluster import ClusterHandle

PROC = "gc-worker"


def dfms_cluster(cluster: ClusterHandle, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dfms", "cluster", *args, "--data-dir",
                           str(cluster.data_dir)], capture_output=True, text=True,
                          timeout=120, check=False)


def test_kill_and_start_print_a_sentence_and_exit_0(cluster: ClusterHandle) -> None:
    killed = dfms_cluster(cluster, "kill", PROC)
    try:
        assert (killed.returncode, killed.stderr) == (0, ""), killed
        assert killed.stdout == (f"killed {PROC} with SIGKILL; it stays down until "
                                 f"`dfms cluster start {PROC}`\n")
        again = dfms_cluster(cluster, "kill", PROC)
        assert again.returncode == 0, again
        assert again.stdout.startswith(f"{PROC} was not running (stopped): nothing to kill")
        ps = dfms_cluster(cluster, "ps")
        row = next(line.split() for line in ps.stdout.splitlines() if line.startswith(PROC))
        assert row[1:3] == ["stopped", "-"], ps.stdout  # no pid of a process that is gone
        stop = dfms_cluster(cluster, "stop", PROC)
        assert stop.returncode == 0 and "nothing to stop" in stop.stdout, stop
    finally:
        started = dfms_cluster(cluster, "start", PROC)
    assert started.returncode == 0, started
    assert started.stdout.startswith(f"started {PROC} (pid ") and "it is ready" in \
        started.stdout
    running = dfms_cluster(cluster, "start", PROC)
    assert running.returncode == 0 and running.stdout.startswith(
        f"{PROC} is already running (pid "), running
    if cluster.log_path is not None:  # our own `dfms up`, whose terminal is its log
        log = cluster.log_text()
        assert f"-- {PROC} killed through `dfms cluster` (exit code -9)" in log
        assert f"-- {PROC} started through `dfms cluster` (pid " in log


def test_unknown_or_missing_process_is_an_error_with_exit_1(cluster: ClusterHandle) -> None:
    unknown = dfms_cluster(cluster, "kill", "node-99")
    assert unknown.returncode == 1 and unknown.stdout == "", unknown
    assert unknown.stderr == "dfms: error: could not kill node-99: no such process\n"
    nameless = dfms_cluster(cluster, "stop")
    assert nameless.returncode == 1, nameless
    assert "`dfms cluster stop` needs a process name" in nameless.stderr


def test_cluster_help_tells_stop_from_kill() -> None:
    out = subprocess.run([sys.executable, "-m", "dfms", "cluster", "--help"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    flat = " ".join(out.split())
    assert "stop sends the process its normal shutdown signal and waits (a clean stop)" in flat
    assert "kill sends SIGKILL (a crash, for fault drills)" in flat
    assert "Neither is restarted until `start`" in flat
