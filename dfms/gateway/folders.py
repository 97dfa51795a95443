"""Folders as other resources refer to them: the parent a request names, and the
answer when a name is taken there. Shared by files, folders and multipart uploads."""

from __future__ import annotations

import uuid

import asyncpg

from dfms.gateway.errors import ApiError, bad_request, conflict, not_found
from dfms.gateway.http import parse_uuid
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
