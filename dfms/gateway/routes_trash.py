"""The trash: list, restore (to the original folder, recreated if gone), purge, empty."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web

from dfms.gateway.context import API_PREFIX, CONFIG_KEY, PG_KEY
from dfms.gateway.errors import conflict, not_found
from dfms.gateway.http import int_param, parse_uuid
from dfms.gateway.security import authenticate
from dfms.metadata import trash


def _item_json(item: trash.TrashItem, retention_days: int) -> dict[str, Any]:
    return {"id": str(item.id), "type": item.kind, "name": item.name,
            "original_path": item.original_path,
            "original_folder_id": None if item.parent_id is None else str(item.parent_id),
            "size": item.size, "deleted_at": item.deleted_at.isoformat(),
            "purge_after": (item.deleted_at + timedelta(days=retention_days)).isoformat()}


async def list_trash(request: web.Request) -> web.Response:
    user = await authenticate(request)
    cfg = request.app[CONFIG_KEY]
    per_page = int_param(request, "per_page", cfg.gateway.page_size_default, 1,
                         cfg.gateway.page_size_max)
    page = int_param(request, "page", 1, 1, 10_000_000)
    items, total = await trash.list_trash(request.app[PG_KEY], user.id, per_page,
                                          (page - 1) * per_page)
    days = cfg.lifecycle.trash_retention_days
    return web.json_response({"items": [_item_json(i, days) for i in items], "total": total,
                              "page": page, "per_page": per_page})


async def restore(request: web.Request) -> web.Response:
    user = await authenticate(request)
    item_id = parse_uuid(request.match_info["item_id"], "trash item")
    rename = request.query.get("rename", "false").lower() in ("1", "true", "yes")
    async with request.app[PG_KEY].acquire() as conn, conn.transaction():
        item = await trash.get_item(conn, user.id, item_id)
        if item is None:
            raise not_found("trash item")
        try:
            folder, name = await trash.restore(conn, user.id, item, rename=rename)
        except trash.NameClash as exc:
            raise conflict("name_taken", f"{exc.name!r} already exists where the item goes "
                           "back; pass ?rename=true to restore it under another name") from None
    return web.json_response({"id": str(item.id), "type": item.kind, "name": name,
                              "folder_id": None if folder is None else str(folder)})


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
