"""The trash: listing, restoring (with path recreation) and purging deleted items.

An item is in the trash while ``deleted_at`` is set. Only deletion roots are
listed (``trashed_with IS NULL``); what a folder deletion took along restores
and purges with that folder. Purging deletes rows; the chunks they referenced
are reclaimed by GC.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from dfms.metadata import namespace as ns
from dfms.metadata.db import Connection
from dfms.metadata.records import from_record

MAX_NAME_BYTES = 255  # the limit names are validated against at the API


@dataclass(frozen=True, slots=True)
class TrashItem:
    id: uuid.UUID
    kind: str  # "file" | "folder"
    name: str
    parent_id: uuid.UUID | None  # the folder it was in
    original_path: str
    deleted_at: datetime
    size: int


_LIST = """
SELECT * FROM (
    SELECT f.id, 'file' AS kind, f.name, f.folder_id AS parent_id, f.original_path,
           f.deleted_at, m.size
    FROM files f JOIN file_versions v ON v.file_id = f.id AND v.version = f.current_version
    JOIN manifests m ON m.id = v.manifest_id
    WHERE f.owner_id = $1 AND f.deleted_at IS NOT NULL AND f.trashed_with IS NULL
    UNION ALL
    SELECT d.id, 'folder', d.name, d.parent_id, d.original_path, d.deleted_at,
           coalesce((SELECT sum(m.size) FROM files f
                     JOIN file_versions v ON v.file_id = f.id
                          AND v.version = f.current_version
                     JOIN manifests m ON m.id = v.manifest_id
                     WHERE f.trashed_with = d.id), 0)
    FROM folders d
    WHERE d.owner_id = $1 AND d.deleted_at IS NOT NULL AND d.trashed_with IS NULL
) t
"""


def _item(row: asyncpg.Record) -> TrashItem:
    # A folder's size is a sum (numeric); an item trashed before paths were kept has none.
    return from_record(TrashItem, row, original_path=row["original_path"] or "/",
                       size=int(row["size"]))


async def list_trash(conn: Connection | asyncpg.Pool, owner: uuid.UUID, limit: int,
                     offset: int, *, after: tuple[datetime, uuid.UUID] | None = None
                     ) -> tuple[list[TrashItem], int]:
    """One page, most recently deleted first: by offset, or after the (deleted_at, id)
    of the previous page's last item (a keyset cursor: stable while items come and go)."""
    order = "ORDER BY deleted_at DESC, id DESC"
    if after is None:
        rows = await conn.fetch(f"{_LIST} {order} LIMIT $2 OFFSET $3", owner, limit, offset)
    else:
        rows = await conn.fetch(f"{_LIST} WHERE (deleted_at, id) < ($3, $4) {order} LIMIT $2",
                                owner, limit, *after)
    total = await conn.fetchval(f"SELECT count(*) FROM ({_LIST}) c", owner)
    return [_item(r) for r in rows], int(total)


async def get_item(conn: Connection, owner: uuid.UUID,
                   item_id: uuid.UUID) -> TrashItem | None:
    row = await conn.fetchrow(f"{_LIST} WHERE id = $2", owner, item_id)
    return _item(row) if row else None


async def ensure_path(conn: Connection, owner: uuid.UUID, path: str) -> uuid.UUID | None:
    """The live folder at ``path`` ('/a/b'), creating what is missing; None is the root."""
    parent: uuid.UUID | None = None
    for name in (p for p in path.split("/") if p):
        await ns.lock_names(conn, owner, parent)
        found = await conn.fetchval(
            "SELECT id FROM folders WHERE owner_id = $1 AND parent_id IS NOT DISTINCT FROM $2 "
            "AND name = $3 AND deleted_at IS NULL", owner, parent, name)
        if found is None:
            if await ns.name_taken(conn, owner, parent, name):
                raise NameClash(name)  # a file has the folder's name
            found = (await ns.create_folder(conn, owner, parent, name)).id
        parent = found
    return parent


class NameClash(Exception):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(name)


async def restore_target(conn: Connection, owner: uuid.UUID,
                         item: TrashItem) -> uuid.UUID | None:
    """The folder an item goes back to: its own if still there, else its path recreated."""
    if item.parent_id is not None and await ns.get_folder(conn, owner, item.parent_id):
        return item.parent_id
    return await ensure_path(conn, owner, item.original_path)


def restored_name(name: str, attempt: int) -> str:
    """'report (restored).pdf', 'report (restored 2).pdf'...; shortened to stay a valid name."""
    stem, dot, ext = name.rpartition(".")
    if not stem:  # no extension (or a dotfile)
        stem, dot, ext = name, "", ""
    suffix = " (restored)" if attempt == 1 else f" (restored {attempt})"
    while stem and len(f"{stem}{suffix}{dot}{ext}".encode()) > MAX_NAME_BYTES:
        stem = stem[:-1]
    return f"{stem}{suffix}{dot}{ext}"


async def free_name(conn: Connection, owner: uuid.UUID, parent: uuid.UUID | None,
                    name: str, rename: bool) -> str:
    if not await ns.name_taken(conn, owner, parent, name):
        return name
    if not rename:
        raise NameClash(name)
    for attempt in range(1, 1000):
        candidate = restored_name(name, attempt)
        if not await ns.name_taken(conn, owner, parent, candidate):
            return candidate
    raise NameClash(name)


async def restore(conn: Connection, owner: uuid.UUID, item: TrashItem, *,
                  rename: bool) -> tuple[uuid.UUID | None, str]:
    """Bring an item (and what it took along) back; returns (folder, final name)."""
    parent = await restore_target(conn, owner, item)
    await ns.lock_names(conn, owner, parent)
    name = await free_name(conn, owner, parent, item.name, rename)
    if item.kind == "file":
        await conn.execute(
            "UPDATE files SET deleted_at = NULL, trashed_with = NULL, original_path = NULL, "
            "folder_id = $2, name = $3, updated_at = now() WHERE id = $1", item.id, parent,
            name)
        return parent, name
    await conn.execute(
        "UPDATE folders SET deleted_at = NULL, trashed_with = NULL, original_path = NULL, "
        "parent_id = $2, name = $3, updated_at = now() WHERE id = $1", item.id, parent, name)
    for table in ("folders", "files"):
        await conn.execute(f"UPDATE {table} SET deleted_at = NULL, trashed_with = NULL, "
                           "updated_at = now() WHERE trashed_with = $1", item.id)
    return parent, name


async def purge(conn: Connection, item: TrashItem) -> int:
    """Delete an item and what it took along, for good. Returns files removed."""
    if item.kind == "file":
        await conn.execute("DELETE FROM files WHERE id = $1", item.id)
        return 1
    folders = [item.id, *(r["id"] for r in await conn.fetch(
        "SELECT id FROM folders WHERE trashed_with = $1", item.id))]
    files = await conn.fetchval(
        "WITH gone AS (DELETE FROM files WHERE trashed_with = $1 RETURNING 1) "
        "SELECT count(*) FROM gone", item.id)
    # Items trashed on their own inside these folders stay in the trash and keep their
    # path; they just lose the link to folders that no longer exist.
    await conn.execute("UPDATE files SET folder_id = NULL WHERE folder_id = ANY($1::uuid[])",
                       folders)
    await conn.execute("UPDATE folders SET parent_id = NULL WHERE parent_id = ANY($1::uuid[]) "
                       "AND NOT id = ANY($1::uuid[])", folders)
    await conn.execute("UPDATE multipart_uploads SET folder_id = NULL "
                       "WHERE folder_id = ANY($1::uuid[])", folders)
    await conn.execute("DELETE FROM folders WHERE id = ANY($1::uuid[])", folders)
    return int(files)


async def expired_roots(conn: Connection, retention_days: int,
                        limit: int) -> list[tuple[uuid.UUID, TrashItem]]:
    """Trash roots older than the retention period, oldest first, across all users."""
    rows = await conn.fetch(
        """
        SELECT owner_id, id FROM (
            SELECT owner_id, id, deleted_at FROM files
            WHERE deleted_at IS NOT NULL AND trashed_with IS NULL
            UNION ALL
            SELECT owner_id, id, deleted_at FROM folders
            WHERE deleted_at IS NOT NULL AND trashed_with IS NULL
        ) t WHERE deleted_at < now() - make_interval(days => $1)
        ORDER BY deleted_at LIMIT $2
        """, retention_days, limit)
    out = []
    for row in rows:
        item = await get_item(conn, row["owner_id"], row["id"])
        if item is not None:
            out.append((row["owner_id"], item))
    return out
