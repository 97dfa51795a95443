"""Administration: run one garbage-collection pass now (``POST /api/v1/admin/gc/run``).

The pass runs in this process on the application's PostgreSQL pool (which the
worker therefore does not close) and takes the collectors' advisory lock like
the ``gc-worker`` service does: when another collector holds it, the answer is
409 ``gc_running`` and nothing was done. ``?dry_run=true`` reports what a pass
would do, with the same counters, and changes nothing.
"""

from __future__ import annotations

import time

from aiohttp import web

from dfms.gateway.context import API_PREFIX, CONFIG_KEY, PG_KEY
from dfms.gateway.errors import conflict
from dfms.gateway.http import bool_param
from dfms.gateway.security import require_admin
from dfms.gc.worker import SKIPPED, GcWorker
from dfms.runtime.logs import get_logger

log = get_logger("gateway.gc")

async def run_gc(request: web.Request) -> web.Response:
    admin = await require_admin(request)
    dry_run = bool_param(request, "dry_run")
    worker = GcWorker(request.app[CONFIG_KEY], pool=request.app[PG_KEY], dry_run=dry_run)
    start = time.perf_counter()
    stats = await worker.run_once()
    elapsed = round(time.perf_counter() - start, 3)
    if SKIPPED in stats.counters:
        raise conflict("gc_running", "another garbage collector is running a pass; "
                       "try again when it has finished")
    log.info("gc pass run by admin", extra={"admin": str(admin.id), "dry_run": dry_run,
                                            "seconds": elapsed, "errors": stats.errors,
                                            **stats.counters})
    return web.json_response({"dry_run": dry_run, "seconds": elapsed,
                              "errors": stats.errors, "counters": stats.counters})


def setup_routes(app: web.Application) -> None:
    app.router.add_post(f"{API_PREFIX}/admin/gc/run", run_gc)
