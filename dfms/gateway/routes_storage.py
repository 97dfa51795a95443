"""Storage usage of the caller: logical bytes against the quota."""

from __future__ import annotations

from aiohttp import web

from dfms.gateway.context import API_PREFIX, CONFIG_KEY, PG_KEY
from dfms.gateway.security import authenticate
from dfms.metadata import lifecycle as lc


async def usage(request: web.Request) -> web.Response:
    user = await authenticate(request)
    u = await lc.usage(request.app[PG_KEY], user.id, request.app[CONFIG_KEY].lifecycle)
    return web.json_response({"used_bytes": u.used_bytes, "quota_bytes": u.quota_bytes,
                              "file_count": u.file_count, "version_count": u.version_count,
                              "dedup_saved_bytes": u.dedup_saved_bytes})


def setup_routes(app: web.Application) -> None:
    app.router.add_get(f"{API_PREFIX}/storage/usage", usage)
