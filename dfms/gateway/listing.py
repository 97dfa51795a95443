"""Pagination of listings: page/per_page offsets or opaque keyset cursors.

A cursor names the sort it belongs to and the last row served (its sort value and
id), so the next page starts after that row even when rows were added meanwhile.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web

from dfms.gateway.context import CONFIG_KEY
from dfms.gateway.errors import bad_request
from dfms.gateway.http import int_param
from dfms.gateway.views import file_json
from dfms.metadata import namespace as ns
from dfms.metadata.db import Connection


def encode_cursor(sort: str, order: str, value: Any, row_id: uuid.UUID) -> str:
    if isinstance(value, datetime):
        value = {"t": value.isoformat()}
    doc = json.dumps([sort, order, value, str(row_id)]).encode()
    return base64.urlsafe_b64encode(doc).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str, order: str) -> tuple[Any, uuid.UUID]:
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
    expected = {"name": str, "size": int}.get(sort, datetime)  # the other sorts are times
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


@dataclass(frozen=True, slots=True)
class Paging:
    """What a listing request asked for: a page by number, or the page after a cursor."""
    sort: str
    order: str
    per_page: int
    page: int
    after: tuple[Any, uuid.UUID] | None  # the decoded cursor

    @property
    def offset(self) -> int:
        return 0 if self.after is not None else (self.page - 1) * self.per_page

    def body(self, items: list[Any], total: int,
             last_key: tuple[Any, uuid.UUID] | None) -> dict[str, Any]:
        """The fields every paginated listing answers (PageInfo in api/openapi.yaml).

        ``last_key`` is the (sort value, id) of the page's last row; a full page gets a
        cursor to the next one, so a client can page by cursor from any page on."""
        next_cursor = None
        if len(items) == self.per_page and last_key is not None:
            next_cursor = encode_cursor(self.sort, self.order, *last_key)
        return {"items": items, "total": total,
                "page": None if self.after is not None else self.page,
                "per_page": self.per_page, "next_cursor": next_cursor}


def paging(request: web.Request, sort: str, order: str) -> Paging:
    """``?page=&per_page=`` or ``?cursor=&per_page=`` of a listing sorted by ``sort``."""
    gw = request.app[CONFIG_KEY].gateway
    per_page = int_param(request, "per_page", gw.page_size_default, 1, gw.page_size_max)
    page = int_param(request, "page", 1, 1, 10_000_000)
    cursor = request.query.get("cursor")
    after = decode_cursor(cursor, sort, order) if cursor else None
    return Paging(sort, order, per_page, page, after)


async def files_page(request: web.Request, conn: asyncpg.Pool | Connection,
                     owner: uuid.UUID, folder: uuid.UUID | None) -> dict[str, Any]:
    """``?sort=name|size|updated_at|created_at&order=asc|desc`` with either
    ``?cursor=`` (keyset, stable under inserts) or ``?page=&per_page=``."""
    sort = request.query.get("sort", "name")
    order = request.query.get("order", "asc")
    if sort not in ns.SORT_COLUMNS:
        raise bad_request("validation_error", f"sort must be one of {', '.join(ns.SORT_COLUMNS)}")
    if order not in ("asc", "desc"):
        raise bad_request("validation_error", "order must be asc or desc")
    p = paging(request, sort, order)
    rows, total = await ns.list_files(conn, owner, folder, sort=sort, descending=order == "desc",
                                      limit=p.per_page, offset=p.offset, after=p.after)
    last = (_sort_value(rows[-1], sort), rows[-1].id) if rows else None
    return p.body([file_json(r) for r in rows], total, last)
