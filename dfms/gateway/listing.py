"""Pagination of file listings: page/per_page offsets or opaque keyset cursors."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web

from dfms.gateway.context import CONFIG_KEY
from dfms.gateway.errors import bad_request
from dfms.gateway.http import int_param
from dfms.gateway.views import file_json
from dfms.metadata import namespace as ns


def _encode_cursor(sort: str, order: str, value: Any, row_id: uuid.UUID) -> str:
    if isinstance(value, datetime):
        value = {"t": value.isoformat()}
    doc = json.dumps([sort, order, value, str(row_id)]).encode()
    return base64.urlsafe_b64encode(doc).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: str, order: str) -> tuple[Any, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        c_sort, c_order, value, row_id = json.loads(raw)
        if isinstance(value, dict):
            value = datetime.fromisoformat(value["t"])
        parsed = uuid.UUID(str(row_id))
    except (ValueError, TypeError, KeyError, AttributeError, json.JSONDecodeError):
        raise bad_request("invalid_cursor", "the cursor is malformed") from None
    if (c_sort, c_order) != (sort, order):
        raise bad_request("invalid_cursor", "the cursor belongs to another sort order")
    expected = {"name": str, "size": int}.get(sort, datetime)
    if not isinstance(value, expected) or isinstance(value, bool) or not _storable(value):
        raise bad_request("invalid_cursor", "the cursor is malformed")
    return value, parsed


def _storable(value: Any) -> bool:
    """A forged cursor must not reach PostgreSQL with values it cannot take."""
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    return isinstance(value, datetime) and value.tzinfo is not None


def _sort_value(row: ns.FileRow, sort: str) -> Any:
    return {"name": row.name, "size": row.size, "updated_at": row.updated_at,
            "created_at": row.created_at}[sort]


async def files_page(request: web.Request, conn: asyncpg.Pool | asyncpg.Connection,
                     owner: uuid.UUID, folder: uuid.UUID | None) -> dict[str, Any]:
    """``?sort=name|size|updated_at|created_at&order=asc|desc`` with either
    ``?cursor=`` (keyset, stable under inserts) or ``?page=&per_page=``."""
    gw = request.app[CONFIG_KEY].gateway
    sort = request.query.get("sort", "name")
    order = request.query.get("order", "asc")
    if sort not in ns.SORT_COLUMNS:
        raise bad_request("validation_error", f"sort must be one of {', '.join(ns.SORT_COLUMNS)}")
    if order not in ("asc", "desc"):
        raise bad_request("validation_error", "order must be asc or desc")
    per_page = int_param(request, "per_page", gw.page_size_default, 1, gw.page_size_max)
    page = int_param(request, "page", 1, 1, 10_000_000)
    cursor = request.query.get("cursor")
    after = _decode_cursor(cursor, sort, order) if cursor else None
    rows, total = await ns.list_files(conn, owner, folder, sort=sort, descending=order == "desc",
                                      limit=per_page, offset=(page - 1) * per_page,
                                      after=after)
    next_cursor = None
    if len(rows) == per_page:
        last = rows[-1]
        next_cursor = _encode_cursor(sort, order, _sort_value(last, sort), last.id)
    return {"items": [file_json(r) for r in rows], "total": total,
            "page": None if cursor else page, "per_page": per_page,
            "next_cursor": next_cursor}
