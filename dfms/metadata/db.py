"""PostgreSQL access: pools and one-off connections built from the config."""

from __future__ import annotations

from types import TracebackType
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from dfms.config import PostgresConfig
from dfms.errors import MetadataUnavailable

# A connection of its own (asyncpg.connect) or one borrowed from a pool (pool.acquire()):
# the same API, but a pool's is a proxy, not an asyncpg.Connection.
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy


async def connect(cfg: PostgresConfig) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(cfg.dsn, timeout=cfg.connect_timeout_s,
                                     command_timeout=cfg.command_timeout_s)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise MetadataUnavailable(f"PostgreSQL unreachable: {exc}") from exc


async def _transaction_state_only(conn: asyncpg.Connection) -> None:
    """A pool ``reset`` that sends nothing: asyncpg has already rolled back any open
    transaction (``Connection._reset``) before it calls this. See ``create_pool``."""


async def create_pool(cfg: PostgresConfig, *, session_reset: bool = True) -> asyncpg.Pool:
    """A pool of ``cfg``'s size and timeouts.

    ``session_reset=False`` skips asyncpg's reset statement on every release (advisory
    unlock, CLOSE ALL, UNLISTEN, RESET ALL: a whole round trip, as many as the queries a
    small request makes). Only for code that leaves no session state on a pooled
    connection, as the gateway does: its settings are SET LOCAL / set_config(..., true),
    its advisory locks transaction-scoped, it never LISTENs nor keeps a cursor outside a
    transaction (tests/unit/test_db_session_state.py checks the sources for them). An
    open transaction is still rolled back on release either way."""
    reset = None if session_reset else _transaction_state_only
    try:
        pool = await asyncpg.create_pool(cfg.dsn, min_size=cfg.pool_min_size,
                                         max_size=cfg.pool_max_size,
                                         timeout=cfg.connect_timeout_s,
                                         command_timeout=cfg.command_timeout_s, reset=reset)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise MetadataUnavailable(f"PostgreSQL unreachable: {exc}") from exc
    assert pool is not None
    return pool


# PostgreSQL's own "not now" answers: the connection failed or broke (class 08), the
# server is shutting down, starting up or cancelled the statement (57), or it is out of
# connections or memory (53). And asyncpg's protocol out of step: a server that dies
# sends FATAL to its idle connections, which asyncpg takes as a protocol error, so the
# next statement on such a pooled connection, before the socket's close is seen, fails
# with "another operation (2) is in progress". Nothing a request sends causes it; a
# retry gets a fresh connection (the pool terminates one whose reset fails).
_OUTAGE_TYPES = (asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError,
                 asyncpg.exceptions.InsufficientResourcesError,
                 asyncpg.exceptions.InternalClientError)
# Errors that mean an outage only when asyncpg raised them (a refused or reset socket, a
# command_timeout); elsewhere they may be anything.
_OUTAGE_IF_FROM_ASYNCPG = (OSError, TimeoutError)


def metadata_outage(exc: BaseException) -> MetadataUnavailable | None:
    """``exc`` as a MetadataUnavailable if it says PostgreSQL is away, else None.

    For the boundaries (the HTTP edge, the chunk service's gRPC edge): handlers let
    asyncpg's errors through, and only the edge decides they are an outage.
    """
    if isinstance(exc, MetadataUnavailable):
        return exc
    if not any(_is_outage(e) for e in _chain(exc)):
        return None
    found = MetadataUnavailable(f"PostgreSQL unavailable: {type(exc).__name__}: {exc}")
    found.__cause__ = exc
    return found


def _is_outage(exc: BaseException) -> bool:
    return isinstance(exc, _OUTAGE_TYPES) or (
        isinstance(exc, _OUTAGE_IF_FROM_ASYNCPG) and _raised_in_asyncpg(exc.__traceback__))


def _chain(exc: BaseException, limit: int = 5) -> list[BaseException]:
    """``exc`` and what it was raised from or while handling: a pool that releases a
    connection broken mid-query fails again (an InternalClientError about the
    protocol's state) while the ConnectionDoesNotExistError is being handled."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < limit:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _raised_in_asyncpg(tb: TracebackType | None) -> bool:
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("asyncpg."):
            return True
        tb = tb.tb_next
    return False
