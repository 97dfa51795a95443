"""Folders: create, list contents, rename and move, delete (recursively, atomically)."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from dfms.events.origin import current_origin
from dfms.events.outbox import emit
from dfms.events.topics import FILES_TOPIC, FOLDER_CREATED, FOLDER_DELETED, FOLDER_MOVED
from dfms.gateway.context import API_PREFIX, PG_KEY
from dfms.gateway.errors import conflict, not_found
from dfms.gateway.folders import ROOT_ALIAS, claim_name, requested_place, resolve_parent
from dfms.gateway.http import bool_param, field, only_fields, parse_uuid, read_json
from dfms.gateway.listing import files_page
from dfms.gateway.names import clean_name
from dfms.gateway.security import authenticate
from dfms.gateway.views import folder_json
from dfms.metadata import namespace as ns
from dfms.metadata.db import Connection

FOLDER_FIELDS = ("name", "parent_id")  # of a create or an update


async def create_folder(request: web.Request) -> web.Response:
    user = await authenticate(request)
    doc = await read_json(request)
    only_fields(doc, FOLDER_FIELDS)
    name = clean_name(field(doc, "name", str), "folder name")
    async with request.app[PG_KEY].acquire() as conn, conn.transaction():
        parent = await resolve_parent(conn, user, doc.get("parent_id"))
        await claim_name(conn, user, parent, name)
        row = await ns.create_folder(conn, user.id, parent, name)
        await _announce(conn, FOLDER_CREATED, user.id, row.id, name, parent)
    return web.json_response(folder_json(row), status=201)


async def _announce(conn: Connection, type: str, owner: uuid.UUID, folder_id: uuid.UUID,
                    name: str, parent: uuid.UUID | None, **more: Any) -> None:
    """A folder event for the owner's live streams, in the change's transaction."""
    await emit(conn, FILES_TOPIC, str(folder_id), type, {
        "folder_id": str(folder_id), "owner_id": str(owner), "name": name,
        "parent_id": _id(parent), **more, "origin": current_origin()})


def _id(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


async def folder_contents(request: web.Request) -> web.Response:
    user = await authenticate(request)
    raw = request.match_info["folder_id"]
    pool = request.app[PG_KEY]
    folder = None
    if raw != ROOT_ALIAS:
        folder = await ns.get_folder(pool, user.id, parse_uuid(raw, "folder"))
        if folder is None:
            raise not_found("folder")
    parent = folder.id if folder else None
    folders = await ns.list_subfolders(pool, user.id, parent)
    files = await files_page(request, pool, user.id, parent)
    body: dict[str, Any] = {
        "folder": folder_json(folder) if folder else None,
        "folders": [folder_json(f) for f in folders],
        "files": files["items"], "total_files": files["total"],
        "next_cursor": files["next_cursor"],
    }
    return web.json_response(body)


async def update_folder(request: web.Request) -> web.Response:
    user = await authenticate(request)
    folder_id = parse_uuid(request.match_info["folder_id"], "folder")
    doc = await read_json(request)
    only_fields(doc, FOLDER_FIELDS)
    async with request.app[PG_KEY].acquire() as conn, conn.transaction():
        current = await ns.get_folder(conn, user.id, folder_id)
        if current is None:
            raise not_found("folder")
        name, parent = await requested_place(conn, user, doc, kind="folder",
                                             parent_field="parent_id", name=current.name,
                                             parent=current.parent_id)
        if parent is not None and await ns.is_descendant(conn, folder_id, parent):
            raise conflict("folder_cycle", "a folder cannot move into itself or below itself")
        await claim_name(conn, user, parent, name, except_id=folder_id)
        row = await ns.update_folder(conn, folder_id, name, parent)
        if (name, parent) != (current.name, current.parent_id):
            await _announce(conn, FOLDER_MOVED, user.id, folder_id, name, parent,
                            old_name=current.name, old_parent_id=_id(current.parent_id))
    return web.json_response(folder_json(row))


async def delete_folder(request: web.Request) -> web.Response:
    user = await authenticate(request)
    folder_id = parse_uuid(request.match_info["folder_id"], "folder")
    recursive = bool_param(request, "recursive")
    async with request.app[PG_KEY].acquire() as conn, conn.transaction():
        current = await ns.get_folder(conn, user.id, folder_id)
        if current is None:
            raise not_found("folder")
        if not recursive and not await ns.folder_is_empty(conn, folder_id):
            raise conflict("folder_not_empty",
                           "the folder is not empty; pass ?recursive=true to delete it all")
        await ns.delete_subtree(conn, folder_id)
        await _announce(conn, FOLDER_DELETED, user.id, folder_id, current.name,
                        current.parent_id)
    return web.Response(status=204)


def setup_routes(app: web.Application) -> None:
    app.router.add_post(f"{API_PREFIX}/folders", create_folder)
    app.router.add_get(f"{API_PREFIX}/folders/{{folder_id}}/contents", folder_contents)
    app.router.add_patch(f"{API_PREFIX}/folders/{{folder_id}}", update_folder)
    app.router.add_delete(f"{API_PREFIX}/folders/{{folder_id}}", delete_folder)
