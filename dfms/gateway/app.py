"""The gateway application: middlewares, shared resources (cleanup_ctx, typed
AppKeys) and the route modules, each of which exposes ``setup_routes(app)``.

Public API under ``/api/v1``; ops routes (/health, /ready, /metrics) at the root.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio as aioredis
from aiohttp import web

from dfms.auth.tokens import TokenService
from dfms.chunkservice.client import ChunkClient
from dfms.chunkservice.reader import open_reader
from dfms.config import Config
from dfms.gateway import (
    ratelimit,
    readiness,
    routes_admin,
    routes_auth,
    routes_chunks,
    routes_events,
    routes_files,
    routes_folders,
    routes_gc,
    routes_multipart,
    routes_openapi,
    routes_search,
    routes_shares,
    routes_storage,
    routes_trash,
    routes_versions,
    routes_web,
    shedding,
    tracing,
)
from dfms.gateway.context import (
    CHUNKS_KEY,
    CONFIG_KEY,
    PG_KEY,
    READER_KEY,
    REDIS_KEY,
    TOKENS_KEY,
)
from dfms.gateway.middleware import add_request_id, error_middleware, request_id_middleware
from dfms.gateway.protocol import GatewayRunner
from dfms.metadata.db import create_pool
from dfms.runtime.service import Service
from dfms.runtime.telemetry import tracing_active

# Each module owns its paths; every one of them must be in api/openapi.yaml.
ROUTE_MODULES = (routes_auth, routes_multipart, routes_chunks, routes_files, routes_versions,
                 routes_folders, routes_trash, routes_storage, routes_search, routes_shares,
                 routes_admin, routes_gc, routes_openapi, routes_events, routes_web)


async def _postgres_ctx(app: web.Application) -> AsyncIterator[None]:
    # The gateway leaves no session state on its connections: releasing one to the pool
    # need not cost a reset round trip (see create_pool).
    app[PG_KEY] = await create_pool(app[CONFIG_KEY].postgres, session_reset=False)
    yield
    await app[PG_KEY].close()


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG_KEY].redis
    client = aioredis.from_url(cfg.url, socket_timeout=cfg.socket_timeout_s,
                               socket_connect_timeout=cfg.socket_timeout_s)
    app[REDIS_KEY] = client
    yield
    await client.aclose()


async def _chunks_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG_KEY]
    client = ChunkClient(cfg.chunk_client.target,
                         frame_size_bytes=cfg.chunk_service.frame_size_bytes,
                         connect_timeout_s=cfg.chunk_client.connect_timeout_s)
    app[CHUNKS_KEY] = client
    yield
    await client.close()


async def _reader_ctx(app: web.Application) -> AsyncIterator[None]:
    async with open_reader(app[CONFIG_KEY], app[PG_KEY], source="gateway") as reader:
        app[READER_KEY] = reader
        yield


def _tracing_middlewares() -> list[tracing.Middleware]:
    """Only where tracing is on: without it no request pays for a span lookup."""
    return [tracing.request_span_middleware()] if tracing_active() else []


def build_app(config: Config) -> web.Application:
    app = web.Application(
        middlewares=[*_tracing_middlewares(), request_id_middleware, error_middleware,
                     shedding.shedding_middleware, *ratelimit.middlewares(),
                     routes_events.events_middleware],
        client_max_size=config.gateway.max_json_bytes)
    app[CONFIG_KEY] = config
    app.on_response_prepare.append(add_request_id)
    app[TOKENS_KEY] = TokenService(config.auth, Path(config.auth.keys_dir))
    app.cleanup_ctx.append(_postgres_ctx)
    app.cleanup_ctx.append(_redis_ctx)
    app.cleanup_ctx.append(_chunks_ctx)
    app.cleanup_ctx.append(_reader_ctx)  # after the pool it reads the ring with
    shedding.setup(app)
    ratelimit.setup(app)
    for module in ROUTE_MODULES:
        module.setup_routes(app)
    readiness.setup_ops_routes(app)
    return app


class GatewayService(Service):
    name = "gateway"

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self._runner: GatewayRunner | None = None
        self.bound_port: int | None = None

    async def _start(self) -> None:
        gw = self.config.gateway
        # No total request timeout: multi-GiB bodies stream for minutes. Idle limits
        # (keep-alive, body reads that stall) guard the connections instead.
        # GatewayRunner: requests over these limits get the JSON error envelope too.
        self._runner = GatewayRunner(
            build_app(self.config), access_log=None,
            shutdown_timeout=self.config.ops.shutdown_grace_s,
            keepalive_timeout=gw.keepalive_timeout_s,
            max_line_size=gw.max_line_bytes, max_field_size=gw.max_header_bytes,
            max_headers=gw.max_headers, read_bufsize=2**18)
        await self._runner.setup()
        site = web.TCPSite(self._runner, gw.host, gw.port)
        await site.start()
        self.bound_port = self._runner.addresses[0][1]
        self.log.info("listening", extra={"host": gw.host, "port": self.bound_port})

    async def _stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
