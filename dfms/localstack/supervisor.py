"""Runs the local cluster's processes: prefixed logs, death reports, restarts with
backoff, ordered stop.

Each child runs in its own session so that a terminal's Ctrl-C reaches only
``dfms up``, which then stops the children in reverse start order. Children
also get a parent-death signal, so a ``dfms up`` killed with SIGKILL does not
leave servers behind.

A process that exits without being asked to is reported and started again after
an exponential backoff with jitter. One stopped or killed on purpose (``dfms
cluster stop|kill``, or the ordered stop of ``dfms up``) stays down: ``stop()``
cancels a restart that is still waiting, and a restart re-checks, under the same
lock ``start()`` and ``stop()`` take, that nobody stopped or started the process
meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from dfms.runtime.logs import get_logger

log = get_logger("up")

_PR_SET_PDEATHSIG = 1
_COLORS = ("36", "32", "33", "35", "34", "96", "92", "93", "95", "94")

RESTART_FIRST_DELAY_S = 1.0
RESTART_MAX_DELAY_S = 30.0
# Each delay is shortened by up to this fraction at random, so that processes that
# died together (a dependency's outage) do not all come back in the same instant.
RESTART_JITTER_FRACTION = 0.25
# A process that stayed up this long had recovered: its next death starts the
# backoff from the first delay again.
RESTART_STABLE_AFTER_S = 60.0
EXIT_POLL_S = 0.1
_MAX_DOUBLINGS = 30  # 2**30 s is past any cap; keeps the power from overflowing a float


@dataclass(frozen=True)
class RestartBackoff:
    """How long to wait before restart ``attempt`` (1 = the first since a stable run).

    There is no give-up limit: the capped delay already bounds a crash loop to one
    start per ``max_s``, which costs next to nothing, and each one is logged. A limit
    would make a dependency that flapped for a few minutes (a full disk, an OOM kill)
    stay down for good, and the cluster is meant to heal without a restart of
    ``dfms up``.
    """

    first_s: float = RESTART_FIRST_DELAY_S
    max_s: float = RESTART_MAX_DELAY_S
    jitter_fraction: float = RESTART_JITTER_FRACTION
    stable_after_s: float = RESTART_STABLE_AFTER_S

    def delay_s(self, attempt: int, rand: float) -> float:
        """``rand`` in [0, 1) picks the jitter; the delay never exceeds ``max_s``."""
        doublings = min(max(attempt - 1, 0), _MAX_DOUBLINGS)
        base = min(self.max_s, self.first_s * 2.0 ** doublings)
        return base * (1.0 - self.jitter_fraction * rand)


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    user: str | None = None
    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 20.0
    restart: bool = True  # False: only reported when it dies (tests)
    # Sent when `dfms up` dies without stopping it (None: the stop signal). An orphan
    # left stopping gracefully outlives the crash; a server whose acknowledged writes
    # are already durable can go at once.
    death_signal: int | None = None

    @property
    def parent_death_signal(self) -> int:
        return self.stop_signal if self.death_signal is None else self.death_signal


def _preexec(sig: int) -> Callable[[], None]:
    """What the child runs between fork and exec: die with ``sig`` when `dfms up` dies."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork, not in the window
    parent = os.getpid()

    def setup() -> None:
        # Until exec the child has `dfms up`'s Python handler for ``sig``, which only
        # sets a flag that exec then forgets: a parent death landing here would be lost,
        # and the signal is sent once.
        if sig != signal.SIGKILL:  # which has no handler to reset (signal() refuses it)
            signal.signal(sig, signal.SIG_DFL)
        libc.prctl(_PR_SET_PDEATHSIG, sig)
        # The parent may have died between fork and prctl: the child then belongs to
        # init or to a subreaper, so compare with the parent's pid, not with 1.
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)
    return setup


class ProcessEvents(Protocol):
    """What a ManagedProcess tells its supervisor, and what it asks it."""

    halted: bool  # the ordered stop began: nothing restarts any more

    def report_death(self, mp: ManagedProcess, code: int) -> None: ...

    def process_started(self, mp: ManagedProcess) -> None: ...

    def restart_scheduled(self, mp: ManagedProcess, attempt: int, delay_s: float) -> None: ...


@dataclass
class _PendingRestart:
    task: asyncio.Task[None]
    cancelled: asyncio.Event  # set by stop() or start(): the restart must not happen


class ManagedProcess:
    def __init__(self, spec: ProcessSpec, out: TextIO, color: str | None,
                 events: ProcessEvents, backoff: RestartBackoff) -> None:
        self.spec = spec
        self._out = out
        self._prefix = f"{spec.name:<18}| "
        if color:
            self._prefix = f"\x1b[{color}m{self._prefix}\x1b[0m"
        self._events = events
        self._backoff = backoff
        self.proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        # Held while a process is spawned, so that start(), stop() and a restart see
        # each other's result instead of racing (two children of one name, or a
        # restart landing after a stop).
        self._lock = asyncio.Lock()
        self._pending: _PendingRestart | None = None
        self._attempt = 0  # restarts since the process last ran stably
        self.restart_count = 0
        self.started_at: float | None = None  # wall clock of the last start
        self._started_mono = 0.0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def state(self) -> str:
        """running, stopped (on purpose), restarting (died, waiting out its backoff),
        exited (died, with its code) or not started."""
        if self.proc is None:
            return "not started"
        if self.proc.returncode is None:
            return "running"
        if self._stopping:
            return "stopped"
        return "restarting" if self._pending else f"exited {self.proc.returncode}"

    async def start(self) -> None:
        """Start on request (also after a stop): a no-op while it runs, and it replaces
        a restart that is still waiting out its backoff."""
        async with self._lock:
            self._cancel_pending()
            if self.running:
                return
            self._stopping = False
            self._attempt = 0
            await self._spawn()

    async def _spawn(self) -> None:
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        env = {**os.environ, **self.spec.env}
        self.proc = await asyncio.create_subprocess_exec(
            *self.spec.argv, env=env, cwd=self.spec.cwd, user=self.spec.user,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            preexec_fn=_preexec(self.spec.parent_death_signal), limit=1 << 20)
        self._tasks = [asyncio.create_task(self._pump(self.proc)),
                       asyncio.create_task(self._watch(self.proc))]
        self._events.process_started(self)

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
        code = await _exited(proc)
        if self._stopping:
            return
        _end_group(proc.pid)
        self._events.report_death(self, code)
        if self.spec.restart and not self._events.halted and self.proc is proc:
            self._schedule_restart(proc)

    def _schedule_restart(self, dead: asyncio.subprocess.Process) -> None:
        if time.monotonic() - self._started_mono >= self._backoff.stable_after_s:
            self._attempt = 0
        self._attempt += 1
        delay_s = self._backoff.delay_s(self._attempt, random.random())
        self._events.restart_scheduled(self, self._attempt, delay_s)
        cancelled = asyncio.Event()
        task = asyncio.create_task(self._restart_after(dead, delay_s, cancelled))
        self._pending = _PendingRestart(task, cancelled)

    async def _restart_after(self, dead: asyncio.subprocess.Process, delay_s: float,
                             cancelled: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await cancelled.wait()
        async with self._lock:
            if self._pending is not None and self._pending.cancelled is cancelled:
                self._pending = None
            # Stopped, started by hand, or `dfms up` is stopping: all meanwhile.
            if (cancelled.is_set() or self._stopping or self._events.halted
                    or self.proc is not dead):
                return
            self.restart_count += 1
            try:
                await self._spawn()
            except OSError as exc:  # e.g. its binary went away: try again, later
                log.error("restart failed", extra={"proc": self.spec.name, "error": str(exc)})
                self._schedule_restart(dead)

    def _cancel_pending(self) -> asyncio.Task[None] | None:
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        pending.cancelled.set()
        return pending.task

    def _signal_group(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    async def stop(self, sig: int | None = None) -> int | None:
        """Stop on purpose (not reported as a death, not restarted); ``sig`` overrides
        the spec's signal."""
        self._stopping = True
        pending = self._cancel_pending()
        if pending is not None:
            await pending  # at once, unless it is spawning: then that child is stopped too
        async with self._lock:
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


async def _exited(proc: asyncio.subprocess.Process) -> int:
    """The exit code, as soon as the process has exited. ``proc.wait()`` returns only
    once its output pipe is closed too, which a leftover child (a backend of a killed
    postmaster) can hold open for as long as it lives."""
    while proc.returncode is None:  # noqa: ASYNC110 - asyncio has no event for the exit alone
        await asyncio.sleep(EXIT_POLL_S)
    return proc.returncode


def _end_group(pgid: int) -> None:
    """Kill what is left of the group of a leader that died: a worker it forked (a
    Redis save child; PostgreSQL's backends, until they notice the dead postmaster,
    which they do at once) belongs to nobody now and may hold the ports, files or
    shared memory the restarted server needs. Only ours are hit: the kernel gives no
    new process the number while the group has members, and hands numbers out in
    turn, so not again within the moment since the leader was reaped."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class Supervisor:
    """Starts processes in order, restarts the ones that die, and stops them in
    reverse order."""

    def __init__(self, out: TextIO = sys.stdout,
                 on_start: Callable[[ManagedProcess], None] | None = None,
                 backoff: RestartBackoff | None = None) -> None:
        self._out = out
        self._on_start = on_start
        self._backoff = backoff or RestartBackoff()
        self._color = out.isatty()
        self.processes: list[ManagedProcess] = []
        self.deaths: list[tuple[str, int]] = []
        self.died = asyncio.Event()
        self.halted = False

    def announce(self, line: str) -> None:
        """A line of `dfms up` itself on its terminal (not a child's log line)."""
        self._out.write(f"-- {line}\n")
        self._out.flush()

    def report_death(self, mp: ManagedProcess, code: int) -> None:
        self.deaths.append((mp.spec.name, code))
        self.died.set()
        msg = f"!! {mp.spec.name} (pid {mp.pid}) exited unexpectedly with code {code}"
        self._out.write(msg + "\n")
        self._out.flush()
        log.error("process died", extra={"proc": mp.spec.name, "code": code})

    def process_started(self, mp: ManagedProcess) -> None:
        if self._on_start is not None:
            self._on_start(mp)

    def restart_scheduled(self, mp: ManagedProcess, attempt: int, delay_s: float) -> None:
        self._out.write(f"!! restarting {mp.spec.name} in {delay_s:.1f}s (attempt {attempt})\n")
        self._out.flush()

    async def start(self, spec: ProcessSpec) -> ManagedProcess:
        color = _COLORS[len(self.processes) % len(_COLORS)] if self._color else None
        mp = ManagedProcess(spec, self._out, color, self, self._backoff)
        await mp.start()
        self.processes.append(mp)
        return mp

    def get(self, name: str) -> ManagedProcess:
        for mp in self.processes:
            if mp.spec.name == name:
                return mp
        raise KeyError(name)

    async def stop_all(self) -> None:
        # First, so that a process dying while others are being stopped (a server
        # losing its clients, say) is not started again behind our back.
        self.halted = True
        for mp in reversed(self.processes):
            code = await mp.stop()
            log.info("stopped", extra={"proc": mp.spec.name, "code": code})
