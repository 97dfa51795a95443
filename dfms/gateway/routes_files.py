"""Files: streaming upload (raw or multipart form), listing, metadata, rename and move,
soft delete, and streaming download with byte ranges and conditional requests."""

from __future__ import annotations

import uuid

from aiohttp import web

from dfms.events.origin import current_origin
from dfms.events.outbox import emit
from dfms.events.topics import FILE_DELETED, FILE_MOVED, FILES_TOPIC
from dfms.gateway.bodies import incoming_file, store_stream
from dfms.gateway.commit import Content, commit_content, committed_response, precheck, quota_error
from dfms.gateway.context import API_PREFIX, CONFIG_KEY, PG_KEY, path_param
from dfms.gateway.errors import ApiError, not_found
from dfms.gateway.folders import claim_name, requested_place, resolve_parent
from dfms.gateway.http import bool_param, only_fields, parse_uuid, read_json
from dfms.gateway.listing import files_page
from dfms.gateway.mime import detect
from dfms.gateway.security import access_claims, admit, authenticate
from dfms.gateway.serve import serve_content
from dfms.gateway.views import file_json
from dfms.metadata import lifecycle as lc
from dfms.metadata import namespace as ns


async def upload(request: web.Request) -> web.Response:
    user = await authenticate(request)
    cfg = request.app[CONFIG_KEY]
    limit = cfg.gateway.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"uploads are limited to {limit} bytes")
    force_version = bool_param(request, "force_version")
    incoming = await incoming_file(request, cfg.gateway.body_idle_timeout_s)
    name = incoming.name
    if_match = request.headers.get("If-Match")
    pool = request.app[PG_KEY]
    folder = await resolve_parent(pool, user, incoming.folder_raw)
    await precheck(pool, user.id, folder, name, if_match)  # refuse early, store nothing
    room = await lc.room_left(pool, user.id, cfg.lifecycle)
    if room is not None and (request.content_length or 0) > room:
        raise quota_error(await lc.quota_bytes(pool, user.id, cfg.lifecycle))
    stored, head = await store_stream(request, user.id, incoming.frames,
                                      incoming.expected_sha256, limit, room)
    content = Content(stored.total_size, stored.sha256, detect(head, name),
                      [(c.sha256, c.offset, c.size) for c in stored.chunks])
    async with pool.acquire() as conn, conn.transaction():
        # A failure here leaves the stored chunks unreferenced: GC reclaims them.
        done = await commit_content(conn, cfg.lifecycle, user.id, folder, name, content,
                                    if_match=if_match, force_version=force_version)
    row = done.row
    body = {**file_json(row), "file": str(row.id), "new_chunks": stored.new_chunks,
            "dedup_chunks": stored.dedup_chunks, "new_bytes": stored.new_bytes,
            "dedup_bytes": stored.dedup_bytes, "unchanged": done.unchanged}
    return committed_response(body, done)


async def list_files(request: web.Request) -> web.Response:
    user = await authenticate(request)
    pool = request.app[PG_KEY]
    folder = await resolve_parent(pool, user, request.query.get("folder_id"))
    return web.json_response(await files_page(request, pool, user.id, folder))


async def _owned_file(request: web.Request) -> tuple[ns.FileRow, uuid.UUID]:
    """The caller's file named in the path, with the caller's account checked in the same
    statement (one round trip, where authenticate and then a lookup took two)."""
    claims = access_claims(request)
    try:
        file_id = parse_uuid(request.match_info["file_id"], "file")
    except ApiError:
        await authenticate(request)  # as before: a refused account is 401 before a bad id
        raise
    found = await ns.get_user_file(request.app[PG_KEY], claims.user_id, file_id)
    user = admit(request, claims, found.role, found.is_active)
    if found.file is None:
        raise not_found("file")
    return found.file, user.id


async def get_file(request: web.Request) -> web.Response:
    row, _ = await _owned_file(request)
    return web.json_response(file_json(row))


async def update_file(request: web.Request) -> web.Response:
    user = await authenticate(request)
    file_id = parse_uuid(request.match_info["file_id"], "file")
    doc = await read_json(request)
    only_fields(doc, ("name", "folder_id"))
    async with request.app[PG_KEY].acquire() as conn, conn.transaction():
        current = await ns.get_file(conn, user.id, file_id)
        if current is None:
            raise not_found("file")
        name, folder = await requested_place(conn, user, doc, kind="file",
                                             parent_field="folder_id", name=current.name,
                                             parent=current.folder_id)
        await claim_name(conn, user, folder, name, except_id=file_id)
        await ns.update_file(conn, file_id, name, folder)
        row = await ns.get_file(conn, user.id, file_id)
        assert row is not None
        if (name, folder) != (current.name, current.folder_id):
            await emit(conn, FILES_TOPIC, str(file_id), FILE_MOVED, {
                "file_id": str(file_id), "owner_id": str(user.id), "name": name,
                "folder_id": _id(folder), "old_name": current.name,
                "old_folder_id": _id(current.folder_id), "origin": current_origin()})
    return web.json_response(file_json(row))


async def delete_file(request: web.Request) -> web.Response:
    user = await authenticate(request)
    file_id = parse_uuid(request.match_info["file_id"], "file")
    async with request.app[PG_KEY].acquire() as conn, conn.transaction():
        current = await ns.get_file(conn, user.id, file_id)
        if current is None or not await ns.soft_delete_file(conn, user.id, file_id):
            raise not_found("file")
        await emit(conn, FILES_TOPIC, str(file_id), FILE_DELETED, {
            "file_id": str(file_id), "owner_id": str(user.id), "name": current.name,
            "folder_id": _id(current.folder_id), "origin": current_origin()})
    return web.Response(status=204)


def _id(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


async def download(request: web.Request) -> web.StreamResponse:
    row, _ = await _owned_file(request)
    return await serve_content(request, row)


def setup_routes(app: web.Application) -> None:
    app.router.add_post(f"{API_PREFIX}/files/upload", upload)
    app.router.add_get(f"{API_PREFIX}/files", list_files)
    item = f"{API_PREFIX}/files/{path_param('file_id', besides=('upload', 'commit'))}"
    app.router.add_get(item, get_file)
    app.router.add_patch(item, update_file)
    app.router.add_delete(item, delete_file)
    app.router.add_get(f"{API_PREFIX}/files/{{file_id}}/download", download)
