"""The ops HTTP surface every DFMS process serves: /health, /ready, /metrics.

``/health`` answers while the process is alive. ``/ready`` runs every
registered readiness check with a timeout and answers 503 with per-dependency
detail when any fails. A check that raises ``Degraded`` leaves the process ready
(200) with status "degraded": it serves part of its work, and taking it out of the
load balancer would stop that part too. ``/metrics`` is the prometheus-client
registry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

# A check answers None, or a mapping of detail to show with its result.
ReadyCheck = Callable[[], Awaitable[object]]
CheckResult = dict[str, object]
# Fields a service adds to its /ready body, computed from the checks' results.
ReadySummary = Callable[[Mapping[str, CheckResult]], Mapping[str, object]]

READY_CHECK_TIMEOUT_S = 3.0
READY, DEGRADED, NOT_READY = "ready", "degraded", "not_ready"


class Degraded(Exception):
    """Raised by a readiness check whose dependency answers but can do only part of
    its work (the gateway's chunk service without a write quorum: reads, no writes)."""

    def __init__(self, message: str, detail: Mapping[str, object] | None = None) -> None:
        super().__init__(message)
        self.detail = dict(detail or {})


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


async def _run_check(check: ReadyCheck) -> CheckResult:
    start = time.perf_counter()
    try:
        async with asyncio.timeout(READY_CHECK_TIMEOUT_S):
            result = await check()
    except Degraded as exc:
        return {"ok": True, "latency_ms": _ms_since(start), "degraded": True,
                "detail": str(exc), **exc.detail}
    except Exception as exc:  # any failure means "not ready"; the detail says why
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    extra = dict(result) if isinstance(result, Mapping) else {}
    return {"ok": True, "latency_ms": _ms_since(start), **extra}


async def readiness(checks: Mapping[str, ReadyCheck]) -> tuple[str, dict[str, CheckResult]]:
    """READY, DEGRADED (every check answered, some only in part) or NOT_READY; and the
    result of each check."""
    names = list(checks)
    results = await asyncio.gather(*(_run_check(checks[n]) for n in names))
    detail = dict(zip(names, results, strict=True))
    if not all(r["ok"] for r in results):
        return NOT_READY, detail
    return (DEGRADED if any(r.get("degraded") for r in results) else READY), detail


def add_ops_routes(app: web.Application, service: str, checks: Mapping[str, ReadyCheck],
                   registry: CollectorRegistry = REGISTRY, *,
                   summary: ReadySummary | None = None) -> None:
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": service})

    async def ready(_: web.Request) -> web.Response:
        status, detail = await readiness(checks)
        extra = summary(detail) if summary is not None else {}
        body = {"status": status, "service": service, **extra, "dependencies": detail}
        # Degraded is still ready: the process serves what it can (docs/operations.md).
        return web.json_response(body, status=503 if status == NOT_READY else 200)

    async def metrics(request: web.Request) -> web.Response:
        # OpenMetrics when the scraper asks for it (Prometheus does): only that format
        # carries the exemplars (trace ids) of the latency histograms.
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        resp = web.Response(body=encoder(registry))
        resp.headers["Content-Type"] = content_type
        return resp

    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)


class OpsServer:
    """A small aiohttp server for the ops routes of a non-HTTP service."""

    def __init__(self, service: str, host: str, port: int,
                 checks: Mapping[str, ReadyCheck]) -> None:
        self._app = web.Application()
        add_ops_routes(self._app, service, checks)
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self.bound_port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        await runner.cleanup()
