"""`dfms up` restarts every process that dies, with backoff; one stopped on purpose
stays down, and nothing restarts once the ordered stop began. Real (short) processes."""

from __future__ import annotations

import asyncio
import io
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dfms.localstack.handle import pid_alive
from dfms.localstack.servers import S3NodePorts, kafka_spec, s3_node_spec
from dfms.localstack.supervisor import (
    RESTART_MAX_DELAY_S,
    ManagedProcess,
    ProcessSpec,
    RestartBackoff,
    Supervisor,
)

NO_JITTER = {"jitter_fraction": 0.0}


async def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def restart_lines(out: io.StringIO, name: str) -> list[str]:
    return [line for line in out.getvalue().splitlines()
            if line.startswith(f"!! restarting {name} ")]


def dies_once(marker: Path) -> list[str]:
    """A process that exits 3 the first time and runs for a minute every later time."""
    return ["sh", "-c", f"[ -e {marker} ] && exec sleep 60; touch {marker}; exit 3"]


def test_the_backoff_doubles_up_to_its_cap_and_jitter_only_shortens() -> None:
    backoff = RestartBackoff(first_s=1.0, max_s=30.0, jitter_fraction=0.25)
    assert [backoff.delay_s(n, 0.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]
    for attempt in range(1, 9):
        base = backoff.delay_s(attempt, 0.0)
        assert base * 0.75 < backoff.delay_s(attempt, 0.999) <= base
    # A process that has crash-looped for days: still the cap, no float overflow.
    assert backoff.delay_s(100_000, 0.0) == 30.0
    assert RestartBackoff().delay_s(100, 0.0) == RESTART_MAX_DELAY_S


async def test_a_crash_loop_is_restarted_with_growing_delays_each_logged() -> None:
    out = io.StringIO()
    pids: list[int | None] = []
    sup = Supervisor(out, on_start=lambda mp: pids.append(mp.pid),
                     backoff=RestartBackoff(first_s=0.1, max_s=0.4, **NO_JITTER))
    mp = await sup.start(ProcessSpec("flaky", ["sh", "-c", "exit 3"]))
    try:
        await wait_for("four restarts", lambda: mp.restart_count >= 4)
    finally:
        await sup.stop_all()
    assert restart_lines(out, "flaky")[:4] == [
        "!! restarting flaky in 0.1s (attempt 1)", "!! restarting flaky in 0.2s (attempt 2)",
        "!! restarting flaky in 0.4s (attempt 3)", "!! restarting flaky in 0.4s (attempt 4)"]
    assert len(pids) == mp.restart_count + 1 and len(set(pids)) == len(pids)  # a new pid each
    assert {code for _, code in sup.deaths} == {3}
    assert "exited unexpectedly with code 3" in out.getvalue()  # the death report stays


async def test_the_backoff_starts_over_after_a_stable_run() -> None:
    out = io.StringIO()
    sup = Supervisor(out, backoff=RestartBackoff(first_s=0.05, stable_after_s=0.2, **NO_JITTER))
    mp = await sup.start(ProcessSpec("slow-flaky", ["sh", "-c", "sleep 0.4; exit 3"]))
    try:
        await wait_for("two restarts", lambda: mp.restart_count >= 2)
    finally:
        await sup.stop_all()
    assert restart_lines(out, "slow-flaky")[:2] == [
        "!! restarting slow-flaky in 0.1s (attempt 1)"] * 2


async def test_nothing_restarts_once_the_ordered_stop_began() -> None:
    out = io.StringIO()
    # A backoff well past the set-up's own delays: on a loaded machine a 0.5 s one ran
    # out (and "waiting" restarted) before the stop had even begun.
    sup = Supervisor(out, backoff=RestartBackoff(first_s=2.0, **NO_JITTER))
    waiting = await sup.start(ProcessSpec("waiting", ["sh", "-c", "exit 3"]))
    dying = await sup.start(ProcessSpec("dies-in-stop", ["sh", "-c", "sleep 0.5; exit 3"]))
    # Stopped first (reverse order) and slowly: the others die and would be due
    # for a restart meanwhile.
    await sup.start(ProcessSpec("stubborn", ["sh", "-c", "trap '' TERM; sleep 60"],
                                stop_timeout_s=1.5))
    await wait_for("a restart to be pending", lambda: waiting.state == "restarting")
    await asyncio.sleep(0.1)  # for the trap to be set
    await sup.stop_all()  # about 1.6 s: "stubborn" ignores TERM until its timeout
    await asyncio.sleep(1.2)  # past any backoff: "dies-in-stop" would be due at 2.5 s
    for mp in (waiting, dying):
        assert mp.restart_count == 0 and not mp.running, mp.spec.name
    assert sorted(sup.deaths) == [("dies-in-stop", 3), ("waiting", 3)]
    assert restart_lines(out, "dies-in-stop") == []


async def _died_and_waiting(tmp_path: Path, out: io.StringIO, starts: list[int | None]
                            ) -> tuple[Supervisor, ManagedProcess]:
    sup = Supervisor(out, on_start=lambda mp: starts.append(mp.pid),
                     backoff=RestartBackoff(first_s=0.5, **NO_JITTER))
    mp = await sup.start(ProcessSpec("drill", dies_once(tmp_path / "ran")))
    await wait_for("a restart to be pending", lambda: mp.state == "restarting")
    return sup, mp


@pytest.mark.parametrize("sig", [signal.SIGKILL, None])
async def test_a_process_stopped_during_its_backoff_stays_down_until_started(
        tmp_path: Path, sig: int | None) -> None:
    out, starts = io.StringIO(), list[int | None]()
    sup, mp = await _died_and_waiting(tmp_path, out, starts)
    try:
        await mp.stop(sig)  # what `dfms cluster kill|stop` does
        await asyncio.sleep(0.8)  # past the backoff
        assert not mp.running and mp.state == "stopped" and mp.restart_count == 0
        assert len(starts) == 1
        await mp.start()  # `dfms cluster start`
        assert mp.running and len(starts) == 2
    finally:
        await sup.stop_all()


async def test_a_start_during_the_backoff_starts_it_once(tmp_path: Path) -> None:
    out, starts = io.StringIO(), list[int | None]()
    sup, mp = await _died_and_waiting(tmp_path, out, starts)
    try:
        await mp.start()  # `dfms cluster start` while the restart waits
        pid = mp.pid
        await asyncio.sleep(0.8)  # past the backoff
        assert mp.running and mp.pid == pid and mp.restart_count == 0
        assert len(starts) == 2  # the first run and the one asked for
        await mp.start()  # while it runs: nothing
        assert len(starts) == 2
    finally:
        await sup.stop_all()


async def test_what_is_left_of_a_dead_leaders_group_is_ended() -> None:
    out = io.StringIO()
    sup = Supervisor(out)
    await sup.start(ProcessSpec("leader", ["sh", "-c", "sleep 60 & echo $!; exit 3"],
                                restart=False))
    try:
        async with asyncio.timeout(10):
            await sup.died.wait()
        await wait_for("the child's pid", lambda: "| " in out.getvalue())
        child = int(out.getvalue().split("| ", 1)[1].split()[0])
        await wait_for("the orphaned child to end", lambda: not pid_alive(child), 5.0)
    finally:
        await sup.stop_all()


def test_orphaned_nodes_and_broker_are_killed_at_once_the_rest_stop_gracefully(
        tmp_path: Path) -> None:
    """The parent-death signal: the stop signal, except for the S3 nodes and the broker,
    whose SIGTERM stop outlived a killed `dfms up` by over 5 s (test_up_sigkill.py)."""
    assert ProcessSpec("x", ["true"]).parent_death_signal == signal.SIGTERM
    assert ProcessSpec("x", ["true"], stop_signal=signal.SIGINT).parent_death_signal \
        == signal.SIGINT
    broker = kafka_spec(9092, "http://127.0.0.1:1", "k", "s")
    assert (broker.stop_signal, broker.parent_death_signal) == (signal.SIGTERM,
                                                                signal.SIGKILL)
    node = s3_node_spec("node-1", tmp_path, S3NodePorts(1, 2, 3, 4, 5), "k", "s", "b")
    assert (node.stop_signal, node.parent_death_signal) == (signal.SIGTERM, signal.SIGKILL)


STUBBORN_PARENT = """
import asyncio, signal, sys
from dfms.localstack.supervisor import ProcessSpec, Supervisor

async def main():
    sup = Supervisor(sys.stderr)
    # Ignores SIGTERM, its stop signal: only the parent-death SIGKILL can end it.
    mp = await sup.start(ProcessSpec("stubborn", ["sh", "-c", "trap '' TERM; "
                                     "while :; do sleep 0.1; done"],
                                     death_signal=signal.SIGKILL))
    print(mp.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_the_death_signal_reaches_a_child_when_its_parent_is_killed() -> None:
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", STUBBORN_PARENT, stdout=asyncio.subprocess.PIPE)
    assert parent.stdout is not None
    child = int(await asyncio.wait_for(parent.stdout.readline(), 30))
    assert pid_alive(child)
    parent.kill()
    await parent.wait()
    await wait_for("the orphan to die", lambda: not pid_alive(child), timeout_s=3.0)
