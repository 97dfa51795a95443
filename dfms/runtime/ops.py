"""The ops HTTP surface every DFMS process serves: /health, /ready, /metrics.

``/health`` answers while the process is alive. ``/ready`` runs every
registered readiness check with a timeout and answers 503 with per-dependency
detail when any fails. ``/metrics`` is the prometheus-client registry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

ReadyCheck = Callable[[], Awaitable[object]]

READY_CHECK_TIMEOUT_S = 3.0


async def _run_check(check: ReadyCheck) -> dict[str, object]:
    start = time.perf_counter()
    try:
        async with asyncio.timeout(READY_CHECK_TIMEOUT_S):
            await check()
    except Exception as exc:  # any failure means "not ready"; the detail says why
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"ok": True, "latency_ms": round((time.perf_counter() - start) * 1000, 1)}


async def readiness(checks: Mapping[str, ReadyCheck]) -> tuple[bool, dict[str, object]]:
    names = list(checks)
    results = await asyncio.gather(*(_run_check(checks[n]) for n in names))
    detail = dict(zip(names, results, strict=True))
    return all(r["ok"] for r in results), detail


def add_ops_routes(app: web.Application, service: str, checks: Mapping[str, ReadyCheck],
                   registry: CollectorRegistry = REGISTRY) -> None:
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": service})

    async def ready(_: web.Request) -> web.Response:
        ok, detail = await readiness(checks)
        body = {"status": "ready" if ok else "not_ready", "service": service,
                "dependencies": detail}
        return web.json_response(body, status=200 if ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
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
