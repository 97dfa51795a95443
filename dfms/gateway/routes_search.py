"""Search: the caller's live files and folders by name, ranked (dfms/metadata/search.py
has the matching rules and the score formula).

``GET /api/v1/search?q=`` with optional filters:

- ``type``: ``file`` or ``folder``; both when absent.
- ``min_size`` / ``max_size``: bytes, inclusive. Folders have no size, so with either
  of these only files are returned (and ``type=folder`` is a 400).
- ``after`` / ``before``: ISO 8601 timestamps on ``updated_at``, the half-open range
  ``after <= updated_at < before``. Without a UTC offset a time is taken as UTC.
- ``folder_id``: only items below that folder, at any depth (``root``: everywhere);
  a folder that is not the caller's, or is in the trash, is a 404.
- ``page`` (from 1) / ``per_page``.

Each item is the usual file or folder JSON plus ``score`` (higher is better) and
``path``, the path of the folder that holds it (``/`` for the root).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from dfms.gateway.context import API_PREFIX, CONFIG_KEY, PG_KEY
from dfms.gateway.errors import ApiError, bad_request, not_found
from dfms.gateway.http import int_param, parse_uuid
from dfms.gateway.security import authenticate
from dfms.gateway.views import file_json, folder_json
from dfms.metadata import namespace as ns
from dfms.metadata import search as sq

MAX_SIZE = 2**63 - 1
MAX_PAGE = 10_000_000  # as for listings (components.parameters.Page)
ROOT_ALIAS = "root"
# "+02:00" arrives as " 02:00" when a client forgets to percent-encode the "+".
_UNENCODED_PLUS = re.compile(r"(T[\d:.,]+) (\d{2}(?::?\d{2})?)$")


def _validation(message: str) -> ApiError:
    return bad_request("validation_error", message)


def _size_param(request: web.Request, name: str) -> int | None:
    if not request.query.get(name):
        return None
    return int_param(request, name, 0, 0, MAX_SIZE)


def _time_param(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name, "").strip()
    if not raw:
        return None
    try:
        # Upper case: RFC 3339 allows "t" and "z", Python's parser does not.
        value = datetime.fromisoformat(_UNENCODED_PLUS.sub(r"\1+\2", raw.upper()))
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)  # 0001-01-01T00:00+05:00 is before year 1 in UTC
    except (ValueError, OverflowError):
        raise _validation(f"'{name}' must be an ISO 8601 date or timestamp, "
                          "e.g. 2024-05-01T12:00:00Z") from None


def _kinds(request: web.Request) -> tuple[str, ...]:
    raw = request.query.get("type", "")
    if not raw:
        return sq.KINDS
    if raw not in sq.KINDS:
        raise _validation(f"'type' must be one of {', '.join(sq.KINDS)}")
    return (raw,)


def _item_json(hit: sq.Hit) -> dict[str, Any]:
    body = (folder_json(hit.item) if isinstance(hit.item, ns.FolderRow)
            else file_json(hit.item))
    return {**body, "score": hit.score, "path": hit.path}


async def search(request: web.Request) -> web.Response:
    user = await authenticate(request)
    cfg = request.app[CONFIG_KEY]
    try:
        query = sq.Query.parse(request.query.get("q", ""))
    except sq.InvalidQuery as exc:
        raise _validation(str(exc)) from None
    kinds = _kinds(request)
    min_size, max_size = _size_param(request, "min_size"), _size_param(request, "max_size")
    if min_size is not None and max_size is not None and min_size > max_size:
        raise _validation("'min_size' must not be greater than 'max_size'")
    if kinds == ("folder",) and (min_size is not None or max_size is not None):
        raise _validation("'min_size' and 'max_size' apply to files only")
    after, before = _time_param(request, "after"), _time_param(request, "before")
    if after is not None and before is not None and after > before:
        raise _validation("'after' must not be later than 'before'")
    page = int_param(request, "page", 1, 1, MAX_PAGE)
    per_page = int_param(request, "per_page", cfg.gateway.page_size_default, 1,
                         cfg.gateway.page_size_max)
    raw_folder = request.query.get("folder_id", "")
    async with request.app[PG_KEY].acquire() as conn:
        folder_id = None
        if raw_folder and raw_folder != ROOT_ALIAS:
            folder = await ns.get_folder(conn, user.id, parse_uuid(raw_folder, "folder"))
            if folder is None:
                raise not_found("folder")
            folder_id = folder.id
        filters = sq.Filters(kinds=kinds, min_size=min_size, max_size=max_size, after=after,
                             before=before, folder_id=folder_id)
        hits, total = await sq.search(conn, user.id, query, filters,
                                      threshold=cfg.search.similarity_threshold,
                                      limit=per_page, offset=(page - 1) * per_page)
    return web.json_response({"items": [_item_json(h) for h in hits], "total": total,
                              "page": page, "per_page": per_page})


def setup_routes(app: web.Application) -> None:
    app.router.add_get(f"{API_PREFIX}/search", search)
