from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import tempfile
import time

import aiohttp
import pytest

from dfms.localstack.supervisor import ProcessSpec, Supervisor, _preexec
from dfms.runtime.ops import OpsServer
from dfms.runtime.service import EXIT_HUNG, HARD_EXIT_MARGIN_S, BackgroundService, PassStats
from dfms.runtime.stacks import dump_stacks
from dfms.runtime.tasks import cancel_and_wait


class Counting(BackgroundService):
    name = "counting"

    def __init__(self, items: list[object]) -> None:
        super().__init__()
        self.items = items
        self.passes = 0

    async def run_once(self) -> PassStats:
        stats = PassStats()
        self.passes += 1
        for item in self.items:
            try:
                if item == "bad":
                    raise ValueError("bad item")
                stats.add("handled")
            except ValueError:
                stats.errors += 1  # one bad item never stops a pass
        return stats


async def test_run_once_counts_and_survives_bad_items() -> None:
    svc = Counting([1, "bad", 2])
    stats = await svc.run_once()
    assert stats.counters == {"handled": 2} and stats.errors == 1


async def test_run_forever_repeats_and_stop_is_idempotent() -> None:
    svc = Counting([1])
    svc.interval_s = 0.01
    await svc.start()
    await svc.start()
    deadline = time.monotonic() + 5
    while svc.passes < 3 and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a counter
        await asyncio.sleep(0.01)
    await svc.stop()
    await svc.stop()
    count = svc.passes
    assert count >= 3
    await asyncio.sleep(0.05)
    assert svc.passes == count  # no pass after stop


async def test_ready_reports_each_dependency() -> None:
    async def fine() -> None:
        return None

    async def broken() -> None:
        raise ConnectionRefusedError("db down")

    ops = OpsServer("svc", "127.0.0.1", 0, {"db": broken, "cache": fine})
    await ops.start()
    try:
        url = f"http://127.0.0.1:{ops.bound_port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/health") as resp:
                assert resp.status == 200
            async with http.get(f"{url}/ready") as resp:
                body = await resp.json()
                assert resp.status == 503
                assert body["dependencies"]["cache"]["ok"] is True
                assert body["dependencies"]["db"] == {
                    "ok": False, "error": "ConnectionRefusedError: db down"}
            async with http.get(f"{url}/metrics") as resp:
                assert "dfms_service_up" in await resp.text()
    finally:
        await ops.stop()
        await ops.stop()


async def test_supervisor_reports_a_death_and_prefixes_lines() -> None:
    out = io.StringIO()
    sup = Supervisor(out)
    exits = "print('hi'); raise SystemExit(3)"
    await sup.start(ProcessSpec("short", [sys.executable, "-c", exits]))
    async with asyncio.timeout(10):
        await sup.died.wait()
    await sup.stop_all()
    assert sup.deaths == [("short", 3)]
    text = out.getvalue()
    assert "short" in text and "| hi" in text
    assert "exited unexpectedly with code 3" in text


async def test_supervisor_stops_in_reverse_order_and_kills_stubborn_ones() -> None:
    out = io.StringIO()
    sup = Supervisor(out)
    stubborn = ("import signal, time, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('up', flush=True); time.sleep(60)")
    first = await sup.start(ProcessSpec("first", [sys.executable, "-c", stubborn],
                                        stop_timeout_s=0.5))
    second = await sup.start(ProcessSpec("second", [sys.executable, "-c",
                                                    "import time; time.sleep(60)"]))
    await asyncio.sleep(0.5)
    await sup.stop_all()
    assert not first.running and not second.running
    assert first.proc is not None and first.proc.returncode == -signal.SIGKILL
    assert second.proc is not None and second.proc.returncode == -signal.SIGTERM
    assert sup.deaths == []  # an asked-for stop is not a death


async def test_supervisor_restarts_a_service_that_dies() -> None:
    out = io.StringIO()
    sup = Supervisor(out)
    mp = await sup.start(ProcessSpec("svc", [sys.executable, "-c", "import time; time.sleep(60)"],
                                     restart=True))
    first_pid = mp.pid
    assert first_pid is not None
    mp.proc.kill()  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while (mp.pid == first_pid or not mp.running) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    try:
        assert mp.running and mp.pid != first_pid
        assert sup.deaths == [("svc", -signal.SIGKILL)]
    finally:
        await sup.stop_all()


async def start_service_process(code: str) -> asyncio.subprocess.Process:
    """Run ``code`` (a service under ``run_service``) in a Python of its own and wait
    until it logs "started"; its output stays readable from ``proc.stdout``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    lines: list[bytes] = []
    async with asyncio.timeout(20):
        while not any(b"started" in line for line in lines):
            line = await proc.stdout.readline()
            assert line, b"".join(lines)
            lines.append(line)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_service_process_stops_gracefully_on_signal(sig: int) -> None:
    # A tiny background service with an ops server: the runtime, not the gateway.
    code = (
        "import asyncio\n"
        "from dfms.config import load_config\n"
        "from dfms.runtime.service import BackgroundService, PassStats, run_service\n"
        "class S(BackgroundService):\n"
        "    name = 'probe'\n"
        "    interval_s = 0.05\n"
        "    async def run_once(self):\n"
        "        return PassStats()\n"
        "    @property\n"
        "    def ops_port(self):\n"
        "        return 0\n"
        "from dfms.runtime.logs import setup_logging\n"
        "setup_logging()\n"
        "raise SystemExit(asyncio.run(run_service(S(), load_config(env={}))))\n"
    )
    proc = await start_service_process(code)
    assert proc.stdout is not None
    proc.send_signal(sig)
    async with asyncio.timeout(20):
        rest = await proc.stdout.read()
        code_ = await proc.wait()
    assert code_ == 0, rest
    assert b"stopped" in rest


async def test_a_stop_that_hangs_and_swallows_cancellation_still_ends_the_process() -> None:
    """The orphan found after SIGKILL of `dfms up`: a stop awaiting a cancelled task
    with ``suppress(CancelledError)`` swallowed the grace timeout and then waited on
    a client that never returned. The watchdog ends the process anyway."""
    code = (
        "import asyncio, contextlib\n"
        "from dfms.config import load_config\n"
        "from dfms.runtime.service import Service, run_service\n"
        "class S(Service):\n"
        "    name = 'stuck'\n"
        "    async def _start(self):\n"
        "        self.task = asyncio.create_task(asyncio.sleep(3600))\n"
        "    async def _stop(self):\n"
        "        self.task.cancel()\n"
        "        with contextlib.suppress(asyncio.CancelledError):\n"
        "            await self.task\n"
        "        while True:\n"  # a client retrying a dead broker, deaf to cancellation
        "            with contextlib.suppress(asyncio.CancelledError):\n"
        "                await asyncio.sleep(3600)\n"
        "from dfms.runtime.logs import setup_logging\n"
        "setup_logging()\n"
        "cfg = load_config(env={'DFMS_OPS__SHUTDOWN_GRACE_S': '0.5'})\n"
        "raise SystemExit(asyncio.run(run_service(S(), cfg)))\n"
    )
    proc = await start_service_process(code)
    assert proc.stdout is not None
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    async with asyncio.timeout(20):
        rest = await proc.stdout.read()
        code_ = await proc.wait()
    took = time.monotonic() - started
    assert code_ == EXIT_HUNG, rest
    assert b"stop did not finish in time" in rest
    assert took < 0.5 + HARD_EXIT_MARGIN_S + 3


async def test_cancel_and_wait_keeps_the_callers_own_cancellation() -> None:
    async def worker() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.2)  # cleanup on cancel (e.g. leaving a consumer group)

    async def stopper() -> str:
        task = asyncio.create_task(worker())
        await asyncio.sleep(0)  # let it start
        await cancel_and_wait(task)
        return "carried on past its deadline"

    # The worker's own cancellation is absorbed ...
    assert await stopper() == "carried on past its deadline"
    # ... but a timeout aimed at the stopper while it waits is not swallowed.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await stopper()


def test_a_parent_death_signal_between_fork_and_exec_is_not_lost() -> None:
    """`dfms up` handles SIGTERM in Python; a forked child keeps that handler until exec,
    and a parent-death signal it caught there would be forgotten by exec (so a broker
    once outlived a killed `dfms up`). The child must die of it instead."""
    setup = _preexec(signal.SIGTERM)

    def setup_then_parent_dies() -> None:
        setup()
        os.kill(os.getpid(), signal.SIGTERM)  # what the kernel sends when the parent dies

    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        proc = subprocess.Popen(["sleep", "30"], preexec_fn=setup_then_parent_dies)
    finally:
        signal.signal(signal.SIGTERM, previous)
    try:
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()


async def test_the_stack_dump_shows_where_each_task_waits() -> None:
    gate = asyncio.Event()

    async def waits_for_the_gate() -> None:
        await gate.wait()

    async def handles_an_upload() -> None:
        await waits_for_the_gate()

    task = asyncio.create_task(handles_an_upload(), name="stuck-upload")
    await asyncio.sleep(0)
    with tempfile.TemporaryFile("w+") as out:
        dump_stacks(out)
        out.seek(0)
        text = out.read()
    gate.set()
    await task
    section = text.split("--- task 'stuck-upload'\n", 1)[1].split("--- task", 1)[0]
    # The whole await chain, outermost first, down to the line that waits.
    assert section.index("handles_an_upload") < section.index("waits_for_the_gate")
    assert "await gate.wait()" in section
    assert "=== threads" in text and "most recent call first" in text
