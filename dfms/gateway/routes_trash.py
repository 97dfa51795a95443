"""The trash: list, restore (to the original folder, recreated if gone), purge, empty."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from aiohttp import web

from dfms.events.origin import current_origin
from dfms.events.outbox import emit
from dfms.events.topics import FILE_RESTORED, FILES_TOPIC, FOLDER_RESTORED
from dfms.gateway.context import API_PREFIX, CONFIG_KEY, PG_KEY
from dfms.gateway.errors import conflict, not_found
from dfms.gateway.http import bool_param, parse_uuid
from dfms.gateway.listing import paging
from dfms.gateway.security import authenticate
from dfms.gateway.views import file_json, folder_json
from dfms.metadata import namespace as ns
from dfms.metadata import trash
from dfms.metadata.db import Connection


def _item_json(item: trash.TrashItem, retention_days: int) -> dict[str, Any]:
    return {"id": str(item.id), "type": item.kind, "name": item.name,
            "original_path": item.original_path,
            "original_folder_id": None if item.parent_id is None else str(item.parent_id),
            "size": item.size, "deleted_at": item.deleted_at.isoformat(),
            "purge_after": (item.deleted_at + timedelta(days=retention_days)).isoformat()}


async def list_trash(request: web.Request) -> web.Response:
    user = await authenticate(request)
    cfg = request.app[CONFIG_KEY]
    p = paging(request, "deleted_at", "desc")
    items, total = await trash.list_trash(request.app[PG_KEY], user.id, p.per_page, p.offset,
                                          after=p.after)
    days = cfg.lifecycle.trash_retention_days
    last = (items[-1].deleted_at, items[-1].id) if items else None
    return web.json_response(p.body([_item_json(i, days) for i in items], total, last))


async def _restored_json(conn: Connection, owner: uuid.UUID,
                         item: trash.TrashItem) -> dict[str, Any]:
    """The item as GET answers it (a file, or a folder as folder listings show it)."""
    if item.kind == "file":
        row = await ns.get_file(conn, owner, item.id)
        assert row is not None, "restored in this transaction"
        return file_json(row)
    folder = await ns.get_folder(conn, owner, item.id)
    assert folder is not None, "restored in this transaction"
    body = folder_json(folder)
    # Deprecated: restore used to name a folder's parent `folder_id`; kept for clients
    # that read it (api/openapi.yaml, RestoredFolder).
    return {**body, "folder_id": body["parent_id"]}


async def restore(request: web.Request) -> web.Response:
    user = await authenticate(request)
    item_id = parse_uuid(request.match_info["item_id"], "trash item")
    rename = bool_param(request, "rename")
    async with request.app[PG_KEY].acquire() as conn, conn.transaction():
        item = await trash.get_item(conn, user.id, item_id)
        if item is None:
            raise not_found("trash item")
        try:
            parent, name = await trash.restore(conn, user.id, item, rename=rename)
        except trash.NameClash as exc:
            raise conflict("name_taken", f"{exc.name!r} already exists where the item goes "
                           "back; pass ?rename=true to restore it under another name") from None
        body = await _restored_json(conn, user.id, item)
        await _announce_restore(conn, user.id, item, parent, name)
    return web.json_response(body)


async def _announce_restore(conn: Connection, owner: uuid.UUID, item: trash.TrashItem,
                            parent: uuid.UUID | None, name: str) -> None:
    where = None if parent is None else str(parent)
    if item.kind == "file":
        await emit(conn, FILES_TOPIC, str(item.id), FILE_RESTORED, {
            "file_id": str(item.id), "owner_id": str(owner), "name": name,
            "folder_id": where, "origin": current_origin()})
    else:
        await emit(conn, FILES_TOPIC, str(item.id), FOLDER_RESTORED, {
            "folder_id": str(item.id), "owner_id": str(owner), "name": name,
            "parent_id": where, "origin": current_origin()})


async def purge(request: web.Request) -> web.Response:
    user = await authenticate(request)
    item_id = parse_uuid(request.match_info["item_id"], "trash item")
    async with request.app[PG_KEY].acquire() as conn, conn.transaction():
        item = await trash.get_item(conn, user.id, item_id)
        if item is None:
            raise not_found("trash item")
        await trash.purge(conn, item)
    return web.Response(status=204)


async def empty(request: web.Request) -> web.Response:
    user = await authenticate(request)
    async with request.app[PG_KEY].acquire() as conn, conn.transaction():
        items, _ = await trash.list_trash(conn, user.id, 1_000_000, 0)
        for item in items:
            await trash.purge(conn, item)
    return web.Response(status=204)


def setup_routes(app: web.Application) -> None:
    app.router.add_get(f"{API_PREFIX}/trash", list_trash)
    app.router.add_delete(f"{API_PREFIX}/trash", empty)
    app.router.add_post(f"{API_PREFIX}/trash/{{item_id}}/restore", restore)
    app.router.add_delete(f"{API_PREFIX}/trash/{{item_id}}", purge)
