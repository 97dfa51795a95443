"""Folders as other resources refer to them: the parent a request names, the place a
rename or move asks for, and the answer when a name is taken there. Shared by files,
folders and multipart uploads."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from dfms.gateway.errors import ApiError, bad_request, conflict, not_found
from dfms.gateway.http import parse_uuid
from dfms.gateway.names import clean_name
from dfms.gateway.security import AuthUser
from dfms.metadata import namespace as ns
from dfms.metadata.db import Connection

ROOT_ALIAS = "root"


async def resolve_parent(conn: Connection | asyncpg.Pool, user: AuthUser,
                         raw: object) -> uuid.UUID | None:
    """A folder id from a body or header, owned by the user; None (or 'root') is the root."""
    if raw is None or raw == "" or raw == ROOT_ALIAS:
        return None
    if not isinstance(raw, str):
        raise bad_request("validation_error", "a folder id must be a string")
    folder_id = parse_uuid(raw, "folder")
    if await ns.get_folder(conn, user.id, folder_id) is None:
        raise not_found("folder")
    return folder_id


def name_clash(name: str) -> ApiError:
    return conflict("name_taken", f"an item named {name!r} already exists in that folder")


async def requested_place(conn: Connection, user: AuthUser, doc: dict[str, Any], *,
                          kind: str, parent_field: str, name: str,
                          parent: uuid.UUID | None) -> tuple[str, uuid.UUID | None]:
    """The name and parent folder a rename or move (PATCH) of a ``kind`` asks for; a field
    the body leaves out keeps the item's current ``name`` or ``parent``."""
    if "name" in doc:
        name = clean_name(doc["name"], f"{kind} name")
    if parent_field in doc:
        parent = await resolve_parent(conn, user, doc[parent_field])
    return name, parent


async def claim_name(conn: Connection, user: AuthUser, parent: uuid.UUID | None,
                     name: str, *, except_id: uuid.UUID | None = None) -> None:
    """Hold the names of ``parent`` until the transaction ends, so no concurrent request
    can take ``name`` before this one writes it, and refuse a name another item has
    (``except_id``: the item being renamed or moved, which may keep its own)."""
    await ns.lock_names(conn, user.id, parent)
    if await ns.name_taken(conn, user.id, parent, name, except_id=except_id):
        raise name_clash(name)
