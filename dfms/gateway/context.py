"""Typed keys of the gateway application's shared resources, and path helpers."""

from __future__ import annotations

import re

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from dfms.auth.tokens import TokenService
from dfms.chunkservice.client import ChunkClient
from dfms.chunkservice.reader import ChunkReader
from dfms.config import Config

CONFIG_KEY = web.AppKey("config", Config)
PG_KEY = web.AppKey("pg", asyncpg.Pool)
REDIS_KEY = web.AppKey("redis", aioredis.Redis)
CHUNKS_KEY = web.AppKey("chunks", ChunkClient)  # writes, and what needs the chunk service
READER_KEY = web.AppKey("reader", ChunkReader)  # downloads, straight from the nodes
TOKENS_KEY = web.AppKey("tokens", TokenService)

API_PREFIX = "/api/v1"


def path_param(name: str, *, besides: str | tuple[str, ...]) -> str:
    """A path parameter ``{name}`` that never takes the literal segment(s) ``besides``.

    A sibling route owns that segment (``/files/upload`` is the upload, not a file
    whose id is "upload"): without the exclusion, a method the sibling does not serve
    (``GET /files/upload``) would reach the parameter's handler and answer 404, and
    ``Allow`` on a 405 would list the parameter route's methods too.
    """
    words = (besides,) if isinstance(besides, str) else besides
    literal = "|".join(re.escape(w) for w in words)
    return f"{{{name}:(?!(?:{literal})$)[^{{}}/]+}}"
