"""The gateway application: shared resources through cleanup_ctx and typed AppKeys.

The public API (``/api/v1``) is added route module by route module; the ops
routes (/health, /ready, /metrics) are served on the gateway's own port.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from dfms.config import Config
from dfms.metadata.db import create_pool
from dfms.runtime.ops import add_ops_routes
from dfms.runtime.service import Service

CONFIG_KEY = web.AppKey("config", Config)
PG_KEY = web.AppKey("pg", asyncpg.Pool)
REDIS_KEY = web.AppKey("redis", aioredis.Redis)


async def _postgres_ctx(app: web.Application) -> AsyncIterator[None]:
    app[PG_KEY] = await create_pool(app[CONFIG_KEY].postgres)
    yield
    await app[PG_KEY].close()


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG_KEY].redis
    client = aioredis.from_url(cfg.url, socket_timeout=cfg.socket_timeout_s,
                               socket_connect_timeout=cfg.socket_timeout_s)
    app[REDIS_KEY] = client
    yield
    await client.aclose()


def build_app(config: Config) -> web.Application:
    app = web.Application()
    app[CONFIG_KEY] = config
    app.cleanup_ctx.append(_postgres_ctx)
    app.cleanup_ctx.append(_redis_ctx)

    async def check_postgres() -> None:
        async with app[PG_KEY].acquire() as conn:
            await conn.fetchval("SELECT 1")

    async def check_redis() -> None:
        await app[REDIS_KEY].ping()

    add_ops_routes(app, "gateway", {"postgres": check_postgres, "redis": check_redis})
    return app


class GatewayService(Service):
    name = "gateway"

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    async def _start(self) -> None:
        # No fixed total request timeout: multi-GiB bodies stream for minutes.
        self._runner = web.AppRunner(build_app(self.config), access_log=None,
                                     shutdown_timeout=self.config.ops.shutdown_grace_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.gateway.host, self.config.gateway.port)
        await site.start()
        self.bound_port = self._runner.addresses[0][1]
        self.log.info("listening", extra={"host": self.config.gateway.host,
                                          "port": self.bound_port})

    async def _stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
