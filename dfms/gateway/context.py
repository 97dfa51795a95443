"""Typed keys of the gateway application's shared resources."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from dfms.auth.tokens import TokenService
from dfms.chunkservice.client import ChunkClient
from dfms.config import Config

CONFIG_KEY = web.AppKey("config", Config)
PG_KEY = web.AppKey("pg", asyncpg.Pool)
REDIS_KEY = web.AppKey("redis", aioredis.Redis)
CHUNKS_KEY = web.AppKey("chunks", ChunkClient)
TOKENS_KEY = web.AppKey("tokens", TokenService)

API_PREFIX = "/api/v1"
