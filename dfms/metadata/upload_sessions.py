"""Upload sessions of the chunk-level upload API, and proof of chunk ownership.

A client that chunks on its side opens a session, asks which chunks it must send,
sends those (each recorded in the session), then commits files from their manifests.
A chunk counts as *owned* by a user, and so may go into a file they commit, only when
they already reference it (a version of one of their files, trashed ones included, or
a part of one of their open multipart uploads) or sent its bytes in one of their open
sessions. A chunk stored only for someone else is not owned: knowing a hash never
reveals or grants another user's data.

Until it expires, a session's chunks are references for the garbage collector (the
collector's reference check reads ``upload_session_chunks``); the GC's lifecycle pass
deletes expired sessions (``expire_stale``), as it expires stale multipart uploads.
Committing a file moves its chunks out of the owner's sessions (the file references
them then), so what a session holds is what was sent and not yet committed: those
bytes count against the owner's quota (``dfms.metadata.lifecycle.used_bytes``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from dfms.metadata.db import Connection
from dfms.metadata.records import from_record
from dfms.metadata.states import ChunkState

Conn = Connection | asyncpg.Pool


@dataclass(frozen=True, slots=True)
class UploadSession:
    id: uuid.UUID
    owner_id: uuid.UUID
    created_at: datetime
    expires_at: datetime


_COLUMNS = "id, owner_id, created_at, expires_at"

# The chunks of $2 that user $1 owns (see the module's docstring), with their sizes.
_OWNED = f"""
SELECT c.sha256, c.size FROM chunks c
WHERE c.sha256 = ANY($2::bytea[]) AND c.state <> '{ChunkState.SWEEPING}' AND (
    EXISTS (SELECT 1 FROM manifest_entries e
            JOIN file_versions v ON v.manifest_id = e.manifest_id
            JOIN files f ON f.id = v.file_id
            WHERE e.chunk_sha256 = c.sha256 AND f.owner_id = $1)
    OR EXISTS (SELECT 1 FROM manifest_entries e
               JOIN multipart_parts p ON p.manifest_id = e.manifest_id
               JOIN multipart_uploads u ON u.id = p.upload_id
               WHERE e.chunk_sha256 = c.sha256 AND u.owner_id = $1 AND u.state = 'open'
                 AND u.expires_at > now())
    OR EXISTS (SELECT 1 FROM upload_session_chunks s
               JOIN upload_sessions us ON us.id = s.session_id
               WHERE s.chunk_sha256 = c.sha256 AND us.owner_id = $1
                 AND us.expires_at > now()))
"""

# Bytes sent in the owner's open sessions and not committed yet (each chunk once).
PENDING_BYTES = """
SELECT coalesce(sum(c.size), 0) FROM chunks c WHERE c.sha256 IN (
    SELECT s.chunk_sha256 FROM upload_session_chunks s
    JOIN upload_sessions us ON us.id = s.session_id
    WHERE us.owner_id = $1 AND us.expires_at > now())
"""


# A version of one of the owner's files whose manifest is exactly these chunks, in this
# order, with this size and SHA-256. Every manifest's SHA-256 was computed by the server
# from the bytes (an upload's stream, or a read-back), so a commit of the same manifest
# needs no read-back: the unchanged re-upload goes at the speed of asking.
_SAME_MANIFEST = """
SELECT 1 FROM files f
JOIN file_versions v ON v.file_id = f.id
JOIN manifests m ON m.id = v.manifest_id
WHERE f.owner_id = $1 AND m.sha256 = $2 AND m.size = $3
  AND m.chunk_count = cardinality($4::bytea[])
  AND NOT EXISTS (
      SELECT 1 FROM unnest($4::bytea[]) WITH ORDINALITY AS t(sha, n)
      LEFT JOIN manifest_entries e ON e.manifest_id = m.id AND e.idx = t.n - 1
      WHERE e.chunk_sha256 IS DISTINCT FROM t.sha)
LIMIT 1
"""


async def create(conn: Conn, owner: uuid.UUID, expiry_s: int) -> UploadSession:
    row = await conn.fetchrow(
        "INSERT INTO upload_sessions (owner_id, expires_at) "
        f"VALUES ($1, now() + make_interval(secs => $2)) RETURNING {_COLUMNS}",
        owner, float(expiry_s))
    assert row is not None  # INSERT ... RETURNING gives one row
    return from_record(UploadSession, row)


async def get_open(conn: Conn, owner: uuid.UUID, session_id: uuid.UUID, *,
                   lock: bool = False) -> UploadSession | None:
    """The owner's session, unless it is unknown, someone else's or expired; ``lock``
    keeps it from being deleted until the caller's transaction ends."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM upload_sessions WHERE id = $1 AND owner_id = $2 "
        f"AND expires_at > now(){' FOR KEY SHARE' if lock else ''}", session_id, owner)
    return None if row is None else from_record(UploadSession, row)


async def delete(conn: Conn, owner: uuid.UUID, session_id: uuid.UUID) -> bool:
    """End a session early; its chunks not committed become unreferenced (GC's)."""
    done = await conn.fetchval("DELETE FROM upload_sessions WHERE id = $1 AND owner_id = $2 "
                               "RETURNING 1", session_id, owner)
    return done is not None


async def record_chunk(conn: Connection, session_id: uuid.UUID, digest: bytes) -> None:
    """Note that the session's owner sent this (stored) chunk's bytes."""
    await conn.execute("INSERT INTO upload_session_chunks (session_id, chunk_sha256) "
                       "VALUES ($1, $2) ON CONFLICT DO NOTHING", session_id, digest)


async def owned_sizes(conn: Conn, owner: uuid.UUID, digests: list[bytes]) -> dict[bytes, int]:
    """The chunks among ``digests`` that ``owner`` owns, with their stored sizes."""
    rows = await conn.fetch(_OWNED, owner, digests)
    return {bytes(r["sha256"]): int(r["size"]) for r in rows}


async def holds_manifest(conn: Conn, owner: uuid.UUID, sha256: bytes, size: int,
                         chunks: list[bytes]) -> bool:
    """Whether one of the owner's versions has exactly this content and chunk list."""
    return await conn.fetchval(_SAME_MANIFEST, owner, sha256, size, chunks) is not None


async def release_committed(conn: Connection, owner: uuid.UUID, digests: list[bytes]) -> None:
    """Take chunks a commit references out of the owner's sessions (in the commit's
    transaction, so that a reference holds them at every moment)."""
    await conn.execute(
        "DELETE FROM upload_session_chunks s USING upload_sessions us "
        "WHERE us.id = s.session_id AND us.owner_id = $1 "
        "AND s.chunk_sha256 = ANY($2::bytea[])", owner, digests)


async def expire_stale(conn: Connection) -> int:
    """Delete every session past its expiry (its chunk rows cascade); returns how many."""
    gone = await conn.fetchval(
        "WITH gone AS (DELETE FROM upload_sessions WHERE expires_at <= now() RETURNING 1) "
        "SELECT count(*) FROM gone")
    return int(gone)
