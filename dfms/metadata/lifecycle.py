"""Versions, quotas and usage: the queries behind the file lifecycle."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from dfms.config import LifecycleConfig
from dfms.metadata import upload_sessions
from dfms.metadata.db import Connection
from dfms.metadata.records import from_record

Conn = Connection | asyncpg.Pool


async def lock_user(conn: Connection, owner: uuid.UUID) -> None:
    """Serializes one user's commits, so quota checks cannot race each other."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                       f"quota:{owner}")


async def used_bytes(conn: Conn, owner: uuid.UUID) -> int:
    """Logical bytes: every version of every file, trashed ones included, plus the
    parts of open multipart uploads and the chunks sent in open upload sessions and
    not committed yet (``dfms.metadata.upload_sessions``)."""
    return int(await conn.fetchval(
        f"""
        SELECT coalesce((SELECT sum(m.size) FROM files f
                         JOIN file_versions v ON v.file_id = f.id
                         JOIN manifests m ON m.id = v.manifest_id
                         WHERE f.owner_id = $1), 0)
             + coalesce((SELECT sum(p.size) FROM multipart_parts p
                         JOIN multipart_uploads u ON u.id = p.upload_id
                         WHERE u.owner_id = $1 AND u.state = 'open'), 0)
             + ({upload_sessions.PENDING_BYTES})
        """, owner))


async def over_quota(conn: Conn, owner: uuid.UUID, cfg: LifecycleConfig) -> int | None:
    """The owner's quota when their usage exceeds it now, else None."""
    quota = await quota_bytes(conn, owner, cfg)
    return quota if quota is not None and await used_bytes(conn, owner) > quota else None


async def quota_bytes(conn: Conn, owner: uuid.UUID, cfg: LifecycleConfig) -> int | None:
    """The user's quota; None is unlimited."""
    explicit = await conn.fetchval("SELECT quota_bytes FROM users WHERE id = $1", owner)
    quota = cfg.default_quota_bytes if explicit is None else int(explicit)
    return None if quota == 0 else quota


async def room_left(conn: Conn, owner: uuid.UUID, cfg: LifecycleConfig) -> int | None:
    quota = await quota_bytes(conn, owner, cfg)
    return None if quota is None else max(0, quota - await used_bytes(conn, owner))


@dataclass(frozen=True, slots=True)
class Usage:
    used_bytes: int
    quota_bytes: int | None
    file_count: int
    version_count: int
    unique_bytes: int

    @property
    def dedup_saved_bytes(self) -> int:
        return max(0, self.used_bytes - self.unique_bytes)


async def usage(conn: Conn, owner: uuid.UUID, cfg: LifecycleConfig) -> Usage:
    row = await conn.fetchrow(
        """
        SELECT (SELECT count(*) FROM files WHERE owner_id = $1 AND deleted_at IS NULL)
                   AS files,
               (SELECT count(*) FROM file_versions v JOIN files f ON f.id = v.file_id
                 WHERE f.owner_id = $1) AS versions,
               (SELECT coalesce(sum(size), 0) FROM (
                    SELECT DISTINCT e.chunk_sha256, e.size FROM files f
                    JOIN file_versions v ON v.file_id = f.id
                    JOIN manifest_entries e ON e.manifest_id = v.manifest_id
                    WHERE f.owner_id = $1) u) AS unique_bytes
        """, owner)
    assert row is not None  # an aggregate query gives one row
    return Usage(await used_bytes(conn, owner), await quota_bytes(conn, owner, cfg),
                 int(row["files"]), int(row["versions"]), int(row["unique_bytes"]))


# --- versions ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class VersionRow:
    version: int
    manifest_id: uuid.UUID
    size: int
    sha256: bytes
    mime_type: str
    chunk_count: int
    created_at: datetime


async def list_versions(conn: Conn, file_id: uuid.UUID) -> list[VersionRow]:
    rows = await conn.fetch(
        "SELECT v.version, v.manifest_id, m.size, m.sha256, v.mime_type, m.chunk_count, "
        "v.created_at FROM file_versions v JOIN manifests m ON m.id = v.manifest_id "
        "WHERE v.file_id = $1 ORDER BY v.version DESC", file_id)
    return [from_record(VersionRow, r, sha256=bytes(r["sha256"])) for r in rows]


async def add_version(conn: Connection, file_id: uuid.UUID, manifest_id: uuid.UUID,
                      mime_type: str) -> int:
    """Append a version and make it current; the caller holds the file's row lock."""
    version: int = await conn.fetchval(
        "SELECT coalesce(max(version), 0) + 1 FROM file_versions WHERE file_id = $1", file_id)
    await conn.execute(
        "INSERT INTO file_versions (file_id, version, manifest_id, mime_type) "
        "VALUES ($1, $2, $3, $4)", file_id, version, manifest_id, mime_type)
    await conn.execute("UPDATE files SET current_version = $2, updated_at = now() "
                       "WHERE id = $1", file_id, version)
    return version


async def delete_version(conn: Connection, file_id: uuid.UUID, version: int) -> bool:
    """Remove one version; deleting the current one promotes the newest remaining."""
    gone = await conn.fetchval("DELETE FROM file_versions WHERE file_id = $1 AND version = $2 "
                               "RETURNING 1", file_id, version)
    if gone is None:
        return False
    await conn.execute(
        "UPDATE files SET current_version = (SELECT max(version) FROM file_versions "
        "WHERE file_id = $1), updated_at = now() WHERE id = $1 AND current_version = $2",
        file_id, version)
    return True


async def prune_versions(conn: Connection, default: LifecycleConfig) -> int:
    """Delete versions past retention (per-user overrides first). A version survives
    when it is current, among the newest ``keep_versions`` (when > 0), or younger
    than ``keep_versions_days`` (when > 0); with both 0 nothing is pruned. Their
    manifests are left for GC, which reclaims chunks nothing references. Returns the
    number of versions deleted."""
    return int(await conn.fetchval(
        """
        WITH ranked AS (
            SELECT v.file_id, v.version, v.created_at, f.current_version,
                   coalesce(u.keep_versions, $1) AS keep_n,
                   coalesce(u.keep_versions_days, $2) AS keep_days,
                   row_number() OVER (PARTITION BY v.file_id ORDER BY v.version DESC) AS rank
            FROM file_versions v JOIN files f ON f.id = v.file_id
            JOIN users u ON u.id = f.owner_id
        ), gone AS (
            DELETE FROM file_versions fv USING ranked r
            WHERE fv.file_id = r.file_id AND fv.version = r.version
              AND r.version <> r.current_version
              AND (r.keep_n > 0 OR r.keep_days > 0)
              AND NOT (r.keep_n > 0 AND r.rank <= r.keep_n)
              AND NOT (r.keep_days > 0
                       AND r.created_at >= now() - make_interval(days => r.keep_days))
            RETURNING 1
        )
        SELECT count(*) FROM gone
        """, default.keep_versions, default.keep_versions_days))
