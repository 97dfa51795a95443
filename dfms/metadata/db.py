"""PostgreSQL access: pools and one-off connections built from the config."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from dfms.config import PostgresConfig
from dfms.errors import DependencyUnavailable

# A connection of its own (asyncpg.connect) or one borrowed from a pool (pool.acquire()):
# the same API, but a pool's is a proxy, not an asyncpg.Connection.
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy


async def connect(cfg: PostgresConfig) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(cfg.dsn, timeout=cfg.connect_timeout_s,
                                     command_timeout=cfg.command_timeout_s)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DependencyUnavailable(f"PostgreSQL unreachable: {exc}") from exc


async def create_pool(cfg: PostgresConfig) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(cfg.dsn, min_size=cfg.pool_min_size,
                                         max_size=cfg.pool_max_size,
                                         timeout=cfg.connect_timeout_s,
                                         command_timeout=cfg.command_timeout_s)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DependencyUnavailable(f"PostgreSQL unreachable: {exc}") from exc
    assert pool is not None
    return pool
