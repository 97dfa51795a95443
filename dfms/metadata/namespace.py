"""Folders and files of a user: the namespace queries (asyncpg, caller's connection).

Names are unique per parent folder per user across folders and files alike;
a transaction-scoped advisory lock on (owner, parent) serializes the check
and the insert so two concurrent creates cannot both win.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from dfms.metadata.db import Connection
from dfms.metadata.records import from_record

ROOT = uuid.UUID(int=0)  # stands for "no parent" in lock keys and COALESCE


@dataclass(frozen=True, slots=True)
class FileRow:
    id: uuid.UUID
    name: str
    folder_id: uuid.UUID | None
    size: int
    sha256: bytes
    mime_type: str
    version: int
    chunk_count: int
    manifest_id: uuid.UUID
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: asyncpg.Record, **given: Any) -> FileRow:
        """The file of ``row``; ``given`` fields replace its columns (see from_record)."""
        return from_record(cls, row, sha256=bytes(row["sha256"]), **given)


@dataclass(frozen=True, slots=True)
class FolderRow:
    id: uuid.UUID
    name: str
    parent_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: asyncpg.Record) -> FolderRow:
        return from_record(cls, row)


FILE_COLUMNS = """
    f.id, f.name, f.folder_id, f.created_at, f.updated_at, v.version, v.mime_type,
    v.manifest_id, m.size, m.sha256, m.chunk_count
"""
FILE_FROM = """
    FROM files f
    JOIN file_versions v ON v.file_id = f.id AND v.version = f.current_version
    JOIN manifests m ON m.id = v.manifest_id
"""


async def lock_names(conn: Connection, owner: uuid.UUID,
                     parent: uuid.UUID | None) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                       f"names:{owner}:{parent or ROOT}")


async def name_taken(conn: Connection, owner: uuid.UUID, parent: uuid.UUID | None,
                     name: str, *, except_id: uuid.UUID | None = None) -> bool:
    return bool(await conn.fetchval(
        """
        SELECT EXISTS (SELECT 1 FROM folders WHERE owner_id = $1 AND deleted_at IS NULL
                       AND parent_id IS NOT DISTINCT FROM $2 AND name = $3
                       AND id IS DISTINCT FROM $4)
            OR EXISTS (SELECT 1 FROM files WHERE owner_id = $1 AND deleted_at IS NULL
                       AND folder_id IS NOT DISTINCT FROM $2 AND name = $3
                       AND id IS DISTINCT FROM $4)
        """, owner, parent, name, except_id))


# --- folders -----------------------------------------------------------------------

async def get_folder(conn: Connection | asyncpg.Pool, owner: uuid.UUID,
                     folder_id: uuid.UUID) -> FolderRow | None:
    row = await conn.fetchrow(
        "SELECT id, name, parent_id, created_at, updated_at FROM folders "
        "WHERE id = $1 AND owner_id = $2 AND deleted_at IS NULL", folder_id, owner)
    return FolderRow.of(row) if row else None


async def create_folder(conn: Connection, owner: uuid.UUID, parent: uuid.UUID | None,
                        name: str) -> FolderRow:
    row = await conn.fetchrow(
        "INSERT INTO folders (owner_id, parent_id, name) VALUES ($1, $2, $3) "
        "RETURNING id, name, parent_id, created_at, updated_at", owner, parent, name)
    assert row is not None  # INSERT ... RETURNING gives one row
    return FolderRow.of(row)


async def is_descendant(conn: Connection, folder_id: uuid.UUID,
                        maybe_child: uuid.UUID) -> bool:
    """True when ``maybe_child`` is ``folder_id`` or lies below it."""
    return bool(await conn.fetchval(
        """
        WITH RECURSIVE up AS (
            SELECT id, parent_id FROM folders WHERE id = $2
            UNION ALL
            SELECT f.id, f.parent_id FROM folders f JOIN up ON f.id = up.parent_id
        )
        SELECT EXISTS (SELECT 1 FROM up WHERE id = $1)
        """, folder_id, maybe_child))


async def update_folder(conn: Connection, folder_id: uuid.UUID, name: str,
                        parent: uuid.UUID | None) -> FolderRow:
    row = await conn.fetchrow(
        "UPDATE folders SET name = $2, parent_id = $3, updated_at = now() WHERE id = $1 "
        "RETURNING id, name, parent_id, created_at, updated_at", folder_id, name, parent)
    assert row is not None  # the caller holds the folder's row
    return FolderRow.of(row)


async def folder_is_empty(conn: Connection, folder_id: uuid.UUID) -> bool:
    return not await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM folders WHERE parent_id = $1 AND deleted_at IS NULL) "
        "OR EXISTS (SELECT 1 FROM files WHERE folder_id = $1 AND deleted_at IS NULL)",
        folder_id)


async def folder_path(conn: Connection | asyncpg.Pool,
                      folder_id: uuid.UUID | None) -> str:
    """'/a/b' for a folder (trashed ancestors included); '/' for the root."""
    if folder_id is None:
        return "/"
    names = await conn.fetchval(
        """
        WITH RECURSIVE up AS (
            SELECT id, parent_id, name, 0 AS depth FROM folders WHERE id = $1
            UNION ALL
            SELECT f.id, f.parent_id, f.name, up.depth + 1 FROM folders f
            JOIN up ON f.id = up.parent_id
        )
        SELECT array_agg(name ORDER BY depth DESC) FROM up
        """, folder_id)
    return "/" + "/".join(names or [])


async def delete_subtree(conn: Connection, folder_id: uuid.UUID) -> tuple[int, int]:
    """Move a folder, every folder below it and every file in them to the trash, in the
    caller's transaction. Only the folder itself is listed in the trash; the rest is
    marked as taken along with it. Returns (folders, files) trashed."""
    parent = await conn.fetchval("SELECT parent_id FROM folders WHERE id = $1", folder_id)
    await conn.execute(
        "UPDATE folders SET deleted_at = now(), updated_at = now(), trashed_with = NULL, "
        "original_path = $2 WHERE id = $1", folder_id, await folder_path(conn, parent))
    folders = await conn.fetch(
        """
        WITH RECURSIVE tree AS (
            SELECT id FROM folders WHERE parent_id = $1 AND deleted_at IS NULL
            UNION ALL
            SELECT f.id FROM folders f JOIN tree ON f.parent_id = tree.id
            WHERE f.deleted_at IS NULL
        )
        UPDATE folders SET deleted_at = now(), updated_at = now(), trashed_with = $1
        WHERE id IN (SELECT id FROM tree) RETURNING id
        """, folder_id)
    ids = [folder_id, *(r["id"] for r in folders)]
    files = await conn.fetchval(
        "WITH gone AS (UPDATE files SET deleted_at = now(), updated_at = now(), "
        "trashed_with = $2 WHERE folder_id = ANY($1::uuid[]) AND deleted_at IS NULL "
        "RETURNING 1) SELECT count(*) FROM gone", ids, folder_id)
    return len(ids), int(files)


async def list_subfolders(conn: Connection | asyncpg.Pool, owner: uuid.UUID,
                          parent: uuid.UUID | None) -> list[FolderRow]:
    rows = await conn.fetch(
        "SELECT id, name, parent_id, created_at, updated_at FROM folders "
        "WHERE owner_id = $1 AND parent_id IS NOT DISTINCT FROM $2 AND deleted_at IS NULL "
        "ORDER BY name, id", owner, parent)
    return [FolderRow.of(r) for r in rows]


# --- files ---------------------------------------------------------------------------

async def get_file(conn: Connection | asyncpg.Pool, owner: uuid.UUID,
                   file_id: uuid.UUID) -> FileRow | None:
    row = await conn.fetchrow(
        f"SELECT {FILE_COLUMNS} {FILE_FROM} "
        "WHERE f.id = $1 AND f.owner_id = $2 AND f.deleted_at IS NULL", file_id, owner)
    return FileRow.of(row) if row else None


@dataclass(frozen=True, slots=True)
class UserFile:
    """A user's account state and one of their files, read together (see get_user_file)."""
    exists: bool  # the account
    role: str | None
    is_active: bool
    file: FileRow | None


async def get_user_file(conn: Connection | asyncpg.Pool, owner: uuid.UUID,
                        file_id: uuid.UUID) -> UserFile:
    """The account of ``owner`` (to authenticate the request) and their file ``file_id``
    in one round trip: a stat is one statement, not an account lookup and then a file's."""
    row = await conn.fetchrow(
        "SELECT u.role AS user_role, u.is_active AS user_active, x.* FROM users u "
        f"LEFT JOIN LATERAL (SELECT {FILE_COLUMNS} {FILE_FROM} "
        "WHERE f.id = $1 AND f.owner_id = u.id AND f.deleted_at IS NULL) x ON true "
        "WHERE u.id = $2", file_id, owner)
    if row is None:
        return UserFile(False, None, False, None)
    file = FileRow.of(row) if row["id"] is not None else None
    return UserFile(True, row["user_role"], bool(row["user_active"]), file)


async def insert_manifest(conn: Connection, size: int, sha256: bytes,
                          entries: list[tuple[bytes, int, int]]) -> uuid.UUID:
    """A manifest and its ordered entries (sha256, offset, size); COPY for big ones."""
    manifest_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO manifests (size, sha256, chunk_count) VALUES ($1, $2, $3) RETURNING id",
        size, sha256, len(entries))
    records = [(manifest_id, i, offset, length, digest)
               for i, (digest, offset, length) in enumerate(entries)]
    if records:
        await conn.copy_records_to_table(
            "manifest_entries", records=records,
            columns=["manifest_id", "idx", "offset", "size", "chunk_sha256"])
    return manifest_id


async def create_file(conn: Connection, owner: uuid.UUID, folder: uuid.UUID | None,
                      name: str, manifest_id: uuid.UUID, mime_type: str) -> uuid.UUID:
    file_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO files (owner_id, folder_id, name, current_version) "
        "VALUES ($1, $2, $3, 1) RETURNING id", owner, folder, name)
    await conn.execute(
        "INSERT INTO file_versions (file_id, version, manifest_id, mime_type) "
        "VALUES ($1, 1, $2, $3)", file_id, manifest_id, mime_type)
    return file_id


async def update_file(conn: Connection, file_id: uuid.UUID, name: str,
                      folder: uuid.UUID | None) -> None:
    await conn.execute("UPDATE files SET name = $2, folder_id = $3, updated_at = now() "
                       "WHERE id = $1", file_id, name, folder)


async def soft_delete_file(conn: Connection, owner: uuid.UUID,
                           file_id: uuid.UUID) -> bool:
    """Move a file to the trash, remembering the path of its folder."""
    folder = await conn.fetchrow(
        "SELECT folder_id FROM files WHERE id = $1 AND owner_id = $2 AND deleted_at IS NULL "
        "FOR UPDATE", file_id, owner)
    if folder is None:
        return False
    await conn.execute(
        "UPDATE files SET deleted_at = now(), updated_at = now(), trashed_with = NULL, "
        "original_path = $2 WHERE id = $1", file_id,
        await folder_path(conn, folder["folder_id"]))
    return True


SORT_COLUMNS = {"name": "f.name", "size": "m.size", "updated_at": "f.updated_at",
                "created_at": "f.created_at"}


async def list_files(conn: Connection | asyncpg.Pool, owner: uuid.UUID,
                     folder: uuid.UUID | None, *, sort: str, descending: bool, limit: int,
                     offset: int = 0, after: tuple[Any, uuid.UUID] | None = None
                     ) -> tuple[list[FileRow], int]:
    """One page of a folder's files, by offset or after a keyset cursor; and the total.

    One statement (one round trip): the count is the outer row, so an empty page still
    answers it, and the page is joined to it (a page past the end is one row of NULLs).
    The count ignores the cursor: the total is the folder's, whichever page this is."""
    column = SORT_COLUMNS[sort]
    direction = "DESC" if descending else "ASC"
    args: list[Any] = [owner, folder, limit]
    where = "f.owner_id = $1 AND f.folder_id IS NOT DISTINCT FROM $2 AND f.deleted_at IS NULL"
    keyset = ""
    if after is not None:
        args += list(after)
        keyset = f" AND ({column}, f.id) {'<' if descending else '>'} ($4, $5)"
    # The outer ORDER BY repeats the page's on its output columns: a join does not
    # promise to keep its inner side's order.
    outer = column.split(".", 1)[1]
    rows = await conn.fetch(
        f"SELECT t.total, p.* FROM (SELECT count(*) AS total FROM files f WHERE {where}) t "
        f"LEFT JOIN LATERAL (SELECT {FILE_COLUMNS} {FILE_FROM} WHERE {where}{keyset} "
        f"ORDER BY {column} {direction}, f.id {direction} LIMIT $3 "
        f"OFFSET {int(offset) if after is None else 0}) p ON true "
        f"ORDER BY p.{outer} {direction}, p.id {direction}", *args)
    total = int(rows[0]["total"])
    return [FileRow.of(r) for r in rows if r["id"] is not None], total
