"""A background service that works on PostgreSQL through one connection pool.

The pool is either given (shared with the caller, who closes it: tests, and
services that run inside another) or opened on first use and closed by
``close()``, which is also what a one-off ``run_once()`` caller calls.
"""

from __future__ import annotations

import asyncpg

from dfms.config import Config
from dfms.metadata.db import create_pool
from dfms.runtime.ops import ReadyCheck
from dfms.runtime.service import BackgroundService


class PooledService(BackgroundService):
    def __init__(self, config: Config, pool: asyncpg.Pool | None = None) -> None:
        super().__init__()
        self.config = config
        self._pool = pool
        self._own_pool = pool is None

    async def get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await create_pool(self.config.postgres)
        return self._pool

    async def _start(self) -> None:
        await self.get_pool()
        await super()._start()

    async def _stop(self) -> None:
        await super()._stop()
        await self.close()

    async def close(self) -> None:
        """Release what the service holds: ``close_resources()``, then its own pool."""
        await self.close_resources()
        if self._own_pool and self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def close_resources(self) -> None:
        """Subclasses close their clients here (before the pool goes)."""

    def ready_checks(self) -> dict[str, ReadyCheck]:
        async def postgres() -> None:
            pool = await self.get_pool()
            await pool.fetchval("SELECT 1")

        return {"postgres": postgres}
