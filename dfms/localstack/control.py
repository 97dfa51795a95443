"""A loopback control endpoint of `dfms up`: stop, kill and start its processes.

Fault drills (and the fault-injection tests) use it to take a storage node
down and bring it back while the rest of the cluster keeps running. Calls
need the token written to cluster.json (mode 0600).
"""

from __future__ import annotations

import hmac
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from dfms.errors import StackError
from dfms.localstack.servers import wait_ready
from dfms.localstack.supervisor import ManagedProcess, Supervisor

Probe = Callable[[], Awaitable[None]]

TOKEN_HEADER = "X-DFMS-Control-Token"


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of every process in the group (a server and its workers, e.g.
    PostgreSQL's backends; shared pages are counted once per process)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # field 5 of stat: the process group
                total += int((entry / "statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue  # it exited while we looked
    return total


def describe(mp: ManagedProcess, endpoint: str | None) -> dict[str, object]:
    pid = mp.pid if mp.running else None
    return {"pid": mp.pid, "running": mp.running, "state": mp.state, "endpoint": endpoint,
            "rss_bytes": group_rss_bytes(pid) if pid else None,
            "uptime_s": round(time.time() - mp.started_at, 1)
            if pid and mp.started_at else None,
            "restarts": mp.restart_count}


def build_control_app(supervisor: Supervisor, token: str, probes: Mapping[str, Probe],
                      endpoints: Mapping[str, str]) -> web.Application:
    """``probes`` are the readiness checks `dfms up` used; start waits on them.
    ``endpoints`` name where each process listens, for the listing."""

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return web.json_response({"error": "bad or missing control token"}, status=401)
        return await handler(request)

    def find(request: web.Request) -> web.Response | None:
        try:
            supervisor.get(request.match_info["name"])
        except KeyError:
            return web.json_response({"error": "no such process"}, status=404)
        return None

    async def listing(_: web.Request) -> web.Response:
        return web.json_response({mp.spec.name: describe(mp, endpoints.get(mp.spec.name))
                                  for mp in supervisor.processes})

    async def stop(request: web.Request) -> web.Response:
        return await _act(request, kill=False)

    async def kill(request: web.Request) -> web.Response:
        return await _act(request, kill=True)

    async def _act(request: web.Request, *, kill: bool) -> web.Response:
        missing = find(request)
        if missing is not None:
            return missing
        mp = supervisor.get(request.match_info["name"])
        code = await mp.stop(signal.SIGKILL if kill else None)
        supervisor.announce(f"{mp.spec.name} {'killed' if kill else 'stopped'} through "
                            f"`dfms cluster` (exit code {code})")
        return web.json_response({"name": mp.spec.name, "exit_code": code})

    async def start(request: web.Request) -> web.Response:
        missing = find(request)
        if missing is not None:
            return missing
        mp = supervisor.get(request.match_info["name"])
        if not mp.running:
            await mp.start()
        probe = probes.get(mp.spec.name)
        if probe is not None:
            try:
                await wait_ready(mp.spec.name, probe, lambda: mp.running)
            except StackError as exc:  # it died or never answered: say so, as JSON
                return web.json_response({"error": str(exc)}, status=503)
        supervisor.announce(f"{mp.spec.name} started through `dfms cluster` (pid {mp.pid})")
        return web.json_response({"name": mp.spec.name, "pid": mp.pid})

    app = web.Application(middlewares=[auth])
    app.router.add_get("/processes", listing)
    app.router.add_post("/processes/{name}/stop", stop)
    app.router.add_post("/processes/{name}/kill", kill)
    app.router.add_post("/processes/{name}/start", start)
    return app
