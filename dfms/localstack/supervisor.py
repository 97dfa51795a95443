"""Runs the local cluster's processes: prefixed logs, death reports, ordered stop.

Each child runs in its own session so that a terminal's Ctrl-C reaches only
``dfms up``, which then stops the children in reverse start order. Children
also get a parent-death signal, so a ``dfms up`` killed with SIGKILL does not
leave servers behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from dfms.runtime.logs import get_logger

log = get_logger("up")

_PR_SET_PDEATHSIG = 1
_COLORS = ("36", "32", "33", "35", "34", "96", "92", "93", "95", "94")


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    user: str | None = None
    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 20.0
    restart: bool = False  # DFMS services come back; servers are only reported.


def _preexec(sig: int) -> Callable[[], None]:
    """What the child runs between fork and exec: die with ``sig`` when `dfms up` dies."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork, not in the window
    parent = os.getpid()

    def setup() -> None:
        # Until exec the child has `dfms up`'s Python handler for ``sig``, which only
        # sets a flag that exec then forgets: a parent death landing here would be lost,
        # and the signal is sent once.
        signal.signal(sig, signal.SIG_DFL)
        libc.prctl(_PR_SET_PDEATHSIG, sig)
        # The parent may have died between fork and prctl: the child then belongs to
        # init or to a subreaper, so compare with the parent's pid, not with 1.
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)
    return setup


class ManagedProcess:
    RESTART_LIMIT = 5
    RESTART_WINDOW_S = 60.0

    def __init__(self, spec: ProcessSpec, out: TextIO, color: str | None,
                 on_death: Callable[[ManagedProcess, int], None],
                 on_start: Callable[[ManagedProcess], None] | None = None) -> None:
        self.spec = spec
        self._out = out
        self._prefix = f"{spec.name:<18}| "
        if color:
            self._prefix = f"\x1b[{color}m{self._prefix}\x1b[0m"
        self._on_death = on_death
        self._on_start = on_start
        self.proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._restarts: list[float] = []
        self.restart_count = 0
        self.started_at: float | None = None  # wall clock of the last start

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def state(self) -> str:
        """running, stopped (on purpose), exited (died, with its code) or not started."""
        if self.proc is None:
            return "not started"
        if self.proc.returncode is None:
            return "running"
        return "stopped" if self._stopping else f"exited {self.proc.returncode}"

    async def start(self) -> None:
        self._stopping = False
        self.started_at = time.time()
        env = {**os.environ, **self.spec.env}
        self.proc = await asyncio.create_subprocess_exec(
            *self.spec.argv, env=env, cwd=self.spec.cwd, user=self.spec.user,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            preexec_fn=_preexec(self.spec.stop_signal), limit=1 << 20)
        self._tasks = [asyncio.create_task(self._pump(self.proc)),
                       asyncio.create_task(self._watch(self.proc))]
        if self._on_start is not None:
            self._on_start(self)

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:  # a line longer than the limit: skip it
                continue
            if not line:
                return
            self._out.write(self._prefix + line.decode(errors="replace").rstrip() + "\n")
            self._out.flush()

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if not self._stopping:
            self._on_death(self, code)
            if self.spec.restart and self._may_restart():
                await asyncio.sleep(1.0)
                if not self._stopping:
                    log.warning("restarting", extra={"proc": self.spec.name})
                    self.restart_count += 1
                    await self.start()

    def _may_restart(self) -> bool:
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < self.RESTART_WINDOW_S]
        if len(self._restarts) >= self.RESTART_LIMIT:
            log.error("restarted too often; giving up", extra={"proc": self.spec.name})
            return False
        self._restarts.append(now)
        return True

    def _signal_group(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    async def stop(self, sig: int | None = None) -> int | None:
        """Stop on purpose (not reported as a death); ``sig`` overrides the spec's signal."""
        self._stopping = True
        proc = self.proc
        if proc is None:
            return None
        self._signal_group(self.spec.stop_signal if sig is None else sig)
        try:
            async with asyncio.timeout(self.spec.stop_timeout_s):
                await proc.wait()
        except TimeoutError:
            log.warning("did not stop in time; killing", extra={"proc": self.spec.name})
            self._signal_group(signal.SIGKILL)
            await proc.wait()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return proc.returncode


class Supervisor:
    """Starts processes in order and stops them in reverse order."""

    def __init__(self, out: TextIO = sys.stdout,
                 on_start: Callable[[ManagedProcess], None] | None = None) -> None:
        self._out = out
        self._on_start = on_start
        self._color = out.isatty()
        self.processes: list[ManagedProcess] = []
        self.deaths: list[tuple[str, int]] = []
        self.died = asyncio.Event()

    def announce(self, line: str) -> None:
        """A line of `dfms up` itself on its terminal (not a child's log line)."""
        self._out.write(f"-- {line}\n")
        self._out.flush()

    def _report_death(self, mp: ManagedProcess, code: int) -> None:
        self.deaths.append((mp.spec.name, code))
        self.died.set()
        msg = f"!! {mp.spec.name} (pid {mp.pid}) exited unexpectedly with code {code}"
        self._out.write(msg + "\n")
        self._out.flush()
        log.error("process died", extra={"proc": mp.spec.name, "code": code})

    async def start(self, spec: ProcessSpec) -> ManagedProcess:
        color = _COLORS[len(self.processes) % len(_COLORS)] if self._color else None
        mp = ManagedProcess(spec, self._out, color, self._report_death, self._on_start)
        await mp.start()
        self.processes.append(mp)
        return mp

    def get(self, name: str) -> ManagedProcess:
        for mp in self.processes:
            if mp.spec.name == name:
                return mp
        raise KeyError(name)

    async def stop_all(self) -> None:
        for mp in reversed(self.processes):
            code = await mp.stop()
            log.info("stopped", extra={"proc": mp.spec.name, "code": code})
