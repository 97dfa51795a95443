"""File versions: list, download any version, restore (rollback) and delete."""

from __future__ import annotations

import dataclasses
import uuid

from aiohttp import web

from dfms.events.origin import current_origin
from dfms.events.outbox import emit
from dfms.events.topics import FILE_VERSION_RESTORED, FILES_TOPIC
from dfms.gateway.commit import etag_of
from dfms.gateway.context import API_PREFIX, CONFIG_KEY, PG_KEY
from dfms.gateway.errors import not_found
from dfms.gateway.http import parse_uuid
from dfms.gateway.security import authenticate
from dfms.gateway.serve import serve_content
from dfms.gateway.views import file_json
from dfms.metadata import lifecycle as lc
from dfms.metadata import namespace as ns
from dfms.metadata import versions


def _version_number(request: web.Request) -> int:
    raw = request.match_info["version"]
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) < 2**31:
        raise not_found("version")
    return int(raw)


async def _file(request: web.Request) -> tuple[ns.FileRow, uuid.UUID]:
    user = await authenticate(request)
    row = await ns.get_file(request.app[PG_KEY], user.id,
                            parse_uuid(request.match_info["file_id"], "file"))
    if row is None:
        raise not_found("file")
    return row, user.id


def _version_json(v: lc.VersionRow, current: int) -> dict[str, object]:
    return {"version": v.version, "size": v.size, "sha256": v.sha256.hex(),
            "mime_type": v.mime_type, "chunk_count": v.chunk_count,
            "created_at": v.created_at.isoformat(),
            "current": v.version == current}


async def list_versions(request: web.Request) -> web.Response:
    row, _ = await _file(request)
    versions = await lc.list_versions(request.app[PG_KEY], row.id)
    items = [_version_json(v, row.version) for v in versions]
    # `items` like every other list; `versions` (the same list) is deprecated, kept for
    # the clients that read it.
    return web.json_response({"file_id": str(row.id), "current_version": row.version,
                              "items": items, "versions": items})


async def _find(request: web.Request, row: ns.FileRow) -> lc.VersionRow:
    number = _version_number(request)
    for v in await lc.list_versions(request.app[PG_KEY], row.id):
        if v.version == number:
            return v
    raise not_found("version")


async def download_version(request: web.Request) -> web.StreamResponse:
    row, _ = await _file(request)
    v = await _find(request, row)
    as_of = dataclasses.replace(row, size=v.size, sha256=v.sha256, mime_type=v.mime_type,
                                version=v.version, chunk_count=v.chunk_count,
                                manifest_id=v.manifest_id)
    return await serve_content(request, as_of)


async def restore_version(request: web.Request) -> web.Response:
    """Rollback: a new current version whose manifest is version n's (no bytes copied)."""
    row, owner = await _file(request)
    number = _version_number(request)
    cfg = request.app[CONFIG_KEY].lifecycle
    async with request.app[PG_KEY].acquire() as conn, conn.transaction():
        # VersionNotFound and QuotaExceeded are answered by the error table.
        await versions.restore_version(conn, owner, row.id, number, cfg)
        restored = await ns.get_file(conn, owner, row.id)
        assert restored is not None
        await emit(conn, FILES_TOPIC, str(row.id), FILE_VERSION_RESTORED, {
            "file_id": str(row.id), "owner_id": str(owner), "name": restored.name,
            "folder_id": None if restored.folder_id is None else str(restored.folder_id),
            "version": restored.version, "restored_from": number,
            "size": restored.size, "origin": current_origin()})
    return web.json_response(file_json(restored), status=201,
                             headers={"ETag": etag_of(restored.sha256)})


async def delete_version(request: web.Request) -> web.Response:
    row, _ = await _file(request)
    number = _version_number(request)
    async with request.app[PG_KEY].acquire() as conn, conn.transaction():
        # VersionNotFound and LastVersion are answered by the error table.
        await versions.delete_version(conn, row.id, number)
    return web.Response(status=204)


def setup_routes(app: web.Application) -> None:
    base = f"{API_PREFIX}/files/{{file_id}}/versions"
    app.router.add_get(base, list_versions)
    app.router.add_get(f"{base}/{{version}}/download", download_version)
    app.router.add_post(f"{base}/{{version}}/restore", restore_version)
    app.router.add_delete(f"{base}/{{version}}", delete_version)
