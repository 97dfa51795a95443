"""Multipart uploads and their parts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from dfms.events import outbox
from dfms.events.topics import FILES_TOPIC, UPLOAD_EXPIRED, UPLOAD_FAILED
from dfms.metadata.db import Connection
from dfms.metadata.records import from_record

Conn = Connection | asyncpg.Pool


@dataclass(frozen=True, slots=True)
class Upload:
    id: uuid.UUID
    owner_id: uuid.UUID
    folder_id: uuid.UUID | None
    file_name: str
    file_size: int | None
    state: str
    created_at: datetime
    expires_at: datetime
    expired: bool


@dataclass(frozen=True, slots=True)
class Part:
    part_number: int
    manifest_id: uuid.UUID
    size: int
    sha256: bytes
    uploaded_at: datetime


_UPLOAD = ("SELECT id, owner_id, folder_id, file_name, file_size, state, created_at, "
           "expires_at, expires_at < now() AS expired FROM multipart_uploads")


def _upload(row: asyncpg.Record) -> Upload:
    return from_record(Upload, row)


async def create(conn: Conn, owner: uuid.UUID, folder: uuid.UUID | None, name: str,
                 size: int | None, expiry_s: int) -> Upload:
    row = await conn.fetchrow(
        "INSERT INTO multipart_uploads (owner_id, folder_id, file_name, file_size, expires_at)"
        " VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) "
        "RETURNING id, owner_id, folder_id, file_name, file_size, state, created_at, "
        "expires_at, false AS expired", owner, folder, name, size, float(expiry_s))
    assert row is not None  # INSERT ... RETURNING gives one row
    return _upload(row)


async def get(conn: Conn, owner: uuid.UUID, upload_id: uuid.UUID, *,
              for_update: bool = False) -> Upload | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"{_UPLOAD} WHERE id = $1 AND owner_id = $2{lock}", upload_id,
                              owner)
    return _upload(row) if row else None


async def parts(conn: Conn, upload_id: uuid.UUID) -> list[Part]:
    rows = await conn.fetch(
        "SELECT part_number, manifest_id, size, sha256, uploaded_at FROM multipart_parts "
        "WHERE upload_id = $1 ORDER BY part_number", upload_id)
    return [from_record(Part, r, sha256=bytes(r["sha256"])) for r in rows]


async def part_size(conn: Conn, upload_id: uuid.UUID, number: int) -> int:
    return int(await conn.fetchval(
        "SELECT coalesce(max(size), 0) FROM multipart_parts WHERE upload_id = $1 "
        "AND part_number = $2", upload_id, number))


async def put_part(conn: Connection, upload_id: uuid.UUID, number: int,
                   manifest_id: uuid.UUID, size: int, sha256: bytes) -> None:
    """Record a part; a re-sent part number replaces the old one (its manifest goes to GC)."""
    await conn.execute(
        "INSERT INTO multipart_parts (upload_id, part_number, manifest_id, size, sha256) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (upload_id, part_number) DO UPDATE SET "
        "manifest_id = EXCLUDED.manifest_id, size = EXCLUDED.size, sha256 = EXCLUDED.sha256, "
        "uploaded_at = now()", upload_id, number, manifest_id, size, sha256)


async def entries(conn: Conn, manifest_ids: list[uuid.UUID]) -> list[tuple[bytes, int, int]]:
    """The chunks of the parts' manifests, in part order, with file offsets."""
    rows = await conn.fetch(
        "SELECT e.chunk_sha256, e.size FROM unnest($1::uuid[]) WITH ORDINALITY AS p(id, n) "
        "JOIN manifest_entries e ON e.manifest_id = p.id ORDER BY p.n, e.idx", manifest_ids)
    out: list[tuple[bytes, int, int]] = []
    offset = 0
    for row in rows:
        out.append((bytes(row["chunk_sha256"]), offset, row["size"]))
        offset += row["size"]
    return out


async def close(conn: Connection, upload_id: uuid.UUID, state: str) -> None:
    """Complete or abort: the parts' rows go (their manifests are left for GC)."""
    await conn.execute("DELETE FROM multipart_parts WHERE upload_id = $1", upload_id)
    await conn.execute("UPDATE multipart_uploads SET state = $2 WHERE id = $1", upload_id,
                       state)


async def expire_stale(conn: Connection) -> int:
    """Abort every open upload past its expiry; returns how many. Each is announced to
    its owner (``upload.failed``) in the same transaction."""
    rows = await conn.fetch(
        "UPDATE multipart_uploads SET state = 'aborted' WHERE state = 'open' "
        "AND expires_at < now() RETURNING id, owner_id, folder_id, file_name, file_size")
    ids = [r["id"] for r in rows]
    if ids:
        await conn.execute("DELETE FROM multipart_parts WHERE upload_id = ANY($1::uuid[])", ids)
    for r in rows:
        await outbox.emit(conn, FILES_TOPIC, str(r["id"]), UPLOAD_FAILED, {
            "owner_id": str(r["owner_id"]), "reason": UPLOAD_EXPIRED,
            "upload_id": str(r["id"]), "name": r["file_name"], "size": r["file_size"],
            "folder_id": None if r["folder_id"] is None else str(r["folder_id"]),
            "origin": None})
    return len(ids)
