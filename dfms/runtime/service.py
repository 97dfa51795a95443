"""The service runtime every DFMS process uses.

A ``Service`` has idempotent ``start()``/``stop()`` and readiness checks. A
failed ``start()`` undoes what it did before it re-raises (``_stop()`` runs on
whatever ``_start()`` had set up, so ``_stop()`` must cope with a partial
start), and ``stop()`` after it is a no-op: nothing leaks when, say, a port is
taken.
``run_service`` wires logging, the ops server and SIGINT/SIGTERM handling:
the first signal starts a graceful stop (in-flight work gets
``ops.shutdown_grace_s`` to finish, then is cancelled), a second one exits at
once. ``BackgroundService`` is Swift's daemon shape: ``run_once()`` does one
pass and returns its counters; ``run_forever(interval)`` repeats it, and a
failing pass is logged and counted, never fatal.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import StatusCode
from prometheus_client import Counter, Gauge, Histogram

from dfms.config import Config
from dfms.runtime.logs import get_logger, setup_logging
from dfms.runtime.ops import OpsServer, ReadyCheck
from dfms.runtime.stacks import dump_stacks
from dfms.runtime.tasks import cancel_and_wait
from dfms.runtime.telemetry import Telemetry, setup_tracing, trace_exemplar

PASSES = Counter("dfms_service_passes_total", "Background passes run", ["service", "outcome"])
PASS_SECONDS = Histogram("dfms_service_pass_seconds", "Duration of one background pass",
                         ["service"])
PASS_ITEMS = Counter("dfms_service_pass_items_total", "Items handled by background passes",
                     ["service", "counter"])
_TRACER = trace.get_tracer("dfms.runtime")
UP = Gauge("dfms_service_up", "1 while the service is running", ["service"])


class Service(abc.ABC):
    """A long-running component with an idempotent lifecycle."""

    name: str = "service"
    # Whether start/stop set dfms_service_up{service=name}; off for components that
    # run inside a service (an event consumer) and are not a service of their own.
    reports_up: bool = True

    def __init__(self) -> None:
        self.log = get_logger(self.name)
        self._started = False
        self._lifecycle = asyncio.Lock()

    async def start(self) -> None:
        """Start once; when ``_start()`` fails, undo it (``_stop()``) and re-raise."""
        async with self._lifecycle:
            if self._started:
                return
            try:
                await self._start()
            except BaseException:
                await self._undo_failed_start()
                raise
            self._started = True
            if self.reports_up:
                UP.labels(self.name).set(1)

    async def stop(self) -> None:
        """Stop once; a no-op before ``start()`` and after a failed one."""
        async with self._lifecycle:
            if not self._started:
                return
            self._started = False
            if self.reports_up:
                UP.labels(self.name).set(0)
            await self._stop()

    async def _undo_failed_start(self) -> None:
        """Release what a failed ``_start()`` had set up; the start's error is what
        the caller sees, so a failing cleanup is only logged."""
        try:
            await self._stop()
        except Exception:
            self.log.exception("cleaning up after a failed start failed")

    @abc.abstractmethod
    async def _start(self) -> None: ...

    @abc.abstractmethod
    async def _stop(self) -> None:
        """Release what ``_start()`` set up, also when it got only part of the way."""

    def ready_checks(self) -> Mapping[str, ReadyCheck]:
        return {}

    @property
    def ops_port(self) -> int | None:
        """Port for a separate ops server; None when the service serves ops itself."""
        return None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


@dataclass
class PassStats:
    """Counters of one background pass; each becomes a metric."""

    counters: dict[str, int] = field(default_factory=dict)
    errors: int = 0

    def add(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount


@contextlib.contextmanager
def pass_span(service: str) -> Iterator[trace.Span]:
    """The root span of one pass of ``service``: a trace of its own (empty parent
    context), not part of whatever trace was current when the loop task was created."""
    with _TRACER.start_as_current_span(f"{service} pass", context=Context()) as span:
        yield span


def record_pass(span: trace.Span, stats: PassStats | None) -> None:
    """A pass's counters on its span; None is a pass that failed."""
    if stats is None:
        span.set_status(StatusCode.ERROR, "pass failed")
    elif span.is_recording():
        span.set_attributes({f"dfms.pass.{k}": v for k, v in stats.counters.items()})
        span.set_attribute("dfms.pass.errors", stats.errors)


class BackgroundService(Service):
    """A service whose work is a repeated pass: ``run_once`` / ``run_forever``."""

    interval_s: float = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @abc.abstractmethod
    async def run_once(self) -> PassStats: ...

    async def run_forever(self, interval_s: float) -> None:
        while True:
            await self._timed_pass()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s):
                    await self._wake.wait()

    def trigger(self) -> None:
        """Run the next pass now instead of waiting out the interval."""
        self._wake.set()

    async def scheduled_pass(self) -> PassStats:
        """The pass ``run_forever`` runs; a service whose scheduled passes differ from a
        direct ``run_once()`` (e.g. a full pass only now and then) overrides it."""
        return await self.run_once()

    async def _timed_pass(self) -> None:
        with pass_span(self.name) as span:
            record_pass(span, await self._measured_pass())

    async def _measured_pass(self) -> PassStats | None:
        """One pass with its metrics and log line; None when it failed."""
        start = time.perf_counter()
        try:
            stats = await self.scheduled_pass()
        except asyncio.CancelledError:
            raise
        except Exception:
            PASSES.labels(self.name, "error").inc()
            self.log.exception("pass failed")
            return None
        elapsed = time.perf_counter() - start
        PASS_SECONDS.labels(self.name).observe(elapsed, trace_exemplar())
        PASSES.labels(self.name, "ok" if stats.errors == 0 else "partial").inc()
        for counter, amount in stats.counters.items():
            PASS_ITEMS.labels(self.name, counter).inc(amount)
        busy = stats.errors or any(stats.counters.values())
        # Idle passes (every second for the relay) would drown the log at INFO.
        self.log.log(logging.INFO if busy else logging.DEBUG, "pass done",
                     extra={"seconds": round(elapsed, 3), **stats.counters,
                            "errors": stats.errors})
        return stats

    async def _start(self) -> None:
        self._loop_task = asyncio.create_task(self.run_forever(self.interval_s),
                                              name=f"{self.name}-loop")

    async def _stop(self) -> None:
        task, self._loop_task = self._loop_task, None
        await cancel_and_wait(task)


# After a stop begins, the process exits within the grace period plus this, whatever
# hangs (a client library retrying a dead broker, a task that ignores cancellation):
# an orphan that keeps its port and joins the next cluster is worse than a cut-short stop.
HARD_EXIT_MARGIN_S = 5.0
EXIT_HUNG = 70


class _ExitWatchdog:
    """A daemon timer, started once, that ends the process with ``os._exit``."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._timer: threading.Timer | None = None

    def arm(self, after_s: float) -> None:
        if self._timer is None:
            self._timer = threading.Timer(after_s, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        with contextlib.suppress(Exception):  # the log's pipe may be gone with our parent
            get_logger(self._name).error("stop did not finish in time; exiting now")
        os._exit(EXIT_HUNG)


async def run_service(service: Service, config: Config) -> int:
    """Run ``service`` until SIGINT/SIGTERM; returns the process exit code."""
    log = get_logger(service.name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    watchdog = _ExitWatchdog(service.name)
    deadline_s = config.ops.shutdown_grace_s + HARD_EXIT_MARGIN_S
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        watchdog.arm(deadline_s)
        if signals > 1:
            log.warning("second signal: exiting now")
            os._exit(130)
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGUSR2, dump_stacks)  # where is it stuck? see stacks.py
    ops: OpsServer | None = None
    # Before start(): the instrumentations patch the classes the service builds from.
    telemetry = setup_tracing(service.name, config.telemetry)
    try:
        await service.start()
        if service.ops_port is not None:
            ops = OpsServer(service.name, config.ops.host, service.ops_port,
                            service.ready_checks())
            await ops.start()
            log.info("ops server listening", extra={"port": ops.bound_port})
        log.info("started")
        await stop.wait()
    finally:
        watchdog.arm(deadline_s)
        try:
            async with asyncio.timeout(config.ops.shutdown_grace_s):
                await service.stop()
        except TimeoutError:
            log.warning("in-flight work did not finish within the grace period; cancelled")
        if ops is not None:
            await ops.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await flush_traces(telemetry, log)
    log.info("stopped")
    return 0


# Spans still in the batch are sent on stop; an unreachable collector must not hold the
# exit past this (the exporter's own timeout is 10 s).
TRACE_FLUSH_S = 3.0


async def flush_traces(telemetry: Telemetry | None, log: logging.Logger) -> None:
    if telemetry is None:
        return
    try:
        async with asyncio.timeout(TRACE_FLUSH_S):
            await asyncio.to_thread(telemetry.shutdown)
    except TimeoutError:
        log.warning("traces not flushed within the time allowed; dropped")


def main_for(service: Service, config: Config) -> int:
    setup_logging(config.logging.level, config.logging.format)
    return asyncio.run(run_service(service, config))
