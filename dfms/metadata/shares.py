"""Share links: the queries (asyncpg, caller's connection or pool).

A link's state is computed by PostgreSQL against its own clock (``now()``), so
every gateway agrees on when a link expires. Precedence when several apply:
revoked, then expired, then exhausted.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from dfms.metadata.db import Connection
from dfms.metadata.records import from_record

ACTIVE, EXPIRED, REVOKED, EXHAUSTED = "active", "expired", "revoked", "exhausted"
STATES = (ACTIVE, EXPIRED, REVOKED, EXHAUSTED)

_STATE = """
    CASE WHEN s.revoked_at IS NOT NULL THEN 'revoked'
         WHEN s.expires_at <= now() THEN 'expired'
         WHEN s.max_downloads IS NOT NULL AND s.download_count >= s.max_downloads
              THEN 'exhausted'
         ELSE 'active' END
"""
_COLUMNS = f"""
    s.id, s.file_id, s.owner_id, s.created_at, s.expires_at, s.max_downloads,
    s.download_count, s.password_hash, s.revoked_at, {_STATE} AS state,
    f.name AS file_name, f.deleted_at IS NULL AND u.is_active AS file_available
"""
_FROM = """
    FROM share_links s
    JOIN files f ON f.id = s.file_id
    JOIN users u ON u.id = s.owner_id
"""


@dataclass(frozen=True, slots=True)
class ShareRow:
    id: uuid.UUID
    file_id: uuid.UUID
    owner_id: uuid.UUID
    created_at: datetime
    expires_at: datetime
    max_downloads: int | None
    download_count: int
    password_hash: str | None
    revoked_at: datetime | None
    state: str
    file_name: str
    # The file is live (not in the trash) and its owner's account is active.
    file_available: bool

    @classmethod
    def of(cls, row: asyncpg.Record) -> ShareRow:
        return from_record(cls, row, file_available=bool(row["file_available"]))

    @property
    def has_password(self) -> bool:
        return self.password_hash is not None


async def create(conn: Connection | asyncpg.Pool, *, share_id: uuid.UUID,
                 token_hash: bytes, file_id: uuid.UUID, owner_id: uuid.UUID,
                 expires_in_s: int, max_downloads: int | None,
                 password_hash: str | None) -> ShareRow:
    row = await conn.fetchrow(
        f"""
        WITH s AS (
            INSERT INTO share_links (id, token_hash, file_id, owner_id, expires_at,
                                     max_downloads, password_hash)
            VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), $6, $7)
            RETURNING *
        )
        SELECT {_COLUMNS} FROM s JOIN files f ON f.id = s.file_id
        JOIN users u ON u.id = s.owner_id
        """, share_id, token_hash, file_id, owner_id, float(expires_in_s), max_downloads,
        password_hash)
    assert row is not None  # INSERT ... RETURNING gives one row
    return ShareRow.of(row)


async def get_by_token_hash(conn: Connection | asyncpg.Pool,
                            token_hash: bytes) -> ShareRow | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} {_FROM} WHERE s.token_hash = $1", token_hash)
    return ShareRow.of(row) if row else None


async def get_owned(conn: Connection | asyncpg.Pool, owner: uuid.UUID, *,
                    share_id: uuid.UUID | None = None,
                    token_hash: bytes | None = None) -> ShareRow | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} {_FROM} WHERE s.owner_id = $1 "
        "AND (s.id = $2 OR s.token_hash = $3)", owner, share_id, token_hash)
    return ShareRow.of(row) if row else None


async def reserve_download(conn: Connection | asyncpg.Pool,
                           share_id: uuid.UUID) -> int | None:
    """Count one download if the link still allows it; the new count, or None.

    One statement: concurrent reservations of the last allowed download serialize
    on the row lock and the loser re-checks the condition, so exactly one wins.
    """
    count: int | None = await conn.fetchval(
        """
        UPDATE share_links SET download_count = download_count + 1
        WHERE id = $1 AND revoked_at IS NULL AND expires_at > now()
          AND (max_downloads IS NULL OR download_count < max_downloads)
        RETURNING download_count
        """, share_id)
    return count


async def release_download(conn: Connection | asyncpg.Pool,
                           share_id: uuid.UUID) -> None:
    """Give back a reservation whose response sent no content."""
    await conn.execute(
        "UPDATE share_links SET download_count = download_count - 1 "
        "WHERE id = $1 AND download_count > 0", share_id)


async def list_owned(conn: Connection | asyncpg.Pool, owner: uuid.UUID, *,
                     limit: int, offset: int,
                     file_id: uuid.UUID | None = None) -> tuple[list[ShareRow], int]:
    """The owner's links, newest first, and how many there are in all."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS}, count(*) OVER () AS total {_FROM} "
        "WHERE s.owner_id = $1 AND ($2::uuid IS NULL OR s.file_id = $2) "
        "ORDER BY s.created_at DESC, s.id LIMIT $3 OFFSET $4",
        owner, file_id, limit, offset)
    if rows:
        return [ShareRow.of(r) for r in rows], int(rows[0]["total"])
    total = await conn.fetchval(
        "SELECT count(*) FROM share_links WHERE owner_id = $1 "
        "AND ($2::uuid IS NULL OR file_id = $2)", owner, file_id)
    return [], int(total)


async def revoke(conn: Connection | asyncpg.Pool, owner: uuid.UUID,
                 share_id: uuid.UUID) -> bool:
    """Revoke one of the owner's links (again: a no-op); False when it is not theirs."""
    done = await conn.fetchval(
        "UPDATE share_links SET revoked_at = COALESCE(revoked_at, now()) "
        "WHERE id = $1 AND owner_id = $2 RETURNING true", share_id, owner)
    return bool(done)
